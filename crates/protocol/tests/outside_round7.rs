//! Round 7 of outside review: sentences of docs/protocol.md about the
//! `type` field and the routing of hostile frames that no earlier test
//! showed, each in both codecs.
//!
//! - Section 4: a request's `type` is "absent, null, or `"request"`"; a
//!   `type` that is no string is the peer's `WrongType`, not a request.
//! - Section 5: a response's `type` is "absent or `"response"`", and a
//!   frame with `success` is a response "whatever its `type` says" (a null,
//!   a number, another frame's name, or a capitalised `Response`).
//! - Section 4, "Frames a worker cannot use": fields the frame kind does
//!   not have are ignored (a `cancel` carrying a `command` is a cancel).
//! - Section 5, `host_call`: a `request_id` that is null is absent, one
//!   that is no integer is `WrongType`; both routers agree in both codecs.

use serde_json::Value;
use snakepit_protocol::{
    decode_inbound, decode_outbound, decode_response, peek_response, Error, Inbound, Outbound,
    WireCodec,
};

/// The same frame, as JSON text and as MessagePack (maps keyed by name).
fn both(text: &str) -> Vec<(&'static str, WireCodec, Vec<u8>)> {
    let value: Value = serde_json::from_str(text).unwrap();
    vec![
        ("json", WireCodec::Json, text.as_bytes().to_vec()),
        (
            "msgpack",
            WireCodec::MsgPack,
            rmp_serde::to_vec_named(&value).unwrap(),
        ),
    ]
}

#[test]
fn a_request_type_may_be_absent_null_or_request_in_both_codecs() {
    for text in [
        r#"{"id":7,"command":"run","args":{},"timestamp":"t"}"#,
        r#"{"type":null,"id":7,"command":"run","args":{},"timestamp":"t"}"#,
        r#"{"type":"request","id":7,"command":"run","args":{},"timestamp":"t"}"#,
        r#"{"id":7,"command":"run","args":{},"timestamp":"t","type":null}"#,
    ] {
        for (name, codec, bytes) in both(text) {
            assert_eq!(
                decode_outbound(&codec, &bytes).unwrap(),
                Outbound::Request {
                    id: 7,
                    command: "run".into()
                },
                "{name}: {text}"
            );
        }
    }
    for text in [
        r#"{"type":5,"id":7,"command":"run","args":{}}"#,
        r#"{"type":true,"id":7,"command":"run","args":{}}"#,
        r#"{"type":["request"],"id":7,"command":"run","args":{}}"#,
    ] {
        for (name, codec, bytes) in both(text) {
            let err = decode_outbound(&codec, &bytes).unwrap_err();
            assert!(
                matches!(err, Error::WrongType { field: "type", .. }),
                "{name}: {text}: {err:?}"
            );
        }
    }
    // A name of no frame kind, `Request` capitalised among them.
    for text in [
        r#"{"type":"Request","id":7,"command":"run","args":{}}"#,
        r#"{"type":"","id":7,"command":"run","args":{}}"#,
    ] {
        for (name, codec, bytes) in both(text) {
            let err = decode_outbound(&codec, &bytes).unwrap_err();
            assert!(
                matches!(err, Error::UnknownFrameType(_)),
                "{name}: {text}: {err:?}"
            );
        }
    }
}

