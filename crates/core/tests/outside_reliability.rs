//! An outside tester's pass over docs/reliability.md, docs/protocol.md and
//! docs/bridges.md: each test here shows a promise of those pages that no
//! other test showed (or showed only below the pool, on the decoder), with
//! real worker processes: the bundled bridges, the test worker, and
//! `workers/outside_reliability_worker.py` (a worker without the bridge
//! that misbehaves in the ways the pages name).
//!
//! The sweep tests plant what a crashed run leaves (a record, processes
//! carrying its run id) by hand, as the other sweep tests do.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use snakepit_core::sweep::{sweep, SweepOptions, SweepReport, UnsafeStateDir};
use snakepit_core::{
    Adapter, CallOptions, Error, ExitReason, Launch, Pool, PoolBuilder, RawProcess, WireCodec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NOBODY: u32 = 65534;

/// `workers/outside_reliability_worker.py` in `mode`, logging to `log`.
struct Outside {
    mode: &'static str,
    log: Option<PathBuf>,
}

impl Outside {
    fn new(mode: &'static str) -> Self {
        Outside { mode, log: None }
    }

    fn logging(mode: &'static str, log: &Path) -> Self {
        Outside {
            mode,
            log: Some(log.to_owned()),
        }
    }
}

impl Adapter for Outside {
    fn launch(&self) -> Launch {
        let mut l = Launch::new(python())
            .arg(root().join("crates/core/tests/workers/outside_reliability_worker.py"))
            .arg(self.mode);
        if let Some(log) = &self.log {
            l = l.arg(log);
        }
        l
    }
    fn command_timeout(&self, _: &str) -> Duration {
        Duration::from_secs(20)
    }
}

/// A one-worker pool of `adapter`, with health checks off.
fn one_worker(adapter: impl Adapter) -> PoolBuilder {
    builder(adapter)
        .size(1)
        .configure(|c| c.health_check_interval = Duration::ZERO)
}

/// The pool of `builder`, started.
async fn start(builder: PoolBuilder) -> Pool {
    builder.start().await.unwrap()
}

/// A one-worker pool of the test worker named `name` (its instance), whose
/// state directory is `dir`.
fn one_test_worker_in(dir: &Path, name: &str) -> PoolBuilder {
    let dir = dir.to_owned();
    one_worker(TestWorker::new())
        .name(name)
        .configure(|c| c.state_dir = Some(dir))
}

/// Whether `pid` is gone within `secs` seconds; if not, it is killed, so
/// that a failing test leaves no process behind.
async fn gone_or_killed(pid: u32, secs: u64) -> bool {
    let gone = eventually(secs, || !alive(pid)).await;
    if !gone {
        kill_9(pid);
    }
    gone
}

/// What a sweep of state directory `dir` did.
fn sweep_of(dir: &Path) -> SweepReport {
    sweep(&SweepOptions::new().state_dir(dir)).unwrap()
}

/// The control of a test that spared `orphan`: a sweep of `dir` now kills
/// it, and nothing else.
async fn the_next_sweep_takes(dir: &Path, orphan: u32) {
    let report = sweep_of(dir);
    let gone = gone_or_killed(orphan, 5).await;
    assert_eq!(report.killed(), 1, "{report:?}");
    assert!(gone, "the control orphan was not swept");
}

/// The lines of `log`, split on spaces.
fn log_lines(log: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split(' ').map(str::to_owned).collect())
        .collect()
}

/// Field 22 of `/proc/<pid>/stat`: the process's start time in clock ticks
/// since boot, the unit of run records.
fn start_of(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(19).unwrap().parse().unwrap()
}

/// A run record of this PID namespace and boot, by hand: its host `pid`
/// with start time `start`, and `workers` as `(pid, start time)`.
fn record_text(run_id: &str, host: u32, start: u64, workers: &[(u32, u64)]) -> String {
    record_of("outside", our_pid_namespace(), run_id, host, start, workers)
}

/// The same, for pool name `instance`, written in PID namespace `pidns`.
fn record_of(
    instance: &str,
    (dev, ino): (u64, u64),
    run_id: &str,
    host: u32,
    start: u64,
    workers: &[(u32, u64)],
) -> String {
    let mut text = format!(
        "snakepit-run 1\ninstance {instance}\nrun_id {run_id}\nhost {host} {start}\npidns {dev} {ino}\nboot {}\n",
        our_boot_id()
    );
    for (pid, start) in workers {
        text.push_str(&format!("worker {pid} {start}\n"));
    }
    text
}

