//! The OTLP exporters, one builder for both signals over either transport,
//! and the runtime the gRPC transport needs.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_otlp::{ExporterBuildError, MetricExporter, SpanExporter, WithExportConfig};

use crate::config::{env, ENDPOINT_VAR, METRICS_ENDPOINT_VAR, TIMEOUT_VAR, TRACES_ENDPOINT_VAR};
use crate::watch::{redacted, ExportState, Watched};
use crate::{Error, Protocol};

/// How long one export may take in a short-lived program
/// ([`Telemetry::short_lived`](crate::Telemetry::short_lived)).
const SHORT_EXPORT_TIMEOUT: Duration = Duration::from_secs(1);

/// What an exporter carries.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    /// Its name in messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
        }
    }

    /// Its path below an HTTP receiver's base address.
    fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }

    /// The variable that gives its own time limit.
    fn timeout_var(self) -> &'static str {
        match self {
            Signal::Traces => "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            Signal::Metrics => "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
        }
    }

    /// The variable that gives its own endpoint.
    fn endpoint_var(self) -> &'static str {
        match self {
            Signal::Traces => TRACES_ENDPOINT_VAR,
            Signal::Metrics => METRICS_ENDPOINT_VAR,
        }
    }
}

/// Where a signal's exports go, as the exporter will resolve it.
fn signal_endpoint(protocol: Protocol, endpoint: Option<&str>, signal: Signal) -> String {
    let (own_var, path) = (signal.endpoint_var(), signal.http_path());
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

/// A base address with a signal's path appended to its path, for HTTP:
/// before its query, if it has one (`http://h:4318/?k=v` gives
/// `http://h:4318/v1/traces?k=v`).
fn signal_url(base: &str, path: &str) -> String {
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let (base, query) = match base[after_scheme..].find(['?', '#']) {
        Some(at) => base.split_at(after_scheme + at),
        None => (base, ""),
    };
    format!("{}{path}{query}", base.trim_end_matches('/'))
}

/// The retry policy and time limit of each export.
pub(crate) struct ExportSettings {
    /// Each export tried once, given at most [`SHORT_EXPORT_TIMEOUT`]
    /// (less if the environment says so); else the exporter's own time
    /// limit (`OTEL_EXPORTER_OTLP_<SIGNAL>_TIMEOUT`,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`, else 10 s) and its retries.
    pub(crate) short_lived: bool,
}

impl ExportSettings {
    /// How long one export of `signal` may take: the short-lived limit,
    /// else what the exporter reads itself
    /// (`OTEL_EXPORTER_OTLP_<SIGNAL>_TIMEOUT`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
    /// else 10 s).
    /// A time limit of 0 in the environment (which would fail every export
    /// at once) means the default.
    pub(crate) fn timeout_of(&self, signal: Signal) -> Duration {
        self.short_timeout(signal).unwrap_or_else(|| {
            env_timeout(signal)
                .filter(|t| !t.is_zero())
                .unwrap_or(opentelemetry_otlp::OTEL_EXPORTER_OTLP_TIMEOUT_DEFAULT)
        })
    }

    /// A short-lived program's limit for `signal`: 1 s, or less if the
    /// signal's variable (else the general one) says so.
    fn short_timeout(&self, signal: Signal) -> Option<Duration> {
        self.short_lived.then(|| {
            env_timeout(signal)
                .filter(|t| !t.is_zero())
                .map_or(SHORT_EXPORT_TIMEOUT, |t| t.min(SHORT_EXPORT_TIMEOUT))
        })
    }

    /// The time limit to give the gRPC exporter in code: the short-lived
    /// one, or the one the environment gives as this crate reads it (0 is
    /// the default; spaces around the number are left out, which the
    /// exporter would not do, falling back to its 10 s while the guard
    /// waits for the time read here); `None` leaves it to the exporter.
    #[cfg_attr(not(feature = "grpc"), allow(dead_code))]
    fn timeout_to_set(&self, signal: Signal) -> Option<Duration> {
        self.short_timeout(signal)
            .or_else(|| env_timeout(signal).map(|_| self.timeout_of(signal)))
    }

    pub(crate) fn new(short_lived: bool) -> Self {
        ExportSettings { short_lived }
    }
}

/// The time limit the environment gives an export of `signal`, as the
/// exporter reads it: its signal's variable, else the general one.
fn env_timeout(signal: Signal) -> Option<Duration> {
    env_millis(signal.timeout_var()).or_else(|| env_millis(TIMEOUT_VAR))
}

/// The variable a user would change to give exports of `signal` more time:
/// the signal's own when it holds a number, else the general one.
fn timeout_var(signal: Signal) -> &'static str {
    match env_millis(signal.timeout_var()) {
        Some(_) => signal.timeout_var(),
        None => TIMEOUT_VAR,
    }
}

