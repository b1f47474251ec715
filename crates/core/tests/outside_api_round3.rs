//! A hostile outside review of `snakepit-core`'s public API, third round:
//! what earlier rounds (api_promises.rs, redteam_*.rs, outside_*.rs,
//! audit_*.rs) had not tried. Code the user hands the pool (an event
//! listener, a host function, a session hook) turned back on the pool
//! itself: reading it on every event, dropping its last handle from inside
//! the pool's own task, shutting it down from inside a call, a session
//! store that hangs while the pool shuts down; and a caller cut off after
//! each number of polls, at every await point a session call has; calls
//! and streams made on one runtime and awaited on another after the first
//! ended; `cleanup_retry_interval` at `Duration::MAX`; the watchdog after
//! `shutdown()`. Against real Python workers; every test ends with no
//! process of its run left.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use snakepit_core::events::{Event, EventKind};
use snakepit_core::{
    CallOptions, CallStream, Error, Pool, SessionHook, Stats, StreamItem, WeakPool,
};

use snakepit_tests::count_panics;

/// The tests of this file one at a time, so that the panics one counts
/// are its own.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Fails the test if `f` has not finished within `secs` seconds.
async fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not done within {secs} s"),
    }
}

/// Every call submitted is counted once: done, failed or cancelled, or
/// still running (none, once the pool is quiet).
fn adds_up(s: &Stats) -> bool {
    s.requests == s.completed + s.errors + s.cancelled
}

/// No process of the run is left, within 30 s.
async fn nothing_left(run_id: &str) {
    assert!(
        eventually(30, || processes_of_run(run_id).is_empty()).await,
        "processes of the run are left: {:?}",
        processes_of_run(run_id)
    );
}

/// A listener that reads the pool through a weak handle on every event (as
/// a metrics exporter would): the pool must never hold a lock of its own
/// while it tells a listener, or the listener's read would deadlock it.
/// Each read checks what `Stats` promises at any moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_reads_the_pool_on_every_event_never_hangs_it() {
    let _serial = SERIAL.lock().await;
    let panics = count_panics();
    let before = panics.load(Ordering::SeqCst);
    let weak: Arc<OnceLock<WeakPool>> = Arc::new(OnceLock::new());
    let reads = Arc::new(AtomicUsize::new(0));
    let broken = Arc::new(Mutex::new(Vec::<String>::new()));
    let listener = {
        let (weak, reads, broken) = (weak.clone(), reads.clone(), broken.clone());
        move |event: &Event<'_>| {
            let Some(pool) = weak.get().and_then(WeakPool::upgrade) else {
                return;
            };
            let s = pool.stats();
            let _ = (pool.workers(), pool.worker_pids(), pool.start_failure());
            reads.fetch_add(1, Ordering::Relaxed);
            if s.completed + s.errors + s.cancelled > s.requests
                || s.busy + s.available != s.workers
            {
                broken.lock().unwrap().push(format!("{s:?}"));
            }
            match event.kind {
                EventKind::CallEnded {
                    session: Some(session),
                    ..
                } => pool.end_session(session),
                EventKind::WorkerExited { .. } => pool.retry_starts(),
                _ => {}
            }
        }
    };
    let pool = builder(TestWorker::new())
        .size(2)
        .name("round3-listener")
        .configure(|c| {
            c.health_check_interval = Duration::from_millis(50);
            c.recycle_after_calls = 6;
        })
        .on_event(listener)
        .start()
        .await
        .unwrap();
    let _ = weak.set(pool.downgrade());
    let run_id = pool.run_id().to_owned();
    within(120, "the workload", async {
        for round in 0..6u64 {
            let mut calls = Vec::new();
            for i in 0..8u64 {
                let pool = pool.clone();
                calls.push(tokio::spawn(async move {
                    match i {
                        0 => pool.execute("echo", json!({"i": i})).await.map(|_| ()),
                        1 => pool
                            .execute_in_session(&format!("s{round}"), "echo", json!({}))
                            .await
                            .map(|_| ()),
                        2 => pool.execute("fail", json!({})).await.map(|_| ()),
                        3 => {
                            let opts = CallOptions::new().timeout(Duration::from_millis(100));
                            pool.execute_with("sleep", json!({"ms": 300}), opts)
                                .await
                                .map(|_| ())
                        }
                        4 => {
                            // Dropped while it runs: counted cancelled.
                            let call = pool.execute("sleep", json!({"ms": 300}));
                            let _ = tokio::time::timeout(Duration::from_millis(50), call).await;
                            Ok(())
                        }
                        5 if round % 3 == 0 => {
                            pool.execute("exit", json!({"code": 5})).await.map(|_| ())
                        }
                        _ => {
                            let mut stream = pool
                                .execute_stream("stream", json!({"n": 5}), CallOptions::new())
                                .await?;
                            while let Some(item) = std::future::poll_fn(|cx| {
                                futures_core::Stream::poll_next(Pin::new(&mut stream), cx)
                            })
                            .await
                            {
                                item?;
                            }
                            Ok(())
                        }
                    }
                }));
            }
            for call in calls {
                let _ = call.await.unwrap();
            }
        }
    })
    .await;
    assert!(
        eventually(30, || {
            let s = pool.stats();
            adds_up(&s) && s.in_flight == 0 && s.queued == 0
        })
        .await,
        "the counters add up once the pool is quiet: {:?}",
        pool.stats()
    );
    within(30, "shutdown", pool.shutdown()).await.unwrap();
    assert!(
        reads.load(Ordering::Relaxed) > 48,
        "the listener read the pool"
    );
    assert!(
        broken.lock().unwrap().is_empty(),
        "{:?}",
        broken.lock().unwrap()
    );
    nothing_left(&run_id).await;
    assert_eq!(panics.load(Ordering::SeqCst), before, "a panic in the pool");
}

