//! Round 4 of an outside review of pipelined dispatch: calls written ahead
//! into a busy worker's stdin, against workers that misbehave for real
//! (`tests/workers/outside_pipeline_round4.py`, a raw worker that declares
//! `pipeline`) and the Python bridge. Each test checks a promise of
//! `PoolConfig::pipeline_depth`, `Stats` or docs/reliability.md, and that
//! the counters add up afterwards.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use snakepit_core::{Adapter, Affinity, CallOptions, Error, ExitReason, Launch, Pool};

/// The raw pipelining worker, logging the calls it runs to `log`.
struct Round4 {
    log: PathBuf,
}

impl Adapter for Round4 {
    fn launch(&self) -> Launch {
        Launch::new(python())
            .arg(root().join("crates/core/tests/workers/outside_pipeline_round4.py"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("R4_LOG", &self.log)
    }
    fn command_timeout(&self, _: &str) -> Duration {
        Duration::from_secs(60)
    }
}

/// A pool of `size` raw round-4 workers that write up to 16 calls ahead
/// (a window of 200 ms: short calls count as short on a loaded machine),
/// and the log of the calls they ran.
async fn round4_pool(tag: &str, size: usize) -> (Pool, PathBuf) {
    let log = temp_dir(tag).join("ran.log");
    let pool = builder(Round4 { log: log.clone() })
        .size(size)
        .configure(|c| {
            c.pipeline_depth = 16;
            c.pipeline_max_call = Duration::from_millis(200);
            c.shutdown_grace_period = Duration::from_secs(5);
        })
        .start()
        .await
        .unwrap();
    (pool, log)
}

/// How often the worker logged `what` (`ran`, `read`) for `token`.
fn logged(log: &Path, what: &str, token: &str) -> usize {
    let line = format!("{what} {token}");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == line)
        .count()
}

/// `command` with `args` in a task of its own, with a deadline of `timeout`.
fn spawn_call(
    pool: &Pool,
    command: &'static str,
    args: Value,
    options: CallOptions,
) -> tokio::task::JoinHandle<snakepit_core::Result<Value>> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.execute_with(command, args, options).await })
}

fn within(secs: u64) -> CallOptions {
    CallOptions::new().timeout(Duration::from_secs(secs))
}

/// Calls in flight on the worker with pid `pid` (0 if it is not in a slot).
fn in_flight_on(pool: &Pool, pid: u32) -> usize {
    pool.workers()
        .iter()
        .find(|w| w.pid == pid)
        .map_or(0, |w| w.in_flight)
}

/// Short calls, so that every worker's moving average allows writing ahead.
async fn warm_up(pool: &Pool, calls: usize) {
    for _ in 0..calls {
        pool.execute("echo", json!({"token": "warm"}))
            .await
            .unwrap();
    }
}

/// `calls` echoes on `pool`, one after another: how many calls the worker
/// that answered the last one says it has served.
async fn echoes_served(pool: &Pool, calls: usize) -> u64 {
    let mut served = 0;
    for _ in 0..calls {
        served = pool.execute("echo", json!({})).await.unwrap()["served"]
            .as_u64()
            .unwrap();
    }
    served
}

/// Once every call has ended: nothing in flight or queued, and every call
/// counted once (`requests` = `completed` + `errors` + `cancelled`).
async fn counters_add_up(pool: &Pool) -> snakepit_core::Stats {
    assert!(
        eventually(30, || {
            let s = pool.stats();
            s.in_flight == 0 && s.queued == 0
        })
        .await,
        "every call ended: {:?}",
        pool.stats()
    );
    let s = pool.stats();
    assert_eq!(s.requests, s.completed + s.errors + s.cancelled, "{s:?}");
    assert!(
        s.crashes + s.call_timeouts + s.queue_timeouts <= s.errors,
        "{s:?}"
    );
    assert_eq!(s.busy, 0, "{s:?}");
    s
}

/// The pid a successful reply names.
fn pid_of(v: &Value) -> u32 {
    v["pid"].as_u64().unwrap() as u32
}

