//! Attacks on the glue between a session store and a pool: `attach` (the
//! session touch before each call, the `session.*` host functions, the end
//! listener that drops affinity) and `execute_program_command`, through a
//! real pool of real Python workers. Seven once failed (a store or a
//! listener that panics, an execution count at u64::MAX, a program run
//! reported as failed after it succeeded, listeners of pools long gone);
//! each now shows the behaviour it names.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{CallOptions, Pool};
use snakepit_session::{
    attach, execute_program_command, EndListener, EndListenerWhile, EndReason, Error, MemoryStore,
    Session, SessionStore, StoreStats,
};
use snakepit_tests::until;

/// Only turns a hang into a failure of a test.
const GUARD: Duration = Duration::from_secs(90);

/// A worker that runs a list of host calls (and waits) in its call, and
/// stands in for an ML framework's `create_program` / `execute_program`.
const WORKER: &str = r#"
import os, time
import snakepit_bridge
from snakepit_bridge import HostCallError

worker = snakepit_bridge.Worker()


def nested(n):
    v = 0
    for _ in range(n):
        v = [v]
    return v


def wait_for(path):
    end = time.time() + 60
    while not os.path.exists(path) and time.time() < end:
        time.sleep(0.01)


def run(steps, ctx):
    out = []
    for st in steps:
        if "sleep" in st:
            time.sleep(st["sleep"])
            out.append(None)
            continue
        if "signal" in st:
            open(st["signal"], "w").close()
            out.append(None)
            continue
        if "wait" in st:
            wait_for(st["wait"])
            out.append(None)
            continue
        a = st.get("a")
        if "nest" in st:
            a = dict(a)
            a["value"] = nested(st["nest"])
        if "big" in st:
            a = dict(a)
            a["value"] = "x" * st["big"]
        try:
            r = ctx.call_host(st["f"], a)
            if st.get("len"):
                r = len(r) if isinstance(r, str) else type(r).__name__
            out.append({"ok": r})
        except HostCallError as e:
            out.append({"err": e.type, "msg": e.message})
    return out


@worker.command("steps")
def steps(args, ctx):
    return {"pid": os.getpid(), "session_id": ctx.session_id, "out": run(args.get("steps", []), ctx)}


@worker.command("create_program")
def create_program(args, ctx):
    run(args.get("steps", []), ctx)
    return {"program_id": args.get("want_id", "prog_1"), "signature": "q -> a"}


@worker.command("execute_program")
def execute_program(args, ctx):
    run(args.get("steps", []), ctx)
    return {"ran": True, "program_data": args.get("program_data"), "session_id": args.get("session_id")}


worker.run()
"#;

/// A temporary directory of this test's own, holding the worker script.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "snakepit-redteam-attach-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("worker.py"), WORKER).unwrap();
        Dir(dir)
    }
    fn script(&self) -> PathBuf {
        self.0.join("worker.py")
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn pool_of<S: SessionStore>(dir: &Dir, store: Arc<S>, size: usize) -> Pool {
    attach(Pool::builder(Bridge::python(dir.script())), store)
        .size(size)
        .start()
        .await
        .unwrap()
}

fn unswept() -> MemoryStore {
    MemoryStore::builder()
        .sweep_interval(Duration::from_secs(3600))
        .build()
}

/// Runs `steps` in `session` and gives the worker's list of outcomes.
async fn steps(pool: &Pool, session: &str, steps: Value) -> Value {
    let r = tokio::time::timeout(
        GUARD,
        pool.execute_in_session(session, "steps", json!({ "steps": steps })),
    )
    .await
    .expect("the call hung")
    .unwrap();
    r["out"].clone()
}

fn err_type(outcome: &Value) -> &str {
    outcome["err"].as_str().unwrap_or("<no error>")
}

fn host(f: &str, a: Value) -> Value {
    json!({"f": f, "a": a})
}

// ---------------------------------------------------------------------
// Host calls from workers
// ---------------------------------------------------------------------

/// Arguments of the wrong type or shape (keys that are not strings, a list
/// instead of a map, missing keys) are `InvalidArgument` for every
/// `session.*` function; the worker keeps serving; a `set` without a value
/// stores `null`; ids and keys out of bounds are `InvalidArgument` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_calls_with_wrong_argument_types_are_invalid_argument() {
    let dir = Dir::new("types");
    let store = Arc::new(unswept());
    let pool = pool_of(&dir, store.clone(), 1).await;
    let bad = vec![
        host("session.get", json!({"key": 1})),
        host("session.get", json!({})),
        host("session.get", json!([1, 2])),
        host("session.get", json!("key")),
        host("session.set", json!({"key": null, "value": 1})),
        host("session.set", json!({"key": {"a": 1}, "value": 1})),
        host("session.delete", json!({"key": ["x"]})),
        host("session.get_program", json!({"program_id": 5})),
        host(
            "session.store_program",
            json!({"program_id": {}, "program": 1}),
        ),
        host("session.get_global_program", json!({"program_id": true})),
        host("session.set", json!({"key": "", "value": 1})),
        host("session.set", json!({"key": "k".repeat(513), "value": 1})),
        host("session.get_program", json!({"program_id": ""})),
        host(
            "session.store_program",
            json!({"program_id": "p".repeat(513), "program": 1}),
        ),
    ];
    let n = bad.len();
    let mut all = bad;
    all.push(host("session.set", json!({"key": "novalue"})));
    all.push(host("session.get", json!({"key": "novalue"})));
    all.push(host("session.nope", json!({})));
    all.push(host("session.set", json!({"key": "k", "value": 1})));
    let out = steps(&pool, "types", Value::Array(all)).await;
    for (i, o) in out.as_array().unwrap()[..n].iter().enumerate() {
        assert_eq!(err_type(o), "InvalidArgument", "step {i}: {o}");
    }
    assert_eq!(out[n], json!({"ok": null}), "{out}");
    assert_eq!(out[n + 1], json!({"ok": null}), "{out}");
    assert_eq!(err_type(&out[n + 2]), "UnknownFunction", "{out}");
    assert_eq!(out[n + 3], json!({"ok": null}), "{out}");
    let s = store.get_session("types").await.unwrap();
    assert_eq!(
        s.data,
        json!({"novalue": null, "k": 1})
            .as_object()
            .unwrap()
            .clone(),
        "only the valid writes landed"
    );
    assert!(s.programs.is_empty());
    pool.shutdown().await.unwrap();
}

