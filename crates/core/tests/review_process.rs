//! Code review of the process side (spawn.rs, sweep.rs, template.rs, os.rs,
//! raw.rs, and how the pool uses them): run records after a clean end,
//! signals to process groups whose leader was reaped, and the sweep's idea
//! of a live host. Each with real processes.
#![allow(unsafe_code)] // prctl and waitpid, to make this test process a subreaper

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::json;
use snakepit_core::sweep::{sweep, SweepOptions};
use snakepit_core::{Adapter, Launch, RawProcess, WireCodec};

/// The bridge-based test worker, preloaded (docs/preload.md): one template,
/// every worker a fork of it.
struct Preloaded;

impl Adapter for Preloaded {
    fn launch(&self) -> Launch {
        TestWorker::new().launch().preloaded()
    }
}

/// The `*.run` files in `dir`.
fn run_records(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "run"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// docs/reliability.md, "Run records and the sweep": "A clean shutdown
/// deletes it." (and `sweep::kill_leftovers`: "A clean end leaves no run
/// record for a later sweep"). A preloaded pool records its template as a
/// worker (`Shared::template`: `r.add(template.pid)`); `shutdown()` kills
/// the template and removes the record at once, and the template's reaping,
/// which comes after, calls `process_gone`, whose `RunRecord::remove`
/// writes the whole record again. The record of a run that ended cleanly is
/// back in the state directory, with the host still alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preloaded_pools_clean_shutdown_leaves_no_run_record() {
    let dir = temp_dir("review-preload-record");
    let pool = builder(Preloaded)
        .size(2)
        .name("reviewpre")
        .configure(|c| {
            c.state_dir = Some(dir.clone());
            c.worker_init_timeout = Duration::from_secs(30);
        })
        .start()
        .await
        .unwrap();
    assert!(pool.template_pid().is_some(), "the pool preloads");
    assert_eq!(run_records(&dir).len(), 1, "the run is recorded");
    pool.shutdown().await.unwrap();
    // What happens right after the pool's end, while the host goes on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let left = run_records(&dir);
    let texts: Vec<String> = left
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        left.is_empty(),
        "a clean shutdown left run records: {left:?} {texts:?}"
    );
}

