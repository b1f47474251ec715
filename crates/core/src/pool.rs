//! The pool: who gets which worker, when, and what happens when one dies.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use snakepit_protocol::{
    decode_chunk, decode_response, encode_frame, Codec, RemoteError, Request, WireCodec,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;

use crate::adapter::{Adapter, Launch};
use crate::error::{Error, Result, StartError};
use crate::events::{Event, EventKind, Listener};
use crate::session_hook::{SessionEnds, SessionHook};
use crate::spawn::Spawner;
use crate::worker::{Failure, Pending, Reply, Worker};
use crate::PoolConfig;

/// A function the host offers to its workers (see [`PoolBuilder::host_function`]).
pub type HostFunction = Arc<
    dyn Fn(
            HostCall,
        ) -> Pin<Box<dyn Future<Output = std::result::Result<Value, RemoteError>> + Send>>
        + Send
        + Sync,
>;

/// Produces the W3C trace context of the current span (see
/// [`PoolBuilder::trace_context`]).
pub type TraceContext = Arc<dyn Fn() -> Option<TraceHeaders> + Send + Sync>;

/// The W3C trace context a request frame carries to the worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    /// The `traceparent` header.
    pub traceparent: String,
    /// The `tracestate` header, when the trace has one.
    pub tracestate: Option<String>,
}

impl From<String> for TraceHeaders {
    /// A `traceparent` alone.
    fn from(traceparent: String) -> Self {
        TraceHeaders {
            traceparent,
            tracestate: None,
        }
    }
}

impl From<&str> for TraceHeaders {
    /// A `traceparent` alone.
    fn from(traceparent: &str) -> Self {
        traceparent.to_owned().into()
    }
}

/// A worker's call to a host function.
#[derive(Debug, Clone)]
pub struct HostCall {
    /// The function's name.
    pub function: String,
    /// The session of the request the worker was serving, if any.
    pub session_id: Option<String>,
    /// The calling worker.
    pub worker_id: String,
    /// The arguments.
    pub args: Value,
}

/// How a session call treats the worker that served the session last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Affinity {
    /// Use it when it is free, otherwise any free worker.
    #[default]
    Prefer,
    /// Wait for it (in the queue, subject to the queue timeout).
    Strict,
    /// Use it when it is free, otherwise fail at once with `WorkerBusy`.
    FailFast,
}

/// Options of one call.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// The deadline, counted from submission; the adapter's
    /// `command_timeout` when `None`.
    pub timeout: Option<Duration>,
    /// The session the call belongs to.
    pub session_id: Option<String>,
    /// How the session's worker is preferred.
    pub affinity: Affinity,
    /// W3C trace context to hand to the worker.
    pub traceparent: Option<String>,
}

impl CallOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the session.
    pub fn session(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// Sets how the session's worker is preferred.
    pub fn affinity(mut self, affinity: Affinity) -> Self {
        self.affinity = affinity;
        self
    }

    /// Sets the trace context handed to the worker.
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }
}

/// A snapshot of a pool, every figure consistent with what callers saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Workers ready to take calls.
    pub workers: usize,
    /// Ready workers with no call in flight.
    pub available: usize,
    /// Ready workers with at least one call in flight.
    pub busy: usize,
    /// Calls in flight on workers (including timed-out calls whose late
    /// reply is still awaited).
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
    /// Workers started to replace one that ended.
    pub restarts: u64,
    /// Worker starts that failed.
    pub start_failures: u64,
    /// Workers replaced on purpose (calls, memory, age, idleness).
    pub recycled: u64,
    /// Sessions with a worker affinity record (at most `max_sessions`;
    /// each goes after `session_ttl` unused, or with `end_session`).
    pub sessions: usize,
}

/// One ready worker, as [`Pool::workers`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// Its id (`SNAKEPIT_WORKER_ID`).
    pub id: String,
    /// Its slot in the pool (0-based).
    pub slot: usize,
    /// Its process id (also its process group id).
    pub pid: u32,
    /// Calls in flight on it.
    pub in_flight: usize,
    /// Calls it has answered.
    pub served: u64,
    /// Time since it was spawned.
    #[serde(serialize_with = "as_millis")]
    pub age: Duration,
    /// Its resident memory, when the system tells (Linux: `/proc`).
    pub rss_bytes: Option<u64>,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    completed: AtomicU64,
    errors: AtomicU64,
    cancelled: AtomicU64,
    queue_timeouts: AtomicU64,
    pool_saturated: AtomicU64,
    call_timeouts: AtomicU64,
    crashes: AtomicU64,
    restarts: AtomicU64,
    start_failures: AtomicU64,
    recycled: AtomicU64,
}

struct Slot {
    worker: Option<Arc<Worker>>,
    /// The generation of the worker the slot holds (or is starting).
    generation: u64,
    /// The last generation handed out (a recycled worker's replacement
    /// starts under a new one while the old still serves).
    last_generation: u64,
    in_flight: u32,
    capacity: u32,
    in_free: bool,
    breaker_open: bool,
    /// The worker's answers at which its supervisor is woken to start its
    /// replacement (recycling by calls); 0 once done, or when off.
    replace_at: u64,
    /// The worker's answers at which it takes no new call; 0: never.
    drain_at: u64,
    /// It reached `drain_at`: it finishes its calls, takes no new one, and
    /// leaves when its replacement is ready.
    draining: bool,
    /// Its health ping is in flight: withheld from callers until answered.
    checking: bool,
    /// Wakes the supervisor when the worker reaches `replace_at`.
    due: Arc<tokio::sync::Notify>,
}

impl Slot {
    fn new() -> Self {
        Slot {
            worker: None,
            generation: 0,
            last_generation: 0,
            in_flight: 0,
            capacity: 0,
            in_free: false,
            breaker_open: false,
            replace_at: 0,
            drain_at: 0,
            draining: false,
            checking: false,
            due: Arc::default(),
        }
    }

    fn has_room(&self) -> bool {
        self.worker.is_some() && self.in_flight < self.capacity && !self.draining && !self.checking
    }

    /// A new worker takes the slot: nothing of the last one's state stays.
    fn reset(&mut self, worker: &Arc<Worker>, capacity: u32) {
        self.worker = Some(worker.clone());
        self.in_flight = 0;
        self.capacity = capacity;
        self.replace_at = 0;
        self.drain_at = 0;
        self.draining = false;
        self.checking = false;
    }

    /// Acts on the number of calls the worker has answered: wakes its
    /// supervisor near the limit, stops giving it calls at the limit.
    fn count_served(&mut self, served: u64) {
        if self.replace_at > 0 && served >= self.replace_at {
            self.replace_at = 0;
            self.due.notify_one();
        }
        if self.drain_at > 0 && served >= self.drain_at {
            self.draining = true;
        }
    }
}

type LeaseTx = oneshot::Sender<Result<Lease>>;

struct Waiter {
    seq: u64,
    tx: LeaseTx,
}

struct AffinityRecord {
    slot: usize,
    generation: u64,
    last_used: Instant,
}

struct State {
    slots: Vec<Slot>,
    /// Slots that may have room, most recently freed last (reused first).
    free: Vec<usize>,
    queue: VecDeque<Waiter>,
    /// Waiters for one slot only (strict session affinity).
    strict: Vec<VecDeque<Waiter>>,
    seq: u64,
    affinity: HashMap<Arc<str>, AffinityRecord>,
    /// Recycled workers finishing their last calls.
    retiring: Vec<Arc<Worker>>,
    closed: bool,
    last_start_error: Option<StartError>,
}

impl State {
    fn queued_entries(&self) -> usize {
        self.queue.len() + self.strict.iter().map(VecDeque::len).sum::<usize>()
    }

    fn purge_abandoned(&mut self) {
        self.queue.retain(|w| !w.tx.is_closed());
        for q in &mut self.strict {
            q.retain(|w| !w.tx.is_closed());
        }
    }

    fn make_free(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if !slot.in_free && slot.has_room() {
            slot.in_free = true;
            self.free.push(i);
        }
    }

    fn pop_free(&mut self) -> Option<usize> {
        while let Some(i) = self.free.pop() {
            self.slots[i].in_free = false;
            if self.slots[i].has_room() {
                return Some(i);
            }
        }
        None
    }

