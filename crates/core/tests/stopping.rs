//! How a worker process ends when the pool is done with it.
//!
//! Retired, by recycling or by `shutdown()` (docs/reliability.md,
//! Recycling): its stdin is closed first, and it is signalled (SIGTERM, then
//! SIGKILL) only if it has not exited within the grace period. Orphaned, by
//! a host killed with SIGKILL: with the watchdog gone too and no sweep run
//! afterwards, the parent-death signal alone ends every worker (the table
//! "No orphan, on any path").
//!
//! The worker (`workers/retire_worker.py`) logs what reaches it: the end of
//! its stdin, SIGTERM, and its own exit.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use snakepit_core::{Adapter, Launch, Pool};

/// `retire_worker.py`, logging to `log`, doing `on_eof` at the end of its
/// stdin and `on_term` on SIGTERM (`exit` or `ignore`); `extra` is its
/// fourth argument (`clear-pdeathsig`, or empty).
struct Retiring {
    log: PathBuf,
    on_eof: &'static str,
    on_term: &'static str,
    extra: &'static str,
}

impl Adapter for Retiring {
    fn launch(&self) -> Launch {
        Launch::new(python())
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/retire_worker.py"))
            .arg(&self.log)
            .arg(self.on_eof)
            .arg(self.on_term)
            .arg(self.extra)
    }
}

/// What the worker `pid` logged, in order: (`start` | `eof` | `term` |
/// `exit`, its monotonic clock in seconds).
fn logged(log: &Path, pid: u32) -> Vec<(String, f64)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let what = f.next()?.to_owned();
            let p: u32 = f.next()?.parse().ok()?;
            let at: f64 = f.next()?.parse().ok()?;
            (p == pid).then_some((what, at))
        })
        .collect()
}

fn names(events: &[(String, f64)]) -> Vec<&str> {
    events.iter().map(|(w, _)| w.as_str()).collect()
}

fn at(events: &[(String, f64)], what: &str) -> f64 {
    events
        .iter()
        .find(|(w, _)| w == what)
        .unwrap_or_else(|| panic!("no {what} in {events:?}"))
        .1
}

/// A pool of one `Retiring` worker recycled after a few calls.
async fn recycling_pool(log: &Path, on_eof: &'static str, grace: Duration) -> Pool {
    let adapter = Retiring {
        log: log.to_owned(),
        on_eof,
        on_term: "ignore",
        extra: "",
    };
    builder(adapter)
        .size(1)
        .configure(|c| {
            c.recycle_after_calls = 4;
            c.shutdown_grace_period = grace;
            c.cleanup_retry_interval = Duration::from_millis(50);
            c.state_dir = Some(log.with_extension("state"));
        })
        .start()
        .await
        .unwrap()
}

async fn pid_of(pool: &Pool) -> u32 {
    let r = pool.execute("ping", json!({})).await.unwrap();
    r["pid"].as_u64().unwrap() as u32
}

/// Calls the pool until a worker other than `old` answers: `old` was
/// recycled. Returns the new worker's pid.
async fn recycle(pool: &Pool, old: u32) -> u32 {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let pid = pid_of(pool).await;
        if pid != old {
            return pid;
        }
        assert!(Instant::now() < until, "worker {old} was never recycled");
    }
}

/// A worker that exits at the end of its stdin, retired by recycling and by
/// shutdown, exits by itself: it saw its stdin end and never got SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_worker_that_exits_at_end_of_input_gets_no_signal() {
    let dir = temp_dir("retire-eof");
    let log = dir.join("log");
    // A long grace: a signal sent before it ends would be a signal too early.
    let pool = recycling_pool(&log, "exit", Duration::from_secs(30)).await;
    let first = pid_of(&pool).await;
    let second = recycle(&pool, first).await;
    assert!(
        eventually(30, || !alive(first)).await,
        "the recycled worker {first} ended"
    );
    assert_eq!(
        names(&logged(&log, first)),
        ["start", "eof", "exit"],
        "recycled: stdin closed, no signal"
    );

    pool.shutdown().await.unwrap();
    assert!(!alive(second));
    assert_eq!(
        names(&logged(&log, second)),
        ["start", "eof", "exit"],
        "shut down: stdin closed, no signal"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A worker that ignores the end of its stdin and SIGTERM, retired by
/// recycling and by shutdown: its stdin ends first, SIGTERM comes only once
/// the grace period has passed, and then SIGKILL ends it (it never exits by
/// itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_worker_that_ignores_end_of_input_is_signalled_after_the_grace_period() {
    let dir = temp_dir("retire-stubborn");
    let log = dir.join("log");
    let grace = Duration::from_millis(1500);
    let pool = recycling_pool(&log, "ignore", grace).await;
    // The worker sees its stdin end a little after the pool closed it: on a
    // busy machine, some of the grace period may already have gone by.
    let least = grace.as_secs_f64() / 2.0;

    let first = pid_of(&pool).await;
    let second = recycle(&pool, first).await;
    assert!(
        eventually(30, || !alive(first)).await,
        "the recycled worker {first} was killed"
    );
    let events = logged(&log, first);
    assert_eq!(
        names(&events),
        ["start", "eof", "term"],
        "recycled: stdin closed, then SIGTERM, then (no exit of its own) SIGKILL"
    );
    let waited = at(&events, "term") - at(&events, "eof");
    assert!(
        waited >= least,
        "SIGTERM came {waited:.3} s after the end of stdin, before the grace period of {grace:?}"
    );

    pool.shutdown().await.unwrap();
    assert!(!alive(second), "shutdown returns once the worker is gone");
    let events = logged(&log, second);
    assert_eq!(
        names(&events),
        ["start", "eof", "term"],
        "shut down: stdin closed, then SIGTERM, then SIGKILL"
    );
    let waited = at(&events, "term") - at(&events, "eof");
    assert!(
        waited >= least,
        "SIGTERM came {waited:.3} s after the end of stdin, before the grace period of {grace:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Not a test of its own: the host of
/// [`a_host_killed_with_sigkill_leaves_no_worker_by_the_parent_death_signal_alone`].
/// The test runs this binary again with `SNAKEPIT_TEST_PDEATH_HOST` set to a
/// directory; it starts two pools of workers that ignore the end of their
/// stdin and SIGTERM (one of them clears its parent-death signal), gives a
/// worker a child of its own, writes every pid and waits to be killed.
#[test]
fn pdeath_host_process() {
    let Some(dir) = std::env::var_os("SNAKEPIT_TEST_PDEATH_HOST").map(PathBuf::from) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let start = |name: &'static str, size: usize, extra: &'static str| {
            let adapter = Retiring {
                log: dir.join("log"),
                on_eof: "ignore",
                on_term: "ignore",
                extra,
            };
            builder(adapter)
                .size(size)
                .name(name)
                .configure(|c| c.state_dir = Some(dir.join("state")))
                .start()
        };
        let pool = start("pdeath", 2, "").await.unwrap();
        let control = start("pdeath-control", 1, "clear-pdeathsig").await.unwrap();
        let child = pool.execute("spawn_child", json!({})).await.unwrap();
        let line = json!({
            "workers": pool.worker_pids(),
            "control": control.worker_pids(),
            "child": child["child_pid"],
        });
        let out = dir.join("pids");
        std::fs::write(out.with_extension("tmp"), line.to_string()).unwrap();
        std::fs::rename(out.with_extension("tmp"), &out).unwrap();
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
}

/// The pids of the live children of `parent` whose command is `comm`.
fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        if &stat[open + 1..close] == comm && ppid == Some(&parent.to_string()) && alive(pid) {
            found.push(pid);
        }
    }
    found
}

