//! Deaths and shutdowns the reader alone does not see, and workers that
//! flood the host: each test here reproduces a defect that outside testing
//! found (issue 12, items 1, 2, 3, 6 and 7; docs/reliability.md lists them).

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use snakepit_core::{CallOptions, Error, ExitReason, Pool};

#[allow(unsafe_code)] // kill(2), as an operator or the OOM killer would
fn kill_now(pid: u32) {
    // SAFETY: kill(2) on a pid we started; no memory involved.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// A pool of one worker (no health checks) that has forked a child of its
/// own, as multiprocessing's fork start method does: the child inherits
/// every descriptor, the protocol pipes included. The worker's and the
/// child's pids.
async fn one_worker_with_a_forked_child() -> (Pool, u32, u32) {
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| c.health_check_interval = Duration::ZERO)
        .start()
        .await
        .unwrap();
    let spawned = pool.execute("fork_child", json!({})).await.unwrap();
    let child = spawned["child_pid"].as_u64().unwrap() as u32;
    let worker = spawned["pid"].as_u64().unwrap() as u32;
    (pool, worker, child)
}

/// A worker SIGKILLed (the worker alone, not its group) while a child of its
/// own holds its stdout open: the call in flight fails at once as a crash
/// with the signal, not at its deadline; the child goes with the group, and
/// a replacement starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_its_child_holds_stdout_fails_its_call_at_once() {
    let (pool, worker, child) = one_worker_with_a_forked_child().await;
    // Killed once the call runs in it (killed before, the call never
    // reached it and would rightly go to the replacement).
    let call = a_running_sleep(&pool, 60_000, Duration::from_secs(30)).await;
    kill_now(worker);
    let err = call.await.unwrap().unwrap_err();
    match &err {
        Error::WorkerCrashed(crash) => {
            assert_eq!(crash.pid, worker);
            assert_eq!(crash.exit, ExitReason::Signal(libc::SIGKILL));
        }
        other => panic!("expected a crash with SIGKILL, got {other:?}"),
    }
    assert!(
        eventually(10, || !alive(child)).await,
        "the worker's child went with its group"
    );
    assert!(
        eventually(20, || pool.worker_pids().len() == 1
            && !pool.worker_pids().contains(&worker))
        .await,
        "a replacement started"
    );
    let r = pool.execute("pid", json!({})).await.unwrap();
    assert_ne!(r["pid"].as_u64().unwrap() as u32, worker);
    pool.shutdown().await.unwrap();
}

/// The same death while idle: the worker does not stay "ready" until a
/// health check; it is replaced, and its child is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_killed_while_its_child_holds_stdout_is_replaced() {
    let (pool, worker, child) = one_worker_with_a_forked_child().await;
    kill_now(worker);
    assert!(
        eventually(20, || !pool.worker_pids().contains(&worker)).await,
        "the dead worker left the pool"
    );
    assert!(eventually(10, || !alive(child)).await);
    let r = pool.execute("pid", json!({})).await.unwrap();
    assert_ne!(r["pid"].as_u64().unwrap() as u32, worker);
    assert_eq!(pool.stats().crashes, 0, "no call was on it");
    pool.shutdown().await.unwrap();
}

