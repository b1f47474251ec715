//! Promises of ARCHITECTURE.md's invariants, docs/reliability.md,
//! docs/protocol.md and docs/bridges.md that no other test showed, each
//! checked against real worker processes: `workers/doc_promises_worker.py`
//! (no bridge; it records every frame it receives) and
//! `workers/doc_promises_bridge.py` (on the Python bridge).

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{builder, eventually, python, temp_dir};
use serde_json::{json, Value};
use snakepit_core::{
    events::EventKind, Adapter, CallOptions, CallStream, Error, Launch, Pool, StreamItem, WireCodec,
};

fn workers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers")
}

/// The recording worker, declaring `hello` in its hello (`none`: no hello).
struct Doc {
    log: PathBuf,
    hello: &'static str,
    codec: WireCodec,
}

impl Doc {
    fn new(tag: &str, hello: &'static str) -> Doc {
        Doc {
            log: temp_dir(tag).join("frames.log"),
            hello,
            codec: WireCodec::Json,
        }
    }

    fn codec(mut self, codec: WireCodec) -> Doc {
        self.codec = codec;
        self
    }

    fn adapter(&self) -> Doc {
        Doc {
            log: self.log.clone(),
            hello: self.hello,
            codec: self.codec,
        }
    }

    /// Every line of the log, parsed: the frames received, and the
    /// worker's own notes (`sleep_done`).
    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }
}

impl Adapter for Doc {
    fn launch(&self) -> Launch {
        Launch::new(python())
            .arg(workers_dir().join("doc_promises_worker.py"))
            .arg(&self.log)
            .arg(self.hello)
    }
    fn codec(&self) -> WireCodec {
        self.codec
    }
}

/// The bridge-based worker, in `codec`.
struct OnBridge(WireCodec);

impl Adapter for OnBridge {
    fn launch(&self) -> Launch {
        Launch::new(python())
            .arg(workers_dir().join("doc_promises_bridge.py"))
            .env(
                "PYTHONPATH",
                workers_dir().join("../../../../bridges/python"),
            )
            .env("PYTHONDONTWRITEBYTECODE", "1")
    }
    fn codec(&self) -> WireCodec {
        self.0
    }
}

async fn next(stream: &mut CallStream) -> Option<snakepit_core::Result<StreamItem>> {
    use std::future::poll_fn;
    use std::pin::Pin;

    use futures_core::Stream;
    poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

async fn pid(pool: &Pool) -> u64 {
    pool.execute("pid", json!({}))
        .await
        .unwrap()
        .as_u64()
        .unwrap()
}

/// A call that watches its worker's stdin (up to 3 s) while two more are
/// submitted behind it: was one of them written to the worker meanwhile?
async fn written_behind(pool: &Pool) -> bool {
    let watching = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("overlap", json!({"watch_ms": 3000})).await })
    };
    assert!(eventually(10, || pool.stats().in_flight == 1).await);
    let behind: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute("pid", json!({})).await })
        })
        .collect();
    let overlap = watching.await.unwrap().unwrap()["overlap"] == true;
    for b in behind {
        b.await.unwrap().unwrap();
    }
    overlap
}

/// reliability.md, Pipelined dispatch: calls are written ahead "only for
/// workers whose hello declares `pipeline`". A worker whose hello declares
/// other capabilities (here `cancel`), but not `pipeline`, never has a
/// call written while another runs, however long the window; the same
/// worker declaring `pipeline` does (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_hello_lacks_pipeline_gets_nothing_written_ahead() {
    for (hello, written_ahead) in [("cancel", false), ("cancel,pipeline", true)] {
        let doc = Doc::new("nopipeline", hello);
        let pool = builder(doc.adapter())
            .size(1)
            .configure(|c| c.pipeline_max_call = Duration::from_secs(10))
            .start()
            .await
            .unwrap();
        // Recent calls, and short: what the pool writes ahead by.
        for _ in 0..3 {
            pid(&pool).await;
        }
        assert_eq!(
            written_behind(&pool).await,
            written_ahead,
            "hello {hello}: calls written ahead"
        );
        pool.shutdown().await.unwrap();
    }
}

