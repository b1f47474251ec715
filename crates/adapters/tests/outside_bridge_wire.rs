//! An outside tester's audit of the three bundled bridges (Python, Node.js,
//! Ruby) at the wire, with hostile frames: docs/protocol.md section 4
//! ("Frames a worker cannot use", the request table, `cancel`), section 2
//! (framing, the 64 MiB limit), section 3 (codecs), section 6 (shutdown),
//! and docs/bridges.md ("Writing a bridge for a new language", "Concurrency
//! and cancellation").
//!
//! No pool: the test is the host. Each worker is a script of the bundled
//! bridge, launched as the `snakepit_adapters::Bridge` adapters launch it
//! (the embedded bridge files, the interpreter, the module path) but with
//! the script given inline, and started with `RawProcess`; the test writes
//! raw frames to its stdin and reads its stdout.
//!
//! What `crates/core/tests/bridge_promises.rs` already shows (an empty
//! frame, `{not json`, `\xc1\xc1`, invalid UTF-8, an array payload, an
//! unknown `type`, no command, no id, ids 0, -4, "9" and 1.5, a cancel for
//! an idle id) is not repeated here; this file covers the other hostile
//! ids, other payloads that are not one map, the order of replies to frames
//! written ahead, duplicate ids and cancels around running calls, the end
//! of stdin inside a frame with a call running, the 64 MiB boundary, and a
//! frame dribbled in one byte at a time.

mod raw_frames;

use raw_frames::{encode, frame, Peer, LIMIT};
use std::time::Duration;

use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{Adapter, Launch, WireCodec};
use snakepit_tests::{eventually, python};

const CODECS: [WireCodec; 2] = [WireCodec::Json, WireCodec::MsgPack];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lang {
    Python,
    Node,
    Ruby,
}

const ALL: [Lang; 3] = [Lang::Python, Lang::Node, Lang::Ruby];

/// `echo` answers its arguments; `sleep` waits `ms` milliseconds first (in
/// Node.js without blocking the thread, so other calls run meanwhile).
const PY: &str = r#"
import time, snakepit_bridge
w = snakepit_bridge.Worker()
@w.command("echo")
def echo(args):
    return {"echoed": args}
@w.command("sleep")
def sleep(args):
    time.sleep(args.get("ms", 0) / 1000.0)
    return {"slept": args.get("ms", 0)}
w.run()
"#;

const JS: &str = r#"
const { Worker } = require('snakepit-bridge');
new Worker({ commands: {
  echo(args) { return { echoed: args }; },
  sleep(args) {
    const ms = args.ms || 0;
    return new Promise((resolve) => setTimeout(() => resolve({ slept: ms }), ms));
  },
} }).run();
"#;

const RB: &str = r#"
require "snakepit_bridge"
w = SnakepitBridge::Worker.new
w.command("echo") { |a, _ctx| { "echoed" => a } }
w.command("sleep") { |a, _ctx| sleep((a["ms"] || 0) / 1000.0); { "slept" => a["ms"] || 0 } }
w.run
"#;

/// The MessagePack package the Node bridge's tests installed (`npm ci`).
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

/// A request map whose `id` is given as its encoded bytes (JSON text or a
/// MessagePack value), so that a float id can be written as a float.
fn request_with_raw_id(codec: WireCodec, id: &[u8]) -> Vec<u8> {
    match codec {
        WireCodec::MsgPack => {
            let mut out = vec![0x83, 0xa2, b'i', b'd'];
            out.extend_from_slice(id);
            out.extend_from_slice(b"\xa7command\xa4echo\xa4args\x80");
            out
        }
        _ => {
            let mut out = b"{\"id\":".to_vec();
            out.extend_from_slice(id);
            out.extend_from_slice(b",\"command\":\"echo\",\"args\":{}}");
            out
        }
    }
}

fn request(id: u64, command: &str, args: Value) -> Value {
    json!({"id": id, "command": command, "args": args, "timestamp": "2026-12-03T00:00:00.000000Z"})
}

