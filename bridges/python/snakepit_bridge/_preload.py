"""The template of a preloaded pool (docs/preload.md).

With ``SNAKEPIT_PRELOAD=1``, ``Worker.run()`` comes here instead of serving.
The script's module-level code (imports, model loading) has run once; this
process now forks the pool's workers on request. Its stdin (descriptor 0) is
a ``SOCK_SEQPACKET`` Unix socket to the pool: one JSON object per datagram.

- to the pool: ``ready`` once, ``forked`` / ``fork_failed`` per fork
  request, ``exited`` (the raw wait status) for each worker reaped;
- from the pool: ``fork`` with an ``id``, an ``env`` map and exactly three
  descriptors (``SCM_RIGHTS``): the worker's stdin, stdout and stderr.

A forked worker takes those three descriptors as 0, 1 and 2, applies the
environment, refreshes the Worker, writes what did not survive the fork
(threads, sockets, a CUDA context) to its stderr, runs the after-fork hooks
and serves exactly as a directly started worker does; then it runs the exit
handlers registered in it (not the template's) and exits, never returning
into the script. The template reaps its workers as they exit
(``SIGCHLD`` wakes its loop) and exits 0 when the socket reaches end of
file, leaving its workers to the pool.
"""

from __future__ import annotations

import array
import errno
import gc
import json
import os
import random
import selectors
import signal
import socket
import sys
import threading
import traceback
import warnings
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Optional, Union

from . import _server

if TYPE_CHECKING:
    from ._worker import Worker

# A message from the pool is at most 64 KiB (docs/preload.md).
MAX_MESSAGE = 64 * 1024
# Room for more descriptors than the three a fork request carries, so a
# message with too many is seen (and all of them closed) rather than
# silently cut.
_MAX_FDS = 16
_DOCS = "see docs/preload.md"

_Handler = Union[Callable[[int, Any], Any], int, None]


class _BadMessage(Exception):
    """A message from the pool that cannot be acted on."""


def serve_template(worker: Worker, install_signals: bool) -> NoReturn:
    """Be the template: fork a worker per request from the pool, until the
    pool's socket closes. Never returns."""
    try:
        sock = socket.socket(fileno=0)
    except OSError as exc:
        _server.log(f"SNAKEPIT_PRELOAD=1 but stdin is not the pool's socket ({exc}); "
                    "a preloaded worker is started by a pool (docs/preload.md)")
        raise SystemExit(1) from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
        sock.detach()
        _server.log("SNAKEPIT_PRELOAD=1 but stdin is not a SOCK_SEQPACKET Unix socket; "
                    "a preloaded worker is started by a pool (docs/preload.md)")
        raise SystemExit(1)
    _Template(worker, sock, install_signals).run()


