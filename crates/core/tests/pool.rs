//! The pool against real worker processes: routing, errors, sessions,
//! streaming, host calls, shutdown.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use snakepit_core::{Affinity, CallOptions, Error, StreamItem, WireCodec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_run_on_real_workers_in_both_codecs() {
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let mut adapter = TestWorker::new();
        adapter.codec = codec;
        let pool = builder(adapter).size(2).start().await.unwrap();
        let r = pool
            .execute("echo", json!({"message": "héllo", "n": 5}))
            .await
            .unwrap();
        assert_eq!(r["echoed"], json!({"message": "héllo", "n": 5}), "{codec}");
        let pids = pool.worker_pids();
        assert_eq!(pids.len(), 2);
        assert!(pids.contains(&(r["pid"].as_u64().unwrap() as u32)));
        let s = pool.stats();
        assert_eq!(
            (s.workers, s.available, s.requests, s.completed, s.errors),
            (2, 2, 1, 1, 0)
        );
        pool.shutdown().await.unwrap();
        assert!(
            eventually(2, || pids.iter().all(|p| !alive(*p))).await,
            "workers gone after shutdown"
        );
        assert!(matches!(
            pool.execute("echo", json!({})).await,
            Err(Error::ShutDown)
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_errors_are_remote_errors_with_type_and_traceback() {
    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    let err = pool
        .execute("fail", json!({"message": "no such model"}))
        .await
        .unwrap_err();
    let remote = err.remote().expect("a remote error");
    assert_eq!(remote.kind.as_deref(), Some("ValueError"));
    assert_eq!(remote.message, "no such model");
    assert!(remote
        .traceback
        .as_deref()
        .unwrap_or("")
        .contains("Traceback"));
    let err = pool
        .execute("no_such_command", json!({}))
        .await
        .unwrap_err();
    assert_eq!(
        err.remote().and_then(|r| r.kind.as_deref()),
        Some("UnknownCommand")
    );
    // The worker is still there and serving.
    assert_eq!(
        pool.execute("echo", json!({"x": 1})).await.unwrap()["echoed"]["x"],
        1
    );
    assert_eq!(pool.stats().errors, 2);
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_prints_do_not_break_the_stream() {
    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    assert_eq!(pool.execute("print", json!({})).await.unwrap(), "printed");
    assert_eq!(
        pool.execute("echo", json!({"after": true})).await.unwrap()["echoed"]["after"],
        true
    );
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_calls_encode_and_decode_without_values() {
    #[derive(serde::Serialize)]
    struct Args {
        ms: u64,
        token: String,
    }
    #[derive(serde::Deserialize)]
    struct Reply {
        token: String,
        pid: u32,
    }
    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    let r: Reply = pool
        .call(
            "sleep",
            &Args {
                ms: 0,
                token: "t-1".into(),
            },
            CallOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(r.token, "t-1");
    assert_eq!(pool.worker_pids(), vec![r.pid]);
    let wrong = pool
        .call::<_, Vec<u8>>(
            "sleep",
            &Args {
                ms: 0,
                token: "t".into(),
            },
            CallOptions::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(wrong, Error::Codec(_)), "{wrong}");
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_prefer_their_worker_and_fall_back_when_it_is_busy() {
    let pool = builder(TestWorker::new()).size(2).start().await.unwrap();
    let first = pool
        .execute_in_session("s1", "echo", json!({}))
        .await
        .unwrap();
    let pid = first["pid"].clone();
    assert_eq!(first["session_id"], "s1");
    for _ in 0..10 {
        assert_eq!(
            pool.execute_in_session("s1", "echo", json!({}))
                .await
                .unwrap()["pid"],
            pid
        );
    }
    // Keep the session's worker busy: Prefer goes elsewhere, FailFast fails,
    // Strict waits for it.
    let busy = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute_with(
                "sleep",
                json!({"ms": 700}),
                CallOptions::new().session("s1"),
            )
            .await
        })
    };
    assert!(eventually(5, || pool.stats().busy == 1).await);
    let other = pool
        .execute_in_session("s1", "echo", json!({}))
        .await
        .unwrap();
    assert_ne!(
        other["pid"], pid,
        "the busy session worker is not waited for"
    );
    // `other` ran elsewhere, but the session still belongs to a busy worker
    // only if the record was not moved: it was, so re-point it.
    let _ = busy.await.unwrap().unwrap();
    let home = pool
        .execute_in_session("s2", "echo", json!({}))
        .await
        .unwrap()["pid"]
        .clone();
    let hold = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute_with(
                "sleep",
                json!({"ms": 500}),
                CallOptions::new().session("s2"),
            )
            .await
        })
    };
    assert!(eventually(5, || pool.stats().busy == 1).await);
    let err = pool
        .execute_with(
            "echo",
            json!({}),
            CallOptions::new()
                .session("s2")
                .affinity(Affinity::FailFast),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::WorkerBusy { .. }), "{err}");
    let strict = pool
        .execute_with(
            "echo",
            json!({}),
            CallOptions::new().session("s2").affinity(Affinity::Strict),
        )
        .await
        .unwrap();
    assert_eq!(strict["pid"], home, "strict waits for the session's worker");
    hold.await.unwrap().unwrap();
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_rejects_at_once_and_queue_timeouts_never_run() {
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| {
            c.max_queue_size = 2;
            c.queue_timeout = Duration::from_millis(300);
        })
        .start()
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..3 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            pool.execute("sleep", json!({"ms": 1000, "token": i})).await
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(eventually(5, || pool.stats().queued == 2).await);
    let err = pool.execute("echo", json!({})).await.unwrap_err();
    assert!(matches!(err, Error::PoolSaturated { queued: 2 }), "{err}");
    let results: Vec<_> = futures_join(tasks).await;
    assert!(results[0].is_ok());
    assert!(
        results[1..]
            .iter()
            .all(|r| matches!(r, Err(Error::QueueTimeout(_)))),
        "{results:?}"
    );
    let s = pool.stats();
    assert_eq!((s.pool_saturated, s.queue_timeouts, s.completed), (1, 2, 1));
    // The timed-out calls never ran: the worker served exactly one sleep,
    // then this echo.
    let r = pool.execute("echo", json!({})).await.unwrap();
    assert_eq!(r["served"], 1);
    pool.shutdown().await.unwrap();
}

