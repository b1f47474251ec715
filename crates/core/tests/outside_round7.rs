//! Round 7 of the review from outside: what the last round left (SIGTERM
//! with `cleanup_max_retries = 0`, the escaped children a host that adopts
//! orphans is left with), then the core's promises under hostile use. Real
//! workers throughout.
#![allow(unsafe_code)] // prctl and waitpid, to make this test process a subreaper

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::json;
use snakepit_core::{Adapter, Launch};

/// `workers/retire_worker.py`: logs to `log` what reaches it (`start`,
/// `eof`, `term`, `exit`), keeps running at the end of its stdin, and
/// exits on SIGTERM.
struct ExitsOnTerm {
    log: PathBuf,
}

impl Adapter for ExitsOnTerm {
    fn launch(&self) -> Launch {
        Launch::new(python())
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/retire_worker.py"))
            .arg(&self.log)
            .arg("ignore")
            .arg("exit")
            .arg("")
    }
}

/// What worker `pid` logged, in order.
fn logged(log: &Path, pid: u32) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let what = f.next()?.to_owned();
            (f.next()?.parse::<u32>().ok()? == pid).then_some(what)
        })
        .collect()
}

/// README's settings table: `cleanup_max_retries` counts the checks that a
/// worker's group is gone; docs/reliability.md: a worker is "signalled
/// (SIGTERM, then SIGKILL) only if it does not exit within the grace
/// period". With `cleanup_max_retries = 0` SIGKILL followed SIGTERM at
/// once, so a worker that ends cleanly on SIGTERM never could: SIGTERM
/// was sent for nothing. It now gets one `cleanup_retry_interval` (here
/// 30 s, so that only its own exit ends the wait) to act on SIGTERM; the
/// test checks that its handler ran and it exited by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_gets_an_interval_to_act_on_sigterm_with_zero_cleanup_retries() {
    let dir = temp_dir("r7-term");
    let log = dir.join("log");
    let pool = builder(ExitsOnTerm { log: log.clone() })
        .size(1)
        .configure(|c| {
            c.shutdown_grace_period = Duration::from_millis(100);
            c.cleanup_max_retries = 0;
            c.cleanup_retry_interval = Duration::from_secs(30);
            c.state_dir = Some(dir.join("state"));
        })
        .start()
        .await
        .unwrap();
    let pid = pool.execute("ping", json!({})).await.unwrap()["pid"]
        .as_u64()
        .unwrap() as u32;
    pool.shutdown().await.unwrap();
    let events = logged(&log, pid);
    assert!(
        events.iter().any(|e| e == "term") && events.iter().any(|e| e == "exit"),
        "the worker was SIGKILLed before it could act on SIGTERM: it logged {events:?}"
    );
}

/// Makes this test process adopt its orphaned descendants, as a
/// container's first process or a service manager does (nextest runs each
/// test in a process of its own).
fn become_subreaper() {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
}

/// Reaps whatever this process adopted and has ended.
fn reap_adopted() {
    // SAFETY: waitpid on any child, without blocking, no status kept.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

/// The parent of `pid` and its state letter (`/proc/<pid>/stat`).
fn parent_and_state(pid: u32) -> Option<(u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut f = stat[stat.rfind(')')? + 2..].split(' ');
    let state = f.next()?.to_owned();
    Some((f.next()?.parse().ok()?, state))
}

/// docs/reliability.md, the run id: "when a worker ends ... the pool kills
/// the processes that carry its worker id", "and at its own end every
/// process of the run ... that is not its own child". In a host that
/// adopts orphans (a container's first process, a subreaper) such an
/// escaped child is the host's child once its worker is gone, and the pool
/// killed it and left it a zombie of the host for the host's life (a pid
/// each, never given back). The test makes the host a subreaper, has a
/// worker start two children that call `setsid`, kills the worker, then
/// has the replacement start one and shuts the pool down; each child must
/// be gone from `/proc`, not only dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_children_the_pool_kills_in_a_host_that_adopts_orphans_are_reaped() {
    become_subreaper();
    let me = std::process::id();
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| c.state_dir = Some(temp_dir("r7-reap")))
        .start()
        .await
        .unwrap();
    let first = pool
        .execute("spawn_escaped", json!({"count": 2}))
        .await
        .unwrap();
    let escaped = pid_list(&first, "child_pids");
    let worker = first["pid"].as_u64().unwrap() as u32;
    kill_9(worker);
    let adopted = eventually(30, || {
        escaped
            .iter()
            .all(|&p| parent_and_state(p).is_none_or(|(parent, _)| parent == me))
    })
    .await;
    let gone = eventually(30, || {
        escaped
            .iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists())
    })
    .await;
    let seen: Vec<_> = escaped.iter().map(|&p| (p, parent_and_state(p))).collect();
    // The replacement's, which goes at the pool's end.
    let second = pool.execute("spawn_escaped", json!({})).await.unwrap()["child_pid"]
        .as_u64()
        .unwrap() as u32;
    pool.shutdown().await.unwrap();
    let gone_at_end = eventually(30, || !Path::new(&format!("/proc/{second}")).exists()).await;
    let seen_at_end = parent_and_state(second);
    for p in escaped.iter().chain([&second]) {
        kill_9(*p);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    reap_adopted();
    assert!(
        adopted,
        "the escaped children were not adopted by the host: {seen:?}"
    );
    assert!(
        gone,
        "the escaped children killed with their worker stay in /proc (parent, state): {seen:?}"
    );
    assert!(
        gone_at_end,
        "the escaped child killed at the pool's end stays in /proc (parent, state): {seen_at_end:?}"
    );
}

