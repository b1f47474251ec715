//! An outside tester's audit of the three bundled bridges (Python, in its
//! default and its asyncio mode, Node.js, Ruby) at the wire: requests whose
//! optional fields have the wrong type or are unknown, `host_reply` frames
//! that are malformed or name no pending host call, and `cancel` frames
//! without a usable id.
//!
//! docs/protocol.md section 4 types every optional request field
//! (`session_id` string, `timeout_ms` integer >= 0, `stream` bool,
//! `traceparent`, `tracestate`, `baggage` strings) and says what a worker
//! does with one of the wrong type (it is absent, and never fails the
//! call), with a `cancel` or a `host_reply` without a usable id (ignored),
//! and with a `host_reply` for the pending host call without `success:
//! true` (the host call fails). What each test holds the bridges to is in
//! its comment, with the sentence it comes from.
//!
//! No pool: the test is the host. Each worker is a script of the bundled
//! bridge, launched as the `snakepit_adapters::Bridge` adapters launch it
//! (the embedded bridge files, the interpreter, the module path) with the
//! script given inline, and started with `RawProcess`; the test writes raw
//! frames (JSON or MessagePack) to its stdin and reads its stdout. (The
//! harness is the one of `outside_bridge_wire.rs`.)

mod raw_frames;

use raw_frames::{encode, frame, mp, Peer};

use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{Adapter, Launch, WireCodec};
use snakepit_tests::python;

const CODECS: [WireCodec; 2] = [WireCodec::Json, WireCodec::MsgPack];

/// A valid W3C traceparent.
const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lang {
    /// Plain functions only: one call at a time, SIGINT, `pipeline`.
    Python,
    /// An `async def` handler: the asyncio loop, `cancel` frames.
    PythonAsync,
    Node,
    Ruby,
}

const ALL: [Lang; 4] = [Lang::Python, Lang::PythonAsync, Lang::Node, Lang::Ruby];

/// The commands every worker here serves:
/// - `echo` answers its arguments;
/// - `ctx` answers what the handler's context says of the optional request
///   fields, and sends one chunk `"c"` when the caller streams;
/// - `ask` makes one host call per name in `calls` (default `["f"]`) and
///   answers, for each, `{"ok": result}` or, for a failed host call,
///   `{"type": ..., "message": ...}` of the `HostCallError`; any other
///   exception (`Cancelled`) fails the call.
const PY: &str = r#"
import snakepit_bridge
w = snakepit_bridge.Worker()
@w.command("echo")
def echo(args):
    return {"echoed": args}
@w.command("ctx")
def ctx_view(args, ctx):
    ctx.emit("c")
    return {"session_id": ctx.session_id, "traceparent": ctx.traceparent,
            "tracestate": ctx.tracestate, "baggage": ctx.baggage,
            "timeout_ms": ctx.timeout_ms, "stream": ctx.stream}
@w.command("ask")
def ask(args, ctx):
    out = []
    for fn in args.get("calls", ["f"]):
        try:
            out.append({"ok": ctx.call_host(fn, {})})
        except snakepit_bridge.HostCallError as e:
            out.append({"type": e.type, "message": e.message})
    return out
w.run()
"#;

/// The same, with `ask` an `async def`: the whole worker runs the asyncio
/// loop (`ctx` and `echo` on its threads).
const PY_ASYNC: &str = r#"
import snakepit_bridge
w = snakepit_bridge.Worker()
@w.command("echo")
def echo(args):
    return {"echoed": args}
@w.command("ctx")
def ctx_view(args, ctx):
    ctx.emit("c")
    return {"session_id": ctx.session_id, "traceparent": ctx.traceparent,
            "tracestate": ctx.tracestate, "baggage": ctx.baggage,
            "timeout_ms": ctx.timeout_ms, "stream": ctx.stream}
@w.command("ask")
async def ask(args, ctx):
    out = []
    for fn in args.get("calls", ["f"]):
        try:
            out.append({"ok": await ctx.acall_host(fn, {})})
        except snakepit_bridge.HostCallError as e:
            out.append({"type": e.type, "message": e.message})
    return out
w.run()
"#;

const JS: &str = r#"
const { Worker, HostCallError } = require('snakepit-bridge');
new Worker({ commands: {
  echo(args) { return { echoed: args }; },
  ctx(args, ctx) {
    ctx.sendChunk('c');
    return { session_id: ctx.sessionId, traceparent: ctx.traceparent, tracestate: ctx.tracestate,
      baggage: ctx.baggage, timeout_ms: ctx.timeoutMs, stream: ctx.streamRequested };
  },
  async ask(args, ctx) {
    const out = [];
    for (const fn of args.calls || ['f']) {
      try {
        out.push({ ok: await ctx.callHost(fn, {}) });
      } catch (e) {
        if (!(e instanceof HostCallError)) throw e;
        out.push({ type: e.type, message: e.message });
      }
    }
    return out;
  },
} }).run();
"#;

