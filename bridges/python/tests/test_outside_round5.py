"""A hostile outside review, round 5: the pool's frame limit
(SNAKEPIT_MAX_FRAME_SIZE) in the Python bridge, and results of types
derived from the built-in ones (round5_worker.py; ``R5_ASYNC=1`` for the
asyncio loop).

- protocol.md section 1: the pool sets ``SNAKEPIT_MAX_FRAME_SIZE``, "the
  largest frame payload, in bytes, the pool reads from this worker ...
  Absent means 67108864 (64 MiB)". A bad value (no positive integer) is
  the default, and never stops the worker.
- protocol.md section 5, ``ResultTooLarge``: "the result would make a reply
  frame above SNAKEPIT_MAX_FRAME_SIZE: the bundled bridges send this failed
  reply instead, and the worker stays. A chunk that large ends its stream
  with this error; a host call whose arguments are that large fails inside
  the handler without being sent". In both codecs, both serve loops, and
  in a worker forked from a preloaded template.
- protocol.md section 4: a frame from the pool longer than the worker's
  limit is a ProtocolError, skipped; the limit is the pool's.
- README, Handlers: a result is what the codec writes, or a failed reply:
  under MessagePack a dict subclass whose length and items disagree, a
  tuple, an IntEnum... are written as JSON writes them.
- README, Cancellation: a SIGINT that comes while a host call's arguments
  are encoded cancels the call even when that host call fails unsent.
- protocol.md section 5, pipeline: a flood of cancel frames written ahead
  costs each frame a bounded number of decodes (it was one per later
  cancel), and still cancels exactly the requests waiting ahead of them.
"""

import os
import signal
import socket
import sys
import unittest

from ._helpers import CODECS, TESTS_DIR, WorkerProcess, run_in_process, wait_until
from snakepit_bridge import _wire

WORKER = os.path.join(TESTS_DIR, "round5_worker.py")
MODES = ("sync", "async")
# Generous: the suite runs beside the other bridges' suites on 2 cores.
WAIT = 60.0
LIMIT = 4096
DEFAULT = 64 * 1024 * 1024
_SAVED = None


def setUpModule():
    # "Absent means 64 MiB": the tests that need it absent must not
    # inherit it from whoever runs the suite.
    global _SAVED
    _SAVED = os.environ.pop("SNAKEPIT_MAX_FRAME_SIZE", None)


def tearDownModule():
    if _SAVED is not None:
        os.environ["SNAKEPIT_MAX_FRAME_SIZE"] = _SAVED


def reply_size(codec, rid, result):
    """The payload size of the bridge's success reply to ``rid``."""
    return len(_wire.get_codec(codec).encode({"id": rid, "success": True, "result": result}))


def string_for(codec, rid, size):
    """A string result whose reply payload is exactly ``size`` bytes."""
    n = size - reply_size(codec, rid, "")
    while reply_size(codec, rid, "x" * n) > size:
        n -= 1
    while reply_size(codec, rid, "x" * n) < size:
        n += 1
    assert reply_size(codec, rid, "x" * n) == size
    return n


class _Base(unittest.TestCase):
    def spawn(self, codec="json", mode="sync", limit=LIMIT):
        env = {"R5_ASYNC": "1" if mode == "async" else "0"}
        if limit is not None:
            env["SNAKEPIT_MAX_FRAME_SIZE"] = limit if isinstance(limit, (str, bytes)) else str(limit)
        # The test reads what the pool would: up to the limit it set.
        max_frame = limit if isinstance(limit, int) else DEFAULT
        w = WorkerProcess(WORKER, codec, env=env, max_frame=max_frame)
        self.addCleanup(w.stop)
        hello = w.recv(WAIT)
        self.assertEqual(hello.get("type"), "hello", w.stderr)
        w.pid = hello["pid"]
        return w

    def call(self, w, rid, command, args=None, **extra):
        return w.call(rid, command, args, timeout=WAIT, **extra)

    def assert_too_large(self, reply, rid, size, limit=LIMIT, what="the result"):
        self.assertEqual(reply["id"], rid, reply)
        self.assertIs(reply["success"], False, reply)
        self.assertEqual(reply["error"]["type"], "ResultTooLarge", reply)
        self.assertEqual(reply["error"]["message"],
                         f"{what} would be {size} bytes, above the pool's limit of {limit}")

    def assert_serves_on(self, w, rid=900):
        """The same process answers the next call."""
        reply = self.call(w, rid, "ping")
        self.assertIs(reply["success"], True, reply)
        self.assertEqual(reply["result"]["pid"], w.pid)
        self.assertIsNone(w.proc.poll())


