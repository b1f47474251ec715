//! A review of the pool side (`pool.rs`, `pool/*.rs`, `config.rs`) for
//! logic bugs, each suspicion checked against real worker processes:
//! exactly-once accounting in `Stats`, slot capacity and its units,
//! strict session affinity on a worker that dies or drains, recycling,
//! `retry_starts`, and `shutdown()` racing with starts and recycling.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use snakepit_core::events::EventKind;
use snakepit_core::{
    Adapter, Affinity, CallOptions, CallStream, Error, Launch, Pool, StreamItem, WeakPool,
};

/// The test worker behind `review_pool_slow.py`: it starts slowly (30 s)
/// while `flag` exists.
struct SlowStart {
    flag: std::path::PathBuf,
}

/// The same, with more environment for the test worker (its own
/// misbehaviours: `TEST_DIE_SOON_IF_EXISTS`, ...).
struct SlowStartWith {
    flag: std::path::PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Adapter for SlowStartWith {
    fn launch(&self) -> Launch {
        let mut l = SlowStart {
            flag: self.flag.clone(),
        }
        .launch();
        for (k, v) in &self.env {
            l = l.env(*k, v);
        }
        l
    }
}

impl Adapter for SlowStart {
    fn launch(&self) -> Launch {
        Launch::new(python())
            .arg(root().join("crates/core/tests/workers/review_pool_slow.py"))
            .env("PYTHONPATH", root().join("bridges/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("REVIEW_SLOW_START_IF_EXISTS", &self.flag)
    }
}

/// The next item of `stream`.
async fn next_item(stream: &mut CallStream) -> Option<snakepit_core::Result<StreamItem>> {
    std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut *stream), cx))
        .await
}

/// `Stats::in_flight`: "Calls in flight on workers (including timed-out
/// calls whose late reply is still awaited)"; `Stats` is "a snapshot of a
/// pool, every figure consistent with what callers saw". A worker recycled
/// by age while it runs a call keeps running that call (reliability.md:
/// "the old worker ... finishes the ones it has"): the call is still in
/// flight on a worker, and nothing else accounts for it (submitted 1,
/// ended 0, queued 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_a_recycled_worker_is_still_in_flight_in_stats() {
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| {
            c.worker_ttl = Duration::from_millis(800);
            c.health_check_interval = Duration::ZERO;
        })
        .start()
        .await
        .unwrap();
    let old = pool.worker_pids()[0];
    let call = a_running_sleep(&pool, 6_000, Duration::from_secs(60)).await;
    assert!(
        eventually(20, || pool.stats().recycled >= 1).await,
        "the worker was recycled by age: {:?}",
        pool.stats()
    );
    assert!(!call.is_finished(), "the call still runs on the old worker");
    assert!(alive(old));
    let s = pool.stats();
    let ended = s.completed + s.errors + s.cancelled;
    assert_eq!(
        (s.requests - ended, s.in_flight, s.queued),
        (1, 1, 0),
        "one call submitted and not ended: in flight on its (recycled) worker: {s:?}"
    );
    let r = call.await.unwrap().unwrap();
    assert_eq!(r["pid"].as_u64().unwrap() as u32, old);
    pool.shutdown().await.unwrap();
}

