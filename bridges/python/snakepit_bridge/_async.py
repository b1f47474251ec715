"""The asyncio serve loop: any ``async def`` handler, or max_concurrency > 1.

The loop reads frames as they arrive, runs up to max_concurrency requests at
once, and acts on ``cancel`` frames by cancelling the request's task. Plain
functions run on a small pool of daemon threads.
"""

from __future__ import annotations

import _thread
import asyncio
import collections
import concurrent.futures
import contextvars
import os
import queue
import select
import signal
import socket
import threading
import time
from typing import Any

from ._context import Cancelled, Context
from ._handler import invoke
from ._server import (
    MAX_HOST_CALLS_IN_FLIGHT, Server, cancelled_reply, check_live, encode_failure, error_reply, failed_reply, fatal, finished,
    host_outcome, leave_if_forked, log, stream_ended, unreadable_reply,
)
from ._wire import FrameError


class AsyncServer(Server):
    def __init__(self, worker, read_fd, write_fd):
        super().__init__(worker, read_fd, write_fd)
        self._size = worker.max_concurrency or 8
        self._tasks = {}  # request id -> (task, ctx)
        self._host_pending = {}  # host call id -> (ctx, resolve(ok, value))
        # The cap on host calls waiting for their replies (see
        # MAX_HOST_CALLS_IN_FLIGHT), one for the loop's coroutines and the
        # handlers' threads, guarded by _place_lock: the ids of the host
        # calls given a place (written, or queued to be) whose reply has
        # not been read, those whose caller gave up waiting included; and
        # the host calls held for a place, in the order they were made.
        self._place_lock = threading.Lock()
        self._host_sent = set()
        self._host_held = collections.deque()
        self._terminated = False
        self._input_ended = False  # EOF or SIGTERM: no host reply can come
        self._serving = False
        self._old_sigterm = None  # (handler,) once ours is installed
        self._wake = None  # (read, write) sockets of the signal wakeup fd
        self._old_wakeup_fd = -1
        self._loop_thread = None
        # Frames the loop thread has sent in this turn of the loop: written
        # together, in one write, when the turn ends.
        self._out = []

    def serve(self, install_signals: bool) -> int:
        loop = asyncio.new_event_loop()
        self._serving = True
        try:
            return loop.run_until_complete(self._main(install_signals))
        finally:
            self._serving = False
            self._flush()
            loop.close()
            if self._old_sigterm is not None:
                old = self._old_sigterm[0]
                self._old_sigterm = None
                signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)
            if self._wake is not None:
                signal.set_wakeup_fd(self._old_wakeup_fd)
                for end in self._wake:
                    end.close()
                self._wake = None

    def _drain_wake(self):
        try:
            while self._wake[0].recv(512):
                pass
        except (BlockingIOError, InterruptedError, OSError):
            pass

    def _watch_signals(self, sock, main):
        """A thread that watches the signal wakeup socket (``sock``, a
        duplicate of the loop's end) while the worker serves. CPython runs
        a signal's Python handler on the main thread, between bytecodes; a
        blocking call of the main thread (``time.sleep`` in an ``async
        def``) ends early only when the signal is delivered to that thread
        while the call waits. A SIGTERM that the kernel gives to another
        thread, or that lands just before the call begins, would wait for
        its end: no _on_sigterm, so no watchdog either. So a SIGTERM not yet
        acted on is sent to the main thread again (_on_sigterm acts once),
        and the loop is woken for any signal, as the socket's reader would.
        The thread ends when serve() closes the socket's other end."""
        with sock:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            while True:
                try:
                    poller.poll()
                    data = sock.recv(512)
                except (BlockingIOError, InterruptedError):
                    continue  # the loop's reader took the bytes
                except OSError:
                    return
                if not data:
                    return  # serve() is over
                if (int(signal.SIGTERM) in data and not self._terminated
                        and signal.getsignal(signal.SIGTERM) == self._on_sigterm):
                    try:
                        signal.pthread_kill(main, signal.SIGTERM)
                    except (OSError, ValueError):
                        return  # the main thread is gone: the process is exiting
                try:
                    self._loop.call_soon_threadsafe(_nothing)
                except RuntimeError:
                    return  # the loop is closed

    # --- writing -------------------------------------------------------------------

    def send(self, value: dict[str, Any]) -> None:
        if threading.get_ident() != self._loop_thread:
            return super().send(value)  # a handler's thread: written at once
        # Replies (and chunks, host calls) made in the same turn of the loop,
        # such as those of requests that arrived together, go out in one
        # write; in order, so a call's chunks still precede its reply.
        out = self._out
        out.append(self._frame(value))
        if len(out) == 1:
            self._loop.call_soon(self._flush)

    def send_chunk(self, ctx, data):
        if threading.get_ident() != self._loop_thread:
            # A thread's (a plain handler's, or one a coroutine started):
            # written at once, after the frames the loop has queued, which
            # may hold chunks the same call emitted before it.
            frame = self._frame({"type": "chunk", "id": ctx.request_id, "data": data})
            with self._write_lock:
                if ctx._done:
                    return False
                self._write(self._take_queued() + frame)
            return True
        out = self._out
        out.append(self._frame({"type": "chunk", "id": ctx.request_id, "data": data}))
        if len(out) == 1:
            self._loop.call_soon(self._flush)
        return True

    def _flush(self):
        out = self._out
        if not out:
            return
        # Taken under the write lock: a thread writing a chunk takes what is
        # queued first (_take_queued), so frames leave in the order made.
        with self._write_lock:
            if not out:
                return
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self._write(data)

    def _take_queued(self):
        """The frames the loop has queued, taken out, for a thread that
        holds the write lock. Only the loop's thread appends to the queue,
        and it empties the queue only under the lock: the first ``n``
        frames are taken whole, and one appended meanwhile stays."""
        out = self._out
        n = len(out)
        if not n:
            return b""
        queued = b"".join(out[:n])
        del out[:n]
        return queued

    async def _main(self, install_signals: bool) -> int:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._limit = asyncio.Semaphore(self._size)
        self._pool = _DaemonPool(self._size)
        # run_in_executor(None, ...) and asyncio.to_thread: on daemon
        # threads too (see _DaemonExecutor).
        loop.set_default_executor(_DaemonExecutor())
        self._eof = asyncio.Event()
        if install_signals:
            # sigint is not declared in this mode; a stray Ctrl-C must not kill us.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            # A handler of our own rather than loop.add_signal_handler, whose
            # handler runs only once the loop turns: this one also runs while
            # a handler blocks the loop (see _on_sigterm).
            self._old_sigterm = (signal.signal(signal.SIGTERM, self._on_sigterm),)
            # The kernel may deliver SIGTERM to a handler's thread: Python
            # then runs _on_sigterm only once the main thread next runs
            # bytecode, and the loop may be asleep in epoll for good (a
            # handler's thread waiting for a host reply). A byte on this
            # socket wakes it.
            self._wake = socket.socketpair()
            for end in self._wake:
                end.setblocking(False)
            self._old_wakeup_fd = signal.set_wakeup_fd(
                self._wake[1].fileno(), warn_on_full_buffer=False
            )
            loop.add_reader(self._wake[0].fileno(), self._drain_wake)
            # A handler that blocks the loop keeps it from reading that
            # socket: a thread watches it too (see _watch_signals).
            threading.Thread(target=self._watch_signals, args=(self._wake[0].dup(), threading.get_ident()),
                             name="snakepit-signals", daemon=True).start()
        self.send(self.worker.hello())
        fd = self.reader.fd
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
        # Host replies can no longer arrive: host calls made from now on fail
        # at once (see call_host), and those waiting fail here.
        self._input_ended = True
        for hid, (ctx, resolve) in list(self._host_pending.items()):
            self._host_pending.pop(hid, None)
            resolve(False, ConnectionError(f"stdin closed while waiting for host call {hid}"))
        self._fail_held(None, lambda hid: _input_closed(hid))
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

    def _on_sigterm(self, signum, frame):
        # Runs on the main thread (the loop's) between two bytecodes: also
        # while a handler blocks the loop (time.sleep in an async def), when
        # the loop cannot act on it. So besides waking the loop it starts a
        # watchdog that ends the process if the loop has not finished in
        # time. _thread, not threading: the code interrupted here may hold
        # one of threading's locks (starting a handler thread, say).
        if self._terminated:
            return
        self._terminated = True
        try:
            self._loop.call_soon_threadsafe(self._eof.set)
        except RuntimeError:
            pass  # the loop is closed: serve() is returning anyway
        _thread.start_new_thread(self._exit_if_stuck, ())

    def _exit_if_stuck(self):
        time.sleep(_SIGTERM_GRACE)
        # Under the write lock: no frame is half written, and none begins.
        with self._write_lock:
            if not self._serving:
                return
            log(f"SIGTERM: the event loop did not stop within {_SIGTERM_GRACE:g} s"
                " (a handler blocks it); exiting")
            os._exit(0)

    # --- reading -----------------------------------------------------------------

    def _on_readable(self):
        leave_if_forked()  # the loop of a process a coroutine forked runs on
        try:
            data = os.read(self.reader.fd, 65536)
        except InterruptedError:
            return
        except OSError as exc:
            log(f"reading stdin failed: {exc}")
            data = b""
        if not data:
            if self.reader.pending():
                log("stdin ended inside a frame")
            self._eof.set()
            return
        self.reader.feed(data)
        for payload in self.buffered_frames():
            self.dispatch(payload)

    def _read_thread(self):
        loop = self._loop
        reader = self.reader
        try:
            while True:
                try:
                    payload = reader.read_frame()
                except FrameError as exc:
                    if exc.kind == "truncated":
                        break
                    loop.call_soon_threadsafe(self.send_frame_error, exc)
                    continue
                if payload is None:
                    break
                loop.call_soon_threadsafe(self.dispatch, payload)
        finally:
            try:
                loop.call_soon_threadsafe(self._eof.set)
            except RuntimeError:
                pass  # loop already closed

    # --- requests ------------------------------------------------------------------

    def running(self, rid) -> bool:
        return rid in self._tasks

    def on_request(self, msg):
        rid = msg["id"]
        if rid in self._tasks:
            log(f"request id {rid} is already running; duplicate dropped")
            return
        begun = self.begin(msg)
        if begun is None:
            return
        handler, ctx = begun
        task = self._loop.create_task(self._serve(handler, msg["args"], ctx))
        self._tasks[rid] = (task, ctx)
        task.add_done_callback(lambda _task, rid=rid: self._task_done(rid))

    def _task_done(self, rid):
        # A task cancelled before its first step never runs its body (whose
        # finally removes it from _tasks), so it never replied; the pool
        # still needs exactly one reply.
        entry = self._tasks.pop(rid, None)
        if entry is not None:
            entry[1]._done = True
            self._fail_host_calls(entry[1])
            self.send(cancelled_reply(rid))

    def on_cancel(self, rid):
        entry = self._tasks.get(rid)
        if entry is None:
            return  # finished already; its reply is on the way or sent
        task, ctx = entry
        ctx.cancelled = True
        ctx._done = True  # its reply says Cancelled: no more chunks
        # Unblock a plain handler stuck in a host call of this request.
        self._fail_host_calls(ctx, lambda: Cancelled(f"request {rid} was cancelled"))
        handler = self._handlers.get(ctx.command)
        if handler is not None and (handler.is_async or not ctx._started):
            # An async handler, or a plain one still waiting for a slot:
            # answered Cancelled at once, and the plain one never runs.
            task.cancel()
        # A plain function running on a thread cannot be stopped; it sees
        # ctx.cancelled and its reply will say Cancelled.

    async def _serve(self, handler, args, ctx):
        rid = ctx.request_id
        try:
            async with self._limit:
                if ctx.cancelled:
                    raise Cancelled  # while it waited for the slot
                if handler.is_async:
                    result = await invoke(handler, args, ctx)
                else:
                    ctx._started = True
                    result = await self._in_thread(handler, args, ctx)
            if ctx.cancelled:
                raise Cancelled
            reply = {"id": rid, "success": True, "result": result}
        except (asyncio.CancelledError, Cancelled):
            reply = cancelled_reply(rid)
        except BaseException as exc:
            if fatal(exc):
                raise
            if type(exc) is _Carried:
                exc = exc.exc
            try:
                # A handler that turned its cancellation into another error
                # was still cancelled: the reply says so.
                reply = cancelled_reply(rid) if ctx.cancelled else failed_reply(rid, exc)
            except BaseException:  # exactly one reply, whatever happens
                reply = unreadable_reply(rid)
        finally:
            leave_if_forked()  # a process the handler forked returns here too
            self._tasks.pop(rid, None)
        # From here on a task or thread the handler left behind emits
        # nothing, and its host calls (made or waiting) raise Cancelled.
        ctx._done = True
        self._fail_host_calls(ctx)
        if ctx._too_large is not None:
            reply = stream_ended(ctx, reply)
        try:
            self.send(reply)
        except BaseException as exc:
            if fatal(exc):
                raise
            # Encoding a result raised a BaseException (the codec turns an
            # Exception into a failed reply itself): a TypeError too.
            self.send(error_reply(rid, *encode_failure(exc, "result")))

    def _in_thread(self, handler, args, ctx):
        loop = self._loop
        fut = loop.create_future()
        # Run in a copy of the task's context so contextvars (and the OTel
        # span) are visible to the handler on its thread.
        context = contextvars.copy_context()

        def job():
            try:
                outcome = (True, context.run(invoke, handler, args, ctx))
            except BaseException as exc:  # delivered to the awaiting task
                outcome = (False, exc)
            leave_if_forked()  # a process the handler forked returns here too
            try:
                loop.call_soon_threadsafe(_settle, fut, *outcome)
            except RuntimeError:
                pass  # loop closed: shutting down

        self._pool.submit(job)
        return fut

    # --- host calls --------------------------------------------------------------

    def on_host_reply(self, msg):
        # Its place is free, whether its caller still waits or not.
        self._release_place(msg["id"])
        pending = self._host_pending.pop(msg["id"], None)
        if pending is None:
            super().on_host_reply(msg)
        else:
            ok, value = host_outcome(msg)
            pending[1](ok, value)

    def _fail_host_calls(self, ctx, error=None):
        """Fails the host calls of ``ctx`` still waiting for their reply:
        each with ``error()``, or as made once the call has ended."""
        for hid, (owner, resolve) in list(self._host_pending.items()):
            if owner is ctx:
                self._host_pending.pop(hid, None)
                resolve(False, finished(ctx) if error is None else error())
        # Held host calls fail the same way, and are never sent.
        self._fail_held(ctx, lambda hid: finished(ctx) if error is None else error())

    def _fail_held(self, ctx, error):
        """Fails the held host calls of ``ctx`` (all of them when None),
        each with ``error(its id)``."""
        failed = []
        with self._place_lock:
            held = self._host_held
            for turn in list(held):
                if ctx is None or turn.ctx is ctx:
                    held.remove(turn)
                    failed.append(turn)
        for turn in failed:
            turn.resolve(False, error(turn.hid))

    def _take_place(self, ctx, hid, resolve):
        """None when host call ``hid`` of ``ctx`` has one of the
        MAX_HOST_CALLS_IN_FLIGHT places now. Else the _Turn it is held in,
        behind those held before it, until ``resolve(True, None)`` gives it
        a place or ``resolve(False, error)`` fails it, as a waiting host
        call fails (its call cancelled or ended, stdin closed). Raises that
        error at once when the call has ended or stdin is closed."""
        with self._place_lock:
            if not self._host_held and len(self._host_sent) < MAX_HOST_CALLS_IN_FLIGHT:
                self._host_sent.add(hid)
                return None
            turn = _Turn(ctx, hid, resolve)
            self._host_held.append(turn)
            # Checked under the lock, after it is held: the loop sets these
            # flags before it fails the held host calls (under the lock),
            # so either that fails this one or this sees the flag.
            if not (self._input_ended or ctx._done):
                return turn
            self._host_held.remove(turn)
        check_live(ctx)
        raise _input_closed(hid)

    def _release_place(self, hid):
        """Frees host call ``hid``'s place (its reply was read, or it was
        never sent) and gives the free places to the held host calls, in
        order."""
        granted = []
        with self._place_lock:
            sent = self._host_sent
            sent.discard(hid)
            held = self._host_held
            while held and len(sent) < MAX_HOST_CALLS_IN_FLIGHT:
                turn = held.popleft()
                turn.granted = True
                sent.add(turn.hid)
                granted.append(turn)
        for turn in granted:
            turn.resolve(True, None)

    def _leave_turn(self, turn):
        """The caller of a held host call stopped waiting (its task was
        cancelled): its place, if it was given one, goes to the next."""
        with self._place_lock:
            if not turn.granted:
                try:
                    self._host_held.remove(turn)
                except ValueError:
                    pass  # failed meanwhile
                return
        self._release_place(turn.hid)

    def call_host(self, ctx: Context, function: str, args: Any) -> Any:
        # From any thread but the loop's: the handler's own (a plain
        # function), or one it started. The loop reads the reply.
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError(
                "call_host would block the event loop: use 'await ctx.acall_host(...)'"
                " (for the session: 'await ctx.session.aget/aset/adelete(...)')"
            )
        check_live(ctx)
        hid = next(self._host_ids)
        frame = self.host_call_frame(hid, ctx, function, args)
        waiter = _ThreadWaiter()
        if self._take_place(ctx, hid, waiter.resolve) is not None:
            # Held: a place, or the failure a waiting host call would get.
            waiter.event.wait()
            if not waiter.ok:
                raise waiter.value
            waiter = _ThreadWaiter()
        sent = False
        try:
            # Given a place after a wait: the call may have ended meanwhile.
            check_live(ctx)
            self._host_pending[hid] = (ctx, waiter.resolve)
            # Checked after registering: the loop sets _input_ended before
            # it fails the pending host calls, so either it fails this one
            # or this sees the flag. The same holds for ctx._done (see
            # _serve).
            if self._input_ended:
                self._host_pending.pop(hid, None)
                raise _input_closed(hid)
            if not self.send_host_call(ctx, frame):
                self._host_pending.pop(hid, None)
                raise finished(ctx)
            sent = True
        finally:
            if not sent:
                self._release_place(hid)
        waiter.event.wait()
        if waiter.ok:
            return waiter.value
        raise waiter.value

    async def acall_host(self, ctx: Context, function: str, args: Any) -> Any:
        if threading.get_ident() != self._loop_thread:
            # An event loop of the handler's own, on its thread
            # (asyncio.run in a plain function): the reply comes through
            # this loop, so that thread waits for it.
            return self.call_host(ctx, function, args)
        check_live(ctx)
        hid = next(self._host_ids)
        if self._input_ended:
            raise _input_closed(hid)
        frame = self.host_call_frame(hid, ctx, function, args)
        fut = self._loop.create_future()
        turn = self._take_place(ctx, hid, self._resolver(fut))
        if turn is not None:
            # Held: a place, or the failure a waiting host call would get.
            try:
                await fut
            except BaseException:
                self._leave_turn(turn)  # also when its task was cancelled
                raise
            fut = self._loop.create_future()
        sent = False
        try:
            check_live(ctx)
            self._host_pending[hid] = (ctx, self._resolver(fut))
            try:
                if not self.send_host_call(ctx, frame):
                    raise finished(ctx)
                sent = True
                return await fut
            finally:
                self._host_pending.pop(hid, None)
        finally:
            if not sent:
                self._release_place(hid)

    def _resolver(self, fut):
        """resolve(ok, value) for a host call a coroutine awaits as ``fut``,
        callable from any thread: a place is given to a held host call by
        whoever frees one (a thread whose host call was not sent, too)."""
        loop = self._loop
        loop_thread = self._loop_thread

        def resolve(ok, value):
            if threading.get_ident() == loop_thread:
                _settle(fut, ok, value)
            else:
                try:
                    loop.call_soon_threadsafe(_settle, fut, ok, value)
                except RuntimeError:
                    pass  # the loop is closed: the worker is exiting

        return resolve

    def send_host_call(self, ctx, frame):
        if threading.get_ident() != self._loop_thread:
            return super().send_host_call(ctx, frame)  # written at once
        # On the loop's thread: after the frames of this turn, before the
        # call's reply (queued after it, in this turn or a later one).
        if ctx._done:
            return False
        out = self._out
        out.append(frame)
        if len(out) == 1:
            self._loop.call_soon(self._flush)
        return True


