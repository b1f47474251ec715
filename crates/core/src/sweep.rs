//! Run records and the sweep: finding and killing what a crashed run left.
//!
//! Every pool writes a small record of its run in a per-user runtime
//! directory (`$SNAKEPIT_STATE_DIR`, else `$XDG_RUNTIME_DIR/snakepit`, else
//! `$TMPDIR/snakepit-<uid>`, `/tmp` for an unset `TMPDIR`): the pool's name
//! (its *instance*), its run id, the host's pid and start time, the host's
//! PID namespace and boot id, and each live worker's pid and start time. A
//! clean shutdown removes the record.
//!
//! The directory is treated as OpenSSH and systemd treat theirs: it is
//! created with mode 0700, and one that exists already is used only if it
//! is owned by this user, is not writable by anybody else, and no directory
//! above it lets another user swap it (each is owned by this user or root
//! and is writable by others only with the sticky bit). Otherwise the sweep
//! fails with an [`UnsafeStateDir`] error and a pool starts without its
//! record. Records are written to a temporary file with a random name
//! created with `O_EXCL`, then renamed into place, and read with
//! `O_NOFOLLOW`, only when they are regular files of ours of at most
//! [`RECORD_MAX_BYTES`]: a symlink, a FIFO or a huge file named like a
//! record is reported as unreadable and left alone.
//!
//! A record whose host is gone (no such pid, or a pid whose start time
//! differs: a reused pid) belongs to a run that crashed. A record written in
//! another PID namespace (a container sharing the directory with its host)
//! is never judged by its pid; one from an earlier boot, or (seen from the
//! initial PID namespace, where every process shows) from a namespace with
//! no process left, has nothing left alive. [`sweep`] kills the processes of a crashed run that are still
//! alive: a process is killed only if it carries the run's id in its
//! environment (`SNAKEPIT_RUN_ID`, which every worker and, unless they
//! clear their environment, the workers' own children inherit), runs as
//! this user (its real or effective uid: a sweep run by root does not take
//! another user's process for the run's, nor believe what its environment
//! says), *and* either it is a recorded worker with the recorded start
//! time, or it started after the run did. A reused pid or somebody else's
//! process, even one with the same command line or the run's id, is never
//! touched. The pool's own end (`kill_leftovers`) and a worker's
//! (`kill_escaped`) take only this user's processes too.
//!
//! A record can lie: a copy of a live run's record under another host pid
//! makes that run look dead. So a run is spared when anything shows it is
//! alive: another record of the same run id whose host is alive (or cannot
//! be judged from here), or a process of the run whose host is alive: the
//! host its environment names (`SNAKEPIT_HOST`: pid, start time, PID
//! namespace), or for a process without one, its first ancestor outside
//! the run if that is alive, is not init and is in the same session.
//!
//! Run ids are 128 random bits from the operating system; they are in the workers'
//! environment, which only their user (and root) can read, and not on their
//! command lines, which every user can read.
//!
//! A pool sweeps the records of its own instance when it starts (see
//! [`PoolConfig::sweep_on_start`](crate::PoolConfig::sweep_on_start));
//! `snakepit sweep` or [`sweep`] does it on demand for every instance.
//!
//! The layers that keep a crashed host from leaving anything behind in the
//! first place (the parent-death signal, the watchdog, process groups) are
//! in `spawn.rs`; the sweep is the last line, for what escaped them: a
//! worker's child that left its process group, or a host on a system
//! without the parent-death signal.
//!
//! Linux reads processes from `/proc`. Elsewhere the records are still
//! written, and [`sweep`] reports that it cannot inspect processes.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sync::Unpoisoned;
use serde::Serialize;

/// The largest run record [`sweep`] reads; a bigger file is not a record.
pub const RECORD_MAX_BYTES: u64 = 1 << 20;

/// The state directory is one another user could tamper with: [`sweep`]
/// refuses it (inside an [`io::Error`] of kind `PermissionDenied`; find it
/// with `err.get_ref()?.downcast_ref::<UnsafeStateDir>()`), and a pool
/// starts without its run record.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "unsafe state directory {}: {problem}; remove it, or set SNAKEPIT_STATE_DIR to a directory only you can write",
    dir.display()
)]
#[non_exhaustive]
pub struct UnsafeStateDir {
    /// The directory, as it was given.
    pub dir: PathBuf,
    /// What is wrong with it.
    pub problem: StateDirProblem,
}

/// Why a state directory is unsafe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateDirProblem {
    /// It is not a directory.
    #[error("it is not a directory")]
    NotADirectory,
    /// It, or a directory on its path, is a symbolic link that another
    /// user created (who may point it elsewhere at any time).
    #[error("{} is a symbolic link owned by uid {owner}", path.display())]
    ForeignSymlink {
        /// The link: the state directory itself or one above it, as given.
        path: PathBuf,
        /// The link's owner.
        owner: u32,
    },
    /// Another user owns it.
    #[error("it is owned by uid {owner}, not by this user (uid {uid})")]
    NotOurs {
        /// Its owner.
        owner: u32,
        /// This process's effective uid.
        uid: u32,
    },
    /// Others may create and replace files in it.
    #[error("it is writable by other users (mode {mode:o})")]
    Writable {
        /// Its permission bits.
        mode: u32,
    },
    /// A directory above it lets another user rename it away and put their
    /// own in its place.
    #[error("{} can be changed by other users (owner uid {owner}, mode {mode:o})", path.display())]
    UnsafeParent {
        /// The directory above.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
    },
}

/// What [`sweep`] looks at.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SweepOptions {
    /// Only records of this pool name; every instance when `None`.
    pub instance: Option<String>,
    /// The directory of run records; the default directory when `None`.
    pub state_dir: Option<PathBuf>,
    /// Report what would be killed, kill nothing, keep the records.
    pub dry_run: bool,
}

impl SweepOptions {
    /// Every instance, in the default directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only the records of pools named `name`.
    pub fn instance(mut self, name: impl Into<String>) -> Self {
        self.instance = Some(name.into());
        self
    }

    /// Records in `dir` instead of the default directory.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Kill nothing; only report.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
}

