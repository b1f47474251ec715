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
    let cx = recorded_context()?;
    let mut carrier = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    Some(TraceHeaders {
        traceparent: carrier.remove("traceparent")?,
        tracestate: carrier.remove("tracestate").filter(|s| !s.is_empty()),
        baggage: carrier.remove("baggage").filter(|s| !s.is_empty()),
    })
}

/// The OpenTelemetry context of the current span or, when the
/// OpenTelemetry layer does not record it (a trace filter such as
/// `Telemetry::traces` left its target out: the pool's `snakepit.call`,
/// for one), of its nearest ancestor the layer does record, as the layer
/// itself parents the spans it records. `None` when no span on the way to
/// the root has a valid context.
fn recorded_context() -> Option<opentelemetry::Context> {
    let current = tracing::Span::current();
    let cx = current.context();
    if cx.span().span_context().is_valid() {
        return Some(cx);
    }
    current
        .with_subscriber(|(id, dispatch)| {
            use tracing_subscriber::registry::LookupSpan;
            let registry = dispatch.downcast_ref::<tracing_subscriber::Registry>()?;
            // The ids first: no span of the registry is held while the
            // layer reads a span's extensions.
            let ancestors: Vec<tracing::span::Id> =
                registry.span(id)?.scope().skip(1).map(|s| s.id()).collect();
            ancestors.iter().find_map(|a| {
                let cx = tracing_opentelemetry::get_otel_context(a, dispatch)?;
                cx.span().span_context().is_valid().then_some(cx)
            })
        })
        .flatten()
}

/// The `traceparent` of [`trace_headers`].
///
/// ```
/// assert_eq!(snakepit_telemetry::traceparent(), None);
/// ```
pub fn traceparent() -> Option<String> {
    trace_headers().map(|h| h.traceparent)
}
