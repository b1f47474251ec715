//! Promises of snakepit-core's rustdoc (`///` on public items) that no
//! other test shows, each against real worker processes
//! (`workers/test_worker.py`, on the Python bridge). Nine once failed (an
//! overflowing memory limit, the concurrency bound with calls written
//! ahead, a bad chunk, a breaker's refusal and a waiting call at shutdown
//! reported as run, a health ping counted as a call, a zero stderr tail,
//! durations written out short, the restart backoff's rustdoc).

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;
use snakepit_core::events::EventKind;
use snakepit_core::{CallOptions, Error, Pool, SessionEnds, SessionHook};

/// Sends `signal` (`STOP`, `CONT`) to one process, from outside.
#[allow(clippy::disallowed_methods)] // `kill`, not a worker
fn signal(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}

/// `PoolConfig::recycle_above_rss_mb`: "Replace a worker whose resident
/// memory is above this many MiB (checked between calls); zero: never."
/// A limit no worker reaches (2^44 MiB, 16 EiB) recycles nothing, and the
/// slot stays supervised: a worker killed later is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_limit_no_worker_reaches_recycles_nothing_and_a_killed_worker_is_still_replaced() {
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| c.recycle_above_rss_mb = 1 << 44)
        .start()
        .await
        .unwrap();
    let pid = pool.worker_pids()[0];
    // Memory is checked every 100 ms: well past several checks.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(pool.stats().recycled, 0, "no worker is above 16 EiB");
    assert_eq!(pool.worker_pids(), vec![pid]);
    kill_9(pid);
    assert!(
        eventually(30, || {
            let pids = pool.worker_pids();
            pids.len() == 1 && pids[0] != pid
        })
        .await,
        "the killed worker was replaced: {:?}",
        pool.stats()
    );
    pool.execute("echo", json!({})).await.unwrap();
    pool.shutdown().await.unwrap();
}

/// `Error::never_ran`: "The pool turned the call away without running it
/// (...): retrying later may succeed." A call that finds no worker and
/// every slot's breaker open fails at once with `StartFailed`
/// (`PoolConfig::breaker_threshold`: "callers then fail fast with the
/// start-up error"): it never reached any worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_turned_away_by_an_open_breaker_never_ran() {
    let dir = temp_dir("audit-breaker");
    let marker = dir.join("die-soon");
    let opened = Arc::new(AtomicBool::new(false));
    let seen = opened.clone();
    let mut worker = TestWorker::new();
    worker.env.push((
        "TEST_DIE_SOON_IF_EXISTS".into(),
        marker.display().to_string(),
    ));
    let pool = builder(worker)
        .size(1)
        .configure(|c| {
            c.breaker_threshold = 1;
            c.breaker_cooldown = Duration::from_secs(600);
        })
        .on_event(move |e| {
            if let EventKind::BreakerOpened { .. } = e.kind {
                seen.store(true, Ordering::SeqCst);
            }
        })
        .start()
        .await
        .unwrap();
    std::fs::write(&marker, "").unwrap();
    kill_9(pool.worker_pids()[0]);
    assert!(
        eventually(30, || opened.load(Ordering::SeqCst)).await,
        "the breaker opened"
    );
    let err = pool.execute("echo", json!({})).await.unwrap_err();
    assert_eq!(err.kind(), "start_failed", "{err}");
    assert!(!err.is_crash() && !err.is_timeout(), "{err}");
    assert!(
        err.never_ran(),
        "no worker existed to run it, yet never_ran() is false: {err}"
    );
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// `PoolConfig::stderr_tail_lines`: "Lines of each worker's stderr kept
/// for error reports." Zero keeps none: a crash reports no stderr (a
/// service may set it so that what workers print never reaches its error
/// messages).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_tail_of_zero_lines_keeps_none() {
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| c.stderr_tail_lines = 0)
        .start()
        .await
        .unwrap();
    let err = pool.execute("exit", json!({"code": 3})).await.unwrap_err();
    let Error::WorkerCrashed(crash) = &err else {
        panic!("{err}")
    };
    assert_eq!(crash.exit, snakepit_core::ExitReason::Code(3));
    assert_eq!(crash.stderr_tail, "", "no line kept: {err}");
    pool.shutdown().await.unwrap();
}

