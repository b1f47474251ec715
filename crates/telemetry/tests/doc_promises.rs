//! Promises of docs/telemetry.md that no other test shows:
//!
//! - "`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` alone installs too, and then only
//!   traces are exported ... `OTEL_METRICS_EXPORTER`, `Telemetry::metrics`
//!   or a metrics endpoint turn them back on" (the three ways back on);
//! - the gauges `observe` reads from a pool: `snakepit.queue.depth`,
//!   `snakepit.workers` (`state` = `idle` / `busy`),
//!   `snakepit.calls.in_flight` and `snakepit.worker.memory` (unit `By`,
//!   attribute `worker`), with the values the pool had; and the
//!   histograms `snakepit.call.duration` (`pool`, `command`, `outcome`),
//!   `snakepit.call.queue_wait` (`pool`, `command`) and
//!   `snakepit.worker.init.duration` (`pool`), in seconds;
//! - a failed call's `snakepit.call` span: status ERROR, `error.type` the
//!   error's kind (`call_timeout` here), `snakepit.outcome` the same, and
//!   `snakepit.session` "when the call has one"; `snakepit.worker.start`:
//!   "one trace per start, with its "worker ready" event (init_ms)".
//!
//! `init` installs process-wide state and reads the environment, so each
//! test runs in a process of its own (`common::in_own_process`).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use common::Receiver;
use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::{CallOptions, Pool};
use snakepit_telemetry::{Protocol, Telemetry};

/// One metric point on the global meter provider, for an export to carry.
fn count_one() {
    opentelemetry::global::meter("doc-promises")
        .u64_counter("doc.promises.count")
        .build()
        .add(1, &[]);
}

/// "`OTEL_METRICS_EXPORTER`, `Telemetry::metrics` or a metrics endpoint
/// turn them back on": with the traces endpoint set, a metrics endpoint
/// (`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`) brings metrics back, and they
/// go to it.
#[test]
fn beside_a_traces_endpoint_a_metrics_endpoint_turns_metrics_back_on() {
    let Ok(base) = std::env::var("DOC_PROMISES_RECEIVER") else {
        let receiver = Receiver::ok();
        let traces = format!("{}/t/traces", receiver.base());
        let metrics = format!("{}/m/metrics", receiver.base());
        let base = receiver.base();
        common::in_own_process(
            "beside_a_traces_endpoint_a_metrics_endpoint_turns_metrics_back_on",
            &[
                ("DOC_PROMISES_RECEIVER", &base),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &traces),
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &metrics),
            ],
        );
        assert!(
            receiver.got("/t/traces", "to.the.traces.endpoint"),
            "{:?}",
            receiver.paths()
        );
        assert!(
            receiver.got("/m/metrics", "doc.promises.count"),
            "the metrics went to the metrics endpoint: {:?}",
            receiver.paths()
        );
        return;
    };
    let _ = base;
    let guard = snakepit_telemetry::init_from_env()
        .unwrap()
        .expect("the endpoints install");
    assert_eq!(
        format!("{guard:?}"),
        "Guard { traces: true, metrics: true }"
    );
    drop(tracing::info_span!("to.the.traces.endpoint").entered());
    count_one();
    guard.shutdown().unwrap();
}

/// The same with `OTEL_METRICS_EXPORTER=otlp` beside the traces endpoint:
/// metrics are on (they then go to the default receiver, as asked).
#[test]
fn beside_a_traces_endpoint_otel_metrics_exporter_turns_metrics_back_on() {
    let receiver = Receiver::ok();
    let traces = format!("{}/t/traces", receiver.base());
    if common::in_own_process(
        "beside_a_traces_endpoint_otel_metrics_exporter_turns_metrics_back_on",
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &traces),
            ("OTEL_METRICS_EXPORTER", "otlp"),
        ],
    )
    .is_some()
    {
        return;
    }
    let guard = Telemetry::new()
        .stderr_logs(None)
        .short_lived(true)
        .init_if_configured()
        .unwrap()
        .expect("the traces endpoint installs");
    assert_eq!(
        format!("{guard:?}"),
        "Guard { traces: true, metrics: true }"
    );
    // Where the metrics go (localhost:4318) is not this test's business.
    drop(guard);
}

