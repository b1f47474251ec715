//! Red-team tests of the worker-side bridges as users write workers with
//! them, through real pools: the promises of bridges/node/README.md,
//! bridges/ruby/README.md and docs/bridges.md, and compatibility with
//! workers written for the original Elixir Snakepit
//! (docs/protocol.md: "a worker written for that project works unchanged").

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use snakepit_adapters::{Bridge, Custom};
use snakepit_core::{
    CallOptions, Error, ExitReason, HostCall, Pool, PoolBuilder, RemoteError, StreamItem, WireCodec,
};
use snakepit_tests::{alive, eventually};

/// A generous bound for anything that must not hang.
const HANG: Duration = Duration::from_secs(120);

fn worker(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/workers")).join(name)
}

fn node_modules() -> String {
    // The MessagePack package the Node bridge's tests installed (`npm ci`).
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bridges/node/node_modules"
    )
    .to_owned()
}

fn roomy(builder: PoolBuilder) -> PoolBuilder {
    builder.configure(|c| {
        c.worker_init_timeout = Duration::from_secs(60);
        c.startup_timeout = Duration::from_secs(90);
    })
}

async fn start(builder: PoolBuilder) -> Pool {
    tokio::time::timeout(HANG, roomy(builder).start())
        .await
        .expect("start() hung")
        .unwrap_or_else(|e| panic!("start: {e}"))
}

async fn call(pool: &Pool, command: &str, args: Value) -> snakepit_core::Result<Value> {
    tokio::time::timeout(HANG, pool.execute(command, args))
        .await
        .unwrap_or_else(|_| panic!("{command} hung"))
}

async fn call_with(
    pool: &Pool,
    command: &str,
    args: Value,
    timeout: Duration,
) -> snakepit_core::Result<Value> {
    tokio::time::timeout(
        HANG,
        pool.execute_with(command, args, CallOptions::new().timeout(timeout)),
    )
    .await
    .unwrap_or_else(|_| panic!("{command} hung"))
}

/// The session store of docs/bridges.md, "Host functions and the session
/// store", in memory.
fn with_session_store(builder: PoolBuilder) -> PoolBuilder {
    type Store = Arc<Mutex<HashMap<(String, String), Value>>>;
    fn key(call: &HostCall) -> (String, String) {
        let session = call.session_id.clone().unwrap_or_default();
        (
            session,
            call.args["key"].as_str().unwrap_or_default().to_owned(),
        )
    }
    let store: Store = Arc::default();
    let (get, set, delete) = (store.clone(), store.clone(), store);
    builder
        .host_function("session.get", move |call| {
            let value = get
                .lock()
                .unwrap()
                .get(&key(&call))
                .cloned()
                .unwrap_or(Value::Null);
            async move { Ok::<_, RemoteError>(value) }
        })
        .host_function("session.set", move |call| {
            set.lock()
                .unwrap()
                .insert(key(&call), call.args["value"].clone());
            async move { Ok::<_, RemoteError>(Value::Null) }
        })
        .host_function("session.delete", move |call| {
            let existed = delete.lock().unwrap().remove(&key(&call)).is_some();
            async move { Ok::<_, RemoteError>(Value::Bool(existed)) }
        })
}

// ---------------------------------------------------------------------------
// Workers written for the original

fn original(lang: &str) -> Custom {
    match lang {
        "python" => Custom::new(snakepit_tests::python())
            .arg("-u")
            .arg(worker("redteam_bridges_original.py"))
            .args(["--mode", "pool-worker"]),
        "node" => Custom::new("node")
            .arg(worker("redteam_bridges_original.js"))
            .args(["--mode", "pool-worker"]),
        _ => unreachable!(),
    }
}

