"""Red-team tests of bridges/python/README.md (Concurrency, Cancellation,
The context `ctx`: chunks and logging), driven over real pipes the way the
pool drives a worker: max_concurrency in asyncio mode (plain functions on
threads and coroutines), the default of 8, ctx.logger's request-id prefix
under concurrency and with a logging configuration of the script's own,
chunks emitted from several threads of a sync handler, and an async
handler that swallows its cancellation.

Nothing here is timed for speed; the bounds only turn a hang into a
failure."""

import os
import re
import shutil
import tempfile
import time
import unittest

from ._helpers import WorkerProcess, wait_until

GUARD = 60.0

SCRIPT = r'''
import asyncio, logging, os, sys, threading, time
import snakepit_bridge

if os.environ.get("RT_BASIC_CONFIG") == "stdout":
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
elif os.environ.get("RT_BASIC_CONFIG") == "stderr":
    logging.basicConfig(level=logging.INFO, format="%(message)s")

conc = os.environ.get("RT_CONCURRENCY")
worker = snakepit_bridge.Worker(max_concurrency=int(conc) if conc else None)
lock = threading.Lock()
state = {"running": 0, "peak": 0}


def _enter():
    with lock:
        state["running"] += 1
        state["peak"] = max(state["peak"], state["running"])


def _leave():
    with lock:
        state["running"] -= 1


@worker.command("phold")
def phold(args, ctx):
    """A plain function: holds its slot until `want` calls run at once (or
    `s` seconds pass); returns the most seen at once."""
    _enter()
    try:
        deadline = time.monotonic() + args["s"]
        while time.monotonic() < deadline and state["running"] < args["want"]:
            time.sleep(0.005)
        time.sleep(0.05)
        return {"peak": state["peak"]}
    finally:
        _leave()


if os.environ.get("RT_ASYNC"):
    @worker.command("ahold")
    async def ahold(args, ctx):
        _enter()
        try:
            deadline = time.monotonic() + args["s"]
            while time.monotonic() < deadline and state["running"] < args["want"]:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)
            return {"peak": state["peak"]}
        finally:
            _leave()

    @worker.command("alog")
    async def alog(args, ctx):
        for i in range(args["n"]):
            ctx.logger.info("line %d of call %s", i, args["tag"])
            await asyncio.sleep(0.001)
        return {"tag": args["tag"]}

    @worker.command("swallow_cancel")
    async def swallow_cancel(args, ctx):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            sys.stderr.write("swallow_cancel: swallowed, ctx.cancelled=%s\n" % ctx.cancelled)
            sys.stderr.flush()
            return "swallowed"
        return "slept"


@worker.command("plog")
def plog(args, ctx):
    ctx.logger.info("plain line of call %s", args["tag"])
    return {"tag": args["tag"]}


@worker.command("threaded_chunks")
def threaded_chunks(args, ctx):
    """Chunks from the handler's thread and from helper threads at once."""
    per = args["per"]

    def emit(who):
        for i in range(per):
            ctx.emit({"who": who, "i": i})

    threads = [threading.Thread(target=emit, args=(t,)) for t in range(args["threads"])]
    for t in threads:
        t.start()
    emit("main")
    for t in threads:
        t.join()
    return {"done": True}


leftover = {}


@worker.command("leave_thread")
def leave_thread(args, ctx):
    """Leaves a thread that emits after the reply went out."""
    go = threading.Event()
    leftover["go"] = go

    def late():
        go.wait(30)
        leftover["emitted"] = ctx.emit("late")

    threading.Thread(target=late, daemon=True).start()
    return "replied"


@worker.command("release")
def release(args, ctx):
    leftover["go"].set()
    deadline = time.monotonic() + 10
    while "emitted" not in leftover and time.monotonic() < deadline:
        time.sleep(0.005)
    return {"emitted": leftover.get("emitted")}


worker.run()
'''


