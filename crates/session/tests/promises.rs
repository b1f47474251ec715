//! What docs/sessions.md and the crate's docs promise that the other suites
//! do not already show, against real Python workers where a pool is
//! involved.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_core::Stream;

use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{CallOptions, Pool};
use snakepit_session::{attach, execute_program_command, Error, MemoryStore, SessionStore};
use snakepit_tests::until;

fn worker() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/session_worker.py")
}

async fn pool(store: Arc<MemoryStore>) -> Pool {
    attach(Pool::builder(Bridge::python(worker())), store)
        .size(1)
        .start()
        .await
        .unwrap()
}

/// sessions.md: "Every session call (`execute_in_session`, `execute_with`
/// with `CallOptions::session`, `call`, `execute_stream`) creates its
/// session in the store ... **before** it is routed."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_session_calls_create_their_session_too() {
    let store = Arc::new(MemoryStore::new());
    let pool = pool(store.clone()).await;

    let r: Value = pool
        .call(
            "recall",
            &json!({"key": "k"}),
            CallOptions::new().session("typed"),
        )
        .await
        .unwrap();
    assert_eq!(r["value"], Value::Null);
    assert!(
        store.session_exists("typed").await.unwrap(),
        "`call` created it"
    );

    let mut stream = pool
        .execute_stream(
            "recall",
            json!({"key": "k"}),
            CallOptions::new().session("streamed"),
        )
        .await
        .unwrap();
    let mut last = None;
    while let Some(item) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut stream).poll_next(cx)).await
    {
        last = Some(item.unwrap());
    }
    assert!(
        matches!(last, Some(snakepit_core::StreamItem::Done(_))),
        "{last:?}"
    );
    assert!(
        store.session_exists("streamed").await.unwrap(),
        "`execute_stream` created it"
    );

    pool.execute_with(
        "remember",
        json!({"key": "k", "value": 1}),
        CallOptions::new().session("with_options"),
    )
    .await
    .unwrap();
    assert_eq!(
        store.get("with_options", "k").await.unwrap(),
        Some(json!(1))
    );
    pool.shutdown().await.unwrap();
}

/// sessions.md: "Failures reach the worker as a host-call error with a type
/// it can match: ... `ProgramNotFound`, `InvalidArgument` ..."; and the
/// host functions' answers (`session.delete`: whether it was set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_call_failures_reach_the_worker_with_the_documented_types() {
    let store = Arc::new(MemoryStore::new());
    let pool = pool(store.clone()).await;

    let err = pool
        .execute_in_session("s", "program", json!({"program_id": "nope"}))
        .await
        .unwrap_err();
    let remote = err.remote().expect("a remote error");
    assert!(
        remote.message.contains("ProgramNotFound"),
        "the handler saw ProgramNotFound: {remote:?}"
    );

    let long_key = "k".repeat(513);
    let err = pool
        .execute_in_session("s", "remember", json!({"key": long_key, "value": 1}))
        .await
        .unwrap_err();
    let remote = err.remote().expect("a remote error");
    assert!(
        remote.message.contains("InvalidArgument"),
        "the handler saw InvalidArgument: {remote:?}"
    );

    let r = pool
        .execute_in_session("s", "forget", json!({"key": "never_set"}))
        .await
        .unwrap();
    assert_eq!(r["deleted"], false, "{r}");
    pool.shutdown().await.unwrap();
}

/// sessions.md: "`session_exists`, `list_sessions` and `stats` do not"
/// extend a session's life.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looking_at_a_session_does_not_extend_its_life() {
    let store = MemoryStore::builder()
        .sweep_interval(Duration::from_secs(3600))
        .build();
    store
        .create_session("watched", Some(Duration::from_millis(300)))
        .await
        .unwrap();
    // Looked at without pause: it expires all the same.
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

