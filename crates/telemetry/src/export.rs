//! Installing the subscriber and the OTLP exporters, and flushing them.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::watch::{ExportState, WatchedMetrics, WatchedSpans};

/// The variable that names where OTLP goes; [`init_from_env`] exports only
/// when it (or its traces-only form) is set.
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const PROTOCOL_VAR: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const TRACES_PROTOCOL_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
const METRICS_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
const TRACES_EXPORTER_VAR: &str = "OTEL_TRACES_EXPORTER";
const METRICS_EXPORTER_VAR: &str = "OTEL_METRICS_EXPORTER";
const PROPAGATORS_VAR: &str = "OTEL_PROPAGATORS";
const DISABLED_VAR: &str = "OTEL_SDK_DISABLED";
const TIMEOUT_VAR: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";

/// How long one export may take in a short-lived program
/// ([`Telemetry::short_lived`]).
const SHORT_EXPORT_TIMEOUT: Duration = Duration::from_secs(1);

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
    metrics: Option<bool>,
    short_lived: bool,
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
            metrics: None,
            short_lived: false,
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

    /// Whether to export metrics too (default: yes, unless
    /// `OTEL_METRICS_EXPORTER=none`). A receiver that does not take metrics
    /// (HTTP 404 or 405, gRPC `Unimplemented`, as Jaeger answers) is
    /// reported once as a warning and metrics stop; that is never an error.
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = Some(on);
        self
    }

    /// For a program that runs briefly, such as a command-line tool: each
    /// export is tried once, without the retries and their backoff, and
    /// given at most 1 s (less if `OTEL_EXPORTER_OTLP_TIMEOUT` says so), so
    /// that a receiver that is down costs the program's exit next to
    /// nothing; traces and metrics are flushed side by side at the end.
    pub fn short_lived(mut self, on: bool) -> Self {
        self.short_lived = on;
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

    /// Log lines at `level` and above to stderr, whatever `RUST_LOG` says
    /// (a command's `--quiet` is `Level::ERROR`).
    pub fn stderr_level(self, level: Level) -> Self {
        self.stderr_logs(Some(Targets::new().with_default(level)))
    }

    /// Which spans and events are exported (default: `INFO` and above).
    pub fn traces(mut self, filter: Targets) -> Self {
        self.traces = filter;
        self
    }

    /// Installs the global `tracing` subscriber (OpenTelemetry layer, and
    /// stderr logs unless turned off), the global tracer and meter
    /// providers and the global propagator (`OTEL_PROPAGATORS`, by default
    /// W3C trace context and baggage). Keep the guard: dropping it (or
    /// [`Guard::shutdown`]) exports what is still buffered.
    ///
    /// `OTEL_SDK_DISABLED=true` installs the stderr logs only;
    /// `OTEL_TRACES_EXPORTER=none` and `OTEL_METRICS_EXPORTER=none` leave
    /// that signal out (`otlp`, the default, is the only other value).
    pub fn init(self) -> Result<Guard, Error> {
        let disabled = sdk_disabled();
        let traces_on = !disabled && exporter_wanted(TRACES_EXPORTER_VAR)?;
        let metrics_on = !disabled
            && match self.metrics {
                Some(on) => on,
                None => exporter_wanted(METRICS_EXPORTER_VAR)?,
            };
        let propagator = if disabled { None } else { Some(propagator()?) };
        let protocol = match self.protocol {
            Some(p) => p,
            None => Protocol::from_env()?.unwrap_or_else(Protocol::feature_default),
        };
        let export = ExportSettings::new(self.short_lived);
        let resource = resource(self.service_name.as_deref());
        let runtime = if traces_on || metrics_on {
            Runtime::new(protocol)?
        } else {
            Runtime::none()
        };
        let mut states = Vec::new();
        let tracer_provider = if traces_on {
            let state = ExportState::new(
                "traces",
                signal_endpoint(protocol, self.endpoint.as_deref(), Signal::Traces),
            );
            let inner = runtime
                .in_context(|| span_exporter(protocol, self.endpoint.as_deref(), &export))?;
            let exporter = WatchedSpans {
                inner,
                state: state.clone(),
            };
            states.push(state);
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource.clone())
                    .build(),
            )
        } else {
            None
        };
        let meter_provider = if metrics_on {
            let state = ExportState::new(
                "metrics",
                signal_endpoint(protocol, self.endpoint.as_deref(), Signal::Metrics),
            );
            let inner = runtime
                .in_context(|| metric_exporter(protocol, self.endpoint.as_deref(), &export))?;
            let exporter = WatchedMetrics {
                inner,
                state: state.clone(),
            };
            states.push(state);
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

        // Source locations, thread names and busy/idle times would add five
        // attributes and two clock reads per poll to every span.
        let otel = tracer_provider.as_ref().map(|provider| {
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("snakepit"))
                .with_location(false)
                .with_threads(false)
                .with_tracked_inactivity(false)
                .with_filter(self.traces)
        });
        let logs = self.stderr_logs.map(|filter| {
            use std::io::IsTerminal;
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter(filter)
        });
        tracing_subscriber::registry()
            .with(otel)
            .with(logs)
            .try_init()
            .map_err(|_| Error::SubscriberInstalled)?;
        if let Some(t) = &tracer_provider {
            opentelemetry::global::set_tracer_provider(t.clone());
        }
        if let Some(p) = propagator {
            opentelemetry::global::set_text_map_propagator(p);
        }
        if let Some(m) = &meter_provider {
            opentelemetry::global::set_meter_provider(m.clone());
        }
        Ok(Guard {
            tracer_provider,
            meter_provider,
            states,
            final_flush: export.timeout,
            _runtime: runtime,
        })
    }

    /// [`init`](Telemetry::init), but only when
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
    /// is set and `OTEL_SDK_DISABLED` is not `true`; otherwise installs
    /// nothing and returns `None`.
    pub fn init_if_configured(self) -> Result<Option<Guard>, Error> {
        if env(ENDPOINT_VAR).is_none() && env(TRACES_ENDPOINT_VAR).is_none() {
            return Ok(None);
        }
        if sdk_disabled() {
            return Ok(None);
        }
        self.init().map(Some)
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
    Telemetry::new().init_if_configured()
}

