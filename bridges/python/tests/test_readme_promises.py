"""What bridges/python/README.md (Concurrency, Cancellation) promises that
the other suites do not already show, against real worker processes."""

import os
import shutil
import signal
import tempfile
import unittest

from ._helpers import CODECS, WorkerProcess, wait_until

SWALLOW_SCRIPT = r'''
import sys, time
import snakepit_bridge

worker = snakepit_bridge.Worker()

@worker.command("swallow")
def swallow(args, ctx):
    try:
        sys.stderr.write("swallow: sleeping\n")
        sys.stderr.flush()
        time.sleep(30)
    except KeyboardInterrupt:
        sys.stderr.write("swallow: caught KeyboardInterrupt, ctx.cancelled=%s\n" % ctx.cancelled)
        sys.stderr.flush()
        return "swallowed"
    return "slept"

@worker.command("echo")
def echo(args):
    return args

worker.run()
'''

ASYNC_SCRIPT = r'''
import snakepit_bridge

worker = snakepit_bridge.Worker()

@worker.command("blocking_call_host")
async def blocking_call_host(args, ctx):
    return ctx.call_host("lookup", {"key": "k"})

@worker.command("blocking_session_get")
async def blocking_session_get(args, ctx):
    return ctx.session.get("k")

@worker.command("awaited_session_get")
async def awaited_session_get(args, ctx):
    return await ctx.session.aget("k")

worker.run()
'''


class _Base(unittest.TestCase):
    script_text = ""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="snakepit-py-readme-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.script = os.path.join(self.dir, "worker.py")
        with open(self.script, "w") as f:
            f.write(self.script_text)

    def spawn(self, codec):
        w = WorkerProcess(self.script, codec)
        self.addCleanup(w.stop)
        self.assertEqual(w.recv()["type"], "hello")
        return w


class SwallowedKeyboardInterrupt(_Base):
    """README, Cancellation: "Do not swallow `KeyboardInterrupt` in
    handlers; if you do, `ctx.cancelled` is still set and the reply still
    says `Cancelled`"."""

    script_text = SWALLOW_SCRIPT

    def test_a_handler_that_swallows_sigints_keyboard_interrupt_still_replies_cancelled(self):
        for codec in CODECS:
            w = self.spawn(codec)
            w.request(1, "swallow")
            # SIGINT once the handler runs (inside its try).
            self.assertTrue(wait_until(lambda: "swallow: sleeping" in w.stderr), w.stderr)
            w.signal(signal.SIGINT)
            reply = w.recv()
            self.assertEqual(reply["id"], 1, reply)
            self.assertFalse(reply["success"], "the handler returned normally, yet: %r" % (reply,))
            self.assertEqual(reply["error"]["type"], "Cancelled", reply)
            self.assertNotIn("result", reply)
            # The handler did catch it, and saw ctx.cancelled set.
            self.assertTrue(
                wait_until(lambda: "caught KeyboardInterrupt, ctx.cancelled=True" in w.stderr),
                w.stderr)
            # The worker serves on.
            self.assertEqual(w.call(2, "echo", {"n": 2})["result"], {"n": 2})
            self.assertIsNone(w.proc.poll())


class BlockingFormsInAsyncHandlers(_Base):
    """README, Concurrency: "In async handlers use `await ctx.acall_host(...)`
    and `ctx.session.aget(...)`; the blocking forms raise there"."""

    script_text = ASYNC_SCRIPT

    def first_frame_for(self, w, rid, command):
        """The first frame the worker sends after request `rid`: a raising
        blocking form sends no host_call before the reply."""
        w.request(rid, command)
        return w.recv()

    def test_ctx_call_host_in_an_async_handler_fails_naming_acall_host(self):
        for codec in CODECS:
            w = self.spawn(codec)
            reply = self.first_frame_for(w, 1, "blocking_call_host")
            self.assertEqual(reply.get("id"), 1, "no host_call went out: %r" % (reply,))
            self.assertFalse(reply["success"], reply)
            self.assertEqual(reply["error"]["type"], "RuntimeError", reply)
            self.assertIn("would block the event loop", reply["error"]["message"])
            self.assertIn("await ctx.acall_host(", reply["error"]["message"])

    def test_ctx_session_get_in_an_async_handler_fails(self):
        for codec in CODECS:
            w = self.spawn(codec)
            reply = self.first_frame_for(w, 1, "blocking_session_get")
            self.assertEqual(reply.get("id"), 1, "no host_call went out: %r" % (reply,))
            self.assertFalse(reply["success"], reply)
            self.assertEqual(reply["error"]["type"], "RuntimeError", reply)
            self.assertIn("would block the event loop", reply["error"]["message"])
            self.assertIn("ctx.session.aget", reply["error"]["message"])
            # The awaited form works in the same worker: its host call goes
            # out, and its answer is the result.
            w.request(2, "awaited_session_get")
            call = w.recv()
            self.assertEqual((call.get("type"), call.get("function"), call.get("args")),
                             ("host_call", "session.get", {"key": "k"}), call)
            w.send({"type": "host_reply", "id": call["id"], "success": True, "result": "v"})
            reply = w.recv()
            self.assertEqual((reply["id"], reply.get("result")), (2, "v"), reply)


if __name__ == "__main__":
    unittest.main()
