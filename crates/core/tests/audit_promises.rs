//! Promises of docs/reliability.md that an audit found no test showing,
//! each shown with real worker processes: the bound on a worker's host
//! calls in flight (`workers/audit_worker.py`, no bridge), reaping on every
//! path that ends a worker, idle recycling of a busy worker, how the sweep
//! treats a record without a namespace and boot id, and the run record's
//! name and contents.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::json;
use snakepit_core::events::EventKind;
use snakepit_core::sweep::{sweep, SweepOptions};
use snakepit_core::{Adapter, CallOptions, Error, Launch, Pool, PoolBuilder};

// ---------------------------------------------------------------------------
// Host calls in flight
// ---------------------------------------------------------------------------

/// `workers/audit_worker.py`: declares `host_calls`; `host_calls {n}` puts
/// `n` host calls to `gate` in flight at once, then waits for their replies.
struct Audit;

impl Adapter for Audit {
    fn launch(&self) -> Launch {
        Launch::new(python())
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/audit_worker.py"))
    }
}

/// A host function `gate` that answers nothing until the gate opens: how
/// many calls entered it, and the gate.
struct Gate {
    entered: Arc<AtomicUsize>,
    open: tokio::sync::watch::Sender<bool>,
}

/// A one-worker pool of `Audit` (no health pings: nothing but the test's
/// calls and the worker's host calls on the pipes), with a closed `gate`.
async fn gated_pool() -> (Pool, Gate) {
    let entered = Arc::new(AtomicUsize::new(0));
    let (open, rx) = tokio::sync::watch::channel(false);
    let counter = entered.clone();
    let pool = builder(Audit)
        .size(1)
        .configure(|c| c.health_check_interval = Duration::ZERO)
        .host_function("gate", move |call| {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|open| *open).await;
                Ok(call.args)
            }
        })
        .start()
        .await
        .unwrap();
    (pool, Gate { entered, open })
}

