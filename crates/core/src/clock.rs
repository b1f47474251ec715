//! Deadlines from durations that may be as long as `Duration::MAX`.

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
