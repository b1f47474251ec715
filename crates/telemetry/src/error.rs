//! The one error type of this crate.

/// What can go wrong while installing or flushing telemetry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The protocol is neither `grpc` nor `http/protobuf`.
    #[error("unknown OTLP protocol `{0}` (expected `grpc` or `http/protobuf`)")]
    UnknownProtocol(String),
    /// The protocol asked for was left out of this build.
    #[error("OTLP over {protocol} needs snakepit-telemetry's `{feature}` feature")]
    FeatureMissing {
        /// The protocol asked for.
        protocol: &'static str,
        /// The cargo feature that brings it.
        feature: &'static str,
    },
    /// The exporter could not be built (a malformed endpoint, say).
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    /// The endpoint is `https://`: this crate exports over plain HTTP and
    /// gRPC only (no TLS stack is built in).
    #[error(
        "the OTLP endpoint {0} is https, and snakepit-telemetry exports over plain http only: \
         send to a collector on plain http (the OpenTelemetry Collector, Rotel, Jaeger) \
         that forwards over TLS"
    )]
    TlsUnsupported(String),
    /// Another global `tracing` subscriber is already installed.
    #[error("a global tracing subscriber is already installed")]
    SubscriberInstalled,
    /// The gRPC exporter's runtime could not start.
    #[error("cannot start the gRPC exporter's runtime: {0}")]
    Runtime(String),
    /// Flushing or shutting down the exporters failed, or what was
    /// buffered could not be delivered (what was dropped, where to, why).
    #[error("flushing telemetry failed: {0}")]
    Flush(String),
    /// `OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER` or
    /// `OTEL_PROPAGATORS` names something this crate does not provide.
    #[error("{var}={value} is not supported (expected {expected})")]
    Unsupported {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it may be.
        expected: &'static str,
    },
}
