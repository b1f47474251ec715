//! Pipelined dispatch against real Python workers (they declare `pipeline`):
//! calls written ahead to a worker that runs one at a time keep every
//! promise of the pool (docs/reliability.md).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use snakepit_core::{CallOptions, Error, Pool};

/// A pool whose workers count as short-call workers even on a loaded
/// machine running debug builds (what "short" means is not under test here).
fn pipelined(size: usize) -> snakepit_core::PoolBuilder {
    builder(TestWorker::new())
        .size(size)
        .configure(|c| c.pipeline_max_call = Duration::from_millis(50))
}

/// Short calls, so that the worker's moving average allows writing ahead.
async fn warm_up(pool: &Pool) -> u64 {
    let mut served = 0;
    for _ in 0..20 {
        let r = pool.execute("echo", json!({})).await.unwrap();
        served = r["served"].as_u64().unwrap();
    }
    served
}

/// An `echo` call with a deadline of 300 ms, on a task of its own.
fn echo_within_300_ms(
    pool: &Pool,
) -> tokio::task::JoinHandle<snakepit_core::Result<serde_json::Value>> {
    let pool = pool.clone();
    tokio::spawn(async move {
        pool.execute_with(
            "echo",
            json!({}),
            CallOptions::new().timeout(Duration::from_millis(300)),
        )
        .await
    })
}

fn in_flight_on_first(pool: &Pool) -> usize {
    pool.workers().first().map_or(0, |w| w.in_flight)
}

/// A call written ahead whose caller gives up before it starts never runs:
/// the worker drops it on the cancel frame, and no signal is sent (the call
/// running in front of it completes normally).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_call_that_is_cancelled_never_runs() {
    let pool = pipelined(1).start().await.unwrap();
    let served = warm_up(&pool).await;
    let running = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("sleep", json!({"ms": 3000})).await })
    };
    assert!(eventually(10, || in_flight_on_first(&pool) == 1).await);
    let waiting = echo_within_300_ms(&pool);
    assert!(
        eventually(10, || in_flight_on_first(&pool) == 2).await,
        "the second call was written ahead: {:?}",
        pool.workers()
    );
    let stats = pool.stats();
    assert_eq!(
        (stats.in_flight, stats.queued),
        (2, 0),
        "a call written ahead is in flight, not queued"
    );
    assert!(matches!(
        waiting.await.unwrap(),
        Err(Error::CallTimeout { .. })
    ));
    // The running call was not interrupted (no SIGINT for a waiting call).
    running.await.unwrap().unwrap();
    let r = pool.execute("echo", json!({})).await.unwrap();
    assert_eq!(
        r["served"].as_u64().unwrap(),
        served + 1,
        "the cancelled echo never ran"
    );
    let stats = pool.stats();
    assert_eq!(stats.crashes, 0);
    assert_eq!(stats.restarts, 0, "the worker was not replaced");
    pool.shutdown().await.unwrap();
}

/// A worker that dies with a call waiting in its pipe: the running call
/// fails as a crash, the waiting one never ran and is served by the
/// replacement, counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_on_a_worker_that_dies_go_to_another() {
    let pool = pipelined(1).start().await.unwrap();
    warm_up(&pool).await;
    let victim = pool.worker_pids()[0];
    let marker = temp_dir("running").join("marker");
    let running = {
        let pool = pool.clone();
        let marker = marker.display().to_string();
        tokio::spawn(async move {
            pool.execute("sleep", json!({"ms": 30_000, "marker": marker}))
                .await
        })
    };
    // The first call runs in the worker (not merely written to it)...
    assert!(eventually(10, || marker.exists()).await, "the call started");
    let waiting = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("pid", json!({})).await })
    };
    // ... and the second waits behind it in its stdin.
    assert!(eventually(10, || in_flight_on_first(&pool) == 2).await);
    kill_9(victim);
    assert!(running.await.unwrap().unwrap_err().is_crash());
    let r = waiting.await.unwrap().unwrap();
    assert_ne!(r["pid"].as_u64().unwrap() as u32, victim);
    let stats = pool.stats();
    assert_eq!(stats.crashes, 1);
    assert_eq!(stats.requests, 20 + 2);
    assert_eq!(stats.completed, 20 + 1);
    pool.shutdown().await.unwrap();
}

