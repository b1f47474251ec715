//! Round 5 of an outside review of the pool's call path and supervision:
//! host functions outliving their worker or their pool, and other promises
//! of the pool's public API (README.md, docs/reliability.md, the rustdoc of
//! `Pool`, `Stats`, `CallOptions`), each against real worker processes.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use snakepit_core::{CallOptions, Error, HostCall, Pool};

/// Set when the future it lives in is dropped (or runs to its end).
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A pool of `size` bridge test workers offering `hang`, a host function
/// that never answers: `started` counts its calls, `dropped` is set once
/// every one of them has been let go.
async fn hanging_host_pool(
    size: usize,
    started: Arc<AtomicUsize>,
    dropped: Arc<AtomicBool>,
) -> Pool {
    builder(TestWorker::new())
        .size(size)
        .host_function("hang", move |_: HostCall| {
            let started = started.clone();
            let guard = DropFlag(dropped.clone());
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                let _guard = guard;
                std::future::pending::<()>().await;
                Ok(Value::Null)
            }
        })
        .start()
        .await
        .unwrap()
}

fn spawn_host_call(
    pool: &Pool,
    secs: u64,
) -> tokio::task::JoinHandle<snakepit_core::Result<Value>> {
    let pool = pool.clone();
    tokio::spawn(async move {
        pool.execute_with(
            "host",
            json!({"function": "hang"}),
            CallOptions::new().timeout(Duration::from_secs(secs)),
        )
        .await
    })
}

/// `Pool::shutdown`: "stops admitting calls, lets calls in flight finish
/// within the grace period ... signals their process groups and reaps
/// them". A host function still answering a worker when the pool shuts
/// down answers nobody: it gets the grace period once its worker is gone
/// (it may be the one running `shutdown()`), then it is dropped, rather
/// than run on for ever holding whatever it holds (a connection, a lock,
/// the pool's own state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_function_still_running_at_shutdown_is_dropped_with_the_pool() {
    let started = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let pool = hanging_host_pool(1, started.clone(), dropped.clone()).await;
    let call = spawn_host_call(&pool, 120);
    assert!(
        eventually(30, || started.load(Ordering::SeqCst) == 1).await,
        "the worker's host call reached the host function"
    );
    pool.shutdown().await.unwrap();
    let r = call.await.unwrap();
    assert!(
        matches!(r, Err(Error::StoppedByShutdown { .. })),
        "the call was running: {r:?}"
    );
    assert!(
        eventually(10, || dropped.load(Ordering::SeqCst)).await,
        "the host function still runs after shutdown() returned"
    );
}

/// docs/reliability.md: "A worker that dies fails exactly the calls in
/// flight on it". The host call it was waiting on has nobody to answer
/// either: its host function is let go with it, not left running for a
/// process that is gone, a grace period after it (a worker that makes
/// such calls and dies again and again would otherwise pile them up
/// without bound).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_function_answering_a_killed_worker_is_let_go() {
    let started = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let pool = hanging_host_pool(1, started.clone(), dropped.clone()).await;
    let pid = pool.worker_pids()[0];
    let call = spawn_host_call(&pool, 120);
    assert!(
        eventually(30, || started.load(Ordering::SeqCst) == 1).await,
        "the worker's host call reached the host function"
    );
    kill_9(pid);
    let r = call.await.unwrap();
    assert!(r.as_ref().is_err_and(Error::is_crash), "{r:?}");
    assert!(
        eventually(10, || dropped.load(Ordering::SeqCst)).await,
        "the host function still runs for a worker that is gone"
    );
    // The replacement serves.
    assert!(eventually(30, || pool.stats().workers == 1).await);
    let r = pool.execute("echo", json!({"x": 1})).await.unwrap();
    assert_ne!(r["pid"].as_u64(), Some(u64::from(pid)));
    pool.shutdown().await.unwrap();
}

