//! Code review of the worker side (worker.rs, worker/{stdin,reader,host}.rs):
//! races between the reader, the writer and the callers, host calls, and
//! deadlines, each shown with real worker processes
//! (`tests/workers/review_worker_hostile.py`, a raw worker without the
//! bridge).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use snakepit_core::{Adapter, CallOptions, Error, Launch, PoolBuilder};

/// The hostile raw worker with the given hello capabilities.
struct Hostile {
    caps: Value,
    env: Vec<(String, String)>,
}

impl Hostile {
    fn new(caps: Value) -> Self {
        Hostile { caps, env: vec![] }
    }
}

impl Adapter for Hostile {
    fn launch(&self) -> Launch {
        let mut l = Launch::new(python())
            .arg(root().join("crates/core/tests/workers/review_worker_hostile.py"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("REVIEW_CAPS", self.caps.to_string());
        for (k, v) in &self.env {
            l = l.env(k, v);
        }
        l
    }
    fn command_timeout(&self, _: &str) -> Duration {
        Duration::from_secs(60)
    }
}

fn hostile(caps: Value) -> PoolBuilder {
    builder(Hostile::new(caps))
}

fn timeout(d: Duration) -> CallOptions {
    CallOptions::new().timeout(d)
}

/// ARCHITECTURE.md, "Timeouts and cancellation": "The deadline counts from
/// submission"; README: `CallTimeout` = "the deadline passed". A call whose
/// deadline comes after the one the reader's timer is already set for has
/// no timer of its own (`Worker::register_until` returns `true`): the
/// reader watches it. When that worker then closes its stdout and lives
/// on, the reader leaves its loop (Ending::Eof) and waits out the grace
/// period for the exit, with no timer running: the caller hears nothing at
/// its deadline, only when the grace period (here 15 s) is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_watched_by_the_readers_timer_times_out_at_its_deadline_when_stdout_closes() {
    let pool = hostile(json!({"max_concurrency": 1}))
        .configure(|c| c.shutdown_grace_period = Duration::from_secs(15))
        .size(1)
        .start()
        .await
        .unwrap();
    let pid = pool.worker_pids()[0];
    // This call's reply arms the reader's timer for its deadline (3 s).
    pool.execute_with("ok", json!({}), timeout(Duration::from_secs(3)))
        .await
        .unwrap();
    // The reader sets its timer just after it routed that reply.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The next call's deadline is later than that: the reader watches it.
    let started = Instant::now();
    let err = pool
        .execute_with(
            "close_stdout",
            json!({}),
            timeout(Duration::from_millis(3500)),
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    // The worker lives on without its stdout (`close_stdout` sleeps for
    // 120 s), and the pool gives it the 15 s grace period to exit, which
    // `shutdown` would wait out. Killed once `took` is measured, it ends
    // at once: a call that hears nothing until the grace period is over
    // (the defect) still takes 15 s and fails the assertion below.
    kill_9(pid);
    pool.shutdown().await.unwrap();
    assert!(
        took < Duration::from_secs(9),
        "a call with a 3.5 s timeout returned after {took:?} ({err})"
    );
}

/// Control for the test above: the same worker and the same call, without a
/// call before it to arm the reader's timer (the caller keeps its own
/// timer), ends at its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_with_its_own_timer_times_out_at_its_deadline_when_stdout_closes() {
    let pool = hostile(json!({"max_concurrency": 1}))
        .configure(|c| c.shutdown_grace_period = Duration::from_secs(15))
        .size(1)
        .start()
        .await
        .unwrap();
    let pid = pool.worker_pids()[0];
    let started = Instant::now();
    let err = pool
        .execute_with(
            "close_stdout",
            json!({}),
            timeout(Duration::from_millis(3500)),
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    // The worker lives on without its stdout (`close_stdout` sleeps for
    // 120 s), and the pool gives it the 15 s grace period to exit, which
    // `shutdown` would wait out. Killed once `took` is measured, it ends
    // at once: a call that hears nothing until the grace period is over
    // (the defect) still takes 15 s and fails the assertion below.
    kill_9(pid);
    pool.shutdown().await.unwrap();
    assert!(
        took < Duration::from_secs(9),
        "a call with a 3.5 s timeout returned after {took:?} ({err})"
    );
    assert!(err.is_timeout(), "{err}");
}

/// A pipelined worker (hello: `pipeline`, no `cancel`, no `sigint`) runs
/// call A, which takes a host reply of more than 1 MiB, then works on;
/// call B is written ahead behind it and times out. B never started: the
/// pool must treat it as waiting (a `cancel` frame, and the grace loop in
/// `Worker::abandon` waits while B waits behind A). The record of recent
/// request frames (`StdinState::recent`) once dropped frames more than
/// 1 MiB behind what was written, host replies included: A's frame was
/// gone from it, `Stdin::first_written` named B as the call running, no
/// cancel was sent, and after the grace period the worker was killed as
/// stuck on B, failing A, which was running well. Calls now leave the
/// record only as they end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_written_ahead_behind_a_call_with_large_host_replies_does_not_kill_it() {
    call_written_ahead_times_out_behind_a_host_call(1_200_000).await;
}

/// Control for the test above: the same with a small host reply passes
/// (the call written ahead is seen waiting, gets a `cancel`, and the
/// running call ends well).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_written_ahead_behind_a_call_with_small_host_replies_does_not_kill_it() {
    call_written_ahead_times_out_behind_a_host_call(1000).await;
}

