//! What user handlers return or do, in the three bridges (Python, Node.js,
//! Ruby) and both codecs, through real pools: results a codec cannot carry,
//! exceptions that are not ordinary errors, values that are not `Error`s
//! thrown, leaving the process, touching the frame descriptors, results too
//! deep or too large, and results that come after the deadline. Each test
//! quotes the sentence it checks; the workers are
//! `tests/workers/outside_handler_results.{py,js,rb}`.

#[allow(dead_code)] // this file uses only some of the shared helpers
mod common;

use std::time::Duration;

use common::{node_modules, worker};
use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{CallOptions, Error, ExitReason, Pool, PoolBuilder, RemoteError, WireCodec};
use snakepit_tests::eventually;

const CODECS: [WireCodec; 2] = [WireCodec::Json, WireCodec::MsgPack];

/// A generous bound for anything that must not hang.
const HANG: Duration = Duration::from_secs(60);

fn python(codec: WireCodec) -> Bridge {
    Bridge::python(worker("outside_handler_results.py")).codec(codec)
}

/// The same script in asyncio mode (it registers `async def` handlers).
fn python_async(codec: WireCodec) -> Bridge {
    python(codec).env("OHR_ASYNC", "1")
}

fn node(codec: WireCodec) -> Bridge {
    Bridge::node(worker("outside_handler_results.js"))
        .env("NODE_PATH", node_modules())
        .codec(codec)
}

fn ruby(codec: WireCodec) -> Bridge {
    Bridge::ruby(worker("outside_handler_results.rb")).codec(codec)
}

/// The three bridges under `codec`, each with its language's name.
fn every_bridge(codec: WireCodec) -> [(&'static str, Bridge); 3] {
    [
        ("python", python(codec)),
        ("node", node(codec)),
        ("ruby", ruby(codec)),
    ]
}

async fn start(builder: PoolBuilder) -> Pool {
    let builder = builder.configure(|c| {
        c.worker_init_timeout = Duration::from_secs(60);
        c.startup_timeout = Duration::from_secs(90);
        // No health check may replace a worker behind a test's back.
        c.health_check_interval = Duration::ZERO;
    });
    tokio::time::timeout(Duration::from_secs(120), builder.start())
        .await
        .expect("start() hung")
        .unwrap_or_else(|e| panic!("start: {e}"))
}

/// A pool of one worker of `bridge`.
async fn start_one(bridge: Bridge) -> Pool {
    start(Pool::builder(bridge).size(1)).await
}

async fn call(pool: &Pool, command: &str, args: Value) -> Result<Value, Error> {
    let options = CallOptions::new().timeout(Duration::from_secs(30));
    tokio::time::timeout(HANG, pool.execute_with(command, args, options))
        .await
        .unwrap_or_else(|_| panic!("{command} hung"))
}

/// The pid of the worker that serves `pid` now.
async fn pid(pool: &Pool) -> u64 {
    let r = call(pool, "pid", json!({})).await.expect("pid");
    r["pid"].as_u64().expect("a pid")
}

/// Runs `command` and expects a failed reply of the worker's own.
async fn remote_failure(pool: &Pool, command: &str, what: &str) -> RemoteError {
    let err = call(pool, command, json!({}))
        .await
        .expect_err(&format!("{what}: {command} succeeded"));
    err.remote()
        .unwrap_or_else(|| panic!("{what}: {command}: not a failed reply but {err:?}"))
        .clone()
}

/// Checks that the worker `before` still serves `pool` and that nothing
/// crashed or was restarted.
async fn kept(pool: &Pool, before: u64, what: &str) {
    assert_eq!(pid(pool).await, before, "{what}: replaced");
    let s = pool.stats();
    assert_eq!((s.crashes, s.restarts), (0, 0), "{what}: {s:?}");
}

/// Waits until the only worker of `pool`, `before`, has been replaced,
/// and checks that the new one serves the next call.
async fn replaced(pool: &Pool, before: u64, what: &str) {
    assert!(
        eventually(30, || pool
            .worker_pids()
            .first()
            .is_some_and(|p| u64::from(*p) != before))
        .await,
        "{what}: not replaced"
    );
    assert_ne!(pid(pool).await, before, "{what}");
}

/// Runs `command`, expects a failed reply of the worker's own, and checks
/// that the same worker serves the next call and nothing was restarted.
async fn failed_reply(pool: &Pool, command: &str, what: &str) -> RemoteError {
    let before = pid(pool).await;
    let remote = remote_failure(pool, command, what).await;
    kept(pool, before, &format!("{what}: {command}")).await;
    remote
}

fn kind(remote: &RemoteError) -> &str {
    remote.kind.as_deref().unwrap_or("<none>")
}

/// The `type` and the message of a failed reply.
fn class_and_message(remote: &RemoteError) -> (&str, &str) {
    (kind(remote), remote.message.as_str())
}

/// Runs each of `cases` (command, exception class, message) with
/// [`failed_reply`] and checks the reply's class and message; returns the
/// replies, in the order of `cases`.
async fn failed_as(pool: &Pool, cases: &[(&str, &str, &str)], what: &str) -> Vec<RemoteError> {
    let mut replies = Vec::new();
    for &(command, class, message) in cases {
        let e = failed_reply(pool, command, what).await;
        assert_eq!(
            class_and_message(&e),
            (class, message),
            "{what} {command}: {e:?}"
        );
        replies.push(e);
    }
    replies
}

/// In both codecs, on one worker of `bridge`: each of `commands` (which
/// touch the worker's standard streams) succeeds on that worker, which
/// serves on with nothing crashed or restarted.
async fn frames_left_alone_by(bridge: fn(WireCodec) -> Bridge, commands: &[&str]) {
    for codec in CODECS {
        let pool = start_one(bridge(codec)).await;
        let before = pid(&pool).await;
        for command in commands {
            let r = call(&pool, command, json!({})).await.unwrap();
            assert_eq!(r["pid"].as_u64(), Some(before), "{codec} {command}");
        }
        kept(&pool, before, &codec.to_string()).await;
        pool.shutdown().await.unwrap();
    }
}

/// A slow call started now on `pool` (on the worker that is free, or on
/// the only one of a worker running several calls at once).
fn slow(pool: &Pool, ms: u64) -> tokio::task::JoinHandle<Result<Value, Error>> {
    spawn_call(pool, "slow", json!({ "ms": ms }))
}

/// `command` started now on `pool`, on a task of its own.
fn spawn_call(
    pool: &Pool,
    command: &str,
    args: Value,
) -> tokio::task::JoinHandle<Result<Value, Error>> {
    let (pool, command) = (pool.clone(), command.to_owned());
    tokio::spawn(async move { call(&pool, &command, args).await })
}

async fn in_flight(pool: &Pool, n: usize) {
    assert!(
        eventually(20, || pool.stats().in_flight >= n).await,
        "{n} calls never got in flight: {:?}",
        pool.stats()
    );
}

/// Makes `calls` while a slow call (2.5 s) is in flight on `pool`, then
/// checks that the slow call succeeded on the worker that served `pool`
/// before; returns that worker's pid.
async fn beside_a_slow_call(pool: &Pool, what: &str, calls: impl AsyncFnOnce()) -> u64 {
    let before = pid(pool).await;
    let beside = slow(pool, 2500);
    in_flight(pool, 1).await;
    calls().await;
    let r = beside
        .await
        .unwrap()
        .expect("the call in flight beside them");
    assert_eq!(r["pid"].as_u64(), Some(before), "{what}");
    before
}

// ---------------------------------------------------------------------------
// Python

/// docs/bridges.md, Python: "The return value is the result. It must be
/// encodable: dicts, lists, strings, numbers, booleans, `None`, and `bytes`
/// with MessagePack only; otherwise the reply fails with `TypeError`";
/// bridges/python/README.md: "A result that cannot be encoded is a failed
/// reply (`TypeError`; `ValueError` for a NaN or infinite float under JSON,
/// which has no such numbers, while MessagePack carries them)"; "The worker
/// keeps serving." protocol.md section 3: "MessagePack carries them; ...
/// `execute`, whose result is a JSON `Value`, gets `null` in their place."
/// In both codecs and both modes (one call at a time; asyncio, where plain
/// functions run on threads): a set, an instance of a class, a `datetime`,
/// a generator, and the coroutine a plain function returns without
/// awaiting it (the bridge does not await it, unlike Node's, which adopts
/// any thenable); under JSON also `bytes`, a tuple key and infinities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_results_the_codec_cannot_carry_are_type_errors_and_the_worker_serves_on() {
    for (codec, bridge) in CODECS
        .into_iter()
        .flat_map(|c| [(c, python(c)), (c, python_async(c))])
    {
        let pool = start_one(bridge).await;
        let mut type_errors = vec!["set", "object", "datetime", "generator", "coroutine"];
        if codec == WireCodec::Json {
            type_errors.extend(["bytes", "tuple_key"]);
        }
        for command in type_errors {
            let e = failed_reply(&pool, command, &format!("python {codec}")).await;
            assert_eq!(kind(&e), "TypeError", "{codec} {command}: {e:?}");
        }
        if codec == WireCodec::Json {
            let e = failed_reply(&pool, "inf", "python json").await;
            assert_eq!(kind(&e), "ValueError", "{e:?}");
        } else {
            let r = call(&pool, "inf", json!({})).await.unwrap();
            assert_eq!(r, json!({"v": null, "w": null}));
        }
        pool.shutdown().await.unwrap();
    }
}