/// Once a worker's calls are long, nothing is written ahead to it: the next
/// call waits in the pool's queue for whichever worker frees first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_calls_never_wait_behind_each_other() {
    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    for _ in 0..3 {
        pool.execute("sleep", json!({"ms": 50})).await.unwrap();
    }
    let first = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("sleep", json!({"ms": 500})).await })
    };
    assert!(eventually(10, || in_flight_on_first(&pool) == 1).await);
    let second = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("sleep", json!({"ms": 10})).await })
    };
    assert!(eventually(10, || pool.stats().queued == 1).await);
    assert_eq!(in_flight_on_first(&pool), 1, "nothing was written ahead");
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    pool.shutdown().await.unwrap();
}

/// Many callers, short calls written ahead, deadlines expiring all the time:
/// every reply a caller gets is its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_caller_gets_another_calls_reply() {
    let pool = pipelined(2).start().await.unwrap();
    warm_up(&pool).await;
    let tasks: Vec<_> = (0..16u64)
        .map(|c| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut ok = 0;
                for n in 0..40u64 {
                    let token = format!("{c}-{n}");
                    let timeout = Duration::from_micros(500 + (c * 37 + n * 101) % 4000);
                    let r = pool
                        .execute_with(
                            "sleep",
                            json!({"ms": (n % 3) as f64 * 0.5, "token": token}),
                            CallOptions::new().timeout(timeout),
                        )
                        .await;
                    match r {
                        Ok(v) => {
                            assert_eq!(v["token"], token.as_str());
                            ok += 1;
                        }
                        Err(Error::CallTimeout { .. } | Error::QueueTimeout(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert!(ok > 0);
    let s = pool.stats();
    assert_eq!(s.crashes, 0);
    assert!(
        eventually(20, || pool.stats().in_flight == 0).await,
        "every late reply came back: {:?}",
        pool.stats()
    );
    assert_eq!(s.requests, s.completed + s.errors + s.cancelled);
    pool.shutdown().await.unwrap();
}

/// With `pipeline_depth = 0` nothing is ever written ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_off_writes_nothing_ahead() {
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| c.pipeline_depth = 0)
        .start()
        .await
        .unwrap();
    warm_up(&pool).await;
    let first = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("sleep", json!({"ms": 300})).await })
    };
    assert!(eventually(10, || in_flight_on_first(&pool) == 1).await);
    let second = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("echo", json!({})).await })
    };
    assert!(eventually(10, || pool.stats().queued == 1).await);
    assert_eq!(in_flight_on_first(&pool), 1);
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    pool.shutdown().await.unwrap();
}

/// No call is written ahead behind a stream: a stream may wait on its reader
/// for any time (its worker blocks on a full pipe meanwhile), so the calls
/// that come while one runs go to the pool's other worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_waits_behind_a_stream() {
    let pool = pipelined(1).start().await.unwrap();
    warm_up(&pool).await;
    let mut stream = pool
        .execute_stream("stream", json!({"n": 3000}), CallOptions::new())
        .await
        .unwrap();
    // The worker runs the stream and waits on its unread chunks.
    assert!(eventually(10, || in_flight_on_first(&pool) == 1).await);
    let waiting = echo_within_300_ms(&pool);
    // The second call stays in the pool's queue, not in the worker's pipe,
    // and times out there, never having run.
    let err = waiting.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::QueueTimeout(_) | Error::CallTimeout { .. }),
        "{err}"
    );
    assert_eq!(in_flight_on_first(&pool), 1, "{:?}", pool.workers());
    let mut chunks = 0;
    {
        use std::future::poll_fn;
        use std::pin::Pin;

        use futures_core::Stream;
        while let Some(item) = poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
            if let snakepit_core::StreamItem::Chunk(_) = item.unwrap() {
                chunks += 1;
            }
        }
    }
    assert_eq!(chunks, 3000);
    pool.shutdown().await.unwrap();
}

