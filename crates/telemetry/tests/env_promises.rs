//! More of what docs/telemetry.md promises, each shown against real
//! processes: what `Guard::shutdown` says when the receiver is down, the
//! `OTEL_*` variables of the environment table (headers, resource
//! attributes, sampling, metric export interval, span batching), the buckets of
//! `snakepit.call.duration` and the `RUST_LOG` filter of the stderr logs.
//!
//! `init` installs process-wide state and reads the environment, so each
//! test runs in a process of its own (this test binary, started again for
//! that one test, with its variables set there).

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{in_own_process, Receiver, Rotel};
use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::{CallOptions, Pool};
use snakepit_telemetry::{Error, Telemetry};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A plain OTLP/HTTP receiver, and telemetry set up from the environment
/// to export to it (no stderr logs).
fn exporting_to_a_receiver() -> (Receiver, snakepit_telemetry::Guard) {
    let receiver = Receiver::ok();
    let guard = Telemetry::new()
        .endpoint(receiver.base())
        .stderr_logs(None)
        .init()
        .unwrap();
    (receiver, guard)
}

/// A loopback port where nothing listens.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn traced_worker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workers/traced_worker.py")
}

/// telemetry.md: "what could not be delivered is dropped, and
/// `Guard::flush` and `Guard::shutdown` return `Error::Flush` saying how
/// many spans (or metrics exports) were dropped, where to, and why".
#[test]
fn shutdown_against_a_dead_receiver_says_what_was_dropped_where_and_why() {
    let port = closed_port().to_string();
    if in_own_process(
        "shutdown_against_a_dead_receiver_says_what_was_dropped_where_and_why",
        &[("DEAD_PORT", &port)],
    )
    .is_some()
    {
        return;
    }
    let port = std::env::var("DEAD_PORT").unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let guard = Telemetry::new()
        .service_name("dead-receiver")
        .endpoint(&base)
        .stderr_logs(None)
        .init()
        .unwrap();
    for i in 0..3 {
        let span = tracing::info_span!("doomed", i);
        drop(span.entered());
    }
    opentelemetry::global::meter("probe")
        .u64_counter("probe.count")
        .build()
        .add(1, &[]);
    match guard.shutdown() {
        Err(Error::Flush(msg)) => {
            let traces = format!("traces: dropped 3 spans that {base}/v1/traces could not take");
            let metrics =
                format!("metrics: dropped 1 metrics export that {base}/v1/metrics could not take");
            assert!(msg.contains(&traces), "{msg}");
            assert!(msg.contains(&metrics), "{msg}");
            assert!(msg.contains("Connection refused"), "the cause: {msg}");
        }
        other => panic!("expected Error::Flush, got {other:?}"),
    }
}

/// telemetry.md: "`OTEL_EXPORTER_OTLP_HEADERS`: `key=value,...` sent with
/// every export (API keys)". Rotel does not print request headers, so the
/// receiver here is a plain HTTP listener that keeps them: both signals'
/// exports carry both headers.
#[test]
fn otlp_headers_from_the_environment_reach_the_receiver() {
    if in_own_process(
        "otlp_headers_from_the_environment_reach_the_receiver",
        &[(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "x-api-key=s3cret-key,x-tenant=acme",
        )],
    )
    .is_some()
    {
        return;
    }
    let (receiver, guard) = exporting_to_a_receiver();
    drop(tracing::info_span!("with.headers").entered());
    opentelemetry::global::meter("probe")
        .u64_counter("probe.count")
        .build()
        .add(1, &[]);
    guard.shutdown().expect("the receiver took everything");
    let heads: Vec<String> = receiver.all().into_iter().map(|r| r.head).collect();
    for path in ["/v1/traces", "/v1/metrics"] {
        let head = heads
            .iter()
            .find(|h| h.starts_with(&format!("POST {path} ")))
            .unwrap_or_else(|| panic!("no export to {path}: {heads:?}"));
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("\r\nx-api-key: s3cret-key\r\n"), "{head}");
        assert!(lower.contains("\r\nx-tenant: acme\r\n"), "{head}");
    }
}

