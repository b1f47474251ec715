//! The part of a pool every task shares, and its bookkeeping of workers
//! coming, going, draining and being checked.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use snakepit_protocol::WireCodec;
use tokio::sync::watch;

use super::options::{HostFunction, TraceContext};
use super::slots::{State, Touching};
use super::stats::Counters;
use super::supervise::CallLimits;
use crate::adapter::{Adapter, Launch};
use crate::error::Error;
use crate::events::{Event, EventKind, Listener};
use crate::session_hook::{Affinities, SessionHook};
use crate::spawn::Spawner;
use crate::sync::Unpoisoned;
use crate::template::{Template, TemplateError};
use crate::worker::{Owner, Settings, Worker};
use crate::PoolConfig;

/// The part of a pool every task shares.
pub(crate) struct Shared {
    pub(crate) config: PoolConfig,
    pub(crate) adapter: Box<dyn Adapter>,
    pub(crate) codec: WireCodec,
    pub(crate) launch: Launch,
    pub(crate) supported: Option<HashSet<String>>,
    pub(crate) state: Mutex<State>,
    pub(crate) next_id: AtomicU64,
    /// The size of the last large request frame (0 after a small one): the
    /// next request's buffer starts at it, so that a large frame is encoded
    /// without regrowing (and copying) its buffer step by step.
    pub(crate) large_request: AtomicUsize,
    pub(crate) counters: Counters,
    pub(crate) host_functions: HashMap<String, HostFunction>,
    pub(crate) session_hook: Option<Arc<dyn SessionHook>>,
    pub(crate) spawner: Spawner,
    pub(crate) run_id: String,
    pub(crate) name: String,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Bumped by [`Pool::retry_starts`](crate::Pool::retry_starts): slots
    /// waiting out a back-off or an open breaker start a worker at once.
    pub(crate) retry: watch::Sender<u64>,
    pub(crate) listeners: Vec<Listener>,
    pub(crate) trace_context: Option<TraceContext>,
    /// The run record, once written (see [`Shared::run_record`]).
    pub(crate) record: Mutex<Option<Arc<crate::sweep::RunRecord>>>,
    /// Where the run record is written.
    pub(crate) state_dir: std::path::PathBuf,
    /// A failure to write the run record was logged.
    pub(crate) record_warned: std::sync::atomic::AtomicBool,
    /// The preload template, once started (`launch.preload`).
    pub(crate) template: Mutex<Option<Arc<Template>>>,
    /// Held while a template starts, so that workers wait for one template.
    pub(crate) template_start: tokio::sync::Mutex<()>,
}

