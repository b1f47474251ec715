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
        runtime: Runtime,
    ) -> Self {
        Guard {
            tracer_provider,
            meter_provider,
            states,
            _runtime: runtime,
        }
    }

    /// Exports what is buffered now, without stopping.
    ///
    /// A receiver that does not take metrics is not an error (see
    /// [`Telemetry::metrics`](crate::Telemetry::metrics)); spans or metrics it could not deliver are
    /// (`Error::Flush` says how many were dropped since the last flush,
    /// where to, and why).
    pub fn flush(&self) -> Result<(), Error> {
        let ended = self.spans_ended();
        let traces = self.tracer_provider.as_ref().map(|t| t.force_flush());
        let metrics = self.meter_provider.as_ref().map(|m| m.force_flush());
        self.outcome(traces, metrics, ended, false)
    }

    /// Exports what is buffered and stops the exporters; spans ended after
    /// this are dropped. Errors as for [`flush`](Guard::flush). It waits
    /// at most half as long again as the longest export (15 s with the
    /// default 10 s export timeout).
    pub fn shutdown(mut self) -> Result<(), Error> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), Error> {
        let tracer = self.tracer_provider.take();
        let meter = self.meter_provider.take();
        if tracer.is_none() && meter.is_none() {
            return Ok(()); // stopped already, or nothing to stop
        }
        let ended = self.spans_ended();
        // The shutdown waits half as long again as the longest export, so
        // that the exporter has recorded what it dropped (and the error can
        // say so) before the shutdown's own timeout would.
        let limit = self
            .states
            .iter()
            .map(|s| s.timeout())
            .max()
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
        self.outcome(traces, metrics, ended, true)
    }

    /// How many spans have ended so far, read before a flush.
    fn spans_ended(&self) -> Option<u64> {
        self.states
            .iter()
            .find(|s| s.signal() == "traces")
            .map(|s| s.ended())
    }

    /// One error naming what was dropped since the last flush, or the
    /// SDK's own errors when the exporters did not fail (a timeout, say).
    /// `ended`: the spans ended before the flush began.
    fn outcome(
        &self,
        traces: Option<OTelSdkResult>,
        metrics: Option<OTelSdkResult>,
        ended: Option<u64>,
        last: bool,
    ) -> Result<(), Error> {
        // A flush that timed out has not settled what happened to the
        // spans it was given: none of them counts as dropped at the queue
        // (they may go with the next export). A shutdown that timed out
        // drops what is still queued, and says so. (The tracer provider's
        // shutdown wraps its processor's timeout in an `InternalFailure`
        // that names it.)
        let timed_out = match &traces {
            Some(Err(OTelSdkError::Timeout(_))) => true,
            Some(Err(OTelSdkError::InternalFailure(e))) => e.contains("Timeout("),
            _ => false,
        };
        let settled = !timed_out;
        let ended = ended.filter(|_| settled || last);
        let mut errors = Vec::new();
        for (signal, result) in [("traces", traces), ("metrics", metrics)] {
            let state = self.states.iter().find(|s| s.signal() == signal);
            let ended = if signal == "traces" { ended } else { None };
            if let Some(dropped) = state.and_then(|s| s.take_dropped(ended, settled)) {
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
