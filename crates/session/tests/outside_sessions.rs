//! An outside tester's audit of docs/sessions.md: the promises no other
//! test of this crate shows (or shows only weakly), against real Python
//! workers and, with the feature `redis`, a real `redis-server` on
//! 127.0.0.1 (started and killed by each test).
//!
//! - Listeners: "One that panics is logged";
//! - program helpers: "What could not be recorded is logged";
//! - "The default TTL is one hour (`default_ttl` on either builder)", for
//!   the Redis store's sessions themselves (the other suites read it from
//!   the builder's `Debug`);
//! - "The URL is not logged or printed";
//! - `Backend` for a Redis "refusing" (a read-only replica): the store, and
//!   a session call through a pool, which never runs;
//! - "every operation, reconnecting included, gives up after the store's
//!   timeout ... with `Error::Timeout`": a server killed and back on its
//!   port, but silent;
//! - "What survives what": "the host restarts (Redis store) | kept (in
//!   Redis) | rebuilt by the next call"; "the TTL passes without use |
//!   removed | dropped when the store reports it", with Redis, on the host
//!   whose sweep reports it, and "another host's affinity record for that
//!   session ages out by the pool's `session_ttl`".
//!
//! Redis parts: `cargo test -p snakepit-session --features redis --test
//! outside_sessions`.

mod common;
#[cfg(feature = "redis")]
mod redis_server;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::Pool;
use snakepit_session::{attach, execute_program_command, MemoryStore, SessionStore};
use snakepit_tests::{python, Events, Seen};

/// A directory of this test's own (emptied first).
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "snakepit-outside-sessions-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A worker whose `touch` appends a line to `$OUTSIDE_TOUCHED` (a side
/// effect outside the store: whether a call ran), and whose
/// `create_program` answers a program id no store takes (600 bytes).
const WORKER: &str = r#"
import os
from snakepit_bridge import Worker

worker = Worker()


@worker.command("touch")
def touch(args, ctx):
    with open(os.environ["OUTSIDE_TOUCHED"], "a") as f:
        f.write("ran\n")
    return {"pid": os.getpid(), "session_id": ctx.session_id}


@worker.command("create_program")
def create_program(args, ctx):
    return {"program_id": "p" * 600, "signature": "question -> answer"}


worker.run()
"#;

/// The bridge of [`WORKER`], written to `dir`; its `touch` writes to
/// `dir/touched`.
fn worker_bridge(dir: &Path) -> Bridge {
    let script = dir.join("outside_worker.py");
    std::fs::write(&script, WORKER).unwrap();
    Bridge::python(script)
        .interpreter(python())
        .env("OUTSIDE_TOUCHED", dir.join("touched"))
}

/// A field of a captured event, as `Debug` printed it.
fn field<'a>(event: &'a Seen, name: &str) -> Option<&'a str> {
    event
        .2
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// sessions.md, Listeners: "One that panics is logged, and the others (the
/// pool's among them) are told all the same." A listener that panics on a
/// deletion: an error under `snakepit::session` names the session, and the
/// listener registered after it hears of the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_listener_is_logged_naming_the_session() {
    let events = Events::global();
    let store = MemoryStore::builder()
        .sweep_interval(Duration::from_secs(3600))
        .build();
    store.on_session_end(Arc::new(|id, _| {
        if id == "outside-panicky" {
            panic!("a listener that panics (on purpose)");
        }
    }));
    let heard = Arc::new(Mutex::new(Vec::new()));
    let sink = heard.clone();
    store.on_session_end(Arc::new(move |id, _| {
        sink.lock().unwrap().push(id.to_owned())
    }));
    store.ensure_session("outside-panicky").await.unwrap();
    assert!(store.delete_session("outside-panicky").await.unwrap());
    assert_eq!(*heard.lock().unwrap(), ["outside-panicky"]);
    let logged: Vec<Seen> = events
        .all()
        .into_iter()
        .filter(|e| field(e, "session") == Some("\"outside-panicky\""))
        .collect();
    assert!(
        logged.iter().any(|e| e.0 == "snakepit::session"
            && e.1 == tracing::Level::ERROR
            && field(e, "message").is_some_and(|m| m.contains("panicked"))),
        "the panic is logged: {logged:?}"
    );
}

