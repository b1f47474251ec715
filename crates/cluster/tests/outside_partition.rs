//! Cluster hosts and clients behind a partial network failure, tested from
//! outside against a real nats-server (127.0.0.1) and real Python workers.
//! A small TCP proxy written here sits between ONE party (a host, or the
//! client) and the server; it forwards, black-holes (connections stay open,
//! no byte flows either way, as through a network that drops packets: what
//! was sent flows once it forwards again) or cuts (closes every connection
//! and refuses new ones until it forwards again). Every other party talks
//! to the server directly. A host is also SIGKILLed as a process of its
//! own while another serves.
//!
//! Promises checked (docs/cluster.md unless said otherwise; line numbers as
//! of this writing):
//!
//! - :120 (Deadlines): "A host that cannot answer at all (killed, stopped,
//!   cut off) stops its heartbeats too: its calls fail with the host-lost
//!   error one host timeout after it last spoke, deadline or not".
//! - :113: "A cluster with no host at all is a cluster with no room: calls
//!   wait, then time out"; :118: the deadline is "counted from submission,
//!   queue wait included".
//! - :272 (Failures): "a host is killed (or cut off) while running calls |
//!   those calls fail with the host-lost error one `host_timeout` ... after
//!   the host last spoke ...; calls queued in clients go to other hosts".
//! - :273: "a call is sent to a host in the instant it dies | the host-lost
//!   error within `host_timeout` (it may have started)".
//! - :274: "a host is full, closing, or gone before a call reaches it |
//!   nothing: the call never ran there and is routed again".
//! - :276: "the NATS connection is down | new calls, and calls waiting in
//!   the client's queue, fail at once with the unavailable error (never
//!   sent); calls in flight fail with the host-lost error".
//! - :278: "NATS is back | calls work again as soon as the client's
//!   connection is back: `async-nats` reconnects clients and hosts and
//!   restores their subscriptions ...; a host whose connection comes back
//!   later gets its calls once it is".
//! - :280: "No call is sent twice: a call is sent again only when its host
//!   declined it or NATS reported that nobody received it."
//! - :287-293: `Error::HostLost`: "the host stopped sending heartbeats, or
//!   the connection broke, while the call ran ... The call may or may not
//!   have run"; `Error::Unavailable`: "the call was not sent
//!   (`e.never_ran()` is true)".
//! - :179 (Sessions across hosts): "A session's calls go to the host that
//!   served it last ... while that host has room."
//! - crates/cluster/src/client.rs:96 (`ClientConfig::host_timeout`): "A
//!   host unheard of for this long (heartbeats ...) is lost".
//! - crates/cluster/src/lib.rs:48: "while the NATS connection is down calls
//!   fail at once ([`is_unavailable`]) and work again as soon as it is
//!   back".
//! - ARCHITECTURE.md:368: hosts are marked leaving "on a goodbye or a 'no
//!   responders' (no new call goes there ...)".
//!
//! The hosts here beat every 100 ms (`ServeOptions::heartbeat`) and clients
//! count a host lost after 1 s (`ClientConfig::host_timeout`), except where
//! a test says otherwise; connections behind the proxy reconnect every
//! 50 ms (`ConnectOptions::reconnect_delay_callback`, which the Failures
//! table names for that).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use common::files::{no_responders, temp, Removed};
use common::proxy::{connect_quick, Link, Proxy};
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use snakepit_cluster::{is_host_lost, is_unavailable, Client, ClientConfig, Node, ServeOptions};
use snakepit_core::{Affinity, CallOptions, Error, Pool};
use tokio::task::JoinHandle;

/// The hosts' heartbeat interval in the in-process hosts.
const HEARTBEAT: Duration = Duration::from_millis(100);

/// The clients' host timeout, unless a test says otherwise.
const HOST_TIMEOUT: Duration = Duration::from_secs(1);

/// Turns a hang into a failure (never a measure of speed).
const GUARD: Duration = Duration::from_secs(20);

/// The start of the names of this file's temporary files.
const TEMP_PREFIX: &str = "outside-partition";

/// The worker the hosts serve (`tests/workers/partition_worker.py`).
fn worker_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/partition_worker.py")
}

/// Not a test of its own: the body of the host processes, serving `partition_worker.py`.
#[test]
fn partition_host_process() {
    if std::env::var_os("SNAKEPIT_CLUSTER_HOST").is_none() {
        return;
    }
    host_main_with(ScriptWorker(worker_script()));
}

// ---------------------------------------------------------------- helpers

