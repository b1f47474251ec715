//! An outside tester's audit of docs/preload.md, "The template protocol (for
//! bridge authors)", on the bundled bridges' templates (Python and Ruby):
//! the promises neither the bridges' own suites (bridges/python/tests/
//! test_preload.py, bridges/ruby/test/preload_test.rb) nor the other tests
//! of this crate show.
//!
//! The test plays the pool, as the page describes it: it starts the
//! template (`workers/outside_template_worker.{py,rb}`, a script of the
//! bundled bridge) with `SNAKEPIT_PRELOAD=1` and one end of a
//! `SOCK_SEQPACKET` socket pair as its stdin, sends fork requests with
//! three pipe descriptors attached (`SCM_RIGHTS`), reads the template's
//! messages, and speaks frames to the forked workers over the pipes.
//!
//! The pool's own fork requests carry only what it adds for a worker (never
//! a request without `env`, never `SNAKEPIT_PRELOAD`), so a pool cannot show
//! these; hence the template is driven directly.
//!
//! Shown, for each of the two templates:
//! - "a missing `env` is `{}`" (preload.md:180);
//! - "`exited` ... only between messages, so a worker's `forked` always
//!   comes before its `exited`" (:202-204), with workers that exit while
//!   their `forked` still waits to be sent; and `exited` only for a worker
//!   the template forked, not for a helper process of the script (:175);
//! - the child's order of steps (:187-194): `SNAKEPIT_PRELOAD` removed after
//!   the request's `env` is set (an `env` setting it makes no template);
//!   `env` set and the worker object refreshed before the hooks; the fork
//!   warnings written before the hooks run;
//! - the descriptors (:187-188, :198-200): the worker keeps no copy of the
//!   template's socket, the template none of a worker's pipes;
//! - bad input (:212-215): every kind with its descriptors closed, `env`s
//!   no environment can hold refused with `fork_failed`; the 64 KiB limit
//!   (:161-163) exactly at its edge;
//! - "End" (:217-219): exit status 0 at end of file with a script's thread
//!   still running.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use snakepit_tests::{alive, python, workspace_root};

/// How long any one thing may take before the test fails (not a speed
/// assertion: only turns a hang into a failure).
const WAIT: Duration = Duration::from_secs(10);

/// The largest message of the protocol: "at most 64 KiB".
const MAX_MESSAGE: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lang {
    Python,
    Ruby,
}

/// Whether `ruby` is on the PATH; says so when it is not (the Ruby tests
/// are then skipped).
fn have(lang: Lang) -> bool {
    if lang == Lang::Python {
        return true;
    }
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("ruby").is_file()));
    if !found {
        eprintln!("skipped: ruby is not installed");
    }
    found
}

/// The two tests of `check`: one of the Python template, named `python`,
/// and one of the Ruby template, named `ruby` (which passes, saying it was
/// skipped, where `ruby` is not installed).
macro_rules! tests_of_both_templates {
    (check: $check:ident, python: $python:ident, ruby: $ruby:ident $(,)?) => {
        #[test]
        fn $python() {
            $check(Lang::Python);
        }

        #[test]
        fn $ruby() {
            if have(Lang::Ruby) {
                $check(Lang::Ruby);
            }
        }
    };
}

/// Whether `cond` holds within `timeout` (tried every 10 ms).
fn holds_within(timeout: Duration, cond: impl Fn() -> bool) -> bool {
    within(timeout, || cond().then_some(())).is_some()
}

/// Tries `probe` every 10 ms until it gives a value or `timeout` has passed
/// (with a last try then).
fn within<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let until = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// --- the operating system ---------------------------------------------------------

fn check(r: libc::c_int, what: &str) {
    assert!(r >= 0, "{what}: {}", io::Error::last_os_error());
}

/// A `SOCK_SEQPACKET` Unix socket pair, close-on-exec.
#[allow(unsafe_code)]
fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair(2) writes two new descriptors into `fds`; each is
    // owned by one OwnedFd from here on.
    unsafe {
        check(
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            ),
            "socketpair",
        );
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    }
}

/// A pipe, close-on-exec: (read end, write end).
#[allow(unsafe_code)]
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) writes two new descriptors into `fds`; each is owned
    // by one OwnedFd from here on.
    unsafe {
        check(libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC), "pipe2");
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    }
}

/// Sends one datagram with `fds` attached (`SCM_RIGHTS`).
#[allow(unsafe_code)]
fn send_with_fds(sock: &OwnedFd, data: &[u8], fds: &[RawFd]) {
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    // u64s: the control buffer must be aligned for a cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8).max(1)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is its empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer is `space` bytes, room for one cmsghdr
        // and `fds`; CMSG_FIRSTHDR points into it and CMSG_DATA past its
        // header; exactly `fds.len()` ints are copied there.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(cmsg).cast::<libc::c_int>(),
                fds.len(),
            );
        }
    }
    // SAFETY: msg points at `iov` (over `data`) and `control`, both alive
    // for the call.
    let sent = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    assert_eq!(
        sent,
        data.len() as isize,
        "sendmsg: {}",
        io::Error::last_os_error()
    );
}

