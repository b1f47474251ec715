"""The Worker: its command registry, what it declares in ``hello``, and
``run()``, which serves with the sync loop (``_sync``: only plain functions,
max_concurrency 1) or the asyncio loop (``_async``: any ``async def``
handler, or max_concurrency > 1)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Optional, TypeVar, overload

from . import _wire
from ._handler import Handler
from ._ping import PYTHON_VERSION, ping
from ._server import protect_stdout
from ._sync import SyncServer
from ._version import __version__

F = TypeVar("F", bound=Callable[..., Any])

_RUNTIMES = {"cpython": "CPython", "pypy": "PyPy"}


class Worker:
    """A Snakepit worker: register commands, then ``run()``.

    ``codec``: "json", "msgpack" or None (read SNAKEPIT_CODEC).
    ``max_concurrency``: None picks 1 for plain functions and 8 once an
    ``async def`` handler is registered; > 1 forces the asyncio loop.
    """

    def __init__(
        self,
        codec: Optional[str] = None,
        max_concurrency: Optional[int] = None,
        name: str = "snakepit-python",
        version: str = __version__,
    ) -> None:
        self.codec = _wire.get_codec(codec)
        self.max_concurrency = max_concurrency
        self.name = name
        self.version = version
        self.worker_id: Optional[str] = os.environ.get("SNAKEPIT_WORKER_ID") or None
        self.started_at = time.time()
        self._t0 = time.monotonic()
        self.requests_handled = 0
        self.pid = os.getpid()
        self._handlers: dict[str, Handler] = {}
        self.register("ping", ping)

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
        self._handlers[name] = Handler(fn)

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
        go to the saved descriptor.
        """
        self.pid = os.getpid()
        out_fd = protect_stdout() if write_fd is None else write_fd
        if self.is_async:
            # Imported here: asyncio costs start-up time a sync worker need not pay.
            from ._async import AsyncServer

            return AsyncServer(self, read_fd, out_fd).serve(install_signals)
        return SyncServer(self, read_fd, out_fd).serve(install_signals)
