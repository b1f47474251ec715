//! Audit of ARCHITECTURE.md's invariants against real worker processes:
//! the ones most likely to break under concurrency, worker deaths at
//! awkward moments, cancellation races and shutdown. Three once failed (a
//! worker mid-start left running at shutdown, twice; a stream written
//! ahead to a dying worker not sent again).

mod common;

use std::collections::{HashMap, HashSet};
use std::future::poll_fn;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_core::Stream;
use serde_json::json;
use snakepit_core::{Adapter, CallOptions, CallStream, Error, Launch, Pool};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn test_worker_script() -> PathBuf {
    root().join("crates/core/tests/workers/test_worker.py")
}

/// The test worker started through `sh`, which first sleeps `delay`
/// seconds whenever `flag` exists: a worker start that can be made slow
/// at will, so that the pool can be caught while one is under way.
struct SlowWhenFlagged {
    flag: PathBuf,
    delay: u32,
}

impl Adapter for SlowWhenFlagged {
    fn launch(&self) -> Launch {
        Launch::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "if [ -e '{}' ]; then sleep {}; fi; exec \"$0\" \"$@\"",
                self.flag.display(),
                self.delay
            ))
            .arg(python())
            .arg(test_worker_script())
            .env("PYTHONPATH", root().join("bridges/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
    }
}

/// A bridge worker written for this file: `mark` appends its token to the
/// log file `AUDIT_LOG` as it starts (one line per run of the handler),
/// then sleeps `ms`.
const MARK_WORKER: &str = r#"
import os, sys, time
import snakepit_bridge

worker = snakepit_bridge.Worker()
LOG = os.environ["AUDIT_LOG"]


@worker.command("mark")
def mark(args, ctx):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, (str(args["token"]) + "\n").encode())
    os.close(fd)
    time.sleep(args.get("ms", 0) / 1000.0)
    return {"token": args["token"], "pid": os.getpid()}


if __name__ == "__main__":
    worker.run()
"#;

struct MarkWorker {
    script: PathBuf,
    log: PathBuf,
}

impl MarkWorker {
    fn new(dir: &Path) -> Self {
        let script = dir.join("mark_worker.py");
        std::fs::write(&script, MARK_WORKER).unwrap();
        MarkWorker {
            script,
            log: dir.join("marks.log"),
        }
    }

    /// How many times each token's handler ran.
    fn runs(&self) -> HashMap<String, usize> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut runs = HashMap::new();
        for line in text.lines() {
            *runs.entry(line.to_owned()).or_insert(0) += 1;
        }
        runs
    }
}

