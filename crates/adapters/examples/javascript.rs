//! The bundled Node.js bridge: generic commands, including `random` and
//! `sqrt`, which the original's JavaScript adapter added.
//!
//! `cargo run -p snakepit-adapters --example javascript`

use serde_json::json;
use snakepit_adapters::GenericJavaScript;
use snakepit_core::Pool;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pool = Pool::builder(GenericJavaScript).size(2).start().await?;
    let ping = pool.execute("ping", json!({})).await?;
    println!(
        "ping: node {} on {}",
        ping["node_version"], ping["platform"]
    );
    let r = pool
        .execute("random", json!({"type": "uniform", "min": 0, "max": 100}))
        .await?;
    let value = r["value"].as_f64().unwrap_or(-1.0);
    println!("random uniform 0..100 -> {value:.3}");
    assert!((0.0..=100.0).contains(&value));
    let r = pool
        .execute("compute", json!({"operation": "sqrt", "a": 16}))
        .await?;
    println!("sqrt(16) = {}", r["result"]);
    assert_eq!(r["result"], 4);
    let err = pool
        .execute("compute", json!({"operation": "sqrt", "a": -1}))
        .await
        .unwrap_err();
    println!("sqrt(-1) -> {err}");
    pool.shutdown().await?;
    Ok(())
}
