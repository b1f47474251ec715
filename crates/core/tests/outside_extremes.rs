//! Extreme values in every public setting of a pool (`PoolConfig`,
//! `CallOptions`, `Adapter::command_timeout`): 0, 1, the largest value of
//! each type and values past what the docs allow. What must hold: a typed
//! `Error::Config`, or the documented meaning, and then a pool that works
//! against real Python workers: never a panic (in the caller or in the
//! pool's own tasks), a hang, or a deadline that overflowed and fires at once.
//!
//! Already shown elsewhere and not repeated here: `pool_size` 0, 10,001 and
//! `usize::MAX`, `max_frame_size` 63, zero `worker_init_timeout` /
//! `startup_timeout` / `breaker_threshold` / `max_concurrency_per_worker`
//! (api_promises.rs); most durations at `Duration::MAX` with a call of
//! `CallOptions::timeout(Duration::MAX)` (api_promises.rs); a zero call
//! timeout and `max_queue_size` 0 (redteam_api.rs); `pipeline_depth`
//! `u32::MAX` (redteam_api.rs).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use snakepit_core::{
    Adapter, CallOptions, CallStream, Error, Launch, Pool, PoolConfig, StreamItem, WireCodec,
};

use snakepit_tests::count_panics;

async fn next(stream: &mut CallStream) -> Option<snakepit_core::Result<StreamItem>> {
    std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut *stream), cx))
        .await
}

/// The tests of this file one at a time, so that the panics one counts
/// are its own (a failing test's panic included).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Reads `stream` to its end, each item `Ok` and within 20 s; how many
/// items it had.
async fn items_of(mut stream: CallStream) -> usize {
    let mut items = 0;
    while let Some(item) = within(20, "stream", next(&mut stream)).await {
        item.unwrap();
        items += 1;
    }
    items
}

/// A test of this file running alone (see [`SERIAL`]), counting the panics
/// from its start on.
struct Alone {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    panics: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    before: usize,
}

impl Alone {
    async fn start() -> Self {
        let serial = SERIAL.lock().await;
        let panics = count_panics();
        let before = panics.load(Ordering::SeqCst);
        Alone {
            _serial: serial,
            panics,
            before,
        }
    }

    /// No panic since the start (in the caller or in the pool's tasks).
    fn no_panic(&self) {
        assert_eq!(
            self.panics.load(Ordering::SeqCst),
            self.before,
            "a panic in the pool"
        );
    }
}

/// Fails the test if `f` has not finished within `secs` seconds.
async fn within<T>(secs: u64, what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {secs} s (a hang)"))
}

/// A one-call check that a pool serves: `echo` answers with its arguments.
async fn serves(pool: &Pool, what: &str) {
    let r = within(20, what, pool.execute("echo", json!({"what": what})))
        .await
        .unwrap_or_else(|e| panic!("{what}: a plain call failed: {e}"));
    assert_eq!(r["echoed"]["what"], what, "{what}: {r}");
}

/// A pool of `size` test workers with the settings `f` makes, started
/// within 30 s (`what`, the settings, names it in a failure).
async fn started(what: &str, size: usize, f: impl FnOnce(&mut PoolConfig)) -> Pool {
    within(
        30,
        what,
        builder(TestWorker::new()).size(size).configure(f).start(),
    )
    .await
    .unwrap_or_else(|e| panic!("{what}: start: {e}"))
}

/// A pool of test workers with exactly `config`, started within 30 s.
async fn started_with(config: PoolConfig) -> Pool {
    within(
        30,
        "start",
        Pool::builder(TestWorker::new()).config(config).start(),
    )
    .await
    .unwrap()
}

/// The default settings for `size` workers, changed by `f`.
fn config_of(size: usize, f: impl FnOnce(&mut PoolConfig)) -> PoolConfig {
    let mut config = PoolConfig::default();
    config.pool_size = size;
    f(&mut config);
    config
}

/// A session call serves.
async fn serves_a_session(pool: &Pool) {
    within(
        20,
        "session",
        pool.execute_in_session("s", "echo", json!({})),
    )
    .await
    .unwrap();
}

/// A worker told to exit with code 3: the call's error.
async fn crash_on_purpose(pool: &Pool) -> Error {
    within(10, "exit", pool.execute("exit", json!({"code": 3})))
        .await
        .unwrap_err()
}