/// sessions.md: "The default TTL is one hour (`default_ttl` on either
/// builder)."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_ttl_is_one_hour_and_default_ttl_changes_it() {
    let store = MemoryStore::new();
    let s = store.create_session("a", None).await.unwrap();
    assert_eq!(s.ttl_ms, 3_600_000);
    store.ensure_session("b").await.unwrap();
    assert_eq!(store.get_session("b").await.unwrap().ttl_ms, 3_600_000);
    let store = MemoryStore::builder()
        .default_ttl(Duration::from_secs(600))
        .build();
    assert_eq!(
        store.create_session("a", None).await.unwrap().ttl_ms,
        600_000
    );
    let s = store
        .create_session("c", Some(Duration::from_secs(7200)))
        .await
        .unwrap();
    assert_eq!(s.ttl_ms, 7_200_000);
}

/// sessions.md: "`Invalid` (an empty id or key, or one over 512 bytes)";
/// 512 bytes is still fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_and_keys_up_to_512_bytes_are_fine_and_longer_ones_invalid() {
    let store = MemoryStore::new();
    let at_limit = "é".repeat(256); // 512 bytes, 256 characters
    assert_eq!(at_limit.len(), 512);
    store.ensure_session(&at_limit).await.unwrap();
    store.set(&at_limit, &at_limit, json!(1)).await.unwrap();
    assert_eq!(
        store.get(&at_limit, &at_limit).await.unwrap(),
        Some(json!(1))
    );
    let over = format!("{at_limit}x");
    for r in [
        store.set(&at_limit, &over, json!(1)).await,
        store.set(&at_limit, "", json!(1)).await,
        store.ensure_session(&over).await,
        store.create_session(&over, None).await.map(drop),
        store.store_program(&at_limit, &over, json!(1)).await,
    ] {
        assert!(matches!(r, Err(Error::Invalid { .. })), "{r:?}");
    }
}

/// sessions.md: "A `Session` has `id`, `created_at_ms`, `last_accessed_ms`,
/// `ttl_ms`, `data`, `programs` and `metadata` (JSON maps)"; errors `NotFound`
/// and `Expired` answer `is_gone()`, `AlreadyExists` does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_has_the_documented_fields_and_errors() {
    let store = MemoryStore::new();
    let s = store.create_session("f", None).await.unwrap();
    assert_eq!(s.id, "f");
    assert!(s.created_at_ms > 0 && s.last_accessed_ms >= s.created_at_ms);
    assert!(s.data.is_empty() && s.programs.is_empty() && s.metadata.is_empty());
    let err = store.create_session("f", None).await.unwrap_err();
    assert!(
        matches!(err, Error::AlreadyExists(_)) && !err.is_gone(),
        "{err}"
    );
    let err = store.get_session("nobody").await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)) && err.is_gone(), "{err}");
    store
        .create_session("brief", Some(Duration::from_millis(1)))
        .await
        .unwrap();
    until(15, "the brief session expires", || async {
        !store.session_exists("brief").await.unwrap()
    })
    .await;
    let err = store.get_session("brief").await.unwrap_err();
    assert!(err.is_gone(), "{err}");
}

/// A worker of programs for `execute_program_command`.
const PROGRAM_WORKER: &str = r#"
import os
import snakepit_bridge

worker = snakepit_bridge.Worker()

@worker.command("create_program")
def create_program(args, ctx):
    return {"program_id": "p1", "signature": args["signature"], "program_type": "chain",
            "session_id_seen": args.get("session_id")}

@worker.command("execute_program")
def execute_program(args, ctx):
    return {"program_data": args.get("program_data"), "session_id_seen": args.get("session_id"),
            "pid": os.getpid()}

worker.run()
"#;

