"""The sync serve loop: plain functions, one request at a time.

The main thread reads a frame, runs the handler, writes the reply. This is
the hot path of the pool's benchmarks, so it does as little per request as it
can. SIGINT cancels the running handler (KeyboardInterrupt inside it). Frames
that arrive while a handler runs (calls the pool wrote ahead, or frames read
while waiting for a host reply) wait in a backlog; a request whose cancel
frame is already there is answered Cancelled and never run.
"""

from __future__ import annotations

import os
import select
import signal
import stat
import threading
from collections import deque
from typing import Any, Optional

from ._context import Cancelled, Context
from ._handler import invoke
from ._server import (
    Server, cancelled_reply, drain, error_reply, failed_reply, fatal, host_outcome, log, stray,
)
from ._wire import FrameError, _is_int, _unpack_header

_MAIN_THREAD = threading.main_thread().ident


class SyncServer(Server):
    def __init__(self, worker, read_fd, write_fd):
        super().__init__(worker, read_fd, write_fd)
        # SIGINT: armed while a handler runs; held while the main thread
        # writes a frame, and in call_host but for its waits for input, and
        # delivered once the frame is out (or call_host waits again).
        self._armed = False
        # A SIGINT came while no handler ran: it may be for the request
        # about to start (signalled while it was still read or decoded).
        self._sigint_unarmed = False
        self._writing = False
        self._reading = False  # in call_host, and not waiting for input
        self._sigint_held = False
        self._current = None
        self._backlog = deque()
        self._peek = None
        self._peek_fd = None
        self._poller = None  # stdin (and the wakeup pipe, with our handlers)
        self._wake_r = None
        self._wake_w = None

    def serve(self, install_signals: bool) -> int:
        # Handlers go in before hello: once the pool has seen hello it may
        # signal us, and Python's default SIGINT would kill the process.
        old_wakeup = None
        if install_signals:
            # A signal's byte in this pipe wakes the waits for input (see
            # _read_idle); set before the handlers, so none goes unseen.
            self._wake_r, wake_w = os.pipe()
            self._wake_w = wake_w
            os.set_blocking(self._wake_r, False)
            os.set_blocking(wake_w, False)
            old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
            self._poller = select.poll()
            self._poller.register(self.reader.fd, select.POLLIN)
            self._poller.register(self._wake_r, select.POLLIN)
            signal.signal(signal.SIGINT, self._on_sigint)
            signal.signal(signal.SIGTERM, _on_sigterm)
        self.send(self.worker.hello())
        try:
            return self._serve(self._read_idle if install_signals else None)
        finally:
            # The second description of the pipe, if the loop opened one.
            if self._peek_fd is not None:
                os.close(self._peek_fd)
                self._peek = self._peek_fd = None
            if self._wake_r is not None:
                signal.set_wakeup_fd(-1 if old_wakeup is None else old_wakeup)
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = None

    def _serve(self, read=None) -> int:
        reader = self.reader
        read_frame = reader.read_frame
        backlog = self._backlog
        next_waiting = backlog.popleft
        dispatch = self.dispatch
        poll_pipe = self._poll_pipe
        read_ahead = self._read_ahead
        while True:
            if backlog:
                # A request written ahead, about to start: a cancel for it
                # may have arrived in the pipe while the one before it ran
                # (or been read already, with a host call's reply).
                if poll_pipe() or reader._buf:
                    read_ahead()
                    if not backlog:
                        continue
                payload = next_waiting()
            else:
                if reader._buf:
                    # Frames read while the last call ran (with a host
                    # call's reply): written ahead, so their cancels are
                    # looked for first, as for the backlog's.
                    read_ahead()
                    if backlog:
                        continue
                if reader.eof:
                    return 0
                try:
                    payload = read_frame(read)
                except FrameError as exc:
                    if exc.kind == "truncated":
                        log("stdin ended inside a frame; exiting")
                        return 0
                    self.send_frame_error(exc)
                    continue
                if payload is None:
                    return 0
                if reader._buf:
                    # More frames arrived with this one (calls written
                    # ahead): a cancel among them drops its request before
                    # it starts.
                    backlog.append(payload)
                    read_ahead()
                    if not backlog:
                        continue
                    payload = next_waiting()
            dispatch(payload)

    def _poll_pipe(self):
        """Read what is already waiting in stdin, without blocking. True when
        the backlog needs another look: frames read and not yet split, or a
        cancel that took a waiting request out."""
        reader = self.reader
        peek = self._peek
        if peek is None:
            if reader.fd is None or reader.eof:
                return False
            peek = self._open_peek()
        elif reader.eof:
            return False
        try:
            data = peek()
        except (OSError, ValueError):
            return False
        if data is None:
            return False
        if not data:
            reader.eof = True
            return False
        buf = reader._buf
        if not buf and not reader._skip:
            # Usually one whole frame (the call the pool wrote when the last
            # reply reached it): into the backlog without buffering it.
            n = len(data)
            if n >= 4 and _unpack_header(data)[0] + 4 == n <= reader.max_size + 4:
                payload = data[4:]
                self._backlog.append(payload)
                if _may_cancel(payload):
                    self._drop_cancelled()
                    return True  # the backlog may be empty now
                return False
            buf += data
        else:
            reader.feed(data)
        return True

    def _open_peek(self):
        peek, self._peek_fd = _peeker(self.reader.fd)
        self._peek = peek
        return peek

    def _read_idle(self, fd: int, n: int) -> bytes:
        """``os.read`` for the wait for the next frame, when the SIGTERM
        handler is ours. CPython runs a signal's handler between bytecodes,
        and a blocking read() entered just after a SIGTERM landed would
        hold it until the next frame: forever, for an idle worker. So the
        wait is a poll() that the signal's byte in the wakeup pipe ends too,
        and the read never blocks. When the next frame is already there (calls
        written ahead) this is one read(), as before."""
        peek = self._peek or self._open_peek()
        while True:
            data: Optional[bytes] = peek()
            if data is not None:
                return data
            self._wait_readable(fd)

    def _wait_readable(self, fd: int) -> bool:
        """Waits until fd has input (True) or a signal came (False; its
        handler runs once back in Python code). With our handlers, the
        poller watches the wakeup pipe too."""
        readable = False
        for ready, _ in self._poller.poll():
            if ready == fd:
                readable = True
            elif ready == self._wake_r:
                drain(self._wake_r)
        return readable

    def _read_ahead(self):
        """Move the complete frames already read into the backlog; a request
        whose cancel frame is among them is answered Cancelled, never run.

        The frames are split here, in one pass over the buffer, rather than
        one ``next_frame`` call each: with calls written ahead this runs
        before every call, so it is part of the bridge's cost per call."""
        reader = self.reader
        buf = reader._buf
        backlog = self._backlog
        if not reader._skip:
            limit = reader.max_size
            n = len(buf)
            pos = 0
            cancels = False
            while n - pos >= 4:
                (size,) = _unpack_header(buf, pos)
                end = pos + 4 + size
                if size > limit or end > n:
                    break
                payload = bytes(buf[pos + 4 : end])
                pos = end
                # A cancel frame's type is the string "cancel" in either
                # codec; other frames are decoded once, when dispatched.
                if _may_cancel(payload):
                    cancels = True
                backlog.append(payload)
            del buf[:pos]
            if cancels:
                self._drop_cancelled()
            if n - pos < 4 or size <= limit:
                return
        # An oversized frame (answered as it comes, then skipped), or what
        # follows one.
        for payload in self.buffered_frames():
            backlog.append(payload)
        self._drop_cancelled()

    def _drop_cancelled(self):
        """Each cancel frame in the backlog takes out the request it names,
        answered Cancelled; a cancel for a request not waiting stays (it
        comes too late, and is dropped when dispatched)."""
        backlog = self._backlog
        for payload, rid in self._cancels():
            for waiting in backlog:
                if waiting is payload:
                    break  # a request behind its cancel was not cancelled
                try:
                    wkind, wmsg = self.parse(waiting)
                except FrameError:
                    continue
                if wkind == "request" and wmsg.get("id") == rid:
                    backlog.remove(waiting)
                    backlog.remove(payload)
                    self.send(error_reply(rid, "Cancelled", f"request {rid} was cancelled before it started"))
                    break

    def _cancels(self):
        """The cancel frames waiting in the backlog, with the ids they
        name: (payload, id). One that does not decode, or whose id is not
        an integer, is left to be reported or ignored when dispatched."""
        found = []
        for payload in self._backlog:
            if not _may_cancel(payload):
                continue
            try:
                kind, msg = self.parse(payload)
            except FrameError:
                continue
            rid = msg.get("id")
            if kind == "cancel" and _is_int(rid):
                found.append((payload, rid))
        return found

    def on_cancel(self, rid):
        pass  # nothing runs between frames in sync mode: too late

    def on_request(self, msg):
        begun = self.begin(msg)
        if begun is None:
            return
        handler, ctx = begun
        rid = ctx.request_id
        self._current = ctx
        try:
            self._armed = True
            if self._sigint_unarmed and self._cancel_sent_for(rid):
                self._armed = False
                self._current = None
                ctx._done = True
                # It never ran: not counted, as one dropped while read ahead.
                self.worker.requests_handled -= 1
                self.send(error_reply(rid, "Cancelled", f"request {rid} was cancelled before it started"))
                return
            result = invoke(handler, msg["args"], ctx)
            self._armed = False
            if ctx.cancelled:
                raise Cancelled
            reply = {"id": rid, "success": True, "result": result}
        except Cancelled:
            self._armed = False
            reply = cancelled_reply(rid)
        except KeyboardInterrupt as exc:
            self._armed = False
            # Cancelled only when the pool's SIGINT raised it (its handler
            # set ctx.cancelled); one the handler raised itself is a failed
            # reply of its class, as in asyncio mode.
            reply = cancelled_reply(rid) if ctx.cancelled else failed_reply(rid, exc)
        except BaseException as exc:
            self._armed = False
            if fatal(exc):
                raise
            # A handler that turned its cancellation into another error was
            # still cancelled: the reply says so.
            reply = cancelled_reply(rid) if ctx.cancelled else failed_reply(rid, exc)
        self._current = None
        ctx._done = True  # a thread the handler left behind emits nothing now
        self.send(reply)

    def _cancel_sent_for(self, rid) -> bool:
        """After a SIGINT that came while no handler ran: whether the pool
        sent a cancel frame for request ``rid`` (it sends one before its
        SIGINT to a worker that declares ``pipeline``). The frames stdin
        holds now are read without waiting, with SIGINT held (a
        KeyboardInterrupt must not fall between a read and the buffering
        of its bytes); the others go to the backlog, as read ahead."""
        self._sigint_unarmed = False
        self._reading = True
        try:
            while self._poll_pipe():
                pass
            if self.reader._buf:
                self._read_ahead()
            for payload, cancelled in self._cancels():
                if cancelled == rid:
                    self._backlog.remove(payload)
                    return True
            return False
        finally:
            self._reading = False
            self._deliver_held_sigint()

    # --- SIGINT ----------------------------------------------------------------

    def _on_sigint(self, signum, frame):
        # Armed only while a handler runs. Disarming here means one SIGINT
        # raises at most once, even if it lands just after the handler
        # returned (then the reply is Cancelled, still exactly one reply).
        # One that comes while no handler runs is noted: it may be for the
        # request about to start (see _cancel_sent_for).
        if not self._armed:
            self._sigint_unarmed = True
            return
        ctx = self._current
        if ctx is not None and ctx.cancelled:
            # Already cancelled (its cancel frame came during a host call):
            # a second interruption would cut into its clean-up.
            return
        if self._writing or self._reading:
            self._sigint_held = True
            return
        self._armed = False
        if ctx is not None:
            ctx.cancelled = True
        raise KeyboardInterrupt

    def send(self, value: dict[str, Any]) -> None:
        if threading.get_ident() != _MAIN_THREAD:
            return super().send(value)  # signal handlers run on the main thread only
        self._send_holding_sigint(self._frame(value))

    def send_chunk(self, ctx: Context, data: Any) -> bool:
        if threading.get_ident() != _MAIN_THREAD:
            return super().send_chunk(ctx, data)  # a thread the handler started
        self._send_holding_sigint(self._frame({"type": "chunk", "id": ctx.request_id, "data": data}))
        return True

    def _send_holding_sigint(self, data: bytes) -> None:
        with self._write_lock:
            # A SIGINT must not interrupt a half-written frame (a chunk sent
            # by a handler): it is held back until the frame is out.
            self._writing = True
            try:
                self._write(data)
            finally:
                self._writing = False
        self._deliver_held_sigint()

    def _deliver_held_sigint(self) -> None:
        """Raises the SIGINT held back while a frame was written or read,
        now that the frame is out (or its bytes are buffered)."""
        if self._sigint_held:
            self._sigint_held = False
            self._on_sigint(signal.SIGINT, None)

    # --- host calls --------------------------------------------------------------

    def call_host(self, ctx: Context, function: str, args: Any) -> Any:
        # The main thread is the only reader, so it reads until its reply
        # comes; requests arriving meanwhile wait in the backlog.
        hid = next(self._host_ids)
        self.send_host_call(hid, ctx, function, args)
        # SIGINT is held from here on, except while _read_holding_sigint
        # waits for input: a KeyboardInterrupt raised anywhere else could
        # fall between a read and the buffering of its bytes, or between
        # taking a frame out of the buffer and acting on it, and lose them.
        # CPython runs a signal's handler late (at the next bytecode it
        # checks), so "anywhere else" is more than it looks.
        self._reading = True
        try:
            ok, value = self._await_host_reply(ctx, hid)
        finally:
            self._reading = False
        self._deliver_held_sigint()
        if ok:
            return value
        raise value

    def _await_host_reply(self, ctx: Context, hid: int):
        """Reads frames until host call ``hid``'s reply: (ok, value)."""
        reader = self.reader
        read = self._read_holding_sigint
        while True:
            try:
                payload = reader.read_frame(read)
            except FrameError as exc:
                if exc.kind == "truncated":
                    payload = None
                else:
                    self.send_frame_error(exc)
                    continue
            if payload is None:
                raise ConnectionError(f"stdin closed while waiting for host call {hid}")
            try:
                kind, msg = self.parse(payload)
            except FrameError as exc:
                self.send_frame_error(exc)
                continue
            if kind != "request" and stray(kind, msg):
                continue
            if kind == "host_reply":
                if msg["id"] == hid:
                    return host_outcome(msg)
                log(f"host_reply {msg['id']} matches no pending host call; dropped")
            elif kind == "cancel" and msg["id"] == ctx.request_id:
                ctx.cancelled = True
                raise Cancelled(f"request {ctx.request_id} was cancelled")
            else:
                # Calls written ahead, and cancels for them: a request whose
                # cancel came too drops out before it starts.
                self._backlog.append(payload)
                if kind == "cancel":
                    self._drop_cancelled()

    def _read_holding_sigint(self, fd: int, n: int) -> bytes:
        """``os.read`` for call_host, which holds SIGINT. Only the wait for
        input lets it through: a SIGINT held since the last read raises
        here, and one that comes during the wait ends it (poll, or the
        wakeup pipe for one that landed just before). Nothing is in flight
        then: every byte read so far is in the reader's buffer, and every
        frame taken out of it has been acted on."""
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(fd, select.POLLIN)
        self._reading = False
        try:
            self._deliver_held_sigint()
            while not self._wait_readable(fd):
                pass
        finally:
            self._reading = True
        return os.read(fd, n)

    async def acall_host(self, ctx: Context, function: str, args: Any) -> Any:
        # An async helper a sync handler runs (asyncio.run): still blocking.
        return self.call_host(ctx, function, args)


