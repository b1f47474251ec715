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
