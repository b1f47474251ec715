//! What telemetry costs per call: sequential `ping` calls to one Python
//! worker, with no subscriber at all, then with the subscriber, the OTLP
//! exporter, the trace context and the metrics installed.
//!
//! ```text
//! cargo run --release -p snakepit-telemetry --example overhead -- [--calls N] [--rounds R] [--live URL]
//! ```
//!
//! Each mode runs in a fresh process of this program (a global subscriber
//! cannot be taken back), alternating `off` and `otel` for R rounds; the
//! median of each mode's per-call means is reported, and their difference.
//! `otel` exports to a dead endpoint (nothing listens: every export fails,
//! which is the caller's cost without the receiver's); `spans` has the
//! subscriber and exporter but no pool metrics; `host` is `otel` without
//! handing the trace context to the worker, so the worker's own
//! tracing (the Python bridge opens a span when `opentelemetry-api` is
//! installed) is the difference; `--live URL` adds a mode exporting over
//! OTLP/HTTP to a receiver at URL.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;
use snakepit_adapters::GenericPython;
use snakepit_core::Pool;
use tracing::Instrument;

struct Args {
    calls: usize,
    rounds: usize,
    live: Option<String>,
    mode: Option<String>,
    endpoint: Option<String>,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        calls: 20_000,
        rounds: 3,
        live: None,
        mode: None,
        endpoint: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--calls" => a.calls = val()?.parse()?,
            "--rounds" => a.rounds = val()?.parse()?,
            "--live" => a.live = Some(val()?),
            "--mode" => a.mode = Some(val()?),
            "--endpoint" => a.endpoint = Some(val()?),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let args = parse()?;
    match args.mode.as_deref() {
        Some(mode) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (wall, cpu) = rt.block_on(run_mode(mode, args.endpoint.as_deref(), args.calls))?;
            println!("{} {}", wall.as_nanos(), cpu.as_nanos());
            Ok(())
        }
        None => compare(&args),
    }
}

/// Runs `calls` sequential pings in this process, in one mode; the mean
/// time per call, and the host's CPU time per call.
async fn run_mode(
    mode: &str,
    endpoint: Option<&str>,
    calls: usize,
) -> Result<(Duration, Duration)> {
    let guard = match mode {
        "off" => None,
        "otel" | "host" | "spans" => Some(
            snakepit_telemetry::Telemetry::new()
                .endpoint(endpoint.context("--endpoint")?)
                .protocol(snakepit_telemetry::Protocol::HttpProtobuf)
                .stderr_logs(None)
                .service_name("snakepit-overhead")
                .init()?,
        ),
        other => bail!("unknown mode {other}"),
    };
    let builder = Pool::builder(GenericPython).size(1);
    let builder = match mode {
        "otel" => snakepit_telemetry::instrument(builder),
        "host" => {
            // Spans and metrics on the host, but no trace context for the
            // worker: what the worker's own tracing costs is the difference.
            let metrics = snakepit_telemetry::PoolMetrics::global();
            builder.on_event(move |e| metrics.record(e))
        }
        _ => builder,
    };
    let pool = builder.start().await?;
    let gauges = guard.is_some().then(|| snakepit_telemetry::observe(&pool));
    let one = || async {
        // As a service would: each call inside a span of its own request.
        let span = tracing::info_span!("request");
        pool.execute("ping", json!({})).instrument(span).await
    };
    for _ in 0..calls / 10 {
        one().await?;
    }
    let (started, cpu) = (Instant::now(), cpu_time());
    for _ in 0..calls {
        one().await?;
    }
    let per_call = started.elapsed() / calls as u32;
    let cpu_per_call = cpu_time().saturating_sub(cpu) / calls as u32;
    drop(gauges);
    pool.shutdown().await?;
    if let Some(g) = guard {
        // A dead endpoint makes the final export fail: that is expected.
        let _ = g.shutdown();
    }
    Ok((per_call, cpu_per_call))
}

/// This process's CPU time, user and system (Linux: `/proc/self/stat`, in
/// clock ticks of 10 ms): the host's own work, whatever the machine's load.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11) // state is field 3; utime and stime are fields 14 and 15
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

fn compare(args: &Args) -> Result<()> {
    let dead = format!(
        "http://127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    ); // the listener is closed at once: nothing answers there
    let mut modes: Vec<(&str, &str, Option<String>)> = vec![
        ("off", "off", None),
        ("spans only, dead endpoint", "spans", Some(dead.clone())),
        ("host only, dead endpoint", "host", Some(dead.clone())),
        ("otel, dead endpoint", "otel", Some(dead)),
    ];
    if let Some(url) = &args.live {
        modes.push(("otel, live endpoint", "otel", Some(url.clone())));
    }
    let mut wall: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    for _ in 0..args.rounds {
        for (i, (_, mode, endpoint)) in modes.iter().enumerate() {
            let (w, c) = child(mode, endpoint.as_deref(), args.calls)?;
            wall[i].push(w);
            cpu[i].push(c);
        }
    }
    println!(
        "{} sequential ping calls per run, 1 Python worker, {} rounds, median of per-call means:",
        args.calls, args.rounds
    );
    let wall: Vec<f64> = wall.iter_mut().map(|r| median(r)).collect();
    let cpu: Vec<f64> = cpu.iter_mut().map(|r| median(r)).collect();
    println!("  {:<26} {:>14} {:>14}", "", "latency", "host CPU");
    for (i, (label, ..)) in modes.iter().enumerate() {
        println!(
            "  {label:<26} {:>8.2} us/call {:>8.2} us/call",
            wall[i], cpu[i]
        );
    }
    for (i, (label, ..)) in modes.iter().enumerate().skip(1) {
        println!(
            "  cost of {label}: {:+.2} us/call latency ({:+.0}%), {:+.2} us/call host CPU",
            wall[i] - wall[0],
            (wall[i] / wall[0] - 1.0) * 100.0,
            cpu[i] - cpu[0],
        );
    }
    Ok(())
}

/// Runs one mode in a fresh process of this program; its microseconds per
/// call, of latency and of host CPU.
fn child(mode: &str, endpoint: Option<&str>, calls: usize) -> Result<(f64, f64)> {
    let exe = std::env::current_exe()?;
    #[allow(clippy::disallowed_methods)] // runs this benchmark again, not a worker
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--mode", mode, "--calls", &calls.to_string()]);
    if let Some(e) = endpoint {
        cmd.args(["--endpoint", e]);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!(
            "mode {mode} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let mut nanos = text.split_whitespace().map(str::parse::<f64>);
    match (nanos.next(), nanos.next()) {
        (Some(Ok(wall)), Some(Ok(cpu))) => Ok((wall / 1000.0, cpu / 1000.0)),
        _ => bail!("mode {mode} printed {text:?}"),
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
