//! sessions.md, "When Redis goes away", seen through a pool: with
//! `redis-server` paused (SIGSTOP: alive, silent), a session call fails with
//! `snakepit_core::Error::Session` naming the store's timeout and never
//! runs; a call whose deadline ends first gets `CallTimeout`; a handler
//! already running gets `SessionStoreError` from its `ctx.session`; after
//! SIGCONT the same pool and store work again.
#![cfg(feature = "redis")]

mod common;
mod redis_server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redis_server::Redis;
use serde_json::{json, Value};
use snakepit_core::Pool;
use snakepit_session::{RedisStore, SessionStore};
use snakepit_tests::until;

/// The store's timeout: short, so that the test is quick.
const TIMEOUT: Duration = Duration::from_millis(300);

/// Only turns a hang into a failure of this test.
const GUARD: Duration = Duration::from_secs(30);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "snakepit-redis-paused-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Calls `wait_then_get` in `session`, waits until the handler runs (its
/// session touched, so the store was reached), then runs `meanwhile` and
/// lets the handler call `session.get`. What the handler answered.
async fn get_after(pool: &Pool, session: &str, meanwhile: impl FnOnce()) -> Value {
    let dir = temp_dir(session);
    let (started, go) = (dir.join("started"), dir.join("go"));
    let call = {
        let (pool, session) = (pool.clone(), session.to_owned());
        let args = json!({"key": "k", "started": started, "go": go});
        tokio::spawn(async move {
            pool.execute_in_session(&session, "wait_then_get", args)
                .await
        })
    };
    until(30, "the handler started", || {
        let started = started.clone();
        async move { started.exists() }
    })
    .await;
    meanwhile();
    std::fs::write(&go, b"").unwrap();
    let r = tokio::time::timeout(GUARD, call)
        .await
        .expect("the call returns")
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// sessions.md: "Redis paused ... every operation ... gives up after the
/// store's timeout ... with `Error::Timeout` naming the operation and the
/// timeout" and "Through the pool such a failure is
/// `snakepit_core::Error::Session` and the call never ran"; "Failures reach
/// the worker as a host-call error ...: `SessionStoreError` (the store
/// failed: Redis down or not answering)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_fails_session_calls_with_the_session_error_then_recovers() {
    let redis = Redis::start().await;
    let store = Arc::new(
        RedisStore::builder(redis.url())
            .timeout(TIMEOUT)
            .connect()
            .await
            .unwrap(),
    );
    let pool = common::waiting_pool(store.clone()).await;
    store.ensure_session("user").await.unwrap();
    store.set("user", "k", json!("kept")).await.unwrap();
    let r = get_after(&pool, "user", || {}).await;
    assert_eq!(r, json!({"value": "kept"}), "the control: Redis answers");

    // Paused while a handler runs: its `ctx.session.get` fails with the
    // documented type, after the store's timeout.
    let r = get_after(&pool, "user", || redis.signal("STOP")).await;
    assert_eq!(r["caught"], "SessionStoreError", "{r}");
    let message = r["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`get` timed out after 300ms"),
        "names the operation and the timeout: {r}"
    );

    // A new session call: the session touch times out, the call never runs.
    let err = tokio::time::timeout(
        GUARD,
        pool.execute_in_session("user", "wait_then_get", json!({})),
    )
    .await
    .expect("a session call with Redis paused returns")
    .unwrap_err();
    assert!(
        matches!(&err, snakepit_core::Error::Session { session_id, .. } if session_id == "user"),
        "{err:?}"
    );
    assert!(err.never_ran(), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("`ensure_session` timed out after 300ms"),
        "names the operation and the timeout: {text}"
    );
    // It never reached the worker.
    assert_eq!(pool.stats().in_flight, 0);

    // "The session touch ... counts against the call's deadline": a call
    // whose deadline (100 ms) ends before the store's timeout (300 ms) ends
    // with `CallTimeout` at its deadline, not with the store's error.
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(
        GUARD,
        pool.execute_with(
            "wait_then_get",
            json!({}),
            snakepit_core::CallOptions::new()
                .session("user")
                .timeout(Duration::from_millis(100)),
        ),
    )
    .await
    .expect("a session call with Redis paused returns")
    .unwrap_err();
    assert!(
        matches!(&err, snakepit_core::Error::CallTimeout { timeout, .. } if *timeout == Duration::from_millis(100)),
        "{err:?} after {:?}",
        started.elapsed()
    );
    assert_eq!(pool.stats().in_flight, 0);

    redis.signal("CONT");
    until(15, "session calls work again after SIGCONT", || async {
        let dir = temp_dir("after");
        let args = json!({"key": "k", "started": dir.join("s"), "go": dir.join("s")});
        let r = pool.execute_in_session("user", "wait_then_get", args).await;
        matches!(r, Ok(v) if v == json!({"value": "kept"}))
    })
    .await;
    pool.shutdown().await.unwrap();
}
