//! Round 7 of the outside review of `snakepit-session`: what a user of the
//! original Elixir library carries over of its global programs, and what
//! docs/sessions.md promises of them.
//!
//! The original's `SessionStore` has `delete_global_program` and expires
//! global programs (`global_program_ttl`, counted from when each was
//! stored; its statistics count those deleted and those expired). Here:
//! `delete_global_program` on the trait, `global_program_ttl` on both
//! builders, `global_programs_deleted` and `global_programs_expired` in
//! `StoreStats`; each shown against the memory store and a real
//! `redis-server`.

mod common;
#[cfg(feature = "redis")]
mod redis_server;

use std::time::Duration;

use serde_json::{json, Value};
use snakepit_session::{EndListener, Error, MemoryStore, Session, SessionStore, StoreStats};
use snakepit_tests::until;

fn not_found(r: Result<Value, Error>) -> bool {
    matches!(
        r,
        Err(Error::ProgramNotFound {
            session_id: None,
            ..
        })
    )
}

/// `delete_global_program`: the program is gone for every reader, a second
/// delete answers `false`, the count of global programs drops and the
/// deletion is counted; an id no program may have is `Invalid`; other
/// programs stay.
async fn deleting_global_programs<S: SessionStore>(store: &S) {
    store
        .store_global_program("template_1", json!({"prompt": "{q}"}))
        .await
        .unwrap();
    store
        .store_global_program("template_2", json!(2))
        .await
        .unwrap();
    assert_eq!(store.stats().await.unwrap().global_programs, 2);
    assert!(store.delete_global_program("template_1").await.unwrap());
    assert!(not_found(store.get_global_program("template_1").await));
    assert!(!store.delete_global_program("template_1").await.unwrap());
    assert!(!store.delete_global_program("never_stored").await.unwrap());
    assert_eq!(
        store.get_global_program("template_2").await.unwrap(),
        json!(2)
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (
            stats.global_programs,
            stats.global_programs_deleted,
            stats.global_programs_expired
        ),
        (1, 1, 0)
    );
    for bad in ["", &"p".repeat(513)] {
        assert!(
            matches!(
                store.delete_global_program(bad).await,
                Err(Error::Invalid {
                    what: "program id",
                    ..
                })
            ),
            "{bad:.8}"
        );
    }
    // Stored again after its deletion: back.
    store
        .store_global_program("template_1", json!("again"))
        .await
        .unwrap();
    assert_eq!(
        store.get_global_program("template_1").await.unwrap(),
        json!("again")
    );
}

/// With a `global_program_ttl`, a global program ends that long after it
/// was stored: reads do not extend it (it ends while being read over and
/// over), it is not counted in `global_programs` from then on, its
/// removal by a sweep is counted once in `global_programs_expired`, and a
/// delete of it answers `false`. Storing it again gives it a new life.
/// Sessions are not touched by it.
async fn expiring_global_programs<S: SessionStore>(store: &S) {
    store.ensure_session("s").await.unwrap();
    store.store_global_program("short", json!(1)).await.unwrap();
    store.store_global_program("other", json!(2)).await.unwrap();
    until(60, "the global programs expire while read", || async {
        not_found(store.get_global_program("short").await)
    })
    .await;
    until(30, "the other one expires too", || async {
        not_found(store.get_global_program("other").await)
    })
    .await;
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.global_programs, 0, "{stats:?}");
    // `other` is removed by the sweep, `short` by a delete that finds it
    // expired: each counted once as expired, neither as deleted.
    assert!(!store.delete_global_program("short").await.unwrap());
    store.cleanup_expired().await.unwrap();
    store.cleanup_expired().await.unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (
            stats.global_programs,
            stats.global_programs_deleted,
            stats.global_programs_expired
        ),
        (0, 0, 2),
        "{stats:?}"
    );
    assert!(store.session_exists("s").await.unwrap());

    store.store_global_program("short", json!(3)).await.unwrap();
    assert_eq!(store.get_global_program("short").await.unwrap(), json!(3));
    assert_eq!(store.stats().await.unwrap().global_programs, 1);
}