    /// The oldest live waiter that slot `i` may serve.
    fn pop_waiter(&mut self, i: usize) -> Option<Waiter> {
        loop {
            let strict_seq = self.strict[i].front().map(|w| w.seq);
            let any_seq = self.queue.front().map(|w| w.seq);
            let w = match (strict_seq, any_seq) {
                (None, None) => return None,
                (Some(s), Some(a)) if a < s => self.queue.pop_front(),
                (Some(_), _) => self.strict[i].pop_front(),
                (None, Some(_)) => self.queue.pop_front(),
            }?;
            if !w.tx.is_closed() {
                return Some(w);
            }
        }
    }
}

/// The part of a pool every task shares.
pub(crate) struct Shared {
    pub(crate) config: PoolConfig,
    adapter: Box<dyn Adapter>,
    pub(crate) codec: WireCodec,
    launch: Launch,
    supported: Option<HashSet<String>>,
    state: Mutex<State>,
    next_id: AtomicU64,
    counters: Counters,
    pub(crate) host_functions: HashMap<String, HostFunction>,
    session_hook: Option<Arc<dyn SessionHook>>,
    pub(crate) spawner: Spawner,
    run_id: String,
    name: String,
    shutdown: watch::Sender<bool>,
    listeners: Vec<Listener>,
    trace_context: Option<TraceContext>,
    record: Option<crate::sweep::RunRecord>,
}

/// A claim on one unit of a worker's capacity. Dropped unused, it gives the
/// unit back (so a lease lost in a cancelled queue wait leaks nothing).
pub(crate) struct Lease {
    worker: Arc<Worker>,
    shared: Arc<Shared>,
    armed: bool,
}

