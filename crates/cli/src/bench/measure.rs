//! What one phase of the bench measures: each call's latency, the phase's
//! wall time, and the CPU time this process spent over it (all threads, user
//! and system); and the host's resident memory, for the cost of a worker.

use std::time::{Duration, Instant};

use rustix::time::{clock_gettime, ClockId};

/// The CPU time this process has used so far, all its threads, user and
/// system, in nanoseconds (`CLOCK_PROCESS_CPUTIME_ID`).
fn cpu_time() -> Duration {
    let t = clock_gettime(ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// This process's resident memory in KiB (`VmRSS` of /proc/self/status);
/// `None` where it cannot be read.
pub(crate) fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let kib = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib)
}

/// The wall time and CPU time of a phase, from `start` to `stop`.
pub(crate) struct Meter {
    wall: Instant,
    cpu: Duration,
}

impl Meter {
    pub(crate) fn start() -> Meter {
        Meter {
            cpu: cpu_time(),
            wall: Instant::now(),
        }
    }

    /// The phase's wall time and the CPU time used over it.
    pub(crate) fn stop(self) -> (Duration, Duration) {
        let wall = self.wall.elapsed();
        (wall, cpu_time().saturating_sub(self.cpu))
    }
}

/// One measurement: throughput, latency quantiles, host CPU per call, and
/// the sorted samples.
#[derive(Debug, Clone, Default)]
pub(crate) struct Run {
    pub(crate) rps: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    /// This process's CPU time over the phase, divided by the calls.
    pub(crate) cpu_us_per_call: f64,
    /// Sorted latencies in microseconds.
    pub(crate) samples: Vec<f64>,
}

impl Run {
    /// `latencies` of the calls of a phase that took `wall` and `cpu`.
    pub(crate) fn new(latencies: Vec<Duration>, (wall, cpu): (Duration, Duration)) -> Run {
        let mut samples: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        samples.sort_unstable_by(f64::total_cmp);
        let q = |p: f64| {
            let i = ((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1));
            samples.get(i).copied().unwrap_or(0.0)
        };
        let calls = samples.len().max(1) as f64;
        Run {
            rps: samples.len() as f64 / wall.as_secs_f64().max(f64::MIN_POSITIVE),
            p50_us: q(0.50),
            p99_us: q(0.99),
            p999_us: q(0.999),
            cpu_us_per_call: cpu.as_secs_f64() * 1e6 / calls,
            samples,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_sorted_samples() {
        let lat: Vec<Duration> = (1..=1000).rev().map(Duration::from_micros).collect();
        let r = Run::new(lat, (Duration::from_secs(1), Duration::from_millis(5)));
        assert_eq!(r.rps, 1000.0);
        assert_eq!(r.p50_us.round(), 501.0);
        assert_eq!(r.p99_us.round(), 991.0);
        assert_eq!(r.p999_us.round(), 1000.0);
        assert_eq!(r.cpu_us_per_call, 5.0);
        assert!(r.samples.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn the_meter_counts_the_cpu_this_process_spends() {
        let meter = Meter::start();
        // Work on another thread counts too: the bench's raw loop runs on
        // threads of its own.
        // It spins until its own CPU clock says 50 ms, however busy the
        // machine is.
        let spun = std::thread::spawn(|| {
            let mut x = 0u64;
            while clock_gettime(ClockId::ThreadCPUTime).tv_nsec < 50_000_000
                && clock_gettime(ClockId::ThreadCPUTime).tv_sec == 0
            {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            x
        });
        let _ = spun.join();
        let (wall, cpu) = meter.stop();
        assert!(
            cpu >= Duration::from_millis(50),
            "cpu {cpu:?}, wall {wall:?}"
        );
    }

    #[test]
    fn resident_memory_is_read_in_kib() {
        let status = "Name:\tsnakepit\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(12345));
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert!(rss_kib().is_some_and(|k| k > 0));
    }
}
