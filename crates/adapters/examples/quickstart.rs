//! The README's first command: a pool of real Python workers doing real
//! calls, a session, and the pool's statistics. Needs only `python3`.
//!
//! `cargo run --release -p snakepit-adapters --example quickstart`

use serde_json::json;
use snakepit_adapters::GenericPython;
use snakepit_core::Pool;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let pool = Pool::builder(GenericPython).size(4).start().await?;
    println!("4 Python workers ready in {:?}", started.elapsed());

    let r = pool.execute("ping", json!({"test": true})).await?;
    println!(
        "ping    -> status {} from worker {} (pid {})",
        r["status"], r["worker_id"], r["pid"]
    );
    let r = pool
        .execute("compute", json!({"operation": "add", "a": 5, "b": 3}))
        .await?;
    println!("compute -> 5 + 3 = {}", r["result"]);
    assert_eq!(r["result"], 8);

    let err = pool
        .execute("compute", json!({"operation": "divide", "a": 1, "b": 0}))
        .await
        .unwrap_err();
    println!("divide by zero -> {err}");

    let mut pids = Vec::new();
    for i in 0..3 {
        let r = pool
            .execute_in_session("user_123", "ping", json!({"message": "hello", "n": i}))
            .await?;
        pids.push(r["pid"].clone());
    }
    // Printed as JSON (`[4242,4242,4242]`), not as `Value`'s debug form.
    let pids = serde_json::Value::Array(pids);
    println!("session user_123 -> served by pids {pids} (affinity keeps it on one worker)");

    let calls: Vec<_> = (0..100)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.execute("compute", json!({"operation": "multiply", "a": i, "b": 2}))
                    .await
            })
        })
        .collect();
    let mut sum = 0;
    for c in calls {
        sum += c.await??["result"].as_i64().unwrap_or(0);
    }
    println!("100 parallel computes -> sum {sum}");
    assert_eq!(sum, 9900);

    println!("stats: {}", serde_json::to_string_pretty(&pool.stats())?);
    pool.shutdown().await?;
    Ok(())
}