/// upstream-wire-protocol.md: "A bridge written for that project should
/// work against ours unchanged". A worker written from the original's docs
/// (no hello, sorted keys, a timestamp in each reply, errors as strings) in
/// Python and in Node.js: it is served, a failure is `Error::Remote` with the
/// string as message, it gets one call at a time and nothing written ahead
/// ("A worker that sends no hello is treated as an original-protocol
/// worker"), never a frame with a `type` (no `cancel`), and a call that
/// outlives its deadline and the grace period costs the worker its life, a
/// late reply within the grace period does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_style_workers_in_python_and_node_are_served_unchanged() {
    for lang in ["python", "node"] {
        let pool = start(Pool::builder(original(lang)).size(1).configure(|c| {
            c.health_check_interval = Duration::from_millis(300);
        }))
        .await;
        let pid = pool.worker_pids()[0];

        let r = call(
            &pool,
            "echo",
            json!({"message": "héllo", "n": [1, 2.5, null]}),
        )
        .await
        .unwrap_or_else(|e| panic!("{lang}: {e}"));
        assert_eq!(
            r["echoed"],
            json!({"message": "héllo", "n": [1, 2.5, null]}),
            "{lang}"
        );

        let err = call(&pool, "fail", json!({"why": "test"}))
            .await
            .unwrap_err();
        let remote = err.remote().unwrap_or_else(|| panic!("{lang}: {err}"));
        assert_eq!(
            (remote.kind.as_deref(), remote.message.as_str()),
            (None, "failed on purpose: test"),
            "{lang}"
        );
        let err = call(&pool, "nope", json!({})).await.unwrap_err();
        assert_eq!(
            err.remote().map(|r| r.message.as_str()),
            Some("Unknown command: nope"),
            "{lang}: {err}"
        );

        // One call at a time, nothing written ahead while one runs.
        let calls: Vec<_> = (0..6)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { call(&pool, "sleep", json!({"ms": 150})).await })
            })
            .collect();
        for c in calls {
            let r = c.await.unwrap().unwrap_or_else(|e| panic!("{lang}: {e}"));
            assert_eq!(r["ahead"], false, "{lang}: a request written ahead: {r}");
        }

        // A streaming caller of a worker without streaming gets the result.
        let mut stream = pool
            .execute_stream("echo", json!({"s": 1}), CallOptions::new())
            .await
            .unwrap();
        let mut items = Vec::new();
        while let Some(item) = tokio::time::timeout(HANG, stream.next()).await.unwrap() {
            items.push(item.unwrap_or_else(|e| panic!("{lang}: {e}")));
        }
        assert!(
            matches!(items.as_slice(), [StreamItem::Done(r)] if r["echoed"] == json!({"s": 1})),
            "{lang}: {items:?}"
        );

        // Sessions: the extra field is ignored by the worker.
        let r = pool
            .execute_in_session("s-1", "echo", json!({"x": 1}))
            .await
            .unwrap_or_else(|e| panic!("{lang}: {e}"));
        assert_eq!(r["echoed"], json!({"x": 1}), "{lang}");

        // A late reply within the grace period: the worker stays.
        let err = call_with(
            &pool,
            "sleep",
            json!({"ms": 800}),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(err.is_timeout(), "{lang}: {err}");
        let seen = call(&pool, "seen", json!({})).await.unwrap();
        assert_eq!(seen["pid"], json!(pid), "{lang}: replaced for a late reply");
        assert_eq!(
            seen["types"],
            json!([]),
            "{lang}: a frame with a type reached an original worker"
        );
        for key in ["args", "command", "id", "timestamp"] {
            assert!(
                seen["keys"].as_array().unwrap().contains(&json!(key)),
                "{lang}: requests lack {key}: {seen}"
            );
        }

        // Past the grace period: replaced, and the pool serves on.
        let err = call_with(
            &pool,
            "sleep",
            json!({"ms": 30_000}),
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
        assert!(err.is_timeout(), "{lang}: {err}");
        assert!(
            eventually(30, || pool.worker_pids().first().is_some_and(|p| *p != pid)).await,
            "{lang}: the stuck worker was not replaced"
        );
        let r = call(&pool, "echo", json!({"after": true})).await.unwrap();
        assert_eq!(r["echoed"], json!({"after": true}), "{lang}");
        assert!(eventually(20, || !alive(pid)).await, "{lang}: left running");

        let last = pool.worker_pids()[0];
        pool.shutdown().await.unwrap();
        assert!(
            eventually(20, || !alive(last)).await,
            "{lang}: left running"
        );
    }
}