/// A worker told to exit crashes (`WorkerCrashed`); it is replaced (all
/// `size` workers available again) and the pool serves on. The crash's
/// stderr tail.
async fn crashed_and_replaced(pool: &Pool, size: usize) -> String {
    let e = crash_on_purpose(pool).await;
    let Error::WorkerCrashed(c) = &e else {
        panic!("expected WorkerCrashed: {e:?}");
    };
    assert!(
        eventually(20, || pool.stats().available == size).await,
        "the crashed worker was replaced"
    );
    serves(pool, "after a crash").await;
    c.stderr_tail.clone()
}

/// `cmd` with `args` and a deadline of its own, `timeout`.
async fn with_deadline(
    pool: &Pool,
    cmd: &str,
    args: Value,
    timeout: Duration,
) -> snakepit_core::Result<Value> {
    pool.execute_with(cmd, args, CallOptions::new().timeout(timeout))
        .await
}

/// `cmd` with `args`, spawned, once a worker runs it.
async fn running(
    pool: &Pool,
    cmd: &'static str,
    args: Value,
) -> tokio::task::JoinHandle<snakepit_core::Result<Value>> {
    let call = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute(cmd, args).await })
    };
    assert!(
        eventually(10, || pool.workers().iter().any(|w| w.in_flight > 0)).await,
        "the {cmd} call reached a worker"
    );
    call
}

/// The run records (`*.run`) in `dir`.
fn run_records_in(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".run"))
                .collect()
        })
        .unwrap_or_default()
}

/// The test worker with its own deadline for calls that set none.
struct WithCommandTimeout(Duration);

impl Adapter for WithCommandTimeout {
    fn launch(&self) -> Launch {
        TestWorker::new().launch()
    }
    fn codec(&self) -> WireCodec {
        WireCodec::Json
    }
    fn command_timeout(&self, _: &str) -> Duration {
        self.0
    }
}

/// crates/core/src/config.rs:56: `max_frame_size` is "The largest frame
/// accepted from a worker, in bytes, and the largest request frame sent to
/// one"; `validate` (config.rs:179) refuses "a frame limit under 64
/// bytes" with `Error::Config` naming the setting, and the 4-byte length
/// prefix holds no frame past 4 GiB. Every value outside 64 ..= u32::MAX is
/// refused by `validate()` and by `start()` alike, with a message naming
/// `max_frame_size`; the largest accepted value, `u32::MAX`, makes a pool
/// that serves one-shot calls and streams (the frame limit is a limit,
/// not a buffer size allocated up front).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_frame_size_outside_64_bytes_to_4_gib_is_refused_and_the_largest_works() {
    let alone = Alone::start().await;
    for bad in [0usize, 1, 63, u32::MAX as usize + 1, usize::MAX] {
        let config = config_of(1, |c| c.max_frame_size = bad);
        let e = config.validate().unwrap_err();
        assert!(
            matches!(&e, Error::Config(m) if m.contains("max_frame_size")),
            "validate, max_frame_size {bad}: {e:?}"
        );
        let e = within(
            10,
            "start",
            Pool::builder(TestWorker::new()).config(config).start(),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("max_frame_size {bad} was accepted"));
        assert!(
            matches!(&e, Error::Config(m) if m.contains("max_frame_size")),
            "start, max_frame_size {bad}: {e:?}"
        );
    }
    for good in [64usize, u32::MAX as usize] {
        let config = config_of(1, |c| c.max_frame_size = good);
        assert!(config.validate().is_ok(), "max_frame_size {good}");
    }
    let pool = started("max_frame_size u32::MAX", 1, |c| {
        c.max_frame_size = u32::MAX as usize
    })
    .await;
    serves(&pool, "max_frame_size u32::MAX").await;
    let big = "x".repeat(1 << 20);
    let r = pool
        .execute("echo", json!({"data": big.clone()}))
        .await
        .unwrap();
    assert_eq!(r["echoed"]["data"].as_str().map(str::len), Some(1 << 20));
    let s = pool
        .execute_stream("stream", json!({"n": 3}), CallOptions::new())
        .await
        .unwrap();
    assert_eq!(items_of(s).await, 4, "three chunks and the end");
    pool.shutdown().await.unwrap();
    alone.no_panic();
}

