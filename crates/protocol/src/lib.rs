//! The Snakepit wire protocol: frames, codecs and messages, over bytes only.
//!
//! Every message between a pool and its workers is a frame: a 4-byte
//! big-endian length, then a payload in JSON or MessagePack. This crate turns
//! frames into typed messages and back. It is pure: no processes, no sockets,
//! no global state, so it is tested on in-memory buffers. The full protocol is
//! in `docs/protocol.md` of the repository.
//!
//! ```
//! use bytes::BytesMut;
//! use serde_json::{json, Value};
//! use snakepit_protocol::{decode_inbound, decode_response, encode_frame, FrameCodec, Inbound, Json, Request};
//! use tokio_util::codec::Decoder;
//!
//! // The pool encodes a request straight into a frame buffer...
//! let args = json!({"operation": "add", "a": 5, "b": 3});
//! let mut buf = BytesMut::new();
//! encode_frame(&Json, &Request::new(7, "compute", &args), 1 << 20, &mut buf).unwrap();
//! assert_eq!(&buf[4..13], br#"{"id":7,""#);
//!
//! // ...and reads the worker's reply: first where it goes, then what it says.
//! let mut wire = BytesMut::from(&b"\x00\x00\x00\x22{\"id\":7,\"success\":true,\"result\":8}"[..]);
//! let frame = FrameCodec::default().decode(&mut wire).unwrap().unwrap();
//! assert_eq!(decode_inbound(&Json, &frame).unwrap(), Inbound::Response { id: 7, success: true });
//! let result: Value = decode_response(&Json, &frame).unwrap().unwrap();
//! assert_eq!(result, 8);
//! ```
//!
//! # Features
//!
//! | feature   | default | what it adds |
//! |-----------|---------|--------------|
//! | `json`    | yes     | [`Json`], via serde_json |
//! | `msgpack` | yes     | [`MsgPack`], via rmp-serde (structs as maps with field names) |
//!
//! Choose a codec by type ([`Json`], [`MsgPack`]) or at start-up with the
//! closed enum [`WireCodec`]; bring your own by implementing [`Codec`].

#[cfg(not(any(feature = "json", feature = "msgpack")))]
compile_error!("snakepit-protocol needs at least one codec: enable `json` or `msgpack`");

mod codec;
mod depth;
mod error;
mod frame;
mod message;
mod skim;

#[cfg(feature = "json")]
pub use codec::Json;
#[cfg(feature = "msgpack")]
pub use codec::MsgPack;
pub use codec::{Codec, UnknownCodec, WireCodec};
pub use depth::MAX_DEPTH;
pub use error::{Error, Result};
pub use frame::{encode_frame, encode_request, FrameCodec, DEFAULT_MAX_FRAME_SIZE, HEADER_LEN};
pub use message::{
    decode_chunk, decode_host_call_args, decode_inbound, decode_outbound, decode_response,
    peek_response, Cancel, Capabilities, ForHostCall, ForRequest, Hello, HostReply, Inbound,
    Outbound, RemoteError, Reply, ReplyTo, Request, Response, Timestamp, PROTOCOL_VERSION,
};
