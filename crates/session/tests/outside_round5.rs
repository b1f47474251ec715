//! Round 5 of the outside review of `snakepit-session`.
//!
//! - docs/sessions.md, "What survives what": the session's worker going
//!   away keeps the data and moves the affinity. Shown before for a worker
//!   killed; here for a worker the pool itself replaces (recycled after its
//!   calls, `PoolConfig::recycle_after_calls`), under each `Affinity`, in
//!   both stores.
//! - docs/sessions.md, "When Redis goes away" and "Connecting": an ACL
//!   user switched off (credentials revoked) while the store runs, its
//!   connection dropped: typed `Backend` errors naming the operation and
//!   not the password, then the same store works once the user is back.
//! - docs/sessions.md, "Connecting": a URL naming an ACL user without a
//!   password signs in as that user, never as `default` (fixed here).
//! - docs/sessions.md, `attach`: a float JSON cannot hold, set in a session
//!   under MessagePack, is `InvalidArgument`.
//! - A worker written for the original Elixir Snakepit serves session
//!   calls through the store.

mod common;
#[cfg(feature = "redis")]
mod redis_server;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{Affinity, CallOptions, Pool};
use snakepit_session::{attach, MemoryStore, SessionStore};
use snakepit_tests::python;

fn worker() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/outside_sessions_doc_worker.py")
}

/// A pool of two workers over `store`, each replaced after about
/// `recycle` calls.
async fn recycling_pool<S: SessionStore>(store: Arc<S>, recycle: u64) -> Pool {
    attach(
        Pool::builder(Bridge::python(worker()).interpreter(python())),
        store,
    )
    .size(2)
    .configure(|c| {
        c.sweep_on_start = false;
        c.recycle_after_calls = recycle;
        c.restart_backoff = Duration::from_millis(20);
        c.queue_timeout = Duration::from_secs(30);
    })
    .start()
    .await
    .unwrap()
}

fn pid(r: &Value) -> u64 {
    r["pid"].as_u64().unwrap_or_else(|| panic!("no pid in {r}"))
}

/// A session's calls, one after another, across several recycles of the
/// worker that serves it. Each call, whatever its affinity, runs (a
/// `FailFast` call is not refused with `WorkerBusy` because its worker is
/// being replaced, a `Strict` one does not wait for a worker that is gone),
/// and reads what the first call wrote: the data is on the host. Between
/// two recycles the session stays on one worker.
async fn recycled_workers_keep_the_session<S: SessionStore>(store: Arc<S>) {
    let pool = recycling_pool(store.clone(), 4).await;
    let opts = |affinity| {
        CallOptions::new()
            .session("s")
            .affinity(affinity)
            .timeout(Duration::from_secs(60))
    };
    pool.execute_with(
        "remember",
        json!({"key": "k", "value": {"kept": [1, 2]}}),
        opts(Affinity::Prefer),
    )
    .await
    .unwrap();
    let mut pids = Vec::new();
    for i in 0..24 {
        let affinity = [Affinity::Prefer, Affinity::Strict, Affinity::FailFast][i % 3];
        let r = pool
            .execute_with("recall", json!({"key": "k"}), opts(affinity))
            .await
            .unwrap_or_else(|e| panic!("call {i} ({affinity:?}): {e}"));
        assert_eq!(r["value"], json!({"kept": [1, 2]}), "call {i}: {r}");
        pids.push(pid(&r));
    }
    let distinct: BTreeSet<_> = pids.iter().collect();
    assert!(
        distinct.len() >= 3,
        "25 calls at about 4 a worker ran on at least 3 workers: {pids:?}"
    );
    // A pid, once left, never comes back (a recycled worker is gone), and
    // runs of one pid are at most what the recycle limit allows.
    let mut runs: Vec<(u64, usize)> = Vec::new();
    for p in &pids {
        match runs.last_mut() {
            Some((q, n)) if q == p => *n += 1,
            _ => {
                assert!(runs.iter().all(|(q, _)| q != p), "{p} came back: {pids:?}");
                runs.push((*p, 1));
            }
        }
    }
    assert!(runs.iter().all(|(_, n)| *n <= 5), "{runs:?}");
    assert_eq!(
        store.get("s", "k").await.unwrap(),
        Some(json!({"kept": [1, 2]}))
    );
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_recycled_workers_keep_the_session_and_its_calls_run() {
    recycled_workers_keep_the_session(Arc::new(MemoryStore::new())).await;
}

/// The original Elixir Snakepit's worker of
/// `crates/core/tests/outside_round5_upstream.rs`: no hello, no host calls,
/// started as `python3 SCRIPT --mode pool-worker`.
struct Original;

impl snakepit_core::Adapter for Original {
    fn launch(&self) -> snakepit_core::Launch {
        snakepit_core::Launch::new(python())
            .arg(
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../core/tests/workers/round5_upstream_worker.py"),
            )
            .arg("--mode")
            .arg("pool-worker")
    }
}

/// The original's `execute_in_session` with its Session Store, against a
/// worker written for the original (docs/protocol.md: it "works
/// unchanged"): each session call makes or renews its session in the
/// store before it runs, and keeps its worker; the worker gets the
/// caller's arguments unchanged. Deleting the session in the store ends
/// it; the next call makes it afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_original_worker_serves_session_calls_through_the_store() {
    let store = Arc::new(MemoryStore::new());
    let pool = attach(Pool::builder(Original), store.clone())
        .size(2)
        .configure(|c| c.sweep_on_start = false)
        .start()
        .await
        .unwrap();
    let first = pool
        .execute_in_session("user_123", "echo", json!({"message": "hello"}))
        .await
        .unwrap();
    assert_eq!(first["echoed"], json!({"message": "hello"}), "{first}");
    assert_eq!(
        store.list_sessions().await.unwrap(),
        vec!["user_123".to_owned()]
    );
    let created = store.get_session("user_123").await.unwrap().created_at_ms;
    let pid = |r: &Value| r["pid"].as_u64().unwrap();
    let owner = pid(&pool
        .execute_in_session("user_123", "pid", json!({}))
        .await
        .unwrap());
    for _ in 0..5 {
        let r = pool
            .execute_in_session("user_123", "pid", json!({}))
            .await
            .unwrap();
        assert_eq!(pid(&r), owner, "the session keeps its worker");
    }
    assert!(store.delete_session("user_123").await.unwrap());
    assert!(!store.session_exists("user_123").await.unwrap());
    pool.execute_in_session("user_123", "pid", json!({}))
        .await
        .unwrap();
    assert!(
        store.session_exists("user_123").await.unwrap(),
        "made afresh"
    );
    assert!(store.get_session("user_123").await.unwrap().created_at_ms >= created);
    assert_eq!(store.stats().await.unwrap().sessions_created, 2);
    pool.shutdown().await.unwrap();
}