/// Forks bystanders until one gets `pid`, by setting the PID namespace's
/// last allocated pid just below it (root, as in CI): a process of
/// somebody else that leads a process group of its own, as the pid of a
/// reaped worker is reused on a busy system. `None` if another process took
/// the pid every time.
#[allow(clippy::disallowed_methods)] // a bystander, not a worker
fn bystander_with_pid(pid: u32) -> Option<std::process::Child> {
    use std::os::unix::process::CommandExt;
    for _ in 0..50 {
        if std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).is_err() {
            return None;
        }
        let child = std::process::Command::new("sleep")
            .arg("300")
            .process_group(0)
            .spawn()
            .unwrap();
        if child.id() == pid {
            return Some(child);
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

/// How a bystander ended, once it has (at most 5 s), or `None` if it is
/// still running (then it is killed).
fn ended_by(mut child: std::process::Child) -> Option<std::process::ExitStatus> {
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < until {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// `RawProcess` (raw.rs): `wait` "waits for it to end and reaps it, then
/// kills what is left of its process group"; dropping it "kills its whole
/// process group". Once reaped, its pid is free, and the pool itself never
/// signals a reaped worker's group (`Worker::signal`: "unless it was
/// reaped"; `Template::kill`: "its pid could be another's now"). `Drop`
/// signals `-pid` whether or not the process was reaped: a process group
/// that has since been given that pid (pid_max is 32768 here) is
/// SIGKILLed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_waited_raw_process_signals_no_group_that_reused_its_pid() {
    let mut raw = RawProcess::spawn(Launch::new("true"), WireCodec::Json)
        .await
        .unwrap();
    let pid = raw.pid();
    assert!(raw.wait().await.unwrap().success());
    let Some(bystander) = bystander_with_pid(pid) else {
        eprintln!(
            "could not give pid {pid} to a bystander (no ns_last_pid, or a busy system); skipped"
        );
        return;
    };
    drop(raw);
    let status = ended_by(bystander);
    assert_eq!(
        status, None,
        "the bystander that got pid {pid} after the raw process was reaped was killed: {status:?}"
    );
}

/// A worker whose `spawn_own_group` starts a `sleep` in a process group of
/// its own (Python's `process_group=0`, `setpgid`), in the worker's
/// session: a child that left its worker's group without `setsid`.
fn own_group_worker() -> Launch {
    inline_launch(
        Lang::Python,
        r#"
import os, subprocess
from snakepit_bridge import Worker

worker = Worker()

@worker.command("spawn_own_group")
def spawn_own_group(args, ctx):
    child = subprocess.Popen(["sleep", "300"], process_group=0)
    return {"child_pid": child.pid, "pid": os.getpid()}

worker.run()
"#,
    )
}

struct OwnGroup;

impl Adapter for OwnGroup {
    fn launch(&self) -> Launch {
        own_group_worker()
    }
}

/// Not a test of its own: the host whose run crashes
/// ([`a_crashed_runs_leftover_adopted_by_a_subreaper_in_its_session_is_swept`]).
/// Starts a pool of one worker, has the worker start a child in a group of
/// its own, writes the pids and waits to be killed.
#[test]
fn host_process() {
    if std::env::var("SNAKEPIT_TEST_HOST").is_err() {
        return;
    }
    let state_dir = std::env::var("SNAKEPIT_TEST_STATE_DIR").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let pool = builder(OwnGroup)
            .size(1)
            .name("reviewreaper")
            .configure(|c| c.state_dir = Some(state_dir.into()))
            .start()
            .await
            .unwrap();
        let child = pool.execute("spawn_own_group", json!({})).await.unwrap();
        let line = json!({
            "workers": pool.worker_pids(),
            "children": [child["child_pid"]],
        });
        let out = PathBuf::from(std::env::var("SNAKEPIT_TEST_PIDS").unwrap());
        std::fs::write(out.with_extension("tmp"), line.to_string()).unwrap();
        std::fs::rename(out.with_extension("tmp"), &out).unwrap();
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
}

/// The parent of `pid` (field 4 of `/proc/<pid>/stat`).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// docs/reliability.md, "When a run counts as dead": a crashed run's
/// processes are spared only if one has a live host, "the first ancestor
/// that is not of the run is a live process other than init in the same
/// session as the run's process below it. That is what a pool's host
/// looks like to its workers; a process whose host died was adopted by
/// init or a subreaper, in another session." (sweep.rs says the same.)
///
/// A subreaper need not be in another session: a supervisor that sets
/// `PR_SET_CHILD_SUBREAPER` and starts the host without `setsid` (`tini
/// -s`, a service manager's helper, here the test process itself) adopts
/// the crashed run's leftover in the host's own session. The host is
/// SIGKILLed; its worker dies (parent-death signal, watchdog); the
/// worker's child that left the worker's group survives and is adopted by
/// the subreaper. The sweep takes the subreaper for a live host and spares
/// the run: the leftover is never swept, by this sweep or the next pool's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_runs_leftover_adopted_by_a_subreaper_in_its_session_is_swept() {
    become_subreaper();
    let dir = temp_dir("review-subreaper");
    let (mut host, pids) = host_with_report("1", &dir);
    kill_9(host.id());
    host.wait().unwrap();
    let workers = pid_list(&pids, "workers");
    let leftover = pid_list(&pids, "children")[0];
    assert!(
        eventually(10, || workers.iter().all(|&p| !alive(p))).await,
        "the workers died with their host"
    );
    assert!(
        alive(leftover),
        "the child that left its group outlived the host"
    );
    assert!(
        eventually(10, || parent_of(leftover) == Some(std::process::id())).await,
        "the leftover was adopted by the subreaper: parent {:?}",
        parent_of(leftover)
    );
    let report = sweep(&SweepOptions::new().state_dir(&dir)).unwrap();
    let swept = eventually(5, || !alive(leftover)).await;
    if !swept {
        kill_9(leftover);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    reap_adopted();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        swept && report.killed() == 1,
        "the crashed run's leftover {leftover} was not swept: {report:?}"
    );
}

const NOBODY: u32 = 65534;

/// docs/reliability.md, "The directory is private": an existing state
/// directory is used only if it "is not a symbolic link made by another
/// user, and sits below directories that no other user can rename it out
/// of" (sweep.rs: "no directory above it lets another user swap it").
/// `check_state_dir` looks at the last component's symlink and at the
/// ancestors of the resolved path, never at the components of the path as
/// given: `base/link/state`, where `link` is another user's symbolic link
/// to a directory of ours, passes, though that user can point `link`
/// elsewhere at any time, exactly as with a symlink in last place (which is
/// refused). After the pool's start checked it, the other user repoints
/// `link` to a directory of theirs: the pool's next record writes go there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_below_another_users_symlink_is_refused() {
    use std::os::unix::fs::{chown, lchown, symlink, PermissionsExt};
    let base = temp_dir("review-midlink");
    let ours = base.join("ours");
    std::fs::create_dir(&ours).unwrap();
    std::fs::create_dir(ours.join("state")).unwrap();
    std::fs::set_permissions(ours.join("state"), std::fs::Permissions::from_mode(0o700)).unwrap();
    let theirs = base.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::create_dir(theirs.join("state")).unwrap();
    std::fs::set_permissions(theirs.join("state"), std::fs::Permissions::from_mode(0o777)).unwrap();
    chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    chown(theirs.join("state"), Some(NOBODY), Some(NOBODY)).unwrap();
    let link = base.join("link");
    symlink(&ours, &link).unwrap();
    lchown(&link, Some(NOBODY), Some(NOBODY)).unwrap();
    let state = link.join("state");

    // The same link in last place is refused.
    let last = base.join("lastlink");
    symlink(ours.join("state"), &last).unwrap();
    lchown(&last, Some(NOBODY), Some(NOBODY)).unwrap();
    let refused = sweep(&SweepOptions::new().state_dir(&last));
    assert_eq!(
        refused.as_ref().map_err(std::io::Error::kind).err(),
        Some(std::io::ErrorKind::PermissionDenied),
        "{refused:?}"
    );

    let verdict = sweep(&SweepOptions::new().state_dir(&state));
    let pool = builder(TestWorker::new())
        .size(1)
        .name("reviewmidlink")
        .configure(|c| {
            c.state_dir = Some(state.clone());
            c.health_check_interval = Duration::ZERO;
        })
        .start()
        .await
        .unwrap();
    // The other user points their link at a directory of theirs.
    std::fs::remove_file(&link).unwrap();
    symlink(&theirs, &link).unwrap();
    lchown(&link, Some(NOBODY), Some(NOBODY)).unwrap();
    // A worker replaced: the record is written again.
    let victim = pool.worker_pids()[0];
    kill_9(victim);
    assert!(
        eventually(30, || {
            let pids = pool.worker_pids();
            pids.len() == 1 && pids[0] != victim
        })
        .await,
        "the worker was replaced"
    );
    let written_there = eventually(5, || !run_records(&theirs.join("state")).is_empty()).await;
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&base);
    assert!(
        matches!(&verdict, Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied),
        "a state dir below another user's symlink was accepted: {verdict:?} (and the record was then written into the other user's directory: {written_there})"
    );
    assert!(
        !written_there,
        "the run record was written into the other user's directory"
    );
}

