//! Round 5 of outside review, the pool's processes: never an orphan, the
//! state directory, the sweep of a crashed run, the preload template.
//!
//! Each test names the promise it checks (docs/reliability.md,
//! docs/preload.md, the rustdoc of `spawn.rs`, `sweep.rs`, `template.rs`)
//! or the attack it makes.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use snakepit_core::sweep::{sweep, SweepOptions};
use snakepit_core::{Adapter, Launch, Pool};

/// `tests/workers/round5_proc_worker.py` in mode `mode`.
struct ProcWorker(&'static str);

impl Adapter for ProcWorker {
    fn launch(&self) -> Launch {
        Launch::new(python())
            .arg(root().join("crates/core/tests/workers/round5_proc_worker.py"))
            .arg(self.0)
    }
    fn command_timeout(&self, _: &str) -> Duration {
        Duration::from_secs(30)
    }
}

/// The bridge-based test worker, preloaded or not.
struct Bridged(bool);

impl Adapter for Bridged {
    fn launch(&self) -> Launch {
        let launch = TestWorker::new().launch();
        if self.0 {
            launch.preloaded()
        } else {
            launch
        }
    }
}

/// The live children of `parent` whose command name is `comm`.
fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        if &stat[open + 1..close] == comm && ppid == Some(parent.to_string().as_str()) && alive(pid)
        {
            found.push(pid);
        }
    }
    found
}

/// Stops a process (SIGSTOP), as a debugger or a stuck NFS read would.
#[allow(clippy::disallowed_methods)] // `kill`, not a worker
fn stop(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-STOP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn as_pid(v: &Value, key: &str) -> u32 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid `{key}` in {v}")) as u32
}

/// The host side of the tests that kill a host: see [`host_with_report`].
#[test]
fn host_process() {
    run_as_host(|mode, state_dir| async move {
        match mode.as_str() {
            "watchdog_killed" => watchdog_killed_host(state_dir, false).await,
            "watchdog_killed_preload" => watchdog_killed_host(state_dir, true).await,
            other => panic!("unknown host mode {other}"),
        }
    });
}

/// A host whose watchdog is killed (as the OOM killer, or an operator's
/// `pkill sh`, would): then its one worker is killed, so that a
/// replacement starts (directly, or forked from the template), and the
/// replacement starts a child that stays in its process group. Reports
/// the replacement, its child and the killed watchdog.
async fn watchdog_killed_host(state_dir: PathBuf, preload: bool) -> (Value, Pool) {
    let pool = builder(Bridged(preload))
        .size(1)
        .name("round5-watchdog")
        .configure(|c| c.state_dir = Some(state_dir))
        .start()
        .await
        .unwrap();
    let first = as_pid(&pool.execute("pid", json!({})).await.unwrap(), "pid");
    let me = std::process::id();
    let watchdogs = children_named(me, "sh");
    assert_eq!(watchdogs.len(), 1, "one watchdog: {watchdogs:?}");
    kill_9(watchdogs[0]);
    assert!(
        eventually(20, || !alive(watchdogs[0])).await,
        "the watchdog died"
    );
    kill_9(first);
    assert!(
        eventually(60, || {
            let now = pool.worker_pids();
            now.len() == 1 && now[0] != first
        })
        .await,
        "a replacement started"
    );
    let child = pool.execute("spawn_child", json!({})).await.unwrap();
    let report = json!({
        "worker": child["pid"],
        "child": child["child_pid"],
        "old_watchdog": watchdogs[0],
    });
    (report, pool)
}