impl Lease {
    fn disarm(mut self) -> Arc<Worker> {
        self.armed = false;
        self.worker.clone()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.armed {
            self.shared.release(&self.worker);
        }
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells every listener; free when there is none.
    pub(crate) fn emit(&self, kind: EventKind<'_>) {
        if self.listeners.is_empty() {
            return;
        }
        let event = Event {
            pool: &self.name,
            kind,
        };
        for listener in &self.listeners {
            listener(&event);
        }
    }

    /// A worker's process was reaped: no watchdog or run record needs it.
    pub(crate) fn process_gone(&self, pid: u32) {
        self.spawner.forget(pid);
        if let Some(r) = &self.record {
            r.remove(pid);
        }
    }

    /// A CLIENT span (the worker's side is its SERVER span), with
    /// namespaced attributes; numbers are recorded as `i64`, which
    /// OpenTelemetry keeps as numbers (a `u64` would arrive as a string).
    fn call_span(&self, command: &str, session: Option<&str>) -> tracing::Span {
        tracing::info_span!(
            "snakepit.call",
            otel.kind = "client",
            snakepit.pool = self.name.as_str(),
            snakepit.command = command,
            snakepit.session = session,
            snakepit.worker = tracing::field::Empty,
            process.pid = tracing::field::Empty,
            snakepit.queue_wait_us = tracing::field::Empty,
            snakepit.outcome = tracing::field::Empty,
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    }

    /// Gives back one unit of `worker`'s capacity: to the oldest waiter it
    /// may serve, or to the free list.
    pub(crate) fn release(self: &Arc<Self>, worker: &Worker) {
        let mut st = self.state();
        let slot = &mut st.slots[worker.slot];
        if slot.generation != worker.generation || slot.worker.is_none() {
            return;
        }
        slot.in_flight = slot.in_flight.saturating_sub(1);
        if slot.replace_at > 0 || slot.drain_at > 0 {
            slot.count_served(worker.served.load(Ordering::Relaxed));
        }
        self.hand_off(&mut st, worker.slot);
    }

    fn hand_off(self: &Arc<Self>, st: &mut State, i: usize) {
        while st.slots[i].has_room() {
            let Some(waiter) = st.pop_waiter(i) else {
                st.make_free(i);
                return;
            };
            let slot = &mut st.slots[i];
            slot.in_flight += 1;
            let lease = Lease {
                worker: slot.worker.clone().expect("has_room checked"),
                shared: self.clone(),
                armed: true,
            };
            if let Err(Ok(lease)) = waiter.tx.send(Ok(lease)) {
                // The waiter left between the check and the send.
                lease.disarm();
                st.slots[i].in_flight -= 1;
            }
        }
    }

    fn take(self: &Arc<Self>, st: &mut State, i: usize) -> Lease {
        let slot = &mut st.slots[i];
        slot.in_flight += 1;
        let worker = slot.worker.clone().expect("taken slots have a worker");
        st.make_free(i);
        Lease {
            worker,
            shared: self.clone(),
            armed: true,
        }
    }

    async fn acquire(
        self: &Arc<Self>,
        session: Option<&Arc<str>>,
        affinity: Affinity,
        deadline: Instant,
        timeout: Duration,
        command: &str,
    ) -> Result<Lease> {
        let rx = {
            let mut st = self.state();
            if st.closed {
                return Err(Error::ShutDown);
            }
            let preferred = session.and_then(|s| {
                let rec = st.affinity.get_mut(s)?;
                rec.last_used = Instant::now();
                let (slot, generation) = (rec.slot, rec.generation);
                let s = &st.slots[slot];
                // A draining worker is about to go: the session moves on.
                (s.generation == generation && s.worker.is_some() && !s.draining).then_some(slot)
            });
            let mut strict_slot = None;
            if let Some(p) = preferred {
                if st.slots[p].has_room() {
                    return Ok(self.take(&mut st, p));
                }
                match affinity {
                    Affinity::Prefer => {}
                    Affinity::Strict => strict_slot = Some(p),
                    Affinity::FailFast => {
                        let worker_id = st.slots[p]
                            .worker
                            .as_ref()
                            .map_or_else(String::new, |w| w.id.clone());
                        return Err(Error::WorkerBusy {
                            session_id: session.map(|s| s.to_string()).unwrap_or_default(),
                            worker_id,
                        });
                    }
                }
            }
            if strict_slot.is_none() {
                if let Some(i) = st.pop_free() {
                    let lease = self.take(&mut st, i);
                    if let Some(s) = session {
                        self.remember(&mut st, s, i);
                    }
                    return Ok(lease);
                }
                let none_ready = st.slots.iter().all(|s| s.worker.is_none());
                if none_ready && st.slots.iter().all(|s| s.breaker_open) {
                    if let Some(e) = &st.last_start_error {
                        return Err(Error::StartFailed(Box::new(e.clone())));
                    }
                }
            }
            if st.queued_entries() >= self.config.max_queue_size {
                st.purge_abandoned();
                let queued = st.queued_entries();
                if queued >= self.config.max_queue_size {
                    self.counters.pool_saturated.fetch_add(1, Ordering::Relaxed);
                    return Err(Error::PoolSaturated { queued });
                }
            }
            let (tx, rx) = oneshot::channel();
            st.seq += 1;
            let waiter = Waiter { seq: st.seq, tx };
            match strict_slot {
                Some(p) => st.strict[p].push_back(waiter),
                None => st.queue.push_back(waiter),
            }
            rx
        };
        let queue_deadline = deadline.min(Instant::now() + self.config.queue_timeout);
        match tokio::time::timeout_at(queue_deadline.into(), rx).await {
            Ok(Ok(Ok(lease))) => {
                if let Some(s) = session {
                    let mut st = self.state();
                    self.remember(&mut st, s, lease.worker.slot);
                }
                Ok(lease)
            }
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(Error::ShutDown),
            Err(_) if queue_deadline >= deadline => {
                self.counters.call_timeouts.fetch_add(1, Ordering::Relaxed);
                Err(Error::CallTimeout {
                    command: command.to_owned(),
                    timeout,
                })
            }
            Err(_) => {
                self.counters.queue_timeouts.fetch_add(1, Ordering::Relaxed);
                Err(Error::QueueTimeout(self.config.queue_timeout))
            }
        }
    }

    fn remember(&self, st: &mut State, session: &Arc<str>, slot: usize) {
        let generation = st.slots[slot].generation;
        let now = Instant::now();
        if let Some(rec) = st.affinity.get_mut(session) {
            *rec = AffinityRecord {
                slot,
                generation,
                last_used: now,
            };
        } else if st.affinity.len() < self.config.max_sessions {
            st.affinity.insert(
                session.clone(),
                AffinityRecord {
                    slot,
                    generation,
                    last_used: now,
                },
            );
        }
    }

    pub(crate) fn forget_session(&self, session_id: &str) {
        self.state().affinity.remove(session_id);
    }

    fn worker_ready(self: &Arc<Self>, worker: &Arc<Worker>) {
        let cap = worker
            .capabilities()
            .max_concurrency
            .clamp(1, self.config.max_concurrency_per_worker);
        let mut st = self.state();
        let slot = &mut st.slots[worker.slot];
        if slot.generation != worker.generation {
            return;
        }
        slot.reset(worker, cap);
        let was_open = std::mem::replace(&mut slot.breaker_open, false);
        self.hand_off(&mut st, worker.slot);
        drop(st);
        if was_open {
            tracing::info!(
                slot = worker.slot,
                "breaker closed: the worker started again"
            );
            self.emit(EventKind::BreakerClosed {
                worker: worker.slot,
            });
        }
    }

    pub(crate) fn worker_gone(&self, worker: &Worker) {
        let mut st = self.state();
        let slot = &mut st.slots[worker.slot];
        if slot.generation == worker.generation {
            slot.worker = None;
            slot.in_flight = 0;
        }
    }

    fn next_generation(&self, i: usize) -> u64 {
        let mut st = self.state();
        let slot = &mut st.slots[i];
        slot.last_generation += 1;
        slot.generation = slot.last_generation;
        slot.worker = None;
        slot.generation
    }

    /// A generation for a replacement that starts while the slot's worker
    /// still serves.
    fn spare_generation(&self, i: usize) -> u64 {
        let mut st = self.state();
        st.slots[i].last_generation += 1;
        st.slots[i].last_generation
    }

    /// Puts a recycled worker's replacement in its slot; the old worker's
    /// calls finish on it, outside the slot's accounting.
    fn install(self: &Arc<Self>, worker: &Arc<Worker>) -> Option<Arc<Worker>> {
        let cap = worker
            .capabilities()
            .max_concurrency
            .clamp(1, self.config.max_concurrency_per_worker);
        let mut st = self.state();
        let slot = &mut st.slots[worker.slot];
        let old = slot.worker.clone();
        slot.generation = worker.generation;
        slot.reset(worker, cap);
        if let Some(old) = &old {
            st.retiring.push(old.clone());
        }
        self.hand_off(&mut st, worker.slot);
        old
    }

    /// Sets when the slot's `worker` is due for recycling by calls: its
    /// supervisor is woken (through the returned `Notify`) once it has
    /// answered `replace_at` calls, and it takes no new call once it has
    /// answered `drain_at` (0: it keeps serving until replaced).
    fn watch_calls(
        &self,
        worker: &Worker,
        replace_at: u64,
        drain_at: u64,
    ) -> Arc<tokio::sync::Notify> {
        let mut st = self.state();
        let slot = &mut st.slots[worker.slot];
        if slot.generation == worker.generation && slot.worker.is_some() {
            slot.replace_at = replace_at;
            slot.drain_at = drain_at;
            slot.count_served(worker.served.load(Ordering::Relaxed));
        }
        slot.due.clone()
    }

    /// The replacement of a draining `worker` could not start: it takes
    /// calls again until one can.
    fn undrain(self: &Arc<Self>, worker: &Worker) {
        let mut st = self.state();
        let slot = &mut st.slots[worker.slot];
        if slot.generation == worker.generation && slot.worker.is_some() {
            slot.replace_at = 0;
            slot.drain_at = 0;
            slot.draining = false;
            self.hand_off(&mut st, worker.slot);
        }
    }

    /// Withholds every idle worker whose ping is due from callers (its ping
    /// holds one unit of its capacity) and returns them.
    fn start_health_checks(&self) -> Vec<Arc<Worker>> {
        let mut st = self.state();
        let mut due = Vec::new();
        for slot in &mut st.slots {
            if slot.in_flight > 0 || slot.draining || slot.checking {
                continue;
            }
            if let Some(w) = &slot.worker {
                slot.checking = true;
                slot.in_flight += 1;
                due.push(w.clone());
            }
        }
        due
    }

    /// `worker` answered its ping: it takes calls again.
    fn passed_health_check(self: &Arc<Self>, worker: &Worker) {
        let mut st = self.state();
        let slot = &mut st.slots[worker.slot];
        if slot.generation == worker.generation && slot.worker.is_some() && slot.checking {
            slot.checking = false;
            slot.in_flight = slot.in_flight.saturating_sub(1);
            self.hand_off(&mut st, worker.slot);
        }
    }

    /// Every worker process the pool has: ready ones and retiring ones.
    fn every_worker(&self) -> Vec<Arc<Worker>> {
        let st = self.state();
        st.slots
            .iter()
            .filter_map(|s| s.worker.clone())
            .chain(st.retiring.iter().cloned())
            .collect()
    }

    /// Fails every queued call with `err()` (shutdown, or no worker left and
    /// every breaker open).
    fn fail_waiters(&self, st: &mut State, err: impl Fn() -> Error) {
        for w in st
            .queue
            .drain(..)
            .chain(st.strict.iter_mut().flat_map(|q| q.drain(..)))
        {
            let _ = w.tx.send(Err(err()));
        }
    }

    /// Stops admitting calls, fails the queued ones and stops the
    /// supervisors; the first step of every way a pool ends.
    fn close(&self) {
        {
            let mut st = self.state();
            st.closed = true;
            self.fail_waiters(&mut st, || Error::ShutDown);
        }
        self.shutdown.send_replace(true);
    }

    fn stats(&self) -> Stats {
        let st = self.state();
        let c = &self.counters;
        let mut s = Stats::default();
        for slot in st.slots.iter().filter(|s| s.worker.is_some()) {
            s.workers += 1;
            s.in_flight += slot.in_flight as usize;
            if slot.in_flight == 0 {
                s.available += 1;
            } else {
                s.busy += 1;
            }
        }
        s.queued = st
            .queue
            .iter()
            .chain(st.strict.iter().flatten())
            .filter(|w| !w.tx.is_closed())
            .count();
        s.requests = c.requests.load(Ordering::Relaxed);
        s.completed = c.completed.load(Ordering::Relaxed);
        s.errors = c.errors.load(Ordering::Relaxed);
        s.cancelled = c.cancelled.load(Ordering::Relaxed);
        s.queue_timeouts = c.queue_timeouts.load(Ordering::Relaxed);
        s.pool_saturated = c.pool_saturated.load(Ordering::Relaxed);
        s.call_timeouts = c.call_timeouts.load(Ordering::Relaxed);
        s.crashes = c.crashes.load(Ordering::Relaxed);
        s.restarts = c.restarts.load(Ordering::Relaxed);
        s.start_failures = c.start_failures.load(Ordering::Relaxed);
        s.recycled = c.recycled.load(Ordering::Relaxed);
        s.sessions = st.affinity.len();
        s
    }

    fn workers(&self) -> Vec<Arc<Worker>> {
        self.state()
            .slots
            .iter()
            .filter_map(|s| s.worker.clone())
            .collect()
    }
}

/// How many times one call may be routed to a worker that turns out to be
/// gone before it has reached any (each attempt takes a fresh lease).
const MAX_SENDS: usize = 100;

/// Starts one worker and runs its init handshake.
async fn start_worker(
    shared: &Arc<Shared>,
    slot: usize,
    generation: u64,
) -> std::result::Result<Arc<Worker>, StartError> {
    let worker_id = format!("{}_worker_{}_{}", shared.name, slot + 1, generation);
    let fail = |cause: String, stderr_tail: String| StartError {
        worker_id: worker_id.clone(),
        cause,
        stderr_tail,
    };
    let launch = shared
        .launch
        .clone()
        .env("SNAKEPIT_PROTOCOL", "1")
        .env("SNAKEPIT_CODEC", shared.codec.name())
        .env("SNAKEPIT_WORKER_ID", &worker_id)
        .env("SNAKEPIT_RUN_ID", &shared.run_id);
    let launch = if launch.run_id_arg {
        launch.arg("--snakepit-run-id").arg(&shared.run_id)
    } else {
        launch
    };
    let program = launch.program.display().to_string();
    let span = tracing::Span::current();
    let child = shared.spawner.spawn(launch).await.map_err(|e| {
        let cause = if e.kind() == std::io::ErrorKind::NotFound {
            format!("cannot run `{program}`: not found (is it installed and on PATH?)")
        } else {
            format!("cannot run `{program}`: {e}")
        };
        fail(cause, String::new())
    })?;
    let started = Instant::now();
    if let (Some(r), Some(pid)) = (&shared.record, child.id()) {
        r.add(pid);
    }
    let worker = Worker::start(shared, child, worker_id.clone(), slot, generation);
    span.record("process.pid", i64::from(worker.pid));
    let args = json!({"initialization": true, "worker_id": worker_id});
    let outcome = tokio::time::timeout(
        shared.config.worker_init_timeout,
        internal_call(shared, &worker, "ping", &args),
    )
    .await;
    let failure = match outcome {
        Ok(Ok(result)) if result.get("status").and_then(Value::as_str) == Some("ok") => {
            let _ = worker.caps.set(Default::default());
            let init = started.elapsed();
            tracing::info!(worker = %worker.id, pid = worker.pid, init_ms = init.as_millis() as u64, "worker ready");
            shared.emit(EventKind::WorkerReady {
                worker: slot,
                pid: worker.pid,
                init,
            });
            return Ok(worker);
        }
        Ok(Ok(result)) => format!("init handshake answered without status \"ok\": {result}"),
        Ok(Err(Error::WorkerCrashed(crash))) => {
            format!("exited during the init handshake ({})", crash.exit)
        }
        Ok(Err(e)) => format!("init handshake failed: {e}"),
        Err(_) => format!(
            "no answer to the init handshake within {:?}",
            shared.config.worker_init_timeout
        ),
    };
    worker.kill();
    worker.finished().await;
    Err(fail(failure, worker.stderr_tail()))
}

/// A call the pool makes itself (handshake, health ping), outside the queue.
async fn internal_call(
    shared: &Arc<Shared>,
    worker: &Arc<Worker>,
    command: &str,
    args: &Value,
) -> Result<Value> {
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let mut buf = BytesMut::new();
    encode_frame(
        &shared.codec,
        &Request::new(id, command, args),
        usize::MAX,
        &mut buf,
    )
    .map_err(Error::Codec)?;
    let (tx, rx) = oneshot::channel();
    if worker
        .register(
            id,
            Pending {
                reply: tx,
                chunks: None,
                session: None,
                holds_unit: false,
            },
        )
        .is_err()
    {
        return Err(Error::ShutDown);
    }
    worker.send_request(id, buf.freeze());
    let frame = rx.await.map_err(|_| Error::ShutDown)??;
    match decode_response::<_, Value>(&shared.codec, &frame) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(error)) => Err(Error::Remote {
            command: command.to_owned(),
            error,
        }),
        Err(source) => Err(Error::Protocol {
            worker_id: worker.id.clone(),
            source,
        }),
    }
}

