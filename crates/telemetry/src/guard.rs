//! [`Guard`]: what keeps the exporters alive, and flushes them.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;

use crate::exporters::Runtime;
use crate::watch::ExportState;
use crate::Error;

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
    pub(crate) fn new(
        tracer_provider: Option<SdkTracerProvider>,
        meter_provider: Option<SdkMeterProvider>,
        states: Vec<Arc<ExportState>>,
        final_flush: Option<Duration>,
        runtime: Runtime,
    ) -> Self {
        Guard {
            tracer_provider,
            meter_provider,
            states,
            final_flush,
            _runtime: runtime,
        }
    }

    /// Exports what is buffered now, without stopping.
    ///
    /// A receiver that does not take metrics is not an error (see
    /// [`Telemetry::metrics`](crate::Telemetry::metrics)); spans or metrics it could not deliver are
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
        // A short-lived program's export gives up after `final_flush`; the
        // shutdown waits half as long again, so that the exporter has
        // recorded what it dropped (and the error can say so) before the
        // shutdown's own timeout would.
        let limit = self
            .final_flush
            .map_or(Duration::from_secs(5), |t| t.saturating_add(t / 2));
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