/// A worker cannot name another session: a `session_id` in a host call's
/// arguments is ignored, the call's own session is used. Two sessions'
/// data stay apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_call_cannot_reach_another_session() {
    let dir = Dir::new("other");
    let store = Arc::new(unswept());
    store.ensure_session("victim").await.unwrap();
    store
        .set("victim", "secret", json!("s3cr3t"))
        .await
        .unwrap();
    let pool = pool_of(&dir, store.clone(), 1).await;
    let out = steps(
        &pool,
        "attacker",
        json!([
            host(
                "session.get",
                json!({"key": "secret", "session_id": "victim"})
            ),
            host(
                "session.set",
                json!({"key": "secret", "value": "pwned", "session_id": "victim"})
            ),
            host(
                "session.delete",
                json!({"key": "secret", "session": "victim"})
            ),
            host(
                "session.get_program",
                json!({"program_id": "p", "session_id": "victim"})
            ),
        ]),
    )
    .await;
    assert_eq!(out[0], json!({"ok": null}), "{out}");
    assert_eq!(out[2], json!({"ok": true}), "{out}");
    assert_eq!(err_type(&out[3]), "ProgramNotFound", "{out}");
    assert_eq!(
        store.get("victim", "secret").await.unwrap(),
        Some(json!("s3cr3t"))
    );
    assert_eq!(store.get("attacker", "secret").await.unwrap(), None);
    pool.shutdown().await.unwrap();
}

/// Outside a session every `session.*` function but the global program's
/// is `NoSession`, and no session is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_calls_outside_a_session_are_no_session() {
    let dir = Dir::new("nosession");
    let store = Arc::new(unswept());
    store
        .store_global_program("g", json!({"t": 1}))
        .await
        .unwrap();
    let pool = pool_of(&dir, store.clone(), 1).await;
    let r = tokio::time::timeout(
        GUARD,
        pool.execute(
            "steps",
            json!({"steps": [
                host("session.get", json!({"key": "k"})),
                host("session.set", json!({"key": "k", "value": 1})),
                host("session.delete", json!({"key": "k"})),
                host("session.get_program", json!({"program_id": "p"})),
                host("session.store_program", json!({"program_id": "p", "program": 1})),
                host("session.get_global_program", json!({"program_id": "g"})),
            ]}),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let out = r["out"].as_array().unwrap();
    for o in &out[..5] {
        assert_eq!(err_type(o), "NoSession", "{o}");
    }
    assert_eq!(out[5], json!({"ok": {"t": 1}}));
    assert!(store.list_sessions().await.unwrap().is_empty());
    pool.shutdown().await.unwrap();
}

/// Values nested to `MAX_VALUE_DEPTH` are kept; deeper ones are refused
/// with a typed error (`InvalidArgument` from the store, or `TooDeep` from
/// the host's decoder) and store nothing; large values (8 MB) go through
/// whole; a stored value larger than the pool's frame limit is an error of
/// that host call, and the worker keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_and_huge_values_through_host_calls() {
    let dir = Dir::new("deep");
    let store = Arc::new(unswept());
    let pool = attach(
        Pool::builder(Bridge::python(dir.script())).configure(|c| c.max_frame_size = 16 << 20),
        store.clone(),
    )
    .size(1)
    .start()
    .await
    .unwrap();
    let out = steps(
        &pool,
        "deep",
        json!([
            {"f": "session.set", "a": {"key": "d125"}, "nest": 125},
            {"f": "session.set", "a": {"key": "d126"}, "nest": 126},
            {"f": "session.set", "a": {"key": "d500"}, "nest": 500},
            {"f": "session.store_program", "a": {"program_id": "p"}, "nest": 126},
            {"f": "session.set", "a": {"key": "big"}, "big": 8 << 20},
            {"f": "session.get", "a": {"key": "big"}, "len": true},
            {"f": "session.get", "a": {"key": "d125"}, "len": true},
        ]),
    )
    .await;
    assert_eq!(out[0], json!({"ok": null}), "{out:.300}");
    for o in [&out[1], &out[2], &out[3]] {
        assert!(
            matches!(err_type(o), "InvalidArgument" | "TooDeep"),
            "{o:.300}"
        );
    }
    assert_eq!(out[4], json!({"ok": null}));
    assert_eq!(out[5], json!({"ok": 8 << 20}));
    assert_eq!(out[6], json!({"ok": "list"}));
    let s = store.get_session("deep").await.unwrap();
    let mut keys: Vec<_> = s.data.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["big", "d125"]);
    assert!(s.programs.is_empty());

    // Larger than the frame limit, put there by the host: the worker's get
    // fails alone.
    store
        .set("deep", "huge", json!("y".repeat(20 << 20)))
        .await
        .unwrap();
    let out = steps(
        &pool,
        "deep",
        json!([
            {"f": "session.get", "a": {"key": "huge"}, "len": true},
            {"f": "session.get", "a": {"key": "d125"}, "len": true},
        ]),
    )
    .await;
    assert!(out[0]["err"].is_string(), "{out:.300}");
    assert_eq!(out[1], json!({"ok": "list"}), "{out:.300}");
    pool.shutdown().await.unwrap();
}

