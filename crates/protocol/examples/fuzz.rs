//! A structure-aware fuzzer for every decoder of the protocol, on stable Rust
//! and with no fuzzing framework.
//!
//! Each case is one of: a shared wire vector mutated byte by byte; a valid
//! frame of a random kind carrying a random value (shallow, or nested near,
//! at and past [`MAX_DEPTH`], or thousands of levels deep), in a random key
//! order, checked against what it must decode to and then mutated; a frame
//! whose payload declares huge lengths (MessagePack arrays, maps, strings,
//! binaries and extensions of up to 4 G elements, JSON numbers of a million
//! digits); or a large frame. Every case goes through the frame decoder in
//! random pieces, then through every decode entry point: `decode_inbound`,
//! `decode_outbound`, `peek_response`, `decode_response`, `decode_chunk`,
//! `decode_host_call_args` and the codecs themselves, with both codecs.
//!
//! What counts as a failure:
//! - a panic, or a valid frame that does not decode to what it says
//!   (its route always, whatever its depth; its value exactly when it is at
//!   most `MAX_DEPTH` deep, `Error::TooDeep` otherwise), or `encode_frame`
//!   accepting what the decoder refuses or the other way round: exit 1;
//! - an allocation beyond the memory limit (the process runs under
//!   `setrlimit(RLIMIT_AS)`, 1 GiB unless `--memory-mib` says otherwise), or a
//!   stack overflow (cases run on a thread with the 2 MiB stack of a tokio
//!   worker): the process aborts, after printing the seed and case that
//!   caused it.
//!
//! Usage: `cargo run --release -p snakepit-protocol --example fuzz --
//! [SECONDS] [--seed N] [--case N] [--memory-mib N]`. `--seed S --case N`
//! replays case N of seed S alone.

use std::io::Write;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde_json::{json, Map, Value};
use snakepit_protocol::{
    decode_chunk, decode_host_call_args, decode_inbound, decode_outbound, decode_response,
    encode_frame, peek_response, Codec, Error, FrameCodec, Inbound, Outbound, Response, WireCodec,
    MAX_DEPTH,
};
use tokio_util::codec::Decoder;

const CODECS: [WireCodec; 2] = [WireCodec::Json, WireCodec::MsgPack];
/// The frame decoder's limit in the fuzzer: large frames are generated up to
/// about this size.
const MAX_FRAME: usize = 4 << 20;
/// A tokio worker thread's stack, where the pool decodes.
const STACK: usize = 2 << 20;

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that nearby seeds differ.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------------------
// What the process reports if it aborts (out of memory, stack overflow).

static SEED: AtomicU64 = AtomicU64::new(0);
static CASE: AtomicU64 = AtomicU64::new(0);
static INPUT: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static INPUT_LEN: AtomicUsize = AtomicUsize::new(0);

#[cfg(unix)]
#[allow(unsafe_code)] // setrlimit, and a signal handler that can only use write(2)
mod guard {
    use super::*;