/// `Stats::in_flight`: "Calls in flight on workers"; `Stats::busy`:
/// "Ready workers with at least one call in flight"; and the pool's health
/// checks "are not calls" (`PoolConfig::worker_idle_timeout`). A health
/// ping waiting on a worker is no call in flight: with no call made, the
/// stats show none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_ping_is_not_a_call_in_flight() {
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| {
            c.health_check_interval = Duration::from_millis(100);
            c.health_check_timeout = Duration::from_secs(120);
        })
        .start()
        .await
        .unwrap();
    let pid = pool.worker_pids()[0];
    // Frozen: its ping stays unanswered while the test looks.
    signal(pid, "STOP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stats = pool.stats();
    let workers = pool.workers();
    signal(pid, "CONT");
    assert_eq!(stats.requests, 0);
    assert_eq!(
        (stats.in_flight, stats.busy),
        (0, 0),
        "no call was made: {stats:?}"
    );
    assert_eq!(workers[0].in_flight, 0, "{workers:?}");
    pool.shutdown().await.unwrap();
}

/// `Stats`: "A snapshot of a pool, every figure consistent with what
/// callers saw". Every call submitted (`requests`) ends once: succeeded
/// (`completed`), failed (`errors`, "the counters below included") or
/// dropped (`cancelled`); each kind of failure is counted under its own
/// counter, and `queued` counts the calls waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_submitted_is_counted_once_under_its_outcome() {
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| {
            c.max_queue_size = 1;
            c.queue_timeout = Duration::from_millis(1500);
            c.pipeline_depth = 0; // nothing written ahead: calls wait in the queue
        })
        .start()
        .await
        .unwrap();
    pool.execute("echo", json!({})).await.unwrap();
    let err = pool.execute("fail", json!({})).await.unwrap_err();
    assert_eq!(err.kind(), "remote");
    let err = pool
        .execute_with(
            "sleep",
            json!({"ms": 3000}),
            CallOptions::new().timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "call_timeout");
    // The worker recovers from the timed-out call before the next step.
    assert!(
        eventually(30, || pool.stats().in_flight == 0).await,
        "{:?}",
        pool.stats()
    );
    let running = a_running_sleep(&pool, 8000, Duration::from_secs(60)).await;
    let waiting = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("echo", json!({})).await })
    };
    assert!(eventually(20, || pool.stats().queued == 1).await);
    let err = pool.execute("echo", json!({})).await.unwrap_err();
    assert!(matches!(err, Error::PoolSaturated { queued: 1 }), "{err:?}");
    let err = waiting.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), "queue_timeout", "{err}");
    let dropped = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("echo", json!({})).await })
    };
    assert!(eventually(20, || pool.stats().queued == 1).await);
    dropped.abort();
    let _ = dropped.await;
    assert!(eventually(20, || pool.stats().queued == 0).await);
    running.await.unwrap().unwrap();

    let s = pool.stats();
    assert_eq!(s.requests, 7, "{s:?}");
    assert_eq!(s.completed, 2, "{s:?}");
    assert_eq!(s.cancelled, 1, "{s:?}");
    assert_eq!(s.errors, 4, "{s:?}");
    assert_eq!(
        (
            s.call_timeouts,
            s.pool_saturated,
            s.queue_timeouts,
            s.crashes
        ),
        (1, 1, 1, 0),
        "{s:?}"
    );
    assert_eq!(s.requests, s.completed + s.errors + s.cancelled, "{s:?}");
    assert_eq!((s.in_flight, s.queued, s.busy), (0, 0, 0), "{s:?}");
    pool.shutdown().await.unwrap();
}

/// A `CallEnded` event's outcome and worker slot.
type Ended = (String, Option<usize>);

/// A session store in miniature: records what the pool asks of it.
#[derive(Clone, Default)]
struct Store {
    touched: Arc<Mutex<Vec<String>>>,
    ends: Arc<Mutex<Vec<SessionEnds>>>,
}