/// The same with `Telemetry::metrics(true)` beside the traces endpoint.
#[test]
fn beside_a_traces_endpoint_telemetry_metrics_true_turns_metrics_back_on() {
    let receiver = Receiver::ok();
    let traces = format!("{}/t/traces", receiver.base());
    if common::in_own_process(
        "beside_a_traces_endpoint_telemetry_metrics_true_turns_metrics_back_on",
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &traces)],
    )
    .is_some()
    {
        return;
    }
    let guard = Telemetry::new()
        .stderr_logs(None)
        .short_lived(true)
        .metrics(true)
        .init_if_configured()
        .unwrap()
        .expect("the traces endpoint installs");
    assert_eq!(
        format!("{guard:?}"),
        "Guard { traces: true, metrics: true }"
    );
    drop(guard);
}

fn test_worker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/workers/test_worker.py")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The data points Rotel printed last for the metric `name`: each point's
/// attributes and value.
fn points(out: &str, name: &str) -> Vec<(HashMap<String, String>, String)> {
    let Some(start) = out.rfind(&format!("Name: {name}\n")) else {
        return Vec::new();
    };
    let rest = &out[start..];
    // The metric's block ends at the next metric, or at a batch of spans
    // that Rotel printed after it.
    let end = [
        "Metric #",
        "ResourceMetrics #",
        "ScopeMetrics #",
        "ResourceSpans #",
        "ScopeSpans #",
        "Span #",
    ]
    .iter()
    .filter_map(|m| rest.find(m))
    .min()
    .unwrap_or(rest.len());
    rest[..end]
        // `NumberDataPoints #n` and `HistogramDataPoints #n`.
        .split("DataPoints #")
        .skip(1)
        .map(|point| {
            let mut attrs = HashMap::new();
            let mut value = String::new();
            for line in point.lines() {
                let line = line.trim();
                if let Some(kv) = line.strip_prefix("-> ") {
                    if let Some((k, v)) = kv.split_once(": ") {
                        let v = v
                            .strip_prefix("Str(")
                            .and_then(|v| v.strip_suffix(')'))
                            .unwrap_or(v);
                        attrs.insert(k.to_owned(), v.to_owned());
                    }
                } else if let Some(v) = line.strip_prefix("Value: ") {
                    value = v.trim().to_owned();
                }
            }
            (attrs, value)
        })
        .collect()
}

/// The value of the point of `name` whose attributes include `attrs`.
fn value(out: &str, name: &str, attrs: &[(&str, &str)]) -> Option<f64> {
    points(out, name)
        .into_iter()
        .find(|(a, _)| {
            attrs
                .iter()
                .all(|(k, v)| a.get(*k).map(String::as_str) == Some(*v))
        })
        .and_then(|(_, v)| v.parse().ok())
}

