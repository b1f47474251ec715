//! The payload decoders: a reply's outcome, a chunk's data, a host call's
//! arguments, each straight into the receiver's type.

use serde::de::{self, DeserializeOwned};
use serde::Deserialize;

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
    let body: Body<T> = match codec.decode(payload) {
        Ok(body) => body,
        // Whether the mismatch is in the result (the reader's type) or in
        // the reply's own fields (one given twice, an `error` that is no
        // error): read again taking any result. Only on this error path.
        Err(e @ Error::Mismatch { .. }) => {
            return Err(match codec.decode::<Body<de::IgnoredAny>>(payload) {
                Err(broken @ Error::Mismatch { .. }) => super::malformed(
                    broken,
                    "a response: `success` a bool, `error` a string or map",
                ),
                _ => e,
            })
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
