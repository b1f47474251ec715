//! Recovery after Redis was paused (SIGSTOP: alive, silent), tested without
//! retry loops: once `redis-server` is resumed (SIGCONT) and answers `PING`,
//! plus one second, the very FIRST operation of the store, and the very
//! first session call through a pool made with `snakepit_session::attach`,
//! must succeed. A stale error left over from the pause (a connection that
//! timed out, a reconnection tried while Redis was silent) must not reach
//! the caller once Redis is back.
//!
//! docs/sessions.md, "When Redis goes away":
//! "Redis paused, overloaded or unreachable (no answer at all): every
//! operation, reconnecting included, gives up after the store's timeout
//! ... A timeout also opens a fresh connection in the background (one at a
//! time), so a connection that hangs without ever dropping ... is replaced
//! as soon as a new one can be made"; and `RedisStore`'s doc
//! (crates/session/src/redis_store.rs): "operations fail ... and succeed
//! again as soon as it is back, without a new store".
#![cfg(feature = "redis")]

mod common;
mod redis_server;

use std::sync::Arc;
use std::time::Duration;

use redis_server::{redis_cli, Redis};
use serde_json::json;
use snakepit_session::{Error, RedisStore, SessionStore};
use snakepit_tests::until;

/// The store's timeout: short, so that the test is quick.
const TIMEOUT: Duration = Duration::from_millis(300);

/// Only turns a hang into a failure of this test.
const GUARD: Duration = Duration::from_secs(30);

/// A timeout error naming `op` and the store's timeout.
fn is_timeout(err: &Error, op: &str) -> bool {
    matches!(err, Error::Timeout { operation, after } if *operation == op && *after == TIMEOUT)
}

async fn store(redis: &Redis) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::builder(redis.url())
            .timeout(TIMEOUT)
            .connect()
            .await
            .unwrap(),
    )
}

/// Resumes the server, waits until it answers `PING` (through redis-cli, not
/// through the store under test), then one second more.
async fn resume(redis: &Redis) {
    redis.signal("CONT");
    let port = redis.port;
    until(
        15,
        "redis-server answers PING after SIGCONT",
        || async move {
            tokio::task::spawn_blocking(move || redis_cli(port, &["PING"]) == "PONG")
                .await
                .unwrap()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// `n` operations in a row with Redis paused, each one timing out, with a
/// pause between them long enough for the background reconnection started
/// by the previous timeout to time out too; then a burst of concurrent ones.
async fn time_out_repeatedly(store: &RedisStore, n: usize) {
    for i in 0..n {
        let err = tokio::time::timeout(GUARD, store.get("s", "k"))
            .await
            .expect("a call to a paused server returns")
            .unwrap_err();
        assert!(is_timeout(&err, "get"), "timeout #{i}: {err:?}");
        tokio::time::sleep(TIMEOUT * 2).await;
    }
    let (a, b, c) = tokio::time::timeout(GUARD, async {
        tokio::join!(
            store.ensure_session("s"),
            store.set("s", "other", json!(1)),
            store.stats(),
        )
    })
    .await
    .expect("calls to a paused server return");
    assert!(is_timeout(&a.unwrap_err(), "ensure_session"));
    assert!(is_timeout(&b.unwrap_err(), "set"));
    assert!(is_timeout(&c.unwrap_err(), "stats"));
}

/// One timeout while Redis is paused; after SIGCONT + PING + 1 s, the first
/// operation (a read) succeeds, and so do the next ones (a write, a read of
/// it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_store_operation_after_a_short_pause_succeeds() {
    let redis = Redis::start().await;
    let store = store(&redis).await;
    store.ensure_session("s").await.unwrap();
    store.set("s", "k", json!("kept")).await.unwrap();

    redis.signal("STOP");
    let err = tokio::time::timeout(GUARD, store.get("s", "k"))
        .await
        .expect("a call to a paused server returns")
        .unwrap_err();
    assert!(is_timeout(&err, "get"), "{err:?}");
    resume(&redis).await;

    let first = tokio::time::timeout(GUARD, store.get("s", "k"))
        .await
        .expect("returns");
    assert_eq!(
        first.map_err(|e| e.to_string()),
        Ok(Some(json!("kept"))),
        "the first operation after Redis answers PING again"
    );
    store.set("s", "k2", json!("new")).await.unwrap();
    assert_eq!(store.get("s", "k2").await.unwrap(), Some(json!("new")));
}

/// A first operation that WRITES, after a pause: succeeds, and is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_store_write_after_a_pause_succeeds_and_is_applied() {
    let redis = Redis::start().await;
    let store = store(&redis).await;
    store.ensure_session("s").await.unwrap();

    redis.signal("STOP");
    let err = tokio::time::timeout(GUARD, store.set("s", "k", json!("lost?")))
        .await
        .expect("a call to a paused server returns")
        .unwrap_err();
    assert!(is_timeout(&err, "set"), "{err:?}");
    resume(&redis).await;

    let first = tokio::time::timeout(GUARD, store.set("s", "k", json!("after")))
        .await
        .expect("returns");
    assert_eq!(
        first.map_err(|e| e.to_string()),
        Ok(()),
        "the first operation after Redis answers PING again"
    );
    assert_eq!(store.get("s", "k").await.unwrap(), Some(json!("after")));
}

/// A pause long enough for several timeouts in a row (and several
/// background reconnections, each timing out too): the first operation after
/// the resume still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_store_operation_after_several_timeouts_in_a_row_succeeds() {
    let redis = Redis::start().await;
    let store = store(&redis).await;
    store.ensure_session("s").await.unwrap();
    store.set("s", "k", json!("kept")).await.unwrap();

    redis.signal("STOP");
    time_out_repeatedly(&store, 5).await;
    resume(&redis).await;

    let first = tokio::time::timeout(GUARD, store.get("s", "k"))
        .await
        .expect("returns");
    assert_eq!(
        first.map_err(|e| e.to_string()),
        Ok(Some(json!("kept"))),
        "the first operation after Redis answers PING again"
    );
    let stats = store.stats().await.unwrap();
    assert!(stats.active_sessions >= 1, "{stats:?}");
}

