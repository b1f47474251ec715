//! Hostile and unusual session ids, key prefixes and TTLs, against
//! `MemoryStore` and a real `redis-server` (`RedisStore`), and through a
//! pool of real Python workers. Each Redis test starts its own server on a
//! free 127.0.0.1 port and stops it.
//!
//! Run: `cargo test -p snakepit-session --features redis --test outside_session_ids`
#![cfg(feature = "redis")]

mod common;
mod ids;
mod redis_server;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::record_ends;
use ids::{
    a_new_session_recalls_nothing, affinity_until_deleted, deletions_heard, each_id_live,
    each_id_reads_back_its_own, each_session_ended_once, hostile_ids, hostile_ids_as_documented,
    hostile_ids_keep_their_data, invalid_ids, memory_store, not_refused, race_expiry,
    refused_before_it_runs, Race,
};
use redis_server::{redis_cli, Redis};
use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{CallOptions, Pool};
use snakepit_session::{attach, EndReason, MemoryStore, RedisStore, SessionStore};
use snakepit_tests::until;

/// A Redis store under `prefix` whose sweep does not run during a test,
/// with a timeout generous enough for a loaded machine.
async fn redis_store(redis: &Redis, prefix: &str) -> RedisStore {
    RedisStore::builder(redis.url())
        .prefix(prefix)
        .sweep_interval(Duration::from_secs(3600))
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap()
}

// ---------------------------------------------------------------------
// The same id, the same behaviour, in every store
// ---------------------------------------------------------------------

/// sessions.md:93-95: "`Invalid` (an empty id or key, or one over 512
/// bytes ...)"; sessions.md:84-89: "A TTL longer than `MAX_TTL` ... or
/// shorter than 1 ms ... given to `create_session`, set by
/// `update_session` ... is `Invalid` in every store (memory, Redis, and the
/// cluster's NATS KV store), and such an update changes nothing";
/// sessions.md:151: the Redis store has "The same behaviour" as the memory
/// store. A conformance table: every operation of the store on each of 48
/// hostile but valid ids (NUL, newlines, paths, `..`, glob and subject
/// characters, the store's own prefix and key names, an e-mail address, a
/// braced UUID, 512 bytes of two-byte characters) gives the same outcome in
/// both stores, the documented one; an id used again after its deletion
/// starts empty; and the listeners hear each deletion once, under the id
/// as given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_on_a_hostile_id_gives_the_documented_outcome_in_both_stores() {
    let redis = Redis::start().await;
    let stores = (memory_store(), redis_store(&redis, "snakepit:").await);
    let ends = (record_ends(&stores.0), record_ends(&stores.1));
    hostile_ids_as_documented(("memory", &stores.0), ("redis", &stores.1)).await;
    assert!(stores.0.list_sessions().await.unwrap().is_empty());
    assert!(stores.1.list_sessions().await.unwrap().is_empty());
    // Each deletion was heard once, under the id as given.
    let heard = deletions_heard();
    assert!(*ends.0.lock().unwrap() == heard, "memory's listener");
    assert!(*ends.1.lock().unwrap() == heard, "redis's listener");
}

/// sessions.md:93-95: an empty id or one over 512 bytes is `Invalid`,
/// the check counting bytes (171 three-byte characters are 513 bytes) and
/// refusing a 1 MiB id as cheaply as a 513-byte one: every operation that
/// takes a session id answers `Invalid` (with `what` = "session id"), none
/// panics, and nothing is written: the stores stay empty (Redis: no key
/// at all on the server but the stats hash).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_are_empty_or_over_512_bytes_are_invalid_everywhere_and_write_nothing() {
    let redis = Redis::start().await;
    let memory = memory_store();
    let remote = redis_store(&redis, "snakepit:").await;
    let mut wrong = Vec::new();
    for id in invalid_ids() {
        wrong.extend(not_refused("memory", &memory, &id).await);
        wrong.extend(not_refused("redis", &remote, &id).await);
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    assert!(memory.list_sessions().await.unwrap().is_empty());
    assert!(remote.list_sessions().await.unwrap().is_empty());
    assert_eq!(memory.stats().await.unwrap().sessions_created, 0);
    assert_eq!(remote.stats().await.unwrap().sessions_created, 0);
    let keys = redis_cli(redis.port, &["KEYS", "*"]);
    assert!(
        keys.is_empty() || keys == "snakepit:stats",
        "keys written for invalid ids: {:.200}",
        keys
    );
}

