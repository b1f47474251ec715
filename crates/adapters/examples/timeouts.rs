//! Timeouts, as the original README's `execute(..., timeout: 60_000)`: a
//! deadline per call, a default deadline per command, and what happens to a
//! call that runs past it (the worker is told to cancel it, and the pool
//! stays usable).
//!
//! `cargo run -p snakepit-adapters --example timeouts`

use std::time::Duration;

use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::{CallOptions, Error, Pool};

const WORKER: &str = r#"
import time
import snakepit_bridge

worker = snakepit_bridge.Worker()

@worker.command("long_running_task")
def long_running_task(args):
    time.sleep(args.get("seconds", 1))
    return {"done": args.get("data")}

worker.run()
"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("snakepit-timeouts-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("worker.py");
    std::fs::write(&script, WORKER)?;

    // Calls that set no deadline get the adapter's: here 5 s for every command.
    let adapter = Bridge::python(&script).command_timeout(Duration::from_secs(5));
    let pool = Pool::builder(adapter).size(2).start().await?;

    // A generous deadline: the call finishes within it.
    let r = pool
        .execute_with(
            "long_running_task",
            json!({"data": "...", "seconds": 0.1}),
            CallOptions::new().timeout(Duration::from_secs(60)),
        )
        .await?;
    println!("with a 60 s deadline -> {r}");

    // A deadline shorter than the work: CallTimeout. The deadline counts from
    // submission, queue wait included; the worker gets SIGINT (this bridge
    // runs plain handlers one at a time) and is free again right after.
    let started = std::time::Instant::now();
    let err = pool
        .execute_with(
            "long_running_task",
            json!({"data": "...", "seconds": 30}),
            CallOptions::new().timeout(Duration::from_millis(200)),
        )
        .await
        .unwrap_err();
    println!(
        "with a 200 ms deadline -> {err} (after {:?})",
        started.elapsed()
    );
    assert!(matches!(err, Error::CallTimeout { .. }));
    assert!(err.is_timeout());

    // The pool carries on.
    let r = pool
        .execute("long_running_task", json!({"data": "after", "seconds": 0}))
        .await?;
    assert_eq!(r["done"], "after");
    println!("next call -> {r}; stats {:?}", pool.stats());

    pool.shutdown().await?;
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
