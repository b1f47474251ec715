//! Hostile and unusual session ids, bucket names and TTLs against
//! `NatsKvStore` (crates/cluster/src/kv.rs) and a real nats-server with
//! JetStream, side by side with `MemoryStore`, and through a pool of real
//! Python workers. Every test starts its own nats-server (127.0.0.1, a port
//! of its own) and stops it.

mod common;
#[path = "../../session/tests/ids/mod.rs"]
mod ids;
#[path = "../../session/tests/common/mod.rs"]
mod suite;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{kv_store, session_key, NatsServer};
use futures_util::StreamExt;
use ids::{
    a_new_session_recalls_nothing, affinity_until_deleted, deletions_heard, each_id_live,
    each_id_reads_back_its_own, each_session_ended_once, hostile_ids, hostile_ids_as_documented,
    hostile_ids_keep_their_data, invalid_ids, memory_store, not_refused, outcome, race_expiry,
    refused_before_it_runs, Race,
};
use serde_json::json;
use snakepit_cluster::NatsKvStore;
use snakepit_session::{attach, EndReason, Error, SessionStore};
use suite::record_ends;

/// Only turns a hang into a failure of a test.
const GUARD: Duration = Duration::from_secs(60);

const BUCKET: &str = "snakepit_sessions";

/// A nats-server of the test's own, and a [`kv_store`] on it.
async fn nats_and_kv() -> (NatsServer, NatsKvStore) {
    let server = NatsServer::start().await;
    let kv = kv_store(&server).await;
    (server, kv)
}

/// The keys of `bucket`, as another client of the same NATS sees them.
async fn bucket_keys(server: &NatsServer, bucket: &str) -> BTreeSet<String> {
    let kv = async_nats::jetstream::new(server.connect().await)
        .get_key_value(bucket)
        .await
        .unwrap();
    let mut keys = BTreeSet::new();
    let mut stream = kv.keys().await.unwrap();
    while let Some(k) = stream.next().await {
        keys.insert(k.unwrap());
    }
    keys
}

// ---------------------------------------------------------------------
// The same id, the same behaviour, as in the memory store
// ---------------------------------------------------------------------

/// sessions.md:93-95 and 84-89 (bad ids, keys and TTLs are `Invalid` "in
/// every store (memory, Redis, and the cluster's NATS KV store)");
/// docs/cluster.md: `NatsKvStore` "passes the same store suite as
/// `MemoryStore`", and "a session that ended leaves nothing in the bucket".
/// The conformance table of crates/session/tests/ids/mod.rs, as
/// outside_session_ids.rs runs it for Redis: every operation on each
/// hostile but valid id (NUL, newlines, paths, NATS subject syntax such as
/// `a.*`, `a.>` and `_INBOX.x`, the store's own key shapes such as `s.61`,
/// 512 bytes of two-byte characters) gives the documented outcome in both
/// stores; an id used again after its deletion starts empty; the bucket
/// holds no key afterwards; and the listeners hear each deletion once,
/// under the id as given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_on_a_hostile_id_gives_the_documented_outcome_as_in_memory() {
    let (server, kv) = nats_and_kv().await;
    let memory = memory_store();
    let ends = (record_ends(&memory), record_ends(&kv));
    hostile_ids_as_documented(("memory", &memory), ("nats-kv", &kv)).await;
    assert!(kv.list_sessions().await.unwrap().is_empty());
    // Sessions that ended leave nothing in the bucket (cluster.md:231-233).
    assert!(bucket_keys(&server, BUCKET).await.is_empty());
    // Each deletion was heard once, under the id as given.
    let heard = deletions_heard();
    assert!(*ends.0.lock().unwrap() == heard, "memory's listener");
    assert!(*ends.1.lock().unwrap() == heard, "the KV store's listener");
}