/// A pool of `workers` workers of `partition_worker.py` served from this process as host `id` on
/// `conn` (beating every [`HEARTBEAT`]; `prefetch`: its
/// `prefetch_per_worker`, the default when `None`).
async fn serve_host(
    conn: &async_nats::Client,
    id: &str,
    workers: usize,
    prefetch: Option<usize>,
) -> (Pool, Node) {
    let pool = pool_of(ScriptWorker(worker_script()), workers).await;
    let mut options = ServeOptions::new().host_id(id).heartbeat(HEARTBEAT);
    if let Some(p) = prefetch {
        options = options.prefetch_per_worker(p);
    }
    let node = snakepit_cluster::serve_with(conn, "test", pool.clone(), options)
        .await
        .unwrap();
    (pool, node)
}

fn config(host_timeout: Duration) -> ClientConfig {
    let mut c = ClientConfig::default();
    c.host_timeout = host_timeout;
    // Long: a call that waits for room is told apart from one that fails.
    c.queue_timeout = Duration::from_secs(20);
    c
}

async fn wait_file(path: &Path) {
    eventually(30, "the call started in its worker", || async {
        path.exists()
    })
    .await;
}

async fn guarded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {GUARD:?}"))
}

/// `run` with `args` and `options`, in a task of its own.
fn spawn_call(
    client: &Client,
    args: Value,
    options: CallOptions,
) -> JoinHandle<Result<Value, Error>> {
    let client = client.clone();
    tokio::spawn(async move { client.execute_with("run", args, options).await })
}

/// A session whose calls land on one of `pids`: sessions are started four
/// at a time (routing prefers idle workers, so calls made one at a time
/// would all go to the host with the most) until one does.
async fn session_on(client: &Client, pids: &[u32], prefix: &str) -> String {
    for round in 0..20 {
        let tries: Vec<_> = (0..4)
            .map(|k| {
                let (client, id) = (client.clone(), format!("{prefix}{round}-{k}"));
                tokio::spawn(async move {
                    let r = client
                        .execute_in_session(&id, "run", json!({"ms": 20}))
                        .await;
                    (id, r)
                })
            })
            .collect();
        let mut found = None;
        for t in tries {
            let (id, r) = guarded("a session's first call", t).await.unwrap();
            let pid = pid_of(&r.unwrap());
            if found.is_none() && pids.contains(&pid) {
                found = Some(id);
            }
        }
        if let Some(id) = found {
            return id;
        }
    }
    panic!("no session landed on the workers {pids:?}");
}

/// For each of `pids`, a session whose calls land on that worker (sessions
/// are started four at a time until each has one), in the order of `pids`.
async fn sessions_on_each(client: &Client, pids: &[u32], prefix: &str) -> Vec<String> {
    let mut found: HashMap<u32, String> = HashMap::new();
    for round in 0..20 {
        let tries: Vec<_> = (0..4)
            .map(|k| {
                let (client, id) = (client.clone(), format!("{prefix}{round}-{k}"));
                tokio::spawn(async move {
                    let r = client
                        .execute_in_session(&id, "run", json!({"ms": 20}))
                        .await;
                    (id, r)
                })
            })
            .collect();
        for t in tries {
            let (id, r) = guarded("a session's first call", t).await.unwrap();
            let pid = pid_of(&r.unwrap());
            if pids.contains(&pid) {
                found.entry(pid).or_insert(id);
            }
        }
        if found.len() == pids.len() {
            return pids.iter().map(|p| found[p].clone()).collect();
        }
    }
    panic!("no session landed on each of the workers {pids:?}: {found:?}");
}

/// Options that hold a call to its session's host (and worker): it waits
/// for room there rather than going to another host.
fn held(session: &str) -> CallOptions {
    CallOptions::new()
        .session(session)
        .affinity(Affinity::Strict)
}

fn listed(client: &Client, id: &str) -> bool {
    client.hosts().iter().any(|h| h.id == id)
}

/// `e` is `Error::HostLost` naming `host`, and does not claim the call
/// never ran.
fn assert_host_lost(e: &Error, host: &str, what: &str) {
    match e {
        Error::HostLost { host: h, .. } => assert_eq!(h, host, "{what}: {e}"),
        other => panic!("{what}: want the host-lost error of host {host}, got {other:?}"),
    }
    assert!(is_host_lost(e), "{what}: {e:?}");
    assert!(!e.never_ran(), "{what}: it may have run: {e:?}");
}

/// `e` is `Error::Unavailable`, and the call never ran.
fn assert_unavailable(e: &Error, what: &str) {
    assert!(
        matches!(e, Error::Unavailable { .. }) && is_unavailable(e),
        "{what}: want the unavailable error, got {e:?}"
    );
    assert!(e.never_ran(), "{what}: never sent: {e:?}");
}