/// A variable's value read as milliseconds, if it is a whole number.
fn env_millis(var: &str) -> Option<Duration> {
    env(var)
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
}

/// The OTLP exporter of one signal: its signal and its builder for each
/// transport, so that [`exporter`] builds either signal the same way.
pub(crate) trait Exporter: Sized {
    const SIGNAL: Signal;

    #[cfg(feature = "http")]
    type Http: WithExportConfig + opentelemetry_otlp::WithHttpConfig;
    #[cfg(feature = "http")]
    fn http() -> Self::Http;
    #[cfg(feature = "http")]
    fn build_http(builder: Self::Http) -> Result<Self, ExporterBuildError>;

    #[cfg(feature = "grpc")]
    type Grpc: WithExportConfig + opentelemetry_otlp::WithTonicConfig;
    #[cfg(feature = "grpc")]
    fn grpc() -> Self::Grpc;
    #[cfg(feature = "grpc")]
    fn build_grpc(builder: Self::Grpc) -> Result<Self, ExporterBuildError>;
}

/// Implements [`Exporter`] for one of opentelemetry-otlp's exporters, whose
/// builder types differ only in name.
macro_rules! otlp_exporter {
    ($exporter:ident, $builder:ident, $signal:expr) => {
        impl Exporter for $exporter {
            const SIGNAL: Signal = $signal;

            #[cfg(feature = "http")]
            type Http = opentelemetry_otlp::$builder<opentelemetry_otlp::HttpExporterBuilderSet>;
            #[cfg(feature = "http")]
            fn http() -> Self::Http {
                $exporter::builder().with_http()
            }
            #[cfg(feature = "http")]
            fn build_http(builder: Self::Http) -> Result<Self, ExporterBuildError> {
                builder.build()
            }

            #[cfg(feature = "grpc")]
            type Grpc = opentelemetry_otlp::$builder<opentelemetry_otlp::TonicExporterBuilderSet>;
            #[cfg(feature = "grpc")]
            fn grpc() -> Self::Grpc {
                $exporter::builder().with_tonic()
            }
            #[cfg(feature = "grpc")]
            fn build_grpc(builder: Self::Grpc) -> Result<Self, ExporterBuildError> {
                builder.build()
            }
        }
    };
}

otlp_exporter!(SpanExporter, SpanExporterBuilder, Signal::Traces);
otlp_exporter!(MetricExporter, MetricExporterBuilder, Signal::Metrics);

/// The exporter of `E`'s signal over `protocol` (built inside `runtime`,
/// which gRPC needs), watched: its `state` says what it failed to deliver.
pub(crate) fn watched<E: Exporter>(
    protocol: Protocol,
    endpoint: Option<&str>,
    export: &ExportSettings,
    runtime: &Runtime,
) -> Result<Watched<E>, Error> {
    let url = signal_endpoint(protocol, endpoint, E::SIGNAL);
    if url
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
    {
        return Err(Error::TlsUnsupported(redacted(&url)));
    }
    // Any other scheme (`grpc://`, `unix://`, `ftp://`) would be taken
    // here and fail every export after: refused now, as docs/telemetry.md
    // says the endpoint is plain `http://`.
    if let Some((scheme, _)) = url.split_once("://") {
        let is_scheme = !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if is_scheme && !scheme.eq_ignore_ascii_case("http") {
            return Err(Error::Exporter(format!(
                "the endpoint {} is {scheme}://, and the exporter speaks plain http:// only \
                 (over HTTP/protobuf and over gRPC alike)",
                redacted(&url)
            )));
        }
    }
    if let Some(problem) = crate::watch::endpoint_problem(&url) {
        return Err(Error::Exporter(format!(
            "the endpoint {} names no receiver: {problem}",
            redacted(&url)
        )));
    }
    if protocol == Protocol::Grpc && has_userinfo(&url) {
        // tonic would put them in the request's `:authority`, which no
        // receiver reads as credentials: refused rather than sent there.
        return Err(Error::Exporter(format!(
            "the endpoint {} holds credentials, which are sent only over HTTP; over gRPC, \
             give them in OTEL_EXPORTER_OTLP_HEADERS (authorization=Basic <base64 of \
             user:password>)",
            redacted(&url)
        )));
    }
    let state = ExportState::new(
        E::SIGNAL.name(),
        &url,
        (export.timeout_of(E::SIGNAL), timeout_var(E::SIGNAL)),
    );
    // The exporter is given the address resolved here, so that it never
    // reads the variables itself: one it would read differently (a blank
    // one, say) cannot make it disagree with what this crate reports.
    let inner = runtime
        .in_context(|| build::<E>(protocol, &url, export, &state))
        // The exporter's message may quote the address, credentials and all.
        .map_err(|e| match e {
            Error::Exporter(m) => Error::Exporter(m.replace(&url, &redacted(&url))),
            other => other,
        })?;
    Ok(Watched { inner, state })
}

