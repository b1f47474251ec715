//! An outside tester's audit of docs/sessions.md, "When Redis goes away",
//! the sentences no other test shows (or shows only weakly):
//!
//! > Sessions live on if Redis persists them (RDB or AOF); a Redis without
//! > persistence comes back empty, and `ensure_session` (every session call
//! > through the pool) creates them afresh. The scripts are loaded again
//! > into the new server by themselves.
//!
//! Already shown elsewhere: AOF with `appendfsync always` keeps data,
//! programs and metadata (redteam_sessions_doc.rs); a few operations work
//! after a restart of a Redis without persistence (redis_restart.rs);
//! `ensure_session` recreates a session lost that way (review_session.rs).
//! Not shown before this file: RDB at all; AOF as configured by default
//! (`appendfsync everysec`); that a session's remaining TTL survives the
//! restart (neither lost, making it immortal, nor reset); that every one of
//! the store's Lua scripts works against a server that has none of them
//! (after a restart and after `SCRIPT FLUSH`), the server's own script
//! cache showing it had none and has them again; that the session a pool
//! call recreates is a fresh one (new creation time, the default TTL, no
//! data of the lost one).
//!
//! Each test starts its own `redis-server` on 127.0.0.1 (tests/redis_server)
//! with `--dir` a temporary directory of its own, SIGKILLs it and starts it
//! again on the same port with the same directory, against real Python
//! workers (tests/workers/session_worker.py).
//!
//! `cargo test -p snakepit-session --features redis --test
//! outside_redis_persistence`.
#![cfg(feature = "redis")]

mod common;
mod redis_server;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_server::redis_cli;
use redis_server::Redis;
use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::Pool;
use snakepit_session::{attach, EndReason, RedisStore, Session, SessionStore, StoreStats};
use snakepit_tests::{python, until};

/// The store's operation timeout: short, so that nothing waits long on a
/// dead port.
const TIMEOUT: Duration = Duration::from_secs(1);

/// The TTL of the session whose expiry must survive the restart.
const SHORT_TTL: Duration = Duration::from_secs(4);

/// The store's default TTL (the builder's default, one hour, said aloud).
const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// How many Lua scripts the store runs (see `exercise_every_script`).
const SCRIPTS: u64 = 11;

/// Only turns a hang into a failure of this test.
const GUARD: Duration = Duration::from_secs(60);

/// A sweep that reports expiries quickly.
const OFTEN: Duration = Duration::from_millis(100);

/// A sweep that does not run during a test.
const NEVER: Duration = Duration::from_secs(3600);

/// One field of `INFO <section>`.
fn info(port: u16, section: &str, field: &str) -> String {
    let text = redis_cli(port, &["INFO", section]);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("INFO {section} has no {field}: {text}"))
        .trim()
        .to_owned()
}

/// How many Lua scripts the server has cached (`SCRIPT LOAD`, `EVAL`).
fn cached_scripts(port: u16) -> u64 {
    info(port, "memory", "number_of_cached_scripts")
        .parse()
        .unwrap()
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

/// The crate's own session worker (`remember`, `recall`, `program`).
fn session_worker() -> Bridge {
    Bridge::python(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/session_worker.py"),
    )
    .interpreter(python())
}

/// A store on `redis` whose sweep runs every `sweep` (often, so that
/// expiries are reported quickly; or never during the test, so that
/// nothing runs a script or reconnects behind the test's back).
async fn store_on(redis: &Redis, sweep: Duration) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::builder(redis.url())
            .timeout(TIMEOUT)
            .default_ttl(DEFAULT_TTL)
            .sweep_interval(sweep)
            .connect()
            .await
            .unwrap(),
    )
}

/// A pool of one session worker, attached to `store`.
async fn pool_over(store: Arc<RedisStore>) -> Pool {
    attach(Pool::builder(session_worker()), store)
        .size(1)
        .configure(|c| c.health_check_interval = Duration::ZERO)
        .start()
        .await
        .unwrap()
}

/// What was written before the restart.
struct Written {
    /// `user` as the store gave it last (TTL one hour).
    user: Session,
    stats: StoreStats,
    /// Taken just after the last use of `short` (TTL `SHORT_TTL`) returned:
    /// its expiry in the server is at most `SHORT_TTL` after this.
    short_touched: Instant,
}