/// crates/core/src/pool/options.rs:88-89: `CallOptions::timeout` is "the
/// adapter's `command_timeout` when `None`", and options.rs:105-107: "A timeout
/// longer than a hundred years (`Duration::MAX`, say) is a hundred years:
/// in practice no deadline". An adapter whose `command_timeout` is
/// `Duration::MAX` (its way to say "no limit") gives every call that sets
/// no timeout the same meaning: one-shot, typed, session and stream calls
/// succeed, and a stream's deadline is far in the future, not an overflow.
/// A `command_timeout` of zero is a deadline passed at submission:
/// `CallTimeout` (is_timeout), never a panic, and the pool serves on with
/// calls that set their own timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_command_timeout_of_duration_max_or_zero() {
    let alone = Alone::start().await;
    let pool = builder(WithCommandTimeout(Duration::MAX))
        .size(1)
        .start()
        .await
        .unwrap();
    serves(&pool, "command_timeout MAX").await;
    let typed: Value = within(
        20,
        "typed",
        pool.call("echo", &json!({"n": 2}), CallOptions::new()),
    )
    .await
    .unwrap();
    assert_eq!(typed["echoed"]["n"], 2);
    serves_a_session(&pool).await;
    let now = Instant::now();
    let s = pool
        .execute_stream("stream", json!({"n": 2}), CallOptions::new())
        .await
        .unwrap();
    assert!(
        s.deadline() > now + Duration::from_secs(50 * 365 * 24 * 3600),
        "a stream with a `Duration::MAX` command_timeout has a far deadline"
    );
    items_of(s).await;
    // A sleeping call is not cut off by an overflowed deadline.
    let r = within(
        20,
        "sleep",
        pool.execute("sleep", json!({"ms": 300, "token": "t"})),
    )
    .await
    .unwrap();
    assert_eq!(r["token"], "t");
    pool.shutdown().await.unwrap();

    let pool = builder(WithCommandTimeout(Duration::ZERO))
        .size(1)
        .start()
        .await
        .unwrap();
    for _ in 0..3 {
        let e = within(10, "zero", pool.execute("sleep", json!({"ms": 200})))
            .await
            .unwrap_err();
        assert!(e.is_timeout(), "command_timeout 0: {e:?}");
    }
    let r = within(
        20,
        "own timeout",
        with_deadline(&pool, "echo", json!({"n": 3}), Duration::from_secs(10)),
    )
    .await
    .unwrap();
    assert_eq!(r["echoed"]["n"], 3);
    pool.shutdown().await.unwrap();
    alone.no_panic();
}

