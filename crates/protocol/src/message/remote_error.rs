//! The errors either side reports: a worker's failed command, the host's
//! failed host call.

use std::fmt;

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

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
