"""ctx.call_host from threads a handler starts, in both serve loops and
both codecs: while the call runs every thread gets its own reply; once the
call has ended the ctx's host calls fail with Cancelled, and the worker's
loop goes on.

Before the fix, in the one-at-a-time loop, a thread's host call read stdin
itself, beside the main thread: ``RuntimeError: concurrent poll()
invocation``, replies taken by the wrong thread (a host call that never
ends), and frames of the next calls read by a thread."""

import os
import queue
import signal
import unittest

from tests._helpers import CODECS, TESTS_DIR, WorkerProcess

WORKER = os.path.join(TESTS_DIR, "thread_host_worker.py")


class _FakePool:
    """Answers a worker's host calls, as the pool does."""

    def __init__(self, w):
        self.w = w
        self.host_calls = []

    def answer(self, call, fail=False):
        if fail:
            reply = {"type": "host_reply", "id": call["id"], "success": False,
                     "error": {"type": "Nope", "message": "refused"}}
        else:
            reply = {"type": "host_reply", "id": call["id"], "success": True,
                     "result": {"echo": call["args"]}}
        self.w.send(reply)

    def _recv(self):
        """The worker's next frame. None within 30 s is a failure that shows
        the worker's stderr (a loaded machine may take seconds; a bare
        ``queue.Empty`` told nothing in CI)."""
        try:
            return self.w.recv(timeout=30.0)
        except queue.Empty:
            raise AssertionError(
                "no frame from the worker within 30 s; stderr:\n" + self.w.stderr
            ) from None

    def host_calls_until(self, count):
        """Reads frames until ``count`` host calls came; returns them."""
        calls = []
        while len(calls) < count:
            msg = self._recv()
            if msg is None:
                raise AssertionError("worker closed stdout; stderr:\n" + self.w.stderr)
            if msg.get("type") == "host_call":
                calls.append(msg)
            else:
                raise AssertionError(f"a host call expected, got {msg!r}")
        return calls

    def reply_to(self, rid, hold=False):
        """Reads frames until request ``rid``'s reply, answering the host
        calls seen meanwhile (or holding them, with ``hold``)."""
        held = []
        while True:
            msg = self._recv()
            if msg is None:
                raise AssertionError("worker closed stdout; stderr:\n" + self.w.stderr)
            if msg.get("type") == "host_call":
                self.host_calls.append(msg)
                if hold:
                    held.append(msg)
                else:
                    self.answer(msg)
            elif msg.get("type") in (None, "response") and msg.get("id") == rid:
                return msg, held

    def call(self, rid, command, args):
        self.w.request(rid, command, args)
        return self.reply_to(rid)[0]