/// docs/bridges.md, Python: "otherwise the reply fails with `TypeError`";
/// bridges/python/README.md: "A result that cannot be encoded is a failed
/// reply (`TypeError`; `ValueError` for a NaN or infinite float under
/// JSON". A cyclic list and a string holding a lone surrogate cannot be
/// encoded either; the reply is a failed one and the worker serves on
/// (checked first), but its type is not the documented one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_cyclic_and_lone_surrogate_results_fail_with_the_documented_type_error() {
    let mut wrong = Vec::new();
    for codec in CODECS {
        for (mode, bridge) in [("sync", python(codec)), ("async", python_async(codec))] {
            let pool = start_one(bridge).await;
            for command in ["cycle", "surrogate"] {
                let e = failed_reply(&pool, command, &format!("python {mode} {codec}")).await;
                if kind(&e) != "TypeError" {
                    wrong.push(format!(
                        "{mode} {codec} {command}: {} ({})",
                        kind(&e),
                        e.message
                    ));
                }
            }
            pool.shutdown().await.unwrap();
        }
    }
    assert!(wrong.is_empty(), "not TypeError: {wrong:#?}");
}

/// bridges/python/README.md, Handlers: "A handler that raises produces a
/// failed reply `{"type": <exception class name>, "message": str(exc),
/// ...}`. The worker keeps serving. That holds for any exception, including
/// a `BaseException` that is not an `Exception` (the timeouts of gevent or
/// trio, say); only `SystemExit` (`sys.exit()` in a handler) ends the
/// worker." A `BaseException` of the script's own, `GeneratorExit` and
/// `StopIteration`, from plain functions (in both modes: on the main thread
/// one at a time, on a thread in asyncio mode) and from `async def`
/// handlers; in asyncio mode a `KeyboardInterrupt` the handler raises itself
/// too (see the next test for the default mode). In asyncio mode, a call in
/// flight beside them is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_base_exceptions_other_than_system_exit_are_failed_replies_of_their_class() {
    let cases = [
        ("base_exception", "NotAnException", "not an Exception"),
        ("generator_exit", "GeneratorExit", "closed by hand"),
        ("stop_iteration", "StopIteration", "no more"),
    ];
    for codec in CODECS {
        let pool = start_one(python(codec)).await;
        failed_as(&pool, &cases, &format!("python sync {codec}")).await;
        pool.shutdown().await.unwrap();

        let pool = start_one(python_async(codec)).await;
        let mut all = cases.to_vec();
        // An `async def` that raises StopIteration gets Python's own
        // RuntimeError (PEP 479): that is the exception the handler raised.
        all.extend([
            ("async_base_exception", "NotAnException", "not an Exception"),
            ("async_generator_exit", "GeneratorExit", "closed by hand"),
            ("async_recursion", "RecursionError", "too deep by hand"),
            (
                "async_stop_iteration",
                "RuntimeError",
                "coroutine raised StopIteration",
            ),
            (
                "keyboard_interrupt",
                "KeyboardInterrupt",
                "raised by the handler itself",
            ),
            (
                "async_keyboard_interrupt",
                "KeyboardInterrupt",
                "raised by the handler itself",
            ),
        ]);
        let what = format!("async {codec}");
        let before = beside_a_slow_call(&pool, &what, async || {
            for (command, class, message) in all {
                let e = remote_failure(&pool, command, &what).await;
                assert_eq!(
                    class_and_message(&e),
                    (class, message),
                    "{what} {command}: {e:?}"
                );
            }
        })
        .await;
        kept(&pool, before, &what).await;
        pool.shutdown().await.unwrap();
    }
}