/// docs/reliability.md:145-148: "A worker may have at most 256 host calls
/// in flight (answers not yet written to its stdin) ...; one over the
/// bound ... is a protocol error and the worker is replaced." Exactly 256
/// in flight at once, none answered (the host function holds every one of
/// them), are allowed: all 256 reach the host function, the call succeeds
/// once the host function answers them, and the same worker serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_256_host_calls_in_flight_are_allowed() {
    let (pool, gate) = gated_pool().await;
    let worker = pool.worker_pids()[0];
    let call = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute_with(
                "host_calls",
                json!({"n": 256}),
                CallOptions::new().timeout(Duration::from_secs(120)),
            )
            .await
        })
    };
    // Every one is taken (a host function task runs only for a host call
    // within the bound) while none is answered.
    assert!(
        eventually(60, || gate.entered.load(Ordering::SeqCst) == 256).await,
        "only {} of 256 host calls reached the host function",
        gate.entered.load(Ordering::SeqCst)
    );
    assert!(
        !call.is_finished(),
        "the call ended with its host calls unanswered"
    );
    assert_eq!(pool.worker_pids(), vec![worker]);
    gate.open.send_replace(true);
    let r = call
        .await
        .unwrap()
        .expect("256 host calls in flight are allowed");
    assert_eq!(r["replies"], 256, "{r}");
    assert_eq!(r["all_ok"], true, "{r}");
    assert_eq!(r["ids"], true, "{r}");
    assert_eq!(r["pid"].as_u64().unwrap() as u32, worker);
    // The worker serves on: no protocol error, no replacement.
    let again = pool.execute("host_calls", json!({"n": 3})).await.unwrap();
    assert_eq!(again["replies"], 3, "{again}");
    assert_eq!(again["pid"].as_u64().unwrap() as u32, worker);
    let stats = pool.stats();
    assert_eq!(
        (stats.errors, stats.crashes, stats.restarts),
        (0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(pool.worker_pids(), vec![worker]);
    pool.shutdown().await.unwrap();
}

/// docs/reliability.md:145-148: "A worker may have at most 256 host calls
/// in flight ...; one over the bound ... is a protocol error and the
/// worker is replaced." With 256 in flight and unanswered, the 257th fails
/// the call with `Error::Protocol` ("more than 256 host calls"), the host
/// function sees no 257th, and the worker is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_257th_host_call_in_flight_is_a_protocol_error() {
    let (pool, gate) = gated_pool().await;
    let worker = pool.worker_pids()[0];
    let err = pool
        .execute_with(
            "host_calls",
            json!({"n": 257}),
            CallOptions::new().timeout(Duration::from_secs(120)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err:?}");
    assert!(
        err.to_string().contains("more than 256 host calls"),
        "{err}"
    );
    // The 256 before it were taken; the 257th never reached the host
    // function.
    assert!(
        eventually(30, || gate.entered.load(Ordering::SeqCst) == 256).await,
        "{} host calls reached the host function",
        gate.entered.load(Ordering::SeqCst)
    );
    assert!(
        eventually(30, || {
            let pids = pool.worker_pids();
            pids.len() == 1 && pids[0] != worker
        })
        .await,
        "the worker was replaced"
    );
    assert!(eventually(10, || !alive(worker)).await);
    assert_eq!(gate.entered.load(Ordering::SeqCst), 256);
    // Let the held host function tasks end (they hold pool handles).
    gate.open.send_replace(true);
    let r = pool.execute("pid", json!({})).await.unwrap();
    assert_ne!(r["pid"].as_u64().unwrap() as u32, worker);
    pool.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// Kill and reap
// ---------------------------------------------------------------------------

/// `/proc/<pid>/stat` of `pid`: its state and parent, if it exists.
fn state_and_parent(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Those of `pids` that are zombies whose parent is this (the host)
/// process: exited, never reaped.
fn unreaped(pids: &BTreeSet<u32>) -> Vec<u32> {
    let me = std::process::id();
    pids.iter()
        .copied()
        .filter(|&p| state_and_parent(p) == Some(('Z', me)))
        .collect()
}

/// Waits (generously, up to 20 s) until none of `pids` is an unreaped
/// zombie child of this process; panics naming those that stay.
async fn assert_reaped(pids: &BTreeSet<u32>, when: &str) {
    assert!(!pids.is_empty());
    if !eventually(20, || unreaped(pids).is_empty()).await {
        panic!(
            "{when}: workers {:?} exited but were never reaped (zombies of the host)",
            unreaped(pids)
        );
    }
}

/// A pool of `size` test workers (no health pings) that records the pid of
/// every worker it ever made ready.
async fn recording_pool(
    size: usize,
    tune: impl FnOnce(PoolBuilder) -> PoolBuilder,
) -> (Pool, Arc<Mutex<BTreeSet<u32>>>) {
    let seen: Arc<Mutex<BTreeSet<u32>>> = Arc::default();
    let log = seen.clone();
    let pool = tune(
        builder(TestWorker::new())
            .size(size)
            .configure(|c| c.health_check_interval = Duration::ZERO)
            .on_event(move |e| {
                if let EventKind::WorkerReady { pid, .. } = e.kind {
                    log.lock().unwrap().insert(pid);
                }
            }),
    )
    .start()
    .await
    .unwrap();
    (pool, seen)
}

/// A child of each of `pool`'s workers, in the worker's process group:
/// worker pid -> child pid.
async fn a_child_per_worker(pool: &Pool, workers: usize) -> BTreeMap<u32, u32> {
    let mut children = BTreeMap::new();
    // Calls go to idle workers first; loop until each worker made one.
    for _ in 0..50 {
        if children.len() == workers {
            break;
        }
        let calls: Vec<_> = (0..workers)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.execute("spawn_child", json!({})).await.unwrap() })
            })
            .collect();
        for c in calls {
            let r = c.await.unwrap();
            let worker = r["pid"].as_u64().unwrap() as u32;
            let child = r["child_pid"].as_u64().unwrap() as u32;
            if let Some(extra) = children.insert(worker, child) {
                kill_9(extra);
            }
        }
    }
    assert_eq!(children.len(), workers, "a child in each worker");
    children
}

