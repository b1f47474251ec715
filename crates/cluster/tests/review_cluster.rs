//! Code review of crates/cluster/src (client, host, kv) for logic bugs, each
//! suspicion shown against a real nats-server (127.0.0.1, a port of its
//! own, stopped by the test) and pools of real Python workers: a call on a
//! killed host whose id comes back, calls in transit when a host leaves
//! gracefully, what the KV store leaves in its bucket for sessions that
//! ended, hostile session ids and command names, replies after a deadline.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use snakepit_cluster::{is_host_lost, Client, ClientConfig, NatsKvStore, ServeOptions};
use snakepit_core::{CallOptions, Error, Pool};
use snakepit_session::SessionStore;

/// Not a test of its own: the body of the host processes.
#[test]
fn host_process() {
    host_main();
}

/// cluster.md, deadlines: "A host that cannot answer at all (killed,
/// stopped, cut off) stops its heartbeats too: its calls fail with the
/// host-lost error one host timeout after it last spoke, deadline or not."
///
/// A host is SIGKILLed while it runs a call without a timeout, and is
/// started again under the same id (as a service manager restarts
/// `snakepit serve --host-id a`) before the client's host timeout has
/// passed. The new process never heard of the call; the old one is dead.
/// The call must fail with the host-lost error. The client once took the
/// new process's heartbeats for the old host's, so the call's host was
/// never "lost" and the caller waited forever; each run of a host now
/// names itself (`instance` in its heartbeats).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_a_killed_host_fails_when_a_host_of_the_same_id_comes_back() {
    let nats = NatsServer::start().await;
    let mut first = HostProcess::start("host_process", &nats.url, "a", 1).await;
    let mut config = ClientConfig::default();
    // Long enough for the host to come back before it counts as lost.
    config.host_timeout = Duration::from_secs(15);
    let client = client(&nats, config).await;
    wait_hosts(&client, 1).await;
    let caller = client.clone();
    let call = tokio::spawn(async move {
        caller
            .execute_with("sleep", json!({"ms": 600_000}), CallOptions::new())
            .await
    });
    eventually(30, "the call runs on host a", || async {
        client
            .status(Duration::from_millis(300))
            .await
            .unwrap()
            .iter()
            .any(|s| s["host"] == "a" && s["in_flight"].as_u64() == Some(1))
    })
    .await;
    let killed = Instant::now();
    first.kill();
    let second = HostProcess::start("host_process", &nats.url, "a", 1).await;
    assert_ne!(second.pid, first.pid);
    assert!(
        !call.is_finished(),
        "the host came back within the host timeout ({:?} after the kill)",
        killed.elapsed()
    );
    let outcome = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("the call on the killed host ends (host lost) instead of hanging")
        .unwrap();
    let err = outcome.expect_err("the killed host never answered the call");
    assert!(is_host_lost(&err), "{err}");
}

/// cluster.md, failures: "a host shuts down gracefully (`Node::shutdown`)
/// | nothing: new calls go to other hosts at once, and the calls it runs
/// end with their outcomes"; "a host is full, closing, or gone before a
/// call reaches it | nothing: the call never ran there and is routed
/// again".
///
/// Two hosts under steady load from 32 callers of quick calls; host `a`
/// shuts down gracefully and is served again, five times over. Every call
/// must succeed. A call that reached `a`'s connection in the instant
/// between its serving loop's last read and its unsubscription was once
/// neither run nor declined, and its caller got the host-lost error a host
/// timeout later, for a call that never ran. (Draining the subscription
/// did not help: async-nats forgets a drained subscription without waiting
/// for the server, so what the server delivered just before was dropped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_under_load_fails_no_call() {
    let nats = NatsServer::start().await;
    let pool_a = pool(2).await;
    let pool_b = pool(2).await;
    let conn_b = nats.connect().await;
    let node_b = snakepit_cluster::serve_with(
        &conn_b,
        "test",
        pool_b.clone(),
        ServeOptions::new().host_id("b"),
    )
    .await
    .unwrap();
    let serve_a = || {
        let pool_a = pool_a.clone();
        let nats = &nats;
        async move {
            let conn = nats.connect().await;
            snakepit_cluster::serve_with(&conn, "test", pool_a, ServeOptions::new().host_id("a"))
                .await
                .unwrap()
        }
    };
    let mut node_a = serve_a().await;
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 2).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for i in 0..32 {
        let (client, stop) = (client.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let token = format!("{i}-{n}");
                match client.execute("echo", json!({"t": token})).await {
                    Ok(r) => assert_eq!(r["echoed"]["t"], token.as_str(), "{r}"),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (n, failures)
        }));
    }
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        node_a.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        node_a = serve_a().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut calls, mut failures) = (0, Vec::new());
    for c in callers {
        let (n, f) = tokio::time::timeout(Duration::from_secs(60), c)
            .await
            .expect("the callers end")
            .unwrap();
        calls += n;
        failures.extend(f);
    }
    node_a.shutdown().await.unwrap();
    node_b.shutdown().await.unwrap();
    pool_a.shutdown().await.unwrap();
    pool_b.shutdown().await.unwrap();
    assert!(calls > 100, "the load ran: {calls} calls");
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed across graceful shutdowns: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

