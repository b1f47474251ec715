//! docs/bridges.md, "The worker below does all of that for JSON, one call
//! at a time, with streaming and host calls": that worker, taken from the
//! markdown itself (so the docs and this test cannot drift), run by a real
//! pool the way the docs say (`python3 -u minimal_worker.py`, JSON), answers
//! calls, streams chunks, calls a host function, and keeps serving after an
//! unknown command.

use std::future::poll_fn;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures_core::Stream;
use serde_json::{json, Value};
use snakepit_core::{Adapter, CallOptions, Launch, Pool, RemoteError, StreamItem};

/// The first fenced Python block of docs/bridges.md whose code says it is
/// the worker without the bridge library.
fn documented_worker() -> String {
    let doc = snakepit_tests::workspace_root().join("docs/bridges.md");
    let text = std::fs::read_to_string(&doc).expect("docs/bridges.md");
    let mut blocks = text.split("```python\n").skip(1).map(|rest| {
        rest.split_once("\n```")
            .map(|(code, _)| code)
            .expect("a closed code block")
    });
    let code = blocks
        .find(|code| code.contains("\"\"\"A Snakepit worker without the bridge library"))
        .expect("docs/bridges.md shows the worker without the bridge library");
    format!("{code}\n")
}

/// `Custom::new("python3").args(["-u", "minimal_worker.py"])`, as the docs
/// run it: the same launch, the default (JSON) codec.
struct Minimal(PathBuf);

impl Adapter for Minimal {
    fn launch(&self) -> Launch {
        Launch::new(snakepit_tests::python()).arg("-u").arg(&self.0)
    }
}

async fn next(stream: &mut snakepit_core::CallStream) -> Option<snakepit_core::Result<StreamItem>> {
    poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_minimal_worker_serves_a_pool() {
    let dir = std::env::temp_dir().join(format!("snakepit-minimal-worker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("minimal_worker.py");
    std::fs::write(&script, documented_worker()).unwrap();

    // The `session.set` host function `remember` needs, recording its calls.
    let stored: Arc<Mutex<Vec<Value>>> = Arc::default();
    let log = stored.clone();
    let pool = Pool::builder(Minimal(script))
        .size(2)
        .host_function("session.set", move |call| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(call.args);
                Ok::<Value, RemoteError>(Value::Null)
            }
        })
        .start()
        .await
        .expect("the documented worker passes the handshake");

    let r = pool.execute("ping", json!({})).await.unwrap();
    assert_eq!(r["status"], "ok", "{r}");
    assert!(pool
        .worker_pids()
        .contains(&(r["pid"].as_u64().unwrap() as u32)));

    // Streaming: the chunks, then the result.
    let mut stream = pool
        .execute_stream("count", json!({"to": 3}), CallOptions::new())
        .await
        .unwrap();
    let mut items = Vec::new();
    while let Some(item) = next(&mut stream).await {
        items.push(item.unwrap());
    }
    let expected: Vec<StreamItem> = (1..=3)
        .map(|i| StreamItem::Chunk(json!(i)))
        .chain([StreamItem::Done(json!({"counted": 3}))])
        .collect();
    assert_eq!(items, expected);
    // Without `stream`, no chunks: just the result.
    let r = pool.execute("count", json!({"to": 2})).await.unwrap();
    assert_eq!(r, json!({"counted": 2}));

    // A host call, answered by the pool.
    let r = pool
        .execute("remember", json!({"value": 42}))
        .await
        .unwrap();
    assert_eq!(r, Value::Null);
    assert_eq!(
        *stored.lock().unwrap(),
        vec![json!({"key": "last", "value": 42})]
    );

    // An unknown command is the worker's typed error, and it keeps serving.
    let err = pool.execute("nope", json!({})).await.unwrap_err();
    let remote = err.remote().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(remote.kind.as_deref(), Some("UnknownCommand"), "{err}");
    assert_eq!(remote.message, "Unknown command: nope");
    let pids = pool.worker_pids();
    assert_eq!(
        pool.execute("ping", json!({})).await.unwrap()["status"],
        "ok"
    );
    assert_eq!(pool.worker_pids(), pids, "no worker was replaced");

    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