/// docs/reliability.md: "no caller ever receives another call's reply"
/// (replies are matched by id). A pipelining worker that answers the eight
/// calls written ahead behind one in reverse order, then that one: each
/// caller gets its own reply, every call runs once, nothing is a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_out_of_order_each_reach_their_own_caller() {
    let (pool, log) = round4_pool("r4-reverse", 1).await;
    warm_up(&pool, 20).await;
    let pid = pool.worker_pids()[0];
    let front = spawn_call(
        &pool,
        "reverse",
        json!({"k": 8, "token": "front"}),
        within(60),
    );
    assert!(eventually(20, || in_flight_on(&pool, pid) == 1).await);
    let behind: Vec<_> = (0..8)
        .map(|n| spawn_call(&pool, "echo", json!({"token": format!("e{n}")}), within(60)))
        .collect();
    let r = front.await.unwrap().unwrap();
    assert_eq!(r["token"], "front");
    for (n, call) in behind.into_iter().enumerate() {
        let r = call.await.unwrap().unwrap();
        assert_eq!(r["token"], format!("e{n}"), "{r}");
        assert_eq!(r["reversed"], true, "answered out of order: {r}");
        assert_eq!(logged(&log, "ran", &format!("e{n}")), 1);
    }
    let s = counters_add_up(&pool).await;
    assert_eq!((s.completed, s.errors), (20 + 9, 0), "{s:?}");
    assert_eq!((s.crashes, s.restarts), (0, 0), "{s:?}");
    pool.shutdown().await.unwrap();
}

