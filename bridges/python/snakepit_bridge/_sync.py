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
import threading
from typing import Any

from ._context import Cancelled, Context
from ._handler import invoke
from ._server import Server, cancelled_reply, error_reply, failed_reply, host_outcome, log
from ._wire import FrameError

_MAIN_THREAD = threading.main_thread().ident


class SyncServer(Server):
    def __init__(self, worker, read_fd, write_fd):
        super().__init__(worker, read_fd, write_fd)
        # SIGINT: armed while a handler runs; held while the main thread
        # writes a frame, and delivered once it is out.
        self._armed = False
        self._writing = False
        self._sigint_held = False
        self._current = None
        self._backlog = []
        self._poller = None

    def serve(self, install_signals: bool) -> int:
        # Handlers go in before hello: once the pool has seen hello it may
        # signal us, and Python's default SIGINT would kill the process.
        if install_signals:
            signal.signal(signal.SIGINT, self._on_sigint)
            signal.signal(signal.SIGTERM, _on_sigterm)
        self.send(self.worker.hello())
        reader = self.reader
        read_frame = reader.read_frame
        backlog = self._backlog
        dispatch = self.dispatch
        while True:
            if backlog:
                payload = backlog.pop(0)
                # A request written ahead, about to start: a cancel for it
                # may have arrived in the pipe while the one before it ran.
                if self._poll_pipe():
                    backlog.insert(0, payload)
                    self._read_ahead()
                    if not backlog:
                        continue
                    payload = backlog.pop(0)
            else:
                if reader.eof:
                    return 0
                try:
                    payload = read_frame()
                except FrameError as exc:
                    if exc.kind == "truncated":
                        log("stdin ended inside a frame; exiting")
                        return 0
                    self.send_frame_error(exc)
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

    def _poll_pipe(self):
        """Read what is already waiting in stdin, without blocking; True if
        anything was read."""
        reader = self.reader
        if reader.fd is None or reader.eof:
            return False
        try:
            poller = self._poller
            if poller is None:
                # A poll object registered once: half the cost of a
                # select() per call, which builds its lists every time.
                poller = self._poller = select.poll()
                poller.register(reader.fd, select.POLLIN)
            if not poller.poll(0):
                return False
            data = os.read(reader.fd, 65536)
        except (OSError, ValueError):
            return False
        if not data:
            reader.eof = True
            return False
        reader.feed(data)
        return True

    def _read_ahead(self):
        """Move the complete frames already read into the backlog; a request
        whose cancel frame is among them is answered Cancelled, never run."""
        backlog = self._backlog
        for payload in self.buffered_frames():
            if b"cancel" not in payload:
                # Not a cancel frame (whose type is the string "cancel" in
                # either codec): decoded once, when it is dispatched.
                backlog.append(payload)
                continue
            try:
                kind, msg = self.parse(payload)
            except FrameError:
                backlog.append(payload)  # reported when dispatched
                continue
            if kind != "cancel":
                backlog.append(payload)
                continue
            rid = msg.get("id")
            for i, waiting in enumerate(backlog):
                try:
                    wkind, wmsg = self.parse(waiting)
                except FrameError:
                    continue
                if wkind == "request" and wmsg.get("id") == rid:
                    del backlog[i]
                    self.send(error_reply(rid, "Cancelled", f"request {rid} was cancelled before it started"))
                    break

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
            result = invoke(handler, msg["args"], ctx)
            self._armed = False
            if ctx.cancelled:
                raise Cancelled
            reply = {"id": rid, "success": True, "result": result}
        except (KeyboardInterrupt, Cancelled):
            self._armed = False
            reply = cancelled_reply(rid)
        except Exception as exc:
            self._armed = False
            reply = failed_reply(rid, exc)
        self._current = None
        self.send(reply)

    # --- SIGINT ----------------------------------------------------------------

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

    def send(self, value: dict[str, Any]) -> None:
        if threading.get_ident() != _MAIN_THREAD:
            return super().send(value)  # signal handlers run on the main thread only
        data = self._frame(value)
        with self._write_lock:
            # A SIGINT must not interrupt a half-written frame (a chunk sent
            # by a handler): it is held back until the frame is out.
            self._writing = True
            try:
                self._write(data)
            finally:
                self._writing = False
        if self._sigint_held:
            self._sigint_held = False
            self._on_sigint(signal.SIGINT, None)

    # --- host calls --------------------------------------------------------------

    def call_host(self, ctx: Context, function: str, args: Any) -> Any:
        # The main thread is the only reader, so it reads until its reply
        # comes; requests arriving meanwhile wait in the backlog.
        hid = next(self._host_ids)
        self.send_host_call(hid, ctx, function, args)
        reader = self.reader
        while True:
            try:
                payload = reader.read_frame()
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
            if kind == "host_reply":
                if msg["id"] == hid:
                    ok, value = host_outcome(msg)
                    if ok:
                        return value
                    raise value
                log(f"host_reply {msg['id']} matches no pending host call; dropped")
            elif kind == "cancel":
                if msg["id"] == ctx.request_id:
                    ctx.cancelled = True
                    raise Cancelled(f"request {ctx.request_id} was cancelled")
            else:
                self._backlog.append(payload)

    async def acall_host(self, ctx: Context, function: str, args: Any) -> Any:
        # An async helper a sync handler runs (asyncio.run): still blocking.
        return self.call_host(ctx, function, args)


def _on_sigterm(signum, frame):
    # Clean exit: finally blocks and atexit hooks still run.
    raise SystemExit(0)
