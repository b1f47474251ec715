//! Round 7 of outside review of `snakepit-cluster`: `NatsKvStore`'s global
//! programs expire as the memory and Redis stores' do
//! (`global_program_ttl`, counted from when each was stored; docs/
//! sessions.md, docs/cluster.md), against a real nats-server with
//! JetStream. The scenarios are those of
//! `crates/session/tests/outside_round7.rs` for the other stores, plus
//! what is particular to a bucket shared by hosts: the expiry is kept with
//! the program, so every handle sees it, and one stored before there was
//! a TTL (no expiry kept) never expires.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use snakepit_cluster::NatsKvStore;
use snakepit_session::{Error, SessionStore};

fn not_found(r: Result<Value, Error>) -> bool {
    matches!(
        r,
        Err(Error::ProgramNotFound {
            session_id: None,
            ..
        })
    )
}

/// Long enough that the operations right after a store, on a loaded
/// machine, still find the program alive.
const SHORT: Duration = Duration::from_secs(4);

/// A store on `nats` whose sweep does not run during a test (unless
/// `cleanup_expired` is called), with `global_ttl` if given.
async fn store(nats: &NatsServer, global_ttl: Option<Duration>) -> NatsKvStore {
    let b = NatsKvStore::builder(&nats.connect().await).sweep_interval(Duration::from_secs(3600));
    match global_ttl {
        Some(t) => b.global_program_ttl(t),
        None => b,
    }
    .connect()
    .await
    .unwrap()
}

/// The bucket itself, to plant and inspect what a store wrote.
async fn bucket(nats: &NatsServer) -> async_nats::jetstream::kv::Store {
    async_nats::jetstream::new(nats.connect().await)
        .get_key_value("snakepit_sessions")
        .await
        .unwrap()
}

/// The keys the bucket holds a value at.
async fn keys(nats: &NatsServer) -> Vec<String> {
    let mut keys = bucket(nats).await.keys().await.unwrap();
    let mut out = Vec::new();
    while let Some(k) = keys.next().await {
        out.push(k.unwrap());
    }
    out.sort();
    out
}

fn counts(s: &snakepit_session::StoreStats) -> (u64, u64, u64) {
    (
        s.global_programs,
        s.global_programs_deleted,
        s.global_programs_expired,
    )
}

/// Without a TTL: `delete_global_program` as before, nothing counted as
/// expired, and nothing expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_global_program_ttl_global_programs_stay_until_deleted() {
    let nats = NatsServer::start().await;
    let store = store(&nats, None).await;
    store
        .store_global_program("template_1", json!({"prompt": "{q}"}))
        .await
        .unwrap();
    store
        .store_global_program("template_2", json!(2))
        .await
        .unwrap();
    assert_eq!(store.stats().await.unwrap().global_programs, 2);
    assert!(store.delete_global_program("template_1").await.unwrap());
    assert!(not_found(store.get_global_program("template_1").await));
    assert!(!store.delete_global_program("template_1").await.unwrap());
    store.cleanup_expired().await.unwrap();
    assert_eq!(
        store.get_global_program("template_2").await.unwrap(),
        json!(2)
    );
    assert_eq!(counts(&store.stats().await.unwrap()), (1, 1, 0));
    // Without a TTL no expiry is kept: the program is stored as before.
    assert_eq!(expiry_kept(&nats, "g.74656d706c6174655f32").await, None);
}

/// The expiry kept with the program at `key`, if any.
async fn expiry_kept(nats: &NatsServer, key: &str) -> Option<String> {
    let m = bucket(nats)
        .await
        .stream
        .get_last_raw_message_by_subject(&format!("$KV.snakepit_sessions.{key}"))
        .await
        .unwrap();
    m.headers
        .get("Snakepit-Expires-Ms")
        .map(|v| v.as_str().to_owned())
}

