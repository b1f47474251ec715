"""The worker: command registry, request context and the serve loops.

Two serve loops share one dispatcher:

* sync mode (only plain functions, max_concurrency 1): the main thread reads
  a frame, runs the handler, writes the reply. This is the hot path of the
  pool's benchmarks, so it does as little per request as it can. SIGINT
  cancels the running handler (KeyboardInterrupt inside it).
* async mode (any ``async def`` handler, or max_concurrency > 1): an asyncio
  loop reads frames as they arrive, runs up to max_concurrency requests at
  once, and acts on ``cancel`` frames by cancelling the request's task.
  Plain functions run on a small pool of daemon threads.
"""

import itertools
import os
import signal
import sys
import threading
import time

from . import _wire
from ._wire import FrameError, FrameReader, validate, write_all

__version__ = "0.1.0"

_CO_VARARGS = 0x04
_CO_COROUTINE = 0x80
_FRAME_HEADER = _wire._HEADER.pack

_MAIN_THREAD = threading.main_thread().ident

# The descriptor frames are written to, once stdout has been protected.
_frame_fd = None


class Cancelled(Exception):
    """The request was cancelled (``cancel`` frame or SIGINT).

    Handlers may raise it themselves after seeing ``ctx.cancelled``; the
    reply is then a failed reply of type ``Cancelled``.
    """


class HostCallError(Exception):
    """A ``host_call`` that the pool answered with a failure.

    ``type`` is the error type the host gave (e.g. ``UnknownFunction``).
    """

    def __init__(self, type, message):
        super().__init__("%s: %s" % (type, message))
        self.type = type
        self.message = message