/// Session ids: empty and 513 bytes are `Error::Session` and never run;
/// 512 bytes, NUL, control characters, bidi overrides and emoji are kept
/// exactly, the worker sees the same id and its writes land in that
/// session. Keys with NUL work too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_session_ids_through_the_pool() {
    let dir = Dir::new("ids");
    let store = Arc::new(unswept());
    let pool = pool_of(&dir, store.clone(), 1).await;
    for bad in [String::new(), "x".repeat(513), "é".repeat(257)] {
        let err = tokio::time::timeout(
            GUARD,
            pool.execute_in_session(&bad, "steps", json!({"steps": []})),
        )
        .await
        .unwrap()
        .unwrap_err();
        assert!(
            matches!(err, snakepit_core::Error::Session { .. }) && err.never_ran(),
            "{bad:.20}: {err}"
        );
    }
    for id in [
        "x".repeat(512),
        "a\0b".into(),
        "\u{202e}evil\u{202c}".into(),
        "line\nbreak\r\t".into(),
        "🐍é\u{feff}".into(),
        " ".into(),
        "\u{7f}\u{1b}[31m".into(),
    ] {
        let r = tokio::time::timeout(
            GUARD,
            pool.execute_in_session(
                &id,
                "steps",
                json!({"steps": [
                    host("session.set", json!({"key": "k\0", "value": id.clone()})),
                    host("session.get", json!({"key": "k\0"})),
                ]}),
            ),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(r["session_id"], json!(id), "{id:?}");
        assert_eq!(r["out"][1], json!({"ok": id}), "{id:?}");
        assert_eq!(store.get(&id, "k\0").await.unwrap(), Some(json!(id)));
    }
    assert_eq!(store.stats().await.unwrap().sessions_created, 7);
    pool.shutdown().await.unwrap();
}

/// A session deleted while its call runs: the handler's writes fail with
/// `SessionNotFound` and do not bring it back; the call itself succeeds;
/// the pool holds no affinity record for it afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_deleted_mid_call_is_not_resurrected() {
    let dir = Dir::new("midcall");
    let store = Arc::new(unswept());
    let pool = pool_of(&dir, store.clone(), 2).await;
    let (started, go) = (dir.path("started"), dir.path("go"));
    let call = {
        let pool = pool.clone();
        let args = json!({"steps": [
            host("session.set", json!({"key": "k", "value": 1})),
            {"signal": started},
            {"wait": go},
            host("session.set", json!({"key": "k", "value": 2})),
            host("session.get", json!({"key": "k"})),
            host("session.store_program", json!({"program_id": "p", "program": 1})),
        ]});
        tokio::spawn(async move { pool.execute_in_session("doomed", "steps", args).await })
    };
    let s = started.clone();
    until(60, "the handler started", move || {
        let s = s.clone();
        async move { s.exists() }
    })
    .await;
    assert_eq!(pool.stats().sessions, 1);
    assert!(store.delete_session("doomed").await.unwrap());
    assert_eq!(pool.stats().sessions, 0);
    std::fs::write(&go, b"").unwrap();
    let r = tokio::time::timeout(GUARD, call)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let out = &r["out"];
    assert_eq!(out[0], json!({"ok": null}));
    for o in [&out[3], &out[4], &out[5]] {
        assert_eq!(err_type(o), "SessionNotFound", "{out}");
    }
    assert!(!store.session_exists("doomed").await.unwrap());
    assert_eq!(pool.stats().sessions, 0);
    pool.shutdown().await.unwrap();
}

/// More sessions than the pool's `max_sessions` affinity records: every
/// call still runs and every session keeps its data (data lives in the
/// store, not in the record); the records stay bounded; deleting the
/// sessions drops the records there are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_sessions_than_max_sessions() {
    let dir = Dir::new("max");
    let store = Arc::new(unswept());
    let pool = attach(
        Pool::builder(Bridge::python(dir.script())).configure(|c| c.max_sessions = 3),
        store.clone(),
    )
    .size(2)
    .start()
    .await
    .unwrap();
    for round in 0..2 {
        for i in 0..20 {
            let id = format!("s{i}");
            let out = steps(
                &pool,
                &id,
                json!([
                    host("session.get", json!({"key": "n"})),
                    host("session.set", json!({"key": "n", "value": round})),
                ]),
            )
            .await;
            let want = if round == 0 { Value::Null } else { json!(0) };
            assert_eq!(out[0], json!({ "ok": want }), "{id}");
            assert!(pool.stats().sessions <= 3);
        }
    }
    for i in 0..20 {
        let id = format!("s{i}");
        assert_eq!(store.get(&id, "n").await.unwrap(), Some(json!(1)));
        assert!(store.delete_session(&id).await.unwrap());
    }
    assert_eq!(pool.stats().sessions, 0);
    pool.shutdown().await.unwrap();
}

/// Many callers in one session at once: every call completes, and each
/// reads back what it wrote under its own key (no cross-talk between the
/// calls, whichever worker runs them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_callers_in_one_session() {
    let dir = Dir::new("many");
    let store = Arc::new(unswept());
    let pool = pool_of(&dir, store.clone(), 2).await;
    let mut tasks = Vec::new();
    for c in 0..16 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..5 {
                let key = format!("caller{c}");
                let out = steps(
                    &pool,
                    "shared",
                    json!([
                        host("session.set", json!({"key": key, "value": i})),
                        host("session.get", json!({"key": key})),
                    ]),
                )
                .await;
                assert_eq!(out[1], json!({ "ok": i }), "caller {c} call {i}");
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(GUARD, t).await.unwrap().unwrap();
    }
    let s = store.get_session("shared").await.unwrap();
    assert_eq!(s.data.len(), 16);
    assert!(s.data.values().all(|v| *v == json!(4)));
    assert_eq!(store.stats().await.unwrap().sessions_created, 1);
    pool.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------
// A store that fails, hangs or panics
// ---------------------------------------------------------------------

const OK: u8 = 0;
const FAIL: u8 = 1;
const HANG: u8 = 2;
const PANIC: u8 = 3;

/// A `MemoryStore` whose `ensure_session` and data operations can be made
/// to fail, hang or panic.
#[derive(Default)]
struct Faulty {
    inner: MemoryStore,
    ensure: AtomicU8,
    data: AtomicU8,
    /// A handle on each listener given with `on_session_end_while` (and
    /// passed on): a handle that is the last one left means the store
    /// dropped that listener.
    whiles: std::sync::Mutex<Vec<EndListenerWhile>>,
}

