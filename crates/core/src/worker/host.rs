//! Answering a worker's host calls with the pool's host functions.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::Value;
use snakepit_protocol::{decode_host_call_args, encode_frame, HostReply, RemoteError};

use super::stdin::HOST_REPLY;
use super::Worker;

/// Host calls a worker may have in flight at once; one more is a protocol
/// error (a worker that floods the host without reading its replies).
pub(crate) const MAX_HOST_CALLS_IN_FLIGHT: usize = 256;

impl Worker {
    /// Takes a `host_call` frame: checks that the worker declared host calls
    /// and is within the bound, decodes its arguments, and answers it on a
    /// task of its own. An error means the worker broke the protocol.
    pub(super) fn take_host_call(
        self: &Arc<Self>,
        id: u64,
        request_id: Option<u64>,
        function: String,
        frame: &[u8],
    ) -> Result<(), snakepit_protocol::Error> {
        if !self.caps.get().is_some_and(|c| c.host_calls) {
            return Err(snakepit_protocol::Error::NotAllowed(format!(
                "a host call ({function}) from a worker whose hello did not declare host_calls"
            )));
        }
        let answering = self.host_calls.fetch_add(1, Ordering::Relaxed);
        if answering + self.stdin.queued_replies() >= MAX_HOST_CALLS_IN_FLIGHT {
            return Err(snakepit_protocol::Error::NotAllowed(format!(
                "more than {MAX_HOST_CALLS_IN_FLIGHT} host calls in flight (the worker does not read their replies)"
            )));
        }
        let session = request_id.and_then(|r| {
            self.inner()
                .pending
                .get(&r)
                .and_then(|(p, _)| p.session.clone())
        });
        let args: Value = match decode_host_call_args::<_, JsonOnly>(&self.codec, frame) {
            Ok(JsonOnly(args)) => args,
            // Arguments nested deeper than the host reads, or a value no
            // JSON value can hold (MessagePack `bin`: bytes a handler put in
            // a session; a NaN or infinite float): that host call's own
            // error; the worker is fine.
            Err(e @ snakepit_protocol::Error::TooDeep { .. }) => {
                return self.refuse_host_call(id, RemoteError::new("TooDeep", e.to_string()));
            }
            Err(e @ snakepit_protocol::Error::Mismatch { .. }) => {
                let why = format!(
                    "the host call's arguments are not JSON values (bytes, say: send them \
                     encoded, as base64 text; or a NaN or infinite number): {e}"
                );
                return self.refuse_host_call(id, RemoteError::new("InvalidArgument", why));
            }
            Err(e) => return Err(e),
        };
        let worker = self.clone();
        tokio::spawn(async move { worker.answer_host_call(id, function, session, args).await });
        Ok(())
    }

    /// Answers host call `id` with `err` at once, without running it.
    fn refuse_host_call(&self, id: u64, err: RemoteError) -> Result<(), snakepit_protocol::Error> {
        self.host_calls.fetch_sub(1, Ordering::Relaxed);
        self.send_host_error(id, &err);
        Ok(())
    }

    /// Sends the failed reply `err` to host call `id` (a few bytes: no
    /// frame limit applies).
    fn send_host_error(&self, id: u64, err: &RemoteError) {
        let mut buf = bytes::BytesMut::new();
        if encode_frame(
            &self.codec,
            &HostReply::<()>::err(id, err),
            usize::MAX,
            &mut buf,
        )
        .is_ok()
        {
            self.stdin.send(HOST_REPLY, buf.freeze());
        }
    }

