use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::{self, DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::skim::Raw;
use crate::{Codec, Error, Result};

/// The protocol version this crate speaks (see `docs/protocol.md`).
pub const PROTOCOL_VERSION: u32 = 1;

fn is_false(b: &bool) -> bool {
    !*b
}

/// A request frame (pool -> worker), borrowed so that the arguments are
/// serialised straight from the caller's value into the frame buffer.
#[derive(Debug, Serialize)]
pub struct Request<'a, A: ?Sized> {
    /// Unique per pool at any moment; echoed by the reply.
    pub id: u64,
    /// The command to run.
    pub command: &'a str,
    /// The command's arguments (a map on the wire).
    pub args: &'a A,
    /// When the frame was written.
    pub timestamp: Timestamp,
    /// The session the call belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<&'a str>,
    /// Milliseconds left before the caller gives up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The caller consumes `chunk` frames.
    #[serde(skip_serializing_if = "is_false")]
    pub stream: bool,
    /// W3C trace context of the caller's span.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<&'a str>,
    /// W3C trace state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<&'a str>,
}

impl<'a, A: ?Sized> Request<'a, A> {
    /// A request with only the fields the original protocol had.
    pub fn new(id: u64, command: &'a str, args: &'a A) -> Self {
        Request {
            id,
            command,
            args,
            timestamp: Timestamp::now(),
            session_id: None,
            timeout_ms: None,
            stream: false,
            traceparent: None,
            tracestate: None,
        }
    }
}

/// A `cancel` frame (pool -> worker): the caller of request `id` gave up.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Cancel {
    #[serde(rename = "type")]
    kind: TypeTag,
    /// The request to stop.
    pub id: u64,
}

