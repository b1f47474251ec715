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

/// Called with a session's id when it ends, for as long as it returns
/// `true` (see [`SessionStore::on_session_end_while`]).
pub type EndListenerWhile = Arc<dyn Fn(&str, EndReason) -> bool + Send + Sync>;

/// A store's session-end listeners, for a [`SessionStore`] of your own:
/// what the bundled stores use to keep the trait's promises. Each listener
/// is called outside the list's lock (a listener may register another),
/// and under `catch_unwind`: one that panics is logged and the others
/// still hear of the end, as does the store's sweep of later ends.
#[derive(Default)]
pub struct Listeners(std::sync::RwLock<Vec<EndListenerWhile>>);

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::sync::UnpoisonedRw;
        f.debug_struct("Listeners")
            .field("len", &self.0.read_locked().len())
            .finish()
    }
}

impl Listeners {
    /// Adds a listener kept for good.
    pub fn add(&self, listener: EndListener) {
        self.add_while(Arc::new(move |id, why| {
            listener(id, why);
            true
        }));
    }

    /// Adds a listener kept until it returns `false`.
    pub fn add_while(&self, listener: EndListenerWhile) {
        use crate::sync::UnpoisonedRw;
        self.0.write_locked().push(listener);
    }

    /// How many listeners there are.
    pub fn len(&self) -> usize {
        use crate::sync::UnpoisonedRw;
        self.0.read_locked().len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tells each listener that session `id` ended; drops those that say
    /// they are done.
    pub fn notify(&self, id: &str, reason: EndReason) {
        use crate::sync::UnpoisonedRw;
        let listeners = self.0.read_locked().clone();
        let mut done = Vec::new();
        for l in &listeners {
            let kept = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| l(id, reason)));
            match kept {
                Ok(true) => {}
                Ok(false) => done.push(l.clone()),
                Err(_) => {
                    tracing::error!(target: "snakepit::session", session = id,
                        "a session-end listener panicked; the others are told all the same");
                }
            }
        }
        if !done.is_empty() {
            self.0
                .write_locked()
                .retain(|l| !done.iter().any(|d| Arc::ptr_eq(d, l)));
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

    /// Stores a program every session and host can read (replacing one with
    /// the same id). It lives until
    /// [`delete_global_program`](Self::delete_global_program), or, in a
    /// store built with a `global_program_ttl`, until that long after it
    /// was stored (reads do not extend it; storing it again does).
    fn store_global_program(
        &self,
        program_id: &str,
        program: Value,
    ) -> impl Future<Output = Result<()>> + Send;

    /// A global program; `ProgramNotFound` if there is none by that id (or
    /// it expired).
    fn get_global_program(&self, program_id: &str) -> impl Future<Output = Result<Value>> + Send;

    /// Removes a global program; `false` if there was none (or it had
    /// expired). The original's `delete_global_program`. This default, for
    /// a store of your own written before it, fails with
    /// [`Error::Unsupported`](crate::Error::Unsupported); the bundled
    /// stores implement it.
    fn delete_global_program(&self, program_id: &str) -> impl Future<Output = Result<bool>> + Send {
        let _ = program_id;
        std::future::ready(Err(crate::Error::Unsupported {
            operation: "delete_global_program",
        }))
    }

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

    /// As [`on_session_end`](Self::on_session_end), for a listener that can
    /// tell when it is done (the pool it tells is gone): it is dropped the
    /// first time it returns `false`. The bundled stores drop it; this
    /// default, for a store of your own, keeps calling it.
    fn on_session_end_while(&self, listener: EndListenerWhile) {
        self.on_session_end(Arc::new(move |id, why| {
            let _ = listener(id, why);
        }));
    }
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
