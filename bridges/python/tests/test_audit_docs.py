"""Audit of what docs/protocol.md and bridges/python/README.md promise a
Python worker does, against real worker processes driven over pipes:
hostile input, odd exceptions, signals at awkward moments. Some once
failed: a handler raising a BaseException that is not an Exception, an
exception message no codec can encode, NaN read as JSON, native threads
left out of the template's count."""

import os
import shutil
import signal
import struct
import tempfile
import time
import unittest

from ._helpers import CODECS, WorkerProcess, wait_until

# One script for every test: MODE=async makes it an asyncio-mode worker
# (max_concurrency 4), anything else a one-at-a-time worker.
SCRIPT = r'''
import asyncio, os, sys, time
import snakepit_bridge

MODE = os.environ.get("AUDIT_MODE", "sync")
worker = snakepit_bridge.Worker(max_concurrency=4 if MODE == "async" else None)
HOOKS = []


class Abort(BaseException):
    """Not an Exception: what gevent.Timeout, trio.Cancelled and the like are."""


def first_hook():
    HOOKS.append("first:%d" % os.getpid())


def second_hook(w):
    HOOKS.append("second:%s" % (w is worker))


worker.after_fork(first_hook)          # a plain call
worker.after_fork(second_hook)         # a hook that takes the worker


@worker.command("hooks")
def hooks(args):
    return HOOKS


@worker.command("echo")
def echo(args):
    return args


@worker.command("worker_id")
def worker_id(args, ctx):
    return {"ctx": ctx.worker_id, "worker": ctx.worker.worker_id}


@worker.command("base_exception")
def base_exception(args):
    raise Abort("not an Exception")


@worker.command("bad_name")
def bad_name(args):
    # A file name that is not UTF-8, as os.listdir gives it (surrogateescape).
    name = os.fsdecode(b"caf\xe9.txt")
    raise ValueError("cannot read %s" % name)


@worker.command("give_up")
def give_up(args):
    raise snakepit_bridge.Cancelled("the handler gave up")


@worker.command("sleep")
def sleep(args):
    sys.stderr.write("sleep: started\n")
    sys.stderr.flush()
    time.sleep(args.get("seconds", 30))
    return "slept"


@worker.command("host")
def host(args, ctx):
    sys.stderr.write("host: calling\n")
    sys.stderr.flush()
    return ctx.call_host("lookup", {"key": "k"})


if MODE == "async":
    @worker.command("abase_exception")
    async def abase_exception(args):
        raise Abort("not an Exception, from a coroutine")

    @worker.command("agive_up")
    async def agive_up(args):
        raise snakepit_bridge.Cancelled("the coroutine gave up")

    @worker.command("asleep")
    async def asleep(args):
        sys.stderr.write("asleep: started\n")
        sys.stderr.flush()
        await asyncio.sleep(args.get("seconds", 30))
        return "slept"

worker.run()
'''


class _Base(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="snakepit-audit-")
        cls.script = os.path.join(cls.dir, "audit_worker.py")
        with open(cls.script, "w", encoding="utf-8") as f:
            f.write(SCRIPT)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def spawn(self, mode="sync", codec="json", env=None):
        merged = {"AUDIT_MODE": mode}
        merged.update(env or {})
        w = WorkerProcess(self.script, codec, env=merged)
        self.addCleanup(w.stop)
        hello = w.recv()
        self.assertEqual(hello["type"], "hello", w.stderr)
        return w

    def assert_serves_on(self, w, rid):
        reply = w.call(rid, "echo", {"after": rid})
        self.assertEqual(reply["result"], {"after": rid}, w.stderr)

    def no_more_frames(self, w, timeout=0.5):
        try:
            msg = w.recv(timeout)
        except Exception:  # queue.Empty: nothing came
            return True
        self.fail("unexpected frame %r" % (msg,))


