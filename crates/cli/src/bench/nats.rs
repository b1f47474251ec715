//! `snakepit bench --nats URL`: a cluster against the local pool, in one
//! run, with the same total workers.
//!
//! The bench starts its hosts as `snakepit serve` processes of this same
//! binary (each through the core's spawn path: its own process group, the
//! parent-death signal and the watchdog, so none outlives the bench), with
//! the worker flags, codec and pipelining of the local pool, and the
//! workers split between them. A call then goes from this process through
//! the NATS server to another process and its worker and back, as it would
//! between machines; only the network is missing. The local pool runs in
//! this process. Rounds alternate the two, so that load from other programs
//! on the machine falls on both; each figure is the median of the rounds,
//! with their range.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum as _};
use serde::Serialize;
use snakepit_core::{Launch, Pool, RawProcess};
use snakepit_protocol::Codec as _;
use tokio::io::AsyncReadExt;

use super::measure::Run;
use super::pool::{run as measure, WARM_UP};
use super::Bench;
use crate::ui::{code, Failure, Output};

/// The flags of the cluster comparison.
#[derive(Debug, Args)]
pub(crate) struct ClusterBenchArgs {
    /// Measure a cluster over this NATS server against the local pool, with
    /// the same total workers (instead of the pool against the raw loop).
    #[arg(long = "nats", value_name = "URL")]
    pub(crate) nats: Option<String>,
    /// The cluster the bench's hosts serve, with --nats; give one that no
    /// other host serves [default: bench-<pid>].
    #[arg(long = "cluster", value_name = "NAME", requires = "nats")]
    cluster: Option<String>,
    /// Hosts (`snakepit serve` processes) the workers are split between,
    /// with --nats.
    #[arg(
        long = "hosts",
        value_name = "N",
        default_value_t = 2,
        requires = "nats"
    )]
    hosts: usize,
    /// The hosts' --prefetch (calls accepted per worker beyond those it
    /// runs), with --nats [default: as snakepit serve].
    #[arg(long = "prefetch", value_name = "N", requires = "nats")]
    prefetch: Option<usize>,
}

/// What the cluster comparison reports (`--json`: this object).
#[derive(Debug, Serialize)]
struct ClusterReport {
    nats: String,
    cluster: String,
    workers: usize,
    /// Workers of each host.
    hosts: Vec<usize>,
    adapter: &'static str,
    codec: &'static str,
    command: String,
    concurrency: usize,
    pipeline_depth: u32,
    rounds: usize,
    /// One caller: the cluster's p50 minus the local pool's, in µs.
    added_p50_us: Spread,
    /// One caller: the p50 of a bare NATS request and reply (a responder on
    /// a connection and thread of its own in this process), in µs: what
    /// the network path costs before any of snakepit's work.
    nats_round_trip_p50_us: Spread,
    local_p50_us: Spread,
    cluster_p50_us: Spread,
    /// `--concurrency` callers: calls per second.
    local_rps: Spread,
    cluster_rps: Spread,
    /// Cluster throughput over the local pool's, round by round.
    throughput_ratio: Spread,
    /// CPU time per call under `--concurrency` callers, all processes of
    /// the run (this one, the local pool's workers, the hosts and their
    /// workers; the NATS server not counted), in µs.
    local_cpu_us_per_call: Spread,
    cluster_cpu_us_per_call: Spread,
    /// The machine's load average (1 min) before and after.
    load_average: (Option<f64>, Option<f64>),
}

/// The median of the rounds and their range.
#[derive(Debug, Serialize)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(mut v: Vec<f64>, digits: i32) -> Spread {
        v.sort_unstable_by(f64::total_cmp);
        let round = |x: f64| {
            let f = 10f64.powi(digits);
            (x * f).round() / f
        };
        // Of an even number, the mean of the two middle ones: no figure
        // beside it needs it to be one round's.
        let median = match v.len() {
            0 => 0.0,
            n if n % 2 == 0 => (v[n / 2 - 1] + v[n / 2]) / 2.0,
            n => v[n / 2],
        };
        Spread {
            median: round(median),
            min: round(v.first().copied().unwrap_or(0.0)),
            max: round(v.last().copied().unwrap_or(0.0)),
        }
    }

    fn show(&self, unit: &str) -> String {
        format!("{}{unit} ({} to {})", self.median, self.min, self.max)
    }
}

/// A `snakepit serve` process of the bench, and what it printed.
struct Host {
    id: String,
    process: RawProcess,
    stderr: Arc<Mutex<String>>,
}

