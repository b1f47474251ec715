//! A worker's optional first frame, and what it says the worker can do.

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks (see `docs/protocol.md`).
pub const PROTOCOL_VERSION: u32 = 1;

/// What a worker can do, from its optional `hello` frame. The defaults are
/// those of a worker of the original protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    /// How many requests the worker runs at once.
    pub max_concurrency: u32,
    /// The worker acts on `cancel` frames.
    pub cancel: bool,
    /// SIGINT during a handler cancels it.
    pub sigint: bool,
    /// The worker may send `chunk` frames.
    pub streaming: bool,
    /// The worker may send `host_call` frames.
    pub host_calls: bool,
    /// The worker reads ahead: a request written while another runs waits
    /// in its stdin, and a `cancel` frame for a request it has not started
    /// makes it drop that request (answering `Cancelled`) without running
    /// it. Only then does the pool write calls ahead to a worker that runs
    /// one at a time (`PoolConfig::pipeline_depth`).
    pub pipeline: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            max_concurrency: 1,
            cancel: false,
            sigint: false,
            streaming: false,
            host_calls: false,
            pipeline: false,
        }
    }
}

/// The optional first frame of a worker.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Hello {
    /// The protocol version the worker speaks.
    pub protocol: u32,
    /// The worker's process id, as it sees it.
    pub pid: Option<u32>,
    /// The bridge's name and version, e.g. `snakepit-python/0.1.0`.
    pub bridge: Option<String>,
    /// The runtime, e.g. `CPython 3.11.7`.
    pub runtime: Option<String>,
    /// What the worker can do: a map of named fields.
    #[serde(deserialize_with = "super::map::named_fields")]
    pub capabilities: Capabilities,
}
