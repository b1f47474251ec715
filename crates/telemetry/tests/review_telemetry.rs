//! snakepit-telemetry against docs/telemetry.md and its rustdoc: the
//! workers' service name, what `Guard::flush` and `Guard::shutdown` say
//! about dropped spans, and the environment's variables.
//!
//! `init` installs process-wide state, so each test runs in a process of
//! its own (`common::in_own_process`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{in_own_process, Answer, Receiver, SERVICE_WORKER};
use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::Pool;
use snakepit_telemetry::{Error, Telemetry};

/// A loopback port where nothing listens.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// telemetry.md: "A pool wired with `instrument` gives its workers a
/// service of their own, the host's name with `-worker` after it
/// (`my-service-worker`)"; `Telemetry::service_name` sets the host's
/// `service.name`. With `.service_name("code-service")` in code and
/// `OTEL_SERVICE_NAME=env-service` in the environment, the test checks
/// that the host's spans are `code-service` (the code wins) and its
/// workers are `code-service-worker`. The workers once took their name
/// from the variable instead.
#[test]
fn workers_are_named_after_the_hosts_service_even_when_the_code_names_it() {
    const NAME: &str = "workers_are_named_after_the_hosts_service_even_when_the_code_names_it";
    if in_own_process(NAME, &[("OTEL_SERVICE_NAME", "env-service")]).is_some() {
        return;
    }
    let dir =
        std::env::temp_dir().join(format!("snakepit-review-telemetry-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script: PathBuf = dir.join("service.py");
    std::fs::write(&script, SERVICE_WORKER).unwrap();
    let receiver = Receiver::ok();
    let guard = Telemetry::new()
        .service_name("code-service")
        .endpoint(receiver.base())
        .metrics(false)
        .stderr_logs(None)
        .init()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let name = rt.block_on(async {
        let pool = snakepit_telemetry::instrument(Pool::builder(Bridge::python(&script)).size(1))
            .start()
            .await
            .unwrap();
        let name = pool.execute("service", json!({})).await.unwrap();
        pool.shutdown().await.unwrap();
        name
    });
    drop(tracing::info_span!("host.probe").entered());
    guard.shutdown().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    // The host's own spans are under the name given in code.
    assert!(receiver.got("/v1/traces", "code-service"), "host service");
    assert!(!receiver.got("/v1/traces", "env-service"), "host service");
    assert_eq!(name, "code-service-worker", "the workers' service");
}

/// telemetry.md: "a receiver that takes the connection but does not
/// answer in time: `no answer within the export timeout (10s,
/// OTEL_EXPORTER_OTLP_TIMEOUT)`; what could not be delivered is dropped,
/// and `Guard::flush` and `Guard::shutdown` return `Error::Flush` saying
/// how many spans ... were dropped ... where to, and why", and
/// "`Guard::shutdown` waits half as long again as the longest export (15 s
/// with the default 10 s)". The test runs a program that is not
/// short-lived, with the default export timeout, against a receiver that
/// never answers, and checks that the shutdown's error names the dropped
/// span, the receiver and the cause. Such a shutdown once gave up after
/// 5 s and said only that it timed out.
#[test]
fn a_default_shutdown_says_what_a_silent_receiver_dropped() {
    const NAME: &str = "a_default_shutdown_says_what_a_silent_receiver_dropped";
    if in_own_process(NAME, &[]).is_some() {
        return;
    }
    let receiver = Receiver::start(|_| Answer::Silent);
    let guard = Telemetry::new()
        .endpoint(receiver.base())
        .metrics(false)
        .stderr_logs(None)
        .init()
        .unwrap();
    drop(tracing::info_span!("never.answered").entered());
    let started = Instant::now();
    let outcome = guard.shutdown();
    let took = started.elapsed();
    match outcome {
        Err(Error::Flush(msg)) => {
            let what = format!("dropped 1 span that {}/v1/traces", receiver.base());
            assert!(msg.contains(&what), "after {took:?}: {msg}");
            assert!(msg.contains("no answer within the export timeout"), "{msg}");
        }
        other => panic!("expected Error::Flush, got {other:?} after {took:?}"),
    }
}

/// telemetry.md: "`Guard::flush` and `Guard::shutdown` return
/// `Error::Flush` saying how many spans ... were dropped" and "Spans
/// dropped because the span queue was full (`OTEL_BSP_MAX_QUEUE_SIZE`)
/// while the exports could not keep up are counted too". With the receiver
/// down and a span queue of 8, the test makes 400 spans at once and checks
/// that the error says all 400 were dropped, not only those the exporter
/// was handed (once the only ones counted).
#[test]
fn shutdown_counts_every_span_a_dead_receiver_lost() {
    const NAME: &str = "shutdown_counts_every_span_a_dead_receiver_lost";
    const SPANS: usize = 400;
    let port = closed_port().to_string();
    if in_own_process(
        NAME,
        &[("DEAD_PORT", &port), ("OTEL_BSP_MAX_QUEUE_SIZE", "8")],
    )
    .is_some()
    {
        return;
    }
    let base = format!("http://127.0.0.1:{}", std::env::var("DEAD_PORT").unwrap());
    let guard = Telemetry::new()
        .endpoint(&base)
        .metrics(false)
        .short_lived(true)
        .stderr_logs(None)
        .init()
        .unwrap();
    for _ in 0..SPANS {
        drop(tracing::info_span!("doomed").entered());
    }
    match guard.shutdown() {
        Err(Error::Flush(msg)) => {
            assert!(
                msg.contains(&format!("dropped {SPANS} spans")),
                "all {SPANS} spans were lost: {msg}"
            );
        }
        other => panic!("expected Error::Flush, got {other:?}"),
    }
}

/// An OTLP/HTTP receiver on `listener` that answers 200 to every request
/// and counts them.
fn serve_ok(listener: TcpListener, count: std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let count = count.clone();
            std::thread::spawn(move || answer_ok(conn, &count));
        }
    });
}

