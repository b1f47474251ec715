//! An outside tester's audit of bridges/python/README.md, the README of the
//! Python worker-side bridge: its examples run as written, and what it
//! promises handler authors (the ways to register a handler, the two
//! modes, `ctx.worker` and `ctx.logger`, raising `Cancelled`, cancellation
//! in asyncio mode, the session helpers and failed host calls, what a
//! handler leaves behind, the order of what handlers print, the generic
//! commands, after-fork hooks), shown through real pools of real Python
//! workers (`snakepit_adapters::Bridge::python`), or, for what concerns the
//! worker alone, by running the script directly.
//!
//! What other files already show is not repeated here: results a codec
//! cannot carry, exceptions of every kind, `sys.exit`, stdin and stdout
//! protection (outside_handler_results.rs), wrongly typed request fields
//! and host replies without `success: true` at the wire
//! (outside_bridge_fields.rs), SIGINT races, swallowed cancellations and
//! emits after a cancellation (outside_signal_races.rs), the context's
//! fields (crates/core/tests/context_promises.rs), after-fork hook order and
//! preloading (preload_*.rs, outside_preload.rs).
//!
//! The workers are `tests/workers/outside_python_readme.py` (the README's
//! first example, verbatim), `outside_python_readme_preload.py` (its
//! preloading example, verbatim, with the functions it calls defined) and
//! `outside_python_readme_handlers.py` (`OPR_MODE` picks the mode), and
//! `outside_python_readme_tracing.py` (an OpenTelemetry SDK set up).

mod common;
mod raw_frames;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::readme::{self, call, call_with, stream_of, the_same_worker, with_session_store, HANG};
use common::{on_every_worker, worker};
use futures::StreamExt;
use raw_frames::Peer;
use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{
    Adapter, CallOptions, Error, HostCall, Pool, PoolBuilder, RemoteError, StreamItem, WireCodec,
};
use snakepit_tests::{eventually, python, workspace_root, Events};

const CODECS: [WireCodec; 2] = [WireCodec::Json, WireCodec::MsgPack];

/// The README under audit.
fn readme() -> String {
    std::fs::read_to_string(workspace_root().join("bridges/python/README.md"))
        .expect("bridges/python/README.md")
}