/// bridges/python/README.md, Handlers: "That holds for any exception,
/// including a `BaseException` that is not an `Exception` ...; only
/// `SystemExit` ... ends the worker", with the reply's `type` the
/// exception's class name; docs/bridges.md: "`Error::Cancelled` means the
/// worker itself replied `Cancelled`", which it does for "a `cancel` frame
/// or ... SIGINT" (protocol.md section 5). A plain handler of the default
/// (one call at a time) mode that raises `KeyboardInterrupt` itself, with no
/// SIGINT and no deadline passed, was not cancelled: in both codecs its
/// call fails with a reply of type `KeyboardInterrupt` and the handler's
/// message, on the same worker, as the same handler does in asyncio mode
/// (previous test) and as Ruby's `raise Interrupt` gets `Interrupt`
/// (`ruby_exceptions_that_are_not_standard_errors_...`). (Before the fix,
/// the default mode replied `Cancelled` to it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_a_keyboard_interrupt_raised_by_a_plain_handler_is_a_failed_reply_of_its_class() {
    for codec in CODECS {
        let pool = start_one(python(codec)).await;
        let case = (
            "keyboard_interrupt",
            "KeyboardInterrupt",
            "raised by the handler itself",
        );
        failed_as(&pool, &[case], &format!("python {codec}")).await;
        pool.shutdown().await.unwrap();
    }
}

/// bridges/python/README.md: "only `SystemExit` (`sys.exit()` in a
/// handler) ends the worker"; `Error::WorkerCrashed`: "The worker died
/// while the call was in flight on it." The call gets
/// `Error::WorkerCrashed` naming its worker and the exit status 3 it gave
/// `sys.exit`, and a new worker serves the next calls. In the default mode
/// (one call at a time, two workers) the other worker finishes the call it
/// was running undisturbed; in asyncio mode (one worker running both) the
/// call in flight beside it on that worker fails with the same crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sys_exit_in_a_handler_ends_only_its_worker_with_that_status() {
    for (mode, bridge, command, size) in [
        ("sync", python(WireCodec::Json), "system_exit", 2),
        (
            "async",
            python_async(WireCodec::Json),
            "async_system_exit",
            1,
        ),
    ] {
        let pool = start(Pool::builder(bridge).size(size)).await;
        let pids = pool.worker_pids();
        let beside = slow(&pool, 3000);
        in_flight(&pool, 1).await;
        let err = call(&pool, command, json!({})).await.unwrap_err();
        let Error::WorkerCrashed(crash) = &err else {
            panic!("{mode}: {err:?}")
        };
        assert!(pids.contains(&crash.pid), "{mode}: {crash}");
        assert_eq!(crash.exit, ExitReason::Code(3), "{mode}: {crash}");
        let beside = beside.await.unwrap();
        if size == 2 {
            let r = beside.expect("the other worker's call");
            assert_ne!(r["pid"].as_u64(), Some(u64::from(crash.pid)), "{mode}");
        } else {
            match beside {
                Err(Error::WorkerCrashed(c)) => assert_eq!(c.pid, crash.pid, "{mode}"),
                other => panic!("{mode}: the call beside: {other:?}"),
            }
        }
        assert!(
            eventually(30, || {
                let now = pool.worker_pids();
                now.len() == size && !now.contains(&crash.pid)
            })
            .await,
            "{mode}: not replaced: {:?}",
            pool.worker_pids()
        );
        for _ in 0..3 {
            assert_ne!(pid(&pool).await, u64::from(crash.pid), "{mode}");
        }
        pool.shutdown().await.unwrap();
    }
}