async fn futures_join<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_is_cancelled_and_its_worker_recovers() {
    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    let pid = pool.worker_pids()[0];
    let err = pool
        .execute_with(
            "sleep",
            json!({"ms": 5000, "token": "late"}),
            CallOptions::new().timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CallTimeout { .. }), "{err}");
    // SIGINT cancelled the handler: the same worker answers the next call,
    // with its own token, long before the sleep would have ended.
    the_same_worker_answers_next(&pool, pid).await;
    assert!(eventually(2, || pool.stats().in_flight == 0).await);
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_call_cancels_it() {
    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    let call = pool.execute("sleep", json!({"ms": 5000}));
    let _ = tokio::time::timeout(Duration::from_millis(200), call).await;
    let r = pool
        .execute("sleep", json!({"ms": 0, "token": "after"}))
        .await
        .unwrap();
    assert_eq!(r["token"], "after");
    let s = pool.stats();
    assert_eq!((s.cancelled, s.completed), (1, 1));
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_deliver_chunks_then_the_result() {
    use std::future::poll_fn;
    use std::pin::Pin;

    use futures_core::Stream;
    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    let mut stream = pool
        .execute_stream("stream", json!({"n": 4}), CallOptions::new())
        .await
        .unwrap();
    let mut items = Vec::new();
    while let Some(item) = poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
        items.push(item.unwrap());
    }
    let expected: Vec<StreamItem> = (0..4)
        .map(|i| StreamItem::Chunk(json!({"i": i})))
        .chain([StreamItem::Done(json!({"done": 4}))])
        .collect();
    assert_eq!(items, expected);
    // A stream dropped before its end is a cancelled call, counted as one.
    let dropped = pool
        .execute_stream("stream", json!({"n": 2}), CallOptions::new())
        .await
        .unwrap();
    drop(dropped);
    let s = pool.stats();
    assert_eq!(
        (s.requests, s.completed, s.errors, s.cancelled),
        (2, 1, 0, 1)
    );
    pool.shutdown().await.unwrap();
}