/// reliability.md, Pipelined dispatch: "A call written ahead is in flight
/// in `stats()`, not queued." With `pipeline_depth = 0` (the control) the
/// same call waits in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_written_ahead_is_in_flight_not_queued() {
    for depth in [16, 0] {
        let doc = Doc::new("ahead-stats", "pipeline");
        let pool = builder(doc.adapter())
            .size(1)
            .configure(|c| {
                c.pipeline_max_call = Duration::from_secs(10);
                c.pipeline_depth = depth;
            })
            .start()
            .await
            .unwrap();
        // Recent calls, and short: what the pool writes ahead by.
        for _ in 0..3 {
            pid(&pool).await;
        }
        let long = {
            let pool = pool.clone();
            // Long enough for the figures to be seen on a loaded machine
            // before it ends (1.5 s was not, once).
            tokio::spawn(async move { pool.execute("sleep", json!({"ms": 4000})).await })
        };
        assert!(eventually(10, || pool.stats().in_flight == 1).await);
        let behind = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute("pid", json!({})).await })
        };
        let (in_flight, queued) = if depth > 0 { (2, 0) } else { (1, 1) };
        assert!(
            eventually(10, || {
                let s = pool.stats();
                s.in_flight == in_flight && s.queued == queued
            })
            .await,
            "depth {depth}: expected {in_flight} in flight and {queued} queued, got {:?}",
            pool.stats()
        );
        long.await.unwrap().unwrap();
        behind.await.unwrap().unwrap();
        pool.shutdown().await.unwrap();
    }
}

/// ARCHITECTURE.md, core invariants: "A queued call that times out or is
/// dropped never runs", and a future dropped before its end counts once,
/// as `cancelled` (`requests = completed + errors + cancelled`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_call_that_is_dropped_never_runs_and_counts_as_cancelled() {
    let doc = Doc::new("dropped-queued", "none");
    let pool = builder(doc.adapter()).size(1).start().await.unwrap();
    let long = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("hold", json!({"ms": 800})).await })
    };
    assert!(eventually(10, || pool.stats().in_flight == 1).await);
    let queued = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("dropped_while_queued", json!({})).await })
    };
    assert!(eventually(10, || pool.stats().queued == 1).await);
    queued.abort();
    assert!(queued.await.unwrap_err().is_cancelled());
    assert_eq!(long.await.unwrap().unwrap(), "held");
    // The next call runs on the worker the dropped one waited for.
    pid(&pool).await;
    let commands: Vec<Value> = doc.lines().iter().map(|l| l["command"].clone()).collect();
    assert!(
        !commands.contains(&json!("dropped_while_queued")),
        "the dropped call reached the worker: {commands:?}"
    );
    let s = pool.stats();
    assert_eq!(s.cancelled, 1, "{s:?}");
    assert_eq!(s.requests, s.completed + s.errors + s.cancelled, "{s:?}");
    pool.shutdown().await.unwrap();
}

/// protocol.md section 2: "`n` may be 0 only in error"; reliability.md: "A
/// worker that breaks the protocol (a bad frame ...) is replaced; the call
/// it was serving gets `Error::Protocol`."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_frame_from_a_worker_is_a_protocol_error_and_the_worker_is_replaced() {
    let doc = Doc::new("zero", "none");
    let pool = builder(doc.adapter()).size(1).start().await.unwrap();
    let before = pid(&pool).await;
    let err = pool.execute("zero_frame", json!({})).await.unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err:?}");
    assert!(
        eventually(10, || pool
            .workers()
            .first()
            .is_some_and(|w| w.pid as u64 != before))
        .await
    );
    assert_ne!(pid(&pool).await, before, "a new worker serves");
    pool.shutdown().await.unwrap();
}