def _may_cancel(payload: bytes) -> bool:
    """Whether a frame may be a cancel: its type, the string "cancel",
    is in it as such, or JSON could write it with escapes (a frame with a
    backslash is decoded to tell)."""
    return b"cancel" in payload or b"\\" in payload


def _peeker(fd):
    """A function that returns what stdin (``fd``) holds now, without
    waiting: None when nothing, b"" at its end; and the descriptor it opened
    for that (the caller closes it), or None.

    For a pipe, a second open file description of it that does not block:
    one ``read`` per look (the blocking reads keep the first). Anything
    else (or no /proc), a ``poll`` and then a ``read``."""
    read = os.read
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            # Opening /proc/self/fd/N opens the pipe itself, not a copy of
            # the descriptor: O_NONBLOCK here leaves fd blocking.
            nb = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)

            def peek():
                try:
                    return read(nb, 65536)
                except BlockingIOError:
                    return None

            return peek, nb
    except OSError:
        pass
    # A poll object registered once: half the cost of a select() per look,
    # which builds its lists every time.
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    poll = poller.poll

    def peek():
        return read(fd, 65536) if poll(0) else None

    return peek, None


def _on_sigterm(signum, frame):
    # Clean exit: finally blocks and atexit hooks still run.
    raise SystemExit(0)
