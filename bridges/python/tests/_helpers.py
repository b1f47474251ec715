"""Test helpers: a fake pool that speaks frames to a worker."""

import os
import queue
import signal
import subprocess
import sys
import threading
import time

BRIDGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if BRIDGE_DIR not in sys.path:
    sys.path.insert(0, BRIDGE_DIR)

from snakepit_bridge import _wire  # noqa: E402

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
GENERIC_WORKER = os.path.join(BRIDGE_DIR, "generic_worker.py")
EXAMPLE_WORKER = os.path.join(TESTS_DIR, "example_worker.py")
VECTORS = os.path.join(BRIDGE_DIR, "..", "..", "tests", "vectors", "frames.json")

try:
    import msgpack  # noqa: F401

    HAVE_MSGPACK = True
except ImportError:
    HAVE_MSGPACK = False

CODECS = ["json", "msgpack"] if HAVE_MSGPACK else ["json"]


class WorkerProcess:
    """A worker child process driven like the pool drives it."""

    def __init__(self, script, codec="json", env=None, args=("--mode", "pool-worker"),
                 max_frame=_wire.MAX_FRAME_SIZE):
        self.codec = _wire.get_codec(codec)
        # The largest frame read from the worker, as the pool's max_frame_size.
        self.max_frame = max_frame
        child_env = dict(os.environ)
        child_env["SNAKEPIT_CODEC"] = codec
        child_env["SNAKEPIT_PROTOCOL"] = "1"
        child_env.pop("SNAKEPIT_WORKER_ID", None)
        # The pool puts the bridge on the path of user scripts.
        child_env["PYTHONPATH"] = BRIDGE_DIR
        child_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, script] + list(args),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=child_env, bufsize=0,
        )
        self.frames = queue.Queue()
        self.stderr_chunks = []
        self.raw_stdout = bytearray()
        self._readers = [
            (threading.Thread(target=self._read_stdout, daemon=True), self.proc.stdout),
            (threading.Thread(target=self._read_stderr, daemon=True), self.proc.stderr),
        ]
        for thread, _ in self._readers:
            thread.start()

    def _read_stdout(self):
        stream = self.proc.stdout
        while True:
            try:
                payload = _wire.read_frame_from(stream, self.max_frame)
            except _wire.FrameError as exc:
                self.frames.put(exc)
                return
            if payload is None:
                self.frames.put(None)
                return
            self.raw_stdout += payload
            try:
                msg = self.codec.decode(payload)
                _wire.validate(msg, "to_pool")
            except _wire.FrameError as exc:
                msg = exc
            self.frames.put(msg)

    def _read_stderr(self):
        while True:
            data = self.proc.stderr.read(4096)
            if not data:
                return
            self.stderr_chunks.append(data)

    @property
    def stderr(self):
        return b"".join(self.stderr_chunks).decode("utf-8", "replace")

    def send(self, value):
        self.send_raw(_wire.encode_frame(self.codec, value))

    def send_raw(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def request(self, rid, command, args=None, **extra):
        frame = {"id": rid, "command": command, "args": {} if args is None else args,
                 "timestamp": "2026-11-27T12:24:04.051023Z"}
        frame.update(extra)
        self.send(frame)

    def recv(self, timeout=10.0):
        msg = self.frames.get(timeout=timeout)
        if isinstance(msg, Exception):
            raise msg
        return msg

    def call(self, rid, command, args=None, timeout=10.0, **extra):
        """Send a request and return its final response (chunks skipped)."""
        self.request(rid, command, args, **extra)
        while True:
            msg = self.recv(timeout)
            if msg is None:
                raise AssertionError("worker closed stdout; stderr:\n" + self.stderr)
            if msg.get("type") in (None, "response") and msg.get("id") == rid:
                return msg

    def signal(self, signum):
        self.proc.send_signal(signum)

    def close_stdin(self):
        self.proc.stdin.close()

    def wait(self, timeout=10.0):
        return self.proc.wait(timeout)

    def stop(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # A stream is closed only once its reader thread has seen its end.
        # Closed under a reader that is about to read again, its descriptor
        # number could be reused by the next test's pipe, and the old
        # thread would steal that pipe's first bytes. A stream still held
        # open (by a child the worker left) is left open instead.
        for thread, stream in self._readers:
            thread.join(10)
            if thread.is_alive():
                continue
            try:
                stream.close()
            except OSError:
                pass


def run_in_process(worker, frames, codec):
    """Feed encoded frames to worker.run() over pipes; return decoded output.

    The input pipe is closed after the frames, so run() ends at EOF.
    """
    data = b"".join(f if isinstance(f, bytes) else _wire.encode_frame(codec, f) for f in frames)
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    out = bytearray()

    def feed():
        with os.fdopen(w_in, "wb") as f:
            f.write(data)

    def drain():
        while True:
            chunk = os.read(r_out, 65536)
            if not chunk:
                return
            out.extend(chunk)

    threads = [threading.Thread(target=feed), threading.Thread(target=drain)]
    for t in threads:
        t.start()
    try:
        code = worker.run(read_fd=r_in, write_fd=w_out, install_signals=False)
    finally:
        os.close(w_out)
        os.close(r_in)
        for t in threads:
            t.join(10)
        os.close(r_out)
    import io

    stream = io.BytesIO(bytes(out))
    msgs = []
    while True:
        payload = _wire.read_frame_from(stream)
        if payload is None:
            break
        msgs.append(codec.decode(payload))
    return code, msgs


def wait_until(pred, timeout=5.0, interval=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


__all__ = ["WorkerProcess", "run_in_process", "wait_until", "signal", "CODECS", "HAVE_MSGPACK"]
