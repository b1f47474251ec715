//! Call deadlines watched by the worker's reader (one timer for all the
//! calls in flight on a worker) keep the promises of a timer per call.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use snakepit_core::{CallOptions, Error};

/// Quick calls first, so that the worker's reader has its deadline timer
/// set; then a call the worker never answers in time times out, is
/// cancelled, and the worker goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_times_out_when_its_worker_stays_silent() {
    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    let pid = pool.worker_pids()[0];
    // The same timeout for all: each deadline comes after the one the
    // reader's timer was set for by the calls before.
    let within = || CallOptions::new().timeout(Duration::from_millis(500));
    for i in 0..5 {
        let r = pool
            .execute_with("sleep", json!({"ms": 0, "token": i}), within())
            .await
            .unwrap();
        assert_eq!(r["token"], i);
    }
    let err = pool
        .execute_with("sleep", json!({"ms": 5000, "token": "late"}), within())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CallTimeout { .. }), "{err}");
    the_same_worker_answers_next(&pool, pid).await;
    assert!(eventually(5, || pool.stats().in_flight == 0).await);
    let s = pool.stats();
    assert_eq!((s.completed, s.call_timeouts, s.errors), (6, 1, 1));
    pool.shutdown().await.unwrap();
}

/// A call whose deadline comes before the one the reader waits for (a
/// long call's) still times out at its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_deadline_behind_a_long_one_is_kept() {
    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    for _ in 0..3 {
        pool.execute("sleep", json!({"ms": 0})).await.unwrap();
    }
    let long = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute_with(
                "sleep",
                json!({"ms": 600, "token": "long"}),
                CallOptions::new().timeout(Duration::from_secs(120)),
            )
            .await
        })
    };
    // The long call is on the worker before the short one is sent.
    assert!(eventually(5, || pool.stats().in_flight == 1).await);
    let short = pool
        .execute_with(
            "sleep",
            json!({"ms": 0, "token": "short"}),
            CallOptions::new().timeout(Duration::from_millis(100)),
        )
        .await;
    assert!(matches!(short, Err(Error::CallTimeout { .. })), "{short:?}");
    assert_eq!(long.await.unwrap().unwrap()["token"], "long");
    pool.shutdown().await.unwrap();
}
