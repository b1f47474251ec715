//! What comes from a worker: frames routed by id, stderr lines, and the end
//! of the process (stdout closed or the process gone, whichever is first).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_core::Stream;
use serde_json::Value;
use snakepit_protocol::{decode_inbound, peek_response, Codec, Inbound};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{ChildStderr, ChildStdout};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;

use super::{Failure, Pending, Worker, MAX_STDERR_LINE};
use crate::error::{Crash, Error, ExitReason};
use crate::os;
use crate::sync::Unpoisoned;

impl Worker {
    /// Hands a final reply to its caller.
    pub(super) fn reply(
        &self,
        id: u64,
        success: bool,
        frame: Bytes,
    ) -> Result<(), snakepit_protocol::Error> {
        let pending = {
            let mut inner = self.inner();
            let pending = inner.pending.remove(&id).map(|(p, _)| p);
            if let Some(p) = pending.as_ref().filter(|_| self.runs_one_at_a_time()) {
                // Only a call that ran says how long its calls take: a
                // health ping, or a call given up while written ahead
                // (dropped unrun), is answered at once and would make a
                // worker of long calls look short.
                if p.holds_unit && !p.cancel_sent {
                    self.timed(&mut inner);
                } else {
                    inner.running_since = (!inner.pending.is_empty()).then(Instant::now);
                }
            }
            pending
        };
        // Whether its caller waits or gave up, the call is over.
        self.stdin.ended(id);
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
            return Err(snakepit_protocol::Error::UnknownId {
                kind: "response",
                id,
            });
        };
        // The pool's own pings (init, health) hold no unit: only calls count,
        // for `served` and for the idle time (a worker answering health
        // checks every 30 s is still idle).
        if pending.holds_unit {
            self.served.fetch_add(1, Ordering::Relaxed);
            if let Some(last) = &self.last_reply_ms {
                last.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
        }
        // Capacity first, so that a caller who sends its next call as
        // soon as it has this reply finds the worker free.
        if pending.holds_unit {
            if let Some(pool) = self.pool.upgrade() {
                pool.released(self);
            }
        }
        // The stream's chunk channel closes before its final reply.
        if pending.chunks.is_some() {
            self.stream_ended();
        }
        drop(pending.chunks);
        if let Err(Ok(frame)) = pending.reply.send(Ok(frame)) {
            // Its caller is gone (timed out, cancelled): nobody will decode
            // the rest, which was routed from its first bytes. It is checked
            // here, so that a worker that broke the protocol is replaced
            // whoever waits.
            match snakepit_protocol::decode_response::<_, serde::de::IgnoredAny>(
                &self.codec,
                &frame,
            ) {
                Ok(_) | Err(snakepit_protocol::Error::TooDeep { .. }) => {}
                Err(broken) => return Err(broken),
            }
        }
        Ok(())
    }

    /// Routes one frame from the worker; an error means the worker broke the
    /// protocol and must go. `Ok(Some(stall))`: a chunk whose reader has no
    /// room for it yet, to be handed over before anything else is read.
    pub(super) fn route(
        self: &Arc<Self>,
        frame: Bytes,
    ) -> Result<Option<Stall>, snakepit_protocol::Error> {
        // Most frames are replies in the bridges' usual shape: route those
        // from their first bytes; the caller decodes (and checks) the rest.
        if let Some((id, success)) = peek_response(&self.codec, &frame) {
            return self.reply(id, success, frame).map(|()| None);
        }
        match decode_inbound(&self.codec, &frame)? {
            Inbound::Response { id, success } => self.reply(id, success, frame).map(|()| None),
            Inbound::Chunk { id } => {
                let mut inner = self.inner();
                let Some((p, _)) = inner.pending.get_mut(&id) else {
                    return Err(snakepit_protocol::Error::UnknownId { kind: "chunk", id });
                };
                let Some(tx) = &p.chunks else {
                    return Ok(None); // not a stream, or one that gave up
                };
                let frame = match tx.try_send(frame) {
                    Ok(()) | Err(TrySendError::Closed(_)) => return Ok(None),
                    Err(TrySendError::Full(frame)) => frame,
                };
                if self.runs_one_at_a_time() {
                    // Nothing else runs on this worker: wait for the reader,
                    // and the worker waits on its full pipe meanwhile.
                    return Ok(Some(Stall {
                        worker: self.clone(),
                        id,
                        tx: tx.clone(),
                        frame,
                        until: p.until,
                    }));
                }
                // Waiting would hold up the worker's other calls: this one
                // ends, with every chunk before this one delivered.
                let kept = tx.max_capacity();
                let worker_id = self.id.clone();
                self.cut_stream(p, Failure::Failed(Error::StreamBehind { worker_id, kept }));
                drop(inner);
                tracing::warn!(worker = %self.id, id, kept, "a stream's reader fell behind a worker that runs other calls too; the call is cancelled");
                Ok(None)
            }
            Inbound::Hello(hello) => {
                if self.caps.set(hello.capabilities).is_err() {
                    tracing::debug!(worker = %self.id, "second hello ignored");
                }
                tracing::debug!(worker = %self.id, bridge = ?hello.bridge, runtime = ?hello.runtime, "worker said hello");
                Ok(None)
            }
            Inbound::HostCall {
                id,
                request_id,
                function,
            } => self
                .take_host_call(id, request_id, function, &frame)
                .map(|()| None),
            _ => Ok(None),
        }
    }
}

