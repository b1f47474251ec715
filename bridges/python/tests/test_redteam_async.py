"""Red-team tests of the asyncio mode of the Python bridge (Worker with an
``async def`` handler or max_concurrency > 1), driven over real pipes the
way the pool drives it: cancel storms, a blocked event loop, broken
exceptions, forgotten tasks, many calls beyond max_concurrency, interleaved
streams, host calls answered out of order, EOF and SIGTERM with calls in
flight. What is checked: exactly one reply per request, the worker serves
on (or exits 0 as documented), every frame on stdout is well formed, and
no chunk follows its call's final reply (docs/protocol.md: a protocol
violation for which the pool replaces the worker).

The tests of six defects once failed (a chunk after the final reply, a host
call after EOF that hung, StopIteration and an unreadable exception that
lost their reply, a cancelled call waiting for a slot that still ran,
SIGTERM ignored while a handler blocked the loop); they pass since the
bridge was fixed.

Nothing here is timed for speed; the bounds only turn a hang into a
failure."""

import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

from ._helpers import WorkerProcess

SCRIPT = r'''
import asyncio, os, sys, threading, time
import snakepit_bridge

worker = snakepit_bridge.Worker(max_concurrency=int(os.environ.get("RT_CONCURRENCY", "8")))
ran = []
background = set()


@worker.command("asleep")
async def asleep(args, ctx):
    await asyncio.sleep(args.get("s", 0))
    return {"id": ctx.request_id}


@worker.command("psleep")
def psleep(args, ctx):
    ran.append(ctx.request_id)
    deadline = time.monotonic() + args.get("s", 0)
    while time.monotonic() < deadline:
        if args.get("poll") and ctx.cancelled:
            break
        time.sleep(0.005)
    return {"id": ctx.request_id}


@worker.command("ran")
async def ran_cmd(args):
    return sorted(ran)


@worker.command("block_loop")
async def block_loop(args, ctx):
    time.sleep(args["s"])  # blocks the event loop on purpose
    return {"blocked": args["s"]}


@worker.command("spin")
async def spin(args, ctx):
    # A CPU loop on the event loop thread.
    end = time.monotonic() + args["s"]
    n = 0
    while time.monotonic() < end:
        n += 1
    return {"spun": n > 0}


class BrokenStr(Exception):
    def __str__(self):
        raise RuntimeError("no message for you")


class BaseBrokenStr(BaseException):
    pass


class StrRaisesBase(Exception):
    def __str__(self):
        raise BaseBrokenStr("__str__ raised a BaseException")


class DelRaises:
    def __del__(self):
        raise RuntimeError("raised in __del__")


@worker.command("broken_str")
async def broken_str(args):
    raise BrokenStr()


@worker.command("broken_str_plain")
def broken_str_plain(args):
    raise BrokenStr()


@worker.command("str_raises_base")
async def str_raises_base(args):
    raise StrRaisesBase()


@worker.command("stop_iteration")
def stop_iteration(args):
    return next(iter([]))  # a plain handler's bug: StopIteration escapes


@worker.command("del_raises")
async def del_raises(args):
    x = DelRaises()
    del x
    return "ok"


@worker.command("forget_task")
async def forget_task(args, ctx):
    async def boom():
        await asyncio.sleep(0.05)
        raise RuntimeError("forgotten task failed")
    asyncio.ensure_future(boom())
    return "forgot"


@worker.command("thread_raises")
def thread_raises(args, ctx):
    def boom():
        raise RuntimeError("thread failed")
    threading.Thread(target=boom).start()
    return "ok"


@worker.command("late_emit")
async def late_emit(args, ctx):
    # A helper task that outlives the handler and keeps streaming.
    async def later():
        for i in range(3):
            await asyncio.sleep(0.05)
            ctx.emit({"late": i})
    t = asyncio.ensure_future(later())
    background.add(t)
    return "returned"


@worker.command("wait_emit")
async def wait_emit(args, ctx):
    # asyncio.wait does not cancel what it waits for, so a cancelled call's
    # producer goes on emitting.
    async def producer():
        for i in range(40):
            ctx.emit({"i": i})
            await asyncio.sleep(0.025)
    t = asyncio.ensure_future(producer())
    background.add(t)
    await asyncio.wait({t})
    return "done"


@worker.command("cyclic")
async def cyclic(args):
    a = []
    a.append(a)
    return a


@worker.command("huge")
async def huge(args):
    return "x" * args["n"]


@worker.command("stream")
async def stream(args, ctx):
    for i in range(args["n"]):
        ctx.emit({"id": ctx.request_id, "i": i})
        await asyncio.sleep(args.get("gap", 0))
    return {"n": args["n"]}


@worker.command("pstream")
def pstream(args, ctx):
    for i in range(args["n"]):
        ctx.emit({"id": ctx.request_id, "i": i})
        if ctx.cancelled:
            break
        time.sleep(args.get("gap", 0))
    return {"n": args["n"]}


@worker.command("ahost")
async def ahost(args, ctx):
    out = []
    for i in range(args.get("n", 1)):
        out.append(await ctx.acall_host("f", {"rid": ctx.request_id, "i": i}))
    return out


@worker.command("phost")
def phost(args, ctx):
    return ctx.call_host("f", {"rid": ctx.request_id})


@worker.command("ahost_later")
async def ahost_later(args, ctx):
    await asyncio.sleep(args["s"])
    try:
        return await ctx.acall_host("f", {})
    except Exception as exc:
        return {"error": type(exc).__name__}


@worker.command("phost_later")
def phost_later(args, ctx):
    time.sleep(args["s"])
    try:
        return ctx.call_host("f", {})
    except Exception as exc:
        return {"error": type(exc).__name__}


sys.exit(worker.run())
'''