/// docs/reliability.md:19: "shutdown, replacement and dropping the last
/// `Pool` handle kill the whole group and reap it". Replacement after a
/// worker is killed from outside (SIGKILL to the worker alone, not its
/// group): the dead worker's group is killed (its child dies) and the dead
/// worker is reaped: no worker pid is left a zombie child of the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_replaced_worker_is_reaped_with_its_group_killed() {
    let (pool, seen) = recording_pool(2, |b| b).await;
    let children = a_child_per_worker(&pool, 2).await;
    let victim = pool.worker_pids()[0];
    let victims_child = children[&victim];
    assert!(alive(victims_child));
    kill_9(victim);
    assert!(
        eventually(30, || {
            let pids = pool.worker_pids();
            pids.len() == 2 && !pids.contains(&victim)
        })
        .await,
        "the killed worker was replaced"
    );
    assert!(
        eventually(10, || !alive(victims_child)).await,
        "the killed worker's group (its child) was killed"
    );
    assert!(
        eventually(10, || seen.lock().unwrap().len() == 3).await,
        "two workers and a replacement: {:?}",
        seen.lock().unwrap()
    );
    let seen_now = seen.lock().unwrap().clone();
    assert_reaped(&seen_now, "after a kill and replacement").await;
    pool.shutdown().await.unwrap();
    for c in children.into_values() {
        if alive(c) {
            kill_9(c);
        }
    }
}

/// docs/reliability.md:19: "shutdown, replacement and dropping the last
/// `Pool` handle kill the whole group and reap it". Replacement on purpose
/// (recycled after one call): each retired worker is reaped, none is left a
/// zombie child of the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycled_workers_are_reaped() {
    let (pool, seen) = recording_pool(1, |b| b.configure(|c| c.recycle_after_calls = 1)).await;
    // Each worker serves one call and is retired: four workers retired.
    let mut retired = BTreeSet::new();
    for _ in 0..4 {
        let r = pool.execute("pid", json!({})).await.unwrap();
        retired.insert(r["pid"].as_u64().unwrap() as u32);
    }
    assert_eq!(retired.len(), 4, "one call per worker: {retired:?}");
    assert!(
        eventually(30, || pool.stats().recycled == 4).await,
        "{:?}",
        pool.stats()
    );
    assert!(retired.is_subset(&seen.lock().unwrap()));
    // A retired worker gets its stdin closed and exits on its own: wait for
    // it to be gone, not merely a zombie.
    assert!(
        eventually(20, || retired.iter().all(|&p| !alive(p))).await,
        "retired workers still run"
    );
    assert_reaped(&retired, "after recycling").await;
    pool.shutdown().await.unwrap();
}

/// docs/reliability.md:19: "shutdown, replacement and dropping the last
/// `Pool` handle kill the whole group and reap it". After `shutdown()`, and
/// after dropping the last handle (no `shutdown()`, the runtime running
/// on): every worker's group is gone (their children too) and no worker is
/// left a zombie child of the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_and_dropping_the_last_handle_kill_and_reap_every_group() {
    for shutdown in [true, false] {
        let (pool, seen) = recording_pool(3, |b| b).await;
        let children: Vec<u32> = a_child_per_worker(&pool, 3).await.into_values().collect();
        let workers: BTreeSet<u32> = pool.worker_pids().into_iter().collect();
        assert_eq!(workers.len(), 3);
        let how = if shutdown {
            pool.shutdown().await.unwrap();
            "after shutdown()"
        } else {
            drop(pool);
            "after dropping the last Pool handle"
        };
        for &w in &workers {
            assert!(
                eventually(10, || !alive(w)).await,
                "worker {w} still runs {how}"
            );
        }
        for &c in &children {
            assert!(
                eventually(10, || !alive(c)).await,
                "child {c} of a worker outlived the pool {how}"
            );
        }
        let seen_now = seen.lock().unwrap().clone();
        assert_eq!(seen_now, workers);
        assert_reaped(&seen_now, how).await;
    }
}

// ---------------------------------------------------------------------------
// Idle recycling
// ---------------------------------------------------------------------------

