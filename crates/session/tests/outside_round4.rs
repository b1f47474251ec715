//! Round 4 of the outside review of `snakepit-session`: what a user of the
//! public API, its rustdoc and docs/sessions.md is promised, against a
//! store that others share or tamper with.
//!
//! - `stats` counters that something else set to negative integers (which
//!   the store never writes): `Corrupt`, with no expiry lost;
//! - a session's hash missing fields that the store always writes (`v`,
//!   `c`): `Corrupt`, with nothing written (its expiry kept);
//! - an ACL user that may not run scripts, and a server whose memory is
//!   full (`maxmemory` with `noeviction`): typed errors naming the
//!   operation, and the same store works once the server allows it;
//! - an `update_session` function that panics, and many tasks creating one
//!   id at once, in both stores.
#![cfg(feature = "redis")]

mod common;
mod redis_server;

use std::sync::Arc;
use std::time::Duration;

use redis_server::{redis_cli, Redis};
use serde_json::json;
use snakepit_session::{EndReason, Error, MemoryStore, RedisStore, SessionStore};
use snakepit_tests::until;

/// A sweep interval long enough that only `cleanup_expired` reports.
const NEVER: Duration = Duration::from_secs(3600);

/// `redis-cli` off the runtime's threads.
async fn cli(port: u16, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        redis_cli(port, &args)
    })
    .await
    .unwrap()
}

/// A store with a generous timeout and no background sweep.
async fn store(url: &str) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::builder(url)
            .timeout(Duration::from_secs(10))
            .sweep_interval(NEVER)
            .connect()
            .await
            .unwrap(),
    )
}

/// docs/sessions.md: "Something else writing under the prefix cannot make
/// the sweep lose or stall expiries: ... a counter in `stats` that is not
/// an integer, fails each operation that uses it with `Error::Corrupt`
/// naming it, before the operation writes anything". The store only ever
/// counts up from 0, so a negative count is as foreign as text: planted
/// in `reports`, it would number the expiries `-9:<id>`, which the sweep
/// takes for reports it did not write and drops untold. The expiry must
/// instead be reported once the counter is removed; and `stats` must not
/// show a planted `-5` as 2^64 - 5 sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_counters_planted_in_stats_are_corrupt_and_lose_no_expiry() {
    let redis = Redis::start().await;
    let port = redis.port;
    let a = store(&redis.url()).await;
    let heard = common::record_ends(&*a);

    a.create_session("e", Some(Duration::from_millis(100)))
        .await
        .unwrap();
    until(30, "the session expires", || async {
        !a.session_exists("e").await.unwrap()
    })
    .await;
    cli(port, &["HSET", "snakepit:stats", "reports", "-10"]).await;
    let r = a.cleanup_expired().await;
    assert!(
        matches!(&r, Err(Error::Corrupt(m)) if m.contains("reports")),
        "a negative `reports` is corrupt, named: {r:?}"
    );
    assert!(heard.lock().unwrap().is_empty(), "{:?}", heard.lock());
    cli(port, &["HDEL", "snakepit:stats", "reports"]).await;
    until(
        30,
        "the expiry is reported once the counter is gone",
        || async { a.cleanup_expired().await.is_ok() && !heard.lock().unwrap().is_empty() },
    )
    .await;
    assert_eq!(
        *heard.lock().unwrap(),
        vec![("e".to_owned(), EndReason::Expired)]
    );

    cli(port, &["HSET", "snakepit:stats", "created", "-5"]).await;
    let r = a.stats().await;
    assert!(
        matches!(&r, Err(Error::Corrupt(m)) if m.contains("created")),
        "a negative `created` is corrupt, named: {r:?}"
    );
    cli(port, &["HDEL", "snakepit:stats", "created"]).await;
    let stats = a.stats().await.unwrap();
    assert_eq!(stats.sessions_expired, 1, "{stats:?}");
}

