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
