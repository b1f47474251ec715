//! One worker process: its pipes, its in-flight calls, its life and death.
//!
//! `stdin` writes to it, `reader` reads from it (frames, stderr, its exit),
//! `host` answers its host calls.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use snakepit_protocol::{encode_frame, Cancel, Capabilities, WireCodec};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, ExitReason};
use crate::os;

mod host;
mod reader;
mod stdin;

use crate::sync::Unpoisoned;
pub(crate) use reader::{for_each_line, line_text};
use reader::{read_loop, stderr_loop};
use stdin::{write_loop, Stdin, NO_CALL};

/// What a worker tells the pool that owns it, and asks of it: the worker
/// knows its owner only through this, so the pool's types stay the pool's.
pub(crate) trait Owner: Send + Sync {
    /// A final reply arrived: one unit of `worker`'s capacity is free.
    fn released(self: Arc<Self>, worker: &Worker);
    /// `worker`'s stdout ended or its process exited: out of the routing
    /// tables (its end is then awaited).
    fn unrouted(&self, worker: &Worker);
    /// `worker`'s process ended: out of the routing tables, and out of the
    /// watchdog and the run record, before anyone hears it died.
    fn gone(&self, worker: &Worker);
    /// Sends SIGINT to `worker` for call `id` if it can reach only that
    /// call (see [`Worker::interrupt`]); nothing is then written ahead to
    /// it until that call's reply. Whether it was sent.
    fn interrupt(&self, worker: &Worker, id: u64) -> bool;
    /// The host function named `name`, if the pool offers one.
    fn host_function(&self, name: &str) -> Option<crate::HostFunction>;
}

/// What a worker needs to know of its pool's configuration.
pub(crate) struct Settings {
    pub(crate) codec: WireCodec,
    pub(crate) grace: Duration,
    pub(crate) max_frame_size: usize,
    pub(crate) stderr_tail_lines: usize,
    /// Keep the time of the last reply (idle recycling is on).
    pub(crate) track_idle: bool,
}

/// Why a call got no reply frame.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Its request never reached the worker (the pipe was already closed or
    /// broke before the frame was written whole): it may go to another one.
    NotSent(Error),
    /// It reached the worker, or may have: it is never sent again.
    Failed(Error),
    /// Its deadline passed before its reply, seen by the worker's reader
    /// (for a call registered with [`Worker::register_until`]). The call
    /// stays pending: its caller abandons it as on its own timeout.
    Expired,
}

impl From<Failure> for Error {
    fn from(f: Failure) -> Error {
        match f {
            Failure::NotSent(e) | Failure::Failed(e) => e,
            // Callers that register a deadline handle this themselves.
            Failure::Expired => Error::CallTimeout {
                command: String::new(),
                timeout: Duration::ZERO,
            },
        }
    }
}

/// What a caller receives: the final reply frame, or why there is none.
pub(crate) type Reply = Result<Bytes, Failure>;

/// Bytes of one stderr line kept; the rest of the line is dropped.
pub(crate) const MAX_STDERR_LINE: usize = 2048;

/// A call waiting for its reply.
pub(crate) struct Pending {
    pub(crate) reply: oneshot::Sender<Reply>,
    pub(crate) chunks: Option<mpsc::Sender<Bytes>>,
    pub(crate) session: Option<Arc<str>>,
    /// The call holds one of the worker's capacity units, to be returned when
    /// the final reply arrives (internal handshake pings hold none).
    pub(crate) holds_unit: bool,
    /// A stream's deadline: past it, its chunks no longer wait for its
    /// reader (who is told of the timeout on its next poll) and are dropped.
    pub(crate) until: Option<Instant>,
    /// Given up while it waited behind another call (written ahead), and
    /// sent a `cancel` frame: the worker drops it unrun, so a SIGINT for
    /// the call ahead of it no longer risks landing in it.
    pub(crate) cancel_sent: bool,
    /// Given up while it ran, when the SIGINT could not be sent because
    /// calls waited behind it: sent once each of those has been sent a
    /// `cancel` frame (see [`Worker::abandon`]). Also set on a call given
    /// up while written ahead, whose turn may have come already
    /// (`Worker::cancelled_unrun`).
    pub(crate) interrupt_due: bool,
    /// Given up ([`Worker::abandon`]): the worker was asked to stop it once.
    pub(crate) abandoned: bool,
}