impl SessionHook for Store {
    fn touch(&self, session_id: &str) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        self.touched.lock().unwrap().push(session_id.to_owned());
        let id = session_id.to_owned();
        Box::pin(async move {
            match id.as_str() {
                "refused" => Err("the store is full".to_owned()),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok(())
                }
                _ => Ok(()),
            }
        })
    }

    fn attached(&self, ends: SessionEnds) {
        self.ends.lock().unwrap().push(ends);
    }
}

/// `PoolBuilder::session_hook`: the hook creates or touches each session
/// before its calls are routed, and a session it reports ended loses its
/// affinity. `SessionHook::touch`: "An `Err` message fails the call with
/// `Error::Session`; it never runs." `SessionHook::attached`: "Called once
/// when the pool starts". `SessionEnds::end`: "Forgets the session's worker
/// affinity; `false` once the pool is gone." And the
/// store's time counts against the call's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_hook_is_touched_before_routing_and_ends_sessions() {
    let store = Store::default();
    let ended: Arc<Mutex<Vec<Ended>>> = Arc::default();
    let log = ended.clone();
    let pool = builder(TestWorker::new())
        .size(1)
        .session_hook(store.clone())
        .on_event(move |e| {
            if let EventKind::CallEnded {
                outcome, worker, ..
            } = e.kind
            {
                log.lock().unwrap().push((outcome.to_owned(), worker));
            }
        })
        .start()
        .await
        .unwrap();
    assert_eq!(store.ends.lock().unwrap().len(), 1, "attached once");

    // No session: the store is not asked.
    let r = pool.execute("echo", json!({})).await.unwrap();
    assert_eq!(r["served"], 1);
    assert!(store.touched.lock().unwrap().is_empty());

    let r = pool
        .execute_in_session("a", "echo", json!({}))
        .await
        .unwrap();
    assert_eq!(r["session_id"], "a");
    assert_eq!(*store.touched.lock().unwrap(), vec!["a".to_owned()]);
    assert_eq!(pool.stats().sessions, 1);

    // Refused by the store: never ran, reached no worker.
    let err = pool
        .execute_in_session("refused", "echo", json!({}))
        .await
        .unwrap_err();
    match &err {
        Error::Session {
            session_id,
            message,
        } => {
            assert_eq!(session_id, "refused");
            assert_eq!(message, "the store is full");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.kind(), "session");
    assert!(err.never_ran() && !err.is_timeout() && !err.is_crash());
    assert_eq!(
        ended.lock().unwrap().last().cloned(),
        Some(("session".to_owned(), None)),
        "its CallEnded names no worker"
    );
    let r = pool.execute("echo", json!({})).await.unwrap();
    assert_eq!(r["served"], 3, "the refused call never reached the worker");

    // A store slower than the call's deadline: the call times out.
    let err = pool
        .execute_with(
            "echo",
            json!({}),
            CallOptions::new()
                .session("slow")
                .timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "call_timeout", "{err}");
    let r = pool.execute("echo", json!({})).await.unwrap();
    assert_eq!(
        r["served"], 4,
        "the timed-out call never reached the worker"
    );

    // The store ends a session: its affinity goes.
    let ends = store.ends.lock().unwrap()[0].clone();
    assert!(ends.end("a"));
    assert_eq!(pool.stats().sessions, 0);
    assert!(ends.end("never-seen"), "ending an unknown session is fine");

    // The pool gone (its last handle dropped), `end` says so.
    drop(pool);
    assert!(
        eventually(20, || !ends.end("a")).await,
        "end() is false once the pool is gone"
    );
}