#[test]
fn a_frame_with_success_is_a_response_whatever_its_type_in_both_codecs() {
    for text in [
        r#"{"id":3,"success":true,"result":1}"#,
        r#"{"type":"response","id":3,"success":true,"result":1}"#,
        r#"{"type":null,"id":3,"success":true,"result":1}"#,
        r#"{"type":5,"id":3,"success":true,"result":1}"#,
        r#"{"type":"Response","id":3,"success":true,"result":1}"#,
        r#"{"type":"chunk","id":3,"success":true,"result":1,"data":2}"#,
        r#"{"type":"host_call","id":3,"success":true,"result":1,"function":"f"}"#,
        r#"{"type":"no_such_kind","id":3,"success":true,"result":1}"#,
    ] {
        for (name, codec, bytes) in both(text) {
            assert_eq!(
                decode_inbound(&codec, &bytes).unwrap(),
                Inbound::Response {
                    id: 3,
                    success: true
                },
                "{name}: {text}"
            );
            if let Some(peeked) = peek_response(&codec, &bytes) {
                assert_eq!(peeked, (3, true), "{name}: {text}");
            }
            // And the reply's result is what the caller gets.
            assert_eq!(
                decode_response::<_, Value>(&codec, &bytes)
                    .unwrap()
                    .unwrap(),
                Value::from(1),
                "{name}: {text}"
            );
        }
    }
    // `type` says response but `success` is missing or null: not a reply.
    for text in [
        r#"{"type":"response","id":3,"result":1}"#,
        r#"{"type":"response","id":3,"success":null,"result":1}"#,
    ] {
        for (name, codec, bytes) in both(text) {
            assert!(
                matches!(
                    decode_inbound(&codec, &bytes),
                    Err(Error::MissingField {
                        kind: "response",
                        field: "success"
                    })
                ),
                "{name}: {text}"
            );
            assert_eq!(peek_response(&codec, &bytes), None, "{name}: {text}");
        }
    }
}

#[test]
fn fields_a_frame_kind_does_not_have_are_ignored_in_both_codecs() {
    let cases: [(&str, Outbound); 2] = [
        (
            r#"{"type":"cancel","id":9,"command":"run","args":{"x":1},"success":false}"#,
            Outbound::Cancel { id: 9 },
        ),
        (
            r#"{"type":"host_reply","id":4,"success":true,"command":"run","data":[1]}"#,
            Outbound::HostReply {
                id: 4,
                success: true,
            },
        ),
    ];
    for (text, want) in cases {
        for (name, codec, bytes) in both(text) {
            assert_eq!(
                decode_outbound(&codec, &bytes).unwrap(),
                want,
                "{name}: {text}"
            );
        }
    }
}

#[test]
fn a_host_calls_request_id_is_an_integer_or_absent_in_both_codecs() {
    for (text, want) in [
        (
            r#"{"type":"host_call","id":1,"function":"session.get","args":{}}"#,
            None,
        ),
        (
            r#"{"type":"host_call","id":1,"request_id":null,"function":"session.get","args":{}}"#,
            None,
        ),
        (
            r#"{"type":"host_call","id":1,"request_id":18446744073709551615,"function":"session.get","args":{}}"#,
            Some(u64::MAX),
        ),
    ] {
        for (name, codec, bytes) in both(text) {
            assert_eq!(
                decode_inbound(&codec, &bytes).unwrap(),
                Inbound::HostCall {
                    id: 1,
                    request_id: want,
                    function: "session.get".into()
                },
                "{name}: {text}"
            );
        }
    }
    for text in [
        r#"{"type":"host_call","id":1,"request_id":"2","function":"f","args":{}}"#,
        r#"{"type":"host_call","id":1,"request_id":-2,"function":"f","args":{}}"#,
        r#"{"type":"host_call","id":1,"request_id":2.5,"function":"f","args":{}}"#,
        r#"{"type":"host_call","id":1,"request_id":[2],"function":"f","args":{}}"#,
    ] {
        for (name, codec, bytes) in both(text) {
            let err = decode_inbound(&codec, &bytes).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::WrongType {
                        field: "request_id",
                        ..
                    }
                ),
                "{name}: {text}: {err:?}"
            );
        }
    }
}

/// `depth` arrays around 1.
fn nested(depth: usize) -> Value {
    let mut v = Value::from(1);
    for _ in 0..depth {
        v = Value::Array(vec![v]);
    }
    v
}