def _nothing():
    """Called on the loop only to wake it (see _watch_signals)."""


# How long the loop has after SIGTERM (it waits up to 1 s for the tasks it
# cancels) before the watchdog ends the process.
_SIGTERM_GRACE = 2.0


def _input_closed(hid):
    return ConnectionError(f"stdin is closed: the pool cannot answer host call {hid}")


class _Carried(Exception):
    """Carries through a Future what a Future refuses to hold: a
    StopIteration a plain handler raised. _serve replies with the original."""

    def __init__(self, exc):
        super().__init__(exc)
        self.exc = exc


def _settle(fut, ok, value):
    if not fut.done():
        if ok:
            fut.set_result(value)
        elif issubclass(type(value), StopIteration):  # not isinstance: see fatal()
            fut.set_exception(_Carried(value))
        else:
            fut.set_exception(value)


class _Turn:
    """A host call held for a place (see MAX_HOST_CALLS_IN_FLIGHT)."""

    __slots__ = ("ctx", "hid", "resolve", "granted")

    def __init__(self, ctx, hid, resolve):
        self.ctx = ctx
        self.hid = hid
        self.resolve = resolve
        self.granted = False  # given a place (and taken out of the queue)


class _ThreadWaiter:
    """A host call awaited by a thread (a plain handler)."""

    __slots__ = ("event", "ok", "value")

    def __init__(self):
        self.event = threading.Event()
        self.ok = False
        self.value = None

    def resolve(self, ok, value):
        self.ok = ok
        self.value = value
        self.event.set()


