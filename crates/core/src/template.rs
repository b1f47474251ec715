//! Preloading: one template process per pool runs the script's module-level
//! code once, and every worker is a fork of it (docs/preload.md has the
//! protocol).
//!
//! The pool starts the template through the spawner like any worker (its
//! own process group, the parent-death signal, the watchdog), with one end
//! of a `SOCK_SEQPACKET` socket pair as its stdin. For each worker the pool
//! makes three pipes and sends their far ends with a `fork` request; the
//! template forks, the child puts the pipes on 0, 1 and 2 and serves, and
//! the template answers with the child's pid. From then on the worker is an
//! ordinary [`Process`]: its exit is seen through a pidfd (whoever its
//! parent is by then) and its status comes from the template's `exited`
//! report, or is unknown when the template is gone.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncRead;
use tokio::sync::{oneshot, watch};

use crate::adapter::Launch;
use crate::os;
use crate::spawn::Spawner;
use crate::sync::Unpoisoned;
use crate::worker::Process;

/// The largest message either side sends (docs/preload.md).
const MAX_MESSAGE: usize = 64 * 1024;
/// Lines of the template's output kept for start-up errors.
const TAIL_LINES: usize = 50;
/// How long a fork request may wait for its answer once the template is
/// ready (a fork takes milliseconds).
const FORK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a worker's exit status is waited for from the template after its
/// pidfd said it exited.
const REPORT_WAIT: Duration = Duration::from_millis(500);

/// A running template.
pub(crate) struct Template {
    pub(crate) pid: u32,
    socket: AsyncFd<OwnedFd>,
    next_id: AtomicU64,
    state: Mutex<State>,
    /// `true` once the template process has ended or its socket closed.
    ended: watch::Sender<bool>,
    /// The process has been reaped: its pid may name another process now.
    reaped: std::sync::atomic::AtomicBool,
    /// The process itself, held from its start: a kill reaches it even
    /// when it has left the process group it was started in.
    held: Option<os::Held>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

#[derive(Default)]
struct State {
    /// Fork requests waiting for their answer.
    forks: HashMap<u64, oneshot::Sender<Result<u32, String>>>,
    /// Forked workers' exits: the status if it came first, or who waits.
    exits: HashMap<u32, Exit>,
    /// The pids of the workers this template forked for a start still
    /// waiting for them, until their exit is reported: an `exited` report
    /// for any other pid is ignored, so a template cannot grow `exits`
    /// without bound by reporting pids that are not its workers.
    forked: std::collections::HashSet<u32>,
}

enum Exit {
    Reported(i32),
    Awaited(oneshot::Sender<i32>),
}

/// Why a template did not start.
pub(crate) struct TemplateError {
    pub(crate) cause: String,
    /// The template's last lines of output.
    pub(crate) tail: String,
}

/// Kills the template it holds when dropped.
struct KillOnDrop(Option<Arc<Template>>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.kill();
        }
    }
}

