"""What both serve loops share: the descriptor frames go to, writing a
frame, reading a payload as a frame, the replies the bridge writes itself,
and starting a request."""

from __future__ import annotations

import io
import itertools
import os
import sys
import threading
from typing import TYPE_CHECKING, Any, Optional

from ._context import Cancelled, Context, HostCallError, ResultTooLarge
from ._handler import Handler, format_traceback
from ._wire import _HEADER, MAX_FRAME_SIZE, MAX_LENGTH, FrameError, FrameReader, _is_int, validate, write_all

if TYPE_CHECKING:
    from ._worker import Worker

_FRAME_HEADER = _HEADER.pack

# The most host calls of one worker that wait for their replies at once:
# the pool's own limit (MAX_HOST_CALLS_IN_FLIGHT in the pool's
# worker/host.rs), above which it takes the worker for a broken one and
# replaces it. A host call counts from the moment its frame is written (or
# queued to be written) until its reply is read, also when its caller
# stopped waiting for it; host calls beyond it wait in the bridge, in the
# order they were made, until a reply frees a place.
MAX_HOST_CALLS_IN_FLIGHT = 256

# The descriptor frames are written to, once stdout has been protected.
_frame_fd: Optional[int] = None
# The descriptor frames are read from, once stdin has been protected.
_frame_in_fd: Optional[int] = None


class _StderrBuffer(io.BufferedWriter):
    """The binary layer of the ``sys.stdout`` that user code gets: closing
    it only flushes (see _StdoutToStderr)."""

    def close(self) -> None:
        if not self.closed:
            self.flush()


class _StdoutToStderr(io.TextIOWrapper):
    """``sys.stdout`` once stdout is protected: a line-buffered stream on a
    duplicate of descriptor 2 (not inheritable), so ``print`` reaches the
    worker's stderr (the pool's log) line by line. ``close()`` (code written
    for a command-line tool closing its stdout when done) only flushes: it
    must not close the worker's log, as it would if ``sys.stdout`` were
    ``sys.stderr`` itself."""

    def close(self) -> None:
        if not self.closed:
            self.flush()


def _stdout_to_stderr() -> io.TextIOWrapper:
    fd = os.dup(2)  # not inheritable
    stderr = sys.__stderr__ or sys.stderr
    encoding = getattr(stderr, "encoding", None) or "utf-8"
    # The text layer flushes at each newline, and the binary one under it
    # holds nothing more: lines come out in order with stderr's.
    return _StdoutToStderr(_StderrBuffer(io.FileIO(fd, "w", closefd=True)), encoding=encoding,
                           errors="backslashreplace", line_buffering=True, write_through=True)