def protect_stdout():
    """Keep the real stdout for frames and send everything else to stderr.

    Returns the descriptor frames must be written to. After this, ``print``
    and any C library writing to fd 1 end up in the worker's log instead of
    corrupting the frame stream. Idempotent.
    """
    global _frame_fd
    if _frame_fd is not None:
        return _frame_fd
    fd = os.dup(1)  # not inheritable: user subprocesses won't get the pipe
    os.dup2(2, 1)
    # Whatever print() buffered before now goes to fd 1, which is stderr.
    for stream in (sys.stdout, sys.__stdout__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    sys.stdout = sys.stderr
    _frame_fd = fd
    return fd


def _log(message):
    try:
        sys.stderr.write("[snakepit_bridge] %s\n" % message)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _describe_handler(fn):
    """(takes_ctx, is_async) for a handler, decided once at registration."""
    code = getattr(fn, "__code__", None)
    if code is not None:
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


def _format_traceback(exc):
    import traceback

    tb = exc.__traceback__
    # The first frame is the dispatcher's own call of the handler.
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _error(rid, type_, message, traceback=None):
    err = {"type": type_, "message": message}
    if traceback:
        err["traceback"] = traceback
    return {"id": rid, "success": False, "error": err}


def _host_outcome(msg):
    """(ok, result-or-exception) of a host_reply frame."""
    if msg.get("success"):
        return True, msg.get("result")
    err = msg.get("error")
    if isinstance(err, dict):
        return False, HostCallError(str(err.get("type") or "HostError"), str(err.get("message", "")))
    return False, HostCallError("HostError", str(err))


# --- OpenTelemetry (optional) ------------------------------------------------

_otel = None  # None: not looked for yet; False: not installed; else a tuple


def _otel_span(command, traceparent, tracestate):
    """A context manager for the request's span, or None without OTel.

    The lookup happens on the first traced request, so workers that never
    see a traceparent never pay for it.
    """
    global _otel
    if _otel is None:
        try:
            from opentelemetry import propagate, trace

            # A tracer taken before the application sets its provider
            # follows it once set (the API's proxy), so one is enough; asking
            # for it per request would cost more than the span itself.
            tracer = trace.get_tracer("snakepit_bridge", __version__)
            _otel = (tracer, propagate, trace.SpanKind.SERVER)
        except Exception:  # ImportError, or a broken install: tracing is optional
            _otel = False
    if _otel is False:
        return None
    tracer, propagate, kind = _otel
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    # The configured global propagator (OTEL_PROPAGATORS, by default W3C
    # trace context and baggage), looked up per request: the application
    # may set its own after the first request.
    parent = propagate.extract(carrier)
    return tracer.start_as_current_span("snakepit.worker " + command, context=parent, kind=kind)


# --- the context a handler gets ------------------------------------------------

class Session(object):
    """Session store helpers, built on host calls (``session.get`` & co)."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx):
        self._ctx = ctx

    def get(self, key):
        return self._ctx.call_host("session.get", {"key": key})

    def set(self, key, value):
        return self._ctx.call_host("session.set", {"key": key, "value": value})

    def delete(self, key):
        return self._ctx.call_host("session.delete", {"key": key})

    async def aget(self, key):
        return await self._ctx.acall_host("session.get", {"key": key})

    async def aset(self, key, value):
        return await self._ctx.acall_host("session.set", {"key": key, "value": value})

    async def adelete(self, key):
        return await self._ctx.acall_host("session.delete", {"key": key})


class Context(object):
    """What a handler knows about the request it serves.

    Attributes: ``request_id``, ``command``, ``session_id`` (or None),
    ``worker_id`` (or None), ``traceparent``/``tracestate`` (or None),
    ``stream`` (the caller consumes chunks), ``timeout_ms`` (or None),
    ``cancelled`` (set by a cancel frame or SIGINT), ``worker``.
    """

    __slots__ = (
        "worker", "request_id", "command", "session_id", "traceparent", "tracestate",
        "stream", "timeout_ms", "cancelled", "_logger", "_task",
    )

    def __init__(self, worker, rid, command, msg):
        self.worker = worker
        self.request_id = rid
        self.command = command
        get = msg.get
        self.session_id = get("session_id")
        self.traceparent = get("traceparent")
        self.tracestate = get("tracestate")
        self.stream = get("stream") is True
        self.timeout_ms = get("timeout_ms")
        self.cancelled = False
        self._logger = None
        self._task = None

    @property
    def worker_id(self):
        return self.worker.worker_id

    @property
    def session(self):
        return Session(self)

    @property
    def logger(self):
        """A ``logging`` logger writing to stderr, tagged with the request id."""
        if self._logger is None:
            self._logger = _request_logger(self.request_id)
        return self._logger

    def check_cancelled(self):
        """Raise Cancelled if the request was cancelled."""
        if self.cancelled:
            raise Cancelled("request %s was cancelled" % self.request_id)

    def emit(self, data):
        """Send a partial result as a ``chunk`` frame.

        Returns False (and sends nothing) when the caller did not ask for a
        stream: the pool would drop the chunk anyway.
        """
        if not self.stream:
            return False
        self.worker._send({"type": "chunk", "id": self.request_id, "data": data})
        return True

    send_chunk = emit

    def call_host(self, function, args=None):
        """Run a function the host registered and return its result.

        Blocks until the matching ``host_reply``; a failed reply raises
        HostCallError. In an ``async def`` handler use ``await acall_host``.
        """
        return self.worker._call_host(self, function, {} if args is None else args)

    async def acall_host(self, function, args=None):
        """``call_host`` for async handlers."""
        return await self.worker._acall_host(self, function, {} if args is None else args)


_adapter_class = None


def _request_logger(request_id):
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
            def process(self, msg, kwargs):
                return "[req %s] %s" % (self.extra["request_id"], msg), kwargs

        _adapter_class = _RequestAdapter
    return _adapter_class(logging.getLogger("snakepit_bridge"), {"request_id": request_id})


class _ThreadWaiter(object):
    """A host call awaited by a thread (sync handler in async mode)."""

    __slots__ = ("event", "ok", "value")

    def __init__(self):
        self.event = threading.Event()
        self.ok = False
        self.value = None

    def resolve(self, ok, value):
        self.ok = ok
        self.value = value
        self.event.set()


class _DaemonPool(object):
    """Threads for plain handlers in async mode.

    Daemon threads, unlike concurrent.futures' workers, are not joined at
    exit, so SIGTERM ends the process even while a handler is stuck.
    """

    def __init__(self, size):
        import queue

        self._queue = queue.SimpleQueue()
        self._size = size
        self._threads = 0

    def submit(self, job):
        # The semaphore caps concurrent jobs at `size`, so one thread per
        # slot, started on demand, is enough.
        if self._threads < self._size:
            self._threads += 1
            threading.Thread(target=self._work, name="snakepit-handler-%d" % self._threads,
                             daemon=True).start()
        self._queue.put(job)

    def _work(self):
        get = self._queue.get
        while True:
            get()()


class Worker(object):
    """A Snakepit worker: register commands, then ``run()``.

    ``codec``: "json", "msgpack" or None (read SNAKEPIT_CODEC).
    ``max_concurrency``: None picks 1 for plain functions and 8 once an
    ``async def`` handler is registered; > 1 forces the asyncio loop.
    """

    def __init__(self, codec=None, max_concurrency=None, name="snakepit-python", version=__version__):
        self.codec = _wire.get_codec(codec)
        self.max_concurrency = max_concurrency
        self.name = name
        self.version = version
        self.worker_id = os.environ.get("SNAKEPIT_WORKER_ID") or None
        self.started_at = time.time()
        self._t0 = time.monotonic()
        self.requests_handled = 0
        self.pid = os.getpid()
        self._handlers = {}
        self._encode = self.codec.encode
        self._decode = self.codec.decode
        self._write_lock = threading.Lock()
        self._out_fd = None
        self._reader = None
        self._host_ids = itertools.count(1)
        self._loop = None
        self._loop_thread = None
        # sync mode state
        self._armed = False
        self._writing = False
        self._sigint_held = False
        self._current = None
        self._backlog = []
        # async mode state
        self._tasks = {}
        self._host_pending = {}
        self._async = False
        # Every pool starts with a ping; a worker must answer it even when
        # its author only wrote domain commands.
        from . import generic

        self.register("ping", generic.ping)

    # --- registry ------------------------------------------------------------

    def command(self, name=None):
        """Decorator registering ``def handler(args, ctx)`` (or ``(args)``,
        or ``async def``) under ``name`` (default: the function's name)."""
        if callable(name):
            fn = name
            self.register(fn.__name__, fn)
            return fn

        def decorate(fn):
            self.register(name or fn.__name__, fn)
            return fn

        return decorate

    def register(self, name, fn):
        takes_ctx, is_async = _describe_handler(fn)
        self._handlers[name] = (fn, takes_ctx, is_async)

    @property
    def commands(self):
        return sorted(self._handlers)

    @property
    def uptime(self):
        return time.monotonic() - self._t0

    @property
    def is_async(self):
        """True when run() will use the asyncio loop."""
        if self.max_concurrency is not None and self.max_concurrency > 1:
            return True
        return any(entry[2] for entry in self._handlers.values())

    def capabilities(self):
        if self.is_async:
            conc = self.max_concurrency or 8
            return {"max_concurrency": conc, "cancel": True, "sigint": False,
                    "streaming": True, "host_calls": True}
        # The main thread only sees cancel frames between requests (or while
        # waiting for a host reply), so only SIGINT is promised for a running
        # request. A request written ahead (pipeline) that is cancelled
        # before it starts is dropped (see _read_ahead).
        return {"max_concurrency": 1, "cancel": False, "sigint": True,
                "streaming": True, "host_calls": True, "pipeline": True}

    def hello(self):
        impl = sys.implementation.name
        runtime = "%s %d.%d.%d" % (
            {"cpython": "CPython", "pypy": "PyPy"}.get(impl, impl), *sys.version_info[:3])
        return {"type": "hello", "protocol": _wire.PROTOCOL_VERSION, "pid": self.pid,
                "bridge": "%s/%s" % (self.name, self.version), "runtime": runtime,
                "capabilities": self.capabilities()}

    # --- output ----------------------------------------------------------------

    def _send(self, value):
        try:
            payload = self._encode(value)
        except Exception as exc:
            if value.get("type") is None and "result" in value:
                # A result the codec cannot carry is the handler's failure.
                payload = self._encode(_error(value["id"], type(exc).__name__,
                                              "result could not be encoded: %s" % exc))
            else:
                raise
        data = _FRAME_HEADER(len(payload)) + payload
        with self._write_lock:
            # A SIGINT must not interrupt a half-written frame (a chunk sent
            # by a handler): it is held back until the frame is out.
            main = threading.get_ident() == _MAIN_THREAD
            if main:
                self._writing = True
            try:
                fd = self._out_fd
                written = os.write(fd, data)
                if written != len(data):  # a pipe may take less at once
                    write_all(fd, memoryview(data)[written:])
            except BrokenPipeError:
                # The pool is gone; nobody is left to answer.
                _log("stdout closed by the pool; exiting")
                raise SystemExit(0)
            finally:
                if main:
                    self._writing = False
        if main and self._sigint_held:
            self._sigint_held = False
            self._on_sigint(signal.SIGINT, None)

    def _send_frame_error(self, exc):
        # A request that decoded but is malformed is answered under its own
        # id when it has one; anything else is a stream-level ProtocolError.
        if exc.request:
            self._send(_error(exc.frame_id or 0, "InvalidRequest", exc.message))
        else:
            self._send(_error(0, "ProtocolError", exc.message))

    # --- running ---------------------------------------------------------------

    def run(self, read_fd=0, write_fd=None, install_signals=True):
        """Serve requests until stdin reaches EOF; returns the exit code (0).

        By default stdout is protected first (see protect_stdout) and frames
        go to the saved descriptor.
        """
        self.pid = os.getpid()
        self._out_fd = protect_stdout() if write_fd is None else write_fd
        self._reader = FrameReader(read_fd)
        if self.is_async:
            self._async = True
            return self._run_async(install_signals)
        # Handlers go in before hello: once the pool has seen hello it may
        # signal us, and Python's default SIGINT would kill the process.
        if install_signals:
            self._install_sync_signals()
        self._send(self.hello())
        return self._serve_sync()

    def _install_sync_signals(self):
        signal.signal(signal.SIGINT, self._on_sigint)
        signal.signal(signal.SIGTERM, _on_sigterm)

    def _on_sigint(self, signum, frame):
        # Armed only while a handler runs. Disarming here means one SIGINT
        # raises at most once, even if it lands just after the handler
        # returned (then the reply is Cancelled, still exactly one reply).
        if self._armed:
            if self._writing:
                self._sigint_held = True
                return
            self._armed = False
            ctx = self._current
            if ctx is not None:
                ctx.cancelled = True
            raise KeyboardInterrupt

    def _serve_sync(self):
        reader = self._reader
        read_frame = reader.read_frame
        backlog = self._backlog
        dispatch = self._dispatch_sync
        while True:
            if backlog:
                payload = backlog.pop(0)
            else:
                if reader.eof:
                    return 0
                try:
                    payload = read_frame()
                except FrameError as exc:
                    if exc.kind == "truncated":
                        _log("stdin ended inside a frame; exiting")
                        return 0
                    self._send_frame_error(exc)
                    continue
                if payload is None:
                    return 0
            if reader._buf:
                # More frames arrived with this one (calls written ahead):
                # a cancel among them drops its request before it starts.
                backlog.insert(0, payload)
                self._read_ahead()
                if not backlog:
                    continue
                payload = backlog.pop(0)
            dispatch(payload)

    def _read_ahead(self):
        """Move the complete frames already read into the backlog; a request
        whose cancel frame is among them is answered Cancelled, never run."""
        reader = self._reader
        backlog = self._backlog
        while True:
            try:
                payload = reader.next_frame()
            except FrameError as exc:
                self._send_frame_error(exc)
                continue
            if payload is None:
                return
            try:
                kind, msg = self._parse(payload)
            except FrameError:
                backlog.append(payload)  # reported when dispatched
                continue
            if kind != "cancel":
                backlog.append(payload)
                continue
            rid = msg.get("id")
            for i, waiting in enumerate(backlog):
                try:
                    wkind, wmsg = self._parse(waiting)
                except FrameError:
                    continue
                if wkind == "request" and wmsg.get("id") == rid:
                    del backlog[i]
                    self._send(_error(rid, "Cancelled", "request %s was cancelled before it started" % rid))
                    break

    def _parse(self, payload):
        """(kind, msg) of a payload; FrameError when it is unusable."""
        if not payload:
            raise FrameError("invalid_payload", "frame is empty")
        msg = self._decode(payload)
        # The common case, a well-formed request, skips validate().
        if type(msg) is dict and "type" not in msg:
            rid = msg.get("id")
            if type(rid) is int and rid > 0 and type(msg.get("command")) is str:
                args = msg.get("args")
                if args is None:
                    msg["args"] = {}
                    return "request", msg
                if type(args) is dict:
                    return "request", msg
        kind = validate(msg, "to_worker")
        if kind == "request" and msg.get("args") is None:
            msg["args"] = {}
        return kind, msg

    def _dispatch_sync(self, payload):
        try:
            kind, msg = self._parse(payload)
        except FrameError as exc:
            self._send_frame_error(exc)
            return
        if kind == "request":
            self._request_sync(msg)
        elif kind == "cancel":
            pass  # nothing runs between frames in sync mode: too late
        else:
            _log("host_reply %s matches no pending host call; dropped" % msg.get("id"))

    def _request_sync(self, msg):
        rid = msg["id"]
        command = msg["command"]
        args = msg["args"]
        self.requests_handled += 1
        entry = self._handlers.get(command)
        if entry is None:
            self._send(_error(rid, "UnknownCommand", "Unknown command: %s" % command))
            return
        if command == "ping" and self.worker_id is None:
            self._learn_worker_id(args)
        fn, takes_ctx, _ = entry
        ctx = Context(self, rid, command, msg)
        self._current = ctx
        try:
            self._armed = True
            span = _otel_span(command, ctx.traceparent, ctx.tracestate) if ctx.traceparent else None
            if span is None:
                result = fn(args, ctx) if takes_ctx else fn(args)
            else:
                with span:
                    result = fn(args, ctx) if takes_ctx else fn(args)
            self._armed = False
            if ctx.cancelled:
                raise Cancelled
            reply = {"id": rid, "success": True, "result": result}
        except (KeyboardInterrupt, Cancelled):
            self._armed = False
            reply = _error(rid, "Cancelled", "request %s was cancelled" % rid)
        except Exception as exc:
            self._armed = False
            reply = _error(rid, type(exc).__name__, str(exc), _format_traceback(exc))
        self._current = None
        self._send(reply)

    def _learn_worker_id(self, args):
        wid = args.get("worker_id")
        if isinstance(wid, str) and wid:
            self.worker_id = wid

    # --- host calls ------------------------------------------------------------

    def _call_host(self, ctx, function, args):
        if not self._async:
            return self._call_host_sync(ctx, function, args)
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("call_host would block the event loop: use 'await ctx.acall_host(...)'")
        hid = next(self._host_ids)
        waiter = _ThreadWaiter()
        self._host_pending[hid] = (ctx, waiter.resolve)
        self._send({"type": "host_call", "id": hid, "request_id": ctx.request_id,
                    "function": function, "args": args})
        waiter.event.wait()
        if waiter.ok:
            return waiter.value
        raise waiter.value

    def _call_host_sync(self, ctx, function, args):
        # The main thread is the only reader, so it reads until its reply
        # comes; requests arriving meanwhile wait in the backlog.
        hid = next(self._host_ids)
        self._send({"type": "host_call", "id": hid, "request_id": ctx.request_id,
                    "function": function, "args": args})
        reader = self._reader
        while True:
            try:
                payload = reader.read_frame()
            except FrameError as exc:
                if exc.kind == "truncated":
                    payload = None
                else:
                    self._send_frame_error(exc)
                    continue
            if payload is None:
                raise ConnectionError("stdin closed while waiting for host call %d" % hid)
            try:
                kind, msg = self._parse(payload)
            except FrameError as exc:
                self._send_frame_error(exc)
                continue
            if kind == "host_reply":
                if msg["id"] == hid:
                    ok, value = _host_outcome(msg)
                    if ok:
                        return value
                    raise value
                _log("host_reply %s matches no pending host call; dropped" % msg["id"])
            elif kind == "cancel":
                if msg["id"] == ctx.request_id:
                    ctx.cancelled = True
                    raise Cancelled("request %s was cancelled" % ctx.request_id)
            else:
                self._backlog.append(payload)

    async def _acall_host(self, ctx, function, args):
        if not self._async:
            # An async helper called from a sync-mode handler via asyncio.run.
            return self._call_host_sync(ctx, function, args)
        fut = self._loop.create_future()

        def resolve(ok, value):
            if not fut.done():
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

        hid = next(self._host_ids)
        self._host_pending[hid] = (ctx, resolve)
        try:
            self._send({"type": "host_call", "id": hid, "request_id": ctx.request_id,
                        "function": function, "args": args})
            return await fut
        finally:
            self._host_pending.pop(hid, None)

    # --- async mode ------------------------------------------------------------

    def _run_async(self, install_signals):
        import asyncio

        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(self._amain(install_signals))
        finally:
            loop.close()

    async def _amain(self, install_signals):
        import asyncio

        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._limit = asyncio.Semaphore(self.max_concurrency or 8)
        self._pool = _DaemonPool(self.max_concurrency or 8)
        self._eof = asyncio.Event()
        self._terminated = False
        if install_signals:
            # sigint is not declared in this mode; a stray Ctrl-C must not kill us.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            loop.add_signal_handler(signal.SIGTERM, self._on_async_sigterm)
        self._send(self.hello())
        fd = self._reader.fd
        try:
            loop.add_reader(fd, self._on_readable)
            threaded = False
        except (OSError, ValueError, NotImplementedError):
            # Not pollable (a regular file, say): read on a thread instead.
            threaded = True
            threading.Thread(target=self._read_thread, name="snakepit-reader", daemon=True).start()
        await self._eof.wait()
        if not threaded:
            loop.remove_reader(fd)
        # Host replies can no longer arrive.
        for hid, (ctx, resolve) in list(self._host_pending.items()):
            self._host_pending.pop(hid, None)
            resolve(False, ConnectionError("stdin closed while waiting for host call %d" % hid))
        tasks = [task for task, _ in self._tasks.values()]
        if tasks:
            if self._terminated:
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks, timeout=1.0)
            else:
                # EOF: finish what was asked, then exit.
                await asyncio.wait(tasks)
        return 0

    def _on_async_sigterm(self):
        self._terminated = True
        self._eof.set()

    def _on_readable(self):
        try:
            data = os.read(self._reader.fd, 65536)
        except InterruptedError:
            return
        except OSError as exc:
            _log("reading stdin failed: %s" % exc)
            data = b""
        if not data:
            if self._reader.pending():
                _log("stdin ended inside a frame")
            self._eof.set()
            return
        self._reader.feed(data)
        self._drain()

    def _drain(self):
        reader = self._reader
        while True:
            try:
                payload = reader.next_frame()
            except FrameError as exc:
                self._send_frame_error(exc)
                continue
            if payload is None:
                return
            self._dispatch_async(payload)

    def _read_thread(self):
        loop = self._loop
        reader = self._reader
        try:
            while True:
                try:
                    payload = reader.read_frame()
                except FrameError as exc:
                    if exc.kind == "truncated":
                        break
                    loop.call_soon_threadsafe(self._send_frame_error, exc)
                    continue
                if payload is None:
                    break
                loop.call_soon_threadsafe(self._dispatch_async, payload)
        finally:
            try:
                loop.call_soon_threadsafe(self._eof.set)
            except RuntimeError:
                pass  # loop already closed

    def _dispatch_async(self, payload):
        try:
            kind, msg = self._parse(payload)
        except FrameError as exc:
            self._send_frame_error(exc)
            return
        if kind == "request":
            self._start_request(msg)
        elif kind == "cancel":
            self._cancel(msg["id"])
        else:
            pending = self._host_pending.pop(msg["id"], None)
            if pending is None:
                _log("host_reply %s matches no pending host call; dropped" % msg["id"])
            else:
                ok, value = _host_outcome(msg)
                pending[1](ok, value)

    def _start_request(self, msg):
        rid = msg["id"]
        if rid in self._tasks:
            _log("request id %s is already running; duplicate dropped" % rid)
            return
        self.requests_handled += 1
        command = msg["command"]
        entry = self._handlers.get(command)
        if entry is None:
            self._send(_error(rid, "UnknownCommand", "Unknown command: %s" % command))
            return
        if command == "ping" and self.worker_id is None:
            self._learn_worker_id(msg["args"])
        ctx = Context(self, rid, command, msg)
        task = self._loop.create_task(self._serve_request(ctx, entry, msg["args"]))
        ctx._task = task
        self._tasks[rid] = (task, ctx)
        task.add_done_callback(lambda _task, rid=rid: self._task_done(rid))

    def _task_done(self, rid):
        # A task cancelled before its first step never runs its body (whose
        # finally removes it from _tasks), so it never replied; the pool
        # still needs exactly one reply.
        if self._tasks.pop(rid, None) is not None:
            self._send(_error(rid, "Cancelled", "request %s was cancelled" % rid))

    def _cancel(self, rid):
        entry = self._tasks.get(rid)
        if entry is None:
            return  # finished already; its reply is on the way or sent
        task, ctx = entry
        ctx.cancelled = True
        # Unblock a plain handler stuck in a host call of this request.
        for hid, (owner, resolve) in list(self._host_pending.items()):
            if owner is ctx:
                self._host_pending.pop(hid, None)
                resolve(False, Cancelled("request %s was cancelled" % rid))
        if self._handlers.get(ctx.command, (None, None, False))[2]:
            task.cancel()
        # A plain function on a thread cannot be stopped; it sees
        # ctx.cancelled and its reply will say Cancelled.

    async def _serve_request(self, ctx, entry, args):
        import asyncio

        fn, takes_ctx, is_async = entry
        rid = ctx.request_id
        try:
            async with self._limit:
                span = _otel_span(ctx.command, ctx.traceparent, ctx.tracestate) if ctx.traceparent else None
                if is_async:
                    if span is None:
                        result = await (fn(args, ctx) if takes_ctx else fn(args))
                    else:
                        with span:
                            result = await (fn(args, ctx) if takes_ctx else fn(args))
                else:
                    result = await self._in_thread(fn, args, ctx, takes_ctx, span)
            if ctx.cancelled:
                raise Cancelled
            reply = {"id": rid, "success": True, "result": result}
        except (asyncio.CancelledError, Cancelled):
            reply = _error(rid, "Cancelled", "request %s was cancelled" % rid)
        except Exception as exc:
            reply = _error(rid, type(exc).__name__, str(exc), _format_traceback(exc))
        finally:
            self._tasks.pop(rid, None)
        self._send(reply)

    def _in_thread(self, fn, args, ctx, takes_ctx, span):
        import contextvars

        loop = self._loop
        fut = loop.create_future()
        # Run in a copy of the task's context so contextvars (and the OTel
        # span) are visible to the handler on its thread.
        context = contextvars.copy_context()

        def settle(ok, value):
            if not fut.done():
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

        def call():
            if span is None:
                return fn(args, ctx) if takes_ctx else fn(args)
            with span:
                return fn(args, ctx) if takes_ctx else fn(args)

        def job():
            try:
                outcome = (True, context.run(call))
            except BaseException as exc:  # delivered to the awaiting task
                outcome = (False, exc)
            try:
                loop.call_soon_threadsafe(settle, *outcome)
            except RuntimeError:
                pass  # loop closed: shutting down

        self._pool.submit(job)
        return fut


def _on_sigterm(signum, frame):
    # Clean exit: finally blocks and atexit hooks still run.
    raise SystemExit(0)
