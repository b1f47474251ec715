//! Audit of docs/bridges.md and docs/protocol.md: promises no other test
//! showed, checked against real worker processes of the bundled bridges.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use snakepit_core::{
    Adapter, CallOptions, HostCall, Launch, Pool, RawProcess, RemoteError, WireCodec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A worker of a bundled bridge whose script is given inline.
struct Inline {
    lang: Lang,
    script: &'static str,
    codec: WireCodec,
}

/// A pool builder for `script` in `lang`, on the JSON codec.
fn json_pool(lang: Lang, script: &'static str) -> snakepit_core::PoolBuilder {
    builder(Inline {
        lang,
        script,
        codec: WireCodec::Json,
    })
}

impl Inline {
    fn launch_of(&self) -> Launch {
        let launch = inline_launch(self.lang, self.script);
        if self.lang == Lang::Python {
            launch.env("PYTHONUNBUFFERED", "1")
        } else {
            launch
        }
    }
}

impl Adapter for Inline {
    fn launch(&self) -> Launch {
        self.launch_of()
    }
    fn codec(&self) -> WireCodec {
        self.codec
    }
    fn command_timeout(&self, _: &str) -> Duration {
        Duration::from_secs(15)
    }
}

async fn start(lang: Lang, script: &'static str, codec: WireCodec) -> Pool {
    builder(Inline {
        lang,
        script,
        codec,
    })
    .size(1)
    .start()
    .await
    .unwrap_or_else(|e| panic!("{lang:?} worker starts: {e}"))
}

const PY_VALUES: &str = r#"
import os, snakepit_bridge
w = snakepit_bridge.Worker()
w.register("big", lambda a: {"n": 2 ** 70})
w.register("nan", lambda a: {"x": float("nan")})
w.register("pid", lambda a: {"pid": os.getpid()})
w.run()
"#;

const RB_VALUES: &str = r#"
require "snakepit_bridge"
w = SnakepitBridge::Worker.new
w.command("big") { |a| { "n" => 2**70 } }
w.command("pid") { |a| { "pid" => Process.pid } }
w.run
"#;

const JS_VALUES: &str = r#"
const { Worker } = require(process.env.SNAKEPIT_NODE_BRIDGE);
new Worker({ commands: {
  nan() { return { x: NaN, y: Infinity }; },
  pid() { return { pid: process.pid }; },
} }).run();
"#;

/// The call failed with the worker's own failed reply, and the same worker
/// serves the next call (no restart).
async fn failed_reply_then_same_worker(pool: &Pool, command: &str, what: &str) {
    let pid = pool.worker_pids()[0];
    let err = pool.execute(command, json!({})).await.expect_err(what);
    assert!(
        err.remote().is_some(),
        "{what}: not a failed reply: {err:?}"
    );
    let next = pool.execute("pid", json!({})).await.unwrap();
    assert_eq!(next["pid"].as_u64(), Some(u64::from(pid)), "{what}");
    let stats = pool.stats();
    assert_eq!((stats.crashes, stats.restarts), (0, 0), "{what}: {stats:?}");
}

/// protocol.md section 3: "MessagePack has none either: the Python and Ruby
/// bridges answer such a result [an integer outside -2^63..2^64-1] with a
/// failed reply."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_msgpack_python_and_ruby_answer_an_integer_beyond_64_bits_with_a_failed_reply() {
    for (lang, script) in [(Lang::Python, PY_VALUES), (Lang::Ruby, RB_VALUES)] {
        let pool = start(lang, script, WireCodec::MsgPack).await;
        failed_reply_then_same_worker(&pool, "big", &format!("{lang:?} 2**70")).await;
        pool.shutdown().await.unwrap();
    }
}

/// protocol.md section 3: "In JSON, one outside that range (Python's
/// `2**70`, a large Ruby `Integer`) is read by the host as the nearest
/// 64-bit float".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_json_an_integer_beyond_64_bits_from_python_or_ruby_arrives_as_the_nearest_float() {
    for (lang, script) in [(Lang::Python, PY_VALUES), (Lang::Ruby, RB_VALUES)] {
        let pool = start(lang, script, WireCodec::Json).await;
        let r = pool.execute("big", json!({})).await.unwrap();
        assert_eq!(r["n"].as_f64(), Some(2f64.powi(70)), "{lang:?}: {r}");
        assert!(!r["n"].is_u64() && !r["n"].is_i64(), "{lang:?}: {r}");
        pool.shutdown().await.unwrap();
    }
}

