//! A host's decline lost on the way to its client, tested from outside
//! against a real nats-server (127.0.0.1) and real Python workers. A small
//! TCP proxy (`common/proxy.rs`) sits between one party and the server: it
//! mutes the host (what the server sends it flows, what it sends waits in
//! the path) or deafens the client (what it sends flows, what it is sent
//! waits), and then cuts that party's connection (what waited is lost),
//! which async-nats makes again at once.
//!
//! docs/cluster.md (Failures): "a host is full, closing, or gone before a
//! call reaches it | nothing: the call never ran there and is routed
//! again"; the rows on a host's and on a client's connection that drops
//! and is back at once; `Error::HostLost` only when "the call may or may
//! not have run"; "No call is sent twice".
//!
//! Before the fixes, the calls of the first two tests failed with
//! `HostLost`, though they never ran anywhere: "host a did not acknowledge
//! the call within 3s; it may have died with it" (the host's reset), "the
//! NATS connection was lost before the host acknowledged the call; it may
//! or may not have run" (the client's). The last two show what stays
//! `HostLost`: a call the host took, and a decline that never left a host
//! gone since.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use common::files::{no_responders, temp, Removed};
use common::proxy::{connect_quick, Link, Proxy};
use common::*;
use serde_json::{json, Value};
use snakepit_cluster::{Client, ClientConfig, Node, ServeOptions};
use snakepit_core::{CallOptions, Error, Pool};
use tokio::task::JoinHandle;

/// The hosts' heartbeat interval.
const HEARTBEAT: Duration = Duration::from_millis(100);

/// Turns a hang into a failure (never a measure of speed).
const GUARD: Duration = Duration::from_secs(15);

/// The start of the names of this file's temporary files.
const TEMP_PREFIX: &str = "lost-declines";

/// The clients' host timeout: far above the time a host takes to come
/// back from a reset here.
const HOST_TIMEOUT: Duration = Duration::from_secs(3);

/// The worker the hosts serve (`run`: writes `marker`, sleeps `ms`, logs
/// `<token> start|end <pid>`).
fn worker_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/stream_partition_worker.py")
}

/// Serves `pool` from this process as host `id` on `conn`, beating every
/// [`HEARTBEAT`], without prefetch (its room is its one worker).
async fn serve(conn: &async_nats::Client, id: &str, pool: &Pool) -> Node {
    let options = ServeOptions::new()
        .host_id(id)
        .heartbeat(HEARTBEAT)
        .prefetch_per_worker(0);
    snakepit_cluster::serve_with(conn, "test", pool.clone(), options)
        .await
        .unwrap()
}

/// A client of `test` on `conn`, with [`HOST_TIMEOUT`].
async fn client_on(conn: &async_nats::Client) -> Client {
    let mut config = ClientConfig::default();
    config.host_timeout = HOST_TIMEOUT;
    config.queue_timeout = Duration::from_secs(20);
    Client::connect_with(conn, "test", config).await.unwrap()
}

/// The pids that logged `<token> start`: one per run of the call.
fn runs_of(log: &Path, token: &str) -> Vec<u32> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split(' ');
            let (t, what, pid) = (parts.next()?, parts.next()?, parts.next()?);
            (t == token && what == "start").then(|| pid.parse().ok())?
        })
        .collect()
}

/// Another caller's call (`rival`, 4 s: longer than a test needs) sent
/// straight to host `a` on `raw`; waits until it runs there (it writes
/// `marker`), filling a's one worker.
async fn rival_runs_on_a(raw: &async_nats::Client, log: &Path, marker: &Path) {
    let rival = json!({"command": "run", "args": {"token": "rival", "log": log,
                       "marker": marker, "ms": 4000}});
    raw.publish_with_reply(
        "snakepit.test.host.a.call",
        raw.new_inbox(),
        rival.to_string().into(),
    )
    .await
    .unwrap();
    eventually(30, "the rival call runs on a", || async { marker.exists() }).await;
}

/// The client's call (`mine`, logged in `log`) in a task of its own, once
/// it has reached host `a` (on `conn_a`), and when it was sent.
async fn mine_reaches_a(
    client: &Client,
    conn_a: &async_nats::Client,
    log: &Path,
) -> (Instant, JoinHandle<Result<Value, Error>>) {
    let heard = conn_a.statistics().in_messages.load(Ordering::Relaxed);
    let sent = Instant::now();
    let call = {
        let client = client.clone();
        let args = json!({"token": "mine", "log": log, "ms": 0});
        tokio::spawn(async move { client.execute_with("run", args, CallOptions::new()).await })
    };
    eventually(30, "the call reaches host a", || async {
        conn_a.statistics().in_messages.load(Ordering::Relaxed) > heard
    })
    .await;
    (sent, call)
}