/// docs/reliability.md: "no worker starts without [a watchdog]", and the
/// watchdog kills every group, "including the workers' children", when
/// the host dies. A watchdog that died while the host lived (killed from
/// outside) must not leave the workers started after it without one: the
/// host is SIGKILLed and the replacement worker's child, which has no
/// parent-death signal and stayed in its worker's group, dies too.
async fn a_worker_started_after_its_watchdog_died_is_still_watched(mode: &str) {
    let dir = temp_dir("r5-watchdog");
    let (mut host, report) = host_with_report(mode, &dir.join("state"));
    let worker = as_pid(&report, "worker");
    let child = as_pid(&report, "child");
    assert!(alive(worker) && alive(child), "{report}");
    kill_9(host.id());
    host.wait().unwrap();
    let gone = eventually(15, || !alive(worker) && !alive(child)).await;
    let left: Vec<u32> = [worker, child].into_iter().filter(|&p| alive(p)).collect();
    for &p in &left {
        kill_9(p);
    }
    assert!(
        gone,
        "alive after the host was SIGKILLed: {left:?} (worker {worker}, its child {child}): \
         a worker started after the watchdog died had none"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_after_its_watchdog_was_killed_is_still_watched() {
    a_worker_started_after_its_watchdog_died_is_still_watched("watchdog_killed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_forked_after_its_watchdog_was_killed_is_still_watched() {
    a_worker_started_after_its_watchdog_died_is_still_watched("watchdog_killed_preload").await;
}

/// docs/reliability.md, "No orphan, on any path": shutdown kills "the
/// whole group and reap[s] it". A worker that ignores SIGTERM and the end
/// of its stdin, and moved itself out of the process group it was started
/// in (into a group led by a helper it forked, in the same session), is
/// not reached by a signal to its group: it must still be gone once
/// `shutdown()` returns (and its helper too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_moved_to_another_process_group_dies_at_shutdown() {
    let dir = temp_dir("r5-leave-group");
    let pool = builder(ProcWorker("leave_group"))
        .size(1)
        .configure(|c| {
            c.state_dir = Some(dir.join("state"));
            c.cleanup_retry_interval = Duration::from_millis(100);
            c.cleanup_max_retries = 10;
        })
        .start()
        .await
        .unwrap();
    let r = pool.execute("pid", json!({})).await.unwrap();
    let (worker, pgid, helper) = (as_pid(&r, "pid"), as_pid(&r, "pgid"), as_pid(&r, "helper"));
    assert_ne!(worker, pgid, "the worker left its group: {r}");
    assert_eq!(pgid, helper, "{r}");
    pool.shutdown().await.unwrap();
    let gone = eventually(10, || !alive(worker) && !alive(helper)).await;
    let left: Vec<u32> = [worker, helper].into_iter().filter(|&p| alive(p)).collect();
    for &p in &left {
        kill_9(p);
    }
    assert!(
        gone,
        "alive after shutdown: {left:?} (worker {worker}, helper {helper})"
    );
}

/// docs/reliability.md: records go in `SNAKEPIT_STATE_DIR` whatever it is
/// called. A state directory whose name holds a newline, a space and a
/// byte that is not UTF-8: the live run's record is there and a sweep
/// counts the run as active; shutdown removes the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_with_odd_bytes_in_its_name_keeps_and_sweeps_records() {
    use std::os::unix::ffi::OsStrExt;
    let dir = temp_dir("r5-odd-bytes");
    let state = dir.join(std::ffi::OsStr::from_bytes(b"st ate\n\xff\x01"));
    let pool = builder(TestWorker::new())
        .size(1)
        .name("round5-odd")
        .configure(|c| c.state_dir = Some(state.clone()))
        .start()
        .await
        .unwrap();
    pool.execute("pid", json!({})).await.unwrap();
    let records = run_records(&state);
    assert_eq!(records.len(), 1, "{records:?}");
    let report = sweep(&SweepOptions::new().state_dir(&state).instance("round5-odd")).unwrap();
    assert_eq!(
        (report.active_runs, report.stale_runs.len()),
        (1, 0),
        "{report:?}"
    );
    assert_eq!(report.state_dir, state);
    pool.shutdown().await.unwrap();
    assert!(run_records(&state).is_empty());
}

fn run_records(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "run"))
        .collect()
}