const RB: &str = r#"
require "snakepit_bridge"
w = SnakepitBridge::Worker.new
w.command("echo") { |a, _ctx| { "echoed" => a } }
w.command("ctx") do |_a, ctx|
  ctx.chunk("c") if ctx.stream?
  { "session_id" => ctx.session_id, "traceparent" => ctx.traceparent, "tracestate" => ctx.tracestate,
    "baggage" => ctx.baggage, "timeout_ms" => ctx.timeout_ms, "stream" => ctx.stream? }
end
w.command("ask") do |a, ctx|
  (a["calls"] || ["f"]).map do |fn|
    begin
      { "ok" => ctx.call_host(fn, {}) }
    rescue SnakepitBridge::HostCallError => e
      { "type" => e.error_type, "message" => e.message }
    end
  end
end
w.run
"#;

/// The MessagePack (and OpenTelemetry) packages the Node bridge's tests
/// installed (`npm ci`).
fn node_modules() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../bridges/node/node_modules"
    )
    .to_owned()
}

/// How the `Bridge` adapter launches a script of `lang`, with the script
/// given inline instead of as a file.
fn launch(lang: Lang) -> Launch {
    let (bridge, inline): (Bridge, Vec<&str>) = match lang {
        Lang::Python => (
            Bridge::python("inline.py").interpreter(python()),
            vec!["-u", "-c", PY],
        ),
        Lang::PythonAsync => (
            Bridge::python("inline.py").interpreter(python()),
            vec!["-u", "-c", PY_ASYNC],
        ),
        Lang::Node => (
            Bridge::node("inline.js").env("NODE_PATH", node_modules()),
            vec!["-e", JS],
        ),
        Lang::Ruby => (Bridge::ruby("inline.rb"), vec!["-e", RB]),
    };
    bridge
        .check()
        .unwrap_or_else(|e| panic!("{lang:?}: the bundled bridge is written: {e}"));
    let mut launch = bridge.launch();
    launch.args = inline.into_iter().map(Into::into).collect();
    launch
}

/// `value` (a map of at most 14 entries) encoded as MessagePack, with one
/// more entry whose value is the MessagePack `bin` holding `bytes`.
fn msgpack_with_bin(value: &Value, key: &str, bytes: &[u8]) -> Vec<u8> {
    let mut out = encode(WireCodec::MsgPack, value);
    assert!(out[0] & 0xf0 == 0x80 && out[0] < 0x8f, "a small fixmap");
    out[0] += 1;
    mp::encode(&json!(key), &mut out);
    out.push(0xc4);
    out.push(u8::try_from(bytes.len()).expect("a short bin"));
    out.extend_from_slice(bytes);
    out
}

fn request(id: u64, command: &str, args: Value) -> Value {
    json!({"id": id, "command": command, "args": args, "timestamp": "2026-12-03T00:00:00.000000Z"})
}

/// The map `base` with the entries of the map `fields` added.
fn merged(mut base: Value, fields: &Value) -> Value {
    for (k, v) in fields.as_object().expect("fields are a map") {
        base[k] = v.clone();
    }
    base
}

/// A `ctx` request under `id` with `fields` added to it.
fn ctx_request(id: u64, fields: &Value) -> Value {
    merged(request(id, "ctx", json!({})), fields)
}

/// What `ctx` answers for a request without optional fields.
fn absent() -> Value {
    json!({"session_id": null, "traceparent": null, "tracestate": null,
           "baggage": null, "timeout_ms": null, "stream": false})
}

impl Peer {
    /// Starts `lang`'s worker and reads its `hello`.
    async fn start(lang: Lang, codec: WireCodec) -> Peer {
        Peer::spawn(launch(lang), codec, format!("{lang:?}/{codec:?}")).await
    }

    /// Closes stdin: nothing more is written and the worker exits 0.
    async fn ends_cleanly(self, after: &str) {
        let what = self.what.clone();
        let stderr = self.stderr();
        let (rest, code) = self.finish().await;
        assert_eq!(
            (rest, code),
            (vec![], Some(0)),
            "{what}: after {after}, nothing more is written and the worker exits 0 at EOF; stderr: {stderr}",
        );
    }

    /// Several frames in one write: the worker finds them together.
    async fn send_all(&mut self, values: &[Value]) {
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|v| frame(&encode(self.codec, v)))
            .collect();
        self.write(&bytes).await;
    }

    /// The next frame, which must be the final reply under `id` (not a
    /// chunk, not a failed reply under id 0): returns it.
    async fn reply(&mut self, id: u64, after: &str) -> Value {
        let r = self.recv().await;
        assert!(
            r["id"] == id && r.get("success").is_some() && r.get("type").is_none(),
            "{}: after {after}, the next frame is the reply to request {id}: {r}; stderr: {}",
            self.what,
            self.stderr()
        );
        r
    }

    /// The result of the successful reply that is the next frame.
    async fn result(&mut self, id: u64, after: &str) -> Value {
        let r = self.reply(id, after).await;
        assert_eq!(
            r["success"],
            true,
            "{}: after {after}: {r}; stderr: {}",
            self.what,
            self.stderr()
        );
        r["result"].clone()
    }

    /// The next frame, which must be a `host_call` of request `rid`:
    /// returns its id.
    async fn host_call(&mut self, rid: u64) -> u64 {
        let call = self.recv().await;
        assert_eq!(
            (&call["type"], &call["request_id"]),
            (&json!("host_call"), &json!(rid)),
            "{}: a host call of request {rid}: {call}",
            self.what
        );
        call["id"].as_u64().expect("an integer host call id")
    }
}