/// Zero where `validate` allows it (crates/core/src/config.rs:174-215 names
/// what it refuses: pool size, zero init/startup timeouts, a zero health
/// check timeout while checks are on, the frame limit, the breaker
/// threshold). README.md:158-171: `queue_timeout_ms` "longest wait in the
/// queue", `health_check_interval_ms` "0 turns it off",
/// `shutdown_grace_period_ms` "in-flight calls and late replies get this
/// long", `pipeline_max_call_us` ... "0 turns it off" (the depth),
/// `restart_backoff_ms`, `session_ttl_ms`, `worker_ttl_ms`,
/// `worker_idle_timeout_ms`, `recycle_*` "0 (off)". With every such
/// setting at zero (and `cleanup_max_retries` 0): the pool starts, serves
/// one-shot and session calls, a call that finds the worker busy fails at
/// once with `QueueTimeout` (zero wait), a timed-out call's worker is
/// replaced (no time for a late reply) and the pool serves on, a crashed
/// worker is replaced at once, and shutdown ends with no worker left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_duration_that_may_be_zero_at_zero_leaves_a_working_pool() {
    let alone = Alone::start().await;
    let pool = started("zeros", 1, |c| {
        c.queue_timeout = Duration::ZERO;
        c.health_check_interval = Duration::ZERO;
        c.health_check_timeout = Duration::ZERO;
        c.shutdown_grace_period = Duration::ZERO;
        c.cleanup_retry_interval = Duration::ZERO;
        c.cleanup_max_retries = 0;
        c.pipeline_depth = 0;
        c.pipeline_max_call = Duration::ZERO;
        c.stderr_tail_lines = 0;
        c.session_ttl = Duration::ZERO;
        c.restart_backoff = Duration::ZERO;
        c.restart_backoff_max = Duration::ZERO;
        c.breaker_cooldown = Duration::ZERO;
        c.worker_ttl = Duration::ZERO;
        c.worker_idle_timeout = Duration::ZERO;
        c.recycle_after_calls = 0;
        c.recycle_above_rss_mb = 0;
    })
    .await;
    serves(&pool, "zeros").await;
    serves_a_session(&pool).await;
    // The one worker busy: a second call may not wait at all.
    let busy = running(&pool, "sleep", json!({"ms": 1500})).await;
    let e = within(5, "queue 0", pool.execute("echo", json!({})))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::QueueTimeout(_)), "{e:?}");
    within(10, "sleep", busy).await.unwrap().unwrap();
    // A timed-out call with no grace for its late reply.
    let first = pool.worker_pids()[0];
    let e = within(
        10,
        "timeout",
        with_deadline(
            &pool,
            "sleep",
            json!({"ms": 3000}),
            Duration::from_millis(200),
        ),
    )
    .await
    .unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    let r = within(
        20,
        "after a timeout",
        with_deadline(&pool, "pid", json!({}), Duration::from_secs(15)),
    )
    .await;
    // queue_timeout 0: a call arriving while the replacement starts may
    // find no free worker; retry until one serves.
    if r.is_err() {
        assert!(
            eventually(20, || pool.stats().available > 0).await,
            "a worker is ready again after the timed-out call"
        );
        serves(&pool, "after a timeout").await;
    }
    // A crash, replaced with no back-off.
    let tail = crashed_and_replaced(&pool, 1).await;
    assert!(tail.is_empty(), "stderr_tail_lines 0: {tail:?}");
    let pids = pool.worker_pids();
    assert!(!pids.contains(&first), "the first worker was replaced");
    within(20, "shutdown", pool.shutdown()).await.unwrap();
    for pid in pids {
        assert!(
            eventually(10, || !alive(pid)).await,
            "worker {pid} outlived shutdown"
        );
    }
    alone.no_panic();
}

/// The smallest non-zero durations (one nanosecond) mean what the docs
/// say, with nothing rounded to "off" and nothing spinning the pool to a
/// halt: crates/core/src/config.rs:40 `health_check_interval` "How often
/// idle workers are pinged", config.rs:113-117 `worker_ttl` "Replace a
/// worker this long after it started", `worker_idle_timeout` "Replace a
/// worker that has had no call for this long", config.rs:89
/// `session_ttl`. Calls still succeed (a worker is replaced after it
/// served, the replacement starting first, README.md:240-241), and shutdown
/// ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_nanosecond_intervals_and_lifetimes_still_serve() {
    let alone = Alone::start().await;
    type Change = fn(&mut PoolConfig);
    let cases: [(&str, Change); 4] = [
        ("health_check_interval 1 ns", |c| {
            c.health_check_interval = Duration::from_nanos(1)
        }),
        ("worker_ttl 1 ns", |c| {
            c.worker_ttl = Duration::from_nanos(1)
        }),
        ("worker_idle_timeout 1 ns", |c| {
            c.worker_idle_timeout = Duration::from_nanos(1)
        }),
        ("session_ttl 1 ns, pipeline_max_call 1 ns", |c| {
            c.session_ttl = Duration::from_nanos(1);
            c.pipeline_max_call = Duration::from_nanos(1);
        }),
    ];
    for (what, change) in cases {
        let pool = started(what, 2, |c| {
            c.queue_timeout = Duration::from_secs(15);
            change(c);
        })
        .await;
        for i in 0..6 {
            let r = within(
                30,
                what,
                pool.execute_with(
                    "echo",
                    json!({"i": i}),
                    CallOptions::new().session(format!("s{}", i % 2)),
                ),
            )
            .await
            .unwrap_or_else(|e| panic!("{what}: call {i}: {e}"));
            assert_eq!(r["echoed"]["i"], i, "{what}");
        }
        within(30, what, pool.shutdown()).await.unwrap();
    }
    alone.no_panic();
}

