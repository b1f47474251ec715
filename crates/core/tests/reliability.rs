//! The failure suite of docs/reliability.md, done for real: the host killed
//! with SIGKILL, the sweep of a crashed run (and a decoy it must spare), a
//! crash storm, the breaker, recycling under load, and a soak.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use snakepit_core::events::EventKind;
use snakepit_core::{Error, Pool};

/// Not a test of its own: the host process of the host-kill tests. The
/// tests run this binary again with `SNAKEPIT_TEST_HOST` set; it starts a
/// pool, makes every worker busy, prints the pids of everything it started
/// and waits to be killed.
#[test]
fn host_process() {
    run_as_host(|mode, state_dir| async move {
        let mut worker = TestWorker::new();
        // Every worker ignores SIGTERM: only SIGKILL works on them.
        worker.env.push(("TEST_IGNORE_SIGTERM".into(), "1".into()));
        let pool = builder(worker)
            .size(3)
            .name("hostkill")
            .configure(|c| c.state_dir = Some(state_dir))
            .start()
            .await
            .unwrap();
        let spawn = if mode == "escape" {
            "spawn_escaped"
        } else {
            "spawn_child"
        };
        let child = pool.execute(spawn, json!({})).await.unwrap();
        for _ in 0..3 {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute("sleep", json!({"ms": 60_000})).await });
        }
        while pool.stats().available > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let report = json!({
            "workers": pool.worker_pids(),
            "children": [child["child_pid"]],
            "run_id": pool.run_id(),
        });
        (report, pool)
    });
}

struct Host {
    workers: Vec<u32>,
    children: Vec<u32>,
    run_id: String,
}

/// Runs [`host_process`] as a child of the test, waits for its pids, then
/// kills it with SIGKILL.
fn run_and_kill_host(mode: &str, state_dir: &std::path::Path) -> Host {
    let (mut host, pids) = host_with_report(mode, state_dir);
    let list = |k: &str| pid_list(&pids, k);
    let h = Host {
        workers: list("workers"),
        children: list("children"),
        run_id: pids["run_id"].as_str().unwrap().to_owned(),
    };
    assert_eq!(h.workers.len(), 3);
    assert!(h.workers.iter().chain(&h.children).all(|&p| alive(p)));
    kill_9(host.id());
    host.wait().unwrap();
    h
}

/// The host dies by SIGKILL while every worker is busy (each ignoring
/// SIGTERM, one with a child of its own): 2 s later nothing it started lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_with_sigkill_leaves_no_descendant() {
    let dir = temp_dir("hostkill");
    let host = run_and_kill_host("busy", &dir);
    let all: Vec<u32> = host.workers.iter().chain(&host.children).copied().collect();
    let killed_at = Instant::now();
    let gone = eventually(2, || all.iter().all(|&p| !alive(p))).await;
    let left: Vec<u32> = all.iter().copied().filter(|&p| alive(p)).collect();
    assert!(gone, "still alive 2 s after the host died: {left:?}");
    eprintln!(
        "host SIGKILL: {} processes gone within {:?}",
        all.len(),
        killed_at.elapsed()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A worker's child that left the worker's process group survives the
/// host's death; the next pool of the same instance sweeps it, and spares a
/// decoy with the same command line that is not ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_run_sweeps_what_escaped_and_spares_a_decoy() {
    let dir = temp_dir("sweep");
    let decoy = {
        #[allow(clippy::disallowed_methods)] // a bystander process, not a worker
        let child = std::process::Command::new("sleep")
            .arg("300")
            .env("SNAKEPIT_RUN_ID", "somebody-else")
            .spawn()
            .unwrap();
        child
    };
    let host = run_and_kill_host("escape", &dir);
    assert!(eventually(2, || host.workers.iter().all(|&p| !alive(p))).await);
    let escaped = host.children[0];
    assert!(
        alive(escaped),
        "a child in its own session outlives the host's layers"
    );
    // What the sweep will act on: the dead run's record is still there.
    let records = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(records, 1, "one run record");

    let swept = Arc::new(Mutex::new(0));
    let seen = swept.clone();
    let pool = builder(TestWorker::new())
        .size(1)
        .name("hostkill")
        .configure(|c| c.state_dir = Some(dir.clone()))
        .on_event(move |e| {
            if let EventKind::Swept { killed } = e.kind {
                *seen.lock().unwrap() += killed;
            }
        })
        .start()
        .await
        .unwrap();
    assert_eq!(*swept.lock().unwrap(), 1, "exactly the escaped child");
    assert!(eventually(2, || !alive(escaped)).await);
    assert!(alive(decoy.id()), "the decoy is not ours and lives");
    // The dead run's record is gone; this run's is there.
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].contains(pool.run_id()), "{names:?}");
    assert!(!names[0].contains(&host.run_id));
    pool.shutdown().await.unwrap();
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "shutdown removes the record"
    );
    let mut decoy = decoy;
    kill_9(decoy.id());
    let _ = decoy.wait();
    let _ = std::fs::remove_dir_all(dir);
}

