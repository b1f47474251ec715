//! The promises of snakepit-session's API docs (rustdoc) that no other test
//! shows: the error each store gives in each case, what touching an expired
//! session does, what an update may and may not change, when and how end
//! listeners are told, `check_ttl`'s bounds, the Redis store's keys, its
//! listeners across hosts and its `Debug`, and the program helper without
//! `attach`. The Redis parts run against a real `redis-server` (feature
//! `redis`); the program helper against a real Python worker.

mod common;
#[cfg(feature = "redis")]
mod redis_server;

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::record_ends;
use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::Pool;
use snakepit_session::{
    check_ttl, execute_program_command, EndReason, Error, MemoryStore, SessionStore, MAX_TTL,
};
use snakepit_tests::until;

/// Only turns a hang into a failure of a test.
const GUARD: Duration = Duration::from_secs(60);

/// A store whose background sweep never runs during a test: what a test
/// sees of expiry is what the operations themselves do.
fn unswept_memory_store() -> MemoryStore {
    MemoryStore::builder()
        .sweep_interval(Duration::from_secs(3600))
        .build()
}

// ---------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------

/// `Error::to_remote`: "a short type name [the worker] can match on, and
/// this error's text", for every variant; `is_gone` is true for `NotFound`
/// and `Expired` only; `ProgramNotFound` names the session, or "the global
/// programs" when `session_id` is `None`.
#[test]
fn every_error_has_its_remote_kind_and_only_not_found_and_expired_are_gone() {
    let pool_error: Error = snakepit_core::Error::ShutDown.into();
    let cases: Vec<(Error, &str, bool)> = vec![
        (Error::NotFound("s".into()), "SessionNotFound", true),
        (Error::Expired("s".into()), "SessionExpired", true),
        (Error::AlreadyExists("s".into()), "SessionExists", false),
        (
            Error::ProgramNotFound {
                session_id: Some("s".into()),
                program_id: "p".into(),
            },
            "ProgramNotFound",
            false,
        ),
        (
            Error::Invalid {
                what: "key",
                reason: "empty",
            },
            "InvalidArgument",
            false,
        ),
        (
            Error::Conflict {
                session_id: "s".into(),
                attempts: 3,
            },
            "SessionConflict",
            false,
        ),
        (Error::Corrupt("x".into()), "SessionStoreError", false),
        (
            Error::Timeout {
                operation: "get",
                after: Duration::from_secs(2),
            },
            "SessionStoreError",
            false,
        ),
        (Error::Backend("down".into()), "SessionStoreError", false),
        (pool_error, "PoolError", false),
    ];
    for (err, kind, gone) in cases {
        let remote = err.to_remote();
        assert_eq!(remote.kind.as_deref(), Some(kind), "{err:?}");
        assert_eq!(remote.message, err.to_string(), "{err:?}");
        assert_eq!(err.is_gone(), gone, "{err:?}");
    }
    let in_session = Error::ProgramNotFound {
        session_id: Some("s1".into()),
        program_id: "p1".into(),
    };
    assert_eq!(
        in_session.to_string(),
        "program `p1` not found in session `s1`"
    );
    let global = Error::ProgramNotFound {
        session_id: None,
        program_id: "p1".into(),
    };
    assert_eq!(
        global.to_string(),
        "program `p1` not found in the global programs"
    );
}