/// protocol.md section 3: "The bundled Python and Ruby bridges answer a
/// result that holds one [NaN] with a failed reply" (Python under JSON;
/// Ruby has its own test in audit_docs.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_json_a_python_nan_result_is_a_failed_reply_and_the_worker_serves_on() {
    let pool = start(Lang::Python, PY_VALUES, WireCodec::Json).await;
    failed_reply_then_same_worker(&pool, "nan", "Python NaN").await;
    pool.shutdown().await.unwrap();
}

/// protocol.md section 3: "the Node.js bridge writes `null` in its place, as
/// `JSON.stringify` does."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_json_a_node_nan_or_infinity_result_arrives_as_null() {
    let pool = start(Lang::Node, JS_VALUES, WireCodec::Json).await;
    let pid = pool.worker_pids()[0];
    let r = pool.execute("nan", json!({})).await.unwrap();
    assert_eq!(r, json!({"x": null, "y": null}));
    let next = pool.execute("pid", json!({})).await.unwrap();
    assert_eq!(next["pid"].as_u64(), Some(u64::from(pid)));
    pool.shutdown().await.unwrap();
}

// ---- raw frames to a bridge worker, no pool ----

const PY_BLOCK: &str = r#"
import os, time, snakepit_bridge
w = snakepit_bridge.Worker()
@w.command("block")
def block(args, ctx):
    with open(os.path.join(args["dir"], "started-%d" % ctx.request_id), "a") as f:
        f.write("x")
    while not os.path.exists(args["until"]):
        time.sleep(0.02)
    return {"id": ctx.request_id}
w.run()
"#;

const RB_BLOCK: &str = r#"
require "snakepit_bridge"
w = SnakepitBridge::Worker.new
w.command("block") do |args, ctx|
  File.open(File.join(args["dir"], "started-#{ctx.request_id}"), "a") { |f| f.write("x") }
  sleep 0.02 until File.exist?(args["until"])
  { "id" => ctx.request_id }
end
w.run
"#;

struct Frames {
    p: RawProcess,
    stdin: Option<tokio::process::ChildStdin>,
    stdout: tokio::process::ChildStdout,
}

impl Frames {
    async fn spawn(lang: Lang, script: &'static str) -> Frames {
        let launch = Inline {
            lang,
            script,
            codec: WireCodec::Json,
        }
        .launch_of();
        let mut p = RawProcess::spawn(launch, WireCodec::Json)
            .await
            .expect("worker starts");
        let stdin = p.take_stdin();
        let stdout = p.take_stdout().expect("stdout");
        Frames { p, stdin, stdout }
    }

    async fn send(&mut self, v: Value) {
        let data = serde_json::to_vec(&v).unwrap();
        let mut frame = (data.len() as u32).to_be_bytes().to_vec();
        frame.extend(data);
        let w = self.stdin.as_mut().expect("stdin open");
        w.write_all(&frame).await.unwrap();
        w.flush().await.unwrap();
    }

    /// The next frame, or None at EOF.
    async fn recv(&mut self) -> Option<Value> {
        let mut head = [0u8; 4];
        let read = tokio::time::timeout(Duration::from_secs(20), self.stdout.read_exact(&mut head))
            .await
            .expect("a frame within 20 s");
        if read.is_err() {
            return None;
        }
        let mut payload = vec![0u8; u32::from_be_bytes(head) as usize];
        self.stdout.read_exact(&mut payload).await.ok()?;
        Some(serde_json::from_slice(&payload).expect("JSON frame"))
    }

    /// The next frame that is not a `hello`.
    async fn reply(&mut self) -> Option<Value> {
        loop {
            let f = self.recv().await?;
            if f["type"] != "hello" {
                return Some(f);
            }
        }
    }
}

