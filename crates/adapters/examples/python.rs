//! The bundled Python bridge: the original Snakepit's generic commands, in
//! both wire codecs (MessagePack needs `pip install msgpack`).
//!
//! `cargo run -p snakepit-adapters --example python`

use serde_json::json;
use snakepit_adapters::{Bridge, Language};
use snakepit_core::{Pool, WireCodec};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let pool = Pool::builder(Bridge::generic(Language::Python).codec(codec))
            .size(2)
            .start()
            .await?;
        let ping = pool.execute("ping", json!({})).await?;
        println!(
            "[{codec}] ping: python {} bridge {}",
            ping["python_version"], ping["bridge_type"]
        );
        let echo = pool.execute("echo", json!({"message": "hello"})).await?;
        assert_eq!(echo["echoed"]["message"], "hello");
        let product = pool
            .execute("compute", json!({"operation": "multiply", "a": 10, "b": 5}))
            .await?;
        println!("[{codec}] 10 * 5 = {}", product["result"]);
        assert_eq!(product["result"], 50);
        let info = pool.execute("info", json!({})).await?;
        println!(
            "[{codec}] commands: {}",
            info["bridge_info"]["supported_commands"]
        );
        let err = pool
            .execute("compute", json!({"operation": "modulo", "a": 1, "b": 2}))
            .await
            .unwrap_err();
        println!("[{codec}] unsupported operation -> {err}");
        pool.shutdown().await?;
    }
    Ok(())
}