/// protocol.md section 4, the request table ("`session_id` | string | no",
/// "`timeout_ms` | integer | no", "`stream` | bool | no", "`traceparent` |
/// string | no", ...) and docs/bridges.md, Writing a bridge, step 6:
/// "ignore fields you do not know". (protocol.md section 5, "A frame from a
/// worker that has a `success` field is a `response` whatever its `type`
/// says", is a rule for frames *from* a worker: from the pool, a request is
/// a request whatever else it carries.)
///
/// A request carrying unknown fields (among them the names of fields of
/// other frames, `sessionId`/`timeoutMs` as Node spells its context,
/// `__proto__` holding optional fields, and `toString`/`hasOwnProperty`) is
/// served as if it had none: its handler sees no session, no trace context,
/// no timeout and no stream, and no chunk is written. A `host_reply` with
/// unknown fields answers its host call; a `cancel` with unknown fields
/// cancels what it names (a call waiting in a host call, documented for
/// the bridges that take `cancel` frames; for Python's default mode, which
/// takes SIGINT, a request written ahead: protocol.md, `pipeline`, "a
/// `cancel` frame for a request it has not started makes it answer that
/// request `Cancelled` without running it").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_ignored_in_requests_host_replies_and_cancels() {
    let extras = json!({
        "zzz": [1, {"a": null}],
        "sessionId": "camel", "timeoutMs": 5, "streamRequested": true, "Stream": true,
        "__proto__": {"stream": true, "session_id": "proto", "timeout_ms": 9},
        "toString": 5, "hasOwnProperty": 5, "constructor": {"name": "x"},
        "request_id": 99, "function": "f", "data": 1, "result": 2,
        "success": false, "error": "not an error",
    });
    for lang in ALL {
        for codec in CODECS {
            let mut peer = Peer::start(lang, codec).await;
            let w = peer.what.clone();

            peer.send(&ctx_request(1, &extras)).await;
            let view = peer.result(1, "a request with unknown fields").await;
            assert_eq!(view, absent(), "{w}: the handler's context");

            peer.send(&request(2, "ask", json!({}))).await;
            let hid = peer.host_call(2).await;
            peer.send(&json!({"type": "host_reply", "id": hid, "success": true,
                              "result": "right", "zzz": 1, "request_id": 999,
                              "command": "echo", "args": {}, "data": 1}))
                .await;
            let r = peer.result(2, "a host_reply with unknown fields").await;
            assert_eq!(r, json!([{"ok": "right"}]), "{w}");

            peer.send(&request(3, "ask", json!({}))).await;
            let hid = peer.host_call(3).await;
            let cancel_extras = json!({"zzz": 1, "request_id": 3, "success": true,
                                       "command": "echo", "args": {}, "result": 1});
            if lang == Lang::Python {
                let cancel = merged(json!({"type": "cancel", "id": 4}), &cancel_extras);
                peer.send_all(&[request(4, "echo", json!({})), cancel])
                    .await;
                let r = peer.reply(4, "a cancel with unknown fields").await;
                assert_eq!(r["error"]["type"], "Cancelled", "{w}: {r}");
                peer.send(&json!({"type": "host_reply", "id": hid, "success": true, "result": 1}))
                    .await;
                let r = peer.result(3, "the host reply").await;
                assert_eq!(r, json!([{"ok": 1}]), "{w}");
            } else {
                let cancel = merged(json!({"type": "cancel", "id": 3}), &cancel_extras);
                peer.send(&cancel).await;
                let r = peer.reply(3, "a cancel with unknown fields").await;
                assert_eq!(r["error"]["type"], "Cancelled", "{w}: {r}");
                // The host call's reply, now late, is dropped.
                peer.send(&json!({"type": "host_reply", "id": hid, "success": true, "result": 1}))
                    .await;
            }
            peer.ends_cleanly("unknown fields").await;
        }
    }
}

