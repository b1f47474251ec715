//! Attacks on `NatsKvStore` (crates/cluster/src/kv.rs), as a user, a second
//! host or a hostile neighbour on the same NATS would make them; each shows
//! a promise that holds (several once failed: a corrupt session that could
//! not be deleted and stopped listings, refused deletes retried for
//! minutes, listings that missed or repeated sessions written meanwhile,
//! concurrent reads failing with `Conflict`, a lost bucket, foreign keys
//! listed). Every test starts its own nats-server (JetStream on, 127.0.0.1,
//! a port of its own) and stops it.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::Store;
use common::NatsServer;
use serde_json::{json, Value};
use snakepit_cluster::NatsKvStore;
use snakepit_session::{EndReason, Error, SessionStore};

/// Only turns a hang into a failure of a test.
const GUARD: Duration = Duration::from_secs(30);

const BUCKET: &str = "snakepit_sessions";

/// A store on its own connection whose sweep does not run during a test.
async fn store(server: &NatsServer) -> NatsKvStore {
    NatsKvStore::builder(&server.connect().await)
        .sweep_interval(Duration::from_secs(3600))
        .connect()
        .await
        .unwrap()
}

/// The bucket itself, as another client of the same NATS sees it.
async fn raw_bucket(server: &NatsServer) -> Store {
    async_nats::jetstream::new(server.connect().await)
        .get_key_value(BUCKET)
        .await
        .unwrap()
}

/// The key the store keeps session `id` at (kv.rs: `s.<hex id>`).
fn session_key(id: &str) -> String {
    let mut s = "s.".to_string();
    for b in id.bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// `op`, failing the test if it takes longer than [`GUARD`].
async fn guarded<T>(what: &str, op: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, op)
        .await
        .unwrap_or_else(|_| panic!("{what} did not return within {GUARD:?}"))
}

fn record_ends<S: SessionStore>(store: &S) -> Arc<Mutex<Vec<(String, EndReason)>>> {
    let ends = Arc::new(Mutex::new(Vec::new()));
    let sink = ends.clone();
    store.on_session_end(Arc::new(move |id, why| {
        sink.lock().unwrap().push((id.to_owned(), why));
    }));
    ends
}

fn session_json(id: &str, ttl_ms: u64) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    serde_json::to_vec(&json!({
        "id": id, "created_at_ms": now, "last_accessed_ms": now, "ttl_ms": ttl_ms,
        "data": {}, "programs": {}, "metadata": {}
    }))
    .unwrap()
}

// ---------------------------------------------------------------------
// Defects
// ---------------------------------------------------------------------

/// store.rs: `cleanup_expired` "Removes the sessions whose TTL has passed,
/// tells the listeners"; `list_sessions`: "The ids of the live sessions".
/// One session key holding garbage (another client, a bug of an older
/// version) makes `scan` (kv.rs) fail with `Corrupt` on its `?`: every
/// `list_sessions`, `stats` and `cleanup_expired` of the whole bucket
/// fails, and the background sweep never reports an expiry again (the
/// pool keeps the affinity of every expired session). The Redis store
/// lists from its index and is not stopped by one bad session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_corrupt_session_does_not_stop_listing_stats_or_the_sweep() {
    let server = NatsServer::start().await;
    let store = store(&server).await;
    let ends = record_ends(&store);
    store.ensure_session("live").await.unwrap();
    store
        .create_session("brief", Some(Duration::from_millis(50)))
        .await
        .unwrap();
    raw_bucket(&server)
        .await
        .put(session_key("bad"), "not json".into())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let listed = store.list_sessions().await;
    let stats = store.stats().await;
    let swept = store.cleanup_expired().await;
    assert_eq!(listed.ok(), Some(vec!["live".to_string()]), "list_sessions");
    assert_eq!(stats.map(|s| s.active_sessions).ok(), Some(1), "stats");
    assert_eq!(swept.ok(), Some(1), "cleanup_expired");
    assert_eq!(
        *ends.lock().unwrap(),
        vec![("brief".to_string(), EndReason::Expired)]
    );
}