/// sessions.md (no two sessions share data) at its sharpest: all the
/// hostile ids live at once in each store, and ids that differ only by
/// case, Unicode normalization, a trailing space, a NUL or the store's own
/// separators are different sessions: each reads back only its own data
/// and program, `list_sessions` gives each id exactly once, and
/// `stats().active_sessions` counts each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_live_at_once_without_colliding() {
    async fn all_at_once<S: SessionStore>(store: &S, ids: &[String]) {
        each_id_live(store, ids).await;
        each_id_reads_back_its_own(store, ids).await;
        assert_eq!(store.stats().await.unwrap().active_sessions, 0);
    }
    let ids = hostile_ids();
    let redis = Redis::start().await;
    all_at_once(&memory_store(), &ids).await;
    all_at_once(&redis_store(&redis, "snakepit:").await, &ids).await;
}

// ---------------------------------------------------------------------
// Redis key prefixes
// ---------------------------------------------------------------------

/// sessions.md:184 and `RedisStoreBuilder::prefix`: "stores whose prefixes
/// differ, none being the start of another ..., see none of each other's
/// sessions, programs or statistics on one server". Prefixes made of
/// Redis glob characters (`a*:`, `a?:`, `a[ab]:`, `*:`, `a\:`) must be
/// taken as the text they are, not as patterns that match `ab:` or `aa:`:
/// with the same ids in each of seven stores, each lists, counts, reads,
/// sweeps (`cleanup_expired` finds and reports only its own expired
/// session) and deletes only its own; every key on the server starts with
/// its own store's prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_prefixes_of_glob_characters_are_literal_and_stay_apart() {
    let redis = Redis::start().await;
    let prefixes = ["a*:", "a?:", "a[ab]:", "ab:", "aa:", "*:", "a\\:"];
    let mut stores = Vec::new();
    for p in prefixes {
        stores.push((p, redis_store(&redis, p).await));
    }
    for (p, s) in &stores {
        s.ensure_session("shared").await.unwrap();
        s.set("shared", "owner", json!(p)).await.unwrap();
        s.store_program("shared", "prog", json!(p)).await.unwrap();
        s.store_global_program("g", json!(p)).await.unwrap();
        s.create_session(&format!("own-{p}"), None).await.unwrap();
        s.create_session("short", Some(Duration::from_millis(200)))
            .await
            .unwrap();
    }
    let ends: Vec<_> = stores.iter().map(|(_, s)| record_ends(s)).collect();
    for (p, s) in &stores {
        assert_eq!(s.get("shared", "owner").await.unwrap(), Some(json!(p)));
        assert_eq!(s.get_program("shared", "prog").await.unwrap(), json!(p));
        assert_eq!(s.get_global_program("g").await.unwrap(), json!(p));
        let stats = s.stats().await.unwrap();
        assert_eq!(
            (stats.sessions_created, stats.global_programs),
            (3, 1),
            "{p}: {stats:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    for (i, (p, s)) in stores.iter().enumerate() {
        let mut listed = s.list_sessions().await.unwrap();
        listed.sort();
        let mut want = vec![format!("own-{p}"), "shared".to_string()];
        want.sort();
        assert_eq!(listed, want, "{p}");
        assert_eq!(s.stats().await.unwrap().active_sessions, 2, "{p}");
        assert_eq!(s.cleanup_expired().await.unwrap(), 1, "{p} sweeps its own");
        assert_eq!(
            *ends[i].lock().unwrap(),
            vec![("short".to_string(), EndReason::Expired)],
            "{p}"
        );
    }
    // Deleting through the glob-looking prefixes touches nobody else.
    for (p, s) in &stores[..3] {
        assert!(s.delete_session("shared").await.unwrap(), "{p}");
    }
    for (p, s) in &stores[3..] {
        assert_eq!(
            s.get("shared", "owner").await.unwrap(),
            Some(json!(p)),
            "{p} keeps its session"
        );
        assert_eq!(s.stats().await.unwrap().sessions_deleted, 0, "{p}");
    }
    let keys = redis_cli(redis.port, &["KEYS", "*"]);
    for key in keys.lines() {
        let owners = prefixes.iter().filter(|p| key.starts_with(**p)).count();
        assert_eq!(owners, 1, "{key:?} belongs to one store");
    }
}

// ---------------------------------------------------------------------
// TTLs
// ---------------------------------------------------------------------