/// With a `global_program_ttl`, a global program ends that long after it
/// was stored: reads do not extend it (it ends while being read over and
/// over), it is not counted in `global_programs` from then on, its
/// removal by `cleanup_expired` is counted once in
/// `global_programs_expired`, and a delete of it answers `false` (and
/// counts it expired). Storing it again gives it a new life. Sessions are
/// not touched by it, and the bucket keeps nothing of the expired ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_programs_expire_after_their_ttl() {
    let nats = NatsServer::start().await;
    let store = store(&nats, Some(SHORT)).await;
    store.ensure_session("s").await.unwrap();
    store.store_global_program("short", json!(1)).await.unwrap();
    assert!(expiry_kept(&nats, "g.73686f7274").await.is_some());
    store.store_global_program("other", json!(2)).await.unwrap();
    eventually(60, "the global programs expire while read", || async {
        not_found(store.get_global_program("short").await)
    })
    .await;
    eventually(30, "the other one expires too", || async {
        not_found(store.get_global_program("other").await)
    })
    .await;
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.global_programs, 0, "{stats:?}");
    // `other` is removed by the cleanup, `short` by a delete that finds it
    // expired: each counted once as expired, neither as deleted.
    assert!(!store.delete_global_program("short").await.unwrap());
    store.cleanup_expired().await.unwrap();
    store.cleanup_expired().await.unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!(counts(&stats), (0, 0, 2), "{stats:?}");
    assert!(store.session_exists("s").await.unwrap());
    assert_eq!(keys(&nats).await, vec!["s.73".to_string()]);

    store.store_global_program("short", json!(3)).await.unwrap();
    assert_eq!(store.get_global_program("short").await.unwrap(), json!(3));
    assert_eq!(store.stats().await.unwrap().global_programs, 1);
}

/// A program stored over one that expired but was not removed yet counts
/// that one as expired, and lives anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storing_over_an_expired_global_program_counts_it_once() {
    let nats = NatsServer::start().await;
    let store = store(&nats, Some(SHORT)).await;
    store.store_global_program("p", json!("old")).await.unwrap();
    eventually(60, "it expires", || async {
        not_found(store.get_global_program("p").await)
    })
    .await;
    store.store_global_program("p", json!("new")).await.unwrap();
    assert_eq!(store.get_global_program("p").await.unwrap(), json!("new"));
    store.cleanup_expired().await.unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!(counts(&stats), (1, 0, 1), "{stats:?}");
    assert_eq!(store.get_global_program("p").await.unwrap(), json!("new"));
}

/// The background sweep removes expired global programs too, and counts
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_removes_expired_global_programs() {
    let nats = NatsServer::start().await;
    let store = NatsKvStore::builder(&nats.connect().await)
        .sweep_interval(Duration::from_millis(50))
        .global_program_ttl(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    store.store_global_program("p", json!(1)).await.unwrap();
    eventually(60, "the sweep counts the expiry", || async {
        store.stats().await.unwrap().global_programs_expired == 1
    })
    .await;
    assert!(not_found(store.get_global_program("p").await));
    assert!(keys(&nats).await.is_empty());
}

/// Two hosts on one bucket: `a` stores with a TTL, `b` has none. The
/// expiry is the program's own, so `b` sees it end too, and either may
/// remove it; two removing it at once count it once between them. A
/// program `b` stores again is one that does not expire, for `a` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_program_ends_are_shared_by_hosts() {
    let nats = NatsServer::start().await;
    let (a, b) = (store(&nats, Some(SHORT)).await, store(&nats, None).await);
    b.store_global_program("p", json!(1)).await.unwrap();
    assert_eq!(a.get_global_program("p").await.unwrap(), json!(1));
    assert!(a.delete_global_program("p").await.unwrap());
    assert!(not_found(b.get_global_program("p").await));

    a.store_global_program("q", json!(2)).await.unwrap();
    a.store_global_program("r", json!(3)).await.unwrap();
    assert_eq!(b.get_global_program("q").await.unwrap(), json!(2));
    eventually(60, "b sees a's programs expire", || async {
        not_found(b.get_global_program("q").await) && not_found(b.get_global_program("r").await)
    })
    .await;
    assert_eq!(b.stats().await.unwrap().global_programs, 0);
    // Both remove `r` at once (one by its sweep, one by a delete): it
    // is counted once, as expired.
    let (swept, deleted) = tokio::join!(a.cleanup_expired(), b.delete_global_program("r"));
    swept.unwrap();
    assert!(!deleted.unwrap());
    // Stored again by `b`, which has no TTL: it stays, for `a` too.
    b.store_global_program("q", json!(4)).await.unwrap();
    a.cleanup_expired().await.unwrap();
    b.cleanup_expired().await.unwrap();
    assert_eq!(a.get_global_program("q").await.unwrap(), json!(4));
    let (sa, sb) = (a.stats().await.unwrap(), b.stats().await.unwrap());
    assert_eq!((sa.global_programs, sb.global_programs), (1, 1));
    assert_eq!(
        sa.global_programs_expired + sb.global_programs_expired,
        2,
        "q (replaced by b's store) and r, once each: {sa:?} {sb:?}"
    );
    assert_eq!(
        sa.global_programs_deleted + sb.global_programs_deleted,
        1,
        "{sa:?} {sb:?}"
    );
    assert_eq!(keys(&nats).await, vec!["g.71".to_string()]);
}

