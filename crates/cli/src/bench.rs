//! `snakepit bench`: the end-to-end benchmark of docs/PERFORMANCE.md.
//!
//! The baseline is the raw round trip: one plain loop per worker process
//! (same interpreter, same script, same handler, same codec, same
//! arguments), one request in flight per worker, no queue, no supervision;
//! each reply is decoded into a `Value`, as the pool decodes it for its
//! caller. The pool serves the same load from many concurrent callers. Both
//! run in the same process, in the same run, so the ratio means something
//! on a shared machine where the absolute figures do not.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{Adapter, CallOptions, Launch, Pool, PoolConfig, RawProcess, WireCodec};
use snakepit_protocol::{
    decode_inbound, decode_response, encode_frame, Codec as _, Error as ProtocolError, Inbound,
    Request, HEADER_LEN,
};

use crate::config::FileConfig;
use crate::ui::{Failure, Output};
use crate::workers::{Worker, WorkerArgs};

pub(crate) const EXAMPLES: &str = "\
Examples:
  snakepit bench
  snakepit bench --workers 2 --requests 20000 --concurrency 64
  snakepit bench --codec msgpack --payload 102400 --command echo
  snakepit bench --adapter node --json
  snakepit bench --script worker.py --command predict --plot latency.svg

The table goes to stdout, progress to stderr (on a terminal only). --json prints
one JSON object instead; --plot also draws the latency distributions.";

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
    /// Bytes of payload in each request's arguments ({"data": "xxx..."}).
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    payload: usize,
    /// The init delay of the start-up measurement's workers, standing in for loading a model.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    init_ms: u64,
    /// Print one JSON object on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Draw the latency distributions (raw loop against pool) to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

/// One measurement: throughput and latency quantiles, and the sorted samples.
#[derive(Debug, Clone, Default)]
pub(crate) struct Run {
    pub(crate) rps: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    /// Sorted latencies in microseconds.
    pub(crate) samples: Vec<f64>,
}

impl Run {
    fn new(latencies: Vec<Duration>, elapsed: Duration) -> Run {
        let mut samples: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        samples.sort_unstable_by(f64::total_cmp);
        let q = |p: f64| {
            let i = ((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1));
            samples.get(i).copied().unwrap_or(0.0)
        };
        Run {
            rps: samples.len() as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
            p50_us: q(0.50),
            p99_us: q(0.99),
            p999_us: q(0.999),
            samples,
        }
    }