/// store.rs: `delete_session` "Removes the session"; sessions.md:
/// `Corrupt` is for "stored data that does not parse". A session whose
/// stored JSON is garbage reads as `Corrupt` (good), but it can never be
/// removed through the store: `delete_session` parses the value before
/// its revision-checked delete (kv.rs `load` in `delete_session`) and
/// fails with `Corrupt` too, so the id is unusable for good (every
/// `ensure_session`, hence every call of that session through the pool,
/// fails) until someone deletes the key by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_session_can_be_deleted_and_its_id_used_again() {
    let server = NatsServer::start().await;
    let store = store(&server).await;
    store.ensure_session("s").await.unwrap();
    raw_bucket(&server)
        .await
        .put(session_key("s"), Vec::from(&b"\xff\xfe"[..]).into())
        .await
        .unwrap();
    assert!(matches!(
        store.get_session("s").await,
        Err(Error::Corrupt(_))
    ));
    let deleted = store.delete_session("s").await;
    assert!(deleted.is_ok(), "delete_session: {deleted:?}");
    store.ensure_session("s").await.unwrap();
    assert!(store.get_session("s").await.unwrap().data.is_empty());
}

/// store.rs: `list_sessions` gives "The ids of the live sessions"
/// (each once); `StoreStats::active_sessions` is "Sessions alive now".
/// `scan` collects keys from `kv.keys()`, an ordered consumer (last
/// message per subject, then whatever comes) that stops at the first
/// message with nothing pending: a session touched (every use rewrites
/// it, and the bucket keeps one revision, so its old message is gone)
/// while the keys are read is missed when its new message lands after
/// that point, or listed twice when it lands before. With 300 sessions
/// and two other hosts touching them, listings gave 298 to 302 ids and
/// `active_sessions` 299 to 301. `scan` does not deduplicate either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_touched_during_a_listing_are_listed_once() {
    let server = NatsServer::start().await;
    let store = store(&server).await;
    const N: usize = 300;
    for i in 0..N {
        store.ensure_session(&format!("s{i}")).await.unwrap();
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2 {
        let (other, stop) = (self::store(&server).await, stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                other.ensure_session(&format!("s{}", i % N)).await.unwrap();
                i += 7;
            }
        }));
    }
    let mut wrong = Vec::new();
    for _ in 0..20 {
        let listed = store.list_sessions().await.unwrap();
        let active = store.stats().await.unwrap().active_sessions;
        let unique: HashSet<&String> = listed.iter().collect();
        if listed.len() != N || unique.len() != N || active != N as u64 {
            wrong.push(format!(
                "{} ids listed ({} distinct), active_sessions {active}",
                listed.len(),
                unique.len()
            ));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    assert!(
        wrong.is_empty(),
        "{N} live sessions; wrong answers in 20 listings: {wrong:?}"
    );
}

/// docs/cluster.md gives each host publish permissions for
/// `$KV.snakepit_sessions.>` only; a host whose store uses another bucket,
/// or whose permissions are otherwise short, has every write refused.
/// A refused write should fail its operation (`Backend`) within the
/// store's usual bounds, as `set` does (one JetStream ack timeout, 5 s).
/// `delete_session` instead treats any failure of its revision-checked
/// delete as a lost race and tries again, 200 times (kv.rs
/// `delete_session`, `.is_ok()` on `delete_expect_revision`): it hangs for
/// about 200 ack timeouts (~17 minutes), then says `Conflict` ("concurrent
/// writers kept changing the session"), which is not what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_delete_fails_with_a_backend_error_within_bounds() {
    let (server, admin, reader) = server_with_a_user_who_cannot_write().await;
    let _ = &server;
    admin.ensure_session("s").await.unwrap();
    // The reader can read it...
    assert!(reader.session_exists("s").await.unwrap());
    // ...and a write it cannot make is an error, in bounds.
    let set = guarded("set", reader.set("s", "k", json!(1))).await;
    assert!(matches!(set, Err(Error::Backend(_))), "set: {set:?}");
    let deleted = guarded("delete_session", reader.delete_session("s")).await;
    assert!(
        matches!(deleted, Err(Error::Backend(_) | Error::Timeout { .. })),
        "delete_session: {deleted:?}"
    );
}