/// protocol.md section 2: "a deeper reply, chunk or host-call argument
/// fails only its own call, and the worker is not blamed": a chunk nested
/// deeper than `MAX_DEPTH` is that stream's `Error::Codec`, and the same
/// worker serves the next call. (The request carried `"stream": true`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_nested_too_deep_fails_its_stream_and_the_worker_stays() {
    let doc = Doc::new("deep-chunk", "streaming");
    let pool = builder(doc.adapter()).size(1).start().await.unwrap();
    let before = pid(&pool).await;
    let mut stream = pool
        .execute_stream("deep_chunk", json!({"depth": 200}), CallOptions::new())
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), next(&mut stream))
        .await
        .expect("the stream answers")
        .expect("an item");
    assert!(
        matches!(
            first,
            Err(Error::Codec(snakepit_protocol::Error::TooDeep { .. }))
        ),
        "{first:?}"
    );
    drop(stream);
    // protocol.md section 4: `stream` is `true` when the caller consumes
    // chunks (other requests leave it out: `promises.rs`).
    let request = doc
        .lines()
        .into_iter()
        .find(|l| l["command"] == "deep_chunk")
        .expect("the request reached the worker");
    assert_eq!(request["stream"], true, "{request}");
    assert_eq!(pid(&pool).await, before, "the same worker serves");
    assert_eq!(pool.stats().crashes, 0);
    assert_eq!(pool.stats().restarts, 0);
    pool.shutdown().await.unwrap();
}

/// protocol.md section 2, the host-call argument: a host call nested
/// deeper than `MAX_DEPTH` gets a failed `host_reply` (type `TooDeep`),
/// the host function is not run, and the worker stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_call_nested_too_deep_gets_a_failed_host_reply_and_the_worker_stays() {
    let doc = Doc::new("deep-host", "host_calls");
    let ran = Arc::new(AtomicU64::new(0));
    let counted = ran.clone();
    let pool = builder(doc.adapter())
        .size(1)
        .host_function("echo", move |call| {
            counted.fetch_add(1, Ordering::Relaxed);
            async move { Ok::<Value, snakepit_core::RemoteError>(call.args) }
        })
        .start()
        .await
        .unwrap();
    let before = pid(&pool).await;
    let reply = pool
        .execute("deep_host_call", json!({"depth": 200}))
        .await
        .unwrap();
    assert_eq!(reply["type"], "host_reply", "{reply}");
    assert_eq!(reply["id"], 1, "{reply}");
    assert_eq!(reply["success"], false, "{reply}");
    assert_eq!(reply["error"]["type"], "TooDeep", "{reply}");
    assert_eq!(ran.load(Ordering::Relaxed), 0, "the host function ran");
    assert_eq!(pid(&pool).await, before, "the same worker serves");
    assert_eq!(pool.stats().crashes, 0);
    pool.shutdown().await.unwrap();
}

/// bridges.md, Concurrency and cancellation: "A worker that declares
/// neither `cancel` nor `sigint` is replaced this way unless the call
/// happens to finish within the grace period", during which "the worker
/// gets no new call": the caller gets `CallTimeout` at once, nothing (no
/// cancel frame, no signal, no other call) reaches the worker until its
/// late reply, and then the same worker serves the call that waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_within_the_grace_period_keeps_a_worker_without_cancel_or_sigint() {
    let doc = Doc::new("late", "none");
    let pool = builder(doc.adapter())
        .size(1)
        .configure(|c| c.shutdown_grace_period = Duration::from_secs(5))
        .start()
        .await
        .unwrap();
    let before = pid(&pool).await;
    let err = pool
        .execute_with(
            "sleep",
            json!({"ms": 700}),
            CallOptions::new().timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CallTimeout { .. }), "{err:?}");
    // Submitted while the timed-out call still runs on the only worker.
    assert_eq!(pid(&pool).await, before, "the same worker serves");
    let notes: Vec<Value> = doc
        .lines()
        .into_iter()
        .filter(|l| l.get("sleep_done").is_some())
        .collect();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(
        notes[0]["written_meanwhile"], false,
        "a frame reached the worker while its timed-out call ran"
    );
    assert!(
        !doc.lines().iter().any(|l| l["type"] == "cancel"),
        "a cancel frame was sent to a worker that did not declare cancel"
    );
    let s = pool.stats();
    assert_eq!((s.crashes, s.restarts), (0, 0), "{s:?}");
    pool.shutdown().await.unwrap();
}

