//! Deadlines from durations that may be as long as `Duration::MAX`, and the
//! timers a caller's call waits on.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// As far ahead as a deadline goes: a hundred years, well within what an
/// `Instant` and Tokio's timers hold.
const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `at + d`, or a hundred years after `at` when `d` is longer: a duration of
/// `Duration::MAX` (a usual way to say "no limit") never overflows the
/// clock, which would panic.
pub(crate) fn later(at: Instant, d: Duration) -> Instant {
    at + d.min(FAR)
}

/// `d` times `k` (a jitter factor), at most `Duration::MAX`: `mul_f64`
/// panics on a result too large for a `Duration`.
pub(crate) fn scale(d: Duration, k: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * k).unwrap_or(Duration::MAX)
}

/// A timer for a deadline, on the runtime of whoever polls it. A Tokio timer
/// belongs to the runtime it was made on and panics when polled once that
/// runtime has ended; a call or a stream may be made on one runtime and
/// awaited on another (a synchronous wrapper's runtime per step, say), so
/// the timer moves to the runtime polling it. Polled outside any runtime it
/// stays where it is.
pub(crate) struct Timer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    on: Option<tokio::runtime::Id>,
}

impl Timer {
    pub(crate) fn at(deadline: Instant) -> Timer {
        Timer {
            sleep: Box::pin(tokio::time::sleep_until(deadline.into())),
            on: runtime_here(),
        }
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.sleep.deadline().into_std()
    }

    /// Ready once the deadline has passed.
    pub(crate) fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let here = runtime_here();
        if here.is_some() && here != self.on {
            let deadline = self.sleep.deadline();
            self.sleep = Box::pin(tokio::time::sleep_until(deadline));
            self.on = here;
        }
        self.sleep.as_mut().poll(cx)
    }
}

/// The id of the Tokio runtime this thread is in, if any.
fn runtime_here() -> Option<tokio::runtime::Id> {
    tokio::runtime::Handle::try_current().ok().map(|h| h.id())
}

/// The deadline passed first (see [`timeout_at`]).
#[derive(Debug)]
pub(crate) struct Elapsed;

/// `f`, unless `deadline` passes first: `tokio::time::timeout_at` on a
/// [`Timer`] (`f` is polled first, as there).
pub(crate) async fn timeout_at<F: Future>(deadline: Instant, f: F) -> Result<F::Output, Elapsed> {
    let mut f = std::pin::pin!(f);
    let mut timer = Timer::at(deadline);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(v) = f.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        timer.poll_elapsed(cx).map(|()| Err(Elapsed))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_goes_at_most_a_hundred_years_ahead() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert_eq!(later(now, Duration::MAX), now + FAR);
        assert_eq!(later(now, FAR + Duration::from_secs(1)), now + FAR);
    }

    #[test]
    fn a_scaled_duration_stops_at_the_longest() {
        assert_eq!(scale(Duration::from_secs(2), 1.5), Duration::from_secs(3));
        assert_eq!(scale(Duration::MAX, 1.5), Duration::MAX);
        assert_eq!(scale(Duration::MAX, 0.5).as_secs(), u64::MAX / 2 + 1);
    }
}
