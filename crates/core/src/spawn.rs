//! The one place that starts child processes.
//!
//! Every worker is started here so that every worker gets the same
//! protection against becoming an orphan:
//!
//! - its own process group, so that signals reach the worker's own children;
//! - on Linux, the parent-death signal (SIGKILL), set in the child before
//!   `exec`, followed by a check that the parent is still the one that forked
//!   it. The signal follows the *thread* that forked, so forks happen on a
//!   dedicated thread that lives as long as the pool;
//! - every inherited descriptor above stderr marked close-on-exec;
//! - a watchdog: a POSIX `sh` loop that holds a pipe from the host and the
//!   list of live process groups. When the host dies, however it dies, the
//!   pipe closes and the watchdog kills every group, so the workers' own
//!   children die too, and every worker by its pid (a forked worker that
//!   moved itself into another group has no parent-death signal). A
//!   watchdog that died while the host lives (killed from outside) is
//!   replaced before the next process starts, and the new one is told
//!   every group still listed.
//!
//! This module and `os.rs` (signals, `FIONREAD`) hold the workspace's only
//! `unsafe` code: `pre_exec` and the `prctl`/`close_range` calls here, each
//! a direct libc call with no memory involved.
#![allow(unsafe_code)]

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::{mpsc, Arc, Condvar, Mutex};

use tokio::process::{Child, Command};

use crate::adapter::Launch;
use crate::sync::Unpoisoned;

type Reply = tokio::sync::oneshot::Sender<io::Result<Child>>;

/// A start request: what to run, and a descriptor for its stdin instead of
/// a pipe (a preload template's socket).
type Request = (Launch, Option<OwnedFd>, Reply);

/// Forks workers from one long-lived thread and keeps the watchdog informed.
pub(crate) struct Spawner {
    requests: Mutex<mpsc::Sender<Request>>,
    /// The watchdog and the groups it guards.
    watchdog: Mutex<Guard>,
}

/// The watchdog's pipe, and the process groups the pool has told it of.
struct Guard {
    /// Never blocks the pool (see [`Watchdog`]). `None` while it could not
    /// be started (the host out of descriptors or processes): the next
    /// start tries again, and fails rather than start a worker it would
    /// not cover. A watchdog that died while the host lives (killed from
    /// outside) is replaced in the same way, at the next start.
    dog: Option<Arc<Watchdog>>,
    /// The groups listed (`+`) and not yet forgotten (`-`): what a
    /// replacement watchdog is told first, so that it guards the groups
    /// the dead one did.
    groups: std::collections::BTreeSet<u32>,
}

impl Drop for Spawner {
    fn drop(&mut self) {
        if let Some(w) = self.watchdog.locked().dog.as_ref() {
            w.close();
        }
    }
}

impl Spawner {
    pub(crate) fn new(runtime: tokio::runtime::Handle) -> io::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("snakepit-spawner".into())
            .spawn(move || {
                let _guard = runtime.enter();
                let parent = std::process::id();
                // Lives until the pool drops its sender: workers' parent-death
                // signal is tied to this thread.
                for (launch, stdin, reply) in rx {
                    let _ = reply.send(spawn_worker(&launch, stdin, parent));
                }
            })?;
        Ok(Spawner {
            requests: Mutex::new(tx),
            watchdog: Mutex::new(Guard {
                dog: start_watchdog().ok(),
                groups: std::collections::BTreeSet::new(),
            }),
        })
    }

    /// Starts a worker with piped stdin, stdout and stderr.
    pub(crate) async fn spawn(&self, launch: Launch) -> io::Result<Child> {
        self.start(launch, None).await
    }

    /// Starts a process with `stdin` as its standard input and piped stdout
    /// and stderr.
    pub(crate) async fn spawn_with_stdin(
        &self,
        launch: Launch,
        stdin: OwnedFd,
    ) -> io::Result<Child> {
        self.start(launch, Some(stdin)).await
    }

    /// Tells the watchdog about a process group started elsewhere (a worker
    /// forked by a preload template), after [`watched`](Self::watched)
    /// made sure one runs, as [`start`](Self::start) does for a spawn. A
    /// watchdog that died in between is replaced, told every listed group,
    /// by the next `watched`.
    pub(crate) fn watch(&self, pgid: u32) {
        self.tell_watchdog(pgid, true);
    }

    async fn start(&self, launch: Launch, stdin: Option<OwnedFd>) -> io::Result<Child> {
        self.watched()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.requests
            .locked()
            .send((launch, stdin, tx))
            .map_err(|_| io::Error::other("the spawner thread is gone"))?;
        let child = rx
            .await
            .map_err(|_| io::Error::other("the spawner thread is gone"))??;
        if let Some(pid) = child.id() {
            self.tell_watchdog(pid, true);
        }
        Ok(child)
    }

    /// The pool has ended (shut down, or its last handle dropped): its
    /// watchdog has no group left to guard, and goes now rather than when
    /// the last reference to the pool does (a handle kept after shutdown, a
    /// stream still held). It kills whatever group is still listed as it
    /// goes. A process started after this gets a watchdog of its own first.
    pub(crate) fn close_watchdog(&self) {
        let watchdog = {
            let mut guard = self.watchdog.locked();
            // The closing watchdog kills what is listed; a later one
            // guards only what starts after.
            guard.groups.clear();
            guard.dog.take()
        };
        if let Some(w) = watchdog {
            w.close();
        }
    }

    /// Tells the watchdog a group is gone, so that a reused id is never hit.
    pub(crate) fn forget(&self, pgid: u32) {
        self.tell_watchdog(pgid, false);
    }

    /// Lists (`add`) or forgets group `pgid`, in the record of groups and
    /// in the watchdog.
    fn tell_watchdog(&self, pgid: u32, add: bool) {
        let mut guard = self.watchdog.locked();
        let line = if add {
            guard.groups.insert(pgid);
            format!("+{pgid}\n")
        } else {
            guard.groups.remove(&pgid);
            format!("-{pgid}\n")
        };
        if let Some(watchdog) = guard.dog.as_ref() {
            watchdog.tell(line.as_bytes());
        }
    }

    /// Starts the watchdog if it could not be started before, or replaces
    /// one that died (told every group still listed): no process is
    /// started, or forked, that it would not cover.
    pub(crate) fn watched(&self) -> io::Result<()> {
        let mut guard = self.watchdog.locked();
        if let Some(dead) = guard.dog.take_if(|w| w.is_dead()) {
            tracing::warn!("the orphan watchdog died while the host runs; starting another");
            dead.close(); // its writer thread ends and reaps it
        }
        if guard.dog.is_none() {
            let fresh = start_watchdog().map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot start the watchdog that kills the workers if the host dies: {e}"
                    ),
                )
            })?;
            let listed: String = guard.groups.iter().map(|g| format!("+{g}\n")).collect();
            if !listed.is_empty() {
                fresh.tell(listed.as_bytes());
            }
            guard.dog = Some(fresh);
        }
        Ok(())
    }
}

