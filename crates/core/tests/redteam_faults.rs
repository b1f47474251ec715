//! Red-team tests: workers that misbehave, seen from the pool's public API
//! (docs/reliability.md, "Crashes stay contained"; /work/shared/docs/
//! FAILURES.md, items 2, 3, 4 and 7). Each test runs real Python workers
//! (`tests/workers/redteam_faults_*.py`).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use snakepit_core::{Adapter, CallOptions, Error, ExitReason, Launch, Pool, PoolBuilder};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A unique tag put in every worker's environment, so that a test finds
/// every process of its pool (workers, their children, grandchildren)
/// through `/proc`, whatever the pool says.
fn new_tag(name: &str) -> String {
    format!("{name}-{}-{:?}", std::process::id(), Instant::now())
}

/// One of this test's worker scripts: `redteam_faults_worker.py` (on the
/// Python bridge) or `redteam_faults_raw.py` (no bridge) with a mode.
struct Faults {
    script: &'static str,
    args: Vec<String>,
    env: Vec<(String, String)>,
    tag: String,
}

impl Faults {
    fn bridge(tag: &str) -> Self {
        Faults {
            script: "redteam_faults_worker.py",
            args: vec![],
            env: vec![],
            tag: tag.to_owned(),
        }
    }
    fn raw(mode: &str, tag: &str) -> Self {
        Faults {
            script: "redteam_faults_raw.py",
            args: vec![mode.to_owned()],
            env: vec![],
            tag: tag.to_owned(),
        }
    }
    fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Self {
        self.env
            .push((k.to_owned(), v.as_ref().to_string_lossy().into_owned()));
        self
    }
}

impl Adapter for Faults {
    fn launch(&self) -> Launch {
        let mut l = Launch::new(python())
            .arg(root().join("crates/core/tests/workers").join(self.script))
            .env("PYTHONPATH", root().join("bridges/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("REDTEAM_FAULTS_TAG", &self.tag);
        for a in &self.args {
            l = l.arg(a);
        }
        for (k, v) in &self.env {
            l = l.env(k, v);
        }
        l
    }
    fn command_timeout(&self, _: &str) -> Duration {
        Duration::from_secs(120)
    }
}

fn faults_builder(adapter: Faults) -> PoolBuilder {
    builder(adapter).configure(|c| {
        c.health_check_interval = Duration::ZERO;
        c.queue_timeout = Duration::from_secs(60);
    })
}

/// The pool's call counters: requests, completed, errors, call timeouts,
/// crashes.
fn counts(pool: &Pool) -> (u64, u64, u64, u64, u64) {
    let s = pool.stats();
    (
        s.requests,
        s.completed,
        s.errors,
        s.call_timeouts,
        s.crashes,
    )
}

/// Shuts `pool` down; then no process carrying `tag` is left alive.
async fn shut_down_leaving_nothing(pool: Pool, tag: &str) {
    pool.shutdown().await.unwrap();
    none_left(tag).await;
}

/// No process carrying `tag` is alive, within 10 s.
async fn none_left(tag: &str) {
    assert!(
        eventually(10, || tagged(tag).is_empty()).await,
        "{:?}",
        tagged(tag)
    );
}

/// `n` calls of `command`, each with 600 KiB of arguments (more than the
/// pipe holds) and `timeout`, each on a task of its own.
fn big_calls(
    pool: &Pool,
    command: &'static str,
    n: u64,
    timeout: Duration,
) -> Vec<tokio::task::JoinHandle<snakepit_core::Result<serde_json::Value>>> {
    let big = "x".repeat(600 * 1024);
    (0..n)
        .map(|i| {
            let pool = pool.clone();
            let big = big.clone();
            tokio::spawn(async move {
                pool.execute_with(
                    command,
                    json!({"i": i, "pad": big}),
                    CallOptions::new().timeout(timeout),
                )
                .await
            })
        })
        .collect()
}

/// The live (not zombie) processes carrying `tag` in their environment.
fn tagged(tag: &str) -> Vec<u32> {
    let needle = format!("REDTEAM_FAULTS_TAG={tag}");
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|v| v == needle.as_bytes()) && alive(pid) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

#[allow(unsafe_code)] // kill(2), as an operator or the OOM killer would
fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) on a pid (or group) this test started; no memory involved.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn kill_now(pid: u32) {
    signal(pid as i32, libc::SIGKILL);
}

/// Awaits `f`, failing the test if it takes longer than `secs` (far longer
/// than the behaviour needs, far shorter than the call's own deadline:
/// "at once, not at the deadline").
async fn within<T>(secs: u64, what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not within {secs} s"),
    }
}

fn crash_of(err: &Error) -> &snakepit_core::Crash {
    match err {
        Error::WorkerCrashed(c) => c,
        other => panic!("expected WorkerCrashed, got {other:?}"),
    }
}

async fn one_worker(adapter: Faults) -> (Pool, u32) {
    let pool = faults_builder(adapter).size(1).start().await.unwrap();
    let pid = pool.worker_pids()[0];
    (pool, pid)
}

/// The call's error, once it has finished (the call returns long before
/// its 120 s deadline, or the test fails).
async fn call_error(pool: &Pool, command: &str, args: serde_json::Value) -> Error {
    within(
        30,
        command,
        pool.execute_with(
            command,
            args,
            CallOptions::new().timeout(Duration::from_secs(120)),
        ),
    )
    .await
    .expect_err("the call was to fail")
}

async fn replaced_and_serving(pool: &Pool, old: u32) {
    assert!(
        eventually(30, || pool.worker_pids().len() == 1
            && !pool.worker_pids().contains(&old))
        .await,
        "a replacement started: {:?}",
        pool.worker_pids()
    );
    let r = within(30, "a call after", pool.execute("pid", json!({})))
        .await
        .unwrap();
    assert_ne!(r["pid"].as_u64().unwrap() as u32, old);
}

