//! The errors a call can end in (`Error`), how a worker died (`Crash`,
//! `ExitReason`) and why one could not start (`StartError`).

use std::fmt;
use std::time::Duration;

pub use snakepit_protocol::RemoteError;

/// Everything a call to a pool can end in, other than success.
///
/// Each variant is something a caller can act on; the `Display` text is for
/// people, the variants and the `is_*` queries are the API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The queue was full: the call was rejected at once and never ran.
    #[error("pool saturated: {queued} calls already queued (max_queue_size)")]
    PoolSaturated {
        /// How many calls were waiting.
        queued: usize,
    },
    /// The call waited in the queue longer than the queue timeout and never
    /// ran (a call written ahead to a worker has left the queue: see
    /// `PoolConfig::queue_timeout`).
    #[error("no worker became free within the queue timeout of {0:?}")]
    QueueTimeout(Duration),
    /// The call's deadline passed. If it had reached a worker, the worker was
    /// told to cancel it.
    #[error("call `{command}` timed out after {timeout:?}")]
    CallTimeout {
        /// The command.
        command: String,
        /// The deadline it had, counted from submission.
        timeout: Duration,
    },
    /// The worker reported the call cancelled.
    #[error("call was cancelled")]
    Cancelled,
    /// A session call in fail-fast mode found its worker busy.
    #[error("worker {worker_id} of session {session_id} is busy")]
    WorkerBusy {
        /// The session.
        session_id: String,
        /// Its worker.
        worker_id: String,
    },
    /// The worker died while the call was in flight on it.
    #[error("{0}")]
    WorkerCrashed(Box<Crash>),
    /// The call was running when the pool shut down, and the shutdown's grace
    /// period ended before it did: the worker was stopped with the call in
    /// it. It ran (perhaps in part); it was not a crash.
    #[error("the call was still running on worker {worker_id} (pid {pid}) when the pool shut down, and was stopped")]
    StoppedByShutdown {
        /// The worker it ran on.
        worker_id: String,
        /// Its process id.
        pid: u32,
    },
    /// The host a call was sent to (a pool on another machine, behind
    /// `snakepit-cluster`) was lost before it answered: it stopped sending
    /// heartbeats, or the connection to it broke. The call may or may not
    /// have run.
    #[error("host {host} was lost before it answered: {message}")]
    HostLost {
        /// The host's id.
        host: String,
        /// What happened.
        message: String,
    },
    /// The pools behind this handle cannot be reached (a cluster whose
    /// messaging connection is down): the call was not sent and never ran.
    /// A cluster that is reachable but has no host is not unavailable: its
    /// calls wait for room and end with [`Error::QueueTimeout`].
    #[error("{target} is unavailable: {message}")]
    Unavailable {
        /// What could not be reached (a cluster's name).
        target: String,
        /// Why.
        message: String,
    },
    /// The worker ran the command and reported a failure.
    #[error("command `{command}` failed in the worker: {error}")]
    Remote {
        /// The command.
        command: String,
        /// What the worker said: type, message, traceback.
        error: RemoteError,
    },
    /// The adapter's `validate_command` refused the call, or one of the
    /// adapter's hooks that run before it is sent (`validate_command`,
    /// `prepare_args`, `command_timeout`) panicked; it never ran.
    #[error("invalid call to `{command}`: {message}")]
    Validation {
        /// The command.
        command: String,
        /// Why.
        message: String,
    },
    /// The adapter's `process_response` refused the result of a call that
    /// ran (unlike [`Error::Validation`], the worker did the work).
    #[error("the result of `{command}` was refused: {message}")]
    ResultRefused {
        /// The command.
        command: String,
        /// Why.
        message: String,
    },
    /// The adapter does not support the command; it never ran.
    #[error("unsupported command `{0}`")]
    UnsupportedCommand(String),
    /// The arguments could not be encoded, or the reply could not be decoded
    /// into the type asked for.
    #[error("cannot encode or decode the call's payload: {0}")]
    Codec(#[source] snakepit_protocol::Error),
    /// A streaming call's reader fell `kept` chunks behind a worker that
    /// runs several calls at once; waiting for it would hold up the worker's
    /// other calls, so the call was cancelled instead. Every chunk before
    /// the error was delivered, in order; none after. (A worker that runs one
    /// call at a time waits for its reader instead: nothing is lost.)
    #[error("the stream's reader fell {kept} chunks behind worker {worker_id}, which runs other calls too; the call was cancelled")]
    StreamBehind {
        /// The worker.
        worker_id: String,
        /// The chunks waiting unread when it gave up.
        kept: usize,
    },
    /// The worker broke the protocol (a bad frame, stray output on stdout, a
    /// reply nobody asked for); it was replaced.
    #[error("worker {worker_id} broke the protocol: {source}")]
    Protocol {
        /// The worker.
        worker_id: String,
        /// What was wrong.
        #[source]
        source: snakepit_protocol::Error,
    },
    /// A worker could not be started (or the slot's breaker is open after
    /// repeated failures).
    #[error("{0}")]
    StartFailed(Box<StartError>),
    /// The pool is shutting down or was shut down.
    #[error("pool is shut down")]
    ShutDown,
    /// The pool's session hook (a session store) could not create or touch
    /// the call's session, or, with a store, the session id is longer than
    /// [`MAX_SESSION_ID_LEN`](crate::MAX_SESSION_ID_LEN) ("invalid session
    /// id", as the stores say); the call never ran.
    #[error("session `{session_id}` is unavailable: {message}")]
    Session {
        /// The session.
        session_id: String,
        /// What the store said.
        message: String,
    },
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// A stable, short name of the variant (`"pool_saturated"`,
    /// `"call_timeout"`, `"worker_crashed"`, ...), for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::PoolSaturated { .. } => "pool_saturated",
            Error::QueueTimeout(_) => "queue_timeout",
            Error::CallTimeout { .. } => "call_timeout",
            Error::Cancelled => "cancelled",
            Error::WorkerBusy { .. } => "worker_busy",
            Error::WorkerCrashed(_) => "worker_crashed",
            Error::StoppedByShutdown { .. } => "stopped_by_shutdown",
            Error::HostLost { .. } => "host_lost",
            Error::Unavailable { .. } => "unavailable",
            Error::Remote { .. } => "remote",
            Error::Validation { .. } => "validation",
            Error::ResultRefused { .. } => "result_refused",
            Error::UnsupportedCommand(_) => "unsupported_command",
            Error::Codec(_) => "codec",
            Error::StreamBehind { .. } => "stream_behind",
            Error::Protocol { .. } => "protocol",
            Error::StartFailed(_) => "start_failed",
            Error::ShutDown => "shut_down",
            Error::Session { .. } => "session",
            Error::Config(_) => "config",
        }
    }

    /// The call's deadline or its queue timeout passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::CallTimeout { .. } | Error::QueueTimeout(_))
    }

    /// The pool turned the call away without running it (full, timed out in
    /// the queue, shut down, invalid, arguments that could not be encoded,
    /// no worker able to start with every breaker open): retrying later may
    /// succeed. [`Error::CallTimeout`] is never among
    /// them, even for a call whose deadline passed while it was queued: it
    /// counts as a call that may have run.
    pub fn never_ran(&self) -> bool {
        matches!(
            self,
            Error::PoolSaturated { .. }
                | Error::QueueTimeout(_)
                | Error::Validation { .. }
                | Error::UnsupportedCommand(_)
                | Error::ShutDown
                | Error::WorkerBusy { .. }
                | Error::Session { .. }
                | Error::Unavailable { .. }
                // A call's StartFailed is given before it is sent.
                | Error::StartFailed(_)
        ) || matches!(
            self,
            Error::Codec(
                snakepit_protocol::Error::Encode { .. }
                    | snakepit_protocol::Error::TooDeep { encoding: true, .. }
                    // Only a request's own frame is checked against the
                    // limit as a codec error (a reply's is a protocol one).
                    | snakepit_protocol::Error::FrameTooLarge { .. }
            )
        )
    }

    /// The worker running the call died (not by the pool's own shutdown:
    /// that is [`Error::StoppedByShutdown`]).
    pub fn is_crash(&self) -> bool {
        matches!(self, Error::WorkerCrashed(_))
    }

    /// The error the worker reported, if it was one.
    pub fn remote(&self) -> Option<&RemoteError> {
        match self {
            Error::Remote { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// How a worker died: which one, how it ended, what it last wrote to stderr.
#[derive(Debug, Clone)]
pub struct Crash {
    /// The worker's id.
    pub worker_id: String,
    /// Its process id.
    pub pid: u32,
    /// How it ended.
    pub exit: ExitReason,
    /// The last lines of its stderr.
    pub stderr_tail: String,
}

impl fmt::Display for Crash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "worker {} (pid {}) died: {}",
            self.worker_id, self.pid, self.exit
        )?;
        if !self.stderr_tail.is_empty() {
            write!(f, "; stderr ends with:\n{}", self.stderr_tail)?;
        }
        Ok(())
    }
}