/// The `n`th (0-based) fenced ```` ```python ```` block of the README.
fn python_block(n: usize) -> String {
    let text = readme();
    let block = text
        .split("```python\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("\n```").map(|(code, _)| code))
        .nth(n)
        .unwrap_or_else(|| panic!("the README has {} python blocks", n + 1));
    format!("{block}\n")
}

fn readme_worker(codec: WireCodec) -> Bridge {
    Bridge::python(worker("outside_python_readme.py"))
        .interpreter(python())
        .codec(codec)
}

/// The README's preloading example, writing its notes to `notes`, with
/// preloading or without.
fn preloading_example(notes: &Path, preload: bool) -> Bridge {
    let bridge = Bridge::python(worker("outside_python_readme_preload.py"))
        .interpreter(python())
        .env("OPR_NOTES", notes.display().to_string());
    preloading(bridge, preload)
}

/// `bridge`, with preloading or without.
fn preloading(bridge: Bridge, preload: bool) -> Bridge {
    if preload {
        bridge.preload()
    } else {
        bridge
    }
}

/// The handlers script in `mode` ("sync", "async" or "threads").
fn handlers(mode: &str) -> Bridge {
    Bridge::python(worker("outside_python_readme_handlers.py"))
        .interpreter(python())
        .env("OPR_MODE", mode)
}

/// The shared room for a loaded machine and, besides, a grace period in
/// which a handler that stops late on a loaded machine is not killed.
fn roomy(builder: PoolBuilder) -> PoolBuilder {
    builder.configure(|c| c.shutdown_grace_period = Duration::from_secs(10))
}

async fn start(builder: PoolBuilder) -> Pool {
    readme::start(roomy(builder)).await
}

async fn start_one(bridge: Bridge) -> Pool {
    start(Pool::builder(bridge).size(1)).await
}

/// Runs `body(pool, pid, mode, codec, what)` on a fresh one-worker pool
/// of the handlers script (worker `pid`) in each of the modes "sync" and
/// "async" and each codec (`what` names the two), then checks that the
/// worker was kept and shuts the pool down.
async fn in_each_mode_and_codec<F, Fut>(body: F)
where
    F: Fn(Pool, u32, &'static str, WireCodec, String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for mode in ["sync", "async"] {
        for codec in CODECS {
            let what = format!("{mode} {codec:?}");
            let pool = start_one(handlers(mode).codec(codec)).await;
            let pid = pool.worker_pids()[0];
            body(pool.clone(), pid, mode, codec, what.clone()).await;
            the_same_worker(&pool, pid, &what);
            pool.shutdown().await.unwrap();
        }
    }
}

async fn ok(pool: &Pool, command: &str, args: Value) -> Value {
    call(pool, command, args.clone())
        .await
        .unwrap_or_else(|e| panic!("{command} {args}: {e:?}"))
}

/// Checks that the only worker, still `pid`, serves the next call and that
/// nothing crashed or restarted, then shuts `pool` down.
async fn serves_on_then_shut_down(pool: &Pool, pid: u32, what: &str) {
    ok(pool, "bare", json!({})).await;
    the_same_worker(pool, pid, what);
    pool.shutdown().await.unwrap();
}

/// The failed reply of the worker's own that `command` gets.
async fn remote(pool: &Pool, command: &str, args: Value) -> RemoteError {
    let err = call(pool, command, args)
        .await
        .expect_err(&format!("{command} succeeded"));
    err.remote()
        .unwrap_or_else(|| panic!("{command}: not a failed reply but {err:?}"))
        .clone()
}

/// Checks that `command` is answered `UnknownCommand`.
async fn unknown(pool: &Pool, command: &str, what: &str) {
    let e = remote(pool, command, json!({})).await;
    assert_eq!(
        e.kind.as_deref(),
        Some("UnknownCommand"),
        "{what} {command}: {e:?}"
    );
}

/// The chunks and the final result of a streaming call.
async fn stream(pool: &Pool, command: &str, args: Value) -> (Vec<Value>, Value) {
    let mut s = stream_of(pool, command, args).await;
    let mut chunks = Vec::new();
    loop {
        let item = tokio::time::timeout(HANG, s.next())
            .await
            .unwrap_or_else(|_| panic!("{command}: the stream hung"));
        match item {
            Some(Ok(StreamItem::Chunk(c))) => chunks.push(c),
            Some(Ok(StreamItem::Done(r))) => return (chunks, r),
            Some(Ok(other)) => panic!("{command}: {other:?}"),
            Some(Err(e)) => panic!("{command}: {e:?} after {chunks:?}"),
            None => panic!("{command}: the stream ended without a result after {chunks:?}"),
        }
    }
}

/// A file for notes a worker writes, in a fresh directory removed when
/// this is dropped.
struct Notes {
    dir: PathBuf,
    file: PathBuf,
}

impl std::ops::Deref for Notes {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.file
    }
}

impl Drop for Notes {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch(name: &str) -> Notes {
    let dir = std::env::temp_dir().join(format!("opr-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("notes");
    Notes { dir, file }
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The first JSON line the worker wrote to `path`, waited for.
async fn first_note(path: &Path, what: &str) -> Value {
    assert!(
        eventually(20, || !lines_of(path).is_empty()).await,
        "{what}: the handler wrote nothing to {}",
        path.display()
    );
    serde_json::from_str(&lines_of(path)[0]).unwrap()
}

/// Waits until the worker `pid` logged a line for which `pred` holds;
/// returns that line.
async fn logged(pid: u32, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let events = Events::global();
    let find = || {
        events
            .lines("snakepit::worker", pid)
            .into_iter()
            .find(|l| pred(l))
    };
    assert!(
        eventually(10, || find().is_some()).await,
        "{what}: not in the log of {pid}: {:?}",
        events.lines("snakepit::worker", pid)
    );
    find().unwrap()
}

// ---------------------------------------------------------------------------
// The examples, as written

/// The task: "check the code examples in that README actually run as
/// written". The scripts the tests below run are the README's blocks:
/// `outside_python_readme.py` is its first block ("## A worker") byte for
/// byte, and `outside_python_readme_preload.py` holds its second ("##
/// Preloading") unchanged, between the definitions of the functions it
/// calls and a command that reports. A README edit that the scripts do not
/// follow fails here.
#[test]
fn the_scripts_run_here_are_the_readmes_examples_verbatim() {
    let first = std::fs::read_to_string(worker("outside_python_readme.py")).unwrap();
    assert_eq!(first, python_block(0), "the first example");
    let preload = std::fs::read_to_string(worker("outside_python_readme_preload.py")).unwrap();
    assert!(
        preload.contains(&python_block(1)),
        "the preloading example, verbatim:\n{}",
        python_block(1)
    );
}

/// bridges/python/README.md, "A worker": the example, as written, in a
/// pool, in both codecs. Its comments are promises: "print() is safe: the
/// bridge sends it to stderr (the pool's log)"; "Partial results reach
/// callers that asked for a stream"; "An exception becomes a failed reply:
/// {"type": "ZeroDivisionError", "message": "division by zero",
/// "traceback": "..."}"; and `ctx.logger` is "a `logging` logger writing to
/// stderr, messages prefixed with the request id". So: `greet` answers
/// with and without a name and its print reaches the worker's log; `count`
/// streams 1..n then `{"counted": n}` to a streaming caller and only the
/// result to `execute`; `divide` returns the quotient, and by zero fails
/// with exactly that type and message and a traceback naming the handler,
/// its logger line in the log; the worker serves on throughout. And, as
/// "Preloading" says ("The script does not change"), the same in a
/// preloaded pool, whose worker is forked from a template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_worker_serves_its_commands_as_its_comments_say() {
    let _ = Events::global();
    for (codec, preload) in [
        (WireCodec::Json, false),
        (WireCodec::MsgPack, false),
        (WireCodec::Json, true),
        (WireCodec::MsgPack, true),
    ] {
        let what = format!("{codec:?}, preload {preload}");
        let pool = start_one(preloading(readme_worker(codec), preload)).await;
        let pid = pool.worker_pids()[0];

        let r = ok(&pool, "greet", json!({"name": "Ada"})).await;
        assert_eq!(r, json!({"greeting": "Hello, Ada!"}), "{what}");
        let r = ok(&pool, "greet", json!({})).await;
        assert_eq!(r, json!({"greeting": "Hello, world!"}), "{what}");
        logged(pid, &what, |l| l == "greeting Ada").await;
        logged(pid, &what, |l| l == "greeting None").await;

        let (chunks, done) = stream(&pool, "count", json!({"to": 3})).await;
        assert_eq!(chunks, [json!(1), json!(2), json!(3)], "{what}");
        assert_eq!(done, json!({"counted": 3}), "{what}");
        let (chunks, done) = stream(&pool, "count", json!({"to": 0})).await;
        assert_eq!((chunks, done), (vec![], json!({"counted": 0})), "{what}");
        let r = ok(&pool, "count", json!({"to": 4})).await;
        assert_eq!(r, json!({"counted": 4}), "{what}: not streaming");

        let r = ok(&pool, "divide", json!({"a": 1, "b": 4})).await;
        assert_eq!(r, json!(0.25), "{what}");
        let e = remote(&pool, "divide", json!({"a": 1, "b": 0})).await;
        assert_eq!(
            (e.kind.as_deref(), e.message.as_str()),
            (Some("ZeroDivisionError"), "division by zero"),
            "{what}: {e:?}"
        );
        let tb = e.traceback.clone().unwrap_or_default();
        assert!(
            tb.contains("in divide") && tb.contains("ZeroDivisionError"),
            "{what}: a traceback naming the handler: {tb}"
        );
        let line = logged(pid, &what, |l| l.contains("dividing 1 by 0")).await;
        assert!(
            line.contains("[req "),
            "{what}: prefixed with the request id: {line}"
        );

        the_same_worker(&pool, pid, &what);
        pool.shutdown().await.unwrap();
    }
}

/// bridges/python/README.md, "A worker": `worker.run()  # serves until the
/// pool closes stdin, then exits 0`; "Output and signals": "EOF on stdin
/// end[s] the worker with exit code 0 (on EOF it first finishes the
/// requests it is running)". The example run directly: a `count` request
/// written and stdin closed at once still gets its chunks and its reply,
/// then the worker exits 0; and an idle one sent SIGTERM exits 0 too; in
/// both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_worker_run_directly_answers_then_exits_0_when_stdin_closes() {
    for codec in CODECS {
        let bridge = readme_worker(codec);
        bridge.check().expect("the bundled bridge is written");
        let mut peer = Peer::spawn(bridge.launch(), codec, format!("{codec:?}")).await;
        peer.send(&json!({"id": 7, "command": "count", "args": {"to": 2}, "stream": true}))
            .await;
        let (frames, code) = peer.finish().await;
        let shapes: Vec<Value> = frames
            .iter()
            .map(|f| json!([f["type"], f["id"], f.get("data").or(f.get("result"))]))
            .collect();
        assert_eq!(
            shapes,
            [
                json!(["chunk", 7, 1]),
                json!(["chunk", 7, 2]),
                json!([null, 7, {"counted": 2}])
            ],
            "{codec:?}: {frames:?}"
        );
        assert_eq!(code, Some(0), "{codec:?}: the exit code");

        // "SIGTERM and EOF on stdin end the worker with exit code 0."
        let peer = Peer::spawn(readme_worker(codec).launch(), codec, format!("{codec:?}")).await;
        sigterm(peer.process.pid());
        let (frames, code) = peer.finish().await;
        assert_eq!((frames, code), (vec![], Some(0)), "{codec:?}: SIGTERM");
    }
}

fn sigterm(pid: u32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a worker process this test started.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

/// bridges/python/README.md, "Preloading": the example, as written (with
/// the functions it calls defined), in a pool of two workers with and
/// without preloading. "Hooks run in registration order in every worker
/// before its first call, in a pool without preloading too, so a script
/// works either way"; "a model loaded at module level is loaded once"
/// with preloading (`MODEL = load_model(...)  # once, in the template`).
/// So: with preloading the model is loaded once, in the template, and both
/// workers hold that one; without, each worker loads its own. Either way
/// each worker ran the hook once, before serving, in its own process, and
/// its metrics thread is alive there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preloading_example_works_with_and_without_preloading() {
    for preload in [true, false] {
        let what = format!("preload {preload}");
        let notes = scratch(&format!("preload-{preload}"));
        let pool = start(Pool::builder(preloading_example(&notes, preload)).size(2)).await;
        let mut pids = pool.worker_pids();
        pids.sort();
        let template = pool.template_pid();
        assert_eq!(template.is_some(), preload, "{what}");

        for r in on_every_worker(&pool, "state").await {
            let pid = r["pid"].as_u64().unwrap();
            assert_eq!(
                r["db_pid"], pid,
                "{what}: connected in its own process: {r}"
            );
            assert_eq!(r["metrics_pid"], pid, "{what}: its own thread: {r}");
            assert_eq!(r["metrics_alive"], true, "{what}: {r}");
            let loaded_in = u64::from(template.unwrap_or(pid as u32));
            assert_eq!(r["model"]["loaded_in"], loaded_in, "{what}: {r}");
            assert_eq!(r["model"]["model"], "model.bin", "{what}: {r}");
        }

        let notes = lines_of(&notes);
        let count = |line: &str| notes.iter().filter(|l| *l == line).count();
        match template {
            Some(t) => assert_eq!(count(&format!("load_model {t}")), 1, "{what}: {notes:?}"),
            None => {
                for pid in &pids {
                    assert_eq!(count(&format!("load_model {pid}")), 1, "{what}: {notes:?}");
                }
            }
        }
        let loads = notes.iter().filter(|l| l.starts_with("load_model")).count();
        assert_eq!(loads, if preload { 1 } else { 2 }, "{what}: {notes:?}");
        for pid in &pids {
            let mine: Vec<&str> = notes
                .iter()
                .filter(|l| l.ends_with(&format!(" {pid}")) && !l.starts_with("load_model"))
                .map(String::as_str)
                .collect();
            assert_eq!(
                mine,
                [
                    format!("connect_to_database {pid}"),
                    format!("start_metrics_thread {pid}")
                ],
                "{what}: the hook ran once in {pid}: {notes:?}"
            );
        }
        pool.shutdown().await.unwrap();
    }
}

/// bridges/python/README.md, "Preloading": "A forked worker exits when it
/// is done serving, without returning into your script after
/// `worker.run()`." The preloading example's script notes `after_run` in
/// the line after `worker.run()`. A pool of two workers, shut down (stdin
/// closed, the workers exit): with preloading neither the workers nor the
/// template ever get there; without, where `run()` returns at end of input,
/// both workers do (which shows the note would be seen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_worker_never_returns_into_the_script_after_run() {
    for preload in [true, false] {
        let notes = scratch(&format!("after-run-{preload}"));
        let pool = start(Pool::builder(preloading_example(&notes, preload)).size(2)).await;
        let mut pids = pool.worker_pids();
        on_every_worker(&pool, "state").await;
        pool.shutdown().await.unwrap();
        let mut after: Vec<u32> = lines_of(&notes)
            .iter()
            .filter_map(|l| l.strip_prefix("after_run "))
            .map(|p| p.parse().unwrap())
            .collect();
        after.sort();
        pids.sort();
        let expected = if preload { vec![] } else { pids };
        assert_eq!(after, expected, "preload {preload}: {:?}", lines_of(&notes));
    }
}

