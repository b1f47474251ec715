//! Installing the subscriber and the OTLP exporters, and flushing them.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The variable that names where OTLP goes; [`init_from_env`] exports only
/// when it (or its traces-only form) is set.
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const PROTOCOL_VAR: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const TRACES_PROTOCOL_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";

/// How spans and metrics travel to the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// OTLP over gRPC, port 4317 by convention (feature `grpc`).
    Grpc,
    /// OTLP over HTTP with protobuf bodies, port 4318 by convention
    /// (feature `http`, on by default).
    HttpProtobuf,
}

impl Protocol {
    /// Parses the values of `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` or
    /// `http/protobuf`.
    ///
    /// ```
    /// use snakepit_telemetry::Protocol;
    /// assert_eq!(Protocol::parse("grpc"), Ok(Protocol::Grpc));
    /// assert_eq!(Protocol::parse("http/protobuf"), Ok(Protocol::HttpProtobuf));
    /// assert!(Protocol::parse("carrier-pigeon").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self, Error> {
        match s.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            other => Err(Error::UnknownProtocol(other.to_owned())),
        }
    }

    /// The protocol the environment asks for
    /// (`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, then
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`), or `None` when neither is set.
    pub fn from_env() -> Result<Option<Self>, Error> {
        match env(TRACES_PROTOCOL_VAR).or_else(|| env(PROTOCOL_VAR)) {
            Some(s) => Self::parse(&s).map(Some),
            None => Ok(None),
        }
    }

    /// HTTP when the `http` feature is on, else gRPC.
    fn feature_default() -> Self {
        if cfg!(feature = "http") {
            Protocol::HttpProtobuf
        } else {
            Protocol::Grpc
        }
    }
}

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
    /// Another global `tracing` subscriber is already installed.
    #[error("a global tracing subscriber is already installed")]
    SubscriberInstalled,
    /// The gRPC exporter's runtime could not start.
    #[error("cannot start the gRPC exporter's runtime: {0}")]
    Runtime(String),
    /// Flushing or shutting down the exporters failed.
    #[error("flushing telemetry failed: {0}")]
    Flush(String),
}

/// Settings for [`Telemetry::init`]; anything left unset comes from the
/// standard `OTEL_*` variables, then from OpenTelemetry's defaults.
///
/// ```no_run
/// use snakepit_telemetry::{Protocol, Telemetry};
///
/// let _guard = Telemetry::new()
///     .service_name("my-service")
///     .endpoint("http://127.0.0.1:4318")
///     .protocol(Protocol::HttpProtobuf)
///     .init()?;
/// // ... run pools; dropping the guard flushes what is still buffered.
/// # Ok::<(), snakepit_telemetry::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Telemetry {
    service_name: Option<String>,
    endpoint: Option<String>,
    protocol: Option<Protocol>,
    metrics: bool,
    metrics_interval: Option<Duration>,
    stderr_logs: Option<Targets>,
    traces: Targets,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    /// Defaults: everything from the environment; spans at `INFO` and above
    /// exported; metrics exported; log lines at `WARN` and above (or what
    /// `RUST_LOG` says, in `target=level` form) printed to stderr.
    pub fn new() -> Self {
        let logs = env("RUST_LOG")
            .and_then(|s| s.parse::<Targets>().ok())
            .unwrap_or_else(|| Targets::new().with_default(Level::WARN));
        Telemetry {
            service_name: None,
            endpoint: None,
            protocol: None,
            metrics: true,
            metrics_interval: None,
            stderr_logs: Some(logs),
            traces: Targets::new().with_default(Level::INFO),
        }
    }

    /// The `service.name` resource attribute (default: `OTEL_SERVICE_NAME`,
    /// else the executable's name).
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// The receiver's base address, such as `http://127.0.0.1:4318` (HTTP,
    /// `/v1/traces` and `/v1/metrics` are appended) or
    /// `http://127.0.0.1:4317` (gRPC). Default: `OTEL_EXPORTER_OTLP_ENDPOINT`,
    /// else the protocol's localhost port.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// The transport (default: `OTEL_EXPORTER_OTLP_PROTOCOL`, else HTTP
    /// when the `http` feature is on).
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// Whether to export metrics too (default: yes).
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// How often metrics are exported (default: `OTEL_METRIC_EXPORT_INTERVAL`
    /// in milliseconds, else 60 s). The guard exports once more on shutdown.
    pub fn metrics_interval(mut self, every: Duration) -> Self {
        self.metrics_interval = Some(every);
        self
    }

    /// Which log lines go to stderr, or `None` for none.
    pub fn stderr_logs(mut self, filter: Option<Targets>) -> Self {
        self.stderr_logs = filter;
        self
    }

    /// Which spans and events are exported (default: `INFO` and above).
    pub fn traces(mut self, filter: Targets) -> Self {
        self.traces = filter;
        self
    }

    /// Installs the global `tracing` subscriber (OpenTelemetry layer, and
    /// stderr logs unless turned off), the global tracer and meter
    /// providers and the W3C propagator. Keep the guard: dropping it (or
    /// [`Guard::shutdown`]) exports what is still buffered.
    pub fn init(self) -> Result<Guard, Error> {
        let protocol = match self.protocol {
            Some(p) => p,
            None => Protocol::from_env()?.unwrap_or_else(Protocol::feature_default),
        };
        let resource = resource(self.service_name.as_deref());
        let runtime = Runtime::new(protocol)?;
        let span_exporter =
            runtime.in_context(|| span_exporter(protocol, self.endpoint.as_deref()))?;
        let tracer_provider = SdkTracerProvider::builder()
            .with_batch_exporter(span_exporter)
            .with_resource(resource.clone())
            .build();
        let meter_provider = if self.metrics {
            let exporter =
                runtime.in_context(|| metric_exporter(protocol, self.endpoint.as_deref()))?;
            let mut reader = PeriodicReader::builder(exporter);
            if let Some(every) = self.metrics_interval {
                reader = reader.with_interval(every);
            }
            Some(
                SdkMeterProvider::builder()
                    .with_reader(reader.build())
                    .with_resource(resource)
                    .build(),
            )
        } else {
            None
        };

        let tracer = tracer_provider.tracer("snakepit");
        // Source locations, thread names and busy/idle times would add five
        // attributes and two clock reads per poll to every span.
        let otel = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(self.traces);
        let logs = self.stderr_logs.map(|filter| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter)
        });
        tracing_subscriber::registry()
            .with(otel)
            .with(logs)
            .try_init()
            .map_err(|_| Error::SubscriberInstalled)?;
        opentelemetry::global::set_tracer_provider(tracer_provider.clone());
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        if let Some(m) = &meter_provider {
            opentelemetry::global::set_meter_provider(m.clone());
        }
        Ok(Guard {
            tracer_provider: Some(tracer_provider),
            meter_provider,
            _runtime: runtime,
        })
    }
}

