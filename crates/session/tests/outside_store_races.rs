//! An outside red team of the session stores wired into pools: races that
//! the other tests do not show, against real Python workers
//! (tests/workers/outside_store_races.py) and a real `redis-server` on
//! 127.0.0.1 (tests/redis_server, killed when each test ends).
//!
//! - two hosts (two stores, two pools) on one Redis server making the same
//!   new session at once, with per-key writes and updates mixed in;
//! - `delete_session` on one host racing calls in that session on another;
//! - a call that runs longer than its session's TTL (memory and Redis);
//! - thousands of sessions expiring while two hosts sweep and a third uses
//!   some of the ids again;
//! - Redis restarted (without persistence, and with AOF) while a call in
//!   the session is running;
//! - a pool shut down while store operations are pending, and a session
//!   call made to a pool already shut down.
//!
//! `cargo test -p snakepit-session --features redis --test
//! outside_store_races`.
#![cfg(feature = "redis")]

mod common;
mod redis_server;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis_server::Redis;
use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{Error as PoolError, Pool};
use snakepit_session::{attach, EndReason, MemoryStore, RedisStore, SessionStore};
use snakepit_tests::{python, until};

/// The store's operation timeout.
const TIMEOUT: Duration = Duration::from_secs(2);
/// A TTL no test outlives.
const HOUR: Duration = Duration::from_secs(3600);
/// A sweep that does not run during a test.
const NEVER: Duration = Duration::from_secs(3600);
/// A sweep that reports expiries quickly.
const OFTEN: Duration = Duration::from_millis(100);
/// Only turns a hang into a failure of the test.
const GUARD: Duration = Duration::from_secs(60);

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|f| f.is_file())
    })
}

/// Skips the test (with a message) only when redis-server is not installed.
macro_rules! need_redis {
    () => {
        if which("redis-server").is_none() || which("redis-cli").is_none() {
            eprintln!("skipped: redis-server or redis-cli is not installed");
            return;
        }
    };
}

fn worker() -> Bridge {
    Bridge::python(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/outside_store_races.py"),
    )
    .interpreter(python())
}

async fn redis_store(redis: &Redis, ttl: Duration, sweep: Duration) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::builder(redis.url())
            .timeout(TIMEOUT)
            .default_ttl(ttl)
            .sweep_interval(sweep)
            .connect()
            .await
            .unwrap(),
    )
}

/// A store on `redis` with the given operation timeout and sweep interval
/// (and the store's own default TTL).
async fn timed_store(redis: &Redis, timeout: Duration, sweep: Duration) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::builder(redis.url())
            .timeout(timeout)
            .sweep_interval(sweep)
            .connect()
            .await
            .unwrap(),
    )
}

/// Two hosts' stores on `redis` (TTL an hour, no sweep during the test).
async fn two_hosts(redis: &Redis) -> (Arc<RedisStore>, Arc<RedisStore>) {
    (
        redis_store(redis, HOUR, NEVER).await,
        redis_store(redis, HOUR, NEVER).await,
    )
}

/// A fresh Redis server and a pool of `size` over a store on it with the
/// operation `timeout` (no sweep during the test).
async fn pool_on_fresh_redis(timeout: Duration, size: usize) -> (Redis, Pool) {
    let redis = Redis::start().await;
    let pool = pool_over(timed_store(&redis, timeout, NEVER).await, size).await;
    (redis, pool)
}

/// Awaits a spawned task within [`GUARD`]; panics if it hung or panicked.
async fn joined<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(GUARD, task).await.unwrap().unwrap()
}

/// The `run` arguments of a handler that does `before`, signals the file
/// `started` in `dir`, waits for the file `go`, then does `after`.
fn signal_then_wait(dir: &Dir, before: Value, after: Value) -> Value {
    let mut ops = before.as_array().unwrap().clone();
    ops.push(json!({"op": "signal", "path": dir.path("started")}));
    ops.push(json!({"op": "wait", "path": dir.path("go")}));
    ops.extend(after.as_array().unwrap().iter().cloned());
    json!({ "ops": ops })
}

/// A `run` of `args` in `session` on `pool`, spawned.
fn spawn_in_session(
    pool: &Pool,
    session: &'static str,
    args: Value,
) -> tokio::task::JoinHandle<snakepit_core::Result<Value>> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.execute_in_session(session, "run", args).await })
}

/// Waits until the handler of [`signal_then_wait`] in `dir` has signalled.
async fn handler_started(dir: &Dir, what: &str) {
    let started = dir.path("started");
    until(30, what, || {
        let started = started.clone();
        async move { std::path::Path::new(&started).exists() }
    })
    .await;
}

/// Waits until every worker process of `pids` is gone.
async fn workers_gone(pids: Vec<u64>) {
    for pid in pids {
        until(
            10,
            "the worker is gone",
            || async move { process_gone(pid) },
        )
        .await;
    }
}

/// A handler in `session` of a pool of one over `store` sets `k`, then
/// waits while `redis` is SIGKILLed and started again; it then reads `k`,
/// writes `k2` and reads `k` again. Returns the pool and the call's answer.
async fn restarted_mid_call(
    redis: &mut Redis,
    store: Arc<RedisStore>,
    dir: &Dir,
    session: &'static str,
) -> (Pool, Value) {
    let pool = pool_over(store, 1).await;
    let call = spawn_in_session(
        &pool,
        session,
        signal_then_wait(
            dir,
            json!([{"op": "set", "key": "k", "value": 1}]),
            json!([
                {"op": "get", "key": "k"},
                {"op": "set", "key": "k2", "value": 2},
                {"op": "get", "key": "k"},
            ]),
        ),
    );
    handler_started(dir, "the handler has set its key").await;
    redis.kill();
    redis.run().await;
    serving(redis.port).await;
    std::fs::write(dir.path("go"), b"").unwrap();
    let answer = joined(call).await.unwrap();
    (pool, answer)
}

async fn pool_over<S: SessionStore + 'static>(store: Arc<S>, size: usize) -> Pool {
    attach(Pool::builder(worker()), store)
        .size(size)
        .configure(|c| {
            c.health_check_interval = Duration::ZERO;
            c.shutdown_grace_period = Duration::from_secs(1);
        })
        .start()
        .await
        .unwrap()
}