/// `PoolInner`'s drop: "The last handle is gone without `shutdown()`: stop
/// at once, killing every worker's process group", and the crate "never
/// leaves an orphan process". Holds when the runtime the pool ran on was
/// dropped first (a program's `main` returning in the wrong order).
#[test]
fn dropping_the_last_handle_after_its_runtime_is_gone_kills_every_worker() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pool = rt.block_on(async {
        let pool = builder(TestWorker::new()).size(2).start().await.unwrap();
        pool.execute("echo", json!({})).await.unwrap();
        pool
    });
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 2);
    drop(rt);
    drop(pool);
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while pids.iter().any(|p| alive(*p)) && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<u32> = pids.into_iter().filter(|p| alive(*p)).collect();
    for p in &left {
        kill_9(*p);
    }
    assert!(left.is_empty(), "workers left running: {left:?}");
}

/// `PoolBuilder::start`: "Must be called within a Tokio runtime." Outside
/// one it fails (`Error::Config`) on its first poll, starting nothing,
/// rather than panicking.
#[test]
fn start_outside_a_tokio_runtime_is_a_config_error_not_a_panic() {
    use std::task::{Context, Poll, Waker};
    let start = Pool::builder(TestWorker::new()).size(1).start();
    let mut start = std::pin::pin!(start);
    let mut cx = Context::from_waker(Waker::noop());
    match start.as_mut().poll(&mut cx) {
        Poll::Ready(Err(e @ Error::Config(_))) => {
            assert_eq!(e.kind(), "config");
            assert!(e.to_string().contains("Tokio runtime"), "{e}");
        }
        Poll::Ready(other) => panic!("{other:?}"),
        Poll::Pending => panic!("start() waited outside a runtime"),
    }
}

/// `Pool::worker_pids`, `Pool::workers`, `Stats::workers`: "the ready
/// workers". After `shutdown()` there is none, and a second `shutdown()`
/// is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_shutdown_no_worker_is_listed_as_ready() {
    let pool = builder(TestWorker::new()).size(2).start().await.unwrap();
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 2);
    pool.shutdown().await.unwrap();
    assert!(pool.worker_pids().is_empty());
    assert!(pool.workers().is_empty());
    let s = pool.stats();
    assert_eq!((s.workers, s.capacity, s.available, s.busy), (0, 0, 0, 0));
    assert!(pids.iter().all(|p| !alive(*p)), "reaped");
    pool.shutdown().await.unwrap();
}

/// `PoolConfig::max_sessions`: "Session affinity records kept at most;
/// beyond this, new sessions are served without affinity". At zero, no
/// record is kept and session calls are served all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_sessions_of_zero_keeps_no_record_and_serves_every_session_call() {
    let pool = builder(TestWorker::new())
        .size(2)
        .configure(|c| c.max_sessions = 0)
        .start()
        .await
        .unwrap();
    for i in 0..5 {
        let r = pool
            .execute_in_session(&format!("s{i}"), "echo", json!({}))
            .await
            .unwrap();
        assert_eq!(r["session_id"], format!("s{i}"));
    }
    assert_eq!(pool.stats().sessions, 0);
    // Strict and fail-fast affinity without a record: any free worker.
    for affinity in [
        snakepit_core::Affinity::Strict,
        snakepit_core::Affinity::FailFast,
    ] {
        pool.execute_with(
            "echo",
            json!({}),
            CallOptions::new().session("s0").affinity(affinity),
        )
        .await
        .unwrap();
    }
    assert_eq!(pool.stats().sessions, 0);
    pool.shutdown().await.unwrap();
}

/// `HostCall`: `worker_id` is "The calling worker" (its
/// `SNAKEPIT_WORKER_ID`, as `Pool::workers` lists it) and `session_id`
/// "The session of the request the worker was serving, if any".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_call_names_its_worker_and_its_session() {
    let calls = Arc::new(AtomicUsize::new(0));
    let n = calls.clone();
    let pool = builder(TestWorker::new())
        .size(1)
        .host_function("who", move |call| {
            n.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok(json!({
                    "function": call.function,
                    "worker_id": call.worker_id,
                    "session_id": call.session_id,
                    "args": call.args,
                }))
            }
        })
        .start()
        .await
        .unwrap();
    let id = pool.workers()[0].id.clone();
    let r = pool
        .execute("host", json!({"function": "who", "args": {"x": 1}}))
        .await
        .unwrap();
    assert_eq!(r["function"], "who");
    assert_eq!(r["worker_id"], id.as_str());
    assert_eq!(r["session_id"], serde_json::Value::Null);
    assert_eq!(r["args"]["x"], 1);
    let r = pool
        .execute_in_session("s-7", "host", json!({"function": "who"}))
        .await
        .unwrap();
    assert_eq!(r["session_id"], "s-7");
    assert_eq!(r["worker_id"], id.as_str());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    pool.shutdown().await.unwrap();
}