/// telemetry.md: "`OTEL_RESOURCE_ATTRIBUTES`: more resource attributes,
/// `key=value,...`". Both arrive at Rotel with the spans and the metrics,
/// next to the service name set in code.
#[test]
fn resource_attributes_from_the_environment_arrive() {
    if in_own_process(
        "resource_attributes_from_the_environment_arrive",
        &[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=staging,team=snakes",
        )],
    )
    .is_some()
    {
        return;
    }
    let rotel = Rotel::start().unwrap();
    let guard = Telemetry::new()
        .service_name("resourceful")
        .endpoint(rotel.http_base())
        .stderr_logs(None)
        .init()
        .unwrap();
    drop(tracing::info_span!("with.resource").entered());
    opentelemetry::global::meter("probe")
        .u64_counter("probe.count")
        .build()
        .add(1, &[]);
    guard.shutdown().unwrap();
    let (_, arrived) = rotel.wait_for(Duration::from_secs(20), |spans, out| {
        spans.iter().any(|s| s.name == "with.resource") && out.contains("Name: probe.count\n")
    });
    let out = rotel.output();
    assert!(arrived, "nothing arrived:\n{out}");
    let resources: Vec<&str> = out
        .split("Resource attributes:")
        .skip(1)
        .map(|r| r.split("Scope").next().unwrap_or(r))
        .collect();
    assert!(resources.len() >= 2, "traces and metrics: {out}");
    for r in resources {
        assert!(r.contains("-> service.name: Str(resourceful)"), "{r}");
        assert!(r.contains("-> deployment.environment: Str(staging)"), "{r}");
        assert!(r.contains("-> team: Str(snakes)"), "{r}");
    }
}

/// telemetry.md, "Cost": with `OTEL_TRACES_SAMPLER=parentbased_traceidratio`
/// "spans left out are still opened, but never exported, and the worker's
/// spans follow the sampling flag"; "the metrics stay exact either way".
/// With a ratio of 0.0 a call through an instrumented pool exports no span
/// from the host and none from the Python worker (which inherits the
/// variables); its metrics arrive. The control, in the same processes: a
/// call whose `CallOptions::traceparent` is sampled gets the worker's spans
/// through.
#[test]
fn ratio_zero_exports_no_span_from_the_host_nor_the_worker() {
    if in_own_process(
        "ratio_zero_exports_no_span_from_the_host_nor_the_worker",
        &[
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.0"),
        ],
    )
    .is_some()
    {
        return;
    }
    let rotel = Rotel::start().unwrap();
    let guard = Telemetry::new()
        .service_name("sampled-out")
        .endpoint(rotel.http_base())
        .stderr_logs(None)
        .init()
        .unwrap();
    let sampled_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    runtime().block_on(async {
        let adapter =
            Bridge::python(traced_worker()).env("OTEL_EXPORTER_OTLP_ENDPOINT", rotel.http_base());
        let pool = snakepit_telemetry::instrument(Pool::builder(adapter).size(1).name("sampling"))
            .start()
            .await
            .unwrap();
        let root = tracing::info_span!("sampled.out.request");
        let reply =
            tracing::Instrument::instrument(pool.execute("traced", json!({"token": "t"})), root)
                .await
                .unwrap();
        // The worker was told: the trace context it got is not sampled.
        let tp = reply["traceparent"]
            .as_str()
            .expect("a traceparent reached the handler");
        assert!(tp.ends_with("-00"), "not sampled: {tp}");
        let unsampled_trace = tp.split('-').nth(1).unwrap().to_owned();

        // The control: a sampled parent from outside.
        let sampled = format!("00-{sampled_trace}-00f067aa0ba902b7-01");
        pool.execute_with(
            "traced",
            json!({"token": "control"}),
            CallOptions::new().traceparent(sampled),
        )
        .await
        .unwrap();
        guard.flush().unwrap();
        pool.shutdown().await.unwrap();
        guard.shutdown().unwrap();

        let (spans, arrived) = rotel.wait_for(Duration::from_secs(20), |spans, out| {
            spans
                .iter()
                .any(|s| s.name == "handler.work" && s.trace_id == sampled_trace)
                && out.contains("Name: snakepit.call.duration\n")
        });
        assert!(
            arrived,
            "the control did not arrive: {spans:#?}\n{}",
            rotel.output()
        );
        let host: Vec<_> = spans
            .iter()
            .filter(|s| s.service == "sampled-out")
            .collect();
        assert!(host.is_empty(), "the host exported spans: {host:#?}");
        let unsampled: Vec<_> = spans
            .iter()
            .filter(|s| s.trace_id == unsampled_trace)
            .collect();
        assert!(
            unsampled.is_empty(),
            "the worker exported spans of the sampled-out trace: {unsampled:#?}"
        );
        assert!(spans
            .iter()
            .any(|s| s.name == "snakepit.worker traced" && s.trace_id == sampled_trace));
    });
}

