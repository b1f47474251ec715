"""Outside audit: the sync worker driven directly over its pipes, as a
hostile or unlucky pool would drive it (frames split and coalesced, cancels
before, with and after their requests, host replies out of order, SIGINT at
each phase, stdin ending mid-frame, edge ids).

Invariants checked throughout: exactly one reply per request, a handler
never runs for a request cancelled before it started (handlers log their
request id to a file), and the worker survives bad input.
"""

import os
import signal
import struct
import tempfile
import textwrap
import time
import unittest

from ._helpers import CODECS, WorkerProcess, wait_until
from snakepit_bridge import _wire

WORKER_SCRIPT = textwrap.dedent('''\
    import os
    import time

    import snakepit_bridge
    from snakepit_bridge import generic

    worker = snakepit_bridge.Worker()
    generic.register(worker)


    def mark(ctx, what=""):
        with open(os.environ["MARK_FILE"], "a") as f:
            f.write(f"{ctx.request_id}{what}\\n")


    @worker.command("mark")
    def mark_cmd(args, ctx):
        mark(ctx)
        time.sleep(args.get("sleep", 0))
        return {"id": ctx.request_id}


    @worker.command("host")
    def host(args, ctx):
        mark(ctx)
        out = []
        for i in range(args.get("calls", 1)):
            out.append(ctx.call_host("f", {"i": i}))
        time.sleep(args.get("sleep", 0))
        return out


    @worker.command("stream")
    def stream(args, ctx):
        mark(ctx)
        for i in range(args.get("n", 1000)):
            ctx.emit(i)
            time.sleep(0.01)
        return "done"


    if __name__ == "__main__":
        worker.run()
''')

ASYNC_SCRIPT = textwrap.dedent('''\
    import asyncio

    import snakepit_bridge

    worker = snakepit_bridge.Worker(max_concurrency=4)


    @worker.command("slow")
    async def slow(args, ctx):
        await asyncio.sleep(args.get("seconds", 0.5))
        return ctx.request_id


    if __name__ == "__main__":
        worker.run()
''')

TS = "2026-11-27T12:24:04.051023Z"