impl Template {
    /// Starts the template and waits for its `ready` (the script's
    /// module-level code has run) for at most `ready_timeout`.
    pub(crate) async fn start(
        spawner: &Spawner,
        launch: Launch,
        ready_timeout: Duration,
        on_exit: impl FnOnce(u32) + Send + 'static,
    ) -> Result<Arc<Template>, TemplateError> {
        let fail = |cause: String| TemplateError {
            cause,
            tail: String::new(),
        };
        let (ours, theirs) = os::seqpacket_pair().map_err(|e| fail(format!("socketpair: {e}")))?;
        let launch = launch.env("SNAKEPIT_PRELOAD", "1");
        let mut child = spawner
            .spawn_with_stdin(launch.clone(), theirs)
            .await
            .map_err(|e| fail(crate::spawn::cannot_start(&launch, &e)))?;
        let pid = child.id().unwrap_or(0);
        // Not reaped before `child.wait()` below: the pid is still this
        // process's.
        let held = (pid != 0).then(|| os::Held::open(pid)).flatten();
        let socket = os::watch(
            ours,
            tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
        )
        .map_err(|e| {
            // The child goes with this error (killed when dropped, and
            // reaped in the background): the watchdog must not keep its pid,
            // which another process may take later.
            spawner.forget(pid);
            fail(format!("cannot watch the socket: {e}"))
        })?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let mut logs = Vec::new();
        if let Some(out) = child.stdout.take() {
            logs.push(tokio::spawn(log_lines(out, pid, tail.clone())));
        }
        if let Some(err) = child.stderr.take() {
            logs.push(tokio::spawn(log_lines(err, pid, tail.clone())));
        }
        let template = Arc::new(Template {
            pid,
            socket,
            next_id: AtomicU64::new(1),
            state: Mutex::new(State::default()),
            ended: watch::channel(false).0,
            reaped: std::sync::atomic::AtomicBool::new(false),
            held,
            tail,
        });
        // A start abandoned while the template loads (the pool shut down
        // meanwhile) kills it: nothing else knows of it yet.
        let mut abandoned = KillOnDrop(Some(template.clone()));
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(read_loop(template.clone(), ready_tx));
        // Resolves once the process is reaped and its output read.
        let (gone_tx, gone_rx) = oneshot::channel::<()>();
        {
            let template = Arc::downgrade(&template);
            tokio::spawn(async move {
                let status = child.wait().await;
                if let Some(t) = template.upgrade() {
                    t.reaped.store(true, Ordering::Relaxed);
                }
                // What it wrote last is in the tail before anyone reads it.
                for log in logs {
                    let _ = tokio::time::timeout(Duration::from_millis(200), log).await;
                }
                match &status {
                    Ok(s) => {
                        tracing::info!(target: "snakepit::template", pid, status = %s, "template ended")
                    }
                    Err(e) => {
                        tracing::warn!(target: "snakepit::template", pid, error = %e, "template lost")
                    }
                }
                if let Some(t) = template.upgrade() {
                    t.ended.send_replace(true);
                }
                let _ = gone_tx.send(());
                on_exit(pid);
            });
        }
        let mut ended = template.ended.subscribe();
        let outcome = tokio::select! {
            ready = ready_rx => ready.map_err(|_| "ended before its script reached `run()`".to_owned()),
            _ = ended.wait_for(|e| *e) => Err("ended before its script reached `run()`".to_owned()),
            _ = tokio::time::sleep(ready_timeout) => Err(format!("not ready within {ready_timeout:?}")),
        };
        match outcome {
            Ok(threads) => {
                if threads > 1 {
                    tracing::warn!(target: "snakepit::template", pid, threads, "the template runs {threads} threads; they do not survive a fork (start them in an after-fork hook, docs/preload.md)");
                }
                tracing::info!(target: "snakepit::template", pid, "template ready");
                abandoned.0 = None;
                Ok(template)
            }
            Err(cause) => {
                template.kill();
                // Its last words explain most failures (an exception at
                // import): wait for the process and its output, not only
                // for its socket to close, which comes first.
                let _ = tokio::time::timeout(Duration::from_secs(2), gone_rx).await;
                Err(TemplateError {
                    cause: format!("the preload template {cause}"),
                    tail: template.tail(),
                })
            }
        }
    }

