//! docs/preload.md's promises about what survives a fork, shown through a
//! real preloaded pool of Python workers (the bridges' own suites play the
//! pool over a socket pair; these go through `Pool`): each worker draws its
//! own random numbers, the template's objects are frozen out of the garbage
//! collector, a worker runs the exit handlers registered after the fork and
//! not the template's, an after-fork hook that raises is a start failure
//! carrying its error, and the template's load counts against
//! `worker_init_timeout`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::on_every_worker;
use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::{Error, Pool};
use snakepit_tests::{alive, eventually, python};

fn bridge() -> Bridge {
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/preload_promises.py");
    Bridge::python(script).interpreter(python()).preload()
}

fn temp(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "snakepit-preload-promises-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

/// "Random generators are copied ... Python's `random` is reseeded by the
/// bridge after the fork": four forks of one template draw four different
/// numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forked_workers_draw_different_random_numbers() {
    let pool = Pool::builder(bridge()).size(4).start().await.unwrap();
    let draws = on_every_worker(&pool, "draw").await;
    let mut numbers: Vec<String> = draws.iter().map(|v| v["random"].to_string()).collect();
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers.len(), 4, "each worker its own sequence: {draws:?}");
    pool.shutdown().await.unwrap();
}

/// "the Python bridge calls `gc.freeze()` before forking": the template's
/// objects sit in the collector's permanent generation in every worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_templates_objects_are_frozen_in_every_worker() {
    let pool = Pool::builder(bridge()).size(2).start().await.unwrap();
    for v in on_every_worker(&pool, "draw").await {
        assert!(v["frozen"].as_u64().unwrap() > 0, "gc.freeze() ran: {v}");
    }
    pool.shutdown().await.unwrap();
}

/// "A Python worker runs the `atexit` handlers registered after the fork
/// ... when it ends, not those the template registered at import."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_its_own_exit_handlers_and_not_the_templates() {
    let log = temp("atexit");
    let pool = Pool::builder(bridge().env("PRELOAD_EXIT_LOG", &log))
        .size(2)
        .start()
        .await
        .unwrap();
    let mut workers = pool.worker_pids();
    workers.sort();
    let template = pool.template_pid().unwrap();
    pool.shutdown().await.unwrap();
    assert!(
        eventually(10, || !alive(template)
            && workers.iter().all(|&p| !alive(p)))
        .await,
        "every process of the pool ended"
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let mut ran: Vec<u32> = Vec::new();
    for line in text.lines() {
        let (who, pid) = line.split_once(' ').unwrap();
        let pid: u32 = pid.parse().unwrap();
        match who {
            // Registered by the template at import: it may run in the
            // template itself, never in a worker.
            "template" => assert_eq!(pid, template, "a template handler ran in a worker: {text}"),
            "worker" => ran.push(pid),
            _ => panic!("{text}"),
        }
    }
    ran.sort();
    assert_eq!(
        ran, workers,
        "each worker ran the handler its hook registered: {text}"
    );
    let _ = std::fs::remove_file(log);
}

/// Starts a one-worker pool of `bridge` configured by `configure`, which
/// must fail with `StartFailed`; the error as text.
async fn start_failure(
    bridge: Bridge,
    configure: impl FnOnce(&mut snakepit_core::PoolConfig),
) -> String {
    let err = Pool::builder(bridge)
        .size(1)
        .configure(configure)
        .start()
        .await
        .unwrap_err();
    let detail = format!("{err:?}");
    assert!(matches!(err, Error::StartFailed(_)), "{detail}");
    detail
}

/// "a hook that raises is logged to stderr and the child exits with status
/// 1": the pool cannot start, and its error carries the hook's exception.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_after_fork_hook_that_raises_fails_the_start_with_its_error() {
    let detail = start_failure(bridge().env("PRELOAD_HOOK_RAISES", "1"), |c| {
        c.startup_timeout = Duration::from_secs(20)
    })
    .await;
    assert!(
        detail.contains("cannot reach the feature store"),
        "the hook's exception: {detail}"
    );
}

/// "The template's load counts against `worker_init_timeout`": a load
/// longer than it fails the start, naming the timeout, and raising it
/// lets the same load start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_templates_load_counts_against_worker_init_timeout() {
    let detail = start_failure(bridge().env("PRELOAD_SLEEP_MS", "3000"), |c| {
        c.worker_init_timeout = Duration::from_millis(1000)
    })
    .await;
    assert!(
        detail.contains("template") && detail.contains("not ready within 1s"),
        "the cause names the template and the timeout: {detail}"
    );
    let pool = Pool::builder(bridge().env("PRELOAD_SLEEP_MS", "1500"))
        .size(1)
        .configure(|c| c.worker_init_timeout = Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    pool.execute("draw", json!({})).await.unwrap();
    pool.shutdown().await.unwrap();
}
