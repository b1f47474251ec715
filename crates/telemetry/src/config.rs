//! What [`Telemetry::init`] is told: the settings a program gives, and the
//! standard `OTEL_*` variables for what it leaves unset.

use std::time::Duration;

use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::KeyValue;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::Resource;
use tracing::Level;
use tracing_subscriber::filter::Targets;

use crate::Error;

/// The variable that names where OTLP goes; [`init_from_env`](crate::init_from_env) exports only
/// when it (or its traces-only form) is set.
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub(crate) const TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const PROTOCOL_VAR: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
const TRACES_PROTOCOL_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
const METRICS_PROTOCOL_VAR: &str = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL";
pub(crate) const METRICS_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT";
pub(crate) const TRACES_EXPORTER_VAR: &str = "OTEL_TRACES_EXPORTER";
pub(crate) const METRICS_EXPORTER_VAR: &str = "OTEL_METRICS_EXPORTER";
const PROPAGATORS_VAR: &str = "OTEL_PROPAGATORS";
const DISABLED_VAR: &str = "OTEL_SDK_DISABLED";
pub(crate) const TIMEOUT_VAR: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";

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

    /// The protocol the environment asks for the traces
    /// (`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, then
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`), or `None` when neither is set. The
    /// metrics read `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL` first instead.
    pub fn from_env() -> Result<Option<Self>, Error> {
        Self::from_env_var(TRACES_PROTOCOL_VAR)
    }

    /// The protocol the environment asks for the metrics
    /// (`OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`, then
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`), or `None` when neither is set.
    pub(crate) fn metrics_from_env() -> Result<Option<Self>, Error> {
        Self::from_env_var(METRICS_PROTOCOL_VAR)
    }

    /// A signal's own variable, then the general one, as the OpenTelemetry
    /// specification orders them.
    fn from_env_var(own: &str) -> Result<Option<Self>, Error> {
        match env(own).or_else(|| env(PROTOCOL_VAR)) {
            Some(s) => Self::parse(&s).map(Some),
            None => Ok(None),
        }
    }

    /// HTTP when the `http` feature is on, else gRPC.
    pub(crate) fn feature_default() -> Self {
        if cfg!(feature = "http") {
            Protocol::HttpProtobuf
        } else {
            Protocol::Grpc
        }
    }
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
#[derive(Clone)]
pub struct Telemetry {
    pub(crate) service_name: Option<String>,
    pub(crate) endpoint: Option<String>,
    pub(crate) protocol: Option<Protocol>,
    pub(crate) metrics: Option<bool>,
    pub(crate) short_lived: bool,
    pub(crate) metrics_interval: Option<Duration>,
    pub(crate) stderr_logs: Option<Targets>,
    pub(crate) traces: Targets,
}

