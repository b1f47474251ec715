//! sessions.md, program helpers: after a successful `execute_program`, its
//! `execution_count` and `last_executed_ms` "are updated atomically". The
//! promises suite shows it for calls one after another; here 50 calls run
//! at once on 4 workers, with the memory store and with `RedisStore`
//! against a real `redis-server`: no update is lost.

#[cfg(feature = "redis")]
mod redis_server;

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::Pool;
use snakepit_session::{attach, execute_program_command, MemoryStore, SessionStore};

/// A worker of programs whose runs take a little while, so that the calls
/// on the 4 workers end, and update their program, together.
const PROGRAM_WORKER: &str = r#"
import os
import time
import snakepit_bridge

worker = snakepit_bridge.Worker()

@worker.command("create_program")
def create_program(args, ctx):
    return {"program_id": "p1", "signature": args["signature"], "program_type": "chain"}

@worker.command("execute_program")
def execute_program(args, ctx):
    time.sleep(0.005)
    return {"program_data": args.get("program_data"), "pid": os.getpid()}

worker.run()
"#;

const CALLS: u64 = 50;

fn script(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "snakepit-session-program-counts-{}-{tag}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("programs.py");
    std::fs::write(&script, PROGRAM_WORKER).unwrap();
    script
}

/// Creates program `p1` in session `ml`, runs `CALLS` `execute_program`
/// calls on it at once on a pool of 4 workers, and checks every call
/// succeeded and the stored count is `CALLS`.
async fn concurrent_executions_all_count<S: SessionStore + 'static>(store: Arc<S>, tag: &str) {
    let pool = attach(Pool::builder(Bridge::python(script(tag))), store.clone())
        .size(4)
        .start()
        .await
        .unwrap();
    execute_program_command(
        &pool,
        &*store,
        "ml",
        "create_program",
        json!({"signature": "question -> answer"}),
    )
    .await
    .unwrap();
    assert_eq!(
        store.get_program("ml", "p1").await.unwrap()["execution_count"],
        0
    );

    let start = Arc::new(tokio::sync::Barrier::new(CALLS as usize));
    let mut tasks = Vec::new();
    for _ in 0..CALLS {
        let (pool, store, start) = (pool.clone(), store.clone(), start.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            execute_program_command(
                &pool,
                &*store,
                "ml",
                "execute_program",
                json!({"program_id": "p1", "input": {"question": "?"}}),
            )
            .await
        }));
    }
    let mut pids = std::collections::HashSet::new();
    for t in tasks {
        let r: Value = t.await.unwrap().expect("every execute_program succeeds");
        assert_eq!(r["program_data"]["signature"], "question -> answer", "{r}");
        pids.insert(r["pid"].as_u64().unwrap());
    }
    eprintln!("{tag}: {CALLS} calls ran on {} workers", pids.len());
    let program = store.get_program("ml", "p1").await.unwrap();
    assert_eq!(
        program["execution_count"],
        CALLS,
        "every execution counted once (ran on {} workers): {program}",
        pids.len()
    );
    assert!(program["last_executed_ms"].as_u64().is_some_and(|t| t > 0));
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_execute_program_counts_every_run_memory() {
    concurrent_executions_all_count(Arc::new(MemoryStore::new()), "memory").await;
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_execute_program_counts_every_run_redis() {
    let redis = redis_server::Redis::start().await;
    let store = snakepit_session::RedisStore::connect(redis.url())
        .await
        .unwrap();
    concurrent_executions_all_count(Arc::new(store), "redis").await;
}
