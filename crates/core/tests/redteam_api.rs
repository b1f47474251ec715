//! Attacks on the public API of `snakepit-core`, as a demanding user would
//! make them: edge cases of shutdown, dropping, deadlines, sessions,
//! listeners and load (each test says the defect it found, if any).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use snakepit_core::{CallOptions, CallStream, Error, Pool, StreamItem};

use snakepit_tests::count_panics;

async fn next(stream: &mut CallStream) -> Option<snakepit_core::Result<StreamItem>> {
    use std::future::poll_fn;
    use std::pin::Pin;

    use futures_core::Stream;
    poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// Waits until the pool shows no call in flight or queued and every
/// ready worker available.
async fn settled(pool: &Pool, workers: usize) -> bool {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        let s = pool.stats();
        if s.in_flight == 0 && s.queued == 0 && s.workers == workers && s.available == workers {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// `Error::WorkerCrashed` (crates/core/src/error.rs:47 and
/// `is_crash`, error.rs:218-219): "The worker running the call died (not by
/// the pool's own shutdown: that is [`Error::StoppedByShutdown`])";
/// `PoolInner::drop` (crates/core/src/pool.rs:260-261): "The last handle is
/// gone without `shutdown()`: stop at once, killing every worker's process
/// group". A `CallStream` outlives the last `Pool` handle (it holds the
/// pool's shared state); when that handle is dropped, the pool SIGKILLs the
/// stream's worker itself, and the stream ends stopped by the pool, not as
/// a crash. (It ended with `WorkerCrashed { exit: Signal(9), .. }`: a kill
/// the pool made, reported as the worker's fault, `is_crash()` true.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_stops_a_running_stream_not_as_a_crash() {
    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    let pid = pool.worker_pids()[0];
    let mut stream = pool
        .execute_stream(
            "sleep",
            json!({"ms": 3000, "token": "s"}),
            CallOptions::new().timeout(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let weak = pool.downgrade();
    drop(pool);
    let t0 = Instant::now();
    let item = tokio::time::timeout(Duration::from_secs(20), next(&mut stream))
        .await
        .expect("the stream ends soon after the pool is dropped");
    eprintln!("after {:?}: {item:?}", t0.elapsed());
    assert!(weak.upgrade().is_none());
    assert!(eventually(5, || !alive(pid)).await);
    let err = item.unwrap().unwrap_err();
    assert!(
        !err.is_crash(),
        "dropping the pool is the pool's own stop, not a crash: {err:?}"
    );
    assert!(matches!(err, Error::StoppedByShutdown { .. }), "{err:?}");
}

/// docs/reliability.md:138-141: "A call still running when `shutdown()`'s
/// grace period ends is stopped with its worker and gets
/// `Error::StoppedByShutdown`: it ran, it was not a crash (`is_crash()` and
/// `never_ran()` are both false, `stats().crashes` does not count it)."
/// Here for a stream (the existing tests cover a one-shot call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_off_by_shutdown_is_stopped_by_shutdown_not_a_crash() {
    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    let mut stream = pool
        .execute_stream(
            "sleep",
            json!({"ms": 5000, "token": "s"}),
            CallOptions::new().timeout(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    pool.shutdown().await.unwrap();
    let item = tokio::time::timeout(Duration::from_secs(20), next(&mut stream))
        .await
        .expect("ends");
    let err = item.unwrap().unwrap_err();
    assert!(matches!(err, Error::StoppedByShutdown { .. }), "{err:?}");
    assert!(!err.is_crash() && !err.never_ran());
    let s = pool.stats();
    assert_eq!(s.crashes, 0, "{s:?}");
}

/// `Pool::shutdown` (crates/core/src/pool.rs:413-416): "Stops admitting
/// calls, lets calls in flight finish within the grace period, closes the
/// workers' stdin, then signals their process groups ... and reaps them";
/// README, errors: `ShutDown` is "the pool is shut down". Two shutdowns at
/// once, and a third after, all return `Ok`; a call made during them is
/// refused with `ShutDown`, the running call finishes, no worker survives,
/// and nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_shutdowns_refuse_new_calls_and_let_the_running_one_finish() {
    let panics = count_panics();
    let pool = builder(TestWorker::new()).size(2).start().await.unwrap();
    let pids = pool.worker_pids();
    let running = {
        let p = pool.clone();
        tokio::spawn(async move { p.execute("sleep", json!({"ms": 300, "token": "r"})).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // `join!` polls in order: both shutdowns have begun (closed the pool)
    // before the call is made.
    let (a, b, during) = tokio::join!(
        pool.shutdown(),
        pool.shutdown(),
        pool.execute("echo", json!({}))
    );
    assert!(matches!(during, Err(Error::ShutDown)), "{during:?}");
    a.unwrap();
    b.unwrap();
    pool.shutdown().await.unwrap();
    let r = running.await.unwrap().unwrap();
    assert_eq!(r["token"], "r");
    for pid in pids {
        assert!(eventually(5, || !alive(pid)).await);
    }
    let s = pool.stats();
    assert_eq!(s.requests, s.completed + s.errors + s.cancelled, "{s:?}");
    assert_eq!(panics.load(Ordering::SeqCst), 0);
}

/// `Stats` (crates/core/src/pool/stats.rs:11): "A snapshot of a pool,
/// every figure consistent with what callers saw"; docs/reliability.md,
/// pipelined dispatch (:234): "no caller ever receives another call's reply".
/// One worker (pipelined), 1,000 callers, two thirds of them dropped by
/// `tokio::time::timeout` at a random 0-5 ms: every reply carries its own
/// caller's token, the counters match what the callers saw, the pool
/// returns to idle, and nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_under_a_thousand_callers_with_random_cancellation() {
    let panics = count_panics();
    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..1000u64 {
        let p = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut seed = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let r = xorshift(&mut seed);
            let call = p.execute("echo", json!({"token": i}));
            match r % 3 {
                0 => Some(call.await),
                _ => {
                    let us = xorshift(&mut seed) % 5000;
                    tokio::time::timeout(Duration::from_micros(us), call)
                        .await
                        .ok()
                }
            }
            .map(|r| (i, r))
        }));
    }
    let mut ok = 0u64;
    let mut errs = 0u64;
    let mut cancelled = 0u64;
    for t in tasks {
        match t.await.unwrap() {
            Some((i, Ok(v))) => {
                ok += 1;
                assert_eq!(v["echoed"]["token"], json!(i), "caller {i} got {v}");
            }
            Some((_, Err(e))) => {
                errs += 1;
                eprintln!("error: {e:?}");
            }
            None => cancelled += 1,
        }
    }
    assert!(settled(&pool, 1).await, "{:?}", pool.stats());
    let s = pool.stats();
    eprintln!("{ok} {errs} {cancelled} {s:?}");
    assert_eq!(s.requests, 1000, "{s:?}");
    assert_eq!(
        (s.completed, s.errors, s.cancelled),
        (ok, errs, cancelled),
        "{s:?}"
    );
    let r = pool
        .execute("echo", json!({"token": "after"}))
        .await
        .unwrap();
    assert_eq!(r["echoed"]["token"], "after");
    pool.shutdown().await.unwrap();
    assert_eq!(panics.load(Ordering::SeqCst), 0);
}

/// `CallOptions::timeout` (crates/core/src/pool/options.rs:104): "The
/// deadline, counted from submission"; README, errors: `CallTimeout` is
/// "the deadline passed". A zero timeout is a deadline that has passed at
/// submission (a caller passing on an exhausted budget): it is not sent,
/// and ends in `CallTimeout`, a stream as a one-shot call. (A one-shot call
/// was sent to a free worker anyway, ran, and its reply, about 0.3 ms
/// later, within the reader's timer tick, came back as a success: most of
/// 20 such calls succeeded.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_deadline_passed_at_submission_is_not_sent() {
    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    let zero = CallOptions::new().timeout(Duration::ZERO);
    match pool
        .execute_stream("stream", json!({"n": 3}), zero.clone())
        .await
    {
        Err(e) => assert!(matches!(e, Error::CallTimeout { .. }), "{e:?}"),
        Ok(mut s) => {
            let item = next(&mut s).await;
            assert!(
                matches!(item, Some(Err(Error::CallTimeout { .. }))),
                "a stream with a zero timeout times out: {item:?}"
            );
        }
    }
    let mut succeeded = Vec::new();
    for i in 0..20 {
        assert!(settled(&pool, 1).await, "{:?}", pool.stats());
        match pool
            .execute_with("echo", json!({"token": i}), zero.clone())
            .await
        {
            Ok(v) => succeeded.push(v),
            Err(e) => assert!(matches!(e, Error::CallTimeout { .. }), "{e:?}"),
        }
    }
    assert!(
        succeeded.is_empty(),
        "{} of 20 calls with a zero timeout ran and succeeded, e.g. {}",
        succeeded.len(),
        succeeded[0]
    );
    pool.shutdown().await.unwrap();
}

/// README.md:210: "`execute_in_session(id, ..)` sends a session's calls
/// to the worker that served it last while that worker is free"; the
/// session id reaches the handler (`ctx.session_id`). Holds for an empty
/// id, a NUL, odd Unicode, a newline and a 200 kB id; `end_session` forgets
/// each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_session_ids_keep_their_worker_and_reach_the_handler() {
    let pool = builder(TestWorker::new()).size(2).start().await.unwrap();
    let huge = "x".repeat(200_000);
    for id in ["", "\0", "é🐍\u{202e}", "a\nb", huge.as_str()] {
        let a = pool
            .execute_in_session(id, "echo", json!({}))
            .await
            .unwrap();
        let b = pool
            .execute_in_session(id, "echo", json!({}))
            .await
            .unwrap();
        assert_eq!(a["pid"], b["pid"], "session {:?}", &id[..id.len().min(8)]);
        assert_eq!(a["session_id"], json!(id));
        pool.end_session(id);
    }
    assert_eq!(pool.stats().sessions, 0);
    pool.shutdown().await.unwrap();
}

/// README.md:155: `max_queue_size` is "calls that may wait; one
/// more is rejected at once"; errors: `PoolSaturated` is "the queue was
/// full; the call never ran". With 0, a call that finds no free worker is
/// rejected at once and counted in `pool_saturated`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_queue_size_of_zero_rejects_every_call_that_would_wait() {
    let pool = builder(TestWorker::new())
        .configure(|c| {
            c.max_queue_size = 0;
            c.pipeline_depth = 0;
        })
        .size(1)
        .start()
        .await
        .unwrap();
    let busy = {
        let p = pool.clone();
        tokio::spawn(async move { p.execute("sleep", json!({"ms": 500})).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = pool.execute("echo", json!({})).await.unwrap_err();
    assert!(matches!(e, Error::PoolSaturated { queued: 0 }), "{e:?}");
    assert!(e.never_ran());
    busy.await.unwrap().unwrap();
    let s = pool.stats();
    assert_eq!(
        (s.pool_saturated, s.errors, s.completed),
        (1, 1, 1),
        "{s:?}"
    );
    pool.shutdown().await.unwrap();
}

/// docs/reliability.md:186-187 (recycling): "No call fails because its worker was
/// recycled", and with `pool_size = 1` calls "wait in the queue (within
/// `queue_timeout_ms`) for its replacement". `recycle_after_calls = 1`, one
/// worker, 40 concurrent callers: every call succeeds with its own reply,
/// each worker serves exactly one call (docs/reliability.md:189-191: "serves
/// at most its limit ... plus the calls already running on it ... none for a
/// worker that takes one call at a time"), the pool returns to idle, and
/// after `shutdown()` none of the workers
/// that served is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycling_after_every_call_on_one_worker_fails_no_call() {
    let panics = count_panics();
    let pool = builder(TestWorker::new())
        .configure(|c| {
            c.recycle_after_calls = 1;
            c.queue_timeout = Duration::from_secs(60);
        })
        .size(1)
        .start()
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let p = pool.clone();
        tasks.push(tokio::spawn(async move {
            p.execute("echo", json!({"token": i})).await.map(|v| (i, v))
        }));
    }
    let mut pids = std::collections::HashSet::new();
    for t in tasks {
        let (i, v) = t.await.unwrap().unwrap();
        assert_eq!(v["echoed"]["token"], json!(i));
        assert_eq!(v["served"], 1, "a worker served past its limit of 1: {v}");
        assert!(pids.insert(v["pid"].as_u64().unwrap() as u32), "{v}");
    }
    let s = pool.stats();
    eprintln!("{} pids, {s:?}", pids.len());
    assert!(settled(&pool, 1).await, "{:?}", pool.stats());
    pool.shutdown().await.unwrap();
    for pid in pids {
        assert!(eventually(10, || !alive(pid)).await, "orphan {pid}");
    }
    assert_eq!(panics.load(Ordering::SeqCst), 0);
}

/// `Pool::execute_stream` (crates/core/src/pool/stream.rs:25):
/// "Dropping the stream cancels the call"; `StreamItem::Done` (stream.rs:79): "The final
/// result; nothing follows it". A stream of 5,000 chunks dropped after 3:
/// the worker then answers each next call with that call's own reply; a
/// command that sends no chunk streams just its `Done`; the counters add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_mid_way_leaves_its_worker_serving_the_right_replies() {
    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    let mut stream = pool
        .execute_stream("stream", json!({"n": 5000}), CallOptions::new())
        .await
        .unwrap();
    for _ in 0..3 {
        assert!(matches!(
            next(&mut stream).await,
            Some(Ok(StreamItem::Chunk(_)))
        ));
    }
    drop(stream);
    for i in 0..5 {
        let r = pool.execute("echo", json!({"token": i})).await.unwrap();
        assert_eq!(r["echoed"]["token"], json!(i));
    }
    let mut s = pool
        .execute_stream("echo", json!({"token": "x"}), CallOptions::new())
        .await
        .unwrap();
    let item = next(&mut s).await.unwrap().unwrap();
    match item {
        StreamItem::Done(v) => assert_eq!(v["echoed"]["token"], "x"),
        other => panic!("{other:?}"),
    }
    assert!(next(&mut s).await.is_none());
    assert!(settled(&pool, 1).await, "{:?}", pool.stats());
    let st = pool.stats();
    assert_eq!(
        st.requests,
        st.completed + st.errors + st.cancelled,
        "{st:?}"
    );
    pool.shutdown().await.unwrap();
}

