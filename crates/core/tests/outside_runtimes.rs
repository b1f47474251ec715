//! Pools across Tokio runtimes, threads and lifecycles, tested from outside
//! against real Python workers (`tests/workers/test_worker.py`).
//!
//! A pool lives on the runtime it was started in (its readers, supervisors
//! and timers are tasks there), but its handle is `Send + Sync` and may be
//! called from anywhere: another runtime, a plain thread through a
//! `Handle`, a `Drop`. These tests call it from there, kill its runtime
//! under its callers' feet, shut it down from several places at once, and
//! check what the docs promise whatever happens: typed errors instead of
//! hangs or panics, and no process of the run left behind.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use snakepit_core::events::EventKind;
use snakepit_core::{
    CallOptions, CallStream, Error, Launch, Pool, RawProcess, StreamItem, WireCodec,
};

/// Waits (on a plain thread) up to `secs` for the run to have no process
/// left; kills and returns what is left.
fn nothing_left_of(run_id: &str, secs: u64) -> Vec<u32> {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let left = processes_of_run(run_id);
        if left.is_empty() || Instant::now() >= until {
            for &p in &left {
                kill_9(p);
            }
            return left;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// How the pool's runtime goes away.
#[derive(Clone, Copy, Debug)]
enum Death {
    ShutdownTimeout,
    ShutdownBackground,
    Drop,
}

impl Death {
    /// Ends `rt` this way (`ShutdownTimeout` giving its tasks `timeout`).
    fn end(self, rt: tokio::runtime::Runtime, timeout: Duration) {
        match self {
            Death::ShutdownTimeout => rt.shutdown_timeout(timeout),
            Death::ShutdownBackground => rt.shutdown_background(),
            Death::Drop => drop(rt),
        }
    }
}

/// A pool of one worker, without pipelining, started on `rt`.
fn one_worker_on(rt: &tokio::runtime::Runtime) -> Pool {
    rt.block_on(
        builder(TestWorker::new())
            .size(1)
            .configure(|c| c.pipeline_depth = 0)
            .start(),
    )
    .unwrap()
}

type Call = tokio::task::JoinHandle<snakepit_core::Result<Value>>;

/// On `rt`, callers of `pool` (one worker): a sleep of `ms` running on the
/// worker and two `echo` calls queued behind it, each with `deadline`.
fn one_running_two_queued(
    rt: &tokio::runtime::Runtime,
    pool: &Pool,
    ms: u64,
    deadline: Duration,
) -> (Call, Vec<Call>) {
    rt.block_on(async {
        let running = a_running_sleep(pool, ms, deadline).await;
        let queued: Vec<_> = (0..2)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    pool.execute_with(
                        "echo",
                        json!({ "i": i }),
                        CallOptions::new().timeout(deadline),
                    )
                    .await
                })
            })
            .collect();
        assert!(
            eventually(20, || pool.stats().queued == 2).await,
            "two calls queued: {:?}",
            pool.stats()
        );
        (running, queued)
    })
}

/// A pool of two test workers, started on `rt`.
fn two_workers_on(rt: &tokio::runtime::Runtime) -> Pool {
    rt.block_on(builder(TestWorker::new()).size(2).start())
        .unwrap()
}