/// The sweep on demand: a live run is left alone; a dry run kills nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeping_on_demand_spares_live_runs() {
    use snakepit_core::sweep::{sweep, SweepOptions};
    let dir = temp_dir("ondemand");
    let pool = builder(TestWorker::new())
        .size(2)
        .name("live")
        .configure(|c| c.state_dir = Some(dir.clone()))
        .start()
        .await
        .unwrap();
    let report = sweep(&SweepOptions::new().state_dir(&dir)).unwrap();
    assert_eq!(report.active_runs, 1);
    assert_eq!(report.killed(), 0);
    assert!(pool.worker_pids().iter().all(|&p| alive(p)));
    std::fs::write(dir.join("junk.run"), "not a record").unwrap();
    let report = sweep(&SweepOptions::new().state_dir(&dir).dry_run(true)).unwrap();
    assert_eq!(report.unreadable.len(), 1);
    assert_eq!(
        pool.execute("echo", json!({})).await.unwrap()["echoed"],
        json!({})
    );
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Two workers killed every 25 ms for 30 rounds while 200 calls run: every
/// call succeeds or gets the crash error, the pool returns to full size, the
/// killed processes are gone and the counters agree with the callers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_storm_loses_no_call_and_the_pool_recovers() {
    let pool = builder(TestWorker::new())
        .size(4)
        .configure(|c| {
            // Kills from outside are not start failures worth a breaker here.
            c.breaker_threshold = 1000;
            c.restart_backoff = Duration::from_millis(10);
            c.restart_backoff_max = Duration::from_millis(200);
            c.queue_timeout = Duration::from_secs(30);
        })
        .start()
        .await
        .unwrap();
    let calls: Vec<_> = (0..200)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.execute("sleep", json!({"ms": 5 + i % 20, "token": i}))
                    .await
            })
        })
        .collect();
    let mut killed = HashSet::new();
    for _ in 0..30 {
        for pid in pool.worker_pids().into_iter().take(2) {
            kill_9(pid);
            killed.insert(pid);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (mut ok, mut crashed) = (0u64, 0u64);
    for (i, c) in calls.into_iter().enumerate() {
        match c.await.unwrap() {
            Ok(r) => {
                assert_eq!(r["token"], i, "each caller gets its own reply");
                ok += 1;
            }
            Err(Error::WorkerCrashed(crash)) => {
                assert!(killed.contains(&crash.pid), "{crash:?}");
                crashed += 1;
            }
            Err(e) => panic!("call {i}: {e}"),
        }
    }
    assert!(
        eventually(20, || pool.stats().workers == 4).await,
        "{:?}",
        pool.stats()
    );
    assert!(eventually(5, || killed.iter().all(|&p| !alive(p))).await);
    let pids = pool.worker_pids();
    assert!(pids.iter().all(|p| !killed.contains(p)));
    let s = pool.stats();
    assert_eq!(
        (s.requests, s.completed, s.crashes),
        (200, ok, crashed),
        "{s:?}"
    );
    assert_eq!(s.errors, crashed, "{s:?}");
    assert!(s.restarts as usize >= killed.len() - 4, "{s:?}");
    eprintln!(
        "crash storm: {} workers killed, {ok} calls ok, {crashed} crashed",
        killed.len()
    );
    pool.shutdown().await.unwrap();
}

/// A one-worker pool whose test worker misbehaves as `env` says once
/// `marker` exists, with a breaker of three failures and `cooldown`, and
/// the breaker's events as they come ("opened", "closed").
async fn breaker_pool(
    env: &str,
    marker: &std::path::Path,
    cooldown: Duration,
) -> (Pool, Arc<Mutex<Vec<&'static str>>>) {
    let mut worker = TestWorker::new();
    worker.env.push((env.into(), marker.display().to_string()));
    let events = Arc::new(Mutex::new(Vec::new()));
    let log = events.clone();
    let pool = builder(worker)
        .size(1)
        .configure(|c| {
            c.breaker_threshold = 3;
            c.breaker_cooldown = cooldown;
            c.restart_backoff = Duration::from_millis(20);
            c.queue_timeout = Duration::from_secs(30);
        })
        .on_event(move |e| match e.kind {
            EventKind::BreakerOpened { .. } => log.lock().unwrap().push("opened"),
            EventKind::BreakerClosed { .. } => log.lock().unwrap().push("closed"),
            _ => {}
        })
        .start()
        .await
        .unwrap();
    (pool, events)
}

/// A slot whose worker keeps failing to start opens its breaker: callers
/// fail fast with the start-up error, starts are bounded, and once the
/// cause is gone the breaker closes and calls run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_on_repeated_start_failures_and_closes_after() {
    let dir = temp_dir("breaker");
    let marker = dir.join("broken");
    let (pool, events) =
        breaker_pool("TEST_FAIL_IF_EXISTS", &marker, Duration::from_millis(800)).await;
    std::fs::write(&marker, "").unwrap();
    kill_9(pool.worker_pids()[0]);
    assert!(eventually(5, || events.lock().unwrap().contains(&"opened")).await);
    let t = Instant::now();
    let err = pool.execute("echo", json!({})).await.unwrap_err();
    let Error::StartFailed(cause) = &err else {
        panic!("{err}")
    };
    assert!(cause.stderr_tail.contains("refusing to start"), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "fails fast, not after the queue timeout"
    );
    // The respawn rate is bounded: a cool-down between rounds of attempts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let failures = pool.stats().start_failures;
    assert!(failures <= 5, "{failures} starts in ~0.5 s");
    std::fs::remove_file(&marker).unwrap();
    assert!(eventually(10, || pool.stats().workers == 1).await);
    assert!(events.lock().unwrap().contains(&"closed"));
    assert_eq!(
        pool.execute("echo", json!({"x": 1})).await.unwrap()["echoed"]["x"],
        1
    );
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// `Pool::start_failure`: "when no worker is ready and every slot's
/// circuit breaker is open, `Some(Error::StartFailed)` with the last
/// start's cause and stderr tail (the same a call would get); `None`
/// otherwise". None on a serving pool, the call's own error once the
/// breaker is open, None again once a worker has started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_failure_is_the_error_a_call_gets_while_no_worker_can_start() {
    let dir = temp_dir("start-failure");
    let marker = dir.join("broken");
    let (pool, events) =
        breaker_pool("TEST_FAIL_IF_EXISTS", &marker, Duration::from_secs(600)).await;
    assert!(pool.start_failure().is_none(), "a serving pool");
    std::fs::write(&marker, "").unwrap();
    kill_9(pool.worker_pids()[0]);
    assert!(eventually(10, || events.lock().unwrap().contains(&"opened")).await);
    let Some(Error::StartFailed(announced)) = pool.start_failure() else {
        panic!("{:?}", pool.start_failure())
    };
    assert!(
        announced.stderr_tail.contains("refusing to start"),
        "{announced:?}"
    );
    let Err(Error::StartFailed(got)) = pool.execute("echo", json!({})).await else {
        panic!("a call while the breaker is open")
    };
    assert_eq!(got.to_string(), announced.to_string());
    assert_eq!(got.stderr_tail, announced.stderr_tail);
    std::fs::remove_file(&marker).unwrap();
    pool.retry_starts();
    assert!(eventually(20, || pool.stats().workers == 1).await);
    assert!(pool.start_failure().is_none(), "a worker started again");
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// FAILURES.md, start-up: the breaker holds "until the pool is told to
/// retry". With a ten-minute cool-down and the cause gone,
/// `Pool::retry_starts` starts the slot's worker at once, and calls run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_starts_ends_an_open_breakers_cool_down() {
    let dir = temp_dir("breaker-retry");
    let marker = dir.join("broken");
    let (pool, events) =
        breaker_pool("TEST_FAIL_IF_EXISTS", &marker, Duration::from_secs(600)).await;
    std::fs::write(&marker, "").unwrap();
    kill_9(pool.worker_pids()[0]);
    assert!(eventually(10, || events.lock().unwrap().contains(&"opened")).await);
    // Asking while the cause remains: one more failed start re-opens it.
    let failed = pool.stats().start_failures;
    pool.retry_starts();
    assert!(eventually(20, || pool.stats().start_failures > failed).await);
    assert!(matches!(
        pool.execute("echo", json!({})).await,
        Err(Error::StartFailed(_))
    ));
    std::fs::remove_file(&marker).unwrap();
    pool.retry_starts();
    assert!(
        eventually(20, || pool.stats().workers == 1).await,
        "the worker started long before the ten-minute cool-down"
    );
    assert!(events.lock().unwrap().contains(&"closed"));
    assert_eq!(
        pool.execute("echo", json!({"x": 1})).await.unwrap()["echoed"]["x"],
        1
    );
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// A worker that starts, then dies within a second, again and again, is a
/// failed start each time: the slot's breaker opens, callers fail fast with
/// `StartFailed` naming the early end and carrying the worker's stderr, and
/// no more workers are started until the cool-down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_right_after_starting_opens_the_breaker() {
    let dir = temp_dir("breaker-quick");
    let marker = dir.join("die-soon");
    let (pool, events) =
        breaker_pool("TEST_DIE_SOON_IF_EXISTS", &marker, Duration::from_secs(60)).await;
    std::fs::write(&marker, "").unwrap();
    kill_9(pool.worker_pids()[0]);
    assert!(eventually(20, || events.lock().unwrap().contains(&"opened")).await);
    let restarts = pool.stats().restarts;
    let err = pool.execute("echo", json!({})).await.unwrap_err();
    let Error::StartFailed(cause) = &err else {
        panic!("{err}")
    };
    assert!(cause.cause.contains("after it started"), "{err}");
    assert!(cause.stderr_tail.contains("dying on purpose"), "{err}");
    // The cool-down holds: no worker is started meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pool.stats().restarts, restarts);
    assert!(pool.worker_pids().is_empty());
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// reliability.md: after the cool-down one start is tried (half-open); a
/// worker that then dies within the second re-opens the breaker, and once
/// the cause is gone the next trial closes it and calls run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_cool_down_one_start_is_tried_and_a_quick_death_reopens_the_breaker() {
    let dir = temp_dir("breaker-half-open");
    let marker = dir.join("die-soon");
    let (pool, events) = breaker_pool(
        "TEST_DIE_SOON_IF_EXISTS",
        &marker,
        Duration::from_millis(1500),
    )
    .await;
    std::fs::write(&marker, "").unwrap();
    kill_9(pool.worker_pids()[0]);
    let opened = |n: usize| {
        let events = events.clone();
        move || {
            events
                .lock()
                .unwrap()
                .iter()
                .filter(|e| **e == "opened")
                .count()
                >= n
        }
    };
    assert!(eventually(20, opened(1)).await);
    let starts = pool.stats().restarts;
    assert!(
        eventually(20, opened(2)).await,
        "the half-open trial's quick death re-opens it"
    );
    assert_eq!(
        pool.stats().restarts - starts,
        1,
        "one start was tried after the cool-down"
    );
    std::fs::remove_file(&marker).unwrap();
    assert!(eventually(20, || pool.stats().workers == 1).await);
    assert!(eventually(5, || events.lock().unwrap().contains(&"closed")).await);
    assert_eq!(
        pool.execute("echo", json!({"x": 1})).await.unwrap()["echoed"]["x"],
        1
    );
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Calls keep running while workers are recycled after a number of calls,
/// a time to live, a memory limit and an idle time: none fails, and the
/// replacement starts before the old worker goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycling_under_load_fails_no_call() {
    async fn load(pool: &Pool, callers: usize, each: usize, command: &str) -> HashSet<u64> {
        let tasks: Vec<_> = (0..callers)
            .map(|c| {
                let pool = pool.clone();
                let command = command.to_owned();
                tokio::spawn(async move {
                    let mut pids = HashSet::new();
                    for i in 0..each {
                        let token = c * 1000 + i;
                        let r = pool
                            .execute(&command, json!({"ms": if command == "grow" { 5 } else { 2 }, "token": token, "mb": 1}))
                            .await
                            .unwrap_or_else(|e| panic!("call failed during recycling: {e}"));
                        if command == "sleep" {
                            assert_eq!(r["token"], token);
                        }
                        pids.insert(r["pid"].as_u64().unwrap());
                    }
                    pids
                })
            })
            .collect();
        let mut all = HashSet::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    }

    // After a number of calls.
    let pool = builder(TestWorker::new())
        .size(2)
        .configure(|c| c.recycle_after_calls = 100)
        .start()
        .await
        .unwrap();
    let pids = load(&pool, 8, 150, "sleep").await;
    assert!(pids.len() >= 3, "served by {} processes", pids.len());
    assert!(
        eventually(10, || pool.stats().recycled >= 2).await,
        "{:?}",
        pool.stats()
    );
    let s = pool.stats();
    assert_eq!((s.errors, s.completed), (0, 1200), "{s:?}");
    assert!(eventually(5, || pool.stats().workers == 2).await);
    pool.shutdown().await.unwrap();

    // After a time to live.
    let pool = builder(TestWorker::new())
        .size(2)
        .configure(|c| c.worker_ttl = Duration::from_millis(400))
        .start()
        .await
        .unwrap();
    load(&pool, 4, 300, "sleep").await;
    assert!(
        eventually(10, || pool.stats().recycled >= 1).await,
        "{:?}",
        pool.stats()
    );
    assert_eq!(pool.stats().errors, 0);
    pool.shutdown().await.unwrap();

    // Above a memory limit: each call leaks 1 MiB.
    let pool = builder(TestWorker::new())
        .size(2)
        .configure(|c| c.recycle_above_rss_mb = 40)
        .start()
        .await
        .unwrap();
    load(&pool, 3, 100, "grow").await;
    assert!(
        eventually(10, || pool.stats().recycled >= 1).await,
        "{:?}",
        pool.stats()
    );
    assert_eq!(pool.stats().errors, 0);
    pool.shutdown().await.unwrap();

    // After an idle time, with the replacement ready before the old goes.
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| c.worker_idle_timeout = Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let first = pool.worker_pids()[0];
    assert!(eventually(5, || pool.stats().recycled >= 1).await);
    assert_ne!(pool.worker_pids(), vec![first]);
    assert_eq!(pool.stats().workers, 1);
    assert!(
        eventually(3, || !alive(first)).await,
        "the idle worker went"
    );
    pool.shutdown().await.unwrap();

    // Health checks answered meanwhile are not calls: a worker pinged more
    // often than its idle timeout is still idle (with the defaults, a 30 s
    // health check kept any idle timeout above 30 s from ever firing).
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| {
            c.health_check_interval = Duration::from_millis(100);
            c.worker_idle_timeout = Duration::from_millis(600);
        })
        .start()
        .await
        .unwrap();
    let first = pool.worker_pids()[0];
    assert!(
        eventually(10, || pool.stats().recycled >= 1).await,
        "idle but answering health checks: {:?}",
        pool.stats()
    );
    assert_ne!(pool.worker_pids(), vec![first]);
    pool.shutdown().await.unwrap();
}

