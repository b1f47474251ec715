//! `snakepit bench`: the pool against the raw round trip, in one run (see
//! docs/cli.md).
//!
//! The baseline is the raw round trip ([`raw`]): one plain loop per worker
//! process (same interpreter, same script, same handler, same codec, same
//! arguments), one request in flight per worker, no queue, no supervision;
//! each reply is decoded into a `Value`, as the pool decodes it for its
//! caller. The pool ([`pool`]) serves the same load from many concurrent
//! callers, with pipelining as set and with it off. Every measurement
//! ([`measure`]) runs in the same process, in the same run, so the ratios
//! mean something on a shared machine where the absolute figures do not;
//! [`report`] holds what `--json` and the table print.

mod instructions;
mod measure;
mod nats;
mod pool;
mod preload;
mod progress;
mod raw;
mod report;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{Adapter as _, CallOptions, Pool, PoolConfig};
use snakepit_protocol::{Codec as _, Error as ProtocolError};

use self::measure::Run;
use self::progress::Progress;
use self::raw::{Raw, Threads};
use self::report::{count, pipelining, Figures, Memory, Ratios, Report, Sequential, Startup};
use crate::args::WorkerArgs;
use crate::config::FileConfig;
use crate::ui::{Failure, Output};
use crate::workers::Worker;

pub(crate) const EXAMPLES: &str = "\
Examples:
  snakepit bench
  snakepit bench --workers 2 --requests 20000 --concurrency 64
  snakepit bench --codec msgpack --payload 102400 --command echo
  snakepit bench --payload 1048576 --command echo --host-threads 2
  snakepit bench --command compute --args '{\"operation\": \"add\", \"a\": 5, \"b\": 3}'
  snakepit bench --sessions 1000 --pipeline-depth 0
  snakepit bench --workers 64 --init-ms 10
  snakepit bench --adapter node --json
  snakepit bench --script worker.py --command predict --plot latency.svg
  snakepit bench --nats nats://127.0.0.1:4222 --command ping   # a cluster against the local pool

The pool is measured with pipelining as set (--pipeline-depth, or
pool.pipeline_depth in snakepit.toml, default 16) and with it off, both against
the same raw loop. The table goes to stdout, progress to stderr (on a terminal
only). --json prints one JSON object instead; --plot also draws the latency
distributions. --instructions also counts the host's instructions per call
with valgrind's callgrind.";

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    /// Worker processes [default: 2, or pool.pool_size in snakepit.toml].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Requests per measurement (the sequential run makes a quarter of them).
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    requests: usize,
    /// Concurrent callers of the pool.
    #[arg(long, value_name = "N", default_value_t = 64)]
    concurrency: usize,
    /// The command each request runs (with --payload, `echo` sends it back).
    #[arg(long, default_value = "ping")]
    command: String,
    /// The arguments of each request: a JSON object [default: {}].
    #[arg(long, value_name = "JSON")]
    args: Option<String>,
    /// Bytes of payload added to each request's arguments ({"data": "xxx..."}).
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    payload: usize,
    /// Spread the pool's calls over N sessions (execute_in_session) [default: no session].
    #[arg(long, value_name = "N")]
    sessions: Option<usize>,
    /// Calls written ahead to each worker in the pipelined measurement; 0 measures
    /// the pool without pipelining only [default: 16, or pool.pipeline_depth in snakepit.toml].
    #[arg(long, value_name = "N")]
    pipeline_depth: Option<u32>,
    /// Threads of the host's runtime in the pool's measurements: 1 runs them on a
    /// one-thread Tokio runtime (`current_thread`, as the rest of this tool), more
    /// on a `multi_thread` runtime of that many threads, where the callers encode
    /// their requests and decode their replies in parallel.
    #[arg(long, value_name = "N", default_value_t = 1, conflicts_with = "nats",
          value_parser = clap::value_parser!(u16).range(1..))]
    host_threads: u16,
    /// Rounds of the throughput comparison, the raw loop and the pool taking
    /// turns: each ratio is the median of the rounds' [default: 1; with --nats, 3].
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// The init delay of the start-up measurement's workers, standing in for loading a model.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    init_ms: u64,
    /// With --preload (or `preload = true` in snakepit.toml): MiB each worker's
    /// script holds in the memory measurement [default: 200].
    #[arg(long, value_name = "MIB")]
    init_mb: Option<u64>,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Draw the latency distributions (raw loop against pool) to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Also count the instructions the host spends per call, raw loop and pool, with
    /// valgrind's callgrind (Debian: valgrind): repeatable on a busy machine, unlike a timing.
    #[arg(long, conflicts_with = "nats")]
    instructions: bool,
    /// The child that --instructions counts: only this measurement, then exit.
    #[arg(long, hide = true, value_name = "PHASE", requires = "count_calls")]
    count_only: Option<instructions::Phase>,
    /// The calls the counted child makes after its warm-up.
    #[arg(long, hide = true, value_name = "N", requires = "count_only")]
    count_calls: Option<usize>,
    #[command(flatten)]
    cluster: nats::ClusterBenchArgs,
}

