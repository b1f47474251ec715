//! docs/sessions.md and README.md's "Sessions", checked from outside
//! through the public API against real Python workers
//! (`tests/workers/outside_sessions_doc_worker.py`): what the other session
//! tests did not show yet. The Redis tests (feature `redis`) start their
//! own `redis-server` on 127.0.0.1 and stop it.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{Affinity, CallOptions, Pool};
use snakepit_session::{attach, EndReason, Error, MemoryStore, SessionStore};
use snakepit_tests::{python, until};

const HOUR: Duration = Duration::from_secs(3600);

fn worker() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/outside_sessions_doc_worker.py")
}

async fn pool_over<S: SessionStore>(store: Arc<S>, size: usize) -> Pool {
    attach(
        Pool::builder(Bridge::python(worker()).interpreter(python())),
        store,
    )
    .size(size)
    .configure(|c| c.sweep_on_start = false)
    .start()
    .await
    .unwrap()
}

fn pid(r: &Value) -> u64 {
    r["pid"].as_u64().unwrap_or_else(|| panic!("no pid in {r}"))
}

fn fail_fast(session: &str) -> CallOptions {
    CallOptions::new()
        .session(session)
        .affinity(Affinity::FailFast)
}

/// `command` of session `session` on `pool`, spawned.
fn spawn_in_session(
    pool: &Pool,
    session: &str,
    command: &str,
    args: Value,
) -> tokio::task::JoinHandle<Result<Value, snakepit_core::Error>> {
    let (pool, session, command) = (pool.clone(), session.to_owned(), command.to_owned());
    tokio::spawn(async move { pool.execute_in_session(&session, &command, args).await })
}

/// Waits (15 s at most) until `pool` runs one call.
async fn until_busy(pool: &Pool, what: &str) {
    until(15, what, || async { pool.stats().busy == 1 }).await;
}

/// Waits (15 s at most) until `store` no longer has session `id`: its TTL
/// passed.
async fn until_expired<S: SessionStore>(store: &S, id: &str) {
    until(15, "the session's TTL passes", || async {
        !store.session_exists(id).await.unwrap()
    })
    .await;
}

/// A memory store whose background sweep does not run during a test.
fn unswept_memory(default_ttl: Duration) -> MemoryStore {
    MemoryStore::builder()
        .default_ttl(default_ttl)
        .sweep_interval(HOUR)
        .build()
}

// ---------------------------------------------------------------------------
// An expiry found by the next call's own touch.
// ---------------------------------------------------------------------------