/// Exactly-once accounting under a mix of every outcome while workers are
/// recycled by calls and killed: `requests` equals `completed + errors +
/// cancelled`, each of those equals what the callers saw, and once all is
/// over nothing is left in flight or queued and every slot has its worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_every_call_once_through_recycling_kills_and_cancels() {
    let pool = builder(TestWorker::new())
        .size(2)
        .configure(|c| {
            c.recycle_after_calls = 15;
            c.queue_timeout = Duration::from_secs(30);
            c.health_check_interval = Duration::from_millis(50);
            c.health_check_timeout = Duration::from_secs(10);
        })
        .start()
        .await
        .unwrap();
    let ok = Arc::new(AtomicU64::new(0));
    let err = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let pool = pool.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 8 {
                tokio::time::sleep(Duration::from_millis(120)).await;
                if let Some(pid) = pool.worker_pids().first() {
                    kill_9(*pid);
                    n += 1;
                }
            }
        })
    };
    let mut tasks = Vec::new();
    for c in 0..12u64 {
        let pool = pool.clone();
        let (ok, err, dropped) = (ok.clone(), err.clone(), dropped.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..25u64 {
                let session = format!("s{}", (c + i) % 5);
                let kind = (c * 7 + i) % 7;
                let outcome = match kind {
                    // A plain call.
                    0 | 1 => Some(pool.execute("echo", json!({"i": i})).await.map(|_| ())),
                    // A remote error.
                    2 => Some(pool.execute("fail", json!({})).await.map(|_| ())),
                    // A deadline that passes.
                    3 => Some(
                        pool.execute_with(
                            "sleep",
                            json!({"ms": 300}),
                            CallOptions::new().timeout(Duration::from_millis(50)),
                        )
                        .await
                        .map(|_| ()),
                    ),
                    // A future dropped before its end (or not: then it ended).
                    4 => {
                        let fut = pool.execute("sleep", json!({"ms": 200}));
                        match tokio::time::timeout(Duration::from_millis(20), fut).await {
                            Ok(r) => Some(r.map(|_| ())),
                            Err(_) => None,
                        }
                    }
                    // A session call, strict or not.
                    5 => Some(
                        pool.execute_with(
                            "echo",
                            json!({}),
                            CallOptions::new()
                                .session(session)
                                .affinity(if i % 2 == 0 {
                                    Affinity::Strict
                                } else {
                                    Affinity::Prefer
                                })
                                .timeout(Duration::from_secs(30)),
                        )
                        .await
                        .map(|_| ()),
                    ),
                    // A stream read to its end, or dropped after one chunk.
                    _ => match pool
                        .execute_stream("stream", json!({"n": 4}), CallOptions::new())
                        .await
                    {
                        Err(e) => Some(Err(e)),
                        Ok(mut s) if i % 2 == 0 => match next_item(&mut s).await {
                            // Dropped with more to come: cancelled.
                            Some(Ok(StreamItem::Chunk(_))) => None,
                            Some(Ok(_)) => Some(Ok(())),
                            Some(Err(e)) => Some(Err(e)),
                            None => panic!("a stream ended without an item"),
                        },
                        Ok(mut s) => {
                            let mut last = None;
                            while let Some(item) = next_item(&mut s).await {
                                last = Some(item.map(|_| ()));
                            }
                            last
                        }
                    },
                };
                match outcome {
                    Some(Ok(())) => ok.fetch_add(1, Ordering::Relaxed),
                    Some(Err(_)) => err.fetch_add(1, Ordering::Relaxed),
                    None => dropped.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    killer.await.unwrap();
    // A stream dropped after its first chunk: whether it had ended by then
    // is the stream's business; a stream that yielded its last item and
    // was dropped counts as an end, so compare the totals.
    let (ok, err, dropped) = (
        ok.load(Ordering::Relaxed),
        err.load(Ordering::Relaxed),
        dropped.load(Ordering::Relaxed),
    );
    assert_eq!(ok + err + dropped, 12 * 25);
    let s = pool.stats();
    assert_eq!(s.requests, 12 * 25, "{s:?}");
    assert_eq!(s.completed + s.errors + s.cancelled, s.requests, "{s:?}");
    assert_eq!(s.completed, ok, "{s:?}");
    assert_eq!(s.errors, err, "{s:?}");
    assert_eq!(s.cancelled, dropped, "{s:?}");
    // (Whether a kill lands on a call is chance: crashes are not required.)
    assert!(s.recycled > 0 && s.call_timeouts > 0, "{s:?}");
    assert!(
        eventually(30, || {
            let s = pool.stats();
            s.in_flight == 0 && s.queued == 0 && s.workers == 2 && s.available == 2
        })
        .await,
        "nothing left in flight or queued: {:?}",
        pool.stats()
    );
    // Every unit came back: both workers take calls at once. (A worker
    // whose recent calls were short may have the second call written
    // ahead behind the first, or be answering a health check as they
    // come: the pair is tried again, and a lost unit fails every try.)
    let mut pairs = Vec::new();
    for _ in 0..5 {
        let (a, b) = tokio::join!(
            pool.execute("sleep", json!({"ms": 300})),
            pool.execute("sleep", json!({"ms": 300}))
        );
        let pids = (a.unwrap()["pid"].clone(), b.unwrap()["pid"].clone());
        pairs.push(pids.clone());
        if pids.0 != pids.1 {
            break;
        }
    }
    assert!(
        pairs.iter().any(|(a, b)| a != b),
        "two calls at once always went to one worker: {pairs:?}"
    );
    pool.shutdown().await.unwrap();
}

/// `Affinity::Strict`: "Wait for it: in the queue, subject to the queue
/// timeout". A strict call waiting in the queue for its session's worker,
/// which is then killed, is served by the worker that replaces it in the
/// slot (it neither waits for the dead one until the queue timeout nor
/// fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_call_waiting_for_a_killed_worker_is_served_by_its_replacement() {
    for depth in [0, 16] {
        let pool = builder(TestWorker::new())
            .size(2)
            .configure(|c| {
                c.pipeline_depth = depth;
                c.queue_timeout = Duration::from_secs(60);
            })
            .start()
            .await
            .unwrap();
        let home = pool
            .execute_in_session("s", "echo", json!({}))
            .await
            .unwrap()["pid"]
            .as_u64()
            .unwrap() as u32;
        // Its worker busy with a long call of the session...
        let marker = temp_dir("strict-kill").join("m");
        let long = {
            let pool = pool.clone();
            let marker = marker.display().to_string();
            tokio::spawn(async move {
                pool.execute_with(
                    "sleep",
                    json!({"ms": 20_000, "marker": marker}),
                    CallOptions::new().session("s").affinity(Affinity::Strict),
                )
                .await
            })
        };
        assert!(eventually(20, || marker.exists()).await);
        // ...and a strict call waiting for it.
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.execute_with(
                    "echo",
                    json!({"x": 1}),
                    CallOptions::new()
                        .session("s")
                        .affinity(Affinity::Strict)
                        .timeout(Duration::from_secs(60)),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished());
        let since = Instant::now();
        kill_9(home);
        assert!(matches!(long.await.unwrap(), Err(Error::WorkerCrashed(_))));
        let r = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("the strict call was served well before its queue timeout")
            .unwrap()
            .unwrap_or_else(|e| panic!("depth {depth}: {e:?}"));
        assert_eq!(r["echoed"]["x"], 1);
        assert_ne!(r["pid"].as_u64().unwrap() as u32, home);
        assert!(since.elapsed() < Duration::from_secs(30));
        let s = pool.stats();
        assert_eq!(
            (s.queued, s.requests - s.completed - s.errors),
            (0, 0),
            "{s:?}"
        );
        pool.shutdown().await.unwrap();
    }
}

/// lease.rs: "A draining worker is about to go: the session moves on". A
/// strict call of a session whose worker reached its call limit (and takes
/// no new call) goes to another worker at once rather than waiting for the
/// drained one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_call_of_a_drained_workers_session_goes_elsewhere() {
    let dir = temp_dir("strict-drain");
    let flag = dir.join("slow");
    let pool = builder(SlowStart { flag: flag.clone() })
        .size(2)
        .configure(|c| {
            // Every worker's limit is 3 (2.7 to 3.3, rounded).
            c.recycle_after_calls = 3;
            c.queue_timeout = Duration::from_secs(60);
            c.pipeline_depth = 0;
        })
        .start()
        .await
        .unwrap();
    // Replacements now take 30 s to start: the drained worker stays drained.
    std::fs::write(&flag, "").unwrap();
    let mut home = None;
    for _ in 0..3 {
        let r = pool
            .execute_in_session("s", "echo", json!({}))
            .await
            .unwrap();
        let pid = r["pid"].as_u64().unwrap() as u32;
        assert_eq!(
            *home.get_or_insert(pid),
            pid,
            "the session stays on its worker"
        );
    }
    let home = home.unwrap();
    let since = Instant::now();
    let r = pool
        .execute_with(
            "echo",
            json!({}),
            CallOptions::new()
                .session("s")
                .affinity(Affinity::Strict)
                .timeout(Duration::from_secs(20)),
        )
        .await
        .unwrap();
    assert_ne!(r["pid"].as_u64().unwrap() as u32, home);
    assert!(
        since.elapsed() < Duration::from_secs(10),
        "{:?}",
        since.elapsed()
    );
    pool.shutdown().await.unwrap();
    assert!(
        processes_of_run(pool.run_id()).is_empty(),
        "{:?}",
        processes_of_run(pool.run_id())
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// reliability.md: "A worker recycled by calls serves at most its limit
/// ... plus the calls already running on it when it reached the limit:
/// none for a worker that takes one call at a time", with pipelining on.
/// At the extreme, `recycle_after_calls = 1` with eight callers: every
/// worker answers exactly one call, and no call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_one_call_gives_each_worker_exactly_one() {
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| {
            c.recycle_after_calls = 1;
            c.queue_timeout = Duration::from_secs(120);
        })
        .start()
        .await
        .unwrap();
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.execute_with(
                    "echo",
                    json!({"i": i}),
                    CallOptions::new().timeout(Duration::from_secs(120)),
                )
                .await
            })
        })
        .collect();
    let mut pids = HashSet::new();
    for c in calls {
        let r = c.await.unwrap().unwrap();
        assert_eq!(r["served"], 1, "{r}");
        assert!(pids.insert(r["pid"].as_u64().unwrap()), "{r}");
    }
    let s = pool.stats();
    assert_eq!((s.completed, s.errors), (8, 0), "{s:?}");
    pool.shutdown().await.unwrap();
}

