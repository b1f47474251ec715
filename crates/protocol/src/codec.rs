//! The wire codecs: the `Codec` trait, JSON and MessagePack (one cargo
//! feature each), and `WireCodec`, the closed enum of those compiled in.

#[cfg(any(feature = "json", feature = "msgpack"))]
use bytes::BytesMut;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[cfg(any(feature = "json", feature = "msgpack"))]
use crate::Error;
use crate::Result;

/// A wire codec: how one payload becomes bytes and back.
///
/// Implementations exist for JSON ([`Json`], feature `json`) and MessagePack
/// ([`MsgPack`], feature `msgpack`); [`WireCodec`] is the closed enum of both,
/// for choosing at start-up. Implement this trait to bring a codec of your own;
/// its [`name`](Codec::name) is what the worker finds in `SNAKEPIT_CODEC`.
pub trait Codec: Send + Sync + 'static {
    /// The name workers are told in `SNAKEPIT_CODEC`.
    fn name(&self) -> &'static str;

    /// Serialises `value`, appending the bytes to `dst`.
    fn encode<T: Serialize + ?Sized>(&self, value: &T, dst: &mut BytesMut) -> Result<()>;

    /// Deserialises one value from the whole of `src`.
    fn decode<'de, T: Deserialize<'de>>(&self, src: &'de [u8]) -> Result<T>;

    /// A reply's id and outcome read from its first bytes alone, when the
    /// payload begins the way this codec writes a reply; `None` when not
    /// sure, which is always right (the default: the reader then decodes
    /// the routing part in full). The reader's fast path, behind
    /// [`peek_response`](crate::peek_response).
    fn peek_response(&self, payload: &[u8]) -> Option<(u64, bool)> {
        let _ = payload;
        None
    }

    /// The result of a successful reply, decoded straight from where it
    /// lies in the payload when the reply has the usual shape (`id`,
    /// `success`, `result` and nothing else); `None` when not, or when the
    /// result does not decode as `T` (the default: always `None`). The
    /// fast path of [`decode_response`](crate::decode_response), which then
    /// decodes the whole reply and reports what is wrong with it.
    fn decode_success<T: DeserializeOwned>(&self, payload: &[u8]) -> Option<T> {
        let _ = payload;
        None
    }
}

/// An encoder's output appended to a `BytesMut`. Serializers write a
/// value in many small pieces (a quote, a key, a comma); each piece is one
/// inlined append here, where `BufMut::writer`'s generic `put` costs several
/// calls.
#[cfg(any(feature = "json", feature = "msgpack"))]
pub(crate) struct Appender<'a>(pub(crate) &'a mut BytesMut);

#[cfg(any(feature = "json", feature = "msgpack"))]
impl std::io::Write for Appender<'_> {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.extend_from_slice(buf);
        Ok(())
    }

    #[inline]
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// JSON payloads: UTF-8 text, written compact.
#[cfg(feature = "json")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json;

#[cfg(feature = "json")]
impl Codec for Json {
    fn name(&self) -> &'static str {
        "json"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T, dst: &mut BytesMut) -> Result<()> {
        serde_json::to_writer(Appender(dst), value).map_err(|e| Error::encode("json", e))
    }

    fn decode<'de, T: Deserialize<'de>>(&self, src: &'de [u8]) -> Result<T> {
        json_from(src).map_err(|e| json_error(src, e))
    }

    fn peek_response(&self, payload: &[u8]) -> Option<(u64, bool)> {
        crate::message::peek::json(payload)
    }

    fn decode_success<T: DeserializeOwned>(&self, payload: &[u8]) -> Option<T> {
        // `from_slice` checks that the value fills the slice: a reply with
        // more after its result is not this shape.
        json_from(crate::message::peek::json_result(payload)?).ok()
    }
}