/// Writes through the pool (a worker's `ctx.session.set`) and through the
/// store: data, a program, metadata, a global program; and a session
/// `short` of `SHORT_TTL`, used last.
async fn write(store: &RedisStore, pool: &Pool) -> Written {
    pool.execute_in_session(
        "user",
        "remember",
        json!({"key": "from_worker", "value": {"n": [1, 2]}}),
    )
    .await
    .unwrap();
    store
        .set("user", "k", json!({"kept": "ü ✓"}))
        .await
        .unwrap();
    store
        .store_program("user", "prog", json!({"signature": "question -> answer"}))
        .await
        .unwrap();
    store
        .update_session("user", |s| {
            s.metadata.insert("owner".into(), json!("alice"));
        })
        .await
        .unwrap();
    store
        .store_global_program("shared", json!({"v": 1}))
        .await
        .unwrap();
    let user = store.get_session("user").await.unwrap();
    store
        .create_session("short", Some(SHORT_TTL))
        .await
        .unwrap();
    store.set("short", "k", json!(1)).await.unwrap();
    let short_touched = Instant::now();
    let stats = store.stats().await.unwrap(); // touches no session
    Written {
        user,
        stats,
        short_touched,
    }
}

/// Runs every operation of the store, each of its Lua scripts at least
/// once (`GET`, `GET_FIELD`, `SET_FIELD`, `DEL_FIELD`, `REPLACE`, `CREATE`,
/// `ENSURE`, `DELETE`, `CLEANUP`, `STATS`, `LIST`), on session `id`
/// (which exists) and a new session of its own; each must succeed.
async fn exercise_every_script(store: &RedisStore, id: &str) {
    let s = store.get_session(id).await.unwrap(); // GET
    assert_eq!(s.id, id);
    store.set(id, "script_k", json!([1, "a"])).await.unwrap(); // SET_FIELD
    assert_eq!(
        store.get(id, "script_k").await.unwrap(), // GET_FIELD
        Some(json!([1, "a"]))
    );
    assert!(store.delete(id, "script_k").await.unwrap()); // DEL_FIELD
    store
        .update_session(id, |s| {
            s.metadata.insert("scripts".into(), json!(true)); // REPLACE
        })
        .await
        .unwrap();
    let fresh = format!("{id}_script_probe");
    store.create_session(&fresh, None).await.unwrap(); // CREATE
    store.ensure_session(&fresh).await.unwrap(); // ENSURE
    assert!(store
        .list_sessions() // LIST
        .await
        .unwrap()
        .contains(&fresh));
    assert!(store.delete_session(&fresh).await.unwrap()); // DELETE
    store.cleanup_expired().await.unwrap(); // CLEANUP
    store.stats().await.unwrap(); // STATS
    assert_eq!(
        store.get_session(id).await.unwrap().metadata["scripts"],
        json!(true)
    );
}

