//! Audit of docs/protocol.md (and the bridges' READMEs, docs/bridges.md)
//! against real worker processes: worker ids, and what each bundled bridge
//! writes for a result or error it cannot represent (a lone surrogate from
//! Node.js or Python, invalid UTF-8 from Ruby under MessagePack: each once
//! got the worker replaced, or killed it).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use snakepit_core::{Adapter, CallOptions, Error, Launch, Pool, WireCodec};

const CODECS: [WireCodec; 2] = [WireCodec::Json, WireCodec::MsgPack];

/// A worker of one of the bundled bridges whose script is given inline
/// (`-c` / `-e`), with `env` added to its environment.
struct Inline {
    lang: Lang,
    script: &'static str,
    codec: WireCodec,
    env: Vec<(&'static str, &'static str)>,
}

impl Inline {
    fn new(lang: Lang, script: &'static str, codec: WireCodec) -> Self {
        Inline {
            lang,
            script,
            codec,
            env: vec![],
        }
    }
}

impl Adapter for Inline {
    fn launch(&self) -> Launch {
        let mut l = inline_launch(self.lang, self.script);
        for (k, v) in &self.env {
            l = l.env(k, v);
        }
        l
    }
    fn codec(&self) -> WireCodec {
        self.codec
    }
    fn command_timeout(&self, _: &str) -> Duration {
        Duration::from_secs(10)
    }
}

async fn start(adapter: Inline, size: usize) -> Pool {
    builder(adapter).size(size).start().await.unwrap()
}

/// The call failed with a failed reply of type `kind` (the worker's own
/// answer), not a protocol error, crash or timeout; and the worker that
/// answered it is still the pool's only worker, never restarted.
async fn failed_reply_and_the_worker_stays(
    pool: &Pool,
    pid: u32,
    r: Result<Value, Error>,
    kind: &str,
    what: &str,
) {
    let err = r.expect_err(what);
    let remote = err
        .remote()
        .unwrap_or_else(|| panic!("{what}: not a failed reply: {err:?}"));
    assert_eq!(remote.kind.as_deref(), Some(kind), "{what}: {err:?}");
    let next = pool.execute("pid", json!({})).await.unwrap();
    assert_eq!(
        next["pid"].as_u64(),
        Some(u64::from(pid)),
        "{what}: the same worker serves on"
    );
    let stats = pool.stats();
    assert_eq!((stats.crashes, stats.restarts), (0, 0), "{what}: {stats:?}");
}

// --- protocol.md section 1: SNAKEPIT_WORKER_ID ---------------------------------

const ENV_WORKER: &str = r#"
import os, time, snakepit_bridge
w = snakepit_bridge.Worker()
@w.command("env")
def env(args):
    time.sleep(args.get("ms", 0) / 1000)
    return {"pid": os.getpid(), "id": os.environ.get("SNAKEPIT_WORKER_ID"),
            "run_id": os.environ.get("SNAKEPIT_RUN_ID"), "protocol": os.environ.get("SNAKEPIT_PROTOCOL"),
            "codec": os.environ.get("SNAKEPIT_CODEC")}
@w.command("pid")
def pid(args):
    return {"pid": os.getpid()}
w.run()
"#;