/// sessions.md:59-60: "When the store removes a session (it expired, or
/// `delete_session`), the pool forgets the session's worker affinity";
/// sessions.md:33-35, 181-183: every session call "creates its session in the store,
/// or extends a live one, **before** it is routed"; "What survives what":
/// "the TTL passes without use | removed | dropped when the store reports
/// it"; and (Redis) "An id used again before a sweep saw its expiry
/// (`create_session`, `ensure_session`, ...) has that expiry reported ...
/// by the host that uses it, first."
///
/// No sweep runs. The session's worker is held by a long call of the
/// session that does not touch the store, and the session's TTL passes.
/// The next call of the session, `FailFast`, finds the expiry in its own
/// touch: the store reports it before the call is routed, so the pool has
/// forgotten the busy worker and the call runs on the free one (with the
/// old affinity it would fail with `WorkerBusy`), in a fresh, empty
/// session.
async fn an_expiry_found_by_the_next_calls_touch_drops_affinity_before_routing<S>(store: Arc<S>)
where
    S: SessionStore + 'static,
{
    let pool = pool_over(store.clone(), 2).await;
    let ends = common::record_ends(&*store);
    let r = pool
        .execute_in_session("s", "remember", json!({"key": "k", "value": 1}))
        .await
        .unwrap();
    let a = pid(&r);
    let busy = spawn_in_session(&pool, "s", "sleep", json!({"seconds": 5}));
    until_busy(&pool, "the session's worker is busy").await;
    // The session now ends 300 ms after this, unless touched.
    store.update_session("s", |s| s.ttl_ms = 300).await.unwrap();
    until_expired(&*store, "s").await;
    assert!(
        ends.lock().unwrap().is_empty(),
        "no sweep ran, nothing reported yet"
    );
    assert_eq!(pool.stats().sessions, 1, "the pool still has the affinity");

    let r = pool
        .execute_with("recall", json!({"key": "k"}), fail_fast("s"))
        .await
        .expect("the expired session's old worker is no longer preferred");
    assert_ne!(pid(&r), a, "ran on the free worker");
    assert_eq!(r["value"], Value::Null, "a fresh, empty session");
    assert_eq!(
        *ends.lock().unwrap(),
        vec![("s".to_string(), EndReason::Expired)]
    );
    assert_eq!(store.stats().await.unwrap().sessions_expired, 1);
    let slept = busy.await.unwrap().unwrap();
    assert_eq!(pid(&slept), a, "the long call was on the session's worker");
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_an_expiry_found_by_the_next_calls_touch_drops_affinity_before_routing() {
    let store = Arc::new(unswept_memory(HOUR));
    an_expiry_found_by_the_next_calls_touch_drops_affinity_before_routing(store).await;
}

// ---------------------------------------------------------------------------
// A worker that dies in the middle of a session call.
// ---------------------------------------------------------------------------

/// sessions.md:4-6: "The state lives on the host, in a session store, not
/// in the worker: it survives the worker's death"; "What survives what":
/// "the session's worker dies | kept (on the host) | the next call goes to
/// another worker"; README.md:214-219: `Strict` "waits for" the session's
/// worker.
///
/// The handler writes through `ctx.session.set` and then dies in the middle
/// of its call (`os._exit`): the call fails as a crash, what it wrote before
/// dying is kept, and the next call of the session, with `Strict` affinity
/// (which would wait for the dead worker), goes to another worker and reads
/// it.
async fn a_worker_dying_mid_call_keeps_what_it_wrote_and_the_next_call_runs_elsewhere<S>(
    store: Arc<S>,
) where
    S: SessionStore + 'static,
{
    let pool = pool_over(store.clone(), 2).await;
    let r = pool
        .execute_in_session("w", "recall", json!({"key": "k"}))
        .await
        .unwrap();
    let a = pid(&r);
    let err = pool
        .execute_in_session(
            "w",
            "set_then_die",
            json!({"key": "k", "value": "written before dying"}),
        )
        .await
        .unwrap_err();
    assert!(err.is_crash(), "{err}");
    assert_eq!(
        store.get("w", "k").await.unwrap(),
        Some(json!("written before dying"))
    );
    until(15, "the pool replaces the dead worker", || async {
        let pids = pool.worker_pids();
        pids.len() == 2 && !pids.contains(&(a as u32))
    })
    .await;
    let r = pool
        .execute_with(
            "recall",
            json!({"key": "k"}),
            CallOptions::new()
                .session("w")
                .affinity(Affinity::Strict)
                .timeout(Duration::from_secs(20)),
        )
        .await
        .unwrap();
    assert_ne!(pid(&r), a);
    assert_eq!(r["value"], "written before dying");
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_worker_dying_mid_call_keeps_what_it_wrote_and_the_next_call_runs_elsewhere() {
    a_worker_dying_mid_call_keeps_what_it_wrote_and_the_next_call_runs_elsewhere(Arc::new(
        MemoryStore::new(),
    ))
    .await;
}

// ---------------------------------------------------------------------------
// Several pools on one store.
// ---------------------------------------------------------------------------

/// sessions.md:59-60: "When the store removes a session (it expired, or
/// `delete_session`), the pool forgets the session's worker affinity";
/// "What survives what": "`delete_session` | removed | dropped at once";
/// sessions.md:120-121: "`attach` registers the pool's [listener] that way,
/// so a store that outlives many pools ...".
///
/// Two pools attached to one `MemoryStore` both serve the sessions: a
/// `delete_session` drops the affinity in both by the time it returns, and
/// so does a `cleanup_expired` that removes an expired session; a pool
/// shut down meanwhile stops nothing of the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pool_attached_to_a_store_forgets_a_session_it_removes() {
    let store = Arc::new(unswept_memory(HOUR));
    let (one, two) = tokio::join!(pool_over(store.clone(), 1), pool_over(store.clone(), 1));
    for pool in [&one, &two] {
        pool.execute_in_session("deleted", "remember", json!({"key": "k", "value": 1}))
            .await
            .unwrap();
        assert_eq!(pool.stats().sessions, 1);
    }
    assert!(store.delete_session("deleted").await.unwrap());
    assert_eq!(
        (one.stats().sessions, two.stats().sessions),
        (0, 0),
        "both pools forgot the deleted session at once"
    );

    for pool in [&one, &two] {
        pool.execute_in_session("expiring", "recall", json!({"key": "k"}))
            .await
            .unwrap();
        assert_eq!(pool.stats().sessions, 1);
    }
    store
        .update_session("expiring", |s| s.ttl_ms = 300)
        .await
        .unwrap();
    until_expired(&*store, "expiring").await;
    assert_eq!((one.stats().sessions, two.stats().sessions), (1, 1));
    assert_eq!(store.cleanup_expired().await.unwrap(), 1);
    assert_eq!(
        (one.stats().sessions, two.stats().sessions),
        (0, 0),
        "both pools forgot the expired session once it was removed"
    );

    // One pool goes; the other still hears of the sessions that end.
    two.shutdown().await.unwrap();
    drop(two);
    one.execute_in_session("after", "recall", json!({"key": "k"}))
        .await
        .unwrap();
    assert_eq!(one.stats().sessions, 1);
    assert!(store.delete_session("after").await.unwrap());
    assert_eq!(one.stats().sessions, 0);
    one.shutdown().await.unwrap();
}

/// sessions.md:59-60: "When the store removes a session (it expired, or
/// `delete_session`), the pool forgets the session's worker affinity";
/// "What survives what": "`delete_session` | removed | dropped at once";
/// README.md:169: `max_sessions` counts the "affinity records kept".
///
/// A call of the session waits in the queue (the only worker is busy with a
/// call of no session) when the session is deleted. Once the call has run,
/// the pool holds no affinity for a session the store no longer has, and
/// a later `FailFast` call of the id waits for a free worker and runs. (The
/// queued call once recorded its worker after the deletion was reported,
/// and the record stayed until `session_ttl_ms`, an hour by default, aged
/// it out: that `FailFast` call failed with `WorkerBusy`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_deleted_while_its_call_waits_in_the_queue_keeps_no_affinity() {
    let store = Arc::new(unswept_memory(HOUR));
    let pool = pool_over(store.clone(), 1).await;
    let hold = |seconds: u64| {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("sleep", json!({"seconds": seconds})).await })
    };
    let busy = hold(2);
    until_busy(&pool, "the only worker is busy").await;
    let queued = spawn_in_session(&pool, "q", "sleep", json!({"seconds": 0}));
    until(15, "the session call waits in the queue", || async {
        pool.stats().queued == 1
    })
    .await;
    assert!(store.session_exists("q").await.unwrap(), "touched first");
    assert!(store.delete_session("q").await.unwrap());
    assert_eq!(pool.stats().sessions, 0, "dropped at once");
    busy.await.unwrap().unwrap();
    queued.await.unwrap().unwrap();
    let records_after = pool.stats().sessions;

    // A session without affinity waits for a free worker; with the stale
    // record, `FailFast` fails at once.
    let busy = hold(2);
    until_busy(&pool, "the only worker is busy again").await;
    let fail_fast_call = pool
        .execute_with("sleep", json!({"seconds": 0}), fail_fast("q"))
        .await;
    busy.await.unwrap().unwrap();
    assert!(
        records_after == 0 && fail_fast_call.is_ok(),
        "affinity records after the queued call ran: {records_after} (want 0); \
         the next FailFast call of `q`: {fail_fast_call:?}"
    );
    pool.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// Program helpers: bookkeeping only after a success.
