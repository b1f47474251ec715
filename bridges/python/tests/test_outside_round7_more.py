"""Round 7 of the outside review of the Python bridge, follow-ups from the
Ruby and Node bridges.

1. A process a handler forks without exec (``os.fork()`` in a handler,
   then the child returns, sends a chunk or calls the host) must never
   speak on its parent's frames: its reply would answer the call in place
   of the parent's, and as it went on serving it read frames meant for the
   worker. It leaves with status 1 and one line on stderr instead.
2. host_reply frames that match no waiting host call are counted: a line
   for the first, then one at the 10th, 100th, 1000th..., ids shown
   briefly, so a host that sends them without end cannot flood the log.

The worker is the script below, written to a temporary directory: the
default mode (plain functions) or, with R7M_MODE=async, asyncio mode (the
same commands as coroutines, and ``plain_*`` ones as plain functions on
the pool's threads).
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import unittest

from tests._helpers import CODECS, WorkerProcess

# Liveness only: generous, for a loaded machine.
LONG = 30.0

WORKER_SCRIPT = r'''
import asyncio
import os
import sys
import time

import snakepit_bridge

ASYNC = os.environ.get("R7M_MODE") == "async"
worker = snakepit_bridge.Worker(max_concurrency=4 if ASYNC else None)


def child_part(how, ctx):
    """What the forked child does (and then returns from the handler)."""
    if how == "emit":
        ctx.emit({"from": "child"})
    elif how == "call_host":
        ctx.call_host("from_child", {})
    elif how == "raise":
        raise RuntimeError("from the child")
    return "child"


def fork_sync(args, ctx):
    pid = os.fork()
    if pid == 0:
        return child_part(args["how"], ctx)
    return {"parent": os.getpid(), "child": pid}


async def fork_async(args, ctx):
    pid = os.fork()
    if pid == 0:
        how = args["how"]
        if how == "emit":
            ctx.emit({"from": "child"})
        elif how == "call_host":
            await ctx.acall_host("from_child", {})
        elif how == "raise":
            raise RuntimeError("from the child")
        elif how == "sleep":
            # The child's copy of the event loop runs on: it must not
            # read the frames the test sends meanwhile.
            await asyncio.sleep(float(args.get("sleep", 1.0)))
        return "child"
    return {"parent": os.getpid(), "child": pid}


if ASYNC:
    worker.register("fork", fork_async)
    worker.register("plain_fork", fork_sync)
else:
    worker.register("fork", fork_sync)


def reap(args):
    """The exit status of the child ``pid`` once it has exited (None if it
    has not within the deadline)."""
    deadline = time.monotonic() + float(args.get("within", 30))
    while time.monotonic() < deadline:
        pid, status = os.waitpid(args["pid"], os.WNOHANG)
        if pid:
            return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
        time.sleep(0.01)
    return None


worker.register("reap", reap)


def echo(args):
    return args


worker.register("echo", echo)


if ASYNC:
    async def ask(args, ctx):
        return await ctx.acall_host("ask", args)
else:
    def ask(args, ctx):
        return ctx.call_host("ask", args)


worker.register("ask", ask)

if __name__ == "__main__":
    worker.run()
'''

_FORKED_LINE = re.compile(
    r"process (\d+), forked by a handler of worker (\d+), reached the pool's frames; "
    r"it exits with status 1 and writes nothing")


def _kill_quietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


class _Base(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="snakepit-r7m-")
        cls.script = os.path.join(cls.dir, "r7m_worker.py")
        with open(cls.script, "w") as f:
            f.write(WORKER_SCRIPT)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def start(self, codec="json", mode="sync"):
        w = WorkerProcess(self.script, codec=codec, env={"R7M_MODE": mode})
        self.addCleanup(w.stop)
        hello = w.recv(LONG)
        self.assertEqual(hello.get("type"), "hello", w.stderr)
        return w

    def frames_until(self, w, pred, what):
        """Frames read until one that ``pred`` accepts (included)."""
        got = []
        while True:
            try:
                msg = w.recv(LONG)
            except Exception:
                self.fail(f"no {what} within {LONG} s; frames {got}; stderr:\n{w.stderr}")
            self.assertIsNotNone(msg, f"stdout closed before {what}; frames {got}; stderr:\n{w.stderr}")
            got.append(msg)
            if pred(msg):
                return got

    def finish(self, w):
        """Closes stdin; the worker exits 0. Returns the frames it wrote
        after those already read."""
        w.close_stdin()
        try:
            code = w.wait(LONG)
        except subprocess.TimeoutExpired:
            self.fail("the worker did not exit at the end of its input; stderr:\n" + w.stderr)
        self.assertEqual(code, 0, w.stderr)
        rest = []
        while True:
            msg = w.recv(LONG)
            if msg is None:
                return rest
            rest.append(msg)


class ForkedChildTest(_Base):
    """README, Forking in a handler."""

    def check_fork(self, codec, mode, command, how, args=None):
        w = self.start(codec, mode)
        w.request(1, command, dict(args or {}, how=how))
        frames = self.frames_until(w, lambda m: m.get("id") == 1 and m.get("type") in (None, "response"),
                                   "the reply to call 1")
        reply = frames[-1]
        self.assertTrue(reply.get("success"), (codec, mode, how, frames, w.stderr))
        # The parent's reply, not the child's "child".
        self.assertIsInstance(reply["result"], dict, (codec, mode, how, frames, w.stderr))
        child = reply["result"]["child"]
        parent = reply["result"]["parent"]
        # Nothing of the child's came out: no chunk, no host call.
        self.assertEqual(frames[:-1], [], (codec, mode, how, w.stderr))
        # The child leaves with 1 and never reads: each of these frames
        # reaches the worker, and only the worker answers them.
        status = w.call(2, "reap", {"pid": child}, timeout=LONG + 30)
        if status.get("result") is None:
            self.addCleanup(_kill_quietly, child)  # still there: it would read stdin for good
        self.assertEqual(status.get("result"), 1, (codec, mode, how, status, w.stderr))
        for rid in range(3, 8):
            echoed = w.call(rid, "echo", {"n": rid}, timeout=LONG)
            self.assertEqual(echoed.get("result"), {"n": rid}, (codec, mode, how, echoed, w.stderr))
        self.assertEqual(self.finish(w), [], (codec, mode, how))
        lines = _FORKED_LINE.findall(w.stderr)
        self.assertEqual(lines, [(str(child), str(parent))], (codec, mode, how, w.stderr))
        self.assertNotIn("Traceback", w.stderr)

    def test_a_child_forked_in_a_plain_handler_never_writes_or_reads_the_frames(self):
        for codec in CODECS:
            for how in ("return", "emit", "call_host", "raise"):
                with self.subTest(codec=codec, how=how):
                    self.check_fork(codec, "sync", "fork", how)

    def test_a_child_forked_in_a_coroutine_never_writes_or_reads_the_frames(self):
        for codec in CODECS:
            for how in ("return", "emit", "call_host", "raise"):
                with self.subTest(codec=codec, how=how):
                    self.check_fork(codec, "async", "fork", how)

    def test_a_child_forked_in_a_plain_handler_in_asyncio_mode_never_writes_or_reads_the_frames(self):
        for codec in CODECS:
            for how in ("return", "emit", "call_host", "raise"):
                with self.subTest(codec=codec, how=how):
                    self.check_fork(codec, "async", "plain_fork", how)

    def test_a_forked_coroutine_whose_loop_runs_on_reads_none_of_the_frames(self):
        # The child's copy of the event loop runs while the coroutine
        # sleeps, and the frames the test sends meanwhile are readable:
        # they are the worker's alone.
        for codec in CODECS:
            with self.subTest(codec=codec):
                w = self.start(codec, "async")
                w.request(1, "fork", {"how": "sleep", "sleep": 2.0})
                got = []
                for rid in range(2, 6):
                    w.request(rid, "echo", {"n": rid})
                rids = {1, 2, 3, 4, 5}
                while rids:
                    msg = w.recv(LONG)
                    self.assertIsNotNone(msg, w.stderr)
                    got.append(msg)
                    self.assertIn(msg.get("id"), rids, (got, w.stderr))
                    rids.discard(msg["id"])
                reply = next(m for m in got if m["id"] == 1)
                self.assertIsInstance(reply.get("result"), dict, (got, w.stderr))
                status = w.call(6, "reap", {"pid": reply["result"]["child"]}, timeout=LONG + 30)
                if status.get("result") is None:
                    self.addCleanup(_kill_quietly, reply["result"]["child"])
                self.assertEqual(status.get("result"), 1, (status, w.stderr))
                self.assertEqual(self.finish(w), [])
                self.assertEqual(len(_FORKED_LINE.findall(w.stderr)), 1, w.stderr)


def _dropped_lines(stderr):
    return [line for line in stderr.splitlines() if re.search(r"\bhost_repl(y|ies)\b", line)]


def _reply(rid, result=None):
    return {"type": "host_reply", "id": rid, "success": True, "result": result}


BIG = "s" * 1_000_000


class UnawaitedHostReplyTest(_Base):
    """README, Concurrency: host_reply frames that match no waiting host
    call are dropped, and logged with a count."""

    def strays(self, w, codec, first):
        """1000 host_replies for no host call: ids from ``first`` on, ids
        of other types, one with no id, and the 1000th with an id of a
        megabyte."""
        others = ["x", [1, 2], 1.5, None, True]
        if codec == "msgpack":
            others.append(b"\x01\x02\x03")
        ids = list(range(first, first + 1000 - len(others) - 2)) + others
        for rid in ids:
            w.send(_reply(rid))
        w.send({"type": "host_reply", "success": True, "result": None})  # no id at all
        w.send(_reply(BIG))

    def assert_counted(self, stderr, first_shown):
        lines = _dropped_lines(stderr)
        self.assertEqual(len(lines), 4, "one line at the 1st, 10th, 100th and 1000th, not one each:\n"
                         + "\n".join(line[:300] for line in lines[:12]))
        self.assertIn(f"host_reply {first_shown} matches no waiting host call; dropped (the next such replies"
                      " are counted, and logged at the 10th, 100th, 1000th, ...)", lines[0])
        for line, count in zip(lines[1:], ("10", "100", "1000")):
            self.assertIn(f"] {count} host_replies matching no waiting host call dropped so far (the last: ", line)
        # The 1000th was the megabyte id: quoted briefly, with its length.
        self.assertTrue(lines[3].endswith("(the last: '" + "s" * 200 + "'... (1000000 characters))"), lines[3][-300:])
        for line in lines:
            self.assertLess(len(line), 1000, line[:300])

    def test_a_thousand_strays_between_calls_give_four_short_lines(self):
        for mode in ("sync", "async"):
            for codec in CODECS:
                with self.subTest(mode=mode, codec=codec):
                    w = self.start(codec, mode)
                    self.strays(w, codec, 1)
                    self.assertEqual(w.call(1, "echo", {"n": 1}, timeout=LONG).get("result"), {"n": 1})
                    # A host call made after the stray with its id was
                    # dropped gets its own answer.
                    w.request(2, "ask", {"n": 2})
                    call = w.recv(LONG)
                    self.assertEqual(call.get("type"), "host_call", (call, w.stderr))
                    w.send(_reply(call["id"], {"echoed": call["args"]}))
                    reply = w.recv(LONG)
                    self.assertEqual((reply.get("id"), reply.get("result")), (2, {"echoed": {"n": 2}}), w.stderr)
                    self.assertEqual(self.finish(w), [])
                    self.assert_counted(w.stderr, "1")

    def test_a_thousand_strays_while_a_host_call_waits_give_four_short_lines(self):
        # In the default mode they are read by the host call's wait.
        for mode in ("sync", "async"):
            for codec in CODECS:
                with self.subTest(mode=mode, codec=codec):
                    w = self.start(codec, mode)
                    w.request(1, "ask", {"n": 1})
                    call = w.recv(LONG)
                    self.assertEqual(call.get("type"), "host_call", (call, w.stderr))
                    self.strays(w, codec, call["id"] + 1000)
                    w.send(_reply(call["id"], {"echoed": call["args"]}))
                    reply = w.recv(LONG)
                    self.assertEqual((reply.get("id"), reply.get("result")), (1, {"echoed": {"n": 1}}), w.stderr)
                    self.assertEqual(w.call(2, "echo", {"n": 2}, timeout=LONG).get("result"), {"n": 2})
                    self.assertEqual(self.finish(w), [])
                    self.assert_counted(w.stderr, str(call["id"] + 1000))

    def test_the_late_reply_of_a_cancelled_host_call_counts_as_the_first(self):
        # The Python bridge logs it, as it did before the count (as the
        # Ruby bridge does; the Node bridge drops it without a line).
        for mode in ("sync", "async"):
            for codec in CODECS:
                with self.subTest(mode=mode, codec=codec):
                    w = self.start(codec, mode)
                    w.request(1, "ask", {"n": 1})
                    call = w.recv(LONG)
                    self.assertEqual(call.get("type"), "host_call", (call, w.stderr))
                    # As the pool cancels: the frame, then SIGINT in the default mode.
                    w.send({"type": "cancel", "id": 1})
                    if mode == "sync":
                        w.signal(signal.SIGINT)
                    reply = w.recv(LONG)
                    self.assertEqual((reply.get("id"), reply.get("error", {}).get("type")), (1, "Cancelled"),
                                     (reply, w.stderr))
                    w.send(_reply(call["id"], "late"))
                    for rid in range(9):
                        w.send(_reply(10_000 + rid))
                    self.assertEqual(w.call(2, "echo", {"n": 2}, timeout=LONG).get("result"), {"n": 2})
                    self.assertEqual(self.finish(w), [])
                    lines = _dropped_lines(w.stderr)
                    self.assertEqual(len(lines), 2, lines)
                    self.assertIn(f"host_reply {call['id']} matches no waiting host call; dropped", lines[0])
                    self.assertIn("] 10 host_replies matching no waiting host call dropped so far"
                                  " (the last: 10008)", lines[1])


if __name__ == "__main__":
    unittest.main()
