//! Sessions: calls of one session go to the worker that served it last, and
//! the session's data, kept on the host, survives that worker's death.
//!
//! `cargo run -p snakepit-adapters --example sessions`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{Pool, RemoteError};

const WORKER: &str = r#"
import os
import snakepit_bridge

worker = snakepit_bridge.Worker()

@worker.command("initialize")
def initialize(args, ctx):
    ctx.session.set("preferences", args["preferences"])
    return {"pid": os.getpid()}

@worker.command("get_recommendations")
def get_recommendations(args, ctx):
    prefs = ctx.session.get("preferences") or {}
    return {"pid": os.getpid(), "category": args["category"], "for": prefs.get("genre")}

@worker.command("crash")
def crash(args, ctx):
    os._exit(1)

worker.run()
"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("snakepit-sessions-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("worker.py");
    std::fs::write(&script, WORKER)?;

    // A tiny host-side session store: `ctx.session.get/set` in the worker
    // become host calls answered here.
    type Store = Arc<Mutex<HashMap<(String, String), Value>>>;
    let store: Store = Arc::default();
    let (get_store, set_store) = (store.clone(), store.clone());
    let pool = Pool::builder(Bridge::python(&script))
        .size(3)
        .host_function("session.get", move |call| {
            let store = get_store.clone();
            async move {
                let key = (
                    call.session_id.unwrap_or_default(),
                    call.args["key"].as_str().unwrap_or("").to_owned(),
                );
                Ok::<_, RemoteError>(
                    store
                        .lock()
                        .unwrap()
                        .get(&key)
                        .cloned()
                        .unwrap_or(Value::Null),
                )
            }
        })
        .host_function("session.set", move |call| {
            let store = set_store.clone();
            async move {
                let key = (
                    call.session_id.unwrap_or_default(),
                    call.args["key"].as_str().unwrap_or("").to_owned(),
                );
                store
                    .lock()
                    .unwrap()
                    .insert(key, call.args["value"].clone());
                Ok::<_, RemoteError>(Value::Null)
            }
        })
        .start()
        .await?;

    let session = "user_42";
    let first = pool
        .execute_in_session(
            session,
            "initialize",
            json!({"preferences": {"genre": "sci-fi"}}),
        )
        .await?;
    for _ in 0..3 {
        let r = pool
            .execute_in_session(session, "get_recommendations", json!({"category": "books"}))
            .await?;
        println!("recommendations for {} from pid {}", r["for"], r["pid"]);
        assert_eq!(
            r["pid"], first["pid"],
            "affinity keeps the session on its worker"
        );
    }
    // Kill the session's worker: the next call goes to another worker, and
    // the data is still there, because it lives on the host.
    let _ = pool.execute_in_session(session, "crash", json!({})).await;
    let r = pool
        .execute_in_session(session, "get_recommendations", json!({"category": "films"}))
        .await?;
    println!(
        "after the crash: recommendations for {} from pid {}",
        r["for"], r["pid"]
    );
    assert_ne!(r["pid"], first["pid"]);
    assert_eq!(r["for"], "sci-fi");
    pool.shutdown().await?;
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
