//! [`Guard`]: what keeps the exporters alive, and flushes them.

use std::sync::Arc;
use std::time::{Duration, Instant};

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

    /// Exports what is buffered now, without stopping; traces and metrics
    /// side by side.
    ///
    /// A receiver that does not take metrics is not an error (see
    /// [`Telemetry::metrics`](crate::Telemetry::metrics)); spans or metrics it could not deliver are
    /// (`Error::Flush` says how many were dropped since the last flush,
    /// where to, and why). It waits for the exports it starts to end (over
    /// HTTP each ends within the export timeout), for spans at most half
    /// as long again as the longest export, as
    /// [`shutdown`](Guard::shutdown) does.
    pub fn flush(&self) -> Result<(), Error> {
        let until = self.wait_until();
        let ended = self.spans_ended();
        let (traces, metrics) = std::thread::scope(|s| {
            let metrics = self
                .meter_provider
                .as_ref()
                .map(|m| s.spawn(move || m.force_flush()));
            // The SDK waits for a flush of spans 5 s at most, whatever the
            // export timeout: past that, the guard waits on for the export.
            let traces = self.tracer_provider.as_ref().map(|t| {
                self.waited("traces", t.force_flush(), |state| {
                    state.wait_settled(until, ended)
                })
            });
            (traces, metrics.map(joined_thread))
        });
        let settled = !traces.as_ref().is_some_and(timed_out);
        self.outcome(traces, metrics, ended, settled)
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
        let until = self.wait_until();
        let limit = until.map_or(Duration::MAX, |u| {
            u.saturating_duration_since(Instant::now())
        });
        let ended = self.spans_ended();
        // Side by side: a receiver that is down costs one export's time,
        // not one per signal. The SDK waits for a metrics shutdown 5 s at
        // most, whatever it is told: past that, the guard waits on for the
        // exporter to be shut down after its last export.
        let this = &*self;
        let (traces, metrics) = std::thread::scope(|s| {
            let metrics = meter.map(|m| {
                s.spawn(move || {
                    let result = m.shutdown_with_timeout(limit);
                    this.waited("metrics", result, |state| state.wait_closed(until))
                })
            });
            let traces = tracer.map(|t| {
                let result = t.shutdown_with_timeout(limit);
                this.waited("traces", result, |state| state.wait_closed(until))
            });
            (traces, metrics.map(joined_thread))
        });
        // A shutdown that timed out drops what is still queued, and says
        // so (as not yet sent).
        let settled = !traces.as_ref().is_some_and(timed_out);
        self.outcome(traces, metrics, ended, settled)
    }

    /// When a flush or shutdown that begins now stops waiting: half as long
    /// again as the longest export, so that the exporter has recorded what
    /// it dropped (and the error can say so) by then. `None`: beyond what a
    /// clock can say.
    fn wait_until(&self) -> Option<Instant> {
        let longest = self
            .states
            .iter()
            .map(|s| s.timeout())
            .max()
            .unwrap_or(Duration::from_secs(5));
        Instant::now().checked_add(longest.saturating_add(longest / 2))
    }

    /// `result`, the SDK's, or `Ok` when it timed out and `wait` (on the
    /// state of `signal`) then saw the exports end: what they dropped is
    /// in the state.
    fn waited(
        &self,
        signal: &str,
        result: OTelSdkResult,
        wait: impl FnOnce(&ExportState) -> bool,
    ) -> OTelSdkResult {
        if !timed_out(&result) {
            return result;
        }
        match self.states.iter().find(|s| s.signal() == signal) {
            Some(state) if wait(state) => Ok(()),
            _ => result,
        }
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
    /// `ended`: the spans ended before the flush began. `settled`: the
    /// flush or shutdown of spans did not stop waiting before their export
    /// ended.
    fn outcome(
        &self,
        traces: Option<OTelSdkResult>,
        metrics: Option<OTelSdkResult>,
        ended: Option<u64>,
        settled: bool,
    ) -> Result<(), Error> {
        // A flush that timed out has not settled what happened to the
        // spans it was given: none of them counts as dropped at the queue
        // (they may go with the next export). A shutdown that timed out
        // drops what is still queued, and says so.
        let last = self.tracer_provider.is_none() && self.meter_provider.is_none();
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

/// Whether the SDK stopped waiting (the tracer provider's shutdown wraps
/// its processor's timeout in an `InternalFailure` that names it, and the
/// meter provider's its reader's).
fn timed_out(result: &OTelSdkResult) -> bool {
    match result {
        Err(OTelSdkError::Timeout(_)) => true,
        Err(OTelSdkError::InternalFailure(e)) => e.contains("Timeout("),
        _ => false,
    }
}

fn joined_thread(handle: std::thread::ScopedJoinHandle<'_, OTelSdkResult>) -> OTelSdkResult {
    handle
        .join()
        .unwrap_or_else(|_| Err(OTelSdkError::InternalFailure("panicked".into())))
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