/// What the bucket's stream holds: (messages, subjects).
async fn bucket_contents(nats: &NatsServer, bucket: &str) -> (u64, u64) {
    let js = async_nats::jetstream::new(nats.connect().await);
    let mut stream = js.get_stream(format!("KV_{bucket}")).await.unwrap();
    let info = stream.info().await.unwrap();
    (info.state.messages, info.state.subjects_count)
}

/// kv.rs: sessions that ended (deleted, or expired and swept) are
/// "removed". With `history: 1` each removal once left a delete marker (one
/// message, one subject) in the bucket's stream for good: the bucket held
/// one message per session id ever used, and `list_sessions`, `stats` and
/// every sweep read each of them (`keys_under` + `load` per key), so their
/// cost and the server's storage grew with every session ever created,
/// not with the live ones. The marker is now purged after the removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_sessions_that_ended_leave_nothing_in_the_bucket() {
    let nats = NatsServer::start().await;
    let store = NatsKvStore::builder(&nats.connect().await)
        .bucket("review_growth")
        .sweep_interval(Duration::from_secs(3600))
        .connect()
        .await
        .unwrap();
    for i in 0..40 {
        let ttl = (i % 2 == 1).then_some(Duration::from_millis(100));
        store.create_session(&format!("s{i}"), ttl).await.unwrap();
    }
    assert_eq!(bucket_contents(&nats, "review_growth").await.0, 40);
    for i in (0..40).step_by(2) {
        assert!(store.delete_session(&format!("s{i}")).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(store.cleanup_expired().await.unwrap(), 20);
    assert!(store.list_sessions().await.unwrap().is_empty());
    assert_eq!(store.stats().await.unwrap().active_sessions, 0);
    let mut left = (0, 0);
    for _ in 0..50 {
        left = bucket_contents(&nats, "review_growth").await;
        if left == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        left,
        (0, 0),
        "(messages, subjects) left in the bucket once all 40 sessions ended"
    );
}

/// Session ids and command names travel in the call's JSON, never in a
/// subject; in the KV store ids become hex keys. Ids made of NATS subject
/// syntax (`.`, `*`, `>`), spaces and non-ASCII are each their own session
/// through a cluster whose host keeps sessions in the KV store; command
/// names of the same kind are refused by the worker (not lost, not hung).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_session_ids_and_command_names_cross_the_cluster() {
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let store = Arc::new(
        NatsKvStore::builder(&conn)
            .sweep_interval(Duration::from_secs(3600))
            .connect()
            .await
            .unwrap(),
    );
    let pool = snakepit_session::attach(Pool::builder(TestWorker), store.clone())
        .size(2)
        .configure(|c| {
            c.sweep_on_start = false;
            c.shutdown_grace_period = Duration::from_millis(300);
        })
        .start()
        .await
        .unwrap();
    let node = snakepit_cluster::serve_with(&conn, "test", pool.clone(), ServeOptions::new())
        .await
        .unwrap();
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    let ids = [
        "a.b",
        "a",
        "*",
        ">",
        "a.*.>",
        "with space",
        " ",
        "é✓ 会话",
        "$JS.API.>",
        "_INBOX.x",
        "snakepit.test.hb",
    ];
    for (n, id) in ids.iter().enumerate() {
        let r = client
            .execute_in_session(id, "remember", json!({"key": "k", "value": n}))
            .await
            .unwrap_or_else(|e| panic!("session {id:?}: {e}"));
        assert_eq!(r, json!(n), "session {id:?}");
    }
    for (n, id) in ids.iter().enumerate() {
        let r = client
            .execute_in_session(id, "recall", json!({"key": "k"}))
            .await
            .unwrap();
        assert_eq!(r["value"], json!(n), "session {id:?} kept its own value");
        assert_eq!(store.get(id, "k").await.unwrap(), Some(json!(n)));
    }
    let mut listed = store.list_sessions().await.unwrap();
    listed.sort();
    let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(listed, want);
    for command in ["no.such", "*", ">", "a b", "é", "snakepit.test.hb"] {
        let err = tokio::time::timeout(Duration::from_secs(20), client.execute(command, json!({})))
            .await
            .unwrap_or_else(|_| panic!("command {command:?} hung"))
            .expect_err("no such command");
        assert!(
            !is_host_lost(&err) && !snakepit_cluster::is_unavailable(&err),
            "{command:?}: {err}"
        );
    }
    // The host still serves.
    let r = client.execute("echo", json!({"x": 1})).await.unwrap();
    assert_eq!(r["echoed"], json!({"x": 1}));
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// A call whose deadline passes while its worker still runs fails with
/// `CallTimeout`; the worker's late reply (if any reaches the client) is
/// answered to nobody: the caller's next calls each get their own result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_after_the_deadline_reaches_no_later_call() {
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let pool = pool(1).await;
    let node = snakepit_cluster::serve_with(&conn, "test", pool.clone(), ServeOptions::new())
        .await
        .unwrap();
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    for round in 0..3 {
        let err = client
            .execute_with(
                "sleep",
                json!({"ms": 800, "token": format!("late{round}")}),
                CallOptions::new().timeout(Duration::from_millis(200)),
            )
            .await
            .expect_err("the deadline passes first");
        assert!(matches!(err, Error::CallTimeout { .. }), "{err}");
        for n in 0..5 {
            let token = format!("r{round}-{n}");
            let r: Value = client
                .execute_with(
                    "sleep",
                    json!({"ms": 200, "token": token}),
                    CallOptions::new().timeout(Duration::from_secs(30)),
                )
                .await
                .unwrap();
            assert_eq!(r["token"], token.as_str(), "{r}");
        }
    }
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// Calls served by the host `id`, from the NATS service API.
async fn served_by(client: &Client, id: &str) -> u64 {
    client
        .status(Duration::from_millis(300))
        .await
        .unwrap()
        .iter()
        .find(|s| s["host"] == id)
        .and_then(|s| s["served"].as_u64())
        .expect("the host answers status")
}

/// cluster.md: "A host ignores a call that comes to it again with the same
/// reply subject (replayed on the bus) while it runs or after it ended."
/// The host keeps the last 4096 calls that ended (host.rs `Recent::KEPT`)
/// by reply subject; a call replayed after 4,240 others once ran a second
/// time. Older ones are now told by the client's call number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_replayed_after_many_others_is_still_ignored() {
    use futures_util::StreamExt;
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let pool = pool(2).await;
    let node = snakepit_cluster::serve_with(
        &conn,
        "test",
        pool.clone(),
        ServeOptions::new().host_id("a"),
    )
    .await
    .unwrap();
    let bus = nats.connect().await;
    let mut spy = subscribed(&bus, &["snakepit.test.host.a.call"])
        .await
        .pop()
        .unwrap();
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    let r = client
        .execute("echo", json!({"first": true}))
        .await
        .unwrap();
    assert_eq!(r["echoed"]["first"], true);
    let first = tokio::time::timeout(Duration::from_secs(10), spy.next())
        .await
        .unwrap()
        .unwrap();
    assert!(first.payload.starts_with(b"{"), "sent alone");
    drop(spy);
    let mut callers = Vec::new();
    for _ in 0..16 {
        let client = client.clone();
        callers.push(tokio::spawn(async move {
            for _ in 0..265 {
                client.execute("echo", json!({})).await.unwrap();
            }
        }));
    }
    for c in callers {
        c.await.unwrap();
    }
    let before = served_by(&client, "a").await;
    assert_eq!(before, 1 + 16 * 265);
    bus.publish_with_reply_and_headers(
        first.subject.clone(),
        first.reply.clone().unwrap(),
        first.headers.clone().unwrap_or_default(),
        first.payload.clone(),
    )
    .await
    .unwrap();
    bus.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = served_by(&client, "a").await;
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
    assert_eq!(after, before, "the replayed call ran again");
}