/// A worker without the bridge (JSON, one call at a time, `streaming`
/// declared): `bad_chunk` sends one chunk frame whose `data` string holds
/// bytes that are not UTF-8 (its envelope is well-formed), then its final
/// reply; `pid` answers its pid.
struct BadChunk;

const BAD_CHUNK: &str = r#"
import os, struct, sys
from raw_frames import read, write
write({"type": "hello", "protocol": 1, "pid": os.getpid(),
       "capabilities": {"max_concurrency": 1, "streaming": True}})
while True:
    req = read()
    if req is None:
        break
    if req.get("type") not in (None, "request"):
        continue
    rid = req["id"]
    if req["command"] == "bad_chunk":
        payload = b'{"type":"chunk","id":%d,"data":"\xff\xfe"}' % rid
        sys.stdout.buffer.write(struct.pack(">I", len(payload)) + payload)
        sys.stdout.buffer.flush()
        write({"id": rid, "success": True, "result": {"pid": os.getpid()}})
    else:
        write({"id": rid, "success": True, "result": {"status": "ok", "pid": os.getpid()}})
"#;

impl snakepit_core::Adapter for BadChunk {
    fn launch(&self) -> snakepit_core::Launch {
        let workers = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers");
        snakepit_core::Launch::new(python())
            .arg("-c")
            .arg(BAD_CHUNK)
            .env("PYTHONPATH", workers)
            .env("PYTHONDONTWRITEBYTECODE", "1")
    }
}

/// `Error::Protocol`: "The worker broke the protocol (a bad frame, ...);
/// it was replaced." A chunk frame whose data does not decode (bytes that
/// are not UTF-8 in a JSON string: not a well-formed value nested too deep
/// or of another type, which `Error::Codec` covers) is a bad frame: the
/// stream yields `Error::Protocol`, and the worker that sent it is
/// replaced, as it is for the same bytes in a reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_does_not_decode_is_a_protocol_error_and_its_worker_is_replaced() {
    let pool = builder(BadChunk).size(1).start().await.unwrap();
    let before = pool.worker_pids()[0];
    let mut stream = pool
        .execute_stream("bad_chunk", json!({}), CallOptions::new())
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(20), next(&mut stream))
        .await
        .expect("the stream answers")
        .expect("an item");
    match &first {
        Err(Error::Protocol { source, .. }) => assert_eq!(source.kind(), "invalid_utf8"),
        other => panic!("{other:?}"),
    }
    drop(stream);
    assert!(
        eventually(30, || pool
            .worker_pids()
            .first()
            .is_some_and(|p| *p != before))
        .await,
        "the worker that sent the bad frame was replaced"
    );
    pool.shutdown().await.unwrap();
}

/// `RawProcess::wait`: "Waits for it to end and reaps it, then kills what
/// is left of its process group (children of its own)"; `try_wait` the
/// same once it has ended; `take_stdout`: "the first time; `None` after".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_process_that_ended_takes_its_groups_leftovers_with_it() {
    use snakepit_core::{Launch, RawProcess, WireCodec};
    use tokio::io::AsyncBufReadExt;
    for by_try_wait in [false, true] {
        let launch = Launch::new("sh")
            .arg("-c")
            .arg("sleep 300 & echo $!; exit 4");
        let mut p = RawProcess::spawn(launch, WireCodec::Json).await.unwrap();
        let out = p.take_stdout().expect("piped");
        assert!(p.take_stdout().is_none(), "the first time only");
        let mut line = String::new();
        tokio::io::BufReader::new(out)
            .read_line(&mut line)
            .await
            .unwrap();
        let child: u32 = line.trim().parse().unwrap();
        let status = if by_try_wait {
            let mut status = None;
            for _ in 0..3000 {
                status = p.try_wait().unwrap();
                if status.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            status.expect("it ended")
        } else {
            tokio::time::timeout(Duration::from_secs(30), p.wait())
                .await
                .expect("it ended")
                .unwrap()
        };
        assert_eq!(status.code(), Some(4));
        let gone = eventually(20, || !alive(child)).await;
        if !gone {
            kill_9(child);
        }
        assert!(
            gone,
            "its child was killed with its group (try_wait: {by_try_wait})"
        );
        drop(p);
    }
}