/// reliability.md: `worker_ttl_ms` replaces a worker "this long after it
/// started (±10%)". With 1 s: each worker recycled for `ttl` had been ready
/// for about that long (from 0.4 s, its start before it was ready not
/// counted, to 2 s, the rule being checked every 100 ms on a busy machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_ttl_recycles_each_worker_about_that_long_after_its_start() {
    /// When, what (`ready` or the recycling reason), which pid.
    type Log = Vec<(Instant, &'static str, u32)>;
    let events: Arc<Mutex<Log>> = Arc::default();
    let log = events.clone();
    let pool = builder(TestWorker::new())
        .size(3)
        .configure(|c| c.worker_ttl = Duration::from_secs(1))
        .on_event(move |e| match e.kind {
            EventKind::WorkerReady { pid, .. } => {
                log.lock().unwrap().push((Instant::now(), "ready", pid))
            }
            EventKind::WorkerRecycled { pid, reason, .. } => {
                log.lock().unwrap().push((Instant::now(), reason, pid))
            }
            _ => {}
        })
        .start()
        .await
        .unwrap();
    assert!(
        eventually(15, || pool.stats().recycled >= 4).await,
        "{:?}",
        pool.stats()
    );
    pool.shutdown().await.unwrap();
    let events = events.lock().unwrap().clone();
    let ready: HashMap<u32, Instant> = events
        .iter()
        .filter(|e| e.1 == "ready")
        .map(|e| (e.2, e.0))
        .collect();
    let recycled: Vec<_> = events.iter().filter(|e| e.1 != "ready").collect();
    assert!(recycled.len() >= 4, "{events:?}");
    for (at, reason, pid) in recycled {
        assert_eq!(*reason, "ttl");
        let age = at.duration_since(ready[pid]);
        assert!(
            age >= Duration::from_millis(400) && age <= Duration::from_secs(2),
            "worker {pid} recycled {age:?} after it was ready"
        );
    }
}