/// protocol.md section 4: "`stream` | bool | no | `true` when the caller
/// consumes `chunk` frames"; section 5, `chunk`: "A worker sends chunks
/// only for a request that had `stream: true`". bridges.md, the context:
/// Python `ctx.emit` "returns `False` and sends nothing without a stream",
/// Node `ctx.sendChunk` the same; Ruby `ctx.stream?` "whether the caller
/// consumes partial results".
///
/// `stream: true` streams (the handler's chunk comes before its reply);
/// `stream` of any other value (`"yes"`, `"true"`, `1`, `{}`, `[true]`,
/// `null`) is no stream: the handler is told so and no chunk is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_field_that_is_not_true_asks_for_no_stream() {
    for lang in ALL {
        let mut peer = Peer::start(lang, WireCodec::Json).await;
        let w = peer.what.clone();
        peer.send(&ctx_request(1, &json!({"stream": true}))).await;
        let chunk = peer.recv().await;
        assert_eq!(
            chunk,
            json!({"type": "chunk", "id": 1, "data": "c"}),
            "{w}: stream: true streams"
        );
        let view = peer.result(1, "its chunk").await;
        assert_eq!(view["stream"], true, "{w}: {view}");
        for (n, value) in [
            json!("yes"),
            json!("true"),
            json!(1),
            json!({}),
            json!([true]),
            json!(null),
        ]
        .into_iter()
        .enumerate()
        {
            let id = 10 + n as u64;
            peer.send(&ctx_request(id, &json!({"stream": value}))).await;
            let view = peer.result(id, &format!("stream {value}")).await;
            assert_eq!(view["stream"], false, "{w}: stream {value}: {view}");
        }
        peer.ends_cleanly("the streams").await;
    }
}

/// Requests whose optional fields have the wrong type (or a string that
/// is no W3C trace context): `(what, fields)`.
fn wrongly_typed() -> Vec<(&'static str, Value)> {
    vec![
        ("traceparent 5", json!({"traceparent": 5})),
        ("traceparent true", json!({"traceparent": true})),
        ("traceparent a map", json!({"traceparent": {"a": 1}})),
        ("traceparent a list", json!({"traceparent": [TP]})),
        ("traceparent \"garbage\"", json!({"traceparent": "garbage"})),
        (
            "traceparent with zero ids",
            json!({"traceparent": format!("00-{}-{}-01", "0".repeat(32), "0".repeat(16))}),
        ),
        ("tracestate 5", json!({"traceparent": TP, "tracestate": 5})),
        ("baggage 5", json!({"traceparent": TP, "baggage": 5})),
        (
            "tracestate a map, baggage a list",
            json!({"traceparent": TP, "tracestate": {"a": 1}, "baggage": ["k=v"]}),
        ),
        ("session_id 5", json!({"session_id": 5})),
        ("session_id a map", json!({"session_id": {"id": "s"}})),
        ("timeout_ms \"100\"", json!({"timeout_ms": "100"})),
        ("timeout_ms true", json!({"timeout_ms": true})),
        ("timeout_ms -5", json!({"timeout_ms": -5})),
        ("timeout_ms 1.5", json!({"timeout_ms": 1.5})),
        ("timeout_ms 1e300", json!({"timeout_ms": 1e300})),
        ("timeout_ms 2^64 - 1", json!({"timeout_ms": u64::MAX})),
        (
            "all at once",
            json!({"session_id": 5, "timeout_ms": "x", "stream": "yes",
                   "traceparent": 5, "tracestate": 5, "baggage": 5}),
        ),
    ]
}

/// The MessagePack requests of `wrongly_typed`, plus string fields sent as
/// `bin` (protocol.md section 3: "Strings are `str` (UTF-8), binary data
/// is `bin`"): `(what, id, payload)`.
fn wrongly_typed_msgpack(first_id: u64) -> Vec<(String, u64, Vec<u8>)> {
    let mut out: Vec<(String, u64, Vec<u8>)> = wrongly_typed()
        .into_iter()
        .enumerate()
        .map(|(n, (what, fields))| {
            let id = first_id + n as u64;
            (
                what.to_owned(),
                id,
                encode(WireCodec::MsgPack, &ctx_request(id, &fields)),
            )
        })
        .collect();
    let id = first_id + out.len() as u64;
    out.push((
        "traceparent a bin".into(),
        id,
        msgpack_with_bin(&request(id, "ctx", json!({})), "traceparent", TP.as_bytes()),
    ));
    out.push((
        "session_id a bin".into(),
        id + 1,
        msgpack_with_bin(&request(id + 1, "ctx", json!({})), "session_id", b"s1"),
    ));
    out
}

/// Sends each request of `wrongly_typed` (in both codecs) and returns, per
/// request, what was sent and the reply.
async fn replies_to_wrongly_typed(peer: &mut Peer) -> Vec<(String, Value)> {
    let cases: Vec<(String, u64, Vec<u8>)> = match peer.codec {
        WireCodec::MsgPack => wrongly_typed_msgpack(100),
        _ => wrongly_typed()
            .into_iter()
            .enumerate()
            .map(|(n, (what, fields))| {
                let id = 100 + n as u64;
                (
                    what.to_owned(),
                    id,
                    encode(WireCodec::Json, &ctx_request(id, &fields)),
                )
            })
            .collect(),
    };
    let mut out = Vec::new();
    for (what, id, payload) in cases {
        peer.send_payload(&payload).await;
        let reply = peer.reply(id, &what).await;
        out.push((what, reply));
    }
    out
}