/// Calls written to a worker that never read them (it was stopped, then
/// killed): they never reached it, so they go to another worker instead of
/// failing, and each counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_a_dead_worker_never_read_go_elsewhere() {
    let pool = builder(TestWorker::new())
        .size(2)
        .configure(|c| c.health_check_interval = Duration::ZERO)
        .start()
        .await
        .unwrap();
    let victim = pool.worker_pids()[0];
    // SAFETY: kill(2) on a worker's group (the interpreter may be a child
    // of a version-manager shim).
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(-(victim as libc::pid_t), libc::SIGSTOP);
    }
    let stopped = || {
        std::fs::read_to_string(format!("/proc/{victim}/stat"))
            .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| r.starts_with(" T")))
    };
    assert!(eventually(10, stopped).await, "the worker stopped");
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute("pid", json!({})).await })
        })
        .collect();
    // With calls written ahead (`pipeline_depth`), several may wait in the
    // stopped worker's pipe: every one of them must go elsewhere.
    let on_victim = || {
        pool.workers()
            .iter()
            .find(|w| w.pid == victim)
            .map_or(0, |w| w.in_flight)
    };
    assert!(
        eventually(10, || on_victim() >= 1).await,
        "a call was written to the stopped worker"
    );
    assert!(eventually(10, || pool.stats().completed as usize + on_victim() == 6).await);
    kill_now(victim);
    for call in calls {
        let r = call.await.unwrap().unwrap();
        assert_ne!(r["pid"].as_u64().unwrap() as u32, victim);
    }
    let stats = pool.stats();
    assert_eq!(stats.crashes, 0);
    assert_eq!((stats.requests, stats.completed, stats.errors), (6, 6, 0));
    pool.shutdown().await.unwrap();
}

/// A worker that closed its stdin but lives on: the call written to it
/// breaks the pipe, never reaches it, and goes to another worker; the
/// broken worker is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_to_a_worker_whose_stdin_is_gone_goes_elsewhere() {
    let pool = builder(Raw("close_stdin"))
        .size(2)
        .configure(|c| {
            c.health_check_interval = Duration::ZERO;
            c.breaker_threshold = 1000;
        })
        .start()
        .await
        .unwrap();
    let mut pids = std::collections::HashSet::new();
    for _ in 0..8 {
        let r = pool.execute("pid", json!({})).await.unwrap();
        // Each worker answers once, then its stdin is gone.
        assert!(pids.insert(r["pid"].as_u64().unwrap()), "{r}");
    }
    let stats = pool.stats();
    assert_eq!(stats.crashes, 0);
    assert_eq!((stats.requests, stats.completed), (8, 8));
    pool.shutdown().await.unwrap();
}

/// A call still running when shutdown's grace period ends ran and was
/// stopped by the shutdown: its own error, not a crash, and not "never ran".
/// Also a call that would end soon after (1.5 s with a grace period of 1 s):
/// its worker gets no second grace period to finish it (it had one when the
/// pool closed its stdin, and a bridge finishes its running call at end of
/// input), whether or not it ignores SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cut_off_by_shutdown_is_not_a_crash() {
    let mut worker = TestWorker::new();
    worker.env.push(("TEST_IGNORE_SIGTERM".into(), "1".into()));
    for (ignore_sigterm, ms, grace) in [
        (false, 30_000, 200),
        (true, 30_000, 200),
        (false, 1_500, 1_000),
        (true, 1_500, 1_000),
    ] {
        let adapter = if ignore_sigterm {
            let mut w = TestWorker::new();
            w.env = worker.env.clone();
            w
        } else {
            TestWorker::new()
        };
        let pool = builder(adapter)
            .size(1)
            .configure(|c| c.shutdown_grace_period = Duration::from_millis(grace))
            .start()
            .await
            .unwrap();
        let call = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute("sleep", json!({ "ms": ms })).await })
        };
        assert!(eventually(10, || pool.stats().busy == 1).await);
        pool.shutdown().await.unwrap();
        let err = call.await.unwrap().unwrap_err();
        assert!(
            matches!(err, Error::StoppedByShutdown { .. }),
            "ignore SIGTERM {ignore_sigterm}, {ms} ms: {err:?}"
        );
        assert!(!err.is_crash());
        assert!(!err.never_ran());
        assert_eq!(err.kind(), "stopped_by_shutdown");
        assert_eq!(pool.stats().crashes, 0);
        assert_eq!(pool.stats().errors, 1);
    }
}