/// The next item of a stream.
async fn next(
    stream: &mut snakepit_core::CallStream,
) -> Option<snakepit_core::Result<snakepit_core::StreamItem>> {
    std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut *stream), cx))
        .await
}

/// The pids of the live processes whose environment holds `KEY=value`.
fn marked(key: &str, value: &str) -> Vec<u32> {
    let needle = format!("{key}={value}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|v| v == needle.as_bytes()) && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// A mark no other process carries.
fn mark(tag: &str) -> String {
    use std::sync::atomic::AtomicU32;
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The crate "never leaves an orphan process" (lib.rs), and a pool's end
/// kills its workers. A `start()` given up half-way (its future dropped,
/// as a timeout around it does) while workers are still in their init
/// handshake leaves no worker running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_dropped_during_the_handshake_leaves_no_worker() {
    let tag = mark("dropped-start");
    let start = builder(Raw("slow_init"))
        .size(2)
        .worker_env("AUDIT_MARK", &tag)
        .configure(|c| c.worker_init_timeout = Duration::from_secs(60))
        .start();
    let mut start = Box::pin(start);
    assert!(
        tokio::time::timeout(Duration::from_secs(3), &mut start)
            .await
            .is_err(),
        "the workers are still in their handshake"
    );
    assert!(
        eventually(20, || marked("AUDIT_MARK", &tag).len() == 2).await,
        "both workers run: {:?}",
        marked("AUDIT_MARK", &tag)
    );
    drop(start);
    let gone = eventually(15, || marked("AUDIT_MARK", &tag).is_empty()).await;
    let left = marked("AUDIT_MARK", &tag);
    for p in &left {
        kill_9(*p);
    }
    assert!(
        gone,
        "workers left running after start() was dropped: {left:?}"
    );
}

/// `PoolBuilder::start`: "returns ... with the first start-up error", and
/// the pool it started is shut down: a worker of it still in its
/// handshake when another fails is not left running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_leaves_no_worker_of_the_slots_still_starting() {
    struct Mixed;
    impl snakepit_core::Adapter for Mixed {
        fn launch(&self) -> snakepit_core::Launch {
            // Slot 1 fails at once; the others hang in their start.
            let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/workers/raw_worker.py");
            snakepit_core::Launch::new("sh")
                .arg("-c")
                .arg(r#"case "$SNAKEPIT_WORKER_ID" in *_worker_1_*) sleep 2; exec "$0" "$1" exit_at_once;; *) exec "$0" "$1" slow_init;; esac"#)
                .arg(python())
                .arg(script)
                .env(
                    "PYTHONPATH",
                    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers"),
                )
        }
    }
    let tag = mark("failed-start");
    let seen = {
        let tag = tag.clone();
        tokio::spawn(async move {
            let mut most = 0;
            for _ in 0..400 {
                let slow = marked("AUDIT_MARK", &tag)
                    .into_iter()
                    .filter(|p| {
                        std::fs::read(format!("/proc/{p}/cmdline"))
                            .is_ok_and(|c| c.ends_with(b"slow_init\0"))
                    })
                    .count();
                most = most.max(slow);
                if most == 2 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            most
        })
    };
    let err = builder(Mixed)
        .size(3)
        .worker_env("AUDIT_MARK", &tag)
        .configure(|c| c.worker_init_timeout = Duration::from_secs(60))
        .start()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "start_failed", "{err}");
    assert_eq!(
        seen.await.unwrap(),
        2,
        "the two slow workers ran before the failure"
    );
    let gone = eventually(15, || marked("AUDIT_MARK", &tag).is_empty()).await;
    let left = marked("AUDIT_MARK", &tag);
    for p in &left {
        kill_9(*p);
    }
    assert!(gone, "workers left running after start() failed: {left:?}");
}

/// `PoolConfig`: "the struct reads from any serde format, durations in
/// milliseconds, so a service can keep it in its own configuration". A
/// configuration written out (it is `Serialize`) reads back as the same
/// configuration; a duration too long for a `u64` of milliseconds (no
/// limit, in practice) stays at least as long as the longest one there is.
#[test]
fn a_pool_config_written_out_reads_back_the_same() {
    let config = snakepit_core::PoolConfig::default();
    let text = serde_json::to_string(&config).unwrap();
    let back: snakepit_core::PoolConfig = serde_json::from_str(&text).unwrap();
    assert_eq!(back, config);
}

/// The same, for a duration past what a `u64` of milliseconds holds.
#[test]
fn a_pool_config_duration_too_long_for_milliseconds_is_not_written_out_short() {
    let mut config = snakepit_core::PoolConfig::default();
    // One second past u64::MAX milliseconds.
    let forever = Duration::from_secs(u64::MAX / 1000 + 1);
    config.queue_timeout = forever;
    config.session_ttl = forever;
    config.pipeline_max_call = forever;
    let text = serde_json::to_string(&config).unwrap();
    let back: snakepit_core::PoolConfig = serde_json::from_str(&text).unwrap();
    let century = Duration::from_secs(100 * 365 * 24 * 3600);
    assert!(
        back.queue_timeout >= century
            && back.session_ttl >= century
            && back.pipeline_max_call >= century,
        "written out as {text}"
    );
}

/// `PoolConfig::restart_backoff`: "First delay before restarting a slot
/// whose worker failed to start or died within a second of starting ...
/// A worker that lived longer is replaced at once." (Its rustdoc once
/// promised the delay for every death, against docs/reliability.md.) A
/// worker killed after 1.5 s is restarted with no delay (the backoff of a
/// crash loop: event_promises' `each_failed_start_is_reported_...`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_lived_is_replaced_at_once() {
    let delays: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let log = delays.clone();
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| {
            c.restart_backoff = Duration::from_secs(4);
            c.restart_backoff_max = Duration::from_secs(10);
        })
        .on_event(move |e| {
            if let EventKind::WorkerRestarting { delay, .. } = e.kind {
                log.lock().unwrap().push(delay);
            }
        })
        .start()
        .await
        .unwrap();
    let pid = pool.worker_pids()[0];
    tokio::time::sleep(Duration::from_millis(1500)).await; // it ran a while
    kill_9(pid);
    assert!(eventually(30, || !delays.lock().unwrap().is_empty()).await);
    assert_eq!(delays.lock().unwrap()[0], Duration::ZERO);
    pool.shutdown().await.unwrap();
}

