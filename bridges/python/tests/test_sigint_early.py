"""A SIGINT that lands before its request's handler starts (sync loop).

The pool gives up a call by sending its cancel frame, then SIGINT. When
the SIGINT comes while no handler runs (the request is still being read or
decoded), the sync loop notes it; before the next handler starts it reads
what stdin holds without waiting, and if the cancel frame of THAT request is
there, answers it Cancelled "before it started" and never runs it. A SIGINT
between calls with nothing (or a cancel for another id) in stdin changes
nothing.

To land the signal before the handler deterministically, the worker is
stopped (SIGSTOP) while it waits for input; the request frame (exactly
64 KiB, the size of the bridge's reads) and its cancel frame are written
into a pipe made large enough to hold both, SIGINT is sent, then SIGCONT.
On SIGCONT the kernel delivers the pending SIGINT before the worker runs any
code of its own (it has one thread), so the flag is set before the request
is even read; and its first read takes the request frame alone, leaving the
cancel frame in the pipe: the read-ahead drop (a cancel read together with
its request) cannot be what answers it. The control test sends the same
bytes without SIGINT: the handler runs and the cancel is dropped as too
late, so the signal is what makes the difference.
"""

import fcntl
import os
import signal
import tempfile
import textwrap
import time
import unittest

from ._helpers import CODECS, WorkerProcess, wait_until
from snakepit_bridge import _wire

READ_SIZE = 65536  # what the bridge's reads ask for (_wire.FrameReader, _sync._peeker)

WORKER_SCRIPT = textwrap.dedent('''\
    """A worker for test_sigint_early: every `mark` records its request id
    (in memory and in the file $MARK_FILE); `ran` returns the ids."""
    import os

    import snakepit_bridge
    from snakepit_bridge import generic

    worker = snakepit_bridge.Worker()
    generic.register(worker)
    ran = []


    @worker.command("mark")
    def mark(args, ctx):
        ran.append(ctx.request_id)
        with open(os.environ["MARK_FILE"], "a") as f:
            f.write(f"{ctx.request_id}\\n")
        return {"id": ctx.request_id, "pad": len(args.get("pad", ""))}


    @worker.command("ran")
    def ran_ids(args):
        return ran


    if __name__ == "__main__":
        worker.run()
''')

BEFORE_START = "request {} was cancelled before it started"


def proc_state(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def sigint_pending(pid):
    """SIGINT pending for the process (shared) or its thread."""
    bit = 1 << (signal.SIGINT - 1)
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("SigPnd:", "ShdPnd:")) and int(line.split()[1], 16) & bit:
                return True
    return False