/// sessions.md, Program helpers: "Once the worker has answered, its result
/// is returned whatever happens to the bookkeeping after it ... What could
/// not be recorded is logged." A worker's `create_program` answers a
/// program id of 600 bytes, which no store keeps: the helper returns the
/// worker's answer, nothing is stored, and a warning under
/// `snakepit::session` names the session, the command and the program.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_program_helper_could_not_record_is_logged() {
    let events = Events::global();
    let dir = temp_dir("unrecorded");
    let store = Arc::new(MemoryStore::new());
    let pool = attach(Pool::builder(worker_bridge(&dir)), store.clone())
        .size(1)
        .start()
        .await
        .unwrap();
    let got = execute_program_command(
        &pool,
        &*store,
        "outside-unrecorded",
        "create_program",
        json!({"signature": "question -> answer"}),
    )
    .await
    .unwrap();
    assert_eq!(got["program_id"], "p".repeat(600));
    let s = store.get_session("outside-unrecorded").await.unwrap();
    assert!(s.programs.is_empty(), "nothing stored: {s:?}");
    let logged: Vec<Seen> = events
        .all()
        .into_iter()
        .filter(|e| field(e, "session") == Some("\"outside-unrecorded\""))
        .collect();
    assert!(
        logged.iter().any(|e| e.0 == "snakepit::session"
            && e.1 == tracing::Level::WARN
            && field(e, "command") == Some("\"create_program\"")
            && field(e, "program").is_some_and(|p| p.contains(&"p".repeat(600)))
            && field(e, "message").is_some_and(|m| m.contains("could not record"))),
        "the unrecorded program is logged: {logged:?}"
    );
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use redis_server::Redis;
    use snakepit_core::{Affinity, CallOptions, Error as PoolError};
    use snakepit_session::{EndReason, Error, RedisStore};
    use snakepit_tests::{eventually, until};

    /// Only turns a hang into a failure of a test.
    const GUARD: Duration = Duration::from_secs(60);

    /// The crate's own session worker (`remember`, `recall`, `sleep`).
    fn session_worker() -> Bridge {
        Bridge::python(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/session_worker.py"),
        )
        .interpreter(python())
    }

    /// sessions.md: "The default TTL is one hour (`default_ttl` on either
    /// builder)." A `RedisStore` built with the defaults gives a session
    /// made by `create_session(id, None)` or by `ensure_session` a TTL of
    /// one hour, which is its expiry in Redis; `default_ttl` changes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redis_session_without_a_ttl_of_its_own_lives_one_hour() {
        let redis = Redis::start().await;
        let store = RedisStore::connect(redis.url()).await.unwrap();
        let s = store.create_session("made", None).await.unwrap();
        assert_eq!(s.ttl_ms, 3_600_000);
        store.ensure_session("ensured").await.unwrap();
        for id in ["made", "ensured"] {
            assert_eq!(store.get_session(id).await.unwrap().ttl_ms, 3_600_000);
            let pttl: i64 =
                redis_server::redis_cli(redis.port, &["PTTL", &format!("snakepit:s:{id}")])
                    .parse()
                    .unwrap();
            assert!(
                pttl > 3_500_000 && pttl <= 3_600_000,
                "{id}: Redis expires it in {pttl} ms"
            );
        }
        let ten_minutes = RedisStore::builder(redis.url())
            .prefix("ten:")
            .default_ttl(Duration::from_secs(600))
            .connect()
            .await
            .unwrap();
        ten_minutes.ensure_session("short").await.unwrap();
        assert_eq!(
            ten_minutes.get_session("short").await.unwrap().ttl_ms,
            600_000
        );
    }

    /// sessions.md, Connecting: "The URL is not logged or printed (`Debug`
    /// of a store shows its prefix, TTL and timeout only)". A store on a
    /// server with a password (percent-encoded in the URL) goes through
    /// what makes a store talk: use, a pause (timeouts, a fresh connection
    /// in the background), the server killed (failed sweeps, refused
    /// reconnections), and a connect with a wrong password. No `tracing`
    /// event and no error text holds the password or the URL; the store
    /// did log meanwhile (its failed sweeps), so the check saw something.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_url_and_its_password_are_never_logged_or_printed() {
        let events = Events::global();
        let password = "Outs1de@pass:w/rd";
        let encoded = "Outs1de%40pass%3Aw%2Frd";
        let mut redis = Redis::start_with(&["--requirepass", password], false).await;
        let url = format!("redis://:{encoded}@127.0.0.1:{}/", redis.port);
        let timeout = Duration::from_millis(300);
        let store = RedisStore::builder(&url)
            .prefix("outside-url:")
            .timeout(timeout)
            .sweep_interval(Duration::from_millis(50))
            .connect()
            .await
            .unwrap();
        let mut texts = vec![format!("{store:?}")];
        store.ensure_session("u").await.unwrap();
        store.set("u", "k", json!(1)).await.unwrap();
        redis.signal("STOP");
        for _ in 0..3 {
            if let Err(e) = store.get("u", "k").await {
                texts.push(format!("{e} {e:?}"));
            }
        }
        redis.signal("CONT");
        until(15, "the store answers after SIGCONT", || async {
            store.get("u", "k").await.is_ok()
        })
        .await;
        redis.kill();
        for _ in 0..5 {
            if let Err(e) = store.get("u", "k").await {
                texts.push(format!("{e} {e:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        redis.run().await;
        let wrong = format!("redis://:wrong{encoded}@127.0.0.1:{}/", redis.port);
        if let Err(e) = RedisStore::builder(&wrong).timeout(timeout).connect().await {
            texts.push(format!("{e} {e:?}"));
        }
        assert!(texts.len() > 5, "errors were seen: {texts:?}");
        let all = events.all();
        assert!(
            all.iter()
                .any(|e| field(e, "message")
                    .is_some_and(|m| m.contains("redis session sweep failed"))),
            "the store logged its failed sweeps"
        );
        for e in &all {
            for (_, value) in &e.2 {
                texts.push(value.clone());
            }
        }
        for text in &texts {
            for secret in [password, encoded, "Outs1de", url.as_str()] {
                assert!(!text.contains(secret), "{secret} shown in: {text}");
            }
        }
        drop(store);
    }

    /// sessions.md, Errors: "`Backend` (Redis unreachable or refusing; the
    /// text names the operation)"; "If the store fails (Redis down), the
    /// call fails with `snakepit_core::Error::Session` and never runs". A
    /// store pointed at a read-only replica (a server that takes reads and
    /// refuses writes): each write is `Backend` naming its operation and
    /// the server's reason, reads still work; through a pool a session call
    /// fails with `Error::Session` and its handler never runs (it leaves a
    /// mark when it does: a call outside a session does).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redis_that_refuses_writes_is_a_backend_error_and_session_calls_never_run() {
        let nobody = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port()
            .to_string();
        let redis = Redis::start_with(&["--replicaof", "127.0.0.1", &nobody], false).await;
        let store = Arc::new(
            RedisStore::builder(redis.url())
                .timeout(Duration::from_secs(10))
                .connect()
                .await
                .unwrap(),
        );
        let refused = |op: &str, r: Result<(), Error>| match r {
            Err(Error::Backend(m)) => {
                assert!(m.contains(&format!("`{op}`")), "names {op}: {m}");
                assert!(
                    m.to_lowercase().contains("read only replica"),
                    "the server's reason: {m}"
                );
            }
            other => panic!("{op}: expected Backend, got {other:?}"),
        };
        refused("ensure_session", store.ensure_session("r").await.map(drop));
        refused(
            "create_session",
            store.create_session("r", None).await.map(drop),
        );
        refused(
            "store_global_program",
            store.store_global_program("g", json!(1)).await,
        );
        assert!(!store.session_exists("r").await.unwrap(), "reads work");

        let dir = temp_dir("refusing");
        let pool = attach(Pool::builder(worker_bridge(&dir)), store.clone())
            .size(1)
            .start()
            .await
            .unwrap();
        let err = tokio::time::timeout(GUARD, pool.execute_in_session("r", "touch", json!({})))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(&err, PoolError::Session { session_id, message }
                if session_id == "r" && message.contains("`ensure_session`"))
                && err.never_ran(),
            "{err:?}"
        );
        assert!(!dir.join("touched").exists(), "the handler never ran");
        pool.execute("touch", json!({})).await.unwrap();
        assert!(dir.join("touched").exists(), "the control: it marks");
        pool.shutdown().await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }

    /// sessions.md, When Redis goes away: "Redis paused, overloaded or
    /// unreachable (no answer at all): every operation, reconnecting
    /// included, gives up after the store's timeout ... with
    /// `Error::Timeout` naming the operation and the timeout". The server is
    /// killed (the store's connection drops) and started again on its port,
    /// but paused: the kernel takes the store's new connections and nobody
    /// answers. Every operation returns; the first may fail on the dropped
    /// connection (`Backend`, naming it); each later one waits for a
    /// reconnection that gets no answer and must be the documented
    /// `Timeout`. Once the server runs, the same store works.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn operations_that_reconnect_to_a_silent_server_time_out_as_documented() {
        let mut redis = Redis::start().await;
        let timeout = Duration::from_millis(500);
        let store = RedisStore::builder(redis.url())
            .timeout(timeout)
            .sweep_interval(Duration::from_secs(3600))
            .connect()
            .await
            .unwrap();
        store.ensure_session("s").await.unwrap();
        redis.kill();
        redis.run().await;
        redis.signal("STOP");
        let mut seen = Vec::new();
        for _ in 0..3 {
            for (op, r) in [
                ("get", store.get("s", "k").await.map(drop)),
                ("ensure_session", store.ensure_session("s").await),
                ("stats", store.stats().await.map(drop)),
            ] {
                seen.push((op, r));
            }
        }
        let shown: Vec<String> = seen.iter().map(|(op, r)| format!("{op}: {r:?}")).collect();
        for (i, (op, r)) in seen.iter().enumerate() {
            match r {
                Err(Error::Timeout { operation, after }) => {
                    assert_eq!((operation, after), (op, &timeout), "{shown:#?}");
                }
                // The dropped connection, found by the first operation.
                Err(Error::Backend(m)) if i == 0 => {
                    assert!(m.contains(&format!("`{op}`")), "{m}");
                }
                _ => panic!("operation {i} is not the documented timeout: {shown:#?}"),
            }
        }
        redis.signal("CONT");
        until(15, "the store works again", || async {
            store.ensure_session("s").await.is_ok()
        })
        .await;
    }

    /// sessions.md, When Redis goes away: "A write that timed out or whose
    /// connection dropped may or may not have been applied; it is not
    /// retried for you." A `set` on a paused server times out; once the
    /// server runs again, the write (each `set` bumps the count of writes
    /// that begins the session's version in Redis by one) has landed once
    /// or not at all, never twice, before the store is used again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_timed_out_is_not_retried() {
        let redis = Redis::start().await;
        let timeout = Duration::from_millis(300);
        let store = RedisStore::builder(redis.url())
            .timeout(timeout)
            .sweep_interval(Duration::from_secs(3600))
            .connect()
            .await
            .unwrap();
        store.ensure_session("w").await.unwrap();
        store.set("w", "k", json!(0)).await.unwrap();
        let version = || -> u64 {
            let v = redis_server::redis_cli(redis.port, &["HGET", "snakepit:s:w", "v"]);
            v.split('.').next().unwrap().parse().unwrap()
        };
        let before = version();
        redis.signal("STOP");
        let r = tokio::time::timeout(GUARD, store.set("w", "k", json!(1)))
            .await
            .expect("the write returns");
        redis.signal("CONT");
        assert!(
            matches!(r, Err(Error::Timeout { operation: "set", after }) if after == timeout),
            "{r:?}"
        );
        // Room for a retry to land, had there been one (it would come at
        // once); the server has run what it was sent by then.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = version();
        assert!(
            after == before || after == before + 1,
            "applied at most once: version {before} -> {after}"
        );
    }

    /// sessions.md, What survives what: "`delete_session` | removed |
    /// dropped at once", with the Redis store: the pool's affinity record
    /// for the session is gone when `delete_session` returns, and the
    /// session's next call starts it empty.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deleting_a_redis_session_drops_its_affinity_at_once() {
        let redis = Redis::start().await;
        let store = Arc::new(
            RedisStore::builder(redis.url())
                .timeout(Duration::from_secs(10))
                .connect()
                .await
                .unwrap(),
        );
        let pool = pool_over(store.clone(), 1, Duration::from_secs(3600)).await;
        pool.execute_in_session("gone", "remember", json!({"key": "k", "value": 1}))
            .await
            .unwrap();
        assert_eq!(pool.stats().sessions, 1);
        assert!(store.delete_session("gone").await.unwrap());
        assert_eq!(pool.stats().sessions, 0, "dropped at once");
        let r = pool
            .execute_in_session("gone", "recall", json!({"key": "k"}))
            .await
            .unwrap();
        assert_eq!(r["value"], serde_json::Value::Null, "removed");
        pool.shutdown().await.unwrap();
    }

    /// A pool of `size` session workers over `store`, with the pool's own
    /// affinity records kept `session_ttl`.
    async fn pool_over(store: Arc<RedisStore>, size: usize, session_ttl: Duration) -> Pool {
        attach(Pool::builder(session_worker()), store)
            .size(size)
            .configure(|c| {
                c.health_check_interval = Duration::ZERO;
                c.session_ttl = session_ttl;
            })
            .start()
            .await
            .unwrap()
    }

    /// sessions.md, What survives what: "the TTL passes without use |
    /// removed | dropped when the store reports it", and "each expiry is
    /// reported to one host only: another host's affinity record for that
    /// session ages out by the pool's `session_ttl`". Two hosts on one
    /// Redis use a session of 600 ms; host A sweeps every 50 ms, host B
    /// never during the test. A's sweep reports the expiry and A's pool
    /// drops the session's affinity at once; B hears nothing and keeps its
    /// record until its `session_ttl` (5 s) has passed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redis_expiry_drops_affinity_where_reported_and_ages_out_elsewhere() {
        let redis = Redis::start().await;
        let store = |sweep: Duration| {
            RedisStore::builder(redis.url())
                .default_ttl(Duration::from_millis(600))
                .sweep_interval(sweep)
                .timeout(Duration::from_secs(10))
                .connect()
        };
        let a = Arc::new(store(Duration::from_millis(50)).await.unwrap());
        let b = Arc::new(store(Duration::from_secs(3600)).await.unwrap());
        let heard_a = common::record_ends(&*a);
        let heard_b = common::record_ends(&*b);
        let pool_a = pool_over(a, 1, Duration::from_secs(3600)).await;
        let pool_b = pool_over(b, 1, Duration::from_secs(5)).await;
        pool_a
            .execute_in_session("roam", "remember", json!({"key": "k", "value": 1}))
            .await
            .unwrap();
        pool_b
            .execute_in_session("roam", "recall", json!({"key": "k"}))
            .await
            .unwrap();
        assert_eq!((pool_a.stats().sessions, pool_b.stats().sessions), (1, 1));
        until(15, "host A's sweep reports the expiry", || async {
            !heard_a.lock().unwrap().is_empty()
        })
        .await;
        let b_still = pool_b.stats().sessions;
        assert_eq!(
            *heard_a.lock().unwrap(),
            [("roam".to_string(), EndReason::Expired)]
        );
        assert!(
            eventually(5, || pool_a.stats().sessions == 0).await,
            "A dropped the affinity it was told of"
        );
        assert_eq!(b_still, 1, "B was not told: its record stays");
        assert!(heard_b.lock().unwrap().is_empty(), "reported to one host");
        assert!(
            eventually(20, || pool_b.stats().sessions == 0).await,
            "B's record aged out by its session_ttl"
        );
        pool_a.shutdown().await.unwrap();
        pool_b.shutdown().await.unwrap();
    }

    /// sessions.md, What survives what: "the host restarts (Redis store) |
    /// kept (in Redis) | rebuilt by the next call". A host (store and pool)
    /// writes a session's data and goes away; a new host on the same Redis
    /// starts with no affinity, serves the data, and its next call gives
    /// the session a worker again: while a long call of the session runs
    /// on it, a `FailFast` call of the session finds that worker busy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_host_restart_the_data_is_kept_and_affinity_rebuilt() {
        let redis = Redis::start().await;
        let connect = || async {
            Arc::new(
                RedisStore::builder(redis.url())
                    .timeout(Duration::from_secs(10))
                    .connect()
                    .await
                    .unwrap(),
            )
        };
        let first = pool_over(connect().await, 2, Duration::from_secs(3600)).await;
        first
            .execute_in_session("user", "remember", json!({"key": "k", "value": "kept"}))
            .await
            .unwrap();
        first.shutdown().await.unwrap();
        drop(first);

        let second = pool_over(connect().await, 2, Duration::from_secs(3600)).await;
        assert_eq!(second.stats().sessions, 0, "a new host knows no affinity");
        let r = second
            .execute_in_session("user", "recall", json!({"key": "k"}))
            .await
            .unwrap();
        assert_eq!(r["value"], "kept", "the data survived the host");
        assert_eq!(second.stats().sessions, 1, "rebuilt by the call");
        let pid = r["pid"].clone();
        let busy = {
            let pool = second.clone();
            tokio::spawn(async move {
                pool.execute_in_session("user", "sleep", json!({"seconds": 3}))
                    .await
            })
        };
        until(15, "the session's call runs", || async {
            second.stats().busy == 1
        })
        .await;
        let err = second
            .execute_with(
                "recall",
                json!({"key": "k"}),
                CallOptions::new()
                    .session("user")
                    .affinity(Affinity::FailFast),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, PoolError::WorkerBusy { .. }), "{err}");
        let slept = busy.await.unwrap().unwrap();
        assert_eq!(slept["pid"], pid, "the session's worker ran it");
        second.shutdown().await.unwrap();
    }
}