/// The largest value of every count and size (`usize::MAX`, `u64::MAX`,
/// `u32::MAX`): none of them is allocated up front or multiplied into an
/// overflow. crates/core/src/config.rs: `max_queue_size` "Calls that may
/// wait at once", `stderr_tail_lines` "Lines of each worker's stderr kept
/// for error reports", `max_sessions` "Session affinity records kept at
/// most", `recycle_after_calls` "Replace a worker after it has answered
/// about this many calls (each worker's limit is drawn within 10% of it"
/// (10% above `u64::MAX` does not wrap to a small limit),
/// `recycle_above_rss_mb` "above this many MiB" (times 2^20 does not wrap),
/// `cleanup_max_retries`, `breaker_threshold`. The pool serves calls and
/// sessions, keeps no worker from being replaced too soon, reports a
/// crash with its stderr tail, replaces the crashed worker, and shuts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_counts_and_sizes_leave_a_working_pool() {
    let alone = Alone::start().await;
    let pool = started("the largest counts", 2, |c| {
        c.max_queue_size = usize::MAX;
        c.stderr_tail_lines = usize::MAX;
        c.max_sessions = usize::MAX;
        c.recycle_after_calls = u64::MAX;
        c.recycle_above_rss_mb = u64::MAX;
        c.cleanup_max_retries = u32::MAX;
        c.breaker_threshold = u32::MAX;
        c.max_concurrency_per_worker = u32::MAX;
        c.pipeline_depth = u32::MAX;
    })
    .await;
    let pids = pool.worker_pids();
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.execute_in_session(&format!("s{i}"), "echo", json!({"i": i}))
                    .await
            })
        })
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        let r = within(30, "calls", c).await.unwrap().unwrap();
        assert_eq!(r["echoed"]["i"], i);
    }
    let mut now = pool.worker_pids();
    now.sort_unstable();
    let mut was = pids.clone();
    was.sort_unstable();
    assert_eq!(
        now, was,
        "recycle_after_calls u64::MAX / recycle_above_rss_mb u64::MAX recycled a worker"
    );
    let tail = crashed_and_replaced(&pool, 2).await;
    assert!(
        tail.contains("exiting with 3 on purpose"),
        "stderr_tail_lines usize::MAX: {tail:?}"
    );
    within(30, "shutdown", pool.shutdown()).await.unwrap();
    alone.no_panic();
}

/// `restart_backoff`, `restart_backoff_max` and `breaker_cooldown` at
/// `Duration::MAX` (the one combination api_promises.rs leaves out: "Every
/// duration but the restart back-off"). crates/core/src/config.rs:92-96:
/// "First delay before restarting a slot whose worker failed to start or
/// died within a second of starting ... A worker that lived longer is
/// replaced at once." So a worker that lived over a second and crashes is
/// replaced at once whatever the back-off; one that dies within a second
/// of starting puts its slot into a "forever" back-off (the doubling,
/// `saturating_mul`, and the ±50% jitter of a `Duration::MAX` never
/// panic), and `shutdown()` still ends promptly (pool.rs: "Stops admitting
/// calls ... then signals their process groups"), not after the back-off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_back_off_and_breaker_cooldown_of_duration_max() {
    let alone = Alone::start().await;
    let dir = temp_dir("extremes-backoff");
    let flag = dir.join("die-soon");
    let mut worker = TestWorker::new();
    worker.env.push((
        "TEST_DIE_SOON_IF_EXISTS".into(),
        flag.to_string_lossy().into_owned(),
    ));
    let pool = Pool::builder(worker)
        .size(1)
        .configure(|c| {
            c.restart_backoff = Duration::MAX;
            c.restart_backoff_max = Duration::MAX;
            c.breaker_cooldown = Duration::MAX;
            c.breaker_threshold = 1;
            c.shutdown_grace_period = Duration::from_millis(500);
        })
        .start()
        .await
        .unwrap();
    let first = pool.worker_pids()[0];
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let e = crash_on_purpose(&pool).await;
    assert!(e.is_crash(), "{e:?}");
    assert!(
        eventually(15, || pool
            .worker_pids()
            .first()
            .is_some_and(|p| *p != first))
        .await,
        "a worker that lived over a second is replaced at once, whatever the back-off"
    );
    serves(&pool, "replaced").await;
    // From now on each replacement dies 200 ms after it starts: a failed
    // start, and a back-off (or the breaker's cool-down) of "forever".
    std::fs::write(&flag, "x").unwrap();
    let second = pool.worker_pids()[0];
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let _ = within(10, "exit", pool.execute("exit", json!({"code": 3}))).await;
    assert!(
        eventually(15, || pool
            .worker_pids()
            .first()
            .is_none_or(|p| *p != second))
        .await
    );
    // The replacement dies within a second of starting.
    assert!(
        eventually(15, || pool.worker_pids().is_empty()).await,
        "the short-lived replacement died"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    within(10, "shutdown during a forever back-off", pool.shutdown())
        .await
        .unwrap();
    let e = within(5, "after shutdown", pool.execute("echo", json!({})))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ShutDown), "{e:?}");
    alone.no_panic();
}

