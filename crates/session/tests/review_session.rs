//! Code review of crates/session/src (memory and Redis stores) for logic
//! bugs, each suspicion shown against a real `redis-server` (127.0.0.1, a
//! port of its own, no persistence, killed by the test): an update that
//! spans a restart of a Redis without persistence, two store handles (two
//! hosts) writing one session at once, and a write to a session the server
//! lost.
#![cfg(feature = "redis")]

mod common;
mod redis_server;

use std::sync::Arc;
use std::time::Duration;

use redis_server::Redis;
use serde_json::json;
use snakepit_session::{Error, MemoryStore, RedisStore, SessionStore};

async fn store(url: &str) -> RedisStore {
    RedisStore::builder(url)
        .timeout(Duration::from_secs(10))
        .sweep_interval(Duration::from_secs(3600))
        .connect()
        .await
        .unwrap()
}

/// Retries `op` while Redis is coming back (the first operation on a
/// dropped connection fails and reconnects).
async fn retried<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut last = None;
    for _ in 0..100 {
        match op().await {
            Ok(v) => return v,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} kept failing: {last:?}");
}

/// sessions.md: "each creation of an id has an incarnation of its own
/// ... so an update never lands on a session deleted and created again
/// since it read it, not even across a restart of the server"; and "a Redis without persistence comes back empty, and
/// `ensure_session` creates them afresh".
///
/// An update reads session `u` (version 2, incarnation 1) and computes for
/// a while; meanwhile Redis (no persistence) is restarted, and the same
/// store creates `u` afresh and sets one key: version 2 and, the counter
/// in `stats` having restarted with the server, incarnation 1 again. With
/// the counter alone as the incarnation, the update's compare-and-swap
/// matched and wrote the lost session's data
/// (`x: "old"`) back over the new session's (`x: "new"`). It must see
/// that the session changed, and retry on the session as it is now.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_an_update_spanning_a_restart_never_lands_on_the_new_session() {
    let mut redis = Redis::start().await;
    let store = store(&redis.url()).await;
    store.create_session("u", None).await.unwrap();
    store.set("u", "x", json!("old")).await.unwrap();
    let (read_tx, read_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    // The update runs on a thread (and runtime) of its own: its closure
    // blocks that thread while the test goes on here.
    let updater = {
        let store = store.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let mut first = true;
            rt.block_on(store.update_session("u", move |s| {
                if std::mem::take(&mut first) {
                    // The session is read: hold the update here (user code
                    // computing) until the server was replaced.
                    read_tx.send(()).unwrap();
                    go_rx.recv_timeout(Duration::from_secs(30)).unwrap();
                }
                s.metadata.insert("updated".into(), json!(true));
            }))
        })
    };
    tokio::task::spawn_blocking(move || read_rx.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the update read the session");
    redis.kill();
    redis.run().await;
    retried("ensure_session after the restart", || {
        store.ensure_session("u")
    })
    .await;
    store.set("u", "x", json!("new")).await.unwrap();
    go_tx.send(()).unwrap();
    let updated = tokio::task::spawn_blocking(move || updater.join().unwrap())
        .await
        .unwrap();
    let now = store.get_session("u").await.unwrap();
    assert_eq!(
        now.data.get("x"),
        Some(&json!("new")),
        "the new session's data survives; the update returned {updated:?}"
    );
    // The swap found another incarnation: the update read the session
    // again and applied itself to what is there now (compare-and-swap,
    // retrying), never to the copy it read before the restart.
    let updated = updated.expect("the update retries on the session as it is now");
    assert_eq!(updated.data.get("x"), Some(&json!("new")), "{updated:?}");
    assert_eq!(now.metadata.get("updated"), Some(&json!(true)), "{now:?}");
}

