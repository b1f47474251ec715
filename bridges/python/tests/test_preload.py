"""Preloading (docs/preload.md): the test plays the pool. It starts a real
template (tests/preload_worker.py with SNAKEPIT_PRELOAD=1) on a
SOCK_SEQPACKET socket, asks it to fork workers with pipes it made, and talks
frames to them."""

import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import unittest

from ._helpers import BRIDGE_DIR, CODECS, TESTS_DIR, WorkerProcess
from snakepit_bridge import _wire

PRELOAD_WORKER = os.path.join(TESTS_DIR, "preload_worker.py")
TIMEOUT = 10.0


class Template:
    """A template process and the pool's end of its socket."""

    def __init__(self, test, codec="json", env=None):
        self.test = test
        self.codec = codec
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.template_inode = os.fstat(theirs.fileno()).st_ino
        child_env = dict(os.environ)
        for name in ("SNAKEPIT_WORKER_ID", "PRELOAD_THREAD", "PRELOAD_SOCKET", "PRELOAD_FAKE_TORCH",
                     "PRELOAD_HOOK_RAISE", "PRELOAD_ASYNC", "PRELOAD_PROTECT"):
            child_env.pop(name, None)
        child_env.update({"SNAKEPIT_PRELOAD": "1", "SNAKEPIT_CODEC": codec, "SNAKEPIT_PROTOCOL": "1",
                          "PYTHONPATH": BRIDGE_DIR, "PRELOAD_LOG": test.log_path})
        child_env.update(env or {})
        self.proc = subprocess.Popen([sys.executable, PRELOAD_WORKER], stdin=theirs,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env)
        theirs.close()
        test.addCleanup(self.stop)
        self.output = Stream(self.proc.stdout.fileno())
        self.messages = queue.Queue()
        self.stash = []
        self.workers = []
        self.next_id = 1
        # A pidfd for every worker the template reports, taken as the report
        # arrives: stop() kills them all, whatever a test got to.
        self.pidfds = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.messages.put(None)
                return
            msg = json.loads(data)
            if msg.get("op") == "forked":
                try:
                    self.pidfds.append(os.pidfd_open(msg["pid"]))
                except ProcessLookupError:
                    pass
            self.messages.put(msg)

    def expect(self, op, **fields):
        """The next message with this op (and these field values); others
        are kept for later."""
        def matches(msg):
            return msg["op"] == op and all(msg.get(k) == v for k, v in fields.items())
        for i, msg in enumerate(self.stash):
            if matches(msg):
                return self.stash.pop(i)
        while True:
            msg = self.messages.get(timeout=TIMEOUT)
            if msg is None:
                raise AssertionError(f"template closed its socket; its output:\n{self.output.text}")
            if matches(msg):
                return msg
            self.stash.append(msg)

    def next_message(self):
        if self.stash:
            return self.stash.pop(0)
        return self.messages.get(timeout=TIMEOUT)

    def ready(self):
        msg = self.expect("ready")
        self.test.assertEqual(msg["pid"], self.proc.pid)
        return msg

    def send(self, message, fds=()):
        data = message if isinstance(message, bytes) else json.dumps(message).encode()
        socket.send_fds(self.sock, [data], list(fds))

    def fork(self, env=None, codec=None):
        """Ask for a worker; its ForkedWorker once `forked` came."""
        rid = self.next_id
        self.next_id += 1
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        self.send({"op": "fork", "id": rid, "env": env or {}}, [stdin_r, stdout_w, stderr_w])
        for fd in (stdin_r, stdout_w, stderr_w):
            os.close(fd)
        msg = self.expect("forked", id=rid)
        worker = ForkedWorker(msg["pid"], stdin_w, stdout_r, stderr_r, codec or self.codec)
        self.workers.append(worker)
        self.test.addCleanup(worker.stop)
        return worker

    def close(self):
        """Close the pool's end: the template sees end of file. (Shut down
        first: close() alone would wait for the reader thread's recv.)"""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def stop(self):
        self.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pidfd in self.pidfds:
            kill_quietly(pidfd)
            select.select([pidfd], [], [], TIMEOUT)
            os.close(pidfd)
        self.output.join()
        self.proc.stdout.close()


