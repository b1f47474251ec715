//! The bench's report: one typed value that `--json` serialises and the
//! table prints, field by field.

use serde::Serialize;
use serde_json::Value;

use super::measure::Run;
use crate::ui::{style, Failure, Output};

/// Everything the bench measured, and under which settings.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) workers: usize,
    pub(crate) adapter: &'static str,
    pub(crate) script: Option<String>,
    pub(crate) interpreter: String,
    pub(crate) host_runtime: String,
    pub(crate) codec: &'static str,
    pub(crate) command: String,
    /// The call's arguments as given with `--args` (the payload not included).
    pub(crate) args: Value,
    pub(crate) payload_bytes: usize,
    pub(crate) requests: usize,
    pub(crate) concurrency: usize,
    /// The sessions the pool's calls were spread over (`None`: no session).
    pub(crate) sessions: Option<usize>,
    /// `pipeline_depth` of the `pool` measurement (0: off).
    pub(crate) pipeline_depth: u32,
    /// `pipeline_max_call_us` of the `pool` measurement.
    pub(crate) pipeline_max_call_us: u64,
    /// The raw loop on one worker.
    pub(crate) raw_1: Figures,
    /// Rounds of the throughput comparison (`--rounds`).
    pub(crate) rounds: usize,
    /// The raw loop on `workers` workers (of the round whose pipelined
    /// ratio is the median).
    pub(crate) raw: Figures,
    /// The pool with the pipelining setting above (same round).
    pub(crate) pool: Figures,
    pub(crate) pool_over_raw: Ratios,
    /// The same pool with pipelining off (`None` when `pool` was).
    pub(crate) pool_no_pipeline: Option<Figures>,
    pub(crate) pool_no_pipeline_over_raw: Option<Ratios>,
    /// The raw loop from one thread for all the workers (same round): the
    /// bound for a host with one thread that writes no call ahead.
    pub(crate) raw_one_thread: Figures,
    /// The pool with pipelining off over `raw_one_thread`, round by round.
    pub(crate) no_pipeline_over_raw_one_thread: Ratios,
    pub(crate) sequential: Sequential,
    pub(crate) startup: Startup,
    /// With `--preload`: start-up, replacement and memory, preloaded or not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) preload: Option<super::preload::Preload>,
    pub(crate) memory: Memory,
    /// With `--instructions`: what the host spends per call, counted by
    /// callgrind (`None`, `null` in JSON, without it).
    pub(crate) instructions_per_call: Option<super::instructions::Instructions>,
}

/// One measurement, rounded as reported.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Figures {
    pub(crate) rps: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    /// With a payload only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) mb_s: Option<f64>,
    /// This process's CPU time (user + system, all threads) over the
    /// measurement, divided by its calls.
    pub(crate) cpu_us_per_call: f64,
    /// The workers' CPU time (as the scheduler counts it) over the
    /// measurement, divided by its calls; `None` where they are not on this
    /// machine.
    pub(crate) workers_cpu_us_per_call: Option<f64>,
}

impl Figures {
    pub(crate) fn of(run: &Run, payload: usize) -> Figures {
        Figures {
            rps: run.rps.round(),
            p50_us: round1(run.p50_us),
            p99_us: round1(run.p99_us),
            p999_us: round1(run.p999_us),
            mb_s: (payload > 0).then(|| round1(run.rps * payload as f64 / 1e6)),
            cpu_us_per_call: round1(run.cpu_us_per_call),
            workers_cpu_us_per_call: run.workers_cpu_us_per_call.map(round1),
        }
    }

    /// This throughput over `base`'s, to three decimals.
    pub(crate) fn over(&self, base: &Figures) -> f64 {
        (self.rps / base.rps.max(f64::MIN_POSITIVE) * 1000.0).round() / 1000.0
    }
}

/// A throughput ratio over the rounds: their median, and each round's.
#[derive(Debug, Serialize)]
pub(crate) struct Ratios {
    pub(crate) median: f64,
    pub(crate) rounds: Vec<f64>,
}

impl Ratios {
    pub(crate) fn of(rounds: Vec<f64>) -> Ratios {
        let mut sorted = rounds.clone();
        sorted.sort_by(f64::total_cmp);
        // Of an even number, the lower of the two middle ones: always one
        // round's ratio, so that the figures reported beside it (those of
        // the round whose pipelined ratio is the median) agree with it.
        let median = match sorted.len() {
            0 => 0.0,
            n => sorted[(n - 1) / 2],
        };
        Ratios { median, rounds }
    }

    /// The median, and the range over more than one round.
    fn show(&self) -> String {
        let (lo, hi) = self
            .rounds
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
        match self.rounds.len() {
            0 | 1 => format!("{:.2}", self.median),
            n => format!("{:.2} ({n} rounds: {lo:.2} to {hi:.2})", self.median),
        }
    }
}

/// One caller, one worker: the latency the pool adds to the raw loop.
#[derive(Debug, Serialize)]
pub(crate) struct Sequential {
    pub(crate) raw_1: Figures,
    pub(crate) pool_1: Figures,
    pub(crate) added_p50_us: f64,
    pub(crate) added_p99_us: f64,
}