// ---------------------------------------------------------------------------

/// sessions.md, Program helpers: "`create_program`: after success, the
/// reply's `program_id` and what describes the program ... are stored in
/// the session"; "`execute_program`: ... after success its
/// `execution_count` and `last_executed_ms` are updated"; Errors: "`Pool`
/// (session helpers)".
///
/// A `create_program` the handler fails stores no program; an
/// `execute_program` the handler fails, or whose worker dies in the middle
/// of it, counts nothing. Each comes back as `Error::Pool` carrying the
/// pool's error. A successful run counts once.
async fn program_bookkeeping_follows_only_successes<S: SessionStore + 'static>(store: Arc<S>) {
    let pool = pool_over(store.clone(), 2).await;
    // `command` of the session `ml`, through the program helper.
    let run = |command: &'static str, args: Value| {
        snakepit_session::execute_program_command(&pool, &*store, "ml", command, args)
    };
    let pool_error = |what: &str, r: Result<Value, Error>| match r {
        Err(Error::Pool(e)) => *e,
        other => panic!("{what}: expected Error::Pool, got {other:?}"),
    };

    let e = pool_error(
        "a failed create_program",
        run("create_program", json!({"name": "bad", "fail": true})).await,
    );
    assert!(e.remote().is_some(), "{e}");
    assert!(matches!(
        store.get_program("ml", "bad").await,
        Err(Error::ProgramNotFound { .. })
    ));
    assert!(store.get_session("ml").await.unwrap().programs.is_empty());

    run("create_program", json!({"name": "p1"})).await.unwrap();
    let counted = |p: Value| (p["execution_count"].clone(), p["last_executed_ms"].clone());
    assert_eq!(
        counted(store.get_program("ml", "p1").await.unwrap()),
        (json!(0), Value::Null)
    );

    for (input, crash) in [("fail", false), ("die", true)] {
        let e = pool_error(
            input,
            run(
                "execute_program",
                json!({"program_id": "p1", "input": input}),
            )
            .await,
        );
        assert_eq!(e.is_crash(), crash, "{input}: {e}");
        assert_eq!(
            counted(store.get_program("ml", "p1").await.unwrap()),
            (json!(0), Value::Null),
            "{input}: a run that failed is not counted"
        );
    }

    let r = run(
        "execute_program",
        json!({"program_id": "p1", "input": "ok"}),
    )
    .await
    .unwrap();
    assert_eq!(r["program_data"]["program_id"], "p1", "{r}");
    let (count, last) = counted(store.get_program("ml", "p1").await.unwrap());
    assert_eq!(count, 1);
    assert!(last.as_u64().is_some_and(|t| t > 0), "{last}");
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_program_bookkeeping_follows_only_successes() {
    program_bookkeeping_follows_only_successes(Arc::new(MemoryStore::new())).await;
}

