//! The shared session store suite (crates/session/tests/common) against
//! `NatsKvStore` and a real nats-server with JetStream.

#[path = "../../session/tests/common/mod.rs"]
mod common;
#[path = "common/mod.rs"]
mod nats;

use std::time::Duration;

use snakepit_cluster::NatsKvStore;
use snakepit_session::SessionStore;

async fn make(ttl: Duration, sweep: Duration) -> (NatsKvStore, nats::NatsServer) {
    let server = nats::NatsServer::start().await;
    let store = NatsKvStore::builder(&server.connect().await)
        .default_ttl(ttl)
        .sweep_interval(sweep)
        .connect()
        .await
        .unwrap();
    (store, server)
}

store_suite!(make);

/// Two hosts (two connections) share sessions; another bucket is another
/// namespace.
#[tokio::test]
async fn shared_between_hosts() {
    let (a, server) = make(Duration::from_secs(60), Duration::from_secs(60)).await;
    let b = NatsKvStore::connect(&server.connect().await).await.unwrap();
    a.ensure_session("u1").await.unwrap();
    a.set("u1", "fact", serde_json::json!("likes tea"))
        .await
        .unwrap();
    assert_eq!(
        b.get("u1", "fact").await.unwrap(),
        Some(serde_json::json!("likes tea"))
    );
    let c = NatsKvStore::builder(&server.connect().await)
        .bucket("other")
        .connect()
        .await
        .unwrap();
    assert!(!c.session_exists("u1").await.unwrap());
}

/// docs/sessions.md: a value nested deeper than `MAX_VALUE_DEPTH` is
/// refused (`Invalid`) and nothing stored; one that deep comes back. The
/// KV store keeps a whole session as one JSON document, the value two
/// levels down: a deeper one could be written and then never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_nested_past_the_limit_are_refused_and_the_session_stays_readable() {
    use snakepit_session::{Error, MAX_VALUE_DEPTH};
    let (store, _server) = make(Duration::from_secs(60), Duration::from_secs(60)).await;
    let nested = |n: usize| {
        let mut v = serde_json::json!(1);
        for _ in 0..n {
            v = serde_json::json!([v]);
        }
        v
    };
    store.ensure_session("s").await.unwrap();
    let deep = nested(MAX_VALUE_DEPTH + 1);
    assert!(matches!(
        store.set("s", "deep", deep.clone()).await,
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        store.store_global_program("g", deep).await,
        Err(Error::Invalid { .. })
    ));
    let deepest = nested(MAX_VALUE_DEPTH);
    store.set("s", "deepest", deepest.clone()).await.unwrap();
    assert_eq!(
        store.get("s", "deepest").await.unwrap(),
        Some(deepest.clone())
    );
    assert!(store.get_session("s").await.is_ok());
    store
        .store_global_program("g", deepest.clone())
        .await
        .unwrap();
    assert_eq!(store.get_global_program("g").await.unwrap(), deepest);
}

/// `NatsKvStoreBuilder::replicas`: a bucket that exists with another
/// number of replicas is not taken silently with fewer (or more) copies
/// than asked for; `connect` fails with `Backend` naming both numbers and
/// leaves the bucket and its sessions as they were. The same number, or
/// none set, connects.
#[tokio::test]
async fn replicas_other_than_an_existing_buckets_are_refused_at_connect() {
    use snakepit_session::Error;
    let (a, server) = make(Duration::from_secs(60), Duration::from_secs(60)).await;
    a.ensure_session("kept").await.unwrap();
    let nats = server.connect().await;
    let e = NatsKvStore::builder(&nats)
        .replicas(3)
        .connect()
        .await
        .unwrap_err();
    match &e {
        Error::Backend(m) => assert!(
            m.contains("has 1 replica")
                && m.contains("replicas(3)")
                && m.contains("snakepit_sessions"),
            "{m}"
        ),
        other => panic!("expected Backend, got {other:?}"),
    }
    let b = NatsKvStore::builder(&nats)
        .replicas(1)
        .connect()
        .await
        .unwrap();
    assert!(b.session_exists("kept").await.unwrap());
    let c = NatsKvStore::builder(&nats)
        .replicas(0)
        .connect()
        .await
        .unwrap();
    assert!(c.session_exists("kept").await.unwrap());
}

/// Sends `signal` (`STOP`, `CONT`) to the server's process.
fn signal(server: &nats::NatsServer, signal: &str) {
    let pid = server.pid().expect("the server runs");
    #[allow(clippy::disallowed_methods)] // kill(1), not a worker
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
    // A stop takes each of the server's threads as it next enters the
    // kernel: one busy meanwhile could still answer a request sent after
    // `kill` returned (CI saw `Ok(true)` from a paused server).
    if signal == "STOP" {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !all_threads_stopped(pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not stop"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Whether every thread of process `pid` is stopped (state `T` in its
/// `/proc` stat).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command's closing parenthesis.
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
        })
    })
}

/// The store's docs (`NatsKvStoreBuilder::timeout`): an operation that gets
/// no answer within the timeout (here a paused nats-server) fails with
/// `Error::Timeout` naming the operation and the timeout, `connect`
/// included; once the server answers again, so does the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_times_each_operation_out_and_the_store_recovers() {
    use snakepit_session::Error;
    let server = nats::NatsServer::start().await;
    let nats = server.connect().await;
    let timeout = Duration::from_millis(400);
    let store = NatsKvStore::builder(&nats)
        .timeout(timeout)
        .connect()
        .await
        .unwrap();
    store.ensure_session("paused").await.unwrap();
    store
        .set("paused", "k", serde_json::json!(1))
        .await
        .unwrap();
    signal(&server, "STOP");
    let timed_out = |r: Result<(), Error>, op: &str| match r {
        Err(Error::Timeout { operation, after }) => {
            assert_eq!(operation, op);
            assert_eq!(after, timeout);
        }
        other => panic!("`{op}` on a paused server: {other:?}"),
    };
    timed_out(store.get("paused", "k").await.map(drop), "get");
    timed_out(store.set("paused", "k", serde_json::json!(2)).await, "set");
    timed_out(
        store.delete_session("paused").await.map(drop),
        "delete_session",
    );
    let other = NatsKvStore::builder(&nats)
        .bucket("another")
        .timeout(timeout)
        .connect()
        .await;
    timed_out(other.map(drop), "connect");
    signal(&server, "CONT");
    let mut back = None;
    for _ in 0..50 {
        match store.get("paused", "k").await {
            Ok(v) => {
                back = Some(v);
                break;
            }
            Err(Error::Timeout { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("after the server resumed: {e}"),
        }
    }
    // The set that timed out may or may not have been applied.
    let v = back.expect("the store answers again once the server does");
    assert!(
        v == Some(serde_json::json!(1)) || v == Some(serde_json::json!(2)),
        "{v:?}"
    );
}

/// The default timeout is 10 s (`NatsKvStoreBuilder::timeout`): above
/// JetStream's 5 s wait for a write's acknowledgement, so that a refused
/// write is `Backend` (`redteam_kv.rs`), not a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_timeout_is_ten_seconds() {
    let server = nats::NatsServer::start().await;
    let store = NatsKvStore::connect(&server.connect().await).await.unwrap();
    store.ensure_session("s").await.unwrap();
    signal(&server, "STOP");
    let r = store.session_exists("s").await;
    signal(&server, "CONT");
    match r {
        Err(snakepit_session::Error::Timeout { operation, after }) => {
            assert_eq!(
                (operation, after),
                ("session_exists", Duration::from_secs(10))
            );
        }
        other => panic!("{other:?}"),
    }
}