/// `MAX_TTL`: "2^53 - 1 milliseconds"; `check_ttl`: `Ok` from 1 ms up to
/// it "in whole milliseconds, as stores keep it", else `Error::Invalid`
/// (for `ttl`). The longest `Duration` is refused, not a panic.
#[test]
fn check_ttl_accepts_up_to_max_ttl_in_whole_milliseconds_and_refuses_longer() {
    assert_eq!(MAX_TTL, Duration::from_millis((1 << 53) - 1));
    for ok in [
        Duration::from_millis(1),
        Duration::from_secs(3600),
        MAX_TTL,
        MAX_TTL + Duration::from_micros(999),
    ] {
        assert!(check_ttl(ok).is_ok(), "{ok:?}");
    }
    for bad in [
        Duration::ZERO,
        Duration::from_micros(999),
        MAX_TTL + Duration::from_millis(1),
        Duration::from_secs(u64::MAX),
        Duration::MAX,
    ] {
        match check_ttl(bad) {
            Err(Error::Invalid { what: "ttl", .. }) => {}
            other => panic!("{bad:?}: expected Invalid ttl, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------
// What every store promises (run against each store below)
// ---------------------------------------------------------------------

/// `Error::Invalid`: "An id or key is empty or longer than `MAX_ID_LEN`
/// bytes", for the program ids that reading a program takes as well as
/// those that storing one takes: `get_program` and `get_global_program`
/// with an empty or over-long program id are `Invalid`, as
/// `store_program` and `store_global_program` are.
async fn program_ids_are_checked_when_read<S: SessionStore>(store: &S) {
    store.create_session("s", None).await.unwrap();
    let long = "p".repeat(513);
    for bad in ["", long.as_str()] {
        let stored = store.store_global_program(bad, json!(1)).await;
        assert!(
            matches!(stored, Err(Error::Invalid { .. })),
            "store_global_program({bad:.8}): {stored:?}"
        );
        let got = store.get_global_program(bad).await;
        assert!(
            matches!(got, Err(Error::Invalid { .. })),
            "get_global_program({bad:.8}): {got:?}"
        );
        let got = store.get_program("s", bad).await;
        assert!(
            matches!(got, Err(Error::Invalid { .. })),
            "get_program(s, {bad:.8}): {got:?}"
        );
    }
}

/// `update_session`: "Its `id` and `created_at_ms` cannot be changed; a
/// changed `ttl_ms` takes effect": a session whose TTL an update shortens
/// expires on the new TTL. An update of a session that is not there is
/// `NotFound` and creates nothing.
async fn an_update_keeps_id_and_creation_time_and_its_ttl_takes_effect<S: SessionStore>(store: &S) {
    let created = store
        .create_session("u", Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    let updated = store
        .update_session("u", |s| {
            s.created_at_ms = 1;
            s.id = "other".into();
            s.ttl_ms = 200;
            s.metadata.insert("m".into(), json!(1));
        })
        .await
        .unwrap();
    assert_eq!(updated.created_at_ms, created.created_at_ms);
    assert_eq!(updated.id, "u");
    assert_eq!(updated.ttl_ms, 200);
    let read = store.get_session("u").await.unwrap();
    assert_eq!(
        (read.id.as_str(), read.created_at_ms, read.ttl_ms),
        ("u", created.created_at_ms, 200),
        "{read:?}"
    );
    assert_eq!(read.metadata["m"], 1);
    assert!(!store.session_exists("other").await.unwrap());
    // The shortened TTL: the session is gone without being swept.
    until(15, "the session expires on its new TTL", || async {
        !store.session_exists("u").await.unwrap()
    })
    .await;
    assert!(store.get_session("u").await.unwrap_err().is_gone());

    let r = store.update_session("never", |_| {}).await;
    assert!(
        matches!(r, Err(Error::NotFound(ref id)) if id == "never"),
        "{r:?}"
    );
    assert!(!store.session_exists("never").await.unwrap());
}

/// `create_session` "fails with `AlreadyExists` if one is alive": once a
/// session's TTL has passed (swept or not), its id starts a new, empty
/// session with the TTL asked for.
async fn an_expired_ids_session_can_be_created_again_empty<S: SessionStore>(store: &S) {
    store
        .create_session("again", Some(Duration::from_millis(100)))
        .await
        .unwrap();
    store.set("again", "old", json!(1)).await.unwrap();
    store
        .store_program("again", "p", json!({"old": true}))
        .await
        .unwrap();
    until(15, "the session expires", || async {
        !store.session_exists("again").await.unwrap()
    })
    .await;
    let s = store
        .create_session("again", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(s.ttl_ms, 60_000);
    let s = store.get_session("again").await.unwrap();
    assert!(
        s.data.is_empty() && s.programs.is_empty() && s.metadata.is_empty(),
        "{s:?}"
    );
    assert_eq!(store.get("again", "old").await.unwrap(), None);
}

// ---------------------------------------------------------------------
// MemoryStore
// ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_program_ids_are_checked_when_read() {
    program_ids_are_checked_when_read(&MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_an_update_keeps_id_and_creation_time_and_its_ttl_takes_effect() {
    an_update_keeps_id_and_creation_time_and_its_ttl_takes_effect(&unswept_memory_store()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_an_expired_ids_session_can_be_created_again_empty() {
    let store = unswept_memory_store();
    let ends = record_ends(&store);
    an_expired_ids_session_can_be_created_again_empty(&store).await;
    // The session it replaced was reported as expired, and counted.
    assert_eq!(
        *ends.lock().unwrap(),
        vec![("again".to_string(), EndReason::Expired)]
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.sessions_created, stats.sessions_expired),
        (2, 1),
        "{stats:?}"
    );
}

/// `MemoryStore`: "expired sessions freed by a background sweep (and on
/// first touch after their TTL)"; `Error::Expired`: "The session's TTL
/// passed without use; it is gone now"; `Error::NotFound`: "... or expired
/// and was already swept away". With no sweep running: the first touch
/// after the TTL is `Expired`, frees the session, tells the listeners and
/// counts it; the next touch is `NotFound`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_the_first_touch_after_the_ttl_is_expired_and_frees_the_session() {
    let store = unswept_memory_store();
    let ends = record_ends(&store);
    store
        .create_session("e", Some(Duration::from_millis(50)))
        .await
        .unwrap();
    store.set("e", "k", json!(1)).await.unwrap();
    until(15, "the session's TTL passes", || async {
        !store.session_exists("e").await.unwrap()
    })
    .await;
    assert!(ends.lock().unwrap().is_empty(), "nothing swept yet");
    match store.get("e", "k").await {
        Err(Error::Expired(id)) => assert_eq!(id, "e"),
        other => panic!("expected Expired, got {other:?}"),
    }
    assert_eq!(
        *ends.lock().unwrap(),
        vec![("e".to_string(), EndReason::Expired)]
    );
    assert_eq!(store.stats().await.unwrap().sessions_expired, 1);
    match store.get_session("e").await {
        Err(Error::NotFound(id)) => assert_eq!(id, "e"),
        other => panic!("expected NotFound once freed, got {other:?}"),
    }
    assert_eq!(
        store.cleanup_expired().await.unwrap(),
        0,
        "nothing left to free"
    );
    assert_eq!(ends.lock().unwrap().len(), 1, "reported once");
}

/// `delete_session`: "Removes the session; `false` if there was none": a
/// session whose TTL has passed (not yet swept) is none; its removal is
/// reported to listeners as an expiry, not a deletion, and counted so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_deleting_an_expired_session_is_false_and_an_expiry() {
    let store = unswept_memory_store();
    let ends = record_ends(&store);
    store
        .create_session("old", Some(Duration::from_millis(30)))
        .await
        .unwrap();
    until(15, "the session's TTL passes", || async {
        !store.session_exists("old").await.unwrap()
    })
    .await;
    assert!(!store.delete_session("old").await.unwrap());
    assert_eq!(
        *ends.lock().unwrap(),
        vec![("old".to_string(), EndReason::Expired)]
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.sessions_deleted, stats.sessions_expired),
        (0, 1),
        "{stats:?}"
    );
    assert!(!store.delete_session("old").await.unwrap());
    assert_eq!(ends.lock().unwrap().len(), 1, "reported once");
}

/// `SessionStore`: "every operation that reads or writes a session
/// (`get_session`, `update_session`, `ensure_session`, programs, data)
/// extends its life by its TTL", each of them alone. A session of a 1.5 s
/// TTL is used by one operation every 0.9 s, each kind in turn: had any
/// of them not extended it, the next would come 1.8 s after the last
/// extension and find it gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_every_kind_of_use_slides_the_ttl_on_its_own() {
    let store = unswept_memory_store();
    let ttl = Duration::from_millis(1500);
    let step = Duration::from_millis(900);
    store.create_session("s", Some(ttl)).await.unwrap();
    store.store_program("s", "p", json!(1)).await.unwrap();
    let mut last = "create_session";
    for kind in [
        "get_session",
        "update_session",
        "ensure_session",
        "store_program",
        "get_program",
        "set",
        "get",
        "delete",
        "session_exists",
    ] {
        tokio::time::sleep(step).await;
        let alive = match kind {
            "get_session" => store.get_session("s").await.map(drop),
            "update_session" => store.update_session("s", |_| {}).await.map(drop),
            "ensure_session" => {
                // It would create the session again: only a live one counts.
                assert!(store.session_exists("s").await.unwrap(), "after {last}");
                store.ensure_session("s").await
            }
            "store_program" => store.store_program("s", "p", json!(2)).await,
            "get_program" => store.get_program("s", "p").await.map(drop),
            "set" => store.set("s", "k", json!(1)).await,
            "get" => store.get("s", "k").await.map(drop),
            "delete" => store.delete("s", "k").await.map(drop),
            _ => match store.session_exists("s").await.unwrap() {
                true => Ok(()),
                false => Err(Error::NotFound("s".into())),
            },
        };
        assert!(
            alive.is_ok(),
            "{last} did not extend the session: {alive:?}"
        );
        last = kind;
    }
}

/// `MemoryStore`: "Cloning gives another handle to the same store."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_clone_is_another_handle_to_the_same_store() {
    let store = MemoryStore::new();
    let clone = store.clone();
    clone.ensure_session("c").await.unwrap();
    clone.set("c", "k", json!("v")).await.unwrap();
    clone.store_global_program("g", json!(1)).await.unwrap();
    assert_eq!(store.get("c", "k").await.unwrap(), Some(json!("v")));
    assert_eq!(store.get_global_program("g").await.unwrap(), json!(1));
    let ends = record_ends(&store);
    assert!(clone.delete_session("c").await.unwrap());
    assert_eq!(
        *ends.lock().unwrap(),
        vec![("c".to_string(), EndReason::Deleted)]
    );
    assert_eq!(store.stats().await.unwrap().sessions_deleted, 1);
}

/// Polls a `MemoryStore` operation once: they complete at once (no I/O),
/// so a listener, which is not async, can use the store.
fn at_once<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a MemoryStore operation did not complete at once"),
    }
}

/// What a listener saw of the store when it was called.
#[derive(Debug, PartialEq)]
struct Seen {
    id: String,
    reason: EndReason,
    exists: bool,
    listed: bool,
}

/// `SessionStore::on_session_end`: "Calls `listener` whenever this store
/// removes a session (expiry or deletion), after the removal, outside any
/// lock". A listener that uses the store itself (exists, list, stats,
/// create) does not deadlock, and sees the session already gone (or, for
/// a creation over an expired one, already the new one), for each
/// way a session ends: deletion, the first touch after its TTL, a
/// creation over an expired one, `cleanup_expired`, and the sweep.
#[test]
fn memory_listeners_run_after_the_removal_outside_any_lock() {
    let (done, finished) = mpsc::channel();
    // The store's work on a thread of its own: a listener called under a
    // lock would deadlock it, which `GUARD` turns into a failure.
    let runner = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let seen = rt.block_on(listeners_use_the_store());
        done.send(seen).unwrap();
    });
    let seen = finished
        .recv_timeout(GUARD)
        .expect("the store's operations returned (no listener deadlocked)");
    runner.join().unwrap();
    let expect = |id: &str, reason| Seen {
        id: id.into(),
        reason,
        exists: false,
        listed: false,
    };
    assert_eq!(
        seen,
        vec![
            expect("deleted", EndReason::Deleted),
            expect("touched", EndReason::Expired),
            // Replaced in one step: the new session is already there.
            Seen {
                exists: true,
                listed: true,
                ..expect("recreated", EndReason::Expired)
            },
            expect("cleaned", EndReason::Expired),
            expect("swept", EndReason::Expired),
        ]
    );
}