/// docs/reliability.md, Recycling: the old worker "is signalled (SIGTERM,
/// then SIGKILL) only if it does not exit within the grace period". A
/// recycled worker that ignores SIGTERM and the end of its stdin, and left
/// the process group it was started in, must still be gone once its
/// replacement serves, while the pool runs on (no shutdown to help).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recycled_worker_that_moved_to_another_process_group_dies() {
    let dir = temp_dir("r5-leave-group-ttl");
    let pool = builder(ProcWorker("leave_group"))
        .size(1)
        .configure(|c| {
            c.state_dir = Some(dir.join("state"));
            c.cleanup_retry_interval = Duration::from_millis(100);
            c.cleanup_max_retries = 10;
            c.worker_ttl = Duration::from_secs(2);
        })
        .start()
        .await
        .unwrap();
    let r = pool.execute("pid", json!({})).await.unwrap();
    let (worker, helper) = (as_pid(&r, "pid"), as_pid(&r, "helper"));
    assert!(
        eventually(60, || pool
            .worker_pids()
            .first()
            .is_some_and(|&p| p != worker))
        .await,
        "recycled"
    );
    let gone = eventually(20, || !alive(worker) && !alive(helper)).await;
    let left: Vec<u32> = [worker, helper].into_iter().filter(|&p| alive(p)).collect();
    let now = pool.worker_pids();
    pool.shutdown().await.unwrap();
    for &p in &left {
        kill_9(p);
    }
    for p in now {
        kill_9(p);
    }
    assert!(
        gone,
        "a recycled worker outside its group is alive while the pool runs: {left:?} \
         (worker {worker}, helper {helper})"
    );
}

/// docs/reliability.md: the pool uses a state directory "only if it is
/// owned by the pool's user, is not writable by group or others", and
/// otherwise "writes no record". The directory is checked when the run
/// starts; here it is replaced afterwards (as when a temporary-file
/// cleaner removed it and another user made their own in its place, mode
/// 0777): the record's later updates (a worker replaced) must not land in
/// the other user's directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_replaced_by_another_users_after_the_start_gets_no_record() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("r5-replaced");
    let state = dir.join("state");
    let pool = builder(TestWorker::new())
        .size(1)
        .name("round5-replaced")
        .configure(|c| c.state_dir = Some(state.clone()))
        .start()
        .await
        .unwrap();
    let first = as_pid(&pool.execute("pid", json!({})).await.unwrap(), "pid");
    assert_eq!(run_records(&state).len(), 1);
    std::fs::rename(&state, dir.join("state.old")).unwrap();
    std::fs::create_dir(&state).unwrap();
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    kill_9(first);
    assert!(
        eventually(60, || pool
            .worker_pids()
            .first()
            .is_some_and(|&p| p != first))
        .await,
        "replaced"
    );
    pool.execute("pid", json!({})).await.unwrap();
    let planted: Vec<PathBuf> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    pool.shutdown().await.unwrap();
    assert!(
        planted.is_empty(),
        "the run wrote into a directory another user owns and anyone may write: {planted:?}"
    );
}

/// docs/reliability.md: "A clean shutdown deletes [the run record]". With
/// a relative `state_dir` (taken from the working directory when the pool
/// starts) and a host that changes its working directory while the pool
/// runs (a daemon's `chdir("/")`), the record written at the start is
/// still the one the shutdown removes, and a worker replaced in between is
/// still recorded in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_state_dir_keeps_its_record_where_the_pool_started() {
    let dir = temp_dir("r5-relative");
    let (first_cwd, later_cwd) = (dir.join("a"), dir.join("b"));
    std::fs::create_dir_all(&first_cwd).unwrap();
    std::fs::create_dir_all(&later_cwd).unwrap();
    std::env::set_current_dir(&first_cwd).unwrap();
    let pool = builder(TestWorker::new())
        .size(1)
        .name("round5-relative")
        .configure(|c| c.state_dir = Some(PathBuf::from("state")))
        .start()
        .await
        .unwrap();
    let first = as_pid(&pool.execute("pid", json!({})).await.unwrap(), "pid");
    let state = first_cwd.join("state");
    assert_eq!(run_records(&state).len(), 1);
    std::env::set_current_dir(&later_cwd).unwrap();
    kill_9(first);
    assert!(
        eventually(60, || pool
            .worker_pids()
            .first()
            .is_some_and(|&p| p != first))
        .await,
        "replaced"
    );
    let second = as_pid(&pool.execute("pid", json!({})).await.unwrap(), "pid");
    let records = run_records(&state);
    assert_eq!(records.len(), 1);
    let text = std::fs::read_to_string(&records[0]).unwrap();
    let recorded = text.contains(&format!("worker {second} "));
    pool.shutdown().await.unwrap();
    let left = run_records(&state);
    assert!(
        left.is_empty(),
        "a clean shutdown left its record: {left:?}"
    );
    assert!(
        recorded,
        "the replacement {second} is not in the record:\n{text}"
    );
}

