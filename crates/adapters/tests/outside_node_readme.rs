//! An outside tester's audit of bridges/node/README.md (the Node.js
//! worker-side bridge) and the Node.js parts of docs/bridges.md: promises no
//! other test showed, checked through real pools of `Bridge::node` workers,
//! or, where a promise is about the worker alone, by running the worker
//! script directly with `node` and speaking frames to it.
//!
//! The workers are `tests/workers/outside_node_readme*.js`:
//! `outside_node_readme_example.js` and `outside_node_readme_generic.js` are
//! the README's own examples, copied verbatim (a test checks that they
//! still are), `outside_node_readme.js` serves the other tests (its options
//! come from `ONR_*` variables) and `outside_node_readme_options.js` is run
//! directly for the options and `worker.serve`.

#[allow(dead_code)] // this file uses only some of the shared helpers
mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::readme::{
    call, call_with, start, stream_of, the_same_worker, with_session_store, HANG,
};
use common::{node_modules, worker};
use futures::StreamExt;
use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{CallOptions, Error, HostCall, Pool, RemoteError, StreamItem, WireCodec};
use snakepit_tests::workspace_root;

const CODECS: [WireCodec; 2] = [WireCodec::Json, WireCodec::MsgPack];

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";

fn tp() -> String {
    format!("00-{TRACE}-{CALLER}-01")
}

/// The README's text.
fn readme() -> String {
    std::fs::read_to_string(workspace_root().join("bridges/node/README.md")).unwrap()
}

/// The first ```js block after `heading` in the README.
fn readme_block(heading: &str) -> String {
    let text = readme();
    let at = text
        .find(heading)
        .unwrap_or_else(|| panic!("README lacks {heading}"));
    let rest = &text[at..];
    let start = rest.find("```js\n").expect("a js block") + "```js\n".len();
    let end = rest[start..].find("```").expect("the block's end");
    rest[start..start + end].to_owned()
}

/// `outside_node_readme.js` under `codec`, with the MessagePack and
/// OpenTelemetry packages of the bridge's own tests on `NODE_PATH`.
fn node(codec: WireCodec) -> Bridge {
    Bridge::node(worker("outside_node_readme.js"))
        .env("NODE_PATH", node_modules())
        .codec(codec)
}

async fn start_one(bridge: Bridge) -> Pool {
    start(Pool::builder(bridge).size(1)).await
}

fn remote(r: Result<Value, Error>, what: &str) -> RemoteError {
    match r {
        Err(Error::Remote { error, .. }) => error,
        other => panic!("{what}: not a failed reply but {other:?}"),
    }
}

/// Checks that the only worker of `pool` is still `pid` and nothing crashed
/// or was restarted, then shuts `pool` down.
async fn kept_then_shut_down(pool: &Pool, pid: u32, what: &str) {
    let r = call(pool, "pid", json!({}))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(r["pid"], json!(pid), "{what}: replaced");
    let s = pool.stats();
    assert_eq!((s.crashes, s.restarts), (0, 0), "{what}: {s:?}");
    pool.shutdown().await.unwrap();
}

/// Every item of a streaming call of `command` (30 s timeout), none of
/// them an error.
async fn stream_items(pool: &Pool, command: &str, args: Value, what: &str) -> Vec<StreamItem> {
    let mut stream = stream_of(pool, command, args).await;
    let mut items = Vec::new();
    while let Some(item) = tokio::time::timeout(HANG, stream.next())
        .await
        .expect("stream hung")
    {
        items.push(item.unwrap_or_else(|e| panic!("{what}: {e}")));
    }
    items
}