    /// Puts the whole process under an address-space limit, and checks that
    /// it holds: an allocation above it must fail.
    pub(super) fn limit_memory(bytes: u64) -> Result<(), String> {
        let lim = libc::rlimit {
            rlim_cur: bytes as libc::rlim_t,
            rlim_max: bytes as libc::rlim_t,
        };
        // SAFETY: setrlimit reads a valid rlimit struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) } != 0 {
            return Err(format!(
                "setrlimit(RLIMIT_AS) failed: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut probe: Vec<u8> = Vec::new();
        if probe.try_reserve_exact(bytes as usize).is_ok() {
            return Err("the memory limit is not in force".into());
        }
        Ok(())
    }

    fn write_all(bytes: &[u8]) {
        let mut at = 0;
        while at < bytes.len() {
            // SAFETY: writing from a valid buffer to stderr.
            let n = unsafe { libc::write(2, bytes[at..].as_ptr().cast(), bytes.len() - at) };
            if n <= 0 {
                return;
            }
            at += n as usize;
        }
    }

    fn write_u64(mut v: u64) {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        write_all(&buf[i..]);
    }

    /// On SIGABRT (what an allocation failure or a stack overflow ends in):
    /// the seed and case to replay, the start of the input in hex. Only
    /// async-signal-safe calls.
    extern "C" fn on_abort(_: libc::c_int) {
        write_all(b"\nfuzz: ABORTED (out of memory or stack overflow) at seed ");
        write_u64(SEED.load(Ordering::SeqCst));
        write_all(b" case ");
        write_u64(CASE.load(Ordering::SeqCst));
        write_all(b"; replay with --seed S --case N. Input (");
        let len = INPUT_LEN.load(Ordering::SeqCst);
        write_u64(len as u64);
        write_all(b" bytes), start: ");
        let ptr = INPUT.load(Ordering::SeqCst);
        if !ptr.is_null() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut line = [0u8; 128];
            for chunk_at in (0..len.min(512)).step_by(64) {
                let n = (len.min(512) - chunk_at).min(64);
                for j in 0..n {
                    // SAFETY: the input outlives the case it is published for.
                    let b = unsafe { *ptr.add(chunk_at + j) };
                    line[2 * j] = HEX[(b >> 4) as usize];
                    line[2 * j + 1] = HEX[(b & 15) as usize];
                }
                write_all(&line[..2 * n]);
            }
        }
        write_all(b"\n");
        // SAFETY: restoring the default action and re-raising ends the
        // process with SIGABRT, as it would have without this handler.
        unsafe {
            libc::signal(libc::SIGABRT, libc::SIG_DFL);
            libc::raise(libc::SIGABRT);
        }
    }

    pub(super) fn report_aborts() {
        // SAFETY: installing a handler that only makes async-signal-safe calls.
        unsafe {
            libc::signal(
                libc::SIGABRT,
                on_abort as extern "C" fn(libc::c_int) as libc::sighandler_t,
            );
        }
    }
}

#[cfg(not(unix))]
mod guard {
    pub(super) fn limit_memory(_: u64) -> Result<(), String> {
        Err("no memory limit on this platform".into())
    }
    pub(super) fn report_aborts() {}
}

// ---------------------------------------------------------------------------
// Payload builders: raw bytes in either codec, so that values of any depth
// can be written (encode_frame would refuse them) without deep recursion.

fn json_str(s: &str) -> Vec<u8> {
    serde_json::to_vec(s).unwrap_or_default()
}

fn mp_str(s: &str) -> Vec<u8> {
    let mut v = Vec::new();
    let n = s.len();
    if n < 32 {
        v.push(0xa0 | n as u8);
    } else if n < 256 {
        v.extend([0xd9, n as u8]);
    } else if n < 65536 {
        v.push(0xda);
        v.extend((n as u16).to_be_bytes());
    } else {
        v.push(0xdb);
        v.extend((n as u32).to_be_bytes());
    }
    v.extend_from_slice(s.as_bytes());
    v
}

fn str_of(codec: WireCodec, s: &str) -> Vec<u8> {
    match codec {
        WireCodec::MsgPack => mp_str(s),
        _ => json_str(s),
    }
}

fn uint_of(codec: WireCodec, n: u64) -> Vec<u8> {
    match codec {
        WireCodec::MsgPack => {
            let mut v = Vec::new();
            let _ = rmp::encode::write_uint(&mut v, n);
            v
        }
        _ => n.to_string().into_bytes(),
    }
}

fn bool_of(codec: WireCodec, b: bool) -> Vec<u8> {
    match (codec, b) {
        (WireCodec::MsgPack, true) => vec![0xc3],
        (WireCodec::MsgPack, false) => vec![0xc2],
        (_, b) => b.to_string().into_bytes(),
    }
}

/// A map of already encoded values, keys in the order given.
fn map_of(codec: WireCodec, entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    match codec {
        WireCodec::MsgPack => {
            let _ = rmp::encode::write_map_len(&mut out, entries.len() as u32);
            for (k, v) in entries {
                out.extend(mp_str(k));
                out.extend_from_slice(v);
            }
        }
        _ => {
            out.push(b'{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(json_str(k));
                out.push(b':');
                out.extend_from_slice(v);
            }
            out.push(b'}');
        }
    }
    out
}

/// A value exactly `depth` arrays and maps deep, written without recursion:
/// each level is an array or a map, with or without a sibling after the
/// deeper value.
fn nested_raw(codec: WireCodec, depth: usize, rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::with_capacity(depth * 4 + 8);
    // Per level: 0 array of one, 1 array with a sibling, 2 map of one,
    // 3 map with a sibling. The closing part is written in reverse.
    let mut kinds = Vec::with_capacity(depth);
    for _ in 0..depth {
        let kind = if rng.chance(8) {
            rng.below(4) as u8
        } else {
            (rng.below(2) * 2) as u8
        };
        kinds.push(kind);
        match (codec, kind) {
            (WireCodec::MsgPack, 0) => out.push(0x91),
            (WireCodec::MsgPack, 1) => out.push(0x92),
            (WireCodec::MsgPack, 2) => out.extend([0x81, 0xa1, b'k']),
            (WireCodec::MsgPack, _) => out.extend([0x82, 0xa1, b'k']),
            (_, 0 | 1) => out.push(b'['),
            (_, _) => out.extend_from_slice(b"{\"k\":"),
        }
    }
    out.extend(match codec {
        WireCodec::MsgPack => vec![0x01],
        _ => b"1".to_vec(),
    });
    for kind in kinds.iter().rev() {
        match (codec, kind) {
            (WireCodec::MsgPack, 1) => out.push(0x02),
            (WireCodec::MsgPack, 3) => out.extend([0xa1, b's', 0x03]),
            (WireCodec::MsgPack, _) => {}
            (_, 0) => out.push(b']'),
            (_, 1) => out.extend_from_slice(b",\"]]\"]"),
            (_, 2) => out.push(b'}'),
            (_, _) => out.extend_from_slice(b",\"s\":\"{{\"}"),
        }
    }
    out
}

/// A depth for a nested value: shallow, near the limit, or far past it.
fn some_depth(rng: &mut Rng) -> usize {
    match rng.below(6) {
        0 => rng.below(8),
        1..=3 => MAX_DEPTH - 4 + rng.below(8),
        4 => 1000,
        _ => 1 + rng.below(100_000),
    }
}

/// A random `serde_json::Value` of at most `depth` levels and a bounded size.
fn random_value(rng: &mut Rng, depth: usize, budget: &mut usize) -> Value {
    *budget = budget.saturating_sub(1);
    if depth == 0 || *budget == 0 || rng.chance(3) {
        return match rng.below(7) {
            0 => Value::Null,
            1 => Value::Bool(rng.chance(2)),
            2 => json!(rng.next() as i64),
            3 => json!(rng.next()),
            4 => json!(rng.below(1000) as f64 / 8.0),
            5 => Value::String(random_text(rng)),
            _ => json!(""),
        };
    }
    let n = 1 + rng.below(4);
    if rng.chance(2) {
        Value::Array(
            (0..n)
                .map(|_| random_value(rng, depth - 1, budget))
                .collect(),
        )
    } else {
        let mut m = Map::new();
        for _ in 0..n {
            m.insert(random_text(rng), random_value(rng, depth - 1, budget));
        }
        Value::Object(m)
    }
}

fn random_text(rng: &mut Rng) -> String {
    let parts = [
        "a",
        "id",
        "[",
        "]{",
        "\"",
        "\\",
        "\u{e9}",
        "\u{1F40D}",
        "\n",
        "success",
    ];
    (0..rng.below(5)).map(|_| *rng.pick(&parts)).collect()
}

/// The depth of a value, counted without recursion.
fn depth_of(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                deepest = deepest.max(d + 1);
                stack.extend(a.iter().map(|x| (x, d + 1)));
            }
            Value::Object(m) => {
                deepest = deepest.max(d + 1);
                stack.extend(m.values().map(|x| (x, d + 1)));
            }
            _ => deepest = deepest.max(d),
        }
    }
    deepest
}

