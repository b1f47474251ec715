//! FAILURES.md's scenarios done with the bundled Node, Ruby and Python
//! bridges and real faults, where the earlier tests used only the Python
//! bridge's synchronous worker: the host SIGKILLed while Node and Ruby
//! workers are busy (item 1); kill -9 of a worker running four calls at
//! once, segfaults in handlers, and the crash storm on Node, Ruby and
//! asyncio Python workers (item 2); random deadlines against workers running
//! four calls at once, and a worker stopped with SIGSTOP mid-call (item 3);
//! scripts that exit at once, start too slowly, or stop loading until the
//! breaker opens (item 4); session affinity and a session whose worker is
//! killed (item 6); a Ruby worker killed while a child it forked holds its
//! stdout, and stderr floods without a newline (item 7); and memory growth
//! recycled under load.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{CallOptions, Error, ExitReason, Pool};
use snakepit_tests::{alive, eventually};

fn script(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/workers")).join(name)
}

fn node(concurrency: usize) -> Bridge {
    Bridge::node(script("round6_fail_worker.js"))
        .env("ROUND6_CONCURRENCY", concurrency.to_string())
        .env(
            "NODE_PATH",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../bridges/node/node_modules"
            ),
        )
}

fn ruby() -> Bridge {
    Bridge::ruby(script("round6_fail_worker.rb"))
}

fn python_async(concurrency: usize) -> Bridge {
    Bridge::python(script("round6_fail_worker.py"))
        .env("ROUND6_CONCURRENCY", concurrency.to_string())
}

fn kill_9(pid: u32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a process this test started; no memory involved.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

fn num(v: &Value, key: &str) -> u32 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}")) as u32
}

/// A fresh directory for the tokens handlers note as they start.
fn notes_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("snakepit-r6f-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The tokens noted in `dir`, each with the pid of the worker that ran it.
fn started(dir: &std::path::Path) -> HashMap<u64, u32> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let token = entry.file_name().to_string_lossy().parse::<u64>();
        let pid = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if let (Ok(token), Some(pid)) = (token, pid) {
            out.insert(token, pid);
        }
    }
    out
}

fn host_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Not a test of its own: the host of
/// `a_host_killed_while_node_and_ruby_workers_are_busy_leaves_no_descendant`,
/// run again as a child of that test with `SNAKEPIT_R6F_PIDS` set. It starts
/// a Node pool and a Ruby pool, gives one worker of each a child of its own,
/// makes every worker busy with a call that ignores SIGTERM, writes the
/// pids, and waits to be killed.
#[test]
fn r6f_host_process() {
    let Ok(out) = std::env::var("SNAKEPIT_R6F_PIDS") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let dir = notes_dir("host");
        let mut workers = Vec::new();
        let mut children = Vec::new();
        let mut pools = Vec::new();
        for bridge in [node(1), ruby()] {
            let pool = Pool::builder(bridge)
                .size(2)
                .configure(|c| c.queue_timeout = Duration::from_secs(60))
                .start()
                .await
                .unwrap();
            let r = pool.execute("spawn_child", json!({})).await.unwrap();
            children.push(num(&r, "child_pid"));
            pools.push(pool);
        }
        let mut token = 0;
        for pool in &pools {
            for _ in 0..2 {
                let (pool, dir) = (pool.clone(), dir.display().to_string());
                tokio::spawn(async move {
                    pool.execute(
                        "sleep",
                        json!({"ms": 600_000, "token": token, "dir": dir, "ignore_term": true}),
                    )
                    .await
                });
                token += 1;
            }
        }
        // Every call runs (and so every worker ignores SIGTERM) before the
        // pids are given.
        assert!(eventually(60, || started(&dir).len() == 4).await);
        for pool in &pools {
            workers.extend(pool.worker_pids());
        }
        let line = json!({"workers": workers, "children": children});
        let out = PathBuf::from(out);
        std::fs::write(out.with_extension("tmp"), line.to_string()).unwrap();
        std::fs::rename(out.with_extension("tmp"), &out).unwrap();
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
}