impl Faulty {
    async fn fault(mode: &AtomicU8, op: &str) -> Result<(), Error> {
        match mode.load(Ordering::SeqCst) {
            FAIL => Err(Error::Backend(format!("{op}: injected failure"))),
            HANG => std::future::pending().await,
            PANIC => panic!("injected panic in {op}"),
            _ => Ok(()),
        }
    }
}

impl SessionStore for Faulty {
    async fn create_session(&self, id: &str, ttl: Option<Duration>) -> Result<Session, Error> {
        self.inner.create_session(id, ttl).await
    }
    async fn ensure_session(&self, id: &str) -> Result<(), Error> {
        Self::fault(&self.ensure, "ensure_session").await?;
        self.inner.ensure_session(id).await
    }
    async fn get_session(&self, id: &str) -> Result<Session, Error> {
        self.inner.get_session(id).await
    }
    async fn update_session<F>(&self, id: &str, f: F) -> Result<Session, Error>
    where
        F: FnMut(&mut Session) + Send,
    {
        self.inner.update_session(id, f).await
    }
    async fn delete_session(&self, id: &str) -> Result<bool, Error> {
        self.inner.delete_session(id).await
    }
    async fn session_exists(&self, id: &str) -> Result<bool, Error> {
        self.inner.session_exists(id).await
    }
    async fn list_sessions(&self) -> Result<Vec<String>, Error> {
        self.inner.list_sessions().await
    }
    async fn stats(&self) -> Result<StoreStats, Error> {
        self.inner.stats().await
    }
    async fn store_program(&self, id: &str, program_id: &str, program: Value) -> Result<(), Error> {
        self.inner.store_program(id, program_id, program).await
    }
    async fn get_program(&self, id: &str, program_id: &str) -> Result<Value, Error> {
        self.inner.get_program(id, program_id).await
    }
    async fn store_global_program(&self, program_id: &str, program: Value) -> Result<(), Error> {
        self.inner.store_global_program(program_id, program).await
    }
    async fn get_global_program(&self, program_id: &str) -> Result<Value, Error> {
        self.inner.get_global_program(program_id).await
    }
    async fn cleanup_expired(&self) -> Result<usize, Error> {
        self.inner.cleanup_expired().await
    }
    async fn get(&self, id: &str, key: &str) -> Result<Option<Value>, Error> {
        Self::fault(&self.data, "get").await?;
        self.inner.get(id, key).await
    }
    async fn set(&self, id: &str, key: &str, value: Value) -> Result<(), Error> {
        Self::fault(&self.data, "set").await?;
        self.inner.set(id, key, value).await
    }
    async fn delete(&self, id: &str, key: &str) -> Result<bool, Error> {
        Self::fault(&self.data, "delete").await?;
        self.inner.delete(id, key).await
    }
    fn on_session_end(&self, listener: EndListener) {
        self.inner.on_session_end(listener)
    }
    fn on_session_end_while(&self, listener: EndListenerWhile) {
        self.whiles.lock().unwrap().push(listener.clone());
        self.inner.on_session_end_while(listener)
    }
}

/// A store that fails: the touch failing is `Error::Session`, never run;
/// a failing data operation reaches the handler as `SessionStoreError`;
/// once the store is well again the same pool works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_is_a_typed_error_and_the_pool_recovers() {
    let dir = Dir::new("failing");
    let store = Arc::new(Faulty::default());
    let pool = pool_of(&dir, store.clone(), 1).await;
    store.ensure.store(FAIL, Ordering::SeqCst);
    let err = tokio::time::timeout(
        GUARD,
        pool.execute_in_session("f", "steps", json!({"steps": []})),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(&err, snakepit_core::Error::Session { session_id, message }
            if session_id == "f" && message.contains("injected failure"))
            && err.never_ran(),
        "{err}"
    );
    store.ensure.store(OK, Ordering::SeqCst);
    store.data.store(FAIL, Ordering::SeqCst);
    let out = steps(
        &pool,
        "f",
        json!([
            host("session.get", json!({"key": "k"})),
            host("session.set", json!({"key": "k", "value": 1})),
            host("session.delete", json!({"key": "k"})),
        ]),
    )
    .await;
    for o in out.as_array().unwrap() {
        assert_eq!(err_type(o), "SessionStoreError", "{out}");
    }
    store.data.store(OK, Ordering::SeqCst);
    let out = steps(
        &pool,
        "f",
        json!([host("session.set", json!({"key": "k", "value": 1}))]),
    )
    .await;
    assert_eq!(out[0], json!({"ok": null}));
    pool.shutdown().await.unwrap();
}

/// A store that hangs in the touch: the call fails at its deadline with
/// `CallTimeout` (as sessions.md says) instead of hanging; one that hangs in
/// a host call: the call fails at its deadline too, and the worker serves
/// the next call once the store answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_store_ends_at_the_calls_deadline() {
    let dir = Dir::new("hanging");
    let store = Arc::new(Faulty::default());
    let pool = pool_of(&dir, store.clone(), 1).await;
    let opts = || {
        CallOptions::new()
            .session("h")
            .timeout(Duration::from_secs(3))
    };

    store.ensure.store(HANG, Ordering::SeqCst);
    let err = tokio::time::timeout(
        GUARD,
        pool.execute_with("steps", json!({"steps": []}), opts()),
    )
    .await
    .expect("a hanging touch hung the call")
    .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    store.ensure.store(OK, Ordering::SeqCst);

    store.data.store(HANG, Ordering::SeqCst);
    let err = tokio::time::timeout(
        GUARD,
        pool.execute_with(
            "steps",
            json!({"steps": [host("session.get", json!({"key": "k"}))]}),
            opts(),
        ),
    )
    .await
    .expect("a hanging host call hung the call")
    .unwrap_err();
    assert!(err.is_timeout() || err.kind() == "cancelled", "{err}");
    store.data.store(OK, Ordering::SeqCst);
    let out = steps(
        &pool,
        "h",
        json!([host("session.set", json!({"key": "k", "value": 1}))]),
    )
    .await;
    assert_eq!(out[0], json!({"ok": null}));
    pool.shutdown().await.unwrap();
}