/// docs/reliability.md:179: `worker_idle_timeout_ms` replaces a worker
/// "when it has had no call for this long". A worker busy with one call
/// three times longer than the idle timeout (6 s against 2 s) is not
/// recycled during it: the same worker answers, and no `WorkerRecycled`
/// event names it before its call ended. Some time after the reply, idle,
/// it is recycled for `idle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_busy_longer_than_the_idle_timeout_is_not_recycled_during_its_call() {
    /// What happened, in order: `("ended", pid)` for the call's end,
    /// `(reason, pid)` for a recycling.
    type Log = Vec<(&'static str, u32)>;
    let events: Arc<Mutex<Log>> = Arc::default();
    let log = events.clone();
    let idle = Duration::from_secs(2);
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| {
            c.health_check_interval = Duration::ZERO;
            c.worker_idle_timeout = idle;
        })
        .on_event(move |e| match e.kind {
            EventKind::WorkerRecycled { pid, reason, .. } => {
                log.lock().unwrap().push((reason, pid));
            }
            EventKind::CallEnded {
                command: "sleep",
                pid: Some(pid),
                ..
            } => log.lock().unwrap().push(("ended", pid)),
            _ => {}
        })
        .start()
        .await
        .unwrap();
    let call = a_running_sleep(&pool, 6_000, Duration::from_secs(60)).await;
    let busy = pool
        .workers()
        .iter()
        .find(|w| w.in_flight == 1)
        .map(|w| w.pid)
        .expect("the worker running the call");
    let r = call.await.unwrap().expect("the long call succeeds");
    let served = r["pid"].as_u64().unwrap() as u32;
    assert_eq!(served, busy, "the worker that took the call answered it");
    let during: Log = events
        .lock()
        .unwrap()
        .iter()
        .copied()
        .take_while(|e| *e != ("ended", served))
        .filter(|e| e.1 == served)
        .collect();
    assert!(
        during.is_empty(),
        "worker {served} was recycled during its {idle:?}+ call: {during:?}"
    );
    assert!(
        events.lock().unwrap().contains(&("ended", served)),
        "{:?}",
        events.lock().unwrap()
    );
    // Idle from the reply on, it is recycled for `idle`, after its call.
    assert!(
        eventually(30, || events.lock().unwrap().contains(&("idle", served))).await,
        "worker {served} was never recycled once idle: {:?}",
        events.lock().unwrap()
    );
    let log = events.lock().unwrap().clone();
    let ended = log.iter().position(|e| *e == ("ended", served)).unwrap();
    let recycled = log.iter().position(|e| *e == ("idle", served)).unwrap();
    assert!(recycled > ended, "{log:?}");
    assert!(eventually(30, || !pool.worker_pids().contains(&served)).await);
    pool.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// Run records and the sweep
// ---------------------------------------------------------------------------

/// docs/reliability.md:77: a record "written in another PID namespace ...,
/// or without a namespace and boot id" — "its pid means nothing here: left
/// alone, counted in `foreign_runs`". A record of a run with a live
/// leftover and a dead host, lacking the `pidns` and `boot` lines: the
/// sweep counts it in `foreign_runs`, kills nothing, keeps the record, and
/// the leftover lives. The same record with this namespace and boot id
/// does get the leftover swept, which shows the setup would be acted on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_without_namespace_and_boot_id_is_foreign_and_left_alone() {
    let dir = temp_dir("audit-foreign");
    let run_id = &a_run_id("a1b2c3d4e5f60718");
    let leftover = a_leftover(run_id);
    let host = a_dead_pid();
    let record = dir.join(format!("forged.{host}.{run_id}.run"));
    std::fs::write(&record, forged_record(run_id, host, None)).unwrap();

    let report = sweep(&SweepOptions::new().state_dir(&dir)).unwrap();
    let foreign_alive = alive(leftover);
    let kept = record.exists();
    if !foreign_alive || !kept || report.foreign_runs != 1 {
        kill_9(leftover);
    }
    assert_eq!(report.foreign_runs, 1, "{report:?}");
    assert_eq!(report.killed(), 0, "{report:?}");
    assert!(report.stale_runs.is_empty(), "{report:?}");
    assert_eq!(report.active_runs, 0, "{report:?}");
    assert!(kept, "the record without namespace and boot id was removed");
    assert!(foreign_alive, "the leftover of a foreign record was killed");

    // The control: this namespace and boot, the same dead host.
    std::fs::write(
        &record,
        forged_record(run_id, host, Some((our_pid_namespace(), &our_boot_id()))),
    )
    .unwrap();
    let report = sweep(&SweepOptions::new().state_dir(&dir)).unwrap();
    let swept = eventually(5, || !alive(leftover)).await;
    if !swept {
        kill_9(leftover);
    }
    assert_eq!(report.foreign_runs, 0, "{report:?}");
    assert_eq!(report.killed(), 1, "{report:?}");
    assert!(swept, "the control record's leftover was swept");
    assert!(!record.exists());
    let _ = std::fs::remove_dir_all(dir);
}