/// A program stored over one that expired but was not removed yet counts
/// that one as expired, and lives anew.
async fn storing_over_an_expired_global_program<S: SessionStore>(store: &S) {
    store.store_global_program("p", json!("old")).await.unwrap();
    until(60, "it expires", || async {
        not_found(store.get_global_program("p").await)
    })
    .await;
    store.store_global_program("p", json!("new")).await.unwrap();
    assert_eq!(store.get_global_program("p").await.unwrap(), json!("new"));
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.global_programs, stats.global_programs_expired),
        (1, 1),
        "{stats:?}"
    );
}

/// Long enough that the operations right after a store, on a loaded
/// machine, still find the program alive.
const SHORT: Duration = Duration::from_secs(4);

fn memory(global_ttl: Option<Duration>) -> MemoryStore {
    let b = MemoryStore::builder().sweep_interval(Duration::from_secs(3600));
    match global_ttl {
        Some(t) => b.global_program_ttl(t).build(),
        None => b.build(),
    }
}

#[tokio::test]
async fn memory_deletes_global_programs() {
    deleting_global_programs(&memory(None)).await;
}

#[tokio::test]
async fn memory_global_programs_expire_after_their_ttl() {
    expiring_global_programs(&memory(Some(SHORT))).await;
}

#[tokio::test]
async fn memory_storing_over_an_expired_global_program_counts_it_once() {
    storing_over_an_expired_global_program(&memory(Some(SHORT))).await;
}

/// The background sweep removes expired global programs too.
#[tokio::test]
async fn memory_sweep_removes_expired_global_programs() {
    let store = MemoryStore::builder()
        .sweep_interval(Duration::from_millis(50))
        .global_program_ttl(Duration::from_millis(200))
        .build();
    store.store_global_program("p", json!(1)).await.unwrap();
    until(60, "the sweep counts the expiry", || async {
        store.stats().await.unwrap().global_programs_expired == 1
    })
    .await;
    assert!(not_found(store.get_global_program("p").await));
}

/// A `global_program_ttl` no session may have is `Invalid`, as a
/// `default_ttl` is: the memory store says so when a program is stored.
#[tokio::test]
async fn memory_a_global_program_ttl_out_of_range_is_invalid() {
    for ttl in [
        Duration::ZERO,
        snakepit_session::MAX_TTL + Duration::from_millis(1),
    ] {
        let store = memory(Some(ttl));
        assert!(
            matches!(
                store.store_global_program("p", json!(1)).await,
                Err(Error::Invalid { what: "ttl", .. })
            ),
            "{ttl:?}"
        );
        assert!(not_found(store.get_global_program("p").await));
    }
    // The longest is kept, and does not overflow the clock.
    let store = memory(Some(snakepit_session::MAX_TTL));
    store.store_global_program("p", json!(1)).await.unwrap();
    assert_eq!(store.get_global_program("p").await.unwrap(), json!(1));
}