fn sdk_disabled() -> bool {
    env(DISABLED_VAR).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Whether `var` (`OTEL_TRACES_EXPORTER` or `OTEL_METRICS_EXPORTER`) asks
/// for OTLP export: unset or `otlp` yes, `none` no.
fn exporter_wanted(var: &'static str) -> Result<bool, Error> {
    exporter_choice(var, env(var))
}

fn exporter_choice(var: &'static str, value: Option<String>) -> Result<bool, Error> {
    let Some(value) = value else {
        return Ok(true);
    };
    let mut otlp = false;
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "otlp" => otlp = true,
            "none" => {}
            _ => {
                return Err(Error::Unsupported {
                    var,
                    value,
                    expected: "`otlp` or `none`",
                })
            }
        }
    }
    Ok(otlp)
}

/// The propagator `OTEL_PROPAGATORS` names (`tracecontext`, `baggage`,
/// `none`, comma-separated), by default W3C trace context and baggage.
fn propagator() -> Result<TextMapCompositePropagator, Error> {
    propagator_named(env(PROPAGATORS_VAR))
}

fn propagator_named(value: Option<String>) -> Result<TextMapCompositePropagator, Error> {
    let value = value.unwrap_or_else(|| "tracecontext,baggage".into());
    let mut parts: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::new();
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "tracecontext" => parts.push(Box::new(TraceContextPropagator::new())),
            "baggage" => parts.push(Box::new(BaggagePropagator::new())),
            "none" => parts.clear(),
            _ => {
                return Err(Error::Unsupported {
                    var: PROPAGATORS_VAR,
                    value,
                    expected: "`tracecontext`, `baggage` or `none`",
                })
            }
        }
    }
    Ok(TextMapCompositePropagator::new(parts))
}

/// The retry policy and time limit of each export.
struct ExportSettings {
    /// `None`: the exporter's own (`OTEL_EXPORTER_OTLP_TIMEOUT`, else 10 s)
    /// and its retries.
    timeout: Option<Duration>,
}