/// protocol.md section 4: optional fields are typed ("`session_id` |
/// string", "`timeout_ms` | integer", "`traceparent` | string", ...), and
/// the docs say what a worker answers to a request "with a wrong type" only
/// for the required fields. Whatever a bridge makes of a wrongly typed
/// optional field (ignore it, or refuse the request with `InvalidRequest`
/// under its id), it must not fail the call with an error of its own
/// making (a `TypeError` from inside OpenTelemetry, say), nor stop serving:
/// bridges/python/README.md, Tracing: "If `opentelemetry-api` is installed
/// ... and a request carries a `traceparent`, the handler runs inside a
/// span"; bridges/node/README.md the same.
///
/// protocol.md section 4 now settles it: an optional field whose type is
/// not the table's is treated as absent, and never fails the call (so an
/// `InvalidRequest` is no longer accepted either).
///
/// Every request of `wrongly_typed` (and, in MessagePack, trace context and
/// session as `bin`) gets a successful reply; the worker serves on and
/// exits 0 at EOF having written nothing else. Node.js (whose
/// `@opentelemetry/api` the test puts on its path) and Ruby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrongly_typed_optional_fields_never_fail_a_call_node_ruby() {
    wrongly_typed_optional_fields_never_fail_a_call(&[Lang::Node, Lang::Ruby]).await;
}

/// The same for Python, in both modes. It fails only where
/// `opentelemetry-api` is installed for the worker's Python (it is for
/// `SNAKEPIT_PYTHON` here): the bridge hands any truthy `traceparent`,
/// `tracestate` or `baggage` to `opentelemetry.propagate.extract`, which
/// raises for a value that is not a string.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrongly_typed_optional_fields_never_fail_a_call_python() {
    wrongly_typed_optional_fields_never_fail_a_call(&[Lang::Python, Lang::PythonAsync]).await;
}

async fn wrongly_typed_optional_fields_never_fail_a_call(langs: &[Lang]) {
    for &lang in langs {
        for codec in CODECS {
            let mut peer = Peer::start(lang, codec).await;
            let w = peer.what.clone();
            let mut failed = Vec::new();
            for (what, reply) in replies_to_wrongly_typed(&mut peer).await {
                if reply["success"] != true {
                    failed.push(format!("{what}: {}", reply["error"]));
                }
            }
            assert!(
                failed.is_empty(),
                "{w}: calls failed by the bridge itself:\n{}",
                failed.join("\n")
            );
            peer.send(&request(1, "echo", json!({"n": 1}))).await;
            let r = peer.result(1, "the wrongly typed fields").await;
            assert_eq!(r["echoed"], json!({"n": 1}), "{w}");
            peer.ends_cleanly("the wrongly typed fields").await;
        }
    }
}

/// The bridges' context documents each optional field as its value or
/// none, never as whatever the frame held:
/// bridges/python/README.md: "`ctx.session_id` | the caller's session, or
/// `None`", "`ctx.traceparent`, `ctx.tracestate` | W3C trace context of
/// the caller, or `None`", "`ctx.timeout_ms` | milliseconds the caller
/// still waits, or `None`" (and `Context`'s annotations:
/// `session_id: Optional[str]`, `timeout_ms: Optional[int]`);
/// bridges/node/README.md and bridges/ruby/README.md the same with `null`
/// and `nil`; docs/bridges.md, "The context, side by side". With
/// protocol.md's types (`session_id`, `traceparent`, `tracestate`,
/// `baggage` strings, `timeout_ms` an integer), a field of another type is
/// no session, no trace context, no timeout: the handler sees it as
/// absent, as Node.js does. (protocol.md section 4 now says so, and that
/// such a field never fails the call: `InvalidRequest` is not accepted.)
///
/// The right types reach the handler as sent; each wrongly typed one
/// (a number, a boolean, a map, a list, and in MessagePack a `bin` where a
/// `str` belongs) reaches it as none.
async fn wrongly_typed_optional_fields_reach_the_handler_as_absent(lang: Lang) {
    let good = json!({"session_id": "s1", "traceparent": TP, "tracestate": "v=1",
                      "baggage": "k=v", "timeout_ms": 1500, "stream": false});
    let cases: Vec<(&str, Value)> = vec![
        ("session_id 5", json!({"session_id": 5})),
        ("session_id true", json!({"session_id": true})),
        ("session_id a map", json!({"session_id": {"id": "s1"}})),
        ("traceparent 5", json!({"traceparent": 5})),
        ("traceparent a list", json!({"traceparent": [TP]})),
        ("tracestate 5", json!({"tracestate": 5})),
        ("baggage a map", json!({"baggage": {"k": "v"}})),
        ("timeout_ms \"100\"", json!({"timeout_ms": "100"})),
        ("timeout_ms true", json!({"timeout_ms": true})),
        ("timeout_ms a map", json!({"timeout_ms": {"ms": 100}})),
        ("timeout_ms a list", json!({"timeout_ms": [100]})),
    ];
    for codec in CODECS {
        let mut peer = Peer::start(lang, codec).await;
        let w = peer.what.clone();
        peer.send(&ctx_request(1, &good)).await;
        let view = peer.result(1, "well-typed fields").await;
        assert_eq!(view, good, "{w}: well-typed fields reach the handler");

        let mut sent: Vec<(String, u64, Vec<u8>)> = cases
            .iter()
            .enumerate()
            .map(|(n, (what, fields))| {
                let id = 10 + n as u64;
                (
                    (*what).to_owned(),
                    id,
                    encode(codec, &ctx_request(id, fields)),
                )
            })
            .collect();
        if codec == WireCodec::MsgPack {
            for (n, key) in ["session_id", "traceparent", "baggage"].iter().enumerate() {
                let id = 50 + n as u64;
                let payload = msgpack_with_bin(&request(id, "ctx", json!({})), key, b"k=v");
                sent.push((format!("{key} a bin"), id, payload));
            }
        }
        let mut wrong = Vec::new();
        for (what, id, payload) in sent {
            peer.send_payload(&payload).await;
            let r = peer.reply(id, &what).await;
            if r["success"] != true {
                wrong.push(format!("{what}: the call failed: {}", r["error"]));
            } else if r["result"] != absent() {
                wrong.push(format!("{what}: the handler saw {}", r["result"]));
            }
        }
        assert!(
            wrong.is_empty(),
            "{w}: wrongly typed optional fields reach the handler:\n{}",
            wrong.join("\n")
        );
        peer.ends_cleanly("the wrongly typed fields").await;
    }
}