class _Template:
    def __init__(self, worker: Worker, sock: socket.socket, install_signals: bool) -> None:
        self.worker = worker
        self.sock = sock
        self.install_signals = install_signals
        self.children: set[int] = set()
        self.frozen = False
        self.selector = selectors.DefaultSelector()
        self.wake_r = -1
        self.wake_w = -1
        self.saved_sigchld: _Handler = None
        self.saved_sigint: _Handler = None

    # --- the loop ----------------------------------------------------------------

    def run(self) -> NoReturn:
        try:
            # SIGCHLD writes to the wakeup pipe, which wakes the loop: a
            # worker is reaped as soon as it exits, with no polling.
            self.wake_r, self.wake_w = os.pipe()
            os.set_blocking(self.wake_r, False)
            os.set_blocking(self.wake_w, False)
            self.saved_sigchld = signal.signal(signal.SIGCHLD, _on_sigchld)
            signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        except ValueError:
            # Signals can only be set from the main thread. SystemExit would
            # end only this thread (the script's main thread going on), so
            # the process ends here.
            _server.log("worker.run() must be called from the main thread in a preloaded pool")
            self.exit(1)
        if self.install_signals:
            # Like a worker between requests: a stray Ctrl-C does not kill it.
            self.saved_sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.selector.register(self.sock, selectors.EVENT_READ)
        self.selector.register(self.wake_r, selectors.EVENT_READ)
        self.send({"op": "ready", "pid": os.getpid(), "threads": _thread_count()})
        while True:
            for key, _ in self.selector.select():
                if key.fd == self.wake_r:
                    _server.drain(self.wake_r)
                    self.reap()
                elif not self.receive():
                    self.exit(0)

    def exit(self, status: int) -> NoReturn:
        """End the template without touching its workers (the pool stops
        them) and without running the script's exit handlers, which were
        meant for one process, not for the template of many."""
        _flush_stdio()
        os._exit(status)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.sock.send(json.dumps(message).encode("utf-8"))
        except OSError as exc:
            # The pool is gone: nobody is left to fork for.
            _server.log(f"template: the pool's socket failed ({exc}); exiting")
            self.exit(0)

    def reap(self) -> None:
        for pid in sorted(self.children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                # Reaped by someone else (a thread of the script): the
                # pool learns of the exit from its pidfd.
                self.children.discard(pid)
                continue
            if done == 0:
                continue
            self.children.discard(pid)
            self.send({"op": "exited", "pid": pid, "status": status})

    # --- messages from the pool ------------------------------------------------------

    def receive(self) -> bool:
        """Read and act on one message; False at end of file."""
        try:
            data, fds, flags = _recv_with_fds(self.sock)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError as exc:
            _server.log(f"template: reading the pool's socket failed ({exc}); exiting")
            return False
        if not data and not fds:
            return False
        try:
            self.handle(data, fds, flags)
        except Exception as exc:  # never let bad input end the template
            _close_all(fds)
            _server.log(f"template: a message from the pool failed: {exc!r}\n{traceback.format_exc()}")
        return True

    def handle(self, data: bytes, fds: list[int], flags: int) -> None:
        msg: Optional[dict[str, Any]] = None
        try:
            if flags & socket.MSG_TRUNC:
                raise _BadMessage(f"message longer than {MAX_MESSAGE} bytes")
            try:
                value = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise _BadMessage(f"message is not JSON in UTF-8 ({exc})") from None
            if not isinstance(value, dict):
                raise _BadMessage(f"message is not a JSON object: {data[:200]!r}")
            msg = value
            op = msg.get("op")
            if op != "fork":
                raise _BadMessage(f"unknown op {op!r} (the pool sends only \"fork\")")
            rid = msg.get("id")
            if not isinstance(rid, int) or isinstance(rid, bool):
                # No id to answer under: logged and dropped, as in Ruby.
                msg = None
                raise _BadMessage(f"fork request without an integer id: {data[:200]!r}")
            # A missing or null env is {}.
            env = msg.get("env")
            if env is None:
                env = {}
            if not isinstance(env, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v
                    for k, v in env.items()):
                raise _BadMessage("fork request's env is not an object of variable names to strings")
            if flags & socket.MSG_CTRUNC or len(fds) != 3:
                more = "more than %d" % len(fds) if flags & socket.MSG_CTRUNC else str(len(fds))
                raise _BadMessage(f"fork request with {more} descriptors attached, not 3 (stdin, stdout, stderr)")
        except _BadMessage as exc:
            _close_all(fds)
            _server.log(f"template: bad message from the pool: {exc}")
            if msg is not None and msg.get("op") == "fork":
                self.send({"op": "fork_failed", "id": msg.get("id"), "error": str(exc)})
            return
        self.fork(msg["id"], env, fds)

    # --- forking ---------------------------------------------------------------------

    def fork(self, rid: Any, env: dict[str, str], fds: list[int]) -> None:
        notes = _template_warnings()
        _flush_stdio()
        if not self.frozen:
            # The template's objects move out of the collector's sight: a
            # collection in a worker would otherwise write to (and so copy)
            # every page they live on.
            gc.freeze()
            self.frozen = True
        try:
            with warnings.catch_warnings():
                # Python 3.12 warns about forking with threads; the worker
                # gets our own warning, which says what to do.
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except OSError as exc:
            _close_all(fds)
            _server.log(f"template: fork failed: {exc}")
            self.send({"op": "fork_failed", "id": rid, "error": f"fork failed: {exc}"})
            return
        if pid == 0:
            self.child(env, fds, notes)
        self.children.add(pid)
        try:
            os.setpgid(pid, pid)
        except OSError as exc:
            # The child got there first and ran further (EACCES), or is
            # already gone (ESRCH): it is reaped and reported as usual.
            if exc.errno not in (errno.EACCES, errno.ESRCH):
                _server.log(f"template: setpgid({pid}) failed: {exc}")
        _close_all(fds)
        self.send({"op": "forked", "id": rid, "pid": pid})

    def child(self, env: dict[str, str], fds: list[int], notes: list[str]) -> NoReturn:
        """The forked worker: from here it never returns into the template's
        code; it serves, then exits."""
        status = 1
        try:
            try:
                os.setpgid(0, 0)
            except OSError:
                pass  # the template does it too
            self.leave_template(fds)
            for name, value in env.items():
                os.environ[name] = value
            # Last: a worker is never a template, nor are its subprocesses.
            os.environ.pop("SNAKEPIT_PRELOAD", None)
            for name in ("_frame_fd", "_frame_in_fd"):
                stale = getattr(_server, name)
                if stale is not None:
                    # The script protected stdout (or stdin) in the
                    # template: that was the template's, not this worker's
                    # frame pipe.
                    setattr(_server, name, None)
                    if stale > 2:
                        _close_quietly(stale)
            worker = self.worker
            worker._refresh_process()
            random.seed()
            # The template's exit handlers are not this worker's: a handler
            # removing a file the template made would run in every worker.
            # Those registered from here on (by the hooks, the handlers) run
            # when this worker exits.
            _atexit_call("_clear")
            notes.extend(_socket_warnings())
            for note in notes:
                sys.stderr.write(note + "\n")
            sys.stderr.flush()
            # What run() does in a directly started worker.
            out_fd = _server.protect_stdout()
            in_fd = _server.protect_stdin()
            worker._run_after_fork()
            status = worker._serve(in_fd, out_fd, self.install_signals)
        except SystemExit as exc:
            status = _exit_status(exc.code)
        except BaseException:
            try:
                traceback.print_exc()
            except (OSError, ValueError):
                pass
            status = 1
        finally:
            try:
                _atexit_call("_run_exitfuncs")
                _flush_stdio()
            finally:
                # Whatever those raise (a second signal, a flush re-entering
                # a write a signal interrupted), the worker never goes back
                # into the template's code.
                os._exit(status)

    def leave_template(self, fds: list[int]) -> None:
        """Take the pool's three descriptors as 0, 1 and 2 and drop what
        belongs to the template: its socket, its wakeup pipe, its SIGCHLD
        handler."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, _restorable(self.saved_sigchld))
        if self.install_signals:
            signal.signal(signal.SIGINT, _restorable(self.saved_sigint))
        self.selector.close()
        for fd in (self.wake_r, self.wake_w):
            _close_quietly(fd)
        # Out of the way of 0-2 first, in case one of them arrived there.
        import fcntl

        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3) for fd in fds]
        _close_all(fds)
        self.sock.detach()  # fd 0: replaced by dup2 below
        for target, fd in enumerate(high):
            os.dup2(fd, target)  # inheritable: subprocesses get the worker's stdio
        _close_all(high)


def _on_sigchld(signum: int, frame: Any) -> None:
    pass  # the wakeup pipe wakes the loop, which reaps


def _restorable(handler: _Handler) -> Any:
    return signal.SIG_DFL if handler is None else handler


def _thread_count() -> int:
    """The threads alive in this process: the kernel's count, which holds
    the threads native libraries start (numerical and ML libraries' pools)
    as well as Python's; Python's own count where there is no /proc."""
    try:
        return max(len(os.listdir("/proc/self/task")), threading.active_count())
    except OSError:
        return threading.active_count()


def _template_warnings() -> list[str]:
    """What the template holds that its workers will not have: its other
    threads and a CUDA context. Looked at before the fork (in a child,
    torch already reports CUDA as uninitialised)."""
    notes = []
    count = _thread_count()
    if count > 1:
        me = threading.current_thread()
        names = ", ".join(t.name for t in threading.enumerate() if t is not me)
        native = count - threading.active_count()
        if native > 0:
            names = (names + ", " if names else "") + f"{native} started outside Python (native libraries' pools)"
        notes.append(
            f"snakepit: the template had {count} threads when it forked (other than the main thread: "
            f"{names}); threads do not survive a fork: this worker has only the main thread, and a "
            f"lock another thread held stays locked (start threads in an @worker.after_fork hook; {_DOCS})")
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            cuda = bool(torch.cuda.is_initialized())
        except Exception:
            cuda = False
        if cuda:
            notes.append(
                "snakepit: CUDA was initialised in the template (torch.cuda.is_initialized()); a GPU "
                "context does not survive a fork and is unusable in this worker (load on the CPU and "
                f"move to the GPU in an @worker.after_fork hook, or do not preload; {_DOCS})")
    return notes


def _socket_warnings() -> list[str]:
    """Sockets this worker inherited from the template (its own stdio and
    the template's socket are already dealt with)."""
    try:
        entries = os.listdir("/proc/self/fd")
    except OSError:
        return []  # no /proc: nothing to say
    found = []
    for entry in entries:
        if not entry.isdigit() or int(entry) <= 2:
            continue
        try:
            if os.readlink(f"/proc/self/fd/{entry}").startswith("socket:"):
                found.append(int(entry))
        except OSError:
            continue  # the listing's own descriptor, closed by now
    if not found:
        return []
    listed = ", ".join(str(fd) for fd in sorted(found))
    return [
        f"snakepit: the template had {len(found)} socket(s) open when it forked (descriptors "
        f"{listed} here); every worker shares them and their traffic interleaves (open "
        f"connections in an @worker.after_fork hook; {_DOCS})"]


def _recv_with_fds(sock: socket.socket) -> tuple[bytes, list[int], int]:
    """One datagram, the descriptors attached to it, and recvmsg's flags
    (socket.recv_fds without losing the flags, and on Python 3.8 too)."""
    fds = array.array("i")
    data, ancdata, flags, _ = sock.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(_MAX_FDS * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - (len(payload) % fds.itemsize)])
    return data, list(fds), flags


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        _close_quietly(fd)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _atexit_call(name: str) -> None:
    import atexit

    fn = getattr(atexit, name, None)  # CPython and PyPy have both
    if fn is not None:
        try:
            fn()
        except Exception:
            pass


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError, RuntimeError):
            pass  # closed, or re-entered from a signal handler


def _exit_status(code: Any) -> int:
    """The exit status ``sys.exit(code)`` would give."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        sys.stderr.write(f"{code}\n")
    except (OSError, ValueError):
        pass
    return 1