/// A pool of one worker runs on runtime A; its callers run on runtime B:
/// one call running on the worker, two waiting in the queue. Runtime A
/// dies (`how`) under them. Each caller must hear a typed `Error` within
/// its deadline and a margin (no hang, no panic), a call made after the
/// death too, and the pool must leave no process of its run: after
/// `shutdown()` from B (`shut_down`), or after its last handle is dropped
/// on B without one.
///
/// The promises: lib.rs "routes each call to a free worker through a
/// bounded queue with deadlines ... and never leaves an orphan process";
/// ARCHITECTURE.md "The deadline counts from submission and covers queue
/// wait and run time"; README "does not leave orphan processes behind".
fn the_pools_runtime_dies_under_callers_of_another(how: Death, shut_down: bool) {
    let rt_a = runtime(2);
    let rt_b = runtime(2);
    let pool = one_worker_on(&rt_a);
    let run_id = pool.run_id().to_owned();
    let worker = pool.worker_pids()[0];
    let deadline = Duration::from_secs(3);

    let (running, queued) = one_running_two_queued(&rt_b, &pool, 2_000, deadline);

    how.end(rt_a, Duration::from_secs(1));

    rt_b.block_on(async {
        let bound = deadline + Duration::from_secs(12);
        let mut outcomes = vec![];
        for (what, call) in
            std::iter::once(("running", running)).chain(queued.into_iter().map(|c| ("queued", c)))
        {
            let out = tokio::time::timeout(bound, call)
                .await
                .unwrap_or_else(|_| panic!("the {what} call hung after runtime A died ({how:?})"))
                .unwrap_or_else(|e| panic!("the {what} call's task panicked ({how:?}): {e}"));
            outcomes.push((what, out));
        }
        // A call made after the death ends too, with a typed error.
        let after = tokio::time::timeout(
            bound,
            pool.execute_with("echo", json!({}), CallOptions::new().timeout(deadline)),
        )
        .await
        .unwrap_or_else(|_| panic!("a call made after runtime A died hung ({how:?})"));
        outcomes.push(("after", after));
        for (what, out) in &outcomes {
            // The running call may have its result if it came before the
            // death was felt; the others cannot reach a worker whose reader
            // is gone, so they fail, each with a typed error.
            if *what != "running" {
                assert!(
                    out.is_err(),
                    "the {what} call got a result with its pool's runtime gone ({how:?}): {out:?}"
                );
            }
        }
        if shut_down {
            tokio::time::timeout(Duration::from_secs(20), pool.shutdown())
                .await
                .unwrap_or_else(|_| panic!("shutdown() from runtime B hung ({how:?})"))
                .unwrap();
            let e = pool.execute("echo", json!({})).await.unwrap_err();
            assert!(matches!(e, Error::ShutDown), "{e:?}");
        }
    });
    if !shut_down {
        drop(pool);
    }
    drop(rt_b);
    let left = nothing_left_of(&run_id, 20);
    assert!(
        left.is_empty() && !alive(worker),
        "processes of the run left after its runtime died ({how:?}, shut down: {shut_down}): {left:?}"
    );
}

/// `#[test]`s of one body: each line names a test and the arguments it
/// runs `$body` with.
macro_rules! tests_of {
    ($body:ident: $($name:ident($($arg:expr),*);)+) => {
        $(
            #[test]
            fn $name() {
                $body($($arg),*);
            }
        )+
    };
}

tests_of! { the_pools_runtime_dies_under_callers_of_another:
    callers_on_another_runtime_get_errors_when_the_pools_runtime_shuts_down_with_a_timeout(
        Death::ShutdownTimeout, true);
    callers_on_another_runtime_get_errors_when_the_pools_runtime_shuts_down_in_the_background(
        Death::ShutdownBackground, false);
    callers_on_another_runtime_get_errors_when_the_pools_runtime_is_dropped(Death::Drop, true);
}

/// The pool's runtime A is dropped while callers on runtime B wait with
/// long deadlines (60 s): one call running on the only worker, two queued.
/// Then B calls `shutdown()`. `Pool::shutdown`: "Stops admitting calls,
/// lets calls in flight finish within the grace period ... A call still
/// running when the grace period ends fails with
/// [`Error::StoppedByShutdown`] then"; ARCHITECTURE.md: "its caller hears
/// it when the grace period ends, not later". The callers must hear at
/// shutdown, not at their deadlines: the running one `StoppedByShutdown`,
/// the queued ones an error that says they never ran.
#[test]
fn a_shutdown_from_another_runtime_after_the_pools_died_ends_every_waiting_caller() {
    let rt_a = runtime(2);
    let rt_b = runtime(2);
    let pool = one_worker_on(&rt_a);
    let run_id = pool.run_id().to_owned();
    let long = Duration::from_secs(60);
    let (running, queued) = one_running_two_queued(&rt_b, &pool, 20_000, long);
    drop(rt_a);
    rt_b.block_on(async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        tokio::time::timeout(Duration::from_secs(20), pool.shutdown())
            .await
            .expect("shutdown() from runtime B hung")
            .unwrap();
        let bound = Duration::from_secs(10);
        let out = tokio::time::timeout(bound, running)
            .await
            .expect("the running call was not told of the shutdown: it waits for its deadline")
            .unwrap();
        assert!(
            matches!(out, Err(Error::StoppedByShutdown { .. })),
            "the running call: {out:?}"
        );
        for q in queued {
            let out = tokio::time::timeout(bound, q)
                .await
                .expect("a queued call was not told of the shutdown: it waits for its deadline")
                .unwrap();
            assert!(
                out.as_ref().is_err_and(|e| e.never_ran()),
                "a queued call: {out:?}"
            );
        }
    });
    drop(pool);
    let left = nothing_left_of(&run_id, 20);
    assert!(left.is_empty(), "processes of the run left: {left:?}");
}

