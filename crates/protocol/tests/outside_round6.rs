//! Round 6 of outside review: what docs/protocol.md promises of the
//! encoders that no earlier test reached (section 3, "Codecs": MessagePack
//! floats are 64-bit, integers go through whole, only binary data is
//! `bin`), and JSON and MessagePack giving a worker the same values for
//! the same typed arguments.

use bytes::BytesMut;
use serde::Serialize;
use serde_json::{json, Value};
use snakepit_protocol::{
    decode_inbound, decode_response, encode_frame, encode_request, Error, Inbound, MsgPack,
    Request, WireCodec,
};

/// A caller's typed arguments using Rust types that have no JSON or
/// MessagePack type of their own.
#[derive(Serialize)]
struct Unit;

#[derive(Serialize)]
struct Typed {
    small_u128: u128,
    small_i128: i128,
    top_u128: u128,
    bottom_i128: i128,
    ratio: f32,
    embedding: Vec<f32>,
    tiny: f32,
    huge: f32,
    marker: Unit,
    unit: (),
}

fn typed() -> Typed {
    Typed {
        small_u128: 1,
        small_i128: -5,
        top_u128: u128::from(u64::MAX),
        bottom_i128: i128::from(i64::MIN),
        ratio: 0.1,
        embedding: vec![0.5, 0.1, -3.25, 1e-7],
        tiny: f32::MIN_POSITIVE,
        huge: f32::MAX,
        marker: Unit,
        unit: (),
    }
}

/// What a worker reads from the JSON text of [`typed`]: the same numbers,
/// a unit struct as `null`.
fn as_json_reads_it() -> Value {
    let text = serde_json::to_string(&typed()).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The payload of a frame, with its header checked.
fn payload(frame: &BytesMut) -> &[u8] {
    let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 4);
    &frame[4..]
}

/// docs/protocol.md, section 3: under MessagePack "integers use the
/// smallest encoding; floats are 64-bit", and "binary data is `bin`". A
/// caller's `u128`/`i128` that fits went out as 16 bytes of `bin` (the
/// worker got bytes where JSON gives it the number), an `f32` as a 32-bit
/// float (the worker got 0.10000000149011612 where JSON gives it 0.1), a
/// unit struct as an empty array (JSON: `null`). Each is now written as
/// the value JSON gives the worker, in both `encode_frame` and
/// `encode_request`.
#[test]
fn typed_arguments_reach_a_msgpack_worker_as_they_reach_a_json_one() {
    let expected = as_json_reads_it();
    assert_eq!(
        expected["ratio"],
        json!(0.1),
        "JSON writes an f32's shortest decimal"
    );
    assert_eq!(expected["marker"], Value::Null);

    // The MessagePack bytes of the typed value are those of the value a
    // JSON worker reads: same types, same numbers, same encoding.
    let mut typed_frame = BytesMut::new();
    encode_frame(&MsgPack, &typed(), usize::MAX, &mut typed_frame).unwrap();
    let mut value_frame = BytesMut::new();
    encode_frame(&MsgPack, &expected, usize::MAX, &mut value_frame).unwrap();
    assert_eq!(
        payload(&typed_frame),
        payload(&value_frame),
        "a typed value is written as the value JSON carries"
    );
    let read: Value = rmp_serde::from_slice(payload(&typed_frame)).unwrap();
    assert_eq!(read, expected);
    assert!(
        !payload(&typed_frame).contains(&0xca),
        "no 32-bit float marker in this payload"
    );

    // The same through the pool's request encoder, for both codecs.
    let args = typed();
    let request = Request::new(9, "embed", &args);
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let mut frame = BytesMut::new();
        encode_request(&codec, &request, usize::MAX, &mut frame).unwrap();
        let sent: Value = match codec {
            WireCodec::Json => serde_json::from_slice(payload(&frame)).unwrap(),
            _ => rmp_serde::from_slice(payload(&frame)).unwrap(),
        };
        assert_eq!(sent["args"], expected, "{codec}");
        assert_eq!(sent["id"], 9, "{codec}");
    }
}

