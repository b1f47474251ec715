//! docs/bridges.md: "The three workers below serve the same commands:
//! `greet`, `count` (streams partial results), `visits` (uses the session
//! store through host calls) and `divide` (fails on division by zero). The
//! Rust examples further down call them." Each worker is taken from the
//! markdown itself (so the page and this test cannot drift), run on the
//! repository's bridge library under a real pool with the in-memory session
//! functions of the page, and called as the page's `calls` example does:
//! the greeting, the chunks 1, 2, 3 then `{"counted": 3}`, one visit then
//! two in a session, 1/4 as a typed `f64`, and a failed division of the
//! error type the page names for each language.

use std::collections::HashMap;
use std::future::poll_fn;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures_core::Stream;
use serde_json::{json, Value};
use snakepit_core::{
    Adapter, CallOptions, CallStream, Error, HostCall, Launch, Pool, RemoteError, StreamItem,
};
use snakepit_tests::{python, workspace_root};

mod common;

#[derive(Clone, Copy, Debug)]
enum Lang {
    Python,
    Node,
    Ruby,
}

/// The fenced block of docs/bridges.md in `fence` whose first line is
/// `first_line`.
fn documented(fence: &str, first_line: &str) -> String {
    let text =
        std::fs::read_to_string(workspace_root().join("docs/bridges.md")).expect("docs/bridges.md");
    let code = text
        .split(&format!("```{fence}\n"))
        .skip(1)
        .filter_map(|rest| rest.split_once("\n```").map(|(code, _)| code))
        .find(|code| code.starts_with(first_line))
        .unwrap_or_else(|| panic!("docs/bridges.md shows a block starting {first_line}"));
    format!("{code}\n")
}

/// The worker of the page in `lang`, on the repository's bridge library
/// (the adapters crate's `Bridge` does the same from its embedded copy).
struct DocWorker {
    lang: Lang,
    script: PathBuf,
    /// For Node: a directory holding `snakepit-bridge`, for `NODE_PATH`.
    node_path: PathBuf,
}

impl Adapter for DocWorker {
    fn launch(&self) -> Launch {
        let bridges = workspace_root().join("bridges");
        let launch = match self.lang {
            Lang::Python => Launch::new(python())
                .arg("-u")
                .arg(&self.script)
                .env("PYTHONPATH", bridges.join("python"))
                .env("PYTHONDONTWRITEBYTECODE", "1"),
            Lang::Node => Launch::new("node")
                .arg(&self.script)
                .env("NODE_PATH", &self.node_path),
            Lang::Ruby => Launch::new("ruby")
                .arg(&self.script)
                .env("RUBYLIB", bridges.join("ruby/lib")),
        };
        launch.arg("--mode").arg("pool-worker")
    }
}

type Store = Arc<Mutex<HashMap<(String, String), Value>>>;

fn key(call: &HostCall) -> (String, String) {
    let session = call.session_id.clone().unwrap_or_default();
    (
        session,
        call.args["key"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The page's in-memory session functions.
async fn start(adapter: DocWorker) -> Pool {
    let store: Store = Arc::default();
    let (get, set, delete) = (store.clone(), store.clone(), store);
    common::builder(adapter)
        .size(2)
        .host_function("session.get", move |call| {
            let value = get
                .lock()
                .unwrap()
                .get(&key(&call))
                .cloned()
                .unwrap_or(Value::Null);
            async move { Ok::<_, RemoteError>(value) }
        })
        .host_function("session.set", move |call| {
            set.lock()
                .unwrap()
                .insert(key(&call), call.args["value"].clone());
            async move { Ok::<_, RemoteError>(Value::Null) }
        })
        .host_function("session.delete", move |call| {
            let existed = delete.lock().unwrap().remove(&key(&call)).is_some();
            async move { Ok::<_, RemoteError>(Value::Bool(existed)) }
        })
        .start()
        .await
        .unwrap_or_else(|e| panic!("the page's worker starts: {e}"))
}

async fn next(stream: &mut CallStream) -> Option<snakepit_core::Result<StreamItem>> {
    poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

#[derive(serde::Serialize)]
struct Divide {
    a: f64,
    b: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_documented_workers_serve_the_documented_calls() {
    let dir = common::temp_dir("bridges-md");
    let node_path = dir.join("node_path");
    std::fs::create_dir_all(&node_path).unwrap();
    std::os::unix::fs::symlink(
        workspace_root().join("bridges/node"),
        node_path.join("snakepit-bridge"),
    )
    .unwrap();

    for (lang, fence, first, file, zero_division) in [
        (
            Lang::Python,
            "python",
            "# worker.py",
            "worker.py",
            "ZeroDivisionError",
        ),
        (Lang::Node, "js", "// worker.js", "worker.js", "RangeError"),
        (
            Lang::Ruby,
            "ruby",
            "# worker.rb",
            "worker.rb",
            "ZeroDivisionError",
        ),
    ] {
        let script = dir.join(file);
        std::fs::write(&script, documented(fence, first)).unwrap();
        let pool = start(DocWorker {
            lang,
            script,
            node_path: node_path.clone(),
        })
        .await;

        let r = pool.execute("greet", json!({"name": "Ada"})).await.unwrap();
        assert_eq!(r["greeting"], "Hello, Ada!", "{lang:?}");

        let r = pool
            .execute_in_session("user-42", "visits", json!({}))
            .await
            .unwrap();
        assert_eq!(r["visits"], 1, "{lang:?}");
        let options = CallOptions::new().session("user-42");
        let r = pool
            .execute_with("visits", json!({}), options)
            .await
            .unwrap();
        assert_eq!(r["visits"], 2, "{lang:?}: the store is the host's");

        let q: f64 = pool
            .call("divide", &Divide { a: 1.0, b: 4.0 }, CallOptions::new())
            .await
            .unwrap();
        assert_eq!(q, 0.25, "{lang:?}");

        let mut stream = pool
            .execute_stream("count", json!({"to": 3}), CallOptions::new())
            .await
            .unwrap();
        let mut items = Vec::new();
        while let Some(item) = next(&mut stream).await {
            items.push(match item.unwrap() {
                StreamItem::Chunk(data) => ("chunk", data),
                StreamItem::Done(result) => ("done", result),
                other => panic!("{lang:?}: {other:?}"),
            });
        }
        assert_eq!(
            items,
            [
                ("chunk", json!(1)),
                ("chunk", json!(2)),
                ("chunk", json!(3)),
                ("done", json!({"counted": 3}))
            ],
            "{lang:?}"
        );
        // Without a stream, the worker's chunks are not the caller's.
        let r = pool.execute("count", json!({"to": 2})).await.unwrap();
        assert_eq!(r, json!({"counted": 2}), "{lang:?}");

        match pool.execute("divide", json!({"a": 1, "b": 0})).await {
            Err(Error::Remote { error, .. }) => {
                assert_eq!(
                    error.kind.as_deref(),
                    Some(zero_division),
                    "{lang:?}: {error:?}"
                );
            }
            other => panic!("{lang:?}: a failed division, not {other:?}"),
        }
        // The worker serves on after the failure.
        let r = pool.execute("greet", json!({})).await.unwrap();
        assert_eq!(r["greeting"], "Hello, world!", "{lang:?}");

        pool.shutdown().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
