"""Calling a handler.

How a handler wants to be called (with ``ctx`` or not, ``async def`` or not)
is read once, at registration, into a ``Handler``. ``invoke`` is the one
place that calls it, inside the request's OpenTelemetry span when the
request carries a ``traceparent`` and OpenTelemetry is installed; both serve
loops, and the threads the async loop runs plain handlers on, go through it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable

from ._version import __version__

if TYPE_CHECKING:
    from ._context import Context

_CO_VARARGS = 0x04
_CO_COROUTINE = 0x80


class Handler:
    """A registered command's function and how it is called: ``call(args,
    ctx)`` calls it with or without ``ctx``."""

    __slots__ = ("fn", "takes_ctx", "is_async", "call")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.takes_ctx, self.is_async = describe(fn)
        self.call: Callable[[Any, Context], Any] = fn if self.takes_ctx else (lambda args, ctx: fn(args))


def describe(fn: Callable[..., Any]) -> tuple[bool, bool]:
    """(takes_ctx, is_async) for a handler."""
    code = getattr(fn, "__code__", None)
    # A decorator's ``*args`` wrapper made with functools.wraps takes what
    # the function it wraps takes (inspect.signature reads that one).
    if code is not None and not (code.co_flags & _CO_VARARGS and hasattr(fn, "__wrapped__")):
        argc = code.co_argcount
        if getattr(fn, "__self__", None) is not None:
            argc -= 1  # bound method: self is already supplied
        takes_ctx = argc >= 2 or bool(code.co_flags & _CO_VARARGS)
        return takes_ctx, bool(code.co_flags & _CO_COROUTINE)
    # partials, callable objects, builtins: pay for inspect once, here.
    import inspect

    is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)
    )
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True, is_async
    positional = 0
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            return True, is_async
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 2, is_async


def invoke(handler: Handler, args: Any, ctx: Context) -> Any:
    """The handler's result for one request.

    For an ``async def`` handler it is an awaitable, which runs the handler
    (inside the span, when there is one) when awaited.
    """
    if ctx.traceparent:
        span = _otel_span(ctx.command, ctx.traceparent, ctx.tracestate, ctx.baggage)
        if span is not None:
            return _in_span(span, handler, args, ctx)
    return handler.call(args, ctx)


def _in_span(span, handler, args, ctx):
    if handler.is_async:
        return _await_in(span, handler, args, ctx)
    with span:
        return handler.call(args, ctx)


async def _await_in(span, handler, args, ctx):
    with span:
        return await handler.call(args, ctx)


# The modules whose frames lead to a handler's: a failed reply's traceback
# starts at the handler.
_DISPATCH_MODULES = frozenset(
    f"{__package__}.{name}" for name in ("_handler", "_server", "_sync", "_async")
)


def format_traceback(exc: BaseException) -> str:
    import traceback

    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and _is_dispatch(tb.tb_frame.f_globals.get("__name__")):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _is_dispatch(module):
    return module in _DISPATCH_MODULES or module == "asyncio" or str(module).startswith("asyncio.")


# --- OpenTelemetry (optional) ------------------------------------------------

_otel: Any = None  # None: not looked for yet; False: not installed; else a tuple


def _otel_span(command, traceparent, tracestate, baggage=None):
    """A context manager for the request's span, or None without OTel.

    The lookup happens on the first traced request, so workers that never
    see a traceparent never pay for it.
    """
    global _otel
    if _otel is None:
        try:
            from opentelemetry import context as otel_context
            from opentelemetry import propagate, trace

            # A tracer taken before the application sets its provider
            # follows it once set (the API's proxy), so one is enough; asking
            # for it per request would cost more than the span itself.
            tracer = trace.get_tracer("snakepit_bridge", __version__)
            _otel = (tracer, propagate, trace.SpanKind.SERVER, otel_context, trace.get_current_span)
        except Exception:  # ImportError, or a broken install: tracing is optional
            _otel = False
    if _otel is False:
        return None
    tracer, propagate, kind, otel_context, span_in = _otel
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    if baggage:
        carrier["baggage"] = baggage
    # The configured global propagator (OTEL_PROPAGATORS, by default W3C
    # trace context and baggage), looked up per request: the application
    # may set its own after the first request. One that raises leaves the
    # call untraced rather than failing it.
    # A context with no valid span would make the span a trace of its own,
    # with no parent: one orphan root per call in the user's backend.
    try:
        parent = propagate.extract(carrier)
        valid = span_in(parent).get_span_context().is_valid
        why = None if valid else f"not readable (traceparent {traceparent!r:.80})"
    except Exception as exc:
        why = f"not extracted ({type(exc).__name__}: {exc})"
    if why is not None:
        from ._server import log

        log(f"trace context {why}; the call runs untraced")
        return None
    return _current(otel_context, parent, tracer.start_as_current_span(f"snakepit.worker {command}", kind=kind))


@contextlib.contextmanager
def _current(otel_context, parent, span):
    """The caller's context (its baggage included) made current, then the
    request's span inside it, for the handler's whole run."""
    token = otel_context.attach(parent)
    try:
        with span:
            yield
    finally:
        otel_context.detach(token)
