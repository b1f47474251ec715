//! `OTEL_SDK_DISABLED=true` turns `init()` into a no-op for OpenTelemetry:
//! nothing is exported and no trace context goes to the workers. (Its own
//! test binary: the variable is process-wide.)

#[test]
fn init_honours_otel_sdk_disabled() -> Result<(), snakepit_telemetry::Error> {
    std::env::set_var("OTEL_SDK_DISABLED", "true");
    // A receiver that is not there: nothing may try to reach it.
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9");
    let guard = snakepit_telemetry::init()?;
    assert_eq!(
        format!("{guard:?}"),
        "Guard { traces: false, metrics: false }"
    );
    let span = tracing::info_span!("work");
    let _enter = span.enter();
    assert_eq!(snakepit_telemetry::trace_headers(), None);
    guard.shutdown()
}
