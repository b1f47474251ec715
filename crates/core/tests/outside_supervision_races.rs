//! An outside tester's pass over supervision when two of its events race
//! (docs/reliability.md, `PoolConfig`'s rustdoc in src/config.rs): a worker
//! dying while its recycle replacement backs off, `retry_starts()` during
//! that back-off, `shutdown()` during it, health checks racing idle
//! recycling, and `worker_ttl` racing `recycle_after_calls`, each on a
//! pool of one worker, with the bridge-based test worker
//! (`TEST_FAIL_IF_EXISTS` makes every start fail while a file exists).

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use snakepit_core::{Pool, PoolBuilder, PoolConfig};

/// `pool`, of one worker, configured by `configure`, started.
async fn one_worker_pool(pool: PoolBuilder, configure: impl FnOnce(&mut PoolConfig)) -> Pool {
    pool.size(1).configure(configure).start().await.unwrap()
}

/// The test worker, whose every start fails while the returned file
/// (under a temp dir of `tag`, not made yet) exists.
fn refused_while_a_file_exists(tag: &str) -> (TestWorker, PathBuf) {
    let refuse = temp_dir(tag).join("refuse");
    let mut adapter = TestWorker::new();
    adapter
        .env
        .push(("TEST_FAIL_IF_EXISTS".into(), refuse.display().to_string()));
    (adapter, refuse)
}

/// The pid that served a call (`r`), or a panic naming `what` failed.
fn served_by(pool: &Pool, r: &snakepit_core::Result<serde_json::Value>, what: &str) -> u64 {
    r.as_ref()
        .ok()
        .and_then(|v| v["pid"].as_u64())
        .unwrap_or_else(|| panic!("{what} failed: {r:?} ({:?})", pool.stats()))
}

/// Makes a `pid` call, which must succeed (`what` names it if not), and
/// notes the worker that served it in `seen`.
async fn call_noting_pid(pool: &Pool, seen: &mut BTreeSet<u32>, what: &str) {
    let r = pool
        .execute("pid", json!({}))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e} ({:?})", pool.stats()));
    seen.insert(r["pid"].as_u64().unwrap() as u32);
}

/// [`call_noting_pid`] for `secs` seconds, `pause` between calls.
async fn calls_for(pool: &Pool, secs: u64, pause: Duration, seen: &mut BTreeSet<u32>) {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut n = 0;
    while Instant::now() < until {
        call_noting_pid(pool, seen, &format!("call {n}")).await;
        n += 1;
        tokio::time::sleep(pause).await;
    }
}

/// No call failed, no worker crashed, was restarted or failed to start.
fn assert_nothing_failed(s: &snakepit_core::Stats) {
    assert_eq!(
        (s.errors, s.crashes, s.restarts, s.start_failures),
        (0, 0, 0, 0),
        "{s:?}"
    );
}

/// Shuts `pool` down; none of the workers `seen` is left behind.
async fn shut_down_leaving_none_of(pool: Pool, seen: BTreeSet<u32>) {
    pool.shutdown().await.unwrap();
    for pid in seen {
        assert!(
            eventually(5, || !alive(pid)).await,
            "worker {pid} left behind"
        );
    }
}

/// A pool of one worker recycled after 5 calls, whose replacements
/// fail to start while the returned file exists, with a long
/// `restart_backoff_max` (the back-off a failed recycle waits).
async fn pool_with_a_failed_recycle(tag: &str) -> (Pool, u32, PathBuf) {
    let (adapter, refuse) = refused_while_a_file_exists(tag);
    let pool = one_worker_pool(builder(adapter), |c| {
        c.recycle_after_calls = 5;
        c.restart_backoff_max = Duration::from_secs(30);
        c.queue_timeout = Duration::from_secs(8);
    })
    .await;
    let old = pool.worker_pids()[0];
    std::fs::write(&refuse, "").unwrap();
    for n in 0..6 {
        pool.execute("pid", json!({}))
            .await
            .unwrap_or_else(|e| panic!("call {n}: {e}"));
    }
    assert!(
        eventually(15, || pool.stats().start_failures >= 1).await,
        "the recycle's replacement was tried and failed: {:?}",
        pool.stats()
    );
    // Starts work again from here.
    std::fs::remove_file(&refuse).unwrap();
    (pool, old, refuse)
}