/// reliability.md: "A worker that exits ... fails exactly the calls in
/// flight on it, each with one `Error::WorkerCrashed` carrying the exit
/// status ... a worker that dies while a child of its own still holds the
/// pipe ... is seen at once ... its group is killed, which takes that child
/// with it". Here the worker exits by itself (`os._exit(3)`), not killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_exits_while_its_child_holds_its_pipes_fails_its_call_with_its_status() {
    let tag = new_tag("exit-child");
    let (pool, worker) = one_worker(Faults::bridge(&tag)).await;
    let held = pool
        .execute("hold_pipes", json!({"how": "child"}))
        .await
        .unwrap();
    let holder = held["holder"].as_u64().unwrap() as u32;
    assert!(alive(holder));
    let err = call_error(&pool, "exit", json!({"code": 3})).await;
    let crash = crash_of(&err);
    assert_eq!((crash.pid, &crash.exit), (worker, &ExitReason::Code(3)));
    assert!(
        crash.stderr_tail.contains("exiting with 3 on purpose"),
        "{}",
        crash.stderr_tail
    );
    assert!(
        eventually(10, || !alive(holder)).await,
        "the child went with the group"
    );
    replaced_and_serving(&pool, worker).await;
    let s = pool.stats();
    assert_eq!((s.requests, s.completed, s.errors, s.crashes), (3, 2, 1, 1));
    shut_down_leaving_nothing(pool, &tag).await;
}

/// The same death with the pipes held by something else than a direct
/// child: a grandchild whose parent exited (still in the worker's group),
/// and a child that kept only the worker's stderr. The call fails at once
/// with SIGKILL, the holder dies with the group, a replacement serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_a_grandchild_or_a_stderr_holder_lives_fails_at_once() {
    for how in ["grandchild", "stderr_only"] {
        let tag = new_tag(how);
        let (pool, worker) = one_worker(Faults::bridge(&tag)).await;
        let held = pool
            .execute("hold_pipes", json!({"how": how}))
            .await
            .unwrap();
        let holder = held["holder"].as_u64().unwrap() as u32;
        assert!(alive(holder), "{how}");
        let call = a_running_sleep(&pool, 60_000, Duration::from_secs(120)).await;
        kill_now(worker);
        let err = within(30, how, call).await.unwrap().unwrap_err();
        let crash = crash_of(&err);
        assert_eq!(
            (crash.pid, &crash.exit),
            (worker, &ExitReason::Signal(libc::SIGKILL)),
            "{how}"
        );
        assert!(
            eventually(10, || !alive(holder)).await,
            "{how}: the holder went with the group"
        );
        replaced_and_serving(&pool, worker).await;
        pool.shutdown().await.unwrap();
        assert!(
            eventually(10, || tagged(&tag).is_empty()).await,
            "{how}: {:?}",
            tagged(&tag)
        );
    }
}

/// A child that left the worker's process group (`setsid`) and holds its
/// stdout: the group kill cannot reach it, yet the death is seen at once
/// (from the process, not the pipe), the call fails, a replacement serves,
/// and the pool's end (run-id kill) takes the child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_an_escaped_child_holds_its_stdout_fails_at_once() {
    let tag = new_tag("escaped");
    let (pool, worker) = one_worker(Faults::bridge(&tag)).await;
    let held = pool
        .execute("hold_pipes", json!({"how": "escaped"}))
        .await
        .unwrap();
    let holder = held["holder"].as_u64().unwrap() as u32;
    let call = a_running_sleep(&pool, 60_000, Duration::from_secs(120)).await;
    kill_now(worker);
    let err = within(30, "the call", call).await.unwrap().unwrap_err();
    assert_eq!(crash_of(&err).exit, ExitReason::Signal(libc::SIGKILL));
    replaced_and_serving(&pool, worker).await;
    pool.shutdown().await.unwrap();
    assert!(
        eventually(10, || !alive(holder)).await,
        "the escaped child outlived the pool"
    );
    none_left(&tag).await;
}

/// A worker that forks mid-call and exits (its child would go on and
/// answer 3 s later): the worker's death fails the call with its exit
/// status; the child goes with the group and never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_forks_and_exits_mid_call_fails_its_call_and_the_fork_dies() {
    let tag = new_tag("fork-exit");
    let (pool, worker) = one_worker(Faults::bridge(&tag)).await;
    let pid_file = temp_dir("fork-exit").join("child.pid");
    let err = call_error(
        &pool,
        "fork_and_exit",
        json!({"ms": 3000, "pid_file": pid_file.display().to_string()}),
    )
    .await;
    let crash = crash_of(&err);
    assert_eq!((crash.pid, &crash.exit), (worker, &ExitReason::Code(0)));
    assert!(eventually(10, || pid_file.exists()).await);
    let child: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        eventually(10, || !alive(child)).await,
        "the fork went with the group"
    );
    replaced_and_serving(&pool, worker).await;
    shut_down_leaving_nothing(pool, &tag).await;
}

/// A worker that daemonizes itself at start (forks, the parent exits, the
/// fork goes on as the worker and may even answer the handshake): whether
/// the start fails (naming the exit) or the pool takes the fork's answer
/// and then sees its worker gone, no fork outlives the pool, and the pool
/// never runs more processes than a worker and its fork per slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_forks_and_exits_at_start_leaves_nothing() {
    let tag = new_tag("fork-start");
    let started = within(
        60,
        "start",
        faults_builder(Faults::bridge(&tag).env("REDTEAM_FORK_AND_EXIT_AT_START", "1"))
            .size(1)
            .configure(|c| c.breaker_cooldown = Duration::from_secs(1))
            .start(),
    )
    .await;
    match started {
        Err(Error::StartFailed(e)) => {
            assert!(e.cause.contains("exit"), "{e:?}");
        }
        Err(other) => panic!("expected StartFailed, got {other:?}"),
        Ok(pool) => {
            // The fork answered the handshake first: the pool then sees the
            // worker it started gone, again and again.
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                let n = tagged(&tag).len();
                assert!(n <= 2, "{n} processes of a one-worker pool");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            pool.shutdown().await.unwrap();
        }
    }
    none_left(&tag).await;
}

/// reliability.md: a worker that "closes its stdout" (here while idle,
/// and it keeps running) is killed and replaced; no call was on it, so
/// nothing counts as a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_that_closes_its_stdout_and_lives_on_is_killed_and_replaced() {
    let tag = new_tag("close-later");
    let (pool, worker) = one_worker(Faults::raw("close_later", &tag)).await;
    let r = pool.execute("close_later", json!({})).await.unwrap();
    assert_eq!(r["pid"].as_u64().unwrap() as u32, worker);
    assert!(
        eventually(20, || !alive(worker)).await,
        "the worker with its stdout closed was killed"
    );
    replaced_and_serving(&pool, worker).await;
    let s = pool.stats();
    assert_eq!((s.requests, s.completed, s.errors, s.crashes), (2, 2, 0, 0));
    shut_down_leaving_nothing(pool, &tag).await;
}