/// An integer outside what MessagePack holds (-2^63 to 2^64 - 1) cannot go
/// as a number: it is refused before anything is written (the pool's call
/// then fails with `Error::Codec` and never runs) instead of going as 16
/// bytes of `bin`. JSON writes its digits, as serde_json does.
#[test]
fn an_integer_msgpack_cannot_hold_is_refused_and_nothing_is_written() {
    #[derive(Serialize)]
    struct Big {
        n: i128,
    }
    for n in [
        i128::from(u64::MAX) + 1,
        i128::from(i64::MIN) - 1,
        i128::MAX,
        i128::MIN,
    ] {
        let mut buf = BytesMut::from(&b"kept"[..]);
        let err = encode_frame(&MsgPack, &Big { n }, usize::MAX, &mut buf).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Encode {
                    codec: "msgpack",
                    ..
                }
            ),
            "{n}: {err:?}"
        );
        assert_eq!(&buf[..], b"kept", "{n}: nothing written");
        let big = Big { n };
        let err = encode_request(
            &WireCodec::MsgPack,
            &Request::new(1, "x", &big),
            usize::MAX,
            &mut buf,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Encode { .. }), "{n}: {err:?}");
        assert_eq!(&buf[..], b"kept", "{n}: nothing written by encode_request");

        let mut text = BytesMut::new();
        encode_request(
            &WireCodec::Json,
            &Request::new(1, "x", &big),
            usize::MAX,
            &mut text,
        )
        .unwrap();
        let text = std::str::from_utf8(&text[4..]).unwrap();
        assert!(text.contains(&format!("{{\"n\":{n}}}")), "{text}");
    }
    // `u128` above 2^64 - 1 alike.
    #[derive(Serialize)]
    struct BigU {
        n: u128,
    }
    let mut buf = BytesMut::new();
    let err = encode_frame(&MsgPack, &BigU { n: u128::MAX }, usize::MAX, &mut buf).unwrap_err();
    assert!(matches!(err, Error::Encode { .. }), "{err:?}");
    assert!(buf.is_empty());
}

/// NaN and the infinities of an `f32` go as the 64-bit float they are
/// under MessagePack ("MessagePack carries them"), not as `null`.
#[test]
fn non_finite_f32_values_go_as_64_bit_floats_under_msgpack() {
    for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut frame = BytesMut::new();
        encode_frame(&MsgPack, &[v], usize::MAX, &mut frame).unwrap();
        let p = payload(&frame);
        assert_eq!(p[0], 0x91, "an array of one");
        assert_eq!(p[1], 0xcb, "a 64-bit float");
        let back = f64::from_be_bytes(p[2..10].try_into().unwrap());
        assert_eq!(back.is_nan(), v.is_nan());
        if !v.is_nan() {
            assert_eq!(back, f64::from(v));
        }
    }
}

/// docs/protocol.md, section 3: a result keyed the same way twice inside
/// the data (not the frame's own fields) is read alike in both codecs:
/// the last value wins, as serde_json reads JSON text.
#[test]
fn a_key_given_twice_inside_a_result_is_read_alike_in_both_codecs() {
    let text = br#"{"id":4,"success":true,"result":{"a":1,"b":[true],"a":2}}"#;
    // The same frame in MessagePack, written by hand: a map of 3, its
    // result a map of 3 with the key "a" twice.
    let mut mp = vec![0x83];
    mp.extend_from_slice(&[0xa2, b'i', b'd', 0x04]);
    mp.extend_from_slice(&[0xa7, b's', b'u', b'c', b'c', b'e', b's', b's', 0xc3]);
    mp.extend_from_slice(&[0xa6, b'r', b'e', b's', b'u', b'l', b't', 0x83]);
    mp.extend_from_slice(&[0xa1, b'a', 0x01, 0xa1, b'b', 0x91, 0xc3, 0xa1, b'a', 0x02]);
    for (codec, payload) in [(WireCodec::Json, &text[..]), (WireCodec::MsgPack, &mp[..])] {
        assert_eq!(
            decode_inbound(&codec, payload).unwrap(),
            Inbound::Response {
                id: 4,
                success: true
            },
            "{codec}"
        );
        let result: Value = decode_response(&codec, payload).unwrap().unwrap();
        assert_eq!(result, json!({"a": 2, "b": [true]}), "{codec}");
    }
}