/// A store of one's own, written before `delete_global_program` existed:
/// it still compiles, and the operation fails with `Unsupported`, which a
/// worker sees as `Unsupported`.
#[tokio::test]
async fn a_store_without_delete_global_program_says_it_is_unsupported() {
    struct Own(MemoryStore);
    impl SessionStore for Own {
        async fn create_session(&self, id: &str, ttl: Option<Duration>) -> Result<Session, Error> {
            self.0.create_session(id, ttl).await
        }
        async fn ensure_session(&self, id: &str) -> Result<(), Error> {
            self.0.ensure_session(id).await
        }
        async fn get_session(&self, id: &str) -> Result<Session, Error> {
            self.0.get_session(id).await
        }
        async fn update_session<F>(&self, id: &str, f: F) -> Result<Session, Error>
        where
            F: FnMut(&mut Session) + Send,
        {
            self.0.update_session(id, f).await
        }
        async fn delete_session(&self, id: &str) -> Result<bool, Error> {
            self.0.delete_session(id).await
        }
        async fn session_exists(&self, id: &str) -> Result<bool, Error> {
            self.0.session_exists(id).await
        }
        async fn list_sessions(&self) -> Result<Vec<String>, Error> {
            self.0.list_sessions().await
        }
        async fn stats(&self) -> Result<StoreStats, Error> {
            self.0.stats().await
        }
        async fn store_program(&self, id: &str, p: &str, v: Value) -> Result<(), Error> {
            self.0.store_program(id, p, v).await
        }
        async fn get_program(&self, id: &str, p: &str) -> Result<Value, Error> {
            self.0.get_program(id, p).await
        }
        async fn store_global_program(&self, p: &str, v: Value) -> Result<(), Error> {
            self.0.store_global_program(p, v).await
        }
        async fn get_global_program(&self, p: &str) -> Result<Value, Error> {
            self.0.get_global_program(p).await
        }
        async fn cleanup_expired(&self) -> Result<usize, Error> {
            self.0.cleanup_expired().await
        }
        async fn get(&self, id: &str, k: &str) -> Result<Option<Value>, Error> {
            self.0.get(id, k).await
        }
        async fn set(&self, id: &str, k: &str, v: Value) -> Result<(), Error> {
            self.0.set(id, k, v).await
        }
        async fn delete(&self, id: &str, k: &str) -> Result<bool, Error> {
            self.0.delete(id, k).await
        }
        fn on_session_end(&self, l: EndListener) {
            self.0.on_session_end(l)
        }
    }
    let own = Own(MemoryStore::new());
    own.store_global_program("p", json!(1)).await.unwrap();
    let err = own.delete_global_program("p").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Unsupported {
                operation: "delete_global_program"
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.to_remote().kind.as_deref(), Some("Unsupported"));
    assert_eq!(own.get_global_program("p").await.unwrap(), json!(1));
}

#[cfg(feature = "redis")]
mod redis {
    use super::*;
    use crate::redis_server::{redis_cli, Redis};
    use snakepit_session::RedisStore;

