//! Pipelined dispatch against real Ruby workers (the bundled bridge declares
//! `pipeline`): calls written ahead to a worker that runs one at a time keep
//! every promise of the pool (docs/reliability.md). The Python equivalents
//! are in crates/core/tests/pipeline.rs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{CallOptions, Error, Pool, PoolBuilder, WireCodec};
use snakepit_tests::eventually;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/pipeline_worker.rb")
}

/// A pool of Ruby workers whose calls count as short even on a loaded
/// machine running debug builds (what "short" means is not under test here).
fn pipelined(size: usize, codec: WireCodec) -> PoolBuilder {
    Pool::builder(Bridge::ruby(script()).codec(codec))
        .size(size)
        .configure(|c| {
            c.pipeline_max_call = Duration::from_millis(50);
            c.shutdown_grace_period = Duration::from_millis(500);
            c.restart_backoff = Duration::from_millis(20);
        })
}

/// Short calls, so that the worker's moving average allows writing ahead.
async fn warm_up(pool: &Pool) -> u64 {
    let mut served = 0;
    for _ in 0..20 {
        let r = pool.execute("echo", json!({})).await.unwrap();
        served = r["served"].as_u64().unwrap();
    }
    served
}

fn in_flight_on_first(pool: &Pool) -> usize {
    pool.workers().first().map_or(0, |w| w.in_flight)
}

fn spawn_call(
    pool: &Pool,
    command: &'static str,
    args: Value,
    options: CallOptions,
) -> tokio::task::JoinHandle<snakepit_core::Result<Value>> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.execute_with(command, args, options).await })
}