// ---------------------------------------------------------------------------
// Handlers and modes

/// bridges/python/README.md, "Handlers": "`@worker.command("name")` (or
/// `@worker.command` to use the function's name, or
/// `worker.register("name", fn)`) accepts: `def handler(args, ctx)` or
/// `def handler(args)` ...; `async def handler(args, ctx)` or `async def
/// handler(args)`." "Concurrency": "Only plain functions (the default):
/// one request at a time, in the main thread ... The worker declares
/// `max_concurrency: 1`"; "Any `async def` handler, or
/// `Worker(max_concurrency=N)` with N > 1: ... up to `max_concurrency`
/// requests at once (8 by default in this mode). Plain functions then run
/// on a pool of threads". The context table: "`ctx.worker` | the `Worker`".
/// Through pools in the three set-ups: every registration form is served
/// under the name it gives (and the function's own name, for a form that
/// gives another, is an unknown command); plain functions run in the main
/// thread only in the default mode; the pool sees the capacity declared
/// (1, 8, 3); `ctx.worker` is the script's `Worker` and its id is the
/// pool's id of the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_registration_form_is_served_in_the_thread_and_capacity_its_mode_says() {
    let _ = Events::global();
    for (mode, capacity) in [("sync", 1u32), ("async", 8), ("threads", 3)] {
        let pool = start_one(handlers(mode)).await;
        let info = pool.workers()[0].clone();
        assert_eq!(
            info.capacity, capacity,
            "{mode}: the declared max_concurrency"
        );
        let plain_in_main = mode == "sync";
        let mut forms = vec![
            ("bare", plain_in_main),
            ("named_ctx", plain_in_main),
            ("registered_name", plain_in_main),
        ];
        if mode == "async" {
            // Coroutines run on the loop, in the main thread.
            forms.extend([("coro", true), ("coro_ctx", true)]);
        }
        for (command, main_thread) in forms {
            let r = ok(&pool, command, json!({})).await;
            assert_eq!(r["main_thread"], main_thread, "{mode} {command}: {r}");
            assert_eq!(r["pid"], info.pid, "{mode} {command}: {r}");
            if let Some(name) = r.get("command") {
                assert_eq!(name, command, "{mode}: ctx.command");
            }
        }
        for unregistered in ["some_other_name", "registered", "coro_with_ctx"] {
            unknown(&pool, unregistered, mode).await;
        }

        let r = ok(&pool, "whoami", json!({"token": format!("tok-{mode}")})).await;
        assert_eq!(r["worker_is_the_worker"], true, "{mode}: {r}");
        assert_eq!(r["worker_id"], info.id.as_str(), "{mode}: {r}");
        assert_eq!(r["workers_id"], info.id.as_str(), "{mode}: {r}");
        let rid = r["request_id"].as_u64().unwrap();
        let line = logged(info.pid, mode, |l| {
            l.ends_with(&format!("whoami tok-{mode}"))
        })
        .await;
        assert!(
            line.contains(&format!("[req {rid}] whoami tok-{mode}")),
            "{mode}: the logger's line is prefixed with its request id {rid}: {line}"
        );
        the_same_worker(&pool, info.pid, mode);
        pool.shutdown().await.unwrap();
    }
}

/// `n` calls of `command` at once; each must succeed (the handlers wait
/// until all `n` run at once, or fail).
async fn all_at_once(pool: &Pool, command: &str, n: usize, key: &str) {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let (pool, command) = (pool.clone(), command.to_owned());
            let args = json!({"key": key, "n": n});
            tokio::spawn(async move { call(&pool, &command, args).await })
        })
        .collect();
    for c in calls {
        let r = c.await.unwrap();
        assert!(r.is_ok(), "{command} x{n}: {r:?}");
    }
}

