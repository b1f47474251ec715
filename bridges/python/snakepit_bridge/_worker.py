"""The Worker: its command registry, its after-fork hooks, what it declares
in ``hello``, and ``run()``, which serves with the sync loop (``_sync``: only
plain functions, max_concurrency 1) or the asyncio loop (``_async``: any
``async def`` handler, or max_concurrency > 1), or, with
``SNAKEPIT_PRELOAD=1``, becomes the template that forks workers
(``_preload``, docs/preload.md)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, NoReturn, Optional, TypeVar, overload

from . import _wire
from ._handler import Handler
from ._ping import PYTHON_VERSION, ping
from ._server import protect_stdin, protect_stdout, serving
from ._sync import SyncServer
from ._version import __version__

F = TypeVar("F", bound=Callable[..., Any])
H = TypeVar("H", bound=Callable[..., Any])

_RUNTIMES = {"cpython": "CPython", "pypy": "PyPy"}


# The hello declares max_concurrency as an unsigned 32-bit number: more is
# taken as that many (no pool runs more calls at once on one worker).
_MAX_CONCURRENCY = 2**32 - 1


def _concurrency(value: Optional[int]) -> Optional[int]:
    """``max_concurrency`` as given, checked: None, or a whole number of at
    least 1 (above 2**32 - 1 taken as that). Anything else raises at once,
    where the worker is made, rather than declaring a number the pool
    refuses or serving one call at a time without a word."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_concurrency must be a whole number or None, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"max_concurrency must be at least 1, not {value}")
    return min(value, _MAX_CONCURRENCY)


