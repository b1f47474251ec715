//! What the adapters' test files share.

pub mod readme;

use serde_json::{json, Value};
use snakepit_core::Pool;

/// `command` (with `{"ms": 300}`) on every worker at once: each call is held
/// long enough that every worker gets one. Returns the replies, after
/// checking that each came from a different worker.
pub(crate) async fn on_every_worker(pool: &Pool, command: &str) -> Vec<Value> {
    let n = pool.worker_pids().len();
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let (pool, command) = (pool.clone(), command.to_owned());
            tokio::spawn(async move { pool.execute(&command, json!({"ms": 300})).await })
        })
        .collect();
    let mut out = Vec::new();
    for call in calls {
        out.push(call.await.unwrap().unwrap());
    }
    let mut pids: Vec<u64> = out.iter().map(|v| v["pid"].as_u64().unwrap()).collect();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), n, "every worker answered: {out:?}");
    out
}

/// The test worker script `name` in `tests/workers`.
#[allow(dead_code)] // not every test binary runs these scripts
pub(crate) fn worker(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/workers")).join(name)
}

/// The MessagePack package of the Node bridge's own tests (`npm ci`), for
/// `NODE_PATH`.
#[allow(dead_code)] // not every test binary runs Node workers
pub(crate) fn node_modules() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bridges/node/node_modules"
    )
    .to_owned()
}