impl Pending {
    /// A call waiting for its reply on `reply`.
    pub(crate) fn new(reply: oneshot::Sender<Reply>, holds_unit: bool) -> Self {
        Pending {
            reply,
            chunks: None,
            session: None,
            holds_unit,
            until: None,
            cancel_sent: false,
            interrupt_due: false,
            abandoned: false,
        }
    }
}

impl Pending {
    /// Tells the caller now how the call ended for it; the call stays in
    /// flight (its unit comes back with the worker's reply, if any).
    pub(crate) fn tell(&mut self, failure: Failure) {
        let (dead, _) = oneshot::channel();
        let _ = std::mem::replace(&mut self.reply, dead).send(Err(failure));
    }
}

struct Inner {
    /// The calls in flight, each with its deadline if it was registered
    /// with one (the reader watches those in place of a timer per call).
    pending: HashMap<u64, (Pending, Option<Instant>), CallIds>,
    /// When the call now running started (kept only while calls are
    /// written ahead to this worker, to learn how long its calls take).
    running_since: Option<Instant>,
    /// No later than the earliest deadline in `pending` (it is not raised when a
    /// call ends, only when the reader looks through them).
    earliest: Option<Instant>,
    /// When the reader's timer fires, if it is set; it then expires the
    /// calls whose deadline passed and sets it again for the rest.
    armed: Option<Instant>,
    /// Set once the worker is dying; no call is registered after that.
    dead: bool,
    reaped: bool,
}

/// Hashes call ids for the in-flight map: ids are the pool's own counter,
/// never chosen by a worker, so one multiply spreads them well enough and
/// costs a fraction of the default SipHash.
#[derive(Default, Clone, Copy)]
struct CallIds;

impl std::hash::BuildHasher for CallIds {
    type Hasher = CallIdHasher;
    fn build_hasher(&self) -> CallIdHasher {
        CallIdHasher(0)
    }
}

struct CallIdHasher(u64);

impl std::hash::Hasher for CallIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The last lines a worker wrote to stderr.
pub(crate) struct Tail {
    lines: VecDeque<String>,
    max: usize,
}

