//! OpenTelemetry for Snakepit pools: traces and metrics exported over OTLP
//! (to Jaeger, an OpenTelemetry Collector, or any OTLP receiver), and the
//! trace context carried into the workers, so that spans made inside
//! Python, Node.js or Ruby handlers join the host's trace.
//!
//! The other Snakepit crates only emit `tracing` spans and an in-process
//! event stream; this crate is the one that depends on OpenTelemetry and
//! installs a subscriber.
//!
//! ```no_run
//! use serde_json::json;
//! use snakepit_adapters::GenericPython;
//! use snakepit_core::Pool;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // Reads OTEL_EXPORTER_OTLP_ENDPOINT, _PROTOCOL, OTEL_SERVICE_NAME, ...
//!     let telemetry = snakepit_telemetry::init()?;
//!
//!     // Trace context into every request frame, metrics from every event.
//!     let pool = snakepit_telemetry::instrument(Pool::builder(GenericPython).size(2))
//!         .start()
//!         .await?;
//!     // Queue depth, idle/busy workers and worker memory as gauges.
//!     let gauges = snakepit_telemetry::observe(&pool);
//!
//!     let span = tracing::info_span!("handle_request");
//!     let _enter = span.enter();
//!     pool.execute("echo", json!({"hello": "world"})).await?;
//!     drop(_enter);
//!
//!     drop(gauges);
//!     pool.shutdown().await?;
//!     telemetry.shutdown()?; // exports what is still buffered
//!     Ok(())
//! }
//! ```
//!
//! A command-line tool that should export only when asked to:
//!
//! ```no_run
//! let _telemetry = snakepit_telemetry::init_from_env()?; // None unless OTEL_EXPORTER_OTLP_ENDPOINT is set
//! # Ok::<(), snakepit_telemetry::Error>(())
//! ```
//!
//! See `docs/telemetry.md` for sending to Jaeger, what a trace looks like,
//! and the list of metrics and events.
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---------|---------|--------------|
//! | `http`  | yes     | OTLP over HTTP/protobuf (port 4318), with a small blocking HTTP/1.1 client of its own, without TLS |
//! | `grpc`  | no      | OTLP over gRPC (port 4317), with `tonic` on a one-thread Tokio runtime |

#[cfg(not(any(feature = "http", feature = "grpc")))]
compile_error!("snakepit-telemetry needs a transport: enable its `http` or `grpc` feature");

mod config;
mod context;
mod error;
mod exporters;
mod guard;
#[cfg(feature = "http")]
mod http_client;
mod install;
mod metrics;
mod watch;

pub use config::{Protocol, Telemetry, ENDPOINT_VAR};
pub use context::{trace_headers, traceparent};
pub use error::Error;
pub use guard::Guard;
pub use install::{init, init_from_env};
pub use metrics::{Observation, PoolMetrics};

use snakepit_core::{Pool, PoolBuilder};

/// Wires telemetry into a pool builder: each call's request frame carries
/// the trace context of its `snakepit.call` span, as the global propagator
/// writes it ([`trace_headers`]; unless the call's options carry a
/// `traceparent` already), every pool event feeds
/// [`PoolMetrics::global`], and the workers report under a service of their
/// own (`OTEL_SERVICE_NAME` = the host's name and `-worker`, unless the
/// adapter sets it).
pub fn instrument(builder: PoolBuilder) -> PoolBuilder {
    let metrics = PoolMetrics::global();
    builder
        // The workers' spans land under a service of their own; an adapter
        // that sets OTEL_SERVICE_NAME itself keeps its name.
        .worker_env("OTEL_SERVICE_NAME", config::worker_service_name())
        .trace_context(trace_headers)
        .on_event(move |event| metrics.record(event))
}

/// Reports `pool`'s gauges through [`PoolMetrics::global`] while the
/// returned guard is kept.
pub fn observe(pool: &Pool) -> Observation {
    PoolMetrics::global().observe(pool)
}

/// The Rust examples of `docs/telemetry.md`, compiled as this crate's
/// doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/telemetry.md")]
pub struct TelemetryDocDoctests;