/// docs/reliability.md: a worker that sends "a reply nobody asked for" is
/// replaced, and "a call given to that worker in between (written ahead
/// ...) ends with it: if the worker never read it, it goes to another
/// worker; if it did, it fails"; ARCHITECTURE.md: "anything that may have
/// run is never re-sent". The worker here reads the calls written ahead
/// and runs them (they are instant) before the pool's kill lands, its
/// replies unread behind the bad one: none of them may run twice. (The
/// reader used to take the calls behind the first one in flight to have
/// never run, one at a time and in order, and sent them again though it
/// stopped reading at the break: they ran twice.)
/// `answered`: the bad call's own reply comes before the stray one (so the
/// call right behind it may have started); otherwise the bad call is the
/// one that may have run, and fails, and every call behind it runs
/// elsewhere.
async fn a_stray_reply_with_calls_written_ahead(command: &'static str, tag: &str, answered: bool) {
    let (pool, log) = round4_pool(tag, 1).await;
    warm_up(&pool, 20).await;
    let victim = pool.worker_pids()[0];
    let front = spawn_call(
        &pool,
        "sleep",
        json!({"ms": 1500, "token": "front"}),
        within(60),
    );
    assert!(eventually(20, || in_flight_on(&pool, victim) == 1).await);
    let bad = spawn_call(&pool, command, json!({"token": "bad"}), within(60));
    assert!(eventually(20, || in_flight_on(&pool, victim) == 2).await);
    let behind: Vec<_> = (0..5)
        .map(|n| spawn_call(&pool, "echo", json!({"token": format!("e{n}")}), within(60)))
        .collect();
    assert!(
        eventually(20, || in_flight_on(&pool, victim) == 7).await,
        "all written ahead: {:?}",
        pool.workers()
    );
    assert!(!front.await.unwrap().unwrap().is_null());
    let mut failed = 0;
    match bad.await.unwrap() {
        // The bad call's own reply came first, and is its own.
        Ok(r) if answered => {
            assert_eq!((r["token"].as_str(), pid_of(&r)), (Some("bad"), victim));
        }
        Err(e @ Error::Protocol { .. }) if !answered => {
            assert!(!e.never_ran(), "{e}");
            failed += 1;
        }
        r => panic!("the bad call: {r:?}"),
    }
    for (n, call) in behind.into_iter().enumerate() {
        let token = format!("e{n}");
        match call.await.unwrap() {
            // Never read by the replaced worker: run elsewhere, once.
            Ok(r) => {
                assert_eq!(r["token"], token.as_str());
                assert_ne!(pid_of(&r), victim, "{token} answered after the break");
                assert_eq!(logged(&log, "ran", &token), 1, "{token} ran once");
            }
            // Read by it, so it may have run: failed, never sent again.
            Err(e @ Error::Protocol { .. }) => {
                assert!(!e.never_ran(), "{e}");
                failed += 1;
            }
            Err(e) => panic!("{token}: {e}"),
        }
        assert!(
            logged(&log, "ran", &token) <= 1,
            "{token}, which may have run on the replaced worker, ran twice"
        );
    }
    let s = counters_add_up(&pool).await;
    assert_eq!(
        (s.completed, s.errors),
        (20 + 2 + 5 - failed, failed),
        "{s:?}"
    );
    assert_eq!(s.requests, 20 + 7, "each call counted once: {s:?}");
    assert!(
        eventually(20, || pool
            .worker_pids()
            .first()
            .is_some_and(|&p| p != victim))
        .await
    );
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_reply_to_one_id_fails_only_the_call_that_may_have_started() {
    a_stray_reply_with_calls_written_ahead("twice", "r4-twice", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_an_id_never_sent_fails_only_the_call_that_may_have_started() {
    a_stray_reply_with_calls_written_ahead("stranger", "r4-stranger", false).await;
}

/// docs/reliability.md: "a worker that dies with calls written ahead: the
/// one it was running fails with `WorkerCrashed`; those behind it never ran
/// and go to another worker, counted once". `die_mid_reply`: the worker
/// dies halfway through its reply (a frame cut short is that crash);
/// `read_ahead_exit`: it reads every call written ahead, then exits without
/// answering. Either way the calls behind run once, elsewhere.
async fn a_death_with_calls_written_ahead(command: &'static str, code: i32, read_ahead: bool) {
    let (pool, log) = round4_pool(command, 2).await;
    // Both workers learn that their calls are short.
    for _ in 0..20 {
        let (a, b) = tokio::join!(
            pool.execute("echo", json!({"token": "warm"})),
            pool.execute("echo", json!({"token": "warm"}))
        );
        a.unwrap();
        b.unwrap();
    }
    // One worker runs a long call, the other the fatal one; the short calls
    // are written ahead to both, in turn.
    let long = spawn_call(
        &pool,
        "sleep",
        json!({"ms": 1500, "token": "long"}),
        within(60),
    );
    assert!(eventually(20, || pool.stats().busy == 1).await);
    let busy = pool
        .workers()
        .iter()
        .find(|w| w.in_flight == 1)
        .unwrap()
        .pid;
    let victim = *pool.worker_pids().iter().find(|&&p| p != busy).unwrap();
    let fatal = spawn_call(
        &pool,
        command,
        json!({"ms": 1000, "token": "fatal"}),
        within(60),
    );
    assert!(eventually(20, || in_flight_on(&pool, victim) == 1).await);
    let behind: Vec<_> = (0..8)
        .map(|n| spawn_call(&pool, "echo", json!({"token": format!("e{n}")}), within(60)))
        .collect();
    let err = fatal.await.unwrap().unwrap_err();
    match &err {
        Error::WorkerCrashed(c) => {
            assert!(matches!(c.exit, ExitReason::Code(c) if c == code), "{err}");
            assert_eq!(c.pid, victim);
        }
        e => panic!("the fatal call: {e}"),
    }
    long.await.unwrap().unwrap();
    let mut read = 0;
    for (n, call) in behind.into_iter().enumerate() {
        let token = format!("e{n}");
        let r = call
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{token}: {e}"));
        assert_eq!(r["token"], token.as_str());
        assert_eq!(logged(&log, "ran", &token), 1, "{token} ran once");
        read += logged(&log, "read", &token);
    }
    if read_ahead {
        assert!(read > 0, "the dying worker read calls written ahead");
    }
    let s = counters_add_up(&pool).await;
    assert_eq!(s.requests, 40 + 10, "each call counted once: {s:?}");
    assert_eq!((s.completed, s.errors, s.crashes), (40 + 9, 1, 1), "{s:?}");
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dying_mid_reply_sends_the_calls_written_ahead_elsewhere() {
    a_death_with_calls_written_ahead("die_mid_reply", 7, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_reads_ahead_then_exits_sends_what_it_read_elsewhere() {
    a_death_with_calls_written_ahead("read_ahead_exit", 5, true).await;
}

/// A Python-bridge pool whose short calls count as short on a loaded
/// machine (a window of 50 ms), `depth` calls written ahead at most.
async fn bridge_pool(size: usize, depth: u32) -> Pool {
    builder(TestWorker::new())
        .size(size)
        .configure(|c| {
            c.pipeline_depth = depth;
            c.pipeline_max_call = Duration::from_millis(50);
            c.shutdown_grace_period = Duration::from_secs(2);
        })
        .start()
        .await
        .unwrap()
}

/// Both workers of a two-worker pool learn that their calls are short.
async fn warm_up_two(pool: &Pool) {
    for _ in 0..20 {
        let (a, b) = tokio::join!(
            pool.execute("echo", json!({})),
            pool.execute("echo", json!({}))
        );
        a.unwrap();
        b.unwrap();
    }
}

/// `PoolConfig::pipeline_depth`: "a call that turns out long, on a worker
/// whose calls were short, holds the calls written ahead behind it". A
/// worker whose calls were short suddenly runs a 4 s call: the calls
/// written ahead behind it stay in its pipe while the other worker goes
/// idle (they do not move), and each still runs there once and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_written_ahead_behind_a_call_that_turns_long_wait_for_it() {
    let pool = bridge_pool(2, 16).await;
    warm_up_two(&pool).await;
    let long = spawn_call(
        &pool,
        "sleep",
        json!({"ms": 4000, "token": "long"}),
        within(60),
    );
    assert!(eventually(20, || pool.stats().busy == 1).await);
    let slow = pool
        .workers()
        .iter()
        .find(|w| w.in_flight == 1)
        .unwrap()
        .pid;
    let short = spawn_call(&pool, "sleep", json!({"ms": 1500}), within(60));
    assert!(eventually(20, || pool.stats().busy == 2).await);
    let echoes: Vec<_> = (0..10)
        .map(|n| spawn_call(&pool, "echo", json!({"n": n}), within(60)))
        .collect();
    assert!(
        eventually(20, || pool.stats().in_flight == 12).await,
        "{:?}",
        pool.workers()
    );
    let on_slow = in_flight_on(&pool, slow);
    assert!(on_slow > 1, "calls were written ahead to the slow worker");
    short.await.unwrap().unwrap();
    // The other worker finishes its share and idles; the calls behind the
    // long one stay where they were written.
    assert!(
        eventually(20, || pool.stats().available == 1).await,
        "{:?}",
        pool.workers()
    );
    assert_eq!(in_flight_on(&pool, slow), on_slow, "{:?}", pool.workers());
    let r = long.await.unwrap().unwrap();
    assert_eq!(pid_of(&r), slow);
    let mut served_by_slow = 0;
    for e in echoes {
        if pid_of(&e.await.unwrap().unwrap()) == slow {
            served_by_slow += 1;
        }
    }
    assert_eq!(served_by_slow, on_slow - 1, "each ran where it was written");
    let s = counters_add_up(&pool).await;
    assert_eq!((s.errors, s.crashes, s.restarts), (0, 0, 0), "{s:?}");
    pool.shutdown().await.unwrap();
}

/// `PoolConfig::pipeline_depth`: "Set 1 to bound that to one." With a depth
/// of 1, a worker that runs an unexpectedly long call holds one call
/// written ahead behind it at most; the other calls are served by the other
/// worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_depth_of_one_holds_one_call_at_most_behind_a_call_that_turns_long() {
    let pool = bridge_pool(2, 1).await;
    warm_up_two(&pool).await;
    let long = spawn_call(&pool, "sleep", json!({"ms": 2000}), within(60));
    assert!(eventually(20, || pool.stats().busy == 1).await);
    let slow = pool
        .workers()
        .iter()
        .find(|w| w.in_flight == 1)
        .unwrap()
        .pid;
    let echoes: Vec<_> = (0..12)
        .map(|n| spawn_call(&pool, "echo", json!({"n": n}), within(60)))
        .collect();
    let mut most = 0;
    while !long.is_finished() {
        most = most.max(in_flight_on(&pool, slow));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(most <= 2, "{most} calls on the slow worker");
    long.await.unwrap().unwrap();
    for e in echoes {
        e.await.unwrap().unwrap();
    }
    counters_add_up(&pool).await;
    pool.shutdown().await.unwrap();
}

/// docs/reliability.md: "a call written ahead whose caller gives up
/// (deadline, dropped future) before it starts never runs ... the call in
/// front is not disturbed". A storm: fifteen calls written ahead behind a
/// 5 s call, ten dropped at random moments and five timed out, all
/// before the front call ends: none runs, the front call completes, the
/// worker stays, and the counters say ten cancelled and five timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_written_ahead_calls_given_up_runs_none_of_them() {
    let pool = bridge_pool(1, 16).await;
    let served = echoes_served(&pool, 20).await;
    let pid = pool.worker_pids()[0];
    let front = spawn_call(
        &pool,
        "sleep",
        json!({"ms": 5000, "token": "front"}),
        within(60),
    );
    assert!(eventually(20, || in_flight_on(&pool, pid) == 1).await);
    let mut dropped: Vec<_> = (0..10)
        .map(|n| spawn_call(&pool, "echo", json!({"n": n}), within(60)))
        .collect();
    let timed: Vec<_> = (0..5)
        .map(|n| {
            let opts = CallOptions::new().timeout(Duration::from_millis(400 + 50 * n));
            spawn_call(&pool, "echo", json!({"t": n}), opts)
        })
        .collect();
    assert!(
        eventually(20, || in_flight_on(&pool, pid) == 16).await,
        "all fifteen written ahead: {:?}",
        pool.workers()
    );
    // `Stats`: calls written ahead are in flight, not queued, and not
    // capacity.
    let s = pool.stats();
    assert_eq!(
        (s.in_flight, s.queued, s.capacity, s.busy),
        (16, 0, 1, 1),
        "{s:?}"
    );
    // Dropped in a scrambled order, a few milliseconds apart.
    for k in [3usize, 7, 0, 9, 5, 1, 8, 2, 6, 4] {
        dropped[k].abort();
        tokio::time::sleep(Duration::from_millis(7 * k as u64)).await;
    }
    for t in timed {
        let err = t.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::CallTimeout { .. }), "{err}");
    }
    assert!(
        !front.is_finished(),
        "the storm ended before the front call"
    );
    for d in dropped.drain(..) {
        assert!(d.await.unwrap_err().is_cancelled());
    }
    let r = front.await.unwrap().unwrap();
    assert_eq!(r["token"], "front", "the front call was not interrupted");
    let next = pool.execute("echo", json!({})).await.unwrap();
    assert_eq!(pid_of(&next), pid, "the worker was kept");
    assert_eq!(
        next["served"].as_u64().unwrap(),
        served + 1,
        "none of the fifteen echoes given up ran"
    );
    let s = counters_add_up(&pool).await;
    assert_eq!((s.cancelled, s.call_timeouts), (10, 5), "{s:?}");
    assert_eq!((s.completed, s.errors), (22, 5), "{s:?}");
    assert_eq!((s.crashes, s.restarts), (0, 0), "{s:?}");
    pool.shutdown().await.unwrap();
}

/// `Affinity::Strict`: a session call waits for its worker, "written ahead
/// to it" while its calls are short; "if that worker dies meanwhile, the
/// call goes to whichever worker is free first". The session's worker is
/// SIGKILLed with four of its calls written ahead: the call it ran is a
/// crash, the four never ran and are answered by another worker, each
/// counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_session_calls_written_ahead_to_a_worker_that_dies_go_elsewhere_once() {
    let pool = bridge_pool(2, 16).await;
    warm_up_two(&pool).await;
    let strict = || {
        CallOptions::new()
            .session("s1")
            .affinity(Affinity::Strict)
            .timeout(Duration::from_secs(60))
    };
    let first = pool
        .execute_with("echo", json!({}), strict())
        .await
        .unwrap();
    let victim = pid_of(&first);
    let marker = temp_dir("r4-strict").join("marker");
    let front = spawn_call(
        &pool,
        "sleep",
        json!({"ms": 30_000, "marker": marker.display().to_string()}),
        strict(),
    );
    assert!(eventually(20, || marker.exists()).await, "the call started");
    let behind: Vec<_> = (0..4)
        .map(|n| spawn_call(&pool, "echo", json!({"n": n}), strict()))
        .collect();
    assert!(
        eventually(20, || in_flight_on(&pool, victim) == 5).await,
        "written ahead to the session's worker: {:?}",
        pool.workers()
    );
    kill_9(victim);
    assert!(front.await.unwrap().unwrap_err().is_crash());
    for (n, call) in behind.into_iter().enumerate() {
        let r = call.await.unwrap().unwrap();
        assert_eq!(r["echoed"]["n"], n);
        assert_ne!(pid_of(&r), victim);
    }
    let s = counters_add_up(&pool).await;
    assert_eq!(s.requests, 40 + 1 + 5, "{s:?}");
    assert_eq!(
        (s.completed, s.errors, s.crashes),
        (40 + 1 + 4, 1, 1),
        "{s:?}"
    );
    pool.shutdown().await.unwrap();
}

/// `pipeline_depth` at 0, 1 and `u32::MAX`, with `pipeline_max_call` at
/// its largest (every call counts as short): sixty callers at once on two
/// workers; every call answers its own caller and the counters add up. At
/// 0 nothing is ever written ahead: at most one call per worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_depths_serve_every_call_once() {
    for depth in [0, 1, u32::MAX] {
        let pool = builder(TestWorker::new())
            .size(2)
            .configure(|c| {
                c.pipeline_depth = depth;
                c.pipeline_max_call = Duration::MAX;
            })
            .start()
            .await
            .unwrap();
        warm_up_two(&pool).await;
        let calls: Vec<_> = (0..60)
            .map(|n| {
                spawn_call(
                    &pool,
                    "sleep",
                    json!({"ms": 2, "token": format!("{n}")}),
                    within(60),
                )
            })
            .collect();
        let mut most = 0;
        while calls.iter().any(|c| !c.is_finished()) {
            most = most.max(
                pool.workers()
                    .iter()
                    .map(|w| w.in_flight)
                    .max()
                    .unwrap_or(0),
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for (n, c) in calls.into_iter().enumerate() {
            assert_eq!(c.await.unwrap().unwrap()["token"], format!("{n}"));
        }
        if depth == 0 {
            assert!(most <= 1, "depth 0 wrote {most} calls to one worker");
        } else {
            assert!(most <= 1 + depth as usize, "depth {depth}: {most}");
        }
        let s = counters_add_up(&pool).await;
        assert_eq!(
            (s.completed, s.errors),
            (40 + 60, 0),
            "depth {depth}: {s:?}"
        );
        pool.shutdown().await.unwrap();
    }
}

/// ARCHITECTURE.md: "no call is written ahead past [a worker's limits]".
/// Workers recycled after about 10 calls (`recycle_after_calls`, each
/// limit within 10%), sixteen callers writing calls ahead: no worker
/// answers more than 11 calls, every call succeeds once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycling_by_calls_holds_with_calls_written_ahead() {
    let pool = builder(TestWorker::new())
        .size(2)
        .configure(|c| {
            c.pipeline_depth = 16;
            c.pipeline_max_call = Duration::from_millis(50);
            c.recycle_after_calls = 10;
        })
        .start()
        .await
        .unwrap();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut most = 0;
                for _ in 0..10 {
                    let r = pool.execute("echo", json!({})).await.unwrap();
                    most = most.max(r["served"].as_u64().unwrap());
                }
                most
            })
        })
        .collect();
    for t in tasks {
        let most = t.await.unwrap();
        assert!(most <= 11, "a worker answered its call number {most}");
    }
    let s = counters_add_up(&pool).await;
    assert_eq!((s.completed, s.errors), (160, 0), "{s:?}");
    assert!(s.recycled > 0, "{s:?}");
    pool.shutdown().await.unwrap();
}

