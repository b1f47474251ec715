//! The shared wire vectors (`tests/vectors/frames.json`): every good frame
//! decodes to its meaning, every frame we produce is byte-identical to the
//! vector, and every bad frame is the typed error it names.

use std::fmt;

use bytes::BytesMut;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Map, Value};
use snakepit_protocol::{
    decode_inbound, decode_outbound, decode_response, encode_frame, Cancel, Codec, Error,
    FrameCodec, HostReply, Inbound, Json, MsgPack, Outbound, RemoteError, Request, Response,
    Timestamp, WireCodec,
};
use snakepit_tests::{unhex, vector_cases as vectors};
use tokio_util::codec::Decoder;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn codec_of(case: &Value) -> WireCodec {
    case["codec"].as_str().unwrap().parse().unwrap()
}

/// A dynamic value that keeps binary strings, as the vectors write them.
struct Any(Value);

impl<'de> Deserialize<'de> for Any {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Any;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_unit<E>(self) -> Result<Any, E> {
                Ok(Any(Value::Null))
            }
            fn visit_none<E>(self) -> Result<Any, E> {
                Ok(Any(Value::Null))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Any, E> {
                Ok(Any(v.into()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Any, E> {
                Ok(Any(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Any, E> {
                Ok(Any(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Any, E> {
                Ok(Any(v.into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Any, E> {
                Ok(Any(v.into()))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Any, E> {
                Ok(Any(json!({"$bin": hex(v)})))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Any, A::Error> {
                let mut out = Vec::new();
                while let Some(Any(v)) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Any(Value::Array(out)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Any, A::Error> {
                let mut out = Map::new();
                while let Some((k, Any(v))) = map.next_entry::<String, Any>()? {
                    out.insert(k, v);
                }
                Ok(Any(Value::Object(out)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Splits the single frame out of a vector, as a pool reading a pipe would.
fn read_frame(bytes: &[u8]) -> Result<BytesMut, Error> {
    let mut buf = BytesMut::from(bytes);
    let mut codec = FrameCodec::default();
    let frame = codec.decode_eof(&mut buf)?.expect("a frame");
    assert!(buf.is_empty(), "one frame per vector");
    Ok(frame)
}

/// Decodes as a pool (to_pool) or a worker (to_worker) would: routing part,
/// then the whole payload.
fn decode(case: &Value, bytes: &[u8]) -> Result<Value, Error> {
    let codec = codec_of(case);
    let frame = read_frame(bytes)?;
    if case["direction"] == "to_pool" {
        if let Inbound::Response { .. } = decode_inbound(&codec, &frame)? {
            // What a dynamic call sees. serde_json's Value has no binary type,
            // so the one vector with binary data is read as `Any`.
            if case["value"].to_string().contains("$bin") {
                decode_response::<_, Any>(&codec, &frame)?.ok();
            } else {
                decode_response::<_, Value>(&codec, &frame)?.ok();
            }
        }
    } else {
        decode_outbound(&codec, &frame)?;
    }
    Ok(codec.decode::<Any>(&frame)?.0)
}

/// Encodes a vector's meaning with this crate's own message types.
fn encode(case: &Value) -> Option<Vec<u8>> {
    let codec = codec_of(case);
    let v = &case["value"];
    let mut buf = BytesMut::new();
    let max = usize::MAX;
    let error = |e: &Value| serde_json::from_value::<RemoteError>(e.clone()).unwrap();
    match v.get("type").and_then(Value::as_str) {
        None if v.get("command").is_some() => {
            let mut r = Request::new(v["id"].as_u64()?, v["command"].as_str()?, &v["args"]);
            r.timestamp = Timestamp(parse_ts(v["timestamp"].as_str()?));
            r.session_id = v.get("session_id").and_then(Value::as_str);
            r.timeout_ms = v.get("timeout_ms").and_then(Value::as_u64);
            r.stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false);
            r.traceparent = v.get("traceparent").and_then(Value::as_str);
            encode_frame(&codec, &r, max, &mut buf).unwrap();
        }
        // Untimestamped replies; timestamped ones come only from workers.
        None if v.get("timestamp").is_none() => {
            let e = v.get("error").map(error);
            let result = Wire(&v["result"]);
            let id = v["id"].as_u64()?;
            let r = match &e {
                None => Response::ok(id, &result),
                Some(e) => Response::err(id, e),
            };
            encode_frame(&codec, &r, max, &mut buf).unwrap();
        }
        Some("cancel") => {
            encode_frame(&codec, &Cancel::new(v["id"].as_u64()?), max, &mut buf).unwrap()
        }
        Some("host_reply") if v["success"] == true => encode_frame(
            &codec,
            &HostReply::ok(v["id"].as_u64()?, &v["result"]),
            max,
            &mut buf,
        )
        .unwrap(),
        Some("host_reply") => {
            let e = error(&v["error"]);
            encode_frame(
                &codec,
                &HostReply::<()>::err(v["id"].as_u64()?, &e),
                max,
                &mut buf,
            )
            .unwrap()
        }
        // Frames only workers write (hello, chunk, host_call, timestamped
        // replies) are checked by the bridges' suites.
        _ => return None,
    }
    Some(buf.to_vec())
}

/// A vector's value as it goes on the wire: `{"$bin": hex}` is binary data.
struct Wire<'a>(&'a Value);

impl serde::Serialize for Wire<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Object(m) if m.len() == 1 && m.contains_key("$bin") => {
                s.serialize_bytes(&unhex(m["$bin"].as_str().unwrap_or("")))
            }
            Value::Object(m) => {
                let mut map = s.serialize_map(Some(m.len()))?;
                for (k, v) in m {
                    map.serialize_entry(k, &Wire(v))?;
                }
                map.end()
            }
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(&Wire(v))?;
                }
                seq.end()
            }
            other => other.serialize(s),
        }
    }
}

fn parse_ts(s: &str) -> std::time::SystemTime {
    // Only the vectors' one timestamp is needed: 2026-11-27T12:24:04.051023Z.
    assert_eq!(s, "2026-11-27T12:24:04.051023Z");
    std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_795_782_244_051_023)
}

#[test]
fn good_frames_decode_to_their_meaning() {
    let mut n = 0;
    for case in vectors().iter().filter(|c| c.get("value").is_some()) {
        let got = decode(case, &unhex(case["frame_hex"].as_str().unwrap()))
            .unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
        assert_eq!(got, case["value"], "{}", case["name"]);
        n += 1;
    }
    assert!(n >= 40, "only {n} good vectors");
}

#[test]
fn frames_we_write_match_the_vectors_byte_for_byte() {
    let mut n = 0;
    for case in vectors().iter().filter(|c| c["encode"] == true) {
        if let Some(bytes) = encode(case) {
            assert_eq!(
                hex(&bytes),
                case["frame_hex"].as_str().unwrap(),
                "{}",
                case["name"]
            );
            n += 1;
        }
    }
    assert!(n >= 20, "only {n} vectors encoded");
}

#[test]
fn bad_frames_are_the_typed_error_they_name() {
    let mut n = 0;
    for case in vectors().iter().filter(|c| c.get("error").is_some()) {
        let err = decode(case, &unhex(case["frame_hex"].as_str().unwrap()))
            .expect_err(case["name"].as_str().unwrap());
        assert_eq!(
            err.kind(),
            case["error"].as_str().unwrap(),
            "{}: {err}",
            case["name"]
        );
        n += 1;
    }
    assert!(n >= 15);
}

#[test]
fn routing_parts_of_worker_frames() {
    let hello =
        br#"{"type":"hello","protocol":1,"capabilities":{"max_concurrency":4,"cancel":true}}"#;
    match decode_inbound(&Json, hello).unwrap() {
        Inbound::Hello(h) => {
            assert_eq!(h.capabilities.max_concurrency, 4);
            assert!(h.capabilities.cancel && !h.capabilities.streaming);
        }
        other => panic!("{other:?}"),
    }
    let call = rmp_like_host_call();
    assert_eq!(
        decode_inbound(&MsgPack, &call).unwrap(),
        Inbound::HostCall {
            id: 4,
            request_id: Some(8),
            function: "session.get".into()
        }
    );
    assert_eq!(
        decode_outbound(&Json, br#"{"type":"cancel","id":3}"#).unwrap(),
        Outbound::Cancel { id: 3 }
    );
    let err = decode_inbound(&Json, br#"{"type":"host_call","id":4}"#).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MissingField {
                kind: "host_call",
                field: "function"
            }
        ),
        "{err}"
    );
}

fn rmp_like_host_call() -> Vec<u8> {
    let mut buf = BytesMut::new();
    MsgPack
        .encode(&json!({"type": "host_call", "id": 4, "request_id": 8, "function": "session.get", "args": {"key": "k"}}), &mut buf)
        .unwrap();
    buf.to_vec()
}

#[test]
fn plain_string_errors_of_the_original_protocol_are_remote_errors() {
    let frame =
        br#"{"id":291,"success":false,"error":"Unknown command: frobnicate","timestamp":"x"}"#;
    let err = decode_response::<_, Value>(&Json, frame)
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind, None);
    assert_eq!(err.message, "Unknown command: frobnicate");
    let frame = br#"{"id":1,"success":false,"error":{"type":"ValueError","message":"Division by zero","traceback":"tb"}}"#;
    let err = decode_response::<_, Value>(&Json, frame)
        .unwrap()
        .unwrap_err();
    assert_eq!(err.to_string(), "ValueError: Division by zero");
    assert_eq!(err.traceback.as_deref(), Some("tb"));
}

#[test]
fn typed_results_decode_straight_from_the_frame() {
    #[derive(serde::Deserialize, PartialEq, Debug)]
    struct Sum {
        result: i64,
        operation: String,
    }
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let mut buf = BytesMut::new();
        let result = json!({"status": "ok", "operation": "add", "result": 8});
        encode_frame(&codec, &Response::ok(1, &result), 1024, &mut buf).unwrap();
        let sum: Sum = decode_response(&codec, &buf[4..]).unwrap().unwrap();
        assert_eq!(
            sum,
            Sum {
                result: 8,
                operation: "add".into()
            }
        );
        let wrong = decode_response::<_, Vec<u8>>(&codec, &buf[4..]).unwrap_err();
        assert_eq!(wrong.kind(), "wrong_type", "{codec}: {wrong}");
        let null: Value = decode_response(&codec, &buf[4..]).unwrap().unwrap();
        assert_eq!(null["result"], 8);
    }
    let none: Option<i64> = decode_response(&Json, br#"{"id":1,"success":true}"#)
        .unwrap()
        .unwrap();
    assert_eq!(none, None);
}

#[test]
fn binary_error_messages_from_msgpack_peers_are_read_as_text() {
    let mut buf = BytesMut::new();
    struct B;
    impl serde::Serialize for B {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(b"divided by 0")
        }
    }
    let mut map = std::collections::BTreeMap::new();
    map.insert("message", B);
    #[derive(serde::Serialize)]
    struct Reply<'a> {
        id: u64,
        success: bool,
        error: &'a std::collections::BTreeMap<&'static str, B>,
    }
    MsgPack
        .encode(
            &Reply {
                id: 1,
                success: false,
                error: &map,
            },
            &mut buf,
        )
        .unwrap();
    let err = decode_response::<_, Value>(&MsgPack, &buf)
        .unwrap()
        .unwrap_err();
    assert_eq!(err.message, "divided by 0");
}
