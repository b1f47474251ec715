//! One worker process: its pipes, its in-flight calls, its life and death.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_core::Stream;
use serde_json::Value;
use snakepit_protocol::{
    decode_host_call_args, decode_inbound, encode_frame, peek_response, Cancel, Capabilities,
    Codec, HostReply, Inbound, RemoteError, WireCodec,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::codec::FramedRead;

use crate::error::{Crash, Error, ExitReason};
use crate::pool::Shared;
use crate::spawn;

/// A worker's stdin. A frame is written straight from the sending task when
/// the pipe takes it whole (the usual case: one `write` call, no task hop);
/// otherwise the rest waits in `backlog` and the writer task finishes it,
/// holding the pipe until the backlog is empty, so frames never interleave
/// or overtake each other.
struct Stdin {
    state: Mutex<StdinState>,
    wake: Notify,
}

struct StdinState {
    /// `None` while the writer task holds it, and once closed.
    pipe: Option<ChildStdin>,
    /// Frames waiting for the pipe, each with the id of the call it starts
    /// (0 for cancels and host replies).
    backlog: VecDeque<(u64, Bytes)>,
    /// Close once the backlog is written: the worker sees EOF and exits.
    close: bool,
    closed: bool,
    /// Calls whose request frame the writer could not write whole: they
    /// never reached the worker.
    lost: Vec<u64>,
    /// Host replies in the backlog (a worker that does not read them).
    replies: usize,
    /// Bytes accepted so far (written or in the backlog), and bytes written
    /// to the pipe.
    accepted: u64,
    written: u64,
    /// Recent request frames: call id and the stream offset where the frame
    /// ends. When the worker dies, the bytes it left unread in the pipe tell
    /// which of these it never read whole, so never ran.
    recent: VecDeque<(u64, u64)>,
}

/// Request frames further back than this in the stream are taken as read
/// (a pipe holds at most `/proc/sys/fs/pipe-max-size`, 1 MiB by default).
const RECENT_WINDOW: u64 = 1 << 20;

impl StdinState {
    /// The pipe is broken (the worker is gone): the calls whose frames it
    /// left unread join `lost`, and the pipe is dropped.
    fn broken(&mut self, pipe: Option<ChildStdin>) {
        use std::os::fd::AsRawFd;
        if let Some(unread) = pipe
            .as_ref()
            .and_then(|p| spawn::unread_in_pipe(p.as_raw_fd()))
        {
            let consumed = self.written.saturating_sub(unread as u64);
            self.lost.extend(
                self.recent
                    .iter()
                    .filter(|&&(_, end)| end > consumed)
                    .map(|&(id, _)| id),
            );
        }
        self.recent.clear();
        self.pipe = None;
        self.closed = true;
    }
}

/// The backlog id of a frame that starts no call (a cancel).
const NO_CALL: u64 = 0;
/// The backlog id of a host reply.
const HOST_REPLY: u64 = u64::MAX;

impl Stdin {
    fn state(&self) -> std::sync::MutexGuard<'_, StdinState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `frame` or queues it for the writer task; `false` when it
    /// certainly did not reach the worker (the pipe is closed or broken and
    /// not one byte of it was taken... or only part of it, which the worker
    /// cannot have acted on).
    fn send(&self, id: u64, frame: Bytes) -> bool {
        let mut guard = self.state();
        let st = &mut *guard;
        if st.closed || st.close {
            return false;
        }
        let end = st.accepted + frame.len() as u64;
        st.accepted = end;
        let frame = match (&mut st.pipe, st.backlog.is_empty()) {
            (Some(pipe), true) => match write_now(pipe, &frame) {
                Ok(n) => {
                    st.written += n as u64;
                    frame.slice(n..)
                }
                Err(_) => {
                    // The worker is gone; its reader fails what was in flight.
                    let pipe = st.pipe.take();
                    st.broken(pipe);
                    return false;
                }
            },
            _ => frame,
        };
        if id != NO_CALL && id != HOST_REPLY {
            let written = st.written;
            while st
                .recent
                .front()
                .is_some_and(|&(_, e)| e + RECENT_WINDOW < written)
            {
                st.recent.pop_front();
            }
            st.recent.push_back((id, end));
        }
        if frame.is_empty() {
            return true;
        }
        if id == HOST_REPLY {
            st.replies += 1;
        }
        st.backlog.push_back((id, frame));
        drop(guard);
        self.wake.notify_one();
        true
    }

    /// The calls whose frames the worker, now dead, never read whole.
    fn take_lost(&self) -> Vec<u64> {
        let mut st = self.state();
        if st.pipe.is_some() {
            let pipe = st.pipe.take();
            st.broken(pipe);
        }
        let mut lost = std::mem::take(&mut st.lost);
        lost.extend(st.backlog.drain(..).map(|(id, _)| id));
        lost.retain(|&id| id != NO_CALL && id != HOST_REPLY);
        lost
    }

    /// Host replies written to the backlog and not yet to the pipe.
    fn queued_replies(&self) -> usize {
        self.state().replies
    }

    fn close(&self) {
        let mut st = self.state();
        st.close = true;
        if st.pipe.is_some() && st.backlog.is_empty() {
            st.pipe = None;
            st.closed = true;
        }
        drop(st);
        // Either the writer task finishes the backlog and closes, or it
        // sees `closed` and ends.
        self.wake.notify_one();
    }
}

/// Writes what the pipe takes without waiting.
fn write_now(pipe: &mut ChildStdin, frame: &[u8]) -> std::io::Result<usize> {
    use tokio::io::AsyncWrite;
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut written = 0;
    while written < frame.len() {
        match Pin::new(&mut *pipe).poll_write(&mut cx, &frame[written..]) {
            std::task::Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            std::task::Poll::Ready(Ok(n)) => written += n,
            std::task::Poll::Ready(Err(e)) => return Err(e),
            std::task::Poll::Pending => break,
        }
    }
    Ok(written)
}

/// Why a call got no reply frame.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Its request never reached the worker (the pipe was already closed or
    /// broke before the frame was written whole): it may go to another one.
    NotSent(Error),
    /// It reached the worker, or may have: it is never sent again.
    Failed(Error),
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Error {
        match f {
            Failure::NotSent(e) | Failure::Failed(e) => e,
        }
    }
}