/// docs/bridges.md, "Standard output belongs to the protocol": for Python,
/// "`worker.run()` keeps duplicates of file descriptors 0 and 1 for frames,
/// points descriptor 1 at stderr and descriptor 0 (so `sys.stdin`) at
/// `/dev/null`, so `print`, C libraries and subprocesses write to the log
/// and cannot read the pool's frames". Before, a handler running
/// `subprocess.run([...])` as users do (stdin inherited) with a tool that
/// reads its stdin let the tool eat frames the pool wrote ahead (the next
/// call's length prefix: the worker then read garbage and was replaced, the
/// next call failing with `Error::Protocol`), or, when nothing was waiting,
/// blocked the tool until its timeout. Here: the child
/// must read nothing (end of input at once, as from `/dev/null`), its
/// handler must succeed, and a call sent while it runs must be served by
/// the same worker; in both modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_a_child_process_cannot_read_the_pools_frames() {
    let mut broken = Vec::new();
    for (mode, bridge) in [
        ("sync", python(WireCodec::Json)),
        ("async", python_async(WireCodec::Json)),
    ] {
        let pool = start_one(bridge).await;
        let before = pid(&pool).await;
        let child = spawn_call(
            &pool,
            "child_reads_stdin",
            json!({"bytes": 4, "timeout": 3, "hold": 1}),
        );
        // The next call is sent while the handler holds, before its child
        // starts: it waits in the worker's stdin (written ahead) or in the
        // pool's queue, and the child must not get its frame.
        in_flight(&pool, 1).await;
        let next = call(&pool, "pid", json!({})).await;
        match child.await.unwrap() {
            Ok(r) if r["child_read"] == 0 => {}
            other => broken.push(format!("{mode}: the child's call: {other:?}")),
        }
        match next {
            Ok(r) if r["pid"].as_u64() == Some(before) => {}
            other => broken.push(format!("{mode}: the call sent meanwhile: {other:?}")),
        }
        pool.shutdown().await.unwrap();
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

/// docs/bridges.md, "Standard output belongs to the protocol": "`worker.run()`
/// keeps a duplicate of file descriptor 1 for frames and points descriptor 1
/// and `sys.stdout` at stderr". So a handler that closes descriptor 1 (the
/// copy of stderr), or `sys.stdout`, closes nothing the frames use: its
/// reply arrives and the same worker serves on, in both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_closing_descriptor_1_or_sys_stdout_in_a_handler_leaves_the_frames_alone() {
    frames_left_alone_by(python, &["close_fd1", "close_sys_stdout"]).await;
}

// ---------------------------------------------------------------------------
// Node.js

/// bridges/node/README.md, Errors: "A handler that throws (or whose promise
/// rejects) gets a failed reply `{type, message, traceback}` ... The worker
/// serves on." protocol.md section 5: "A failed command is a failed reply
/// (`success: false`)". Values that are not `Error`s: `throw 42`,
/// `throw null`, `throw undefined`, a string, a plain object,
/// `Promise.reject()` with no reason, an async function throwing a number.
/// Such a value has no `name` to be the reply's `type`: each is a failed
/// reply of type `Error` (the type the README gives a thrown value it
/// cannot read) whose message is the value as text (a string as it is,
/// anything else as `util.inspect` shows it: bridges/node/lib/worker.js
/// `readError`); a call in flight on the same worker meanwhile finishes
/// undisturbed; both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_throwing_values_that_are_not_errors_fails_only_that_call() {
    let cases = [
        ("throw42", "42"),
        ("throwNull", "null"),
        ("throwUndefined", "undefined"),
        ("throwString", "plain text thrown"),
        ("throwObject", "{ code: 7 }"),
        ("rejectUndefined", "undefined"),
        ("rejectNumber", "43"),
    ];
    for codec in CODECS {
        let pool = start_one(node(codec)).await;
        let what = codec.to_string();
        let before = beside_a_slow_call(&pool, &what, async || {
            for (command, shown) in cases {
                let e = remote_failure(&pool, command, &what).await;
                assert_eq!(
                    class_and_message(&e),
                    ("Error", shown),
                    "{codec} {command}: {e:?}"
                );
            }
            // README: "a value that cannot be read at all (a revoked proxy)
            // gives `{type: 'Error', message: '<unreadable thrown value>'}`."
            let e = remote_failure(&pool, "throwRevokedProxy", &what).await;
            assert_eq!(
                class_and_message(&e),
                ("Error", "<unreadable thrown value>"),
                "{codec}"
            );
        })
        .await;
        kept(&pool, before, &what).await;
        pool.shutdown().await.unwrap();
    }
}

/// bridges/node/README.md, Errors: "`EncodeError` when a result cannot be
/// encoded (a cycle, a `BigInt` in JSON, a string holding half a surrogate
/// pair, as cutting text mid-emoji gives: it has no UTF-8 form)"; docs/
/// bridges.md: "A result that cannot be encoded fails with `EncodeError`."
/// Under both codecs (MessagePack has no `BigInt` without an option
/// either), and for a result whose getter throws while it is encoded; a
/// call in flight on the same worker is not disturbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_results_that_cannot_be_encoded_are_encode_errors_in_both_codecs() {
    for codec in CODECS {
        let pool = start_one(node(codec)).await;
        let what = codec.to_string();
        let before = beside_a_slow_call(&pool, &what, async || {
            for command in ["cycle", "bigint", "surrogate", "getterThrows"] {
                let e = remote_failure(&pool, command, &what).await;
                assert_eq!(kind(&e), "EncodeError", "{codec} {command}: {e:?}");
            }
        })
        .await;
        assert_eq!(pid(&pool).await, before, "{codec}: replaced");
        pool.shutdown().await.unwrap();
    }
}

/// docs/bridges.md, Node.js: "a handler gets `(args, ctx)` and returns the
/// result or a promise of it"; protocol.md section 3: NaN and infinities
/// ("the Node.js bridge writes `null` in its place, as `JSON.stringify`
/// does. MessagePack carries them; ... `execute` ... gets `null` in their
/// place"). A promise resolved with another promise, and a thenable whose
/// `then` resolves with a promise, give the innermost value, as `await`
/// does; infinities and NaN arrive as `null` in both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_promises_of_promises_resolve_and_non_finite_numbers_arrive_as_null() {
    for codec in CODECS {
        let pool = start_one(node(codec)).await;
        let r = call(&pool, "promiseOfPromise", json!({})).await.unwrap();
        assert_eq!(r, json!({"v": "inner"}), "{codec}");
        let r = call(&pool, "thenableOfPromise", json!({})).await.unwrap();
        assert_eq!(r, json!({"v": "thenable"}), "{codec}");
        let r = call(&pool, "inf", json!({})).await.unwrap();
        assert_eq!(r, json!({"v": null, "w": null, "x": null}), "{codec}");
        pool.shutdown().await.unwrap();
    }
}