/// `tests/workers/round5_proc_template.py`, preloaded, writing its pids to
/// `.0`; it hangs at load when `.1` is true.
struct LeavingTemplate(PathBuf, bool);

impl Adapter for LeavingTemplate {
    fn launch(&self) -> Launch {
        Launch::new(python())
            .arg(root().join("crates/core/tests/workers/round5_proc_template.py"))
            .env("PYTHONPATH", root().join("bridges/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("R5_PID_FILE", &self.0)
            .env("R5_TEMPLATE_MODE", if self.1 { "hang" } else { "serve" })
            .preloaded()
    }
}

/// docs/preload.md: "The template's load counts against
/// `worker_init_timeout`", and a template that is not ready in time is
/// killed. A template that moved itself out of the process group it was
/// started in (into a helper's group) and never becomes ready must still
/// die when its start fails, while the host runs on: the pool's start
/// fails, and the template is gone soon after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_left_its_group_and_never_gets_ready_is_killed() {
    let dir = temp_dir("r5-template-group");
    let pid_file = dir.join("pids");
    let started = builder(LeavingTemplate(pid_file.clone(), true))
        .size(1)
        .configure(|c| {
            c.state_dir = Some(dir.join("state"));
            c.worker_init_timeout = Duration::from_secs(3);
            c.breaker_threshold = 1;
        })
        .start()
        .await;
    let Err(err) = started else {
        panic!("a template that is never ready fails the start");
    };
    let text = std::fs::read_to_string(&pid_file).expect("the template wrote its pids");
    let pids: Vec<u32> = text.split(' ').map(|p| p.parse().unwrap()).collect();
    let (template, helper) = (pids[0], pids[1]);
    let gone = eventually(15, || !alive(template)).await;
    let helper_gone = eventually(5, || !alive(helper)).await;
    for p in [template, helper] {
        kill_9(p);
    }
    assert!(
        gone,
        "the template {template} lives on after its failed start ({err})"
    );
    assert!(helper_gone, "the template's helper {helper} lives on");
}

/// docs/preload.md: "A template that does not fork a worker within 10 s
/// (stopped, or blocked in its script) is killed, and the next start
/// begins a new one." A template that moved itself out of the process
/// group it was started in (into a helper's group) is stopped (SIGSTOP)
/// and its worker killed: the fork of the replacement times out, and the
/// old template, which holds all the memory its script loaded, must die
/// then, while the pool runs on with a new template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_template_that_left_its_group_is_killed_when_its_fork_times_out() {
    let dir = temp_dir("r5-template-stuck");
    let pid_file = dir.join("pids");
    let pool = builder(LeavingTemplate(pid_file.clone(), false))
        .size(1)
        .configure(|c| {
            c.state_dir = Some(dir.join("state"));
            c.worker_init_timeout = Duration::from_secs(30);
        })
        .start()
        .await
        .unwrap();
    let worker = as_pid(&pool.execute("pid", json!({})).await.unwrap(), "pid");
    let text = std::fs::read_to_string(&pid_file).unwrap();
    std::fs::remove_file(&pid_file).unwrap();
    let pids: Vec<u32> = text.split(' ').map(|p| p.parse().unwrap()).collect();
    let (template, helper) = (pids[0], pids[1]);
    assert_eq!(pool.template_pid(), Some(template));
    stop(template);
    kill_9(worker);
    // The fork times out after 10 s; a new template starts and forks.
    let replaced = eventually(60, || {
        pool.template_pid().is_some_and(|t| t != template) && pool.worker_pids().len() == 1
    })
    .await;
    let gone = eventually(15, || !alive(template)).await;
    let new_helper = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.split(' ').nth(1)?.parse::<u32>().ok());
    pool.shutdown().await.unwrap();
    for p in [template, helper].into_iter().chain(new_helper) {
        kill_9(p);
    }
    assert!(replaced, "a new template serves");
    assert!(
        gone,
        "the stuck template {template} lives on beside its replacement"
    );
}