impl Host {
    async fn start(
        b: &Bench,
        url: &str,
        cluster: &str,
        id: String,
        workers: usize,
    ) -> Result<Host, Failure> {
        let exe = std::env::current_exe().map_err(|e| {
            Failure::general(format!("cannot find this program to start hosts: {e}"))
        })?;
        let mut launch = Launch::new(exe);
        for arg in [
            "serve",
            "--nats",
            url,
            "--cluster",
            cluster,
            "--host-id",
            &id,
        ] {
            launch = launch.arg(arg);
        }
        launch = launch
            .arg("--pool-size")
            .arg(workers.to_string())
            .arg("--pipeline-depth")
            .arg(b.pool.pipeline_depth.to_string())
            .arg("--codec")
            .arg(b.worker.codec.name());
        if let Some(n) = b.a.cluster.prefetch {
            launch = launch.arg("--prefetch").arg(n.to_string());
        }
        if let Some(script) = &b.worker.script {
            launch = launch.arg("--script").arg(script);
        }
        if b.worker.preload {
            // The same workers as the local pool: forked from a template.
            launch = launch.arg("--preload");
        }
        if let Some(lang) = b.worker.lang.to_possible_value() {
            launch = launch.arg("--adapter").arg(lang.get_name());
        }
        let mut process = RawProcess::spawn(launch, b.worker.codec)
            .await
            .map_err(|e| Failure::general(format!("cannot start a host (snakepit serve): {e}")))?;
        let stderr: Arc<Mutex<String>> = Arc::default();
        if let Some(mut pipe) = process.take_stderr() {
            let tail = stderr.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
                    t.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if t.len() > 16_384 {
                        let cut = t.len() - 8_192;
                        let cut = (cut..t.len()).find(|&i| t.is_char_boundary(i)).unwrap_or(0);
                        t.drain(..cut);
                    }
                }
            });
        }
        if let Some(mut pipe) = process.take_stdout() {
            tokio::spawn(async move {
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(&mut pipe, &mut sink).await;
            });
        }
        Ok(Host {
            id,
            process,
            stderr,
        })
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .trim()
            .to_owned()
    }

    /// The host's failure: it ended, or it never joined.
    fn failed(&mut self, what: &str) -> Failure {
        let status = match self.process.try_wait() {
            Ok(Some(s)) => format!(" ({s})"),
            _ => String::new(),
        };
        Failure::new(
            code::FAILED,
            format!("host {} {what}{status}: {}", self.id, self.stderr()),
        )
        .hint("check the host by hand: snakepit serve --nats URL --cluster NAME")
    }

    /// SIGTERM, as a service manager stops a host: it leaves the cluster,
    /// its pool shuts down; SIGKILL (of its group) if it has not ended
    /// within 10 s.
    async fn stop(mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.process.pid() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.process.wait()).await;
    }
}

/// The workers of each of `hosts` hosts, `total` in all.
fn split(total: usize, hosts: usize) -> Vec<usize> {
    let hosts = hosts.clamp(1, total.max(1));
    (0..hosts)
        .map(|i| total / hosts + usize::from(i < total % hosts))
        .collect()
}

