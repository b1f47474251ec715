//! Frames: a 4-byte big-endian length, then the payload. `FrameCodec` for
//! tokio-util's framed streams, `encode_frame` to serialise straight into
//! one.

use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::depth::{Limited, Tripped};
use crate::Error;

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
