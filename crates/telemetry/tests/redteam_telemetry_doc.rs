//! Red-team tests of docs/telemetry.md read as a user: a traces-only
//! receiver (an OTLP/HTTP server that answers 404 to `/v1/metrics`) in the
//! short-lived mode, set up from `OTEL_*` variables as the `snakepit`
//! command does, and with metrics exported on a timer; a receiver that
//! refuses traces too (that is an export failure, not a receiver without
//! metrics); and a dead receiver in the short-lived mode. Each test runs in
//! a process of its own (`init` installs process-wide state), against a
//! plain loopback receiver (`common/http.rs`) in that process.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{in_own_process, Answer, Receiver};
use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::Pool;
use snakepit_telemetry::{Error, Telemetry};
use tracing::{Instrument, Level};

/// Traces taken, metrics refused with 404 (no metrics endpoint).
fn traces_only() -> Receiver {
    Receiver::start(|path| match path {
        "/v1/metrics" => Answer::Status(404),
        _ => Answer::Status(200),
    })
}

fn count_one() {
    opentelemetry::global::meter("redteam-doc")
        .u64_counter("redteam.doc.count")
        .build()
        .add(1, &[]);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn test_worker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/workers/test_worker.py")
}

/// The short-lived end's documented bound: "A receiver that takes the
/// connection and never answers costs the end at most 1.5 s". One that
/// answers at once costs less; the margin is for a loaded machine.
const SHORT_LIVED_END: Duration = Duration::from_millis(1500);

/// telemetry.md: "A receiver that does not take metrics at all (HTTP 404
/// ...) is not an error: a warning says so once and metrics stop", with
/// `.short_lived(true)`, where "traces and metrics are flushed side by side
/// at the end": the metrics' first (and only) export is at shutdown.
/// `shutdown` is `Ok`, within the short-lived bound, the spans arrived,
/// one metrics export was tried, and one warning says so.
#[test]
fn a_short_lived_program_ends_ok_and_promptly_against_a_traces_only_receiver() {
    if let Some(stderr) = in_own_process(
        "a_short_lived_program_ends_ok_and_promptly_against_a_traces_only_receiver",
        &[],
    ) {
        assert_eq!(
            stderr.matches("does not take metrics").count(),
            1,
            "one warning: {stderr}"
        );
        return;
    }
    let receiver = traces_only();
    let guard = Telemetry::new()
        .endpoint(receiver.base())
        .stderr_level(Level::WARN)
        .short_lived(true)
        .init()
        .unwrap();
    drop(tracing::info_span!("short.lived.traces.only").entered());
    count_one();
    let started = Instant::now();
    guard
        .shutdown()
        .expect("a refusal of metrics is not an error");
    let took = started.elapsed();
    assert!(took < SHORT_LIVED_END, "shutdown took {took:?}");
    assert!(receiver.got("/v1/traces", "short.lived.traces.only"));
    assert_eq!(receiver.requests("/v1/metrics").len(), 1);
}

/// The `snakepit` command's way ("`Telemetry::new().short_lived(true)
/// .init_if_configured()`", installed when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// is set) against a traces-only receiver, with a real pool wired as the
/// quick start shows (`instrument`, `observe`) and a call made in a span:
/// the pool and the telemetry shut down without error and within the
/// short-lived bound, the call's `snakepit.call` span arrived, and metrics
/// were tried once.
#[test]
fn from_the_environment_a_pool_program_ends_ok_against_a_traces_only_receiver() {
    if let Some(stderr) = in_own_process(
        "from_the_environment_a_pool_program_ends_ok_against_a_traces_only_receiver",
        &[("OTEL_SERVICE_NAME", "redteam-doc")],
    ) {
        assert_eq!(
            stderr.matches("does not take metrics").count(),
            1,
            "one warning: {stderr}"
        );
        return;
    }
    let receiver = traces_only();
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.base());
    let guard = Telemetry::new()
        .short_lived(true)
        .init_if_configured()
        .unwrap()
        .expect("the endpoint variable installs");
    runtime().block_on(async {
        let pool = snakepit_telemetry::instrument(
            Pool::builder(Bridge::python(test_worker()))
                .size(1)
                .name("traces-only"),
        )
        .start()
        .await
        .unwrap();
        let gauges = snakepit_telemetry::observe(&pool);
        pool.execute("echo", json!({"n": 1}))
            .instrument(tracing::info_span!("caller.request"))
            .await
            .unwrap();
        drop(gauges);
        pool.shutdown().await.unwrap();
    });
    let started = Instant::now();
    guard
        .shutdown()
        .expect("a refusal of metrics is not an error");
    let took = started.elapsed();
    assert!(took < SHORT_LIVED_END, "shutdown took {took:?}");
    assert!(receiver.got("/v1/traces", "snakepit.call"));
    assert!(receiver.got("/v1/traces", "caller.request"));
    assert!(
        receiver.got("/v1/traces", "redteam-doc"),
        "the service name"
    );
    assert_eq!(receiver.requests("/v1/metrics").len(), 1);
}

