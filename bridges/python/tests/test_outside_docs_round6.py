"""Round 6 (second wave) of the outside review: docs/bridges.md as a promise
for the Python bridge, checked by driving a real worker process over pipes.

- "Concurrency and cancellation": "In every case the reply is a failed
  reply of type ``Cancelled``", also for a handler that swallows the
  interruption and returns a value (plain functions: a ``cancel`` frame read
  while the handler waits for a host call, "a ``cancel`` frame for the call
  read there fails the call's waiting host calls with ``Cancelled``";
  ``async def``: ``asyncio.CancelledError`` at its current ``await``).
- "The context, side by side": ``ctx.emit`` "returns ``False`` and sends
  nothing ... once the call was ... cancelled"; ``ctx.cancelled`` is then
  true.
- "The context, side by side", logging: ``ctx.logger`` writes to stderr
  (the pool's log), never to the frames.
"""

import os
import shutil
import tempfile
import time
import unittest

from tests._helpers import CODECS, WorkerProcess

# Liveness only: generous, for a loaded machine.
LONG = 30.0

SYNC_WORKER = r'''
import sys, time
import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command
def swallow(args, ctx):
    try:
        ctx.call_host("slow", {})
        seen = "the host answered"
    except BaseException as exc:  # swallowed on purpose
        seen = "%s: %s" % (type(exc).__name__, exc)
    # What the table promises once the call was cancelled.
    print("AFTER|%s|%s|%s" % (seen, ctx.cancelled, ctx.emit("late")), file=sys.stderr, flush=True)
    return {"swallowed": seen}


@worker.command
def log(args, ctx):
    ctx.logger.info("info line %s", args.get("n"))
    ctx.logger.warning("warning line")
    ctx.logger.error("error line")
    return "logged"


worker.run()
'''

ASYNC_WORKER = r'''
import asyncio, sys
import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command
async def swallow(args, ctx):
    try:
        await asyncio.sleep(60)
        seen = "slept"
    except asyncio.CancelledError:  # swallowed on purpose
        seen = "CancelledError"
    print("AFTER|%s|%s|%s" % (seen, ctx.cancelled, ctx.emit("late")), file=sys.stderr, flush=True)
    await asyncio.sleep(0.2)
    return {"swallowed": seen}


worker.run()
'''


class _Scripts(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="snakepit-bdoc-r6-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def start(self, source, codec):
        path = os.path.join(self.dir, "worker.py")
        with open(path, "w") as f:
            f.write(source)
        w = WorkerProcess(path, codec=codec)
        self.addCleanup(w.stop)
        hello = w.recv(LONG)
        self.assertEqual(hello and hello.get("type"), "hello", w.stderr)
        return w, hello

    def frames_for(self, w, rid):
        """Frames for request ``rid`` up to and including its reply."""
        out = []
        while True:
            msg = w.recv(LONG)
            self.assertIsNotNone(msg, "worker closed stdout; stderr:\n" + w.stderr)
            if msg.get("id") == rid or msg.get("request_id") == rid:
                out.append(msg)
            if msg.get("type") in (None, "response") and msg.get("id") == rid:
                return out

    def after_line(self, w):
        deadline = time.monotonic() + LONG
        while "AFTER|" not in w.stderr:
            if time.monotonic() > deadline:
                self.fail("the handler never reported; stderr:\n" + w.stderr)
            time.sleep(0.01)
        return w.stderr.split("AFTER|", 1)[1].splitlines()[0].split("|")


class SwallowedCancellation(_Scripts):
    def test_a_cancel_read_during_a_host_call_answers_cancelled_even_if_the_handler_swallows_it(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, hello = self.start(SYNC_WORKER, codec)
                self.assertEqual(hello["capabilities"]["max_concurrency"], 1)
                w.request(3, "swallow", {}, stream=True)
                call = w.recv(LONG)
                self.assertEqual(call.get("type"), "host_call", call)
                w.send({"type": "cancel", "id": 3})
                frames = self.frames_for(w, 3)
                # No chunk: emit after the cancellation sent nothing.
                self.assertEqual(len(frames), 1, frames)
                self.assertEqual(frames[0]["success"], False, frames)
                self.assertEqual(frames[0]["error"]["type"], "Cancelled", frames)
                seen, cancelled, emitted = self.after_line(w)
                self.assertEqual(seen, "Cancelled: request 3 was cancelled")
                self.assertEqual((cancelled, emitted), ("True", "False"))
                # The late answer to the host call is dropped, and the same
                # worker serves on.
                w.send({"type": "host_reply", "id": call["id"], "success": True, "result": 1})
                reply = w.call(4, "log", {"n": 1}, timeout=LONG)
                self.assertEqual(reply["result"], "logged", reply)
                self.assertIsNone(w.proc.poll())

    def test_an_async_handler_swallowing_cancelled_error_still_answers_cancelled(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, hello = self.start(ASYNC_WORKER, codec)
                self.assertTrue(hello["capabilities"]["cancel"], hello)
                w.request(5, "swallow", {}, stream=True)
                # The handler is inside its await once the loop has taken it:
                # a cancel now must reach it there.
                time.sleep(0.5)
                w.send({"type": "cancel", "id": 5})
                frames = self.frames_for(w, 5)
                self.assertEqual(len(frames), 1, frames)
                self.assertEqual(frames[0]["error"]["type"], "Cancelled", frames)
                seen, cancelled, emitted = self.after_line(w)
                self.assertEqual((seen, cancelled, emitted), ("CancelledError", "True", "False"))
                # Nothing more comes for request 5 once the handler returns.
                reply = w.call(6, "ping", {}, timeout=LONG)
                self.assertTrue(reply["success"], reply)


class LoggerGoesToStderr(_Scripts):
    def test_ctx_logger_writes_to_stderr_with_the_request_id_and_never_to_the_frames(self):
        w, _ = self.start(SYNC_WORKER, "json")
        reply = w.call(9, "log", {"n": 41}, timeout=LONG)
        self.assertEqual(reply["result"], "logged", reply)
        w.close_stdin()
        self.assertEqual(w.wait(LONG), 0)
        w.stop()
        for line in ("info line 41", "warning line", "error line"):
            self.assertIn(line, w.stderr)
            self.assertNotIn(line.encode(), bytes(w.raw_stdout))
        self.assertIn("[req 9]", w.stderr)


if __name__ == "__main__":
    unittest.main()
