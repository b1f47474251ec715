//! `ctx.call_host` from threads a handler starts, with real pools and the
//! bundled bridges (docs/bridges.md, "Host functions and the session
//! store"): while the call runs, every thread's host call gets its own
//! answer, with the call's session; once the call has ended, the ctx's host
//! calls raise `Cancelled` in the worker, reach no host function, and the
//! worker serves on.
//!
//! The worker scripts are tests/workers/host_call_threads.{py,rb}. Before
//! the fix, a Python worker serving one call at a time failed such host
//! calls with `RuntimeError: concurrent poll() invocation` (or lost their
//! replies), and a thread's host call after its call had ended reached the
//! host without the call's session, or took the next call's frames.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::{CallOptions, HostCall, Pool, WireCodec};

#[allow(dead_code)] // this file does not use every shared helper
mod common;
use common::worker as script;

#[derive(Clone, Copy, Debug)]
enum Worker {
    /// Plain functions, one call at a time (SIGINT, pipeline).
    PythonOneAtATime,
    /// `max_concurrency=4`: the asyncio loop, plain functions on threads.
    PythonConcurrent,
    Ruby,
}

const WORKERS: [Worker; 3] = [
    Worker::PythonOneAtATime,
    Worker::PythonConcurrent,
    Worker::Ruby,
];

fn bridge(worker: Worker, codec: WireCodec) -> Bridge {
    match worker {
        Worker::PythonOneAtATime => Bridge::python(script("host_call_threads.py")),
        Worker::PythonConcurrent => {
            Bridge::python(script("host_call_threads.py")).env("HCT_MODE", "concurrent")
        }
        Worker::Ruby => Bridge::ruby(script("host_call_threads.rb")),
    }
    .codec(codec)
}

/// A one-worker pool whose host function `echo` answers with its args and
/// the session of the call that made it, counting the host calls it runs.
async fn start(worker: Worker, codec: WireCodec) -> (Pool, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let pool = Pool::builder(bridge(worker, codec))
        .size(1)
        .host_function("echo", move |call: HostCall| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { Ok(json!({"args": call.args, "session": call.session_id})) }
        })
        .start()
        .await
        .unwrap_or_else(|e| panic!("{worker:?}/{codec}: the pool did not start: {e}"));
    (pool, runs)
}

fn in_time() -> CallOptions {
    CallOptions::new().timeout(Duration::from_secs(20))
}

/// Threads a handler starts call the host while the handler calls it too:
/// each gets the answer to its own call, with the call's session, and the
/// worker is neither replaced nor stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_thread_gets_its_own_answer_while_the_call_runs() {
    for worker in WORKERS {
        for codec in [WireCodec::Json, WireCodec::MsgPack] {
            let what = format!("{worker:?}/{codec}");
            let (pool, runs) = start(worker, codec).await;
            let pid = pool.worker_pids()[0];
            for round in 0..3 {
                let session = format!("s-{round}");
                let out = pool
                    .execute_with(
                        "fan_out",
                        json!({"n": 4}),
                        in_time().session(session.as_str()),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{what}: fan_out failed: {e}"));
                for i in 0..4 {
                    assert_eq!(
                        out["threads"][i],
                        json!({"result": {"args": {"i": i}, "session": session}}),
                        "{what}: thread {i}: {out}"
                    );
                }
                assert_eq!(
                    out["here"],
                    json!({"result": {"args": {"i": "here"}, "session": session}}),
                    "{what}: {out}"
                );
            }
            assert_eq!(runs.load(Ordering::SeqCst), 15, "{what}");
            let next = pool.execute_with("go", json!({}), in_time()).await;
            assert_eq!(
                next.ok(),
                Some(json!(pid)),
                "{what}: the same worker serves on"
            );
            pool.shutdown().await.unwrap();
        }
    }
}

/// A thread the handler left running calls the host after the call has
/// ended: `Cancelled` in the worker ("request N is already finished"), no
/// host function runs, and the worker serves the next calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_call_after_its_call_ended_is_cancelled_in_the_worker() {
    for worker in WORKERS {
        for codec in [WireCodec::Json, WireCodec::MsgPack] {
            let what = format!("{worker:?}/{codec}");
            let (pool, runs) = start(worker, codec).await;
            let pid = pool.worker_pids()[0];
            for _ in 0..3 {
                let left = pool
                    .execute_with("leave", json!({}), in_time().session("s"))
                    .await;
                assert_eq!(left.ok(), Some(json!(pid)), "{what}");
                let go = pool.execute_with("go", json!({}), in_time()).await;
                assert_eq!(go.ok(), Some(json!(pid)), "{what}");
                let out = pool
                    .execute_with("outcome", json!({}), in_time())
                    .await
                    .unwrap_or_else(|e| panic!("{what}: outcome failed: {e}"));
                assert_eq!(out["type"], "Cancelled", "{what}: {out}");
                let message = out["message"].as_str().unwrap_or_default();
                assert!(message.contains("is already finished"), "{what}: {out}");
                assert_eq!(out["pid"], json!(pid), "{what}: {out}");
            }
            assert_eq!(
                runs.load(Ordering::SeqCst),
                0,
                "{what}: no host function runs for a call that has ended"
            );
            pool.shutdown().await.unwrap();
        }
    }
}
