//! telemetry.md, "Metrics": the instruments `PoolMetrics` makes, read back
//! through an SDK `MeterProvider` of the test's own (a `PeriodicReader`
//! whose exporter keeps what it is given, flushed on demand: no OTLP, no
//! receiver), fed by pools of real Python workers.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{kill, restart_worker, temp_dir};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};
use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::events::EventKind;
use snakepit_core::Pool;
use snakepit_telemetry::PoolMetrics;
use snakepit_tests::until;

/// What kind of instrument a metric came from, as telemetry.md's table
/// names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Histogram,
    Counter,
    Gauge,
    Other,
}

/// One data point: its attributes, its value (a histogram's count), and a
/// histogram's bucket bounds.
#[derive(Debug, Clone)]
struct Point {
    attrs: BTreeMap<String, String>,
    value: f64,
    bounds: Vec<f64>,
}

/// One metric of one collection.
#[derive(Debug, Clone)]
struct Metric {
    scope: String,
    name: String,
    unit: String,
    kind: Kind,
    points: Vec<Point>,
}

/// A push exporter that keeps the metrics of each collection.
#[derive(Clone, Default)]
struct Kept(Arc<Mutex<Vec<Vec<Metric>>>>);

impl Kept {
    /// The metrics of the last collection.
    fn last(&self) -> Vec<Metric> {
        self.0.lock().unwrap().last().cloned().unwrap_or_default()
    }
}

/// A point's value as `f64` (the counts here are small).
trait AsF64: Copy {
    fn as_f64(self) -> f64;
}

impl AsF64 for f64 {
    fn as_f64(self) -> f64 {
        self
    }
}

impl AsF64 for u64 {
    fn as_f64(self) -> f64 {
        self as f64
    }
}

fn points<T: AsF64>(data: &MetricData<T>) -> (Kind, Vec<Point>) {
    let attrs = |kvs: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
        kvs.map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect::<BTreeMap<_, _>>()
    };
    match data {
        MetricData::Histogram(h) => (
            Kind::Histogram,
            h.data_points()
                .map(|p| Point {
                    attrs: attrs(&mut p.attributes()),
                    value: p.count() as f64,
                    bounds: p.bounds().collect(),
                })
                .collect(),
        ),
        MetricData::Sum(s) if s.is_monotonic() => (
            Kind::Counter,
            s.data_points()
                .map(|p| Point {
                    attrs: attrs(&mut p.attributes()),
                    value: p.value().as_f64(),
                    bounds: Vec::new(),
                })
                .collect(),
        ),
        MetricData::Gauge(g) => (
            Kind::Gauge,
            g.data_points()
                .map(|p| Point {
                    attrs: attrs(&mut p.attributes()),
                    value: p.value().as_f64(),
                    bounds: Vec::new(),
                })
                .collect(),
        ),
        _ => (Kind::Other, Vec::new()),
    }
}

impl PushMetricExporter for Kept {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let mut kept = Vec::new();
        for scope in metrics.scope_metrics() {
            for m in scope.metrics() {
                let (kind, points) = match m.data() {
                    AggregatedMetrics::F64(d) => points(d),
                    AggregatedMetrics::U64(d) => points(d),
                    AggregatedMetrics::I64(_) => (Kind::Other, Vec::new()),
                };
                kept.push(Metric {
                    scope: scope.scope().name().to_owned(),
                    name: m.name().to_owned(),
                    unit: m.unit().to_owned(),
                    kind,
                    points,
                });
            }
        }
        self.0.lock().unwrap().push(kept);
        Ok(())
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

/// A meter provider of the test's own, and what its reader collects
/// (on `force_flush`; the periodic export is an hour away).
fn provider() -> (SdkMeterProvider, Kept) {
    let kept = Kept::default();
    let reader = PeriodicReader::builder(kept.clone())
        .with_interval(Duration::from_secs(3600))
        .build();
    (
        SdkMeterProvider::builder().with_reader(reader).build(),
        kept,
    )
}

/// The metric `name` of a collection.
fn metric<'a>(metrics: &'a [Metric], name: &str) -> Option<&'a Metric> {
    metrics.iter().find(|m| m.name == name)
}