// ---------------------------------------------------------------------------
// Cases.

/// What a generated, unmutated payload must decode to.
enum Expect {
    /// A frame from a worker: its route, and whether its payload field
    /// (result, data, args) is within the limit.
    Inbound(Inbound, bool),
    /// A request to a worker.
    Request(Outbound, bool),
    /// Nothing in particular.
    Nothing,
}

struct Case {
    codec: Option<WireCodec>,
    /// The bytes on the wire: frames, whole or not.
    wire: Vec<u8>,
    expect: Expect,
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

fn shuffle<T>(rng: &mut Rng, items: &mut [T]) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
}

/// A frame of a random kind whose payload field is `value` (encoded), keys
/// in a random order.
fn frame_around(
    codec: WireCodec,
    rng: &mut Rng,
    value: Vec<u8>,
    within: bool,
) -> (Vec<u8>, Expect) {
    let id = if rng.chance(2) {
        rng.below(300) as u64
    } else {
        rng.next()
    };
    let mut entries: Vec<(String, Vec<u8>)>;
    let expect;
    match rng.below(4) {
        0 => {
            let success = rng.chance(3) || !within;
            entries = vec![
                ("id".into(), uint_of(codec, id)),
                ("success".into(), bool_of(codec, success)),
                ("result".into(), value),
            ];
            if rng.chance(2) {
                entries.push(("type".into(), str_of(codec, "response")));
            }
            expect = Expect::Inbound(Inbound::Response { id, success }, within);
        }
        1 => {
            entries = vec![
                ("type".into(), str_of(codec, "chunk")),
                ("id".into(), uint_of(codec, id)),
                ("data".into(), value),
            ];
            expect = Expect::Inbound(Inbound::Chunk { id }, within);
        }
        2 => {
            let request_id = rng.chance(2).then(|| rng.below(100) as u64);
            entries = vec![
                ("type".into(), str_of(codec, "host_call")),
                ("id".into(), uint_of(codec, id)),
                ("function".into(), str_of(codec, "f")),
                ("args".into(), value),
            ];
            if let Some(r) = request_id {
                entries.push(("request_id".into(), uint_of(codec, r)));
            }
            expect = Expect::Inbound(
                Inbound::HostCall {
                    id,
                    request_id,
                    function: "f".into(),
                },
                within,
            );
        }
        _ => {
            entries = vec![
                ("id".into(), uint_of(codec, id)),
                ("command".into(), str_of(codec, "run")),
                ("args".into(), value),
                (
                    "timestamp".into(),
                    str_of(codec, "2026-11-27T12:24:04.051023Z"),
                ),
            ];
            expect = Expect::Request(
                Outbound::Request {
                    id,
                    command: "run".into(),
                },
                within,
            );
        }
    }
    shuffle(rng, &mut entries);
    (map_of(codec, &entries), expect)
}

