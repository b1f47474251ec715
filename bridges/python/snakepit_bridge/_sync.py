"""The sync serve loop: plain functions, one request at a time.

The main thread reads a frame, runs the handler, writes the reply. This is
the hot path of the pool's benchmarks, so it does as little per request as it
can. SIGINT cancels the running handler (KeyboardInterrupt inside it). Frames
that arrive while a handler runs (calls the pool wrote ahead, or frames read
while waiting for a host reply) wait in a backlog; a request whose cancel
frame is already there is answered Cancelled and never run.

Stdin has one reader at a time. The main thread holds it between calls;
while a handler runs, whichever thread waits for a host reply reads (the
handler's, or one it started), and hands each reply to the thread that
made the call. When the handler returns the main thread takes stdin back,
and the host calls of its call still waiting fail with Cancelled.
"""

from __future__ import annotations

import itertools
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
    MAX_HOST_CALLS_IN_FLIGHT, Server, cancelled_reply, check_live, drain, error_reply, failed_reply, fatal, finished,
    host_outcome, leave_if_forked, log, stray, stream_ended,
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
        self._terminating = False  # SIGTERM came (see _on_sigterm)
        # A thread that reads stdin sent the main thread a SIGTERM again
        # (see _pass_signals_on); not yet seen by _on_sigterm.
        self._sigterm_nudged = False
        self._reading = False  # in call_host, and not waiting for input
        self._sigint_held = False  # also a SIGTERM's, while writing
        self._current = None
        self._backlog = deque()
        # What is known of the backlog's frames for matching cancels to the
        # requests they name, so that each frame is decoded once however
        # many cancels come (see _scan_backlog). The frames appended since
        # the last scan are the last _unscanned ones at most; the others
        # were scanned. _scanned: id(payload) -> (payload, kind, id) for
        # the scanned requests and unmatched cancels still in the backlog,
        # which _requests and _late list by id, in backlog order. _dropped:
        # id(payload) -> payload for frames taken out of the backlog but
        # still in the deque (a cancelled request and its cancel), skipped
        # when their turn comes. Each holds its payloads, so no id is reused
        # while it is there.
        self._unscanned = 0
        self._scanned = {}
        self._requests = {}
        self._late = {}
        self._dropped = {}
        self._peek = None
        self._peek_fd = None
        self._poller = None  # stdin (and the wakeup pipe, with our handlers)
        self._wake_r = None
        self._wake_w = None
        # Who reads stdin: the id of the thread that does, or None while a
        # handler runs and no host call waits. Guarded by _host_cond, as
        # are _host_waiting (host call id -> _Waiter) and _main_wants.
        self._host_cond = threading.Condition(threading.Lock())
        self._stdin_holder = _MAIN_THREAD
        self._host_waiting = {}
        self._main_wants = False
        # The cap on host calls waiting for their replies (see
        # MAX_HOST_CALLS_IN_FLIGHT), also guarded by _host_cond: the ids of
        # the host calls given a place (written, or about to be) whose
        # reply has not been read, those whose caller gave up waiting
        # included; and the host calls held for a place, in the order they
        # were made (_Waiter, settled when given one or failed).
        self._host_sent = set()
        self._host_held = deque()
        # A byte in it tells a thread that reads stdin to let it go: the
        # handler returned (see _take_stdin_back). Opened on first use.
        self._yield_r = None
        self._yield_w = None
        # The main thread's wait for another thread (see
        # _wait_holding_sigint): a byte in this pipe ends it.
        self._main_waiting = False
        self._main_wake_r = None
        self._main_wake_w = None
        # The thread that watches for signals (see _watch_signals), while
        # it does; it ends once it finds this None.
        self._watcher = None

    def serve(self, install_signals: bool) -> int:
        # Handlers go in before hello: once the pool has seen hello it may
        # signal us, and Python's default SIGINT would kill the process.
        old_wakeup = None
        old_nudge = None
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
            if _NUDGE is not None:
                old_nudge = (signal.signal(_NUDGE, _nothing),)
                self._watch_signals()
            signal.signal(signal.SIGINT, self._on_sigint)
            signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            self.send(self.worker.hello())
            return self._serve(self._read_idle if install_signals else None)
        finally:
            if self._watcher is not None:
                watcher, self._watcher = self._watcher, None
                # A byte 0 (no signal's number) wakes it; written again
                # until it has ended, as a thread of the handler that
                # reads stdin may take one first.
                while watcher.is_alive():
                    try:
                        os.write(self._wake_w, b"\0")
                    except BlockingIOError:
                        pass  # full: it wakes anyway
                    watcher.join(0.05)
            if old_nudge is not None and _NUDGE is not None:
                # A nudge the watcher sent last may not have been taken
                # yet: taken here, with the signal blocked, so that it
                # never meets the old handler (the default one ends the
                # process).
                nudge = {_NUDGE}
                signal.pthread_sigmask(signal.SIG_BLOCK, nudge)
                try:
                    while signal.sigtimedwait(nudge, 0) is not None:
                        pass
                    signal.signal(_NUDGE, signal.SIG_DFL if old_nudge[0] is None else old_nudge[0])
                finally:
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, nudge)
            # The second description of the pipe, if the loop opened one.
            if self._peek_fd is not None:
                os.close(self._peek_fd)
                self._peek = self._peek_fd = None
            if self._wake_r is not None:
                signal.set_wakeup_fd(-1 if old_wakeup is None else old_wakeup)
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = None
            for end in (self._yield_r, self._yield_w, self._main_wake_r, self._main_wake_w):
                if end is not None:
                    os.close(end)
            self._yield_r = self._yield_w = self._main_wake_r = self._main_wake_w = None

    def _watch_signals(self):
        """Starts the thread that watches the signal wakeup pipe while the
        worker serves (_watch). CPython runs a signal's Python handler on
        the main thread only, between bytecodes, and a blocking call there
        (``time.sleep``, ``join``) ends early only when a signal is
        delivered to that thread while the call waits. A signal that lands
        just before the call begins, or that the kernel gives to another
        thread, would wait for the end of that call: a call the pool
        cancels with SIGINT would run on until the pool's grace period
        kills the worker, and one told to exit with SIGTERM would sleep on.
        So for each signal's byte the thread sends the main thread _NUDGE,
        whose handler does nothing: the wait ends with EINTR, and CPython
        runs the handlers of the signals that came before it goes on. A
        nudge never runs another signal's handler again (each cancel
        cancels once), and a nudge that finds none waiting is a no-op. The
        thread starts with every signal blocked, so the kernel gives none
        to it. serve() ends it (a byte 0 in the pipe, with _watcher None),
        and closes the pipe only once it has."""
        watcher = threading.Thread(target=self._watch, name="snakepit-signals", daemon=True)
        self._watcher = watcher
        # The new thread inherits this mask; the signals that come
        # meanwhile wait, and go to this thread once it is restored.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            watcher.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _watch(self):
        """The body of the thread _watch_signals starts: nudges the main
        thread for each signal's byte in the wakeup pipe, until serve()
        ends it. The main thread's own waits for input may take the bytes
        first: it then runs the handlers itself."""
        wake_r = self._wake_r
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        # A nudge can land just before a wait too, and be spent: it is
        # sent again, less and less often, until the main thread has run
        # its handler. ``sent``: _nudges_taken when the last went out.
        sent = None
        wait = None
        while True:
            poller.poll(wait)
            if self._watcher is None:
                return
            try:
                data = os.read(wake_r, 512)
            except (BlockingIOError, InterruptedError):
                data = b""  # the wait ran out, or the main thread took the bytes
            if self._watcher is None:
                # serve() ended it between the check above and this read,
                # which may have taken its byte 0.
                return
            if _names_a_signal(data):
                wait = 10
            elif sent is None or _nudges_taken != sent:
                sent = wait = None
                continue
            else:
                wait = min(wait * 2, 1000)
            sent = _nudges_taken
            if not _nudge():
                return

    def _serve(self, read=None) -> int:
        reader = self.reader
        read_frame = reader.read_frame
        backlog = self._backlog
        next_waiting = self._next_waiting
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
                if payload is None:
                    continue
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
                    self._unscanned += 1
                    read_ahead()
                    if not backlog:
                        continue
                    payload = next_waiting()
                    if payload is None:
                        continue
            dispatch(payload)

    def _next_waiting(self):
        """The first frame of the backlog, taken out; None when the backlog
        held only frames a cancel took out."""
        backlog = self._backlog
        while backlog:
            payload = backlog.popleft()
            if self._scanned or self._dropped:
                key = id(payload)
                if self._dropped.pop(key, None) is payload:
                    continue
                entry = self._scanned.get(key)
                if entry is not None and entry[0] is payload:
                    self._forget(entry)
            return payload
        return None

    def _forget(self, entry):
        """Takes a scanned frame (payload, kind, id) off the lists."""
        payload, kind, rid = entry
        del self._scanned[id(payload)]
        table = self._requests if kind == "request" else self._late
        same = table[rid]
        if same[0] is payload:
            del same[0]
        else:
            same[:] = [p for p in same if p is not payload]
        if not same:
            del table[rid]

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
                self._unscanned += 1
                if _may_cancel(payload):
                    self._scan_backlog()
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
            added = len(backlog)
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
            self._unscanned += len(backlog) - added
            if cancels:
                self._scan_backlog()
            if n - pos < 4 or size <= limit:
                return
        # An oversized frame (answered as it comes, then skipped), or what
        # follows one.
        for payload in self.buffered_frames():
            backlog.append(payload)
            self._unscanned += 1
        self._scan_backlog()

    def _scan_backlog(self):
        """Decodes the frames appended to the backlog since the last scan,
        in order, and acts on the cancels among them: each takes out the
        first request ahead of it with its id (answered Cancelled, never
        run); one that finds none stays (it comes too late, and is dropped
        when dispatched), noted for _cancel_sent_for. A request behind its
        cancel is not cancelled. Each frame is decoded here once, so a
        flood of cancels costs the same per cancel however long the
        backlog is. A frame that does not decode, or a cancel whose id is
        not an integer, is left to be reported or ignored when dispatched."""
        backlog = self._backlog
        n = min(self._unscanned, len(backlog))
        self._unscanned = 0
        if not n:
            return
        new = list(itertools.islice(reversed(backlog), n))
        new.reverse()
        for payload in new:
            try:
                kind, msg = self.parse(payload)
            except FrameError:
                continue
            rid = msg.get("id")
            if not _is_int(rid) or kind not in ("request", "cancel"):
                continue
            if kind == "cancel":
                waiting = self._requests.get(rid)
                if waiting:
                    request = waiting[0]
                    self._forget(self._scanned[id(request)])
                    self._dropped[id(request)] = request
                    self._dropped[id(payload)] = payload
                    self.send(error_reply(rid, "Cancelled", f"request {rid} was cancelled before it started"))
                    continue
                table = self._late
            else:
                table = self._requests
            self._scanned[id(payload)] = (payload, kind, rid)
            table.setdefault(rid, []).append(payload)
        if self._dropped and len(self._dropped) == len(backlog):
            # Only taken-out frames are left: the deque is emptied, so that
            # an empty backlog is seen as one.
            backlog.clear()
            self._dropped.clear()

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
            if self._host_sent and self._backlog:
                # With SIGINT held: a KeyboardInterrupt raised in
                # Condition.__enter__, once its lock is taken, would leave
                # _host_cond locked for good.
                self._reading = True
                try:
                    self._release_backlogged_replies()
                finally:
                    self._reading = False
                self._deliver_held_sigint()
            # Stdin goes to whichever thread waits for a host reply first.
            # A plain store: no thread waits for stdin now (a host call made
            # after the last take-back found its call ended, and one made
            # before it was failed by it), and the GIL makes it whole.
            self._stdin_holder = None
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
        finally:
            leave_if_forked()  # a process the handler forked returns here too
            # A thread the handler left behind emits nothing now, and its
            # host calls fail: stdin is the loop's again.
            ctx._done = True
            if not self._host_waiting and not self._host_held and self._stdin_holder is None:
                # The common case, with no lock and no wake-up: no host call
                # waits and no thread reads stdin. One that starts from now
                # on finds ``ctx._done`` set (send_host_call checks it once
                # the host call is in _host_waiting): it neither waits nor
                # reads. The table is looked at first: a thread whose host
                # call was in it reads stdin only while it is, and lets go
                # of stdin only after it took its call out, so with the
                # table seen empty, the holder seen None is no thread's.
                # The same holds for a host call held for a place
                # (_take_place), which reads stdin only while it is in
                # _host_held.
                self._stdin_holder = _MAIN_THREAD
            elif self._stdin_holder != _MAIN_THREAD:
                self._take_stdin_back(ctx)
        self._current = None
        if ctx._too_large is not None:
            reply = stream_ended(ctx, reply)
        self.send(reply)
        if self._terminating:
            # SIGTERM's SystemExit came while the call ran and was
            # swallowed (a handler catching BaseException, or the bridge
            # building a failed reply): the call is answered; now exit.
            raise SystemExit(0)

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
            self._scan_backlog()
            late = self._late.get(rid)
            if not late:
                return False
            cancel = late[0]
            self._forget(self._scanned[id(cancel)])
            self._dropped[id(cancel)] = cancel
            if len(self._dropped) == len(self._backlog):
                self._backlog.clear()
                self._dropped.clear()
            return True
        finally:
            self._reading = False
            self._deliver_held_sigint()

    # --- signals ---------------------------------------------------------------

    def _on_sigterm(self, signum, frame):
        if self._sigterm_nudged and self._terminating:
            # Sent again by a thread that read this SIGTERM's byte (see
            # _pass_signals_on), after it was acted on: a second SystemExit
            # would cut into the clean-up of the first.
            self._sigterm_nudged = False
            return
        # Clean exit: finally blocks and atexit hooks still run. Noted too,
        # for a handler that swallows the SystemExit (see on_request).
        self._terminating = True
        if self._writing:
            # Not in the middle of a frame (a large one goes out in parts
            # while the pool reads): held as a SIGINT is, and raised by
            # _deliver_held_sigint once the frame is out.
            self._sigint_held = True
            return
        raise SystemExit(0)

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
        now that the frame is out (or its bytes are buffered); or the
        SystemExit of a SIGTERM held while a frame was written."""
        if self._sigint_held:
            self._sigint_held = False
            if self._terminating:
                raise SystemExit(0)
            self._on_sigint(signal.SIGINT, None)

    # --- host calls --------------------------------------------------------------

    def _take_stdin_back(self, ctx):
        """The handler has returned (``ctx._done`` is set): fails the host
        calls of its call still waiting, and takes stdin back for the main
        thread, from a thread that reads it if one does (woken through the
        yield pipe: whatever it read is buffered or queued by then)."""
        cond = self._host_cond
        self._fail_waiting(ctx, lambda hid: finished(ctx))
        with cond:
            if self._stdin_holder is not None:
                self._main_wants = True
                os.write(self._yield_w, b"\0")
                while self._stdin_holder is not None:
                    cond.wait()
                self._main_wants = False
                drain(self._yield_r)
            self._stdin_holder = _MAIN_THREAD

    def call_host(self, ctx: Context, function: str, args: Any) -> Any:
        # From the handler's thread (the main one) or any thread it started,
        # while its call runs. Whoever waits for a reply reads stdin, one
        # thread at a time; requests arriving meanwhile wait in the backlog.
        main = threading.get_ident() == _MAIN_THREAD
        if main:
            # SIGINT is held from here on, except while the main thread waits
            # (for input, or for the thread that reads it): a
            # KeyboardInterrupt raised anywhere else could fall between a
            # read and the buffering of its bytes, or between taking a frame
            # out of the buffer and acting on it, and lose them. CPython runs
            # a signal's handler late (at the next bytecode it checks), so
            # "anywhere else" is more than it looks.
            self._reading = True
        try:
            check_live(ctx)
            hid = next(self._host_ids)
            if self.reader.eof:
                raise ConnectionError(f"stdin is closed: the pool cannot answer host call {hid}")
            frame = self.host_call_frame(hid, ctx, function, args)
            self._take_place(ctx, hid, main)
            sent = False
            try:
                # Given a place after a wait: the call may have been
                # cancelled or have ended meanwhile.
                check_live(ctx)
                waiter = _Waiter(ctx)
                with self._host_cond:
                    self._host_waiting[hid] = waiter
                try:
                    if not self.send_host_call(ctx, frame):
                        raise finished(ctx)
                    sent = True
                    self._await_host_reply(waiter, main)
                finally:
                    with self._host_cond:
                        self._host_waiting.pop(hid, None)
            finally:
                if not sent:
                    self._release_place(hid)
        finally:
            if main:
                self._reading = False
                # Also when the host call failed before it was sent (its
                # arguments too large, or not encodable): a SIGINT held
                # meanwhile (encoding large arguments takes a while) must
                # not wait for the handler's next frame.
                self._deliver_held_sigint()
        if waiter.ok:
            return waiter.value
        raise waiter.value

    def _take_place(self, ctx, hid, main):
        """Gives host call ``hid`` of ``ctx`` one of the
        MAX_HOST_CALLS_IN_FLIGHT places, once the host calls made before it
        have theirs; meanwhile it waits (reading stdin when no other thread
        does, so that the replies that free places are read). Raises what
        a waiting host call would when its call is cancelled or ends, or
        stdin ends, before then; it is then never sent."""
        cond = self._host_cond
        with cond:
            if not self._host_held and len(self._host_sent) < MAX_HOST_CALLS_IN_FLIGHT:
                self._host_sent.add(hid)
                return
            turn = _Waiter(ctx)
            turn.hid = hid
            self._host_held.append(turn)
            # Checked after it is in _host_held, as send_host_call checks
            # after the host call is in _host_waiting: either the loop's
            # end of the call (on_request) sees it, or this sees the end.
            if ctx._done:
                self._host_held.remove(turn)
                raise finished(ctx)
        try:
            self._await_host_reply(turn, main)
        except BaseException:
            # A SIGINT's KeyboardInterrupt (or SystemExit) during the wait.
            with cond:
                if turn.done and turn.ok:
                    self._release_locked(hid)
                elif not turn.done:
                    self._host_held.remove(turn)
                    turn.settle(False, None)
            raise
        if not turn.ok:
            raise turn.value

    def _release_place(self, hid):
        """Host call ``hid`` had a place and was not sent: the place goes to
        the next held host call."""
        with self._host_cond:
            self._release_locked(hid)

    def _release_locked(self, hid):
        """Frees host call ``hid``'s place (its reply was read, or it was
        never sent) and gives the free places to the held host calls, in
        order. The caller holds _host_cond."""
        sent = self._host_sent
        sent.discard(hid)
        held = self._host_held
        if not held or len(sent) >= MAX_HOST_CALLS_IN_FLIGHT:
            return
        while held and len(sent) < MAX_HOST_CALLS_IN_FLIGHT:
            turn = held.popleft()
            sent.add(turn.hid)
            turn.settle(True, None)
        self._host_cond.notify_all()
        self._wake_main()

    def on_host_reply(self, msg):
        # A late reply, read between calls: its host call's place is free.
        with self._host_cond:
            self._release_locked(msg["id"])
        super().on_host_reply(msg)

    def _release_backlogged_replies(self):
        """Frees the places of the host calls whose late replies wait in
        the backlog (read ahead with this request): while this call runs
        they would not be dispatched, and a host call of it held for a
        place could wait for them for good. Only when host calls of ended
        calls still hold places; the frames stay, and are dropped as late
        replies when their turn comes."""
        for payload in self._backlog:
            if b"host_reply" not in payload and b"\\" not in payload:
                continue
            try:
                kind, msg = self.parse(payload)
            except FrameError:
                continue
            if kind == "host_reply" and _is_int(msg.get("id")):
                with self._host_cond:
                    self._release_locked(msg["id"])

    def _await_host_reply(self, waiter, main):
        """Returns once ``waiter`` is settled: reads stdin while no other
        thread does, else waits for the one that does."""
        cond = self._host_cond
        me = threading.get_ident()
        while True:
            with cond:
                while not waiter.done and self._stdin_holder is not None:
                    if main:
                        self._wait_holding_sigint(cond)
                    else:
                        cond.wait()
                if waiter.done:
                    return
                if not main and self._yield_r is None:
                    self._yield_r, self._yield_w = os.pipe()
                    os.set_blocking(self._yield_r, False)
                    os.set_blocking(self._yield_w, False)
                self._stdin_holder = me
            try:
                self._read_for(waiter, main)
            finally:
                with cond:
                    self._stdin_holder = None
                    cond.notify_all()
                    self._wake_main()

    def _wait_holding_sigint(self, cond):
        """``cond.wait()`` for the main thread, called with ``cond`` held:
        it lets a SIGINT through (a held one raises here), as nothing is in
        flight while it waits. A wait on a lock would not see a signal that
        landed just before it began (CPython runs the handler only once the
        wait is over), so it is a poll() of a pipe that _wake_main writes
        to, and of the signal wakeup pipe."""
        if self._main_wake_r is None:
            self._main_wake_r, self._main_wake_w = os.pipe()
            os.set_blocking(self._main_wake_r, False)
            os.set_blocking(self._main_wake_w, False)
        wake_r = self._main_wake_r
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        if self._wake_r is not None:
            poller.register(self._wake_r, select.POLLIN)
        self._main_waiting = True
        cond.release()
        try:
            self._reading = False
            self._deliver_held_sigint()
            for ready, _ in poller.poll():
                drain(ready)
        finally:
            self._reading = True
            cond.acquire()
            self._main_waiting = False

    def _wake_main(self):
        """Ends the main thread's wait for another thread, if it waits (the
        caller holds _host_cond and has changed what it waits for)."""
        if self._main_waiting:
            try:
                os.write(self._main_wake_w, b"\0")
            except BlockingIOError:
                pass  # full: it wakes anyway

    def _read_for(self, waiter, main):
        """Reads frames, acting on each, until ``waiter`` is settled (or,
        on a thread, until the main thread takes stdin back)."""
        reader = self.reader
        read = self._read_holding_sigint if main else self._thread_reader()
        while not waiter.done:
            try:
                payload = reader.read_frame(read)
            except _Yield:
                return
            except FrameError as exc:
                if exc.kind == "truncated":
                    payload = None
                else:
                    self.send_frame_error(exc)
                    continue
            if payload is None:
                self._fail_all_waiting()
                return
            self._host_frame(payload)

    def _thread_reader(self):
        """``os.read`` for a thread that reads stdin: it waits in a poll()
        of its own, which the yield pipe ends too (_Yield). With our signal
        handlers it watches the signal wakeup pipe as well (see
        _pass_signals_on), unless a thread of the bridge watches it (see
        _watch_signals): a byte this thread took would be one that thread
        does not see."""
        poller = select.poll()
        poller.register(self.reader.fd, select.POLLIN)
        yield_r = self._yield_r
        poller.register(yield_r, select.POLLIN)
        wake_r = None if self._watcher is not None else self._wake_r
        if wake_r is not None:
            poller.register(wake_r, select.POLLIN)

        def read(fd: int, n: int) -> bytes:
            nonlocal wake_r
            while True:
                ready = [r for r, _ in poller.poll()]
                if yield_r in ready and self._main_wants:
                    raise _Yield
                if wake_r is not None and wake_r in ready and not self._pass_signals_on(wake_r):
                    poller.unregister(wake_r)  # the loop is over: closed
                    wake_r = None
                if fd in ready:
                    return os.read(fd, n)

        return read

    def _pass_signals_on(self, wake_r):
        """On a thread that reads stdin, when the signal wakeup pipe has
        bytes: makes sure the main thread runs the handlers of the signals
        they name. CPython runs a signal's Python handler on the main
        thread only, between bytecodes; the signal interrupts a blocking
        call of the main thread only when it is delivered to that thread
        while the call waits. A signal that lands just before the handler's
        thread blocks (``time.sleep``), or that the kernel gives to another
        thread, would otherwise wait for the end of that block: a worker
        told to exit would sleep on. So the main thread is woken:
        through its own wake-up pipe when it waits for this thread (it then
        runs the handlers as it goes back to waiting); else, for a SIGTERM
        not yet acted on, by sending it SIGTERM again (see _on_sigterm for
        the case where the first is acted on meanwhile). Not SIGINT: a
        second run of its handler could land in the next call and cancel
        it. A SIGTERM whose handler is no longer ours (a handler's own) is
        not sent again. Only where no thread of the bridge watches the pipe
        (see _watch_signals), which does better. False once the pipe is
        closed (the loop is over)."""
        if self._wake_r != wake_r:
            return False
        data = b""
        try:
            while True:
                more = os.read(wake_r, 4096)
                if not more:
                    break
                data += more
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            return False
        if not data:
            return True
        with self._host_cond:
            if self._main_waiting:
                self._wake_main()
                return True
        if (int(signal.SIGTERM) in data and not self._terminating
                and signal.getsignal(signal.SIGTERM) == self._on_sigterm):
            self._sigterm_nudged = True
            try:
                signal.pthread_kill(_MAIN_THREAD, signal.SIGTERM)
            except (OSError, ValueError):
                pass  # the main thread is gone: the process is exiting
        return True

    def _host_frame(self, payload):
        """Acts on a frame read while host calls wait: a reply settles the
        host call it answers, a cancel of the running call fails its host
        calls, anything else waits in the backlog."""
        try:
            kind, msg = self.parse(payload)
        except FrameError as exc:
            self.send_frame_error(exc)
            return
        if kind != "request" and stray(kind, msg, self):
            return
        current = self._current
        if kind == "host_reply":
            with self._host_cond:
                # Its place is free, whether its caller still waits or not.
                self._release_locked(msg["id"])
                waiter = self._host_waiting.pop(msg["id"], None)
                if waiter is not None:
                    waiter.settle(*host_outcome(msg))
                    self._host_cond.notify_all()
                    self._wake_main()
            if waiter is None:
                self.unawaited_reply(msg)
        elif kind == "cancel" and current is not None and msg["id"] == current.request_id:
            rid = current.request_id
            failed = self._fail_waiting(current, lambda hid: Cancelled(f"request {rid} was cancelled"))
            if _MAIN_THREAD in failed or self._wake_r is None:
                # The handler's thread raises Cancelled from its host call
                # (or nothing can interrupt it): the pool's SIGINT, which
                # follows, must not cut into its clean-up.
                current.cancelled = True
            else:
                # Read by a thread of the handler's while the handler does
                # something else: it is interrupted as by the pool's SIGINT
                # (a real one, which also ends a wait in C code). The pool's
                # own, which follows, then finds it cancelled, and is ignored.
                signal.pthread_kill(_MAIN_THREAD, signal.SIGINT)
        else:
            # Calls written ahead, and cancels for them: a request whose
            # cancel came too drops out before it starts.
            self._backlog.append(payload)
            self._unscanned += 1
            if kind == "cancel":
                self._scan_backlog()

    def _fail_waiting(self, ctx, error):
        """Fails the host calls of ``ctx`` waiting for their reply (all of
        them when ``ctx`` is None), each with ``error(its id)``. Returns the
        ids of the threads that made them."""
        threads = set()
        with self._host_cond:
            for hid, waiter in list(self._host_waiting.items()):
                if ctx is None or waiter.ctx is ctx:
                    del self._host_waiting[hid]
                    waiter.settle(False, error(hid))
                    threads.add(waiter.thread)
            # Held host calls fail the same way, and are never sent.
            held = self._host_held
            for turn in list(held):
                if ctx is None or turn.ctx is ctx:
                    held.remove(turn)
                    turn.settle(False, error(turn.hid))
                    threads.add(turn.thread)
            self._host_cond.notify_all()
            self._wake_main()
        return threads

    def _fail_all_waiting(self):
        """Stdin has ended: no host reply can come."""
        self._fail_waiting(None, lambda hid: ConnectionError(f"stdin closed while waiting for host call {hid}"))

    def _read_holding_sigint(self, fd: int, n: int) -> bytes:
        """``os.read`` for call_host on the main thread, which holds SIGINT.
        Only the wait for input lets it through: a SIGINT held since the
        last read raises here, and one that comes during the wait ends it
        (poll, or the wakeup pipe for one that landed just before). Nothing
        is in flight then: every byte read so far is in the reader's
        buffer, and every frame taken out of it has been acted on."""
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


class _Yield(Exception):
    """Raised in a thread that reads stdin when the main thread takes it
    back; nothing is in flight then (see _thread_reader)."""


class _Waiter:
    """A host call waiting for its reply, or (held) for a place to be sent
    in: its id is then ``hid``."""

    __slots__ = ("ctx", "thread", "done", "ok", "value", "hid")

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.hid = 0
        self.thread = threading.get_ident()
        self.done = False
        self.ok = False
        self.value: Any = None

    def settle(self, ok: bool, value: Any) -> None:
        if not self.done:
            self.ok = ok
            self.value = value
            self.done = True


# The signal a thread sends the main thread to have it run the Python
# handlers of signals that came while it waited (see _watch_signals): a
# real-time one, which no other code of the process is likely to use. None
# where there are none (not Linux): the nudges are not sent then.
_NUDGE = signal.SIGRTMAX - 3 if hasattr(signal, "SIGRTMAX") else None


# How many times the main thread has run _nothing: once it has after a
# nudge was sent, it has run the handlers of the signals that came before.
_nudges_taken = 0


def _nothing(signum, frame):
    """The handler of _NUDGE: the wait it ends is what it is for."""
    global _nudges_taken
    _nudges_taken += 1


def _names_a_signal(data: bytes) -> bool:
    """Whether ``data`` (bytes read from the signal wakeup pipe) names a
    signal other than _NUDGE (0 names none: it is the byte serve() ends
    the watching thread with)."""
    return any(signum != _NUDGE and signum for signum in data)


def _nudge() -> bool:
    """Sends the main thread _NUDGE; False when it is gone."""
    nudge, main = _NUDGE, _MAIN_THREAD
    if nudge is None or main is None:
        return False
    try:
        signal.pthread_kill(main, nudge)
    except (OSError, ValueError):
        return False  # the process is exiting
    return True


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