    /// The template's last lines of output.
    pub(crate) fn tail(&self) -> String {
        let tail = self.tail.locked();
        tail.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub(crate) fn is_alive(&self) -> bool {
        !*self.ended.borrow()
    }

    /// Kills the template's process group (unless it was reaped already:
    /// its pid could be another's now), and the template itself through
    /// the handle held since its start, in case it left that group (a
    /// script that called `setpgid`): a template that stays alive would be
    /// asked for every fork again. Its workers are in groups of their own
    /// and keep running.
    pub(crate) fn kill(&self) {
        if self.pid != 0 && !self.reaped.load(Ordering::Relaxed) {
            os::signal_group(self.pid, libc::SIGKILL);
            if let Some(held) = &self.held {
                held.signal(libc::SIGKILL);
            }
        }
    }

    /// Forks a worker with `env` added to the template's environment. The
    /// message is JSON, so each name and value must be UTF-8.
    pub(crate) async fn fork(
        self: &Arc<Self>,
        env: &[(OsString, OsString)],
    ) -> io::Result<Process> {
        let env = env
            .iter()
            .map(|(k, v)| match (k.to_str(), v.to_str()) {
                (Some(k), Some(v)) => Ok((k.to_owned(), Value::String(v.to_owned()))),
                _ => Err(io::Error::other(format!(
                    "the worker's variable {} is not UTF-8: a fork request cannot carry it",
                    k.to_string_lossy()
                ))),
            })
            .collect::<io::Result<serde_json::Map<String, Value>>>()?;
        let (stdin_r, stdin_w) = os::pipe()?;
        let (stdout_r, stdout_w) = os::pipe()?;
        let (stderr_r, stderr_w) = os::pipe()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let message = serde_json::to_vec(&json!({"op": "fork", "id": id, "env": env}))
            .map_err(io::Error::other)?;
        if message.len() > MAX_MESSAGE {
            return Err(io::Error::other(
                "the worker's environment is too large to send to the template",
            ));
        }
        let (tx, rx) = oneshot::channel();
        self.state.locked().forks.insert(id, tx);
        let fds = [
            stdin_r.as_raw_fd(),
            stdout_w.as_raw_fd(),
            stderr_w.as_raw_fd(),
        ];
        let sent = loop {
            let mut ready = match self.socket.writable().await {
                Ok(ready) => ready,
                Err(e) => break Err(e),
            };
            match ready.try_io(|s| os::send_with_fds(s.as_raw_fd(), &message, &fds)) {
                Ok(result) => break result,
                Err(_would_block) => continue,
            }
        };
        // The template holds its own copies now; the worker's ends are its.
        drop((stdin_r, stdout_w, stderr_w));
        if let Err(e) = sent {
            self.state.locked().forks.remove(&id);
            return Err(io::Error::other(format!(
                "cannot reach the preload template: {e}"
            )));
        }
        let mut ended = self.ended.subscribe();
        let pid = tokio::select! {
            answer = rx => match answer {
                Ok(Ok(pid)) => pid,
                Ok(Err(e)) => return Err(io::Error::other(format!("the preload template could not fork: {e}"))),
                Err(_) => return Err(io::Error::other("the preload template ended")),
            },
            _ = ended.wait_for(|e| *e) => return Err(io::Error::other("the preload template ended")),
            _ = tokio::time::sleep(FORK_TIMEOUT) => {
                self.state.locked().forks.remove(&id);
                // A template that does not fork is stuck (stopped, or
                // blocked in its script): it goes, so that the next start
                // begins a new one instead of asking it again.
                tracing::warn!(target: "snakepit::template", pid = self.pid, "the template did not fork within {FORK_TIMEOUT:?}; killing it");
                self.kill();
                return Err(io::Error::other(format!("the preload template did not fork within {FORK_TIMEOUT:?}; it was killed, and the next start begins a new one")));
            }
        };
        let exit = self.exit_of(pid);
        let stdin = tokio::process::ChildStdin::from_std(std::process::ChildStdin::from(stdin_w))?;
        let stdout =
            tokio::process::ChildStdout::from_std(std::process::ChildStdout::from(stdout_r))?;
        let stderr =
            tokio::process::ChildStderr::from_std(std::process::ChildStderr::from(stderr_r))?;
        Ok(Process {
            pid,
            stdin: Some(stdin),
            stdout: Some(stdout),
            stderr: Some(stderr),
            exit,
        })
    }

    /// How worker `pid` ends: its pidfd turns readable, and its status is
    /// the template's report (unknown if the template is gone).
    fn exit_of(&self, pid: u32) -> crate::worker::ExitFuture {
        let (tx, mut report) = oneshot::channel();
        {
            let mut st = self.state.locked();
            match st.exits.remove(&pid) {
                Some(Exit::Reported(status)) => {
                    let _ = tx.send(status);
                }
                _ => {
                    st.exits.insert(pid, Exit::Awaited(tx));
                }
            }
        }
        // The pid came from our template, which has not reaped it yet or
        // has reported it: if it is no longer the template's child, it
        // exited and the report says how.
        let pidfd = os::pidfd_open(pid)
            .ok()
            .filter(|_| os::parent_of(pid) == Some(self.pid))
            .and_then(|fd| os::watch(fd, tokio::io::Interest::READABLE).ok());
        Box::pin(async move {
            let unknown = || io::Error::other("exited; status unknown (its template is gone)");
            let Some(pidfd) = pidfd else {
                // No pidfd (a kernel before 5.3, or the worker already gone
                // and reaped): the template's report, else `/proc`, asked
                // every 100 ms.
                let mut reporting = true;
                loop {
                    tokio::select! {
                        status = &mut report, if reporting => match status {
                            Ok(status) => return Ok(ExitStatus::from_raw(status)),
                            Err(_) => reporting = false,
                        },
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {
                            if os::has_exited(pid) {
                                return Err(unknown());
                            }
                        }
                    }
                }
            };
            let mut reporting = true;
            loop {
                tokio::select! {
                    status = &mut report, if reporting => match status {
                        Ok(status) => return Ok(ExitStatus::from_raw(status)),
                        // The template is gone: the pidfd alone tells.
                        Err(_) => reporting = false,
                    },
                    ready = pidfd.readable() => {
                        if ready.is_err() {
                            return Err(unknown());
                        }
                        // Its template gone, a host that adopts orphans is
                        // its parent now, and the only one to reap it.
                        os::reap_if_adopted(pidfd.get_ref().as_raw_fd());
                        if reporting {
                            if let Ok(Ok(status)) = tokio::time::timeout(REPORT_WAIT, &mut report).await {
                                return Ok(ExitStatus::from_raw(status));
                            }
                        }
                        return Err(unknown());
                    }
                }
            }
        })
    }

    fn handle(&self, message: &[u8], ready: &mut Option<oneshot::Sender<u64>>) {
        let Ok(message) = serde_json::from_slice::<Value>(message) else {
            tracing::warn!(target: "snakepit::template", pid = self.pid, "the template sent a message that is not JSON; ignored");
            return;
        };
        let num = |key: &str| message.get(key).and_then(Value::as_u64);
        match message.get("op").and_then(Value::as_str) {
            Some("ready") => {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(num("threads").unwrap_or(1));
                }
            }
            Some("forked") => {
                let Some(id) = num("id") else { return };
                // The pool signals this pid's group from now on: it must be
                // a process the template forked. One that is gone already
                // (exited and reaped: its report follows) passes. Anything
                // that is no pid at all fails the fork at once, named: 0, 1,
                // and any number above the largest pid the kernel gives
                // (one above `i32::MAX` would reach another process, or
                // every process, once taken as the kernel's signed pid).
                let reported = message.get("pid");
                let answer = match reported.and_then(Value::as_u64).map(u32::try_from) {
                    Some(Ok(pid))
                        if pid > 1
                            && pid <= os::PID_MAX_LIMIT
                            && pid != self.pid
                            && os::parent_of(pid).is_none_or(|parent| parent == self.pid) =>
                    {
                        Ok(pid)
                    }
                    _ => {
                        let shown = reported.map_or_else(|| "none".to_owned(), Value::to_string);
                        tracing::warn!(target: "snakepit::template", pid = self.pid, reported = %shown, "the template reported a worker pid that is not its child; refused");
                        Err(format!(
                            "it reported pid {shown}, which is not a process it forked"
                        ))
                    }
                };
                let mut st = self.state.locked();
                if let Some(tx) = st.forks.remove(&id) {
                    let pid = answer.as_ref().ok().copied();
                    // Only a pid a start has taken can have its exit kept.
                    if tx.send(answer).is_ok() {
                        if let Some(pid) = pid {
                            st.forked.insert(pid);
                        }
                    }
                }
            }
            Some("fork_failed") => {
                let error = message
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given");
                if let Some(tx) = num("id").and_then(|id| self.state.locked().forks.remove(&id)) {
                    let _ = tx.send(Err(error.to_owned()));
                }
            }
            Some("exited") => {
                let (Some(pid), Some(status)) = (
                    num("pid").and_then(|p| u32::try_from(p).ok()),
                    message
                        .get("status")
                        .and_then(Value::as_i64)
                        .and_then(|s| i32::try_from(s).ok()),
                ) else {
                    return;
                };
                let mut st = self.state.locked();
                if !st.forked.remove(&pid) {
                    tracing::debug!(target: "snakepit::template", pid = self.pid, reported = pid, "the template reported the exit of a process that is not one of its workers; ignored");
                    return;
                }
                match st.exits.remove(&pid) {
                    Some(Exit::Awaited(tx)) => {
                        let _ = tx.send(status);
                    }
                    _ => {
                        st.exits.insert(pid, Exit::Reported(status));
                    }
                }
            }
            _ => {
                tracing::warn!(target: "snakepit::template", pid = self.pid, "the template sent an unknown message; ignored");
            }
        }
    }
}

