"""End to end: real worker processes driven over pipes, both codecs."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from ._helpers import BRIDGE_DIR, CODECS, EXAMPLE_WORKER, GENERIC_WORKER, WorkerProcess, wait_until

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class _Base(unittest.TestCase):
    script = GENERIC_WORKER
    env = None

    def spawn(self, codec, env=None, script=None):
        merged = dict(self.env or {})
        merged.update(env or {})
        w = WorkerProcess(script or self.script, codec, env=merged)
        self.addCleanup(w.stop)
        hello = w.recv()
        self.assertEqual(hello["type"], "hello")
        self.assertEqual(hello["protocol"], 1)
        self.assertEqual(hello["pid"], w.proc.pid)
        return w, hello

    def each_codec(self):
        return CODECS


class GenericWorkerTests(_Base):
    def test_a_request_written_ahead_and_cancelled_before_it_starts_never_runs(self):
        from snakepit_bridge import _wire
        for codec in self.each_codec():
            w, _ = self.spawn(codec)
            w.call(1, "ping", {"initialization": True, "worker_id": "w"})
            frames = b"".join(_wire.encode_frame(w.codec, f) for f in [
                {"id": 7, "command": "echo", "args": {"n": 7}},
                {"id": 8, "command": "echo", "args": {"n": 8}},
                {"type": "cancel", "id": 8},
                {"id": 9, "command": "ping", "args": {}},
            ])
            w.send_raw(frames)  # one write: the worker reads them together
            replies = {}
            while len(replies) < 3:
                msg = w.recv()
                replies[msg["id"]] = msg
            self.assertTrue(replies[7]["success"])
            self.assertFalse(replies[8]["success"])
            self.assertEqual(replies[8]["error"]["type"], "Cancelled")
            self.assertTrue(replies[9]["success"])
            # The cancelled request never ran: init, 7 and 9 were handled.
            self.assertEqual(replies[9]["result"]["requests_handled"], 3)

    def test_handshake_and_generic_commands(self):
        for codec in self.each_codec():
            w, hello = self.spawn(codec)
            self.assertEqual(hello["bridge"], "snakepit-python/0.1.0")
            self.assertTrue(hello["runtime"].startswith("CPython 3."))
            self.assertEqual(hello["capabilities"], {"max_concurrency": 1, "cancel": False, "sigint": True,
                                                     "streaming": True, "host_calls": True, "pipeline": True})
            init = w.call(1, "ping", {"initialization": True, "worker_id": "pool_worker_1_210"})
            self.assertTrue(init["success"])
            r = init["result"]
            self.assertEqual(r["status"], "ok")
            self.assertEqual(r["bridge_type"], "generic")
            self.assertEqual(r["worker_id"], "pool_worker_1_210")
            self.assertEqual(r["pid"], w.proc.pid)
            self.assertEqual(r["python_version"], ".".join(str(n) for n in sys.version_info[:3]))
            self.assertEqual(r["echo"], {"initialization": True, "worker_id": "pool_worker_1_210"})
            self.assertIsInstance(r["timestamp"], float)
            health = w.call(2, "ping", {"health_check": True})["result"]
            self.assertEqual(health["worker_id"], "pool_worker_1_210")
            self.assertEqual(health["requests_handled"], 2)

            echo = w.call(3, "echo", {"message": "héllo ✓", "n": [1, 2]})["result"]
            self.assertEqual(echo["status"], "ok")
            self.assertEqual(echo["echoed"], {"message": "héllo ✓", "n": [1, 2]})

            add = w.call(4, "compute", {"operation": "add", "a": 5, "b": 3})["result"]
            self.assertEqual(add["result"], 8)
            self.assertEqual(add["inputs"], {"a": 5, "b": 3})
            self.assertEqual(add["operation"], "add")
            self.assertEqual(w.call(5, "compute", {"a": 2})["result"]["result"], 2)
            self.assertEqual(w.call(6, "compute", {"operation": "divide", "a": 1, "b": 4})["result"]["result"], 0.25)
            self.assertEqual(w.call(7, "compute", {"operation": "multiply", "a": 3, "b": 4})["result"]["result"], 12)
            self.assertEqual(w.call(8, "compute", {"operation": "subtract", "a": 3, "b": 4})["result"]["result"], -1)
            div0 = w.call(9, "compute", {"operation": "divide", "a": 1, "b": 0})
            self.assertFalse(div0["success"])
            self.assertEqual(div0["error"]["type"], "ValueError")
            self.assertEqual(div0["error"]["message"], "Division by zero")
            bad = w.call(10, "compute", {"operation": "pow", "a": 1, "b": 0})["error"]
            self.assertEqual(bad["message"], "Unsupported operation: pow")

            info = w.call(11, "info")["result"]
            self.assertEqual(info["status"], "ok")
            self.assertEqual(info["bridge_info"]["supported_commands"], ["compute", "echo", "info", "ping"])
            self.assertEqual(info["bridge_info"]["total_requests"], 11)
            self.assertEqual(info["system_info"]["pid"], w.proc.pid)

            unknown = w.call(12, "frobnicate")
            self.assertEqual(unknown["error"], {"type": "UnknownCommand", "message": "Unknown command: frobnicate"})

            w.close_stdin()
            self.assertIsNone(w.recv())
            self.assertEqual(w.wait(), 0)

    def test_garbage_and_invalid_requests_keep_serving(self):
        for codec in self.each_codec():
            w, _ = self.spawn(codec)
            w.send_raw(b"\x00\x00\x00\x05\xc1garb")
            err = w.recv()
            self.assertEqual(err["id"], 0)
            self.assertFalse(err["success"])
            self.assertEqual(err["error"]["type"], "ProtocolError")
            w.send({"id": 5, "args": {}})
            self.assertEqual(w.recv()["error"]["type"], "InvalidRequest")
            self.assertEqual(w.call(6, "ping")["result"]["status"], "ok")
            w.close_stdin()
            self.assertEqual(w.wait(), 0)

    def test_worker_id_from_env_and_original_key_order(self):
        w, _ = self.spawn("json", env={"SNAKEPIT_WORKER_ID": "pool_worker_3_8f2c"})
        # The original pool's frame, byte for byte (sorted keys).
        w.send_raw(bytes.fromhex(
            "0000005a7b2261726773223a7b2274657374223a747275657d2c22636f6d6d616e64223a2270696e67222c22696422"
            "3a3239302c2274696d657374616d70223a22323032362d31312d32375431323a32343a30342e3035313032335a227d"))
        reply = w.recv()
        self.assertEqual(reply["id"], 290)
        self.assertEqual(reply["result"]["worker_id"], "pool_worker_3_8f2c")
        self.assertEqual(reply["result"]["echo"], {"test": True})

    def test_runs_from_another_directory_without_pythonpath(self):
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        proc = subprocess.run([sys.executable, GENERIC_WORKER, "--mode", "pool-worker", "--snakepit-run-id", "x"],
                              input=b"", stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                              cwd=tempfile.gettempdir(), timeout=20)
        self.assertEqual(proc.returncode, 0, proc.stderr)
        self.assertTrue(proc.stdout.startswith(b"\x00\x00\x00"))
        self.assertIn(b'"type":"hello"', proc.stdout)

    def test_sigterm_exits_cleanly(self):
        w, _ = self.spawn("json")
        w.call(1, "ping")
        w.signal(signal.SIGTERM)
        self.assertEqual(w.wait(), 0)


class SyncReadAheadTests(_Base):
    """A one-at-a-time worker with requests written ahead (pipelining)."""
    script = EXAMPLE_WORKER

    def test_a_cancel_arriving_while_the_request_before_runs_drops_the_waiting_one(self):
        from snakepit_bridge import _wire
        for codec in self.each_codec():
            w, _ = self.spawn(codec)
            # Both requests arrive together: the second waits in the backlog.
            w.send_raw(b"".join(_wire.encode_frame(w.codec, f) for f in [
                {"id": 1, "command": "sleep", "args": {"seconds": 0.5}},
                {"id": 2, "command": "shout", "args": {"text": "late"}},
            ]))
            time.sleep(0.15)
            w.send({"type": "cancel", "id": 2})  # while request 1 runs
            replies = {}
            while len(replies) < 2:
                msg = w.recv()
                replies[msg["id"]] = msg
            self.assertTrue(replies[1]["success"], replies[1])
            self.assertFalse(replies[2]["success"], replies[2])
            self.assertEqual(replies[2]["error"]["type"], "Cancelled")

    def test_requests_and_cancels_read_together_keep_their_order(self):
        from snakepit_bridge import _wire
        for codec in self.each_codec():
            w, _ = self.spawn(codec)
            # One write, so one read: 2 is cancelled while it waits; the
            # cancel of 4 comes before 4 itself, so 4 runs; 9 waits nowhere.
            w.send_raw(b"".join(_wire.encode_frame(w.codec, f) for f in [
                {"id": 1, "command": "sleep", "args": {"seconds": 0.2}},
                {"id": 2, "command": "shout", "args": {"text": "two"}},
                {"id": 3, "command": "shout", "args": {"text": "three"}},
                {"type": "cancel", "id": 2},
                {"type": "cancel", "id": 4},
                {"id": 4, "command": "shout", "args": {"text": "four"}},
                {"type": "cancel", "id": 9},
                {"id": 5, "command": "shout", "args": {"text": "five"}},
            ]))
            replies = [w.recv() for _ in range(5)]
            ran = [m["id"] for m in replies if m["success"]]
            self.assertEqual(ran, [1, 3, 4, 5], replies)
            cancelled = [m for m in replies if not m["success"]]
            self.assertEqual([m["id"] for m in cancelled], [2], replies)
            self.assertEqual(cancelled[0]["error"]["type"], "Cancelled")
            self.assertEqual(w.call(6, "shout", {"text": "six"})["result"], "SIX")

    def test_a_cancel_arriving_during_a_host_call_drops_the_waiting_request(self):
        for codec in self.each_codec():
            w, _ = self.spawn(codec)
            w.request(1, "session_roundtrip", {"value": 7}, session_id="s")
            call = w.recv()
            self.assertEqual(call["type"], "host_call", call)
            # Written ahead while the host call waits for its reply.
            w.request(2, "shout", {"text": "never"})
            w.send({"type": "cancel", "id": 2})
            time.sleep(0.1)
            w.send({"type": "host_reply", "id": call["id"], "success": True, "result": None})
            replies = {}
            while len(replies) < 2:
                msg = w.recv()
                if msg.get("type") == "host_call":
                    w.send({"type": "host_reply", "id": msg["id"], "success": True,
                            "result": 7 if msg["function"] == "session.get" else True})
                    continue
                replies[msg["id"]] = msg
            self.assertTrue(replies[1]["success"], replies[1])
            self.assertFalse(replies[2]["success"], replies[2])
            self.assertEqual(replies[2]["error"]["type"], "Cancelled")


class ExampleWorkerTests(_Base):
    script = EXAMPLE_WORKER

    def fake_host(self, w, store, expect_request_id):
        """Answer host calls until the request's final response arrives."""
        while True:
            msg = w.recv()
            if msg.get("type") == "host_call":
                self.assertEqual(msg["request_id"], expect_request_id)
                fn, args = msg["function"], msg["args"]
                if fn == "session.get":
                    reply = {"success": True, "result": store.get(args["key"])}
                elif fn == "session.set":
                    store[args["key"]] = args["value"]
                    reply = {"success": True, "result": None}
                elif fn == "session.delete":
                    reply = {"success": True, "result": store.pop(args["key"], None) is not None}
                else:
                    reply = {"success": False, "error": {"type": "UnknownFunction",
                                                         "message": f"no host function named {fn}"}}
                frame = {"type": "host_reply", "id": msg["id"]}
                frame.update(reply)
                w.send(frame)
            else:
                return msg

    def test_print_goes_to_stderr(self):
        for codec in self.each_codec():
            w, _ = self.spawn(codec)
            self.assertEqual(w.call(1, "shout", {"text": "hi"})["result"], "HI")
            self.assertEqual(w.call(2, "ping")["result"]["status"], "ok")
            self.assertTrue(wait_until(lambda: "raw write to fd 1" in w.stderr))
            self.assertIn("user print goes to stderr: hi", w.stderr)
            self.assertNotIn(b"user print", w.raw_stdout)

    def test_streaming(self):
        for codec in self.each_codec():
            w, _ = self.spawn(codec)
            w.request(1, "stream", {"n": 4}, stream=True)
            got = [w.recv() for _ in range(5)]
            self.assertEqual([m["data"] for m in got[:4]], [{"i": i} for i in range(4)])
            self.assertTrue(all(m["type"] == "chunk" and m["id"] == 1 for m in got[:4]))
            self.assertEqual(got[4]["result"], {"count": 4, "streamed": True})
            w.request(2, "stream", {"n": 2})
            self.assertEqual(w.recv()["result"], {"count": 2, "streamed": False})

    def test_raising_handler(self):
        for codec in self.each_codec():
            w, _ = self.spawn(codec)
            reply = w.call(1, "boom")
            self.assertFalse(reply["success"])
            self.assertEqual(reply["error"]["type"], "RuntimeError")
            self.assertEqual(reply["error"]["message"], "kaboom")
            self.assertIn('in boom', reply["error"]["traceback"])
            self.assertIn("RuntimeError: kaboom", reply["error"]["traceback"])
            self.assertEqual(w.call(2, "ping")["result"]["status"], "ok")

    def test_host_calls_and_session(self):
        for codec in self.each_codec():
            w, _ = self.spawn(codec)
            store = {}
            w.request(7, "session_roundtrip", {"value": {"model": "gpt"}}, session_id="user_1")
            reply = self.fake_host(w, store, 7)
            self.assertEqual(reply["result"], {"got": {"model": "gpt"}, "deleted": True})
            self.assertEqual(store, {})
            w.request(8, "host_fail")
            reply = self.fake_host(w, store, 8)
            self.assertEqual(reply["result"], {"type": "UnknownFunction", "message": "no host function named nope"})

    def test_host_replies_without_success_true_fail_the_host_call(self):
        # docs/protocol.md, host_reply: without success: true the host call
        # fails, with the error's type and message or HostError and a
        # message of its own; never a ProtocolError under id 0.
        failed = {"type": "HostError", "message": "host call failed"}
        cases = [
            ({}, failed),
            ({"success": "yes", "result": "r"}, failed),
            ({"success": 1, "result": "r"}, failed),
            ({"success": None, "result": "r"}, failed),
            ({"success": False}, failed),
            ({"success": False, "error": None}, failed),
            ({"success": False, "error": {"message": "m"}}, {"type": "HostError", "message": "m"}),
            ({"success": False, "error": {"type": "T"}}, {"type": "T", "message": "host call failed"}),
            ({"success": False, "error": {"type": "T", "message": 5}}, {"type": "T", "message": "5"}),
            ({"success": False, "error": 5}, {"type": "HostError", "message": "5"}),
            ({"success": True}, "no error?"),
        ]
        for codec in self.each_codec():
            w, _ = self.spawn(codec)
            for rid, (fields, expected) in enumerate(cases, 1):
                w.request(rid, "host_fail")
                call = w.recv()
                self.assertEqual(call["type"], "host_call", call)
                frame = {"type": "host_reply", "id": call["id"]}
                frame.update(fields)
                w.send(frame)
                reply = w.recv()
                self.assertEqual((reply["id"], reply.get("result")), (rid, expected), fields)

    def test_frames_without_an_integer_id_are_ignored_in_a_host_call(self):
        for codec in self.each_codec():
            w, _ = self.spawn(codec)
            w.request(8, "host_fail")
            call = w.recv()
            hid = call["id"]
            for rid in ("8", None, 8.0, [8], True):
                w.send({"type": "cancel", "id": rid})
            w.send({"type": "cancel"})
            for rid in (str(hid), None, float(hid), [hid], True):
                w.send({"type": "host_reply", "id": rid, "success": True, "result": "wrong"})
            w.send({"type": "host_reply", "success": True, "result": "wrong"})
            w.send({"type": "host_reply", "id": hid, "success": False, "error": {"type": "T", "message": "m"}})
            self.assertEqual(w.recv(), {"id": 8, "success": True, "result": {"type": "T", "message": "m"}})
            self.assertEqual(w.call(9, "shout", {"text": "next"})["result"], "NEXT")

    def test_context(self):
        for codec in self.each_codec():
            w, _ = self.spawn(codec)
            w.call(1, "ping", {"initialization": True, "worker_id": "pool_worker_9"})
            r = w.call(2, "ctx_info", session_id="s9", traceparent=TP, stream=True)["result"]
            self.assertEqual(r, {"request_id": 2, "session_id": "s9", "worker_id": "pool_worker_9",
                                 "traceparent": TP, "stream": True, "cancelled": False})
            self.assertTrue(wait_until(lambda: "[req 2] ctx_info called" in w.stderr))

    def test_binary_results(self):
        for codec in self.each_codec():
            w, _ = self.spawn(codec)
            reply = w.call(1, "binary")
            if codec == "msgpack":
                self.assertEqual(reply["result"], b"\x00\x01\xfe\xff")
            else:
                self.assertEqual(reply["error"]["type"], "TypeError")

    def test_sigint_cancels_running_handler_only(self):
        for codec in self.each_codec():
            w, _ = self.spawn(codec)
            # Between handlers SIGINT is ignored.
            w.signal(signal.SIGINT)
            time.sleep(0.1)
            self.assertEqual(w.call(1, "ping")["result"]["status"], "ok")
            w.request(2, "sleep", {"seconds": 30})
            time.sleep(0.3)
            started = time.monotonic()
            w.signal(signal.SIGINT)
            reply = w.recv()
            self.assertLess(time.monotonic() - started, 5)
            self.assertEqual(reply["id"], 2)
            self.assertEqual(reply["error"]["type"], "Cancelled")
            self.assertEqual(w.call(3, "ping")["result"]["status"], "ok")
            self.assertIsNone(w.proc.poll())

    def test_sigint_storm_never_kills(self):
        w, _ = self.spawn("json")
        for i in range(1, 30):
            w.request(i, "ping")
            w.signal(signal.SIGINT)
            reply = w.recv()
            self.assertEqual(reply["id"], i)
            # Either answered or cancelled, never lost.
            self.assertTrue(reply["success"] or reply["error"]["type"] == "Cancelled")
        self.assertEqual(w.call(100, "ping")["result"]["status"], "ok")

    def test_sigint_while_streaming_keeps_frames_whole(self):
        w, _ = self.spawn("json")
        w.request(1, "flood", {"size": 200000}, stream=True)
        for _ in range(20):
            self.assertEqual(len(w.recv()["data"]), 200000)
        w.signal(signal.SIGINT)
        while True:
            msg = w.recv()  # raises if a frame was cut
            if msg.get("type") != "chunk":
                break
        self.assertEqual(msg["error"]["type"], "Cancelled")
        self.assertEqual(w.call(2, "ping")["result"]["status"], "ok")

    def test_cancel_frame_during_host_call(self):
        w, _ = self.spawn("json")
        w.request(4, "session_roundtrip", {"value": 1})
        call = w.recv()
        self.assertEqual(call["type"], "host_call")
        w.send({"type": "cancel", "id": 4})
        self.assertEqual(w.recv()["error"]["type"], "Cancelled")
        self.assertEqual(w.call(5, "ping")["result"]["status"], "ok")

    def test_eof_exits_zero(self):
        for codec in self.each_codec():
            w, _ = self.spawn(codec)
            w.close_stdin()
            self.assertEqual(w.wait(), 0)


