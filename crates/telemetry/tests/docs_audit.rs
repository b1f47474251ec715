//! Promises of `docs/telemetry.md` that no other test showed, each checked
//! against a real Python worker and a real OTLP receiver (Rotel).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::{CallOptions, Error, Pool};
use snakepit_telemetry::{Protocol, Telemetry};

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

const ENDPOINT: &str = "DOCS_AUDIT_ROTEL";

/// docs/telemetry.md, the `snakepit.call` attributes: "`snakepit.outcome`
/// | `ok`, or the error's kind" and "`error.type` | on failure: the error's
/// kind (`remote`, `call_timeout`, `queue_timeout`, `pool_saturated`,
/// `worker_crashed`, `cancelled`, ...)", and "On failure the span's status
/// is ERROR too". Other tests show `remote` and `call_timeout`; this one
/// brings about the other four for real through an instrumented pool of
/// one Python worker (queue of one, no pipelining): a call that waits past
/// the queue timeout, a call refused because the queue is full, a call
/// dropped by its caller while it waits, and a call whose worker exits.
/// It reads the four `snakepit.call` spans back from Rotel and checks each
/// one's `error.type`, `snakepit.outcome` and ERROR status.
#[test]
fn each_failure_kind_is_the_error_type_and_outcome_of_an_error_span() {
    if std::env::var_os(ENDPOINT).is_none() {
        let rotel = common::Rotel::start().expect("rotel starts");
        let base = rotel.http_base();
        common::in_own_process(
            "each_failure_kind_is_the_error_type_and_outcome_of_an_error_span",
            &[(ENDPOINT, &base)],
        );
        // echo: queue_timeout; float: pool_saturated; exit: worker_crashed;
        // sleep in the session `dropped`: cancelled.
        let find = |spans: &[common::SpanRecord], command: &str, session: Option<&str>| {
            spans
                .iter()
                .find(|s| {
                    s.name == "snakepit.call"
                        && s.attributes.get("snakepit.command").map(String::as_str) == Some(command)
                        && (session.is_none()
                            || s.attributes.get("snakepit.session").map(String::as_str) == session)
                })
                .cloned()
        };
        let wanted = [
            ("echo", None, "queue_timeout"),
            ("float", None, "pool_saturated"),
            ("exit", None, "worker_crashed"),
            ("sleep", Some("dropped"), "cancelled"),
        ];
        let (spans, done) = rotel.wait_for(Duration::from_secs(20), |spans, _| {
            wanted.iter().all(|(c, s, _)| find(spans, c, *s).is_some())
        });
        let mut missing = Vec::new();
        let mut wrong = Vec::new();
        for (command, session, kind) in wanted {
            let Some(span) = find(&spans, command, session) else {
                missing.push(kind);
                continue;
            };
            let error_type = span.attributes.get("error.type").map(String::as_str);
            let outcome = span.attributes.get("snakepit.outcome").map(String::as_str);
            if error_type != Some(kind) || outcome != Some(kind) || !span.status.contains("ERROR") {
                wrong.push(format!(
                    "{kind}: error.type {error_type:?}, snakepit.outcome {outcome:?}, status {}",
                    span.status
                ));
            }
        }
        assert!(
            done && missing.is_empty() && wrong.is_empty(),
            "no span for {missing:?}; wrong: {wrong:#?}\nspans: {:#?}",
            spans
                .iter()
                .filter(|s| s.name == "snakepit.call")
                .collect::<Vec<_>>()
        );
        return;
    }
    let base = std::env::var(ENDPOINT).unwrap();
    let guard = Telemetry::new()
        .service_name("docs-audit")
        .endpoint(base)
        .protocol(Protocol::HttpProtobuf)
        .metrics(false)
        .stderr_logs(None)
        .init()
        .unwrap();
    runtime().block_on(async {
        let pool = snakepit_telemetry::instrument(
            Pool::builder(Bridge::python(test_worker()))
                .size(1)
                .name("kinds")
                .configure(|c| {
                    c.max_queue_size = 1;
                    c.queue_timeout = Duration::from_millis(600);
                    c.pipeline_depth = 0;
                    c.sweep_on_start = false;
                    c.shutdown_grace_period = Duration::from_millis(300);
                }),
        )
        .start()
        .await
        .unwrap();
        let occupier = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.execute_with(
                    "sleep",
                    json!({"ms": 3000}),
                    CallOptions::new().session("occupier"),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(400)).await;
        // The worker is busy: this one waits in the queue, then times out.
        let queued = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute("echo", json!({})).await })
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        // The queue (one place) is taken: refused at once.
        let saturated = pool.execute("float", json!({})).await.unwrap_err();
        assert!(
            matches!(saturated, Error::PoolSaturated { .. }),
            "{saturated:?}"
        );
        let timed_out = queued.await.unwrap().unwrap_err();
        assert!(matches!(timed_out, Error::QueueTimeout(_)), "{timed_out:?}");
        // A call its caller drops while it waits.
        let dropped = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.execute_with(
                    "sleep",
                    json!({"ms": 5000}),
                    CallOptions::new().session("dropped"),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        dropped.abort();
        assert!(dropped.await.unwrap_err().is_cancelled());
        occupier.await.unwrap().unwrap();
        let crashed = pool.execute("exit", json!({"code": 3})).await.unwrap_err();
        assert!(matches!(crashed, Error::WorkerCrashed(_)), "{crashed:?}");
        pool.shutdown().await.unwrap();
    });
    guard.shutdown().unwrap();
}

