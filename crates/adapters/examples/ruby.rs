//! The bundled Ruby bridge (needs `ruby`; on Debian `apt-get install ruby`).
//!
//! `cargo run -p snakepit-adapters --example ruby`

use serde_json::json;
use snakepit_adapters::GenericRuby;
use snakepit_core::Pool;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pool = Pool::builder(GenericRuby).size(2).start().await?;
    let ping = pool.execute("ping", json!({})).await?;
    println!(
        "ping: ruby {} ({})",
        ping["ruby_version"], ping["bridge_type"]
    );
    let r = pool
        .execute("compute", json!({"operation": "power", "a": 2, "b": 10}))
        .await?;
    println!("2 ** 10 = {}", r["result"]);
    assert_eq!(r["result"], 1024);
    let err = pool
        .execute("compute", json!({"operation": "divide", "a": 1, "b": 0}))
        .await
        .unwrap_err();
    println!("1 / 0 -> {err}");
    pool.shutdown().await?;
    Ok(())
}