/// `(id, error type)` of a failed reply; panics on anything else.
fn failure(reply: &Value) -> (u64, String) {
    assert_eq!(reply["success"], false, "a failed reply: {reply}");
    let kind = reply["error"]["type"]
        .as_str()
        .unwrap_or_else(|| panic!("an error map with a type: {reply}"));
    let id = reply["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("an integer id: {reply}"));
    (id, kind.to_owned())
}

impl Peer {
    /// Starts `lang`'s worker and reads its `hello`.
    async fn start(lang: Lang, codec: WireCodec) -> Peer {
        Peer::spawn(launch(lang), codec, format!("{lang:?}/{codec:?}")).await
    }

    /// Sends `echo` under `id` and checks that the very next frame is its
    /// successful reply: the worker still serves, and nothing was left
    /// unsaid for the frames before it.
    async fn serves(&mut self, id: u64, after: &str) {
        let args = json!({"n": id});
        self.send(&request(id, "echo", args.clone())).await;
        let reply = self.recv().await;
        assert_eq!(
            (&reply["id"], &reply["success"], &reply["result"]["echoed"]),
            (&json!(id), &json!(true), &args),
            "{}: after {after}, the next frame is the next call's reply",
            self.what
        );
    }
}

/// protocol.md section 4, the request table: "`id` | integer > 0 | yes";
/// "A request missing a field or with a wrong type ...: a failed reply of
/// type `InvalidRequest` under the request's `id` when it has one (an
/// integer > 0), otherwise under `id` 0"; and the worker keeps serving.
/// bridges.md step 7: "with id 0 when the id itself is unusable".
///
/// Ids `bridge_promises.rs` does not send: null, booleans, an array, a map,
/// -1, `i64::MIN`, a number too large for a float (`1e400`, JSON), `-0`
/// (JSON), a `bin` holding "7" (MessagePack), and (again) none at all. Each must be
/// answered `InvalidRequest` under id 0 and never run, and the next call
/// must be answered next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_are_not_integers_above_0_are_invalid_requests_under_id_0() {
    for lang in ALL {
        for codec in CODECS {
            let mut peer = Peer::start(lang, codec).await;
            let w = peer.what.clone();
            let mut bad: Vec<(String, Vec<u8>)> = [
                json!(null),
                json!(true),
                json!(false),
                json!([7]),
                json!({"id": 7}),
                json!(-1),
                json!(i64::MIN),
            ]
            .into_iter()
            .map(|id| {
                let frame = encode(codec, &json!({"id": id, "command": "echo", "args": {}}));
                (format!("id {id}"), frame)
            })
            .collect();
            bad.push((
                "no id".into(),
                encode(codec, &json!({"command": "echo", "args": {}})),
            ));
            let raw: &[(&str, &[u8])] = match codec {
                WireCodec::MsgPack => &[("id bin \"7\"", b"\xc4\x017")],
                _ => &[("id 1e400", b"1e400"), ("id -0", b"-0")],
            };
            for (what, id) in raw {
                bad.push(((*what).into(), request_with_raw_id(codec, id)));
            }
            for (n, (what, payload)) in bad.iter().enumerate() {
                peer.send_payload(payload).await;
                let reply = peer.recv().await;
                assert_eq!(
                    failure(&reply),
                    (0, "InvalidRequest".to_owned()),
                    "{w}: {what}: {reply}"
                );
                peer.serves(100 + n as u64, what).await;
            }
            let (rest, code) = peer.finish().await;
            assert_eq!((rest, code), (vec![], Some(0)), "{w}");
        }
    }
}

/// The ids of an integral float: JSON `7.0`, `7e0`, `7.0e0`; MessagePack
/// float 64 and float 32 holding 7.
fn integral_float_ids(codec: WireCodec) -> Vec<(&'static str, Vec<u8>)> {
    match codec {
        WireCodec::MsgPack => vec![
            ("float 64 7.0", [&[0xcb][..], &7f64.to_be_bytes()].concat()),
            ("float 32 7.0", [&[0xca][..], &7f32.to_be_bytes()].concat()),
        ],
        _ => vec![
            ("7.0", b"7.0".to_vec()),
            ("7e0", b"7e0".to_vec()),
            ("7.0e0", b"7.0e0".to_vec()),
        ],
    }
}