/// README.md:22: the pool "restarts workers that die";
/// docs/reliability.md:152: "The replacement starts at once." Listeners run on
/// the task where the event happened (crates/core/src/events.rs:4-5), and
/// `WorkerExited` is emitted inside the slot's supervisor task
/// (supervise.rs). A listener that panicked on it killed that task, so the
/// slot was never refilled: a pool of one had no worker from then on, with
/// no event, log or error saying so, and every call waited out its timeout.
/// A panicking listener now loses its event, and the worker is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_listener_does_not_keep_a_dead_worker_from_being_replaced() {
    let pool = builder(TestWorker::new())
        .on_event(|e| {
            if let snakepit_core::events::EventKind::WorkerExited { .. } = e.kind {
                panic!("listener bug");
            }
        })
        .size(1)
        .start()
        .await
        .unwrap();
    let pid = pool.worker_pids()[0];
    kill_9(pid);
    let came_back = eventually(15, || {
        let p = pool.worker_pids();
        p.len() == 1 && p[0] != pid
    })
    .await;
    eprintln!("{:?}", pool.stats());
    let r = pool
        .execute_with(
            "echo",
            json!({}),
            CallOptions::new().timeout(Duration::from_secs(3)),
        )
        .await;
    eprintln!("{r:?}");
    assert!(came_back, "the slot was never refilled: {:?}", pool.stats());
    pool.shutdown().await.unwrap();
}

