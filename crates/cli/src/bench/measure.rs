//! What one phase of the bench measures: each call's latency, the phase's
//! wall time, the CPU time this process spent over it (all threads, user
//! and system) and the CPU time its workers spent; and the host's resident
//! memory, for the cost of a worker.

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

/// The time process `pid` has spent on a CPU so far, in nanoseconds: the
/// first field of `/proc/<pid>/schedstat`, counted by the scheduler in
/// nanoseconds (the clock ticks of `/proc/<pid>/stat` are 10 ms).
fn on_cpu_ns(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// The wall time and CPU time of a phase, from `start` to `stop`.
pub(crate) struct Meter {
    wall: Instant,
    cpu: Duration,
    /// Each worker's pid and its CPU time at the start.
    workers: Vec<(u32, Option<u64>)>,
}

/// What a phase took: wall time, this process's CPU time, and its workers'
/// (`None` where not known: no pids, or a worker that went away).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spent {
    pub(crate) wall: Duration,
    pub(crate) cpu: Duration,
    pub(crate) workers_cpu: Option<Duration>,
}

impl Meter {
    /// Starts measuring this process and the worker processes `pids`.
    pub(crate) fn start(pids: &[u32]) -> Meter {
        Meter {
            workers: pids.iter().map(|&pid| (pid, on_cpu_ns(pid))).collect(),
            cpu: cpu_time(),
            wall: Instant::now(),
        }
    }

    /// What the phase took.
    pub(crate) fn stop(self) -> Spent {
        let wall = self.wall.elapsed();
        let cpu = cpu_time().saturating_sub(self.cpu);
        let workers_cpu = match self.workers.is_empty() {
            true => None,
            false => self
                .workers
                .iter()
                .map(|&(pid, before)| Some(on_cpu_ns(pid)?.saturating_sub(before?)))
                .sum::<Option<u64>>()
                .map(Duration::from_nanos),
        };
        Spent {
            wall,
            cpu,
            workers_cpu,
        }
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
    /// The workers' CPU time over the phase, divided by the calls.
    pub(crate) workers_cpu_us_per_call: Option<f64>,
    /// Sorted latencies in microseconds.
    pub(crate) samples: Vec<f64>,
}

impl Run {
    /// `latencies` of the calls of a phase that took `wall` and `cpu`.
    pub(crate) fn new(latencies: Vec<Duration>, spent: Spent) -> Run {
        let mut samples: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        samples.sort_unstable_by(f64::total_cmp);
        let q = |p: f64| {
            let i = ((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1));
            samples.get(i).copied().unwrap_or(0.0)
        };
        let calls = samples.len().max(1) as f64;
        Run {
            rps: samples.len() as f64 / spent.wall.as_secs_f64().max(f64::MIN_POSITIVE),
            p50_us: q(0.50),
            p99_us: q(0.99),
            p999_us: q(0.999),
            cpu_us_per_call: spent.cpu.as_secs_f64() * 1e6 / calls,
            workers_cpu_us_per_call: spent.workers_cpu.map(|c| c.as_secs_f64() * 1e6 / calls),
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
        let spent = Spent {
            wall: Duration::from_secs(1),
            cpu: Duration::from_millis(5),
            workers_cpu: Some(Duration::from_millis(20)),
        };
        let r = Run::new(lat, spent);
        assert_eq!(r.rps, 1000.0);
        assert_eq!(r.p50_us.round(), 501.0);
        assert_eq!(r.p99_us.round(), 991.0);
        assert_eq!(r.p999_us.round(), 1000.0);
        assert_eq!(r.cpu_us_per_call, 5.0);
        assert_eq!(r.workers_cpu_us_per_call, Some(20.0));
        assert!(r.samples.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn the_meter_counts_the_cpu_this_process_spends() {
        let meter = Meter::start(&[]);
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
        let spent = meter.stop();
        assert!(spent.cpu >= Duration::from_millis(50), "{spent:?}");
        assert_eq!(spent.workers_cpu, None);
    }

    #[test]
    fn the_meter_counts_the_cpu_a_worker_spends() {
        // A child that spins for a while, then exits when its stdin closes
        // (also when this test fails and drops it).
        #[allow(clippy::disallowed_methods)] // a plain shell, not a worker
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; read x",
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("sh runs");
        let meter = Meter::start(&[child.id()]);
        // Its CPU time grows until the loop ends; wait for it to stop growing.
        let mut last = 0;
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = on_cpu_ns(child.id()).expect("the child's schedstat");
            if now == last {
                break;
            }
            last = now;
        }
        let spent = meter.stop();
        drop(child.stdin.take());
        let _ = child.wait();
        let worker = spent.workers_cpu.expect("the worker's CPU time");
        assert!(worker >= Duration::from_millis(10), "{spent:?}");
        // The bench's own process did not spin.
        assert!(spent.cpu < worker, "{spent:?}");
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
