//! Ctrl-C (SIGINT) and SIGTERM for the commands that run a pool: heard from
//! before the pool starts, so that a stop that comes while its workers
//! start still ends the pool cleanly (its workers stopped, its run record
//! removed) instead of killing the tool and leaving both behind.

use std::future::Future;

use crate::ui::Failure;

/// Which stop signal came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// SIGINT: Ctrl-C.
    Interrupt,
    /// SIGTERM: a service manager, `kill`.
    Terminate,
}

impl Stop {
    /// As a user would name it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Stop::Interrupt => "Ctrl-C",
            Stop::Terminate => "SIGTERM",
        }
    }

    /// 128 + the signal's number, as a shell reports a command that the
    /// signal ended.
    fn exit_code(self) -> u8 {
        match self {
            Stop::Interrupt => 130,
            Stop::Terminate => 143,
        }
    }

    /// The command's failure for this stop: its exit code, and `what`
    /// became of the work.
    pub(crate) fn failure(self, what: &str) -> Failure {
        Failure::new(
            self.exit_code(),
            format!("stopped by {}: {what}", self.name()),
        )
    }
}

/// Ctrl-C and SIGTERM: listened for from `new` on, so one that comes before
/// `next` is awaited counts.
pub(crate) struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    pub(crate) fn new() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        StopSignals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Resolves at the next of either.
    pub(crate) async fn next(&mut self) -> Stop {
        async fn recv(s: Option<&mut tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = recv(self.term.as_mut()) => Stop::Terminate,
            () = recv(self.int.as_mut()) => Stop::Interrupt,
        }
    }

    /// `work`, or the stop signal that came first. `work` is then dropped:
    /// a pool it holds stops at once (its workers are killed, its run
    /// record removed).
    pub(crate) async fn race<T>(&mut self, work: impl Future<Output = T>) -> Result<T, Stop> {
        tokio::select! {
            done = work => Ok(done),
            stop = self.next() => Err(stop),
        }
    }
}

/// Runs `work`, the part of `exec` that holds its pool; a stop
/// signal ends it, with exit code 130 (Ctrl-C) or 143 (SIGTERM).
pub(crate) async fn or_stopped<T>(
    work: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match StopSignals::new().race(work).await {
        Ok(done) => done,
        Err(stop) => Err(stop.failure("the workers were stopped")),
    }
}