fn kill_9(pid: u32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a process this test started; no memory involved.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// A fresh directory for marker files.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "snakepit-ruby-pipeline-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A call written ahead whose caller gives up before it starts never runs:
/// the worker drops it on the cancel frame, and no signal is sent (the call
/// running in front of it completes normally).
async fn a_waiting_call_that_is_cancelled_never_runs(codec: WireCodec) {
    let pool = pipelined(1, codec).start().await.unwrap();
    let served = warm_up(&pool).await;
    let running = spawn_call(&pool, "sleep", json!({"ms": 3000}), CallOptions::new());
    assert!(eventually(10, || in_flight_on_first(&pool) == 1).await);
    let waiting = spawn_call(
        &pool,
        "echo",
        json!({}),
        CallOptions::new().timeout(Duration::from_millis(300)),
    );
    assert!(
        eventually(10, || in_flight_on_first(&pool) == 2).await,
        "the second call was written ahead: {:?}",
        pool.workers()
    );
    let stats = pool.stats();
    assert_eq!(
        (stats.in_flight, stats.queued),
        (2, 0),
        "a call written ahead is in flight, not queued"
    );
    assert!(matches!(
        waiting.await.unwrap(),
        Err(Error::CallTimeout { .. })
    ));
    // The running call was not interrupted (no SIGINT for a waiting call).
    let slept = running.await.unwrap().unwrap();
    assert_eq!(slept["token"], Value::Null);
    let r = pool.execute("echo", json!({})).await.unwrap();
    assert_eq!(
        r["served"].as_u64().unwrap(),
        served + 1,
        "the cancelled echo never ran"
    );
    let stats = pool.stats();
    assert_eq!((stats.crashes, stats.restarts), (0, 0), "{stats:?}");
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_call_that_is_cancelled_never_runs_json() {
    a_waiting_call_that_is_cancelled_never_runs(WireCodec::Json).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_call_that_is_cancelled_never_runs_msgpack() {
    a_waiting_call_that_is_cancelled_never_runs(WireCodec::MsgPack).await;
}

/// A worker that dies with a call waiting in its pipe: the running call
/// fails as a crash; the waiting one never ran there, runs once on the
/// replacement and is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_on_a_worker_that_dies_go_to_another() {
    let pool = pipelined(1, WireCodec::Json).start().await.unwrap();
    warm_up(&pool).await;
    let victim = pool.worker_pids()[0];
    let marker = temp_dir("dies").join("marker");
    let running = spawn_call(
        &pool,
        "sleep",
        json!({"ms": 30_000, "marker": marker.display().to_string()}),
        CallOptions::new(),
    );
    // The first call runs in the worker (not merely written to it)...
    assert!(eventually(10, || marker.exists()).await, "the call started");
    let waiting = spawn_call(&pool, "echo", json!({"n": 1}), CallOptions::new());
    // ... and the second waits behind it in its stdin.
    assert!(
        eventually(10, || in_flight_on_first(&pool) == 2).await,
        "the echo was written ahead: {:?}",
        pool.workers()
    );
    kill_9(victim);
    assert!(running.await.unwrap().unwrap_err().is_crash());
    let r = waiting.await.unwrap().unwrap();
    assert_ne!(r["pid"].as_u64().unwrap() as u32, victim);
    assert_eq!(r["served"], 1, "the first echo of the replacement: {r}");
    assert_eq!(r["echoed"], json!({"n": 1}));
    let stats = pool.stats();
    assert_eq!(stats.crashes, 1);
    assert_eq!(stats.requests, 20 + 2);
    assert_eq!(stats.completed, 20 + 1);
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(marker.parent().unwrap());
}

/// Once a worker's calls are long, nothing is written ahead to it: the next
/// call waits in the pool's queue for whichever worker frees first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_calls_never_wait_behind_each_other() {
    let pool = Pool::builder(Bridge::ruby(script()))
        .size(1)
        .start()
        .await
        .unwrap();
    for _ in 0..3 {
        pool.execute("sleep", json!({"ms": 50})).await.unwrap();
    }
    let first = spawn_call(&pool, "sleep", json!({"ms": 500}), CallOptions::new());
    assert!(eventually(10, || in_flight_on_first(&pool) == 1).await);
    let second = spawn_call(&pool, "sleep", json!({"ms": 10}), CallOptions::new());
    assert!(eventually(10, || pool.stats().queued == 1).await);
    assert_eq!(in_flight_on_first(&pool), 1, "nothing was written ahead");
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    pool.shutdown().await.unwrap();
}

/// Many callers, short calls written ahead, deadlines expiring all the time
/// (cancel frames for calls waiting in a worker's stdin, SIGINT for one
/// running alone): every reply a caller gets is its own.
async fn no_caller_gets_another_calls_reply(codec: WireCodec) {
    let pool = pipelined(2, codec).start().await.unwrap();
    warm_up(&pool).await;
    // How many calls one worker held at once, seen from outside: above 1
    // means calls were written ahead while another ran.
    let most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (pool, most, done) = (pool.clone(), most.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let now = pool.workers().iter().map(|w| w.in_flight).max();
                most.fetch_max(now.unwrap_or(0), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let tasks: Vec<_> = (0..16u64)
        .map(|c| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut ok = 0;
                for n in 0..40u64 {
                    let token = format!("{c}-{n}");
                    let timeout = Duration::from_micros(500 + (c * 37 + n * 101) % 4000);
                    let r = pool
                        .execute_with(
                            "sleep",
                            json!({"ms": (n % 3) as f64 * 0.5, "token": token}),
                            CallOptions::new().timeout(timeout),
                        )
                        .await;
                    match r {
                        Ok(v) => {
                            assert_eq!(v["token"], token.as_str());
                            ok += 1;
                        }
                        Err(Error::CallTimeout { .. } | Error::QueueTimeout(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    assert!(ok > 0);
    assert!(
        most.load(Ordering::Relaxed) > 1,
        "calls were written ahead to a worker"
    );
    let s = pool.stats();
    assert_eq!(s.crashes, 0, "{s:?}");
    assert!(
        eventually(20, || pool.stats().in_flight == 0).await,
        "every late reply came back: {:?}",
        pool.stats()
    );
    let s = pool.stats();
    assert_eq!(s.requests, s.completed + s.errors + s.cancelled, "{s:?}");
    // Both workers still serve, each reply its own.
    for n in 0..4 {
        let r = pool.execute("echo", json!({"n": n})).await.unwrap();
        assert_eq!(r["echoed"], json!({"n": n}));
    }
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_caller_gets_another_calls_reply_json() {
    no_caller_gets_another_calls_reply(WireCodec::Json).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_caller_gets_another_calls_reply_msgpack() {
    no_caller_gets_another_calls_reply(WireCodec::MsgPack).await;
}
