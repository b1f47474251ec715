//! Promise audit of docs/sessions.md: what the page promises that no other
//! test of this crate shows.
//!
//! - "`snakepit_session::check_value` gives a store of your own the same
//!   check" (values nested deeper than `MAX_VALUE_DEPTH`, 125 levels);
//! - "`snakepit_session::Listeners` gives a store of your own the same
//!   behaviour" (listeners told after the fact, outside any lock, a
//!   panicking one logged while the others are told, one that returns
//!   `false` dropped);
//! - errors: "`Pool` (session helpers)";
//! - program helpers: "Once the worker has answered, its result is
//!   returned whatever happens to the bookkeeping after it (... the store
//!   failing)", against a real `redis-server` killed while the worker runs;
//! - "The default features stay lean: `redis` alone pulls in no TLS code."

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::Pool;
use snakepit_session::{
    check_value, execute_program_command, EndReason, Error, Listeners, MemoryStore, SessionStore,
    MAX_VALUE_DEPTH,
};
use snakepit_tests::python;

#[cfg(feature = "redis")]
mod redis_server;

/// A worker of program commands for `execute_program_command`: each can
/// wait (it creates the file `started`, then waits for the file `go`) so
/// that a test can act while the worker runs; `fail` raises.
const PROGRAM_WORKER: &str = r#"
import os
import time

import snakepit_bridge

worker = snakepit_bridge.Worker()


def wait(args):
    if "started" not in args:
        return
    with open(args["started"], "w"):
        pass
    deadline = time.monotonic() + 60
    while not os.path.exists(args["go"]):
        if time.monotonic() > deadline:
            raise TimeoutError("the test never said go")
        time.sleep(0.01)


@worker.command("create_program")
def create_program(args, ctx):
    wait(args)
    return {"program_id": "p1", "signature": "question -> answer", "pid": os.getpid()}


@worker.command("execute_program")
def execute_program(args, ctx):
    wait(args)
    return {"ran": True, "program_data": args.get("program_data")}


@worker.command("fail")
def fail(args, ctx):
    raise ValueError("failed on purpose")


worker.run()
"#;

/// A directory of this test's own (emptied first).
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "snakepit-session-docs-audit-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A one-worker pool of [`PROGRAM_WORKER`] (no store attached: the
/// helper creates the session itself).
async fn program_pool(dir: &std::path::Path) -> Pool {
    let script = dir.join("program_worker.py");
    std::fs::write(&script, PROGRAM_WORKER).unwrap();
    Pool::builder(Bridge::python(script).interpreter(python()))
        .size(1)
        .start()
        .await
        .unwrap()
}

/// `[[...[0]...]]`: `depth` arrays around a number.
fn nested(depth: usize) -> Value {
    let mut v = json!(0);
    for _ in 0..depth {
        v = json!([v]);
    }
    v
}

/// sessions.md, Errors: "`Invalid` (... a value, program or metadata value
/// nested deeper than `MAX_VALUE_DEPTH`, 125 levels ...;
/// `snakepit_session::check_value` gives a store of your own the same
/// check)". `check_value` takes a value of 125 levels and refuses one of
/// 126 (also when the deep part sits inside an object) with `Invalid`
/// naming what was checked, and a `MemoryStore` draws the line at the same
/// depth.
#[tokio::test]
async fn check_value_gives_a_store_of_your_own_the_same_depth_check() {
    assert_eq!(MAX_VALUE_DEPTH, 125);
    check_value("value", &nested(125)).unwrap();
    check_value("value", &json!({"a": 1, "b": "two"})).unwrap();
    for deep in [nested(126), json!({"ok": 1, "deep": nested(125)})] {
        match check_value("value", &deep) {
            Err(Error::Invalid { what, .. }) => assert_eq!(what, "value"),
            other => panic!("a value of 126 levels: {other:?}"),
        }
    }
    // The bundled store's line is the same one.
    let store = MemoryStore::new();
    store.ensure_session("s").await.unwrap();
    store.set("s", "ok", nested(125)).await.unwrap();
    assert!(matches!(
        store.set("s", "deep", nested(126)).await,
        Err(Error::Invalid { .. })
    ));
    assert_eq!(store.get("s", "deep").await.unwrap(), None);
}