/// Whether `url`'s authority holds a user name or password (`user@` or
/// `user:password@` before the host).
fn has_userinfo(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    rest[..end].contains('@')
}

/// The exporter of `E`'s signal, sending to `url` (for HTTP, the signal's
/// full URL).
fn build<E: Exporter>(
    protocol: Protocol,
    url: &str,
    export: &ExportSettings,
    state: &Arc<ExportState>,
) -> Result<E, Error> {
    let _ = (url, export, state);
    let built = match protocol {
        #[cfg(feature = "http")]
        Protocol::HttpProtobuf => {
            use opentelemetry_otlp::WithHttpConfig;
            // The client holds each export, retries included, to the
            // timeout the exporter's retries are given.
            let timeout = export.timeout_of(E::SIGNAL);
            // The exporter writes its URL into its own log lines (with
            // `opentelemetry-otlp`'s `internal-logs`): it gets it without
            // the credentials, which the client adds to each request.
            let (bare, userinfo) = crate::http_client::take_userinfo(url);
            let client = crate::http_client::Client {
                timeout,
                state: state.clone(),
                credentials: userinfo.credentials,
                secrets: userinfo.secrets,
            };
            let mut b = E::http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(bare)
                .with_timeout(timeout)
                .with_http_client(client);
            if export.short_lived {
                b = b.with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled());
            }
            E::build_http(b)
        }
        #[cfg(feature = "grpc")]
        Protocol::Grpc => {
            use opentelemetry_otlp::WithTonicConfig;
            let mut b = E::grpc()
                .with_protocol(opentelemetry_otlp::Protocol::Grpc)
                .with_endpoint(url);
            if let Some(t) = export.timeout_to_set(E::SIGNAL) {
                b = b.with_timeout(t);
            }
            if export.short_lived {
                b = b.with_retry_policy(opentelemetry_otlp::RetryPolicy::disabled());
            }
            E::build_grpc(b)
        }
        #[allow(unreachable_patterns)]
        other => return Err(missing(other)),
    };
    built.map_err(|e| Error::Exporter(e.to_string()))
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
pub(crate) struct Runtime {
    #[cfg(feature = "grpc")]
    rt: Option<tokio::runtime::Runtime>,
}

impl Runtime {
    /// No runtime: nothing is exported.
    pub(crate) fn none() -> Self {
        Runtime {
            #[cfg(feature = "grpc")]
            rt: None,
        }
    }

    /// The runtime of a gRPC exporter (of either signal, or both).
    pub(crate) fn grpc() -> Result<Self, Error> {
        #[cfg(feature = "grpc")]
        {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("snakepit-otlp")
                .enable_all()
                .build()
                .map_err(|e| Error::Runtime(e.to_string()))?;
            Ok(Runtime { rt: Some(rt) })
        }
        #[cfg(not(feature = "grpc"))]
        {
            // Without the feature, building the exporter says so.
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

    /// telemetry.md: `OTEL_EXPORTER_OTLP_TIMEOUT`, "milliseconds per
    /// export", 10000 by default. This crate reads the timeout as the
    /// exporter would (and gives it to the HTTP exporter and its client);
    /// the exporter's default is 10 s, and so is what the crate reports. (The variable itself is
    /// shown read by tests/env_promises.rs.)
    #[test]
    fn the_export_timeout_is_10_s_by_default() {
        if env(TIMEOUT_VAR).is_some()
            || env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT").is_some()
            || env("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT").is_some()
        {
            return; // the environment of this run sets one
        }
        let settings = ExportSettings::new(false);
        assert!(!settings.short_lived, "the exporter's own timeout");
        assert_eq!(
            opentelemetry_otlp::OTEL_EXPORTER_OTLP_TIMEOUT_DEFAULT,
            Duration::from_millis(10_000)
        );
        assert_eq!(settings.timeout_of(Signal::Traces), Duration::from_secs(10));
        assert_eq!(
            settings.timeout_of(Signal::Metrics),
            Duration::from_secs(10)
        );
        // A short-lived program: 1 s at most.
        assert_eq!(
            ExportSettings::new(true).timeout_of(Signal::Traces),
            Duration::from_secs(1)
        );
    }

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
    fn http_signal_paths_go_before_a_query() {
        assert_eq!(
            signal_url("http://127.0.0.1:4318/?x=1", "/v1/traces"),
            "http://127.0.0.1:4318/v1/traces?x=1"
        );
        assert_eq!(
            signal_url("http://h:4318/otlp?k=v&w=/a", "/v1/metrics"),
            "http://h:4318/otlp/v1/metrics?k=v&w=/a"
        );
        assert_eq!(
            signal_url("http://h:4318?x", "/v1/traces"),
            "http://h:4318/v1/traces?x"
        );
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
}