fn answer_ok(conn: TcpStream, count: &std::sync::atomic::AtomicUsize) {
    let mut reader = BufReader::new(conn);
    loop {
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let reply =
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if reader.get_mut().write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// `Guard::flush`: "Exports what is buffered now, without stopping. ...
/// spans or metrics it could not deliver are (`Error::Flush` says how many
/// were dropped since the last flush, where to, and why)". The test
/// flushes while the receiver is down (an error), brings the receiver up,
/// and checks that a flush that delivers everything it was given is `Ok`.
/// Such a flush once repeated the first failure, as the count of dropped
/// spans was never reset.
#[test]
fn a_flush_that_delivers_everything_is_ok_after_an_earlier_failure() {
    const NAME: &str = "a_flush_that_delivers_everything_is_ok_after_an_earlier_failure";
    let port = closed_port().to_string();
    if in_own_process(NAME, &[("DEAD_PORT", &port)]).is_some() {
        return;
    }
    let port: u16 = std::env::var("DEAD_PORT").unwrap().parse().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let guard = Telemetry::new()
        .endpoint(&base)
        .metrics(false)
        .short_lived(true)
        .stderr_logs(None)
        .init()
        .unwrap();
    drop(tracing::info_span!("while.down").entered());
    assert!(
        matches!(guard.flush(), Err(Error::Flush(_))),
        "the receiver is down"
    );
    // The receiver comes up on that port.
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("the port is still free");
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    serve_ok(listener, count.clone());
    drop(tracing::info_span!("while.up").entered());
    let flushed = guard.flush();
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the second span was delivered"
    );
    assert_eq!(flushed, Ok(()), "this flush delivered all it was given");
    let _ = guard.shutdown();
    std::thread::sleep(Duration::from_millis(10));
}

/// docs/telemetry.md: `OTEL_EXPORTER_OTLP_ENDPOINT` defaults to
/// `http://localhost:4318`; the crate reads a variable that is blank as
/// unset (`init_from_env` installs nothing for `"  "`), and
/// `Telemetry::endpoint` says "An empty (or blank) one is no endpoint, as
/// an empty variable is". With the variable blank, the test checks that
/// `init_from_env` gives `None` and `init` succeeds with the default
/// endpoint (it was once a build error).
#[test]
fn a_blank_endpoint_variable_is_no_endpoint_for_init() {
    const NAME: &str = "a_blank_endpoint_variable_is_no_endpoint_for_init";
    if in_own_process(NAME, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "  ")]).is_some() {
        return;
    }
    assert!(snakepit_telemetry::init_from_env().unwrap().is_none());
    let guard = Telemetry::new()
        .metrics(false)
        .stderr_logs(None)
        .short_lived(true)
        .init();
    assert!(guard.is_ok(), "{guard:?}");
}
