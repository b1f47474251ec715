//! Encode and decode cost of a request and of replies carrying 1 KiB, 100 KiB
//! and 1 MiB, JSON against MessagePack. Run: `cargo bench -p snakepit-protocol`.

use bytes::BytesMut;
use divan::{black_box, Bencher};
use serde_json::{json, Value};
use snakepit_protocol::{
    decode_inbound, decode_response, encode_frame, Codec, Json, MsgPack, Request, Response,
};

fn main() {
    divan::main();
}

const SIZES: &[usize] = &[0, 1024, 100 * 1024, 1024 * 1024];

/// A reply whose result is a string of `size` bytes inside a small map.
fn reply_frame<C: Codec>(codec: &C, size: usize) -> BytesMut {
    let result = json!({"status": "ok", "data": "x".repeat(size)});
    let mut buf = BytesMut::new();
    encode_frame(codec, &Response::ok(1, &result), usize::MAX, &mut buf).unwrap();
    buf
}

fn args(size: usize) -> Value {
    json!({"operation": "add", "a": 5, "b": 3, "data": "x".repeat(size)})
}

#[divan::bench(types = [Json, MsgPack], args = SIZES)]
fn encode_request<C: Codec + Default>(bencher: Bencher<'_, '_>, size: usize) {
    let codec = C::default();
    let args = args(size);
    let mut buf = BytesMut::with_capacity(size + 256);
    bencher
        .counter(divan::counter::BytesCount::new(size.max(1)))
        .bench_local(|| {
            buf.clear();
            encode_frame(
                &codec,
                &Request::new(1, "compute", black_box(&args)),
                usize::MAX,
                &mut buf,
            )
            .unwrap();
        });
}

#[divan::bench(types = [Json, MsgPack], args = SIZES)]
fn decode_reply<C: Codec + Default>(bencher: Bencher<'_, '_>, size: usize) {
    let codec = C::default();
    let frame = reply_frame(&codec, size);
    let payload = &frame[4..];
    bencher
        .counter(divan::counter::BytesCount::new(size.max(1)))
        .bench_local(|| {
            decode_inbound(&codec, black_box(payload)).unwrap();
            let v: Value = decode_response(&codec, black_box(payload))
                .unwrap()
                .unwrap();
            v
        });
}

/// What the depth check of `encode_frame` costs on the smallest call, a
/// ping, and on arguments of many small nodes: `encode_frame` against the
/// same frame written by the codec alone (no depth counting).
#[divan::bench(types = [Json, MsgPack], args = ["ping", "nodes"])]
fn encode_depth_check<C: Codec + Default>(bencher: Bencher<'_, '_>, what: &str) {
    let codec = C::default();
    let args = small_args(what);
    let mut buf = BytesMut::with_capacity(4096);
    bencher.bench_local(|| {
        buf.clear();
        encode_frame(
            &codec,
            &Request::new(1, "ping", black_box(&args)),
            usize::MAX,
            &mut buf,
        )
        .unwrap();
    });
}

#[divan::bench(types = [Json, MsgPack], args = ["ping", "nodes"])]
fn encode_unchecked<C: Codec + Default>(bencher: Bencher<'_, '_>, what: &str) {
    use bytes::BufMut;
    let codec = C::default();
    let args = small_args(what);
    let mut buf = BytesMut::with_capacity(4096);
    bencher.bench_local(|| {
        buf.clear();
        buf.put_u32(0);
        codec
            .encode(&Request::new(1, "ping", black_box(&args)), &mut buf)
            .unwrap();
        let len = (buf.len() - 4) as u32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
    });
}

/// `{}` for a ping; for "nodes", 100 small values in maps and arrays three
/// levels deep.
fn small_args(what: &str) -> Value {
    match what {
        "ping" => json!({}),
        _ => json!({
            "rows": (0..10)
                .map(|i| json!({"id": i, "tags": ["a", "b", "c"], "score": [i, i + 1], "ok": true}))
                .collect::<Vec<_>>()
        }),
    }
}