fn request(id: u64, dir: &Path) -> Value {
    json!({
        "id": id,
        "command": "block",
        "args": {"dir": dir, "until": dir.join("stop")},
        "timestamp": "2026-12-02T00:00:00.000000Z",
    })
}

/// protocol.md section 4: "A request whose `id` is already running on this
/// worker: ... it must not start a second handler under the same id while
/// the first runs. A worker that runs one call at a time takes up the next
/// request only once the one before it has replied ...: it runs it as a
/// new request, with a reply of its own." Shown for the one-call-at-a-time
/// (pipelined) Python and Ruby workers, which read requests ahead: the
/// second 7 starts only after the first 7 has replied, and each has one
/// reply, in order.
async fn no_second_handler_under_a_running_id(lang: Lang, script: &'static str) {
    let dir = temp_dir(&format!("audit-bp-dup-{lang:?}"));
    let mut w = Frames::spawn(lang, script).await;
    w.send(request(7, &dir)).await;
    let started = |id: u64| dir.join(format!("started-{id}"));
    assert!(
        eventually(20, || started(7).exists()).await,
        "{lang:?}: 7 starts"
    );
    w.send(request(7, &dir)).await; // while 7 runs
    w.send(request(8, &dir)).await;
    // Give the worker time to read both frames ahead before 7 ends.
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::write(dir.join("stop"), "").unwrap();
    let mut replies = vec![];
    while let Some(r) = w.reply().await {
        let id = r["id"].as_u64();
        replies.push(r);
        if id == Some(8) {
            break;
        }
    }
    drop(w.stdin.take()); // EOF: the worker ends after what it holds
    while let Some(r) = w.reply().await {
        replies.push(r);
    }
    let status = w.p.wait().await.unwrap();
    let ids: Vec<_> = replies.iter().map(|r| r["id"].as_u64()).collect();
    let ran = std::fs::read_to_string(started(7)).unwrap_or_default();
    assert_eq!(
        (ids, ran.as_str()),
        (vec![Some(7), Some(7), Some(8)], "xx"),
        "{lang:?}: the second 7 ran after the first replied; replies {replies:?}"
    );
    assert_eq!(
        replies.iter().filter(|r| r["id"] == 8).count(),
        1,
        "{replies:?}"
    );
    assert!(status.success(), "{lang:?}: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_one_call_worker_runs_a_reused_id_only_after_the_first_replied() {
    no_second_handler_under_a_running_id(Lang::Python, PY_BLOCK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ruby_worker_runs_a_reused_id_only_after_the_first_replied() {
    no_second_handler_under_a_running_id(Lang::Ruby, RB_BLOCK).await;
}

const PY_ARGS: &str = r#"
import snakepit_bridge
w = snakepit_bridge.Worker()
w.register("args", lambda a: {"args": a})
w.run()
"#;

const RB_ARGS: &str = r#"
require "snakepit_bridge"
w = SnakepitBridge::Worker.new
w.command("args") { |a| { "args" => a } }
w.run
"#;

const JS_ARGS: &str = r#"
const { Worker } = require(process.env.SNAKEPIT_NODE_BRIDGE);
new Worker({ commands: { args(a) { return { args: a }; } } }).run();
"#;

const PY_HOST: &str = r#"
import os, snakepit_bridge
w = snakepit_bridge.Worker()
@w.command("via_host")
def via_host(args, ctx):
    return {"got": ctx.call_host(args["fn"], args.get("args", {})), "pid": os.getpid()}
w.run()
"#;

const RB_HOST: &str = r#"
require "snakepit_bridge"
w = SnakepitBridge::Worker.new
w.command("via_host") do |a, ctx|
  { "got" => ctx.call_host(a["fn"], a["args"] || {}), "pid" => Process.pid }
end
w.run
"#;

const JS_HOST: &str = r#"
const { Worker } = require(process.env.SNAKEPIT_NODE_BRIDGE);
new Worker({ commands: {
  async via_host(a, ctx) { return { got: await ctx.callHost(a.fn, a.args || {}), pid: process.pid }; },
} }).run();
"#;

/// docs/bridges.md, Concurrency and cancellation: the handler sees the
/// cancellation "also in ... a host call" (Python: `KeyboardInterrupt`),
/// "a `cancel` frame that arrives during a host call" (Ruby), "pending host
/// calls reject" (Node); "In every case the reply is a failed reply of type
/// `Cancelled`", so the worker is not replaced. The next call's host call
/// gets its own reply, not the late one of the call that was given up.
///
/// The three languages run at once, each with a pool of its own: most of
/// each one's 7 s is spent waiting for the slow host function to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_times_out_inside_a_slow_host_call_is_cancelled_and_the_worker_serves_on() {
    let each = [
        (Lang::Python, PY_HOST),
        (Lang::Ruby, RB_HOST),
        (Lang::Node, JS_HOST),
    ]
    .map(|(lang, script)| tokio::spawn(timed_out_inside_a_slow_host_call(lang, script)));
    for one in each {
        if let Err(e) = one.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// One language of
/// [`a_call_that_times_out_inside_a_slow_host_call_is_cancelled_and_the_worker_serves_on`].
async fn timed_out_inside_a_slow_host_call(lang: Lang, script: &'static str) {
    let pool = json_pool(lang, script)
        .size(1)
        .configure(|c| c.shutdown_grace_period = Duration::from_secs(3))
        .host_function("slow", |_call: HostCall| async move {
            tokio::time::sleep(Duration::from_secs(6)).await;
            Ok::<_, RemoteError>(json!("late"))
        })
        .host_function("echo", |call: HostCall| async move {
            Ok::<_, RemoteError>(call.args)
        })
        .start()
        .await
        .unwrap_or_else(|e| panic!("{lang:?}: {e}"));
    let pid = pool.worker_pids()[0];
    let began = std::time::Instant::now();
    let err = pool
        .execute_with(
            "via_host",
            json!({"fn": "slow"}),
            CallOptions::new().timeout(Duration::from_millis(800)),
        )
        .await
        .expect_err("past its deadline");
    assert!(err.is_timeout(), "{lang:?}: {err:?}");
    for n in 0..3 {
        let r = pool
            .execute("via_host", json!({"fn": "echo", "args": {"n": n}}))
            .await
            .unwrap_or_else(|e| panic!("{lang:?}: call {n}: {e:?}"));
        assert_eq!(r["got"], json!({"n": n}), "{lang:?}: {r}");
        assert_eq!(r["pid"].as_u64(), Some(u64::from(pid)), "{lang:?}: {r}");
    }
    // Past the slow function's end (longer than the grace period, so
    // only a cancelled handler keeps the worker): its late result went
    // nowhere.
    tokio::time::sleep(Duration::from_secs(7).saturating_sub(began.elapsed())).await;
    let r = pool
        .execute("via_host", json!({"fn": "echo", "args": {"n": 9}}))
        .await
        .unwrap_or_else(|e| panic!("{lang:?}: {e:?}"));
    assert_eq!(r["got"], json!({"n": 9}), "{lang:?}: {r}");
    let stats = pool.stats();
    assert_eq!(
        (stats.crashes, stats.restarts),
        (0, 0),
        "{lang:?}: {stats:?}"
    );
    pool.shutdown().await.unwrap();
}

const RB_CHUNKS: &str = r#"
require "snakepit_bridge"
w = SnakepitBridge::Worker.new
w.command("count") do |a, ctx|
  (1..a["to"]).each { |i| ctx.chunk(i) }
  { "counted" => a["to"], "pid" => Process.pid }
end
w.run
"#;

/// docs/bridges.md, Ruby: "`ctx.chunk` always writes the frame; the pool
/// drops chunks of callers that did not ask for a stream". Shown with far
/// more chunks than a stream keeps (256), for a plain `execute`: the call
/// gets its result and the worker is neither held up nor replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_chunks_for_a_caller_that_did_not_stream_are_dropped_and_the_call_succeeds() {
    let pool = start(Lang::Ruby, RB_CHUNKS, WireCodec::Json).await;
    let pid = pool.worker_pids()[0];
    for _ in 0..2 {
        let r = pool
            .execute_with(
                "count",
                json!({"to": 2000}),
                CallOptions::new().timeout(Duration::from_secs(30)),
            )
            .await
            .unwrap();
        assert_eq!(r["counted"], 2000, "{r}");
        assert_eq!(r["pid"].as_u64(), Some(u64::from(pid)), "{r}");
    }
    let stats = pool.stats();
    assert_eq!((stats.crashes, stats.restarts), (0, 0), "{stats:?}");
    pool.shutdown().await.unwrap();
}

const PY_SLOW: &str = r#"
import time, snakepit_bridge
w = snakepit_bridge.Worker()
@w.command("slow")
def slow(args, ctx):
    time.sleep(0.5)
    return {"done": ctx.request_id}
w.run()
"#;

const RB_SLOW: &str = r#"
require "snakepit_bridge"
w = SnakepitBridge::Worker.new
w.command("slow") { |a, ctx| sleep 0.5; { "done" => ctx.request_id } }
w.run
"#;

const JS_SLOW: &str = r#"
const { Worker } = require(process.env.SNAKEPIT_NODE_BRIDGE);
new Worker({ commands: {
  async slow(a, ctx) { await new Promise((r) => setTimeout(r, 500)); return { done: ctx.requestId }; },
} }).run();
"#;

/// protocol.md section 6: "The pool closes the worker's stdin: the worker
/// finishes what it is doing and exits 0 on EOF"; docs/bridges.md, Node.js:
/// "`worker.run()` exits with 0 once stdin is closed and the running calls
/// have replied". Stdin is closed right after the requests are written;
/// Python and Ruby, which read requests ahead, also answer the ones that
/// were still waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_eof_every_bridge_replies_to_the_running_calls_then_exits_0() {
    for (lang, script, ids) in [
        (Lang::Python, PY_SLOW, vec![1u64, 2, 3]),
        (Lang::Ruby, RB_SLOW, vec![1, 2, 3]),
        (Lang::Node, JS_SLOW, vec![1, 2, 3]),
    ] {
        let mut w = Frames::spawn(lang, script).await;
        for &id in &ids {
            w.send(json!({"id": id, "command": "slow", "args": {},
                          "timestamp": "2026-12-02T00:00:00.000000Z"}))
                .await;
        }
        // Let the requests be read before the EOF follows them.
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(w.stdin.take());
        let mut got = vec![];
        while let Some(r) = w.reply().await {
            assert_eq!(r["success"], true, "{lang:?}: {r}");
            got.push(r["id"].as_u64().unwrap());
        }
        got.sort_unstable();
        assert_eq!(got, ids, "{lang:?}: one reply per running call");
        let status = w.p.wait().await.unwrap();
        assert!(status.success(), "{lang:?}: {status:?}");
    }
}

fn wide_ints() -> Value {
    json!({"u": u64::MAX, "i": i64::MIN, "odd": (1u64 << 53) + 1, "neg_odd": -(1i64 << 53) - 1})
}

async fn wide_ints_round_trip(lang: Lang, script: &'static str) {
    let mut wrong = vec![];
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let pool = start(lang, script, codec).await;
        match pool.execute("args", wide_ints()).await {
            Ok(r) if r["args"] == wide_ints() => {}
            other => wrong.push(format!("{codec:?}: {other:?}")),
        }
        pool.shutdown().await.unwrap();
    }
    assert!(wrong.is_empty(), "{lang:?}: {wrong:#?}");
}

/// protocol.md section 3: "Integers go through whole from -2^63 to
/// 2^64 - 1." Sent as arguments and echoed back as the result, in both
/// codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_from_minus_2_63_to_2_64_go_through_python_and_ruby_whole() {
    wide_ints_round_trip(Lang::Python, PY_ARGS).await;
    wide_ints_round_trip(Lang::Ruby, RB_ARGS).await;
}