class ResultTooLargeTests(_Base):
    def test_a_reply_at_the_limit_is_sent_and_one_byte_more_is_result_too_large(self):
        for codec in CODECS:
            for mode in MODES:
                commands = ("blob", "ablob") if mode == "async" else ("blob",)
                for command in commands:
                    with self.subTest(codec=codec, mode=mode, command=command):
                        w = self.spawn(codec, mode)
                        n = string_for(codec, 1, LIMIT)
                        reply = self.call(w, 1, command, {"n": n})
                        self.assertIs(reply["success"], True, reply)
                        self.assertEqual(reply["result"], "x" * n)
                        self.assertEqual(len(w.codec.encode(reply)), LIMIT)
                        reply = self.call(w, 2, command, {"n": n + 1})
                        self.assert_too_large(reply, 2, LIMIT + 1)
                        # The substitute fits, and the worker was not replaced.
                        self.assertLessEqual(len(w.codec.encode(reply)), LIMIT)
                        self.assert_serves_on(w)
                        self.assertTrue(wait_until(lambda: "sent ResultTooLarge instead" in w.stderr,
                                                   timeout=WAIT), w.stderr)

    def test_a_failed_reply_above_the_limit_is_result_too_large(self):
        for codec in CODECS:
            for mode in MODES:
                with self.subTest(codec=codec, mode=mode):
                    w = self.spawn(codec, mode)
                    reply = self.call(w, 1, "raise_big", {"n": LIMIT})
                    self.assertEqual(reply["error"]["type"], "ResultTooLarge", reply)
                    self.assertTrue(reply["error"]["message"].startswith(
                        "the failed reply (ValueError) would be "), reply)
                    self.assertTrue(reply["error"]["message"].endswith(
                        f"bytes, above the pool's limit of {LIMIT}"), reply)
                    # A small one is the handler's own failure.
                    reply = self.call(w, 2, "raise_big", {"n": 10})
                    self.assertEqual(reply["error"]["type"], "ValueError", reply)
                    self.assert_serves_on(w)

    def test_the_bridges_own_replies_and_long_names_are_fitted_too(self):
        for codec in CODECS:
            for mode in MODES:
                with self.subTest(codec=codec, mode=mode):
                    w = self.spawn(codec, mode)
                    # An unknown command whose name nearly fills the
                    # request: its UnknownCommand reply would not fit.
                    command = "c" * (LIMIT - 60)
                    request = {"id": 1, "command": command, "args": {}}
                    self.assertLessEqual(len(w.codec.encode(request)), LIMIT)
                    w.send(request)
                    reply = w.recv(WAIT)
                    self.assertEqual(reply["id"], 1, reply)
                    self.assertEqual(reply["error"]["type"], "ResultTooLarge", reply)
                    self.assertTrue(reply["error"]["message"].startswith(
                        "the failed reply (UnknownCommand) would be "), reply)
                    # A host function named at length: the message shows
                    # its first 100 characters.
                    reply = self.call(w, 2, "host_named", {"n": LIMIT})
                    message = reply["result"]["message"]
                    self.assertEqual(reply["result"]["type"], "ResultTooLarge", reply)
                    self.assertTrue(message.startswith("the host call " + "f" * 100 + "... would be "), message)
                    self.assertLess(len(message), 300)
                    self.assert_serves_on(w)

    def test_a_limit_smaller_than_the_hello_leaves_the_hello_whole(self):
        # Nothing can be said in its place: the hello goes as it is (the
        # pool then fails the worker's start, naming its limit), and no
        # reply is cut into a broken frame.
        for mode in MODES:
            with self.subTest(mode=mode):
                w = WorkerProcess(WORKER, "json", env={"R5_ASYNC": "1" if mode == "async" else "0",
                                                       "SNAKEPIT_MAX_FRAME_SIZE": "20"})
                self.addCleanup(w.stop)
                self.assertEqual(w.recv(WAIT)["type"], "hello")
                self.assertGreater(len(w.raw_stdout), 20)
                w.send({"id": 1, "command": "ping", "args": {}})
                reply = w.recv(WAIT)
                self.assertEqual(reply["error"]["type"], "ResultTooLarge", reply)
                self.assertTrue(wait_until(lambda: "even the ResultTooLarge reply is above" in w.stderr,
                                           timeout=WAIT), w.stderr)

    def collect(self, w, rid):
        """The chunks of ``rid`` and its final reply."""
        chunks = []
        while True:
            msg = w.recv(WAIT)
            self.assertIsNotNone(msg, w.stderr)
            if msg.get("type") == "chunk":
                self.assertEqual(msg["id"], rid, msg)
                chunks.append(msg["data"])
            elif msg.get("id") == rid:
                return chunks, msg

    def test_a_chunk_above_the_limit_ends_its_stream_with_result_too_large(self):
        for codec in CODECS:
            for mode in MODES:
                commands = ["stream", "thread_stream"] + (["astream"] if mode == "async" else [])
                for command in commands:
                    with self.subTest(codec=codec, mode=mode, command=command):
                        w = self.spawn(codec, mode)
                        for rid, catch in ((1, False), (2, True)):
                            w.request(rid, command, {"sizes": [10, LIMIT, 10], "catch": catch}, stream=True)
                            chunks, reply = self.collect(w, rid)
                            # The first chunk went out; the large one and
                            # every one after it did not.
                            self.assertEqual(chunks, ["c" * 10])
                            self.assertEqual(reply["error"]["type"], "ResultTooLarge", reply)
                            self.assertTrue(reply["error"]["message"].startswith("the chunk would be "), reply)
                            self.assertIn(f"above the pool's limit of {LIMIT}", reply["error"]["message"])
                        # Caught by the handler, which returned "done": the
                        # stream still ended there.
                        self.assertTrue(wait_until(lambda: "R5 2 next emit returned False" in w.stderr,
                                                   timeout=WAIT), w.stderr)
                        self.assertIn("R5 2 caught ResultTooLarge: the chunk would be", w.stderr)
                        # A small stream afterwards is whole.
                        w.request(3, command, {"sizes": [1, 2]}, stream=True)
                        chunks, reply = self.collect(w, 3)
                        self.assertEqual(chunks, ["c", "cc"])
                        self.assertEqual(reply["result"], "done")
                        self.assert_serves_on(w)

    def test_host_call_arguments_above_the_limit_fail_in_the_handler_unsent(self):
        for codec in CODECS:
            for mode in MODES:
                commands = ("host_big", "ahost_big") if mode == "async" else ("host_big",)
                for command in commands:
                    with self.subTest(codec=codec, mode=mode, command=command):
                        w = self.spawn(codec, mode)
                        w.request(1, command, {"n": LIMIT})
                        # The first frame is the call's reply: no host_call
                        # went out before it.
                        reply = w.recv(WAIT)
                        self.assertEqual(reply.get("id"), 1, reply)
                        self.assertIsNone(reply.get("type"), reply)
                        result = reply["result"]
                        self.assertEqual(result["type"], "ResultTooLarge", reply)
                        self.assertTrue(result["message"].startswith("the host call lookup would be "), reply)
                        self.assertTrue(result["message"].endswith(f"above the pool's limit of {LIMIT}"), reply)
                        # A small one goes out, and its answer comes back.
                        w.request(2, command, {"n": 5})
                        call = w.recv(WAIT)
                        self.assertEqual(call.get("type"), "host_call", call)
                        self.assertEqual(call["args"], {"s": "hhhhh"})
                        w.send({"type": "host_reply", "id": call["id"], "success": True, "result": "ok"})
                        reply = w.recv(WAIT)
                        self.assertEqual(reply, {"id": 2, "success": True, "result": {"result": "ok"}})
                        self.assert_serves_on(w)

    def test_a_frame_from_the_pool_above_the_limit_is_a_protocol_error_and_skipped(self):
        for codec in CODECS:
            for mode in MODES:
                with self.subTest(codec=codec, mode=mode):
                    w = self.spawn(codec, mode)
                    frame = _wire.encode_frame(w.codec, {"id": 1, "command": "args_size",
                                                         "args": {"s": "s" * LIMIT}})
                    w.send_raw(frame)
                    reply = w.recv(WAIT)
                    self.assertEqual(reply["id"], 0, reply)
                    self.assertEqual(reply["error"]["type"], "ProtocolError", reply)
                    self.assertIn(f"larger than the limit of {LIMIT}", reply["error"]["message"])
                    # One of exactly the limit is read.
                    def request(n):
                        return {"id": 2, "command": "args_size", "args": {"s": "s" * n}}
                    n = LIMIT - len(w.codec.encode(request(0)))
                    while len(w.codec.encode(request(n))) > LIMIT:
                        n -= 1
                    while len(w.codec.encode(request(n))) < LIMIT:
                        n += 1
                    self.assertEqual(len(w.codec.encode(request(n))), LIMIT)
                    w.send(request(n))
                    reply = w.recv(WAIT)
                    self.assertEqual(reply, {"id": 2, "success": True, "result": n})
                    self.assert_serves_on(w)

    def test_a_limit_above_64_mib_reads_and_writes_larger_frames(self):
        # The pool's max_frame_size raised: a request it may now send is
        # read, and a result it may now read is sent.
        big = DEFAULT + 1000
        w = self.spawn("json", "sync", limit=2 * DEFAULT)
        self.assertEqual(self.call(w, 1, "limit")["result"], 2 * DEFAULT)
        self.assertEqual(self.call(w, 2, "args_size", {"s": "s" * big})["result"], big)
        reply = self.call(w, 3, "blob", {"n": big})
        self.assertIs(reply["success"], True, {k: v for k, v in reply.items() if k != "result"})
        self.assertEqual(len(reply["result"]), big)
        self.assert_serves_on(w)

    def test_absent_the_limit_is_64_mib(self):
        w = self.spawn("json", "sync", limit=None)
        self.assertEqual(self.call(w, 1, "limit")["result"], DEFAULT)
        n = string_for("json", 2, DEFAULT)
        self.assertIs(self.call(w, 2, "blob", {"n": n})["success"], True)
        self.assert_too_large(self.call(w, 3, "blob", {"n": n + 1}), 3, DEFAULT + 1, DEFAULT)
        self.assert_serves_on(w)

    def test_a_bad_value_is_the_default_and_never_stops_the_worker(self):
        bad = ["abc", "0", "000", "-4096", "+4096", "4_096", "4096.0", "1e6", "0x1000",
               "\u0664\u0660\u0669\u0666", "4096 bytes", "4096\x7f", "\udcff4096", "x" * 10000]
        for mode in MODES:
            for value in bad:
                with self.subTest(mode=mode, value=value[:20]):
                    w = self.spawn("json", mode, limit=value)
                    self.assertEqual(self.call(w, 1, "limit")["result"], DEFAULT)
                    # LIMIT is no limit now.
                    self.assertIs(self.call(w, 2, "blob", {"n": 2 * LIMIT})["success"], True)
                    self.assertTrue(wait_until(lambda: "SNAKEPIT_MAX_FRAME_SIZE=" in w.stderr, timeout=WAIT),
                                    w.stderr)
                    self.assertIn(f"is not a positive integer; using the default, {DEFAULT}", w.stderr)
                    self.assertLess(len(w.stderr), 1000, "the value is shown cut short")
        # Blank is absent; spaces around the digits, leading zeros and values
        # past what a 4-byte length can say are read.
        good = {"": DEFAULT, " \t": DEFAULT, " 4096\n": 4096, "0004096": 4096,
                "4294967296": 2**32 - 1, "9" * 5000: 2**32 - 1}
        for value, limit in good.items():
            with self.subTest(value=value[:20]):
                w = self.spawn("json", "sync", limit=value)
                self.assertEqual(self.call(w, 1, "limit")["result"], limit)
                self.assert_serves_on(w)
                w.stop()
                self.assertNotIn("SNAKEPIT_MAX_FRAME_SIZE", w.stderr)

    def test_frame_limit_reads_only_positive_decimal_integers(self):
        self.assertEqual(_wire.frame_limit(None), (DEFAULT, None))
        self.assertEqual(_wire.frame_limit("1"), (1, None))
        self.assertEqual(_wire.frame_limit("4294967295"), (2**32 - 1, None))
        for text in ("0", "-1", "1.5", "one", "\u0661"):
            limit, why = _wire.frame_limit(text)
            self.assertEqual(limit, DEFAULT, text)
            self.assertIn("SNAKEPIT_MAX_FRAME_SIZE", why)

    def test_a_limit_set_by_hand_is_used_and_one_that_is_no_limit_is_the_default(self):
        # README, Size limit: "worker.max_frame_size holds it". Set by hand
        # before run(), it is the limit; set to something that is no
        # positive whole number, it is the default (never a crash).
        import snakepit_bridge

        for value, limit in ((100, 100), ("junk", DEFAULT), (0, DEFAULT), (True, DEFAULT), (2**40, 2**32 - 1)):
            with self.subTest(value=value):
                worker = snakepit_bridge.Worker(codec="json")
                worker.register("blob", lambda args: "x" * args["n"])
                worker.max_frame_size = value
                frames = [{"id": 1, "command": "blob", "args": {"n": 150}},
                          {"id": 2, "command": "blob", "args": {"n": 10}}]
                code, out = run_in_process(worker, frames, _wire.get_codec("json"))
                self.assertEqual(code, 0)
                replies = {m["id"]: m for m in out if m.get("type") is None}
                if limit == 100:
                    self.assertEqual(replies[1]["error"]["type"], "ResultTooLarge", replies)
                    self.assertIn("above the pool's limit of 100", replies[1]["error"]["message"])
                else:
                    self.assertEqual(replies[1]["result"], "x" * 150)
                self.assertEqual(replies[2]["result"], "x" * 10)


