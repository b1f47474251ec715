"""Round 7 of the outside review of the Python bridge.

Signals in the default mode whose C-level handler ran while the main
thread's blocking call did not see it: the kernel gave the signal to
another thread, or it landed in the instant before the call began. CPython
runs the Python handler on the main thread only, between bytecodes, so
the call (``time.sleep`` here) ran on to its end. round7_worker.py makes
that state certain by sending the signal to a thread of the handler that
only waits (round 6 covered a thread that reads stdin).
"""

import functools
import os
import signal
import subprocess
import threading
import unittest

from tests._helpers import CODECS, TESTS_DIR, WorkerProcess, run_in_process

import snakepit_bridge
from snakepit_bridge import _wire

WORKER = os.path.join(TESTS_DIR, "round7_worker.py")

# Liveness only: generous, for a loaded machine. The handlers sleep an hour.
LONG = 30.0


class _Base(unittest.TestCase):
    def start(self, codec="json"):
        w = WorkerProcess(WORKER, codec=codec)
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
            w.proc.kill()
            w.proc.wait()
            self.fail("the worker did not exit after SIGTERM; stderr:\n" + w.stderr)


class SignalTakenByAnIdleThreadTest(_Base):
    def test_a_sigint_taken_by_a_thread_that_does_not_read_stdin_cancels_the_sleeping_handler(self):
        # README, Cancellation: the running handler gets KeyboardInterrupt
        # at once, also inside time.sleep.
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.start(codec)
                w.request(1, "signal_idle_thread", {"signal": "SIGINT"})
                reply = self.next_frame(w)
                self.assertEqual(reply.get("id"), 1, (reply, w.stderr))
                self.assertFalse(reply["success"], reply)
                self.assertEqual(reply["error"]["type"], "Cancelled", (reply, w.stderr))
                # Cancelled once: the calls after it run to their end.
                self.assertEqual(w.call(2, "nap", {}, timeout=LONG)["result"], "rested", w.stderr)
                self.assertEqual(w.call(3, "echo", {"x": 3}, timeout=LONG)["result"]["echoed"], {"x": 3})
                w.stop()
                self.assertIn("R7 kick", w.stderr)
                self.assertEqual(w.stderr.count("R7 1 finally ran"), 1, w.stderr)
                self.assertNotIn("Traceback", w.stderr)

    def test_a_sigint_taken_by_the_thread_a_handler_joins_cancels_the_join(self):
        # README, Cancellation: KeyboardInterrupt at once, in any blocking
        # wait CPython lets a signal end (Thread.join here).
        w = self.start()
        w.request(1, "signal_idle_thread", {"signal": "SIGINT", "join": True})
        reply = self.next_frame(w)
        self.assertEqual(reply.get("id"), 1, (reply, w.stderr))
        self.assertEqual(reply.get("error", {}).get("type"), "Cancelled", (reply, w.stderr))
        self.assertEqual(w.call(2, "nap", {}, timeout=LONG)["result"], "rested", w.stderr)
        w.stop()
        self.assertEqual(w.stderr.count("R7 1 finally ran"), 1, w.stderr)
        self.assertNotIn("Traceback", w.stderr)

    def test_a_sigterm_taken_by_a_thread_that_does_not_read_stdin_ends_the_worker(self):
        # README, Output and signals: SIGTERM ends the worker with exit code 0.
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.start(codec)
                w.request(1, "signal_idle_thread", {"signal": "SIGTERM"})
                self.assertEqual(self.wait_exit(w), 0, w.stderr)
                w.stop()
                self.assertIn("R7 kick", w.stderr)
                self.assertEqual(w.stderr.count("R7 1 finally ran"), 1, w.stderr)
                self.assertNotIn("Traceback", w.stderr)

    def test_a_scripts_own_signal_handler_runs_when_another_thread_takes_its_signal(self):
        # The script's SIGUSR2 handler raises Alarm: the main thread runs it
        # during the handler's sleep, not an hour later.
        w = self.start()
        w.request(1, "signal_idle_thread", {"signal": "SIGUSR2"})
        reply = self.next_frame(w)
        self.assertEqual(reply.get("id"), 1, (reply, w.stderr))
        self.assertFalse(reply["success"], reply)
        self.assertEqual(reply["error"]["type"], "Alarm", (reply, w.stderr))
        self.assertEqual(w.call(2, "nap", {}, timeout=LONG)["result"], "rested", w.stderr)


