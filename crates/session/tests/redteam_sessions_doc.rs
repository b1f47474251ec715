//! Red-team tests of docs/sessions.md read as a user, "When Redis goes
//! away": a `redis-server` that persists (AOF, fsync on every write) is
//! SIGKILLed while a pool uses the store and a handler runs, and started
//! again on the same port. While it is down every operation fails with an
//! error naming its operation (no panic, no hang) and session calls never
//! run; once it is back the same store and pool work, nothing written
//! before the kill is lost, a session that expired meanwhile is reported
//! by the sweep, and the sweep keeps reporting expiries after the outage.
#![cfg(feature = "redis")]

mod common;
mod redis_server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redis_server::Redis;
use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::Pool;
use snakepit_session::{attach, EndReason, Error, RedisStore, SessionStore};
use snakepit_tests::until;

/// The store's timeout: short, so that nothing waits long for a dead port.
const TIMEOUT: Duration = Duration::from_secs(1);

/// Only turns a hang into a failure of this test.
const GUARD: Duration = Duration::from_secs(30);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "snakepit-redteam-sessions-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Calls `wait_then_get` for `key` in `session`, runs `meanwhile` once the
/// handler runs, then lets it read: what the handler answered.
async fn get_after(pool: &Pool, session: &str, key: &str, meanwhile: impl FnOnce()) -> Value {
    let dir = temp_dir(session);
    let (started, go) = (dir.join("started"), dir.join("go"));
    let call = {
        let (pool, session) = (pool.clone(), session.to_owned());
        let args = json!({"key": key, "started": started, "go": go});
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
    meanwhile();
    std::fs::write(&go, b"").unwrap();
    let r = tokio::time::timeout(GUARD, call)
        .await
        .expect("the call returns")
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// An error that names its operation: `Backend` whose text names it, or a
/// `Timeout` for it.
fn names<T: std::fmt::Debug>(r: Result<T, Error>, op: &str) {
    match r {
        Err(Error::Backend(msg)) => assert!(msg.contains(&format!("`{op}`")), "{op}: {msg}"),
        Err(Error::Timeout { operation, .. }) => assert_eq!(operation, op),
        other => panic!("{op}: expected a backend error naming it, got {other:?}"),
    }
}

/// sessions.md, "Redis restarted, or the connection dropped: operations
/// fail with `Error::Backend`, whose text names the operation ... succeed
/// again as soon as it is back. Sessions live on if Redis persists them
/// (RDB or AOF) ... The scripts are loaded again into the new server by
/// themselves"; "Through the pool such a failure is
/// `snakepit_core::Error::Session` and the call never ran"; a running
/// handler's `ctx.session` gets `SessionStoreError`; and the sweep ("each
/// host's sweep finds expired ids in `idx`, removes them and tells its
/// listeners") reports the session whose TTL ran out while Redis was down,
/// once, and goes on reporting later expiries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisting_redis_killed_and_restarted_loses_nothing_and_the_pool_recovers() {
    let mut redis =
        Redis::start_with(&["--appendonly", "yes", "--appendfsync", "always"], false).await;
    let store = Arc::new(
        RedisStore::builder(redis.url())
            .timeout(TIMEOUT)
            .sweep_interval(Duration::from_millis(100))
            .connect()
            .await
            .unwrap(),
    );
    let ends = common::record_ends(&*store);
    let pool = common::waiting_pool(store.clone()).await;

    // Written before the kill.
    store.create_session("user", None).await.unwrap();
    store
        .set("user", "k", json!({"kept": [1, 2]}))
        .await
        .unwrap();
    store
        .store_program("user", "prog", json!({"signature": "a -> b"}))
        .await
        .unwrap();
    store
        .store_global_program("shared", json!({"v": 1}))
        .await
        .unwrap();
    store
        .update_session("user", |s| {
            s.metadata.insert("owner".into(), json!("alice"));
        })
        .await
        .unwrap();
    store
        .create_session("short", Some(Duration::from_millis(1500)))
        .await
        .unwrap();
    let before = store.get_session("user").await.unwrap();
    let r = get_after(&pool, "user", "k", || {}).await;
    assert_eq!(r, json!({"value": {"kept": [1, 2]}}), "the control");

    // Killed while a handler runs: its `ctx.session.get` fails with the
    // documented type, naming the operation.
    let r = get_after(&pool, "user", "k", || redis.kill()).await;
    assert_eq!(r["caught"], "SessionStoreError", "{r}");
    assert!(r["message"].as_str().unwrap_or("").contains("`get`"), "{r}");

    // While it is down: every operation fails, naming itself; no panic, no hang.
    let down = async {
        names(store.get_session("user").await, "get_session");
        names(store.ensure_session("user").await, "ensure_session");
        names(store.set("user", "x", json!(1)).await, "set");
        names(store.get("user", "k").await, "get");
        names(store.update_session("user", |_| {}).await, "update_session");
        names(store.get_program("user", "prog").await, "get_program");
        names(
            store.get_global_program("shared").await,
            "get_global_program",
        );
        names(store.list_sessions().await, "list_sessions");
        names(store.stats().await, "stats");
        names(store.cleanup_expired().await, "cleanup_expired");
    };
    tokio::time::timeout(GUARD, down)
        .await
        .expect("operations on a dead server return");
    let err = tokio::time::timeout(
        GUARD,
        pool.execute_in_session("user", "wait_then_get", json!({})),
    )
    .await
    .expect("a session call with Redis down returns")
    .unwrap_err();
    assert!(
        matches!(&err, snakepit_core::Error::Session { session_id, .. } if session_id == "user"),
        "{err:?}"
    );
    assert!(err.never_ran(), "{err:?}");
    assert!(err.to_string().contains("`ensure_session`"), "{err}");
    // Down for longer than `short`'s TTL, with the sweep failing meanwhile.
    tokio::time::sleep(Duration::from_millis(1800)).await;

    redis.run().await;
    until(15, "the same store works again", || async {
        store.get_session("user").await.is_ok()
    })
    .await;
    let after = store.get_session("user").await.unwrap();
    assert_eq!(after.created_at_ms, before.created_at_ms);
    assert_eq!(after.ttl_ms, before.ttl_ms);
    assert_eq!(after.data, before.data);
    assert_eq!(after.programs, before.programs);
    assert_eq!(after.metadata, before.metadata);
    assert_eq!(
        store.get_global_program("shared").await.unwrap(),
        json!({"v": 1})
    );
    assert!(store
        .list_sessions()
        .await
        .unwrap()
        .contains(&"user".to_owned()));
    store
        .update_session("user", |s| {
            s.metadata.insert("after".into(), json!(true));
        })
        .await
        .unwrap();
    // The pool, without being rebuilt.
    let r = get_after(&pool, "user", "k", || {}).await;
    assert_eq!(r, json!({"value": {"kept": [1, 2]}}));

    // The session that expired while Redis was down is reported, once.
    until(15, "the sweep reports `short`", || async {
        ends.lock()
            .unwrap()
            .contains(&("short".to_owned(), EndReason::Expired))
    })
    .await;
    // And the sweep goes on: a session made now expires and is reported.
    store
        .create_session("later", Some(Duration::from_millis(300)))
        .await
        .unwrap();
    until(15, "the sweep reports `later`", || async {
        ends.lock()
            .unwrap()
            .contains(&("later".to_owned(), EndReason::Expired))
    })
    .await;
    let ends = ends.lock().unwrap().clone();
    assert_eq!(
        ends.iter().filter(|(id, _)| id == "short").count(),
        1,
        "{ends:?}"
    );
    assert!(
        ends.iter().all(|(id, _)| id != "user"),
        "no session written before the kill was lost: {ends:?}"
    );
    pool.shutdown().await.unwrap();
}

/// sessions.md, "Listeners": "`on_session_end_while` takes a listener that
/// says when it is done by returning `false`: the bundled stores then drop
/// it", and one that panics "is logged, and the others ... are told all the
/// same; a store's sweep goes on". In each store: a listener done after
/// its first end hears of no other and is dropped (what it holds is
/// freed); one that says `true` hears of every end; a listener that
/// panics at every end stops neither the others nor the sweep, which
/// reports three expiries in turn.
async fn listeners_while_and_panicking<S: SessionStore>(store: &S) {
    let held = Arc::new(());
    let once = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (sink, h) = (once.clone(), held.clone());
    store.on_session_end_while(Arc::new(move |id, _| {
        let _ = &h;
        sink.lock().unwrap().push(id.to_owned());
        false
    }));
    let always = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = always.clone();
    store.on_session_end_while(Arc::new(move |id, _| {
        sink.lock().unwrap().push(id.to_owned());
        true
    }));
    store.on_session_end(Arc::new(|id, _| panic!("a listener that panics at {id}")));
    let ends = common::record_ends(store);

    store.create_session("deleted", None).await.unwrap();
    assert!(store.delete_session("deleted").await.unwrap());
    for id in ["e1", "e2", "e3"] {
        store
            .create_session(id, Some(Duration::from_millis(200)))
            .await
            .unwrap();
        until(15, "the sweep reports the expiry", || async {
            ends.lock()
                .unwrap()
                .contains(&(id.to_owned(), EndReason::Expired))
        })
        .await;
    }
    assert_eq!(*once.lock().unwrap(), ["deleted"]);
    assert_eq!(*always.lock().unwrap(), ["deleted", "e1", "e2", "e3"]);
    assert_eq!(
        Arc::strong_count(&held),
        1,
        "the listener that said it was done was dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_listeners_done_are_dropped_and_panicking_ones_stop_nothing() {
    let store = snakepit_session::MemoryStore::builder()
        .sweep_interval(Duration::from_millis(50))
        .build();
    listeners_while_and_panicking(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_listeners_done_are_dropped_and_panicking_ones_stop_nothing() {
    let redis = Redis::start().await;
    let store = RedisStore::builder(redis.url())
        .sweep_interval(Duration::from_millis(50))
        .connect()
        .await
        .unwrap();
    listeners_while_and_panicking(&store).await;
}

/// Runs `steps` (see tests/workers/redteam_doc_steps.*) in `session` (or
/// none), with a `wait` step's files in a directory of its own; `meanwhile`
/// runs once the handler is waiting. What each step gave.
async fn steps(
    pool: &Pool,
    session: Option<&str>,
    steps: Value,
    meanwhile: impl FnOnce(),
) -> Vec<Value> {
    let dir = temp_dir(&format!("steps-{}", session.unwrap_or("none")));
    let (started, go) = (dir.join("started"), dir.join("go"));
    let mut steps = steps.as_array().unwrap().clone();
    let waits = steps.iter().any(|s| s["op"] == "wait");
    for s in steps.iter_mut().filter(|s| s["op"] == "wait") {
        s["started"] = json!(started);
        s["go"] = json!(go);
    }
    let call = {
        let (pool, session) = (pool.clone(), session.map(str::to_owned));
        let args = json!({ "steps": steps });
        tokio::spawn(async move {
            match session {
                Some(s) => pool.execute_in_session(&s, "steps", args).await,
                None => pool.execute("steps", args).await,
            }
        })
    };
    if waits {
        until(30, "the handler waits", || {
            let started = started.clone();
            async move { started.exists() }
        })
        .await;
    }
    meanwhile();
    std::fs::write(&go, b"").unwrap();
    let r = tokio::time::timeout(GUARD, call)
        .await
        .expect("the call returns")
        .unwrap()
        .unwrap_or_else(|e| panic!("the steps call failed: {e:?}"));
    let _ = std::fs::remove_dir_all(&dir);
    r.as_array().expect("a list of outcomes").clone()
}

fn caught(t: &str) -> Value {
    json!({ "caught": t })
}

fn ok(v: Value) -> Value {
    json!({ "ok": v })
}

/// sessions.md: "`ctx.session` is the same in the Python, Node.js and Ruby
/// bridges ... Failures reach the worker as a host-call error with a type
/// it can match: `NoSession` (called outside a session),
/// `SessionNotFound`, ..., `ProgramNotFound`, `InvalidArgument`,
/// `SessionStoreError` (the store failed: Redis down ...)". The Node.js
/// and Ruby bridges' handlers, on a Redis store, catch each documented
/// type where the doc says it comes: outside a session; a key over 512
/// bytes (and a value of 125 levels, the most a store keeps, is written
/// and read back); unknown programs; the
/// session deleted while the handler runs; Redis killed while it runs.
/// After Redis is back (empty: no persistence) the same pool works.
async fn every_documented_host_call_error_reaches(bridge: Bridge) {
    let mut redis = Redis::start().await;
    let store = Arc::new(
        RedisStore::builder(redis.url())
            .timeout(TIMEOUT)
            .connect()
            .await
            .unwrap(),
    );
    let pool = attach(Pool::builder(bridge), store.clone())
        .size(1)
        .configure(|c| c.sweep_on_start = false)
        .start()
        .await
        .unwrap();

    let r = steps(&pool, None, json!([{"op": "get", "key": "k"}]), || {}).await;
    assert_eq!(r, [caught("NoSession")]);

    let long_key = "k".repeat(513);
    let r = steps(
        &pool,
        Some("s"),
        json!([
            {"op": "set", "key": "k", "value": {"v": [1, "two"]}},
            {"op": "get", "key": "k"},
            {"op": "get", "key": long_key},
            {"op": "set_nested", "key": "deep_ok", "depth": 125},
            {"op": "get_depth", "key": "deep_ok"},
            {"op": "program", "id": "nope"},
            {"op": "global", "id": "nope"},
            {"op": "store_program", "id": "p", "value": {"sig": "a"}},
            {"op": "program", "id": "p"},
            {"op": "delete", "key": "k"},
            {"op": "delete", "key": "k"},
        ]),
        || {},
    )
    .await;
    assert_eq!(
        r,
        [
            ok(Value::Null),
            ok(json!({"v": [1, "two"]})),
            caught("InvalidArgument"),
            ok(Value::Null),
            ok(json!(125)),
            caught("ProgramNotFound"),
            caught("ProgramNotFound"),
            ok(Value::Null),
            ok(json!({"sig": "a"})),
            ok(json!(true)),
            ok(json!(false)),
        ]
    );

    // The session deleted while the handler runs.
    let r = steps(
        &pool,
        Some("gone"),
        json!([{"op": "wait"}, {"op": "get", "key": "k"}]),
        || {
            let deleted = tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(store.delete_session("gone"))
            });
            assert!(deleted.unwrap(), "the session was there to delete");
        },
    )
    .await;
    assert_eq!(r, [ok(Value::Null), caught("SessionNotFound")]);

    // Redis killed while the handler runs.
    let r = steps(
        &pool,
        Some("s"),
        json!([{"op": "wait"}, {"op": "get", "key": "k"}, {"op": "set", "key": "k", "value": 1}]),
        || redis.kill(),
    )
    .await;
    assert_eq!(
        r,
        [
            ok(Value::Null),
            caught("SessionStoreError"),
            caught("SessionStoreError")
        ]
    );
    redis.run().await;
    until(15, "session calls work again", || async {
        pool.execute_in_session("s", "steps", json!({"steps": []}))
            .await
            .is_ok()
    })
    .await;
    let r = steps(
        &pool,
        Some("s"),
        json!([{"op": "set", "key": "k", "value": 2}, {"op": "get", "key": "k"}]),
        || {},
    )
    .await;
    assert_eq!(r, [ok(Value::Null), ok(json!(2))]);
    pool.shutdown().await.unwrap();
}

fn steps_worker(ext: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/workers/redteam_doc_steps.{ext}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_handlers_get_every_documented_host_call_error() {
    every_documented_host_call_error_reaches(Bridge::python(steps_worker("py"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_handlers_get_every_documented_host_call_error() {
    every_documented_host_call_error_reaches(Bridge::node(steps_worker("js"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_handlers_get_every_documented_host_call_error() {
    every_documented_host_call_error_reaches(Bridge::ruby(steps_worker("rb"))).await;
}

/// sessions.md: "`ctx.session` is the same in the Python, Node.js and Ruby
/// bridges", "Failures reach the worker as a host-call error with a type
/// it can match", and a value "nested deeper than `MAX_VALUE_DEPTH`, 125
/// levels" is refused; docs/protocol.md: "a deeper ... host-call argument
/// fails only its own call". A handler that sets a value of 126 levels
/// (too deep for the store, and for the host-call frame) and catches
/// host-call errors gets one, goes on with its next step, and the value
/// is not stored: the same in each bridge.
async fn a_too_deep_value_is_a_host_call_error_the_handler_catches(bridge: Bridge) {
    let store = Arc::new(snakepit_session::MemoryStore::new());
    let pool = attach(Pool::builder(bridge), store.clone())
        .size(1)
        .configure(|c| c.sweep_on_start = false)
        .start()
        .await
        .unwrap();
    let r = steps(
        &pool,
        Some("deep"),
        json!([
            {"op": "set_nested", "key": "deep", "depth": 126},
            {"op": "set", "key": "after", "value": 1},
        ]),
        || {},
    )
    .await;
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(r[0]["caught"].is_string(), "a host-call error: {r:?}");
    assert_eq!(r[1], ok(Value::Null), "{r:?}");
    assert_eq!(store.get("deep", "deep").await.unwrap(), None);
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_a_too_deep_value_is_a_host_call_error_the_handler_catches() {
    a_too_deep_value_is_a_host_call_error_the_handler_catches(Bridge::python(steps_worker("py")))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_a_too_deep_value_is_a_host_call_error_the_handler_catches() {
    a_too_deep_value_is_a_host_call_error_the_handler_catches(Bridge::node(steps_worker("js")))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_a_too_deep_value_is_a_host_call_error_the_handler_catches() {
    a_too_deep_value_is_a_host_call_error_the_handler_catches(Bridge::ruby(steps_worker("rb")))
        .await;
}
