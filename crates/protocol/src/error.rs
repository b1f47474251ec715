//! The one error type of this crate: a variant for each thing that can be
//! wrong with bytes on a pipe.

use std::fmt;
use std::sync::Arc;

/// Everything that can go wrong between bytes on a pipe and a typed message.
///
/// Each variant names one thing that was wrong, so that a pool can say
/// precisely why it gave up on a worker. The `Display` text is for people;
/// match on the variant, not on the text. It is `Clone` (an I/O error is
/// shared), so that every call a broken worker had in flight gets its own.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A frame's length prefix is above the configured maximum. Raised from
    /// the 4-byte header alone, before any buffer of that size exists.
    /// When the four bytes of the prefix read as text (`acti` for
    /// 1,633,907,817), the message quotes them: most such lengths are a
    /// line that something wrote to the stream, not a frame.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes{}", as_text(*len))]
    FrameTooLarge {
        /// The length the prefix announced.
        len: u64,
        /// The configured maximum.
        max: usize,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame: {got} of {expected} bytes received")]
    Truncated {
        /// Bytes the frame needed (header included).
        expected: usize,
        /// Bytes that arrived.
        got: usize,
    },
    /// The payload is not valid JSON / MessagePack.
    #[error("invalid {codec} payload: {detail}")]
    InvalidPayload {
        /// The codec's name.
        codec: &'static str,
        /// What the decoder reported.
        detail: String,
    },
    /// A string in the payload is not valid UTF-8.
    #[error("invalid UTF-8 in {codec} payload: {detail}")]
    InvalidUtf8 {
        /// The codec's name.
        codec: &'static str,
        /// What the decoder reported.
        detail: String,
    },
    /// A field the message kind requires is absent.
    #[error("missing field `{field}` in {kind} frame")]
    MissingField {
        /// The message kind (`response`, `request`, ...).
        kind: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A field, or the payload itself, has the wrong type.
    #[error("field `{field}` has the wrong type: expected {expected}")]
    WrongType {
        /// The field (`payload` for the whole frame).
        field: &'static str,
        /// What it should have been.
        expected: &'static str,
    },
    /// The payload decoded, but does not have the shape the reader asked for
    /// (a typed result that does not match, for instance).
    #[error("{codec} payload does not match the expected shape: {detail}")]
    Mismatch {
        /// The codec's name.
        codec: &'static str,
        /// What the decoder reported.
        detail: String,
    },
    /// A reply or chunk names an id with no call (or host call) in flight:
    /// never sent, or already answered. Raised by whoever routes frames by
    /// id (the pool's reader); the decoders cannot know.
    #[error("{kind} frame for id {id}, which no call in flight has")]
    UnknownId {
        /// The message kind (`response`, `chunk`, `host_reply`).
        kind: &'static str,
        /// The id the frame named.
        id: u64,
    },
    /// The `type` field names no known frame kind.
    #[error("unknown frame type {0:?}")]
    UnknownFrameType(String),
    /// A well-formed frame the worker may not send: a host call from a
    /// worker whose hello did not declare `host_calls`, or one host call
    /// more than may be in flight. Raised by the pool, which knows.
    #[error("{0}")]
    NotAllowed(String),
    /// A value could not be encoded.
    #[error("cannot encode {codec} payload: {detail}")]
    Encode {
        /// The codec's name.
        codec: &'static str,
        /// What the encoder reported.
        detail: String,
    },
    /// A payload nests arrays and maps deeper than [`MAX_DEPTH`](crate::MAX_DEPTH).
    ///
    /// With `encoding: true`, [`encode_frame`](crate::encode_frame) refused
    /// the value before anything was written: nothing was sent. With
    /// `encoding: false`, a decoder stopped at that depth instead of
    /// recursing further; the routing decoders never fail this way (they
    /// read a deep frame's routing fields without recursion), so this is the
    /// error of the one call, chunk or host call whose payload it is.
    #[error("{codec} payload nests arrays and maps deeper than the maximum of {max} levels{when}", when = refused(.encoding))]
    TooDeep {
        /// The codec's name.
        codec: &'static str,
        /// The maximum, [`MAX_DEPTH`](crate::MAX_DEPTH).
        max: usize,
        /// Whether the payload was being encoded (and so was never sent)
        /// rather than decoded.
        encoding: bool,
    },
    /// Reading or writing the underlying stream failed.
    #[error("i/o error: {0}")]
    Io(#[source] Arc<std::io::Error>),
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}

impl Error {
    /// A short, stable name for the kind of error, as used by the shared wire
    /// vectors (`truncated`, `too_large`, `invalid_payload`, `invalid_utf8`,
    /// `missing_field`, `wrong_type`, `too_deep`, `encode`, `io`), and
    /// `not_allowed`. A frame
    /// for an unknown id is `wrong_type`, as it was before it had a variant
    /// of its own.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::FrameTooLarge { .. } => "too_large",
            Error::Truncated { .. } => "truncated",
            Error::InvalidPayload { .. } => "invalid_payload",
            Error::InvalidUtf8 { .. } => "invalid_utf8",
            Error::MissingField { .. } => "missing_field",
            Error::WrongType { .. }
            | Error::Mismatch { .. }
            | Error::UnknownFrameType(_)
            | Error::UnknownId { .. } => "wrong_type",
            Error::TooDeep { .. } => "too_deep",
            Error::Encode { .. } => "encode",
            Error::NotAllowed(_) => "not_allowed",
            Error::Io(_) => "io",
        }
    }

    pub(crate) fn encode(codec: &'static str, detail: impl fmt::Display) -> Self {
        Error::Encode {
            codec,
            detail: detail.to_string(),
        }
    }
}