/// One `signal_worker.py` worker that has a call written ahead behind a
/// running one (at most one, for calls under 50 ms, which its 20 first
/// echoes show it runs), whose late replies are awaited rather than cut off
/// by a kill; `more` sets the rest of the pool's configuration. The pool
/// and the worker's pid.
async fn one_signal_worker_writing_one_ahead(
    more: impl FnOnce(&mut snakepit_core::PoolConfig),
) -> (Pool, u32) {
    let pool = builder(BridgeScript("signal_worker.py"))
        .size(1)
        .configure(|c| {
            c.pipeline_depth = 1;
            c.pipeline_max_call = Duration::from_millis(50);
            c.shutdown_grace_period = Duration::from_secs(30);
            more(c);
        })
        .start()
        .await
        .unwrap();
    let pid = pool.worker_pids()[0];
    for _ in 0..20 {
        pool.execute("echo", json!({})).await.unwrap();
    }
    (pool, pid)
}

/// `nap` for `ms` on `pool`, in a task: the worker writes `finished` or
/// `interrupted` (by SIGINT) to `record`.
fn spawn_nap(
    pool: &Pool,
    record: &std::path::Path,
    ms: u64,
    timeout: Duration,
) -> tokio::task::JoinHandle<snakepit_core::Result<serde_json::Value>> {
    let pool = pool.clone();
    let args = json!({"ms": ms, "record": record.display().to_string()});
    tokio::spawn(async move {
        pool.execute_with("nap", args, CallOptions::new().timeout(timeout))
            .await
    })
}

/// The nap recording to `record` was cut short by SIGINT (within 10 s).
async fn interrupted(record: &std::path::Path) -> bool {
    eventually(10, || {
        std::fs::read_to_string(record).is_ok_and(|s| s == "interrupted")
    })
    .await
}

/// The next call is served, by the worker `pid`.
async fn next_call_on(pool: &Pool, pid: u32) {
    let r = pool
        .execute("echo", json!({"token": "next"}))
        .await
        .unwrap();
    assert_eq!(r["echoed"], json!({"token": "next"}));
    assert_eq!(
        r["pid"].as_u64(),
        Some(u64::from(pid)),
        "the worker was kept"
    );
}

/// docs/reliability.md: "SIGINT, for a worker that declares it, is sent only
/// when it can reach nothing but the call it is meant for". A call that
/// times out while another is written ahead behind it is not signalled (the
/// signal could land in the next call): it runs to its end, and the call
/// behind it gets its own reply. Alone on its worker, it is signalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_times_out_with_another_behind_it_gets_no_sigint() {
    let (pool, pid) = one_signal_worker_writing_one_ahead(|_| {}).await;
    let dir = temp_dir("no-sigint");
    let record = dir.join("front");
    let front = spawn_nap(&pool, &record, 4000, Duration::from_secs(2));
    assert!(eventually(10, || in_flight_on_first(&pool) == 1).await);
    let behind = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute_with(
                "echo",
                json!({"token": "behind"}),
                CallOptions::new().timeout(Duration::from_secs(60)),
            )
            .await
        })
    };
    // Written ahead before the front call's deadline (which would have
    // held everything back, had it been signalled alone).
    assert!(
        eventually(10, || in_flight_on_first(&pool) == 2).await,
        "the echo was written ahead: {:?}",
        pool.workers()
    );
    let err = front.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::CallTimeout { .. }), "{err}");
    let r = behind.await.unwrap().unwrap();
    assert_eq!(r["echoed"], json!({"token": "behind"}));
    assert_eq!(r["pid"].as_u64(), Some(u64::from(pid)));
    // The echo ran after the nap's handler returned: it was never signalled.
    assert_eq!(std::fs::read_to_string(&record).unwrap(), "finished");
    let s = pool.stats();
    assert_eq!((s.crashes, s.restarts), (0, 0), "{s:?}");

    // Alone on its worker, a timed-out call is signalled.
    let record = dir.join("alone");
    let alone = spawn_nap(&pool, &record, 60_000, Duration::from_millis(300));
    let err = alone.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::CallTimeout { .. }), "{err}");
    assert!(interrupted(&record).await, "the call alone was signalled");
    next_call_on(&pool, pid).await;
    assert_eq!(pool.stats().crashes, 0);
    pool.shutdown().await.unwrap();
}