/// The runs the worker logged in `log`: token → the pid of each run.
fn runs(log: &Path) -> HashMap<String, Vec<u32>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut out: HashMap<String, Vec<u32>> = HashMap::new();
    for line in text.lines() {
        let (token, pid) = line.rsplit_once(' ').expect("a token and a pid");
        out.entry(token.to_owned())
            .or_default()
            .push(pid.parse().unwrap());
    }
    out
}

/// Calls (no session), two at a time, until one runs on a worker of
/// `pids`; each must succeed. A host back in the client's table takes
/// calls again (routing prefers idle workers, then the most room: calls
/// made one at a time could all go to a bigger host).
async fn until_a_call_lands_on(client: &Client, pids: &[u32], host: &str) {
    let until = Instant::now() + GUARD;
    loop {
        let calls: Vec<_> = (0..2)
            .map(|_| spawn_call(client, json!({"ms": 50}), CallOptions::new()))
            .collect();
        let mut landed = false;
        for call in calls {
            let r = guarded("a call", call)
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("a call once {host} was back: {e:?}"));
            landed |= pids.contains(&pid_of(&r));
        }
        if landed {
            return;
        }
        assert!(
            Instant::now() < until,
            "no call ran on host {host} after it was back (hosts {:?})",
            client.hosts()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A caller making one call after another in `session` until stopped:
/// when each ended, and the pid that ran it.
fn session_caller(
    client: &Client,
    session: &str,
    stop: &Arc<AtomicBool>,
) -> JoinHandle<Vec<(Instant, Result<u32, Error>)>> {
    let (client, session, stop) = (client.clone(), session.to_owned(), stop.clone());
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let r = client.execute_in_session(&session, "run", json!({})).await;
            seen.push((Instant::now(), r.map(|v| pid_of(&v))));
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        seen
    })
}

async fn stop_all(nodes: Vec<Node>, pools: Vec<Pool>) {
    for node in nodes {
        let _ = tokio::time::timeout(Duration::from_secs(10), node.shutdown()).await;
    }
    for pool in pools {
        let _ = pool.shutdown().await;
    }
}

// ---------------------------------------------------------------- tests

