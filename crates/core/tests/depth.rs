//! Nesting depth, end to end with real Python workers (issue 12, item 8): the
//! pool sends nothing deeper than it can read back (`MAX_DEPTH`), and a value
//! too deep is the error of its own call, never a dead or blamed worker.

mod common;

use common::*;
use serde_json::{json, Value};
use snakepit_core::{Error, Pool, WireCodec};
use snakepit_protocol::MAX_DEPTH;

const CODECS: [WireCodec; 2] = [WireCodec::Json, WireCodec::MsgPack];

/// `[[...[1]...]]`, `depth` arrays deep.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |v, _| json!([v]))
}

/// Arguments (a map, as the bridges require) `depth` levels deep.
fn args(depth: usize) -> Value {
    json!({ "v": nested(depth - 1) })
}

async fn pool(codec: WireCodec, size: usize) -> Pool {
    let mut worker = TestWorker::new();
    worker.codec = codec;
    builder(worker).size(size).start().await.unwrap()
}

fn too_deep(err: &Error, encoding: bool) -> bool {
    matches!(
        err,
        Error::Codec(snakepit_protocol::Error::TooDeep { encoding: e, max, .. })
            if *e == encoding && *max == MAX_DEPTH
    )
}

/// A request's own map is one level, so arguments may nest `MAX_DEPTH - 1`:
/// those reach the worker; deeper ones are refused before anything is sent,
/// call after call, and no worker is restarted or blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_deeper_than_the_limit_fail_before_sending_and_no_worker_is_blamed() {
    for codec in CODECS {
        let pool = pool(codec, 2).await;
        let mut pids = pool.worker_pids();
        pids.sort_unstable();

        // The deepest arguments allowed reach a worker, which reads them.
        // (`pid` ignores its arguments, so the reply stays shallow.)
        let served = pool
            .execute("pid", args(MAX_DEPTH - 1))
            .await
            .unwrap_or_else(|e| panic!("{codec}: {e}"));
        assert!(pids.contains(&(served["pid"].as_u64().unwrap() as u32)));

        for _ in 0..4 {
            let err = pool.execute("echo", args(MAX_DEPTH)).await.unwrap_err();
            assert!(too_deep(&err, true), "{codec}: {err:?}");
        }

        let mut after = pool.worker_pids();
        after.sort_unstable();
        assert_eq!(after, pids, "{codec}: no worker was replaced");
        let stats = pool.stats();
        assert_eq!(stats.crashes, 0, "{codec}");
        assert_eq!(stats.restarts, 0, "{codec}");
        // And they serve.
        let echoed = pool.execute("echo", json!({"n": 1})).await.unwrap();
        assert_eq!(echoed["echoed"], json!({"n": 1}));
        pool.shutdown().await.unwrap();
    }
}

/// Too-deep arguments are refused before anything is written: the call
/// never ran, so it is safe to retry elsewhere (it never will succeed, but a
/// caller's retry policy must not count it as a call that may have run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_deep_arguments_are_a_call_that_never_ran() {
    for codec in CODECS {
        let pool = pool(codec, 1).await;
        let err = pool.execute("echo", args(MAX_DEPTH)).await.unwrap_err();
        assert!(too_deep(&err, true), "{codec}: {err:?}");
        assert!(err.never_ran(), "{codec}: {err:?}");
        assert!(!err.is_crash(), "{codec}: {err:?}");
        pool.shutdown().await.unwrap();
    }
}

/// `echo` wraps its arguments in a map inside the reply's map: arguments at
/// the deepest allowed come back one level too deep. That call fails with
/// its own codec error; the worker, which did nothing wrong, serves the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_deeper_than_the_limit_fails_that_call_and_the_same_worker_serves_the_next() {
    for codec in CODECS {
        let pool = pool(codec, 1).await;
        let pid = pool.worker_pids()[0];

        // Just within the limit: the reply is MAX_DEPTH deep, and read.
        let ok = pool
            .execute("echo", args(MAX_DEPTH - 2))
            .await
            .unwrap_or_else(|e| panic!("{codec}: {e}"));
        assert_eq!(ok["echoed"], args(MAX_DEPTH - 2));

        for _ in 0..3 {
            let err = pool.execute("echo", args(MAX_DEPTH - 1)).await.unwrap_err();
            assert!(too_deep(&err, false), "{codec}: {err:?}");
            assert!(!err.is_crash(), "{codec}: {err:?}");

            let next = pool.execute("pid", json!({})).await.unwrap();
            assert_eq!(
                next["pid"], pid,
                "{codec}: the same worker serves the next call"
            );
        }
        assert_eq!(pool.worker_pids(), vec![pid], "{codec}");
        let stats = pool.stats();
        assert_eq!(stats.crashes, 0, "{codec}");
        assert_eq!(stats.restarts, 0, "{codec}");
        pool.shutdown().await.unwrap();
    }
}