async fn call_written_ahead_times_out_behind_a_host_call(reply_len: usize) {
    let pool = hostile(json!({"max_concurrency": 1, "pipeline": true, "host_calls": true}))
        .configure(|c| {
            c.shutdown_grace_period = Duration::from_secs(1);
            c.pipeline_depth = 4;
            c.pipeline_max_call = Duration::from_secs(2);
        })
        .host_function(
            "big",
            move |_| async move { Ok(json!("x".repeat(reply_len))) },
        )
        .size(1)
        .start()
        .await
        .unwrap();
    let pid = pool.worker_pids()[0];
    // Short calls: the pool learns that this worker's calls are short.
    for _ in 0..10 {
        pool.execute("ok", json!({})).await.unwrap();
    }
    let p = pool.clone();
    let a = tokio::spawn(async move {
        p.execute_with(
            "host_then_sleep",
            json!({"function": "big", "ms": 5000}),
            timeout(Duration::from_secs(30)),
        )
        .await
    });
    // A has had its host reply and sleeps.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let b = pool
        .execute_with("ok", json!({}), timeout(Duration::from_millis(800)))
        .await;
    assert!(
        matches!(&b, Err(Error::CallTimeout { .. })),
        "B is written ahead behind A and times out there: {b:?}"
    );
    let a = a.await.unwrap();
    let workers = pool.worker_pids();
    pool.shutdown().await.unwrap();
    let a = a.unwrap_or_else(|e| panic!("A, which was running well, failed: {e}"));
    assert_eq!(a["pid"].as_u64(), Some(u64::from(pid)));
    assert_eq!(a["size"].as_u64(), Some(reply_len as u64 + 2));
    assert_eq!(workers, vec![pid], "the worker was not replaced");
}

/// docs/reliability.md, "Crashes stay contained": a call given to a worker
/// that dies "if the worker never read it, it goes to another worker"; for
/// a pipelined worker `read_loop` counts every call written behind the
/// first one in flight as never run. Same cause as above: once more than
/// 1 MiB (host replies) went to the worker after the running call's frame,
/// that frame is out of `StdinState::recent`, the call written ahead is
/// taken for the one running, and when the worker is killed it fails with
/// `WorkerCrashed` instead of going to the replacement. (The worker reads
/// the call written ahead before it works on, as a bridge with a reader
/// thread does, so the pipe's unread bytes do not tell.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_written_ahead_behind_large_host_replies_goes_to_the_replacement_when_the_worker_dies(
) {
    call_written_ahead_when_the_worker_dies(1_200_000).await;
}

/// Control for the test above, with a small host reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_written_ahead_behind_small_host_replies_goes_to_the_replacement_when_the_worker_dies(
) {
    call_written_ahead_when_the_worker_dies(1000).await;
}