/// protocol.md section 3, on Node.js: integers go through whole "from
/// -(2^53 - 1) to 2^53 - 1: a larger one reaches a handler, and comes back,
/// as the nearest float, in either codec".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_keeps_safe_integers_whole_and_rounds_larger_ones_as_protocol_md_says() {
    let safe = json!({"max": 9007199254740991i64, "min": -9007199254740991i64});
    let large = [u64::MAX as f64, i64::MIN as f64, 9007199254740993u64 as f64];
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let pool = start(Lang::Node, JS_ARGS, codec).await;
        let r = pool.execute("args", safe.clone()).await.unwrap();
        assert_eq!(r["args"], safe, "{codec:?}");
        let r = pool
            .execute(
                "args",
                json!({"a": u64::MAX, "b": i64::MIN, "c": 9007199254740993u64}),
            )
            .await
            .unwrap();
        let got: Vec<f64> = ["a", "b", "c"]
            .iter()
            .map(|k| r["args"][k].as_f64().unwrap())
            .collect();
        assert_eq!(got, large, "{codec:?}: {r}");
        pool.shutdown().await.unwrap();
    }
}

/// Bytes that serialize as MessagePack `bin` and deserialize only from it.
#[derive(Debug, PartialEq)]
struct Bin(Vec<u8>);