/// telemetry.md: "`OTEL_METRIC_EXPORT_INTERVAL`: milliseconds between
/// metric exports" (60000 by default). With 200 ms, several exports reach
/// Rotel while the program runs, before any flush or shutdown; with the
/// default none would within the wait.
#[test]
fn the_metric_export_interval_comes_from_the_environment() {
    if in_own_process(
        "the_metric_export_interval_comes_from_the_environment",
        &[("OTEL_METRIC_EXPORT_INTERVAL", "200")],
    )
    .is_some()
    {
        return;
    }
    let rotel = Rotel::start().unwrap();
    let guard = Telemetry::new()
        .endpoint(rotel.http_base())
        .stderr_logs(None)
        .init()
        .unwrap();
    opentelemetry::global::meter("probe")
        .u64_counter("probe.ticks")
        .build()
        .add(1, &[]);
    let exports = |out: &str| out.matches("Name: probe.ticks\n").count();
    let (_, arrived) = rotel.wait_for(Duration::from_secs(20), |_, out| exports(out) >= 5);
    assert!(
        arrived,
        "{} exports:\n{}",
        exports(&rotel.output()),
        rotel.output()
    );
    guard.shutdown().unwrap();
}

/// telemetry.md: `OTEL_BSP_SCHEDULE_DELAY`, span batching (5000 ms by
/// default). With 200 ms, spans made one every 100 ms go out in five
/// exports or more before any flush or shutdown, well within 20 s; with the
/// default it would take 25 s.
#[test]
fn the_span_batching_delay_comes_from_the_environment() {
    if in_own_process(
        "the_span_batching_delay_comes_from_the_environment",
        &[("OTEL_BSP_SCHEDULE_DELAY", "200")],
    )
    .is_some()
    {
        return;
    }
    let (receiver, guard) = exporting_to_a_receiver();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while receiver.requests("/v1/traces").len() < 5 {
        assert!(
            std::time::Instant::now() < until,
            "{} span exports: {:?}",
            receiver.requests("/v1/traces").len(),
            receiver.paths()
        );
        drop(tracing::info_span!("batched").entered());
        std::thread::sleep(Duration::from_millis(100));
    }
    guard.shutdown().unwrap();
}

/// Spans named `name` in every trace export the receiver got (OTLP/HTTP
/// protobuf, uncompressed: a span's name is in its bytes as it is).
fn spans_named(receiver: &Receiver, name: &[u8]) -> usize {
    receiver
        .requests("/v1/traces")
        .iter()
        .map(|r| r.body.windows(name.len()).filter(|w| *w == name).count())
        .sum()
}