/// A process carrying `run_id` and naming `host` as its host
/// (`SNAKEPIT_HOST`), in a session of its own, orphaned: a worker's child
/// that kept its environment and escaped.
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
    let pid: u32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid));
    pid
}

// ---------------------------------------------------------------------
// The sweep: when a run counts as dead, which of its processes go
// ---------------------------------------------------------------------

/// docs/reliability.md:95-97: "For a crashed run, the sweep kills a process
/// only if its environment carries that run's id, **and** it is a recorded
/// worker with the recorded start time, or it started after that run's host
/// did". A process carrying the run's id that started before the recorded
/// host did is spared, whether the record does not name it or names its
/// pid with another start time (a reused pid); named with its true start
/// time, it is the run's worker and is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_older_than_the_runs_host_is_spared_unless_recorded_as_its_worker() {
    let dir = temp_dir("outside-older");
    let run_id = &a_run_id("0123456789abcdef");
    let leftover = a_leftover(run_id);
    let born = start_of(leftover);
    // The host "started" after the leftover did.
    let host_start = born + 1;
    let record = dir.join(format!("outside.{}.{run_id}.run", a_dead_pid()));

    for (what, workers) in [
        ("not named in the record", vec![]),
        (
            "named with another start time",
            vec![(leftover, born.saturating_sub(1))],
        ),
    ] {
        std::fs::write(
            &record,
            record_text(run_id, a_dead_pid(), host_start, &workers),
        )
        .unwrap();
        let report = sweep_of(&dir);
        assert_eq!(report.killed(), 0, "{what}: {report:?}");
        assert_eq!(report.stale_runs.len(), 1, "{what}: {report:?}");
        assert!(
            alive(leftover),
            "{what}: a process older than the run's host was killed"
        );
    }

    std::fs::write(
        &record,
        record_text(run_id, a_dead_pid(), host_start, &[(leftover, born)]),
    )
    .unwrap();
    let report = sweep_of(&dir);
    assert_eq!(report.killed(), 1, "{report:?}");
    assert!(report.stale_runs[0].killed[0].worker, "{report:?}");
    assert!(
        gone_or_killed(leftover, 5).await,
        "the recorded worker was not swept"
    );
    assert!(!record.exists(), "the crashed run's record is removed");
    let _ = std::fs::remove_dir_all(dir);
}

/// docs/reliability.md:89-91: "its host is alive: same pid, same start
/// time | left alone ... | its host is gone | a crashed run". A record whose
/// host pid is a live process with another start time (the pid was reused)
/// is a crashed run: its leftover is killed and its record removed. The
/// same record with the live process's true start time is left alone,
/// counted in `active_runs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_pid_reused_by_another_process_is_a_dead_host() {
    let dir = temp_dir("outside-reused");
    let run_id = &a_run_id("00ff00ff00ff00ff");
    let leftover = a_leftover(run_id);
    let me = std::process::id();
    let record = dir.join(format!("outside.{me}.{run_id}.run"));

    std::fs::write(&record, record_text(run_id, me, start_of(me), &[])).unwrap();
    let report = sweep_of(&dir);
    assert_eq!((report.active_runs, report.killed()), (1, 0), "{report:?}");
    assert!(record.exists() && alive(leftover));

    // The same pid, but the start time of an earlier process.
    std::fs::write(&record, record_text(run_id, me, 1, &[])).unwrap();
    let report = sweep_of(&dir);
    assert_eq!(report.active_runs, 0, "{report:?}");
    assert_eq!(report.killed(), 1, "{report:?}");
    assert!(
        gone_or_killed(leftover, 5).await,
        "the leftover of a host whose pid was reused lives"
    );
    assert!(!record.exists());
    let _ = std::fs::remove_dir_all(dir);
}

