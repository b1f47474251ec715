//! Red-team tests of the bridges' concurrent modes through a real pool: the
//! Python bridge's asyncio mode and the Node.js bridge, each worker running
//! many calls at once. Calls whose deadlines pass mid-flight (a cancel
//! storm), host calls from many calls answered out of order, and what one
//! call's misbehaviour does to the other calls on the same worker.
//!
//! Nothing here is timed for speed: the deadlines only make calls time out
//! (and get cancelled) on purpose, and the grace period is generous so a
//! slow machine does not get a worker replaced.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use snakepit_core::{Adapter, CallOptions, Error, HostCall, Launch, Pool, RemoteError};

const PY_SCRIPT: &str = r#"
import asyncio, os, sys
import snakepit_bridge

worker = snakepit_bridge.Worker(max_concurrency=8)
keep = set()

@worker.command("asleep")
async def asleep(args, ctx):
    await asyncio.sleep(args.get("ms", 0) / 1000.0)
    return {"ms": args.get("ms", 0)}

@worker.command("host")
async def host(args, ctx):
    out = []
    for i in range(args.get("n", 1)):
        out.append(await ctx.acall_host("f", {"tag": args["tag"], "i": i}))
    return out

@worker.command("late_emit")
async def late_emit(args, ctx):
    async def later():
        await asyncio.sleep(0.2)
        ctx.emit({"late": True})
    t = asyncio.ensure_future(later())
    keep.add(t)
    return "returned"

sys.exit(worker.run())
"#;

const NODE_SCRIPT: &str = r#"
const { Worker } = require(process.env.RT_BRIDGE);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
new Worker({
  maxConcurrency: 8,
  commands: {
    async asleep(args) { await sleep(args.ms || 0); return { ms: args.ms || 0 }; },
    async host(args, ctx) {
      const out = [];
      for (let i = 0; i < (args.n || 1); i++) out.push(await ctx.callHost('f', { tag: args.tag, i }));
      return out;
    },
    forgotten() { Promise.reject(new Error('nobody awaits me')); return 'returned'; },
  },
}).run();
"#;

#[derive(Clone, Copy, Debug)]
enum Lang {
    Python,
    Node,
}

struct Script {
    lang: Lang,
    path: PathBuf,
}

fn bridges() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bridges")
}

impl Adapter for Script {
    fn launch(&self) -> Launch {
        match self.lang {
            Lang::Python => Launch::new(python())
                .arg(&self.path)
                .env("PYTHONPATH", bridges().join("python"))
                .env("PYTHONDONTWRITEBYTECODE", "1"),
            Lang::Node => Launch::new("node")
                .arg(&self.path)
                .env("RT_BRIDGE", bridges().join("node")),
        }
    }
    fn command_timeout(&self, _: &str) -> Duration {
        Duration::from_secs(60)
    }
}

async fn pool(lang: Lang) -> Pool {
    let dir = temp_dir("redteam-concurrent");
    let (name, text) = match lang {
        Lang::Python => ("worker.py", PY_SCRIPT),
        Lang::Node => ("worker.js", NODE_SCRIPT),
    };
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    builder(Script { lang, path })
        .size(1)
        .configure(|c| c.shutdown_grace_period = Duration::from_secs(10))
        .host_function("f", |call: HostCall| async move {
            // Answers out of order: a delay that depends on the arguments.
            let i = call.args["i"].as_u64().unwrap_or(0);
            let tag = call.args["tag"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis((tag * 7 + i * 13) % 40)).await;
            Ok::<Value, RemoteError>(call.args)
        })
        .start()
        .await
        .unwrap()
}

