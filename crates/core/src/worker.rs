//! One worker process: its pipes, its in-flight calls, its life and death.
//!
//! `stdin` writes to it, `reader` reads from it (frames, stderr, its exit),
//! `host` answers its host calls.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use snakepit_protocol::{encode_frame, Cancel, Capabilities, WireCodec};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::error::{Error, ExitReason};
use crate::pool::Shared;
use crate::spawn;

mod host;
mod reader;
mod stdin;

use reader::{read_loop, stderr_loop};
use stdin::{write_loop, Stdin, StdinState, NO_CALL};

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
}
