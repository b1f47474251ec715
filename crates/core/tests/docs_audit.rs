//! Audit of docs/protocol.md: promises no other test showed, checked with
//! real worker processes of the bundled bridges (given inline) under a real
//! pool, or driven frame by frame over their pipes.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_core::Stream;
use serde_json::{json, Value};
use snakepit_core::{
    Adapter, CallOptions, CallStream, Error, HostCall, Launch, Pool, RawProcess, StreamItem,
    WireCodec,
};
use snakepit_protocol::{decode_inbound, decode_response, Inbound, MsgPack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A worker of a bundled bridge whose script is given inline.
struct Inline {
    lang: Lang,
    script: &'static str,
    codec: WireCodec,
}

impl Adapter for Inline {
    fn launch(&self) -> Launch {
        let launch = inline_launch(self.lang, self.script);
        if self.lang == Lang::Python {
            launch.env("PYTHONUNBUFFERED", "1")
        } else {
            launch
        }
    }
    fn codec(&self) -> WireCodec {
        self.codec
    }
    fn command_timeout(&self, _: &str) -> Duration {
        Duration::from_secs(15)
    }
}

async fn next(stream: &mut CallStream) -> Option<snakepit_core::Result<StreamItem>> {
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}

const PY_KEYS: &str = r#"
import os, snakepit_bridge
w = snakepit_bridge.Worker()

@w.command("int_keys")
def int_keys(args, ctx):
    ctx.emit({1: "a"})
    return {1: "a", 2: "b"}

@w.command("odd_keys")
def odd_keys(args, ctx):
    return ctx.call_host("args_back", {2: "a", True: "b", None: "c", b"k": "d"})

w.register("pid", lambda a: {"pid": os.getpid()})
w.register("key_types", lambda a: [[type(k).__name__, str(k)] for k in a["m"]])
w.run()
"#;

async fn python_msgpack_pool() -> Pool {
    builder(Inline {
        lang: Lang::Python,
        script: PY_KEYS,
        codec: WireCodec::MsgPack,
    })
    .size(1)
    .host_function("args_back", |call: HostCall| async move { Ok(call.args) })
    .start()
    .await
    .expect("the Python worker starts")
}

/// docs/protocol.md section 3: "the keys of a map inside the data (`args`,
/// `result`, `data`) are what the caller's data has ... a Python worker
/// writes `{1: "a"}` the same way ... On the host, a typed reader
/// (`Pool::call` into a `HashMap<u32, _>`) gets such keys as they are.
/// `serde_json::Value` has only string keys: a result or chunk read as a
/// `Value` (`execute`) fails with `Error::Codec`". Section 2 adds that a
/// reply the host cannot read "fails only its own call, and the worker is
/// not blamed".
///
/// A Python worker under MessagePack returns `{1: "a", 2: "b"}` and emits a
/// chunk `{1: "a"}`. The test reads the result into a `HashMap<u32,
/// String>` through `Pool::call`, checks that `execute` of the same command
/// fails with `Error::Codec`, that a stream's chunk fails the same way, and
/// that the same worker (same pid, no crash or restart) serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integer_keys_reach_a_typed_reader_and_are_a_codec_error_for_value() {
    let pool = python_msgpack_pool().await;
    let pid = pool.worker_pids()[0];

    let typed: HashMap<u32, String> = pool
        .call("int_keys", &json!({}), CallOptions::new())
        .await
        .expect("a typed reader takes integer keys");
    assert_eq!(
        typed,
        HashMap::from([(1, "a".to_owned()), (2, "b".to_owned())])
    );

    let err = pool
        .execute("int_keys", json!({}))
        .await
        .expect_err("a Value has only string keys");
    assert!(matches!(err, Error::Codec(_)), "execute: {err:?}");

    let mut stream = pool
        .execute_stream("int_keys", json!({}), CallOptions::new())
        .await
        .expect("the stream starts");
    let first = next(&mut stream).await;
    assert!(
        matches!(first, Some(Err(Error::Codec(_)))),
        "the chunk {{1: \"a\"}} read as a Value: {first:?}"
    );
    drop(stream);

    let r = pool.execute("pid", json!({})).await.unwrap();
    assert_eq!(r["pid"].as_u64(), Some(u64::from(pid)));
    let stats = pool.stats();
    assert_eq!((stats.crashes, stats.restarts), (0, 0), "{stats:?}");
    pool.shutdown().await.unwrap();
}

#[derive(serde::Serialize)]
struct Keyed {
    m: HashMap<u32, &'static str>,
}

const JS_KEY_TYPES: &str = r#"
const { Worker } = require(process.env.SNAKEPIT_NODE_BRIDGE);
new Worker({ commands: {
  key_types(a) { return Object.keys(a.m).map((k) => [typeof k, String(k)]); },
} }).run();
"#;

const RB_KEY_TYPES: &str = r#"
require "snakepit_bridge"
w = SnakepitBridge::Worker.new
w.command("key_types") { |a| a["m"].keys.map { |k| [k.class.name, k.to_s] } }
w.run
"#;

