//! Round 4 of the outside review: the public API used as a hostile worker
//! would, against the promises of the rustdoc, the README and
//! docs/protocol.md that the earlier rounds' tests do not check.
#![cfg(all(feature = "json", feature = "msgpack"))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, UNIX_EPOCH};

use bytes::BytesMut;
use serde::Deserialize;
use serde_json::{json, Value};
use snakepit_protocol::{
    decode_chunk, decode_host_call_args, decode_inbound, decode_outbound, decode_response,
    encode_frame, encode_request, peek_response, Codec, Error, FrameCodec, Inbound, Json, MsgPack,
    Outbound, Request, Timestamp, WireCodec,
};
use tokio_util::codec::Decoder;

/// Counts the bytes this thread holds from the allocator, and the most it
/// held at once, so that a test can tell what one decode allocated
/// whatever the other tests on other threads do.
struct Counting;

thread_local! {
    static HELD: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters are plain thread-local cells without destructors. The only
// unsafe code of these tests, as in examples/fuzz.rs: a test of what a
// decode allocates needs an allocator of its own.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        let _ = HELD.try_with(|h| h.set(h.get().saturating_sub(layout.size())));
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, new) };
        if !q.is_null() {
            let _ = HELD.try_with(|h| h.set(h.get().saturating_sub(layout.size())));
            grew(new);
        }
        q
    }
}