@unittest.skipUnless(hasattr(socket, "send_fds") and hasattr(os, "pidfd_open") and sys.platform == "linux",
                     "the pool's side needs socket.send_fds and os.pidfd_open (Linux, Python 3.9+)")
class PreloadedTests(unittest.TestCase):
    """docs/preload.md: a forked worker takes the environment the fork
    request gives it: the limit there is the worker's, whatever the
    template's was."""

    def setUp(self):
        import tempfile

        fd, self.log_path = tempfile.mkstemp(prefix="snakepit-r5-", suffix=".log")
        os.close(fd)
        self.addCleanup(os.unlink, self.log_path)

    def test_a_forked_worker_reads_its_own_limit(self):
        from .test_preload import Template

        for codec in CODECS:
            for mode in MODES:
                with self.subTest(codec=codec, mode=mode):
                    env = {"SNAKEPIT_MAX_FRAME_SIZE": "not a number"}
                    if mode == "async":
                        env["PRELOAD_ASYNC"] = "1"
                    template = Template(self, codec, env)
                    template.ready()
                    w = template.fork({"SNAKEPIT_MAX_FRAME_SIZE": str(LIMIT)})
                    self.assertEqual(w.recv()["type"], "hello")
                    small = w.call(1, "echo", {"s": "e" * 100})
                    self.assertIs(small["success"], True, small)
                    # A request under the limit whose echo is above it (a
                    # msgpack str header grows by 2 bytes past 255).
                    codec_ = _wire.get_codec(codec)
                    n = LIMIT - len(codec_.encode({"id": 2, "command": "echo", "args": {"s": ""}})) - 2
                    self.assertLessEqual(len(codec_.encode({"id": 2, "command": "echo",
                                                            "args": {"s": "e" * n}})), LIMIT)
                    reply = w.call(2, "echo", {"s": "e" * n})
                    self.assertEqual(reply["error"]["type"], "ResultTooLarge", reply)
                    self.assertIn(f"above the pool's limit of {LIMIT}", reply["error"]["message"])
                    self.assertIs(w.call(3, "ping")["success"], True)
                    # One forked without it has the default.
                    w2 = template.fork({})
                    self.assertEqual(w2.recv()["type"], "hello")
                    self.assertIs(w2.call(1, "echo", {"s": "e" * n})["success"], True)