/// The same cause through the pool's path: `ensure_session` of an expired
/// session reaps it first (`reap`, which takes every failure of its delete
/// for "another host removed it", kv.rs `reap`) and loops: with the delete
/// refused it spins 200 times, each waiting for an ack that never comes,
/// and every session call through the pool hangs for minutes instead of
/// failing with `Error::Session` at once. (The sweep's `cleanup_expired`
/// also hides the failure: `Ok(0)`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_session_of_an_expired_session_fails_in_bounds_when_writes_are_refused() {
    let (server, admin, reader) = server_with_a_user_who_cannot_write().await;
    let _ = &server;
    admin
        .create_session("old", Some(Duration::from_millis(1)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = guarded("ensure_session", reader.ensure_session("old")).await;
    assert!(
        matches!(r, Err(Error::Backend(_) | Error::Timeout { .. })),
        "ensure_session: {r:?}"
    );
    let swept = guarded("cleanup_expired", reader.cleanup_expired()).await;
    assert!(swept.is_err(), "cleanup_expired hid the failure: {swept:?}");
}

/// A server with two users in one JetStream account: `admin`, who may do
/// anything, and `reader`, who may use the JetStream API (reads) but not
/// publish to the bucket's subjects (writes). A store for each.
async fn server_with_a_user_who_cannot_write() -> (NatsServer, NatsKvStore, NatsKvStore) {
    let server = NatsServer::start_with_config(
        r#"
accounts {
  APP {
    jetstream: enabled
    users = [
      {user: admin, password: admin}
      {user: reader, password: reader, permissions: {
        publish: {allow: [">"], deny: ["$KV.snakepit_sessions.>"]}
        subscribe: {allow: [">"]}
      }}
    ]
  }
}
"#,
    )
    .await;
    let connect = |user: &'static str| {
        let url = server.url.clone();
        async move {
            let nats = async_nats::ConnectOptions::with_user_and_password(user.into(), user.into())
                .connect(url)
                .await
                .unwrap();
            NatsKvStore::builder(&nats)
                .sweep_interval(Duration::from_secs(3600))
                .connect()
                .await
                .unwrap()
        }
    };
    let admin = connect("admin").await;
    let reader = connect("reader").await;
    (server, admin, reader)
}

/// store.rs: `list_sessions` gives "The ids of the live sessions". Keys
/// planted in the bucket that are not the store's own encoding (upper-case
/// hex) decode (kv.rs `unhex`, `from_str_radix` takes either case) to ids
/// whose keys are other keys: `s.4A` is listed as `"J"` (whose key is
/// `s.4a`), and counted as active, though `session_exists("J")` answers
/// `false` and no operation of the store reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_stores_own_keys_are_listed() {
    let server = NatsServer::start().await;
    let store = store(&server).await;
    store.ensure_session("real").await.unwrap();
    let raw = raw_bucket(&server).await;
    for key in ["s.4A", "s.4a4A", "x.4a", "s.zz", "s.4", "s.c3"] {
        raw.put(key, session_json("J", 3_600_000).into())
            .await
            .unwrap();
    }
    let listed = store.list_sessions().await.unwrap();
    for id in &listed {
        assert!(
            matches!(store.session_exists(id).await, Ok(true)),
            "{id:?} is listed but does not exist; listed: {listed:?}"
        );
    }
    assert_eq!(listed, vec!["real".to_string()]);
    assert_eq!(store.stats().await.unwrap().active_sessions, 1);
}