/// 300 calls at once on one worker (8 at a time), a third with deadlines
/// shorter than they run: every caller gets its result or `CallTimeout`,
/// and the worker answers every cancel in time, so it is never replaced.
async fn cancel_storm(lang: Lang) {
    let pool = pool(lang).await;
    let pid = pool.worker_pids()[0];
    let mut calls = Vec::new();
    for k in 0..300u64 {
        let pool = pool.clone();
        calls.push(tokio::spawn(async move {
            let (ms, timeout) = match k % 3 {
                0 => (400, Duration::from_millis(50 + k % 50)),
                1 => (k % 20, Duration::from_secs(60)),
                _ => (0, Duration::from_secs(60)),
            };
            let r = pool
                .execute_with(
                    "asleep",
                    json!({ "ms": ms }),
                    CallOptions::new().timeout(timeout),
                )
                .await;
            (k, ms, r)
        }));
    }
    for call in calls {
        let (k, ms, r) = call.await.unwrap();
        match r {
            Ok(v) => assert_eq!(v["ms"], json!(ms), "call {k}"),
            Err(Error::CallTimeout { .. } | Error::QueueTimeout(_)) => {
                assert_eq!(k % 3, 0, "call {k} should not time out")
            }
            Err(e) => panic!("{lang:?}: call {k}: {e}"),
        }
    }
    // The worker still serves, with all its slots: 8 calls at once.
    let mut more = Vec::new();
    for _ in 0..8 {
        let pool = pool.clone();
        more.push(tokio::spawn(async move {
            pool.execute("asleep", json!({"ms": 200})).await
        }));
    }
    for m in more {
        m.await.unwrap().unwrap();
    }
    assert_eq!(pool.worker_pids(), vec![pid], "{lang:?}: worker replaced");
    assert_eq!(pool.stats().restarts, 0, "{lang:?}");
    pool.shutdown().await.unwrap();
    assert!(
        eventually(20, || !alive(pid)).await,
        "{lang:?}: worker left running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_async_cancel_storm_through_a_pool() {
    cancel_storm(Lang::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_cancel_storm_through_a_pool() {
    cancel_storm(Lang::Node).await;
}

/// 60 calls at once, each making 3 host calls that the host answers out of
/// order: each call gets its own three answers, in its own order.
async fn host_calls_out_of_order(lang: Lang) {
    let pool = pool(lang).await;
    let pid = pool.worker_pids()[0];
    let mut calls = Vec::new();
    for tag in 0..60u64 {
        let pool = pool.clone();
        calls.push(tokio::spawn(async move {
            (tag, pool.execute("host", json!({"tag": tag, "n": 3})).await)
        }));
    }
    for call in calls {
        let (tag, r) = call.await.unwrap();
        let v = r.unwrap_or_else(|e| panic!("{lang:?}: call {tag}: {e}"));
        let expected: Vec<Value> = (0..3).map(|i| json!({"tag": tag, "i": i})).collect();
        assert_eq!(v, Value::Array(expected), "{lang:?}: call {tag}");
    }
    assert_eq!(pool.worker_pids(), vec![pid]);
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_async_host_calls_answered_out_of_order() {
    host_calls_out_of_order(Lang::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_host_calls_answered_out_of_order() {
    host_calls_out_of_order(Lang::Node).await;
}

/// A call that has already returned must not take down the calls running
/// beside it on the same worker.
async fn bystander_survives(lang: Lang, command: &str, stream: bool) {
    let pool = pool(lang).await;
    let pid = pool.worker_pids()[0];
    let bystander = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("asleep", json!({"ms": 1500})).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    if stream {
        let mut s = pool
            .execute_stream(command, json!({}), CallOptions::new())
            .await
            .unwrap();
        use futures_core::Stream;
        use std::future::poll_fn;
        use std::pin::Pin;
        while let Some(item) = poll_fn(|cx| Pin::new(&mut s).poll_next(cx)).await {
            item.unwrap();
        }
    } else {
        pool.execute(command, json!({})).await.unwrap();
    }
    let r = bystander.await.unwrap();
    assert!(
        r.is_ok(),
        "{lang:?}: the call beside {command} failed: {r:?}"
    );
    assert_eq!(pool.worker_pids(), vec![pid], "{lang:?}: worker replaced");
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_late_chunk_does_not_kill_the_calls_beside_it() {
    bystander_survives(Lang::Python, "late_emit", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_forgotten_rejection_does_not_kill_the_calls_beside_it() {
    bystander_survives(Lang::Node, "forgotten", false).await;
}