/// Host `a` is black-holed (its connection to NATS stays open, nothing
/// flows), host `b` is fine.
///
/// docs/cluster.md (Deadlines): "A host that cannot answer at all (killed,
/// stopped, cut off) stops its heartbeats too: its calls fail with the
/// host-lost error one host timeout after it last spoke, deadline or not".
/// client.rs (`ClientConfig::host_timeout`): "A host unheard of for this
/// long ... is lost". Sessions across hosts: "A session's calls go to the
/// host that served it last ... while that host has room." Failures: "No
/// call is sent twice".
///
/// The two calls in flight on `a` (one without a deadline, one with 30 s)
/// fail with `HostLost` naming `a`, long before either bound; the client
/// stops listing `a` once it has been silent (not at the first missed
/// heartbeat); a session on `b` gets every one of its calls answered by
/// `b`, before, during and after the partition; new calls go to `b`; once
/// the proxy forwards again, `a` is heard from and takes calls again; no
/// call runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_host_loses_its_calls_and_the_other_host_serves_until_it_is_back() {
    let nats = NatsServer::start().await;
    let proxy = Proxy::start(nats.port).await;
    let conn_a = connect_quick(&proxy.url).await;
    let (pool_a, node_a) = serve_host(&conn_a, "a", 2, Some(0)).await;
    let (pool_b, node_b) = serve_host(&nats.connect().await, "b", 2, None).await;
    let client = client(&nats, config(HOST_TIMEOUT)).await;
    wait_hosts(&client, 2).await;
    let (a_pids, b_pids) = (pool_a.worker_pids(), pool_b.worker_pids());
    let on_a = sessions_on_each(&client, &a_pids, "sa").await;
    let on_b = session_on(&client, &b_pids, "sb").await;
    let log = temp(TEMP_PREFIX, "black-hole.log");

    let (m1, m2) = (temp(TEMP_PREFIX, "m1"), temp(TEMP_PREFIX, "m2"));
    let no_deadline = spawn_call(
        &client,
        json!({"token": "no-deadline", "log": log, "marker": m1, "ms": 2500}),
        held(&on_a[0]),
    );
    let with_deadline = spawn_call(
        &client,
        json!({"token": "with-deadline", "log": log, "marker": m2, "ms": 2500}),
        held(&on_a[1]).timeout(Duration::from_secs(30)),
    );
    wait_file(&m1).await;
    wait_file(&m2).await;
    let stop = Arc::new(AtomicBool::new(false));
    let on_b_calls = session_caller(&client, &on_b, &stop);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let cut = Instant::now();
    proxy.set(Link::BlackHole);
    eventually(30, "the client stops listing the silent host", || async {
        !listed(&client, "a")
    })
    .await;
    let silent = cut.elapsed();
    eprintln!("black-holed host a unlisted {silent:?} after the cut");
    assert!(
        silent >= HOST_TIMEOUT / 2,
        "host a was dropped {silent:?} after its last heartbeat could have come, \
         well before the host timeout of {HOST_TIMEOUT:?}"
    );
    for (what, call) in [
        ("the call without a deadline", no_deadline),
        ("the call with a 30 s deadline", with_deadline),
    ] {
        let e = guarded(what, call)
            .await
            .unwrap()
            .expect_err("the silent host never answered it");
        eprintln!("{what}: {e} ({:?} after the cut)", cut.elapsed());
        assert_host_lost(&e, "a", what);
    }
    assert_eq!(
        client
            .hosts()
            .iter()
            .map(|h| h.id.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    for i in 0..5 {
        let r = guarded(
            "a call during the partition",
            client.execute("run", json!({})),
        )
        .await
        .unwrap_or_else(|e| panic!("call {i} during the partition: {e:?}"));
        assert!(b_pids.contains(&pid_of(&r)), "call {i} ran on b: {r}");
    }

    let healed = Instant::now();
    proxy.set(Link::Forward);
    eventually(30, "the client hears from host a again", || async {
        listed(&client, "a")
    })
    .await;
    // The calls given up on end on a (cancelled once its path is back, or
    // run to their end); then a has room again.
    eventually(30, "host a's calls end", || async {
        pool_a.stats().busy == 0
    })
    .await;
    until_a_call_lands_on(&client, &a_pids, "a").await;
    // A few more calls in the session on b once a is back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = guarded("the session's caller", on_b_calls).await.unwrap();
    let failed: Vec<String> = seen
        .iter()
        .filter_map(|(_, r)| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert!(
        failed.is_empty(),
        "calls of the session on the healthy host failed: {failed:?}"
    );
    let elsewhere: Vec<u32> = seen
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().copied())
        .filter(|pid| !b_pids.contains(pid))
        .collect();
    assert!(
        elsewhere.is_empty(),
        "the session left host b, which had room: {elsewhere:?}"
    );
    let during = seen.iter().filter(|(t, _)| *t > cut && *t < healed).count();
    let after = seen.iter().filter(|(t, _)| *t > healed).count();
    assert!(
        during > 0 && after > 0,
        "the session's calls flowed throughout: {during} during the partition, {after} after"
    );

    // The calls given up on ran on a, once each: the client sent neither
    // anywhere else.
    let runs = runs(&log);
    for token in ["no-deadline", "with-deadline"] {
        let pids = runs.get(token).cloned().unwrap_or_default();
        assert!(
            pids.len() == 1 && a_pids.contains(&pids[0]),
            "{token} ran once, on a: {runs:?}"
        );
    }
    for p in [&log, &m1, &m2] {
        let _ = std::fs::remove_file(p);
    }
    stop_all(vec![node_a, node_b], vec![pool_a, pool_b]).await;
}

/// Host `a`'s connection is cut (closed, and refused until the proxy
/// forwards again), host `b` is fine.
///
/// docs/cluster.md (Failures): "a host is full, closing, or gone before a
/// call reaches it | nothing: the call never ran there and is routed
/// again"; "a host is killed (or cut off) while running calls | those
/// calls fail with the host-lost error one `host_timeout` ... after the
/// host last spoke"; "NATS is back | ... `async-nats` reconnects clients
/// and hosts and restores their subscriptions, nothing is restarted"; "No
/// call is sent twice".
///
/// Once the server has dropped `a`'s subscriptions, and while the client
/// still lists `a` (its host timeout here is 2 s), calls made at once all
/// succeed, each run once, on `b`; the call in flight on `a` fails with
/// `HostLost`; when the proxy forwards again, `a`'s connection comes back
/// by itself and `a` takes calls again; the session on `b` stays there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_from_nats_loses_its_calls_and_is_used_again_once_reconnected() {
    let host_timeout = Duration::from_secs(2);
    let nats = NatsServer::start().await;
    let raw = nats.connect().await;
    let proxy = Proxy::start(nats.port).await;
    let conn_a = connect_quick(&proxy.url).await;
    let (pool_a, node_a) = serve_host(&conn_a, "a", 2, Some(0)).await;
    let (pool_b, node_b) = serve_host(&nats.connect().await, "b", 2, None).await;
    let client = client(&nats, config(host_timeout)).await;
    wait_hosts(&client, 2).await;
    let (a_pids, b_pids) = (pool_a.worker_pids(), pool_b.worker_pids());
    let on_a = session_on(&client, &a_pids, "sa").await;
    let on_b = session_on(&client, &b_pids, "sb").await;
    let log = temp(TEMP_PREFIX, "cut.log");
    let marker = temp(TEMP_PREFIX, "in-flight");
    let in_flight = spawn_call(
        &client,
        json!({"token": "in-flight", "log": log, "marker": marker, "ms": 2500}),
        held(&on_a),
    );
    wait_file(&marker).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let cut = Instant::now();
    proxy.set(Link::Cut);
    no_responders(&raw, "snakepit.test.host.a.call", GUARD).await;
    assert!(
        listed(&client, "a"),
        "the client still counts host a as present {:?} after the cut",
        cut.elapsed()
    );
    // a has an idle worker as the client counts it: some of these go there,
    // reach nobody, and are routed again.
    let burst: Vec<_> = (0..6)
        .map(|i| {
            let token = format!("burst-{i}");
            let call = spawn_call(
                &client,
                json!({"token": token, "log": log}),
                CallOptions::new(),
            );
            (token, call)
        })
        .collect();
    let mut burst_pids = HashMap::new();
    for (token, call) in burst {
        let r = guarded("a call made as host a was gone", call)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{token}, made once a was gone from NATS: {e:?}"));
        assert!(b_pids.contains(&pid_of(&r)), "{token} ran on b: {r}");
        burst_pids.insert(token, pid_of(&r));
    }
    // ARCHITECTURE.md:368: hosts are marked leaving "on a goodbye or a
    // 'no responders' (no new call goes there ...)": well within the host
    // timeout, the client no longer counts a.
    assert!(
        !listed(&client, "a"),
        "calls reached nobody at a, yet the client still lists it {:?} after the cut",
        cut.elapsed()
    );
    let e = guarded("the call in flight on the cut host", in_flight)
        .await
        .unwrap()
        .expect_err("the cut host's outcome cannot reach the client");
    eprintln!(
        "in flight on the cut host: {e} ({:?} after the cut)",
        cut.elapsed()
    );
    assert_host_lost(&e, "a", "the call in flight on the cut host");
    assert!(!listed(&client, "a"), "{:?}", client.hosts());
    let r = guarded(
        "the session on b during the cut",
        client.execute_in_session(&on_b, "run", json!({})),
    )
    .await
    .unwrap();
    assert!(b_pids.contains(&pid_of(&r)), "{r}");

    proxy.set(Link::Forward);
    eventually(30, "host a's connection is back", || async {
        conn_a.connection_state() == State::Connected
    })
    .await;
    eventually(30, "the client hears from host a again", || async {
        listed(&client, "a")
    })
    .await;
    until_a_call_lands_on(&client, &a_pids, "a").await;
    let r = guarded(
        "the session on b after the cut",
        client.execute_in_session(&on_b, "run", json!({})),
    )
    .await
    .unwrap();
    assert!(b_pids.contains(&pid_of(&r)), "the session stayed on b: {r}");

    let runs = runs(&log);
    for (token, pid) in &burst_pids {
        assert_eq!(runs.get(token), Some(&vec![*pid]), "{token} ran once");
    }
    let pids = runs.get("in-flight").cloned().unwrap_or_default();
    assert!(
        pids.len() == 1 && a_pids.contains(&pids[0]),
        "the call in flight ran once, on a: {runs:?}"
    );
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&marker);
    stop_all(vec![node_a, node_b], vec![pool_a, pool_b]).await;
}