/// The last `Pool` handle held by a listener, which lets it go when told a
/// worker exited: the pool ends inside its own supervisor's task, in the
/// middle of reporting. It must end as a dropped pool does (every worker
/// killed, no replacement started, nothing left) and not panic or hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_handle_dropped_by_a_listener_inside_the_pools_own_task_ends_the_run() {
    let _serial = SERIAL.lock().await;
    let panics = count_panics();
    let before = panics.load(Ordering::SeqCst);
    let held: Arc<Mutex<Option<Pool>>> = Arc::new(Mutex::new(None));
    let dropped = Arc::new(AtomicBool::new(false));
    let listener = {
        let (held, dropped) = (held.clone(), dropped.clone());
        move |event: &Event<'_>| {
            if let EventKind::WorkerExited { .. } = event.kind {
                let last = held.lock().unwrap().take();
                if last.is_some() {
                    drop(last);
                    dropped.store(true, Ordering::SeqCst);
                }
            }
        }
    };
    let pool = builder(TestWorker::new())
        .size(2)
        .name("round3-last-handle")
        .on_event(listener)
        .start()
        .await
        .unwrap();
    // Lived past its first second: a replacement would start at once.
    pool.execute("sleep", json!({"ms": 1100})).await.unwrap();
    let run_id = pool.run_id().to_owned();
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 2);
    let weak = pool.downgrade();
    *held.lock().unwrap() = Some(pool);
    kill_9(pids[0]);
    assert!(
        eventually(30, || dropped.load(Ordering::SeqCst)).await,
        "the listener heard of the exit and let the pool go"
    );
    assert!(
        weak.upgrade().is_none(),
        "the listener held the last handle"
    );
    nothing_left(&run_id).await;
    // Nothing starts later either (a supervisor that went on would).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        processes_of_run(&run_id).is_empty(),
        "a worker started after the pool's end"
    );
    assert!(!alive(pids[1]), "the other worker was killed");
    assert_eq!(panics.load(Ordering::SeqCst), before, "a panic in the pool");
}