// ---------------------------------------------------------------------------
// Values as deep as the stores take, and one level deeper.
// ---------------------------------------------------------------------------

/// `depth` levels of arrays and maps, alternating, around a number.
fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for i in 0..depth {
        v = if i % 2 == 0 {
            Value::Array(vec![v])
        } else {
            json!({ "n": v })
        };
    }
    v
}

/// sessions.md:96-102: `Invalid` for "a value, program or metadata value
/// nested deeper than `MAX_VALUE_DEPTH`, 125 levels, which every store can
/// read back, ...: each store refuses it and stores nothing".
///
/// At exactly 125 levels (arrays and maps mixed) a data value, a program, a
/// global program and a metadata value are kept, whichever operation puts
/// them in (`set`, `store_program`, `update_session`), and the whole
/// session reads back; at 126 each is `Invalid`, and neither it nor the rest
/// of the refused update is stored.
async fn values_at_the_depth_limit_are_kept_and_one_deeper_refused<S: SessionStore>(store: &S) {
    let limit = snakepit_session::MAX_VALUE_DEPTH;
    assert_eq!(limit, 125);
    let (at, over) = (nested(limit), nested(limit + 1));
    store.create_session("deep", None).await.unwrap();

    store.set("deep", "k", at.clone()).await.unwrap();
    store.store_program("deep", "p", at.clone()).await.unwrap();
    store.store_global_program("g", at.clone()).await.unwrap();
    let (m, d, p) = (at.clone(), at.clone(), at.clone());
    store
        .update_session("deep", move |s| {
            s.metadata.insert("m".into(), m.clone());
            s.data.insert("k_update".into(), d.clone());
            s.programs.insert("p_update".into(), p.clone());
        })
        .await
        .unwrap();

    let invalid = |what: &str, r: Result<(), Error>| {
        assert!(matches!(r, Err(Error::Invalid { .. })), "{what}: {r:?}");
    };
    invalid("set", store.set("deep", "k_over", over.clone()).await);
    invalid(
        "store_program",
        store.store_program("deep", "p_over", over.clone()).await,
    );
    invalid(
        "store_global_program",
        store.store_global_program("g_over", over.clone()).await,
    );
    for part in ["metadata", "data", "programs"] {
        let o = over.clone();
        let r = store
            .update_session("deep", move |s| {
                // Something valid beside it: the whole update is refused.
                s.metadata.insert("beside".into(), json!(true));
                match part {
                    "metadata" => s.metadata.insert("m_over".into(), o.clone()),
                    "data" => s.data.insert("k_over".into(), o.clone()),
                    _ => s.programs.insert("p_over".into(), o.clone()),
                };
            })
            .await;
        invalid(part, r.map(drop));
    }

    let s = store.get_session("deep").await.unwrap();
    assert_eq!(s.metadata.len(), 1, "{:?}", s.metadata.keys());
    assert_eq!(s.metadata["m"], at);
    // In any order: a store's map need not keep the order keys came in
    // (the Redis store's does not).
    fn sorted<'a>(keys: impl Iterator<Item = &'a String>) -> Vec<&'a String> {
        let mut keys: Vec<_> = keys.collect();
        keys.sort();
        keys
    }
    assert_eq!(
        sorted(s.data.keys()),
        vec!["k", "k_update"],
        "nothing refused was stored"
    );
    assert_eq!((&s.data["k"], &s.data["k_update"]), (&at, &at));
    assert_eq!(sorted(s.programs.keys()), vec!["p", "p_update"]);
    assert_eq!(store.get_program("deep", "p_update").await.unwrap(), at);
    assert_eq!(store.get("deep", "k").await.unwrap(), Some(at.clone()));
    assert_eq!(store.get_global_program("g").await.unwrap(), at);
    assert!(matches!(
        store.get_global_program("g_over").await,
        Err(Error::ProgramNotFound { .. })
    ));
    assert_eq!(store.stats().await.unwrap().global_programs, 1);
}