/// What every call of every measurement sends.
pub(crate) struct Load {
    pub(crate) command: String,
    /// `--args` with the payload.
    pub(crate) args: Value,
    /// The sessions the pool's calls are spread over; empty: none.
    pub(crate) sessions: Vec<String>,
}

/// The call's arguments as given: `--args`, an object, or `{}`.
fn given_args(a: &BenchArgs) -> Result<Value, Failure> {
    match &a.args {
        Some(text) => crate::exec::parse_args(text).map_err(|f| Failure {
            message: f.message.replace("ARGS_JSON", "--args"),
            ..f
        }),
        None => Ok(json!({})),
    }
}

/// The call's arguments with `--payload` bytes in their `data` field.
fn with_payload(mut args: Value, a: &BenchArgs) -> Result<Value, Failure> {
    if a.payload > 0 {
        match args.as_object_mut() {
            Some(object) if !object.contains_key("data") => {
                object.insert("data".into(), Value::String("x".repeat(a.payload)));
            }
            _ => {
                return Err(Failure::usage(
                    "--args has a \"data\" field, which --payload would replace",
                )
                .hint("rename the field, or leave out --payload"))
            }
        }
    }
    Ok(args)
}

/// Limits that keep the bench's own memory bounded.
const MAX_CONCURRENCY: usize = 100_000;
const MAX_REQUESTS: usize = 100_000_000;
/// The longest start-up `--init-ms` may ask for of each worker.
const MAX_INIT_MS: u64 = 600_000;
/// The largest `--payload`, in bytes.
const MAX_PAYLOAD: usize = 1 << 30;
/// The most `--init-mb` may ask for where the machine's memory is unknown.
const MAX_INIT_MB: u64 = 1 << 20;

/// The machine's memory in MiB (`MemTotal` of `/proc/meminfo`).
fn machine_memory_mib() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

