//! Parallel processing across the pool, as the original README's
//! `Task.async`/`Task.await_many` example: many items at once, each on
//! whichever worker is free.
//!
//! `cargo run -p snakepit-adapters --example parallel`

use serde_json::json;
use snakepit_adapters::GenericPython;
use snakepit_core::Pool;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pool = Pool::builder(GenericPython).size(4).start().await?;
    let items = ["item1", "item2", "item3", "item4", "item5"];
    let tasks: Vec<_> = items
        .iter()
        .map(|item| {
            let pool = pool.clone();
            let item = item.to_string();
            tokio::spawn(async move { pool.execute("echo", json!({"item": item})).await })
        })
        .collect();
    for (item, task) in items.iter().zip(tasks) {
        let r = task.await??;
        assert_eq!(r["echoed"]["item"], *item);
        println!("{item} -> {}", r["echoed"]);
    }
    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..900)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.execute("compute", json!({"operation": "add", "a": i, "b": 1}))
                    .await
            })
        })
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        assert_eq!(c.await??["result"], i as i64 + 1);
    }
    println!(
        "900 computes on 4 workers (the queue holds 1000) in {:?}; stats {:?}",
        started.elapsed(),
        pool.stats()
    );
    pool.shutdown().await?;
    Ok(())
}