/// bridges/python/README.md, "Concurrency": in asyncio mode "the worker
/// runs an asyncio loop and up to `max_concurrency` requests at once (8 by
/// default in this mode). Plain functions then run on a pool of threads".
/// Through the pool, on one worker: with `Worker(max_concurrency=3)` three
/// plain calls run at the same time (each waits at a barrier for the
/// others); with an `async def` handler registered, eight coroutines and
/// eight plain functions do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncio_mode_runs_max_concurrency_calls_at_once_plain_or_async() {
    let pool = start_one(handlers("threads")).await;
    all_at_once(&pool, "together", 3, "threads").await;
    pool.shutdown().await.unwrap();

    let pool = start_one(handlers("async")).await;
    all_at_once(&pool, "together_async", 8, "coroutines").await;
    all_at_once(&pool, "together", 8, "plain").await;
    let pid = pool.worker_pids()[0];
    the_same_worker(&pool, pid, "async");
    pool.shutdown().await.unwrap();
}

/// bridges/python/README.md, "Cancellation": "A handler may also raise
/// `snakepit_bridge.Cancelled` itself." With no deadline passed and no
/// signal, such a call is answered `Cancelled`, which the caller gets as
/// `Error::Cancelled` (docs/bridges.md: "`Error::Cancelled` means the
/// worker itself replied `Cancelled`"), from a plain function in the main
/// thread, from one on asyncio mode's threads, and from a coroutine; the
/// worker serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_raising_cancelled_itself_is_answered_cancelled_in_both_modes() {
    for (mode, commands) in [
        ("sync", &["raise_cancelled"][..]),
        ("async", &["raise_cancelled", "raise_cancelled_async"][..]),
    ] {
        let pool = start_one(handlers(mode)).await;
        let pid = pool.worker_pids()[0];
        for command in commands {
            let r = call(&pool, command, json!({})).await;
            assert!(
                matches!(r, Err(Error::Cancelled)),
                "{mode} {command}: {r:?}"
            );
        }
        serves_on_then_shut_down(&pool, pid, mode).await;
    }
}

/// bridges/python/README.md, "Cancellation": "in asyncio mode it sends a
/// `cancel` frame: an `async def` handler's task is cancelled
/// (`asyncio.CancelledError` at its current `await`); a plain function on a
/// thread cannot be interrupted, so it should poll `ctx.cancelled` /
/// `ctx.check_cancelled()`"; and in the default mode "the running handler
/// gets `KeyboardInterrupt` at once (also inside `time.sleep` ...)". Each
/// handler would run 20 s; its deadline is 300 ms. The caller gets
/// `CallTimeout`; the coroutine sees `CancelledError` at its `await` (with
/// `ctx.cancelled` set), the polling plain function stops on a thread, the
/// default mode's stops in the main thread, each long before its 20 s; and
/// the worker is neither killed nor replaced and serves the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_stop_coroutines_at_their_await_and_plain_functions_that_poll() {
    let deadline = CallOptions::new().timeout(Duration::from_millis(300));
    for (mode, command, main_thread) in [
        ("async", "await_cancel", None),
        ("async", "poll_cancel", Some(false)),
        ("threads", "poll_cancel", Some(false)),
        ("sync", "poll_cancel", Some(true)),
    ] {
        let what = format!("{mode} {command}");
        let pool = start_one(handlers(mode)).await;
        let pid = pool.worker_pids()[0];
        let notes = scratch(&format!("{mode}-{command}"));
        let args = json!({"notes": notes.display().to_string()});
        let r = call_with(&pool, command, args, deadline.clone()).await;
        assert!(matches!(r, Err(Error::CallTimeout { .. })), "{what}: {r:?}");
        let note = first_note(&notes, &what).await;
        match main_thread {
            None => assert_eq!(
                note,
                json!({"cancelled_error": true, "ctx_cancelled": true}),
                "{what}"
            ),
            Some(main) => {
                assert_eq!(note["cancelled"], true, "{what}: {note}");
                assert_eq!(note["main_thread"], main, "{what}: {note}");
                let ran = note["ran_for"].as_f64().unwrap();
                assert!(ran < 15.0, "{what}: stopped long before its end: {note}");
            }
        }
        serves_on_then_shut_down(&pool, pid, &what).await;
    }
}

/// bridges/python/README.md, the context table: "`ctx.timeout_ms` |
/// milliseconds the caller had left when the pool sent the request (an
/// `int` >= 0), or `None`; a call written ahead has waited behind the one
/// before it since" (protocol.md: "milliseconds left before the caller
/// gives up, when the pool wrote the request"). A call with a 10 s
/// deadline submitted while a 1.5 s call runs on the only worker, of a
/// pool that writes calls ahead to a worker whose recent calls were short
/// (`pipeline_max_call` raised to 5 s so that the 1.5 s call counts as
/// short): it is written at once, so `ctx.timeout_ms` says about 10 s,
/// though its handler starts about 1.5 s after submission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_ms_is_what_the_caller_had_left_when_a_call_written_ahead_was_sent() {
    let builder = Pool::builder(handlers("sync")).size(1).configure(|c| {
        c.pipeline_max_call = Duration::from_secs(5);
    });
    let pool = start(builder).await;
    for _ in 0..5 {
        ok(&pool, "nap", json!({"ms": 0})).await;
    }
    let deadline = Duration::from_secs(10);
    let long = {
        let pool = pool.clone();
        tokio::spawn(async move { call(&pool, "nap", json!({"ms": 1500})).await })
    };
    assert!(
        eventually(20, || pool.stats().in_flight >= 1).await,
        "the long call never got in flight"
    );
    let submitted = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let r = call_with(
        &pool,
        "time_left",
        json!({}),
        CallOptions::new().timeout(deadline),
    )
    .await
    .unwrap();
    long.await.unwrap().unwrap();
    let waited_ms = (r["started_at"].as_f64().unwrap() - submitted) * 1000.0;
    let said = r["timeout_ms"].as_u64().expect("an int") as f64;
    assert!(
        waited_ms > 500.0,
        "the handler started {waited_ms:.0} ms after submission, behind the long call"
    );
    // Written ahead at once: what was left then, not at the handler's start.
    assert!(
        said <= 10_000.0 && said > 10_000.0 - waited_ms / 2.0,
        "ctx.timeout_ms said {said} ms; the handler started {waited_ms:.0} ms after submission"
    );
    pool.shutdown().await.unwrap();
}

/// bridges/python/README.md, "Cancellation", asyncio mode: "A plain
/// function still waiting for a free slot is answered `Cancelled` at once
/// and never runs." The handlers script with `Worker(max_concurrency=3)`
/// run directly: three calls of 1.5 s fill its slots, a fourth (a handler
/// that would note that it ran) waits for one, and is cancelled: its
/// `Cancelled` reply is the first reply, ahead of the three running calls'
/// (which still succeed), and it never runs, not even once a slot is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_call_waiting_for_a_slot_is_answered_cancelled_at_once_and_never_runs() {
    let notes = scratch("waiting-for-a-slot");
    let bridge = handlers("threads");
    bridge.check().expect("the bundled bridge is written");
    let mut peer = Peer::spawn(bridge.launch(), WireCodec::Json, "threads".into()).await;
    for id in 1..=3 {
        peer.send(&json!({"id": id, "command": "nap", "args": {"ms": 1500}}))
            .await;
    }
    let args = json!({"notes": notes.display().to_string()});
    peer.send(&json!({"id": 4, "command": "poll_cancel", "args": args}))
        .await;
    peer.send(&json!({"type": "cancel", "id": 4})).await;
    let first = peer.recv().await;
    assert_eq!(
        first["id"], 4,
        "the cancelled call is answered first: {first}"
    );
    assert_eq!(first["error"]["type"], "Cancelled", "{first}");
    let mut rest = Vec::new();
    for _ in 0..3 {
        rest.push(peer.recv().await);
    }
    let mut ids: Vec<u64> = rest.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3], "{rest:?}");
    assert!(rest.iter().all(|r| r["success"] == true), "{rest:?}");
    let (frames, code) = peer.finish().await;
    assert_eq!((frames, code), (vec![], Some(0)));
    assert_eq!(lines_of(&notes), Vec::<String>::new(), "it never ran");
}