/// telemetry.md: `OTEL_BSP_MAX_QUEUE_SIZE`, span batching (2048 by
/// default). 2,000 spans made at once, with the batching delay a minute
/// away: all of them arrive at shutdown with the default queue; with a
/// queue of 8 many are dropped (the exporter takes at most 8 at a time,
/// each in an HTTP request, while the spans are made: 150 to 300 of the
/// 2,000 arrived in three runs here), and the shutdown's `Error::Flush`
/// says how many.
#[test]
fn the_span_queue_size_comes_from_the_environment() {
    const SPANS: usize = 2000;
    let name = "the_span_queue_size_comes_from_the_environment";
    if std::env::var_os(common::CHILD).is_some() {
        let (receiver, guard) = exporting_to_a_receiver();
        for _ in 0..SPANS {
            drop(tracing::info_span!("queue_probe").entered());
        }
        let outcome = guard.shutdown();
        eprintln!("shutdown: {outcome:?}");
        eprintln!(
            "probe spans arrived: {}",
            spans_named(&receiver, b"queue_probe")
        );
        return;
    }
    let arrived = |env: &[(&str, &str)]| -> (usize, String) {
        let out = in_own_process(name, env).expect("the parent process");
        let n = out
            .lines()
            .find_map(|l| l.strip_prefix("probe spans arrived: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no count in the child's output:\n{out}"));
        let shutdown = out
            .lines()
            .find_map(|l| l.strip_prefix("shutdown: "))
            .unwrap_or_default()
            .to_owned();
        (n, shutdown)
    };
    let (all, shutdown) = arrived(&[("OTEL_BSP_SCHEDULE_DELAY", "60000")]);
    assert_eq!(all, SPANS, "the default queue (2048) holds them all");
    assert_eq!(shutdown, "Ok(())");
    let (few, shutdown) = arrived(&[
        ("OTEL_BSP_SCHEDULE_DELAY", "60000"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "8"),
    ]);
    assert!(
        few > 0 && few < SPANS * 3 / 4,
        "a queue of 8 drops many of {SPANS} spans made at once: {few} arrived"
    );
    let dropped = format!("dropped {} spans at the full span queue", SPANS - few);
    assert!(shutdown.contains(&dropped), "{dropped}: {shutdown}");
}

/// The explicit bounds printed in the last export of histogram `name`.
fn bucket_bounds(out: &str, name: &str) -> Vec<f64> {
    let Some(start) = out.rfind(&format!("Name: {name}\n")) else {
        return Vec::new();
    };
    let block = &out[start..];
    let end = block[1..].find("Name: ").map_or(block.len(), |i| i + 1);
    block[..end]
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ExplicitBounds #"))
        .filter_map(|l| l.split_once(':').and_then(|(_, v)| v.trim().parse().ok()))
        .collect()
}

/// telemetry.md: "Histogram buckets run from 50 us to 60 s", read back
/// from what Rotel received of a real call's `snakepit.call.duration`
/// (and `snakepit.call.queue_wait`).
#[test]
fn call_duration_buckets_run_from_50_us_to_60_s() {
    if in_own_process("call_duration_buckets_run_from_50_us_to_60_s", &[]).is_some() {
        return;
    }
    let rotel = Rotel::start().unwrap();
    let guard = Telemetry::new()
        .endpoint(rotel.http_base())
        .stderr_logs(None)
        .init()
        .unwrap();
    runtime().block_on(async {
        let adapter =
            Bridge::python(traced_worker()).env("OTEL_EXPORTER_OTLP_ENDPOINT", rotel.http_base());
        let pool = snakepit_telemetry::instrument(Pool::builder(adapter).size(1))
            .start()
            .await
            .unwrap();
        pool.execute("traced", json!({})).await.unwrap();
        pool.shutdown().await.unwrap();
    });
    guard.shutdown().unwrap();
    let (_, arrived) = rotel.wait_for(Duration::from_secs(20), |_, out| {
        !bucket_bounds(out, "snakepit.call.queue_wait").is_empty()
    });
    let out = rotel.output();
    assert!(arrived, "no histogram with bounds arrived:\n{out}");
    for name in ["snakepit.call.duration", "snakepit.call.queue_wait"] {
        let bounds = bucket_bounds(&out, name);
        assert_eq!(bounds.first(), Some(&0.00005), "{name}: {bounds:?}");
        assert_eq!(bounds.last(), Some(&60.0), "{name}: {bounds:?}");
        assert!(
            bounds.windows(2).all(|w| w[0] < w[1]),
            "{name}: increasing {bounds:?}"
        );
    }
}