/// docs/reliability.md:95-97: a leftover of a crashed run is killed. One
/// caught in the middle of an `exec` (its `/proc/<pid>/environ` reads empty
/// for a moment) is still the run's: a process that re-executes itself in
/// a loop, seen by 300 dry-run sweeps, is found by every one of them. (In
/// CI a leftover started just before the sweep was missed so.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods)] // a planted leftover, killed by the test
async fn a_leftover_in_the_middle_of_an_exec_is_found_by_every_sweep() {
    let dir = temp_dir("outside-exec");
    let run_id = &a_run_id("0e0e0e0e0e0e0e0e");
    let script = dir.join("again.sh");
    std::fs::write(&script, "exec /bin/sh \"$0\"\n").unwrap();
    // In a session of its own, as an escaped leftover is (setsid, not a
    // group leader here, executes its command in place: the pid stays).
    let mut looping = std::process::Command::new("setsid")
        .arg("/bin/sh")
        .arg(&script)
        .env("SNAKEPIT_RUN_ID", run_id)
        .env_remove("SNAKEPIT_HOST")
        .spawn()
        .unwrap();
    let pid = looping.id();
    let record = dir.join(format!("outside.{}.{run_id}.run", a_dead_pid()));
    std::fs::write(&record, record_text(run_id, a_dead_pid(), 1, &[])).unwrap();
    let options = SweepOptions::new().state_dir(&dir).dry_run(true);
    let missed = (0..300)
        .filter(|_| {
            let report = sweep(&options).unwrap();
            !report.stale_runs[0].killed.iter().any(|p| p.pid == pid)
        })
        .count();
    let _ = looping.kill();
    let _ = looping.wait();
    assert_eq!(missed, 0, "sweeps that did not see the leftover");
    let _ = std::fs::remove_dir_all(dir);
}

/// docs/reliability.md:98-109: a process is killed only if "no process of
/// the run has a live host ... If any process of the run has a live host,
/// the record lied ...: nothing of the run is killed and the record is
/// kept." A record of a dead host; one orphan of the run with no host in
/// its environment (alone, it would be swept) and one process of the run
/// whose `SNAKEPIT_HOST` names this live test process: nothing is killed,
/// the record stays. Once the hosted process is gone, the orphan is swept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_with_a_live_host_spares_every_process_of_the_run() {
    let dir = temp_dir("outside-mixed");
    let run_id = &a_run_id("5a5a5a5a5a5a5a5a");
    let orphan = a_leftover(run_id);
    let (dev, ino) = our_pid_namespace();
    let me = std::process::id();
    let hosted = a_leftover_hosted_by(run_id, &format!("{me}:{}:{dev}:{ino}", start_of(me)));
    let record = dir.join(format!("outside.{}.{run_id}.run", a_dead_pid()));
    std::fs::write(&record, record_text(run_id, a_dead_pid(), 1, &[])).unwrap();

    let report = sweep_of(&dir);
    let spared = (alive(orphan), alive(hosted));
    kill_9(hosted);
    assert_eq!(report.killed(), 0, "{report:?}");
    assert_eq!(report.active_runs, 1, "{report:?}");
    assert_eq!(spared, (true, true), "a process of a hosted run was killed");
    assert!(
        record.exists(),
        "the record of a run with a live host stays"
    );

    assert!(eventually(5, || !alive(hosted)).await);
    the_next_sweep_takes(&dir, orphan).await;
    let _ = std::fs::remove_dir_all(dir);
}

/// docs/reliability.md:90: "its host is gone, but another record of the
/// same run id is alive or foreign | a copy of a live run's record: left
/// alone, counted in `active_runs`". (The alive case is shown in
/// state_dir.rs; here the foreign one.) Two records of one run: one written
/// in another PID namespace (alive: a process runs in it), one naming a dead host here; an orphan of the
/// run lives. The sweep kills nothing, counts one foreign run and one
/// active run, and keeps both records. Without the foreign record, the same
/// dead host's record is a crashed run and the orphan goes (the control).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_hosts_record_of_a_run_also_recorded_in_another_namespace_is_a_copy() {
    let dir = temp_dir("outside-foreign-copy");
    let run_id = &a_run_id("c0c0c0c0c0c0c0c0");
    let orphan = a_leftover(run_id);
    let (mut container, other) = another_pid_namespace();
    let foreign = dir.join(format!("outside.1.{run_id}.run"));
    std::fs::write(&foreign, record_of("outside", other, run_id, 1, 1, &[])).unwrap();
    let copy = dir.join(format!("outside.{}.{run_id}.run", a_dead_pid()));
    std::fs::write(&copy, record_text(run_id, a_dead_pid(), 1, &[])).unwrap();

    let report = sweep_of(&dir);
    let _ = container.kill();
    let _ = container.wait();
    assert_eq!(report.killed(), 0, "{report:?}");
    assert_eq!(
        (report.foreign_runs, report.active_runs),
        (1, 1),
        "{report:?}"
    );
    assert!(report.stale_runs.is_empty(), "{report:?}");
    assert!(foreign.exists() && copy.exists(), "a record was removed");
    assert!(
        alive(orphan),
        "a process of a run alive elsewhere was killed"
    );

    std::fs::remove_file(&foreign).unwrap();
    the_next_sweep_takes(&dir, orphan).await;
    assert!(!copy.exists());
    let _ = std::fs::remove_dir_all(dir);
}