class HandlerFailures(_Base):
    """README:72-74: "A handler that raises produces a failed reply
    {"type": <exception class name>, "message": str(exc), "traceback": ...}.
    The worker keeps serving." protocol.md section 4 (cancel): a worker must
    send exactly one final response per request."""

    def test_asyncio_mode_a_base_exception_is_a_failed_reply(self):
        for codec in CODECS:
            w = self.spawn("async", codec)
            for rid, command in ((1, "base_exception"), (2, "abase_exception")):
                reply = w.call(rid, command, timeout=5)
                self.assertFalse(reply["success"], reply)
                self.assertEqual(reply["error"]["type"], "Abort", reply)
                self.assertIn("not an Exception", reply["error"]["message"], reply)
            self.assert_serves_on(w, 3)

    def test_sync_mode_a_base_exception_is_a_failed_reply(self):
        for codec in CODECS:
            w = self.spawn("sync", codec)
            reply = w.call(1, "base_exception", timeout=5)
            self.assertFalse(reply["success"], reply)
            self.assertEqual(reply["error"]["type"], "Abort", reply)
            self.assert_serves_on(w, 2)

    def test_an_exception_message_that_is_not_utf8_encodable_is_still_a_failed_reply(self):
        # A non-UTF-8 file name (os.fsdecode, os.listdir) formatted into the
        # message: str(exc) holds a lone surrogate that neither codec can
        # encode. The reply must still go out, and the worker serve on.
        for mode in ("sync", "async"):
            for codec in CODECS:
                w = self.spawn(mode, codec)
                reply = w.call(1, "bad_name", timeout=5)
                self.assertFalse(reply["success"], reply)
                self.assertEqual(reply["error"]["type"], "ValueError", (mode, codec, reply))
                self.assertIn("cannot read caf", reply["error"]["message"])
                self.assert_serves_on(w, 2)

    def test_a_handler_raising_cancelled_itself_is_answered_cancelled_in_both_modes(self):
        # README:132: "A handler may also raise snakepit_bridge.Cancelled itself."
        for mode, commands in (("sync", ["give_up"]), ("async", ["give_up", "agive_up"])):
            w = self.spawn(mode)
            for rid, command in enumerate(commands, start=1):
                reply = w.call(rid, command)
                self.assertFalse(reply["success"], (mode, reply))
                self.assertEqual(reply["error"]["type"], "Cancelled", (mode, reply))
            self.assert_serves_on(w, 10)


class Signals(_Base):
    """README:139-141: "SIGTERM and EOF on stdin end the worker with exit
    code 0". protocol.md 6.6: "A worker exits cleanly on SIGTERM." Here the
    signal lands while a handler is busy, not between requests."""

    def sigterm_while(self, mode, command, marker, expect_host_call=False):
        w = self.spawn(mode)
        self.assertEqual(w.call(1, "echo", {})["id"], 1)
        w.request(2, command, {"seconds": 60})
        if expect_host_call:
            call = w.recv()
            self.assertEqual((call["type"], call["request_id"]), ("host_call", 2), call)
        self.assertTrue(wait_until(lambda: marker in w.stderr, 10), w.stderr)
        w.signal(signal.SIGTERM)
        self.assertEqual(w.wait(20), 0, w.stderr)

    def test_sigterm_during_a_sync_handler_exits_0(self):
        self.sigterm_while("sync", "sleep", "sleep: started")

    def test_sigterm_while_a_sync_handler_waits_for_a_host_reply_exits_0(self):
        self.sigterm_while("sync", "host", "host: calling", expect_host_call=True)

    def test_sigterm_during_a_plain_handler_on_an_asyncio_workers_thread_exits_0(self):
        self.sigterm_while("async", "sleep", "sleep: started")

    def test_sigterm_during_a_coroutine_handler_exits_0(self):
        self.sigterm_while("async", "asleep", "asleep: started")

    def test_sigterm_while_an_asyncio_workers_thread_waits_for_a_host_reply_exits_0(self):
        self.sigterm_while("async", "host", "host: calling", expect_host_call=True)

    def test_sigint_between_requests_is_ignored_in_sync_mode_even_many_times(self):
        # README:124-125: "SIGINT between requests is ignored."
        w = self.spawn("sync")
        for _ in range(20):
            w.signal(signal.SIGINT)
        time.sleep(0.3)
        self.assertIsNone(w.proc.poll(), w.stderr)
        self.assert_serves_on(w, 1)