/// A stream's next item.
async fn next(stream: &mut snakepit_core::CallStream) -> Option<snakepit_core::Result<StreamItem>> {
    use std::future::poll_fn;
    use std::pin::Pin;

    use futures_core::Stream;
    poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// Reads a stream to its end: its items, then the error it ended with.
async fn read_all(stream: &mut snakepit_core::CallStream) -> (Vec<StreamItem>, Option<Error>) {
    let mut items = Vec::new();
    while let Some(item) = next(stream).await {
        match item {
            Ok(item) => items.push(item),
            Err(e) => return (items, Some(e)),
        }
    }
    (items, None)
}

/// docs/bridges.md: a worker that runs one call at a time waits for its
/// stream's reader (its pipe fills, it blocks on its next chunk) instead of
/// dropping chunks; the pool's other workers keep serving meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_stream_reader_loses_no_chunk_and_holds_up_only_its_worker() {
    let pool = builder(TestWorker::new()).size(2).start().await.unwrap();
    let n = 3000;
    let mut stream = pool
        .execute_stream("stream", json!({"n": n}), CallOptions::new())
        .await
        .unwrap();
    // Nobody reads the stream while these run: they go to the other worker.
    let mut pids = std::collections::HashSet::new();
    for i in 0..20 {
        let r = pool.execute("echo", json!({"i": i})).await.unwrap();
        pids.insert(r["pid"].as_u64().unwrap());
    }
    assert_eq!(pids.len(), 1, "the streaming worker took no other call");
    let (items, error) = read_all(&mut stream).await;
    assert!(error.is_none(), "{error:?}");
    let expected: Vec<StreamItem> = (0..n)
        .map(|i| StreamItem::Chunk(json!({"i": i})))
        .chain([StreamItem::Done(json!({"done": n}))])
        .collect();
    assert_eq!(items.len(), expected.len());
    assert!(items == expected, "chunks lost or out of order");
    let s = pool.stats();
    assert_eq!((s.completed, s.errors), (21, 0));
    pool.shutdown().await.unwrap();
}

/// A pool of one worker (and its pid), running a stream of 200,000 chunks
/// with a deadline of 300 ms.
async fn one_worker_on_a_long_stream() -> (snakepit_core::Pool, u64, snakepit_core::CallStream) {
    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    let pid = pool.worker_pids()[0];
    let stream = pool
        .execute_stream(
            "stream",
            json!({"n": 200_000}),
            CallOptions::new().timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    (pool, u64::from(pid), stream)
}

/// A stream past its deadline releases its worker even if the caller keeps
/// the stream and never reads it again: the worker is not left blocked on
/// a full pipe until the pool gives up on it and replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_stream_kept_unread_frees_its_worker() {
    let (pool, pid, mut stream) = one_worker_on_a_long_stream().await;
    // A slow reader: one chunk a millisecond, until the deadline.
    let error = loop {
        match next(&mut stream).await {
            Some(Ok(_)) => tokio::time::sleep(Duration::from_millis(1)).await,
            Some(Err(e)) => break e,
            None => panic!("the stream ended before its deadline"),
        }
    };
    assert!(error.is_timeout(), "{error}");
    // The stream is kept, unread; the same worker serves the next call.
    let r = pool.execute("echo", json!({"after": true})).await.unwrap();
    assert_eq!(r["pid"], pid, "the worker was replaced: {r}");
    drop(stream);
    pool.shutdown().await.unwrap();
}

/// A stream past its deadline, read late: the chunks it was handed, in
/// order, then `CallTimeout`, never its final result.
async fn read_late(stream: &mut snakepit_core::CallStream) {
    let (items, error) = read_all(stream).await;
    assert!(items.is_empty(), "read after its deadline: {items:?}");
    assert!(error.as_ref().is_some_and(Error::is_timeout), "{error:?}");
}