async fn call_written_ahead_when_the_worker_dies(reply_len: usize) {
    let pool = hostile(json!({"max_concurrency": 1, "pipeline": true, "host_calls": true}))
        .configure(|c| {
            c.pipeline_depth = 4;
            c.pipeline_max_call = Duration::from_secs(2);
        })
        .host_function(
            "big",
            move |_| async move { Ok(json!("x".repeat(reply_len))) },
        )
        .size(1)
        .start()
        .await
        .unwrap();
    let pid = pool.worker_pids()[0];
    for _ in 0..10 {
        pool.execute("ok", json!({})).await.unwrap();
    }
    let p = pool.clone();
    let a = tokio::spawn(async move {
        p.execute_with(
            "host_then_sleep",
            json!({"function": "big", "ms": 20000, "read_ahead": true}),
            timeout(Duration::from_secs(30)),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let p = pool.clone();
    let b = tokio::spawn(async move {
        p.execute_with("ok", json!({}), timeout(Duration::from_secs(30)))
            .await
    });
    // B is written ahead behind A (it is in flight on A's worker).
    assert!(
        eventually(10, || pool.stats().in_flight == 2).await,
        "B is in flight beside A"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill_9(pid);
    let a = a.await.unwrap();
    let b = b.await.unwrap();
    pool.shutdown().await.unwrap();
    assert!(matches!(&a, Err(Error::WorkerCrashed(_))), "A: {a:?}");
    let b = b.unwrap_or_else(|e| panic!("B never ran, yet failed: {e}"));
    assert_ne!(
        b["pid"].as_u64(),
        Some(u64::from(pid)),
        "B ran on the replacement"
    );
}

/// An inline Python script on the bridge, preloaded (a template forks the
/// workers).
struct Preloaded(&'static str);

impl Adapter for Preloaded {
    fn launch(&self) -> Launch {
        inline_launch(Lang::Python, self.0).preloaded()
    }
}

/// This process's peak resident memory (`VmHWM`), in KiB.
fn host_peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// docs/reliability.md: what a worker writes to stderr "keeps at most
/// 2,048 bytes [a line], so host memory stays flat whatever the worker
/// writes"; docs/preload.md: the template's stdout and stderr "go to the
/// pool's log of the template". The template's log (`template.rs`,
/// `log_lines`) splits on `\n` only and holds a whole line in memory before
/// it cuts it to 2,048 bytes: a template that writes 256 MiB without a
/// newline (a progress bar redrawn with `\r` while a model loads, or a
/// hostile script) grows the host by as much.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_templates_endless_output_line_keeps_host_memory_flat() {
    template_writes_256_mib(r"\r").await;
}

/// Control for the test above: the same output in lines of 1 MiB keeps
/// the host flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_templates_long_output_lines_keep_host_memory_flat() {
    template_writes_256_mib(r"\n").await;
}

/// A preloaded pool whose template writes 256 MiB to stderr, 1 MiB at a
/// time, each piece after `separator` (a Python string literal's body).
async fn template_writes_256_mib(separator: &str) {
    let script = format!(
        r#"
import sys, snakepit_bridge
chunk = "{separator}" + "x" * (1 << 20)
for _ in range(256):
    sys.stderr.write(chunk)
sys.stderr.flush()
w = snakepit_bridge.Worker()

@w.command("ok")
def ok(args, ctx):
    return 1

w.run()
"#
    );
    let script: &'static str = Box::leak(script.into_boxed_str());
    let before = host_peak_kib();
    let pool = builder(Preloaded(script))
        .configure(|c| c.startup_timeout = Duration::from_secs(60))
        .size(1)
        .start()
        .await
        .unwrap();
    assert_eq!(pool.execute("ok", json!({})).await.unwrap(), json!(1));
    let grown = host_peak_kib().saturating_sub(before);
    pool.shutdown().await.unwrap();
    assert!(
        grown < 64 * 1024,
        "the host's peak memory grew by {grown} KiB while the template wrote 256 MiB"
    );
}

/// docs/reliability.md: "A call written ahead that still waits behind the
/// one its worker runs never started: it gets `Error::ShutDown`
/// (`never_ran()`)" when shutdown's grace period ends. Same cause as the
/// tests above: with more than 1 MiB of host replies after the running
/// call's frame, `Worker::cut_off` (through `Stdin::written_behind`) takes
/// the call written ahead for the running one: `StoppedByShutdown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_written_ahead_behind_large_host_replies_never_ran_when_shutdown_cuts_it_off() {
    call_written_ahead_at_shutdown(1_200_000).await;
}

/// Control for the test above, with a small host reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_written_ahead_behind_small_host_replies_never_ran_when_shutdown_cuts_it_off() {
    call_written_ahead_at_shutdown(1000).await;
}

async fn call_written_ahead_at_shutdown(reply_len: usize) {
    let pool = hostile(json!({"max_concurrency": 1, "pipeline": true, "host_calls": true}))
        .configure(|c| {
            c.shutdown_grace_period = Duration::from_secs(1);
            c.pipeline_depth = 4;
            c.pipeline_max_call = Duration::from_secs(2);
        })
        .host_function(
            "big",
            move |_| async move { Ok(json!("x".repeat(reply_len))) },
        )
        .size(1)
        .start()
        .await
        .unwrap();
    for _ in 0..10 {
        pool.execute("ok", json!({})).await.unwrap();
    }
    let p = pool.clone();
    let a = tokio::spawn(async move {
        p.execute_with(
            "host_then_sleep",
            json!({"function": "big", "ms": 20000}),
            timeout(Duration::from_secs(30)),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let p = pool.clone();
    let b = tokio::spawn(async move {
        p.execute_with("ok", json!({}), timeout(Duration::from_secs(30)))
            .await
    });
    assert!(
        eventually(10, || pool.stats().in_flight == 2).await,
        "B is in flight beside A"
    );
    pool.shutdown().await.unwrap();
    let a = a.await.unwrap();
    let b = b.await.unwrap();
    assert!(
        matches!(&a, Err(Error::StoppedByShutdown { .. })),
        "A: {a:?}"
    );
    assert!(matches!(&b, Err(Error::ShutDown)), "B never started: {b:?}");
}

/// A pool of the hostile worker (host calls declared) offering `who`,
/// which answers with the session and worker the host call came with.
async fn who_pool(size: usize) -> snakepit_core::Pool {
    hostile(json!({"max_concurrency": 1, "host_calls": true}))
        .host_function("who", |call: snakepit_core::HostCall| async move {
            Ok(json!({"session": call.session_id, "worker": call.worker_id}))
        })
        .size(size)
        .start()
        .await
        .unwrap()
}

/// docs/protocol.md, `host_call`: "`request_id` names the request being
/// served, which is how the pool knows the session". A host call for a
/// request that has ended (its reply sent) is still answered, without that
/// request's session, and is no protocol error: the worker serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_call_for_a_request_that_ended_is_answered_without_its_session() {
    let pool = who_pool(1).await;
    let pid = pool.worker_pids()[0];
    let r = pool
        .execute_with(
            "host_after_reply",
            json!({"function": "who"}),
            CallOptions::new().session("s-ended"),
        )
        .await
        .unwrap();
    assert_eq!(r["pid"].as_u64(), Some(u64::from(pid)));
    let mut kept = Value::Null;
    for _ in 0..50 {
        kept = pool.execute("last_host", json!({})).await.unwrap();
        if !kept.is_null() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let workers = pool.worker_pids();
    pool.shutdown().await.unwrap();
    assert_eq!(kept["success"], json!(true), "{kept}");
    assert_eq!(kept["result"]["session"], Value::Null, "{kept}");
    assert_eq!(workers, vec![pid], "the worker was kept");
}

/// A worker cannot borrow the session of a call running on another worker
/// by naming its request id (ids are a counter any worker can guess): the
/// session comes only from the calling worker's own calls in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_call_naming_another_workers_request_gets_no_session() {
    let pool = who_pool(2).await;
    let p = pool.clone();
    let secret = tokio::spawn(async move {
        p.execute_with(
            "sleep",
            json!({"ms": 1500}),
            CallOptions::new().session("secret"),
        )
        .await
    });
    assert!(eventually(10, || pool.stats().in_flight == 1).await);
    // This call's id is the secret call's plus one.
    let r = pool
        .execute("host_for", json!({"function": "who", "offset": -1}))
        .await
        .unwrap();
    let own = pool
        .execute_with(
            "host_for",
            json!({"function": "who", "offset": 0}),
            CallOptions::new().session("mine"),
        )
        .await
        .unwrap();
    let secret = secret.await.unwrap().unwrap();
    pool.shutdown().await.unwrap();
    assert_eq!(
        r["named"], secret["id"],
        "the host call named the secret call"
    );
    assert_ne!(r["reply"]["result"]["worker"], Value::Null, "{r}");
    assert_eq!(r["reply"]["success"], json!(true), "{r}");
    assert_eq!(r["reply"]["result"]["session"], Value::Null, "{r}");
    assert_eq!(own["reply"]["result"]["session"], json!("mine"), "{own}");
}

/// The same defect as
/// `a_timed_out_call_written_ahead_behind_a_call_with_large_host_replies_does_not_kill_it`,
/// through the bundled Python bridge (one call at a time: `pipeline`,
/// `sigint`, no `cancel`), whose handler reads a large value from the host
/// (`ctx.call_host`) and works on. docs/reliability.md: a call written
/// ahead whose caller gives up before it starts never runs, "the call in
/// front is not disturbed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_bridge_call_in_front_of_a_timed_out_call_written_ahead_is_not_disturbed() {
    bridge_call_in_front(1_200_000).await;
}

/// Control for the test above, with a small host reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_bridge_call_in_front_of_a_timed_out_call_written_ahead_with_small_host_replies_is_not_disturbed(
) {
    bridge_call_in_front(1000).await;
}

struct Bridge(&'static str);

impl Adapter for Bridge {
    fn launch(&self) -> Launch {
        inline_launch(Lang::Python, self.0)
    }
    fn command_timeout(&self, _: &str) -> Duration {
        Duration::from_secs(60)
    }
}

async fn bridge_call_in_front(reply_len: usize) {
    const SCRIPT: &str = r#"
import os, time, snakepit_bridge
w = snakepit_bridge.Worker()

@w.command("ok")
def ok(args, ctx):
    return os.getpid()

@w.command("host_then_sleep")
def host_then_sleep(args, ctx):
    r = ctx.call_host("big", {})
    time.sleep(args["ms"] / 1000)
    return {"pid": os.getpid(), "size": len(r)}

w.run()
"#;
    let pool = builder(Bridge(SCRIPT))
        .configure(|c| {
            c.shutdown_grace_period = Duration::from_secs(1);
            c.pipeline_depth = 4;
            c.pipeline_max_call = Duration::from_secs(2);
        })
        .host_function(
            "big",
            move |_| async move { Ok(json!("x".repeat(reply_len))) },
        )
        .size(1)
        .start()
        .await
        .unwrap();
    let pid = pool.worker_pids()[0];
    for _ in 0..10 {
        pool.execute("ok", json!({})).await.unwrap();
    }
    let p = pool.clone();
    let a = tokio::spawn(async move {
        p.execute_with(
            "host_then_sleep",
            json!({"ms": 5000}),
            timeout(Duration::from_secs(30)),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let b = pool
        .execute_with("ok", json!({}), timeout(Duration::from_millis(800)))
        .await;
    assert!(
        matches!(&b, Err(Error::CallTimeout { .. })),
        "B is written ahead behind A and times out there: {b:?}"
    );
    let a = a.await.unwrap();
    let workers = pool.worker_pids();
    pool.shutdown().await.unwrap();
    let a = a.unwrap_or_else(|e| panic!("A, which was running well, failed: {e}"));
    assert_eq!(a["pid"].as_u64(), Some(u64::from(pid)));
    assert_eq!(a["size"].as_u64(), Some(reply_len as u64));
    assert_eq!(workers, vec![pid], "the worker was not replaced");
}