/// Parses JSON text from bytes. Bytes that are UTF-8 (nearly always) are
/// checked once, in bulk, and parsed as a `str`, so serde_json does not check
/// each string again as it meets it (a tenth of a small reply's decoding);
/// other bytes are parsed as bytes, which reports where the encoding breaks.
#[cfg(feature = "json")]
fn json_from<'de, T: Deserialize<'de>>(src: &'de [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(src) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(src),
    }
}

#[cfg(feature = "json")]
fn json_error(src: &[u8], e: serde_json::Error) -> Error {
    use serde_json::error::Category;
    let detail = e.to_string();
    match e.classify() {
        // serde_json has no other way to tell its recursion limit (the
        // same as `MAX_DEPTH`) from a syntax error.
        Category::Syntax if detail.starts_with("recursion limit exceeded") => Error::TooDeep {
            codec: "json",
            max: crate::MAX_DEPTH,
            encoding: false,
        },
        Category::Data => Error::Mismatch {
            codec: "json",
            detail,
        },
        // Only on the error path: tell a broken encoding from broken syntax.
        _ if std::str::from_utf8(src).is_err() => Error::InvalidUtf8 {
            codec: "json",
            detail,
        },
        _ => Error::InvalidPayload {
            codec: "json",
            detail,
        },
    }
}

/// MessagePack payloads: structs as maps keyed by field name, so that the other
/// side decodes them to dicts and objects.
#[cfg(feature = "msgpack")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsgPack;

#[cfg(feature = "msgpack")]
impl Codec for MsgPack {
    fn name(&self) -> &'static str {
        "msgpack"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T, dst: &mut BytesMut) -> Result<()> {
        let mut ser = rmp_serde::Serializer::new(Appender(dst)).with_struct_map();
        value
            .serialize(&mut ser)
            .map_err(|e| Error::encode("msgpack", e))
    }

    fn decode<'de, T: Deserialize<'de>>(&self, src: &'de [u8]) -> Result<T> {
        use rmp_serde::decode::Error as E;
        // The payload's structure is checked first, lengths only and no
        // allocation: once no array, map, string or binary claims more than
        // the bytes left, what the decoder reserves for declared lengths is
        // bounded by the payload's size. (serde reserves up to 1 MiB per
        // declared length: a few hundred bytes of nested arrays that each
        // claim 2^32 - 1 elements made a recursive type reserve 1 MiB at
        // every level.) The same pass finds where the value ends: bytes
        // after it make the payload something else than one value, as
        // serde_json says of JSON.
        let end = crate::skim::msgpack::value(src, 0)?;
        if end != src.len() {
            return Err(Error::InvalidPayload {
                codec: "msgpack",
                detail: format!("{} bytes after the value", src.len() - end),
            });
        }
        let mut de = rmp_serde::Deserializer::from_read_ref(src);
        // rmp-serde counts down from this and fails on reaching 0: at most
        // `MAX_DEPTH` nested arrays, maps and extensions, as serde_json.
        de.set_max_depth(crate::MAX_DEPTH + 1);
        let value = T::deserialize(&mut de).map_err(|e| {
            let detail = e.to_string();
            match e {
                E::DepthLimitExceeded => Error::TooDeep {
                    codec: "msgpack",
                    max: crate::MAX_DEPTH,
                    encoding: false,
                },
                E::Utf8Error(_) => Error::InvalidUtf8 {
                    codec: "msgpack",
                    detail,
                },
                // 0xc1 is the one marker MessagePack never uses: not a value at all.
                E::TypeMismatch(rmp::Marker::Reserved) => Error::InvalidPayload {
                    codec: "msgpack",
                    detail,
                },
                E::TypeMismatch(_) | E::Syntax(_) | E::Uncategorized(_) | E::OutOfRange => {
                    Error::Mismatch {
                        codec: "msgpack",
                        detail,
                    }
                }
                _ => Error::InvalidPayload {
                    codec: "msgpack",
                    detail,
                },
            }
        })?;
        Ok(value)
    }

    fn peek_response(&self, payload: &[u8]) -> Option<(u64, bool)> {
        crate::message::peek::msgpack(payload)
    }
}