/// Log lines at several levels and targets, then the stderr the child
/// printed: which of the lines it holds.
fn log_lines_shown(env: &[(&str, &str)], name: &str) -> Option<HashMap<&'static str, bool>> {
    let stderr = in_own_process(name, env)?;
    Some(
        [
            "probe_a info line",
            "probe_a debug line",
            "probe_b info line",
            "probe_b warn line",
        ]
        .into_iter()
        .map(|line| (line, stderr.contains(line)))
        .collect(),
    )
}

/// In the child: installs telemetry as `init` does (`RUST_LOG` read by
/// `Telemetry::new`), exporting nothing, and logs the probe lines.
fn log_probe_lines() {
    let guard = Telemetry::new()
        .endpoint(format!("http://127.0.0.1:{}", closed_port()))
        .init()
        .unwrap();
    tracing::info!(target: "probe_a", "probe_a info line");
    tracing::debug!(target: "probe_a", "probe_a debug line");
    tracing::info!(target: "probe_b", "probe_b info line");
    tracing::warn!(target: "probe_b", "probe_b warn line");
    drop(guard);
}

/// telemetry.md: "log lines at `WARN` and above, or as `RUST_LOG` says in
/// `target=level` form, on stderr"; the table: `RUST_LOG` default `warn`.
#[test]
fn without_rust_log_stderr_shows_warnings_only() {
    let name = "without_rust_log_stderr_shows_warnings_only";
    let Some(shown) = log_lines_shown(
        &[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "none"),
        ],
        name,
    ) else {
        return log_probe_lines();
    };
    assert_eq!(
        shown,
        HashMap::from([
            ("probe_a info line", false),
            ("probe_a debug line", false),
            ("probe_b info line", false),
            ("probe_b warn line", true),
        ])
    );
}

/// The same with `RUST_LOG=warn,probe_a=debug`: one target down to debug,
/// the rest at warn.
#[test]
fn rust_log_in_target_level_form_decides_the_stderr_lines() {
    let name = "rust_log_in_target_level_form_decides_the_stderr_lines";
    let Some(shown) = log_lines_shown(
        &[
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "none"),
            ("RUST_LOG", "warn,probe_a=debug"),
        ],
        name,
    ) else {
        return log_probe_lines();
    };
    assert_eq!(
        shown,
        HashMap::from([
            ("probe_a info line", true),
            ("probe_a debug line", true),
            ("probe_b info line", false),
            ("probe_b warn line", true),
        ])
    );
}

/// telemetry.md: "`OTEL_EXPORTER_OTLP_TIMEOUT`: milliseconds per export"
/// (the 10000 default is checked in `exporters.rs`'s unit tests). A
/// receiver that accepts connections and never answers: with 300 ms, the
/// span is given up and `shutdown` says it was dropped, well before the
/// guard's own 5 s limit.
#[test]
fn the_export_timeout_comes_from_the_environment() {
    if in_own_process(
        "the_export_timeout_comes_from_the_environment",
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "300")],
    )
    .is_some()
    {
        return;
    }
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://127.0.0.1:{}", silent.local_addr().unwrap().port());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming() {
            held.push(conn); // accepted, never answered
        }
    });
    let guard = Telemetry::new()
        .endpoint(&base)
        .metrics(false)
        .stderr_logs(None)
        .init()
        .unwrap();
    drop(tracing::info_span!("never.answered").entered());
    match guard.shutdown() {
        Err(Error::Flush(msg)) => {
            assert!(
                msg.contains(&format!("traces: dropped 1 span that {base}/v1/traces")),
                "{msg}"
            );
            assert!(
                msg.to_ascii_lowercase().contains("time"),
                "the cause: {msg}"
            );
        }
        other => panic!("expected Error::Flush, got {other:?}"),
    }
}