/// After the server was restarted with what it persisted: the same store
/// and pool, not rebuilt, serve everything written before; `short` lives
/// out the rest of its TTL and then expires (and this handle's sweep
/// reports it); the scripts, none of which the new server has, work.
async fn check_restarted(redis: &Redis, store: &RedisStore, pool: &Pool, before: Written) {
    let ends = common::record_ends(store);
    serving(redis.port).await;
    // What the server loaded, before the store touches anything.
    // (The sweep, every 100 ms, may have loaded its own two by now: the
    // sessions' and the global programs'.)
    assert!(
        cached_scripts(redis.port) <= 2,
        "a new server has none of the store's scripts: {}",
        cached_scripts(redis.port)
    );
    let exists = redis_cli(redis.port, &["EXISTS", "snakepit:s:user"]);
    assert_eq!(exists, "1", "the server loaded `user` from disk");
    // `since` is taken before the PTTL (so the expiry is at most `SHORT_TTL
    // - since` away), `late` after the EXISTS (so it was not yet due).
    let since = before.short_touched.elapsed();
    let pttl: i64 = redis_cli(redis.port, &["PTTL", "snakepit:s:short"])
        .parse()
        .unwrap();
    let short_exists = redis_cli(redis.port, &["EXISTS", "snakepit:s:short"]);
    let late = before.short_touched.elapsed();
    if late + Duration::from_millis(500) < SHORT_TTL {
        assert_eq!(
            short_exists, "1",
            "`short` (TTL {SHORT_TTL:?}, used {late:?} ago) lives on"
        );
        let left = (SHORT_TTL - since).as_millis() as i64;
        assert!(
            pttl > 0 && pttl <= left + 1,
            "`short`, used {since:?} ago with a TTL of {SHORT_TTL:?}, expires in \
             {pttl} ms (-1: never; at most {left} ms expected)"
        );
    }

    // The same store, once Redis answers again.
    until(15, "the same store reads again", || async {
        store.session_exists("user").await.is_ok()
    })
    .await;
    let user = store.get_session("user").await.unwrap();
    assert_eq!(user.created_at_ms, before.user.created_at_ms);
    assert_eq!(user.ttl_ms, DEFAULT_TTL.as_millis() as u64);
    assert_eq!(user.ttl_ms, before.user.ttl_ms);
    assert_eq!(user.data, before.user.data);
    assert_eq!(user.programs, before.user.programs);
    assert_eq!(user.metadata, before.user.metadata);
    assert_eq!(user.data["k"], json!({"kept": "ü ✓"}));
    assert_eq!(user.data["from_worker"], json!({"n": [1, 2]}));
    assert_eq!(
        store.get_program("user", "prog").await.unwrap(),
        json!({"signature": "question -> answer"})
    );
    assert_eq!(
        store.get_global_program("shared").await.unwrap(),
        json!({"v": 1})
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.sessions_created, before.stats.sessions_created);
    assert_eq!(stats.global_programs, 1);
    // The user's session slides again by its full TTL.
    let pttl: i64 = redis_cli(redis.port, &["PTTL", "snakepit:s:user"])
        .parse()
        .unwrap();
    assert!(pttl > 3_500_000 && pttl <= 3_600_000, "{pttl}");

    // Every script works against the new server, which now has them.
    exercise_every_script(store, "user").await;
    assert!(
        cached_scripts(redis.port) >= SCRIPTS,
        "the store's scripts were loaded into the new server: {}",
        cached_scripts(redis.port)
    );

    // The pool, not rebuilt: a worker reads what was written before.
    let r = tokio::time::timeout(
        GUARD,
        pool.execute_in_session("user", "recall", json!({"key": "from_worker"})),
    )
    .await
    .expect("the session call returns")
    .unwrap();
    assert_eq!(r["value"], json!({"n": [1, 2]}));
    let r = pool
        .execute_in_session("user", "recall", json!({"key": "k"}))
        .await
        .unwrap();
    assert_eq!(r["value"], json!({"kept": "ü ✓"}));

    // `short`, never used again, still expires: its TTL was honoured.
    until(15, "`short` expires after the restart", || async {
        !store.session_exists("short").await.unwrap()
    })
    .await;
    assert!(
        before.short_touched.elapsed() + Duration::from_millis(50) >= SHORT_TTL,
        "`short` expired {:?} after its last use, before its TTL of {SHORT_TTL:?}",
        before.short_touched.elapsed()
    );
    until(15, "the sweep reports `short`", || async {
        ends.lock()
            .unwrap()
            .contains(&("short".to_owned(), EndReason::Expired))
    })
    .await;
    assert!(store.get_session("short").await.unwrap_err().is_gone());
    let ends = ends.lock().unwrap().clone();
    assert!(
        ends.iter().all(|(id, _)| id != "user"),
        "`user` did not end: {ends:?}"
    );
    assert!(store.session_exists("user").await.unwrap());
}

/// sessions.md:207-208, "Sessions live on if Redis persists them (RDB or
/// AOF) ... The scripts are loaded again into the new server by
/// themselves." AOF as a user turns it on (`--appendonly yes`, fsync every
/// second): sessions written through the store and through a pool survive
/// a SIGKILL and a restart on the same port with the same directory; the
/// same store and pool read them; a session of 4 s, used just before the
/// kill, is still there after the restart with the rest of its TTL (not
/// made immortal, not reset) and then expires, reported by the sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aof_sessions_survive_a_kill_with_their_ttl_and_the_same_store_reads_them() {
    let mut redis = Redis::start_with(&["--appendonly", "yes"], false).await;
    let store = store_on(&redis, OFTEN).await;
    let pool = pool_over(store.clone()).await;
    let before = write(&store, &pool).await;
    // Everything acknowledged is in the file (page cache): a SIGKILL keeps
    // it. (With `everysec`, Redis may hold writes back up to 2 s while a
    // slow fsync runs; that is Redis's trade-off, not the store's.)
    until(15, "the AOF buffer is written out", || async {
        info(redis.port, "persistence", "aof_buffer_length") == "0"
    })
    .await;
    redis.kill();
    redis.run().await;
    check_restarted(&redis, &store, &pool, before).await;
    pool.shutdown().await.unwrap();
}