impl Tail {
    fn push(&mut self, line: String) {
        if self.max == 0 {
            return; // none kept (`stderr_tail_lines = 0`)
        }
        if self.lines.len() >= self.max {
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

/// How a process ends, as the worker's exit watcher awaits it: the
/// child's own `wait`, or for a forked worker its pidfd and its template's
/// report (`template.rs`).
pub(crate) type ExitFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = std::io::Result<std::process::ExitStatus>> + Send>,
>;

/// A worker process, however it was started: its pid (and process group),
/// its three pipes and how it ends.
pub(crate) struct Process {
    pub(crate) pid: u32,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) stdout: Option<ChildStdout>,
    pub(crate) stderr: Option<ChildStderr>,
    pub(crate) exit: ExitFuture,
}

impl From<Child> for Process {
    fn from(mut child: Child) -> Process {
        Process {
            pid: child.id().unwrap_or(0),
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            // The child moves into the future: killed if it is dropped
            // unfinished (`kill_on_drop`), reaped when it ends.
            exit: Box::pin(async move { child.wait().await }),
        }
    }
}

pub(crate) struct Worker {
    pub(crate) id: String,
    pub(crate) slot: usize,
    pub(crate) generation: u64,
    pub(crate) pid: u32,
    pub(crate) started: Instant,
    pub(crate) served: AtomicU64,
    /// When the last call's final reply arrived (the pool's pings do not
    /// count), in ms after `started`; kept only
    /// when idle workers are recycled (a clock read per reply otherwise).
    last_reply_ms: Option<AtomicU64>,
    /// The pool that owns it, known only through [`Owner`].
    pool: Weak<dyn Owner>,
    /// How long a timed-out call's late reply, or a process with its
    /// stdout closed, is waited for.
    grace: Duration,
    /// The largest frame accepted from it (and host reply sent to it).
    max_frame_size: usize,
    codec: WireCodec,
    stdin: Arc<Stdin>,
    inner: Mutex<Inner>,
    pub(crate) caps: OnceLock<Capabilities>,
    tail: Mutex<Tail>,
    /// Host calls received and not yet answered.
    host_calls: AtomicUsize,
    /// Calls are written ahead to it (see [`Worker::set_pipelining`]).
    pipelining: AtomicBool,
    /// It runs one call at a time: a stream's reader that falls behind is
    /// waited for (the worker has nothing else to do meanwhile) instead of
    /// failing the stream (see `reader.rs`).
    one_at_a_time: AtomicBool,
    /// Streaming calls in flight on it: no call is written ahead behind
    /// one, as a stream may wait on its reader for any time.
    streams: AtomicU32,
    /// The moving average of its calls' run time, in µs (`u32::MAX`: none
    /// measured yet, so no call is written ahead until one is).
    call_us: AtomicU32,
    /// `PoolConfig::pipeline_max_call`, in µs.
    max_call_us: AtomicU32,
    /// The pool is stopping this worker (shutdown): calls cut off by it are
    /// not crashes.
    stopping: AtomicBool,
    /// The pool killed this worker because a call it had cancelled did not
    /// end within the grace period: its end says nothing of how it starts.
    stuck: AtomicBool,
    /// The pool killed this worker because it did not answer a health
    /// check in time.
    unhealthy: AtomicBool,
    /// A call registered a deadline while the reader's timer was unset:
    /// the reader sets it after its next frame.
    rearm: AtomicBool,
    /// A stream registered a deadline before the reader's timer fires: the
    /// reader sets its timer again at once (a stream's caller may never
    /// poll it, so no other timer stands in meanwhile).
    deadline_moved: tokio::sync::Notify,
    /// Some call may be marked [`Pending::interrupt_due`].
    due: AtomicBool,
    /// `Some` once the process has ended and every call on it was failed.
    finished: watch::Sender<Option<ExitReason>>,
    /// The runtime its tasks run on: the grace period of a call given up
    /// outside any runtime (a future or stream dropped on a plain thread)
    /// is timed there.
    runtime: tokio::runtime::Handle,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stdin.close();
    }
}

impl Worker {
    /// Takes over a freshly started process: starts its writer, stderr and
    /// reader tasks.
    pub(crate) fn start(
        owner: Weak<dyn Owner>,
        settings: &Settings,
        process: Process,
        id: String,
        slot: usize,
        generation: u64,
    ) -> Arc<Worker> {
        let Process {
            pid,
            stdin,
            stdout,
            stderr,
            exit,
        } = process;
        let stdin = Arc::new(Stdin::new(stdin));
        let worker = Arc::new(Worker {
            id,
            slot,
            generation,
            pid,
            started: Instant::now(),
            served: AtomicU64::new(0),
            last_reply_ms: settings.track_idle.then(|| AtomicU64::new(0)),
            pool: owner,
            grace: settings.grace,
            max_frame_size: settings.max_frame_size,
            codec: settings.codec,
            stdin: stdin.clone(),
            inner: Mutex::new(Inner {
                pending: HashMap::with_capacity_and_hasher(4, CallIds),
                earliest: None,
                armed: None,
                running_since: None,
                dead: false,
                reaped: false,
            }),
            runtime: tokio::runtime::Handle::current(),
            caps: OnceLock::new(),
            tail: Mutex::new(Tail {
                lines: VecDeque::new(),
                max: settings.stderr_tail_lines,
            }),
            host_calls: AtomicUsize::new(0),
            pipelining: AtomicBool::new(false),
            one_at_a_time: AtomicBool::new(false),
            streams: AtomicU32::new(0),
            call_us: AtomicU32::new(u32::MAX),
            max_call_us: AtomicU32::new(0),
            stopping: AtomicBool::new(false),
            stuck: AtomicBool::new(false),
            unhealthy: AtomicBool::new(false),
            rearm: AtomicBool::new(false),
            deadline_moved: tokio::sync::Notify::new(),
            due: AtomicBool::new(false),
            finished: watch::channel(None).0,
        });
        tokio::spawn(write_loop(stdin));
        let stderr_done = stderr.map(|e| tokio::spawn(stderr_loop(worker.clone(), e)));
        tokio::spawn(read_loop(
            worker.clone(),
            stdout,
            exit,
            stderr_done,
            settings.max_frame_size,
        ));
        worker
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.locked()
    }

