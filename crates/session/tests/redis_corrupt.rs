//! docs/sessions.md, Errors: "`Corrupt` (stored data that does not parse)",
//! for a session whose TTL field holds garbage, against a real
//! `redis-server`. The TTL is read by the server's own scripts (each use
//! slides the expiry by it), not only by the host, so every operation that
//! uses the session must see the garbage as `Corrupt`, not as a `Backend`
//! failure, and must write nothing on the way.
#![cfg(feature = "redis")]

mod common;
mod redis_server;

use redis_server::redis_cli;
use redis_server::Redis;
use serde_json::json;
use snakepit_session::{Error, RedisStore, SessionStore};

fn corrupt<T: std::fmt::Debug>(op: &str, got: Result<T, Error>) {
    match got {
        Err(Error::Corrupt(msg)) => assert!(
            msg.contains("`s`") && msg.contains("forever"),
            "{op}: the error names the session and the value: {msg}"
        ),
        other => panic!("{op}: expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_in_a_sessions_ttl_is_corrupt_for_every_operation_that_uses_it() {
    let redis = Redis::start().await;
    let store = RedisStore::connect(redis.url()).await.unwrap();
    store.create_session("s", None).await.unwrap();
    store.set("s", "k", json!(1)).await.unwrap();
    redis_cli(redis.port, &["HSET", "snakepit:s:s", "t", "forever"]);
    let key_before = redis_cli(redis.port, &["HGETALL", "snakepit:s:s"]);
    let expiry_before = redis_cli(redis.port, &["PTTL", "snakepit:s:s"]);

    corrupt("get_session", store.get_session("s").await);
    corrupt("get", store.get("s", "k").await);
    corrupt("set", store.set("s", "k", json!(2)).await);
    corrupt("delete", store.delete("s", "k").await);
    corrupt(
        "store_program",
        store.store_program("s", "p", json!({"src": "x"})).await,
    );
    corrupt("get_program", store.get_program("s", "p").await);
    corrupt("ensure_session", store.ensure_session("s").await);
    corrupt(
        "update_session",
        store
            .update_session("s", |s| {
                s.metadata.insert("x".into(), json!(1));
            })
            .await,
    );

    // Nothing was written by the operations that failed: the hash and its
    // expiry are as they were.
    assert_eq!(
        redis_cli(redis.port, &["HGETALL", "snakepit:s:s"]),
        key_before
    );
    let expiry_after: i64 = redis_cli(redis.port, &["PTTL", "snakepit:s:s"])
        .parse()
        .unwrap();
    assert!(expiry_after <= expiry_before.parse().unwrap());

    // The other sessions are untouched, and the corrupt one can be deleted.
    store.create_session("ok", None).await.unwrap();
    store.set("ok", "k", json!(3)).await.unwrap();
    assert_eq!(store.get("ok", "k").await.unwrap(), Some(json!(3)));
    assert!(store.delete_session("s").await.unwrap());
    assert!(!store.session_exists("s").await.unwrap());
}