/// docs/sessions.md, Errors: "`Corrupt` (stored data that does not
/// parse)"; `update_session` "writes back only if the version is
/// unchanged". A session hash that something else left without its
/// version (`v`) or its creation time (`c`), both of which the store
/// writes in every session, must make `update_session` fail with
/// `Corrupt`, not a `Backend` error of the script, and must write nothing:
/// the hash keeps its fields and its expiry (a write that stopped halfway
/// would leave it without an expiry, alive in Redis for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_hash_missing_its_version_or_creation_time_is_corrupt_and_keeps_its_expiry() {
    let redis = Redis::start().await;
    let port = redis.port;
    let a = store(&redis.url()).await;
    for field in ["c", "v"] {
        let id = format!("missing_{field}");
        let key = format!("snakepit:s:{id}");
        a.create_session(&id, Some(Duration::from_secs(600)))
            .await
            .unwrap();
        a.set(&id, "k", json!("kept")).await.unwrap();
        cli(port, &["HDEL", &key, field]).await;
        let before = cli(port, &["HGETALL", &key]).await;
        let r = a
            .update_session(&id, |s| {
                s.data.insert("k".into(), json!("changed"));
            })
            .await;
        let pttl: i64 = cli(port, &["PTTL", &key]).await.parse().unwrap();
        assert!(
            pttl > 0,
            "`{field}` missing: the hash keeps its expiry: PTTL {pttl} ({r:?})"
        );
        assert!(
            matches!(&r, Err(Error::Corrupt(m)) if m.contains(&id) && m.contains(&format!("`{field}`"))),
            "`{field}` missing: update_session is Corrupt naming the session and the field: {r:?}"
        );
        // `a` is the one field each read rewrites (the touch).
        let without_a = |all: &str| {
            let lines: Vec<String> = all.lines().map(str::to_owned).collect();
            let mut pairs: Vec<(String, String)> = lines
                .chunks(2)
                .filter(|p| p[0] != "a")
                .map(|p| (p[0].clone(), p.get(1).cloned().unwrap_or_default()))
                .collect();
            pairs.sort();
            pairs
        };
        assert_eq!(
            without_a(&cli(port, &["HGETALL", &key]).await),
            without_a(&before),
            "`{field}` missing: nothing written"
        );
        assert_eq!(a.get(&id, "k").await.unwrap(), Some(json!("kept")));
    }
}

/// docs/sessions.md, Errors: "`Backend` (Redis unreachable or refusing;
/// the text names the operation)", and the ACL user URL form. An ACL user
/// that may not run scripts (`-@scripting`) is refused every session
/// operation: each fails with `Backend` naming the operation and the
/// server's `NOPERM`, within the timeout, and nothing is written. Once the
/// user is allowed scripts, the same store works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_without_scripts_is_refused_clearly_then_served_once_allowed() {
    let redis = Redis::start().await;
    let port = redis.port;
    cli(
        port,
        &[
            "ACL",
            "SETUSER",
            "app",
            "on",
            ">pw",
            "~*",
            "&*",
            "+@all",
            "-@scripting",
        ],
    )
    .await;
    let url = format!("redis://app:pw@127.0.0.1:{port}/");
    let a = store(&url).await;
    let refused = |op: &str, r: Result<(), Error>| match r {
        Err(Error::Backend(m)) => {
            assert!(m.contains(&format!("`{op}`")), "names {op}: {m}");
            assert!(
                m.to_lowercase().contains("no permissions"),
                "{op}: the server's reason: {m}"
            );
            assert!(!m.contains("pw@"), "{op}: no password shown: {m}");
        }
        other => panic!("{op}: expected Backend, got {other:?}"),
    };
    refused(
        "create_session",
        a.create_session("s", None).await.map(drop),
    );
    refused("ensure_session", a.ensure_session("s").await);
    refused("get_session", a.get_session("s").await.map(drop));
    refused("set", a.set("s", "k", json!(1)).await);
    refused("get", a.get("s", "k").await.map(drop));
    refused("delete_session", a.delete_session("s").await.map(drop));
    refused("list_sessions", a.list_sessions().await.map(drop));
    refused("stats", a.stats().await.map(drop));
    refused("cleanup_expired", a.cleanup_expired().await.map(drop));
    assert_eq!(
        cli(port, &["DBSIZE"]).await,
        "0",
        "nothing was written by refused operations"
    );

    cli(port, &["ACL", "SETUSER", "app", "+@scripting"]).await;
    a.create_session("s", None).await.unwrap();
    a.set("s", "k", json!(1)).await.unwrap();
    assert_eq!(a.get("s", "k").await.unwrap(), Some(json!(1)));
    assert_eq!(a.list_sessions().await.unwrap(), vec!["s".to_owned()]);
}

