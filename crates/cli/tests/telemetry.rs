//! `snakepit exec` exports its trace when the standard OTLP endpoint
//! variable is set, with no flag: checked against a real receiver (Rotel).

#[path = "../../telemetry/tests/common/rotel.rs"]
mod rotel;

use std::process::Command;
use std::time::Duration;

#[test]
#[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
fn exec_exports_its_trace_when_the_otlp_endpoint_is_set() {
    let receiver = rotel::Rotel::start().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_snakepit"))
        .args(["exec", "echo", r#"{"x": 1}"#])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_base())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_SERVICE_NAME", "snakepit-cli-test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (spans, arrived) = receiver.wait_for(Duration::from_secs(15), |spans, _| {
        spans.iter().any(|s| s.name == "snakepit exec")
            && spans.iter().any(|s| s.name == "snakepit.call")
    });
    assert!(arrived, "spans received: {spans:#?}");
    let exec = spans.iter().find(|s| s.name == "snakepit exec").unwrap();
    let call = spans.iter().find(|s| s.name == "snakepit.call").unwrap();
    assert_eq!(call.trace_id, exec.trace_id, "one trace");
    assert_eq!(
        call.parent_id, exec.id,
        "the call is a child of the command"
    );
    assert!(receiver.output().contains("snakepit-cli-test"));
}