/// See `wrongly_typed_optional_fields_reach_the_handler_as_absent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrongly_typed_optional_fields_reach_the_handler_as_absent_node() {
    wrongly_typed_optional_fields_reach_the_handler_as_absent(Lang::Node).await;
}

/// See `wrongly_typed_optional_fields_reach_the_handler_as_absent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrongly_typed_optional_fields_reach_the_handler_as_absent_python() {
    for lang in [Lang::Python, Lang::PythonAsync] {
        wrongly_typed_optional_fields_reach_the_handler_as_absent(lang).await;
    }
}

/// See `wrongly_typed_optional_fields_reach_the_handler_as_absent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrongly_typed_optional_fields_reach_the_handler_as_absent_ruby() {
    wrongly_typed_optional_fields_reach_the_handler_as_absent(Lang::Ruby).await;
}

/// protocol.md section 4: "`timeout_ms` | integer | no | milliseconds left
/// before the caller gives up"; the bridges' READMEs: `ctx.timeout_ms` /
/// `ctx.timeoutMs` is "milliseconds the caller had left ..., or `None`"
/// (Python's `Context` annotates it `Optional[int]`). A number that is not
/// an integer (1.5, -0.5, 1e300) is not a `timeout_ms` of the protocol, and
/// reaches the handler as none, as `"100"` does in Node.js; the call does
/// not fail (protocol.md section 4: `timeout_ms` is an integer >= 0, and a
/// field of another type is absent and never fails the call).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_ms_that_is_not_an_integer_reaches_the_handler_as_absent() {
    for lang in [Lang::Python, Lang::Node, Lang::Ruby] {
        let mut peer = Peer::start(lang, WireCodec::Json).await;
        let w = peer.what.clone();
        let mut wrong = Vec::new();
        for (n, t) in [json!(1.5), json!(-0.5), json!(1e300)]
            .into_iter()
            .enumerate()
        {
            let id = 1 + n as u64;
            peer.send(&ctx_request(id, &json!({"timeout_ms": t}))).await;
            let r = peer.reply(id, &format!("timeout_ms {t}")).await;
            let ok = r["success"] == true && r["result"]["timeout_ms"].is_null();
            if !ok {
                wrong.push(format!("timeout_ms {t}: {r}"));
            }
        }
        assert!(wrong.is_empty(), "{w}:\n{}", wrong.join("\n"));
        peer.ends_cleanly("the timeouts").await;
    }
}

