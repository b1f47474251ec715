//! The `SessionStore` trait that every store implements.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::error::Result;
use crate::session::{Session, StoreStats};

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// Its TTL passed without use.
    Expired,
    /// `delete_session` removed it.
    Deleted,
}

/// Called with a session's id when it ends (see [`SessionStore::on_session_end`]).
pub type EndListener = Arc<dyn Fn(&str, EndReason) + Send + Sync>;

/// A store's session-end listeners.
#[derive(Default)]
pub(crate) struct Listeners(std::sync::RwLock<Vec<EndListener>>);

impl Listeners {
    pub(crate) fn add(&self, listener: EndListener) {
        use crate::sync::UnpoisonedRw;
        self.0.write_locked().push(listener);
    }

    /// Calls each listener, outside the list's lock too: a listener may
    /// register another (it deadlocked, the call holding the lock).
    pub(crate) fn notify(&self, id: &str, reason: EndReason) {
        use crate::sync::UnpoisonedRw;
        let listeners = self.0.read_locked().clone();
        for l in &listeners {
            l(id, reason);
        }
    }
}

/// Where sessions live: the original's Session Store API, plus per-session
/// key/value data.
///
/// The TTL is sliding: every operation that reads or writes a session
/// (`get_session`, `update_session`, `ensure_session`, programs, data)
/// extends its life by its TTL. [`session_exists`](Self::session_exists),
/// [`list_sessions`](Self::list_sessions) and [`stats`](Self::stats) do not.
/// A session whose TTL has passed is gone: operations on it fail with
/// [`Error::NotFound`](crate::Error::NotFound) or
/// [`Error::Expired`](crate::Error::Expired) (both answer
/// [`is_gone`](crate::Error::is_gone)).
///
/// Implementations: [`MemoryStore`](crate::MemoryStore) (embedded) and
/// `RedisStore` (feature `redis`, shared by several hosts).
pub trait SessionStore: Send + Sync + 'static {
    /// Creates an empty session living `ttl` without use (the store's
    /// default when `None`); fails with `AlreadyExists` if one is alive.
    fn create_session(
        &self,
        id: &str,
        ttl: Option<Duration>,
    ) -> impl Future<Output = Result<Session>> + Send;

    /// Creates the session with the default TTL, or extends a live one; what
    /// the pool calls before it routes a session's call.
    fn ensure_session(&self, id: &str) -> impl Future<Output = Result<()>> + Send;

    /// The session, its TTL extended.
    fn get_session(&self, id: &str) -> impl Future<Output = Result<Session>> + Send;

    /// Applies `f` to the session atomically: no other write to the session
    /// lands between the read `f` sees and the write of its result. `f` may
    /// run more than once (a store that retries on conflict), so it should
    /// only change the session it is given. Its `id` and `created_at_ms`
    /// cannot be changed; a changed `ttl_ms` takes effect.
    fn update_session<F>(&self, id: &str, f: F) -> impl Future<Output = Result<Session>> + Send
    where
        F: FnMut(&mut Session) + Send;

    /// Removes the session; `false` if there was none.
    fn delete_session(&self, id: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Whether a live session has this id (its TTL is not extended).
    fn session_exists(&self, id: &str) -> impl Future<Output = Result<bool>> + Send;

    /// The ids of the live sessions, in no particular order.
    fn list_sessions(&self) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// Counters and sizes.
    fn stats(&self) -> impl Future<Output = Result<StoreStats>> + Send;

    /// Stores a program in the session (replacing one with the same id).
    fn store_program(
        &self,
        id: &str,
        program_id: &str,
        program: Value,
    ) -> impl Future<Output = Result<()>> + Send;

    /// A program of the session; `ProgramNotFound` if it has none by that id.
    fn get_program(&self, id: &str, program_id: &str)
        -> impl Future<Output = Result<Value>> + Send;

    /// Stores a program every session and host can read; it does not expire.
    fn store_global_program(
        &self,
        program_id: &str,
        program: Value,
    ) -> impl Future<Output = Result<()>> + Send;

    /// A global program; `ProgramNotFound` if there is none by that id.
    fn get_global_program(&self, program_id: &str) -> impl Future<Output = Result<Value>> + Send;

    /// Removes the sessions whose TTL has passed, tells the listeners, and
    /// returns how many it removed. Stores also run this in the background.
    fn cleanup_expired(&self) -> impl Future<Output = Result<usize>> + Send;

    /// A data value of the session (`None` if the key is not set).
    fn get(&self, id: &str, key: &str) -> impl Future<Output = Result<Option<Value>>> + Send;

    /// Sets a data value of the session.
    fn set(&self, id: &str, key: &str, value: Value) -> impl Future<Output = Result<()>> + Send;

    /// Removes a data value of the session; `false` if it was not set.
    fn delete(&self, id: &str, key: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Calls `listener` whenever this store removes a session (expiry or
    /// deletion), after the removal, outside any lock.
    fn on_session_end(&self, listener: EndListener);
}

/// The pause after a lost compare-and-swap, for stores that retry one:
/// none the first time (`attempt` 0, a yield), then a random one that grows
/// with the attempts (up to 12.8 ms), so that writers contending for one
/// session spread out instead of colliding again. The Redis store and
/// `snakepit_cluster::NatsKvStore` retry with it.
pub async fn conflict_backoff(attempt: u32) {
    if attempt == 0 {
        return tokio::task::yield_now().await;
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut x = nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(attempt) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    let max_us = 200u64 << attempt.min(6);
    tokio::time::sleep(Duration::from_micros(x % max_us)).await;
}