/// docs/reliability.md: a call given up while it runs, with another
/// written ahead behind it, "is signalled once each call behind it has been
/// given up too". Its SIGINT then reaches nothing but it: the worker drops
/// the call behind unrun, on its cancel frame. The worker is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_left_without_its_sigint_gets_it_once_the_call_behind_is_given_up() {
    let (pool, pid) = one_signal_worker_writing_one_ahead(|_| {}).await;
    let dir = temp_dir("sigint-later");
    let (front_record, behind_record) = (dir.join("front"), dir.join("behind"));
    let front = spawn_nap(&pool, &front_record, 60_000, Duration::from_secs(1));
    assert!(eventually(10, || in_flight_on_first(&pool) == 1).await);
    let behind = spawn_nap(&pool, &behind_record, 10, Duration::from_secs(3));
    assert!(
        eventually(10, || in_flight_on_first(&pool) == 2).await,
        "the second nap was written ahead: {:?}",
        pool.workers()
    );
    let err = front.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::CallTimeout { .. }), "{err}");
    // Not signalled while the call behind it may still run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!front_record.exists(), "the front nap was signalled early");
    let err = behind.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::CallTimeout { .. }), "{err}");
    assert!(
        interrupted(&front_record).await,
        "the front nap was signalled once the call behind it was given up"
    );
    next_call_on(&pool, pid).await;
    assert!(!behind_record.exists(), "the call behind never ran");
    let s = pool.stats();
    assert_eq!((s.crashes, s.restarts), (0, 0), "{s:?}");
    assert_eq!((s.call_timeouts, s.completed), (2, 21), "{s:?}");
    pool.shutdown().await.unwrap();
}

/// Calls written ahead cover about `pipeline_max_call` of the worker's
/// recent run time, not the whole `pipeline_depth`: with calls of about
/// 200 ms and a window of one second, 4 or 5 wait in the worker's stdin
/// (each waits about a second at most) and the rest in the pool's queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_written_ahead_cover_the_window_not_the_whole_depth() {
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| {
            c.pipeline_depth = 16;
            c.pipeline_max_call = Duration::from_secs(1);
        })
        .start()
        .await
        .unwrap();
    for _ in 0..3 {
        pool.execute("sleep", json!({"ms": 200})).await.unwrap();
    }
    let calls: Vec<_> = (0..12)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute("sleep", json!({"ms": 200})).await })
        })
        .collect();
    assert!(eventually(10, || pool.stats().queued + in_flight_on_first(&pool) == 12).await);
    let (in_flight, queued) = (in_flight_on_first(&pool), pool.stats().queued);
    // 1 running and 1_000 / ~200..250 written ahead; the old rule (the whole
    // depth for any call under the threshold) would have written 11.
    assert!(
        (3..=6).contains(&in_flight),
        "{in_flight} calls on the worker, {queued} queued"
    );
    for call in calls {
        call.await.unwrap().unwrap();
    }
    pool.shutdown().await.unwrap();
}