class _Cases:
    MODE = "sync"

    def start(self, codec):
        w = WorkerProcess(WORKER, codec=codec, env={"HOST_THREADS_MODE": self.MODE})
        self.addCleanup(w.stop)
        hello = w.recv()
        self.assertEqual(hello["type"], "hello", w.stderr)
        return w, _FakePool(w)

    def assert_serves(self, w, pool, rid):
        reply = pool.call(rid, "ping", {})
        self.assertTrue(reply["success"], (reply, w.stderr))

    def test_every_thread_gets_its_own_reply_while_the_call_runs(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                for rid in (1, 2, 3):
                    w.request(rid, "fan_out", {"n": 4, "here": True})
                    calls = pool.host_calls_until(5)
                    self.assertEqual({c["request_id"] for c in calls}, {rid})
                    # Answered in reverse order, one of them failed: each
                    # reply must reach the thread that made the call.
                    for call in reversed(calls):
                        pool.answer(call, fail=call["args"]["i"] == 0)
                    reply, _ = pool.reply_to(rid)
                    self.assertTrue(reply["success"], (reply, w.stderr))
                    threads = reply["result"]["threads"]
                    self.assertEqual(threads[0], {"type": "HostCallError", "message": "Nope: refused"})
                    self.assertEqual(threads[1:], [{"result": {"echo": {"i": i}}} for i in (1, 2, 3)])
                    self.assertEqual(reply["result"]["here"], {"result": {"echo": {"i": "here"}}})
                self.assert_serves(w, pool, 9)
                self.assertNotIn("Traceback", w.stderr)

    def test_a_host_call_after_the_call_ended_raises_cancelled(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                for n in range(5):
                    tag = f"after-{n}"
                    base = 10 * (n + 1)
                    self.assertEqual(pool.call(base, "leave", {"tag": tag})["result"], "left")
                    # The thread calls while the loop reads the next frame
                    # (or runs the next call).
                    self.assertEqual(pool.call(base + 1, "go", {"tag": tag})["result"], "going")
                    outcome = pool.call(base + 2, "outcome", {"tag": tag})["result"]
                    self.assertEqual(outcome["type"], "Cancelled", (outcome, w.stderr))
                    self.assertIn(f"request {base} is already finished", outcome["message"])
                self.assertEqual(pool.host_calls, [], "no host call may leave for a finished request")
                self.assert_serves(w, pool, 99)
                self.assertNotIn("Traceback", w.stderr)

    def test_a_host_call_waiting_when_the_call_ends_raises_cancelled(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                for n in range(3):
                    tag = f"waiting-{n}"
                    base = 10 * (n + 1)
                    w.request(base, "leave_waiting", {"tag": tag})
                    # The pool answers only after the call's reply: the
                    # thread's host call is on its way or waiting then.
                    reply, held = pool.reply_to(base, hold=True)
                    self.assertEqual(reply["result"], "left", w.stderr)
                    outcome = pool.call(base + 1, "outcome", {"tag": tag})["result"]
                    self.assertEqual(outcome["type"], "Cancelled", (outcome, w.stderr))
                    self.assertIn(f"request {base} is already finished", outcome["message"])
                    # Its late reply is dropped, and the worker serves on.
                    for call in held:
                        pool.answer(call)
                    self.assert_serves(w, pool, base + 2)
                self.assertNotIn("Traceback", w.stderr)

    def test_a_cancel_frame_fails_every_waiting_host_call_of_its_call(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                w.request(1, "fan_out", {"n": 3, "here": True})
                calls = pool.host_calls_until(4)
                w.send({"type": "cancel", "id": 1})
                reply, _ = pool.reply_to(1)
                self.assertFalse(reply["success"])
                self.assertEqual(reply["error"]["type"], "Cancelled", (reply, w.stderr))
                for call in calls:
                    pool.answer(call)  # too late: dropped
                self.assert_serves(w, pool, 2)
                self.assertNotIn("Traceback", w.stderr)


class OneAtATimeTest(_Cases, unittest.TestCase):
    MODE = "sync"

    def test_sigint_cancels_a_call_whose_threads_wait_for_the_host(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                # The handler's own thread waits for the host too: in
                # call_host, which SIGINT interrupts wherever it waits (a
                # handler blocked in Thread.join() may only see a SIGINT
                # that lands just before its wait once the wait ends).
                for rid in (1, 2, 3):
                    w.request(rid, "fan_out", {"n": 3, "here": True})
                    calls = pool.host_calls_until(4)
                    w.signal(signal.SIGINT)
                    reply, _ = pool.reply_to(rid)
                    self.assertEqual(reply["error"]["type"], "Cancelled", (reply, w.stderr))
                    for call in calls:
                        pool.answer(call)
                    self.assert_serves(w, pool, rid + 10)
                self.assertNotIn("Traceback", w.stderr)


    def test_a_cancel_frame_read_by_a_thread_interrupts_the_handler(self):
        # The handler's own thread sleeps while a thread it started waits
        # for the host and reads the call's cancel frame: the handler is
        # interrupted as by SIGINT, and the pool's SIGINT that follows is
        # ignored (the call is already cancelled).
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                w.request(1, "sleep_while_asking", {"tag": "asker"})
                pool.host_calls_until(1)
                w.send({"type": "cancel", "id": 1})
                reply, _ = pool.reply_to(1)
                self.assertEqual(reply["error"]["type"], "Cancelled", (reply, w.stderr))
                outcome = pool.call(2, "outcome", {"tag": "asker"})["result"]
                self.assertEqual(outcome["type"], "Cancelled", (outcome, w.stderr))
                self.assertIn("request 1 was cancelled", outcome["message"])
                w.signal(signal.SIGINT)  # the pool's, late: ignored
                self.assert_serves(w, pool, 3)
                self.assertNotIn("Traceback", w.stderr)


class ConcurrentTest(_Cases, unittest.TestCase):
    MODE = "concurrent"

    def test_a_task_left_behind_by_an_async_handler_gets_cancelled(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                self.assertEqual(pool.call(1, "aleave", {"tag": "task"})["result"], "left")
                self.assertEqual(pool.call(2, "go", {"tag": "task"})["result"], "going")
                outcome = pool.call(3, "outcome", {"tag": "task"})["result"]
                self.assertEqual(outcome["type"], "Cancelled", (outcome, w.stderr))
                self.assertIn("request 1 is already finished", outcome["message"])
                self.assertEqual(pool.host_calls, [])
                self.assert_serves(w, pool, 4)


if __name__ == "__main__":
    unittest.main()