/// `Pool::retry_starts`: "Starts a worker at once in every slot that is
/// waiting to restart one: in its back-off after failed starts". A
/// listener told `WorkerRestarting { delay }` (the slot now waits `delay`)
/// that fixes the cause and asks to retry: the start is tried at once, not
/// after the back-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_starts_asked_as_the_back_off_begins_is_not_lost() {
    let dir = temp_dir("retry-race");
    let marker = dir.join("broken");
    let mut worker = TestWorker::new();
    worker
        .env
        .push(("TEST_FAIL_IF_EXISTS".into(), marker.display().to_string()));
    let me: Arc<OnceLock<WeakPool>> = Arc::default();
    let asked = Arc::new(AtomicBool::new(false));
    let pool = {
        let (me, asked, marker) = (me.clone(), asked.clone(), marker.clone());
        builder(worker)
            .size(1)
            .configure(|c| {
                c.restart_backoff = Duration::from_secs(60);
                c.restart_backoff_max = Duration::from_secs(120);
                c.breaker_threshold = 100;
                c.queue_timeout = Duration::from_secs(60);
            })
            .on_event(move |e| {
                if let EventKind::WorkerRestarting { delay, .. } = e.kind {
                    if !delay.is_zero() && !asked.swap(true, Ordering::SeqCst) {
                        // The cause is fixed; no need to wait the back-off.
                        let _ = std::fs::remove_file(&marker);
                        if let Some(pool) = me.get().and_then(WeakPool::upgrade) {
                            pool.retry_starts();
                        }
                    }
                }
            })
            .start()
            .await
            .unwrap()
    };
    me.set(pool.downgrade()).unwrap();
    // Lived over a second: replaced at once, and that start fails.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    std::fs::write(&marker, "").unwrap();
    kill_9(pool.worker_pids()[0]);
    assert!(eventually(20, || asked.load(Ordering::SeqCst)).await);
    assert!(
        eventually(15, || pool.stats().workers == 1).await,
        "the worker started at once, not after the back-off of 30 to 90 s: {:?}",
        pool.stats()
    );
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// `retry_starts` asked while a slot waits out an ordinary back-off (not
/// an open breaker) starts its worker at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_starts_ends_a_back_off() {
    let dir = temp_dir("retry-backoff");
    let marker = dir.join("broken");
    let mut worker = TestWorker::new();
    worker
        .env
        .push(("TEST_FAIL_IF_EXISTS".into(), marker.display().to_string()));
    let waits = Arc::new(Mutex::new(Vec::new()));
    let log = waits.clone();
    let pool = builder(worker)
        .size(1)
        .configure(|c| {
            c.restart_backoff = Duration::from_secs(60);
            c.restart_backoff_max = Duration::from_secs(120);
            c.breaker_threshold = 100;
        })
        .on_event(move |e| {
            if let EventKind::WorkerRestarting { delay, .. } = e.kind {
                log.lock().unwrap().push(delay);
            }
        })
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    std::fs::write(&marker, "").unwrap();
    kill_9(pool.worker_pids()[0]);
    assert!(eventually(20, || waits.lock().unwrap().iter().any(|d| !d.is_zero())).await);
    // Well inside the back-off of 30 s at least.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pool.stats().workers, 0);
    std::fs::remove_file(&marker).unwrap();
    pool.retry_starts();
    assert!(
        eventually(15, || pool.stats().workers == 1).await,
        "{:?}",
        pool.stats()
    );
    assert_eq!(
        pool.execute("echo", json!({"x": 2})).await.unwrap()["echoed"]["x"],
        2
    );
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// `shutdown()` with a call still running on a worker that was recycled
/// (it finishes its calls outside the slot): that call is cut off with
/// `StoppedByShutdown` at the end of the grace period, and when
/// `shutdown()` returns neither the old worker nor its replacement runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_a_recycled_worker_still_running_a_call() {
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| {
            c.worker_ttl = Duration::from_millis(800);
            c.health_check_interval = Duration::ZERO;
        })
        .start()
        .await
        .unwrap();
    let old = pool.worker_pids()[0];
    let call = a_running_sleep(&pool, 60_000, Duration::from_secs(120)).await;
    assert!(eventually(20, || pool.stats().recycled >= 1).await);
    assert!(!call.is_finished());
    let since = Instant::now();
    pool.shutdown().await.unwrap();
    assert!(since.elapsed() < Duration::from_secs(20));
    let r = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the call ended with the shutdown")
        .unwrap();
    assert!(
        matches!(r, Err(Error::StoppedByShutdown { pid, .. }) if pid == old),
        "{r:?}"
    );
    assert!(!alive(old));
    assert!(
        processes_of_run(pool.run_id()).is_empty(),
        "{:?}",
        processes_of_run(pool.run_id())
    );
}