class Worker:
    """A Snakepit worker: register commands, then ``run()``.

    ``codec``: "json", "msgpack" or None (read SNAKEPIT_CODEC).
    ``max_concurrency``: None picks 1 for plain functions and 8 once an
    ``async def`` handler is registered; > 1 forces the asyncio loop.

    ``max_frame_size`` is the pool's limit on a frame's payload, in bytes,
    read from ``SNAKEPIT_MAX_FRAME_SIZE`` (64 MiB when it is absent or is no
    positive integer): a reply above it is sent as a failed reply of type
    ``ResultTooLarge``, and a frame from the pool above it is a
    ``ProtocolError``.
    """

    max_frame_size: int

    def __init__(
        self,
        codec: Optional[str] = None,
        max_concurrency: Optional[int] = None,
        name: str = "snakepit-python",
        version: str = __version__,
    ) -> None:
        self._codec_name = codec
        self.codec = _wire.get_codec(codec)
        self.max_concurrency = _concurrency(max_concurrency)
        self.name = name
        self.version = version
        self.worker_id: Optional[str] = os.environ.get("SNAKEPIT_WORKER_ID") or None
        self._read_frame_limit()
        self.started_at = time.time()
        self._t0 = time.monotonic()
        self.requests_handled = 0
        self.pid = os.getpid()
        self._handlers: dict[str, Handler] = {}
        # (hook, takes_worker) in registration order, and the process they
        # last ran in: they run once per process.
        self._after_fork: list[tuple[Callable[..., Any], bool]] = []
        self._hooks_ran_in: Optional[int] = None
        self.register("ping", ping)

    def _refresh_process(self) -> None:
        """Re-read what the constructor took from the process and its
        environment: a forked worker is a new process with its own
        environment (SNAKEPIT_WORKER_ID, SNAKEPIT_CODEC...)."""
        self.codec = _wire.get_codec(self._codec_name)
        self.worker_id = os.environ.get("SNAKEPIT_WORKER_ID") or None
        self._read_frame_limit()
        self.started_at = time.time()
        self._t0 = time.monotonic()
        self.requests_handled = 0
        self.pid = os.getpid()

    def _read_frame_limit(self) -> None:
        """Read ``max_frame_size`` from SNAKEPIT_MAX_FRAME_SIZE. A value that
        is no positive integer is the default, never an error: the reason
        is kept for one line on stderr when the worker serves."""
        self.max_frame_size, self._frame_limit_note = _wire.frame_limit(
            os.environ.get("SNAKEPIT_MAX_FRAME_SIZE"))

    # --- registry ------------------------------------------------------------

    @overload
    def command(self, name: F) -> F: ...

    @overload
    def command(self, name: Optional[str] = None) -> Callable[[F], F]: ...

    def command(self, name: Any = None) -> Any:
        """Decorator registering ``def handler(args, ctx)`` (or ``(args)``,
        or ``async def``) under ``name`` (default: the function's name)."""
        if callable(name):
            fn = name
            self.register(fn.__name__, fn)
            return fn

        def decorate(fn: F) -> F:
            self.register(name or fn.__name__, fn)
            return fn

        return decorate

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        # Refused here, not when called: no request can name a command
        # that is not a string (and ``commands`` could not sort it).
        if not isinstance(name, str):
            raise TypeError(f"a command's name is a str, not {type(name).__name__}")
        if not callable(fn):
            raise TypeError(f"register takes a function, not {type(fn).__name__}")
        self._handlers[name] = Handler(fn)

    def after_fork(self, fn: H) -> H:
        """Decorator (or plain call) registering ``fn`` to run once in each
        worker process before it serves its first call.

        ``fn`` takes no argument, or the worker. Hooks run in registration
        order: in a worker forked from a preloaded template (docs/preload.md)
        and in a directly started worker alike, so a script works either
        way. Put there what must not be shared between processes: threads,
        sockets and connections, GPU contexts, random generators other than
        ``random``. A hook that raises ends the worker (traceback on stderr,
        exit status 1).
        """
        if not callable(fn):
            raise TypeError(f"after_fork takes a function, not {type(fn).__name__}")
        self._after_fork.append((fn, _takes_worker(fn)))
        return fn

    def _run_after_fork(self) -> None:
        """Run the after-fork hooks, once per process; a hook that raises
        writes its traceback to stderr and exits with status 1."""
        pid = os.getpid()
        if self._hooks_ran_in == pid:
            return
        self._hooks_ran_in = pid
        for fn, takes_worker in self._after_fork:
            try:
                if takes_worker:
                    fn(self)
                else:
                    fn()
            except Exception:
                import traceback

                name = getattr(fn, "__qualname__", repr(fn))
                try:
                    sys.stderr.write(f"snakepit: the after_fork hook {name} raised; the worker exits\n")
                    traceback.print_exc()
                    sys.stderr.flush()
                except (OSError, ValueError):
                    pass
                raise SystemExit(1) from None

    @property
    def commands(self) -> list[str]:
        return sorted(self._handlers)

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._t0

    @property
    def is_async(self) -> bool:
        """True when run() will use the asyncio loop."""
        if self.max_concurrency is not None and self.max_concurrency > 1:
            return True
        return any(handler.is_async for handler in self._handlers.values())

    def capabilities(self) -> dict[str, Any]:
        if self.is_async:
            conc = self.max_concurrency or 8
            return {"max_concurrency": conc, "cancel": True, "sigint": False,
                    "streaming": True, "host_calls": True}
        # The main thread only sees cancel frames between requests (or while
        # waiting for a host reply), so only SIGINT is promised for a running
        # request. A request written ahead (pipeline) that is cancelled
        # before it starts is dropped (see SyncServer._read_ahead).
        return {"max_concurrency": 1, "cancel": False, "sigint": True,
                "streaming": True, "host_calls": True, "pipeline": True}

    def hello(self) -> dict[str, Any]:
        impl = sys.implementation.name
        runtime = f"{_RUNTIMES.get(impl, impl)} {PYTHON_VERSION}"
        return {"type": "hello", "protocol": _wire.PROTOCOL_VERSION, "pid": self.pid,
                "bridge": f"{self.name}/{self.version}", "runtime": runtime,
                "capabilities": self.capabilities()}

    # --- running ---------------------------------------------------------------

    def run(self, read_fd: int = 0, write_fd: Optional[int] = None, install_signals: bool = True) -> int:
        """Serve requests until stdin reaches EOF; returns the exit code (0).

        By default stdout is protected first (see protect_stdout) and frames
        go to the saved descriptor; with ``read_fd`` 0 frames are read from
        a duplicate of stdin and descriptor 0 then reads /dev/null, so that
        subprocesses and code reading stdin cannot take the pool's frames.
        The after-fork hooks run before the first request.

        With ``SNAKEPIT_PRELOAD=1`` in the environment (a pool started with
        preloading) this process is the template instead: it never serves
        and never returns; it forks the pool's workers, which serve from
        here and exit when done (docs/preload.md).
        """
        if os.environ.get("SNAKEPIT_PRELOAD") == "1":
            self._become_template(install_signals)
        self.pid = os.getpid()
        out_fd = protect_stdout() if write_fd is None else write_fd
        if read_fd == 0:
            # Frames are read from a duplicate; descriptor 0 reads /dev/null.
            read_fd = protect_stdin()
        self._run_after_fork()
        return self._serve(read_fd, out_fd, install_signals)

    def _become_template(self, install_signals: bool) -> NoReturn:
        from ._preload import serve_template

        serve_template(self, install_signals)

    def _serve(self, read_fd: int, out_fd: int, install_signals: bool) -> int:
        with serving():
            if self.is_async:
                # Imported here: asyncio costs start-up time a sync worker need not pay.
                from ._async import AsyncServer

                return AsyncServer(self, read_fd, out_fd).serve(install_signals)
            return SyncServer(self, read_fd, out_fd).serve(install_signals)


def _takes_worker(fn: Callable[..., Any]) -> bool:
    """Whether an after-fork hook is called with the worker."""
    code = getattr(fn, "__code__", None)
    if code is not None:
        argc = code.co_argcount - len(getattr(fn, "__defaults__", None) or ())
        if getattr(fn, "__self__", None) is not None:
            argc -= 1  # bound method: self is already supplied
        return bool(argc >= 1)
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
               for p in params)