/// Whether `fd` becomes readable (or reaches end of file) within `timeout`.
#[allow(unsafe_code)]
fn readable(fd: RawFd, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let until = Instant::now() + timeout;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        // SAFETY: one pollfd, alive for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis() as libc::c_int) };
        if n > 0 {
            return true;
        }
        if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return false;
        }
    }
}

/// One datagram from `sock` into `buf`: its length (0 at end of file).
#[allow(unsafe_code)]
fn recv(sock: &OwnedFd, buf: &mut [u8]) -> usize {
    // SAFETY: `buf` is writable for its whole length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert!(n >= 0, "recv: {}", io::Error::last_os_error());
    n as usize
}

/// A pidfd for `pid` (a worker the template forked: not this process's
/// child), or None when it is already gone.
#[allow(unsafe_code)]
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes no pointer; a new descriptor is owned by
    // the OwnedFd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: as above: `fd` is a new descriptor of ours.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// SIGKILL through a pidfd (never a recycled pid).
#[allow(unsafe_code)]
fn pidfd_kill(pidfd: &OwnedFd) {
    // SAFETY: pidfd_send_signal(2) with no siginfo.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

/// Makes `sock`'s send buffer as small as the kernel allows: its owner
/// blocks in send after a few messages until the other end reads.
#[allow(unsafe_code)]
fn smallest_send_buffer(sock: &OwnedFd) {
    let size: libc::c_int = 1;
    // SAFETY: setsockopt(2) reads one c_int.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    check(r, "setsockopt(SO_SNDBUF)");
}

/// Whether the pipe whose read end is `fd` reaches end of file (every copy
/// of its write end closed) within WAIT, dropping what it reads.
fn reaches_eof(fd: &File) -> bool {
    let until = Instant::now() + WAIT;
    let mut buf = [0u8; 4096];
    let mut file = fd;
    while readable(
        fd.as_raw_fd(),
        until.saturating_duration_since(Instant::now()),
    ) {
        match file.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    false
}

// --- output of a process ---------------------------------------------------------

/// Everything read from a descriptor by a thread of its own, and whether it
/// reached end of file.
#[derive(Clone)]
struct Output(Arc<Mutex<(Vec<u8>, bool)>>);

impl Output {
    fn collect(fd: OwnedFd) -> Output {
        let out = Output(Arc::new(Mutex::new((Vec::new(), false))));
        let shared = out.0.clone();
        std::thread::spawn(move || {
            let mut file = File::from(fd);
            let mut buf = [0u8; 65536];
            loop {
                match file.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => shared.lock().unwrap().0.extend_from_slice(&buf[..n]),
                }
            }
            shared.lock().unwrap().1 = true;
        });
        out
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap().0).into_owned()
    }

    fn eof(&self) -> bool {
        self.0.lock().unwrap().1
    }

    /// Whether `cond` holds of the text within WAIT.
    fn wait_for(&self, cond: impl Fn(&str) -> bool) -> bool {
        holds_within(WAIT, || cond(&self.text()))
    }

    /// Fails the test unless the text holds `needle` within WAIT.
    fn expect_text(&self, needle: &str) {
        assert!(self.wait_for(|t| t.contains(needle)), "{}", self.text());
    }
}

// --- the template -------------------------------------------------------------------

/// What one wait for the template's next message gave.
enum Received {
    Message(Value),
    EndOfFile,
    Nothing,
}

/// A template of the bundled bridge, started as the pool starts one, and
/// the pool's end of its socket.
struct Template {
    lang: Lang,
    child: Child,
    sock: Option<OwnedFd>,
    /// The template's stdout and stderr, together.
    log: Output,
    /// Every message received, in order (`ready` first).
    seen: Vec<Value>,
    /// Messages received but not yet asked for.
    backlog: Vec<Value>,
    /// A pidfd for every worker reported forked: Drop kills them.
    pidfds: Vec<OwnedFd>,
}

