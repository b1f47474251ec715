//! One session as a store keeps it: data, programs, metadata, and the limits
//! on ids and keys.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The longest session id, data key or program id, in bytes.
pub const MAX_ID_LEN: usize = 512;

/// The longest TTL a session may have: 2^53 - 1 milliseconds (about
/// 285,000 years), the most a Redis script's numbers (doubles) hold
/// exactly. A longer one, or one under 1 ms, at creation or set by an
/// update, is [`Error::Invalid`].
pub const MAX_TTL: Duration = Duration::from_millis(MAX_TTL_MS);
const MAX_TTL_MS: u64 = (1 << 53) - 1;

/// One session: its data, programs and metadata, kept on the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Session {
    /// The session's id.
    pub id: String,
    /// When it was created, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
    /// When it was last used, in milliseconds since the Unix epoch.
    pub last_accessed_ms: u64,
    /// How long it lives without use; each use starts this again.
    pub ttl_ms: u64,
    /// Key/value data (what workers read and write with
    /// `ctx.session.get/set`).
    pub data: Map<String, Value>,
    /// Programs stored for this session (`store_program`).
    pub programs: Map<String, Value>,
    /// Free-form metadata, for the application.
    pub metadata: Map<String, Value>,
}

impl Session {
    /// A new empty session created at `now_ms`.
    pub fn new(id: impl Into<String>, ttl: Duration, now_ms: u64) -> Self {
        Session {
            id: id.into(),
            created_at_ms: now_ms,
            last_accessed_ms: now_ms,
            ttl_ms: ttl.as_millis().min(u64::MAX as u128) as u64,
            data: Map::new(),
            programs: Map::new(),
            metadata: Map::new(),
        }
    }

    /// How long it lives without use.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }
}

/// A store's counters and sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StoreStats {
    /// Sessions alive now.
    pub active_sessions: u64,
    /// Sessions created (by `create_session` or by first use).
    pub sessions_created: u64,
    /// Sessions deleted with `delete_session`.
    pub sessions_deleted: u64,
    /// Sessions that expired and were removed.
    pub sessions_expired: u64,
    /// Global programs stored now (expired ones not counted).
    pub global_programs: u64,
    /// Global programs removed with `delete_global_program`.
    pub global_programs_deleted: u64,
    /// Global programs that expired (`global_program_ttl`) and were
    /// removed.
    pub global_programs_expired: u64,
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `Ok` if `ttl` is 1 ms to [`MAX_TTL`] (in whole milliseconds, as stores
/// keep it), else the [`Error::Invalid`] every store gives: for stores
/// outside this crate to refuse the same TTLs. A TTL under 1 ms would end
/// the session as it is made (Redis cannot keep one at all).
pub fn check_ttl(ttl: Duration) -> Result<()> {
    let ms = ttl.as_millis();
    if ms > u128::from(MAX_TTL_MS) {
        return Err(Error::Invalid {
            what: "ttl",
            reason: "longer than MAX_TTL (2^53 - 1 ms)",
        });
    }
    if ms == 0 {
        return Err(Error::Invalid {
            what: "ttl",
            reason: "shorter than 1 ms",
        });
    }
    Ok(())
}

pub(crate) fn check_id(what: &'static str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::Invalid {
            what,
            reason: "empty",
        });
    }
    if id.len() > MAX_ID_LEN {
        return Err(Error::Invalid {
            what,
            reason: "longer than 512 bytes",
        });
    }
    Ok(())
}

/// The deepest nesting of arrays and maps a stored value (a data value, a
/// program, a metadata value) may have: what a store that keeps a whole
/// session as one JSON document (`{"data": {"key": value}}`, two levels
/// above the value) can read back, serde_json reading 127 levels. Every
/// store refuses a deeper value alike, with `Error::Invalid`, before
/// storing anything ([`check_value`]).
pub const MAX_VALUE_DEPTH: usize = 125;

/// `Error::Invalid` if `value` nests deeper than [`MAX_VALUE_DEPTH`]: for
/// a store of your own, as the bundled ones check. Walked without
/// recursion: a value built in code may nest deeper than any stack.
pub fn check_value(what: &'static str, value: &Value) -> Result<()> {
    let mut stack = vec![(value, 0)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(m) => Box::new(m.values()),
            _ => continue,
        };
        if d + 1 > MAX_VALUE_DEPTH {
            return Err(Error::Invalid {
                what,
                reason: "nests arrays and maps deeper than MAX_VALUE_DEPTH (125 levels)",
            });
        }
        stack.extend(children.map(|c| (c, d + 1)));
    }
    Ok(())
}

impl Session {
    /// [`check_value`] on every value the session holds: its data, its
    /// programs and its metadata's values; and the keys of its data and
    /// the ids of its programs, which `get`/`set` and `get_program` take
    /// only when not empty and within [`MAX_ID_LEN`] bytes (so an
    /// `update_session` cannot store one no other operation reaches).
    pub fn check_values(&self) -> Result<()> {
        for (k, v) in &self.data {
            check_id("key", k)?;
            check_value("value", v)?;
        }
        for (id, v) in &self.programs {
            check_id("program id", id)?;
            check_value("program", v)?;
        }
        for v in self.metadata.values() {
            check_value("metadata", v)?;
        }
        Ok(())
    }
}