/// The "External Bridge Script (Ruby Example)" of the original README, as
/// printed (plus the `require 'time'` it lacks): served by our pool; its
/// `generate_report`, one second long, past a 200 ms deadline replies within
/// the grace period, so the worker stays (and the pool sends no SIGINT,
/// which this script traps with `exit(0)`). Without that line the script
/// crashes on its first reply, and `start()` says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_original_readmes_ruby_bridge_is_served_and_its_missing_require_is_a_start_error() {
    // The copy among the examples (with the line the README lacks).
    let script = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/ruby/bridge.rb"
    ));
    let ruby = || {
        Custom::new("ruby")
            .arg(&script)
            .args(["--mode", "pool-worker"])
    };
    let pool = start(Pool::builder(ruby()).size(1)).await;
    let pid = pool.worker_pids()[0];
    let r = call(&pool, "process_data", json!({"data": "abc"}))
        .await
        .unwrap();
    assert_eq!(r, json!({"processed": "ABC", "length": 3}));
    let err = call(&pool, "frobnicate", json!({})).await.unwrap_err();
    let remote = err.remote().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(
        (remote.kind.as_deref(), remote.message.as_str()),
        (None, "Unknown command: frobnicate")
    );
    let err = call_with(
        &pool,
        "generate_report",
        json!({"title": "T"}),
        Duration::from_millis(200),
    )
    .await
    .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let r = call(&pool, "generate_report", json!({"title": "T"}))
        .await
        .unwrap();
    assert_eq!(r["report"]["title"], "T");
    assert_eq!(pool.worker_pids(), vec![pid], "replaced");
    assert_eq!(pool.stats().restarts, 0);
    pool.shutdown().await.unwrap();
    assert!(eventually(20, || !alive(pid)).await, "left running");

    // As printed: no `require 'time'`.
    let dir = std::env::temp_dir().join(format!("snakepit-redteam-bridges-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let verbatim = dir.join("bridge.rb");
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.contains("\nrequire 'time'\n"), "the example changed");
    std::fs::write(&verbatim, text.replace("\nrequire 'time'\n", "\n")).unwrap();
    let builder = roomy(Pool::builder(
        Custom::new("ruby")
            .arg(&verbatim)
            .args(["--mode", "pool-worker"]),
    ))
    .size(1);
    let err = tokio::time::timeout(HANG, builder.start())
        .await
        .expect("start() hung")
        .expect_err("the verbatim script cannot answer");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(matches!(err, Error::StartFailed(_)), "{err}");
    assert!(err.to_string().contains("iso8601"), "{err}");
}

// ---------------------------------------------------------------------------
// Node.js bridge

fn node() -> Bridge {
    Bridge::node(worker("redteam_bridges_node.js")).env("NODE_PATH", node_modules())
}