/// Field 22 of `/proc/<pid>/stat`: the process's start time, in clock
/// ticks after boot.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields from 3 (state) on follow the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(22 - 3).unwrap().parse().unwrap()
}

/// The `worker <pid> <start>` lines of a record.
fn recorded_workers(text: &str) -> BTreeMap<u32, u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("worker "))
        .map(|rest| {
            let (pid, start) = rest.split_once(' ').expect("worker <pid> <start>");
            (pid.parse().unwrap(), start.parse().unwrap())
        })
        .collect()
}

/// Every live worker of `pool` with its start time from `/proc`.
fn live_workers(pool: &Pool) -> BTreeMap<u32, u64> {
    pool.worker_pids()
        .into_iter()
        .map(|p| (p, start_time(p)))
        .collect()
}

/// The names in `dir`, leaving out the hidden temporary files a record is
/// written to before it is renamed into place.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !(n.starts_with('.') && n.ends_with(".tmp")))
        .collect();
    names.sort();
    names
}

/// docs/reliability.md:25-32: "Each pool writes
/// `<instance>.<host pid>.<run id>.run` in `$SNAKEPIT_STATE_DIR` ... The
/// record holds ... the host's pid and start time ... and each live
/// worker's pid and start time. A clean shutdown deletes it." A pool named
/// `alpha` with a state directory of its own: one file, of exactly that
/// name, listing every worker with the start time `/proc/<pid>/stat`
/// (field 22) gives; after a worker is replaced, the live ones only; none
/// after `shutdown()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_record_is_named_for_the_run_and_lists_each_live_worker() {
    let dir = temp_dir("audit-record");
    let pool = builder(TestWorker::new())
        .size(2)
        .name("alpha")
        .configure(|c| {
            c.state_dir = Some(dir.clone());
            c.health_check_interval = Duration::ZERO;
        })
        .start()
        .await
        .unwrap();
    let me = std::process::id();
    let name = format!("alpha.{me}.{}.run", pool.run_id());
    assert_eq!(names_in(&dir), vec![name.clone()]);
    let path = dir.join(&name);
    let read = || std::fs::read_to_string(&path).unwrap();

    let text = read();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.contains(&"instance alpha"), "{text}");
    let run_id_line = format!("run_id {}", pool.run_id());
    assert!(lines.contains(&run_id_line.as_str()), "{text}");
    let host_line = format!("host {me} {}", start_time(me));
    assert!(lines.contains(&host_line.as_str()), "{text}");
    let workers = live_workers(&pool);
    assert_eq!(workers.len(), 2);
    assert_eq!(recorded_workers(&text), workers, "{text}");

    // A worker killed and replaced: the record follows the live workers.
    let victim = pool.worker_pids()[0];
    kill_9(victim);
    assert!(
        eventually(30, || {
            let pids = pool.worker_pids();
            pids.len() == 2 && !pids.contains(&victim)
        })
        .await,
        "the killed worker was replaced"
    );
    assert!(
        eventually(20, || recorded_workers(&read()) == live_workers(&pool)).await,
        "the record does not list the live workers: {} vs {:?}",
        read(),
        live_workers(&pool)
    );
    assert!(!recorded_workers(&read()).contains_key(&victim));
    assert_eq!(names_in(&dir), vec![name]);

    pool.shutdown().await.unwrap();
    assert!(!path.exists(), "a clean shutdown deletes the record");
    let _ = std::fs::remove_dir_all(dir);
}