/// `Pool`'s drop: "The last handle is gone without `shutdown()`: stop at
/// once, killing every worker's process group." A host function then
/// running answers nobody and is let go as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_function_still_running_when_the_last_handle_goes_is_let_go() {
    let started = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let pool = hanging_host_pool(1, started.clone(), dropped.clone()).await;
    let pid = pool.worker_pids()[0];
    let call = spawn_host_call(&pool, 120);
    assert!(
        eventually(30, || started.load(Ordering::SeqCst) == 1).await,
        "the worker's host call reached the host function"
    );
    // The caller lets go too, so that `pool` is the last handle.
    call.abort();
    let _ = call.await;
    drop(pool);
    assert!(
        eventually(30, || !alive(pid)).await,
        "the worker died with the pool"
    );
    assert!(
        eventually(10, || dropped.load(Ordering::SeqCst)).await,
        "the host function still runs after the pool ended"
    );
}

/// The round-5 bridge worker (`tests/workers/round5_pool_worker.py`),
/// whose health pings take `ping_ms`.
struct Round5 {
    ping_ms: u64,
}

impl snakepit_core::Adapter for Round5 {
    fn launch(&self) -> snakepit_core::Launch {
        snakepit_core::Launch::new(python())
            .arg(root().join("crates/core/tests/workers/round5_pool_worker.py"))
            .env("PYTHONPATH", root().join("bridges/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("ROUND5_PING_MS", self.ping_ms.to_string())
    }
    fn command_timeout(&self, _: &str) -> Duration {
        Duration::from_secs(60)
    }
}

/// docs/reliability.md, "Recycling": a recycled worker finishes the calls
/// it has, its replacement already serving. A call of it waiting on a
/// host function is one of those: the function is not let go because its
/// worker left routing (only when the process is gone), and the call gets
/// its answer from the recycled worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recycled_worker_still_gets_the_answer_of_its_host_call() {
    let release = Arc::new(tokio::sync::Notify::new());
    let waiting = Arc::new(AtomicUsize::new(0));
    let pool = {
        let (release, waiting) = (release.clone(), waiting.clone());
        builder(Round5 { ping_ms: 0 })
            .size(1)
            .configure(|c| {
                c.worker_ttl = Duration::from_secs(2);
                c.shutdown_grace_period = Duration::from_secs(30);
            })
            .host_function("wait", move |_: HostCall| {
                let (release, waiting) = (release.clone(), waiting.clone());
                async move {
                    waiting.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                    Ok(json!(42))
                }
            })
            .start()
            .await
            .unwrap()
    };
    let old = pool.worker_pids()[0];
    let call = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute_with(
                "host",
                json!({"function": "wait"}),
                CallOptions::new().timeout(Duration::from_secs(120)),
            )
            .await
        })
    };
    assert!(
        eventually(30, || waiting.load(Ordering::SeqCst) == 1).await,
        "the host call reached the host function"
    );
    // Its age passes while it waits: it is recycled, the replacement
    // taking its slot, and it finishes its call out of the slot.
    assert!(
        eventually(60, || pool.stats().recycled >= 1).await,
        "the worker was recycled: {:?}",
        pool.stats()
    );
    assert!(!pool.worker_pids().contains(&old), "it left its slot");
    assert!(alive(old), "it still runs its call");
    release.notify_one();
    let r = call.await.unwrap().unwrap();
    assert_eq!(r["answer"], 42);
    assert_eq!(
        r["pid"].as_u64(),
        Some(u64::from(old)),
        "from the recycled worker"
    );
    pool.shutdown().await.unwrap();
}