/// sessions.md, Listeners: "One that panics is logged, and the others ...
/// are told all the same ... `on_session_end_while` takes a listener that
/// says when it is done by returning `false`: the bundled stores then drop
/// it ... `snakepit_session::Listeners` gives a store of your own the same
/// behaviour"; and (the type's docs) each listener "is called outside the
/// list's lock (a listener may register another)". Three ends notified to
/// a kept listener, one done after its first end, one that panics every
/// time and one that registers another listener from inside the call.
#[test]
fn listeners_give_a_store_of_your_own_the_same_behaviour() {
    let listeners = Arc::new(Listeners::default());
    assert!(listeners.is_empty());
    let kept = Arc::new(Mutex::new(Vec::new()));
    let once = Arc::new(AtomicUsize::new(0));
    let panicked = Arc::new(AtomicUsize::new(0));
    let registered = Arc::new(AtomicUsize::new(0));
    {
        let kept = kept.clone();
        listeners.add(Arc::new(move |id, why| {
            kept.lock().unwrap().push((id.to_owned(), why));
        }));
    }
    {
        let once = once.clone();
        listeners.add_while(Arc::new(move |_, _| {
            once.fetch_add(1, Ordering::SeqCst);
            false
        }));
    }
    {
        let panicked = panicked.clone();
        listeners.add(Arc::new(move |id, _| {
            panicked.fetch_add(1, Ordering::SeqCst);
            panic!("a listener panicking at the end of {id}");
        }));
    }
    {
        // Registers a new listener from inside the notification: with the
        // list's lock held this would deadlock.
        let (inner, registered) = (Arc::downgrade(&listeners), registered.clone());
        listeners.add_while(Arc::new(move |_, _| {
            if let Some(list) = inner.upgrade() {
                list.add_while(Arc::new(|_, _| false));
            }
            registered.fetch_add(1, Ordering::SeqCst);
            false
        }));
    }
    assert_eq!(listeners.len(), 4);

    // A deadlock would hang here: run it where a guard can see it.
    let list = listeners.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        list.notify("a", EndReason::Deleted);
        list.notify("b", EndReason::Expired);
        list.notify("c", EndReason::Deleted);
        tx.send(()).unwrap();
    });
    rx.recv_timeout(std::time::Duration::from_secs(30))
        .expect("notify returned (a listener registering another does not deadlock)");

    assert_eq!(
        *kept.lock().unwrap(),
        vec![
            ("a".to_owned(), EndReason::Deleted),
            ("b".to_owned(), EndReason::Expired),
            ("c".to_owned(), EndReason::Deleted),
        ],
        "the kept listener heard every end, the panicking one notwithstanding"
    );
    assert_eq!(once.load(Ordering::SeqCst), 1, "dropped after `false`");
    assert_eq!(
        panicked.load(Ordering::SeqCst),
        3,
        "a panic does not drop it"
    );
    assert_eq!(registered.load(Ordering::SeqCst), 1);
    // Left: the kept one and the panicking one (the listener registered
    // during "a" said `false` at "b" and is gone too).
    assert_eq!(listeners.len(), 2);
}