/// Mixed load with random worker kills for `SNAKEPIT_SOAK_SECONDS` (5 by
/// default): host memory does not grow, and the pool holds no descriptor it
/// should not. Descriptors are counted per pool, not per test process, so
/// tests running beside this one in the same process do not disturb it: the
/// pipes to the pool's live workers are exactly three per worker, and no
/// pipe of this process leads to a process that is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_with_random_kills_does_not_grow_the_host() {
    let secs: u64 = std::env::var("SNAKEPIT_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let pool = builder(TestWorker::new())
        .size(3)
        .configure(|c| {
            c.breaker_threshold = 1000;
            c.restart_backoff_max = Duration::from_millis(200);
            c.queue_timeout = Duration::from_secs(30);
        })
        .start()
        .await
        .unwrap();
    let run = |until: Instant| {
        let tasks: Vec<_> = (0..24)
            .map(|c| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < until {
                        n += 1;
                        let r = match (c + n) % 10 {
                            0 => pool.execute("fail", json!({"message": "x"})).await,
                            1 => {
                                pool.execute_in_session(&format!("s{}", n % 50), "echo", json!({}))
                                    .await
                            }
                            2 => {
                                pool.execute_with(
                                    "sleep",
                                    json!({"ms": 50}),
                                    snakepit_core::CallOptions::new()
                                        .timeout(Duration::from_millis(20)),
                                )
                                .await
                            }
                            _ => pool.execute("echo", json!({"n": n})).await,
                        };
                        match r {
                            Ok(_)
                            | Err(
                                Error::Remote { .. }
                                | Error::WorkerCrashed(_)
                                | Error::CallTimeout { .. },
                            ) => {}
                            Err(e) => panic!("unexpected {e}"),
                        }
                    }
                    n
                })
            })
            .collect::<Vec<_>>();
        async move {
            let mut total = 0;
            for t in tasks {
                total += t.await.unwrap();
            }
            total
        }
    };
    // Warm up, then take the baseline in a steady state.
    run(Instant::now() + Duration::from_secs(1)).await;
    let steady = || async {
        assert!(
            eventually(20, || pool.stats().workers == 3
                && pool.stats().in_flight == 0)
            .await
        );
        tokio::time::sleep(Duration::from_millis(600)).await; // late replies, retiring workers
        let pids = pool.worker_pids();
        assert!(
            eventually(20, || pipes_to(&pids) == 3 * pids.len()).await,
            "three pipes per worker: {} for {pids:?}",
            pipes_to(&pids)
        );
        assert!(
            eventually(20, || dangling_pipes().is_empty()).await,
            "pipes to processes that are gone: {:?}",
            dangling_pipes()
        );
        host_rss_kib()
    };
    let rss0 = steady().await;
    let until = Instant::now() + Duration::from_secs(secs);
    let killer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut kills = 0;
            let mut x: u64 = 0x9E37_79B9;
            while Instant::now() < until {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                tokio::time::sleep(Duration::from_millis(100 + x % 300)).await;
                let pids = pool.worker_pids();
                if !pids.is_empty() {
                    kill_9(pids[(x as usize) % pids.len()]);
                    kills += 1;
                }
            }
            kills
        })
    };
    let calls = run(until).await;
    let kills = killer.await.unwrap();
    let rss1 = steady().await;
    eprintln!("soak {secs} s: {calls} calls, {kills} kills; host RSS {rss0} -> {rss1} KiB");
    assert!(
        rss1 < rss0 + 16 * 1024,
        "host memory grew from {rss0} to {rss1} KiB"
    );
    let s = pool.stats();
    assert_eq!(s.requests, s.completed + s.errors + s.cancelled, "{s:?}");
    pool.shutdown().await.unwrap();
}