/// docs/bridges.md, "Standard output belongs to the protocol": "Node cannot
/// duplicate a descriptor, so descriptor 1 itself stays the pipe to the
/// pool: a native addon writing to it ... can still corrupt the stream";
/// "Anything else written to a worker's stdout breaks the frame stream, and
/// the pool replaces the worker." A handler writing raw bytes to fd 1
/// (`fs.writeSync(1, ...)`, as an addon would): its call fails with
/// `Error::Protocol`, and a new worker takes the broken one's place and
/// serves the next calls, in both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_raw_bytes_on_descriptor_1_break_the_stream_and_the_worker_is_replaced() {
    for codec in CODECS {
        let pool = start_one(node(codec)).await;
        let before = pid(&pool).await;
        let err = call(&pool, "rawFd1", json!({})).await.unwrap_err();
        assert!(
            matches!(err, Error::Protocol { .. }),
            "{codec}: not a protocol error: {err:?}"
        );
        replaced(&pool, before, &codec.to_string()).await;
        assert!(pool.stats().restarts >= 1, "{codec}: {:?}", pool.stats());
        pool.shutdown().await.unwrap();
    }
}

/// protocol.md section 1: the worker's "**stdin** carries frames from the
/// pool to the worker"; docs/bridges.md gives Ruby handlers a stdin that
/// cannot reach those frames ("descriptor 0 at `/dev/null` ... cannot read
/// the pool's frames") and says of Node only that `process.stdout` and
/// `console` are pointed at stderr. In Node, `process.stdin` is the
/// bridge's own frame source, and a handler that uses it as a program's
/// stdin (a prompt library opening a `readline` interface on it and closing
/// it, which pauses the stream) makes the worker deaf: the next call is
/// never read, times out, and the worker is killed after the grace period.
/// Here the next call must be served, by the same worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_a_handler_using_process_stdin_does_not_deafen_the_worker() {
    for command in ["readlineClosed", "pauseStdin"] {
        let pool = start_one(node(WireCodec::Json)).await;
        let before = pid(&pool).await;
        call(&pool, command, json!({})).await.unwrap();
        let options = CallOptions::new().timeout(Duration::from_secs(5));
        let next = pool.execute_with("pid", json!({}), options).await;
        assert_eq!(
            next.as_ref().ok().and_then(|r| r["pid"].as_u64()),
            Some(before),
            "{command}: {next:?}"
        );
        pool.shutdown().await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// Ruby

/// docs/bridges.md, Ruby: "An exception becomes a failed reply `{type:
/// <class name>, message, traceback: <backtrace lines>}`"; bridges/ruby/
/// README.md, Errors: "the handler raises | `{type: <exception class name>,
/// message, traceback: <backtrace lines>}`". Exceptions that a plain
/// `rescue => e` would not catch: `raise Exception`, `raise Interrupt` (by
/// the handler's own code, no SIGINT), `NoMemoryError`, a `throw` nobody
/// catches (`UncaughtThrowError`), a stack overflow (`SystemStackError`).
/// Each fails only its call, in both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_exceptions_that_are_not_standard_errors_are_failed_replies_of_their_class() {
    let cases = [
        ("raise_exception", "Exception", "a bare Exception"),
        (
            "raise_interrupt",
            "Interrupt",
            "raised by the handler itself",
        ),
        ("raise_no_memory", "NoMemoryError", "pretend"),
        (
            "throw_symbol",
            "UncaughtThrowError",
            "uncaught throw :nobody_catches",
        ),
        ("stack_overflow", "SystemStackError", "stack level too deep"),
    ];
    for codec in CODECS {
        let pool = start_one(ruby(codec)).await;
        let replies = failed_as(&pool, &cases, &format!("ruby {codec}")).await;
        for ((command, ..), e) in cases.iter().zip(&replies) {
            assert!(
                e.traceback.as_deref().is_some_and(|t| !t.is_empty()),
                "{codec} {command}: no traceback: {e:?}"
            );
        }
        pool.shutdown().await.unwrap();
    }
}

/// bridges/ruby/README.md, Codecs: "A result the codec cannot represent
/// (`Float::NAN` in JSON, an arbitrary object in MessagePack, and in either
/// a string whose bytes are not valid in its encoding, such as `"caf\xff"`
/// tagged UTF-8) becomes a failed reply instead of a broken frame; its type
/// is the error the codec raised (for such a string `JSON::GeneratorError`
/// under JSON, `SnakepitBridge::EncodeError` under MessagePack)";
/// protocol.md section 3: infinities are no JSON ("The bundled Python and
/// Ruby bridges answer a result that holds one with a failed reply"), while
/// "MessagePack carries them; ... `execute` ... gets `null`". A cyclic
/// array fails too, in both codecs. README, JSON: "symbol keys become
/// strings" (and the same holds under MessagePack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_results_the_codec_cannot_represent_are_failed_replies_in_both_codecs() {
    for codec in CODECS {
        let pool = start_one(ruby(codec)).await;
        let what = format!("ruby {codec}");
        let e = failed_reply(&pool, "invalid_utf8", &what).await;
        let want = match codec {
            WireCodec::Json => "JSON::GeneratorError",
            _ => "SnakepitBridge::EncodeError",
        };
        assert_eq!(kind(&e), want, "{codec}: {e:?}");
        failed_reply(&pool, "cycle", &what).await;
        if codec == WireCodec::Json {
            let e = failed_reply(&pool, "inf", &what).await;
            assert_eq!(kind(&e), "JSON::GeneratorError", "{e:?}");
        } else {
            failed_reply(&pool, "object", &what).await;
            failed_reply(&pool, "set", &what).await;
            let r = call(&pool, "inf", json!({})).await.unwrap();
            assert_eq!(r, json!({"v": null}));
        }
        let r = call(&pool, "symbols", json!({})).await.unwrap();
        assert_eq!(r, json!({"a": 1, "b": "sym"}), "{codec}");
        // A string valid in another encoding (ISO-8859-1) is no such
        // failure: it goes out as its text, in both codecs alike.
        let r = call(&pool, "latin1", json!({})).await.unwrap();
        assert_eq!(r, json!({"v": "café"}), "{codec}");
        pool.shutdown().await.unwrap();
    }
}