class BadFrames(_Base):
    """protocol.md section 4, "Frames a worker cannot use", beyond what the
    cross-bridge suite sends, in the asyncio loop as well."""

    def test_an_oversized_frame_in_asyncio_mode_is_a_protocol_error_and_skipped(self):
        # "a length above the worker's limit (64 MiB) ... For an oversized
        # frame, read and discard its payload ... so that the next frame is
        # read from the right place."
        for mode in ("async", "sync"):
            w = self.spawn(mode)
            size = 64 * 1024 * 1024 + 1
            w.send_raw(struct.pack(">I", size))
            reply = w.recv()
            self.assertEqual((reply["id"], reply["success"], reply["error"]["type"]),
                             (0, False, "ProtocolError"), reply)
            block = b"\x00" * (1 << 20)
            left = size
            while left:
                n = min(left, len(block))
                w.send_raw(block[:n])
                left -= n
            self.assert_serves_on(w, 1)

    def test_a_frame_of_exactly_64_mib_is_read_not_refused(self):
        # "a length above the worker's limit (64 MiB, the pool's default
        # max_frame_size)" is unusable: one of exactly 64 MiB is a frame.
        limit = 64 * 1024 * 1024
        for codec in CODECS:
            w = self.spawn("sync", codec)
            base = {"id": 1, "command": "no_such_command", "args": {"pad": ""}}
            overhead = len(w.codec.encode(base))
            pad = "x" * (limit - overhead)
            # MessagePack's string header grows with the string's length.
            while len(w.codec.encode(dict(base, args={"pad": pad}))) > limit:
                pad = pad[:-1]
            payload = w.codec.encode(dict(base, args={"pad": pad}))
            self.assertEqual(len(payload), limit, codec)
            w.send_raw(struct.pack(">I", len(payload)) + payload)
            reply = w.recv(60)
            self.assertEqual((reply["id"], reply["error"]["type"]), (1, "UnknownCommand"), reply)
            self.assert_serves_on(w, 2)

    def test_an_oversized_frame_arriving_while_a_sync_handler_runs_keeps_the_stream_in_step(self):
        w = self.spawn("sync")
        w.request(1, "sleep", {"seconds": 1})
        self.assertTrue(wait_until(lambda: "sleep: started" in w.stderr, 10), w.stderr)
        size = 64 * 1024 * 1024 + 1
        # The header and part of the payload while the handler runs (read
        # ahead), the rest once it is done, then two requests.
        w.send_raw(struct.pack(">I", size) + b"\x00" * 4096)
        w.send_raw(b"\x00" * (size - 4096))
        w.request(2, "echo", {"n": 2})
        w.request(3, "echo", {"n": 3})
        replies = [w.recv() for _ in range(4)]
        ids = [(r["id"], r["success"]) for r in replies]
        self.assertEqual(ids, [(1, True), (0, False), (2, True), (3, True)], replies)
        self.assertEqual(replies[1]["error"]["type"], "ProtocolError")

    def test_the_stream_ending_inside_a_frame_in_asyncio_mode_exits_0_after_the_running_request(self):
        # "The stream ends inside a frame ...: the worker treats it as the end
        # of stdin and exits 0; it sends nothing". README: on EOF it first
        # finishes the requests it is running.
        for cut in (2, 10):
            w = self.spawn("async")
            w.request(1, "asleep", {"seconds": 0.3})
            self.assertTrue(wait_until(lambda: "asleep: started" in w.stderr, 10), w.stderr)
            w.send_raw(b"\x00\x00\x00\x30" + b'{"id":2,"command":"echo","args":{}}'[:cut])
            w.close_stdin()
            reply = w.recv()
            self.assertEqual((reply["id"], reply["result"]), (1, "slept"), reply)
            self.assertIsNone(w.recv(), "nothing after the running request's reply")
            self.assertEqual(w.wait(), 0)

    def test_a_cancel_for_an_id_not_running_is_ignored_in_asyncio_mode(self):
        # "A cancel for an id that is not running (its reply has been sent)
        # is ignored."
        w = self.spawn("async")
        self.assertTrue(w.call(1, "echo", {})["success"])
        w.send({"type": "cancel", "id": 1})
        w.send({"type": "cancel", "id": 999})
        self.no_more_frames(w)
        self.assert_serves_on(w, 2)

    def test_nan_and_infinity_in_a_json_frame_are_not_json(self):
        # protocol.md section 4: "a payload that does not decode (not JSON
        # ...)": reply id 0, ProtocolError. Section 3: JSON has no NaN or
        # infinite numbers (the pool itself refuses such a frame).
        w = self.spawn("sync")
        for rid, literal in ((1, b"NaN"), (2, b"Infinity"), (3, b"-Infinity")):
            payload = b'{"id":%d,"command":"echo","args":{"x":%s}}' % (rid, literal)
            w.send_raw(struct.pack(">I", len(payload)) + payload)
            reply = w.recv()
            self.assertEqual((reply["id"], reply["error"]["type"]), (0, "ProtocolError"), reply)
        self.assert_serves_on(w, 4)