/// The first session call through an attached pool after a pause. The call
/// made while Redis is paused fails with the documented `Error::Session`;
/// the first one after the resume succeeds, its handler's
/// `ctx.session.get` included.
async fn first_pool_call_after_pause(timeouts_in_a_row: usize) {
    let redis = Redis::start().await;
    let store = store(&redis).await;
    let pool = common::waiting_pool(store.clone()).await;
    store.ensure_session("user").await.unwrap();
    store.set("user", "k", json!("kept")).await.unwrap();
    let dir = std::env::temp_dir().join(format!(
        "snakepit-outside-redis-pause-{}-{timeouts_in_a_row}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // `started` == `go`: the handler goes on at once.
    let args = json!({"key": "k", "started": dir.join("s"), "go": dir.join("s")});

    redis.signal("STOP");
    for i in 0..timeouts_in_a_row {
        let err = tokio::time::timeout(
            GUARD,
            pool.execute_in_session("user", "wait_then_get", args.clone()),
        )
        .await
        .expect("a session call with Redis paused returns")
        .unwrap_err();
        assert!(
            matches!(&err, snakepit_core::Error::Session { .. }) && err.never_ran(),
            "call #{i} with Redis paused: {err:?}"
        );
        tokio::time::sleep(TIMEOUT * 2).await;
    }
    resume(&redis).await;

    let first = tokio::time::timeout(
        GUARD,
        pool.execute_in_session("user", "wait_then_get", args.clone()),
    )
    .await
    .expect("returns");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        first.map_err(|e| e.to_string()),
        Ok(json!({"value": "kept"})),
        "the first session call after Redis answers PING again"
    );
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_pool_session_call_after_a_short_pause_succeeds() {
    first_pool_call_after_pause(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_pool_session_call_after_several_timeouts_in_a_row_succeeds() {
    first_pool_call_after_pause(4).await;
}