/// docs/bridges.md, "Standard output belongs to the protocol": "Ruby:
/// `SnakepitBridge::Worker.new` keeps duplicates of descriptors 0 and 1 for
/// frames, points descriptor 1 and `$stdout` at stderr and descriptor 0 at
/// `/dev/null`." So a handler that closes `STDOUT` and `STDIN`, or writes
/// raw bytes to descriptor 1, touches nothing the frames use: the call
/// succeeds and the same worker serves on, in both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_closing_stdout_and_stdin_or_writing_to_descriptor_1_leaves_the_frames_alone() {
    frames_left_alone_by(ruby, &["raw_fd1", "close_stdio", "raw_fd1"]).await;
}

/// docs/reliability.md, "Crashes stay contained": "A worker that exits, is
/// killed or closes its stdout fails exactly the calls in flight on it,
/// each with one `Error::WorkerCrashed` carrying the exit status or signal
/// and the last lines of its stderr", and a replacement starts. Handlers
/// that leave the process: Node's `process.exit(3)` (with a second call in
/// flight on the same worker, which fails with the same crash), Ruby's
/// `exit 3` and `exit!(4)` (docs/bridges.md, Ruby: "only leaving the
/// process ends the worker (`exit`, which raises `SystemExit`, `exit!`,
/// ...), and the pool replaces it").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_ruby_handlers_leaving_the_process_fail_the_calls_in_flight_and_are_replaced() {
    for (lang, bridge, command, status, with_beside) in [
        ("node", node(WireCodec::Json), "exit3", 3, true),
        ("ruby", ruby(WireCodec::Json), "exit", 3, false),
        ("ruby", ruby(WireCodec::Json), "exit_bang", 4, false),
    ] {
        let pool = start_one(bridge).await;
        let before = pid(&pool).await;
        let beside = with_beside.then(|| slow(&pool, 5000));
        if with_beside {
            in_flight(&pool, 1).await;
        }
        let err = call(&pool, command, json!({})).await.unwrap_err();
        let Error::WorkerCrashed(crash) = &err else {
            panic!("{lang} {command}: {err:?}")
        };
        assert_eq!(u64::from(crash.pid), before, "{lang} {command}");
        assert_eq!(crash.exit, ExitReason::Code(status), "{lang} {command}");
        if lang == "ruby" {
            assert!(
                crash.stderr_tail.contains("leaving by exit"),
                "{command}: {crash}"
            );
        }
        if let Some(beside) = beside {
            match beside.await.unwrap() {
                Err(Error::WorkerCrashed(c)) => assert_eq!(c.pid, crash.pid, "{lang}"),
                other => panic!("{lang}: the call beside: {other:?}"),
            }
        }
        replaced(&pool, before, &format!("{lang} {command}")).await;
        pool.shutdown().await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// All three

/// protocol.md section 2: "A payload nests at most **127** arrays and maps,
/// the frame's own map included ... a deeper reply, chunk or host-call
/// argument fails only its own call, and the worker is not blamed. The
/// bundled bridges read and write up to that limit in both codecs." A
/// handler returning 200 nested lists: only that call fails, and the same
/// worker serves on. Who refuses it depends on the bridge's encoder, each
/// as documented. Python (both codecs) and Node.js under JSON write it, and
/// the pool refuses the reply: `Error::Codec` (`too_deep`). Node.js under
/// MessagePack fails the reply with `EncodeError` (bridges/node/README.md:
/// "`EncodeError` when a result cannot be encoded"; its encoder stops past
/// the limit). Ruby fails the reply with "the error the codec raised"
/// (bridges/ruby/README.md): `JSON::NestingError` under JSON,
/// `SnakepitBridge::EncodeError` under MessagePack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_nested_too_deep_fails_only_its_call_in_every_bridge_and_codec() {
    for codec in CODECS {
        for (lang, bridge) in every_bridge(codec) {
            let pool = start_one(bridge).await;
            let before = pid(&pool).await;
            let err = call(&pool, "deep", json!({"depth": 200}))
                .await
                .unwrap_err();
            let got = match &err {
                Error::Codec(e) => format!("the pool refuses it: {}", e.kind()),
                Error::Remote { error, .. } => format!("a failed reply: {}", kind(error)),
                _ => format!("{err:?}"),
            };
            let want = match (lang, codec) {
                ("python", _) | ("node", WireCodec::Json) => "the pool refuses it: too_deep",
                ("node", _) => "a failed reply: EncodeError",
                ("ruby", WireCodec::Json) => "a failed reply: JSON::NestingError",
                _ => "a failed reply: SnakepitBridge::EncodeError",
            };
            assert_eq!(got, want, "{lang} {codec}: {err:?}");
            // At the limit the same handler goes through.
            let r = call(&pool, "deep", json!({"depth": 126})).await.unwrap();
            assert!(r.is_array(), "{lang} {codec}");
            kept(&pool, before, &format!("{lang} {codec}")).await;
            pool.shutdown().await.unwrap();
        }
    }
}

