//! `max_frame_size` set low on a pool, against a real Python bridge worker
//! (README, Configuration: "larger frames from a worker are a protocol
//! error"; docs/protocol.md, Framing: the pool rejects longer frames "before
//! allocating anything"; the Errors table: `Protocol`, "it was replaced";
//! `Codec`, "arguments not encodable").

mod common;

use common::*;
use serde_json::json;
use snakepit_core::{Adapter, Error, Launch, Pool};

/// Well above the bridge's hello and a small reply, well below 64 MiB.
const LIMIT: usize = 4096;

/// The test worker with the bundled Python bridge, which reads the pool's
/// limit from `SNAKEPIT_MAX_FRAME_SIZE`.
async fn pool() -> Pool {
    pool_of(BridgeScript("frame_limits_worker.py")).await
}

async fn pool_of(adapter: impl Adapter) -> Pool {
    builder(adapter)
        .size(1)
        .configure(|c| c.max_frame_size = LIMIT)
        .start()
        .await
        .unwrap()
}

/// The same worker, made to forget the limit the pool gave it: it writes
/// a reply above the limit, as a worker that is not a bundled bridge may.
struct IgnoresTheLimit;

impl Adapter for IgnoresTheLimit {
    fn launch(&self) -> Launch {
        BridgeScript("frame_limits_worker.py")
            .launch()
            .env("FRAME_LIMITS_IGNORE_LIMIT", "1")
    }
}

/// protocol.md section 1: a bridge told the limit (`SNAKEPIT_MAX_FRAME_SIZE`)
/// "that would write a larger reply sends a failed reply of type
/// `ResultTooLarge` instead, and the worker stays".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_above_max_frame_size_from_a_bundled_bridge_is_result_too_large_and_the_worker_stays(
) {
    let pool = pool().await;
    let before = pool.worker_pids()[0];
    let err = pool
        .execute("big", json!({"bytes": 2 * LIMIT}))
        .await
        .unwrap_err();
    let remote = err.remote().unwrap_or_else(|| panic!("{err:?}"));
    assert_eq!(remote.kind.as_deref(), Some("ResultTooLarge"), "{err}");
    assert!(remote.message.contains(&LIMIT.to_string()), "{err}");
    let next = pool.execute("echo", json!({"n": 1})).await.unwrap();
    assert_eq!(next["pid"].as_u64().unwrap() as u32, before);
    assert_eq!(next["received"], 2, "the same process served both calls");
    assert_eq!(pool.stats().restarts, 0);
    pool.shutdown().await.unwrap();
}

/// A reply frame above the pool's limit, from a worker that writes it
/// anyway, fails its call with a protocol error (`too_large`, naming the
/// size and the limit), the worker is killed and replaced, and the pool
/// serves the next call on the new worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_above_max_frame_size_is_a_protocol_error_and_the_worker_is_replaced() {
    let pool = pool_of(IgnoresTheLimit).await;
    let before = pool.worker_pids()[0];

    // Just under the limit still goes through: the limit is the one set.
    let ok = pool
        .execute("big", json!({"bytes": LIMIT - 100}))
        .await
        .unwrap();
    assert_eq!(ok["data"].as_str().unwrap().len(), LIMIT - 100);

    let err = pool
        .execute("big", json!({"bytes": 2 * LIMIT}))
        .await
        .unwrap_err();
    match &err {
        Error::Protocol { source, .. } => {
            assert_eq!(source.kind(), "too_large", "{err}");
            match source {
                snakepit_protocol::Error::FrameTooLarge { len, max } => {
                    assert_eq!(*max, LIMIT);
                    assert!(*len > 2 * LIMIT as u64, "the frame's own length: {len}");
                }
                other => panic!("expected FrameTooLarge, got {other:?}"),
            }
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert!(!err.never_ran() && !err.is_crash(), "{err}");
    assert!(
        eventually(5, || !alive(before)).await,
        "the worker that sent the frame is gone"
    );
    assert!(
        eventually(10, || pool.stats().workers == 1
            && pool.worker_pids()[0] != before)
        .await,
        "a replacement is ready"
    );
    let next = pool.execute("echo", json!({"n": 1})).await.unwrap();
    assert_eq!(next["echoed"]["n"], 1);
    assert_ne!(next["pid"].as_u64().unwrap() as u32, before);
    assert_eq!(pool.stats().restarts, 1);
    pool.shutdown().await.unwrap();
}

/// A request whose frame would be above the limit is refused in the host
/// with a `Codec` error (`too_large`); nothing reaches the worker, which is
/// kept and serves the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_above_max_frame_size_is_refused_before_it_is_sent() {
    let pool = pool().await;
    let pid = pool.worker_pids()[0];
    let first = pool.execute("echo", json!({})).await.unwrap();
    assert_eq!(first["received"], 1);

    let err = pool
        .execute("echo", json!({"blob": "y".repeat(2 * LIMIT)}))
        .await
        .unwrap_err();
    match &err {
        Error::Codec(source) => {
            assert_eq!(source.kind(), "too_large", "{err}");
            match source {
                snakepit_protocol::Error::FrameTooLarge { max, .. } => assert_eq!(*max, LIMIT),
                other => panic!("expected FrameTooLarge, got {other:?}"),
            }
        }
        other => panic!("expected a codec error, got {other:?}"),
    }
    assert!(err.never_ran(), "a refused request never ran: {err}");

    // The same worker answers next, and it received one call before this
    // one: the refused request never reached it.
    let next = pool.execute("echo", json!({})).await.unwrap();
    assert_eq!(next["pid"].as_u64().unwrap() as u32, pid);
    assert_eq!(
        next["received"], 2,
        "the refused request never reached the worker"
    );
    let s = pool.stats();
    assert_eq!((s.workers, s.restarts, s.busy, s.in_flight), (1, 0, 0, 0));
    assert_eq!(pool.worker_pids(), vec![pid]);
    pool.shutdown().await.unwrap();
}
