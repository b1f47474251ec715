//! Pools on many hosts (snakepit-cluster over NATS): `snakepit serve` makes
//! this machine a host of a cluster; `snakepit cluster status` lists the
//! hosts, their pools, workers free and busy, and calls served; `snakepit
//! exec --cluster` sends its call to a cluster (in `exec.rs`).

use std::time::Duration;

use clap::{Args, Subcommand};

use snakepit_cluster::ServeOptions;
use snakepit_core::Pool;

use crate::args::WorkerArgs;
use crate::config::FileConfig;
use crate::stop::{Stop, StopSignals};
use crate::ui::{self, code, Failure, Output};
use crate::workers::Worker;

pub(crate) const EXAMPLES: &str = "\
Examples:
  snakepit cluster status --nats nats://127.0.0.1:4222 --cluster ml
  NATS_URL=nats://nats-1:4222 snakepit cluster status --cluster ml --json

Hosts join a cluster with snakepit_cluster::serve (see docs/cluster.md).";

const STATUS_EXAMPLES: &str = "\
Examples:
  snakepit cluster status --nats nats://127.0.0.1:4222 --cluster ml
  snakepit cluster status --cluster ml --wait-ms 2000 --json   # NATS_URL, or nats://127.0.0.1:4222

Each host answers within --wait-ms; a host that does not is left out.";

#[derive(Debug, Args)]
pub(crate) struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// List each host of the cluster: its pool, workers free and busy, calls served.
    #[command(after_help = STATUS_EXAMPLES)]
    Status(StatusArgs),
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// The cluster's name.
    #[arg(long, value_name = "NAME")]
    cluster: String,
    /// How long to wait for the hosts to answer, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 500)]
    wait_ms: u64,
    /// One JSON array on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(args: ClusterArgs, out: &Output) -> Result<(), Failure> {
    match args.command {
        ClusterCommand::Status(a) => status(a, out).await,
    }
}

/// Where NATS is: `--nats`, else `NATS_URL`, else the local default.
#[derive(Debug, Args)]
pub(crate) struct NatsArgs {
    /// The NATS server(s), comma-separated [default: $NATS_URL when set and
    /// not empty, else nats://127.0.0.1:4222].
    #[arg(long = "nats", value_name = "URL")]
    flag: Option<String>,
}

impl NatsArgs {
    /// The local NATS server's address.
    pub(crate) const DEFAULT: &'static str = "nats://127.0.0.1:4222";

    /// `--nats`, else `NATS_URL` unless it is empty, else [`Self::DEFAULT`].
    /// A `NATS_URL` that is not UTF-8 is a usage error, not a reason to
    /// use the default server instead of the one it meant.
    pub(crate) fn url(&self) -> Result<String, Failure> {
        if let Some(flag) = &self.flag {
            return Ok(flag.clone());
        }
        match std::env::var("NATS_URL") {
            Ok(v) if !v.is_empty() => Ok(v),
            Err(std::env::VarError::NotUnicode(v)) => Err(Failure::usage(format!(
                "NATS_URL is not UTF-8: {}",
                v.to_string_lossy()
            ))),
            _ => Ok(Self::DEFAULT.to_owned()),
        }
    }
}

/// A NATS connection, or a failure that says where NATS was looked for.
pub(crate) async fn connect(url: &str) -> Result<async_nats::Client, Failure> {
    let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(3));
    // `nats://a:4222,nats://b:4222`: async-nats reads one string as one URL.
    let servers: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    match tokio::time::timeout(Duration::from_secs(3), options.connect(servers)).await {
        Ok(Ok(n)) => Ok(n),
        Ok(Err(e)) => Err(unreachable(url, &e.to_string())),
        Err(_) => Err(unreachable(url, "no answer within 3 s")),
    }
}

async fn status(a: StatusArgs, out: &Output) -> Result<(), Failure> {
    // A usage error whether NATS is up or not.
    snakepit_cluster::check_cluster_name(&a.cluster)?;
    let url = a.nats.url()?;
    let nats = connect(&url).await?;
    let client = snakepit_cluster::Client::connect(&nats, &a.cluster)
        .await
        .map_err(|e| Failure::usage(e.to_string()))?;
    let hosts = client
        .status(Duration::from_millis(a.wait_ms))
        .await
        .map_err(|e| unreachable(&url, &e.to_string()))?;
    if a.json {
        return ui::stdout_line(format_args!("{}", serde_json::Value::Array(hosts)));
    }
    if hosts.is_empty() {
        out.note(format!(
            "no host of cluster `{}` answered within {} ms",
            a.cluster, a.wait_ms
        ));
        return Ok(());
    }
    ui::stdout_line(format_args!(
        "{:<20} {:>8} {:<24} {:>7} {:>5} {:>5} {:>7} {:>10}",
        "HOST", "PID", "POOL", "WORKERS", "FREE", "BUSY", "QUEUED", "SERVED"
    ))?;
    for h in &hosts {
        let n = |k: &str| h[k].as_u64().unwrap_or(0);
        // Whoever may publish on the cluster's subjects can answer for a
        // host: the names it gives are written on their line, what would
        // drive the terminal escaped.
        let text = |k: &str| ui::one_line(h[k].as_str().unwrap_or("?"));
        ui::stdout_line(format_args!(
            "{:<20} {:>8} {:<24} {:>7} {:>5} {:>5} {:>7} {:>10}",
            text("host"),
            n("pid"),
            text("pool"),
            n("workers"),
            n("available"),
            n("busy"),
            n("queued"),
            n("served"),
        ))?;
    }
    Ok(())
}

