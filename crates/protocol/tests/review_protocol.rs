//! The protocol crate against docs/protocol.md: what the host writes, and
//! how the routing decoders read what a worker writes.
#![cfg(all(feature = "json", feature = "msgpack"))]

use std::collections::BTreeMap;

use bytes::BytesMut;
use serde_json::Value;
use snakepit_protocol::{
    decode_host_call_args, decode_inbound, encode_request, peek_response, Inbound, Json, MsgPack,
    Request, WireCodec,
};

fn request_payload(codec: WireCodec, args: &BTreeMap<u32, &str>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_request(&codec, &Request::new(7, "echo", args), 1 << 20, &mut buf).unwrap();
    buf[4..].to_vec()
}

/// docs/protocol.md section 3: under MessagePack a map's keys are what the
/// caller's data has, and every side accepts them. A typed call whose
/// arguments hold a map with integer keys goes out with string keys in JSON
/// (`{"1":"a"}`) and with integer keys in MessagePack; this crate's reader of
/// request and host-call arguments reads both as the same `Value`, keyed by
/// the string JSON writes.
#[test]
fn a_typed_map_argument_is_keyed_as_the_codec_writes_it_and_read_back_alike() {
    let args = BTreeMap::from([(1u32, "a")]);

    let json = request_payload(WireCodec::Json, &args);
    let text = String::from_utf8(json.clone()).unwrap();
    assert!(text.contains(r#""args":{"1":"a"}"#), "{text}");
    let from_json: Value = decode_host_call_args(&Json, &json).unwrap();
    assert_eq!(from_json, serde_json::json!({"1": "a"}));

    let msgpack = request_payload(WireCodec::MsgPack, &args);
    // "args", then a map of one entry whose key is the integer 1.
    let wanted = b"\xa4args\x81\x01\xa1a";
    assert!(
        msgpack.windows(wanted.len()).any(|w| w == wanted),
        "{msgpack:02x?}"
    );
    let from_msgpack: Value = decode_host_call_args(&MsgPack, &msgpack).unwrap();
    assert_eq!(from_msgpack, serde_json::json!({"1": "a"}));
    // A typed reader still gets the integer keys.
    let typed: BTreeMap<u32, String> = decode_host_call_args(&MsgPack, &msgpack).unwrap();
    assert_eq!(typed, BTreeMap::from([(1, "a".to_owned())]));
}

/// A worker's reply or chunk under MessagePack may key a map by integers
/// (Python's `{1: "a"}`): a typed reader takes them; a `Value` reader gets a
/// typed mismatch, not a broken frame.
#[test]
fn a_result_keyed_by_integers_is_read_by_a_typed_reader_and_a_mismatch_for_value() {
    use snakepit_protocol::{decode_chunk, decode_response, Error};
    // {"id":3,"success":true,"result":{1:"a"}}
    let reply = b"\x83\xa2id\x03\xa7success\xc3\xa6result\x81\x01\xa1a";
    let typed: BTreeMap<u32, String> = decode_response(&MsgPack, reply).unwrap().unwrap();
    assert_eq!(typed, BTreeMap::from([(1, "a".to_owned())]));
    let as_value = decode_response::<_, Value>(&MsgPack, reply);
    assert!(
        matches!(as_value, Err(Error::Mismatch { .. })),
        "{as_value:?}"
    );
    // {"type":"chunk","id":3,"data":{7:null}}
    let chunk = b"\x83\xa4type\xa5chunk\xa2id\x03\xa4data\x81\x07\xc0";
    let typed: BTreeMap<u32, ()> = decode_chunk(&MsgPack, chunk).unwrap();
    assert_eq!(typed, BTreeMap::from([(7, ())]));
    let as_value = decode_chunk::<_, Value>(&MsgPack, chunk);
    assert!(
        matches!(as_value, Err(Error::Mismatch { .. })),
        "{as_value:?}"
    );
}

/// docs/protocol.md section 3: "a host call's arguments are read with the
/// keys JSON would have (`"1"`, `"true"`, `"null"`, ...)". The test reads
/// host-call arguments keyed by integers and booleans into a `Value`, and
/// checks that a frame with the `args` field twice still fails.
#[test]
fn host_call_args_keyed_by_integers_read_as_json_keys_and_a_field_twice_still_fails() {
    // {"type":"host_call","id":1,"request_id":2,"function":"f","args":{1:{true:[nil]}}}
    let call = b"\x85\xa4type\xa9host_call\xa2id\x01\xaarequest_id\x02\xa8function\xa1f\xa4args\x81\x01\x81\xc3\x91\xc0";
    let args: Value = decode_host_call_args(&MsgPack, call).unwrap();
    assert_eq!(args, serde_json::json!({"1": {"true": [null]}}));
    // {"args":{1:"a"},"args":{2:"b"}}
    let twice = b"\x82\xa4args\x81\x01\xa1a\xa4args\x81\x02\xa1b";
    assert!(decode_host_call_args::<_, Value>(&MsgPack, twice).is_err());
}

/// `peek_response` is the fast path of `decode_inbound` ("`None` means not
/// sure: call decode_inbound"), and docs/protocol.md section 5 says a frame
/// from a worker with a `success` field is a `response` whatever its
/// `type` says. The two must route such a frame alike (the pool consults
/// `peek_response` first: crates/core/src/worker/reader.rs, `route`), in
/// whatever order its keys come.
#[test]
fn the_fast_path_and_the_full_decoder_route_a_typed_frame_alike() {
    let cases: [(&str, &[u8]); 5] = [
        (
            "json chunk",
            br#"{"id":5,"success":true,"type":"chunk","data":1}"#,
        ),
        (
            "json hello",
            br#"{"id":5,"success":false,"type":"hello","protocol":1}"#,
        ),
        (
            "msgpack chunk",
            // {"id":5,"success":true,"type":"chunk","data":1}
            b"\x84\xa2id\x05\xa7success\xc3\xa4type\xa5chunk\xa4data\x01",
        ),
        (
            "json unknown type",
            br#"{"id":5,"success":true,"type":"bogus"}"#,
        ),
        (
            "json chunk, type first",
            br#"{"type":"chunk","id":5,"success":true,"data":1}"#,
        ),
    ];
    for (name, payload) in cases {
        let codec = if name.starts_with("json") {
            WireCodec::Json
        } else {
            WireCodec::MsgPack
        };
        let full = decode_inbound(&codec, payload);
        assert!(
            matches!(full, Ok(Inbound::Response { id: 5, .. })),
            "{name}: {full:?}"
        );
        let peeked = peek_response(&codec, payload);
        let agrees = match (&full, peeked) {
            (_, None) => true,
            (Ok(Inbound::Response { id, success }), Some(p)) => (*id, *success) == p,
            _ => false,
        };
        assert!(
            agrees,
            "{name}: decode_inbound says {full:?}, peek_response says {peeked:?}"
        );
    }
}
