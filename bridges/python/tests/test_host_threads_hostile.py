"""ctx.call_host from a handler's threads, driven as a hostile pool would:
many threads at once, a thread calling just as its handler returns (many
times over, with the next calls written ahead), a host call left waiting,
a thread of an ended call calling during the next call, a cancel frame or
SIGINT while a thread reads stdin, stdin closing under a thread, and
host_reply frames for no host call. Every call gets its own reply, no
host call leaves for an ended call, and the worker serves on."""

import os
import queue
import random
import re
import signal
import sys
import threading
import unittest

from tests._helpers import CODECS, TESTS_DIR, WorkerProcess

WORKER = os.path.join(TESTS_DIR, "hostile_threads_worker.py")


def _echo(call):
    return {"type": "host_reply", "id": call["id"], "success": True, "result": {"echo": call["args"]}}


class _Pool:
    """A fake pool: reads the worker's frames, answers its host calls, and
    checks that no host call names a request already answered."""

    def __init__(self, test, w):
        self.test = test
        self.w = w
        self.answered = set()
        self.host_calls = []

    def recv(self, timeout=30.0):
        msg = self.w.recv(timeout)
        if msg is None:
            raise AssertionError("worker closed stdout; stderr:\n" + self.w.stderr)
        if msg.get("type") == "host_call":
            self.test.assertNotIn(msg["request_id"], self.answered,
                                  f"host call {msg!r} after its request's reply; stderr:\n{self.w.stderr}")
            self.host_calls.append(msg)
        elif msg.get("type") in (None, "response"):
            self.test.assertNotIn(msg["id"], self.answered, f"two replies for {msg['id']}")
            self.answered.add(msg["id"])
        return msg

    def replies(self, ids, hold=False):
        """Reads until every request in ``ids`` is answered, answering host
        calls as they come (unless ``hold``); returns {id: reply}."""
        want = set(ids)
        got = {}
        while want - set(got):
            msg = self.recv()
            if msg.get("type") == "host_call":
                if not hold:
                    self.w.send(_echo(msg))
            elif msg.get("type") in (None, "response"):
                self.test.assertIn(msg["id"], want, f"unexpected reply {msg!r}")
                got[msg["id"]] = msg
        return got

    def call(self, rid, command, args=None):
        self.w.request(rid, command, args or {})
        return self.replies([rid])[rid]

    def host_call(self):
        msg = self.recv()
        self.test.assertEqual(msg.get("type"), "host_call", (msg, self.w.stderr))
        return msg