/// Half a frame, then silence (the worker lives on, reads nothing): the
/// call ends at its deadline as `CallTimeout`, the worker is killed after
/// the grace period and replaced, and the counters say one timeout, no
/// crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_frame_then_silence_is_a_call_timeout_and_the_worker_is_replaced() {
    let tag = new_tag("partial-hang");
    let (pool, worker) = one_worker(Faults::raw("partial_hang", &tag)).await;
    let err = within(
        30,
        "the call",
        pool.execute_with(
            "partial",
            json!({}),
            CallOptions::new().timeout(Duration::from_secs(1)),
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::CallTimeout { .. }), "{err:?}");
    assert!(
        eventually(20, || !alive(worker)).await,
        "the worker was killed"
    );
    replaced_and_serving(&pool, worker).await;
    assert!(eventually(10, || pool.stats().in_flight == 0).await);
    assert_eq!(counts(&pool), (2, 1, 1, 1, 0));
    shut_down_leaving_nothing(pool, &tag).await;
}

/// Half a frame, then the worker exits with status 5 while a child of its
/// own holds its stdout: the call fails at once (not at its deadline), and
/// the child dies with the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_frame_then_exit_with_a_child_holding_stdout_fails_at_once() {
    let tag = new_tag("partial-die");
    let (pool, worker) = one_worker(Faults::raw("partial_die", &tag)).await;
    let err = call_error(&pool, "partial", json!({})).await;
    assert!(
        matches!(&err, Error::WorkerCrashed(_) | Error::Protocol { .. }),
        "{err:?}"
    );
    assert!(
        eventually(10, || tagged(&tag)
            .iter()
            .all(|p| pool.worker_pids().contains(p)))
        .await,
        "the worker's child died with its group: {:?} (workers {:?})",
        tagged(&tag),
        pool.worker_pids()
    );
    replaced_and_serving(&pool, worker).await;
    shut_down_leaving_nothing(pool, &tag).await;
}

/// A worker that dies half-way through writing a reply (it exits with
/// status 5, or is SIGKILLed as the OOM killer would, with or without a
/// child of its own holding its stdout). reliability.md: "A worker that
/// exits, is killed or closes its stdout fails exactly the calls in flight
/// on it, each with one `Error::WorkerCrashed` carrying the exit status or
/// signal and the last lines of its stderr". A frame cut short by the
/// writer's death is not a worker breaking the protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_frame_then_death_is_a_crash_carrying_the_exit_status() {
    let mut wrong = Vec::new();
    for (how, child, exit) in [
        ("exit", false, ExitReason::Code(5)),
        ("exit", true, ExitReason::Code(5)),
        ("kill", false, ExitReason::Signal(libc::SIGKILL)),
        ("kill", true, ExitReason::Signal(libc::SIGKILL)),
    ] {
        let tag = new_tag("partial-die-status");
        let (pool, worker) = one_worker(Faults::raw("partial_die", &tag)).await;
        let err = call_error(&pool, "partial", json!({"how": how, "child": child})).await;
        match &err {
            Error::WorkerCrashed(c)
                if c.pid == worker && c.exit == exit && c.stderr_tail.contains("half a frame") => {}
            other => wrong.push(format!("{how}, child {child}: {other:?}")),
        }
        if pool.stats().crashes != 1 {
            wrong.push(format!(
                "{how}, child {child}: stats().crashes = {}",
                pool.stats().crashes
            ));
        }
        pool.shutdown().await.unwrap();
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A worker that stops reading its stdin (its pipe fills with 600 KiB
/// requests) with four calls on it, each with a 2 s deadline, and a fifth
/// call queued behind them: each of the four ends as `CallTimeout` (none
/// hangs on the full pipe), the worker is killed and replaced, the queued
/// call runs on the replacement, and the counters match what the callers
/// saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_reading_times_out_its_calls_and_the_queued_one_reaches_its_replacement(
) {
    let tag = new_tag("stall");
    let (pool, worker) = one_worker(Faults::raw("stall", &tag)).await;
    assert_eq!(pool.stats().capacity, 4, "the hello's max_concurrency");
    let stalled = big_calls(&pool, "stall", 4, Duration::from_secs(2));
    assert!(
        eventually(10, || pool.stats().in_flight == 4).await,
        "{:?}",
        pool.stats()
    );
    let queued = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute_with(
                "pid",
                json!({}),
                CallOptions::new().timeout(Duration::from_secs(60)),
            )
            .await
        })
    };
    for call in stalled {
        let err = within(30, "a stalled call", call)
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, Error::CallTimeout { .. }), "{err:?}");
    }
    let r = within(60, "the queued call", queued)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(r["pid"].as_u64().unwrap() as u32, worker);
    assert!(eventually(20, || !alive(worker)).await);
    assert!(eventually(10, || pool.stats().in_flight == 0).await);
    let s = pool.stats();
    assert_eq!(
        (
            s.requests,
            s.completed,
            s.errors,
            s.call_timeouts,
            s.crashes,
            s.cancelled
        ),
        (5, 1, 4, 4, 0, 0)
    );
    shut_down_leaving_nothing(pool, &tag).await;
}

/// A SIGSTOPped worker (after quick calls, so that calls are written ahead
/// to it): a call with a 1 s deadline ends at it as `CallTimeout`; a call
/// sent behind it with a long deadline runs on the replacement; the
/// counters say one timeout, no crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_times_out_its_call_and_the_call_behind_reaches_the_replacement() {
    let tag = new_tag("sigstop");
    let (pool, worker) = one_worker(Faults::bridge(&tag)).await;
    for _ in 0..20 {
        pool.execute("pid", json!({})).await.unwrap();
    }
    signal(-(worker as i32), libc::SIGSTOP);
    let first = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute_with(
                "sleep",
                json!({"ms": 0, "token": "first"}),
                CallOptions::new().timeout(Duration::from_secs(1)),
            )
            .await
        })
    };
    assert!(eventually(10, || pool.stats().in_flight == 1).await);
    let second = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute_with(
                "sleep",
                json!({"ms": 0, "token": "second"}),
                CallOptions::new().timeout(Duration::from_secs(60)),
            )
            .await
        })
    };
    let err = within(30, "the first call", first)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::CallTimeout { .. }), "{err:?}");
    let r = within(60, "the second call", second)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r["token"], "second");
    assert_ne!(r["pid"].as_u64().unwrap() as u32, worker);
    assert!(
        eventually(20, || !alive(worker)).await,
        "the stopped worker was killed"
    );
    assert_eq!(counts(&pool), (22, 21, 1, 1, 0));
    shut_down_leaving_nothing(pool, &tag).await;
}