/// protocol.md sections 4 and 6.5: a call that times out on a worker that
/// declared `cancel` gets `{"type":"cancel","id":<its id>}`, nothing else;
/// the worker's `Cancelled` reply frees it and it serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_sends_a_cancel_frame_naming_it_and_the_worker_serves_on() {
    let doc = Doc::new("cancel-frame", "cancel");
    let pool = builder(doc.adapter())
        .size(1)
        .configure(|c| c.shutdown_grace_period = Duration::from_secs(5))
        .start()
        .await
        .unwrap();
    let before = pid(&pool).await;
    let err = pool
        .execute_with(
            "wait_cancel",
            json!({}),
            CallOptions::new().timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CallTimeout { .. }), "{err:?}");
    assert_eq!(pid(&pool).await, before, "the same worker serves");
    let lines = doc.lines();
    let id = lines
        .iter()
        .find(|l| l["command"] == "wait_cancel")
        .expect("the call reached the worker")["id"]
        .clone();
    let cancels: Vec<&Value> = lines.iter().filter(|l| l["type"] == "cancel").collect();
    assert_eq!(cancels, [&json!({"type": "cancel", "id": id})]);
    let s = pool.stats();
    assert_eq!((s.crashes, s.restarts), (0, 0), "{s:?}");
    pool.shutdown().await.unwrap();
}

/// reliability.md, Recycling: `recycle_after_calls` replaces a worker
/// "after this many calls", and `PoolConfig::recycle_after_calls` "after it
/// has answered about this many calls": the callers' calls. The pool's own
/// pings (init, health) do not count (`WorkerInfo::served` counts calls
/// only): a worker answers far more health pings than its limit and stays;
/// then about its limit of calls recycles it, for reason `calls`.
/// (reliability.md's sentence "the init handshake and health pings count as
/// calls" is stale since the commit that made `served` count calls only.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_calls_count_toward_recycle_after_calls_not_health_pings() {
    let doc = Doc::new("pings-recycle", "none");
    let reasons = Arc::new(std::sync::Mutex::new(Vec::<&'static str>::new()));
    let seen = reasons.clone();
    let pool = builder(doc.adapter())
        .size(1)
        .configure(|c| {
            c.recycle_after_calls = 10;
            c.health_check_interval = Duration::from_millis(20);
        })
        .on_event(move |e| {
            if let EventKind::WorkerRecycled { reason, .. } = e.kind {
                seen.lock().unwrap().push(reason);
            }
        })
        .start()
        .await
        .unwrap();
    let first = pool.workers()[0].pid;
    let pings = || {
        doc.lines()
            .iter()
            .filter(|l| l["args"]["health_check"] == true)
            .count()
    };
    assert!(
        eventually(20, || pings() >= 30).await,
        "{} health pings",
        pings()
    );
    assert_eq!(pool.stats().recycled, 0, "recycled by pings alone");
    assert_eq!(pool.workers()[0].pid, first);
    for _ in 0..12 {
        pool.execute("ping", json!({})).await.unwrap();
    }
    assert!(
        eventually(20, || pool.stats().recycled >= 1).await,
        "never recycled: {:?}",
        pool.stats()
    );
    assert_eq!(reasons.lock().unwrap().first(), Some(&"calls"));
    assert!(
        eventually(10, || pool
            .workers()
            .first()
            .is_some_and(|w| w.pid != first))
        .await
    );
    pool.shutdown().await.unwrap();
}

/// bridges.md, Codecs: "a result holding `bin` fails `execute` with
/// `Error::Codec`; decode it with `Pool::call` into a type that accepts
/// bytes". Through the Python bridge, which sends `bytes` as `bin`. The
/// error is not one of those where "the call never reached a worker"
/// (`never_ran()`, bridges.md), nor a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_result_fails_execute_as_codec_and_decodes_through_call() {
    struct Bytes(Vec<u8>);
    impl<'de> serde::Deserialize<'de> for Bytes {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Bytes;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, b: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes(b.to_vec()))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }
    let pool = builder(OnBridge(WireCodec::MsgPack))
        .size(1)
        .start()
        .await
        .unwrap();
    let before = pid(&pool).await;
    let err = pool.execute("bytes", json!({})).await.unwrap_err();
    assert!(matches!(err, Error::Codec(_)), "{err:?}");
    assert!(!err.never_ran() && !err.is_crash(), "{err:?}");
    let bytes: Bytes = pool
        .call("bytes", &json!({}), CallOptions::new())
        .await
        .unwrap();
    assert_eq!(bytes.0, [0x00, 0x01, 0xfe, 0xff]);
    assert_eq!(pid(&pool).await, before, "the same worker serves");
    pool.shutdown().await.unwrap();
}