/// A store that panics in `ensure_session` (the touch before each session
/// call): the call should fail with `Error::Session`, as any other failure
/// of the store; instead the panic unwinds through `attach`'s hook into
/// the caller's `execute_in_session`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_panicking_in_the_touch_is_a_session_error() {
    let dir = Dir::new("panic-touch");
    let store = Arc::new(Faulty::default());
    let pool = pool_of(&dir, store.clone(), 1).await;
    store.ensure.store(PANIC, Ordering::SeqCst);
    let call = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute_in_session("p", "steps", json!({"steps": []}))
                .await
        })
    };
    let joined = tokio::time::timeout(GUARD, call).await.unwrap();
    store.ensure.store(OK, Ordering::SeqCst);
    // The pool works afterwards either way.
    let out = steps(&pool, "p", json!([])).await;
    assert_eq!(out, json!([]));
    pool.shutdown().await.unwrap();
    let err = joined
        .expect("the caller's task panicked")
        .expect_err("a panicking store is a failure");
    assert!(
        matches!(err, snakepit_core::Error::Session { .. }) && err.never_ran(),
        "{err}"
    );
}

/// A store that panics in a data operation a worker calls: the handler
/// should get a host-call error it can catch; instead the task answering
/// the host call dies without a reply, the handler waits for it, and the
/// call only ends at its deadline (a `CallTimeout`, or forever for a call
/// without one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_panicking_in_a_host_call_is_a_host_call_error() {
    let dir = Dir::new("panic-host");
    let store = Arc::new(Faulty::default());
    let pool = pool_of(&dir, store.clone(), 1).await;
    store.data.store(PANIC, Ordering::SeqCst);
    let r = tokio::time::timeout(
        GUARD,
        pool.execute_with(
            "steps",
            json!({"steps": [host("session.get", json!({"key": "k"}))]}),
            // Long enough for a loaded machine; a deadline only so that the
            // defect fails the test instead of hanging it.
            CallOptions::new()
                .session("p")
                .timeout(Duration::from_secs(20)),
        ),
    )
    .await
    .expect("hung past the guard");
    store.data.store(OK, Ordering::SeqCst);
    pool.shutdown().await.unwrap();
    let r = r.expect("the handler got no answer to its host call");
    assert!(r["out"][0]["err"].is_string(), "{r}");
}

// ---------------------------------------------------------------------
// End listeners
// ---------------------------------------------------------------------

/// An application's end listener that panics, registered before the pool
/// was attached: deleting a session must still drop the pool's affinity
/// record for it. The store calls its listeners in order and the panic
/// stops it before the pool's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_listener_does_not_keep_affinity_after_delete() {
    let dir = Dir::new("listener-delete");
    let store = Arc::new(unswept());
    store.on_session_end(Arc::new(|id, _| panic!("listener panics on {id}")));
    let pool = pool_of(&dir, store.clone(), 2).await;
    steps(&pool, "s", json!([])).await;
    assert_eq!(pool.stats().sessions, 1);
    let deleting = {
        let store = store.clone();
        tokio::spawn(async move { store.delete_session("s").await })
    };
    let _ = tokio::time::timeout(GUARD, deleting).await.unwrap();
    assert!(!store.session_exists("s").await.unwrap());
    let sessions = pool.stats().sessions;
    pool.shutdown().await.unwrap();
    assert_eq!(sessions, 0, "the pool kept the deleted session's affinity");
}

/// A listener that panics once, on the first expiry the background sweep
/// reports: later expiries must still be reported (to the pool, which
/// drops their affinity, and to other listeners). The panic kills the
/// sweep task instead: no expiry is reported again, and expired sessions
/// stay in memory until touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_panicking_once_does_not_stop_the_sweep() {
    let dir = Dir::new("listener-sweep");
    let store = Arc::new(
        MemoryStore::builder()
            .default_ttl(Duration::from_millis(300))
            .sweep_interval(Duration::from_millis(50))
            .build(),
    );
    let panicked = Arc::new(AtomicBool::new(false));
    let p = panicked.clone();
    store.on_session_end(Arc::new(move |_, _| {
        if !p.swap(true, Ordering::SeqCst) {
            panic!("listener panics once");
        }
    }));
    let ends = common::record_ends(&*store);
    let pool = pool_of(&dir, store.clone(), 1).await;
    steps(&pool, "first", json!([])).await;
    let p = panicked.clone();
    until(30, "the first expiry reached the listener", move || {
        let p = p.clone();
        async move { p.load(Ordering::SeqCst) }
    })
    .await;
    steps(&pool, "second", json!([])).await;
    let seen = ends.clone();
    let waited = tokio::time::timeout(
        Duration::from_secs(20),
        until(15, "the second session's expiry is reported", move || {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .iter()
                    .any(|(id, why)| id == "second" && *why == EndReason::Expired)
            }
        }),
    )
    .await;
    let sessions = pool.stats().sessions;
    pool.shutdown().await.unwrap();
    assert!(waited.is_ok());
    assert_eq!(sessions, 0, "the pool kept expired sessions' affinity");
}

// ---------------------------------------------------------------------
// execute_program_command
// ---------------------------------------------------------------------