/// What [`sweep`] found and did.
#[derive(Debug, Clone, Default, Serialize)]
#[non_exhaustive]
pub struct SweepReport {
    /// The directory it read.
    #[serde(serialize_with = "lossy::path")]
    pub state_dir: PathBuf,
    /// Records of runs that are alive: left alone. A record whose host pid
    /// is gone counts here too when the run is seen alive otherwise (a copy
    /// of a live run's record).
    pub active_runs: usize,
    /// Records written in another PID namespace (a container sharing the
    /// directory, or its host seen from the container): their host cannot
    /// be checked from here, so they are left alone. (One whose namespace
    /// has no process left, seen from the initial PID namespace, is a stale
    /// run instead.)
    pub foreign_runs: usize,
    /// Records of runs whose host is gone. One from an earlier boot, or
    /// from a PID namespace with no process left, has nothing left to kill.
    pub stale_runs: Vec<StaleRun>,
    /// Record files that could not be read as records: left alone. One
    /// removed while the sweep ran (by another sweep, or by its pool's
    /// clean end) is not listed.
    #[serde(serialize_with = "lossy::paths")]
    pub unreadable: Vec<PathBuf>,
    /// Temporary files of records (`.<record>.<random>.tmp`) that a host
    /// died writing: removed (in a dry run, would be). One is removed with
    /// its crashed run's record; one without a record beside it when it
    /// reads as the record of a crashed run, or, cut short, when it is
    /// over a minute old (a live host renames its own within microseconds).
    #[serde(serialize_with = "lossy::paths")]
    pub removed_temporary: Vec<PathBuf>,
    /// Why processes were not inspected, when they were not (no `/proc`).
    pub note: Option<String>,
}

impl SweepReport {
    /// Processes killed (or, in a dry run, that would be), over every run.
    pub fn killed(&self) -> usize {
        self.stale_runs.iter().map(|r| r.killed.len()).sum()
    }
}

/// A run whose host died without shutting its pool down.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct StaleRun {
    /// The pool's name.
    pub instance: String,
    /// The run's id (`SNAKEPIT_RUN_ID`).
    pub run_id: String,
    /// The dead host's pid.
    pub host_pid: u32,
    /// The processes of the run that were still alive and were killed.
    pub killed: Vec<SweptProcess>,
}

/// A process the sweep killed.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct SweptProcess {
    /// Its pid.
    pub pid: u32,
    /// Its command line, arguments separated by spaces.
    pub command: String,
    /// Whether it was a recorded worker (otherwise a descendant of one).
    pub worker: bool,
}

/// Finds runs whose host died and kills what is left of them; removes their
/// records (unless it is a dry run).
///
/// A directory that does not exist has nothing to sweep. One that another
/// user could tamper with is refused with an [`UnsafeStateDir`] error.
pub fn sweep(options: &SweepOptions) -> io::Result<SweepReport> {
    let dir = match &options.state_dir {
        Some(d) => d.clone(),
        None => default_state_dir(),
    };
    let mut report = SweepReport {
        state_dir: dir.clone(),
        ..SweepReport::default()
    };
    match std::fs::symlink_metadata(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(e),
        Ok(_) => check_state_dir(&dir)?,
    }
    let entries = std::fs::read_dir(&dir)?;
    let here = Here::now();
    if let Some(why) = &here.no_proc {
        report.note = Some(format!("{why}: processes were not inspected"));
    }
    let uid = effective_uid();
    // Runs seen alive in any record, whatever its instance.
    let mut live_runs = HashSet::new();
    let mut stale = Vec::new();
    // Temporary files of records, with the record each is for.
    let mut temporary = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if let Some(record) = temporary_of(&path) {
            temporary.push((path, record));
            continue;
        }
        if path.extension().and_then(|e| e.to_str()) != Some("run") {
            continue;
        }
        let Some(record) = read_record(&path, uid) else {
            // One removed since the directory was listed (by another sweep,
            // or by its pool's clean end) is gone, not unreadable.
            if std::fs::symlink_metadata(&path).is_ok() {
                report.unreadable.push(path);
            }
            continue;
        };
        let ours = options
            .instance
            .as_ref()
            .is_none_or(|i| *i == record.instance);
        match here.judge(&record) {
            Verdict::Alive => {
                live_runs.insert(record.run_id.clone());
                report.active_runs += usize::from(ours);
            }
            Verdict::Foreign => {
                live_runs.insert(record.run_id.clone());
                report.foreign_runs += usize::from(ours);
            }
            Verdict::OtherBoot if ours => stale.push((path, record, false)),
            Verdict::Dead if ours => stale.push((path, record, true)),
            Verdict::OtherBoot | Verdict::Dead => {}
        }
    }
    // A record of a dead host for a run alive elsewhere is a copy.
    stale.retain(|(path, record, _)| {
        let copy = live_runs.contains(&record.run_id);
        if copy {
            tracing::warn!(record = %path.display(), run_id = %record.run_id, "a run record names a dead host, but its run is alive: left alone");
            report.active_runs += 1;
        }
        !copy
    });
    // Decided once the records to remove are known (on every way out).
    let temporaries = |report: &mut SweepReport, removed: &HashSet<PathBuf>| {
        for (tmp, record) in &temporary {
            let gone = if removed.contains(record) {
                true
            } else if std::fs::symlink_metadata(record).is_ok() {
                false // a record that stays: its host may still rename it
            } else {
                abandoned_temporary(tmp, uid, &here, &live_runs, options.instance.as_deref())
            };
            // A symlink goes as a link (its target is not touched); a
            // directory named like one is not removed, nor reported.
            if gone && (options.dry_run || std::fs::remove_file(tmp).is_ok()) {
                report.removed_temporary.push(tmp.clone());
            }
        }
    };
    if stale.is_empty() {
        temporaries(&mut report, &HashSet::new());
        return Ok(report);
    }
    // Only runs of this boot can have processes left.
    let by_run: HashMap<&str, usize> = stale
        .iter()
        .enumerate()
        .filter(|(_, (_, _, this_boot))| *this_boot)
        .map(|(i, (_, r, _))| (r.run_id.as_str(), i))
        .collect();
    let mut found: Vec<Vec<(SweptProcess, u64)>> = vec![Vec::new(); stale.len()];
    let mut hosted = vec![false; stale.len()];
    for pid in crate::os::all_pids() {
        if pid == std::process::id() {
            continue;
        }
        let Some(run_id) = run_id_of(pid) else {
            continue;
        };
        let Some(&i) = by_run.get(run_id.as_str()) else {
            continue;
        };
        // Another user's process is not the run's, whatever its
        // environment says (a run id read from a record's name in a
        // directory others may list): neither killed nor believed.
        if !runs_as(pid, uid).unwrap_or(false) {
            continue;
        }
        let record = &stale[i].1;
        let Some(start) = process_start(pid) else {
            continue;
        };
        let worker = record.workers.get(&pid) == Some(&start);
        if !worker && start < record.host_start {
            continue; // older than the run: not ours, whatever its environment says
        }
        if has_live_host(pid, &run_id) {
            hosted[i] = true;
        }
        found[i].push((
            SweptProcess {
                pid,
                command: crate::os::command_line(pid),
                worker,
            },
            start,
        ));
    }
    let mut removed = HashSet::new();
    // What it kills, held to be reaped if this process adopted it.
    let mut ended = Vec::new();
    for (((path, record, _), found), hosted) in stale.into_iter().zip(found).zip(hosted) {
        if hosted {
            tracing::warn!(record = %path.display(), run_id = %record.run_id, "a run record names a dead host, but the run's processes have a live one: left alone");
            report.active_runs += 1;
            continue;
        }
        let mut killed = Vec::with_capacity(found.len());
        for (p, start) in found {
            if !options.dry_run {
                // The pid may have been reused since it was read: held
                // first, then checked again, it is killed only if it is
                // still the process found.
                let Some(held) = crate::os::Held::open(p.pid) else {
                    continue;
                };
                if process_start(p.pid) != Some(start) {
                    continue;
                }
                // Our workers lead their own process groups: take the group.
                if p.worker && held.signal(0) {
                    crate::os::signal_group(p.pid, libc::SIGKILL);
                }
                if held.signal(libc::SIGKILL) {
                    ended.extend(held.into_fd());
                }
            }
            killed.push(p);
        }
        if !options.dry_run {
            let _ = std::fs::remove_file(&path);
        }
        removed.insert(path.clone());
        if !killed.is_empty() {
            tracing::warn!(
                instance = %record.instance,
                run_id = %record.run_id,
                killed = killed.len(),
                "swept the leftovers of a crashed run"
            );
        }
        report.stale_runs.push(StaleRun {
            instance: record.instance,
            run_id: record.run_id,
            host_pid: record.host_pid,
            killed,
        });
    }
    crate::os::reap_adopted_after_kill(ended);
    temporaries(&mut report, &removed);
    Ok(report)
}