/// docs/sessions.md: `Backend` for a Redis "refusing", and sessions that
/// stay whole. A server at `maxmemory` with `noeviction` refuses writes:
/// every operation that writes (a read too: it slides the expiry) either
/// succeeds or fails with `Backend` naming the operation and the server's
/// `OOM`; none panics or hangs, and the sessions already stored keep their
/// data. Once the limit is lifted, the same store serves them and new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refuses_with_backend_errors_and_keeps_the_sessions_it_has() {
    let redis = Redis::start_with(&["--maxmemory-policy", "noeviction"], false).await;
    let port = redis.port;
    let a = store(&redis.url()).await;
    a.create_session("old", None).await.unwrap();
    a.set("old", "k", json!({"kept": true})).await.unwrap();
    a.create_session("doomed", None).await.unwrap();
    // The limit at what is used now: any write that grows memory is
    // refused.
    let used: u64 = cli(port, &["INFO", "memory"])
        .await
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    cli(
        port,
        &["CONFIG", "SET", "maxmemory", &(used / 2).to_string()],
    )
    .await;

    // Redis refuses a script's first write if it may grow memory, and
    // lets through the rest of a script that has written: every operation
    // whose script writes first what may grow memory is refused; deletions
    // (which free memory) and touches (which rewrite in place) are not.
    let refused = std::sync::Mutex::new(Vec::new());
    let oom = |op: &'static str, r: Result<(), Error>| match r {
        Ok(()) => {}
        Err(Error::Backend(m)) => {
            assert!(m.contains(&format!("`{op}`")), "names {op}: {m}");
            assert!(m.contains("OOM"), "{op}: the server's reason: {m}");
            refused.lock().unwrap().push(op);
        }
        Err(other) => panic!("{op}: expected Ok or Backend, got {other:?}"),
    };
    let big = json!("x".repeat(100_000));
    oom(
        "create_session",
        a.create_session("new", None).await.map(drop),
    );
    oom("ensure_session", a.ensure_session("new2").await);
    oom("set", a.set("old", "big", big.clone()).await);
    oom("get", a.get("old", "k").await.map(drop));
    oom("get_session", a.get_session("old").await.map(drop));
    oom(
        "update_session",
        a.update_session("old", |s| {
            s.data.insert("big".into(), big.clone());
        })
        .await
        .map(drop),
    );
    oom(
        "store_global_program",
        a.store_global_program("g", big.clone()).await,
    );
    let refused = refused.into_inner().unwrap();
    eprintln!("refused at maxmemory: {refused:?}");
    for op in [
        "create_session",
        "ensure_session",
        "set",
        "update_session",
        "store_global_program",
    ] {
        assert!(refused.contains(&op), "{op} is refused: {refused:?}");
    }
    // Reading and renewing a session grows nothing: served (round 6,
    // `outside_round6.rs`: `a_full_redis_still_reads_and_renews_the_sessions_it_has`).
    for op in ["get", "get_session"] {
        assert!(!refused.contains(&op), "{op} is served: {refused:?}");
    }
    assert!(!a.session_exists("new").await.unwrap(), "no session made");
    assert!(!a.session_exists("new2").await.unwrap(), "no session made");
    assert!(
        a.delete_session("doomed").await.unwrap(),
        "a deletion, which frees memory, is served"
    );
    // Reading what is there needs no memory.
    assert!(a.session_exists("old").await.unwrap());
    assert!(a.stats().await.is_ok());

    cli(port, &["CONFIG", "SET", "maxmemory", "0"]).await;
    let old = a.get_session("old").await.unwrap();
    assert_eq!(old.data.get("k"), Some(&json!({"kept": true})));
    assert_eq!(old.data.get("big"), None, "a refused write left nothing");
    a.create_session("fresh", None).await.unwrap();
    a.set("fresh", "big", big.clone()).await.unwrap();
    assert_eq!(a.get("fresh", "big").await.unwrap(), Some(big));
}