/// `shutdown()` while a slot is starting a worker (a replacement after a
/// crash, or a recycled worker's replacement, in its handshake): when
/// `shutdown()` returns, no process of the pool runs, the starting one
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_start_leaves_no_process() {
    for recycled in [false, true] {
        let dir = temp_dir("shutdown-start");
        let flag = dir.join("slow");
        let pool = builder(SlowStart { flag: flag.clone() })
            .size(1)
            .configure(|c| {
                if recycled {
                    c.worker_ttl = Duration::from_millis(800);
                }
                c.worker_init_timeout = Duration::from_secs(60);
            })
            .start()
            .await
            .unwrap();
        let first = pool.worker_pids()[0];
        std::fs::write(&flag, "").unwrap();
        if !recycled {
            kill_9(first);
        }
        let run_id = pool.run_id().to_owned();
        // The next worker is spawned, and sleeps before its handshake.
        assert!(eventually(20, || processes_of_run(&run_id).iter().any(|&p| p != first)).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let starting: Vec<u32> = processes_of_run(&run_id)
            .into_iter()
            .filter(|&p| p != first)
            .collect();
        pool.shutdown().await.unwrap();
        let left = processes_of_run(&run_id);
        assert!(
            left.is_empty(),
            "recycled: {recycled}; starting {starting:?}; left {left:?}"
        );
        assert!(!alive(first));
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Two `shutdown()`s at once, while calls run: both return, every call
/// ends, and no worker is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shutdowns_at_once_both_return_and_leave_nothing() {
    let pool = builder(TestWorker::new()).size(2).start().await.unwrap();
    let pids = pool.worker_pids();
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute("sleep", json!({"ms": 5_000})).await })
        })
        .collect();
    assert!(eventually(10, || pool.stats().in_flight == 2).await);
    let (a, b) = tokio::join!(pool.shutdown(), pool.shutdown());
    a.unwrap();
    b.unwrap();
    for c in calls {
        let r = tokio::time::timeout(Duration::from_secs(5), c)
            .await
            .expect("every call ended")
            .unwrap();
        assert!(
            matches!(r, Err(Error::StoppedByShutdown { .. } | Error::ShutDown)),
            "{r:?}"
        );
    }
    for pid in pids {
        assert!(!alive(pid));
    }
    assert!(processes_of_run(pool.run_id()).is_empty());
    let s = pool.stats();
    assert_eq!(s.requests, s.completed + s.errors + s.cancelled, "{s:?}");
}

