//! The payload decoders: a reply's outcome, a chunk's data, a host call's
//! arguments, each straight into the receiver's type.

use serde::de::{self, DeserializeOwned};
use serde::Deserialize;

use super::map::FrameMap;
use super::RemoteError;
use crate::{Codec, Error, Result};

#[derive(Deserialize)]
#[serde(bound = "T: Deserialize<'de>")]
struct Body<T> {
    success: Option<bool>,
    #[serde(default = "Option::default")]
    result: Option<T>,
    #[serde(default)]
    error: Option<RemoteError>,
    // The routing fields, read only so that a reply giving one of them
    // twice is refused here too: the reader's fast path routes a reply
    // from its first keys, and `decode_inbound` refuses such a frame.
    #[serde(rename = "id", default)]
    _id: Option<de::IgnoredAny>,
    #[serde(rename = "type", default)]
    _type: Option<de::IgnoredAny>,
    #[serde(rename = "command", default)]
    _command: Option<de::IgnoredAny>,
    #[serde(rename = "request_id", default)]
    _request_id: Option<de::IgnoredAny>,
    #[serde(rename = "function", default)]
    _function: Option<de::IgnoredAny>,
}

/// Decodes the outcome of a `response` (or `host_reply`) frame straight into
/// `T`: `Ok(Ok(result))` on success, `Ok(Err(remote))` when the peer reported
/// a failure, `Err` when the frame is malformed.
///
/// The errors tell the reader's fault from the peer's: [`Error::Mismatch`]
/// when the reply is well formed but its result is not a `T` (the reader
/// asked for the wrong type); [`Error::WrongType`] of the `payload` when the
/// reply itself is broken (a field given twice, a `success` that is not a
/// bool, an `error` that is neither a string nor a map).
///
/// A successful reply with no `result` (or `null`) decodes as `T` from unit,
/// so `serde_json::Value::Null`, `()` and `Option::None` all work.
///
/// MessagePack map keys may be of any type (a worker's `{1: "a"}` is keyed
/// by the integer 1): a `T` that takes only string keys
/// (`serde_json::Value`) fails on them with [`Error::Mismatch`], and a typed
/// map such as `HashMap<u32, _>` reads them.
pub fn decode_response<C, T>(
    codec: &C,
    payload: &[u8],
) -> Result<std::result::Result<T, RemoteError>>
where
    C: Codec + ?Sized,
    T: DeserializeOwned,
{
    // The usual reply: its result decoded where it lies, the envelope only
    // matched. Anything else (a failure, another shape, a result that is
    // not a `T`) is decoded in full below, which says what is wrong.
    if let Some(v) = codec.decode_success::<T>(payload) {
        return Ok(Ok(v));
    }
    response_body(codec, payload, false)
}

/// The fields of a reply that [`Body`] reads.
const BODY: [&str; 8] = [
    "success",
    "result",
    "error",
    "id",
    "type",
    "command",
    "request_id",
    "function",
];