impl Template {
    /// Starts the template with `env` added, and waits for its `ready`.
    /// `slow_reader`: the template's end of the socket gets the smallest
    /// send buffer, so that its sends wait for this test to read.
    fn start(lang: Lang, env: &[(&str, &str)], slow_reader: bool) -> Template {
        let (ours, theirs) = seqpacket_pair();
        if slow_reader {
            smallest_send_buffer(&theirs);
        }
        let (log_r, log_w) = pipe();
        let workers = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers");
        let bridges = workspace_root().join("bridges");
        #[allow(clippy::disallowed_methods)]
        // The process under test, started the way the pool starts a
        // template (the pool's spawner would not let the test hold the
        // socket). Drop stops it; if the test dies, its socket reaches end
        // of file and it exits, and its workers' stdin closes.
        let mut cmd = match lang {
            Lang::Python => {
                let mut cmd = std::process::Command::new(python());
                cmd.arg(workers.join("outside_template_worker.py"))
                    .env("PYTHONPATH", bridges.join("python"))
                    .env("PYTHONDONTWRITEBYTECODE", "1");
                cmd
            }
            Lang::Ruby => {
                let mut cmd = std::process::Command::new("ruby");
                cmd.arg(workers.join("outside_template_worker.rb"))
                    .env("RUBYLIB", bridges.join("ruby/lib"));
                cmd
            }
        };
        for (name, _) in std::env::vars_os() {
            let text = name.to_string_lossy();
            if text.starts_with("SNAKEPIT_") || text.starts_with("OUTSIDE_TEMPLATE_") {
                cmd.env_remove(&name);
            }
        }
        cmd.env("SNAKEPIT_PRELOAD", "1")
            .env("SNAKEPIT_CODEC", "json")
            .envs(env.iter().copied())
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::from(log_w.try_clone().unwrap()))
            .stderr(Stdio::from(log_w));
        let child = cmd.spawn().expect("the template starts");
        // The Command holds the template's ends: only the template may.
        drop(cmd);
        let mut template = Template {
            lang,
            child,
            sock: Some(ours),
            log: Output::collect(log_r),
            seen: Vec::new(),
            backlog: Vec::new(),
            pidfds: Vec::new(),
        };
        let ready = template.next();
        assert_eq!(ready["op"], "ready", "{ready}");
        assert_eq!(ready["pid"], template.child.id(), "{ready}");
        template
    }

    fn sock(&self) -> &OwnedFd {
        self.sock.as_ref().expect("the socket is open")
    }

    fn send(&self, data: &[u8], fds: &[RawFd]) {
        send_with_fds(self.sock(), data, fds);
    }

    /// The next message from the socket (not the backlog), within `timeout`.
    fn receive(&mut self, timeout: Duration) -> Received {
        if !readable(self.sock().as_raw_fd(), timeout) {
            return Received::Nothing;
        }
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        let n = recv(self.sock(), &mut buf);
        if n == 0 {
            return Received::EndOfFile;
        }
        let msg: Value = serde_json::from_slice(&buf[..n]).unwrap_or_else(|e| {
            panic!(
                "the template sent a message that is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&buf[..n])
            )
        });
        assert!(msg.is_object(), "not a JSON object: {msg}");
        if msg["op"] == "forked" {
            if let Some(fd) = msg["pid"].as_u64().and_then(|p| pidfd_open(p as u32)) {
                self.pidfds.push(fd);
            }
        }
        self.seen.push(msg.clone());
        Received::Message(msg)
    }

    /// The next message from the socket; fails the test at end of file or
    /// when none comes within WAIT.
    fn next(&mut self) -> Value {
        match self.receive(WAIT) {
            Received::Message(msg) => msg,
            Received::EndOfFile => panic!(
                "the {:?} template closed its socket; its log:\n{}",
                self.lang,
                self.log.text()
            ),
            Received::Nothing => panic!(
                "no message from the {:?} template within {WAIT:?}; seen {:?}; its log:\n{}",
                self.lang,
                self.seen,
                self.log.text()
            ),
        }
    }

    /// The first message, from the backlog or the socket, that `wanted`
    /// accepts; the others stay in the backlog.
    fn expect(&mut self, wanted: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&wanted) {
            return self.backlog.remove(i);
        }
        loop {
            let msg = self.next();
            if wanted(&msg) {
                return msg;
            }
            self.backlog.push(msg);
        }
    }

    /// The reply (`forked` or `fork_failed`) to fork request `id`.
    fn reply_to(&mut self, id: i64) -> Value {
        self.expect(|m| (m["op"] == "forked" || m["op"] == "fork_failed") && m["id"] == id)
    }

    /// The raw wait status of `pid` the template reported.
    fn exit_status(&mut self, pid: u32) -> i64 {
        let msg = self.expect(|m| m["op"] == "exited" && m["pid"] == pid);
        msg["status"].as_i64().unwrap_or_else(|| panic!("{msg}"))
    }

    /// Sends `message` (raw bytes) with the write ends of three [`probes`]
    /// attached, and closes this test's copies of them: the read ends.
    fn send_probed(&self, message: &[u8]) -> [File; 3] {
        let (read_ends, write_ends) = probes();
        let fds: Vec<RawFd> = write_ends.iter().map(|fd| fd.as_raw_fd()).collect();
        self.send(message, &fds);
        read_ends
    }

    /// Sends `message` (raw bytes) with three fresh pipes attached, as the
    /// pool does, and closes this test's copies of the worker's ends.
    fn send_fork(&self, message: &[u8]) -> Ends {
        let (stdin_r, stdin_w) = pipe();
        let (stdout_r, stdout_w) = pipe();
        let (stderr_r, stderr_w) = pipe();
        self.send(
            message,
            &[
                stdin_r.as_raw_fd(),
                stdout_w.as_raw_fd(),
                stderr_w.as_raw_fd(),
            ],
        );
        Ends {
            stdin: stdin_w,
            stdout: stdout_r,
            stderr: stderr_r,
        }
    }

    /// Fork request `id` with `env` (None: no `env` member at all); the
    /// worker once the template reported it forked.
    fn fork(&mut self, id: i64, env: Option<Value>) -> Worker {
        let mut message = json!({"op": "fork", "id": id});
        if let Some(env) = env {
            message["env"] = env;
        }
        let ends = self.send_fork(message.to_string().as_bytes());
        self.forked(id, ends)
    }

    /// The worker of fork request `id`, whose ends are `ends`.
    fn forked(&mut self, id: i64, ends: Ends) -> Worker {
        let reply = self.reply_to(id);
        assert_eq!(
            reply["op"],
            "forked",
            "fork request {id} of the {:?} template: {reply}; its log:\n{}",
            self.lang,
            self.log.text()
        );
        let pid = reply["pid"].as_u64().unwrap() as u32;
        assert_ne!(pid, self.child.id(), "{reply}");
        Worker::attach(pid, ends)
    }

    /// The template's exit status once it has exited, within WAIT.
    fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        within(WAIT, || self.child.try_wait().unwrap())
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        for pidfd in &self.pidfds {
            pidfd_kill(pidfd);
        }
        self.sock = None; // end of file for the template
        let exited = within(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten()
        });
        if exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// This test's ends of a worker's three pipes.