/// The default directory of run records: `$SNAKEPIT_STATE_DIR` (a
/// relative one is taken from the working directory), else
/// `$XDG_RUNTIME_DIR/snakepit`, else `$TMPDIR/snakepit-<uid>`. A variable
/// set to nothing counts as unset, and so does a relative
/// `XDG_RUNTIME_DIR` or `TMPDIR` (the XDG specification says to ignore
/// one): the directory is always absolute, so that a sweep run elsewhere
/// finds the records.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = env_path("SNAKEPIT_STATE_DIR") {
        return std::path::absolute(&d).unwrap_or(d);
    }
    if let Some(d) = env_path("XDG_RUNTIME_DIR").filter(|d| d.is_absolute()) {
        return d.join("snakepit");
    }
    temp_dir_of_user()
}

/// The variable's value as a path; `None` when unset or empty.
fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The directory for temporary files: `$TMPDIR`, or `/tmp` when it is
/// unset, empty or relative (`std::env::temp_dir` would give `""` or a
/// path below the working directory).
pub fn temp_root() -> PathBuf {
    env_path("TMPDIR")
        .filter(|d| d.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// `$TMPDIR/snakepit-<uid>` ([`temp_root`]).
fn temp_dir_of_user() -> PathBuf {
    temp_root().join(format!("snakepit-{}", effective_uid()))
}

/// `$TMPDIR/snakepit-<uid>` (`/tmp` when `TMPDIR` is unset, empty or
/// relative), the default state directory of a process without `XDG_RUNTIME_DIR`: made (mode
/// 0700) when missing, then checked as the state directory is. A directory
/// another user could have planted or could change (not this user's,
/// writable by others, another user's symbolic link, below a directory
/// another user may write) is refused with an `io::Error` of kind
/// `PermissionDenied` that says which and why. For files of this user that
/// no other may plant, such as the bundled bridges' cache of a process
/// without `HOME` (`snakepit-adapters`).
pub fn private_temp_dir() -> io::Result<PathBuf> {
    let dir = temp_dir_of_user();
    ensure_state_dir(&dir)?;
    Ok(dir)
}

/// A new run id: 128 random bits from the operating system, in lowercase
/// hex.
pub(crate) fn new_run_id() -> String {
    hex(&random_bytes::<16>())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Random bytes from `/dev/urandom`; should it be unreadable (a chroot
/// without `/dev`), from the standard library's randomly keyed hasher,
/// which the operating system's generator seeds as well.
fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut out))
        .is_ok()
    {
        return out;
    }
    use std::hash::{BuildHasher, Hasher};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(i);
        h.write_u128(now);
        h.write_u32(std::process::id());
        chunk.copy_from_slice(&h.finish().to_le_bytes()[..chunk.len()]);
    }
    out
}

/// This process's effective uid: the owner of the files it creates.
fn effective_uid() -> u32 {
    let from_proc = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| status_uids(&s).nth(1));
    if let Some(uid) = from_proc {
        return uid;
    }
    // No /proc: the owner of a file this process creates.
    let probe = temp_root().join(format!(".snakepit-uid-{}", hex(&random_bytes::<8>())));
    let uid = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
        .and_then(|f| f.metadata())
        .map_or(u32::MAX, |m| m.uid());
    let _ = std::fs::remove_file(&probe);
    uid
}

fn unsafe_dir(dir: &Path, problem: StateDirProblem) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        UnsafeStateDir {
            dir: dir.to_owned(),
            problem,
        },
    )
}

/// Creates `dir` (mode 0700) if it does not exist, then checks it.
fn ensure_state_dir(dir: &Path) -> io::Result<()> {
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        if std::fs::symlink_metadata(dir).is_err() {
            return Err(e);
        }
    }
    check_state_dir(dir)
}