/// protocol.md section 4: "`id` | integer > 0"; a request "with a wrong
/// type" gets "a failed reply of type `InvalidRequest` ... under `id` 0"
/// when it has no usable id. A float is not an integer even when it is
/// integral: MessagePack types it as a float, and the pool's own reader
/// (serde_json) reads JSON `7.0` as a float, not an id. Python and Ruby
/// refuse such ids in both codecs; the next call is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_ruby_refuse_an_integral_float_id_as_an_invalid_request() {
    for lang in [Lang::Python, Lang::Ruby] {
        for codec in CODECS {
            let mut peer = Peer::start(lang, codec).await;
            let w = peer.what.clone();
            for (n, (what, id)) in integral_float_ids(codec).into_iter().enumerate() {
                peer.send_payload(&request_with_raw_id(codec, &id)).await;
                let reply = peer.recv().await;
                assert_eq!(
                    failure(&reply),
                    (0, "InvalidRequest".to_owned()),
                    "{w}: id {what}: {reply}"
                );
                peer.serves(100 + n as u64, what).await;
            }
        }
    }
}

/// protocol.md section 4: "The Node.js bridge reads numbers as JavaScript
/// does: an id written as an integral float (`7.0` in JSON, a MessagePack
/// float 7.0) is the integer 7 to it". Such a request is served under the
/// integer id (never a float in the reply), and the next call is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_takes_an_integral_float_id_as_the_integer_and_replies_under_it() {
    for codec in CODECS {
        let mut peer = Peer::start(Lang::Node, codec).await;
        for (n, (what, id)) in integral_float_ids(codec).into_iter().enumerate() {
            peer.send_payload(&request_with_raw_id(codec, &id)).await;
            let reply = peer.recv().await;
            assert_eq!(
                (reply["id"].as_u64(), &reply["success"]),
                (Some(7), &json!(true)),
                "Node/{codec:?}: id {what}: {reply}"
            );
            peer.serves(100 + n as u64, what).await;
        }
    }
}

/// Ids above 2^53 (where a 64-bit float stops holding every integer) up to
/// the largest the protocol carries (2^64 - 1).
const LARGE_IDS: [u64; 5] = [
    (1 << 53) - 1,
    (1 << 53) + 1,
    (1 << 63) - 1,
    1 << 63,
    u64::MAX,
];

/// Sends `echo` under each of [`LARGE_IDS`] and returns `(id sent, reply)`.
async fn large_id_replies(peer: &mut Peer) -> Vec<(u64, Value)> {
    let mut out = Vec::new();
    for id in LARGE_IDS {
        peer.send(&request(id, "echo", json!({}))).await;
        out.push((id, peer.recv().await));
        peer.serves(7, &format!("id {id}")).await;
    }
    out
}

/// protocol.md section 4: "`id` | integer > 0 | yes | unique per pool at
/// any moment; echoed in the reply"; section 5: a response's "`id` |
/// integer | yes | the request's id"; section 3: "Integers go through whole
/// from -2^63 to 2^64 - 1". Python and Ruby echo every id up to 2^64 - 1
/// exactly, as an integer, in both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_ruby_echo_ids_up_to_2_pow_64_minus_1_exactly() {
    for lang in [Lang::Python, Lang::Ruby] {
        for codec in CODECS {
            let mut peer = Peer::start(lang, codec).await;
            let w = peer.what.clone();
            for (id, reply) in large_id_replies(&mut peer).await {
                assert_eq!(
                    (reply["id"].as_u64(), &reply["success"]),
                    (Some(id), &json!(true)),
                    "{w}: id {id}: {reply}"
                );
            }
        }
    }
}