class Stream:
    """Everything read from a descriptor, awaitable."""

    def __init__(self, fd):
        self.fd = fd
        self.data = bytearray()
        self.eof = False
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                chunk = b""
            with self.cond:
                if not chunk:
                    self.eof = True
                else:
                    self.data += chunk
                self.cond.notify_all()
            if not chunk:
                return

    @property
    def text(self):
        with self.cond:
            return self.data.decode("utf-8", "replace")

    def wait_for(self, needle):
        """The text once it contains needle (or at end of file)."""
        with self.cond:
            self.cond.wait_for(lambda: needle.encode() in self.data or self.eof, TIMEOUT)
            return self.data.decode("utf-8", "replace")

    def wait_eof(self):
        with self.cond:
            self.cond.wait_for(lambda: self.eof, TIMEOUT)
            return self.data.decode("utf-8", "replace")

    def join(self):
        self.thread.join(TIMEOUT)


class ForkedWorker:
    """A forked worker, driven over the pipes the test gave the template."""

    def __init__(self, pid, stdin_w, stdout_r, stderr_r, codec):
        self.pid = pid
        # Held from the start, so cleanup never signals a recycled pid.
        # None: it has already exited and its template reaped it (a worker
        # whose after_fork hook raises can be gone before `forked` is read).
        try:
            self.pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.pidfd = None
        self.codec = _wire.get_codec(codec)
        self.stdin = os.fdopen(stdin_w, "wb", buffering=0)
        self.stdout = os.fdopen(stdout_r, "rb", buffering=0)
        self.stderr = Stream(stderr_r)
        self.frames = queue.Queue()
        self.reader = threading.Thread(target=self._read_frames, daemon=True)
        self.reader.start()

    def _read_frames(self):
        while True:
            try:
                payload = _wire.read_frame_from(self.stdout)
            except (_wire.FrameError, OSError, ValueError) as exc:
                self.frames.put(exc)
                return
            if payload is None:
                self.frames.put(None)
                return
            self.frames.put(self.codec.decode(payload))

    def recv(self):
        msg = self.frames.get(timeout=TIMEOUT)
        if isinstance(msg, Exception):
            raise msg
        return msg

    def send(self, value):
        self.stdin.write(_wire.encode_frame(self.codec, value))

    def call(self, rid, command, args=None):
        self.send({"id": rid, "command": command, "args": {} if args is None else args})
        while True:
            msg = self.recv()
            if msg is None:
                raise AssertionError("worker closed stdout; stderr:\n" + self.stderr.text)
            if msg.get("type") in (None, "response") and msg.get("id") == rid:
                return msg

    def result(self, rid, command, args=None):
        reply = self.call(rid, command, args)
        if not reply["success"]:
            raise AssertionError(f"{command} failed: {reply}")
        return reply["result"]

    def close_stdin(self):
        if not self.stdin.closed:
            self.stdin.close()

    def wait_gone(self):
        """True once the process has exited (whoever its parent is now)."""
        if self.pidfd is None:
            return True
        ready, _, _ = select.select([self.pidfd], [], [], TIMEOUT)
        return bool(ready)

    def stop(self):
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.wait_gone()
            os.close(self.pidfd)
        self.close_stdin()
        # Closed under its reader, the descriptor's number could go to the
        # next test's pipe, and the reader would steal from it.
        self.reader.join(TIMEOUT)
        if not self.reader.is_alive():
            self.stdout.close()
        self.stderr.join()


@unittest.skipUnless(hasattr(socket, "send_fds") and hasattr(os, "pidfd_open") and sys.platform == "linux",
                     "the pool's side needs socket.send_fds and os.pidfd_open (Linux, Python 3.9+)")