/// The watchdog's pipe, made non-blocking. A line is written at once when
/// nothing waits before it (the usual case: it is in the pipe when `tell`
/// returns); otherwise it joins `pending`, which a thread of its own writes
/// in order as the watchdog reads. So a watchdog that stops reading
/// (SIGSTOP, or starved of CPU) never blocks the pool.
struct Watchdog {
    state: Mutex<WatchdogState>,
    wake: Condvar,
}

struct WatchdogState {
    /// Dropped only by the writer thread (a descriptor it may be polling).
    pipe: Option<std::process::ChildStdin>,
    /// Bytes of lines not yet in the pipe, oldest first.
    pending: Vec<u8>,
    /// The pipe broke: the watchdog is gone.
    broken: bool,
    /// The spawner is gone: close the pipe once `pending` is written.
    closing: bool,
}

/// How long a closing pool waits for a watchdog that does not read its
/// last lines before it closes the pipe anyway.
const WATCHDOG_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Watchdog {
    fn tell(&self, line: &[u8]) {
        let mut st = self.state.locked();
        if st.broken {
            return;
        }
        if st.pending.is_empty() {
            let Some(pipe) = st.pipe.as_mut() else {
                return;
            };
            match pipe.write(line) {
                Ok(n) if n == line.len() => return,
                Ok(n) => st.pending.extend_from_slice(&line[n..]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    st.pending.extend_from_slice(line);
                }
                Err(_) => st.broken = true,
            }
        } else {
            st.pending.extend_from_slice(line);
        }
        self.wake.notify_one();
    }

    fn close(&self) {
        self.state.locked().closing = true;
        self.wake.notify_one();
    }

    /// The watchdog process is gone (its end of the pipe is closed): it
    /// guards nothing any more.
    fn is_dead(&self) -> bool {
        use std::os::fd::AsRawFd;
        let st = self.state.locked();
        st.broken
            || st
                .pipe
                .as_ref()
                .is_none_or(|p| crate::os::reader_gone(p.as_raw_fd()))
    }

    /// The writer thread: writes `pending` as the pipe takes it; drops the
    /// pipe (the watchdog then reads its end of input and kills the groups
    /// still listed) once closing with nothing left, or after
    /// [`WATCHDOG_CLOSE_WAIT`] without progress.
    fn write_pending(&self) {
        use std::os::fd::AsRawFd;
        let mut stalled_since: Option<std::time::Instant> = None;
        let mut st = self.state.locked();
        loop {
            while st.pending.is_empty() && !st.closing && !st.broken {
                st = self
                    .wake
                    .wait(st)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if st.broken {
                tracing::warn!(
                    "the orphan watchdog is gone; workers' children may outlive a crashed host"
                );
                break;
            }
            if st.pending.is_empty() {
                break; // closing, all written
            }
            let state = &mut *st;
            let Some(pipe) = state.pipe.as_mut() else {
                break;
            };
            let full = match pipe.write(&state.pending) {
                Ok(n) => {
                    state.pending.drain(..n);
                    stalled_since = None;
                    None
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Some(pipe.as_raw_fd()),
                Err(_) => {
                    state.broken = true;
                    None
                }
            };
            if let Some(fd) = full {
                let since = *stalled_since.get_or_insert_with(std::time::Instant::now);
                if st.closing && since.elapsed() >= WATCHDOG_CLOSE_WAIT {
                    break;
                }
                drop(st);
                // Until the pipe has room (or a second passes, to see whether
                // the pool is closing meanwhile). Only this thread drops the
                // pipe, so `fd` stays open.
                crate::os::wait_writable(fd, 1000);
                st = self.state.locked();
            }
        }
        st.pipe = None;
        st.pending = Vec::new();
    }
}

#[allow(clippy::disallowed_methods)] // the one place that spawns processes
fn spawn_worker(launch: &Launch, stdin: Option<OwnedFd>, parent: u32) -> io::Result<Child> {
    let mut cmd = Command::new(&launch.program);
    // `SNAKEPIT_PRELOAD=1` makes a bridge a preload template, which needs
    // the socket only a template's start gives it (`template.rs` sets the
    // variable in its launch). Inherited from the host's own environment,
    // it would turn every direct worker into a template without one.
    cmd.env_remove("SNAKEPIT_PRELOAD")
        .args(&launch.args)
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(stdin.map_or_else(Stdio::piped, Stdio::from))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &launch.cwd {
        cmd.current_dir(dir);
    }
    // SAFETY: the closure runs in the forked child before exec and makes only
    // async-signal-safe system calls (prctl, getppid, syscall, fcntl, _exit).
    unsafe {
        cmd.pre_exec(move || {
            #[cfg(target_os = "linux")]
            {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The parent may have died between fork and prctl.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
            }
            let _ = parent;
            cloexec_from(3);
            Ok(())
        });
    }
    cmd.spawn()
}

/// Marks every descriptor from `first` up close-on-exec.
fn cloexec_from(first: libc::c_int) {
    #[cfg(target_os = "linux")]
    {
        const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
        // SAFETY: close_range with CLOEXEC only sets descriptor flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            )
        };
        if r == 0 {
            return;
        }
    }
    for fd in first..1024 {
        // SAFETY: fcntl on a descriptor that may not exist only fails.
        unsafe {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// The watchdog reads `+PGID` / `-PGID` lines; at end of input (the host
/// exited or died) it kills every group still listed, and the process whose
/// pid is that group's id (the worker that led it, in case it moved itself
/// into another group: a forked worker has no parent-death signal to take
/// it), then exits. The pool forgets a group as soon as its worker has
/// been reaped, so a listed id is still the worker's pid but for that
/// moment (the same moment in which a group kill could reach a newcomer).
const WATCHDOG: &str = r#"
trap '' INT TERM HUP
groups=" "
while IFS= read -r line; do
  case $line in
    +*) groups="$groups${line#+} " ;;
    -*) next=" "; for g in $groups; do [ "$g" = "${line#-}" ] || next="$next$g "; done; groups=$next ;;
  esac
done
# dash's kill takes no `--`: "-KILL -PGID" is what every sh accepts. The
# group's leader is killed by its pid as well: a worker that moved itself
# into another group is not in its own any more.
for g in $groups; do kill -KILL "-$g" 2>/dev/null; kill -KILL "$g" 2>/dev/null; done
"#;

#[allow(clippy::disallowed_methods)] // the watchdog is spawned here, beside the workers
fn start_watchdog() -> io::Result<Arc<Watchdog>> {
    use std::os::fd::AsRawFd;
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(WATCHDOG)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    // SAFETY: the closure runs in the forked child before exec and makes
    // only async-signal-safe system calls (syscall, fcntl). The watchdog
    // inherits none of the host's descriptors but its three, as a worker.
    unsafe {
        cmd.pre_exec(|| {
            cloexec_from(3);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("watchdog has no stdin"))?;
    crate::os::set_nonblocking(stdin.as_raw_fd())?;
    let watchdog = Arc::new(Watchdog {
        state: Mutex::new(WatchdogState {
            pipe: Some(stdin),
            pending: Vec::new(),
            broken: false,
            closing: false,
        }),
        wake: Condvar::new(),
    });
    // Writes what the pipe did not take at once, closes it once the
    // spawner is gone, and reaps the watchdog.
    let writer = Arc::clone(&watchdog);
    std::thread::Builder::new()
        .name("snakepit-watchdog".into())
        .spawn(move || {
            writer.write_pending();
            let _ = child.wait();
        })?;
    Ok(watchdog)
}

/// Why `launch` could not start, for the worker's (or template's) start
/// error: a missing program or a missing working directory, named as such
/// (both are `NotFound` from the spawn), or the system's error.
pub(crate) fn cannot_start(launch: &Launch, e: &io::Error) -> String {
    let program = launch.program.display();
    match &launch.cwd {
        Some(dir) if e.kind() == io::ErrorKind::NotFound && !dir.is_dir() => format!(
            "cannot run `{program}`: its working directory `{}` does not exist",
            dir.display()
        ),
        _ if e.kind() == io::ErrorKind::NotFound => {
            format!("cannot run `{program}`: not found (is it installed and on PATH?)")
        }
        _ => format!("cannot run `{program}`: {e}"),
    }
}