/// A worker killed from outside during `shutdown()`'s grace period (its
/// call still running): the call fails as the crash it is, nothing is
/// started in its place, and nothing of the pool is alive once shutdown
/// has returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_during_shutdown_is_not_replaced_and_nothing_is_left() {
    let tag = new_tag("shutdown-kill");
    let pool = faults_builder(Faults::bridge(&tag))
        .size(2)
        .configure(|c| c.shutdown_grace_period = Duration::from_secs(5))
        .start()
        .await
        .unwrap();
    let call = a_running_sleep(&pool, 30_000, Duration::from_secs(120)).await;
    let busy = pool
        .workers()
        .into_iter()
        .find(|w| w.in_flight == 1)
        .unwrap()
        .pid;
    let before = tagged(&tag);
    let stopping = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.shutdown().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill_now(busy);
    let err = within(30, "the call", call).await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            Error::WorkerCrashed(_) | Error::StoppedByShutdown { .. }
        ),
        "{err:?}"
    );
    within(30, "shutdown", stopping).await.unwrap().unwrap();
    none_left(&tag).await;
    // Nothing is started later either.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = tagged(&tag);
    assert!(
        after.is_empty(),
        "started after shutdown: {after:?} (before {before:?})"
    );
    assert_eq!(pool.stats().restarts, 0);
}

/// `shutdown()` while a slot waits out its restart back-off (its worker
/// died right after starting): shutdown returns, and no worker is started
/// once the back-off would have ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_restart_back_off_starts_no_worker_later() {
    let tag = new_tag("backoff-shutdown");
    let dir = temp_dir("backoff-shutdown");
    let log = dir.join("starts");
    let flag = dir.join("die");
    let pool = faults_builder(
        Faults::bridge(&tag)
            .env("REDTEAM_START_LOG", &log)
            .env("REDTEAM_DIE_SOON_IF_EXISTS", &flag),
    )
    .size(1)
    .configure(|c| {
        c.restart_backoff = Duration::from_secs(3);
        c.restart_backoff_max = Duration::from_secs(3);
        c.breaker_threshold = 1000;
    })
    .start()
    .await
    .unwrap();
    let first = pool.worker_pids()[0];
    std::fs::write(&flag, "").unwrap();
    kill_now(first);
    // The replacement starts at once, then dies within a second: a failed
    // start, followed by a back-off of 1.5 to 3 s.
    assert!(eventually(30, || starts(&log).len() == 2).await);
    let second = starts(&log)[1].1;
    assert!(eventually(10, || !alive(second)).await);
    within(10, "shutdown", pool.shutdown()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(starts(&log).len(), 2, "a worker started after shutdown");
    assert!(tagged(&tag).is_empty(), "{:?}", tagged(&tag));
}

/// `shutdown()` while a replacement is still in its init handshake: the
/// doc's table ("kill and reap: shutdown, replacement and dropping the last
/// `Pool` handle kill the whole group and reap it, always") holds for it
/// too: once shutdown has returned, the starting worker is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_still_starting_when_shutdown_returns_is_gone() {
    let tag = new_tag("slow-start");
    let dir = temp_dir("slow-start");
    let flag = dir.join("slow");
    let pid_file = dir.join("pid");
    let pool = faults_builder(
        Faults::bridge(&tag)
            .env("REDTEAM_SLOW_START_IF_EXISTS", &flag)
            .env("REDTEAM_SLOW_START_PID_FILE", &pid_file),
    )
    .size(1)
    .configure(|c| c.worker_init_timeout = Duration::from_secs(120))
    .start()
    .await
    .unwrap();
    let first = pool.worker_pids()[0];
    std::fs::write(&flag, "").unwrap();
    kill_now(first);
    assert!(eventually(30, || pid_file.exists()).await);
    let starting: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(starting));
    within(30, "shutdown", pool.shutdown()).await.unwrap();
    assert!(
        eventually(2, || !alive(starting)).await,
        "the starting worker outlived shutdown"
    );
    none_left(&tag).await;
}

/// The lines of a start log: (time in s, pid), one per worker start.
fn starts(log: &Path) -> Vec<(f64, u32)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect()
}

/// A pool of one worker that, once the flag exists, dies 200 ms after each
/// start; the first worker is killed to begin the loop. Returns the pool
/// and the start log.
async fn crash_loop(tag: &str, backoff: Duration, backoff_max: Duration) -> (Pool, PathBuf) {
    let dir = temp_dir("crash-loop");
    let log = dir.join("starts");
    let flag = dir.join("die");
    let pool = faults_builder(
        Faults::bridge(tag)
            .env("REDTEAM_START_LOG", &log)
            .env("REDTEAM_DIE_SOON_IF_EXISTS", &flag),
    )
    .size(1)
    .configure(|c| {
        c.restart_backoff = backoff;
        c.restart_backoff_max = backoff_max;
        c.breaker_threshold = 1000;
    })
    .start()
    .await
    .unwrap();
    // Lived more than a second: its death is a crash, not a failed start.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    std::fs::write(&flag, "").unwrap();
    kill_now(pool.worker_pids()[0]);
    (pool, log)
}

/// reliability.md: "A worker that dies within a second of starting counts
/// as a failed start: the supervisor backs off exponentially
/// (`restart_backoff` doubling, each delay with ±50% jitter ...)". With a
/// back-off of 300 ms, the fourth failure in a row is followed by at least
/// 300 ms × 8 × 0.5 = 1.2 s before the next start, the third by 0.6 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_delays_double_for_a_worker_that_keeps_dying_after_starting() {
    let tag = new_tag("backoff-grows");
    let (pool, log) = crash_loop(&tag, Duration::from_millis(300), Duration::from_secs(60)).await;
    // Start 1 is the first worker; 2 its replacement (no delay); 2 dies:
    // failure 1, then 3; ... 5 dies: failure 4, then 6.
    assert!(
        eventually(60, || starts(&log).len() >= 6).await,
        "{:?}",
        starts(&log)
    );
    let s = starts(&log);
    let gap = |k: usize| s[k].0 - s[k - 1].0;
    // Each gap also holds the 200 ms the worker lived.
    assert!(
        gap(4) >= 0.6 + 0.2,
        "after the 3rd failure: {:.3} s ({s:?})",
        gap(4)
    );
    assert!(
        gap(5) >= 1.2 + 0.2,
        "after the 4th failure: {:.3} s ({s:?})",
        gap(5)
    );
    pool.shutdown().await.unwrap();
}