impl Adapter for MarkWorker {
    fn launch(&self) -> Launch {
        Launch::new(python())
            .arg(&self.script)
            .env("PYTHONPATH", root().join("bridges/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("AUDIT_LOG", &self.log)
    }
}

/// Every live process whose environment carries `run_id`.
fn processes_of_run(run_id: &str) -> Vec<u32> {
    let needle = format!("SNAKEPIT_RUN_ID={run_id}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|v| v == needle.as_bytes()) && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// Small deterministic randomness (no dependency needed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

async fn next_item(
    stream: &mut CallStream,
) -> Option<snakepit_core::Result<snakepit_core::StreamItem>> {
    poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// The counters add up, nothing is in flight or queued, and every unit of
/// capacity is back (waits for abandoned calls' late replies or their
/// workers' replacement).
async fn settled(pool: &Pool) -> bool {
    eventually(60, || {
        let s = pool.stats();
        s.in_flight == 0
            && s.queued == 0
            && s.busy == 0
            && s.workers == pool.workers().len()
            && s.available == s.workers
            && s.workers > 0
            && s.requests == s.completed + s.errors + s.cancelled
    })
    .await
}

/// ARCHITECTURE.md, "A call cut off by `shutdown()` is
/// `StoppedByShutdown`, never a crash, and its caller hears it when the
/// grace period ends, not later": the caller hears it while the rest of
/// the stop sequence (another grace period, SIGTERM ignored, then SIGKILL)
/// is still under way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cut_off_by_shutdown_hears_it_before_the_stop_sequence_ends() {
    let mut adapter = TestWorker::new();
    adapter.env.push(("TEST_IGNORE_SIGTERM".into(), "1".into()));
    let pool = builder(adapter)
        .size(1)
        .configure(|c| {
            c.shutdown_grace_period = Duration::from_millis(1500);
            c.cleanup_retry_interval = Duration::from_millis(200);
            c.cleanup_max_retries = 5;
        })
        .start()
        .await
        .unwrap();
    let call = a_running_sleep(&pool, 60_000, Duration::from_secs(120)).await;
    let stopping = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.shutdown().await })
    };
    let err = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("the caller heard within a minute")
        .unwrap()
        .unwrap_err();
    assert!(
        !stopping.is_finished(),
        "the caller heard only once the whole stop sequence was over: {err:?}"
    );
    assert!(matches!(err, Error::StoppedByShutdown { .. }), "{err:?}");
    assert!(!err.is_crash());
    tokio::time::timeout(Duration::from_secs(60), stopping)
        .await
        .expect("shutdown ends")
        .unwrap()
        .unwrap();
    let s = pool.stats();
    assert_eq!((s.crashes, s.errors, s.requests), (0, 1, 1), "{s:?}");
}

/// Starts a size-1 pool of `SlowWhenFlagged` workers and returns it with
/// its flag file (absent: the first start is quick).
async fn slow_restart_pool(
    tag: &str,
    delay: u32,
    configure: impl FnOnce(&mut snakepit_core::PoolConfig),
) -> (Pool, PathBuf) {
    let dir = temp_dir(tag);
    let flag = dir.join("slow");
    let pool = builder(SlowWhenFlagged {
        flag: flag.clone(),
        delay,
    })
    .size(1)
    .configure(|c| {
        c.health_check_interval = Duration::ZERO;
        configure(c);
    })
    .start()
    .await
    .unwrap();
    (pool, flag)
}

/// Waits for a process of the pool's run other than `old` (a worker being
/// started) and returns the new ones.
async fn a_new_process(pool: &Pool, old: &[u32]) -> Vec<u32> {
    let mut new = Vec::new();
    let found = eventually(30, || {
        new = processes_of_run(pool.run_id())
            .into_iter()
            .filter(|p| !old.contains(p))
            .collect();
        !new.is_empty()
    })
    .await;
    assert!(found, "a replacement worker was started");
    new
}

/// ARCHITECTURE.md, "Processes and orphans" (shutdown: "close stdin, then
/// SIGTERM and SIGKILL what is left, reap") and the "no orphan process"
/// invariant: a worker whose start is under way when `shutdown()` runs (a
/// crashed worker's replacement in its init handshake) must not outlive
/// the shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_a_crashed_workers_replacement_starts_leaves_no_process() {
    let (pool, flag) = slow_restart_pool("audit-arch-restart", 5, |_| {}).await;
    let old = pool.worker_pids();
    std::fs::write(&flag, "").unwrap();
    kill_9(old[0]);
    let new = a_new_process(&pool, &old).await;
    pool.shutdown().await.unwrap();
    let gone = eventually(15, || new.iter().all(|&p| !alive(p))).await;
    let left: Vec<u32> = processes_of_run(pool.run_id());
    for p in &left {
        kill_9(*p);
    }
    assert!(
        gone,
        "processes of the run still alive after shutdown(): {left:?} (started: {new:?})"
    );
}

/// The same, for a replacement started by recycling (recycle_after_calls):
/// a recycled worker's replacement that is still starting at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_a_recycled_workers_replacement_starts_leaves_no_process() {
    let (pool, flag) = slow_restart_pool("audit-arch-recycle", 5, |c| {
        c.recycle_after_calls = 3;
    })
    .await;
    let old = pool.worker_pids();
    std::fs::write(&flag, "").unwrap();
    // The limit is drawn within 10%: 3 calls bring the worker to it.
    for _ in 0..3 {
        pool.execute("pid", json!({})).await.unwrap();
    }
    let new = a_new_process(&pool, &old).await;
    pool.shutdown().await.unwrap();
    let gone = eventually(15, || new.iter().chain(&old).all(|&p| !alive(p))).await;
    let left: Vec<u32> = processes_of_run(pool.run_id());
    for p in &left {
        kill_9(*p);
    }
    assert!(
        gone,
        "processes of the run still alive after shutdown(): {left:?} (replacement: {new:?})"
    );
}