/// Whose connection goes through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Host,
    Client,
}

/// Host `a` (one worker) is full with another caller's call, which the
/// client has not heard (a's heartbeats wait in `side`'s silent path), so
/// the client sends its call there; `a` declines it, the decline waits in
/// the same path, and `side`'s connection resets: the decline is lost.
/// Host `b` (one idle worker) has joined meanwhile.
///
/// The call runs once, on `b`, within the guard: its client learns of the
/// decline once the connection is back (the host sends its declines again
/// after a reset; a client reset asks the host) and routes it again.
async fn a_decline_lost_in_a_reset_of(side: Side) {
    let nats = NatsServer::start().await;
    let raw = nats.connect().await;
    let proxy = Proxy::start(nats.port).await;
    let through = connect_quick(&proxy.url).await;
    let direct = nats.connect().await;
    let (conn_a, conn_client) = match side {
        Side::Host => (&through, &direct),
        Side::Client => (&direct, &through),
    };
    let pool_a = pool_of(ScriptWorker(worker_script()), 1).await;
    let pool_b = pool_of(ScriptWorker(worker_script()), 1).await;
    let node_a = serve(conn_a, "a", &pool_a).await;
    let client = client_on(conn_client).await;
    eventually(30, "the client sees host a idle", || async {
        client.hosts().iter().any(|h| h.id == "a" && h.free == 1)
    })
    .await;
    let log = Removed(temp(TEMP_PREFIX, "calls.log"));
    let marker = Removed(temp(TEMP_PREFIX, "rival.marker"));

    // Another caller fills a's one worker (for longer than the test
    // needs); a's heartbeats saying so wait in the silent path, so the
    // client still counts a as idle.
    proxy.set(match side {
        Side::Host => Link::Muted,
        Side::Client => Link::Deaf,
    });
    rival_runs_on_a(&raw, &log.0, &marker.0).await;
    let (_, call) = mine_reaches_a(&client, conn_a, &log.0).await;
    // a declines it at once, into the silent path.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let node_b = serve(&nats.connect().await, "b", &pool_b).await;
    if side == Side::Host {
        eventually(30, "the client sees host b", || async {
            client.hosts().iter().any(|h| h.id == "b")
        })
        .await;
    }
    proxy.set(Link::Cut);
    match side {
        Side::Host => no_responders(&raw, "snakepit.test.host.a.cancel", GUARD).await,
        Side::Client => {
            eventually(30, "the client's connection drops", || async {
                through.connection_state() != State::Connected
            })
            .await
        }
    }
    proxy.set(Link::Forward);

    let r = tokio::time::timeout(GUARD, call)
        .await
        .expect("the call ended")
        .unwrap();
    let r: Value = r.unwrap_or_else(|e| {
        panic!(
            "a call whose decline was lost in a {side:?} reset failed though it never ran: {e:?}"
        )
    });
    assert_eq!(r, json!({"token": "mine"}));
    let runs = runs_of(&log.0, "mine");
    assert_eq!(runs.len(), 1, "the call ran once: {runs:?}");
    assert!(
        pool_b.worker_pids().contains(&runs[0]),
        "it ran on b, the host with room: {runs:?}, b's workers {:?}",
        pool_b.worker_pids()
    );
    assert_eq!(runs_of(&log.0, "rival").len(), 1, "the rival ran once");
    drop((node_a, node_b));
    for pool in [pool_a, pool_b] {
        let _ = tokio::time::timeout(Duration::from_secs(10), pool.shutdown()).await;
    }
}

/// The HOST's connection resets with the decline in its path: the host
/// sends it again after its next heartbeat, and the client routes the call
/// to `b`, well before its host timeout (3 s) would have failed it with
/// `HostLost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decline_lost_in_its_hosts_reset_is_sent_again_and_the_call_runs_elsewhere() {
    a_decline_lost_in_a_reset_of(Side::Host).await;
}

/// The CLIENT's connection resets with the decline in its path: the
/// client asks host `a` once it is back, `a` says it declined the call,
/// and the client routes it to `b` instead of failing it with `HostLost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decline_lost_in_its_clients_reset_is_confirmed_by_the_host_and_the_call_runs_elsewhere()
{
    a_decline_lost_in_a_reset_of(Side::Client).await;
}