/// Run as a host of its own by [`host_with_report`]: one worker, which has
/// started a child that left its group (`setsid`).
#[test]
fn host_process() {
    run_as_host(|_, state_dir| async move {
        let pool = builder(TestWorker::new())
            .size(1)
            .name("r7reaper")
            .configure(|c| c.state_dir = Some(state_dir))
            .start()
            .await
            .unwrap();
        let child = pool.execute("spawn_escaped", json!({})).await.unwrap();
        let report = json!({
            "workers": pool.worker_pids(),
            "children": [child["child_pid"]],
        });
        (report, pool)
    });
}

/// docs/reliability.md, "When a run counts as dead": "Who adopted a
/// process once its host died (init, a subreaper, a container's first
/// process) does not matter." A sweep run by the subreaper that adopted a
/// crashed run's leftover kills it, and so is the one to reap it: it left
/// it a zombie for its own life. The test's process is that subreaper; the
/// host is SIGKILLed; the sweep must kill the leftover and leave nothing
/// of it in `/proc`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_swept_by_the_subreaper_that_adopted_it_is_reaped() {
    become_subreaper();
    let me = std::process::id();
    let dir = temp_dir("r7-sweep-reap");
    let (mut host, pids) = host_with_report("1", &dir);
    kill_9(host.id());
    host.wait().unwrap();
    let workers = pid_list(&pids, "workers");
    let leftover = pid_list(&pids, "children")[0];
    let workers_gone = eventually(10, || workers.iter().all(|&p| !alive(p))).await;
    let adopted = eventually(10, || {
        parent_and_state(leftover).is_some_and(|(parent, _)| parent == me)
    })
    .await;
    let report =
        snakepit_core::sweep::sweep(&snakepit_core::sweep::SweepOptions::new().state_dir(&dir))
            .unwrap();
    let gone = eventually(30, || !Path::new(&format!("/proc/{leftover}")).exists()).await;
    let seen = parent_and_state(leftover);
    kill_9(leftover);
    tokio::time::sleep(Duration::from_millis(100)).await;
    reap_adopted();
    assert!(workers_gone, "the workers died with their host");
    assert!(
        adopted,
        "the leftover {leftover} was not adopted by the test: {seen:?}"
    );
    assert_eq!(
        report.killed(),
        1,
        "the sweep killed the leftover: {report:?}"
    );
    assert!(
        gone,
        "the swept leftover {leftover} stays in /proc (parent, state): {seen:?}"
    );
}

/// docs/reliability.md, "No orphan, on any path": "a worker's own children
/// die with its group". In a host that adopts orphans, a worker's child
/// still in its group is the host's child once its worker is gone; killed
/// with the group, it must not stay a zombie of the host. The worker is
/// SIGKILLed alone (as the OOM killer does), the pool kills its group;
/// then the replacement starts a child and the pool shuts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workers_child_killed_with_its_group_in_a_host_that_adopts_orphans_is_reaped() {
    become_subreaper();
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| c.state_dir = Some(temp_dir("r7-group-reap")))
        .start()
        .await
        .unwrap();
    let r = pool.execute("spawn_child", json!({})).await.unwrap();
    let child = r["child_pid"].as_u64().unwrap() as u32;
    let worker = r["pid"].as_u64().unwrap() as u32;
    kill_9(worker);
    let gone = eventually(30, || !Path::new(&format!("/proc/{child}")).exists()).await;
    let seen = parent_and_state(child);
    // The replacement's child, which goes with its group at the pool's end.
    let second = pool.execute("spawn_child", json!({})).await.unwrap()["child_pid"]
        .as_u64()
        .unwrap() as u32;
    pool.shutdown().await.unwrap();
    let gone_at_end = eventually(30, || !Path::new(&format!("/proc/{second}")).exists()).await;
    let seen_at_end = parent_and_state(second);
    kill_9(child);
    kill_9(second);
    tokio::time::sleep(Duration::from_millis(100)).await;
    reap_adopted();
    assert!(
        gone,
        "the worker's child {child} killed with its group stays in /proc (parent, state): {seen:?}"
    );
    assert!(
        gone_at_end,
        "the worker's child {second} killed with its group at the pool's end stays in /proc (parent, state): {seen_at_end:?}"
    );
}