/// bridges.md, Standard output belongs to the protocol: the Python bridge
/// "points descriptor 1 and `sys.stdout` at stderr, so `print`, C
/// libraries and subprocesses write to the log": a child process writing
/// to its stdout and `os.write(1, ...)` break nothing, in either codec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_process_or_os_write_on_descriptor_1_does_not_reach_the_frames() {
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let pool = builder(OnBridge(codec)).size(1).start().await.unwrap();
        let before = pid(&pool).await;
        for _ in 0..3 {
            let r = pool.execute("outside_output", json!({})).await.unwrap();
            assert_eq!(r["pid"].as_u64(), Some(before), "{codec:?}");
        }
        assert_eq!(pid(&pool).await, before, "{codec:?}");
        let s = pool.stats();
        assert_eq!(
            (s.errors, s.crashes, s.restarts),
            (0, 0, 0),
            "{codec:?}: {s:?}"
        );
        pool.shutdown().await.unwrap();
    }
}

/// protocol.md section 6.5 and `sigint` in section 5: on timeout the pool
/// sends SIGINT only to a worker that declared `sigint` and runs one call
/// at a time. A worker declaring `sigint` with `max_concurrency` 2 gets no
/// signal (it would die of it: this worker leaves Python's default
/// handler, `KeyboardInterrupt`) and keeps serving after its late reply;
/// the same worker with `max_concurrency` 1 is signalled (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_goes_only_to_a_worker_that_runs_one_call_at_a_time() {
    for (hello, signalled) in [("sigint,max2", false), ("sigint", true)] {
        let doc = Doc::new("sigint-multi", hello);
        let pool = builder(doc.adapter())
            .size(1)
            .configure(|c| c.shutdown_grace_period = Duration::from_secs(5))
            .start()
            .await
            .unwrap();
        let before = pid(&pool).await;
        let err = pool
            .execute_with(
                "sleep",
                json!({"ms": 700}),
                CallOptions::new().timeout(Duration::from_millis(100)),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::CallTimeout { .. }), "{err:?}");
        assert_eq!(
            pid(&pool).await != before,
            signalled,
            "hello {hello}: the worker was signalled"
        );
        pool.shutdown().await.unwrap();
    }
}

