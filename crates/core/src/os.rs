//! Signals and `/proc`: the small system calls the pool makes on its
//! processes. With `spawn.rs`, the only `unsafe` code in the workspace
//! (`kill`, `ioctl`), each a direct libc call with no memory involved but
//! the one integer `FIONREAD` writes.
#![allow(unsafe_code)]

/// Sends `signal` to a whole process group.
pub(crate) fn signal_group(pgid: u32, signal: libc::c_int) -> bool {
    // SAFETY: kill(2) with a negative pid signals a group; no memory involved.
    unsafe { libc::kill(-(pgid as libc::pid_t), signal) == 0 }
}

/// Sends `signal` to one process.
pub(crate) fn signal_pid(pid: u32, signal: libc::c_int) -> bool {
    // SAFETY: as above, for one process.
    unsafe { libc::kill(pid as libc::pid_t, signal) == 0 }
}

/// Bytes written to a pipe and not read yet, asked through either end
/// (`FIONREAD`); `None` where the system does not tell.
pub(crate) fn unread_in_pipe(fd: std::os::fd::RawFd) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which is valid.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    (r == 0 && n >= 0).then_some(n as usize)
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