impl serde::Serialize for Bin {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Bin {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bin, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Bin;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a binary string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bin, E> {
                Ok(Bin(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bin, E> {
                Ok(Bin(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

#[derive(serde::Serialize)]
struct BinArgs {
    data: Bin,
}

#[derive(serde::Deserialize, Debug)]
struct BinOut {
    kind: String,
    data: Bin,
}

const PY_BIN: &str = r#"
import snakepit_bridge
w = snakepit_bridge.Worker()
w.register("bin", lambda a: {"kind": type(a["data"]).__name__, "data": a["data"]})
w.register("make", lambda a: {"data": b"\x00\xffok"})
w.run()
"#;

const RB_BIN: &str = r#"
require "snakepit_bridge"
w = SnakepitBridge::Worker.new
w.command("bin") { |a| { "kind" => a["data"].encoding.to_s, "data" => a["data"] } }
w.command("make") { |a| { "data" => "\x00\xffok".b } }
w.run
"#;

const JS_BIN: &str = r#"
const { Worker } = require(process.env.SNAKEPIT_NODE_BRIDGE);
new Worker({ commands: {
  bin(a) { return { kind: a.data instanceof Uint8Array ? 'Uint8Array' : typeof a.data, data: a.data }; },
  make() { return { data: Buffer.from([0, 255, 111, 107]) }; },
} }).run();
"#;

/// docs/bridges.md, Codecs: "Binary data travels only with MessagePack, as
/// `bin` ...; received `bin` values arrive as `bytes`, `Uint8Array`, and
/// binary strings." "a result holding `bin` fails `execute` with
/// `Error::Codec`; decode it with `Pool::call` into a type that accepts
/// bytes". The worker is not blamed for the `execute` failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_data_goes_both_ways_as_bin_and_fails_only_execute_with_a_codec_error() {
    for (lang, script, kind) in [
        (Lang::Python, PY_BIN, "bytes"),
        (Lang::Ruby, RB_BIN, "ASCII-8BIT"),
        (Lang::Node, JS_BIN, "Uint8Array"),
    ] {
        let pool = start(lang, script, WireCodec::MsgPack).await;
        let pid = pool.worker_pids()[0];
        let sent = vec![0u8, 1, 0x80, 0xff, b'x'];
        let out: BinOut = pool
            .call(
                "bin",
                &BinArgs {
                    data: Bin(sent.clone()),
                },
                CallOptions::new(),
            )
            .await
            .unwrap_or_else(|e| panic!("{lang:?}: {e:?}"));
        assert_eq!(out.kind, kind, "{lang:?}");
        assert_eq!(out.data, Bin(sent), "{lang:?}");

        #[derive(serde::Deserialize)]
        struct Made {
            data: Bin,
        }
        let made: Made = pool
            .call("make", &json!({}), CallOptions::new())
            .await
            .unwrap_or_else(|e| panic!("{lang:?}: {e:?}"));
        assert_eq!(made.data, Bin(b"\x00\xffok".to_vec()), "{lang:?}");

        let err = pool
            .execute("make", json!({}))
            .await
            .expect_err("bin in a Value");
        assert!(
            matches!(err, snakepit_core::Error::Codec(_)),
            "{lang:?}: {err:?}"
        );
        let again: Made = pool
            .call("make", &json!({}), CallOptions::new())
            .await
            .unwrap_or_else(|e| panic!("{lang:?}: {e:?}"));
        assert_eq!(again.data.0.len(), 4);
        assert_eq!(pool.worker_pids(), vec![pid], "{lang:?}: same worker");
        let stats = pool.stats();
        assert_eq!(
            (stats.crashes, stats.restarts),
            (0, 0),
            "{lang:?}: {stats:?}"
        );
        pool.shutdown().await.unwrap();
    }
}

/// docs/bridges.md, Writing a bridge, step 10: during a host call "A worker
/// that runs one call at a time receives nothing else in the meantime,
/// apart from `cancel` if it declared it and, if it declared `pipeline`,
/// requests written ahead, which it keeps and runs after the current call."
/// Python and Ruby declare `pipeline`: calls that each make a host call,
/// written ahead while another waits for its `host_reply`, all get their
/// own answers, and the worker is never replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_written_ahead_behind_a_host_call_wait_and_each_gets_its_own_host_reply() {
    for (lang, script) in [(Lang::Python, PY_HOST), (Lang::Ruby, RB_HOST)] {
        let pool = json_pool(lang, script)
            .size(1)
            .configure(|c| c.pipeline_max_call = Duration::from_millis(200))
            .host_function("echo", |call: HostCall| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<_, RemoteError>(call.args)
            })
            .start()
            .await
            .unwrap_or_else(|e| panic!("{lang:?}: {e}"));
        for n in 0..10 {
            pool.execute("via_host", json!({"fn": "echo", "args": {"n": n}}))
                .await
                .unwrap();
        }
        let watcher = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut most = 0;
                for _ in 0..400 {
                    let now = pool.workers().first().map_or(0, |w| w.in_flight);
                    most = most.max(now);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                most
            })
        };
        let calls: Vec<_> = (0..60)
            .map(|n| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    (
                        n,
                        pool.execute("via_host", json!({"fn": "echo", "args": {"n": n}}))
                            .await,
                    )
                })
            })
            .collect();
        for c in calls {
            let (n, r) = c.await.unwrap();
            let r = r.unwrap_or_else(|e| panic!("{lang:?}: call {n}: {e:?}"));
            assert_eq!(r["got"], json!({"n": n}), "{lang:?}: {r}");
        }
        let most = watcher.await.unwrap();
        assert!(
            most >= 2,
            "{lang:?}: calls were written ahead (at most {most} in flight)"
        );
        let stats = pool.stats();
        assert_eq!(
            (stats.crashes, stats.restarts),
            (0, 0),
            "{lang:?}: {stats:?}"
        );
        pool.shutdown().await.unwrap();
    }
}