/// Hostile program ids and bodies: an id out of bounds is `Invalid` and
/// never runs; `session_id` in the arguments cannot point at another
/// session; a non-string program id is just not looked up; a program a
/// worker stored (through `session.store_program`) that is not an object
/// is passed as it is and counted without harm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_program_ids_and_bodies() {
    let dir = Dir::new("programs");
    let store = Arc::new(unswept());
    let pool = pool_of(&dir, store.clone(), 1).await;
    for pid in [String::new(), "p".repeat(513)] {
        let r = execute_program_command(
            &pool,
            &*store,
            "ml",
            "execute_program",
            json!({"program_id": pid, "steps": [{"signal": dir.path("ran")}]}),
        )
        .await;
        assert!(matches!(r, Err(Error::Invalid { .. })), "{r:?}");
        assert!(
            !dir.path("ran").exists(),
            "an invalid program id never runs"
        );
    }
    // The caller's session_id cannot redirect the call.
    let r = execute_program_command(
        &pool,
        &*store,
        "ml",
        "execute_program",
        json!({"program_id": 7, "session_id": "victim"}),
    )
    .await
    .unwrap();
    assert_eq!(r["session_id"], "ml");
    assert_eq!(r["program_data"], Value::Null);
    assert!(!store.session_exists("victim").await.unwrap());
    // A program the worker stored, of any shape, with an odd id.
    let odd = "p\0\u{202e}🐍";
    steps(
        &pool,
        "ml",
        json!([host(
            "session.store_program",
            json!({"program_id": odd, "program": "just a string"})
        )]),
    )
    .await;
    let r = execute_program_command(
        &pool,
        &*store,
        "ml",
        "execute_program",
        json!({"program_id": odd}),
    )
    .await
    .unwrap();
    assert_eq!(r["program_data"], "just a string");
    assert_eq!(
        store.get_program("ml", odd).await.unwrap(),
        json!("just a string")
    );
    pool.shutdown().await.unwrap();
}

/// A worker stores a program whose `execution_count` is the largest u64
/// (a hostile or buggy body, through `session.store_program`); running it
/// with the helper then adds one to that count: an overflow, which panics
/// the host's caller in a debug build (and wraps to 0 in release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_execution_count_does_not_panic_the_host() {
    let dir = Dir::new("count");
    let store = Arc::new(unswept());
    let pool = pool_of(&dir, store.clone(), 1).await;
    steps(
        &pool,
        "ml",
        json!([host(
            "session.store_program",
            json!({"program_id": "p", "program": {"execution_count": u64::MAX}})
        )]),
    )
    .await;
    let run = {
        let (pool, store) = (pool.clone(), store.clone());
        tokio::spawn(async move {
            execute_program_command(
                &pool,
                &*store,
                "ml",
                "execute_program",
                json!({"program_id": "p"}),
            )
            .await
        })
    };
    let joined = tokio::time::timeout(GUARD, run).await.unwrap();
    pool.shutdown().await.unwrap();
    let r = joined.expect("the host's caller panicked");
    let r = r.unwrap();
    assert_eq!(r["ran"], true);
    let count = &store.get_program("ml", "p").await.unwrap()["execution_count"];
    assert!(count.as_u64().is_some(), "{count}");
}

/// `execute_program` runs, then the session ends before the helper records
/// the run (deleted while the call ran, or its TTL passed during a long
/// call): the command did run and succeeded, but the helper returns
/// `NotFound` and the worker's reply is lost; a caller retrying on that
/// error runs the program twice. The same for `create_program`, whose
/// created program is lost with its id, and when the worker's reply names
/// a program id the store refuses (empty, over 512 bytes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_run_that_succeeded_is_not_reported_as_not_found() {
    let dir = Dir::new("program-midcall");
    let store = Arc::new(unswept());
    let pool = pool_of(&dir, store.clone(), 1).await;
    let mut results = Vec::new();
    for command in ["execute_program", "create_program"] {
        let (started, go) = (
            dir.path(&format!("{command}-started")),
            dir.path(&format!("{command}-go")),
        );
        let run = {
            let (pool, store) = (pool.clone(), store.clone());
            let args = json!({"program_id": "p", "steps": [{"signal": started}, {"wait": go}]});
            tokio::spawn(async move {
                execute_program_command(&pool, &*store, "ml", command, args).await
            })
        };
        let s = started.clone();
        until(60, "the handler started", move || {
            let s = s.clone();
            async move { s.exists() }
        })
        .await;
        assert!(store.delete_session("ml").await.unwrap());
        std::fs::write(&go, b"").unwrap();
        let r = tokio::time::timeout(GUARD, run).await.unwrap().unwrap();
        results.push((command, format!("{r:?}"), r.is_ok()));
    }
    // The same loss when the worker's reply names a program id the store
    // refuses: the program was created, the caller is told `Invalid`.
    let r = execute_program_command(
        &pool,
        &*store,
        "ml",
        "create_program",
        json!({"want_id": ""}),
    )
    .await;
    results.push(("create_program (id \"\")", format!("{r:?}"), r.is_ok()));
    pool.shutdown().await.unwrap();
    let lost: Vec<String> = results
        .into_iter()
        .filter(|(_, _, ok)| !ok)
        .map(|(command, r, _)| format!("{command}: the worker succeeded, the helper said {r}"))
        .collect();
    assert!(lost.is_empty(), "{lost:#?}");
}

/// Concurrent runs of one stored program through the helper: each run is
/// counted (the count is updated atomically), none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_program_runs_are_each_counted() {
    let dir = Dir::new("program-count");
    let store = Arc::new(unswept());
    let pool = pool_of(&dir, store.clone(), 2).await;
    let created = execute_program_command(
        &pool,
        &*store,
        "ml",
        "create_program",
        json!({"want_id": "p1", "model": "m"}),
    )
    .await
    .unwrap();
    assert_eq!(created["program_id"], "p1");
    let mut runs = Vec::new();
    for _ in 0..12 {
        let (pool, store) = (pool.clone(), store.clone());
        runs.push(tokio::spawn(async move {
            execute_program_command(
                &pool,
                &*store,
                "ml",
                "execute_program",
                json!({"program_id": "p1"}),
            )
            .await
        }));
    }
    for r in runs {
        let r = tokio::time::timeout(GUARD, r)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(r["program_data"]["config"]["model"], "m", "{r}");
    }
    let p = store.get_program("ml", "p1").await.unwrap();
    assert_eq!(p["execution_count"], 12, "{p}");
    pool.shutdown().await.unwrap();
}

/// A worker running several calls at once (the bridge's thread mode),
/// for the tests of which session a host call belongs to.
const CONCURRENT_WORKER: &str = r#"
import json, os, threading, time
import snakepit_bridge
from snakepit_bridge import HostCallError

worker = snakepit_bridge.Worker(max_concurrency=4)