/// The sum of `name`'s points that carry these attributes (for a
/// histogram, of their counts).
fn total(metrics: &[Metric], name: &str, attrs: &[(&str, &str)]) -> f64 {
    metric(metrics, name).map_or(0.0, |m| {
        m.points
            .iter()
            .filter(|p| {
                attrs
                    .iter()
                    .all(|(k, v)| p.attrs.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|p| p.value)
            .sum()
    })
}

/// What a listener of the test's own saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    CallEnded(&'static str),
    Ready(u32),
    StartFailed,
    Exited(u32),
    Restarting,
    HealthCheckFailed,
    BreakerOpened,
    Recycled,
    Swept(usize),
    Other,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A listener of the test's own, writing what it sees to `log`.
fn listener(log: &Log) -> impl Fn(&snakepit_core::events::Event<'_>) + Send + Sync {
    let sink = log.clone();
    let listen = move |e: &snakepit_core::events::Event<'_>| {
        let seen = match e.kind {
            EventKind::CallEnded { outcome, .. } => Seen::CallEnded(outcome),
            EventKind::WorkerReady { pid, .. } => Seen::Ready(pid),
            EventKind::WorkerStartFailed { .. } => Seen::StartFailed,
            EventKind::WorkerExited { pid, .. } => Seen::Exited(pid),
            EventKind::WorkerRestarting { .. } => Seen::Restarting,
            EventKind::HealthCheckFailed { .. } => Seen::HealthCheckFailed,
            EventKind::BreakerOpened { .. } => Seen::BreakerOpened,
            EventKind::WorkerRecycled { .. } => Seen::Recycled,
            EventKind::Swept { killed } => Seen::Swept(killed),
            _ => Seen::Other,
        };
        sink.lock().unwrap().push(seen);
    };
    listen
}

fn seen(log: &Log) -> Vec<Seen> {
    log.lock().unwrap().clone()
}

fn count(log: &Log, what: impl Fn(&Seen) -> bool) -> usize {
    log.lock().unwrap().iter().filter(|s| what(s)).count()
}

/// telemetry.md, Metrics: `snakepit.worker.restarts` is counted on
/// `WorkerRestarting` "with the reason the previous worker went: `exited`,
/// `health_check`, `start_failed`". A worker due for recycling whose
/// replacement cannot start keeps serving (reliability.md), and nothing
/// restarts then; when that worker is later SIGKILLed, its restart is
/// counted as `exited`, not as the failed replacement's `start_failed`.
/// The failed starts that follow (the script still refuses to start) are
/// `start_failed`, one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_after_its_replacement_failed_to_start_restarts_as_exited(
) -> anyhow::Result<()> {
    let (provider, kept) = provider();
    let metrics = PoolMetrics::new(&provider.meter("metrics-promises"));
    let dir = temp_dir("recycle");
    let marker = dir.join("fail");
    let log = Log::default();
    let m = metrics.clone();
    let pool = Pool::builder(Bridge::python(restart_worker()).env("FAIL_START_IF_EXISTS", &marker))
        .size(1)
        .name("recycle-failed")
        .configure(|c| {
            c.recycle_after_calls = 2;
            c.restart_backoff = Duration::from_millis(10);
            c.restart_backoff_max = Duration::from_millis(100);
            c.breaker_threshold = 1000;
        })
        .on_event(move |e| m.record(e))
        .on_event(listener(&log))
        .start()
        .await?;
    let old = pool.worker_pids()[0];
    // From now on no worker can start.
    std::fs::write(&marker, b"")?;
    for _ in 0..2 {
        let r = pool.execute("ping", json!({})).await?;
        assert_eq!(r["pid"].as_u64(), Some(u64::from(old)));
    }
    until(
        30,
        "the recycled worker's replacement fails to start",
        || async { count(&log, |s| *s == Seen::StartFailed) >= 1 },
    )
    .await;
    assert_eq!(pool.worker_pids(), vec![old], "the old worker serves on");
    assert_eq!(
        count(&log, |s| *s == Seen::Restarting),
        0,
        "nothing restarted: {:?}",
        seen(&log)
    );
    kill("KILL", old);
    // Its restart, then at least one failed start and its restart.
    until(
        30,
        "the killed worker's slot fails to start again",
        || async {
            let log = seen(&log);
            log.iter()
                .position(|s| *s == Seen::Exited(old))
                .is_some_and(|i| log[i..].iter().filter(|s| **s == Seen::Restarting).count() >= 2)
        },
    )
    .await;
    std::fs::remove_file(&marker)?;
    until(30, "a new worker serves", || async {
        pool.worker_pids().first().is_some_and(|&p| p != old)
    })
    .await;
    provider.force_flush()?;
    let got = kept.last();
    let restarts = count(&log, |s| *s == Seen::Restarting) as f64;
    let restarts_of = |reason: &str| {
        total(
            &got,
            "snakepit.worker.restarts",
            &[("pool", "recycle-failed"), ("reason", reason)],
        )
    };
    let all = metric(&got, "snakepit.worker.restarts");
    assert_eq!(restarts_of("exited"), 1.0, "{all:#?}\n{:?}", seen(&log));
    assert_eq!(
        restarts_of("start_failed"),
        restarts - 1.0,
        "{all:#?}\n{:?}",
        seen(&log)
    );
    assert_eq!(
        total(
            &got,
            "snakepit.worker.restarts",
            &[("pool", "recycle-failed")]
        ),
        restarts,
        "no other reason: {all:#?}"
    );
    pool.shutdown().await?;
    provider.shutdown()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A leftover of a crashed run of the pool `instance` in `state_dir`: a
/// process carrying the run's id in its environment, in a session of its
/// own, and the run's record, whose host is gone. The next pool of that
/// name starting there sweeps it (reliability.md).
#[allow(clippy::disallowed_methods)] // sh and true, stand-ins, not workers
fn a_crashed_run(state_dir: &Path, instance: &str) -> u32 {
    use std::os::unix::fs::MetadataExt;
    let run_id = format!("{:032x}", 0x5eed_0000_u128 + u128::from(std::process::id()));
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!",
        ])
        .env("SNAKEPIT_RUN_ID", &run_id)
        .output()
        .unwrap();
    let leftover: u32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let host = gone.id();
    gone.wait().unwrap();
    let ns = std::fs::metadata("/proc/self/ns/pid").unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    std::fs::write(
        state_dir.join(format!("{instance}.{host}.{run_id}.run")),
        format!(
            "snakepit-run 1\ninstance {instance}\nrun_id {run_id}\nhost {host} 1\npidns {} {}\nboot {}\n",
            ns.dev(),
            ns.ino(),
            boot.trim()
        ),
    )
    .unwrap();
    assert!(snakepit_tests::alive(leftover));
    leftover
}