/// sessions.md:84-89 and `check_ttl`: a TTL of 1 ms is the shortest a
/// session may have, and is valid; sessions.md:107-108 (listeners hear
/// of "each session that ends, expired or deleted"), store.rs: "A session
/// whose TTL has passed is gone". A 1 ms session is gone soon after (not
/// listed, not counted), `ensure_session` starts a new one with the
/// default TTL, and the ended one is reported once as expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_millisecond_session_expires_and_its_id_starts_afresh() {
    async fn one_ms<S: SessionStore>(store: &S) {
        let ends = record_ends(store);
        let s = store
            .create_session("blink", Some(Duration::from_millis(1)))
            .await
            .unwrap();
        assert_eq!(s.ttl_ms, 1);
        until(10, "the 1 ms session is gone", || async {
            !store.session_exists("blink").await.unwrap()
        })
        .await;
        assert!(store.list_sessions().await.unwrap().is_empty());
        assert_eq!(store.stats().await.unwrap().active_sessions, 0);
        assert!(store.get("blink", "k").await.unwrap_err().is_gone());
        store.ensure_session("blink").await.unwrap();
        let again = store.get_session("blink").await.unwrap();
        assert_eq!(again.ttl_ms, 3_600_000, "the default TTL");
        store.cleanup_expired().await.unwrap();
        assert_eq!(
            *ends.lock().unwrap(),
            vec![("blink".to_string(), EndReason::Expired)]
        );
        assert_eq!(store.stats().await.unwrap().sessions_expired, 1);
    }
    let redis = Redis::start().await;
    one_ms(&memory_store()).await;
    one_ms(&redis_store(&redis, "snakepit:").await).await;
}

/// sessions.md:107-108 and store.rs: every session that ends is reported
/// to the listeners once ("hear of each session that ends, expired or
/// deleted"), and `stats()` counts "Sessions created" and "Sessions that
/// expired and were removed". Expiry racing with touches: sessions of a
/// 20 ms TTL, touched (`ensure_session`, `set`, `get`, `update_session`) by two tasks at
/// uneven intervals around the TTL (with a quiet spell every 200 ms that
/// outlasts them all) while a third sweeps (`cleanup_expired`) without
/// pause, for a second, so that each session is created, expires and is
/// created again many times, its expiry found by a touch or by the sweep,
/// whichever comes first. Afterwards every
/// creation has exactly one end: created = expired, as many expiries heard
/// as counted, no deletion heard; and only "gone" errors were seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_racing_with_touches_reports_each_session_end_once() {
    async fn race<S: SessionStore>(store: Arc<S>) {
        let ends = record_ends(&*store);
        let race = Race {
            ids: ["r:1", "r/2", "r*3"],
            // Pauses of 0 to 18 ms: with three ids in turn, an id waits
            // about its TTL for its next touch, either side; and the first
            // 60 ms of every 200 are quiet, so that every session expires
            // then.
            pause: |n, t| (n * 7 + t) % 19,
            period_ms: 200,
            quiet_ms: 60,
            run_for: Duration::from_millis(1000),
        };
        race_expiry(store.clone(), race).await;
        until(10, "the last sessions expire", || async {
            store.list_sessions().await.unwrap().is_empty()
        })
        .await;
        store.cleanup_expired().await.unwrap();
        let stats = store.stats().await.unwrap();
        let ends = ends.lock().unwrap().clone();
        each_session_ended_once(&stats, &ends, &["r:1", "r/2", "r*3"]);
    }
    let memory = Arc::new(
        MemoryStore::builder()
            .default_ttl(Duration::from_millis(20))
            .sweep_interval(Duration::from_secs(3600))
            .build(),
    );
    race(memory).await;
    let redis = Redis::start().await;
    let remote = RedisStore::builder(redis.url())
        .default_ttl(Duration::from_millis(20))
        .sweep_interval(Duration::from_secs(3600))
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap();
    race(Arc::new(remote)).await;
}

// ---------------------------------------------------------------------
// Through a pool of real workers
// ---------------------------------------------------------------------

fn session_worker() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/session_worker.py")
}

async fn pool_of<S: SessionStore>(store: Arc<S>, size: usize) -> Pool {
    attach(Pool::builder(Bridge::python(session_worker())), store)
        .size(size)
        .start()
        .await
        .unwrap()
}