/// telemetry.md, metrics: "`snakepit.queue.depth` gauge `pool`
/// `Pool::stats().queued`; `snakepit.workers` gauge `pool`, `state` =
/// `idle` / `busy`; `snakepit.calls.in_flight` gauge `pool`;
/// `snakepit.worker.memory` gauge, unit By, `pool`, `worker` (slot),
/// resident memory". A pool of three workers observed with a call of a
/// session and a plain call running and three more calls of the session
/// waiting for its worker (strict affinity): the receiver gets busy 2,
/// idle 1, in flight 2 (calls on workers; the waiting ones are queued),
/// queued 3, and a non-zero memory for each worker slot.
#[test]
fn observe_exports_queue_depth_workers_in_flight_and_memory() {
    let rotel = if std::env::var_os("DOC_PROMISES_ROTEL").is_none() {
        Some(common::Rotel::start().expect("rotel starts"))
    } else {
        None
    };
    if let Some(rotel) = &rotel {
        let base = rotel.http_base();
        common::in_own_process(
            "observe_exports_queue_depth_workers_in_flight_and_memory",
            &[("DOC_PROMISES_ROTEL", &base)],
        );
        let out = rotel.output();
        let pool = [("pool", "observed")];
        assert_eq!(
            value(&out, "snakepit.workers", &[pool[0], ("state", "busy")]),
            Some(2.0),
            "{out}"
        );
        assert_eq!(
            value(&out, "snakepit.workers", &[pool[0], ("state", "idle")]),
            Some(1.0),
            "{out}"
        );
        assert_eq!(value(&out, "snakepit.calls.in_flight", &pool), Some(2.0));
        assert_eq!(value(&out, "snakepit.queue.depth", &pool), Some(3.0));
        // The slot is an integer attribute (Rotel prints `Int(0)`).
        for slot in ["Int(0)", "Int(1)", "Int(2)"] {
            let rss = value(&out, "snakepit.worker.memory", &[pool[0], ("worker", slot)]);
            assert!(
                rss.is_some_and(|b| b > 1_000_000.0),
                "slot {slot}: {rss:?}\n{}",
                &out[out.rfind("Name: snakepit.worker.memory").unwrap_or(0)..][..600]
            );
        }
        let memory = &out[out.rfind("Name: snakepit.worker.memory\n").unwrap()..];
        assert!(
            memory.lines().take(4).any(|l| l.trim() == "-> Unit: By"),
            "{}",
            &memory[..memory.len().min(300)]
        );
        // The histograms made from the events carry the documented
        // attributes, no more, and are in seconds.
        for (name, keys) in [
            (
                "snakepit.call.duration",
                &["command", "outcome", "pool"][..],
            ),
            ("snakepit.call.queue_wait", &["command", "pool"][..]),
            ("snakepit.worker.init.duration", &["pool"][..]),
        ] {
            let points = points(&out, name);
            assert!(!points.is_empty(), "{name}: no point in\n{out}");
            for (attrs, _) in &points {
                let mut got: Vec<&str> = attrs.keys().map(String::as_str).collect();
                got.sort();
                assert_eq!(got, keys, "{name}: {attrs:?}");
                assert_eq!(attrs["pool"], "observed", "{name}: {attrs:?}");
            }
            let block = &out[out.rfind(&format!("Name: {name}\n")).unwrap()..];
            assert!(
                block.lines().take(4).any(|l| l.trim() == "-> Unit: s"),
                "{name}: {}",
                &block[..block.len().min(300)]
            );
        }
        let sleeps = points(&out, "snakepit.call.duration")
            .into_iter()
            .filter(|(a, _)| a["command"] == "sleep" && a["outcome"] == "ok")
            .count();
        assert_eq!(sleeps, 1, "the ended sleep calls, outcome ok");
        return;
    }
    let base = std::env::var("DOC_PROMISES_ROTEL").unwrap();
    let guard = Telemetry::new()
        .service_name("doc-promises")
        .endpoint(base)
        .protocol(Protocol::HttpProtobuf)
        .stderr_logs(None)
        .init()
        .unwrap();
    runtime().block_on(async {
        let pool = snakepit_telemetry::instrument(
            Pool::builder(Bridge::python(test_worker()))
                .size(3)
                .name("observed"),
        )
        .start()
        .await
        .unwrap();
        let observation = snakepit_telemetry::observe(&pool);
        let strict = || {
            CallOptions::new()
                .session("pinned")
                .affinity(snakepit_core::Affinity::Strict)
        };
        // Pins the session to a worker, then holds that worker and queues
        // a second call of the session behind it.
        pool.execute_with("echo", json!({}), strict())
            .await
            .unwrap();
        let first = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.execute_with("sleep", json!({"ms": 3000}), strict())
                    .await
            })
        };
        snakepit_tests::until(10, "the first call runs", || {
            let s = pool.stats();
            async move { s.busy == 1 }
        })
        .await;
        // A plain call takes a second worker; three more calls of the
        // session wait for theirs.
        let plain = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute("sleep", json!({"ms": 3000})).await })
        };
        snakepit_tests::until(10, "the plain call runs", || {
            let s = pool.stats();
            async move { s.busy == 2 }
        })
        .await;
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(
                    async move { pool.execute_with("sleep", json!({"ms": 0}), strict()).await },
                )
            })
            .collect();
        snakepit_tests::until(10, "three calls wait", || {
            let s = pool.stats();
            async move { s.queued == 3 }
        })
        .await;
        guard.flush().unwrap();
        drop(observation);
        first.await.unwrap().unwrap();
        plain.await.unwrap().unwrap();
        for w in waiting {
            w.await.unwrap().unwrap();
        }
        pool.shutdown().await.unwrap();
    });
    guard.shutdown().unwrap();
}

