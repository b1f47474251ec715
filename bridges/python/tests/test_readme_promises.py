"""What bridges/python/README.md (Concurrency, Cancellation) promises that
the other suites do not already show, against real worker processes."""

import math
import os
import queue
import random
import shutil
import signal
import tempfile
import threading
import time
import unittest

from ._helpers import CODECS, WorkerProcess, _wire, wait_until

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


HOST_CALL_SCRIPT = r'''
import snakepit_bridge

worker = snakepit_bridge.Worker()

@worker.command("ask")
def ask(args, ctx):
    # Plain function (sync mode): blocks in call_host until the host answers.
    return [len(ctx.call_host("lookup", {"i": i})) for i in range(args.get("calls", 1))]

@worker.command("echo")
def echo(args):
    return args

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



class SigintDuringASyncHostCall(_Base):
    """README, Cancellation (and docs/bridges.md, Concurrency and
    cancellation): in the default mode SIGINT gives the running handler
    `KeyboardInterrupt` at once, "also inside [...] a host call", and the
    reply is a failed reply of type `Cancelled`; the worker serves on."""

    script_text = HOST_CALL_SCRIPT

    def test_sigint_cancels_a_sync_handler_blocked_in_call_host_and_the_worker_serves_on(self):
        for codec in CODECS:
            w = self.spawn(codec)
            w.request(1, "ask")
            call = w.recv()
            self.assertEqual((call.get("type"), call.get("request_id"), call.get("function")),
                             ("host_call", 1, "lookup"), call)
            time.sleep(0.2)  # the handler now waits in call_host for the reply
            started = time.monotonic()
            w.signal(signal.SIGINT)
            reply = w.recv()
            self.assertLess(time.monotonic() - started, 5)
            self.assertEqual(reply.get("id"), 1, reply)
            self.assertFalse(reply["success"], reply)
            self.assertEqual(reply["error"]["type"], "Cancelled", reply)
            # The host's answer, too late now, is dropped; the same process
            # answers the next requests, host calls included.
            w.send({"type": "host_reply", "id": call["id"], "success": True, "result": "late"})
            self.assertEqual(w.call(2, "echo", {"n": 2})["result"], {"n": 2})
            w.request(3, "ask")
            call = w.recv()
            self.assertEqual((call.get("type"), call.get("request_id")), ("host_call", 3), call)
            w.send({"type": "host_reply", "id": call["id"], "success": True, "result": "four"})
            reply = w.recv()
            self.assertEqual((reply.get("id"), reply.get("result")), (3, [4]), reply)
            self.assertIsNone(w.proc.poll())

    def test_a_sigint_storm_during_host_calls_loses_no_frame(self):
        # Each round: a handler waits in call_host; its (large) host_reply is
        # written while SIGINTs arrive in a row, so some land while the
        # worker is part way through reading the frame. Every request must
        # get exactly one reply (the result, or Cancelled), and the frames
        # after it must still be read whole.
        rng = random.Random(7)
        big = "x" * (1 << 20)
        w = self.spawn("json")
        pid = w.proc.pid
        outcomes = {"ok": 0, "Cancelled": 0}
        for rid in range(1, 41):
            w.request(rid, "ask", {"calls": 2})
            first = True
            while True:
                try:
                    msg = w.recv()
                except queue.Empty:
                    self.fail("request %d got no reply: a frame lost or cut? stderr:\n%s" % (rid, w.stderr))
                self.assertIsNotNone(msg, w.stderr)
                if msg.get("type") == "host_call":
                    self.assertEqual(msg["request_id"], rid, msg)
                    data = _wire.encode_frame(w.codec, {"type": "host_reply", "id": msg["id"],
                                                        "success": True, "result": big})
                    if not first:
                        w.send_raw(data)
                        continue
                    first = False
                    writer = threading.Thread(target=w.send_raw, args=(data,))
                    writer.start()
                    time.sleep(rng.uniform(0, 0.004))
                    for _ in range(rng.randint(2, 5)):
                        w.signal(signal.SIGINT)
                        time.sleep(rng.uniform(0, 0.001))
                    writer.join(10)
                    self.assertFalse(writer.is_alive(), "the worker stopped reading; stderr:\n" + w.stderr)
                    continue
                self.assertEqual(msg.get("id"), rid, msg)
                if msg["success"]:
                    self.assertEqual(msg["result"], [len(big), len(big)], rid)
                    outcomes["ok"] += 1
                else:
                    self.assertEqual(msg["error"]["type"], "Cancelled", msg)
                    outcomes["Cancelled"] += 1
                break
        # Some SIGINTs did cancel (and late ones were ignored between
        # requests); the worker still answers, the same process.
        self.assertGreater(outcomes["Cancelled"], 0, outcomes)
        self.assertEqual(w.call(100, "echo", {"n": 100})["result"], {"n": 100})
        self.assertEqual(w.proc.pid, pid)
        self.assertIsNone(w.proc.poll())


if __name__ == "__main__":
    unittest.main()


NAN_SCRIPT = '''
import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("float")
def float_(args):
    return {"value": float(args["text"])}


@worker.command("chunk")
def chunk(args, ctx):
    try:
        ctx.send_chunk(float("nan"))
    except ValueError as exc:
        return "refused: " + str(exc)
    return "sent"


worker.run()
'''


class NonFiniteFloats(_Base):
    """README: a result "must be encodable by the codec ... A result that
    cannot be encoded is a failed reply". JSON has no NaN or infinities: the
    bridge once wrote `NaN`/`Infinity` anyway, which the pool took for a
    broken protocol and replaced the worker."""

    script_text = NAN_SCRIPT

    def test_a_nan_or_infinite_result_under_json_is_a_failed_reply_and_the_worker_serves_on(self):
        w = self.spawn("json")
        for rid, text in enumerate(["nan", "inf", "-inf"], start=1):
            reply = w.call(rid, "float", {"text": text})
            self.assertFalse(reply["success"], reply)
            self.assertEqual(reply["error"]["type"], "ValueError", reply)
            self.assertIn("could not be encoded", reply["error"]["message"])
        self.assertEqual(w.call(4, "float", {"text": "1.5"})["result"], {"value": 1.5})
        # A chunk is refused to the handler, which goes on.
        self.assertTrue(w.call(5, "chunk", stream=True)["result"].startswith("refused: "))
        self.assertIsNone(w.proc.poll())

    def test_msgpack_carries_them(self):
        if "msgpack" not in CODECS:
            self.skipTest("msgpack is not installed")
        w = self.spawn("msgpack")
        self.assertTrue(math.isnan(w.call(1, "float", {"text": "nan"})["result"]["value"]))
        self.assertEqual(w.call(2, "float", {"text": "inf"})["result"]["value"], float("inf"))