class _DaemonPool:
    """Threads for plain handlers.

    Daemon threads, unlike concurrent.futures' workers, are not joined at
    exit, so SIGTERM ends the process even while a handler is stuck.
    """

    def __init__(self, size):
        self._queue = queue.SimpleQueue()
        self._size = size
        self._threads = 0

    def submit(self, job):
        # The semaphore caps concurrent jobs at `size`, so one thread per
        # slot, started on demand, is enough.
        if self._threads < self._size:
            self._threads += 1
            threading.Thread(target=self._work, name=f"snakepit-handler-{self._threads}",
                             daemon=True).start()
        self._queue.put(job)

    def _work(self):
        get = self._queue.get
        while True:
            get()()


class _DaemonExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor, on daemon threads.

    ThreadPoolExecutor's threads are joined when the interpreter exits, so
    a handler awaiting blocking work there (``run_in_executor(None, ...)``,
    ``asyncio.to_thread``) would keep the worker alive after SIGTERM until
    that work ends. A ThreadPoolExecutor all the same, as
    ``set_default_executor`` requires, with its own ``submit``: a thread
    per job while none is idle (counted as ThreadPoolExecutor counts
    them), up to ThreadPoolExecutor's default count, then the jobs wait in
    turn. A job still running when the worker exits is cut, as the
    handlers' own threads are.
    """

    def __init__(self) -> None:
        super().__init__()
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._limit = min(32, (os.cpu_count() or 1) + 4)
        self._count = 0
        self._idle = 0
        self._closed = False

    def submit(self, fn, /, *args, **kwargs):
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._jobs.put((future, fn, args, kwargs))
            if self._idle:
                self._idle -= 1  # that thread takes this job
            elif self._count < self._limit:
                self._count += 1
                threading.Thread(target=self._work, name=f"snakepit-executor-{self._count}",
                                 daemon=True).start()
        return future

    def _work(self) -> None:
        get = self._jobs.get
        while True:
            job = get()
            if job is None:
                return
            _run(*job)
            job = None  # nothing of it kept while idle
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            count = self._count
        # Each thread ends at its next look at the queue; none is waited for.
        for _ in range(count):
            self._jobs.put(None)


def _run(future: concurrent.futures.Future, fn: Any, args: Any, kwargs: Any) -> None:
    """One job of the _DaemonExecutor, unless it was cancelled meanwhile."""
    if future.set_running_or_notify_cancel():
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
