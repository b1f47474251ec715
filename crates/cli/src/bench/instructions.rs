//! `--instructions`: the instructions the host spends per call, raw loop and
//! pool, counted by valgrind's callgrind.
//!
//! A timing moves with everything else on the machine; an instruction count
//! does not. The bench runs itself under callgrind, once per measurement and
//! call count, with the hidden flags `--count-only raw|pool --count-calls N`:
//! that child starts the workers, makes its warm-up calls and then N calls
//! of the load, exactly as the measurement does, and exits. Two call counts
//! per measurement, and the difference of their totals over the difference
//! of their calls is what one more call costs: start-up, warm-up and
//! shutdown cancel out. The workers run outside valgrind (it does not follow
//! them into `exec`), so only the host is counted.

use std::ffi::OsString;

use clap::ValueEnum;
use serde::Serialize;
use snakepit_core::{Launch, RawProcess};
use tokio::io::AsyncReadExt;

use super::raw::Threads;
use super::Bench;
use crate::ui::Failure;

/// The measurement a counted child makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Phase {
    Raw,
    Pool,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Raw => "raw",
            Phase::Pool => "pool",
        }
    }
}

/// What `--instructions` counted.
#[derive(Debug, Serialize)]
pub(crate) struct Instructions {
    /// The raw loop on `workers` workers: instructions per call.
    pub(crate) raw: u64,
    /// The pool on `workers` workers from `concurrency` callers, with
    /// `pipeline_depth`: instructions per call.
    pub(crate) pool: u64,
    /// `pool / raw`, to two decimals.
    pub(crate) pool_over_raw: f64,
    /// The two call counts whose difference each figure is taken over.
    pub(crate) calls: [usize; 2],
    /// What counted them.
    pub(crate) counted_by: &'static str,
}

/// Refuses `--instructions` before anything is measured when valgrind
/// cannot run.
pub(crate) async fn check_valgrind() -> Result<(), Failure> {
    let missing = || {
        Failure::general(
            "--instructions counts with valgrind's callgrind: valgrind is not installed",
        )
        .hint("install it (Debian: apt-get install valgrind), or leave out --instructions")
    };
    let mut p = RawProcess::spawn(
        Launch::new("valgrind").arg("--version"),
        snakepit_core::WireCodec::Json,
    )
    .await
    .map_err(|_| missing())?;
    drop(p.take_stdin());
    let (_, _, status) = drain(&mut p).await.map_err(|_| missing())?;
    match status.success() {
        true => Ok(()),
        false => Err(missing()),
    }
}

/// The two call counts: enough that every caller (and every raw loop
/// thread) makes calls, and a fivefold difference.
fn call_counts(b: &Bench) -> [usize; 2] {
    let few = 8 * b.a.concurrency.max(b.workers);
    [few, 5 * few]
}

/// The calls a measurement of `n` makes: each raw loop thread and each
/// caller makes the same number, so the remainder is not made.
fn made(b: &Bench, phase: Phase, n: usize) -> usize {
    match phase {
        Phase::Raw => n / b.workers * b.workers,
        Phase::Pool => (n / b.a.concurrency).max(1) * b.a.concurrency,
    }
}

/// Counts the raw loop's and the pool's instructions per call.
pub(crate) async fn count(b: &Bench) -> Result<Instructions, Failure> {
    let calls = call_counts(b);
    let mut per_call = [0u64; 2];
    for (slot, phase) in [Phase::Raw, Phase::Pool].into_iter().enumerate() {
        let mut totals = [0u64; 2];
        for (total, n) in totals.iter_mut().zip(calls) {
            *total = counted_run(b, phase, n).await?;
        }
        let more_calls = (made(b, phase, calls[1]) - made(b, phase, calls[0])).max(1) as u64;
        per_call[slot] = totals[1].saturating_sub(totals[0]) / more_calls;
    }
    let [raw, pool] = per_call;
    Ok(Instructions {
        raw,
        pool,
        pool_over_raw: (pool as f64 / raw.max(1) as f64 * 100.0).round() / 100.0,
        calls,
        counted_by: "valgrind --tool=callgrind",
    })
}