/// A worker that writes hundreds of MiB to stderr without a newline (or as a
/// `\r` progress bar) does not grow the host's memory: a line is capped at
/// 2,048 bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_without_newlines_keeps_host_memory_flat() {
    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    let before = host_rss_kib();
    for cr in [false, true] {
        pool.execute_with(
            "stderr_flood",
            json!({"mb": 256, "cr": cr}),
            CallOptions::new().timeout(Duration::from_secs(120)),
        )
        .await
        .unwrap();
    }
    let grown = host_rss_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "the host grew by {grown} KiB");
    // What the tail kept of those lines: at most 2,048 bytes each, marked
    // as cut (the tail is seen in the crash that follows).
    let Err(Error::WorkerCrashed(crash)) = pool.execute("exit", json!({"code": 3})).await else {
        panic!("the worker was to exit");
    };
    let cut: Vec<&str> = crash
        .stderr_tail
        .lines()
        .filter(|l| l.ends_with('…'))
        .collect();
    assert!(!cut.is_empty(), "{}", crash.stderr_tail.len());
    assert!(cut.iter().all(|l| l.len() <= 2048 + '…'.len_utf8()));
    pool.shutdown().await.unwrap();
}

/// A worker that never declared host calls may not make them: its first
/// `host_call` frame is a protocol error and it is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_calls_from_a_worker_that_did_not_declare_them_are_refused() {
    let pool = builder(Raw("host_flood")).size(1).start().await.unwrap();
    let err = pool.execute("go", json!({"n": 1000})).await.unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err:?}");
    assert!(err.to_string().contains("host call"), "{err}");
    pool.shutdown().await.unwrap();
}

/// A worker that sends a million host calls and never reads the replies:
/// the host calls in flight per worker are bounded, the worker is a
/// protocol breaker once over the bound, and host memory stays flat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_host_calls_is_bounded() {
    let pool = builder(Raw("host_flood_declared"))
        .size(1)
        .start()
        .await
        .unwrap();
    let before = host_rss_kib();
    let err = pool
        .execute("go", json!({"n": 1_000_000}))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err:?}");
    assert!(err.to_string().contains("host calls"), "{err}");
    let grown = host_rss_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "the host grew by {grown} KiB");
    pool.shutdown().await.unwrap();
}

/// The links in `/proc/<pid>/fd` of process `pid` that point to `path`.
fn fds_pointing_to(pid: u32, path: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            (target == path).then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

/// Workers do not inherit the host's descriptors (docs/reliability.md,
/// "close-on-exec"), not even one whose `FD_CLOEXEC` the host cleared: a
/// plain child of the host inherits it (the control), a worker does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_do_not_inherit_the_hosts_descriptors() {
    use std::os::fd::AsRawFd;

    let path = temp_dir("cloexec").join("held-open");
    let file = std::fs::File::create(&path).unwrap();
    let path = path.canonicalize().unwrap();
    let fd = file.as_raw_fd();
    // SAFETY: fcntl(2) on a descriptor this test owns and keeps open; it
    // changes only the descriptor's flags.
    #[allow(unsafe_code)]
    let flags = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        assert!(flags >= 0);
        assert_eq!(libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC), 0);
        libc::fcntl(fd, libc::F_GETFD)
    };
    assert_eq!(flags & libc::FD_CLOEXEC, 0, "the descriptor is inheritable");
    assert_eq!(fds_pointing_to(std::process::id(), &path).len(), 1);

    // The control: a child started without the pool's spawner inherits it.
    #[allow(clippy::disallowed_methods)] // the control, not a worker
    let mut control = std::process::Command::new("sleep")
        .arg("60")
        .stdin(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let inherited = fds_pointing_to(control.id(), &path);
    control.kill().unwrap();
    control.wait().unwrap();
    assert_eq!(inherited, vec![fd.to_string()], "the control inherits it");

    let pool = builder(TestWorker::new())
        .size(2)
        .configure(|c| c.health_check_interval = Duration::ZERO)
        .start()
        .await
        .unwrap();
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 2);
    // `start` returns once every worker said it is ready: each runs the
    // interpreter, past fork and exec.
    for pid in pids {
        let held = fds_pointing_to(pid, &path);
        assert!(held.is_empty(), "worker {pid} inherited fds {held:?}");
    }
    pool.shutdown().await.unwrap();
    drop(file);
}
