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
//!   children die too.
//!
//! This module and `os.rs` (signals, `FIONREAD`) hold the workspace's only
//! `unsafe` code: `pre_exec` and the `prctl`/`close_range` calls here, each
//! a direct libc call with no memory involved.
#![allow(unsafe_code)]

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::{mpsc, Mutex};

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
    /// Lines for the watchdog, written by a thread of its own: a watchdog
    /// that stops reading (stopped, or starved) never blocks the pool.
    watchdog: Option<mpsc::Sender<String>>,
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
            watchdog: start_watchdog().ok(),
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
    /// forked by a preload template).
    pub(crate) fn watch(&self, pgid: u32) {
        self.tell_watchdog(&format!("+{pgid}\n"));
    }

    async fn start(&self, launch: Launch, stdin: Option<OwnedFd>) -> io::Result<Child> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.requests
            .locked()
            .send((launch, stdin, tx))
            .map_err(|_| io::Error::other("the spawner thread is gone"))?;
        let child = rx
            .await
            .map_err(|_| io::Error::other("the spawner thread is gone"))??;
        if let Some(pid) = child.id() {
            self.tell_watchdog(&format!("+{pid}\n"));
        }
        Ok(child)
    }

    /// Tells the watchdog a group is gone, so that a reused id is never hit.
    pub(crate) fn forget(&self, pgid: u32) {
        self.tell_watchdog(&format!("-{pgid}\n"));
    }

    fn tell_watchdog(&self, line: &str) {
        if let Some(watchdog) = &self.watchdog {
            // Gone only after its pipe broke, which was reported then.
            let _ = watchdog.send(line.to_owned());
        }
    }
}

#[allow(clippy::disallowed_methods)] // the one place that spawns processes
fn spawn_worker(launch: &Launch, stdin: Option<OwnedFd>, parent: u32) -> io::Result<Child> {
    let mut cmd = Command::new(&launch.program);
    cmd.args(&launch.args)
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
/// exited or died) it kills every group still listed, then exits.
const WATCHDOG: &str = r#"
trap '' INT TERM HUP
groups=" "
while IFS= read -r line; do
  case $line in
    +*) groups="$groups${line#+} " ;;
    -*) next=" "; for g in $groups; do [ "$g" = "${line#-}" ] || next="$next$g "; done; groups=$next ;;
  esac
done
# dash's kill takes no `--`: "-KILL -PGID" is what every sh accepts.
for g in $groups; do kill -KILL "-$g" 2>/dev/null; done
"#;

#[allow(clippy::disallowed_methods)] // the watchdog is spawned here, beside the workers
fn start_watchdog() -> io::Result<mpsc::Sender<String>> {
    let mut child = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(WATCHDOG)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("watchdog has no stdin"))?;
    let (tx, rx) = mpsc::channel::<String>();
    // Writes the lines in order, however long the watchdog takes to read
    // them; closes the pipe once the spawner is gone (the watchdog then
    // kills the groups still listed), and reaps the watchdog.
    std::thread::Builder::new()
        .name("snakepit-watchdog".into())
        .spawn(move || {
            for line in rx {
                if stdin.write_all(line.as_bytes()).is_err() {
                    tracing::warn!(
                        "the orphan watchdog is gone; workers' children may outlive a crashed host"
                    );
                    break;
                }
            }
            drop(stdin);
            let _ = child.wait();
        })?;
    Ok(tx)
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
