"""A hostile outside review, round 3: hostile values inside otherwise valid
frames, driven over a real worker's stdin/stdout as the pool drives it
(round3_worker.py: the generic commands plus handlers that return or raise
what they should not).

- README, Handlers: a result that cannot be encoded is a failed reply
  `TypeError` "whatever the codec raised" (also a BaseException raised
  while it is encoded); "only `SystemExit` (`sys.exit()` in a handler)
  ends the worker".
- protocol.md section 2: arguments and results nest up to 126 levels.
- protocol.md section 4, host_reply: a failed host call gives the handler a
  `HostCallError` with the error's type and message, whatever their types;
  a host_reply or cancel whose id is no integer is ignored, also while a
  host call waits.
- protocol.md section 3: MessagePack ext values reach handlers and are
  written back as the same ext; keys that are not strings are kept; a map
  or array used as a key is a frame the bridge cannot decode. (Two
  DEFECT tests, skipped: an ext of type -1, and keys Python takes for one.)
- protocol.md section 7: `compute` fails with `ValueError` only.
"""

import os
import struct
import unittest

from ._helpers import CODECS, HAVE_MSGPACK, TESTS_DIR, WorkerProcess, wait_until

if HAVE_MSGPACK:
    import msgpack

WORKER = os.path.join(TESTS_DIR, "round3_worker.py")
TS = "2026-11-27T12:24:04.051023Z"
MODES = ("sync", "async")
# Generous: the suite runs beside the other bridges' suites on 2 cores.
WAIT = 30.0


def _frame(payload):
    return struct.pack(">I", len(payload)) + payload


class _Base(unittest.TestCase):
    def spawn(self, codec="json", mode="sync"):
        w = WorkerProcess(WORKER, codec, env={"R3_ASYNC": "1" if mode == "async" else "0"})
        self.addCleanup(w.stop)
        self.assertEqual(w.recv(WAIT)["type"], "hello")
        return w

    def call(self, w, rid, command, args=None):
        return w.call(rid, command, args, timeout=WAIT)

    def error_of(self, reply):
        self.assertFalse(reply["success"], reply)
        return reply["error"]["type"], reply["error"]["message"]

    def assert_serves_on(self, w, rid=999):
        reply = self.call(w, rid, "ping")
        self.assertTrue(reply["success"], reply)