/// docs/cluster.md and sessions.md: a `NatsKvStore` session is one NATS
/// message, so its data, programs and metadata together must fit the
/// server's `max_payload` (1 MiB by default). A value just under it comes
/// back whole; one over it is refused with an error that names the limit
/// (it once read "failed getting entry", for a write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_holds_up_to_the_servers_max_payload_and_says_so_beyond() {
    let server = NatsServer::start().await;
    let store = store(&server).await;
    store.ensure_session("s").await.unwrap();
    let near = json!("x".repeat(1_000_000));
    store.set("s", "near", near.clone()).await.unwrap();
    assert_eq!(store.get("s", "near").await.unwrap(), Some(near));
    let big = json!("x".repeat(2 << 20));
    for r in [
        store.set("s", "big", big.clone()).await,
        store.store_global_program("big", big.clone()).await,
    ] {
        match r {
            Err(Error::Backend(m)) => assert!(m.contains("max_payload of 1048576"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}

// ---------------------------------------------------------------------
// Promised behaviour that holds
// ---------------------------------------------------------------------

/// The ABA the Redis store had: while an update is between its read and
/// its write, another host deletes the session, creates it again and sets
/// `b`. The KV revision is the stream's sequence, which never goes back,
/// so the update's compare-and-swap fails, it reads the new session and
/// the concurrent set survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_never_lands_on_a_session_deleted_and_created_again() {
    let server = NatsServer::start().await;
    let store = store(&server).await;
    let other = self::store(&server).await;
    store.create_session("s", None).await.unwrap();
    store.set("s", "a", json!("old")).await.unwrap();
    let handle = tokio::runtime::Handle::current();
    let mut first = true;
    let got = store
        .update_session("s", |s| {
            s.metadata.insert("touched".into(), json!(true));
            if std::mem::take(&mut first) {
                let other = other.clone();
                let h = handle.clone();
                std::thread::spawn(move || {
                    h.block_on(async {
                        assert!(other.delete_session("s").await.unwrap());
                        other.ensure_session("s").await.unwrap();
                        other.set("s", "b", json!("new")).await.unwrap();
                    })
                })
                .join()
                .unwrap();
            }
        })
        .await;
    let s = store.get_session("s").await.unwrap();
    assert_eq!(s.data.get("b"), Some(&json!("new")), "{got:?} {s:?}");
    assert!(!s.data.contains_key("a"), "{s:?}");
}

/// Two stores on two connections (two hosts) updating one session at once
/// lose no update: every change is a compare-and-swap on the revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_updating_one_session_lose_nothing() {
    let server = NatsServer::start().await;
    let a = store(&server).await;
    let b = store(&server).await;
    a.create_session("busy", None).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..6 {
        let s = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                s.update_session("busy", |s| {
                    let n = s.metadata.get("n").and_then(Value::as_u64).unwrap_or(0);
                    s.metadata.insert("n".into(), json!(n + 1));
                })
                .await
                .unwrap();
                s.set("busy", &format!("t{t}_{i}"), json!(i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        guarded("the writers", t).await.unwrap();
    }
    let s = b.get_session("busy").await.unwrap();
    assert_eq!(s.metadata["n"], 90);
    assert_eq!(s.data.len(), 90);
}

/// Many `ensure_session`s of one new id from two hosts at once: all
/// succeed and exactly one creates it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ensures_from_two_hosts_create_the_session_once() {
    let server = NatsServer::start().await;
    let a = store(&server).await;
    let b = store(&server).await;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let s = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move { s.ensure_session("new").await }));
    }
    for t in tasks {
        guarded("ensure_session", t).await.unwrap().unwrap();
    }
    let created =
        a.stats().await.unwrap().sessions_created + b.stats().await.unwrap().sessions_created;
    assert_eq!(created, 1);
    assert_eq!(a.list_sessions().await.unwrap(), vec!["new".to_string()]);
}

/// kv.rs and docs/cluster.md: expired sessions are "removed by a
/// revision-checked delete so each expiry is reported once". Two hosts
/// sweeping the same expired sessions at once report each exactly once
/// between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_sweeping_at_once_report_each_expiry_once() {
    let server = NatsServer::start().await;
    let a = store(&server).await;
    let b = store(&server).await;
    let (ends_a, ends_b) = (record_ends(&a), record_ends(&b));
    for i in 0..20 {
        a.create_session(&format!("e{i}"), Some(Duration::from_millis(30)))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (na, nb) = tokio::join!(a.cleanup_expired(), b.cleanup_expired());
    assert_eq!(na.unwrap() + nb.unwrap(), 20);
    let mut all: Vec<(String, EndReason)> = ends_a.lock().unwrap().clone();
    all.extend(ends_b.lock().unwrap().iter().cloned());
    all.sort_by(|x, y| x.0.cmp(&y.0));
    let mut want: Vec<(String, EndReason)> = (0..20)
        .map(|i| (format!("e{i}"), EndReason::Expired))
        .collect();
    want.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(all, want);
    let expired =
        a.stats().await.unwrap().sessions_expired + b.stats().await.unwrap().sessions_expired;
    assert_eq!(expired, 20);
}

/// The Redis store's defect, checked here: sessions that expired and were
/// then created again, touched by `ensure_session`, or deleted before any
/// sweep have their expiry reported and counted (and a deleted-after-expiry
/// session is `false` to `delete_session`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiries_of_ids_used_again_before_the_sweep_are_reported() {
    let server = NatsServer::start().await;
    let store = store(&server).await;
    let ends = record_ends(&store);
    let ids = ["recreated", "ensured", "deleted"];
    for id in ids {
        store
            .create_session(id, Some(Duration::from_millis(50)))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    store.create_session("recreated", None).await.unwrap();
    store.ensure_session("ensured").await.unwrap();
    assert!(!store.delete_session("deleted").await.unwrap());
    store.cleanup_expired().await.unwrap();
    let mut got = ends.lock().unwrap().clone();
    got.sort_by(|x, y| x.0.cmp(&y.0));
    let mut want: Vec<(String, EndReason)> = ids
        .iter()
        .map(|id| (id.to_string(), EndReason::Expired))
        .collect();
    want.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(got, want);
    assert_eq!(store.stats().await.unwrap().sessions_expired, 3);
    assert!(store
        .get_session("recreated")
        .await
        .unwrap()
        .data
        .is_empty());
}