/// sessions.md, program helpers: "every call gets `session_id` in its
/// arguments"; `create_program` stores the reply's `program_id` and its
/// description (`signature`, `program_type`, the arguments under
/// `config`); `execute_program` sends the stored program as
/// `program_data` and updates `execution_count` and `last_executed_ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn program_helpers_store_send_and_count_programs() {
    let dir =
        std::env::temp_dir().join(format!("snakepit-session-promises-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("programs.py");
    std::fs::write(&script, PROGRAM_WORKER).unwrap();
    let store = Arc::new(MemoryStore::new());
    let pool = attach(Pool::builder(Bridge::python(&script)), store.clone())
        .size(1)
        .start()
        .await
        .unwrap();

    let created = execute_program_command(
        &pool,
        &*store,
        "ml",
        "create_program",
        json!({"signature": "question -> answer", "temperature": 0.7}),
    )
    .await
    .unwrap();
    assert_eq!(created["session_id_seen"], "ml");
    let program = store.get_program("ml", "p1").await.unwrap();
    assert_eq!(program["program_id"], "p1");
    assert_eq!(program["signature"], "question -> answer");
    assert_eq!(program["program_type"], "chain");
    assert_eq!(program["config"]["temperature"], 0.7);
    assert_eq!(program["execution_count"], 0);

    for n in 1..=2 {
        let r = execute_program_command(
            &pool,
            &*store,
            "ml",
            "execute_program",
            json!({"program_id": "p1", "input": {"question": "?"}}),
        )
        .await
        .unwrap();
        assert_eq!(r["session_id_seen"], "ml");
        assert_eq!(r["program_data"]["signature"], "question -> answer", "{r}");
        let program = store.get_program("ml", "p1").await.unwrap();
        assert_eq!(program["execution_count"], n);
        assert!(program["last_executed_ms"].as_u64().is_some_and(|t| t > 0));
    }
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs `wait_then_get` in `session`; once the handler has started (its
/// session exists), runs `meanwhile`, then lets the handler call
/// `session.get`. What the handler answered.
async fn get_after<F, Fut>(pool: &Pool, session: &str, meanwhile: F) -> Value
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = std::env::temp_dir().join(format!(
        "snakepit-session-wait-{}-{session}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (started, go) = (dir.join("started"), dir.join("go"));
    let call = {
        let pool = pool.clone();
        let session = session.to_owned();
        let args = json!({"key": "k", "started": started, "go": go});
        tokio::spawn(async move {
            pool.execute_in_session(&session, "wait_then_get", args)
                .await
        })
    };
    until(30, "the handler started", || {
        let started = started.clone();
        async move { started.exists() }
    })
    .await;
    meanwhile().await;
    std::fs::write(&go, b"").unwrap();
    let r = call.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// sessions.md: "Failures reach the worker as a host-call error with a type
/// it can match: ... `SessionNotFound`, `SessionExpired` ...": a session
/// deleted, or expired, while its call runs; the handler's `session.get`
/// raises `HostCallError` with that `type`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_not_found_and_session_expired_reach_the_handler() {
    // Sessions created by a call live 300 ms; the sweep never runs during
    // the test, so an expired session is still there to be found expired.
    let store = Arc::new(
        MemoryStore::builder()
            .default_ttl(Duration::from_millis(300))
            .sweep_interval(Duration::from_secs(3600))
            .build(),
    );
    let pool = common::waiting_pool(store.clone()).await;
    // These two live an hour: only the one left to the default expires.
    for id in ["deleted", "alive"] {
        store
            .create_session(id, Some(Duration::from_secs(3600)))
            .await
            .unwrap();
    }

    let r = get_after(&pool, "deleted", || async {
        assert!(store.delete_session("deleted").await.unwrap());
    })
    .await;
    assert_eq!(r["caught"], "SessionNotFound", "{r}");

    let r = get_after(&pool, "expired", || async {
        until(30, "the session expires", || async {
            !store.session_exists("expired").await.unwrap()
        })
        .await;
    })
    .await;
    assert_eq!(r["caught"], "SessionExpired", "{r}");

    // The control: a session left alone answers.
    let r = get_after(&pool, "alive", || async {}).await;
    assert_eq!(r, json!({"value": null}));
    pool.shutdown().await.unwrap();
}
