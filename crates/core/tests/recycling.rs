//! Recycling by calls and health checks under load (issue 12, items 12-14):
//! a worker recycled after a number of calls serves about that many, and a
//! health check neither hands out the worker it killed nor holds up the
//! workers it is not pinging.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;
use snakepit_core::events::EventKind;
use snakepit_core::Error;

/// Freezes a process, as a deadlock in a worker would.
#[allow(clippy::disallowed_methods)] // `kill`, not a worker
fn stop(pid: u32) {
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(stopped, "kill -STOP {pid}");
}

/// 64 callers make 600 fast calls on two workers recycled after 50 calls:
/// each worker stops taking calls at its limit (drawn within ±10%), its
/// replacement is started before that, and no call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_recycled_by_calls_serves_about_its_limit() {
    const LIMIT: u64 = 50;
    const CALLS: usize = 600;
    let running = Arc::new(AtomicBool::new(true));
    let recycled_during_run = Arc::new(AtomicUsize::new(0));
    let (flag, count) = (running.clone(), recycled_during_run.clone());
    let pool = builder(TestWorker::new())
        .size(2)
        .configure(|c| c.recycle_after_calls = LIMIT)
        .on_event(move |e| {
            if matches!(
                e.kind,
                EventKind::WorkerRecycled {
                    reason: "calls",
                    ..
                }
            ) && flag.load(Ordering::SeqCst)
            {
                count.fetch_add(1, Ordering::SeqCst);
            }
        })
        .start()
        .await
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..64)
        .map(|_| {
            let (pool, next) = (pool.clone(), next.clone());
            tokio::spawn(async move {
                let mut pids = Vec::new();
                while next.fetch_add(1, Ordering::SeqCst) < CALLS {
                    let r = pool
                        .execute("pid", json!({}))
                        .await
                        .unwrap_or_else(|e| panic!("call failed during recycling: {e}"));
                    pids.push(r["pid"].as_u64().unwrap());
                }
                pids
            })
        })
        .collect();
    let mut served: HashMap<u64, u64> = HashMap::new();
    for c in callers {
        for pid in c.await.unwrap() {
            *served.entry(pid).or_default() += 1;
        }
    }
    running.store(false, Ordering::SeqCst);
    let mut counts: Vec<u64> = served.values().copied().collect();
    counts.sort_unstable();
    eprintln!(
        "calls served per worker: {counts:?}; recycled during the run: {}",
        recycled_during_run.load(Ordering::SeqCst)
    );
    // The drawn limit is at most 10% above the setting, and calls written ahead never take a worker past
    // its limit (up to 16 are written ahead to these workers otherwise). A
    // few calls of margin all the same.
    let most = LIMIT * 11 / 10 + 5;
    for (pid, n) in &served {
        assert!(
            *n <= most,
            "worker {pid} served {n} calls (limit {LIMIT}): {served:?}"
        );
    }
    assert_eq!(served.values().sum::<u64>(), CALLS as u64);
    let min_workers = CALLS as u64 / most;
    assert!(
        served.len() as u64 >= min_workers,
        "{} workers served {CALLS} calls: {served:?}",
        served.len()
    );
    // Recycles happen during the run, not after it (about ten here; half
    // of that on a machine loaded enough to delay the replacements' starts).
    let recycled = recycled_during_run.load(Ordering::SeqCst) as u64;
    assert!(
        recycled >= min_workers / 2,
        "{recycled} recycled during the run: {served:?}"
    );
    let s = pool.stats();
    assert_eq!((s.errors, s.completed), (0, CALLS as u64), "{s:?}");
    assert!(eventually(10, || pool.stats().workers == 2).await);
    pool.shutdown().await.unwrap();
}

/// A worker that fails its health ping is out of routing before it is
/// killed: the call waiting for it gets the replacement, not a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_never_hands_the_worker_it_killed_to_a_queued_call() {
    let failed = Arc::new(Mutex::new(Vec::new()));
    let log = failed.clone();
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| {
            c.health_check_interval = Duration::from_millis(100);
            // Long enough that the call below is queued before the ping
            // gives up, even on a loaded machine.
            c.health_check_timeout = Duration::from_secs(3);
            c.queue_timeout = Duration::from_secs(20);
        })
        .on_event(move |e| {
            if let EventKind::HealthCheckFailed { pid, .. } = e.kind {
                log.lock().unwrap().push(pid);
            }
        })
        .start()
        .await
        .unwrap();
    let hung = pool.worker_pids()[0];
    stop(hung);
    // Its ping is in flight: the next call waits in the queue.
    assert!(
        eventually(10, || pool
            .workers()
            .first()
            .is_some_and(|w| w.health_check && w.in_flight == 0))
        .await,
        "{:?}",
        pool.workers()
    );
    let call = tokio::spawn({
        let pool = pool.clone();
        async move { pool.execute("pid", json!({})).await }
    });
    assert!(
        eventually(5, || pool.stats().queued == 1).await,
        "{:?}",
        pool.stats()
    );
    let r = call
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the queued call failed: {e}"));
    assert_ne!(r["pid"].as_u64(), Some(u64::from(hung)));
    assert_eq!(*failed.lock().unwrap(), vec![hung]);
    assert_eq!(pool.stats().crashes, 0);
    assert!(
        eventually(5, || !alive(hung)).await,
        "the hung worker was killed"
    );
    pool.shutdown().await.unwrap();
}