/// docs/protocol.md, section 5: a chunk's payload is its `data`, a host
/// call's its `args`. Each reader took the other name as an alias of its
/// own, so a chunk that also carried an `args` field (or a host call a
/// `data` field) failed as a frame giving its field twice, and a chunk
/// with `args` alone had them read as its data. Each now reads its own
/// field and ignores the other, as any field it does not know.
#[test]
fn a_chunk_reads_only_data_and_a_host_call_only_args() {
    let chunk = json!({"type": "chunk", "id": 3, "data": {"part": 1}, "args": {"echo": true}});
    let call = json!({"type": "host_call", "id": 2, "request_id": 3, "function": "session.get",
        "args": {"key": "k"}, "data": [1, 2]});
    let lone = json!({"type": "chunk", "id": 3, "args": 7});
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let bytes = |v: &Value| match codec {
            WireCodec::Json => serde_json::to_vec(v).unwrap(),
            _ => rmp_serde::to_vec_named(v).unwrap(),
        };
        let got: Value = snakepit_protocol::decode_chunk(&codec, &bytes(&chunk)).unwrap();
        assert_eq!(got, json!({"part": 1}), "{codec}");
        let got: Value = snakepit_protocol::decode_host_call_args(&codec, &bytes(&call)).unwrap();
        assert_eq!(got, json!({"key": "k"}), "{codec}");
        let got: Value = snakepit_protocol::decode_chunk(&codec, &bytes(&lone)).unwrap();
        assert_eq!(
            got,
            Value::Null,
            "{codec}: a chunk's `args` are not its data"
        );
    }
}

/// For every kind of finite `f32` (normal, subnormal, huge, tiny, both
/// signs, zeros), the 64-bit float a MessagePack worker gets is the one a
/// JSON worker parses from serde_json's text of it.
#[test]
fn an_f32_reaches_a_msgpack_worker_as_its_json_text_reads() {
    let mut checked = 0;
    for bits in (0..=u32::MAX)
        .step_by(9_973)
        .chain([0, 1, 0x8000_0000, 0x7f7f_ffff])
    {
        let v = f32::from_bits(bits);
        if !v.is_finite() {
            continue;
        }
        let text = serde_json::to_string(&v).unwrap();
        let json_reads: f64 = text.parse().unwrap();
        let mut frame = BytesMut::new();
        encode_frame(&MsgPack, &[v], usize::MAX, &mut frame).unwrap();
        let p = payload(&frame);
        assert_eq!(&p[..2], &[0x91, 0xcb], "{v:e}: a 64-bit float");
        let sent = f64::from_be_bytes(p[2..10].try_into().unwrap());
        assert_eq!(
            sent.to_bits(),
            json_reads.to_bits(),
            "{v:e}: JSON writes {text}"
        );
        checked += 1;
    }
    assert!(checked > 400_000, "{checked}");
}

