//! The trace context reaches the worker as OpenTelemetry's configured
//! propagator writes it: `traceparent`, `tracestate` and `baggage` of the
//! call's span.

use std::path::Path;

use anyhow::Result;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::TextMapCompositePropagator;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::Pool;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_gets_traceparent_and_tracestate_from_the_propagator() -> Result<()> {
    // Spans are recorded, not exported: this is about what the frame carries.
    let provider = SdkTracerProvider::builder().build();
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .try_init()?;
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));

    // The caller continues a remote trace that has a trace state.
    let remote = SpanContext::new(
        TraceId::from_hex(TRACE)?,
        SpanId::from_hex("00f067aa0ba902b7")?,
        TraceFlags::SAMPLED,
        true,
        TraceState::from_key_value([("vendor", "x")])?,
    );
    let caller = tracing::info_span!("caller");
    caller
        .set_parent(
            opentelemetry::Context::new()
                .with_remote_span_context(remote)
                .with_baggage([KeyValue::new("tenant", "acme")]),
        )
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workers/context_worker.py");
    let pool = snakepit_telemetry::instrument(Pool::builder(Bridge::python(script)).size(1))
        .start()
        .await?;
    let reply = pool
        .execute("context", json!({}))
        .instrument(caller)
        .await?;
    pool.shutdown().await?;

    let tp = reply["traceparent"].as_str().unwrap_or_default();
    assert!(tp.starts_with(&format!("00-{TRACE}-")), "{reply}");
    assert!(
        !tp.contains("00f067aa0ba902b7"),
        "the parent is snakepit.call, not the caller: {tp}"
    );
    assert_eq!(reply["tracestate"], "vendor=x", "{reply}");
    // Baggage crosses too, through the same propagator, and the worker's
    // OpenTelemetry context carries it.
    assert_eq!(reply["baggage"], "tenant=acme", "{reply}");
    assert_eq!(reply["tenant"], "acme", "{reply}");
    Ok(())
}