/// Forwards the worker's stderr line by line to `tracing` and the tail. A
/// line ends at `\n` or `\r` (a progress bar redraws with `\r`) and keeps at
/// most [`MAX_STDERR_LINE`] bytes: memory stays flat whatever the worker
/// writes.
pub(super) async fn stderr_loop(worker: Arc<Worker>, stderr: ChildStderr) {
    for_each_line(stderr, |line, cut| worker.stderr_line(line, cut)).await;
}

/// Reads `out` to its end, line by line (a line ends at `\n` or `\r`, so
/// a progress bar's updates are lines), and hands each to `each` with
/// whether it was cut: a line keeps its first [`MAX_STDERR_LINE`] bytes, and
/// no more is ever held, whatever the process writes.
pub(crate) async fn for_each_line(out: impl AsyncRead + Unpin, mut each: impl FnMut(&[u8], bool)) {
    let mut reader = BufReader::with_capacity(8 * 1024, out);
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
            each(&line, cut);
            line.clear();
            cut = false;
        }
    }
    if !line.is_empty() {
        each(&line, cut);
    }
}

/// A line of a process's output as it is logged: lossy UTF-8, without
/// trailing blanks, marked `…` if it was cut; `None` for a blank line (or
/// the `\n` of a `\r\n`).
pub(crate) fn line_text(line: &[u8], cut: bool) -> Option<String> {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end();
    if text.is_empty() {
        return None;
    }
    Some(if cut {
        format!("{text}…")
    } else {
        text.to_owned()
    })
}

impl Worker {
    pub(super) fn stderr_line(&self, line: &[u8], cut: bool) {
        let Some(text) = line_text(line, cut) else {
            return;
        };
        tracing::info!(target: "snakepit::worker", worker = %self.id, pid = self.pid, "{text}");
        self.tail.locked().push(text);
    }
}

/// A chunk waiting for room in its stream's channel (a worker that runs
/// one call at a time): the reader reads nothing more from the worker until
/// it is handed over or its reader is gone.
pub(super) struct Stall {
    worker: Arc<Worker>,
    id: u64,
    tx: mpsc::Sender<Bytes>,
    frame: Bytes,
    /// The stream's deadline.
    until: Option<Instant>,
}

impl Stall {
    /// Hands the chunk over once there is room; drops it if the stream's
    /// reader is gone (the call was abandoned). At the stream's deadline the
    /// stream takes no more chunks, read or not: its reader hears of the
    /// timeout at its next poll, and the worker goes on (then hears the
    /// cancel), so an unread stream never holds its worker past it.
    async fn hand_over(self) {
        let Stall {
            worker,
            id,
            tx,
            frame,
            until,
        } = self;
        let deadline = async {
            match until {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            room = tx.reserve_owned() => {
                if let Ok(permit) = room {
                    permit.send(frame);
                }
            }
            () = deadline => worker.stop_streaming(id),
        }
    }
}

impl Worker {
    /// Call `id`'s stream passed its deadline: it takes no more chunks, and
    /// its reader hears of the timeout after the chunks it was given.
    fn stop_streaming(&self, id: u64) {
        let mut inner = self.inner();
        if let Some((p, _)) = inner.pending.get_mut(&id) {
            if p.chunks.is_some() {
                self.cut_stream(p, Failure::Expired);
            }
        }
    }