/// A stream that is never read at all still ends at its deadline: its
/// worker stops waiting for the reader then (and is told to cancel), so it
/// serves the next call; the stream, read late, gives `CallTimeout` first
/// (docs/bridges.md), never a chunk or its final result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_never_read_frees_its_worker_at_its_deadline() {
    let (pool, pid, mut stream) = one_worker_on_a_long_stream().await;
    // Nobody polls the stream; the one worker serves this call once the
    // stream's deadline has passed.
    let r = pool
        .execute_with(
            "echo",
            json!({"after": true}),
            CallOptions::new().timeout(Duration::from_secs(20)),
        )
        .await
        .unwrap();
    assert_eq!(r["pid"], pid, "the worker was replaced: {r}");
    read_late(&mut stream).await;
    pool.shutdown().await.unwrap();
}

/// docs/bridges.md: "at its deadline a stream releases its worker whether
/// its caller keeps it unread ... or never reads it at all". A stream whose
/// handler would never end, never polled and never dropped: the pool stops
/// it at its deadline itself (the caller, who never polls, cannot), and
/// its one worker serves the next call; the stream, read late, gives
/// `CallTimeout` first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_stream_never_read_releases_its_worker_at_its_deadline() {
    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    let pid = u64::from(pool.worker_pids()[0]);
    let mut stream = pool
        .execute_stream(
            "stream",
            json!({"n": 1_000_000_000_000u64}),
            CallOptions::new().timeout(Duration::from_millis(500)),
        )
        .await
        .unwrap();
    let r = pool
        .execute_with(
            "echo",
            json!({"after": true}),
            CallOptions::new().timeout(Duration::from_secs(20)),
        )
        .await
        .expect("the worker was released at the stream's deadline");
    assert_eq!(r["pid"], pid, "the worker was replaced: {r}");
    read_late(&mut stream).await;
    let s = pool.stats();
    assert_eq!((s.crashes, s.restarts), (0, 0), "{s:?}");
    pool.shutdown().await.unwrap();
}

/// docs/bridges.md: "a stream read to its end only after its deadline ends
/// with `CallTimeout`, even if the result came in time": a short stream
/// whose worker finished well within the deadline, its chunks read in time
/// and its result polled only after the deadline, ends with `CallTimeout`,
/// not its result (a host that relays a stream, and dropped a chunk it
/// held past the deadline, would otherwise end it in success without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_result_is_read_after_its_deadline_ends_with_call_timeout() {
    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    let mut stream = pool
        .execute_stream(
            "stream",
            json!({"n": 3}),
            CallOptions::new().timeout(Duration::from_millis(400)),
        )
        .await
        .unwrap();
    for i in 0..3 {
        match next(&mut stream).await {
            Some(Ok(StreamItem::Chunk(c))) => assert_eq!(c, json!({"i": i})),
            other => panic!("chunk {i}: {other:?}"),
        }
    }
    // The worker is done long before the deadline: the next call runs.
    pool.execute("echo", json!({})).await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    read_late(&mut stream).await;
    let s = pool.stats();
    assert_eq!((s.call_timeouts, s.crashes), (1, 0), "{s:?}");
    pool.shutdown().await.unwrap();
}

/// A worker that runs several calls at once is not held up by one stream's
/// slow reader: that stream ends with `Error::StreamBehind` once 256 chunks
/// wait unread (every chunk before it delivered, in order), the call is
/// cancelled in the worker, and the worker's other calls go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_behind_a_worker_that_runs_other_calls_ends_with_a_clear_error() {
    let mut adapter = TestWorker::new();
    adapter.extra_args = vec!["--async".into()];
    let pool = builder(adapter).size(1).start().await.unwrap();
    let pid = pool.worker_pids()[0];
    let mut stream = pool
        .execute_stream("stream", json!({"n": 5000}), CallOptions::new())
        .await
        .unwrap();
    // Nobody reads the stream; another call on the same worker completes.
    let r = pool.execute("echo", json!({"beside": true})).await.unwrap();
    assert_eq!(r["pid"], pid);
    let (items, error) = read_all(&mut stream).await;
    // The chunks before the error, each once and in order: at least the
    // 256 kept (more if the worker was still writing when reading began).
    let expected: Vec<StreamItem> = (0..items.len())
        .map(|i| StreamItem::Chunk(json!({"i": i})))
        .collect();
    assert!(items == expected, "chunks lost or out of order");
    assert!((256..5000).contains(&items.len()), "{} chunks", items.len());
    match error {
        Some(Error::StreamBehind { kept, .. }) => assert_eq!(kept, 256),
        other => panic!("expected StreamBehind, got {other:?}"),
    }
    assert_eq!(pool.execute("echo", json!({})).await.unwrap()["pid"], pid);
    let s = pool.stats();
    assert_eq!((s.completed, s.errors), (2, 1), "{s:?}");
    pool.shutdown().await.unwrap();
}