/// docs/reliability.md ("Crashes stay contained"): "The replacement starts
/// at once. A worker that dies within a second of its handshake ... counts
/// as a failed start"; a worker that lived longer is replaced at once
/// (`PoolConfig::restart_backoff` rustdoc, src/config.rs: "A worker that
/// lived longer is replaced at once."). And "If the replacement cannot
/// start, the old worker takes calls again" (Recycling): so the old worker
/// is the slot's worker, and its death must be replaced at once, not after
/// the recycle's back-off (up to `restart_backoff_max`, 30 s here). A call
/// made after the kill waits in the queue (pool of one) and must be served
/// within its 8 s queue timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dying_during_its_recycles_back_off_is_replaced_at_once() {
    let (pool, old, _refuse) = pool_with_a_failed_recycle("sup-race-die").await;
    // Let it live past its first second, then kill it from outside.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    kill_9(old);
    assert!(eventually(5, || !alive(old)).await);
    let r = pool.execute("pid", json!({})).await;
    let pid = served_by(&pool, &r, "the call waiting for a replacement");
    assert_ne!(pid, u64::from(old));
    pool.shutdown().await.unwrap();
}

/// docs/reliability.md: "`Pool::retry_starts()` tries that start at once,
/// in every slot waiting out a back-off or a cool-down, for when the cause
/// is fixed." A recycle whose replacement failed waits out a back-off
/// (up to `restart_backoff_max`, 30 s here) before the next attempt:
/// `retry_starts()` must end it, so the worker is recycled within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_starts_ends_a_failed_recycles_back_off() {
    let (pool, old, _refuse) = pool_with_a_failed_recycle("sup-race-retry").await;
    pool.retry_starts();
    assert!(
        eventually(6, || pool.stats().recycled == 1).await,
        "retry_starts() recycled the worker at once: {:?}",
        pool.stats()
    );
    let r = pool.execute("pid", json!({})).await.unwrap();
    assert_ne!(r["pid"].as_u64(), Some(u64::from(old)));
    pool.shutdown().await.unwrap();
}

/// `PoolConfig::shutdown_grace_period` (src/config.rs): "How long shutdown
/// waits for in-flight calls and for workers to exit before signalling
/// them". `shutdown()` during a failed recycle's back-off (30 s) must not
/// wait that back-off out, and leaves no worker behind; the counters stay
/// exact (one failed start, nothing recycled, restarted or crashed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_failed_recycles_back_off_returns_and_leaves_nothing() {
    let (pool, old, _refuse) = pool_with_a_failed_recycle("sup-race-shut").await;
    let s = pool.stats();
    assert_eq!(
        (
            s.recycled,
            s.restarts,
            s.crashes,
            s.start_failures,
            s.errors
        ),
        (0, 0, 0, 1, 0),
        "{s:?}"
    );
    let began = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), pool.shutdown())
        .await
        .expect("shutdown() returned within its bound")
        .unwrap();
    assert!(began.elapsed() < Duration::from_secs(10));
    assert!(!alive(old), "the worker is gone once shutdown() returned");
}

/// docs/reliability.md: "No call fails because its worker was recycled",
/// "each idle worker is pinged on its own and withheld from callers only
/// while its own ping is in flight", and `worker_idle_timeout` "(the
/// pool's health checks are not calls)". A pool of one, pinged every
/// 20 ms and recycled after 150 ms idle, called in bursts with idle gaps:
/// recycles land while pings are in flight; every call succeeds, no crash,
/// restart or failed start is counted, and every worker seen is gone
/// after `shutdown()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_recycling_racing_health_checks_fails_no_call() {
    let pool = one_worker_pool(builder(TestWorker::new()), |c| {
        c.health_check_interval = Duration::from_millis(20);
        c.health_check_timeout = Duration::from_secs(3);
        c.worker_idle_timeout = Duration::from_millis(150);
        c.queue_timeout = Duration::from_secs(10);
    })
    .await;
    let mut seen = BTreeSet::new();
    for round in 0..12u64 {
        for n in 0..3 {
            call_noting_pid(&pool, &mut seen, &format!("round {round} call {n}")).await;
        }
        // Gaps about the idle limit, and every third one well past it.
        let gap = if round % 3 == 2 {
            450
        } else {
            120 + 20 * (round % 4)
        };
        tokio::time::sleep(Duration::from_millis(gap)).await;
    }
    seen.extend(pool.worker_pids());
    let s = pool.stats();
    assert!(s.recycled >= 1, "idle recycling happened: {s:?}");
    assert_nothing_failed(&s);
    shut_down_leaving_none_of(pool, seen).await;
}