GUARD = 60.0


class _Base(unittest.TestCase):
    concurrency = 8

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="snakepit-py-redteam-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.script = os.path.join(self.dir, "worker.py")
        with open(self.script, "w") as f:
            f.write(SCRIPT)

    def spawn(self, concurrency=None):
        env = {"RT_CONCURRENCY": str(concurrency or self.concurrency)}
        w = WorkerProcess(self.script, "json", env=env)
        self.addCleanup(self._kill, w)
        hello = w.recv(GUARD)
        self.assertEqual(hello["type"], "hello")
        self.assertTrue(hello["capabilities"]["cancel"])
        return w

    @staticmethod
    def _kill(w):
        if w.proc.poll() is None:
            w.proc.kill()
        w.stop()

    def frames_until(self, w, done, host=None, guard=GUARD):
        """Reads frames until ``done(replies)``; returns (replies, chunks, order).

        replies: id -> list of final replies; chunks: id -> list of data;
        order: (kind, id) in arrival order. ``host(frame)`` answers host calls.
        """
        replies, chunks, order = {}, {}, []
        deadline = time.monotonic() + guard
        while not done(replies):
            left = deadline - time.monotonic()
            if left <= 0:
                self.fail("gave up waiting; replies so far: %d; stderr:\n%s"
                          % (len(replies), w.stderr[-3000:]))
            try:
                msg = w.recv(left)
            except Exception as exc:  # queue.Empty or a bad frame
                if type(exc).__name__ == "Empty":
                    continue
                raise
            if msg is None:
                self.fail("worker closed stdout; stderr:\n" + w.stderr[-3000:])
            kind = msg.get("type")
            if kind in (None, "response"):
                replies.setdefault(msg["id"], []).append(msg)
                order.append(("reply", msg["id"]))
            elif kind == "chunk":
                chunks.setdefault(msg["id"], []).append(msg["data"])
                order.append(("chunk", msg["id"]))
            elif kind == "host_call":
                self.assertIsNotNone(host, "unexpected host call %r" % msg)
                host(msg)
            else:
                self.fail("unexpected frame %r" % msg)
        return replies, chunks, order

    def assert_serves(self, w, rid=900000):
        """The worker still answers (and no earlier call got a second reply
        in the meantime)."""
        r = w.call(rid, "asleep", {"s": 0}, timeout=GUARD)
        self.assertTrue(r["success"], r)

    def drain_quiet(self, w, seconds=0.5):
        """Frames that arrive within ``seconds`` (there should be none)."""
        extra = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                msg = w.recv(max(0.01, end - time.monotonic()))
            except Exception:
                break
            if msg is None:
                break
            extra.append(msg)
        return extra


