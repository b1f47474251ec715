//! The routing part of a frame: its kind and ids, read without touching
//! its payload, which the receiver decodes later straight into its own type.

use std::fmt;

use serde::de::{IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::map::FrameMap;
use super::Hello;
use crate::skim::Raw;
use crate::{Codec, Error, Result};

/// The routing part of a frame from a worker, decoded without touching its
/// payload (`result`, `data`, `args`), which the receiver decodes later
/// straight into its own type with [`decode_response`](crate::decode_response),
/// [`decode_chunk`](crate::decode_chunk) or
/// [`decode_host_call_args`](crate::decode_host_call_args).
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
    let not_a_map = |e| super::malformed(e, "a map");
    match codec.decode::<FrameMap<Envelope>>(payload).map(|m| m.0) {
        Err(deep @ Error::TooDeep { .. }) => match skimmed(codec, payload) {
            Some(env) => env.map_err(not_a_map),
            None => Err(deep),
        },
        Err(e @ Error::Mismatch { .. }) => {
            Err(super::invalid(codec, payload).unwrap_or_else(|| not_a_map(e)))
        }
        other => other,
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
        Some(Raw::Container(_)) => Ok(Some(Scalar::Other)),
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

/// A hello too deep to decode (a field this crate does not know, nested
/// past the limit), read field by field as [`skimmed`] reads an envelope:
/// the fields a hello has are all scalars, or a map of scalars.
fn skimmed_hello<C: Codec + ?Sized>(codec: &C, payload: &[u8]) -> Option<Result<Hello>> {
    const HELLO: [&str; 5] = ["protocol", "pid", "bridge", "runtime", "capabilities"];
    const CAPABILITIES: [&str; 6] = [
        "max_concurrency",
        "cancel",
        "sigint",
        "streaming",
        "host_calls",
        "pipeline",
    ];
    fn set<C: Codec + ?Sized, T: serde::de::DeserializeOwned>(
        codec: &C,
        raw: Option<Raw<'_>>,
        field: &mut T,
    ) -> Result<()> {
        if let Some(raw) = raw {
            *field = codec.decode(raw.bytes())?;
        }
        Ok(())
    }
    let [protocol, pid, bridge, runtime, capabilities] =
        match crate::skim::fields(codec.name(), payload, HELLO)? {
            Ok(raws) => raws,
            Err(e) => return Some(Err(e)),
        };
    let mut hello = Hello::default();
    Some((|| {
        set(codec, protocol, &mut hello.protocol)?;
        set(codec, pid, &mut hello.pid)?;
        set(codec, bridge, &mut hello.bridge)?;
        set(codec, runtime, &mut hello.runtime)?;
        if let Some(raw) = capabilities {
            let Some(raws) = crate::skim::fields(codec.name(), raw.bytes(), CAPABILITIES) else {
                return Err(Error::WrongType {
                    field: "capabilities",
                    expected: "a map",
                });
            };
            let [max, cancel, sigint, streaming, host_calls, pipeline] = raws?;
            let c = &mut hello.capabilities;
            set(codec, max, &mut c.max_concurrency)?;
            set(codec, cancel, &mut c.cancel)?;
            set(codec, sigint, &mut c.sigint)?;
            set(codec, streaming, &mut c.streaming)?;
            set(codec, host_calls, &mut c.host_calls)?;
            set(codec, pipeline, &mut c.pipeline)?;
        }
        Ok(hello)
    })())
}

/// The value of a field the frame kind requires, if it is what `pick` takes.
fn required<T>(
    kind: &'static str,
    field: &'static str,
    v: Option<Scalar>,
    expected: &'static str,
    pick: impl FnOnce(Scalar) -> Option<T>,
) -> Result<T> {
    match v {
        None | Some(Scalar::Null) => Err(Error::MissingField { kind, field }),
        Some(s) => pick(s).ok_or(Error::WrongType { field, expected }),
    }
}

fn id_of(kind: &'static str, field: &'static str, v: Option<Scalar>) -> Result<u64> {
    required(kind, field, v, "a non-negative integer", |s| match s {
        Scalar::Int(n) => u64::try_from(n).ok(),
        _ => None,
    })
}

fn bool_of(kind: &'static str, field: &'static str, v: Option<Scalar>) -> Result<bool> {
    required(kind, field, v, "a boolean", |s| match s {
        Scalar::Bool(b) => Some(b),
        _ => None,
    })
}

fn str_of(kind: &'static str, field: &'static str, v: Option<Scalar>) -> Result<String> {
    required(kind, field, v, "a string", |s| match s {
        Scalar::Str(s) => Some(s),
        _ => None,
    })
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
///
/// A frame with a `success` field is a `response`, whatever its `type`
/// says: the reader's fast path ([`peek_response`](crate::peek_response))
/// routes replies by their first keys, and both must agree.
pub fn decode_inbound<C: Codec + ?Sized>(codec: &C, payload: &[u8]) -> Result<Inbound> {
    let env = envelope(codec, payload)?;
    if !matches!(env.success, None | Some(Scalar::Null)) {
        return Ok(Inbound::Response {
            id: id_of("response", "id", env.id)?,
            success: bool_of("response", "success", env.success)?,
        });
    }
    match type_of(env.kind)?.as_deref() {
        None | Some("response") => Ok(Inbound::Response {
            id: id_of("response", "id", env.id)?,
            success: bool_of("response", "success", env.success)?,
        }),
        Some("chunk") => Ok(Inbound::Chunk {
            id: id_of("chunk", "id", env.id)?,
        }),
        Some("hello") => match codec.decode::<FrameMap<Hello>>(payload) {
            Ok(hello) => Ok(Inbound::Hello(hello.0)),
            Err(deep @ Error::TooDeep { .. }) => skimmed_hello(codec, payload)
                .unwrap_or(Err(deep))
                .map(Inbound::Hello),
            Err(e) => Err(e),
        },
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
