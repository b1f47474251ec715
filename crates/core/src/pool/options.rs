//! What a caller passes with a call: options, affinity, trace context,
//! and the host functions workers may call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use snakepit_protocol::RemoteError;

/// A function the host offers to its workers (see [`PoolBuilder::host_function`](crate::PoolBuilder::host_function)).
pub type HostFunction = Arc<
    dyn Fn(
            HostCall,
        ) -> Pin<Box<dyn Future<Output = std::result::Result<Value, RemoteError>> + Send>>
        + Send
        + Sync,
>;

/// Produces the W3C trace context of the current span (see
/// [`PoolBuilder::trace_context`](crate::PoolBuilder::trace_context)).
pub type TraceContext = Arc<dyn Fn() -> Option<TraceHeaders> + Send + Sync>;

/// The W3C trace context a request frame carries to the worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHeaders {
    /// The `traceparent` header.
    pub traceparent: String,
    /// The `tracestate` header, when the trace has one.
    pub tracestate: Option<String>,
    /// The `baggage` header, when the caller's context carries baggage.
    pub baggage: Option<String>,
}

impl From<String> for TraceHeaders {
    /// A `traceparent` alone.
    fn from(traceparent: String) -> Self {
        TraceHeaders {
            traceparent,
            tracestate: None,
            baggage: None,
        }
    }
}

impl From<&str> for TraceHeaders {
    /// A `traceparent` alone.
    fn from(traceparent: &str) -> Self {
        traceparent.to_owned().into()
    }
}

/// A worker's call to a host function.
#[derive(Debug, Clone)]
pub struct HostCall {
    /// The function's name.
    pub function: String,
    /// The session of the request the worker was serving, if any.
    pub session_id: Option<String>,
    /// The calling worker.
    pub worker_id: String,
    /// The arguments.
    pub args: Value,
}

/// How a session call treats the worker that served the session last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Affinity {
    /// Use it when it is free, otherwise any free worker.
    #[default]
    Prefer,
    /// Wait for it: in the queue, subject to the queue timeout, or, while
    /// its recent calls are short (pipelining, `PoolConfig::pipeline_depth`),
    /// written ahead to it, where the call waits for the calls before it
    /// (with no queue timeout: it has left the queue). If that worker dies
    /// meanwhile, the call goes to whichever worker is free first.
    Strict,
    /// Use it when it is free, otherwise fail at once with `WorkerBusy`.
    /// A worker answering the pool's health ping runs no call and is not
    /// busy: the call waits for that ping (as a `Strict` call does, within
    /// the queue timeout), then runs on it.
    FailFast,
}

/// Options of one call.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CallOptions {
    /// The deadline, counted from submission; the adapter's
    /// `command_timeout` when `None`.
    pub timeout: Option<Duration>,
    /// The session the call belongs to.
    pub session_id: Option<String>,
    /// How the session's worker is preferred.
    pub affinity: Affinity,
    /// W3C trace context to hand to the worker.
    pub traceparent: Option<String>,
}

impl CallOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the deadline, counted from submission. A timeout longer than a
    /// hundred years (`Duration::MAX`, say) is a hundred years: in practice
    /// no deadline.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the session. In a pool with a session store, an id longer
    /// than [`MAX_SESSION_ID_LEN`](crate::MAX_SESSION_ID_LEN) bytes fails
    /// the call with [`Error::Session`](crate::Error::Session) (it never
    /// runs), as the stores refuse it.
    pub fn session(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    /// Sets how the session's worker is preferred.
    pub fn affinity(mut self, affinity: Affinity) -> Self {
        self.affinity = affinity;
        self
    }

    /// Sets the trace context handed to the worker.
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }
}