class CancelStorm(_Base):
    concurrency = 4

    def test_storm_of_cancels_gives_exactly_one_reply_each(self):
        """1500 calls (async and plain, 4 at once), cancels for half of them
        at random moments, twice for some, for ids never sent and for ids
        already answered: every call gets exactly one reply, and afterwards
        all 4 slots still work."""
        w = self.spawn()
        rng = random.Random(7)
        n = 1500
        ids = list(range(1, n + 1))
        for rid in ids:
            if rid % 3 == 0:
                w.request(rid, "psleep", {"s": rng.choice([0, 0.002]), "poll": True})
            else:
                w.request(rid, "asleep", {"s": rng.choice([0, 0.001, 0.01])})
            if rng.random() < 0.5:
                w.send({"type": "cancel", "id": rng.randint(1, rid)})
            if rng.random() < 0.1:
                w.send({"type": "cancel", "id": rid})
                w.send({"type": "cancel", "id": rid})
            if rng.random() < 0.1:
                w.send({"type": "cancel", "id": 10_000_000 + rid})  # never sent
        replies, _, _ = self.frames_until(w, lambda r: len(r) >= n)
        self.assertEqual(sorted(replies), ids)
        for rid, got in replies.items():
            self.assertEqual(len(got), 1, (rid, got))
            r = got[0]
            if not r["success"]:
                self.assertEqual(r["error"]["type"], "Cancelled", r)
        # Cancels for calls already answered are ignored.
        for rid in ids[:50]:
            w.send({"type": "cancel", "id": rid})
        # No slot was lost: 4 calls of 0.3 s each at once still all finish.
        for k in range(4):
            w.request(800000 + k, "asleep", {"s": 0.3})
        more, _, _ = self.frames_until(w, lambda r: len(r) >= 4)
        self.assertEqual(sorted(more), [800000 + k for k in range(4)])
        self.assertEqual(self.drain_quiet(w), [])
        self.assert_serves(w)

    def test_cancel_racing_each_reply(self):
        """A cancel sent right behind each of 500 instant calls, in the same
        write: one reply each, success or Cancelled."""
        w = self.spawn()
        from snakepit_bridge import _wire
        data = b""
        for rid in range(1, 501):
            data += _wire.encode_frame(w.codec, {"id": rid, "command": "asleep", "args": {}})
            data += _wire.encode_frame(w.codec, {"type": "cancel", "id": rid})
        w.send_raw(data)
        replies, _, _ = self.frames_until(w, lambda r: len(r) >= 500)
        self.assertTrue(all(len(v) == 1 for v in replies.values()))
        self.assertEqual(self.drain_quiet(w), [])
        self.assert_serves(w)

    def test_queued_plain_call_cancelled_before_start_does_not_run(self):
        w = self.spawn(concurrency=2)
        w.request(1, "psleep", {"s": 1.0})
        w.request(2, "psleep", {"s": 1.0})
        w.request(3, "psleep", {"s": 0})  # waits for a slot
        w.send({"type": "cancel", "id": 3})
        replies, _, order = self.frames_until(w, lambda r: len(r) >= 3)
        self.assertEqual(replies[3][0]["error"]["type"], "Cancelled")
        # Answered without waiting for the running calls...
        self.assertEqual(order[0], ("reply", 3), order)
        # ...and never run.
        ran = w.call(4, "ran", timeout=GUARD)["result"]
        self.assertNotIn(3, ran)