/// The same for Node.js, whose numbers are 64-bit floats. A bridge that
/// cannot hold an id must not answer under another one: either the reply
/// carries the request's id exactly, as an integer, or the request is
/// refused `InvalidRequest` under id 0 (section 4: "under `id` 0" when the
/// request has no usable id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_never_answers_a_large_id_under_another_id() {
    let mut wrong = Vec::new();
    for codec in CODECS {
        let mut peer = Peer::start(Lang::Node, codec).await;
        for (id, reply) in large_id_replies(&mut peer).await {
            let exact = reply["id"].as_u64() == Some(id);
            let refused = reply["id"].as_u64() == Some(0)
                && reply["success"] == false
                && reply["error"]["type"] == "InvalidRequest";
            if !(exact || refused) {
                wrong.push(format!("{codec:?}: id {id} answered under {}", reply["id"]));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// protocol.md section 4, "Not a usable frame": "a payload that does not
/// decode (not JSON or MessagePack, ...), a payload that is not a map, or a
/// `type` the worker does not know. Reply a failed `response` with `id` 0
/// and error type `ProtocolError`"; the worker "keeps serving". Section 3:
/// "one value per frame"; bridges.md step 2: "a payload that does not
/// decode to a map: `ProtocolError` with id 0, go on".
///
/// Payloads of every other kind than a map (a string, numbers, null, a
/// boolean, `bin`, `ext`), a request wrapped in an array, two requests or a
/// request and junk in one frame, a JSON text behind a byte-order mark, a
/// MessagePack map cut short, and maps whose `type` is a frame of the other
/// direction or not a string. None may be served as a request (each
/// smuggles a valid request for id 3): each is answered `ProtocolError`
/// under id 0, and the next call is answered next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_that_are_not_one_usable_map_are_protocol_errors_and_the_worker_serves_on() {
    for lang in ALL {
        for codec in CODECS {
            let mut peer = Peer::start(lang, codec).await;
            let w = peer.what.clone();
            let good = encode(codec, &request(3, "echo", json!({})));
            let mut cases: Vec<(String, Vec<u8>)> = [
                json!("a string"),
                json!(42),
                json!(-1.5),
                json!(null),
                json!(true),
                json!([request(3, "echo", json!({}))]),
            ]
            .iter()
            .map(|v| (format!("payload {v}"), encode(codec, v)))
            .collect();
            for t in [
                json!("response"),
                json!("hello"),
                json!("chunk"),
                json!("host_call"),
                json!("Request"),
                json!(5),
                json!(true),
                json!(["request"]),
            ] {
                let msg =
                    json!({"type": t, "id": 3, "command": "echo", "args": {}, "success": true});
                cases.push((format!("type {t}"), encode(codec, &msg)));
            }
            cases.push(("two requests".into(), [&good[..], &good[..]].concat()));
            cases.push(("a request and junk".into(), [&good[..], b"x"].concat()));
            match codec {
                WireCodec::MsgPack => {
                    cases.push(("bin".into(), b"\xc4\x03abc".to_vec()));
                    cases.push(("ext".into(), b"\xd5\x05ab".to_vec()));
                    cases.push(("a map cut short".into(), b"\x83\xa2id\x03".to_vec()));
                }
                _ => cases.push((
                    "a byte-order mark".into(),
                    [&b"\xef\xbb\xbf"[..], &good].concat(),
                )),
            }
            for (n, (what, payload)) in cases.iter().enumerate() {
                peer.send_payload(payload).await;
                let reply = peer.recv().await;
                assert_eq!(
                    failure(&reply),
                    (0, "ProtocolError".to_owned()),
                    "{w}: {what}: {reply}"
                );
                peer.serves(100 + n as u64, what).await;
            }
            let (rest, code) = peer.finish().await;
            assert_eq!((rest, code), (vec![], Some(0)), "{w}");
        }
    }
}

/// A JSON request whose command is `"\ud800x"`: valid JSON text (an
/// escape), whose string has no UTF-8 form.
const LONE_SURROGATE_COMMAND: &[u8] = br#"{"id":5,"command":"\ud800x","args":{}}"#;

/// protocol.md section 5: `UnknownCommand` is the error "when no handler is
/// registered for the command"; the worker keeps serving. A command name
/// holding half a surrogate pair has no handler. Python answers it
/// `UnknownCommand` under its id. Ruby's JSON parser refuses the text
/// ("incomplete surrogate pair"), which section 4 answers as a payload that
/// does not decode: `ProtocolError` under id 0 (RFC 8259 section 8.2 leaves
/// such strings to the reader). Either way the next call is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_ruby_answer_a_command_with_a_lone_surrogate_as_unknown_or_undecodable() {
    for lang in [Lang::Python, Lang::Ruby] {
        let mut peer = Peer::start(lang, WireCodec::Json).await;
        peer.send_payload(LONE_SURROGATE_COMMAND).await;
        let reply = peer.recv().await;
        let expected = match lang {
            Lang::Ruby => (0, "ProtocolError".to_owned()),
            _ => (5, "UnknownCommand".to_owned()),
        };
        assert_eq!(failure(&reply), expected, "{lang:?}: {reply}");
        peer.serves(6, "a lone surrogate").await;
    }
}

/// bridges/node/README.md, Errors: "The bridge's own replies use the
/// protocol's types: `UnknownCommand`, ..." and "In an error's `type`,
/// `message` and `traceback`, half a surrogate pair becomes U+FFFD."
/// protocol.md section 5: `UnknownCommand` when "no handler is registered
/// for the command".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_answers_a_command_with_a_lone_surrogate_as_unknown_command() {
    let mut peer = Peer::start(Lang::Node, WireCodec::Json).await;
    peer.send_payload(LONE_SURROGATE_COMMAND).await;
    let reply = peer.recv().await;
    assert_eq!(failure(&reply), (5, "UnknownCommand".to_owned()), "{reply}");
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("\u{fffd}x"), "{reply}");
    peer.serves(6, "a lone surrogate").await;
}