/// reliability.md: "... none longer than `restart_backoff_max`". With a
/// back-off of 100 ms and a maximum of 300 ms, the eighth failure in a row
/// would wait 12.8 s (at least 6.4 s) uncapped; capped, the next start
/// follows within a few seconds (the worker's own 200 ms and its start-up
/// included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_delays_never_pass_the_maximum() {
    let tag = new_tag("backoff-max");
    let (pool, log) =
        crash_loop(&tag, Duration::from_millis(100), Duration::from_millis(300)).await;
    assert!(
        eventually(90, || starts(&log).len() >= 11).await,
        "{:?}",
        starts(&log)
    );
    let s = starts(&log);
    for k in 8..11 {
        let gap = s[k].0 - s[k - 1].0;
        assert!(
            gap < 4.0,
            "start {k} came {gap:.3} s after the one before ({s:?})"
        );
    }
    pool.shutdown().await.unwrap();
}

/// Dropping the last `Pool` handle while a replacement is still in its
/// init handshake: the starting worker goes with the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_while_a_worker_starts_leaves_nothing() {
    let tag = new_tag("slow-start-drop");
    let dir = temp_dir("slow-start-drop");
    let flag = dir.join("slow");
    let pid_file = dir.join("pid");
    let pool = faults_builder(
        Faults::bridge(&tag)
            .env("REDTEAM_SLOW_START_IF_EXISTS", &flag)
            .env("REDTEAM_SLOW_START_PID_FILE", &pid_file),
    )
    .size(1)
    .configure(|c| c.worker_init_timeout = Duration::from_secs(120))
    .start()
    .await
    .unwrap();
    std::fs::write(&flag, "").unwrap();
    kill_now(pool.worker_pids()[0]);
    assert!(eventually(30, || pid_file.exists()).await);
    let starting: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    drop(pool);
    assert!(
        eventually(10, || !alive(starting)).await,
        "the starting worker outlived the pool"
    );
    none_left(&tag).await;
}

/// A SIGSTOPped worker with a call running on it when the pool shuts down:
/// the call is stopped by the shutdown (not a crash), shutdown returns, and
/// the stopped worker (and its group) is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_is_stopped_by_shutdown() {
    let tag = new_tag("stopped-shutdown");
    let (pool, worker) = one_worker(Faults::bridge(&tag)).await;
    let call = a_running_sleep(&pool, 60_000, Duration::from_secs(120)).await;
    signal(-(worker as i32), libc::SIGSTOP);
    within(30, "shutdown", pool.shutdown()).await.unwrap();
    let err = within(10, "the call", call).await.unwrap().unwrap_err();
    assert!(matches!(err, Error::StoppedByShutdown { .. }), "{err:?}");
    assert_eq!(pool.stats().crashes, 0);
    none_left(&tag).await;
}

/// A worker killed during shutdown's grace period with calls written ahead
/// behind the one it runs: the running call fails as a crash; the ones
/// behind never ran, so each ends as `ShutDown` (`never_ran()`), counted
/// once; nothing is started in the worker's place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_during_shutdown_with_calls_written_ahead_fails_them_as_never_ran() {
    let tag = new_tag("shutdown-ahead");
    let pool = faults_builder(Faults::bridge(&tag))
        .size(1)
        .configure(|c| {
            c.shutdown_grace_period = Duration::from_secs(10);
            // Calls of a few ms count as short: written ahead.
            c.pipeline_max_call = Duration::from_millis(200);
        })
        .start()
        .await
        .unwrap();
    let worker = pool.worker_pids()[0];
    for _ in 0..20 {
        pool.execute("pid", json!({})).await.unwrap();
    }
    let running = a_running_sleep(&pool, 60_000, Duration::from_secs(120)).await;
    let behind: Vec<_> = (0..3)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.execute_with(
                    "sleep",
                    json!({"ms": 0, "token": i}),
                    CallOptions::new().timeout(Duration::from_secs(120)),
                )
                .await
            })
        })
        .collect();
    assert!(
        eventually(10, || pool.stats().in_flight == 4
            && pool.stats().queued == 0)
        .await,
        "three calls written ahead: {:?}",
        pool.stats()
    );
    let stopping = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.shutdown().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill_now(worker);
    let err = within(30, "the running call", running)
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_crash(), "{err:?}");
    for call in behind {
        let err = within(30, "a call behind", call)
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.never_ran(), "{err:?}");
        assert!(matches!(err, Error::ShutDown), "{err:?}");
    }
    within(30, "shutdown", stopping).await.unwrap().unwrap();
    let s = pool.stats();
    assert_eq!(
        (s.requests, s.completed, s.errors, s.crashes),
        (24, 20, 4, 1)
    );
    none_left(&tag).await;
}

/// A worker that writes its reply whole and exits at once (alone, and with
/// a child of its own holding its stdout): the reply it wrote reaches its
/// caller; the worker is replaced; nothing counts as a crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_written_just_before_the_worker_exits_reaches_its_caller() {
    for child in [false, true] {
        let tag = new_tag("answer-exit");
        // Each worker lives less than a second: keep the breaker out of it.
        let pool = faults_builder(Faults::raw("answer_exit", &tag))
            .size(1)
            .configure(|c| c.breaker_threshold = 1000)
            .start()
            .await
            .unwrap();
        for round in 0..5 {
            // The worker the call will reach (the last round's replacement
            // may still be starting).
            let mut old = 0;
            assert!(
                eventually(30, || match pool.worker_pids()[..] {
                    [pid] => {
                        old = pid;
                        true
                    }
                    _ => false,
                })
                .await,
                "child {child}, round {round}: the pool has no worker"
            );
            let r = within(
                30,
                "the call",
                pool.execute("answer_exit", json!({"child": child, "token": round})),
            )
            .await;
            let r = r.unwrap_or_else(|e| panic!("child {child}, round {round}: {e:?}"));
            assert_eq!(r["token"], round);
            assert_eq!(r["pid"].as_u64().unwrap() as u32, old);
            assert!(
                eventually(30, || pool.worker_pids().len() == 1
                    && !pool.worker_pids().contains(&old))
                .await
            );
        }
        let s = pool.stats();
        assert_eq!(
            (s.requests, s.completed, s.crashes),
            (5, 5, 0),
            "child {child}"
        );
        pool.shutdown().await.unwrap();
        none_left(&tag).await;
    }
}