struct Ends {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

// --- a forked worker ------------------------------------------------------------------

/// A forked worker, spoken to over the pipes the test made for it (JSON
/// frames: a 4-byte big-endian length, then the payload).
struct Worker {
    pid: u32,
    stdin: Option<File>,
    /// Frames read from its stdout; None at end of file.
    frames: mpsc::Receiver<Option<Value>>,
    stderr: Output,
    next_id: u64,
}

impl Worker {
    fn attach(pid: u32, ends: Ends) -> Worker {
        let (tx, frames) = mpsc::channel();
        let mut stdout = File::from(ends.stdout);
        std::thread::spawn(move || loop {
            let mut header = [0u8; 4];
            if stdout.read_exact(&mut header).is_err() {
                let _ = tx.send(None);
                return;
            }
            let mut payload = vec![0u8; u32::from_be_bytes(header) as usize];
            if stdout.read_exact(&mut payload).is_err() {
                let _ = tx.send(None);
                return;
            }
            let frame = serde_json::from_slice(&payload).expect("a JSON frame");
            if tx.send(Some(frame)).is_err() {
                return;
            }
        });
        Worker {
            pid,
            stdin: Some(File::from(ends.stdin)),
            frames,
            stderr: Output::collect(ends.stderr),
            next_id: 1,
        }
    }