/// docs/reliability.md: "The sweep ... reads [a record] only if it is a
/// regular file owned by this user"; anything else "is reported in
/// `SweepReport::unreadable` and left alone". A well-formed record of a
/// crashed run, whose leftover still runs, owned by another user (uid
/// 65534; the tests run as root): nothing is killed, the file stays and
/// is reported. The same file owned by this user is swept (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_owned_by_another_user_is_reported_and_kills_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("r5-foreign-record");
    let state = dir.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let run_id = a_run_id("7e57000000000172");
    let leftover = a_leftover(&run_id);
    let record = state.join(format!("forged.1.{run_id}.run"));
    let text = forged_record(
        &run_id,
        a_dead_pid(),
        Some((our_pid_namespace(), &our_boot_id())),
    );
    std::fs::write(&record, text).unwrap();
    std::os::unix::fs::chown(&record, Some(65534), Some(65534)).unwrap();
    let report = sweep(&SweepOptions::new().state_dir(&state)).unwrap();
    let spared = alive(leftover);
    let kept = record.exists();
    // The control: the same record, ours.
    let me = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&state).unwrap());
    std::os::unix::fs::chown(&record, Some(me), None).unwrap();
    let control = sweep(&SweepOptions::new().state_dir(&state)).unwrap();
    let swept = eventually(10, || !alive(leftover)).await;
    kill_9(leftover);
    assert!(spared && kept, "{report:?}");
    assert_eq!(report.unreadable, vec![record.clone()], "{report:?}");
    assert_eq!(report.killed(), 0, "{report:?}");
    assert_eq!(control.killed(), 1, "the control: {control:?}");
    assert!(swept && !record.exists(), "the control: {control:?}");
}

/// docs/reliability.md: a run record is written to a new file "created
/// exclusively", then renamed. A state directory that passes every check
/// (this user's, mode 0555, below root's directories) but in which no
/// file can be created (here `/proc/<pid>`, which refuses new files even
/// to root, as a read-only or full file system would) costs the pool its
/// record only: it starts, serves, replaces a killed worker and shuts
/// down, and a sweep of that directory finds nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_where_no_file_can_be_made_costs_only_the_record() {
    let state = PathBuf::from(format!("/proc/{}", std::process::id()));
    let pool = builder(TestWorker::new())
        .size(1)
        .name("round5-unwritable")
        .configure(|c| c.state_dir = Some(state.clone()))
        .start()
        .await
        .unwrap();
    let first = as_pid(&pool.execute("pid", json!({})).await.unwrap(), "pid");
    kill_9(first);
    assert!(
        eventually(60, || pool
            .worker_pids()
            .first()
            .is_some_and(|&p| p != first))
        .await,
        "replaced"
    );
    pool.execute("pid", json!({})).await.unwrap();
    let report = sweep(&SweepOptions::new().state_dir(&state)).unwrap();
    assert_eq!(
        (
            report.active_runs,
            report.stale_runs.len(),
            report.unreadable.len()
        ),
        (0, 0, 0),
        "{report:?}"
    );
    tokio::time::timeout(Duration::from_secs(30), pool.shutdown())
        .await
        .expect("shutdown returns")
        .unwrap();
}