/// A pool held only by a task of its runtime (a service's loop), and the
/// runtime shut down (what `#[tokio::main]` does when `main` returns with
/// tasks still running): the task is dropped with the runtime, the pool's
/// last handle with it, inside the runtime's shutdown. No panic, and
/// (ARCHITECTURE.md) "Dropping the last `Pool` handle without `shutdown()`
/// kills every group at once": nothing of the run is left.
#[test]
fn a_pool_held_by_a_task_goes_with_its_runtime() {
    for how in [
        Death::ShutdownTimeout,
        Death::ShutdownBackground,
        Death::Drop,
    ] {
        let rt = runtime(2);
        let pool = two_workers_on(&rt);
        let run_id = pool.run_id().to_owned();
        let served = Arc::new(AtomicUsize::new(0));
        {
            let served = served.clone();
            rt.spawn(async move {
                loop {
                    let r = pool.execute("sleep", json!({"ms": 20})).await;
                    assert!(r.is_ok(), "{r:?}");
                    served.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        wait_blocking(20, || served.load(Ordering::SeqCst) >= 3);
        assert_eq!(processes_of_run(&run_id).len(), 2);
        how.end(rt, Duration::from_secs(2));
        let left = nothing_left_of(&run_id, 20);
        assert!(
            left.is_empty(),
            "{how:?}: processes of the run left: {left:?}"
        );
    }
}

/// How a call on a stubborn worker is given up.
#[derive(Clone, Copy, Debug)]
enum GiveUp {
    /// Its future dropped (a `tokio::time::timeout` around it).
    Dropped,
    /// Its own deadline (`CallOptions::timeout`).
    Deadline,
}

/// A call on a worker that ignores its cancel, given up (`how`) on runtime
/// C, a short-lived runtime of a plain thread (what a synchronous wrapper
/// that builds a runtime per call does), and C gone right after. The pool
/// runs on runtime A, alive throughout. ARCHITECTURE.md: "On timeout or
/// drop the pool sends a `cancel` frame ... or SIGINT ... and keeps the
/// unit until the late reply or the grace period, after which the worker
/// is killed and replaced"; worker.rs: the grace period of a call given up
/// outside the pool's runtime is "timed on the worker's own runtime". The
/// stubborn worker must be replaced once the grace period is over, and
/// the pool serve again, whatever became of runtime C. With `on_a` the
/// same call is given up on runtime A itself: the control, which shows
/// the worker stubborn and the replacement seen.
fn a_call_given_up_on_a_runtime_that_then_ends(how: GiveUp, on_a: bool) {
    let rt_a = runtime(2);
    let pool = rt_a
        .block_on(
            builder(BridgeScript("outside_runtimes_worker.py"))
                .size(1)
                .configure(|c| {
                    c.health_check_interval = Duration::ZERO;
                    c.pipeline_depth = 0;
                })
                .start(),
        )
        .unwrap();
    let run_id = pool.run_id().to_owned();
    let stubborn = pool.worker_pids()[0];
    let give_up = {
        let pool = pool.clone();
        async move {
            let call = pool.execute_with(
                "stubborn",
                json!({"ms": 12_000}),
                CallOptions::new().timeout(match how {
                    GiveUp::Dropped => Duration::from_secs(60),
                    GiveUp::Deadline => Duration::from_millis(500),
                }),
            );
            match tokio::time::timeout(Duration::from_millis(500), call).await {
                Ok(out) => assert!(out.is_err(), "{out:?}"),
                Err(_) => assert!(matches!(how, GiveUp::Dropped)),
            }
        }
    };
    if on_a {
        rt_a.block_on(give_up);
    } else {
        std::thread::spawn(move || {
            let rt_c = current_thread_runtime();
            rt_c.block_on(give_up);
            drop(rt_c);
        })
        .join()
        .expect("runtime C's thread");
    }
    // The grace period is 0.5 s (`common::builder`): the worker is killed
    // and replaced well within the 12 s it would otherwise run.
    let replaced = rt_a.block_on(async {
        eventually(8, || {
            let now = pool.worker_pids();
            now.len() == 1 && now[0] != stubborn
        })
        .await
    });
    let still = alive(stubborn);
    let served = rt_a.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), pool.execute("pid", json!({}))).await
    });
    rt_a.block_on(pool.shutdown()).unwrap();
    drop(pool);
    let _ = nothing_left_of(&run_id, 10);
    assert!(
        replaced && !still,
        "{how:?} (on runtime A: {on_a}): the worker that ignored its cancel was not killed \
         within 8 s, its grace period being 0.5 s (still alive: {still}); the next call, once \
         the stubborn call ended by itself: {served:?}"
    );
    assert!(matches!(served, Ok(Ok(_))), "{served:?}");
}

