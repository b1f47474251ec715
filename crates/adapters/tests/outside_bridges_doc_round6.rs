//! An outside tester's audit of docs/bridges.md as a promise made for all
//! three bridges at once: the same worker (`tests/workers/round6_bdoc_worker`
//! in Python, in Python's asyncio mode, in Node.js and in Ruby) is run under
//! a real pool, in both codecs where the promise allows, and each bridge must
//! keep the promise the page makes for it.
//!
//! - "Codecs": "Bytes a handler passes to the host (in a host call's
//!   arguments, such as `ctx.session.set(key, b"...")`) fail that host call
//!   with `InvalidArgument`, and the worker serves on." Shown before only
//!   for Node.js and Ruby; here for every bridge, Python's two modes
//!   included.
//! - "Host functions and the session store": an `Err` of a host function
//!   raises (or rejects with) `HostCallError` carrying the error's type; an
//!   unregistered function fails the same way with `UnknownFunction`;
//!   `session.delete` answers whether the key existed.
//! - "The context, side by side": the request id, command, session id,
//!   worker id, the milliseconds the caller had left and whether the caller
//!   streams, as the pool sent them, in each bridge's spelling; the session
//!   and worker id the handler sees are the ones the host function sees.
//! - "Concurrency and cancellation", the table: how many calls each kind
//!   runs at once, and what its handler sees when the pool gives a call up
//!   (`KeyboardInterrupt`; `asyncio.CancelledError`; only `ctx.cancelled`
//!   for plain functions on threads; `ctx.signal` and `ctx.cancelled` in
//!   Node; `SnakepitBridge::Cancelled`), the worker kept.

#[allow(dead_code)] // this file uses only some of the shared helpers
mod common;

use std::time::Duration;

use common::readme::{call, call_with, start, the_same_worker, with_session_store, HANG};
use common::{node_modules, worker};
use futures::StreamExt;
use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{CallOptions, HostCall, Pool, PoolBuilder, RemoteError, StreamItem, WireCodec};

const CODECS: [WireCodec; 2] = [WireCodec::Json, WireCodec::MsgPack];

/// The kinds of worker the page describes.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Python,
    PythonAsync,
    /// Plain functions, `Worker(max_concurrency=2)`.
    PythonThreads,
    Node,
    Ruby,
}

const KINDS: [Kind; 5] = [
    Kind::Python,
    Kind::PythonAsync,
    Kind::PythonThreads,
    Kind::Node,
    Kind::Ruby,
];

fn bridge(kind: Kind, codec: WireCodec) -> Bridge {
    let b = match kind {
        Kind::Python => Bridge::python(worker("round6_bdoc_worker.py")),
        Kind::PythonAsync => Bridge::python(worker("round6_bdoc_worker.py")).env("BDOC_ASYNC", "1"),
        Kind::PythonThreads => {
            Bridge::python(worker("round6_bdoc_worker.py")).env("BDOC_THREADS", "1")
        }
        // The bridge's own tests' `@msgpack/msgpack`, for MessagePack.
        Kind::Node => {
            Bridge::node(worker("round6_bdoc_worker.js")).env("NODE_PATH", node_modules())
        }
        Kind::Ruby => Bridge::ruby(worker("round6_bdoc_worker.rb")),
    };
    b.codec(codec)
}

/// A one-worker pool of `kind` with the page's in-memory session store,
/// a host function `fails` that always returns an `Err` and `whoami`, which
/// answers the session and worker id of the call it got.
async fn pool_of(kind: Kind, codec: WireCodec) -> Pool {
    let builder: PoolBuilder = Pool::builder(bridge(kind, codec))
        .size(1)
        .host_function("fails", |_call: HostCall| async move {
            Err::<Value, _>(RemoteError::new("ValueError", "lookup needs an integer id"))
        })
        .host_function("whoami", |call: HostCall| async move {
            Ok::<_, RemoteError>(
                json!({"session_id": call.session_id, "worker_id": call.worker_id}),
            )
        });
    // A grace period for a loaded machine: a worker that answers a given-up
    // call late but within it is kept, as the page says. A queue timeout
    // long enough for a call to wait behind a `meet` that waits in vain.
    let builder = builder.configure(|c| {
        c.shutdown_grace_period = Duration::from_secs(20);
        c.queue_timeout = Duration::from_secs(60);
    });
    start(with_session_store(builder)).await
}