// ---------------------------------------------------------------------------
// Host calls and the session

/// The session store of docs/bridges.md ("Host functions and the session
/// store"), in memory, and three more host functions: `boom` fails with a
/// typed error, `untyped` with an error without a type.
fn with_host_functions(builder: PoolBuilder) -> PoolBuilder {
    with_session_store(builder)
        .host_function("boom", |_call| async move {
            Err::<Value, _>(RemoteError::new("Boom", "bad thing"))
        })
        .host_function("untyped", |_call| async move {
            Err::<Value, _>(RemoteError {
                kind: None,
                message: "no type given".into(),
                traceback: None,
            })
        })
}

/// bridges/python/README.md, the context table: "`ctx.session.get(key)`,
/// `.set(key, value)`, `.delete(key)` | the session store, via host calls
/// `session.get/set/delete` (`aget`/`aset`/`adelete` in async handlers)";
/// "`ctx.call_host(function, args)` | ... returns its result or raises
/// `snakepit_bridge.HostCallError` (with `.type`, `.message`)"; "`await
/// ctx.acall_host(function, args)` | the same, in `async def` handlers";
/// "A failed host call whose reply gives no error type raises
/// `HostCallError` with `.type` `"HostError"`"; "Concurrency": "In async
/// handlers use `await ctx.acall_host(...)` and `ctx.session.aget(...)`;
/// the blocking forms raise there." Through a pool with the in-memory
/// store, in a session: a value set is read back, deleted (the host's
/// answer, whether it existed, comes back), and gone, from a plain
/// function and from a coroutine; a host function failing with a typed
/// error, one failing without a type, and one nobody registered give
/// `HostCallError`s of types `Boom`, `HostError` and `UnknownFunction`
/// with the host's messages; in a coroutine, `ctx.session.get` and
/// `ctx.call_host` raise (`RuntimeError`, naming the async form to use).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_helpers_and_failed_host_calls_behave_as_documented_in_both_modes() {
    let value = json!({"nested": [1, "two", null], "s": "é"});
    let expected = json!({
        "before": null, "after": value, "deleted": true, "deleted_again": false, "gone": null
    });
    let failures = json!({"functions": ["boom", "untyped", "nobody"]});
    for (mode, session_command, host_command) in [
        ("sync", "session_plain", "host_failures"),
        ("async", "session_plain", "host_failures"),
        ("async", "session_async", "host_failures_async"),
    ] {
        let what = format!("{mode} {session_command}");
        let pool = start(with_host_functions(Pool::builder(handlers(mode)).size(1))).await;
        let args = json!({"key": "k", "value": value});
        let options = CallOptions::new()
            .session("s-1")
            .timeout(Duration::from_secs(30));
        let r = call_with(&pool, session_command, args, options)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        let blocking = r.get("blocking").cloned();
        let mut r = r;
        r.as_object_mut().unwrap().remove("blocking");
        assert_eq!(r, expected, "{what}");
        if let Some(blocking) = blocking {
            assert_eq!(blocking["get"][0], "RuntimeError", "{what}: {blocking}");
            assert!(
                blocking["get"][1].as_str().unwrap().contains("aget"),
                "{what}: {blocking}"
            );
            assert_eq!(
                blocking["call_host"][0], "RuntimeError",
                "{what}: {blocking}"
            );
            assert!(
                blocking["call_host"][1]
                    .as_str()
                    .unwrap()
                    .contains("acall_host"),
                "{what}: {blocking}"
            );
        }

        let r = ok(&pool, host_command, failures.clone()).await;
        assert_eq!(
            r["boom"],
            json!(["HostCallError", "Boom", "bad thing"]),
            "{what}: {r}"
        );
        assert_eq!(
            r["untyped"],
            json!(["HostCallError", "HostError", "no type given"]),
            "{what}: {r}"
        );
        assert_eq!(r["nobody"][0], "HostCallError", "{what}: {r}");
        assert_eq!(r["nobody"][1], "UnknownFunction", "{what}: {r}");
        let pid = pool.worker_pids()[0];
        the_same_worker(&pool, pid, &what);
        pool.shutdown().await.unwrap();
    }
}

/// bridges/python/README.md, "Cancellation": "in asyncio mode it sends a
/// `cancel` frame: an `async def` handler's task is cancelled
/// (`asyncio.CancelledError` at its current `await`)", here an `await
/// ctx.acall_host(...)`; and `await ctx.acall_host(function, args)` is "the
/// same [as `call_host`], in `async def` handlers": it returns the host
/// function's result. (outside_signal_races.rs shows the default mode.) In
/// asyncio mode, a coroutine and a plain function (on a thread) each wait
/// for a host function that answers after 1.5 s, with a 300 ms deadline:
/// the caller gets `CallTimeout`, the coroutine gets `CancelledError` at its
/// `await`, the late answer is not taken for any later host call (each of
/// the next calls, some made before the late answer comes, gets its own),
/// and the worker is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_during_a_host_call_in_asyncio_mode_leaves_later_host_calls_their_own() {
    for command in ["ask_async", "ask"] {
        let builder = Pool::builder(handlers("async")).size(1).host_function(
            "slow",
            |call: HostCall| async move {
                let ms = call.args["ms"].as_u64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<_, RemoteError>(call.args["tag"].clone())
            },
        );
        let pool = start(builder).await;
        let pid = pool.worker_pids()[0];
        let notes = scratch(&format!("host-{command}"));
        let args = json!({
            "function": "slow", "with": {"ms": 1500, "tag": "stale"},
            "notes": notes.display().to_string()
        });
        let deadline = CallOptions::new().timeout(Duration::from_millis(300));
        let r = call_with(&pool, command, args, deadline).await;
        assert!(
            matches!(r, Err(Error::CallTimeout { .. })),
            "{command}: {r:?}"
        );
        let note = first_note(&notes, command).await;
        if command == "ask_async" {
            assert_eq!(note, json!({"raised": "CancelledError"}), "{command}");
        }
        for i in 0..4 {
            let args = json!({"function": "slow", "with": {"ms": 300 * (i % 2), "tag": i}});
            let r = ok(&pool, command, args).await;
            assert_eq!(r, json!({"answer": i, "pid": pid}), "{command}: call {i}");
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let args = json!({"function": "slow", "with": {"ms": 0, "tag": "last"}});
        let r = ok(&pool, command, args).await;
        assert_eq!(r, json!({"answer": "last", "pid": pid}), "{command}");
        the_same_worker(&pool, pid, command);
        pool.shutdown().await.unwrap();
    }
}