const PY_BIG_CHUNKS: &str = r#"
import os, snakepit_bridge
w = snakepit_bridge.Worker()
@w.command("big")
def big(args, ctx):
    piece = "x" * args["size"]
    for i in range(args["n"]):
        ctx.emit({"i": i, "s": piece})
    return {"done": True}
w.register("pid", lambda a: {"pid": os.getpid()})
w.run()
"#;

const RB_BIG_CHUNKS: &str = r#"
require "snakepit_bridge"
w = SnakepitBridge::Worker.new
w.command("big") do |a, ctx|
  piece = "x" * a["size"]
  a["n"].times { |i| ctx.chunk({ "i" => i, "s" => piece }) }
  { "done" => true }
end
w.command("pid") { |a| { "pid" => Process.pid } }
w.run
"#;

/// docs/bridges.md: "at its deadline a stream releases its worker whether
/// its caller keeps it unread ... or never reads it at all", with the
/// SIGINT of a one-call-at-a-time worker, whose reply is `Cancelled`; and
/// the section on writing a bridge: "whatever interrupts a handler must
/// never interrupt the frame I/O". Chunks of 256 KiB are larger than a
/// pipe, so the worker is blocked inside a frame's write when the signal
/// comes: the same worker must serve the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_never_read_whose_worker_is_blocked_mid_frame_keeps_its_worker_at_the_deadline() {
    for (lang, script) in [(Lang::Python, PY_BIG_CHUNKS), (Lang::Ruby, RB_BIG_CHUNKS)] {
        let pool = json_pool(lang, script)
            .size(1)
            .configure(|c| {
                c.shutdown_grace_period = Duration::from_secs(5);
                c.queue_timeout = Duration::from_secs(30);
            })
            .start()
            .await
            .unwrap_or_else(|e| panic!("{lang:?}: {e}"));
        let pid = pool.worker_pids()[0];
        // 400 chunks (once 2,000): more than the 256 a stream holds unread
        // and the one a full pipe holds up, so the worker is still inside a
        // chunk's write at the deadline, as with 2,000; the 1,600 more only
        // made it write 400 MB more, for a caller that had given up.
        let stream = pool
            .execute_stream(
                "big",
                json!({"n": 400, "size": 256 * 1024}),
                CallOptions::new().timeout(Duration::from_secs(2)),
            )
            .await
            .unwrap();
        let r = pool
            .execute_with(
                "pid",
                json!({}),
                CallOptions::new().timeout(Duration::from_secs(30)),
            )
            .await
            .unwrap_or_else(|e| panic!("{lang:?}: {e:?}"));
        assert_eq!(r["pid"].as_u64(), Some(u64::from(pid)), "{lang:?}: {r}");
        drop(stream);
        let stats = pool.stats();
        assert_eq!(
            (stats.crashes, stats.restarts),
            (0, 0),
            "{lang:?}: {stats:?}"
        );
        pool.shutdown().await.unwrap();
    }
}