/// Nothing is admitted once the pool has shut down, and a call made then
/// is counted once, as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_after_shutdown_fails_and_is_counted_once() {
    let pool: Pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    pool.shutdown().await.unwrap();
    let r = pool.execute("echo", json!({})).await;
    assert!(matches!(r, Err(Error::ShutDown)), "{r:?}");
    let s = pool.stats();
    assert_eq!((s.requests, s.errors, s.workers), (1, 1, 0), "{s:?}");
}

/// README: "a replacement starts at once, then with backoff, and a breaker
/// stops crash loops"; reliability.md: "A worker that dies within a second
/// of starting counts as a failed start ... after `breaker_threshold`
/// failures in a row the slot's breaker opens". A worker whose start-up
/// takes a little over a second (an import of a large library) and that
/// dies 0.2 s after its handshake, again and again, is such a crash loop:
/// it must back off and open the breaker. The pool measures "lived" from
/// the spawn, start-up included, so every such death looks like a worker
/// that ran well: restarted at once, forever, the breaker never opening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_starting_worker_that_dies_right_after_its_handshake_opens_the_breaker() {
    let dir = temp_dir("slow-crash-loop");
    let slow = dir.join("slow");
    let die = dir.join("die");
    let opened = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicU64::new(0));
    let pool = {
        let (opened, ready) = (opened.clone(), ready.clone());
        builder(SlowStartWith {
            flag: slow.clone(),
            env: vec![
                ("REVIEW_SLOW_START_SECS", "1.2".into()),
                ("TEST_DIE_SOON_IF_EXISTS", die.display().to_string()),
            ],
        })
        .size(1)
        .configure(|c| {
            c.breaker_threshold = 2;
            c.breaker_cooldown = Duration::from_secs(600);
            c.restart_backoff = Duration::from_millis(200);
        })
        .on_event(move |e| match e.kind {
            EventKind::BreakerOpened { .. } => opened.store(true, Ordering::SeqCst),
            EventKind::WorkerReady { .. } => {
                ready.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        })
        .start()
        .await
        .unwrap()
    };
    std::fs::write(&slow, "").unwrap();
    std::fs::write(&die, "").unwrap();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    kill_9(pool.worker_pids()[0]);
    // Each round: about 1.3 s to start, 0.2 s of life.
    let opened_soon = eventually(20, || opened.load(Ordering::SeqCst)).await;
    let starts = ready.load(Ordering::SeqCst);
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
    assert!(
        opened_soon,
        "after {starts} starts, each dying 0.2 s after its handshake, the breaker (threshold 2) never opened"
    );
}