/// Refuses a state directory that another user could tamper with: not ours,
/// writable by others, another user's symlink, or below a directory that
/// lets another user replace it.
fn check_state_dir(dir: &Path) -> io::Result<()> {
    let uid = effective_uid();
    let absolute = if dir.is_absolute() {
        dir.to_owned()
    } else {
        std::env::current_dir()?.join(dir)
    };
    // Each symbolic link on the path as given, not only the last one: any
    // of them, swapped, would send the records elsewhere.
    let mut above: Vec<PathBuf> = Vec::new();
    let mut prefix = PathBuf::new();
    for part in absolute.components() {
        prefix.push(part);
        if !matches!(part, std::path::Component::Normal(_)) {
            continue;
        }
        let link = std::fs::symlink_metadata(&prefix)?;
        if !link.file_type().is_symlink() {
            continue;
        }
        if link.uid() != uid && link.uid() != 0 {
            return Err(unsafe_dir(
                dir,
                StateDirProblem::ForeignSymlink {
                    path: prefix,
                    owner: link.uid(),
                },
            ));
        }
        // The link itself could be swapped by whoever may write where it is.
        if let Some(parent) = prefix.parent() {
            above.extend(
                std::fs::canonicalize(parent)?
                    .ancestors()
                    .map(Path::to_owned),
            );
        }
    }
    let real = std::fs::canonicalize(dir)?;
    let meta = std::fs::metadata(&real)?;
    if !meta.is_dir() {
        return Err(unsafe_dir(dir, StateDirProblem::NotADirectory));
    }
    if meta.uid() != uid {
        return Err(unsafe_dir(
            dir,
            StateDirProblem::NotOurs {
                owner: meta.uid(),
                uid,
            },
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_dir(
            dir,
            StateDirProblem::Writable {
                mode: meta.mode() & 0o7777,
            },
        ));
    }
    above.extend(real.ancestors().skip(1).map(Path::to_owned));
    above.sort();
    above.dedup();
    for path in above {
        let m = std::fs::metadata(&path)?;
        let others_write = m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0;
        if (m.uid() != uid && m.uid() != 0) || others_write {
            return Err(unsafe_dir(
                dir,
                StateDirProblem::UnsafeParent {
                    path,
                    owner: m.uid(),
                    mode: m.mode() & 0o7777,
                },
            ));
        }
    }
    Ok(())
}

/// The record a temporary file of [`RunRecord::update`] is for
/// (`<dir>/.<record>.<16 hex digits>.tmp`); `None` for any other name.
fn temporary_of(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let inner = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (record, random) = inner.rsplit_once('.')?;
    let hex = random.len() == 16 && random.bytes().all(|b| b.is_ascii_hexdigit());
    (hex && record.ends_with(".run") && !record.starts_with('.'))
        .then(|| path.with_file_name(record))
}

/// Whether a temporary record file with no record beside it was left by a
/// crashed write: it reads as the record of a run whose host is gone (and
/// whose run is not alive elsewhere), or, cut short, it is a regular file
/// of ours over a minute old. Anything else is left alone.
fn abandoned_temporary(
    tmp: &Path,
    uid: u32,
    here: &Here,
    live_runs: &HashSet<String>,
    instance: Option<&str>,
) -> bool {
    if let Some(record) = read_record(tmp, uid) {
        let dead = matches!(here.judge(&record), Verdict::Dead | Verdict::OtherBoot);
        return dead
            && !live_runs.contains(&record.run_id)
            && instance.is_none_or(|i| i == record.instance);
    }
    let Ok(meta) = std::fs::symlink_metadata(tmp) else {
        return false;
    };
    let old = meta
        .modified()
        .ok()
        .and_then(|m| m.elapsed().ok())
        .is_some_and(|age| age >= Duration::from_secs(60));
    meta.is_file() && meta.uid() == uid && old && instance.is_none()
}

/// Reads a record without following a symlink, and only if it is a regular
/// file of ours no larger than [`RECORD_MAX_BYTES`] (`O_NONBLOCK`: opening
/// a FIFO does not wait for a writer).
fn read_record(path: &Path, uid: u32) -> Option<Record> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.uid() != uid || meta.len() > RECORD_MAX_BYTES {
        return None;
    }
    let mut text = String::new();
    file.take(RECORD_MAX_BYTES + 1)
        .read_to_string(&mut text)
        .ok()?;
    if text.len() as u64 > RECORD_MAX_BYTES {
        return None;
    }
    Record::parse(&text)
}

/// Where the sweep runs: what a record's host is judged against.
struct Here {
    pid_namespace: Option<(u64, u64)>,
    boot_id: Option<String>,
    /// Why processes cannot be inspected, if they cannot.
    no_proc: Option<&'static str>,
    /// The PID namespaces that have a process, looked up for the first
    /// record of another namespace; `None` when that cannot be known.
    live_namespaces: std::cell::OnceCell<Option<HashSet<(u64, u64)>>>,
}

/// The inode of the initial PID namespace (`PROC_PID_INIT_INO` in the
/// kernel's `include/linux/proc_ns.h`), the same on every boot: only from
/// there does `/proc` show every process, whatever its namespace.
const INIT_PID_NAMESPACE_INODE: u64 = 0xEFFF_FFFC;

enum Verdict {
    /// The host is alive (or processes cannot be inspected here).
    Alive,
    /// Written in another PID namespace: its pid means nothing here.
    Foreign,
    /// Written in an earlier boot, or in a PID namespace that has no
    /// process left: everything it started is gone.
    OtherBoot,
    /// Its host is gone.
    Dead,
}

impl Here {
    fn now() -> Here {
        let no_proc = if !Path::new("/proc/self/stat").exists() {
            Some("no /proc on this system")
        } else if std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str()?.parse::<u32>().ok())
            != Some(std::process::id())
        {
            // /proc shows another PID namespace's pids.
            Some("the /proc mounted here is not this process's PID namespace")
        } else {
            None
        };
        Here {
            pid_namespace: pid_namespace(),
            boot_id: boot_id(),
            no_proc,
            live_namespaces: std::cell::OnceCell::new(),
        }
    }

    /// The PID namespaces with a process in them, when this process sees
    /// them all: it runs in the initial PID namespace, and the namespace of
    /// each process of this user could be read (another user's process
    /// cannot be a run's: a record is this user's, and so is its host).
    fn live_namespaces(&self) -> Option<&HashSet<(u64, u64)>> {
        let look = || {
            let initial =
                self.pid_namespace.map(|(_, inode)| inode) == Some(INIT_PID_NAMESPACE_INODE);
            if self.no_proc.is_some() || !initial {
                return None;
            }
            let uid = effective_uid();
            let mut live = HashSet::new();
            for entry in std::fs::read_dir("/proc").ok()?.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                match std::fs::metadata(entry.path().join("ns/pid")) {
                    // A zombie runs nothing, and waits for a parent that
                    // may never reap it (a namespace's first process, when
                    // it dies, has the rest killed).
                    Ok(_) if Stat::read(pid).is_ok_and(|s| s.is_none()) => {}
                    Ok(m) => {
                        live.insert((m.dev(), m.ino()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    // Ended meanwhile, or another user's; or the first
                    // process, of this initial namespace (one that may
                    // not be inspected, as a sandbox's init).
                    Err(_) if pid == 1 || !matches!(runs_as(pid, uid), Ok(true)) => {}
                    Err(_) => return None,
                }
            }
            Some(live)
        };
        self.live_namespaces.get_or_init(look).as_ref()
    }

    fn judge(&self, record: &Record) -> Verdict {
        if record.boot_id != self.boot_id {
            return match (&record.boot_id, &self.boot_id) {
                (Some(_), Some(_)) => Verdict::OtherBoot,
                _ => Verdict::Foreign, // an older record, or no boot id here
            };
        }
        if record.pid_namespace != self.pid_namespace {
            // A namespace ends with its last process: whatever the run
            // started in it has ended too.
            let gone = record.pid_namespace.is_some_and(|ns| {
                self.boot_id.is_some()
                    && self
                        .live_namespaces()
                        .is_some_and(|live| !live.contains(&ns))
            });
            return if gone {
                Verdict::OtherBoot
            } else {
                Verdict::Foreign
            };
        }
        if self.no_proc.is_some() || process_start(record.host_pid) == Some(record.host_start) {
            Verdict::Alive
        } else {
            Verdict::Dead
        }
    }
}

/// `(device, inode)` of this process's PID namespace: equal for two
/// processes in the same namespace.
fn pid_namespace() -> Option<(u64, u64)> {
    let m = std::fs::metadata("/proc/self/ns/pid").ok()?;
    Some((m.dev(), m.ino()))
}

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    Some(id.trim().to_owned()).filter(|id| !id.is_empty())
}