/// A worker that stops reading its stdin in the middle of its calls: the
/// first call stalls it (2 s deadline); three more, each 600 KiB with a
/// long deadline, sit unread behind it (in its full pipe, or not yet
/// written). reliability.md: "A call that provably never reached its worker
/// goes to another one and counts once: ... the worker died leaving the
/// frame unread in its stdin". When the stalled worker is killed (after its
/// call's deadline and the grace period), the three run on the replacement
/// (this failed about once in ten runs while the writer task's pipe was
/// out of `take_lost`'s reach; see
/// `calls_never_read_by_a_worker_whose_escaped_child_holds_its_stdin_go_elsewhere`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_a_stalled_worker_never_read_go_to_its_replacement() {
    let tag = new_tag("stall-behind");
    calls_behind_a_stall(Faults::raw("stall", &tag), None).await;
    none_left(&tag).await;
}

/// The same, when the stalled worker had forked a child that left its
/// group and holds the worker's pipes, stdin too, reading nothing: once the
/// worker is killed, the frames it never read are still in its stdin (the
/// pipe does not break: the child holds it), and the pool's writer is still
/// waiting on that full pipe. Those calls never reached the worker; they
/// must go to the replacement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_never_read_by_a_worker_whose_escaped_child_holds_its_stdin_go_elsewhere() {
    let tag = new_tag("stall-escaped");
    let pid_file = temp_dir("stall-escaped").join("child.pid");
    let outcome = tokio::spawn(calls_behind_a_stall(
        Faults::raw("stall_escaped", &tag),
        Some(pid_file.clone()),
    ))
    .await;
    // The escaped child is the test's to stop, whatever happened.
    if let Some(child) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    {
        kill_now(child);
    }
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// One worker (capacity 4) stalled by a `stall` call with a 2 s deadline,
/// three 600 KiB calls with long deadlines behind it: the stalled call
/// times out, the three run on the replacement.
async fn calls_behind_a_stall(adapter: Faults, pid_file: Option<PathBuf>) {
    let (pool, worker) = one_worker(adapter).await;
    let args = match &pid_file {
        Some(p) => json!({"pid_file": p.display().to_string()}),
        None => json!({}),
    };
    let stalled = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute_with(
                "stall",
                args,
                CallOptions::new().timeout(Duration::from_secs(2)),
            )
            .await
        })
    };
    assert!(eventually(10, || pool.stats().in_flight == 1).await);
    if let Some(p) = &pid_file {
        assert!(eventually(10, || p.exists()).await, "the stall began");
    }
    let behind = big_calls(&pool, "echo", 3, Duration::from_secs(60));
    assert!(
        eventually(10, || pool.stats().in_flight == 4).await,
        "{:?}",
        pool.stats()
    );
    let err = within(30, "the stalled call", stalled)
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::CallTimeout { .. }), "{err:?}");
    for call in behind {
        let r = within(60, "a call behind", call).await.unwrap();
        let r = r.unwrap_or_else(|e| panic!("a call the worker never read failed: {e:?}"));
        assert_ne!(r["pid"].as_u64().unwrap() as u32, worker);
    }
    assert!(eventually(10, || pool.stats().in_flight == 0).await);
    assert_eq!(counts(&pool), (4, 3, 1, 1, 0));
    pool.shutdown().await.unwrap();
}

/// A worker that dies while a child that left its process group (so the
/// group kill misses it) keeps writing frames the pool routes harmlessly
/// (a second hello, ignored) to the worker's stdout. reliability.md: a
/// worker that dies while a child of its own still holds the pipe "is seen
/// at once, not at the call's deadline ... and a replacement starts". The
/// call must fail as the crash (exit status 6), and a replacement must
/// serve while the child still chatters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_while_an_escaped_child_keeps_writing_frames_is_replaced() {
    let tag = new_tag("chatter");
    let (pool, worker) = one_worker(Faults::raw("chatter", &tag)).await;
    let pid_file = temp_dir("chatter").join("child.pid");
    let call = {
        let pool = pool.clone();
        let pid_file = pid_file.display().to_string();
        tokio::spawn(async move {
            pool.execute_with(
                "chatter",
                json!({ "pid_file": pid_file }),
                CallOptions::new().timeout(Duration::from_secs(5)),
            )
            .await
        })
    };
    let outcome = tokio::time::timeout(Duration::from_secs(30), call).await;
    let mut wrong = Vec::new();
    match outcome {
        Err(_) => wrong.push("the call did not end, not even at its 5 s deadline".to_owned()),
        Ok(joined) => match joined.unwrap() {
            Err(Error::WorkerCrashed(c)) if c.exit == ExitReason::Code(6) => {}
            other => wrong.push(format!("the call ended as {other:?}")),
        },
    }
    assert!(!alive(worker), "the worker died");
    // The child still writes (for 300 s): the slot must be filled anyway.
    let replaced = eventually(15, || {
        pool.worker_pids().len() == 1 && !pool.worker_pids().contains(&worker)
    })
    .await;
    if !replaced {
        wrong.push(format!(
            "no replacement 15 s after the call ended: worker pids {:?}, stats {:?}",
            pool.worker_pids(),
            pool.stats()
        ));
    }
    // The chattering child is the test's to stop, whatever happened.
    if let Some(child) = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    {
        kill_now(child);
    }
    pool.shutdown().await.unwrap();
    assert!(wrong.is_empty(), "{wrong:#?}");
    none_left(&tag).await;
}