/// Small, fast, good-enough randomness for jitter.
fn jitter(base: Duration, salt: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut x = nanos ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    // 50% .. 150% of base
    base.mul_f64(0.5 + (x % 1000) as f64 / 1000.0)
}

/// The span a worker's start and handshake run in (its pid is recorded
/// once spawned).
fn start_span(shared: &Shared, i: usize) -> tracing::Span {
    tracing::info_span!(
        "snakepit.worker.start",
        snakepit.pool = shared.name.as_str(),
        // i64: tracing-opentelemetry exports u64 fields as strings.
        snakepit.worker = i as i64,
        process.pid = tracing::field::Empty,
    )
}

/// Keeps slot `i` filled: starts its worker, waits for it to end, starts the
/// next, backing off and opening the breaker when starts keep failing.
async fn supervise(
    shared: Arc<Shared>,
    i: usize,
    mut first: Option<oneshot::Sender<std::result::Result<(), StartError>>>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut failures: u32 = 0;
    let mut started_once = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let generation = shared.next_generation(i);
        let span = start_span(&shared, i);
        let start = tokio::select! {
            r = start_worker(&shared, i, generation).instrument(span) => r,
            _ = shutdown.changed() => return,
        };
        let delay = match start {
            Ok(worker) => {
                shared.worker_ready(&worker);
                if let Some(tx) = first.take() {
                    let _ = tx.send(Ok(()));
                }
                if started_once {
                    shared.counters.restarts.fetch_add(1, Ordering::Relaxed);
                }
                started_once = true;
                let mut worker = worker;
                // Off once a replacement failed to start: the worker then
                // serves past its call limit until one is ready.
                let mut drain = true;
                let exit = loop {
                    tokio::select! {
                        exit = worker.finished() => break exit,
                        _ = shutdown.changed() => return,
                        reason = recycle_due(&shared, &worker, drain) => {
                            if let Some(new) = recycle(&shared, i, &worker, reason, &mut shutdown).await {
                                worker = new;
                                drain = true;
                            } else if *shutdown.borrow() {
                                return;
                            } else {
                                drain = false;
                            }
                        }
                    }
                };
                shared.worker_gone(&worker);
                let lived = worker.started.elapsed();
                tracing::warn!(worker = %worker.id, pid = worker.pid, %exit, lived_ms = lived.as_millis() as u64, "worker ended; replacing it");
                if !shared.listeners.is_empty() {
                    shared.emit(EventKind::WorkerExited {
                        worker: i,
                        pid: worker.pid,
                        reason: &exit.to_string(),
                    });
                }
                // A worker that dies right after starting counts as a failed
                // start, so that a crash loop backs off instead of fork-storming.
                if lived < Duration::from_secs(1) {
                    failures += 1;
                    jitter(backoff(&shared.config, failures), i as u64)
                } else {
                    failures = 0;
                    Duration::ZERO
                }
            }
            Err(e) => {
                tracing::warn!(slot = i, error = %e, "worker failed to start");
                shared.emit(EventKind::WorkerStartFailed {
                    worker: i,
                    cause: &e.cause,
                });
                shared
                    .counters
                    .start_failures
                    .fetch_add(1, Ordering::Relaxed);
                if let Some(tx) = first.take() {
                    let _ = tx.send(Err(e.clone()));
                    return; // start() fails and shuts the pool down
                }
                failures += 1;
                let mut st = shared.state();
                st.last_start_error = Some(e.clone());
                if failures >= shared.config.breaker_threshold {
                    st.slots[i].breaker_open = true;
                    let none_ready = st.slots.iter().all(|s| s.worker.is_none());
                    if none_ready && st.slots.iter().all(|s| s.breaker_open) {
                        shared.fail_waiters(&mut st, || Error::StartFailed(Box::new(e.clone())));
                    }
                    drop(st);
                    shared.emit(EventKind::BreakerOpened {
                        worker: i,
                        failures,
                    });
                    tracing::error!(
                        slot = i,
                        failures,
                        cooldown_ms = shared.config.breaker_cooldown.as_millis() as u64,
                        "breaker open: not restarting this worker for a while"
                    );
                    // Half-open after the cool-down: one more failure re-opens.
                    failures = shared.config.breaker_threshold - 1;
                    shared.config.breaker_cooldown
                } else {
                    drop(st);
                    jitter(backoff(&shared.config, failures), i as u64)
                }
            }
        };
        shared.emit(EventKind::WorkerRestarting {
            worker: i,
            attempt: failures,
            delay,
        });
        if !delay.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Resolves with the reason once `worker` is due for recycling; never when
/// no recycling rule is on. Recycling by calls follows the replies: the
/// reply that brings the worker to 90% of its limit wakes this at once (to
/// start the replacement early), and with `drain` the one that brings it to
/// its limit stops it taking calls. The other rules are checked every 100 ms.
async fn recycle_due(shared: &Shared, worker: &Worker, drain: bool) -> &'static str {
    let c = &shared.config;
    if !c.recycles() {
        return std::future::pending().await;
    }
    // Each worker's limits are drawn within 10% of the configured ones, so
    // workers started together do not all go together.
    let spread = |salt: u64| {
        let j = jitter(Duration::from_micros(1000), salt ^ u64::from(worker.pid)).as_micros();
        0.9 + (j.clamp(500, 1500) - 500) as f64 / 5000.0
    };
    let calls = match c.recycle_after_calls {
        0 => 0,
        n => ((n as f64 * spread(1)).round() as u64).max(1),
    };
    let replace_at = calls - calls / 10;
    let due = shared.watch_calls(worker, replace_at, if drain { calls } else { 0 });
    let ttl = c.worker_ttl.mul_f64(spread(2));
    let check = Duration::from_millis(100);
    loop {
        if calls > 0 && worker.served.load(Ordering::Relaxed) >= replace_at {
            return "calls";
        }
        tokio::select! {
            _ = tokio::time::sleep(check) => {}
            _ = due.notified() => continue,
        }
        if !ttl.is_zero() && worker.started.elapsed() >= ttl {
            return "ttl";
        }
        if !c.worker_idle_timeout.is_zero() && worker.idle_for() >= c.worker_idle_timeout {
            return "idle";
        }
        if c.recycle_above_rss_mb > 0
            && crate::spawn::rss_bytes(worker.pid)
                .is_some_and(|b| b > c.recycle_above_rss_mb * 1024 * 1024)
        {
            return "memory";
        }
    }
}