/// bridges.md, Concurrency and cancellation: the workers that run one call
/// at a time "read ahead, so ... the pool writes the next ones into their
/// stdin before the running one ends ..., and they run in the order sent";
/// bridges/ruby/README.md: "They run in the order they were sent."
/// Requests that are malformed are requests too: written ahead behind a
/// running call, each is answered (`InvalidRequest`, `UnknownCommand`) in
/// its place, between the replies of the calls around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_workers_answer_requests_written_ahead_in_the_order_sent_malformed_or_not() {
    for lang in [Lang::Python, Lang::Ruby] {
        for codec in CODECS {
            let mut peer = Peer::start(lang, codec).await;
            let w = peer.what.clone();
            let frames = [
                request(1, "sleep", json!({"ms": 150})),
                json!({"id": 2, "args": {}}),
                json!({"id": 0, "command": "echo", "args": {}}),
                json!({"id": 3, "command": "no_such_command", "args": {}}),
                json!({"id": 4, "command": "echo", "args": [1]}),
                json!({"id": null, "command": "echo", "args": {}}),
                request(5, "echo", json!({"last": true})),
            ];
            let bytes: Vec<u8> = frames
                .iter()
                .flat_map(|f| frame(&encode(codec, f)))
                .collect();
            peer.write(&bytes).await;
            let mut got = Vec::new();
            for _ in 0..frames.len() {
                let r = peer.recv().await;
                let kind = r["error"]["type"].as_str().unwrap_or("ok").to_owned();
                got.push((r["id"].as_u64(), kind));
            }
            let want: Vec<(Option<u64>, String)> = [
                (1, "ok"),
                (2, "InvalidRequest"),
                (0, "InvalidRequest"),
                (3, "UnknownCommand"),
                (4, "InvalidRequest"),
                (0, "InvalidRequest"),
                (5, "ok"),
            ]
            .iter()
            .map(|(id, k)| (Some(*id), (*k).to_owned()))
            .collect();
            assert_eq!(got, want, "{w}");
        }
    }
}

/// protocol.md section 4: each unusable frame gets "a failed `response`
/// with `id` 0 and error type `ProtocolError`", the worker "keeps serving
/// after" it, and every request gets "exactly one final `response`" (the
/// `cancel` paragraph; bridges.md step 6: "Answer each request with exactly
/// one `response` carrying its id"). Written ahead in one go behind a
/// running call: an undecodable payload, an empty frame, a payload that is
/// not a map and an unknown `type`, between three calls. Each call is
/// answered once and successfully, each bad frame with one `ProtocolError`,
/// and nothing else is written; the one-call-at-a-time workers (Python,
/// Ruby) answer the calls in the order sent.
///
/// The docs promise no order between a `ProtocolError` and the replies of
/// calls written before the bad frame (the pool routes replies by id, and
/// takes any reply under id 0 for a stream out of step), so none is
/// asserted: Python answers in the order read, Ruby answers undecodable
/// frames as it reads them ahead (before the running call's reply), Node.js
/// answers them at once, while its calls still run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_frames_written_ahead_among_calls_cost_no_call_its_reply() {
    for lang in ALL {
        for codec in CODECS {
            let mut peer = Peer::start(lang, codec).await;
            let w = peer.what.clone();
            let undecodable: &[u8] = match codec {
                WireCodec::MsgPack => b"\xc1",
                _ => b"{\"id\":9,",
            };
            let payloads = [
                encode(codec, &request(1, "sleep", json!({"ms": 150}))),
                undecodable.to_vec(),
                encode(codec, &request(2, "echo", json!({"n": 2}))),
                Vec::new(),
                encode(codec, &json!([1])),
                encode(codec, &json!({"type": "bogus", "id": 9})),
                encode(codec, &request(3, "echo", json!({"n": 3}))),
            ];
            let bytes: Vec<u8> = payloads.iter().flat_map(|p| frame(p)).collect();
            peer.write(&bytes).await;
            let mut calls = Vec::new();
            let mut errors = 0;
            for _ in 0..payloads.len() {
                let r = peer.recv().await;
                if r["id"] == 0 {
                    assert_eq!(failure(&r), (0, "ProtocolError".to_owned()), "{w}: {r}");
                    errors += 1;
                } else {
                    assert_eq!(r["success"], true, "{w}: {r}");
                    calls.push(r["id"].as_u64().unwrap());
                }
            }
            assert_eq!(errors, 4, "{w}: one ProtocolError per bad frame");
            if lang == Lang::Node {
                calls.sort_unstable();
            }
            assert_eq!(calls, vec![1, 2, 3], "{w}: each call answered once");
            peer.serves(4, "the bad frames").await;
        }
    }
}