/// sessions.md, Errors: "`Pool` (session helpers)": a program command that
/// the worker fails comes back from `execute_program_command` as
/// `snakepit_session::Error::Pool`, carrying the pool's error with the
/// worker's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_helper_call_is_a_pool_error() {
    let dir = temp_dir("pool-error");
    let pool = program_pool(&dir).await;
    let store = MemoryStore::new();
    let r = execute_program_command(&pool, &store, "s", "fail", json!({})).await;
    match r {
        Err(Error::Pool(inner)) => {
            let remote = inner.remote().expect("the worker's error");
            assert!(remote.message.contains("failed on purpose"), "{remote:?}");
        }
        other => panic!("expected Error::Pool, got {other:?}"),
    }
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// sessions.md, Program helpers: "Once the worker has answered, its result
/// is returned whatever happens to the bookkeeping after it (the session
/// deleted or expired meanwhile, the store failing): the program ran, and a
/// caller told otherwise would run it again." With a `RedisStore` on a
/// real `redis-server`: a program is created; `execute_program` starts
/// (its stored program fetched), Redis is killed while the worker runs, and
/// the helper must still return the worker's answer (its count could not
/// be recorded); the same for `create_program` (its program could not be
/// stored).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_helper_returns_the_workers_answer_when_the_store_fails_afterwards() {
    use snakepit_session::RedisStore;
    use std::time::Duration;

    let dir = temp_dir("store-fails");
    let mut redis = redis_server::Redis::start().await;
    let store = RedisStore::builder(redis.url())
        .timeout(Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    let pool = program_pool(&dir).await;

    let created = execute_program_command(&pool, &store, "ml", "create_program", json!({}))
        .await
        .unwrap();
    assert_eq!(created["program_id"], "p1");
    assert_eq!(
        store.get_program("ml", "p1").await.unwrap()["signature"],
        "question -> answer"
    );

    let mut outcomes = Vec::new();
    for command in ["execute_program", "create_program"] {
        if command == "create_program" {
            // The server comes back empty (no persistence): wait until the
            // store works again.
            redis.run().await;
            snakepit_tests::until(15, "the store works again", || async {
                store.ensure_session("ml").await.is_ok()
            })
            .await;
        }
        let (started, go) = (
            dir.join(format!("{command}-started")),
            dir.join(format!("{command}-go")),
        );
        let call = {
            let (pool, store) = (pool.clone(), store.clone());
            let args = json!({"program_id": "p1", "started": started, "go": go});
            tokio::spawn(async move {
                execute_program_command(&pool, &store, "ml", command, args).await
            })
        };
        let s = started.clone();
        snakepit_tests::until(60, "the worker runs the command", move || {
            let s = s.clone();
            async move { s.exists() }
        })
        .await;
        redis.kill();
        std::fs::write(&go, b"").unwrap();
        let r = tokio::time::timeout(Duration::from_secs(60), call)
            .await
            .expect("the helper returns")
            .unwrap();
        outcomes.push((command, r));
    }
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let (_, executed) = &outcomes[0];
    let executed = executed
        .as_ref()
        .unwrap_or_else(|e| panic!("execute_program ran, the helper said {e:?}"));
    assert_eq!(executed["ran"], true);
    assert_eq!(executed["program_data"]["program_id"], "p1", "{executed}");
    let (_, created) = &outcomes[1];
    let created = created
        .as_ref()
        .unwrap_or_else(|e| panic!("create_program ran, the helper said {e:?}"));
    assert_eq!(created["program_id"], "p1");
}

/// sessions.md, `RedisStore`: "The default features stay lean: `redis`
/// alone pulls in no TLS code." `cargo tree` of this crate with the
/// feature `redis` names no TLS crate (rustls, ring, native-tls, OpenSSL);
/// with `redis-tls` it names rustls (the check can see them).
#[test]
fn the_redis_feature_alone_pulls_in_no_tls_code() {
    let tree = |feature: &str| -> String {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        #[allow(clippy::disallowed_methods)] // cargo, not a worker
        let out = std::process::Command::new(cargo)
            .args(["tree", "--offline", "--locked", "-e", "normal"])
            .args(["--prefix", "none", "--format", "{p}"])
            .arg("--manifest-path")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
            .args(["-p", "snakepit-session", "--features", feature])
            .output()
            .expect("cargo runs");
        assert!(
            out.status.success(),
            "cargo tree --features {feature}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let tls_crates = |tree: &str| -> Vec<String> {
        let mut found: Vec<String> = tree
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|name| {
                [
                    "rustls",
                    "ring",
                    "native-tls",
                    "openssl",
                    "tokio-native-tls",
                ]
                .iter()
                .any(|t| name == t || name.starts_with(&format!("{t}-")))
            })
            .map(str::to_owned)
            .collect();
        found.sort();
        found.dedup();
        found
    };
    let with_tls = tls_crates(&tree("redis-tls"));
    assert!(
        with_tls.iter().any(|c| c == "rustls"),
        "redis-tls brings rustls: {with_tls:?}"
    );
    let lean = tls_crates(&tree("redis"));
    assert!(lean.is_empty(), "`redis` alone pulls in {lean:?}");
}