/// docs/bridges.md, "Codecs": bytes in a host call's arguments fail that
/// host call with `InvalidArgument` in every bridge; the handler goes on
/// (its next host call is answered, and nothing was stored), and the worker
/// is the same one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_passed_to_the_host_fail_that_host_call_with_invalid_argument_in_every_bridge() {
    for kind in KINDS {
        let pool = pool_of(kind, WireCodec::MsgPack).await;
        let pid = pool.worker_pids()[0];
        for round in 0..2 {
            let opts = CallOptions::new()
                .timeout(Duration::from_secs(30))
                .session("bytes-session");
            let r = call_with(&pool, "bytes_to_host", json!({}), opts)
                .await
                .unwrap_or_else(|e| panic!("{kind:?} round {round}: {e:?}"));
            assert_eq!(
                r["set"]["type"], "InvalidArgument",
                "{kind:?} round {round}: {r}"
            );
            assert_eq!(
                r["set"]["class"], "HostCallError",
                "{kind:?} round {round}: {r}"
            );
            assert_eq!(r["get"], Value::Null, "{kind:?}: nothing was stored: {r}");
            assert_eq!(r["pid"], json!(pid), "{kind:?}: {r}");
        }
        the_same_worker(&pool, pid, &format!("{kind:?} after bytes to the host"));
        pool.shutdown().await.unwrap();
    }
}

/// docs/bridges.md, "Host functions and the session store": "an `Err`
/// raises `HostCallError` (Python, Ruby) or rejects with one (Node)
/// carrying the error's type. A function that is not registered fails the
/// same way with type `UnknownFunction`"; `session.delete` answers "whether
/// the key existed" (Ruby's `[]`/`[]=` included). Every bridge, both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_call_failures_and_session_delete_are_alike_in_every_bridge_and_codec() {
    for codec in CODECS {
        for kind in KINDS {
            let what = format!("{kind:?} {codec:?}");
            let pool = pool_of(kind, codec).await;
            let pid = pool.worker_pids()[0];
            let r = call(&pool, "host_failures", json!({}))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e:?}"));
            assert_eq!(
                r["fails"],
                json!({"class": "HostCallError", "type": "ValueError",
                       "message": "lookup needs an integer id"}),
                "{what}: {r}"
            );
            assert_eq!(r["nowhere"]["class"], "HostCallError", "{what}: {r}");
            assert_eq!(r["nowhere"]["type"], "UnknownFunction", "{what}: {r}");
            let opts = CallOptions::new()
                .timeout(Duration::from_secs(30))
                .session("delete-session");
            let d = call_with(&pool, "delete", json!({}), opts)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e:?}"));
            assert_eq!(d, json!([true, false, null]), "{what}");
            the_same_worker(&pool, pid, &what);
            pool.shutdown().await.unwrap();
        }
    }
}

/// The final result of a stream, and its chunks.
async fn streamed(pool: &Pool, command: &str, options: CallOptions) -> (Vec<Value>, Value) {
    let mut stream = pool
        .execute_stream(command, json!({}), options)
        .await
        .unwrap_or_else(|e| panic!("{command}: {e:?}"));
    let mut chunks = Vec::new();
    loop {
        let item = tokio::time::timeout(HANG, stream.next())
            .await
            .expect("the stream hung")
            .expect("the stream ended without a result")
            .unwrap_or_else(|e| panic!("{command}: {e:?}"));
        match item {
            StreamItem::Chunk(data) => chunks.push(data),
            StreamItem::Done(result) => return (chunks, result),
            other => panic!("{command}: unexpected {other:?}"),
        }
    }
}