/// protocol.md section 4: "A request whose `id` is already running on this
/// worker: the worker may drop it with a line on stderr; it must not start
/// a second handler under the same id while the first runs. A worker that
/// runs one call at a time takes up the next request only once the one
/// before it has replied, and cannot tell a request sent too early under
/// that id from one sent after the reply: it runs it as a new request, with
/// a reply of its own."
///
/// Under MessagePack (JSON is shown for Python and Ruby in
/// `crates/core/tests/audit_bridges_protocol.rs`): `sleep` under id 7, then
/// `echo` under id 7 and `echo` under id 8, in one write. Python and Ruby
/// answer 7 (the sleep), 7 (the echo, run after), 8. Node.js, which runs
/// calls at once, drops the second 7 with a line on stderr naming it:
/// exactly one reply under 7, the sleep's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_under_a_running_id_never_runs_beside_it() {
    for lang in ALL {
        let codec = WireCodec::MsgPack;
        let mut peer = Peer::start(lang, codec).await;
        let w = peer.what.clone();
        let bytes: Vec<u8> = [
            request(7, "sleep", json!({"ms": 200})),
            request(7, "echo", json!({"second": true})),
            request(8, "echo", json!({})),
        ]
        .iter()
        .flat_map(|f| frame(&encode(codec, f)))
        .collect();
        peer.write(&bytes).await;
        let mut got = Vec::new();
        let expected = if lang == Lang::Node { 2 } else { 3 };
        for _ in 0..expected {
            let r = peer.recv().await;
            assert_eq!(r["success"], true, "{w}: {r}");
            let what = if r["result"]["slept"] == 200 {
                "slept"
            } else {
                "echoed"
            };
            got.push((r["id"].as_u64().unwrap(), what));
        }
        if lang == Lang::Node {
            assert_eq!(got, vec![(8, "echoed"), (7, "slept")], "{w}");
            // "with a line on stderr": one naming the id.
            let names_7 = |text: String| {
                text.lines()
                    .any(|l| l.split(|c: char| !c.is_ascii_digit()).any(|t| t == "7"))
            };
            let stderr = peer.stderr.clone();
            let logged = eventually(10, || {
                names_7(String::from_utf8_lossy(&stderr.lock().unwrap()).into_owned())
            })
            .await;
            assert!(logged, "{w}: a line on stderr: {}", peer.stderr());
        } else {
            assert_eq!(got, vec![(7, "slept"), (7, "echoed"), (8, "echoed")], "{w}");
        }
        // Nothing more under 7: the next frame is the next call's reply.
        peer.serves(9, "the duplicate").await;
    }
}