/// `SessionStore::update_session`: "Applies `f` to the session atomically";
/// a function that panics is the caller's panic, in the caller's task. The
/// session must be left as it was (no half-applied change), and the store
/// must go on serving it and every other session: no lock left poisoned,
/// no connection left in a bad state.
async fn a_panicking_update_changes_nothing<S: SessionStore>(store: Arc<S>) {
    store.create_session("p", None).await.unwrap();
    store.set("p", "k", json!(1)).await.unwrap();
    let s = store.clone();
    let joined = tokio::spawn(async move {
        s.update_session("p", |sess| {
            sess.data.insert("k".into(), json!(2));
            panic!("the caller's function panics");
        })
        .await
    })
    .await;
    assert!(joined.unwrap_err().is_panic(), "the caller's task panicked");
    assert_eq!(store.get("p", "k").await.unwrap(), Some(json!(1)));
    let s = store
        .update_session("p", |sess| {
            sess.data.insert("k".into(), json!(3));
        })
        .await
        .unwrap();
    assert_eq!(s.data["k"], json!(3));
    // Every shard of a sharded store: 200 other sessions.
    for i in 0..200 {
        let id = format!("o{i}");
        store.ensure_session(&id).await.unwrap();
        store.set(&id, "k", json!(i)).await.unwrap();
        assert_eq!(store.get(&id, "k").await.unwrap(), Some(json!(i)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_panicking_update_changes_nothing_and_the_store_serves_on() {
    a_panicking_update_changes_nothing(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_panicking_update_changes_nothing_and_the_store_serves_on() {
    let redis = Redis::start().await;
    a_panicking_update_changes_nothing(store(&redis.url()).await).await;
}

/// `create_session` "fails with `AlreadyExists` if one is alive": of many
/// tasks creating one id at the same moment, exactly one succeeds and the
/// others get `AlreadyExists`; the store counts one creation, and the
/// session has the TTL its creator gave.
async fn one_creation_wins<S: SessionStore>(store: Arc<S>) {
    for round in 0..5 {
        let id = format!("race{round}");
        let tasks: Vec<_> = (0..32u64)
            .map(|t| {
                let (store, id) = (store.clone(), id.clone());
                tokio::spawn(async move {
                    store
                        .create_session(&id, Some(Duration::from_secs(1000 + t)))
                        .await
                })
            })
            .collect();
        let mut won = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                Ok(s) => won.push(s.ttl_ms),
                Err(Error::AlreadyExists(got)) => assert_eq!(got, id),
                Err(e) => panic!("{id}: {e:?}"),
            }
        }
        assert_eq!(won.len(), 1, "{id}: one creation wins: {won:?}");
        assert_eq!(store.get_session(&id).await.unwrap().ttl_ms, won[0]);
    }
    assert_eq!(store.stats().await.unwrap().sessions_created, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_of_many_creations_of_one_id_exactly_one_wins() {
    one_creation_wins(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_of_many_creations_of_one_id_exactly_one_wins() {
    let redis = Redis::start().await;
    one_creation_wins(store(&redis.url()).await).await;
}

/// docs/sessions.md, Errors: `Invalid` is for "an empty id or key, or one
/// over 512 bytes", given by the caller or put in by its `update_session`;
/// `Corrupt` for "stored data that does not parse". A data field with an
/// empty key (`d:`) or a program field with a 600-byte id, written into a
/// session's hash by something else, is stored data no operation of the
/// store can have written: reading the whole session, or an update that
/// does not touch those fields, must say `Corrupt` (naming the session),
/// not blame the caller with `Invalid`; and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_with_keys_no_session_may_have_are_corrupt_not_the_callers_fault() {
    let redis = Redis::start().await;
    let port = redis.port;
    let a = store(&redis.url()).await;
    let long = format!("p:{}", "x".repeat(600));
    for (id, field) in [("empty_key", "d:"), ("long_program_id", long.as_str())] {
        let key = format!("snakepit:s:{id}");
        a.create_session(id, None).await.unwrap();
        a.set(id, "k", json!(1)).await.unwrap();
        cli(port, &["HSET", &key, field, "1"]).await;
        let r = a.get_session(id).await;
        assert!(
            matches!(&r, Err(Error::Corrupt(m)) if m.contains(id)),
            "{id}: get_session: {r:?}"
        );
        let r = a
            .update_session(id, |s| {
                s.metadata.insert("m".into(), json!(1));
            })
            .await;
        assert!(
            matches!(&r, Err(Error::Corrupt(m)) if m.contains(id)),
            "{id}: update_session: {r:?}"
        );
        assert_eq!(
            cli(port, &["HGET", &key, "m"]).await,
            "{}",
            "{id}: nothing written"
        );
        // The fields the store wrote are still read one by one.
        assert_eq!(a.get(id, "k").await.unwrap(), Some(json!(1)));
        assert!(a.delete_session(id).await.unwrap());
    }
}

/// docs/sessions.md, Errors: `Backend` "(Redis unreachable or refusing;
/// the text names the operation)". A server busy with another client's
/// script that runs too long answers every other command with `BUSY`:
/// each operation fails at once with `Backend` naming it and the server's
/// reason (no hang until the timeout, nothing written), and once the
/// script is killed the same store works, its sessions whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_busy_with_another_clients_script_is_a_backend_error_then_recovers() {
    let redis = Redis::start_with(&["--lua-time-limit", "100"], false).await;
    let port = redis.port;
    let a = Arc::new(
        RedisStore::builder(redis.url())
            .timeout(Duration::from_secs(60))
            .sweep_interval(NEVER)
            .connect()
            .await
            .unwrap(),
    );
    a.create_session("s", None).await.unwrap();
    a.set("s", "k", json!(1)).await.unwrap();
    // Another client's script that never ends (until SCRIPT KILL).
    #[allow(clippy::disallowed_methods)] // redis-cli, not a worker
    let mut busy = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "EVAL", "while true do end", "0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    until(30, "the server answers BUSY", || async {
        let out = tokio::task::spawn_blocking(move || {
            #[allow(clippy::disallowed_methods)] // redis-cli, not a worker
            std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "PING"])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("BUSY")
    })
    .await;
    let busy_err = |op: &str, r: Result<(), Error>| match r {
        Err(Error::Backend(m)) => {
            assert!(m.contains(&format!("`{op}`")), "names {op}: {m}");
            assert!(m.contains("BUSY"), "{op}: the server's reason: {m}");
        }
        other => panic!("{op}: expected Backend, got {other:?}"),
    };
    busy_err("ensure_session", a.ensure_session("s").await);
    busy_err("set", a.set("s", "k", json!(2)).await);
    busy_err("get", a.get("s", "k").await.map(drop));
    busy_err(
        "update_session",
        a.update_session("s", |s| {
            s.data.insert("k".into(), json!(3));
        })
        .await
        .map(drop),
    );
    busy_err("delete_session", a.delete_session("s").await.map(drop));
    busy_err("session_exists", a.session_exists("s").await.map(drop));
    busy_err("cleanup_expired", a.cleanup_expired().await.map(drop));

    cli(port, &["SCRIPT", "KILL"]).await;
    let _ = busy.wait();
    assert_eq!(a.get("s", "k").await.unwrap(), Some(json!(1)));
    a.ensure_session("s").await.unwrap();
    a.create_session("t", None).await.unwrap();
}

/// docs/sessions.md: "ACL user: `redis://USER:PASSWORD@host:6379/`". A
/// hardened ACL user, refused the commands Redis calls dangerous and the
/// administrative ones (`+@all -@dangerous -@admin`: no `CONFIG`, `KEYS`,
/// `FLUSHALL`, `DEBUG`, `CLIENT KILL`...), limited to the store's prefix,
/// is all the store needs: connecting, every operation, and the sweep's
/// report of an expiry work as for the default user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hardened_acl_user_limited_to_the_prefix_runs_every_operation() {
    let redis = Redis::start().await;
    let port = redis.port;
    cli(
        port,
        &[
            "ACL",
            "SETUSER",
            "app",
            "on",
            ">pw",
            "resetkeys",
            "~tenant:*",
            "resetchannels",
            "+@all",
            "-@dangerous",
            "-@admin",
        ],
    )
    .await;
    let a = Arc::new(
        RedisStore::builder(format!("redis://app:pw@127.0.0.1:{port}/"))
            .prefix("tenant:")
            .timeout(Duration::from_secs(10))
            .sweep_interval(NEVER)
            .connect()
            .await
            .unwrap(),
    );
    let heard = common::record_ends(&*a);
    common::lifecycle(&*a).await;
    common::programs(&*a).await;
    common::global_programs(&*a).await;
    a.create_session("short", Some(Duration::from_millis(50)))
        .await
        .unwrap();
    until(30, "the expiry is reported", || async {
        a.cleanup_expired().await.unwrap();
        heard
            .lock()
            .unwrap()
            .contains(&("short".to_owned(), EndReason::Expired))
    })
    .await;
    let stats = a.stats().await.unwrap();
    assert_eq!(stats.sessions_expired, 1, "{stats:?}");
    // Every key it wrote is under its prefix.
    let keys = cli(port, &["KEYS", "*"]).await;
    assert!(keys.lines().all(|k| k.starts_with("tenant:")), "{keys}");
}

/// docs/sessions.md: "Something else writing under the prefix cannot make
/// the sweep lose or stall expiries". Another client removes the expiry of
/// 1,100 sessions' hashes (`PERSIST`): their index entries pass their
/// time while the hashes live on. A session created after them, which
/// expires in Redis, must still be reported by `cleanup_expired`: the
/// sweep may not keep looking at the first 1,000 entries of the index,
/// still alive, and never reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_whose_expiry_something_else_removed_do_not_stall_the_sweep() {
    let redis = Redis::start().await;
    let port = redis.port;
    let a = store(&redis.url()).await;
    let heard = common::record_ends(&*a);
    let ttl = Duration::from_secs(6);
    let mut made = tokio::task::JoinSet::new();
    for i in 0..1100 {
        let a = a.clone();
        made.spawn(async move { a.create_session(&format!("z{i}"), Some(ttl)).await });
    }
    while let Some(r) = made.join_next().await {
        r.unwrap().unwrap();
    }
    let persisted = cli(
        port,
        &[
            "EVAL",
            "local n = 0 for i = 0, 1099 do n = n + redis.call('PERSIST', 'snakepit:s:z' .. i) end return n",
            "0",
        ],
    )
    .await;
    assert_eq!(persisted, "1100", "every hash kept for good");
    // After the others in the index: expires a second after them.
    a.create_session("late", Some(ttl + Duration::from_secs(1)))
        .await
        .unwrap();
    until(60, "`late` expires in Redis", || async {
        !a.session_exists("late").await.unwrap()
    })
    .await;
    until(30, "`late` is reported", || async {
        a.cleanup_expired().await.unwrap();
        heard
            .lock()
            .unwrap()
            .contains(&("late".to_owned(), EndReason::Expired))
    })
    .await;
    assert_eq!(heard.lock().unwrap().len(), 1, "only `late` ended");
    // The sessions kept for good are alive, and listed as such.
    assert!(a.session_exists("z0").await.unwrap());
}

/// docs/sessions.md, `attach`: "If the store fails ..., the call fails
/// with `snakepit_core::Error::Session` and never runs"; Errors:
/// `Corrupt`. A session whose TTL something else overwrote with text
/// fails each of its calls before routing (the error names the session
/// and the value) and its handler never runs (its counter
/// is not written); the pool serves other sessions meanwhile, and once the
/// session is deleted its id starts afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_sessions_calls_never_run_and_the_pool_serves_the_others() {
    let redis = Redis::start().await;
    let port = redis.port;
    let a = store(&redis.url()).await;
    let worker = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workers/session_worker.py");
    let bridge = snakepit_adapters::Bridge::python(worker).interpreter(snakepit_tests::python());
    let pool = snakepit_session::attach(snakepit_core::Pool::builder(bridge), a.clone())
        .size(1)
        .start()
        .await
        .unwrap();
    let guard = Duration::from_secs(60);
    let call = |id: &'static str| {
        let pool = pool.clone();
        async move {
            tokio::time::timeout(guard, pool.execute_in_session(id, "count", json!({})))
                .await
                .expect("the call returns")
        }
    };
    assert_eq!(call("c").await.unwrap(), json!(1));
    cli(port, &["HSET", "snakepit:s:c", "t", "forever"]).await;
    let err = call("c").await.unwrap_err();
    assert!(
        matches!(&err, snakepit_core::Error::Session { session_id, message }
            if session_id == "c"
                && message.contains("corrupt")
                && message.contains("forever"))
            && err.never_ran(),
        "{err:?}"
    );
    assert_eq!(
        cli(port, &["HGET", "snakepit:s:c", "d:n"]).await,
        "1",
        "the handler never ran"
    );
    assert_eq!(call("other").await.unwrap(), json!(1));
    assert!(a.delete_session("c").await.unwrap());
    assert_eq!(call("c").await.unwrap(), json!(1), "afresh");
    pool.shutdown().await.unwrap();
}