/// Replaces `old` with a fresh worker, started before `old` stops taking
/// calls so that capacity does not dip; `old` finishes its calls, then goes.
/// `None` when the replacement could not start (`old` keeps serving).
async fn recycle(
    shared: &Arc<Shared>,
    i: usize,
    old: &Arc<Worker>,
    reason: &'static str,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<Arc<Worker>> {
    tracing::info!(worker = %old.id, pid = old.pid, reason, "recycling the worker; starting its replacement");
    let generation = shared.spare_generation(i);
    let span = start_span(shared, i);
    let started = tokio::select! {
        r = start_worker(shared, i, generation).instrument(span) => r,
        _ = shutdown.changed() => return None,
    };
    match started {
        Ok(new) => {
            shared.install(&new);
            shared.counters.recycled.fetch_add(1, Ordering::Relaxed);
            shared.emit(EventKind::WorkerRecycled {
                worker: i,
                pid: old.pid,
                reason,
            });
            tokio::spawn(retire(shared.clone(), old.clone()));
            Some(new)
        }
        Err(e) => {
            tracing::warn!(slot = i, error = %e, "the recycled worker's replacement failed to start; keeping the old one");
            shared.undrain(old);
            shared
                .counters
                .start_failures
                .fetch_add(1, Ordering::Relaxed);
            shared.emit(EventKind::WorkerStartFailed {
                worker: i,
                cause: &e.cause,
            });
            tokio::select! {
                _ = tokio::time::sleep(jitter(shared.config.restart_backoff_max, i as u64)) => {}
                _ = shutdown.changed() => {}
            }
            None
        }
    }
}

/// Lets a recycled worker finish its calls (each bounded by its deadline and
/// the cancel grace period), then closes its stdin, then signals its group.
async fn retire(shared: Arc<Shared>, old: Arc<Worker>) {
    // A call may still be on its way to it (a lease taken just before the
    // replacement came in): sealing fails such a late registration, and the
    // call goes to another worker.
    while !old.seal_if_idle() && !old.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    old.close_stdin();
    let grace = shared.config.shutdown_grace_period;
    for signal in [None, Some(libc::SIGTERM), Some(libc::SIGKILL)] {
        if let Some(signal) = signal {
            old.signal(signal);
        }
        if tokio::time::timeout(grace, old.finished()).await.is_ok() {
            break;
        }
    }
    shared.state().retiring.retain(|w| !Arc::ptr_eq(w, &old));
}

fn backoff(config: &PoolConfig, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    config
        .restart_backoff
        .saturating_mul(1 << exp)
        .min(config.restart_backoff_max)
}

/// Pings idle workers at the health-check interval, replaces those that do
/// not answer, and forgets stale session affinity.
async fn maintain(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let health = shared.config.health_check_interval;
    let ttl = shared.config.session_ttl;
    // Often enough that affinity records go within half a TTL of expiring.
    let mut tick = (ttl / 2).clamp(Duration::from_millis(10), Duration::from_secs(30));
    if !health.is_zero() {
        tick = tick.min(health);
    }
    let mut last_health = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.changed() => return,
        }
        shared
            .state()
            .affinity
            .retain(|_, rec| rec.last_used.elapsed() < ttl);
        if health.is_zero() || last_health.elapsed() < health {
            continue;
        }
        last_health = Instant::now();
        // Each on its own: a hung worker's ping holds up no other worker.
        for worker in shared.start_health_checks() {
            tokio::spawn(check_health(shared.clone(), worker));
        }
    }
}

/// Pings one worker, withheld from callers meanwhile. One that does not
/// answer leaves the routing tables before it is killed, so no waiting call
/// is handed a worker that is dying.
async fn check_health(shared: Arc<Shared>, worker: Arc<Worker>) {
    let args = json!({"health_check": true});
    let ping = internal_call(&shared, &worker, "ping", &args);
    let answered = tokio::time::timeout(shared.config.health_check_timeout, ping).await;
    if matches!(answered, Ok(Ok(_))) {
        shared.passed_health_check(&worker);
        return;
    }
    shared.worker_gone(&worker);
    if !*shared.shutdown.borrow() {
        tracing::warn!(worker = %worker.id, pid = worker.pid, "health check failed; replacing the worker");
        shared.emit(EventKind::HealthCheckFailed {
            worker: worker.slot,
            pid: worker.pid,
        });
    }
    worker.kill();
}

/// Configures and starts a [`Pool`].
pub struct PoolBuilder {
    adapter: Box<dyn Adapter>,
    config: PoolConfig,
    codec: Option<WireCodec>,
    name: String,
    host_functions: HashMap<String, HostFunction>,
    listeners: Vec<Listener>,
    trace_context: Option<TraceContext>,
    session_hook: Option<Arc<dyn SessionHook>>,
    worker_env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
}

impl PoolBuilder {
    /// Sets an environment variable in every worker, unless the adapter's
    /// own launch sets it (the adapter wins). Libraries use it for defaults,
    /// such as `snakepit-telemetry` giving workers their own
    /// `OTEL_SERVICE_NAME`.
    pub fn worker_env(
        mut self,
        key: impl Into<std::ffi::OsString>,
        value: impl Into<std::ffi::OsString>,
    ) -> Self {
        self.worker_env.push((key.into(), value.into()));
        self
    }

    /// Sets the number of workers.
    pub fn size(mut self, n: usize) -> Self {
        self.config.pool_size = n;
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: PoolConfig) -> Self {
        self.config = config;
        self
    }

    /// Changes the configuration in place.
    pub fn configure(mut self, f: impl FnOnce(&mut PoolConfig)) -> Self {
        f(&mut self.config);
        self
    }

    /// Overrides the adapter's codec.
    pub fn codec(mut self, codec: WireCodec) -> Self {
        self.codec = Some(codec);
        self
    }

