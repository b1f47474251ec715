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