tests_of! { a_call_given_up_on_a_runtime_that_then_ends:
    control_a_call_dropped_on_the_pools_own_runtime_gets_its_stubborn_worker_replaced(
        GiveUp::Dropped, true);
    a_call_dropped_on_a_short_lived_runtime_still_gets_its_stubborn_worker_replaced(
        GiveUp::Dropped, false);
    a_call_timed_out_on_a_short_lived_runtime_still_gets_its_stubborn_worker_replaced(
        GiveUp::Deadline, false);
}

/// Holds a pool and shuts it down when dropped, from inside a task of a
/// multi-thread runtime (`block_in_place`), as a service's guard would.
struct ShutDownOnDrop(Option<Pool>);

impl Drop for ShutDownOnDrop {
    fn drop(&mut self) {
        if let Some(pool) = self.0.take() {
            let handle = tokio::runtime::Handle::current();
            tokio::task::block_in_place(|| handle.block_on(pool.shutdown())).unwrap();
        }
    }
}

/// A pool started on runtime A serves callers on plain threads (through
/// A's `Handle`) and on runtimes of their own, then is shut down from four
/// places at once: runtime B, runtime C, a `spawn_blocking` thread of A,
/// and a `Drop` inside a task of A. Every shutdown returns `Ok` (docs:
/// `Pool::shutdown` "Stops admitting calls, lets calls in flight finish
/// within the grace period, ... and reaps them"; a second shutdown is
/// fine), no call ever got another's answer, every later call is
/// `ShutDown`, and no process of the run is left.
#[test]
fn calls_from_plain_threads_and_other_runtimes_then_shutdowns_from_four_places_at_once() {
    let rt_a = runtime(2);
    let pool = two_workers_on(&rt_a);
    let run_id = pool.run_id().to_owned();
    let pids = pool.worker_pids();

    // Callers: plain threads through A's handle, and threads each with a
    // current-thread runtime of their own.
    let callers: Vec<_> = (0..6)
        .map(|t| {
            let (pool, handle) = (pool.clone(), rt_a.handle().clone());
            std::thread::spawn(move || {
                let own = (t % 2 == 1).then(current_thread_runtime);
                for i in 0..20 {
                    let call = pool.execute("echo", json!({ "token": format!("{t}-{i}") }));
                    let r: Value = match &own {
                        Some(rt) => rt.block_on(call),
                        None => handle.block_on(call),
                    }
                    .unwrap();
                    assert_eq!(
                        r["echoed"]["token"],
                        format!("{t}-{i}"),
                        "another call's answer"
                    );
                }
            })
        })
        .collect();
    for c in callers {
        c.join().expect("a caller thread");
    }
    assert_eq!(pool.stats().completed, 120, "{:?}", pool.stats());

    // Four shutdowns at once.
    let go = Arc::new(std::sync::Barrier::new(4));
    let from_runtime = |pool: Pool, go: Arc<std::sync::Barrier>| {
        std::thread::spawn(move || {
            let rt = runtime(1);
            go.wait();
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(20), pool.shutdown()).await
            })
        })
    };
    let b = from_runtime(pool.clone(), go.clone());
    let c = from_runtime(pool.clone(), go.clone());
    let blocking = {
        let (pool, go) = (pool.clone(), go.clone());
        rt_a.spawn_blocking(move || {
            let handle = tokio::runtime::Handle::current();
            go.wait();
            handle.block_on(async {
                tokio::time::timeout(Duration::from_secs(20), pool.shutdown()).await
            })
        })
    };
    let guard = ShutDownOnDrop(Some(pool.clone()));
    let in_drop = rt_a.spawn(async move {
        tokio::task::spawn_blocking(move || go.wait())
            .await
            .unwrap();
        drop(guard);
    });
    let b = b.join().expect("runtime B's thread");
    let c = c.join().expect("runtime C's thread");
    let (blocking, in_drop) = rt_a.block_on(async { (blocking.await, in_drop.await) });
    assert!(matches!(b, Ok(Ok(()))), "from runtime B: {b:?}");
    assert!(matches!(c, Ok(Ok(()))), "from runtime C: {c:?}");
    assert!(
        matches!(blocking, Ok(Ok(Ok(())))),
        "from spawn_blocking: {blocking:?}"
    );
    assert!(
        in_drop.is_ok(),
        "the shutdown in Drop panicked: {in_drop:?}"
    );

    let e = rt_a.block_on(pool.execute("echo", json!({}))).unwrap_err();
    assert!(matches!(e, Error::ShutDown), "{e:?}");
    let left = processes_of_run(&run_id);
    assert!(
        left.is_empty() && pids.iter().all(|&p| !alive(p)),
        "processes of the run left after four shutdowns: {left:?}"
    );
    drop(pool);
}