/// docs/bridges.md, "The context, side by side", in every bridge under a
/// real pool: the request id is a positive integer, the command is the one
/// called, the session id is the call's (and none without a session), the
/// worker id and session id are those the host function gets, the ms the
/// caller had left are at most its timeout and more than none, and "caller
/// streams?" is true only for a stream, whose chunk then arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_rows_hold_in_every_bridge_under_a_real_pool() {
    const TIMEOUT_MS: u64 = 40_000;
    for kind in KINDS {
        let pool = pool_of(kind, WireCodec::Json).await;
        let pid = pool.worker_pids()[0];
        let timeout = Duration::from_millis(TIMEOUT_MS);

        // A plain call in a session.
        let opts = CallOptions::new().timeout(timeout).session("ctx-session");
        let r = call_with(&pool, "fields", json!({}), opts)
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: {e:?}"));
        assert!(
            r["request_id"].as_u64().is_some_and(|id| id > 0),
            "{kind:?}: {r}"
        );
        assert_eq!(r["command"], "fields", "{kind:?}: {r}");
        assert_eq!(r["session_id"], "ctx-session", "{kind:?}: {r}");
        assert_eq!(r["host_saw"]["session_id"], "ctx-session", "{kind:?}: {r}");
        assert!(r["worker_id"].is_string(), "{kind:?}: {r}");
        assert_eq!(r["worker_id"], r["host_saw"]["worker_id"], "{kind:?}: {r}");
        let left = r["timeout_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("{kind:?}: {r}"));
        assert!(
            left > 0 && left <= TIMEOUT_MS,
            "{kind:?}: {left} ms left: {r}"
        );
        assert_eq!(r["stream"], false, "{kind:?}: {r}");
        // Python and Node send no chunk without a stream; Ruby sends it
        // and the pool drops it.
        let sent_without_stream = matches!(kind, Kind::Ruby);
        assert_eq!(r["chunk_sent"], sent_without_stream, "{kind:?}: {r}");

        // A call without a session: none, here and at the host.
        let r2 = call(&pool, "fields", json!({})).await.unwrap();
        assert_eq!(r2["session_id"], Value::Null, "{kind:?}: {r2}");
        assert_eq!(r2["host_saw"]["session_id"], Value::Null, "{kind:?}: {r2}");
        assert_ne!(
            r2["request_id"], r["request_id"],
            "{kind:?}: ids are per request"
        );

        // A stream: the caller streams, and the chunk arrives before the result.
        let (chunks, done) = streamed(&pool, "fields", CallOptions::new().timeout(timeout)).await;
        assert_eq!(done["stream"], true, "{kind:?}: {done}");
        assert_eq!(done["chunk_sent"], true, "{kind:?}: {done}");
        assert_eq!(chunks, vec![json!("a chunk")], "{kind:?}: {done}");

        the_same_worker(&pool, pid, &format!("{kind:?} context"));
        pool.shutdown().await.unwrap();
    }
}

/// docs/bridges.md, "Concurrency and cancellation": the table's columns for
/// each kind of worker under a real pool. "calls at once": two calls that
/// each wait for the other meet only where the worker runs more than one
/// at a time (Python in asyncio mode or with `max_concurrency` above 1,
/// Node); "the handler sees": a call given up at its deadline reaches the
/// handler as the table says, the caller gets `CallTimeout`, and the worker
/// (which replied within the grace period) is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_table_holds_for_every_kind_of_worker() {
    for kind in KINDS {
        let (concurrent, sees) = match kind {
            Kind::Python => (false, "KeyboardInterrupt"),
            Kind::PythonAsync => (true, "CancelledError"),
            Kind::PythonThreads => (true, "ctx.cancelled"),
            Kind::Node => (true, "aborted"),
            Kind::Ruby => (false, "SnakepitBridge::Cancelled"),
        };
        let pool = pool_of(kind, WireCodec::Json).await;
        let pid = pool.worker_pids()[0];

        // Calls at once.
        let meets: Vec<_> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { call(&pool, "meet", json!({})).await })
            })
            .collect();
        let mut met = Vec::new();
        for m in meets {
            met.push(
                m.await
                    .unwrap()
                    .unwrap_or_else(|e| panic!("{kind:?}: {e:?}")),
            );
        }
        met.sort_by_key(|v| v.as_bool());
        let expected = if concurrent {
            json!([true, true])
        } else {
            // The first ran alone and gave up waiting; the second found it done.
            json!([false, true])
        };
        assert_eq!(json!(met), expected, "{kind:?}: calls at once");

        // A call given up at its deadline.
        let opts = CallOptions::new().timeout(Duration::from_secs(1));
        match call_with(&pool, "stall", json!({}), opts).await {
            Err(e) if e.is_timeout() => {}
            other => panic!("{kind:?}: not a timeout but {other:?}"),
        }
        let mut saw = Value::Null;
        for _ in 0..600 {
            saw = call(&pool, "saw", json!({})).await.unwrap();
            if saw != json!([]) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(saw, json!([sees]), "{kind:?}: what the handler saw");
        the_same_worker(&pool, pid, &format!("{kind:?} after a call given up"));
        pool.shutdown().await.unwrap();
    }
}
