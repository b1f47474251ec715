//! Sessions for Snakepit pools: state that outlives calls and workers.
//!
//! A session keeps a user's state across calls (a conversation, a loaded
//! model's settings) and gives those calls affinity to a worker. The state
//! lives on the host, in a [`SessionStore`], not in the worker, so it
//! survives the worker's death, and, with the Redis store, the host's too.
//!
//! - [`SessionStore`]: the original's Session Store API (create with a TTL,
//!   get, update atomically, delete, exists, list, stats, programs per
//!   session and global programs (stored, read, deleted, expiring with a
//!   `global_program_ttl` if you set one), cleanup) plus per-session
//!   key/value data.
//!   TTLs slide: each use extends them.
//! - [`MemoryStore`]: embedded, sharded, O(1) per operation, swept in the
//!   background.
//! - `RedisStore` (feature `redis`): the same in a Redis server, so a
//!   session created on one host is served by another.
//! - [`attach`]: wires a store into a [`PoolBuilder`](snakepit_core::PoolBuilder):
//!   session calls create or touch their session, workers read and write it
//!   with `ctx.session.get/set/delete`, ended sessions lose their affinity.
//! - [`execute_program_command`]: the original's program helpers
//!   (`create_program`, `execute_program`) on top of a store.
//!
//! ```
//! use std::time::Duration;
//! use serde_json::json;
//! use snakepit_session::{MemoryStore, SessionStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), snakepit_session::Error> {
//! let store = MemoryStore::builder().default_ttl(Duration::from_secs(600)).build();
//! store.ensure_session("user_42").await?;
//! store.set("user_42", "preferences", json!({"genre": "sci-fi"})).await?;
//! assert_eq!(store.get("user_42", "preferences").await?, Some(json!({"genre": "sci-fi"})));
//!
//! store.store_global_program("template_1", json!({"type": "qa_template"})).await?;
//! assert_eq!(store.get_global_program("template_1").await?["type"], "qa_template");
//!
//! let err = store.get_session("nobody").await.unwrap_err();
//! assert!(err.is_gone());
//! # Ok(()) }
//! ```
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---------|---------|--------------|
//! | `redis` | no      | `RedisStore`, on the `redis` crate (Tokio, reconnecting connection (`ConnectionManager`), per-operation timeout, Lua scripts) |
//! | `redis-tls` | no  | `rediss://` URLs: TLS to Redis with rustls (ring) and the system's CA roots (`SSL_CERT_FILE`) |

mod attach;
mod error;
mod memory;
mod programs;
#[cfg(feature = "redis")]
mod redis_store;
mod session;
mod store;
mod sync;

pub use attach::attach;
pub use error::{Error, Result};
pub use memory::{MemoryStore, MemoryStoreBuilder};
pub use programs::execute_program_command;
#[cfg(feature = "redis")]
pub use redis_store::{RedisStore, RedisStoreBuilder};
pub use session::{
    check_ttl, check_value, Session, StoreStats, MAX_ID_LEN, MAX_TTL, MAX_VALUE_DEPTH,
};
pub use store::{
    conflict_backoff, EndListener, EndListenerWhile, EndReason, Listeners, SessionStore,
};

/// The Rust examples of `docs/sessions.md`, compiled as this crate's
/// doc-tests (its Redis example needs the `redis` feature).
#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../../../docs/sessions.md")]
pub struct SessionsDocDoctests;