async fn listeners_use_the_store() -> Vec<Seen> {
    let store = unswept_memory_store();
    let seen = Arc::new(Mutex::new(Vec::new()));
    {
        let (store2, seen) = (store.clone(), seen.clone());
        store.on_session_end(Arc::new(move |id, reason| {
            let exists = at_once(store2.session_exists(id)).unwrap();
            let listed = at_once(store2.list_sessions())
                .unwrap()
                .contains(&id.to_owned());
            at_once(store2.stats()).unwrap();
            // A write from the listener: another session, created.
            at_once(store2.ensure_session(&format!("from-listener-{id}"))).unwrap();
            seen.lock().unwrap().push(Seen {
                id: id.to_owned(),
                reason,
                exists,
                listed,
            });
        }));
    }
    let brief = Some(Duration::from_millis(30));
    let expired = |id: &'static str| {
        let store = store.clone();
        async move {
            until(15, "the session's TTL passes", || async {
                !store.session_exists(id).await.unwrap()
            })
            .await;
        }
    };

    store.create_session("deleted", None).await.unwrap();
    assert!(store.delete_session("deleted").await.unwrap());

    store.create_session("touched", brief).await.unwrap();
    expired("touched").await;
    assert!(store.get("touched", "k").await.unwrap_err().is_gone());

    store.create_session("recreated", brief).await.unwrap();
    expired("recreated").await;
    store.create_session("recreated", None).await.unwrap();

    store.create_session("cleaned", brief).await.unwrap();
    expired("cleaned").await;
    assert_eq!(store.cleanup_expired().await.unwrap(), 1);

    // The sweep of a second store (every 5 ms), with the same listener.
    let swept = MemoryStore::builder()
        .sweep_interval(Duration::from_millis(5))
        .build();
    {
        let (swept2, seen) = (swept.clone(), seen.clone());
        swept.on_session_end(Arc::new(move |id, reason| {
            let exists = at_once(swept2.session_exists(id)).unwrap();
            let listed = at_once(swept2.list_sessions())
                .unwrap()
                .contains(&id.to_owned());
            at_once(swept2.stats()).unwrap();
            seen.lock().unwrap().push(Seen {
                id: id.to_owned(),
                reason,
                exists,
                listed,
            });
        }));
    }
    swept.create_session("swept", brief).await.unwrap();
    until(15, "the sweep reports the session", || async {
        seen.lock().unwrap().iter().any(|s| s.id == "swept")
    })
    .await;
    // The listener's own writes went through.
    for id in ["deleted", "touched", "recreated", "cleaned"] {
        assert!(store
            .session_exists(&format!("from-listener-{id}"))
            .await
            .unwrap());
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    seen
}