fn check(a: &BenchArgs, workers: usize) -> Result<(), Failure> {
    crate::config::check_pool_size_flag(workers, "--workers")?;
    // Each call's latency is kept (16 bytes), and each caller is a task.
    if a.concurrency == 0 || a.concurrency > MAX_CONCURRENCY {
        return Err(Failure::usage(format!(
            "--concurrency must be between 1 and {MAX_CONCURRENCY}"
        )));
    }
    if a.requests > MAX_REQUESTS {
        return Err(Failure::usage(format!(
            "--requests must be at most {MAX_REQUESTS}"
        )));
    }
    if a.rounds == Some(0) {
        return Err(Failure::usage("--rounds must be at least 1"));
    }
    if a.sessions == Some(0) {
        return Err(Failure::usage("--sessions must be at least 1"));
    }
    // Each session gets at least one call; the names are made up front.
    if a.sessions.is_some_and(|n| n > a.requests) {
        return Err(Failure::usage(
            "--sessions must be at most --requests (each session gets a call)",
        ));
    }
    // The payload is one string, made up front and sent with every call.
    if a.payload > MAX_PAYLOAD {
        return Err(Failure::usage(format!(
            "--payload must be at most {MAX_PAYLOAD} bytes (1 GiB)"
        )));
    }
    // Each preloaded template allocates it; more than the machine has
    // would end the run after minutes, with nothing reported.
    if let Some(mb) = a.init_mb {
        let machine = machine_memory_mib().unwrap_or(MAX_INIT_MB);
        if mb > machine.min(MAX_INIT_MB) {
            return Err(Failure::usage(format!(
                "--init-mb must be at most {} (this machine's memory, in MiB)",
                machine.min(MAX_INIT_MB)
            )));
        }
    }
    let least = a.concurrency.max(workers).saturating_mul(4);
    if a.requests < least {
        return Err(Failure::usage(format!(
            "--requests must be at least 4 x max(--workers, --concurrency) = {least}"
        ))
        .hint(format!(
            "give --requests {least} or more, or fewer --concurrency callers"
        )));
    }
    if a.init_ms > MAX_INIT_MS {
        return Err(Failure::usage(format!(
            "--init-ms must be at most {MAX_INIT_MS} (10 minutes)"
        )));
    }
    if let Some(plot) = &a.plot {
        if plot.extension().and_then(|e| e.to_str()) != Some("svg") {
            return Err(Failure::usage(format!(
                "--plot draws SVG: give a file ending in .svg, not {}",
                plot.display()
            )));
        }
        // Found out now, not after minutes of measuring.
        let parent = match plot.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            return Err(Failure::usage(format!(
                "--plot {}: the directory {} does not exist",
                plot.display(),
                parent.display()
            )));
        }
    }
    Ok(())
}

/// The bench's settings, and one method per measurement.
struct Bench {
    a: BenchArgs,
    workers: usize,
    /// `--args`, without the payload.
    given_args: Value,
    worker: Worker,
    interpreter: PathBuf,
    adapter: Bridge,
    /// The file's pool settings with the pipelining chosen.
    pool: PoolConfig,
    load: Arc<Load>,
    progress: Progress,
    /// The runtime of the pool's measurements with `--host-threads` above 1.
    host: Option<HostRuntime>,
}

/// A `multi_thread` runtime, shut down without waiting when dropped (a
/// runtime dropped in an asynchronous context would panic).
struct HostRuntime(Option<tokio::runtime::Runtime>);

impl HostRuntime {
    fn new(threads: usize) -> Result<HostRuntime, Failure> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .map(|rt| HostRuntime(Some(rt)))
            .map_err(|e| Failure::general(format!("cannot start the host's runtime: {e}")))
    }

    fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.0.as_ref().map(tokio::runtime::Runtime::handle)
    }
}

impl Drop for HostRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Bench {
    fn new(a: BenchArgs, file: &FileConfig, out: &Output) -> Result<Bench, Failure> {
        let workers = match a.workers {
            Some(n) => n,
            None if file.pool_size_set => file.pool.pool_size,
            None => 2,
        };
        check(&a, workers)?;
        let given_args = given_args(&a)?;
        let args = with_payload(given_args.clone(), &a)?;
        let worker = Worker::choose(&a.worker, file)?;
        if a.init_mb.is_some() && !worker.preload {
            return Err(Failure::usage(
                "--init-mb sizes the preload measurement: it needs --preload",
            )
            .hint("add --preload (or preload = true in snakepit.toml), or leave --init-mb out"));
        }
        let interpreter = worker.lang.language().real_interpreter();
        let adapter = worker.bridge(Some(&interpreter));
        let mut pool = file.pool.clone();
        if let Some(depth) = a.pipeline_depth {
            pool.pipeline_depth = depth;
        }
        // A refused setting is a usage error before anything is measured
        // (or any NATS server reached).
        let mut sized = pool.clone();
        sized.pool_size = workers;
        sized.validate()?;
        let sessions = (0..a.sessions.unwrap_or(0))
            .map(|n| format!("bench-session-{n}"))
            .collect();
        let load = Arc::new(Load {
            command: a.command.clone(),
            args,
            sessions,
        });
        let progress = Progress {
            hidden: out.quiet || !out.stderr_is_terminal,
        };
        let host = match a.host_threads {
            1 => None,
            n => Some(HostRuntime::new(n.into())?),
        };
        Ok(Bench {
            a,
            workers,
            given_args,
            worker,
            interpreter,
            adapter,
            pool,
            load,
            progress,
            host,
        })
    }

