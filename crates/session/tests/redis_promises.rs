//! What docs/sessions.md and `RedisStore`'s docs promise that the other
//! Redis suites do not already show, each against a real `redis-server`:
//! the 2 s default timeout, the database-number and ACL-user URL forms,
//! `Error::Corrupt` for stored data that does not parse, and
//! `Error::Conflict` for an update that keeps losing to other writers.
#![cfg(feature = "redis")]

mod common;
mod redis_server;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use redis_server::Redis;
use serde_json::json;
use snakepit_session::{Error, RedisStore, SessionStore};

/// Only turns a hang into a failure of a test.
const GUARD: Duration = Duration::from_secs(60);

/// `redis-cli -p <port> [-n db] args...`: its output, trimmed.
fn redis_cli(port: u16, db: u32, args: &[&str]) -> String {
    #[allow(clippy::disallowed_methods)] // the Redis command-line client, not a worker
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "-n", &db.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is installed with redis-server");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// sessions.md: "gives up after the store's timeout (`.timeout(Duration)`,
/// 2 s by default) with `Error::Timeout` naming the operation and the
/// timeout". A store built with the default builder, its server paused
/// (SIGSTOP: alive, silent).
#[tokio::test]
async fn the_default_timeout_is_two_seconds() {
    let redis = Redis::start().await;
    let store = RedisStore::builder(redis.url()).connect().await.unwrap();
    store.create_session("s", None).await.unwrap();
    redis.signal("STOP");
    let got = tokio::time::timeout(GUARD, store.get_session("s"))
        .await
        .expect("get_session returns instead of hanging");
    redis.signal("CONT");
    match got {
        Err(e @ Error::Timeout { operation, after }) => {
            assert_eq!(operation, "get_session");
            assert_eq!(after, Duration::from_secs(2));
            assert_eq!(
                e.to_string(),
                "session store `get_session` timed out after 2s"
            );
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    // The same store works again once the server does.
    snakepit_tests::until(30, "the store answers again", || async {
        store.get_session("s").await.is_ok()
    })
    .await;
}

/// sessions.md: "database number: `redis://host:6379/2`". The session is
/// in database 2, and a store on database 0 does not see it.
#[tokio::test]
async fn a_database_number_in_the_url_selects_that_database() {
    let redis = Redis::start().await;
    let url2 = format!("redis://127.0.0.1:{}/2", redis.port);
    let store = RedisStore::connect(&url2).await.unwrap();
    common::lifecycle(&store).await;
    store.create_session("in_db_2", None).await.unwrap();
    assert_eq!(
        redis_cli(redis.port, 2, &["EXISTS", "snakepit:s:in_db_2"]),
        "1"
    );
    assert_eq!(
        redis_cli(redis.port, 0, &["EXISTS", "snakepit:s:in_db_2"]),
        "0"
    );
    let store0 = RedisStore::connect(redis.url()).await.unwrap();
    assert!(!store0.session_exists("in_db_2").await.unwrap());
    assert!(store.session_exists("in_db_2").await.unwrap());
}

/// sessions.md: "ACL user: `redis://USER:PASSWORD@host:6379/`". The
/// server has the user `alice` besides its open `default` user: the
/// store's connection is alice's (the server's `CLIENT LIST` says so), and a
/// wrong password for her fails at `connect`, without the password in the
/// error.
#[tokio::test]
async fn an_acl_user_in_the_url_authenticates_as_that_user() {
    let redis = Redis::start_with(
        &["--user", "alice", "on", ">al1ce:pw", "~*", "+@all"],
        false,
    )
    .await;
    let url = format!("redis://alice:al1ce%3Apw@127.0.0.1:{}/", redis.port);
    let store = RedisStore::connect(&url).await.unwrap();
    common::lifecycle(&store).await;
    let clients = redis_cli(redis.port, 0, &["CLIENT", "LIST"]);
    let alices = clients
        .lines()
        .filter(|l| l.contains(" user=alice "))
        .count();
    assert!(alices >= 1, "no connection of alice's: {clients}");

    let wrong = format!("redis://alice:wrong-pw@127.0.0.1:{}/", redis.port);
    match RedisStore::connect(&wrong).await {
        Err(e @ Error::Backend(_)) => {
            let text = e.to_string();
            assert!(!text.contains("wrong-pw"), "{text}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
}

/// sessions.md: "`Corrupt` (stored data that does not parse)". Garbage
/// written into a session's hash by someone else (`redis-cli HSET`) is
/// `Error::Corrupt` when read, naming what did not parse; nothing panics.
#[tokio::test]
async fn garbage_in_a_sessions_hash_is_corrupt() {
    let redis = Redis::start().await;
    let store = RedisStore::connect(redis.url()).await.unwrap();
    store.create_session("s", None).await.unwrap();
    store.set("s", "k", json!({"a": 1})).await.unwrap();

    // A data value that is not JSON: `get` of that key and `get_session`.
    redis_cli(redis.port, 0, &["HSET", "snakepit:s:s", "d:k", "{not json"]);
    match store.get("s", "k").await {
        Err(Error::Corrupt(_)) => {}
        other => panic!("expected Corrupt from get, got {other:?}"),
    }
    match store.get_session("s").await {
        Err(Error::Corrupt(_)) => {}
        other => panic!("expected Corrupt from get_session, got {other:?}"),
    }

    // A creation time that is not a number.
    store.create_session("t", None).await.unwrap();
    redis_cli(redis.port, 0, &["HSET", "snakepit:s:t", "c", "yesterday"]);
    match store.get_session("t").await {
        Err(Error::Corrupt(msg)) => {
            assert!(
                msg.contains("`t`") && msg.contains("yesterday"),
                "the error names the session and the value: {msg}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    // Metadata that is not JSON.
    store.create_session("u", None).await.unwrap();
    redis_cli(redis.port, 0, &["HSET", "snakepit:s:u", "m", "]["]);
    match store.get_session("u").await {
        Err(Error::Corrupt(_)) => {}
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // The other sessions are untouched.
    store.create_session("ok", None).await.unwrap();
    store.get_session("ok").await.unwrap();
}

/// Another writer: one plain connection that bumps a session's version
/// (`HINCRBY <key> v 1`, what a concurrent `set` does), without an await.
struct Writer {
    conn: BufReader<TcpStream>,
    key: String,
}

impl Writer {
    fn new(port: u16, key: &str) -> Writer {
        let conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
        Writer {
            conn: BufReader::new(conn),
            key: key.to_owned(),
        }
    }

    fn bump(&mut self) {
        let parts = ["HINCRBY", self.key.as_str(), "v", "1"];
        let mut req = format!("*{}\r\n", parts.len());
        for p in parts {
            req.push_str(&format!("${}\r\n{p}\r\n", p.len()));
        }
        self.conn.get_mut().write_all(req.as_bytes()).unwrap();
        let mut line = String::new();
        self.conn.read_line(&mut line).unwrap();
        assert!(line.starts_with(':'), "HINCRBY answered {line:?}");
    }
}

/// sessions.md: "`Conflict` (Redis: the update kept losing to other
/// writers)". An update during which another writer changes the session
/// every time is retried, then given up with `Conflict` naming the session
/// and the attempts made; it was not applied.
#[tokio::test]
async fn an_update_that_keeps_losing_to_other_writers_is_a_conflict() {
    let redis = Redis::start().await;
    // Long enough for every attempt and its backoff (about 7 s in all).
    let store = RedisStore::builder(redis.url())
        .timeout(Duration::from_secs(50))
        .connect()
        .await
        .unwrap();
    store.create_session("s", None).await.unwrap();
    let mut writer = Writer::new(redis.port, "snakepit:s:s");
    let mut calls = 0u32;
    let got = tokio::time::timeout(
        GUARD,
        store.update_session("s", |s| {
            calls += 1;
            s.metadata.insert("lost".into(), json!(true));
            writer.bump(); // changes the session before this write lands
        }),
    )
    .await
    .expect("the update gives up");
    match got {
        Err(e @ Error::Conflict { .. }) => {
            let Error::Conflict {
                session_id,
                attempts,
            } = &e
            else {
                unreachable!()
            };
            assert_eq!(session_id, "s");
            assert_eq!(*attempts, calls, "each attempt read and tried once");
            assert_eq!(
                *attempts, 1000,
                "docs/sessions.md: each of its 1000 attempts"
            );
            assert!(e.to_string().contains("kept changing"), "{e}");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let s = store.get_session("s").await.unwrap();
    assert!(
        !s.metadata.contains_key("lost"),
        "the update was not applied"
    );

    // Without contention the same update goes through at once.
    let s = store
        .update_session("s", |s| {
            s.metadata.insert("won".into(), json!(true));
        })
        .await
        .unwrap();
    assert_eq!(s.metadata["won"], true);
}

/// The other side of the same promise, with the default 2 s timeout: a
/// session under lasting contention reaches the timeout before the
/// attempts run out, so the caller gets `Timeout` naming `update_session`
/// (what sessions.md says about `Conflict`).
#[tokio::test]
async fn with_the_default_timeout_lasting_contention_times_out() {
    let redis = Redis::start().await;
    let store = RedisStore::connect(redis.url()).await.unwrap();
    store.create_session("s", None).await.unwrap();
    let mut writer = Writer::new(redis.port, "snakepit:s:s");
    let got = tokio::time::timeout(GUARD, store.update_session("s", |_| writer.bump()))
        .await
        .expect("the update gives up");
    match got {
        Err(Error::Timeout { operation, after }) => {
            assert_eq!(operation, "update_session");
            assert_eq!(after, Duration::from_secs(2));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

/// `RedisStoreBuilder`'s documented defaults, as its `Debug` shows them
/// (the builder has no getters): prefix `snakepit:`, a TTL of one hour, a
/// sweep every 30 s and a 2 s timeout; and the URL, which may carry a
/// password, is left out.
#[test]
fn the_redis_builders_defaults_are_the_documented_ones() {
    let shown = format!("{:?}", RedisStore::builder("redis://:secret@127.0.0.1:1/"));
    for part in [
        r#"prefix: "snakepit:""#,
        "default_ttl: 3600s",
        "sweep_interval: 30s",
        "timeout: 2s",
    ] {
        assert!(shown.contains(part), "{part} in {shown}");
    }
    assert!(!shown.contains("secret"), "{shown}");
}