/// The pipe inodes behind a process's descriptors (`pipe:[N]`).
fn pipe_inodes(pid: &str) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?;
            l.strip_prefix("pipe:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// This process's descriptors that are pipes to one of `pids`.
fn pipes_to(pids: &[u32]) -> usize {
    let theirs: HashSet<u64> = pids
        .iter()
        .flat_map(|p| pipe_inodes(&p.to_string()))
        .collect();
    pipe_inodes("self")
        .into_iter()
        .filter(|i| theirs.contains(i))
        .count()
}

/// This process's pipes whose other end no process holds: descriptors left
/// over from a worker that is gone.
fn dangling_pipes() -> Vec<u64> {
    let ours = pipe_inodes("self");
    let me = std::process::id().to_string();
    let mut held: HashSet<u64> = HashSet::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str() else { continue };
        if pid.parse::<u32>().is_ok() && pid != me {
            held.extend(pipe_inodes(pid));
        }
    }
    let mut count: HashMap<u64, usize> = HashMap::new();
    for i in &ours {
        *count.entry(*i).or_default() += 1;
    }
    // A pipe with both ends in this process is not dangling either.
    ours.into_iter()
        .filter(|i| !held.contains(i) && count[i] == 1)
        .collect()
}

/// A worker killed while idle is noticed at once (its pipes close) and
/// replaced: the listener sees it exit, then its replacement ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_detected_and_replaced() {
    let log: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let seen = log.clone();
    let pool = builder(TestWorker::new())
        .size(2)
        .on_event(move |e| {
            let what = match e.kind {
                EventKind::WorkerExited { pid, .. } => format!("exited {pid}"),
                EventKind::WorkerReady { pid, .. } => format!("ready {pid}"),
                _ => return,
            };
            seen.lock().unwrap().push((Instant::now(), what));
        })
        .start()
        .await
        .unwrap();
    let victim = pool.worker_pids()[0];
    log.lock().unwrap().clear();
    let t0 = Instant::now();
    kill_9(victim);
    assert!(eventually(10, || log.lock().unwrap().len() >= 2).await);
    let events = log.lock().unwrap().clone();
    assert_eq!(events[0].1, format!("exited {victim}"));
    assert!(events[1].1.starts_with("ready "));
    assert_ne!(events[1].1, format!("ready {victim}"));
    eprintln!(
        "dead worker detected after {:?}, replaced (ready) after {:?}",
        events[0].0 - t0,
        events[1].0 - t0
    );
    assert_eq!(pool.stats().workers, 2);
    assert_eq!(
        pool.execute("echo", json!({})).await.unwrap()["echoed"],
        json!({})
    );
    pool.shutdown().await.unwrap();
}