/// This command line again, under callgrind, making only `phase`'s `n`
/// calls: the total of instructions it ran.
async fn counted_run(b: &Bench, phase: Phase, n: usize) -> Result<u64, Failure> {
    let exe = std::env::current_exe()
        .map_err(|e| Failure::general(format!("cannot find this program to count it: {e}")))?;
    let out = std::env::temp_dir().join(format!(
        "snakepit-bench-{}-{}-{n}.callgrind",
        std::process::id(),
        phase.name()
    ));
    let mut launch = Launch::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--quiet")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(exe);
    for arg in child_args(std::env::args_os().skip(1)) {
        launch = launch.arg(arg);
    }
    launch = launch
        .arg("--count-only")
        .arg(phase.name())
        .arg("--count-calls")
        .arg(n.to_string());
    let failed = |what: String| {
        Failure::general(format!(
            "counting the {} measurement's instructions failed: {what}",
            phase.name()
        ))
    };
    let mut p = RawProcess::spawn(launch, b.worker.codec)
        .await
        .map_err(|e| failed(format!("cannot start valgrind: {e}")))?;
    drop(p.take_stdin());
    let (_, stderr, status) = drain(&mut p).await.map_err(|e| failed(e.to_string()))?;
    let text = std::fs::read_to_string(&out);
    let _ = std::fs::remove_file(&out);
    if !status.success() {
        return Err(failed(format!("{status}: {}", last_lines(&stderr, 5))));
    }
    let text =
        text.map_err(|e| failed(format!("no callgrind output at {}: {e}", out.display())))?;
    total(&text).ok_or_else(|| failed("callgrind's output has no instruction total".into()))
}

/// The bench's own arguments, for the counted child: all but
/// `--instructions`.
fn child_args(args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    args.filter(|a| a != "--instructions").collect()
}

/// The instructions in a callgrind output file: its `summary:` line (or
/// `totals:`), whose first number counts instructions (`Ir`).
fn total(callgrind_out: &str) -> Option<u64> {
    callgrind_out.lines().find_map(|l| {
        l.strip_prefix("summary:")
            .or_else(|| l.strip_prefix("totals:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// Everything the process writes, and how it ends.
async fn drain(p: &mut RawProcess) -> std::io::Result<(String, String, std::process::ExitStatus)> {
    async fn all(r: Option<impl tokio::io::AsyncRead + Unpin>) -> std::io::Result<String> {
        let mut bytes = Vec::new();
        if let Some(mut r) = r {
            r.read_to_end(&mut bytes).await?;
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
    let (stdout, stderr) = tokio::try_join!(all(p.take_stdout()), all(p.take_stderr()))?;
    Ok((stdout, stderr, p.wait().await?))
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// The counted child's one measurement: the workers start, the warm-up
/// calls run, then `n` calls; nothing is printed.
pub(crate) async fn run_counted(b: &Bench, phase: Phase, n: usize) -> Result<(), Failure> {
    match phase {
        Phase::Raw => b.raw(b.workers, n, Threads::PerWorker).await.map(drop),
        Phase::Pool => b
            .pool(b.workers, b.pool.pipeline_depth, b.a.concurrency, n)
            .await
            .map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_is_the_first_number_of_the_summary_line() {
        let out = "version: 1\ncmd: x\nevents: Ir\nsummary: 123456 7\n";
        assert_eq!(total(out), Some(123_456));
        assert_eq!(total("events: Ir\ntotals: 99\n"), Some(99));
        assert_eq!(total("events: Ir\n"), None);
        assert_eq!(total("summary: lots\n"), None);
    }

    #[test]
    fn the_counted_child_gets_every_argument_but_instructions() {
        let args = ["--config", "x.toml", "bench", "--instructions", "--json"].map(OsString::from);
        assert_eq!(
            child_args(args.into_iter()),
            ["--config", "x.toml", "bench", "--json"].map(OsString::from)
        );
    }
}