class SigintWhileEncodingTests(_Base):
    def test_a_sigint_while_host_call_arguments_are_encoded_cancels_the_call(self):
        # README, Cancellation: SIGINT cancels the running handler "at once
        # (also inside time.sleep or a host call)". One that lands while a
        # host call's arguments are encoded is held until the frame is
        # out; a host call that then fails unsent (its arguments above the
        # limit) must still let it through, or the handler sleeps on.
        w = self.spawn("json", "sync")
        w.request(1, "host_big_then_sleep", {"n": 3_000_000, "sleep": 600})
        self.assertTrue(wait_until(lambda: "R5 1 encoding" in w.stderr, timeout=WAIT), w.stderr)
        w.signal(signal.SIGINT)
        reply = w.recv(WAIT)
        self.assertEqual(reply.get("id"), 1, reply)
        self.assertEqual(reply["error"]["type"], "Cancelled", (reply, w.stderr))
        self.assert_serves_on(w)


class DerivedTypesTests(_Base):
    """README, Handlers: a result is what the codec writes. Values of types
    derived from the built-in ones (a tuple, a namedtuple, an IntEnum, a
    str or float subclass, an OrderedDict, a Counter) are written under
    MessagePack as JSON writes them."""

    EXPECTED = {"tuple": [1, [2, 3]], "pair": [1, [2]], "intenum": 1, "str": "n", "float": 0.5,
                "ordered": {"b": 1, "a": 2}, "default": {"k": 1}, "counter": {"z": 3}}

    def test_derived_types_are_written_alike_in_both_codecs(self):
        for codec in CODECS:
            for mode in MODES:
                with self.subTest(codec=codec, mode=mode):
                    w = self.spawn(codec, mode, limit=None)
                    reply = self.call(w, 1, "derived")
                    self.assertEqual(reply["result"], self.EXPECTED)
                    self.assertEqual(list(reply["result"]["ordered"]), ["b", "a"])
                    self.assertIs(type(reply["result"]["intenum"]), int)