/// Counterpart of the two above: dropping the last handle while a
/// replacement starts leaves no process (the parent-death signal follows
/// the spawner thread, which ends with the pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_while_a_replacement_starts_leaves_no_process() {
    let (pool, flag) = slow_restart_pool("audit-arch-drop", 3, |_| {}).await;
    let run_id = pool.run_id().to_owned();
    let old = pool.worker_pids();
    std::fs::write(&flag, "").unwrap();
    kill_9(old[0]);
    let new = a_new_process(&pool, &old).await;
    drop(pool);
    let gone = eventually(15, || new.iter().all(|&p| !alive(p))).await;
    let left = processes_of_run(&run_id);
    for p in &left {
        kill_9(*p);
    }
    assert!(gone, "alive after the last handle went: {left:?}");
}

/// ARCHITECTURE.md, "A recycled worker leaves its slot only when its
/// replacement is ready; it is then sealed ..., so no call is sent to a
/// worker that is closing" and "A worker recycled by calls takes no new
/// call once it reaches its limit": with a replacement that takes seconds
/// to start, the slot is never empty, no call fails, the old worker serves
/// no more than its limit (drawn within 10%), and it goes afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recycled_worker_with_a_slow_replacement_keeps_its_slot_and_fails_no_call() {
    let (pool, flag) = slow_restart_pool("audit-arch-slow-recycle", 2, |c| {
        c.recycle_after_calls = 20;
        c.queue_timeout = Duration::from_secs(120);
    })
    .await;
    let old = pool.worker_pids()[0];
    std::fs::write(&flag, "").unwrap();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let empty_seen = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (pool, sampling, empty_seen) = (pool.clone(), sampling.clone(), empty_seen.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::SeqCst) {
                if pool.worker_pids().is_empty() {
                    empty_seen.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let next = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..6)
        .map(|_| {
            let (pool, next) = (pool.clone(), next.clone());
            tokio::spawn(async move {
                let mut pids = Vec::new();
                while next.fetch_add(1, Ordering::SeqCst) < 60 {
                    let r = pool
                        .execute_with(
                            "pid",
                            json!({}),
                            CallOptions::new().timeout(Duration::from_secs(120)),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("a call failed during recycling: {e:?}"));
                    pids.push(r["pid"].as_u64().unwrap() as u32);
                }
                pids
            })
        })
        .collect();
    let mut served: HashMap<u32, u64> = HashMap::new();
    for c in callers {
        for pid in c.await.unwrap() {
            *served.entry(pid).or_default() += 1;
        }
    }
    sampling.store(false, Ordering::SeqCst);
    sampler.await.unwrap();
    assert_eq!(
        empty_seen.load(Ordering::SeqCst),
        0,
        "the slot was seen empty while the replacement started"
    );
    assert!(served.len() >= 2, "the worker was replaced: {served:?}");
    assert!(
        served.get(&old).copied().unwrap_or(0) <= 22,
        "the old worker served past its limit: {served:?}"
    );
    assert!(
        eventually(30, || !alive(old)).await,
        "the recycled worker went"
    );
    let _ = std::fs::remove_file(&flag);
    pool.shutdown().await.unwrap();
}