/// bridges.md, Standard output belongs to the protocol: the pool forwards
/// each line of a worker's stderr "to `tracing` (target
/// `snakepit::worker`, level info)"; reliability.md: "a line ends at `\n`
/// or `\r` (progress bars)". Each line is one event naming the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stderr_line_is_an_info_event_of_target_snakepit_worker() {
    let events = snakepit_tests::Events::global();
    let doc = Doc::new("stderr-lines", "none");
    let pool = builder(doc.adapter()).size(1).start().await.unwrap();
    let worker = pool.workers()[0].clone();
    pool.execute(
        "stderr",
        json!({"text": "first line\nprogress 1\rprogress 2\rlast line\n"}),
    )
    .await
    .unwrap();
    let lines = || -> Vec<(tracing::Level, Vec<(String, String)>)> {
        events
            .all()
            .into_iter()
            // This pool's worker only (`cargo test` runs tests side by side).
            .filter(|(target, _, fields)| {
                target == "snakepit::worker"
                    && fields.iter().any(|(n, v)| n == "worker" && *v == worker.id)
            })
            .map(|(_, level, fields)| (level, fields))
            .collect()
    };
    let message = |fields: &[(String, String)], name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert!(eventually(10, || lines().len() >= 4).await, "{:?}", lines());
    let lines = lines();
    let texts: Vec<String> = lines.iter().map(|(_, f)| message(f, "message")).collect();
    assert_eq!(
        texts,
        ["first line", "progress 1", "progress 2", "last line"],
        "{lines:?}"
    );
    for (level, fields) in &lines {
        assert_eq!(*level, tracing::Level::INFO, "{fields:?}");
        assert_eq!(message(fields, "worker"), worker.id, "{fields:?}");
        assert_eq!(message(fields, "pid"), worker.pid.to_string(), "{fields:?}");
    }
    pool.shutdown().await.unwrap();
}

/// protocol.md section 3: "one value per frame"; reliability.md: "A worker
/// that breaks the protocol (a bad frame ...) is replaced; the call it was
/// serving gets `Error::Protocol`". A reply followed by another value in
/// the same frame is such a bad frame, in JSON and in MessagePack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_with_bytes_after_its_value_is_a_protocol_error_in_both_codecs() {
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let doc = Doc::new("trailing", "none").codec(codec);
        let pool = builder(doc.adapter()).size(1).start().await.unwrap();
        let before = pid(&pool).await;
        let err = pool.execute("trailing", json!({})).await.unwrap_err();
        assert!(matches!(err, Error::Protocol { .. }), "{codec:?}: {err:?}");
        assert!(
            eventually(10, || pool
                .workers()
                .first()
                .is_some_and(|w| w.pid as u64 != before))
            .await,
            "{codec:?}: the worker was not replaced"
        );
        pool.shutdown().await.unwrap();
    }
}

/// bridges.md, Writing a bridge, step 10: while a worker that runs one
/// call at a time waits for its `host_reply`, it "receives nothing else in
/// the meantime, apart from `cancel` if it declared it": a call submitted
/// meanwhile is not written to it before the host call's answer. (A worker
/// that declared `pipeline` does get calls written ahead meanwhile, as it
/// would during any call: this worker, which drops what it reads before its
/// `host_reply`, then loses that call.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_call_worker_receives_nothing_else_while_its_host_call_runs() {
    let doc = Doc::new("host-wait", "host_calls");
    let started = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let (s, r) = (started.clone(), release.clone());
    let pool = builder(doc.adapter())
        .size(1)
        .host_function("slow", move |_| {
            let (s, r) = (s.clone(), r.clone());
            async move {
                s.notify_one();
                r.notified().await;
                Ok::<Value, snakepit_core::RemoteError>(json!("answered"))
            }
        })
        .start()
        .await
        .unwrap();
    for _ in 0..3 {
        pid(&pool).await;
    }
    let host = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("host", json!({"function": "slow"})).await })
    };
    started.notified().await;
    let other = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("pid", json!({})).await })
    };
    assert!(
        eventually(10, || {
            let s = pool.stats();
            s.in_flight + s.queued == 2
        })
        .await
    );
    release.notify_one();
    assert_eq!(host.await.unwrap().unwrap()["result"], "answered");
    other.await.unwrap().unwrap();
    let lines = doc.lines();
    let from = lines.iter().position(|l| l["command"] == "host").unwrap();
    let to = lines
        .iter()
        .position(|l| l["type"] == "host_reply")
        .unwrap();
    assert!(
        lines[from + 1..to].is_empty(),
        "frames written during the host call: {:?}",
        &lines[from + 1..to]
    );
    pool.shutdown().await.unwrap();
}