/// sessions.md:93-95 and the `Error::Invalid` docs ("An id or key is empty
/// or longer than `MAX_ID_LEN` bytes"), as the memory and Redis stores
/// apply them to the program id that `get_program` reads
/// (crates/session/tests/api_promises.rs `program_ids_are_checked_when_read`
/// runs only against those two): `get_program` with an empty or a 513-byte
/// program id is `Invalid` (`what` = "program id") in `NatsKvStore` as in
/// `MemoryStore`, with a live session and without one: the program id is
/// checked before the session is read. (Before the fix, the KV store
/// answered `ProgramNotFound`, or `NotFound` without a session, so the
/// same mistake gave another error depending on the store.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn program_ids_empty_or_over_512_bytes_are_invalid_when_read() {
    let (_server, kv) = nats_and_kv().await;
    let memory = memory_store();
    let long = "p".repeat(513);
    let mut wrong = Vec::new();
    for (name, store_id) in [("with a session", "s"), ("without one", "nobody")] {
        kv.ensure_session("s").await.unwrap();
        memory.ensure_session("s").await.unwrap();
        for program in ["", long.as_str()] {
            let m = outcome(memory.get_program(store_id, program).await);
            let k = outcome(kv.get_program(store_id, program).await);
            for (store, got) in [("memory", m), ("nats-kv", k)] {
                if got != "invalid program id" {
                    wrong.push(format!(
                        "{store} {name}, program id of {} bytes: {got}",
                        program.len()
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

/// sessions.md:93-95: an empty id, or one over 512 bytes (counted in bytes;
/// up to 1 MiB), is `Invalid` in every operation that takes a session id;
/// kv.rs checks before it hex-encodes the id into a key (a 1 MiB id would
/// be a 2 MiB subject). Nothing panics and nothing is written: the bucket
/// holds no key afterwards, and no session was counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_are_empty_or_over_512_bytes_are_invalid_and_write_nothing() {
    let (server, kv) = nats_and_kv().await;
    let mut wrong = Vec::new();
    for id in invalid_ids() {
        wrong.extend(not_refused("nats-kv", &kv, &id).await);
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
    assert!(bucket_keys(&server, BUCKET).await.is_empty());
    assert_eq!(kv.stats().await.unwrap().sessions_created, 0);
}

/// kv.rs: "One key per session (`s.<hex id>`)"; store.rs `list_sessions`:
/// "The ids of the live sessions". All the hostile ids live at once: the
/// bucket holds exactly one key per id, each the documented `s.<hex id>`
/// (two ids never share a key: `a` is `s.61`, the id `s.61` is
/// `s.732e3631`, `ü` and `u` + U+0308 are two keys); each reads back only
/// its own data and program; a second handle on another connection (a
/// second host) lists each id exactly once and counts each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_live_at_once_each_at_its_own_key() {
    let (server, kv) = nats_and_kv().await;
    let other = kv_store(&server).await;
    let ids = hostile_ids();
    each_id_live(&kv, &ids).await;
    let keys = bucket_keys(&server, BUCKET).await;
    let want: BTreeSet<String> = ids.iter().map(|id| session_key(id)).collect();
    assert_eq!(want.len(), ids.len(), "the test's ids are distinct keys");
    assert_eq!(keys, want);
    each_id_reads_back_its_own(&other, &ids).await;
    assert!(kv.list_sessions().await.unwrap().is_empty());
}

/// docs/cluster.md and `NatsKvStoreBuilder::bucket`: "The bucket (default
/// `snakepit_sessions`); two buckets are two namespaces on one NATS";
/// `connect` "Creates the bucket if it does not exist". A bucket name is a
/// JetStream stream name (`KV_<bucket>`) and part of every key's subject,
/// so NATS allows only letters, digits, `-` and `_`: names a user might
/// pick (`tenant.a`, `tenant/a`, `a b`, `a*`, `>`, empty) must fail
/// `connect` with a typed error (not panic, hang, or make a stream whose
/// subjects are wildcards over other buckets), while `Tenant-A_1` works
/// and stays apart from the default bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_names_nats_refuses_fail_connect_with_a_typed_error() {
    // As `kv_store`, in the bucket `name`.
    async fn in_bucket(nats: &async_nats::Client, name: &str) -> Result<NatsKvStore, Error> {
        NatsKvStore::builder(nats)
            .bucket(name)
            .sweep_interval(Duration::from_secs(3600))
            .connect()
            .await
    }
    let (server, default) = nats_and_kv().await;
    default.ensure_session("mine").await.unwrap();
    let nats = server.connect().await;
    for name in ["tenant.a", "tenant/a", "a b", "a*", ">", "", "a\0"] {
        let got = tokio::time::timeout(GUARD, in_bucket(&nats, name))
            .await
            .unwrap_or_else(|_| panic!("connect with bucket {name:?} hung"));
        match got {
            Err(Error::Backend(_) | Error::Invalid { .. }) => {}
            Err(e) => panic!("bucket {name:?}: an error of another kind: {e:?}"),
            Ok(_) => panic!("bucket {name:?} was taken"),
        }
    }
    let js = async_nats::jetstream::new(nats.clone());
    let mut names = js.stream_names();
    let mut streams = BTreeSet::new();
    while let Some(n) = names.next().await {
        streams.insert(n.unwrap());
    }
    assert_eq!(
        streams,
        BTreeSet::from([format!("KV_{BUCKET}")]),
        "no stream made for a refused name"
    );
    let tenant = in_bucket(&nats, "Tenant-A_1").await.unwrap();
    assert!(!tenant.session_exists("mine").await.unwrap());
    tenant.ensure_session("theirs").await.unwrap();
    assert_eq!(
        default.list_sessions().await.unwrap(),
        vec!["mine".to_string()]
    );
    assert_eq!(
        tenant.list_sessions().await.unwrap(),
        vec!["theirs".to_string()]
    );
}

// ---------------------------------------------------------------------
// TTLs
// ---------------------------------------------------------------------

/// sessions.md:84-89: 1 ms is the shortest TTL a session may have (valid in
/// every store); store.rs: "A session whose TTL has passed is gone". In
/// the KV store, whose expiry is the session's own `last_accessed_ms +
/// ttl_ms` (kv.rs), a 1 ms session is gone at once for reads, listings and
/// counts; `ensure_session` starts a new one with the default TTL, and the
/// old one's end is reported once, as expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_millisecond_session_expires_and_its_id_starts_afresh() {
    let (_server, kv) = nats_and_kv().await;
    let ends = record_ends(&kv);
    let s = kv
        .create_session("blink", Some(Duration::from_millis(1)))
        .await
        .unwrap();
    assert_eq!(s.ttl_ms, 1);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!kv.session_exists("blink").await.unwrap());
    assert!(kv.list_sessions().await.unwrap().is_empty());
    assert_eq!(kv.stats().await.unwrap().active_sessions, 0);
    assert!(kv.get("blink", "k").await.unwrap_err().is_gone());
    kv.ensure_session("blink").await.unwrap();
    assert_eq!(kv.get_session("blink").await.unwrap().ttl_ms, 3_600_000);
    assert_eq!(kv.cleanup_expired().await.unwrap(), 0, "already reaped");
    assert_eq!(
        *ends.lock().unwrap(),
        vec![("blink".to_string(), EndReason::Expired)]
    );
    let stats = kv.stats().await.unwrap();
    assert_eq!((stats.sessions_created, stats.sessions_expired), (2, 1));
}

/// docs/cluster.md:229-230: "expired sessions removed by a
/// revision-checked delete so each expiry is reported once"; sessions.md
/// listeners "hear of each session that ends". Expiry racing with
/// touches: sessions of a 50 ms TTL touched by two tasks (`ensure_session`,
/// `set`, `get`, `update_session`) at uneven intervals around the TTL (with a quiet spell
/// every 400 ms that outlasts them all) while a third sweeps without
/// pause, for 1.5 s: each expiry is found by a touch (`create` reaps it) or
/// by the sweep, whichever comes first. Afterwards each creation has exactly one end:
/// created = expired, as many expiries heard as counted, only "gone" errors
/// seen (never `Conflict`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_racing_with_touches_reports_each_session_end_once() {
    let server = NatsServer::start().await;
    let kv = Arc::new(
        NatsKvStore::builder(&server.connect().await)
            .default_ttl(Duration::from_millis(50))
            .sweep_interval(Duration::from_secs(3600))
            .connect()
            .await
            .unwrap(),
    );
    let ends = record_ends(&*kv);
    let race = Race {
        ids: ["r.1", "r>2", "r*3"],
        // Pauses of 0 to 40 ms around the 50 ms TTL (three ids in turn);
        // the first 150 ms of every 400 are quiet, so that every session
        // expires then.
        pause: |n, t| (n * 11 + t * 5) % 41,
        period_ms: 400,
        quiet_ms: 150,
        run_for: Duration::from_millis(1500),
    };
    race_expiry(kv.clone(), race).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    kv.cleanup_expired().await.unwrap();
    let stats = kv.stats().await.unwrap();
    let ends = ends.lock().unwrap().clone();
    each_session_ended_once(&stats, &ends, &["r.1", "r>2", "r*3"]);
    assert!(bucket_keys(&server, BUCKET).await.is_empty());
}

// ---------------------------------------------------------------------
// Through a pool of real workers
// ---------------------------------------------------------------------

/// The session crate's worker: `remember {key, value}` (answers its pid and
/// `ctx.session_id`), `recall {key}`.
fn session_worker() -> common::ScriptWorker {
    common::ScriptWorker(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../session/tests/workers/session_worker.py"),
    )
}

/// A nats-server of the test's own, a [`kv_store`] on it, and a pool of
/// two [`session_worker`]s whose sessions are in that store.
async fn kv_and_session_pool() -> (NatsServer, Arc<NatsKvStore>, snakepit_core::Pool) {
    let (server, kv) = nats_and_kv().await;
    let kv = Arc::new(kv);
    let pool = attach(snakepit_core::Pool::builder(session_worker()), kv.clone())
        .size(2)
        .start()
        .await
        .unwrap();
    (server, kv, pool)
}

/// docs/cluster.md:202-222 (a pool's sessions in `NatsKvStore` through
/// `snakepit_session::attach`) and sessions.md:33-39 (every session call
/// creates or touches its session "**before** it is routed"; a store that
/// fails fails the call with `Error::Session`, which never runs), with
/// hostile ids: through a pool of real Python workers, the worker sees
/// each id exactly as given, its data lands in the bucket under that id and
/// comes back; ids the store refuses (empty, over 512 bytes, 1 MiB) fail
/// the call with `Error::Session` before it runs, and the pool serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_keep_their_data_through_a_pool_and_invalid_ones_never_run() {
    let (_server, kv, pool) = kv_and_session_pool().await;
    hostile_ids_keep_their_data(&pool, &*kv).await;
    for id in invalid_ids() {
        refused_before_it_runs(&pool, &id).await;
    }
    assert_eq!(kv.list_sessions().await.unwrap().len(), hostile_ids().len());
    a_new_session_recalls_nothing(&pool).await;
    pool.shutdown().await.unwrap();
}