/// ARCHITECTURE.md, "A call is sent again only if it provably never
/// reached its worker ...; anything that may have run is never re-sent",
/// with pipelining (calls written ahead to one-at-a-time workers) while
/// workers are killed at random: no handler runs twice for one call, a
/// call that succeeded ran exactly once, and every caller gets its own
/// call's reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_runs_twice_when_pipelined_workers_are_killed_under_load() {
    let dir = temp_dir("audit-arch-twice");
    let adapter = MarkWorker::new(&dir);
    let log_reader = MarkWorker {
        script: adapter.script.clone(),
        log: adapter.log.clone(),
    };
    let pool = builder(adapter)
        .size(2)
        .configure(|c| {
            c.pipeline_depth = 8;
            c.pipeline_max_call = Duration::from_millis(50);
            c.health_check_interval = Duration::ZERO;
            c.breaker_threshold = 1000;
        })
        .start()
        .await
        .unwrap();
    let mut calls = Vec::new();
    for i in 0..300u64 {
        let caller = pool.clone();
        calls.push(tokio::spawn(async move {
            let ms = if i % 10 == 0 { 20 } else { 0 };
            let r = caller
                .execute_with(
                    "mark",
                    json!({"token": format!("t{i}"), "ms": ms}),
                    CallOptions::new().timeout(Duration::from_secs(60)),
                )
                .await;
            (i, r)
        }));
        if i % 25 == 24 {
            // Kill a worker while calls are written ahead to it.
            let pids = pool.worker_pids();
            if let Some(&p) = pids.get((i as usize / 25) % pids.len().max(1)) {
                kill_9(p);
            }
        }
        if i % 5 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let mut ok = HashSet::new();
    for c in calls {
        let (i, r) = tokio::time::timeout(Duration::from_secs(120), c)
            .await
            .expect("every call ends")
            .unwrap();
        match r {
            Ok(v) => {
                assert_eq!(v["token"], format!("t{i}"), "call {i} got {v}");
                ok.insert(format!("t{i}"));
            }
            Err(e) => assert!(
                e.is_crash(),
                "call {i}: only a crash may fail it here: {e:?}"
            ),
        }
    }
    assert!(pool.stats().restarts >= 1, "{:?}", pool.stats());
    let runs = log_reader.runs();
    for (token, n) in &runs {
        assert_eq!(*n, 1, "{token} ran {n} times");
    }
    for token in &ok {
        assert_eq!(
            runs.get(token),
            Some(&1),
            "{token} succeeded but ran {:?}",
            runs.get(token)
        );
    }
    assert!(settled(&pool).await, "{:?}", pool.stats());
    pool.shutdown().await.unwrap();
}

/// ARCHITECTURE.md, "A queued call that times out or is dropped never
/// runs": calls whose queue timeout races the release of a worker (many
/// short calls through one worker, a queue timeout about as long as the
/// wait) never run when they report `QueueTimeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_timeouts_racing_free_workers_never_run() {
    let dir = temp_dir("audit-arch-queue");
    let adapter = MarkWorker::new(&dir);
    let log = MarkWorker {
        script: adapter.script.clone(),
        log: adapter.log.clone(),
    };
    let pool = builder(adapter)
        .size(1)
        .configure(|c| {
            c.queue_timeout = Duration::from_millis(60);
            c.pipeline_depth = 0;
            c.health_check_interval = Duration::ZERO;
        })
        .start()
        .await
        .unwrap();
    let mut timed_out = Vec::new();
    let mut ok = Vec::new();
    for round in 0..6u64 {
        let mut calls = Vec::new();
        for i in 0..30u64 {
            let pool = pool.clone();
            let token = format!("r{round}c{i}");
            calls.push(tokio::spawn(async move {
                let r = pool
                    .execute_with(
                        "mark",
                        json!({"token": token, "ms": 5}),
                        CallOptions::new().timeout(Duration::from_secs(60)),
                    )
                    .await;
                (token, r)
            }));
        }
        for c in calls {
            let (token, r) = c.await.unwrap();
            match r {
                Ok(_) => ok.push(token),
                Err(Error::QueueTimeout(_)) => timed_out.push(token),
                Err(e) => panic!("{token}: {e:?}"),
            }
        }
    }
    assert!(!timed_out.is_empty() && !ok.is_empty(), "the race happened");
    assert!(settled(&pool).await, "{:?}", pool.stats());
    let runs = log.runs();
    for t in &timed_out {
        assert_eq!(runs.get(t), None, "{t} reported QueueTimeout but ran");
    }
    for t in &ok {
        assert_eq!(runs.get(t), Some(&1), "{t}");
    }
    let s = pool.stats();
    assert_eq!(s.queue_timeouts, timed_out.len() as u64, "{s:?}");
    pool.shutdown().await.unwrap();
}

