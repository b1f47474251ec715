//! `PoolConfig::sweep_on_start` (README, Configuration: "kill what a crashed
//! run of the same pool name left"; docs/reliability.md: "When a pool starts
//! (`PoolConfig::sweep_on_start`, on by default) it reads the records of its
//! own instance"): off, a new pool leaves a crashed run's leftovers and its
//! record alone; on, the next pool of the same name kills them.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use serde_json::json;
use snakepit_core::events::EventKind;
use snakepit_core::{Pool, PoolBuilder};

const NAME: &str = "sweepsetting";

/// Not a test of its own: the host whose run crashes. The test runs this
/// binary again with `SNAKEPIT_TEST_HOST` set; it starts a pool of one
/// worker, has the worker start a child in a session of its own (so that
/// it outlives the host's death, as only the sweep can clean up), writes
/// the pids and waits to be killed.
#[test]
fn host_process() {
    run_as_host(|_, state_dir| async move {
        let pool = builder(TestWorker::new())
            .size(1)
            .name(NAME)
            .configure(|c| c.state_dir = Some(state_dir))
            .start()
            .await
            .unwrap();
        let child = pool.execute("spawn_escaped", json!({})).await.unwrap();
        let report = json!({
            "workers": pool.worker_pids(),
            "children": [child["child_pid"]],
        });
        (report, pool)
    });
}

/// Runs [`host_process`], kills it with SIGKILL once it has written its
/// pids, and returns them: (workers, the escaped child).
fn crashed_run(state_dir: &std::path::Path) -> (Vec<u32>, u32) {
    let (mut host, pids) = host_with_report("1", state_dir);
    kill_9(host.id());
    host.wait().unwrap();
    (pid_list(&pids, "workers"), pid_list(&pids, "children")[0])
}

fn records(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A pool of the crashed run's name, in its state directory, that counts
/// what its start-up sweep killed (`None`: no sweep event at all).
async fn next_pool(
    dir: &std::path::Path,
    sweep_on_start: bool,
) -> (Pool, Arc<Mutex<Option<usize>>>) {
    let swept = Arc::new(Mutex::new(None));
    let seen = swept.clone();
    let builder: PoolBuilder = builder(TestWorker::new())
        .size(1)
        .name(NAME)
        .configure(|c| {
            c.state_dir = Some(dir.to_owned());
            c.sweep_on_start = sweep_on_start;
        })
        .on_event(move |e| {
            if let EventKind::Swept { killed } = e.kind {
                *seen.lock().unwrap().get_or_insert(0) += killed;
            }
        });
    (builder.start().await.unwrap(), swept)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sweep_on_start_off_a_crashed_runs_leftovers_are_left_alone_until_a_pool_with_it_on() {
    let dir = temp_dir("sweep-setting");
    let (workers, escaped) = crashed_run(&dir);
    assert!(eventually(2, || workers.iter().all(|&p| !alive(p))).await);
    assert!(alive(escaped), "the escaped child outlives its host");
    let crashed = records(&dir);
    assert_eq!(crashed.len(), 1, "the crashed run's record: {crashed:?}");

    // Off: the pool starts and serves, kills nothing, reports no sweep,
    // and leaves the crashed run's record where it was.
    let (pool, swept) = next_pool(&dir, false).await;
    assert!(pool.execute("echo", json!({})).await.is_ok());
    assert_eq!(*swept.lock().unwrap(), None, "no sweep ran");
    assert!(alive(escaped), "sweep_on_start = false killed a leftover");
    let during = records(&dir);
    assert_eq!(during.len(), 2, "{during:?}");
    assert!(during.contains(&crashed[0]), "{during:?}");
    pool.shutdown().await.unwrap();
    assert_eq!(records(&dir), crashed, "only its own record is removed");
    assert!(alive(escaped));

    // On (the default): the next pool of that name kills the leftover and
    // removes the crashed run's record.
    let (pool, swept) = next_pool(&dir, true).await;
    assert_eq!(*swept.lock().unwrap(), Some(1), "exactly the escaped child");
    assert!(eventually(2, || !alive(escaped)).await);
    let after = records(&dir);
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after[0].contains(pool.run_id()), "{after:?}");
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