/// docs/reliability.md: at shutdown, "a call still running when the grace
/// period ends ... gets `Error::StoppedByShutdown`"; "a call written ahead
/// that still waits behind the one its worker runs never started: it gets
/// `Error::ShutDown` (`never_ran()`)". Ten calls written ahead behind a
/// 30 s call: each caller hears a typed error, none hangs, none ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_calls_written_ahead_gives_each_caller_a_typed_error() {
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| {
            c.pipeline_depth = 16;
            c.pipeline_max_call = Duration::from_millis(50);
        })
        .start()
        .await
        .unwrap();
    let served = echoes_served(&pool, 20).await;
    assert_eq!(served, 20);
    let pid = pool.worker_pids()[0];
    let marker = temp_dir("r4-shutdown").join("marker");
    let front = spawn_call(
        &pool,
        "sleep",
        json!({"ms": 30_000, "marker": marker.display().to_string()}),
        within(120),
    );
    assert!(eventually(20, || marker.exists()).await);
    let behind: Vec<_> = (0..10)
        .map(|n| spawn_call(&pool, "echo", json!({"n": n}), within(120)))
        .collect();
    assert!(eventually(20, || in_flight_on(&pool, pid) == 11).await);
    tokio::time::timeout(Duration::from_secs(60), pool.shutdown())
        .await
        .expect("shutdown ended")
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), front)
        .await
        .expect("the front caller heard")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, Error::StoppedByShutdown { .. }) && !err.never_ran() && !err.is_crash(),
        "{err}"
    );
    for b in behind {
        let err = tokio::time::timeout(Duration::from_secs(30), b)
            .await
            .expect("the caller behind heard")
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, Error::ShutDown) && err.never_ran(), "{err}");
    }
    let s = pool.stats();
    assert_eq!(s.requests, s.completed + s.errors + s.cancelled, "{s:?}");
    assert_eq!((s.completed, s.errors, s.crashes), (20, 11, 0), "{s:?}");
}

