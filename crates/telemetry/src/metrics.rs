//! OpenTelemetry metrics from a pool's events and snapshots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge};
use opentelemetry::KeyValue;
use snakepit_core::events::{Event, EventKind};
use snakepit_core::{Pool, WeakPool};

/// Reads one pool's figures for a gauge and hands each to `out`.
type Reader = fn(&Pool, out: &mut dyn FnMut(u64, &[KeyValue]));

/// Bucket bounds in seconds for call and wait durations: 50 us to 60 s.
const SECONDS: [f64; 19] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The pool's metrics: histograms and counters fed by its events
/// ([`PoolMetrics::record`], hooked by [`instrument`](crate::instrument)),
/// gauges read from the pools given to [`PoolMetrics::observe`] whenever
/// the meter provider collects.
///
/// | name | kind | unit | attributes |
/// |---|---|---|---|
/// | `snakepit.call.duration` | histogram | s | `pool`, `command`, `outcome` |
/// | `snakepit.call.queue_wait` | histogram | s | `pool`, `command` |
/// | `snakepit.worker.init.duration` | histogram | s | `pool` |
/// | `snakepit.worker.restarts` | counter | | `pool`, `reason` |
/// | `snakepit.worker.health_check.failures` | counter | | `pool` |
/// | `snakepit.breaker.opened` | counter | | `pool` |
/// | `snakepit.sweep.killed` | counter | | `pool` |
/// | `snakepit.queue.depth` | gauge | | `pool` |
/// | `snakepit.workers` | gauge | | `pool`, `state` (`idle`, `busy`) |
/// | `snakepit.calls.in_flight` | gauge | | `pool` |
/// | `snakepit.worker.memory` | gauge | By | `pool`, `worker` |
#[derive(Clone)]
pub struct PoolMetrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PoolMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolMetrics").finish_non_exhaustive()
    }
}

struct Inner {
    call_duration: Histogram<f64>,
    queue_wait: Histogram<f64>,
    init: Histogram<f64>,
    restarts: Counter<u64>,
    health_failures: Counter<u64>,
    breaker_opened: Counter<u64>,
    swept: Counter<u64>,
    /// Why each slot's worker went, learnt before its restart, so that the
    /// restart is counted under that reason.
    leaving: Mutex<HashMap<(String, usize), Leaving>>,
    pools: Arc<Mutex<Vec<Weak<WeakPool>>>>,
    _gauges: Vec<ObservableGauge<u64>>,
}

/// What is known, for one slot, of why its worker went; see
/// [`Leaving::reason`].
#[derive(Default)]
struct Leaving {
    /// A start failed. A restart follows at once, unless it was a recycled
    /// worker's replacement: that worker keeps serving, and whatever ends
    /// it later is the reason of its restart.
    start_failed: bool,
    /// The process whose health check failed: it is killed, and goes.
    health_check: Option<u32>,
}

impl Leaving {
    /// A ready worker ended (`WorkerExited`): a start failure before it was
    /// its replacement's, and a health check failure counts only if it was
    /// this process's.
    fn exited(&mut self, pid: u32) {
        self.start_failed = false;
        self.health_check = self.health_check.filter(|&p| p == pid);
    }

    /// The reason of the restart that follows.
    fn reason(&self) -> &'static str {
        if self.start_failed {
            "start_failed"
        } else if self.health_check.is_some() {
            "health_check"
        } else {
            "exited"
        }
    }
}

/// Keeps a pool's gauges reported; see [`PoolMetrics::observe`]. It does
/// not keep the pool alive: when your last `Pool` handle goes, the pool
/// ends and its gauges stop.
#[must_use = "the pool's gauges are reported only while this is kept"]
#[derive(Debug)]
pub struct Observation {
    _pool: Arc<WeakPool>,
}