/// [`decode_response`] past its fast path; `skimmed` once the reply's
/// fields that no reader knows were dropped ([`crate::skim::only`]).
fn response_body<C, T>(
    codec: &C,
    payload: &[u8],
    skimmed: bool,
) -> Result<std::result::Result<T, RemoteError>>
where
    C: Codec + ?Sized,
    T: DeserializeOwned,
{
    let body: Body<T> = match codec.decode::<FrameMap<Body<T>>>(payload) {
        Ok(body) => body.0,
        Err(e @ Error::Mismatch { .. }) => return Err(mismatch(codec, payload, e)),
        Err(deep @ Error::TooDeep { .. }) if !skimmed => {
            return match crate::skim::only(codec.name(), payload, BODY) {
                Some(known) => response_body(codec, &known?, true),
                None => Err(deep),
            }
        }
        Err(e) => return Err(e),
    };
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

/// Whether a reply that is not a `T` is broken itself (a field given twice,
/// an `error` that is no error) or only not what the reader asked for (the
/// result): read again taking any result. Only on this error path.
fn mismatch<C: Codec + ?Sized>(codec: &C, payload: &[u8], e: Error) -> Error {
    match codec.decode::<FrameMap<Body<de::IgnoredAny>>>(payload) {
        Err(broken @ Error::Mismatch { .. }) => {
            super::invalid(codec, payload).unwrap_or_else(|| {
                super::malformed(
                    broken,
                    "a response: `success` a bool, `error` a string or map",
                )
            })
        }
        _ => e,
    }
}

/// `payload` read again with its map keys made strings, for a `T` that
/// takes only those (MessagePack only).
#[cfg(all(feature = "json", feature = "msgpack"))]
fn rekeyed<C: Codec + ?Sized, T: DeserializeOwned>(codec: &C, payload: &[u8]) -> Option<T> {
    super::rekey::decode(codec, payload)
}

#[cfg(not(all(feature = "json", feature = "msgpack")))]
fn rekeyed<C: Codec + ?Sized, T: DeserializeOwned>(_: &C, _: &[u8]) -> Option<T> {
    None
}

/// A chunk's payload: its `data` field. Its other fields, an `args` among
/// them, are ignored as any field the reader does not know.
#[derive(Deserialize)]
#[serde(bound = "T: Deserialize<'de>")]
struct Data<T> {
    #[serde(default = "Option::default")]
    data: Option<T>,
}

/// A host call's (or a request's) payload: its `args` field. A `data`
/// field beside it is ignored.
#[derive(Deserialize)]
#[serde(bound = "T: Deserialize<'de>")]
struct Args<T> {
    #[serde(default = "Option::default")]
    args: Option<T>,
}

/// The one payload field a frame kind has.
trait Payload<T>: DeserializeOwned {
    fn take(self) -> Option<T>;
}

impl<T: DeserializeOwned> Payload<T> for Data<T> {
    fn take(self) -> Option<T> {
        self.data
    }
}

impl<T: DeserializeOwned> Payload<T> for Args<T> {
    fn take(self) -> Option<T> {
        self.args
    }
}

/// Decodes the `data` of a `chunk` frame into `T`. Map keys are read as
/// [`decode_response`] reads them.
pub fn decode_chunk<C: Codec + ?Sized, T: DeserializeOwned>(
    codec: &C,
    payload: &[u8],
) -> Result<T> {
    decode_field::<_, T, Data<T>>(codec, payload, "chunk", "data", false)
}

/// Decodes the `args` of a `host_call` frame (or a `request` frame) into `T`.
///
/// MessagePack map keys may be of any type (a worker's `{1: "a"}` is keyed
/// by the integer 1). When `T` takes only string keys (`serde_json::Value`,
/// as the pool reads host-call arguments), such keys are read as the
/// strings JSON writes for them: `"1"`, `"true"`, `"null"`, the text of
/// `bin` that is UTF-8. A typed map such as `HashMap<u32, _>` reads them as
/// they are.
pub fn decode_host_call_args<C: Codec + ?Sized, T: DeserializeOwned>(
    codec: &C,
    payload: &[u8],
) -> Result<T> {
    decode_field::<_, T, Args<T>>(codec, payload, "host_call", "args", true)
}

fn decode_field<C: Codec + ?Sized, T: DeserializeOwned, F: Payload<T>>(
    codec: &C,
    payload: &[u8],
    kind: &'static str,
    field: &'static str,
    rekey: bool,
) -> Result<T> {
    let f: F = match codec.decode::<FrameMap<F>>(payload) {
        Ok(f) => f.0,
        // Another field too deep to skip ([`crate::skim::only`]): read
        // without the others. If the field itself is, it fails again.
        Err(deep @ Error::TooDeep { .. }) => {
            return match crate::skim::only(codec.name(), payload, [field]) {
                Some(known) => {
                    let known = known?;
                    if known.len() < payload.len() {
                        decode_field::<C, T, F>(codec, &known, kind, field, rekey)
                    } else {
                        Err(deep)
                    }
                }
                None => Err(deep),
            }
        }
        Err(e @ Error::Mismatch { .. }) => {
            match rekey.then(|| rekeyed::<_, FrameMap<F>>(codec, payload)) {
                Some(Some(f)) => f.0,
                _ => return Err(super::invalid(codec, payload).unwrap_or(e)),
            }
        }
        Err(e) => return Err(e),
    };
    match f.take() {
        Some(v) => Ok(v),
        None => T::deserialize(de::value::UnitDeserializer::<de::value::Error>::new())
            .map_err(|_| Error::MissingField { kind, field }),
    }
}
