//! Property tests: any message survives a round trip through either codec,
//! however the byte stream is split, and no input makes the decoder panic.

use bytes::BytesMut;
use proptest::prelude::*;
use serde_json::{json, Value};
use snakepit_protocol::{
    decode_inbound, decode_response, encode_frame, peek_response, Codec, FrameCodec, Response,
    WireCodec,
};
use tokio_util::codec::Decoder;

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

fn codec() -> impl Strategy<Value = WireCodec> {
    prop_oneof![Just(WireCodec::Json), Just(WireCodec::MsgPack)]
}

proptest! {
    #[test]
    fn replies_round_trip_across_arbitrary_splits(
        codec in codec(),
        results in prop::collection::vec(value(), 1..5),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut wire = BytesMut::new();
        for (i, r) in results.iter().enumerate() {
            let reply = Response::ok(i as u64 + 1, r);
            encode_frame(&codec, &reply, 1 << 20, &mut wire).unwrap();
        }
        // Feed the stream in pieces cut at arbitrary points.
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let mut framer = FrameCodec::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut at = 0;
        for p in points {
            buf.extend_from_slice(&wire[at..p]);
            at = p;
            while let Some(frame) = framer.decode(&mut buf).unwrap() {
                decode_inbound(&codec, &frame).unwrap();
                got.push(decode_response::<_, Value>(&codec, &frame).unwrap().unwrap());
            }
        }
        prop_assert!(framer.decode_eof(&mut buf).unwrap().is_none());
        prop_assert_eq!(got, results);
    }

    #[test]
    fn arbitrary_bytes_never_panic(codec in codec(), bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut buf = BytesMut::from(&bytes[..]);
        let mut framer = FrameCodec::new(128);
        while let Ok(Some(frame)) = framer.decode(&mut buf) {
            let _ = decode_inbound(&codec, &frame);
            let _ = decode_response::<_, Value>(&codec, &frame);
            let _ = peek_response(&codec, &frame);
        }
        let _ = framer.decode_eof(&mut buf);
        let _ = codec.decode::<Value>(&bytes);
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_decode(
        codec in codec(),
        id in any::<u64>(),
        success in any::<bool>(),
        result in value(),
    ) {
        let err = snakepit_protocol::RemoteError::new("E", "m");
        let reply = if success {
            Response::ok(id, &result)
        } else {
            Response::err(id, &err)
        };
        let mut buf = BytesMut::new();
        encode_frame(&codec, &reply, usize::MAX, &mut buf).unwrap();
        let payload = &buf[4..];
        // Our encoder writes `id` then `success` first: the fast path must see it.
        prop_assert_eq!(peek_response(&codec, payload), Some((id, success)));
        match decode_inbound(&codec, payload).unwrap() {
            snakepit_protocol::Inbound::Response { id: i, success: s } => {
                prop_assert_eq!((i, s), (id, success));
            }
            other => prop_assert!(false, "not a response: {:?}", other),
        }
        // Any prefix the fast path accepts names the same id and outcome.
        for cut in 0..payload.len() {
            if let Some(got) = peek_response(&codec, &payload[..cut]) {
                prop_assert_eq!(got, (id, success));
            }
        }
    }

    #[test]
    fn oversize_lengths_fail_from_the_header_alone(len in 129u32..) {
        let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
        let err = FrameCodec::new(128).decode(&mut buf).unwrap_err();
        prop_assert_eq!(err.kind(), "too_large");
        // Nothing was reserved for the announced payload.
        prop_assert!(buf.capacity() < 1024);
    }
}

#[test]
fn encoding_refuses_frames_above_the_maximum() {
    let big = json!({"data": "x".repeat(200)});
    let mut buf = BytesMut::from(&b"kept"[..]);
    let err = encode_frame(&WireCodec::Json, &big, 100, &mut buf).unwrap_err();
    assert_eq!(err.kind(), "too_large");
    assert_eq!(
        &buf[..],
        b"kept",
        "a failed encode leaves the buffer as it was"
    );
}