/// docs/reliability.md: "each idle worker is pinged on its own and
/// withheld from callers only while its own ping is in flight";
/// `Affinity::Strict`: "Wait for it". A strict session call made while
/// its worker answers a (slow) health ping waits for the ping, then runs
/// on that worker: it is neither sent elsewhere nor refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_call_made_during_its_workers_health_ping_waits_and_keeps_its_worker() {
    let pool = builder(Round5 { ping_ms: 1500 })
        .size(2)
        .configure(|c| {
            c.health_check_interval = Duration::from_millis(200);
            c.health_check_timeout = Duration::from_secs(30);
            c.queue_timeout = Duration::from_secs(30);
        })
        .start()
        .await
        .unwrap();
    let first = pool
        .execute_with("pid", json!({}), CallOptions::new().session("s"))
        .await
        .unwrap();
    let pid = first["pid"].as_u64().unwrap() as u32;
    for _ in 0..3 {
        let on_its_worker = || {
            pool.workers()
                .iter()
                .any(|w| w.pid == pid && w.health_check)
        };
        assert!(
            eventually(30, on_its_worker).await,
            "the session's worker gets a health ping"
        );
        let r = pool
            .execute_with(
                "pid",
                json!({}),
                CallOptions::new()
                    .session("s")
                    .affinity(snakepit_core::Affinity::Strict)
                    .timeout(Duration::from_secs(60)),
            )
            .await
            .unwrap();
        assert_eq!(r["pid"].as_u64(), Some(u64::from(pid)), "its own worker");
    }
    let s = pool.stats();
    assert_eq!(s.errors, 0, "{s:?}");
    pool.shutdown().await.unwrap();
}

/// `PoolConfig::max_frame_size`: "The bundled bridges' hello frames take a
/// few hundred bytes: a limit below that fails every start." It fails
/// `start()` with `StartFailed` naming the frame, within the startup
/// timeout (not a hang, not a panic), and leaves no worker behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_limit_below_the_hello_fails_the_start_naming_it() {
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        builder(Round5 { ping_ms: 0 })
            .size(2)
            .configure(|c| {
                c.max_frame_size = 64;
                c.startup_timeout = Duration::from_secs(30);
            })
            .start(),
    )
    .await
    .expect("start() returned within its startup timeout")
    .err()
    .unwrap_or_else(|| panic!("a 64-byte frame limit cannot start a bridge worker"));
    assert!(matches!(err, Error::StartFailed(_)), "{err:?}");
    assert!(err.never_ran());
    let text = err.to_string();
    assert!(text.contains("64") || text.contains("frame"), "{text}");
}

/// `Affinity::FailFast`: "Use it when it is free, otherwise fail at once
/// with `WorkerBusy`"; `Error::WorkerBusy`: "a fail-fast session call
/// found its worker busy". A worker answering the pool's own health ping
/// runs no call (`stats()` counts it available, `WorkerInfo::in_flight`
/// is 0: "A ping is not a call"). A fail-fast call then waits for the ping
/// and runs on its worker. Before, it failed with `WorkerBusy` while
/// `stats()` said that worker was available and not busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_fast_call_made_during_its_workers_health_ping_is_not_refused_as_busy() {
    let pool = builder(Round5 { ping_ms: 1500 })
        .size(2)
        .configure(|c| {
            c.health_check_interval = Duration::from_millis(200);
            c.health_check_timeout = Duration::from_secs(30);
            c.queue_timeout = Duration::from_secs(30);
        })
        .start()
        .await
        .unwrap();
    let first = pool
        .execute_with("pid", json!({}), CallOptions::new().session("s"))
        .await
        .unwrap();
    let pid = first["pid"].as_u64().unwrap() as u32;
    for _ in 0..3 {
        let pinged = || {
            pool.workers()
                .iter()
                .any(|w| w.pid == pid && w.health_check && w.in_flight == 0)
        };
        assert!(
            eventually(30, pinged).await,
            "its worker gets a health ping"
        );
        let s = pool.stats();
        assert_eq!((s.busy, s.available), (0, 2), "{s:?}");
        let r = pool
            .execute_with(
                "pid",
                json!({}),
                CallOptions::new()
                    .session("s")
                    .affinity(snakepit_core::Affinity::FailFast)
                    .timeout(Duration::from_secs(60)),
            )
            .await;
        let r = r.unwrap_or_else(|e| panic!("an idle worker refused as busy: {e:?}"));
        assert_eq!(r["pid"].as_u64(), Some(u64::from(pid)), "its own worker");
    }
    let s = pool.stats();
    assert_eq!((s.errors, s.completed), (0, 4), "{s:?}");
    pool.shutdown().await.unwrap();
}