    /// Names the pool (it prefixes worker ids and labels telemetry).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Offers a function to the workers, which call it with a `host_call`
    /// frame (`ctx.call_host(name, args)` in the bundled bridges).
    pub fn host_function<F, Fut>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(HostCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Value, RemoteError>> + Send + 'static,
    {
        self.host_functions
            .insert(name.into(), Arc::new(move |call| Box::pin(f(call))));
        self
    }

    /// Calls `listener` with every [`Event`](crate::events::Event) of the
    /// pool, synchronously: keep it quick. Any number may be registered.
    pub fn on_event(mut self, listener: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Self {
        self.listeners.push(Arc::new(listener));
        self
    }

    /// Sets where a call's W3C `traceparent` and `tracestate` come from
    /// when its [`CallOptions`] carry no `traceparent`: `f` runs inside the
    /// call's `snakepit.call` span, so a tracing-to-OpenTelemetry bridge
    /// (`snakepit-telemetry`) can hand the worker that span's context.
    pub fn trace_context(
        mut self,
        f: impl Fn() -> Option<TraceHeaders> + Send + Sync + 'static,
    ) -> Self {
        self.trace_context = Some(Arc::new(f));
        self
    }

    /// Has `hook` create or touch each session before its calls are routed,
    /// and drop a session's affinity when the hook reports it ended
    /// (`snakepit_session::attach` sets one up for a session store).
    pub fn session_hook(mut self, hook: impl SessionHook) -> Self {
        self.session_hook = Some(Arc::new(hook));
        self
    }

    /// Starts every worker concurrently and returns once all of them have
    /// passed their init handshake, or with the first start-up error.
    ///
    /// Must be called within a Tokio runtime.
    pub async fn start(self) -> Result<Pool> {
        self.config.validate()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("Pool::start needs a Tokio runtime".into()))?;
        let spawner = Spawner::new(runtime)
            .map_err(|e| Error::Config(format!("cannot start the spawner thread: {e}")))?;
        let size = self.config.pool_size;
        let codec = self.codec.unwrap_or_else(|| self.adapter.codec());
        let run_id = crate::sweep::new_run_id();
        let state_dir = self
            .config
            .state_dir
            .clone()
            .unwrap_or_else(crate::sweep::default_state_dir);
        let mut swept = 0;
        if self.config.sweep_on_start {
            let options = crate::sweep::SweepOptions::new()
                .instance(&self.name)
                .state_dir(&state_dir);
            match crate::sweep::sweep(&options) {
                Ok(report) => swept = report.killed(),
                Err(e) => {
                    tracing::warn!(error = %e, dir = %state_dir.display(), "cannot sweep leftovers of earlier runs")
                }
            }
        }
        let record = crate::sweep::RunRecord::create(&state_dir, &self.name, &run_id)
            .map_err(|e| tracing::warn!(error = %e, dir = %state_dir.display(), "cannot write the run record; a crashed run's leftovers will not be swept"))
            .ok();
        let shared = Arc::new(Shared {
            record,
            launch: {
                let mut launch = self.adapter.launch();
                // Applied first, so the adapter's own settings win.
                let mut env = self.worker_env;
                env.append(&mut launch.env);
                launch.env = env;
                launch
            },
            supported: self
                .adapter
                .supported_commands()
                .map(|v| v.into_iter().collect()),
            adapter: self.adapter,
            codec,
            state: Mutex::new(State {
                slots: (0..size).map(|_| Slot::new()).collect(),
                free: Vec::with_capacity(size),
                queue: VecDeque::new(),
                strict: (0..size).map(|_| VecDeque::new()).collect(),
                seq: 0,
                affinity: HashMap::new(),
                retiring: Vec::new(),
                closed: false,
                last_start_error: None,
            }),
            next_id: AtomicU64::new(1),
            counters: Counters::default(),
            host_functions: self.host_functions,
            session_hook: self.session_hook,
            spawner,
            run_id,
            name: self.name,
            shutdown: watch::channel(false).0,
            listeners: self.listeners,
            trace_context: self.trace_context,
            config: self.config,
        });
        let pool = Pool {
            inner: Arc::new(PoolInner {
                shared: shared.clone(),
            }),
        };
        if swept > 0 {
            shared.emit(EventKind::Swept { killed: swept });
        }
        let mut firsts = Vec::with_capacity(size);
        for i in 0..size {
            let (tx, rx) = oneshot::channel();
            firsts.push(rx);
            tokio::spawn(supervise(shared.clone(), i, Some(tx)));
        }
        tokio::spawn(maintain(shared.clone()));
        if let Some(hook) = &shared.session_hook {
            hook.attached(SessionEnds::new(&shared));
        }
        let all = async {
            for rx in firsts {
                match rx.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(Error::StartFailed(Box::new(e))),
                    Err(_) => return Err(Error::ShutDown),
                }
            }
            Ok(())
        };
        let outcome = match tokio::time::timeout(shared.config.startup_timeout, all).await {
            Ok(r) => r,
            Err(_) => Err(Error::StartFailed(Box::new(StartError {
                worker_id: format!("{}_worker_*", shared.name),
                cause: format!(
                    "not every worker was ready within the startup timeout of {:?}",
                    shared.config.startup_timeout
                ),
                stderr_tail: String::new(),
            }))),
        };
        if let Err(e) = outcome {
            let _ = pool.shutdown().await;
            return Err(e);
        }
        Ok(pool)
    }
}

struct PoolInner {
    shared: Arc<Shared>,
}

impl Drop for PoolInner {
    /// The last handle is gone without `shutdown()`: stop at once, killing
    /// every worker's process group.
    fn drop(&mut self) {
        self.shared.close();
        for w in self.shared.every_worker() {
            w.kill();
        }
        if let Some(r) = &self.shared.record {
            r.finish();
        }
    }
}

/// A handle that does not keep its pool alive ([`Pool::downgrade`]): for
/// observers (metrics, dashboards) that must not delay the pool's end.
#[derive(Clone, Debug)]
pub struct WeakPool {
    inner: std::sync::Weak<PoolInner>,
}

impl WeakPool {
    /// The pool, while some [`Pool`] handle still keeps it.
    pub fn upgrade(&self) -> Option<Pool> {
        self.inner.upgrade().map(|inner| Pool { inner })
    }
}

/// A pool of worker processes: a cheap, cloneable handle.
///
/// ```no_run
/// # async fn demo(adapter: impl snakepit_core::Adapter) -> Result<(), snakepit_core::Error> {
/// use serde_json::json;
/// use snakepit_core::Pool;
///
/// let pool = Pool::builder(adapter).size(4).start().await?;
/// let r = pool.execute("compute", json!({"operation": "add", "a": 5, "b": 3})).await?;
/// assert_eq!(r["result"], 8);
/// let r = pool.execute_in_session("user_123", "echo", json!({"message": "hello"})).await?;
/// println!("{r} {:?}", pool.stats());
/// pool.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.inner.shared.name)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Where a call went and when: for its span and its `CallEnded` event.
struct CallMeta {
    submitted: Instant,
    queue_wait: Option<Duration>,
    worker: Option<(usize, u32)>,
    span: tracing::Span,
}

impl CallMeta {
    fn new(span: tracing::Span) -> Self {
        CallMeta {
            submitted: Instant::now(),
            queue_wait: None,
            worker: None,
            span,
        }
    }

    /// The call has reached `worker`.
    fn took(&mut self, worker: &Worker) {
        let wait = self.submitted.elapsed();
        self.queue_wait = Some(wait);
        self.worker = Some((worker.slot, worker.pid));
        if !self.span.is_disabled() {
            self.span.record("snakepit.worker", worker.slot as i64);
            self.span.record("process.pid", i64::from(worker.pid));
            self.span
                .record("snakepit.queue_wait_us", wait.as_micros() as i64);
        }
    }
}

/// Counts a call's outcome exactly once: success, failure, or a future
/// dropped before the end (a cancelled call or stream), and reports it to
/// the call's span and the pool's listeners. Holds the pool by reference for
/// one-shot calls and by `Arc` inside a [`CallStream`].
struct Outcome<'c, S: Deref<Target = Shared>> {
    shared: S,
    done: bool,
    command: Cow<'c, str>,
    session: Option<Cow<'c, str>>,
    meta: CallMeta,
}

impl<'c, S: Deref<Target = Shared>> Outcome<'c, S> {
    fn new(shared: S, command: Cow<'c, str>, session: Option<Cow<'c, str>>) -> Self {
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        let span = shared.call_span(&command, session.as_deref());
        Outcome {
            shared,
            done: false,
            command,
            session,
            meta: CallMeta::new(span),
        }
    }

    fn record<T>(&mut self, r: Result<T>) -> Result<T> {
        if std::mem::replace(&mut self.done, true) {
            return r;
        }
        let c = &self.shared.counters;
        let kind = match &r {
            Ok(_) => {
                c.completed.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
            Err(e) => {
                if e.is_crash() {
                    c.crashes.fetch_add(1, Ordering::Relaxed);
                }
                c.errors.fetch_add(1, Ordering::Relaxed);
                e.kind()
            }
        };
        self.report(kind);
        r
    }

    fn report(&self, outcome: &'static str) {
        if !self.meta.span.is_disabled() {
            self.meta.span.record("snakepit.outcome", outcome);
            if outcome != "ok" {
                self.meta.span.record("error.type", outcome);
                self.meta.span.record("otel.status_code", "ERROR");
            }
        }
        if self.shared.listeners.is_empty() {
            return;
        }
        let duration = self.meta.submitted.elapsed();
        self.shared.emit(EventKind::CallEnded {
            command: &self.command,
            session: self.session.as_deref(),
            worker: self.meta.worker.map(|w| w.0),
            pid: self.meta.worker.map(|w| w.1),
            queue_wait: self.meta.queue_wait.unwrap_or(duration),
            duration,
            outcome,
        });
    }
}

impl<S: Deref<Target = Shared>> Drop for Outcome<'_, S> {
    fn drop(&mut self) {
        if !self.done {
            self.shared
                .counters
                .cancelled
                .fetch_add(1, Ordering::Relaxed);
            self.report("cancelled");
        }
    }
}

