//! A pool wired to a session store, against real Python workers: sessions
//! are created by their first call, workers keep their data on the host
//! through `ctx.session`, and that data survives the worker's death.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::Pool;
use snakepit_session::{attach, MemoryStore, SessionStore};
use snakepit_tests::until;

fn worker() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/session_worker.py")
}

async fn pool<S: SessionStore>(store: Arc<S>, size: usize) -> Pool {
    attach(Pool::builder(Bridge::python(worker())), store)
        .size(size)
        .start()
        .await
        .unwrap()
}

fn kill9(pid: u64) {
    #[allow(clippy::disallowed_methods)] // `kill`, not a worker
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The session's worker is killed; the next call in the session goes to
/// another worker and reads the data the dead one wrote.
async fn survives_worker_death<S: SessionStore>(store: Arc<S>) {
    let pool = pool(store.clone(), 2).await;
    let r = pool
        .execute_in_session(
            "user_42",
            "remember",
            json!({"key": "genre", "value": "sci-fi"}),
        )
        .await
        .unwrap();
    assert_eq!(r["session_id"], "user_42");
    let pid = r["pid"].as_u64().unwrap();
    // Affinity: the session stays on its worker while it is free.
    let r = pool
        .execute_in_session("user_42", "recall", json!({"key": "genre"}))
        .await
        .unwrap();
    assert_eq!(
        (r["pid"].as_u64(), &r["value"]),
        (Some(pid), &json!("sci-fi"))
    );

    kill9(pid);
    until(15, "the pool notices the death", || async {
        !pool.worker_pids().contains(&(pid as u32))
    })
    .await;
    let r = pool
        .execute_in_session("user_42", "recall", json!({"key": "genre"}))
        .await
        .unwrap();
    assert_ne!(r["pid"].as_u64(), Some(pid));
    assert_eq!(r["value"], "sci-fi");
    assert_eq!(
        store.get("user_42", "genre").await.unwrap(),
        Some(json!("sci-fi"))
    );
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_session_survives_worker_death() {
    survives_worker_death(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_create_and_touch_sessions() {
    let store = Arc::new(MemoryStore::new());
    let pool = pool(store.clone(), 2).await;
    assert!(!store.session_exists("fresh").await.unwrap());
    pool.execute_in_session("fresh", "recall", json!({"key": "x"}))
        .await
        .unwrap();
    let first = store.get_session("fresh").await.unwrap();
    pool.execute_with(
        "remember",
        json!({"key": "x", "value": 1}),
        snakepit_core::CallOptions::new().session("fresh"),
    )
    .await
    .unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.sessions_created, stats.active_sessions), (1, 1));
    assert!(store.get_session("fresh").await.unwrap().last_accessed_ms >= first.last_accessed_ms);
    let r = pool
        .execute_in_session("fresh", "forget", json!({"key": "x"}))
        .await
        .unwrap();
    assert_eq!(r["deleted"], true);

    // Deleting the session drops its data (and its affinity): the next call
    // starts a new, empty session.
    pool.execute_in_session("fresh", "remember", json!({"key": "x", "value": 2}))
        .await
        .unwrap();
    assert!(store.delete_session("fresh").await.unwrap());
    let r = pool
        .execute_in_session("fresh", "recall", json!({"key": "x"}))
        .await
        .unwrap();
    assert_eq!(r["value"], Value::Null);
    assert_eq!(store.stats().await.unwrap().sessions_created, 2);
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_sees_the_last_write() {
    let store = Arc::new(MemoryStore::new());
    let pool = pool(store.clone(), 2).await;
    pool.execute_in_session("c", "count", json!({}))
        .await
        .unwrap();
    // One session, calls one after another (a session's calls are ordered by
    // its caller): each sees the last write, whichever worker runs it.
    for i in 2..=20 {
        let n = pool
            .execute_in_session("c", "count", json!({}))
            .await
            .unwrap();
        assert_eq!(n, i);
    }
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_through_host_calls() {
    let store = Arc::new(MemoryStore::new());
    let pool = pool(store.clone(), 1).await;
    store.ensure_session("p").await.unwrap();
    store
        .store_program("p", "prog_1", json!({"model": "gpt-4"}))
        .await
        .unwrap();
    store
        .store_global_program("template_1", json!({"type": "qa_template"}))
        .await
        .unwrap();
    let r = pool
        .execute_in_session("p", "program", json!({"program_id": "prog_1"}))
        .await
        .unwrap();
    assert_eq!(r["model"], "gpt-4");
    let r = pool
        .execute_in_session(
            "p",
            "program",
            json!({"program_id": "template_1", "global": true}),
        )
        .await
        .unwrap();
    assert_eq!(r["type"], "qa_template");
    let err = pool
        .execute_in_session("p", "program", json!({"program_id": "nope"}))
        .await
        .unwrap_err();
    let remote = err.remote().expect("a remote error");
    assert!(remote.message.contains("nope"), "{remote:?}");
    // Session data needs a session: a call outside one gets a typed error.
    let err = pool
        .execute("recall", json!({"key": "x"}))
        .await
        .unwrap_err();
    let remote = err.remote().expect("a remote error");
    assert!(
        format!("{:?} {}", remote.kind, remote.message).contains("NoSession"),
        "{remote:?}"
    );
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_start_empty() {
    let store = Arc::new(
        MemoryStore::builder()
            .default_ttl(Duration::from_millis(200))
            .sweep_interval(Duration::from_millis(50))
            .build(),
    );
    let ends = common::record_ends(&*store);
    let pool = pool(store.clone(), 1).await;
    pool.execute_in_session("e", "remember", json!({"key": "k", "value": 1}))
        .await
        .unwrap();
    until(15, "the session expires and is swept", || async {
        !ends.lock().unwrap().is_empty()
    })
    .await;
    let r = pool
        .execute_in_session("e", "recall", json!({"key": "k"}))
        .await
        .unwrap();
    assert_eq!(r["value"], Value::Null);
    pool.shutdown().await.unwrap();
}

/// One store, three pools (Python, Node.js, Ruby): what one language's
/// worker writes with `ctx.session.set`, the others read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bridge_shares_the_store() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers");
    let store = Arc::new(MemoryStore::new());
    let mut pools = Vec::new();
    for bridge in [
        Bridge::python(dir.join("session_worker.py")),
        Bridge::node(dir.join("session_worker.js")),
        Bridge::ruby(dir.join("session_worker.rb")),
    ] {
        pools.push(
            attach(Pool::builder(bridge), store.clone())
                .size(1)
                .start()
                .await
                .unwrap(),
        );
    }
    for (i, writer) in pools.iter().enumerate() {
        let value = json!({"written_by": i, "list": [1, "two", null]});
        let r = writer
            .execute_in_session("polyglot", "remember", json!({"key": "k", "value": value}))
            .await
            .unwrap();
        assert_eq!(r["session_id"], "polyglot");
        for reader in &pools {
            let r = reader
                .execute_in_session("polyglot", "recall", json!({"key": "k"}))
                .await
                .unwrap();
            assert_eq!(r["value"], value);
        }
    }
    let r = pools[2]
        .execute_in_session("polyglot", "forget", json!({"key": "k"}))
        .await
        .unwrap();
    assert_eq!(r["deleted"], true);
    let r = pools[1]
        .execute_in_session("polyglot", "forget", json!({"key": "k"}))
        .await
        .unwrap();
    assert_eq!(r["deleted"], false);
    assert_eq!(store.stats().await.unwrap().sessions_created, 1);
    for p in pools {
        p.shutdown().await.unwrap();
    }
}

/// Affinity is observable with `FailFast`: a session call whose worker is
/// busy fails at once. Once the session ends (deleted, or expired and
/// swept), the pool has forgotten that worker and the call runs elsewhere.
async fn affinity_dropped_when_session_ends(store: Arc<MemoryStore>, by_delete: bool) {
    use snakepit_core::{Affinity, CallOptions, Error};
    let pool = pool(store.clone(), 2).await;
    let ends = common::record_ends(&*store);
    let fail_fast = || CallOptions::new().session("s").affinity(Affinity::FailFast);
    let busy = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute_in_session("s", "sleep", json!({"seconds": 3}))
                .await
        })
    };
    until(15, "the session's worker is busy", || async {
        pool.stats().busy == 1
    })
    .await;
    let err = pool
        .execute_with("recall", json!({"key": "k"}), fail_fast())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WorkerBusy { .. }), "{err}");
    assert_eq!(pool.stats().sessions, 1);
    if by_delete {
        assert!(store.delete_session("s").await.unwrap());
    } else {
        until(15, "the session expires and is swept", || async {
            !ends.lock().unwrap().is_empty()
        })
        .await;
    }
    assert_eq!(pool.stats().sessions, 0);
    pool.execute_with("recall", json!({"key": "k"}), fail_fast())
        .await
        .unwrap();
    busy.await.unwrap().unwrap();
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_drops_affinity() {
    affinity_dropped_when_session_ends(Arc::new(MemoryStore::new()), true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_drops_affinity() {
    let store = MemoryStore::builder()
        .default_ttl(Duration::from_millis(300))
        .sweep_interval(Duration::from_millis(50))
        .build();
    affinity_dropped_when_session_ends(Arc::new(store), false).await;
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use common::RedisServer;
    use snakepit_session::RedisStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_session_survives_worker_death() {
        let server = RedisServer::start().await;
        let store = Arc::new(RedisStore::connect(&server.url).await.unwrap());
        survives_worker_death(store).await;
    }

    /// Two hosts (two pools, each with its own connection): a session
    /// created and written through one is served by the other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn session_moves_between_hosts() {
        let server = RedisServer::start().await;
        let a = pool(Arc::new(RedisStore::connect(&server.url).await.unwrap()), 1).await;
        let b = pool(Arc::new(RedisStore::connect(&server.url).await.unwrap()), 1).await;
        let ra = a
            .execute_in_session(
                "roaming",
                "remember",
                json!({"key": "k", "value": "from a"}),
            )
            .await
            .unwrap();
        let rb = b
            .execute_in_session("roaming", "recall", json!({"key": "k"}))
            .await
            .unwrap();
        assert_eq!(rb["value"], "from a");
        assert_ne!(ra["pid"], rb["pid"]);
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }

    /// The store is down: session calls fail with a typed error and never
    /// run; calls outside sessions still work.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_down_is_a_session_error() {
        let server = RedisServer::start().await;
        let store = Arc::new(RedisStore::connect(&server.url).await.unwrap());
        let pool = pool(store, 1).await;
        drop(server);
        let err = pool
            .execute_in_session("s", "recall", json!({"key": "k"}))
            .await
            .unwrap_err();
        assert!(
            matches!(err, snakepit_core::Error::Session { .. }) && err.never_ran(),
            "{err}"
        );
        let err = pool
            .execute("recall", json!({"key": "k"}))
            .await
            .unwrap_err();
        assert!(err.remote().is_some(), "{err}");
        pool.shutdown().await.unwrap();
    }
}