/// Installs telemetry with every setting from the environment; see
/// [`Telemetry::new`].
pub fn init() -> Result<Guard, Error> {
    Telemetry::new().init()
}

/// Installs telemetry only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and `OTEL_SDK_DISABLED` is
/// not `true`: the one line a command-line tool needs to export its traces
/// when asked to.
///
/// ```
/// // Nothing is installed unless the variable is set.
/// std::env::remove_var("OTEL_EXPORTER_OTLP_ENDPOINT");
/// std::env::remove_var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
/// assert!(snakepit_telemetry::init_from_env()?.is_none());
/// # Ok::<(), snakepit_telemetry::Error>(())
/// ```
pub fn init_from_env() -> Result<Option<Guard>, Error> {
    if env(ENDPOINT_VAR).is_none() && env(TRACES_ENDPOINT_VAR).is_none() {
        return Ok(None);
    }
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    init().map(Some)
}

/// Keeps the exporters alive; dropping it (or [`Guard::shutdown`]) exports
/// what is still buffered and stops them.
#[must_use = "dropping the guard stops the exporters"]
pub struct Guard {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    _runtime: Runtime,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("metrics", &self.meter_provider.is_some())
            .finish()
    }
}

impl Guard {
    /// Exports what is buffered now, without stopping.
    pub fn flush(&self) -> Result<(), Error> {
        let mut errors = Vec::new();
        if let Some(t) = &self.tracer_provider {
            if let Err(e) = t.force_flush() {
                errors.push(format!("traces: {e}"));
            }
        }
        if let Some(m) = &self.meter_provider {
            if let Err(e) = m.force_flush() {
                errors.push(format!("metrics: {e}"));
            }
        }
        joined(errors)
    }

    /// Exports what is buffered and stops the exporters; spans ended after
    /// this are dropped.
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), Error> {
        let mut errors = Vec::new();
        if let Some(t) = self.tracer_provider.take() {
            if let Err(e) = t.shutdown() {
                errors.push(format!("traces: {e}"));
            }
        }
        if let Some(m) = self.meter_provider.take() {
            if let Err(e) = m.shutdown() {
                errors.push(format!("metrics: {e}"));
            }
        }
        joined(errors)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("snakepit-telemetry: {e}");
        }
    }
}

fn joined(errors: Vec<String>) -> Result<(), Error> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Flush(errors.join("; ")))
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn resource(service_name: Option<&str>) -> Resource {
    let name = match service_name {
        Some(name) => Some(name.to_owned()),
        None => {
            let detected = Resource::builder().build();
            let unknown = detected
                .get(&opentelemetry::Key::from_static_str("service.name"))
                .is_none_or(|v| v.as_str().starts_with("unknown_service"));
            unknown.then(exe_name)
        }
    };
    let builder = Resource::builder();
    let builder = match name {
        Some(name) => builder.with_service_name(name),
        None => builder,
    };
    builder
        .with_attribute(KeyValue::new("telemetry.distro.name", "snakepit-telemetry"))
        .build()
}

