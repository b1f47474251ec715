//! OpenTelemetry across the wire (the `opentelemetry` feature): the client
//! writes the W3C context of the caller's current span into the call's NATS
//! headers, the host reads it back and runs the call in a span whose
//! parent is the caller's. Both go through OpenTelemetry's global
//! propagator, as `snakepit_telemetry` installs it (trace context and
//! baggage).

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Headers<'a>(&'a mut HeaderMap);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        // A propagator's text that no NATS header can carry (a line break,
        // a name with a colon) is left out: async-nats would panic on it.
        let name = key.parse::<async_nats::HeaderName>();
        let value = value.parse::<async_nats::HeaderValue>();
        if let (Ok(name), Ok(value), false) = (name, value, key.is_empty()) {
            if !value.as_str().is_empty() {
                self.0.insert(name, value);
            }
        }
    }
}

struct Incoming<'a>(&'a HeaderMap);

impl Extractor for Incoming<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// The headers of the current span's context, when it has a valid one
/// (an OpenTelemetry layer is installed and the span is enabled).
pub(crate) fn current_headers() -> Option<HeaderMap> {
    let cx = tracing::Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut headers = HeaderMap::new();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut Headers(&mut headers))
    });
    Some(headers)
}

/// Makes the caller's context in `headers` the parent of `span`; whether
/// `span` now has a valid context of its own (an OpenTelemetry layer
/// records it), so that the pool's calls continue from it.
pub(crate) fn continue_trace(span: &tracing::Span, headers: Option<&HeaderMap>) -> bool {
    if let Some(h) = headers {
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Incoming(h)));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
    span.context().span().span_context().is_valid()
}