/// A `host_reply` that names the pending host call but says no `success:
/// true`: `(what, frame fields besides type and id, what the handler gets)`
/// where `null` stands for "a failed host call of type `HostError` with a
/// message that is not empty".
fn failed_host_replies() -> Vec<(&'static str, Value, Value)> {
    let host_error = Value::Null;
    vec![
        ("no success, no result", json!({}), host_error.clone()),
        (
            "success \"yes\"",
            json!({"success": "yes", "result": "r"}),
            host_error.clone(),
        ),
        (
            "success 1",
            json!({"success": 1, "result": "r"}),
            host_error.clone(),
        ),
        (
            "success null",
            json!({"success": null, "result": "r"}),
            host_error.clone(),
        ),
        (
            "success false, no error",
            json!({"success": false}),
            host_error,
        ),
        (
            "an error map without type",
            json!({"success": false, "error": {"message": "m"}}),
            json!({"type": "HostError", "message": "m"}),
        ),
        (
            "an error that is a number",
            json!({"success": false, "error": 5}),
            json!({"type": "HostError", "message": "5"}),
        ),
        (
            "an error whose message is a number",
            json!({"success": false, "error": {"type": "T", "message": 5}}),
            json!({"type": "T", "message": "5"}),
        ),
        (
            "success true, no result",
            json!({"success": true}),
            json!({"ok": null}),
        ),
    ]
}

/// protocol.md section 4, `host_reply`: "`{"type":"host_reply","id":4,
/// "success":true,"result":...}` or with `"success":false,"error":{...}`";
/// docs/bridges.md: "an `Err` raises `HostCallError` (Python, Ruby) or
/// rejects with one (Node) carrying the error's type"; the README of each
/// bridge: a failed host call raises `HostCallError` with its type and
/// message. protocol.md: a `host_reply` for the pending host call
/// "without `success: true` fails it", with type `HostError` and a
/// non-empty message when it has no usable `error`; docs/bridges.md's
/// reference worker does so (`if msg.get("success") is True: return ...;
/// raise RuntimeError("host call failed: ...")`). (A `ProtocolError` under
/// id 0, the answer to "a frame the worker cannot use", would make a pool
/// replace the worker, and leave the handler waiting for a reply that was
/// already given.)
///
/// For each reply of `failed_host_replies`, followed by a well-formed
/// reply for the same host call (which must then be ignored, as a reply
/// for no pending host call), the handler's host call fails with
/// `HostCallError` of the error's type (`HostError` when the reply gives
/// none, as all three bridges name it) and a message that is not empty,
/// or (`success: true` without `result`) returns null; nothing else is
/// written, and the worker serves on.
async fn host_replies_without_success_true_fail_the_host_call(lang: Lang) {
    for codec in CODECS {
        let mut peer = Peer::start(lang, codec).await;
        let w = peer.what.clone();
        let mut wrong = Vec::new();
        for (n, (what, fields, expected)) in failed_host_replies().into_iter().enumerate() {
            let rid = 10 + n as u64;
            peer.send(&request(rid, "ask", json!({}))).await;
            let hid = peer.host_call(rid).await;
            let bad = merged(json!({"type": "host_reply", "id": hid}), &fields);
            let rescue =
                json!({"type": "host_reply", "id": hid, "success": true, "result": "rescued"});
            peer.send_all(&[bad, rescue]).await;
            let r = peer.recv().await;
            if r["id"] != rid {
                wrong.push(format!("{what}: instead of the call's reply: {r}"));
                // Out of step: the rest would say nothing new.
                break;
            }
            let got = &r["result"][0];
            let ok = r["success"] == true
                && if expected.is_null() {
                    got["type"] == "HostError"
                        && got["message"].as_str().is_some_and(|m| !m.is_empty())
                } else {
                    *got == expected
                };
            if !ok {
                wrong.push(format!("{what}: {r}"));
            }
        }
        assert!(
            wrong.is_empty(),
            "{w}: host replies without success: true:\n{}\nstderr: {}",
            wrong.join("\n"),
            peer.stderr()
        );
        peer.send(&request(1, "echo", json!({"n": 1}))).await;
        peer.result(1, "the host replies").await;
        peer.ends_cleanly("the host replies").await;
    }
}

/// See `host_replies_without_success_true_fail_the_host_call`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_replies_without_success_true_fail_the_host_call_node() {
    host_replies_without_success_true_fail_the_host_call(Lang::Node).await;
}

/// See `host_replies_without_success_true_fail_the_host_call`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_replies_without_success_true_fail_the_host_call_python() {
    for lang in [Lang::Python, Lang::PythonAsync] {
        host_replies_without_success_true_fail_the_host_call(lang).await;
    }
}

/// See `host_replies_without_success_true_fail_the_host_call`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_replies_without_success_true_fail_the_host_call_ruby() {
    host_replies_without_success_true_fail_the_host_call(Lang::Ruby).await;
}