/// sessions.md:207-208, "Sessions live on if Redis persists them (RDB or
/// AOF)". RDB (`--save 3600 1`, AOF off): after a `SAVE`, redis-server is
/// SIGKILLed and started again on the same port with the same directory;
/// the same store and pool serve every session, program and global
/// program, the 4 s session keeps the rest of its TTL and expires, and
/// every script works against the new server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rdb_sessions_survive_a_save_and_kill_with_their_ttl_and_the_same_store_reads_them() {
    let mut redis = Redis::start_with(&["--save", "3600 1"], false).await;
    assert_eq!(info(redis.port, "persistence", "aof_enabled"), "0");
    let store = store_on(&redis, OFTEN).await;
    let pool = pool_over(store.clone()).await;
    let before = write(&store, &pool).await;
    assert_eq!(redis_cli(redis.port, &["SAVE"]), "OK");
    redis.kill();
    redis.run().await;
    check_restarted(&redis, &store, &pool, before).await;
    pool.shutdown().await.unwrap();
}

/// sessions.md:210, "The scripts are loaded again into the new server by
/// themselves." The server forgets every script while the store stays
/// connected (`SCRIPT FLUSH`, as after a failover to a replica that never
/// ran them): every store operation, and session calls through a pool
/// (touch and `ctx.session` host calls), still succeed, and the server has
/// the scripts again; twice over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_script_flush_every_operation_and_session_call_works() {
    let redis = Redis::start().await;
    let store = store_on(&redis, NEVER).await;
    let pool = pool_over(store.clone()).await;
    pool.execute_in_session("user", "remember", json!({"key": "k", "value": 1}))
        .await
        .unwrap();
    exercise_every_script(&store, "user").await;
    assert!(
        cached_scripts(redis.port) >= SCRIPTS,
        "{}",
        cached_scripts(redis.port)
    );
    for round in 0..2 {
        assert_eq!(redis_cli(redis.port, &["SCRIPT", "FLUSH"]), "OK");
        assert_eq!(cached_scripts(redis.port), 0);
        // A pool call first: the touch (`ENSURE`) and the worker's
        // `ctx.session.get/set` (`GET_FIELD`, `SET_FIELD`).
        let r = pool
            .execute_in_session("user", "recall", json!({"key": "k"}))
            .await
            .unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        assert_eq!(r["value"], json!(1 + round));
        pool.execute_in_session("user", "remember", json!({"key": "k", "value": 2 + round}))
            .await
            .unwrap();
        assert_eq!(redis_cli(redis.port, &["SCRIPT", "FLUSH"]), "OK");
        exercise_every_script(&store, "user").await;
        assert!(
            cached_scripts(redis.port) >= SCRIPTS,
            "round {round}: {}",
            cached_scripts(redis.port)
        );
    }
    pool.shutdown().await.unwrap();
}