/// README and docs/reliability.md: `recycle_above_rss_mb` replaces a worker
/// "above this resident memory". The grown worker is recycled for memory
/// (the event's reason), and only it: the worker left under the limit
/// keeps serving, through many checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_worker_above_the_memory_limit_is_recycled_for_memory() {
    let recycled = Arc::new(Mutex::new(Vec::new()));
    let log = recycled.clone();
    let pool = builder(TestWorker::new())
        .size(2)
        .configure(|c| {
            c.recycle_above_rss_mb = 60;
            c.health_check_interval = Duration::from_millis(50);
        })
        .on_event(move |e| {
            if let EventKind::WorkerRecycled { pid, reason, .. } = e.kind {
                log.lock().unwrap().push((pid, reason));
            }
        })
        .start()
        .await
        .unwrap();
    let pids = pool.worker_pids();
    // Grow one worker past the limit (80 MiB held).
    let r = pool.execute("grow", json!({"mb": 80})).await.unwrap();
    let grown = r["pid"].as_u64().unwrap() as u32;
    let kept = *pids.iter().find(|&&p| p != grown).unwrap();
    assert!(
        eventually(10, || !recycled.lock().unwrap().is_empty()).await,
        "the grown worker was not recycled"
    );
    // Many memory checks later, the small worker is still there.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(*recycled.lock().unwrap(), vec![(grown, "memory")]);
    assert!(
        pool.worker_pids().contains(&kept),
        "{:?}",
        pool.worker_pids()
    );
    assert!(!pool.worker_pids().contains(&grown));
    pool.shutdown().await.unwrap();
}