/// A valid frame nested to a random depth, built from raw bytes.
fn deep_case(rng: &mut Rng) -> Case {
    let codec = *rng.pick(&CODECS);
    let depth = some_depth(rng);
    let value = nested_raw(codec, depth, rng);
    // The frame's own map is one more level.
    let (payload, expect) = frame_around(codec, rng, value, depth < MAX_DEPTH);
    Case {
        codec: Some(codec),
        wire: framed(&payload),
        expect,
    }
}

/// A random value through `encode_frame`: accepted exactly when the decoder
/// reads it back, and then read back equal.
fn value_case(rng: &mut Rng) -> Case {
    let codec = *rng.pick(&CODECS);
    let depth = if rng.chance(2) {
        rng.below(6)
    } else {
        MAX_DEPTH - 3 + rng.below(6)
    };
    let mut budget = 400;
    let mut value = random_value(rng, depth, &mut budget);
    // Make it exactly as deep as asked, at least on one path.
    for _ in depth_of(&value)..depth {
        value = json!([value]);
    }
    let response = Response::ok(1, &value);
    let mut unchecked = BytesMut::new();
    codec
        .encode(&response, &mut unchecked)
        .expect("the codec encodes any Value");
    let reads = codec.decode::<Value>(&unchecked);
    let within = depth_of(&value) < MAX_DEPTH;
    let mut buf = BytesMut::new();
    let wire = match encode_frame(&codec, &response, usize::MAX, &mut buf) {
        Ok(()) => {
            assert!(within, "encode_frame accepted a value too deep");
            let back: Value = decode_response(&codec, &buf[4..])
                .expect("what encode_frame writes decodes")
                .expect("a success");
            assert!(reads.is_ok());
            assert_eq!(back, value, "round trip");
            buf.to_vec()
        }
        Err(e) => {
            assert!(
                matches!(e, Error::TooDeep { encoding: true, .. }),
                "encode_frame: {e}"
            );
            assert!(!within, "encode_frame refused a value within the limit");
            assert!(
                matches!(
                    reads,
                    Err(Error::TooDeep {
                        encoding: false,
                        ..
                    })
                ),
                "encode_frame refused what the decoder reads: {reads:?}"
            );
            framed(&unchecked)
        }
    };
    Case {
        codec: Some(codec),
        wire,
        expect: Expect::Inbound(
            Inbound::Response {
                id: 1,
                success: true,
            },
            within,
        ),
    }
}