/// protocol.md section 4, `cancel`: "A `cancel` for an id that is not
/// running (its reply has been sent) is ignored"; the request it does not
/// name is not disturbed, and "exactly one final `response`" per request.
///
/// While `sleep` runs under id 1: cancels for an id never used, for 0 and
/// for -1, and malformed ones (an id that is a string "1", a null id, no
/// id). After its reply: a cancel for 1 (finished), and a cancel for 3
/// followed by request 3 (not running when the cancel came). Request 1
/// completes with its result (not `Cancelled`), 3 and 4 are served, and
/// nothing else is written but, for a malformed cancel, at most a failed
/// reply under id 0 (the docs do not say how to answer a cancel without a
/// usable id: Python answers `ProtocolError`, Node.js and Ruby ignore it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_for_ids_not_running_are_ignored_and_disturb_no_call() {
    for lang in ALL {
        for codec in CODECS {
            let mut peer = Peer::start(lang, codec).await;
            let w = peer.what.clone();
            let malformed = [
                json!({"type": "cancel", "id": "1"}),
                json!({"type": "cancel", "id": null}),
                json!({"type": "cancel"}),
            ];
            let mut first = vec![
                request(1, "sleep", json!({"ms": 150})),
                json!({"type": "cancel", "id": 99}),
                json!({"type": "cancel", "id": 0}),
                json!({"type": "cancel", "id": -1}),
            ];
            first.extend(malformed.iter().cloned());
            let bytes: Vec<u8> = first
                .iter()
                .flat_map(|f| frame(&encode(codec, f)))
                .collect();
            peer.write(&bytes).await;
            let mut frames = Vec::new();
            loop {
                let r = peer.recv().await;
                let done = r["id"] == 1;
                frames.push(r);
                if done {
                    break;
                }
            }
            let then = [
                json!({"type": "cancel", "id": 1}),
                json!({"type": "cancel", "id": 3}),
                request(3, "echo", json!({"n": 3})),
                request(4, "echo", json!({"n": 4})),
            ];
            let bytes: Vec<u8> = then.iter().flat_map(|f| frame(&encode(codec, f))).collect();
            peer.write(&bytes).await;
            loop {
                let r = peer.recv().await;
                let done = r["id"] == 4;
                frames.push(r);
                if done {
                    break;
                }
            }
            let mut answered = Vec::new();
            let mut id_0 = 0;
            for r in &frames {
                if r["id"] == 0 {
                    let (_, kind) = failure(r);
                    assert!(
                        kind == "ProtocolError" || kind == "InvalidRequest",
                        "{w}: {r}"
                    );
                    id_0 += 1;
                } else {
                    assert_eq!(r["success"], true, "{w}: not cancelled: {r}");
                    answered.push(r["id"].as_u64().unwrap());
                }
            }
            assert_eq!(answered, vec![1, 3, 4], "{w}: {frames:?}");
            let first = frames.iter().find(|r| r["id"] == 1).unwrap();
            assert_eq!(first["result"]["slept"], 150, "{w}: {frames:?}");
            assert!(id_0 <= malformed.len(), "{w}: {frames:?}");
            peer.serves(5, "the cancels").await;
        }
    }
}

/// protocol.md section 4: "The stream ends inside a frame (in the length or
/// the payload): the worker treats it as the end of stdin (section 6,
/// Shutdown) and exits 0; it sends nothing"; section 6: "the worker
/// finishes what it is doing and exits 0 on EOF".
///
/// A `sleep` call, then the stream cut: inside a length (3 of its 4 bytes),
/// inside a payload, and inside the payload of a frame above the limit. The
/// running call is answered, then the worker exits 0 having sent nothing
/// else, but for the `ProtocolError` of the oversized frame, answered when
/// its length was read (before the end came). Codecs alternate over the
/// cuts (framing does not depend on them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_ending_inside_a_frame_ends_the_worker_with_0_after_its_running_call() {
    let too_long = u32::try_from(LIMIT + 1).unwrap().to_be_bytes();
    let cuts: [(&str, Vec<u8>); 3] = [
        ("inside a length", vec![0, 0, 0]),
        (
            "inside a payload",
            [&[0, 0, 0, 40][..], b"{\"id\":2,\"comm"].concat(),
        ),
        (
            "inside an oversized payload",
            [&too_long[..], &[0u8; 1000][..]].concat(),
        ),
    ];
    for lang in ALL {
        for (n, (what, cut)) in cuts.iter().enumerate() {
            let codec = CODECS[n % 2];
            let mut peer = Peer::start(lang, codec).await;
            let w = format!("{}: {what}", peer.what);
            let mut bytes = frame(&encode(codec, &request(1, "sleep", json!({"ms": 100}))));
            bytes.extend_from_slice(cut);
            peer.write(&bytes).await;
            let (frames, code) = peer.finish().await;
            let mut calls = 0;
            for r in &frames {
                if r["id"] == 1 {
                    assert_eq!(r["result"]["slept"], 100, "{w}: {r}");
                    calls += 1;
                } else {
                    assert!(n == 2, "{w}: sent something: {frames:?}");
                    assert_eq!(failure(r), (0, "ProtocolError".to_owned()), "{w}");
                }
            }
            assert_eq!((calls, code), (1, Some(0)), "{w}: {frames:?}");
        }
    }
}