/// A host function that shuts its own pool down (through a weak handle)
/// while the call that asked for it waits for its answer: the shutdown
/// waits for that call as for any other, within the grace period, then
/// stops it; the call is `StoppedByShutdown`, not a crash, the shutdown
/// returns, and nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_function_that_shuts_its_own_pool_down() {
    let _serial = SERIAL.lock().await;
    let weak: Arc<OnceLock<WeakPool>> = Arc::new(OnceLock::new());
    let returned = Arc::new(AtomicBool::new(false));
    let pool = {
        let (weak, returned) = (weak.clone(), returned.clone());
        builder(TestWorker::new())
            .size(1)
            .name("round3-host-shutdown")
            .host_function("stop", move |_call| {
                let (weak, returned) = (weak.clone(), returned.clone());
                async move {
                    let pool = weak.get().and_then(WeakPool::upgrade);
                    if let Some(pool) = pool {
                        let _ = pool.shutdown().await;
                        returned.store(true, Ordering::SeqCst);
                    }
                    Ok(json!("stopped"))
                }
            })
            .start()
            .await
            .unwrap()
    };
    let _ = weak.set(pool.downgrade());
    let run_id = pool.run_id().to_owned();
    let e = within(
        60,
        "the call that shut its pool down",
        pool.execute("host", json!({"function": "stop"})),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, Error::StoppedByShutdown { .. }),
        "the call was running at the grace period's end: {e:?}"
    );
    assert!(!e.is_crash() && !e.never_ran(), "{e:?}");
    assert!(
        eventually(30, || returned.load(Ordering::SeqCst)).await,
        "the shutdown inside the host function returned"
    );
    let e = pool.execute("echo", json!({})).await.unwrap_err();
    assert!(matches!(e, Error::ShutDown), "{e:?}");
    let s = pool.stats();
    assert_eq!(
        (s.requests, s.errors, s.crashes, s.in_flight),
        (2, 2, 0, 0),
        "{s:?}"
    );
    nothing_left(&run_id).await;
}

/// A session store that never answers: its `touch` waits until it is
/// opened, counting the touches that began.
#[derive(Clone)]
struct HungStore(Arc<Hung>);

struct Hung {
    touched: AtomicUsize,
    open: tokio::sync::watch::Sender<bool>,
}

impl std::ops::Deref for HungStore {
    type Target = Hung;

    fn deref(&self) -> &Hung {
        &self.0
    }
}

impl SessionHook for HungStore {
    fn touch(&self, _session_id: &str) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        self.touched.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.subscribe();
        Box::pin(async move {
            let _ = open.wait_for(|o| *o).await;
            Ok(())
        })
    }
}

/// `shutdown()` "stops admitting calls" and fails the calls waiting for a
/// worker at once (api_promises.rs, outside_extremes.rs
/// `a_call_queued_for_a_hundred_years_ends_at_shutdown`). A session call
/// still in its session store's `touch` when the pool shuts down has not
/// been routed either: it must end at the shutdown with `ShutDown` (it
/// never ran), not wait for a store that hangs until its deadline, which
/// here is a hundred years away. Once the store answers, a call that
/// waited for it is refused all the same and no worker sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_call_whose_store_hangs_ends_at_shutdown_and_never_runs() {
    let _serial = SERIAL.lock().await;
    let store = HungStore(Arc::new(Hung {
        touched: AtomicUsize::new(0),
        open: tokio::sync::watch::channel(false).0,
    }));
    let pool = builder(TestWorker::new())
        .size(1)
        .name("round3-hung-store")
        .session_hook(store.clone())
        .start()
        .await
        .unwrap();
    let run_id = pool.run_id().to_owned();
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let opts = CallOptions::new()
                    .session(format!("hung-{i}"))
                    .timeout(Duration::MAX);
                pool.execute_with("echo", json!({}), opts).await
            })
        })
        .collect();
    assert!(
        eventually(20, || store.touched.load(Ordering::SeqCst) == 3).await,
        "every call is in its touch"
    );
    within(30, "shutdown", pool.shutdown()).await.unwrap();
    for call in calls {
        let e = within(10, "a call in its touch at shutdown", call)
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, Error::ShutDown) && e.never_ran(), "{e:?}");
    }
    store.open.send_replace(true);
    let opts = CallOptions::new().session("late");
    let e = pool
        .execute_with("echo", json!({}), opts)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ShutDown), "{e:?}");
    assert_eq!(
        store.touched.load(Ordering::SeqCst),
        3,
        "no touch after shutdown"
    );
    let s = pool.stats();
    assert_eq!((s.requests, s.errors, s.completed), (4, 4, 0), "{s:?}");
    nothing_left(&run_id).await;
}