class PreloadTests(unittest.TestCase):
    def setUp(self):
        fd, self.log_path = tempfile.mkstemp(prefix="snakepit-preload-", suffix=".log")
        os.close(fd)
        self.addCleanup(os.unlink, self.log_path)

    def log_lines(self):
        with open(self.log_path) as f:
            return [line.split() for line in f.read().splitlines()]

    def start(self, codec="json", env=None):
        template = Template(self, codec, env)
        ready = template.ready()
        return template, ready

    def test_forked_workers_serve_ping_and_echo_in_both_codecs(self):
        for codec in CODECS:
            with self.subTest(codec=codec):
                template, ready = self.start(codec)
                self.assertEqual(ready["threads"], 1)
                w = template.fork({"SNAKEPIT_WORKER_ID": f"pool_worker_{codec}", "EXTRA": "x"})
                self.assertNotEqual(w.pid, template.proc.pid)
                hello = w.recv()
                self.assertEqual(hello["type"], "hello")
                self.assertEqual(hello["pid"], w.pid)
                ping = w.result(1, "ping", {"initialization": True})
                self.assertEqual(ping["pid"], w.pid)
                self.assertEqual(ping["worker_id"], f"pool_worker_{codec}")
                self.assertEqual(ping["requests_handled"], 1)
                echo = w.result(2, "echo", {"n": [1, 2, "three"]})
                self.assertEqual(echo["echoed"], {"n": [1, 2, "three"]})
                state = w.result(3, "state", {"env": ["SNAKEPIT_PRELOAD", "EXTRA", "SNAKEPIT_CODEC"]})
                self.assertEqual(state["pid"], w.pid)
                self.assertEqual(state["worker_pid"], w.pid)
                self.assertEqual(state["pgid"], w.pid)
                self.assertEqual(os.getpgid(w.pid), w.pid)
                self.assertEqual(state["env"], {"SNAKEPIT_PRELOAD": None, "EXTRA": "x", "SNAKEPIT_CODEC": codec})
                self.assertEqual(state["hooks"], [["first", w.pid], ["second", w.pid, True]])
                self.assertGreater(state["frozen"], 0)  # gc.freeze() ran before the fork
                # print() in a forked worker goes to its stderr, not its frames.
                self.assertEqual(w.result(4, "say", {"text": "hi"}), "said")
                self.assertIn("printed by a worker: hi", w.stderr.wait_for("printed by a worker"))

    def test_a_forked_worker_holds_its_three_pipes_and_not_the_template_socket(self):
        template, _ = self.start()
        w = template.fork()
        w.recv()
        w.result(1, "ping")  # the serve loop has waited for a frame
        links = fd_links(w.pid)
        self.assertNotIn(f"socket:[{template.template_inode}]", links.values())
        # Descriptor 0 reads /dev/null: the frames come through a
        # duplicate of the pool's pipe, which no subprocess inherits.
        self.assertEqual(links[0], "/dev/null", links)
        for fd in (1, 2):
            self.assertTrue(links[fd].startswith("pipe:"), links)
        # Nothing of the template's (its socket, wakeup pipe, epoll, the fds
        # it got): the worker holds nothing the template holds.
        template_links = fd_links(template.proc.pid)
        self.assertEqual(set(links.values()) & set(template_links.values()), set(), (links, template_links))
        # Besides stdio, the worker's own: the saved frame descriptor
        # (protect_stdout), sys.stdout's duplicate of stderr, the duplicate
        # of the pool's stdin pipe frames are read from and a second
        # description of it (the serve loop's reads that do not block), and
        # both ends of its signal wakeup pipe.
        extra = sorted(link for fd, link in links.items() if fd > 2)
        frame = os.readlink(f"/proc/self/fd/{w.stdout.fileno()}")
        frames_in = os.readlink(f"/proc/self/fd/{w.stdin.fileno()}")
        ours = [frame, links[2], frames_in, frames_in]
        wakeup = [link for link in extra if link not in ours]
        self.assertEqual(sorted(ours + wakeup), extra, links)
        self.assertEqual(len(wakeup), 2, links)
        self.assertEqual(wakeup[0], wakeup[1], links)

    def test_a_forked_workers_stdin_reads_dev_null_and_closing_sys_stdout_keeps_its_log(self):
        # README, Output and signals: descriptor 0 reads /dev/null, so a
        # child inheriting stdin cannot eat the frame written meanwhile; a
        # handler closing sys.stdout closes nothing. In both serve loops,
        # and with stdout protected in the template too (its sys.stdout,
        # held since import, then writes to the worker's stderr).
        for env in ({}, {"PRELOAD_ASYNC": "1"}, {"PRELOAD_PROTECT": "1"}):
            with self.subTest(env=env):
                template, _ = self.start(env=env)
                w = template.fork()
                w.recv()
                w.send({"id": 1, "command": "stdio", "args": {}})
                w.send({"id": 2, "command": "ping", "args": {}})
                got = {}
                while len(got) < 2:
                    msg = w.recv()
                    got[msg["id"]] = msg
                self.assertEqual(got[1].get("result"),
                                 {"child_read": 0, "fd0": "/dev/null", "sys_stdin": ""}, got[1])
                self.assertTrue(got[2]["success"], got[2])
                self.assertEqual(w.result(3, "close_and_print", {"text": "x"}), "printed")
                text = w.stderr.wait_for("printed to the import-time stdout: x")
                self.assertIn("printed after the close: x", text)
                self.assertEqual(w.result(4, "ping")["status"], "ok")

    def test_module_code_runs_once_and_hooks_only_in_the_workers(self):
        template, _ = self.start()
        a = template.fork()
        b = template.fork()
        self.assertNotEqual(a.pid, b.pid)
        for w in (a, b):
            w.recv()
            self.assertEqual(w.result(1, "state")["hooks"][0], ["first", w.pid])
        lines = self.log_lines()
        self.assertEqual([line for line in lines if line[0] == "import"], [["import", str(template.proc.pid)]])
        self.assertEqual(sorted(line for line in lines if line[0] == "hook"),
                         sorted([["hook", str(a.pid)], ["hook", str(b.pid)]]))

    def test_forked_workers_draw_different_random_numbers(self):
        template, _ = self.start()
        a = template.fork()
        b = template.fork()
        a.recv()
        b.recv()
        self.assertNotEqual(a.result(1, "state")["random"], b.result(1, "state")["random"])

    def test_the_worker_environment_picks_the_codec(self):
        if "msgpack" not in CODECS:
            self.skipTest("msgpack is not installed")
        template, _ = self.start("json")
        w = template.fork({"SNAKEPIT_CODEC": "msgpack"}, codec="msgpack")
        self.assertEqual(w.recv()["type"], "hello")
        self.assertEqual(w.result(1, "echo", {"b": "x"})["echoed"], {"b": "x"})

    def test_an_asyncio_worker_is_forked_too_and_sigterm_ends_it_with_0(self):
        template, _ = self.start(env={"PRELOAD_ASYNC": "1"})
        w = template.fork()
        hello = w.recv()
        self.assertEqual(hello["capabilities"]["max_concurrency"], 8)
        self.assertEqual(w.result(1, "apid"), w.pid)
        self.assertEqual(w.result(2, "state")["hooks"][0], ["first", w.pid])
        os.kill(w.pid, signal.SIGTERM)  # not reaped before the template reports it
        self.assert_exited_0(template, w)

    def assert_exited_0(self, template, w):
        status = template.expect("exited", pid=w.pid)["status"]
        self.assertTrue(os.WIFEXITED(status), status)
        self.assertEqual(os.WEXITSTATUS(status), 0)

    def test_sigterm_ends_a_sync_worker_with_0(self):
        # Sent just after hello, as the worker goes into the wait for its
        # first frame: a blocking read() entered just after the signal
        # landed held the handler until a frame came (one worker in 60
        # stayed), hence many workers.
        template, _ = self.start()
        for _ in range(int(os.environ.get("SNAKEPIT_SIGTERM_ROUNDS", "150"))):
            w = template.fork()
            w.recv()
            os.kill(w.pid, signal.SIGTERM)
            self.assert_exited_0(template, w)

    def test_a_killed_worker_is_reported_exited_with_its_signal(self):
        template, _ = self.start()
        w = template.fork()
        w.recv()
        os.kill(w.pid, signal.SIGKILL)
        status = template.expect("exited", pid=w.pid)["status"]
        self.assertTrue(os.WIFSIGNALED(status), status)
        self.assertEqual(os.WTERMSIG(status), signal.SIGKILL)

    def test_a_worker_whose_stdin_closes_exits_0_without_returning_into_the_script(self):
        template, _ = self.start()
        w = template.fork()
        w.recv()
        w.result(1, "ping")
        w.close_stdin()
        self.assert_exited_0(template, w)
        # The script's code after run() ran in no worker (nor the template).
        lines = self.log_lines()
        self.assertEqual([line for line in lines if line[0] == "after-run"], [])
        # Exit handlers: the worker's own ran, the template's did not.
        self.assertEqual([line for line in lines if line[0].startswith("atexit")], [["atexit-worker", str(w.pid)]])
        # A clean template: no fork warnings.
        self.assertNotIn("snakepit:", w.stderr.wait_eof())

    def test_two_workers_serve_at_once(self):
        template, _ = self.start()
        a = template.fork()
        b = template.fork()
        a.recv()
        b.recv()
        a.send({"id": 1, "command": "wait_for_host", "args": {}})
        host_call = a.recv()
        self.assertEqual(host_call["type"], "host_call")
        # a is inside a request; b serves meanwhile.
        self.assertEqual(b.result(1, "ping")["pid"], b.pid)
        a.send({"type": "host_reply", "id": host_call["id"], "success": True, "result": "released"})
        reply = a.recv()
        self.assertEqual((reply["id"], reply["result"]), (1, "released"))

    def test_the_template_exits_0_at_end_of_file_and_its_workers_keep_serving(self):
        template, _ = self.start()
        w = template.fork()
        w.recv()
        template.close()
        self.assertEqual(template.proc.wait(TIMEOUT), 0)
        self.assertEqual(w.result(1, "ping")["pid"], w.pid)
        w.close_stdin()
        self.assertIsNone(w.recv())  # stdout closed: the worker ended
        self.assertTrue(w.wait_gone())
        self.assertEqual([line for line in self.log_lines() if line[0] == "after-run"], [])

    def test_a_thread_in_the_template_is_warned_about_in_each_worker(self):
        template, ready = self.start(env={"PRELOAD_THREAD": "1"})
        self.assertEqual(ready["threads"], 2)
        w = template.fork()
        w.recv()
        text = w.stderr.wait_for("background-loader")
        self.assertIn("snakepit: the template had 2 threads when it forked", text)
        self.assertIn("background-loader", text)
        self.assertIn("@worker.after_fork", text)
        self.assertIn("docs/preload.md", text)

    def test_a_socket_in_the_template_is_warned_about_in_each_worker(self):
        template, _ = self.start(env={"PRELOAD_SOCKET": "1"})
        w = template.fork()
        w.recv()
        text = w.stderr.wait_for("socket(s) open")
        self.assertIn("snakepit: the template had 2 socket(s) open when it forked", text)
        self.assertIn("@worker.after_fork", text)

    def test_cuda_initialised_in_the_template_is_warned_about_in_each_worker(self):
        template, _ = self.start(env={"PRELOAD_FAKE_TORCH": "1"})
        w = template.fork()
        w.recv()
        text = w.stderr.wait_for("CUDA")
        self.assertIn("snakepit: CUDA was initialised in the template", text)
        self.assertIn("docs/preload.md", text)

    def test_a_hook_that_raises_ends_the_worker_with_status_1(self):
        template, _ = self.start(env={"PRELOAD_HOOK_RAISE": "1"})
        w = template.fork()
        status = template.expect("exited", pid=w.pid)["status"]
        self.assertTrue(os.WIFEXITED(status), status)
        self.assertEqual(os.WEXITSTATUS(status), 1)
        text = w.stderr.wait_eof()
        self.assertIn("after_fork hook second raised", text)
        self.assertIn("RuntimeError: the database is down", text)
        self.assertIn("Traceback", text)
        # The template lives on and forks again.
        again = template.fork()
        self.assertNotEqual(again.pid, w.pid)

    def test_bad_messages_get_fork_failed_and_the_template_survives(self):
        template, _ = self.start()
        r, w = os.pipe()
        r2, w2 = os.pipe()
        # Not JSON, not an object, unknown op: logged, no reply.
        template.send(b"\xff not json")
        template.send(b"[1, 2]")
        template.send({"op": "dance"})
        # Fork requests that cannot be served: fork_failed, fds closed.
        template.send({"op": "fork", "id": 10, "env": {}}, [r, w])
        template.send({"op": "fork", "id": 11, "env": ["A=b"]}, [r, w, w2])
        template.send({"op": "fork", "id": 12, "env": {"A": 1}}, [r, w, w2])
        template.send({"op": "fork", "id": 13, "env": {}}, [r, w, w2, w2])
        template.send({"op": "fork", "id": 16, "env": {}}, [w2] * 20)
        # Without an integer id there is nothing to answer under: logged,
        # no reply (as in the Ruby template).
        for bad_id in ({}, {"id": "7"}, {"id": 1.5}, {"id": True}, {"id": None}):
            template.send({"op": "fork", "env": {}, **bad_id}, [r, w, w2])
        template.send({"op": "fork", "id": 14, "env": {}})
        # Served: stdin from r, stdout and stderr to w2.
        template.send({"op": "fork", "id": 15, "env": {}}, [r, w2, w2])
        template.send(b"{" + b" " * 70000 + b"}", [r, w, w2])
        for rid, needle in ((10, "2 descriptors"), (11, "env"), (12, "env"), (13, "with 4 descriptors"), (16, "more than 16"),
                            (14, "0 descriptors")):
            msg = template.next_message()
            self.assertEqual(msg["op"], "fork_failed", msg)
            self.assertEqual(msg["id"], rid, msg)
            self.assertIn(needle, msg["error"])
        forked = template.next_message()
        self.assertEqual((forked["op"], forked["id"]), ("forked", 15), forked)
        # The template closed every descriptor it got: w's copies came only
        # with failed requests; w2's also with 15, whose worker holds them
        # (as 1, 2 and the saved frame descriptor) until it ends.
        os.close(w)
        os.close(w2)
        self.assertTrue(reaches_eof(r))
        # So 15's stdin is at end of file: it ends.
        self.assertEqual(template.expect("exited", pid=forked["pid"])["status"], 0)
        self.assertTrue(reaches_eof(r2))
        os.close(r)
        os.close(r2)
        output = template.output.wait_for("longer than")
        self.assertEqual(output.count("without an integer id"), 5, output)
        for needle in ("not JSON", "not a JSON object", "unknown op 'dance'", "longer than 65536 bytes"):
            self.assertIn(needle, output)
        # Still serving.
        fresh = template.fork()
        self.assertEqual(fresh.recv()["pid"], fresh.pid)

    def test_a_null_env_is_an_empty_one(self):
        # docs/preload.md: "a missing `env` is `{}`"; a null one too, as in
        # the Ruby template.
        template, _ = self.start()
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        template.send({"op": "fork", "id": 99, "env": None}, [stdin_r, stdout_w, stderr_w])
        for fd in (stdin_r, stdout_w, stderr_w):
            os.close(fd)
        msg = template.expect("forked", id=99)
        worker = ForkedWorker(msg["pid"], stdin_w, stdout_r, stderr_r, template.codec)
        template.workers.append(worker)
        self.addCleanup(worker.stop)
        self.assertEqual(worker.recv()["pid"], msg["pid"])

    def test_stdin_not_a_socket_with_preload_set_is_a_clear_error(self):
        env = dict(os.environ, SNAKEPIT_PRELOAD="1", PYTHONPATH=BRIDGE_DIR, PRELOAD_LOG=self.log_path)
        proc = subprocess.run([sys.executable, PRELOAD_WORKER], stdin=subprocess.PIPE,
                              capture_output=True, env=env, timeout=TIMEOUT)
        self.assertEqual(proc.returncode, 1)
        self.assertIn(b"stdin is not", proc.stderr)
        self.assertIn(b"docs/preload.md", proc.stderr)


    def test_run_from_another_thread_exits_1_with_a_clear_message(self):
        # README: "`run()` must be called from the main thread in a preloaded
        # pool". The script's main thread would go on (and exit 0) after the
        # thread ends: the template must end the process itself.
        script = self.log_path + ".py"
        with open(script, "w") as f:
            f.write("import threading\n"
                    "import snakepit_bridge\n"
                    "worker = snakepit_bridge.Worker()\n"
                    "thread = threading.Thread(target=worker.run)\n"
                    "thread.start()\n"
                    "thread.join()\n"
                    "print('the main thread went on', flush=True)\n")
        self.addCleanup(os.unlink, script)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.addCleanup(ours.close)
        env = dict(os.environ, SNAKEPIT_PRELOAD="1", PYTHONPATH=BRIDGE_DIR)
        with theirs:
            proc = subprocess.run([sys.executable, script], stdin=theirs, capture_output=True, env=env,
                                  timeout=TIMEOUT)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn(b"worker.run() must be called from the main thread in a preloaded pool", proc.stderr)
        self.assertEqual(proc.stdout, b"")
        # No ready: the pool is told nothing but the end of the socket.
        ours.setblocking(False)
        self.assertEqual(ours.recv(65536), b"")