/// The endpoint shows with its userinfo (credentials) hidden.
impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("service_name", &self.service_name)
            .field(
                "endpoint",
                &self.endpoint.as_deref().map(crate::watch::redacted),
            )
            .field("protocol", &self.protocol)
            .field("metrics", &self.metrics)
            .field("short_lived", &self.short_lived)
            .field("metrics_interval", &self.metrics_interval)
            .field("stderr_logs", &self.stderr_logs)
            .field("traces", &self.traces)
            .finish()
    }
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
    /// else the protocol's localhost port. An empty (or blank) one is no
    /// endpoint, as an empty variable is. Credentials in its userinfo
    /// (`http://user:password@host:4318`) are sent as HTTP basic
    /// authentication, and every message shows them as `***`. Its scheme
    /// is `http://` (in any case): `https://` is
    /// [`Error::TlsUnsupported`] at `init`, any other [`Error::Exporter`].
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        let endpoint = endpoint.into();
        self.endpoint = (!endpoint.trim().is_empty()).then_some(endpoint);
        self
    }

    /// The transport of both signals (default: for each signal its own
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or
    /// `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`, else
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`, else HTTP when the `http` feature is
    /// on).
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
    /// given at most 1 s (less if `OTEL_EXPORTER_OTLP_TIMEOUT`, or the
    /// signal's own `OTEL_EXPORTER_OTLP_<SIGNAL>_TIMEOUT`, says so), so
    /// that a receiver that is down costs the program's exit next to
    /// nothing; traces and metrics are flushed side by side at the end. A
    /// receiver that takes the connection and never answers costs the exit
    /// at most half as long again as the export (1.5 s), the time for the
    /// shutdown to hear what the export dropped and say so.
    pub fn short_lived(mut self, on: bool) -> Self {
        self.short_lived = on;
        self
    }

    /// How often metrics are exported (default: `OTEL_METRIC_EXPORT_INTERVAL`
    /// in milliseconds, else 60 s; zero, here or there, means 60 s). The
    /// guard exports once more on shutdown.
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
}

pub(crate) fn sdk_disabled() -> bool {
    env(DISABLED_VAR).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Whether `var` (`OTEL_TRACES_EXPORTER` or `OTEL_METRICS_EXPORTER`) asks
/// for OTLP export: unset or `otlp` yes, `none` no.
pub(crate) fn exporter_wanted(var: &'static str) -> Result<bool, Error> {
    exporter_choice(var, env(var))
}

fn exporter_choice(var: &'static str, value: Option<String>) -> Result<bool, Error> {
    // A list that names nothing (`,`, say) is no list, as a blank variable is.
    let Some(value) = value.filter(|v| names(v).next().is_some()) else {
        return Ok(true);
    };
    let mut otlp = false;
    for name in names(&value) {
        match name {
            "otlp" => otlp = true,
            "none" => {}
            _ => {
                return Err(Error::Unsupported {
                    var,
                    value: value.clone(),
                    expected: "`otlp` or `none`",
                })
            }
        }
    }
    Ok(otlp)
}

/// The propagator `OTEL_PROPAGATORS` names (`tracecontext`, `baggage`,
/// `none`, comma-separated), by default W3C trace context and baggage.
pub(crate) fn propagator() -> Result<TextMapCompositePropagator, Error> {
    propagator_named(env(PROPAGATORS_VAR))
}

fn propagator_named(value: Option<String>) -> Result<TextMapCompositePropagator, Error> {
    let value = value
        .filter(|v| names(v).next().is_some())
        .unwrap_or_else(|| "tracecontext,baggage".into());
    let mut parts: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::new();
    for name in names(&value) {
        match name {
            "tracecontext" => parts.push(Box::new(TraceContextPropagator::new())),
            "baggage" => parts.push(Box::new(BaggagePropagator::new())),
            "none" => parts.clear(),
            _ => {
                return Err(Error::Unsupported {
                    var: PROPAGATORS_VAR,
                    value: value.clone(),
                    expected: "`tracecontext`, `baggage` or `none`",
                })
            }
        }
    }
    Ok(TextMapCompositePropagator::new(parts))
}

/// The headers variable the exporter of a signal reads: the signal's own
/// (`metrics` or `traces`) when it is set, else the general one.
pub(crate) fn headers_var(signal: &str) -> &'static str {
    let own = match signal {
        "metrics" => "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
        _ => "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    };
    if std::env::var_os(own).is_some() {
        own
    } else {
        "OTEL_EXPORTER_OTLP_HEADERS"
    }
}

/// The entries of a headers variable (`key=value,...`) that the exporter
/// leaves out without a word, each said by its name (never its value,
/// which may be a secret) and why: no `=`, an empty name or value, a name
/// that is no HTTP header name, or a value with a control character (a
/// `%0A` decoded, say), which no HTTP header can carry.
pub(crate) fn unsendable_headers(list: &str) -> Vec<String> {
    let mut left_out = Vec::new();
    for entry in list.split_terminator(',').map(str::trim) {
        if entry.is_empty() {
            continue;
        }
        let Some((key, value)) = entry.split_once('=') else {
            left_out.push("an entry with no `=`".to_owned());
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if key.is_empty() {
            left_out.push("an entry with no name".to_owned());
        } else if !key.chars().all(token) {
            left_out.push("an entry whose name is no header name".to_owned());
        } else if value.is_empty() {
            left_out.push(format!("`{key}` (no value)"));
        } else if percent_decoded(value)
            .bytes()
            .any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
        {
            left_out.push(format!("`{key}` (a control character in its value)"));
        }
    }
    left_out
}

/// `value` with its `%XX` escapes decoded, as the exporter decodes it (all
/// of them, or none when one is malformed or the result is not UTF-8).
fn percent_decoded(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(b) = hex else {
                return value.to_owned();
            };
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| value.to_owned())
}

/// The names of a comma-separated list, without the spaces around them.
fn names(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|n| !n.is_empty())
}

/// A variable's value, `None` when it is unset or blank. A value that is
/// not UTF-8 is read with its bad bytes as U+FFFD, so that it is refused as
/// any other value nobody could mean (an unknown protocol, a malformed
/// endpoint), not taken as unset: a set `OTEL_EXPORTER_OTLP_ENDPOINT` that
/// turned telemetry off without a word would hide the mistake.
pub(crate) fn env(name: &str) -> Option<String> {
    std::env::var_os(name)
        .map(|v| v.to_string_lossy().into_owned())
        .filter(|v| !v.trim().is_empty())
}

pub(crate) fn resource(service_name: Option<&str>) -> Resource {
    let name = match service_name {
        Some(name) => Some(name.to_owned()),
        None => {
            let detected = Resource::builder().build();
            let unknown = detected
                .get(&opentelemetry::Key::from_static_str("service.name"))
                .is_none_or(|v| {
                    // A blank OTEL_SERVICE_NAME is no name, as every blank variable is.
                    let v = v.as_str();
                    v.trim().is_empty() || v.starts_with("unknown_service")
                });
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

/// Keeps `resource`'s `service.name` as the host's, for the workers' name:
/// called once [`Telemetry::init`] has installed it, so that an `init`
/// that failed leaves no name behind.
pub(crate) fn remember_service_name(resource: &Resource) {
    if let Some(name) = resource.get(&opentelemetry::Key::from_static_str("service.name")) {
        let _ = SERVICE_NAME.set(name.as_str().into_owned());
    }
}

/// The host's `service.name`, once [`Telemetry::init`] installed it.
static SERVICE_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The service name workers report under by default: the host's, with
/// `-worker` after it: the name `init` installed (a name given in code
/// wins over `OTEL_SERVICE_NAME` there), else `OTEL_SERVICE_NAME`, else
/// the executable's name.
pub(crate) fn worker_service_name() -> String {
    let host = SERVICE_NAME
        .get()
        .cloned()
        .or_else(|| env("OTEL_SERVICE_NAME"))
        .unwrap_or_else(exe_name);
    format!("{host}-worker")
}

fn exe_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "snakepit".into())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(exporter_choice(TRACES_EXPORTER_VAR, v(" , ")), Ok(true));
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
        assert_eq!(
            fields(propagator_named(Some(" , ".into())).unwrap()),
            ["baggage", "traceparent", "tracestate"]
        );
        assert!(matches!(
            propagator_named(Some("b3".into())),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn headers_the_exporter_would_leave_out_are_named_without_their_values() {
        assert!(unsendable_headers("a=1, b=x%20y ,,c=%ZZ").is_empty());
        assert_eq!(
            unsendable_headers("novalue,=v,x-e=,bad key=v,x-nl=a%0Ab,ok=1,x-tab=a%09b"),
            [
                "an entry with no `=`",
                "an entry with no name",
                "`x-e` (no value)",
                "an entry whose name is no header name",
                "`x-nl` (a control character in its value)",
            ]
        );
    }

    #[test]
    fn an_explicit_service_name_wins() {
        let r = resource(Some("svc-x"));
        let name = r.get(&opentelemetry::Key::from_static_str("service.name"));
        assert_eq!(name.map(|v| v.as_str().into_owned()), Some("svc-x".into()));
    }
}
