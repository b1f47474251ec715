//! Round 5 of an outside review, continued: application code that panics
//! on the pool's paths (the adapter's per-call hooks, the `trace_context`
//! hook), a preload template that floods the host with exit reports, and
//! a host function registered twice. Each against real Python workers.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use snakepit_core::{Adapter, CallOptions, Error, HostCall, Launch, Pool, WireCodec};

/// The adapter hooks that can be made to panic.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Hook {
    Validate,
    Prepare,
    Process,
    Timeout,
}

/// The bridge test worker, whose `hook` panics for the command `echo`
/// (and for no other).
struct Panicking(Hook);

impl Adapter for Panicking {
    fn launch(&self) -> Launch {
        TestWorker::new().launch()
    }
    fn codec(&self) -> WireCodec {
        WireCodec::Json
    }
    fn validate_command(&self, command: &str, _: &Value) -> Result<(), String> {
        if self.0 == Hook::Validate && command == "echo" {
            panic!("validate_command exploded");
        }
        Ok(())
    }
    fn prepare_args(&self, command: &str, args: Value) -> Value {
        if self.0 == Hook::Prepare && command == "echo" {
            panic!("prepare_args exploded");
        }
        args
    }
    fn process_response(&self, command: &str, result: Value) -> Result<Value, String> {
        if self.0 == Hook::Process && command == "echo" {
            panic!("process_response exploded");
        }
        Ok(result)
    }
    fn command_timeout(&self, command: &str) -> Duration {
        if self.0 == Hook::Timeout && command == "echo" {
            panic!("command_timeout exploded");
        }
        Duration::from_secs(60)
    }
}

/// The pid of the worker that answers `context`.
async fn context_pid(pool: &Pool) -> u64 {
    let r = pool.execute("context", json!({})).await.unwrap();
    r["pid"].as_u64().unwrap()
}

/// Calls `echo` on a one-worker pool whose `hook` panics on it, from a
/// task of its own (so a panic that reaches the caller shows as a failed
/// join, not as this test's own panic), and checks what every hook
/// promises: the call fails with the error `expected` accepts, naming the
/// panic; it counts once, as an error, never as cancelled; the worker that
/// served before serves on.
async fn a_panicking_hook_fails_only_its_call(hook: Hook, expected: fn(&Error) -> bool) {
    let pool = builder(Panicking(hook)).size(1).start().await.unwrap();
    let pid = context_pid(&pool).await;
    let before = pool.stats();
    let caller = pool.clone();
    let joined = tokio::spawn(async move { caller.execute("echo", json!({"x": 1})).await }).await;
    let r = joined.unwrap_or_else(|e| panic!("the {hook:?} panic reached the caller's task: {e}"));
    let err = r.expect_err("a call whose hook panicked cannot succeed");
    assert!(expected(&err), "{hook:?}: unexpected error {err:?}");
    assert!(
        err.to_string().contains("exploded"),
        "{hook:?}: the error names the panic: {err}"
    );
    let after = pool.stats();
    assert_eq!(after.requests - before.requests, 1, "{hook:?}: one request");
    assert_eq!(
        after.errors - before.errors,
        1,
        "{hook:?}: counted as an error"
    );
    assert_eq!(after.cancelled, before.cancelled, "{hook:?}: not cancelled");
    assert_eq!(after.completed, before.completed, "{hook:?}: not completed");
    assert_eq!(after.crashes, before.crashes, "{hook:?}: no crash");
    assert_eq!(
        context_pid(&pool).await,
        pid,
        "{hook:?}: the same worker serves on"
    );
    let _ = pool.shutdown().await;
}

fn validation(e: &Error) -> bool {
    matches!(e, Error::Validation { command, .. } if command == "echo")
}

/// Adapter::validate_command: "an `Err` message fails the call with
/// Error::Validation"; a panic does the same, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validate_command_that_panics_fails_the_call_with_validation() {
    a_panicking_hook_fails_only_its_call(Hook::Validate, validation).await;
}

/// Adapter::prepare_args: a panic refuses the call with Error::Validation
/// naming it; nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_args_that_panics_fails_the_call_with_validation() {
    a_panicking_hook_fails_only_its_call(Hook::Prepare, validation).await;
}

/// Adapter::process_response: "an `Err` message fails the call with
/// Error::ResultRefused (the call ran)"; a panic does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_response_that_panics_refuses_the_result() {
    a_panicking_hook_fails_only_its_call(
        Hook::Process,
        |e| matches!(e, Error::ResultRefused { command, .. } if command == "echo"),
    )
    .await;
}

/// Adapter::command_timeout: a panic leaves the call without a deadline,
/// so it is refused with Error::Validation naming the panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_timeout_that_panics_fails_the_call_with_validation() {
    a_panicking_hook_fails_only_its_call(Hook::Timeout, validation).await;
}