impl Shared {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.locked()
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
            // A listener that panics loses its event, not the pool's task
            // that reported it (a supervisor: its slot stayed empty).
            let called =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| listener(&event)));
            if called.is_err() {
                tracing::error!(pool = %self.name, "an event listener panicked; the pool goes on");
            }
        }
    }

    /// The running preload template, started first if there is none or it
    /// died (running workers do not need it; new ones do).
    pub(crate) async fn template(self: &Arc<Self>) -> Result<Arc<Template>, TemplateError> {
        let _starting = self.template_start.lock().await;
        if let Some(t) = self.template.locked().as_ref().filter(|t| t.is_alive()) {
            return Ok(t.clone());
        }
        if *self.shutdown.borrow() {
            return Err(TemplateError {
                cause: "the pool is shutting down".into(),
                tail: String::new(),
            });
        }
        let launch = self
            .launch
            .clone()
            .for_worker(self.codec, &format!("{}_template", self.name), &self.run_id)
            .env(
                "SNAKEPIT_MAX_FRAME_SIZE",
                self.config.max_frame_size.to_string(),
            );
        let owner = Arc::downgrade(self);
        let template = Template::start(
            &self.spawner,
            launch,
            self.config.worker_init_timeout,
            move |pid| {
                if let Some(shared) = owner.upgrade() {
                    shared.process_gone(pid);
                }
            },
        )
        .await?;
        if let Some(r) = self.run_record() {
            r.add(template.pid);
        }
        let old = self.template.locked().replace(template.clone());
        if let Some(old) = old {
            old.kill();
        }
        if *self.shutdown.borrow() {
            // Closed while it started: it would outlive the pool.
            template.kill();
        }
        Ok(template)
    }

    /// Kills the preload template, if any (its workers are stopped apart).
    /// Kills the template, if there is one; its pid.
    pub(crate) fn stop_template(&self) -> Option<u32> {
        let t = self.template.locked().take()?;
        t.kill();
        Some(t.pid)
    }

    /// A worker's process was reaped: no watchdog or run record needs it.
    pub(crate) fn process_gone(&self, pid: u32) {
        self.spawner.forget(pid);
        let record = self.record.locked().clone();
        if let Some(r) = record {
            r.remove(pid);
        }
    }

    /// The run record, written now if it could not be before (the host was
    /// out of descriptors at the pool's start, say): a pool whose workers
    /// run has one, and it lists them. `None` while it cannot be written
    /// (logged once).
    pub(crate) fn run_record(&self) -> Option<Arc<crate::sweep::RunRecord>> {
        if let Some(r) = self.record.locked().as_ref() {
            return Some(r.clone());
        }
        let live: Vec<u32> = {
            let st = self.state();
            let workers = st.slots.iter().filter_map(|s| s.worker.as_ref());
            workers.chain(st.dying.iter()).map(|w| w.pid).collect()
        };
        let template = self.template.locked().as_ref().map(|t| t.pid);
        let mut held = self.record.locked();
        if held.is_none() && !*self.shutdown.borrow() {
            match crate::sweep::RunRecord::create(&self.state_dir, &self.name, &self.run_id) {
                Ok(r) => {
                    for pid in live.into_iter().chain(template).filter(|&p| p != 0) {
                        r.add(pid);
                    }
                    *held = Some(Arc::new(r));
                }
                Err(e) => {
                    if !self.record_warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, dir = %self.state_dir.display(), "cannot write the run record (tried again at each worker's start); a crashed run's leftovers will not be swept");
                    }
                }
            }
        }
        held.clone()
    }

    /// The pool's end: kills what its workers left outside their process
    /// groups (`own`: the processes it stops itself), then removes the run
    /// record; see [`crate::sweep::kill_leftovers_and_finish`].
    pub(crate) fn finish_run(&self, own: &[u32]) {
        let record = self.record.locked().clone();
        crate::sweep::kill_leftovers_and_finish(&self.run_id, own, record);
    }

    /// A CLIENT span (the worker's side is its SERVER span), with
    /// namespaced attributes; numbers are recorded as `i64`, which
    /// OpenTelemetry keeps as numbers (a `u64` would arrive as a string).
    pub(crate) fn call_span(&self, command: &str, session: Option<&str>) -> tracing::Span {
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

    pub(crate) fn forget_session(&self, session_id: &str) {
        let key = affinity_key(session_id);
        let mut st = self.state();
        st.affinity.remove(&*key);
        st.end_session(&key);
    }

    /// Marks a call of `session` as between its session touch and its
    /// routing, until the mark is dropped: a session that ends in between
    /// has had its affinity removed already, so the record its routing
    /// makes must go too ([`TouchMark::routed`]). `None` once the pool is
    /// shut down (checked under the same lock).
    pub(crate) fn touching(&self, session: &Arc<str>) -> Option<TouchMark<'_>> {
        let mut st = self.state();
        if st.closed {
            return None;
        }
        let t = st
            .touching
            .entry(session.clone())
            .or_insert(Touching { calls: 0, ends: 0 });
        t.calls += 1;
        Some(TouchMark {
            shared: self,
            session: session.clone(),
            ends: t.ends,
        })
    }

    /// The calls `worker` runs at once (what it declared, within the
    /// pool's bound), and whether calls are written ahead to it.
    fn capacity_of(&self, worker: &Worker) -> u32 {
        let caps = worker.capabilities();
        let cap = caps
            .max_concurrency
            .clamp(1, self.config.max_concurrency_per_worker);
        worker.set_capacity(cap);
        // Only a worker that itself runs one call at a time takes calls
        // written ahead: one that runs several would start them at once,
        // past a `max_concurrency_per_worker` of 1.
        worker.set_pipelining(
            self.config.pipeline_depth > 0 && caps.pipeline && caps.max_concurrency <= 1,
            self.config.pipeline_max_call,
        );
        cap
    }

    /// Puts a worker that started in its slot; false when the pool is
    /// shutting down, and its caller must stop it: shutdown may have taken
    /// its list of workers already.
    #[must_use]
    pub(crate) fn worker_ready(self: &Arc<Self>, worker: &Arc<Worker>, limits: CallLimits) -> bool {
        let cap = self.capacity_of(worker);
        let mut st = self.state();
        if st.closed {
            return false;
        }
        let slot = &mut st.slots[worker.slot];
        if slot.generation != worker.generation {
            return true;
        }
        slot.reset(worker, cap);
        slot.limit_calls(limits);
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
        true
    }

    pub(crate) fn worker_gone(&self, worker: &Worker) {
        let gone = self.state().slots[worker.slot].vacate(worker.generation);
        drop(gone);
    }

    /// Slot `i`'s worker is gone: the calls that waited for it alone
    /// (strict affinity) go to whichever worker is free first.
    pub(crate) fn requeue_strict(self: &Arc<Self>, i: usize) {
        let mut st = self.state();
        if st.strict[i].is_empty() {
            return;
        }
        st.unstrict(i);
        for j in 0..st.slots.len() {
            if j != i && st.slots[j].has_room() {
                self.hand_off(&mut st, j);
            }
        }
    }

    pub(crate) fn next_generation(&self, i: usize) -> u64 {
        let mut st = self.state();
        let slot = &mut st.slots[i];
        slot.last_generation += 1;
        slot.generation = slot.last_generation;
        slot.worker = None;
        // A start begins: calls wait for it, even with the breaker open.
        slot.attempting = true;
        slot.generation
    }

    /// A generation for a replacement that starts while the slot's worker
    /// still serves.
    pub(crate) fn spare_generation(&self, i: usize) -> u64 {
        let mut st = self.state();
        st.slots[i].last_generation += 1;
        st.slots[i].last_generation
    }

    /// Puts a recycled worker's replacement in its slot; the old worker's
    /// calls finish on it, outside the slot's accounting. False when the
    /// pool is shutting down, as for [`Shared::worker_ready`].
    #[must_use]
    pub(crate) fn install(self: &Arc<Self>, worker: &Arc<Worker>, limits: CallLimits) -> bool {
        let cap = self.capacity_of(worker);
        let mut st = self.state();
        if st.closed {
            return false;
        }
        let slot = &mut st.slots[worker.slot];
        let old = slot.worker.clone();
        slot.generation = worker.generation;
        slot.reset(worker, cap);
        slot.limit_calls(limits);
        if let Some(old) = old {
            st.retiring.push(old);
        }
        self.hand_off(&mut st, worker.slot);
        true
    }

    /// Sets when the slot's `worker` is due for recycling by calls: its
    /// supervisor is woken (through the returned `Notify`) once it has
    /// answered `replace_at` calls, and it takes no new call once it has
    /// answered `drain_at` (0: it keeps serving until replaced).
    pub(crate) fn watch_calls(
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
    pub(crate) fn undrain(self: &Arc<Self>, worker: &Worker) {
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
    pub(crate) fn start_health_checks(&self) -> Vec<Arc<Worker>> {
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
    pub(crate) fn passed_health_check(self: &Arc<Self>, worker: &Worker) {
        let mut st = self.state();
        let slot = &mut st.slots[worker.slot];
        if slot.generation == worker.generation && slot.worker.is_some() && slot.checking {
            slot.checking = false;
            slot.in_flight = slot.in_flight.saturating_sub(1);
            self.hand_off(&mut st, worker.slot);
        }
    }

    /// Every worker process the pool has: ready ones, retiring ones, those
    /// out of routing whose end is awaited, and those in their handshake.
    pub(crate) fn every_worker(&self) -> Vec<Arc<Worker>> {
        let st = self.state();
        st.slots
            .iter()
            .filter_map(|s| s.worker.clone())
            .chain(st.retiring.iter().cloned())
            .chain(st.dying.iter().cloned())
            .chain(st.starting.iter().cloned())
            .collect()
    }

    /// Fails every queued call with `err()` (shutdown, or no worker left and
    /// every breaker open).
    pub(crate) fn fail_waiters(&self, st: &mut State, err: impl Fn() -> Error) {
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
    pub(crate) fn close(&self) {
        {
            let mut st = self.state();
            st.closed = true;
            self.fail_waiters(&mut st, || Error::ShutDown);
        }
        self.shutdown.send_replace(true);
    }

    pub(crate) fn workers(&self) -> Vec<Arc<Worker>> {
        self.state()
            .slots
            .iter()
            .filter_map(|s| s.worker.clone())
            .collect()
    }
}

/// How the pool's workers reach it (they know it only through this).
impl Owner for Shared {
    fn released(self: Arc<Self>, worker: &Worker) {
        self.release(worker);
    }

    fn unrouted(&self, worker: &Worker) {
        let mut st = self.state();
        if let Some(w) = st.slots[worker.slot].vacate(worker.generation) {
            st.dying.push(w);
        }
    }

    fn gone(&self, worker: &Worker) {
        self.worker_gone(worker);
        self.state()
            .dying
            .retain(|w| !std::ptr::eq(Arc::as_ptr(w), worker));
        self.process_gone(worker.pid);
        // Its children that left its process group (`setsid`) go with it,
        // not only at the pool's end; the look through `/proc` blocks. A
        // pool that is ending looks once for all its workers, at its end.
        // A look that could not see every process (the host out of
        // descriptors) is made again until it can, or until the pool's end
        // looks for all its workers.
        if worker.pid != 0 && !*self.shutdown.borrow() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let (run_id, id, pid) = (self.run_id.clone(), worker.id.clone(), worker.pid);
                let ending = self.shutdown.subscribe();
                rt.spawn_blocking(move || {
                    let look = || crate::sweep::kill_escaped(&run_id, &id, pid);
                    if look().is_none() {
                        let ended = || *ending.borrow() || ending.has_changed().is_err();
                        crate::sweep::look_until_seen(look, ended);
                    }
                });
            }
        }
    }

    fn interrupt(&self, worker: &Worker, id: u64) -> bool {
        Shared::interrupt(self, worker, id)
    }

    fn host_function(&self, name: &str) -> Option<HostFunction> {
        self.host_functions.get(name).cloned()
    }
}

impl Shared {
    /// What a worker it starts needs to know of its configuration.
    pub(crate) fn worker_settings(&self) -> Settings {
        Settings {
            codec: self.codec,
            grace: self.config.shutdown_grace_period,
            max_frame_size: self.config.max_frame_size,
            stderr_tail_lines: self.config.stderr_tail_lines,
            track_idle: !self.config.worker_idle_timeout.is_zero(),
        }
    }
}

impl Affinities for Shared {
    fn forget_session(&self, session_id: &str) -> bool {
        Shared::forget_session(self, session_id);
        // Every way a pool ends closes it first (`Shared::close`).
        !self.state().closed
    }
}

/// A session call between its session touch and its routing
/// ([`Shared::touching`]).
pub(crate) struct TouchMark<'a> {
    shared: &'a Shared,
    session: Arc<str>,
    /// The session's ends counted when the mark was made.
    ends: u64,
}

