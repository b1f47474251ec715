//! The errors of session stores and session helpers.

use std::fmt;

/// Everything a session store or a session helper can fail with.
///
/// Each variant is something a caller can act on; the `Display` text is for
/// people.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No session has this id (it never existed, was deleted, or expired and
    /// was already swept away).
    #[error("session `{0}` not found")]
    NotFound(String),
    /// The session's TTL passed without use; it is gone now.
    #[error("session `{0}` expired")]
    Expired(String),
    /// `create_session` found a live session with this id.
    #[error("session `{0}` already exists")]
    AlreadyExists(String),
    /// The session (or the global table, when `session_id` is `None`) has no
    /// program with this id.
    #[error("program `{program_id}` not found in {}", Scope(.session_id))]
    ProgramNotFound {
        /// The session, or `None` for global programs.
        session_id: Option<String>,
        /// The program.
        program_id: String,
    },
    /// An id or key is empty or longer than [`MAX_ID_LEN`](crate::MAX_ID_LEN)
    /// bytes, a TTL is longer than [`MAX_TTL`](crate::MAX_TTL) or shorter
    /// than 1 ms, or a value, program or metadata value nests deeper than
    /// [`MAX_VALUE_DEPTH`](crate::MAX_VALUE_DEPTH). Nothing was stored.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was invalid (`session id`, `key`, `program id`, `ttl`,
        /// `value`, `program`, `metadata`).
        what: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// Concurrent writers kept changing the session while an update was
    /// being applied (Redis store); the update was not applied.
    #[error("session `{session_id}` kept changing during an update ({attempts} attempts)")]
    Conflict {
        /// The session.
        session_id: String,
        /// Attempts made.
        attempts: u32,
    },
    /// Stored data could not be read back, or holds what the store never
    /// writes (a value nested deeper than
    /// [`MAX_VALUE_DEPTH`](crate::MAX_VALUE_DEPTH), a key no session may
    /// have): written by something else?
    #[error("stored session data is corrupt: {0}")]
    Corrupt(String),
    /// A store operation got no answer within the store's timeout (Redis
    /// paused or unreachable without refusing). A write that timed out may
    /// or may not have been applied.
    #[error("session store `{operation}` timed out after {after:?}")]
    Timeout {
        /// The operation (`get`, `update_session`, `connect`, ...).
        operation: &'static str,
        /// The timeout it had.
        after: std::time::Duration,
    },
    /// The backend failed (Redis unreachable, a command refused).
    #[error("session store backend failed: {0}")]
    Backend(String),
    /// The store does not implement this operation (a store of your own
    /// that keeps a trait method's default).
    #[error("the session store does not support `{operation}`")]
    Unsupported {
        /// The operation (`delete_global_program`).
        operation: &'static str,
    },
    /// The pool failed the call (session helpers only).
    #[error(transparent)]
    Pool(#[from] Box<snakepit_core::Error>),
}

impl Error {
    /// The session does not exist (any more): not found or expired.
    pub fn is_gone(&self) -> bool {
        matches!(self, Error::NotFound(_) | Error::Expired(_))
    }

    /// The error a worker sees when its host call fails: a short type name
    /// it can match on, and this error's text.
    pub fn to_remote(&self) -> snakepit_core::RemoteError {
        let kind = match self {
            Error::NotFound(_) => "SessionNotFound",
            Error::Expired(_) => "SessionExpired",
            Error::AlreadyExists(_) => "SessionExists",
            Error::ProgramNotFound { .. } => "ProgramNotFound",
            Error::Invalid { .. } => "InvalidArgument",
            Error::Conflict { .. } => "SessionConflict",
            Error::Corrupt(_) | Error::Backend(_) | Error::Timeout { .. } => "SessionStoreError",
            Error::Unsupported { .. } => "Unsupported",
            Error::Pool(_) => "PoolError",
        };
        snakepit_core::RemoteError::new(kind, self.to_string())
    }
}

impl From<snakepit_core::Error> for Error {
    fn from(e: snakepit_core::Error) -> Self {
        Error::Pool(Box::new(e))
    }
}

#[cfg(feature = "redis")]
impl From<redis::RedisError> for Error {
    /// The `CORRUPT` errors the store's own scripts raise (a session's
    /// stored data does not parse) are [`Error::Corrupt`], without the
    /// server's note of where in the script; so is a reply the client
    /// cannot take as the text the store wrote (bytes that are not UTF-8,
    /// put there by something else), and a key of the store that holds
    /// another type than the store writes there (`WRONGTYPE`; the scripts
    /// check their keys first and name the key). A timeout of the client's
    /// own (a reconnection the operation waited for got no answer) is
    /// [`Error::Timeout`]; the store names the operation and its timeout.
    /// The rest are backend errors.
    fn from(e: redis::RedisError) -> Self {
        crate::redis_store::note_error(&e);
        if e.is_timeout() {
            return Error::Timeout {
                operation: "redis",
                after: std::time::Duration::ZERO,
            };
        }
        match (e.code(), e.detail()) {
            (Some("CORRUPT"), Some(detail)) => {
                let what = detail.split(" script: ").next().unwrap_or(detail);
                Error::Corrupt(what.to_owned())
            }
            (Some("WRONGTYPE"), detail) => Error::Corrupt(format!(
                "a key of the store holds another type than the store writes \
                 (written by something else?): {}",
                detail
                    .unwrap_or_default()
                    .split(" script: ")
                    .next()
                    .unwrap_or_default()
            )),
            // redis-rs's words for a reply it cannot read as text; a reply
            // that is not RESP at all is a backend error, and is retried.
            _ if e.kind() == redis::ErrorKind::Parse
                && e.to_string().contains("Cannot convert from UTF-8") =>
            {
                Error::Corrupt(e.to_string())
            }
            _ => Error::Backend(e.to_string()),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Corrupt(e.to_string())
    }
}

struct Scope<'a>(&'a Option<String>);

impl fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => write!(f, "session `{s}`"),
            None => f.write_str("the global programs"),
        }
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