    /// The pool's settings with `size` workers and pipelining `depth`.
    fn config(&self, size: usize, depth: u32) -> PoolConfig {
        let mut c = self.pool.clone();
        c.pool_size = size;
        c.pipeline_depth = depth;
        c
    }

    fn failed(&self, what: &str, e: anyhow::Error) -> Failure {
        Failure::from_bench(what, e).hint(format!(
            "check the worker by hand: snakepit exec{} {} '{}'",
            match &self.worker.script {
                Some(s) => format!(" --script {}", s.display()),
                None => format!(" --adapter {}", self.worker.lang.name()),
            },
            self.a.command,
            self.a.args.as_deref().unwrap_or("{}")
        ))
    }

    /// One call through a pool of all the workers, so that a worker that
    /// cannot start or a command that fails is reported with the pool's typed
    /// error before anything is measured; then, while that pool still runs,
    /// what a second pool of as many workers adds to the host's resident
    /// memory once they are ready and idle. The first pool has paid what is
    /// paid once per process (the code's pages, the runtime's threads, the
    /// allocator's arenas) and frees nothing the second could reuse, so the
    /// growth is what the workers cost.
    async fn probe(&self) -> Result<Memory, Failure> {
        let start = || {
            crate::traced(
                Pool::builder(self.adapter.clone())
                    .config(self.config(self.workers, self.pool.pipeline_depth)),
            )
            .start()
        };
        let probe = start().await?;
        let first = probe
            .call::<_, Value>(&self.load.command, &self.load.args, CallOptions::new())
            .await;
        if let Err(e) = first {
            let _ = probe.shutdown().await;
            return Err(e.into());
        }
        let before = measure::rss_kib();
        let second = start().await;
        let after = measure::rss_kib();
        let _ = probe.shutdown().await;
        let _ = second?.shutdown().await;
        Ok(Memory::new(before, after, self.workers))
    }

    /// The raw loop on `workers` workers, a thread per worker or one for all.
    async fn raw(&self, workers: usize, requests: usize, threads: Threads) -> Result<Run, Failure> {
        let (what, suffix) = match threads {
            Threads::PerWorker => ("the raw loop", ""),
            Threads::One => ("the raw loop on one thread", ", one thread"),
        };
        let label = format!("raw loop, {}{suffix}", count(workers, "worker"));
        let bar = self.progress.phase(label, requests as u64);
        let raw = Raw {
            launch: &self.adapter.launch(),
            codec: self.worker.codec,
            max_frame_size: self.pool.max_frame_size,
        };
        raw.run(&self.load, workers, requests, &bar, threads)
            .await
            .map_err(|e| self.failed(what, e))
    }

    /// A fresh pool of `size` workers with pipelining `depth`, called by
    /// `callers` at once.
    async fn pool(
        &self,
        size: usize,
        depth: u32,
        callers: usize,
        requests: usize,
    ) -> Result<Run, Failure> {
        let bar = self
            .progress
            .phase(phase_label(size, callers, depth), requests as u64);
        let (adapter, config, load) = (
            self.adapter.clone(),
            self.config(size, depth),
            self.load.clone(),
        );
        let measure = async move {
            let pool = crate::traced(Pool::builder(adapter).config(config))
                .start()
                .await?;
            let run = pool::run(&pool, &load, callers, requests, &bar).await?;
            pool.shutdown().await?;
            Ok::<_, snakepit_core::Error>(run)
        };
        match self.host.as_ref().and_then(HostRuntime::handle) {
            None => Ok(measure.await?),
            // The pool, its workers' tasks and its callers all on that runtime.
            Some(host) => Ok(host
                .spawn(measure)
                .await
                .map_err(|e| Failure::general(format!("the pool's measurement failed: {e}")))??),
        }
    }