class BlockedLoop(_Base):
    def test_calls_and_cancels_during_a_blocked_loop(self):
        """An async handler that blocks the loop (time.sleep) and one that
        spins the CPU delay the others; the calls and cancels that arrived
        meanwhile are all answered once afterwards."""
        w = self.spawn()
        w.request(1, "block_loop", {"s": 1.0})
        w.request(2, "spin", {"s": 0.5})
        for rid in range(10, 60):
            w.request(rid, "asleep" if rid % 2 else "psleep", {"s": 0.05, "poll": True})
            if rid % 3 == 0:
                w.send({"type": "cancel", "id": rid})
        w.send({"type": "cancel", "id": 1})  # too late: the loop is blocked
        replies, _, _ = self.frames_until(w, lambda r: len(r) >= 52)
        for rid, got in replies.items():
            self.assertEqual(len(got), 1, (rid, got))
        # The blocking handler never reached an await, so it was not cancelled
        # before it returned; either outcome is one reply.
        self.assertIn(replies[1][0]["success"], (True, False))
        self.assertTrue(replies[2][0]["success"])
        self.assert_serves(w)


class BrokenExceptions(_Base):
    def test_exceptions_with_a_broken_str_are_failed_replies(self):
        w = self.spawn()
        for rid, command in ((1, "broken_str"), (2, "broken_str_plain")):
            r = w.call(rid, command, timeout=GUARD)
            self.assertFalse(r["success"])
            self.assertEqual(r["error"]["type"], "BrokenStr")
            self.assertIn("could not be read", r["error"]["message"])
        r = w.call(3, "del_raises", timeout=GUARD)
        self.assertEqual(r["result"], "ok")
        self.assert_serves(w)

    def test_str_raising_base_exception_still_gets_a_reply(self):
        w = self.spawn()
        w.request(1, "str_raises_base")
        replies, _, _ = self.frames_until(w, lambda r: 1 in r, guard=10)
        self.assertFalse(replies[1][0]["success"])
        self.assertEqual(replies[1][0]["error"]["type"], "StrRaisesBase")

    def test_plain_handler_raising_stop_iteration_gets_a_failed_reply(self):
        w = self.spawn()
        w.request(1, "stop_iteration")
        replies, _, _ = self.frames_until(w, lambda r: 1 in r, guard=10)
        self.assertFalse(replies[1][0]["success"])
        self.assertEqual(replies[1][0]["error"]["type"], "StopIteration")
        self.assert_serves(w)

    def test_forgotten_task_and_thread_failures_do_not_stop_the_worker(self):
        w = self.spawn()
        self.assertEqual(w.call(1, "forget_task", timeout=GUARD)["result"], "forgot")
        self.assertEqual(w.call(2, "thread_raises", timeout=GUARD)["result"], "ok")
        time.sleep(0.3)
        for rid in range(3, 10):
            self.assertTrue(w.call(rid, "asleep", {"s": 0.01}, timeout=GUARD)["success"])
        self.assertIsNone(w.proc.poll())


class Results(_Base):
    def test_cyclic_and_large_results_with_other_calls_in_flight(self):
        w = self.spawn()
        w.request(1, "cyclic")
        w.request(2, "huge", {"n": 8 * 1024 * 1024})
        for rid in range(10, 30):
            w.request(rid, "stream", {"n": 5, "gap": 0.001}, stream=True)
        replies, chunks, _ = self.frames_until(w, lambda r: len(r) >= 22)
        self.assertFalse(replies[1][0]["success"])
        self.assertEqual(len(replies[2][0]["result"]), 8 * 1024 * 1024)
        for rid in range(10, 30):
            self.assertEqual([c["i"] for c in chunks[rid]], list(range(5)))
        self.assert_serves(w)


class ManyInFlight(_Base):
    concurrency = 8

    def test_thousands_of_calls_beyond_max_concurrency(self):
        w = self.spawn()
        n = 3000
        for rid in range(1, n + 1):
            w.request(rid, "asleep" if rid % 4 else "psleep", {"s": 0})
        replies, _, _ = self.frames_until(w, lambda r: len(r) >= n)
        self.assertEqual(len(replies), n)
        self.assertTrue(all(len(v) == 1 and v[0]["success"] for v in replies.values()))
        self.assert_serves(w)


