//! The W3C trace context of the current span, for the request frames.

use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C `traceparent` of the current `tracing` span's OpenTelemetry
/// context (`00-<trace id>-<span id>-<flags>`), or `None` when there is no
/// valid one: no subscriber with the OpenTelemetry layer is installed, or
/// the current span is disabled.
///
/// [`instrument`](crate::instrument) hands it to
/// `PoolBuilder::trace_context`, which calls it inside each call's
/// `snakepit.call` span: the worker's spans then become children of that
/// span.
///
/// ```
/// // No subscriber is installed here, so there is no trace to continue.
/// assert_eq!(snakepit_telemetry::traceparent(), None);
/// ```
pub fn traceparent() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}
