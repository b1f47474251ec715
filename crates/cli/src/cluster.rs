//! `snakepit cluster status`: the hosts of a cluster (snakepit-cluster over
//! NATS), their pools, workers free and busy, and calls served.

use std::time::Duration;

use clap::{Args, Subcommand};

use crate::ui::{self, code, Failure, Output};

pub(crate) const EXAMPLES: &str = "\
Examples:
  snakepit cluster status --nats nats://127.0.0.1:4222 --cluster ml
  NATS_URL=nats://nats-1:4222 snakepit cluster status --cluster ml --json

Hosts join a cluster with snakepit_cluster::serve (see docs/cluster.md).";

#[derive(Debug, Args)]
pub(crate) struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// List each host of the cluster: its pool, workers free and busy, calls served.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The NATS server(s), comma-separated.
    #[arg(
        long,
        env = "NATS_URL",
        value_name = "URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats: String,
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

async fn status(a: StatusArgs, out: &Output) -> Result<(), Failure> {
    let options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(3));
    let connect = tokio::time::timeout(Duration::from_secs(3), options.connect(a.nats.as_str()));
    let nats = match connect.await {
        Ok(Ok(n)) => n,
        Ok(Err(e)) => return Err(unreachable(&a.nats, &e.to_string())),
        Err(_) => return Err(unreachable(&a.nats, "no answer within 3 s")),
    };
    let client = snakepit_cluster::Client::connect(&nats, &a.cluster)
        .await
        .map_err(|e| Failure::usage(e.to_string()))?;
    let hosts = client
        .status(Duration::from_millis(a.wait_ms))
        .await
        .map_err(|e| unreachable(&a.nats, &e.to_string()))?;
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
        ui::stdout_line(format_args!(
            "{:<20} {:>8} {:<24} {:>7} {:>5} {:>5} {:>7} {:>10}",
            h["host"].as_str().unwrap_or("?"),
            n("pid"),
            h["pool"].as_str().unwrap_or("?"),
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