    /// Workers whose init sleeps `--init-ms`, started together and one by
    /// one; then the bundled workers with no delay, time to ready.
    async fn startup(&self) -> Result<Startup, Failure> {
        let (workers, init_ms) = (self.workers, self.a.init_ms);
        let slow =
            Bridge::with_init_delay(self.worker.lang.language(), Duration::from_millis(init_ms))
                .map_err(|e| Failure::general(format!("cannot write the start-up worker: {e}")))?
                .interpreter(&self.interpreter)
                .codec(self.worker.codec);
        let mut slow_config = self.config(workers, self.pool.pipeline_depth);
        let enough = Duration::from_millis(init_ms.saturating_mul(2).saturating_add(10_000));
        slow_config.worker_init_timeout = slow_config.worker_init_timeout.max(enough);
        slow_config.startup_timeout = slow_config.startup_timeout.max(enough);
        let bar = self.progress.phase(
            format!("start-up, {workers} x {init_ms} ms init"),
            workers as u64 * 2 + 1,
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        let t = Instant::now();
        let p = crate::traced(Pool::builder(slow.clone()).config(slow_config.clone()))
            .start()
            .await?;
        let concurrent_ms = t.elapsed().as_secs_f64() * 1e3;
        p.shutdown().await?;
        bar.inc(workers as u64);
        let t = Instant::now();
        for _ in 0..workers {
            let mut one = slow_config.clone();
            one.pool_size = 1;
            let p = crate::traced(Pool::builder(slow.clone()).config(one))
                .start()
                .await?;
            p.shutdown().await?;
            bar.inc(1);
        }
        let sequential_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let p = crate::traced(
            Pool::builder(self.adapter.clone())
                .config(self.config(workers, self.pool.pipeline_depth)),
        )
        .start()
        .await?;
        let ready_ms = t.elapsed().as_secs_f64() * 1e3;
        p.shutdown().await?;
        bar.finish_and_clear();
        Ok(Startup {
            workers,
            init_ms,
            concurrent_ms: concurrent_ms.round(),
            sequential_ms: sequential_ms.round(),
            ratio: (sequential_ms / concurrent_ms * 100.0).round() / 100.0,
            ready_ms: ready_ms.round(),
        })
    }
}

/// How a pool measurement is named on its progress bar and in the plot.
fn phase_label(size: usize, callers: usize, depth: u32) -> String {
    format!(
        "pool, {}, {}, {}",
        count(size, "worker"),
        count(callers, "caller"),
        pipelining(depth)
    )
}

/// What one bench measured, before it is reported.
struct Measured {
    memory: Memory,
    raw_1: Run,
    /// The throughput comparison, round by round (at least one).
    rounds: Vec<Round>,
    /// One worker, one caller.
    pool_1: Run,
    startup: Startup,
    /// With `--preload`: preloaded against not.
    preload: Option<preload::Preload>,
    /// With `--instructions`: the host's instructions per call.
    instructions: Option<instructions::Instructions>,
}

/// One round of the throughput comparison on all the workers.
struct Round {
    raw: Run,
    /// The pool with pipelining as set.
    pool: Run,
    /// The pool with pipelining off, when `pool` had it on.
    pool_no_pipeline: Option<Run>,
    /// The raw loop from one thread for all the workers.
    raw_one_thread: Run,
}

impl Round {
    /// The pipelined pool's throughput over the raw loop's.
    fn ratio(&self) -> f64 {
        self.pool.rps / self.raw.rps.max(f64::MIN_POSITIVE)
    }