impl Cancel {
    /// Cancels request `id`.
    pub fn new(id: u64) -> Self {
        Cancel {
            kind: TypeTag("cancel"),
            id,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct TypeTag(&'static str);

impl Serialize for TypeTag {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

/// A `host_reply` frame (pool -> worker): the answer to a worker's
/// `host_call` with the same `id`.
#[derive(Debug, Serialize)]
pub struct HostReply<'a, R: ?Sized> {
    #[serde(rename = "type")]
    kind: TypeTag,
    /// The worker's id for its host call.
    pub id: u64,
    /// Whether the function succeeded.
    pub success: bool,
    /// The function's result, on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'a R>,
    /// Why it failed, otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a RemoteError>,
}

impl<'a, R: ?Sized> HostReply<'a, R> {
    /// A successful reply.
    pub fn ok(id: u64, result: &'a R) -> Self {
        HostReply {
            kind: TypeTag("host_reply"),
            id,
            success: true,
            result: Some(result),
            error: None,
        }
    }

    /// A failed reply.
    pub fn err(id: u64, error: &'a RemoteError) -> Self {
        HostReply {
            kind: TypeTag("host_reply"),
            id,
            success: false,
            result: None,
            error: Some(error),
        }
    }
}

/// A `response` frame (worker -> pool), for code that plays the worker's
/// side (test workers, a worker written in Rust).
#[derive(Debug, Serialize)]
pub struct Response<'a, R: ?Sized> {
    /// The request's id.
    pub id: u64,
    /// Whether the command succeeded.
    pub success: bool,
    /// The command's result, on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'a R>,
    /// Why it failed, otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a RemoteError>,
    /// When the reply was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
}

/// An error reported by the other side: a worker's failed command, or the
/// host's failed host call.
///
/// On the wire it is a map `{type, message, traceback}`, or, from workers of
/// the original protocol, a plain string (then `kind` is `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteError {
    /// The error's class (`ValueError`, `Cancelled`, ...), if the peer said.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A human-readable message.
    pub message: String,
    /// The peer's stack trace, if it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
}

impl RemoteError {
    /// An error of type `kind` with `message`.
    pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
        RemoteError {
            kind: Some(kind.into()),
            message: message.into(),
            traceback: None,
        }
    }

    /// Whether the peer reports the call as cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.kind.as_deref() == Some("Cancelled")
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Some(kind) => write!(f, "{kind}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl<'de> Deserialize<'de> for RemoteError {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RemoteError;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an error message or a map {type, message, traceback}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<RemoteError, E> {
                Ok(RemoteError {
                    kind: None,
                    message: v.to_owned(),
                    traceback: None,
                })
            }
            fn visit_map<M: MapAccess<'de>>(
                self,
                mut map: M,
            ) -> std::result::Result<RemoteError, M::Error> {
                let (mut kind, mut message, mut traceback) = (None, None, None);
                while let Some(key) = map.next_key::<Key>()? {
                    match key.0.as_str() {
                        "type" => kind = map.next_value::<Option<Text>>()?.map(|t| t.0),
                        "message" => message = map.next_value::<Option<Text>>()?.map(|t| t.0),
                        "traceback" => traceback = map.next_value::<Option<Text>>()?.map(|t| t.0),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(RemoteError {
                    kind,
                    message: message.unwrap_or_default(),
                    traceback,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Text that some MessagePack peers send as `bin` (Ruby's binary-encoded
/// exception messages): taken as UTF-8, with invalid bytes replaced.
struct Text(String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> std::result::Result<Text, E> {
                Ok(Text(String::from_utf8_lossy(v).into_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d).map(Key)
    }
}

/// What a worker can do, from its optional `hello` frame. The defaults are
/// those of a worker of the original protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    /// How many requests the worker runs at once.
    pub max_concurrency: u32,
    /// The worker acts on `cancel` frames.
    pub cancel: bool,
    /// SIGINT during a handler cancels it.
    pub sigint: bool,
    /// The worker may send `chunk` frames.
    pub streaming: bool,
    /// The worker may send `host_call` frames.
    pub host_calls: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            max_concurrency: 1,
            cancel: false,
            sigint: false,
            streaming: false,
            host_calls: false,
        }
    }
}

/// The optional first frame of a worker.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Hello {
    /// The protocol version the worker speaks.
    pub protocol: u32,
    /// The worker's process id, as it sees it.
    pub pid: Option<u32>,
    /// The bridge's name and version, e.g. `snakepit-python/0.1.0`.
    pub bridge: Option<String>,
    /// The runtime, e.g. `CPython 3.11.7`.
    pub runtime: Option<String>,
    /// What the worker can do.
    pub capabilities: Capabilities,
}

/// The routing part of a frame from a worker, decoded without touching its
/// payload (`result`, `data`, `args`), which the receiver decodes later
/// straight into its own type with [`decode_response`], [`decode_chunk`] or
/// [`decode_host_call_args`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inbound {
    /// A final reply to request `id`; `id` 0 is a worker's report that it
    /// could not decode a frame.
    Response {
        /// The request's id.
        id: u64,
        /// Whether it succeeded.
        success: bool,
    },
    /// A partial result of request `id`.
    Chunk {
        /// The request's id.
        id: u64,
    },
    /// The worker's hello.
    Hello(Hello),
    /// The worker calls a host function.
    HostCall {
        /// The worker's id for this call.
        id: u64,
        /// The request the worker is serving, if it said.
        request_id: Option<u64>,
        /// The function's name.
        function: String,
    },
}

/// The routing part of a frame from the pool, as a worker sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outbound {
    /// Run `command`; the arguments stay in the payload.
    Request {
        /// The request's id.
        id: u64,
        /// The command.
        command: String,
    },
    /// Stop request `id`.
    Cancel {
        /// The request's id.
        id: u64,
    },
    /// The answer to host call `id`.
    HostReply {
        /// The worker's id for its host call.
        id: u64,
        /// Whether it succeeded.
        success: bool,
    },
}

/// A field's value when only its kind matters, so that a frame with a field
/// of the wrong type is reported as such rather than as a parse failure.
#[derive(Debug)]
enum Scalar {
    Null,
    Bool(bool),
    Int(i128),
    Str(String),
    Other,
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_unit<E>(self) -> std::result::Result<Scalar, E> {
                Ok(Scalar::Null)
            }
            fn visit_none<E>(self) -> std::result::Result<Scalar, E> {
                Ok(Scalar::Null)
            }
            fn visit_some<D: Deserializer<'de>>(
                self,
                d: D,
            ) -> std::result::Result<Scalar, D::Error> {
                Scalar::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> std::result::Result<Scalar, E> {
                Ok(Scalar::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<Scalar, E> {
                Ok(Scalar::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<Scalar, E> {
                Ok(Scalar::Int(v.into()))
            }
            fn visit_f64<E>(self, _: f64) -> std::result::Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Scalar, E> {
                Ok(Scalar::Str(v.to_owned()))
            }
            fn visit_bytes<E>(self, _: &[u8]) -> std::result::Result<Scalar, E> {
                Ok(Scalar::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Scalar, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Scalar, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: Option<Scalar>,
    id: Option<Scalar>,
    success: Option<Scalar>,
    command: Option<Scalar>,
    request_id: Option<Scalar>,
    function: Option<Scalar>,
}

/// Decodes the payload into an envelope, telling "not a map" apart from
/// "not valid at all". A payload too deep for the codec's decoder is read
/// again without recursion (the built-in codecs), so that a frame is routed
/// whatever the depth of the values it carries.
fn envelope<C: Codec + ?Sized>(codec: &C, payload: &[u8]) -> Result<Envelope> {
    let not_a_map = |e| match e {
        Error::Mismatch { .. } => Error::WrongType {
            field: "payload",
            expected: "a map",
        },
        other => other,
    };
    match codec.decode::<Envelope>(payload) {
        Err(deep @ Error::TooDeep { .. }) => match skimmed(codec, payload) {
            Some(env) => env.map_err(not_a_map),
            None => Err(deep),
        },
        other => other.map_err(not_a_map),
    }
}

/// The envelope of a payload too deep to decode, read field by field.
fn skimmed<C: Codec + ?Sized>(codec: &C, payload: &[u8]) -> Option<Result<Envelope>> {
    const NAMES: [&str; 6] = ["type", "id", "success", "command", "request_id", "function"];
    let raws = match crate::skim::fields(codec.name(), payload, NAMES)? {
        Ok(raws) => raws,
        Err(e) => return Some(Err(e)),
    };
    let mut values = raws.into_iter().map(|raw| match raw {
        None => Ok(None),
        Some(Raw::Container) => Ok(Some(Scalar::Other)),
        Some(Raw::Scalar(bytes)) => codec.decode::<Scalar>(bytes).map(Some),
    });
    let mut next = || values.next().unwrap_or(Ok(None));
    Some((|| {
        Ok(Envelope {
            kind: next()?,
            id: next()?,
            success: next()?,
            command: next()?,
            request_id: next()?,
            function: next()?,
        })
    })())
}

fn present(kind: &'static str, field: &'static str, v: Option<Scalar>) -> Result<Scalar> {
    match v {
        None | Some(Scalar::Null) => Err(Error::MissingField { kind, field }),
        Some(s) => Ok(s),
    }
}

fn id_of(kind: &'static str, field: &'static str, v: Option<Scalar>) -> Result<u64> {
    match present(kind, field, v)? {
        Scalar::Int(n) if (0..=u64::MAX as i128).contains(&n) => Ok(n as u64),
        _ => Err(Error::WrongType {
            field,
            expected: "a non-negative integer",
        }),
    }
}

fn bool_of(kind: &'static str, field: &'static str, v: Option<Scalar>) -> Result<bool> {
    match present(kind, field, v)? {
        Scalar::Bool(b) => Ok(b),
        _ => Err(Error::WrongType {
            field,
            expected: "a boolean",
        }),
    }
}

fn str_of(kind: &'static str, field: &'static str, v: Option<Scalar>) -> Result<String> {
    match present(kind, field, v)? {
        Scalar::Str(s) => Ok(s),
        _ => Err(Error::WrongType {
            field,
            expected: "a string",
        }),
    }
}

fn type_of(v: Option<Scalar>) -> Result<Option<String>> {
    match v {
        None | Some(Scalar::Null) => Ok(None),
        Some(Scalar::Str(s)) => Ok(Some(s)),
        Some(_) => Err(Error::WrongType {
            field: "type",
            expected: "a string",
        }),
    }
}

/// Reads the routing part of a frame from a worker.
pub fn decode_inbound<C: Codec + ?Sized>(codec: &C, payload: &[u8]) -> Result<Inbound> {
    let env = envelope(codec, payload)?;
    match type_of(env.kind)?.as_deref() {
        None | Some("response") => Ok(Inbound::Response {
            id: id_of("response", "id", env.id)?,
            success: bool_of("response", "success", env.success)?,
        }),
        Some("chunk") => Ok(Inbound::Chunk {
            id: id_of("chunk", "id", env.id)?,
        }),
        Some("hello") => codec.decode::<Hello>(payload).map(Inbound::Hello),
        Some("host_call") => Ok(Inbound::HostCall {
            id: id_of("host_call", "id", env.id)?,
            request_id: match env.request_id {
                None | Some(Scalar::Null) => None,
                v => Some(id_of("host_call", "request_id", v)?),
            },
            function: str_of("host_call", "function", env.function)?,
        }),
        Some(other) => Err(Error::UnknownFrameType(other.to_owned())),
    }
}

/// The routing part of a reply, read from its first bytes only, when the
/// frame begins the way every bundled bridge writes replies: a map whose
/// first key is `id` (an unsigned integer) and whose second is `success` (a
/// boolean). `None` means "not sure": call [`decode_inbound`].
///
/// This is the reader's fast path: it costs tens of instructions instead of
/// a scan of the whole payload. It does not validate the rest of the frame,
/// so whoever receives the frame must decode it with [`decode_response`],
/// which does. A frame from a worker that has a `success` key is a reply by
/// the protocol's definition (chunks, hellos and host calls have none).
///
/// ```
/// use snakepit_protocol::{peek_response, WireCodec};
/// let frame = br#"{"id":42,"success":true,"result":{"status":"ok"}}"#;
/// assert_eq!(peek_response(&WireCodec::Json, frame), Some((42, true)));
/// assert_eq!(peek_response(&WireCodec::Json, br#"{"type":"chunk","id":1}"#), None);
/// ```
pub fn peek_response<C: Codec + ?Sized>(codec: &C, payload: &[u8]) -> Option<(u64, bool)> {
    match codec.name() {
        "json" => peek_json(payload),
        "msgpack" => peek_msgpack(payload),
        _ => None,
    }
}

fn peek_json(p: &[u8]) -> Option<(u64, bool)> {
    let rest = p.strip_prefix(b"{\"id\":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 20 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    let id = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(b",\"success\":")?;
    let (success, rest) = if let Some(r) = rest.strip_prefix(b"true") {
        (true, r)
    } else {
        (false, rest.strip_prefix(b"false")?)
    };
    matches!(rest.first(), Some(b',' | b'}')).then_some((id, success))
}

fn peek_msgpack(p: &[u8]) -> Option<(u64, bool)> {
    let (&map, rest) = p.split_first()?;
    if !(0x82..=0x8f).contains(&map) {
        return None;
    }
    let rest = rest.strip_prefix(b"\xa2id")?;
    let (&marker, rest) = rest.split_first()?;
    let (id, rest) = match marker {
        0x00..=0x7f => (u64::from(marker), rest),
        0xcc => (u64::from(*rest.first()?), rest.get(1..)?),
        0xcd => (
            u64::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?)),
            rest.get(2..)?,
        ),
        0xce => (
            u64::from(u32::from_be_bytes(rest.get(..4)?.try_into().ok()?)),
            rest.get(4..)?,
        ),
        0xcf => (
            u64::from_be_bytes(rest.get(..8)?.try_into().ok()?),
            rest.get(8..)?,
        ),
        _ => return None,
    };
    let rest = rest.strip_prefix(b"\xa7success")?;
    match rest.first()? {
        0xc3 => Some((id, true)),
        0xc2 => Some((id, false)),
        _ => None,
    }
}

/// Reads the routing part of a frame from the pool (the worker's side).
pub fn decode_outbound<C: Codec + ?Sized>(codec: &C, payload: &[u8]) -> Result<Outbound> {
    let env = envelope(codec, payload)?;
    match type_of(env.kind)?.as_deref() {
        None | Some("request") => Ok(Outbound::Request {
            id: id_of("request", "id", env.id)?,
            command: str_of("request", "command", env.command)?,
        }),
        Some("cancel") => Ok(Outbound::Cancel {
            id: id_of("cancel", "id", env.id)?,
        }),
        Some("host_reply") => Ok(Outbound::HostReply {
            id: id_of("host_reply", "id", env.id)?,
            success: bool_of("host_reply", "success", env.success)?,
        }),
        Some(other) => Err(Error::UnknownFrameType(other.to_owned())),
    }
}

#[derive(Deserialize)]
#[serde(bound = "T: Deserialize<'de>")]
struct Body<T> {
    success: Option<bool>,
    #[serde(default = "Option::default")]
    result: Option<T>,
    #[serde(default)]
    error: Option<RemoteError>,
}

/// Decodes the outcome of a `response` (or `host_reply`) frame straight into
/// `T`: `Ok(Ok(result))` on success, `Ok(Err(remote))` when the peer reported
/// a failure, `Err` when the frame is malformed.
///
/// A successful reply with no `result` (or `null`) decodes as `T` from unit,
/// so `serde_json::Value::Null`, `()` and `Option::None` all work.
pub fn decode_response<C, T>(
    codec: &C,
    payload: &[u8],
) -> Result<std::result::Result<T, RemoteError>>
where
    C: Codec + ?Sized,
    T: DeserializeOwned,
{
    let body: Body<T> = codec.decode(payload)?;
    match body.success {
        None => Err(Error::MissingField {
            kind: "response",
            field: "success",
        }),
        Some(true) => match body.result {
            Some(v) => Ok(Ok(v)),
            None => T::deserialize(de::value::UnitDeserializer::<de::value::Error>::new())
                .map(Ok)
                .map_err(|_| Error::MissingField {
                    kind: "response",
                    field: "result",
                }),
        },
        Some(false) => Ok(Err(body.error.unwrap_or_else(|| RemoteError {
            kind: None,
            message: "the worker reported a failure without an error".into(),
            traceback: None,
        }))),
    }
}

#[derive(Deserialize)]
#[serde(bound = "T: Deserialize<'de>")]
struct Field<T> {
    #[serde(default = "Option::default", alias = "args")]
    data: Option<T>,
}

/// Decodes the `data` of a `chunk` frame into `T`.
pub fn decode_chunk<C: Codec + ?Sized, T: DeserializeOwned>(
    codec: &C,
    payload: &[u8],
) -> Result<T> {
    decode_field(codec, payload, "chunk", "data")
}

/// Decodes the `args` of a `host_call` frame (or a `request` frame) into `T`.
pub fn decode_host_call_args<C: Codec + ?Sized, T: DeserializeOwned>(
    codec: &C,
    payload: &[u8],
) -> Result<T> {
    decode_field(codec, payload, "host_call", "args")
}

fn decode_field<C: Codec + ?Sized, T: DeserializeOwned>(
    codec: &C,
    payload: &[u8],
    kind: &'static str,
    field: &'static str,
) -> Result<T> {
    let f: Field<T> = codec.decode(payload)?;
    match f.data {
        Some(v) => Ok(v),
        None => T::deserialize(de::value::UnitDeserializer::<de::value::Error>::new())
            .map_err(|_| Error::MissingField { kind, field }),
    }
}

/// A UTC instant written as ISO-8601 with microseconds, e.g.
/// `2026-11-27T12:24:04.051023Z`, without a date-time dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Timestamp(SystemTime::now())
    }

    fn write(&self, out: &mut [u8; 27]) {
        let d = self.0.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
        let (y, m, day) = civil_from_days(days);
        let micros = d.subsec_micros();
        let mut put = |at: usize, v: u64, width: usize| {
            let mut v = v;
            for i in (0..width).rev() {
                out[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, y as u64, 4);
        put(5, m as u64, 2);
        put(8, day as u64, 2);
        put(11, rem / 3600, 2);
        put(14, rem / 60 % 60, 2);
        put(17, rem % 60, 2);
        put(20, micros as u64, 6);
        out[4] = b'-';
        out[7] = b'-';
        out[10] = b'T';
        out[13] = b':';
        out[16] = b':';
        out[19] = b'.';
        out[26] = b'Z';
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// algorithm, `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 27];
        self.write(&mut buf);
        f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut buf = [0u8; 27];
        self.write(&mut buf);
        s.serialize_str(std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_iso_8601_utc() {
        let t = Timestamp(UNIX_EPOCH + Duration::from_micros(1_795_782_244_051_023));
        assert_eq!(t.to_string(), "2026-11-27T12:24:04.051023Z");
        assert_eq!(
            Timestamp(UNIX_EPOCH).to_string(),
            "1970-01-01T00:00:00.000000Z"
        );
        let leap = Timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)); // 2000-02-29
        assert_eq!(leap.to_string(), "2000-02-29T00:00:00.000000Z");
    }
}