/// sessions.md:3-4 (a session gives its calls "affinity to a worker") and
/// sessions.md:56-57 (when the store removes a session, "the pool forgets
/// the session's worker affinity"), with the KV store and ids made of
/// NATS subject syntax: while the worker of `a.>` is busy, a `FailFast`
/// call of `a.>` fails with `WorkerBusy` naming it, one of the look-alike
/// `a.*` runs at once on the other worker without `a.>`'s data, and once
/// `a.>` is deleted from the store (the store's listener tells the pool)
/// a `FailFast` call of it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_like_id_keeps_its_affinity_until_the_store_deletes_it() {
    let (_server, kv, pool) = kv_and_session_pool().await;
    affinity_until_deleted(&pool, &*kv, "a.>", &["a.*"]).await;
    pool.shutdown().await.unwrap();
}

/// sessions.md:84-89: `MAX_TTL` is the longest TTL, valid "as the store's
/// `default_ttl`" in the NATS KV store too; `NatsKvStoreBuilder::
/// sweep_interval` ("How often expired sessions are removed") takes any
/// `Duration`. With `Duration::MAX` as the interval (an `Instant` plus it
/// overflows) and `MAX_TTL` as the default TTL (`last_accessed_ms +
/// ttl_ms` near 2^53), the store connects and serves: a session lives
/// `MAX_TTL`, and one an update gives 1 ms expires and is swept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_ttl_and_sweep_interval_do_not_overflow() {
    let server = NatsServer::start().await;
    let kv = NatsKvStore::builder(&server.connect().await)
        .default_ttl(snakepit_session::MAX_TTL)
        .sweep_interval(Duration::MAX)
        .connect()
        .await
        .unwrap();
    kv.ensure_session("s").await.unwrap();
    kv.set("s", "k", json!(1)).await.unwrap();
    assert_eq!(kv.get("s", "k").await.unwrap(), Some(json!(1)));
    assert_eq!(
        kv.get_session("s").await.unwrap().ttl(),
        snakepit_session::MAX_TTL
    );
    assert_eq!(kv.cleanup_expired().await.unwrap(), 0);
    assert_eq!(kv.list_sessions().await.unwrap(), vec!["s".to_string()]);
    kv.update_session("s", |s| s.ttl_ms = 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!kv.session_exists("s").await.unwrap());
    assert_eq!(kv.cleanup_expired().await.unwrap(), 1);
}