/// store.rs: listeners are called "after the removal, outside any lock": a
/// listener that registers another listener does not deadlock.
#[test]
fn a_listener_that_registers_a_listener_does_not_deadlock() {
    let (done, finished) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let server = NatsServer::start().await;
            let store = store(&server).await;
            let again = store.clone();
            store.on_session_end(Arc::new(move |_, _| {
                again.on_session_end(Arc::new(|_, _| {}));
            }));
            store.create_session("s", None).await.unwrap();
            assert!(store.delete_session("s").await.unwrap());
            done.send(()).unwrap();
        });
    });
    finished
        .recv_timeout(GUARD)
        .expect("delete_session returned (the listener did not deadlock)");
    server.join().unwrap();
}

/// sessions.md: `Invalid` is only "an empty id or key, or one over 512
/// bytes": every other text is an id. Ids, data keys and program ids made
/// of NATS subject syntax (`.`, `*`, `>`, spaces), control characters,
/// NUL, the store's own key prefixes, and 512 bytes of two-byte characters
/// are each kept apart, listed exactly, and their global programs too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_ids_keys_and_program_ids_are_kept_apart() {
    let server = NatsServer::start().await;
    let store = store(&server).await;
    let long = "ü".repeat(256);
    let ids = [
        "*", ">", ".", "a.b", "a.*", "a.>", " ", "\t", "\n", "\0", "\u{7f}", "s.61", "g.61", "s",
        "g", "$KV", "_INBOX.x", "é", "🐍", &long,
    ];
    for id in ids {
        store.ensure_session(id).await.unwrap();
        store.set(id, id, json!(id)).await.unwrap();
        store.store_program(id, id, json!({"p": id})).await.unwrap();
        store.store_global_program(id, json!(id)).await.unwrap();
    }
    for id in ids {
        let s = store.get_session(id).await.unwrap();
        assert_eq!(s.id, id);
        assert_eq!(s.data.len(), 1, "{id:?}: {s:?}");
        assert_eq!(s.data[id], json!(id));
        assert_eq!(s.programs[id], json!({"p": id}));
        assert_eq!(store.get_global_program(id).await.unwrap(), json!(id));
    }
    let mut listed = store.list_sessions().await.unwrap();
    listed.sort();
    let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(listed, want);
    assert_eq!(
        store.stats().await.unwrap().global_programs,
        ids.len() as u64
    );
    for id in ids {
        assert!(store.delete_session(id).await.unwrap());
    }
    assert!(store.list_sessions().await.unwrap().is_empty());
    assert_eq!(store.stats().await.unwrap().active_sessions, 0);
}

/// sessions.md: "`Corrupt` (stored data that does not parse)". Garbage
/// another client put at a session's key (bytes that are not UTF-8, text
/// that is not JSON, JSON that is not a session) and at a global
/// program's key is `Corrupt` from every operation that reads it; nothing
/// panics, and the garbage is not overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_planted_in_the_bucket_is_corrupt() {
    let server = NatsServer::start().await;
    let store = store(&server).await;
    let raw = raw_bucket(&server).await;
    let garbage: [&[u8]; 4] = [b"\xff\xfe", b"not json", b"[1, 2]", b"{\"id\": 5}"];
    for (i, g) in garbage.iter().enumerate() {
        let id = format!("g{i}");
        raw.put(session_key(&id), Vec::from(*g).into())
            .await
            .unwrap();
        let got: Vec<(&str, Result<(), Error>)> = vec![
            ("get", store.get(&id, "k").await.map(drop)),
            ("set", store.set(&id, "k", json!(1)).await),
            ("get_session", store.get_session(&id).await.map(drop)),
            (
                "update_session",
                store.update_session(&id, |_| {}).await.map(drop),
            ),
            ("ensure_session", store.ensure_session(&id).await),
            ("session_exists", store.session_exists(&id).await.map(drop)),
            (
                "create_session",
                store.create_session(&id, None).await.map(drop),
            ),
        ];
        for (op, r) in &got {
            assert!(
                matches!(r, Err(Error::Corrupt(_))),
                "{op} on {:?}: {r:?}",
                String::from_utf8_lossy(g)
            );
        }
        let still = raw.get(session_key(&id)).await.unwrap().unwrap();
        assert_eq!(&still[..], *g);
    }
    raw.put("g.7a", "{oops".into()).await.unwrap();
    assert!(matches!(
        store.get_global_program("z").await,
        Err(Error::Corrupt(_))
    ));
}

