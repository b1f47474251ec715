//! Error handling, as the original README's `case Snakepit.execute(...)`:
//! every way a call can fail is its own `snakepit_core::Error` variant, each
//! with what a caller needs to act on it. Each one below really happens,
//! against real Python workers.
//!
//! `cargo run -p snakepit-adapters --example errors`

use std::time::Duration;

use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{CallOptions, Error, Pool};

const WORKER: &str = r#"
import os, time
import snakepit_bridge

worker = snakepit_bridge.Worker()

@worker.command("risky_operation")
def risky_operation(args):
    mode = args.get("mode")
    if mode == "fail":
        raise KeyError("no such record: %s" % args.get("id"))
    if mode == "crash":
        print("about to exit", flush=True)  # goes to stderr, kept in the crash report
        os._exit(3)
    time.sleep(args.get("seconds", 0))
    return {"ok": True}

worker.run()
"#;

/// What the original's `case` did with each outcome.
fn handle(outcome: Result<Value, Error>) -> &'static str {
    match outcome {
        Ok(_) => "handle_success",
        Err(e) if e.is_timeout() => "handle_timeout",
        Err(Error::PoolSaturated { .. }) => "handle_overload",
        Err(Error::Remote { error, .. }) => {
            println!(
                "    remote {}: {}",
                error.kind.as_deref().unwrap_or("?"),
                error.message
            );
            "handle_error (the handler raised)"
        }
        Err(Error::WorkerCrashed(crash)) => {
            println!(
                "    worker {} died: {}; stderr: {:?}",
                crash.pid,
                crash.exit,
                crash.stderr_tail.trim()
            );
            "handle_error (the worker died; a replacement is starting)"
        }
        Err(e) if e.never_ran() => "handle_error (refused before it ran; safe to retry)",
        Err(_) => "handle_error",
    }
}

/// Waits for what the pool's statistics show, for a few seconds at most.
async fn wait_until(condition: impl Fn() -> bool) -> anyhow::Result<()> {
    for _ in 0..1000 {
        if condition() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    anyhow::bail!("the pool never reached the expected state")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("snakepit-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("worker.py");
    std::fs::write(&script, WORKER)?;

    // One worker, one call at a time, one queued call at most, and nothing
    // written ahead to the worker (pipelining off), so that the second call
    // waits in the pool's queue: overload is easy to show.
    let adapter = Bridge::python(&script).supported_commands(["risky_operation"]);
    let pool = Pool::builder(adapter)
        .size(1)
        .configure(|c| {
            c.max_concurrency_per_worker = 1;
            c.max_queue_size = 1;
            c.pipeline_depth = 0;
        })
        .start()
        .await?;

    let ok = pool.execute("risky_operation", json!({})).await;
    println!("success -> {}", handle(ok));

    // Fill the worker and the queue, then one more call is turned away at once.
    let busy = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("risky_operation", json!({"seconds": 1})).await })
    };
    wait_until(|| pool.stats().in_flight == 1).await?;
    let queued = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("risky_operation", json!({})).await })
    };
    wait_until(|| pool.stats().queued == 1).await?;
    let rejected = pool.execute("risky_operation", json!({})).await;
    assert!(matches!(rejected, Err(Error::PoolSaturated { .. })));
    println!("queue full -> {}", handle(rejected));
    println!(
        "the running and the queued call -> {}, {}",
        handle(busy.await?),
        handle(queued.await?)
    );

    let failed = pool
        .execute("risky_operation", json!({"mode": "fail", "id": 7}))
        .await;
    println!("the handler raises -> {}", handle(failed));

    let slow = pool
        .execute_with(
            "risky_operation",
            json!({"seconds": 10}),
            CallOptions::new().timeout(Duration::from_millis(100)),
        )
        .await;
    println!("past its deadline -> {}", handle(slow));

    let unsupported = pool.execute("drop_tables", json!({})).await;
    assert!(matches!(unsupported, Err(Error::UnsupportedCommand(_))));
    println!("unsupported command -> {}", handle(unsupported));

    let crashed = pool
        .execute("risky_operation", json!({"mode": "crash"}))
        .await;
    assert!(matches!(crashed, Err(Error::WorkerCrashed(_))));
    println!("the worker dies -> {}", handle(crashed));
    // The replacement serves the next call.
    let mut next = pool.execute("risky_operation", json!({})).await;
    for _ in 0..50 {
        if next.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        next = pool.execute("risky_operation", json!({})).await;
    }
    println!("after the crash -> {}", handle(next));

    let stats = pool.stats();
    println!(
        "stats: {} requests, {} completed, {} errors ({} saturated)",
        stats.requests, stats.completed, stats.errors, stats.pool_saturated
    );
    pool.shutdown().await?;

    // A worker that cannot start: the error names the cause and carries stderr.
    match Pool::builder(Bridge::python(dir.join("missing.py")))
        .size(1)
        .start()
        .await
    {
        Err(Error::StartFailed(start)) => println!(
            "a missing script -> StartFailed: {}; stderr: {}",
            start.cause,
            start.stderr_tail.lines().last().unwrap_or("")
        ),
        other => anyhow::bail!("expected StartFailed, got {other:?}"),
    }
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