/// crates/core/src/config.rs:46-49: `shutdown_grace_period` is "How long
/// shutdown waits for in-flight calls and for workers to exit before
/// signalling them; also how long a timed-out call's worker has to deliver
/// the late reply before it is replaced". At `Duration::MAX` ("a hundred
/// years"), a call's own deadline still fires on time (`CallTimeout` within
/// seconds, not after the grace), the late reply then frees the worker,
/// which serves the next call; and a shutdown with a call in flight waits
/// for that call (it ends well), never panicking on the grace timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grace_period_of_duration_max_with_a_timed_out_call() {
    let alone = Alone::start().await;
    let pool = Pool::builder(TestWorker::new())
        .size(1)
        .configure(|c| {
            c.shutdown_grace_period = Duration::MAX;
            c.queue_timeout = Duration::from_secs(20);
        })
        .start()
        .await
        .unwrap();
    let pid = pool.worker_pids()[0];
    let t0 = Instant::now();
    let e = within(
        8,
        "timed-out call",
        with_deadline(
            &pool,
            "sleep",
            json!({"ms": 1500}),
            Duration::from_millis(300),
        ),
    )
    .await
    .unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(6),
        "the deadline fired late"
    );
    // The late reply comes about 1.2 s later; the same worker serves on.
    let r = within(20, "after the late reply", pool.execute("pid", json!({})))
        .await
        .unwrap();
    assert_eq!(r["pid"], pid, "the worker that delivered the late reply");
    // A shutdown with a call in flight waits for it.
    let running = running(&pool, "sleep", json!({"ms": 800, "token": "in flight"})).await;
    within(10, "shutdown", pool.shutdown()).await.unwrap();
    let r = within(5, "in flight", running).await.unwrap().unwrap();
    assert_eq!(r["token"], "in flight");
    alone.no_panic();
}

/// crates/core/src/config.rs:9-11: `PoolConfig` "reads from any serde
/// format, durations in milliseconds". The extremes a settings file can
/// hold: every `_ms` field at `u64::MAX` (about 584 million years) reads,
/// passes `validate`, and makes a pool that serves; what no `u64` holds
/// (negative, fractional, 2^64, `1e400`, a string, null) is a
/// deserialisation error, never a panic or a wrapped value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_read_from_json_at_and_past_their_type_limits() {
    let alone = Alone::start().await;
    let ms_fields = [
        "startup_timeout_ms",
        "queue_timeout_ms",
        "worker_init_timeout_ms",
        "health_check_interval_ms",
        "health_check_timeout_ms",
        "shutdown_grace_period_ms",
        "session_ttl_ms",
        "breaker_cooldown_ms",
        "worker_ttl_ms",
        "worker_idle_timeout_ms",
    ];
    let mut doc = serde_json::Map::new();
    for f in ms_fields {
        doc.insert(f.into(), json!(u64::MAX));
    }
    doc.insert("pipeline_max_call_us".into(), json!(u64::MAX));
    doc.insert("pool_size".into(), json!(1));
    doc.insert("recycle_after_calls".into(), json!(u64::MAX));
    let config: PoolConfig = serde_json::from_value(Value::Object(doc)).unwrap();
    assert_eq!(config.queue_timeout, Duration::from_millis(u64::MAX));
    config.validate().unwrap();
    // Written back as it was read.
    let back = serde_json::to_value(&config).unwrap();
    assert_eq!(back["queue_timeout_ms"], json!(u64::MAX));
    let pool = started_with(config).await;
    serves(&pool, "u64::MAX ms").await;
    serves_a_session(&pool).await;
    within(20, "shutdown", pool.shutdown()).await.unwrap();

    for field in [
        "queue_timeout_ms",
        "pool_size",
        "max_frame_size",
        "pipeline_depth",
    ] {
        for bad in [
            "-1",
            "1.5",
            "1e400",
            "18446744073709551616",
            "99999999999999999999999999",
            "\"\"",
            "null",
        ] {
            let text = format!("{{\"{field}\": {bad}}}");
            if let Ok(c) = serde_json::from_str::<PoolConfig>(&text) {
                panic!("{text} was read as {c:?}");
            }
        }
    }
    alone.no_panic();
}