/// What a caller receives: the final reply frame, or why there is none.
pub(crate) type Reply = Result<Bytes, Failure>;

/// Host calls a worker may have in flight at once; one more is a protocol
/// error (a worker that floods the host without reading its replies).
pub(crate) const MAX_HOST_CALLS_IN_FLIGHT: usize = 256;

/// Bytes of one stderr line kept; the rest of the line is dropped.
const MAX_STDERR_LINE: usize = 2048;

/// A call waiting for its reply.
pub(crate) struct Pending {
    pub(crate) reply: oneshot::Sender<Reply>,
    pub(crate) chunks: Option<mpsc::Sender<Bytes>>,
    pub(crate) session: Option<Arc<str>>,
    /// The call holds one of the worker's capacity units, to be returned when
    /// the final reply arrives (internal handshake pings hold none).
    pub(crate) holds_unit: bool,
}

struct Inner {
    pending: HashMap<u64, Pending>,
    /// Set once the worker is dying; no call is registered after that.
    dead: bool,
    reaped: bool,
}

/// The last lines a worker wrote to stderr.
pub(crate) struct Tail {
    lines: VecDeque<String>,
    max: usize,
}

impl Tail {
    fn push(&mut self, line: String) {
        if self.lines.len() == self.max {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }

    fn text(&self) -> String {
        self.lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

pub(crate) struct Worker {
    pub(crate) id: String,
    pub(crate) slot: usize,
    pub(crate) generation: u64,
    pub(crate) pid: u32,
    pub(crate) started: Instant,
    pub(crate) served: AtomicU64,
    /// When the last final reply arrived, in ms after `started`; kept only
    /// when idle workers are recycled (a clock read per reply otherwise).
    last_reply_ms: Option<AtomicU64>,
    pool: Weak<Shared>,
    codec: WireCodec,
    stdin: Arc<Stdin>,
    inner: Mutex<Inner>,
    pub(crate) caps: OnceLock<Capabilities>,
    tail: Mutex<Tail>,
    /// Host calls received and not yet answered.
    host_calls: AtomicUsize,
    /// The pool is stopping this worker (shutdown): calls cut off by it are
    /// not crashes.
    stopping: AtomicBool,
    /// `Some` once the process has ended and every call on it was failed.
    finished: watch::Sender<Option<ExitReason>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stdin.close();
    }
}

impl Worker {
    /// Takes over a freshly spawned child: starts its writer, stderr and
    /// reader tasks.
    pub(crate) fn start(
        shared: &Arc<Shared>,
        mut child: Child,
        id: String,
        slot: usize,
        generation: u64,
    ) -> Arc<Worker> {
        let pid = child.id().unwrap_or(0);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let stdin = Arc::new(Stdin {
            state: Mutex::new(StdinState {
                closed: stdin.is_none(),
                pipe: stdin,
                backlog: VecDeque::new(),
                close: false,
                lost: Vec::new(),
                replies: 0,
                accepted: 0,
                written: 0,
                recent: VecDeque::new(),
            }),
            wake: Notify::new(),
        });
        let worker = Arc::new(Worker {
            id,
            slot,
            generation,
            pid,
            started: Instant::now(),
            served: AtomicU64::new(0),
            last_reply_ms: (!shared.config.worker_idle_timeout.is_zero())
                .then(|| AtomicU64::new(0)),
            pool: Arc::downgrade(shared),
            codec: shared.codec,
            stdin: stdin.clone(),
            inner: Mutex::new(Inner {
                pending: HashMap::new(),
                dead: false,
                reaped: false,
            }),
            caps: OnceLock::new(),
            tail: Mutex::new(Tail {
                lines: VecDeque::new(),
                max: shared.config.stderr_tail_lines.max(1),
            }),
            host_calls: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            finished: watch::channel(None).0,
        });
        tokio::spawn(write_loop(stdin));
        let stderr_done = stderr.map(|e| tokio::spawn(stderr_loop(worker.clone(), e)));
        tokio::spawn(read_loop(
            worker.clone(),
            stdout,
            child,
            stderr_done,
            shared.config.max_frame_size,
        ));
        worker
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn capabilities(&self) -> Capabilities {
        self.caps.get().cloned().unwrap_or_default()
    }

    pub(crate) fn stderr_tail(&self) -> String {
        self.tail.lock().unwrap_or_else(|e| e.into_inner()).text()
    }

    /// Registers a call; fails if the worker is already dying.
    pub(crate) fn register(&self, id: u64, pending: Pending) -> Result<(), Pending> {
        let mut inner = self.inner();
        if inner.dead {
            return Err(pending);
        }
        inner.pending.insert(id, pending);
        Ok(())
    }

    /// Takes no more calls if none is in flight; `false` if one is.
    pub(crate) fn seal_if_idle(&self) -> bool {
        let mut inner = self.inner();
        if inner.pending.is_empty() {
            inner.dead = true;
        }
        inner.dead
    }

    /// Takes back a call whose frame did not reach the worker; `None` if the
    /// reader already failed it (the worker died meanwhile).
    pub(crate) fn unregister(&self, id: u64) -> Option<Pending> {
        self.inner().pending.remove(&id)
    }

    pub(crate) fn is_pending(&self, id: u64) -> bool {
        self.inner().pending.contains_key(&id)
    }

    /// How long since the last reply (or the start) with nothing in flight;
    /// zero while a call runs. Meaningful only with `worker_idle_timeout` set.
    pub(crate) fn idle_for(&self) -> Duration {
        if self.in_flight() > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(
            self.last_reply_ms
                .as_ref()
                .map_or(0, |l| l.load(Ordering::Relaxed)),
        );
        self.started.elapsed().saturating_sub(last)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.inner().pending.len()
    }

    /// Sends the request frame of call `id`; `false` if it certainly did not
    /// reach the worker.
    pub(crate) fn send_request(&self, id: u64, frame: Bytes) -> bool {
        self.stdin.send(id, frame)
    }

    /// Sends a frame that starts no call (a cancel).
    fn send(&self, frame: Bytes) {
        self.stdin.send(NO_CALL, frame);
    }

    /// The pool is stopping this worker: calls it cuts off were stopped by
    /// the shutdown, not by a crash.
    pub(crate) fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Closes the worker's stdin, asking it to exit.
    pub(crate) fn close_stdin(&self) {
        self.stdin.close();
    }

    /// Signals the worker's whole process group, unless it was reaped.
    pub(crate) fn signal(&self, signal: libc::c_int) {
        let inner = self.inner();
        if !inner.reaped && self.pid != 0 {
            spawn::signal_group(self.pid, signal);
        }
    }

    pub(crate) fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    /// Waits until the process has ended and its calls were failed.
    pub(crate) async fn finished(&self) -> ExitReason {
        let mut rx = self.finished.subscribe();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                return ExitReason::Unknown;
            }
        }
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.finished.borrow().is_some()
    }

    /// The caller of `id` gave up (deadline, or its future was dropped): ask
    /// the worker to stop, and replace it if the late reply does not come
    /// within the grace period. Until then the call keeps its capacity unit,
    /// so the worker takes no work in its place.
    pub(crate) fn abandon(self: &Arc<Self>, id: u64) {
        if !self.is_pending(id) {
            return;
        }
        let caps = self.capabilities();
        if caps.cancel {
            let mut buf = bytes::BytesMut::new();
            if encode_frame(&self.codec, &Cancel::new(id), usize::MAX, &mut buf).is_ok() {
                self.send(buf.freeze());
            }
        } else if caps.sigint && caps.max_concurrency <= 1 && !self.inner().reaped {
            spawn::signal_pid(self.pid, libc::SIGINT);
        }
        let grace = self
            .pool
            .upgrade()
            .map_or(Duration::ZERO, |p| p.config.shutdown_grace_period);
        let worker = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    tokio::time::sleep(grace).await;
                    if worker.is_pending(id) && !worker.is_finished() {
                        tracing::warn!(worker = %worker.id, id, "no reply to a cancelled call within the grace period; replacing the worker");
                        worker.kill();
                    }
                });
            }
            Err(_) => worker.kill(),
        }
    }

    /// Hands a final reply to its caller.
    fn reply(&self, id: u64, success: bool, frame: Bytes) -> Result<(), snakepit_protocol::Error> {
        let pending = self.inner().pending.remove(&id);
        let Some(pending) = pending else {
            if id == 0 && !success {
                let what = snakepit_protocol::decode_response::<_, Value>(&self.codec, &frame)
                    .ok()
                    .and_then(|r| r.err())
                    .map_or_else(|| "no detail".to_owned(), |e| e.to_string());
                return Err(snakepit_protocol::Error::InvalidPayload {
                    codec: self.codec.name(),
                    detail: format!("the worker could not read a frame from the pool: {what}"),
                });
            }
            return Err(snakepit_protocol::Error::WrongType {
                field: "id",
                expected: "the id of a call in flight",
            });
        };
        self.served.fetch_add(1, Ordering::Relaxed);
        if let Some(last) = &self.last_reply_ms {
            last.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        // Capacity first, so that a caller who sends its next call as
        // soon as it has this reply finds the worker free.
        if pending.holds_unit {
            if let Some(pool) = self.pool.upgrade() {
                pool.release(self);
            }
        }
        // The stream's chunk channel closes before its final reply.
        drop(pending.chunks);
        let _ = pending.reply.send(Ok(frame));
        Ok(())
    }

    /// Routes one frame from the worker; an error means the worker broke the
    /// protocol and must go.
    fn route(self: &Arc<Self>, frame: Bytes) -> Result<(), snakepit_protocol::Error> {
        // Most frames are replies in the bridges' usual shape: route those
        // from their first bytes; the caller decodes (and checks) the rest.
        if let Some((id, success)) = peek_response(&self.codec, &frame) {
            return self.reply(id, success, frame);
        }
        match decode_inbound(&self.codec, &frame)? {
            Inbound::Response { id, success } => self.reply(id, success, frame),
            Inbound::Chunk { id } => {
                let inner = self.inner();
                match inner.pending.get(&id) {
                    None => Err(snakepit_protocol::Error::WrongType {
                        field: "id",
                        expected: "the id of a call in flight",
                    }),
                    Some(p) => {
                        if let Some(tx) = &p.chunks {
                            // A consumer that falls behind loses chunks rather
                            // than stalling every other call on this worker.
                            if tx.try_send(frame).is_err() && !tx.is_closed() {
                                tracing::warn!(worker = %self.id, id, "stream consumer is behind; chunk dropped");
                            }
                        }
                        Ok(())
                    }
                }
            }
            Inbound::Hello(hello) => {
                if self.caps.set(hello.capabilities).is_err() {
                    tracing::debug!(worker = %self.id, "second hello ignored");
                }
                tracing::debug!(worker = %self.id, bridge = ?hello.bridge, runtime = ?hello.runtime, "worker said hello");
                Ok(())
            }
            Inbound::HostCall {
                id,
                request_id,
                function,
            } => {
                if !self.caps.get().is_some_and(|c| c.host_calls) {
                    return Err(snakepit_protocol::Error::InvalidPayload {
                        codec: self.codec.name(),
                        detail: format!(
                            "a host call ({function}) from a worker whose hello did not declare host_calls"
                        ),
                    });
                }
                let answering = self.host_calls.fetch_add(1, Ordering::Relaxed);
                if answering + self.stdin.queued_replies() >= MAX_HOST_CALLS_IN_FLIGHT {
                    return Err(snakepit_protocol::Error::InvalidPayload {
                        codec: self.codec.name(),
                        detail: format!(
                            "more than {MAX_HOST_CALLS_IN_FLIGHT} host calls in flight (the worker does not read their replies)"
                        ),
                    });
                }
                let session = request_id
                    .and_then(|r| self.inner().pending.get(&r).and_then(|p| p.session.clone()));
                let args: Value = match decode_host_call_args(&self.codec, &frame) {
                    Ok(args) => args,
                    // Arguments nested deeper than the host reads: that host
                    // call's own error; the worker is fine.
                    Err(e @ snakepit_protocol::Error::TooDeep { .. }) => {
                        self.host_calls.fetch_sub(1, Ordering::Relaxed);
                        let err = RemoteError::new("TooDeep", e.to_string());
                        let mut buf = bytes::BytesMut::new();
                        if encode_frame(
                            &self.codec,
                            &HostReply::<()>::err(id, &err),
                            usize::MAX,
                            &mut buf,
                        )
                        .is_ok()
                        {
                            self.stdin.send(HOST_REPLY, buf.freeze());
                        }
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                };
                let worker = self.clone();
                tokio::spawn(
                    async move { worker.answer_host_call(id, function, session, args).await },
                );
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn answer_host_call(
        self: Arc<Self>,
        id: u64,
        function: String,
        session: Option<Arc<str>>,
        args: Value,
    ) {
        /// One host call fewer in flight, however the answer ends.
        struct Answered<'w>(&'w AtomicUsize);
        impl Drop for Answered<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _answered = Answered(&self.host_calls);
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let call = crate::HostCall {
            function: function.clone(),
            session_id: session.map(|s| s.to_string()),
            worker_id: self.id.clone(),
            args,
        };
        let outcome = match pool.host_functions.get(function.as_str()) {
            Some(f) => f(call).await,
            None => Err(RemoteError::new(
                "UnknownFunction",
                format!("no host function named {function}"),
            )),
        };
        let mut buf = bytes::BytesMut::new();
        let encoded = match &outcome {
            Ok(v) => encode_frame(
                &self.codec,
                &HostReply::ok(id, v),
                pool.config.max_frame_size,
                &mut buf,
            ),
            Err(e) => encode_frame(
                &self.codec,
                &HostReply::<()>::err(id, e),
                pool.config.max_frame_size,
                &mut buf,
            ),
        };
        if let Err(e) = encoded {
            let err = RemoteError::new("EncodeError", e.to_string());
            buf.clear();
            if encode_frame(
                &self.codec,
                &HostReply::<()>::err(id, &err),
                usize::MAX,
                &mut buf,
            )
            .is_err()
            {
                return;
            }
        }
        self.stdin.send(HOST_REPLY, buf.freeze());
    }
}

/// Finishes what [`Stdin::send`] could not write at once, and closes the
/// pipe when asked.
async fn write_loop(stdin: Arc<Stdin>) {
    loop {
        let next = {
            let mut st = stdin.state();
            if st.closed {
                return;
            }
            match st.backlog.pop_front() {
                Some((id, frame)) => match st.pipe.take() {
                    Some(pipe) if id == HOST_REPLY => {
                        st.replies -= 1;
                        Some((pipe, id, frame))
                    }
                    Some(pipe) => Some((pipe, id, frame)),
                    None => {
                        st.backlog.push_front((id, frame));
                        return;
                    }
                },
                None if st.close => {
                    st.pipe = None;
                    st.closed = true;
                    return;
                }
                None => None,
            }
        };
        let Some((mut pipe, id, frame)) = next else {
            stdin.wake.notified().await;
            continue;
        };
        let mut done = 0;
        while done < frame.len() {
            match pipe.write(&frame[done..]).await {
                Ok(n) if n > 0 => {
                    done += n;
                    stdin.state().written += n as u64;
                }
                _ => {
                    // Not written whole: the worker cannot have started
                    // that call, nor any it left unread.
                    let mut st = stdin.state();
                    st.lost.push(id);
                    st.broken(Some(pipe));
                    return; // the reader sees the worker die
                }
            }
        }
        stdin.state().pipe = Some(pipe);
    }
}

/// Forwards the worker's stderr line by line to `tracing` and the tail. A
/// line ends at `\n` or `\r` (a progress bar redraws with `\r`) and keeps at
/// most [`MAX_STDERR_LINE`] bytes: memory stays flat whatever the worker
/// writes.
async fn stderr_loop(worker: Arc<Worker>, stderr: ChildStderr) {
    let mut reader = BufReader::with_capacity(8 * 1024, stderr);
    let mut line: Vec<u8> = Vec::with_capacity(256);
    let mut cut = false;
    loop {
        let buf = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(buf) => buf,
        };
        let end = buf.iter().position(|&b| b == b'\n' || b == b'\r');
        let take = end.unwrap_or(buf.len());
        let room = MAX_STDERR_LINE.saturating_sub(line.len());
        line.extend_from_slice(&buf[..take.min(room)]);
        cut |= take > room;
        reader.consume(end.map_or(take, |e| e + 1));
        if end.is_some() {
            worker.stderr_line(&line, cut);
            line.clear();
            cut = false;
        }
    }
    if !line.is_empty() {
        worker.stderr_line(&line, cut);
    }
}

impl Worker {
    fn stderr_line(&self, line: &[u8], cut: bool) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end();
        if text.is_empty() {
            return; // the `\n` of a `\r\n`, or a blank line
        }
        let text = if cut {
            format!("{text}…")
        } else {
            text.to_owned()
        };
        tracing::info!(target: "snakepit::worker", worker = %self.id, pid = self.pid, "{text}");
        self.tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(text);
    }
}

enum Ending {
    /// Stdout ended.
    Eof,
    /// The process exited (its stdout may still be held by a child).
    Exited,
    Protocol(snakepit_protocol::Error),
}

/// Reads and routes the worker's frames until its stdout ends or the process
/// exits, whichever comes first (a child of the worker may hold its stdout
/// open after the worker died), then fails what was in flight on it.
async fn read_loop(
    worker: Arc<Worker>,
    stdout: Option<ChildStdout>,
    mut child: Child,
    stderr_done: Option<tokio::task::JoinHandle<()>>,
    max_frame_size: usize,
) {
    // The exit is watched beside the frame stream, by its own task: the
    // reader then polls a cheap channel, not the process, per frame.
    let (exit_tx, mut exit_rx) = oneshot::channel();
    tokio::spawn(async move {
        let status = child.wait().await;
        let _ = exit_tx.send(status);
    });
    let mut exit: Option<ExitReason> = None;
    let ending = match stdout {
        None => Ending::Eof,
        Some(stdout) => {
            let mut frames = FramedRead::with_capacity(
                stdout,
                snakepit_protocol::FrameCodec::new(max_frame_size),
                64 * 1024,
            );
            let mut next = async || poll_fn(|cx| Pin::new(&mut frames).poll_next(cx)).await;
            let ending = loop {
                tokio::select! {
                    biased;
                    frame = next() => match frame {
                        Some(Ok(frame)) => {
                            if let Err(e) = worker.route(frame.freeze()) {
                                break Ending::Protocol(e);
                            }
                        }
                        Some(Err(snakepit_protocol::Error::Io(_))) | None => break Ending::Eof,
                        Some(Err(e)) => break Ending::Protocol(e),
                    },
                    status = &mut exit_rx => {
                        exit = Some(exited(status));
                        break Ending::Exited;
                    }
                }
            };
            if matches!(ending, Ending::Exited) {
                // The process is gone while something (a child of its own)
                // still holds its stdout: the group goes, which takes that
                // child with it; what the worker wrote before it died is
                // still read and routed.
                if worker.pid != 0 {
                    spawn::signal_group(worker.pid, libc::SIGKILL);
                }
                let drain = Duration::from_millis(200);
                loop {
                    match tokio::time::timeout(drain, next()).await {
                        Ok(Some(Ok(frame))) => {
                            if let Err(e) = worker.route(frame.freeze()) {
                                break Ending::Protocol(e);
                            }
                        }
                        Ok(Some(Err(e))) if !matches!(e, snakepit_protocol::Error::Io(_)) => {
                            break Ending::Protocol(e)
                        }
                        _ => break Ending::Exited,
                    }
                }
            } else {
                ending
            }
        }
    };
    if let Ending::Protocol(e) = &ending {
        tracing::warn!(worker = %worker.id, error = %e, "worker broke the protocol; replacing it");
        worker.kill();
    }
    let mut exit = match exit {
        Some(exit) => exit,
        None => {
            // Stdout is closed; the process normally exits with it. One that
            // keeps running without a way to answer is killed.
            let grace = worker
                .pool
                .upgrade()
                .map_or(Duration::from_secs(1), |p| p.config.shutdown_grace_period);
            match tokio::time::timeout(grace, &mut exit_rx).await {
                Ok(status) => exited(status),
                Err(_) => {
                    worker.kill();
                    match tokio::time::timeout(Duration::from_secs(5), &mut exit_rx).await {
                        Ok(Ok(Ok(_))) => ExitReason::ClosedStdout,
                        _ => ExitReason::Unknown,
                    }
                }
            }
        }
    };
    {
        let mut inner = worker.inner();
        inner.dead = true;
        // The worker's own children die with it: the group goes too.
        if worker.pid != 0 {
            spawn::signal_group(worker.pid, libc::SIGKILL);
        }
        inner.reaped = true;
    }
    // Before the pipe closes: what the worker left unread in it.
    let lost = worker.stdin.take_lost();
    worker.stdin.close(); // ends the writer task
    if let Some(pool) = worker.pool.upgrade() {
        // Out of the routing tables before anyone hears it died.
        pool.worker_gone(&worker);
        pool.process_gone(worker.pid);
    }
    if let Some(done) = stderr_done {
        // Grandchildren may hold stderr open; do not wait on them for long.
        let _ = tokio::time::timeout(Duration::from_millis(200), done).await;
    }
    let pending: Vec<(u64, Pending)> = worker.inner().pending.drain().collect();
    if matches!(exit, ExitReason::Unknown) && matches!(ending, Ending::Protocol(_)) {
        exit = ExitReason::Signal(libc::SIGKILL);
    }
    let stopping = worker.stopping.load(Ordering::Relaxed);
    for (id, p) in pending {
        let err = match &ending {
            Ending::Protocol(e) => Error::Protocol {
                worker_id: worker.id.clone(),
                source: clone_protocol_error(e),
            },
            Ending::Eof | Ending::Exited if stopping => Error::StoppedByShutdown {
                worker_id: worker.id.clone(),
                pid: worker.pid,
            },
            Ending::Eof | Ending::Exited => Error::WorkerCrashed(Box::new(Crash {
                worker_id: worker.id.clone(),
                pid: worker.pid,
                exit: exit.clone(),
                stderr_tail: worker.stderr_tail(),
            })),
        };
        let failure = if lost.contains(&id) {
            Failure::NotSent(err)
        } else {
            Failure::Failed(err)
        };
        let _ = p.reply.send(Err(failure));
    }
    tracing::debug!(worker = %worker.id, %exit, "worker ended");
    worker.finished.send_replace(Some(exit));
}

/// How the process ended, from its exit watcher.
fn exited(
    status: std::result::Result<
        std::io::Result<std::process::ExitStatus>,
        oneshot::error::RecvError,
    >,
) -> ExitReason {
    match status {
        Ok(Ok(status)) => exit_reason(status),
        _ => ExitReason::Unknown,
    }
}

fn exit_reason(status: std::process::ExitStatus) -> ExitReason {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitReason::Code(code),
        (_, Some(sig)) => ExitReason::Signal(sig),
        _ => ExitReason::Unknown,
    }
}

/// Protocol errors are not `Clone` (they may hold an `io::Error`); every call
/// in flight gets its own copy of the description.
fn clone_protocol_error(e: &snakepit_protocol::Error) -> snakepit_protocol::Error {
    use snakepit_protocol::Error as P;
    match e {
        P::FrameTooLarge { len, max } => P::FrameTooLarge {
            len: *len,
            max: *max,
        },
        P::Truncated { expected, got } => P::Truncated {
            expected: *expected,
            got: *got,
        },
        P::MissingField { kind, field } => P::MissingField { kind, field },
        P::WrongType { field, expected } => P::WrongType { field, expected },
        P::InvalidUtf8 { codec, detail } => P::InvalidUtf8 {
            codec,
            detail: detail.clone(),
        },
        P::Mismatch { codec, detail } => P::Mismatch {
            codec,
            detail: detail.clone(),
        },
        P::UnknownFrameType(t) => P::UnknownFrameType(t.clone()),
        other => P::InvalidPayload {
            codec: "wire",
            detail: other.to_string(),
        },
    }
}