/// protocol.md section 1: `SNAKEPIT_WORKER_ID` is `<pool name>_worker_<slot,
/// from 1>_<start of that slot, from 1>`: a replacement in a slot counts
/// that slot's starts on, the other slots keep theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_ids_count_each_slots_starts_and_reach_the_worker() {
    let pool = builder(Inline::new(Lang::Python, ENV_WORKER, WireCodec::Json))
        .name("audit")
        .size(2)
        .start()
        .await
        .unwrap();
    // Each worker's view of its environment, by slot: one call held on
    // every worker at once, so that each answers one.
    let env_of = |pool: &Pool, slot: usize| {
        let pool = pool.clone();
        async move {
            let info = pool
                .workers()
                .into_iter()
                .find(|w| w.slot == slot)
                .unwrap_or_else(|| panic!("no worker in slot {slot}"));
            let calls: Vec<_> = (0..pool.workers().len())
                .map(|_| {
                    let pool = pool.clone();
                    tokio::spawn(async move { pool.execute("env", json!({"ms": 300})).await })
                })
                .collect();
            let mut found = None;
            for call in calls {
                let r = call.await.unwrap().unwrap();
                if r["pid"].as_u64() == Some(u64::from(info.pid)) {
                    found = Some(r);
                }
            }
            (
                info,
                found.unwrap_or_else(|| panic!("slot {slot}'s worker never answered")),
            )
        }
    };
    for slot in 0..2 {
        let (info, env) = env_of(&pool, slot).await;
        let want = format!("audit_worker_{}_1", slot + 1);
        assert_eq!(info.id, want);
        assert_eq!(env["id"], json!(want), "{env}");
        assert_eq!(env["run_id"], json!(pool.run_id()), "{env}");
        assert_eq!(env["protocol"], "1", "{env}");
        assert_eq!(env["codec"], "json", "{env}");
    }

    let (first, _) = env_of(&pool, 0).await;
    kill_9(first.pid);
    assert!(
        eventually(20, || pool
            .workers()
            .iter()
            .any(|w| w.slot == 0 && w.pid != first.pid))
        .await,
        "slot 1 refilled"
    );
    let (info, env) = env_of(&pool, 0).await;
    assert_eq!(info.id, "audit_worker_1_2");
    assert_eq!(env["id"], "audit_worker_1_2", "{env}");
    let (other, _) = env_of(&pool, 1).await;
    assert_eq!(other.id, "audit_worker_2_1", "the other slot keeps its id");
    pool.shutdown().await.unwrap();
}

// --- a result or error a bridge cannot represent -------------------------------

const NODE_LONE_SURROGATES: &str = r#"
const { Worker } = require(process.env.SNAKEPIT_NODE_BRIDGE);
new Worker({ commands: {
  // What slicing a string with an emoji in the wrong place gives.
  lone_result: () => '\u{1F600}'.slice(0, 1),
  lone_error: () => { throw new Error('bad: ' + '\u{1F600}'.slice(1)); },
  pid: () => ({ pid: process.pid }),
}}).run();
"#;

/// docs/bridges.md (Node): "A result that cannot be encoded fails with
/// `EncodeError`"; "A thrown error ... becomes a failed reply"; node
/// README: "The worker serves on." protocol.md section 3: strings are UTF-8,
/// and a frame the pool cannot read gets the worker replaced. A JavaScript
/// string holding half a surrogate pair has no UTF-8 form: `JSON.stringify`
/// writes `"\ud83d"`, which the pool refuses, and MessagePack gets invalid
/// UTF-8; either way the worker is replaced, with every call it was running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_result_or_error_with_a_lone_surrogate_is_a_failed_reply_and_the_worker_serves_on() {
    for codec in CODECS {
        let pool = start(Inline::new(Lang::Node, NODE_LONE_SURROGATES, codec), 1).await;
        let pid = pool.worker_pids()[0];
        let r = pool.execute("lone_result", json!({})).await;
        failed_reply_and_the_worker_stays(
            &pool,
            pid,
            r,
            "EncodeError",
            &format!("{codec}: result"),
        )
        .await;
        let r = pool.execute("lone_error", json!({})).await;
        failed_reply_and_the_worker_stays(&pool, pid, r, "Error", &format!("{codec}: error")).await;
        pool.shutdown().await.unwrap();
    }
}

const PYTHON_SURROGATE_MESSAGE: &str = r#"
import os, snakepit_bridge
w = snakepit_bridge.Worker(max_concurrency=4 if os.environ.get("AUDIT_MODE") == "async" else None)
@w.command("bad_name")
def bad_name(args):
    # A file name that is not UTF-8, as os.listdir gives it (surrogateescape).
    name = os.fsdecode(b"caf\xe9.txt")
    raise ValueError(f"cannot read {name}")
@w.command("pid")
def pid(args):
    return {"pid": os.getpid()}
w.run()
"#;