/// FAILURES.md item 1, with the Node and Ruby bridges: the host is killed
/// with SIGKILL while every worker runs a call and ignores SIGTERM, and one
/// worker of each language has a child of its own. Two seconds later none
/// of them lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_while_node_and_ruby_workers_are_busy_leaves_no_descendant() {
    let out = std::env::temp_dir().join(format!("snakepit-r6f-host-{}.pids", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let mut host = snakepit_tests::this_test("r6f_host_process")
        .env("SNAKEPIT_R6F_PIDS", &out)
        .spawn()
        .unwrap();
    assert!(
        eventually(120, || out.exists() || host.try_wait().unwrap().is_some()).await,
        "the host wrote its pids"
    );
    assert!(out.exists(), "the host ended before writing its pids");
    let pids: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let _ = std::fs::remove_file(&out);
    let mut all: Vec<u32> = Vec::new();
    for key in ["workers", "children"] {
        all.extend(
            pids[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_u64().unwrap() as u32),
        );
    }
    assert_eq!(all.len(), 6, "{pids}");
    assert!(all.iter().all(|&p| alive(p)), "{all:?}");
    let host_pid = host.id();
    kill_9(host_pid);
    host.wait().unwrap();
    let gone = eventually(2, || all.iter().all(|&p| !alive(p))).await;
    let _ =
        std::fs::remove_dir_all(std::env::temp_dir().join(format!("snakepit-r6f-host-{host_pid}")));
    let left: Vec<u32> = all.iter().copied().filter(|&p| alive(p)).collect();
    for &p in &left {
        kill_9(p);
    }
    assert!(gone, "alive 2 s after the host's SIGKILL: {left:?}");
}

/// Kills one worker while it runs four calls at once (Python in asyncio
/// mode, Node with `maxConcurrency` 4), beside another worker running four:
/// exactly the four calls that ran on the killed worker fail, each with
/// `WorkerCrashed` naming it and SIGKILL; the other four return their own
/// results; the pool is back to two workers and the counters agree.
async fn only_the_calls_on_a_killed_concurrent_worker_fail(bridge: Bridge, tag: &str) {
    let dir = notes_dir(tag);
    let pool = Pool::builder(bridge)
        .size(2)
        .configure(|c| {
            c.health_check_interval = Duration::ZERO;
            c.queue_timeout = Duration::from_secs(60);
        })
        .start()
        .await
        .unwrap();
    assert_eq!(pool.stats().capacity, 8, "{:?}", pool.stats());
    let calls: Vec<_> = (0..8u64)
        .map(|token| {
            let (pool, dir) = (pool.clone(), dir.display().to_string());
            tokio::spawn(async move {
                pool.execute_with(
                    "sleep",
                    json!({"ms": 4_000, "token": token, "dir": dir}),
                    CallOptions::new().timeout(Duration::from_secs(120)),
                )
                .await
            })
        })
        .collect();
    assert!(
        eventually(60, || started(&dir).len() == 8).await,
        "every call started: {:?}",
        started(&dir)
    );
    let ran_on = started(&dir);
    let victim = ran_on[&0];
    let on_victim: HashSet<u64> = ran_on
        .iter()
        .filter(|(_, &p)| p == victim)
        .map(|(&t, _)| t)
        .collect();
    assert_eq!(on_victim.len(), 4, "four calls on each worker: {ran_on:?}");
    kill_9(victim);
    for (token, call) in calls.into_iter().enumerate() {
        let token = token as u64;
        match call.await.unwrap() {
            Ok(r) => {
                assert!(
                    !on_victim.contains(&token),
                    "{token} ran on the killed worker: {r}"
                );
                assert_eq!(r["token"], token, "a caller got another call's reply");
            }
            Err(Error::WorkerCrashed(crash)) => {
                assert!(
                    on_victim.contains(&token),
                    "{token} failed for another's crash"
                );
                assert_eq!(crash.pid, victim);
                assert_eq!(crash.exit, ExitReason::Signal(libc::SIGKILL));
            }
            Err(e) => panic!("call {token}: {e}"),
        }
    }
    assert!(
        eventually(60, || pool.stats().workers == 2
            && !pool.worker_pids().contains(&victim))
        .await,
        "{:?}",
        pool.stats()
    );
    let s = pool.stats();
    assert_eq!((s.requests, s.completed, s.errors), (8, 4, 4), "{s:?}");
    let r = pool
        .execute("sleep", json!({"ms": 1, "token": 99}))
        .await
        .unwrap();
    assert_ne!(num(&r, "pid"), victim);
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_asyncio_worker_killed_with_four_calls_fails_exactly_those_four() {
    only_the_calls_on_a_killed_concurrent_worker_fail(python_async(4), "py4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_worker_killed_with_four_calls_fails_exactly_those_four() {
    only_the_calls_on_a_killed_concurrent_worker_fail(node(4), "node4").await;
}

/// FAILURES.md item 2's crash storm on `bridge`: two workers killed every
/// 25 ms for 30 rounds while 200 calls run. Every call succeeds with its
/// own token or fails with `WorkerCrashed` from a killed pid; the pool
/// returns to four workers, none of them killed; the killed pids are gone;
/// `stats()` agrees with what the callers saw.
async fn crash_storm(bridge: Bridge) {
    let pool = Pool::builder(bridge)
        .size(4)
        .configure(|c| {
            // Workers killed from outside in their first second count as
            // failed starts; the storm is not a cause for the breaker.
            c.breaker_threshold = 1000;
            c.restart_backoff = Duration::from_millis(10);
            c.restart_backoff_max = Duration::from_millis(200);
            c.queue_timeout = Duration::from_secs(120);
        })
        .start()
        .await
        .unwrap();
    let calls: Vec<_> = (0..200u64)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.execute_with(
                    "sleep",
                    json!({"ms": 5 + i % 20, "token": i}),
                    CallOptions::new().timeout(Duration::from_secs(120)),
                )
                .await
            })
        })
        .collect();
    let mut killed = HashSet::new();
    for _ in 0..30 {
        for pid in pool.worker_pids().into_iter().take(2) {
            kill_9(pid);
            killed.insert(pid);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (mut ok, mut crashed) = (0u64, 0u64);
    for (i, c) in calls.into_iter().enumerate() {
        match c.await.unwrap() {
            Ok(r) => {
                assert_eq!(r["token"], i as u64, "a caller got another call's reply");
                ok += 1;
            }
            Err(Error::WorkerCrashed(crash)) => {
                assert!(killed.contains(&crash.pid), "{crash:?}");
                crashed += 1;
            }
            Err(e) => panic!("call {i}: {e}"),
        }
    }
    assert!(
        eventually(60, || pool.stats().workers == 4).await,
        "{:?}",
        pool.stats()
    );
    assert!(eventually(10, || killed.iter().all(|&p| !alive(p))).await);
    assert!(pool.worker_pids().iter().all(|p| !killed.contains(p)));
    let s = pool.stats();
    assert_eq!(
        (s.requests, s.completed, s.errors),
        (200, ok, crashed),
        "{s:?}"
    );
    assert!(
        eventually(10, || {
            let s = pool.stats();
            s.in_flight == 0 && s.available == s.workers
        })
        .await,
        "{:?}",
        pool.stats()
    );
    eprintln!(
        "crash storm: {} workers killed, {ok} calls ok, {crashed} crashed",
        killed.len()
    );
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_storm_on_node_workers_loses_no_call_and_the_pool_recovers() {
    crash_storm(node(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_storm_on_ruby_workers_loses_no_call_and_the_pool_recovers() {
    crash_storm(ruby()).await;
}

/// FAILURES.md item 3 against workers that run four calls at once (Node,
/// Python in asyncio mode): sixteen callers make 640 calls with random
/// deadlines of 2 to 41 ms against handlers sleeping 0 to 11 ms. No caller
/// gets another call's reply, every worker comes back idle, and the
/// counters match what the callers saw.
async fn random_deadlines_never_cross_replies(bridge: Bridge) {
    let n = 640u64;
    let pool = Pool::builder(bridge)
        .size(2)
        .configure(|c| {
            c.queue_timeout = Duration::from_secs(60);
            c.shutdown_grace_period = Duration::from_millis(300);
        })
        .start()
        .await
        .unwrap();
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // Sixteen callers, each making its calls one after another, so that
    // deadlines fall on calls at every stage: queued, written, running,
    // answering.
    let callers: Vec<_> = (0..16u64)
        .map(|caller| {
            let pool = pool.clone();
            let plan: Vec<(u64, u64)> = (0..n / 16)
                .map(|_| (next() % 12, 2 + next() % 40))
                .collect();
            tokio::spawn(async move {
                let (mut ok, mut timeouts, mut other) = (0u64, 0u64, 0u64);
                for (j, (sleep_ms, timeout_ms)) in plan.into_iter().enumerate() {
                    let token = caller * 1000 + j as u64;
                    match pool
                        .execute_with(
                            "sleep",
                            json!({"ms": sleep_ms, "token": token}),
                            CallOptions::new().timeout(Duration::from_millis(timeout_ms)),
                        )
                        .await
                    {
                        Ok(v) => {
                            assert_eq!(v["token"], token, "a caller got another call's reply");
                            ok += 1;
                        }
                        Err(Error::CallTimeout { .. }) => timeouts += 1,
                        Err(Error::Cancelled) => other += 1,
                        Err(e) => panic!("call {token}: {e}"),
                    }
                }
                (ok, timeouts, other)
            })
        })
        .collect();
    let (mut ok, mut timeouts, mut other) = (0u64, 0u64, 0u64);
    for c in callers {
        let (o, t, x) = c.await.unwrap();
        ok += o;
        timeouts += t;
        other += x;
    }
    assert!(ok > 0 && timeouts > 0, "{ok} ok, {timeouts} timeouts");
    eprintln!("random deadlines: {ok} ok, {timeouts} timeouts, {other} cancelled");
    assert!(
        eventually(30, || {
            let s = pool.stats();
            s.in_flight == 0 && s.workers == 2 && s.available == 2
        })
        .await,
        "{:?}",
        pool.stats()
    );
    let s = pool.stats();
    assert_eq!(s.requests, n, "{s:?}");
    assert_eq!(s.completed, ok, "{s:?}");
    assert_eq!(s.errors, timeouts + other, "{s:?}");
    assert_eq!(s.call_timeouts, timeouts, "{s:?}");
    assert_eq!(s.crashes, 0, "{s:?}");
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_calls_with_random_deadlines_never_get_another_calls_reply() {
    random_deadlines_never_cross_replies(node(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_asyncio_calls_with_random_deadlines_never_get_another_calls_reply() {
    random_deadlines_never_cross_replies(python_async(4)).await;
}

/// FAILURES.md item 7 with the Ruby bridge: a worker that forked without
/// exec (its child keeps the protocol pipes) is SIGKILLed alone while a
/// call runs. The call fails with `WorkerCrashed` and SIGKILL, not at its
/// deadline (two minutes away, `CallTimeout` then); the child goes with the
/// group, and a replacement serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ruby_worker_killed_while_its_forked_child_holds_stdout_fails_its_call_at_once() {
    let dir = notes_dir("rbfork");
    let pool = Pool::builder(ruby())
        .size(1)
        .configure(|c| c.health_check_interval = Duration::ZERO)
        .start()
        .await
        .unwrap();
    let r = pool.execute("fork_child", json!({})).await.unwrap();
    let (worker, child) = (num(&r, "pid"), num(&r, "child_pid"));
    assert!(alive(child));
    // The child holds a pipe whose other end is this host's: the protocol.
    assert!(
        !pipe_inodes(&child.to_string()).is_disjoint(&pipe_inodes("self")),
        "the forked child holds a pipe to the host"
    );
    let call = {
        let (pool, dir) = (pool.clone(), dir.display().to_string());
        tokio::spawn(async move {
            pool.execute_with(
                "sleep",
                json!({"ms": 600_000, "token": 1, "dir": dir}),
                CallOptions::new().timeout(Duration::from_secs(120)),
            )
            .await
        })
    };
    assert!(eventually(30, || started(&dir).contains_key(&1)).await);
    kill_9(worker);
    let outcome = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .expect("the call ended long before its deadline")
        .unwrap();
    match outcome {
        Err(Error::WorkerCrashed(crash)) => {
            assert_eq!(crash.pid, worker);
            assert_eq!(crash.exit, ExitReason::Signal(libc::SIGKILL));
        }
        other => panic!("expected a crash with SIGKILL, got {other:?}"),
    }
    let child_gone = eventually(10, || !alive(child)).await;
    if !child_gone {
        kill_9(child);
    }
    assert!(child_gone, "the forked child went with the group");
    let r = pool
        .execute("sleep", json!({"ms": 1, "token": 2}))
        .await
        .unwrap();
    assert_ne!(num(&r, "pid"), worker);
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// FAILURES.md item 7's stderr flood from the Node and Ruby bridges: 200 MiB
/// written to stderr without a newline, then as a `\r` progress bar. The
/// call succeeds, the worker serves on, and the host's memory grows by less
/// than 64 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_floods_without_a_newline_from_node_and_ruby_keep_host_memory_flat() {
    let before = host_rss_kib();
    for bridge in [node(1), ruby()] {
        let pool = Pool::builder(bridge)
            .size(1)
            .configure(|c| c.health_check_interval = Duration::ZERO)
            .start()
            .await
            .unwrap();
        let pid = pool.worker_pids()[0];
        for cr in [false, true] {
            let r = pool
                .execute_with(
                    "flood_stderr",
                    json!({"mb": 200, "cr": cr}),
                    CallOptions::new().timeout(Duration::from_secs(300)),
                )
                .await
                .unwrap();
            assert_eq!(num(&r, "pid"), pid, "the same worker served");
        }
        let r = pool
            .execute("sleep", json!({"ms": 1, "token": 7}))
            .await
            .unwrap();
        assert_eq!((num(&r, "pid"), r["token"].as_u64()), (pid, Some(7)));
        assert_eq!(pool.stats().crashes, 0);
        pool.shutdown().await.unwrap();
    }
    let after = host_rss_kib();
    assert!(
        after < before + 64 * 1024,
        "host RSS grew from {before} to {after} KiB"
    );
}

/// The inodes of the pipes process `pid` holds ("self" for this one).
fn pipe_inodes(pid: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy().into_owned();
            if target.starts_with("pipe:") {
                out.insert(target);
            }
        }
    }
    out
}

/// FAILURES.md item 4 with the Node and Ruby bridges: a worker's script that
/// starts failing as it loads (a dependency gone) once the worker was
/// killed. The breaker opens within a few attempts; a call then fails at
/// once with `StartFailed` whose stderr names the missing module; no start
/// is tried during the cool-down; once the cause is gone, `retry_starts`
/// brings a worker that serves.
async fn a_script_that_stops_loading_opens_the_breaker(
    bridge: Bridge,
    marker: &std::path::Path,
    says: &str,
) {
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = opened.clone();
    let pool = Pool::builder(bridge.env("ROUND6_BROKEN_IF_EXISTS", marker))
        .size(1)
        .configure(|c| {
            c.breaker_threshold = 3;
            c.breaker_cooldown = Duration::from_secs(600);
            c.restart_backoff = Duration::from_millis(20);
            c.queue_timeout = Duration::from_secs(120);
        })
        .on_event(move |e| {
            if matches!(
                e.kind,
                snakepit_core::events::EventKind::BreakerOpened { .. }
            ) {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .start()
        .await
        .unwrap();
    std::fs::write(marker, "").unwrap();
    kill_9(pool.worker_pids()[0]);
    assert!(
        eventually(60, || opened.load(std::sync::atomic::Ordering::SeqCst) > 0).await,
        "the breaker opened: {:?}",
        pool.stats()
    );
    let failures = pool.stats().start_failures;
    assert!((1..=3).contains(&failures), "{:?}", pool.stats());
    // The caller is not held for the queue timeout (two minutes).
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        pool.execute("sleep", json!({"ms": 1, "token": 1})),
    )
    .await
    .expect("the call fails fast")
    .unwrap_err();
    let Error::StartFailed(cause) = &err else {
        panic!("expected StartFailed, got {err:?}")
    };
    assert!(cause.stderr_tail.contains(says), "{err}");
    // No start during the cool-down.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pool.stats().start_failures, failures, "{:?}", pool.stats());
    assert!(pool.worker_pids().is_empty());
    std::fs::remove_file(marker).unwrap();
    pool.retry_starts();
    let r = pool
        .execute_with(
            "sleep",
            json!({"ms": 1, "token": 2}),
            CallOptions::new().timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(r["token"], 2);
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_script_that_stops_loading_opens_the_breaker_and_retry_starts_recovers() {
    let dir = notes_dir("node-broken");
    a_script_that_stops_loading_opens_the_breaker(
        node(1),
        &dir.join("broken"),
        "round6-no-such-module",
    )
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ruby_script_that_stops_loading_opens_the_breaker_and_retry_starts_recovers() {
    let dir = notes_dir("ruby-broken");
    a_script_that_stops_loading_opens_the_breaker(
        ruby(),
        &dir.join("broken"),
        "round6_no_such_library",
    )
    .await;
    let _ = std::fs::remove_dir_all(dir);
}

/// FAILURES.md item 3 with a real hang: a Node or Ruby worker stopped with
/// SIGSTOP while it runs a call. That call times out; the stopped worker
/// takes no new call (each of the 30 that follow is served by another
/// worker, none waits out its deadline); it is killed once the grace period
/// has passed without its reply, and replaced.
async fn a_stopped_worker_takes_no_call_after_its_call_timed_out(bridge: Bridge, tag: &str) {
    let dir = notes_dir(tag);
    let pool = Pool::builder(bridge)
        .size(2)
        .configure(|c| {
            c.shutdown_grace_period = Duration::from_millis(500);
            c.queue_timeout = Duration::from_secs(120);
        })
        .start()
        .await
        .unwrap();
    let call = {
        let (pool, dir) = (pool.clone(), dir.display().to_string());
        tokio::spawn(async move {
            pool.execute_with(
                "sleep",
                json!({"ms": 600_000, "token": 1, "dir": dir}),
                CallOptions::new().timeout(Duration::from_secs(2)),
            )
            .await
        })
    };
    assert!(eventually(30, || started(&dir).contains_key(&1)).await);
    let stopped = started(&dir)[&1];
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a worker this test started; no memory involved.
    unsafe {
        libc::kill(stopped as libc::pid_t, libc::SIGSTOP);
    }
    let err = call.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::CallTimeout { .. }), "{err:?}");
    for token in 10..40u64 {
        let r = pool
            .execute_with(
                "sleep",
                json!({"ms": 1, "token": token}),
                CallOptions::new().timeout(Duration::from_secs(60)),
            )
            .await
            .unwrap_or_else(|e| panic!("call {token}: {e}"));
        assert_eq!(r["token"], token);
        assert_ne!(num(&r, "pid"), stopped, "a call went to the stopped worker");
    }
    let gone = eventually(60, || !alive(stopped)).await;
    if !gone {
        kill_9(stopped);
    }
    assert!(gone, "the stopped worker was killed");
    assert!(
        eventually(60, || pool.stats().workers == 2
            && !pool.worker_pids().contains(&stopped))
        .await,
        "{:?}",
        pool.stats()
    );
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_worker_takes_no_call_after_its_call_timed_out_and_is_replaced() {
    a_stopped_worker_takes_no_call_after_its_call_timed_out(node(1), "node-stop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_ruby_worker_takes_no_call_after_its_call_timed_out_and_is_replaced() {
    a_stopped_worker_takes_no_call_after_its_call_timed_out(ruby(), "ruby-stop").await;
}

type Store = std::sync::Arc<std::sync::Mutex<HashMap<(String, String), Value>>>;

fn store_key(call: &snakepit_core::HostCall) -> (String, String) {
    (
        call.session_id.clone().unwrap_or_default(),
        call.args["key"].as_str().unwrap_or_default().to_owned(),
    )
}

/// FAILURES.md item 6 with the Node and Ruby bridges: a session's calls go
/// to the worker that served it last (seen through the pid the handler
/// reports); while that worker is busy, the next call runs on the other one;
/// when the session's worker is SIGKILLed, the session's state (kept by the
/// host, through `ctx.session`) survives and the next calls run elsewhere,
/// counting on from where they were.
async fn a_session_survives_its_workers_death(bridge: Bridge, tag: &str) {
    let dir = notes_dir(tag);
    let store: Store = Default::default();
    let (get, set) = (store.clone(), store.clone());
    let pool = Pool::builder(bridge)
        .size(2)
        .configure(|c| c.queue_timeout = Duration::from_secs(120))
        .host_function("session.get", move |call| {
            let value = get
                .lock()
                .unwrap()
                .get(&store_key(&call))
                .cloned()
                .unwrap_or(Value::Null);
            async move { Ok::<_, snakepit_core::RemoteError>(value) }
        })
        .host_function("session.set", move |call| {
            set.lock()
                .unwrap()
                .insert(store_key(&call), call.args["value"].clone());
            async move { Ok::<_, snakepit_core::RemoteError>(Value::Null) }
        })
        .start()
        .await
        .unwrap();
    let visit = || pool.execute_in_session("s-r6", "visit", json!({}));
    let first = visit().await.unwrap();
    let home = num(&first, "pid");
    assert_eq!(
        (first["visits"].as_u64(), first["session"].as_str()),
        (Some(1), Some("s-r6"))
    );
    for n in 2..=10u64 {
        let r = visit().await.unwrap();
        assert_eq!(
            (num(&r, "pid"), r["visits"].as_u64()),
            (home, Some(n)),
            "affinity"
        );
    }
    // The session's worker busy: the call runs on the other worker.
    let busy = {
        let (pool, dir) = (pool.clone(), dir.display().to_string());
        tokio::spawn(async move {
            pool.execute_with(
                "sleep",
                json!({"ms": 3_000, "token": 1, "dir": dir}),
                CallOptions::new().session("s-r6"),
            )
            .await
        })
    };
    assert!(eventually(30, || started(&dir).contains_key(&1)).await);
    assert_eq!(
        started(&dir)[&1],
        home,
        "the session's call ran on its worker"
    );
    let r = visit().await.unwrap();
    assert_ne!(
        num(&r, "pid"),
        home,
        "a busy session worker is not waited for"
    );
    assert_eq!(r["visits"].as_u64(), Some(11));
    assert_eq!(num(&busy.await.unwrap().unwrap(), "pid"), home);
    // Back home, then the home worker dies.
    let r = visit().await.unwrap();
    let home = num(&r, "pid");
    assert_eq!(r["visits"].as_u64(), Some(12));
    kill_9(home);
    assert!(
        eventually(60, || !pool.worker_pids().contains(&home)).await,
        "the dead worker left the pool"
    );
    for n in 13..=20u64 {
        let r = pool
            .execute_with(
                "visit",
                json!({}),
                CallOptions::new()
                    .session("s-r6")
                    .affinity(snakepit_core::Affinity::Strict)
                    .timeout(Duration::from_secs(60)),
            )
            .await
            .unwrap_or_else(|e| panic!("visit {n}: {e}"));
        assert_ne!(num(&r, "pid"), home);
        assert_eq!(
            r["visits"].as_u64(),
            Some(n),
            "the session's state survived"
        );
    }
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_session_keeps_its_worker_moves_when_busy_and_survives_its_death() {
    a_session_survives_its_workers_death(node(1), "node-session").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ruby_session_keeps_its_worker_moves_when_busy_and_survives_its_death() {
    a_session_survives_its_workers_death(ruby(), "ruby-session").await;
}

/// FAILURES.md item 2's segfault in a handler, on the Node, Ruby and
/// asyncio Python bridges, while a call runs on the other worker: the
/// crashing call fails with `WorkerCrashed` carrying the signal (SIGSEGV;
/// Ruby's own handler reports the fault and aborts, SIGABRT) and its
/// stderr (the line the handler wrote, and `says`); the call on the other
/// worker returns its result; capacity comes back.
async fn a_segfault_fails_only_its_call(bridge: Bridge, signals: &[i32], says: &str, tag: &str) {
    let dir = notes_dir(tag);
    let pool = Pool::builder(bridge)
        .size(2)
        .configure(|c| {
            c.queue_timeout = Duration::from_secs(120);
            // Ruby's report of the fault runs to hundreds of lines.
            c.stderr_tail_lines = 5000;
        })
        .start()
        .await
        .unwrap();
    let beside = {
        let (pool, dir) = (pool.clone(), dir.display().to_string());
        tokio::spawn(async move {
            pool.execute_with(
                "sleep",
                json!({"ms": 1_500, "token": 5, "dir": dir}),
                CallOptions::new().timeout(Duration::from_secs(120)),
            )
            .await
        })
    };
    assert!(eventually(30, || started(&dir).contains_key(&5)).await);
    let other = started(&dir)[&5];
    let err = pool
        .execute_with(
            "segfault",
            json!({}),
            CallOptions::new().timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap_err();
    let Error::WorkerCrashed(crash) = &err else {
        panic!("expected a crash, got {err:?}")
    };
    assert_ne!(crash.pid, other);
    assert!(
        signals.iter().any(|&s| crash.exit == ExitReason::Signal(s)),
        "{:?}",
        crash.exit
    );
    assert!(
        crash.stderr_tail.contains("about to crash on purpose") && crash.stderr_tail.contains(says),
        "{}",
        crash.stderr_tail
    );
    assert_eq!(beside.await.unwrap().unwrap()["token"], 5);
    assert!(
        eventually(60, || pool.stats().workers == 2
            && !pool.worker_pids().contains(&crash.pid))
        .await,
        "{:?}",
        pool.stats()
    );
    let s = pool.stats();
    assert_eq!(
        (s.requests, s.completed, s.errors, s.crashes),
        (2, 1, 1, 1),
        "{s:?}"
    );
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segfault_in_a_node_handler_fails_only_its_call() {
    a_segfault_fails_only_its_call(
        node(1),
        &[libc::SIGSEGV],
        "about to crash on purpose",
        "node-segv",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segfault_in_a_ruby_handler_fails_only_its_call() {
    a_segfault_fails_only_its_call(
        ruby(),
        &[libc::SIGSEGV, libc::SIGABRT],
        "Segmentation fault",
        "ruby-segv",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segfault_in_an_asyncio_python_handler_fails_only_its_call() {
    a_segfault_fails_only_its_call(
        python_async(1),
        &[libc::SIGSEGV],
        "about to crash on purpose",
        "py-segv",
    )
    .await;
}

/// A way to make a fresh [`Bridge`] of one language.
type MakeBridge = fn() -> Bridge;

/// FAILURES.md item 4 on each bundled bridge: a script that exits at once
/// (status 2, after a line on stderr) and one whose start takes longer than
/// `worker_init_timeout`. `start()` fails with `StartFailed` naming the
/// cause (the exit status; no answer to the init handshake) and, for the
/// first, carrying the line; the slow worker does not outlive the failed
/// start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_faults_of_each_bridge_name_their_cause_and_leave_no_worker() {
    let dir = notes_dir("startup");
    let bridges: [(&str, MakeBridge); 3] = [
        ("python", || python_async(1)),
        ("node", || node(1)),
        ("ruby", ruby),
    ];
    for (name, bridge) in bridges {
        let err = Pool::builder(bridge().env("ROUND6_EXIT_AT_LOAD", "2"))
            .size(1)
            .start()
            .await
            .unwrap_err();
        let Error::StartFailed(e) = &err else {
            panic!("{name}: {err:?}")
        };
        assert!(e.cause.contains("exit status 2"), "{name}: {err}");
        assert!(
            e.stderr_tail.contains("model file missing, giving up"),
            "{name}: {err}"
        );

        let pid_file = dir.join(format!("{name}.pid"));
        let err = Pool::builder(
            bridge()
                .env("ROUND6_SLEEP_AT_LOAD_MS", "600000")
                .env("ROUND6_PID_FILE", &pid_file),
        )
        .size(1)
        .configure(|c| c.worker_init_timeout = Duration::from_secs(3))
        .start()
        .await
        .unwrap_err();
        let Error::StartFailed(e) = &err else {
            panic!("{name}: {err:?}")
        };
        assert!(
            e.cause.contains("no answer to the init handshake"),
            "{name}: {err}"
        );
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .unwrap_or_else(|e| panic!("{name}: the slow worker ran: {e}"))
            .trim()
            .parse()
            .unwrap();
        let gone = eventually(30, || !alive(pid)).await;
        if !gone {
            kill_9(pid);
        }
        assert!(gone, "{name}: the slow worker outlived its failed start");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_storm_on_node_workers_running_four_calls_each_loses_no_call() {
    crash_storm(node(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_storm_on_asyncio_python_workers_running_four_calls_each_loses_no_call() {
    crash_storm(python_async(4)).await;
}

/// Memory growth in a Node or Ruby worker (200 MiB held, the limit
/// `recycle_above_rss_mb` = 150) while sixteen callers keep calling: the
/// grown worker is recycled for memory, the other is not, and no call fails.
async fn a_grown_worker_is_recycled_and_no_call_fails(bridge: Bridge) {
    let recycled = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = recycled.clone();
    let pool = Pool::builder(bridge)
        .size(2)
        .configure(|c| {
            c.recycle_above_rss_mb = 150;
            c.queue_timeout = Duration::from_secs(120);
        })
        .on_event(move |e| {
            if let snakepit_core::events::EventKind::WorkerRecycled { pid, reason, .. } = e.kind {
                log.lock().unwrap().push((pid, reason));
            }
        })
        .start()
        .await
        .unwrap();
    let pids = pool.worker_pids();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..16u64)
        .map(|caller| {
            let (pool, stop) = (pool.clone(), stop.clone());
            tokio::spawn(async move {
                let mut j = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let token = caller * 100_000 + j;
                    let r = pool
                        .execute_with(
                            "sleep",
                            json!({"ms": 5, "token": token}),
                            CallOptions::new().timeout(Duration::from_secs(60)),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("call {token}: {e}"));
                    assert_eq!(r["token"], token);
                    j += 1;
                }
                j
            })
        })
        .collect();
    let r = pool
        .execute_with(
            "grow",
            json!({"mb": 200}),
            CallOptions::new().timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let grown = num(&r, "pid");
    let kept = *pids.iter().find(|&&p| p != grown).unwrap();
    assert!(
        eventually(60, || !recycled.lock().unwrap().is_empty()).await,
        "the grown worker was not recycled"
    );
    // More memory checks (every 100 ms) under load: the small worker stays.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut calls = 0;
    for c in callers {
        calls += c.await.unwrap();
    }
    assert!(calls > 0);
    assert_eq!(*recycled.lock().unwrap(), vec![(grown, "memory")]);
    let now = pool.worker_pids();
    assert!(now.contains(&kept) && !now.contains(&grown), "{now:?}");
    let s = pool.stats();
    assert_eq!((s.errors, s.crashes, s.recycled), (0, 0, 1), "{s:?}");
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_worker_grown_past_the_memory_limit_is_recycled_and_no_call_fails() {
    a_grown_worker_is_recycled_and_no_call_fails(node(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ruby_worker_grown_past_the_memory_limit_is_recycled_and_no_call_fails() {
    a_grown_worker_is_recycled_and_no_call_fails(ruby()).await;
}