/// bridges/node/README.md, "Concurrency and cancellation": on `cancel` the
/// bridge "replies `Cancelled` **at once**, even if the handler ignores the
/// signal; whatever the handler returns later is dropped". Through a pool:
/// a handler that ignores its signal for 4 s past a 300 ms deadline costs
/// the worker nothing (the grace period is 2 s), and its late result does
/// not count as a protocol violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_handler_ignoring_its_signal_is_answered_cancelled_at_once_and_the_worker_stays() {
    let pool = start(Pool::builder(node()).size(1)).await;
    let pid = pool.worker_pids()[0];
    let err = call_with(
        &pool,
        "stubborn",
        json!({"ms": 4000}),
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // The handler ends after the grace period; the worker is still there.
    let mut ended = false;
    for _ in 0..60 {
        let s = call(&pool, "state", json!({})).await.unwrap();
        assert_eq!(s["pid"], json!(pid), "replaced: {s}");
        if s["stubbornEnded"] == 1 {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(ended, "the stubborn handler never ended");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = call(&pool, "pid", json!({})).await.unwrap();
    assert_eq!(r["pid"], json!(pid));
    let s = pool.stats();
    assert_eq!((s.restarts, s.crashes), (0, 0), "{s:?}");
    pool.shutdown().await.unwrap();
}

/// bridges/node/README.md, "Errors": "An exception nobody catches (thrown
/// in a timer's callback, say) ends the worker ... logs `uncaught exception;
/// the worker exits` with the stack on stderr, and exits with code 1; the
/// pool fails its calls in flight and replaces it."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_uncaught_exception_fails_the_calls_in_flight_with_exit_1_and_is_replaced() {
    let pool = start(
        Pool::builder(node())
            .size(1)
            .configure(|c| c.health_check_interval = Duration::ZERO),
    )
    .await;
    let pid = pool.worker_pids()[0];
    let slow = {
        let pool = pool.clone();
        tokio::spawn(async move {
            call_with(
                &pool,
                "slow",
                json!({"ms": 60_000}),
                Duration::from_secs(90),
            )
            .await
        })
    };
    assert!(
        eventually(20, || pool.stats().in_flight == 1).await,
        "the slow call never started"
    );
    let r = call(&pool, "boom", json!({"ms": 300})).await.unwrap();
    assert_eq!(r["armed"], true);
    let err = slow.await.unwrap().unwrap_err();
    let Error::WorkerCrashed(crash) = &err else {
        panic!("the call in flight: {err}")
    };
    assert_eq!(crash.pid, pid);
    assert_eq!(crash.exit, ExitReason::Code(1), "{crash}");
    assert!(
        crash
            .stderr_tail
            .contains("uncaught exception; the worker exits")
            && crash.stderr_tail.contains("thrown in a timer on purpose"),
        "{}",
        crash.stderr_tail
    );
    assert!(
        eventually(30, || pool.worker_pids().first().is_some_and(|p| *p != pid)).await,
        "not replaced"
    );
    let r = call(&pool, "pid", json!({})).await.unwrap();
    assert_ne!(r["pid"], json!(pid));
    pool.shutdown().await.unwrap();
}

/// bridges/node/README.md, options: "`maxConcurrency` | 16 | calls run at
/// once; `SNAKEPIT_MAX_CONCURRENCY` overrides it. Declared in `hello`, so
/// the pool never sends more". Through a pool, with the option at 2, then
/// with the variable at 3 set on the adapter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_workers_max_concurrency_is_what_the_pool_runs_on_it_and_the_variable_wins() {
    for (env, want) in [(None, 2u64), (Some("3"), 3)] {
        let mut adapter = node().env("RT_MAX_CONCURRENCY", "2");
        if let Some(n) = env {
            adapter = adapter.env("SNAKEPIT_MAX_CONCURRENCY", n);
        }
        let pool = start(Pool::builder(adapter).size(1)).await;
        assert_eq!(pool.stats().capacity as u64, want, "{env:?}");
        let calls: Vec<_> = (0..10)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { call(&pool, "counted", json!({"ms": 300})).await })
            })
            .collect();
        for c in calls {
            c.await.unwrap().unwrap();
        }
        let s = call(&pool, "state", json!({})).await.unwrap();
        assert_eq!(s["most"], json!(want), "{env:?}: {s}");
        pool.shutdown().await.unwrap();
    }
}

