//! The promises of snakepit-protocol's API docs (rustdoc) that neither the
//! doc-tests nor the other tests show.
#![cfg(all(feature = "json", feature = "msgpack"))]

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::{json, Value};
use snakepit_protocol::{
    decode_inbound, decode_response, encode_frame, encode_request, Codec, Error, FrameCodec,
    Inbound, Json, MsgPack, RemoteError, Request, WireCodec, DEFAULT_MAX_FRAME_SIZE, HEADER_LEN,
    MAX_DEPTH,
};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{Decoder, Encoder, FramedRead};

/// `FrameCodec`: "a stream that ends mid-frame fails with
/// `Error::Truncated`", naming the bytes the frame needed (header
/// included) and the bytes that arrived.
#[test]
fn a_stream_that_ends_mid_frame_is_truncated_with_what_was_needed_and_what_came() {
    let mut codec = FrameCodec::new(1024);
    // Inside the payload: 4 + 10 needed, 4 + 3 came.
    let mut buf = BytesMut::from(&b"\x00\x00\x00\x0aabc"[..]);
    assert!(
        codec.decode(&mut buf).unwrap().is_none(),
        "not yet an error"
    );
    let err = codec.decode_eof(&mut buf).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Truncated {
                expected: 14,
                got: 7
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.kind(), "truncated");
    // Inside the header: the header is what was needed.
    let mut buf = BytesMut::from(&b"\x00\x00"[..]);
    let err = codec.decode_eof(&mut buf).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Truncated {
                expected: HEADER_LEN,
                got: 2
            }
        ),
        "{err:?}"
    );
    // A stream that ends between frames is no error.
    let mut buf = BytesMut::from(&b"\x00\x00\x00\x01x"[..]);
    assert_eq!(&codec.decode_eof(&mut buf).unwrap().unwrap()[..], b"x");
    assert!(codec.decode_eof(&mut buf).unwrap().is_none());
}

/// The same through `FramedRead`, as a pool reads a worker's stdout: the
/// frames before the cut, then `Truncated`.
#[tokio::test]
async fn framed_read_yields_the_whole_frames_then_truncated() {
    let (mut tx, rx) = tokio::io::duplex(64);
    tx.write_all(b"\x00\x00\x00\x02hi\x00\x00\x00\x09half")
        .await
        .unwrap();
    drop(tx);
    let mut frames = FramedRead::new(rx, FrameCodec::default());
    assert_eq!(&frames.next().await.unwrap().unwrap()[..], b"hi");
    let err = frames.next().await.unwrap().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Truncated {
                expected: 13,
                got: 8
            }
        ),
        "{err:?}"
    );
}

/// `DEFAULT_MAX_FRAME_SIZE`: "64 MiB", the default codec's; a frame of
/// exactly the maximum passes both ways, one byte more does not.
#[test]
fn the_maximum_is_inclusive_and_the_default_is_64_mib() {
    assert_eq!(DEFAULT_MAX_FRAME_SIZE, 64 * 1024 * 1024);
    assert_eq!(
        FrameCodec::default().max_frame_size(),
        DEFAULT_MAX_FRAME_SIZE
    );
    assert_eq!(FrameCodec::new(5).max_frame_size(), 5);
    let mut codec = FrameCodec::new(5);
    let mut buf = BytesMut::new();
    codec
        .encode(Bytes::from_static(b"12345"), &mut buf)
        .unwrap();
    assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"12345");
    let mut buf = BytesMut::from(&b"\x00\x00\x00\x06"[..]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(
        matches!(err, Error::FrameTooLarge { len: 6, max: 5 }),
        "{err:?}"
    );
    // `encode_frame` too: `null` is 4 bytes of JSON.
    let mut buf = BytesMut::new();
    encode_frame(&Json, &Value::Null, 4, &mut buf).unwrap();
    assert_eq!(&buf[..], b"\x00\x00\x00\x04null");
    let err = encode_frame(&Json, &Value::Null, 3, &mut BytesMut::new()).unwrap_err();
    assert!(
        matches!(err, Error::FrameTooLarge { len: 4, max: 3 }),
        "{err:?}"
    );
}

/// `encode_request`: "The same errors ... nothing written on error", in
/// both codecs, into a buffer that already holds earlier frames.
#[test]
fn encode_request_leaves_the_buffer_as_it_was_when_it_refuses() {
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let mut buf = BytesMut::from(&b"earlier frames"[..]);
        let big = json!({"data": "x".repeat(500)});
        let err = encode_request(&codec, &Request::new(1, "run", &big), 100, &mut buf).unwrap_err();
        assert!(
            matches!(err, Error::FrameTooLarge { max: 100, .. }),
            "{codec}: {err:?}"
        );
        assert_eq!(&buf[..], b"earlier frames", "{codec}");
        let deep = (0..MAX_DEPTH).fold(Value::Null, |v, _| json!([v]));
        let err =
            encode_request(&codec, &Request::new(2, "run", &deep), 1 << 20, &mut buf).unwrap_err();
        assert!(
            matches!(err, Error::TooDeep { encoding: true, .. }),
            "{codec}: {err:?}"
        );
        assert_eq!(&buf[..], b"earlier frames", "{codec}");
        // And what it does write follows what was there.
        encode_request(
            &codec,
            &Request::new(3, "run", &json!({})),
            1 << 20,
            &mut buf,
        )
        .unwrap();
        assert!(buf.starts_with(b"earlier frames"));
        let mut frame = buf.split_off(14);
        let payload = FrameCodec::default().decode(&mut frame).unwrap().unwrap();
        let back: Value = codec.decode(&payload).unwrap();
        assert_eq!(back["id"], 3, "{codec}");
    }
}