/// A call sent to a worker. Dropped before its reply, it cancels the call.
struct InFlight {
    worker: Arc<Worker>,
    id: u64,
    reply: oneshot::Receiver<Reply>,
    done: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.done {
            self.worker.abandon(self.id);
        }
    }
}

impl Pool {
    /// A builder for a pool of workers that `adapter` describes.
    pub fn builder(adapter: impl Adapter) -> PoolBuilder {
        PoolBuilder {
            adapter: Box::new(adapter),
            config: PoolConfig::default(),
            codec: None,
            name: "snakepit".into(),
            host_functions: HashMap::new(),
            listeners: Vec::new(),
            trace_context: None,
            session_hook: None,
            worker_env: Vec::new(),
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Runs `command` with `args` on a free worker.
    pub async fn execute(&self, command: &str, args: Value) -> Result<Value> {
        self.execute_with(command, args, CallOptions::default())
            .await
    }

    /// Runs `command` in a session: on the worker that served the session
    /// last when it is free, otherwise on another.
    pub async fn execute_in_session(
        &self,
        session_id: &str,
        command: &str,
        args: Value,
    ) -> Result<Value> {
        self.execute_with(command, args, CallOptions::default().session(session_id))
            .await
    }

    /// Runs `command` with options: deadline, session, affinity, trace context.
    pub async fn execute_with(
        &self,
        command: &str,
        args: Value,
        options: CallOptions,
    ) -> Result<Value> {
        let shared = self.shared();
        self.counted(command, &options, async |meta| {
            self.check(command, &args)?;
            let args = shared.adapter.prepare_args(command, args);
            let (frame, worker) = self.round_trip(command, &args, &options, meta).await?;
            let value: Value = decode_result(shared, &worker, command, &frame)?;
            shared
                .adapter
                .process_response(command, value)
                .map_err(|message| Error::Validation {
                    command: command.to_owned(),
                    message,
                })
        })
        .await
    }

    /// Runs a one-shot call's `body` inside its span, counting its outcome
    /// once (a dropped future counts as cancelled).
    async fn counted<T>(
        &self,
        command: &str,
        options: &CallOptions,
        body: impl AsyncFnOnce(&mut CallMeta) -> Result<T>,
    ) -> Result<T> {
        let session = options.session_id.as_deref().map(Cow::Borrowed);
        let mut outcome = Outcome::new(&**self.shared(), Cow::Borrowed(command), session);
        let span = outcome.meta.span.clone();
        let r = body(&mut outcome.meta).instrument(span).await;
        outcome.record(r)
    }

    /// Runs `command` with typed arguments and result: `args` is encoded
    /// straight into the frame and the result decoded straight out of it.
    /// The adapter's `prepare_args`/`process_response` are not applied.
    pub async fn call<A, R>(&self, command: &str, args: &A, options: CallOptions) -> Result<R>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        self.counted(command, &options, async |meta| {
            self.check(command, &Value::Null)?;
            let (frame, worker) = self.round_trip(command, args, &options, meta).await?;
            decode_result(self.shared(), &worker, command, &frame)
        })
        .await
    }

    /// Runs `command` and streams the chunks the worker sends before its
    /// final reply. Dropping the stream cancels the call.
    pub async fn execute_stream(
        &self,
        command: &str,
        args: Value,
        options: CallOptions,
    ) -> Result<CallStream> {
        let shared = self.shared();
        let session = options.session_id.clone().map(Cow::Owned);
        let mut outcome = Outcome::new(shared.clone(), Cow::Owned(command.to_owned()), session);
        let (deadline, timeout) = self.deadline(command, &options, &outcome.meta);
        let (tx, rx) = mpsc::channel(256);
        let meta = &mut outcome.meta;
        let span = meta.span.clone();
        let submitted = async {
            self.check(command, &args)?;
            let args = shared.adapter.prepare_args(command, args);
            self.submit(command, &args, &options, Some(tx), meta).await
        }
        .instrument(span)
        .await;
        let flight = match submitted {
            Ok(f) => f,
            Err(e) => return outcome.record(Err(e)),
        };
        Ok(CallStream {
            outcome,
            chunks: rx,
            flight: Some(flight),
            sleep: Box::pin(tokio::time::sleep_until(deadline.into())),
            timeout,
        })
    }

    /// The call's deadline, counted from submission, and its timeout.
    fn deadline(
        &self,
        command: &str,
        options: &CallOptions,
        meta: &CallMeta,
    ) -> (Instant, Duration) {
        let timeout = options
            .timeout
            .unwrap_or_else(|| self.shared().adapter.command_timeout(command));
        (meta.submitted + timeout, timeout)
    }

    fn check(&self, command: &str, args: &Value) -> Result<()> {
        let shared = self.shared();
        if let Some(supported) = &shared.supported {
            if !supported.contains(command) {
                return Err(Error::UnsupportedCommand(command.to_owned()));
            }
        }
        shared
            .adapter
            .validate_command(command, args)
            .map_err(|message| Error::Validation {
                command: command.to_owned(),
                message,
            })
    }

    async fn round_trip<A: Serialize + ?Sized>(
        &self,
        command: &str,
        args: &A,
        options: &CallOptions,
        meta: &mut CallMeta,
    ) -> Result<(Bytes, Arc<Worker>)> {
        let shared = self.shared();
        let (deadline, timeout) = self.deadline(command, options, meta);
        // A call whose frame never reached its worker (the worker died
        // before it was written whole) goes to another one; a call that may
        // have run is never sent again.
        let mut undelivered = 0;
        let flight = loop {
            let mut flight = self.submit(command, args, options, None, meta).await?;
            match tokio::time::timeout_at(deadline.into(), &mut flight.reply).await {
                Ok(Ok(Err(Failure::NotSent(e)))) => {
                    flight.done = true;
                    undelivered += 1;
                    if undelivered >= MAX_SENDS {
                        return Err(e);
                    }
                }
                Ok(r) => break Ok((flight, r)),
                Err(elapsed) => break Err((flight, elapsed)),
            }
        };
        match flight {
            Ok((mut flight, Ok(Ok(frame)))) => {
                flight.done = true;
                Ok((frame, flight.worker.clone()))
            }
            Ok((mut flight, Ok(Err(failure)))) => {
                flight.done = true;
                Err(failure.into())
            }
            Ok((mut flight, Err(_))) => {
                flight.done = true;
                Err(Error::ShutDown)
            }
            Err(_) => {
                shared
                    .counters
                    .call_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                Err(Error::CallTimeout {
                    command: command.to_owned(),
                    timeout,
                })
            }
        }
    }

    async fn submit<A: Serialize + ?Sized>(
        &self,
        command: &str,
        args: &A,
        options: &CallOptions,
        chunks: Option<mpsc::Sender<Bytes>>,
        meta: &mut CallMeta,
    ) -> Result<InFlight> {
        let shared = self.shared();
        let (deadline, timeout) = self.deadline(command, options, meta);
        let session: Option<Arc<str>> = options.session_id.as_deref().map(Arc::from);
        if let (Some(hook), Some(id)) = (&shared.session_hook, options.session_id.as_deref()) {
            // The store's time counts against the call's deadline.
            match tokio::time::timeout_at(deadline.into(), hook.touch(id)).await {
                Ok(touched) => touched.map_err(|message| Error::Session {
                    session_id: id.to_owned(),
                    message,
                })?,
                Err(_) => {
                    shared
                        .counters
                        .call_timeouts
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(Error::CallTimeout {
                        command: command.to_owned(),
                        timeout,
                    });
                }
            }
        }
        let mut chunks = chunks;
        // A worker can die (or retire) between handing out its lease and the
        // call reaching it; the call has not been sent then, so it goes
        // elsewhere, and the dead worker leaves the free list at once.
        for _ in 0..MAX_SENDS {
            let lease = shared
                .acquire(
                    session.as_ref(),
                    options.affinity,
                    deadline,
                    timeout,
                    command,
                )
                .await?;
            let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
            let mut request = Request::new(id, command, args);
            request.session_id = options.session_id.as_deref();
            request.timeout_ms = Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .as_millis() as u64,
            );
            request.stream = chunks.is_some();
            let traced;
            request.traceparent = match (&options.traceparent, &shared.trace_context) {
                (Some(t), _) => Some(t.as_str()),
                (None, Some(hook)) => {
                    traced = hook();
                    request.tracestate = traced.as_ref().and_then(|t| t.tracestate.as_deref());
                    traced.as_ref().map(|t| t.traceparent.as_str())
                }
                (None, None) => None,
            };
            let mut buf = BytesMut::with_capacity(256);
            encode_frame(
                &shared.codec,
                &request,
                shared.config.max_frame_size,
                &mut buf,
            )
            .map_err(Error::Codec)?;
            let (tx, rx) = oneshot::channel();
            // Kept for a resend: the pending call may be failed by the
            // reader (and dropped with its sender) before it is taken back.
            let chunks_again = chunks.clone();
            let pending = Pending {
                reply: tx,
                chunks: chunks.take(),
                session: session.clone(),
                holds_unit: true,
            };
            match lease.worker.register(id, pending) {
                Ok(()) => {
                    let worker = lease.disarm();
                    if worker.send_request(id, buf.freeze()) {
                        meta.took(&worker);
                        return Ok(InFlight {
                            worker,
                            id,
                            reply: rx,
                            done: false,
                        });
                    }
                    // The worker's stdin is already closed or broken: the
                    // call never reached it. Take it back (with its unit,
                    // unless the reader has failed it and freed the slot).
                    if worker.unregister(id).is_some() {
                        shared.release(&worker);
                    }
                    shared.worker_gone(&worker);
                    // A worker that cannot be written to can take no call:
                    // if it still runs (it closed its stdin), it goes.
                    worker.kill();
                    chunks = chunks_again;
                }
                Err(pending) => {
                    shared.worker_gone(&lease.worker);
                    chunks = pending.chunks;
                }
            }
        }
        Err(Error::ShutDown)
    }