/// The built-in codecs as a closed enum, for choosing one at start-up (from
/// configuration, say) without making everything generic. Read through
/// serde (a configuration file), it takes the names its
/// [`FromStr`](std::str::FromStr) takes, in any case.
///
/// ```
/// use snakepit_protocol::{Codec, WireCodec};
/// let codec: WireCodec = "msgpack".parse().unwrap();
/// assert_eq!(codec.name(), "msgpack");
/// assert!("yaml".parse::<WireCodec>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum WireCodec {
    /// [`Json`].
    #[cfg(feature = "json")]
    Json,
    /// [`MsgPack`].
    #[cfg(feature = "msgpack")]
    MsgPack,
}

impl<'de> Deserialize<'de> for WireCodec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

// Which default depends on the features compiled in, so it is not derived.
#[cfg(feature = "json")]
#[allow(clippy::derivable_impls)]
impl Default for WireCodec {
    fn default() -> Self {
        WireCodec::Json
    }
}

#[cfg(all(not(feature = "json"), feature = "msgpack"))]
#[allow(clippy::derivable_impls)]
impl Default for WireCodec {
    fn default() -> Self {
        WireCodec::MsgPack
    }
}

impl Codec for WireCodec {
    fn name(&self) -> &'static str {
        // `*self`: without any codec the enum is empty, and this match
        // compiles to nothing instead of a second error after lib.rs's.
        match *self {
            #[cfg(feature = "json")]
            WireCodec::Json => Json.name(),
            #[cfg(feature = "msgpack")]
            WireCodec::MsgPack => MsgPack.name(),
        }
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T, dst: &mut BytesMut) -> Result<()> {
        match *self {
            #[cfg(feature = "json")]
            WireCodec::Json => Json.encode(value, dst),
            #[cfg(feature = "msgpack")]
            WireCodec::MsgPack => MsgPack.encode(value, dst),
        }
    }

    fn decode<'de, T: Deserialize<'de>>(&self, src: &'de [u8]) -> Result<T> {
        match *self {
            #[cfg(feature = "json")]
            WireCodec::Json => Json.decode(src),
            #[cfg(feature = "msgpack")]
            WireCodec::MsgPack => MsgPack.decode(src),
        }
    }

    fn peek_response(&self, payload: &[u8]) -> Option<(u64, bool)> {
        match *self {
            #[cfg(feature = "json")]
            WireCodec::Json => Json.peek_response(payload),
            #[cfg(feature = "msgpack")]
            WireCodec::MsgPack => MsgPack.peek_response(payload),
        }
    }

    fn decode_success<T: DeserializeOwned>(&self, payload: &[u8]) -> Option<T> {
        match *self {
            #[cfg(feature = "json")]
            WireCodec::Json => Json.decode_success(payload),
            #[cfg(feature = "msgpack")]
            WireCodec::MsgPack => MsgPack.decode_success(payload),
        }
    }
}

/// The error of parsing a codec name that this build does not know.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown codec {0:?}: expected one of {known}", known = WireCodec::NAMES.join(", "))]
pub struct UnknownCodec(pub String);

impl WireCodec {
    /// The names of the codecs compiled in.
    pub const NAMES: &'static [&'static str] = &[
        #[cfg(feature = "json")]
        "json",
        #[cfg(feature = "msgpack")]
        "msgpack",
    ];
}

impl std::str::FromStr for WireCodec {
    type Err = UnknownCodec;

    fn from_str(s: &str) -> Result<Self, UnknownCodec> {
        match s.to_ascii_lowercase().as_str() {
            #[cfg(feature = "json")]
            "json" => Ok(WireCodec::Json),
            #[cfg(feature = "msgpack")]
            "msgpack" | "messagepack" => Ok(WireCodec::MsgPack),
            _ => Err(UnknownCodec(s.to_owned())),
        }
    }
}

impl std::fmt::Display for WireCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
