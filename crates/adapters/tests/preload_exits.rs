//! docs/preload.md, "What does not survive a fork", for threads and exits,
//! through real preloaded pools of Python and Ruby workers:
//!
//! - "A thread started by the template ... is simply absent in every
//!   worker" (Python and Ruby);
//! - "Non-daemon threads are not waited for when a forked Python worker
//!   ends" (while its exit handlers still run);
//! - "A Ruby worker ends with `exit!` and runs no `at_exit` handler".
//!
//! Each worker ends on its own when the pool closes its stdin: the pools
//! have a grace period far longer than [`GUARD`], so a worker that waited
//! for something would still be alive (unsignalled) when the guard fires.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::on_every_worker;
use serde_json::json;
use snakepit_adapters::{Bridge, Language};
use snakepit_core::Pool;
use snakepit_tests::{alive, eventually, python};

/// Only turns a worker that never ends by itself into a failure of the
/// test (the pool would signal it only after `GRACE`).
const GUARD: Duration = Duration::from_secs(60);
const GRACE: Duration = Duration::from_secs(600);

fn bridge(lang: Language, log: &Path) -> Bridge {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers");
    let bridge = match lang {
        Language::Ruby => Bridge::ruby(dir.join("preload_exits.rb")),
        _ => Bridge::python(dir.join("preload_exits.py")).interpreter(python()),
    };
    bridge.env("PRELOAD_EXITS_LOG", log).preload()
}

fn log_file(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "snakepit-preload-exits-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

/// The log's lines as (tag, pid).
fn notes(log: &Path) -> Vec<(String, u32)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (tag, pid) = l.split_once(' ').unwrap();
            (tag.to_owned(), pid.parse().unwrap())
        })
        .collect()
}

fn pids_with(notes: &[(String, u32)], tag: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = notes
        .iter()
        .filter(|(t, _)| t == tag)
        .map(|&(_, p)| p)
        .collect();
    pids.sort();
    pids
}

async fn start(bridge: Bridge, size: usize) -> Pool {
    Pool::builder(bridge)
        .size(size)
        .configure(|c| {
            c.shutdown_grace_period = GRACE;
            c.health_check_interval = Duration::ZERO;
        })
        .start()
        .await
        .unwrap()
}

/// Shuts the pool down and waits until every one of its processes is gone;
/// a worker still alive at [`GUARD`] was waiting for something.
async fn shut_down(pool: Pool, workers: &[u32], template: u32) {
    tokio::time::timeout(GUARD, pool.shutdown())
        .await
        .expect("the workers ended on their own when their stdin closed")
        .unwrap();
    assert!(
        eventually(10, || !alive(template)
            && workers.iter().all(|&p| !alive(p)))
        .await,
        "every process of the pool ended"
    );
}

