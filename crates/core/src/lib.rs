//! Pools of long-lived worker processes (Python, Node.js, Ruby, or anything
//! that speaks the Snakepit protocol), talked to over their stdin and stdout.
//!
//! A [`Pool`] starts its workers concurrently, routes each call to a free
//! worker through a bounded queue with deadlines, gives sessions affinity to a
//! worker, restarts workers that die, and never leaves an orphan process. An
//! [`Adapter`] says how to start the workers; `snakepit-adapters` has ready
//! ones for the bundled Python, Node.js and Ruby bridges.
//!
//! ```no_run
//! use serde_json::json;
//! use snakepit_core::{Adapter, Launch, Pool};
//!
//! struct MyWorker;
//! impl Adapter for MyWorker {
//!     fn launch(&self) -> Launch {
//!         Launch::new("python3").arg("my_worker.py")
//!     }
//! }
//!
//! # async fn demo() -> Result<(), snakepit_core::Error> {
//! let pool = Pool::builder(MyWorker).size(4).start().await?;
//! let sum = pool.execute("compute", json!({"operation": "add", "a": 5, "b": 3})).await?;
//! pool.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Runtimes
//!
//! A pool runs on the Tokio runtime it was started on: its workers'
//! readers, its supervisors, and the grace period of every call given up.
//! It can be called from that runtime, from any other, and from plain
//! threads through a runtime's `Handle`; a call made where the pool's
//! runtime no longer runs waits out its deadline and fails. Every runtime
//! that starts or calls a pool needs Tokio's time and I/O drivers
//! (`Builder::enable_all`, as `#[tokio::main]` and `#[tokio::test]` give):
//! a call's deadline is a Tokio timer, and Tokio panics on a timer made
//! where the time driver is off. Shut a pool down with [`Pool::shutdown`]
//! before its runtime ends: a pool whose runtime ended first keeps its
//! workers until it is shut down (from another runtime), its last handle
//! is dropped, or the process ends, and its calls in flight hear nothing
//! before their deadlines.
//!
//! # Features
//!
//! | feature   | default | what it adds |
//! |-----------|---------|--------------|
//! | `json`    | yes     | the JSON wire codec |
//! | `msgpack` | yes     | the MessagePack wire codec |

// Without a codec a pool could not talk to any worker: one error that says
// so, instead of the errors of the code that needs one.
#[cfg(not(any(feature = "json", feature = "msgpack")))]
compile_error!(
    "snakepit-core needs at least one wire codec: enable its `json` or `msgpack` feature \
     (both are default features)"
);

mod adapter;
mod clock;
mod config;
mod error;
pub mod events;
mod os;
mod pool;
mod raw;
mod session_hook;
mod spawn;
pub mod sweep;
mod sync;
mod template;
mod worker;

pub use adapter::{Adapter, Launch};
pub use config::{PoolConfig, MAX_POOL_SIZE};
pub use error::{Crash, Error, ExitReason, RemoteError, Result, StartError};
pub use os::{die_with_this_thread, kill_group, PipeSize, PIPE_GROWTH_BUDGET};
pub use pool::{
    Affinity, CallOptions, CallStream, HostCall, HostFunction, Pool, PoolBuilder, Stats,
    StreamItem, TraceContext, TraceHeaders, WeakPool, WorkerInfo,
};
pub use raw::RawProcess;

/// The longest session id the session stores take, in bytes: a call in a
/// pool with a session store ([`PoolBuilder::session_hook`]) whose id is
/// longer fails with [`Error::Session`] ("invalid session id") and never
/// runs. A pool without one serves such an id (the worker sees it whole)
/// and keeps it, for its affinity, as a digest of bounded size, so that its
/// memory stays bounded by `max_sessions` keys whatever ids callers pass.
pub const MAX_SESSION_ID_LEN: usize = 512;
pub use session_hook::{SessionEnds, SessionHook};
pub use snakepit_protocol::WireCodec;