#[tokio::test]
async fn memory_values_at_the_depth_limit_are_kept_and_one_deeper_refused() {
    values_at_the_depth_limit_are_kept_and_one_deeper_refused(&MemoryStore::new()).await;
}

// ---------------------------------------------------------------------------
// A session's own TTL through pool calls.
// ---------------------------------------------------------------------------

/// sessions.md:83-86: "**TTL slides**: every read or write of a session
/// (..., `ensure_session`, ...; hence every session call through the pool)
/// extends its life by its TTL"; the store table:
/// `create_session(id, Some(Duration::from_secs(7200)))`.
///
/// A session created with a TTL of its own (2 s, on a store whose default
/// is an hour) is kept alive by pool calls alone, well past that TTL; the
/// calls do not give it the store's default TTL: left alone, it ends after
/// its own.
async fn a_session_keeps_its_own_ttl_through_pool_calls<S: SessionStore + 'static>(store: Arc<S>) {
    let pool = pool_over(store.clone(), 1).await;
    store
        .create_session("own", Some(Duration::from_secs(2)))
        .await
        .unwrap();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        pool.execute_in_session("own", "recall", json!({"key": "k"}))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(store.session_exists("own").await.unwrap(), "kept alive");
    let ends = common::record_ends(&*store);
    // `session_exists` does not slide: left alone, it ends after its own
    // TTL (the test's deadline is far below the store's default hour).
    until(15, "the session left alone expires", || async {
        !store.session_exists("own").await.unwrap()
    })
    .await;
    assert_eq!(store.stats().await.unwrap().sessions_created, 1);
    assert_eq!(store.cleanup_expired().await.unwrap(), 1);
    assert_eq!(
        *ends.lock().unwrap(),
        vec![("own".to_string(), EndReason::Expired)]
    );
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_session_keeps_its_own_ttl_through_pool_calls() {
    a_session_keeps_its_own_ttl_through_pool_calls(Arc::new(unswept_memory(HOUR))).await;
}