/// bridges/python/README.md, the context table: "`ctx.call_host(function,
/// args)` | ... `ConnectionError` once stdin is closed"; "`await
/// ctx.acall_host(function, args)` | the same"; "Output and signals": "on
/// EOF it first finishes the requests it is running". The handlers script
/// run directly: a request whose handler calls the host, written just
/// before stdin is closed, is answered with a failed reply of type
/// `ConnectionError` (its `host_call` frame may go out first), and the
/// worker exits 0: in the default mode, and in asyncio mode from a plain
/// function on a thread and from a coroutine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_call_after_stdin_closed_raises_connection_error_and_the_worker_exits_0() {
    for (mode, command) in [("sync", "ask"), ("async", "ask"), ("async", "ask_async")] {
        let what = format!("{mode} {command}");
        let bridge = handlers(mode);
        bridge.check().expect("the bundled bridge is written");
        let mut peer = Peer::spawn(bridge.launch(), WireCodec::Json, what.clone()).await;
        let args = json!({"function": "anything", "with": {}});
        peer.send(&json!({"id": 3, "command": command, "args": args}))
            .await;
        let (frames, code) = peer.finish().await;
        let replies: Vec<&Value> = frames.iter().filter(|f| f.get("type").is_none()).collect();
        assert_eq!(replies.len(), 1, "{what}: one reply: {frames:?}");
        assert_eq!(replies[0]["id"], 3, "{what}: {frames:?}");
        assert_eq!(replies[0]["success"], false, "{what}: {frames:?}");
        assert_eq!(
            replies[0]["error"]["type"], "ConnectionError",
            "{what}: {frames:?}"
        );
        assert!(
            frames
                .iter()
                .all(|f| f.get("type").is_none() || f["type"] == "host_call"),
            "{what}: {frames:?}"
        );
        assert_eq!(code, Some(0), "{what}: the exit code");
    }
}

// ---------------------------------------------------------------------------
// What a handler leaves behind

/// bridges/python/README.md, the context table: "`ctx.emit(data)` | send a
/// partial result (a `chunk` frame); returns `False` and sends nothing ...
/// once the call was answered or cancelled (a task or thread the handler
/// left behind)". A streaming call's handler leaves a thread (plain
/// function, both modes) or a task (coroutine) emitting every 20 ms for a
/// second and returns after its first emit. The caller's chunks are
/// exactly those whose `emit` returned `True` (nothing it sent is lost,
/// nothing it did not send arrives); every `True` precedes every `False`;
/// once the call was answered, `emit` returned `False`; and the worker
/// serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_from_what_a_handler_left_behind_returns_false_once_the_call_is_answered() {
    for (mode, command) in [
        ("sync", "leave_thread"),
        ("async", "leave_thread"),
        ("async", "leave_task"),
    ] {
        let what = format!("{mode} {command}");
        let pool = start_one(handlers(mode)).await;
        let pid = pool.worker_pids()[0];
        let notes = scratch(&format!("{mode}-{command}"));
        let args = json!({"notes": notes.display().to_string(), "secs": 1.0});
        let (chunks, done) = stream(&pool, command, args).await;
        assert_eq!(done, json!({"left": true}), "{what}");
        ok(&pool, "bare", json!({})).await;
        let results: Vec<bool> = serde_json::from_value(first_note(&notes, &what).await).unwrap();
        let sent = results.iter().take_while(|r| **r).count();
        assert!(
            sent >= 1,
            "{what}: the first emit, before the reply, was sent: {results:?}"
        );
        assert!(
            results[sent..].iter().all(|r| !r),
            "{what}: once False, always False: {results:?}"
        );
        assert!(
            results.len() > sent,
            "{what}: emits after the reply returned False: {results:?}"
        );
        let expected: Vec<Value> = (0..sent).map(|i| json!(i)).collect();
        assert_eq!(
            chunks, expected,
            "{what}: the chunks are those emit said it sent"
        );
        the_same_worker(&pool, pid, &what);
        pool.shutdown().await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// What no codec, or only one, can carry

/// bridges/python/README.md, "Handlers": "A chunk that cannot be encoded
/// makes `ctx.emit` raise the same way (`TypeError`, or `ValueError` for a
/// NaN under JSON) and sends nothing; left uncaught, it is the call's
/// failed reply", where a result's NaN or infinity is "`ValueError` ...
/// under JSON, which has no such numbers, while MessagePack carries them".
/// A streaming handler emits NaN and infinity, catching what `emit`
/// raises, then emits `"after"`: under JSON both raise `ValueError` and
/// the caller gets only `"after"`; under MessagePack both are sent (and
/// arrive as `null`, as protocol.md section 3 says `execute` gets them),
/// then `"after"`. A NaN chunk left uncaught under JSON fails the call with
/// `ValueError`, and the worker serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_finite_chunks_raise_value_error_under_json_and_are_sent_under_msgpack() {
    in_each_mode_and_codec(|pool, _pid, _mode, codec, what| async move {
        let (chunks, done) = stream(&pool, "emit_non_finite", json!({})).await;
        let caught = &done["caught"];
        match codec {
            WireCodec::MsgPack => {
                assert_eq!(caught, &json!([["sent", true], ["sent", true]]), "{what}");
                assert_eq!(chunks, [Value::Null, Value::Null, json!("after")], "{what}");
            }
            _ => {
                for c in caught.as_array().unwrap() {
                    assert_eq!(c[0], "ValueError", "{what}: {caught}");
                }
                assert_eq!(chunks, [json!("after")], "{what}: nothing else was sent");
            }
        }
        if codec == WireCodec::Json {
            let mut s = pool
                .execute_stream("emit_nan_uncaught", json!({}), CallOptions::new())
                .await
                .unwrap();
            let mut items = Vec::new();
            while let Some(item) = tokio::time::timeout(HANG, s.next()).await.unwrap() {
                items.push(item);
            }
            let last = items.pop().expect("an outcome");
            assert!(items.is_empty(), "{what}: no chunk: {items:?}");
            let err = last.expect_err(&format!("{what}: the call failed"));
            let e = err.remote().unwrap_or_else(|| panic!("{what}: {err:?}"));
            assert_eq!(e.kind.as_deref(), Some("ValueError"), "{what}: {e:?}");
        }
    })
    .await;
}

/// Bytes a typed call reads from a MessagePack `bin`.
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

/// Bytes that a typed call writes as a MessagePack `bin`.
struct Bin<'a>(&'a [u8]);

impl serde::Serialize for Bin<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

#[derive(serde::Serialize)]
struct BinArgs<'a> {
    b: Bin<'a>,
}

#[derive(serde::Deserialize, Debug)]
struct BinEcho {
    class: String,
    back: Bytes,
}