/// The host dies by SIGKILL after its watchdog was killed, and no sweep
/// runs after it: the workers, which ignore the end of their stdin and
/// SIGTERM, still die, by the parent-death signal alone. Two controls show
/// that nothing else was at work: a worker that cleared its parent-death
/// signal, and a worker's child (which never had one), both outlive the
/// host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_with_sigkill_leaves_no_worker_by_the_parent_death_signal_alone() {
    let dir = temp_dir("pdeath");
    let out = dir.join("pids");
    let mut host = snakepit_tests::this_test("pdeath_host_process")
        .env("SNAKEPIT_TEST_PDEATH_HOST", &dir)
        .spawn()
        .unwrap();
    assert!(
        eventually(60, || out.exists() || host.try_wait().unwrap().is_some()).await,
        "the host started its pools"
    );
    assert!(out.exists(), "the host ended: {:?}", host.try_wait());
    let pids: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let list = |k: &str| pid_list(&pids, k);
    let workers = list("workers");
    let control = list("control")[0];
    let child = pids["child"].as_u64().unwrap() as u32;
    assert_eq!(workers.len(), 2);

    // The watchdogs (one per pool, `sh`) go first.
    let watchdogs = children_named(host.id(), "sh");
    assert_eq!(watchdogs.len(), 2, "one watchdog per pool: {watchdogs:?}");
    for &w in &watchdogs {
        kill_9(w);
    }
    assert!(eventually(10, || watchdogs.iter().all(|&w| !alive(w))).await);
    let everyone: Vec<u32> = workers.iter().copied().chain([control, child]).collect();
    assert!(
        everyone.iter().all(|&p| alive(p)),
        "all alive before the host dies"
    );

    kill_9(host.id());
    host.wait().unwrap();
    let gone = eventually(10, || workers.iter().all(|&p| !alive(p))).await;
    let left: Vec<u32> = workers.iter().copied().filter(|&p| alive(p)).collect();
    let controls_lived = alive(control) && alive(child);
    for &p in left.iter().chain(&[control, child]) {
        kill_9(p);
    }
    assert!(gone, "workers alive after their host died: {left:?}");
    assert!(
        controls_lived,
        "a worker without the parent-death signal, and a worker's child, outlive the host \
         when the watchdog is gone"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// README and docs/reliability.md: the parent-death signal is "set before
/// `exec` from a spawner thread that lives as long as the pool". Linux sends
/// it when the *thread* that forked a process ends, so a pool started from
/// a thread that then ends must keep its workers: they are alive and serve
/// after that thread is gone, and so does a worker started after it (a
/// replacement).
#[test]
fn a_pool_started_from_a_thread_that_ends_keeps_its_workers() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let handle = rt.handle().clone();
    let pool =
        std::thread::spawn(move || handle.block_on(builder(TestWorker::new()).size(2).start()))
            .join()
            .expect("the starting thread")
            .unwrap();
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pids = pool.worker_pids();
        assert_eq!(pids.len(), 2);
        assert!(pids.iter().all(|&p| alive(p)), "{pids:?}");
        let r = pool.execute("echo", json!({})).await.unwrap();
        assert!(pids.contains(&(r["pid"].as_u64().unwrap() as u32)));
        // A replacement, started after that thread ended, lives too.
        kill_9(pids[0]);
        assert!(
            eventually(10, || {
                let now = pool.worker_pids();
                now.len() == 2 && !now.contains(&pids[0])
            })
            .await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = pool.worker_pids();
        assert!(now.iter().all(|&p| alive(p)), "{now:?}");
        for _ in 0..4 {
            pool.execute("echo", json!({})).await.unwrap();
        }
        pool.shutdown().await.unwrap();
    });
}