    /// Ends `p`'s stream early: it takes no more chunks, and its reader
    /// hears `failure` after the chunks it was given.
    pub(super) fn cut_stream(&self, p: &mut Pending, failure: Failure) {
        if p.chunks.take().is_some() {
            self.stream_ended();
        }
        p.tell(failure);
    }
}

pub(super) enum Ending {
    /// Stdout ended.
    Eof,
    /// The process exited (its stdout may still be held by a child).
    Exited,
    Protocol(snakepit_protocol::Error),
}

/// Reads and routes the worker's frames until its stdout ends or the process
/// exits, whichever comes first (a child of the worker may hold its stdout
/// open after the worker died), then fails what was in flight on it.
pub(super) async fn read_loop(
    worker: Arc<Worker>,
    stdout: Option<ChildStdout>,
    exit: super::ExitFuture,
    stderr_done: Option<tokio::task::JoinHandle<()>>,
    max_frame_size: usize,
) {
    // The exit is watched beside the frame stream, by its own task: the
    // reader then polls a cheap channel, not the process, per frame.
    let (exit_tx, mut exit_rx) = oneshot::channel();
    tokio::spawn(async move {
        let status = exit.await;
        let _ = exit_tx.send(status);
    });
    let mut exit: Option<ExitReason> = None;
    let ending = match stdout {
        None => {
            leave_routing(&worker);
            Ending::Eof
        }
        Some(stdout) => {
            use std::os::fd::AsRawFd;
            let (fd, mut size) = (stdout.as_raw_fd(), os::PipeSize::new());
            let mut frames = FramedRead::with_capacity(
                stdout,
                snakepit_protocol::FrameCodec::new(max_frame_size),
                64 * 1024,
            );
            let mut next = async || poll_fn(|cx| Pin::new(&mut frames).poll_next(cx)).await;
            // One timer for the deadlines of all the calls in flight (see
            // `Worker::register_until`), set for the earliest.
            let timer = tokio::time::sleep_until(tokio::time::Instant::now());
            tokio::pin!(timer);
            let (mut armed, mut fired) = (false, false);
            // A stream's deadline earlier than the timer (`Worker::register`).
            let moved = worker.deadline_moved.notified();
            tokio::pin!(moved);
            // A chunk waiting for its stream's reader; nothing more is read
            // until it is handed over.
            let mut stalled: Option<Pin<Box<dyn std::future::Future<Output = ()> + Send>>> = None;
            let ending = loop {
                tokio::select! {
                    biased;
                    () = async { stalled.as_mut().expect("guarded").await }, if stalled.is_some() => {
                        stalled = None;
                    }
                    frame = next(), if stalled.is_none() => match frame {
                        Some(Ok(frame)) => {
                            // The next large reply goes into the pipe whole.
                            size.fit(&fd, frame.len() + snakepit_protocol::HEADER_LEN);
                            match worker.route(frame.freeze()) {
                                Ok(None) => {}
                                Ok(Some(stall)) => stalled = Some(Box::pin(stall.hand_over())),
                                Err(e) => break Ending::Protocol(e),
                            }
                        }
                        // Stdout ended, mid-frame or not: the worker died
                        // or closed it (a crash, with its exit status).
                        Some(Err(
                            snakepit_protocol::Error::Io(_)
                            | snakepit_protocol::Error::Truncated { .. },
                        ))
                        | None => break Ending::Eof,
                        Some(Err(e)) => break Ending::Protocol(e),
                    },
                    status = &mut exit_rx => {
                        exit = Some(exited(status));
                        break Ending::Exited;
                    }
                    () = &mut timer, if armed => fired = true,
                    () = &mut moved => moved.set(worker.deadline_moved.notified()),
                }
                // The timer fired, or a call set a deadline while it was off.
                if fired || worker.rearm.load(Ordering::Relaxed) {
                    fired = false;
                    if let Some(at) = worker.expire() {
                        timer.as_mut().reset(at.into());
                        armed = true;
                    } else {
                        armed = false;
                    }
                }
            };
            leave_routing(&worker);
            if matches!(ending, Ending::Exited) {
                // The process is gone while something (a child of its own)
                // still holds its stdout: the group goes, which takes that
                // child with it; what the worker wrote before it died is
                // still read and routed, for at most 200 ms in all (a child
                // that left the group may write on forever).
                if worker.pid != 0 {
                    os::signal_group(worker.pid, libc::SIGKILL);
                }
                let until = tokio::time::Instant::now() + Duration::from_millis(200);
                if let Some(stall) = stalled.take() {
                    let _ = tokio::time::timeout_at(until, stall).await;
                }
                loop {
                    match tokio::time::timeout_at(until, next()).await {
                        Ok(Some(Ok(frame))) => match worker.route(frame.freeze()) {
                            Ok(None) => {}
                            Ok(Some(stall)) => {
                                let _ = tokio::time::timeout_at(until, stall.hand_over()).await;
                            }
                            Err(e) => break Ending::Protocol(e),
                        },
                        Ok(Some(Err(e)))
                            if !matches!(
                                e,
                                snakepit_protocol::Error::Io(_)
                                    | snakepit_protocol::Error::Truncated { .. }
                            ) =>
                        {
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
            // The reader's timer is gone with its loop: the deadlines of
            // the calls it watched are kept here meanwhile.
            let until = crate::clock::later(Instant::now(), worker.grace);
            let status = loop {
                let wake = worker.expire().map_or(until, |next| next.min(until));
                match tokio::time::timeout_at(wake.into(), &mut exit_rx).await {
                    Ok(status) => break Ok(status),
                    Err(e) if Instant::now() >= until => break Err(e),
                    Err(_) => {}
                }
            };
            match status {
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
            os::signal_group(worker.pid, libc::SIGKILL);
        }
        inner.reaped = true;
    }
    // Before the pipe closes: what the worker left unread in it.
    let (mut lost, order) = worker.stdin.take_lost();
    worker.stdin.close(); // ends the writer task
    if let Some(pool) = worker.pool.upgrade() {
        // Out of the routing tables before anyone hears it died.
        pool.gone(&worker);
    }
    if let Some(done) = stderr_done {
        // Grandchildren may hold stderr open; do not wait on them for long.
        let _ = tokio::time::timeout(Duration::from_millis(200), done).await;
    }
    let pending: Vec<(u64, Pending)> = worker
        .inner()
        .pending
        .drain()
        .map(|(id, (p, _))| (id, p))
        .collect();
    if matches!(exit, ExitReason::Unknown) && matches!(ending, Ending::Protocol(_)) {
        exit = ExitReason::Signal(libc::SIGKILL);
    }
    // Only while the worker could still answer: after a frame that broke
    // the protocol (which may have been the first call's reply, a second
    // one, or any other), or once it lived on past its stdout's end, it
    // may have finished the first call unheard and started the next.
    let answerable =
        !matches!(ending, Ending::Protocol(_)) && !matches!(exit, ExitReason::ClosedStdout);
    if answerable && worker.pipelining.load(Ordering::Relaxed) {
        // It ran one call at a time, in the order they were written: only
        // the first of those in flight can have started; the ones written
        // ahead behind it never ran, whatever it had read.
        let ids: Vec<u64> = pending.iter().map(|&(id, _)| id).collect();
        lost.extend(super::stdin::behind_first(order, &ids));
    }
    let stopping = worker.stopping.load(Ordering::Relaxed);
    for (id, p) in pending {
        let err = match &ending {
            Ending::Protocol(e) => Error::Protocol {
                worker_id: worker.id.clone(),
                source: e.clone(),
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

/// The worker takes no more calls and leaves the routing tables: its
/// stdout ended or its process exited. The calls in flight stay until their
/// replies are read or the end is known.
fn leave_routing(worker: &Worker) {
    worker.inner().dead = true;
    if let Some(pool) = worker.pool.upgrade() {
        pool.unrouted(worker);
    }
}

/// How the process ended, from its exit watcher.
pub(super) fn exited(
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

pub(super) fn exit_reason(status: std::process::ExitStatus) -> ExitReason {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitReason::Code(code),
        (_, Some(sig)) => ExitReason::Signal(sig),
        _ => ExitReason::Unknown,
    }
}
