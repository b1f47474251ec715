"""Round 6 of the outside review of the Python bridge.

Signals whose Python handler the main thread does not run at once: CPython
runs a signal's Python handler on the main thread, between bytecodes, and a
blocking call of the main thread ends early only when the signal is
delivered to that thread while the call waits. A SIGTERM that landed just
before the handler's thread blocked, or that the kernel gave to another
thread, left a worker whose handler sleeps running on (CI saw one such
SIGTERM while a thread read stdin for its host call: the worker did not
exit within 30 s). The tests make that state certain by sending the signal
to the thread that reads stdin (in asyncio mode, to a thread of a handler
that blocks the loop).
"""

import os
import signal
import subprocess
import unittest

from tests._helpers import CODECS, TESTS_DIR, WorkerProcess

WORKER = os.path.join(TESTS_DIR, "round6_worker.py")

# Liveness only: generous, for a loaded machine.
LONG = 30.0


def _echo(call):
    return {"type": "host_reply", "id": call["id"], "success": True, "result": {"echo": call["args"]}}


class _Base(unittest.TestCase):
    ENV = {}

    def start(self, codec="json", env=None):
        merged = dict(self.ENV)
        merged.update(env or {})
        w = WorkerProcess(WORKER, codec=codec, env=merged)
        self.addCleanup(w.stop)
        hello = w.recv(LONG)
        self.assertEqual(hello["type"], "hello", w.stderr)
        return w

    def next_frame(self, w):
        msg = w.recv(LONG)
        self.assertIsNotNone(msg, "worker closed stdout; stderr:\n" + w.stderr)
        return msg

    def wait_exit(self, w):
        try:
            return w.wait(LONG)
        except subprocess.TimeoutExpired:
            # Stacks to stderr (faulthandler), then the worker goes.
            w.signal(signal.SIGUSR1)
            try:
                w.wait(2)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            self.fail("the worker did not exit after SIGTERM; stderr:\n" + w.stderr)


class SignalsAThreadReadsTest(_Base):
    """A signal taken by the thread that reads stdin for its host call,
    while the handler's own thread sleeps."""

    def test_a_sigterm_taken_by_the_thread_reading_stdin_ends_the_worker(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.start(codec)
                w.request(1, "signal_reader", {"signal": "SIGTERM"})
                call = self.next_frame(w)
                self.assertEqual(call.get("type"), "host_call", (call, w.stderr))
                # The worker signals its reading thread itself; the host
                # call stays unanswered, so that thread keeps reading.
                self.assertEqual(self.wait_exit(w), 0, w.stderr)
                w.stop()  # stderr read to its end
                self.assertIn("R6 kick", w.stderr)
                # A clean exit: the handler's finally block ran, once.
                self.assertEqual(w.stderr.count("R6 1 finally ran"), 1, w.stderr)
                self.assertNotIn("Traceback", w.stderr)

    def test_a_sigint_taken_by_the_thread_reading_stdin_cancels_the_sleeping_handler(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.start(codec)
                w.request(1, "signal_reader", {"signal": "SIGINT"})
                call = self.next_frame(w)
                self.assertEqual(call.get("type"), "host_call", (call, w.stderr))
                reply = self.next_frame(w)
                self.assertEqual(reply.get("id"), 1, (reply, w.stderr))
                self.assertEqual(reply["error"]["type"], "Cancelled", (reply, w.stderr))
                w.send(_echo(call))  # late: its call is over, dropped
                # The worker serves on, and the thread's host call failed
                # with the call (answered, then the reading thread let go).
                self.assertEqual(w.call(2, "echo", {"x": 1}, timeout=LONG)["result"]["echoed"], {"x": 1})
                outcome = w.call(3, "outcome", {"id": 1}, timeout=LONG)["result"]
                self.assertEqual(outcome["type"], "Cancelled", (outcome, w.stderr))
                self.assertNotIn("Traceback", w.stderr)

    def test_a_sigterm_taken_by_the_reading_thread_while_the_main_thread_waits_for_it_ends_the_worker(self):
        # The reading thread drains the signal wakeup pipe, which the main
        # thread's own wait watches too: it must wake the main thread.
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.start(codec)
                w.request(1, "signal_reader", {"signal": "SIGTERM", "main_calls": True})
                calls = [self.next_frame(w), self.next_frame(w)]
                self.assertEqual([c.get("type") for c in calls], ["host_call"] * 2, (calls, w.stderr))
                self.assertEqual(self.wait_exit(w), 0, w.stderr)
                w.stop()
                self.assertIn("R6 kick", w.stderr)
                self.assertEqual(w.stderr.count("R6 1 finally ran"), 1, w.stderr)
                self.assertNotIn("Traceback", w.stderr)

    def test_a_sigint_taken_by_the_reading_thread_while_the_main_thread_waits_for_it_cancels_the_call(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.start(codec)
                w.request(1, "signal_reader", {"signal": "SIGINT", "main_calls": True})
                calls = [self.next_frame(w), self.next_frame(w)]
                self.assertEqual([c.get("type") for c in calls], ["host_call"] * 2, (calls, w.stderr))
                reply = self.next_frame(w)
                self.assertEqual(reply.get("id"), 1, (reply, w.stderr))
                self.assertEqual(reply["error"]["type"], "Cancelled", (reply, w.stderr))
                for call in calls:
                    w.send(_echo(call))  # late: dropped
                self.assertEqual(w.call(2, "echo", {"x": 2}, timeout=LONG)["result"]["echoed"], {"x": 2})
                # The thread's host call failed once the call was answered.
                outcome = w.call(3, "outcome", {"id": 1}, timeout=LONG)["result"]
                self.assertEqual(outcome["type"], "Cancelled", (outcome, w.stderr))
                self.assertNotIn("Traceback", w.stderr)


class AsyncioSignalledThreadTest(_Base):
    ENV = {"R6_ASYNC": "1"}

    def test_a_sigterm_taken_by_a_thread_while_a_handler_blocks_the_loop_ends_the_worker(self):
        # README, Output and signals: "In asyncio mode, when a handler blocks
        # the event loop (time.sleep in an async def), SIGTERM still ends the
        # worker with exit code 0, within about 2 seconds".
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.start(codec)
                w.request(1, "ablock_signalled_thread", {})
                self.assertEqual(self.wait_exit(w), 0, w.stderr)
                w.stop()
                self.assertIn("R6 kick", w.stderr)

    def test_the_signal_watcher_thread_ends_with_run(self):
        # A script may go on after run() returns at the end of its input:
        # the thread that watches for signals must not outlive run().
        w = self.start("json")
        self.assertEqual(w.call(1, "echo", {"x": 1}, timeout=LONG)["result"]["echoed"], {"x": 1})
        w.close_stdin()
        self.assertEqual(w.wait(LONG), 0, w.stderr)
        w.stop()
        # Ended already (0), or ends within the join (1); never left alive.
        self.assertRegex(w.stderr, r"R6 after run: 0 watchers [01] alive \[\]\n")


if __name__ == "__main__":
    unittest.main()