const PY_ASYNC_ARGS: &str = r#"
import snakepit_bridge
w = snakepit_bridge.Worker()
@w.command("args")
async def args(a):
    return {"args": a}
w.run()
"#;

/// protocol.md section 4: "A `cancel` for an id that is not running (its
/// reply has been sent) is ignored", and ids are only "unique per pool at
/// any moment": a cancel that came after its call's reply, or before any
/// request with its id, must not touch a later request that has that id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_for_an_id_not_running_does_not_cancel_a_later_request_with_that_id() {
    for (lang, script) in [
        (Lang::Python, PY_ARGS),
        (Lang::Python, PY_ASYNC_ARGS),
        (Lang::Ruby, RB_ARGS),
        (Lang::Node, JS_ARGS),
    ] {
        let mut w = Frames::spawn(lang, script).await;
        let req = |id: u64, n: u64| {
            json!({"id": id, "command": "args", "args": {"n": n},
                   "timestamp": "2026-12-02T00:00:00.000000Z"})
        };
        // A reply sent, then a late cancel for it, then the id again.
        w.send(req(4, 1)).await;
        let r = w.reply().await.expect("a reply");
        assert_eq!(
            (r["id"].as_u64(), &r["success"]),
            (Some(4), &json!(true)),
            "{lang:?}: {r}"
        );
        w.send(json!({"type": "cancel", "id": 4})).await;
        w.send(req(4, 2)).await;
        let r = w.reply().await.expect("a reply");
        assert_eq!(
            r["success"], true,
            "{lang:?}: a late cancel hit the reused id: {r}"
        );
        assert_eq!(r["result"]["args"]["n"], 2, "{lang:?}: {r}");
        // A cancel before any request with its id.
        w.send(json!({"type": "cancel", "id": 9})).await;
        w.send(req(9, 3)).await;
        let r = w.reply().await.expect("a reply");
        assert_eq!(
            r["success"], true,
            "{lang:?}: an early cancel hit a later request: {r}"
        );
        assert_eq!(r["result"]["args"]["n"], 3, "{lang:?}: {r}");
        drop(w.stdin.take());
        assert!(w.reply().await.is_none(), "{lang:?}: nothing more");
        assert!(w.p.wait().await.unwrap().success(), "{lang:?}");
    }
}
