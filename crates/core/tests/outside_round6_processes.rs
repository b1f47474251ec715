//! Round 6 of outside review, the pool's processes: never an orphan, the
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
use snakepit_core::{Adapter, Launch, Pool};

/// `tests/workers/round6_proc_worker.py`, preloaded or started directly.
struct ProcWorker {
    preload: bool,
}

impl Adapter for ProcWorker {
    fn launch(&self) -> Launch {
        let launch = Launch::new(python())
            .arg(root().join("crates/core/tests/workers/round6_proc_worker.py"))
            .env("PYTHONPATH", root().join("bridges/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1");
        if self.preload {
            launch.preloaded()
        } else {
            launch
        }
    }
    fn command_timeout(&self, _: &str) -> Duration {
        Duration::from_secs(600)
    }
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
            "left_group_preload" => left_group_host(state_dir, true).await,
            "left_group_direct" => left_group_host(state_dir, false).await,
            other => panic!("unknown host mode {other}"),
        }
    });
}

/// A host whose one worker moved itself into a process group nobody
/// listed, then began a call that never ends and ignores SIGTERM and
/// SIGINT (so it never reads the end of its stdin). Reports the worker,
/// its group and the template (0 without preloading).
async fn left_group_host(state_dir: PathBuf, preload: bool) -> (Value, Pool) {
    let pool = builder(ProcWorker { preload })
        .size(1)
        .name("round6-left-group")
        .configure(|c| c.state_dir = Some(state_dir.clone()))
        .start()
        .await
        .unwrap();
    let moved = pool.execute("leave_group", json!({})).await.unwrap();
    let marker = state_dir.with_extension("hanging");
    {
        let pool = pool.clone();
        let marker = marker.display().to_string();
        tokio::spawn(async move { pool.execute("hang", json!({ "marker": marker })).await });
    }
    assert!(eventually(60, || marker.exists()).await, "the call began");
    let report = json!({
        "worker": moved["pid"],
        "pgid": moved["pgid"],
        "template": pool.template_pid().unwrap_or(0),
    });
    (report, pool)
}

