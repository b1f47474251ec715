//! Promises of docs/cluster.md that no other test shows, against a real
//! nats-server (with JetStream) and real Python workers:
//!
//! - `Client::status(window)` returns, for every host, "host, pid, pool,
//!   capacity (the calls it takes at once, prefetch included, as of its
//!   last heartbeat), workers, available, busy, in flight, queued, calls
//!   served, and the pool's full `Stats`", and `Client::hosts()` "with
//!   capacity and free capacity at their last heartbeat";
//! - `NatsKvStore`: "`stats()` and `list_sessions()` read every key ... Its
//!   counters (`sessions_created`, ...) count what this store handle did";
//! - "Errors from the host's pool (... crashes of the worker with exit
//!   status and stderr tail, calls stopped by the pool's shutdown, ...)
//!   reach the caller as the same variant with the same fields".

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use snakepit_cluster::{Client, NatsKvStore, ServeOptions};
use snakepit_core::{Error, ExitReason, Pool};
use snakepit_session::SessionStore;

async fn pool(size: usize, name: &str) -> Pool {
    Pool::builder(TestWorker)
        .size(size)
        .name(name)
        .configure(|c| {
            c.sweep_on_start = false;
            c.shutdown_grace_period = Duration::from_millis(300);
        })
        .start()
        .await
        .unwrap()
}

/// A host of two workers whose prefetch is at most 1 per worker (so
/// exactly 1: "at least 1, at most `prefetch_per_worker`"): its capacity
/// is 2 running + 2 prefetched = 4, in `status` and in `hosts()`. Idle
/// after three calls, it reports 2 workers available, none busy, nothing
/// in flight or queued, 3 served, and the pool's `Stats` with the same
/// figures; with one call running, 1 busy, 1 available, 1 in flight and a
/// free capacity of 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_hosts_report_every_documented_figure() {
    let nats = NatsServer::start().await;
    let pool = pool(2, "figures").await;
    let options = ServeOptions::new().host_id("h1").prefetch_per_worker(1);
    let node = snakepit_cluster::serve_with(&nats.connect().await, "test", pool.clone(), options)
        .await
        .unwrap();
    let client = Client::connect(&nats.connect().await, "test")
        .await
        .unwrap();
    eventually(30, "the host is heard from", || async {
        client.hosts().len() == 1
    })
    .await;
    for i in 0..3 {
        client.execute("echo", json!({"i": i})).await.unwrap();
    }
    let status = client.status(Duration::from_millis(500)).await.unwrap();
    assert_eq!(status.len(), 1, "{status:?}");
    let s = &status[0];
    assert_eq!(s["host"], "h1", "{s}");
    assert_eq!(s["pid"], json!(std::process::id()), "{s}");
    assert_eq!(s["pool"], "figures", "{s}");
    assert_eq!(s["capacity"], 4, "2 workers + a prefetch of 1 each: {s}");
    assert_eq!(s["workers"], 2, "{s}");
    assert_eq!(s["available"], 2, "{s}");
    assert_eq!(s["busy"], 0, "{s}");
    assert_eq!(s["in_flight"], 0, "{s}");
    assert_eq!(s["queued"], 0, "{s}");
    assert_eq!(s["served"], 3, "{s}");
    assert_eq!(s["stats"]["workers"], 2, "the pool's Stats: {s}");
    assert_eq!(s["stats"]["requests"], 3, "the pool's Stats: {s}");
    assert_eq!(s["stats"]["completed"], 3, "the pool's Stats: {s}");
    let hosts = client.hosts();
    assert_eq!(
        (hosts[0].id.as_str(), hosts[0].pid, hosts[0].capacity),
        ("h1", std::process::id(), 4),
        "{hosts:?}"
    );
    eventually(10, "all of the idle host's capacity is free", || async {
        client.hosts()[0].free == 4
    })
    .await;

    let running = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("sleep", json!({"ms": 20_000})).await })
    };
    eventually(10, "the call runs", || async {
        let s = client.status(Duration::from_millis(300)).await.unwrap();
        s[0]["busy"] == 1
    })
    .await;
    let s = &client.status(Duration::from_millis(300)).await.unwrap()[0];
    assert_eq!(
        (&s["busy"], &s["available"], &s["in_flight"], &s["queued"]),
        (&json!(1), &json!(1), &json!(1), &json!(0)),
        "{s}"
    );
    eventually(10, "the next heartbeat counts the running call", || async {
        client.hosts()[0].free == 3
    })
    .await;
    // Dropping the caller's future cancels the call on the host.
    running.abort();
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// Two `NatsKvStore` handles, each on its own connection, on one bucket:
/// what one made, the other lists and counts as active (`stats()` and
/// `list_sessions()` read every key), while each handle's
/// `sessions_created` and `sessions_deleted` count only what it did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_counters_count_what_this_handle_did_and_active_reads_every_key() {
    let nats = NatsServer::start().await;
    let a = NatsKvStore::builder(&nats.connect().await)
        .bucket("doc_promises")
        .connect()
        .await
        .unwrap();
    let b = NatsKvStore::builder(&nats.connect().await)
        .bucket("doc_promises")
        .connect()
        .await
        .unwrap();
    a.create_session("one", None).await.unwrap();
    a.create_session("two", None).await.unwrap();
    assert!(a.delete_session("one").await.unwrap());
    b.create_session("three", None).await.unwrap();

    let (sa, sb) = (a.stats().await.unwrap(), b.stats().await.unwrap());
    assert_eq!(
        (sa.active_sessions, sa.sessions_created, sa.sessions_deleted),
        (2, 2, 1),
        "a: {sa:?}"
    );
    assert_eq!(
        (sb.active_sessions, sb.sessions_created, sb.sessions_deleted),
        (2, 1, 0),
        "b: {sb:?}"
    );
    for store in [&a, &b] {
        let mut ids = store.list_sessions().await.unwrap();
        ids.sort();
        assert_eq!(ids, ["three", "two"]);
    }
}