async fn next(stream: &mut CallStream) -> Option<snakepit_core::Result<StreamItem>> {
    std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut *stream), cx))
        .await
}

/// The last `Pool` handle dropped on a plain thread (no runtime there)
/// while its runtime still runs and a stream from that runtime is running:
/// the stream ends as `StoppedByShutdown` (ARCHITECTURE.md: "Dropping the
/// last `Pool` handle without `shutdown()` kills every group at once; the
/// calls still running ... end with `StoppedByShutdown`, as at a
/// shutdown's end, not as crashes"), every process of the run goes,
/// including a worker's child that left its group (reliability.md: at the
/// pool's end, "the last handle dropped", it kills "every process of the
/// run that is not its own child, each found through `/proc`"), and the
/// run record is gone.
#[test]
fn the_last_handle_dropped_on_a_plain_thread_ends_the_run() {
    let state = temp_dir("rt-drop-state");
    let rt = runtime(2);
    let pool = rt
        .block_on(
            builder(TestWorker::new())
                .size(2)
                .configure(|c| c.state_dir = Some(state.clone()))
                .start(),
        )
        .unwrap();
    let run_id = pool.run_id().to_owned();
    let escaped = rt
        .block_on(pool.execute("spawn_escaped", json!({})))
        .unwrap();
    let escaped = escaped["child_pid"].as_u64().expect("a child pid") as u32;
    assert!(alive(escaped));
    // A stream may outlive the last handle: one running on a worker.
    let marker = temp_dir("rt-drop-marker").join("marker");
    let mut running = rt
        .block_on(pool.execute_stream(
            "sleep",
            json!({"ms": 30_000, "marker": marker.display().to_string()}),
            CallOptions::new().timeout(Duration::from_secs(60)),
        ))
        .unwrap();
    assert!(
        wait_blocking(20, || marker.exists()),
        "the stream's call started"
    );
    let records = || {
        std::fs::read_dir(&state)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(&run_id))
            .count()
    };
    assert_eq!(records(), 1, "the run's record while it runs");
    std::thread::spawn(move || drop(pool))
        .join()
        .expect("the drop on a plain thread panicked");
    let out = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(15), next(&mut running)).await
    });
    let out = out.expect("the running stream hung after the last handle was dropped");
    assert!(
        matches!(out, Some(Err(Error::StoppedByShutdown { .. }))),
        "the running stream: {out:?}"
    );
    let left = nothing_left_of(&run_id, 20);
    // A process on its way out shows no environment for a moment.
    let escaped_alive = !wait_blocking(10, || !alive(escaped));
    kill_9(escaped);
    assert!(left.is_empty() && !escaped_alive, "left: {left:?}");
    assert_eq!(records(), 0, "the run's record is gone");
}

/// A pool started inside `block_on` of a current-thread runtime that
/// returns while the workers run (what `#[tokio::main(flavor =
/// "current_thread")]` does when `main` returns with a handle still held
/// elsewhere), then that runtime dropped on another thread: the workers do
/// not outlive the last handle, dropped on a plain thread (lib.rs: "never
/// leaves an orphan process").
#[test]
fn a_pool_of_a_current_thread_runtime_that_returned_leaves_nothing_once_dropped() {
    let rt = current_thread_runtime();
    let pool = rt.block_on(serving_pool(2));
    let run_id = pool.run_id().to_owned();
    assert_eq!(processes_of_run(&run_id).len(), 2);
    // The runtime is not driven now; its workers still run.
    std::thread::spawn(move || drop(rt)).join().unwrap();
    let keeper = pool.clone();
    std::thread::spawn(move || drop(keeper)).join().unwrap();
    drop(pool);
    let left = nothing_left_of(&run_id, 20);
    assert!(left.is_empty(), "processes of the run left: {left:?}");
}