/// reliability.md, Pipelined dispatch: calls are written ahead "only when
/// no worker is idle (idle workers are always used first)": with one of two
/// workers busy, the next call goes to the idle one, and nothing is written
/// to the busy one while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_is_used_before_a_call_is_written_ahead() {
    let doc = Doc::new("idle-first", "pipeline");
    let pool = builder(doc.adapter())
        .size(2)
        .configure(|c| c.pipeline_max_call = Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    // Recent calls on both workers, and short.
    for _ in 0..4 {
        let (a, b) = tokio::join!(pid(&pool), pid(&pool));
        let _ = (a, b);
    }
    let long = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("sleep", json!({"ms": 1000})).await })
    };
    assert!(eventually(10, || pool.stats().in_flight == 1).await);
    let other = pid(&pool).await;
    let long = long.await.unwrap().unwrap();
    assert_ne!(
        long["pid"].as_u64(),
        Some(other),
        "the idle worker took the call"
    );
    assert_eq!(
        long["written_meanwhile"], false,
        "a call was written ahead to the busy worker"
    );
    pool.shutdown().await.unwrap();
}

/// protocol.md section 4: a request's `id` is "unique per pool at any
/// moment": calls running at once on different workers have different ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_unique_across_the_pools_workers_at_any_moment() {
    let doc = Doc::new("ids", "none");
    let pool = builder(doc.adapter()).size(3).start().await.unwrap();
    for round in 0..5 {
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    pool.execute("hold", json!({"ms": 300, "round": round}))
                        .await
                })
            })
            .collect();
        assert!(
            eventually(10, || pool.stats().in_flight == 3).await,
            "three calls at once"
        );
        for c in calls {
            c.await.unwrap().unwrap();
        }
        let ids: Vec<u64> = doc
            .lines()
            .iter()
            .filter(|l| l["command"] == "hold" && l["args"]["round"] == round)
            .map(|l| l["id"].as_u64().unwrap())
            .collect();
        assert_eq!(ids.len(), 3);
        let distinct: std::collections::HashSet<u64> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), 3, "round {round}: ids {ids:?}");
    }
    pool.shutdown().await.unwrap();
}

/// ARCHITECTURE.md, Processes and orphans: "Dropping the last `Pool`
/// handle without `shutdown()` kills every group at once": workers that
/// ignore the end of their stdin and SIGTERM die, with a child of their
/// own, although the grace period (which a stop sequence would wait out)
/// is an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_kills_every_group_at_once() {
    let doc = Doc::new("drop-kills", "none");
    let pool = builder(doc.adapter())
        .size(2)
        .configure(|c| c.shutdown_grace_period = Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            // Held, so that both run at once: one on each worker.
            tokio::spawn(async move { pool.execute("stubborn", json!({"hold_ms": 300})).await })
        })
        .collect();
    let mut pids = Vec::new();
    for c in calls {
        let r = c.await.unwrap().unwrap();
        pids.push(r["pid"].as_u64().unwrap() as u32);
        pids.push(r["child"].as_u64().unwrap() as u32);
    }
    assert_eq!(
        pids.iter().collect::<std::collections::HashSet<_>>().len(),
        4,
        "two workers and their children: {pids:?}"
    );
    assert!(pids.iter().all(|&p| common::alive(p)));
    drop(pool);
    assert!(
        eventually(10, || pids.iter().all(|&p| !common::alive(p))).await,
        "still alive: {:?}",
        pids.iter()
            .filter(|&&p| common::alive(p))
            .collect::<Vec<_>>()
    );
}