async fn one_host(name: &str) -> (NatsServer, Pool, snakepit_cluster::Node, Client) {
    let nats = NatsServer::start().await;
    let pool = pool(1, name).await;
    let node = snakepit_cluster::serve(&nats.connect().await, "test", pool.clone())
        .await
        .unwrap();
    let client = Client::connect(&nats.connect().await, "test")
        .await
        .unwrap();
    eventually(30, "the host is heard from", || async {
        client.hosts().len() == 1
    })
    .await;
    (nats, pool, node, client)
}

/// A worker that writes a line to its stderr and exits with status 5 in a
/// call made through the cluster: the caller gets `Error::WorkerCrashed`
/// with the worker's id and pid, `ExitReason::Code(5)` and that line in the
/// stderr tail, as a caller of the pool itself does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_crash_reaches_the_caller_with_its_exit_status_and_stderr_tail() {
    let (_nats, pool, node, client) = one_host("crash").await;
    let (pid, worker_id) = (pool.worker_pids()[0], pool.workers()[0].id.clone());
    match client.execute("exit", json!({"code": 5})).await {
        Err(Error::WorkerCrashed(crash)) => {
            assert_eq!(crash.pid, pid, "{crash:?}");
            assert_eq!(crash.worker_id, worker_id, "{crash:?}");
            assert_eq!(crash.exit, ExitReason::Code(5), "{crash:?}");
            assert!(
                crash.stderr_tail.contains("exiting with 5 on purpose"),
                "{crash:?}"
            );
        }
        other => panic!("expected Error::WorkerCrashed, got {other:?}"),
    }
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// A call still running when the host's pool shuts down (grace period 300
/// ms): the caller gets `Error::StoppedByShutdown` naming the worker and
/// its pid, not a lost host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_stopped_by_the_hosts_pool_shutdown_is_stopped_by_shutdown() {
    let (_nats, pool, node, client) = one_host("stopping").await;
    let (pid, worker_id) = (pool.worker_pids()[0], pool.workers()[0].id.clone());
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("sleep", json!({"ms": 30_000})).await })
    };
    eventually(10, "the call runs", || async { pool.stats().busy == 1 }).await;
    pool.shutdown().await.unwrap();
    match call.await.unwrap() {
        Err(Error::StoppedByShutdown {
            worker_id: w,
            pid: p,
        }) => assert_eq!((w, p), (worker_id, pid)),
        other => panic!("expected Error::StoppedByShutdown, got {other:?}"),
    }
    node.shutdown().await.unwrap();
}