fn task_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// "Only the thread that forks exists in the child. A thread started by
/// the template ... is simply absent in every worker": the template runs a
/// non-daemon thread of its own (the kernel counts it), and no worker has
/// it, in the language's own list of threads or in the kernel's.
async fn a_thread_the_template_started_is_absent_in_every_worker(lang: Language) {
    let log = log_file(&format!("template-thread-{lang:?}"));
    let pool = start(
        bridge(lang, &log).env("PRELOAD_EXITS_TEMPLATE_THREAD", "1"),
        2,
    )
    .await;
    let template = pool.template_pid().unwrap();
    assert!(
        task_count(template) >= 2,
        "{lang:?}: the template runs its thread"
    );
    for v in on_every_worker(&pool, "threads").await {
        let names: Vec<&str> = v["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert!(
            !names.contains(&"template-loader"),
            "{lang:?}: the template's thread is in a worker: {v}"
        );
        assert_eq!(
            v["tasks"].as_u64().unwrap() as usize,
            names.len(),
            "{lang:?}: the kernel's threads are the language's: {v}"
        );
    }
    let mut workers = pool.worker_pids();
    workers.sort();
    shut_down(pool, &workers, template).await;
    let _ = std::fs::remove_file(log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_the_python_template_started_is_absent_in_every_worker() {
    a_thread_the_template_started_is_absent_in_every_worker(Language::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_the_ruby_template_started_is_absent_in_every_worker() {
    a_thread_the_template_started_is_absent_in_every_worker(Language::Ruby).await;
}

/// "Non-daemon threads are not waited for when a forked Python worker
/// ends": each worker runs a non-daemon thread that never ends (started in
/// its after-fork hook), and still ends on its own when its stdin closes,
/// running the exit handler its hook registered on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_python_worker_ends_without_waiting_for_its_non_daemon_threads() {
    let log = log_file("worker-thread");
    let pool = start(
        bridge(Language::Python, &log).env("PRELOAD_EXITS_WORKER_THREAD", "1"),
        2,
    )
    .await;
    for v in on_every_worker(&pool, "threads").await {
        assert_eq!(
            v["non_daemon"],
            json!(["MainThread", "worker-poller"]),
            "the worker runs its non-daemon thread: {v}"
        );
    }
    let template = pool.template_pid().unwrap();
    let mut workers = pool.worker_pids();
    workers.sort();
    shut_down(pool, &workers, template).await;
    let notes = notes(&log);
    assert_eq!(pids_with(&notes, "hook"), workers, "{notes:?}");
    assert_eq!(
        pids_with(&notes, "worker-atexit"),
        workers,
        "each worker ran its exit handlers: {notes:?}"
    );
    let _ = std::fs::remove_file(log);
}

/// "A Ruby worker ends with `exit!` and runs no `at_exit` handler": neither
/// the one its after-fork hook registered nor the one the template
/// registered at load. The same script, started directly (not preloaded),
/// runs both when its stdin closes: the handlers are there to run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_ruby_worker_runs_no_at_exit_handler() {
    let log = log_file("ruby-at-exit");
    let pool = start(bridge(Language::Ruby, &log), 2).await;
    let template = pool.template_pid().unwrap();
    let mut workers = pool.worker_pids();
    workers.sort();
    // Served, so that each worker has run its hook and is past start-up.
    on_every_worker(&pool, "threads").await;
    shut_down(pool, &workers, template).await;
    let seen = notes(&log);
    assert_eq!(
        pids_with(&seen, "hook"),
        workers,
        "each hook registered its handler: {seen:?}"
    );
    let ran: Vec<_> = seen
        .iter()
        .filter(|(tag, pid)| tag != "hook" && workers.contains(pid))
        .collect();
    assert!(ran.is_empty(), "a worker ran at_exit handlers: {seen:?}");
    let _ = std::fs::remove_file(&log);

    // Not preloaded: the one worker runs both handlers when it ends.
    let direct = Bridge::ruby(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/preload_exits.rb"),
    )
    .env("PRELOAD_EXITS_LOG", &log);
    let pool = start(direct, 1).await;
    let worker = pool.worker_pids()[0];
    on_every_worker(&pool, "threads").await;
    tokio::time::timeout(GUARD, pool.shutdown())
        .await
        .expect("the worker ended on its own when its stdin closed")
        .unwrap();
    assert!(eventually(10, || !alive(worker)).await);
    let mut tags: Vec<String> = notes(&log)
        .into_iter()
        .filter(|&(_, pid)| pid == worker)
        .map(|(tag, _)| tag)
        .collect();
    tags.sort();
    assert_eq!(
        tags,
        ["hook", "template-at_exit", "worker-at_exit"],
        "a directly started worker runs its at_exit handlers"
    );
    let _ = std::fs::remove_file(log);
}

/// docs/reliability.md: "a reused pid, somebody else's process ... is never
/// touched"; docs/preload.md: every promise holds for a forked worker. A
/// template that reports another process's pid as its worker's (here a
/// bystander in a group of its own, and 0) is refused: the start fails
/// naming it, the bystander lives (it was killed as the "worker"), and the
/// real worker the template forked dies with the pool (it was left running).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_reports_a_pid_it_did_not_fork_is_refused() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers");
    #[allow(clippy::disallowed_methods)] // a bystander, not a worker
    let mut bystander = std::process::Command::new("setsid")
        .args(["sleep", "300"])
        .spawn()
        .unwrap();
    let by = bystander.id();
    assert!(eventually(10, || snakepit_tests::alive(by)).await);
    for lie in [by, 0] {
        let log = log_file(&format!("lying-{lie}"));
        let bridge = Bridge::python(dir.join("lying_template.py"))
            .interpreter(python())
            .env("LYING_PID", lie.to_string())
            .env("LYING_LOG", &log)
            .preload();
        let err = Pool::builder(bridge)
            .size(1)
            .configure(|c| {
                c.startup_timeout = Duration::from_secs(10);
                c.health_check_interval = Duration::ZERO;
            })
            .start()
            .await
            .expect_err("a lying template's pool does not start");
        let text = format!("{err:#}");
        assert!(
            text.contains(&format!(
                "reported pid {lie}, which is not a process it forked"
            )),
            "{text}"
        );
        let forked: Vec<u32> = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert!(!forked.is_empty(), "the template forked a worker");
        assert!(
            eventually(10, || forked.iter().all(|&p| !alive(p))).await,
            "the real workers {forked:?} outlived the pool"
        );
        assert!(alive(by), "the bystander was touched (lie {lie})");
        let _ = std::fs::remove_file(&log);
    }
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}
