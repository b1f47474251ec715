//! The frames written by one side for the other to act on: requests and
//! cancels (pool -> worker), and replies (either way).

use std::marker::PhantomData;

use serde::{Serialize, Serializer};

use super::{RemoteError, Timestamp};

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
    /// W3C baggage: the caller's key/value pairs (`k1=v1,k2=v2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baggage: Option<&'a str>,
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
            baggage: None,
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
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

/// A final reply frame, borrowed so that the result is serialised straight
/// from the caller's value: a worker's `response` to a request
/// ([`Response`]), or the host's `host_reply` to a worker's host call
/// ([`HostReply`]). `K` says which, and so the frame's `type`.
///
/// ```
/// use bytes::BytesMut;
/// use snakepit_protocol::{encode_frame, HostReply, Json, Response};
///
/// let mut buf = BytesMut::new();
/// encode_frame(&Json, &Response::ok(7, &8), 1024, &mut buf).unwrap();
/// assert_eq!(&buf[4..], br#"{"id":7,"success":true,"result":8}"#);
/// buf.clear();
/// encode_frame(&Json, &HostReply::ok(3, "hi"), 1024, &mut buf).unwrap();
/// assert_eq!(&buf[4..], br#"{"type":"host_reply","id":3,"success":true,"result":"hi"}"#);
/// ```
#[derive(Debug, Serialize)]
#[serde(bound(serialize = "R: Serialize, K: ReplyTo"))]
pub struct Reply<'a, R: ?Sized, K> {
    #[serde(rename = "type", skip_serializing_if = "Kind::is_untagged")]
    kind: Kind<K>,
    /// The id of the request or host call answered.
    pub id: u64,
    /// Whether it succeeded.
    pub success: bool,
    /// The result, on success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'a R>,
    /// Why it failed, otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a RemoteError>,
    /// When the reply was written (workers may say; the host does not).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamp>,
}

/// A `response` frame (worker -> pool), for code that plays the worker's
/// side (test workers, a worker written in Rust).
pub type Response<'a, R> = Reply<'a, R, ForRequest>;

/// A `host_reply` frame (pool -> worker): the answer to a worker's
/// `host_call` with the same `id`.
pub type HostReply<'a, R> = Reply<'a, R, ForHostCall>;

impl<'a, R: ?Sized, K: ReplyTo> Reply<'a, R, K> {
    /// A successful reply.
    pub fn ok(id: u64, result: &'a R) -> Self {
        Reply {
            kind: Kind(PhantomData),
            id,
            success: true,
            result: Some(result),
            error: None,
            timestamp: None,
        }
    }

    /// A failed reply.
    pub fn err(id: u64, error: &'a RemoteError) -> Self {
        Reply {
            kind: Kind(PhantomData),
            id,
            success: false,
            result: None,
            error: Some(error),
            timestamp: None,
        }
    }

    /// The same reply, saying when it was written.
    pub fn with_timestamp(mut self, at: Timestamp) -> Self {
        self.timestamp = Some(at);
        self
    }
}

/// What a [`Reply`] answers, which decides its frame's `type` field.
/// Implemented by [`ForRequest`] and [`ForHostCall`] only.
pub trait ReplyTo: sealed::Sealed {
    /// The frame's `type`; `None` writes none (a `response`, as in the
    /// original protocol).
    const TYPE: Option<&'static str>;
}

/// A [`Reply`] to a request: a `response` frame.
#[derive(Debug, Clone, Copy)]
pub struct ForRequest;

/// A [`Reply`] to a worker's host call: a `host_reply` frame.
#[derive(Debug, Clone, Copy)]
pub struct ForHostCall;

impl ReplyTo for ForRequest {
    const TYPE: Option<&'static str> = None;
}

impl ReplyTo for ForHostCall {
    const TYPE: Option<&'static str> = Some("host_reply");
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::ForRequest {}
    impl Sealed for super::ForHostCall {}
}

/// A reply's `type` field, from its kind.
#[derive(Debug)]
struct Kind<K>(PhantomData<K>);

impl<K: ReplyTo> Kind<K> {
    fn is_untagged(&self) -> bool {
        K::TYPE.is_none()
    }
}

impl<K: ReplyTo> Serialize for Kind<K> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(K::TYPE.unwrap_or("response"))
    }
}