/// sessions.md:208-210, "a Redis without persistence comes back empty, and
/// `ensure_session` (every session call through the pool) creates them
/// afresh." A session (TTL 10 min, data written by a worker) is lost when
/// a Redis without persistence is SIGKILLed and restarted: the server is
/// empty. A session call through the same pool then succeeds (until Redis
/// answers, calls fail as `Error::Session` and never run), and the session
/// it made is a fresh one: a later creation time, the store's default TTL
/// (not the 10 min of the lost one), none of the lost data. The worker can
/// write and read it again. (The retry tolerates the one call that fails
/// with a stale error after Redis is back: see
/// `the_first_operation_after_redis_is_back_succeeds`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_persistence_a_pool_call_creates_the_lost_session_afresh() {
    let mut redis = Redis::start().await;
    let store = store_on(&redis, OFTEN).await;
    let pool = pool_over(store.clone()).await;
    store
        .create_session("user", Some(Duration::from_secs(600)))
        .await
        .unwrap();
    pool.execute_in_session("user", "remember", json!({"key": "k", "value": "before"}))
        .await
        .unwrap();
    store
        .store_program("user", "prog", json!({"signature": "a -> b"}))
        .await
        .unwrap();
    let before = store.get_session("user").await.unwrap();
    assert_eq!(before.ttl_ms, 600_000);
    assert_eq!(before.data["k"], json!("before"));

    redis.kill();
    let err = tokio::time::timeout(
        GUARD,
        pool.execute_in_session("user", "recall", json!({"key": "k"})),
    )
    .await
    .expect("a session call with Redis down returns")
    .unwrap_err();
    assert!(
        matches!(err, snakepit_core::Error::Session { .. }) && err.never_ran(),
        "{err:?}"
    );
    redis.run().await;
    serving(redis.port).await;
    assert_eq!(
        redis_cli(redis.port, &["DBSIZE"]),
        "0",
        "a Redis without persistence comes back empty"
    );

    let mut failed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let r = loop {
        let r = tokio::time::timeout(
            GUARD,
            pool.execute_in_session("user", "recall", json!({"key": "k"})),
        )
        .await
        .expect("a session call returns");
        match r {
            Ok(r) => break r,
            Err(e) => {
                assert!(
                    matches!(e, snakepit_core::Error::Session { .. }) && e.never_ran(),
                    "only the store's failure, the call never ran: {e:?}"
                );
                assert!(Instant::now() < deadline, "calls keep failing: {failed:?}");
                failed.push(e.to_string());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(r["value"], Value::Null, "the lost session's data is gone");
    let after = store.get_session("user").await.unwrap();
    assert!(
        after.created_at_ms > before.created_at_ms,
        "created afresh: {after:?}"
    );
    assert_eq!(after.ttl_ms, DEFAULT_TTL.as_millis() as u64, "{after:?}");
    assert!(after.data.is_empty(), "{after:?}");
    assert!(after.programs.is_empty(), "{after:?}");
    assert!(after.metadata.is_empty(), "{after:?}");
    let pttl: i64 = redis_cli(redis.port, &["PTTL", "snakepit:s:user"])
        .parse()
        .unwrap();
    assert!(pttl > 3_500_000 && pttl <= 3_600_000, "{pttl}");
    assert!(store
        .list_sessions()
        .await
        .unwrap()
        .contains(&"user".to_owned()));

    pool.execute_in_session("user", "remember", json!({"key": "k", "value": "after"}))
        .await
        .unwrap();
    let r = pool
        .execute_in_session("user", "recall", json!({"key": "k"}))
        .await
        .unwrap();
    assert_eq!(r["value"], json!("after"));
    assert_eq!(store.get("user", "k").await.unwrap(), Some(json!("after")));
    eprintln!("session calls that failed after Redis was back: {failed:?}");
    pool.shutdown().await.unwrap();
}

/// sessions.md:205-207, the sentence before: "Each operation that finds
/// the connection down makes one attempt to reconnect, so operations fail
/// fast while Redis is down and succeed again as soon as it is back." And
/// :208-210, "`ensure_session` (every session call through the pool) creates
/// them afresh". Redis (no persistence) is SIGKILLed; a session call and a
/// store operation fail while it is down, as they should. It is started
/// again, answers `PING`, and a second passes: Redis has been back a
/// while. The next session call through the pool, and then (after the
/// same again) the next store operation, must succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_operation_after_redis_is_back_succeeds() {
    let mut redis = Redis::start().await;
    let store = store_on(&redis, NEVER).await;
    let pool = pool_over(store.clone()).await;
    pool.execute_in_session("user", "remember", json!({"key": "k", "value": 1}))
        .await
        .unwrap();
    let mut first_after_back = Vec::new();

    // Through the pool.
    redis.kill();
    let err = pool
        .execute_in_session("user", "recall", json!({"key": "k"}))
        .await
        .unwrap_err();
    assert!(err.never_ran(), "{err:?}");
    redis.run().await;
    serving(redis.port).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = pool
        .execute_in_session("user", "recall", json!({"key": "k"}))
        .await;
    first_after_back.push((
        "pool session call",
        r.map(|_| ()).map_err(|e| e.to_string()),
    ));

    // The store itself.
    until(15, "the store works again", || async {
        store.ensure_session("user").await.is_ok()
    })
    .await;
    redis.kill();
    assert!(store.get_session("user").await.is_err());
    redis.run().await;
    serving(redis.port).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = store.ensure_session("user").await;
    first_after_back.push(("store ensure_session", r.map_err(|e| e.to_string())));

    pool.shutdown().await.unwrap();
    assert!(
        first_after_back.iter().all(|(_, r)| r.is_ok()),
        "the first operation, 1 s after Redis was back: {first_after_back:?}"
    );
}