/// A frame whose payload field declares a huge length, or holds huge
/// numbers or strings.
fn huge_case(rng: &mut Rng) -> Case {
    let codec = *rng.pick(&CODECS);
    let value = match codec {
        WireCodec::MsgPack => {
            let marker = *rng.pick(&[
                0xdc, 0xdd, 0xde, 0xdf, 0xd9, 0xda, 0xdb, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9,
            ]);
            let width = match marker {
                0xd9 | 0xc4 | 0xc7 => 1,
                0xdc | 0xde | 0xda | 0xc5 | 0xc8 => 2,
                _ => 4,
            };
            let small = rng.below(64) as u64;
            let len: u64 = *rng.pick(&[u64::MAX, 0x7fff_ffff, 0x1_0000, 1 << 20, small]);
            let mut v = vec![marker];
            v.extend(&len.to_be_bytes()[8 - width..]);
            // Some of what it declares, never all of a large claim.
            let n = rng.below(64);
            v.extend((0..n).map(|_| rng.next() as u8 & 0x7f));
            v
        }
        _ => match rng.below(3) {
            0 => format!("1{}", "0".repeat(rng.below(1 << 18))).into_bytes(),
            1 => format!("1e{}", "9".repeat(1 + rng.below(1 << 16))).into_bytes(),
            _ => json_str(&"x".repeat(rng.below(1 << 20))),
        },
    };
    let (payload, _) = frame_around(codec, rng, value, true);
    Case {
        codec: Some(codec),
        wire: framed(&payload),
        expect: Expect::Nothing,
    }
}

/// A large valid frame: many elements, or long strings.
fn large_case(rng: &mut Rng) -> Case {
    let codec = *rng.pick(&CODECS);
    let value = if rng.chance(2) {
        Value::Array((0..rng.below(50_000)).map(|i| json!(i)).collect())
    } else {
        json!({"text": "\u{1F40D}".repeat(rng.below(250_000)), "n": 1})
    };
    let mut buf = BytesMut::new();
    let response = Response::ok(9, &value);
    encode_frame(&codec, &response, MAX_FRAME, &mut buf).expect("a large frame encodes");
    let back: Value = decode_response(&codec, &buf[4..]).unwrap().unwrap();
    assert_eq!(back, value, "large frame round trip");
    Case {
        codec: Some(codec),
        wire: buf.to_vec(),
        expect: Expect::Inbound(
            Inbound::Response {
                id: 9,
                success: true,
            },
            true,
        ),
    }
}

fn mutate(rng: &mut Rng, data: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    for _ in 0..1 + rng.below(8) {
        let len = data.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next() as u8;
            }
            2 => {
                let i = rng.below(len + 1);
                data.insert(i, rng.next() as u8);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                data.remove(i);
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                let (a, b) = (rng.below(len + 1), rng.below(other.len() + 1));
                data.truncate(a);
                data.extend_from_slice(&other[b..]);
            }
            5 if len >= 4 => {
                // Make the length prefix agree with (or miss) the payload.
                let n = (len - 4) as i64 + [-1i64, 0, 1][rng.below(3)];
                data[..4].copy_from_slice(&(n.max(0) as u32).to_be_bytes());
            }
            6 if len > 0 => {
                // Cut, as a stream that ends mid-frame.
                data.truncate(rng.below(len));
            }
            _ => {
                let i = rng.below(len + 1);
                let magics: [&[u8]; 12] = [
                    &b"\xc1"[..],
                    b"\xdf\xff\xff\xff\xff",
                    b"\xdd\xff\xff\xff\xff",
                    b"\xdb\xff\xff\xff\xff",
                    b"\xc9\xff\xff\xff\xff\x01",
                    b"\x91\x91\x91\x91\x91\x91\x91\x91",
                    b"[[[[[[[[",
                    b"{\"a\":{\"a\":",
                    b"\"\\u",
                    b"\"\\ud800\"",
                    b"1e999999",
                    b"\xff\xff\xff\xff",
                ];
                let magic = *rng.pick(&magics);
                data.splice(i..i, magic.iter().copied());
            }
        }
    }
}