/// `PoolInner::drop` ("The last handle is gone without `shutdown()`: stop at
/// once") kills every worker and removes the run record
/// (`RunRecord::finish`, "The run ended cleanly: no record remains"); the
/// workers' reaping comes after, and each `process_gone` writes the record
/// again unless the pool's shared state is gone by then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_leaves_no_run_record() {
    // The race is the pool's: three rounds of each make it show reliably.
    for preload in [false, true, false, true, false, true] {
        let dir = temp_dir("review-drop-record");
        let builder = if preload {
            builder(Preloaded)
        } else {
            builder(TestWorker::new())
        };
        let pool = builder
            .size(2)
            .name("reviewdrop")
            .configure(|c| {
                c.state_dir = Some(dir.clone());
                c.worker_init_timeout = Duration::from_secs(30);
            })
            .start()
            .await
            .unwrap();
        assert_eq!(run_records(&dir).len(), 1, "the run is recorded");
        let pids = pool.worker_pids();
        drop(pool);
        assert!(
            eventually(10, || pids.iter().all(|&p| !alive(p))).await,
            "the workers died with the last handle"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let left = run_records(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            left.is_empty(),
            "preload {preload}: the pool's end left run records: {left:?}"
        );
    }
}

/// Makes this test process a subreaper (nextest runs each test in a process
/// of its own): it adopts its orphaned descendants, as a host that is PID 1
/// of a container does.
fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
}

/// Reaps whatever this subreaper adopted and has ended.
fn reap_adopted() {
    // SAFETY: waitpid on any child, without blocking, no status kept.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

/// docs/reliability.md, "No orphan, on any path", run id: "at its end
/// (`shutdown()`, or the last handle dropped) the pool kills every process
/// of the run that is not its own child ... when a process escaped the
/// process groups (for instance a worker's child that called `setsid`)
/// while the host lives". `kill_leftovers` skips every process whose parent
/// is the host, meaning the workers and the template. A host that adopts
/// orphans (PID 1 of a container, the usual place of a service; or any
/// subreaper) is the parent of the escaped child as soon as its worker
/// exits at the end of its stdin: the child is taken for one of the pool's
/// own and survives the shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escaped_child_dies_with_the_pool_in_a_host_that_adopts_orphans() {
    become_subreaper();
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| c.state_dir = Some(temp_dir("review-adopt")))
        .start()
        .await
        .unwrap();
    let escaped = pool.execute("spawn_escaped", json!({})).await.unwrap()["child_pid"]
        .as_u64()
        .unwrap() as u32;
    assert!(alive(escaped));
    pool.shutdown().await.unwrap();
    let died = eventually(5, || !alive(escaped)).await;
    let parent = parent_of(escaped);
    if !died {
        kill_9(escaped);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    reap_adopted();
    assert!(
        died,
        "the worker's escaped child {escaped} outlived shutdown() (its parent now: {parent:?}, the host is {})",
        std::process::id()
    );
}