/// bridges/node/README.md, the example's `count`: "stops early when the
/// caller gives up" (its sleep takes `ctx.signal`), and docs/bridges.md:
/// "Dropping the stream cancels the call".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_node_stream_fires_the_handlers_signal() {
    let pool = start(Pool::builder(node()).size(1)).await;
    let mut stream = pool
        .execute_stream(
            "count",
            json!({"to": 100_000, "ms": 20}),
            CallOptions::new().timeout(Duration::from_secs(100)),
        )
        .await
        .unwrap();
    let first = tokio::time::timeout(HANG, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&first, StreamItem::Chunk(c) if c["i"] == 1),
        "{first:?}"
    );
    drop(stream);
    let mut aborted = false;
    for _ in 0..80 {
        let s = call(&pool, "state", json!({})).await.unwrap();
        if s["countAborted"] == 1 {
            aborted = true;
            assert!(s["countSteps"].as_u64().unwrap() < 100_000, "{s}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(aborted, "the handler's signal never fired");
    assert_eq!(pool.stats().restarts, 0);
    pool.shutdown().await.unwrap();
}

/// bridges/node/README.md, "Codecs": with MessagePack the bridge speaks the
/// same maps as with JSON. Data whose keys include `__proto__` (a key like
/// any other, e.g. in a JSON document being processed) is served under
/// JSON; under MessagePack it must be served the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_worker_serves_a_proto_key_under_msgpack_as_under_json() {
    let args = json!({"doc": {"__proto__": {"polluted": 1}, "a": 1}});
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let pool = start(Pool::builder(node().codec(codec)).size(1)).await;
        let pid = pool.worker_pids()[0];
        let r = call_with(&pool, "echo", args.clone(), Duration::from_secs(20)).await;
        let r = r.unwrap_or_else(|e| panic!("{codec}: {e}"));
        assert_eq!(r, args, "{codec}");
        assert_eq!(pool.worker_pids(), vec![pid], "{codec}: replaced");
        pool.shutdown().await.unwrap();
    }
}

/// docs/bridges.md, "Host functions and the session store": `session.delete`
/// -> whether the key existed; bridges/ruby/README.md: "`delete` returns
/// whether the key existed". Node and Ruby, through a pool with the
/// documented in-memory store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_helpers_round_trip_and_delete_says_whether_the_key_existed() {
    let value = json!({"nested": [1, "two", null], "s": "é"});
    for (name, adapter) in [
        ("node", node()),
        ("ruby", Bridge::ruby(worker("redteam_bridges_ruby.rb"))),
    ] {
        let pool = start(with_session_store(Pool::builder(adapter).size(1))).await;
        let r = pool
            .execute_in_session("s-1", "session_ops", json!({"value": value}))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            r,
            json!({"before": null, "after": value, "deleted": true, "deleted_again": false}),
            "{name}"
        );
        pool.shutdown().await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// Ruby bridge

fn ruby() -> Bridge {
    Bridge::ruby(worker("redteam_bridges_ruby.rb"))
}

