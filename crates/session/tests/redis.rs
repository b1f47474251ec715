//! The shared store suite, against `RedisStore` and a real `redis-server`.
#![cfg(feature = "redis")]

mod common;

use std::time::Duration;

use common::RedisServer;
use snakepit_session::{RedisStore, SessionStore};

async fn make(ttl: Duration, sweep: Duration) -> (RedisStore, RedisServer) {
    let server = RedisServer::start().await;
    let store = RedisStore::builder(&server.url)
        .default_ttl(ttl)
        .sweep_interval(sweep)
        .connect()
        .await
        .unwrap();
    (store, server)
}

store_suite!(make);

/// Two hosts (two connections, two prefixes-worth of isolation aside) see
/// the same sessions: what one writes, the other reads.
#[tokio::test]
async fn shared_between_hosts() {
    let (a, server) = make(Duration::from_secs(60), Duration::from_secs(60)).await;
    let b = RedisStore::connect(&server.url).await.unwrap();
    a.ensure_session("u1").await.unwrap();
    a.set("u1", "fact", serde_json::json!("likes tea"))
        .await
        .unwrap();
    assert_eq!(
        b.get("u1", "fact").await.unwrap(),
        Some(serde_json::json!("likes tea"))
    );
    // Another prefix is another namespace on the same server.
    let c = RedisStore::builder(&server.url)
        .prefix("other:")
        .connect()
        .await
        .unwrap();
    assert!(!c.session_exists("u1").await.unwrap());
}

#[tokio::test]
async fn unreachable_server_is_a_backend_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = RedisStore::connect(format!("redis://127.0.0.1:{port}/"))
        .await
        .unwrap_err();
    assert!(matches!(err, snakepit_session::Error::Backend(_)), "{err}");
}

/// A session's hash and its entry in the expiry index end at the same
/// millisecond: once `list_sessions` no longer names a session (and
/// `stats` no longer counts it active), the next `cleanup_expired`
/// reports its end. Before, the hash was given its TTL from the server's
/// clock to the microsecond and the index from the same clock to the
/// millisecond, so for up to a millisecond a session was neither listed
/// nor sweepable, and a store's figures could say 49 created, 48 expired
/// and none active (`expiry_racing_with_touches_reports_each_session_end_once`
/// failed that way under load). Each of 200 sessions of 3 ms is watched
/// without pause until it leaves the list, then swept at once.
#[tokio::test]
async fn a_session_gone_from_the_list_is_swept_at_once() {
    let (store, _server) = make(Duration::from_millis(3), Duration::from_secs(3600)).await;
    let mut late = Vec::new();
    for i in 0..200 {
        let id = format!("s{i}");
        store.ensure_session(&id).await.unwrap();
        while store.list_sessions().await.unwrap().contains(&id) {}
        let swept = store.cleanup_expired().await.unwrap();
        if swept != 1 {
            late.push((i, swept));
        }
    }
    let stats = store.stats().await.unwrap();
    assert!(
        late.is_empty(),
        "sessions gone from the list but not swept at once: {late:?}; {stats:?}"
    );
    assert_eq!(
        (
            stats.sessions_created,
            stats.sessions_expired,
            stats.active_sessions
        ),
        (200, 200, 0),
        "{stats:?}"
    );
}
