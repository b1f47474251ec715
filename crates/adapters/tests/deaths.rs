//! A Node worker killed (alone, not its group) while a child it started with
//! inherited stdio holds its stdout: the pool sees the death at once, fails
//! the call in flight as a crash with the signal, kills the child with the
//! group and starts a replacement (docs/reliability.md, issue 12 item 1).

use std::time::Duration;

use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::{CallOptions, Error, ExitReason, Pool};
use snakepit_tests::{alive, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_worker_killed_while_its_child_holds_stdout_fails_its_call_at_once() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/workers/inherit_stdio.js"
    );
    let pool = Pool::builder(Bridge::node(script))
        .size(1)
        .configure(|c| c.health_check_interval = Duration::ZERO)
        .start()
        .await
        .unwrap();
    let spawned = pool.execute("spawn_child", json!({})).await.unwrap();
    let child = spawned["child_pid"].as_u64().unwrap() as u32;
    let worker = spawned["pid"].as_u64().unwrap() as u32;
    assert!(alive(child));
    let marker = std::env::temp_dir().join(format!("snakepit-node-started-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let call = {
        let pool = pool.clone();
        let marker = marker.display().to_string();
        tokio::spawn(async move {
            pool.execute_with(
                "sleep",
                json!({"ms": 60_000, "marker": marker}),
                CallOptions::new().timeout(Duration::from_secs(30)),
            )
            .await
        })
    };
    // Killed once the call runs in it (killed before, the call never
    // reached it and would rightly go to the replacement).
    assert!(eventually(10, || marker.exists()).await, "the call started");
    let _ = std::fs::remove_file(&marker);
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on the worker we started; no memory involved.
    unsafe {
        libc::kill(worker as libc::pid_t, libc::SIGKILL);
    }
    match call.await.unwrap() {
        Err(Error::WorkerCrashed(crash)) => {
            assert_eq!(crash.pid, worker);
            assert_eq!(crash.exit, ExitReason::Signal(libc::SIGKILL));
        }
        other => panic!("expected a crash with SIGKILL, got {other:?}"),
    }
    assert!(
        eventually(10, || !alive(child)).await,
        "the child went with the group"
    );
    assert!(eventually(20, || pool.worker_pids().len() == 1).await);
    let r = pool.execute("sleep", json!({"ms": 1})).await.unwrap();
    assert_ne!(r["pid"].as_u64().unwrap() as u32, worker);
    pool.shutdown().await.unwrap();
}
