//! Session figures, one run: store operations per second (memory, and Redis
//! with `--features redis`, against a `redis-server` it starts), and
//! session calls per second through a pool of real Python workers, beside
//! the same calls without a session.
//!
//! `cargo run --release -p snakepit-session --features redis --example session_bench`
//! (`-- --quick` for a short run, as CI does)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::Pool;
use snakepit_session::{attach, MemoryStore, SessionStore};

const SESSIONS: usize = 10_000;

/// Mixed operations (ensure, set, get, update) from `tasks` tasks over
/// 10,000 sessions; operations per second.
async fn store_ops<S: SessionStore>(store: Arc<S>, tasks: usize, per_task: usize) -> f64 {
    for i in 0..SESSIONS {
        store.ensure_session(&format!("s{i}")).await.unwrap();
    }
    let start = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut id = String::new();
                for i in 0..per_task {
                    id.clear();
                    use std::fmt::Write;
                    let _ = write!(id, "s{}", (t * 7919 + i * 104_729) % SESSIONS);
                    match i % 4 {
                        0 => store.ensure_session(&id).await.unwrap(),
                        1 => store.set(&id, "k", json!(i)).await.unwrap(),
                        2 => drop(store.get(&id, "k").await.unwrap()),
                        _ => drop(
                            store
                                .update_session(&id, |s| {
                                    s.metadata.insert("n".into(), json!(i));
                                })
                                .await
                                .unwrap(),
                        ),
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    (tasks * per_task) as f64 / start.elapsed().as_secs_f64()
}

/// `callers` concurrent callers, each making `per_caller` calls, spread
/// over 100 sessions (or none); calls per second.
async fn pool_calls(pool: &Pool, callers: usize, per_caller: usize, sessions: bool) -> f64 {
    let start = Instant::now();
    let handles: Vec<_> = (0..callers)
        .map(|c| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for i in 0..per_caller {
                    if sessions {
                        let id = format!("user_{}", (c + i * callers) % 100);
                        pool.execute_in_session(&id, "ping", json!({}))
                            .await
                            .unwrap();
                    } else {
                        pool.execute("ping", json!({})).await.unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
    (callers * per_caller) as f64 / start.elapsed().as_secs_f64()
}

async fn through_pool<S: SessionStore>(
    label: &str,
    store: Arc<S>,
    calls: usize,
) -> anyhow::Result<()> {
    let worker = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/ml_worker.py");
    let pool = attach(Pool::builder(Bridge::python(worker)), store)
        .size(2)
        .start()
        .await?;
    pool_calls(&pool, 64, calls / 640 + 1, true).await; // warm-up
    let plain = pool_calls(&pool, 64, calls / 64, false).await;
    let session = pool_calls(&pool, 64, calls / 64, true).await;
    println!(
        "pool, 2 Python workers, 64 callers: {plain:>9.0} calls/s without a session, \
         {session:>9.0} session calls/s over 100 sessions ({label} store), ratio {:.2}",
        session / plain
    );
    pool.shutdown().await?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let (ops, calls) = if quick {
        (20_000, 2_000)
    } else {
        (2_000_000, 40_000)
    };

    let memory = Arc::new(MemoryStore::new());
    let rate = store_ops(memory.clone(), 2, ops / 2).await;
    println!("MemoryStore: {rate:>12.0} ops/s (2 tasks, mixed ensure/set/get/update)");
    through_pool("memory", Arc::new(MemoryStore::new()), calls).await?;

    #[cfg(feature = "redis")]
    redis::run(ops / 20, calls).await?;
    Ok(())
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use snakepit_session::RedisStore;

    /// A throwaway `redis-server` on a free port, no persistence.
    struct Server(std::process::Child, PathBuf);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }

    pub(super) async fn run(ops: usize, calls: usize) -> anyhow::Result<()> {
        let url = match std::env::var("SNAKEPIT_REDIS_URL") {
            Ok(url) => (url, None),
            Err(_) => {
                let port = std::net::TcpListener::bind("127.0.0.1:0")?
                    .local_addr()?
                    .port();
                let dir = std::env::temp_dir().join(format!("snakepit-bench-redis-{port}"));
                std::fs::create_dir_all(&dir)?;
                #[allow(clippy::disallowed_methods)] // a benchmark's server, not a worker
                let child = std::process::Command::new("redis-server")
                    .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--save", "", "--appendonly", "no"])
                    .arg("--dir")
                    .arg(&dir)
                    .stdout(std::process::Stdio::null())
                    .spawn()?;
                let server = Server(child, dir);
                let addr = format!("127.0.0.1:{port}");
                let until = Instant::now() + std::time::Duration::from_secs(10);
                while tokio::net::TcpStream::connect(&addr).await.is_err() {
                    anyhow::ensure!(Instant::now() < until, "redis-server did not start");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                (format!("redis://{addr}/"), Some(server))
            }
        };
        let store = Arc::new(RedisStore::connect(&url.0).await?);
        let rate = store_ops(store.clone(), 64, ops / 64).await;
        println!(
            "RedisStore:  {rate:>12.0} ops/s (64 tasks on one multiplexed connection, same mix)"
        );
        through_pool("redis", store, calls).await?;
        drop(url);
        Ok(())
    }
}