/// A value too big for one NATS message is refused with a typed error
/// (not a panic or a hang), nothing is written, and the session keeps
/// what it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_over_the_nats_payload_limit_is_an_error_and_changes_nothing() {
    let server = NatsServer::start().await;
    let store = store(&server).await;
    store.ensure_session("s").await.unwrap();
    store.set("s", "small", json!("kept")).await.unwrap();
    let big = json!("x".repeat(2 << 20));
    let r = guarded("set", store.set("s", "big", big.clone())).await;
    assert!(
        matches!(r, Err(Error::Backend(_) | Error::Invalid { .. })),
        "{r:?}"
    );
    let r = guarded("store_global_program", store.store_global_program("p", big)).await;
    assert!(
        matches!(r, Err(Error::Backend(_) | Error::Invalid { .. })),
        "{r:?}"
    );
    let s = store.get_session("s").await.unwrap();
    assert_eq!(s.data.len(), 1);
    assert_eq!(s.data["small"], json!("kept"));
    assert!(store.get_global_program("p").await.is_err());
}

/// With the NATS server down every operation returns a typed error
/// (`Backend` or `Timeout`) within bounds, without a panic; once it is
/// back (same port, same JetStream store) the same store handle works
/// again and the data is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_gives_typed_errors_then_the_same_store_recovers() {
    let mut server = NatsServer::start().await;
    let store = store(&server).await;
    store.ensure_session("s").await.unwrap();
    store.set("s", "k", json!("kept")).await.unwrap();
    store
        .store_global_program("p", json!({"v": 1}))
        .await
        .unwrap();
    server.kill();
    let mut tasks: Vec<(&str, tokio::task::JoinHandle<Result<(), Error>>)> = Vec::new();
    macro_rules! op {
        ($name:expr, |$s:ident| $body:expr) => {{
            let $s = store.clone();
            tasks.push(($name, tokio::spawn(async move { $body })));
        }};
    }
    op!("get_session", |s| s.get_session("s").await.map(drop));
    op!("get", |s| s.get("s", "k").await.map(drop));
    op!("set", |s| s.set("s", "k2", json!(2)).await);
    op!("ensure_session", |s| s.ensure_session("t").await);
    op!("create_session", |s| s
        .create_session("u", None)
        .await
        .map(drop));
    op!("delete_session", |s| s.delete_session("s").await.map(drop));
    op!("session_exists", |s| s.session_exists("s").await.map(drop));
    op!("list_sessions", |s| s.list_sessions().await.map(drop));
    op!("stats", |s| s.stats().await.map(drop));
    op!("cleanup_expired", |s| s.cleanup_expired().await.map(drop));
    op!("get_global_program", |s| s
        .get_global_program("p")
        .await
        .map(drop));
    op!("store_global_program", |s| s
        .store_global_program("q", json!(1))
        .await);
    let mut outcomes = HashMap::new();
    for (name, t) in tasks {
        let r = guarded(name, t).await.unwrap();
        outcomes.insert(name, format!("{r:?}"));
        assert!(
            matches!(r, Err(Error::Backend(_) | Error::Timeout { .. })),
            "{name} with NATS down: {r:?}"
        );
    }
    server.restart().await;
    let mut last = None;
    let back = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match store.get("s", "k").await {
                Ok(v) => return v,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert_eq!(
        back.ok(),
        Some(Some(json!("kept"))),
        "never recovered; last error {last:?}; while down: {outcomes:?}"
    );
    assert_eq!(
        store.get_global_program("p").await.unwrap(),
        json!({"v": 1})
    );
    store.ensure_session("t").await.unwrap();
    let mut listed = store.list_sessions().await.unwrap();
    listed.sort();
    assert!(listed.contains(&"s".to_string()), "{listed:?}");
}