/// How a worker process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExitReason {
    /// It exited with this code.
    Code(i32),
    /// A signal ended it.
    Signal(i32),
    /// It closed its stdout and was killed by the pool.
    ClosedStdout,
    /// Unknown (it could not be reaped in time).
    Unknown,
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Code(c) => write!(f, "exit status {c}"),
            ExitReason::Signal(s) => write!(f, "killed by signal {s} ({})", signal_name(*s)),
            ExitReason::ClosedStdout => f.write_str("closed its stdout"),
            ExitReason::Unknown => f.write_str("exit status unknown"),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// Why a worker could not start.
#[derive(Debug, Clone)]
pub struct StartError {
    /// The worker's id.
    pub worker_id: String,
    /// The cause, in words: the program that was not found, the handshake
    /// that timed out, the process that exited.
    pub cause: String,
    /// The last lines of its stderr (an import error's traceback, say).
    pub stderr_tail: String,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "worker {} failed to start: {}",
            self.worker_id, self.cause
        )?;
        if !self.stderr_tail.is_empty() {
            write!(f, "; stderr ends with:\n{}", self.stderr_tail)?;
        }
        Ok(())
    }
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_error_claims_about_the_call() {
        let stopped = Error::StoppedByShutdown {
            worker_id: "w".into(),
            pid: 1,
        };
        assert_eq!(stopped.kind(), "stopped_by_shutdown");
        assert!(!stopped.is_crash() && !stopped.never_ran());

        let lost = Error::HostLost {
            host: "h".into(),
            message: "no heartbeat".into(),
        };
        assert_eq!(lost.kind(), "host_lost");
        assert!(!lost.never_ran(), "it may have run");

        let down = Error::Unavailable {
            target: "cluster ml".into(),
            message: "NATS is down".into(),
        };
        assert_eq!(down.kind(), "unavailable");
        assert!(down.never_ran());

        let refused = Error::Codec(snakepit_protocol::Error::TooDeep {
            codec: "json",
            max: 127,
            encoding: true,
        });
        assert!(refused.never_ran(), "refused before sending");
        let deep_reply = Error::Codec(snakepit_protocol::Error::TooDeep {
            codec: "json",
            max: 127,
            encoding: false,
        });
        assert!(
            !deep_reply.never_ran(),
            "the call ran; its reply was too deep"
        );

        let crash = Error::WorkerCrashed(Box::new(Crash {
            worker_id: "w".into(),
            pid: 1,
            exit: ExitReason::Signal(9),
            stderr_tail: String::new(),
        }));
        assert!(crash.is_crash() && !crash.never_ran());
        assert!(crash.to_string().contains("SIGKILL"));
    }
}