/// docs/sessions.md, "What survives what": "the session's worker dies |
/// ... | the next call goes to another worker"; `Affinity::Strict`: "Wait
/// for it". A strict call that was waiting for its session's worker when
/// that worker died, in a slot whose restart then fails (back-off), is
/// left waiting for a worker that no longer exists until its queue
/// timeout, while another worker idles, and while the same call made a
/// moment later would go to that other worker at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_call_waiting_for_a_dead_worker_whose_slot_cannot_restart_goes_elsewhere() {
    let dir = temp_dir("strict-dead-slot");
    let marker = dir.join("broken");
    let mut worker = TestWorker::new();
    worker
        .env
        .push(("TEST_FAIL_IF_EXISTS".into(), marker.display().to_string()));
    let pool = builder(worker)
        .size(2)
        .configure(|c| {
            c.pipeline_depth = 0;
            c.queue_timeout = Duration::from_secs(40);
            c.restart_backoff = Duration::from_secs(60);
            c.restart_backoff_max = Duration::from_secs(120);
            c.breaker_threshold = 100;
        })
        .start()
        .await
        .unwrap();
    let home = pool
        .execute_in_session("s", "echo", json!({}))
        .await
        .unwrap()["pid"]
        .as_u64()
        .unwrap() as u32;
    let marker_file = temp_dir("strict-dead-slot-m").join("m");
    let long = {
        let pool = pool.clone();
        let m = marker_file.display().to_string();
        tokio::spawn(async move {
            pool.execute_with(
                "sleep",
                json!({"ms": 30_000, "marker": m}),
                CallOptions::new().session("s").affinity(Affinity::Strict),
            )
            .await
        })
    };
    assert!(eventually(20, || marker_file.exists()).await);
    let waiting = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute_with(
                "echo",
                json!({"x": 1}),
                CallOptions::new()
                    .session("s")
                    .affinity(Affinity::Strict)
                    .timeout(Duration::from_secs(60)),
            )
            .await
        })
    };
    assert!(eventually(10, || pool.stats().queued == 1).await);
    // Lived over a second: replaced at once; that start fails, and the
    // slot backs off for 30 s or more.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    std::fs::write(&marker, "").unwrap();
    kill_9(home);
    assert!(matches!(long.await.unwrap(), Err(Error::WorkerCrashed(_))));
    assert!(eventually(20, || pool.stats().start_failures >= 1).await);
    // A fresh strict call of the session goes to the other worker at once.
    let fresh = pool
        .execute_with(
            "echo",
            json!({}),
            CallOptions::new()
                .session("s")
                .affinity(Affinity::Strict)
                .timeout(Duration::from_secs(10)),
        )
        .await;
    let r = tokio::time::timeout(Duration::from_secs(10), waiting).await;
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
    assert_ne!(fresh.unwrap()["pid"].as_u64().unwrap() as u32, home);
    let r = r
        .expect("the waiting strict call went to a live worker, not waiting out its queue timeout")
        .unwrap();
    assert_eq!(r.unwrap()["echoed"]["x"], 1);
}