/// The 1-minute load average, from /proc/loadavg.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs the comparison: hosts up, rounds, report.
pub(crate) async fn run(b: &Bench, url: &str, out: &Output) -> Result<(), Failure> {
    let c = &b.a.cluster;
    if c.hosts == 0 {
        return Err(Failure::usage("--hosts must be at least 1"));
    }
    let nats = crate::cluster::connect(url).await?;
    let cluster = c
        .cluster
        .clone()
        .unwrap_or_else(|| format!("bench-{}", std::process::id()));
    let sizes = split(b.workers, c.hosts);
    let load_before = load_average();
    let client = snakepit_cluster::Client::connect(&nats, &cluster).await?;
    let mut hosts = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        hosts.push(Host::start(b, url, &cluster, format!("bench-{i}"), n).await?);
    }
    let _echo = start_echo(url.to_owned(), &cluster)?;
    let outcome = compare(b, (&nats, &cluster), &client, &mut hosts, &sizes, out).await;
    for host in hosts {
        host.stop().await;
    }
    let (rounds, local_pool) = outcome?;
    let _ = local_pool.shutdown().await;
    let report = ClusterReport {
        nats: url.to_owned(),
        cluster,
        workers: b.workers,
        hosts: sizes,
        adapter: b.worker.lang.name(),
        codec: b.worker.codec.name(),
        command: b.a.command.clone(),
        concurrency: b.a.concurrency,
        pipeline_depth: b.pool.pipeline_depth,
        rounds: rounds.len(),
        added_p50_us: Spread::of(
            rounds
                .iter()
                .map(|r| r.cluster_1.p50_us - r.local_1.p50_us)
                .collect(),
            0,
        ),
        nats_round_trip_p50_us: Spread::of(rounds.iter().map(|r| r.nats_p50_us).collect(), 0),
        local_p50_us: Spread::of(rounds.iter().map(|r| r.local_1.p50_us).collect(), 0),
        cluster_p50_us: Spread::of(rounds.iter().map(|r| r.cluster_1.p50_us).collect(), 0),
        local_rps: Spread::of(rounds.iter().map(|r| r.local.rps).collect(), 0),
        cluster_rps: Spread::of(rounds.iter().map(|r| r.cluster.rps).collect(), 0),
        throughput_ratio: Spread::of(
            rounds.iter().map(|r| r.cluster.rps / r.local.rps).collect(),
            2,
        ),
        local_cpu_us_per_call: Spread::of(rounds.iter().map(|r| r.local_cpu_us).collect(), 1),
        cluster_cpu_us_per_call: Spread::of(rounds.iter().map(|r| r.cluster_cpu_us).collect(), 1),
        load_average: (load_before, load_average()),
    };
    if b.a.json {
        let text = serde_json::to_string(&report)
            .map_err(|e| Failure::general(format!("cannot print the report: {e}")))?;
        return crate::ui::stdout_line(format_args!("{text}"));
    }
    let hosts_text = report
        .hosts
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(" + ");
    for line in [
        format!(
            "cluster `{}` at {}: {} hosts ({hosts_text} workers) against a local pool of {} workers; {}, {}, `{}`",
            report.cluster,
            report.nats,
            report.hosts.len(),
            report.workers,
            report.adapter,
            report.codec,
            report.command
        ),
        format!(
            "one caller, p50:            local {}, cluster {}",
            report.local_p50_us.show(" us"),
            report.cluster_p50_us.show(" us")
        ),
        format!(
            "added p50 latency:          {}; a bare NATS request/reply: {}",
            report.added_p50_us.show(" us"),
            report.nats_round_trip_p50_us.show(" us")
        ),
        format!(
            "{} callers, throughput:     local {}, cluster {}",
            report.concurrency,
            report.local_rps.show("/s"),
            report.cluster_rps.show("/s")
        ),
        format!(
            "cluster/local throughput:   {}",
            report.throughput_ratio.show("")
        ),
        format!(
            "CPU per call:               local {}, cluster {} (all processes but the NATS server)",
            report.local_cpu_us_per_call.show(" us"),
            report.cluster_cpu_us_per_call.show(" us")
        ),
        format!(
            "medians of {} rounds (range in brackets); load average {} before, {} after",
            report.rounds,
            report.load_average.0.map_or("?".into(), |l| l.to_string()),
            report.load_average.1.map_or("?".into(), |l| l.to_string())
        ),
    ] {
        crate::ui::stdout_line(format_args!("{line}"))?;
    }
    Ok(())
}

/// One round: each side with one caller, then with `--concurrency`.
struct Round {
    local_1: Run,
    cluster_1: Run,
    local: Run,
    cluster: Run,
    local_cpu_us: f64,
    cluster_cpu_us: f64,
    nats_p50_us: f64,
}

/// The subject of the bare round trip, under the bench's cluster.
fn echo_subject(cluster: &str) -> String {
    format!("snakepit.{cluster}.bench.echo")
}

/// Answers each request on the echo subject with its payload, on a
/// connection and a one-thread runtime of its own, as a host would.
fn start_echo(url: String, cluster: &str) -> Result<std::thread::JoinHandle<()>, Failure> {
    let subject = echo_subject(cluster);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("bench-nats-echo".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(nats) = crate::cluster::connect(&url).await else {
                    return;
                };
                let Ok(mut sub) = nats.subscribe(subject).await else {
                    return;
                };
                let _ = nats.flush().await;
                let _ = ready_tx.send(nats.clone());
                use futures_util::StreamExt as _;
                while let Some(m) = sub.next().await {
                    match m.reply {
                        Some(r) => {
                            let _ = nats.publish(r, m.payload).await;
                        }
                        None => break,
                    }
                }
            });
        })
        .map_err(|e| Failure::general(format!("cannot start a thread: {e}")))?;
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|_| Failure::general("the NATS echo for the bare round trip did not start"))?;
    Ok(thread)
}

/// The p50 of `n` bare requests to the echo, in µs.
async fn nats_p50(nats: &async_nats::Client, cluster: &str, n: usize) -> Result<f64, Failure> {
    let subject = echo_subject(cluster);
    let mut t = Vec::with_capacity(n);
    for i in 0..WARM_UP + n {
        let s = Instant::now();
        nats.request(subject.clone(), bytes::Bytes::from_static(b"{}"))
            .await
            .map_err(|e| Failure::general(format!("a bare NATS request failed: {e}")))?;
        if i >= WARM_UP {
            t.push(s.elapsed().as_secs_f64() * 1e6);
        }
    }
    t.sort_unstable_by(f64::total_cmp);
    Ok(t.get(t.len() / 2).copied().unwrap_or(0.0))
}