class HandlerResultsTests(_Base):
    def test_a_result_whose_encoding_raises_a_base_exception_is_a_type_error(self):
        # README: "A result that cannot be encoded is a failed reply
        # (`TypeError` ...). That holds whatever the codec raised". Both
        # codecs call items() on a dict subclass; the fixture's raises a
        # KeyboardInterrupt, a GeneratorExit or a BaseException of its own.
        # The sync loop once let it out: the worker died with no reply.
        cases = [
            ("keyboard_interrupt", "KeyboardInterrupt: raised by the handler"),
            ("generator_exit", "GeneratorExit: closed by the handler"),
            ("custom_base", "_Custom: a BaseException of its own"),
        ]
        for codec in CODECS:
            for mode in MODES:
                with self.subTest(codec=codec, mode=mode):
                    w = self.spawn(codec, mode)
                    for rid, (what, text) in enumerate(cases, 1):
                        reply = self.call(w, rid, "unencodable", {"what": what})
                        self.assertEqual(self.error_of(reply),
                                         ("TypeError", "result could not be encoded: " + text))
                    self.assert_serves_on(w)

    def test_results_no_codec_carries_fail_with_the_documented_type(self):
        # README: TypeError for what cannot be encoded, ValueError for a
        # NaN under JSON; protocol.md section 3: an integer past 2^64 - 1 or
        # below -2^63 is a failed reply under MessagePack, goes through
        # under JSON.
        for codec in CODECS:
            for mode in MODES:
                with self.subTest(codec=codec, mode=mode):
                    w = self.spawn(codec, mode)
                    for rid, what in enumerate(["set", "generator", "object", "cycle"], 1):
                        kind, _ = self.error_of(self.call(w, rid, "give", {"what": what}))
                        self.assertEqual(kind, "TypeError", what)
                    nan = self.call(w, 10, "give", {"what": "nan"})
                    big = self.call(w, 11, "give", {"what": "big_int"})
                    low = self.call(w, 12, "give", {"what": "negative_big_int"})
                    if codec == "json":
                        self.assertEqual(self.error_of(nan)[0], "ValueError")
                        self.assertEqual(big["result"], {"value": 2**64})
                        self.assertEqual(low["result"], {"value": -(2**63) - 1})
                    else:
                        self.assertTrue(nan["success"], nan)
                        for reply in (big, low):
                            kind, message = self.error_of(reply)
                            self.assertEqual(kind, "TypeError")
                            self.assertIn("OverflowError", message)
                    self.assert_serves_on(w)

    def test_generator_exit_and_keyboard_interrupt_raised_by_a_handler_are_failed_replies(self):
        # README: a handler's exception is a failed reply of its class, "a
        # `BaseException` that is not an `Exception`" included; "A
        # `KeyboardInterrupt` that the handler raises itself (no SIGINT from
        # the pool) is an ordinary failed reply". GeneratorExit is the one
        # a coroutine treats apart (close()); in asyncio mode plain
        # handlers run on threads and `async def` ones as tasks.
        cases = [("generator_exit", "GeneratorExit", "closed by the handler"),
                 ("keyboard_interrupt", "KeyboardInterrupt", "raised by the handler")]
        for mode in MODES:
            with self.subTest(mode=mode):
                w = self.spawn("json", mode)
                commands = ["raise"] + (["async_raise"] if mode == "async" else [])
                rid = 0
                for command in commands:
                    for what, kind, message in cases:
                        rid += 1
                        reply = self.call(w, rid, command, {"what": what})
                        self.assertEqual(self.error_of(reply), (kind, message), command)
                self.assert_serves_on(w)

    def test_system_exit_ends_the_worker_with_its_status_and_no_reply(self):
        # README: "only `SystemExit` (`sys.exit()` in a handler) ends the
        # worker": the process exits with the status sys.exit gave, having
        # written only whole frames and no reply for the call. The same
        # when encoding the result raises SystemExit.
        cases = [("sync", "exit", {"code": 3}, 3), ("async", "exit", {"code": 3}, 3),
                 ("async", "async_exit", {"code": 3}, 3),
                 ("sync", "unencodable", {"what": "system_exit"}, 4),
                 ("async", "unencodable", {"what": "system_exit"}, 4)]
        for mode, command, args, status in cases:
            with self.subTest(mode=mode, command=command):
                w = self.spawn("json", mode)
                w.request(5, command, args)
                # None: stdout ended cleanly, after whole frames only.
                self.assertIsNone(w.recv(WAIT), w.stderr)
                self.assertEqual(w.wait(WAIT), status, w.stderr)


class DepthTests(_Base):
    def test_args_nested_126_levels_come_back_whole_and_deeper_ones_fail_only_the_frame(self):
        # protocol.md section 2: "a call's arguments or result may nest 126
        # levels ... The bundled bridges read and write up to that limit in
        # both codecs." The reply of `same` (its args as its result) nests
        # 127 levels with its own map. Far deeper args are a frame the
        # bridge cannot decode: a ProtocolError, and the worker serves on.
        deep = {"leaf": None}
        for level in range(125):  # 125 more levels: args nest 126
            deep = [deep] if level % 2 else {"k": deep}
        self.assertEqual(_depth(deep), 126)
        for codec in CODECS:
            for mode in MODES:
                with self.subTest(codec=codec, mode=mode):
                    w = self.spawn(codec, mode)
                    reply = self.call(w, 1, "same", deep)
                    self.assertEqual(reply.get("result"), deep)
                    if codec == "json":
                        far = (b'{"id":2,"command":"same","args":{"d":'
                               + b"[" * 100000 + b"]" * 100000 + b"}}")
                    else:
                        far = (b"\x83\xa2id\x02\xa7command\xa4same\xa4args\x81\xa1d"
                               + b"\x91" * 100000 + b"\xc0")
                    w.send_raw(_frame(far))
                    reply = w.recv(WAIT)
                    self.assertEqual((reply["id"], reply["error"]["type"]), (0, "ProtocolError"), reply)
                    self.assert_serves_on(w)


def _depth(value):
    if isinstance(value, dict):
        return 1 + max([_depth(v) for v in value.values()] or [0])
    if isinstance(value, list):
        return 1 + max([_depth(v) for v in value] or [0])
    return 0