/// protocol.md section 2: the pool's `max_frame_size` is "64 MiB by
/// default"; section 4: "a length above the worker's limit (64 MiB, the
/// pool's default `max_frame_size`)" is not a usable frame: "Reply a failed
/// `response` with `id` 0 and error type `ProtocolError`. For an oversized
/// frame, read and discard its payload without keeping it, so that the next
/// frame is read from the right place." bridges/node/README.md:
/// `maxFrameSize` "64 MiB".
///
/// A frame of exactly 64 MiB is a frame: its request (for a command no
/// handler has) is answered `UnknownCommand` under its id. One byte more is
/// refused with `ProtocolError` under id 0 and skipped whole, and the next
/// call is served. (JSON; the framing does not depend on the codec.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_of_exactly_64_mib_is_read_and_one_byte_more_is_skipped() {
    let codec = WireCodec::Json;
    // Written by hand: a 64 MiB string through serde_json takes seconds in
    // a debug build.
    let (head, tail) = (
        &br#"{"id":1,"command":"no_such_command","args":{"pad":""#[..],
        br#""}}"#,
    );
    let mut at_limit = head.to_vec();
    at_limit.resize(LIMIT - tail.len(), b'x');
    at_limit.extend_from_slice(tail);
    assert_eq!(at_limit.len(), LIMIT);
    let mut over = (u32::try_from(LIMIT + 1).unwrap()).to_be_bytes().to_vec();
    over.resize(4 + LIMIT + 1, b' ');
    for lang in ALL {
        let mut peer = Peer::start(lang, codec).await;
        let w = peer.what.clone();
        // The length, then the payload: no 64 MiB copy for the frame.
        peer.write(&(LIMIT as u32).to_be_bytes()).await;
        peer.write(&at_limit).await;
        let reply = peer.recv().await;
        assert_eq!(
            failure(&reply),
            (1, "UnknownCommand".to_owned()),
            "{w}: {reply}"
        );
        peer.write(&over).await;
        let reply = peer.recv().await;
        assert_eq!(
            failure(&reply),
            (0, "ProtocolError".to_owned()),
            "{w}: {reply}"
        );
        peer.serves(2, "an oversized frame").await;
        let (rest, code) = peer.finish().await;
        assert_eq!((rest, code), (vec![], Some(0)), "{w}");
    }
}

/// bridges.md, Writing a bridge, step 2: "Read exactly 4 bytes, a
/// big-endian unsigned length `n`, then exactly `n` bytes"; protocol.md
/// section 2: "No newline, no other framing". A pipe hands a reader what
/// has been written so far: a request, an empty frame and another request
/// dribbled in one byte at a time (two-byte characters included) are read
/// as whole frames, the empty one answered `ProtocolError` under id 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_dribbled_in_one_byte_at_a_time_are_read_whole() {
    let codec = WireCodec::Json;
    for lang in ALL {
        let mut peer = Peer::start(lang, codec).await;
        let w = peer.what.clone();
        let bytes: Vec<u8> = [
            encode(codec, &request(1, "echo", json!({"s": "ééé"}))),
            Vec::new(),
            encode(codec, &request(2, "echo", json!({}))),
        ]
        .iter()
        .flat_map(|p| frame(p))
        .collect();
        for b in bytes {
            peer.write(&[b]).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let first = peer.recv().await;
        assert_eq!(
            first["result"]["echoed"],
            json!({"s": "ééé"}),
            "{w}: {first}"
        );
        let empty = peer.recv().await;
        assert_eq!(failure(&empty), (0, "ProtocolError".to_owned()), "{w}");
        let second = peer.recv().await;
        assert_eq!(
            (&second["id"], &second["success"]),
            (&json!(2), &json!(true)),
            "{w}"
        );
    }
}