impl TouchMark<'_> {
    /// The call has its worker: if its session ended since its touch
    /// began, the affinity its routing recorded goes (no later call of it
    /// would remove it before `session_ttl`).
    pub(crate) fn routed(&self) {
        let mut st = self.shared.state();
        if st
            .touching
            .get(&self.session)
            .is_some_and(|t| t.ends != self.ends)
        {
            st.affinity.remove(&self.session);
        }
    }
}

impl Drop for TouchMark<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.state();
        if let Some(t) = st.touching.get_mut(&self.session) {
            t.calls -= 1;
            if t.calls == 0 {
                st.touching.remove(&self.session);
            }
        }
    }
}

/// The key a session is known by in the pool's tables (its affinity, the
/// calls waiting for it): the id itself up to
/// [`MAX_SESSION_ID_LEN`](crate::MAX_SESSION_ID_LEN) bytes, else a 128-bit
/// digest of it, keyed at random per process, padded to one byte more than
/// any id kept as it is (so it never equals one). The tables then hold at
/// most `max_sessions` keys of bounded size, whatever ids callers pass (a
/// cookie, a header), while the whole id still goes to the worker.
pub(crate) fn affinity_key(id: &str) -> Arc<str> {
    use std::hash::{BuildHasher, RandomState};
    if id.len() <= crate::MAX_SESSION_ID_LEN {
        return Arc::from(id);
    }
    static KEYS: std::sync::OnceLock<(RandomState, RandomState)> = std::sync::OnceLock::new();
    let (a, b) = KEYS.get_or_init(|| (RandomState::new(), RandomState::new()));
    let digest = format!("{:016x}{:016x}", a.hash_one(id), b.hash_one(id));
    Arc::from(format!(
        "{digest:\0<width$}",
        width = crate::MAX_SESSION_ID_LEN + 1
    ))
}

#[cfg(test)]
mod key_tests {
    use super::affinity_key;
    use crate::MAX_SESSION_ID_LEN;

    #[test]
    fn long_ids_are_kept_as_a_digest_longer_than_any_id_kept_as_it_is() {
        let longest = "x".repeat(MAX_SESSION_ID_LEN);
        assert_eq!(&*affinity_key(&longest), longest.as_str());
        let (a, b) = ("x".repeat(200_000), "y".repeat(200_000));
        let (ka, kb) = (affinity_key(&a), affinity_key(&b));
        assert_eq!(ka.len(), MAX_SESSION_ID_LEN + 1);
        assert_eq!(ka, affinity_key(&a), "the same id, the same key");
        assert_ne!(ka, kb);
        assert_ne!(affinity_key(&longest[..1]), ka);
    }
}