def wait_for(path):
    end = time.time() + 60
    while not os.path.exists(path) and time.time() < end:
        time.sleep(0.01)


@worker.command("pair")
def pair(args, ctx):
    ctx.session.set("who", ctx.session_id)
    open(args["mine"], "w").close()
    wait_for(args["other"])
    return {"pid": os.getpid(), "session_id": ctx.session_id, "who": ctx.session.get("who")}


@worker.command("leak")
def leak(args, ctx):
    def later():
        wait_for(args["go"])
        try:
            r = {"ok": ctx.call_host("session.set", {"key": "late", "value": 1})}
        except HostCallError as e:
            r = {"err": e.type}
        except BaseException as e:
            r = {"other": repr(e)}
        with open(args["out"] + ".tmp", "w") as f:
            json.dump(r, f)
        os.rename(args["out"] + ".tmp", args["out"])
    threading.Thread(target=later, daemon=True).start()
    return {"pid": os.getpid()}


@worker.command("hold")
def hold(args, ctx):
    open(args["started"], "w").close()
    wait_for(args["go"])
    return {"pid": os.getpid(), "session_id": ctx.session_id}


worker.run()
"#;

async fn concurrent_pool(dir: &Dir, store: Arc<MemoryStore>) -> Pool {
    let script = dir.path("threaded_worker.py");
    std::fs::write(&script, CONCURRENT_WORKER).unwrap();
    attach(Pool::builder(Bridge::python(script)), store)
        .size(1)
        .start()
        .await
        .unwrap()
}

async fn wait_file(path: &std::path::Path) {
    let p = path.to_owned();
    until(60, "a file the worker writes", move || {
        let p = p.clone();
        async move { p.exists() }
    })
    .await;
}

/// Two sessions' calls on one worker at the same time: each call's host
/// calls reach its own session, whatever the other does meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_of_two_sessions_on_one_worker_stay_apart() {
    let dir = Dir::new("pair");
    let store = Arc::new(unswept());
    let pool = concurrent_pool(&dir, store.clone()).await;
    let (a, b) = (dir.path("a"), dir.path("b"));
    let call = |session: &'static str, mine: &PathBuf, other: &PathBuf| {
        let pool = pool.clone();
        let args = json!({"mine": mine, "other": other});
        tokio::spawn(async move { pool.execute_in_session(session, "pair", args).await })
    };
    let ca = call("A", &a, &b);
    let cb = call("B", &b, &a);
    let ra = tokio::time::timeout(GUARD, ca)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let rb = tokio::time::timeout(GUARD, cb)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ra["pid"], rb["pid"], "both ran on the one worker at once");
    assert_eq!((&ra["who"], &rb["who"]), (&json!("A"), &json!("B")));
    assert_eq!(store.get("A", "who").await.unwrap(), Some(json!("A")));
    assert_eq!(store.get("B", "who").await.unwrap(), Some(json!("B")));
    pool.shutdown().await.unwrap();
}

/// A host call a worker makes after its call has ended (from a thread the
/// handler left behind), while the worker runs another session's call:
/// it belongs to no call any more. The bridge refuses it itself
/// (`Cancelled`, "already finished": bridges.md, host functions) and sends
/// nothing, so neither the old session nor the one running now gets the
/// write. (Before the bridges checked, the pool answered such a call with
/// `NoSession`, and it still does for a worker that sends one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_call_after_its_call_ended_reaches_no_session() {
    let dir = Dir::new("late");
    let store = Arc::new(unswept());
    let pool = concurrent_pool(&dir, store.clone()).await;
    let (go, out) = (dir.path("go"), dir.path("out"));
    tokio::time::timeout(
        GUARD,
        pool.execute_in_session("old", "leak", json!({"go": go, "out": out})),
    )
    .await
    .unwrap()
    .unwrap();
    let (started, release) = (dir.path("started"), dir.path("release"));
    let holding = {
        let pool = pool.clone();
        let args = json!({"started": started, "go": release});
        tokio::spawn(async move { pool.execute_in_session("now", "hold", args).await })
    };
    wait_file(&started).await;
    std::fs::write(&go, b"").unwrap();
    wait_file(&out).await;
    std::fs::write(&release, b"").unwrap();
    tokio::time::timeout(GUARD, holding)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let late: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let refused = late["other"].as_str().unwrap_or_default();
    assert!(
        refused.starts_with("Cancelled(") && refused.contains("already finished"),
        "the late host call is refused by the bridge: {late}"
    );
    assert_eq!(store.get("old", "late").await.unwrap(), None);
    assert_eq!(store.get("now", "late").await.unwrap(), None);
    pool.shutdown().await.unwrap();
}

/// A worker writes a value larger than the pool's frame limit with
/// `ctx.session.set`: the call fails with a typed error instead of
/// hanging, nothing is stored, and the pool serves the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_over_the_frame_limit_from_a_worker_fails_that_call_only() {
    let dir = Dir::new("overframe");
    let store = Arc::new(unswept());
    let pool = attach(
        Pool::builder(Bridge::python(dir.script())).configure(|c| c.max_frame_size = 1 << 20),
        store.clone(),
    )
    .size(1)
    .start()
    .await
    .unwrap();
    let r = tokio::time::timeout(
        GUARD,
        pool.execute_in_session(
            "big",
            "steps",
            json!({"steps": [{"f": "session.set", "a": {"key": "k"}, "big": 2 << 20}]}),
        ),
    )
    .await
    .expect("a too-large host call hung the call");
    match &r {
        Ok(v) => assert!(v["out"][0]["err"].is_string(), "{v:.300}"),
        Err(e) => eprintln!("the call failed: {e}"),
    }
    assert_eq!(store.get("big", "k").await.unwrap(), None);
    let out = steps(
        &pool,
        "big",
        json!([host("session.set", json!({"key": "k", "value": 1}))]),
    )
    .await;
    assert_eq!(out[0], json!({"ok": null}));
    pool.shutdown().await.unwrap();
}