impl ExportSettings {
    fn new(short_lived: bool) -> Self {
        let timeout = short_lived.then(|| {
            env(TIMEOUT_VAR)
                .and_then(|ms| ms.trim().parse::<u64>().ok())
                .map(Duration::from_millis)
                .map_or(SHORT_EXPORT_TIMEOUT, |t| t.min(SHORT_EXPORT_TIMEOUT))
        });
        ExportSettings { timeout }
    }
}

#[derive(Clone, Copy)]
enum Signal {
    Traces,
    Metrics,
}

/// Where a signal's exports go, as the exporter will resolve it.
fn signal_endpoint(protocol: Protocol, endpoint: Option<&str>, signal: Signal) -> String {
    let (own_var, path) = match signal {
        Signal::Traces => (TRACES_ENDPOINT_VAR, "/v1/traces"),
        Signal::Metrics => (METRICS_ENDPOINT_VAR, "/v1/metrics"),
    };
    match protocol {
        Protocol::HttpProtobuf => match endpoint {
            Some(e) => signal_url(e, path),
            None => env(own_var).unwrap_or_else(|| {
                signal_url(
                    &env(ENDPOINT_VAR).unwrap_or_else(|| "http://localhost:4318".into()),
                    path,
                )
            }),
        },
        Protocol::Grpc => endpoint
            .map(str::to_owned)
            .or_else(|| env(own_var))
            .or_else(|| env(ENDPOINT_VAR))
            .unwrap_or_else(|| "http://localhost:4317".into()),
    }
}

/// Keeps the exporters alive; dropping it (or [`Guard::shutdown`]) exports
/// what is still buffered and stops them.
#[must_use = "dropping the guard stops the exporters"]
pub struct Guard {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    states: Vec<Arc<ExportState>>,
    /// How long the final flush may take, for a short-lived program.
    final_flush: Option<Duration>,
    _runtime: Runtime,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("traces", &self.tracer_provider.is_some())
            .field("metrics", &self.meter_provider.is_some())
            .finish()
    }
}

impl Guard {
    /// Exports what is buffered now, without stopping.
    ///
    /// A receiver that does not take metrics is not an error (see
    /// [`Telemetry::metrics`]); spans or metrics it could not deliver are
    /// (`Error::Flush` says how many, where to, and why).
    pub fn flush(&self) -> Result<(), Error> {
        let traces = self.tracer_provider.as_ref().map(|t| t.force_flush());
        let metrics = self.meter_provider.as_ref().map(|m| m.force_flush());
        self.outcome(traces, metrics)
    }

    /// Exports what is buffered and stops the exporters; spans ended after
    /// this are dropped. Errors as for [`flush`](Guard::flush).
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), Error> {
        let tracer = self.tracer_provider.take();
        let meter = self.meter_provider.take();
        let limit = self.final_flush.unwrap_or(Duration::from_secs(5));
        // Side by side: a receiver that is down costs one export's time,
        // not one per signal.
        let (traces, metrics) = std::thread::scope(|s| {
            let metrics = meter.map(|m| s.spawn(move || m.shutdown_with_timeout(limit)));
            let traces = tracer.map(|t| t.shutdown_with_timeout(limit));
            let metrics = metrics.map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(OTelSdkError::InternalFailure("panicked".into())))
            });
            (traces, metrics)
        });
        self.outcome(traces, metrics)
    }

    /// One error naming what was dropped, or the SDK's own errors when the
    /// exporters did not fail (a timeout, say).
    fn outcome(
        &self,
        traces: Option<OTelSdkResult>,
        metrics: Option<OTelSdkResult>,
    ) -> Result<(), Error> {
        let mut errors = Vec::new();
        for (signal, result) in [("traces", traces), ("metrics", metrics)] {
            let state = self.states.iter().find(|s| s.signal() == signal);
            if let Some(dropped) = state.and_then(|s| s.dropped()) {
                errors.push(dropped);
            } else if let Some(Err(e)) = result {
                if state.is_some_and(|s| s.refused()) {
                    continue; // reported once already; not an error
                }
                errors.push(format!("{signal}: {e}"));
            }
        }
        joined(errors)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(target: "snakepit_telemetry", "{e}");
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
    let resource = builder
        .with_attribute(KeyValue::new("telemetry.distro.name", "snakepit-telemetry"))
        .build();
    if let Some(name) = resource.get(&opentelemetry::Key::from_static_str("service.name")) {
        let _ = SERVICE_NAME.set(name.as_str().into_owned());
    }
    resource
}

