//! One maximum nesting depth, `MAX_DEPTH`, for both codecs and both
//! directions; frames routed whatever their depth; no input that recurses
//! without bound or allocates by a declared length.

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use snakepit_protocol::{
    decode_chunk, decode_host_call_args, decode_inbound, decode_outbound, decode_response,
    encode_frame, peek_response, Codec, Error, FrameCodec, Inbound, Outbound, Request, Response,
    WireCodec, MAX_DEPTH,
};
use tokio_util::codec::Decoder;

const CODECS: [WireCodec; 2] = [WireCodec::Json, WireCodec::MsgPack];

/// `[[...[null]...]]`, `depth` arrays deep.
fn arrays(depth: usize) -> Value {
    (0..depth).fold(Value::Null, |v, _| json!([v]))
}

/// `{"k": {"k": ... 1}}`, `depth` maps deep.
fn maps(depth: usize) -> Value {
    (0..depth).fold(json!(1), |v, _| json!({"k": v, "other": 1}))
}

/// Maps and arrays in turn, `depth` deep.
fn mixed(depth: usize) -> Value {
    (0..depth).fold(json!("leaf"), |v, i| {
        if i % 2 == 0 {
            json!([1, v])
        } else {
            json!({"a": v})
        }
    })
}

fn response<C: Codec>(codec: &C, result: &Value) -> Result<BytesMut, Error> {
    let mut buf = BytesMut::new();
    encode_frame(codec, &Response::ok(7, result), usize::MAX, &mut buf)?;
    Ok(buf.split_off(4))
}

fn is_too_deep(e: &Error, encoding: bool) -> bool {
    matches!(e, Error::TooDeep { max, encoding: enc, .. } if *max == MAX_DEPTH && *enc == encoding)
}

/// Runs `f` on a thread with a stack smaller than a tokio worker's (2 MiB),
/// so that a decoder recursing with the input fails the test by overflowing
/// rather than passing on a large main-thread stack.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn both_decoders_read_exactly_max_depth_levels() {
    for codec in CODECS {
        for shape in [arrays, maps, mixed] {
            let mut ok = BytesMut::new();
            codec.encode(&shape(MAX_DEPTH), &mut ok).unwrap();
            let v: Value = codec.decode(&ok).unwrap_or_else(|e| panic!("{codec}: {e}"));
            assert_eq!(v, shape(MAX_DEPTH));

            let mut deep = BytesMut::new();
            codec.encode(&shape(MAX_DEPTH + 1), &mut deep).unwrap();
            let err = codec.decode::<Value>(&deep).unwrap_err();
            assert!(is_too_deep(&err, false), "{codec}: {err:?}");
            assert_eq!(err.kind(), "too_deep");
        }
    }
}

#[test]
fn encode_frame_refuses_arguments_deeper_than_the_limit_and_writes_nothing() {
    for codec in CODECS {
        for shape in [arrays, maps, mixed] {
            // The request's own map is one level.
            let mut buf = BytesMut::from(&b"earlier frame"[..]);
            let args = shape(MAX_DEPTH - 1);
            encode_frame(&codec, &Request::new(1, "run", &args), usize::MAX, &mut buf).unwrap();
            let frame = FrameCodec::default()
                .decode(&mut buf.split_off(13))
                .unwrap()
                .unwrap();
            assert_eq!(
                decode_outbound(&codec, &frame).unwrap(),
                Outbound::Request {
                    id: 1,
                    command: "run".into()
                }
            );
            let back: Value = decode_host_call_args(&codec, &frame).unwrap();
            assert_eq!(back, args);

            let mut buf = BytesMut::from(&b"earlier frame"[..]);
            let args = shape(MAX_DEPTH);
            let err = encode_frame(&codec, &Request::new(2, "run", &args), usize::MAX, &mut buf)
                .unwrap_err();
            assert!(is_too_deep(&err, true), "{codec}: {err:?}");
            assert!(err.to_string().contains("refused before sending"), "{err}");
            assert_eq!(&buf[..], b"earlier frame", "nothing of the refused frame");
        }
    }
}