/// The per-op results of a `run` answer.
fn results(answer: &Value) -> &Vec<Value> {
    answer["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
}

/// A host-call failure a worker gets for a session that is gone
/// (sessions.md: "match both ... `SessionNotFound` and `SessionExpired`").
fn gone(result: &Value) -> bool {
    matches!(
        result["caught"].as_str(),
        Some("SessionNotFound" | "SessionExpired")
    )
}

/// The `SessionStoreError` a host call gets from a stale reconnection
/// error (see `the_first_operation_after_a_failed_background_reconnection_succeeds`).
fn stale(result: &Value) -> bool {
    result["caught"] == "SessionStoreError"
        && result["message"]
            .as_str()
            .is_some_and(|m| m.contains("Connection reset by peer") || m.contains("broken pipe"))
}

/// A temporary directory for the files a worker and a test signal with.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!(
            "snakepit-outside-store-races-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn path(&self, f: &str) -> String {
        self.0.join(f).to_string_lossy().into_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn process_gone(pid: u64) -> bool {
    // A reaped process has no /proc entry; a zombie's state is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
    }
}

/// docs/sessions.md:158-159, "a session created on one host is served on
/// another"; :169-171, "`update_session` ... compare-and-swap, retrying
/// otherwise; per-key writes bump the version, so an update never erases a
/// concurrent `set`"; :33-35, every session call "creates its session in
/// the store, or extends a live one".
///
/// Two hosts (two `RedisStore` handles, two pools of two workers) make the
/// same new session at once with 32 session calls, each of whose handlers
/// sets a key of its own, while both stores run `update_session`
/// increments on the same session. Every call succeeds, no key and no
/// increment is lost, and the session was created once (`stats`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_making_one_session_at_once_lose_no_write() {
    need_redis!();
    let redis = Redis::start().await;
    let (a, b) = two_hosts(&redis).await;
    let (pa, pb) = (pool_over(a.clone(), 2).await, pool_over(b.clone(), 2).await);
    let before = a.stats().await.unwrap();
    let mut calls = Vec::new();
    for (pool, host) in [(&pa, "a"), (&pb, "b")] {
        for i in 0..16 {
            let pool = pool.clone();
            calls.push(tokio::spawn(async move {
                pool.execute_in_session(
                    "shared",
                    "run",
                    json!({"ops": [{"op": "set", "key": format!("{host}{i}"), "value": i}]}),
                )
                .await
            }));
        }
    }
    let mut updates = Vec::new();
    for store in [a.clone(), b.clone()] {
        updates.push(tokio::spawn(async move {
            let mut done = 0;
            for _ in 0..10 {
                // The session may not exist yet: the pools make it.
                loop {
                    match store
                        .update_session("shared", |s| {
                            let n = s.metadata.get("n").and_then(Value::as_u64).unwrap_or(0);
                            s.metadata.insert("n".into(), json!(n + 1));
                        })
                        .await
                    {
                        Ok(_) => break,
                        Err(e) if e.is_gone() => tokio::time::sleep(Duration::from_millis(5)).await,
                        Err(e) => panic!("update_session: {e}"),
                    }
                }
                done += 1;
            }
            done
        }));
    }
    for c in calls {
        let answer = joined(c).await.unwrap();
        assert_eq!(results(&answer), &vec![json!({"ok": true})], "{answer}");
    }
    let mut increments = 0;
    for u in updates {
        increments += joined(u).await;
    }
    let s = b.get_session("shared").await.unwrap();
    assert_eq!(s.data.len(), 32, "every handler's key: {:?}", s.data);
    assert_eq!(s.metadata["n"], json!(increments));
    let after = a.stats().await.unwrap();
    assert_eq!(after.sessions_created - before.sessions_created, 1);
    assert_eq!(after.active_sessions - before.active_sessions, 1);
    pa.shutdown().await.unwrap();
    pb.shutdown().await.unwrap();
}

