//! What docs/telemetry.md and the crate's docs promise that the other
//! suites do not already show: the environment's variables read at `init`
//! (each bad value a typed error, nothing exported without an endpoint for
//! `init_from_env`), and the workers' own service name.
//!
//! `init` installs process-wide state and reads the environment, so each
//! test runs in a process of its own (this test binary, started again for
//! that one test, with its variables set there).

mod common;

use std::path::PathBuf;

use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::Pool;
use snakepit_telemetry::{Error, Telemetry};

/// Whether this call is test `name`'s own process (then the caller runs
/// the body; otherwise it has run there and passed).
fn in_own_process(name: &str, env: &[(&str, &str)]) -> bool {
    common::in_own_process(name, env).is_none()
}

/// telemetry.md: "`OTEL_EXPORTER_OTLP_PROTOCOL` ... anything else is
/// `Error::UnknownProtocol`".
#[test]
fn an_unknown_otlp_protocol_is_an_unknown_protocol_error() {
    if !in_own_process(
        "an_unknown_otlp_protocol_is_an_unknown_protocol_error",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ],
    ) {
        return;
    }
    match snakepit_telemetry::init() {
        Err(Error::UnknownProtocol(p)) => assert_eq!(p, "http/json"),
        Err(other) => panic!("expected UnknownProtocol, got {other}"),
        Ok(_) => panic!("expected UnknownProtocol, got a guard"),
    }
}

/// telemetry.md: "`OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER`: `otlp`
/// or `none` ...; anything else is `Error::Unsupported`".
#[test]
fn an_unsupported_exporter_is_an_unsupported_error() {
    if !in_own_process(
        "an_unsupported_exporter_is_an_unsupported_error",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
        ],
    ) {
        return;
    }
    match snakepit_telemetry::init() {
        Err(e @ Error::Unsupported { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("OTEL_TRACES_EXPORTER") && text.contains("zipkin"),
                "{text}"
            );
        }
        Err(other) => panic!("expected Unsupported, got {other}"),
        Ok(_) => panic!("expected Unsupported, got a guard"),
    }
}

/// telemetry.md: "`OTEL_PROPAGATORS`: `tracecontext`, `baggage`, `none`,
/// comma-separated; anything else is `Error::Unsupported`".
#[test]
fn an_unsupported_propagator_is_an_unsupported_error() {
    if !in_own_process(
        "an_unsupported_propagator_is_an_unsupported_error",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_PROPAGATORS", "tracecontext,b3"),
        ],
    ) {
        return;
    }
    match snakepit_telemetry::init() {
        Err(e @ Error::Unsupported { .. }) => {
            assert!(e.to_string().contains("OTEL_PROPAGATORS"), "{e}");
        }
        Err(other) => panic!("expected Unsupported, got {other}"),
        Ok(_) => panic!("expected Unsupported, got a guard"),
    }
}

/// lib.rs and telemetry.md: `init_from_env` is "None unless
/// OTEL_EXPORTER_OTLP_ENDPOINT is set", and so is
/// `Telemetry::init_if_configured`.
#[test]
fn nothing_is_installed_without_an_endpoint() {
    if !in_own_process("nothing_is_installed_without_an_endpoint", &[]) {
        return;
    }
    assert!(snakepit_telemetry::init_from_env().unwrap().is_none());
    assert!(Telemetry::new()
        .short_lived(true)
        .init_if_configured()
        .unwrap()
        .is_none());
    // Nothing was installed: a subscriber can still be set.
    let guard = Telemetry::new()
        .endpoint("http://127.0.0.1:9")
        .metrics(false)
        .short_lived(true)
        .init()
        .expect("init installs now");
    drop(guard);
}

/// telemetry.md: "A pool wired with `instrument` gives its workers a
/// service of their own, the host's name with `-worker` after it
/// (`my-service-worker`) ...; an adapter that sets `OTEL_SERVICE_NAME`
/// itself keeps its own".
#[test]
fn instrumented_workers_report_as_the_hosts_service_with_worker_unless_the_adapter_names_one() {
    if !in_own_process(
        "instrumented_workers_report_as_the_hosts_service_with_worker_unless_the_adapter_names_one",
        &[("OTEL_SERVICE_NAME", "my-service")],
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!(
        "snakepit-telemetry-promises-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let script: PathBuf = dir.join("service.py");
    std::fs::write(&script, common::SERVICE_WORKER).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pool = snakepit_telemetry::instrument(Pool::builder(Bridge::python(&script)).size(1))
            .start()
            .await
            .unwrap();
        let name = pool.execute("service", json!({})).await.unwrap();
        assert_eq!(name, "my-service-worker");
        pool.shutdown().await.unwrap();

        let pool = snakepit_telemetry::instrument(
            Pool::builder(Bridge::python(&script).env("OTEL_SERVICE_NAME", "model-server")).size(1),
        )
        .start()
        .await
        .unwrap();
        let name = pool.execute("service", json!({})).await.unwrap();
        assert_eq!(name, "model-server");
        pool.shutdown().await.unwrap();
    });
    let _ = std::fs::remove_dir_all(&dir);
}