/// telemetry.md, the trace of a call: "`snakepit.session` ... when the call
/// has one"; "`snakepit.outcome`: `ok`, or the error's kind"; "`error.type`
/// on failure: the error's kind (`remote`, `call_timeout`, ...)"; "On
/// failure the span's status is ERROR too". A session call that times out
/// gives a `snakepit.call` span with all four; an ordinary call's span has
/// no `snakepit.session` and no `error.type`.
#[test]
fn a_timed_out_session_calls_span_is_an_error_with_its_kind_and_session() {
    let rotel = if std::env::var_os("DOC_PROMISES_ROTEL").is_none() {
        Some(common::Rotel::start().expect("rotel starts"))
    } else {
        None
    };
    if let Some(rotel) = &rotel {
        let base = rotel.http_base();
        common::in_own_process(
            "a_timed_out_session_calls_span_is_an_error_with_its_kind_and_session",
            &[("DOC_PROMISES_ROTEL", &base)],
        );
        let (spans, done) = rotel.wait_for(Duration::from_secs(10), |spans, _| {
            spans.iter().filter(|s| s.name == "snakepit.call").count() >= 2
        });
        assert!(done, "{spans:#?}");
        let calls: Vec<_> = spans.iter().filter(|s| s.name == "snakepit.call").collect();
        let failed = calls
            .iter()
            .find(|s| s.attributes.get("snakepit.command").map(String::as_str) == Some("sleep"))
            .expect("the sleep call's span");
        assert!(failed.status.contains("ERROR"), "{failed:#?}");
        assert_eq!(
            failed.attributes["error.type"], "call_timeout",
            "{failed:#?}"
        );
        assert_eq!(failed.attributes["snakepit.outcome"], "call_timeout");
        assert_eq!(failed.attributes["snakepit.session"], "user_7");
        let ok = calls
            .iter()
            .find(|s| s.attributes.get("snakepit.command").map(String::as_str) == Some("echo"))
            .expect("the echo call's span");
        assert_eq!(ok.attributes["snakepit.outcome"], "ok", "{ok:#?}");
        assert!(!ok.attributes.contains_key("snakepit.session"), "{ok:#?}");
        assert!(!ok.attributes.contains_key("error.type"), "{ok:#?}");
        assert!(!ok.status.contains("ERROR"), "{ok:#?}");
        // "snakepit.worker.start ... one trace per start, with its "worker
        // ready" event (init_ms=...)": two workers, two traces of their own.
        let (spans, done) = rotel.wait_for(Duration::from_secs(10), |spans, _| {
            spans
                .iter()
                .filter(|s| s.name == "snakepit.worker.start")
                .count()
                >= 2
        });
        assert!(done, "{spans:#?}");
        let starts: Vec<_> = spans
            .iter()
            .filter(|s| s.name == "snakepit.worker.start")
            .collect();
        let mut traces: Vec<&str> = starts.iter().map(|s| s.trace_id.as_str()).collect();
        traces.sort();
        traces.dedup();
        assert_eq!(
            traces.len(),
            starts.len(),
            "one trace per start: {starts:#?}"
        );
        for s in &starts {
            assert_eq!(s.parent_id, "", "a root span: {s:#?}");
            assert_eq!(s.attributes["snakepit.pool"], "spans", "{s:#?}");
        }
        let out = rotel.output();
        let ready = out.matches("worker ready").count();
        let init_ms = out.matches("init_ms").count();
        assert!(
            ready >= 2 && init_ms >= 2,
            "a worker ready event with init_ms per start:\n{out}"
        );
        return;
    }
    let base = std::env::var("DOC_PROMISES_ROTEL").unwrap();
    let guard = Telemetry::new()
        .service_name("doc-promises")
        .endpoint(base)
        .protocol(Protocol::HttpProtobuf)
        .metrics(false)
        .stderr_logs(None)
        .init()
        .unwrap();
    runtime().block_on(async {
        let pool = snakepit_telemetry::instrument(
            Pool::builder(Bridge::python(test_worker()))
                .size(2)
                .name("spans"),
        )
        .start()
        .await
        .unwrap();
        pool.execute("echo", json!({})).await.unwrap();
        let started = Instant::now();
        let err = pool
            .execute_with(
                "sleep",
                json!({"ms": 20_000}),
                CallOptions::new()
                    .session("user_7")
                    .timeout(Duration::from_millis(300)),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, snakepit_core::Error::CallTimeout { .. }),
            "{err:?} after {:?}",
            started.elapsed()
        );
        pool.shutdown().await.unwrap();
    });
    guard.shutdown().unwrap();
}