/// bridges/python/README.md, "Handlers": the result "must be encodable by
/// the codec (dicts, lists, strings, numbers, bools, None; `bytes` with
/// MessagePack only)"; protocol.md section 3: "Only MessagePack carries
/// binary data", and Python keeps `bin` "as they are". Through a MessagePack
/// pool with typed calls (`Pool::call`), every byte value and the bytes
/// that are not UTF-8 reach a Python handler as `bytes` and its `bytes`
/// result comes back unchanged, in both modes; the same result read as a
/// `Value` (`execute`) fails with `Error::Codec` and the worker serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_travel_both_ways_under_msgpack() {
    let bytes: Vec<u8> = (0..=255u8).chain([0xc3, 0x28, 0xff]).collect();
    for mode in ["sync", "async"] {
        let pool = start_one(handlers(mode).codec(WireCodec::MsgPack)).await;
        let pid = pool.worker_pids()[0];
        let r: BinEcho = pool
            .call("bin_echo", &BinArgs { b: Bin(&bytes) }, CallOptions::new())
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e:?}"));
        assert_eq!(r.class, "bytes", "{mode}");
        let mut expected = bytes.clone();
        expected.push(b'!');
        assert_eq!(r.back, Bytes(expected), "{mode}");
        let err = pool
            .execute_with("bin_echo", json!({"b": "text"}), CallOptions::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Codec(_)), "{mode}: {err:?}");
        the_same_worker(&pool, pid, mode);
        pool.shutdown().await.unwrap();
    }
}

/// bridges/python/README.md, "Handlers": "A message neither codec can
/// carry (a lone surrogate, from a non-UTF-8 file name through
/// `os.fsdecode`) goes out with that character escaped (`\udce9`)." A
/// handler raising `ValueError(os.fsdecode(b"caf\xe9.txt") + " not
/// found")`: the caller's failed reply is a `ValueError` whose message is
/// `caf\udce9.txt not found` (a backslash, then `udce9`), in both modes and
/// codecs, and the worker serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_holding_a_lone_surrogate_goes_out_escaped() {
    in_each_mode_and_codec(|pool, _pid, _mode, _codec, what| async move {
        let e = remote(&pool, "raise_surrogate", json!({})).await;
        assert_eq!(
            (e.kind.as_deref(), e.message.as_str()),
            (Some("ValueError"), "caf\\udce9.txt not found"),
            "{what}: {e:?}"
        );
    })
    .await;
}

/// bridges/python/README.md, the context table: `ctx.emit` "returns
/// `False` and sends nothing ... once the call was answered or cancelled";
/// "Cancellation", asyncio mode: "a plain function on a thread cannot be
/// interrupted". (outside_signal_races.rs shows the default mode.) A plain
/// function on asyncio mode's threads streams every 20 ms for 2 s without
/// looking at `ctx.cancelled`; its caller's deadline is 500 ms. The caller
/// gets chunks, then `CallTimeout`; every `emit` made before the handler
/// saw `ctx.cancelled` set may have returned `True`, every one after it
/// returned `False`; the caller got no more chunks than `emit` said it
/// sent; and the worker, whose late `Cancelled` reply comes within the
/// grace period, is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_after_a_cancel_frame_returns_false_on_asyncio_modes_threads() {
    for mode in ["async", "threads"] {
        let pool = start_one(handlers(mode)).await;
        let pid = pool.worker_pids()[0];
        let notes = scratch(&format!("{mode}-past-cancel"));
        let args = json!({"notes": notes.display().to_string(), "secs": 2.0});
        let options = CallOptions::new().timeout(Duration::from_millis(500));
        let mut s = pool
            .execute_stream("emit_past_cancel", args, options)
            .await
            .unwrap();
        let mut chunks = 0usize;
        let end = loop {
            match tokio::time::timeout(HANG, s.next()).await.unwrap() {
                Some(Ok(StreamItem::Chunk(_))) => chunks += 1,
                other => break other,
            }
        };
        assert!(
            matches!(end, Some(Err(Error::CallTimeout { .. }))),
            "{mode}: {end:?}"
        );
        let results: Vec<(bool, bool)> =
            serde_json::from_value(first_note(&notes, mode).await).unwrap();
        let seen = results
            .iter()
            .position(|(cancelled, _)| *cancelled)
            .unwrap_or_else(|| panic!("{mode}: the handler saw the cancel: {results:?}"));
        assert!(
            results[seen..].iter().all(|(c, sent)| *c && !sent),
            "{mode}: once cancelled, emit returns False: {results:?}"
        );
        let sent = results.iter().filter(|(_, sent)| *sent).count();
        assert!(
            chunks >= 1 && chunks <= sent,
            "{mode}: {chunks} chunks, {sent} sent"
        );
        serves_on_then_shut_down(&pool, pid, mode).await;
    }
}

// ---------------------------------------------------------------------------
// Output

