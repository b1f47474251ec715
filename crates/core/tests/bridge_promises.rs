//! The promises of docs/protocol.md that all three bundled bridges keep the
//! same way, shown on their generic workers run as real processes outside a
//! pool, in both codecs: the hello's fields, the init ping's result, the
//! answer to each kind of frame a worker cannot use (section 4), that a
//! `cancel` or `host_reply` nobody waits for is ignored, the built-in
//! commands' results and errors (section 7), and exit 0 at EOF.

use std::path::PathBuf;
use std::time::Duration;

use bytes::BytesMut;
use serde_json::{json, Value};
use snakepit_core::{Launch, RawProcess, WireCodec};
use snakepit_protocol::Codec;
use snakepit_tests::{python, workspace_root};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, ChildStdout};

/// A guard against a worker that never answers: the test fails instead of
/// hanging. Nothing here is timed.
const STUCK: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Lang {
    Python,
    Node,
    Ruby,
}

fn bridges() -> PathBuf {
    workspace_root().join("bridges")
}

fn generic(lang: Lang) -> Launch {
    let b = bridges();
    let launch = match lang {
        Lang::Python => Launch::new(python())
            .arg("-u")
            .arg(b.join("python/generic_worker.py"))
            .env("PYTHONPATH", b.join("python")),
        Lang::Node => Launch::new("node").arg(b.join("node/generic_worker.js")),
        Lang::Ruby => Launch::new("ruby")
            .arg(format!("-I{}", b.join("ruby/lib").display()))
            .arg(b.join("ruby/generic_worker.rb")),
    };
    launch
        .arg("--mode")
        .arg("pool-worker")
        .env("SNAKEPIT_WORKER_ID", "pool_worker_7_test")
}

struct Peer {
    process: RawProcess,
    codec: WireCodec,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    what: String,
}

impl Peer {
    async fn start(lang: Lang, codec: WireCodec) -> Peer {
        let mut process = RawProcess::spawn(generic(lang), codec)
            .await
            .unwrap_or_else(|e| panic!("{lang:?} starts: {e}"));
        let stdin = process.take_stdin();
        let stdout = process.take_stdout().expect("stdout is piped");
        if let Some(mut err) = process.take_stderr() {
            // Drained so that the worker's log never fills its pipe.
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = err.read_to_end(&mut sink).await;
            });
        }
        Peer {
            process,
            codec,
            stdin,
            stdout,
            what: format!("{lang:?}/{codec:?}"),
        }
    }

    fn encode(&self, value: &Value) -> Vec<u8> {
        let mut buf = BytesMut::new();
        self.codec.encode(value, &mut buf).expect("encodes");
        buf.to_vec()
    }

    async fn send_raw(&mut self, payload: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        let len = u32::try_from(payload.len()).expect("small frame");
        stdin.write_all(&len.to_be_bytes()).await.expect("write");
        stdin.write_all(payload).await.expect("write");
        stdin.flush().await.expect("flush");
    }

    async fn send(&mut self, value: Value) {
        let payload = self.encode(&value);
        self.send_raw(&payload).await;
    }

    async fn recv(&mut self) -> Value {
        let read = async {
            let mut head = [0u8; 4];
            self.stdout.read_exact(&mut head).await?;
            let mut payload = vec![0u8; u32::from_be_bytes(head) as usize];
            self.stdout.read_exact(&mut payload).await?;
            Ok::<_, std::io::Error>(payload)
        };
        let payload = tokio::time::timeout(STUCK, read)
            .await
            .unwrap_or_else(|_| panic!("{}: no frame", self.what))
            .unwrap_or_else(|e| panic!("{}: reading a frame: {e}", self.what));
        self.codec
            .decode(&payload)
            .unwrap_or_else(|e| panic!("{}: undecodable frame: {e}", self.what))
    }

    /// Sends a request and returns the next frame, which must be its reply.
    async fn call(&mut self, id: u64, command: &str, args: Value) -> Value {
        self.send(json!({"id": id, "command": command, "args": args, "timestamp": "2026-11-27T12:24:04.051023Z"}))
            .await;
        let reply = self.recv().await;
        assert_eq!(reply["id"], id, "{}: {reply}", self.what);
        reply
    }

    /// Closes stdin and returns the exit status.
    async fn finish(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        tokio::time::timeout(STUCK, self.process.wait())
            .await
            .unwrap_or_else(|_| panic!("{}: still running after EOF", self.what))
            .expect("wait")
    }
}