/// README, `StreamBehind`: "the call was cancelled". Not only the caller's
/// side ends: the worker is told (a cancel frame) and stops, instead of
/// producing two million chunks nobody reads; its capacity comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_fell_behind_is_cancelled_in_the_worker_too() {
    let mut adapter = TestWorker::new();
    adapter.extra_args = vec!["--async".into()];
    let pool = builder(adapter).size(1).start().await.unwrap();
    let mut stream = pool
        .execute_stream("stream", json!({"n": 2_000_000}), CallOptions::new())
        .await
        .unwrap();
    // Unread until the worker has run far ahead of it.
    assert!(eventually(30, || pool.stats().in_flight == 1).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, error) = read_all(&mut stream).await;
    assert!(
        matches!(error, Some(Error::StreamBehind { .. })),
        "{error:?}"
    );
    drop(stream);
    assert!(
        eventually(10, || pool.stats().in_flight == 0).await,
        "the worker still runs the stream: {:?}",
        pool.stats()
    );
    pool.shutdown().await.unwrap();
}

/// Frames far larger than a pipe (which the pool grows, up to 1 MiB, for
/// large frames) cross whole both ways, several at once, in both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_payloads_cross_whole_in_both_codecs() {
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let mut adapter = TestWorker::new();
        adapter.codec = codec;
        let pool = builder(adapter).size(2).start().await.unwrap();
        let calls: Vec<_> = [100_000usize, 700_000, 3 << 20, 1 << 20, 5]
            .into_iter()
            .enumerate()
            .map(|(i, len)| {
                let pool = pool.clone();
                // Different bytes per call: a frame mixed with another's
                // would not echo back equal.
                let data: String = (0..len)
                    .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
                    .collect();
                tokio::spawn(async move {
                    let r = pool.execute("echo", json!({"data": data})).await.unwrap();
                    (r["echoed"]["data"] == data, len)
                })
            })
            .collect();
        for c in calls {
            let (same, len) = c.await.unwrap();
            assert!(same, "{codec}: {len} bytes came back changed");
        }
        assert_eq!(pool.stats().errors, 0);
        pool.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_call_host_functions() {
    let pool = builder(TestWorker::new())
        .size(1)
        .host_function("add", |call| async move {
            let a = call.args["a"].as_i64().unwrap_or(0);
            let b = call.args["b"].as_i64().unwrap_or(0);
            Ok::<Value, snakepit_core::RemoteError>(
                json!({"sum": a + b, "session": call.session_id}),
            )
        })
        .start()
        .await
        .unwrap();
    let r = pool
        .execute_with(
            "host",
            json!({"function": "add", "args": {"a": 2, "b": 40}}),
            CallOptions::new().session("sess"),
        )
        .await
        .unwrap();
    assert_eq!(r, json!({"sum": 42, "session": "sess"}));
    let err = pool
        .execute("host", json!({"function": "missing"}))
        .await
        .unwrap_err();
    assert_eq!(
        err.remote().and_then(|r| r.kind.as_deref()),
        Some("HostCallError"),
        "{err}"
    );
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_hooks_run() {
    struct Hooked(TestWorker);
    impl snakepit_core::Adapter for Hooked {
        fn launch(&self) -> snakepit_core::Launch {
            self.0.launch()
        }
        fn supported_commands(&self) -> Option<Vec<String>> {
            Some(vec!["echo".into()])
        }
        fn validate_command(&self, _: &str, args: &Value) -> Result<(), String> {
            if args.get("data").is_some() {
                Ok(())
            } else {
                Err("Missing required field: data".into())
            }
        }
        fn prepare_args(&self, _: &str, mut args: Value) -> Value {
            let trimmed = args["data"].as_str().map(|s| s.trim().to_owned());
            if let Some(t) = trimmed {
                args["data"] = t.into();
            }
            args
        }
        fn process_response(&self, _: &str, mut result: Value) -> Result<Value, String> {
            result["processed"] = true.into();
            Ok(result)
        }
    }
    let pool = builder(Hooked(TestWorker::new()))
        .size(1)
        .start()
        .await
        .unwrap();
    let r = pool
        .execute("echo", json!({"data": "  padded  "}))
        .await
        .unwrap();
    assert_eq!(r["echoed"]["data"], "padded");
    assert_eq!(r["processed"], true);
    assert!(matches!(
        pool.execute("echo", json!({})).await,
        Err(Error::Validation { .. })
    ));
    assert!(matches!(
        pool.execute("sleep", json!({"data": 1})).await,
        Err(Error::UnsupportedCommand(_))
    ));
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_workers_take_several_calls_at_once_multiplexed_by_id() {
    let mut adapter = TestWorker::new();
    adapter.extra_args = vec!["--async".into()];
    let pool = builder(adapter).size(1).start().await.unwrap();
    let calls: Vec<_> = (0..4)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(
                async move { pool.execute("asleep", json!({"ms": 400, "token": i})).await },
            )
        })
        .collect();
    // One worker, four calls in flight on it at once: it declared
    // max_concurrency 4 in its hello.
    assert!(
        eventually(5, || pool.stats().in_flight == 4).await,
        "{:?}",
        pool.stats()
    );
    assert_eq!(pool.stats().queued, 0);
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(c.await.unwrap().unwrap()["token"], i);
    }
    // A timed-out async call is cancelled with a cancel frame; the worker stays.
    let pid = pool.worker_pids()[0];
    let err = pool
        .execute_with(
            "asleep",
            json!({"ms": 5000}),
            CallOptions::new().timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    assert!(eventually(3, || pool.stats().in_flight == 0).await);
    assert_eq!(pool.worker_pids(), vec![pid]);
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_answering_health_checks_is_replaced() {
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| {
            c.health_check_interval = Duration::from_millis(200);
            c.health_check_timeout = Duration::from_millis(200);
        })
        .start()
        .await
        .unwrap();
    let hung = pool.worker_pids()[0];
    // SIGSTOP: alive, but deaf.
    assert!(stop(hung));
    assert!(
        eventually(10, || pool
            .worker_pids()
            .first()
            .is_some_and(|p| *p != hung))
        .await,
        "replaced"
    );
    assert!(
        eventually(5, || !alive(hung)).await,
        "the hung worker was killed"
    );
    assert!(pool.execute("echo", json!({})).await.is_ok());
    pool.shutdown().await.unwrap();
}