/// docs/protocol.md section 3: "Under MessagePack, the keys of a map inside
/// the data (`args`, ...) are what the caller's data has: the host writes a
/// typed `HashMap<u32, _>` with integer keys (JSON writes them as strings,
/// `"1"`) ... Every bridge accepts such keys: Python and Ruby keep them as
/// they are (`1`, ...); Node.js objects have only string keys, so a number
/// becomes its decimal text".
///
/// The test makes a typed call whose arguments hold `{"m": {7: "a"}}` (a
/// `HashMap<u32, _>`) to a Python, a Ruby and a Node.js worker that each
/// answer the type and text of every key of `m` as the handler sees it:
/// under MessagePack an integer 7 in Python and Ruby and the string "7" in
/// Node.js; under JSON the string "7" everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_map_with_integer_keys_reaches_each_bridge_as_protocol_md_says() {
    let cases = [
        (Lang::Python, PY_KEYS, WireCodec::MsgPack, "int"),
        (Lang::Python, PY_KEYS, WireCodec::Json, "str"),
        (Lang::Ruby, RB_KEY_TYPES, WireCodec::MsgPack, "Integer"),
        (Lang::Ruby, RB_KEY_TYPES, WireCodec::Json, "String"),
        (Lang::Node, JS_KEY_TYPES, WireCodec::MsgPack, "string"),
        (Lang::Node, JS_KEY_TYPES, WireCodec::Json, "string"),
    ];
    for (lang, script, codec, kind) in cases {
        let pool = builder(Inline {
            lang,
            script,
            codec,
        })
        .size(1)
        .start()
        .await
        .unwrap_or_else(|e| panic!("{lang:?} {codec}: {e}"));
        let args = Keyed {
            m: HashMap::from([(7, "a")]),
        };
        let seen: Value = pool
            .call("key_types", &args, CallOptions::new())
            .await
            .unwrap_or_else(|e| panic!("{lang:?} {codec}: {e}"));
        assert_eq!(seen, json!([[kind, "7"]]), "{lang:?} {codec}");
        pool.shutdown().await.unwrap();
    }
}

/// docs/protocol.md section 3: "Keys may also be `bin`, booleans or nil ...
/// a host call's arguments are read with the keys JSON would have (`"1"`,
/// `"true"`, `"null"`, the text of a `bin` key that is UTF-8)."
///
/// A Python worker under MessagePack calls the host function `args_back`
/// with `{2: "a", True: "b", None: "c", b"k": "d"}`; the host function
/// returns the arguments it was given, which the worker returns as its
/// result. The test checks that the host saw the keys `"2"`, `"true"`,
/// `"null"` and `"k"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_call_arguments_keyed_by_integers_booleans_nil_and_bin_get_json_keys() {
    let pool = python_msgpack_pool().await;
    let r = pool
        .execute("odd_keys", json!({}))
        .await
        .expect("the host call and the call succeed");
    assert_eq!(r, json!({"2": "a", "true": "b", "null": "c", "k": "d"}));
    pool.shutdown().await.unwrap();
}

/// One bundled bridge's worker, driven frame by frame in MessagePack.
struct Frames {
    _p: RawProcess,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
}

impl Frames {
    async fn spawn(lang: Lang, script: &'static str) -> Frames {
        let launch = Inline {
            lang,
            script,
            codec: WireCodec::MsgPack,
        }
        .launch();
        let mut p = RawProcess::spawn(launch, WireCodec::MsgPack)
            .await
            .expect("the worker starts");
        let stdin = p.take_stdin().expect("stdin");
        let stdout = p.take_stdout().expect("stdout");
        Frames {
            _p: p,
            stdin,
            stdout,
        }
    }

    /// Sends `{"id": id, "command": command, "args": <args>, "timestamp":
    /// ...}`, `args` given as MessagePack bytes.
    async fn request(&mut self, id: u8, command: &str, args: &[u8]) {
        assert!(id < 128 && command.len() < 32);
        let mut payload = vec![0x84];
        fixstr(&mut payload, "id");
        payload.push(id);
        fixstr(&mut payload, "command");
        fixstr(&mut payload, command);
        fixstr(&mut payload, "args");
        payload.extend_from_slice(args);
        fixstr(&mut payload, "timestamp");
        fixstr(&mut payload, "2026-12-02T00:00:00.000000Z");
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend(payload);
        self.stdin.write_all(&frame).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The next response's id, success and payload (hellos and chunks are
    /// passed over).
    async fn response(&mut self) -> (u64, bool, Vec<u8>) {
        loop {
            let mut head = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(20), self.stdout.read_exact(&mut head))
                .await
                .expect("a frame within 20 s")
                .expect("a frame, not the end of stdout");
            let mut payload = vec![0u8; u32::from_be_bytes(head) as usize];
            self.stdout.read_exact(&mut payload).await.unwrap();
            if let Inbound::Response { id, success } =
                decode_inbound(&MsgPack, &payload).expect("a frame the pool can route")
            {
                return (id, success, payload);
            }
        }
    }
}