/// Metrics exported on a timer (`metrics_interval`, 100 ms): the refusal
/// comes in the background, long before the end. Metrics stop (no second
/// request in the second that follows, ten intervals), spans still go,
/// `flush` and `shutdown` are `Ok`, and the end does not wait for the
/// export timeout (10 s by default).
#[test]
fn a_refusal_of_metrics_on_the_timer_stops_metrics_and_leaves_the_end_alone() {
    if let Some(stderr) = in_own_process(
        "a_refusal_of_metrics_on_the_timer_stops_metrics_and_leaves_the_end_alone",
        &[],
    ) {
        assert_eq!(
            stderr.matches("does not take metrics").count(),
            1,
            "one warning: {stderr}"
        );
        return;
    }
    let receiver = traces_only();
    let guard = Telemetry::new()
        .endpoint(receiver.base())
        .stderr_level(Level::WARN)
        .metrics_interval(Duration::from_millis(100))
        .init()
        .unwrap();
    count_one();
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.requests("/v1/metrics").is_empty() {
        assert!(Instant::now() < deadline, "no metrics export was tried");
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..10 {
        count_one();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(receiver.requests("/v1/metrics").len(), 1, "metrics stop");
    drop(tracing::info_span!("after.the.refusal").entered());
    guard.flush().expect("a refusal of metrics is not an error");
    assert!(receiver.got("/v1/traces", "after.the.refusal"));
    count_one();
    let started = Instant::now();
    guard.shutdown().expect("nor at the end");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    assert_eq!(receiver.requests("/v1/metrics").len(), 1, "metrics stop");
}

/// Only a refusal of *metrics* is "not an error": a receiver that answers
/// 404 to traces as well drops the spans, and "`Guard::flush` and
/// `Guard::shutdown` return `Error::Flush` saying how many spans ... were
/// dropped, where to, and why".
#[test]
fn a_receiver_that_refuses_traces_too_is_a_flush_error_naming_the_spans() {
    if in_own_process(
        "a_receiver_that_refuses_traces_too_is_a_flush_error_naming_the_spans",
        &[],
    )
    .is_some()
    {
        return;
    }
    let receiver = Receiver::start(|_| Answer::Status(404));
    let guard = Telemetry::new()
        .endpoint(receiver.base())
        .stderr_logs(None)
        .short_lived(true)
        .init()
        .unwrap();
    drop(tracing::info_span!("refused.span").entered());
    count_one();
    match guard.shutdown() {
        Err(Error::Flush(msg)) => {
            let what = format!("dropped 1 span that {}/v1/traces", receiver.base());
            assert!(msg.contains(&what), "{msg}");
            assert!(msg.contains("404"), "why: {msg}");
            assert!(!msg.contains("metrics"), "metrics are not an error: {msg}");
        }
        other => panic!("expected Error::Flush, got {other:?}"),
    }
    assert!(receiver.got("/v1/traces", "refused.span"), "it was tried");
}

/// A dead receiver (nothing listens) in the short-lived mode, set from the
/// environment as the `snakepit` command does: pool calls succeed, and the
/// end is `Error::Flush` naming both signals and `Connection refused`,
/// within the short-lived bound (each export "tried once, without retries
/// and their backoff").
#[test]
fn a_short_lived_program_ends_promptly_against_a_dead_receiver() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    if in_own_process(
        "a_short_lived_program_ends_promptly_against_a_dead_receiver",
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &base)],
    )
    .is_some()
    {
        return;
    }
    let base = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").unwrap();
    let guard = Telemetry::new()
        .stderr_logs(None)
        .short_lived(true)
        .init_if_configured()
        .unwrap()
        .expect("the endpoint variable installs");
    runtime().block_on(async {
        let pool = snakepit_telemetry::instrument(
            Pool::builder(Bridge::python(test_worker()))
                .size(1)
                .name("dead-receiver"),
        )
        .start()
        .await
        .unwrap();
        for i in 0..3 {
            pool.execute("echo", json!({"i": i}))
                .instrument(tracing::info_span!("caller.request"))
                .await
                .unwrap();
        }
        pool.shutdown().await.unwrap();
    });
    let started = Instant::now();
    match guard.shutdown() {
        Err(Error::Flush(msg)) => {
            assert!(msg.contains(&format!("{base}/v1/traces")), "{msg}");
            assert!(msg.contains(&format!("{base}/v1/metrics")), "{msg}");
            assert!(msg.contains("Connection refused"), "{msg}");
        }
        other => panic!("expected Error::Flush, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(took < SHORT_LIVED_END, "shutdown took {took:?}");
}

/// telemetry.md, `OTEL_EXPORTER_OTLP_ENDPOINT`: "the receiver's base URL;
/// for HTTP, `/v1/traces` and `/v1/metrics` are appended". A base with a
/// path of its own and a trailing slash (`http://host:port/otlp/`, as a
/// collector behind a proxy has) gets `/otlp/v1/traces` and
/// `/otlp/v1/metrics`, nothing else (no `//`); and what `Guard::shutdown`
/// says was dropped names the URL that was really tried.
#[test]
fn an_endpoint_with_a_path_and_a_trailing_slash_gets_the_signal_paths_appended() {
    if in_own_process(
        "an_endpoint_with_a_path_and_a_trailing_slash_gets_the_signal_paths_appended",
        &[],
    )
    .is_some()
    {
        return;
    }
    // Taken where the doc says, refused (503, dropped) anywhere else.
    let receiver = Receiver::start(|path| match path {
        "/otlp/v1/traces" | "/otlp/v1/metrics" => Answer::Status(200),
        _ => Answer::Status(503),
    });
    std::env::set_var(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("{}/otlp/", receiver.base()),
    );
    let guard = Telemetry::new()
        .stderr_logs(None)
        .short_lived(true)
        .init_if_configured()
        .unwrap()
        .expect("the endpoint variable installs");
    drop(tracing::info_span!("under.a.path").entered());
    count_one();
    let r = guard.shutdown();
    let paths = receiver.paths();
    assert!(
        receiver.got("/otlp/v1/traces", "under.a.path"),
        "{paths:?}, {r:?}"
    );
    assert!(
        receiver.got("/otlp/v1/metrics", "redteam.doc.count"),
        "{paths:?}, {r:?}"
    );
    assert!(r.is_ok(), "{r:?} ({paths:?})");
}

/// The same in code (`Telemetry::endpoint`, "the receiver's base URL"),
/// with a path and a trailing slash.
#[test]
fn a_code_endpoint_with_a_path_and_a_trailing_slash_gets_the_signal_paths_appended() {
    if in_own_process(
        "a_code_endpoint_with_a_path_and_a_trailing_slash_gets_the_signal_paths_appended",
        &[],
    )
    .is_some()
    {
        return;
    }
    let receiver = Receiver::start(|path| match path {
        "/otlp/v1/traces" | "/otlp/v1/metrics" => Answer::Status(200),
        _ => Answer::Status(503),
    });
    let guard = Telemetry::new()
        .endpoint(format!("{}/otlp/", receiver.base()))
        .stderr_logs(None)
        .short_lived(true)
        .init()
        .unwrap();
    drop(tracing::info_span!("under.a.path").entered());
    count_one();
    let r = guard.shutdown();
    let paths = receiver.paths();
    assert!(r.is_ok(), "{r:?} ({paths:?})");
    assert!(receiver.got("/otlp/v1/traces", "under.a.path"), "{paths:?}");
    assert!(
        receiver.got("/otlp/v1/metrics", "redteam.doc.count"),
        "{paths:?}"
    );
}