class _Cases:
    MODE = "sync"

    def start(self, codec):
        w = WorkerProcess(WORKER, codec=codec, env={"HOST_THREADS_MODE": self.MODE})
        self.addCleanup(w.stop)
        self.assertEqual(w.recv(30)["type"], "hello", w.stderr)
        return w, _Pool(self, w)

    def report(self, pool, rid):
        reply = pool.call(rid, "report", {"wait": 5})
        self.assertTrue(reply["success"], (reply, pool.w.stderr))
        self.assertEqual(reply["result"]["alive"], [], f"a thread's host call never ended; stderr:\n{pool.w.stderr}")
        return reply["result"]["outcomes"]

    def assert_finished(self, outcome, rid):
        self.assertEqual(outcome.get("type"), "Cancelled", outcome)
        self.assertIn(f"request {rid} is already finished", outcome["message"])

    def test_a_swarm_of_threads_gets_each_its_own_reply_in_any_order(self):
        rng = random.Random(7)
        n, k = 16, 6
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                for rid in (1, 2):
                    w.request(rid, "swarm", {"n": n, "k": k})
                    reply = None
                    waiting = []
                    while reply is None:
                        try:
                            msg = pool.recv(timeout=0.3 if waiting else 30.0)
                        except queue.Empty:
                            msg = None
                        if msg is not None and msg.get("type") == "host_call":
                            self.assertEqual(msg["request_id"], rid)
                            waiting.append(msg)
                            if len(waiting) < n + 1:
                                continue
                        elif msg is not None:
                            reply = msg
                            continue
                        # Every caller waits (or the stream paused): answer
                        # them all, shuffled, in one write.
                        rng.shuffle(waiting)
                        data = b"".join(_frame(w, _echo(c)) for c in waiting)
                        w.send_raw(data)
                        waiting = []
                    self.assertTrue(reply["success"], (reply, w.stderr))
                    want = [[{"result": {"echo": {"i": i, "j": j, "rid": rid}}} for j in range(k)]
                            for i in range(n + 1)]
                    self.assertEqual(reply["result"], want)
                self.assertEqual(len(pool.host_calls), 2 * (n + 1) * k)
                self.assertEqual(len({c["id"] for c in pool.host_calls}), len(pool.host_calls))
                self.assertNotIn("Traceback", w.stderr)

    def _race(self, w, pool, first, count, batch):
        """``count`` race_return calls from id ``first``, ``batch`` written
        at a time; every host call answered at once."""
        rid = first
        while rid < first + count:
            ids = list(range(rid, min(rid + batch, first + count)))
            w.send_raw(b"".join(_frame(w, _request(i, "race_return", {"tag": str(i)})) for i in ids))
            got = pool.replies(ids)
            for i in ids:
                self.assertEqual(got[i]["result"], str(i), (got[i], w.stderr))
            rid += batch
        return first + count

    def _check_race(self, pool, outcomes, first, count):
        self.assertEqual(len(outcomes), count)
        sent = {c["args"]["tag"]: c for c in pool.host_calls}
        for i in range(first, first + count):
            outcome = outcomes[str(i)]
            if "result" in outcome:
                self.assertEqual(outcome["result"], {"echo": {"tag": str(i)}})
                self.assertEqual(sent[str(i)]["request_id"], i)
            else:
                self.assert_finished(outcome, i)

    def test_a_thread_calling_as_its_handler_returns_never_leaks(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                # Written ahead, 50 at a time, then one at a time.
                nxt = self._race(w, pool, 1, 1500, 50)
                nxt = self._race(w, pool, nxt, 500, 1)
                self._check_race(pool, self.report(pool, nxt), 1, nxt - 1)
                self.assertTrue(pool.call(nxt + 1, "ping")["success"])
                self.assertNotIn("Traceback", w.stderr)

    def test_a_host_call_waiting_when_the_handler_returns_fails_and_frees_stdin(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                for n in range(20):
                    rid = 10 * (n + 1)
                    w.request(rid, "hold_then_return", {"tag": str(rid)})
                    held = [m for m in _until_reply(pool, rid) if m.get("type") == "host_call"]
                    # Its late reply, the next calls and a cancel for one of
                    # them, in one write: none may be eaten by the thread.
                    frames = [_echo(c) for c in held] + [
                        _request(rid + 1, "mark"), _request(rid + 2, "mark"),
                        {"type": "cancel", "id": rid + 2}, _request(rid + 3, "mark"),
                    ]
                    w.send_raw(b"".join(_frame(w, f) for f in frames))
                    got = pool.replies([rid + 1, rid + 2, rid + 3])
                    self.assertEqual(got[rid + 1]["result"], rid + 1, w.stderr)
                    self.assertEqual(got[rid + 2]["error"]["type"], "Cancelled", w.stderr)
                    self.assertEqual(got[rid + 3]["result"], rid + 3, w.stderr)
                outcomes = self.report(pool, 999)
                for n in range(20):
                    self.assert_finished(outcomes[str(10 * (n + 1))], 10 * (n + 1))
                marks = pool.call(1000, "order")["result"]
                self.assertEqual(marks, [x for n in range(20) for x in (10 * n + 11, 10 * n + 13)])
                self.assertNotIn("Traceback", w.stderr)

    def test_a_thread_of_an_ended_call_is_refused_during_the_next_call(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                for n in range(10):
                    rid = 10 * (n + 1)
                    tag = f"stale{rid}"
                    self.assertEqual(pool.call(rid, "leave_for_next", {"tag": tag})["result"], tag)
                    reply = pool.call(rid + 1, "open_and_call", {"tag": tag})
                    self.assertTrue(reply["success"], (reply, w.stderr))
                    self.assertEqual(reply["result"], {
                        "here": {"result": {"echo": {"here": rid + 1}}},
                        "thread": {"result": {"echo": {"fresh": rid + 1}}},
                    })
                outcomes = self.report(pool, 999)
                for n in range(10):
                    rid = 10 * (n + 1)
                    self.assert_finished(outcomes[f"stale{rid}"], rid)
                self.assertEqual({c["request_id"] for c in pool.host_calls}, {10 * n + 11 for n in range(10)})
                self.assertNotIn("Traceback", w.stderr)

    def test_host_replies_for_no_host_call_while_a_thread_reads_are_dropped(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                w.request(1, "ask_and_block", {"tag": "t1", "how": "join"})
                call = pool.host_call()
                bogus = [
                    {"type": "host_reply", "id": call["id"] + 1000, "success": True, "result": "wrong"},
                    {"type": "host_reply", "id": 0, "success": True, "result": "wrong"},
                    {"type": "host_reply", "id": -call["id"], "success": False,
                     "error": {"type": "X", "message": "wrong"}},
                ]
                w.send_raw(b"".join(_frame(w, f) for f in bogus))
                w.send(_echo(call))
                reply = pool.replies([1])[1]
                self.assertEqual(reply["result"], {"joined": {"result": {"echo": {"tag": "t1"}}}}, w.stderr)
                self.assertTrue(pool.call(2, "ping")["success"])
                self.assertNotIn("Traceback", w.stderr)

    def test_an_unusable_frame_while_a_thread_reads_is_answered_and_skipped(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                w.request(1, "ask_and_block", {"tag": "t1", "how": "join"})
                call = pool.host_call()
                # A payload that decodes to nothing usable, then the reply.
                w.send_raw(len(b"\xc1\xff{").to_bytes(4, "big") + b"\xc1\xff{")
                w.send(_echo(call))
                got = []
                while 1 not in pool.answered:
                    got.append(pool.recv())
                errors = [m for m in got if m.get("id") == 0]
                self.assertEqual(len(errors), 1, (got, w.stderr))
                self.assertEqual(errors[0]["error"]["type"], "ProtocolError")
                self.assertEqual(got[-1]["result"], {"joined": {"result": {"echo": {"tag": "t1"}}}}, w.stderr)
                self.assertTrue(pool.call(2, "ping")["success"])
                self.assertNotIn("Traceback", w.stderr)

    def test_sigterm_while_a_thread_reads_ends_the_worker_cleanly(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                w.request(1, "ask_and_block", {"tag": "t1", "how": "sleep"})
                pool.host_call()
                w.signal(signal.SIGTERM)
                self.assertEqual(w.wait(30), 0, w.stderr)

    def test_stdin_closing_while_a_thread_waits_fails_its_host_call(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                w.request(1, "ask_and_block", {"tag": "t1", "how": "join"})
                pool.host_call()
                w.close_stdin()
                reply = pool.replies([1])[1]
                joined = reply["result"]["joined"]
                self.assertIn(joined["type"], ("ConnectionError", "HostCallError"), (reply, w.stderr))
                self.assertIn("stdin", joined["message"])
                self.assertIsNone(w.recv(30))
                self.assertEqual(w.wait(30), 0, w.stderr)
                self.assertNotIn("Traceback", w.stderr)


class OneAtATimeTest(_Cases, unittest.TestCase):
    MODE = "sync"

    def _cancel_while_a_thread_reads(self, how, by_signal):
        for codec in CODECS:
            with self.subTest(codec=codec, how=how):
                w, pool = self.start(codec)
                for n in range(3):
                    rid = 10 * (n + 1)
                    # The thread calls after a head start: CPython runs a
                    # SIGINT's handler that lands just before the main
                    # thread blocks only once the wait ends (with or
                    # without threads; not what this test is about).
                    w.request(rid, "ask_and_block", {"tag": str(rid), "how": how, "delay": 0.2})
                    call = pool.host_call()
                    if by_signal:
                        w.signal(signal.SIGINT)
                    else:
                        w.send({"type": "cancel", "id": rid})
                    reply = pool.replies([rid])[rid]
                    self.assertEqual(reply.get("error", {}).get("type"), "Cancelled", (reply, w.stderr))
                    if not by_signal:
                        w.signal(signal.SIGINT)  # the pool's, after its cancel: too late, ignored
                    w.send(_echo(call))  # late: dropped
                    self.assertEqual(pool.call(rid + 1, "mark")["result"], rid + 1, w.stderr)
                outcomes = self.report(pool, 999)
                for n in range(3):
                    rid = 10 * (n + 1)
                    outcome = outcomes[str(rid)]
                    self.assertEqual(outcome["type"], "Cancelled", outcome)
                    if by_signal:
                        self.assertIn(f"request {rid} is already finished", outcome["message"])
                    else:
                        self.assertIn(f"request {rid} was cancelled", outcome["message"])
                self.assertEqual(pool.call(1000, "order")["result"], [11, 21, 31])
                self.assertNotIn("Traceback", w.stderr)

    def test_a_cancel_frame_read_by_a_thread_interrupts_a_blocked_handler(self):
        # A KeyboardInterrupt that ends a Thread.join() leaves that thread
        # counted alive for ever in CPython 3.8 (its join gave up its lock
        # halfway), so the report would show it; 3.11 does not (versions in
        # between are not run here).
        hows = ("join", "event", "sleep") if sys.version_info >= (3, 11) else ("event", "sleep")
        for how in hows:
            self._cancel_while_a_thread_reads(how, by_signal=False)

    def test_sigint_while_a_thread_reads_cancels_the_call_and_frees_stdin(self):
        for how in ("event", "sleep"):
            self._cancel_while_a_thread_reads(how, by_signal=True)

    @unittest.skipIf(
        sys.version_info < (3, 11),
        "CPython 3.8's threading is not safe from KeyboardInterrupt: one that lands in "
        "Thread.start() or Thread.join() leaves a lock of the thread's held, and the "
        "thread hangs or counts alive for ever (3.11 does not; versions between are not run here)",
    )
    def test_a_sigint_storm_while_threads_call_the_host_loses_nothing(self):
        # SIGINTs land anywhere: in handlers, while threads read stdin, as
        # handlers return, between calls. Every call still gets exactly one
        # reply (its own result, or Cancelled), no host call follows its
        # call's reply, and the worker serves on.
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                stop = threading.Event()

                def storm():
                    while not stop.wait(0.001):
                        w.signal(signal.SIGINT)

                t = threading.Thread(target=storm)
                t.start()
                try:
                    for base in range(1, 401, 8):
                        frames = [_request(base, "swarm", {"n": 3, "k": 2})]
                        frames += [_request(i, "race_return", {"tag": str(i)}) for i in range(base + 1, base + 4)]
                        frames += [_request(base + 4, "ask_and_block", {"tag": str(base + 4), "how": "join"})]
                        frames += [_request(i, "hold_then_return", {"tag": str(i)}) for i in range(base + 5, base + 8)]
                        w.send_raw(b"".join(_frame(w, f) for f in frames))
                        got = pool.replies(list(range(base, base + 8)))
                        for i, reply in got.items():
                            if not reply["success"]:
                                self.assertEqual(reply["error"]["type"], "Cancelled", (reply, w.stderr))
                            elif i == base:
                                self.assertEqual(reply["result"][0][1], {"result": {"echo": {"i": 0, "j": 1, "rid": base}}})
                finally:
                    stop.set()
                    t.join()
                self.report(pool, 1000)
                self.assertTrue(pool.call(1001, "ping")["success"], w.stderr)
                # A KeyboardInterrupt may land in a finalizer the handler
                # runs (CPython reports it as ignored): no other error.
                errors = re.findall(r"^[A-Za-z_.]*(?:Error|Exception|Interrupt)\b.*$", w.stderr, re.M)
                unexpected = [e for e in errors if not e.startswith(("KeyboardInterrupt", "Exception ignored in"))]
                self.assertEqual(unexpected, [], w.stderr)
                self.assertNotIn("Exception in thread", w.stderr)

    def test_calls_written_ahead_while_a_thread_reads_wait_and_run_in_order(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                w.request(1, "ask_and_block", {"tag": "t1", "how": "join"})
                call = pool.host_call()
                frames = [
                    _request(2, "mark"), _request(3, "mark"), {"type": "cancel", "id": 3},
                    _request(4, "mark"), _request(5, "mark"), _echo(call),
                ]
                w.send_raw(b"".join(_frame(w, f) for f in frames))
                got = pool.replies([1, 2, 3, 4, 5])
                self.assertEqual(got[1]["result"], {"joined": {"result": {"echo": {"tag": "t1"}}}}, w.stderr)
                self.assertEqual(got[3]["error"]["type"], "Cancelled")
                self.assertIn("before it started", got[3]["error"]["message"])
                self.assertEqual(pool.call(6, "order")["result"], [2, 4, 5])
                self.assertNotIn("Traceback", w.stderr)


class ConcurrentTest(_Cases, unittest.TestCase):
    MODE = "concurrent"

    def test_an_async_handlers_threads_and_tasks_each_get_their_own_reply(self):
        n, k = 6, 4
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                for rid in (1, 2, 3):
                    reply = pool.call(rid, "aswarm", {"n": n, "k": k})
                    self.assertTrue(reply["success"], (reply, w.stderr))
                    self.assertEqual(reply["result"]["threads"],
                                     [[{"result": {"echo": {"t": i, "j": j}}} for j in range(k)] for i in range(n)])
                    self.assertEqual(reply["result"]["tasks"],
                                     [[{"result": {"echo": {"a": i, "j": j}}} for j in range(k)] for i in range(n)])
                self.assertNotIn("Traceback", w.stderr)

    def test_an_async_handlers_task_and_thread_racing_its_return_never_leak(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                ids = list(range(1, 801))
                for at in range(0, len(ids), 40):
                    batch = ids[at:at + 40]
                    w.send_raw(b"".join(_frame(w, _request(i, "arace_return", {"tag": str(i)})) for i in batch))
                    got = pool.replies(batch)
                    for i in batch:
                        self.assertEqual(got[i]["result"], str(i), (got[i], w.stderr))
                self.assertEqual(pool.call(900, "atasks_done")["result"], len(ids))
                outcomes = self.report(pool, 901)
                sent = {c["args"]["tag"]: c for c in pool.host_calls}
                for i in ids:
                    for tag in (str(i), f"{i}/t"):
                        outcome = outcomes[tag]
                        if "result" in outcome:
                            self.assertEqual(outcome["result"], {"echo": {"tag": tag}})
                            self.assertEqual(sent[tag]["request_id"], i)
                        else:
                            self.assert_finished(outcome, i)
                self.assertTrue(pool.call(902, "ping")["success"])
                self.assertNotIn("Traceback", w.stderr)


def _request(rid, command, args=None):
    return {"id": rid, "command": command, "args": args or {}, "timestamp": "2026-11-27T12:24:04.051023Z"}


def _frame(w, value):
    from snakepit_bridge import _wire

    return _wire.encode_frame(w.codec, value)


def _until_reply(pool, rid):
    """The frames up to request ``rid``'s reply, host calls unanswered."""
    frames = []
    while True:
        msg = pool.recv()
        frames.append(msg)
        if msg.get("type") in (None, "response") and msg.get("id") == rid:
            return frames


if __name__ == "__main__":
    unittest.main()