fn fixstr(out: &mut Vec<u8>, s: &str) {
    out.push(0xa0 | s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// `{"x": <fixext 2, type 5, data "ab">}`.
const EXT_ARGS: &[u8] = &[0x81, 0xa1, b'x', 0xd5, 0x05, b'a', b'b'];
const EXT_ON_THE_WIRE: &[u8] = &[0xd5, 0x05, b'a', b'b'];

const JS_EXT: &str = r#"
const { Worker } = require(process.env.SNAKEPIT_NODE_BRIDGE);
new Worker({ commands: {
  back(args) { return { x: args.x }; },
  kind(args) {
    const x = args.x;
    return { cls: x && x.constructor && x.constructor.name, type: x && x.type,
             data: x && x.data ? Buffer.from(x.data).toString('hex') : null };
  },
} }).run();
"#;

const RB_EXT: &str = r#"
require "snakepit_bridge"
w = SnakepitBridge::Worker.new
w.command("back") { |a| { "x" => a["x"] } }
w.command("kind") { |a| x = a["x"]; { "cls" => x.class.name, "type" => x.type, "data" => x.payload.unpack1("H*") } }
w.run
"#;

/// docs/protocol.md section 3: "MessagePack `ext` values reach handlers as
/// the library's own type and are written back as the same `ext`: ...
/// `ExtData` in Node.js, `MessagePack::ExtensionValue` (a struct of `type`
/// and `payload`) in Ruby." (The Python bridge's own suite shows Python.)
///
/// For Node.js and Ruby the test sends, over the worker's stdin, a request
/// whose `args` hold `{"x": ext(5, "ab")}`: to `kind`, whose handler tells
/// the class, type and data it got, and to `back`, which returns the value
/// as it is. It checks the class name, type 5 and data "ab" (hex 6162), and that the
/// reply of `back` succeeds and carries the same `ext` bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ext_values_reach_node_and_ruby_handlers_as_the_librarys_type_and_go_back_as_ext() {
    for (lang, script, class) in [
        (Lang::Node, JS_EXT, "ExtData"),
        (Lang::Ruby, RB_EXT, "MessagePack::ExtensionValue"),
    ] {
        let mut w = Frames::spawn(lang, script).await;
        w.request(1, "kind", EXT_ARGS).await;
        let (id, success, payload) = w.response().await;
        let seen: Result<Value, _> = decode_response(&MsgPack, &payload).unwrap();
        assert_eq!((id, success), (1, true), "{lang:?}: {seen:?}");
        assert_eq!(
            seen.unwrap(),
            json!({"cls": class, "type": 5, "data": "6162"}),
            "{lang:?}"
        );

        w.request(2, "back", EXT_ARGS).await;
        let (id, success, payload) = w.response().await;
        assert_eq!((id, success), (2, true), "{lang:?}");
        assert!(
            payload
                .windows(EXT_ON_THE_WIRE.len())
                .any(|b| b == EXT_ON_THE_WIRE),
            "{lang:?}: the reply does not carry ext(5, \"ab\"): {payload:02x?}"
        );
    }
}

const PY_PLAIN: &str = r#"
import snakepit_bridge
w = snakepit_bridge.Worker()
w.register("ok", lambda a: {"ok": True})
w.run()
"#;

const JS_PLAIN: &str = r#"
const { Worker } = require(process.env.SNAKEPIT_NODE_BRIDGE);
new Worker({ commands: { ok() { return { ok: true }; } } }).run();
"#;

/// docs/protocol.md section 3: "A map or array used as a key is refused by
/// the Python and Node.js bridges as a frame they cannot decode", and
/// section 4: such a frame gets "a failed `response` with `id` 0 and error
/// type `ProtocolError`", after which the worker "keeps serving".
///
/// The test sends a Python and a Node.js worker a request whose `args` are
/// `{"m": {{"k": 1}: "v"}}` and then one whose `args` are `{"m": {[1]:
/// "v"}}`, and checks that each gets a failed reply under id 0 of type
/// `ProtocolError`, and that a plain request after them is answered under
/// its own id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_or_array_as_a_key_is_a_protocol_error_for_python_and_node() {
    let map_key: &[u8] = &[0x81, 0xa1, b'm', 0x81, 0x81, 0xa1, b'k', 0x01, 0xa1, b'v'];
    let array_key: &[u8] = &[0x81, 0xa1, b'm', 0x81, 0x91, 0x01, 0xa1, b'v'];
    for (lang, script) in [(Lang::Python, PY_PLAIN), (Lang::Node, JS_PLAIN)] {
        let mut w = Frames::spawn(lang, script).await;
        for (n, args) in [(1, map_key), (2, array_key)] {
            w.request(n, "ok", args).await;
            let (id, success, payload) = w.response().await;
            let error = decode_response::<_, Value>(&MsgPack, &payload)
                .unwrap()
                .expect_err("a failed reply");
            assert_eq!((id, success), (0, false), "{lang:?} frame {n}: {error:?}");
            assert_eq!(
                error.kind.as_deref(),
                Some("ProtocolError"),
                "{lang:?} frame {n}: {error:?}"
            );
        }
        w.request(3, "ok", &[0x80]).await;
        let (id, success, _) = w.response().await;
        assert_eq!((id, success), (3, true), "{lang:?} serves on");
    }
}