/// Freezes a process, as a deadlock in a worker would.
#[allow(clippy::disallowed_methods)] // `kill`, not a worker
fn stop(pid: u32) -> bool {
    std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_see_every_call_and_worker_and_the_trace_context_reaches_the_worker() {
    use snakepit_core::events::EventKind;
    use std::sync::{Arc, Mutex};

    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let pool = builder(TestWorker::new())
        .size(1)
        .name("evented")
        .on_event(move |event| {
            assert_eq!(event.pool, "evented");
            let line = match &event.kind {
                EventKind::CallEnded {
                    command,
                    session,
                    worker,
                    pid,
                    outcome,
                    queue_wait,
                    duration,
                } => {
                    assert!(queue_wait <= duration);
                    format!(
                        "call {command} {session:?} {worker:?} {} {outcome}",
                        pid.is_some()
                    )
                }
                EventKind::WorkerReady { worker, pid, .. } => format!("ready {worker} {pid}"),
                other => format!("{other:?}"),
            };
            log.lock().unwrap().push(line);
        })
        .trace_context(|| Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()))
        .start()
        .await
        .unwrap();
    let pid = pool.worker_pids()[0];
    let r = pool.execute("context", json!({})).await.unwrap();
    assert_eq!(
        r["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    // Options win over the hook.
    let mine = "00-11111111111111111111111111111111-2222222222222222-01";
    let r = pool
        .execute_with("context", json!({}), CallOptions::new().traceparent(mine))
        .await
        .unwrap();
    assert_eq!(r["traceparent"], mine);
    pool.execute_in_session("s1", "fail", json!({"message": "x"}))
        .await
        .unwrap_err();
    pool.execute("nope", json!({})).await.unwrap_err();
    let info = pool.workers();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].pid, pid);
    assert_eq!(
        info[0].served, 4,
        "4 calls, the handshake not counted: {info:?}"
    );
    assert!(info[0].rss_bytes.unwrap_or(0) > 1 << 20, "{info:?}");
    pool.shutdown().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            format!("ready 0 {pid}"),
            "call context None Some(0) true ok".to_string(),
            "call context None Some(0) true ok".to_string(),
            "call fail Some(\"s1\") Some(0) true remote".to_string(),
            "call nope None Some(0) true remote".to_string(),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_records_are_capped_expire_and_end_with_their_session() {
    let pool = builder(TestWorker::new())
        .size(2)
        .configure(|c| {
            c.max_sessions = 10;
            c.session_ttl = Duration::from_millis(300);
        })
        .start()
        .await
        .unwrap();
    for i in 0..50 {
        pool.execute_in_session(&format!("s{i}"), "echo", json!({}))
            .await
            .unwrap();
    }
    assert_eq!(pool.stats().sessions, 10, "capped at max_sessions");
    pool.end_session("s0");
    assert_eq!(pool.stats().sessions, 9);
    // Kept alive by use, while the others expire.
    let until = std::time::Instant::now() + Duration::from_millis(700);
    while std::time::Instant::now() < until {
        pool.execute_in_session("s1", "echo", json!({}))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pool.stats().sessions, 1, "only the session in use is left");
    assert!(eventually(3, || pool.stats().sessions == 0).await);
    // Sessions still work after expiry, and get a new record.
    pool.execute_in_session("s1", "echo", json!({}))
        .await
        .unwrap();
    assert_eq!(pool.stats().sessions, 1);
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weak_handle_does_not_keep_the_pool_alive() {
    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    let pid = pool.worker_pids()[0];
    let weak = pool.downgrade();
    let again = weak.upgrade().expect("alive while a handle exists");
    assert_eq!(again.worker_pids(), vec![pid]);
    drop(again);
    drop(pool);
    assert!(weak.upgrade().is_none());
    assert!(
        eventually(5, || !alive(pid)).await,
        "the last handle's drop killed the worker"
    );
}

/// README, errors: `Cancelled` is "the worker reports the call cancelled"
/// (a bridge handler raising `snakepit_bridge.Cancelled`); the worker stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_worker_reports_cancelled_is_cancelled() {
    let pool = builder(BridgeScript("signal_worker.py"))
        .size(1)
        .start()
        .await
        .unwrap();
    let pid = pool.worker_pids()[0];
    let err = pool.execute("give_up", json!({})).await.unwrap_err();
    assert!(matches!(err, Error::Cancelled), "{err:?}");
    let r = pool.execute("echo", json!({})).await.unwrap();
    assert_eq!(r["pid"].as_u64(), Some(u64::from(pid)));
    let s = pool.stats();
    assert_eq!((s.crashes, s.restarts), (0, 0), "{s:?}");
    pool.shutdown().await.unwrap();
}

/// `Stats::call_time`: `None` before any call has ended; then the workers'
/// recent calls' run time (a 40 ms sleep runs at least 40 ms; the wait in
/// the queue is not counted: two callers on one worker, each call waiting
/// behind the other, still average about one call's time, not two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_call_time_is_the_workers_recent_run_time() {
    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    assert_eq!(pool.stats().call_time, None);
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute("sleep", json!({"ms": 40})).await })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    let t = pool.stats().call_time.expect("timed");
    assert!(t >= Duration::from_millis(40), "{t:?}");
    assert!(
        t < Duration::from_millis(40 * 4),
        "{t:?}: the run time, not the time since submission (up to 320 ms)"
    );
    let json = serde_json::to_value(pool.stats()).unwrap();
    assert!(json["call_time_us"].as_u64().unwrap() >= 40_000, "{json}");
    pool.shutdown().await.unwrap();
}