/// docs/reliability.md, Recycling: `recycle_after_calls` and
/// `worker_ttl_ms` both on, due at about the same time, pool of one:
/// "No call fails because its worker was recycled", and with `pool_size =
/// 1` calls wait for the replacement ("a pause of the whole pool of up to
/// one start-up"). Each worker is replaced once (no double recycle: the
/// counter of recycles is the number of workers seen minus one), nothing
/// counts as a crash or a restart, nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_and_call_limit_due_together_recycle_each_worker_once() {
    let pool = one_worker_pool(builder(TestWorker::new()), |c| {
        c.recycle_after_calls = 20;
        c.worker_ttl = Duration::from_millis(400);
        c.queue_timeout = Duration::from_secs(10);
    })
    .await;
    let mut seen = BTreeSet::new();
    calls_for(&pool, 3, Duration::from_millis(18), &mut seen).await;
    // Freeze: no more recycling by TTL can sneak in between the reads.
    let s = pool.stats();
    let now = pool.worker_pids();
    let s2 = pool.stats();
    if s.recycled == s2.recycled {
        let mut all = seen.clone();
        all.extend(now);
        assert_eq!(
            s.recycled as usize,
            all.len() - 1,
            "one recycle per replaced worker: {s:?}, workers {all:?}"
        );
    }
    assert!(s.recycled >= 2, "{s:?}");
    assert_nothing_failed(&s);
    shut_down_leaving_none_of(pool, seen).await;
}

/// A pool of one whose worker is killed while starts fail (the returned
/// file exists), with `configure`'s breaker settings.
async fn pool_whose_worker_died_and_cannot_start(
    tag: &str,
    threshold: u32,
    cooldown: Duration,
) -> (Pool, u32, PathBuf) {
    let (adapter, refuse) = refused_while_a_file_exists(tag);
    let pool = one_worker_pool(builder(adapter), |c| {
        c.breaker_threshold = threshold;
        c.breaker_cooldown = cooldown;
        c.restart_backoff_max = Duration::from_millis(200);
        c.queue_timeout = Duration::from_secs(10);
    })
    .await;
    let old = pool.worker_pids()[0];
    // It lived past its first second: its end is a crash, not a failed start.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&refuse, "").unwrap();
    kill_9(old);
    (pool, old, refuse)
}

/// docs/reliability.md: "Calls waiting in the queue go to other workers"
/// and, below the breaker's threshold, the supervisor backs off and tries
/// again; `PoolConfig::breaker_threshold` (src/config.rs): only once it
/// opens do "callers then fail fast ... when no worker is left". A pool of
/// one whose replacement dies in its start a few times (below a threshold
/// of 50): the call waiting in the queue is served by the replacement that
/// finally starts; the counters are exact: one restart, no crash (no call
/// was on the dead worker), no error, no recycle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_call_outlives_replacements_dying_in_their_start() {
    let (pool, old, refuse) =
        pool_whose_worker_died_and_cannot_start("sup-race-init", 50, Duration::from_secs(30)).await;
    let pool = std::sync::Arc::new(pool);
    let caller = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("pid", json!({})).await })
    };
    assert!(
        eventually(10, || pool.stats().start_failures >= 2).await,
        "{:?}",
        pool.stats()
    );
    std::fs::remove_file(&refuse).unwrap();
    let r = caller.await.unwrap();
    let pid = served_by(&pool, &r, "the queued call");
    assert_ne!(pid, u64::from(old));
    let s = pool.stats();
    assert_eq!(
        (s.restarts, s.crashes, s.errors, s.recycled),
        (1, 0, 0, 0),
        "{s:?}"
    );
    assert!(s.start_failures >= 2, "{s:?}");
    pool.shutdown().await.unwrap();
    assert!(eventually(5, || !alive(pid as u32)).await);
}