/// protocol.md section 1: the pool tells each worker its `max_frame_size`
/// (`SNAKEPIT_MAX_FRAME_SIZE`), and "a bridge that would write a larger
/// reply sends a failed reply of type `ResultTooLarge` instead, and the
/// worker stays". A handler whose result is larger than the pool's
/// `max_frame_size` (set to 1 MiB here): in every bridge and both codecs
/// the call fails with a `Remote` error of type `ResultTooLarge` whose
/// message names the limit, while the same worker serves the next call;
/// a result just under the limit still goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_above_max_frame_size_is_result_too_large_in_every_bridge_and_the_worker_stays() {
    for codec in CODECS {
        for (lang, bridge) in every_bridge(codec) {
            let what = format!("{lang} {codec}");
            let pool = start(
                Pool::builder(bridge)
                    .size(1)
                    .configure(|c| c.max_frame_size = 1 << 20),
            )
            .await;
            let before = pid(&pool).await;
            // Just under the limit goes through.
            let r = call(&pool, "huge", json!({"n": 1_000_000})).await.unwrap();
            assert_eq!(r.as_str().map(str::len), Some(1_000_000), "{what}");
            let err = call(&pool, "huge", json!({"n": 2_000_000}))
                .await
                .unwrap_err();
            let remote = err
                .remote()
                .unwrap_or_else(|| panic!("{what}: not a failed reply but {err:?}"));
            assert_eq!(
                remote.kind.as_deref(),
                Some("ResultTooLarge"),
                "{what}: {err}"
            );
            assert!(
                remote.message.contains("1048576"),
                "{what}: the message names the limit: {err}"
            );
            kept(&pool, before, &what).await;
            pool.shutdown().await.unwrap();
        }
    }
}

/// docs/bridges.md, "Concurrency and cancellation": when a call's deadline
/// passes the pool "answers the caller (`Error::CallTimeout`), sends `cancel`
/// or SIGINT, and waits for the worker's reply for up to
/// `PoolConfig::shutdown_grace_period` (2 s by default), during which the
/// worker gets no new call in that call's place. If no reply comes, the
/// worker is killed and replaced." bridges/python/README.md: "Do not
/// swallow `KeyboardInterrupt` in handlers; if you do, `ctx.cancelled` is
/// still set and the reply still says `Cancelled`." Handlers that swallow
/// their cancellation (Python's `KeyboardInterrupt`, Ruby's `Cancelled`
/// through `rescue Exception`; in Python's asyncio mode a plain function on
/// a thread, which "cannot be interrupted", README) and return 3 s after they started, past a
/// 300 ms deadline but within the grace period (set to 10 s here, so that a
/// loaded machine cannot stretch the handler past it): the caller has its
/// `CallTimeout` before the handler ends, the late reply costs the worker
/// nothing, and it serves the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_returning_late_within_the_grace_period_keeps_its_worker() {
    for (lang, bridge) in [
        ("python", python(WireCodec::Json)),
        ("python async", python_async(WireCodec::Json)),
        ("ruby", ruby(WireCodec::Json)),
    ] {
        let pool = start(
            Pool::builder(bridge)
                .size(1)
                .configure(|c| c.shutdown_grace_period = Duration::from_secs(10)),
        )
        .await;
        let before = pid(&pool).await;
        let options = CallOptions::new().timeout(Duration::from_millis(300));
        let started = std::time::Instant::now();
        let err = tokio::time::timeout(
            HANG,
            pool.execute_with("swallow", json!({"ms": 3000}), options),
        )
        .await
        .expect("hung")
        .unwrap_err();
        assert!(err.is_timeout(), "{lang}: {err:?}");
        assert!(
            started.elapsed() < Duration::from_millis(3000),
            "{lang}: the caller waited for the handler: {:?}",
            started.elapsed()
        );
        kept(&pool, before, lang).await;
        pool.shutdown().await.unwrap();
    }
}

/// bridges/node/README.md, Errors: "A chunk that cannot be encoded makes
/// `ctx.sendChunk` throw, and `callHost` arguments that cannot be encoded
/// make it reject; nothing is sent." bridges/ruby/README.md, Codecs: "A
/// chunk or `call_host` arguments the codec cannot represent raise that
/// error in the handler, and nothing is sent." (The Python README says
/// nothing of chunks; its bridge does the same.) A handler streaming to its
/// caller sends a chunk its codec cannot carry (a `BigInt`, a set, bytes
/// not valid UTF-8), catches the error, sends a good chunk and returns: the
/// caller gets exactly the good chunk, then the result naming the error it
/// caught. Left uncaught, the error is the call's failed reply. The worker
/// serves on, in every bridge and both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unencodable_chunk_raises_in_the_handler_and_sends_nothing_in_every_bridge() {
    use futures::StreamExt;
    use snakepit_core::StreamItem;
    for codec in CODECS {
        for (lang, bridge, caught, uncaught) in [
            ("python", python(codec), "bad_chunk", "bad_chunk_uncaught"),
            (
                "python async",
                python_async(codec),
                "bad_chunk",
                "bad_chunk_uncaught",
            ),
            ("node", node(codec), "badChunk", "badChunkUncaught"),
            ("ruby", ruby(codec), "bad_chunk", "bad_chunk_uncaught"),
        ] {
            let pool = start_one(bridge).await;
            let before = pid(&pool).await;
            let stream = async |command: &str| {
                let mut stream = pool
                    .execute_stream(command, json!({}), CallOptions::new())
                    .await
                    .unwrap();
                let mut items = Vec::new();
                while let Some(item) = tokio::time::timeout(HANG, stream.next())
                    .await
                    .expect("the stream hung")
                {
                    items.push(item);
                }
                items
            };
            let items = stream(caught).await;
            let shape: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
            assert_eq!(items.len(), 2, "{lang} {codec}: {shape:#?}");
            assert!(
                matches!(&items[0], Ok(StreamItem::Chunk(v)) if v == "fine"),
                "{lang} {codec}: {shape:#?}"
            );
            match &items[1] {
                Ok(StreamItem::Done(v)) => assert!(
                    v["caught"].as_str().is_some_and(|t| !t.is_empty()),
                    "{lang} {codec}: nothing was raised: {v}"
                ),
                other => panic!("{lang} {codec}: {other:?}"),
            }
            let items = stream(uncaught).await;
            let shape: Vec<String> = items.iter().map(|i| format!("{i:?}")).collect();
            assert_eq!(items.len(), 1, "{lang} {codec}: {shape:#?}");
            assert!(
                matches!(&items[0], Err(e) if e.remote().is_some()),
                "{lang} {codec}: {shape:#?}"
            );
            kept(&pool, before, &format!("{lang} {codec}")).await;
            pool.shutdown().await.unwrap();
        }
    }
}