def protect_stdout() -> int:
    """Keep the real stdout for frames and send everything else to stderr.

    Returns the descriptor frames must be written to. After this, ``print``
    and any C library writing to fd 1 end up in the worker's log instead of
    corrupting the frame stream. ``sys.stdout`` is then a line-buffered
    stream of its own on a duplicate of stderr, whose ``close()`` only
    flushes: a handler closing it does not close the worker's log.
    Idempotent.
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
    current = sys.stdout
    if isinstance(current, _StdoutToStderr) and not current.closed:
        # Ours from the process this one was forked from (a preloaded
        # template that protected its stdout): its descriptor is made this
        # process's stderr, so references to it taken there write here.
        os.dup2(2, current.fileno(), inheritable=False)
    else:
        try:
            sys.stdout = _stdout_to_stderr()
        except (OSError, ValueError):
            sys.stdout = sys.stderr  # no descriptor to spare
    _frame_fd = fd
    return fd


def protect_stdin() -> int:
    """Keep the real stdin for frames on a duplicate (not inheritable) and
    point descriptor 0 at /dev/null: subprocesses that inherit stdin, and
    code reading ``sys.stdin``, get end of file instead of the pool's
    frames. Returns the descriptor frames must be read from. Idempotent."""
    global _frame_in_fd
    if _frame_in_fd is not None:
        return _frame_in_fd
    try:
        fd = os.dup(0)  # not inheritable: user subprocesses won't get the pipe
    except OSError:
        return 0  # no stdin: reading it reports the error
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)  # inheritable: children read /dev/null
    finally:
        os.close(null)
    _frame_in_fd = fd
    return fd


def drain(fd):
    """Reads a non-blocking signal wakeup pipe empty."""
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def log(message):
    try:
        sys.stderr.write(f"[snakepit_bridge] {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


# The pid of the worker serving in this process, and how many serve loops
# run (the tests run several in one process); see serving().
_serving_pid: Optional[int] = None
_serving = 0
# In a process forked while a serve loop ran (os.fork() in a handler): the
# pid of the worker it was forked from. Set by the fork itself, so the
# check (leave_if_forked) costs nothing but a global's read.
_forked_from: Optional[int] = None


def _after_fork_in_child() -> None:
    global _forked_from
    if _serving:
        _forked_from = _serving_pid


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class serving:
    """The span in which a serve loop runs in this process: a process
    forked meanwhile is a handler's child, not a worker (a preloaded worker
    is forked by its template, which never serves)."""

    def __enter__(self) -> None:
        global _serving, _serving_pid
        _serving_pid = os.getpid()
        _serving += 1

    def __exit__(self, *exc: object) -> None:
        global _serving
        _serving -= 1


def leave_if_forked() -> None:
    """In a process a handler forked (``os.fork()`` without an exec) that
    reaches the bridge, by returning from the handler, sending a chunk,
    calling the host or writing any frame: it leaves at once with status 1,
    writing and reading nothing. The frames are its parent's: a reply from
    it would answer a call twice, and a read would take frames meant for
    the worker. os._exit, as a forked preloaded worker exits: the parent's
    exit handlers and buffers are not the child's."""
    if _forked_from is None:
        return
    log(f"process {os.getpid()}, forked by a handler of worker {_forked_from}, reached the pool's frames;"
        " it exits with status 1 and writes nothing (end a forked child with os._exit(), or exec)")
    os._exit(1)


def error_reply(rid, type_, message, traceback=None):
    err = {"type": _utf8(type_), "message": _utf8(message)}
    if traceback:
        err["traceback"] = _utf8(traceback)
    return {"id": rid, "success": False, "error": err}


def _utf8(text):
    """``text`` as a string both codecs can carry: a lone surrogate (a
    non-UTF-8 file name through ``os.fsdecode``, say) is written as its
    escape instead of making the reply impossible to encode."""
    text = exact_str(text)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def exact_str(value):
    """``str(value)`` as a plain ``str``. A handler's exception may give a
    ``str`` subclass as its text (or its class's name), whose methods
    (``encode``, ``__format__``...) are the handler's code and may raise:
    ``str.__str__`` copies the characters without calling any of them."""
    if type(value) is str:
        return value
    if not issubclass(type(value), str):
        value = str(value)
        if type(value) is str:
            return value
    return str.__str__(value)


def encode_failure(exc, what):
    """(type, message) of the failure to encode ``what`` (a result, a
    chunk) that raised ``exc``: ``TypeError``, whatever the codec raised (a
    cycle's RecursionError or ValueError, a lone surrogate's
    UnicodeEncodeError), its class and text kept in the message; but
    ``ValueError`` for a NaN or infinite float under JSON, which has no
    such numbers."""
    cls = type(exc)
    try:
        text = exact_str(exc)
    except BaseException:  # a __str__ that raises
        text = "<unreadable>"
    name = exact_str(cls.__name__)
    if cls is TypeError or (cls is ValueError and "Out of range float" in text):
        return name, f"{what} could not be encoded: {text}"
    return "TypeError", f"{what} could not be encoded: {name}: {text}"


def _shown(text):
    """``text`` cut to 100 characters for a message: a name as long as the
    frame it is in would make the message too large as well."""
    return text if len(text) <= 100 else text[:100] + "..."


def stream_ended(ctx, reply):
    """``reply``, unless a chunk of ``ctx``'s call was too large to send
    (ResultTooLarge from ``ctx.emit``): that ended its stream, and the reply
    is then that failure, whatever the handler did next. A cancelled call
    still says Cancelled."""
    if ctx._too_large is None or ctx.cancelled:
        return reply
    err = reply.get("error")
    if isinstance(err, dict) and err.get("type") == "ResultTooLarge":
        return reply  # the handler let it through: its traceback is kept
    return error_reply(ctx.request_id, "ResultTooLarge", ctx._too_large)


def cancelled_reply(rid):
    return error_reply(rid, "Cancelled", f"request {rid} was cancelled")