// ---------------------------------------------------------------------------
// Redis.
// ---------------------------------------------------------------------------

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use common::RedisServer;
    use snakepit_core::Error as PoolError;
    use snakepit_session::RedisStore;

    async fn redis_store(server: &RedisServer, default_ttl: Duration) -> RedisStore {
        RedisStore::builder(server.url.clone())
            .default_ttl(default_ttl)
            .sweep_interval(HOUR)
            .connect()
            .await
            .unwrap()
    }

    /// Runs `test` on a store of a Redis server of its own (an hour's
    /// default TTL, no sweep during the test), stopped after it.
    async fn on_redis<F, Fut>(test: F)
    where
        F: FnOnce(Arc<RedisStore>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let server = RedisServer::start().await;
        test(Arc::new(redis_store(&server, HOUR).await)).await;
    }

    /// sessions.md, "Errors": for a session that expired, "the Redis store,
    /// where Redis has already removed it, always `NotFound`"; `is_gone()`
    /// answers it, as it answers the memory store's `Expired`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_an_expired_session_is_not_found_and_gone() {
        on_redis(|store| async move {
            store
                .create_session("brief", Some(Duration::from_millis(300)))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(800)).await;
            let err = store.get_session("brief").await.unwrap_err();
            assert!(matches!(err, Error::NotFound(_)), "{err:?}");
            assert!(err.is_gone(), "{err:?}");
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_an_expiry_found_by_the_next_calls_touch_drops_affinity_before_routing() {
        on_redis(an_expiry_found_by_the_next_calls_touch_drops_affinity_before_routing).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_a_worker_dying_mid_call_keeps_what_it_wrote_and_the_next_call_runs_elsewhere() {
        on_redis(a_worker_dying_mid_call_keeps_what_it_wrote_and_the_next_call_runs_elsewhere)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_program_bookkeeping_follows_only_successes() {
        on_redis(program_bookkeeping_follows_only_successes).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_values_at_the_depth_limit_are_kept_and_one_deeper_refused() {
        on_redis(|store| async move {
            values_at_the_depth_limit_are_kept_and_one_deeper_refused(&*store).await
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_a_session_keeps_its_own_ttl_through_pool_calls() {
        on_redis(a_session_keeps_its_own_ttl_through_pool_calls).await;
    }

    /// sessions.md:33-37: every session call "creates its session in the
    /// store, or extends a live one, **before** it is routed. If the store
    /// fails (Redis down), the call fails with `snakepit_core::Error::Session`
    /// and never runs (`never_ran()` is true)".
    ///
    /// The session's only worker is busy with a long call of the session;
    /// then Redis goes away. A `FailFast` call of the session fails with
    /// `Error::Session`, not `WorkerBusy` (the store is asked before the
    /// call is routed), and a `Strict` one fails the same way instead of
    /// waiting in the queue for the busy worker: both come back while the
    /// long call is still running. The long call, already routed, ends
    /// normally.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_redis_gone_a_call_fails_on_the_store_before_it_is_routed() {
        let server = RedisServer::start().await;
        let store = Arc::new(
            RedisStore::builder(server.url.clone())
                .sweep_interval(HOUR)
                .timeout(Duration::from_secs(2))
                .connect()
                .await
                .unwrap(),
        );
        let pool = pool_over(store.clone(), 1).await;
        let busy = spawn_in_session(&pool, "s", "sleep", json!({"seconds": 8}));
        until_busy(&pool, "the session's worker is busy").await;
        drop(server); // SIGKILL, reaped

        let strict = CallOptions::new()
            .session("s")
            .affinity(Affinity::Strict)
            .timeout(Duration::from_secs(30));
        for (name, options) in [("FailFast", fail_fast("s")), ("Strict", strict)] {
            let err = pool
                .execute_with("recall", json!({"key": "k"}), options)
                .await
                .unwrap_err();
            assert!(
                matches!(&err, PoolError::Session { session_id, .. } if session_id == "s"),
                "{name}: {err}"
            );
            assert!(err.never_ran(), "{name}: {err}");
        }
        assert!(
            !busy.is_finished(),
            "the failed calls did not wait for the busy worker"
        );
        busy.await.unwrap().unwrap();
        pool.shutdown().await.unwrap();
    }
}