impl PoolMetrics {
    /// The instruments, made on `meter`.
    pub fn new(meter: &Meter) -> Self {
        let pools: Arc<Mutex<Vec<Weak<WeakPool>>>> = Arc::default();
        let gauge =
            |name: &'static str, description: &'static str, unit: &'static str, read: Reader| {
                let pools = pools.clone();
                let mut b = meter
                    .u64_observable_gauge(name)
                    .with_description(description);
                if !unit.is_empty() {
                    b = b.with_unit(unit);
                }
                b.with_callback(move |obs| {
                    for pool in live(&pools) {
                        read(&pool, &mut |v, attrs| obs.observe(v, attrs));
                    }
                })
                .build()
            };
        let gauges = vec![
            gauge(
                "snakepit.queue.depth",
                "Calls waiting for a worker",
                "",
                |pool, out| out(pool.stats().queued as u64, &[pool_attr(pool)]),
            ),
            gauge(
                "snakepit.workers",
                "Ready workers, idle or busy",
                "",
                |pool, out| {
                    let s = pool.stats();
                    let p = pool_attr(pool);
                    out(
                        s.available as u64,
                        &[p.clone(), KeyValue::new("state", "idle")],
                    );
                    out(s.busy as u64, &[p, KeyValue::new("state", "busy")]);
                },
            ),
            gauge(
                "snakepit.calls.in_flight",
                "Calls running on workers",
                "",
                |pool, out| out(pool.stats().in_flight as u64, &[pool_attr(pool)]),
            ),
            gauge(
                "snakepit.worker.memory",
                "Resident memory of each worker process",
                "By",
                |pool, out| {
                    let p = pool_attr(pool);
                    for w in pool.workers() {
                        if let Some(rss) = w.rss_bytes {
                            out(rss, &[p.clone(), KeyValue::new("worker", w.slot as i64)]);
                        }
                    }
                },
            ),
        ];
        let histogram = |name: &'static str, description: &'static str| {
            meter
                .f64_histogram(name)
                .with_description(description)
                .with_unit("s")
                .with_boundaries(SECONDS.to_vec())
                .build()
        };
        let counter = |name: &'static str, description: &'static str| {
            meter
                .u64_counter(name)
                .with_description(description)
                .build()
        };
        PoolMetrics {
            inner: Arc::new(Inner {
                call_duration: histogram(
                    "snakepit.call.duration",
                    "Time from submission to the end of a call, queue wait included",
                ),
                queue_wait: histogram(
                    "snakepit.call.queue_wait",
                    "Time a call waited for a worker",
                ),
                init: histogram(
                    "snakepit.worker.init.duration",
                    "Time from a worker's start to the end of its handshake",
                ),
                restarts: counter(
                    "snakepit.worker.restarts",
                    "Workers started again, by the reason the previous one went away",
                ),
                health_failures: counter(
                    "snakepit.worker.health_check.failures",
                    "Health checks that failed",
                ),
                breaker_opened: counter(
                    "snakepit.breaker.opened",
                    "Times a slot's crash-loop breaker opened",
                ),
                swept: counter(
                    "snakepit.sweep.killed",
                    "Leftover worker processes of earlier runs killed at start",
                ),
                leaving: Mutex::default(),
                pools,
                _gauges: gauges,
            }),
        }
    }

    /// One set of instruments per process, made on the global meter
    /// provider the first time it is asked for: install telemetry
    /// ([`init`](crate::init)) before building pools.
    pub fn global() -> Self {
        static GLOBAL: OnceLock<PoolMetrics> = OnceLock::new();
        GLOBAL
            .get_or_init(|| PoolMetrics::new(&opentelemetry::global::meter("snakepit")))
            .clone()
    }

    /// Records one event: cheap enough for `PoolBuilder::on_event`.
    pub fn record(&self, event: &Event<'_>) {
        let m = &*self.inner;
        let pool = || KeyValue::new("pool", event.pool.to_owned());
        match &event.kind {
            EventKind::CallEnded {
                command,
                queue_wait,
                duration,
                outcome,
                ..
            } => {
                let (pool, command) = (pool(), KeyValue::new("command", command.to_string()));
                m.queue_wait
                    .record(queue_wait.as_secs_f64(), &[pool.clone(), command.clone()]);
                m.call_duration.record(
                    duration.as_secs_f64(),
                    &[pool, command, KeyValue::new("outcome", *outcome)],
                );
            }
            EventKind::WorkerReady { init, .. } => {
                m.init.record(init.as_secs_f64(), &[pool()]);
            }
            EventKind::WorkerStartFailed { worker, .. } => {
                m.leaving(event.pool, *worker, |l| l.start_failed = true);
            }
            EventKind::HealthCheckFailed { worker, pid } => {
                m.health_failures.add(1, &[pool()]);
                m.leaving(event.pool, *worker, |l| l.health_check = Some(*pid));
            }
            EventKind::WorkerExited { worker, pid, .. } => {
                m.leaving(event.pool, *worker, |l| l.exited(*pid));
            }
            EventKind::WorkerRecycled { reason, .. } => {
                // Its replacement starts at once, without a restart event.
                m.restarts.add(
                    1,
                    &[
                        pool(),
                        KeyValue::new("reason", format!("recycled_{reason}")),
                    ],
                );
            }
            EventKind::WorkerRestarting { worker, .. } => {
                let reason = m
                    .leaving
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&(event.pool.to_owned(), *worker))
                    .unwrap_or_default()
                    .reason();
                m.restarts
                    .add(1, &[pool(), KeyValue::new("reason", reason)]);
            }
            EventKind::BreakerOpened { .. } => m.breaker_opened.add(1, &[pool()]),
            EventKind::Swept { killed } => m.swept.add(*killed as u64, &[pool()]),
            _ => {}
        }
    }

    /// Reports `pool`'s gauges (queue depth, idle and busy workers, calls
    /// in flight, each worker's memory) while the returned guard is kept.
    pub fn observe(&self, pool: &Pool) -> Observation {
        let pool = Arc::new(pool.downgrade());
        let mut pools = self
            .inner
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pools.retain(|w| w.strong_count() > 0);
        pools.push(Arc::downgrade(&pool));
        Observation { _pool: pool }
    }
}

impl Inner {
    fn leaving(&self, pool: &str, worker: usize, learn: impl FnOnce(&mut Leaving)) {
        learn(
            self.leaving
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry((pool.to_owned(), worker))
                .or_default(),
        );
    }
}

fn live(pools: &Mutex<Vec<Weak<WeakPool>>>) -> Vec<Pool> {
    pools
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter_map(|w| w.upgrade()?.upgrade())
        .collect()
}

fn pool_attr(pool: &Pool) -> KeyValue {
    KeyValue::new("pool", pool.name().to_owned())
}
