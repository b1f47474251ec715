//! The process side (spawn.rs, sweep.rs, template.rs, os.rs, raw.rs, and
//! how the pool uses them) against docs/reliability.md and the rustdoc: no
//! run record after a clean end, no signal to a process group whose leader
//! was reaped, a state directory no other user can redirect, and the
//! sweep's idea of a live host. Each with real processes.
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
/// worker, and the template is reaped after `shutdown()` removed the
/// record; `RunRecord` says "a worker or template reaped after that must
/// not write it again" (this once wrote the record back). The test shuts a
/// preloaded pool down, waits 2 s with the host alive, and checks that no
/// run record is left.
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

/// `RawProcess` (raw.rs): "Reaping it (`wait`, `try_wait`) kills what is
/// left of its group at that moment, and nothing is signalled after: its
/// pid may then be another process's." The pool treats its own workers the
/// same way (`Worker::signal`: "unless it was reaped"; `Template::kill`:
/// "its pid could be another's now"). The test waits for a raw process,
/// gives its pid to a bystander that leads a process group of its own,
/// drops the raw process and checks that the bystander still runs (a drop
/// once sent SIGKILL to `-pid` even after the reaping).
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
    run_as_host(|_, state_dir| async move {
        let pool = builder(OwnGroup)
            .size(1)
            .name("reviewreaper")
            .configure(|c| c.state_dir = Some(state_dir))
            .start()
            .await
            .unwrap();
        let child = pool.execute("spawn_own_group", json!({})).await.unwrap();
        let report = json!({
            "workers": pool.worker_pids(),
            "children": [child["child_pid"]],
        });
        (report, pool)
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

/// docs/reliability.md, "When a run counts as dead": a crashed run is
/// spared only if a process of it has a live host. "Each worker's
/// environment names its host (`SNAKEPIT_HOST`: pid, start time and PID
/// namespace), and so does that of every child that kept it ... Who
/// adopted a process once its host died (init, a subreaper, a container's
/// first process) does not matter."
///
/// Here a subreaper in the host's own session adopts the leftover, as
/// `tini -s` or a service manager's helper would (the test process plays
/// that part). The host is SIGKILLed; its worker dies (parent-death signal,
/// watchdog); the worker's child that left the worker's group survives and
/// is adopted by the subreaper. The test checks that the sweep kills that
/// leftover. The sweep once judged a host by ancestry alone, took the
/// subreaper for a live host and spared the run.
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
/// user (nor is any directory on the path as given)" (sweep.rs: "no
/// directory above it lets another user swap it"). The state directory is
/// `base/link/state`, where `link` is another user's symbolic link to a
/// directory of ours: that user could point it elsewhere at any time, as
/// with a symlink in last place. The test checks that the sweep refuses it
/// with `PermissionDenied`, and that after the other user repoints `link`
/// no run record is written into their directory. This once passed,
/// because only the last component's symlink was checked.
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
/// (`RunRecord::finish`, "The run ended cleanly: no record remains"). The
/// workers are reaped after that, and a reaping once wrote the record back.
/// The test drops the last handle of a pool, with and without preload,
/// and checks that no run record is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_handle_leaves_no_run_record() {
    // The reaping races the drop: three rounds of each catch a record
    // written back.
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
/// while the host lives". `kill_leftovers` spares only the pool's own
/// workers and template, "a child of this host included (a host that
/// adopts orphans, as a container's first process does, becomes the parent
/// of such a child once its worker has gone)". The test makes the host a
/// subreaper, has a worker start a child that calls `setsid`, shuts the
/// pool down and checks that the child dies. Such a child was once taken
/// for one of the pool's own, because its parent was the host.
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

/// The watchdog (docs/reliability.md, "No orphan, on any path") reads a
/// line from the pool for each process group started and ended. One that
/// stops reading (SIGSTOP, or starved of CPU) never holds up the pool: with
/// its pipe full, workers still start and calls are still served. (The
/// pool wrote to it under a lock, blocking a runtime thread, and stalled
/// once the pipe was full.) Its pipe is shrunk to one page so that a few
/// hundred restarts fill it; every call recycles its worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watchdog_that_stops_reading_never_holds_up_the_pool() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let pool = builder(Preloaded)
        .size(2)
        .configure(|c| c.recycle_after_calls = 1)
        .start()
        .await
        .unwrap();
    let me = std::process::id();
    let watchdogs: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| parent_of(p) == Some(me))
        .filter(|&p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("trap '' INT TERM HUP"))
        })
        .collect();
    assert_eq!(watchdogs.len(), 1, "one watchdog: {watchdogs:?}");
    let watchdog = watchdogs[0];
    let pipe = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/{watchdog}/fd/0"))
        .unwrap();
    // SAFETY: F_SETPIPE_SZ on a descriptor this test owns.
    let size = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert!(
        size >= 4096,
        "F_SETPIPE_SZ: {}",
        std::io::Error::last_os_error()
    );
    signal(watchdog, libc::SIGSTOP);
    // About 16 bytes a call (a fork's `+pid`, a retired worker's `-pid`):
    // 600 calls are more than twice the page.
    for i in 0..600 {
        let call = pool.execute("ping", json!({}));
        let r = tokio::time::timeout(Duration::from_secs(20), call).await;
        assert!(
            matches!(r, Ok(Ok(_))),
            "call {i} with the watchdog stopped: {r:?}"
        );
    }
    signal(watchdog, libc::SIGCONT);
    drop(pipe);
    let workers = pool.worker_pids();
    pool.shutdown().await.unwrap();
    for w in workers {
        assert!(
            eventually(10, || !alive(w)).await,
            "worker {w} outlived shutdown"
        );
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a process this test started.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
}