fn seeds() -> Vec<Vec<u8>> {
    snakepit_tests::vector_cases()
        .iter()
        .map(|c| snakepit_tests::unhex(c["frame_hex"].as_str().unwrap_or("")))
        .collect()
}

fn make_case(rng: &mut Rng, seeds: &[Vec<u8>]) -> Case {
    let mut case = match rng.below(16) {
        0..=4 => Case {
            codec: None,
            wire: seeds[rng.below(seeds.len())].clone(),
            expect: Expect::Nothing,
        },
        5..=9 => deep_case(rng),
        10..=11 => value_case(rng),
        12..=14 => huge_case(rng),
        _ => large_case(rng),
    };
    // Check most generated frames as they are, mutate the rest.
    if matches!(case.expect, Expect::Nothing) || rng.chance(4) {
        mutate(rng, &mut case.wire, seeds);
        case.expect = Expect::Nothing;
    }
    case
}

// ---------------------------------------------------------------------------
// Running a case through every decoder.

fn decode_all(codec: WireCodec, payload: &[u8], expect: &Expect) {
    let inbound = decode_inbound(&codec, payload);
    let outbound = decode_outbound(&codec, payload);
    let peeked = peek_response(&codec, payload);
    let response = decode_response::<_, Value>(&codec, payload);
    let _ = decode_response::<_, Vec<u64>>(&codec, payload);
    let _ = decode_response::<_, (String, bool)>(&codec, payload);
    let chunk = decode_chunk::<_, Value>(&codec, payload);
    let args = decode_host_call_args::<_, Value>(&codec, payload);
    let _ = codec.decode::<Value>(payload);

    if let Some((id, success)) = peeked {
        if let Ok(Inbound::Response { id: i, success: s }) = &inbound {
            assert_eq!((*i, *s), (id, success), "peek_response and decode_inbound");
        }
    }
    let fits = |r: Result<(), Error>, within: bool, what: &str| match (r, within) {
        (Ok(()), true) => {}
        (
            Err(Error::TooDeep {
                encoding: false, ..
            }),
            false,
        ) => {}
        (r, _) => panic!("{what}: {r:?}, the value being within the limit: {within}"),
    };
    match expect {
        Expect::Nothing => {}
        Expect::Inbound(route, within) => {
            assert_eq!(inbound.as_ref().ok(), Some(route), "route: {inbound:?}");
            match route {
                Inbound::Response { success: true, .. } => fits(
                    response.map(|r| assert!(r.is_ok())),
                    *within,
                    "decode_response",
                ),
                Inbound::Response { .. } => fits(response.map(drop), *within, "decode_response"),
                Inbound::Chunk { .. } => fits(chunk.map(drop), *within, "decode_chunk"),
                _ => fits(args.map(drop), *within, "decode_host_call_args"),
            }
        }
        Expect::Request(route, within) => {
            assert_eq!(outbound.as_ref().ok(), Some(route), "route: {outbound:?}");
            fits(args.map(drop), *within, "decode_host_call_args (request)");
        }
    }
}