/// Two store handles on one server (two hosts) write one session at once:
/// one runs read-modify-write updates (a counter in the metadata), the
/// other sets and deletes data keys. Per-key writes bump the version, so
/// no update erases a `set`, and no `set` is lost to an update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_two_handles_mixing_updates_sets_and_deletes_lose_nothing() {
    let redis = Redis::start().await;
    let a = store(&redis.url()).await;
    let b = store(&redis.url()).await;
    a.create_session("shared", None).await.unwrap();
    let updates = {
        let a = a.clone();
        tokio::spawn(async move {
            for _ in 0..60 {
                a.update_session("shared", |s| {
                    let n = s.metadata.get("n").and_then(|v| v.as_u64()).unwrap_or(0);
                    s.metadata.insert("n".into(), json!(n + 1));
                })
                .await
                .unwrap();
            }
        })
    };
    let sets = {
        let b = b.clone();
        tokio::spawn(async move {
            for i in 0..60 {
                b.set("shared", &format!("k{i}"), json!(i)).await.unwrap();
                if i % 3 == 0 {
                    assert!(b.delete("shared", &format!("k{i}")).await.unwrap());
                }
            }
        })
    };
    updates.await.unwrap();
    sets.await.unwrap();
    let s = b.get_session("shared").await.unwrap();
    assert_eq!(s.metadata["n"], json!(60), "every update counted");
    for i in 0..60 {
        let want = (i % 3 != 0).then(|| json!(i));
        assert_eq!(s.data.get(&format!("k{i}")).cloned(), want, "k{i}");
    }
}

/// A Redis without persistence that restarts comes back empty: a write to
/// a session it lost is `NotFound` (the caller hears of it), never an `Ok`
/// for a value stored nowhere; a read is `NotFound` too, and after
/// `ensure_session` the session is new and empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_writes_to_a_session_lost_in_a_restart_are_not_found() {
    let mut redis = Redis::start().await;
    let store = store(&redis.url()).await;
    store.ensure_session("gone").await.unwrap();
    store.set("gone", "k", json!(1)).await.unwrap();
    redis.kill();
    redis.run().await;
    let err = retried("the first operation after the restart", || async {
        match store.set("gone", "k", json!(2)).await {
            Err(e) if e.is_gone() => Ok(e),
            Err(e @ (Error::Backend(_) | Error::Timeout { .. })) => Err(e),
            other => panic!("a set to a lost session: {other:?}"),
        }
    })
    .await;
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    assert!(store.get("gone", "k").await.unwrap_err().is_gone());
    assert!(store
        .update_session("gone", |_| {})
        .await
        .unwrap_err()
        .is_gone());
    store.ensure_session("gone").await.unwrap();
    assert_eq!(store.get("gone", "k").await.unwrap(), None);
}

/// Session ids made of Redis and NATS syntax, glob characters, spaces and
/// non-ASCII are each a session of their own in the Redis store, and
/// `list_sessions` and the sweep name them as given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hostile_ids_are_sessions_of_their_own_and_expire_by_name() {
    let redis = Redis::start().await;
    let store = RedisStore::builder(redis.url())
        .sweep_interval(Duration::from_secs(3600))
        .connect()
        .await
        .unwrap();
    let ends = common::record_ends(&store);
    let ids = [
        "*", "?", "[a-z]", "s:x", "idx", "stats", "g", "a b", "é✓", "x\u{0}y", "\r\n", "..",
    ];
    for (n, id) in ids.iter().enumerate() {
        store
            .create_session(id, Some(Duration::from_millis(300)))
            .await
            .unwrap();
        store.set(id, "k", json!(n)).await.unwrap();
    }
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(store.get(id, "k").await.unwrap(), Some(json!(n)), "{id:?}");
    }
    let mut listed = store.list_sessions().await.unwrap();
    listed.sort();
    let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(listed, want);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.cleanup_expired().await.unwrap(), ids.len());
    let mut ended: Vec<String> = ends
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.clone())
        .collect();
    ended.sort();
    assert_eq!(ended, want);
    // The store's own keys were not touched by sessions named like them.
    assert_eq!(
        store.stats().await.unwrap().sessions_expired,
        ids.len() as u64
    );
}

/// MemoryStore from many threads: updates, sets and deletes of one session
/// at once lose nothing (each runs under the session's shard lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_updates_sets_and_deletes_from_many_tasks_lose_nothing() {
    let store = Arc::new(MemoryStore::new());
    store.create_session("m", None).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200 {
                store
                    .update_session("m", |s| {
                        let n = s.metadata.get("n").and_then(|v| v.as_u64()).unwrap_or(0);
                        s.metadata.insert("n".into(), json!(n + 1));
                    })
                    .await
                    .unwrap();
                store
                    .set("m", &format!("t{t}-{i}"), json!(i))
                    .await
                    .unwrap();
                if i % 2 == 0 {
                    assert!(store.delete("m", &format!("t{t}-{i}")).await.unwrap());
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = store.get_session("m").await.unwrap();
    assert_eq!(s.metadata["n"], json!(1600));
    assert_eq!(s.data.len(), 800);
}