/// Whatever the shape, `encode_frame` accepts a value exactly when the
/// decoder of the same codec reads it back: the limit is symmetric.
#[test]
fn encode_frame_accepts_exactly_what_the_decoder_reads() {
    #[derive(Serialize)]
    enum E {
        Unit,
        New(Value),
        Tuple(Value, u8),
        Struct { inner: Value },
    }
    #[derive(Serialize)]
    struct Wrap<T>(T);
    #[derive(Serialize)]
    struct Holder<T> {
        some: Option<T>,
        #[serde(with = "serde_bytes_like")]
        bytes: Vec<u8>,
    }
    mod serde_bytes_like {
        pub(super) fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
    }

    fn check<C: Codec + Copy, T: Serialize>(codec: C, what: &str, value: &T) {
        let mut unchecked = BytesMut::new();
        codec.encode(value, &mut unchecked).unwrap();
        let decodes = match codec.decode::<AnyValue>(&unchecked) {
            Ok(_) => true,
            Err(e) => {
                assert!(is_too_deep(&e, false), "{what}: {e:?}");
                false
            }
        };
        let mut buf = BytesMut::new();
        let encodes = match encode_frame(&codec, value, usize::MAX, &mut buf) {
            Ok(()) => true,
            Err(e) => {
                assert!(is_too_deep(&e, true), "{what}: {e:?}");
                false
            }
        };
        assert_eq!(encodes, decodes, "{}: {what}", codec.name());
    }

    for codec in CODECS {
        for depth in MAX_DEPTH - 4..=MAX_DEPTH + 1 {
            let v = arrays(depth);
            check(codec, "value", &v);
            check(codec, "unit variant", &vec![E::Unit]);
            check(codec, "newtype variant", &E::New(arrays(depth - 1)));
            check(codec, "tuple variant", &E::Tuple(arrays(depth - 2), 1));
            check(
                codec,
                "struct variant",
                &E::Struct {
                    inner: arrays(depth - 2),
                },
            );
            check(codec, "newtype struct", &Wrap(arrays(depth)));
            let holder = |d| Holder {
                some: Some(arrays(d)),
                bytes: vec![1, 2],
            };
            check(codec, "option", &holder(depth - 1));
            // Bytes: an array in JSON (one level more), `bin` in MessagePack.
            check(
                codec,
                "bytes",
                &Nest::around(depth - 1, Nest::Bytes(vec![1, 2])),
            );
            check(
                codec,
                "empty bytes",
                &Nest::around(depth - 1, Nest::Bytes(vec![])),
            );
        }
    }
}

/// Any value at all, bytes included, read recursively (so that the decoder's
/// depth limit applies).
struct AnyValue;

impl<'de> serde::Deserialize<'de> for AnyValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AnyValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("anything")
            }
            fn visit_bool<E>(self, _: bool) -> Result<AnyValue, E> {
                Ok(AnyValue)
            }
            fn visit_i64<E>(self, _: i64) -> Result<AnyValue, E> {
                Ok(AnyValue)
            }
            fn visit_u64<E>(self, _: u64) -> Result<AnyValue, E> {
                Ok(AnyValue)
            }
            fn visit_f64<E>(self, _: f64) -> Result<AnyValue, E> {
                Ok(AnyValue)
            }
            fn visit_str<E>(self, _: &str) -> Result<AnyValue, E> {
                Ok(AnyValue)
            }
            fn visit_bytes<E>(self, _: &[u8]) -> Result<AnyValue, E> {
                Ok(AnyValue)
            }
            fn visit_unit<E>(self) -> Result<AnyValue, E> {
                Ok(AnyValue)
            }
            fn visit_none<E>(self) -> Result<AnyValue, E> {
                Ok(AnyValue)
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<AnyValue, D::Error> {
                AnyValue::deserialize(d)
            }
            fn visit_newtype_struct<D: serde::Deserializer<'de>>(
                self,
                d: D,
            ) -> Result<AnyValue, D::Error> {
                AnyValue::deserialize(d)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<AnyValue, A::Error> {
                while a.next_element::<AnyValue>()?.is_some() {}
                Ok(AnyValue)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<AnyValue, A::Error> {
                while a.next_entry::<AnyValue, AnyValue>()?.is_some() {}
                Ok(AnyValue)
            }
        }
        d.deserialize_any(V)
    }
}

/// Byte strings `depth` arrays down.
enum Nest {
    Bytes(Vec<u8>),
    Array(Vec<Nest>),
}

impl Nest {
    fn around(depth: usize, inner: Nest) -> Nest {
        (0..depth).fold(inner, |v, _| Nest::Array(vec![v]))
    }
}