/// A NATS server without JetStream: `connect` fails with a typed error,
/// in bounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_without_jetstream_is_a_backend_error() {
    let dir = std::env::temp_dir().join(format!(
        "snakepit-redteam-kv-nojs-{}-{}",
        std::process::id(),
        common::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    #[allow(clippy::disallowed_methods)] // a test server, not a worker
    let command = std::process::Command::new(common::nats_server_bin());
    let (mut child, port) = snakepit_tests::spawn_nats_server(command, None, &dir);
    let nats = async_nats::connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap();
    let r = guarded(
        "connect",
        NatsKvStore::builder(&nats)
            .sweep_interval(Duration::from_secs(3600))
            .connect(),
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(matches!(r, Err(Error::Backend(_))), "{r:?}");
}

/// A bucket name NATS does not allow is an error at `connect` (not a
/// panic); two stores on different buckets of one server see none of
/// each other's sessions or global programs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bucket_names_fail_and_buckets_are_namespaces() {
    let server = NatsServer::start().await;
    let nats = server.connect().await;
    for bad in ["", "a.b", "a b", "a*", "a>"] {
        let r = guarded("connect", NatsKvStore::builder(&nats).bucket(bad).connect()).await;
        assert!(matches!(r, Err(Error::Backend(_))), "{bad:?}: {r:?}");
    }
    let a = NatsKvStore::builder(&nats)
        .bucket("one")
        .connect()
        .await
        .unwrap();
    let b = NatsKvStore::builder(&nats)
        .bucket("two")
        .connect()
        .await
        .unwrap();
    a.ensure_session("s").await.unwrap();
    a.store_global_program("p", json!(1)).await.unwrap();
    assert!(!b.session_exists("s").await.unwrap());
    assert!(b.list_sessions().await.unwrap().is_empty());
    assert!(matches!(
        b.get_global_program("p").await,
        Err(Error::ProgramNotFound { .. })
    ));
    assert_eq!(b.stats().await.unwrap().global_programs, 0);
}

/// An empty bucket, and one whose keys were all deleted, list nothing
/// (without hanging on the key listing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_and_emptied_buckets_list_nothing() {
    let server = NatsServer::start().await;
    let store = store(&server).await;
    assert!(guarded("list", store.list_sessions())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        guarded("cleanup", store.cleanup_expired()).await.unwrap(),
        0
    );
    for i in 0..5 {
        store.ensure_session(&format!("s{i}")).await.unwrap();
    }
    for i in 0..5 {
        assert!(store.delete_session(&format!("s{i}")).await.unwrap());
    }
    assert!(guarded("list", store.list_sessions())
        .await
        .unwrap()
        .is_empty());
    let stats = guarded("stats", store.stats()).await.unwrap();
    assert_eq!((stats.active_sessions, stats.sessions_deleted), (0, 5));
}

/// The sweep runs on a store built with a short `sweep_interval` and
/// reports an expiry through any clone; once every handle is dropped it
/// stops: a session that expires later is not reported to the old
/// listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_reports_expiries_and_stops_with_the_last_handle() {
    let server = NatsServer::start().await;
    let store = NatsKvStore::builder(&server.connect().await)
        .sweep_interval(Duration::from_millis(50))
        .connect()
        .await
        .unwrap();
    let ends = record_ends(&store);
    store
        .create_session("a", Some(Duration::from_millis(20)))
        .await
        .unwrap();
    common::eventually(15, "the sweep reports `a`", || async {
        !ends.lock().unwrap().is_empty()
    })
    .await;
    drop(store);
    let other = self::store(&server).await;
    other
        .create_session("b", Some(Duration::from_millis(20)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        *ends.lock().unwrap(),
        vec![("a".to_string(), EndReason::Expired)]
    );
    assert_eq!(other.cleanup_expired().await.unwrap(), 1);
}

/// store.rs: `get` and `get_session` read a session (extending its TTL);
/// sessions.md: `Conflict` is for an update that "lost to other writers
/// on each of its ... attempts". Here every read is a compare-and-swap
/// write too (the touch), retried at most 200 times without backoff
/// (kv.rs `modify`, `ATTEMPTS`): many concurrent readers of one busy
/// session (calls of one session in flight on two hosts, each touching
/// it and reading its data) make some reads fail with `Conflict`: 96
/// readers on two hosts, 20 `get`s each, nobody changing the data: about
/// a dozen of the 1,920 reads failed. The memory and Redis stores answer
/// every read (one lock, one script).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_readers_of_one_session_all_succeed() {
    let server = NatsServer::start().await;
    let a = store(&server).await;
    let b = store(&server).await;
    a.ensure_session("hot").await.unwrap();
    a.set("hot", "k", json!("v")).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..96 {
        let s = if t % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            for _ in 0..20 {
                if let Err(e) = s.get("hot", "k").await {
                    failed.push(format!("{e:?}"));
                }
            }
            failed
        }));
    }
    let mut failed = Vec::new();
    for t in tasks {
        failed.extend(guarded("the readers", t).await.unwrap());
    }
    assert!(
        failed.is_empty(),
        "{} of 1920 reads failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
}

