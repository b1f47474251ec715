//! Basic stateless execution, as the original README's first usage example:
//! a call with JSON arguments, the same call with typed arguments and
//! result, and a few calls in a row spread over the pool.
//!
//! `cargo run -p snakepit-adapters --example basic`

use serde::{Deserialize, Serialize};
use serde_json::json;
use snakepit_adapters::GenericPython;
use snakepit_core::{CallOptions, Pool};

#[derive(Serialize)]
struct Compute<'a> {
    operation: &'a str,
    a: i64,
    b: i64,
}

#[derive(Deserialize)]
struct Computed {
    result: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pool = Pool::builder(GenericPython).size(2).start().await?;

    // Simple computation: {:ok, %{"result" => 8}} = Snakepit.execute("compute", ...)
    let r = pool
        .execute("compute", json!({"operation": "add", "a": 5, "b": 3}))
        .await?;
    println!("compute add -> {}", r["result"]);
    assert_eq!(r["result"], 8);

    // The same call with Rust types: the arguments are encoded straight into
    // the frame and the result decoded straight out of it.
    let args = Compute {
        operation: "multiply",
        a: 6,
        b: 7,
    };
    let typed: Computed = pool.call("compute", &args, CallOptions::new()).await?;
    println!("typed compute multiply -> {}", typed.result);
    assert_eq!(typed.result, 42);

    // Echo returns its arguments, keys in the worker's order.
    let r = pool
        .execute("echo", json!({"message": "hello", "n": [1, 2, 3]}))
        .await?;
    println!("echo -> {}", r["echoed"]);
    assert_eq!(r["echoed"]["n"], json!([1, 2, 3]));

    let stats = pool.stats();
    println!(
        "{} requests, {} completed, {} errors",
        stats.requests, stats.completed, stats.errors
    );
    assert_eq!(stats.completed, 3);
    pool.shutdown().await?;
    Ok(())
}
