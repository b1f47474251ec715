"""Several frames per system call: requests that arrive together are read
together, and replies ready together leave in one write."""

import os
import unittest
from unittest import mock

from ._helpers import CODECS, run_in_process
from snakepit_bridge import Worker, _server, _sync, _wire, generic


def request(rid, command="echo", args=None):
    return {"id": rid, "command": command, "args": args or {"n": rid}}


class CountingWrites:
    """Wraps os.write, counting the writes to one descriptor."""

    def __init__(self):
        self.fd = None
        self.writes = 0
        self._write = os.write

    def __call__(self, fd, data):
        if fd == self.fd:
            self.writes += 1
        return self._write(fd, data)


def run_counting(worker, frames, codec):
    """run_in_process, counting the worker's writes of frames."""
    counting = CountingWrites()
    real_run = worker.run

    def run(read_fd, write_fd, install_signals):
        counting.fd = write_fd
        return real_run(read_fd=read_fd, write_fd=write_fd, install_signals=install_signals)

    with mock.patch.object(worker, "run", run), mock.patch.object(_server.os, "write", counting):
        code, out = run_in_process(worker, frames, codec)
    return code, out, counting.writes


class AsyncBatchingTests(unittest.TestCase):
    def test_replies_ready_in_the_same_turn_of_the_loop_go_out_in_one_write(self):
        for name in CODECS:
            codec = _wire.get_codec(name)
            w = Worker(codec=name)

            @w.command("aecho")
            async def aecho(args):
                return args

            frames = [request(rid, "aecho") for rid in range(1, 9)]
            code, out, writes = run_counting(w, frames, codec)
            self.assertEqual(code, 0)
            self.assertEqual(out[0]["type"], "hello")
            replies = {m["id"]: m["result"] for m in out[1:]}
            self.assertEqual(replies, {rid: {"n": rid} for rid in range(1, 9)})
            # The eight requests arrive in one read and finish in the same
            # turn of the loop: their replies leave together (with the
            # hello, or at most in a few writes), not in eight.
            self.assertLessEqual(writes, 3, f"{name}: {writes} writes for hello and 8 replies")


class SyncReadAheadTests(unittest.TestCase):
    def test_requests_read_together_are_decoded_once_each(self):
        for name in CODECS:
            codec = _wire.get_codec(name)
            w = Worker(codec=name)
            generic.register(w)
            decoded = []
            real_parse = _server.Server.parse

            def parse(self, payload):
                decoded.append(payload)
                return real_parse(self, payload)

            frames = [request(rid) for rid in range(1, 6)]
            with mock.patch.object(_sync.SyncServer, "parse", parse):
                code, out = run_in_process(w, frames, codec)
            self.assertEqual(code, 0)
            self.assertEqual([m["id"] for m in out[1:]], [1, 2, 3, 4, 5])
            self.assertEqual(len(decoded), 5, f"{name}: requests decoded {len(decoded)} times")

    def test_a_cancel_read_with_its_request_still_drops_it(self):
        for name in CODECS:
            codec = _wire.get_codec(name)
            w = Worker(codec=name)
            generic.register(w)
            frames = [request(1), request(2), {"type": "cancel", "id": 2}, request(3)]
            code, out = run_in_process(w, frames, codec)
            self.assertEqual(code, 0)
            replies = {m["id"]: m for m in out[1:]}
            self.assertTrue(replies[1]["success"])
            self.assertEqual(replies[2]["error"]["type"], "Cancelled")
            self.assertTrue(replies[3]["success"])


if __name__ == "__main__":
    unittest.main()


class PeekTests(unittest.TestCase):
    """The look into stdin before a call written ahead: without waiting,
    through a second, non-blocking description of a pipe, or poll and read
    for anything else; the blocking reads of the serve loop stay blocking."""

    def check(self, r, w):
        peek, opened = _sync._peeker(r)
        self.addCleanup(lambda: opened is None or os.close(opened))
        self.assertIsNone(peek(), "nothing waiting: no wait either")
        os.write(w, b"abc")
        self.assertEqual(peek(), b"abc")
        self.assertIsNone(peek())
        os.write(w, b"de")
        self.assertEqual(os.read(r, 10), b"de", "the descriptor itself still reads")
        self.assertTrue(os.get_blocking(r), "and still blocks")
        os.close(w)
        self.assertEqual(peek(), b"", "the end of the stream")

    def test_a_pipe(self):
        r, w = os.pipe()
        try:
            self.check(r, w)
        finally:
            os.close(r)

    def test_the_serve_loop_closes_what_it_opened(self):
        before = set(os.listdir("/proc/self/fd"))
        w = Worker()

        @w.command("echo")
        def echo(args):
            return args

        # Two calls in one write: the second is written ahead, so the loop
        # looks into its stdin before it.
        code, out = run_in_process(w, [request(1), request(2)], _wire.get_codec("json"))
        self.assertEqual(code, 0)
        self.assertEqual([m.get("id") for m in out[1:]], [1, 2])
        self.assertEqual(set(os.listdir("/proc/self/fd")), before)

    def test_a_socket(self):
        import socket
        a, b = socket.socketpair()
        try:
            self.check(a.fileno(), b.detach())
        finally:
            a.close()