class HostReplyTests(_Base):
    def test_error_fields_of_any_type_give_a_host_call_error_with_text(self):
        # protocol.md section 4: a host_reply without success: true fails the
        # host call with the error's type and message; without a usable one,
        # HostError and "host call failed". The fixture returns what the
        # HostCallError held: [type of .type, .type, type of .message,
        # .message]. The Node.js bridge crashed on a map here.
        failed = ["str", "HostError", "str", "host call failed"]
        cases = [
            ({"type": {"a": 1}, "message": [1, 2]}, ["str", "{'a': 1}", "str", "[1, 2]"]),
            ({"type": 2**64 - 1, "message": 1.5}, ["str", str(2**64 - 1), "str", "1.5"]),
            ({"type": None, "message": None}, failed),
            ({"type": [], "message": {}}, ["str", "HostError", "str", "{}"]),
            ({"type": True, "message": False}, ["str", "True", "str", "False"]),
            ([1, 2], ["str", "HostError", "str", "[1, 2]"]),
            ({"unrelated": 1}, failed),
            (1.5, ["str", "HostError", "str", "1.5"]),
        ]
        if HAVE_MSGPACK:
            msgpack_cases = [
                ({"type": b"T", "message": b"m"}, ["str", "b'T'", "str", "b'm'"]),
                (msgpack.ExtType(3, b"x"), ["str", "HostError", "str", "ExtType(code=3, data=b'x')"]),
            ]
        for codec in CODECS:
            for mode in MODES:
                with self.subTest(codec=codec, mode=mode):
                    w = self.spawn(codec, mode)
                    todo = cases + (msgpack_cases if codec == "msgpack" else [])
                    for rid, (error, expected) in enumerate(todo, 1):
                        w.request(rid, "host")
                        call = w.recv(WAIT)
                        self.assertEqual(call.get("type"), "host_call", call)
                        w.send({"type": "host_reply", "id": call["id"], "success": False,
                                "error": error})
                        reply = w.recv(WAIT)
                        self.assertEqual(reply.get("id"), rid, reply)
                        self.assertEqual(reply.get("result"), {"error": expected}, error)
                    self.assert_serves_on(w)


