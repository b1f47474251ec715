//! Installing the subscriber, the exporters and the global providers.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{MetricExporter, SpanExporter};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::{
    env, exporter_wanted, headers_var, propagator, remember_service_name, resource, sdk_disabled,
    unsendable_headers, ENDPOINT_VAR, METRICS_ENDPOINT_VAR, METRICS_EXPORTER_VAR,
    TRACES_ENDPOINT_VAR, TRACES_EXPORTER_VAR,
};
use crate::exporters::{watched, ExportSettings, Runtime};
use crate::watch::Counted;
use crate::{Error, Guard, Protocol, Telemetry};

impl Telemetry {
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
        // Each signal reads its own variable first; one given in code is
        // both's.
        let protocol_of = |from_env: fn() -> Result<Option<Protocol>, Error>| {
            Ok::<_, Error>(match self.protocol {
                Some(p) => p,
                None => from_env()?.unwrap_or_else(Protocol::feature_default),
            })
        };
        let traces_protocol = protocol_of(Protocol::from_env)?;
        let metrics_protocol = protocol_of(Protocol::metrics_from_env)?;
        let export = ExportSettings::new(self.short_lived);
        let resource = resource(self.service_name.as_deref());
        let named = resource.clone();
        let grpc = (traces_on && traces_protocol == Protocol::Grpc)
            || (metrics_on && metrics_protocol == Protocol::Grpc);
        let runtime = if grpc {
            Runtime::grpc()?
        } else {
            Runtime::none()
        };
        let mut states = Vec::new();
        let tracer_provider = if traces_on {
            let spans = watched::<SpanExporter>(
                traces_protocol,
                self.endpoint.as_deref(),
                &export,
                &runtime,
            )?;
            let state = spans.state.clone();
            states.push(state.clone());
            let batch = BatchSpanProcessor::builder(spans)
                .with_batch_config(batch_config())
                .build();
            let mut builder = SdkTracerProvider::builder()
                .with_span_processor(Counted {
                    inner: batch,
                    state,
                })
                .with_resource(resource.clone());
            if let Some(sampler) = sampler_for_nan_ratio() {
                builder = builder.with_sampler(sampler);
            }
            Some(builder.build())
        } else {
            None
        };
        let meter_provider = if metrics_on {
            let metrics = watched::<MetricExporter>(
                metrics_protocol,
                self.endpoint.as_deref(),
                &export,
                &runtime,
            )?;
            states.push(metrics.state.clone());
            let mut reader = PeriodicReader::builder(metrics);
            if let Some(every) = metrics_interval(self.metrics_interval) {
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
                // https://no-color.org: set and not empty means no colour.
                .with_ansi(
                    std::io::stderr().is_terminal()
                        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
                )
                .with_filter(filter)
        });
        tracing_subscriber::registry()
            .with(otel)
            .with(logs)
            .try_init()
            .map_err(|_| Error::SubscriberInstalled)?;
        remember_service_name(&named);
        // Said once the subscriber is there to print it.
        let signals = [("traces", traces_on), ("metrics", metrics_on)];
        let vars = signals
            .iter()
            .filter(|(_, on)| *on)
            .map(|(s, _)| headers_var(s));
        let mut told = Vec::new();
        for var in vars {
            if told.contains(&var) {
                continue;
            }
            told.push(var);
            let left_out = unsendable_headers(&std::env::var(var).unwrap_or_default());
            if !left_out.is_empty() {
                tracing::warn!(
                    target: "snakepit_telemetry",
                    "{var}: left out of every export, as no HTTP header can carry it: {}",
                    left_out.join(", ")
                );
            }
        }
        if let Some(t) = &tracer_provider {
            opentelemetry::global::set_tracer_provider(t.clone());
        }
        if let Some(p) = propagator {
            opentelemetry::global::set_text_map_propagator(p);
        }
        if let Some(m) = &meter_provider {
            opentelemetry::global::set_meter_provider(m.clone());
        }
        Ok(Guard::new(tracer_provider, meter_provider, states, runtime))
    }

    /// [`init`](Telemetry::init), but only when
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
    /// is set and `OTEL_SDK_DISABLED` is not `true`; otherwise installs
    /// nothing and returns `None`. When only the traces endpoint is set
    /// (neither `OTEL_EXPORTER_OTLP_ENDPOINT` nor
    /// `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, nor [`endpoint`](Telemetry::endpoint)),
    /// only traces are exported unless [`metrics`](Telemetry::metrics) or
    /// `OTEL_METRICS_EXPORTER` says otherwise: metrics would go to the
    /// default localhost receiver, which nobody asked for.
    pub fn init_if_configured(mut self) -> Result<Option<Guard>, Error> {
        if env(ENDPOINT_VAR).is_none() && env(TRACES_ENDPOINT_VAR).is_none() {
            return Ok(None);
        }
        if sdk_disabled() {
            return Ok(None);
        }
        let metrics_endpoint = self.endpoint.is_some()
            || env(ENDPOINT_VAR).is_some()
            || env(METRICS_ENDPOINT_VAR).is_some();
        if !metrics_endpoint && self.metrics.is_none() && env(METRICS_EXPORTER_VAR).is_none() {
            self.metrics = Some(false);
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

/// The metrics' export interval to set, if any: the one given in code, else
/// `OTEL_METRIC_EXPORT_INTERVAL` read as this crate reads its numbers
/// (spaces around it left out, which the SDK would not do, falling back
/// to its default), else none (the SDK's default). Zero, in code or in the
/// variable, would export in a tight loop: it means the default, 60 s.
fn metrics_interval(given: Option<std::time::Duration>) -> Option<std::time::Duration> {
    const DEFAULT: std::time::Duration = std::time::Duration::from_secs(60);
    match given {
        Some(every) if every.is_zero() => Some(DEFAULT),
        Some(every) => Some(every),
        None => number_var("OTEL_METRIC_EXPORT_INTERVAL").map(|ms| match ms {
            0 => DEFAULT,
            ms => std::time::Duration::from_millis(ms),
        }),
    }
}

/// A variable holding a whole number, spaces around it left out; `None`
/// when it is unset or holds anything else (the SDK's default then).
fn number_var(var: &str) -> Option<u64> {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// The sampler to give in code when the environment asks for a ratio
/// sampler with a ratio of NaN (`OTEL_TRACES_SAMPLER_ARG=nan`): the SDK
/// would take it and sample nothing, without a word, where an argument
/// that is not a number at all makes it sample everything. NaN is no
/// ratio either: the same fallback, ratio 1. `None`: the SDK reads the
/// variables itself.
fn sampler_for_nan_ratio() -> Option<Sampler> {
    // Read as the SDK reads them: exactly, spaces and case included.
    let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG").ok()?;
    if !arg.parse::<f64>().is_ok_and(f64::is_nan) {
        return None;
    }
    match std::env::var("OTEL_TRACES_SAMPLER").ok()?.as_str() {
        "traceidratio" => Some(Sampler::TraceIdRatioBased(1.0)),
        "parentbased_traceidratio" => Some(Sampler::ParentBased(Box::new(
            Sampler::TraceIdRatioBased(1.0),
        ))),
        _ => None,
    }
}

/// The most spans the batch queue holds. The SDK allocates its queue whole
/// at start: an `OTEL_BSP_MAX_QUEUE_SIZE` of 2^64 - 1 would abort the
/// process ("capacity overflow") and one of a billion take gigabytes, so a
/// larger value is taken as this one.
pub(crate) const MAX_SPAN_QUEUE: usize = 1 << 16;

/// The SDK's span queue size when `OTEL_BSP_MAX_QUEUE_SIZE` is unset.
const DEFAULT_SPAN_QUEUE: usize = 2048;

/// The SDK's export batch size when `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` is
/// unset.
const DEFAULT_EXPORT_BATCH: usize = 512;

/// The span batching the `OTEL_BSP_*` variables ask for (read by the SDK),
/// the queue's size at most [`MAX_SPAN_QUEUE`]. A batching delay of 0
/// would export in a tight loop (a core spent while idle): it means the
/// default, 5 s, as for the metrics' interval. A queue of 0 spans would
/// drop every span (the SDK's queue is then a channel that holds nothing):
/// it means the default too, 2048.
fn batch_config() -> opentelemetry_sdk::trace::BatchConfig {
    let mut config = BatchConfigBuilder::default();
    let asked = number_var;
    // Given in code whenever the variable holds a number, so that one with
    // spaces around it (which the SDK does not read) counts as well.
    match asked("OTEL_BSP_MAX_QUEUE_SIZE") {
        Some(n) if n > MAX_SPAN_QUEUE as u64 => {
            config = config.with_max_queue_size(MAX_SPAN_QUEUE);
        }
        Some(0) => {
            // The SDK cut the batch size down to the queue's 0 when it read
            // the variables: it gets back the size asked for, or its default.
            let batch = asked("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
                .filter(|&n| n > 0)
                .map_or(DEFAULT_EXPORT_BATCH, |n| {
                    usize::try_from(n).unwrap_or(usize::MAX)
                });
            config = config
                .with_max_queue_size(DEFAULT_SPAN_QUEUE)
                .with_max_export_batch_size(batch);
        }
        Some(n) => config = config.with_max_queue_size(n as usize),
        None => {}
    }
    match asked("OTEL_BSP_SCHEDULE_DELAY") {
        Some(0) => config = config.with_scheduled_delay(std::time::Duration::from_secs(5)),
        Some(ms) => config = config.with_scheduled_delay(std::time::Duration::from_millis(ms)),
        None => {}
    }
    config.build()
}