/// docs/bridges.md, "Standard output belongs to the protocol": "the bridges
/// therefore send what user code prints to stderr, which the pool forwards
/// line by line to `tracing` (target `snakepit::worker`, level info)";
/// Python: "points descriptor 1 and `sys.stdout` at stderr, so `print`, C
/// libraries and subprocesses write to the log"; Node.js: "`process.stdout`
/// and every `console` method are pointed at stderr"; Ruby: "points
/// descriptor 1 and `$stdout` at stderr". A handler that closes (ends) what
/// it takes for its standard output (`sys.stdout.close()`,
/// `process.stdout.end()`, `$stdout.close`, as code written for a command
/// line tool does when it is done) closes the worker's stderr stream
/// itself, which the bridges gave it under that name: afterwards `print` /
/// `puts` in any handler fail (`ValueError`, `IOError`) and Node's
/// `console.log` output is silently lost, so the worker's log goes quiet
/// for good. Here: after the close, the next call prints a line; it must
/// succeed and the line must reach the pool's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_closing_its_stdout_does_not_silence_the_workers_log() {
    let events = snakepit_tests::Events::global();
    let mut broken = Vec::new();
    for (lang, bridge, close) in [
        ("python", python(WireCodec::Json), "close_sys_stdout"),
        ("node", node(WireCodec::Json), "endStdout"),
        ("ruby", ruby(WireCodec::Json), "close_dollar_stdout"),
    ] {
        let pool = start_one(bridge).await;
        let before = pid(&pool).await;
        let line = format!("after-the-close-{lang}-4471");
        call(&pool, close, json!({})).await.unwrap();
        match call(&pool, "print", json!({ "text": line })).await {
            Ok(_) => {
                let logged = eventually(10, || {
                    events
                        .lines("snakepit::worker", before as u32)
                        .contains(&line)
                })
                .await;
                if !logged {
                    broken.push(format!("{lang}: the printed line never reached the log"));
                }
            }
            Err(e) => broken.push(format!("{lang}: print failed: {e}")),
        }
        pool.shutdown().await.unwrap();
    }
    assert!(broken.is_empty(), "{broken:#?}");
}

/// docs/bridges.md ("Values neither codec can carry"): under JSON, map keys
/// that become the same string leave the last one (Python's `1` and `"1"`,
/// Ruby's `1` and `"1"`), and under MessagePack such a map fails `execute`
/// with `Error::Codec`; Node.js under JSON drops properties whose values
/// are functions or symbols, which fail the reply under MessagePack, and
/// turns a generator into `{}`; Ruby under JSON writes any other object as
/// its text. Every worker serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_neither_codec_carries_are_treated_as_bridges_md_says() {
    let mut wrong = Vec::new();
    let mut check =
        |what: String, got: Result<Value, Error>, ok: &dyn Fn(&Result<Value, Error>) -> bool| {
            if !ok(&got) {
                wrong.push(format!("{what}: {got:?}"));
            }
        };
    for codec in CODECS {
        let json = codec == WireCodec::Json;
        let codec_error = |r: &Result<Value, Error>| matches!(r, Err(Error::Codec { .. }));
        for (lang, bridge) in [("python", python(codec)), ("ruby", ruby(codec))] {
            let pool = start_one(bridge).await;
            let got = call(&pool, "colliding_keys", json!({})).await;
            let last = |r: &Result<Value, Error>| matches!(r, Ok(v) if v["1"] == "str");
            check(
                format!("{lang} {codec} colliding keys"),
                got,
                if json { &last } else { &codec_error },
            );
            if lang == "ruby" && json {
                let got = call(&pool, "set", json!({})).await;
                let text = |r: &Result<Value, Error>| matches!(r, Ok(v) if v["v"].is_string());
                check(format!("ruby {codec} set"), got, &text);
                let got = call(&pool, "object", json!({})).await;
                check(format!("ruby {codec} object"), got, &text);
            }
            check(
                format!("{lang} {codec} serves on"),
                call(&pool, "pid", json!({})).await,
                &|r| r.is_ok(),
            );
            pool.shutdown().await.unwrap();
        }
        let pool = start_one(node(codec)).await;
        for command in ["fn", "symbol"] {
            let got = call(&pool, command, json!({})).await;
            let dropped = |r: &Result<Value, Error>| matches!(r, Ok(v) if *v == json!({"w": 1}));
            let encode_error = |r: &Result<Value, Error>| matches!(r, Err(e) if e.remote().is_some_and(|r| r.kind.as_deref() == Some("EncodeError")));
            check(
                format!("node {codec} {command}"),
                got,
                if json { &dropped } else { &encode_error },
            );
        }
        let got = call(&pool, "generator", json!({})).await;
        check(
            format!("node {codec} generator"),
            got,
            &|r| matches!(r, Ok(v) if *v == json!({})),
        );
        check(
            format!("node {codec} serves on"),
            call(&pool, "pid", json!({})).await,
            &|r| r.is_ok(),
        );
        pool.shutdown().await.unwrap();
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