/// The worker's `state` once `ready` holds for it, asked every 50 ms,
/// `tries` times at most (then the last one).
async fn state_when(pool: &Pool, tries: usize, ready: impl Fn(&Value) -> bool) -> Value {
    let mut state = Value::Null;
    for _ in 0..tries {
        state = call(pool, "state", json!({})).await.unwrap();
        if ready(&state) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    state
}

// ---------------------------------------------------------------------------
// Running a worker script directly with node

/// A directory holding `snakepit-bridge` (a link to bridges/node), for
/// `NODE_PATH`: "put this directory on `NODE_PATH` under the name
/// `snakepit-bridge`".
fn bridge_parent(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("snakepit-onr-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(
        workspace_root().join("bridges/node"),
        dir.join("snakepit-bridge"),
    )
    .unwrap();
    dir
}

/// What a worker run directly wrote and how it ended.
struct Run {
    stdout: Vec<u8>,
    stderr: String,
    status: ExitStatus,
}

impl Run {
    /// The JSON frames on stdout.
    fn frames(&self) -> Vec<Value> {
        let (mut out, mut b) = (Vec::new(), &self.stdout[..]);
        while b.len() >= 4 {
            let n = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
            assert!(
                b.len() >= 4 + n,
                "a cut frame: {}",
                String::from_utf8_lossy(&self.stdout)
            );
            out.push(serde_json::from_slice(&b[4..4 + n]).expect("a JSON frame"));
            b = &b[4 + n..];
        }
        assert!(b.is_empty(), "bytes after the frames: {b:?}");
        out
    }

    /// The final reply for request `id`.
    fn reply(&self, id: u64) -> Value {
        let frames = self.frames();
        let replies: Vec<_> = frames
            .iter()
            .filter(|f| f["id"] == id && f.get("type").is_none())
            .collect();
        assert_eq!(replies.len(), 1, "replies to {id}: {frames:?}");
        replies[0].clone()
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn json_frame(v: &Value) -> Vec<u8> {
    frame(&serde_json::to_vec(v).unwrap())
}

/// Runs `script` with node (not under a pool: no `SNAKEPIT_*` variable but
/// those in `env`), writes `input` to its stdin, closes it and waits for
/// the exit (60 s at most).
fn run_node(script: &Path, tag: &str, env: &[(&str, &str)], input: &[u8]) -> Run {
    run_node_with(script, tag, env, input, |_| {})
}

/// [`run_node`], which must exit with code 0.
fn run_node_ok(script: &Path, tag: &str, env: &[(&str, &str)], input: &[u8]) -> Run {
    let run = run_node(script, tag, env, input);
    assert_eq!(
        run.status.code(),
        Some(0),
        "{tag}: {:?}: {}",
        run.status,
        run.stderr
    );
    run
}

/// The same, running `during(pid)` after `input` was written and before
/// stdin is closed.
fn run_node_with(
    script: &Path,
    tag: &str,
    env: &[(&str, &str)],
    input: &[u8],
    during: impl FnOnce(u32),
) -> Run {
    let parent = bridge_parent(tag);
    #[allow(clippy::disallowed_methods)] // the worker alone, outside any pool, on purpose
    let mut cmd = Command::new("node");
    cmd.arg(script)
        .env(
            "NODE_PATH",
            format!("{}:{}", parent.display(), node_modules()),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("SNAKEPIT_") || k.starts_with("ONR_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("node runs");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).unwrap();
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(input);
    let _ = stdin.flush();
    during(child.id());
    drop(stdin);
    let deadline = Instant::now() + HANG;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{tag}: node did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let run = Run {
        stdout: reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
        status,
    };
    let _ = std::fs::remove_dir_all(parent);
    run
}

// ---------------------------------------------------------------------------
// The README's examples, as written

/// bridges/node/README.md, "A complete worker": the example, run as
/// written under a real pool (`Bridge::node`), in both codecs: `greet`,
/// `shout` (added with `worker.command`), `fail` ("A thrown error becomes a
/// failed reply {type, message, traceback}"), `visits` ("State kept by the
/// pool for the caller's session", with docs/bridges.md's in-memory store),
/// `count` ("Streams partial results to callers that asked for a stream,
/// and stops early when the caller gives up": its chunks, and a call given
/// up costs the worker nothing). "The pool runs it as `node my_worker.js
/// --mode pool-worker` ... so `require('snakepit-bridge')` works without
/// installing anything."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_complete_worker_runs_as_written_through_a_pool() {
    let copy = std::fs::read_to_string(worker("outside_node_readme_example.js")).unwrap();
    assert_eq!(
        copy,
        readme_block("## A complete worker"),
        "the copy of the example drifted from the README"
    );
    for codec in CODECS {
        let bridge = Bridge::node(worker("outside_node_readme_example.js"))
            .env("NODE_PATH", node_modules())
            .codec(codec);
        let pool = start(with_session_store(Pool::builder(bridge).size(1))).await;
        let pid = pool.worker_pids()[0];

        let r = call(&pool, "greet", json!({"name": "Ada"})).await.unwrap();
        assert_eq!(r, json!({"greeting": "Hello, Ada!"}), "{codec}");
        let r = call(&pool, "greet", json!({})).await.unwrap();
        assert_eq!(r, json!({"greeting": "Hello, world!"}), "{codec}");
        let r = call(&pool, "shout", json!({"text": "quiet"}))
            .await
            .unwrap();
        assert_eq!(r, json!("QUIET"), "{codec}");

        let e = remote(call(&pool, "fail", json!({"item": "x"})).await, "fail");
        assert_eq!(
            (e.kind.as_deref(), e.message.as_str()),
            (Some("RangeError"), "no such item: x"),
            "{codec}"
        );
        let tb = e.traceback.unwrap_or_default();
        assert!(
            tb.starts_with("RangeError: no such item: x")
                && tb.contains("outside_node_readme_example.js"),
            "{codec}: traceback {tb:?}"
        );

        for (session, want) in [("s1", 1), ("s1", 2), ("s2", 1), ("s1", 3)] {
            let r = pool
                .execute_in_session(session, "visits", json!({}))
                .await
                .unwrap();
            assert_eq!(r, json!({"visits": want}), "{codec}: {session}");
        }

        let items = stream_items(&pool, "count", json!({"to": 3}), &codec.to_string()).await;
        let want = [
            "chunk {\"i\":1}",
            "chunk {\"i\":2}",
            "chunk {\"i\":3}",
            "done {\"counted\":3}",
        ];
        let got: Vec<String> = items
            .iter()
            .map(|i| match i {
                StreamItem::Chunk(c) => format!("chunk {c}"),
                StreamItem::Done(d) => format!("done {d}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(got, want, "{codec}");
        let r = call(&pool, "count", json!({"to": 2})).await.unwrap();
        assert_eq!(r, json!({"counted": 2}), "{codec}: without a stream");

        // Given up: the call's sleep takes the signal, so the handler ends.
        let err = call_with(
            &pool,
            "count",
            json!({"to": 100_000}),
            CallOptions::new().timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
        assert!(err.is_timeout(), "{codec}: {err}");
        assert_eq!(
            pool.worker_pids(),
            vec![pid],
            "{codec}: replaced after the given-up count"
        );
        let r = call(&pool, "greet", json!({"name": "again"}))
            .await
            .unwrap();
        assert_eq!(r["greeting"], "Hello, again!", "{codec}");
        the_same_worker(&pool, pid, &codec.to_string());
        pool.shutdown().await.unwrap();
    }
}

/// bridges/node/README.md, "The generic worker": "Reuse them in your own
/// worker with" the two lines given (copied verbatim); the generic commands
/// `ping`, `echo`, `compute` (`add`, `subtract`, `multiply`, `divide`,
/// `power`, `sqrt`), `info` and `random` (`uniform`, `integer`, `normal`)
/// then serve beside the worker's own, and "Its `ping` reports
/// `bridge_type: "generic_javascript"`, `node_version`, `platform` and
/// `pid`". docs/bridges.md: "`commands: { ...genericCommands(), ... }` adds
/// the generic commands".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_commands_spread_into_your_own_worker_serve_beside_your_command() {
    let copy = std::fs::read_to_string(worker("outside_node_readme_generic.js")).unwrap();
    assert_eq!(
        copy,
        readme_block("## The generic worker"),
        "the copy drifted from the README"
    );
    let pool = start_one(Bridge::node(worker("outside_node_readme_generic.js"))).await;
    let pid = pool.worker_pids()[0];
    #[allow(clippy::disallowed_methods)] // a probe of node, not a worker
    let node_version = String::from_utf8(
        Command::new("node")
            .arg("--version")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();

    let r = call(&pool, "ping", json!({})).await.unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["bridge_type"], "generic_javascript", "{r}");
    assert_eq!(r["node_version"], node_version.trim(), "{r}");
    assert_eq!(r["platform"], "linux", "{r}");
    assert_eq!(r["pid"], json!(pid), "{r}");

    let r = call(&pool, "myCommand", json!({"x": [1, "two", null]}))
        .await
        .unwrap();
    assert_eq!(r, json!({"x": [1, "two", null]}));
    let r = call(&pool, "echo", json!({"a": 1})).await.unwrap();
    assert_eq!(r["echoed"], json!({"a": 1}), "{r}");
    for (op, a, b, want) in [
        ("add", 2.0, 3.0, 5.0),
        ("subtract", 2.0, 3.0, -1.0),
        ("multiply", 2.0, 3.0, 6.0),
        ("divide", 3.0, 2.0, 1.5),
        ("power", 2.0, 10.0, 1024.0),
        ("sqrt", 16.0, 0.0, 4.0),
    ] {
        let r = call(&pool, "compute", json!({"operation": op, "a": a, "b": b}))
            .await
            .unwrap();
        assert_eq!(r["result"].as_f64(), Some(want), "{op}: {r}");
    }
    let e = remote(
        call(
            &pool,
            "compute",
            json!({"operation": "divide", "a": 1, "b": 0}),
        )
        .await,
        "divide by 0",
    );
    assert_eq!(e.kind.as_deref(), Some("Error"), "{e:?}");
    let random = |args: Value| {
        let pool = &pool;
        async move { call(pool, "random", args).await.unwrap() }
    };
    let r = random(json!({"type": "integer", "min": 5, "max": 5})).await;
    assert_eq!(r["value"], json!(5), "{r}");
    let r = random(json!({"type": "uniform", "min": 2, "max": 3})).await;
    let v = r["value"].as_f64().unwrap();
    assert!((2.0..=3.0).contains(&v), "{r}");
    let r = random(json!({"type": "normal"})).await;
    assert!(r["value"].is_number(), "{r}");
    let r = call(&pool, "info", json!({})).await.unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    let names = r["bridge_info"]["supported_commands"].as_array().unwrap();
    for name in ["ping", "echo", "compute", "info", "random", "myCommand"] {
        assert!(names.contains(&json!(name)), "{name}: {r}");
    }
    let r = call(&pool, "ping", json!({})).await.unwrap();
    assert_eq!(r["pid"], json!(pid), "replaced: {r}");
    let s = pool.stats();
    assert_eq!((s.crashes, s.restarts), (0, 0), "{s:?}");
    pool.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// Errors

/// bridges/node/README.md, "Errors": "`type` is the error's `name`, or its
/// class name when a subclass of `Error` does not set one (`class
/// ModelError extends Error {}` gives `ModelError`), `traceback` is
/// `err.stack`. The worker serves on." ... "In an error's `type`,
/// `message` and `traceback`, half a surrogate pair becomes U+FFFD. A
/// thrown value that cannot be read (a `message` getter that throws, a
/// revoked proxy) gives `{type: 'Error', message: '<unreadable thrown
/// value>'}`." Thrown, and as a rejected promise, in both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_types_are_names_or_class_names_and_unreadable_text_is_made_safe() {
    let unreadable = "<unreadable thrown value>";
    let cases: [(&str, &str, &str); 6] = [
        ("model", "ModelError", "the model is missing"),
        ("typeSub", "BadInput", "bad input"),
        ("named", "Custom", "named"),
        ("surrogate", "Bad\u{fffd}", "half \u{fffd} here"),
        ("getter", "Error", unreadable),
        ("proxy", "Error", unreadable),
    ];
    for codec in CODECS {
        let pool = start_one(node(codec)).await;
        let pid = pool.worker_pids()[0];
        for command in ["errors", "rejects"] {
            for (kind, want_type, want_message) in cases {
                let what = format!("{codec} {command} {kind}");
                let e = remote(call(&pool, command, json!({"kind": kind})).await, &what);
                assert_eq!(
                    (e.kind.as_deref(), e.message.as_str()),
                    (Some(want_type), want_message),
                    "{what}: {e:?}"
                );
                if want_message != unreadable {
                    let tb = e
                        .traceback
                        .as_deref()
                        .unwrap_or_else(|| panic!("{what}: no traceback"));
                    assert!(
                        tb.contains(want_message) && tb.contains("outside_node_readme.js"),
                        "{what}: the traceback is not the stack: {tb:?}"
                    );
                }
            }
        }
        kept_then_shut_down(&pool, pid, &format!("{codec}: after the errors")).await;
    }
}

/// bridges/node/README.md, "Errors": "An `Error` whose `message` cannot be
/// read (a getter that throws) keeps its `type`, with the message
/// `<unreadable thrown value>`"; "Anything else thrown that is not an
/// `Error` gives the type `Error` and, as its message, ... what
/// `util.inspect` makes of the value" (a plain object whose `message`
/// getter throws).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_with_a_throwing_message_getter_is_reported_as_the_readme_says() {
    let pool = start_one(node(WireCodec::Json)).await;
    for (kind, want) in [
        ("getterSub", ("Unreadable", "<unreadable thrown value>")),
        ("getterObject", ("Error", "{ message: [Getter] }")),
    ] {
        let e = remote(call(&pool, "errors", json!({"kind": kind})).await, kind);
        assert_eq!(
            (e.kind.as_deref(), e.message.as_str()),
            (Some(want.0), want.1),
            "{kind}"
        );
    }
    pool.shutdown().await.unwrap();
}

/// bridges/node/README.md, "Errors": "An `uncaughtException` listener of
/// your own takes over that decision" (the bridge's own is to log and exit
/// with code 1). A script with its own listener: a throw in a timer's
/// callback reaches the listener and the worker serves on, unreplaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncaught_exception_listener_of_your_own_keeps_the_worker() {
    let pool = start_one(node(WireCodec::Json).env("ONR_OWN_UNCAUGHT", "1")).await;
    let pid = pool.worker_pids()[0];
    let r = call(&pool, "timerThrow", json!({})).await.unwrap();
    assert_eq!(r["pid"], json!(pid));
    let caught = state_when(&pool, 100, |s| s["caught"] != json!([])).await["caught"].clone();
    assert_eq!(caught, json!(["thrown in a timer"]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    kept_then_shut_down(&pool, pid, "after the uncaught exception").await;
}

// ---------------------------------------------------------------------------
// Host calls

/// bridges/node/README.md, the context: "`await ctx.callHost(fn, args)` |
/// runs a function the host registered; rejects with a `HostCallError`
/// whose `type` is the host's error type"; "Errors": "`callHost` arguments
/// that cannot be encoded make it reject; nothing is sent" (a cycle, a
/// string with half a surrogate pair); docs/bridges.md, "Codecs": "Bytes a
/// handler passes to the host (in a host call's arguments ...) fail that
/// host call with `InvalidArgument`, and the worker serves on"
/// (MessagePack). A host error the handler lets escape fails the call with
/// the host's type. In both codecs, through a pool whose `count` host
/// function counts the calls that reached it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_and_unsendable_host_calls_reject_in_the_handler_and_the_worker_serves_on() {
    for codec in CODECS {
        let reached = Arc::new(AtomicU64::new(0));
        let counter = reached.clone();
        let builder = Pool::builder(node(codec))
            .size(1)
            .host_function("fails", |_call: HostCall| async move {
                Err::<Value, _>(RemoteError::new("ValueError", "lookup needs an integer id"))
            })
            .host_function("count", move |_call: HostCall| {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move { Ok::<_, RemoteError>(json!(n)) }
            });
        let pool = start(builder).await;
        let pid = pool.worker_pids()[0];
        let bytes = codec == WireCodec::MsgPack;
        let r = call(&pool, "hostFailures", json!({"bytes": bytes}))
            .await
            .unwrap();
        assert_eq!(
            r["fails"],
            json!({"err": {"host_call_error": true, "name": "ValueError", "type": "ValueError",
                           "message": "lookup needs an integer id"}}),
            "{codec}: {r}"
        );
        for unsendable in ["cycle", "surrogate"] {
            assert!(
                r[unsendable]["err"].is_object(),
                "{codec}: {unsendable} did not reject: {r}"
            );
        }
        // The first host call that reached the host is the one after them.
        assert_eq!(r["after"], json!({"ok": 1}), "{codec}: {r}");
        if bytes {
            assert_eq!(r["bytes"]["err"]["type"], "InvalidArgument", "{codec}: {r}");
            assert_eq!(r["bytes"]["err"]["host_call_error"], true, "{codec}: {r}");
        }
        let e = remote(call(&pool, "hostEscapes", json!({})).await, "hostEscapes");
        assert_eq!(
            (e.kind.as_deref(), e.message.as_str()),
            (Some("ValueError"), "lookup needs an integer id"),
            "{codec}"
        );
        assert_eq!(
            reached.load(Ordering::SeqCst),
            1,
            "{codec}: host calls that reached the host"
        );
        kept_then_shut_down(&pool, pid, &format!("{codec}: after the host calls")).await;
    }
}

/// bridges/node/README.md, "Concurrency and cancellation": "When the pool
/// gives up on a call it sends `cancel`. The bridge then marks
/// `ctx.cancelled`, fires `ctx.signal`, fails pending `callHost` waits with
/// a `CancelledError`"; the context: "`ctx.throwIfCancelled()` | throws a
/// `CancelledError` if cancelled"; docs/bridges.md: `ctx.sendChunk(data)`
/// "returns `false` and sends nothing ... once the call was answered or
/// cancelled". A streamed call given up while its handler waits on a slow
/// host function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_given_up_during_a_host_call_rejects_it_with_cancelled_error_and_refuses_chunks() {
    let builder = Pool::builder(node(WireCodec::Json)).size(1).host_function(
        "slow",
        |call: HostCall| async move {
            let ms = call.args["ms"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, RemoteError>(json!("late answer"))
        },
    );
    let pool = start(builder).await;
    let pid = pool.worker_pids()[0];
    let mut stream = pool
        .execute_stream(
            "hostCancel",
            json!({"ms": 3000}),
            CallOptions::new().timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let first = tokio::time::timeout(HANG, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&first, StreamItem::Chunk(c) if c["started"] == true),
        "{first:?}"
    );
    let end = match tokio::time::timeout(HANG, stream.next()).await.unwrap() {
        Some(Err(e)) => e,
        Some(Ok(StreamItem::Chunk(c))) => panic!("a chunk after the cancellation: {c}"),
        other => panic!("the stream went on: {other:?}"),
    };
    assert!(end.is_timeout(), "{end}");
    drop(stream);
    let seen = state_when(&pool, 100, |s| !s["lastCancel"].is_null()).await["lastCancel"].clone();
    assert_eq!(
        seen,
        json!({
            "fired_before": false, "cancelled_before": false,
            "host_call": [true, "Cancelled"],
            "fired": true, "cancelled": true, "aborted": true,
            "chunk_after": false,
            "throw_if_cancelled": [true, "Cancelled"],
        })
    );
    // The slow host function's answer comes later and goes nowhere.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    kept_then_shut_down(&pool, pid, "after the late host answer").await;
}

// ---------------------------------------------------------------------------
// Tracing

/// bridges/node/README.md, "Tracing": "When `@opentelemetry/api` is
/// installed ... and a request carries a `traceparent`, the handler runs
/// inside a span `snakepit.worker <command>` (kind server) whose parent is
/// the caller's span: spans you start in the handler join the caller's
/// trace (after `await`s too, once a context manager ... is registered
/// ...). A handler that throws marks the span as an error." Through a pool,
/// with `CallOptions::traceparent` as the caller's span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_call_runs_in_a_server_span_child_of_the_callers_span() {
    let pool = start_one(node(WireCodec::Json).env("ONR_OTEL", "1")).await;
    let traced = CallOptions::new()
        .timeout(Duration::from_secs(30))
        .traceparent(tp());
    let r = call_with(&pool, "traced", json!({}), traced.clone())
        .await
        .unwrap();
    assert_eq!(r["traceparent"], json!(tp()));
    let e = remote(
        call_with(&pool, "tracedFail", json!({}), traced).await,
        "tracedFail",
    );
    assert_eq!(e.message, "traced failure");
    let spans = call(&pool, "spans", json!({})).await.unwrap();
    let find = |name: &str| -> Value {
        let all: Vec<&Value> = spans
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["name"] == name)
            .collect();
        assert_eq!(all.len(), 1, "spans named {name}: {spans}");
        all[0].clone()
    };
    let server = find("snakepit.worker traced");
    // SpanKind.SERVER is 1; SpanStatusCode.ERROR is 2.
    assert_eq!(
        (&server["kind"], &server["trace_id"], &server["parent"]),
        (&json!(1), &json!(TRACE), &json!(CALLER)),
        "{spans}"
    );
    assert_ne!(server["status"], json!(2), "{spans}");
    let child = find("handler.child");
    assert_eq!(child["trace_id"], json!(TRACE), "{spans}");
    assert_eq!(
        child["parent"], server["span_id"],
        "the handler's span after an await: {spans}"
    );
    let failed = find("snakepit.worker tracedFail");
    assert_eq!(
        (&failed["status"], &failed["parent"]),
        (&json!(2), &json!(CALLER)),
        "{spans}"
    );
    pool.shutdown().await.unwrap();
}

/// bridges/node/README.md, "Tracing": "Without the package nothing is
/// loaded; `ctx.traceparent` is there either way." A worker whose
/// `NODE_PATH` holds no `@opentelemetry/api` serves a traced call with the
/// traceparent in its context and no OpenTelemetry module loaded; the same
/// script with the package on `NODE_PATH` loads it for a traced call (the
/// check can see a load). And "No runtime dependencies; `@msgpack/msgpack`
/// only when the pool uses the MessagePack codec": a JSON worker with the
/// package on its `NODE_PATH` has not loaded it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_opentelemetry_installed_nothing_is_loaded_and_traceparent_is_there() {
    let traced = CallOptions::new()
        .timeout(Duration::from_secs(30))
        .traceparent(tp());
    let without = start_one(Bridge::node(worker("outside_node_readme.js"))).await;
    let r = call_with(&without, "otelLoaded", json!({}), traced.clone())
        .await
        .unwrap();
    assert_eq!(
        r,
        json!({"traceparent": tp(), "loaded": [], "msgpack_loaded": false})
    );
    without.shutdown().await.unwrap();

    let with = start_one(node(WireCodec::Json)).await;
    let r = call_with(&with, "otelLoaded", json!({}), traced)
        .await
        .unwrap();
    assert_eq!(r["traceparent"], json!(tp()));
    assert!(
        r["loaded"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("@opentelemetry/api")),
        "installed, the API is loaded for a traced call: {r}"
    );
    // "`@msgpack/msgpack` only when the pool uses the MessagePack codec":
    // on `NODE_PATH` here, but this pool speaks JSON.
    assert_eq!(r["msgpack_loaded"], false, "{r}");
    with.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// Codecs

/// bridges/node/README.md, "Codecs": "`SNAKEPIT_CODEC=msgpack` needs the
/// `@msgpack/msgpack` package ... It is found beside the bridge, on
/// `NODE_PATH`, or in a `node_modules` next to your script or the working
/// directory; when it is missing the worker exits with a message naming
/// it." The package only in the worker's working directory (`.cwd`), the
/// script elsewhere and no `NODE_PATH`: the worker serves MessagePack. The
/// same without that working directory fails the start naming the package.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_is_found_in_a_node_modules_of_the_working_directory() {
    let dir = std::env::temp_dir().join(format!("snakepit-onr-cwd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("node_modules")).unwrap();
    std::os::unix::fs::symlink(
        PathBuf::from(node_modules()).join("@msgpack"),
        dir.join("node_modules/@msgpack"),
    )
    .unwrap();
    let script = worker("outside_node_readme.js");
    let pool = start_one(Bridge::node(&script).cwd(&dir).codec(WireCodec::MsgPack)).await;
    let r = call(&pool, "echo", json!({"a": [1, "b"]})).await.unwrap();
    assert_eq!(r, json!({"a": [1, "b"]}));
    pool.shutdown().await.unwrap();

    let r = Pool::builder(Bridge::node(&script).codec(WireCodec::MsgPack))
        .size(1)
        .configure(|c| c.worker_init_timeout = Duration::from_secs(60))
        .start()
        .await;
    let Err(err) = r else {
        panic!("started without the package")
    };
    assert!(err.to_string().contains("@msgpack/msgpack"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// bridges/node/README.md, "Codecs": "A MessagePack map becomes a plain
/// object, whose keys are strings: an integer key becomes its decimal
/// text, a `bin` key its bytes as a Latin-1 string
/// (`Buffer.from(key, 'latin1')` gives the bytes back), nil and booleans
/// their names ... An `ext` value arrives as an `ExtData` and is written
/// back as the same `ext`." The worker alone, run with node, given a raw
/// MessagePack request.
#[test]
fn msgpack_map_keys_become_strings_and_ext_values_go_back_as_they_came() {
    let ext = [0xc7, 0x03, 0x05, 0x01, 0x02, 0x03]; // ext 8, type 5, 3 bytes
    let mut req = vec![0x83];
    req.extend(b"\xa2id\x01");
    req.extend(b"\xa7command\xa4keys");
    req.extend(b"\xa4args\x82");
    req.extend(b"\xa1m\x85");
    req.extend(b"\x01\xa1a"); // 1: "a"
    req.extend(b"\xc4\x02\xff\x00\xa1b"); // bin ff 00: "b"
    req.extend(b"\xc0\xa1c"); // nil: "c"
    req.extend(b"\xc3\xa1d"); // true: "d"
    req.extend(b"\xc2\xa1e"); // false: "e"
    req.extend(b"\xa1x");
    req.extend(ext);
    let run = run_node_ok(
        &worker("outside_node_readme.js"),
        "keys",
        &[("SNAKEPIT_CODEC", "msgpack")],
        &frame(&req),
    );
    let out = &run.stdout;
    let marker = b"ONR";
    let find = |from: usize| {
        out[from..]
            .windows(3)
            .position(|w| w == marker)
            .map(|p| p + from)
    };
    let start =
        find(0).unwrap_or_else(|| panic!("no reply to keys: {}", String::from_utf8_lossy(out))) + 3;
    let end = find(start).expect("the info's end");
    let info: Value = serde_json::from_slice(&out[start..end]).unwrap();
    assert_eq!(info["plain"], true, "{info}");
    assert_eq!(info["ext_class"], "ExtData", "{info}");
    let keys: std::collections::BTreeMap<String, (String, String)> = info["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k[2].as_str().unwrap().into(),
                (k[0].as_str().unwrap().into(), k[1].as_str().unwrap().into()),
            )
        })
        .collect();
    let want: std::collections::BTreeMap<String, (String, String)> = [
        ("31", "1", "a"),
        ("ff00", "\u{ff}\u{0}", "b"),
        ("6e756c6c", "null", "c"),
        ("74727565", "true", "d"),
        ("66616c7365", "false", "e"),
    ]
    .into_iter()
    .map(|(h, k, v)| (h.into(), (k.into(), v.into())))
    .collect();
    assert_eq!(keys, want, "{info}");
    assert!(
        out.windows(ext.len()).any(|w| w == ext),
        "the ext did not go back as it came"
    );
}

// ---------------------------------------------------------------------------
// The worker alone: options, the context, run() and serve()

fn request(id: u64, command: &str, args: Value) -> Vec<u8> {
    json_frame(&json!({"id": id, "command": command, "args": args}))
}

/// bridges/node/README.md, the context: "`ctx.workerId` | from
/// `SNAKEPIT_WORKER_ID`, or from the pool's init ping; `null` before
/// either"; "`ctx.log.info(...)` (also `debug`, `warn`, `error`) | a line
/// on stderr, tagged with worker and request id"; "`ctx.worker` | the
/// `Worker`"; `ctx.worker_id` is an alias. The worker run directly: a call
/// before the init ping, the ping, a call after it; then the same with
/// `SNAKEPIT_WORKER_ID` set, which the ping does not override.
#[test]
fn the_worker_id_comes_from_the_environment_or_the_init_ping_and_log_lines_carry_it() {
    let script = worker("outside_node_readme.js");
    let mut input = request(1, "context", json!({}));
    input.extend(request(
        2,
        "ping",
        json!({"initialization": true, "worker_id": "w-7"}),
    ));
    input.extend(request(3, "context", json!({})));
    let run = run_node_ok(&script, "ctx", &[], &input);
    let before = &run.reply(1)["result"];
    assert_eq!(
        (
            &before["worker_id"],
            &before["worker_id_alias"],
            &before["is_worker"],
            &before["command"]
        ),
        (&Value::Null, &Value::Null, &json!(true), &json!("context")),
        "{before}"
    );
    let after = &run.reply(3)["result"];
    assert_eq!(
        (&after["worker_id"], &after["worker_id_alias"]),
        (&json!("w-7"), &json!("w-7")),
        "{after}"
    );
    for level in [
        "DEBUG log-debug",
        "INFO log-info { n: 1 }",
        "WARN log-warn",
        "ERROR log-error",
    ] {
        let line = run
            .stderr
            .lines()
            .find(|l| l.contains("req=3") && l.ends_with(level))
            .unwrap_or_else(|| panic!("no {level} line of request 3: {}", run.stderr));
        assert!(
            line.contains("w-7"),
            "not tagged with the worker id: {line}"
        );
        assert!(
            run.stderr
                .lines()
                .any(|l| l.contains("req=1") && l.ends_with(level)),
            "no {level} line of request 1: {}",
            run.stderr
        );
    }
    assert!(
        !String::from_utf8_lossy(&run.stdout).contains("log-info"),
        "a log line among the frames"
    );

    let run = run_node_ok(
        &script,
        "ctx-env",
        &[("SNAKEPIT_WORKER_ID", "env-1")],
        &input,
    );
    assert_eq!(run.reply(1)["result"]["worker_id"], "env-1");
    assert_eq!(
        run.reply(3)["result"]["worker_id"],
        "env-1",
        "the init ping overrode the variable"
    );
}

/// bridges/node/README.md, options: `maxConcurrency` "calls run at once
/// ... Declared in `hello`, so the pool never sends more; extra calls would
/// wait in a queue"; and a `cancel` reaches a call wherever it is ("replies
/// `Cancelled` **at once**"). The worker run directly with
/// `maxConcurrency: 1`, given three calls at once and a cancel for the
/// second: the second is answered `Cancelled` first and never runs, the
/// others run one at a time; then "serves requests until stdin is closed,
/// waits for the calls still running, and exits with code 0".
#[test]
fn extra_calls_wait_in_a_queue_and_a_queued_call_cancelled_never_runs() {
    let mut input = Vec::new();
    for id in 1..=3 {
        input.extend(request(id, "slow", json!({"ms": 300})));
    }
    input.extend(json_frame(&json!({"type": "cancel", "id": 2})));
    let run = run_node_ok(
        &worker("outside_node_readme.js"),
        "queue",
        &[("ONR_MAX_CONC", "1")],
        &input,
    );
    let frames = run.frames();
    assert_eq!(
        frames[0]["capabilities"]["max_concurrency"], 1,
        "{frames:?}"
    );
    let order: Vec<&Value> = frames[1..].iter().map(|f| &f["id"]).collect();
    assert_eq!(order, [&json!(2), &json!(1), &json!(3)], "{frames:?}");
    assert_eq!(run.reply(2)["error"]["type"], "Cancelled");
    assert_eq!(run.reply(1)["result"]["started"], json!([1]));
    assert_eq!(
        run.reply(3)["result"],
        json!({"id": 3, "started": [1, 3], "most": 1})
    );
}

/// bridges/node/README.md, options: "`maxFrameSize` | 64 MiB | larger
/// incoming frames are skipped with a `ProtocolError` reply". The worker
/// run directly with `maxFrameSize: 1024`: a frame of exactly 1024 bytes is
/// served, one of 1025 is answered `ProtocolError` (id 0) and the next
/// frame is served.
#[test]
fn a_frame_above_max_frame_size_is_skipped_with_a_protocol_error() {
    fn sized(id: u64, size: usize) -> Vec<u8> {
        let base =
            serde_json::to_vec(&json!({"id": id, "command": "echo", "args": {"s": ""}})).unwrap();
        let s = "x".repeat(size - base.len());
        let payload =
            serde_json::to_vec(&json!({"id": id, "command": "echo", "args": {"s": s}})).unwrap();
        assert_eq!(payload.len(), size);
        frame(&payload)
    }
    let mut input = sized(1, 1024);
    input.extend(sized(2, 1025));
    input.extend(request(3, "echo", json!({"after": true})));
    let run = run_node_ok(
        &worker("outside_node_readme.js"),
        "frame",
        &[("ONR_MAX_FRAME", "1024")],
        &input,
    );
    assert_eq!(
        run.reply(1)["success"],
        true,
        "a frame of exactly maxFrameSize"
    );
    assert_eq!(run.reply(0)["error"]["type"], "ProtocolError");
    assert!(
        run.frames().iter().all(|f| f["id"] != 2),
        "{:?}",
        run.frames()
    );
    assert_eq!(run.reply(3)["result"], json!({"after": true}));
}

/// The same through a pool: a call whose request is larger than the
/// worker's `maxFrameSize` fails at once with `Error::Protocol` quoting the
/// worker's `ProtocolError` (with id 0 it cannot be matched to the call;
/// the pool takes it as "the worker could not read a frame from the pool"
/// and replaces the worker), not at its deadline, and the pool serves the
/// next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_pool_a_call_above_max_frame_size_fails_and_the_next_call_is_served() {
    let pool = start_one(node(WireCodec::Json).env("ONR_MAX_FRAME", "4096")).await;
    let big = "y".repeat(8192);
    let r = call_with(
        &pool,
        "echo",
        json!({"s": big}),
        CallOptions::new().timeout(Duration::from_secs(50)),
    )
    .await;
    let err = r.expect_err("a request above maxFrameSize was served");
    assert!(
        matches!(err, Error::Protocol { .. })
            && err
                .to_string()
                .contains("exceeds the maximum of 4096 bytes"),
        "{err:?}"
    );
    let r = call(&pool, "echo", json!({"small": 1})).await.unwrap();
    assert_eq!(r, json!({"small": 1}));
    pool.shutdown().await.unwrap();
}

/// bridges/node/README.md: "`worker.run()` writes the `hello` frame, serves
/// requests until stdin is closed, waits for the calls still running, and
/// exits with code 0"; "`worker.run({ exit: false })` resolves instead of
/// exiting on EOF". Run directly: a call still running at EOF is answered
/// either way; then plain `run()` exits 0, and `run({ exit: false })`
/// resolves (its script then exits with 42). "SIGTERM also exits 0": sent
/// while a call of 20 s runs.
#[test]
fn run_exits_0_at_eof_after_the_running_calls_and_with_exit_false_resolves() {
    let input = request(1, "slow", json!({"ms": 300}));
    let script = worker("outside_node_readme.js");
    let run = run_node_ok(&script, "exit", &[], &input);
    assert_eq!(run.frames()[0]["type"], "hello");
    assert_eq!(run.reply(1)["result"]["id"], 1);
    let run = run_node(&script, "exit-false", &[("ONR_EXIT_FALSE", "1")], &input);
    assert_eq!(run.status.code(), Some(42), "{}", run.stderr);
    assert_eq!(run.reply(1)["result"]["id"], 1);
    assert!(run.stderr.contains("run() resolved"), "{}", run.stderr);
    // "SIGTERM also exits 0", a call running or not.
    let mark = mark_file("sigterm");
    let input = request(1, "slow", json!({"ms": 20_000, "mark": mark}));
    let run = run_node_with(&script, "sigterm", &[], &input, |pid| {
        wait_for(&mark);
        #[allow(unsafe_code)]
        // SAFETY: kill(2) on the node process this test spawned and still waits for.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    });
    assert_eq!(run.status.code(), Some(0), "{}", run.stderr);
}

/// bridges/node/README.md, options: "`maxConcurrency` | 16 | calls run at
/// once (a whole number; above 2^32-1 counts as 2^32-1; a value below 1,
/// not whole, or not a number is a `RangeError`; leaving it out, or
/// `null`, gives the default) ... Declared in `hello`"; "`sigint` |
/// `false`"; "`name` | `snakepit-node` | the bridge name in `hello`";
/// "`worker.serve({ input, write })` serves any readable stream, writing
/// frames with `write(buffer)`, without touching the process". Run
/// directly (tests/workers/outside_node_readme_options.js).
#[test]
fn worker_options_and_serve_behave_as_the_options_table_says() {
    let run = run_node_ok(
        &worker("outside_node_readme_options.js"),
        "options",
        &[],
        b"",
    );
    let out: Value = serde_json::from_slice(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {} {}",
            String::from_utf8_lossy(&run.stdout),
            run.stderr
        )
    });
    let max = 4_294_967_295u64;
    let mc = &out["maxConcurrency"];
    for (name, want) in [
        ("omitted", 16),
        ("null", 16),
        ("one", 1),
        ("seven", 7),
        ("2**32-1", max),
        ("2**40", max),
    ] {
        assert_eq!(
            mc[name],
            json!({"value": want, "hello": want}),
            "{name}: {mc}"
        );
    }
    for name in ["zero", "negative", "half", "string4", "NaN", "true"] {
        assert_eq!(mc[name], json!({"error": "RangeError"}), "{name}: {mc}");
    }
    let hello = &out["hello"];
    assert!(
        hello["bridge"].as_str().unwrap().starts_with("my-bridge/"),
        "{hello}"
    );
    assert_eq!(
        hello["capabilities"],
        json!({"max_concurrency": 3, "cancel": true, "sigint": true, "streaming": true, "host_calls": true})
    );
    let default = &out["helloDefault"];
    assert!(
        default["bridge"]
            .as_str()
            .unwrap()
            .starts_with("snakepit-node/"),
        "{default}"
    );
    assert_eq!(default["capabilities"]["sigint"], false, "{default}");
    assert_eq!(default["capabilities"]["max_concurrency"], 16, "{default}");

    let serve = &out["serve"];
    let frames = serve["frames"].as_array().unwrap();
    assert_eq!(frames[0]["type"], "hello", "{serve}");
    let replies: Vec<&Value> = frames[1..].iter().collect();
    assert_eq!(
        replies,
        [
            &json!({"id": 2, "success": true, "result": "hello Ada"}),
            &json!({"id": 1, "success": true, "result": "slow done"})
        ],
        "serve() resolved before every call it started replied: {serve}"
    );
    assert_eq!(
        (
            &serve["stdout_same"],
            &serve["stdin_descriptor_same"],
            &serve["sigterm_listeners_added"]
        ),
        (&json!(true), &json!(true), &json!(0)),
        "serve() touched the process: {serve}"
    );
}

/// The same `maxConcurrency` rule through a pool: a worker that says
/// `maxConcurrency: 2 ** 40` declares 2^32-1 in its hello, which the pool
/// takes within its own bound (`max_concurrency_per_worker`, 64 by
/// default) and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_max_concurrency_is_declared_as_2_pow_32_minus_1_and_the_pool_caps_it() {
    let pool = start_one(node(WireCodec::Json).env("ONR_MAX_CONC", "2 ** 40")).await;
    assert_eq!(pool.workers()[0].capacity, 64, "{:?}", pool.workers());
    let r = call(&pool, "echo", json!({"ok": true})).await.unwrap();
    assert_eq!(r, json!({"ok": true}));
    pool.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// SIGINT, late chunks, printing at load time

/// A file name for a handler to create when it starts (`mark`).
fn mark_file(tag: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("snakepit-onr-mark-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path
}

/// Waits (30 s at most) until a handler created `mark`.
fn wait_for(mark: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !mark.exists() {
        assert!(Instant::now() < deadline, "the handler never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_file(mark);
}

fn sigint(pid: u32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on the node process this test spawned and still waits for.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGINT);
    }
}

/// bridges/node/README.md, "Concurrency and cancellation": "With `new
/// Worker({ sigint: true })`, SIGINT cancels the calls running at that
/// moment as a `cancel` frame would ... A handler that blocks the thread is
/// only interrupted once it returns, and if it has replied by then, the
/// signal finds nothing to cancel"; "by default the bridge declares
/// `sigint: false` ... and ignores SIGINT, so a stray Ctrl-C never kills a
/// worker". Run directly: an awaiting call and a call that blocks the
/// thread, SIGINT while the second blocks. With `sigint: true` the first is
/// answered `Cancelled`, the second its result; by default both their
/// results. Either way the worker then serves a call and exits 0 at EOF.
#[test]
fn sigint_cancels_the_running_calls_only_with_sigint_true() {
    let mark = mark_file("sigint");
    let mut input = request(1, "slow", json!({"ms": 2500}));
    input.extend(request(2, "block", json!({"ms": 1500, "mark": mark})));
    let script = worker("outside_node_readme.js");
    for (env, want_first) in [(vec![("ONR_SIGINT", "1")], "Cancelled"), (vec![], "ok")] {
        let what = format!("{env:?}");
        let run = run_node_with(&script, "sigint", &env, &input, |pid| {
            // Request 2 holds the thread from its start to 1.5 s later.
            wait_for(&mark);
            std::thread::sleep(Duration::from_millis(300));
            sigint(pid);
        });
        assert_eq!(run.status.code(), Some(0), "{what}: {}", run.stderr);
        assert_eq!(run.reply(2)["result"], json!({"blocked": 1500}), "{what}");
        let first = run.reply(1);
        let got = if first["success"] == true {
            "ok"
        } else {
            first["error"]["type"].as_str().unwrap()
        };
        assert_eq!(got, want_first, "{what}: {first}");
    }
}

/// docs/bridges.md, the context: `ctx.sendChunk(data)` "returns `false` and
/// sends nothing ... once the call was answered". A handler that keeps its
/// context and sends a chunk after its reply went out: `false`, and the
/// pool (for which a chunk of a call that has ended would break the
/// protocol) keeps the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_sent_after_the_reply_is_refused_and_costs_nothing() {
    let pool = start_one(node(WireCodec::Json)).await;
    let pid = pool.worker_pids()[0];
    let items = stream_items(&pool, "lateChunk", json!({}), "lateChunk").await;
    assert_eq!(items.len(), 2, "{items:?}");
    let late = state_when(&pool, 100, |s| !s["lateChunk"].is_null()).await["lateChunk"].clone();
    assert_eq!(late, json!(false));
    tokio::time::sleep(Duration::from_millis(200)).await;
    kept_then_shut_down(&pool, pid, "after the late chunk").await;
}

/// bridges/node/README.md, "Stdout and stdin belong to the protocol":
/// "Under a pool (`SNAKEPIT_PROTOCOL` is set) this happens as soon as the
/// bridge is required, so require it before anything that prints." A
/// script that prints with `console.log`, `console.info`, `console.table`
/// and `process.stdout.write` at load time, after the require and before
/// its hello: the pool starts it and it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printing_at_load_time_after_the_require_breaks_nothing() {
    for codec in CODECS {
        let bridge = Bridge::node(worker("outside_node_readme_prints.js"))
            .env("NODE_PATH", node_modules())
            .codec(codec);
        let pool = start_one(bridge).await;
        let pid = pool.worker_pids()[0];
        kept_then_shut_down(&pool, pid, &format!("{codec}")).await;
    }
}

/// bridges/node/README.md, "Tracing": "a request carries a `traceparent`"
/// and "A handler that throws marks the span as an error": a handler that
/// throws synchronously (not only one whose promise rejects) marks its
/// span; a traceparent that is not a valid W3C one (garbage, an all-zero
/// trace id) makes no span, and the call is served as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_throws_mark_the_span_and_invalid_traceparents_make_none() {
    let pool = start_one(node(WireCodec::Json).env("ONR_OTEL", "1")).await;
    let pid = pool.worker_pids()[0];
    let traced = CallOptions::new()
        .timeout(Duration::from_secs(30))
        .traceparent(tp());
    let e = remote(
        call_with(&pool, "errors", json!({"kind": "model"}), traced).await,
        "errors",
    );
    assert_eq!(e.kind.as_deref(), Some("ModelError"));
    let spans = call(&pool, "spans", json!({})).await.unwrap();
    let span = spans
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "snakepit.worker errors")
        .unwrap_or_else(|| panic!("no span: {spans}"))
        .clone();
    assert_eq!(
        (&span["status"], &span["parent"]),
        (&json!(2), &json!(CALLER)),
        "{spans}"
    );
    for bad in [
        "not-a-traceparent".to_owned(),
        format!("00-{}-{CALLER}-01", "0".repeat(32)),
    ] {
        let options = CallOptions::new()
            .timeout(Duration::from_secs(30))
            .traceparent(bad.clone());
        let r = call_with(&pool, "traced", json!({}), options).await;
        let r = r.unwrap_or_else(|e| panic!("{bad}: {e}"));
        assert!(r.get("traceparent").is_some(), "{bad}: {r}");
        let spans = call(&pool, "spans", json!({})).await.unwrap();
        assert!(
            spans
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["name"] != "snakepit.worker traced"),
            "{bad}: a span under an invalid parent: {spans}"
        );
    }
    kept_then_shut_down(&pool, pid, "after the traced calls").await;
}

// ---------------------------------------------------------------------------
// TypeScript declarations

/// Runs the TypeScript compiler of the bridge's dev dependencies (strict,
/// `checkJs`) on `files` (name, text) in a project where `snakepit-bridge`
/// resolves to bridges/node by name; returns its output, empty when they
/// compile.
fn tsc(tag: &str, files: &[(&str, &str)]) -> String {
    let dir = std::env::temp_dir().join(format!("snakepit-onr-ts-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("node_modules/@types")).unwrap();
    std::os::unix::fs::symlink(
        workspace_root().join("bridges/node"),
        dir.join("node_modules/snakepit-bridge"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        PathBuf::from(node_modules()).join("@types/node"),
        dir.join("node_modules/@types/node"),
    )
    .unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    #[allow(clippy::disallowed_methods)] // the TypeScript compiler, not a worker
    let out = Command::new("node")
        .arg(PathBuf::from(node_modules()).join("typescript/bin/tsc"))
        .args(["--noEmit", "--strict", "--allowJs", "--checkJs"])
        .args([
            "--module",
            "node16",
            "--moduleResolution",
            "node16",
            "--target",
            "es2020",
            "--types",
            "node",
        ])
        .args(files.iter().map(|(name, _)| *name))
        .current_dir(&dir)
        .output()
        .expect("tsc runs");
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// bridges/node/README.md, options: `maxConcurrency` "leaving it out, or
/// `null`, gives the default" (the package's `types` then should accept
/// `null`); and the README's complete worker, type-checked (`// @ts-check`
/// style: strict `checkJs`) against the declarations the package ships
/// (`package.json` "types"), should compile as it runs.
#[test]
fn the_readme_and_its_options_type_check_against_the_shipped_declarations() {
    let example = std::fs::read_to_string(worker("outside_node_readme_example.js")).unwrap();
    let options =
        "import { Worker } from 'snakepit-bridge';\nnew Worker({ maxConcurrency: null });\n";
    let out = tsc(
        "readme",
        &[("example.js", &example), ("options.ts", options)],
    );
    assert!(out.trim().is_empty(), "tsc: {out}");
}

/// A worker that records its spans in memory, importing OpenTelemetry as
/// `import` (ES module) or `require` (CommonJS) does.
const TRACED_ESM: &str = r#"import { Worker } from 'snakepit-bridge';
import * as api from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
const exporter = new InMemorySpanExporter();
api.trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }));
api.context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
new Worker({ commands: {
  traced: (args, ctx) => ({ traceparent: ctx.traceparent }),
  spans: () => exporter.getFinishedSpans().map((s) => s.name),
} }).run();
"#;

fn traced_cjs() -> String {
    TRACED_ESM
        .replace(
            "import { Worker } from 'snakepit-bridge';",
            "const { Worker } = require('snakepit-bridge');",
        )
        .replace(
            "import * as api from '@opentelemetry/api';",
            "const api = require('@opentelemetry/api');",
        )
        .replace(
            "import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';",
            "const { AsyncLocalStorageContextManager } = require('@opentelemetry/context-async-hooks');",
        )
        .replace(
            "import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';",
            "const { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } = require('@opentelemetry/sdk-trace-base');",
        )
}

/// The spans a worker script `name` (with `source`), with OpenTelemetry in
/// a `node_modules` next to it and nothing on `NODE_PATH`, records for one
/// traced call.
async fn spans_of_a_script_beside_opentelemetry(name: &str, source: &str) -> Value {
    let dir = std::env::temp_dir().join(format!("snakepit-onr-otel-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(node_modules(), dir.join("node_modules")).unwrap();
    let script = dir.join(name);
    std::fs::write(&script, source).unwrap();
    let pool = start_one(Bridge::node(&script).env("NODE_PATH", "")).await;
    let traced = CallOptions::new()
        .timeout(Duration::from_secs(30))
        .traceparent(tp());
    let r = call_with(&pool, "traced", json!({}), traced).await.unwrap();
    assert_eq!(r["traceparent"], json!(tp()), "{name}");
    let spans = call(&pool, "spans", json!({})).await.unwrap();
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    spans
}

/// bridges/node/README.md, "Tracing": "When `@opentelemetry/api` is
/// installed next to your worker script ... and a request carries a
/// `traceparent`, the handler runs inside a span `snakepit.worker
/// <command>`". A CommonJS worker with the package in a `node_modules`
/// beside it (nothing on `NODE_PATH`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commonjs_worker_beside_opentelemetry_gets_its_span() {
    let spans = spans_of_a_script_beside_opentelemetry("w.cjs", &traced_cjs()).await;
    assert_eq!(spans, json!(["snakepit.worker traced"]));
}

/// The same promise for an ES module worker (`.mjs`, which docs/bridges.md
/// says the adapter runs "through a small launcher that lets its `import
/// ... from 'snakepit-bridge'` find the bridge"): the handler runs in no
/// span. The bridge looks the API up only through `require.main` (which an
/// ES module entry point does not set) and its own directory (the cache,
/// without `node_modules`), whereas its MessagePack look-up
/// (`wire.loadMsgpack`) also tries the script's path from `process.argv`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_es_module_worker_beside_opentelemetry_gets_its_span() {
    let spans = spans_of_a_script_beside_opentelemetry("w.mjs", TRACED_ESM).await;
    assert_eq!(spans, json!(["snakepit.worker traced"]));
}

/// docs/bridges.md: "Every bridge answers `ping` by itself with the generic
/// result of protocol section 7; registering your own `ping` replaces it."
/// A Node worker with its own `ping` (answering `status: "ok"`) passes the
/// pool's init handshake with it (its init ping's arguments reach it) and
/// answers the caller's `ping` with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_of_your_own_replaces_the_bridges() {
    let pool = start_one(node(WireCodec::Json).env("ONR_OWN_PING", "1")).await;
    let worker_id = pool.workers()[0].id.clone();
    let r = call(&pool, "ping", json!({"x": 1})).await.unwrap();
    assert_eq!(
        r,
        json!({"status": "ok", "mine": true, "args": {"x": 1}, "worker_id": worker_id})
    );
    pool.shutdown().await.unwrap();
}

/// bridges/node/README.md, "Errors": "An exception nobody catches ... ends
/// the worker ...: it writes the frames it already made, logs `uncaught
/// exception; the worker exits` ..., and exits with code 1; the pool ...
/// replaces it." A handler that queues a throwing microtask and returns:
/// its reply, made before the exception and not yet written, still reaches
/// the caller, and the pool then replaces the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncaught_exception_still_writes_the_reply_already_made() {
    let pool = start_one(node(WireCodec::Json)).await;
    let pid = pool.worker_pids()[0];
    let r = call(&pool, "microtaskThrow", json!({})).await;
    assert_eq!(
        r.unwrap_or_else(|e| panic!("the reply made was lost: {e}")),
        json!({"pid": pid})
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while pool.worker_pids().first() == Some(&pid) || pool.worker_pids().is_empty() {
        assert!(
            Instant::now() < deadline,
            "not replaced: {:?}",
            pool.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = call(&pool, "pid", json!({})).await.unwrap();
    assert_ne!(r["pid"], json!(pid));
    let st = pool.stats();
    assert!(st.crashes + st.restarts >= 1, "{st:?}");
    pool.shutdown().await.unwrap();
}

/// bridges/node/README.md, the context: "`ctx.signal` | an `AbortSignal`
/// that fires on cancellation; pass it to `fetch`, timers, child
/// processes"; "Give child processes `stdio: ['ignore', 2, 2]`". A handler
/// that runs `sleep 30` with the call's signal: when the call's deadline
/// passes, the child process is killed and the handler sees it end; the
/// worker stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_process_given_the_signal_is_killed_when_the_call_is_given_up() {
    let pool = start_one(node(WireCodec::Json)).await;
    let pid = pool.worker_pids()[0];
    let err = call_with(
        &pool,
        "child",
        json!({}),
        CallOptions::new().timeout(Duration::from_millis(1500)),
    )
    .await
    .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let state = state_when(&pool, 200, |s| !s["childEnd"].is_null()).await;
    assert_eq!(state["childEnd"], "error AbortError", "{state}");
    let child = state["childPid"].as_u64().expect("a child pid") as u32;
    let deadline = Instant::now() + Duration::from_secs(10);
    while snakepit_tests::alive(child) {
        assert!(
            Instant::now() < deadline,
            "the child {child} outlived its call"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    kept_then_shut_down(&pool, pid, "after the child").await;
}
