//! Keeping every slot filled: start and handshake, backoff and breaker,
//! recycling, retiring and health checks.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde_json::{json, Value};
use snakepit_protocol::{decode_response, encode_frame, Request};
use tokio::sync::{oneshot, watch};
use tracing::Instrument;

use super::shared::Shared;
use crate::error::{Error, Result, StartError};
use crate::events::EventKind;
use crate::worker::{Owner, Pending, Process, Worker};
use crate::PoolConfig;

/// Starts one worker and runs its init handshake.
pub(crate) async fn start_worker(
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
    // What its files need, again: they may have gone since the pool
    // started (a cleaner of old files in $TMPDIR). A check that panics
    // fails this start, as one that returns an error does, rather than end
    // the slot's supervisor (its slot would stay empty for good).
    crate::sync::catch(|| shared.adapter.check())
        .unwrap_or_else(|panic| Err(format!("the adapter's check panicked: {panic}")))
        .map_err(|cause| fail(cause, String::new()))?;
    let launch = shared
        .launch
        .clone()
        .for_worker(shared.codec, &worker_id, &shared.run_id)
        .env(
            "SNAKEPIT_MAX_FRAME_SIZE",
            shared.config.max_frame_size.to_string(),
        );
    let span = tracing::Span::current();
    let child = if shared.launch.preload {
        let template = shared.template().await.map_err(|e| fail(e.cause, e.tail))?;
        // The template has the bridge's own environment already, byte for
        // byte: the fork request carries only what `for_worker` added
        // (this worker's id among them).
        let own = &launch.env[shared.launch.env.len()..];
        shared
            .spawner
            .watched()
            .map_err(|e| fail(e.to_string(), String::new()))?;
        let process = template
            .fork(own)
            .await
            .map_err(|e| fail(e.to_string(), template.tail()))?;
        shared.spawner.watch(process.pid);
        process
    } else {
        let child = shared
            .spawner
            .spawn(launch.clone())
            .await
            .map_err(|e| fail(crate::spawn::cannot_start(&launch, &e), String::new()))?;
        Process::from(child)
    };
    let started = Instant::now();
    if let Some(r) = shared.run_record() {
        r.add(child.pid);
    }
    let owner: Weak<Shared> = Arc::downgrade(shared);
    let owner: Weak<dyn Owner> = owner;
    let worker = Worker::start(
        owner,
        &shared.worker_settings(),
        child,
        worker_id.clone(),
        slot,
        generation,
    );
    span.record("process.pid", i64::from(worker.pid));
    // A start abandoned before its handshake ends (the pool shuts down, or
    // its start is dropped) takes the process with it: it is in no slot
    // yet, so nothing else would stop it.
    let mut starting = Starting::new(shared, &worker);
    if starting.0.is_none() {
        // The pool closed as this process was spawned.
        worker.finished().await;
        return Err(fail(
            "the pool shut down during the start".to_owned(),
            String::new(),
        ));
    }
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
            starting.disarm();
            return Ok(worker);
        }
        Ok(Ok(result)) => format!(
            "init handshake answered without status \"ok\" (a ping registered by the worker replaces the bridge's, and must answer {{\"status\": \"ok\", ...}}): {result}"
        ),
        Ok(Err(Error::WorkerCrashed(crash))) => {
            format!("exited during the init handshake ({})", crash.exit)
        }
        Ok(Err(e)) => format!("init handshake failed: {e}"),
        Err(_) => format!(
            "no answer to the init handshake within {:?} (`worker_init_timeout`, which bounds the script's loading and its after-fork hooks)",
            shared.config.worker_init_timeout
        ),
    };
    worker.kill();
    worker.finished().await;
    Err(fail(failure, worker.stderr_tail()))
}

/// A worker whose start is under way: listed in the pool's state so that
/// `shutdown()` stops it too, and killed (its group) if dropped armed.
struct Starting<'a>(Option<Arc<Worker>>, &'a Shared);

impl<'a> Starting<'a> {
    /// Lists `worker` as starting; if the pool has closed already, kills it
    /// instead and holds nothing.
    fn new(shared: &'a Shared, worker: &Arc<Worker>) -> Self {
        let mut st = shared.state();
        if st.closed {
            drop(st);
            worker.kill();
            return Starting(None, shared);
        }
        st.starting.push(worker.clone());
        Starting(Some(worker.clone()), shared)
    }