/// ARCHITECTURE.md, "Every call, streaming or not, is counted once in
/// `stats()`" and "A capacity unit is taken ... and returned exactly once":
/// under a mix of calls that succeed, fail, time out, are dropped at random
/// moments (one-shot and streams), crash their worker, and workers killed
/// from outside, with health checks running, the counters add up and every
/// unit of capacity comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_stay_exact_and_no_unit_leaks_under_cancellation_kills_and_streams() {
    for async_workers in [false, true] {
        let mut adapter = TestWorker::new();
        if async_workers {
            adapter.extra_args.push("--async".into());
        }
        let pool = builder(adapter)
            .size(2)
            .configure(|c| {
                c.shutdown_grace_period = Duration::from_millis(300);
                c.health_check_interval = Duration::from_millis(50);
                c.health_check_timeout = Duration::from_secs(10);
                c.pipeline_depth = 4;
                c.breaker_threshold = 1000;
            })
            .start()
            .await
            .unwrap();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ u64::from(async_workers));
        let streamed = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..240u64 {
            let caller = pool.clone();
            let kind = rng.below(8);
            let drop_after = rng.below(30);
            let ms = rng.below(20);
            let streamed = streamed.clone();
            tasks.push(tokio::spawn(async move {
                let pool = caller;
                let options = CallOptions::new().timeout(Duration::from_secs(30));
                match kind {
                    0 => {
                        let _ = pool.execute("fail", json!({})).await;
                    }
                    1 => {
                        let _ = pool
                            .execute_with(
                                "sleep",
                                json!({"ms": 50 + ms}),
                                CallOptions::new().timeout(Duration::from_millis(ms + 1)),
                            )
                            .await;
                    }
                    2 => {
                        let call = pool.execute_with("sleep", json!({ "ms": ms }), options);
                        let _ = tokio::time::timeout(Duration::from_millis(drop_after), call).await;
                    }
                    3 => {
                        if let Ok(mut s) = pool
                            .execute_stream("stream", json!({"n": 5}), options)
                            .await
                        {
                            // Read some, then drop it (sometimes mid-way).
                            for _ in 0..(drop_after % 8) {
                                match next_item(&mut s).await {
                                    Some(Ok(_)) => {
                                        streamed.fetch_add(1, Ordering::Relaxed);
                                    }
                                    _ => break,
                                }
                            }
                        }
                    }
                    4 if i % 40 == 0 => {
                        let _ = pool.execute("exit", json!({"code": 3})).await;
                    }
                    _ => {
                        let r = pool
                            .execute_with("sleep", json!({"ms": ms, "token": i}), options)
                            .await;
                        if let Ok(v) = r {
                            assert_eq!(v["token"], json!(i), "call {i} got another's reply");
                        }
                    }
                }
            }));
            if i % 60 == 59 {
                if let Some(&p) = pool.worker_pids().first() {
                    kill_9(p);
                }
            }
            if i % 4 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .expect("every caller ends")
                .unwrap();
        }
        assert!(
            settled(&pool).await,
            "async {async_workers}: {:?}",
            pool.stats()
        );
        let s = pool.stats();
        assert_eq!(s.requests, 240, "{s:?}");
        // The pool still serves, each caller its own reply.
        let r = pool
            .execute("echo", json!({"token": "after"}))
            .await
            .unwrap();
        assert_eq!(r["echoed"]["token"], "after");
        pool.shutdown().await.unwrap();
    }
}