@unittest.skipUnless(HAVE_MSGPACK, "needs msgpack")
class MsgpackValuesTests(_Base):
    def request_bytes(self, rid, args_bytes, command=b"\xa4echo"):
        """A request whose args are the MessagePack bytes given as such."""
        return _frame(b"\x84\xa2id" + msgpack.packb(rid) + b"\xa7command" + command
                      + b"\xa4args" + args_bytes + b"\xa9timestamp" + msgpack.packb(TS))

    def test_ext_values_bin_and_keys_that_are_not_strings(self):
        # protocol.md section 3 and section 4, "Frames a worker cannot use".
        ts = msgpack.packb(msgpack.Timestamp(1, 2))  # canonical 64-bit form
        echo = [  # (rid, args as bytes, the args the reply must echo)
            (1, msgpack.packb({"x": msgpack.ExtType(5, b"ab")}), {"x": msgpack.ExtType(5, b"ab")}),
            (2, b"\x81\xa1t" + ts, {"t": msgpack.Timestamp(1, 2)}),
            (3, msgpack.packb({1: "i", None: "n", b"b": "b", 1.5: "f", msgpack.ExtType(1, b"k"): "e"},
                              use_bin_type=True),
             {1: "i", None: "n", b"b": "b", 1.5: "f", msgpack.ExtType(1, b"k"): "e"}),
        ]
        refused = [  # (frame, reply id, error type)
            (_frame(msgpack.packb(msgpack.ExtType(5, b"ab"))), 0, "ProtocolError"),
            (_frame(ts), 0, "ProtocolError"),
            (self.request_bytes(20, msgpack.packb(msgpack.ExtType(5, b"ab"))), 20, "InvalidRequest"),
            (self.request_bytes(21, ts), 21, "InvalidRequest"),
            (self.request_bytes(22, b"\x81\x91\x01\x01"), 0, "ProtocolError"),  # key [1]
            (self.request_bytes(23, b"\x81\x81\x01\x01\x01"), 0, "ProtocolError"),  # key {1: 1}
            (self.request_bytes(24, b"\x80", command=b"\xc4\x04echo"), 24, "InvalidRequest"),
            (_frame(msgpack.packb({"type": b"cancel", "id": 1})), 0, "ProtocolError"),
            (self.request_bytes(msgpack.ExtType(1, b"k"), b"\x80"), 0, "InvalidRequest"),
        ]
        for mode in MODES:
            with self.subTest(mode=mode):
                w = self.spawn("msgpack", mode)
                for rid, args, expected in echo:
                    w.send_raw(self.request_bytes(rid, args))
                    reply = w.recv(WAIT)
                    self.assertEqual(reply.get("id"), rid, reply)
                    self.assertEqual(reply["result"]["echoed"], expected)
                    # Written back as the same ext, byte for byte.
                    self.assertIn(args, msgpack.packb(reply["result"]["echoed"], use_bin_type=True))
                for frame, rid, kind in refused:
                    w.send_raw(frame)
                    reply = w.recv(WAIT)
                    self.assertEqual((reply.get("id"), reply.get("error", {}).get("type")), (rid, kind),
                                     reply)
                w.send_raw(self.request_bytes(2**64 - 1, b"\x80"))
                self.assertEqual(w.recv(WAIT).get("id"), 2**64 - 1)
                # Nested past what the library reads: a ProtocolError that
                # says why (msgpack's StackError has no text of its own).
                w.send_raw(self.request_bytes(30, b"\x81\xa1d" + b"\x91" * 5000 + b"\x00"))
                kind, message = self.error_of(w.recv(WAIT))
                self.assertEqual(kind, "ProtocolError")
                self.assertEqual(message, "frame is not valid MessagePack: StackError")
                self.assert_serves_on(w)

    def test_hostile_frames_while_a_host_call_waits_leave_it_answered(self):
        # While a handler waits for its host reply the worker reads on
        # (in sync mode, the waiting thread reads stdin): frames it cannot
        # use are answered as ever, cancels and host_replies whose id is no
        # integer (a map, a list holding the host call's id, an ext) are
        # ignored, and the host call still gets its own reply.
        for mode in MODES:
            with self.subTest(mode=mode):
                w = self.spawn("msgpack", mode)
                w.request(1, "host")
                call = w.recv(WAIT)
                self.assertEqual(call.get("type"), "host_call", call)
                junk = [
                    _frame(msgpack.packb(msgpack.ExtType(5, b"ab"))),
                    self.request_bytes(2, b"\x81\x91\x01\x01"),  # key [1]
                    self.request_bytes(3, b"\x80", command=b"\xc4\x04echo"),
                    _frame(msgpack.packb({"type": "cancel", "id": {"a": 1}})),
                    _frame(msgpack.packb({"type": "cancel", "id": msgpack.ExtType(1, b"\x01")})),
                    _frame(msgpack.packb({"type": "host_reply", "id": {"a": 1}, "success": True,
                                          "result": "wrong"})),
                    _frame(msgpack.packb({"type": "host_reply", "id": [call["id"]], "success": True,
                                          "result": "wrong"})),
                    _frame(msgpack.packb({"type": "host_reply", "id": bytes([call["id"]]),
                                          "success": True, "result": "wrong"}, use_bin_type=True)),
                    self.request_bytes(4, msgpack.packb({"k": {None: 1, b"b": 2}}, use_bin_type=True)),
                ]
                w.send_raw(b"".join(junk))
                w.send({"type": "host_reply", "id": call["id"], "success": True, "result": "right"})
                replies = {}
                errors = []
                while len(replies) < 3 or len(errors) < 2:
                    reply = w.recv(WAIT)
                    self.assertIsNotNone(reply, w.stderr)
                    if reply["id"] == 0:
                        errors.append(reply["error"]["type"])
                    else:
                        replies[reply["id"]] = reply
                self.assertEqual(errors, ["ProtocolError", "ProtocolError"])
                self.assertEqual(replies[1]["result"], {"ok": "right"})
                self.assertEqual(replies[3]["error"]["type"], "InvalidRequest")
                self.assertEqual(replies[4]["result"]["echoed"], {"k": {None: 1, b"b": 2}})
                self.assert_serves_on(w)
                # The stderr reader may lag behind stdout's. The first
                # host_reply matching no waiting host call is logged (the
                # next ones are counted): the map id's.
                logged = "host_reply {'a': 1} matches no waiting host call; dropped"
                self.assertTrue(wait_until(lambda: logged in w.stderr, timeout=WAIT), w.stderr)

    @unittest.skip(
        "DEFECT: 1, 1.0 and True (and 0, 0.0 and False) are one key to a Python dict: a"
        " MessagePack map holding more than one of them reaches the handler with one entry,"
        " the last value under the first key; keeping them apart needs a map type of its own")
    def test_keys_equal_in_python_but_not_in_messagepack_are_kept_apart(self):
        # protocol.md section 3: keys "may also be `bin`, booleans or nil.
        # Every bridge accepts such keys: Python and Ruby keep them as they
        # are".
        w = self.spawn("msgpack")
        args = b"\x83\x01\xa1i\xc3\xa1t\xcb" + struct.pack(">d", 1.0) + b"\xa1f"  # {1, true, 1.0}
        w.send_raw(self.request_bytes(1, b"\x81\xa1m" + args))
        reply = w.recv(WAIT)
        self.assertEqual(reply.get("id"), 1, reply)
        self.assertIn(args, msgpack.packb(reply["result"]["echoed"], use_bin_type=True))

    @unittest.skip(
        "DEFECT: msgpack-python decodes every ext of type -1 as a Timestamp, with no option to"
        " keep it raw: one whose data is not a timestamp (3 bytes, or nanoseconds past 10^9)"
        " fails the whole frame as a ProtocolError under id 0 (the pool then replaces the"
        " worker), and a 96-bit one is written back in a shorter form, not as the same ext")
    def test_an_ext_of_type_minus_1_is_written_back_as_the_same_ext(self):
        # protocol.md section 3: "MessagePack `ext` values reach handlers as
        # the library's own type and are written back as the same `ext`".
        w = self.spawn("msgpack")
        cases = [
            b"\xc7\x03\xffabc",  # no timestamp's length
            b"\xd7\xff" + b"\xff" * 8,  # 64-bit form, nanoseconds past 10^9
            b"\xc7\x0c\xff" + b"\x00" * 11 + b"\x01",  # 96-bit form of 1 s
        ]
        for rid, ext in enumerate(cases, 1):
            w.send_raw(self.request_bytes(rid, b"\x81\xa1t" + ext))
            reply = w.recv(WAIT)
            self.assertEqual(reply.get("id"), rid, reply)
            self.assertIn(ext, msgpack.packb(reply["result"]["echoed"], use_bin_type=True))


