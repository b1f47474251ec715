//! The trace context of the current span, for the request frames, as the
//! configured OpenTelemetry propagator writes it.

use std::collections::HashMap;

use opentelemetry::trace::TraceContextExt;
use snakepit_core::TraceHeaders;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The headers OpenTelemetry's global propagator
/// (`global::get_text_map_propagator`; [`init`](crate::init) installs W3C
/// trace context and baggage, or what `OTEL_PROPAGATORS` names) writes for
/// the current `tracing` span: `traceparent` and, when the trace has one,
/// `tracestate`. `None` when there is no valid span context (no subscriber
/// with the OpenTelemetry layer, a disabled span) or the propagator wrote
/// no `traceparent`.
///
/// [`instrument`](crate::instrument) hands it to
/// `PoolBuilder::trace_context`, which calls it inside each call's
/// `snakepit.call` span: the worker's spans then become children of that
/// span.
///
/// ```
/// // No subscriber is installed here, so there is no trace to continue.
/// assert_eq!(snakepit_telemetry::trace_headers(), None);
/// ```
pub fn trace_headers() -> Option<TraceHeaders> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    Some(TraceHeaders {
        traceparent: carrier.remove("traceparent")?,
        tracestate: carrier.remove("tracestate").filter(|s| !s.is_empty()),
        baggage: carrier.remove("baggage").filter(|s| !s.is_empty()),
    })
}

/// The `traceparent` of [`trace_headers`].
///
/// ```
/// assert_eq!(snakepit_telemetry::traceparent(), None);
/// ```
pub fn traceparent() -> Option<String> {
    trace_headers().map(|h| h.traceparent)
}
