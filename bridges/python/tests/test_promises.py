"""What docs/protocol.md and docs/bridges.md promise of the Python bridge
that the other suites do not already show, against real worker processes."""

import os
import shutil
import tempfile
import unittest

from ._helpers import CODECS, WorkerProcess, wait_until

SCRIPT = r'''
import asyncio, os, sys
import snakepit_bridge

worker = snakepit_bridge.Worker(max_concurrency=int(os.environ.get("PROMISES_CONCURRENCY", "1")))
started = []

@worker.command("emit")
def emit(args, ctx):
    return {"sent": ctx.emit({"part": 1}), "stream": ctx.stream}

@worker.command("unencodable")
def unencodable(args):
    return object()

@worker.command("block")
def block(args, ctx):
    started.append(ctx.request_id)
    open(os.path.join(args["dir"], "started-%d" % ctx.request_id), "a").write("x")
    # Waits for a file the test writes: runs until told to stop.
    while not os.path.exists(args["until"]):
        if ctx.cancelled:
            break
        import time
        time.sleep(0.01)
    return {"started": len(started)}

worker.run()
'''


class _Base(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="snakepit-py-promises-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.script = os.path.join(self.dir, "worker.py")
        with open(self.script, "w") as f:
            f.write(SCRIPT)

    def spawn(self, codec="json", env=None):
        w = WorkerProcess(self.script, codec, env=env)
        self.addCleanup(w.stop)
        self.assertEqual(w.recv()["type"], "hello")
        return w


class StreamEndsInsideAFrame(_Base):
    """protocol.md section 4: "The stream ends inside a frame ...: the worker
    treats it as the end of stdin and exits 0; it sends nothing"."""

    def test_eof_inside_the_length_or_the_payload_exits_0_and_sends_nothing(self):
        for cut in (b"\x00\x00", b"\x00\x00\x00\x20{\"id\":1,"):
            w = self.spawn()
            w.send_raw(cut)
            w.close_stdin()
            self.assertEqual(w.wait(), 0, w.stderr)
            self.assertIsNone(w.recv(), "nothing but the end of stdout")


class Chunks(_Base):
    """bridges.md: `ctx.emit(data)` "returns `False` and sends nothing
    without a stream"."""

    def test_emit_sends_only_when_the_caller_streams(self):
        for codec in CODECS:
            w = self.spawn(codec)
            w.request(1, "emit")
            reply = w.recv()
            self.assertEqual(reply["id"], 1, "no chunk before the reply: %r" % (reply,))
            self.assertEqual(reply["result"], {"sent": False, "stream": False})
            w.request(2, "emit", stream=True)
            chunk = w.recv()
            self.assertEqual(chunk, {"type": "chunk", "id": 2, "data": {"part": 1}})
            self.assertEqual(w.recv()["result"], {"sent": True, "stream": True})


class Results(_Base):
    """bridges.md: a result that is not encodable "fails with `TypeError`";
    protocol.md: the Python bridge omits a response's `timestamp`."""

    def test_an_unencodable_result_is_a_type_error_and_the_worker_serves_on(self):
        for codec in CODECS:
            w = self.spawn(codec)
            r = w.call(1, "unencodable")
            self.assertFalse(r["success"])
            self.assertEqual(r["error"]["type"], "TypeError")
            r = w.call(2, "emit")
            self.assertTrue(r["success"])
            self.assertNotIn("timestamp", r)


class DuplicateIds(_Base):
    """protocol.md section 4: a request whose `id` is already running: "the
    worker may drop it with a line on stderr; it must not start a second
    handler under the same id"."""

    def test_a_second_request_under_a_running_id_never_starts_a_handler(self):
        w = self.spawn(env={"PROMISES_CONCURRENCY": "4"})
        flag = os.path.join(self.dir, "stop")
        args = {"until": flag, "dir": self.dir}
        started = lambda rid: os.path.join(self.dir, "started-%d" % rid)
        w.request(7, "block", args)
        self.assertTrue(wait_until(lambda: os.path.exists(started(7))), w.stderr)
        w.request(7, "block", args)  # while 7 runs
        w.request(8, "block", args)
        # Frames are read in order: once 8 runs, the second 7 has been read.
        self.assertTrue(wait_until(lambda: os.path.exists(started(8))), w.stderr)
        with open(flag, "w"):
            pass
        replies = {}
        for _ in range(2):
            r = w.recv()
            replies.setdefault(r["id"], []).append(r)
        self.assertEqual(sorted(replies), [7, 8])
        # Only two handlers ever started: 7 once, 8 once.
        self.assertLessEqual(max(r["result"]["started"] for rs in replies.values() for r in rs), 2)
        w.close_stdin()
        self.assertEqual(w.wait(), 0)
        self.assertIsNone(w.recv(), "exactly one reply for id 7")
        with open(started(7)) as f:
            self.assertEqual(f.read(), "x", "one handler ran under id 7")


if __name__ == "__main__":
    unittest.main()