impl Sequential {
    pub(crate) fn new(raw_1: Figures, pool_1: Figures) -> Sequential {
        Sequential {
            added_p50_us: round1(pool_1.p50_us - raw_1.p50_us),
            added_p99_us: round1(pool_1.p99_us - raw_1.p99_us),
            raw_1,
            pool_1,
        }
    }
}

/// Workers with a slow init, started together and one by one.
#[derive(Debug, Serialize)]
pub(crate) struct Startup {
    pub(crate) workers: usize,
    pub(crate) init_ms: u64,
    pub(crate) concurrent_ms: f64,
    pub(crate) sequential_ms: f64,
    /// `sequential_ms / concurrent_ms`.
    pub(crate) ratio: f64,
    /// The bundled workers, no init delay: time to ready.
    pub(crate) ready_ms: f64,
}

/// What idle workers cost the host.
#[derive(Debug, Serialize)]
pub(crate) struct Memory {
    /// This process's resident memory after a second pool's workers are
    /// ready, less before it started (beside the first, already running) (`None` where it cannot be read).
    pub(crate) host_rss_growth_kib: Option<i64>,
    /// That growth over the workers.
    pub(crate) host_kib_per_idle_worker: Option<f64>,
}

impl Memory {
    pub(crate) fn new(before: Option<u64>, after: Option<u64>, workers: usize) -> Memory {
        let growth = match (before, after) {
            (Some(b), Some(a)) => Some(a as i64 - b as i64),
            _ => None,
        };
        Memory {
            host_rss_growth_kib: growth,
            host_kib_per_idle_worker: growth.map(|g| round1(g as f64 / workers.max(1) as f64)),
        }
    }
}

pub(crate) fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `n` of `thing`s, in words: `1 worker`, `2 workers`.
pub(crate) fn count(n: usize, thing: &str) -> String {
    match n {
        1 => format!("1 {thing}"),
        n => format!("{n} {thing}s"),
    }
}

/// How a pool measurement's pipelining is named in labels.
pub(crate) fn pipelining(depth: u32) -> String {
    if depth == 0 {
        "no pipelining".into()
    } else {
        format!("pipeline depth {depth}")
    }
}