impl Serialize for Nest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Nest::Bytes(b) => s.serialize_bytes(b),
            Nest::Array(a) => a.serialize(s),
        }
    }
}

/// A JSON payload `{before "<field>": <depth levels> after}`.
fn deep_json(before: &str, field: &str, depth: usize, after: &str) -> Vec<u8> {
    format!(
        "{{{before}\"{field}\":{}{}{after}}}",
        "[".repeat(depth),
        "]".repeat(depth)
    )
    .into_bytes()
}

/// MessagePack `depth` arrays deep (`[[...[]...]]`).
fn deep_msgpack(depth: usize) -> Vec<u8> {
    let mut v = vec![0x91; depth - 1];
    v.push(0x90);
    v
}

fn mp_str(s: &str) -> Vec<u8> {
    let mut v = vec![0xa0 | s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

/// A MessagePack map of the given entries, values already encoded.
fn mp_map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut v = vec![0x80 | entries.len() as u8];
    for (k, val) in entries {
        v.extend(mp_str(k));
        v.extend_from_slice(val);
    }
    v
}

/// The frames of every kind a worker sends, each carrying a value 1000
/// levels deep in its payload field, in an order the fast path does not
/// read: (codec, payload, its routing).
fn deep_frames(depth: usize) -> Vec<(WireCodec, Vec<u8>, Inbound)> {
    let d = deep_msgpack(depth);
    vec![
        (
            WireCodec::Json,
            deep_json("", "result", depth, ",\"id\":7,\"success\":true"),
            Inbound::Response {
                id: 7,
                success: true,
            },
        ),
        (
            WireCodec::Json,
            deep_json(
                "\"type\":\"response\",\"id\":8,",
                "result",
                depth,
                ",\"success\":false",
            ),
            Inbound::Response {
                id: 8,
                success: false,
            },
        ),
        (
            WireCodec::Json,
            deep_json("\"type\":\"chunk\",", "data", depth, ",\"id\":3"),
            Inbound::Chunk { id: 3 },
        ),
        (
            WireCodec::Json,
            deep_json(
                "\"type\":\"host_call\",\"id\":4,\"function\":\"f\",",
                "args",
                depth,
                ",\"request_id\":7",
            ),
            Inbound::HostCall {
                id: 4,
                request_id: Some(7),
                function: "f".into(),
            },
        ),
        (
            WireCodec::MsgPack,
            mp_map(&[
                ("result", d.clone()),
                ("id", vec![7]),
                ("success", vec![0xc3]),
            ]),
            Inbound::Response {
                id: 7,
                success: true,
            },
        ),
        (
            WireCodec::MsgPack,
            mp_map(&[
                ("type", mp_str("response")),
                ("id", vec![0xcd, 0x01, 0x00]),
                ("result", d.clone()),
                ("success", vec![0xc2]),
            ]),
            Inbound::Response {
                id: 256,
                success: false,
            },
        ),
        (
            WireCodec::MsgPack,
            mp_map(&[
                ("type", mp_str("chunk")),
                ("data", d.clone()),
                ("id", vec![3]),
            ]),
            Inbound::Chunk { id: 3 },
        ),
        (
            WireCodec::MsgPack,
            mp_map(&[
                ("type", mp_str("host_call")),
                ("id", vec![4]),
                ("args", d.clone()),
                ("function", mp_str("f")),
                ("request_id", vec![7]),
            ]),
            Inbound::HostCall {
                id: 4,
                request_id: Some(7),
                function: "f".into(),
            },
        ),
    ]
}

#[test]
fn a_reply_1000_levels_deep_is_routed_and_fails_only_its_own_decode() {
    on_small_stack(|| {
        for (codec, payload, routing) in deep_frames(1000) {
            let what = String::from_utf8_lossy(&payload[..40.min(payload.len())]).into_owned();
            assert_eq!(peek_response(&codec, &payload), None, "{what}");
            assert_eq!(decode_inbound(&codec, &payload).unwrap(), routing, "{what}");
            // Whoever the frame goes to fails on the depth, typed as such.
            let err = match routing {
                Inbound::Response { .. } => {
                    decode_response::<_, Value>(&codec, &payload).unwrap_err()
                }
                Inbound::Chunk { .. } => decode_chunk::<_, Value>(&codec, &payload).unwrap_err(),
                _ => decode_host_call_args::<_, Value>(&codec, &payload).unwrap_err(),
            };
            assert!(is_too_deep(&err, false), "{what}: {err:?}");
        }
    });
}

#[test]
fn a_reply_in_the_bridges_shape_is_routed_from_its_first_bytes_whatever_its_depth() {
    let json = deep_json("\"id\":7,\"success\":true,", "result", 1000, "");
    assert_eq!(peek_response(&WireCodec::Json, &json), Some((7, true)));
    let mp = mp_map(&[
        ("id", vec![7]),
        ("success", vec![0xc3]),
        ("result", deep_msgpack(1000)),
    ]);
    assert_eq!(peek_response(&WireCodec::MsgPack, &mp), Some((7, true)));
    for (codec, p) in [(WireCodec::Json, json), (WireCodec::MsgPack, mp)] {
        assert_eq!(
            decode_inbound(&codec, &p).unwrap(),
            Inbound::Response {
                id: 7,
                success: true
            }
        );
    }
}

#[test]
fn a_request_1000_levels_deep_is_routed_on_the_worker_side() {
    let json = deep_json("", "args", 1000, ",\"command\":\"run\",\"id\":9");
    let mp = mp_map(&[
        ("args", deep_msgpack(1000)),
        ("command", mp_str("run")),
        ("id", vec![9]),
    ]);
    for (codec, p) in [(WireCodec::Json, json), (WireCodec::MsgPack, mp)] {
        assert_eq!(
            decode_outbound(&codec, &p).unwrap(),
            Outbound::Request {
                id: 9,
                command: "run".into()
            }
        );
        let err = decode_host_call_args::<_, Value>(&codec, &p).unwrap_err();
        assert!(is_too_deep(&err, false), "{err:?}");
    }
}

/// Reading a deep frame's routing checks the frame as the decoder would: a
/// deep frame that is also broken is not routed.
#[test]
fn a_deep_frame_that_is_also_broken_is_still_an_error_of_its_kind() {
    let deep = |s: &str| s.replace("DEEP", &format!("{}{}", "[".repeat(500), "]".repeat(500)));
    let json_cases: &[(String, &str)] = &[
        (
            deep(r#"{"result":DEEP,"id":7,"success":true"#),
            "invalid_payload",
        ),
        (
            deep(r#"{"result":DEEP,"id":7,"success":true}x"#),
            "invalid_payload",
        ),
        (
            deep(r#"{"result":DEEP,"id":7 "success":true}"#),
            "invalid_payload",
        ),
        (
            deep(r#"{"result":[DEEP},"id":7,"success":true}"#),
            "invalid_payload",
        ),
        (
            deep(r#"{"result":[DEEP,],"id":7,"success":true}"#),
            "invalid_payload",
        ),
        (
            deep(r#"{"result":[DEEP,01],"id":7,"success":true}"#),
            "invalid_payload",
        ),
        (
            deep(r#"{"result":[DEEP,"a\x"],"id":7,"success":true}"#),
            "invalid_payload",
        ),
        (
            deep(r#"{"result":DEEP,"id":7,"id":8,"success":true}"#),
            "wrong_type",
        ),
        (
            deep(r#"{"result":DEEP,"id":DEEP,"success":true}"#),
            "wrong_type",
        ),
        (
            deep(r#"{"result":DEEP,"id":-1,"success":true}"#),
            "wrong_type",
        ),
        (deep(r#"{"result":DEEP,"success":true}"#), "missing_field"),
        (deep(r#"{"type":"nope","result":DEEP}"#), "wrong_type"),
        (deep(r#"DEEP"#), "wrong_type"),
        (deep(r#"[DEEP"#), "invalid_payload"),
    ];
    for (payload, kind) in json_cases {
        let err = decode_inbound(&WireCodec::Json, payload.as_bytes()).unwrap_err();
        assert_eq!(err.kind(), *kind, "{}: {err}", &payload[..30]);
    }
    // Escaped keys are still keys.
    let escaped = deep(r#"{"result":DEEP,"\u0069d":7,"success":true}"#);
    assert_eq!(
        decode_inbound(&WireCodec::Json, escaped.as_bytes()).unwrap(),
        Inbound::Response {
            id: 7,
            success: true
        }
    );

    let d = deep_msgpack(500);
    let mp_cases: Vec<(Vec<u8>, &str)> = vec![
        // Cut inside the deep value.
        (
            mp_map(&[("id", vec![7]), ("result", d[..200].to_vec())]),
            "invalid_payload",
        ),
        (
            mp_map(&[
                ("result", d.clone()),
                ("id", vec![0xc1]),
                ("success", vec![0xc3]),
            ]),
            "invalid_payload",
        ),
        (
            mp_map(&[
                ("result", d.clone()),
                ("id", d.clone()),
                ("success", vec![0xc3]),
            ]),
            "wrong_type",
        ),
        (
            mp_map(&[
                ("result", d.clone()),
                ("id", vec![0xff]),
                ("success", vec![0xc3]),
            ]),
            "wrong_type",
        ),
        (
            mp_map(&[("result", d.clone()), ("success", vec![0xc3])]),
            "missing_field",
        ),
        (d.clone(), "wrong_type"),
    ];
    for (payload, kind) in mp_cases {
        let err = decode_inbound(&WireCodec::MsgPack, &payload).unwrap_err();
        assert_eq!(err.kind(), kind, "{:02x?}: {err}", &payload[..12]);
    }
}

/// Depth and declared lengths a hostile worker might send: every decoder
/// returns a typed error, without recursing with the input (on a stack
/// smaller than a tokio worker's) or allocating what a length claims.
#[test]
fn hostile_depth_and_lengths_are_typed_errors() {
    on_small_stack(|| {
        let million = 1_000_000;
        let mut inputs: Vec<(WireCodec, Vec<u8>)> = vec![
            (WireCodec::Json, "[".repeat(million).into_bytes()),
            (WireCodec::Json, "{\"a\":".repeat(million).into_bytes()),
            (
                WireCodec::Json,
                deep_json("\"id\":1,\"success\":true,", "result", million, ""),
            ),
            (WireCodec::MsgPack, vec![0x91; million]),
            (WireCodec::MsgPack, [0x81, 0xa1, b'a'].repeat(million)),
            (
                WireCodec::MsgPack,
                mp_map(&[
                    ("id", vec![1]),
                    ("success", vec![0xc3]),
                    ("result", deep_msgpack(million)),
                ]),
            ),
        ];
        // Declared lengths of 4 G elements or bytes with nothing behind them.
        for marker in [0xdd, 0xdf, 0xdb, 0xc6, 0xc9] {
            let huge = vec![marker, 0xff, 0xff, 0xff, 0xff, 0x00];
            inputs.push((WireCodec::MsgPack, huge.clone()));
            inputs.push((
                WireCodec::MsgPack,
                mp_map(&[
                    ("id", vec![1]),
                    ("success", vec![0xc3]),
                    ("result", huge.clone()),
                ]),
            ));
            inputs.push((
                WireCodec::MsgPack,
                mp_map(&[
                    ("result", huge.clone()),
                    ("id", vec![1]),
                    ("success", vec![0xc3]),
                ]),
            ));
            inputs.push((
                WireCodec::MsgPack,
                mp_map(&[
                    ("type", mp_str("host_call")),
                    ("id", vec![1]),
                    ("function", mp_str("f")),
                    ("args", huge),
                ]),
            ));
        }
        for (codec, p) in &inputs {
            let _ = decode_inbound(codec, p);
            let _ = decode_outbound(codec, p);
            let _ = peek_response(codec, p);
            let _ = decode_response::<_, Value>(codec, p);
            let _ = decode_response::<_, Vec<u64>>(codec, p);
            let _ = decode_chunk::<_, Value>(codec, p);
            let _ = decode_host_call_args::<_, Value>(codec, p);
            assert!(codec.decode::<Value>(p).is_err());
            let mut framed = BytesMut::new();
            framed.put_u32(p.len() as u32);
            framed.extend_from_slice(p);
            let frame = FrameCodec::new(64 << 20)
                .decode(&mut framed)
                .unwrap()
                .unwrap();
            assert_eq!(&frame[..], &p[..]);
        }
    });
}

/// Brackets inside strings are text, not depth.
#[test]
fn brackets_in_strings_do_not_count() {
    let text = "[{".repeat(1000);
    for codec in CODECS {
        let payload = response(&codec, &json!({"text": text})).unwrap();
        let v: Value = decode_response(&codec, &payload).unwrap().unwrap();
        assert_eq!(v["text"], text.as_str());
    }
}