/// docs/reliability.md:77-83: "When a pool starts
/// (`PoolConfig::sweep_on_start`, on by default) it reads the records of
/// its own instance". Two crashed runs in one state directory, each with
/// an orphan: one of instance `outsidemine`, one of `outsideother`. A pool
/// named `outsidemine` starts there: its start-up sweep kills its own
/// instance's orphan (one, as `EventKind::Swept` says) and removes that
/// record; the other instance's orphan and record are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pools_start_up_sweep_takes_only_its_own_instances_runs() {
    use snakepit_core::events::EventKind;
    use std::sync::{Arc, Mutex};

    let dir = temp_dir("outside-instance");
    let here = our_pid_namespace();
    let mine_id = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
    let other_id = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";
    let mine = a_leftover(mine_id);
    let other = a_leftover(other_id);
    let mine_record = dir.join(format!("outsidemine.{}.{mine_id}.run", a_dead_pid()));
    let other_record = dir.join(format!("outsideother.{}.{other_id}.run", a_dead_pid()));
    std::fs::write(
        &mine_record,
        record_of("outsidemine", here, mine_id, a_dead_pid(), 1, &[]),
    )
    .unwrap();
    std::fs::write(
        &other_record,
        record_of("outsideother", here, other_id, a_dead_pid(), 1, &[]),
    )
    .unwrap();

    let swept = Arc::new(Mutex::new(None));
    let seen = swept.clone();
    let pool = one_test_worker_in(&dir, "outsidemine")
        .on_event(move |e| {
            if let EventKind::Swept { killed } = e.kind {
                *seen.lock().unwrap().get_or_insert(0) += killed;
            }
        })
        .start()
        .await
        .unwrap();
    let mine_gone = eventually(5, || !alive(mine)).await;
    let other_lives = alive(other);
    let other_kept = other_record.exists();
    let mine_kept = mine_record.exists();
    pool.shutdown().await.unwrap();
    for p in [mine, other] {
        if alive(p) {
            kill_9(p);
        }
    }
    assert!(mine_gone, "the pool's own crashed run was not swept");
    assert_eq!(*swept.lock().unwrap(), Some(1), "Swept {{ killed }}");
    assert!(!mine_kept, "its own crashed run's record stays");
    assert!(other_lives, "another instance's leftover was killed");
    assert!(other_kept, "another instance's record was removed");
    let _ = std::fs::remove_dir_all(dir);
}