/// A worker that daemonizes mid-run (fork, `setsid`, the parent exits; the
/// fork, out of the worker's group, goes on serving its pipes). The pool
/// started the parent: once it is dead, reliability.md's "its group is
/// killed ... and a replacement starts" must hold even while calls keep
/// coming (one every 50 ms); calls must not go on being served by the fork
/// for as long as they come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_daemonizes_is_replaced_while_calls_keep_coming() {
    let tag = new_tag("daemonize");
    let (pool, worker) = one_worker(Faults::bridge(&tag)).await;
    let first = within(
        30,
        "daemonize",
        pool.execute_with(
            "daemonize",
            json!({"ms": 100}),
            CallOptions::new().timeout(Duration::from_secs(10)),
        ),
    )
    .await;
    let mut served_by = std::collections::BTreeMap::<u64, usize>::new();
    let until = Instant::now() + Duration::from_secs(15);
    let mut replaced = false;
    while Instant::now() < until {
        if !pool.worker_pids().contains(&worker) && !pool.worker_pids().is_empty() {
            replaced = true;
            break;
        }
        if let Ok(Ok(r)) = tokio::time::timeout(
            Duration::from_secs(5),
            pool.execute_with(
                "pid",
                json!({}),
                CallOptions::new().timeout(Duration::from_secs(3)),
            ),
        )
        .await
        {
            *served_by.entry(r["pid"].as_u64().unwrap()).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leftovers = tagged(&tag);
    pool.shutdown().await.unwrap();
    assert!(
        replaced,
        "the dead worker {worker} still in the pool after 15 s of calls; the daemonize call \
         ended as {first:?}; calls were served by {served_by:?}; processes {leftovers:?}"
    );
    none_left(&tag).await;
}

/// A worker that starts a helper process at import (inheriting its stdout
/// and stderr, in its group or in a session of its own), then fails to
/// load: `start()` fails at once with the exception in the stderr tail
/// (not at the 120 s init timeout), and the helper does not outlive the
/// failed start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_fails_to_load_after_starting_a_helper_leaves_no_helper() {
    for how in ["group", "escaped"] {
        let tag = new_tag("helper");
        let pid_file = temp_dir("helper").join("helper.pid");
        let err = within(
            60,
            how,
            faults_builder(
                Faults::bridge(&tag)
                    .env("REDTEAM_HELPER_THEN_FAIL", how)
                    .env("REDTEAM_HELPER_PID_FILE", &pid_file),
            )
            .size(1)
            .configure(|c| {
                c.worker_init_timeout = Duration::from_secs(120);
                c.startup_timeout = Duration::from_secs(120);
            })
            .start(),
        )
        .await
        .unwrap_err();
        let Error::StartFailed(e) = &err else {
            panic!("{how}: expected StartFailed, got {err:?}")
        };
        assert!(
            e.stderr_tail.contains("the model failed to load"),
            "{how}: {err:?}"
        );
        let helper: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(
            eventually(10, || !alive(helper)).await,
            "{how}: the helper outlived the failed start"
        );
        assert!(
            eventually(10, || tagged(&tag).is_empty()).await,
            "{how}: {:?}",
            tagged(&tag)
        );
    }
}

/// A worker whose stdout closed while it lives on is known to be unable to
/// answer from that moment: calls made after that must go to the healthy
/// worker beside it, not to it (reliability.md: a worker that "closes its
/// stdout fails exactly the calls in flight on it"; these were not in
/// flight when it closed). The grace period (5 s here) is only how long
/// the pool waits for the process to exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_after_a_workers_stdout_closed_go_to_the_healthy_worker() {
    let tag = new_tag("closed-routing");
    let pool = faults_builder(Faults::raw("close_later", &tag))
        .size(2)
        .configure(|c| c.shutdown_grace_period = Duration::from_secs(5))
        .start()
        .await
        .unwrap();
    let r = pool.execute("close_later", json!({})).await.unwrap();
    let broken = r["pid"].as_u64().unwrap() as u32;
    // It closes its stdout 300 ms after answering; the pool sees the end of
    // its stdout at once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(alive(broken), "still within the grace period");
    let mut failed = Vec::new();
    for i in 0..10 {
        match within(
            30,
            "a call",
            pool.execute_with(
                "pid",
                json!({"i": i}),
                CallOptions::new().timeout(Duration::from_secs(20)),
            ),
        )
        .await
        {
            Ok(r) => assert_ne!(r["pid"].as_u64().unwrap() as u32, broken),
            Err(e) => failed.push(format!("{i}: {e}")),
        }
    }
    let s = pool.stats();
    pool.shutdown().await.unwrap();
    assert!(
        failed.is_empty(),
        "calls made after the worker's stdout closed failed: {failed:#?}; {s:?}"
    );
}

/// A worker killed while it waits for a slow host function (30 s): its
/// call fails at once as the crash, not when the host function ends; the
/// host function's late answer harms nothing; a replacement serves, and a
/// host call on it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_during_a_slow_host_call_fails_its_call_at_once() {
    let tag = new_tag("host-kill");
    let entered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = entered.clone();
    let pool = faults_builder(Faults::bridge(&tag))
        .size(1)
        .host_function("slow", move |call| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let ms = call.args["ms"].as_u64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(json!({"slept": ms}))
            }
        })
        .start()
        .await
        .unwrap();
    let worker = pool.worker_pids()[0];
    let call = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute_with(
                "host",
                json!({"function": "slow", "args": {"ms": 30_000}}),
                CallOptions::new().timeout(Duration::from_secs(120)),
            )
            .await
        })
    };
    assert!(
        eventually(20, || entered.load(std::sync::atomic::Ordering::SeqCst)
            == 1)
        .await,
        "the host function was called"
    );
    kill_now(worker);
    let err = within(10, "the call", call).await.unwrap().unwrap_err();
    assert_eq!(crash_of(&err).exit, ExitReason::Signal(libc::SIGKILL));
    replaced_and_serving(&pool, worker).await;
    let r = within(
        30,
        "a host call on the replacement",
        pool.execute("host", json!({"function": "slow", "args": {"ms": 10}})),
    )
    .await
    .unwrap();
    assert_eq!(r["slept"], 10);
    shut_down_leaving_nothing(pool, &tag).await;
}