/// The bridge test worker, whose `Adapter::check` panics while `panics`
/// is set.
struct PanickyCheck {
    panics: Arc<AtomicBool>,
    checks: Arc<AtomicUsize>,
}

impl snakepit_core::Adapter for PanickyCheck {
    fn launch(&self) -> snakepit_core::Launch {
        TestWorker::new().launch()
    }
    fn check(&self) -> Result<(), String> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        if self.panics.load(Ordering::SeqCst) {
            panic!("the adapter's check panicked on purpose");
        }
        Ok(())
    }
}

/// `Adapter::check` runs "again before each later start (a replacement, a
/// recycled worker's successor), where an `Err` is that start's failure
/// (backed off, counted by the breaker)". It is the application's code run
/// on the pool's own task, as a host function, a session hook or a
/// listener is, each of which the pool survives when it panics. A check
/// that panics while a replacement starts is that start's failure too: the
/// slot backs off and starts a worker once the check passes again, rather
/// than stay empty for the pool's life (every call then a queue timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_that_panics_before_a_replacement_fails_that_start_only() {
    let panics = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicUsize::new(0));
    let pool = builder(PanickyCheck {
        panics: panics.clone(),
        checks: checks.clone(),
    })
    .size(1)
    .configure(|c| {
        c.restart_backoff = Duration::from_millis(20);
        c.restart_backoff_max = Duration::from_millis(200);
        c.breaker_threshold = 1000;
        c.queue_timeout = Duration::from_secs(60);
    })
    .start()
    .await
    .unwrap();
    let pid = pool.worker_pids()[0];
    panics.store(true, Ordering::SeqCst);
    let before = checks.load(Ordering::SeqCst);
    kill_9(pid);
    assert!(
        eventually(30, || checks.load(Ordering::SeqCst) >= before + 2).await,
        "the slot tries to start a replacement again after a check that panicked"
    );
    let failed = pool.stats().start_failures;
    assert!(failed >= 1, "counted as failed starts: {:?}", pool.stats());
    panics.store(false, Ordering::SeqCst);
    assert!(
        eventually(30, || pool.stats().workers == 1).await,
        "a replacement starts once the check passes: {:?}",
        pool.stats()
    );
    let r = pool.execute("echo", json!({"x": 1})).await.unwrap();
    assert_ne!(r["pid"].as_u64(), Some(u64::from(pid)));
    pool.shutdown().await.unwrap();
}

/// `Adapter::check` is "checked by `PoolBuilder::start` before the first
/// spawn, where an `Err` message fails the start with
/// `Error::StartFailed`". One that panics fails it the same way, naming
/// the panic, and leaves no worker behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_that_panics_at_start_is_a_start_failure() {
    let checks = Arc::new(AtomicUsize::new(0));
    let started = builder(PanickyCheck {
        panics: Arc::new(AtomicBool::new(true)),
        checks: checks.clone(),
    })
    .size(1)
    .start();
    let err = tokio::spawn(started)
        .await
        .expect("start() does not unwind into its caller")
        .err()
        .unwrap_or_else(|| panic!("no worker can start"));
    assert!(matches!(&err, Error::StartFailed(_)), "{err:?}");
    assert!(err.to_string().contains("panicked on purpose"), "{err}");
    assert_eq!(checks.load(Ordering::SeqCst), 1, "nothing more was tried");
}

/// A session hook whose `touch` panics before it returns its future (a
/// store that checks the id up front and panics on it, say).
struct PanicsWhenTouched;