    /// A snapshot of the pool's workers, queue and counters.
    pub fn stats(&self) -> Stats {
        self.shared().stats()
    }

    /// The process ids of the ready workers.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.shared().workers().iter().map(|w| w.pid).collect()
    }

    /// A handle that does not keep the pool alive: when the last `Pool`
    /// handle goes, the pool ends (its workers are killed) whatever
    /// `WeakPool`s remain.
    pub fn downgrade(&self) -> WeakPool {
        WeakPool {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// The ready workers: ids, pids, load, calls served, age and memory.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        let mut infos: Vec<WorkerInfo> = {
            let st = self.shared().state();
            st.slots
                .iter()
                .filter_map(|s| Some((s, s.worker.as_ref()?)))
                .map(|(s, w)| WorkerInfo {
                    id: w.id.clone(),
                    slot: w.slot,
                    pid: w.pid,
                    in_flight: s.in_flight as usize,
                    served: w.served.load(Ordering::Relaxed),
                    age: w.started.elapsed(),
                    rss_bytes: None,
                })
                .collect()
        };
        for info in &mut infos {
            info.rss_bytes = crate::spawn::rss_bytes(info.pid);
        }
        infos
    }

    /// Forgets a session's worker affinity.
    pub fn end_session(&self, session_id: &str) {
        self.shared().forget_session(session_id);
    }

    /// The pool's name ([`PoolBuilder::name`]), as its spans and events carry it.
    pub fn name(&self) -> &str {
        &self.shared().name
    }

    /// The id that marks this run's workers (`SNAKEPIT_RUN_ID`).
    pub fn run_id(&self) -> &str {
        &self.shared().run_id
    }

    /// Stops admitting calls, lets calls in flight finish within the grace
    /// period, closes the workers' stdin, then signals their process groups
    /// (SIGTERM, then SIGKILL) and reaps them.
    pub async fn shutdown(&self) -> Result<()> {
        let shared = self.shared();
        shared.close();
        let grace = shared.config.shutdown_grace_period;
        let until = Instant::now() + grace;
        while shared.every_worker().iter().any(|w| w.in_flight() > 0) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let workers = shared.every_worker();
        for w in &workers {
            // What is still running now is cut off by the shutdown.
            w.stopping();
            w.close_stdin();
        }
        let all_done = |ws: &[Arc<Worker>]| ws.iter().all(|w| w.is_finished());
        let until = Instant::now() + grace;
        while !all_done(&workers) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for signal in [libc::SIGTERM, libc::SIGKILL] {
            if all_done(&workers) {
                break;
            }
            for w in workers.iter().filter(|w| !w.is_finished()) {
                w.signal(signal);
            }
            for _ in 0..shared.config.cleanup_max_retries {
                if all_done(&workers) {
                    break;
                }
                tokio::time::sleep(shared.config.cleanup_retry_interval).await;
            }
        }
        for w in &workers {
            shared.worker_gone(w);
        }
        if let Some(r) = &shared.record {
            r.finish();
        }
        Ok(())
    }
}

fn decode_result<R: DeserializeOwned>(
    shared: &Shared,
    worker: &Worker,
    command: &str,
    frame: &[u8],
) -> Result<R> {
    match decode_response::<_, R>(&shared.codec, frame) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if e.is_cancelled() => Err(Error::Cancelled),
        Ok(Err(error)) => Err(Error::Remote {
            command: command.to_owned(),
            error,
        }),
        // A well-formed reply that is not what the caller asked for, or
        // nested deeper than the host decodes: the call's own error; the
        // worker is fine.
        Err(
            e @ (snakepit_protocol::Error::Mismatch { .. }
            | snakepit_protocol::Error::TooDeep { .. }),
        ) => Err(Error::Codec(e)),
        Err(source) => {
            // The reader routed the frame from its first bytes; the rest is
            // broken, so the worker broke the protocol and is replaced.
            tracing::warn!(worker = %worker.id, pid = worker.pid, error = %source, "malformed reply; replacing the worker");
            worker.kill();
            Err(Error::Protocol {
                worker_id: worker.id.clone(),
                source,
            })
        }
    }
}

/// What a streaming call yields.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StreamItem {
    /// A partial result.
    Chunk(Value),
    /// The final result; nothing follows it.
    Done(Value),
}

/// The chunks of a streaming call, then its final result
/// (see [`Pool::execute_stream`]). Dropping it cancels the call.
pub struct CallStream {
    outcome: Outcome<'static, Arc<Shared>>,
    chunks: mpsc::Receiver<Bytes>,
    flight: Option<InFlight>,
    sleep: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
}

impl Stream for CallStream {
    type Item = Result<StreamItem>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let Some(flight) = this.flight.as_mut() else {
            return Poll::Ready(None);
        };
        // The reader drops the chunk sender before it delivers the final
        // reply, so every chunk is read before the channel reports closed,
        // and the reply can only be ready once it has.
        let outcome = match this.chunks.poll_recv(cx) {
            Poll::Ready(Some(frame)) => {
                let item = decode_chunk::<_, Value>(&this.outcome.shared.codec, &frame)
                    .map(StreamItem::Chunk)
                    .map_err(|source| match source {
                        // Well-formed, but not what the caller can take:
                        // the stream's own error; the worker is fine.
                        snakepit_protocol::Error::Mismatch { .. }
                        | snakepit_protocol::Error::TooDeep { .. } => Error::Codec(source),
                        source => Error::Protocol {
                            worker_id: flight.worker.id.clone(),
                            source,
                        },
                    });
                return Poll::Ready(Some(item));
            }
            Poll::Ready(None) => match Pin::new(&mut flight.reply).poll(cx) {
                Poll::Ready(r) => {
                    let mut flight = this.flight.take().expect("checked");
                    flight.done = true;
                    match r {
                        Ok(Ok(frame)) => decode_result::<Value>(
                            &this.outcome.shared,
                            &flight.worker,
                            &this.outcome.command,
                            &frame,
                        )
                        .map(StreamItem::Done),
                        Ok(Err(failure)) => Err(failure.into()),
                        Err(_) => Err(Error::ShutDown),
                    }
                }
                Poll::Pending => return this.poll_deadline(cx),
            },
            Poll::Pending => return this.poll_deadline(cx),
        };
        Poll::Ready(Some(this.outcome.record(outcome)))
    }
}

impl CallStream {
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<StreamItem>>> {
        if self.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.flight = None; // dropping it cancels the call
        let counters = &self.outcome.shared.counters;
        counters.call_timeouts.fetch_add(1, Ordering::Relaxed);
        let outcome = Err(Error::CallTimeout {
            command: self.outcome.command.to_string(),
            timeout: self.timeout,
        });
        Poll::Ready(Some(self.outcome.record(outcome)))
    }
}
