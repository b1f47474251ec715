//! Configuration, as the original README's basic, advanced and runtime
//! configuration: every pool setting in one `PoolConfig`, read from any
//! serde format or set in code, and a pool replaced by another at run time.
//!
//! `cargo run -p snakepit-adapters --example configuration`

use std::time::Duration;

use serde_json::json;
use snakepit_adapters::{GenericJavaScript, GenericPython};
use snakepit_core::{Pool, PoolConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The original's `config :snakepit, ...`, as a service would keep it in
    // its own settings file (durations in milliseconds).
    let config: PoolConfig = serde_json::from_value(json!({
        "pool_size": 4,
        "startup_timeout_ms": 10_000,
        "queue_timeout_ms": 5_000,
        "worker_init_timeout_ms": 20_000,
        "health_check_interval_ms": 30_000,
        "shutdown_grace_period_ms": 2_000,
        "cleanup_retry_interval_ms": 100,
        "cleanup_max_retries": 10,
        "max_queue_size": 1_000,
    }))?;
    let pool = Pool::builder(GenericPython).config(config).start().await?;
    println!("python pool: {} workers", pool.stats().workers);
    assert_eq!(pool.stats().workers, 4);

    // A typo is an error, not a silently ignored setting.
    let typo = serde_json::from_value::<PoolConfig>(json!({"pool_sise": 4}));
    println!("a misspelt setting -> {}", typo.unwrap_err());

    // Runtime configuration: stop this pool and start one with another
    // adapter, settings changed in code.
    pool.shutdown().await?;
    let pool = Pool::builder(GenericJavaScript)
        .size(2)
        .configure(|c| {
            c.queue_timeout = Duration::from_millis(250);
            c.health_check_interval = Duration::ZERO; // no health checks
        })
        .start()
        .await?;
    let r = pool
        .execute("random", json!({"type": "uniform", "min": 0, "max": 100}))
        .await?;
    println!(
        "javascript pool: {} workers, random -> {}",
        pool.stats().workers,
        r["value"]
    );
    pool.shutdown().await?;
    Ok(())
}