class GenericCommandsTests(_Base):
    def test_compute_fails_with_value_error_only_whatever_its_arguments(self):
        # protocol.md section 7: compute's errors are failed replies of type
        # ValueError (Python): "Unsupported operation: X", "Division by
        # zero", or operands that are not numbers (booleans are not). An
        # integer too large for a float (JSON carries any number of digits)
        # once leaked an OverflowError.
        w = self.spawn("json")
        operands = "Operands a and b must be numbers"
        cases = [
            ({"a": {"x": 1}}, operands), ({"b": [1]}, operands), ({"a": None}, operands),
            ({"a": True}, operands), ({"a": "nan"}, operands), ({"b": "inf"}, operands),
            ({"operation": {"x": 1}}, "Unsupported operation: {'x': 1}"),
            ({"operation": ["add"]}, "Unsupported operation: ['add']"),
            ({"operation": None}, "Unsupported operation: None"),
            ({"operation": "divide", "a": 1, "b": -0.0}, "Division by zero"),
            ({"a": 10**400, "b": 1.5}, "Operands out of range"),
            ({"operation": "divide", "a": 10**400, "b": 1}, "Operands out of range"),
        ]
        for rid, (args, message) in enumerate(cases, 1):
            kind, text = self.error_of(self.call(w, rid, "compute", args))
            self.assertEqual(kind, "ValueError", (args, text))
            self.assertTrue(text.startswith(message), (args, text))
        # In range, exact: integers are not made floats.
        reply = self.call(w, 50, "compute", {"operation": "multiply", "a": 2**64 - 1, "b": 2**64 - 1})
        self.assertEqual(reply["result"]["result"], (2**64 - 1) ** 2)
        # random is the Node.js bridge's only.
        self.assertEqual(self.error_of(self.call(w, 51, "random", {"type": {"x": 1}})),
                         ("UnknownCommand", "Unknown command: random"))
        # A worker_id that is no string is not taken for the worker's id.
        reply = self.call(w, 52, "ping", {"worker_id": {"a": 1}})
        self.assertEqual(reply["result"]["worker_id"], "unknown")
        self.assertEqual(self.call(w, 53, "info", {"x": [None]})["result"]["status"], "ok")


if __name__ == "__main__":
    unittest.main()