/// docs/reliability.md:37-51: an existing state directory is used only if
/// it "sits below directories that no other user can rename it out of
/// (each owned by this user or root, and writable by others only with the
/// sticky bit, as `/tmp` is)". Otherwise `sweep()` fails with
/// `PermissionDenied` wrapping `UnsafeStateDir` naming the directory, and a
/// pool still starts and writes no record. A private directory below
/// another user's directory (mode 0755, writable by nobody else, but that
/// user can rename our directory away) is refused, and so is one below
/// another user's sticky directory; below a sticky world-writable directory
/// of root's, it is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_below_another_users_directory_is_refused() {
    let base = temp_dir("outside-parent");
    for (name, mode, owner, safe) in [
        ("theirs", 0o755, NOBODY, false),
        ("theirs-sticky", 0o1777, NOBODY, false),
        ("roots-sticky", 0o1777, 0, true),
    ] {
        let parent = base.join(name);
        std::fs::create_dir(&parent).unwrap();
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(mode)).unwrap();
        let dir = parent.join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&parent, Some(owner), Some(owner)).unwrap();

        let verdict = sweep(&SweepOptions::new().state_dir(&dir));
        let pool = one_test_worker_in(&dir, "outsideparent")
            .start()
            .await
            .unwrap_or_else(|e| panic!("{name}: a pool starts: {e}"));
        assert!(pool.execute("echo", json!({})).await.is_ok(), "{name}");
        let records = std::fs::read_dir(&dir).unwrap().count();
        pool.shutdown().await.unwrap();
        if safe {
            assert!(verdict.is_ok(), "{name}: {verdict:?}");
            assert_eq!(records, 1, "{name}: the run record is written");
        } else {
            let err = verdict.expect_err(name);
            assert_eq!(
                err.kind(),
                std::io::ErrorKind::PermissionDenied,
                "{name}: {err}"
            );
            let typed = err
                .get_ref()
                .and_then(|e| e.downcast_ref::<UnsafeStateDir>())
                .unwrap_or_else(|| panic!("{name}: not an UnsafeStateDir: {err:?}"));
            assert_eq!(typed.dir, dir, "{name}");
            assert!(
                err.to_string().contains(&parent.display().to_string()),
                "{name}: the message names the directory at fault: {err}"
            );
            assert_eq!(records, 0, "{name}: a record was written below {parent:?}");
        }
        let _ = std::os::unix::fs::chown(&parent, Some(0), Some(0));
    }
    let _ = std::fs::remove_dir_all(base);
}

// ---------------------------------------------------------------------
// Worker deaths, orphans and signals
// ---------------------------------------------------------------------

/// docs/reliability.md:20: "when a worker ends (a crash, a kill, recycling,
/// a retirement) the pool kills the processes that carry its worker id".
/// A kill and recycling are shown elsewhere; here the worker crashes by
/// itself (`os._exit(3)` in a handler) while a child of its own that left
/// its process group (`setsid`) lives. The call fails as a crash with exit
/// code 3, the escaped child dies while the pool still runs (not at its
/// end), and the replacement serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_crashes_by_itself_takes_its_escaped_child_with_it() {
    let pool = start(one_worker(TestWorker::new())).await;
    let r = pool.execute("spawn_escaped", json!({})).await.unwrap();
    let child = r["child_pid"].as_u64().unwrap() as u32;
    let worker = r["pid"].as_u64().unwrap() as u32;
    assert!(alive(child));
    let err = pool.execute("exit", json!({"code": 3})).await.unwrap_err();
    match &err {
        Error::WorkerCrashed(crash) => {
            assert_eq!(crash.pid, worker, "{err}");
            assert_eq!(crash.exit, ExitReason::Code(3), "{err}");
        }
        other => panic!("not a crash: {other:?}"),
    }
    assert!(err.is_crash(), "{err}");
    assert!(
        gone_or_killed(child, 10).await,
        "the escaped child of a crashed worker outlived it"
    );
    let next = pool.execute("pid", json!({})).await.unwrap();
    assert_ne!(next["pid"].as_u64().unwrap() as u32, worker);
    pool.shutdown().await.unwrap();
}