class _Base(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="snakepit-py-redteam-readme-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.script = os.path.join(self.dir, "worker.py")
        with open(self.script, "w") as f:
            f.write(SCRIPT)

    def spawn(self, codec="json", **env):
        w = WorkerProcess(self.script, codec, env={k: str(v) for k, v in env.items()})
        self.addCleanup(self._kill, w)
        hello = w.recv(GUARD)
        self.assertEqual(hello["type"], "hello", hello)
        return w, hello

    @staticmethod
    def _kill(w):
        if w.proc.poll() is None:
            w.proc.kill()
        w.stop()

    def replies(self, w, ids, chunks=None):
        """Final replies of `ids` (chunks collected into `chunks`)."""
        got = {}
        deadline = time.monotonic() + GUARD
        while set(got) != set(ids):
            left = deadline - time.monotonic()
            self.assertGreater(left, 0, "gave up; stderr:\n" + w.stderr[-3000:])
            msg = w.recv(left)
            self.assertIsNotNone(msg, "worker closed stdout; stderr:\n" + w.stderr[-3000:])
            if msg.get("type") == "chunk":
                self.assertNotIn(msg["id"], got, "a chunk after its call's reply: %r" % msg)
                if chunks is not None:
                    chunks.setdefault(msg["id"], []).append(msg["data"])
                continue
            self.assertIn(msg.get("type"), (None, "response"), msg)
            self.assertNotIn(msg["id"], got, "a second reply: %r" % msg)
            got[msg["id"]] = msg
        return got


class MaxConcurrency(_Base):
    """README, Concurrency: "the worker runs an asyncio loop and up to
    `max_concurrency` requests at once (8 by default in this mode). Plain
    functions then run on a pool of threads"."""

    def peak_of(self, w, command, limit, sent):
        ids = list(range(1, sent + 1))
        for rid in ids:
            # Each waits (up to 5 s) for more calls at once than the limit
            # allows: the most any saw is what the worker ran together.
            w.request(rid, command, {"want": sent, "s": 5})
        got = self.replies(w, ids)
        for r in got.values():
            self.assertTrue(r["success"], r)
        return max(r["result"]["peak"] for r in got.values())

    def test_plain_functions_run_max_concurrency_at_once_beyond_the_default_thread_pool(self):
        # 12 is more than concurrent.futures' default of min(32, cpus + 4)
        # on a small machine.
        w, hello = self.spawn(RT_CONCURRENCY=12)
        self.assertEqual(hello["capabilities"]["max_concurrency"], 12)
        self.assertEqual(self.peak_of(w, "phold", 12, 14), 12)

    def test_coroutines_run_max_concurrency_at_once(self):
        w, hello = self.spawn(RT_CONCURRENCY=3, RT_ASYNC=1)
        self.assertEqual(hello["capabilities"]["max_concurrency"], 3)
        self.assertEqual(self.peak_of(w, "ahold", 3, 6), 3)

    def test_an_async_handler_alone_means_8_at_once(self):
        w, hello = self.spawn(RT_ASYNC=1)
        self.assertEqual(hello["capabilities"]["max_concurrency"], 8)
        self.assertEqual(self.peak_of(w, "ahold", 8, 10), 8)

    def test_plain_and_async_handlers_share_the_limit(self):
        w, _ = self.spawn(RT_CONCURRENCY=4, RT_ASYNC=1)
        ids = list(range(1, 9))
        for rid in ids:
            w.request(rid, "phold" if rid % 2 else "ahold", {"want": 8, "s": 5})
        got = self.replies(w, ids)
        self.assertEqual(max(r["result"]["peak"] for r in got.values()), 4, got)


class Logger(_Base):
    """README, ctx: "`ctx.logger`: a `logging` logger writing to stderr,
    messages prefixed with the request id"."""

    def test_concurrent_async_calls_each_prefix_their_own_request_id(self):
        w, _ = self.spawn(RT_ASYNC=1)
        ids = list(range(11, 17))
        for rid in ids:
            w.request(rid, "alog", {"n": 20, "tag": "t%d" % rid})
        got = self.replies(w, ids)
        self.assertTrue(all(r["success"] for r in got.values()), got)
        self.assertTrue(wait_until(lambda: w.stderr.count("line 19 of call") == len(ids), 10),
                        w.stderr[-3000:])
        lines = [ln for ln in w.stderr.splitlines() if " of call t" in ln]
        self.assertEqual(len(lines), 20 * len(ids), w.stderr[-3000:])
        for ln in lines:
            m = re.search(r"\[req (\d+)\] line \d+ of call t(\d+)$", ln)
            self.assertIsNotNone(m, "prefixed with a request id: %r" % ln)
            self.assertEqual(m.group(1), m.group(2), "its own request id: %r" % ln)

    def check_logged_to_stderr(self, config):
        w, _ = self.spawn(RT_BASIC_CONFIG=config)
        r = w.call(5, "plog", {"tag": "x"}, timeout=GUARD)
        self.assertTrue(r["success"], r)
        # The frame stream stays intact: the next call is answered too.
        r = w.call(6, "plog", {"tag": "y"}, timeout=GUARD)
        self.assertTrue(r["success"], r)
        self.assertTrue(wait_until(lambda: "[req 6] plain line of call y" in w.stderr, 10),
                        "config %s: stderr:\n%s" % (config, w.stderr[-3000:]))
        self.assertIn("[req 5] plain line of call x", w.stderr)

    def test_with_the_scripts_basic_config_on_stderr_lines_still_carry_the_id(self):
        self.check_logged_to_stderr("stderr")

    def test_with_the_scripts_basic_config_on_stdout_lines_go_to_stderr_not_the_frames(self):
        # basicConfig(stream=sys.stdout) at import holds the real stdout;
        # run() moves descriptor 1 to stderr, so the lines land there.
        self.check_logged_to_stderr("stdout")


class Chunks(_Base):
    """README, ctx: "`ctx.emit(data)`: send a partial result (a `chunk`
    frame); returns `False` and sends nothing ... once the call was answered
    or cancelled (a task or thread the handler left behind)"."""

    def test_chunks_from_several_threads_of_a_sync_handler_arrive_whole_before_the_reply(self):
        for codec in ("json", "msgpack"):
            try:
                import msgpack  # noqa: F401
            except ImportError:
                if codec == "msgpack":
                    continue
            w, _ = self.spawn(codec)
            chunks = {}
            w.request(7, "threaded_chunks", {"threads": 4, "per": 300}, stream=True)
            got = self.replies(w, [7], chunks)
            self.assertTrue(got[7]["success"], got)
            data = chunks.get(7, [])
            self.assertEqual(len(data), 5 * 300, codec)
            for who in ["main", 0, 1, 2, 3]:
                mine = [c["i"] for c in data if c["who"] == who]
                self.assertEqual(mine, list(range(300)), "%s: %s in order" % (codec, who))
            self.assertTrue(w.call(8, "plog", {"tag": "after"}, timeout=GUARD)["success"])

    def test_a_thread_left_behind_by_a_sync_handler_emits_nothing_after_the_reply(self):
        w, _ = self.spawn()
        chunks = {}
        w.request(1, "leave_thread", {}, stream=True)
        got = self.replies(w, [1], chunks)
        self.assertEqual(got[1]["result"], "replied")
        w.request(2, "release", {}, stream=True)
        got = self.replies(w, [2], chunks)
        self.assertEqual(got[2]["result"], {"emitted": False}, "emit returned False")
        self.assertEqual(chunks, {}, "no chunk went out")


class SwallowedCancel(_Base):
    """README, Cancellation, asyncio mode: "an `async def` handler's task is
    cancelled (`asyncio.CancelledError` at its current `await`)"; as for
    KeyboardInterrupt in the default mode, a handler that swallows it has
    `ctx.cancelled` set and one reply, of type Cancelled."""

    def test_an_async_handler_that_swallows_cancelled_error_is_answered_cancelled_once(self):
        w, _ = self.spawn(RT_ASYNC=1)
        w.request(3, "swallow_cancel", {})
        self.assertTrue(wait_until(lambda: w.proc.poll() is None, 1))
        time.sleep(0.2)  # let the task reach its await (no timing asserted)
        w.send({"type": "cancel", "id": 3})
        got = self.replies(w, [3])
        reply = got[3]
        self.assertFalse(reply["success"], "a swallowed cancel still says Cancelled: %r" % reply)
        self.assertEqual(reply["error"]["type"], "Cancelled", reply)
        self.assertTrue(wait_until(lambda: "ctx.cancelled=True" in w.stderr, 10), w.stderr)
        self.assertTrue(w.call(4, "plog", {"tag": "z"}, timeout=GUARD)["success"])


if __name__ == "__main__":
    unittest.main()
