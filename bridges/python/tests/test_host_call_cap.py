"""The cap on host calls waiting for their replies (MAX_HOST_CALLS_IN_FLIGHT,
256, the pool's own limit): a worker never has more than 256 host calls
written and not answered; the others wait in the bridge, in order, and are
sent as replies come. A held host call whose call is cancelled, or ends,
fails and is never sent. A host call whose caller stopped waiting (its call
was cancelled) keeps its place until its reply is read.

Before the fix, a handler making 300 host calls at once wrote all 300: the
pool takes the 257th for a protocol error and replaces the worker."""

import os
import queue
import time
import unittest

from tests._helpers import CODECS, TESTS_DIR, WorkerProcess, _wire

WORKER = os.path.join(TESTS_DIR, "host_cap_worker.py")
CAP = 256
# How long the fake pool waits for a host call that must not come, once
# 256 are unanswered: those the bridge would write at once are in the pipe
# by then, so a longer wait would show nothing more.
QUIET = 1.0


class _FakePool:
    """Answers a worker's host calls as the pool counts them: a host call
    is unanswered from when its frame is read until its reply is written."""

    def __init__(self, test, w):
        self.test = test
        self.w = w
        self.unanswered = {}  # host call id -> frame, in the order read
        self.most = 0
        self.seen = 0
        self.replies = {}

    def _take(self, msg):
        """Notes one frame from the worker."""
        if msg is None:
            raise AssertionError("worker closed stdout; stderr:\n" + self.w.stderr)
        if msg.get("type") == "host_call":
            self.test.assertNotIn(msg["id"], self.unanswered, "a host call id sent twice")
            self.unanswered[msg["id"]] = msg
            self.seen += 1
            self.most = max(self.most, len(self.unanswered))
            self.test.assertLessEqual(
                len(self.unanswered), CAP,
                f"{len(self.unanswered)} host calls written without a reply; stderr:\n" + self.w.stderr)
        elif msg.get("type") in (None, "response"):
            self.replies[msg["id"]] = msg
        else:
            raise AssertionError(f"unexpected frame {msg!r}")

    def next_frame(self, timeout=60.0):
        """The worker's next frame; a failure when none comes within
        ``timeout`` (generous: a loaded machine may take seconds)."""
        try:
            msg = self.w.recv(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no frame from the worker within {timeout} s; stderr:\n" + self.w.stderr) from None
        self._take(msg)
        return msg

    def until_unanswered(self, count):
        """Reads frames until ``count`` host calls are unanswered."""
        while len(self.unanswered) < count:
            self.next_frame()

    def assert_quiet(self, what):
        """No frame comes within QUIET seconds."""
        try:
            msg = self.w.recv(timeout=QUIET)
        except queue.Empty:
            return
        self._take(msg)
        raise AssertionError(f"{what}: got {msg!r}")

    def answer(self, hid):
        call = self.unanswered.pop(hid)
        self.w.send({"type": "host_reply", "id": hid, "success": True, "result": call["args"]})

    def answer_oldest(self):
        self.answer(next(iter(self.unanswered)))

    def serve_all(self, total, rids):
        """With 256 host calls unanswered, checks that no more come; then
        answers one at a time, reading the host call each answer lets out,
        until all ``total`` were sent; then answers the rest and returns
        the replies to requests ``rids``."""
        self.until_unanswered(CAP)
        self.assert_quiet("a host call beyond the 256 unanswered")
        while self.seen < total:
            self.answer_oldest()
            self.next_frame()
        while self.unanswered:
            self.answer_oldest()
        while not all(rid in self.replies for rid in rids):
            self.next_frame()
        self.test.assertEqual(self.most, CAP)
        return [self.replies[rid] for rid in rids]


class _Cases:
    MODE = "sync"

    def start(self, codec):
        w = WorkerProcess(WORKER, codec=codec, env={"HOST_CAP_MODE": self.MODE})
        self.addCleanup(w.stop)
        hello = w.recv(timeout=60.0)
        self.assertEqual(hello["type"], "hello", w.stderr)
        return w, _FakePool(self, w)

    def check_results(self, w, reply, n, tag=None):
        self.assertTrue(reply["success"], (reply, w.stderr))
        self.assertEqual(reply["result"], [{"tag": tag, "i": i} for i in range(n)], w.stderr)

    def test_300_host_calls_from_threads_are_all_answered_256_at_most_unanswered(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                w.request(1, "threads", {"n": 300})
                (reply,) = pool.serve_all(300, [1])
                self.check_results(w, reply, 300)
                # The worker serves on: the places were all given back.
                w.request(2, "threads", {"n": 3, "tag": "after"})
                pool.until_unanswered(3)
                while pool.unanswered:
                    pool.answer_oldest()
                while 2 not in pool.replies:
                    pool.next_frame()
                self.check_results(w, pool.replies[2], 3, "after")
                self.assertNotIn("Traceback", w.stderr)

    def test_a_held_host_call_whose_call_is_cancelled_is_never_sent(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                w.request(1, "threads", {"n": 300})
                pool.until_unanswered(CAP)
                pool.assert_quiet("a host call beyond the 256 unanswered")
                w.send({"type": "cancel", "id": 1})
                if self.MODE == "sync":
                    # As the pool does for a worker that takes SIGINT.
                    time.sleep(0.2)
                    w.signal(2)
                while 1 not in pool.replies:
                    pool.next_frame()
                reply = pool.replies[1]
                self.assertFalse(reply["success"], (reply, w.stderr))
                self.assertEqual(reply["error"]["type"], "Cancelled", w.stderr)
                # The 44 held host calls were never sent; the 256 sent keep
                # their places until answered: a host call of the next
                # request waits for one of their replies.
                pool.assert_quiet("a held host call of a cancelled call")
                self.assertEqual(pool.seen, CAP)
                w.request(2, "threads", {"n": 1, "tag": "next"})
                pool.assert_quiet("a host call beyond 256 unanswered (late replies pending)")
                pool.answer_oldest()
                msg = pool.next_frame()
                self.assertEqual(msg.get("type"), "host_call", msg)
                self.assertEqual(msg["request_id"], 2, msg)
                while pool.unanswered:
                    pool.answer_oldest()
                while 2 not in pool.replies:
                    pool.next_frame()
                self.check_results(w, pool.replies[2], 1, "next")
                self.assertEqual(pool.seen, CAP + 1)
                self.assertNotIn("Traceback", w.stderr)

    def test_late_replies_written_with_the_next_request_free_their_places(self):
        # The 256 host calls of a cancelled call are answered only after
        # the next request, in the same write: the worker may read them
        # together with it, before its handler runs. Their places must be
        # freed all the same, or the next request's host call waits for
        # good.
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                w.request(1, "threads", {"n": 300})
                pool.until_unanswered(CAP)
                w.send({"type": "cancel", "id": 1})
                if self.MODE == "sync":
                    time.sleep(0.2)
                    w.signal(2)
                while 1 not in pool.replies:
                    pool.next_frame()
                self.assertEqual(pool.replies[1]["error"]["type"], "Cancelled", w.stderr)
                request = {"id": 2, "command": "threads", "args": {"n": 1, "tag": "next"},
                           "timestamp": "2026-12-05T00:00:00Z"}
                frames = [_wire.encode_frame(w.codec, request)]
                for hid in list(pool.unanswered):
                    call = pool.unanswered.pop(hid)
                    frames.append(_wire.encode_frame(w.codec, {
                        "type": "host_reply", "id": hid, "success": True, "result": call["args"]}))
                w.send_raw(b"".join(frames))
                msg = pool.next_frame()
                self.assertEqual((msg.get("type"), msg.get("request_id")), ("host_call", 2), msg)
                pool.answer_oldest()
                while 2 not in pool.replies:
                    pool.next_frame()
                self.check_results(w, pool.replies[2], 1, "next")
                self.assertEqual(pool.seen, CAP + 1)
                self.assertNotIn("Traceback", w.stderr)


class SyncModeTests(_Cases, unittest.TestCase):
    MODE = "sync"


class ConcurrentModeTests(_Cases, unittest.TestCase):
    MODE = "concurrent"

    def test_300_host_calls_of_asyncio_gather_are_all_answered(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                w.request(1, "gather", {"n": 300})
                (reply,) = pool.serve_all(300, [1])
                self.check_results(w, reply, 300)
                self.assertNotIn("Traceback", w.stderr)

    def test_16_calls_of_20_host_calls_share_one_cap_with_threads(self):
        # 15 async calls and one plain one on threads: 320 host calls from
        # the event loop and from threads, under one cap.
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                for rid in range(1, 16):
                    w.request(rid, "gather", {"n": 20, "tag": rid})
                w.request(16, "threads", {"n": 20, "tag": 16})
                replies = pool.serve_all(320, list(range(1, 17)))
                for rid, reply in zip(range(1, 17), replies):
                    self.check_results(w, reply, 20, rid)
                self.assertNotIn("Traceback", w.stderr)

    def test_a_held_host_call_of_a_cancelled_async_call_is_never_sent(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w, pool = self.start(codec)
                w.request(1, "gather", {"n": 300})
                pool.until_unanswered(CAP)
                pool.assert_quiet("a host call beyond the 256 unanswered")
                w.send({"type": "cancel", "id": 1})
                while 1 not in pool.replies:
                    pool.next_frame()
                self.assertEqual(pool.replies[1]["error"]["type"], "Cancelled", w.stderr)
                pool.assert_quiet("a held host call of a cancelled call")
                w.request(2, "gather", {"n": 1, "tag": "next"})
                pool.assert_quiet("a host call beyond 256 unanswered (late replies pending)")
                pool.answer_oldest()
                msg = pool.next_frame()
                self.assertEqual((msg.get("type"), msg.get("request_id")), ("host_call", 2), msg)
                while pool.unanswered:
                    pool.answer_oldest()
                while 2 not in pool.replies:
                    pool.next_frame()
                self.check_results(w, pool.replies[2], 1, "next")
                self.assertEqual(pool.seen, CAP + 1)
                self.assertNotIn("Traceback", w.stderr)


if __name__ == "__main__":
    unittest.main()