/// docs/reliability.md:20, as above, for children caught in the middle of
/// an `exec` when their worker ends (their environment, which names the
/// worker, reads empty or cut short for a moment): 48 escaped children
/// that re-execute themselves in a loop, in four rounds of a worker crash
/// (each worker lives over a second first: one that ends sooner is a
/// failed start). Every one dies while the pool still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_children_in_the_middle_of_an_exec_die_with_their_worker() {
    let dir = temp_dir("outside-exec-escaped");
    let script = dir.join("again.sh");
    std::fs::write(&script, "exec /bin/sh \"$0\"\n").unwrap();
    let pool = start(one_worker(TestWorker::new())).await;
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let r = pool
            .execute(
                "spawn_escaped",
                json!({"argv": ["/bin/sh", script], "count": 48}),
            )
            .await
            .unwrap();
        let children: Vec<u32> = r["child_pids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap() as u32)
            .collect();
        let err = pool.execute("exit", json!({"code": 3})).await.unwrap_err();
        assert!(err.is_crash(), "round {round}: {err}");
        let mut survivors = Vec::new();
        for child in children {
            if !gone_or_killed(child, 10).await {
                survivors.push(child);
            }
        }
        assert!(
            survivors.is_empty(),
            "round {round}: escaped children that outlived their worker: {survivors:?}"
        );
    }
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// docs/protocol.md:277-280, Shutdown: "The pool closes the worker's
/// stdin ... Past the grace period the pool sends SIGTERM to the worker's
/// process group, then SIGKILL." A worker that ignores the end of its
/// stdin has a child in its process group that logs SIGTERM and ignores
/// it. At `shutdown()` the child gets SIGTERM too (the signal went to the
/// group, not to the worker alone), and it is dead soon after shutdown
/// returns (the group's SIGKILL, or the pool's end-of-run kill: this test
/// does not tell the two apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_signals_the_workers_whole_process_group() {
    let log = temp_dir("outside-group").join("log");
    let pool = start(one_worker(Outside::logging("group", &log))).await;
    let r = pool.execute("child", json!({})).await.unwrap();
    let child = r["child_pid"].as_u64().unwrap() as u32;
    let ready = format!("child-ready {child}");
    assert!(
        eventually(20, || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&ready))
        .await,
        "the child installed its handler"
    );
    pool.shutdown().await.unwrap();
    let dead = gone_or_killed(child, 10).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("worker-term"),
        "the worker got SIGTERM: {text}"
    );
    assert!(
        text.contains(&format!("child-term {child}")),
        "SIGTERM went to the worker alone, not to its process group: {text}"
    );
    assert!(dead, "the child that ignored SIGTERM outlived the shutdown");
}

// ---------------------------------------------------------------------
// Deadlines and cancellation
// ---------------------------------------------------------------------

/// docs/bridges.md:551-555: "What the pool does when a call's deadline
/// passes: it answers the caller (`Error::CallTimeout`), sends `cancel` or
/// SIGINT, and waits for the worker's reply for up to
/// `PoolConfig::shutdown_grace_period` ..., during which the worker gets no
/// new call in that call's place"; protocol.md:131-133: "the pool waits for
/// it, up to a grace period, before giving the worker new work".
///
/// The worker declares `cancel` but ignores it: its slow call times out at
/// 300 ms and replies at 1.5 s, within a grace period of 10 s. A call made
/// right after the timeout reaches the worker only after the late reply
/// was written (the worker's reader logs every frame as it arrives), is
/// served by the same worker, and the worker is not replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_keeps_its_place_on_the_worker_until_its_late_reply() {
    let log = temp_dir("outside-late").join("log");
    let pool = start(one_worker(Outside::logging("late", &log)).configure(|c| {
        c.shutdown_grace_period = Duration::from_secs(10);
        c.queue_timeout = Duration::from_secs(30);
    }))
    .await;
    let worker = pool.worker_pids()[0];
    let err = pool
        .execute_with(
            "slow",
            json!({"ms": 1500, "token": "a"}),
            CallOptions::new().timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CallTimeout { .. }), "{err:?}");
    let next = pool
        .execute_with(
            "next",
            json!({"token": "b"}),
            CallOptions::new().timeout(Duration::from_secs(20)),
        )
        .await
        .unwrap();
    assert_eq!(next["token"], "b", "{next}");
    assert_eq!(next["pid"].as_u64().unwrap() as u32, worker);
    assert_eq!(pool.stats().restarts, 0, "{:?}", pool.stats());
    pool.shutdown().await.unwrap();

    let lines = log_lines(&log);
    let index = |pred: &dyn Fn(&[String]) -> bool| lines.iter().position(|l| pred(l));
    let slow_id = lines
        .iter()
        .find_map(|l| (l[0] == "recv").then(|| l[2].strip_prefix("slow:"))?)
        .unwrap_or_else(|| panic!("the slow call reached the worker: {lines:?}"))
        .to_owned();
    let cancel = index(&|l| l[0] == "recv" && l[2] == format!("cancel:{slow_id}"));
    let late_reply = index(&|l| l[0] == "sent" && l[2] == slow_id);
    let next_recv = index(&|l| l[0] == "recv" && l[2].starts_with("next:"));
    assert!(
        cancel.is_some(),
        "a cancel frame named the timed-out call: {lines:?}"
    );
    let (late_reply, next_recv) = (late_reply.unwrap(), next_recv.unwrap());
    assert!(
        late_reply < next_recv,
        "the next call reached the worker before the late reply: {lines:?}"
    );
}