class WorkerIdAndHooks(_Base):
    def test_ctx_worker_id_comes_from_the_init_ping_without_the_variable(self):
        # README ctx table: "ctx.worker_id: from SNAKEPIT_WORKER_ID or the
        # pool's init ping, or None"; protocol.md 6.2: the init ping carries
        # args {"initialization": true, "worker_id": "<id>"}.
        for mode in ("sync", "async"):
            w = self.spawn(mode)
            self.assertEqual(w.call(1, "worker_id")["result"], {"ctx": None, "worker": None})
            init = w.call(2, "ping", {"initialization": True, "worker_id": "audit_worker_3_1"})
            self.assertEqual(init["result"]["status"], "ok")
            self.assertEqual(w.call(3, "worker_id")["result"],
                             {"ctx": "audit_worker_3_1", "worker": "audit_worker_3_1"}, mode)
            self.assertEqual(w.call(4, "ping")["result"]["worker_id"], "audit_worker_3_1")

    def test_the_variable_wins_over_the_init_ping(self):
        w = self.spawn("sync", env={"SNAKEPIT_WORKER_ID": "from_env_1_1"})
        w.call(1, "ping", {"initialization": True, "worker_id": "from_ping"})
        self.assertEqual(w.call(2, "worker_id")["result"]["ctx"], "from_env_1_1")

    def test_after_fork_as_a_plain_call_and_with_the_worker_run_in_order_in_a_direct_worker(self):
        # README:152-166: hooks run in registration order in every worker
        # (a pool without preloading too); "per_process(worker)" gets the
        # worker; "worker.after_fork(fn) works as a plain call too".
        for mode in ("sync", "async"):
            w = self.spawn(mode)
            self.assertEqual(w.call(1, "hooks")["result"],
                             ["first:%d" % w.proc.pid, "second:True"], mode)


NATIVE_THREAD_TEMPLATE = r'''
import ctypes, sys
import snakepit_bridge

# A thread started by native code (OpenBLAS, torch, a C client library):
# here pthread_create running libc's sleep(1000).
libc = ctypes.CDLL(None)
tid = ctypes.c_ulong()
rc = libc.pthread_create(ctypes.byref(tid), None, ctypes.cast(libc.sleep, ctypes.c_void_p),
                         ctypes.c_void_p(1000))
assert rc == 0, rc
worker = snakepit_bridge.Worker()
worker.run()
'''


class PreloadThreads(unittest.TestCase):
    """docs/preload.md:95-96: "The bridges check: a template with more than
    one thread at run() writes a warning to each worker's log"; :166:
    `{"op": "ready", "pid": P, "threads": N}`, "N is the number of threads
    alive in the template"."""

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="snakepit-audit-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.script = os.path.join(self.dir, "native_thread.py")
        with open(self.script, "w", encoding="utf-8") as f:
            f.write(NATIVE_THREAD_TEMPLATE)

    def start_template(self):
        import json
        import socket
        import subprocess
        import sys

        from ._helpers import BRIDGE_DIR

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ, SNAKEPIT_PRELOAD="1", SNAKEPIT_CODEC="json", PYTHONPATH=BRIDGE_DIR)
        env.pop("SNAKEPIT_WORKER_ID", None)
        proc = subprocess.Popen([sys.executable, self.script], stdin=theirs, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        theirs.close()

        def stop():
            ours.close()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.addCleanup(stop)
        ours.settimeout(20)
        ready = json.loads(ours.recv(65536))
        self.assertEqual(ready["op"], "ready", ready)
        return ours, proc, ready

    def test_a_native_thread_in_the_template_is_counted_and_warned_about(self):
        import json
        import socket

        ours, proc, ready = self.start_template()
        tasks = len(os.listdir("/proc/%d/task" % proc.pid))
        self.assertEqual(tasks, 2, "the template runs two threads")
        self.assertEqual(ready["threads"], tasks, ready)

        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        import array

        # socket.send_fds, which Python 3.8 lacks.
        ours.sendmsg([json.dumps({"op": "fork", "id": 1, "env": {}}).encode()],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [stdin_r, stdout_w, stderr_w]))])
        for fd in (stdin_r, stdout_w, stderr_w):
            os.close(fd)
        forked = json.loads(ours.recv(65536))
        self.assertEqual(forked["op"], "forked", forked)
        os.close(stdin_w)  # the worker serves nothing and exits at EOF
        log = b""
        while True:
            data = os.read(stderr_r, 65536)
            if not data:
                break
            log += data
        os.close(stderr_r)
        os.close(stdout_r)
        self.assertIn(b"thread", log, "a warning in the worker's log")

    def test_the_template_reports_its_python_threads(self):
        # What is kept today: only the main Python thread, so N is 1.
        _, _, ready = self.start_template()
        self.assertGreaterEqual(ready["threads"], 1)


if __name__ == "__main__":
    unittest.main()