    /// The pool with pipelining off (`pool` itself when it had it off).
    fn no_pipeline(&self) -> &Run {
        self.pool_no_pipeline.as_ref().unwrap_or(&self.pool)
    }
}

impl Measured {
    /// The round whose pipelined ratio is the median (the lower of the two
    /// middle ones for an even count): the one whose figures are reported.
    fn median_round(&self) -> &Round {
        let mut order: Vec<&Round> = self.rounds.iter().collect();
        order.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
        order[(order.len() - 1) / 2]
    }
}

impl Bench {
    /// Every measurement, in turn.
    async fn measure(&self) -> Result<Measured, Failure> {
        let memory = self.probe().await?;
        let raw_1 = self.raw(1, self.a.requests / 2, Threads::PerWorker).await?;
        let mut rounds = Vec::new();
        for round in 0..self.rounds(1) {
            rounds.push(self.round(round).await?);
        }
        Ok(Measured {
            memory,
            raw_1,
            rounds,
            pool_1: self
                .pool(1, self.pool.pipeline_depth, 1, self.a.requests / 4)
                .await?,
            startup: self.startup().await?,
            preload: match self.worker.preload {
                true => Some(self.preload().await?),
                false => None,
            },
            // Last: valgrind's runs must not share the machine with a timing.
            instructions: match self.a.instructions {
                true => Some(instructions::count(self).await?),
                false => None,
            },
        })
    }

    /// `--rounds`, or `default`.
    fn rounds(&self, default: usize) -> usize {
        self.a.rounds.unwrap_or(default)
    }

    /// One round of the throughput comparison: the raw loop, the pool with
    /// pipelining and without. Every other round the pool goes first, so
    /// that a machine slowing down or speeding up over the run favours
    /// neither.
    async fn round(&self, round: usize) -> Result<Round, Failure> {
        let (workers, requests, callers) = (self.workers, self.a.requests, self.a.concurrency);
        let depth = self.pool.pipeline_depth;
        let pools = async {
            let pool = self.pool(workers, depth, callers, requests).await?;
            let pool_no_pipeline = match depth {
                0 => None,
                _ => Some(self.pool(workers, 0, callers, requests).await?),
            };
            Ok::<_, Failure>((pool, pool_no_pipeline))
        };
        let raws = async {
            let raw = self.raw(workers, requests, Threads::PerWorker).await?;
            let one = self.raw(workers, requests, Threads::One).await?;
            Ok::<_, Failure>((raw, one))
        };
        let ((raw, raw_one_thread), (pool, pool_no_pipeline)) = if round % 2 == 0 {
            let raws = raws.await?;
            (raws, pools.await?)
        } else {
            let pools = pools.await?;
            (raws.await?, pools)
        };
        Ok(Round {
            raw,
            pool,
            pool_no_pipeline,
            raw_one_thread,
        })
    }

    /// Draws the latency distributions for `path`: the SVG document, which
    /// the caller writes there.
    fn plot(&self, path: &std::path::Path, m: &Measured) -> Result<String, Failure> {
        let (workers, callers) = (self.workers, self.a.concurrency);
        let depth = self.pool.pipeline_depth;
        let round = m.median_round();
        let mut series = vec![
            (
                format!("raw loop, {}", count(workers, "worker")),
                &round.raw.samples,
            ),
            (phase_label(workers, callers, depth), &round.pool.samples),
        ];
        if let Some(off) = &round.pool_no_pipeline {
            series.push((phase_label(workers, callers, 0), &off.samples));
        }
        series.push(("raw loop, 1 worker".to_owned(), &m.raw_1.samples));
        series.push((phase_label(1, 1, depth), &m.pool_1.samples));
        let title = format!(
            "{}, {}, `{}`: latency distribution",
            self.worker.describe(),
            self.worker.codec,
            self.a.command
        );
        crate::plot::latency_cdf(&title, &series)
            .map_err(|e| Failure::general(format!("cannot draw {}: {e}", path.display())))
    }