    /// The next frame; None at end of file. Fails the test after WAIT.
    fn frame(&self) -> Option<Value> {
        self.frames.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!(
                "no frame from worker {} within {WAIT:?}; its stderr:\n{}",
                self.pid,
                self.stderr.text()
            )
        })
    }

    /// Whether its stdout reaches end of file within WAIT (every copy of
    /// the write end closed), dropping the frames before it.
    fn stdout_ends(&self) -> bool {
        let until = Instant::now() + WAIT;
        loop {
            match self
                .frames
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                Ok(None) => return true,
                Ok(Some(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// The next frame; fails the test at end of file, saying `when`.
    fn frame_before_eof(&self, when: &str) -> Value {
        self.frame().unwrap_or_else(|| {
            panic!(
                "worker {} closed its stdout{when}; its stderr:\n{}",
                self.pid,
                self.stderr.text()
            )
        })
    }

    /// Its hello: it serves.
    fn hello(&self) -> Value {
        let hello = self.frame_before_eof(" before its hello");
        assert_eq!(hello["type"], "hello", "{hello}");
        assert_eq!(hello["pid"], self.pid, "{hello}");
        hello
    }

    /// Calls `command`: its result.
    fn call(&mut self, command: &str, args: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let payload = json!({"id": id, "command": command, "args": args}).to_string();
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload.as_bytes());
        self.stdin
            .as_mut()
            .expect("stdin open")
            .write_all(&frame)
            .unwrap();
        loop {
            let reply = self.frame_before_eof("");
            if reply["id"] == id {
                assert_eq!(reply["success"], true, "{reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Its `state`, with the current values of `names`.
    fn state(&mut self, names: &[&str]) -> Value {
        let state = self.call("state", json!({ "names": names }));
        assert_eq!(state["pid"], self.pid, "{state}");
        state
    }
}

/// `message` as it goes over the socket.
fn message_bytes(message: Value) -> Vec<u8> {
    message.to_string().into_bytes()
}

/// A raw wait status of a normal exit with `code`.
fn exited_with(code: i64) -> i64 {
    code << 8
}

// --- 1. a missing env ---------------------------------------------------------------

/// preload.md:177-180, "Pool to template": "`{"op": "fork", "id": I,
/// "env": {"NAME": "value", ...}}` ... `env` values are strings (a missing
/// or null `env` is `{}`)". A fork request with no `env` member is served: the
/// worker has the template's environment without `SNAKEPIT_PRELOAD`, runs
/// its hooks and serves. (The bridges' own suites always send an `env`.)
fn a_fork_request_without_env_is_served(lang: Lang) {
    let mut template = Template::start(
        lang,
        &[("OUTSIDE_TEMPLATE_VAR", "from the template")],
        false,
    );
    let mut worker = template.fork(1, None);
    worker.hello();
    let state = worker.state(&["OUTSIDE_TEMPLATE_VAR", "SNAKEPIT_PRELOAD"]);
    assert_eq!(
        state["env"],
        json!({"OUTSIDE_TEMPLATE_VAR": "from the template", "SNAKEPIT_PRELOAD": null}),
        "{state}"
    );
    assert_eq!(state["hook"]["pid"], worker.pid, "the hooks ran: {state}");
    // A second request without env is served the same (no state was left
    // behind by the first), and so is one whose env is null ("a missing or
    // null `env` is `{}`").
    let second = template.fork(2, None);
    second.hello();
    let third = template.fork(3, Some(Value::Null));
    third.hello();
    assert_eq!(
        template
            .seen
            .iter()
            .filter(|m| m["op"] == "fork_failed")
            .count(),
        0,
        "{:?}",
        template.seen
    );
}

tests_of_both_templates! {
    check: a_fork_request_without_env_is_served,
    python: a_fork_request_without_env_is_served_by_the_python_template,
    ruby: a_fork_request_without_env_is_served_by_the_ruby_template,
}

// --- 2. forked before exited ------------------------------------------------------------

/// preload.md:202-204, "Reaping": "The template reaps its children as they
/// exit (`SIGCHLD`, or a poll) and sends `exited` for each, only between
/// messages, so a worker's `forked` always comes before its `exited`."
///
/// Workers that exit before their `forked` is sent: the template's end of
/// the socket has the smallest send buffer there is, and the test sends
/// ten fork requests and reads nothing for a while, so the template is
/// held in sending a `forked` (a few fit in the buffer). Then the test
/// closes the stdin of every worker: each forked so far exits, the one
/// whose `forked` is still waiting among them, and those forked after
/// that exit at once (their stdin is at end of file from the start). Every
/// `exited` must come after that worker's `forked`, once, with the raw
/// status of `exit(0)`. (A template that reported from its `SIGCHLD`
/// handler would send the waiting worker's `exited` first.)
fn forked_comes_before_exited(lang: Lang) {
    const WORKERS: i64 = 10;
    let mut template = Template::start(lang, &[], true);
    let mut stdins = Vec::new();
    let mut outputs = Vec::new();
    for id in 1..=WORKERS {
        let ends = template.send_fork(&message_bytes(json!({"op": "fork", "id": id, "env": {}})));
        stdins.push(ends.stdin);
        // Kept open: a hello written into a closed pipe would change the
        // worker's exit status.
        outputs.push((ends.stdout, ends.stderr));
    }
    // No assertion on when: the template forks until its sends wait.
    std::thread::sleep(Duration::from_millis(1000));
    drop(stdins);
    std::thread::sleep(Duration::from_millis(1000));
    let until = Instant::now() + Duration::from_secs(30);
    let mut forked: Vec<u64> = Vec::new();
    let mut exited: Vec<u64> = Vec::new();
    while (forked.len() as i64) < WORKERS || exited.len() < forked.len() {
        assert!(
            Instant::now() < until,
            "not every worker was forked and reported exited: {:?}; log:\n{}",
            template.seen,
            template.log.text()
        );
        let msg = template.next();
        match msg["op"].as_str() {
            Some("forked") => forked.push(msg["pid"].as_u64().unwrap()),
            Some("exited") => {
                let pid = msg["pid"].as_u64().unwrap();
                assert!(
                    forked.contains(&pid),
                    "`exited` for {pid} before its `forked`: {:?}",
                    template.seen
                );
                assert!(
                    !exited.contains(&pid),
                    "two `exited` for {pid}: {:?}",
                    template.seen
                );
                assert_eq!(msg["status"], exited_with(0), "{msg}");
                exited.push(pid);
            }
            _ => panic!("unexpected message {msg}: {:?}", template.seen),
        }
    }
    let ids: Vec<Value> = template
        .seen
        .iter()
        .filter(|m| m["op"] == "forked")
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, (1..=WORKERS).map(Value::from).collect::<Vec<_>>());
    drop(outputs);
}

tests_of_both_templates! {
    check: forked_comes_before_exited,
    python: a_python_worker_that_exits_at_once_is_reported_forked_before_exited,
    ruby: a_ruby_worker_that_exits_at_once_is_reported_forked_before_exited,
}

/// preload.md:175, "Template to pool": `exited` is sent when "a worker the
/// template forked has exited and been reaped", and :202-203 "The template
/// reaps its children ... and sends `exited` for each". A helper process
/// the script started at import (the template's child, but no worker) that
/// exits is not reported: the pool would take its pid for a worker's; and
/// it is not reaped either: the script waits for it itself.
fn a_helper_of_the_script_is_not_reported(lang: Lang) {
    let mut template = Template::start(lang, &[("OUTSIDE_TEMPLATE_SPAWN", "1")], false);
    template.log.expect_text("outside_template: spawned ");
    let text = template.log.text();
    let helper: u32 = text
        .split("outside_template: spawned ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    // The helper (`sleep 0.3`) ends.
    assert!(
        holds_within(WAIT, || !alive(helper)),
        "the helper {helper} still runs"
    );
    // A worker that exits at once: its `exited` comes from a reap after the
    // helper's end, by which any report of the helper would have come.
    let ends = template.send_fork(&message_bytes(
        json!({"op": "fork", "id": 1, "env": {"OUTSIDE_TEMPLATE_EXIT": "0"}}),
    ));
    // Kept open until it has exited: the template has the script's waiting
    // thread, so the worker writes the fork warning to its stderr first.
    let _ends = ends;
    let pid = template.reply_to(1)["pid"].as_u64().unwrap() as u32;
    assert_eq!(template.exit_status(pid), exited_with(0));
    let stray: Vec<&Value> = template
        .seen
        .iter()
        .filter(|m| m["op"] == "exited" && m["pid"] != pid)
        .collect();
    assert!(
        stray.is_empty(),
        "`exited` for a process that is no worker (the helper is {helper}): {stray:?}"
    );
    // And the template left the helper to the script: the script's own
    // wait for it, a second after it ended, finds it (Ruby's template
    // once reaped any child, and the script's wait found none).
    template.log.expect_text("outside_template: the script");
    assert!(
        template
            .log
            .text()
            .contains("outside_template: the script reaped its helper, status 0"),
        "{}",
        template.log.text()
    );
}

tests_of_both_templates! {
    check: a_helper_of_the_script_is_not_reported,
    python: a_helper_process_of_the_python_script_is_not_reported_exited,
    ruby: a_helper_process_of_the_ruby_script_is_not_reported_exited,
}

// --- 3. the order of steps in the child ------------------------------------------------

/// preload.md:187-191, "Serving a fork request": "set every variable of
/// `env` ..., then remove `SNAKEPIT_PRELOAD` (last, so that no `env` can
/// make a worker a template)". A fork request whose `env` sets
/// `SNAKEPIT_PRELOAD=1` still gets a serving worker (a template's loop on a
/// pipe would exit 1 without a hello), and neither its hooks nor its
/// commands (nor so its subprocesses) see the variable; the request's
/// other variables are set. (The pool's fork requests never carry
/// `SNAKEPIT_PRELOAD`: a pool cannot show this.)
fn an_env_setting_snakepit_preload_makes_no_template(lang: Lang) {
    let mut template = Template::start(lang, &[], false);
    for (id, value) in [(1, "1"), (2, "yes")] {
        let mut worker = template.fork(
            id,
            Some(json!({
                "SNAKEPIT_PRELOAD": value,
                "OUTSIDE_TEMPLATE_VAR": format!("request {id}"),
            })),
        );
        worker.hello();
        let state = worker.state(&["SNAKEPIT_PRELOAD", "OUTSIDE_TEMPLATE_VAR"]);
        assert_eq!(
            state["env"],
            json!({"SNAKEPIT_PRELOAD": null, "OUTSIDE_TEMPLATE_VAR": format!("request {id}")}),
            "{state}"
        );
        assert_eq!(state["hook"]["preload"], Value::Null, "{state}");
    }
}

tests_of_both_templates! {
    check: an_env_setting_snakepit_preload_makes_no_template,
    python: an_env_setting_snakepit_preload_does_not_make_a_python_worker_a_template,
    ruby: an_env_setting_snakepit_preload_does_not_make_a_ruby_worker_a_template,
}

/// preload.md:188-194, the order of the child's steps: "set every variable
/// of `env` (it carries `SNAKEPIT_WORKER_ID` among others) ...; refresh
/// what the worker object read at construction (worker id, pid, start
/// time); ...; run the after-fork hooks". An after-fork hook already sees
/// the request's variables and the worker id of its request (not the
/// template's), and in Python the worker object's pid is its own.
fn hooks_run_after_env_and_refresh(lang: Lang) {
    let mut template = Template::start(lang, &[("SNAKEPIT_WORKER_ID", "the_template")], false);
    for id in [1, 2] {
        let mut worker = template.fork(
            id,
            Some(json!({
                "SNAKEPIT_WORKER_ID": format!("outside_w{id}"),
                "OUTSIDE_TEMPLATE_VAR": format!("request {id}"),
            })),
        );
        worker.hello();
        let hook = worker.state(&[])["hook"].clone();
        assert_eq!(hook["pid"], worker.pid, "{hook}");
        assert_eq!(hook["var"], format!("request {id}"), "{hook}");
        assert_eq!(hook["worker_id"], format!("outside_w{id}"), "{hook}");
        if lang == Lang::Python {
            assert_eq!(hook["worker_pid"], worker.pid, "{hook}");
        }
    }
}

tests_of_both_templates! {
    check: hooks_run_after_env_and_refresh,
    python: python_hooks_see_the_request_env_and_its_own_worker_id,
    ruby: ruby_hooks_see_the_request_env_and_its_own_worker_id,
}

/// preload.md:193-194: "write the fork warnings (threads, sockets, GPU) to
/// stderr; run the after-fork hooks": the warning comes before what a hook
/// writes. And :217-219, "End": "When its socket reaches end of file ...,
/// the template exits with status 0": here with a thread of the script's
/// still running (a non-daemon one in Python, which a normal interpreter
/// exit would wait for forever); and, "runs none of the script's exit
/// handlers", the `at_exit`/`atexit` handler the script registered at load
/// does not run in the template (Ruby's template once ended with `exit`,
/// which ran it).
fn warnings_before_hooks_and_exit_0_with_a_thread(lang: Lang) {
    let mut template = Template::start(lang, &[("OUTSIDE_TEMPLATE_THREAD", "1")], false);
    assert_eq!(template.seen[0]["threads"], 2, "{}", template.seen[0]);
    let worker = template.fork(1, Some(json!({})));
    worker.hello();
    worker.stderr.expect_text("outside_template: hook ran");
    let stderr = worker.stderr.text();
    let warning = stderr
        .find("snakepit: the template had 2 threads")
        .unwrap_or_else(|| panic!("no thread warning in the worker's stderr:\n{stderr}"));
    let hook = stderr.find("outside_template: hook ran").unwrap();
    assert!(
        warning < hook,
        "the hook wrote before the warnings:\n{stderr}"
    );
    template.sock = None;
    let status = template.wait_exit().unwrap_or_else(|| {
        panic!(
            "the template with a thread did not exit at end of file; its log:\n{}",
            template.log.text()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "{status}; log:\n{}",
        template.log.text()
    );
    assert!(
        !template
            .log
            .text()
            .contains("outside_template: at_exit ran"),
        "the template ran the script's exit handler:\n{}",
        template.log.text()
    );
}

tests_of_both_templates! {
    check: warnings_before_hooks_and_exit_0_with_a_thread,
    python: a_python_template_with_a_thread_warns_before_the_hooks_and_exits_0_at_eof,
    ruby: a_ruby_template_with_a_thread_warns_before_the_hooks_and_exits_0_at_eof,
}

/// preload.md:187-188 and 198-200: in the child, "`dup2` the three
/// descriptors onto 0, 1 and 2 and close the originals and the template's
/// socket"; in the template, "close the three descriptors". Seen from the
/// pool: a worker's stdout and stderr reach end of file when the worker
/// ends, the template still running (it kept no copy); and when the
/// template is killed, the pool's socket reaches end of file though a
/// worker still runs (the worker kept no copy of the template's end), and
/// that worker still serves.
fn descriptors_end_where_the_protocol_puts_them(lang: Lang) {
    let mut template = Template::start(lang, &[], false);
    let mut first = template.fork(1, Some(json!({})));
    first.hello();
    first.stdin = None;
    assert_eq!(template.exit_status(first.pid), exited_with(0));
    assert!(
        first.stdout_ends(),
        "worker {} ended, its stdout is still open in the template",
        first.pid
    );
    assert!(
        first.stderr.wait_for(|_| first.stderr.eof()),
        "worker {} ended, its stderr is still open in the template",
        first.pid
    );
    assert!(template.running(), "{}", template.log.text());

    let mut second = template.fork(2, Some(json!({})));
    second.hello();
    template.child.kill().unwrap();
    template.child.wait().unwrap();
    let until = Instant::now() + WAIT;
    loop {
        match template.receive(until.saturating_duration_since(Instant::now())) {
            Received::EndOfFile => break,
            Received::Message(msg) => assert_ne!(msg["op"], "ready", "{msg}"),
            Received::Nothing => panic!(
                "the socket stays open with its template dead: worker {} holds it",
                second.pid
            ),
        }
    }
    assert!(alive(second.pid));
    assert_eq!(second.state(&[])["hook"]["pid"], second.pid);
}

tests_of_both_templates! {
    check: descriptors_end_where_the_protocol_puts_them,
    python: python_descriptors_end_where_the_protocol_puts_them,
    ruby: ruby_descriptors_end_where_the_protocol_puts_them,
}

// --- bad input ---------------------------------------------------------------------------

/// Three pipes whose write ends are sent (and held by no one else): the
/// read ends, to see that the template closed what it got.
fn probes() -> ([File; 3], [OwnedFd; 3]) {
    let (r1, w1) = pipe();
    let (r2, w2) = pipe();
    let (r3, w3) = pipe();
    (
        [File::from(r1), File::from(r2), File::from(r3)],
        [w1, w2, w3],
    )
}

/// How many bad messages the template's log `t` reports.
fn reported(t: &str) -> usize {
    t.lines().filter(|l| l.contains("template: ")).count()
}

/// preload.md:212-215, "Bad input": "A message the template cannot use
/// (not JSON, an unknown `op`, a wrong number of descriptors, a bad `env`)
/// is reported on its stderr, every descriptor that came with it is closed,
/// a fork request with an integer id gets `fork_failed`, and the template
/// goes on serving." Each message here carries three descriptors (the
/// suites show closing for some kinds only): not JSON, JSON that is not an
/// object, an unknown op, text that is not UTF-8 (:162-163, "one JSON
/// object in UTF-8"), and `env`s no environment can hold (an empty name, a
/// name with `=`, a NUL in a value, a NUL in a name). The fork requests
/// with a bad `env` get `fork_failed`, in order, and nothing else is
/// answered (at most a `fork_failed` for the unknown op and the request
/// that is not UTF-8, which carry an integer id too): no worker is forked
/// for any of them, and the next good request is served.
fn bad_input_with_descriptors(lang: Lang) {
    let mut template = Template::start(lang, &[], false);
    let bad: Vec<(Vec<u8>, Option<i64>)> = vec![
        (b"not json at all".to_vec(), None),
        (b"[1, 2, 3]".to_vec(), None),
        (
            message_bytes(json!({"op": "spawn", "id": 20, "env": {}})),
            None,
        ),
        (
            b"{\"op\": \"fork\", \"id\": 21, \"env\": {\"A\": \"\xff\"}}".to_vec(),
            None,
        ),
        (
            message_bytes(json!({"op": "fork", "id": 22, "env": {"": "x"}})),
            Some(22),
        ),
        (
            message_bytes(json!({"op": "fork", "id": 23, "env": {"A=B": "x"}})),
            Some(23),
        ),
        (
            message_bytes(json!({"op": "fork", "id": 24, "env": {"A": "a\u{0}b"}})),
            Some(24),
        ),
        (
            message_bytes(json!({"op": "fork", "id": 25, "env": {"A\u{0}B": "x"}})),
            Some(25),
        ),
    ];
    let readers: Vec<[File; 3]> = bad
        .iter()
        .map(|(message, _)| template.send_probed(message))
        .collect();
    let good = template.fork(30, Some(json!({})));
    good.hello();

    let mut replies: Vec<Value> = template
        .seen
        .iter()
        .skip(1) // ready
        .filter(|m| !(m["op"] == "fork_failed" && (m["id"] == 20 || m["id"] == 21)))
        .cloned()
        .collect();
    let last = replies.pop().unwrap();
    assert_eq!((&last["op"], &last["id"]), (&json!("forked"), &json!(30)));
    let expected: Vec<i64> = bad.iter().filter_map(|(_, id)| *id).collect();
    let got: Vec<(Value, Value)> = replies
        .iter()
        .map(|m| (m["op"].clone(), m["id"].clone()))
        .collect();
    assert_eq!(
        got,
        expected
            .iter()
            .map(|id| (json!("fork_failed"), json!(id)))
            .collect::<Vec<_>>(),
        "replies to the bad messages: {:?}; log:\n{}",
        template.seen,
        template.log.text()
    );
    for reply in &replies {
        assert!(
            reply["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{reply}"
        );
    }
    for (i, read_ends) in readers.iter().enumerate() {
        for (j, r) in read_ends.iter().enumerate() {
            assert!(
                reaches_eof(r),
                "descriptor {j} of bad message {i} ({:?}) is still open",
                String::from_utf8_lossy(&bad[i].0)
            );
        }
    }
    // Reported: a line of the template's per bad message.
    assert!(
        template.log.wait_for(|t| reported(t) >= bad.len()),
        "{} bad messages, reported:\n{}",
        bad.len(),
        template.log.text()
    );
    assert!(template.running());
}

tests_of_both_templates! {
    check: bad_input_with_descriptors,
    python: the_python_template_closes_the_descriptors_of_every_bad_message,
    ruby: the_ruby_template_closes_the_descriptors_of_every_bad_message,
}

/// Fork request `id` whose `env` is `OUTSIDE_TEMPLATE_VAR` empty.
fn bare_fork_request(id: i64) -> String {
    json!({"op": "fork", "id": id, "env": {"OUTSIDE_TEMPLATE_VAR": ""}}).to_string()
}

/// A fork request of exactly `size` bytes: `OUTSIDE_TEMPLATE_VAR` padded.
fn fork_request_of(id: i64, size: usize) -> Vec<u8> {
    let bare = bare_fork_request(id);
    let pad = "x".repeat(size - bare.len());
    let message = json!({"op": "fork", "id": id, "env": {"OUTSIDE_TEMPLATE_VAR": pad}}).to_string();
    assert_eq!(message.len(), size);
    message.into_bytes()
}

/// preload.md:161-163, "Start": "each message is one datagram, one JSON
/// object in UTF-8, at most 64 KiB". A fork request of exactly 64 KiB
/// (65,536 bytes) is served, its whole `env` value in the worker; one of a
/// byte more is bad input (:212-215): reported, its descriptors closed,
/// no worker forked, and the template serves on. (The Ruby suite sends
/// nothing over 64 KiB; neither suite sends one of exactly 64 KiB.)
fn the_64_kib_limit(lang: Lang) {
    let mut template = Template::start(lang, &[], false);
    let ends = template.send_fork(&fork_request_of(1, MAX_MESSAGE));
    let mut worker = template.forked(1, ends);
    worker.hello();
    let state = worker.state(&["OUTSIDE_TEMPLATE_VAR"]);
    let value = state["env"]["OUTSIDE_TEMPLATE_VAR"].as_str().unwrap();
    assert!(value.bytes().all(|b| b == b'x'), "{value}");
    assert_eq!(value.len(), MAX_MESSAGE - bare_fork_request(1).len());

    let before = reported(&template.log.text());
    let read_ends = template.send_probed(&fork_request_of(2, MAX_MESSAGE + 1));
    let next = template.fork(3, Some(json!({})));
    next.hello();
    let answered: Vec<&Value> = template.seen.iter().filter(|m| m["id"] == 2).collect();
    assert!(
        answered.iter().all(|m| m["op"] != "forked"),
        "a fork request over 64 KiB was served: {answered:?}"
    );
    for (j, r) in read_ends.iter().enumerate() {
        assert!(
            reaches_eof(r),
            "descriptor {j} of the long message is still open"
        );
    }
    assert!(
        template.log.wait_for(|t| reported(t) > before),
        "the long message was not reported:\n{}",
        template.log.text()
    );
}

tests_of_both_templates! {
    check: the_64_kib_limit,
    python: the_python_template_serves_a_request_of_64_kib_and_refuses_one_byte_more,
    ruby: the_ruby_template_serves_a_request_of_64_kib_and_refuses_one_byte_more,
}
