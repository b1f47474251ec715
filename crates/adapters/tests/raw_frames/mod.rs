//! Raw frames for tests that play the host against a bridge's worker:
//! the length prefix, and JSON or MessagePack (a MessagePack of its own
//! that keeps apart integers and floats, which the wire tests need).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use snakepit_core::{Launch, RawProcess, WireCodec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdin, ChildStdout};

/// Turns a hang into a failure; nothing here is timed.
const WAIT: Duration = Duration::from_secs(30);

/// The limit every bridge applies to incoming frames (protocol.md section 2
/// and section 4: "a length above the worker's limit (64 MiB, ...)").
pub(crate) const LIMIT: usize = 64 * 1024 * 1024;

/// A frame: the 4-byte big-endian length, then the payload.
pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(payload.len())
        .expect("a frame below 4 GiB")
        .to_be_bytes()
        .to_vec();
    out.extend_from_slice(payload);
    out
}

pub(crate) fn encode(codec: WireCodec, value: &Value) -> Vec<u8> {
    match codec {
        WireCodec::MsgPack => {
            let mut out = Vec::new();
            mp::encode(value, &mut out);
            out
        }
        _ => serde_json::to_vec(value).expect("JSON"),
    }
}

pub(crate) fn decode(codec: WireCodec, payload: &[u8]) -> Value {
    match codec {
        WireCodec::MsgPack => {
            let mut pos = 0;
            let value = mp::decode(payload, &mut pos);
            assert_eq!(pos, payload.len(), "one MessagePack value: {payload:02x?}");
            value
        }
        _ => serde_json::from_slice(payload)
            .unwrap_or_else(|e| panic!("a JSON frame: {e}: {}", String::from_utf8_lossy(payload))),
    }
}

/// One bridge worker driven frame by frame.
pub(crate) struct Peer {
    pub(crate) process: RawProcess,
    pub(crate) codec: WireCodec,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) stdout: ChildStdout,
    pub(crate) stderr: Arc<Mutex<Vec<u8>>>,
    pub(crate) what: String,
}

impl Peer {
    /// Starts the worker `launch` starts, named `what` in failures, and
    /// reads its `hello`.
    pub(crate) async fn spawn(launch: Launch, codec: WireCodec, what: String) -> Peer {
        let mut process = RawProcess::spawn(launch, codec)
            .await
            .unwrap_or_else(|e| panic!("{what}: starts: {e}"));
        let stdin = process.take_stdin();
        let stdout = process.take_stdout().expect("stdout is piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut err) = process.take_stderr() {
            let sink = stderr.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        let mut peer = Peer {
            process,
            codec,
            stdin,
            stdout,
            stderr,
            what,
        };
        let hello = peer.recv().await;
        assert_eq!(hello["type"], "hello", "{}: {hello}", peer.what);
        peer
    }

    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Writes raw bytes (no length prefix added).
    pub(crate) async fn write(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        let write = async {
            stdin.write_all(bytes).await?;
            stdin.flush().await
        };
        tokio::time::timeout(WAIT * 2, write)
            .await
            .unwrap_or_else(|_| panic!("{}: the worker stopped reading", self.what))
            .unwrap_or_else(|e| panic!("{}: writing: {e}", self.what));
    }

    pub(crate) async fn send_payload(&mut self, payload: &[u8]) {
        self.write(&frame(payload)).await;
    }

    pub(crate) async fn send(&mut self, value: &Value) {
        let payload = encode(self.codec, value);
        self.send_payload(&payload).await;
    }

    /// The next frame, or `None` once stdout ends.
    pub(crate) async fn next(&mut self) -> Option<Value> {
        let read = async {
            let mut head = [0u8; 4];
            match self.stdout.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            }
            let len = u32::from_be_bytes(head) as usize;
            assert!(len <= LIMIT, "a sane reply length: {len}");
            let mut payload = vec![0u8; len];
            self.stdout.read_exact(&mut payload).await?;
            Ok::<_, std::io::Error>(Some(payload))
        };
        let payload = tokio::time::timeout(WAIT, read)
            .await
            .unwrap_or_else(|_| panic!("{}: no frame; stderr: {}", self.what, self.stderr()))
            .unwrap_or_else(|e| panic!("{}: reading a frame: {e}", self.what))?;
        Some(decode(self.codec, &payload))
    }

    pub(crate) async fn recv(&mut self) -> Value {
        match self.next().await {
            Some(v) => v,
            None => panic!("{}: stdout ended; stderr: {}", self.what, self.stderr()),
        }
    }

    /// Closes stdin and returns the frames written until stdout ended and
    /// the exit code.
    pub(crate) async fn finish(mut self) -> (Vec<Value>, Option<i32>) {
        drop(self.stdin.take());
        let mut rest = Vec::new();
        while let Some(f) = self.next().await {
            rest.push(f);
        }
        let status = tokio::time::timeout(WAIT, self.process.wait())
            .await
            .unwrap_or_else(|_| panic!("{}: did not exit at EOF", self.what))
            .expect("wait");
        (rest, status.code())
    }
}

/// Just enough MessagePack for the test's side: every value the bridges
/// write, read without losing whether a number was an integer or a float.
pub(crate) mod mp {
    use serde_json::{json, Map, Number, Value};

