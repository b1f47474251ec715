//! Preloaded workers (docs/preload.md): the script's module-level code (a
//! "model" that takes a while to load and 16 MiB to hold) runs once in a
//! template; every worker is a fork of it, with its own after-fork hook.
//!
//! `cargo run -p snakepit-adapters --example preload`

use std::time::Instant;

use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::Pool;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/preload/model_worker.py"
    );
    let t = Instant::now();
    let pool = Pool::builder(Bridge::python(script).preload())
        .size(4)
        .start()
        .await?;
    println!("4 preloaded workers ready in {:?}", t.elapsed());
    let template = pool
        .template_pid()
        .expect("a preloaded pool has a template");
    // Eight calls at once, spread over the workers.
    let calls: Vec<_> = (0..8)
        .map(|x| {
            let pool = pool.clone();
            tokio::spawn(async move { (x, pool.execute("predict", json!({"x": x})).await) })
        })
        .collect();
    for call in calls {
        let (x, r) = call.await?;
        let r = r?;
        assert_eq!(r["loaded_in"], template, "loaded once, in the template");
        assert_eq!(r["connection_of"], r["pid"], "each worker ran its hook");
        println!(
            "predict({x}) = {:.3} from worker {} (model loaded in {} ms by {template})",
            r["y"].as_f64().unwrap_or_default(),
            r["pid"],
            r["load_ms"]
        );
    }
    for w in pool.workers() {
        let mib =
            |b: Option<u64>| b.map_or("?".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
        println!(
            "worker {}: resident {}, its share (PSS) {}",
            w.pid,
            mib(w.rss_bytes),
            mib(w.pss_bytes)
        );
    }
    pool.shutdown().await?;
    Ok(())
}