/// `worker_ttl` at its smallest (1 ms): every worker is recycled as soon
/// as the rule is checked, so replacements follow each other all the
/// time, under load. reliability.md: "No call fails because its worker
/// was recycled"; and every process the pool started is gone after
/// `shutdown()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constant_recycling_by_age_fails_no_call_and_leaves_no_process() {
    let pool = builder(TestWorker::new())
        .size(2)
        .configure(|c| {
            c.worker_ttl = Duration::from_millis(1);
            c.queue_timeout = Duration::from_secs(60);
        })
        .start()
        .await
        .unwrap();
    let callers: Vec<_> = (0..8)
        .map(|c| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut pids = HashSet::new();
                let mut i = 0;
                // At least 40 calls each, and on until the pool has
                // recycled 4 workers (a loaded machine starts
                // replacements slowly), at most 400.
                while i < 40 || (pool.stats().recycled < 4 && i < 400) {
                    let r = pool
                        .execute_with(
                            "echo",
                            json!({"c": c, "i": i}),
                            CallOptions::new().timeout(Duration::from_secs(60)),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("call {c}/{i}: {e:?}"));
                    assert_eq!(r["echoed"]["i"], i);
                    pids.insert(r["pid"].as_u64().unwrap());
                    if i % 4 == 0 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    i += 1;
                }
                (pids, i)
            })
        })
        .collect();
    let (mut pids, mut calls) = (HashSet::new(), 0);
    for c in callers {
        let (seen, made) = c.await.unwrap();
        pids.extend(seen);
        calls += made;
    }
    let s = pool.stats();
    assert!(calls >= 320);
    assert_eq!((s.completed, s.errors, s.cancelled), (calls, 0, 0), "{s:?}");
    assert!(s.recycled >= 4, "{s:?}");
    assert!(pids.len() >= 4, "{pids:?}");
    pool.shutdown().await.unwrap();
    let left = processes_of_run(pool.run_id());
    assert!(left.is_empty(), "{left:?}");
    for pid in pids {
        assert!(!alive(pid as u32), "{pid}");
    }
}

