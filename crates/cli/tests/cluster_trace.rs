//! One trace across three processes, exported to a real OTLP receiver
//! (Rotel): `snakepit exec --cluster` (the caller), `snakepit serve` (a host
//! of the cluster) and the host's Python worker, linked through the W3C
//! context in the call's NATS headers.

#[path = "../../telemetry/tests/common/rotel.rs"]
mod rotel;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_snakepit");

fn traced_worker() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../telemetry/tests/workers/traced_worker.py")
}

/// The caller's `snakepit exec` span is the parent of the host's
/// `snakepit.cluster.serve`, which is the parent of the host pool's
/// `snakepit.call`, which is the parent of the worker's own span: one trace
/// id, each process reporting under its own service name.
#[test]
#[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
fn one_trace_runs_from_the_caller_through_the_host_to_the_worker() {
    let receiver = rotel::Rotel::start().unwrap();
    let nats = snakepit_tests::NatsServer::start();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_base()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
    ];
    let script = traced_worker();
    let mut host = Command::new(BIN)
        .args(["serve", "--nats", &nats.url, "--cluster", "tracetest"])
        .args(["--pool-size", "1", "--host-id", "h1", "--script"])
        .arg(&script)
        .envs(otel.iter().map(|(k, v)| (k, v)))
        .env("OTEL_SERVICE_NAME", "snakepit-host")
        .env_remove("SNAKEPIT_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("snakepit serve runs");
    // The host says so on stderr once it serves; the rest of its stderr is
    // kept for the failure messages.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stderr = host.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("serves cluster") {
                let _ = ready_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let served = ready_rx.recv_timeout(Duration::from_secs(60)).is_ok();
    if !served {
        let _ = host.kill();
        let _ = host.wait();
        panic!("the host never served: {}", reader.join().unwrap());
    }

    let out = Command::new(BIN)
        .args(["exec", "--nats", &nats.url, "--cluster", "tracetest"])
        .args(["traced", r#"{"token": "across"}"#])
        .envs(otel.iter().map(|(k, v)| (k, v)))
        .env("OTEL_SERVICE_NAME", "snakepit-caller")
        .env_remove("SNAKEPIT_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reply: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let trace = reply["trace_id"].as_str().unwrap().to_owned();

    // The host leaves on SIGTERM and exports what it still holds.
    // SAFETY: kill(2) on the child this test started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(host.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = host.wait().unwrap();
    let host_stderr = reader.join().unwrap();
    assert!(status.success(), "{status:?}: {host_stderr}");

    let wanted = [
        "snakepit exec",
        "snakepit.cluster.serve",
        "snakepit.call",
        "snakepit.worker traced",
        "handler.work",
    ];
    let (spans, arrived) = receiver.wait_for(Duration::from_secs(20), |spans, _| {
        wanted
            .iter()
            .all(|w| spans.iter().any(|s| s.name == *w && s.trace_id == trace))
    });
    assert!(
        arrived,
        "not every span of trace {trace} arrived: {spans:#?}\nhost: {host_stderr}"
    );
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name && s.trace_id == trace)
            .cloned()
            .unwrap()
    };
    let (caller, serve, call, bridge, handler) = (
        find("snakepit exec"),
        find("snakepit.cluster.serve"),
        find("snakepit.call"),
        find("snakepit.worker traced"),
        find("handler.work"),
    );
    assert_eq!(caller.parent_id, "", "the caller's span is the root");
    assert_eq!(
        serve.parent_id, caller.id,
        "the host's span under the caller's"
    );
    assert_eq!(
        call.parent_id, serve.id,
        "the pool's call under the host's span"
    );
    assert_eq!(
        bridge.parent_id, call.id,
        "the worker's span under the call"
    );
    assert_eq!(handler.parent_id, bridge.id);
    assert_eq!(reply["span_id"], handler.id.as_str());
    assert_eq!(caller.service, "snakepit-caller");
    assert_eq!(serve.service, "snakepit-host");
    assert_eq!(serve.kind, "SPAN_KIND_SERVER", "{serve:?}");
    assert_eq!(
        serve.attributes.get("snakepit.host").map(String::as_str),
        Some("h1")
    );
    assert_eq!(call.service, "snakepit-host");
    assert_eq!(bridge.service, "snakepit-host-worker");
}