/// docs/bridges.md:384-391: `never_ran()` is true for "full queue, queue
/// timeout, validation, shutdown, no worker able to start ... `CallTimeout`
/// is not one of them, even when the call's deadline passed while it
/// waited in the queue". The only worker is busy with a 1.5 s call; a call
/// with a 300 ms deadline (the queue timeout is 30 s) waits in the queue
/// past its deadline: it ends as `CallTimeout` that `is_timeout()` and not
/// `never_ran()`, not as a `QueueTimeout`, and is never sent (the worker
/// never starts it: its marker file is never written).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_passed_in_the_queue_is_a_call_timeout_that_may_have_run() {
    let pool = start(
        one_worker(TestWorker::new()).configure(|c| c.queue_timeout = Duration::from_secs(30)),
    )
    .await;
    let first = a_running_sleep(&pool, 1500, Duration::from_secs(20)).await;
    let marker = temp_dir("outside-queued").join("marker");
    let err = pool
        .execute_with(
            "sleep",
            json!({"ms": 0, "marker": marker.display().to_string()}),
            CallOptions::new().timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CallTimeout { .. }), "{err:?}");
    assert!(err.is_timeout(), "{err}");
    assert!(
        !err.never_ran(),
        "a call timeout counts as one that may have run"
    );
    assert!(!err.is_crash(), "{err}");
    assert!(first.await.unwrap().is_ok(), "the call in front finishes");
    // One more call through the same worker: anything sent before it has run.
    pool.execute("pid", json!({})).await.unwrap();
    assert!(!marker.exists(), "the call that timed out in the queue ran");
    let s = pool.stats();
    assert_eq!((s.call_timeouts, s.queue_timeouts), (1, 0), "{s:?}");
    pool.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------
// Bad frames from a worker
// ---------------------------------------------------------------------

/// docs/protocol.md:85-87: "a writer must not emit `NaN` or `Infinity`
/// (the pool refuses such a frame as invalid JSON, and replaces the
/// worker". A worker answers a call with `"result":NaN` (what Python's
/// `json.dumps` writes by default): the call gets `Error::Protocol`, the
/// worker is replaced, and the next call is served by its replacement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_in_a_json_reply_is_a_protocol_error_and_the_worker_is_replaced() {
    let pool = start(one_worker(Outside::new("nan"))).await;
    let first = pool.worker_pids()[0];
    let err = pool.execute("x", json!({"nan": true})).await.unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err:?}");
    assert!(
        eventually(20, || pool
            .worker_pids()
            .first()
            .is_some_and(|&p| p != first))
        .await,
        "the worker was not replaced"
    );
    let r = pool.execute("x", json!({})).await.unwrap();
    assert_ne!(r["pid"].as_u64().unwrap() as u32, first);
    pool.shutdown().await.unwrap();
}

/// docs/protocol.md:175-178: "A frame from a worker that has a `success`
/// field is a `response` whatever its `type` says (the pool routes replies
/// by their first keys, `id` then `success`, without reading the rest)".
/// Shown on the decoder in crates/protocol/tests/review_protocol.rs; here
/// through a pool: a worker answers each call with
/// `{"type":"chunk","id":..,"success":true,"result":..}`. Each caller gets
/// its own result, the worker stays, nothing counts as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_with_success_is_the_calls_response_whatever_its_type_says() {
    let pool = start(one_worker(Outside::new("chunk_typed"))).await;
    let worker = pool.worker_pids()[0];
    for token in 0..3 {
        let r = pool
            .execute("x", json!({"token": token}))
            .await
            .unwrap_or_else(|e| panic!("call {token}: {e}"));
        assert_eq!(r["token"], token, "{r}");
        assert_eq!(r["pid"].as_u64().unwrap() as u32, worker);
    }
    let s = pool.stats();
    assert_eq!((s.errors, s.restarts, s.completed), (0, 0, 3), "{s:?}");
    pool.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------
// What each bridge does with a frame it cannot use
// ---------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Bridge {
    Python,
    Node,
    Ruby,
}

