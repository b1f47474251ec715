//! Recovery of a cluster host whose workers could not start, tested without
//! retry loops around the call under test: once the cause is gone and a
//! worker starts again, the very FIRST client call made after the host's
//! pool has a ready worker plus one heartbeat interval must succeed, not
//! fail with a stale `Error::StartFailed`.
//!
//! docs/cluster.md (Failures): "A host none of whose workers can start
//! (none ready, every circuit breaker open) announces no room, declines the
//! calls that reach it meanwhile, and says why in its heartbeats
//! (`Pool::start_failure`). When every host there is says so, a call fails
//! at once with that `Error::StartFailed` ..."; core `Pool::start_failure`:
//! "`None` otherwise"; `Pool::retry_starts`: "For when the cause of the
//! failures is gone ... and the cool-down should not be waited out."
//!
//! Real nats-server (127.0.0.1) and real Python workers
//! (`tests/workers/outside_more_worker.py`: with the file named by
//! `OUTSIDE_BROKEN` present, it exits 7 at start, saying why on stderr).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use snakepit_cluster::{Client, ClientConfig, ServeOptions};
use snakepit_core::{Error, Pool};

/// Only turns a hang into a failure of a test.
const GUARD: Duration = Duration::from_secs(30);

/// The host's heartbeat interval (the default, set explicitly).
const HEARTBEAT: Duration = Duration::from_millis(250);

/// Slack for the heartbeat to travel through nats-server on a loaded
/// machine, on top of the interval.
const DELIVERY: Duration = Duration::from_millis(250);

fn worker_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/outside_more_worker.py")
}

/// Removes its file on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn guarded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {GUARD:?}"))
}

struct Host {
    _nats: NatsServer,
    pool: Pool,
    node: snakepit_cluster::Node,
    client: Client,
    marker: TempFile,
}

/// A host (one worker) served from this process and a client; the worker
/// is then broken: the marker file is created, the worker killed, and every
/// start of its replacement fails (exit 7) so that the breaker
/// (threshold 1, `cooldown`) opens. Returns once a client call fails with
/// `StartFailed` (the control: the host says its workers cannot start).
async fn broken_host(cooldown: Duration) -> Host {
    let nats = NatsServer::start().await;
    let marker = TempFile(std::env::temp_dir().join(format!(
        "snakepit-outside-host-recovery-{}-{}",
        std::process::id(),
        free_port()
    )));
    let pool = Pool::builder(ScriptWorker(worker_script()))
        .worker_env("OUTSIDE_BROKEN", &marker.0)
        .size(1)
        .name("outside-host-recovery")
        .configure(|c| {
            c.sweep_on_start = false;
            c.shutdown_grace_period = Duration::from_millis(300);
            c.breaker_threshold = 1;
            c.breaker_cooldown = cooldown;
            c.restart_backoff = Duration::from_millis(10);
        })
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    let node = snakepit_cluster::serve_with(
        &nats.connect().await,
        "test",
        pool.clone(),
        ServeOptions::new().host_id("h").heartbeat(HEARTBEAT),
    )
    .await
    .unwrap();
    let mut config = ClientConfig::default();
    config.queue_timeout = Duration::from_secs(20);
    let client = client(&nats, config).await;
    wait_hosts(&client, 1).await;
    let r = guarded("a call before the break", client.execute("echo", json!({})))
        .await
        .expect("the healthy host runs it");
    let pid = pid_of(&r);

    // The worker must have lived over a second, so that its end is a crash
    // and the failure that opens the breaker is its replacement's start.
    let lived = started.elapsed();
    if lived < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(1500) - lived).await;
    }
    std::fs::write(&marker.0, "broken").unwrap();
    #[allow(clippy::disallowed_methods)] // kill(1), not a worker
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -KILL {pid}");
    eventually(
        30,
        "the host's pool says its workers cannot start",
        || async { pool.start_failure().is_some() },
    )
    .await;
    let err = guarded(
        "a cluster call while no worker can start",
        client.execute("echo", json!({})),
    )
    .await
    .expect_err("no worker can start to run it");
    assert!(matches!(err, Error::StartFailed(_)), "the control: {err:?}");
    Host {
        _nats: nats,
        pool,
        node,
        client,
        marker,
    }
}

/// Waits until the host's pool has a ready worker, then one heartbeat
/// interval (plus delivery slack), then makes ONE call: it must succeed.
async fn first_call_after_recovery(host: &Host) {
    eventually(30, "the host's pool has a ready worker again", || async {
        host.pool.stats().workers == 1
    })
    .await;
    assert!(
        host.pool.start_failure().is_none(),
        "the pool itself no longer reports a start failure"
    );
    tokio::time::sleep(HEARTBEAT + DELIVERY).await;
    let first = guarded(
        "the first cluster call after recovery",
        host.client.execute("echo", json!({"token": "first"})),
    )
    .await;
    match first {
        Ok(r) => assert_eq!(r["token"], "first", "{r}"),
        Err(e) => panic!(
            "the first call after the host's worker started again: {e:?} (hosts: {:?})",
            host.client.hosts()
        ),
    }
}

/// The cause removed, then `Pool::retry_starts()` (the breaker's cool-down
/// is two minutes, longer than the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_after_retry_starts_brought_a_worker_back_succeeds() {
    let host = broken_host(Duration::from_secs(120)).await;
    std::fs::remove_file(&host.marker.0).unwrap();
    host.pool.retry_starts();
    first_call_after_recovery(&host).await;
    host.node.shutdown().await.unwrap();
    host.pool.shutdown().await.unwrap();
}

/// The cause removed, the breaker's cool-down (3 s) waited out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_after_the_breakers_cooldown_brought_a_worker_back_succeeds() {
    let host = broken_host(Duration::from_secs(3)).await;
    std::fs::remove_file(&host.marker.0).unwrap();
    first_call_after_recovery(&host).await;
    host.node.shutdown().await.unwrap();
    host.pool.shutdown().await.unwrap();
}
