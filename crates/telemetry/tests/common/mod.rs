//! What the end-to-end tests share: the receivers (`rotel.rs`, the
//! traces-only `phoenix.rs`, and a plain one in `http.rs`) and one
//! traced pool call checked from the caller to the Python handler.

#![allow(dead_code)] // each test binary uses part of it

mod http;
mod phoenix;
mod rotel;

#[allow(unused_imports)] // each test binary uses part of it
pub(crate) use http::*;
#[allow(unused_imports)] // each test binary uses part of it
pub(crate) use phoenix::*;
pub(crate) use rotel::*;

use std::time::Duration;

use anyhow::{Context, Result};

/// Set in a test's own process ([`in_own_process`]).
pub(crate) const CHILD: &str = "SNAKEPIT_TELEMETRY_TEST_CHILD";

/// Variables that would change what a test sees, removed from a child
/// process before its own are set.
pub(crate) const OTEL_VARS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_PROPAGATORS",
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "RUST_LOG",
];

/// Runs test `name` of this binary again in a process of its own with
/// `env` (`init` reads the environment and installs process-wide state):
/// `None` when this call is that process (then the caller runs the body),
/// else the child's stderr once it passed.
pub(crate) fn in_own_process(name: &str, env: &[(&str, &str)]) -> Option<String> {
    if std::env::var_os(CHILD).is_some() {
        return None;
    }
    let mut cmd = snakepit_tests::this_test(name);
    // So that a test marked ignored runs its body when asked for.
    cmd.arg("--include-ignored").env(CHILD, "1");
    for var in OTEL_VARS {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{name} failed in its own process:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("1 passed"), "{name} did not run: {stdout}");
    Some(stderr)
}