/// Chaos: 400 calls with random sleeps and deadlines on two workers (calls
/// written ahead), a small queue bound, while workers are killed, stopped
/// then killed, or told to exit mid-call. Every caller gets its own reply
/// (token), or one of the documented errors, never later than its deadline
/// plus a generous margin; the counters match what the callers saw,
/// exactly; the pool ends at full size with nothing in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_keeps_every_promise_callers_can_check() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let tag = new_tag("chaos");
    let pool = faults_builder(Faults::bridge(&tag))
        .size(2)
        .configure(|c| {
            c.max_queue_size = 24;
            c.queue_timeout = Duration::from_secs(3);
            c.breaker_threshold = 10_000;
            c.restart_backoff = Duration::from_millis(10);
            c.restart_backoff_max = Duration::from_millis(100);
        })
        .start()
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let pool = pool.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut round = 0u32;
            let mut killed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let pids = pool.worker_pids();
                let Some(&victim) = pids.get(round as usize % pids.len().max(1)) else {
                    continue;
                };
                match round % 3 {
                    0 => kill_now(victim),
                    1 => {
                        signal(-(victim as i32), libc::SIGSTOP);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        kill_now(victim);
                    }
                    _ => {
                        // Whichever worker takes it exits: that one is the victim.
                        let r = pool
                            .execute_with(
                                "exit",
                                json!({"code": 4}),
                                CallOptions::new().timeout(Duration::from_secs(5)),
                            )
                            .await;
                        if let Err(Error::WorkerCrashed(c)) = r {
                            killed.push(c.pid);
                        }
                        round += 1;
                        continue;
                    }
                }
                killed.push(victim);
                round += 1;
            }
            killed
        })
    };
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let n = 400usize;
    let mut calls = Vec::with_capacity(n);
    for i in 0..n {
        let pool = pool.clone();
        let sleep_ms = next() % 30;
        let timeout = Duration::from_millis(20 + next() % 2000);
        calls.push(tokio::spawn(async move {
            let began = Instant::now();
            let r = pool
                .execute_with(
                    "sleep",
                    json!({"ms": sleep_ms, "token": i}),
                    CallOptions::new().timeout(timeout),
                )
                .await;
            (i, r, began.elapsed(), timeout)
        }));
        if i % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (mut ok, mut timeouts, mut queue_timeouts, mut saturated, mut crashes) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut late = Vec::new();
    for c in calls {
        let (i, r, took, timeout) = within(120, "a chaos call", c).await.unwrap();
        if took > timeout + Duration::from_secs(15) {
            late.push((i, took, timeout));
        }
        match r {
            Ok(v) => {
                assert_eq!(v["token"], i, "a caller got another call's reply");
                ok += 1;
            }
            Err(Error::CallTimeout { .. }) => timeouts += 1,
            Err(Error::QueueTimeout(_)) => queue_timeouts += 1,
            Err(Error::PoolSaturated { .. }) => saturated += 1,
            Err(Error::WorkerCrashed(_)) => crashes += 1,
            Err(e) => panic!("call {i}: undocumented outcome {e:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let killed = within(60, "the killer", killer).await.unwrap();
    assert!(
        late.is_empty(),
        "calls ended long after their deadline: {late:?}"
    );
    assert!(ok > 0, "some calls succeeded");
    assert!(killed.len() >= 3, "the chaos killed workers: {killed:?}");
    eprintln!(
        "chaos: {ok} ok, {timeouts} timeouts, {queue_timeouts} queue timeouts, \
         {saturated} saturated, {crashes} crashes; killed {killed:?}"
    );
    assert!(
        eventually(30, || {
            let s = pool.stats();
            s.in_flight == 0 && s.workers == 2 && s.available == 2
        })
        .await,
        "{:?}",
        pool.stats()
    );
    // The killer's own `exit` calls count too: each is a crash (or a
    // timeout, or never ran); take them out by kind.
    let s = pool.stats();
    let exits = s.requests - n as u64;
    assert_eq!(
        s.completed, ok,
        "completed: {s:?} (callers: {ok} ok, {timeouts} timeouts, {queue_timeouts} queue timeouts, {saturated} saturated, {crashes} crashes)"
    );
    assert_eq!(s.errors + s.completed + s.cancelled, s.requests, "{s:?}");
    assert_eq!(s.cancelled, 0, "{s:?}");
    let caller_errors = timeouts + queue_timeouts + saturated + crashes;
    assert_eq!(s.errors - exits, caller_errors, "{s:?}");
    assert!(
        s.crashes >= crashes && s.crashes <= crashes + exits,
        "{s:?}"
    );
    assert!(
        s.call_timeouts >= timeouts && s.call_timeouts <= timeouts + exits,
        "{s:?}"
    );
    assert!(
        s.queue_timeouts >= queue_timeouts && s.queue_timeouts <= queue_timeouts + exits,
        "{s:?}"
    );
    assert!(
        s.pool_saturated >= saturated && s.pool_saturated <= saturated + exits,
        "{s:?}"
    );
    for pid in &killed {
        assert!(
            eventually(10, || !alive(*pid)).await,
            "killed worker {pid} still alive"
        );
    }
    shut_down_leaving_nothing(pool, &tag).await;
}

/// reliability.md: "A worker that dies within a second of starting counts
/// as a failed start (not one the pool killed because a call it cancelled
/// did not end within the grace period ...)". Four calls in a row that
/// ignore their cancel each get their fresh worker killed well within a
/// second of its start; the breaker (threshold 2) stays closed and the
/// next call is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_for_stuck_calls_right_after_starting_open_no_breaker() {
    use snakepit_core::events::EventKind;
    use std::sync::{Arc, Mutex};
    let tag = new_tag("stuck");
    let opened = Arc::new(Mutex::new(0u32));
    let seen = opened.clone();
    let pool = faults_builder(Faults::bridge(&tag))
        .size(1)
        .configure(|c| {
            c.breaker_threshold = 2;
            c.breaker_cooldown = Duration::from_secs(60);
            c.restart_backoff = Duration::from_millis(20);
            c.shutdown_grace_period = Duration::from_millis(100);
        })
        .on_event(move |e| {
            if let EventKind::BreakerOpened { .. } = e.kind {
                *seen.lock().unwrap() += 1;
            }
        })
        .start()
        .await
        .unwrap();
    let mut pids = Vec::new();
    for round in 0..4 {
        let started = Instant::now();
        let r = pool
            .execute_with(
                "stuck",
                json!({"ms": 30_000}),
                CallOptions::default().timeout(Duration::from_millis(150)),
            )
            .await;
        assert!(
            matches!(r, Err(Error::CallTimeout { .. })),
            "round {round}: {r:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "round {round}");
        // The next call waits for the replacement, which starts at once.
        let r = pool
            .execute_with(
                "pid",
                json!({}),
                CallOptions::default().timeout(Duration::from_secs(20)),
            )
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        pids.push(r["pid"].as_u64().unwrap());
    }
    pids.dedup();
    assert_eq!(
        pids.len(),
        4,
        "each stuck call's worker was replaced: {pids:?}"
    );
    assert_eq!(*opened.lock().unwrap(), 0, "the breaker opened");
    pool.shutdown().await.unwrap();
    assert!(tagged(&tag).is_empty());
}
