//! Run records and the sweep: finding and killing what a crashed run left.
//!
//! Every pool writes a small record of its run in a per-user runtime
//! directory (`$SNAKEPIT_STATE_DIR`, else `$XDG_RUNTIME_DIR/snakepit`, else
//! `/tmp/snakepit-<uid>`, created with mode 0700): the pool's name (its
//! *instance*), its run id, the host's pid and start time, and each live
//! worker's pid and start time. A clean shutdown removes the record.
//!
//! A record whose host is gone (no such pid, or a pid whose start time
//! differs: a reused pid) belongs to a run that crashed. [`sweep`] then kills
//! the processes of that run that are still alive: a process is killed only
//! if it carries the run's id in its environment (`SNAKEPIT_RUN_ID`, which
//! every worker and, unless they clear their environment, the workers' own
//! children inherit) *and* either it is a recorded worker with the recorded
//! start time, or it started after the run did. A reused pid or somebody
//! else's process, even one with the same command line, is never touched.
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

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

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
    pub state_dir: PathBuf,
    /// Records of runs whose host is alive: left alone.
    pub active_runs: usize,
    /// Records of runs whose host is gone.
    pub stale_runs: Vec<StaleRun>,
    /// Record files that could not be read as records: left alone.
    pub unreadable: Vec<PathBuf>,
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
pub fn sweep(options: &SweepOptions) -> io::Result<SweepReport> {
    let dir = match &options.state_dir {
        Some(d) => d.clone(),
        None => default_state_dir(),
    };
    let mut report = SweepReport {
        state_dir: dir.clone(),
        ..SweepReport::default()
    };
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(e),
    };
    let proc_ok = Path::new("/proc/self/stat").exists();
    if !proc_ok {
        report.note = Some("no /proc on this system: processes were not inspected".into());
    }
    let mut stale = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("run") {
            continue;
        }
        let Some(record) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| Record::parse(&t))
        else {
            report.unreadable.push(path);
            continue;
        };
        if options
            .instance
            .as_ref()
            .is_some_and(|i| *i != record.instance)
        {
            continue;
        }
        if !proc_ok || process_start(record.host_pid) == Some(record.host_start) {
            report.active_runs += 1;
            continue;
        }
        stale.push((path, record));
    }
    if stale.is_empty() {
        return Ok(report);
    }
    let by_run: HashMap<&str, usize> = stale
        .iter()
        .enumerate()
        .map(|(i, (_, r))| (r.run_id.as_str(), i))
        .collect();
    let mut killed: Vec<Vec<SweptProcess>> = vec![Vec::new(); stale.len()];
    for pid in all_pids() {
        if pid == std::process::id() {
            continue;
        }
        let Some(run_id) = run_id_of(pid) else {
            continue;
        };
        let Some(&i) = by_run.get(run_id.as_str()) else {
            continue;
        };
        let record = &stale[i].1;
        let Some(start) = process_start(pid) else {
            continue;
        };
        let worker = record.workers.get(&pid) == Some(&start);
        if !worker && start < record.host_start {
            continue; // older than the run: not ours, whatever its environment says
        }
        let command = command_line(pid);
        if !options.dry_run {
            // Our workers lead their own process groups: take the group.
            if worker {
                crate::spawn::signal_group(pid, libc::SIGKILL);
            }
            crate::spawn::signal_pid(pid, libc::SIGKILL);
        }
        killed[i].push(SweptProcess {
            pid,
            command,
            worker,
        });
    }
    for ((path, record), killed) in stale.into_iter().zip(killed) {
        if !options.dry_run {
            let _ = std::fs::remove_file(&path);
        }
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
    Ok(report)
}

/// The default directory of run records.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SNAKEPIT_STATE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(d).join("snakepit");
    }
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "user".into());
    std::env::temp_dir().join(format!("snakepit-{uid}"))
}

/// One run's record, as written to `<dir>/<instance>.<host pid>.<run id>.run`.
struct Record {
    instance: String,
    run_id: String,
    host_pid: u32,
    host_start: u64,
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
            workers: HashMap::new(),
        };
        for line in lines {
            let (key, rest) = line.split_once(' ')?;
            match key {
                "instance" => r.instance = rest.to_owned(),
                "run_id" => r.run_id = rest.to_owned(),
                "host" | "worker" => {
                    let (pid, start) = rest.split_once(' ')?;
                    let (pid, start) = (pid.parse().ok()?, start.parse().ok()?);
                    if key == "host" {
                        (r.host_pid, r.host_start) = (pid, start);
                    } else {
                        r.workers.insert(pid, start);
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
}

impl RunRecord {
    /// Writes the record of a new run.
    pub(crate) fn create(dir: &Path, instance: &str, run_id: &str) -> io::Result<RunRecord> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
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
            workers: HashMap::new(),
        };
        let this = RunRecord {
            path,
            record: Mutex::new(record),
        };
        this.write()?;
        Ok(this)
    }

    fn write(&self) -> io::Result<()> {
        let text = self
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .render();
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.path)
    }

    /// Records a new worker.
    pub(crate) fn add(&self, pid: u32) {
        let start = process_start(pid).unwrap_or(0);
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .workers
            .insert(pid, start);
        if let Err(e) = self.write() {
            tracing::debug!(error = %e, "cannot update the run record");
        }
    }

    /// Forgets a worker that was reaped.
    pub(crate) fn remove(&self, pid: u32) {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .workers
            .remove(&pid);
        if let Err(e) = self.write() {
            tracing::debug!(error = %e, "cannot update the run record");
        }
    }

    /// The run ended cleanly: no record remains.
    pub(crate) fn finish(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A process's start time, in clock ticks after boot (`/proc/<pid>/stat`,
/// field 22); `None` if there is no such process (or it is a zombie).
pub(crate) fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: skip to
    // the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    if fields.next()? == "Z" {
        return None;
    }
    // `rest` starts at field 3 (state); field 22 is 19 further on.
    fields.nth(18)?.parse().ok()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn run_id_of(pid: u32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"SNAKEPIT_RUN_ID="))
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::to_owned)
}

fn command_line(pid: u32) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_reject_garbage() {
        let mut r = Record {
            instance: "my pool".into(),
            run_id: "abc123".into(),
            host_pid: 42,
            host_start: 7,
            workers: HashMap::new(),
        };
        r.workers.insert(100, 9);
        let back = Record::parse(&r.render()).unwrap();
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
    fn our_own_start_time_is_readable_and_a_missing_pid_has_none() {
        assert!(process_start(std::process::id()).unwrap() > 0);
        assert_eq!(process_start(u32::MAX - 1), None);
    }
}