/// Exports a trace from a real pool call to a real receiver and checks the
/// spans' links: the caller's span, the pool's `snakepit.call`, the Python
/// bridge's `snakepit.worker traced` and the handler's own `handler.work`,
/// each the parent of the next, in one trace. Also checks that the
/// metrics arrived.
pub(crate) async fn trace_through_pool(protocol: snakepit_telemetry::Protocol) -> Result<()> {
    use opentelemetry::trace::TraceContextExt;
    use serde_json::json;
    use snakepit_adapters::Bridge;
    use snakepit_core::Pool;
    use tracing::Instrument;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let rotel = Rotel::start()?;
    let endpoint = match protocol {
        snakepit_telemetry::Protocol::Grpc => rotel.grpc_base(),
        _ => rotel.http_base(),
    };
    let telemetry = snakepit_telemetry::Telemetry::new()
        .service_name("snakepit-e2e")
        .endpoint(endpoint)
        .protocol(protocol)
        .stderr_logs(None)
        .init()?;

    // No OTEL_SERVICE_NAME on the adapter: `instrument` gives the workers
    // the host's name with `-worker` after it.
    let adapter =
        Bridge::python(worker_script()).env("OTEL_EXPORTER_OTLP_ENDPOINT", rotel.http_base());
    let pool = snakepit_telemetry::instrument(Pool::builder(adapter).size(1).name("e2e"))
        .start()
        .await?;
    let gauges = snakepit_telemetry::observe(&pool);

    let root = tracing::info_span!("e2e.request", token = "tok-1");
    let root_trace = format!("{:032x}", root.context().span().span_context().trace_id());
    let reply = pool
        .execute("traced", json!({"token": "tok-1"}))
        .instrument(root.clone())
        .await?;
    drop(root);
    // The handler saw a traceparent of our trace, and its own span is in it.
    let tp = reply["traceparent"]
        .as_str()
        .context("no traceparent reached the handler")?;
    assert!(
        tp.starts_with(&format!("00-{root_trace}-")),
        "{tp} vs {root_trace}"
    );
    assert_eq!(reply["trace_id"], root_trace.as_str());
    let handler_span = reply["span_id"].as_str().unwrap_or_default().to_owned();

    // Collect while the pool is up, so that its gauges have something to say.
    telemetry.flush()?;
    drop(gauges);
    pool.shutdown().await?;
    telemetry.shutdown()?;

    let wanted = [
        "e2e.request",
        "snakepit.call",
        "snakepit.worker traced",
        "handler.work",
    ];
    let (spans, arrived) = rotel.wait_for(Duration::from_secs(20), |spans, out| {
        wanted.iter().all(|w| {
            spans
                .iter()
                .any(|s| s.name == *w && s.trace_id == root_trace)
        }) && spans.iter().any(|s| s.name == "snakepit.worker.start")
            && out.contains("snakepit.call.duration")
    });
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name && s.trace_id == root_trace)
            .cloned()
    };
    assert!(
        arrived,
        "not every span and metric arrived; received spans: {:#?}\n{}",
        spans,
        rotel.output()
    );
    let (root, call, bridge, handler) = (
        find("e2e.request").unwrap_or_default(),
        find("snakepit.call").unwrap_or_default(),
        find("snakepit.worker traced").unwrap_or_default(),
        find("handler.work").unwrap_or_default(),
    );
    assert_eq!(
        root.parent_id, "",
        "the caller's span is the root: {root:?}"
    );
    assert_eq!(
        call.parent_id, root.id,
        "snakepit.call under the caller's span"
    );
    assert_eq!(
        bridge.parent_id, call.id,
        "the bridge's span under snakepit.call"
    );
    assert_eq!(
        handler.parent_id, bridge.id,
        "the handler's span under the bridge's"
    );
    assert_eq!(handler.id, handler_span);
    assert_eq!(call.kind, "SPAN_KIND_CLIENT", "{call:?}");
    assert_eq!(bridge.kind, "SPAN_KIND_SERVER", "{bridge:?}");
    assert_eq!(call.service, "snakepit-e2e");
    assert_eq!(
        bridge.service, "snakepit-e2e-worker",
        "the worker reports under its own name"
    );
    assert_eq!(handler.service, "snakepit-e2e-worker");
    for numeric in ["snakepit.worker", "process.pid", "snakepit.queue_wait_us"] {
        assert_eq!(
            call.attribute_types.get(numeric).map(String::as_str),
            Some("Int"),
            "{numeric} is not a number: {call:?}"
        );
    }
    assert_eq!(
        call.attributes.get("snakepit.command").map(String::as_str),
        Some("traced")
    );
    assert_eq!(
        call.attributes.get("snakepit.pool").map(String::as_str),
        Some("e2e")
    );
    assert_eq!(
        call.attributes.get("snakepit.outcome").map(String::as_str),
        Some("ok")
    );
    assert_eq!(
        handler.attributes.get("token").map(String::as_str),
        Some("tok-1")
    );
    let start = spans
        .iter()
        .find(|s| s.name == "snakepit.worker.start")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        start.attributes.get("snakepit.pool").map(String::as_str),
        Some("e2e")
    );
    for numeric in ["snakepit.worker", "process.pid"] {
        assert_eq!(
            start.attribute_types.get(numeric).map(String::as_str),
            Some("Int"),
            "{numeric} of the start span is not a number: {start:?}"
        );
    }

    let out = rotel.output();
    if let Ok(path) = std::env::var("SNAKEPIT_E2E_DUMP") {
        std::fs::write(path, &out)?; // what the receiver printed, to read by eye
    }
    for metric in [
        "snakepit.call.duration",
        "snakepit.call.queue_wait",
        "snakepit.worker.init.duration",
        "snakepit.workers",
        "snakepit.queue.depth",
        "snakepit.calls.in_flight",
        "snakepit.worker.memory",
    ] {
        assert!(
            out.contains(&format!("Name: {metric}\n")),
            "metric {metric} missing:\n{out}"
        );
    }
    Ok(())
}

/// The test worker whose start fails while a flag file exists
/// (`tests/workers/restart_worker.py`).
pub(crate) fn restart_worker() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workers/restart_worker.py")
}

/// Sends `signal` (a name: `KILL`, `STOP`, `CONT`) to `pid` with kill(1).
pub(crate) fn kill(signal: &str, pid: u32) {
    #[allow(clippy::disallowed_methods)] // kill(1), not a worker
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// An empty directory of this test process's own, named `name`.
pub(crate) fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "snakepit-telemetry-tests-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A worker that reports the service name it was given.
pub(crate) const SERVICE_WORKER: &str = r#"
import os
import snakepit_bridge
worker = snakepit_bridge.Worker()

@worker.command("service")
def service(args):
    return os.environ.get("OTEL_SERVICE_NAME")

worker.run()
"#;