    pub(crate) fn capabilities(&self) -> Capabilities {
        self.caps.get().cloned().unwrap_or_default()
    }

    pub(crate) fn stderr_tail(&self) -> String {
        self.tail.locked().text()
    }

    /// Registers a call; fails if the worker is already dying.
    pub(crate) fn register(&self, id: u64, pending: Pending) -> Result<(), Pending> {
        let mut inner = self.inner();
        if inner.dead {
            return Err(pending);
        }
        if inner.pending.is_empty() && self.runs_one_at_a_time() {
            inner.running_since = Some(Instant::now());
        }
        if pending.chunks.is_some() {
            self.streams.fetch_add(1, Ordering::Relaxed);
        }
        let until = pending.until;
        inner.pending.insert(id, (pending, None));
        // A stream's deadline is watched by the reader too: its caller may
        // never poll it, and only the pool can stop it then. The reader
        // hears at once of one earlier than its timer.
        if let Some(deadline) = until {
            let sooner = inner.armed.is_none_or(|a| deadline < a);
            self.watch(&mut inner, deadline);
            if sooner {
                self.rearm.store(true, Ordering::Relaxed);
                self.deadline_moved.notify_one();
            }
        }
        Ok(())
    }

    /// Sets the reader's timer for `deadline` if it fires later or not at
    /// all.
    fn watch(&self, inner: &mut Inner, deadline: Instant) {
        if inner.earliest.is_none_or(|e| deadline < e) {
            inner.earliest = Some(deadline);
            if inner.armed.is_none() {
                self.rearm.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Registers a call that times out at `deadline`: the reader expires it
    /// then ([`Failure::Expired`]). `Ok(true)` when the reader's timer is
    /// set for `deadline` or earlier, so that the caller needs no timer of
    /// its own; `Ok(false)` when the caller must keep its own (the reader
    /// sets its timer at its next frame, and in the meantime the worker
    /// may never answer). Fails if the worker is already dying.
    pub(crate) fn register_until(
        &self,
        id: u64,
        pending: Pending,
        deadline: Instant,
    ) -> Result<bool, Pending> {
        let mut inner = self.inner();
        if inner.dead {
            return Err(pending);
        }
        if inner.pending.is_empty() && self.runs_one_at_a_time() {
            inner.running_since = Some(Instant::now());
        }
        inner.pending.insert(id, (pending, Some(deadline)));
        self.watch(&mut inner, deadline);
        Ok(inner.armed.is_some_and(|a| a <= deadline))
    }

    /// The reader's timer fired (or is unset): expires the calls whose
    /// deadline has passed, and says when to fire next (`None`: no call
    /// has a deadline). A stream past its deadline takes no more chunks and
    /// is given up here, whether or not its caller ever polls it again.
    fn expire(self: &Arc<Self>) -> Option<Instant> {
        let mut streams = Vec::new();
        let next = self.expire_calls(&mut streams);
        for id in streams {
            self.abandon(id);
        }
        next
    }

    /// [`Worker::expire`] under the lock: the streams to give up go into
    /// `streams`.
    fn expire_calls(&self, streams: &mut Vec<u64>) -> Option<Instant> {
        let mut inner = self.inner();
        let inner = &mut *inner;
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for (&id, (p, watched)) in inner.pending.iter_mut() {
            if let Some(until) = p.until {
                if until > now {
                    next = Some(next.map_or(until, |n| n.min(until)));
                } else {
                    p.until = None;
                    if p.chunks.is_some() {
                        self.cut_stream(p, Failure::Expired);
                    }
                    streams.push(id);
                }
            }
            let Some(deadline) = *watched else { continue };
            if deadline > now {
                next = Some(next.map_or(deadline, |n| n.min(deadline)));
                continue;
            }
            // The call stays pending (its caller abandons it, and its unit
            // comes back with its reply); only its caller hears.
            *watched = None;
            p.tell(Failure::Expired);
        }
        // With no call left to watch, the timer stays set for the earliest
        // deadline it was set for, so that the next calls (their deadlines
        // later) need no timer of their own either.
        let next = next.or(inner.earliest.filter(|&e| e > now));
        inner.earliest = next;
        inner.armed = next;
        self.rearm.store(false, Ordering::Relaxed);
        next
    }

    /// The calls it runs at once, as the pool settled them.
    pub(crate) fn set_capacity(&self, capacity: u32) {
        self.one_at_a_time.store(capacity <= 1, Ordering::Relaxed);
    }

    pub(crate) fn runs_one_at_a_time(&self) -> bool {
        self.one_at_a_time.load(Ordering::Relaxed)
    }

    /// A streaming call ended, or stopped taking chunks.
    pub(crate) fn stream_ended(&self) {
        self.streams.fetch_sub(1, Ordering::Relaxed);
    }

    /// Calls are written ahead to this worker (it runs one call at a time,
    /// declared `pipeline`, and the pool's `pipeline_depth` is on).
    /// `max_call`: how short its recent calls must be for that.
    pub(crate) fn set_pipelining(&self, on: bool, max_call: Duration) {
        let us = max_call.as_micros().min(u128::from(u32::MAX - 1)) as u32;
        self.max_call_us.store(us, Ordering::Relaxed);
        self.pipelining.store(on, Ordering::Relaxed);
    }

    /// The moving average of its recent calls' run time (a worker that
    /// runs one call at a time: from the moment it could start a call to its
    /// reply), if one has ended.
    pub(crate) fn call_time(&self) -> Option<Duration> {
        match self.call_us.load(Ordering::Relaxed) {
            u32::MAX => None,
            us => Some(Duration::from_micros(u64::from(us))),
        }
    }

    /// How many calls may wait in this worker's stdin behind the running
    /// one: as many as its recent calls take `pipeline_max_call` to run (so
    /// a call written ahead waits about that long at most), at least 1 and
    /// at most `depth`, while its recent calls were shorter than that and
    /// no stream runs; otherwise none (a long call never has another
    /// waiting behind it, nor does a stream, which may wait on its reader).
    pub(crate) fn pipeline_room(&self, depth: u32) -> u32 {
        if !self.pipelining.load(Ordering::Relaxed) || self.streams.load(Ordering::Relaxed) > 0 {
            return 0;
        }
        ahead_for(
            self.call_us.load(Ordering::Relaxed),
            self.max_call_us.load(Ordering::Relaxed),
            depth,
        )
    }

    /// Learns how long the call that just ended took (a moving average
    /// over the last eight or so); the next call, if one waits, starts now.
    fn timed(&self, inner: &mut Inner) {
        let now = Instant::now();
        if let Some(since) = inner.running_since {
            let took = now
                .duration_since(since)
                .as_micros()
                .min(u128::from(u32::MAX - 1)) as u32;
            let avg = self.call_us.load(Ordering::Relaxed);
            let avg = if avg == u32::MAX {
                took
            } else {
                avg - avg / 8 + took / 8
            };
            self.call_us.store(avg, Ordering::Relaxed);
        }
        inner.running_since = (!inner.pending.is_empty()).then_some(now);
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
        let pending = self.inner().pending.remove(&id).map(|(p, _)| p);
        self.stdin.ended(id);
        if pending.as_ref().is_some_and(|p| p.chunks.is_some()) {
            self.stream_ended();
        }
        pending
    }

    /// Sends SIGINT for call `id`, only while that call is still in flight
    /// on this worker's live process; whether it was sent. The pool calls
    /// it under its lock ([`Owner::interrupt`]), so that no next call can
    /// be handed to this worker between the check and the signal: a reply
    /// that comes meanwhile waits for the lock to free the worker, and the
    /// signal lands between calls, which the bridges ignore.
    ///
    /// Not sent while another call is registered on the worker: one
    /// written ahead behind `id` would start the moment `id`'s handler
    /// returns, and the signal could land in it (a recycled worker, out of
    /// its slot, still has the calls written ahead to it before). Calls
    /// given up while they waited, and sent their `cancel` frame, do not
    /// count: the worker drops them unrun. A refused call is marked
    /// ([`Pending::interrupt_due`]), to be signalled when the last of
    /// those is given up.
    ///
    /// A worker that declares `pipeline` gets a `cancel` frame for `id`
    /// first. The signal may land while it still reads or decodes the
    /// request, before its handler starts, where a bridge ignores SIGINT;
    /// a bridge that saw such a SIGINT looks in its stdin for this frame
    /// before it starts the request, and answers it `Cancelled` unrun.
    pub(crate) fn signal_call(&self, id: u64) -> bool {
        {
            let mut inner = self.inner();
            if inner.reaped {
                return false;
            }
            let behind = inner
                .pending
                .iter()
                .any(|(&other, (p, _))| other != id && !p.cancel_sent);
            let Some((p, _)) = inner.pending.get_mut(&id) else {
                return false;
            };
            // Refused: sent later, once each call behind it is given up.
            p.interrupt_due = behind;
            if behind {
                self.due.store(true, Ordering::Relaxed);
                return false;
            }
        }
        if self.capabilities().pipeline {
            self.send_cancel(id);
        }
        os::signal_pid(self.pid, libc::SIGINT)
    }

    /// A call marked to be signalled later ([`Pending::interrupt_due`]),
    /// if there is one; cheap when there is none.
    pub(crate) fn interrupt_due(&self) -> Option<u64> {
        if !self.due.load(Ordering::Relaxed) {
            return None;
        }
        let inner = self.inner();
        // The call running first (a call behind it may be due too: one
        // given up while written ahead, in case it had started already).
        let due = inner
            .pending
            .iter()
            .filter(|(_, (p, _))| p.interrupt_due)
            .min_by_key(|(_, (p, _))| p.cancel_sent)
            .map(|(&id, _)| id);
        if due.is_none() {
            self.due.store(false, Ordering::Relaxed);
        }
        due
    }

    /// Whether the pool must not signal call `id` yet: `in_flight` calls
    /// hold units of this worker, and more than `id` and the calls given
    /// up unrun behind it (see [`Pending::cancel_sent`]) may run. If so,
    /// `id` is marked to be signalled later, in the same critical section
    /// as the count, so that a call behind it given up meanwhile sees the
    /// mark.
    pub(crate) fn interrupt_refused(&self, id: u64, in_flight: u32) -> bool {
        let mut inner = self.inner();
        let cancelled = inner
            .pending
            .values()
            .filter(|(p, _)| p.cancel_sent && p.holds_unit)
            .count();
        // `id` itself, unless it is one of those.
        let own = inner
            .pending
            .get(&id)
            .is_none_or(|(p, _)| !(p.cancel_sent && p.holds_unit));
        let refused = in_flight as usize > usize::from(own) + cancelled;
        match inner.pending.get_mut(&id) {
            Some((p, _)) if refused => {
                p.interrupt_due = true;
                self.due.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
        refused
    }

    /// Sends a `cancel` frame for call `id`.
    fn send_cancel(&self, id: u64) {
        let mut buf = bytes::BytesMut::new();
        if encode_frame(&self.codec, &Cancel::new(id), usize::MAX, &mut buf).is_ok() {
            self.send(buf.freeze());
        }
    }

    /// Interrupts call `id` with SIGINT when the signal can reach only it.
    fn interrupt(&self, id: u64) {
        match self.pool.upgrade() {
            Some(pool) => {
                pool.interrupt(self, id);
            }
            // No pool, no next call.
            None => {
                self.signal_call(id);
            }
        }
    }

    /// Call `id`, waiting behind another, was sent a `cancel` frame; the
    /// call given up while it ran and left without its SIGINT because of
    /// the calls behind it, if there is one. One critical section, so that
    /// a refusal counted meanwhile ([`Worker::interrupt_refused`],
    /// [`Worker::signal_call`]) is either seen here or saw this call
    /// cancelled.
    ///
    /// The worker may have started `id` already: its turn came just before
    /// it was given up, and the reply before it is still on its way to the
    /// pool. A bridge then ignores the `cancel` frame. So `id` is marked
    /// due as well, and signalled once nothing runs ahead of it
    /// ([`Worker::interrupt_due`], when a unit comes back); if the worker
    /// dropped it unrun, the signal lands between calls.
    fn cancelled_unrun(&self, id: u64) -> Option<u64> {
        let mut inner = self.inner();
        if let Some((p, _)) = inner.pending.get_mut(&id) {
            p.cancel_sent = true;
            p.interrupt_due = true;
            self.due.store(true, Ordering::Relaxed);
        }
        inner
            .pending
            .iter()
            .find_map(|(&due, (p, _))| (p.interrupt_due && !p.cancel_sent).then_some(due))
    }

    /// Call `id` was written ahead and waits behind the one this worker
    /// runs (only with pipelining).
    fn is_waiting(&self, id: u64) -> bool {
        if !self.pipelining.load(Ordering::Relaxed) {
            return false;
        }
        let pending: Vec<u64> = self.inner().pending.keys().copied().collect();
        self.stdin
            .first_written(&pending)
            .is_some_and(|first| first != id)
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

    /// Shutdown's grace period is over: the calls this worker still runs
    /// are stopped by the shutdown. Their callers hear it now (a reply that
    /// still comes goes nowhere); `true` if there were any. A call written
    /// ahead that waits behind the one running never started: its caller
    /// hears [`Error::ShutDown`], a call that never ran.
    pub(crate) fn cut_off(&self) -> bool {
        // Calls it cuts off, now or when it ends, were stopped by the
        // shutdown, not by a crash.
        self.stopping.store(true, Ordering::Relaxed);
        let waiting = if self.pipelining.load(Ordering::Relaxed) {
            let pending: Vec<u64> = self.inner().pending.keys().copied().collect();
            self.stdin.written_behind(&pending)
        } else {
            Vec::new() // every call in flight may have started
        };
        let mut inner = self.inner();
        let mut any = false;
        for (id, (p, watched)) in inner.pending.iter_mut() {
            *watched = None;
            let err = if waiting.contains(id) {
                Error::ShutDown
            } else {
                Error::StoppedByShutdown {
                    worker_id: self.id.clone(),
                    pid: self.pid,
                }
            };
            p.tell(Failure::Failed(err));
            any = true;
        }
        any
    }

    /// Closes the worker's stdin, asking it to exit.
    pub(crate) fn close_stdin(&self) {
        self.stdin.close();
    }

    /// Signals the worker's whole process group, unless it was reaped, and
    /// the worker itself too when it has left that group (`setpgid`,
    /// `setsid`), so that a worker cannot outlive its recycling, health
    /// check or shutdown by moving. It is signalled once either way: a
    /// second SIGINT could reach its next call.
    pub(crate) fn signal(&self, signal: libc::c_int) {
        let inner = self.inner();
        if !inner.reaped && self.pid != 0 {
            os::signal_group(self.pid, signal);
            if os::group_of(self.pid).is_some_and(|group| group != self.pid) {
                os::signal_pid(self.pid, signal);
            }
        }
    }

    pub(crate) fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    /// Kills the worker for a cancelled call that did not end in time.
    fn kill_stuck(&self) {
        self.stuck.store(true, Ordering::Relaxed);
        self.kill();
    }

    /// Whether the pool killed it for a call that would not end (rather
    /// than the worker ending, or breaking the protocol).
    pub(crate) fn was_stuck(&self) -> bool {
        self.stuck.load(Ordering::Relaxed)
    }

    /// Kills the worker for a health check it did not answer in time.
    pub(crate) fn kill_unhealthy(&self) {
        self.unhealthy.store(true, Ordering::Relaxed);
        self.kill();
    }

    /// Whether the pool killed it for a health check it did not answer.
    pub(crate) fn was_unhealthy(&self) -> bool {
        self.unhealthy.load(Ordering::Relaxed)
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
        // Once: a stream is given up by the reader at its deadline, and by
        // its caller when it polls or drops it.
        match self.inner().pending.get_mut(&id) {
            Some((p, _)) if !p.abandoned => p.abandoned = true,
            _ => return,
        }
        let caps = self.capabilities();
        let waiting = self.is_waiting(id);
        // A call written ahead and not started is dropped by the worker on a
        // cancel frame (it declared `pipeline`); never a signal, which would
        // hit the call it is running.
        if caps.cancel || waiting {
            self.send_cancel(id);
        } else if caps.sigint && caps.max_concurrency <= 1 {
            self.interrupt(id);
        }
        if waiting {
            // A running call given up before this one may have been left
            // without its SIGINT because of it.
            if let Some(due) = self.cancelled_unrun(id) {
                self.interrupt(due);
            }
            // The call in front may have answered, and its unit come back,
            // between `waiting` and the mark: the unit's release then saw
            // nothing due, and none comes before `id`'s own reply. If `id`
            // no longer waits, its turn has come: signal it now (refused,
            // and left due, while the front call's unit is still out).
            if caps.sigint
                && caps.max_concurrency <= 1
                && !self.is_waiting(id)
                && self.is_pending(id)
            {
                self.interrupt(id);
            }
        }
        let (grace, worker) = (self.grace, self.clone());
        // Timed on the worker's own runtime, not the caller's: a caller
        // on a plain thread, or on a runtime of its own that ends with its
        // call (a synchronous wrapper's), would take the timer with it. If
        // the worker's runtime is gone, so are the pool's tasks, and the
        // pool's end kills the worker.
        self.runtime.spawn(async move {
            if waiting {
                // Waiting behind a running call: its turn has not come,
                // and the worker is not stuck on it. It gets the whole
                // grace period from its turn (seen within an eighth of
                // it), however long it waited.
                let step = (grace / 8).max(Duration::from_millis(10));
                while worker.is_pending(id) && worker.is_waiting(id) && !worker.is_finished() {
                    tokio::time::sleep(step).await;
                }
            }
            tokio::time::sleep(grace).await;
            if worker.is_pending(id) && !worker.is_finished() {
                tracing::warn!(worker = %worker.id, id, "no reply to a cancelled call within the grace period; replacing the worker");
                worker.kill_stuck();
            }
        });
    }
}

/// Calls written ahead to a worker whose recent calls took `call_us` on
/// average (`u32::MAX`: none has ended yet): enough to cover `window_us` of
/// its work, at least 1 and at most `depth`; none once its calls take
/// `window_us` or more.
fn ahead_for(call_us: u32, window_us: u32, depth: u32) -> u32 {
    if call_us >= window_us || depth == 0 {
        return 0;
    }
    (window_us / call_us.max(1)).clamp(1, depth)
}

#[cfg(test)]
mod tests {
    #[test]
    fn calls_written_ahead_cover_the_window_of_recent_calls() {
        use super::ahead_for;
        // No call has ended yet: nothing is known to be short.
        assert_eq!(ahead_for(u32::MAX, 1000, 16), 0);
        assert_eq!(ahead_for(7, 1000, 16), 16, "short calls: the whole depth");
        assert_eq!(ahead_for(0, 1000, 16), 16);
        assert_eq!(ahead_for(100, 1000, 16), 10);
        assert_eq!(ahead_for(400, 1000, 16), 2);
        assert_eq!(ahead_for(999, 1000, 16), 1, "just under the window: one");
        assert_eq!(ahead_for(1000, 1000, 16), 0, "at the window: none");
        assert_eq!(ahead_for(7, 1000, 0), 0, "pipelining off");
        assert_eq!(ahead_for(7, 0, 16), 0);
    }
}