fn exe_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "snakepit".into())
}

/// A base address with a signal's path appended, for HTTP.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
fn signal_url(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

fn span_exporter(
    protocol: Protocol,
    endpoint: Option<&str>,
) -> Result<opentelemetry_otlp::SpanExporter, Error> {
    let _ = endpoint;
    match protocol {
        #[cfg(feature = "http")]
        Protocol::HttpProtobuf => {
            use opentelemetry_otlp::WithExportConfig;
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(e) = endpoint {
                b = b.with_endpoint(signal_url(e, "/v1/traces"));
            }
            b.build().map_err(|e| Error::Exporter(e.to_string()))
        }
        #[cfg(feature = "grpc")]
        Protocol::Grpc => {
            use opentelemetry_otlp::WithExportConfig;
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_protocol(opentelemetry_otlp::Protocol::Grpc);
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            b.build().map_err(|e| Error::Exporter(e.to_string()))
        }
        #[allow(unreachable_patterns)]
        other => Err(missing(other)),
    }
}

fn metric_exporter(
    protocol: Protocol,
    endpoint: Option<&str>,
) -> Result<opentelemetry_otlp::MetricExporter, Error> {
    let _ = endpoint;
    match protocol {
        #[cfg(feature = "http")]
        Protocol::HttpProtobuf => {
            use opentelemetry_otlp::WithExportConfig;
            let mut b = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(e) = endpoint {
                b = b.with_endpoint(signal_url(e, "/v1/metrics"));
            }
            b.build().map_err(|e| Error::Exporter(e.to_string()))
        }
        #[cfg(feature = "grpc")]
        Protocol::Grpc => {
            use opentelemetry_otlp::WithExportConfig;
            let mut b = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_protocol(opentelemetry_otlp::Protocol::Grpc);
            if let Some(e) = endpoint {
                b = b.with_endpoint(e);
            }
            b.build().map_err(|e| Error::Exporter(e.to_string()))
        }
        #[allow(unreachable_patterns)]
        other => Err(missing(other)),
    }
}

#[allow(dead_code)] // unused when both transports are built in
fn missing(protocol: Protocol) -> Error {
    match protocol {
        Protocol::Grpc => Error::FeatureMissing {
            protocol: "gRPC",
            feature: "grpc",
        },
        Protocol::HttpProtobuf => Error::FeatureMissing {
            protocol: "HTTP",
            feature: "http",
        },
    }
}

/// The Tokio runtime the gRPC exporter's connection lives on: one worker
/// thread, owned by the guard, so `init` works from plain `main` and from
/// inside any runtime alike. HTTP needs none (its client has its own).
struct Runtime {
    #[cfg(feature = "grpc")]
    rt: Option<tokio::runtime::Runtime>,
}

impl Runtime {
    fn new(protocol: Protocol) -> Result<Self, Error> {
        #[cfg(feature = "grpc")]
        {
            let rt = match protocol {
                Protocol::Grpc => Some(
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .thread_name("snakepit-otlp")
                        .enable_all()
                        .build()
                        .map_err(|e| Error::Runtime(e.to_string()))?,
                ),
                _ => None,
            };
            Ok(Runtime { rt })
        }
        #[cfg(not(feature = "grpc"))]
        {
            let _ = protocol;
            Ok(Runtime {})
        }
    }

    fn in_context<T>(&self, f: impl FnOnce() -> T) -> T {
        #[cfg(feature = "grpc")]
        if let Some(rt) = &self.rt {
            let _enter = rt.enter();
            return f();
        }
        f()
    }
}

#[cfg(feature = "grpc")]
impl Drop for Runtime {
    fn drop(&mut self) {
        // Dropping a runtime inside another one's context panics; the guard
        // may well be dropped at the end of an async main.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_signal_paths_are_appended_once() {
        assert_eq!(
            signal_url("http://127.0.0.1:4318/", "/v1/traces"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            signal_url("http://collector:4318", "/v1/metrics"),
            "http://collector:4318/v1/metrics"
        );
    }

    #[test]
    fn unknown_protocols_are_typed_errors() {
        assert_eq!(
            Protocol::parse("http/json"),
            Err(Error::UnknownProtocol("http/json".into()))
        );
        assert_eq!(Protocol::parse(" grpc "), Ok(Protocol::Grpc));
    }

    #[test]
    fn an_explicit_service_name_wins() {
        let r = resource(Some("svc-x"));
        let name = r.get(&opentelemetry::Key::from_static_str("service.name"));
        assert_eq!(name.map(|v| v.as_str().into_owned()), Some("svc-x".into()));
    }
}