def fd_links(pid):
    """What each of a process's descriptors refers to ("pipe:[N]", ...)."""
    links = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            pass  # closed meanwhile
    return links


def kill_quietly(pidfd):
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass


def reaches_eof(fd):
    """True once every writer of the pipe fd reads from has closed it."""
    while True:
        ready, _, _ = select.select([fd], [], [], TIMEOUT)
        if not ready:
            return False
        if not os.read(fd, 65536):
            return True


class DirectWorkerTests(unittest.TestCase):
    """The same script without preloading: the hooks run too."""

    def setUp(self):
        fd, self.log_path = tempfile.mkstemp(prefix="snakepit-direct-", suffix=".log")
        os.close(fd)
        self.addCleanup(os.unlink, self.log_path)

    def test_a_directly_started_worker_runs_the_hooks_before_its_first_call(self):
        w = WorkerProcess(PRELOAD_WORKER, env={"PRELOAD_LOG": self.log_path}, args=())
        self.addCleanup(w.stop)
        self.assertEqual(w.recv()["type"], "hello")
        state = w.call(1, "state")["result"]
        pid = w.proc.pid
        self.assertEqual(state["hooks"], [["first", pid], ["second", pid, True]])
        self.assertEqual(state["frozen"], 0)
        w.close_stdin()
        self.assertEqual(w.wait(), 0)

    def test_a_hook_that_raises_in_a_directly_started_worker_exits_1(self):
        w = WorkerProcess(PRELOAD_WORKER, env={"PRELOAD_LOG": self.log_path, "PRELOAD_HOOK_RAISE": "1"},
                          args=())
        self.addCleanup(w.stop)
        self.assertEqual(w.wait(), 1)
        self.assertIsNone(w.recv())  # not even hello: the hooks run first


if __name__ == "__main__":
    unittest.main()