impl snakepit_core::SessionHook for PanicsWhenTouched {
    fn touch(
        &self,
        session_id: &str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> {
        if session_id == "boom" {
            panic!("the store refuses {session_id} by panicking");
        }
        Box::pin(async { Ok(()) })
    }
}

/// `SessionHook::touch`: "An `Err` message fails the call with
/// `Error::Session`; it never runs", and the pool's own rule for hooks:
/// one that panics fails the call, not the caller's task (the hook's
/// future is run under a panic guard). A `touch` that panics before it
/// returns its future is the same hook panicking: the call fails with
/// `Error::Session` naming the panic, is counted as an error (not as a
/// call dropped by its caller), and the pool serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_hook_that_panics_in_touch_fails_that_call_with_a_session_error() {
    let pool = builder(TestWorker::new())
        .size(1)
        .session_hook(PanicsWhenTouched)
        .start()
        .await
        .unwrap();
    for stream in [false, true] {
        let p = pool.clone();
        let r = tokio::spawn(async move {
            let options = CallOptions::new().session("boom");
            if stream {
                p.execute_stream("stream", json!({"n": 2}), options)
                    .await
                    .map(|_| Value::Null)
            } else {
                p.execute_with("echo", json!({}), options).await
            }
        })
        .await
        .expect("the caller's task does not unwind");
        match r {
            Err(Error::Session {
                session_id,
                message,
            }) => {
                assert_eq!(session_id, "boom");
                assert!(message.contains("panicked"), "{message}");
            }
            other => panic!("stream {stream}: {other:?}"),
        }
    }
    let s = pool.stats();
    assert_eq!((s.requests, s.errors, s.cancelled), (2, 2, 0), "{s:?}");
    let r = pool
        .execute_in_session("fine", "echo", json!({"x": 1}))
        .await
        .unwrap();
    assert_eq!(r["echoed"]["x"], 1);
    pool.shutdown().await.unwrap();
}