fn grew(n: usize) {
    let _ = HELD.try_with(|h| {
        let now = h.get() + n;
        h.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The most this thread held at once while `f` ran, above what it held
/// before.
fn peak_while(f: impl FnOnce()) -> usize {
    let base = HELD.with(Cell::get);
    PEAK.with(|p| p.set(base));
    f();
    PEAK.with(Cell::get) - base
}

fn mp_str(out: &mut Vec<u8>, s: &str) {
    rmp::encode::write_str(out, s).unwrap();
}

fn is_wrong_payload(e: &Error) -> bool {
    matches!(
        e,
        Error::WrongType {
            field: "payload",
            ..
        }
    )
}

/// `peek_response` "does not validate the rest of the frame, so whoever
/// receives the frame must decode it with `decode_response`, which does";
/// `decode_inbound` refuses a frame that names `id` twice ("a map without
/// duplicate fields"). So a reply in the fast path's shape with a second
/// `id` after its first keys, which the fast path routes to the first id
/// (a reader that keeps the last key, as Python's dict does, would say the
/// second), must be refused by `decode_response` too, in both codecs.
#[test]
fn a_reply_that_names_its_id_twice_is_refused_after_the_fast_path_routes_it() {
    let json = br#"{"id":7,"success":true,"result":1,"id":8}"#;
    // {"id":7,"success":true,"result":1,"id":8}
    let mut mp = vec![0x84];
    for (k, v) in [("id", 7u8), ("success", 0xc3), ("result", 1), ("id", 8)] {
        mp_str(&mut mp, k);
        mp.push(v);
    }
    for (codec, payload) in [(WireCodec::Json, &json[..]), (WireCodec::MsgPack, &mp[..])] {
        assert_eq!(peek_response(&codec, payload), Some((7, true)), "{codec}");
        let routed = decode_inbound(&codec, payload).unwrap_err();
        assert!(is_wrong_payload(&routed), "{codec}: {routed:?}");
        let decoded = decode_response::<_, Value>(&codec, payload);
        assert!(
            matches!(&decoded, Err(e) if is_wrong_payload(e)),
            "{codec}: decode_response took a reply that names id twice: {decoded:?}"
        );
    }
    // A second `id` written with an escape is the same key; and the other
    // routing fields given twice (`type`) are refused alike.
    for twice in [
        &br#"{"id":7,"success":true,"result":1,"\u0069d":8}"#[..],
        br#"{"id":7,"success":true,"result":1,"type":"response","type":"chunk"}"#,
    ] {
        let text = String::from_utf8_lossy(twice);
        assert_eq!(peek_response(&Json, twice), Some((7, true)), "{text}");
        assert!(decode_inbound(&Json, twice).is_err(), "{text}");
        let decoded = decode_response::<_, Value>(&Json, twice);
        assert!(
            matches!(&decoded, Err(e) if is_wrong_payload(e)),
            "{text}: {decoded:?}"
        );
    }
}

/// docs/protocol.md section 3: "Every payload is a map". serde reads a
/// struct from an array of its fields in order; the frame decoders must
/// not: an array is not a frame, whatever it holds.
#[test]
fn an_array_is_not_a_frame_in_either_codec() {
    let cases: [(&str, Value); 4] = [
        // As decode_inbound's fields would be read in order.
        ("inbound", json!([null, 7, true, null, null, null])),
        // As decode_response's.
        ("response", json!([true, 42, null])),
        ("chunk", json!([5])),
        ("outbound", json!([null, 7, null, "run", null, null])),
    ];
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        for (what, value) in &cases {
            let mut payload = BytesMut::new();
            codec.encode(value, &mut payload).unwrap();
            let got = match *what {
                "inbound" => decode_inbound(&codec, &payload).map(|r| format!("{r:?}")),
                "response" => {
                    decode_response::<_, Value>(&codec, &payload).map(|r| format!("{r:?}"))
                }
                "chunk" => decode_chunk::<_, Value>(&codec, &payload).map(|r| format!("{r:?}")),
                _ => decode_outbound(&codec, &payload).map(|r| format!("{r:?}")),
            };
            match got {
                Err(e) => assert_eq!(e.kind(), "wrong_type", "{codec} {what}: {e:?}"),
                Ok(read) => panic!("{codec} {what}: the array {value} was read as {read}"),
            }
        }
    }
}

/// docs/protocol.md section 3: under MessagePack "objects are maps keyed by
/// field *name* (strings)". An integer key is data, never a field: serde
/// reads a struct's fields by their index too, so `{1: 7, 2: true}` must
/// not be read as `{"id": 7, "success": true}`, nor `{0: 5}` in a chunk as
/// its data.
#[test]
fn integer_keys_of_a_msgpack_frame_are_not_field_names() {
    // {1: 7, 2: true}: no `id`, no `success`, no `type`.
    let frame = b"\x82\x01\x07\x02\xc3";
    let got = decode_inbound(&MsgPack, frame);
    assert!(
        matches!(
            got,
            Err(Error::MissingField {
                kind: "response",
                ..
            })
        ),
        "{got:?}"
    );
    // {"id":7,"success":true,1:42}: no result, which is null.
    let reply = b"\x83\xa2id\x07\xa7success\xc3\x01\x2a";
    assert_eq!(
        decode_inbound(&MsgPack, reply).unwrap(),
        Inbound::Response {
            id: 7,
            success: true,
        }
    );
    let result: Value = decode_response(&MsgPack, reply).unwrap().unwrap();
    assert_eq!(result, Value::Null);
    // {"type":"chunk","id":3,0:5}: no data.
    let chunk = b"\x83\xa4type\xa5chunk\xa2id\x03\x00\x05";
    assert_eq!(
        decode_inbound(&MsgPack, chunk).unwrap(),
        Inbound::Chunk { id: 3 }
    );
    let data: Value = decode_chunk(&MsgPack, chunk).unwrap();
    assert_eq!(data, Value::Null);
    // {0:"cancel",1:9} from the pool's side: a request without a command.
    let cancel = b"\x82\x00\xa6cancel\x01\x09";
    assert!(matches!(
        decode_outbound(&MsgPack, cancel),
        Err(Error::MissingField { .. })
    ));
}

/// A tree of any depth, as a user's result type may be.
#[derive(Debug, Deserialize)]
struct Tree(#[allow(dead_code)] Vec<Tree>);

/// MessagePack `depth` arrays, each declaring 2^32 - 1 elements and holding
/// the next as its first: a few hundred bytes that claim far more.
fn claiming_arrays(depth: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..depth {
        out.extend_from_slice(&[0xdd, 0xff, 0xff, 0xff, 0xff]);
    }
    out.push(0xc0);
    out
}

/// README: "a declared length reserves at most 1 MiB ahead ... never what
/// it claims", and the task's rule that a small hostile input allocates
/// nothing without bound. A reply of under a kilobyte whose result nests
/// arrays that each claim four billion elements must fail having
/// allocated about as much as the frame holds, not a reservation per level
/// (a recursive result type: up to 1 MiB at each of 126 levels), whether it
/// is read as a typed result or, as host-call arguments, through the
/// reading that makes map keys strings.
#[test]
fn a_small_msgpack_frame_that_claims_huge_arrays_allocates_little() {
    let mut reply = Vec::new();
    reply.push(0x83);
    mp_str(&mut reply, "id");
    reply.push(1);
    mp_str(&mut reply, "success");
    reply.push(0xc3);
    mp_str(&mut reply, "result");
    reply.extend(claiming_arrays(120));
    assert!(reply.len() < 1024);
    let mut err = None;
    let peak = peak_while(|| {
        err = Some(decode_response::<_, Tree>(&MsgPack, &reply).unwrap_err());
    });
    assert!(
        peak < 256 * 1024,
        "a {} byte reply allocated {peak} bytes",
        reply.len()
    );
    assert_eq!(err.unwrap().kind(), "invalid_payload");

    // Host-call arguments with an integer key first, so that the reading
    // with string keys runs, then the claiming arrays.
    let mut call = Vec::new();
    call.push(0x84);
    mp_str(&mut call, "type");
    mp_str(&mut call, "host_call");
    mp_str(&mut call, "id");
    call.push(1);
    mp_str(&mut call, "function");
    mp_str(&mut call, "f");
    mp_str(&mut call, "args");
    call.extend_from_slice(&[0x92, 0x81, 0x01, 0x01]);
    call.extend(claiming_arrays(120));
    let peak = peak_while(|| {
        assert!(decode_host_call_args::<_, Value>(&MsgPack, &call).is_err());
    });
    assert!(
        peak < 256 * 1024,
        "a {} byte host call allocated {peak} bytes",
        call.len()
    );
}

/// `decode_response`: "`Err` when the frame is malformed". The fast path
/// for the usual reply shape must not take a payload that is not JSON at
/// all: an id with a leading zero (`07`) is invalid JSON, which the full
/// decode refuses.
#[test]
fn the_result_fast_path_refuses_an_id_that_is_not_json() {
    for payload in [
        &br#"{"id":07,"success":true,"result":1}"#[..],
        br#"{"id":00,"success":true,"result":1}"#,
    ] {
        let text = String::from_utf8_lossy(payload);
        let full = Json.decode::<Value>(payload).unwrap_err();
        assert_eq!(full.kind(), "invalid_payload", "{text}");
        assert_eq!(peek_response(&Json, payload), None, "{text}");
        let got = decode_response::<_, Value>(&Json, payload);
        assert!(
            matches!(got, Err(Error::InvalidPayload { .. })),
            "{text}: {got:?}"
        );
    }
}

/// `Timestamp`: "A UTC instant written as ISO-8601 with microseconds". The
/// year has four digits: an instant past 9999 must not be written as an
/// earlier one (10000 as year 0000), and an instant before 1970, which
/// the format can hold but the writer does not, is written as the epoch.
#[test]
fn a_timestamp_outside_the_years_it_can_write_is_not_written_as_another_year() {
    let last = Timestamp(UNIX_EPOCH + Duration::from_secs(253_402_300_799)).to_string();
    assert_eq!(last, "9999-12-31T23:59:59.000000Z");
    for secs in [253_402_300_800u64, 300_000_000_000, 1 << 40] {
        let text = Timestamp(UNIX_EPOCH + Duration::from_secs(secs)).to_string();
        assert_eq!(text.len(), 27, "{text}");
        assert!(
            text.as_str() >= last.as_str(),
            "{secs} s after the epoch written as {text}, before {last}"
        );
    }
    let before = Timestamp(UNIX_EPOCH - Duration::from_secs(86_400)).to_string();
    assert_eq!(before, "1970-01-01T00:00:00.000000Z");
}

/// docs/protocol.md section 2: "`n` may be 0 only in error". A zero length
/// is a frame of no bytes, which every decoder refuses with a typed error
/// (MessagePack and JSON alike), and the frame after it is read from the
/// right place.
#[test]
fn a_zero_length_frame_is_an_empty_payload_every_decoder_refuses() {
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let mut wire = BytesMut::from(&b"\x00\x00\x00\x00\x00\x00\x00\x02{}"[..]);
        let mut framer = FrameCodec::new(0);
        let empty = framer.decode(&mut wire).unwrap().unwrap();
        assert!(empty.is_empty());
        assert_eq!(peek_response(&codec, &empty), None);
        for err in [
            decode_inbound(&codec, &empty).map(|_| ()).unwrap_err(),
            decode_outbound(&codec, &empty).map(|_| ()).unwrap_err(),
            decode_response::<_, Value>(&codec, &empty)
                .map(|_| ())
                .unwrap_err(),
            decode_chunk::<_, Value>(&codec, &empty)
                .map(|_| ())
                .unwrap_err(),
            decode_host_call_args::<_, Value>(&codec, &empty)
                .map(|_| ())
                .unwrap_err(),
        ] {
            assert_eq!(err.kind(), "invalid_payload", "{codec}: {err:?}");
        }
        // The next frame is over the maximum of 0, from its header alone.
        let err = framer.decode(&mut wire).unwrap_err();
        assert!(
            matches!(err, Error::FrameTooLarge { len: 2, max: 0 }),
            "{err:?}"
        );
    }
}

/// docs/protocol.md section 3: "JSON has no NaN or infinite numbers
/// either: a writer must not emit `NaN` or `Infinity`". Arguments that hold
/// them still make a frame any JSON reader takes; MessagePack carries them.
/// A map whose keys JSON cannot write is `Error::Encode`, nothing written.
#[test]
fn hostile_argument_values_make_valid_frames_or_typed_errors() {
    let args = vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0];
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        for via_request in [true, false] {
            let request = Request::new(3, "f", &args);
            let mut buf = BytesMut::new();
            if via_request {
                encode_request(&codec, &request, 1 << 20, &mut buf).unwrap();
            } else {
                encode_frame(&codec, &request, 1 << 20, &mut buf).unwrap();
            }
            let payload = &buf[4..];
            if codec == WireCodec::Json {
                let text = std::str::from_utf8(payload).unwrap();
                assert!(
                    !text.contains("NaN") && !text.contains("Infinity"),
                    "{text}"
                );
                let _: Value = serde_json::from_str(text).unwrap();
            } else {
                #[derive(Deserialize)]
                struct Args {
                    args: Vec<f64>,
                }
                let back: Args = codec.decode(payload).unwrap();
                assert!(back.args[0].is_nan());
                assert_eq!(&back.args[1..3], &[f64::INFINITY, f64::NEG_INFINITY]);
            }
        }
    }
    let keyed = std::collections::BTreeMap::from([((1u8, 2u8), "v")]);
    for via_request in [true, false] {
        let mut buf = BytesMut::from(&b"kept"[..]);
        let request = Request::new(4, "f", &keyed);
        let err = if via_request {
            encode_request(&WireCodec::Json, &request, 1 << 20, &mut buf)
        } else {
            encode_frame(&WireCodec::Json, &request, 1 << 20, &mut buf)
        }
        .unwrap_err();
        assert_eq!(err.kind(), "encode", "{err:?}");
        assert_eq!(&buf[..], b"kept");
    }
}