/// bridges/ruby/README.md, "Concurrency and cancellation": "When a call's
/// deadline passes the pool sends the worker SIGINT. If a handler is
/// running, `SnakepitBridge::Cancelled` is raised in it (wherever it is:
/// `sleep`, ...) ... use `ensure` for clean-up." Through a pool: the
/// handler's `ensure` runs, the worker is not replaced, and serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ruby_call_past_its_deadline_is_interrupted_its_ensure_runs_and_the_worker_stays() {
    let pool = start(Pool::builder(ruby()).size(1)).await;
    let pid = pool.worker_pids()[0];
    let marker = std::env::temp_dir().join(format!(
        "snakepit-redteam-bridges-ensure-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&marker);
    let err = call_with(
        &pool,
        "sleepy",
        json!({"ms": 60_000, "marker": marker.display().to_string()}),
        Duration::from_millis(500),
    )
    .await
    .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(
        eventually(20, || marker.exists()).await,
        "the handler's ensure never ran"
    );
    let text = std::fs::read_to_string(&marker).unwrap();
    let _ = std::fs::remove_file(&marker);
    assert_eq!(text, format!("ensure ran in {pid}"));
    let r = call(&pool, "pid", json!({})).await.unwrap();
    assert_eq!(r["pid"], json!(pid));
    // Well past the grace period: still the same worker.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pool.worker_pids(), vec![pid]);
    assert_eq!(pool.stats().restarts, 0);
    pool.shutdown().await.unwrap();
}

/// bridges/ruby/README.md: "`ctx.chunk(data)` | send a partial result (a
/// `chunk` frame); dropped by the pool unless `stream?`". Thousands of
/// chunks for a caller that does not stream neither hold up the worker
/// (the pool's 256-chunk wait is for readers that stream) nor reach the
/// caller; a streaming caller gets them all, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_chunks_for_a_caller_that_does_not_stream_are_dropped_without_holding_up_the_worker() {
    let pool = start(Pool::builder(ruby()).size(1)).await;
    let r = call_with(&pool, "chunks", json!({"n": 3000}), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(r, json!({"sent": 3000, "stream": false}));
    let mut stream = pool
        .execute_stream("chunks", json!({"n": 600}), CallOptions::new())
        .await
        .unwrap();
    let mut next = 0;
    let mut done = None;
    while let Some(item) = tokio::time::timeout(HANG, stream.next()).await.unwrap() {
        match item.unwrap() {
            StreamItem::Chunk(c) => {
                assert_eq!(c["i"], next, "out of order");
                next += 1;
            }
            StreamItem::Done(r) => done = Some(r),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(next, 600);
    assert_eq!(done, Some(json!({"sent": 600, "stream": true})));
    assert_eq!(pool.stats().restarts, 0);
    pool.shutdown().await.unwrap();
}

/// A byte string, read from MessagePack `bin`.
#[derive(Debug, PartialEq)]
struct Bytes(Vec<u8>);

impl<'de> serde::Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Bytes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[derive(serde::Deserialize, Debug)]
struct BinResult {
    bytes: Bytes,
}

/// bridges/ruby/README.md, "Codecs": "binary (`ASCII-8BIT`, e.g. `"...".b`)
/// strings as `bin`"; docs/bridges.md: a result holding `bin` fails
/// `execute` with `Error::Codec` (the worker stays) and `Pool::call` into a
/// type that accepts bytes reads it. Also: "type: <exception class name>"
/// for an exception class inside a module.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_binary_results_travel_as_bin_and_nested_error_classes_keep_their_full_name() {
    let pool = start(Pool::builder(ruby().codec(WireCodec::MsgPack)).size(1)).await;
    let pid = pool.worker_pids()[0];
    let r: BinResult = pool
        .call("bin", &json!({"n": 2}), CallOptions::new())
        .await
        .unwrap();
    assert_eq!(r.bytes, Bytes(b"\x00\xffok\x00\xffok".to_vec()));
    let err = call(&pool, "bin", json!({})).await.unwrap_err();
    assert!(matches!(err, Error::Codec(_)), "{err}");
    let err = call(&pool, "oops", json!({})).await.unwrap_err();
    let remote = err.remote().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(
        (remote.kind.as_deref(), remote.message.as_str()),
        (Some("MyApp::Oops"), "nested class")
    );
    assert!(remote
        .traceback
        .as_deref()
        .unwrap_or("")
        .contains("redteam_bridges_ruby.rb"));
    assert_eq!(pool.worker_pids(), vec![pid]);
    pool.shutdown().await.unwrap();
}

/// Bytes that serialize as MessagePack `bin`.
struct BinArg<'a>(&'a [u8]);

impl serde::Serialize for BinArg<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

#[derive(serde::Serialize)]
struct BinArgs<'a> {
    b: BinArg<'a>,
}

#[derive(serde::Deserialize, Debug)]
struct BinEcho {
    class: String,
    size: u64,
    back: Bytes,
    #[serde(default)]
    encoding: Option<String>,
}

/// bridges/node/README.md, "Codecs": "With MessagePack, binary data ...
/// travels as `bin` and comes back as `Uint8Array`"; bridges/ruby/README.md:
/// "received `bin` values arrive as binary strings". Bytes sent with
/// `Pool::call` reach the handler as such and come back unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_arguments_reach_node_and_ruby_handlers_as_their_binary_types() {
    let bytes: Vec<u8> = (0..=255u8).chain([0, 0xff, 0xc3]).collect();
    for (name, adapter) in [("node", node()), ("ruby", ruby())] {
        let pool = start(Pool::builder(adapter.codec(WireCodec::MsgPack)).size(1)).await;
        let r: BinEcho = pool
            .call("bin_in", &BinArgs { b: BinArg(&bytes) }, CallOptions::new())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.size, bytes.len() as u64, "{name}: {r:?}");
        assert_eq!(r.back, Bytes(bytes.clone()), "{name}");
        match name {
            "node" => assert_eq!(r.class, "Uint8Array", "{r:?}"),
            _ => assert_eq!(
                (r.class.as_str(), r.encoding.as_deref()),
                ("String", Some("ASCII-8BIT")),
                "{r:?}"
            ),
        }
        pool.shutdown().await.unwrap();
    }
}