/// One run's record, as written to `<dir>/<instance>.<host pid>.<run id>.run`.
struct Record {
    instance: String,
    run_id: String,
    host_pid: u32,
    host_start: u64,
    pid_namespace: Option<(u64, u64)>,
    boot_id: Option<String>,
    /// pid -> start time
    workers: HashMap<u32, u64>,
}

impl Record {
    fn render(&self) -> String {
        let mut s = format!(
            "snakepit-run 1\ninstance {}\nrun_id {}\nhost {} {}\n",
            self.instance.replace('\n', " "),
            self.run_id,
            self.host_pid,
            self.host_start
        );
        if let Some((dev, ino)) = self.pid_namespace {
            s.push_str(&format!("pidns {dev} {ino}\n"));
        }
        if let Some(boot) = &self.boot_id {
            s.push_str(&format!("boot {boot}\n"));
        }
        for (pid, start) in &self.workers {
            s.push_str(&format!("worker {pid} {start}\n"));
        }
        s
    }

    fn parse(text: &str) -> Option<Record> {
        let mut lines = text.lines();
        if lines.next()? != "snakepit-run 1" {
            return None;
        }
        let mut r = Record {
            instance: String::new(),
            run_id: String::new(),
            host_pid: 0,
            host_start: 0,
            pid_namespace: None,
            boot_id: None,
            workers: HashMap::new(),
        };
        for line in lines {
            let (key, rest) = line.split_once(' ')?;
            match key {
                "instance" => r.instance = rest.to_owned(),
                "run_id" => r.run_id = rest.to_owned(),
                "boot" => r.boot_id = Some(rest.to_owned()),
                "host" | "worker" | "pidns" => {
                    let (a, b) = rest.split_once(' ')?;
                    match key {
                        "host" => (r.host_pid, r.host_start) = (a.parse().ok()?, b.parse().ok()?),
                        "pidns" => r.pid_namespace = Some((a.parse().ok()?, b.parse().ok()?)),
                        _ => {
                            r.workers.insert(a.parse().ok()?, b.parse().ok()?);
                        }
                    }
                }
                _ => {}
            }
        }
        (!r.run_id.is_empty() && r.host_pid != 0).then_some(r)
    }
}

/// This run's record file, kept in step with the pool's live workers.
pub(crate) struct RunRecord {
    path: PathBuf,
    record: Mutex<Record>,
    /// The run ended cleanly and its file is gone: a worker or template
    /// reaped after that must not write it again.
    finished: std::sync::atomic::AtomicBool,
}

impl RunRecord {
    /// Writes the record of a new run, creating the state directory
    /// (mode 0700) if need be; fails with [`UnsafeStateDir`] if the
    /// directory is not safe to use.
    ///
    /// A relative `dir` is taken from the working directory now, once: the
    /// record stays where it was written (and is removed from there at the
    /// end) if the host changes its working directory later.
    pub(crate) fn create(dir: &Path, instance: &str, run_id: &str) -> io::Result<RunRecord> {
        let dir = &std::path::absolute(dir)?;
        ensure_state_dir(dir)?;
        let safe: String = instance
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let host_pid = std::process::id();
        let path = dir.join(format!("{safe}.{host_pid}.{run_id}.run"));
        let record = Record {
            instance: instance.to_owned(),
            run_id: run_id.to_owned(),
            host_pid,
            host_start: process_start(host_pid).unwrap_or(0),
            pid_namespace: pid_namespace(),
            boot_id: boot_id(),
            workers: HashMap::new(),
        };
        let this = RunRecord {
            path,
            record: Mutex::new(record),
            finished: std::sync::atomic::AtomicBool::new(false),
        };
        this.update(|_| {})?;
        Ok(this)
    }