/// The host's `service.name`, once [`Telemetry::init`] resolved it.
static SERVICE_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The service name workers report under by default: the host's, with
/// `-worker` after it (`OTEL_SERVICE_NAME`, else the resolved name, else
/// the executable's name).
pub(crate) fn worker_service_name() -> String {
    let host = env("OTEL_SERVICE_NAME")
        .or_else(|| SERVICE_NAME.get().cloned())
        .unwrap_or_else(exe_name);
    format!("{host}-worker")
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
    export: &ExportSettings,
) -> Result<opentelemetry_otlp::SpanExporter, Error> {
    let _ = (endpoint, export);
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
            if let Some(t) = export.timeout {
                use opentelemetry_otlp::WithHttpConfig;
                b = b
                    .with_timeout(t)
                    .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled());
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
            if let Some(t) = export.timeout {
                use opentelemetry_otlp::WithTonicConfig;
                b = b
                    .with_timeout(t)
                    .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled());
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
    export: &ExportSettings,
) -> Result<opentelemetry_otlp::MetricExporter, Error> {
    let _ = (endpoint, export);
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
            if let Some(t) = export.timeout {
                use opentelemetry_otlp::WithHttpConfig;
                b = b
                    .with_timeout(t)
                    .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled());
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
            if let Some(t) = export.timeout {
                use opentelemetry_otlp::WithTonicConfig;
                b = b
                    .with_timeout(t)
                    .with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled());
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
    /// No runtime: nothing is exported.
    fn none() -> Self {
        Runtime {
            #[cfg(feature = "grpc")]
            rt: None,
        }
    }

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
    fn exporters_are_otlp_or_none() {
        let v = |s: &str| Some(s.to_owned());
        assert_eq!(exporter_choice(METRICS_EXPORTER_VAR, None), Ok(true));
        assert_eq!(exporter_choice(METRICS_EXPORTER_VAR, v("otlp")), Ok(true));
        assert_eq!(exporter_choice(METRICS_EXPORTER_VAR, v("none")), Ok(false));
        assert_eq!(exporter_choice(TRACES_EXPORTER_VAR, v(" none ")), Ok(false));
        assert_eq!(
            exporter_choice(METRICS_EXPORTER_VAR, v("prometheus")),
            Err(Error::Unsupported {
                var: METRICS_EXPORTER_VAR,
                value: "prometheus".into(),
                expected: "`otlp` or `none`",
            })
        );
    }

    #[test]
    fn propagators_default_to_trace_context_and_baggage() {
        let fields = |p: TextMapCompositePropagator| {
            let mut f: Vec<String> = p.fields().map(str::to_owned).collect();
            f.sort();
            f
        };
        assert_eq!(
            fields(propagator_named(None).unwrap()),
            ["baggage", "traceparent", "tracestate"]
        );
        assert_eq!(
            fields(propagator_named(Some("tracecontext".into())).unwrap()),
            ["traceparent", "tracestate"]
        );
        assert!(fields(propagator_named(Some("none".into())).unwrap()).is_empty());
        assert!(matches!(
            propagator_named(Some("b3".into())),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn signal_endpoints_name_the_url_the_exporter_uses() {
        assert_eq!(
            signal_endpoint(
                Protocol::HttpProtobuf,
                Some("http://h:4318/"),
                Signal::Metrics
            ),
            "http://h:4318/v1/metrics"
        );
        assert_eq!(
            signal_endpoint(Protocol::Grpc, Some("http://h:4317"), Signal::Traces),
            "http://h:4317"
        );
    }

    #[test]
    fn an_explicit_service_name_wins() {
        let r = resource(Some("svc-x"));
        let name = r.get(&opentelemetry::Key::from_static_str("service.name"));
        assert_eq!(name.map(|v| v.as_str().into_owned()), Some("svc-x".into()));
    }
}
