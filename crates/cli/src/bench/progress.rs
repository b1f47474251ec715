//! The bench's progress on stderr: one bar per phase, drawn only on a
//! terminal, moved by a ticker from a counter the callers add to.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// Progress on stderr: one bar per phase, drawn only on a terminal.
pub(crate) struct Progress {
    pub(crate) hidden: bool,
}

impl Progress {
    pub(crate) fn phase(&self, message: String, len: u64) -> ProgressBar {
        if self.hidden {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} {msg:<48} [{bar:30}] {pos}/{len} {rate} eta {eta}",
        ) {
            // The calls done over the phase's time, as the table reports
            // the throughput (not a moving average that trails it).
            let rate = |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                let secs = state.elapsed().as_secs_f64();
                let rate = if secs > 0.0 {
                    state.pos() as f64 / secs
                } else {
                    0.0
                };
                let _ = write!(w, "{rate:.0}/s");
            };
            bar.set_style(style.progress_chars("=> ").with_key("rate", rate));
        }
        bar.set_message(message);
        bar
    }
}

/// How often a phase's bar is redrawn from its counter.
const REDRAW: Duration = Duration::from_millis(100);

/// The calls a measured phase has completed. Each caller adds one per call
/// to an atomic counter (no lock, no drawing on the callers' path); a ticker
/// thread moves the bar to the count every [`REDRAW`], so the position and
/// the rate follow the calls from the first one instead of jumping when a
/// batch of callers reports at once.
pub(crate) struct Counter {
    done: Arc<AtomicU64>,
    bar: ProgressBar,
    stop: Option<mpsc::Sender<()>>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Counter {
    /// Starts counting at zero; the bar's elapsed time and rate start now,
    /// after the warm-up.
    pub(crate) fn start(bar: &ProgressBar) -> Counter {
        let done = Arc::new(AtomicU64::new(0));
        bar.reset();
        let (stop, rx) = mpsc::channel::<()>();
        let ticker = {
            let (bar, done) = (bar.clone(), done.clone());
            std::thread::Builder::new()
                .name("snakepit-bench-progress".into())
                .spawn(move || {
                    // Redraws until the phase drops its sender.
                    while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(REDRAW) {
                        bar.set_position(done.load(Ordering::Relaxed));
                    }
                })
                .ok()
        };
        Counter {
            done,
            bar: bar.clone(),
            stop: Some(stop),
            ticker,
        }
    }

    /// The handle the callers add to.
    pub(crate) fn handle(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }

    /// Stops the ticker and clears the bar.
    pub(crate) fn finish(mut self) {
        self.stop.take();
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        self.bar.set_position(self.done.load(Ordering::Relaxed));
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn the_bar_follows_each_call_from_the_first() {
        let bar = ProgressBar::hidden();
        bar.set_length(10_000);
        let counter = Counter::start(&bar);
        let done = counter.handle();
        for _ in 0..3 {
            done.fetch_add(1, Ordering::Relaxed);
        }
        // Three calls move the bar by three: no batch of calls is awaited.
        let deadline = Instant::now() + Duration::from_secs(30);
        while bar.position() != 3 {
            assert!(
                Instant::now() < deadline,
                "the bar stays at {} after 3 calls",
                bar.position()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        counter.finish();
    }
}