    /// Changes the record and writes it: to a new file with a random name
    /// (`O_EXCL`, so nothing planted is followed or reused), then renamed
    /// over the record, which replaces whatever is there without following
    /// it. The lock is held throughout so that writes land in order.
    ///
    /// The directory is checked again before each write, as when the run
    /// started: one removed since and made again by another user (a
    /// temporary-file cleaner, then somebody else's `mkdir`) gets nothing,
    /// and the write fails with [`UnsafeStateDir`].
    fn update(&self, change: impl FnOnce(&mut Record)) -> io::Result<()> {
        let mut record = self.record.locked();
        if self.finished.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        change(&mut record);
        if let Some(dir) = self.path.parent() {
            check_state_dir(dir)?;
        }
        let text = record.render();
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut tries = 0;
        let (tmp, mut file) = loop {
            let tmp = self
                .path
                .with_file_name(format!(".{name}.{}.tmp", hex(&random_bytes::<8>())));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
            {
                Ok(file) => break (tmp, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 8 => tries += 1,
                Err(e) => return Err(e),
            }
        };
        let written = file
            .write_all(text.as_bytes())
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Records a new worker.
    pub(crate) fn add(&self, pid: u32) {
        let start = process_start(pid).unwrap_or(0);
        let written = self.update(|r| {
            r.workers.insert(pid, start);
        });
        not_written(written);
    }

    /// Forgets a worker that was reaped.
    pub(crate) fn remove(&self, pid: u32) {
        let written = self.update(|r| {
            r.workers.remove(&pid);
        });
        not_written(written);
    }

    /// The run ended cleanly: no record remains.
    pub(crate) fn finish(&self) {
        let _record = self.record.locked();
        self.finished
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Logs why a record update was not written: a warning when the state
/// directory became unsafe since the run started, otherwise (a full disk,
/// say) at debug level.
fn not_written(written: io::Result<()>) {
    let Err(e) = written else { return };
    if e.get_ref()
        .is_some_and(|inner| inner.is::<UnsafeStateDir>())
    {
        tracing::warn!(error = %e, "the run record is no longer written");
    } else {
        tracing::debug!(error = %e, "cannot update the run record");
    }
}

/// Whether `pid`, a process of run `run_id`, has a live host: the one its
/// environment names (`SNAKEPIT_HOST`), or, without one, its first
/// ancestor that is not of the run, if that is alive, is not init (pid 1,
/// or 0: outside this namespace) and shares the session of the run's
/// process below it.
fn has_live_host(pid: u32, run_id: &str) -> bool {
    // The host named in its environment: alive if a process of that pid
    // with that start time runs in this PID namespace (in another, it
    // cannot be judged from here, and is taken as alive).
    if let Some((host, start, ns)) = host_of(pid) {
        if pid_namespace() != Some(ns) {
            return true;
        }
        return process_start(host) == Some(start);
    }
    // No host in its environment (started by an older version): its
    // ancestry.
    let mut below = pid;
    for _ in 0..64 {
        let Some(stat) = Stat::of(below) else {
            return false;
        };
        let parent = stat.ppid;
        if parent <= 1 {
            return false;
        }
        if run_id_of(parent).as_deref() == Some(run_id) {
            below = parent;
            continue;
        }
        return Stat::of(parent).is_some_and(|p| p.session == stat.session);
    }
    false
}

/// Kills what is left of a run once its workers are stopped or killed:
/// processes that carry its run id (`SNAKEPIT_RUN_ID`) but left every
/// process group the pool signals, such as a worker's child that called
/// `setsid`, or a worker its template reported under another pid. The
/// pool's own processes (`own`: its workers, its template) are left to
/// their stop sequence; any other process of the run goes, a child of this
/// host included (a host that adopts orphans, as a container's first
/// process does, becomes the parent of such a child once its worker has
/// gone). A clean end leaves no run record for a later sweep, so this is
/// the last chance. How many it killed.
/// `None` when it could not look (`/proc` unreadable, the host out of
/// descriptors): what escaped may still run.
pub(crate) fn kill_leftovers(run_id: &str, own: &[u32]) -> Option<usize> {
    let killed = kill_run_processes(run_id, None, own)?;
    if killed > 0 {
        tracing::warn!(
            run_id,
            killed,
            "killed processes of the pool's workers that had left their process groups"
        );
    }
    Some(killed)
}

/// A pool's end: [`kill_leftovers`], then the run record's removal. When
/// the look could not see every process (the host out of descriptors), a
/// thread looks again ([`look_until_seen`]) and removes the record once a
/// look succeeds; until then the record stays, so that a later sweep still
/// finds what escaped.
pub(crate) fn kill_leftovers_and_finish(run_id: &str, own: &[u32], record: Option<Arc<RunRecord>>) {
    let (run_id, own) = (run_id.to_owned(), own.to_vec());
    let look = move || kill_leftovers(&run_id, &own);
    let finish = move |seen: bool| match (seen, record) {
        (true, Some(r)) => r.finish(),
        (true, None) => {}
        (false, _) => tracing::warn!("{BLIND}"),
    };
    if look().is_some() {
        return finish(true);
    }
    let again = std::thread::Builder::new()
        .name("snakepit-leftovers".into())
        .spawn(move || finish(look_until_seen(look, || false)));
    if again.is_err() {
        tracing::warn!("{BLIND}");
    }
}

const BLIND: &str = "cannot look through /proc for what the pool's workers left behind; the run record stays for the next sweep";

/// Runs `look` (a [`kill_leftovers`] or [`kill_escaped`]) every half second,
/// blocking, until it could see every process, for up to a minute or until
/// `stop`; whether it could.
pub(crate) fn look_until_seen(look: impl Fn() -> Option<usize>, stop: impl Fn() -> bool) -> bool {
    for _ in 0..120 {
        std::thread::sleep(Duration::from_millis(500));
        if stop() {
            return false;
        }
        if look().is_some() {
            return true;
        }
    }
    false
}

/// Kills what one ended worker left outside its process group: processes
/// of run `run_id` whose `SNAKEPIT_WORKER_ID` is `worker_id` (its children
/// that called `setsid`, and theirs), but `worker_pid` itself. A worker's
/// id names one process of the run (its slot and generation), so its
/// replacement and the other workers are never hit. How many it killed.
/// `None` when it could not look, as [`kill_leftovers`].
pub(crate) fn kill_escaped(run_id: &str, worker_id: &str, worker_pid: u32) -> Option<usize> {
    let killed = kill_run_processes(run_id, Some(worker_id), &[worker_pid])?;
    if killed > 0 {
        tracing::warn!(
            worker = worker_id,
            killed,
            "killed processes the ended worker had left outside its process group"
        );
    }
    Some(killed)
}

/// Kills (SIGKILL, with its group when it leads one) every process started
/// after this host whose environment carries run id `run_id` and, if
/// given, worker id `worker`; but this process and `own` (ended or
/// ending: their groups were killed). Those this process adopted (a
/// subreaper host), and the members of `own`'s groups it adopted, are
/// reaped once they end ([`crate::os::reap_adopted_after_kill`]). How
/// many it killed; `None`
/// when it could not look at every process (no `/proc`, or the host out of
/// descriptors: a process it could not read may be one of them).
fn kill_run_processes(run_id: &str, worker: Option<&str>, own: &[u32]) -> Option<usize> {
    let me = std::process::id();
    let uid = effective_uid();
    let since = process_start(me)?; // no /proc, or no descriptor to read it
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let (mut killed, mut ended) = (0, Vec::new());
    // A read that failed for want of descriptors, not because the process
    // had ended (or is another user's).
    let mut blind = false;
    let mut read = |r: io::Result<Option<Stat>>| match r {
        Ok(stat) => stat,
        Err(e) => {
            blind |= matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
            None
        }
    };
    // In a host that adopts orphans, the members of `own`'s process
    // groups, and of the groups killed here (killed with them, zombies
    // maybe, whose environment reads empty), are the host's children once
    // their parents are gone: held, not signalled, to be reaped. A group's
    // id is nobody else's pid while a member is left.
    let adopts = crate::os::adopts_orphans();
    let mut groups = if adopts { own.to_vec() } else { Vec::new() };
    for pid in pids {
        if pid == me || own.contains(&pid) {
            continue;
        }
        let member = |pid| {
            !groups.is_empty() && crate::os::group_of(pid).is_some_and(|g| groups.contains(&g))
        };
        if member(pid) {
            ended.extend(
                crate::os::Held::open(pid)
                    .filter(|_| member(pid))
                    .and_then(|h| h.into_fd()),
            );
            continue;
        }
        // Most processes started before this host: one read of their
        // `stat` rules them out, without opening them or their environment.
        if read(Stat::read(pid)).is_none_or(|s| s.start < since) {
            continue;
        }
        // Held before it is checked: the kill reaches the process checked,
        // or nobody (its pid may be another's by then).
        let Some(held) = crate::os::Held::open(pid) else {
            continue;
        };
        let env = match environ_whole(pid) {
            Ok(env) => env,
            Err(e) => {
                read(Err(e));
                continue;
            }
        };
        if var_in(&env, b"SNAKEPIT_RUN_ID=") != Some(run_id)
            || worker.is_some_and(|w| var_in(&env, b"SNAKEPIT_WORKER_ID=") != Some(w))
        {
            continue;
        }
        match runs_as(pid, uid) {
            Ok(true) => {}
            // Another user's process, whatever its environment says.
            Ok(false) => continue,
            Err(e) => {
                read(Err(e));
                continue;
            }
        }
        let Some(stat) = Stat::of(pid) else {
            continue;
        };
        if stat.start < since {
            continue;
        }
        // Killed at once: what it would run meanwhile slows the look at
        // the others (a process caught in the middle of an `exec` is read
        // again until it is out of it). Held on to, to be reaped.
        // Its group only while it is still there to lead it (a live
        // leader's pid, and so its group's id, is nobody else's).
        let group =
            stat.pgrp == pid && held.signal(0) && crate::os::signal_group(pid, libc::SIGKILL);
        if held.signal(libc::SIGKILL) || group {
            killed += 1;
            ended.extend(held.into_fd());
        }
        if group && adopts {
            groups.push(pid);
        }
    }
    crate::os::reap_adopted_after_kill(ended);
    (!blind).then_some(killed)
}

/// Whether process `pid` runs as user `uid` (its real or effective uid,
/// `/proc/<pid>/status`): a process of the run runs as the user whose pool
/// started it. Another user's process is never the run's, even with the
/// run's id in its environment (a run id is secret, but a state directory
/// that others may list shows it in its records' names). `false` when it
/// cannot be known (no such line); the error of a read that failed (the
/// process has ended, or the host is out of descriptors).
fn runs_as(pid: u32, uid: u32) -> io::Result<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let runs = status_uids(&status).take(2).any(|id| id == uid);
    Ok(runs)
}

/// The uids of a `/proc/<pid>/status` text's `Uid:` line, in its order:
/// real, effective, saved, filesystem (none if the line is missing; a
/// field that is no number ends them).
fn status_uids(status: &str) -> impl Iterator<Item = u32> + '_ {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .into_iter()
        .flat_map(str::split_whitespace)
        .map_while(|id| id.parse().ok())
}

/// The flag of a kernel thread in `/proc/<pid>/stat` field 9
/// (`include/linux/sched.h`).
const PF_KTHREAD: u32 = 0x0020_0000;

/// The fields of `/proc/<pid>/stat` the sweep reads.
struct Stat {
    ppid: u32,
    pgrp: u32,
    session: u32,
    /// Clock ticks after boot.
    start: u64,
    /// `PF_KTHREAD` in its flags: a kernel thread (no environment, never
    /// a leftover).
    kernel_thread: bool,
    /// Where its environment lies on its stack (`env_start`, `env_end`);
    /// `None` on a kernel before 3.5. Both are 0 while an `exec` has not
    /// yet set the new stack up, and to a reader not allowed to see them.
    environ: Option<(u64, u64)>,
}

impl Stat {
    /// `None` if there is no such process, or it is a zombie.
    fn of(pid: u32) -> Option<Stat> {
        Stat::read(pid).ok().flatten()
    }

    /// As [`Stat::of`], with the error of a read that failed.
    fn read(pid: u32) -> io::Result<Option<Stat>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        Ok(Stat::parse(&stat))
    }

    fn parse(stat: &str) -> Option<Stat> {
        // The command name (field 2) may hold spaces and parentheses: skip
        // to the last ')'. `rest` starts at field 3 (state).
        let rest = stat.get(stat.rfind(')')? + 2..)?;
        let fields: Vec<&str> = rest.split(' ').collect();
        if *fields.first()? == "Z" {
            return None;
        }
        Some(Stat {
            ppid: fields.get(1)?.parse().ok()?,
            pgrp: fields.get(2)?.parse().ok()?,
            session: fields.get(3)?.parse().ok()?,
            start: fields.get(19)?.parse().ok()?,
            kernel_thread: fields.get(6)?.parse::<u32>().ok()? & PF_KTHREAD != 0,
            environ: fields
                .get(47)
                .zip(fields.get(48))
                .and_then(|(s, e)| Some((s.parse().ok()?, e.trim_end().parse().ok()?))),
        })
    }
}

/// A process's start time, in clock ticks after boot (`/proc/<pid>/stat`,
/// field 22); `None` if there is no such process (or it is a zombie).
pub(crate) fn process_start(pid: u32) -> Option<u64> {
    Stat::of(pid).map(|s| s.start)
}

/// `SNAKEPIT_HOST` for this process's workers: its pid, its start time
/// and its PID namespace (`pid:start:dev:inode`).
///
/// Kept once read whole; a read that failed (the host out of descriptors)
/// is not kept, so the next worker's start reads again rather than every
/// later worker naming a start time of 0.
pub(crate) fn host_token() -> String {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(token) = TOKEN.get() {
        return token.clone();
    }
    let me = std::process::id();
    let (start, namespace) = (process_start(me), pid_namespace());
    let token = format!(
        "{me}:{}:{}:{}",
        start.unwrap_or(0),
        namespace.map_or(0, |n| n.0),
        namespace.map_or(0, |n| n.1)
    );
    if start.is_some() && namespace.is_some() {
        let _ = TOKEN.set(token.clone());
    }
    token
}

/// The host in `pid`'s environment (`SNAKEPIT_HOST`, see [`host_token`]):
/// its pid, start time and PID namespace.
fn host_of(pid: u32) -> Option<(u32, u64, (u64, u64))> {
    let value = env_var(pid, b"SNAKEPIT_HOST=")?;
    let mut parts = value.split(':');
    let host = parts.next()?.parse().ok()?;
    let start = parts.next()?.parse().ok()?;
    let dev = parts.next()?.parse().ok()?;
    let ino = parts.next()?.parse().ok()?;
    if parts.next().is_some() || start == 0 {
        return None;
    }
    Some((host, start, (dev, ino)))
}

fn run_id_of(pid: u32) -> Option<String> {
    env_var(pid, b"SNAKEPIT_RUN_ID=")
}

/// The value of the variable `key` (its name and `=`) in `pid`'s
/// environment, if it is there and UTF-8.
fn env_var(pid: u32, key: &[u8]) -> Option<String> {
    var_in(&environ(pid)?, key).map(str::to_owned)
}

/// `pid`'s environment as it was given to it: `NAME=value` entries, each
/// ended by a NUL.
///
/// A process in the middle of an `exec` reads wrong for a moment: empty
/// (the kernel has put in the new image but not yet its stack), or cut
/// short (the old image went away under the read). A process that
/// re-executes itself in a loop read so about once in 80 reads on this
/// machine. A leftover of a crashed run read so would be spared, its
/// record removed, and nothing would ever sweep it again; a worker's
/// escaped child read so at the worker's end ([`kill_escaped`]) or at the
/// pool's ([`kill_leftovers`]) would outlive it. A read is believed only
/// when the process's stack addresses of its environment
/// (`/proc/<pid>/stat` fields 50 and 51) were the same before and after it
/// and span exactly what was read; an empty one only when it is so twice
/// in a row. Otherwise it is read again, a millisecond later, up to 20
/// times. Kernel threads have no environment at all.
fn environ(pid: u32) -> Option<Vec<u8>> {
    environ_whole(pid).ok()
}

/// [`environ`], with the error of a read that failed (a process that ended
/// or is a zombie reads as `NotFound`).
fn environ_whole(pid: u32) -> io::Result<Vec<u8>> {
    const READS: usize = 20;
    let path = format!("/proc/{pid}/environ");
    let stat = |pid| Stat::read(pid)?.ok_or_else(|| io::Error::from(io::ErrorKind::NotFound));
    let mut last = Vec::new();
    let mut empty_seen = false;
    for _ in 0..READS {
        let before = stat(pid)?;
        if before.kernel_thread {
            return Ok(Vec::new());
        }
        let env = std::fs::read(&path)?;
        let after = stat(pid)?;
        let settled = match before.environ {
            // A kernel before 3.5 does not show them: the read is all
            // there is to go on.
            None => true,
            Some((start, end)) => {
                end != 0
                    && (before.start, before.environ) == (after.start, after.environ)
                    && end.checked_sub(start) == Some(env.len() as u64)
            }
        };
        if settled && (!env.is_empty() || std::mem::replace(&mut empty_seen, true)) {
            return Ok(env);
        }
        if !settled {
            empty_seen = false;
        }
        last = env;
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(last)
}

/// The value of `key` (a name and `=`) in `env`, if it is there and UTF-8.
fn var_in<'e>(env: &'e [u8], key: &[u8]) -> Option<&'e str> {
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(key))
        .and_then(|v| std::str::from_utf8(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_thread_is_told_by_its_flags() {
        let kthreadd = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 22 0 0 18446744073709551615 0";
        let cat = "4869 (cat) R 4865 4865 4114 0 -1 4194304 98 0 0 0 0 0 0 0 20 0 1 0 2458057 3133440 363";
        assert!(Stat::parse(kthreadd).unwrap().kernel_thread);
        let cat = Stat::parse(cat).unwrap();
        assert!(!cat.kernel_thread);
        assert_eq!((cat.ppid, cat.session, cat.start), (4865, 4114, 2458057));
        assert!(!Stat::of(std::process::id()).unwrap().kernel_thread);
        assert_eq!(cat.environ, None, "a kernel before 3.5 shows no addresses");
        let settled = "6027 (sh) R 6023 6027 6027 0 -1 4194304 350 0 0 0 0 0 0 0 20 0 1 0 2466606 524288 0 18446744073709551615 94267370262528 94267370339257 140721888830272 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 94267370368560 94267370373696 94268089925632 140721888838245 140721888838301 140721888838301 140721888841712 0\n";
        let in_exec = "6027 (sh) R 6023 6027 6027 0 -1 4194304 542 0 0 0 0 0 0 0 20 0 1 0 2466606 499712 0 18446744073709551615 0 0 140731754046053 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 140731754046053 0 0 0 0\n";
        let settled = Stat::parse(settled).unwrap();
        assert_eq!(settled.environ, Some((140721888838301, 140721888841712)));
        assert_eq!(Stat::parse(in_exec).unwrap().environ, Some((0, 0)));
        let mine = environ(std::process::id()).unwrap();
        assert!(var_in(&mine, b"PATH=").is_some() || std::env::var_os("PATH").is_none());
    }

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let mut r = Record {
            instance: "my pool".into(),
            run_id: "abc123".into(),
            host_pid: 42,
            host_start: 7,
            pid_namespace: Some((4, 4026531836)),
            boot_id: Some("42521340-9aa5-440a-be8c-8b848f66718c".into()),
            workers: HashMap::new(),
        };
        r.workers.insert(100, 9);
        let back = Record::parse(&r.render()).unwrap();
        assert_eq!(back.pid_namespace, r.pid_namespace);
        assert_eq!(back.boot_id, r.boot_id);
        assert_eq!(back.instance, "my pool");
        assert_eq!(back.run_id, "abc123");
        assert_eq!((back.host_pid, back.host_start), (42, 7));
        assert_eq!(back.workers.get(&100), Some(&9));
        assert!(Record::parse("").is_none());
        assert!(Record::parse("snakepit-run 2\nrun_id x\nhost 1 1\n").is_none());
        assert!(Record::parse("snakepit-run 1\nhost 1 x\n").is_none());
        assert!(Record::parse("snakepit-run 1\ninstance a\n").is_none());
    }

    #[test]
    fn run_ids_are_32_hex_digits_and_differ() {
        let (a, b) = (new_run_id(), new_run_id());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
        assert_ne!(a, b);
    }

    #[test]
    fn our_own_start_time_is_readable_and_a_missing_pid_has_none() {
        assert!(process_start(std::process::id()).unwrap() > 0);
        assert_eq!(process_start(u32::MAX - 1), None);
    }
}

/// Paths as serde text: a path that is not UTF-8 (a directory a user
/// named so) is written with U+FFFD where its bytes are not, rather than
/// failing the whole report.
mod lossy {
    use std::path::{Path, PathBuf};

    pub(super) fn path<S: serde::Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&p.to_string_lossy())
    }

    pub(super) fn paths<S: serde::Serializer>(v: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|p| p.to_string_lossy()))
    }
}