/// sessions.md:33-39 (every session call "creates its session in the
/// store, or extends a live one, **before** it is routed. If the store
/// fails ..., the call fails with `snakepit_core::Error::Session` and never
/// runs") and sessions.md:40-51 (`ctx.session.get/set`), with hostile ids:
/// through a pool of real Python workers, in each store, the worker sees
/// the session id exactly as given (`ctx.session_id`: NUL, newlines, `..`,
/// emoji, a 512-byte id), writes and reads its own data, and the store
/// holds it under that id. Ids the stores refuse (empty, 513 bytes, 1 MiB)
/// fail the call with `Error::Session` before it runs, and the pool keeps
/// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_keep_their_data_through_a_pool_and_invalid_ones_never_run() {
    async fn through<S: SessionStore>(store: Arc<S>) {
        let pool = pool_of(store.clone(), 2).await;
        hostile_ids_keep_their_data(&pool, &*store).await;
        for id in invalid_ids() {
            let before = store.stats().await.unwrap().sessions_created;
            refused_before_it_runs(&pool, &id).await;
            assert_eq!(store.stats().await.unwrap().sessions_created, before);
        }
        a_new_session_recalls_nothing(&pool).await;
        pool.shutdown().await.unwrap();
    }
    through(Arc::new(memory_store())).await;
    let redis = Redis::start().await;
    through(Arc::new(redis_store(&redis, "snakepit:").await)).await;
}

/// sessions.md:3-4 (a session "gives those calls affinity to a worker")
/// and sessions.md:56-57 (when a session is deleted "the pool forgets the
/// session's worker affinity"), with ids that differ only by Unicode
/// normalization (`ü` and `u` + U+0308) and by a NUL: while the worker of
/// `ü` is busy, a `FailFast` call of `ü` fails with `WorkerBusy` naming
/// `ü`, and one of each look-alike runs at once on the other worker (no
/// shared affinity record, no shared data); once `ü` is deleted in the
/// store its affinity is gone too and a `FailFast` call of it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_ids_have_affinities_of_their_own() {
    let store = Arc::new(memory_store());
    let pool = pool_of(store.clone(), 2).await;
    affinity_until_deleted(&pool, &*store, "ü", &["u\u{308}", "ü\0"]).await;
    pool.shutdown().await.unwrap();
}

/// `{"key": "blob", "value": <bytes>}`, the bytes written as MessagePack
/// `bin` (no serde_bytes needed).
struct RememberBytes(&'static [u8]);

impl serde::Serialize for RememberBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        struct Bin(&'static [u8]);
        impl serde::Serialize for Bin {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("key", "blob")?;
        m.serialize_entry("value", &Bin(self.0))?;
        m.end()
    }
}

/// sessions.md:40-55: the workers' `ctx.session.set(key, value)` is the
/// host function `session.set`, and "Failures reach the worker as a
/// host-call error with a type it can match"; docs/bridges.md:520-523:
/// "Binary data travels only with MessagePack, as `bin`: send `bytes`
/// (Python)", and "`serde_json::Value` has no binary type". A session value
/// that is `bytes` cannot be kept by a store of JSON values; under
/// MessagePack the worker's `ctx.session.set("blob", b"\x00\xff")` is a
/// valid frame, so it fails as that host call's own error (as a value
/// nested too deep does, `TooDeep`), not as a broken protocol: the call
/// fails with the handler's failed reply (`Error::Remote`), the same worker
/// serves the next call of the session, whose data is as before and has
/// no `blob` key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_set_in_a_session_under_msgpack_fail_that_host_call_only() {
    let store = Arc::new(memory_store());
    let pool = attach(
        Pool::builder(Bridge::python(session_worker()).codec(snakepit_core::WireCodec::MsgPack)),
        store.clone(),
    )
    .size(1)
    .start()
    .await
    .unwrap();
    let r = pool
        .execute_in_session("bin", "remember", json!({"key": "k", "value": "text"}))
        .await
        .unwrap();
    let pid = r["pid"].clone();
    let got: Result<Value, _> = pool
        .call(
            "remember",
            &RememberBytes(b"\x00\xff"),
            CallOptions::new().session("bin"),
        )
        .await;
    let err = got.expect_err("bytes are not a JSON value");
    assert!(
        err.remote().is_some(),
        "the handler's host call failed, not the worker: {err:?}"
    );
    let r = pool
        .execute_in_session("bin", "recall", json!({"key": "k"}))
        .await
        .unwrap();
    assert_eq!(r["pid"], pid, "the same worker serves on: {err:?}");
    assert_eq!(r["value"], "text");
    assert_eq!(store.get("bin", "blob").await.unwrap(), None);
    pool.shutdown().await.unwrap();
}

