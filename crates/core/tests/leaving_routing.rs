//! A worker whose stdout ends leaves routing at once, and is still the
//! pool's to stop: shutdown, dropping the pool, replacement and recycling,
//! with real worker processes (`tests/workers/redteam_faults_raw.py`), seen
//! from the pool's public API.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use snakepit_core::{Adapter, Launch, Pool};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `redteam_faults_raw.py` in a mode, its processes marked with `tag`.
struct RawFaults {
    mode: &'static str,
    tag: String,
}

impl Adapter for RawFaults {
    fn launch(&self) -> Launch {
        Launch::new(python())
            .arg(root().join("crates/core/tests/workers/redteam_faults_raw.py"))
            .arg(self.mode)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("REDTEAM_FAULTS_TAG", &self.tag)
    }
    fn command_timeout(&self, _: &str) -> Duration {
        Duration::from_secs(60)
    }
}

fn new_tag(name: &str) -> String {
    format!(
        "review30-{name}-{}-{:?}",
        std::process::id(),
        Instant::now()
    )
}

#[allow(unsafe_code)] // kill(2) on a process this test started
fn kill_now(pid: u32) {
    // SAFETY: kill(2) on a pid; no memory involved.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

/// One `close_later` worker whose stdout is closed (it answered its call,
/// closed stdout 300 ms later and lives on, reading its stdin): out of the
/// pool's routing, its process alive, and the pool's grace period long, so
/// that its reader waits `grace` before it kills it.
async fn a_worker_with_its_stdout_closed(tag: &str, grace: Duration) -> (Pool, u32) {
    let pool = builder(RawFaults {
        mode: "close_later",
        tag: tag.to_owned(),
    })
    .configure(|c| {
        c.shutdown_grace_period = grace;
        c.health_check_interval = Duration::ZERO;
    })
    .size(1)
    .start()
    .await
    .unwrap();
    let pid = pool.worker_pids()[0];
    let r = pool.execute("close_later", json!({})).await.unwrap();
    assert_eq!(r["pid"].as_u64().unwrap() as u32, pid);
    assert!(
        eventually(10, || !pool.worker_pids().contains(&pid)).await,
        "the worker whose stdout closed left the pool's routing"
    );
    assert!(
        alive(pid),
        "its process still runs (the reader waits `grace`)"
    );
    (pool, pid)
}

/// docs/reliability.md, "kill and reap": "shutdown, replacement and
/// dropping the last `Pool` handle kill the whole group and reap it";
/// `Pool::shutdown`: it "closes the workers' stdin, then signals their
/// process groups (SIGTERM, then SIGKILL) and reaps them". A worker whose
/// stdout closed has left the routing tables (`leave_routing`) while its
/// process lives on for up to the grace period; shutdown only stops the
/// workers it finds in the slots (`every_worker`), so it returns with that
/// process alive (and deletes the run record that would let a later sweep
/// find it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_a_worker_whose_stdout_closed_before_it_returns() {
    let tag = new_tag("shutdown");
    let (pool, pid) = a_worker_with_its_stdout_closed(&tag, Duration::from_secs(20)).await;
    pool.shutdown().await.unwrap();
    let left = alive(pid);
    kill_now(pid); // not left to the reader's 20 s timer
    assert!(
        !left,
        "shutdown returned while worker {pid} (its stdout closed) still ran"
    );
}

/// Sound: the same promise for the last handle dropped without
/// `shutdown()`. `PoolInner::drop` kills only `every_worker()`, which no
/// longer lists the worker whose stdout closed; it is the spawner's
/// watchdog (its pid is forgotten only at `gone`), dropped with the pool's
/// shared part, that kills it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_pool_kills_a_worker_whose_stdout_closed() {
    let tag = new_tag("drop");
    let (pool, pid) = a_worker_with_its_stdout_closed(&tag, Duration::from_secs(20)).await;
    drop(pool);
    let gone = eventually(3, || !alive(pid)).await;
    kill_now(pid);
    assert!(
        gone,
        "worker {pid} (its stdout closed) still ran 3 s after the last handle was dropped"
    );
}

/// Sound: the worker whose stdout closed is out of routing at once (new
/// calls do not wait for it), and the reader still kills it after the grace
/// period and the supervisor replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_stdout_closed_is_replaced_after_the_grace_period() {
    let tag = new_tag("replaced");
    let (pool, pid) = a_worker_with_its_stdout_closed(&tag, Duration::from_secs(3)).await;
    assert!(
        eventually(20, || !alive(pid)).await,
        "the reader killed it after the grace period"
    );
    assert!(
        eventually(20, || pool.worker_pids().len() == 1).await,
        "a replacement started"
    );
    let r = pool.execute("pid", json!({})).await.unwrap();
    assert_ne!(r["pid"].as_u64().unwrap() as u32, pid);
    let s = pool.stats();
    assert_eq!((s.completed, s.errors, s.crashes), (2, 0, 0));
    pool.shutdown().await.unwrap();
}

/// Sound: a worker recycled by calls whose stdout closes around its
/// replacement's start leaves routing by its own generation only: the
/// replacement stays in its slot and serves, and nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recycled_worker_whose_stdout_closes_leaves_its_replacement_in_routing() {
    let tag = new_tag("recycled");
    let pool = builder(RawFaults {
        mode: "close_later",
        tag: tag.clone(),
    })
    .configure(|c| {
        c.recycle_after_calls = 2;
        c.shutdown_grace_period = Duration::from_secs(2);
        c.health_check_interval = Duration::ZERO;
    })
    .size(1)
    .start()
    .await
    .unwrap();
    let old = pool.worker_pids()[0];
    let r = pool.execute("pid", json!({})).await.unwrap();
    assert_eq!(r["pid"].as_u64().unwrap() as u32, old);
    // Its second call: it is due for recycling, and closes its stdout.
    let r = pool.execute("close_later", json!({})).await.unwrap();
    assert_eq!(r["pid"].as_u64().unwrap() as u32, old);
    assert!(eventually(30, || !alive(old)).await, "the old worker ended");
    assert!(
        eventually(30, || {
            let pids = pool.worker_pids();
            pids.len() == 1 && pids[0] != old
        })
        .await,
        "its replacement is in routing: {:?}",
        pool.worker_pids()
    );
    // Past the old worker's grace period, its end touched no one else.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(pool.worker_pids().len(), 1);
    let r = pool.execute("pid", json!({})).await.unwrap();
    assert_ne!(r["pid"].as_u64().unwrap() as u32, old);
    let s = pool.stats();
    assert_eq!((s.completed, s.errors, s.crashes), (3, 0, 0));
    pool.shutdown().await.unwrap();
    assert!(eventually(10, || !alive(old)).await);
}
