//! The seam between the pool and a session store (`snakepit-session`): the
//! pool tells the store a session is in use before routing its call, and the
//! store tells the pool when a session has ended so its affinity goes too.

use std::future::Future;
use std::pin::Pin;
use std::sync::Weak;

/// What a pool calls before it routes a session's call (see
/// [`PoolBuilder::session_hook`](crate::PoolBuilder::session_hook)).
pub trait SessionHook: Send + Sync + 'static {
    /// Creates the session or extends its lifetime. An `Err` message fails
    /// the call with [`Error::Session`](crate::Error::Session); it never runs.
    /// So does a panic, whether in making the future or in running it.
    fn touch(&self, session_id: &str) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

    /// Called once when the pool starts, with a handle through which the
    /// hook reports sessions that ended (expired or deleted). One that
    /// panics fails the start with [`Error::StartFailed`](crate::Error::StartFailed)
    /// naming the panic.
    fn attached(&self, ends: SessionEnds) {
        let _ = ends;
    }
}

/// What a session's end does in the pool: its worker affinity goes.
pub(crate) trait Affinities: Send + Sync {
    /// Forgets which worker served `session_id`; whether the pool still
    /// runs (false once it is shut down, or its last handle is gone).
    fn forget_session(&self, session_id: &str) -> bool;
}

/// A handle to a pool's affinity records that does not keep the pool alive.
#[derive(Clone)]
pub struct SessionEnds {
    shared: Weak<dyn Affinities>,
}

impl SessionEnds {
    pub(crate) fn new(pool: Weak<dyn Affinities>) -> Self {
        SessionEnds { shared: pool }
    }

    /// Forgets the session's worker affinity; `false` once the pool is gone:
    /// shut down (even while handles of it are still held), or its last
    /// handle dropped (even while one of its streams is still held). A
    /// store may drop its listener of the pool at the first `false`.
    pub fn end(&self, session_id: &str) -> bool {
        self.shared
            .upgrade()
            .is_some_and(|shared| shared.forget_session(session_id))
    }
}

impl std::fmt::Debug for SessionEnds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionEnds")
            .field("pool_alive", &(self.shared.strong_count() > 0))
            .finish()
    }
}