fn error_of(reply: &Value) -> (u64, &str) {
    assert_eq!(reply["success"], false, "{reply}");
    let kind = reply["error"]["type"]
        .as_str()
        .unwrap_or_else(|| panic!("an error map with a type: {reply}"));
    assert!(
        reply["error"]["message"].is_string(),
        "the error has a message: {reply}"
    );
    let id = reply["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("an id that is 0 or a request's id: {reply}"));
    (id, kind)
}

const ALL: [(Lang, WireCodec); 6] = [
    (Lang::Python, WireCodec::Json),
    (Lang::Python, WireCodec::MsgPack),
    (Lang::Node, WireCodec::Json),
    (Lang::Node, WireCodec::MsgPack),
    (Lang::Ruby, WireCodec::Json),
    (Lang::Ruby, WireCodec::MsgPack),
];

#[tokio::test]
async fn every_bridge_says_hello_first_and_answers_the_init_ping() {
    for (lang, codec) in ALL {
        let mut peer = Peer::start(lang, codec).await;
        let w = peer.what.clone();
        let hello = peer.recv().await;
        assert_eq!(hello["type"], "hello", "{w}: {hello}");
        assert_eq!(hello["protocol"], 1, "{w}");
        assert_eq!(
            hello["pid"],
            peer.process.pid(),
            "{w}: the worker's own pid"
        );
        let name = match lang {
            Lang::Python => "snakepit-python/",
            Lang::Node => "snakepit-node/",
            Lang::Ruby => "snakepit-ruby/",
        };
        assert!(
            hello["bridge"]
                .as_str()
                .is_some_and(|b| b.starts_with(name)),
            "{w}: {hello}"
        );
        assert!(
            hello["runtime"].as_str().is_some_and(|r| !r.is_empty()),
            "{w}: {hello}"
        );
        let caps = &hello["capabilities"];
        assert!(
            caps["max_concurrency"].as_u64().is_some_and(|n| n >= 1),
            "{w}: {hello}"
        );
        for cap in ["streaming", "host_calls"] {
            assert_eq!(caps[cap], true, "{w}: {hello}");
        }
        for cap in ["cancel", "sigint", "pipeline"] {
            assert!(
                caps[cap].is_null() || caps[cap].is_boolean(),
                "{w}: {hello}"
            );
        }
        // Each bridge declares a way to be cancelled.
        assert!(
            caps["cancel"] == true || caps["sigint"] == true,
            "{w}: {hello}"
        );

        let ping = peer
            .call(
                1,
                "ping",
                json!({"initialization": true, "worker_id": "pool_worker_7_test"}),
            )
            .await;
        assert_eq!(ping["success"], true, "{w}: {ping}");
        let r = &ping["result"];
        assert_eq!(r["status"], "ok", "{w}: {r}");
        assert_eq!(r["pid"], peer.process.pid(), "{w}: {r}");
        assert_eq!(r["worker_id"], "pool_worker_7_test", "{w}: {r}");
        assert_eq!(r["echo"]["initialization"], true, "{w}: {r}");
        assert!(r["uptime"].is_number(), "{w}: {r}");
        assert!(r["requests_handled"].is_u64(), "{w}: {r}");
        let (bridge_type, versions): (&str, &[&str]) = match lang {
            Lang::Python => ("generic", &["python_version"]),
            Lang::Node => ("generic_javascript", &["node_version", "platform"]),
            Lang::Ruby => ("generic_ruby", &["ruby_version"]),
        };
        assert_eq!(r["bridge_type"], bridge_type, "{w}: {r}");
        for v in versions {
            assert!(r[v].is_string(), "{w}: {v} in {r}");
        }
        // Seconds since the epoch as a number, not the frames' ISO string.
        let ts = r["timestamp"]
            .as_f64()
            .unwrap_or_else(|| panic!("{w}: {r}"));
        assert!(ts > 1.7e9, "{w}: {r}");

        assert!(peer.finish().await.success(), "{w}: exit 0 at EOF");
    }
}

#[tokio::test]
async fn every_bridge_answers_frames_it_cannot_use_as_protocol_md_says_and_serves_on() {
    for (lang, codec) in ALL {
        let mut peer = Peer::start(lang, codec).await;
        let w = peer.what.clone();
        assert_eq!(peer.recv().await["type"], "hello", "{w}");

        let msgpack = codec == WireCodec::MsgPack;
        let undecodable: &[u8] = if msgpack { b"\xc1\xc1" } else { b"{not json" };
        // A map whose `command` is a string that is not UTF-8.
        let bad_utf8: &[u8] = if msgpack {
            b"\x83\xa2id\x11\xa7command\xa2\xff\xfe\xa4args\x80"
        } else {
            b"{\"id\":17,\"command\":\"ec\xff\xfeho\",\"args\":{}}"
        };
        let not_a_map = peer.encode(&json!([1, 2]));
        // (what, frame, the reply's id, its error type)
        let unusable: Vec<(&str, Vec<u8>, u64, &str)> = vec![
            ("an empty frame", Vec::new(), 0, "ProtocolError"),
            (
                "an undecodable payload",
                undecodable.to_vec(),
                0,
                "ProtocolError",
            ),
            ("invalid UTF-8", bad_utf8.to_vec(), 0, "ProtocolError"),
            ("a payload that is not a map", not_a_map, 0, "ProtocolError"),
        ];
        for (what, frame, id, kind) in unusable {
            peer.send_raw(&frame).await;
            let reply = peer.recv().await;
            assert_eq!(error_of(&reply), (id, kind), "{w}: {what}: {reply}");
        }

        let bad_requests = [
            (
                "an unknown type",
                json!({"type": "bogus", "id": 3}),
                0,
                "ProtocolError",
            ),
            (
                "no command",
                json!({"id": 5, "args": {}}),
                5,
                "InvalidRequest",
            ),
            (
                "a command that is not a string",
                json!({"id": 6, "command": 7, "args": {}}),
                6,
                "InvalidRequest",
            ),
            (
                "args that are not a map",
                json!({"id": 7, "command": "echo", "args": [1]}),
                7,
                "InvalidRequest",
            ),
            (
                "no id",
                json!({"command": "echo", "args": {}}),
                0,
                "InvalidRequest",
            ),
            (
                "id 0",
                json!({"id": 0, "command": "echo", "args": {}}),
                0,
                "InvalidRequest",
            ),
            (
                "a negative id",
                json!({"id": -4, "command": "echo", "args": {}}),
                0,
                "InvalidRequest",
            ),
            (
                "a string id",
                json!({"id": "9", "command": "echo", "args": {}}),
                0,
                "InvalidRequest",
            ),
            (
                "a fractional id",
                json!({"id": 1.5, "command": "echo", "args": {}}),
                0,
                "InvalidRequest",
            ),
            (
                "an unknown command",
                json!({"id": 10, "command": "nope", "args": {}}),
                10,
                "UnknownCommand",
            ),
        ];
        for (what, frame, id, kind) in bad_requests {
            peer.send(frame).await;
            let reply = peer.recv().await;
            assert_eq!(error_of(&reply), (id, kind), "{w}: {what}: {reply}");
        }

        // A missing (or null) `args` means `{}`; unknown fields are ignored;
        // `type: "request"` is a request, and so is a null `type` (absent).
        for (id, frame) in [
            (8, json!({"id": 8, "command": "echo"})),
            (18, json!({"id": 18, "command": "echo", "args": null})),
            (
                21,
                json!({"type": null, "id": 21, "command": "echo", "args": {}}),
            ),
            (
                19,
                json!({"type": "request", "id": 19, "command": "echo", "args": {}, "zzz": [1]}),
            ),
        ] {
            peer.send(frame).await;
            let reply = peer.recv().await;
            assert_eq!(reply["id"], id, "{w}: {reply}");
            assert_eq!(reply["success"], true, "{w}: {reply}");
            assert_eq!(reply["result"]["echoed"], json!({}), "{w}: {reply}");
        }

        // A cancel for an id that is not running and a host_reply nobody
        // waits for get no answer: the next frame is the next call's reply.
        peer.send(json!({"type": "cancel", "id": 12})).await;
        peer.send(json!({"type": "host_reply", "id": 99, "success": true, "result": 1}))
            .await;
        let reply = peer.call(13, "echo", json!({"after": true})).await;
        assert_eq!(
            reply["result"]["echoed"],
            json!({"after": true}),
            "{w}: {reply}"
        );

        assert!(peer.finish().await.success(), "{w}: exit 0 at EOF");
    }
}

#[tokio::test]
async fn the_built_in_commands_give_the_results_and_errors_of_protocol_md_section_7() {
    for (lang, codec) in ALL {
        let mut peer = Peer::start(lang, codec).await;
        let w = peer.what.clone();
        assert_eq!(peer.recv().await["type"], "hello", "{w}");

        let echo = peer.call(1, "echo", json!({"x": [1, "two"]})).await;
        assert_eq!(echo["result"]["status"], "ok", "{w}: {echo}");
        assert_eq!(
            echo["result"]["echoed"],
            json!({"x": [1, "two"]}),
            "{w}: {echo}"
        );
        // Seconds since the epoch, within a minute of now. JavaScript has one
        // number type, so Node writes a whole second (one time in a
        // thousand) as an integer; the others always write a float.
        let stamp = &echo["result"]["timestamp"];
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            stamp.as_f64().is_some_and(|t| (t - now).abs() < 60.0),
            "{w}: {echo}"
        );
        if !matches!(lang, Lang::Node) {
            assert!(stamp.is_f64(), "{w}: {echo}");
        }

        // Only the Ruby bridge stamps its replies, with an ISO-8601 UTC time.
        match lang {
            Lang::Ruby => assert!(
                echo["timestamp"]
                    .as_str()
                    .is_some_and(|t| t.ends_with('Z') && t.contains('T')),
                "{w}: {echo}"
            ),
            _ => assert!(echo.get("timestamp").is_none(), "{w}: {echo}"),
        }

        let add = peer.call(2, "compute", json!({"a": 2, "b": 3})).await;
        let r = &add["result"];
        assert_eq!(
            (
                &r["status"],
                &r["operation"],
                &r["inputs"],
                r["result"].as_f64()
            ),
            (
                &json!("ok"),
                &json!("add"),
                &json!({"a": 2, "b": 3}),
                Some(5.0)
            ),
            "{w}: {add}"
        );
        let b_default = peer
            .call(3, "compute", json!({"operation": "subtract", "a": 2}))
            .await;
        assert_eq!(
            b_default["result"]["result"].as_f64(),
            Some(2.0),
            "{w}: {b_default}"
        );
        let mul = peer
            .call(
                4,
                "compute",
                json!({"operation": "multiply", "a": 4, "b": 2.5}),
            )
            .await;
        assert_eq!(mul["result"]["result"].as_f64(), Some(10.0), "{w}: {mul}");

        let error_type = match lang {
            Lang::Python => "ValueError",
            Lang::Node => "Error",
            Lang::Ruby => "ArgumentError",
        };
        let div0 = peer
            .call(5, "compute", json!({"operation": "divide", "a": 1, "b": 0}))
            .await;
        assert_eq!(error_of(&div0), (5, error_type), "{w}: {div0}");
        assert_eq!(div0["error"]["message"], "Division by zero", "{w}: {div0}");
        let bad = peer
            .call(6, "compute", json!({"operation": "mod", "a": 1, "b": 2}))
            .await;
        assert_eq!(error_of(&bad), (6, error_type), "{w}: {bad}");
        assert_eq!(
            bad["error"]["message"], "Unsupported operation: mod",
            "{w}: {bad}"
        );

        let power = peer
            .call(7, "compute", json!({"operation": "power", "a": 2, "b": 10}))
            .await;
        let sqrt = peer
            .call(8, "compute", json!({"operation": "sqrt", "a": -4}))
            .await;
        let random = peer
            .call(9, "random", json!({"type": "integer", "min": 3, "max": 3}))
            .await;
        if lang == Lang::Python {
            assert_eq!(
                power["error"]["message"], "Unsupported operation: power",
                "{w}: {power}"
            );
            assert_eq!(
                sqrt["error"]["message"], "Unsupported operation: sqrt",
                "{w}: {sqrt}"
            );
        } else {
            assert_eq!(
                power["result"]["result"].as_f64(),
                Some(1024.0),
                "{w}: {power}"
            );
            assert_eq!(error_of(&sqrt), (8, error_type), "{w}: {sqrt}");
            assert_eq!(
                sqrt["error"]["message"], "Square root of negative number",
                "{w}: {sqrt}"
            );
        }
        if lang == Lang::Node {
            let r = &random["result"];
            assert_eq!(
                (&r["status"], &r["type"], &r["value"]),
                (&json!("ok"), &json!("integer"), &json!(3)),
                "{w}: {random}"
            );
            assert_eq!(
                r["parameters"],
                json!({"type": "integer", "min": 3, "max": 3}),
                "{w}: {random}"
            );
        } else {
            assert_eq!(error_of(&random), (9, "UnknownCommand"), "{w}: {random}");
        }

        let info = peer.call(10, "info", json!({})).await;
        let r = &info["result"];
        assert_eq!(r["status"], "ok", "{w}: {info}");
        for field in [
            "name",
            "version",
            "supported_commands",
            "uptime",
            "total_requests",
        ] {
            assert!(!r["bridge_info"][field].is_null(), "{w}: {field} in {info}");
        }
        let commands = r["bridge_info"]["supported_commands"]
            .as_array()
            .expect("a list");
        for c in ["ping", "echo", "compute", "info"] {
            assert!(commands.contains(&json!(c)), "{w}: {c} in {info}");
        }
        assert!(r["system_info"].is_object(), "{w}: {info}");

        assert!(peer.finish().await.success(), "{w}: exit 0 at EOF");
    }
}