/// The CLIENT's connection is cut; the host is fine.
///
/// docs/cluster.md (Failures): "the NATS connection is down | new calls,
/// and calls waiting in the client's queue, fail at once with the
/// unavailable error (never sent); calls in flight fail with the host-lost
/// error (they may or may not have run)"; "NATS is back | calls work again
/// as soon as the client's connection is back"; `Error::Unavailable`: "the
/// call was not sent (`e.never_ran()` is true)".
///
/// Two calls run on the host (its two workers, no prefetch) and a third
/// waits in the client's queue (queue timeout 20 s). With the client cut
/// off: the running ones fail with `HostLost` (the connection, not the
/// host timeout), the waiting one and new calls (plain and in a session)
/// with `Unavailable`, within the guard, far below the queue timeout; none
/// of those is ever run, even once the client is back; the first call once
/// the client's connection reports itself connected succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cut_off_from_nats_fails_its_calls_at_once_and_works_once_back() {
    let nats = NatsServer::start().await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 2, Some(0)).await;
    let proxy = Proxy::start(nats.port).await;
    let conn = connect_quick(&proxy.url).await;
    let client = Client::connect_with(&conn, "test", config(HOST_TIMEOUT))
        .await
        .unwrap();
    wait_hosts(&client, 1).await;
    let log = temp(TEMP_PREFIX, "client-cut.log");
    let (m1, m2) = (temp(TEMP_PREFIX, "c1"), temp(TEMP_PREFIX, "c2"));
    let c1 = spawn_call(
        &client,
        json!({"token": "c1", "log": log, "marker": m1, "ms": 2000}),
        CallOptions::new(),
    );
    let c2 = spawn_call(
        &client,
        json!({"token": "c2", "log": log, "marker": m2, "ms": 2000}),
        CallOptions::new(),
    );
    wait_file(&m1).await;
    wait_file(&m2).await;
    let waiting = spawn_call(
        &client,
        json!({"token": "waiting", "log": log}),
        CallOptions::new(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the third call waits for room");

    proxy.set(Link::Cut);
    for (what, call) in [("c1", c1), ("c2", c2)] {
        let e = guarded(what, call)
            .await
            .unwrap()
            .expect_err("its outcome cannot reach a client cut off");
        assert_host_lost(&e, "a", what);
        assert!(
            e.to_string().contains("connection"),
            "{what}: the connection broke, not the host: {e}"
        );
    }
    let e = guarded("the waiting call", waiting)
        .await
        .unwrap()
        .expect_err("a waiting call fails when the connection goes");
    assert_unavailable(&e, "the call waiting in the client's queue");
    let e = guarded(
        "a new call while cut off",
        client.execute("run", json!({"token": "new", "log": log})),
    )
    .await
    .expect_err("no call while cut off");
    assert_unavailable(&e, "a new call while cut off");
    let e = guarded(
        "a new session call while cut off",
        client.execute_in_session("s", "run", json!({"token": "new-session", "log": log})),
    )
    .await
    .expect_err("no call while cut off");
    assert_unavailable(&e, "a new session call while cut off");

    proxy.set(Link::Forward);
    eventually(30, "the client's connection is back", || async {
        conn.connection_state() == State::Connected
    })
    .await;
    let r = guarded(
        "the first call once back",
        client.execute("run", json!({"token": "back", "log": log})),
    )
    .await
    .unwrap_or_else(|e| panic!("the first call once the client is back: {e:?}"));
    assert_eq!(r["token"], "back");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = runs(&log);
    for token in ["waiting", "new", "new-session"] {
        assert!(
            !runs.contains_key(token),
            "{token} failed as never sent, yet ran: {runs:?}"
        );
    }
    for token in ["c1", "c2", "back"] {
        assert_eq!(runs.get(token).map(Vec::len), Some(1), "{token}: {runs:?}");
    }
    for p in [&log, &m1, &m2] {
        let _ = std::fs::remove_file(p);
    }
    stop_all(vec![node], vec![pool]).await;
}

/// The CLIENT's connection is black-holed (async-nats's defaults: it pings
/// the server every 60 s, so for now the connection counts as up); the
/// host is fine. The client cannot tell a silent link from a silent host.
///
/// docs/cluster.md (Deadlines): "A host that cannot answer at all ... its
/// calls fail with the host-lost error one host timeout after it last
/// spoke, deadline or not"; "A cluster with no host at all is a cluster
/// with no room: calls wait, then time out"; the deadline is "counted from
/// submission, queue wait included ... (`Error::CallTimeout`)"; "NATS is
/// back | calls work again".
///
/// The call in flight fails with `HostLost`; once the host is unlisted, a
/// call with a 1 s deadline waits and ends with `CallTimeout`, never sent
/// (it does not run after the link is back either); once the proxy
/// forwards again, the host is heard from and calls succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_client_never_hangs_and_works_again_once_the_link_is_back() {
    let nats = NatsServer::start().await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 1, Some(0)).await;
    let proxy = Proxy::start(nats.port).await;
    let conn = async_nats::connect(&proxy.url).await.unwrap();
    let client = Client::connect_with(&conn, "test", config(HOST_TIMEOUT))
        .await
        .unwrap();
    wait_hosts(&client, 1).await;
    let log = temp(TEMP_PREFIX, "client-black-hole.log");
    let marker = temp(TEMP_PREFIX, "in-flight");
    let in_flight = spawn_call(
        &client,
        json!({"token": "in-flight", "log": log, "marker": marker, "ms": 1500}),
        CallOptions::new(),
    );
    wait_file(&marker).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    proxy.set(Link::BlackHole);
    let e = guarded("the call in flight", in_flight)
        .await
        .unwrap()
        .expect_err("its outcome cannot reach the client");
    assert_host_lost(&e, "a", "the call in flight on a black-holed client");
    eventually(30, "the client stops listing the host", || async {
        client.hosts().is_empty()
    })
    .await;
    // Why it is not `Unavailable`: async-nats has not noticed anything.
    assert_eq!(conn.connection_state(), State::Connected);
    let deadline = Duration::from_secs(1);
    let e = guarded(
        "a call with a deadline while black-holed",
        client.execute_with(
            "run",
            json!({"token": "waited", "log": log}),
            CallOptions::new().timeout(deadline),
        ),
    )
    .await
    .expect_err("no host is heard from");
    assert!(
        matches!(&e, Error::CallTimeout { timeout, .. } if *timeout == deadline),
        "want CallTimeout of {deadline:?}, got {e:?}"
    );

    proxy.set(Link::Forward);
    eventually(30, "the client hears from the host again", || async {
        listed(&client, "a")
    })
    .await;
    let r = guarded(
        "a call once the link is back",
        client.execute("run", json!({"token": "back", "log": log})),
    )
    .await
    .unwrap_or_else(|e| panic!("a call once the link is back: {e:?}"));
    assert_eq!(r["token"], "back");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = runs(&log);
    assert!(
        !runs.contains_key("waited"),
        "a call that waited for a host and timed out ran: {runs:?}"
    );
    assert_eq!(runs.get("in-flight").map(Vec::len), Some(1), "{runs:?}");
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&marker);
    stop_all(vec![node], vec![pool]).await;
}