/// `sh` with two `sleep`s of its own, in its group, as a raw process.
async fn sh_with_two_sleeps() -> std::io::Result<RawProcess> {
    RawProcess::spawn(
        Launch::new("sh")
            .arg("-c")
            .arg("sleep 300 & sleep 300; wait"),
        WireCodec::Json,
    )
    .await
}

/// `RawProcess`: "Dropping it kills its whole process group (SIGKILL) and
/// reaps the process". Dropped on a plain thread after the runtime it was
/// spawned in is gone: the process and its own child (same group) are
/// killed all the same, without a panic.
#[test]
fn a_raw_process_dropped_after_its_runtime_died_kills_its_group() {
    let rt = runtime(1);
    let raw = rt.block_on(sh_with_two_sleeps()).unwrap();
    let run_id = raw.run_id().to_owned();
    let pid = raw.pid();
    wait_blocking(10, || processes_of_run(&run_id).len() >= 3);
    let before = processes_of_run(&run_id);
    assert_eq!(before.len(), 3, "sh and its two sleeps: {before:?}");
    drop(rt);
    std::thread::spawn(move || drop(raw))
        .join()
        .expect("dropping a RawProcess outside any runtime panicked");
    let left = nothing_left_of(&run_id, 10);
    assert!(
        left.is_empty() && !alive(pid),
        "the raw process's group survived its drop: {left:?}"
    );
}

/// `RawProcess::kill`: "Kills its whole process group (SIGKILL) and waits
/// for it to be reaped"; `wait`: "Waits for it to end and reaps it". Called
/// on runtime B after the runtime it was spawned in is gone: each returns
/// (an exit status, or an `io::Error`) instead of waiting for ever, and
/// the process and its child are gone.
#[test]
fn a_raw_process_killed_from_another_runtime_after_its_own_died_returns() {
    let rt_a = runtime(1);
    let (mut killed, mut waited) = rt_a.block_on(async {
        (
            sh_with_two_sleeps().await.unwrap(),
            sh_with_two_sleeps().await.unwrap(),
        )
    });
    let runs = [killed.run_id().to_owned(), waited.run_id().to_owned()];
    let pids = [killed.pid(), waited.pid()];
    drop(rt_a);
    let rt_b = runtime(1);
    rt_b.block_on(async {
        let k = tokio::time::timeout(Duration::from_secs(10), killed.kill())
            .await
            .expect("RawProcess::kill on another runtime after its own died hung");
        assert!(k.as_ref().map_or(true, |s| !s.success()), "kill: {k:?}");
        kill_9(pids[1]);
        let w = tokio::time::timeout(Duration::from_secs(10), waited.wait())
            .await
            .expect("RawProcess::wait on another runtime after its own died hung");
        assert!(w.as_ref().map_or(true, |s| !s.success()), "wait: {w:?}");
    });
    drop((killed, waited));
    for run in &runs {
        let left = nothing_left_of(run, 10);
        assert!(left.is_empty(), "left: {left:?}");
    }
    assert!(pids.iter().all(|&p| !alive(p)));
}

/// The descriptors process `pid` holds: each one's
/// number and target (`/proc/<pid>/fd` links).
fn fds_of(pid: u32) -> std::io::Result<Vec<(String, String)>> {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| {
        d.flatten()
            .filter_map(|e| {
                let target = std::fs::read_link(e.path()).ok()?;
                Some((
                    e.file_name().to_string_lossy().into_owned(),
                    target.display().to_string(),
                ))
            })
            .collect()
    })
}

/// The processes whose parent is this one, each with its `/proc/<pid>/stat`.
fn our_children() -> Vec<(u32, String)> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let close = stat.rfind(')')?;
            let ppid = stat[close + 1..].split_whitespace().nth(1)?;
            (pid != me && ppid == me.to_string()).then_some((pid, stat))
        })
        .collect()
}

/// The descriptors a child process of ours holds besides 0, 1 and 2, as
/// the targets of its `/proc/<pid>/fd` links.
#[allow(clippy::disallowed_methods)] // a bystander child of the host, not a worker
fn a_plain_childs_descriptors() -> BTreeSet<String> {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the exec: before it, /proc shows our own descriptors.
    wait_blocking(10, || {
        std::fs::read_to_string(format!("/proc/{}/comm", child.id()))
            .is_ok_and(|c| c.trim() == "sleep")
    });
    let fds = fds_of(child.id())
        .unwrap()
        .into_iter()
        .filter(|(fd, _)| !matches!(fd.as_str(), "0" | "1" | "2"))
        .map(|(_, target)| target)
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    fds
}