/// `delete_session`: "Removes the session; `false` if there was none";
/// listeners "hear of each session that ends ... A deletion is heard of
/// when its store saw it done"; `stats()` counts deletions. Many tasks
/// create, touch, write and delete one id at once: every `true` of
/// `delete_session` is one `Deleted` heard and one deletion counted, and
/// no operation fails other than as documented (`AlreadyExists`, gone).
async fn deletions_race_and_add_up<S: SessionStore>(store: Arc<S>) {
    let heard = common::record_ends(&*store);
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8u64 {
        let store = store.clone();
        tasks.spawn(async move {
            let mut deleted = 0u64;
            for i in 0..60u64 {
                match (t + i) % 4 {
                    0 => match store.create_session("one", None).await {
                        Ok(_) | Err(Error::AlreadyExists(_)) => {}
                        Err(e) => panic!("create_session: {e:?}"),
                    },
                    1 => store.ensure_session("one").await.unwrap(),
                    2 => match store.set("one", "k", json!(i)).await {
                        Ok(()) => {}
                        Err(e) if e.is_gone() => {}
                        Err(e) => panic!("set: {e:?}"),
                    },
                    _ => {
                        if store.delete_session("one").await.unwrap() {
                            deleted += 1;
                        }
                    }
                }
            }
            deleted
        });
    }
    let mut deleted = 0;
    while let Some(r) = tasks.join_next().await {
        deleted += r.unwrap();
    }
    assert!(deleted > 0, "some deletions found the session");
    let ends = heard.lock().unwrap().clone();
    assert!(
        ends.iter()
            .all(|e| *e == ("one".to_owned(), EndReason::Deleted)),
        "{ends:?}"
    );
    assert_eq!(ends.len() as u64, deleted, "each deletion heard once");
    assert_eq!(store.stats().await.unwrap().sessions_deleted, deleted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_racing_deletions_of_one_id_are_each_heard_and_counted_once() {
    deletions_race_and_add_up(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_racing_deletions_of_one_id_are_each_heard_and_counted_once() {
    let redis = Redis::start().await;
    deletions_race_and_add_up(store(&redis.url()).await).await;
}

/// docs/sessions.md, "When Redis goes away": operations "succeed again as
/// soon as it is back", and the password form of the URL. A server with a
/// password (`requirepass`) killed and started again on its port: the
/// store's fresh connection authenticates with the URL's password by
/// itself, so operations succeed again without a new store (a session
/// call's `ensure_session` makes the lost session afresh), and no error on
/// the way shows the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_protected_redis_restarted_is_served_again_by_the_same_store() {
    let mut redis = Redis::start_with(&["--requirepass", "s3cret"], false).await;
    let url = format!("redis://:s3cret@127.0.0.1:{}/", redis.port);
    let a = store(&url).await;
    a.ensure_session("s").await.unwrap();
    a.set("s", "k", json!(1)).await.unwrap();
    redis.kill();
    let down = a.get("s", "k").await;
    assert!(
        matches!(&down, Err(Error::Backend(m)) if m.contains("`get`") && !m.contains("s3cret")),
        "{down:?}"
    );
    redis.run().await;
    until(30, "the store is served again", || async {
        match a.ensure_session("s").await {
            Ok(()) => true,
            Err(e) => {
                assert!(!e.to_string().contains("s3cret"), "{e}");
                false
            }
        }
    })
    .await;
    // Without persistence the session came back empty; it works as new.
    assert_eq!(a.get("s", "k").await.unwrap(), None);
    a.set("s", "k", json!(2)).await.unwrap();
    assert_eq!(a.get("s", "k").await.unwrap(), Some(json!(2)));
}