/// `Error::TooDeep`: "the routing decoders never fail this way (they read
/// a deep frame's routing fields without recursion)". A worker's hello with
/// fields this crate does not know, nested past the limit (at its top and
/// inside its capabilities), is routed as a hello in JSON; MessagePack must
/// agree, and a deep hello with a field of the wrong type is still refused
/// as such in both.
#[test]
fn a_hello_with_deep_unknown_fields_is_read_alike_in_both_codecs() {
    let depth = 200;
    let deep_json = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let mut deep_mp = vec![0x91; depth - 1];
    deep_mp.push(0x90);
    // (key, JSON value, MessagePack value) of each top-level field.
    let hello = |protocol: (&str, &[u8])| {
        let mut caps_mp = vec![0x82];
        mp_str(&mut caps_mp, "cancel");
        caps_mp.push(0xc3);
        mp_str(&mut caps_mp, "x");
        caps_mp.extend_from_slice(&deep_mp);
        let fields: [(&str, String, Vec<u8>); 4] = [
            ("type", r#""hello""#.into(), {
                let mut v = Vec::new();
                mp_str(&mut v, "hello");
                v
            }),
            ("protocol", protocol.0.into(), protocol.1.to_vec()),
            (
                "capabilities",
                format!(r#"{{"cancel":true,"x":{deep_json}}}"#),
                caps_mp,
            ),
            ("extra", deep_json.clone(), deep_mp.clone()),
        ];
        let json: Vec<String> = fields
            .iter()
            .map(|(k, j, _)| format!(r#""{k}":{j}"#))
            .collect();
        let mut mp = vec![0x80 | fields.len() as u8];
        for (k, _, m) in &fields {
            mp_str(&mut mp, k);
            mp.extend_from_slice(m);
        }
        (format!("{{{}}}", json.join(",")).into_bytes(), mp)
    };
    let (json, mp) = hello(("1", &[0x01]));
    for (codec, payload) in [(WireCodec::Json, json), (WireCodec::MsgPack, mp)] {
        match decode_inbound(&codec, &payload) {
            Ok(Inbound::Hello(h)) => {
                assert_eq!(h.protocol, 1, "{codec}");
                assert!(h.capabilities.cancel, "{codec}");
                assert_eq!(h.capabilities.max_concurrency, 1, "{codec}");
            }
            other => panic!("{codec}: {other:?}"),
        }
    }
    let (json, mp) = hello((r#""1""#, b"\xa11"));
    for (codec, payload) in [(WireCodec::Json, json), (WireCodec::MsgPack, mp)] {
        let err = decode_inbound(&codec, &payload).unwrap_err();
        assert_eq!(err.kind(), "wrong_type", "{codec}: {err:?}");
    }
}

/// Hostile handshakes: every field of a hello of the wrong type, or given
/// twice, is a typed error of kind `wrong_type`; unknown fields and
/// capabilities are ignored; the hello's values are taken as sent (the
/// pool decides what to make of them).
#[test]
fn hostile_hellos_are_typed_errors_or_read_as_sent() {
    for bad in [
        &br#"{"type":"hello","protocol":-1}"#[..],
        br#"{"type":"hello","protocol":1.5}"#,
        br#"{"type":"hello","protocol":4294967296}"#,
        br#"{"type":"hello","pid":"42"}"#,
        br#"{"type":"hello","capabilities":null}"#,
        br#"{"type":"hello","capabilities":[4]}"#,
        br#"{"type":"hello","capabilities":{"max_concurrency":-1}}"#,
        br#"{"type":"hello","capabilities":{"cancel":"yes"}}"#,
        br#"{"type":"hello","capabilities":{"cancel":true,"cancel":false}}"#,
        br#"{"type":"hello","protocol":1,"protocol":2}"#,
    ] {
        let text = String::from_utf8_lossy(bad);
        let err = decode_inbound(&Json, bad).unwrap_err();
        assert_eq!(err.kind(), "wrong_type", "{text}: {err:?}");
    }
    let odd = br#"{"type":"hello","protocol":99,"capabilities":{"max_concurrency":0,"teleport":true},"x":{}}"#;
    match decode_inbound(&Json, odd).unwrap() {
        Inbound::Hello(h) => {
            assert_eq!(h.protocol, 99);
            assert_eq!(h.capabilities.max_concurrency, 0);
            assert!(!h.capabilities.cancel);
        }
        other => panic!("{other:?}"),
    }
}

/// The routing decoders on the pool's frames: a MessagePack request frame
/// from `encode_request`, with every id width, is routed to its id and
/// command; one whose id does not fit a `u64` or is negative is
/// `wrong_type`, not another id.
#[test]
fn ids_of_every_width_are_routed_and_ids_out_of_range_are_refused() {
    for id in [
        0,
        1,
        127,
        128,
        255,
        256,
        65_535,
        65_536,
        u64::from(u32::MAX),
        u64::MAX,
    ] {
        for codec in [WireCodec::Json, WireCodec::MsgPack] {
            let mut buf = BytesMut::new();
            encode_request(
                &codec,
                &Request::new(id, "run", &json!({})),
                1 << 20,
                &mut buf,
            )
            .unwrap();
            let got = decode_outbound(&codec, &buf[4..]).unwrap();
            assert_eq!(
                got,
                Outbound::Request {
                    id,
                    command: "run".into()
                },
                "{codec}"
            );
        }
    }
    for bad in [
        &br#"{"id":18446744073709551616,"success":true}"#[..],
        br#"{"id":-1,"success":true}"#,
        br#"{"id":1e3,"success":true}"#,
        br#"{"id":7.0,"success":true}"#,
    ] {
        let text = String::from_utf8_lossy(bad);
        assert_eq!(peek_response(&Json, bad), None, "{text}");
        let err = decode_inbound(&Json, bad).unwrap_err();
        assert_eq!(err.kind(), "wrong_type", "{text}: {err:?}");
    }
    // MessagePack: int 64 of -1, a float 7.0, uint 64 as a signed one.
    for bad in [
        &b"\x82\xa2id\xd3\xff\xff\xff\xff\xff\xff\xff\xff\xa7success\xc3"[..],
        b"\x82\xa2id\xcb\x40\x1c\0\0\0\0\0\0\xa7success\xc3",
    ] {
        assert_eq!(peek_response(&MsgPack, bad), None);
        let err = decode_inbound(&MsgPack, bad).unwrap_err();
        assert_eq!(err.kind(), "wrong_type", "{bad:02x?}: {err:?}");
    }
    // A positive id in a signed encoding is that id, on both paths.
    let signed = b"\x82\xa2id\xd0\x05\xa7success\xc3";
    assert_eq!(
        decode_inbound(&MsgPack, signed).unwrap(),
        Inbound::Response {
            id: 5,
            success: true
        }
    );
}

/// The routing of a MessagePack frame does not depend on its depth: a key
/// that is no string (an integer, `bin`, nil, a string that is not UTF-8)
/// is no field name in a shallow frame, read by the decoder, nor in one too
/// deep for it, read field by field.
#[test]
fn keys_that_are_not_strings_are_read_alike_in_shallow_and_deep_frames() {
    let shallow = vec![0x01];
    let mut deep = vec![0x91; 199];
    deep.push(0x90);
    let keys: [&[u8]; 4] = [b"\x01", b"\xc4\x02id", b"\xc0", b"\xa2\xff\xfe"];
    for key in keys {
        // {KEY: 9, "id": 7, "success": true, "result": R}, and without "id".
        for with_id in [true, false] {
            let routes: Vec<String> = [&shallow, &deep]
                .iter()
                .map(|result| {
                    let mut p = vec![if with_id { 0x84 } else { 0x83 }];
                    p.extend_from_slice(key);
                    p.push(9);
                    if with_id {
                        mp_str(&mut p, "id");
                        p.push(7);
                    }
                    mp_str(&mut p, "success");
                    p.push(0xc3);
                    mp_str(&mut p, "result");
                    p.extend_from_slice(result);
                    format!("{:?}", decode_inbound(&MsgPack, &p))
                })
                .collect();
            assert_eq!(routes[0], routes[1], "key {key:02x?}, id {with_id}");
            let expected = if with_id {
                "Ok(Response { id: 7, success: true })"
            } else {
                "Err(MissingField { kind: \"response\", field: \"id\" })"
            };
            assert_eq!(routes[0], expected, "key {key:02x?}");
        }
    }
}

/// `WireCodec`: chosen "from configuration, say". Its names are read in
/// any case by `FromStr`; the same configuration read through serde (a
/// config file) must take the same names.
#[test]
fn codec_names_are_read_alike_by_from_str_and_by_serde() {
    for name in ["json", "JSON", "Json", "msgpack", "MsgPack", "MESSAGEPACK"] {
        let parsed: WireCodec = name.parse().unwrap();
        let read: Result<WireCodec, _> = serde_json::from_value(json!(name));
        assert_eq!(read.ok(), Some(parsed), "{name}");
    }
    let err = serde_json::from_value::<WireCodec>(json!("yaml")).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("yaml") && text.contains("msgpack"), "{text}");
}

/// The reader's two ways through a reply agree on every small change to
/// one: wherever `peek_response` routes a frame and `decode_response` then
/// accepts it, `decode_inbound` routes it to the same id with the same
/// outcome (else the fast path accepts a frame the full decode refuses, or
/// routes it elsewhere); and wherever `decode_inbound` routes a reply, the
/// fast path says the same or nothing. Each byte of replies in both codecs
/// is replaced by bytes that matter to the syntax, deleted, or doubled.
#[test]
fn the_fast_path_and_the_full_decode_agree_on_every_one_byte_change_of_a_reply() {
    let error = snakepit_protocol::RemoteError::new("E", "m");
    let mut bases = Vec::new();
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        for (id, ok) in [(7u64, true), (300, false), (70_000, true)] {
            let result = json!({"id": 1, "a": [true, null]});
            let reply = if ok {
                snakepit_protocol::Response::ok(id, &result)
            } else {
                snakepit_protocol::Response::err(id, &error)
            };
            let mut buf = BytesMut::new();
            encode_frame(&codec, &reply, 1 << 20, &mut buf).unwrap();
            bases.push((codec, buf[4..].to_vec()));
        }
    }
    let replacements: &[u8] =
        b"0179 ,:{}[]\"\\tfnie\x00\x80\x81\x83\x84\x91\xa2\xc0\xc2\xc3\xcc\xcd\xd0\xff";
    let mut checked = 0;
    for (codec, base) in &bases {
        let mut variants = Vec::new();
        for at in 0..base.len() {
            for &b in replacements {
                let mut v = base.clone();
                v[at] = b;
                variants.push(v);
            }
            let mut v = base.clone();
            v.remove(at);
            variants.push(v);
            let mut v = base.clone();
            v.insert(at, base[at]);
            variants.push(v);
        }
        for p in variants {
            let peeked = peek_response(codec, &p);
            let routed = decode_inbound(codec, &p);
            let decoded = decode_response::<_, Value>(codec, &p);
            let shown = String::from_utf8_lossy(&p).into_owned();
            if let (Some((id, success)), Ok(outcome)) = (peeked, &decoded) {
                assert_eq!(
                    routed.as_ref().ok(),
                    Some(&Inbound::Response { id, success }),
                    "{codec} {shown:?} {p:02x?}: fast path {peeked:?} and {decoded:?}"
                );
                assert_eq!(outcome.is_ok(), success, "{codec} {shown:?}");
            }
            if let Ok(Inbound::Response { id, success }) = routed {
                assert!(
                    peeked.is_none() || peeked == Some((id, success)),
                    "{codec} {shown:?}: routed to {id}, fast path {peeked:?}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 1000);
}