    fn json(&self, payload: usize) -> Value {
        let mut v = json!({
            "rps": self.rps.round(),
            "p50_us": round1(self.p50_us),
            "p99_us": round1(self.p99_us),
            "p999_us": round1(self.p999_us),
        });
        if payload > 0 {
            v["mb_s"] = json!(round1(self.rps * payload as f64 / 1e6));
        }
        v
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// One worker process driven directly: write a frame, read the reply.
///
/// It bypasses the pool's queue, not its process safety: the process is a
/// `RawProcess` (own process group, parent-death signal, watchdog, run id),
/// and a reply longer than the pool's `max_frame_size` is refused from its
/// header, before anything of that size is allocated.
struct RawWorker {
    /// Kills and reaps the process group when the worker is dropped.
    _process: RawProcess,
    stdin: std::fs::File,
    stdout: std::fs::File,
    codec: WireCodec,
    max_frame_size: usize,
    buf: BytesMut,
    frame: Vec<u8>,
}

impl RawWorker {
    /// Starts the adapter's program exactly as the pool would (same
    /// program, arguments and environment, same spawn path) and runs the
    /// init handshake.
    async fn start(
        launch: &Launch,
        codec: WireCodec,
        max_frame_size: usize,
        n: usize,
    ) -> anyhow::Result<RawWorker> {
        let worker_id = format!("raw_{n}");
        let launch = launch.clone().env("SNAKEPIT_WORKER_ID", &worker_id);
        let mut process = RawProcess::spawn(launch.clone(), codec)
            .await
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", launch.program.display()))?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (
            process.take_stdin(),
            process.take_stdout(),
            process.take_stderr(),
        ) else {
            anyhow::bail!("the raw worker has no pipes");
        };
        // Plain blocking pipes: the loop runs on a thread of its own.
        let stdin = std::fs::File::from(stdin.into_owned_fd()?);
        let stdout = std::fs::File::from(stdout.into_owned_fd()?);
        let mut stderr = std::fs::File::from(stderr.into_owned_fd()?);
        // Nobody shows a raw worker's stderr, but a full pipe would block it.
        std::thread::Builder::new()
            .name(format!("snakepit-{worker_id}-stderr"))
            .spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()))?;
        let mut w = RawWorker {
            _process: process,
            stdin,
            stdout,
            codec,
            max_frame_size,
            buf: BytesMut::with_capacity(256),
            frame: Vec::new(),
        };
        w.call(
            1,
            "ping",
            &json!({"initialization": true, "worker_id": worker_id}),
        )?;
        Ok(w)
    }

    /// One round trip: encode, write, read frames until the reply, decode it.
    fn call(&mut self, id: u64, command: &str, args: &Value) -> anyhow::Result<Value> {
        self.buf.clear();
        encode_frame(
            &self.codec,
            &Request::new(id, command, args),
            self.max_frame_size,
            &mut self.buf,
        )?;
        self.stdin.write_all(&self.buf)?;
        loop {
            let mut head = [0u8; HEADER_LEN];
            self.stdout.read_exact(&mut head)?;
            let len = u32::from_be_bytes(head) as usize;
            // The check of `FrameCodec`, from the header alone.
            if len > self.max_frame_size {
                return Err(ProtocolError::FrameTooLarge {
                    len: len as u64,
                    max: self.max_frame_size,
                }
                .into());
            }
            self.frame.resize(len, 0);
            self.stdout.read_exact(&mut self.frame)?;
            // The hello frame comes before the first reply.
            if let Inbound::Response { .. } = decode_inbound(&self.codec, &self.frame)? {
                return match decode_response::<_, Value>(&self.codec, &self.frame)? {
                    Ok(v) => Ok(v),
                    Err(e) => Err(anyhow::anyhow!("`{command}` failed in the raw worker: {e}")),
                };
            }
        }
    }
}

/// Progress on stderr: one bar per phase, drawn only on a terminal.
struct Progress {
    hidden: bool,
}