/// docs/reliability.md:25: "Each pool writes `<instance>.<host pid>.<run
/// id>.run` in `$SNAKEPIT_STATE_DIR`" (the instance is
/// `PoolBuilder::name`), so that the next start sweeps what a crashed run
/// left; `PoolBuilder::name`: "An empty name, one over 128 bytes [...] is
/// refused" (reliability.md row 33: "a pool name over 128 bytes (its run
/// record's file name) [is] `Error::Config`"). Names of 8 and 128 bytes
/// start and write their record; 129, 200 and 300 are refused at
/// `start()` with an error naming the name. (Before, a name of about 190
/// bytes or more started with no record: its file name was too long.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_names_over_128_bytes_are_refused_and_the_others_recorded() {
    let _alone = Alone::start().await;
    for len in [8usize, 128, 129, 200, 300] {
        let dir = temp_dir("extremes-name");
        let name = "n".repeat(len);
        let started = builder(TestWorker::new())
            .size(1)
            .name(&name)
            .configure(|c| c.state_dir = Some(dir.clone()))
            .start()
            .await;
        let pool = match started {
            Err(Error::Config(m)) if len > 128 => {
                assert!(m.contains("name"), "{m}");
                continue;
            }
            Err(e) => panic!("name of {len}: {e:?}"),
            Ok(_) if len > 128 => panic!("a name of {len} bytes was accepted"),
            Ok(pool) => pool,
        };
        serves(&pool, "a long name").await;
        let records = run_records_in(&dir);
        pool.shutdown().await.unwrap();
        assert_eq!(
            records.len(),
            1,
            "a pool named with {len} characters started without a run record: {records:?}"
        );
    }
}

/// A worker's launch the operating system cannot carry: an environment
/// variable (`PoolBuilder::worker_env`, pool.rs:60-63) or an argument
/// (`Launch::arg`) with a NUL byte in it, and an empty variable name. README.md,
/// errors: `StartFailed` is "a worker could not start"; no input through
/// the public API may panic. `start()` ends within seconds with
/// `StartFailed` (or `Config`), not a panic or a hang, and an empty
/// variable name (which no `execve` environment can hold usefully) neither
/// panics nor stops a pool that is otherwise sound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_env_and_args_with_nul_bytes_fail_the_start_cleanly() {
    let alone = Alone::start().await;
    struct NulArg;
    impl Adapter for NulArg {
        fn launch(&self) -> Launch {
            TestWorker::new().launch().arg("a\0b")
        }
    }
    let cases: Vec<(&str, snakepit_core::PoolBuilder)> = vec![
        (
            "NUL in a variable's value",
            builder(TestWorker::new()).worker_env("EXTREME", "a\0b"),
        ),
        (
            "NUL in a variable's name",
            builder(TestWorker::new()).worker_env("EXT\0REME", "x"),
        ),
        ("NUL in an argument", builder(NulArg)),
    ];
    for (what, b) in cases {
        let r = within(
            30,
            what,
            b.size(1)
                .configure(|c| {
                    c.startup_timeout = Duration::from_secs(5);
                    c.breaker_threshold = 1;
                })
                .start(),
        )
        .await;
        match r {
            Err(Error::StartFailed(e)) => assert!(!e.cause.is_empty(), "{what}: {e:?}"),
            Err(Error::Config(_)) => {}
            Err(e) => panic!("{what}: expected StartFailed, got {e:?}"),
            Ok(pool) => {
                let _ = pool.shutdown().await;
                panic!("{what}: a pool started");
            }
        }
    }
    let pool = within(
        30,
        "empty variable name",
        builder(TestWorker::new())
            .worker_env("", "x")
            .size(1)
            .start(),
    )
    .await;
    if let Ok(pool) = pool {
        serves(&pool, "empty variable name").await;
        pool.shutdown().await.unwrap();
    }
    alone.no_panic();
}

