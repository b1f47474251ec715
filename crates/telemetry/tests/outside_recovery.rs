//! Recovery after an outage of the OTLP receiver, shown from outside
//! against a real pool of Python workers and a real receiver (Rotel),
//! stopped and started again on the same loopback port. No retry loop
//! wraps the operation under test: each `Guard::flush` is called once and
//! its result is the one asserted (the only waiting is for Rotel's debug
//! log to print what it already received).
//!
//! docs/telemetry.md (the paragraph after the quick start): "When an
//! export fails, a warning says so once per signal, with the URL and the
//! cause ...; what could not be delivered is dropped, and `Guard::flush`
//! and `Guard::shutdown` return `Error::Flush` saying how many spans (or
//! metrics exports) were dropped since the last flush, where to, and why."
//! and (Environment): "a receiver that is down costs the caller nothing
//! more than the batching ...: the exports fail, once reported as a
//! warning, and the spans are dropped."
//!
//! `init` installs process-wide state, so each test runs in a process of
//! its own (this test binary, started again for that one test).

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{in_own_process, Rotel, SpanRecord};
use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::Pool;
use snakepit_telemetry::{Error, Telemetry};
use tracing::Instrument;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn listening(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
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

/// The ports of a test, chosen by the parent and handed to its own process.
fn ports() -> (u16, u16) {
    let get = |v: &str| std::env::var(v).unwrap().parse::<u16>().unwrap();
    (get("RECOVERY_HTTP_PORT"), get("RECOVERY_GRPC_PORT"))
}

fn port_env() -> [(String, String); 2] {
    [
        ("RECOVERY_HTTP_PORT".into(), free_port().to_string()),
        ("RECOVERY_GRPC_PORT".into(), free_port().to_string()),
    ]
}

/// Runs `name` in its own process with fresh ports; its stderr.
fn own_process(name: &str) -> Option<String> {
    let env = port_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    in_own_process(name, &env)
}

/// The telemetry of a test: HTTP/protobuf to `http_port`, warnings and
/// notes on stderr (the parent reads them), the default export settings (a
/// long-running service, not `short_lived`).
fn telemetry(http_port: u16) -> snakepit_telemetry::Guard {
    Telemetry::new()
        .service_name("outside-recovery")
        .endpoint(format!("http://127.0.0.1:{http_port}"))
        .stderr_level(tracing::Level::INFO)
        .init()
        .unwrap()
}

async fn pool() -> Pool {
    snakepit_telemetry::instrument(
        Pool::builder(Bridge::python(test_worker()))
            .size(2)
            .name("recovery"),
    )
    .start()
    .await
    .unwrap()
}

/// `n` calls, each inside a span `recovery.call` with `phase` and `i`.
async fn calls(pool: &Pool, phase: &str, n: i64) {
    for i in 0..n {
        let span = tracing::info_span!("recovery.call", phase, i);
        pool.execute("echo", json!({"phase": phase, "i": i}))
            .instrument(span)
            .await
            .expect("a call works whether or not the receiver is up");
    }
}

/// Whether the spans of `phase` arrived: `n` caller spans, each the parent
/// of a `snakepit.call`.
fn phase_arrived(spans: &[SpanRecord], phase: &str, n: i64) -> bool {
    (0..n).all(|i| {
        spans
            .iter()
            .filter(|s| {
                s.name == "recovery.call"
                    && s.attributes.get("phase").map(String::as_str) == Some(phase)
                    && s.attributes.get("i") == Some(&i.to_string())
            })
            .any(|caller| {
                spans
                    .iter()
                    .any(|c| c.name == "snakepit.call" && c.parent_id == caller.id)
            })
    })
}

/// The flush of an outage: `Error::Flush` naming the spans and the metrics
/// export dropped, where to, and why.
fn assert_outage_told(result: Result<(), Error>, http_port: u16, when: &str) {
    let base = format!("http://127.0.0.1:{http_port}");
    match result {
        Err(Error::Flush(msg)) => {
            assert!(
                msg.contains(&format!("that {base}/v1/traces could not take")),
                "{when}: the spans dropped, and where to: {msg}"
            );
            assert!(
                msg.contains(&format!(
                    "metrics: dropped 1 metrics export that {base}/v1/metrics could not take"
                )),
                "{when}: the metrics export dropped: {msg}"
            );
            assert!(
                msg.contains("Connection refused"),
                "{when}: the cause: {msg}"
            );
        }
        other => panic!("{when}: expected Error::Flush, got {other:?}"),
    }
}

/// telemetry.md: "`Guard::flush` and `Guard::shutdown` return
/// `Error::Flush` saying how many spans (or metrics exports) were dropped
/// since the last flush". The receiver is down while calls are made (the
/// flush says what was dropped), then started again on the same port:
/// the next flush, which follows calls made after it came back, is `Ok`
/// (nothing was dropped since the last flush, so no stale error about
/// the drops already told), a second flush is `Ok` too, the spans of the
/// calls made after the recovery are read back from the receiver, and so
/// are the pool's metrics (Rotel shows they arrived, as the otlp_http test
/// does for a receiver that was never down).
#[test]
fn after_the_receiver_is_back_spans_and_metrics_arrive_and_flush_is_ok() {
    if let Some(stderr) =
        own_process("after_the_receiver_is_back_spans_and_metrics_arrive_and_flush_is_ok")
    {
        // "a warning says so once per signal, with the URL and the cause".
        for signal in ["traces", "metrics"] {
            let warned = stderr
                .lines()
                .filter(|l| l.contains(&format!("cannot export {signal} to http://127.0.0.1:")))
                .collect::<Vec<_>>();
            assert_eq!(warned.len(), 1, "one {signal} warning:\n{stderr}");
            assert!(warned[0].contains("Connection refused"), "{}", warned[0]);
        }
        return;
    }
    let (http_port, grpc_port) = ports();
    assert!(!listening(http_port), "nothing listens yet");
    let guard = telemetry(http_port);
    let rt = runtime();
    let pool = rt.block_on(pool());
    let gauges = snakepit_telemetry::observe(&pool);

    rt.block_on(calls(&pool, "down", 3));
    assert_outage_told(guard.flush(), http_port, "the flush during the outage");

    let rotel = Rotel::start_on(grpc_port, http_port).unwrap();
    rt.block_on(calls(&pool, "back", 3));
    let first = guard.flush();
    let second = guard.flush();
    let (spans, arrived) = rotel.wait_for(Duration::from_secs(20), |spans, out| {
        phase_arrived(spans, "back", 3) && out.contains("Name: snakepit.call.duration\n")
    });
    assert_eq!(
        first,
        Ok(()),
        "the first flush after the receiver is back: nothing was dropped since the last flush"
    );
    assert_eq!(second, Ok(()), "a second flush");
    assert!(
        arrived,
        "the spans and metrics of the calls made after the recovery did not all arrive: {:#?}\n{}",
        spans
            .iter()
            .map(|s| (&s.name, &s.attributes))
            .collect::<Vec<_>>(),
        rotel.output()
    );
    assert!(
        !phase_arrived(&spans, "down", 1),
        "spans of the outage were dropped, not kept for later"
    );
    let out = rotel.output();
    for metric in [
        "snakepit.call.duration",
        "snakepit.call.queue_wait",
        "snakepit.workers",
        "snakepit.calls.in_flight",
    ] {
        assert!(
            out.contains(&format!("Name: {metric}\n")),
            "metric {metric} missing after the recovery:\n{out}"
        );
    }
    drop(gauges);
    rt.block_on(pool.shutdown()).unwrap();
    assert_eq!(guard.shutdown(), Ok(()), "the shutdown, receiver up");
}

/// A second outage after a recovery, then a second recovery. What the
/// docs promise for it: `Guard::flush` returns `Error::Flush` about what
/// was "dropped since the last flush", so the second outage is told by the
/// flush that follows it, with its cause; and after the second recovery
/// the flush is `Ok` again and the spans arrive. The warning on stderr
/// comes once per signal and outage ("once per signal until an export
/// succeeds again"), and each recovery is logged: a service that never
/// calls `flush` still hears of the second outage.
#[test]
fn a_second_outage_is_told_by_the_next_flush_and_a_second_recovery_works() {
    if let Some(stderr) =
        own_process("a_second_outage_is_told_by_the_next_flush_and_a_second_recovery_works")
    {
        for signal in ["traces", "metrics"] {
            let warned = stderr
                .matches(&format!("cannot export {signal} to http://127.0.0.1:"))
                .count();
            assert_eq!(
                warned, 2,
                "{signal}: warned once per signal and outage:\n{stderr}"
            );
            let again = stderr
                .matches(&format!("exporting {signal} to http://127.0.0.1:"))
                .count();
            assert_eq!(again, 2, "{signal}: each recovery logged:\n{stderr}");
        }
        return;
    }
    let (http_port, grpc_port) = ports();
    let guard = telemetry(http_port);
    let rt = runtime();
    let pool = rt.block_on(pool());
    let gauges = snakepit_telemetry::observe(&pool);

    // First outage, first recovery.
    rt.block_on(calls(&pool, "down1", 2));
    assert_outage_told(guard.flush(), http_port, "the first outage");
    let rotel = Rotel::start_on(grpc_port, http_port).unwrap();
    rt.block_on(calls(&pool, "back1", 2));
    assert_eq!(guard.flush(), Ok(()), "after the first recovery");
    let (_, arrived) = rotel.wait_for(Duration::from_secs(20), |spans, _| {
        phase_arrived(spans, "back1", 2)
    });
    assert!(arrived, "first recovery: {}", rotel.output());

    // Second outage: told again by the flush, with its cause (the cause of
    // the first was taken by the flush that told it).
    drop(rotel);
    rt.block_on(calls(&pool, "down2", 2));
    assert_outage_told(guard.flush(), http_port, "the second outage");

    // Second recovery.
    let rotel = Rotel::start_on(grpc_port, http_port).unwrap();
    rt.block_on(calls(&pool, "back2", 2));
    assert_eq!(guard.flush(), Ok(()), "after the second recovery");
    let (_, arrived) = rotel.wait_for(Duration::from_secs(20), |spans, out| {
        phase_arrived(spans, "back2", 2) && out.contains("Name: snakepit.call.duration\n")
    });
    assert!(arrived, "second recovery: {}", rotel.output());
    drop(gauges);
    rt.block_on(pool.shutdown()).unwrap();
    assert_eq!(guard.shutdown(), Ok(()));
}

/// A receiver restarted between two exports, with no export during the
/// short outage: the exporter's HTTP client still holds its kept-alive
/// connection to the receiver that went away. Nothing was dropped (no
/// export failed), so the next flush is `Ok`, and the spans and metrics of
/// the calls made after the restart reach the new receiver: the first
/// export after the restart does not fail on the stale connection.
#[test]
fn a_receiver_restarted_between_exports_gets_the_next_export() {
    if let Some(stderr) = own_process("a_receiver_restarted_between_exports_gets_the_next_export") {
        assert!(
            !stderr.contains("cannot export"),
            "no export failed:\n{stderr}"
        );
        return;
    }
    let (http_port, grpc_port) = ports();
    let rotel = Rotel::start_on(grpc_port, http_port).unwrap();
    let guard = telemetry(http_port);
    let rt = runtime();
    let pool = rt.block_on(pool());
    let gauges = snakepit_telemetry::observe(&pool);
    rt.block_on(calls(&pool, "before", 2));
    assert_eq!(guard.flush(), Ok(()), "the receiver is up");
    let (_, arrived) = rotel.wait_for(Duration::from_secs(20), |spans, _| {
        phase_arrived(spans, "before", 2)
    });
    assert!(arrived, "before the restart: {}", rotel.output());

    drop(rotel);
    let rotel = Rotel::start_on(grpc_port, http_port).unwrap();
    rt.block_on(calls(&pool, "after", 2));
    let flushed = guard.flush();
    let (_, arrived) = rotel.wait_for(Duration::from_secs(20), |spans, out| {
        phase_arrived(spans, "after", 2) && out.contains("Name: snakepit.call.duration\n")
    });
    assert_eq!(
        flushed,
        Ok(()),
        "the first flush after the receiver was restarted"
    );
    assert!(arrived, "after the restart: {}", rotel.output());
    drop(gauges);
    rt.block_on(pool.shutdown()).unwrap();
    assert_eq!(guard.shutdown(), Ok(()));
}

/// Metrics recover on their own: with an export interval of 200 ms
/// (`Telemetry::metrics_interval`) and no flush, the periodic exports made
/// during the outage fail, and once the receiver is back on the same port
/// the pool's metrics reach it again without anyone calling `flush`. The
/// exports dropped meanwhile were never told by a flush, so the first
/// flush after the recovery says how many ("dropped since the last
/// flush"); the one after it is `Ok`.
#[test]
fn periodic_metrics_arrive_again_without_a_flush_after_the_receiver_is_back() {
    if let Some(stderr) =
        own_process("periodic_metrics_arrive_again_without_a_flush_after_the_receiver_is_back")
    {
        assert_eq!(
            stderr
                .matches("cannot export metrics to http://127.0.0.1:")
                .count(),
            1,
            "one metrics warning:\n{stderr}"
        );
        return;
    }
    let (http_port, grpc_port) = ports();
    let guard = Telemetry::new()
        .service_name("outside-recovery")
        .endpoint(format!("http://127.0.0.1:{http_port}"))
        .metrics_interval(Duration::from_millis(200))
        .stderr_level(tracing::Level::INFO)
        .init()
        .unwrap();
    let rt = runtime();
    let pool = rt.block_on(pool());
    let gauges = snakepit_telemetry::observe(&pool);
    rt.block_on(calls(&pool, "down", 2));
    // Periodic exports fail meanwhile (at least one; how many is timing).
    std::thread::sleep(Duration::from_millis(1000));

    let rotel = Rotel::start_on(grpc_port, http_port).unwrap();
    rt.block_on(calls(&pool, "back", 1));
    let (_, arrived) = rotel.wait_for(Duration::from_secs(20), |_, out| {
        out.contains("Name: snakepit.call.duration\n") && out.contains("Name: snakepit.workers\n")
    });
    assert!(
        arrived,
        "no metrics reached the receiver after it came back:\n{}",
        rotel.output()
    );
    let base = format!("http://127.0.0.1:{http_port}");
    match guard.flush() {
        Err(Error::Flush(msg)) => {
            assert!(
                msg.contains("metrics: dropped ")
                    && msg.contains(&format!("that {base}/v1/metrics could not take"))
                    && msg.contains("Connection refused"),
                "the exports dropped during the outage, untold so far: {msg}"
            );
        }
        other => panic!(
            "the outage's metrics exports were never told: expected Error::Flush, got {other:?}"
        ),
    }
    assert_eq!(guard.flush(), Ok(()), "told once, not again");
    drop(gauges);
    rt.block_on(pool.shutdown()).unwrap();
    assert_eq!(guard.shutdown(), Ok(()));
}