/// docs/bridges.md:480 (the session id is `ctx.session_id` in Python and
/// Ruby, `ctx.sessionId` in Node.js) and sessions.md:51-52 ("`ctx.session`
/// is the same in the Python, Node.js and Ruby bridges"), with ids that
/// each language's own text handling might trip over: NUL, CR LF, U+2028
/// (a line break to JavaScript), a byte-order mark, Ruby's `#{}` and
/// JavaScript's `${}`, a quote, a backslash, `%s`, an emoji, 512 bytes of
/// two-byte characters. One store, pools of each bundled bridge in each
/// codec (JSON, MessagePack): every worker sees the id exactly as given,
/// and what one language writes under it the others read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bridge_sees_hostile_ids_exactly_and_shares_their_data() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers");
    let store = Arc::new(memory_store());
    let mut pools = Vec::new();
    for codec in [
        snakepit_core::WireCodec::Json,
        snakepit_core::WireCodec::MsgPack,
    ] {
        for (language, bridge) in [
            ("python", Bridge::python(dir.join("session_worker.py"))),
            // The bridge's own node_modules holds @msgpack/msgpack.
            (
                "node",
                Bridge::node(dir.join("session_worker.js")).env(
                    "NODE_PATH",
                    snakepit_tests::workspace_root().join("bridges/node/node_modules"),
                ),
            ),
            ("ruby", Bridge::ruby(dir.join("session_worker.rb"))),
        ] {
            let name = format!("{language} {codec:?}");
            let pool = attach(Pool::builder(bridge.codec(codec)), store.clone())
                .size(1)
                .start()
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            pools.push((name, pool));
        }
    }
    let mut ids: Vec<String> = [
        "\0",
        "a\r\nb",
        "\u{2028}\u{2029}",
        "\u{feff}x",
        "#{exit}",
        "${process.exit()}",
        "\"",
        "\\",
        "%s%n",
        "🐍",
        "user@example.com",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    ids.push("é".repeat(256));
    for id in &ids {
        for (i, (writer, pool)) in pools.iter().enumerate() {
            let value = json!({"by": i, "id": id});
            let r = pool
                .execute_in_session(id, "remember", json!({"key": "k", "value": value}))
                .await
                .unwrap_or_else(|e| panic!("{writer} {id:?}: {e}"));
            assert_eq!(r["session_id"], json!(id), "{writer}");
            for (reader, pool) in &pools {
                let r = pool
                    .execute_in_session(id, "recall", json!({"key": "k"}))
                    .await
                    .unwrap_or_else(|e| panic!("{reader} {id:?}: {e}"));
                assert_eq!(r["value"], value, "{writer} wrote, {reader} read, {id:?}");
            }
        }
    }
    let listed: BTreeSet<String> = store.list_sessions().await.unwrap().into_iter().collect();
    assert_eq!(listed, ids.iter().cloned().collect::<BTreeSet<_>>());
    for (_, pool) in pools {
        pool.shutdown().await.unwrap();
    }
}

/// sessions.md:84-89: `MAX_TTL` is the longest TTL, valid "as the store's
/// `default_ttl`"; `RedisStoreBuilder::timeout` ("How long one store
/// operation may take ... before it fails") and the builders'
/// `sweep_interval` ("How often ...") take any `Duration`. The longest of
/// each, `Duration::MAX` for the intervals and the timeout (an `Instant`
/// plus it overflows), must not make an operation panic or fail: both
/// stores built that way serve as usual, keep a session for `MAX_TTL`,
/// and a session an update gives 1 ms expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_ttl_timeout_and_sweep_interval_do_not_overflow() {
    async fn serves<S: SessionStore>(store: &S) {
        store.ensure_session("s").await.unwrap();
        store.set("s", "k", json!(1)).await.unwrap();
        assert_eq!(store.get("s", "k").await.unwrap(), Some(json!(1)));
        let s = store.get_session("s").await.unwrap();
        assert_eq!(s.ttl(), snakepit_session::MAX_TTL);
        assert_eq!(store.cleanup_expired().await.unwrap(), 0);
        assert_eq!(store.list_sessions().await.unwrap(), vec!["s".to_string()]);
        store.update_session("s", |s| s.ttl_ms = 1).await.unwrap();
        until(10, "the session expires", || async {
            !store.session_exists("s").await.unwrap()
        })
        .await;
        assert_eq!(store.cleanup_expired().await.unwrap(), 1);
    }
    let memory = MemoryStore::builder()
        .default_ttl(snakepit_session::MAX_TTL)
        .sweep_interval(Duration::MAX)
        .build();
    serves(&memory).await;
    let redis = Redis::start().await;
    let remote = RedisStore::builder(redis.url())
        .default_ttl(snakepit_session::MAX_TTL)
        .sweep_interval(Duration::MAX)
        .timeout(Duration::MAX)
        .connect()
        .await
        .unwrap();
    serves(&remote).await;
}