/// docs/preload.md, "What a forked worker is": "a host that dies, even by
/// `SIGKILL`, leaves nothing alive (... the workers and their children are
/// killed by the watchdog, and a worker whose stdin closes exits)". A
/// forked worker has no parent-death signal of its own, so the watchdog
/// is all that reaches it; one that moved itself into another process
/// group and is busy in a call (so it never reads the end of its stdin)
/// must still die with its host. The same worker started directly is the
/// control: its parent-death signal takes it.
async fn a_worker_that_left_its_group_dies_with_its_killed_host(mode: &str) {
    let dir = temp_dir("r6-left-group");
    let (mut host, report) = host_with_report(mode, &dir.join("state"));
    let worker = as_pid(&report, "worker");
    let pgid = as_pid(&report, "pgid");
    let template = as_pid(&report, "template");
    assert_ne!(worker, pgid, "the worker left its group: {report}");
    assert!(alive(worker), "{report}");
    kill_9(host.id());
    host.wait().unwrap();
    let gone = eventually(20, || !alive(worker)).await;
    let template_gone = template == 0 || eventually(10, || !alive(template)).await;
    for p in [worker, template] {
        if p != 0 {
            kill_9(p);
        }
    }
    assert!(
        gone,
        "worker {worker} (in group {pgid}) outlived its host's SIGKILL ({mode})"
    );
    assert!(template_gone, "template {template} outlived its host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_worker_that_left_its_group_dies_with_its_killed_host() {
    a_worker_that_left_its_group_dies_with_its_killed_host("left_group_preload").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_worker_that_left_its_group_dies_with_its_killed_host() {
    a_worker_that_left_its_group_dies_with_its_killed_host("left_group_direct").await;
}

/// `tests/workers/round6_proc_template.py`: a template that forks real
/// workers but reports `reported` as each one's pid, and writes the real
/// pid to `child_file`.
struct ForgingTemplate {
    reported: u64,
    child_file: PathBuf,
}

impl Adapter for ForgingTemplate {
    fn launch(&self) -> Launch {
        Launch::new(python())
            .arg(root().join("crates/core/tests/workers/round6_proc_template.py"))
            .env("PYTHONPATH", root().join("bridges/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("R6_REPORTED_PID", self.reported.to_string())
            .env("R6_CHILD_FILE", &self.child_file)
            .preloaded()
    }
}

/// A `sleep` leading a process group of its own: a bystander the pool must
/// never signal.
#[allow(clippy::disallowed_methods)] // a bystander, not a worker
fn bystander() -> std::process::Child {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .unwrap()
}

/// docs/preload.md, "Reaping": "the pool signals that pid's group from
/// then on, so any other pid (another process, 0, 1, the template's own)
/// fails the fork, naming the pid". A pid is a 32-bit signed number to the
/// kernel: a template reporting 2^32 - P (no process has such a pid, so it
/// looks like one already reaped) would have the pool's kill of "its
/// group" land on process P, and its SIGINT on P's group. Reported so, and
/// as 2^31 (which cannot be negated as a signed pid), the fork must fail
/// naming the number, and the bystander P must live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_reporting_a_pid_beyond_the_kernels_range_fails_the_fork() {
    let dir = temp_dir("r6-forged-pid");
    let mut victim = bystander();
    let v = victim.id();
    for (i, reported) in [(1u64 << 32) - u64::from(v), 1 << 31]
        .into_iter()
        .enumerate()
    {
        let child_file = dir.join(format!("child{i}"));
        let started = builder(ForgingTemplate {
            reported,
            child_file: child_file.clone(),
        })
        .size(1)
        .configure(|c| {
            c.state_dir = Some(dir.join("state"));
            c.breaker_threshold = 1;
        })
        .start()
        .await;
        let outcome = match started {
            Ok(pool) => {
                let call = pool.execute("pid", json!({})).await;
                let _ = tokio::time::timeout(Duration::from_secs(30), pool.shutdown()).await;
                format!("the pool started; a call gave {call:?}")
            }
            Err(e) => e.to_string(),
        };
        // Whatever the pool did with that number, it has done it by now.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let victim_alive = alive(v);
        if let Some(child) = std::fs::read_to_string(&child_file)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
        {
            kill_9(child);
        }
        if !victim_alive {
            let _ = victim.wait();
            panic!("the pool signalled bystander {v} for a reported pid {reported}: {outcome}");
        }
        assert!(
            outcome.contains(&format!("pid {reported}")),
            "a reported pid {reported} did not fail the fork by name: {outcome}"
        );
    }
    kill_9(v);
    let _ = victim.wait();
}

/// The process group `pid` is in (`/proc/<pid>/stat`, field 5).
fn group_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// Starts `sleep 300` on a thread of its own that then ends, set up by
/// `die_with_this_thread` when `tied`; the helper (handed out of the
/// thread, to be reaped) and its group.
#[allow(clippy::disallowed_methods)] // a helper process, as `snakepit doctor` runs
fn sleep_from_a_thread_that_ends(tied: bool) -> (std::process::Child, Option<u32>) {
    std::thread::spawn(move || {
        let mut command = std::process::Command::new("sleep");
        command.arg("300");
        if tied {
            snakepit_core::die_with_this_thread(&mut command);
        }
        let child = command.spawn().unwrap();
        let group = group_of(child.id());
        // The thread ends with the helper still running.
        (child, group)
    })
    .join()
    .unwrap()
}

/// The rustdoc of `snakepit_core::die_with_this_thread`: the helper
/// "leads a process group of its own, and is killed (SIGKILL) when the
/// thread that spawns it ends". A helper started so from a thread that
/// ends is gone soon after; the same helper started without it (the
/// control) lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helper_dies_with_the_thread_that_started_it() {
    let (mut tied, tied_group) = sleep_from_a_thread_that_ends(true);
    let (mut control, _) = sleep_from_a_thread_that_ends(false);
    let (t, c) = (tied.id(), control.id());
    let tied_gone = eventually(20, || !alive(t)).await;
    let control_alive = alive(c);
    for child in [&mut tied, &mut control] {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert_eq!(tied_group, Some(t), "the helper leads its own group");
    assert!(tied_gone, "helper {t} outlived the thread that started it");
    assert!(
        control_alive,
        "the control {c} died too: the test shows nothing"
    );
}

/// The rustdoc of `snakepit_core::kill_group`: it kills "a helper process
/// set up by `die_with_this_thread` ... and whatever it started", and is
/// "false when no such group is left". A helper `sh` that started a
/// `sleep`: both die; once they are reaped the same call is false. (0, 1
/// and numbers no pid can have are refused before `kill(2)` sees them:
/// `os.rs`, `numbers_that_name_no_single_process_are_never_signalled`,
/// with signal 0, since SIGKILL to -1 would reach every process.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods)] // a helper process, as `snakepit doctor` runs
async fn kill_group_takes_a_helper_and_what_it_started_then_is_false() {
    use std::io::BufRead;
    let mut command = std::process::Command::new("sh");
    command
        .args(["-c", "sleep 300 & echo $!; wait"])
        .stdout(std::process::Stdio::piped());
    snakepit_core::die_with_this_thread(&mut command);
    let mut helper = command.spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(helper.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let sleep: u32 = line.trim().parse().unwrap();
    let pid = helper.id();
    assert!(alive(sleep) && alive(pid));
    assert!(snakepit_core::kill_group(pid), "a live group");
    helper.wait().unwrap();
    let sleep_gone = eventually(20, || !alive(sleep)).await;
    kill_9(sleep);
    assert!(sleep_gone, "the helper's child {sleep} outlived kill_group");
    // Both reaped (the `sleep` by whoever adopted it): the group is gone.
    let reaped = eventually(20, || {
        !Path::new(&format!("/proc/{sleep}")).exists()
            && !Path::new(&format!("/proc/{pid}")).exists()
    })
    .await;
    assert!(reaped, "the group's processes were not reaped");
    assert!(
        !snakepit_core::kill_group(pid),
        "kill_group of a group that is gone is true"
    );
}

/// A run record of a crashed run (its host `a_dead_pid()`) for `run_id`,
/// padded with lines the sweep ignores to exactly `len` bytes.
fn record_of_length(run_id: &str, len: usize) -> String {
    let mut text = forged_record(
        run_id,
        a_dead_pid(),
        Some((our_pid_namespace(), &our_boot_id())),
    );
    while text.len() < len {
        let room = len - text.len();
        // "pad " + filler + "\n": at least 5 bytes; the last line takes
        // what is left (a 4-byte gap is filled by widening the line before).
        let line = if room >= 1000 + 5 + 5 { 1000 } else { room - 5 };
        text.push_str("pad ");
        text.push_str(&"x".repeat(line));
        text.push('\n');
    }
    assert_eq!(text.len(), len);
    text
}

/// docs/reliability.md: the sweep reads a record "only if it is a regular
/// file owned by this user of at most 1 MiB (`RECORD_MAX_BYTES`)". At the
/// boundary: a crashed run's record of exactly `RECORD_MAX_BYTES` bytes is
/// read (its leftover is killed, the record removed); one byte more is
/// reported unreadable, kills nothing and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_of_exactly_the_limit_is_swept_and_one_byte_more_is_not_read() {
    use snakepit_core::sweep::{sweep, SweepOptions, RECORD_MAX_BYTES};
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("r6-record-limit");
    let state = dir.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let max = RECORD_MAX_BYTES as usize;
    let (at, over) = (a_run_id("7e57000000000601"), a_run_id("7e57000000000602"));
    let (left_at, left_over) = (a_leftover(&at), a_leftover(&over));
    let record_at = state.join(format!("forged.1.{at}.run"));
    let record_over = state.join(format!("forged.2.{over}.run"));
    std::fs::write(&record_at, record_of_length(&at, max)).unwrap();
    std::fs::write(&record_over, record_of_length(&over, max + 1)).unwrap();
    let report = sweep(&SweepOptions::new().state_dir(&state)).unwrap();
    let swept = eventually(10, || !alive(left_at)).await;
    let spared = alive(left_over);
    kill_9(left_at);
    kill_9(left_over);
    assert!(
        swept,
        "the leftover of a record of {max} bytes lives: {report:?}"
    );
    assert!(!record_at.exists(), "{report:?}");
    assert_eq!(report.killed(), 1, "{report:?}");
    assert!(spared, "a record of {} bytes was read: {report:?}", max + 1);
    assert!(record_over.exists());
    assert_eq!(report.unreadable, vec![record_over], "{report:?}");
}

/// The parent of `pid` (`/proc/<pid>/stat`, field 4).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Makes this test process adopt the orphans below it, as a container's
/// first process (or a service manager) does.
#[allow(unsafe_code)]
fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
}

/// Reaps whatever this process adopted and has ended.
#[allow(unsafe_code)]
fn reap_adopted() {
    // SAFETY: waitpid on any child, without blocking, no status kept.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

/// docs/preload.md: "If the template dies, running workers keep serving";
/// "The pool also watches each worker through a pidfd, so it learns of an
/// exit even when the template is gone". A host that adopts orphans (the
/// first process of a container, or a subreaper) becomes the parent of
/// those workers, and nobody else can reap them: a worker that then ends
/// must not stay a zombie of the host for the host's life (one per worker
/// alive when a template died, each holding a pid).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_worker_adopted_by_its_host_is_reaped_when_it_ends() {
    become_subreaper();
    let dir = temp_dir("r6-adopted");
    let pool = builder(ProcWorker { preload: true })
        .size(1)
        .configure(|c| c.state_dir = Some(dir.join("state")))
        .start()
        .await
        .unwrap();
    let worker = as_pid(&pool.execute("pid", json!({})).await.unwrap(), "pid");
    let template = pool.template_pid().expect("a template");
    kill_9(template);
    let me = std::process::id();
    let adopted = eventually(30, || parent_of(worker) == Some(me)).await;
    kill_9(worker);
    let replaced = eventually(60, || {
        pool.worker_pids().first().is_some_and(|&p| p != worker)
    })
    .await;
    let reaped = eventually(20, || !Path::new(&format!("/proc/{worker}")).exists()).await;
    pool.shutdown().await.unwrap();
    reap_adopted();
    assert!(adopted, "the worker {worker} was not adopted by the host");
    assert!(replaced, "the worker was not replaced");
    assert!(
        reaped,
        "the ended worker {worker} stays a zombie of the host that adopted it"
    );
}

/// This process as `SNAKEPIT_HOST` names a host: `pid:start:dev:inode`.
fn our_host_token() -> String {
    let me = std::process::id();
    let stat = std::fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
    let start: u64 = stat[stat.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let (dev, ino) = our_pid_namespace();
    format!("{me}:{start}:{dev}:{ino}")
}

/// A `sleep` run as uid 65534 (`nobody`; the tests run as root) with
/// `env` in its environment: another user's process.
#[allow(clippy::disallowed_methods)] // another user's process, not a worker
fn another_users_process(env: &[(&str, &str)]) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("sleep")
        .arg("300")
        .envs(env.iter().copied())
        .uid(65534)
        .gid(65534)
        .process_group(0)
        .spawn()
        .unwrap()
}

/// docs/reliability.md: run ids are in the workers' environment, "which
/// only the same user and root can read, and that is all the sweep
/// needs"; "somebody else's process ... is never touched". Another user
/// who learned a run id (a state directory of mode 0755 shows it in every
/// record's name) runs a process carrying it and naming a live host in
/// `SNAKEPIT_HOST`. A sweep run as root must neither kill that process nor
/// let it vouch for the crashed run: the run's real leftover is killed and
/// its record removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_process_with_a_crashed_runs_id_is_neither_killed_nor_believed() {
    use snakepit_core::sweep::{sweep, SweepOptions};
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("r6-other-user");
    let state = dir.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let run_id = a_run_id("7e57000000000603");
    let leftover = a_leftover(&run_id);
    let token = our_host_token();
    let mut forger = another_users_process(&[
        ("SNAKEPIT_RUN_ID", run_id.as_str()),
        ("SNAKEPIT_HOST", token.as_str()),
    ]);
    let forger_pid = forger.id();
    let record = state.join(format!("forged.1.{run_id}.run"));
    std::fs::write(
        &record,
        forged_record(
            &run_id,
            a_dead_pid(),
            Some((our_pid_namespace(), &our_boot_id())),
        ),
    )
    .unwrap();
    let report = sweep(&SweepOptions::new().state_dir(&state)).unwrap();
    let swept = eventually(10, || !alive(leftover)).await;
    let forger_alive = alive(forger_pid);
    kill_9(leftover);
    let _ = forger.kill();
    let _ = forger.wait();
    assert!(
        forger_alive,
        "another user's process was killed: {report:?}"
    );
    assert!(
        swept && !record.exists(),
        "another user's process kept the crashed run from being swept: {report:?}"
    );
    assert_eq!(report.killed(), 1, "{report:?}");
}

/// docs/reliability.md, run id: at its end the pool kills "every process
/// of the run that is not its own child, each found through `/proc`". A
/// process of another user that carries the run's id (learned from a
/// record's name) is not the run's: a pool run by root must not kill it
/// at `shutdown()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_process_with_a_live_runs_id_survives_the_pools_end() {
    let dir = temp_dir("r6-other-user-end");
    let state = dir.join("state");
    let pool = builder(ProcWorker { preload: false })
        .size(1)
        .name("round6-other-user")
        .configure(|c| c.state_dir = Some(state.clone()))
        .start()
        .await
        .unwrap();
    pool.execute("pid", json!({})).await.unwrap();
    let name = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(".run"))
        .expect("a run record");
    // `<instance>.<host pid>.<run id>.run`
    let run_id = name
        .trim_end_matches(".run")
        .rsplit('.')
        .next()
        .unwrap()
        .to_owned();
    let mut forger = another_users_process(&[("SNAKEPIT_RUN_ID", run_id.as_str())]);
    let forger_pid = forger.id();
    pool.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let forger_alive = alive(forger_pid);
    let _ = forger.kill();
    let _ = forger.wait();
    assert!(
        forger_alive,
        "the pool's end killed another user's process carrying its run id {run_id}"
    );
}