fn refused(encoding: &bool) -> &'static str {
    if *encoding {
        "; refused before sending"
    } else {
        ""
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `" (its length prefix reads as the text \"acti\": output that is not a
/// frame?)"` when the four bytes of a length prefix are all printable text
/// (or tabs and line breaks), else nothing.
fn as_text(len: u64) -> String {
    let Ok(len) = u32::try_from(len) else {
        return String::new();
    };
    let bytes = len.to_be_bytes();
    if !bytes
        .iter()
        .all(|&b| b.is_ascii_graphic() || matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return String::new();
    }
    let text: String = bytes
        .iter()
        .flat_map(|&b| (b as char).escape_default())
        .collect();
    format!(" (its length prefix reads as the text \"{text}\": output that is not a frame?)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_clone_an_io_error_shares_it() {
        let e = Error::from(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "gone"));
        let copy = e.clone();
        assert_eq!(copy.kind(), "io");
        assert_eq!(copy.to_string(), e.to_string());
        assert!(std::error::Error::source(&copy).is_some());
    }

    #[test]
    fn a_frame_for_an_unknown_id_is_its_own_variant() {
        let e = Error::UnknownId {
            kind: "response",
            id: 42,
        };
        assert_eq!(e.kind(), "wrong_type");
        assert_eq!(
            e.to_string(),
            "response frame for id 42, which no call in flight has"
        );
    }
    /// A length prefix that is text (a line printed to the frame stream)
    /// is quoted; a plain large length is not.
    #[test]
    fn a_length_prefix_that_reads_as_text_is_quoted() {
        let text = Error::FrameTooLarge {
            len: u64::from(u32::from_be_bytes(*b"acti")),
            max: 1 << 26,
        };
        assert_eq!(
            text.to_string(),
            "frame of 1633907817 bytes exceeds the maximum of 67108864 bytes \
             (its length prefix reads as the text \"acti\": output that is not a frame?)"
        );
        let line = Error::FrameTooLarge {
            len: u64::from(u32::from_be_bytes(*b"ok\n\t")),
            max: 64,
        };
        assert!(
            line.to_string()
                .ends_with("\"ok\\n\\t\": output that is not a frame?)"),
            "{line}"
        );
        for len in [
            6109,
            1 << 32,
            u64::from(u32::from_be_bytes([0x61, 0x63, 0x74, 0x00])),
        ] {
            let plain = Error::FrameTooLarge { len, max: 4096 };
            assert_eq!(
                plain.to_string(),
                format!("frame of {len} bytes exceeds the maximum of 4096 bytes")
            );
        }
    }
}