/// `Pool::shutdown`: "closes the workers' stdin, then signals their process
/// groups (SIGTERM, then SIGKILL) and reaps them". A replacement worker
/// whose handshake has just been answered when `shutdown()` begins (its
/// supervisor not yet past `worker_ready`) is still put in its slot after
/// `shutdown()` took its list of workers: it is never stopped, and runs on
/// after `shutdown()` has returned, for as long as a `Pool` handle lives.
/// The listener of `WorkerReady` (called by the supervisor just before it
/// installs the worker) holds the supervisor there until `shutdown()` has
/// returned: it only widens the window a busy machine opens by itself.
/// (Blocking a runtime thread stalls that runtime's timers, so the test
/// runs `shutdown()` on a runtime of its own.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_ready_just_as_shutdown_begins_does_not_outlive_it() {
    let first_seen = Arc::new(AtomicBool::new(false));
    let shut = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<u32>();
    let tx = Mutex::new(tx);
    let pool = {
        let (first_seen, shut) = (first_seen.clone(), shut.clone());
        builder(TestWorker::new())
            .size(1)
            .on_event(move |e| {
                if let EventKind::WorkerReady { pid, .. } = e.kind {
                    if !first_seen.swap(true, Ordering::SeqCst) {
                        return;
                    }
                    let _ = tx.lock().unwrap().send(pid);
                    // The supervisor is descheduled here, for a while.
                    let until = Instant::now() + Duration::from_secs(20);
                    while !shut.load(Ordering::SeqCst) && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
            .start()
            .await
            .unwrap()
    };
    let first = pool.worker_pids()[0];
    let run_id = pool.run_id().to_owned();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    kill_9(first);
    let late = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a replacement became ready");
    let shutting = {
        let (pool, shut) = (pool.clone(), shut.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(pool.shutdown()).unwrap();
            shut.store(true, Ordering::SeqCst);
        })
    };
    shutting.join().unwrap();
    // The supervisor goes on; give it time to do whatever it does.
    let gone = eventually(3, || !alive(late)).await;
    let left = processes_of_run(&run_id);
    drop(pool); // the last handle: the pool kills what is left
    assert!(
        gone && left.is_empty(),
        "worker {late} (ready as shutdown began) still runs after shutdown() returned; processes of the run: {left:?}"
    );
}

/// A `TestWorker` whose `check` fails while `broken` is set.
struct Checked {
    broken: Arc<AtomicBool>,
    checks: Arc<AtomicU64>,
}

impl Adapter for Checked {
    fn launch(&self) -> Launch {
        TestWorker::new().launch()
    }
    fn check(&self) -> Result<(), String> {
        self.checks.fetch_add(1, Ordering::Relaxed);
        if self.broken.load(Ordering::Relaxed) {
            return Err("the test broke what workers need".into());
        }
        Ok(())
    }
}

/// `Adapter::check`: checked before the first spawn "and again before each
/// later start (a replacement, ...), where an `Err` is that start's failure
/// (backed off, counted by the breaker)". A worker killed while `check`
/// fails is not replaced: each attempt is a failed start whose cause is the
/// check's message, and no process is spawned for it; once `check` passes
/// again, the next attempt starts a worker that serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_check_fails_later_starts_until_it_passes() {
    let broken = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicU64::new(0));
    let causes = Arc::new(Mutex::new(Vec::new()));
    let log = causes.clone();
    let pool = builder(Checked {
        broken: broken.clone(),
        checks: checks.clone(),
    })
    .size(1)
    .configure(|c| {
        c.restart_backoff = Duration::from_millis(20);
        c.restart_backoff_max = Duration::from_millis(50);
        c.breaker_threshold = 1_000;
    })
    .on_event(move |e| {
        if let EventKind::WorkerStartFailed { cause, .. } = e.kind {
            log.lock().unwrap().push(cause.to_owned());
        }
    })
    .start()
    .await
    .unwrap();
    let first = pool.worker_pids()[0];
    let run_id = pool.run_id().to_owned();
    broken.store(true, Ordering::Relaxed);
    kill_9(first);
    assert!(eventually(20, || pool.stats().start_failures >= 3).await);
    assert_eq!(pool.stats().workers, 0);
    assert!(
        processes_of_run(&run_id).is_empty(),
        "a worker was spawned although the check failed"
    );
    assert!(causes
        .lock()
        .unwrap()
        .iter()
        .all(|c| c.contains("the test broke what workers need")));
    let before = checks.load(Ordering::Relaxed);
    broken.store(false, Ordering::Relaxed);
    assert!(eventually(20, || pool.stats().workers == 1).await);
    assert!(checks.load(Ordering::Relaxed) > before);
    assert_eq!(
        pool.execute("echo", json!({"x": 3})).await.unwrap()["echoed"]["x"],
        3
    );
    pool.shutdown().await.unwrap();
}