/// While a hung worker's health ping waits out its timeout, the other
/// workers keep serving: calls with a short queue timeout all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_hung_worker_does_not_hold_up_the_others() {
    let failed = Arc::new(AtomicBool::new(false));
    let flag = failed.clone();
    let pool = builder(TestWorker::new())
        .size(3)
        .configure(|c| {
            c.health_check_interval = Duration::from_millis(100);
            c.health_check_timeout = Duration::from_secs(2);
            c.queue_timeout = Duration::from_millis(300);
        })
        .on_event(move |e| {
            if matches!(e.kind, EventKind::HealthCheckFailed { .. }) {
                flag.store(true, Ordering::SeqCst);
            }
        })
        .start()
        .await
        .unwrap();
    // The first slot's worker is pinged first in a round.
    let hung = pool.workers().iter().find(|w| w.slot == 0).unwrap().pid;
    stop(hung);
    // A ping it answered just before it stopped may still be on its way:
    // that check passes, and the worker would take calls until the next.
    // Its check is seen in flight twice, 300 ms apart (checks come every
    // 100 ms, and one sent after the stop is never answered).
    let checked = || {
        pool.workers()
            .iter()
            .any(|w| w.pid == hung && w.health_check)
    };
    let mut unanswered = false;
    for _ in 0..30 {
        if checked() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if checked() {
                unanswered = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(unanswered, "{:?}", pool.workers());
    let (mut ok, mut queue_timeouts, mut other) = (0, 0, Vec::new());
    // Bounded: the check fails within its 2 s timeout.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while !failed.load(Ordering::SeqCst) && std::time::Instant::now() < until {
        match pool.execute("pid", json!({})).await {
            Ok(r) => {
                assert_ne!(r["pid"].as_u64(), Some(u64::from(hung)));
                ok += 1;
            }
            Err(Error::QueueTimeout(_)) => queue_timeouts += 1,
            Err(e) => other.push(e.to_string()),
        }
    }
    assert!(
        failed.load(Ordering::SeqCst),
        "the hung worker's check failed"
    );
    assert_eq!(queue_timeouts, 0, "{ok} calls succeeded");
    assert!(other.is_empty(), "{other:?}");
    assert!(ok > 0);
    assert!(
        eventually(5, || !alive(hung)).await,
        "the hung worker was killed"
    );
    assert!(eventually(10, || pool.stats().workers == 3).await);
    pool.shutdown().await.unwrap();
}

/// docs/reliability.md: "If the replacement cannot start, the old worker
/// takes calls again, past its limit, until a later attempt (after a
/// back-off) gives it a replacement."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_replacement_cannot_start_serves_past_its_limit() {
    const LIMIT: u64 = 5;
    let refuse = temp_dir("recycle-refused").join("refuse");
    let mut adapter = TestWorker::new();
    adapter
        .env
        .push(("TEST_FAIL_IF_EXISTS".into(), refuse.display().to_string()));
    let pool = builder(adapter)
        .size(1)
        .configure(|c| {
            c.recycle_after_calls = LIMIT;
            c.restart_backoff_max = Duration::from_millis(200);
            c.queue_timeout = Duration::from_secs(20);
        })
        .start()
        .await
        .unwrap();
    let old = pool.worker_pids()[0];
    // From now on no new worker can start.
    std::fs::write(&refuse, "").unwrap();
    // Eight times the limit: every call succeeds, on the old worker.
    for n in 0..LIMIT * 8 {
        let r = pool
            .execute("pid", json!({}))
            .await
            .unwrap_or_else(|e| panic!("call {n} failed: {e}"));
        assert_eq!(r["pid"].as_u64(), Some(u64::from(old)), "call {n}");
    }
    // The replacement is tried beside the calls, not before them: wait
    // for its failure, then the old worker still serves.
    assert!(
        eventually(30, || pool.stats().start_failures >= 1).await,
        "a replacement was tried: {:?}",
        pool.stats()
    );
    for n in 0..LIMIT * 2 {
        let r = pool.execute("pid", json!({})).await.unwrap();
        assert_eq!(r["pid"].as_u64(), Some(u64::from(old)), "call {n} after");
    }
    let s = pool.stats();
    assert_eq!((s.recycled, s.errors, s.crashes), (0, 0, 0), "{s:?}");
    // Once a replacement can start, a later attempt recycles the worker.
    std::fs::remove_file(&refuse).unwrap();
    assert!(
        eventually(30, || pool.stats().recycled >= 1).await,
        "{:?}",
        pool.stats()
    );
    let r = pool.execute("pid", json!({})).await.unwrap();
    assert_ne!(r["pid"].as_u64(), Some(u64::from(old)));
    assert!(
        eventually(10, || !alive(old)).await,
        "the old worker is gone"
    );
    pool.shutdown().await.unwrap();
}