class SigintBeforeStartTests(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory(prefix="snakepit-sigint-early-")
        self.addCleanup(self.dir.cleanup)
        self.script = os.path.join(self.dir.name, "worker.py")
        with open(self.script, "w") as f:
            f.write(WORKER_SCRIPT)
        self.spawned = 0

    # --- helpers -----------------------------------------------------------------

    def spawn(self, codec):
        # Each worker marks a file of its own.
        self.spawned += 1
        self.marks = os.path.join(self.dir.name, f"marks-{self.spawned}")
        w = WorkerProcess(self.script, codec, env={"MARK_FILE": self.marks})
        self.addCleanup(w.stop)
        # Runs before w.stop (cleanups run last in, first out).
        self.addCleanup(self._cont, w)
        self.assertEqual(w.recv()["type"], "hello")
        # Room for a 64 KiB frame and what follows it while the worker is
        # stopped (the default pipe holds 64 KiB).
        try:
            fcntl.fcntl(w.proc.stdin.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
        except (AttributeError, OSError) as exc:
            self.skipTest(f"cannot enlarge the pipe: {exc}")
        return w

    @staticmethod
    def _cont(w):
        if w.proc.poll() is None:
            try:
                os.kill(w.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def frame(self, w, value):
        return _wire.encode_frame(w.codec, value)

    def request_frame(self, w, rid, command, args=None):
        return self.frame(w, {"id": rid, "command": command, "args": args or {}})

    def padded_request(self, w, rid):
        """A `mark` request frame of exactly READ_SIZE bytes, header included."""
        pad = 0
        for _ in range(10):
            data = self.request_frame(w, rid, "mark", {"pad": "x" * pad})
            if len(data) == READ_SIZE:
                return data
            pad += READ_SIZE - len(data)
        self.fail(f"could not size a request frame to {READ_SIZE} bytes")

    def cancel_frame(self, w, rid):
        return self.frame(w, {"type": "cancel", "id": rid})

    def stop_worker(self, w):
        os.kill(w.proc.pid, signal.SIGSTOP)
        self.assertTrue(wait_until(lambda: proc_state(w.proc.pid) == "T", timeout=10),
                        "the worker did not stop")

    def cont_worker(self, w):
        os.kill(w.proc.pid, signal.SIGCONT)

    def write_while_stopped(self, w, *frames, sigint=False):
        """`frames` written to `w` while it is stopped, then (with `sigint`)
        SIGINT, held until the SIGCONT that follows."""
        self.stop_worker(w)
        for frame in frames:
            w.send_raw(frame)
        if sigint:
            w.signal(signal.SIGINT)
            self.assertTrue(sigint_pending(w.proc.pid), "SIGINT is held until SIGCONT")
        self.cont_worker(w)

    def sigint_while_idle(self, w):
        """SIGINT to a worker waiting for input, and time for it to land."""
        w.signal(signal.SIGINT)
        self.assertTrue(wait_until(lambda: not sigint_pending(w.proc.pid), timeout=10),
                        "SIGINT still pending")
        time.sleep(0.3)  # the handler runs once the worker is scheduled
        self.assertIsNone(w.proc.poll(), w.stderr)

    def marked(self):
        try:
            with open(self.marks) as f:
                return [int(line) for line in f.read().split()]
        except FileNotFoundError:
            return []

    def recv_reply(self, w):
        msg = w.recv(timeout=10)
        self.assertIsNotNone(msg, "worker closed stdout; stderr:\n" + w.stderr)
        self.assertIn("id", msg, msg)
        return msg

    def assert_replied_ok(self, w, ids):
        """The next replies are successes to `ids`, in that order."""
        replies = [self.recv_reply(w) for _ in ids]
        self.assertEqual([(m["id"], m["success"]) for m in replies], [(i, True) for i in ids], replies)

    def assert_cancelled_before_start(self, reply, rid):
        self.assertEqual(reply["id"], rid, reply)
        self.assertFalse(reply["success"], reply)
        self.assertEqual(reply["error"]["type"], "Cancelled", reply)
        self.assertEqual(reply["error"]["message"], BEFORE_START.format(rid), reply)

    def assert_ran(self, w, rid, expected):
        reply = w.call(rid, "ran")
        self.assertTrue(reply["success"], reply)
        self.assertEqual(reply["result"], expected)
        self.assertEqual(self.marked(), expected)

    def assert_no_traceback(self, w):
        self.assertNotIn("Traceback", w.stderr)

    # --- 1. the cancel frame is in stdin when the handler would start -------------

    def test_a_request_signalled_before_its_handler_starts_with_its_cancel_in_stdin_never_runs(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.spawn(codec)
                self.assertEqual(w.call(1, "mark")["result"]["id"], 1)
                # The pool's order: the cancel frame, then SIGINT. Nothing is
                # read yet: the worker is stopped.
                self.write_while_stopped(w, self.padded_request(w, 2), self.cancel_frame(w, 2), sigint=True)
                self.assert_cancelled_before_start(self.recv_reply(w), 2)
                self.assert_ran(w, 3, [1])  # 2 never ran
                # The worker goes on: the next call runs.
                self.assertEqual(w.call(4, "mark")["result"], {"id": 4, "pad": 0})
                self.assert_ran(w, 5, [1, 4])
                # Counted as a request dropped while read ahead is: not at
                # all (1, 3, 4, 5 and this ping).
                self.assertEqual(w.call(6, "ping")["result"]["requests_handled"], 5)
                self.assert_no_traceback(w)

    def test_a_sigint_while_idle_then_a_request_and_its_cancel_never_runs_it(self):
        # The flag set by a SIGINT between calls lasts until the next
        # request starts: a request arriving later with its cancel behind it
        # (not read with it) is still answered Cancelled.
        w = self.spawn("json")
        w.call(1, "mark")
        self.sigint_while_idle(w)
        self.write_while_stopped(w, self.padded_request(w, 2), self.cancel_frame(w, 2))
        self.assert_cancelled_before_start(self.recv_reply(w), 2)
        self.assert_ran(w, 3, [1])
        self.assert_no_traceback(w)

    def test_control_the_same_frames_without_sigint_run_the_request(self):
        # The same bytes, written the same way, but no SIGINT: the request
        # is read alone and runs; its cancel, read after it, is too late
        # and dropped. So in the tests above the signal is what cancels it.
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.spawn(codec)
                w.call(1, "mark")
                self.write_while_stopped(w, self.padded_request(w, 2), self.cancel_frame(w, 2))
                reply = self.recv_reply(w)
                self.assertEqual(reply["id"], 2, reply)
                self.assertTrue(reply["success"], reply)
                self.assertEqual(reply["result"]["id"], 2, reply)
                self.assertGreater(reply["result"]["pad"], READ_SIZE - 100)
                self.assert_ran(w, 3, [1, 2])
                # No stray reply for the dropped cancel.
                self.assertEqual(w.call(4, "mark")["id"], 4)
                self.assert_no_traceback(w)

    # --- 2. a SIGINT between calls and no cancel frame ---------------------------

    def test_a_sigint_between_calls_without_a_cancel_frame_cancels_nothing(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.spawn(codec)
                self.assertTrue(w.call(1, "mark")["success"])
                self.sigint_while_idle(w)
                reply = w.call(2, "mark")
                self.assertTrue(reply["success"], reply)
                self.assertEqual(reply["result"], {"id": 2, "pad": 0})
                # The flag was spent on request 2: 3 runs too.
                self.assertTrue(w.call(3, "mark")["success"])
                self.assert_ran(w, 4, [1, 2, 3])
                self.assert_no_traceback(w)

    def test_a_sigint_with_the_next_request_unread_and_no_cancel_frame_runs_it(self):
        # The signal lands before the request is read (as in test 1) and
        # more calls are written behind it, but no cancel frame: the look
        # into stdin finds none, the request runs, and the calls read in
        # that look run after it, in order.
        w = self.spawn("json")
        w.call(1, "mark")
        self.write_while_stopped(
            w,
            self.padded_request(w, 2),
            self.request_frame(w, 3, "mark") + self.request_frame(w, 4, "mark"),
            sigint=True,
        )
        self.assert_replied_ok(w, [2, 3, 4])
        self.assert_ran(w, 5, [1, 2, 3, 4])
        self.assert_no_traceback(w)

    # --- 3. a SIGINT between calls and a cancel for another (finished) id --------

    def test_a_sigint_then_a_cancel_for_a_finished_call_then_a_request_runs_it(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.spawn(codec)
                self.assertTrue(w.call(1, "mark")["success"])
                self.sigint_while_idle(w)
                # Read while idle: dispatched, too late, dropped.
                w.send_raw(self.cancel_frame(w, 1))
                time.sleep(0.2)
                reply = w.call(2, "mark")
                self.assertTrue(reply["success"], reply)
                self.assert_ran(w, 3, [1, 2])
                self.assert_no_traceback(w)

    def test_a_sigint_then_a_request_with_a_cancel_for_another_id_in_stdin_runs_it(self):
        # The cancel for finished request 1 is in stdin when request 2's
        # handler would start, so the look after the SIGINT reads it (and
        # request 3 behind it): not 2's, so 2 runs; 3 runs after it.
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.spawn(codec)
                self.assertTrue(w.call(1, "mark")["success"])
                self.write_while_stopped(
                    w,
                    self.padded_request(w, 2),
                    self.cancel_frame(w, 1),
                    self.request_frame(w, 3, "mark"),
                    sigint=True,
                )
                self.assert_replied_ok(w, [2, 3])
                self.assert_ran(w, 4, [1, 2, 3])
                self.assert_no_traceback(w)


if __name__ == "__main__":
    unittest.main()