/// `PoolConfig::breaker_cooldown` (src/config.rs): "How long an open
/// breaker waits before trying again"; `shutdown_grace_period`: "How long
/// shutdown waits for in-flight calls and for workers to exit before
/// signalling them". `shutdown()` while the breaker waits a 60 s cool-down
/// returns at once (within 10 s here) and leaves nothing behind; before
/// it, with the breaker open and no worker left, a call fails fast with
/// `Error::StartFailed` (docs/reliability.md), and the counters are exact
/// (one failed start, no restart, no recycle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_an_open_breakers_cool_down_returns_at_once() {
    let (pool, old, _refuse) =
        pool_whose_worker_died_and_cannot_start("sup-race-breaker", 1, Duration::from_secs(60))
            .await;
    assert!(
        eventually(10, || pool.stats().start_failures >= 1).await,
        "{:?}",
        pool.stats()
    );
    // The breaker is open and no worker is left: a call fails fast.
    let r = tokio::time::timeout(Duration::from_secs(5), pool.execute("pid", json!({})))
        .await
        .expect("a call with the breaker open and no worker fails fast");
    assert!(
        matches!(r, Err(snakepit_core::Error::StartFailed(_))),
        "{r:?}"
    );
    let s = pool.stats();
    assert_eq!(
        (s.restarts, s.recycled, s.start_failures),
        (0, 0, 1),
        "{s:?}"
    );
    tokio::time::timeout(Duration::from_secs(10), pool.shutdown())
        .await
        .expect("shutdown() did not wait out the cool-down")
        .unwrap();
    assert!(!alive(old));
}

/// `workers/outside_supervision_races.py`, its switches in `dir`.
struct Switched {
    dir: PathBuf,
}

impl snakepit_core::Adapter for Switched {
    fn launch(&self) -> snakepit_core::Launch {
        snakepit_core::Launch::new(python())
            .arg(root().join("crates/core/tests/workers/outside_supervision_races.py"))
            .arg(&self.dir)
            .env("PYTHONPATH", root().join("bridges/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
    }
}

/// docs/reliability.md: "A worker that stops answering health pings is
/// taken out of routing, then killed and replaced" and "No call fails
/// because its worker was recycled". A pool of one whose worker is due by
/// `worker_ttl` (500 ms) while its health ping hangs (timeout 1 s), its
/// replacement taking 1.5 s to start: the health check times out on the
/// worker mid-recycle (the events show it). A call
/// made meanwhile waits (pool of one) and is served by a new worker; the
/// hung worker is killed, no call fails, nothing counts as a crash, and no
/// process is left after `shutdown()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_timing_out_on_a_worker_mid_recycle_fails_no_call() {
    let dir = temp_dir("sup-race-health");
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = events.clone();
    let pool = one_worker_pool(
        builder(Switched { dir: dir.clone() }).on_event(move |e| match e.kind {
            snakepit_core::events::EventKind::HealthCheckFailed { pid, .. } => {
                log.lock().unwrap().push(format!("unhealthy {pid}"))
            }
            snakepit_core::events::EventKind::WorkerRecycled { pid, .. } => {
                log.lock().unwrap().push(format!("recycled {pid}"))
            }
            _ => {}
        }),
        |c| {
            c.health_check_interval = Duration::from_millis(100);
            c.health_check_timeout = Duration::from_millis(1000);
            c.worker_ttl = Duration::from_millis(500);
            c.queue_timeout = Duration::from_secs(15);
        },
    )
    .await;
    let old = pool.worker_pids()[0];
    std::fs::write(dir.join("slow"), "").unwrap();
    std::fs::write(dir.join("hang"), old.to_string()).unwrap();
    let mut seen = BTreeSet::from([old]);
    // Calls across the race: before the ping hangs, while it does, while
    // the replacement starts, after.
    calls_for(&pool, 4, Duration::from_millis(150), &mut seen).await;
    std::fs::remove_file(dir.join("slow")).unwrap();
    assert!(
        eventually(10, || !alive(old)).await,
        "the hung worker was stopped"
    );
    let r = pool.execute("pid", json!({})).await.unwrap();
    assert_ne!(r["pid"].as_u64(), Some(u64::from(old)));
    seen.extend(pool.worker_pids());
    let s = pool.stats();
    let events = events.lock().unwrap().clone();
    // The race happened: the old worker's ping timed out.
    assert!(
        events.contains(&format!("unhealthy {old}")),
        "{events:?} {s:?}"
    );
    assert_eq!((s.errors, s.crashes), (0, 0), "{s:?} {events:?}");
    shut_down_leaving_none_of(pool, seen).await;
}