class Streams(_Base):
    def test_interleaved_streams_cancelled_midway(self):
        """30 streams at once (async and plain), every third cancelled after
        its first chunk: per call, chunks in order and all before its one
        reply."""
        w = self.spawn(concurrency=32)
        ids = list(range(1, 31))
        for rid in ids:
            w.request(rid, "stream" if rid % 2 else "pstream", {"n": 30, "gap": 0.01}, stream=True)
        cancelled = set()

        replies, chunks, order = {}, {}, []
        deadline = time.monotonic() + GUARD
        while len(replies) < len(ids):
            self.assertLess(time.monotonic(), deadline, w.stderr[-2000:])
            msg = w.recv(GUARD)
            self.assertIsNotNone(msg, w.stderr[-2000:])
            rid = msg["id"]
            if msg.get("type") == "chunk":
                self.assertNotIn(rid, replies, "chunk after the final reply of %d" % rid)
                chunks.setdefault(rid, []).append(msg["data"]["i"])
                if rid % 3 == 0 and rid not in cancelled:
                    cancelled.add(rid)
                    w.send({"type": "cancel", "id": rid})
            else:
                self.assertNotIn(rid, replies)
                replies[rid] = msg
        for rid in ids:
            got = chunks.get(rid, [])
            self.assertEqual(got, list(range(len(got))), rid)
            if rid in cancelled:
                self.assertEqual(replies[rid]["error"]["type"], "Cancelled")
            else:
                self.assertEqual(len(got), 30)
        self.assertEqual(self.drain_quiet(w), [])
        self.assert_serves(w)

    def test_no_chunk_after_final_reply_from_a_task_that_outlives_the_handler(self):
        w = self.spawn()
        w.request(1, "late_emit", stream=True)
        replies, _, _ = self.frames_until(w, lambda r: 1 in r)
        self.assertEqual(replies[1][0]["result"], "returned")
        self.assertEqual(self.drain_quiet(w, 0.6), [])

    def test_no_chunk_after_cancelled_reply(self):
        w = self.spawn()
        w.request(1, "wait_emit", stream=True)
        first = w.recv(GUARD)
        self.assertEqual(first.get("type"), "chunk")
        w.send({"type": "cancel", "id": 1})
        replies, _, _ = self.frames_until(w, lambda r: 1 in r)
        self.assertEqual(replies[1][0]["error"]["type"], "Cancelled")
        late = [m for m in self.drain_quiet(w, 0.6) if m and m.get("id") == 1]
        self.assertEqual(late, [])


class HostCalls(_Base):
    def test_host_calls_from_many_calls_answered_out_of_order(self):
        """40 async calls making 3 host calls each and 8 plain ones making
        one, all in flight at once; the host answers in shuffled order (and
        some host calls with a failure): every call gets its own results."""
        w = self.spawn(concurrency=64)
        for rid in range(1, 41):
            w.request(rid, "ahost", {"n": 3})
        for rid in range(41, 49):
            w.request(rid, "phost")
        held = []
        rng = random.Random(3)

        def host(msg):
            held.append(msg)
            if len(held) >= 8 or rng.random() < 0.2:
                rng.shuffle(held)
                for h in held:
                    w.send({"type": "host_reply", "id": h["id"], "success": True,
                            "result": {"echo": h["args"], "req": h["request_id"]}})
                held.clear()

        # Answer what is held whenever the worker goes quiet.
        replies = {}
        deadline = time.monotonic() + GUARD
        while len(replies) < 48:
            self.assertLess(time.monotonic(), deadline, w.stderr[-2000:])
            try:
                msg = w.recv(0.2)
            except Exception:
                for h in held:
                    w.send({"type": "host_reply", "id": h["id"], "success": True,
                            "result": {"echo": h["args"], "req": h["request_id"]}})
                held.clear()
                continue
            self.assertIsNotNone(msg)
            if msg.get("type") == "host_call":
                host(msg)
            else:
                self.assertNotIn(msg["id"], replies)
                replies[msg["id"]] = msg
        for rid in range(1, 41):
            res = replies[rid]["result"]
            self.assertEqual([r["echo"]["rid"] for r in res], [rid] * 3)
            self.assertEqual([r["echo"]["i"] for r in res], [0, 1, 2])
            self.assertEqual({r["req"] for r in res}, {rid})
        for rid in range(41, 49):
            self.assertEqual(replies[rid]["result"]["echo"]["rid"], rid)
        self.assert_serves(w)

    def test_cancel_while_waiting_for_the_host(self):
        w = self.spawn()
        w.request(1, "ahost")
        w.request(2, "phost")
        calls = [w.recv(GUARD), w.recv(GUARD)]
        self.assertEqual({c["type"] for c in calls}, {"host_call"})
        w.send({"type": "cancel", "id": 1})
        w.send({"type": "cancel", "id": 2})
        replies, _, _ = self.frames_until(w, lambda r: len(r) >= 2)
        self.assertEqual(replies[1][0]["error"]["type"], "Cancelled")
        self.assertEqual(replies[2][0]["error"]["type"], "Cancelled")
        # Late host replies for them are dropped.
        for c in calls:
            w.send({"type": "host_reply", "id": c["id"], "success": True, "result": 1})
        self.assertEqual(self.drain_quiet(w), [])
        self.assert_serves(w)


