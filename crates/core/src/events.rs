//! What a pool does, as events a program can hook its own metrics or logs to.
//!
//! Register a listener with [`PoolBuilder::on_event`](crate::PoolBuilder::on_event).
//! Listeners run synchronously on the task where the event happened, so they
//! must be quick (count, record into a histogram, send on a channel). A
//! listener that panics loses that event (logged at error level); the pool
//! goes on, its other listeners too. The events borrow from the pool: nothing is allocated for them, and nothing
//! at all is done when no listener is registered.
//!
//! They are the counterparts of the original library's telemetry events:
//! [`EventKind::CallEnded`] of `[:snakepit, :worker, :request]`,
//! [`EventKind::WorkerReady`] of `[:snakepit, :worker, :initialized]`, plus
//! pool-level events for restarts, the breaker, health checks, recycling and
//! sweeps.
//!
//! ```no_run
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//! use snakepit_core::events::EventKind;
//! # async fn demo(adapter: impl snakepit_core::Adapter) -> Result<(), snakepit_core::Error> {
//! let slow = Arc::new(AtomicU64::new(0));
//! let counter = slow.clone();
//! let pool = snakepit_core::Pool::builder(adapter)
//!     .on_event(move |event| {
//!         if let EventKind::CallEnded { duration, .. } = event.kind {
//!             if duration.as_millis() > 100 {
//!                 counter.fetch_add(1, Ordering::Relaxed);
//!             }
//!         }
//!     })
//!     .start()
//!     .await?;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

/// A listener registered with [`PoolBuilder::on_event`](crate::PoolBuilder::on_event).
pub type Listener = Arc<dyn Fn(&Event<'_>) + Send + Sync>;

/// Something that happened in a pool.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Event<'a> {
    /// The pool's name ([`PoolBuilder::name`](crate::PoolBuilder::name)).
    pub pool: &'a str,
    /// What happened.
    pub kind: EventKind<'a>,
}

/// What happened; see each variant.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum EventKind<'a> {
    /// A call ended, whatever the outcome (also a call that never ran).
    CallEnded {
        /// The command.
        command: &'a str,
        /// The session, if the call had one.
        session: Option<&'a str>,
        /// The slot of the worker that ran it (0-based), if it reached one.
        worker: Option<usize>,
        /// That worker's process id.
        pid: Option<u32>,
        /// Time from submission until a worker took the call (or until the
        /// call gave up waiting).
        queue_wait: Duration,
        /// Time from submission until the end.
        duration: Duration,
        /// `"ok"`, `"cancelled"` (the caller dropped the call), or the
        /// error's [`kind`](crate::Error::kind).
        outcome: &'static str,
    },
    /// A worker passed its init handshake and takes calls.
    WorkerReady {
        /// Its slot.
        worker: usize,
        /// Its process id.
        pid: u32,
        /// Time from spawn until the handshake's answer.
        init: Duration,
    },
    /// A worker could not be started.
    WorkerStartFailed {
        /// Its slot.
        worker: usize,
        /// Why.
        cause: &'a str,
    },
    /// A ready worker ended on its own or was killed (a crash, a kill, a
    /// failed health check). A worker the pool retires (recycling, shutdown)
    /// is not reported here; recycling is [`EventKind::WorkerRecycled`].
    WorkerExited {
        /// Its slot.
        worker: usize,
        /// Its process id.
        pid: u32,
        /// How it ended, as text (`"exit status 3"`, `"killed by signal 9 (SIGKILL)"`).
        reason: &'a str,
    },
    /// The supervisor will start the slot's worker again after `delay`.
    WorkerRestarting {
        /// The slot.
        worker: usize,
        /// Consecutive failed starts (0 after a worker that ran a second or more;
        /// a worker that dies within a second of starting counts as one).
        attempt: u32,
        /// The back-off before the start.
        delay: Duration,
    },
    /// Starts kept failing: the slot waits out the cool-down.
    BreakerOpened {
        /// The slot.
        worker: usize,
        /// Consecutive failed starts, as the breaker counts them: it opens
        /// at `breaker_threshold`, and a start tried after its cool-down
        /// (half-open) that fails opens it again at that same count, so
        /// this is always `breaker_threshold`.
        failures: u32,
    },
    /// A worker started again in a slot whose breaker was open.
    BreakerClosed {
        /// The slot.
        worker: usize,
    },
    /// A worker did not answer its health ping in time and is being replaced.
    HealthCheckFailed {
        /// The slot.
        worker: usize,
        /// Its process id.
        pid: u32,
    },
    /// A worker was retired on purpose, its replacement already started.
    WorkerRecycled {
        /// The slot.
        worker: usize,
        /// Its process id.
        pid: u32,
        /// `"calls"`, `"memory"`, `"ttl"` or `"idle"`.
        reason: &'static str,
    },
    /// Leftover workers of an earlier run were found at start-up and killed.
    Swept {
        /// Process groups killed.
        killed: usize,
    },
}
