//! Frames: a 4-byte big-endian length, then the payload. `FrameCodec` for
//! tokio-util's framed streams, `encode_frame` to serialise straight into
//! one.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::depth::{Limited, Tripped};
use crate::{Error, Request, WireCodec};

/// Bytes in a frame header: a big-endian `u32` payload length.
pub const HEADER_LEN: usize = 4;

/// The default largest payload a peer may send: 64 MiB.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 64 * 1024 * 1024;

/// Length-prefixed framing for `FramedRead`/`FramedWrite`: a 4-byte
/// big-endian length, then that many bytes of payload.
///
/// Encoding writes the header before each payload it is given, so what
/// one side's `FramedWrite` sends, the other side's `FramedRead` yields.
/// Decoding yields each payload as a `BytesMut` split off the read buffer
/// (no copy). A length above `max_frame_size` fails with
/// [`Error::FrameTooLarge`] as soon as the header has arrived, before any
/// space is reserved for the payload; a stream that ends mid-frame fails with
/// [`Error::Truncated`].
///
/// ```
/// use bytes::BytesMut;
/// use snakepit_protocol::FrameCodec;
/// use tokio_util::codec::Decoder;
///
/// let mut codec = FrameCodec::new(1024);
/// let mut buf = BytesMut::from(&b"\x00\x00\x00\x02hi\x00\x00"[..]);
/// assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"hi");
/// assert!(codec.decode(&mut buf).unwrap().is_none()); // half a header so far
/// ```
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame_size: usize,
}

impl FrameCodec {
    /// A codec that refuses payloads above `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> Self {
        FrameCodec { max_frame_size }
    }

    /// The largest payload this codec accepts.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(DEFAULT_MAX_FRAME_SIZE)
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, Error> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max_frame_size {
            return Err(Error::FrameTooLarge {
                len: len as u64,
                max: self.max_frame_size,
            });
        }
        let total = HEADER_LEN + len;
        if src.len() < total {
            // Reserve what this frame still needs, now that it is known to be
            // within bounds, so that large frames are read without regrowing.
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        Ok(Some(src.split_to(len)))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, Error> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => {
                let expected = if src.len() < HEADER_LEN {
                    HEADER_LEN
                } else {
                    HEADER_LEN + u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize
                };
                let got = src.len();
                src.clear();
                Err(Error::Truncated { expected, got })
            }
        }
    }
}

/// Frames a payload: its 4-byte length, then the payload. A payload above
/// `max_frame_size` fails with [`Error::FrameTooLarge`] and writes nothing.
/// (To serialise a value straight into a frame, use [`encode_frame`].)
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use snakepit_protocol::FrameCodec;
/// use tokio_util::codec::Encoder;
///
/// let mut buf = BytesMut::new();
/// FrameCodec::default().encode(Bytes::from_static(b"hi"), &mut buf).unwrap();
/// assert_eq!(&buf[..], b"\x00\x00\x00\x02hi");
/// ```
impl Encoder<bytes::Bytes> for FrameCodec {
    type Error = Error;

    fn encode(&mut self, payload: bytes::Bytes, dst: &mut BytesMut) -> Result<(), Error> {
        let len = payload.len();
        if len > self.max_frame_size || len > u32::MAX as usize {
            return Err(Error::FrameTooLarge {
                len: len as u64,
                max: self.max_frame_size,
            });
        }
        dst.reserve(HEADER_LEN + len);
        dst.put_u32(len as u32);
        dst.extend_from_slice(&payload);
        Ok(())
    }
}

