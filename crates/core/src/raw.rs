//! A worker process outside a pool, with every protection of one.

use std::io;
use std::process::ExitStatus;

use snakepit_protocol::WireCodec;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};

use crate::adapter::Launch;
use crate::os::signal_group;
use crate::spawn::Spawner;

/// A worker process outside a pool, with every protection of one.
///
/// For code that drives a worker itself (a benchmark's baseline, a test, a
/// tool that speaks the protocol directly) but must not leave it behind: the
/// process is started through the same spawn path as a pool's workers, so it
/// runs in its own process group, gets the parent-death signal (SIGKILL when
/// the host dies), is covered by a watchdog that kills its group (its own
/// children too) if the host dies however it dies, and inherits no
/// descriptor of the host but its three pipes. Its environment carries
/// `SNAKEPIT_PROTOCOL=1`, `SNAKEPIT_CODEC` and a fresh random
/// `SNAKEPIT_RUN_ID` ([`run_id`](RawProcess::run_id)), as a pool's workers'
/// does; `SNAKEPIT_WORKER_ID` is `raw` unless the [`Launch`] sets it.
/// Dropping it kills its whole process group (SIGKILL) and reaps the
/// process, at once when it has already died, else in the background;
/// [`kill`](RawProcess::kill) waits for the reaping. Reaping it
/// ([`wait`](RawProcess::wait), [`try_wait`](RawProcess::try_wait)) kills
/// what is left of its group at that moment, and nothing is signalled
/// after: its pid may then be another process's. Either also kills every
/// process that carries its run id outside its group (a child that made a
/// session of its own, as a daemonising library does), found through
/// `/proc` as a pool finds its workers' (a few milliseconds, on the
/// calling thread).
///
/// Nothing else of a pool is there: no handshake, no queue, no restarts, no
/// run record. Reading the worker's replies is up to the caller, and so is
/// bounding them: check each frame's length against a maximum before
/// allocating it, as [`FrameCodec`](snakepit_protocol::FrameCodec) does.
/// The pipes are Tokio's; `into_owned_fd` turns one into a blocking
/// descriptor for a plain loop on a thread of its own.
///
/// Must be started within a Tokio runtime.
///
/// ```no_run
/// use snakepit_core::{Launch, RawProcess, WireCodec};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// # async fn demo() -> std::io::Result<()> {
/// let mut worker = RawProcess::spawn(Launch::new("python3").arg("worker.py"), WireCodec::Json).await?;
/// let mut stdin = worker.take_stdin().expect("piped");
/// let mut stdout = worker.take_stdout().expect("piped");
/// stdin.write_all(b"\x00\x00\x00\x02{}").await?;
/// let len = stdout.read_u32().await?;
/// # let _ = len;
/// // Its group is killed and reaped here.
/// drop(worker);
/// # Ok(()) }
/// ```
pub struct RawProcess {
    child: Child,
    pid: u32,
    run_id: String,
    /// Owns the thread the process was forked from (its parent-death signal
    /// follows that thread) and the watchdog: both live as long as this.
    spawner: Spawner,
    reaped: bool,
}

impl RawProcess {
    /// Starts `launch` with piped stdin, stdout and stderr, telling the
    /// process to speak `codec`.
    ///
    /// Fails if there is no Tokio runtime, or with the error of the spawn
    /// itself (`NotFound` for a missing program).
    pub async fn spawn(launch: Launch, codec: WireCodec) -> io::Result<RawProcess> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| io::Error::other("RawProcess::spawn needs a Tokio runtime"))?;
        let spawner = Spawner::new(runtime)?;
        let run_id = crate::sweep::new_run_id();
        // The caller's worker id if the launch sets one, else `raw`.
        let worker_id = launch
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "SNAKEPIT_WORKER_ID")
            .map_or_else(
                || "raw".to_owned(),
                |(_, v)| v.to_string_lossy().into_owned(),
            );
        let launch = launch.for_worker(codec, &worker_id, &run_id);
        let child = spawner.spawn(launch).await?;
        let Some(pid) = child.id() else {
            return Err(io::Error::other("the process ended before it was seen"));
        };
        Ok(RawProcess {
            child,
            pid,
            run_id,
            spawner,
            reaped: false,
        })
    }

    /// The process id, which is also its process group's id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The run id in its environment (`SNAKEPIT_RUN_ID`): 32 hex digits.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Its stdin, the first time; `None` after.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// Its stdout, the first time; `None` after.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Its stderr, the first time; `None` after. Read it or drop it: a
    /// process that fills a stderr pipe nobody reads blocks.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Its exit status if it has ended (reaping it, and killing what is left
    /// of its process group), `None` while it runs.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        let status = self.child.try_wait()?;
        if status.is_some() && !self.reaped {
            self.reaped = true;
            self.kill_what_is_left();
        }
        Ok(status)
    }

    /// Waits for it to end and reaps it, then kills what is left of its
    /// process group (children of its own), as a pool does when a worker
    /// ends.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait().await?;
        if !self.reaped {
            // Once only: later, its pid (and group id) may be another's.
            self.reaped = true;
            self.kill_what_is_left();
        }
        Ok(status)
    }

    /// Kills what is left of its process group, and every process that
    /// carries its run id outside it (a child that made a session or a
    /// group of its own), as a pool does when a worker ends. The second
    /// looks through `/proc`: a few milliseconds.
    fn kill_what_is_left(&self) {
        signal_group(self.pid, libc::SIGKILL);
        crate::sweep::kill_leftovers(&self.run_id, &[self.pid]);
    }

    /// Kills its whole process group (SIGKILL) and waits for it to be reaped.
    pub async fn kill(&mut self) -> io::Result<ExitStatus> {
        if !self.reaped {
            signal_group(self.pid, libc::SIGKILL);
        }
        self.wait().await
    }
}

impl Drop for RawProcess {
    fn drop(&mut self) {
        // Reaped, its group was killed then; its pid may be another's now.
        if !self.reaped {
            // The whole group, even when the leader has ended on its own:
            // its children may still run.
            self.kill_what_is_left();
            // Reaped here when it has already gone (the usual case right
            // after SIGKILL); otherwise Tokio reaps it in the background.
            let _ = self.child.start_kill();
            let _ = self.child.try_wait();
        }
        self.spawner.forget(self.pid);
    }
}

impl std::fmt::Debug for RawProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawProcess")
            .field("pid", &self.pid)
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}
