//! What a cluster call costs over a local one, on this machine.
//!
//! Starts a nats-server (or uses `NATS_URL`), then measures with the test
//! worker (`echo`): the p50 of sequential calls through a local pool and
//! through a cluster client, and the throughput of 32 concurrent callers on
//! a local pool of 4 workers against a cluster of two hosts of 2 workers.
//! The hosts run in this process (their pools' workers are processes).
//!
//! `cargo run --release -p snakepit-cluster --example cluster_bench`
//! (`WORK_MS=1` makes each call sleep 1 ms in the worker instead of echoing;
//! `ROUNDS` sets the rounds, 5 by default; `PREFETCH` the hosts'
//! `prefetch_per_worker`, `ServeOptions`' default when unset.)

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;
use snakepit_core::{Adapter, Launch, Pool};

struct Echo;

impl Adapter for Echo {
    fn launch(&self) -> Launch {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let python = std::env::var("SNAKEPIT_PYTHON").unwrap_or_else(|_| "python3".into());
        Launch::new(python)
            .arg(root.join("crates/core/tests/workers/test_worker.py"))
            .env("PYTHONPATH", root.join("bridges/python"))
    }
}

/// The work of one call: `echo` (nothing), or `sleep` for `WORK_MS`.
fn work() -> (&'static str, serde_json::Value) {
    match std::env::var("WORK_MS")
        .ok()
        .and_then(|m| m.parse::<u64>().ok())
    {
        Some(ms) => ("sleep", json!({"ms": ms})),
        None => ("echo", json!({"x": 1})),
    }
}

trait Caller: Clone + Send + Sync + 'static {
    fn echo(&self) -> impl std::future::Future<Output = bool> + Send;
}

impl Caller for Pool {
    async fn echo(&self) -> bool {
        let (command, args) = work();
        self.execute(command, args).await.is_ok()
    }
}

impl Caller for snakepit_cluster::Client {
    async fn echo(&self) -> bool {
        let (command, args) = work();
        match self.execute(command, args).await {
            Ok(_) => true,
            Err(e) => {
                eprintln!("cluster call failed: {e}");
                false
            }
        }
    }
}

async fn p50<C: Caller>(c: &C, n: usize) -> Duration {
    for _ in 0..200 {
        assert!(c.echo().await);
    }
    let mut t = Vec::with_capacity(n);
    for _ in 0..n {
        let s = Instant::now();
        assert!(c.echo().await);
        t.push(s.elapsed());
    }
    t.sort();
    t[n / 2]
}

async fn throughput<C: Caller>(c: &C, callers: usize, per: usize) -> f64 {
    let start = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move {
                for _ in 0..per {
                    assert!(c.echo().await);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (callers * per) as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut server = None;
    let url = match std::env::var("NATS_URL") {
        Ok(u) => u,
        Err(_) => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            #[allow(clippy::disallowed_methods)] // the NATS server, not a worker
            let child = std::process::Command::new(
                std::env::var("NATS_SERVER").unwrap_or_else(|_| "nats-server".into()),
            )
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stderr(std::process::Stdio::null())
            .spawn()?;
            server = Some(child);
            let url = format!("nats://127.0.0.1:{port}");
            while tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            url
        }
    };
    let nats = async_nats::connect(&url).await?;

    let local = Pool::builder(Echo).size(4).start().await?;
    let a = Pool::builder(Echo).size(2).name("bench-a").start().await?;
    let b = Pool::builder(Echo).size(2).name("bench-b").start().await?;
    let mut options = snakepit_cluster::ServeOptions::new();
    if let Some(prefetch) = std::env::var("PREFETCH").ok().and_then(|p| p.parse().ok()) {
        options = options.prefetch_per_worker(prefetch);
    }
    let node_a = snakepit_cluster::serve_with(&nats, "bench", a.clone(), options.clone()).await?;
    let node_b = snakepit_cluster::serve_with(&nats, "bench", b.clone(), options).await?;
    let client_nats = async_nats::connect(&url).await?;
    let cluster = snakepit_cluster::Client::connect(&client_nats, "bench").await?;
    while cluster.hosts().len() < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Rounds alternate local and cluster runs so that load from other
    // programs on the machine falls on both; the medians are reported.
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let (mut added, mut ratios) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let local_p50 = p50(&local, 2000).await;
        let cluster_p50 = p50(&cluster, 2000).await;
        let local_rps = throughput(&local, 32, 200).await;
        let cluster_rps = throughput(&cluster, 32, 200).await;
        println!(
            "round {round}: p50 local {local_p50:?}, cluster {cluster_p50:?}; \
             throughput local {local_rps:.0}/s (4 workers), cluster {cluster_rps:.0}/s \
             (2 hosts x 2 workers), ratio {:.2}",
            cluster_rps / local_rps
        );
        added.push(cluster_p50.saturating_sub(local_p50));
        ratios.push(cluster_rps / local_rps);
    }
    added.sort();
    ratios.sort_by(f64::total_cmp);
    println!(
        "median added p50 {:?}; median cluster/local throughput {:.2}",
        added[rounds / 2],
        ratios[rounds / 2]
    );

    node_a.shutdown().await?;
    node_b.shutdown().await?;
    for p in [local, a, b] {
        p.shutdown().await?;
    }
    if let Some(mut s) = server {
        let _ = s.kill();
        let _ = s.wait();
    }
    Ok(())
}
