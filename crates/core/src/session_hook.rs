//! The seam between the pool and a session store (`snakepit-session`): the
//! pool tells the store a session is in use before routing its call, and the
//! store tells the pool when a session has ended so its affinity goes too.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use crate::pool::Shared;

/// What a pool calls before it routes a session's call (see
/// [`PoolBuilder::session_hook`](crate::PoolBuilder::session_hook)).
pub trait SessionHook: Send + Sync + 'static {
    /// Creates the session or extends its lifetime. An `Err` message fails
    /// the call with [`Error::Session`](crate::Error::Session); it never runs.
    fn touch(&self, session_id: &str) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

    /// Called once when the pool starts, with a handle through which the
    /// hook reports sessions that ended (expired or deleted).
    fn attached(&self, ends: SessionEnds) {
        let _ = ends;
    }
}

/// A handle to a pool's affinity records that does not keep the pool alive.
#[derive(Clone)]
pub struct SessionEnds {
    shared: Weak<Shared>,
}

impl SessionEnds {
    pub(crate) fn new(shared: &Arc<Shared>) -> Self {
        SessionEnds {
            shared: Arc::downgrade(shared),
        }
    }

    /// Forgets the session's worker affinity; `false` once the pool is gone.
    pub fn end(&self, session_id: &str) -> bool {
        match self.shared.upgrade() {
            Some(shared) => {
                shared.forget_session(session_id);
                true
            }
            None => false,
        }
    }
}

impl std::fmt::Debug for SessionEnds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionEnds")
            .field("pool_alive", &(self.shared.strong_count() > 0))
            .finish()
    }
}