/// The pipe and socket inodes a process holds (`pipe:[N]`, `socket:[N]`).
fn pipes_of(pid: u32) -> BTreeSet<String> {
    fds_of(pid)
        .unwrap_or_default()
        .into_iter()
        .map(|(_, target)| target)
        .filter(|t| t.starts_with("pipe:") || t.starts_with("socket:"))
        .collect()
}

/// Who holds descriptor target `target`: `pid(comm):fd` for each.
fn owners_of(target: &str) -> String {
    let mut found = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        for (fd, _) in fds_of(pid)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, t)| t == target)
        {
            found.push(format!("{pid}({}):{fd}", comm.trim()));
        }
    }
    found.join(" ")
}

/// The host starts a process of its own (`std::process::Command`, as it
/// would exec itself or a tool) while a pool runs: that process inherits
/// none of the pool's descriptors, neither a worker's pipes nor the
/// watchdog's (reliability.md: the watchdog holds "a pipe from the host
/// ... when the host dies, however it dies, the pipe closes and the
/// watchdog kills every group"; a copy of its write end in another
/// process would keep it from closing; a copy of a worker's stdin would
/// keep the worker from seeing the end of its input at shutdown).
#[test]
fn a_child_the_host_starts_while_a_pool_runs_inherits_none_of_its_pipes() {
    // What any child of this process inherits before the pool starts (the
    // test process may itself have inherited descriptors without
    // close-on-exec from whoever started it).
    let baseline = a_plain_childs_descriptors();
    let rt = runtime(2);
    let pool = rt.block_on(serving_pool(2));
    let mut pools: BTreeSet<String> = BTreeSet::new();
    for pid in pool.worker_pids() {
        pools.extend(pipes_of(pid));
    }
    // The watchdog: a child `sh` of ours holding a pipe; its pipes too.
    for (pid, stat) in our_children() {
        if stat.contains("(sh)") {
            pools.extend(pipes_of(pid));
        }
    }
    assert!(!pools.is_empty(), "the workers' pipes were seen");
    // Several children, as the spawner thread may be forking meanwhile.
    for _ in 0..3 {
        let inherited: Vec<String> = a_plain_childs_descriptors()
            .into_iter()
            .filter(|t| pools.contains(t) && !baseline.contains(t))
            .collect();
        let owners: Vec<String> = inherited.iter().map(|t| owners_of(t)).collect();
        assert!(
            inherited.is_empty(),
            "a child of the host holds the pool's pipes: {inherited:?}, held by {owners:?}"
        );
    }
    rt.block_on(pool.shutdown()).unwrap();
}