impl Progress {
    fn phase(&self, message: String, len: u64) -> ProgressBar {
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
struct Counter {
    done: Arc<AtomicU64>,
    bar: ProgressBar,
    stop: Option<mpsc::Sender<()>>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

impl Counter {
    /// Starts counting at zero; the bar's elapsed time and rate start now,
    /// after the warm-up.
    fn start(bar: &ProgressBar) -> Counter {
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
    fn handle(&self) -> Arc<AtomicU64> {
        self.done.clone()
    }

    /// Stops the ticker and clears the bar.
    fn finish(mut self) {
        self.stop.take();
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        self.bar.set_position(self.done.load(Ordering::Relaxed));
        self.bar.finish_and_clear();
    }
}

/// The raw loop: started through the spawn path on the runtime, then run
/// on plain threads with blocking pipes (the runtime waits meanwhile).
#[allow(clippy::too_many_arguments)]
async fn raw_run(
    launch: &Launch,
    codec: WireCodec,
    max_frame_size: usize,
    a: &BenchArgs,
    args: &Value,
    workers: usize,
    requests: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Run> {
    let mut raws = Vec::with_capacity(workers);
    for n in 0..workers {
        raws.push(RawWorker::start(launch, codec, max_frame_size, n).await?);
    }
    for w in &mut raws {
        for i in 0..200 {
            w.call(10 + i, &a.command, args)?; // warm-up
        }
    }
    let per = requests / workers;
    let counter = Counter::start(bar);
    let start = Instant::now();
    let lat: anyhow::Result<Vec<Vec<Duration>>> = std::thread::scope(|s| {
        let handles: Vec<_> = raws
            .iter_mut()
            .map(|w| {
                let command = a.command.as_str();
                let done = counter.handle();
                s.spawn(move || -> anyhow::Result<Vec<Duration>> {
                    let mut lat = Vec::with_capacity(per);
                    for i in 0..per {
                        let t = Instant::now();
                        w.call(1000 + i as u64, command, args)?;
                        lat.push(t.elapsed());
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(lat)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a raw loop thread panicked")))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    counter.finish();
    Ok(Run::new(lat?.into_iter().flatten().collect(), elapsed))
}

async fn pool_run(
    pool: &Pool,
    a: &BenchArgs,
    args: &Value,
    concurrency: usize,
    requests: usize,
    bar: &ProgressBar,
) -> Result<Run, snakepit_core::Error> {
    for _ in 0..200 {
        pool.call::<_, Value>(&a.command, args, CallOptions::new())
            .await?;
    }
    let per = requests / concurrency;
    let counter = Counter::start(bar);
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let pool = pool.clone();
            let command = a.command.clone();
            let args = args.clone();
            let done = counter.handle();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    let t = Instant::now();
                    pool.call::<_, Value>(&command, &args, CallOptions::new())
                        .await?;
                    lat.push(t.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, snakepit_core::Error>(lat)
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(requests);
    for t in tasks {
        lat.extend(t.await.map_err(|_| snakepit_core::Error::Cancelled)??);
    }
    let elapsed = start.elapsed();
    counter.finish();
    Ok(Run::new(lat, elapsed))
}

fn check(a: &BenchArgs, workers: usize) -> Result<(), Failure> {
    if workers == 0 {
        return Err(Failure::usage("--workers must be at least 1"));
    }
    if a.concurrency == 0 {
        return Err(Failure::usage("--concurrency must be at least 1"));
    }
    if a.requests < 4 * a.concurrency.max(workers) {
        return Err(Failure::usage(format!(
            "--requests must be at least 4 x max(--workers, --concurrency) = {}",
            4 * a.concurrency.max(workers)
        )));
    }
    if let Some(plot) = &a.plot {
        if plot.extension().and_then(|e| e.to_str()) != Some("svg") {
            return Err(Failure::usage(format!(
                "--plot draws SVG: give a file ending in .svg, not {}",
                plot.display()
            )));
        }
    }
    Ok(())
}

pub(crate) async fn run(a: BenchArgs, file: FileConfig, out: &Output) -> Result<(), Failure> {
    let workers = match a.workers {
        Some(n) => n,
        None if file.pool_size_set => file.pool.pool_size,
        None => 2,
    };
    check(&a, workers)?;
    let worker = Worker::choose(&a.worker, &file)?;
    let interpreter = worker.lang.language().real_interpreter();
    let adapter = worker.bridge(Some(&interpreter));
    let launch = adapter.launch();
    let codec = worker.codec;
    let args = if a.payload > 0 {
        json!({"data": "x".repeat(a.payload)})
    } else {
        json!({})
    };
    let config = |size: usize| -> PoolConfig {
        let mut c = file.pool.clone();
        c.pool_size = size;
        c
    };
    let progress = Progress {
        hidden: out.quiet || !out.stderr_is_terminal,
    };
    let failed = |what: &str, e: anyhow::Error| {
        Failure::from_bench(what, e).hint(format!(
            "check the worker by hand: snakepit exec{} {} '{{}}'",
            match &worker.script {
                Some(s) => format!(" --script {}", s.display()),
                None => format!(" --adapter {}", worker.lang.name()),
            },
            a.command
        ))
    };
    out.verbose(format!(
        "{} ({}), {}, `{}`, payload {} B",
        worker.describe(),
        interpreter.display(),
        codec,
        a.command,
        a.payload
    ));

    // One call through a pool first: a worker that cannot start or a
    // command that fails is reported with the pool's typed error.
    let probe = Pool::builder(adapter.clone())
        .config(config(1))
        .start()
        .await?;
    let first = probe
        .call::<_, Value>(&a.command, &args, CallOptions::new())
        .await;
    let _ = probe.shutdown().await;
    first?;

    let max_frame = file.pool.max_frame_size;
    let bar = progress.phase("raw loop, 1 worker".into(), (a.requests / 2) as u64);
    let raw1 = raw_run(
        &launch,
        codec,
        max_frame,
        &a,
        &args,
        1,
        a.requests / 2,
        &bar,
    )
    .await
    .map_err(|e| failed("the raw loop", e))?;
    let bar = progress.phase(format!("raw loop, {workers} workers"), a.requests as u64);
    let raw_n = raw_run(
        &launch, codec, max_frame, &a, &args, workers, a.requests, &bar,
    )
    .await
    .map_err(|e| failed("the raw loop", e))?;

    let pool = Pool::builder(adapter.clone())
        .config(config(workers))
        .start()
        .await?;
    let bar = progress.phase(
        format!("pool, {workers} workers, {} callers", a.concurrency),
        a.requests as u64,
    );
    let pooled = pool_run(&pool, &a, &args, a.concurrency, a.requests, &bar).await?;
    pool.shutdown().await?;

    let seq_pool = Pool::builder(adapter.clone())
        .config(config(1))
        .start()
        .await?;
    let bar = progress.phase("pool, 1 worker, 1 caller".into(), (a.requests / 4) as u64);
    let seq = pool_run(&seq_pool, &a, &args, 1, a.requests / 4, &bar).await?;
    seq_pool.shutdown().await?;

    let slow = Bridge::with_init_delay(worker.lang.language(), Duration::from_millis(a.init_ms))
        .map_err(|e| Failure::general(format!("cannot write the start-up worker: {e}")))?
        .interpreter(&interpreter)
        .codec(codec);
    let mut slow_config = config(workers);
    let enough = Duration::from_millis(a.init_ms * 2 + 10_000);
    slow_config.worker_init_timeout = slow_config.worker_init_timeout.max(enough);
    slow_config.startup_timeout = slow_config.startup_timeout.max(enough);
    let bar = progress.phase(
        format!("start-up, {workers} x {} ms init", a.init_ms),
        workers as u64 * 2 + 1,
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    let t = Instant::now();
    let p = Pool::builder(slow.clone())
        .config(slow_config.clone())
        .start()
        .await?;
    let concurrent_ms = t.elapsed().as_secs_f64() * 1e3;
    p.shutdown().await?;
    bar.inc(workers as u64);
    let t = Instant::now();
    for _ in 0..workers {
        let mut one = slow_config.clone();
        one.pool_size = 1;
        let p = Pool::builder(slow.clone()).config(one).start().await?;
        p.shutdown().await?;
        bar.inc(1);
    }
    let sequential_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let p = Pool::builder(adapter.clone())
        .config(config(workers))
        .start()
        .await?;
    let ready_ms = t.elapsed().as_secs_f64() * 1e3;
    p.shutdown().await?;
    bar.finish_and_clear();

    let report = json!({
        "workers": workers,
        "adapter": worker.lang.name(),
        "script": worker.script.as_ref().map(|s| s.display().to_string()),
        "interpreter": interpreter.display().to_string(),
        "host_runtime": "tokio current_thread",
        "codec": codec.name(),
        "command": a.command,
        "payload_bytes": a.payload,
        "requests": a.requests,
        "concurrency": a.concurrency,
        "raw_1": raw1.json(a.payload),
        "raw": raw_n.json(a.payload),
        "pool": pooled.json(a.payload),
        "pool_over_raw": (pooled.rps / raw_n.rps * 1000.0).round() / 1000.0,
        "sequential": {
            "raw_1": raw1.json(a.payload),
            "pool_1": seq.json(a.payload),
            "added_p50_us": round1(seq.p50_us - raw1.p50_us),
            "added_p99_us": round1(seq.p99_us - raw1.p99_us),
        },
        "startup": {
            "workers": workers,
            "init_ms": a.init_ms,
            "concurrent_ms": concurrent_ms.round(),
            "sequential_ms": sequential_ms.round(),
            "ratio": (sequential_ms / concurrent_ms * 100.0).round() / 100.0,
            "ready_ms": ready_ms.round(),
        },
    });

    if let Some(path) = &a.plot {
        let series = [
            (format!("raw loop, {workers} workers"), &raw_n.samples),
            (
                format!("pool, {workers} workers, {} callers", a.concurrency),
                &pooled.samples,
            ),
            ("raw loop, 1 worker".to_owned(), &raw1.samples),
            ("pool, 1 worker, 1 caller".to_owned(), &seq.samples),
        ];
        let title = format!(
            "{}, {}, `{}`: latency distribution",
            worker.describe(),
            codec,
            a.command
        );
        crate::plot::latency_cdf(path, &title, &series)
            .map_err(|e| Failure::general(format!("cannot draw {}: {e}", path.display())))?;
        out.note(format!("latency distributions drawn to {}", path.display()));
    }

    if a.json {
        outln!("{report}")
    } else {
        print_table(&report, &raw1, &raw_n, &pooled, &seq, out)
    }
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

fn print_table(
    report: &Value,
    raw1: &Run,
    raw_n: &Run,
    pooled: &Run,
    seq: &Run,
    out: &Output,
) -> Result<(), Failure> {
    let workers = &report["workers"];
    let s = &report["startup"];
    let mut rows: Vec<[String; 4]> = vec![
        [
            String::new(),
            "raw loop".into(),
            "pool".into(),
            "pool vs raw".into(),
        ],
        [
            format!("throughput, {workers} workers"),
            format!("{} req/s", thousands(raw_n.rps)),
            format!("{} req/s", thousands(pooled.rps)),
            format!("{:.2}", pooled.rps / raw_n.rps),
        ],
        [
            format!("latency p50 / p99, {workers} workers"),
            format!("{:.1} / {:.1} us", raw_n.p50_us, raw_n.p99_us),
            format!("{:.1} / {:.1} us", pooled.p50_us, pooled.p99_us),
            format!("{} callers", report["concurrency"]),
        ],
        [
            "sequential p50 / p99, 1 worker".into(),
            format!("{:.1} / {:.1} us", raw1.p50_us, raw1.p99_us),
            format!("{:.1} / {:.1} us", seq.p50_us, seq.p99_us),
            format!(
                "{:+.1} / {:+.1} us",
                seq.p50_us - raw1.p50_us,
                seq.p99_us - raw1.p99_us
            ),
        ],
    ];
    if let Some(mb) = report["raw"]["mb_s"].as_f64() {
        rows.push([
            format!("payload {} B, {workers} workers", report["payload_bytes"]),
            format!("{mb:.1} MB/s"),
            format!("{:.1} MB/s", report["pool"]["mb_s"].as_f64().unwrap_or(0.0)),
            String::new(),
        ]);
    }
    rows.push([
        format!("start-up, {workers} x {} ms init", s["init_ms"]),
        format!(
            "{} ms one by one",
            thousands(s["sequential_ms"].as_f64().unwrap_or(0.0))
        ),
        format!(
            "{} ms together",
            thousands(s["concurrent_ms"].as_f64().unwrap_or(0.0))
        ),
        format!("{:.2}x", s["ratio"].as_f64().unwrap_or(0.0)),
    ]);
    rows.push([
        format!("{workers} workers ready, no init delay"),
        String::new(),
        format!("{} ms", thousands(s["ready_ms"].as_f64().unwrap_or(0.0))),
        String::new(),
    ]);
    let widths: Vec<usize> = (0..4)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    outln!(
        "{}",
        Output::paint(
            out.color_stdout,
            "1",
            &format!(
                "snakepit bench: {} {}, {}, `{}`, {} requests",
                report["adapter"].as_str().unwrap_or(""),
                report["script"].as_str().unwrap_or("generic worker"),
                report["codec"].as_str().unwrap_or(""),
                report["command"].as_str().unwrap_or(""),
                report["requests"]
            )
        )
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
            outln!("{}", Output::paint(out.color_stdout, "1", line.trim_end()))?;
        } else {
            outln!("{}", line.trim_end())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn quantiles_come_from_the_sorted_samples() {
        let lat: Vec<Duration> = (1..=1000).rev().map(Duration::from_micros).collect();
        let r = Run::new(lat, Duration::from_secs(1));
        assert_eq!(r.rps, 1000.0);
        assert_eq!(r.p50_us.round(), 501.0);
        assert_eq!(r.p99_us.round(), 991.0);
        assert_eq!(r.p999_us.round(), 1000.0);
        assert!(r.samples.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(47219.4), "47,219");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }
}