/// protocol.md section 6, step 4: "An idle worker gets `ping` with
/// `{"health_check": true}`": a busy one does not (for a worker that runs
/// one call at a time, a ping written behind its call would wait there).
/// Pings every 20 ms, and none reaches the worker during a 1 s call; they
/// go on once it is idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_worker_gets_no_health_ping() {
    let doc = Doc::new("busy-no-ping", "none");
    let pool = builder(doc.adapter())
        .size(1)
        .configure(|c| c.health_check_interval = Duration::from_millis(20))
        .start()
        .await
        .unwrap();
    let pings = || {
        doc.lines()
            .iter()
            .filter(|l| l["args"]["health_check"] == true)
            .count()
    };
    assert!(
        eventually(10, || pings() >= 2).await,
        "idle workers are pinged"
    );
    let r = pool.execute("sleep", json!({"ms": 1000})).await.unwrap();
    assert_eq!(
        r["written_meanwhile"], false,
        "a frame (a health ping) was written to the busy worker"
    );
    let after = pings();
    assert!(
        eventually(10, || pings() > after).await,
        "pings go on once idle"
    );
    pool.shutdown().await.unwrap();
}

/// docs/reliability.md, "No orphan, on any path": a worker's child that
/// called `setsid` dies when its worker ends, while the pool goes on: its
/// worker killed (SIGKILL), and its worker recycled. The other worker's
/// escaped child, and the other worker, are left alone. (Such a child lived
/// until the pool's end.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_left_its_workers_group_dies_with_its_worker() {
    let doc = Doc::new("escape-worker", "none");
    let pool = builder(doc.adapter())
        .size(2)
        .configure(|c| c.recycle_after_calls = 3)
        .start()
        .await
        .unwrap();
    // Two calls at once, each held: one on each worker.
    let held = json!({"hold_ms": 300});
    let (a, b) = tokio::join!(
        pool.execute("escape_held", held.clone()),
        pool.execute("escape_held", held.clone())
    );
    let pid = |v: &Value, k: &str| v[k].as_u64().unwrap() as u32;
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(pid(&a, "worker"), pid(&b, "worker"), "one call per worker");
    for v in [&a, &b] {
        assert!(common::alive(pid(v, "child")));
    }
    // Killed: its escaped child goes; the other worker's stays.
    common::kill_9(pid(&a, "worker"));
    assert!(
        eventually(10, || !common::alive(pid(&a, "child"))).await,
        "the escaped child of a killed worker outlived it"
    );
    assert!(
        common::alive(pid(&b, "child")),
        "another worker's child was killed"
    );
    assert!(
        common::alive(pid(&b, "worker")),
        "another worker was killed"
    );
    // Recycled after its third call: its escaped child goes with it.
    let mut recycled = None;
    for _ in 0..20 {
        let v = pool.execute("escape_held", json!({})).await.unwrap();
        if pid(&v, "worker") == pid(&b, "worker") {
            recycled = Some(v);
            break;
        }
    }
    let c = recycled.expect("a second call on the surviving worker");
    // Its third call retires it.
    while common::alive(pid(&b, "worker")) {
        let _ = pool.execute("pid", json!({})).await.unwrap();
        if eventually(1, || !common::alive(pid(&b, "worker"))).await {
            break;
        }
    }
    for child in [pid(&b, "child"), pid(&c, "child")] {
        assert!(
            eventually(10, || !common::alive(child)).await,
            "the escaped child {child} of a recycled worker outlived it"
        );
    }
    assert!(
        pool.execute("pid", json!({})).await.is_ok(),
        "the pool serves on"
    );
    pool.shutdown().await.unwrap();
}

/// docs/reliability.md, "No orphan, on any path": a worker's child that
/// called `setsid` left every process group the pool kills, and after a
/// clean end no run record is left for a later sweep. The pool kills what
/// carries its run id at its end: after `shutdown()`, and when the last
/// handle is dropped. (Such a child outlived both.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_left_its_workers_group_dies_with_the_pool() {
    for shutdown in [true, false] {
        let doc = Doc::new("escape", "none");
        let pool = builder(doc.adapter()).size(1).start().await.unwrap();
        let child = pool.execute("escape", json!({})).await.unwrap();
        let child = child.as_u64().unwrap() as u32;
        assert!(common::alive(child));
        if shutdown {
            pool.shutdown().await.unwrap();
        } else {
            drop(pool);
        }
        assert!(
            eventually(10, || !common::alive(child)).await,
            "the escaped child {child} outlived the pool (shutdown: {shutdown})"
        );
    }
}
