//! A mutation fuzzer for the frame decoder and both codecs, on stable Rust.
//!
//! Starts from the shared wire vectors, mutates them (bit flips, byte
//! overwrites, insertions, deletions, splices, length-prefix tweaks), feeds
//! each result through the frame decoder in random pieces and through both
//! codecs' decoders, and stops at the first panic with the input that caused
//! it. Usage: `cargo run --release -p snakepit-protocol --example fuzz -- SECONDS`.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde_json::Value;
use snakepit_protocol::{
    decode_inbound, decode_outbound, decode_response, Codec, FrameCodec, WireCodec,
};
use tokio_util::codec::Decoder;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/vectors/frames.json"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("vectors"))
        .expect("vectors are JSON");
    doc["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let h = c["frame_hex"].as_str().unwrap_or("");
            (0..h.len() / 2)
                .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap_or(0))
                .collect()
        })
        .collect()
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(8) {
        let len = data.len();
        match rng.below(7) {
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
            _ => {
                let i = rng.below(len + 1);
                let magic: &[u8] = [
                    &b"\xc1"[..],
                    b"\xdf\xff\xff\xff\xff",
                    b"\xdb\xff\xff\xff\xff",
                    b"[[[[[[[[",
                    b"\"\\u",
                    b"1e999999",
                ][rng.below(6)];
                data.splice(i..i, magic.iter().copied());
            }
        }
    }
    data
}

fn exercise(data: &[u8], rng: &mut Rng) {
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let mut framer = FrameCodec::new(1 << 16);
        let mut buf = BytesMut::new();
        let mut at = 0;
        while at < data.len() {
            let step = 1 + rng.below(data.len() - at);
            buf.extend_from_slice(&data[at..at + step]);
            at += step;
            loop {
                match framer.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        let _ = decode_inbound(&codec, &frame);
                        let _ = decode_outbound(&codec, &frame);
                        let _ = decode_response::<_, Value>(&codec, &frame);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        buf.clear();
                        break;
                    }
                }
            }
        }
        let _ = framer.decode_eof(&mut buf);
        let payload = data.get(4..).unwrap_or_default();
        let _ = codec.decode::<Value>(payload);
        let _ = decode_inbound(&codec, payload);
    }
}

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seeds = seeds();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut rng = Rng(seed);
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut runs: u64 = 0;
    while Instant::now() < until {
        for _ in 0..1000 {
            let input = mutate(&mut rng, &seeds);
            let mut inner = Rng(rng.next() | 1);
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                exercise(&input, &mut inner)
            }))
            .is_err()
            {
                let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
                eprintln!("fuzz: PANIC after {runs} inputs (seed {seed}) on input {hex}");
                std::process::exit(1);
            }
            runs += 1;
        }
    }
    println!(
        "fuzz: {runs} inputs in {seconds} s from {} seeds (seed {seed}), no panic",
        seeds.len()
    );
}