/// ARCHITECTURE.md: "anything that may have run is never re-sent". A
/// pipelining worker that closes its stdout, and goes on running the
/// calls written ahead to it until the pool kills it at the end of the
/// grace period: each of those calls ran there, so none may run again on
/// another worker. (The reader takes the calls behind the first one in
/// flight to have never run only while the worker could still answer:
/// once it lives on past its stdout's end, it may finish the first call
/// unheard and start the next.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_run_after_the_worker_closed_its_stdout_are_never_sent_again() {
    let (pool, log) = round4_pool("r4-closed-stdout", 1).await;
    warm_up(&pool, 20).await;
    let victim = pool.worker_pids()[0];
    let front = spawn_call(
        &pool,
        "close_stdout_go_on",
        json!({"ms": 800, "token": "front"}),
        within(60),
    );
    assert!(eventually(20, || in_flight_on(&pool, victim) == 1).await);
    let behind: Vec<_> = (0..5)
        .map(|n| spawn_call(&pool, "echo", json!({"token": format!("e{n}")}), within(60)))
        .collect();
    assert!(
        eventually(20, || in_flight_on(&pool, victim) == 6).await,
        "all written ahead: {:?}",
        pool.workers()
    );
    assert!(front.await.unwrap().unwrap_err().is_crash());
    for (n, call) in behind.into_iter().enumerate() {
        let token = format!("e{n}");
        match call.await.unwrap() {
            Ok(r) => assert_ne!(pid_of(&r), victim),
            Err(e) => assert!(e.is_crash(), "{token}: {e}"),
        }
        assert!(
            logged(&log, "ran", &token) <= 1,
            "{token} ran on the worker that closed its stdout, and again"
        );
    }
    counters_add_up(&pool).await;
    pool.shutdown().await.unwrap();
}