/// docs/reliability.md, "When a run counts as dead": a record "written in
/// another PID namespace" is left alone, for its pid means nothing here;
/// but one whose namespace has no process left names a run that has ended
/// whole (a PID namespace ends with its last process), and such records
/// were kept for ever: one per crashed container run sharing the
/// directory, until the next boot. Seen from the initial PID namespace
/// (where `/proc` shows every process), the record of a namespace that
/// has ended is removed and nothing is killed; the same record while its
/// namespace lives is left alone (the control). Elsewhere neither can be
/// told, and both are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_from_a_pid_namespace_with_no_process_left_is_removed() {
    use std::os::unix::fs::MetadataExt;
    let dir = temp_dir("r7-gone-ns");
    let run_id = &a_run_id("a7a7a7a7a7a7a7a7");
    let leftover = a_leftover(run_id);
    let boot = our_boot_id();
    let record = dir.join(format!("forged.{}.{run_id}.run", a_dead_pid()));
    let (mut container, other) = another_pid_namespace();
    std::fs::write(
        &record,
        forged_record(run_id, a_dead_pid(), Some((other, &boot))),
    )
    .unwrap();
    let sweep = || {
        snakepit_core::sweep::sweep(&snakepit_core::sweep::SweepOptions::new().state_dir(&dir))
            .unwrap()
    };
    let alive_ns = sweep();
    container.kill().unwrap();
    container.wait().unwrap();
    // `--kill-child`: the process in the namespace goes with `unshare`
    // (a zombie, maybe, that nobody reaps: it runs nothing).
    let ended = eventually(10, || {
        !std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            let pid = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok());
            let zombie = pid
                .and_then(parent_and_state)
                .is_some_and(|(_, s)| s == "Z");
            !zombie
                && std::fs::metadata(e.path().join("ns/pid"))
                    .is_ok_and(|m| (m.dev(), m.ino()) == other)
        })
    })
    .await;
    let ended_ns = sweep();
    let removed = !record.exists();
    let leftover_alive = alive(leftover);
    kill_9(leftover);
    let initial = std::fs::metadata("/proc/self/ns/pid").unwrap().ino() == 0xEFFF_FFFC;
    assert!(ended, "the namespace's last process ended");
    assert_eq!(
        (
            alive_ns.foreign_runs,
            alive_ns.stale_runs.len(),
            alive_ns.killed()
        ),
        (1, 0, 0),
        "a live namespace's record is left alone: {alive_ns:?}"
    );
    assert_eq!(ended_ns.killed(), 0, "{ended_ns:?}");
    assert!(
        leftover_alive,
        "a process of this namespace was killed for a record of another"
    );
    if initial {
        assert_eq!(
            (ended_ns.foreign_runs, ended_ns.stale_runs.len()),
            (0, 1),
            "{ended_ns:?}"
        );
        assert!(removed, "the record of an ended namespace is kept");
    } else {
        assert_eq!(ended_ns.foreign_runs, 1, "{ended_ns:?}");
        assert!(!removed, "a record that cannot be judged was removed");
    }
}

/// The pool keeps each session's key for its affinity, up to
/// `max_sessions` of them (100,000 by default) for `session_ttl` (an
/// hour): callers passing ids they were given (a web request's cookie,
/// say) must not make it hold 100,000 ids of megabytes each. An id over
/// `MAX_SESSION_ID_LEN` bytes (512) is kept as a digest of bounded size
/// (the unit test `long_ids_are_kept_as_a_digest_longer_than_any_id_kept_as_it_is`
/// shows its size); here, a 1 MiB id and another of 513 bytes keep their
/// worker, reach the handler whole, are told apart from each other and
/// from their 512-byte prefix, and `end_session` forgets them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_ids_over_512_bytes_keep_their_worker_and_reach_the_handler_whole() {
    use snakepit_core::MAX_SESSION_ID_LEN;
    assert_eq!(MAX_SESSION_ID_LEN, 512);
    let pool = builder(TestWorker::new())
        .size(2)
        .configure(|c| c.state_dir = Some(temp_dir("r7-session-id")))
        .start()
        .await
        .unwrap();
    let huge = "s".repeat(1 << 20);
    let over = "t".repeat(513);
    for id in [huge.as_str(), over.as_str(), &over[..512]] {
        let a = pool
            .execute_in_session(id, "echo", json!({}))
            .await
            .unwrap();
        let b = pool
            .execute_in_session(id, "echo", json!({}))
            .await
            .unwrap();
        assert_eq!(
            a["pid"],
            b["pid"],
            "{} bytes: the session keeps its worker",
            id.len()
        );
        assert_eq!(
            a["session_id"],
            json!(id),
            "{} bytes: the handler sees it whole",
            id.len()
        );
    }
    assert_eq!(pool.stats().sessions, 3, "three sessions, each its own");
    for id in [huge.as_str(), over.as_str(), &over[..512]] {
        pool.end_session(id);
    }
    assert_eq!(pool.stats().sessions, 0);
    pool.shutdown().await.unwrap();
}