def failed_reply(rid, exc):
    """The reply to a request whose handler raised ``exc``. Never raises: a
    ``__str__`` that raises (even a BaseException) leaves a placeholder
    message, and a traceback that cannot be formatted is left out."""
    name = exact_str(type(exc).__name__)
    try:
        message = exact_str(exc)
    except BaseException as inner:  # a __str__ that raises
        message = f"<{name} whose message could not be read: {_describe(inner)}>"
    try:
        traceback = format_traceback(exc)
    except BaseException:  # the traceback module calls __str__ too
        traceback = None
    return error_reply(rid, name, message, traceback)


def _describe(exc):
    try:
        return exact_str(repr(exc))
    except BaseException:
        return exact_str(type(exc).__name__)


def unreadable_reply(rid):
    """The reply when not even failed_reply could build one."""
    return error_reply(rid, "Error", "the handler failed and its exception could not be read")


def fatal(exc):
    """Whether a handler's exception ends the worker rather than its call:
    ``SystemExit`` (``sys.exit()`` in a handler). Any other exception,
    ``BaseException`` subclasses of other libraries (timeouts of gevent or
    trio) included, is the call's failed reply. Its real class decides:
    isinstance() would ask the exception's own ``__class__``, which may
    claim SystemExit, or raise."""
    return issubclass(type(exc), SystemExit)


def host_outcome(msg):
    """(ok, result-or-exception) of a host_reply frame. Anything but
    ``success: true`` is a failed host call; without a usable ``error`` it
    is of type ``HostError`` with a message of its own."""
    if msg.get("success") is True:
        return True, msg.get("result")
    err = msg.get("error")
    type_, message = (err.get("type"), err.get("message")) if isinstance(err, dict) else (None, err)
    if message is None or message == "":
        message = "host call failed"
    return False, HostCallError(str(type_ or "HostError"), str(message))


def check_live(ctx):
    """Raises Cancelled when ``ctx``'s call can no longer call the host:
    it was cancelled, or it has ended (a thread or task the handler left
    behind)."""
    leave_if_forked()
    if ctx.cancelled:
        raise Cancelled(f"request {ctx.request_id} was cancelled")
    if ctx._done:
        raise finished(ctx)


def finished(ctx):
    """The error of a host call made, or still waiting, once ``ctx``'s call
    has ended."""
    return Cancelled(f"request {ctx.request_id} is already finished: its ctx can no longer call the host")


def stray(kind, msg, server):
    """True when a cancel or host_reply has no integer id: it names nothing
    running, and is ignored, after a line on stderr (for a host_reply,
    counted as one that matches no waiting host call)."""
    rid = msg.get("id")
    if _is_int(rid):
        return False
    if kind == "host_reply":
        server.unawaited_reply(msg)
        return True
    what = "no id" if rid is None else f"an id of type {type(rid).__name__}"
    log(f"{kind} with {what} names nothing; ignored")
    return True


def _brief(msg):
    """The id of ``msg`` for a log line, at most about 200 characters
    however long it is: a hostile host may send ids of megabytes."""
    if "id" not in msg:
        return "(no id)"
    value = msg["id"]
    try:
        if isinstance(value, (str, bytes)) and len(value) > 200:
            unit = "characters" if isinstance(value, str) else "bytes"
            return f"{value[:200]!r}... ({len(value)} {unit})"
        text = repr(value)
    except Exception:  # an int too long to write, a list nested too deep
        return f"(an id of type {type(value).__name__})"
    return text if len(text) <= 200 else f"{text[:200]}... ({len(text)} characters)"