fn thousands(x: f64) -> String {
    let s = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

impl Report {
    /// The pool's measurements on `workers` workers: (pipelining, figures,
    /// throughput over the raw loop's).
    fn pool_phases(&self) -> Vec<(String, &Figures, &Ratios)> {
        let mut phases = vec![(
            pipelining(self.pipeline_depth),
            &self.pool,
            &self.pool_over_raw,
        )];
        if let (Some(off), Some(ratio)) = (&self.pool_no_pipeline, &self.pool_no_pipeline_over_raw)
        {
            phases.push((pipelining(0), off, ratio));
        }
        phases
    }

    /// The table's rows, the header first.
    fn rows(&self) -> Vec<[String; 4]> {
        let workers = count(self.workers, "worker");
        let (raw, phases) = (&self.raw, self.pool_phases());
        let mut rows: Vec<[String; 4]> = vec![[
            String::new(),
            "raw loop".into(),
            "pool".into(),
            "pool vs raw".into(),
        ]];
        for (pipelining, pool, ratio) in &phases {
            rows.push([
                format!("throughput, {workers}, {pipelining}"),
                format!("{} req/s", thousands(raw.rps)),
                format!("{} req/s", thousands(pool.rps)),
                ratio.show(),
            ]);
        }
        // The pool with pipelining off: `pool` itself when it had it off.
        let (one, off) = (
            &self.raw_one_thread,
            self.pool_no_pipeline.as_ref().unwrap_or(&self.pool),
        );
        rows.push([
            format!("throughput, {workers}, one thread, no pipelining"),
            format!("{} req/s", thousands(one.rps)),
            format!("{} req/s", thousands(off.rps)),
            self.no_pipeline_over_raw_one_thread.show(),
        ]);
        for (pipelining, pool, _) in &phases {
            rows.push([
                format!("latency p50 / p99, {pipelining}"),
                format!("{:.1} / {:.1} us", raw.p50_us, raw.p99_us),
                format!("{:.1} / {:.1} us", pool.p50_us, pool.p99_us),
                count(self.concurrency, "caller"),
            ]);
        }
        for (pipelining, pool, _) in &phases {
            rows.push([
                format!("host CPU per call, {pipelining}"),
                format!("{:.1} us", raw.cpu_us_per_call),
                format!("{:.1} us", pool.cpu_us_per_call),
                format!(
                    "{:.2}x",
                    pool.cpu_us_per_call / raw.cpu_us_per_call.max(f64::MIN_POSITIVE)
                ),
            ]);
        }
        if let Some(i) = &self.instructions_per_call {
            rows.push([
                format!(
                    "host instructions per call, {} (callgrind)",
                    pipelining(self.pipeline_depth)
                ),
                thousands(i.raw as f64),
                thousands(i.pool as f64),
                format!("{:.2}x", i.pool_over_raw),
            ]);
        }
        for (pipelining, pool, _) in &phases {
            if let (Some(r), Some(p)) = (raw.workers_cpu_us_per_call, pool.workers_cpu_us_per_call)
            {
                rows.push([
                    format!("workers' CPU per call, {pipelining}"),
                    format!("{r:.1} us"),
                    format!("{p:.1} us"),
                    format!("{:.2}x", p / r.max(f64::MIN_POSITIVE)),
                ]);
            }
        }
        let (raw_1, pool_1) = (&self.sequential.raw_1, &self.sequential.pool_1);
        rows.push([
            "sequential p50 / p99, 1 worker".into(),
            format!("{:.1} / {:.1} us", raw_1.p50_us, raw_1.p99_us),
            format!("{:.1} / {:.1} us", pool_1.p50_us, pool_1.p99_us),
            format!(
                "{:+.1} / {:+.1} us",
                self.sequential.added_p50_us, self.sequential.added_p99_us
            ),
        ]);
        if let Some(raw_mb) = raw.mb_s {
            for (pipelining, pool, _) in &phases {
                rows.push([
                    format!("payload {} B, {pipelining}", self.payload_bytes),
                    format!("{raw_mb:.1} MB/s"),
                    format!("{:.1} MB/s", pool.mb_s.unwrap_or(0.0)),
                    String::new(),
                ]);
            }
        }
        let s = &self.startup;
        rows.push([
            format!("start-up, {} x {} ms init", self.workers, s.init_ms),
            format!("{} ms one by one", thousands(s.sequential_ms)),
            format!("{} ms together", thousands(s.concurrent_ms)),
            format!("{:.2}x", s.ratio),
        ]);
        rows.push([
            format!("{workers} ready, no init delay"),
            String::new(),
            format!("{} ms", thousands(s.ready_ms)),
            String::new(),
        ]);
        if let Some(p) = &self.preload {
            rows.push([
                format!("preload, {} x {} ms init", p.workers, p.init_ms),
                format!("{} ms not preloaded", thousands(p.started_ms)),
                format!("{} ms preloaded", thousands(p.preloaded_ms)),
                format!("{:.2}x", p.started_ms / p.preloaded_ms.max(0.1)),
            ]);
            rows.push([
                "replacement after SIGKILL".into(),
                format!("{:.1} ms not preloaded", p.replacement_ms),
                format!("{:.1} ms preloaded", p.preloaded_replacement_ms),
                String::new(),
            ]);
            let mib = |v: Option<f64>| v.map_or("unknown".to_owned(), |v| format!("{v:.0} MiB"));
            rows.push([
                format!("PSS of {} workers holding {} MiB", p.workers, p.hold_mb),
                format!("{} not preloaded", mib(p.pss_mb)),
                format!("{} preloaded", mib(p.preloaded_pss_mb)),
                p.preloaded_over_one
                    .map_or(String::new(), |r| format!("{r:.2}x one worker")),
            ]);
        }
        rows.push([
            "host memory per idle worker".into(),
            String::new(),
            match self.memory.host_kib_per_idle_worker {
                Some(kib) => format!("{kib:.1} KiB"),
                None => "unknown".into(),
            },
            workers.clone(),
        ]);
        rows
    }

    /// The title line.
    fn title(&self) -> String {
        let mut title = format!(
            "snakepit bench: {} {}, {}, `{}`, {} requests",
            self.adapter,
            self.script.as_deref().unwrap_or("generic worker"),
            self.codec,
            self.command,
            self.requests
        );
        if let Some(n) = self.sessions {
            title.push_str(&format!(", {n} sessions"));
        }
        if self.host_runtime != "tokio current_thread" {
            title.push_str(&format!(", host on {}", self.host_runtime));
        }
        if self.pipeline_depth > 0 {
            title.push_str(&format!(
                ", pipelining for calls under {} us",
                self.pipeline_max_call_us
            ));
        }
        title
    }

    /// Prints the report as a table on stdout.
    pub(crate) fn print_table(&self, out: &Output) -> Result<(), Failure> {
        let rows = self.rows();
        let widths: Vec<usize> = (0..4)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        outln!(
            "{}",
            Output::paint(out.color_stdout, style::BOLD, &self.title())
        )?;
        for (i, r) in rows.iter().enumerate() {
            let line = format!(
                "{:<w0$}  {:>w1$}  {:>w2$}  {:>w3$}",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
                w3 = widths[3]
            );
            if i == 0 {
                outln!(
                    "{}",
                    Output::paint(out.color_stdout, style::BOLD, line.trim_end())
                )?;
            } else {
                outln!("{}", line.trim_end())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(47219.4), "47,219");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }

    #[test]
    fn memory_per_worker_is_the_growth_over_the_workers() {
        let m = Memory::new(Some(10_000), Some(16_400), 64);
        assert_eq!(m.host_rss_growth_kib, Some(6_400));
        assert_eq!(m.host_kib_per_idle_worker, Some(100.0));
        let m = Memory::new(None, Some(16_400), 64);
        assert_eq!(m.host_kib_per_idle_worker, None);
    }
}
