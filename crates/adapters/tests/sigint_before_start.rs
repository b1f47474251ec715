//! A call given up just as its turn comes, on a worker cancelled by SIGINT
//! (Python with plain functions, and Ruby). The pool signals a call once it
//! is the only one on its worker, but the worker may still be reading or
//! decoding the request when the signal lands: its handler has not started,
//! and a bridge ignores SIGINT between calls. docs/bridges.md: "In every
//! case the reply is a failed reply of type `Cancelled`", and the call must
//! not then run to its end for nobody (a long one would cost the worker,
//! killed after the grace period).
//!
//! The request carries a large string, so that reading and decoding it
//! takes the worker tens of milliseconds; deadlines from 1 to 100 ms land
//! in that window, or in the handler, or before the request is out.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::{CallOptions, Error, Pool, WireCodec};

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workers")
        .join(name)
}

/// Gives up `slow` calls (a 4 MiB request, a handler of 3 s) at deadlines
/// from 1 to 100 ms, each on an idle worker of one, and checks that no
/// handler ran to its end and that the worker was never replaced.
async fn no_call_given_up_runs_to_its_end(bridge: Bridge) {
    let log = std::env::temp_dir().join(format!(
        "snakepit-sigint-early-{}-{:?}.log",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_file(&log);
    let pool = Pool::builder(bridge)
        .size(1)
        .configure(|c| {
            // Longer than the handler: a call whose SIGINT went unseen
            // runs to its end (and says so) instead of being killed.
            c.shutdown_grace_period = Duration::from_secs(10);
            // Every call alone on its worker: signalled, never a cancel
            // frame for a call written ahead.
            c.pipeline_depth = 0;
        })
        .start()
        .await
        .unwrap();
    let pid = pool.worker_pids()[0];
    let pad = "x".repeat(4 << 20);
    let args = json!({"pad": pad, "ms": 3000, "log": log});
    let mut calls = 0;
    for ms in (1..=100).step_by(3) {
        calls += 1;
        let r = pool
            .execute_with(
                "slow",
                args.clone(),
                CallOptions::new().timeout(Duration::from_millis(ms)),
            )
            .await;
        assert!(
            matches!(r, Err(Error::CallTimeout { .. })),
            "deadline {ms} ms: {r:?}"
        );
        // The next call waits for the worker to be free again: the given-up
        // call answered (Cancelled, or its end) or the worker replaced.
        let r = pool
            .execute_with(
                "slow",
                json!({"pad": "", "ms": 0, "log": "/dev/null"}),
                CallOptions::new().timeout(Duration::from_secs(30)),
            )
            .await;
        assert!(r.is_ok(), "after deadline {ms} ms: {r:?}");
    }
    let pids = pool.worker_pids();
    pool.shutdown().await.unwrap();
    let notes = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let count = |what: &str| notes.lines().filter(|l| *l == what).count();
    let (started, ended) = (count("start"), count("end"));
    assert_eq!(
        ended, 0,
        "given-up calls ran to their end ({started} started): a SIGINT landed \
         before the handler started and was ignored"
    );
    // The window under test was hit: some calls were stopped before their
    // handler started (at 1 ms, 4 MiB are not even written).
    assert!(started < calls, "{started} of {calls} calls started");
    assert_eq!(pids, vec![pid], "the worker was replaced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_a_call_signalled_before_its_handler_starts_never_runs_to_its_end() {
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        no_call_given_up_runs_to_its_end(Bridge::python(script("sigint_early.py")).codec(codec))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_a_call_signalled_before_its_handler_starts_never_runs_to_its_end() {
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        no_call_given_up_runs_to_its_end(Bridge::ruby(script("sigint_early.rb")).codec(codec))
            .await;
    }
}