/// `encode_request`: "Frames a request as `encode_frame` does, byte for
/// byte", every optional field set, in both codecs.
#[test]
fn encode_request_matches_encode_frame_with_every_field_set() {
    let args = json!({"a": [1, 2.5, "é", null, {"b": true}]});
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let mut r = Request::new(u64::MAX, "do \"this\"\n", &args);
        r.session_id = Some("user_\u{1F600}");
        r.timeout_ms = Some(1234);
        r.stream = true;
        r.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        r.tracestate = Some("k=v");
        r.baggage = Some("a=1,b=2");
        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
        encode_request(&codec, &r, 1 << 20, &mut a).unwrap();
        encode_frame(&codec, &r, 1 << 20, &mut b).unwrap();
        assert_eq!(a, b, "{codec}");
    }
}

/// `WireCodec`: chosen "from configuration, say": names are read in any
/// case, `messagepack` is MessagePack too, in `FromStr` and in serde
/// alike; `Display` is its name; the default is JSON; an unknown name's
/// error lists the known ones (`WireCodec::NAMES`).
#[test]
fn codec_names_read_from_configuration() {
    for (name, codec) in [
        ("json", WireCodec::Json),
        ("JSON", WireCodec::Json),
        ("msgpack", WireCodec::MsgPack),
        ("MsgPack", WireCodec::MsgPack),
        ("messagepack", WireCodec::MsgPack),
    ] {
        assert_eq!(name.parse::<WireCodec>().unwrap(), codec, "{name}");
    }
    let from_config: WireCodec = serde_json::from_str(r#""messagepack""#).unwrap();
    assert_eq!(from_config, WireCodec::MsgPack);
    assert_eq!(
        serde_json::to_string(&WireCodec::MsgPack).unwrap(),
        r#""msgpack""#
    );
    assert_eq!(WireCodec::MsgPack.to_string(), "msgpack");
    assert_eq!(WireCodec::Json.to_string(), WireCodec::Json.name());
    assert_eq!((Json.name(), MsgPack.name()), ("json", "msgpack"));
    assert_eq!(WireCodec::default(), WireCodec::Json);
    assert_eq!(WireCodec::NAMES, ["json", "msgpack"]);
    let err = "yaml".parse::<WireCodec>().unwrap_err();
    assert_eq!(err.0, "yaml");
    let text = err.to_string();
    assert!(
        text.contains("yaml") && text.contains("json") && text.contains("msgpack"),
        "{text}"
    );
}

/// `decode_response`: "A successful reply with no `result` (or `null`)
/// decodes as `T` from unit, so `serde_json::Value::Null`, `()` and
/// `Option::None` all work", in both codecs; a failed reply is
/// `Ok(Err(remote))`.
#[test]
fn a_reply_without_result_decodes_as_null_unit_or_none_in_both_codecs() {
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        for reply in [
            json!({"id": 1, "success": true}),
            json!({"id": 1, "success": true, "result": null}),
        ] {
            let mut payload = BytesMut::new();
            codec.encode(&reply, &mut payload).unwrap();
            let v: Value = decode_response(&codec, &payload).unwrap().unwrap();
            assert_eq!(v, Value::Null, "{codec} {reply}");
            let (): () = decode_response(&codec, &payload).unwrap().unwrap();
            let o: Option<u32> = decode_response(&codec, &payload).unwrap().unwrap();
            assert_eq!(o, None, "{codec} {reply}");
        }
        let mut payload = BytesMut::new();
        let failed = json!({"id": 2, "success": false,
            "error": {"type": "Cancelled", "message": "stop", "traceback": "tb"}});
        codec.encode(&failed, &mut payload).unwrap();
        let remote: RemoteError = decode_response::<_, Value>(&codec, &payload)
            .unwrap()
            .unwrap_err();
        assert_eq!(remote.kind.as_deref(), Some("Cancelled"));
        assert_eq!(remote.traceback.as_deref(), Some("tb"));
        assert!(remote.is_cancelled(), "{remote:?}");
        assert!(!RemoteError::new("ValueError", "x").is_cancelled());
    }
}