/// The CLIENT's connection resets while the call it sent to host `a` runs
/// there and before the client heard of it (its acknowledgement waits in
/// the silent path): the host took the call, so it says it did not
/// decline it, and the call fails with `HostLost` (it may have run: it
/// does) instead of being routed again to `b`, where it would run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_its_host_took_is_not_routed_again_after_a_client_reset() {
    let nats = NatsServer::start().await;
    let proxy = Proxy::start(nats.port).await;
    let through = connect_quick(&proxy.url).await;
    let pool_a = pool_of(ScriptWorker(worker_script()), 1).await;
    let pool_b = pool_of(ScriptWorker(worker_script()), 1).await;
    let node_a = serve(&nats.connect().await, "a", &pool_a).await;
    let client = client_on(&through).await;
    eventually(30, "the client sees host a idle", || async {
        client.hosts().iter().any(|h| h.id == "a" && h.free == 1)
    })
    .await;
    let log = Removed(temp(TEMP_PREFIX, "taken.log"));
    let marker = Removed(temp(TEMP_PREFIX, "taken.marker"));

    proxy.set(Link::Deaf);
    let call = {
        let client = client.clone();
        let args = json!({"token": "taken", "log": log.0, "marker": marker.0, "ms": 1000});
        tokio::spawn(async move { client.execute_with("run", args, CallOptions::new()).await })
    };
    eventually(30, "the call runs on a", || async { marker.0.exists() }).await;
    let node_b = serve(&nats.connect().await, "b", &pool_b).await;
    proxy.set(Link::Cut);
    eventually(30, "the client's connection drops", || async {
        through.connection_state() != State::Connected
    })
    .await;
    proxy.set(Link::Forward);

    let e = tokio::time::timeout(GUARD, call)
        .await
        .expect("the call ended")
        .unwrap()
        .expect_err("its first reply was lost with the client's connection");
    match &e {
        Error::HostLost { host, .. } => assert_eq!(host, "a", "{e}"),
        other => panic!("want the host-lost error of host a, got {other:?}"),
    }
    assert!(!e.never_ran(), "it may have run: {e:?}");
    eventually(30, "the call ends on a", || async {
        pool_a.stats().in_flight == 0
    })
    .await;
    assert_eq!(
        runs_of(&log.0, "taken"),
        pool_a.worker_pids(),
        "it ran once, on a, and not again on b"
    );
    drop((node_a, node_b));
    for pool in [pool_a, pool_b] {
        let _ = tokio::time::timeout(Duration::from_secs(10), pool.shutdown()).await;
    }
}

/// What cannot be known: host `a` declines the call (full with another
/// caller's call) into its muted path and stops serving (its `Node`
/// dropped, as a process killed would) before anything of the decline left
/// it; then its path is cut. No record of the decline reached NATS, so the
/// client cannot tell the call from one that ran: it fails with `HostLost`
/// one host timeout after it was sent, and runs nowhere (it is not routed
/// again to `b`, which has room).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decline_that_never_left_a_host_gone_since_fails_the_call_with_host_lost() {
    let nats = NatsServer::start().await;
    let raw = nats.connect().await;
    let proxy = Proxy::start(nats.port).await;
    let conn_a = connect_quick(&proxy.url).await;
    let pool_a = pool_of(ScriptWorker(worker_script()), 1).await;
    let pool_b = pool_of(ScriptWorker(worker_script()), 1).await;
    let node_a = serve(&conn_a, "a", &pool_a).await;
    let client = client_on(&nats.connect().await).await;
    eventually(30, "the client sees host a idle", || async {
        client.hosts().iter().any(|h| h.id == "a" && h.free == 1)
    })
    .await;
    let log = Removed(temp(TEMP_PREFIX, "gone.log"));
    let marker = Removed(temp(TEMP_PREFIX, "gone.marker"));

    proxy.set(Link::Muted);
    rival_runs_on_a(&raw, &log.0, &marker.0).await;
    let (sent, call) = mine_reaches_a(&client, &conn_a, &log.0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(node_a);
    let node_b = serve(&nats.connect().await, "b", &pool_b).await;
    proxy.set(Link::Cut);
    no_responders(&raw, "snakepit.test.host.a.cancel", GUARD).await;
    proxy.set(Link::Forward);

    let e = tokio::time::timeout(GUARD, call)
        .await
        .expect("the call ended")
        .unwrap()
        .expect_err("nothing tells the client that the call never ran");
    match &e {
        Error::HostLost { host, .. } => assert_eq!(host, "a", "{e}"),
        other => panic!("want the host-lost error of host a, got {other:?}"),
    }
    assert!(
        sent.elapsed() >= HOST_TIMEOUT,
        "it failed {:?} after it was sent, before the host timeout",
        sent.elapsed()
    );
    assert!(runs_of(&log.0, "mine").is_empty(), "it ran nowhere");
    drop(node_b);
    for pool in [pool_a, pool_b] {
        let _ = tokio::time::timeout(Duration::from_secs(10), pool.shutdown()).await;
    }
}
