//! Signals, `/proc`, sockets and pidfds: the small system calls the pool
//! makes on its processes. With `spawn.rs`, the only `unsafe` code in the
//! workspace: `kill`, `ioctl`, `socketpair`, `sendmsg` (the one call that
//! builds a control message, for passing a preloaded worker's pipes to its
//! template), `recv`, `pidfd_open`, `pidfd_send_signal`, `waitid` (an
//! adopted worker's end, and an adopted escaped child's), `fcntl` (a pipe's size, a
//! descriptor's flags), `getpgid`, `poll` (the watchdog's pipe), `write` (a frame
//! to a worker's pipe) and `prctl` (a helper process's parent-death
//! signal; whether this process is a subreaper), each a direct libc call.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Sets `command` up for a short helper process run outside any pool (an
/// interpreter's version or package probe, as `snakepit doctor` runs):
/// its process leads a process group of its own, and is killed (SIGKILL)
/// when the thread that spawns it ends, as when this process is ended by a
/// signal (`SIGKILL` included), so that it never outlives the host that
/// waits for it. Spawn it and wait for it on the same thread; end it, and whatever
/// it started, with [`kill_group`] of its pid.
///
/// ```
/// let mut command = std::process::Command::new("true");
/// snakepit_core::die_with_this_thread(&mut command);
/// assert!(command.status().unwrap().success());
/// ```
pub fn die_with_this_thread(command: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    command.process_group(0);
    // SAFETY: between fork and exec the closure calls only `prctl` and
    // `getppid`, both async-signal-safe, and allocates nothing (the error
    // is built from a constant).
    unsafe {
        command.pre_exec(move || {
            // The setting survives `exec`. A parent that ended before it
            // was made shows as another parent: refuse to start then.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                || libc::getppid() as u32 != parent
            {
                return Err(std::io::Error::from(std::io::ErrorKind::Interrupted));
            }
            Ok(())
        })
    }
}

/// Kills (SIGKILL) the process group `pgid`: a helper process set up by
/// [`die_with_this_thread`] (its pid is its group's id) and whatever it
/// started. False when no such group is left, and for a number that names
/// no single group: 0 and 1, and anything above the largest pid Linux
/// gives (4,194,304), which `kill(2)` would take as another process or as
/// every process.
pub fn kill_group(pgid: u32) -> bool {
    signal_group(pgid, libc::SIGKILL)
}

/// The largest pid Linux can give (`PID_MAX_LIMIT` on 64-bit systems, the
/// most `/proc/sys/kernel/pid_max` may be set to). No process has a larger
/// one, on any Unix the pool runs on.
pub(crate) const PID_MAX_LIMIT: u32 = 4 * 1024 * 1024;

/// `pid` as the kernel's signed pid, when it can name one process (or the
/// group it leads): from 2 up (`kill(2)` takes 0 as the caller's own group,
/// and -1, the group of 1, as every process), at most [`PID_MAX_LIMIT`].
fn one_pid(pid: u32) -> Option<libc::pid_t> {
    (2..=PID_MAX_LIMIT)
        .contains(&pid)
        .then(|| libc::pid_t::try_from(pid).ok())
        .flatten()
}

/// Sends `signal` to a whole process group. False, and nothing sent, for a
/// number that names no single group (see [`one_pid`]).
pub(crate) fn signal_group(pgid: u32, signal: libc::c_int) -> bool {
    let Some(pgid) = one_pid(pgid) else {
        return false;
    };
    // SAFETY: kill(2) with a negative pid signals a group; no memory involved.
    unsafe { libc::kill(-pgid, signal) == 0 }
}

/// The process group of process `pid`; `None` when there is no such
/// process (or `pid` names none, see [`one_pid`]).
pub(crate) fn group_of(pid: u32) -> Option<u32> {
    let pid = one_pid(pid)?;
    // SAFETY: getpgid(2) takes an integer and reads nothing of ours.
    let group = unsafe { libc::getpgid(pid) };
    (group > 0).then_some(group as u32)
}