/// bridges/python/README.md: "A handler that raises produces a failed reply
/// {type, message, traceback}. The worker keeps serving." A message holding
/// a lone surrogate (a non-UTF-8 file name in an f-string) cannot be
/// encoded: a one-at-a-time worker dies (exit 1), an asyncio one never
/// answers the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_exception_message_with_a_lone_surrogate_is_a_failed_reply_and_the_worker_serves_on(
) {
    for mode in ["sync", "async"] {
        for codec in CODECS {
            let mut adapter = Inline::new(Lang::Python, PYTHON_SURROGATE_MESSAGE, codec);
            adapter.env.push(("AUDIT_MODE", mode));
            let pool = start(adapter, 1).await;
            let pid = pool.worker_pids()[0];
            let r = pool
                .execute_with(
                    "bad_name",
                    json!({}),
                    CallOptions::new().timeout(Duration::from_secs(5)),
                )
                .await;
            failed_reply_and_the_worker_stays(
                &pool,
                pid,
                r,
                "ValueError",
                &format!("{mode} {codec}"),
            )
            .await;
            pool.shutdown().await.unwrap();
        }
    }
}

const RUBY_ENCODINGS: &str = r#"
require "snakepit_bridge"
w = SnakepitBridge::Worker.new
w.command("nan") { |a| Float::NAN }
w.command("invalid_utf8") { |a| "caf\xff".dup.force_encoding(Encoding::UTF_8) }
w.command("pid") { |a| { "pid" => Process.pid } }
w.run
"#;

/// bridges/ruby/README.md: "A result the codec cannot represent ... becomes
/// a failed reply instead of a broken frame." A NaN under JSON is shown
/// (passes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ruby_nan_result_under_json_is_a_failed_reply_and_the_worker_serves_on() {
    let pool = start(Inline::new(Lang::Ruby, RUBY_ENCODINGS, WireCodec::Json), 1).await;
    let pid = pool.worker_pids()[0];
    let err = pool.execute("nan", json!({})).await.unwrap_err();
    assert!(err.remote().is_some(), "{err:?}");
    let next = pool.execute("pid", json!({})).await.unwrap();
    assert_eq!(next["pid"].as_u64(), Some(u64::from(pid)));
    pool.shutdown().await.unwrap();
}

/// The same README sentence for a string tagged UTF-8 whose bytes are not:
/// under JSON it is a failed reply; under MessagePack it goes out as a `str`
/// that is not UTF-8 (protocol.md section 3: strings are UTF-8), a broken
/// frame for which the pool replaces the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ruby_result_with_invalid_utf8_is_a_failed_reply_in_both_codecs() {
    for codec in CODECS {
        let pool = start(Inline::new(Lang::Ruby, RUBY_ENCODINGS, codec), 1).await;
        let pid = pool.worker_pids()[0];
        let r = pool.execute("invalid_utf8", json!({})).await;
        let err = r.as_ref().expect_err("not a success");
        let kind = err.remote().and_then(|e| e.kind.clone());
        assert!(kind.is_some(), "{codec}: not a failed reply: {err:?}");
        failed_reply_and_the_worker_stays(
            &pool,
            pid,
            r,
            kind.as_deref().unwrap(),
            &format!("{codec}"),
        )
        .await;
        pool.shutdown().await.unwrap();
    }
}

// --- docs/bridges.md: "registering your own `ping` replaces it" ----------------

const OWN_PING_WORKER: &str = r#"
import snakepit_bridge
w = snakepit_bridge.Worker()
@w.command("ping")
def ping(args):
    return "pong"
w.run()
"#;

/// docs/bridges.md: a worker "that cannot answer [ping] with
/// `{"status": "ok", ...}` never gets calls", and "registering your own
/// `ping` replaces" the bridge's. A script that does, and answers
/// something else, fails the start with an error that says where to look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_of_the_workers_own_that_is_not_ok_fails_the_start_saying_so() {
    let r = builder(Inline::new(Lang::Python, OWN_PING_WORKER, WireCodec::Json))
        .size(1)
        .start()
        .await;
    let Err(err) = r else {
        panic!("the start succeeded")
    };
    assert!(matches!(err, Error::StartFailed(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("without status \"ok\""), "{text}");
    assert!(text.contains("a ping registered by the worker"), "{text}");
    assert!(text.contains("pong"), "{text}");
}
