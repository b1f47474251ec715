//! A custom adapter for any executable: the original README's Ruby bridge
//! (`examples/ruby/bridge.rb`), with its adapter's hooks (supported
//! commands, validation, argument preparation, response processing and a
//! per-command timeout) really applied by the pool.
//!
//! `cargo run -p snakepit-adapters --example custom_adapter`

use std::time::Duration;

use serde_json::json;
use snakepit_adapters::Custom;
use snakepit_core::{Error, Pool};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ruby/bridge.rb");
    let adapter = Custom::new(std::env::var("SNAKEPIT_RUBY").unwrap_or_else(|_| "ruby".into()))
        .arg(script)
        .args(["--mode", "pool-worker"])
        .supported_commands(["ping", "process_data", "generate_report"])
        .validate(|command, args| match command {
            "process_data" if args.get("data").is_none() => {
                Err("Missing required field: data".into())
            }
            _ => Ok(()),
        })
        .prepare_args(|command, mut args| {
            if command == "process_data" {
                let trimmed = args["data"].as_str().map(|s| s.trim().to_owned());
                if let Some(t) = trimmed {
                    args["data"] = t.into();
                }
            }
            args
        })
        .process_response(|command, mut response| {
            if command == "generate_report" {
                response["processed_by"] = "snakepit-rs".into();
            }
            Ok(response)
        })
        .timeout_for("generate_report", Duration::from_secs(120))
        .default_timeout(Duration::from_secs(30));

    let pool = Pool::builder(adapter).size(2).start().await?;
    let r = pool
        .execute("process_data", json!({"data": "  hello world  "}))
        .await?;
    println!("process_data -> {r}");
    assert_eq!(r, json!({"processed": "HELLO WORLD", "length": 11}));

    let r = pool
        .execute("generate_report", json!({"title": "Q3"}))
        .await?;
    println!("generate_report -> {r}");
    assert_eq!(r["report"]["title"], "Q3");
    assert_eq!(r["processed_by"], "snakepit-rs");

    match pool.execute("process_data", json!({})).await {
        Err(Error::Validation { message, .. }) => {
            println!("missing data -> rejected before sending: {message}")
        }
        other => anyhow::bail!("expected a validation error, got {other:?}"),
    }
    match pool.execute("delete_everything", json!({})).await {
        Err(e @ Error::UnsupportedCommand(_)) => println!("unknown command -> {e}"),
        other => anyhow::bail!("expected an unsupported command, got {other:?}"),
    }
    pool.shutdown().await?;
    Ok(())
}