class EachCancelCancelsOnceTest(_Base):
    def test_many_cancels_in_a_row_each_cancel_only_their_own_call(self):
        # The pool's SIGINT (to the process), and one taken by another
        # thread, in turn: each cancels its call, and never the next one.
        w = self.start()
        rid = 0
        for round_ in range(12):
            rid += 1
            if round_ % 2:
                w.request(rid, "signal_idle_thread", {"signal": "SIGINT"})
            else:
                w.request(rid, "started", {})
                call = self.next_frame(w)
                self.assertEqual(call.get("type"), "host_call", (call, w.stderr))
                w.send({"type": "host_reply", "id": call["id"], "success": True, "result": None})
                w.signal(signal.SIGINT)
            reply = self.next_frame(w)
            self.assertEqual(reply.get("id"), rid, (reply, w.stderr))
            self.assertEqual(reply.get("error", {}).get("type"), "Cancelled", (reply, w.stderr))
            rid += 1
            nap = w.call(rid, "nap", {"naps": 10}, timeout=LONG)
            self.assertTrue(nap["success"], (round_, nap, w.stderr))
            self.assertEqual(nap["result"], "rested")
        w.stop()
        self.assertNotIn("Traceback", w.stderr)


def _logged(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


def _alogged(fn):
    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        return await fn(*args, **kwargs)

    return wrapper


class DecoratedHandlerTest(_Base):
    """README, Handlers: ``def handler(args, ctx)`` or ``def handler(args)``
    (and their ``async def`` forms), also under a decorator of the user's
    whose wrapper takes ``*args, **kwargs`` (functools.wraps): the handler
    gets the arguments it declares, not ``ctx`` too."""

    def test_a_decorated_handler_gets_the_arguments_it_declares(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.start(codec)
                reply = w.call(1, "decorated_args", {"x": 1}, timeout=LONG)
                self.assertTrue(reply["success"], (reply, w.stderr))
                self.assertEqual(reply["result"], {"args": {"x": 1}})
                reply = w.call(2, "decorated_ctx", {"x": 2}, timeout=LONG)
                self.assertTrue(reply["success"], (reply, w.stderr))
                self.assertEqual(reply["result"], {"args": {"x": 2}, "id": 2})
                w.stop()
                self.assertIn("R7 calling decorated_args", w.stderr)

    def test_a_decorated_async_handler_gets_the_arguments_it_declares(self):
        worker = snakepit_bridge.Worker()

        @worker.command("one")
        @_alogged
        async def one(args):
            return {"args": args}

        @worker.command("two")
        @_alogged
        async def two(args, ctx):
            return {"args": args, "id": ctx.request_id}

        @worker.command("plain")
        @_logged
        def plain(args):
            return {"args": args}

        self.assertTrue(worker.is_async)
        codec = _wire.get_codec("json")
        frames = [{"id": i, "command": c, "args": {"n": i}, "timestamp": "2026-11-27T12:24:04.051023Z"}
                  for i, c in ((1, "one"), (2, "two"), (3, "plain"))]
        code, msgs = run_in_process(worker, frames, codec)
        self.assertEqual(code, 0)
        replies = {m["id"]: m for m in msgs if m.get("type") in (None, "response") and "id" in m}
        self.assertEqual(replies[1].get("result"), {"args": {"n": 1}}, msgs)
        self.assertEqual(replies[2].get("result"), {"args": {"n": 2}, "id": 2}, msgs)
        self.assertEqual(replies[3].get("result"), {"args": {"n": 3}}, msgs)


class ComputeResultOutOfRangeTest(_Base):
    def test_an_integer_result_the_codec_cannot_carry_is_a_value_error(self):
        # protocol.md section 7: compute's errors are failed replies of
        # type ValueError (Python). A product past 64 bits (MessagePack) or
        # past Python's limit on an int's digits (JSON) was the bridge's
        # TypeError for a result that cannot be encoded.
        big = {"json": 10**2200, "msgpack": 2**62}
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.start(codec)
                reply = w.call(1, "compute", {"operation": "multiply", "a": big[codec], "b": big[codec]},
                               timeout=LONG)
                self.assertFalse(reply["success"], reply)
                self.assertEqual(reply["error"]["type"], "ValueError", reply)
                self.assertTrue(reply["error"]["message"].startswith("Result out of range"), reply)
                # In range: exact, as before.
                reply = w.call(2, "compute", {"operation": "multiply", "a": 2**31, "b": 2**31}, timeout=LONG)
                self.assertEqual(reply["result"]["result"], 2**62, reply)
                reply = w.call(3, "compute", {"operation": "add", "a": 2**63, "b": 2**63 - 1}, timeout=LONG)
                self.assertEqual(reply["result"]["result"], 2**64 - 1, reply)
        # Called directly, as a plain function, it still works.
        self.assertEqual(snakepit_bridge.generic.compute({"a": 1, "b": 2})["result"], 3)


class RegistrationTest(unittest.TestCase):
    """README, Handlers: ``worker.register("name", fn)``. A name that is
    not a string (no request can name it, and ``info`` then failed listing
    the commands) or a function that cannot be called is refused there,
    with TypeError, as ``after_fork`` refuses what it cannot call."""

    def test_register_refuses_a_name_that_is_not_a_string_or_a_handler_that_is_not_callable(self):
        worker = snakepit_bridge.generic.register(snakepit_bridge.Worker())
        for name, fn in ((5, print), (b"echo2", print), (None, print), ("five", 5), ("none", None)):
            with self.subTest(name=name, fn=fn):
                with self.assertRaises(TypeError):
                    worker.register(name, fn)
        with self.assertRaises(TypeError):
            worker.command(7)(print)
        self.assertEqual(worker.commands, ["compute", "echo", "info", "ping"])
        # What it still takes: any callable, under any string.
        worker.register("p", functools.partial(lambda a, b: b, 1))
        self.assertIn("p", worker.commands)


class WatchingThreadTest(_Base):
    def test_the_watching_thread_takes_no_signal_and_ends_with_run(self):
        w = self.start()
        seen = w.call(1, "watcher", {}, timeout=LONG)["result"]
        if seen["nudge"] is None:
            self.skipTest("no real-time signals here: no watching thread")
        self.assertEqual(len(seen["watchers"]), 1, seen)
        watcher = seen["watchers"][0]
        self.assertTrue(watcher["alive"] and watcher["daemon"], seen)
        # Blocked there, so the kernel gives a process's signal to another
        # thread (the main one, when it can take it).
        self.assertTrue(watcher["blocks_sigint"] and watcher["blocks_sigterm"], seen)
        self.assertFalse(seen["main_blocked"] >> (signal.SIGINT - 1) & 1, seen)
        w.close_stdin()
        self.assertEqual(w.wait(LONG), 0, w.stderr)
        w.stop()
        self.assertIn("R7 after run: 0 watchers alive 0 nudge restored True\n", w.stderr)

    def test_no_watching_thread_without_the_bridges_signal_handlers(self):
        # run(install_signals=False): the bridge touches no signal, and
        # starts no thread for them.
        worker = snakepit_bridge.Worker()

        @worker.command("threads")
        def threads(args):
            return sorted(t.name for t in threading.enumerate())

        codec = _wire.get_codec("json")
        request = {"id": 1, "command": "threads", "args": {}, "timestamp": "2026-11-27T12:24:04.051023Z"}
        code, msgs = run_in_process(worker, [request], codec)
        self.assertEqual(code, 0)
        self.assertEqual(msgs[-1]["id"], 1, msgs)
        self.assertNotIn("snakepit-signals", msgs[-1]["result"], msgs)


if __name__ == "__main__":
    unittest.main()