/// A program stored before there was a TTL (its message says no expiry,
/// as the store wrote them until now) never expires, even read through a
/// store with a TTL; as one whose expiry does not parse (written by
/// something else). One that says it has expired is gone for every store,
/// with a TTL or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_stored_without_an_expiry_never_expire() {
    let nats = NatsServer::start().await;
    let store = store(&nats, Some(Duration::from_millis(100))).await;
    let kv = bucket(&nats).await;
    let js = async_nats::jetstream::new(nats.connect().await);
    // "p", "q", "r" as hex.
    kv.put("g.70", r#"{"old": true}"#.into()).await.unwrap();
    let mut h = async_nats::HeaderMap::new();
    h.insert("Snakepit-Expires-Ms", "soon");
    js.publish_with_headers("$KV.snakepit_sessions.g.71", h, "7".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let past = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 1000;
    let mut h = async_nats::HeaderMap::new();
    h.insert("Snakepit-Expires-Ms", past.to_string());
    js.publish_with_headers("$KV.snakepit_sessions.g.72", h, "8".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let plain = self::store(&nats, None).await;
    for s in [&store, &plain] {
        assert!(not_found(s.get_global_program("r").await));
    }
    // Past the store's TTL, twice over.
    tokio::time::sleep(Duration::from_millis(300)).await;
    store.cleanup_expired().await.unwrap();
    for s in [&store, &plain] {
        assert_eq!(s.get_global_program("p").await.unwrap()["old"], true);
        assert_eq!(s.get_global_program("q").await.unwrap(), json!(7));
    }
    let stats = store.stats().await.unwrap();
    assert_eq!(counts(&stats), (2, 0, 1), "{stats:?}");
    assert_eq!(
        keys(&nats).await,
        vec!["g.70".to_string(), "g.71".to_string()]
    );
}

/// `connect` refuses a `global_program_ttl` no session may have, with
/// `Invalid`, as it does such a `default_ttl`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_program_ttl_out_of_range_is_invalid() {
    let nats = NatsServer::start().await;
    for ttl in [
        Duration::ZERO,
        snakepit_session::MAX_TTL + Duration::from_millis(1),
    ] {
        let r = NatsKvStore::builder(&nats.connect().await)
            .global_program_ttl(ttl)
            .connect()
            .await;
        assert!(matches!(r, Err(Error::Invalid { .. })), "{ttl:?}: {r:?}");
    }
    // The longest one allowed is taken, and the program stays.
    let s = store(&nats, Some(snakepit_session::MAX_TTL)).await;
    s.store_global_program("p", json!(1)).await.unwrap();
    assert_eq!(s.get_global_program("p").await.unwrap(), json!(1));
}