    async fn store(redis: &Redis, global_ttl: Option<Duration>) -> RedisStore {
        let b = RedisStore::builder(redis.url())
            .timeout(Duration::from_secs(10))
            .sweep_interval(Duration::from_secs(3600));
        match global_ttl {
            Some(t) => b.global_program_ttl(t),
            None => b,
        }
        .connect()
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn redis_deletes_global_programs() {
        let redis = Redis::start().await;
        deleting_global_programs(&store(&redis, None).await).await;
        // Without a TTL nothing records expiry times.
        assert_eq!(redis_cli(redis.port, &["EXISTS", "snakepit:gx"]), "0");
    }

    #[tokio::test]
    async fn redis_global_programs_expire_after_their_ttl() {
        let redis = Redis::start().await;
        expiring_global_programs(&store(&redis, Some(SHORT)).await).await;
    }

    #[tokio::test]
    async fn redis_storing_over_an_expired_global_program_counts_it_once() {
        let redis = Redis::start().await;
        storing_over_an_expired_global_program(&store(&redis, Some(SHORT)).await).await;
    }

    /// Two hosts on one server: a deletion on one is seen by the other, and
    /// an expiry by the server's clock is seen by the other; the store without
    /// a TTL that stores a program again makes it one that does not
    /// expire.
    #[tokio::test]
    async fn redis_global_program_ends_are_shared_by_hosts() {
        let redis = Redis::start().await;
        let (a, b) = (store(&redis, Some(SHORT)).await, store(&redis, None).await);
        b.store_global_program("p", json!(1)).await.unwrap();
        assert_eq!(a.get_global_program("p").await.unwrap(), json!(1));
        assert!(a.delete_global_program("p").await.unwrap());
        assert!(not_found(b.get_global_program("p").await));

        a.store_global_program("q", json!(2)).await.unwrap();
        until(60, "b sees a's program expire", || async {
            not_found(b.get_global_program("q").await)
        })
        .await;
        // Stored again by `b`, which has no TTL: it stays.
        b.store_global_program("q", json!(3)).await.unwrap();
        let pttl = redis_cli(redis.port, &["ZSCORE", "snakepit:gx", "q"]);
        assert_eq!(pttl, "", "no expiry time left for q");
        a.cleanup_expired().await.unwrap();
        assert_eq!(a.get_global_program("q").await.unwrap(), json!(3));
        let stats = a.stats().await.unwrap();
        assert_eq!(
            (
                stats.global_programs,
                stats.global_programs_deleted,
                stats.global_programs_expired
            ),
            (1, 1, 1),
            "{stats:?}"
        );
    }

    /// `connect` refuses a `global_program_ttl` no session may have, before
    /// it connects.
    #[tokio::test]
    async fn redis_a_global_program_ttl_out_of_range_is_invalid() {
        for ttl in [
            Duration::ZERO,
            snakepit_session::MAX_TTL + Duration::from_millis(1),
        ] {
            let r = RedisStore::builder("redis://127.0.0.1:1/")
                .global_program_ttl(ttl)
                .connect()
                .await;
            assert!(
                matches!(r, Err(Error::Invalid { what: "ttl", .. })),
                "{ttl:?}: {r:?}"
            );
        }
        let redis = Redis::start().await;
        let s = store(&redis, Some(snakepit_session::MAX_TTL)).await;
        s.store_global_program("p", json!(1)).await.unwrap();
        assert_eq!(s.get_global_program("p").await.unwrap(), json!(1));
    }

    /// Something else's key where the store keeps the global programs'
    /// expiry times (`gx`) fails each global program operation, and the
    /// statistics, with `Corrupt` naming it, and changes nothing.
    #[tokio::test]
    async fn redis_a_planted_expiry_key_is_corrupt_and_changes_nothing() {
        let redis = Redis::start().await;
        let s = store(&redis, Some(Duration::from_secs(600))).await;
        s.store_global_program("p", json!(1)).await.unwrap();
        redis_cli(redis.port, &["DEL", "snakepit:gx"]);
        redis_cli(redis.port, &["SET", "snakepit:gx", "planted"]);
        let corrupt = |what: &str, e: Error| match e {
            Error::Corrupt(m) => assert!(m.contains("snakepit:gx"), "{what}: {m}"),
            other => panic!("{what}: {other:?}"),
        };
        corrupt(
            "store",
            s.store_global_program("p", json!(2)).await.unwrap_err(),
        );
        corrupt("get", s.get_global_program("p").await.unwrap_err());
        corrupt("delete", s.delete_global_program("p").await.unwrap_err());
        corrupt("stats", s.stats().await.unwrap_err());
        // Nor does it stall the report of session expiries: the sweep
        // reports them, then names the key.
        let ends = common::record_ends(&s);
        s.create_session("brief", Some(Duration::from_millis(50)))
            .await
            .unwrap();
        until(60, "the session's expiry is reported", || async {
            if let Err(e) = s.cleanup_expired().await {
                corrupt("cleanup_expired", e);
            }
            !ends.lock().unwrap().is_empty()
        })
        .await;
        assert_eq!(
            ends.lock().unwrap().clone(),
            [("brief".to_owned(), snakepit_session::EndReason::Expired)]
        );
        redis_cli(redis.port, &["DEL", "snakepit:gx"]);
        assert_eq!(s.get_global_program("p").await.unwrap(), json!(1));
        assert_eq!(s.stats().await.unwrap().global_programs_deleted, 0);
    }

    /// "Under `noeviction`, a server at its `maxmemory` refuses what would
    /// grow it ... while [what] it has [is] read ... and deleted as
    /// before": global programs with a TTL are read and deleted, and
    /// storing one is refused, naming the operation and OOM.
    #[tokio::test]
    async fn redis_a_full_server_reads_and_deletes_global_programs() {
        let redis = Redis::start_with(&["--maxmemory-policy", "noeviction"], false).await;
        let s = store(&redis, Some(Duration::from_secs(600))).await;
        s.store_global_program("a", json!("x")).await.unwrap();
        s.store_global_program("b", json!("y")).await.unwrap();
        let used: u64 = redis_cli(redis.port, &["INFO", "memory"])
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        redis_cli(
            redis.port,
            &["CONFIG", "SET", "maxmemory", &(used / 2).to_string()],
        );
        match s
            .store_global_program("c", json!("z".repeat(100_000)))
            .await
        {
            Err(Error::Backend(m)) => assert!(
                m.contains("`store_global_program`") && m.contains("OOM"),
                "{m}"
            ),
            other => panic!("store at maxmemory: {other:?}"),
        }
        assert!(not_found(s.get_global_program("c").await));
        assert_eq!(s.get_global_program("a").await.unwrap(), json!("x"));
        assert!(s.delete_global_program("a").await.unwrap());
        assert!(not_found(s.get_global_program("a").await));
        let stats = s.stats().await.unwrap();
        assert_eq!(
            (stats.global_programs, stats.global_programs_deleted),
            (1, 1)
        );
        s.cleanup_expired().await.unwrap();
        redis_cli(redis.port, &["CONFIG", "SET", "maxmemory", "0"]);
    }

    /// The global program scripts are loaded again by themselves into a
    /// server that forgot them (`SCRIPT FLUSH`, a restart).
    #[tokio::test]
    async fn redis_global_program_scripts_come_back_after_a_script_flush() {
        let redis = Redis::start().await;
        let s = store(&redis, Some(Duration::from_secs(600))).await;
        s.store_global_program("p", json!(1)).await.unwrap();
        redis_cli(redis.port, &["SCRIPT", "FLUSH"]);
        assert_eq!(s.get_global_program("p").await.unwrap(), json!(1));
        redis_cli(redis.port, &["SCRIPT", "FLUSH"]);
        s.store_global_program("q", json!(2)).await.unwrap();
        redis_cli(redis.port, &["SCRIPT", "FLUSH"]);
        assert!(s.delete_global_program("p").await.unwrap());
        redis_cli(redis.port, &["SCRIPT", "FLUSH"]);
        s.cleanup_expired().await.unwrap();
        redis_cli(redis.port, &["SCRIPT", "FLUSH"]);
        assert_eq!(s.stats().await.unwrap().global_programs, 1);
    }

    /// The first word of the server's answer to `GET probe`, over a
    /// connection of its own.
    fn answer_to_a_get(port: u16) -> String {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(b"GET probe\r\n").unwrap();
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n])
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_owned()
    }

    /// sessions.md ("When Redis goes away"): a server restarted and still
    /// loading its data refuses every command with `LOADING`, unrun; the
    /// store's operations wait for it within the store's timeout, so the
    /// first ones after the restart succeed, `create_session` (which is
    /// never repeated after a reset) too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn operations_while_a_restarted_server_loads_its_data_wait_for_it() {
        // 20,000 keys loaded at 100 us each: two seconds of `LOADING`,
        // answered between keys (every 1 KiB of the file).
        let mut redis = Redis::start_with(
            &[
                "--key-load-delay",
                "100",
                "--loading-process-events-interval-bytes",
                "1024",
            ],
            false,
        )
        .await;
        let s = store(&redis, None).await;
        s.ensure_session("s").await.unwrap();
        s.set("s", "a", json!("kept")).await.unwrap();
        redis_cli(
            redis.port,
            &[
                "EVAL",
                "for i = 1, 20000 do redis.call('SET', 'filler:' .. i, i) end return 1",
                "0",
            ],
        );
        assert_eq!(redis_cli(redis.port, &["SAVE"]), "OK");
        redis.kill();
        redis.run().await;
        assert_eq!(
            answer_to_a_get(redis.port),
            "-LOADING",
            "the restarted server is loading its data"
        );
        let created = s.create_session("t", None).await;
        assert!(created.is_ok(), "create_session while loading: {created:?}");
        let got = s.get("s", "a").await;
        assert!(
            matches!(&got, Ok(Some(v)) if *v == json!("kept")),
            "get while loading: {got:?}"
        );
        assert!(s.session_exists("t").await.unwrap());
    }
}