/// Reads the template's messages until its socket closes (the process is
/// gone: the pool kills it when it ends).
async fn read_loop(t: Arc<Template>, ready: oneshot::Sender<u64>) {
    let mut ready = Some(ready);
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let n = {
            let mut guard = match t.socket.readable().await {
                Ok(guard) => guard,
                Err(_) => break,
            };
            match guard.try_io(|s| os::recv(s.as_raw_fd(), &mut buf)) {
                Ok(Ok(n)) => n,
                Ok(Err(_)) => 0,
                Err(_would_block) => continue,
            }
        };
        if n == 0 {
            break;
        }
        t.handle(&buf[..n], &mut ready);
    }
    // Nobody waits on a template that no longer answers.
    let mut st = t.state.locked();
    for (_, tx) in st.forks.drain() {
        let _ = tx.send(Err("the template closed its socket".into()));
    }
    st.exits.clear();
    st.forked.clear();
    drop(st);
    t.ended.send_replace(true);
}

/// Logs the template's output line by line under `snakepit::template` and
/// keeps the last lines.
async fn log_lines(out: impl AsyncRead + Unpin, pid: u32, tail: Arc<Mutex<VecDeque<String>>>) {
    crate::worker::for_each_line(out, |line, cut| {
        let Some(line) = crate::worker::line_text(line, cut) else {
            return;
        };
        tracing::info!(target: "snakepit::template", pid, "{line}");
        let mut tail = tail.locked();
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    })
    .await;
}