/// A worker without the bridge that declares `max_concurrency` 4 and
/// `pipeline`, and runs every request it reads at once, each on a thread
/// of its own: `work` sleeps `ms`, `most` answers the most calls it ran at
/// once.
struct Concurrent;

const CONCURRENT: &str = r#"
import os, threading, time
from raw_frames import read, write
lock = threading.Lock()
state = {"running": 0, "most": 0}
write({"type": "hello", "protocol": 1, "pid": os.getpid(),
       "capabilities": {"max_concurrency": 4, "pipeline": True, "cancel": True}})

def serve(req):
    rid, command, args = req["id"], req["command"], req.get("args") or {}
    if command == "work":
        with lock:
            state["running"] += 1
            state["most"] = max(state["most"], state["running"])
        time.sleep(args.get("ms", 0) / 1000.0)
        with lock:
            state["running"] -= 1
        result = {"pid": os.getpid()}
    elif command == "most":
        result = {"most": state["most"]}
    else:
        result = {"status": "ok", "pid": os.getpid()}
    with lock:
        write({"id": rid, "success": True, "result": result})

while True:
    req = read()
    if req is None:
        break
    if req.get("type") not in (None, "request"):
        continue
    threading.Thread(target=serve, args=(req,), daemon=True).start()
"#;