    /// The report of what was measured, with the settings it ran with.
    fn report(&self, m: Measured) -> Report {
        let payload = self.a.payload;
        let round = m.median_round();
        let raw = Figures::of(&round.raw, payload);
        let pool = Figures::of(&round.pool, payload);
        let pool_no_pipeline = round
            .pool_no_pipeline
            .as_ref()
            .map(|r| Figures::of(r, payload));
        let ratios = |pool: fn(&Round) -> Option<&Run>| -> Option<Vec<f64>> {
            m.rounds
                .iter()
                .map(|r| Some(Figures::of(pool(r)?, 0).over(&Figures::of(&r.raw, 0))))
                .collect()
        };
        Report {
            workers: self.workers,
            adapter: self.worker.lang.name(),
            script: self.worker.script.as_ref().map(|s| s.display().to_string()),
            interpreter: self.interpreter.display().to_string(),
            host_runtime: match self.a.host_threads {
                1 => "tokio current_thread".to_owned(),
                n => format!("tokio multi_thread, {n} threads"),
            },
            codec: self.worker.codec.name(),
            command: self.a.command.clone(),
            args: self.given_args.clone(),
            payload_bytes: payload,
            requests: self.a.requests,
            concurrency: self.a.concurrency,
            sessions: self.a.sessions,
            pipeline_depth: self.pool.pipeline_depth,
            pipeline_max_call_us: self.pool.pipeline_max_call.as_micros() as u64,
            raw_1: Figures::of(&m.raw_1, payload),
            rounds: m.rounds.len(),
            pool_over_raw: Ratios::of(ratios(|r| Some(&r.pool)).unwrap_or_default()),
            pool_no_pipeline_over_raw: ratios(|r| r.pool_no_pipeline.as_ref()).map(Ratios::of),
            raw_one_thread: Figures::of(&round.raw_one_thread, payload),
            no_pipeline_over_raw_one_thread: Ratios::of(
                m.rounds
                    .iter()
                    .map(|r| {
                        Figures::of(r.no_pipeline(), 0).over(&Figures::of(&r.raw_one_thread, 0))
                    })
                    .collect(),
            ),
            raw,
            pool,
            pool_no_pipeline,
            sequential: Sequential::new(
                Figures::of(&m.raw_1, payload),
                Figures::of(&m.pool_1, payload),
            ),
            startup: m.startup,
            preload: m.preload,
            memory: m.memory,
            instructions_per_call: m.instructions,
        }
    }
}

pub(crate) async fn run(a: BenchArgs, file: FileConfig, out: &Output) -> Result<(), Failure> {
    let b = Bench::new(a, &file, out)?;
    if let (Some(phase), Some(calls)) = (b.a.count_only, b.a.count_calls) {
        return instructions::run_counted(&b, phase, calls).await;
    }
    if b.a.instructions {
        instructions::check_valgrind().await?;
    }
    if let Some(url) = b.a.cluster.nats.clone() {
        return nats::run(&b, &url, out).await;
    }
    out.verbose(format!(
        "{} ({}), {}, `{}`, payload {} B, {}",
        b.worker.describe(),
        b.interpreter.display(),
        b.worker.codec,
        b.a.command,
        b.a.payload,
        pipelining(b.pool.pipeline_depth)
    ));
    let measured = b.measure().await?;
    // A plot that cannot be written fails the command, after the report:
    // minutes of measuring are not lost to it. It is drawn in memory now
    // (the report takes the measurements) and written once the report is
    // out: a named pipe that nobody reads yet does not hold the report back.
    let drawn = b.a.plot.as_ref().map(|path| b.plot(path, &measured));
    let report = b.report(measured);
    if b.a.json {
        let text = serde_json::to_string(&report)
            .map_err(|e| Failure::general(format!("cannot print the report: {e}")))?;
        outln!("{text}")?;
    } else {
        report.print_table(out)?;
    }
    if let (Some(drawn), Some(path)) = (drawn, &b.a.plot) {
        std::fs::write(path, drawn?).map_err(|e| {
            Failure::general(format!("cannot write the plot to {}: {e}", path.display()))
        })?;
        out.note(format!("latency distributions drawn to {}", path.display()));
    }
    Ok(())
}

impl Failure {
    fn from_bench(what: &str, e: anyhow::Error) -> Failure {
        // A worker that breaks the protocol fails as it would in a pool.
        let code = if e.downcast_ref::<ProtocolError>().is_some() {
            crate::ui::code::CRASH
        } else {
            crate::ui::code::FAILED
        };
        Failure::new(code, format!("{what} failed: {e:#}"))
    }
}