class EndOfInput(_Base):
    def test_eof_with_many_calls_in_flight(self):
        """stdin closes while 40 async and 8 plain calls run (some waiting for
        a slot): each gets exactly one successful reply, then exit 0."""
        w = self.spawn(concurrency=16)
        ids = list(range(1, 49))
        for rid in ids:
            w.request(rid, "asleep" if rid <= 40 else "psleep", {"s": 0.3})
        w.close_stdin()
        replies, _, _ = self.frames_until(w, lambda r: len(r) >= len(ids))
        self.assertTrue(all(len(v) == 1 and v[0]["success"] for v in replies.values()))
        self.assertEqual(w.wait(GUARD), 0)
        self.assertIsNone(w.recv(GUARD))  # stdout closed cleanly

    def test_eof_fails_a_pending_host_call(self):
        w = self.spawn()
        w.request(1, "ahost")
        self.assertEqual(w.recv(GUARD)["type"], "host_call")
        w.close_stdin()
        replies, _, _ = self.frames_until(w, lambda r: 1 in r)
        self.assertFalse(replies[1][0]["success"])
        self.assertEqual(w.wait(GUARD), 0)

    def test_host_call_made_after_eof_fails_instead_of_hanging(self):
        w = self.spawn()
        w.request(1, "ahost_later", {"s": 0.5})
        w.request(2, "phost_later", {"s": 0.5})
        time.sleep(0.1)
        w.close_stdin()
        # The host calls it writes after EOF can no longer be answered.
        replies, _, _ = self.frames_until(w, lambda r: len(r) >= 2, host=lambda m: None, guard=15)
        self.assertEqual(replies[1][0]["result"], {"error": "ConnectionError"})
        self.assertEqual(replies[2][0]["result"], {"error": "ConnectionError"})
        self.assertEqual(w.wait(15), 0)


class Sigterm(_Base):
    def test_sigterm_with_many_calls_running(self):
        w = self.spawn(concurrency=32)
        for rid in range(1, 101):
            w.request(rid, "asleep" if rid % 4 else "psleep", {"s": 30})
        time.sleep(0.5)
        w.signal(signal.SIGTERM)
        self.assertEqual(w.wait(GUARD), 0)
        # Whatever it wrote is well formed, and at most one reply per call.
        seen = {}
        while True:
            msg = w.recv(GUARD)
            if msg is None:
                break
            if msg.get("type") in (None, "response"):
                seen[msg["id"]] = seen.get(msg["id"], 0) + 1
        self.assertTrue(all(c == 1 for c in seen.values()), seen)

    def test_sigterm_while_an_async_handler_blocks_the_loop(self):
        w = self.spawn()
        w.request(1, "block_loop", {"s": 40})
        time.sleep(0.5)
        w.signal(signal.SIGTERM)
        try:
            self.assertEqual(w.wait(15), 0)
        except subprocess.TimeoutExpired:
            self.fail("worker still running 15 s after SIGTERM")


if __name__ == "__main__":
    unittest.main()