/// bridges/python/README.md, "Output and signals": "`sys.stdout` is then a
/// line-buffered stream of its own on a duplicate of stderr ...: what is
/// printed reaches the worker's log line by line, in order with what is
/// written to `sys.stderr`", and descriptor 1 points at stderr. A handler
/// interleaving `print`, `sys.stderr.write`, `os.write(1, ...)` and
/// `sys.stdout.write`, one line each: the worker's log (target
/// `snakepit::worker`) has the seven lines in the order written, in the
/// default mode and on asyncio mode's threads, in both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn printed_lines_reach_the_log_in_order_with_stderr() {
    let events = Events::global();
    let words = ["one", "two", "three", "four", "five", "six", "seven"];
    in_each_mode_and_codec(|pool, pid, mode, codec, what| async move {
        for round in 0..3 {
            let tag = format!("opr-{mode}-{codec:?}-{round}");
            ok(&pool, "print_order", json!({"tag": tag})).await;
            let expected: Vec<String> = words.iter().map(|w| format!("{tag} {w}")).collect();
            let mine = || {
                events
                    .lines("snakepit::worker", pid)
                    .into_iter()
                    .filter(|l| l.starts_with(&format!("{tag} ")))
                    .collect::<Vec<_>>()
            };
            assert!(
                eventually(10, || mine().len() >= expected.len()).await,
                "{what}: {:?}",
                mine()
            );
            assert_eq!(mine(), expected, "{what}");
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// Tracing

/// The worker of `outside_python_readme_tracing.py` in `mode` (an
/// OpenTelemetry SDK tracer provider set at import; `span`, and in asyncio
/// mode `span_async`, report the span they run in).
async fn traced_worker(mode: &str) -> Pool {
    let bridge = Bridge::python(worker("outside_python_readme_tracing.py"))
        .interpreter(python())
        .env("OPR_MODE", mode);
    start_one(bridge).await
}

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Traceparents no W3C propagator can read.
const UNREADABLE: [&str; 3] = [
    "garbage",
    "00-00000000000000000000000000000000-0000000000000000-01",
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
];

async fn span_with(pool: &Pool, command: &str, traceparent: &str) -> Value {
    let options = CallOptions::new()
        .traceparent(traceparent)
        .timeout(Duration::from_secs(30));
    call_with(pool, command, json!({}), options)
        .await
        .unwrap_or_else(|e| panic!("{command} {traceparent:?}: the call failed: {e:?}"))
}

/// bridges/python/README.md, "Tracing": "If `opentelemetry-api` is
/// installed ... and a request carries a `traceparent`, the handler runs
/// inside a span `snakepit.worker <command>` whose parent is the caller's
/// span, so spans you create join the caller's trace"; "A trace context
/// the propagator cannot read ... never fails it." Through a pool
/// (`CallOptions::traceparent`), with the SDK set up in the worker: a valid
/// traceparent puts the handler in that span, of the caller's trace and
/// with the caller's span as parent, and a span the handler creates is its
/// child in that trace: in the default mode, and in asyncio mode for a
/// plain function (on a thread) and a coroutine. A call without one runs
/// untraced; unreadable traceparents fail no call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_call_runs_in_a_span_under_the_callers_and_an_unreadable_one_fails_nothing() {
    for (mode, commands) in [
        ("sync", &["span"][..]),
        ("async", &["span", "span_async"][..]),
    ] {
        let pool = traced_worker(mode).await;
        for command in commands {
            let what = format!("{mode} {command}");
            let r = span_with(&pool, command, TP).await;
            assert_eq!(
                r["name"],
                format!("snakepit.worker {command}"),
                "{what}: {r}"
            );
            assert_eq!(r["recording"], true, "{what}: {r}");
            assert_eq!(
                r["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
                "{what}: {r}"
            );
            assert_eq!(r["parent_span_id"], "00f067aa0ba902b7", "{what}: {r}");
            assert_eq!(r["child_trace_id"], r["trace_id"], "{what}: {r}");
            assert_eq!(r["child_parent_is_the_handlers"], true, "{what}: {r}");
            let r = ok(&pool, command, json!({})).await;
            assert_eq!(r["traced"], false, "{what}: no traceparent, no span: {r}");
            for tp in UNREADABLE {
                let r = span_with(&pool, command, tp).await;
                assert_eq!(r["traceparent"], tp, "{what}: {r}");
            }
        }
        let pid = pool.worker_pids()[0];
        the_same_worker(&pool, pid, mode);
        pool.shutdown().await.unwrap();
    }
}

/// bridges/python/README.md, "Tracing": "A trace context the propagator
/// cannot read leaves the call untraced (a line on stderr)". The W3C
/// propagator cannot read `garbage`, an all-zero trace id, or a
/// traceparent without its flags; yet the handler runs in a recording span
/// `snakepit.worker span` of a new trace with no parent (an orphan root
/// span per call in the user's tracing backend), and nothing is written
/// to the worker's log: only a propagator that raises leaves the call
/// untraced with a line on stderr (`_handler.py`, `_otel_span`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_trace_context_leaves_the_call_untraced_with_a_line_on_stderr() {
    let _ = Events::global();
    let pool = traced_worker("sync").await;
    let pid = pool.worker_pids()[0];
    for tp in UNREADABLE {
        let r = span_with(&pool, "span", tp).await;
        assert_eq!(
            (&r["traced"], &r["name"]),
            (&json!(false), &Value::Null),
            "{tp:?}: untraced: {r}"
        );
    }
    logged(pid, "an unreadable traceparent", |l| l.contains("trace")).await;
    pool.shutdown().await.unwrap();
}

/// bridges/python/README.md, "Output and signals": "At `run()`, the bridge
/// keeps the real stdout descriptor for frames and points file descriptor
/// 1 and `sys.stdout` at stderr, so `print`, C libraries and subprocesses
/// cannot corrupt the frame stream. `sys.stdout` is then a line-buffered
/// stream of its own on a duplicate of stderr (not inherited by
/// subprocesses) ... the bridge reads frames from a duplicate of stdin (not
/// inherited)". A handler starts a child with `close_fds=False` (every
/// inheritable descriptor goes to it) and lists the child's descriptors:
/// the only pipe or socket it holds is the worker's stderr (on 1 and 2),
/// none of the worker's other pipes (the frames' own among them), in both
/// modes and in a preloaded pool's forked worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_process_inherits_no_descriptor_of_the_frames() {
    for (mode, preload) in [("sync", false), ("async", false), ("sync", true)] {
        let what = format!("{mode}, preload {preload}");
        let pool = start_one(preloading(handlers(mode), preload)).await;
        let r = ok(&pool, "child_fds", json!({})).await;
        let stderr = r["stderr"].as_str().unwrap();
        let channels = |v: &Value| -> Vec<(String, String)> {
            v.as_object()
                .unwrap()
                .iter()
                .map(|(fd, link)| (fd.clone(), link.as_str().unwrap().to_owned()))
                .filter(|(_, l)| l.starts_with("pipe:") || l.starts_with("socket:"))
                .collect()
        };
        let theirs = channels(&r["theirs"]);
        assert!(
            theirs.iter().all(|(_, l)| l == stderr),
            "{what}: the child holds only the worker's stderr ({stderr}): {theirs:?}"
        );
        assert_eq!(
            r["theirs"]["1"].as_str(),
            Some(stderr),
            "{what}: descriptor 1 is stderr: {r}"
        );
        let others = channels(&r["mine"])
            .into_iter()
            .filter(|(_, l)| l != stderr)
            .count();
        assert!(
            others >= 2,
            "{what}: the worker's own frame pipes exist: {r}"
        );
        pool.shutdown().await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// The generic commands

/// Checks that a pool of the handlers script with `OPR_GENERIC=how` serves
/// the generic commands beside the script's own.
async fn serves_the_generic_commands(how: &str) {
    let bridge = handlers("sync").env("OPR_GENERIC", how);
    let pool = readme::try_start(roomy(Pool::builder(bridge).size(1)))
        .await
        .unwrap_or_else(|e| panic!("{how}: the README's call fails the start: {e}"));
    let r = ok(&pool, "echo", json!({"x": [1, "y"]})).await;
    assert_eq!(r["echoed"], json!({"x": [1, "y"]}), "{how}: {r}");
    let r = ok(
        &pool,
        "compute",
        json!({"operation": "add", "a": 2, "b": 3}),
    )
    .await;
    assert_eq!(r["result"], 5, "{how}: {r}");
    let r = ok(&pool, "info", json!({})).await;
    let commands = &r["bridge_info"]["supported_commands"];
    for c in ["bare", "compute", "echo", "info", "ping"] {
        assert!(
            commands.as_array().unwrap().iter().any(|x| x == c),
            "{how}: {c} in {commands}"
        );
    }
    ok(&pool, "bare", json!({})).await;
    pool.shutdown().await.unwrap();
}

/// bridges/python/README.md, "A worker": "Every worker answers `ping` (the
/// pool's init handshake and health checks) even if you do not register
/// it. To also serve the generic commands `echo`, `compute` and `info`,
/// call `snakepit_bridge.generic.register(worker)`." Without that call,
/// `ping` is answered and `echo` is an unknown command; with it, made
/// after importing the submodule (`import snakepit_bridge.generic`), the
/// generic commands are served beside the script's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generic_commands_are_served_only_once_registered() {
    let pool = start_one(handlers("sync")).await;
    let r = ok(&pool, "ping", json!({})).await;
    assert_eq!(r["status"], "ok", "{r}");
    for generic in ["echo", "compute", "info"] {
        unknown(&pool, generic, "").await;
    }
    pool.shutdown().await.unwrap();
    serves_the_generic_commands("import").await;
}

/// The same, worded as the README words it: the README's scripts `import
/// snakepit_bridge` and nothing more, then "call
/// `snakepit_bridge.generic.register(worker)`". But the package does not
/// import its `generic` submodule (`snakepit_bridge/__init__.py`), so the
/// call raises `AttributeError: module 'snakepit_bridge' has no attribute
/// 'generic'` at import time and the pool cannot start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generic_commands_register_as_the_readme_words_it() {
    serves_the_generic_commands("attr").await;
}
