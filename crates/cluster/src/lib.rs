//! Snakepit pools on many hosts behind one call API, over NATS.
//!
//! Each worker host serves its [`Pool`](snakepit_core::Pool) to a named
//! cluster with [`serve`]; callers anywhere use a [`Client`], which has the
//! pool's methods (`execute`, `execute_in_session`, `execute_with`, `call`,
//! `execute_stream`) and its error type, [`snakepit_core::Error`].
//!
//! ```no_run
//! use serde_json::json;
//! use snakepit_core::Pool;
//! # struct GenericPython;
//! # impl snakepit_core::Adapter for GenericPython {
//! #     fn launch(&self) -> snakepit_core::Launch { snakepit_core::Launch::new("python3") }
//! # }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
//!
//! // on each worker host
//! let pool = Pool::builder(GenericPython).size(8).start().await?;
//! let node = snakepit_cluster::serve(&nats, "ml", pool).await?; // until node.shutdown()
//!
//! // anywhere
//! let cluster = snakepit_cluster::Client::connect(&nats, "ml").await?;
//! let r = cluster.execute("compute", json!({"operation": "add", "a": 5, "b": 3})).await?;
//! let r = cluster.execute_in_session("user_123", "predict", json!({"x": 1})).await?;
//! # Ok(()) }
//! ```
//!
//! - **Routing by free capacity.** Hosts announce their capacity and free
//!   capacity; a client sends a call to the host with the most room and
//!   queues it while none has (`queue_timeout`, `max_queue_size`, as in a
//!   pool). A host that filled up meanwhile declines the call (it never
//!   ran) and it goes elsewhere.
//! - **Sessions** go to the host that served them last, and to another when
//!   it is full or gone; keep their data in a shared store such as
//!   [`NatsKvStore`] (JetStream key-value) so any host can serve them.
//! - **Deadlines, cancellation and trace context** travel with the call:
//!   the time left, a cancel message when the caller's future is dropped,
//!   and the `traceparent` NATS header (a batch of calls carries each
//!   call's headers in its JSON instead; with the `opentelemetry` feature:
//!   the W3C context of the caller's current span, continued on the host
//!   in a `snakepit.cluster.serve` span).
//! - **Failures** are clear and bounded: a host that stops answering fails
//!   its calls about one [`ClientConfig::host_timeout`] after it last spoke
//!   (clients check every sixth of it, at least every quarter second;
//!   [`is_host_lost`]), a
//!   call is never sent twice, and while the NATS connection is down calls
//!   fail at once ([`is_unavailable`]) and work again as soon as it is back
//!   (async-nats reconnects after a delay that doubles up to 4 s). A
//!   connection drained (`async_nats::Client::drain`) or closed for good
//!   fails the client's calls in flight at once, and every later call.
//! - **Batching**: calls made together to one host go in one NATS message,
//!   and a host's replies ready together for one client in one; a lone
//!   call goes alone, at once. Under load this cuts the messages through
//!   the NATS server by about four fifths.
//! - **Discovery**: each host registers with the NATS service API as
//!   `snakepit-<cluster>` ([`Client::status`], `nats micro ls`).
//!
//! `docs/cluster.md` has the deployment, the subjects, the permissions a
//! host needs, failure behaviour and measured figures.
//!
//! NATS credentials and TLS are those of the connection you pass in; this
//! crate enables no TLS backend of `async-nats` itself (enable its `ring` or
//! `aws-lc-rs` feature in your application for `tls://` servers).

mod client;
mod host;
mod kv;
#[cfg(feature = "opentelemetry")]
mod otel;
mod outbox;
mod service;
mod wire;

pub use client::{Client, ClientConfig, ClusterStream, HostInfo, TraceContext, MAX_HOSTS};
pub use host::{serve, serve_with, Node, ServeOptions, PREFETCH_WINDOW};
pub use kv::{NatsKvStore, NatsKvStoreBuilder};

use snakepit_core::Error;

/// Checks a cluster's name as [`serve`] and [`Client::connect`] do, without
/// NATS: 1 to 64 of `A-Z a-z 0-9 - _` (it becomes a NATS subject token);
/// `Error::Config` naming it otherwise. For a tool that reports a bad name
/// as a usage error before it reaches NATS.
///
/// ```
/// assert!(snakepit_cluster::check_cluster_name("ml-prod_2").is_ok());
/// assert!(snakepit_cluster::check_cluster_name("a.b").is_err());
/// ```
pub fn check_cluster_name(name: &str) -> Result<(), Error> {
    wire::check_name("cluster name", name)
}

/// The error of a call whose host was lost before it answered (it stopped
/// sending heartbeats, or the connection broke while the call ran): it may
/// or may not have run.
pub(crate) fn host_lost(host: &str, _pid: u32, why: String) -> Error {
    Error::HostLost {
        host: host.to_owned(),
        message: why,
    }
}

/// The error of a call made while the cluster cannot be reached (the NATS
/// connection is down): it was not sent and never ran.
pub(crate) fn unavailable(cluster: &str, why: String) -> Error {
    Error::Unavailable {
        target: format!("cluster {cluster}"),
        message: why,
    }
}

/// Whether `e` says the host running the call was lost (killed, cut off
/// from NATS) before it answered: [`Error::HostLost`].
pub fn is_host_lost(e: &Error) -> bool {
    matches!(e, Error::HostLost { .. })
}

/// Whether `e` says the cluster could not be reached (the NATS connection
/// is down): [`Error::Unavailable`].
pub fn is_unavailable(e: &Error) -> bool {
    matches!(e, Error::Unavailable { .. })
}

/// The Rust examples of `docs/cluster.md`, compiled as this crate's
/// doc-tests so that the code a user copies from it keeps building.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/cluster.md")]
pub struct ClusterDocDoctests;