/// Where [`a_grpc_receiver_without_metrics_is_warned_of_once_and_no_error`]
/// stands: unset in the test as run, `rotel` in the process that starts
/// Rotel with its metrics receiver off.
#[cfg(feature = "grpc")]
const STAGE: &str = "DOCS_AUDIT_STAGE";

/// docs/telemetry.md, Quick start: "A receiver that does not take metrics
/// at all (HTTP 404 or 405, gRPC `Unimplemented`: Jaeger, Arize Phoenix)
/// is not an error: a warning says so once and metrics stop." Other tests
/// show HTTP 404 and 405; this one uses gRPC. Rotel is started with its
/// OTLP metrics receiver off (`ROTEL_OTLP_RECEIVER_METRICS_DISABLED`, in a
/// process of its own, as Rotel inherits the environment), so its gRPC
/// server answers the metrics service with `Unimplemented`. A program
/// exporting over gRPC with metrics every 200 ms records metrics and spans
/// for 1.5 s and flushes three times: every flush and the shutdown are
/// `Ok`, one warning says the receiver does not take metrics, and the
/// spans arrive.
#[cfg(feature = "grpc")]
#[test]
fn a_grpc_receiver_without_metrics_is_warned_of_once_and_no_error() {
    const NAME: &str = "a_grpc_receiver_without_metrics_is_warned_of_once_and_no_error";
    if std::env::var_os(common::CHILD).is_none() && std::env::var_os(STAGE).is_none() {
        let out = snakepit_tests::this_test(NAME)
            .env(STAGE, "rotel")
            .env("ROTEL_OTLP_RECEIVER_METRICS_DISABLED", "true")
            .output()
            .expect("the test binary runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    if std::env::var_os(common::CHILD).is_none() {
        let rotel = common::Rotel::start().expect("rotel starts");
        let base = rotel.grpc_base();
        let stderr = common::in_own_process(NAME, &[(ENDPOINT, &base)]).unwrap();
        let warnings = stderr.matches("does not take metrics").count();
        assert_eq!(warnings, 1, "one warning: {stderr}");
        let (spans, arrived) = rotel.wait_for(Duration::from_secs(10), |spans, _| {
            spans
                .iter()
                .filter(|s| s.name == "grpc.metrics.refused")
                .count()
                >= 3
        });
        assert!(arrived, "{spans:#?}\n{}", rotel.output());
        assert!(
            !rotel.output().contains("docs.audit.count"),
            "the receiver was to take no metrics: {}",
            rotel.output()
        );
        return;
    }
    let base = std::env::var(ENDPOINT).unwrap();
    let guard = Telemetry::new()
        .endpoint(base)
        .protocol(Protocol::Grpc)
        .metrics_interval(Duration::from_millis(200))
        .stderr_level(tracing::Level::WARN)
        .init()
        .unwrap();
    let counter = opentelemetry::global::meter("docs-audit")
        .u64_counter("docs.audit.count")
        .build();
    for i in 0..3 {
        counter.add(1, &[]);
        drop(tracing::info_span!("grpc.metrics.refused", i).entered());
        std::thread::sleep(Duration::from_millis(500));
        guard.flush().expect("a refusal of metrics is not an error");
    }
    counter.add(1, &[]);
    guard.shutdown().expect("nor at shutdown");
}
