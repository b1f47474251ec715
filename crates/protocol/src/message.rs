//! The messages of the protocol, one group a file: what the pool writes
//! ([`outgoing`]), the errors either side reports ([`remote_error`]), a
//! worker's hello ([`hello`]), the routing part of a frame ([`routing`]) and
//! its fast path ([`peek`]), the payload decoders ([`payload`]) and the
//! timestamps frames carry ([`timestamp`]). A frame's own map is read by
//! [`map`]: a map keyed by field names that are strings, nothing else.

mod hello;
mod map;
mod outgoing;
mod payload;
pub(crate) mod peek;
#[cfg(all(feature = "json", feature = "msgpack"))]
mod rekey;
mod remote_error;
mod routing;
mod timestamp;

pub use hello::{Capabilities, Hello, PROTOCOL_VERSION};
pub use outgoing::{Cancel, ForHostCall, ForRequest, HostReply, Reply, ReplyTo, Request, Response};
pub use payload::{decode_chunk, decode_host_call_args, decode_response};
pub use peek::peek_response;
pub use remote_error::RemoteError;
pub use routing::{decode_inbound, decode_outbound, Inbound, Outbound};
pub use timestamp::Timestamp;

use crate::{Codec, Error};

/// The error of a payload that is not valid in its codec at all (its
/// syntax, its UTF-8), read whole as any value; `None` when it is valid.
/// For the error paths only: a payload that is no map of the frame's shape
/// is reported as invalid when it is, since a frame is refused at its
/// first byte when that is not a map.
fn invalid<C: Codec + ?Sized>(codec: &C, payload: &[u8]) -> Option<Error> {
    match codec.decode::<serde::de::IgnoredAny>(payload) {
        Err(e @ (Error::InvalidPayload { .. } | Error::InvalidUtf8 { .. })) => Some(e),
        _ => None,
    }
}

/// A payload whose own fields do not have the protocol's shape, as the
/// protocol error it is: a [`Error::Mismatch`] becomes [`Error::WrongType`]
/// of the `payload` (a map without duplicate fields, or `expected`); any
/// other error is returned as it is.
fn malformed(e: Error, expected: &'static str) -> Error {
    match e {
        // serde's words for a field given twice (`{"id":1,"id":2}`).
        Error::Mismatch { detail, .. } if detail.starts_with("duplicate field") => {
            Error::WrongType {
                field: "payload",
                expected: "a map without duplicate fields",
            }
        }
        Error::Mismatch { .. } => Error::WrongType {
            field: "payload",
            expected,
        },
        other => other,
    }
}