    /// Its handshake is done: the caller takes it from here.
    fn disarm(&mut self) {
        if let Some(worker) = self.0.take() {
            self.1.state().starting.retain(|w| !Arc::ptr_eq(w, &worker));
        }
    }
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        if let Some(worker) = self.0.take() {
            worker.kill();
            // Once the pool is closed it stays listed: `shutdown()` waits
            // for its end.
            let mut st = self.1.state();
            if !st.closed {
                st.starting.retain(|w| !Arc::ptr_eq(w, &worker));
            }
        }
    }
}

/// A call the pool makes itself (handshake, health ping), outside the queue.
pub(crate) async fn internal_call(
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
    if worker.register(id, Pending::new(tx, false)).is_err() {
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
pub(crate) fn jitter(base: Duration, salt: u64) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut x = nanos ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    // 50% .. 150% of base
    crate::clock::scale(base, 0.5 + (x % 1000) as f64 / 1000.0)
}

/// The span a worker's start and handshake run in (its pid is recorded
/// once spawned).
pub(crate) fn start_span(shared: &Shared, i: usize) -> tracing::Span {
    tracing::info_span!(
        "snakepit.worker.start",
        snakepit.pool = shared.name.as_str(),
        // i64: tracing-opentelemetry exports u64 fields as strings.
        snakepit.worker = i as i64,
        process.pid = tracing::field::Empty,
    )
}

/// One more failed start of slot `i` in a row (a start that failed, or a
/// worker that died within a second of starting): the delay before the
/// next. At `breaker_threshold` in a row the slot's breaker opens for
/// `breaker_cooldown`; when every slot's is open and no worker is left, the
/// calls waiting fail with `e`.
fn failed_start(shared: &Shared, i: usize, failures: &mut u32, e: &StartError) -> Duration {
    *failures += 1;
    let mut st = shared.state();
    st.last_start_error = Some(e.clone());
    st.slots[i].attempting = false;
    if *failures < shared.config.breaker_threshold {
        drop(st);
        return restart_delay(&shared.config, backoff(&shared.config, *failures), i as u64);
    }
    st.slots[i].breaker_open = true;
    if st.broken().is_some() {
        shared.fail_waiters(&mut st, || Error::StartFailed(Box::new(e.clone())));
    }
    drop(st);
    shared.emit(EventKind::BreakerOpened {
        worker: i,
        failures: *failures,
    });
    tracing::error!(
        slot = i,
        failures = *failures,
        cooldown_ms = shared.config.breaker_cooldown.as_millis() as u64,
        "breaker open: not restarting this worker for a while"
    );
    // Half-open after the cool-down: one more failure re-opens.
    *failures = shared.config.breaker_threshold - 1;
    shared.config.breaker_cooldown
}

/// Keeps slot `i` filled: starts its worker, waits for it to end, starts the
/// next, backing off and opening the breaker when starts keep failing.
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    i: usize,
    mut first: Option<oneshot::Sender<std::result::Result<(), StartError>>>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut retry = shared.retry.subscribe();
    let mut failures: u32 = 0;
    let mut started_once = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let generation = shared.next_generation(i);
        let span = start_span(&shared, i);
        // A retry asked from now on (during the attempt, or by a listener
        // of its failure) ends the back-off that may follow it.
        retry.mark_unchanged();
        let start = tokio::select! {
            r = start_worker(&shared, i, generation).instrument(span) => r,
            _ = shutdown.changed() => return,
        };
        let delay = match start {
            Ok(worker) => {
                let mut limits = call_limits(&shared.config, &worker);
                if !shared.worker_ready(&worker, limits) {
                    // Ready as the pool shuts down: it never serves.
                    stop_unused(&shared, &worker).await;
                    return;
                }
                // Its life counts from here: a worker slow to start that
                // dies right after its handshake is a failed start too.
                let mut ready_at = Instant::now();
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
                        reason = recycle_due(&shared, &worker, drain, limits) => {
                            if let Some((new, new_limits)) = recycle(&shared, i, &worker, reason, &mut shutdown, &mut retry).await {
                                worker = new;
                                limits = new_limits;
                                drain = true;
                                ready_at = Instant::now();
                            } else if *shutdown.borrow() {
                                return;
                            } else {
                                drain = false;
                            }
                        }
                    }
                };
                shared.worker_gone(&worker);
                shared.requeue_strict(i);
                let lived = ready_at.elapsed();
                tracing::warn!(worker = %worker.id, pid = worker.pid, %exit, lived_ms = lived.as_millis() as u64, "worker ended; replacing it");
                if !shared.listeners.is_empty() {
                    shared.emit(EventKind::WorkerExited {
                        worker: i,
                        pid: worker.pid,
                        reason: &exit.to_string(),
                    });
                }
                // A worker that dies right after starting counts as a failed
                // start, so that a crash loop backs off instead of
                // fork-storming, and opens the breaker as failed starts do.
                // Not one the pool killed for a call that outlived its
                // deadline and the grace period: it started well, and the
                // call's deadline already spaces such ends out.
                // One the pool killed for its health check counts (it
                // could not answer a ping once started), and says so.
                if lived < Duration::from_secs(1) && !worker.was_stuck() {
                    let cause = match worker.was_unhealthy() {
                        true => format!(
                            "the worker did not answer its health check within {:?} \
                             (health_check_timeout) and was killed {} ms after it started serving",
                            shared.config.health_check_timeout,
                            lived.as_millis()
                        ),
                        false => format!(
                            "the worker ended {} ms after it started serving ({exit})",
                            lived.as_millis()
                        ),
                    };
                    let e = StartError {
                        worker_id: worker.id.clone(),
                        cause,
                        stderr_tail: worker.stderr_tail(),
                    };
                    failed_start(&shared, i, &mut failures, &e)
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
                failed_start(&shared, i, &mut failures, &e)
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
                _ = retry.changed() => {
                    tracing::info!(slot = i, "retrying the start now, as asked");
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Why a worker is recycled (its events and logs say it as `as_str`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recycle {
    /// It answered `recycle_after_calls` calls.
    Calls,
    /// It is older than `worker_ttl`.
    Age,
    /// It had no call for `worker_idle_timeout`.
    Idle,
    /// Its resident memory is above `recycle_above_rss_mb`.
    Memory,
}

impl Recycle {
    /// The name events and logs carry (`calls`, `ttl`, `idle`, `memory`).
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Recycle::Calls => "calls",
            Recycle::Age => "ttl",
            Recycle::Idle => "idle",
            Recycle::Memory => "memory",
        }
    }
}

/// A worker's limits of recycling by calls (0: off): the answered calls at
/// which its replacement starts, and at which it takes no new call.
#[derive(Clone, Copy, Default)]
pub(crate) struct CallLimits {
    pub(crate) replace_at: u64,
    pub(crate) calls: u64,
}

/// Each worker's limits (and TTL) are drawn within 10% of the configured
/// ones, so workers started together do not all go together.
fn spread(pid: u32, salt: u64) -> f64 {
    let j = jitter(Duration::from_micros(1000), salt ^ u64::from(pid)).as_micros();
    0.9 + (j.clamp(500, 1500) - 500) as f64 / 5000.0
}

/// `worker`'s limits of recycling by calls, drawn once: they are in its
/// slot from the moment it takes calls (`Shared::worker_ready`,
/// `Shared::install`), so that no call is written ahead past them.
pub(crate) fn call_limits(config: &PoolConfig, worker: &Worker) -> CallLimits {
    let calls = match config.recycle_after_calls {
        0 => 0,
        n => ((n as f64 * spread(worker.pid, 1)).round() as u64).max(1),
    };
    CallLimits {
        replace_at: calls - calls / 10,
        calls,
    }
}

/// Resolves with the reason once `worker` is due for recycling; never when
/// no recycling rule is on. Recycling by calls follows the replies: the
/// reply that brings the worker to 90% of its limit wakes this at once (to
/// start the replacement early), and with `drain` the one that brings it to
/// its limit stops it taking calls. The other rules are checked every 100 ms.
pub(crate) async fn recycle_due(
    shared: &Shared,
    worker: &Worker,
    drain: bool,
    limits: CallLimits,
) -> Recycle {
    let c = &shared.config;
    if !c.recycles() {
        return std::future::pending().await;
    }
    let preload = shared.launch.preload;
    let CallLimits { replace_at, calls } = limits;
    let due = shared.watch_calls(worker, replace_at, if drain { calls } else { 0 });
    let ttl = crate::clock::scale(c.worker_ttl, spread(worker.pid, 2));
    let check = Duration::from_millis(100);
    loop {
        if calls > 0 && worker.served.load(Ordering::Relaxed) >= replace_at {
            return Recycle::Calls;
        }
        tokio::select! {
            _ = tokio::time::sleep(check) => {}
            _ = due.notified() => continue,
        }
        if !ttl.is_zero() && worker.started.elapsed() >= ttl {
            return Recycle::Age;
        }
        if !c.worker_idle_timeout.is_zero() && worker.idle_for() >= c.worker_idle_timeout {
            return Recycle::Idle;
        }
        // A forked worker shares its template's pages: its fair share
        // (PSS) is what it costs, not every shared page (RSS).
        let size = if preload {
            crate::os::pss_bytes
        } else {
            crate::os::rss_bytes
        };
        if c.recycle_above_rss_mb > 0
            && size(worker.pid).is_some_and(|b| b > c.recycle_above_rss_mb.saturating_mul(1 << 20))
        {
            return Recycle::Memory;
        }
    }
}

/// Replaces `old` with a fresh worker, started before `old` stops taking
/// calls so that capacity does not dip; `old` finishes its calls, then goes.
/// `None` when the replacement could not start (`old` keeps serving).
pub(crate) async fn recycle(
    shared: &Arc<Shared>,
    i: usize,
    old: &Arc<Worker>,
    reason: Recycle,
    shutdown: &mut watch::Receiver<bool>,
    retry: &mut watch::Receiver<u64>,
) -> Option<(Arc<Worker>, CallLimits)> {
    tracing::info!(worker = %old.id, pid = old.pid, reason = reason.as_str(), "recycling the worker; starting its replacement");
    let generation = shared.spare_generation(i);
    let span = start_span(shared, i);
    // As for a start: a retry asked from now on ends the back-off that may
    // follow a failure.
    retry.mark_unchanged();
    let started = tokio::select! {
        r = start_worker(shared, i, generation).instrument(span) => r,
        _ = shutdown.changed() => return None,
    };
    match started {
        Ok(new) => {
            let limits = call_limits(&shared.config, &new);
            if !shared.install(&new, limits) {
                stop_unused(shared, &new).await;
                return None;
            }
            shared.counters.recycled.fetch_add(1, Ordering::Relaxed);
            shared.emit(EventKind::WorkerRecycled {
                worker: i,
                pid: old.pid,
                reason: reason.as_str(),
            });
            tokio::spawn(retire(shared.clone(), old.clone()));
            Some((new, limits))
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
            // The old worker serves on meanwhile; the back-off ends early
            // when it dies (its slot must not wait empty) or when a retry is
            // asked (`Pool::retry_starts`).
            tokio::select! {
                _ = tokio::time::sleep(restart_delay(&shared.config, shared.config.restart_backoff_max, i as u64)) => {}
                _ = shutdown.changed() => {}
                _ = old.finished() => {}
                _ = retry.changed() => {}
            }
            None
        }
    }
}

/// Stops a worker that started as the pool shut down and never took a
/// call: shutdown may not know of it.
async fn stop_unused(shared: &Shared, worker: &Arc<Worker>) {
    tracing::debug!(worker = %worker.id, pid = worker.pid, "started as the pool shut down; stopping it");
    stop(&shared.config, std::slice::from_ref(worker)).await;
}

/// Lets a recycled worker finish its calls (each bounded by its deadline and
/// the cancel grace period), then closes its stdin, then signals its group.
pub(crate) async fn retire(shared: Arc<Shared>, old: Arc<Worker>) {
    // A call may still be on its way to it (a lease taken just before the
    // replacement came in): sealing fails such a late registration, and the
    // call goes to another worker.
    while !old.seal_if_idle() && !old.is_finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop(&shared.config, std::slice::from_ref(&old)).await;
    shared.state().retiring.retain(|w| !Arc::ptr_eq(w, &old));
}

/// The one way the pool stops worker processes, whether it retires one or
/// shuts down: their stdin closes (a worker exits at end of input) and they
/// get the grace period to exit; then their process groups get SIGTERM,
/// then SIGKILL, each followed by up to `cleanup_max_retries` checks
/// `cleanup_retry_interval` apart (at least one after SIGTERM: a worker
/// always gets an interval to act on it, `cleanup_max_retries = 0`
/// included). Returns once all have ended (seen when they end, not at the
/// next check) or the checks after SIGKILL ran out.
pub(crate) async fn stop(config: &PoolConfig, workers: &[Arc<Worker>]) {
    for w in workers {
        w.close_stdin();
    }
    let all_done = || workers.iter().all(|w| w.is_finished());
    let until = crate::clock::later(Instant::now(), config.shutdown_grace_period);
    while !all_done() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        if all_done() {
            return;
        }
        for w in workers.iter().filter(|w| !w.is_finished()) {
            w.signal(signal);
        }
        let checks = match signal {
            libc::SIGTERM => config.cleanup_max_retries.max(1),
            _ => config.cleanup_max_retries,
        };
        for _ in 0..checks {
            if all_done() {
                return;
            }
            // The pause ends early when the last of them ends: a long
            // interval (up to `Duration::MAX`) must not hold a stop whose
            // workers died at once.
            tokio::select! {
                _ = tokio::time::sleep(config.cleanup_retry_interval) => {}
                _ = async {
                    for w in workers {
                        w.finished().await;
                    }
                } => return,
            }
        }
    }
}

/// A restart's delay: `base` with jitter, never past
/// `restart_backoff_max` (the longest delay between restarts, as
/// documented).
fn restart_delay(config: &PoolConfig, base: Duration, salt: u64) -> Duration {
    jitter(base, salt).min(config.restart_backoff_max)
}

pub(crate) fn backoff(config: &PoolConfig, failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    config
        .restart_backoff
        .saturating_mul(1 << exp)
        .min(config.restart_backoff_max)
}

/// Pings idle workers at the health-check interval, replaces those that do
/// not answer, and forgets stale session affinity.
pub(crate) async fn maintain(shared: Arc<Shared>) {
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
        super::slots::forget_stale(&mut shared.state().affinity, ttl);
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
pub(crate) async fn check_health(shared: Arc<Shared>, worker: Arc<Worker>) {
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
    worker.kill_unhealthy();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// README and reliability.md: restart delays start at
    /// `restart_backoff`, double with each failure in a row, carry ±50%
    /// jitter, and never pass `restart_backoff_max`.
    #[test]
    fn restart_delays_double_with_jitter_up_to_the_maximum() {
        let config = PoolConfig::default();
        let (first, max) = (config.restart_backoff, config.restart_backoff_max);
        assert_eq!(backoff(&config, 1), first);
        assert_eq!(backoff(&config, 2), first * 2);
        assert_eq!(backoff(&config, 3), first * 4);
        assert_eq!(backoff(&config, 40), max);
        for salt in 0..2_000u64 {
            let d = restart_delay(&config, backoff(&config, 3), salt);
            assert!(d >= first * 2 && d <= first * 6, "{d:?}");
            let d = restart_delay(&config, backoff(&config, 40), salt);
            assert!(d >= max / 2 && d <= max, "{d:?}");
        }
    }

    /// reliability.md: a worker's limit of calls and its age (`worker_ttl`)
    /// are each drawn within ±10%, so that workers started together do not
    /// all go together: within 0.9 to 1.1, and spread over that range.
    #[test]
    fn recycling_limits_are_drawn_within_ten_percent() {
        for salt in [1, 2] {
            let drawn: Vec<f64> = (1..4_000u32).map(|pid| spread(pid, salt)).collect();
            assert!(drawn.iter().all(|f| (0.9..=1.1).contains(f)), "{drawn:?}");
            let lowest = drawn.iter().copied().fold(f64::MAX, f64::min);
            let highest = drawn.iter().copied().fold(f64::MIN, f64::max);
            assert!(lowest < 0.92 && highest > 1.08, "{lowest} .. {highest}");
        }
    }
}