/// A pool on a multi-thread runtime of one worker thread, whose callers
/// block that thread (`std::thread::sleep` inside tasks) for longer than
/// the health check's timeout, again and again. The workers answered their
/// pings at once; only the host was starved. The docs: "A worker that
/// stops answering health pings is taken out of routing, then killed and
/// replaced" (reliability.md), `health_check_timeout_ms`: "a ping slower
/// than this replaces the worker" (README). A worker that answered is not
/// one that stopped answering: no health check fails, no worker is
/// replaced. And a call's deadline that passed while the thread was
/// blocked is honoured once it is free: the call ends with `CallTimeout`
/// instead of waiting on.
#[test]
fn a_starved_host_does_not_fail_health_checks_of_workers_that_answered() {
    let rt = runtime(1);
    let failed = Arc::new(AtomicUsize::new(0));
    let exited = Arc::new(Mutex::new(Vec::<u32>::new()));
    let pool = {
        let (failed, exited) = (failed.clone(), exited.clone());
        rt.block_on(
            builder(TestWorker::new())
                .size(2)
                .configure(|c| {
                    c.health_check_interval = Duration::from_millis(50);
                    c.health_check_timeout = Duration::from_millis(300);
                })
                .on_event(move |e| match e.kind {
                    EventKind::HealthCheckFailed { .. } => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    EventKind::WorkerExited { pid, .. } => exited.lock().unwrap().push(pid),
                    _ => {}
                })
                .start(),
        )
        .unwrap()
    };
    let pids = pool.worker_pids();
    rt.block_on(async {
        // Let the health checks run a while, as they would.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let call = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.execute_with(
                    "sleep",
                    json!({"ms": 5_000}),
                    CallOptions::new().timeout(Duration::from_millis(500)),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..4 {
            tokio::spawn(async { std::thread::sleep(Duration::from_millis(1_200)) })
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let out = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .expect("a call whose deadline passed while the host was starved hung")
            .unwrap();
        assert!(matches!(out, Err(Error::CallTimeout { .. })), "{out:?}");
    });
    // The worker of the timed-out call may be replaced for that call (it
    // sleeps 5 s and the grace period is 0.5 s): only health checks count.
    let failures = failed.load(Ordering::SeqCst);
    let exited = exited.lock().unwrap().clone();
    rt.block_on(pool.shutdown()).unwrap();
    assert_eq!(
        failures, 0,
        "health checks failed for workers that answered while the host was starved \
         (workers {pids:?}, exited {exited:?})"
    );
}

/// Not a test of its own: the host of
/// [`a_descriptor_the_host_leaves_inheritable_reaches_no_process_of_the_pool`],
/// run in a process of its own (`SNAKEPIT_TEST_INHERIT_HOST` set). It holds
/// the write end of a pipe without `FD_CLOEXEC` (as a process gets one from
/// its parent: a readiness or completion pipe, a socket handed over),
/// starts a pool, closes that write end, and reports whether the read end
/// then sees its end while the pool runs, and after `shutdown()`, and
/// which of its children hold the write end.
#[test]
#[allow(unsafe_code)]
fn inheritable_host() {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    if std::env::var_os("SNAKEPIT_TEST_INHERIT_HOST").is_none() {
        return;
    }
    let mut fds = [0; 2];
    // SAFETY: pipe(2) into a two-element array; without O_CLOEXEC, as an
    // inherited descriptor is.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just made and are owned here only.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let write_target = std::fs::read_link(format!("/proc/self/fd/{}", write.as_raw_fd()))
        .unwrap()
        .display()
        .to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut read = std::fs::File::from(read);
        let mut buf = [0u8; 16];
        // Nothing is ever written: this returns 0 at the pipe's end.
        let n = read.read(&mut buf);
        let _ = tx.send(n.map_err(|e| e.to_string()));
    });
    let rt = runtime(2);
    let pool = rt.block_on(serving_pool(1));
    let mut holders = vec![];
    for (pid, _) in our_children() {
        if fds_of(pid)
            .unwrap_or_default()
            .iter()
            .any(|(_, t)| *t == write_target)
        {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            holders.push(format!(
                "{pid}: {}",
                cmd.chars().take(60).collect::<String>()
            ));
        }
    }
    drop(write);
    let while_running = rx.recv_timeout(Duration::from_secs(2)).ok();
    rt.block_on(pool.shutdown()).unwrap();
    let after = while_running
        .clone()
        .or_else(|| rx.recv_timeout(Duration::from_secs(3)).ok());
    drop(pool);
    let after_drop = after
        .clone()
        .or_else(|| rx.recv_timeout(Duration::from_secs(10)).ok());
    println!(
        "REPORT {}",
        json!({
            "holders": holders,
            "eof_while_running": while_running.is_some(),
            "eof_after_shutdown": after.is_some(),
            "eof_after_drop": after_drop.is_some(),
        })
    );
}

/// A descriptor the host holds without `FD_CLOEXEC` (inherited from its
/// parent) reaches no process the pool starts: not its workers (docs/
/// reliability.md, "close-on-exec | descriptors the host had open are not
/// inherited | always"; spawn.rs: "every inherited descriptor above stderr
/// marked close-on-exec"), and not its watchdog, the one process the pool
/// starts outside that path. So when the host closes such a descriptor
/// (the write end of a pipe its parent waits on), the other side sees it
/// closed at once, not only when the pool ends.
#[test]
fn a_descriptor_the_host_leaves_inheritable_reaches_no_process_of_the_pool() {
    let out = snakepit_tests::this_test("inheritable_host")
        .env("SNAKEPIT_TEST_INHERIT_HOST", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Value = text
        .lines()
        .find_map(|l| Some(&l[l.find("REPORT ")? + "REPORT ".len()..]))
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .unwrap_or_else(|| {
            panic!(
                "no report from the host: {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert_eq!(report["eof_after_drop"], true, "{report}");
    assert!(
        report["holders"].as_array().unwrap().is_empty() && report["eof_while_running"] == true,
        "processes the pool started hold the host's inheritable descriptor, so closing it \
         is not seen while the pool runs: {report}"
    );
}