/// A small deterministic random sequence (xorshift), so a failing run can
/// be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// `Stats`: "every figure consistent with what callers saw". Session calls
/// of every affinity, made while health pings come and go (each ping slow
/// enough to be met), some given up by their callers at random: each
/// counter matches what the callers saw (a fail-fast call refused only as
/// `WorkerBusy`, no other error), and afterwards every unit is free and
/// nothing waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_calls_of_every_affinity_among_health_pings_are_counted_exactly() {
    let pool = builder(Round5 { ping_ms: 40 })
        .size(2)
        .configure(|c| {
            c.health_check_interval = Duration::from_millis(60);
            c.health_check_timeout = Duration::from_secs(30);
            c.queue_timeout = Duration::from_secs(30);
        })
        .start()
        .await
        .unwrap();
    #[derive(Default)]
    struct Seen {
        ok: u64,
        errors: u64,
        busy: u64,
        dropped: u64,
    }
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (pool, seen) = (pool.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
            for _ in 0..40 {
                let affinity = match rng.below(3) {
                    0 => snakepit_core::Affinity::Prefer,
                    1 => snakepit_core::Affinity::Strict,
                    _ => snakepit_core::Affinity::FailFast,
                };
                let session = format!("s{}", rng.below(4));
                let ms = rng.below(30);
                let options = CallOptions::new()
                    .session(session)
                    .affinity(affinity)
                    .timeout(Duration::from_secs(60));
                let call = pool.execute_with("pid", json!({"ms": ms}), options);
                let given_up_after = Duration::from_millis(5 + rng.below(60));
                let r = if rng.below(4) == 0 {
                    tokio::time::timeout(given_up_after, call).await.ok()
                } else {
                    Some(call.await)
                };
                let mut seen = seen.lock().unwrap();
                match r {
                    None => seen.dropped += 1,
                    Some(Ok(_)) => seen.ok += 1,
                    Some(Err(Error::WorkerBusy { .. })) => {
                        seen.busy += 1;
                        seen.errors += 1;
                    }
                    Some(Err(e)) => panic!("unexpected error: {e:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let settled = || {
        let s = pool.stats();
        s.in_flight == 0 && s.queued == 0 && s.busy == 0 && s.available == 2
    };
    assert!(
        eventually(30, settled).await,
        "every unit comes back: {:?}",
        pool.stats()
    );
    let s = pool.stats();
    let seen = {
        let seen = seen.lock().unwrap();
        (seen.ok, seen.errors, seen.dropped)
    };
    assert_eq!(s.requests, 8 * 40, "{s:?}");
    assert_eq!((s.completed, s.errors, s.cancelled), seen, "{s:?}");
    assert_eq!((s.crashes, s.restarts, s.call_timeouts), (0, 0, 0), "{s:?}");
    pool.shutdown().await.unwrap();
}

/// A host function that shuts its own pool down, with a grace period of
/// zero: the worker that asked for it is stopped at once, and the function
/// (running `shutdown()`) is then the one the pool would let go after the
/// grace period. It is not cut off in the middle: `shutdown()` returns
/// inside it and the call ends as `StoppedByShutdown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_function_shutting_its_pool_down_with_no_grace_period_is_not_cut_off() {
    for _ in 0..5 {
        let weak: Arc<std::sync::OnceLock<snakepit_core::WeakPool>> = Arc::default();
        let returned = Arc::new(AtomicBool::new(false));
        let pool = {
            let (weak, returned) = (weak.clone(), returned.clone());
            builder(Round5 { ping_ms: 0 })
                .size(1)
                .configure(|c| c.shutdown_grace_period = Duration::ZERO)
                .host_function("stop", move |_: HostCall| {
                    let (weak, returned) = (weak.clone(), returned.clone());
                    async move {
                        if let Some(pool) = weak.get().and_then(snakepit_core::WeakPool::upgrade) {
                            pool.shutdown().await.unwrap();
                            returned.store(true, Ordering::SeqCst);
                        }
                        Ok(json!("stopped"))
                    }
                })
                .start()
                .await
                .unwrap()
        };
        let _ = weak.set(pool.downgrade());
        let pid = pool.worker_pids()[0];
        let r = tokio::time::timeout(
            Duration::from_secs(60),
            pool.execute("host", json!({"function": "stop"})),
        )
        .await
        .expect("the call ends");
        assert!(matches!(r, Err(Error::StoppedByShutdown { .. })), "{r:?}");
        assert!(
            eventually(30, || returned.load(Ordering::SeqCst)).await,
            "shutdown() returned inside the host function"
        );
        assert!(!alive(pid));
    }
}

/// `Pool::shutdown`: "lets calls in flight finish within the grace
/// period". A call waiting on a host function when the shutdown begins is
/// one of them: its host function still runs and is answered, and the call
/// gets its result, not `StoppedByShutdown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_on_a_host_function_at_shutdown_finishes_within_the_grace_period() {
    let release = Arc::new(tokio::sync::Notify::new());
    let waiting = Arc::new(AtomicUsize::new(0));
    let pool = {
        let (release, waiting) = (release.clone(), waiting.clone());
        builder(Round5 { ping_ms: 0 })
            .size(1)
            .configure(|c| {
                c.shutdown_grace_period = Duration::from_secs(60);
                // Nothing written ahead: a new call waits in the queue.
                c.pipeline_depth = 0;
                c.queue_timeout = Duration::from_secs(60);
            })
            .host_function("wait", move |_: HostCall| {
                let (release, waiting) = (release.clone(), waiting.clone());
                async move {
                    waiting.fetch_add(1, Ordering::SeqCst);
                    release.notified().await;
                    Ok(json!(7))
                }
            })
            .start()
            .await
            .unwrap()
    };
    let call = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("host", json!({"function": "wait"})).await })
    };
    assert!(eventually(30, || waiting.load(Ordering::SeqCst) == 1).await);
    let stopping = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.shutdown().await })
    };
    // A new call is refused (at once, or from the queue when the
    // shutdown begins) while the running one goes on.
    let refused = pool.execute("pid", json!({})).await;
    assert!(matches!(refused, Err(Error::ShutDown)), "{refused:?}");
    release.notify_one();
    let r = call.await.unwrap().unwrap();
    assert_eq!(r["answer"], 7);
    stopping.await.unwrap().unwrap();
}