/// Sleeps of `ms` on `pool`, one after another, `n` of them.
async fn sleeps(pool: &Pool, n: usize, ms: u64) {
    for _ in 0..n {
        pool.execute("sleep", json!({"ms": ms})).await.unwrap();
    }
}

/// docs/reliability.md: "Once its calls are long, nothing is written
/// ahead to it and the next call waits in the pool's queue ... long calls
/// never wait behind each other". A worker that ran a long call is long
/// until its next calls show otherwise: `call` is the third of three long
/// calls in a row; while it runs, the next long call waits in the queue.
async fn the_next_long_call_waits_in_the_queue(pool: &Pool, ms: u64) {
    let pid = pool.worker_pids()[0];
    let running = spawn_call(pool, "sleep", json!({"ms": ms}), within(60));
    assert!(eventually(20, || in_flight_on(pool, pid) == 1).await);
    let next = spawn_call(pool, "sleep", json!({"ms": 10}), within(60));
    assert!(
        eventually(20, || pool.stats().queued == 1
            || in_flight_on(pool, pid) == 2)
        .await,
        "{:?}",
        pool.stats()
    );
    assert_eq!(
        (pool.stats().queued, in_flight_on(pool, pid)),
        (1, 1),
        "a call was written ahead behind a long one: {:?}",
        pool.stats()
    );
    running.await.unwrap().unwrap();
    next.await.unwrap().unwrap();
}