/// A leftover of run `run_id` whose environment names `host` as its host
/// (`SNAKEPIT_HOST`), in a session of its own: what an escaped child of a
/// run looks like.
#[allow(clippy::disallowed_methods)] // a stand-in leftover, not a worker
fn a_leftover_hosted_by(run_id: &str, host: &str) -> u32 {
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!",
        ])
        .env("SNAKEPIT_RUN_ID", run_id)
        .env("SNAKEPIT_HOST", host)
        .output()
        .unwrap();
    let pid = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid));
    pid
}

/// docs/reliability.md, "When a run counts as dead": a run's process whose
/// `SNAKEPIT_HOST` names a host in another PID namespace "cannot be judged
/// from here, and is taken as alive". A record of a dead host in this
/// namespace lists a run whose leftover names, as its host, a real process
/// in a PID namespace of its own (`unshare -p`, as a container's host
/// would be): the sweep spares the leftover and keeps the record. The
/// control, the same leftover naming a dead host of this namespace, is
/// swept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_whose_host_is_in_another_pid_namespace_is_spared() {
    use std::os::unix::fs::MetadataExt;
    #[allow(clippy::disallowed_methods)] // the stand-in host, not a worker
    let unshare = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child", "sleep", "300"])
        .spawn()
        .expect("unshare runs");
    // Killed however the test ends (`--kill-child` takes the sleep along).
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let unshare = Killed(unshare);
    let outer = unshare.0.id();
    let inner = {
        let mut found = None;
        for _ in 0..100 {
            found = std::fs::read_dir("/proc")
                .unwrap()
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .find(|&p| parent_of(p) == Some(outer));
            if found.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        found.expect("the process in its own PID namespace")
    };
    let ns = std::fs::metadata(format!("/proc/{inner}/ns/pid")).unwrap();
    assert_ne!(
        (ns.dev(), ns.ino()),
        our_pid_namespace(),
        "a namespace of its own"
    );
    // Inside its namespace the host is pid 1; its start time is the same
    // number of clock ticks from either side.
    let stat = std::fs::read_to_string(format!("/proc/{inner}/stat")).unwrap();
    let start = stat[stat.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(19)
        .unwrap()
        .to_owned();
    let (dev, ino) = our_pid_namespace();
    let boot = our_boot_id();
    for (other_namespace, host) in [
        (true, format!("1:{start}:{}:{}", ns.dev(), ns.ino())),
        (false, format!("{}:{start}:{dev}:{ino}", a_dead_pid())),
    ] {
        let dir = temp_dir("host-elsewhere");
        let run_id = &a_run_id("0f1e2d3c4b5a6978");
        let leftover = a_leftover_hosted_by(run_id, &host);
        let record = dir.join(format!("forged.{}.{run_id}.run", a_dead_pid()));
        let text = forged_record(run_id, a_dead_pid(), Some(((dev, ino), &boot)));
        std::fs::write(&record, text).unwrap();
        let report = sweep(&SweepOptions::new().state_dir(&dir)).unwrap();
        if other_namespace {
            assert_eq!(report.killed(), 0, "{report:?}");
            assert_eq!(report.active_runs, 1, "{report:?}");
            assert!(
                record.exists(),
                "the record of a run with a live host stays"
            );
            assert!(
                alive(leftover),
                "a process whose host may be alive was killed"
            );
            signal(leftover, libc::SIGKILL);
        } else {
            assert_eq!(report.killed(), 1, "{report:?}");
            assert!(
                eventually(5, || !alive(leftover)).await,
                "the control was not swept"
            );
            assert!(!record.exists());
        }
    }
    drop(unshare);
}