    pub(super) async fn answer_host_call(
        self: Arc<Self>,
        id: u64,
        function: String,
        session: Option<Arc<str>>,
        args: Value,
    ) {
        /// One host call fewer in flight, however the answer ends.
        struct Answered<'w>(&'w AtomicUsize);
        impl Drop for Answered<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let answered = Answered(&self.host_calls);
        let Some(pool) = self.pool.upgrade() else {
            return;
        };
        let call = crate::HostCall {
            function: function.clone(),
            session_id: session.map(|s| s.to_string()),
            worker_id: self.id.clone(),
            args,
        };
        let found = pool.host_function(function.as_str());
        // The function does not hold the pool up: a pool whose last handle
        // goes while it runs ends as any other.
        drop(pool);
        let outcome = match found {
            // A host function that panics answers the worker all the same.
            Some(f) => {
                let answer = crate::sync::CatchUnwind(Box::pin(async move { f(call).await }));
                tokio::select! {
                    // The answer first: one ready as the grace period ends
                    // is still sent (a shutdown run by the function itself
                    // ends in the very poll its worker's end wakes).
                    biased;
                    answer = answer => answer.unwrap_or_else(|panic| {
                        tracing::error!(worker = %self.id, function = %function, "a host function panicked: {panic}");
                        Err(RemoteError::new(
                            "HostPanic",
                            format!("host function {function} panicked: {panic}"),
                        ))
                    }),
                    // The worker's process ended (it died, or the pool
                    // stopped it): nobody is left to read the answer. The
                    // function gets the grace period to finish what it
                    // does (it may be the pool's own shutdown, asked for
                    // by this worker), then is dropped rather than left to
                    // run on for a process that is gone: a worker dying
                    // again and again would pile such functions up
                    // without bound, and they would outlive the pool.
                    _ = async {
                        self.finished().await;
                        let until = crate::clock::later(std::time::Instant::now(), self.grace);
                        tokio::time::sleep_until(until.into()).await;
                    } => return,
                }
            }
            None => Err(RemoteError::new(
                "UnknownFunction",
                format!("no host function named {function}"),
            )),
        };
        let mut buf = bytes::BytesMut::new();
        let encoded = match &outcome {
            Ok(v) => encode_frame(
                &self.codec,
                &HostReply::ok(id, v),
                self.max_frame_size,
                &mut buf,
            ),
            Err(e) => encode_frame(
                &self.codec,
                &HostReply::<()>::err(id, e),
                self.max_frame_size,
                &mut buf,
            ),
        };
        // No longer in flight before its reply can reach the worker: a
        // worker at the limit may send its next host call as soon as it
        // reads this reply, and that one must not count this one too.
        drop(answered);
        match encoded {
            Ok(()) => {
                self.stdin.send(HOST_REPLY, buf.freeze());
            }
            Err(e) => self.send_host_error(id, &RemoteError::new("EncodeError", e.to_string())),
        };
    }
}

/// A host call's arguments as a JSON value, refusing what JSON cannot hold
/// where `serde_json::Value` would quietly read it as something else: a
/// NaN or infinite float (MessagePack carries them) becomes `null` in a
/// `Value`, which would put `null` in a session in place of the number the
/// handler gave. Such a float is a decoding error here, and the host call
/// fails with `InvalidArgument` as it does for bytes. Everything else is
/// read as `Value` reads it.
struct JsonOnly(Value);

impl<'de> serde::Deserialize<'de> for JsonOnly {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonOnlyVisitor).map(JsonOnly)
    }
}

struct JsonOnlyVisitor;

impl<'de> serde::de::Visitor<'de> for JsonOnlyVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom(format!("{v} is not a JSON number")))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        serde::Deserialize::deserialize(d).map(|JsonOnly(v)| v)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(JsonOnly(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some((key, JsonOnly(v))) = map.next_entry::<String, JsonOnly>()? {
            object.insert(key, v);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(all(test, feature = "msgpack"))]
mod tests {
    use super::JsonOnly;
    use snakepit_protocol::{decode_host_call_args, Codec, MsgPack};

    #[derive(serde::Serialize)]
    struct Args {
        key: &'static str,
        value: f64,
    }

    #[derive(serde::Serialize)]
    struct Frame {
        r#type: &'static str,
        id: u64,
        function: &'static str,
        args: Args,
    }

    fn frame(value: f64) -> Vec<u8> {
        let frame = Frame {
            r#type: "host_call",
            id: 1,
            function: "session.set",
            args: Args { key: "k", value },
        };
        let mut buf = bytes::BytesMut::new();
        MsgPack.encode(&frame, &mut buf).unwrap();
        buf.to_vec()
    }

    /// A NaN or an infinity in a host call's arguments is refused, where a
    /// `serde_json::Value` would hold `null`; a finite float is read as it is.
    #[test]
    fn floats_json_cannot_hold_are_refused_in_host_call_arguments() {
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let err = decode_host_call_args::<_, JsonOnly>(&MsgPack, &frame(bad))
                .err()
                .unwrap_or_else(|| panic!("{bad} was read"));
            assert!(
                matches!(err, snakepit_protocol::Error::Mismatch { .. }),
                "{bad}: {err}"
            );
        }
        let JsonOnly(args) = decode_host_call_args(&MsgPack, &frame(1.5)).unwrap();
        assert_eq!(args, serde_json::json!({"key": "k", "value": 1.5}));
    }
}
