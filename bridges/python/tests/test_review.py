"""Frames the pool may send that all three bridges must handle alike, and
the generic compute command's operands (real worker processes, driven over
pipes)."""

import struct
import unittest

from ._helpers import GENERIC_WORKER, HAVE_MSGPACK, WorkerProcess

if HAVE_MSGPACK:
    import msgpack


def _frame(payload):
    return struct.pack(">I", len(payload)) + payload


@unittest.skipUnless(HAVE_MSGPACK, "needs msgpack")
class MsgpackMapsTests(unittest.TestCase):
    def spawn(self):
        w = WorkerProcess(GENERIC_WORKER, "msgpack")
        self.addCleanup(w.stop)
        self.assertEqual(w.recv()["type"], "hello")
        return w

    def test_integer_map_keys_are_answered_under_the_request_id(self):
        # docs/protocol.md section 3: under MessagePack a map's keys are
        # what the caller's data has, and "Every bridge accepts such keys".
        # The test sends a map keyed by the integer 1 and checks that the
        # reply comes under the request's id and the worker serves the next
        # call. This bridge once refused the whole frame.
        w = self.spawn()
        payload = msgpack.packb(
            {"id": 7, "command": "echo", "args": {"m": {1: "a"}},
             "timestamp": "2026-11-27T12:24:04.051023Z"},
            use_bin_type=True,
        )
        w.send_raw(_frame(payload))
        reply = w.recv()
        self.assertEqual(reply.get("id"), 7, reply)
        self.assertTrue(reply["success"], reply)
        # The same worker still serves the next call.
        self.assertTrue(w.call(8, "ping")["success"])

    def test_an_ext_value_reaches_the_handler_and_is_answered_under_the_request_id(self):
        # docs/protocol.md section 3: "MessagePack `ext` values reach
        # handlers as the library's own type and are written back as the
        # same `ext`". The test checks that echo returns the value as it came.
        w = self.spawn()
        payload = msgpack.packb(
            {"id": 9, "command": "echo", "args": {"x": msgpack.ExtType(5, b"ab")},
             "timestamp": "2026-11-27T12:24:04.051023Z"},
            use_bin_type=True,
        )
        w.send_raw(_frame(payload))
        reply = w.recv()
        self.assertEqual(reply.get("id"), 9, reply)
        self.assertTrue(reply["success"], reply)
        self.assertEqual(reply["result"]["echoed"], {"x": msgpack.ExtType(5, b"ab")})


class GenericComputeTests(unittest.TestCase):
    def spawn(self):
        w = WorkerProcess(GENERIC_WORKER, "json")
        self.addCleanup(w.stop)
        self.assertEqual(w.recv()["type"], "hello")
        return w

    def test_compute_refuses_operands_that_are_not_numbers(self):
        # docs/protocol.md section 7, compute: "`a` and `b` must be numbers
        # ... anything else fails too. Errors are failed replies of type
        # `ValueError` (Python)". The test checks that a string times a
        # number fails with ValueError, and so do strings and lists. "x"
        # times a million once came back as a long string.
        w = self.spawn()
        n = 1_000_000
        reply = w.call(1, "compute", {"operation": "multiply", "a": "x", "b": n})
        result = reply.get("result") or {}
        self.assertFalse(
            reply["success"],
            "a %d-byte string came back from a %d-byte request"
            % (len(str(result.get("result", ""))), len(str({"a": "x", "b": n}))),
        )
        self.assertEqual(reply["error"]["type"], "ValueError", reply["error"])
        for args in ({"a": "ab", "b": "cd"}, {"a": [1], "b": [2]}):
            reply = w.call(2, "compute", args)
            self.assertFalse(reply["success"], (args, reply))


if __name__ == "__main__":
    unittest.main()
