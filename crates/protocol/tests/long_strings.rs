//! Long strings in a request's arguments skip serde_json's escaping when
//! they have nothing to escape (`encode_request`, JSON): the frame is the
//! same, byte for byte, as serde_json writes it, wherever the string is.

use bytes::BytesMut;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use snakepit_protocol::{encode_frame, encode_request, Request, WireCodec};

/// The frame `encode_request` writes, and the one serde_json alone writes
/// (`encode_frame` serialises the whole request through it): equal.
#[track_caller]
fn same_frame<A: Serialize + ?Sized>(args: &A) -> BytesMut {
    let request = Request::new(7, "run", args);
    let (mut fast, mut plain) = (BytesMut::new(), BytesMut::new());
    encode_request(&WireCodec::Json, &request, 64 << 20, &mut fast).unwrap();
    encode_frame(&WireCodec::Json, &request, 64 << 20, &mut plain).unwrap();
    assert!(
        fast == plain,
        "the frames differ ({} and {} bytes)",
        fast.len(),
        plain.len()
    );
    fast
}

fn args_of(frame: &[u8]) -> Value {
    let v: Value = serde_json::from_slice(&frame[4..]).unwrap();
    v["args"].clone()
}

#[test]
fn a_long_string_with_nothing_to_escape_is_written_as_serde_json_writes_it() {
    let long = "abcdefghij".repeat(500);
    let frame = same_frame(&json!({"data": long}));
    assert_eq!(args_of(&frame)["data"], long.as_str());
}

#[test]
fn long_strings_with_escapes_and_non_ascii_text_are_too() {
    let mut cases = vec![
        format!("{}\"\n\\{}", "x".repeat(3000), "y".repeat(3000)),
        "é漢字🎉\u{7f}".repeat(600),
        "tab\there".repeat(300),
    ];
    // One control byte at each place a block of the check begins or ends.
    for at in [0, 4095, 4096, 8191, 8192, 9999] {
        let mut s = "a".repeat(10_000).into_bytes();
        s[at] = 0x01;
        cases.push(String::from_utf8(s).unwrap());
    }
    for s in cases {
        let frame = same_frame(&json!({"s": s}));
        assert_eq!(args_of(&frame)["s"], s.as_str());
    }
}

#[test]
fn a_long_string_anywhere_in_the_arguments_is_written_the_same() {
    #[derive(Serialize)]
    enum Shape {
        Text(String),
        Named { text: String },
    }
    #[derive(Serialize)]
    struct Args {
        text: String,
        maybe: Option<String>,
        list: Vec<String>,
        shape: Shape,
        named: Shape,
        nested: Value,
    }
    let long = "0123456789".repeat(200);
    let args = Args {
        text: long.clone(),
        maybe: Some(long.clone()),
        list: vec![long.clone(), "short".into(), long.clone()],
        shape: Shape::Text(long.clone()),
        named: Shape::Named { text: long.clone() },
        nested: json!([[{"deep": long}]]),
    };
    let frame = same_frame(&args);
    assert_eq!(args_of(&frame)["nested"][0][0]["deep"], long.as_str());
    // A long key goes through serde_json (a raw value is no key).
    let mut map = serde_json::Map::new();
    map.insert(long.clone(), json!(long));
    let frame = same_frame(&Value::Object(map));
    assert_eq!(args_of(&frame)[&long], long.as_str());
}

#[test]
fn a_raw_value_of_the_callers_is_written_as_it_is() {
    // Long, and nothing in it to escape: still the caller's JSON, not a string.
    let numbers: Vec<String> = (0..600).map(|n| n.to_string()).collect();
    let raw = RawValue::from_string(format!("[{}]", numbers.join(","))).unwrap();
    assert!(raw.get().len() > 1024);
    #[derive(Serialize)]
    struct Args<'a> {
        numbers: &'a RawValue,
    }
    let frame = same_frame(&Args { numbers: &raw });
    assert_eq!(args_of(&frame)["numbers"][599], 599);
}