class OutsideWireRaces(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory(prefix="snakepit-outside-races-")
        self.addCleanup(self.dir.cleanup)
        self.script = os.path.join(self.dir.name, "worker.py")
        with open(self.script, "w") as f:
            f.write(WORKER_SCRIPT)
        self.n = 0

    # --- helpers -----------------------------------------------------------------

    def spawn(self, codec="json"):
        self.n += 1
        self.marks = os.path.join(self.dir.name, f"marks-{self.n}")
        w = WorkerProcess(self.script, codec, env={"MARK_FILE": self.marks})
        self.addCleanup(w.stop)
        hello = w.recv()
        self.assertEqual(hello["type"], "hello", hello)
        self.assertTrue(hello["capabilities"].get("pipeline"), hello)
        return w

    def marked(self):
        try:
            with open(self.marks) as f:
                return [int(x) for x in f.read().split()]
        except FileNotFoundError:
            return []

    @staticmethod
    def frame(w, value):
        return _wire.encode_frame(w.codec, value)

    def req(self, w, rid, command="mark", args=None):
        return self.frame(w, {"id": rid, "command": command, "args": args or {}, "timestamp": TS})

    def cancel(self, w, rid):
        return self.frame(w, {"type": "cancel", "id": rid})

    def reply(self, w, timeout=10):
        msg = w.recv(timeout)
        self.assertIsNotNone(msg, "worker closed stdout; stderr:\n" + w.stderr)
        return msg

    def replies(self, w, n):
        return [self.reply(w) for _ in range(n)]

    def assert_nothing_more(self, w, rid=999_999):
        """The next frame is the reply to a fresh ping: nothing stray came
        before it (no second reply, no reply to a cancel)."""
        w.request(rid, "ping")
        msg = self.reply(w)
        self.assertEqual((msg.get("id"), msg.get("success")), (rid, True), msg)

    def start_slow(self, w, rid, seconds=0.6):
        w.send_raw(self.req(w, rid, "mark", {"sleep": seconds}))
        self.assertTrue(wait_until(lambda: rid in self.marked(), 10), w.stderr)

    def sigint_idle(self, w):
        w.signal(signal.SIGINT)
        time.sleep(0.2)
        self.assertIsNone(w.proc.poll(), w.stderr)

    # --- framing -----------------------------------------------------------------

    def test_a_request_split_at_every_byte_boundary_gets_one_reply_each(self):
        """protocol.md section 2: "a 4-byte big-endian unsigned length n,
        then n bytes of payload. No newline, no other framing." Any split of
        the byte stream is the same stream."""
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.spawn(codec)
                data = self.req(w, 1, "echo", {"k": "v"})
                for cut in range(1, len(data)):
                    rid = cut + 1
                    data = self.req(w, rid, "echo", {"k": "v"})
                    w.send_raw(data[:cut])
                    time.sleep(0.002)
                    w.send_raw(data[cut:])
                    msg = self.reply(w)
                    self.assertEqual((msg["id"], msg["success"]), (rid, True), msg)
                self.assert_nothing_more(w)

    def test_hundreds_of_frames_coalesced_in_one_write_with_stray_cancels(self):
        """protocol.md section 4: "A cancel for an id that is not running
        (its reply has been sent) is ignored", as is one whose id is not an
        integer; every request gets exactly one reply, in order for a worker
        that runs one call at a time."""
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.spawn(codec)
                blob = b""
                for rid in range(1, 301):
                    blob += self.req(w, rid, "echo", {"n": rid})
                    blob += self.cancel(w, rid + 100_000)  # never a request
                    blob += self.frame(w, {"type": "cancel", "id": "x"})
                w.send_raw(blob)
                got = [(m["id"], m["success"]) for m in self.replies(w, 300)]
                self.assertEqual(got, [(i, True) for i in range(1, 301)])
                self.assert_nothing_more(w)

    # --- cancels -----------------------------------------------------------------

    def test_a_cancel_written_ahead_before_its_request_is_ignored_and_the_request_runs(self):
        """protocol.md section 4: a cancel for an id that is not running is
        ignored; the pipeline capability drops a request only for "a cancel
        frame for a request it has not started"."""
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.spawn(codec)
                self.start_slow(w, 1)
                w.send_raw(self.cancel(w, 2) + self.req(w, 2))
                got = [(m["id"], m["success"]) for m in self.replies(w, 2)]
                self.assertEqual(got, [(1, True), (2, True)])
                self.assertEqual(self.marked(), [1, 2])
                self.assert_nothing_more(w)

    def test_a_cancel_written_with_its_request_ahead_answers_it_unrun(self):
        """protocol.md, hello `pipeline`: "a cancel frame for a request it has
        not started makes it answer that request Cancelled without running
        it"."""
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.spawn(codec)
                self.start_slow(w, 1)
                # Request 2 and its cancel in one write, request 3 in its own
                # write, then 3's cancel split across two writes.
                w.send_raw(self.req(w, 2) + self.cancel(w, 2))
                w.send_raw(self.req(w, 3))
                c3 = self.cancel(w, 3)
                w.send_raw(c3[:3])
                w.send_raw(c3[3:] + self.req(w, 4))
                msgs = self.replies(w, 4)
                by_id = {m["id"]: m for m in msgs}
                self.assertEqual(sorted(by_id), [1, 2, 3, 4], msgs)
                for rid in (2, 3):
                    self.assertEqual(by_id[rid]["error"]["type"], "Cancelled", msgs)
                self.assertTrue(by_id[4]["success"], msgs)
                self.assertEqual(self.marked(), [1, 4])
                self.assert_nothing_more(w)

    def test_a_cancel_after_the_reply_and_for_edge_ids_is_ignored(self):
        """protocol.md section 4: "A cancel for an id that is not running
        (its reply has been sent) is ignored. So is a cancel whose id is
        missing or not an integer"."""
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.spawn(codec)
                self.assertTrue(w.call(1, "mark")["success"])
                for rid in (1, 0, -1, 2**53, 2**64 - 1, 1.5, None, [1]):
                    w.send(dict({"type": "cancel"}, **({} if rid is None else {"id": rid})))
                self.assert_nothing_more(w)
                self.assertEqual(self.marked(), [1])

    def test_a_cancel_with_an_escaped_type_drops_its_request_written_ahead(self):
        """protocol.md section 3: "JSON: UTF-8 JSON text, one value per
        frame"; hello `pipeline`: "a cancel frame for a request it has not
        started makes it answer that request Cancelled without running it".
        `{"type":"\\u0063ancel","id":2}` is the JSON text of a cancel frame:
        the sync loop, which picks cancel frames out of the read-ahead
        backlog by looking for the bytes `cancel` in the payload, decodes a
        frame with a backslash too (_sync.py _may_cancel)."""
        w = self.spawn("json")
        self.start_slow(w, 1)
        cancel = b'{"type":"\\u0063ancel","id":2}'
        w.send_raw(self.req(w, 2) + struct.pack(">I", len(cancel)) + cancel)
        msgs = self.replies(w, 2)
        self.assertEqual((msgs[1]["id"], msgs[1].get("error", {}).get("type")), (2, "Cancelled"), msgs)
        self.assertEqual(self.marked(), [1])

    def test_duplicate_ids_written_ahead_each_get_their_own_reply_one_at_a_time(self):
        """protocol.md section 4: a one-at-a-time worker "takes up the next
        request only once the one before it has replied, and cannot tell a
        request sent too early under that id from one sent after the reply:
        it runs it as a new request, with a reply of its own"."""
        w = self.spawn()
        self.start_slow(w, 5)
        w.send_raw(self.req(w, 5) + self.req(w, 5))
        got = [(m["id"], m["success"]) for m in self.replies(w, 3)]
        self.assertEqual(got, [(5, True)] * 3)
        self.assertEqual(self.marked(), [5, 5, 5])
        # Reused once more after its reply.
        self.assertTrue(w.call(5, "mark")["success"])
        self.assert_nothing_more(w)

    # --- host calls ----------------------------------------------------------------

    def host_call(self, w):
        msg = self.reply(w)
        self.assertEqual(msg.get("type"), "host_call", msg)
        return msg

    def test_host_replies_unknown_duplicated_and_out_of_order_are_ignored(self):
        """protocol.md section 4: "A host_reply whose id is not that of the
        host call being waited for is ignored: a host call never made, one
        already answered, or an id that is not an integer"."""
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.spawn(codec)
                w.request(1, "host", {"calls": 2})
                hc1 = self.host_call(w)
                # Its reply to come, preceded by replies for nothing.
                junk = [{"type": "host_reply", "id": i, "success": True, "result": "junk"}
                        for i in (hc1["id"] + 1, 0, 2**64 - 1, "1")]
                w.send_raw(b"".join(self.frame(w, j) for j in junk))
                w.send({"type": "host_reply", "id": hc1["id"], "success": True, "result": "a"})
                hc2 = self.host_call(w)
                self.assertNotEqual(hc2["id"], hc1["id"])
                # The first one's reply again, then the second's.
                w.send({"type": "host_reply", "id": hc1["id"], "success": True, "result": "dup"})
                w.send({"type": "host_reply", "id": hc2["id"], "success": True, "result": "b"})
                msg = self.reply(w)
                self.assertEqual((msg["id"], msg.get("result")), (1, ["a", "b"]), msg)
                # A duplicate after the call ended is ignored too.
                w.send({"type": "host_reply", "id": hc2["id"], "success": True, "result": "late"})
                self.assert_nothing_more(w)

    def test_requests_and_their_cancels_read_during_a_host_call(self):
        """hello `pipeline`: a request written ahead whose cancel comes is
        answered Cancelled unrun, also when both are read while a handler
        waits for a host reply; the other one waits and runs after."""
        w = self.spawn()
        w.request(1, "host")
        hc = self.host_call(w)
        w.send_raw(self.req(w, 2) + self.req(w, 3) + self.cancel(w, 2))
        time.sleep(0.2)
        w.send({"type": "host_reply", "id": hc["id"], "success": True, "result": 7})
        msgs = self.replies(w, 3)
        got = sorted((m["id"], m["success"]) for m in msgs)
        self.assertEqual(got, [(1, True), (2, False), (3, True)], msgs)
        self.assertEqual(self.marked(), [1, 3])
        self.assert_nothing_more(w)

    def test_a_cancel_read_with_the_host_reply_drops_its_request_waiting_in_the_backlog(self):
        """protocol.md hello `pipeline`: "a cancel frame for a request it has
        not started makes it answer that request Cancelled without running
        it". Request 2 is read (into the backlog) while request 1 waits for
        its host reply; the host reply and 2's cancel then come in one
        write. _await_host_reply returns at the host reply and leaves the
        cancel in the reader's buffer; before 2 starts, _serve only polls
        the pipe (empty) and never splits that buffer (_sync.py _serve:
        `if poll_pipe(): read_ahead()`), so 2 runs."""
        w = self.spawn()
        w.request(1, "host")
        hc = self.host_call(w)
        w.send_raw(self.req(w, 2))
        time.sleep(0.3)  # read into the backlog by the host call's wait
        w.send_raw(self.frame(w, {"type": "host_reply", "id": hc["id"], "success": True, "result": 1})
                   + self.cancel(w, 2))
        msgs = self.replies(w, 2)
        self.assertEqual([(m["id"], m["success"]) for m in msgs], [(1, True), (2, False)], msgs)
        self.assertEqual(self.marked(), [1])

    def test_a_request_read_with_the_host_reply_is_dropped_by_a_cancel_written_before_it_starts(self):
        """protocol.md hello `pipeline`: "a request written while another
        runs waits in its stdin, and a cancel frame for a request it has not
        started makes it answer that request Cancelled without running it".
        Request 2 comes in one write with request 1's host reply; 1 then
        goes on for 0.6 s, during which 2's cancel is written. 2 sits in
        the reader's buffer, not the backlog, so _serve takes it with
        read_frame and starts it without polling the pipe."""
        w = self.spawn()
        w.request(1, "host", {"sleep": 0.6})
        hc = self.host_call(w)
        w.send_raw(self.frame(w, {"type": "host_reply", "id": hc["id"], "success": True, "result": 1})
                   + self.req(w, 2))
        time.sleep(0.2)
        w.send_raw(self.cancel(w, 2))
        msgs = self.replies(w, 2)
        self.assertEqual([(m["id"], m["success"]) for m in msgs], [(1, True), (2, False)], msgs)
        self.assertEqual(self.marked(), [1])

    def test_asyncio_a_malformed_request_under_a_running_id_gets_no_second_reply(self):
        """protocol.md section 5 (cancel): a worker "must still send exactly
        one final response for the id"; section 4: a request "whose id is
        already running on this worker: the worker may drop it with a line
        on stderr" (the asyncio loop drops a well-formed one). A duplicate
        whose command is not a string, or whose args are not a map, is
        answered InvalidRequest under the running id instead."""
        path = os.path.join(self.dir.name, "async_worker.py")
        with open(path, "w") as f:
            f.write(ASYNC_SCRIPT)
        w = WorkerProcess(path, "json")
        self.addCleanup(w.stop)
        self.assertEqual(w.recv()["type"], "hello")
        w.request(1, "slow")
        time.sleep(0.1)
        w.send({"id": 1, "command": 5, "args": {}})
        w.send({"id": 1, "command": "slow", "args": [1]})
        w.request(1, "slow")  # dropped, as documented
        msgs = [self.reply(w)]
        time.sleep(0.3)
        while not w.frames.empty():
            msgs.append(w.recv())
        self.assertEqual([(m["id"], m["success"]) for m in msgs], [(1, True)], msgs)

    def test_sigint_during_a_host_call_then_its_late_reply(self):
        """protocol.md hello `sigint`: "SIGINT during a handler cancels it
        (reply Cancelled)"; a host_reply for a call no longer waited for is
        ignored."""
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.spawn(codec)
                w.request(1, "host")
                hc = self.host_call(w)
                time.sleep(0.1)
                w.signal(signal.SIGINT)
                msg = self.reply(w)
                self.assertEqual((msg["id"], msg["error"]["type"]), (1, "Cancelled"), msg)
                w.send({"type": "host_reply", "id": hc["id"], "success": True, "result": 1})
                self.assertTrue(w.call(2, "mark")["success"])
                self.assertEqual(self.marked(), [1, 2])
                self.assert_nothing_more(w)

    def test_stdin_closing_during_a_host_call_answers_once_and_exits_0(self):
        """protocol.md section 6: "The pool closes the worker's stdin: the
        worker finishes what it is doing and exits 0 on EOF"."""
        w = self.spawn()
        w.request(1, "host")
        self.host_call(w)
        w.send_raw(b"\x00\x00\x00\x40{\"type\":\"host_re")  # and the stream ends inside a frame
        w.close_stdin()
        self.assertEqual(w.wait(10), 0, w.stderr)
        msgs = []
        while True:
            m = w.recv()
            if m is None:
                break
            msgs.append(m)
        self.assertEqual([(m["id"], m["success"]) for m in msgs], [(1, False)], msgs)

    # --- SIGINT at each phase ---------------------------------------------------------

    def test_sigint_while_idle_and_mid_frame_is_ignored(self):
        """protocol.md hello `sigint`: "SIGINT between handlers is ignored".
        A request whose frame is half read when the signal comes, and no
        cancel for it, still runs."""
        w = self.spawn()
        for _ in range(5):
            self.sigint_idle(w)
        data = self.req(w, 1)
        w.send_raw(data[:7])
        time.sleep(0.1)
        self.sigint_idle(w)
        w.send_raw(data[7:])
        msg = self.reply(w)
        self.assertEqual((msg["id"], msg["success"]), (1, True), msg)
        self.assertEqual(self.marked(), [1])
        self.assert_nothing_more(w)

    def test_sigint_during_a_stream_ends_it_with_one_reply_and_no_chunk_after(self):
        """protocol.md section 5, chunk: "A chunk sent after the request's
        final response is a protocol violation"; hello `sigint`."""
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.spawn(codec)
                w.request(1, "stream", {"n": 1000}, stream=True)
                for _ in range(5):
                    self.assertEqual(self.reply(w).get("type"), "chunk")
                w.signal(signal.SIGINT)
                while True:
                    m = self.reply(w)
                    if m.get("type") != "chunk":
                        break
                self.assertEqual((m["id"], m["error"]["type"]), (1, "Cancelled"), m)
                self.assert_nothing_more(w)

    def test_a_storm_of_sigints_across_many_calls_keeps_one_reply_each(self):
        """Every request gets exactly one final response, whatever SIGINTs
        land (Cancelled or success), and the worker serves on. protocol.md
        hello `sigint`: "SIGINT between handlers is ignored", and only a
        cancel frame found in stdin answers a request unrun (`pipeline`)."""
        w = self.spawn()
        blob = b"".join(self.req(w, rid, "mark", {"sleep": 0.005}) for rid in range(1, 101))
        w.send_raw(blob)
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline and len(self.marked()) < 100:
            w.signal(signal.SIGINT)
            time.sleep(0.003)
        msgs = self.replies(w, 100)
        self.assertEqual([m["id"] for m in msgs], list(range(1, 101)))
        ran = self.marked()
        for m in msgs:
            if m["success"]:
                self.assertIn(m["id"], ran, m)
            else:
                # No cancel frame was sent: a SIGINT between calls is
                # ignored, so a Cancelled call is one whose handler had
                # started (a SIGINT may land before its first line).
                self.assertEqual(m["error"]["type"], "Cancelled", m)
                self.assertNotIn("before it started", m["error"]["message"], m)
        # No handler ran twice, none out of order.
        self.assertEqual(ran, sorted(set(ran)))
        self.assert_nothing_more(w)

    # --- end of input, signals -------------------------------------------------------

    def test_stdin_ending_inside_a_frame_while_a_call_runs(self):
        """protocol.md section 4: "The stream ends inside a frame ...: the
        worker treats it as the end of stdin ... and exits 0; it sends
        nothing" (the running call still replies: section 6)."""
        for cut in (2, 9):
            with self.subTest(cut=cut):
                w = self.spawn()
                self.start_slow(w, 1, 0.4)
                w.send_raw(self.req(w, 2) + self.req(w, 3)[:cut])
                w.close_stdin()
                self.assertEqual(w.wait(10), 0, w.stderr)
                ids = []
                while True:
                    m = w.recv()
                    if m is None:
                        break
                    ids.append((m["id"], m["success"]))
                self.assertEqual(ids, [(1, True), (2, True)])
                self.assertEqual(self.marked(), [1, 2])

    def test_sigterm_at_each_phase_exits_0(self):
        """bridges.md: "worker.run() returns 0 when stdin reaches EOF;
        SIGTERM exits with 0"."""
        for phase in ("idle", "handler", "host call", "mid-frame"):
            with self.subTest(phase=phase):
                w = self.spawn()
                if phase == "handler":
                    self.start_slow(w, 1, 5)
                elif phase == "host call":
                    w.request(1, "host")
                    self.host_call(w)
                elif phase == "mid-frame":
                    w.send_raw(self.req(w, 1)[:6])
                    time.sleep(0.1)
                w.signal(signal.SIGTERM)
                self.assertEqual(w.wait(10), 0, w.stderr)

    # --- hostile payloads ----------------------------------------------------------

    def test_bad_frames_are_answered_with_id_0_and_the_worker_serves_on(self):
        """protocol.md section 4: a length of 0, invalid UTF-8, a payload
        that does not decode or is not a map: "Reply a failed response with
        id 0 and error type ProtocolError" and keep serving; a request with
        a bad id is InvalidRequest under id 0."""
        w = self.spawn()
        deep = b'{"id":1,"command":"echo","args":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        bad = [
            b"",
            b'{"id":1,"command":"echo","args":{"s":"\xff\xfe"}}',
            b"[1,2]",
            b'{"id":1,"command":"echo","args":{}',
            deep,
        ]
        blob = b"".join(struct.pack(">I", len(p)) + p for p in bad)
        w.send_raw(blob)
        for p in bad:
            m = self.reply(w)
            self.assertEqual((m["id"], m["success"], m["error"]["type"]), (0, False, "ProtocolError"), (p[:40], m))
        w.send_raw(self.req(w, 0, "echo"))
        m = self.reply(w)
        self.assertEqual((m["id"], m["error"]["type"]), (0, "InvalidRequest"), m)
        self.assert_nothing_more(w)

    def test_edge_ids_are_answered_under_themselves(self):
        """protocol.md section 3: "Integers go through whole from -2^63 to
        2^64 - 1"; section 4: id is an "integer > 0", echoed in the reply."""
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.spawn(codec)
                for rid in (1, 2**53, 2**53 + 1, 2**63, 2**64 - 1):
                    m = w.call(rid, "echo", {"x": rid})
                    self.assertEqual((m["id"], m["success"], m["result"]["echoed"]["x"]), (rid, True, rid), m)
                self.assert_nothing_more(w)


if __name__ == "__main__":
    unittest.main()