/// Calls written ahead go to the busy workers in turn, not all to one of
/// them while the other's stdin stays empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_written_ahead_spread_over_the_busy_workers() {
    let pool = pipelined(2)
        .configure(|c| c.pipeline_depth = 16)
        .start()
        .await
        .unwrap();
    // Both workers learn that their calls are short.
    for _ in 0..20 {
        let (a, b) = tokio::join!(
            pool.execute("echo", json!({})),
            pool.execute("echo", json!({}))
        );
        a.unwrap();
        b.unwrap();
    }
    let long: Vec<_> = (0..2)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute("sleep", json!({"ms": 500})).await })
        })
        .collect();
    let busy = || pool.workers().iter().filter(|w| w.in_flight == 1).count() == 2;
    assert!(eventually(10, busy).await);
    let short: Vec<_> = (0..10)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute("echo", json!({})).await })
        })
        .collect();
    let all_in = || pool.workers().iter().map(|w| w.in_flight).sum::<usize>() == 12;
    assert!(eventually(10, all_in).await);
    let spread: Vec<usize> = pool.workers().iter().map(|w| w.in_flight).collect();
    assert_eq!(spread, vec![6, 6], "1 running and 5 written ahead on each");
    for call in long.into_iter().chain(short) {
        call.await.unwrap().unwrap();
    }
    pool.shutdown().await.unwrap();
}

/// docs/reliability.md: "SIGINT, for a worker that declares it, is sent
/// only when it can reach nothing but the call it is meant for: no other
/// call is in flight or leased on that worker". A worker recycled (by
/// age) while a call runs on it with another written ahead behind it
/// finishes both out of its slot; the call that times out there is not
/// signalled either (the call behind would start the moment its handler
/// returned, and the signal could land in it): it runs to its end, and the
/// call behind gets its own reply. The same scene in the slot is
/// `a_call_that_times_out_with_another_behind_it_gets_no_sigint`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retiring_worker_with_a_call_written_ahead_gets_no_sigint() {
    // Recycled (by age) while its two calls are in flight.
    let (pool, pid) =
        one_signal_worker_writing_one_ahead(|c| c.worker_ttl = Duration::from_secs(2)).await;
    let in_flight = |pool: &snakepit_core::Pool| {
        pool.workers()
            .first()
            .filter(|w| w.pid == pid)
            .map_or(0, |w| w.in_flight)
    };
    let dir = temp_dir("retiring-ahead");
    let record = dir.join("front");
    let front = {
        let pool = pool.clone();
        let args = json!({"ms": 8000, "record": record.display().to_string()});
        tokio::spawn(async move {
            pool.execute_with(
                "nap",
                args,
                CallOptions::new().timeout(Duration::from_secs(5)),
            )
            .await
        })
    };
    assert!(eventually(10, || in_flight(&pool) == 1).await);
    let behind = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute_with(
                "echo",
                json!({"token": "behind"}),
                CallOptions::new().timeout(Duration::from_secs(60)),
            )
            .await
        })
    };
    assert!(
        eventually(10, || in_flight(&pool) == 2).await,
        "the echo was written ahead to worker {pid}: {:?}",
        pool.workers()
    );
    // The worker is recycled: its replacement takes the slot, and it keeps
    // the nap and the echo written ahead behind it.
    assert!(
        eventually(10, || pool.worker_pids().first() != Some(&pid)).await,
        "worker {pid} was recycled by age"
    );
    assert!(
        !front.is_finished(),
        "the nap times out after the recycling (the scene under test)"
    );
    let err = front.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::CallTimeout { .. }), "{err}");
    let r = behind.await.unwrap().unwrap();
    assert_eq!(r["echoed"], json!({"token": "behind"}));
    assert_eq!(r["pid"].as_u64(), Some(u64::from(pid)));
    assert!(
        eventually(15, || record.exists()).await,
        "the nap's handler ended"
    );
    assert_eq!(
        std::fs::read_to_string(&record).unwrap(),
        "finished",
        "SIGINT was sent to worker {pid} while a call was written ahead behind the nap"
    );
    pool.shutdown().await.unwrap();
}
