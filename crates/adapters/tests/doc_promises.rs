//! Promises of docs/bridges.md and docs/protocol.md about every bridge
//! that no other test showed, each through a real pool: what user code
//! writes to standard output, in Node.js and Ruby (Python's is in
//! `crates/core/tests/doc_promises.rs`); payloads at the depth limit.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use snakepit_adapters::{Bridge, Language};
use snakepit_core::{Pool, WireCodec};

fn worker(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../core/tests/workers")
        .join(name)
}

fn node_modules() -> String {
    // The MessagePack package the Node bridge's tests installed (`npm ci`).
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bridges/node/node_modules"
    )
    .to_owned()
}

async fn start(bridge: Bridge) -> Pool {
    Pool::builder(bridge)
        .size(1)
        .configure(|c| c.shutdown_grace_period = Duration::from_millis(500))
        .start()
        .await
        .unwrap()
}

/// Calls `outside_output` three times, then `pid`: each answered by the
/// same worker, nothing failed, nothing restarted. Returns the last reply
/// of `outside_output`.
async fn writes_break_nothing(pool: &Pool, what: &str) -> Value {
    let before = pool.execute("pid", json!({})).await.unwrap();
    let mut last = Value::Null;
    for _ in 0..3 {
        last = pool.execute("outside_output", json!({})).await.unwrap();
        assert_eq!(last["pid"], before, "{what}: {last}");
    }
    assert_eq!(
        pool.execute("pid", json!({})).await.unwrap(),
        before,
        "{what}"
    );
    let s = pool.stats();
    assert_eq!(
        (s.errors, s.crashes, s.restarts),
        (0, 0, 0),
        "{what}: {s:?}"
    );
    last
}

/// bridges.md: under a pool the Node bridge points `process.stdout` and
/// every `console` method at stderr, and a child process given
/// `stdio: ['ignore', 2, 2]` writes to the log: none of it reaches the
/// frames, in either codec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_process_stdout_every_console_method_and_a_child_write_to_the_log() {
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let pool = start(
            Bridge::node(worker("doc_promises_stdout.js"))
                .env("NODE_PATH", node_modules())
                .codec(codec),
        )
        .await;
        writes_break_nothing(&pool, &format!("node {codec:?}")).await;
        pool.shutdown().await.unwrap();
    }
}

/// bridges.md: `SnakepitBridge::Worker.new` points descriptor 1 and
/// `$stdout` at stderr and descriptor 0 at `/dev/null`: `puts`,
/// `STDOUT.syswrite` and child processes write to the log, and neither the
/// handler nor a child can read the pool's frames (reading stdin ends at
/// once, empty), in either codec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_output_goes_to_the_log_and_stdin_is_dev_null_for_handlers_and_children() {
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let pool = start(Bridge::ruby(worker("doc_promises_stdout.rb")).codec(codec)).await;
        let r = writes_break_nothing(&pool, &format!("ruby {codec:?}")).await;
        assert_eq!(r["stdin"], "/dev/null", "{r}");
        assert_eq!(r["read"], "", "{r}");
        assert_eq!(r["child_read"], "", "{r}");
        pool.shutdown().await.unwrap();
    }
}

/// `depth` arrays, one inside the other, around `1`.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |v, _| json!([v]))
}

/// protocol.md section 2: "a call's arguments or result may nest 126
/// levels ... The bundled bridges read and write up to that limit in both
/// codecs." Each generic worker reads arguments 126 levels deep (`compute`
/// ignores the deep field) and writes a result 126 levels deep (`echo`
/// returns `{"echoed": <arguments>}`, the arguments 125 deep), in JSON and
/// MessagePack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bridge_reads_and_writes_payloads_at_the_depth_limit_in_both_codecs() {
    for lang in [Language::Python, Language::Node, Language::Ruby] {
        for codec in [WireCodec::Json, WireCodec::MsgPack] {
            let what = format!("{lang:?} {codec:?}");
            let pool = start(
                Bridge::generic(lang)
                    .codec(codec)
                    .env("NODE_PATH", node_modules()),
            )
            .await;
            // The arguments' map and 125 arrays in it: 126 levels.
            let deep_args = json!({"a": 2, "b": 3, "deep": nested(125)});
            let r = pool
                .execute("compute", deep_args)
                .await
                .unwrap_or_else(|e| panic!("{what}: reading 126 levels: {e}"));
            assert_eq!(r["result"], 5, "{what}: {r}");
            // The result's map, the arguments' map and 124 arrays: 126.
            let args = json!({"deep": nested(124)});
            let r = pool
                .execute("echo", args.clone())
                .await
                .unwrap_or_else(|e| panic!("{what}: writing 126 levels: {e}"));
            assert_eq!(r["echoed"], args, "{what}");
            let s = pool.stats();
            assert_eq!((s.crashes, s.restarts), (0, 0), "{what}: {s:?}");
            pool.shutdown().await.unwrap();
        }
    }
}