/// A store whose `touch` yields a few times before it answers: a session
/// call then has an await point in its touch as well as in the queue and
/// in its round trip.
#[derive(Clone)]
struct SlowStore(Arc<AtomicUsize>);

impl SessionHook for SlowStore {
    fn touch(&self, _session_id: &str) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            Ok(())
        })
    }
}

/// A future polled at most `polls` times, then dropped: `None` if it had
/// not finished by then.
struct CutAfter<F> {
    fut: F,
    polls: usize,
}

impl<F: Future + Unpin> Future for CutAfter<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.polls -= 1;
        match Pin::new(&mut self.fut).poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending if self.polls == 0 => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Reads the next item of `stream`.
async fn next(stream: &mut CallStream) -> Option<snakepit_core::Result<StreamItem>> {
    std::future::poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut *stream), cx)).await
}

/// A session call given up after 1, 2, 3, ... polls, until one finishes,
/// through a session store that yields: a one-shot call, and a stream read
/// to its end, each behind a call that holds the one worker (so that it
/// waits in the queue) and, with the worker free, straight to the worker.
/// Whatever await point it is cut at (the store's touch, the queue, the
/// round trip, a chunk), it is counted once (cancelled), it leaves no unit,
/// no queue entry and no call in flight, and the worker's next call gets
/// its own reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_call_cut_off_at_every_await_point_is_counted_once_and_leaves_nothing() {
    let _serial = SERIAL.lock().await;
    let store = SlowStore(Arc::new(AtomicUsize::new(0)));
    let pool = builder(TestWorker::new())
        .size(1)
        .name("round3-cut")
        .session_hook(store.clone())
        .start()
        .await
        .unwrap();
    let run_id = pool.run_id().to_owned();
    let mut cut = 0u64;
    for (stream, busy) in [(false, true), (false, false), (true, true), (true, false)] {
        let mut polls = 1;
        let mut cut_here = 0;
        loop {
            let holder = if busy {
                Some(a_running_sleep(&pool, 150, Duration::from_secs(30)).await)
            } else {
                None
            };
            let opts = CallOptions::new().session("cut");
            let call: Pin<Box<dyn Future<Output = snakepit_core::Result<Value>> + Send + '_>> =
                if stream {
                    let pool = &pool;
                    Box::pin(async move {
                        let mut s = pool.execute_stream("stream", json!({"n": 3}), opts).await?;
                        let mut chunks = 0;
                        loop {
                            match next(&mut s).await {
                                Some(Ok(StreamItem::Chunk(c))) => {
                                    assert_eq!(c["i"], chunks, "chunks in order");
                                    chunks += 1;
                                }
                                Some(Ok(StreamItem::Done(v))) => {
                                    assert_eq!(chunks, 3, "every chunk before the result");
                                    return Ok(json!({"token": v["done"]}));
                                }
                                Some(Ok(other)) => panic!("{other:?}"),
                                Some(Err(e)) => return Err(e),
                                None => panic!("the stream ended without its result"),
                            }
                        }
                    })
                } else {
                    Box::pin(pool.execute_with("sleep", json!({"ms": 20, "token": 3}), opts))
                };
            let outcome = within(30, "a cut call", CutAfter { fut: call, polls }).await;
            if let Some(holder) = holder {
                within(30, "the holder", holder).await.unwrap().unwrap();
            }
            let finished = outcome.is_some();
            match outcome {
                Some(r) => assert_eq!(r.unwrap()["token"], 3, "its own reply"),
                None => cut_here += 1,
            }
            assert!(
                eventually(20, || {
                    let s = pool.stats();
                    adds_up(&s) && s.in_flight == 0 && s.queued == 0 && s.available == 1
                })
                .await,
                "after {polls} polls (stream: {stream}, busy: {busy}): {:?}",
                pool.stats()
            );
            let token = format!("after-{stream}-{busy}-{polls}");
            let r = within(
                30,
                "the next call",
                pool.execute("sleep", json!({"ms": 0, "token": token})),
            )
            .await
            .unwrap();
            assert_eq!(r["token"], token, "the next call gets its own reply");
            if finished {
                break;
            }
            polls += 1;
            assert!(polls < 500, "the call never finished");
        }
        assert!(
            cut_here >= 2,
            "cut at several points (stream: {stream}, busy: {busy}): {cut_here}"
        );
        cut += cut_here;
    }
    let s = pool.stats();
    assert_eq!(s.cancelled, cut, "{s:?}");
    assert_eq!(s.errors, 0, "{s:?}");
    within(30, "shutdown", pool.shutdown()).await.unwrap();
    nothing_left(&run_id).await;
}