/// `Pool::execute_stream` (crates/core/src/pool/stream.rs:27-30): "No
/// chunk is lost"; `Stats` (stats.rs:11): "every figure consistent with
/// what callers saw"; `Pool::shutdown` (pool.rs:413-416). One worker that
/// runs several calls at once, health checks every 5 ms, `pipeline_depth =
/// u32::MAX`, 600 callers mixing one-shot calls and streams, half dropped at
/// a random 0-8 ms: each reply is its caller's, each stream read to its end
/// has every chunk in order, the counters add up, the pool returns to idle,
/// and shutdown leaves no worker and empty stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_async_worker_with_streams_health_checks_and_random_cancellation() {
    let panics = count_panics();
    let mut adapter = TestWorker::new();
    adapter.extra_args = vec!["--async".into()];
    let pool = builder(adapter)
        .configure(|c| {
            c.health_check_interval = Duration::from_millis(5);
            c.pipeline_depth = u32::MAX;
            c.max_queue_size = 2000;
        })
        .size(1)
        .start()
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..600u64 {
        let p = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut seed = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let r = xorshift(&mut seed);
            let us = xorshift(&mut seed) % 8000;
            let limit = Duration::from_micros(us);
            if r % 2 == 0 {
                let call = p.execute("asleep", json!({"ms": 1, "token": i}));
                let out = if r % 4 == 0 {
                    Some(call.await)
                } else {
                    tokio::time::timeout(limit, call).await.ok()
                };
                match out {
                    Some(Ok(v)) => assert_eq!(v["token"], json!(i), "caller {i} got {v}"),
                    Some(Err(e)) => eprintln!("call error {e:?}"),
                    None => {}
                }
            } else {
                let read = async {
                    let mut s = p
                        .execute_stream("stream", json!({"n": 50}), CallOptions::new())
                        .await?;
                    let mut n = 0;
                    while let Some(item) = next(&mut s).await {
                        match item? {
                            StreamItem::Chunk(c) => {
                                assert_eq!(c["i"], json!(n));
                                n += 1;
                            }
                            StreamItem::Done(v) => {
                                assert_eq!((v["done"].clone(), n), (json!(50), 50));
                            }
                            other => panic!("{other:?}"),
                        }
                    }
                    Ok::<_, Error>(())
                };
                if r % 4 == 1 {
                    if let Err(e) = read.await {
                        eprintln!("stream error {e:?}");
                    }
                } else {
                    let _ = tokio::time::timeout(limit, read).await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(settled(&pool, 1).await, "{:?}", pool.stats());
    let s = pool.stats();
    eprintln!("{s:?}");
    assert_eq!(s.requests, 600, "{s:?}");
    assert_eq!(s.requests, s.completed + s.errors + s.cancelled, "{s:?}");
    let pid = pool.worker_pids()[0];
    pool.shutdown().await.unwrap();
    assert!(eventually(10, || !alive(pid)).await);
    let s = pool.stats();
    assert_eq!((s.workers, s.in_flight, s.queued), (0, 0, 0), "{s:?}");
    assert_eq!(panics.load(Ordering::SeqCst), 0);
}