/// Sends `signal` to one process. False, and nothing sent, for a number
/// that names no single process (see [`one_pid`]).
pub(crate) fn signal_pid(pid: u32, signal: libc::c_int) -> bool {
    let Some(pid) = one_pid(pid) else {
        return false;
    };
    // SAFETY: as above, for one process.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// Writes what the non-blocking descriptor `fd` takes now, straight with
/// `write(2)` (a call's frame usually goes whole in one): the bytes
/// written, fewer than `buf` when it is full. The runtime's own write path
/// costs several hundred instructions more per call; its readiness cache
/// is not told, so its next write after a full pipe finds it full itself.
pub(crate) fn write_now(fd: RawFd, buf: &[u8]) -> std::io::Result<usize> {
    let mut written = 0;
    while written < buf.len() {
        let rest = &buf[written..];
        // SAFETY: write(2) reads at most `rest.len()` bytes from `rest`.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        match n {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n if n > 0 => written += n as usize,
            _ => {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::Interrupted => {}
                    std::io::ErrorKind::WouldBlock => break,
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(written)
}

/// Makes `fd` non-blocking (`O_NONBLOCK`).
pub(crate) fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl(2) reads and sets a descriptor's flags; no memory involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until `fd` can be written to, or `timeout_ms` has passed (or a
/// signal came): `poll(2)` on one descriptor.
pub(crate) fn wait_writable(fd: RawFd, timeout_ms: i32) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll(2) on one pollfd that lives across the call.
    unsafe {
        libc::poll(&mut pfd, 1, timeout_ms);
    }
}

/// Whether the read end of the pipe whose write end is `fd` is closed
/// everywhere (the process reading it is gone): `poll(2)` reports
/// `POLLERR` on a write end without readers, without writing anything.
pub(crate) fn reader_gone(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll(2) on one pollfd that lives across the call; no wait.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLERR | libc::POLLNVAL) != 0
}

/// Bytes written to a pipe and not read yet, asked through either end
/// (`FIONREAD`); `None` where the system does not tell.
pub(crate) fn unread_in_pipe(fd: std::os::fd::RawFd) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which is valid.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    (r == 0 && n >= 0).then_some(n as usize)
}

/// A pipe's capacity as this process set it. A frame that does not fit in
/// a pipe is written in pieces, each waiting for the other side to read the
/// last; for large frames (a tensor, an image) the worker and the pool then
/// take turns at a 64 KiB pipe instead of each working on a whole frame.
/// [`PipeSize::fit`] grows the pipe to hold a frame whole, up to 1 MiB, once
/// such a frame is seen.
///
/// Growth is bounded for the whole process ([`PIPE_GROWTH_BUDGET`]): Linux
/// counts pipe capacity per user, and a user over
/// `/proc/sys/fs/pipe-user-pages-soft` (64 MiB by default) gets small pipes
/// everywhere, in every program. What a pipe added is given back when its
/// `PipeSize` is dropped with the pipe.
#[derive(Debug)]
pub struct PipeSize {
    capacity: usize,
    added: usize,
    /// The system refused once: not asked again for this pipe.
    refused: bool,
}

/// A new pipe's capacity on Linux.
const PIPE_DEFAULT: usize = 64 << 10;
/// The largest capacity asked for (Linux's default `pipe-max-size`, the
/// most an unprivileged process may set).
const PIPE_MAX: usize = 1 << 20;
/// The most capacity this process adds to pipes, all pipes together: a
/// quarter of Linux's default per-user soft limit.
pub const PIPE_GROWTH_BUDGET: usize = 16 << 20;

static PIPE_GROWTH: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Default for PipeSize {
    fn default() -> Self {
        PipeSize::new()
    }
}

impl PipeSize {
    /// A pipe as created: 64 KiB.
    pub const fn new() -> PipeSize {
        PipeSize {
            capacity: PIPE_DEFAULT,
            added: 0,
            refused: false,
        }
    }

    /// The capacity as set (or as created).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Grows the pipe behind `fd` (either end) so that `frame_len` bytes fit
    /// in it whole, rounded up to a power of two and at most 1 MiB, if the
    /// process's budget allows; otherwise leaves it as it is. Cheap when the
    /// frame fits already.
    pub fn fit(&mut self, fd: &impl std::os::fd::AsRawFd, frame_len: usize) {
        use std::sync::atomic::Ordering;
        if frame_len <= self.capacity || self.capacity >= PIPE_MAX || self.refused {
            return;
        }
        let want = frame_len.next_power_of_two().clamp(PIPE_DEFAULT, PIPE_MAX);
        let extra = want - self.capacity;
        if PIPE_GROWTH.fetch_add(extra, Ordering::Relaxed) + extra > PIPE_GROWTH_BUDGET {
            PIPE_GROWTH.fetch_sub(extra, Ordering::Relaxed);
            return; // perhaps later, when other pipes have given theirs back
        }
        #[cfg(target_os = "linux")]
        // SAFETY: F_SETPIPE_SZ takes an int and touches no memory of ours.
        let set = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, want as libc::c_int) };
        #[cfg(not(target_os = "linux"))]
        let set = {
            let _ = fd;
            -1
        };
        if set < want as libc::c_int {
            PIPE_GROWTH.fetch_sub(extra, Ordering::Relaxed);
            self.refused = true;
            return;
        }
        self.added += extra;
        self.capacity = want;
    }
}