/// docs/cluster.md, Failures: when NATS is back "calls work again ...
/// nothing is restarted"; sessions.md: `ensure_session` (every session
/// call through the pool) creates a session afresh when the backend lost
/// it. If the bucket itself is gone (removed by an operator or a
/// neighbour, or a NATS server back without its JetStream storage), the
/// store never makes it again: it is created only in `connect` (kv.rs
/// `NatsKvStoreBuilder::connect`), so every operation fails with
/// `Backend` ("stream not found") until the process is restarted, and
/// every session call of the cluster fails with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_works_again_after_its_bucket_is_gone() {
    let server = NatsServer::start().await;
    let store = store(&server).await;
    store.ensure_session("s").await.unwrap();
    async_nats::jetstream::new(server.connect().await)
        .delete_key_value(BUCKET)
        .await
        .unwrap();
    let mut last = None;
    let back = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match store.ensure_session("s").await {
                Ok(()) => return,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(back.is_ok(), "ensure_session never worked again: {last:?}");
    store.set("s", "k", json!(1)).await.unwrap();
}

/// A NATS server that stops answering (SIGSTOP: the connection stays up,
/// nothing comes back) does not hang the store: every operation returns a
/// typed error (`Backend` or `Timeout`) within bounds; after SIGCONT the
/// same store works again, its data intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_nats_server_gives_typed_errors_then_the_store_recovers() {
    let dir = std::env::temp_dir().join(format!(
        "snakepit-redteam-kv-paused-{}-{}",
        std::process::id(),
        common::free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    #[allow(clippy::disallowed_methods)] // a test server, not a worker
    let mut command = std::process::Command::new(common::nats_server_bin());
    command.arg("-js").arg("-sd").arg(dir.join("store"));
    let (child, port) = snakepit_tests::spawn_nats_server(command, None, &dir);
    struct Reap(std::process::Child, std::path::PathBuf);
    impl Drop for Reap {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the child this test started.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(self.0.id() as libc::pid_t, libc::SIGCONT);
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }
    let pid = child.id() as libc::pid_t;
    let signal = |sig| {
        // SAFETY: kill(2) on the child this test started and has not reaped.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, sig);
        }
    };
    let _reap = Reap(child, dir);
    let nats = async_nats::connect(format!("nats://127.0.0.1:{port}"))
        .await
        .unwrap();
    let store = NatsKvStore::builder(&nats)
        .sweep_interval(Duration::from_secs(3600))
        .connect()
        .await
        .unwrap();
    store.ensure_session("s").await.unwrap();
    store.set("s", "k", json!("kept")).await.unwrap();
    signal(libc::SIGSTOP);
    let (get, set, ensure, delete, list) = tokio::join!(
        guarded("get", store.get("s", "k")),
        guarded("set", store.set("s", "k2", json!(2))),
        guarded("ensure_session", store.ensure_session("t")),
        guarded("delete_session", store.delete_session("s")),
        guarded("list_sessions", store.list_sessions()),
    );
    signal(libc::SIGCONT);
    let typed = |r: &Result<(), Error>| matches!(r, Err(Error::Backend(_) | Error::Timeout { .. }));
    for (op, r) in [
        ("get", get.map(drop)),
        ("set", set),
        ("ensure_session", ensure),
        ("delete_session", delete.map(drop)),
        ("list_sessions", list.map(drop)),
    ] {
        assert!(typed(&r), "{op} with NATS paused: {r:?}");
    }
    let mut last = None;
    let back = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match store.get("s", "k").await {
                Ok(v) => return v,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert_eq!(back.ok(), Some(Some(json!("kept"))), "last error: {last:?}");
}

/// The same cause as `a_refused_delete_fails_with_a_backend_error_within_bounds`,
/// seen quickly: an operator seals the bucket's stream (read-only). A write
/// is refused at once and `set` says `Backend`; `delete_session` takes each
/// refusal for a lost race, tries 200 times and answers `Conflict`
/// ("concurrent writers kept changing the session"), though nobody else
/// wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_refused_by_a_sealed_bucket_is_a_backend_error() {
    let server = NatsServer::start().await;
    let store = store(&server).await;
    store.ensure_session("s").await.unwrap();
    let js = async_nats::jetstream::new(server.connect().await);
    let mut stream = js.get_stream(format!("KV_{BUCKET}")).await.unwrap();
    let mut config = stream.info().await.unwrap().config.clone();
    config.sealed = true;
    js.update_stream(config).await.unwrap();
    let set = guarded("set", store.set("s", "k", json!(1))).await;
    assert!(matches!(set, Err(Error::Backend(_))), "set: {set:?}");
    let deleted = guarded("delete_session", store.delete_session("s")).await;
    assert!(
        matches!(deleted, Err(Error::Backend(_))),
        "delete_session: {deleted:?}"
    );
}
