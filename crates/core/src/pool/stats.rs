//! The pool's counters and the snapshots `stats()` and `workers()` return.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::shared::Shared;
use crate::error::Error;

/// A snapshot of a pool, every figure consistent with what callers saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Workers ready to take calls.
    pub workers: usize,
    /// Calls the ready workers run at once, together (what each declared in
    /// its hello, within `max_concurrency_per_worker`; calls written ahead
    /// not included).
    pub capacity: usize,
    /// Ready workers with no call in flight.
    pub available: usize,
    /// Ready workers with at least one call in flight.
    pub busy: usize,
    /// Calls in flight on workers (including timed-out calls whose late
    /// reply is still awaited, and the calls a recycled worker finishes
    /// after its replacement took its place).
    pub in_flight: usize,
    /// Calls waiting in the queue.
    pub queued: usize,
    /// Calls submitted.
    pub requests: u64,
    /// Calls that succeeded.
    pub completed: u64,
    /// Calls that failed, whatever the reason (the counters below included).
    pub errors: u64,
    /// Calls whose future was dropped before they ended.
    pub cancelled: u64,
    /// Calls that timed out in the queue.
    pub queue_timeouts: u64,
    /// Calls rejected because the queue was full.
    pub pool_saturated: u64,
    /// Calls whose deadline passed.
    pub call_timeouts: u64,
    /// Calls failed because their worker died.
    pub crashes: u64,
    /// Workers started to replace one that ended. A worker that ends while
    /// it is being recycled (its replacement already serves) is counted in
    /// `recycled` only: it needs no replacement of its own.
    pub restarts: u64,
    /// Worker starts that failed: a process that could not be started or
    /// did not pass its init handshake (a recycled worker's replacement
    /// included). A worker that passed its handshake and died within a
    /// second counts as a failed start for the back-off and the breaker,
    /// but not here: its start succeeded, and counts in `restarts`.
    pub start_failures: u64,
    /// Workers replaced on purpose (calls, memory, age, idleness), counted
    /// when the replacement is ready. A replacement that fails to start is
    /// counted in `start_failures`; the old worker then serves on.
    pub recycled: u64,
    /// Sessions with a worker affinity record (at most `max_sessions`;
    /// each goes after `session_ttl` unused, or with `end_session`).
    pub sessions: usize,
    /// How long the ready workers' recent calls ran, on average (each
    /// worker's moving average over about its last eight calls, from the
    /// moment it could start a call to its reply: time in the queue not
    /// counted). Measured for workers that run one call at a time; `None`
    /// until one of them has answered a call. In JSON: `call_time_us`.
    #[serde(rename = "call_time_us", serialize_with = "as_micros")]
    pub call_time: Option<Duration>,
}

/// One ready worker, as [`Pool::workers`](crate::Pool::workers) reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Its id (`SNAKEPIT_WORKER_ID`).
    pub id: String,
    /// Its slot in the pool (0-based).
    pub slot: usize,
    /// Its process id (also its process group id).
    pub pid: u32,
    /// Calls in flight on it (its health ping is not one).
    pub in_flight: usize,
    /// Its health ping is in flight: it takes no call until it answers.
    pub health_check: bool,
    /// Calls it runs at once (what it declared, within the pool's bound).
    pub capacity: u32,
    /// Calls it has answered.
    pub served: u64,
    /// Time since it was spawned.
    #[serde(serialize_with = "as_millis")]
    pub age: Duration,
    /// Its resident memory, when the system tells (Linux: `/proc`).
    pub rss_bytes: Option<u64>,
    /// Its proportional set size: its own pages plus its share of pages
    /// it shares with other processes (Linux: `/proc/PID/smaps_rollup`).
    /// What a preloaded worker really costs, where `rss_bytes` counts
    /// everything it shares with its template in full.
    pub pss_bytes: Option<u64>,
}

fn as_micros<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_micros() as u64)),
        None => s.serialize_none(),
    }
}

pub(crate) fn as_millis<S: serde::Serializer>(
    d: &Duration,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) queue_timeouts: AtomicU64,
    pub(crate) pool_saturated: AtomicU64,
    pub(crate) call_timeouts: AtomicU64,
    pub(crate) crashes: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) start_failures: AtomicU64,
    pub(crate) recycled: AtomicU64,
}

impl Shared {
    /// A call's deadline passed: counted, and its error.
    pub(crate) fn timed_out(&self, command: &str, timeout: Duration) -> Error {
        self.counters.call_timeouts.fetch_add(1, Ordering::Relaxed);
        Error::CallTimeout {
            command: command.to_owned(),
            timeout,
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let st = self.state();
        let c = &self.counters;
        let mut s = Stats::default();
        let (mut timed, mut total) = (0u32, Duration::ZERO);
        for slot in st.slots.iter().filter(|s| s.worker.is_some()) {
            if let Some(t) = slot.worker.as_ref().and_then(|w| w.call_time()) {
                timed += 1;
                total += t;
            }
            s.workers += 1;
            s.capacity += slot.capacity as usize;
            let calls = slot.calls();
            s.in_flight += calls as usize;
            if calls == 0 {
                s.available += 1;
            } else {
                s.busy += 1;
            }
        }
        // Workers out of their slots (recycled, or dying) still finish the
        // calls they had: those are in flight too.
        let leaving: Vec<_> = st.retiring.iter().chain(&st.dying).cloned().collect();
        s.queued = st
            .queue
            .iter()
            .chain(st.strict.iter().flatten())
            .filter(|w| !w.tx.is_closed())
            .count();
        // A call is counted in `requests` before its outcome: reading the
        // outcomes first keeps their sum within `requests` while calls end.
        s.completed = c.completed.load(Ordering::Acquire);
        s.errors = c.errors.load(Ordering::Acquire);
        s.cancelled = c.cancelled.load(Ordering::Acquire);
        s.requests = c.requests.load(Ordering::Acquire);
        s.queue_timeouts = c.queue_timeouts.load(Ordering::Relaxed);
        s.pool_saturated = c.pool_saturated.load(Ordering::Relaxed);
        s.call_timeouts = c.call_timeouts.load(Ordering::Relaxed);
        s.crashes = c.crashes.load(Ordering::Relaxed);
        s.restarts = c.restarts.load(Ordering::Relaxed);
        s.start_failures = c.start_failures.load(Ordering::Relaxed);
        s.recycled = c.recycled.load(Ordering::Relaxed);
        s.sessions = st.affinity.len();
        drop(st);
        for w in leaving {
            s.in_flight += w.in_flight();
        }
        s.call_time = (timed > 0).then(|| total / timed);
        s
    }
}