/// `{"key": <key>, "value": <f64>}`: a float that JSON cannot hold goes to
/// the worker as the float it is under MessagePack (docs/protocol.md,
/// section 3).
struct RememberFloat(&'static str, f64);

impl serde::Serialize for RememberFloat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("key", self.0)?;
        m.serialize_entry("value", &self.1)?;
        m.end()
    }
}

/// docs/sessions.md, `attach`: host-call failures include "`InvalidArgument`
/// (also for a value JSON cannot hold, such as bytes sent under
/// MessagePack ...)". NaN and the infinities are values JSON cannot hold
/// (docs/protocol.md, section 3). Under MessagePack a handler's
/// `ctx.session.set("nan", float("nan"))` must fail that host call with
/// `InvalidArgument` (the handler does not catch it: the call fails with
/// the worker's error) and store nothing; a finite float is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_float_json_cannot_hold_set_in_a_session_is_invalid_argument_not_null() {
    let store = Arc::new(MemoryStore::new());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/session_worker.py");
    let pool = attach(
        Pool::builder(
            Bridge::python(script)
                .interpreter(python())
                .codec(snakepit_core::WireCodec::MsgPack),
        ),
        store.clone(),
    )
    .size(1)
    .start()
    .await
    .unwrap();
    let session = || CallOptions::new().session("floats");
    let kept: Value = pool
        .call("remember", &RememberFloat("finite", 1.5), session())
        .await
        .unwrap();
    assert_eq!(
        store.get("floats", "finite").await.unwrap(),
        Some(json!(1.5)),
        "{kept}"
    );
    for (key, value) in [
        ("nan", f64::NAN),
        ("inf", f64::INFINITY),
        ("-inf", f64::NEG_INFINITY),
    ] {
        let got: Result<Value, _> = pool
            .call("remember", &RememberFloat(key, value), session())
            .await;
        let Err(err) = got else {
            panic!("{key}: stored, though JSON cannot hold it: {got:?}")
        };
        let remote = err.remote().unwrap_or_else(|| panic!("{key}: {err:?}"));
        // The Python bridge's failed reply for a `HostCallError` the
        // handler let through: its type, and the host's type first in the
        // message.
        assert_eq!(
            remote.kind.as_deref(),
            Some("HostCallError"),
            "{key}: {err:?}"
        );
        assert!(
            remote.message.starts_with("InvalidArgument"),
            "{key}: {err:?}"
        );
        assert_eq!(
            store.get("floats", key).await.unwrap(),
            None,
            "{key}: nothing stored"
        );
    }
    pool.shutdown().await.unwrap();
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use redis_server::{redis_cli, Redis};
    use snakepit_session::{Error, RedisStore};

    async fn cli(port: u16, args: &[&str]) -> String {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            redis_cli(port, &args)
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_recycled_workers_keep_the_session_and_its_calls_run() {
        let redis = Redis::start().await;
        let store = RedisStore::builder(redis.url())
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap();
        recycled_workers_keep_the_session(Arc::new(store)).await;
    }

    /// An ACL user's credentials revoked while the store runs
    /// (`ACL SETUSER app off`, its connections killed, as an operator
    /// rotating credentials does): each operation fails within the timeout
    /// with `Backend` naming the operation, never showing the password,
    /// and writes nothing. Once the user is on again the same store (not a
    /// new one) serves every session it had.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoked_acl_user_fails_clearly_then_the_same_store_recovers() {
        let redis = Redis::start().await;
        let port = redis.port;
        let secret = "s3cret-Pw";
        cli(
            port,
            &[
                "ACL",
                "SETUSER",
                "app",
                "on",
                &format!(">{secret}"),
                "~*",
                "&*",
                "+@all",
            ],
        )
        .await;
        let store = RedisStore::builder(format!("redis://app:{secret}@127.0.0.1:{port}/"))
            .timeout(Duration::from_secs(5))
            .sweep_interval(Duration::from_secs(3600))
            .connect()
            .await
            .unwrap();
        store.create_session("s", None).await.unwrap();
        store.set("s", "k", json!("v")).await.unwrap();

        cli(port, &["ACL", "SETUSER", "app", "off"]).await;
        cli(port, &["CLIENT", "KILL", "USER", "app"]).await;
        let keys_before = cli(port, &["DBSIZE"]).await;
        let refused = |op: &str, r: Result<(), Error>| match r {
            Err(Error::Backend(m)) => {
                assert!(m.contains(&format!("`{op}`")), "names {op}: {m}");
                assert!(!m.contains(secret), "{op}: the password is not shown: {m}");
            }
            other => panic!("{op}: expected Backend, got {other:?}"),
        };
        // More than one round: each reconnection is refused again.
        for _ in 0..2 {
            refused("get", store.get("s", "k").await.map(drop));
            refused("set", store.set("s", "k2", json!(1)).await);
            refused(
                "create_session",
                store.create_session("t", None).await.map(drop),
            );
            refused("ensure_session", store.ensure_session("u").await);
            refused("list_sessions", store.list_sessions().await.map(drop));
        }
        assert_eq!(cli(port, &["DBSIZE"]).await, keys_before, "nothing written");

        cli(port, &["ACL", "SETUSER", "app", "on"]).await;
        let mut back = None;
        for _ in 0..3 {
            match store.get("s", "k").await {
                Ok(v) => {
                    back = Some(v);
                    break;
                }
                Err(e) => eprintln!("first attempt after the user is back: {e}"),
            }
        }
        assert_eq!(back, Some(Some(json!("v"))), "the same store serves again");
        store.set("s", "k2", json!(2)).await.unwrap();
        assert_eq!(store.get("s", "k2").await.unwrap(), Some(json!(2)));
        assert_eq!(store.list_sessions().await.unwrap(), vec!["s".to_owned()]);
    }
    /// A URL that names an ACL user without a password
    /// (`redis://app@host/`, for a user made `nopass`, confined to its
    /// prefix) must connect as that user, never as `default`: otherwise the
    /// store would run with `default`'s rights, outside the prefix the
    /// operator confined `app` to. As `app`, a store whose prefix is not
    /// `app`'s is refused (`Backend`, "no permissions"); one whose prefix is
    /// works, and every connection of the store's is `app`'s. A user that
    /// has a password, named without it, is refused at `connect`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_user_named_without_a_password_is_that_user_not_default() {
        let redis = Redis::start().await;
        let port = redis.port;
        cli(
            port,
            &[
                "ACL",
                "SETUSER",
                "app",
                "on",
                "nopass",
                "resetkeys",
                "~tenant_a:*",
                "resetchannels",
                "+@all",
                "-@dangerous",
                "-@admin",
            ],
        )
        .await;
        let url = format!("redis://app@127.0.0.1:{port}/");
        let outside = RedisStore::builder(&url)
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        match outside.ensure_session("s").await {
            Err(Error::Backend(m)) => {
                assert!(m.to_lowercase().contains("no permissions"), "{m}")
            }
            other => panic!("`app` may not write under `snakepit:`, got {other:?}"),
        }
        assert_eq!(cli(port, &["DBSIZE"]).await, "0", "nothing written");
        drop(outside);

        let inside = RedisStore::builder(&url)
            .prefix("tenant_a:")
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        inside.create_session("s", None).await.unwrap();
        inside.set("s", "k", json!(1)).await.unwrap();
        assert_eq!(inside.get("s", "k").await.unwrap(), Some(json!(1)));
        let clients = cli(port, &["CLIENT", "LIST"]).await;
        // Every connection but the one `redis-cli` asks with is the store's.
        let stores: Vec<&str> = clients
            .lines()
            .filter(|l| !l.contains(" cmd=client|list "))
            .collect();
        assert!(!stores.is_empty(), "{clients}");
        for line in stores {
            assert!(
                line.contains(" user=app "),
                "a store connection not app's: {line}"
            );
        }

        // A user that has a password, named without it: refused at
        // `connect`, not let in as `default`.
        cli(
            port,
            &["ACL", "SETUSER", "owner", "on", ">0wner-pw", "~*", "+@all"],
        )
        .await;
        match RedisStore::builder(format!("redis://owner@127.0.0.1:{port}/"))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
        {
            Err(Error::Backend(m)) => assert!(m.contains("WRONGPASS"), "{m}"),
            other => panic!("expected Backend (WRONGPASS), got {other:?}"),
        }
    }
}