impl snakepit_core::Adapter for Concurrent {
    fn launch(&self) -> snakepit_core::Launch {
        let workers = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers");
        snakepit_core::Launch::new(python())
            .arg("-c")
            .arg(CONCURRENT)
            .env("PYTHONPATH", workers)
            .env("PYTHONDONTWRITEBYTECODE", "1")
    }
}

/// `PoolConfig::max_concurrency_per_worker`: "Upper bound on the calls one
/// worker runs at once, whatever it declares." Under a bound of 1, a worker
/// that declares 4 (and `pipeline`) runs one call at a time, calls written
/// ahead to it (`pipeline_depth`) or not: pipelining is "for a worker that
/// runs one call at a time", and this one would run what is written ahead
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_of_one_call_per_worker_holds_with_pipelining() {
    assert_eq!(most_at_once_under_a_bound_of_one(16).await, 1);
}

/// The same with nothing written ahead (`pipeline_depth` 0): the bound
/// holds (and the worker counts right).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_of_one_call_per_worker_holds_without_pipelining() {
    assert_eq!(most_at_once_under_a_bound_of_one(0).await, 1);
}

/// The most calls a `Concurrent` worker ran at once, under a bound of one
/// call per worker, given four calls of half a second at once.
async fn most_at_once_under_a_bound_of_one(pipeline_depth: u32) -> u64 {
    let pool = builder(Concurrent)
        .size(1)
        .configure(|c| {
            c.max_concurrency_per_worker = 1;
            c.pipeline_depth = pipeline_depth;
            // Every call counts as short: calls are written ahead if at all.
            c.pipeline_max_call = Duration::from_secs(60);
        })
        .start()
        .await
        .unwrap();
    assert_eq!(pool.workers()[0].capacity, 1);
    pool.execute("work", json!({"ms": 0})).await.unwrap();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute("work", json!({"ms": 500})).await })
        })
        .collect();
    for c in calls {
        c.await.unwrap().unwrap();
    }
    let most = pool.execute("most", json!({})).await.unwrap();
    pool.shutdown().await.unwrap();
    most["most"].as_u64().unwrap()
}

/// `Error::StoppedByShutdown`: "The call was running when the pool shut
/// down, and the shutdown's grace period ended before it did: the worker
/// was stopped with the call in it. It ran (perhaps in part)". A call
/// written ahead (`pipeline_depth`) behind a long one, which the worker
/// never started, did not run: whatever it fails with at shutdown, it is
/// not a call that ran (`never_ran()`, "retrying later may succeed").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_written_ahead_and_never_started_is_not_reported_as_run_at_shutdown() {
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| {
            // Every call counts as short: calls are written ahead.
            c.pipeline_max_call = Duration::from_secs(60);
        })
        .start()
        .await
        .unwrap();
    pool.execute("echo", json!({})).await.unwrap();
    let running = a_running_sleep(&pool, 5000, Duration::from_secs(60)).await;
    let marker = temp_dir("written-ahead").join("marker");
    let behind = {
        let pool = pool.clone();
        let marker = marker.display().to_string();
        tokio::spawn(async move {
            pool.execute("sleep", json!({"ms": 0, "marker": marker}))
                .await
        })
    };
    assert!(
        eventually(20, || {
            let s = pool.stats();
            s.in_flight == 2 && s.queued == 0
        })
        .await,
        "written ahead, not queued: {:?}",
        pool.stats()
    );
    pool.shutdown().await.unwrap();
    let err = running.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), "stopped_by_shutdown", "{err}");
    let err = behind.await.unwrap().unwrap_err();
    assert!(!marker.exists(), "the call written ahead never started");
    assert!(
        err.never_ran(),
        "it never started, yet it fails as a call that ran: {err}"
    );
}