/// docs/protocol.md, section 3: a bridge writes a handler's MessagePack
/// `ext` back as the same `ext`. Such a reply, in every `ext` form
/// (`fixext` 1 to 16, `ext` 8, 16 and 32), and a timestamp (type -1), is
/// routed to its call and read by a typed reader that takes any value; a
/// reader of JSON values fails on it alone, as on bytes, with a mismatch
/// (its call's `Error::Codec`), never as a broken frame.
#[test]
fn a_reply_carrying_msgpack_ext_values_is_routed_and_fails_only_a_json_reader() {
    let exts: Vec<Vec<u8>> = vec![
        vec![0xd4, 0x05, 0xaa],
        vec![0xd5, 0x05, 0xaa, 0xbb],
        vec![0xd6, 0xff, 0, 0, 0, 1],
        vec![0xd7, 0x05, 1, 2, 3, 4, 5, 6, 7, 8],
        [vec![0xd8, 0x05], vec![9; 16]].concat(),
        vec![0xc7, 0x03, 0x05, 1, 2, 3],
        vec![0xc8, 0x00, 0x02, 0x05, 1, 2],
        vec![0xc9, 0, 0, 0, 0x01, 0x05, 7],
        vec![0xc7, 0x00, 0x05],
    ];
    for ext in exts {
        // {"id": 9, "success": true, "result": [ext]}
        let mut frame = vec![0x83, 0xa2, b'i', b'd', 0x09];
        frame.extend_from_slice(&[0xa7, b's', b'u', b'c', b'c', b'e', b's', b's', 0xc3]);
        frame.extend_from_slice(&[0xa6, b'r', b'e', b's', b'u', b'l', b't', 0x91]);
        frame.extend_from_slice(&ext);
        let what = format!("{ext:02x?}");
        assert_eq!(
            decode_inbound(&MsgPack, &frame).unwrap(),
            Inbound::Response {
                id: 9,
                success: true
            },
            "{what}"
        );
        let ignored: serde::de::IgnoredAny = decode_response(&MsgPack, &frame)
            .unwrap_or_else(|e| panic!("{what}: {e:?}"))
            .unwrap();
        let _ = ignored;
        match decode_response::<_, Value>(&MsgPack, &frame) {
            Err(Error::Mismatch { .. }) => {}
            other => panic!("{what}: a JSON value reader: {other:?}"),
        }
    }
}

/// docs/protocol.md, section 2: the pool sends no payload deeper than the
/// decoders read. A unit struct went under MessagePack as an empty array,
/// a level the depth count did not see: arguments at the limit with one
/// at the bottom made a frame one level too deep for every reader. It is
/// nil now, as JSON's `null`, and such a request reads back.
#[test]
fn a_unit_struct_at_the_depth_limit_makes_a_frame_every_reader_reads() {
    /// `[[[...Unit...]]]`, `levels` arrays deep.
    struct Nest(usize);
    impl Serialize for Nest {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeSeq;
            if self.0 == 0 {
                return Unit.serialize(s);
            }
            let mut seq = s.serialize_seq(Some(1))?;
            seq.serialize_element(&Nest(self.0 - 1))?;
            seq.end()
        }
    }
    // The request's map, `args`, then 125 arrays: 127 levels with `args`
    // at depth 2 being a map of one key.
    #[derive(Serialize)]
    struct Args {
        deep: Nest,
    }
    let args = Args {
        deep: Nest(snakepit_protocol::MAX_DEPTH - 2),
    };
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let mut frame = BytesMut::new();
        encode_request(
            &codec,
            &Request::new(5, "deep", &args),
            usize::MAX,
            &mut frame,
        )
        .unwrap_or_else(|e| panic!("{codec}: {e:?}"));
        let value: Value = snakepit_protocol::decode_host_call_args(&codec, payload(&frame))
            .unwrap_or_else(|e| panic!("{codec}: the request reads back: {e:?}"));
        let mut v = &value["deep"];
        let mut levels = 0;
        while let Value::Array(a) = v {
            v = &a[0];
            levels += 1;
        }
        assert_eq!(levels, snakepit_protocol::MAX_DEPTH - 2, "{codec}");
        assert_eq!(*v, Value::Null, "{codec}");
    }
}