/// A call cancelled while its handler waits for a host call (Node: a
/// `cancel` frame, "fails pending `callHost` waits with a `CancelledError`";
/// Ruby: SIGINT, "wherever it is: ... a wait in `call_host`"): the host
/// function's answer, which arrives after the cancellation, is not taken for
/// the next call's, the worker is not replaced, and the next call's host call
/// gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_reply_arriving_after_its_call_was_cancelled_is_not_taken_for_the_next_calls() {
    for (name, adapter) in [("node", node()), ("ruby", ruby())] {
        let pool = start(Pool::builder(adapter).size(1).host_function(
            "slow",
            |call: HostCall| async move {
                let ms = call.args["ms"].as_u64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, RemoteError>(call.args["tag"].clone())
            },
        ))
        .await;
        let pid = pool.worker_pids()[0];
        let err = call_with(
            &pool,
            "ask",
            json!({"ms": 1200, "tag": "stale"}),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(err.is_timeout(), "{name}: {err}");
        for i in 0..4 {
            let r = call(&pool, "ask", json!({"ms": 300 * (i % 2), "tag": i}))
                .await
                .unwrap_or_else(|e| panic!("{name}: call {i}: {e}"));
            assert_eq!(r, json!({"answer": i, "pid": pid}), "{name}: call {i}");
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let r = call(&pool, "ask", json!({"ms": 0, "tag": "last"}))
            .await
            .unwrap();
        assert_eq!(r, json!({"answer": "last", "pid": pid}), "{name}");
        let s = pool.stats();
        assert_eq!((s.restarts, s.crashes), (0, 0), "{name}: {s:?}");
        pool.shutdown().await.unwrap();
    }
}

/// bridges/node/README.md, Codecs: "A `Date` becomes an ISO string under
/// JSON ..., but a MessagePack timestamp extension under MessagePack, which
/// the pool cannot read (the caller gets `Error::Codec`) ... A `Map` or
/// `Set` becomes `{}` in both codecs." The worker stays either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_dates_maps_and_sets_go_out_as_the_readme_says() {
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let pool = start(Pool::builder(node().codec(codec)).size(1)).await;
        let pid = pool.worker_pids()[0];
        let date = call_with(&pool, "date", json!({}), Duration::from_secs(20)).await;
        match codec {
            WireCodec::Json => {
                assert_eq!(date.unwrap(), json!({"when": "1970-01-01T00:00:00.000Z"}))
            }
            _ => assert!(matches!(date, Err(Error::Codec(_))), "{codec}: {date:?}"),
        }
        let r = call_with(&pool, "collections", json!({}), Duration::from_secs(20)).await;
        assert_eq!(r.unwrap(), json!({"map": {}, "set": {}}), "{codec}");
        assert_eq!(pool.worker_pids(), vec![pid], "{codec}: replaced");
        pool.shutdown().await.unwrap();
    }
}

/// bridges/ruby/README.md, Codecs: "a Hash with Integer keys, which JSON
/// would turn into strings, reaches the caller as `Error::Codec`" under
/// MessagePack; the worker stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_integer_hash_keys_are_strings_in_json_and_a_codec_error_in_msgpack() {
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let pool = start(Pool::builder(ruby().codec(codec)).size(1)).await;
        let pid = pool.worker_pids()[0];
        let r = call_with(&pool, "int_keys", json!({}), Duration::from_secs(20)).await;
        match codec {
            WireCodec::Json => assert_eq!(r.unwrap(), json!({"1": "one"})),
            _ => assert!(matches!(r, Err(Error::Codec(_))), "{codec}: {r:?}"),
        }
        assert_eq!(pool.worker_pids(), vec![pid], "{codec}: replaced");
        pool.shutdown().await.unwrap();
    }
}