class Server:
    """One run of a worker: its frame reader and writer, and its requests.

    The sync and async serve loops subclass it; both serve the worker's
    handlers and keep its counters.
    """

    def __init__(self, worker: Worker, read_fd: int, write_fd: int) -> None:
        self.worker = worker
        # The pool's max_frame_size (SNAKEPIT_MAX_FRAME_SIZE): no frame
        # longer is read from it (it sends none), and none is written to it
        # (it would replace the worker), see _fit.
        limit = worker.max_frame_size
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            limit = MAX_FRAME_SIZE  # set by hand to something that is no limit
        limit = min(limit, MAX_LENGTH)
        self._frame_limit = limit
        note = getattr(worker, "_frame_limit_note", None)
        if note:
            log(note)
        self.reader = FrameReader(read_fd, limit)
        self._handlers: dict[str, Handler] = worker._handlers
        self._encode = worker.codec.encode
        self._decode = worker.codec.decode
        self._out_fd = write_fd
        self._write_lock = threading.Lock()
        self._host_ids = itertools.count(1)
        self._unawaited_replies = 0  # see unawaited_reply

    # --- what the handlers' Context asks of the loop ---------------------------

    def call_host(self, ctx: Context, function: str, args: Any) -> Any:
        raise NotImplementedError

    async def acall_host(self, ctx: Context, function: str, args: Any) -> Any:
        raise NotImplementedError

    # --- output ----------------------------------------------------------------

    def send(self, value: dict[str, Any]) -> None:
        data = self._frame(value)
        with self._write_lock:
            self._write(data)

    def send_chunk(self, ctx: Context, data: Any) -> bool:
        """A chunk of ``ctx``'s call from a thread other than the serve
        loop's: checked against ``ctx._done`` under the write lock, which
        the final reply is written under too, so it cannot follow it."""
        frame = self._frame({"type": "chunk", "id": ctx.request_id, "data": data})
        with self._write_lock:
            if ctx._done:
                return False
            self._write(frame)
        return True

    def _frame(self, value):
        leave_if_forked()  # every frame is made here: a reply, chunk or host call
        try:
            payload = self._encode(value)
        except BaseException as exc:
            kind = value.get("type")
            if kind is None and "result" in value and not fatal(exc):
                # A result the codec cannot carry is the handler's failure,
                # whatever the codec raised: a BaseException too (a dict
                # subclass whose items() raises KeyboardInterrupt), which
                # would otherwise end the sync loop with no reply sent.
                type_, message = encode_failure(exc, "result")
                payload = self._encode(error_reply(value["id"], type_, message))
            elif not issubclass(type(exc), Exception):
                # A SIGINT's KeyboardInterrupt while a chunk is encoded
                # cancels the call; SystemExit ends the worker.
                raise
            else:
                # A chunk or host call's arguments: raised in the handler,
                # as the same type its result would fail with.
                what = {"chunk": "chunk", "host_call": "host call arguments"}.get(kind, f"{kind} frame")
                type_, message = encode_failure(exc, what)
                if type_ == type(exc).__name__:
                    raise
                raise TypeError(message) from exc
        if len(payload) > self._frame_limit:
            payload = self._fit(value, len(payload), payload)
        return _FRAME_HEADER(len(payload)) + payload

    def _fit(self, value, size, payload):
        """What is written in place of a frame ``size`` bytes long, above
        the pool's limit: the pool would refuse it and replace the worker.
        A reply becomes a failed reply of type ``ResultTooLarge``; a chunk
        raises ResultTooLarge, and a host call HostCallError of that type,
        in the handler, with nothing sent. A hello (a limit smaller than
        any frame) goes as it is: there is nothing to say instead."""
        limit = self._frame_limit
        kind = value.get("type")
        if kind is None and "success" in value:
            rid = value.get("id")
            if value.get("success"):
                what = "the result"
            else:
                err = value.get("error")
                kind_ = err.get("type") if isinstance(err, dict) else None
                what = f"the failed reply ({_shown(kind_)})" if isinstance(kind_, str) else "the failed reply"
            message = f"{what} would be {size} bytes, above the pool's limit of {limit}"
            log(f"request {rid}: {message}; sent ResultTooLarge instead")
            fitted = self._encode(error_reply(rid, "ResultTooLarge", message))
            if len(fitted) > limit:
                log(f"request {rid}: even the ResultTooLarge reply is above the pool's limit of {limit}")
            return fitted
        if kind == "chunk":
            raise ResultTooLarge(f"the chunk would be {size} bytes, above the pool's limit of {limit}")
        if kind == "host_call":
            function = _shown(exact_str(value.get("function")))
            raise HostCallError("ResultTooLarge", _utf8(
                f"the host call {function} would be {size} bytes, above the pool's limit of {limit}"))
        log(f"the {kind} frame is {size} bytes, above the pool's limit of {limit}; sent all the same")
        return payload

    def _write(self, data):
        """Write one whole frame; the caller holds the write lock."""
        leave_if_forked()  # frames a loop queued before a handler forked
        try:
            fd = self._out_fd
            written = os.write(fd, data)
            if written != len(data):  # a pipe may take less at once
                write_all(fd, memoryview(data)[written:])
        except BrokenPipeError:
            # The pool is gone; nobody is left to answer.
            log("stdout closed by the pool; exiting")
            raise SystemExit(0)

    def running(self, rid) -> bool:
        """Whether request ``rid`` runs now (its final reply not sent)."""
        return False

    def send_frame_error(self, exc):
        # A request that decoded but is malformed is answered under its own
        # id when it has one; anything else is a stream-level ProtocolError.
        if exc.request:
            rid = exc.frame_id or 0
            if rid and self.running(rid):
                # Answered, it would give that id a second final reply.
                log(f"request id {rid} is already running; malformed duplicate dropped")
                return
            self.send(error_reply(rid, "InvalidRequest", exc.message))
        else:
            self.send(error_reply(0, "ProtocolError", exc.message))

    def host_call_frame(self, hid, ctx, function, args):
        """The encoded host_call frame; raises (nothing sent) when its
        arguments cannot be encoded, or when ``function`` is no string: the
        pool takes such a frame for a broken one and replaces the worker."""
        if not issubclass(type(function), str):
            raise TypeError(f"a host function's name must be a str, not {type(function).__name__}")
        return self._frame({"type": "host_call", "id": hid, "request_id": ctx.request_id,
                            "function": function, "args": args})

    def send_host_call(self, ctx, frame):
        """Writes a host_call frame of ``ctx``'s call, unless the call has
        ended (False). Checked under the write lock, which the final reply
        is written under too, so a host call never follows its call's
        reply: the pool would no longer know the call's session."""
        with self._write_lock:
            if ctx._done:
                return False
            self._write(frame)
        return True

    # --- input -----------------------------------------------------------------

    def buffered_frames(self):
        """The payloads of the complete frames the reader holds, in order;
        an unusable frame is answered as it comes."""
        next_frame = self.reader.next_frame
        while True:
            try:
                payload = next_frame()
            except FrameError as exc:
                self.send_frame_error(exc)
                continue
            if payload is None:
                return
            yield payload

    def parse(self, payload):
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

    def dispatch(self, payload):
        """Act on one frame from the pool."""
        try:
            kind, msg = self.parse(payload)
        except FrameError as exc:
            self.send_frame_error(exc)
            return
        if kind == "request":
            self.on_request(msg)
        elif stray(kind, msg, self):
            return
        elif kind == "cancel":
            self.on_cancel(msg["id"])
        else:
            self.on_host_reply(msg)

    def on_request(self, msg):
        raise NotImplementedError

    def on_cancel(self, rid):
        raise NotImplementedError

    def on_host_reply(self, msg):
        self.unawaited_reply(msg)

    def unawaited_reply(self, msg):
        """A host_reply no host call waits for (an unknown id, no id, the id
        of a host call held in the bridge, a second reply, or the late reply
        of a host call whose caller stopped waiting) is dropped. The host may
        send them without end, so the log gets the first and then one line
        at the 10th, 100th, 1000th, ..., each with the count so far. Called
        by whoever reads stdin, one at a time."""
        self._unawaited_replies += 1
        count = self._unawaited_replies
        if count == 1:
            log(f"host_reply {_brief(msg)} matches no waiting host call; dropped"
                " (the next such replies are counted, and logged at the 10th, 100th, 1000th, ...)")
        elif str(count).rstrip("0") == "1":
            log(f"{count} host_replies matching no waiting host call dropped so far (the last: {_brief(msg)})")

    def begin(self, msg):
        """(handler, ctx) of a request, or None once it is answered
        UnknownCommand. Counts the request; the first ping tells the worker
        its pool id when the environment did not."""
        worker = self.worker
        worker.requests_handled += 1
        rid = msg["id"]
        command = msg["command"]
        handler = self._handlers.get(command)
        if handler is None:
            self.send(error_reply(rid, "UnknownCommand", f"Unknown command: {command}"))
            return None
        if command == "ping" and worker.worker_id is None:
            wid = msg["args"].get("worker_id")
            if isinstance(wid, str) and wid:
                worker.worker_id = wid
        return handler, Context(self, rid, command, msg)