/// docs/bridges.md, Writing a bridge, step 10: "send `{"type":"host_call",
/// "id":N,...}` with `N` from your own counter, and wait for the
/// `host_reply` with id `N`"; protocol.md section 5: "The pool answers with
/// a `host_reply` carrying the same `id`". So a `host_reply` under another
/// id is not the answer: not to a host call never made, not a second reply
/// to one already answered, and not one sent after its request finished.
///
/// While request 1 waits for host call A: a reply for an id never used,
/// then A's reply. While it waits for host call B: A's reply again, then
/// B's (a failure). After the request's reply: B's again. The handler gets
/// A's result and B's error; nothing else is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_replies_for_other_host_calls_are_ignored() {
    for (n, lang) in ALL.into_iter().enumerate() {
        let codec = CODECS[n % 2];
        let mut peer = Peer::start(lang, codec).await;
        let w = peer.what.clone();
        peer.send(&request(1, "ask", json!({"calls": ["a", "b"]})))
            .await;
        let a = peer.host_call(1).await;
        peer.send_all(&[
            json!({"type": "host_reply", "id": a + 1000, "success": true, "result": "never asked"}),
            json!({"type": "host_reply", "id": a, "success": true, "result": "A"}),
        ])
        .await;
        let b = peer.host_call(1).await;
        assert_ne!(a, b, "{w}: host call ids are not reused");
        let b_error = json!({"type": "Nope", "message": "no b"});
        peer.send_all(&[
            json!({"type": "host_reply", "id": a, "success": true, "result": "A again"}),
            json!({"type": "host_reply", "id": b, "success": false, "error": b_error}),
        ])
        .await;
        let r = peer.result(1, "stray and duplicate host replies").await;
        assert_eq!(r, json!([{"ok": "A"}, b_error]), "{w}");
        peer.send(&json!({"type": "host_reply", "id": b, "success": true, "result": "late"}))
            .await;
        peer.send(&request(2, "echo", json!({"n": 2}))).await;
        let r = peer.result(2, "a reply for a finished call").await;
        assert_eq!(r["echoed"], json!({"n": 2}), "{w}");
        peer.ends_cleanly("the stray host replies").await;
    }
}

/// protocol.md section 4, `cancel`: "A `cancel` for an id that is not
/// running (its reply has been sent) is ignored"; section 5, the error
/// types: "`ProtocolError` | the frame could not be used at all (empty, too
/// large, undecodable, not a map, unknown `type`); sent with `id` 0", and
/// section 4: "(The pool itself takes any failed reply with `id` 0 as a
/// sign that the two sides are out of step and replaces the worker.)"
///
/// A `cancel` or a `host_reply` whose `id` is missing, null, a string, a
/// fraction or a list is none of the frames `ProtocolError` is for (it
/// decodes, is a map, and has a known type), and it names nothing running:
/// it is ignored, as docs/bridges.md's reference worker ignores it (it acts
/// only on a request, and in a host call only on the `host_reply` with its
/// id) and as the Node.js and Ruby bridges do. Answering it with a
/// `ProtocolError` under id 0 would cost a pooled worker its life for a
/// frame that asks for nothing.
///
/// Such frames while idle, and while a request waits in a host call (among
/// them a cancel naming that request's id as a string, and a reply naming
/// the host call's id as a string), get no answer; the host call is
/// answered by its own reply, the request is not cancelled, and the next
/// frame is the request's reply.
async fn frames_without_a_usable_id_are_ignored(lang: Lang) {
    let malformed = |rid: Value, hid: Value| {
        vec![
            json!({"type": "cancel", "id": rid}),
            json!({"type": "cancel", "id": null}),
            json!({"type": "cancel", "id": 1.5}),
            json!({"type": "cancel", "id": [1]}),
            json!({"type": "cancel"}),
            json!({"type": "host_reply", "id": hid, "success": true, "result": "wrong"}),
            json!({"type": "host_reply", "id": null, "success": true, "result": "wrong"}),
            json!({"type": "host_reply", "id": 2.5, "success": true, "result": "wrong"}),
            json!({"type": "host_reply", "success": true, "result": "wrong"}),
        ]
    };
    for codec in CODECS {
        let mut peer = Peer::start(lang, codec).await;
        let w = peer.what.clone();

        peer.send_all(&malformed(json!("1"), json!("1"))).await;
        peer.send(&request(1, "echo", json!({"n": 1}))).await;
        let r = peer
            .result(1, "malformed cancels and host replies, idle")
            .await;
        assert_eq!(r["echoed"], json!({"n": 1}), "{w}");

        peer.send(&request(2, "ask", json!({}))).await;
        let hid = peer.host_call(2).await;
        let mut frames = malformed(json!("2"), json!(hid.to_string()));
        frames.push(json!({"type": "host_reply", "id": hid, "success": true, "result": "right"}));
        peer.send_all(&frames).await;
        let r = peer
            .result(2, "malformed cancels and host replies in a host call")
            .await;
        assert_eq!(r, json!([{"ok": "right"}]), "{w}");
        peer.ends_cleanly("the malformed frames").await;
    }
}

/// See `frames_without_a_usable_id_are_ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_and_host_replies_without_a_usable_id_are_ignored_node_ruby() {
    for lang in [Lang::Node, Lang::Ruby] {
        frames_without_a_usable_id_are_ignored(lang).await;
    }
}

/// See `frames_without_a_usable_id_are_ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_and_host_replies_without_a_usable_id_are_ignored_python() {
    for lang in [Lang::Python, Lang::PythonAsync] {
        frames_without_a_usable_id_are_ignored(lang).await;
    }
}