/// `retire_worker.py` (see that file), logging to `log`: it keeps running
/// at the end of its stdin and exits on SIGTERM, as a worker does whose
/// non-daemon thread keeps its interpreter alive.
struct DiesOnlyOnSigterm {
    log: std::path::PathBuf,
}

impl snakepit_core::Adapter for DiesOnlyOnSigterm {
    fn launch(&self) -> snakepit_core::Launch {
        snakepit_core::Launch::new(python())
            .arg(root().join("crates/core/tests/workers/retire_worker.py"))
            .arg(&self.log)
            .arg("ignore")
            .arg("exit")
    }
}

/// `cleanup_retry_interval` is the "pause between attempts to confirm a
/// worker's process group is gone" after shutdown's SIGTERM; at
/// `Duration::MAX` (a hundred years) the pool must still see a worker end
/// when it ends, not at the next attempt: workers that ignore the end of
/// their stdin and die on SIGTERM at once must not hold `shutdown()` for
/// the whole pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_returns_once_workers_die_of_sigterm_whatever_the_cleanup_interval() {
    let _serial = SERIAL.lock().await;
    let log = temp_dir("round3-cleanup").join("log");
    let pool = builder(DiesOnlyOnSigterm { log: log.clone() })
        .size(2)
        .name("round3-cleanup")
        .configure(|c| {
            c.shutdown_grace_period = Duration::from_millis(300);
            c.cleanup_retry_interval = Duration::MAX;
            c.cleanup_max_retries = 3;
        })
        .start()
        .await
        .unwrap();
    let run_id = pool.run_id().to_owned();
    let r = pool.execute("ping", json!({})).await.unwrap();
    assert_eq!(r["status"], "ok");
    within(60, "shutdown", pool.shutdown()).await.unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.matches("term ").count(),
        2,
        "each worker got SIGTERM: {text}"
    );
    nothing_left(&run_id).await;
}

/// A Python worker whose `drip` streams `n` chunks `ms` apart.
struct Drip;

const DRIP: &str = r#"
import time
import snakepit_bridge

worker = snakepit_bridge.Worker()

@worker.command("drip")
def drip(args, ctx):
    for i in range(args["n"]):
        ctx.emit({"i": i})
        time.sleep(args["ms"] / 1000.0)
    return {"done": args["n"]}

worker.run()
"#;

impl snakepit_core::Adapter for Drip {
    fn launch(&self) -> snakepit_core::Launch {
        inline_launch(Lang::Python, DRIP)
    }
}

/// A `CallStream` is `Send` and outlives the call that made it: a
/// synchronous wrapper that runs each step on a runtime of its own (the
/// runtime it made the stream on has ended when the next step reads it)
/// reads it on another runtime, or on a plain thread through another
/// runtime's handle. lib.rs: a pool "can be called from that runtime, from
/// any other". The stream must go on delivering its chunks and its result
/// there, never panic because the runtime it was made on has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_read_on_after_the_runtime_it_was_made_on_ended_delivers_the_rest() {
    let _serial = SERIAL.lock().await;
    let panics = count_panics();
    let before = panics.load(Ordering::SeqCst);
    let pool = builder(Drip)
        .size(1)
        .name("round3-stream-runtimes")
        .start()
        .await
        .unwrap();
    let run_id = pool.run_id().to_owned();
    let reader = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            let first = current_thread_runtime();
            let mut stream = first.block_on(async {
                let opts = CallOptions::new().timeout(Duration::from_secs(60));
                let mut s = pool
                    .execute_stream("drip", json!({"n": 6, "ms": 100}), opts)
                    .await
                    .unwrap();
                let item = next(&mut s).await;
                assert!(matches!(item, Some(Ok(StreamItem::Chunk(_)))), "{item:?}");
                s
            });
            drop(first);
            let second = current_thread_runtime();
            second.block_on(async {
                let mut chunks = 1;
                loop {
                    match next(&mut stream).await {
                        Some(Ok(StreamItem::Chunk(c))) => {
                            assert_eq!(c["i"], chunks, "chunks in order");
                            chunks += 1;
                        }
                        Some(Ok(StreamItem::Done(v))) => return (chunks, v),
                        other => panic!("{other:?}"),
                    }
                }
            })
        })
    };
    let (chunks, done) = within(
        60,
        "the reader thread",
        tokio::task::spawn_blocking(move || reader.join()),
    )
    .await
    .unwrap()
    .unwrap_or_else(|_| panic!("the reader panicked"));
    assert_eq!((chunks, done["done"].as_u64()), (6, Some(6)));
    let s = pool.stats();
    assert_eq!((s.requests, s.completed, s.in_flight), (1, 1, 0), "{s:?}");
    within(30, "shutdown", pool.shutdown()).await.unwrap();
    nothing_left(&run_id).await;
    assert_eq!(panics.load(Ordering::SeqCst), before, "a panic");
}