    pub(crate) fn encode(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Null => out.push(0xc0),
            Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    match u {
                        0..=0x7f => out.push(u as u8),
                        0x80..=0xff => out.extend([0xcc, u as u8]),
                        0x100..=0xffff => {
                            out.push(0xcd);
                            out.extend((u as u16).to_be_bytes());
                        }
                        0x1_0000..=0xffff_ffff => {
                            out.push(0xce);
                            out.extend((u as u32).to_be_bytes());
                        }
                        _ => {
                            out.push(0xcf);
                            out.extend(u.to_be_bytes());
                        }
                    }
                } else if let Some(i) = n.as_i64() {
                    if i >= -32 {
                        out.push(i as u8);
                    } else {
                        out.push(0xd3);
                        out.extend(i.to_be_bytes());
                    }
                } else {
                    out.push(0xcb);
                    out.extend(n.as_f64().unwrap().to_be_bytes());
                }
            }
            Value::String(s) => {
                head(out, s.len(), (0xa0, 31), [0xd9, 0xda, 0xdb]);
                out.extend(s.as_bytes());
            }
            Value::Array(a) => {
                head(out, a.len(), (0x90, 15), [0xdc, 0xdc, 0xdd]);
                for x in a {
                    encode(x, out);
                }
            }
            Value::Object(m) => {
                head(out, m.len(), (0x80, 15), [0xde, 0xde, 0xdf]);
                for (k, x) in m {
                    encode(&Value::String(k.clone()), out);
                    encode(x, out);
                }
            }
        }
    }

    /// The smallest header of a string, array or map of `len` items: the
    /// fix form up to its maximum, else the 8-, 16- or 32-bit length form
    /// (`wide`; an array or map has no 8-bit form, so it names its 16-bit one).
    fn head(out: &mut Vec<u8>, len: usize, (fix, fix_max): (u8, usize), wide: [u8; 3]) {
        if len <= fix_max {
            out.push(fix | len as u8);
        } else if len <= 0xff && wide[0] != wide[1] {
            out.extend([wide[0], len as u8]);
        } else if len <= 0xffff {
            out.push(wide[1]);
            out.extend((len as u16).to_be_bytes());
        } else {
            out.push(wide[2]);
            out.extend((len as u32).to_be_bytes());
        }
    }

    fn take<'a>(b: &'a [u8], pos: &mut usize, n: usize) -> &'a [u8] {
        let s = b
            .get(*pos..*pos + n)
            .unwrap_or_else(|| panic!("MessagePack cut short: {b:02x?}"));
        *pos += n;
        s
    }

    fn be(b: &[u8], pos: &mut usize, n: usize) -> u64 {
        take(b, pos, n)
            .iter()
            .fold(0, |acc, x| (acc << 8) | u64::from(*x))
    }

    fn float(f: f64) -> Value {
        Number::from_f64(f).map_or(Value::Null, Value::Number)
    }

    fn str_of(b: &[u8], pos: &mut usize, n: usize) -> Value {
        let s = take(b, pos, n);
        Value::String(String::from_utf8(s.to_vec()).expect("a UTF-8 str"))
    }

    fn seq(b: &[u8], pos: &mut usize, n: usize) -> Value {
        Value::Array((0..n).map(|_| decode(b, pos)).collect())
    }

    fn map(b: &[u8], pos: &mut usize, n: usize) -> Value {
        let mut m = Map::new();
        for _ in 0..n {
            let k = match decode(b, pos) {
                Value::String(s) => s,
                other => other.to_string(),
            };
            m.insert(k, decode(b, pos));
        }
        Value::Object(m)
    }

    /// One value from `b` at `pos`; `bin` becomes `{"$bin": [bytes]}`,
    /// `ext` becomes `{"$ext": type}`.
    pub(crate) fn decode(b: &[u8], pos: &mut usize) -> Value {
        let t = take(b, pos, 1)[0];
        match t {
            0x00..=0x7f => json!(t),
            0x80..=0x8f => map(b, pos, usize::from(t & 0x0f)),
            0x90..=0x9f => seq(b, pos, usize::from(t & 0x0f)),
            0xa0..=0xbf => str_of(b, pos, usize::from(t & 0x1f)),
            0xc0 => Value::Null,
            0xc2 => json!(false),
            0xc3 => json!(true),
            0xc4..=0xc6 => {
                let n = be(b, pos, 1 << (t - 0xc4)) as usize;
                json!({"$bin": take(b, pos, n)})
            }
            0xc7..=0xc9 => {
                let n = be(b, pos, 1 << (t - 0xc7)) as usize;
                let kind = take(b, pos, 1)[0] as i8;
                take(b, pos, n);
                json!({"$ext": kind})
            }
            0xca => float(f64::from(f32::from_bits(be(b, pos, 4) as u32))),
            0xcb => float(f64::from_bits(be(b, pos, 8))),
            0xcc..=0xcf => json!(be(b, pos, 1 << (t - 0xcc))),
            0xd0 => json!(be(b, pos, 1) as u8 as i8),
            0xd1 => json!(be(b, pos, 2) as u16 as i16),
            0xd2 => json!(be(b, pos, 4) as u32 as i32),
            0xd3 => json!(be(b, pos, 8) as i64),
            0xd4..=0xd8 => {
                let kind = take(b, pos, 1)[0] as i8;
                take(b, pos, 1 << (t - 0xd4));
                json!({"$ext": kind})
            }
            0xd9..=0xdb => {
                let n = be(b, pos, 1 << (t - 0xd9)) as usize;
                str_of(b, pos, n)
            }
            0xdc | 0xdd => {
                let n = be(b, pos, 2 << (t - 0xdc)) as usize;
                seq(b, pos, n)
            }
            0xde | 0xdf => {
                let n = be(b, pos, 2 << (t - 0xde)) as usize;
                map(b, pos, n)
            }
            0xe0..=0xff => json!(t as i8),
            0xc1 => panic!("0xc1 is never used in MessagePack"),
        }
    }
}