/// docs/reliability.md: a file named `*.run` that is not a readable record
/// "is reported in `SweepReport::unreadable` and left alone". Two sweeps
/// of one directory at once (two pools of one name starting together, or
/// `snakepit sweep` beside a pool's start), over 300 records of crashed
/// runs, 30 times: a record the other sweep removed under this one is
/// gone, not unreadable, and every record is removed by one sweep or the
/// other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sweeps_at_once_report_no_record_the_other_removed_as_unreadable() {
    use snakepit_core::sweep::{sweep, SweepOptions};
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("r6-two-sweeps");
    let state = dir.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let dead = a_dead_pid();
    let here = Some((our_pid_namespace(), our_boot_id()));
    let mut total = 0;
    for round in 0..30 {
        for i in 0..300u32 {
            let run_id = format!("{round:08x}{i:08x}{:016x}", std::process::id());
            let text = forged_record(&run_id, dead, here.as_ref().map(|(n, b)| (*n, b.as_str())));
            std::fs::write(state.join(format!("forged.{i}.{run_id}.run")), text).unwrap();
        }
        let together = std::sync::Arc::new(std::sync::Barrier::new(2));
        let sweeps: Vec<_> = (0..2)
            .map(|_| {
                let (state, together) = (state.clone(), together.clone());
                std::thread::spawn(move || {
                    together.wait();
                    sweep(&SweepOptions::new().state_dir(&state)).unwrap()
                })
            })
            .collect();
        let reports: Vec<_> = sweeps.into_iter().map(|s| s.join().unwrap()).collect();
        let left = std::fs::read_dir(&state).unwrap().count();
        assert_eq!(left, 0, "records left after two sweeps: {reports:?}");
        for r in &reports {
            assert!(
                r.unreadable.is_empty(),
                "a record the other sweep removed was reported unreadable: {:?}",
                r.unreadable
            );
        }
        total += reports.iter().map(|r| r.stale_runs.len()).sum::<usize>();
    }
    assert!(
        total >= 1500,
        "each record was judged by one sweep at least"
    );
}