/// One call of the load: its token, when it was made, and the pid that ran
/// it or its error.
struct Made {
    token: String,
    at: Instant,
    outcome: Result<u32, Error>,
}

/// Host `a` (a process of its own) is SIGKILLed while it runs calls and
/// host `b` serves too.
///
/// docs/cluster.md (Failures): "a host is killed ... while running calls |
/// those calls fail with the host-lost error ...; calls queued in clients
/// go to other hosts"; "a call is sent to a host in the instant it dies |
/// the host-lost error within `host_timeout` (it may have started)"; "a
/// host is ... gone before a call reaches it | nothing: the call never ran
/// there and is routed again"; "No call is sent twice".
///
/// Three callers keep calling (`a`: two workers, one held by a long call;
/// `b`: one worker; no prefetch, so one caller always waits in the
/// client's queue). After the kill: the long call fails with `HostLost`
/// naming `a`; every failure is `HostLost` naming `a`, of a call made
/// before the server had dropped `a`'s subscription; every call made after
/// that succeeds, on `b`; no call ran twice, and each call that succeeded
/// ran exactly once, where its reply says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_host_fails_only_its_calls_and_none_runs_twice() {
    let nats = NatsServer::start().await;
    let raw = nats.connect().await;
    let (a, b) = tokio::join!(
        HostProcess::start_with_prefetch("partition_host_process", &nats.url, "a", 2, 0),
        HostProcess::start_with_prefetch("partition_host_process", &nats.url, "b", 1, 0),
    );
    let mut a = a;
    // The documented default host timeout (1.5 s): these hosts beat every
    // 250 ms.
    let client = client(&nats, config(ClientConfig::default().host_timeout)).await;
    wait_hosts(&client, 2).await;
    let log = temp(TEMP_PREFIX, "kill.log");
    let on_a = session_on(&client, &a.workers, "sa").await;
    let marker = temp(TEMP_PREFIX, "pinned");
    let pinned = spawn_call(
        &client,
        json!({"token": "pinned", "log": log, "marker": marker, "ms": 60_000}),
        held(&on_a),
    );
    wait_file(&marker).await;

    let made: Arc<Mutex<Vec<Made>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let callers: Vec<_> = (0..3)
        .map(|i| {
            let (client, made, stop, log) =
                (client.clone(), made.clone(), stop.clone(), log.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let token = format!("c{i}-{n}");
                    let at = Instant::now();
                    let args = json!({"token": token, "log": log, "ms": 100});
                    let outcome = client.execute("run", args).await.map(|v| pid_of(&v));
                    made.lock().unwrap().push(Made { token, at, outcome });
                }
            })
        })
        .collect();
    let ran_on = |pids: &[u32], after: Option<Instant>| {
        made.lock()
            .unwrap()
            .iter()
            .filter(|m| after.is_none_or(|t| m.at > t))
            .filter(|m| m.outcome.as_ref().is_ok_and(|p| pids.contains(p)))
            .count()
    };
    eventually(30, "host a serves the load", || async {
        ran_on(&a.workers, None) >= 2
    })
    .await;

    a.kill();
    no_responders(&raw, "snakepit.test.host.a.call", GUARD).await;
    let gone = Instant::now();
    let e = guarded("the long call on the killed host", pinned)
        .await
        .unwrap()
        .expect_err("a killed host answers nothing");
    assert_host_lost(&e, "a", "the long call on the killed host");
    eventually(30, "calls made once a was gone run on b", || async {
        ran_on(&b.workers, Some(gone)) >= 6
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        guarded("a caller", c).await.unwrap();
    }

    let made = std::mem::take(&mut *made.lock().unwrap());
    let runs = runs(&log);
    let mut lost = 0;
    for m in &made {
        match &m.outcome {
            Ok(pid) => {
                assert_eq!(
                    runs.get(&m.token),
                    Some(&vec![*pid]),
                    "{} ran once",
                    m.token
                );
                if m.at > gone {
                    assert!(b.workers.contains(pid), "{} ran on b", m.token);
                }
            }
            Err(e) => {
                lost += 1;
                assert_host_lost(e, "a", &m.token);
                assert!(
                    m.at < gone,
                    "{} was made after host a was gone from NATS, yet failed: {e}",
                    m.token
                );
                let pids = runs.get(&m.token).cloned().unwrap_or_default();
                assert!(
                    pids.is_empty() || (pids.len() == 1 && a.workers.contains(&pids[0])),
                    "{} (lost with a) ran at most once, on a: {pids:?}",
                    m.token
                );
            }
        }
    }
    let pinned_runs = runs.get("pinned").cloned().unwrap_or_default();
    assert!(
        pinned_runs.len() == 1 && a.workers.contains(&pinned_runs[0]),
        "the long call ran once, on a: {pinned_runs:?}"
    );
    eprintln!("{} calls of the load, {lost} lost with host a", made.len());
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&marker);
}