/// README.md's configuration table: `health_check_timeout_ms` is "at
/// least 1 while health checks are on". One nanosecond is as impossible
/// a ping as zero: `validate()` and `start()` refuse it with
/// `Error::Config` naming the setting, and 1 ms is accepted. (Before, 1 ns
/// passed, every idle worker's ping was late, the pool SIGKILLed its own
/// workers and about half the calls failed with `StartFailed`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_timeout_under_1_ms_is_refused() {
    let alone = Alone::start().await;
    let with_timeout = |timeout| {
        config_of(2, move |c| {
            c.health_check_interval = Duration::from_millis(50);
            c.health_check_timeout = timeout;
        })
    };
    for refused in [Duration::from_nanos(1), Duration::from_micros(999)] {
        let e = with_timeout(refused).validate().unwrap_err();
        assert!(
            matches!(&e, Error::Config(m) if m.contains("health_check_timeout")),
            "{refused:?}: {e:?}"
        );
        let e = within(
            30,
            "start",
            builder(TestWorker::new())
                .config(with_timeout(refused))
                .start(),
        )
        .await
        .map(|_| ())
        .unwrap_err();
        assert!(matches!(e, Error::Config(_)), "{refused:?}: {e:?}");
    }
    with_timeout(Duration::from_millis(1)).validate().unwrap();
    alone.no_panic();
}

/// `queue_timeout` of `Duration::MAX` ("a hundred years", a usual "no
/// limit") with a call waiting in the queue behind a busy worker, and
/// `max_queue_size` 1: one more call is refused at once (README.md:159,
/// "one more is rejected at once"), and `shutdown()` (pool.rs:462-466:
/// "Stops admitting calls, lets calls in flight finish within the grace
/// period") ends the waiting call with a typed error within seconds
/// (`ShutDown`, it never ran) instead of leaving it to its hundred years.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_queued_for_a_hundred_years_ends_at_shutdown() {
    let alone = Alone::start().await;
    let pool = started("queue_timeout Duration::MAX", 1, |c| {
        c.queue_timeout = Duration::MAX;
        c.max_queue_size = 1;
        c.pipeline_depth = 0;
        c.shutdown_grace_period = Duration::from_secs(10);
    })
    .await;
    let running = running(&pool, "sleep", json!({"ms": 1000})).await;
    let queued = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("echo", json!({})).await })
    };
    assert!(eventually(10, || pool.stats().queued == 1).await);
    let e = within(5, "one more", pool.execute("echo", json!({})))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::PoolSaturated { .. }), "{e:?}");
    within(20, "shutdown", pool.shutdown()).await.unwrap();
    let r = within(10, "the queued call", queued).await.unwrap();
    match r {
        Err(e) => assert!(matches!(e, Error::ShutDown) || e.never_ran(), "{e:?}"),
        Ok(v) => panic!("the queued call ran after shutdown began: {v}"),
    }
    within(10, "the running call", running)
        .await
        .unwrap()
        .unwrap();
    alone.no_panic();
}

/// `PoolConfig::state_dir`: "Where run records are kept; the per-user
/// default when `None`"; docs/reliability.md:25: "Each pool writes
/// `<instance>.<host pid>.<run id>.run`" there. An empty path is no
/// directory: docs/cli.md refuses it in `snakepit.toml`, and reliability.md
/// row 33 says "an empty `state_dir` [is] `Error::Config`" through the
/// library too, from `validate()` and `start()`. (Before, the pool started
/// and wrote no record anywhere: a crash of that run could not be swept.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_state_dir_is_refused() {
    let _alone = Alone::start().await;
    let config = || config_of(1, |c| c.state_dir = Some(std::path::PathBuf::new()));
    let e = config().validate().unwrap_err();
    assert!(
        matches!(&e, Error::Config(m) if m.contains("state_dir")),
        "{e:?}"
    );
    let e = within(
        30,
        "start",
        builder(TestWorker::new()).config(config()).start(),
    )
    .await
    .map(|_| ())
    .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
}