/// A program stored at the deepest nesting the store accepts
/// (`MAX_VALUE_DEPTH`) runs through the helper like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_as_deep_as_the_store_allows_runs() {
    let dir = Dir::new("deep-program");
    let store = Arc::new(unswept());
    let pool = pool_of(&dir, store.clone(), 1).await;
    let mut deep = json!(0);
    for _ in 0..snakepit_session::MAX_VALUE_DEPTH {
        deep = json!([deep]);
    }
    store.ensure_session("ml").await.unwrap();
    store.store_program("ml", "deep", deep).await.unwrap();
    let r = tokio::time::timeout(
        GUARD,
        execute_program_command(
            &pool,
            &*store,
            "ml",
            "execute_program",
            json!({"program_id": "deep"}),
        ),
    )
    .await
    .unwrap();
    pool.shutdown().await.unwrap();
    let r = r.unwrap();
    assert_eq!(r["ran"], true);
}

/// Host calls slide the session's TTL: a call longer than the TTL that
/// keeps using its session keeps it (and its data) alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_calls_keep_a_long_calls_session_alive() {
    let dir = Dir::new("slide");
    let store = Arc::new(
        MemoryStore::builder()
            .default_ttl(Duration::from_secs(3))
            .sweep_interval(Duration::from_millis(100))
            .build(),
    );
    let ends = common::record_ends(&*store);
    let pool = pool_of(&dir, store.clone(), 1).await;
    let mut plan = vec![host("session.set", json!({"key": "k", "value": 1}))];
    for _ in 0..25 {
        plan.push(json!({"sleep": 0.3}));
        plan.push(host("session.get", json!({"key": "k"})));
    }
    let out = steps(&pool, "long", Value::Array(plan)).await;
    for o in out.as_array().unwrap().iter().skip(1).step_by(2) {
        assert_eq!(*o, Value::Null);
    }
    for o in out.as_array().unwrap().iter().skip(2).step_by(2) {
        assert_eq!(*o, json!({"ok": 1}), "{out}");
    }
    assert!(
        ends.lock().unwrap().is_empty(),
        "{:?}",
        ends.lock().unwrap()
    );
    assert_eq!(store.get("long", "k").await.unwrap(), Some(json!(1)));
    pool.shutdown().await.unwrap();
}

/// Pools that come and go over one long-lived store (a pool per tenant,
/// restarted pools): each `attach`ed pool registers an end listener with
/// the store. It once stayed for good (a store outliving its pools kept one
/// dead listener per pool it ever served, and called each on every session
/// end); now the store drops it at the first session end after its pool
/// is gone (`SessionStore::on_session_end_while`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_that_are_gone_leave_no_listener_behind() {
    let dir = Dir::new("listeners");
    let store = Arc::new(Faulty::default());
    for _ in 0..4 {
        let pool = pool_of(&dir, store.clone(), 1).await;
        steps(&pool, "s", json!([])).await;
        pool.shutdown().await.unwrap();
        drop(pool);
    }
    let given = store.whiles.lock().unwrap().len();
    assert_eq!(given, 4, "one listener per pool");
    // A session ends: each listener hears its pool is gone, and goes.
    store.inner.create_session("end", None).await.unwrap();
    assert!(store.inner.delete_session("end").await.unwrap());
    let kept = store
        .whiles
        .lock()
        .unwrap()
        .iter()
        .filter(|l| Arc::strong_count(l) > 1)
        .count();
    assert_eq!(kept, 0, "listeners kept for pools that are all gone");
}

/// A worker of its own protocol code (no bridge), which sends a host call
/// for a request it has already answered, while it serves another
/// session's call: `remember` answers and keeps its id; `late` makes the
/// host call under that id and answers with the `host_reply` it got.
const LATE_RAW_WORKER: &str = r#"
import json, os, struct, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer

def read():
    head = inp.read(4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    return json.loads(inp.read(n))

def write(obj):
    data = json.dumps(obj).encode()
    out.write(struct.pack(">I", len(data)) + data)
    out.flush()

write({"type": "hello", "protocol": 1, "pid": os.getpid(),
       "capabilities": {"max_concurrency": 1, "host_calls": True}})
ended = None
while True:
    req = read()
    if req is None:
        break
    if "command" not in req:
        continue
    rid = req["id"]
    if req["command"] == "remember":
        ended = rid
        write({"id": rid, "success": True, "result": {"pid": os.getpid()}})
    elif req["command"] == "late":
        write({"type": "host_call", "id": 1, "request_id": ended,
               "function": "session.set", "args": {"key": "late", "value": 1}})
        while True:
            r = read()
            if r is None:
                sys.exit(0)
            if r.get("type") == "host_reply":
                break
        write({"id": rid, "success": True, "result": r})
    else:
        write({"id": rid, "success": True, "result": {"status": "ok", "pid": os.getpid()}})
"#;

/// protocol.md, host calls: "`request_id` names the request being served,
/// which is how the pool knows the session". A worker that does not check
/// (not one of the bundled bridges, which refuse such a call themselves)
/// sends a host call under the id of a request it has already answered,
/// while it serves another session's call: the pool finds no session for
/// it (`NoSession`), and neither the old session nor the one running gets
/// the write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_host_call_from_a_worker_without_a_bridge_reaches_no_session() {
    let dir = Dir::new("late-raw");
    let store = Arc::new(unswept());
    let script = dir.path("late_raw_worker.py");
    std::fs::write(&script, LATE_RAW_WORKER).unwrap();
    let pool = attach(Pool::builder(Bridge::python(script)), store.clone())
        .size(1)
        .start()
        .await
        .unwrap();
    tokio::time::timeout(GUARD, pool.execute_in_session("old", "remember", json!({})))
        .await
        .unwrap()
        .unwrap();
    let reply = tokio::time::timeout(GUARD, pool.execute_in_session("now", "late", json!({})))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply["success"], json!(false), "{reply}");
    assert_eq!(reply["error"]["type"], json!("NoSession"), "{reply}");
    assert_eq!(store.get("old", "late").await.unwrap(), None);
    assert_eq!(store.get("now", "late").await.unwrap(), None);
    pool.shutdown().await.unwrap();
}