/// Kills the stand-in leftover if the test ends before the sweep did.
struct Leftover(u32);

impl Drop for Leftover {
    fn drop(&mut self) {
        if snakepit_tests::alive(self.0) {
            kill("KILL", self.0);
        }
    }
}

/// telemetry.md, Metrics: "`PoolMetrics::new(&meter)` makes the same
/// instruments on a meter of your choice; `PoolMetrics::record` takes any
/// event, so it can sit beside your own listener." On a meter of the
/// test's own SDK provider, `record` in one listener and the test's own in
/// another, in two pools: one whose worker is frozen until its health
/// check fails; one that sweeps a leftover, takes calls (one failing), has
/// its worker killed and its slot then failing to start until the breaker
/// opens, and a worker again, observed. Every instrument of the table is
/// there, on that meter, with its kind, unit and attributes; histogram
/// buckets run from 50 us to 60 s; the counts are those of the events the
/// other listener saw, and the gauges those of the pool observed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_metrics_new_makes_the_documented_instruments_on_your_meter_beside_your_listener(
) -> anyhow::Result<()> {
    let (provider, kept) = provider();
    let metrics = PoolMetrics::new(&provider.meter("my-meter"));
    let dir = temp_dir("beside");
    let state = dir.join("state");
    std::fs::create_dir_all(&state)?;
    let leftover = Leftover(a_crashed_run(&state, "beside"));
    let marker = dir.join("fail");
    let log = Log::default();
    // Two pools, each with `record` and the test's own listener: one of
    // them frozen (SIGSTOP) until its health check fails and it is
    // replaced.
    let m = metrics.clone();
    let frozen = Pool::builder(Bridge::python(restart_worker()))
        .size(1)
        .name("frozen")
        .configure(|c| {
            c.health_check_interval = Duration::from_millis(100);
            c.health_check_timeout = Duration::from_millis(500);
        })
        .on_event(move |e| m.record(e))
        .on_event(listener(&log))
        .start()
        .await?;
    let stopped = frozen.worker_pids()[0];
    kill("STOP", stopped);
    until(30, "the frozen worker is replaced", || async {
        frozen.worker_pids().first().is_some_and(|&p| p != stopped)
    })
    .await;
    frozen.shutdown().await?;

    // The other sweeps a leftover, takes calls (one failing), and has a
    // worker killed whose slot then fails to start until its breaker
    // opens, then a worker again.
    let m = metrics.clone();
    let pool = Pool::builder(Bridge::python(restart_worker()).env("FAIL_START_IF_EXISTS", &marker))
        .size(1)
        .name("beside")
        .configure(|c| {
            c.state_dir = Some(state.clone());
            c.breaker_threshold = 1;
            c.breaker_cooldown = Duration::from_millis(300);
            c.restart_backoff = Duration::from_millis(10);
            c.restart_backoff_max = Duration::from_millis(50);
        })
        .on_event(move |e| m.record(e))
        .on_event(listener(&log))
        .start()
        .await?;
    let _observed = metrics.observe(&pool);
    until(10, "the leftover is swept", || async {
        !snakepit_tests::alive(leftover.0)
    })
    .await;

    for _ in 0..3 {
        pool.execute("ping", json!({})).await?;
    }
    let failed = pool
        .execute("no_such_command", json!({}))
        .await
        .expect_err("an unknown command fails");

    std::fs::write(&marker, b"")?;
    let killed = pool.worker_pids()[0];
    kill("KILL", killed);
    until(30, "a start fails and the breaker opens", || async {
        let log = seen(&log);
        log.contains(&Seen::BreakerOpened)
            && log
                .iter()
                .position(|s| *s == Seen::StartFailed)
                .is_some_and(|i| log[i..].contains(&Seen::Restarting))
    })
    .await;
    std::fs::remove_file(&marker)?;
    until(30, "a worker serves again", || async {
        pool.worker_pids().first().is_some_and(|&p| p != killed)
    })
    .await;
    pool.execute("ping", json!({})).await?;

    provider.force_flush()?;
    let got = kept.last();
    let log = seen(&log);
    let table: [(&str, Kind, &str, &[&str]); 11] = [
        (
            "snakepit.call.duration",
            Kind::Histogram,
            "s",
            &["pool", "command", "outcome"],
        ),
        (
            "snakepit.call.queue_wait",
            Kind::Histogram,
            "s",
            &["pool", "command"],
        ),
        (
            "snakepit.worker.init.duration",
            Kind::Histogram,
            "s",
            &["pool"],
        ),
        (
            "snakepit.worker.restarts",
            Kind::Counter,
            "",
            &["pool", "reason"],
        ),
        (
            "snakepit.worker.health_check.failures",
            Kind::Counter,
            "",
            &["pool"],
        ),
        ("snakepit.breaker.opened", Kind::Counter, "", &["pool"]),
        ("snakepit.sweep.killed", Kind::Counter, "", &["pool"]),
        ("snakepit.queue.depth", Kind::Gauge, "", &["pool"]),
        ("snakepit.workers", Kind::Gauge, "", &["pool", "state"]),
        ("snakepit.calls.in_flight", Kind::Gauge, "", &["pool"]),
        (
            "snakepit.worker.memory",
            Kind::Gauge,
            "By",
            &["pool", "worker"],
        ),
    ];
    for (name, kind, unit, attrs) in table {
        let Some(m) = metric(&got, name) else {
            panic!(
                "{name} was not collected; got {:?}",
                got.iter().map(|m| &m.name).collect::<Vec<_>>()
            )
        };
        assert_eq!(m.scope, "my-meter", "{name}");
        assert_eq!((m.kind, m.unit.as_str()), (kind, unit), "{name}");
        assert!(!m.points.is_empty(), "{name}");
        for p in &m.points {
            let keys: Vec<&str> = p.attrs.keys().map(String::as_str).collect();
            let mut want = attrs.to_vec();
            want.sort_unstable();
            assert_eq!(keys, want, "{name}: {p:?}");
            assert!(
                ["beside", "frozen"].contains(&p.attrs["pool"].as_str()),
                "{name}: {p:?}"
            );
            if kind == Kind::Histogram {
                assert_eq!(p.bounds.first(), Some(&0.00005), "{name}");
                assert_eq!(p.bounds.last(), Some(&60.0), "{name}");
                assert!(p.bounds.windows(2).all(|w| w[0] < w[1]), "{name}");
            }
        }
    }
    assert_eq!(
        got.iter()
            .filter(|m| m.name.starts_with("snakepit."))
            .count(),
        table.len(),
        "{:?}",
        got.iter().map(|m| &m.name).collect::<Vec<_>>()
    );

    // The values: those of the events the other listener saw.
    let ended = |ok: bool| {
        log.iter()
            .filter(|s| matches!(s, Seen::CallEnded(o) if (*o == "ok") == ok))
            .count() as f64
    };
    assert_eq!(ended(true), 4.0, "{log:?}");
    assert_eq!(ended(false), 1.0, "{log:?}");
    let outcomes: BTreeSet<&str> = metric(&got, "snakepit.call.duration")
        .unwrap()
        .points
        .iter()
        .map(|p| p.attrs["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, BTreeSet::from(["ok", failed.kind()]));
    assert_eq!(
        total(
            &got,
            "snakepit.call.duration",
            &[("command", "ping"), ("outcome", "ok")]
        ),
        4.0
    );
    assert_eq!(
        total(
            &got,
            "snakepit.call.duration",
            &[("command", "no_such_command"), ("outcome", failed.kind())]
        ),
        1.0
    );
    assert_eq!(total(&got, "snakepit.call.queue_wait", &[]), 5.0);
    let n = |what: fn(&Seen) -> bool| log.iter().filter(|s| what(s)).count() as f64;
    assert_eq!(
        total(&got, "snakepit.worker.init.duration", &[]),
        n(|s| matches!(s, Seen::Ready(_))),
        "{log:?}"
    );
    assert_eq!(
        total(&got, "snakepit.worker.restarts", &[]),
        n(|s| matches!(s, Seen::Restarting | Seen::Recycled)),
        "{log:?}"
    );
    let reasons = |pool: &str| -> BTreeSet<&str> {
        metric(&got, "snakepit.worker.restarts")
            .unwrap()
            .points
            .iter()
            .filter(|p| p.attrs["pool"] == pool)
            .map(|p| p.attrs["reason"].as_str())
            .collect()
    };
    assert_eq!(reasons("frozen"), BTreeSet::from(["health_check"]));
    assert_eq!(
        reasons("beside"),
        BTreeSet::from(["exited", "start_failed"])
    );
    assert_eq!(
        total(&got, "snakepit.worker.health_check.failures", &[]),
        n(|s| *s == Seen::HealthCheckFailed),
        "{log:?}"
    );
    assert_eq!(
        total(&got, "snakepit.breaker.opened", &[]),
        n(|s| *s == Seen::BreakerOpened),
        "{log:?}"
    );
    assert_eq!(total(&got, "snakepit.sweep.killed", &[]), 1.0);
    assert!(log.contains(&Seen::Swept(1)), "{log:?}");
    // The gauges, of the pool observed: one worker, idle, nothing queued
    // or running, its memory.
    for gauge in [
        "snakepit.queue.depth",
        "snakepit.workers",
        "snakepit.calls.in_flight",
        "snakepit.worker.memory",
    ] {
        let pools: BTreeSet<&str> = metric(&got, gauge)
            .unwrap()
            .points
            .iter()
            .map(|p| p.attrs["pool"].as_str())
            .collect();
        assert_eq!(pools, BTreeSet::from(["beside"]), "{gauge}");
    }
    assert_eq!(total(&got, "snakepit.workers", &[("state", "idle")]), 1.0);
    assert_eq!(total(&got, "snakepit.workers", &[("state", "busy")]), 0.0);
    assert_eq!(total(&got, "snakepit.queue.depth", &[]), 0.0);
    assert_eq!(total(&got, "snakepit.calls.in_flight", &[]), 0.0);
    assert!(total(&got, "snakepit.worker.memory", &[("worker", "0")]) > 1e6);

    pool.shutdown().await?;
    provider.shutdown()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