class CancelFloodTests(unittest.TestCase):
    """protocol.md section 5, pipeline: "a cancel frame for a request it
    has not started makes it answer that request Cancelled without running
    it", and section 4: a cancel for an id that is not running is ignored.
    A flood of such cancels, written while a call waits for its host reply,
    must cost the worker the same per cancel however many came before: each
    frame is decoded a bounded number of times (it was decoded again for
    every cancel after it)."""

    FLOOD = 2000

    def test_a_flood_of_cancels_decodes_each_frame_a_bounded_number_of_times(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = WorkerProcess(WORKER, codec, env={"R5_ASYNC": "0", "R5_COUNT_PARSE": "1"})
                self.addCleanup(w.stop)
                self.assertEqual(w.recv(WAIT)["type"], "hello")
                w.request(1, "host_big", {"n": 1})
                call = w.recv(WAIT)
                self.assertEqual(call.get("type"), "host_call", call)

                def request(rid):
                    return {"id": rid, "command": "echo", "args": {"r": rid}}

                def cancel(rid):
                    return {"type": "cancel", "id": rid}

                # Written while the call waits for its host reply: calls
                # written ahead, a flood of cancels for nothing, two
                # cancels for calls waiting, and one for a call written
                # after it (not cancelled).
                frames = [request(rid) for rid in range(2, 202)]
                frames += [cancel(10**6 + i) for i in range(self.FLOOD)]
                frames += [cancel(2), cancel(3), cancel(500), request(500)]
                frames.append({"type": "host_reply", "id": call["id"], "success": True, "result": "r"})
                w.send_raw(b"".join(_wire.encode_frame(w.codec, f) for f in frames))
                replies = {}
                while len(replies) < 202:
                    msg = w.recv(WAIT)
                    self.assertIsNotNone(msg, w.stderr)
                    self.assertNotIn(msg["id"], replies, "one reply per request")
                    replies[msg["id"]] = msg
                self.assertEqual(replies[1]["result"], {"result": "r"})
                for rid in (2, 3):
                    self.assertEqual(replies[rid]["error"]["type"], "Cancelled", replies[rid])
                    self.assertIn("before it started", replies[rid]["error"]["message"])
                for rid in list(range(4, 202)) + [500]:
                    self.assertEqual(replies[rid]["result"]["echoed"], {"r": rid}, replies[rid])
                # Each frame is decoded when it is read during the host
                # call, when the backlog is scanned, and when dispatched:
                # a few times each, not once per cancel after it.
                count = w.call(600, "parse_count", timeout=WAIT)["result"]
                self.assertLess(count, 4 * (len(frames) + 2), f"{count} decodes of {len(frames)} frames")


if __name__ == "__main__":
    unittest.main()