/// ARCHITECTURE.md, shutdown ("stop admitting, let in-flight calls finish
/// within the grace period, then fail what still runs with
/// `StoppedByShutdown`"), "never a crash", exactly-once accounting and "no
/// orphan process", with callers still submitting while `shutdown()` runs:
/// every call ends (no hang), as a success, `ShutDown` or
/// `StoppedByShutdown`, the counters add up, and no process of the run
/// remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_a_stream_of_calls_ends_each_call_once_and_never_as_a_crash() {
    for async_workers in [false, true] {
        let mut adapter = TestWorker::new();
        if async_workers {
            adapter.extra_args.push("--async".into());
        }
        let pool = builder(adapter)
            .size(2)
            .configure(|c| c.shutdown_grace_period = Duration::from_millis(400))
            .start()
            .await
            .unwrap();
        let callers: Vec<_> = (0..8u64)
            .map(|c| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let mut outcomes = Vec::new();
                    let mut rng = Rng(c * 7919 + 17);
                    for i in 0.. {
                        let ms = rng.below(30);
                        let token = format!("{c}-{i}");
                        let r = if i % 5 == 4 {
                            match pool
                                .execute_stream("stream", json!({"n": 3}), CallOptions::new())
                                .await
                            {
                                Ok(mut s) => {
                                    let mut last = None;
                                    while let Some(item) = next_item(&mut s).await {
                                        last = Some(item.map(|_| json!(null)));
                                    }
                                    last.unwrap_or(Ok(json!(null)))
                                }
                                Err(e) => Err(e),
                            }
                        } else {
                            pool.execute("sleep", json!({"ms": ms, "token": token}))
                                .await
                                .inspect(|v| assert_eq!(v["token"], json!(token)))
                        };
                        let stop = matches!(r, Err(Error::ShutDown));
                        outcomes.push(r);
                        if stop || i > 10_000 {
                            break;
                        }
                    }
                    outcomes
                })
            })
            .collect();
        assert!(eventually(30, || pool.stats().completed >= 40).await);
        let run_id = pool.run_id().to_owned();
        tokio::time::timeout(Duration::from_secs(60), pool.shutdown())
            .await
            .expect("shutdown ends")
            .unwrap();
        let mut calls = 0u64;
        for c in callers {
            let outcomes = tokio::time::timeout(Duration::from_secs(60), c)
                .await
                .expect("every caller ends after shutdown")
                .unwrap();
            calls += outcomes.len() as u64;
            for r in outcomes {
                if let Err(e) = r {
                    assert!(
                        matches!(e, Error::ShutDown | Error::StoppedByShutdown { .. }),
                        "async {async_workers}: a call ended at shutdown with {e:?}"
                    );
                    assert!(!e.is_crash());
                }
            }
        }
        let s = pool.stats();
        assert_eq!(s.requests, calls, "{s:?}");
        assert_eq!(s.requests, s.completed + s.errors + s.cancelled, "{s:?}");
        assert_eq!(s.crashes, 0, "{s:?}");
        assert!(
            eventually(15, || processes_of_run(&run_id).is_empty()).await,
            "left after shutdown: {:?}",
            processes_of_run(&run_id)
        );
    }
}

/// ARCHITECTURE.md, `call.rs`: `submit` ... "re-routing a call whose frame
/// never reached its worker", and the invariant "A call is sent again only
/// if it provably never reached its worker (... or a frame the dead worker
/// left unread)" (docs/reliability.md: such a call "goes to another one and
/// counts once"): a streaming call written ahead behind a running call,
/// whose worker dies before reading it, goes to the replacement as a
/// one-shot call does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_written_ahead_to_a_worker_that_dies_goes_to_another() {
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| {
            c.pipeline_depth = 4;
            c.pipeline_max_call = Duration::from_millis(200);
            c.health_check_interval = Duration::ZERO;
        })
        .start()
        .await
        .unwrap();
    // Short calls: the worker qualifies for calls written ahead.
    for _ in 0..20 {
        pool.execute("pid", json!({})).await.unwrap();
    }
    let pid = pool.worker_pids()[0];
    let running = a_running_sleep(&pool, 30_000, Duration::from_secs(60)).await;
    let stream = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut s = pool
                .execute_stream(
                    "stream",
                    json!({"n": 3}),
                    CallOptions::new().timeout(Duration::from_secs(60)),
                )
                .await?;
            let mut items = Vec::new();
            while let Some(item) = next_item(&mut s).await {
                items.push(item?);
            }
            Ok::<_, Error>(items)
        })
    };
    assert!(
        eventually(20, || pool.stats().in_flight == 2).await,
        "the stream was written ahead: {:?}",
        pool.stats()
    );
    kill_9(pid);
    let err = running.await.unwrap().unwrap_err();
    assert!(err.is_crash(), "{err:?}");
    let items = tokio::time::timeout(Duration::from_secs(60), stream)
        .await
        .expect("the stream ends")
        .unwrap()
        .unwrap_or_else(|e| panic!("the stream never reached the dead worker, yet: {e:?}"));
    assert_eq!(items.len(), 4, "{items:?}");
    pool.shutdown().await.unwrap();
}
