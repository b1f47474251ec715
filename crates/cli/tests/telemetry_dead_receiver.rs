//! `snakepit exec` with an OTLP endpoint where nothing listens: the command
//! still succeeds, says once per signal where the export went and why it
//! failed, and what it dropped; `-q` keeps all of that off stderr.

use std::net::TcpListener;
use std::process::{Command, Output};

#[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
fn exec(endpoint: &str, quiet: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_snakepit"));
    cmd.arg("exec");
    if quiet {
        cmd.arg("-q");
    }
    cmd.args(["echo", r#"{"x": 1}"#])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn a_receiver_that_is_down_is_reported_once_per_signal() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let out = exec(&endpoint, false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for signal in ["traces", "metrics"] {
        let line = format!("cannot export {signal} to {endpoint}/v1/{signal}: ");
        assert_eq!(stderr.matches(&line).count(), 1, "{line}\n{stderr}");
    }
    assert!(stderr.contains("Connection refused"), "{stderr}");
    assert!(stderr.contains("dropped"), "what was dropped: {stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no colour codes into a pipe: {stderr}"
    );

    let quiet = exec(&endpoint, true);
    let stderr = String::from_utf8_lossy(&quiet.stderr);
    assert!(quiet.status.success(), "{stderr}");
    assert!(!stderr.contains("snakepit_telemetry"), "-q: {stderr}");
}