/// The CLIENT's connection drops and comes back within a fraction of a
/// second (a NATS server restarted behind a load balancer, a connection
/// reset: async-nats's first reconnect attempt waits 0 ms), and the
/// host's outcome of a call is published in between: the server, which
/// had no subscription of the client then, drops it.
///
/// docs/cluster.md (Failures): "the NATS connection is down | ... calls in
/// flight fail with the host-lost error (they may or may not have run)";
/// crates/cluster/src/lib.rs: "while the NATS connection is down calls
/// fail at once ... and work again as soon as it is back".
///
/// The call must end (host-lost, or its outcome), not wait for an outcome
/// that is gone. The client only notices a drop its monitor happens to
/// sample (every sixth of `host_timeout`, at most every 250 ms), so each
/// attempt keeps the drop short; with the defect, a few attempts suffice
/// for one to hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_lost_while_the_client_briefly_reconnects_fails_the_call_instead_of_hanging() {
    let nats = NatsServer::start().await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 1, Some(0)).await;
    let proxy = Proxy::start(nats.port).await;
    let conn = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(5))
        .connect(&proxy.url)
        .await
        .unwrap();
    let client = Client::connect_with(&conn, "test", ClientConfig::default())
        .await
        .unwrap();
    wait_hosts(&client, 1).await;
    let spy = nats.connect().await;
    let mut calls = subscribed(&spy, &["snakepit.test.host.a.call"])
        .await
        .pop()
        .unwrap();
    for attempt in 0..5 {
        let gate = Removed(temp(TEMP_PREFIX, &format!("gate-{attempt}")));
        let call = spawn_call(&client, json!({"gate": gate.0}), CallOptions::new());
        let seen = tokio::time::timeout(GUARD, calls.next())
            .await
            .expect("the call reaches the host")
            .unwrap();
        let reply = seen
            .reply
            .expect("a lone call has its reply subject")
            .to_string();
        let prefix = reply.rsplit_once('.').unwrap().0.to_owned();
        let mut outcomes = subscribed(&spy, &[reply.as_str(), &format!("{prefix}.m")]).await;
        // Acknowledged after 50 ms: the client then waits for its outcome.
        tokio::time::sleep(Duration::from_millis(400)).await;

        proxy.set(Link::Cut);
        no_responders(&spy, &format!("{prefix}.probe"), GUARD).await;
        std::fs::write(&gate.0, "open").unwrap();
        let mut out = futures_util::stream::select(outcomes.remove(0), outcomes.remove(0));
        let ok = tokio::time::timeout(GUARD, async {
            while let Some(m) = out.next().await {
                if String::from_utf8_lossy(&m.payload).contains("\"ok\"") {
                    return;
                }
            }
        })
        .await;
        proxy.set(Link::Forward);
        assert!(ok.is_ok(), "the host sent the call's outcome");
        eventually(30, "the client's connection is back", || async {
            conn.connection_state() == State::Connected
        })
        .await;
        match tokio::time::timeout(Duration::from_secs(5), call).await {
            Err(_) => panic!(
                "attempt {attempt}: the call's outcome was lost while the client reconnected, \
                 and the call still waits 5 s later (no deadline: for ever; the host lives)"
            ),
            Ok(r) => match r.unwrap() {
                Ok(v) => eprintln!("attempt {attempt}: outcome {v}"),
                Err(e) => {
                    eprintln!("attempt {attempt}: {e}");
                    assert_host_lost(&e, "a", "a call whose outcome was lost");
                }
            },
        }
    }
    stop_all(vec![node], vec![pool]).await;
}
