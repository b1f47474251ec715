//! telemetry.md, "Environment": `OTEL_TRACES_EXPORTER`,
//! `OTEL_METRICS_EXPORTER`: "`otlp` or `none` (that signal is not
//! exported)". With both `none` and an endpoint set to a live receiver
//! (Rotel), a program written as the quick start says starts no exporter
//! thread, makes its calls, shuts down cleanly, and the receiver gets
//! nothing; with `otlp` (the control) the same program starts both
//! exporters and the receiver gets its spans and metrics.
//!
//! `init` reads the environment and installs process-wide state, so the
//! program runs in a process of its own (this test binary, run again for
//! `program`); a second one sends a marker span and metric, so that
//! "nothing arrived" is read once everything sent before the marker has.

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::Pool;
use tracing::Instrument;

const MODE: &str = "SNAKEPIT_EXPORTER_NONE_MODE";

/// The names of this process's OpenTelemetry exporter threads (the SDK's
/// `OpenTelemetry.Traces.BatchProcessor` and
/// `OpenTelemetry.Metrics.PeriodicReader`, cut to 15 bytes by Linux).
fn exporter_threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .filter(|n| n.starts_with("OpenTelemetry"))
        .collect();
    names.sort();
    names
}

/// How many threads this process has.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .count()
}

/// Not a test of its own: the program, run again by the tests with
/// `SNAKEPIT_EXPORTER_NONE_MODE` set (`none`, `otlp` or `marker`).
#[test]
fn program() {
    let Ok(mode) = std::env::var(MODE) else {
        return;
    };
    if mode == "marker" {
        let guard = snakepit_telemetry::Telemetry::new()
            .service_name("marker")
            .stderr_logs(None)
            .init()
            .unwrap();
        tracing::info_span!("marker").in_scope(|| {});
        opentelemetry::global::meter("marker")
            .u64_counter("marker.count")
            .build()
            .add(1, &[]);
        guard.shutdown().unwrap();
        return;
    }
    let threads_before = threads();
    let guard = snakepit_telemetry::init().expect("init with the exporters chosen");
    let on = mode == "otlp";
    assert_eq!(
        format!("{guard:?}"),
        format!("Guard {{ traces: {on}, metrics: {on} }}")
    );
    if on {
        // A new thread names itself once it runs: wait for both names.
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while exporter_threads() != ["OpenTelemetry.M", "OpenTelemetry.T"] {
            assert!(
                std::time::Instant::now() < until,
                "both exporters run: {:?}",
                exporter_threads()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    } else {
        assert_eq!(threads(), threads_before, "init started no thread at all");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workers/context_worker.py");
        let pool = snakepit_telemetry::instrument(
            Pool::builder(Bridge::python(script)).size(1).name("quiet"),
        )
        .start()
        .await
        .unwrap();
        let gauges = snakepit_telemetry::observe(&pool);
        let r = pool
            .execute("context", json!({}))
            .instrument(tracing::info_span!("program.request"))
            .await
            .unwrap();
        assert!(r.is_object(), "{r}");
        guard.flush().unwrap();
        drop(gauges);
        pool.shutdown().await.unwrap();
    });
    guard.shutdown().expect("a clean shutdown");
    // The exporters' threads end after the shutdown (a thread told to stop
    // may still be on its way out).
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !exporter_threads().is_empty() {
        assert!(
            std::time::Instant::now() < until,
            "left running: {:?}",
            exporter_threads()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs [`program`] in `mode` with the receiver's endpoint and `env`.
fn run(mode: &str, endpoint: &str, env: &[(&str, &str)]) {
    let mut cmd = snakepit_tests::this_test("program");
    for var in common::OTEL_VARS {
        cmd.env_remove(var);
    }
    cmd.env(MODE, mode)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the {mode} run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What Rotel received once the marker's span and metric arrived: the span
/// names and the metric names, without the marker's.
fn received_before_marker(rotel: &common::Rotel) -> (Vec<String>, Vec<String>) {
    let (spans, arrived) = rotel.wait_for(Duration::from_secs(20), |spans, out| {
        spans.iter().any(|s| s.name == "marker") && out.contains("Name: marker.count\n")
    });
    let out = rotel.output();
    assert!(arrived, "the marker never arrived:\n{out}");
    let spans = spans
        .into_iter()
        .map(|s| s.name)
        .filter(|n| n != "marker")
        .collect();
    let metrics = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("-> Name: "))
        .filter(|n| *n != "marker.count")
        .map(str::to_owned)
        .collect();
    (spans, metrics)
}

#[test]
fn none_exports_nothing_and_starts_no_exporter() -> anyhow::Result<()> {
    if std::env::var_os(MODE).is_some() {
        return Ok(());
    }
    let rotel = common::Rotel::start()?;
    run(
        "none",
        &rotel.http_base(),
        &[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ],
    );
    run("marker", &rotel.http_base(), &[]);
    let (spans, metrics) = received_before_marker(&rotel);
    assert!(spans.is_empty(), "spans were exported: {spans:?}");
    assert!(metrics.is_empty(), "metrics were exported: {metrics:?}");
    Ok(())
}

/// The control: the same program with `otlp` exports spans and metrics to
/// the same receiver, so the check above would see them.
#[test]
fn otlp_exports_both_signals() -> anyhow::Result<()> {
    if std::env::var_os(MODE).is_some() {
        return Ok(());
    }
    let rotel = common::Rotel::start()?;
    run(
        "otlp",
        &rotel.http_base(),
        &[
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_METRICS_EXPORTER", "otlp"),
        ],
    );
    run("marker", &rotel.http_base(), &[]);
    let (spans, metrics) = received_before_marker(&rotel);
    assert!(
        spans.iter().any(|s| s == "program.request") && spans.iter().any(|s| s == "snakepit.call"),
        "{spans:?}"
    );
    assert!(
        metrics.iter().any(|m| m == "snakepit.call.duration"),
        "{metrics:?}"
    );
    Ok(())
}