class AsyncExampleWorkerTests(ExampleWorkerTests):
    env = {"EXAMPLE_MODE": "async"}

    def test_capabilities(self):
        _, hello = self.spawn("json")
        self.assertEqual(hello["capabilities"], {"max_concurrency": 8, "cancel": True, "sigint": False,
                                                 "streaming": True, "host_calls": True})

    # SIGINT is not declared in async mode; it is ignored.
    def test_sigint_cancels_running_handler_only(self):
        w, _ = self.spawn("json")
        w.request(1, "asleep", {"seconds": 0.5})
        time.sleep(0.1)
        w.signal(signal.SIGINT)
        self.assertEqual(w.recv()["result"], "slept")

    test_sigint_storm_never_kills = None
    test_sigint_while_streaming_keeps_frames_whole = None

    def test_concurrent_requests(self):
        for codec in self.each_codec():
            w, _ = self.spawn(codec)
            started = time.monotonic()
            for i in range(1, 5):
                w.request(i, "asleep", {"seconds": 0.4})
            w.request(5, "sleep", {"seconds": 0.4})  # a plain function, on a thread
            replies = {w.recv()["id"] for _ in range(5)}
            self.assertEqual(replies, {1, 2, 3, 4, 5})
            self.assertLess(time.monotonic() - started, 1.5)

    def test_cancel_frames(self):
        for codec in self.each_codec():
            w, _ = self.spawn(codec)
            w.request(1, "asleep", {"seconds": 30})
            w.request(2, "poll_cancel", {"seconds": 30})
            w.request(3, "asleep", {"seconds": 0.2})
            time.sleep(0.2)
            w.send({"type": "cancel", "id": 1})
            w.send({"type": "cancel", "id": 2})
            replies = {}
            for _ in range(3):
                m = w.recv()
                replies[m["id"]] = m
            self.assertEqual(replies[1]["error"]["type"], "Cancelled")
            self.assertEqual(replies[2]["error"]["type"], "Cancelled")
            self.assertEqual(replies[3]["result"], "slept")
            self.assertEqual(w.call(4, "ping")["result"]["status"], "ok")

    def test_async_host_calls_and_errors(self):
        for codec in self.each_codec():
            w, _ = self.spawn(codec)
            store = {}
            w.request(3, "asession", {"value": [1, 2]})
            self.assertEqual(self.fake_host(w, store, 3)["result"], [1, 2])
            reply = w.call(4, "araise")
            self.assertEqual((reply["error"]["type"], reply["error"]["message"]), ("ValueError", "async failure"))
            w.request(5, "astream", {"n": 3}, stream=True)
            got = [w.recv() for _ in range(4)]
            self.assertEqual([m.get("data") for m in got[:3]], [0, 1, 2])
            self.assertEqual(got[3]["result"], "done")

    def test_eof_waits_for_running_requests(self):
        w, _ = self.spawn("json")
        w.request(1, "asleep", {"seconds": 0.3})
        w.close_stdin()
        self.assertEqual(w.recv()["result"], "slept")
        self.assertEqual(w.wait(), 0)

    def test_sigterm_exits_cleanly(self):
        w, _ = self.spawn("json")
        w.request(1, "asleep", {"seconds": 30})
        time.sleep(0.2)
        w.signal(signal.SIGTERM)
        self.assertEqual(w.wait(), 0)


class ReadmeExampleTests(unittest.TestCase):
    def test_readme_example_runs_as_written(self):
        with open(os.path.join(BRIDGE_DIR, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
        self.assertTrue(blocks, "README has no python example")
        with tempfile.TemporaryDirectory() as tmp:
            script = os.path.join(tmp, "my_worker.py")
            with open(script, "w", encoding="utf-8") as f:
                f.write(blocks[0])
            w = WorkerProcess(script, "json")
            self.addCleanup(w.stop)
            self.assertEqual(w.recv()["type"], "hello")
            self.assertEqual(w.call(1, "ping", {"initialization": True, "worker_id": "w1"})["result"]["status"], "ok")
            self.assertEqual(w.call(2, "greet", {"name": "Ada"})["result"], {"greeting": "Hello, Ada!"})
            w.request(3, "count", {"to": 3}, stream=True)
            self.assertEqual([w.recv()["data"] for _ in range(3)], [1, 2, 3])
            self.assertEqual(w.recv()["result"], {"counted": 3})
            self.assertEqual(w.call(4, "divide", {"a": 1, "b": 0})["error"]["type"], "ZeroDivisionError")
            w.close_stdin()
            self.assertEqual(w.wait(), 0)


if __name__ == "__main__":
    unittest.main()