/// `Stats::call_time`: "each worker's moving average over about its last
/// eight calls", and "a health ping is not a call in flight"
/// (`WorkerInfo::health_check`). A worker whose calls take 400 ms, then
/// idles while health pings (each answered in well under a millisecond)
/// come every 20 ms: its average is still that of its calls. After one
/// short call it is still a worker of long calls: the next long call gets
/// nothing written ahead behind it (before the fix in `reader.rs`, the
/// pings had brought its average under a millisecond, the short call kept
/// it there, and a long call was written ahead behind the next one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_pings_do_not_make_a_long_call_worker_look_short() {
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| {
            c.pipeline_depth = 16;
            c.pipeline_max_call = Duration::from_millis(100);
            c.health_check_interval = Duration::from_millis(20);
            c.health_check_timeout = Duration::from_secs(10);
        })
        .start()
        .await
        .unwrap();
    sleeps(&pool, 3, 400).await;
    // Long enough for well over a hundred pings (each one would take an
    // eighth off the average).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let t = pool.stats().call_time.expect("measured");
    assert!(t >= Duration::from_millis(200), "the average is {t:?}");
    pool.execute("echo", json!({})).await.unwrap();
    the_next_long_call_waits_in_the_queue(&pool, 2000).await;
    counters_add_up(&pool).await;
    pool.shutdown().await.unwrap();
}