fn exercise(case: &Case, rng: &mut Rng) {
    let codecs: &[WireCodec] = match &case.codec {
        Some(c) => std::slice::from_ref(c),
        None => &CODECS,
    };
    let data = &case.wire;
    for &codec in codecs {
        let mut framer = FrameCodec::new(MAX_FRAME);
        let mut buf = BytesMut::new();
        let mut frames = 0;
        let mut at = 0;
        while at < data.len() {
            // Pieces of any size, as pipe reads come.
            let step = 1 + match rng.below(3) {
                0 => rng.below(16),
                1 => rng.below(4096),
                _ => rng.below(data.len() - at),
            };
            let step = step.min(data.len() - at);
            buf.extend_from_slice(&data[at..at + step]);
            at += step;
            loop {
                match framer.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        frames += 1;
                        decode_all(codec, &frame, &case.expect);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        buf.clear();
                        break;
                    }
                }
            }
        }
        if let Ok(Some(frame)) = framer.decode_eof(&mut buf) {
            frames += 1;
            decode_all(codec, &frame, &Expect::Nothing);
        }
        if !matches!(case.expect, Expect::Nothing) {
            assert_eq!(
                frames, 1,
                "a generated frame comes out of the frame decoder"
            );
        }
        // The payload without its header too, as a decoder may be given it.
        let payload = data.get(4..).unwrap_or_default();
        decode_all(codec, payload, &Expect::Nothing);
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().take(4096).map(|b| format!("{b:02x}")).collect()
}

struct Args {
    seconds: u64,
    seed: u64,
    case: Option<u64>,
    memory_mib: u64,
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        seconds: 60,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        case: None,
        memory_mib: 1024,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--seconds" => out.seconds = num("--seconds")?,
            "--seed" => out.seed = num("--seed")?,
            "--case" => out.case = Some(num("--case")?),
            "--memory-mib" => out.memory_mib = num("--memory-mib")?,
            n => {
                out.seconds = n
                    .parse()
                    .map_err(|_| format!("unknown argument {n:?}; usage: fuzz [SECONDS] [--seed N] [--case N] [--memory-mib N]"))?
            }
        }
    }
    Ok(out)
}

fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("fuzz: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = guard::limit_memory(args.memory_mib << 20) {
        eprintln!("fuzz: cannot run under a memory limit: {e}");
        std::process::exit(2);
    }
    guard::report_aborts();
    SEED.store(args.seed, Ordering::SeqCst);
    let seeds = seeds();
    let worker = std::thread::Builder::new()
        .name("fuzz".into())
        .stack_size(STACK)
        .spawn(move || run(&args, &seeds))
        .expect("a thread");
    match worker.join() {
        Ok(code) => std::process::exit(code),
        Err(_) => std::process::exit(1),
    }
}

fn run(args: &Args, seeds: &[Vec<u8>]) -> i32 {
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let (first, last) = match args.case {
        Some(n) => (n, n),
        None => (0, u64::MAX),
    };
    let mut runs: u64 = 0;
    let mut bytes: u64 = 0;
    for n in first..=last {
        if args.case.is_none() && n % 64 == 0 && Instant::now() >= until {
            break;
        }
        CASE.store(n, Ordering::SeqCst);
        let mut rng = Rng::new(args.seed ^ n.wrapping_mul(0xA24B_AED4_963E_E407));
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let case = make_case(&mut rng, seeds);
            INPUT.store(case.wire.as_ptr().cast_mut(), Ordering::SeqCst);
            INPUT_LEN.store(case.wire.len(), Ordering::SeqCst);
            exercise(&case, &mut rng);
            INPUT_LEN.store(0, Ordering::SeqCst);
            INPUT.store(std::ptr::null_mut(), Ordering::SeqCst);
            case.wire.len()
        }));
        match outcome {
            Ok(len) => bytes += len as u64,
            Err(_) => {
                let len = INPUT_LEN.load(Ordering::SeqCst);
                let ptr = INPUT.load(Ordering::SeqCst);
                let input = if ptr.is_null() {
                    String::from("(while generating the case)")
                } else {
                    // The case is gone with the unwinding: regenerate it.
                    let mut rng = Rng::new(args.seed ^ n.wrapping_mul(0xA24B_AED4_963E_E407));
                    let case = make_case(&mut rng, seeds);
                    format!("({len} bytes) {}", hex(&case.wire))
                };
                eprintln!(
                    "fuzz: FAILED at seed {} case {n} (replay: --seed {} --case {n}); input {input}",
                    args.seed, args.seed
                );
                return 1;
            }
        }
        runs += 1;
    }
    let _ = writeln!(
        std::io::stdout(),
        "fuzz: {runs} cases ({} MiB) in {:.0?} from {} seeds and generators (seed {}), under a {} MiB memory limit: no failure",
        bytes >> 20,
        started.elapsed(),
        seeds.len(),
        args.seed,
        args.memory_mib
    );
    0
}