/// A call with no time left when it is submitted (a zero timeout) is
/// refused with `CallTimeout` and never written (ARCHITECTURE.md, Timeouts
/// and cancellation). A session call of that kind must not have its
/// session made or extended in the store either (`SessionHook::touch`
/// "creates the session or extends its lifetime", in a store other hosts
/// may share): the pool already knows it will not run. A call with time
/// left still touches its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_call_with_no_time_left_does_not_touch_its_session() {
    let _serial = SERIAL.lock().await;
    let store = SlowStore(Arc::new(AtomicUsize::new(0)));
    let pool = builder(TestWorker::new())
        .size(1)
        .name("round3-zero-touch")
        .session_hook(store.clone())
        .start()
        .await
        .unwrap();
    let run_id = pool.run_id().to_owned();
    for timeout in [Duration::ZERO, Duration::from_nanos(1)] {
        let opts = CallOptions::new().session("zero").timeout(timeout);
        let e = pool
            .execute_with("echo", json!({}), opts)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::CallTimeout { .. }), "{e:?}");
    }
    assert_eq!(
        store.0.load(Ordering::SeqCst),
        0,
        "a call that cannot run touched its session"
    );
    let r = pool
        .execute_in_session("zero", "echo", json!({}))
        .await
        .unwrap();
    assert_eq!(r["served"], 1, "neither call reached the worker");
    assert_eq!(store.0.load(Ordering::SeqCst), 1);
    let s = pool.stats();
    assert_eq!(
        (s.requests, s.call_timeouts, s.completed),
        (3, 2, 1),
        "{s:?}"
    );
    within(30, "shutdown", pool.shutdown()).await.unwrap();
    nothing_left(&run_id).await;
}

/// Host functions that misbehave: one panics (`HostPanic`, the pool's own
/// answer), one returns a value over `max_frame_size`, one a value nested
/// deeper than the codecs write (both `EncodeError`: the host cannot send
/// them). Each fails only the host call, so the handler's call fails with
/// the worker's error naming it; the worker is not blamed: the same
/// process serves the next call, nothing counts as a crash or a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_functions_that_panic_or_return_what_cannot_be_sent_fail_only_their_call() {
    let _serial = SERIAL.lock().await;
    let pool = builder(TestWorker::new())
        .size(1)
        .name("round3-host-faults")
        .configure(|c| c.max_frame_size = 1 << 20)
        .host_function("panics", |_| async {
            if std::hint::black_box(true) {
                panic!("a host function panicked on purpose");
            }
            Ok(json!(null))
        })
        .host_function("huge", |_| async { Ok(json!("x".repeat(2 << 20))) })
        .host_function("deep", |_| async {
            let mut v = json!(1);
            for _ in 0..1000 {
                v = json!([v]);
            }
            Ok(v)
        })
        .host_function("fine", |call| async move { Ok(call.args) })
        .start()
        .await
        .unwrap();
    let run_id = pool.run_id().to_owned();
    let pid = pool.worker_pids()[0];
    for (function, says) in [
        ("panics", "HostPanic"),
        ("huge", "EncodeError"),
        ("deep", "EncodeError"),
    ] {
        let e = within(
            30,
            function,
            pool.execute("host", json!({"function": function})),
        )
        .await
        .unwrap_err();
        let remote = e.remote().unwrap_or_else(|| panic!("{function}: {e:?}"));
        assert!(remote.message.contains(says), "{function}: {remote:?}");
        let r = within(
            30,
            "the next host call",
            pool.execute(
                "host",
                json!({"function": "fine", "args": {"after": function}}),
            ),
        )
        .await
        .unwrap();
        assert_eq!(r["after"], function, "{r}");
        assert_eq!(pool.worker_pids(), vec![pid], "the worker was not replaced");
    }
    let s = pool.stats();
    assert_eq!(
        (s.requests, s.completed, s.errors, s.crashes, s.restarts),
        (6, 3, 3, 0, 0),
        "{s:?}"
    );
    within(30, "shutdown", pool.shutdown()).await.unwrap();
    nothing_left(&run_id).await;
}