fn generic(bridge: Bridge) -> Launch {
    let b = root().join("bridges");
    match bridge {
        Bridge::Python => Launch::new(python())
            .arg("-u")
            .arg(b.join("python/generic_worker.py"))
            .env("PYTHONPATH", b.join("python")),
        Bridge::Node => Launch::new("node").arg(b.join("node/generic_worker.js")),
        Bridge::Ruby => Launch::new("ruby")
            .arg(format!("-I{}", b.join("ruby/lib").display()))
            .arg(b.join("ruby/generic_worker.rb")),
    }
    .arg("--mode")
    .arg("pool-worker")
}

async fn send_raw(stdin: &mut tokio::process::ChildStdin, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap();
    stdin.write_all(&len.to_be_bytes()).await.unwrap();
    stdin.write_all(payload).await.unwrap();
    stdin.flush().await.unwrap();
}

async fn recv(stdout: &mut tokio::process::ChildStdout, what: &str) -> Value {
    let read = async {
        let mut head = [0u8; 4];
        stdout.read_exact(&mut head).await?;
        let mut payload = vec![0u8; u32::from_be_bytes(head) as usize];
        stdout.read_exact(&mut payload).await?;
        Ok::<_, std::io::Error>(payload)
    };
    // A hang detector, not a speed assertion.
    let payload = tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .unwrap_or_else(|_| panic!("{what}: no frame"))
        .unwrap_or_else(|e| panic!("{what}: reading a frame: {e}"));
    serde_json::from_slice(&payload)
        .unwrap_or_else(|e| panic!("{what}: a frame that is not JSON ({e})"))
}

/// docs/protocol.md:85-88: "JSON has no NaN or infinite numbers either ...
/// the three bridges answer a frame from the pool that holds one with a
/// `ProtocolError`, as for any payload that is not JSON" (section 4: a
/// failed `response` with `id` 0), and keep serving. Each bundled generic
/// worker, run as a real process under JSON, gets requests whose arguments
/// hold `NaN`, `Infinity` and `-Infinity`: each is answered `ProtocolError`
/// with id 0 and never runs as a request; an ordinary request after them
/// gets its own reply, and the worker exits 0 at the end of its stdin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bridge_answers_a_json_frame_holding_nan_with_a_protocol_error() {
    for bridge in [Bridge::Python, Bridge::Node, Bridge::Ruby] {
        let what = format!("{bridge:?}");
        let mut process = RawProcess::spawn(generic(bridge), WireCodec::Json)
            .await
            .unwrap_or_else(|e| panic!("{what} starts: {e}"));
        let mut stdin = process.take_stdin().unwrap();
        let mut stdout = process.take_stdout().unwrap();
        if let Some(mut err) = process.take_stderr() {
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = err.read_to_end(&mut sink).await;
            });
        }
        assert_eq!(recv(&mut stdout, &what).await["type"], "hello", "{what}");
        for (id, literal) in [(3, "NaN"), (4, "Infinity"), (5, "-Infinity")] {
            let frame = format!(
                r#"{{"id":{id},"command":"echo","args":{{"x":{literal}}},"timestamp":"2026-11-27T12:24:04.051023Z"}}"#
            );
            send_raw(&mut stdin, frame.as_bytes()).await;
            let reply = recv(&mut stdout, &what).await;
            assert_eq!(reply["success"], false, "{what}: {literal}: {reply}");
            assert_eq!(reply["id"], 0, "{what}: {literal}: {reply}");
            assert_eq!(
                reply["error"]["type"], "ProtocolError",
                "{what}: {literal}: {reply}"
            );
        }
        send_raw(
            &mut stdin,
            br#"{"id":6,"command":"echo","args":{"x":1.5},"timestamp":"2026-11-27T12:24:04.051023Z"}"#,
        )
        .await;
        let reply = recv(&mut stdout, &what).await;
        assert_eq!(reply["id"], 6, "{what}: {reply}");
        assert_eq!(reply["success"], true, "{what}: {reply}");
        assert_eq!(reply["result"]["echoed"], json!({"x": 1.5}), "{what}");
        drop(stdin);
        let status = tokio::time::timeout(Duration::from_secs(60), process.wait())
            .await
            .unwrap_or_else(|_| panic!("{what}: still running after EOF"))
            .unwrap();
        assert!(status.success(), "{what}: {status:?}");
    }
}