fn unreachable(url: &str, why: &str) -> Failure {
    Failure::new(code::FAILED, format!("cannot reach NATS at {url}: {why}"))
        .hint("start nats-server, or pass --nats (or NATS_URL) with the right address")
}

pub(crate) const SERVE_EXAMPLES: &str = "\
Examples:
  snakepit serve --nats nats://10.0.0.5:4222 --cluster ml --pool-size 8
  snakepit serve --cluster ml --script model_worker.py --host-id gpu-1
  snakepit exec --cluster ml predict '{\"x\": 1}'     # from any machine

The host leaves the cluster on Ctrl-C or SIGTERM, after its calls in flight.";

/// `snakepit serve`: a pool on this machine, serving a cluster.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    /// Worker processes [default: pool.pool_size in snakepit.toml, else twice the cores].
    #[arg(long, value_name = "N")]
    pool_size: Option<usize>,
    /// Calls written ahead to a worker that runs one at a time; 0: off
    /// [default: 16, or pool.pipeline_depth in snakepit.toml].
    #[arg(long, value_name = "N")]
    pipeline_depth: Option<u32>,
    #[command(flatten)]
    nats: NatsArgs,
    /// The cluster's name.
    #[arg(long, value_name = "NAME")]
    cluster: String,
    /// This host's id in the cluster [default: a random one].
    #[arg(long, value_name = "ID")]
    host_id: Option<String>,
    /// The most calls the host accepts per worker beyond those it runs
    /// (queued in its pool, so that workers do not idle while the next call
    /// is on the wire; fewer for longer calls: enough for 4 ms of them, at
    /// least 1) [default: 32].
    #[arg(long, value_name = "N")]
    prefetch: Option<usize>,
}

/// Serves a pool to the cluster until Ctrl-C or SIGTERM, then leaves it:
/// no new call, the calls in flight finish, the pool shuts down.
pub(crate) async fn serve(a: ServeArgs, file: FileConfig, out: &Output) -> Result<(), Failure> {
    // Usage errors first: they are exit 2 whether NATS is up or not.
    snakepit_cluster::check_cluster_name(&a.cluster)?;
    let worker = Worker::choose(&a.worker, &file)?;
    let mut config = file.pool.clone();
    if let Some(n) = a.pool_size {
        config.pool_size = n;
    }
    crate::config::check_pool_size_flag(config.pool_size, "--pool-size")?;
    if let Some(depth) = a.pipeline_depth {
        config.pipeline_depth = depth;
    }
    config.validate()?;
    // Listening from here on: a stop while NATS is reached or the workers
    // start (a model loading) ends the pool cleanly and exits 0, as later.
    let mut stop = StopSignals::new();
    let stopped = |s: Stop| {
        out.note(format!(
            "stopped by {} before serving the cluster",
            s.name()
        ))
    };
    let url = a.nats.url()?;
    let nats = match stop.race(connect(&url)).await {
        Ok(nats) => nats?,
        Err(s) => {
            stopped(s);
            return Ok(());
        }
    };
    let workers = config.pool_size;
    let start = crate::traced(
        Pool::builder(worker.bridge(None))
            .config(config)
            .name(a.cluster.as_str()),
    )
    .start();
    // On a stop, the start is dropped: the pool it made is stopped at once
    // (its workers are killed, its run record removed).
    let pool = match stop.race(start).await {
        Ok(pool) => pool?,
        Err(s) => {
            stopped(s);
            return Ok(());
        }
    };
    let mut options = ServeOptions::default();
    if let Some(id) = a.host_id {
        options = options.host_id(id);
    }
    if let Some(n) = a.prefetch {
        options = options.prefetch_per_worker(n);
    }
    let node = match snakepit_cluster::serve_with(&nats, &a.cluster, pool.clone(), options).await {
        Ok(node) => node,
        Err(e) => {
            let _ = pool.shutdown().await;
            return Err(e.into());
        }
    };
    out.note(format!(
        "host {} serves cluster `{}` with {workers} x {} at {}; Ctrl-C or SIGTERM to leave",
        node.id(),
        a.cluster,
        worker.describe(),
        url
    ));
    stop.next().await;
    out.note("leaving the cluster: finishing the calls in flight (a second Ctrl-C or SIGTERM stops at once)");
    let leave = async {
        let left = node.shutdown().await;
        pool.shutdown().await?;
        left?;
        Ok(())
    };
    tokio::select! {
        left = leave => left,
        // The node and the pool are dropped: its workers' groups are killed.
        _ = stop.next() => Err(Failure::general(
            "stopped at once by a second signal: calls still running were cut off",
        )),
    }
}