/// The parent pid of `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The pools' watchdogs (docs/reliability.md, "No orphan, on any path")
/// that this process started and that still run.
fn watchdogs() -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| parent_of(p) == Some(me) && alive(p))
        .filter(|&p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("trap '' INT TERM HUP"))
        })
        .collect()
}

/// `shutdown()` ends the pool: its workers are stopped and reaped, its run
/// record removed. Its watchdog (a `sh` process per pool, there to kill the
/// workers' groups if the host dies) has nothing left to guard then, and
/// must go too, although the application keeps the `Pool` handle (in its
/// state, beside a stream it still reads, or simply until the end of the
/// scope): a service that starts and shuts down pools as it runs must not
/// gather one process per pool it ever had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_pools_watchdog_while_handles_remain() {
    let _serial = SERIAL.lock().await;
    let before = watchdogs();
    let pool = builder(TestWorker::new())
        .size(1)
        .name("round3-watchdog")
        .start()
        .await
        .unwrap();
    let mine: Vec<u32> = watchdogs()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert_eq!(mine.len(), 1, "one watchdog for the pool: {mine:?}");
    pool.execute("echo", json!({})).await.unwrap();
    let kept = pool.clone();
    within(30, "shutdown", pool.shutdown()).await.unwrap();
    assert!(
        eventually(30, || !alive(mine[0])).await,
        "the watchdog {} outlived the shutdown of its pool",
        mine[0]
    );
    let e = kept.execute("echo", json!({})).await.unwrap_err();
    assert!(matches!(e, Error::ShutDown), "{e:?}");
    drop(kept);
}

/// The one-shot counterpart of
/// `a_stream_read_on_after_the_runtime_it_was_made_on_ended_delivers_the_rest`:
/// a call polled on one runtime until it waits in the queue (the one worker
/// busy, nothing written ahead), then that runtime ends and the call is
/// awaited to its end on another. It must get its result there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_call_awaited_on_after_the_runtime_it_waited_on_ended_gets_its_result() {
    let _serial = SERIAL.lock().await;
    let pool = builder(TestWorker::new())
        .size(1)
        .name("round3-call-runtimes")
        .configure(|c| c.pipeline_depth = 0)
        .start()
        .await
        .unwrap();
    let run_id = pool.run_id().to_owned();
    let holder = a_running_sleep(&pool, 1000, Duration::from_secs(30)).await;
    let caller = {
        let pool = pool.clone();
        std::thread::spawn(move || {
            let mut call = Box::pin(pool.execute("sleep", json!({"ms": 0, "token": "moved"})));
            let first = current_thread_runtime();
            let early = first.block_on(async {
                tokio::time::timeout(Duration::from_millis(200), &mut call).await
            });
            assert!(early.is_err(), "the call waited in the queue: {early:?}");
            drop(first);
            current_thread_runtime().block_on(call)
        })
    };
    let r = within(
        60,
        "the caller thread",
        tokio::task::spawn_blocking(move || caller.join()),
    )
    .await
    .unwrap()
    .unwrap_or_else(|_| panic!("the caller panicked"))
    .unwrap();
    assert_eq!(r["token"], "moved");
    within(30, "the holder", holder).await.unwrap().unwrap();
    within(30, "shutdown", pool.shutdown()).await.unwrap();
    nothing_left(&run_id).await;
}
