//! The messages of the protocol, one group a file: what the pool writes
//! ([`outgoing`]), the errors either side reports ([`remote_error`]), a
//! worker's hello ([`hello`]), the routing part of a frame ([`routing`]) and
//! its fast path ([`peek`]), the payload decoders ([`payload`]) and the
//! timestamps frames carry ([`timestamp`]).

mod hello;
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

use crate::Error;

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