/// Encodes `value` with `codec` as one frame appended to `dst`: the header is
/// reserved first and patched afterwards, so the payload is serialised
/// straight into the frame buffer with no intermediate copy.
///
/// A value that nests deeper than [`MAX_DEPTH`](crate::MAX_DEPTH) (counting
/// the frame's own map) fails with [`Error::TooDeep`] (`encoding: true`), a
/// payload above `max_frame_size` with [`Error::FrameTooLarge`]; either way
/// `dst` is left as it was, so nothing of the refused frame can be sent.
///
/// ```
/// use bytes::BytesMut;
/// use serde_json::{json, Value};
/// use snakepit_protocol::{encode_frame, Error, Json, Request, MAX_DEPTH};
///
/// // A request's own map is one level, so its arguments may nest MAX_DEPTH - 1.
/// let nest = |depth: usize| (0..depth).fold(Value::Null, |v, _| json!([v]));
/// let mut buf = BytesMut::new();
/// let ok = nest(MAX_DEPTH - 1);
/// encode_frame(&Json, &Request::new(1, "run", &ok), 1 << 20, &mut buf).unwrap();
/// let deep = nest(MAX_DEPTH);
/// buf.clear();
/// let err = encode_frame(&Json, &Request::new(2, "run", &deep), 1 << 20, &mut buf).unwrap_err();
/// assert!(matches!(err, Error::TooDeep { encoding: true, .. }));
/// assert!(buf.is_empty());
/// ```
pub fn encode_frame<C, T>(
    codec: &C,
    value: &T,
    max_frame_size: usize,
    dst: &mut BytesMut,
) -> Result<(), Error>
where
    C: crate::Codec + ?Sized,
    T: serde::Serialize + ?Sized,
{
    let start = dst.len();
    dst.put_u32(0);
    let tripped = Tripped::default();
    // MessagePack writes byte strings as `bin`; JSON (and, to be safe, any
    // other codec) as arrays, one level deeper.
    let bytes_nest = codec.name() != "msgpack";
    if let Err(e) = codec.encode(&Limited::new(value, &tripped, bytes_nest), dst) {
        dst.truncate(start);
        if tripped.get() {
            return Err(Error::TooDeep {
                codec: codec.name(),
                max: crate::MAX_DEPTH,
                encoding: true,
            });
        }
        return Err(e);
    }
    finish_frame(dst, start, max_frame_size)
}

/// Frames a request as [`encode_frame`] does, byte for byte, and faster
/// with [`WireCodec::Json`]: the envelope (id, command, timestamp, options)
/// is written directly and only the arguments go through the serializer.
/// The same errors: [`Error::TooDeep`] for arguments that nest too deep,
/// [`Error::FrameTooLarge`], the codec's error; nothing written on error.
///
/// ```
/// use bytes::BytesMut;
/// use snakepit_protocol::{encode_frame, encode_request, Request, WireCodec};
///
/// let request = Request::new(7, "add", &[1, 2]);
/// let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
/// encode_request(&WireCodec::Json, &request, 1024, &mut a).unwrap();
/// encode_frame(&WireCodec::Json, &request, 1024, &mut b).unwrap();
/// assert_eq!(a, b);
/// ```
pub fn encode_request<A: serde::Serialize + ?Sized>(
    codec: &WireCodec,
    request: &Request<'_, A>,
    max_frame_size: usize,
    dst: &mut BytesMut,
) -> Result<(), Error> {
    match codec {
        #[cfg(feature = "json")]
        WireCodec::Json => json_request(request, max_frame_size, dst),
        #[allow(unreachable_patterns)] // with JSON alone
        _ => encode_frame(codec, request, max_frame_size, dst),
    }
}

/// A request as serde_json writes `Request`'s derived `Serialize`: the same
/// fields in the same order, the same skipped ones.
#[cfg(feature = "json")]
fn json_request<A: serde::Serialize + ?Sized>(
    r: &Request<'_, A>,
    max_frame_size: usize,
    dst: &mut BytesMut,
) -> Result<(), Error> {
    use crate::codec::Appender;
    fn string(dst: &mut BytesMut, s: &str) -> Result<(), Error> {
        // Nearly always (a command, a session id): nothing to escape, and
        // serde_json would write the same bytes.
        if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            dst.reserve(s.len() + 2);
            dst.put_u8(b'"');
            dst.extend_from_slice(s.as_bytes());
            dst.put_u8(b'"');
            return Ok(());
        }
        serde_json::to_writer(Appender(dst), s).map_err(|e| Error::encode("json", e))
    }
    let start = dst.len();
    dst.put_u32(0);
    let mut digits = [0u8; 20];
    dst.extend_from_slice(b"{\"id\":");
    dst.extend_from_slice(format_u64(&mut digits, r.id));
    dst.extend_from_slice(b",\"command\":");
    let mut written = string(dst, r.command);
    if written.is_ok() {
        dst.extend_from_slice(b",\"args\":");
        // The request's own map is the first level.
        let tripped = Tripped::default();
        written = serde_json::to_writer(Appender(dst), &Limited::json_at(r.args, &tripped, 1))
            .map_err(|e| {
                if tripped.get() {
                    Error::TooDeep {
                        codec: "json",
                        max: crate::MAX_DEPTH,
                        encoding: true,
                    }
                } else {
                    Error::encode("json", e)
                }
            });
    }
    if let Err(e) = written {
        dst.truncate(start);
        return Err(e);
    }
    let mut stamp = [0u8; 27];
    r.timestamp.write(&mut stamp);
    dst.extend_from_slice(b",\"timestamp\":\"");
    dst.extend_from_slice(&stamp);
    dst.extend_from_slice(b"\"");
    fn optional(dst: &mut BytesMut, key: &[u8], v: Option<&str>) -> Result<(), Error> {
        match v {
            Some(v) => {
                dst.extend_from_slice(key);
                string(dst, v)
            }
            None => Ok(()),
        }
    }
    let mut rest = optional(dst, b",\"session_id\":", r.session_id);
    if let (Ok(()), Some(ms)) = (&rest, r.timeout_ms) {
        dst.extend_from_slice(b",\"timeout_ms\":");
        dst.extend_from_slice(format_u64(&mut digits, ms));
    }
    if r.stream {
        dst.extend_from_slice(b",\"stream\":true");
    }
    for (key, v) in [
        (&b",\"traceparent\":"[..], r.traceparent),
        (b",\"tracestate\":", r.tracestate),
        (b",\"baggage\":", r.baggage),
    ] {
        rest = rest.and_then(|()| optional(dst, key, v));
    }
    if let Err(e) = rest {
        dst.truncate(start);
        return Err(e);
    }
    dst.extend_from_slice(b"}");
    finish_frame(dst, start, max_frame_size)
}