// ---------------------------------------------------------------------
// The program helper
// ---------------------------------------------------------------------

/// A worker that answers with the arguments it was given.
const ARGS_WORKER: &str = r#"
import snakepit_bridge

worker = snakepit_bridge.Worker()

@worker.command("show_args")
def show_args(args, ctx):
    return {"args": args, "session_id": ctx.session_id}

worker.run()
"#;

/// `execute_program_command`: "The session is created if it does not
/// exist yet (by the pool, when it was built with `attach`, or here)";
/// "The arguments get `session_id`"; "Any other command runs in the
/// session unchanged". A pool built without `attach`, a real Python worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_program_helper_creates_the_session_without_attach() {
    let dir = std::env::temp_dir().join(format!(
        "snakepit-session-api-promises-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let script: PathBuf = dir.join("args_worker.py");
    std::fs::write(&script, ARGS_WORKER).unwrap();
    let pool = Pool::builder(Bridge::python(&script))
        .size(1)
        .start()
        .await
        .unwrap();
    let store = MemoryStore::new();
    assert!(!store.session_exists("helper").await.unwrap());
    let r = execute_program_command(
        &pool,
        &store,
        "helper",
        "show_args",
        json!({"x": 1, "nested": {"y": [1, 2]}}),
    )
    .await
    .unwrap();
    assert!(
        store.session_exists("helper").await.unwrap(),
        "the helper created the session"
    );
    assert_eq!(
        r["args"],
        json!({"x": 1, "nested": {"y": [1, 2]}, "session_id": "helper"}),
        "the arguments unchanged but for session_id: {r}"
    );
    assert_eq!(
        r["session_id"], "helper",
        "the call ran in the session: {r}"
    );
    let s = store.get_session("helper").await.unwrap();
    assert!(
        s.programs.is_empty(),
        "another command stores nothing: {s:?}"
    );
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------
// RedisStore
// ---------------------------------------------------------------------

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use crate::redis_server::Redis;
    use snakepit_session::RedisStore;

    async fn store(redis: &Redis) -> RedisStore {
        RedisStore::builder(redis.url())
            .sweep_interval(Duration::from_secs(3600))
            .connect()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn redis_program_ids_are_checked_when_read() {
        let redis = Redis::start().await;
        program_ids_are_checked_when_read(&store(&redis).await).await;
    }

    #[tokio::test]
    async fn redis_an_update_keeps_id_and_creation_time_and_its_ttl_takes_effect() {
        let redis = Redis::start().await;
        an_update_keeps_id_and_creation_time_and_its_ttl_takes_effect(&store(&redis).await).await;
    }

    #[tokio::test]
    async fn redis_an_expired_ids_session_can_be_created_again_empty() {
        let redis = Redis::start().await;
        an_expired_ids_session_can_be_created_again_empty(&store(&redis).await).await;
    }

    /// `SessionStore`: "`session_exists`, `list_sessions` and `stats` do
    /// not" extend a session's life; the Redis store's run of what
    /// promises.rs shows for the memory store.
    #[tokio::test]
    async fn redis_looking_at_a_session_does_not_extend_its_life() {
        let redis = Redis::start().await;
        let store = store(&redis).await;
        store
            .create_session("watched", Some(Duration::from_millis(300)))
            .await
            .unwrap();
        until(15, "the watched session expires", || async {
            let listed = store
                .list_sessions()
                .await
                .unwrap()
                .contains(&"watched".to_string());
            let _ = store.stats().await.unwrap();
            let exists = store.session_exists("watched").await.unwrap();
            !listed && !exists
        })
        .await;
        assert!(store.get_session("watched").await.unwrap_err().is_gone());
    }

    /// The session's expiry in Redis, in milliseconds (`PTTL`).
    fn pttl(port: u16, key: &str) -> i64 {
        redis_server::redis_cli(port, &["PTTL", key])
            .parse()
            .unwrap()
    }

    /// `SessionStore`: "every operation that reads or writes a session
    /// (`get_session`, `update_session`, `ensure_session`, programs, data)
    /// extends its life by its TTL. `session_exists`, `list_sessions` and
    /// `stats` do not". Seen in Redis itself: the session's expiry, cut to
    /// 100 s of its 600 s TTL with `redis-cli`, is back above 100 s after
    /// each of the first, and still at most 100 s after each of the others.
    #[tokio::test]
    async fn redis_every_use_slides_the_expiry_and_looking_does_not() {
        let redis = Redis::start().await;
        let store = store(&redis).await;
        store
            .create_session("s", Some(Duration::from_secs(600)))
            .await
            .unwrap();
        store.store_program("s", "p", json!(1)).await.unwrap();
        let key = "snakepit:s:s";
        let cut = || {
            redis_server::redis_cli(redis.port, &["PEXPIRE", key, "100000"]);
        };
        macro_rules! slides {
            ($what:literal, $op:expr) => {{
                cut();
                $op.await.unwrap();
                let left = pttl(redis.port, key);
                assert!(left > 100_000, "{} slid the expiry: {left} ms left", $what);
            }};
        }
        slides!("get_session", store.get_session("s"));
        slides!("update_session", store.update_session("s", |_| {}));
        slides!("ensure_session", store.ensure_session("s"));
        slides!("store_program", store.store_program("s", "p", json!(2)));
        slides!("get_program", store.get_program("s", "p"));
        slides!("set", store.set("s", "k", json!(1)));
        slides!("get", store.get("s", "k"));
        slides!("delete", store.delete("s", "k"));
        macro_rules! leaves {
            ($what:literal, $op:expr) => {{
                cut();
                $op.await.unwrap();
                let left = pttl(redis.port, key);
                assert!(
                    (0..=100_000).contains(&left),
                    "{} left the expiry alone: {left} ms left",
                    $what
                );
            }};
        }
        leaves!("session_exists", store.session_exists("s"));
        leaves!("list_sessions", store.list_sessions());
        leaves!("stats", store.stats());
    }

    /// `RedisStore`: "Keys, under the prefix (`snakepit:` by default):
    /// `s:<id>` (a hash per session), `idx` (ids by expiry time), `g`
    /// (global programs), `stats`"; "Expiry is Redis's own (`PEXPIRE`,
    /// slid on each use)". Nothing else is written, and a session's hash
    /// carries its TTL as Redis's expiry.
    #[tokio::test]
    async fn redis_keys_are_the_documented_ones_under_the_prefix() {
        let redis = Redis::start().await;
        let default = store(&redis).await;
        default
            .create_session("a", Some(Duration::from_secs(600)))
            .await
            .unwrap();
        default.store_global_program("g1", json!(1)).await.unwrap();
        let tenant = RedisStore::builder(redis.url())
            .prefix("tenant_a:")
            .connect()
            .await
            .unwrap();
        tenant.ensure_session("b").await.unwrap();
        tenant.set("b", "k", json!(1)).await.unwrap();
        tenant.store_global_program("g2", json!(2)).await.unwrap();
        let mut keys: Vec<String> = redis_server::redis_cli(redis.port, &["KEYS", "*"])
            .lines()
            .map(str::to_owned)
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "snakepit:g",
                "snakepit:idx",
                "snakepit:s:a",
                "snakepit:stats",
                "tenant_a:g",
                "tenant_a:idx",
                "tenant_a:s:b",
                "tenant_a:stats",
            ]
        );
        assert_eq!(
            redis_server::redis_cli(redis.port, &["TYPE", "snakepit:s:a"]),
            "hash"
        );
        assert_eq!(
            redis_server::redis_cli(redis.port, &["TYPE", "snakepit:idx"]),
            "zset"
        );
        assert_eq!(
            redis_server::redis_cli(redis.port, &["TYPE", "snakepit:g"]),
            "hash"
        );
        let pttl: i64 = redis_server::redis_cli(redis.port, &["PTTL", "snakepit:s:a"])
            .parse()
            .unwrap();
        assert!(pttl > 0 && pttl <= 600_000, "PEXPIRE of the TTL: {pttl}");
        let pttl: i64 = redis_server::redis_cli(redis.port, &["PTTL", "tenant_a:s:b"])
            .parse()
            .unwrap();
        assert!(
            pttl > 0 && pttl <= 3_600_000,
            "the default TTL, an hour: {pttl}"
        );
        // Slid on use: the expiry grows back to the TTL.
        redis_server::redis_cli(redis.port, &["PEXPIRE", "snakepit:s:a", "5000"]);
        default.get("a", "k").await.unwrap();
        let pttl: i64 = redis_server::redis_cli(redis.port, &["PTTL", "snakepit:s:a"])
            .parse()
            .unwrap();
        assert!(pttl > 5_000, "the use slid it back to 600 s: {pttl}");
    }

    /// `RedisStore`: "Listeners hear of deletions made through this handle
    /// and of expiries found by this handle's sweep (each expiry is
    /// reported by the one host whose sweep finds it first)". Two hosts'
    /// handles on one server, both sweeping every 10 ms: a deletion through
    /// one is heard only by its own listeners; each of 20 expiries is
    /// reported once in all.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_listeners_hear_their_own_deletions_and_each_expiry_once() {
        let redis = Redis::start().await;
        let host = || {
            RedisStore::builder(redis.url())
                .sweep_interval(Duration::from_millis(10))
                .connect()
        };
        let (a, b) = (host().await.unwrap(), host().await.unwrap());
        let (ends_a, ends_b) = (record_ends(&a), record_ends(&b));

        a.create_session("d", None).await.unwrap();
        assert!(b.delete_session("d").await.unwrap());
        assert!(ends_a.lock().unwrap().is_empty(), "not a's deletion");
        assert_eq!(
            *ends_b.lock().unwrap(),
            vec![("d".to_string(), EndReason::Deleted)]
        );
        ends_b.lock().unwrap().clear();

        let ids: Vec<String> = (0..20).map(|i| format!("x{i}")).collect();
        for id in &ids {
            a.create_session(id, Some(Duration::from_millis(100)))
                .await
                .unwrap();
        }
        let all = || {
            let mut all: Vec<(String, EndReason)> = ends_a.lock().unwrap().clone();
            all.extend(ends_b.lock().unwrap().iter().cloned());
            all
        };
        until(30, "every expiry is reported", || async {
            all().len() >= ids.len()
        })
        .await;
        // Nothing is left for anyone to report.
        assert_eq!(a.cleanup_expired().await.unwrap(), 0);
        assert_eq!(b.cleanup_expired().await.unwrap(), 0);
        let mut reported = all();
        reported.sort_by(|x, y| x.0.cmp(&y.0));
        let mut expected: Vec<(String, EndReason)> = ids
            .iter()
            .map(|id| (id.clone(), EndReason::Expired))
            .collect();
        expected.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(reported, expected, "each expiry once");
        assert_eq!(a.stats().await.unwrap().sessions_expired, 20);
    }

    /// `RedisStoreBuilder::prefix`: "Stores whose prefixes differ, none
    /// being the start of another, ... do not see each other's sessions,
    /// programs or statistics". `t:` and `ts:` start alike, but neither is
    /// the start of the other: the session `idx` of the first is not the
    /// second's index. (With `t` and `ts:` it would be the key `ts:idx`,
    /// which the docs now rule out.)
    #[tokio::test]
    async fn redis_stores_with_different_prefixes_do_not_see_each_other() {
        let redis = Redis::start().await;
        let prefixed = |p: &'static str| RedisStore::builder(redis.url()).prefix(p).connect();
        let (t, ts) = (
            prefixed("t:").await.unwrap(),
            prefixed("ts:").await.unwrap(),
        );
        ts.ensure_session("mine").await.unwrap();
        t.ensure_session("idx").await.unwrap();
        t.set("idx", "k", json!(1)).await.unwrap();
        assert_eq!(
            ts.list_sessions().await.unwrap(),
            vec!["mine".to_string()],
            "ts: lists its own sessions"
        );
        assert_eq!(ts.stats().await.unwrap().active_sessions, 1);
        assert!(!ts.session_exists("idx").await.unwrap());
        assert_eq!(t.list_sessions().await.unwrap(), vec!["idx".to_string()]);
    }

    /// `RedisStoreBuilder`: "Its `Debug` leaves the URL out (it may hold a
    /// password), as the store's does."
    #[tokio::test]
    async fn redis_debug_leaves_the_url_and_its_password_out() {
        let redis = Redis::start_with(&["--requirepass", "s3cr3t-pw"], false).await;
        let url = format!("redis://:s3cr3t-pw@127.0.0.1:{}/", redis.port);
        let builder = RedisStore::builder(&url).prefix("p:");
        let text = format!("{builder:?} {builder:#?}");
        assert!(!text.contains("s3cr3t-pw"), "{text}");
        assert!(!text.contains(&redis.port.to_string()), "{text}");
        assert!(text.contains("p:"), "the settings are shown: {text}");
        let store = builder.connect().await.unwrap();
        store.ensure_session("s").await.unwrap();
        let text = format!("{store:?} {store:#?}");
        assert!(!text.contains("s3cr3t-pw"), "{text}");
        assert!(!text.contains(&redis.port.to_string()), "{text}");
    }

    /// `RedisStoreBuilder::connect`: "Fails if ... the URL is not valid":
    /// with `Error::Backend` naming `connect`, at once, without a server.
    #[tokio::test]
    async fn redis_an_invalid_url_fails_connect_with_a_backend_error() {
        for url in [
            "not a url",
            "http://127.0.0.1:6379/",
            "redis://127.0.0.1:notaport/",
        ] {
            let got = tokio::time::timeout(GUARD, RedisStore::connect(url))
                .await
                .expect("connect returns");
            match got {
                Err(Error::Backend(msg)) => {
                    assert!(msg.contains("connect"), "{url}: {msg}")
                }
                other => panic!("{url}: expected a backend error, got {other:?}"),
            }
        }
    }

    /// `RedisStoreBuilder::connect`: "before trying, with `Error::Invalid`
    /// if the default TTL is one no session may have": a default TTL of
    /// zero or beyond `MAX_TTL` fails the connect, not every later use.
    #[tokio::test]
    async fn redis_a_default_ttl_no_session_may_have_fails_connect() {
        let redis = Redis::start().await;
        for ttl in [Duration::ZERO, MAX_TTL + Duration::from_millis(1)] {
            let got = RedisStore::builder(redis.url())
                .default_ttl(ttl)
                .connect()
                .await;
            assert!(
                matches!(got, Err(Error::Invalid { what: "ttl", .. })),
                "{ttl:?}: {:?}",
                got.err()
            );
        }
        let store = RedisStore::builder(redis.url())
            .default_ttl(MAX_TTL)
            .connect()
            .await
            .unwrap();
        store.ensure_session("s").await.unwrap();
    }
}