/// The same of calls given up while written ahead: the worker drops them
/// unrun, answering each at once; those answers say nothing of how long
/// its calls take. A worker whose calls were short runs an 800 ms call,
/// behind which fifteen echoes written ahead time out: its average is
/// that of a long call now, and the next long call gets nothing written
/// ahead behind it (before the fix in `reader.rs`, the fifteen answers
/// brought its average from about 100 ms to 13.5 ms, under the 50 ms
/// window, and a long call was written ahead behind the next one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_dropped_unrun_do_not_make_a_long_call_worker_look_short() {
    let pool = bridge_pool(1, 16).await;
    let served = echoes_served(&pool, 20).await;
    let pid = pool.worker_pids()[0];
    let front = spawn_call(&pool, "sleep", json!({"ms": 800}), within(60));
    assert!(eventually(20, || in_flight_on(&pool, pid) == 1).await);
    let behind: Vec<_> = (0..15)
        .map(|n| {
            let opts = CallOptions::new().timeout(Duration::from_millis(200));
            spawn_call(&pool, "echo", json!({"n": n}), opts)
        })
        .collect();
    for b in behind {
        let err = b.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::CallTimeout { .. }), "{err}");
    }
    front.await.unwrap().unwrap();
    assert!(eventually(20, || pool.stats().in_flight == 0).await);
    let t = pool.stats().call_time.expect("measured");
    assert!(t >= Duration::from_millis(50), "the average is {t:?}");
    the_next_long_call_waits_in_the_queue(&pool, 2000).await;
    let next = pool.execute("echo", json!({})).await.unwrap();
    assert_eq!(next["served"].as_u64(), Some(served + 1), "none ran");
    let s = counters_add_up(&pool).await;
    assert_eq!((s.call_timeouts, s.errors, s.crashes), (15, 15, 0), "{s:?}");
    pool.shutdown().await.unwrap();
}

/// Makes the next call's trace hook take 500 ms (a slow
/// `PoolBuilder::trace_context`, which runs once a call has its worker).
static SLOW_TRACE_HOOK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// ARCHITECTURE.md: "the pool writes nothing ahead behind a stream", and
/// docs/reliability.md's `no_call_waits_behind_a_stream`. A stream
/// written ahead behind a short call, whose call in front ends while the
/// stream is still on its way (its trace hook is slow): once the stream
/// runs, waiting on a reader that never reads, the next call waits in the
/// pool's queue, not in the worker's pipe behind the stream. Before the
/// fix (`Slot::streams_leased`), the front call's reply let calls be
/// written ahead again, since the worker counted the stream only once it
/// was registered: the next call was written behind the stream and waited
/// for its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_is_written_behind_a_stream_whose_call_in_front_ended_first() {
    use std::sync::atomic::Ordering;
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| {
            c.pipeline_depth = 16;
            c.pipeline_max_call = Duration::from_millis(50);
        })
        .trace_context(|| {
            if SLOW_TRACE_HOOK.swap(false, Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(500));
            }
            None
        })
        .start()
        .await
        .unwrap();
    warm_up(&pool, 20).await;
    let pid = pool.worker_pids()[0];
    let front = spawn_call(&pool, "sleep", json!({"ms": 100}), within(60));
    assert!(eventually(20, || in_flight_on(&pool, pid) == 1).await);
    SLOW_TRACE_HOOK.store(true, Ordering::SeqCst);
    let stream = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute_stream(
                "stream",
                json!({"n": 3000}),
                CallOptions::new().timeout(Duration::from_secs(30)),
            )
            .await
        })
    };
    front.await.unwrap().unwrap();
    let stream = stream.await.unwrap().unwrap();
    // The stream runs, and waits for its reader.
    assert!(eventually(20, || in_flight_on(&pool, pid) == 1).await);
    let waiting = spawn_call(
        &pool,
        "echo",
        json!({}),
        CallOptions::new().timeout(Duration::from_secs(2)),
    );
    assert!(
        eventually(20, || pool.stats().queued == 1
            || in_flight_on(&pool, pid) == 2)
        .await,
        "{:?}",
        pool.stats()
    );
    assert_eq!(
        (pool.stats().queued, in_flight_on(&pool, pid)),
        (1, 1),
        "a call was written ahead behind the stream: {:?}",
        pool.stats()
    );
    let err = waiting.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::QueueTimeout(_) | Error::CallTimeout { .. }),
        "{err}"
    );
    drop(stream);
    counters_add_up(&pool).await;
    pool.shutdown().await.unwrap();
}
