//! docs/bridges.md, "The worker below does all of that for JSON, one call
//! at a time, with streaming and host calls": that worker, taken from the
//! markdown itself (so the docs and this test cannot drift), run by a real
//! pool the way the docs say (`python3 -u minimal_worker.py`, JSON), answers
//! calls, streams chunks, calls a host function, and keeps serving after an
//! unknown command and after a result too large for the pool.

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
    let pool = Pool::builder(Minimal(script.clone()))
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

    // A result above the pool's `max_frame_size`, which the worker reads
    // from `SNAKEPIT_MAX_FRAME_SIZE`: the call fails with `ResultTooLarge`
    // and the same worker serves the next call.
    let pool = Pool::builder(Minimal(script))
        .size(1)
        .configure(|c| c.max_frame_size = 4096)
        .start()
        .await
        .unwrap();
    let pids = pool.worker_pids();
    let err = pool
        .execute("repeat", json!({"text": "z", "times": 5000}))
        .await
        .unwrap_err();
    let remote = err.remote().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(remote.kind.as_deref(), Some("ResultTooLarge"), "{err}");
    assert!(
        remote.message.ends_with("above the pool's limit of 4096"),
        "{err}"
    );
    let r = pool
        .execute("repeat", json!({"text": "z", "times": 3000}))
        .await
        .unwrap();
    assert_eq!(r, json!("z".repeat(3000)));
    assert_eq!(pool.worker_pids(), pids, "no worker was replaced");
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The fenced Python block of docs/bridges.md that starts with `start`.
fn documented_block(start: &str) -> String {
    let doc = snakepit_tests::workspace_root().join("docs/bridges.md");
    let text = std::fs::read_to_string(&doc).expect("docs/bridges.md");
    let code = text
        .split("```python\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("\n```").map(|(code, _)| code))
        .find(|code| code.starts_with(start))
        .unwrap_or_else(|| panic!("docs/bridges.md has a block starting {start:?}"));
    format!("{code}\n")
}

/// `text` with the one occurrence of `from` replaced by `to`.
fn once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} once in the worker");
    text.replacen(from, to, 1)
}

/// `text` without the function that starts at `from`, up to `until`.
fn without(text: &str, from: &str, until: &str) -> String {
    let start = text
        .find(from)
        .unwrap_or_else(|| panic!("{from:?} in the worker"));
    let end = start + text[start..].find(until).expect("the next definition");
    format!("{}{}", &text[..start], &text[end..])
}

/// The minimal worker changed as docs/bridges.md says "to let SIGINT cancel
/// the running handler instead", put together from the page's blocks, plus
/// a `nap` command that sleeps.
fn documented_sigint_worker() -> String {
    let defs = documented_block("import contextlib\n");
    let io = documented_block("def send(msg):\n    data = json.dumps(msg, separators=(\",\", \":\"), allow_nan=False).encode()\n    if len(data) > LIMIT:");
    let serve_end = documented_block("    try:\n        try:\n            armed = True");
    let mut w = documented_worker();
    w = without(&w, "def send(msg):\n", "\ndef fail(");
    w = without(&w, "def call_host(req, function, args):\n", "\ndef ping(");
    w = once(&w, "def fail(", &format!("{defs}\n{io}\ndef fail("));
    w = once(
        &w,
        "def serve(req):\n",
        "def serve(req):\n    global armed\n",
    );
    let old_end = "    try:\n        send({\"id\": rid, \"success\": True, \"result\": COMMANDS[command](args, req)})\n    except Exception as exc:       # the handler failed, or JSON cannot carry its result\n        fail(rid, type(exc).__name__, str(exc))\n";
    w = once(&w, old_end, &serve_end);
    w = once(
        &w,
        "send({\"type\": \"hello\"",
        "signal.signal(signal.SIGINT, on_sigint)\nsend({\"type\": \"hello\"",
    );
    w = once(
        &w,
        "\"host_calls\": True}",
        "\"host_calls\": True, \"sigint\": True}",
    );
    once(
        &w,
        "COMMANDS = {",
        "import time\n\ndef nap(args, req):\n    time.sleep(args[\"ms\"] / 1000)\n    return {\"napped\": args[\"ms\"]}\n\nCOMMANDS = {\"nap\": nap, ",
    )
}

/// docs/bridges.md: "To let SIGINT cancel the running handler instead,
/// change the worker as follows." Changed so, the minimal worker declares
/// `sigint`, and a call past its deadline is interrupted, not its worker
/// killed: the caller gets `CallTimeout`, the same process serves the next
/// calls (a host call among them, so its frames stayed in step), and no
/// worker was replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_sigint_worker_is_interrupted_not_killed_past_a_deadline() {
    let dir = std::env::temp_dir().join(format!("snakepit-sigint-worker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("sigint_worker.py");
    std::fs::write(&script, documented_sigint_worker()).unwrap();
    let pool = Pool::builder(Minimal(script))
        .size(1)
        .host_function("session.set", |_call| async {
            Ok::<Value, RemoteError>(Value::Null)
        })
        .start()
        .await
        .expect("the changed worker passes the handshake");
    let pids = pool.worker_pids();
    for _ in 0..3 {
        let err = pool
            .execute_with(
                "nap",
                json!({"ms": 30_000}),
                CallOptions::new().timeout(std::time::Duration::from_millis(200)),
            )
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
        let r = pool.execute("ping", json!({})).await.unwrap();
        assert_eq!(r["pid"].as_u64(), Some(u64::from(pids[0])), "{r}");
        let r = pool.execute("remember", json!({"value": 1})).await.unwrap();
        assert_eq!(r, Value::Null);
    }
    assert_eq!(pool.worker_pids(), pids, "no worker was replaced");
    let stats = pool.stats();
    assert_eq!((stats.restarts, stats.crashes), (0, 0), "{stats:?}");
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