/// The same frame in both codecs, from a `Value` (serde_json writes any
/// depth).
fn both_of(frame: &Value) -> [(&'static str, WireCodec, Vec<u8>); 2] {
    [
        ("json", WireCodec::Json, serde_json::to_vec(frame).unwrap()),
        (
            "msgpack",
            WireCodec::MsgPack,
            rmp_serde::to_vec_named(frame).unwrap(),
        ),
    ]
}

/// Section 5: the pool reads a reply's `result` or `error`, a chunk's
/// `data`, a host call's `args`, "and ignores any other field". A field it
/// does not know, nested past the depth limit, is ignored in MessagePack
/// as in JSON: the call gets its result, its error, its chunk or its host
/// call's arguments (it failed the whole frame under MessagePack alone:
/// rmp-serde skips an unknown value by recursing, serde_json with a loop).
/// A field the pool reads that is nested too deep still fails its own call
/// in both.
#[test]
fn a_field_no_reader_knows_nested_past_the_limit_is_ignored_in_both_codecs() {
    use snakepit_protocol::{decode_chunk, decode_host_call_args, MAX_DEPTH};
    let deep = nested(MAX_DEPTH + 73);
    let reply = serde_json::json!({"id": 1, "success": true, "result": {"ok": 1}, "meta": deep});
    let failed = serde_json::json!({"id": 1, "meta": deep, "success": false, "error": {"type": "E", "message": "m"}});
    let plain = serde_json::json!({"extra": deep, "id": 1, "success": false, "error": "boom"});
    let chunk = serde_json::json!({"type": "chunk", "id": 1, "meta": deep, "data": [1, 2]});
    let call = serde_json::json!({"type": "host_call", "id": 1, "request_id": 2,
        "function": "session.get", "trace": deep, "args": {"key": "k"}});
    for (name, codec, bytes) in both_of(&reply) {
        assert_eq!(
            decode_response::<_, Value>(&codec, &bytes)
                .unwrap()
                .unwrap(),
            serde_json::json!({"ok": 1}),
            "{name}"
        );
    }
    for (name, codec, bytes) in both_of(&failed) {
        let e = decode_response::<_, Value>(&codec, &bytes)
            .unwrap()
            .unwrap_err();
        assert_eq!(
            (e.kind.as_deref(), e.message.as_str()),
            (Some("E"), "m"),
            "{name}"
        );
    }
    for (name, codec, bytes) in both_of(&plain) {
        let e = decode_response::<_, Value>(&codec, &bytes)
            .unwrap()
            .unwrap_err();
        assert_eq!((e.kind, e.message.as_str()), (None, "boom"), "{name}");
    }
    for (name, codec, bytes) in both_of(&chunk) {
        assert_eq!(
            decode_chunk::<_, Value>(&codec, &bytes).unwrap(),
            serde_json::json!([1, 2]),
            "{name}"
        );
    }
    for (name, codec, bytes) in both_of(&call) {
        assert_eq!(
            decode_host_call_args::<_, Value>(&codec, &bytes).unwrap(),
            serde_json::json!({"key": "k"}),
            "{name}"
        );
    }

    // What the pool reads, too deep: the call's own error in both codecs,
    // an unknown deep field beside it or not.
    let too_deep = nested(MAX_DEPTH);
    for extra in [Value::Null, deep.clone()] {
        let reply =
            serde_json::json!({"id": 1, "success": true, "result": too_deep, "meta": extra});
        let chunk = serde_json::json!({"type": "chunk", "id": 1, "data": too_deep, "meta": extra});
        let call = serde_json::json!({"type": "host_call", "id": 1, "function": "f",
            "args": {"k": too_deep}, "meta": extra});
        for (name, codec, bytes) in both_of(&reply) {
            let r = decode_response::<_, Value>(&codec, &bytes);
            assert!(matches!(r, Err(Error::TooDeep { .. })), "{name}: {r:?}");
        }
        for (name, codec, bytes) in both_of(&chunk) {
            let r = decode_chunk::<_, Value>(&codec, &bytes);
            assert!(matches!(r, Err(Error::TooDeep { .. })), "{name}: {r:?}");
        }
        for (name, codec, bytes) in both_of(&call) {
            let r = decode_host_call_args::<_, Value>(&codec, &bytes);
            assert!(matches!(r, Err(Error::TooDeep { .. })), "{name}: {r:?}");
        }
    }
    // A result one level inside the limit still reads, beside a deep field.
    let at_limit = nested(MAX_DEPTH - 2);
    let reply = serde_json::json!({"id": 1, "success": true, "result": at_limit, "meta": deep});
    for (name, codec, bytes) in both_of(&reply) {
        assert_eq!(
            decode_response::<_, Value>(&codec, &bytes)
                .unwrap()
                .unwrap(),
            at_limit,
            "{name}"
        );
    }
}
