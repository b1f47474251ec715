"""What a handler gets: the request's Context and its Session helpers, and
the two exceptions a handler meets (Cancelled, HostCallError)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import logging

    from ._server import Server
    from ._worker import Worker


class Cancelled(Exception):
    """The request was cancelled (``cancel`` frame or SIGINT).

    Handlers may raise it themselves after seeing ``ctx.cancelled``; the
    reply is then a failed reply of type ``Cancelled``.
    """


class ResultTooLarge(Exception):
    """A frame would be larger than the pool reads (``SNAKEPIT_MAX_FRAME_SIZE``).

    ``ctx.emit`` raises it for a chunk that large, and the call's stream
    ends there: later chunks are not sent, and the call's reply is a failed
    reply of type ``ResultTooLarge`` whatever the handler returns. A result
    that large needs no exception: the reply is a failed reply of this
    type. (Host call arguments that large raise HostCallError of type
    ``ResultTooLarge``, as any failed host call does.)
    """


class HostCallError(Exception):
    """A ``host_call`` that the pool answered with a failure.

    ``type`` is the error type the host gave (e.g. ``UnknownFunction``).
    """

    def __init__(self, type: str, message: str) -> None:
        super().__init__(f"{type}: {message}")
        self.type = type
        self.message = message


class Session:
    """Session store helpers, built on host calls (``session.get`` & co)."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def get(self, key: str) -> Any:
        return self._ctx.call_host("session.get", {"key": key})

    def set(self, key: str, value: Any) -> Any:
        return self._ctx.call_host("session.set", {"key": key, "value": value})

    def delete(self, key: str) -> Any:
        return self._ctx.call_host("session.delete", {"key": key})

    async def aget(self, key: str) -> Any:
        return await self._ctx.acall_host("session.get", {"key": key})

    async def aset(self, key: str, value: Any) -> Any:
        return await self._ctx.acall_host("session.set", {"key": key, "value": value})

    async def adelete(self, key: str) -> Any:
        return await self._ctx.acall_host("session.delete", {"key": key})


class Context:
    """What a handler knows about the request it serves.

    Attributes: ``request_id``, ``command``, ``session_id`` (or None),
    ``worker_id`` (or None), ``traceparent``/``tracestate``/``baggage`` (or None),
    ``stream`` (the caller consumes chunks), ``timeout_ms`` (an int >= 0, or None),
    ``cancelled`` (set by a cancel frame or SIGINT), ``worker``. A request
    field of the wrong type (a ``session_id`` that is no string) reads as None.
    """

    __slots__ = (
        "worker", "request_id", "command", "session_id", "traceparent", "tracestate", "baggage",
        "stream", "timeout_ms", "cancelled", "_server", "_logger", "_done", "_started",
        "_too_large",
    )

    worker: Worker
    request_id: int
    command: str
    session_id: Optional[str]
    traceparent: Optional[str]
    tracestate: Optional[str]
    baggage: Optional[str]
    stream: bool
    timeout_ms: Optional[int]
    cancelled: bool

    def __init__(self, server: Server, rid: int, command: str, msg: dict[str, Any]) -> None:
        self._server = server
        self.worker = server.worker
        self.request_id = rid
        self.command = command
        get = msg.get
        # An optional field of another type than the protocol's is absent
        # (a bool is no timeout, a MessagePack bin no string).
        value = get("session_id")
        self.session_id = value if type(value) is str else None
        value = get("traceparent")
        self.traceparent = value if type(value) is str else None
        value = get("tracestate")
        self.tracestate = value if type(value) is str else None
        value = get("baggage")
        self.baggage = value if type(value) is str else None
        self.stream = get("stream") is True
        value = get("timeout_ms")
        self.timeout_ms = value if type(value) is int and value >= 0 else None
        self.cancelled = False
        # Set just before the final reply is sent, and on cancel: from then
        # on emit() sends nothing (no chunk may follow the final reply).
        self._done = False
        # A plain function of the asyncio loop began on its thread.
        self._started = False
        # The message of the chunk too large to send (ResultTooLarge): the
        # stream ended there, and the reply says so.
        self._too_large: Optional[str] = None
        self._logger: Optional[logging.LoggerAdapter[logging.Logger]] = None

    @property
    def worker_id(self) -> Optional[str]:
        return self.worker.worker_id

    @property
    def session(self) -> Session:
        return Session(self)

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A ``logging`` logger writing to stderr, tagged with the request id."""
        if self._logger is None:
            self._logger = _request_logger(self.request_id)
        return self._logger

    def check_cancelled(self) -> None:
        """Raise Cancelled if the request was cancelled."""
        if self.cancelled:
            raise Cancelled(f"request {self.request_id} was cancelled")

    def emit(self, data: Any) -> bool:
        """Send a partial result as a ``chunk`` frame.

        Returns False (and sends nothing) when the caller did not ask for a
        stream (the pool would drop the chunk anyway), and once the call is
        over: its final reply was sent, or it was cancelled (a task or thread
        the handler left behind may still be emitting), or a chunk before
        was too large. A chunk whose frame would be larger than the pool
        reads raises ResultTooLarge, and ends the stream: the call's reply
        is then a failed reply of that type.
        """
        if self._done or self.cancelled or not self.stream or self._too_large is not None:
            return False
        try:
            return self._server.send_chunk(self, data)
        except ResultTooLarge as exc:
            self._too_large = str(exc)
            raise

    send_chunk = emit

    def call_host(self, function: str, args: Optional[dict[str, Any]] = None) -> Any:
        """Run a function the host registered and return its result.

        Blocks until the matching ``host_reply``; a failed reply raises
        HostCallError. In an ``async def`` handler use ``await acall_host``.
        Arguments whose frame would be larger than the pool reads raise
        HostCallError of type ``ResultTooLarge``, and nothing is sent.
        Works from any thread the handler starts, while its call runs; once
        the call was answered or cancelled it raises Cancelled (so does a
        host call still waiting then), and nothing reaches the host.
        """
        return self._server.call_host(self, function, {} if args is None else args)

    async def acall_host(self, function: str, args: Optional[dict[str, Any]] = None) -> Any:
        """``call_host`` for async handlers."""
        return await self._server.acall_host(self, function, {} if args is None else args)


_adapter_class: Optional[type[logging.LoggerAdapter[logging.Logger]]] = None


def _request_logger(request_id: int) -> logging.LoggerAdapter[logging.Logger]:
    """A LoggerAdapter that prefixes messages with the request id.

    ``logging`` is imported on first use only: it costs start-up time and
    memory that a worker which never logs should not pay.
    """
    global _adapter_class
    import logging

    if _adapter_class is None:
        logger = logging.getLogger("snakepit_bridge")
        if not logging.getLogger().handlers and not logger.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)

        class _RequestAdapter(logging.LoggerAdapter):
            def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
                return f"[req {self.extra['request_id']}] {msg}", kwargs  # type: ignore[index]

        _adapter_class = _RequestAdapter
    return _adapter_class(logging.getLogger("snakepit_bridge"), {"request_id": request_id})
