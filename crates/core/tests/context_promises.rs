//! docs/bridges.md, "The context, side by side": the context each bridge
//! hands a handler says the same things in Python, Node.js and Ruby (request
//! id, command, session id, worker id, trace context, the milliseconds the
//! caller had left, whether the caller streams, not cancelled), its logger
//! writes to the log and not into the frames, sending a chunk without a
//! stream sends nothing (Python, Node) or is dropped by the pool (Ruby), and
//! a host call to a function nobody registered fails with `HostCallError` of
//! type `UnknownFunction`. Shown with real workers under a real pool
//! (`tests/workers/context_worker.{py,js,rb}`).

use std::future::poll_fn;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use futures_core::Stream;
use serde_json::{json, Value};
use snakepit_core::{Adapter, CallOptions, CallStream, Launch, StreamItem};
use snakepit_tests::{python, workspace_root};

mod common;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Lang {
    Python,
    Node,
    Ruby,
}

struct ContextWorker {
    lang: Lang,
    node_path: PathBuf,
}

impl Adapter for ContextWorker {
    fn launch(&self) -> Launch {
        let root = workspace_root();
        let workers = root.join("crates/core/tests/workers");
        let bridges = root.join("bridges");
        match self.lang {
            Lang::Python => Launch::new(python())
                .arg("-u")
                .arg(workers.join("context_worker.py"))
                .env("PYTHONPATH", bridges.join("python"))
                .env("PYTHONDONTWRITEBYTECODE", "1"),
            Lang::Node => Launch::new("node")
                .arg(workers.join("context_worker.js"))
                .env("NODE_PATH", &self.node_path),
            Lang::Ruby => Launch::new("ruby")
                .arg(workers.join("context_worker.rb"))
                .env("RUBYLIB", bridges.join("ruby/lib")),
        }
    }
}

async fn next(stream: &mut CallStream) -> Option<snakepit_core::Result<StreamItem>> {
    poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bridge_hands_its_handler_the_documented_context() {
    let dir = common::temp_dir("context");
    std::os::unix::fs::symlink(
        workspace_root().join("bridges/node"),
        dir.join("snakepit-bridge"),
    )
    .unwrap();

    for lang in [Lang::Python, Lang::Node, Lang::Ruby] {
        let pool = common::builder(ContextWorker {
            lang,
            node_path: dir.clone(),
        })
        .size(1)
        .start()
        .await
        .unwrap_or_else(|e| panic!("{lang:?}: {e}"));
        let worker_id = pool.workers()[0].id.clone();

        let options = CallOptions::new()
            .session("s-1")
            .traceparent(TP)
            .timeout(Duration::from_secs(5));
        let r = pool
            .execute_with("context", json!({}), options)
            .await
            .unwrap_or_else(|e| panic!("{lang:?}: {e}"));
        assert!(
            r["request_id"].as_u64().is_some_and(|id| id > 0),
            "{lang:?}: {r}"
        );
        assert_eq!(r["command"], "context", "{lang:?}: {r}");
        assert_eq!(r["session_id"], "s-1", "{lang:?}: {r}");
        assert_eq!(r["worker_id"], worker_id.as_str(), "{lang:?}: {r}");
        assert_eq!(r["traceparent"], TP, "{lang:?}: {r}");
        let left = r["timeout_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("{lang:?}: {r}"));
        assert!(left > 0 && left <= 5000, "{lang:?}: {r}");
        assert_eq!(r["stream"], false, "{lang:?}: {r}");
        assert_eq!(r["cancelled"], false, "{lang:?}: {r}");
        assert_eq!(
            r["host_error"],
            json!(["HostCallError", "UnknownFunction"]),
            "{lang:?}: {r}"
        );
        if lang != Lang::Ruby {
            assert_eq!(r["emitted"], false, "{lang:?}: no stream, no chunk: {r}");
        }
        if lang == Lang::Node {
            assert_eq!(r["signal_aborted"], false, "{r}");
            assert_eq!(
                r["aliases"],
                json!([r["request_id"], "s-1", worker_id, "function"]),
                "{r}"
            );
        }

        // Without a session, the session id is none.
        let r = pool.execute("context", json!({})).await.unwrap();
        assert_eq!(r["session_id"], Value::Null, "{lang:?}: {r}");

        // A streaming caller: the flag is set and the chunk arrives.
        let mut stream = pool
            .execute_stream("context", json!({}), CallOptions::new())
            .await
            .unwrap();
        let mut chunks = Vec::new();
        let mut done = None;
        while let Some(item) = next(&mut stream).await {
            match item.unwrap_or_else(|e| panic!("{lang:?}: {e}")) {
                StreamItem::Chunk(data) => chunks.push(data),
                StreamItem::Done(result) => done = Some(result),
                other => panic!("{lang:?}: {other:?}"),
            }
        }
        let done = done.unwrap_or_else(|| panic!("{lang:?}: a final result"));
        assert_eq!(chunks, [json!("partial")], "{lang:?}: {done}");
        assert_eq!(done["stream"], true, "{lang:?}: {done}");
        if lang != Lang::Ruby {
            assert_eq!(done["emitted"], true, "{lang:?}: {done}");
        }

        pool.shutdown().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