/// docs/sessions.md:114-119 "A deletion is heard of when its store saw it
/// done"; :41-58 the worker's failures are `SessionNotFound` or
/// `SessionExpired` ("Either way the worker serves on"); :33-35 each
/// session call creates its session afresh.
///
/// Host B deletes session `x` every few milliseconds while host A's pool
/// runs calls in `x` that set a key and read it back. Every call answers
/// (never a pool error); each host call either works or gets a gone type;
/// a read of the key just set sees it, `null` (deleted and made again in
/// between), or gone. Afterwards the counters add up: every deletion that
/// answered `true` was heard by B's listener once, and every creation is a
/// deletion or the session alive now, nothing else (no half-written
/// session left behind by a write that lost the race: it parses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_session_racing_calls_in_that_session_adds_up() {
    need_redis!();
    let redis = Redis::start().await;
    let (a, b) = two_hosts(&redis).await;
    let heard = common::record_ends(&*b);
    let pool = pool_over(a.clone(), 2).await;
    let before = a.stats().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let deleter = {
        let (b, stop) = (b.clone(), stop.clone());
        tokio::spawn(async move {
            let mut deleted = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if b.delete_session("x").await.unwrap() {
                    deleted += 1;
                }
                tokio::time::sleep(Duration::from_millis(7)).await;
            }
            deleted
        })
    };
    let gone_seen = Arc::new(AtomicU64::new(0));
    let mut callers = Vec::new();
    for t in 0..2 {
        let (pool, gone_seen) = (pool.clone(), gone_seen.clone());
        callers.push(tokio::spawn(async move {
            for i in 0..40 {
                let v = format!("{t}-{i}");
                let answer = pool
                    .execute_in_session(
                        "x",
                        "run",
                        json!({"ops": [
                            {"op": "set", "key": format!("k{t}"), "value": v},
                            {"op": "get", "key": format!("k{t}")},
                        ]}),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("a call in a deleted session: {e}"));
                let r = results(&answer);
                assert!(r[0] == json!({"ok": true}) || gone(&r[0]), "{answer}");
                assert!(
                    r[1] == json!({"value": v}) || r[1] == json!({"value": null}) || gone(&r[1]),
                    "{answer}"
                );
                if gone(&r[0]) || gone(&r[1]) {
                    gone_seen.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for c in callers {
        joined(c).await;
    }
    stop.store(true, Ordering::Relaxed);
    let deleted = deleter.await.unwrap();
    assert!(deleted > 0, "the race happened");
    let alive = a.session_exists("x").await.unwrap();
    if alive {
        let s = a.get_session("x").await.unwrap();
        assert_eq!(s.ttl(), HOUR, "{s:?}");
    }
    let after = a.stats().await.unwrap();
    assert_eq!(after.sessions_deleted - before.sessions_deleted, deleted);
    assert_eq!(after.sessions_expired, before.sessions_expired);
    assert_eq!(
        after.sessions_created - before.sessions_created,
        deleted + u64::from(alive),
        "every incarnation ended by a deletion, or alive (gone seen {} times)",
        gone_seen.load(Ordering::Relaxed)
    );
    let heard = heard.lock().unwrap().clone();
    assert_eq!(heard.len() as u64, deleted, "{heard:?}");
    assert!(heard
        .iter()
        .all(|(id, why)| id == "x" && *why == EndReason::Deleted));
    pool.shutdown().await.unwrap();
}

/// docs/sessions.md:83-85 "every read or write of a session ... extends
/// its life by its TTL"; :284-288 "the TTL passes without use | removed |
/// dropped when the store reports it"; :95-99 gone sessions are
/// `SessionNotFound`/`SessionExpired` to a worker.
///
/// Two calls on a store whose default TTL is 1.5 s: one sets a key and
/// then runs 3.5 s without touching its session (which therefore expires
/// mid-call: its read and its write after that get a gone type, and the
/// write does not bring the session back); the other reads its session
/// every 0.3 s for as long, and its session lives on. The expiry is
/// reported once, and the next call in the expired session starts afresh.
async fn a_call_longer_than_the_ttl<S: SessionStore + 'static>(store: Arc<S>) {
    let ends = common::record_ends(&*store);
    let pool = pool_over(store.clone(), 2).await;
    let long = pool.execute_in_session(
        "long",
        "run",
        json!({"ops": [
            {"op": "set", "key": "a", "value": 1},
            {"op": "sleep", "s": 3.5},
            {"op": "get", "key": "a"},
            {"op": "set", "key": "b", "value": 2},
        ]}),
    );
    let mut ops = vec![json!({"op": "set", "key": "a", "value": 1})];
    for _ in 0..12 {
        ops.push(json!({"op": "sleep", "s": 0.3}));
        ops.push(json!({"op": "get", "key": "a"}));
    }
    let kept = pool.execute_in_session("kept", "run", json!({ "ops": ops }));
    let (long, kept) = tokio::time::timeout(GUARD, async { tokio::join!(long, kept) })
        .await
        .unwrap();
    let (long, kept) = (long.unwrap(), kept.unwrap());
    let r = results(&long);
    assert_eq!(r[0], json!({"ok": true}), "{long}");
    assert!(gone(&r[2]), "read after the TTL passed: {long}");
    assert!(gone(&r[3]), "write after the TTL passed: {long}");
    for (i, r) in results(&kept).iter().enumerate().skip(1) {
        if i % 2 == 0 {
            assert_eq!(r, &json!({"value": 1}), "{kept}");
        }
    }
    assert!(!store.session_exists("long").await.unwrap());
    assert!(store.get_session("long").await.unwrap_err().is_gone());
    assert!(store.session_exists("kept").await.unwrap());
    until(15, "the expiry of `long` is reported", || async {
        !ends.lock().unwrap().is_empty()
    })
    .await;
    let again = pool
        .execute_in_session("long", "run", json!({"ops": [{"op": "get", "key": "a"}]}))
        .await
        .unwrap();
    assert_eq!(
        results(&again)[0],
        json!({"value": null}),
        "afresh: {again}"
    );
    assert_eq!(
        *ends.lock().unwrap(),
        vec![("long".to_string(), EndReason::Expired)]
    );
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_call_longer_than_the_ttl_loses_its_session_and_cannot_revive_it() {
    let store = MemoryStore::builder()
        .default_ttl(Duration::from_millis(1500))
        .sweep_interval(OFTEN)
        .build();
    a_call_longer_than_the_ttl(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_call_longer_than_the_ttl_loses_its_session_and_cannot_revive_it() {
    need_redis!();
    let redis = Redis::start().await;
    a_call_longer_than_the_ttl(redis_store(&redis, Duration::from_millis(1500), OFTEN).await).await;
}

/// docs/sessions.md:179-186: "each host's sweep ... finds expired ids in
/// `idx`, removes them and tells its listeners (each expiry is reported to
/// one host only ...). An id used again before a sweep saw its expiry
/// (`create_session`, `ensure_session`, `delete_session`) has that expiry
/// reported and counted by the host that uses it, first."
///
/// 2,500 sessions of 400 ms (more than the 1,000 one sweep script takes)
/// expire while two hosts sweep every 50 ms and a third host, which never
/// sweeps, uses 500 of the ids again (`ensure_session`) as soon as they
/// have expired. Every expiry is reported exactly once over the three
/// hosts and counted once; the 500 are live and listed, nothing else is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_expiries_are_each_reported_once_over_three_hosts() {
    need_redis!();
    const N: usize = 2500;
    const AGAIN: usize = 500;
    let redis = Redis::start().await;
    let sweep = Duration::from_millis(50);
    let hosts = [
        redis_store(&redis, HOUR, sweep).await,
        redis_store(&redis, HOUR, sweep).await,
        redis_store(&redis, HOUR, NEVER).await,
    ];
    let heard: Arc<Mutex<Vec<(String, EndReason, usize)>>> = Arc::default();
    for (h, store) in hosts.iter().enumerate() {
        let sink = heard.clone();
        store.on_session_end(Arc::new(move |id, why| {
            sink.lock().unwrap().push((id.to_owned(), why, h));
        }));
    }
    let before = hosts[0].stats().await.unwrap();
    let ids: Arc<Vec<String>> = Arc::new((0..N).map(|i| format!("many-{i:05}")).collect());
    let mut makers = Vec::new();
    for t in 0..8 {
        let (store, ids) = (hosts[0].clone(), ids.clone());
        makers.push(tokio::spawn(async move {
            for id in ids.iter().skip(t).step_by(8) {
                store
                    .create_session(id, Some(Duration::from_millis(400)))
                    .await
                    .unwrap();
            }
        }));
    }
    for m in makers {
        joined(m).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut users = Vec::new();
    for t in 0..4 {
        let (store, ids) = (hosts[2].clone(), ids.clone());
        users.push(tokio::spawn(async move {
            for id in ids.iter().take(AGAIN).skip(t).step_by(4) {
                store.ensure_session(id).await.unwrap();
            }
        }));
    }
    for u in users {
        joined(u).await;
    }
    until(20, "every expiry is reported", || async {
        heard.lock().unwrap().len() >= N
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await; // a repeat would show
    let heard = heard.lock().unwrap().clone();
    let mut per_id: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, why, _) in &heard {
        assert_eq!(*why, EndReason::Expired, "{id}");
        *per_id.entry(id).or_default() += 1;
    }
    let repeated: Vec<_> = per_id.iter().filter(|(_, n)| **n != 1).collect();
    assert!(repeated.is_empty(), "reported more than once: {repeated:?}");
    assert_eq!(per_id.len(), N, "every id reported");
    let after = hosts[1].stats().await.unwrap();
    assert_eq!(after.sessions_expired - before.sessions_expired, N as u64);
    assert_eq!(
        after.sessions_created - before.sessions_created,
        (N + AGAIN) as u64
    );
    assert_eq!(after.active_sessions, AGAIN as u64);
    let mut listed = hosts[0].list_sessions().await.unwrap();
    listed.sort();
    assert_eq!(listed, ids[..AGAIN].to_vec());
}

/// docs/sessions.md:224-239: "Redis restarted ... operations ... succeed
/// again as soon as it is back ... the first one after Redis returns does
/// not fail ... a Redis without persistence comes back empty, and
/// `ensure_session` (every session call through the pool) creates them
/// afresh."
///
/// A handler sets a key, then waits while Redis (no persistence) is
/// SIGKILLed and started again on the same port; once the server answers,
/// the handler reads the key and writes another. Each host call gets an
/// answer from the new server (the session is gone: a gone type, not
/// `SessionStoreError`), the write does not bring back a session without
/// its creation (no half session), and the next call makes it afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_mid_call_the_handler_sees_the_session_gone() {
    need_redis!();
    let dir = Dir::new("restart-empty");
    let mut redis = Redis::start().await;
    let store = redis_store(&redis, HOUR, NEVER).await;
    let (pool, answer) = restarted_mid_call(&mut redis, store.clone(), &dir, "r").await;
    let r = results(&answer);
    // The first host call after the restart may meet the defect that
    // `the_first_operation_after_a_failed_background_reconnection_succeeds`
    // shows (a stale reconnection error, intermittently when other tests
    // run alongside); everything after it must hold.
    assert!(
        gone(&r[3]) || stale(&r[3]),
        "the read after the restart: {answer}"
    );
    assert!(gone(&r[4]), "the write after the restart: {answer}");
    assert!(gone(&r[5]), "the read after that: {answer}");
    assert!(!store.session_exists("r").await.unwrap());
    let again = pool
        .execute_in_session("r", "run", json!({"ops": [{"op": "get", "key": "k"}]}))
        .await
        .unwrap();
    assert_eq!(results(&again)[0], json!({"value": null}), "{again}");
    let s = store.get_session("r").await.unwrap();
    assert_eq!((s.ttl(), s.data.len()), (HOUR, 0), "{s:?}");
    pool.shutdown().await.unwrap();
}

/// docs/sessions.md:236-239: "Sessions live on if Redis persists them (RDB
/// or AOF)". The same as above with `--appendonly yes --appendfsync always`:
/// the handler, waiting while Redis is killed and started again, reads the
/// key it set before and writes another, both kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_with_aof_mid_call_the_handler_keeps_its_session() {
    need_redis!();
    let dir = Dir::new("restart-aof");
    let mut redis =
        Redis::start_with(&["--appendonly", "yes", "--appendfsync", "always"], false).await;
    let store = redis_store(&redis, HOUR, NEVER).await;
    let (pool, answer) = restarted_mid_call(&mut redis, store.clone(), &dir, "p").await;
    let r = results(&answer);
    // As above: the first host call may meet the stale-reconnection defect.
    assert!(r[3] == json!({"value": 1}) || stale(&r[3]), "{answer}");
    assert_eq!(r[4], json!({"ok": true}), "{answer}");
    assert_eq!(r[5], json!({"value": 1}), "{answer}");
    assert_eq!(store.get("p", "k2").await.unwrap(), Some(json!(2)));
    pool.shutdown().await.unwrap();
}

/// Waits until the (re)started server answers commands (not `LOADING`).
async fn serving(port: u16) {
    until(15, "redis-server answers PING", || async move {
        #[allow(clippy::disallowed_methods)] // the Redis command-line client, not a worker
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "PING"])
            .output()
            .expect("redis-cli is installed with redis-server");
        String::from_utf8_lossy(&out.stdout).trim() == "PONG"
    })
    .await;
}

/// crates/core Pool::shutdown: "lets calls in flight finish within the
/// grace period ... A call still running when the grace period ends fails
/// with `Error::StoppedByShutdown`"; docs/sessions.md:33-39 a session call
/// whose store fails "fails with `snakepit_core::Error::Session` and never
/// runs"; :240-248 every operation gives up after the store's timeout.
///
/// Redis paused; one handler waits in `ctx.session.get`, a second session
/// call waits in its session touch; the pool is shut down. The shutdown
/// returns; the handler's call ends with `StoppedByShutdown` (or, had the
/// store answered first, with its `SessionStoreError`), the touching call
/// with a typed error that says it never ran; both workers are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_shut_down_while_store_operations_hang_stops_cleanly() {
    need_redis!();
    let dir = Dir::new("shutdown");
    let (redis, pool) = pool_on_fresh_redis(Duration::from_secs(4), 2).await;
    let mut pids = Vec::new();
    for _ in 0..8 {
        let a = pool.execute("run", json!({"ops": []})).await.unwrap();
        let pid = a["pid"].as_u64().unwrap();
        if !pids.contains(&pid) {
            pids.push(pid);
        }
    }
    let handler = spawn_in_session(
        &pool,
        "h",
        signal_then_wait(&dir, json!([]), json!([{"op": "get", "key": "k"}])),
    );
    handler_started(&dir, "the handler runs").await;
    redis.signal("STOP");
    std::fs::write(dir.path("go"), b"").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let touching = spawn_in_session(&pool, "t", json!({"ops": []}));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let shut = tokio::time::timeout(GUARD, pool.shutdown()).await;
    let handler = tokio::time::timeout(GUARD, handler).await;
    let touching = tokio::time::timeout(GUARD, touching).await;
    redis.signal("CONT");
    shut.expect("shutdown returns").unwrap();
    match handler.unwrap().unwrap() {
        Err(PoolError::StoppedByShutdown { .. }) => {}
        Ok(a) => assert_eq!(results(&a)[2]["caught"], "SessionStoreError", "{a}"),
        Err(e) => panic!("the handler's call: {e:?}"),
    }
    let e = touching.unwrap().unwrap().unwrap_err();
    assert!(
        matches!(e, PoolError::Session { .. } | PoolError::ShutDown) && e.never_ran(),
        "{e:?}"
    );
    workers_gone(pids).await;
}

/// crates/core Pool::shutdown: "Stops admitting calls"; docs/sessions.md
/// :33-37 a session call "creates its session in the store ... **before**
/// it is routed ... the call fails ... and never runs".
///
/// A session call made to a pool already shut down fails with
/// `ShutDown` (it never ran). It should leave the shared store alone: no
/// session made (and counted in `stats`) for a call that was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_call_to_a_shut_down_pool_makes_no_session() {
    let store = Arc::new(MemoryStore::new());
    let pool = pool_over(store.clone(), 1).await;
    pool.shutdown().await.unwrap();
    let e = pool
        .execute_in_session("late", "run", json!({"ops": []}))
        .await
        .unwrap_err();
    assert!(matches!(e, PoolError::ShutDown), "{e:?}");
    assert!(e.never_ran());
    assert!(
        !store.session_exists("late").await.unwrap(),
        "a refused call made a session"
    );
    assert_eq!(store.stats().await.unwrap().sessions_created, 0);
}

/// The same, with Redis paused: the store cannot answer, yet a pool that
/// is shut down should refuse the call with `ShutDown` (its own state),
/// not wait for the store and fail with the store's timeout as an
/// `Error::Session` (a caller that retries `Session` errors, which say
/// the store is unavailable, would retry on a dead pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_call_to_a_shut_down_pool_is_shut_down_even_with_redis_paused() {
    need_redis!();
    let redis = Redis::start().await;
    let store = redis_store(&redis, HOUR, NEVER).await;
    let pool = pool_over(store.clone(), 1).await;
    pool.shutdown().await.unwrap();
    redis.signal("STOP");
    let r = tokio::time::timeout(
        GUARD,
        pool.execute_in_session("late", "run", json!({"ops": []})),
    )
    .await;
    redis.signal("CONT");
    let e = r.unwrap().unwrap_err();
    assert!(matches!(e, PoolError::ShutDown), "{e:?}");
}

/// docs/sessions.md:36-39 "The store's time counts against the call's
/// deadline"; :253-255 "the store's timeout should be well below it" (here
/// it is not: 3 s against a call of 700 ms); :57-58 "Either way the worker
/// serves on".
///
/// With Redis paused, a handler waits in `ctx.session.get` longer than its
/// call's deadline: the call ends with `CallTimeout` at its deadline. Once
/// Redis is back, session calls through the same pool succeed again (the
/// worker served on, or was replaced), their data intact, and shutting
/// the pool down leaves no worker behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_deadline_ends_inside_a_hung_host_call_leaves_the_pool_serving() {
    need_redis!();
    let dir = Dir::new("deadline");
    let (redis, pool) = pool_on_fresh_redis(Duration::from_secs(3), 1).await;
    let first = pool
        .execute_in_session(
            "d",
            "run",
            json!({"ops": [{"op": "set", "key": "k", "value": "kept"}]}),
        )
        .await
        .unwrap();
    let mut pids = vec![first["pid"].as_u64().unwrap()];
    let call = {
        let pool = pool.clone();
        let args = signal_then_wait(&dir, json!([]), json!([{"op": "get", "key": "k"}]));
        tokio::spawn(async move {
            pool.execute_with(
                "run",
                args,
                snakepit_core::CallOptions::default()
                    .session("d")
                    .timeout(Duration::from_millis(1500)),
            )
            .await
        })
    };
    handler_started(&dir, "the handler runs").await;
    redis.signal("STOP");
    std::fs::write(dir.path("go"), b"").unwrap();
    let r = tokio::time::timeout(GUARD, call).await;
    redis.signal("CONT");
    let e = r.unwrap().unwrap().unwrap_err();
    assert!(matches!(e, PoolError::CallTimeout { .. }), "{e:?}");
    serving(redis.port).await;
    let mut ok = None;
    for _ in 0..3 {
        // The first may meet the worker still finishing the abandoned call.
        match tokio::time::timeout(
            GUARD,
            pool.execute_in_session("d", "run", json!({"ops": [{"op": "get", "key": "k"}]})),
        )
        .await
        .unwrap()
        {
            Ok(a) => {
                ok = Some(a);
                break;
            }
            Err(e) => {
                eprintln!("after the timeout: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    let a = ok.expect("the pool serves session calls again");
    assert_eq!(results(&a)[0], json!({"value": "kept"}), "{a}");
    pids.push(a["pid"].as_u64().unwrap());
    pool.shutdown().await.unwrap();
    workers_gone(pids).await;
}

/// docs/sessions.md:83-85 "every read or write of a session ... extends
/// its life by its TTL" (the session's own, `ttl_ms`, not the store's
/// default); :158-159 one Redis server shared by several hosts.
///
/// Two hosts whose stores have different default TTLs (1 h and 1.2 s)
/// serve the same sessions through their pools: a session made on the
/// long host and used through the short host's pool keeps its hour; one
/// made on the short host and then used through the long host's pool
/// keeps its 1.2 s and expires once left alone, its expiry reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_with_different_default_ttls_slide_each_session_by_its_own_ttl() {
    need_redis!();
    let redis = Redis::start().await;
    let long = redis_store(&redis, HOUR, OFTEN).await;
    let short = redis_store(&redis, Duration::from_millis(1200), OFTEN).await;
    let ends = common::record_ends(&*long);
    let short_ends = common::record_ends(&*short);
    let (pl, ps) = (
        pool_over(long.clone(), 1).await,
        pool_over(short.clone(), 1).await,
    );
    let set = |v: &str| json!({"ops": [{"op": "set", "key": "k", "value": v}]});
    for (pool, id, v) in [
        (&pl, "made_long", "l"),
        (&ps, "made_short", "s"),
        (&ps, "made_long", "l2"),
        (&pl, "made_short", "s2"),
    ] {
        pool.execute_in_session(id, "run", set(v)).await.unwrap();
    }
    assert_eq!(short.get_session("made_long").await.unwrap().ttl(), HOUR);
    assert_eq!(
        long.get_session("made_short").await.unwrap().ttl(),
        Duration::from_millis(1200)
    );
    until(15, "the short session expires", || async {
        !long.session_exists("made_short").await.unwrap()
    })
    .await;
    assert!(long.session_exists("made_long").await.unwrap());
    until(15, "its expiry is reported by one host", || async {
        ends.lock().unwrap().len() + short_ends.lock().unwrap().len() == 1
    })
    .await;
    let mut all = ends.lock().unwrap().clone();
    all.extend(short_ends.lock().unwrap().iter().cloned());
    assert_eq!(all, vec![("made_short".to_string(), EndReason::Expired)]);
    pl.shutdown().await.unwrap();
    ps.shutdown().await.unwrap();
}

/// docs/sessions.md:179-186: "each host's sweep (every 30 s,
/// `sweep_interval`; ...) finds expired ids in `idx`, removes them and
/// tells its listeners (each expiry is reported to one host only ...)";
/// :59-60 "When the store removes a session (it expired, or
/// `delete_session`), the pool forgets the session's worker affinity".
/// Only a failed `delete_session` is documented as possibly unreported.
///
/// 40 sessions of 1 s; Redis is paused (SIGSTOP) across their expiry while
/// two hosts sweep every 100 ms with a 500 ms timeout, so their sweeps
/// time out with their scripts sent; then Redis resumes. Every expiry
/// must still be reported by one host: `stats` counts 40 expired, and the
/// listeners must have heard 40.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiries_swept_by_a_sweep_that_timed_out_are_still_reported() {
    need_redis!();
    const N: usize = 40;
    let redis = Redis::start().await;
    let sweeping = || timed_store(&redis, Duration::from_millis(500), OFTEN);
    let (a, b) = (sweeping().await, sweeping().await);
    let heard: Arc<Mutex<Vec<String>>> = Arc::default();
    for store in [&a, &b] {
        let sink = heard.clone();
        store.on_session_end(Arc::new(move |id, _| {
            sink.lock().unwrap().push(id.to_owned());
        }));
    }
    for i in 0..N {
        a.create_session(&format!("e{i}"), Some(Duration::from_secs(1)))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.signal("STOP");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    redis.signal("CONT");
    serving(redis.port).await;
    until(15, "the server counts every expiry", || async {
        matches!(a.stats().await, Ok(s) if s.sessions_expired == N as u64)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await; // more sweeps
    let mut heard = heard.lock().unwrap().clone();
    heard.sort();
    heard.dedup();
    assert_eq!(
        heard.len(),
        N,
        "Redis counted {N} expiries, the hosts' listeners heard {}",
        heard.len()
    );
}

/// docs/sessions.md, the sweep: "`cleanup_expired()` returns how many
/// expiries it reported, including those it took over from a sweep that
/// timed out; `stats()` counts each expiry once"; "An id used again before
/// a sweep saw its expiry ... has that expiry reported and counted by the
/// host that uses it, first (also through `rep`: if that operation times
/// out, a sweep reports it)".
///
/// Six sessions of 100 ms expire unswept. With Redis paused, an
/// `ensure_session` of one of them and then a `cleanup_expired` time out
/// with their scripts sent; Redis runs both once resumed: six expiries
/// counted, none reported. Once their claims have passed, a
/// `cleanup_expired` reports the six and returns 6, the next returns 0,
/// and `stats` still counts six.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleanup_reports_and_counts_the_expiries_timed_out_operations_left() {
    need_redis!();
    let redis = Redis::start().await;
    let store = timed_store(&redis, Duration::from_millis(500), NEVER).await;
    let ends = common::record_ends(&*store);
    // Their scripts loaded: a script sent to a paused server runs once it
    // resumes only if the server has it.
    store.ensure_session("loaded").await.unwrap();
    assert_eq!(store.cleanup_expired().await.unwrap(), 0);
    let ids: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
    for id in &ids {
        store
            .create_session(id, Some(Duration::from_millis(100)))
            .await
            .unwrap();
    }
    until(15, "the sessions expire", || async {
        !store.list_sessions().await.unwrap().contains(&ids[5])
    })
    .await;
    redis.signal("STOP");
    let ensured = store.ensure_session("t0").await;
    let cleaned = store.cleanup_expired().await;
    redis.signal("CONT");
    assert!(
        matches!(ensured, Err(snakepit_session::Error::Timeout { .. })),
        "{ensured:?}"
    );
    assert!(
        matches!(cleaned, Err(snakepit_session::Error::Timeout { .. })),
        "{cleaned:?}"
    );
    serving(redis.port).await;
    until(15, "Redis ran the scripts that timed out", || async {
        matches!(store.stats().await, Ok(s) if s.sessions_expired == 6)
    })
    .await;
    assert!(store.session_exists("t0").await.unwrap());
    let early = ends.lock().unwrap().clone();
    assert!(early.is_empty(), "reported before: {early:?}");
    let reported = AtomicU64::new(0);
    until(15, "a cleanup takes them over", || async {
        let n = store.cleanup_expired().await.unwrap() as u64;
        reported.store(n, Ordering::Relaxed);
        n > 0
    })
    .await;
    assert_eq!(reported.load(Ordering::Relaxed), 6);
    assert_eq!(store.cleanup_expired().await.unwrap(), 0);
    let mut heard = ends.lock().unwrap().clone();
    heard.sort_by(|a, b| a.0.cmp(&b.0));
    let expected: Vec<(String, EndReason)> = ids
        .iter()
        .map(|id| (id.clone(), EndReason::Expired))
        .collect();
    assert_eq!(heard, expected);
    assert_eq!(store.stats().await.unwrap().sessions_expired, 6);
}

/// docs/sessions.md:169-176: "`update_session` reads the session and its
/// version, applies your function, and writes back only if the version is
/// unchanged (compare-and-swap) ...; per-key writes bump the version, so
/// an update never erases a concurrent `set`; ... an update never lands on
/// a session deleted and created again since it read it, not even across
/// a restart of the server"; :236 "Sessions live on if Redis persists them
/// (RDB or AOF)".
///
/// RDB: the session is saved at version 2, then written once more
/// (version 3). An `update_session` reads it (version 3) and, while its
/// function runs, Redis is killed and started again from the snapshot
/// (version 2); the store is used again and a `set` of a new key `b`
/// brings the version back to 3. The update's swap then compares equal
/// and writes the session it read before the restart over the new one:
/// the acknowledged `set` of `b` is erased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_spanning_a_restart_from_a_snapshot_erases_no_set() {
    need_redis!();
    let mut redis = Redis::start().await;
    let store = timed_store(&redis, Duration::from_secs(20), NEVER).await;
    store.create_session("u", None).await.unwrap(); // v1
    store.set("u", "a", json!(1)).await.unwrap(); // v2
    assert_eq!(redis_server::redis_cli(redis.port, &["SAVE"]), "OK");
    store.set("u", "a", json!(2)).await.unwrap(); // v3, not in the snapshot
    let (read_tx, read_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let first = AtomicBool::new(true);
    // On a thread and runtime of its own: its function blocks that thread.
    let update = {
        let store = store.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(store.update_session("u", move |s| {
                if first.swap(false, Ordering::SeqCst) {
                    read_tx.send(()).unwrap();
                    let _ = go_rx.lock().unwrap().recv_timeout(GUARD);
                }
                s.metadata.insert("updated".into(), json!(true));
            }))
        })
    };
    tokio::task::spawn_blocking(move || read_rx.recv_timeout(GUARD).unwrap())
        .await
        .unwrap();
    redis.kill();
    redis.run().await;
    serving(redis.port).await;
    // The store reconnects (a refused first attempt is retried).
    let mut back = false;
    for _ in 0..3 {
        if store.session_exists("u").await.is_ok() {
            back = true;
            break;
        }
    }
    assert!(back, "the store serves again");
    assert_eq!(
        store.get("u", "a").await.unwrap(),
        Some(json!(1)),
        "the snapshot"
    );
    store
        .set("u", "b", json!("after the restart"))
        .await
        .unwrap(); // v3 again
    go_tx.send(()).unwrap();
    let updated = tokio::task::spawn_blocking(move || update.join().unwrap())
        .await
        .unwrap();
    let s = store.get_session("u").await.unwrap();
    assert_eq!(
        s.data.get("b"),
        Some(&json!("after the restart")),
        "the update ({:?}) erased the set of `b`: {s:?}",
        updated.map(|u| u.data)
    );
}

/// The cut-off sweep of
/// `expiries_swept_by_a_sweep_that_timed_out_are_still_reported`, without
/// any pause, from volume alone: the store's timeout bounds a whole sweep,
/// which takes expired ids 1,000 per script; a sweep with many to take
/// outlasts the timeout and is cut off while a script it sent runs on the
/// server. (docs/sessions.md:253-255 asks for a
/// timeout "well below" the calls' deadlines: a short one.)
///
/// 100,000 expired sessions in `idx` (their hashes already freed by Redis,
/// as the layout at :158-166 describes; written with `redis-cli --pipe`);
/// a host with a 100 ms timeout sweeps every 50 ms. Every id the server
/// counts as expired must be heard by its listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_longer_than_the_timeout_reports_every_expiry_it_counts() {
    need_redis!();
    const N: usize = 100_000;
    let redis = Redis::start().await;
    let mut resp = Vec::new();
    for i in 0..N {
        let member = format!("bulk-{i}");
        let score = (1_000_000 + i).to_string();
        resp.extend_from_slice(
            format!(
                "*4\r\n$4\r\nZADD\r\n$12\r\nsnakepit:idx\r\n${}\r\n{score}\r\n${}\r\n{member}\r\n",
                score.len(),
                member.len()
            )
            .as_bytes(),
        );
    }
    {
        use std::io::Write;
        #[allow(clippy::disallowed_methods)] // the Redis command-line client, not a worker
        let mut cli = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "--pipe"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        cli.stdin.take().unwrap().write_all(&resp).unwrap();
        assert!(cli.wait().unwrap().success());
    }
    assert_eq!(
        redis_server::redis_cli(redis.port, &["ZCARD", "snakepit:idx"]),
        N.to_string()
    );
    let store = timed_store(
        &redis,
        Duration::from_millis(100),
        Duration::from_millis(50),
    )
    .await;
    let heard = Arc::new(AtomicU64::new(0));
    let sink = heard.clone();
    store.on_session_end(Arc::new(move |_, _| {
        sink.fetch_add(1, Ordering::Relaxed);
    }));
    until(30, "the index is emptied", || async {
        redis_server::redis_cli(redis.port, &["ZCARD", "snakepit:idx"]) == "0"
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let expired = store.stats().await.unwrap().sessions_expired;
    assert_eq!(expired, N as u64);
    assert_eq!(
        heard.load(Ordering::Relaxed),
        expired,
        "expiries counted by the server but never reported"
    );
}

/// A `MemoryStore` on which another task's `delete_session` of a session
/// whose id starts with `doomed` lands just after each session touch: the
/// race of a deletion with a call, its window made certain. Everything is
/// the real store's.
struct DeletedAfterTouch(MemoryStore);

impl SessionStore for DeletedAfterTouch {
    async fn create_session(
        &self,
        id: &str,
        ttl: Option<Duration>,
    ) -> snakepit_session::Result<snakepit_session::Session> {
        self.0.create_session(id, ttl).await
    }
    async fn ensure_session(&self, id: &str) -> snakepit_session::Result<()> {
        self.0.ensure_session(id).await?;
        if id.starts_with("doomed") {
            assert!(self.0.delete_session(id).await?);
        }
        Ok(())
    }
    async fn get_session(&self, id: &str) -> snakepit_session::Result<snakepit_session::Session> {
        self.0.get_session(id).await
    }
    async fn update_session<F>(
        &self,
        id: &str,
        f: F,
    ) -> snakepit_session::Result<snakepit_session::Session>
    where
        F: FnMut(&mut snakepit_session::Session) + Send,
    {
        self.0.update_session(id, f).await
    }
    async fn delete_session(&self, id: &str) -> snakepit_session::Result<bool> {
        self.0.delete_session(id).await
    }
    async fn session_exists(&self, id: &str) -> snakepit_session::Result<bool> {
        self.0.session_exists(id).await
    }
    async fn list_sessions(&self) -> snakepit_session::Result<Vec<String>> {
        self.0.list_sessions().await
    }
    async fn stats(&self) -> snakepit_session::Result<snakepit_session::StoreStats> {
        self.0.stats().await
    }
    async fn store_program(
        &self,
        id: &str,
        program_id: &str,
        program: Value,
    ) -> snakepit_session::Result<()> {
        self.0.store_program(id, program_id, program).await
    }
    async fn get_program(&self, id: &str, program_id: &str) -> snakepit_session::Result<Value> {
        self.0.get_program(id, program_id).await
    }
    async fn store_global_program(
        &self,
        program_id: &str,
        program: Value,
    ) -> snakepit_session::Result<()> {
        self.0.store_global_program(program_id, program).await
    }
    async fn get_global_program(&self, program_id: &str) -> snakepit_session::Result<Value> {
        self.0.get_global_program(program_id).await
    }
    async fn cleanup_expired(&self) -> snakepit_session::Result<usize> {
        self.0.cleanup_expired().await
    }
    async fn get(&self, id: &str, key: &str) -> snakepit_session::Result<Option<Value>> {
        self.0.get(id, key).await
    }
    async fn set(&self, id: &str, key: &str, value: Value) -> snakepit_session::Result<()> {
        self.0.set(id, key, value).await
    }
    async fn delete(&self, id: &str, key: &str) -> snakepit_session::Result<bool> {
        self.0.delete(id, key).await
    }
    fn on_session_end(&self, listener: snakepit_session::EndListener) {
        self.0.on_session_end(listener)
    }
    fn on_session_end_while(&self, listener: snakepit_session::EndListenerWhile) {
        self.0.on_session_end_while(listener)
    }
}

/// docs/sessions.md:59-60 "When the store removes a session (it expired,
/// or `delete_session`), the pool forgets the session's worker affinity";
/// :289 "`delete_session` | removed | dropped at once (on the host that
/// deleted it ...)".
///
/// A `delete_session` on the pool's own store lands between a call's
/// session touch and its routing. The handler finds its session gone (a
/// gone type), and once the call is over the session no longer exists: the
/// pool keeps no affinity record for it (`Stats::sessions`), not even one
/// its routing made after the deletion was reported (which would live on
/// for `session_ttl` and count against `max_sessions`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_between_touch_and_routing_leaves_no_affinity() {
    let store = Arc::new(DeletedAfterTouch(MemoryStore::new()));
    let ends = common::record_ends(&*store);
    let pool = pool_over(store.clone(), 1).await;
    let answer = pool
        .execute_in_session(
            "doomed",
            "run",
            json!({"ops": [{"op": "set", "key": "k", "value": 1}]}),
        )
        .await
        .unwrap();
    assert!(gone(&results(&answer)[0]), "{answer}");
    assert_eq!(
        *ends.lock().unwrap(),
        vec![("doomed".to_string(), EndReason::Deleted)]
    );
    assert!(!store.session_exists("doomed").await.unwrap());
    assert_eq!(
        pool.stats().sessions,
        0,
        "an affinity record for a deleted session"
    );
    pool.shutdown().await.unwrap();
}

/// docs/sessions.md:217-223: "The connection dropped while idle ...: the
/// store speaks RESP3 ..., over which the closing reaches it at once, and
/// it opens a new connection before the next operation, which succeeds";
/// :226-236 "succeed again as soon as it is back ... the first one after
/// Redis returns does not fail with the refusal of a reconnection tried
/// while it was down".
///
/// The reconnection the store tries at once when its idle connection is
/// closed can fail otherwise than by a refused connection: here Redis is
/// full (`maxclients`) and answers it with an error. Redis then has room
/// again, and a second later the store is used: the operation succeeds,
/// on a fresh connection, not failing with the error of that old
/// reconnection attempt. (The same stale error came, intermittently, after
/// a plain SIGKILL and restart of Redis: the reconnection met the dying
/// server's socket, "Connection reset by peer".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_operation_after_a_failed_background_reconnection_succeeds() {
    need_redis!();
    let redis = Redis::start().await;
    let store = redis_store(&redis, HOUR, NEVER).await;
    store.set("idle", "k", json!(1)).await.unwrap_err(); // no session: gone
    store.ensure_session("idle").await.unwrap();
    store.set("idle", "k", json!(1)).await.unwrap();
    // Another client holds the last slot once `maxclients` is 1.
    let blocker = tokio::net::TcpStream::connect(("127.0.0.1", redis.port))
        .await
        .unwrap();
    let list = redis_server::redis_cli(redis.port, &["CLIENT", "LIST"]);
    let store_id = list
        .lines()
        .find(|l| l.contains("resp=3"))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .unwrap_or_else(|| panic!("the store's connection: {list}"))
        .to_owned();
    // One session of redis-cli: Redis becomes full (`maxclients` 1, below
    // the clients it has), then closes the store's idle connection; the
    // store's immediate reconnection is turned away.
    {
        use std::io::Write;
        #[allow(clippy::disallowed_methods)] // the Redis command-line client, not a worker
        let mut cli = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        write!(
            cli.stdin.take().unwrap(),
            "CONFIG SET maxclients 1\nCLIENT KILL ID {store_id}\n"
        )
        .unwrap();
        let out = cli.wait_with_output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n1\n", "{out:?}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(blocker);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        redis_server::redis_cli(redis.port, &["CONFIG", "SET", "maxclients", "10000"]),
        "OK"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Redis has had room for a second: the next operation succeeds.
    let r = store.get("idle", "k").await;
    assert_eq!(r.as_ref().ok(), Some(&Some(json!(1))), "{r:?}");
}