/// The CPU time (user and system) used so far by this process and every
/// process below it (the local pool's workers, the hosts and theirs), in
/// µs, from /proc (clock ticks of 10 ms: measure thousands of calls).
fn tree_cpu_us() -> f64 {
    let mut procs: Vec<(u32, u32, u64)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // The fields after the command name, which may hold spaces.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            procs.push((pid, num(1) as u32, num(11) + num(12)));
        }
    }
    let mut tree = vec![std::process::id()];
    let mut ticks = 0;
    while let Some(p) = tree.pop() {
        for &(pid, ppid, t) in &procs {
            if pid == p {
                ticks += t;
            }
            if ppid == p {
                tree.push(pid);
            }
        }
    }
    ticks as f64 * 10_000.0
}

/// Waits for every host, then runs the rounds against a local pool of all
/// the workers.
async fn compare(
    b: &Bench,
    (nats, cluster): (&async_nats::Client, &str),
    client: &snakepit_cluster::Client,
    hosts: &mut [Host],
    sizes: &[usize],
    out: &Output,
) -> Result<(Vec<Round>, Pool), Failure> {
    let bar = b.progress.phase(
        format!("starting {} hosts (snakepit serve)", hosts.len()),
        hosts.len() as u64,
    );
    let until = Instant::now() + b.pool.startup_timeout.max(Duration::from_secs(30));
    loop {
        let heard = client.hosts();
        bar.set_position(heard.len() as u64);
        let ready = hosts
            .iter()
            .all(|h| heard.iter().any(|i| i.id == h.id && i.capacity > 0));
        if ready {
            break;
        }
        for h in hosts.iter_mut() {
            if matches!(h.process.try_wait(), Ok(Some(_))) {
                return Err(h.failed("ended before it served"));
            }
        }
        if Instant::now() > until {
            let h = hosts
                .iter_mut()
                .find(|h| !heard.iter().any(|i| i.id == h.id))
                .unwrap_or_else(|| unreachable!("a host is missing"));
            return Err(h.failed("did not join the cluster in time"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bar.finish_and_clear();
    out.verbose(format!("hosts ready: {sizes:?} workers"));
    let local = crate::traced(
        Pool::builder(b.adapter.clone()).config(b.config(b.workers, b.pool.pipeline_depth)),
    )
    .start()
    .await?;
    let (requests, callers) = (b.a.requests, b.a.concurrency);
    let rounds = b.rounds(3);
    let mut done = Vec::new();
    for round in 1..=rounds {
        let label = |what: &str, n: usize| {
            format!(
                "round {round}/{rounds}: {what}, {n} caller{}",
                if n == 1 { "" } else { "s" }
            )
        };
        let seq = (requests / 4).max(1);
        let phase = |what: &str, n: usize, len: usize| b.progress.phase(label(what, n), len as u64);
        let local_1 = measure(&local, &b.load, 1, seq, &phase("local pool", 1, seq)).await?;
        let cluster_1 = measure(client, &b.load, 1, seq, &phase("cluster", 1, seq)).await?;
        let nats_p50_us = nats_p50(nats, cluster, seq).await?;
        let cpu = tree_cpu_us();
        let local_n = measure(
            &local,
            &b.load,
            callers,
            requests,
            &phase("local pool", callers, requests),
        )
        .await?;
        let local_cpu_us = (tree_cpu_us() - cpu) / local_n.samples.len().max(1) as f64;
        let cpu = tree_cpu_us();
        let cluster_n = measure(
            client,
            &b.load,
            callers,
            requests,
            &phase("cluster", callers, requests),
        )
        .await?;
        let cluster_cpu_us = (tree_cpu_us() - cpu) / cluster_n.samples.len().max(1) as f64;
        out.verbose(format!(
            "round {round}: p50 local {:.0} us, cluster {:.0} us; {callers} callers: local {:.0}/s, cluster {:.0}/s",
            local_1.p50_us, cluster_1.p50_us, local_n.rps, cluster_n.rps
        ));
        done.push(Round {
            local_1,
            cluster_1,
            local: local_n,
            cluster: cluster_n,
            local_cpu_us,
            cluster_cpu_us,
            nats_p50_us,
        });
    }
    Ok((done, local))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_even_number_of_rounds_is_the_mean_of_the_middle_two() {
        let s = Spread::of(vec![4.0, 1.0, 3.0, 2.0], 1);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert_eq!(Spread::of(vec![3.0, 1.0, 2.0], 0).median, 2.0);
        assert_eq!(Spread::of(vec![10.0, 20.0], 0).median, 15.0);
        assert_eq!(Spread::of(vec![7.0], 0).median, 7.0);
        assert_eq!(Spread::of(Vec::new(), 0).median, 0.0);
    }
}