impl Drop for PipeSize {
    fn drop(&mut self) {
        PIPE_GROWTH.fetch_sub(self.added, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Resident memory of process `pid` in bytes (Linux: `VmRSS` of
/// `/proc/<pid>/status`); `None` where the system does not tell.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Every process id in `/proc`.
pub(crate) fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A process's command line, arguments separated by spaces.
pub(crate) fn command_line(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Proportional set size of process `pid` in bytes (Linux: `Pss` of
/// `/proc/<pid>/smaps_rollup`): its private pages plus its share of the
/// pages it shares, which is what a forked worker really costs.
pub(crate) fn pss_bytes(pid: u32) -> Option<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = rollup.lines().find(|l| l.starts_with("Pss:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Process `pid` is gone or a zombie (state `Z` or `X` in
/// `/proc/<pid>/stat`).
pub(crate) fn has_exited(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    matches!(state, Some("Z" | "X") | None)
}

/// The parent of process `pid` (field 4 of `/proc/<pid>/stat`).
pub(crate) fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// A connected pair of `SOCK_SEQPACKET` Unix sockets, close-on-exec: one
/// message per send, kept whole.
pub(crate) fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: socketpair writes two descriptors into the array, which is valid.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends one message with `fds` attached (`SCM_RIGHTS`), without blocking
/// and without `SIGPIPE`.
pub(crate) fn send_with_fds(socket: RawFd, message: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as libc::c_uint) } as usize;
    // u64 words keep the control buffer aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: message.as_ptr() as *mut libc::c_void,
        iov_len: message.len(),
    };
    // SAFETY: every pointer in `msg` points into `iov`, `control` or
    // `message`, which outlive the call; the control message is written
    // within `control`'s `space` bytes, as CMSG_SPACE computed.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as libc::c_uint) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(cmsg),
                fd_bytes,
            );
        }
        libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if sent as usize != message.len() {
        return Err(std::io::Error::other("message cut short"));
    }
    Ok(())
}

/// Receives one message without blocking; `Ok(0)` is end of file.
pub(crate) fn recv(socket: RawFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
    let n = unsafe {
        libc::recv(
            socket,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// A pidfd for process `pid` (Linux 5.3+): readable once the process has
/// exited, whoever its parent is.
pub(crate) fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Reaps, without blocking, the process `pidfd` refers to if it has ended
/// and is a child of this process: a preloaded worker whose template died,
/// adopted by a host that is a subreaper or a container's first process.
/// Nobody else would wait for it, and it would stay a zombie for the
/// host's life. Through the pidfd (`waitid(P_PIDFD)`, Linux 5.4+), so it
/// can only reap the process held; a process that is not this process's
/// child, or not ended yet, is left as it is.
pub(crate) fn reap_if_adopted(pidfd: RawFd) {
    #[cfg(target_os = "linux")]
    {
        let Ok(id) = libc::id_t::try_from(pidfd) else {
            return;
        };
        // SAFETY: an all-zero `siginfo_t` is a valid value to be written.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid(2) writes one `siginfo_t` through a valid pointer.
        unsafe {
            libc::waitid(libc::P_PIDFD, id, &mut info, libc::WEXITED | libc::WNOHANG);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = pidfd;
}

/// Whether orphans below this process come to it: it is a subreaper
/// (`PR_SET_CHILD_SUBREAPER`) or the first process of its PID namespace
/// (a container's).
pub(crate) fn adopts_orphans() -> bool {
    #[cfg(target_os = "linux")]
    {
        let mut flag: libc::c_int = 0;
        // SAFETY: PR_GET_CHILD_SUBREAPER writes one int through a valid pointer.
        let r = unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut flag as *mut libc::c_int) };
        std::process::id() == 1 || (r == 0 && flag != 0)
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// Reaps, on a thread of its own, the processes held by `pidfds` (just
/// killed) that this process adopted, once each has ended: in a host that
/// adopts orphans, a worker's child that left its group and is killed by
/// the pool would otherwise stay a zombie for the host's life. A process
/// is adopted only when its parent ends, which may come after its own end,
/// so each is tried every 10 ms for up to 5 s; one that is never this
/// process's child is somebody else's to reap. Nothing to do, and no
/// thread, in a host that does not adopt orphans.
pub(crate) fn reap_adopted_after_kill(mut pidfds: Vec<OwnedFd>) {
    if pidfds.is_empty() || !adopts_orphans() {
        return;
    }
    let reap = move || {
        use std::os::fd::AsRawFd;
        for _ in 0..500 {
            pidfds.retain(|fd| !reaped(fd.as_raw_fd()));
            if pidfds.is_empty() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    let _ = std::thread::Builder::new()
        .name("snakepit-reaper".into())
        .spawn(reap);
}

/// Whether the ended child `pidfd` refers to was reaped now (`waitid`,
/// without blocking); false if it runs, or is not this process's child.
fn reaped(pidfd: RawFd) -> bool {
    #[cfg(target_os = "linux")]
    {
        let Ok(id) = libc::id_t::try_from(pidfd) else {
            return true;
        };
        // SAFETY: an all-zero `siginfo_t` is a valid value to be written.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid(2) writes one `siginfo_t` through a valid pointer.
        let r =
            unsafe { libc::waitid(libc::P_PIDFD, id, &mut info, libc::WEXITED | libc::WNOHANG) };
        // SAFETY: `si_pid` reads the field waitid wrote (zero: none ended).
        r == 0 && unsafe { info.si_pid() } != 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pidfd;
        true
    }
}

/// A process found by its pid, held so that a signal reaches it or nobody:
/// through a pidfd opened before the process is checked, a signal never
/// lands in a process that took its pid after it ended. Without pidfds
/// (a kernel before 5.3, or a sandbox that refuses them) it falls back to
/// the pid itself.
pub(crate) enum Held {
    Fd(OwnedFd),
    Pid(u32),
}

impl Held {
    /// `None` when there is no process `pid`.
    pub(crate) fn open(pid: u32) -> Option<Held> {
        one_pid(pid)?;
        match pidfd_open(pid) {
            Ok(fd) => Some(Held::Fd(fd)),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => None,
            Err(_) => Some(Held::Pid(pid)),
        }
    }

    /// Its pidfd, if it is held by one.
    pub(crate) fn into_fd(self) -> Option<OwnedFd> {
        match self {
            Held::Fd(fd) => Some(fd),
            Held::Pid(_) => None,
        }
    }

    /// Sends `signal` to the held process; false if it has ended (or the
    /// signal was refused).
    pub(crate) fn signal(&self, signal: libc::c_int) -> bool {
        match self {
            Held::Fd(fd) => {
                use std::os::fd::AsRawFd;
                // SAFETY: pidfd_send_signal takes a descriptor we own, a
                // signal number and a null siginfo (as kill(2) would send).
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        fd.as_raw_fd(),
                        signal,
                        std::ptr::null::<libc::siginfo_t>(),
                        0 as libc::c_uint,
                    )
                };
                r == 0
            }
            Held::Pid(pid) => signal_pid(*pid, signal),
        }
    }
}

/// Registers `fd` with the Tokio reactor for `interest`.
pub(crate) fn watch(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` stays open, and names the same descriptor, for
    // as long as the `AsyncFd` owns it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
        .map_err(std::io::Error::from)
}

/// A pipe, close-on-exec: `(read end, write end)`.
pub(crate) fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array, which is valid.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    #[allow(clippy::disallowed_methods)] // a bystander process, not a worker
    fn a_zombie_or_missing_process_has_exited_and_a_live_one_has_not() {
        assert!(!has_exited(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: a zombie once it ends.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !has_exited(pid) && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(has_exited(pid), "a zombie has exited");
        assert_eq!(parent_of(pid), Some(std::process::id()));
        child.wait().unwrap();
        assert!(has_exited(pid), "a reaped process has exited");
    }

    /// A held process is signalled while it lives; once it has ended and
    /// been reaped, a signal through its handle reaches nobody, while its
    /// pid alone would reach whichever process takes that pid next.
    #[test]
    #[allow(clippy::disallowed_methods)] // a bystander process, not a worker
    fn a_held_process_is_signalled_and_once_reaped_nothing_is() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let held = Held::open(pid).expect("a live process is held");
        assert!(matches!(held, Held::Fd(_)), "this kernel has pidfds (5.3+)");
        assert!(held.signal(0), "alive");
        assert!(held.signal(libc::SIGKILL));
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(!held.signal(0), "reaped: the handle reaches nobody");
        assert!(!held.signal(libc::SIGKILL));
    }

    /// Numbers that name no single process or group are refused before
    /// `kill(2)` sees them: 0 (the caller's own group), 1 (init, and as a
    /// group the "every process" of -1), and anything above the largest
    /// pid, which as a signed pid would be another process's (2^32 - P is
    /// -P) or overflow (2^31). Signal 0 only asks, so a refusal that
    /// broke would signal nobody.
    #[test]
    fn numbers_that_name_no_single_process_are_never_signalled() {
        let me = std::process::id();
        assert!(signal_pid(me, 0) && signal_group(group_of(me).unwrap(), 0));
        let victim = (1u64 << 32) - u64::from(me);
        for n in [0, 1, PID_MAX_LIMIT + 1, 1 << 31, victim as u32, u32::MAX] {
            assert!(!signal_pid(n, 0), "signal_pid({n})");
            assert!(!signal_group(n, 0), "signal_group({n})");
            assert_eq!(group_of(n), None, "group_of({n})");
            assert!(Held::open(n).is_none(), "Held::open({n})");
        }
    }

    fn pipe_capacity(fd: &OwnedFd) -> usize {
        use std::os::fd::AsRawFd;
        // SAFETY: F_GETPIPE_SZ only reads the pipe's size.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) as usize }
    }

    /// A pipe grows to hold a large frame whole (a power of two, at most
    /// 1 MiB), not for a frame that fits; all pipes together grow by at most
    /// `PIPE_GROWTH_BUDGET`, and a pipe's growth comes back when it goes.
    #[test]
    fn pipes_grow_to_fit_large_frames_within_the_budget() {
        let (r, _w) = pipe().unwrap();
        let mut size = PipeSize::new();
        size.fit(&r.as_raw_fd(), 1000);
        assert_eq!(pipe_capacity(&r), 64 << 10);
        size.fit(&r.as_raw_fd(), 300_000);
        assert_eq!((size.capacity(), pipe_capacity(&r)), (512 << 10, 512 << 10));
        size.fit(&r.as_raw_fd(), 5 << 20);
        assert_eq!(pipe_capacity(&r), 1 << 20);
        drop(size);
        // The budget: 16 MiB of growth is 17 pipes grown to 1 MiB.
        let mut grown = Vec::new();
        loop {
            let (r, w) = pipe().unwrap();
            let mut size = PipeSize::new();
            size.fit(&r.as_raw_fd(), 1 << 20);
            let full = pipe_capacity(&r) == 1 << 20;
            grown.push((r, w, size));
            if !full {
                break;
            }
            assert!(grown.len() <= 17, "grew past the budget");
        }
        assert_eq!(grown.len(), 18);
        // One pipe goes, and its growth is there for the next.
        grown.swap_remove(0);
        let (r, _w, size) = grown.last_mut().unwrap();
        size.fit(&r.as_raw_fd(), 1 << 20);
        assert_eq!(pipe_capacity(r), 1 << 20);
    }

    #[test]
    fn a_seqpacket_pair_keeps_messages_whole_and_carries_descriptors() {
        let (a, b) = seqpacket_pair().unwrap();
        let (r, w) = pipe().unwrap();
        use std::os::fd::AsRawFd;
        send_with_fds(a.as_raw_fd(), b"one", &[r.as_raw_fd()]).unwrap();
        send_with_fds(a.as_raw_fd(), b"two", &[]).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(recv(b.as_raw_fd(), &mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"one");
        assert_eq!(recv(b.as_raw_fd(), &mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"two");
        drop(a);
        assert_eq!(recv(b.as_raw_fd(), &mut buf).unwrap(), 0, "end of file");
        drop((r, w));
    }
}