/// The same for a streamed call: its hooks run on the caller's task too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_hook_panics_fails_with_validation() {
    for hook in [Hook::Prepare, Hook::Timeout] {
        let pool = builder(Panicking(hook)).size(1).start().await.unwrap();
        let pid = context_pid(&pool).await;
        let caller = pool.clone();
        let joined = tokio::spawn(async move {
            caller
                .execute_stream("echo", json!({}), CallOptions::new())
                .await
                .map(|_| ())
        })
        .await;
        let r = joined.unwrap_or_else(|e| panic!("the {hook:?} panic reached the caller: {e}"));
        let err = r.expect_err("a stream whose hook panicked cannot start");
        assert!(validation(&err), "{hook:?}: unexpected error {err:?}");
        let stats = pool.stats();
        assert_eq!(stats.cancelled, 0, "{hook:?}: not cancelled");
        assert_eq!(stats.errors, 1, "{hook:?}: one error");
        assert_eq!(
            context_pid(&pool).await,
            pid,
            "{hook:?}: the worker serves on"
        );
        let _ = pool.shutdown().await;
    }
}

/// PoolBuilder::trace_context: tracing is best effort. A hook that panics
/// leaves its call without trace headers; the call itself runs and
/// succeeds, counted as completed, on the same worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_context_hook_that_panics_leaves_the_call_untraced() {
    let pool = builder(TestWorker::new())
        .size(1)
        .trace_context(|| panic!("trace_context exploded"))
        .start()
        .await
        .unwrap();
    let caller = pool.clone();
    let joined = tokio::spawn(async move { caller.execute("context", json!({})).await }).await;
    let r = joined
        .unwrap_or_else(|e| panic!("the trace_context panic reached the caller's task: {e}"))
        .expect("the call runs without trace headers");
    assert_eq!(r["traceparent"], Value::Null, "no trace headers were sent");
    let pid = r["pid"].as_u64().unwrap();
    let stats = pool.stats();
    assert_eq!(
        (
            stats.requests,
            stats.completed,
            stats.errors,
            stats.cancelled
        ),
        (1, 1, 0, 0)
    );
    // A trace parent of the call's own does not ask the hook.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = pool
        .execute_with("context", json!({}), CallOptions::new().traceparent(tp))
        .await
        .unwrap();
    assert_eq!(r["traceparent"], tp);
    assert_eq!(r["pid"].as_u64().unwrap(), pid, "the same worker serves on");
    let _ = pool.shutdown().await;
}

/// PoolBuilder::host_function: two functions under one name are a mistake
/// that `start` refuses with Error::Config naming the function, rather
/// than keep one of them in silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_function_registered_twice_is_refused_at_start() {
    let r = builder(TestWorker::new())
        .size(1)
        .host_function("lookup", |_: HostCall| async { Ok(json!(1)) })
        .host_function("other", |_: HostCall| async { Ok(json!(3)) })
        .host_function("lookup", |_: HostCall| async { Ok(json!(2)) })
        .start()
        .await;
    match r {
        Err(Error::Config(message)) => {
            assert!(
                message.contains("\"lookup\""),
                "names the function: {message}"
            )
        }
        Err(e) => panic!("expected Error::Config, got {e:?}"),
        Ok(pool) => {
            let _ = pool.shutdown().await;
            panic!("a pool with two host functions named `lookup` started");
        }
    }
    // Distinct names start as before.
    let pool = builder(TestWorker::new())
        .size(1)
        .host_function("lookup", |_: HostCall| async { Ok(json!(1)) })
        .host_function("other", |_: HostCall| async { Ok(json!(3)) })
        .start()
        .await
        .unwrap();
    let _ = pool.shutdown().await;
}

/// `tests/workers/round5_hooks_template.py`, preloaded, flooding the pool
/// with `flood` exit reports before it is ready.
struct Flooding(u64);

impl Adapter for Flooding {
    fn launch(&self) -> Launch {
        Launch::new(python())
            .arg(root().join("crates/core/tests/workers/round5_hooks_template.py"))
            .env("PYTHONPATH", root().join("bridges/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("R5_FLOOD", self.0.to_string())
            .preloaded()
    }
}

/// A preload template is the application's process: exit reports for
/// pids that are none of its workers must not grow the host's memory. One
/// million of them, each kept, would take tens of MiB; ignored, the host's
/// resident memory barely moves. The pool still works: its worker forks,
/// serves, and is recycled with its exit seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_reports_for_pids_a_template_did_not_fork_are_not_kept() {
    const FLOOD: u64 = 1_000_000;
    let before = host_rss_kib();
    let pool = builder(Flooding(FLOOD))
        .size(1)
        .configure(|c| {
            // The flood takes seconds on a loaded machine: the start waits.
            c.worker_init_timeout = Duration::from_secs(300);
            c.startup_timeout = Duration::from_secs(300);
        })
        .start()
        .await
        .unwrap();
    // The template's `ready` follows the whole flood on its ordered
    // socket: the pool has read every report by now.
    let grown = host_rss_kib().saturating_sub(before);
    let r = pool.execute("pid", json!({})).await.unwrap();
    let pid = r["pid"].as_u64().unwrap() as u32;
    assert!(alive(pid));
    let _ = pool.shutdown().await;
    assert!(
        grown < 16 * 1024,
        "the host's memory grew by {grown} KiB while the template reported {FLOOD} exits of pids it never forked"
    );
}