/// Writes the length prefix of the frame that starts at `start` (its
/// payload written after the header's room), or takes the frame back out if
/// the payload is over `max_frame_size`.
fn finish_frame(dst: &mut BytesMut, start: usize, max_frame_size: usize) -> Result<(), Error> {
    let len = dst.len() - start - HEADER_LEN;
    if len > max_frame_size || len > u32::MAX as usize {
        dst.truncate(start);
        return Err(Error::FrameTooLarge {
            len: len as u64,
            max: max_frame_size,
        });
    }
    dst[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// `n` in decimal, in the tail of `buf`.
#[cfg(feature = "json")]
fn format_u64(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut at = buf.len();
    // Two digits per division.
    while n >= 100 {
        let two = (n % 100) as u8;
        n /= 100;
        at -= 2;
        buf[at] = b'0' + two / 10;
        buf[at + 1] = b'0' + two % 10;
    }
    if n >= 10 {
        at -= 2;
        buf[at] = b'0' + n as u8 / 10;
        buf[at + 1] = b'0' + n as u8 % 10;
    } else {
        at -= 1;
        buf[at] = b'0' + n as u8;
    }
    &buf[at..]
}

#[cfg(all(test, feature = "json", feature = "msgpack"))]
mod tests {
    use super::*;
    use crate::{Timestamp, MAX_DEPTH};
    use serde_json::{json, Value};

    fn both(r: &Request<'_, Value>, codec: WireCodec, max: usize) -> [Result<BytesMut, String>; 2] {
        let run = |direct: bool| {
            let mut buf = BytesMut::from(&b"before"[..]);
            let r = if direct {
                encode_request(&codec, r, max, &mut buf)
            } else {
                encode_frame(&codec, r, max, &mut buf)
            };
            match r {
                Ok(()) => Ok(buf),
                Err(e) => {
                    assert_eq!(&buf[..], b"before", "nothing written on error");
                    Err(format!("{e:?}"))
                }
            }
        };
        [run(true), run(false)]
    }

    #[test]
    fn a_request_is_written_as_its_derived_serialization_writes_it() {
        let nest = |depth: usize| (0..depth).fold(Value::Null, |v, _| json!([v]));
        let args = [
            Value::Null,
            json!({}),
            json!({"a": [1, 2.5, "x\"\\\n\u{1}é"], "b": {"c": null, "d": true}}),
            json!("\u{2028} \u{7f}"),
            nest(MAX_DEPTH - 1),
            nest(MAX_DEPTH),
        ];
        // Strings with bytes to escape, and without (written directly).
        let commands = ["run \"it\"\t", "ping", "é\u{7f}~ /"];
        for (i, args) in args.iter().enumerate() {
            for full in [false, true] {
                let id = [u64::MAX, 0, 9, 10, 100, 1_000_000_007][i];
                let mut r = Request::new(id, commands[i % 3], args);
                r.timestamp = Timestamp(std::time::UNIX_EPOCH);
                if full {
                    r.session_id = Some("s\u{0}1");
                    r.timeout_ms = Some([0, 7, 10, 100, 59_999, u64::MAX][i]);
                    r.stream = true;
                    r.traceparent = Some("00-ab-cd-01");
                    r.tracestate = Some("k=v");
                    r.baggage = Some("a=1,b=\"2\"");
                }
                for codec in [WireCodec::Json, WireCodec::MsgPack] {
                    let [direct, derived] = both(&r, codec, 1 << 20);
                    assert_eq!(direct, derived, "{codec:?} {args} full={full}");
                }
            }
        }
        let r = Request::new(0, "ping", &Value::Null);
        let [direct, derived] = both(&r, WireCodec::Json, 20);
        assert!(direct.as_ref().unwrap_err().contains("FrameTooLarge"));
        assert_eq!(direct, derived);
    }
}