/// `Error::kind`: "A frame for an unknown id is `wrong_type`", and so is
/// an unknown frame `type` (`UnknownFrameType`, what `decode_inbound`
/// answers for one); the error is `Clone`, so that "every call a broken
/// worker had in flight gets its own".
#[test]
fn unknown_ids_and_frame_types_are_wrong_type_and_errors_clone() {
    let unknown_id = Error::UnknownId {
        kind: "response",
        id: 9,
    };
    assert_eq!(unknown_id.kind(), "wrong_type");
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let mut payload = BytesMut::new();
        codec
            .encode(&json!({"type": "telepathy", "id": 1}), &mut payload)
            .unwrap();
        let err = decode_inbound(&codec, &payload).unwrap_err();
        assert!(
            matches!(&err, Error::UnknownFrameType(t) if t == "telepathy"),
            "{codec}: {err:?}"
        );
        assert_eq!(err.kind(), "wrong_type");
    }
    let io = Error::from(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "gone"));
    let copy = io.clone();
    assert_eq!((io.kind(), copy.kind()), ("io", "io"));
    assert_eq!(io.to_string(), copy.to_string());
}

/// `Inbound::Response`: "`id` 0 is a worker's report that it could not
/// decode a frame": it decodes as a failed reply to id 0.
#[test]
fn a_workers_report_of_an_unreadable_frame_is_a_failed_response_with_id_0() {
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let mut payload = BytesMut::new();
        codec
            .encode(
                &json!({"id": 0, "success": false, "error": {"type": "ProtocolError", "message": "bad frame"}}),
                &mut payload,
            )
            .unwrap();
        assert_eq!(
            decode_inbound(&codec, &payload).unwrap(),
            Inbound::Response {
                id: 0,
                success: false
            },
            "{codec}"
        );
    }
}

/// `Codec::decode`: "Deserialises one value from the whole of `src`":
/// bytes after the value are an error, not silently dropped.
#[test]
fn json_decodes_the_whole_payload_and_refuses_trailing_bytes() {
    let err = Json.decode::<Value>(b"{\"id\":1} {\"id\":2}").unwrap_err();
    assert_eq!(err.kind(), "invalid_payload", "{err:?}");
    assert_eq!(Json.decode::<Value>(b" {\"id\":1} ").unwrap()["id"], 1);
}

/// The same promise for MessagePack.
#[test]
fn msgpack_decodes_the_whole_payload_and_refuses_trailing_bytes() {
    let mut payload = BytesMut::new();
    MsgPack.encode(&json!({"id": 1}), &mut payload).unwrap();
    payload.extend_from_slice(&[0x01, 0x02]);
    assert!(MsgPack.decode::<Value>(&payload).is_err());
}

/// A frame that names a field twice is told as such, in both codecs (it was
/// "expected a map", of a map).
#[test]
fn a_frame_with_a_field_given_twice_says_so() {
    use snakepit_protocol::decode_inbound;
    let json = br#"{"id":2,"id":999,"success":true,"result":1}"#;
    let e = decode_inbound(&WireCodec::Json, json).unwrap_err();
    assert_eq!(e.kind(), "wrong_type");
    assert!(e.to_string().contains("without duplicate fields"), "{e}");
}

/// `decode_response`: a well-formed reply whose result is not a `T` is
/// `Error::Mismatch` (the reader's fault); a broken reply (a field given
/// twice, a `success` that is no bool, an `error` that is neither string
/// nor map) is `Error::WrongType` of the `payload` (the peer's fault),
/// whatever type the reader asked for.
#[test]
fn a_broken_reply_is_told_apart_from_a_result_of_another_type() {
    let json = WireCodec::Json;
    let wrong_result = br#"{"type":"response","id":1,"success":true,"result":"text"}"#;
    assert!(matches!(
        decode_response::<_, u32>(&json, wrong_result),
        Err(Error::Mismatch { .. })
    ));
    for (broken, expected) in [
        (
            &br#"{"type":"response","id":1,"success":true,"result":7,"success":true}"#[..],
            "a map without duplicate fields",
        ),
        (
            br#"{"type":"response","id":1,"success":false,"error":42}"#,
            "a response: `success` a bool, `error` a string or map",
        ),
        (
            br#"{"type":"response","id":1,"success":"yes","result":7}"#,
            "a response: `success` a bool, `error` a string or map",
        ),
    ] {
        for result in [
            decode_response::<_, u32>(&json, broken).map(|_| ()),
            decode_response::<_, String>(&json, broken).map(|_| ()),
            decode_response::<_, Value>(&json, broken).map(|_| ()),
        ] {
            match result {
                Err(Error::WrongType { field, expected: e }) => {
                    assert_eq!(
                        (field, e),
                        ("payload", expected),
                        "{}",
                        String::from_utf8_lossy(broken)
                    )
                }
                other => panic!("{}: {other:?}", String::from_utf8_lossy(broken)),
            }
        }
    }
    // The same in MessagePack: a map with `success` twice.
    let mut payload = Vec::new();
    rmp::encode::write_map_len(&mut payload, 3).unwrap();
    for (k, v) in [("id", true), ("success", true), ("success", true)] {
        rmp::encode::write_str(&mut payload, k).unwrap();
        rmp::encode::write_bool(&mut payload, v).unwrap();
    }
    assert!(matches!(
        decode_response::<_, Value>(&WireCodec::MsgPack, &payload),
        Err(Error::WrongType {
            field: "payload",
            ..
        })
    ));
}
