//! An outside tester of the Redis store's sweep claims (`<prefix>rep`),
//! its fresh connection after a drop, and its one repeat of an operation
//! written to a dead connection, against a real `redis-server` on
//! 127.0.0.1 (tests/redis_server, killed when each test ends):
//!
//! - two stores sweeping one prefix while their connections are killed
//!   again and again: every expiry reported, each counted once;
//! - a host that froze mid-sweep (its claims taken, its listeners not all
//!   told, its connection gone): its claims are left alone until they
//!   lapse, then taken over by the other host;
//! - Redis killed (SIGKILL) and started again between a touch and a sweep,
//!   with AOF and without persistence;
//! - `CLIENT KILL` of the store's connection while each operation's
//!   command waits in the server (`CLIENT PAUSE WRITE`), while an
//!   update's write waits, between two batches of a sweep, and while the
//!   store is idle; over RESP3, over RESP2 (`?protocol=resp2`), and
//!   against a server without RESP3;
//! - keys planted under the prefix with the wrong type, counters of
//!   `stats` planted as text, and members of `rep` or `idx` the store
//!   never wrote (not UTF-8, huge, no `<n>:`).
//!
//! `cargo nextest run -p snakepit-session --features snakepit-session/redis
//! --test outside_redis_sweep_claims`.
#![cfg(feature = "redis")]

mod common;
mod redis_server;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis_server::{redis_cli, Redis};
use serde_json::json;
use snakepit_session::{EndReason, Error, RedisStore, SessionStore};
use snakepit_tests::until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A sweep that does not run during a test.
const NEVER: Duration = Duration::from_secs(3600);
/// Only turns a hang into a failure of the test.
const GUARD: Duration = Duration::from_secs(60);

async fn store(url: &str, timeout: Duration, sweep: Duration) -> Arc<RedisStore> {
    Arc::new(
        RedisStore::builder(url)
            .timeout(timeout)
            .sweep_interval(sweep)
            .connect()
            .await
            .unwrap(),
    )
}

/// Every (id, reason) a store's listeners heard.
type Heard = Arc<Mutex<Vec<(String, EndReason)>>>;

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

/// Sends one command of raw byte arguments (what `redis-cli` cannot pass:
/// bytes that are not UTF-8, a megabyte) and returns the first line of the
/// answer.
async fn raw(port: u16, args: &[&[u8]]) -> String {
    let mut msg = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        msg.extend(format!("${}\r\n", a.len()).as_bytes());
        msg.extend(*a);
        msg.extend(b"\r\n");
    }
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    conn.write_all(&msg).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.ends_with(b"\r\n") {
        let n = tokio::time::timeout(GUARD, conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "redis-server closed the connection");
        answer.extend(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).trim().to_owned()
}

/// The ids of the clients connected now, but for the `redis-cli` asking;
/// with the flags of each.
async fn clients(port: u16) -> BTreeMap<u64, String> {
    cli(port, &["CLIENT", "LIST"])
        .await
        .lines()
        .filter(|l| !l.contains("cmd=client|list"))
        .filter_map(|l| {
            let id = l.strip_prefix("id=")?.split(' ').next()?.parse().ok()?;
            let flags = l.split(' ').find_map(|f| f.strip_prefix("flags="))?;
            Some((id, flags.to_owned()))
        })
        .collect()
}

/// Kills every client but the `redis-cli` that asks.
async fn kill_clients(port: u16) {
    cli(port, &["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]).await;
}

/// A session with data, a program, and everything the operations below
/// read.
async fn fill(store: &RedisStore, id: &str) {
    store.ensure_session(id).await.unwrap();
    store.set(id, "a", json!("kept")).await.unwrap();
    store.store_program(id, "p", json!({"p": 1})).await.unwrap();
    store
        .store_global_program("g", json!({"g": 1}))
        .await
        .unwrap();
}

/// Every operation, by name.
const OPS: [&str; 16] = [
    "ensure_session",
    "get_session",
    "update_session",
    "delete_session",
    "session_exists",
    "list_sessions",
    "stats",
    "store_program",
    "get_program",
    "store_global_program",
    "get_global_program",
    "cleanup_expired",
    "get",
    "set",
    "delete",
    "create_session",
];

/// Runs `op` on session `id`; its outcome without its value.
async fn run(store: &RedisStore, op: &str, id: &str) -> Result<(), Error> {
    match op {
        "create_session" => store.create_session(id, None).await.map(drop),
        "ensure_session" => store.ensure_session(id).await,
        "get_session" => store.get_session(id).await.map(drop),
        "update_session" => store
            .update_session(id, |s| {
                s.metadata.insert("u".into(), json!(1));
            })
            .await
            .map(drop),
        "delete_session" => store.delete_session(id).await.map(drop),
        "session_exists" => store.session_exists(id).await.map(drop),
        "list_sessions" => store.list_sessions().await.map(drop),
        "stats" => store.stats().await.map(drop),
        "store_program" => store.store_program(id, "p", json!({"p": 2})).await,
        "get_program" => store.get_program(id, "p").await.map(drop),
        "store_global_program" => store.store_global_program("g", json!({"g": 2})).await,
        "get_global_program" => store.get_global_program("g").await.map(drop),
        "cleanup_expired" => store.cleanup_expired().await.map(drop),
        "get" => store.get(id, "a").await.map(drop),
        "set" => store.set(id, "a", json!("set")).await,
        "delete" => store.delete(id, "a").await.map(drop),
        other => panic!("no operation {other}"),
    }
}

/// Whether `op` waits in a server under `CLIENT PAUSE WRITE`: the scripts
/// and `HSET` do; `EXISTS` and `HGET` do not.
fn paused_by_write_pause(op: &str) -> bool {
    !matches!(op, "session_exists" | "get_global_program")
}

/// docs/sessions.md ("When Redis goes away"): an operation "written to the
/// old connection before the store saw it close ... is repeated once on a
/// fresh connection, within its timeout, and succeeds, if it is safe to
/// repeat: every operation but `create_session`"; `create_session` fails
/// once with `Error::Backend` and the next operation succeeds.
///
/// For each operation: the server pauses writes, the operation is sent and
/// waits in the server (`CLIENT LIST` shows its client blocked), and the
/// store's connection is killed (`CLIENT KILL ID`), so that the command
/// was written and never run. Each operation safe to repeat succeeds and
/// has its effect; `create_session` fails with `Backend`, made nothing,
/// and the next one succeeds. Over RESP3 (the default) and over RESP2
/// (`?protocol=resp2`), where no notice of the closing reaches the store.
async fn killed_while_waiting_in_the_server(url: &str, port: u16) {
    let store = store(url, Duration::from_secs(10), NEVER).await;
    fill(&store, "s").await;
    // Every script loaded (a first `EVALSHA` that is answered `NOSCRIPT`
    // is sent again with the script: that is not what is tested).
    for op in OPS {
        run(&store, op, "warm").await.ok();
    }
    for op in OPS.iter().copied().filter(|op| paused_by_write_pause(op)) {
        fill(&store, "s").await;
        store.delete_session("new").await.unwrap();
        let id = if op == "create_session" { "new" } else { "s" };
        let before: BTreeSet<u64> = clients(port).await.into_keys().collect();
        cli(port, &["CLIENT", "PAUSE", "20000", "WRITE"]).await;
        let task = {
            let (store, op) = (store.clone(), op.to_owned());
            tokio::spawn(async move { run(&store, &op, id).await })
        };
        let waiting = std::sync::atomic::AtomicU64::new(0);
        until(20, "the operation waits in the server", || async {
            let now = clients(port).await;
            match now
                .iter()
                .find(|(id, flags)| flags.contains('b') && before.contains(id))
            {
                Some((id, _)) => {
                    waiting.store(*id, std::sync::atomic::Ordering::Relaxed);
                    true
                }
                None => false,
            }
        })
        .await;
        let waiting = waiting.into_inner();
        cli(port, &["CLIENT", "KILL", "ID", &waiting.to_string()]).await;
        cli(port, &["CLIENT", "UNPAUSE"]).await;
        let r = tokio::time::timeout(GUARD, task).await.unwrap().unwrap();
        if op == "create_session" {
            assert!(
                matches!(&r, Err(Error::Backend(m)) if m.contains("create_session")),
                "{url}: a create killed while waiting: {r:?}"
            );
            assert!(
                !store.session_exists("new").await.unwrap(),
                "{url}: the create never ran"
            );
            store.create_session("new", None).await.unwrap();
            continue;
        }
        assert!(
            r.is_ok(),
            "{url}: `{op}` killed while waiting in the server: {r:?}"
        );
        // Its effect, once.
        match op {
            "set" => assert_eq!(store.get("s", "a").await.unwrap(), Some(json!("set"))),
            "delete" => assert_eq!(store.get("s", "a").await.unwrap(), None),
            "delete_session" => assert!(!store.session_exists("s").await.unwrap()),
            "update_session" => assert_eq!(
                store.get_session("s").await.unwrap().metadata["u"],
                json!(1)
            ),
            "store_program" => {
                assert_eq!(store.get_program("s", "p").await.unwrap(), json!({"p": 2}))
            }
            "store_global_program" => {
                assert_eq!(
                    store.get_global_program("g").await.unwrap(),
                    json!({"g": 2})
                )
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_each_operation_killed_while_waiting_is_repeated_or_fails_once() {
    let redis = Redis::start().await;
    killed_while_waiting_in_the_server(&redis.url(), redis.port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_each_operation_killed_while_waiting_is_repeated_or_fails_once() {
    let redis = Redis::start().await;
    let url = format!("{}?protocol=resp2", redis.url());
    killed_while_waiting_in_the_server(&url, redis.port).await;
}

/// docs/sessions.md ("When Redis goes away"): an operation written to a
/// connection the server closed before the store saw it close is repeated
/// once on a fresh one and succeeds, if it is safe to repeat. Over RESP2
/// no notice of the closing reaches the store, so every operation made
/// after `CLIENT KILL` of the idle store's connection is written to the
/// closed connection: each one safe to repeat must succeed; a
/// `create_session` fails once with `Backend`, and the next succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_the_first_operation_after_an_idle_kill_succeeds() {
    let redis = Redis::start().await;
    let url = format!("{}?protocol=resp2", redis.url());
    first_after_an_idle_kill(&redis, &url).await;
}

/// The same against a server that has no RESP3 (`HELLO` renamed away, as
/// in Redis 5), which the store speaks RESP2 to by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_only_server_the_first_operation_after_an_idle_kill_succeeds() {
    let redis = Redis::start_with(&["--rename-command", "HELLO", ""], false).await;
    first_after_an_idle_kill(&redis, &redis.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_only_server_each_operation_killed_while_waiting_is_repeated_or_fails_once() {
    let redis = Redis::start_with(&["--rename-command", "HELLO", ""], false).await;
    killed_while_waiting_in_the_server(&redis.url(), redis.port).await;
}

async fn first_after_an_idle_kill(redis: &Redis, url: &str) {
    let store = store(url, Duration::from_secs(10), NEVER).await;
    for op in OPS.iter().copied().filter(|op| *op != "create_session") {
        fill(&store, "s").await;
        kill_clients(redis.port).await;
        until(10, "the kill took effect", || async {
            clients(redis.port).await.is_empty()
        })
        .await;
        let r = run(&store, op, "s").await;
        assert!(
            r.is_ok(),
            "RESP2: the first `{op}` after an idle kill: {r:?}"
        );
    }
    // `create_session` is not repeated: it fails once, having made nothing
    // (the server had closed the connection before it was written).
    kill_clients(redis.port).await;
    until(10, "the kill took effect", || async {
        clients(redis.port).await.is_empty()
    })
    .await;
    let r = store.create_session("new", None).await;
    assert!(
        matches!(&r, Err(Error::Backend(m)) if m.contains("create_session")),
        "RESP2: the first create after an idle kill: {r:?}"
    );
    assert!(!store.session_exists("new").await.unwrap());
    store.create_session("new", None).await.unwrap();
}

/// docs/sessions.md (the sweep): "each expiry ... at least once ... A sweep
/// ... whose host stops, leaves the ids it took last in `rep`; once its
/// claim has passed, the next sweep of any host reports them"; and
/// redis_store.rs: "A report is another host's only once the lease of its
/// claim has passed" (twice the store's timeout).
///
/// Host A runs on a runtime of its own; its listener, told of the first
/// expiry of A's sweep, blocks that runtime (a host frozen mid-sweep: its
/// claims are taken, its listeners not all told, its acknowledgement never
/// sent), and A's connection is killed. Host B sweeps every 100 ms. B
/// reports none of A's claims while they last (checked at a quarter of the
/// lease); once they lapse, B reports every one of them, each once, and
/// `stats` counts each expiry once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_claims_of_a_host_frozen_mid_sweep_are_taken_over_once_they_lapse() {
    const N: usize = 30;
    let timeout = Duration::from_secs(4); // a lease of 8 s
    let redis = Redis::start().await;
    let url = redis.url();
    let port = redis.port;
    let (told_tx, told_rx) = std::sync::mpsc::channel::<String>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let frozen = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let a = store(&url, timeout, NEVER).await;
            let release = Mutex::new(Some(release_rx));
            a.on_session_end(Arc::new(move |id, _| {
                told_tx.send(id.to_owned()).ok();
                // Blocks the runtime (and so the acknowledgement) on the
                // first report, until the test ends.
                if let Some(rx) = release.lock().unwrap().take() {
                    rx.recv().ok();
                }
            }));
            for i in 0..N {
                a.create_session(&format!("f{i:02}"), Some(Duration::from_millis(200)))
                    .await
                    .unwrap();
            }
            ready_tx.send(()).unwrap();
            tokio::time::sleep(Duration::from_millis(600)).await;
            // Expired: A's sweep claims all of them and freezes while
            // telling the first.
            a.cleanup_expired().await
        })
    });
    tokio::time::timeout(GUARD, ready_rx)
        .await
        .unwrap()
        .unwrap();
    let a_clients: BTreeSet<u64> = clients(port).await.into_keys().collect();
    let first = tokio::task::spawn_blocking(move || told_rx.recv_timeout(GUARD))
        .await
        .unwrap()
        .expect("A's sweep told its first expiry");
    let claimed_at = std::time::Instant::now();
    for id in &a_clients {
        cli(port, &["CLIENT", "KILL", "ID", &id.to_string()]).await;
    }
    let b = store(&redis.url(), timeout, Duration::from_millis(100)).await;
    let heard = common::record_ends(&*b);
    let in_rep: u64 = cli(port, &["ZCARD", "snakepit:rep"]).await.parse().unwrap();
    assert_eq!(in_rep, N as u64, "A claimed every expiry");
    // A quarter of the lease after A's claim (if the machine is so slow
    // that this comes later, the check is skipped rather than wrong).
    tokio::time::sleep(Duration::from_secs(2)).await;
    if claimed_at.elapsed() < Duration::from_secs(6) {
        let early = heard.lock().unwrap().clone();
        assert!(
            early.is_empty(),
            "B took A's claims before they lapsed: {early:?}"
        );
    }
    until(40, "B reports A's claims once they lapse", || async {
        heard.lock().unwrap().len() >= N
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await; // a repeat would show
    let heard = heard.lock().unwrap().clone();
    let ids: BTreeSet<&str> = heard.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        (heard.len(), ids.len()),
        (N, N),
        "each claim of A reported once by B: {heard:?}"
    );
    assert!(ids.contains(first.as_str()));
    assert!(heard.iter().all(|(_, why)| *why == EndReason::Expired));
    assert_eq!(b.stats().await.unwrap().sessions_expired, N as u64);
    assert_eq!(
        cli(port, &["ZCARD", "snakepit:rep"]).await,
        "0",
        "all acknowledged"
    );
    release_tx.send(()).unwrap();
    // A's own sweep goes on once released (its connection is gone).
    let _ = frozen.join().unwrap();
}

/// docs/sessions.md (the sweep): every expiry is reported at least once,
/// and `stats()` counts each once. Two stores sweep one prefix every 50 ms
/// while every connection is killed every 100 ms for three seconds, as
/// 200 sessions expire. Once the kills stop, every id is reported by one
/// host or the other (some perhaps twice, if an acknowledgement was lost),
/// and `stats` counts 200 expiries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sweeping_hosts_whose_connections_are_killed_lose_no_expiry() {
    const N: usize = 200;
    let redis = Redis::start().await;
    let timeout = Duration::from_secs(1);
    let sweep = Duration::from_millis(50);
    let hosts = [
        store(&redis.url(), timeout, sweep).await,
        store(&redis.url(), timeout, sweep).await,
    ];
    let heard: Vec<Heard> = hosts.iter().map(|h| common::record_ends(&**h)).collect();
    for i in 0..N {
        hosts[i % 2]
            .create_session(
                &format!("k{i:03}"),
                Some(Duration::from_millis(100 + 10 * i as u64)),
            )
            .await
            .unwrap();
    }
    let port = redis.port;
    for _ in 0..30 {
        kill_clients(port).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until(40, "every expiry is reported", || async {
        let all: BTreeSet<String> = heard
            .iter()
            .flat_map(|h| {
                h.lock()
                    .unwrap()
                    .iter()
                    .map(|(id, _)| id.clone())
                    .collect::<Vec<_>>()
            })
            .collect();
        all.len() >= N
    })
    .await;
    let stats = hosts[0].stats().await.unwrap();
    assert_eq!(stats.sessions_expired, N as u64);
    assert_eq!(stats.active_sessions, 0);
    until(20, "every report acknowledged", || async {
        cli(port, &["ZCARD", "snakepit:rep"]).await == "0"
    })
    .await;
}

/// docs/sessions.md ("When Redis goes away"): "Sessions live on if Redis
/// persists them (RDB or AOF); a Redis without persistence comes back
/// empty". Sessions are touched, Redis is SIGKILLed and started again on
/// the same port, then their TTL passes and the same store sweeps: with
/// AOF each expiry is reported once and counted once; without persistence
/// there is nothing to report and the sweep works (no error), and sessions
/// made after the restart are reported when they expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_between_a_touch_and_a_sweep() {
    for aof in [true, false] {
        let extra: &[&str] = if aof {
            &["--appendonly", "yes", "--appendfsync", "always"]
        } else {
            &[]
        };
        let mut redis = Redis::start_with(extra, false).await;
        let store = store(&redis.url(), Duration::from_secs(2), NEVER).await;
        let heard = common::record_ends(&*store);
        for i in 0..5 {
            store
                .create_session(&format!("r{i}"), Some(Duration::from_millis(1500)))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        for i in 0..5 {
            store.get_session(&format!("r{i}")).await.unwrap(); // the touch
        }
        redis.kill();
        redis.run().await;
        until(15, "the sessions expire", || async {
            matches!(store.list_sessions().await, Ok(l) if l.is_empty())
        })
        .await;
        let swept = store.cleanup_expired().await;
        let want = if aof { 5 } else { 0 };
        assert!(matches!(swept, Ok(n) if n == want), "AOF {aof}: {swept:?}");
        assert_eq!(store.cleanup_expired().await.unwrap(), 0, "AOF {aof}");
        assert_eq!(heard.lock().unwrap().len(), want, "AOF {aof}");
        assert_eq!(
            store.stats().await.unwrap().sessions_expired,
            want as u64,
            "AOF {aof}"
        );
        store
            .create_session("after", Some(Duration::from_millis(100)))
            .await
            .unwrap();
        until(15, "the one made after expires", || async {
            matches!(store.list_sessions().await, Ok(l) if l.is_empty())
        })
        .await;
        assert_eq!(store.cleanup_expired().await.unwrap(), 1, "AOF {aof}");
    }
}

/// Whether `r` is the clear error of stored data the store did not write.
fn corrupt<T: std::fmt::Debug>(what: &str, r: &Result<T, Error>) {
    assert!(
        matches!(r, Err(Error::Corrupt(_))),
        "{what}: expected Corrupt, got {r:?}"
    );
}

/// docs/sessions.md ("Errors"): `Corrupt` is stored data that does not
/// parse. Members planted in `rep` that the store never wrote (bytes that
/// are not UTF-8, a megabyte, no `<n>:` before the id) must not wedge the
/// sweep: the expiries swept with them are reported, the planted members
/// are dropped and named by a `Corrupt` error, and the next sweep is
/// clean. A member planted in `idx` that is not UTF-8 likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_planted_in_rep_or_idx_do_not_wedge_the_sweep() {
    let redis = Redis::start().await;
    let port = redis.port;
    let a = store(&redis.url(), Duration::from_secs(2), NEVER).await;
    let heard = common::record_ends(&*a);
    let huge = [b"1:".as_slice(), &vec![b'x'; 1 << 20]].concat();
    for member in [
        b"7:\xff\xfe bad".as_slice(),
        huge.as_slice(),
        b"no number".as_slice(),
    ] {
        heard.lock().unwrap().clear();
        for i in 0..3 {
            a.create_session(&format!("p{i}"), Some(Duration::from_millis(100)))
                .await
                .unwrap();
        }
        until(15, "the sessions expire", || async {
            matches!(a.list_sessions().await, Ok(l) if l.is_empty())
        })
        .await;
        raw(port, &[b"ZADD", b"snakepit:rep", b"0", member]).await;
        let first = a.cleanup_expired().await;
        corrupt("a sweep that met a planted member", &first);
        let mut told: Vec<String> = heard
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        told.sort();
        assert_eq!(
            told,
            ["p0", "p1", "p2"],
            "the expiries swept with it are told"
        );
        assert_eq!(
            a.cleanup_expired().await.unwrap(),
            0,
            "the next sweep is clean"
        );
        until(10, "`rep` is empty", || async {
            cli(port, &["ZCARD", "snakepit:rep"]).await == "0"
        })
        .await;
    }
    // A member of `idx` that is not UTF-8, expired.
    raw(port, &[b"ZADD", b"snakepit:idx", b"1", b"\xff\xfe"]).await;
    a.create_session("q", Some(Duration::from_millis(100)))
        .await
        .unwrap();
    until(15, "q expires", || async {
        matches!(a.list_sessions().await, Ok(l) if l.is_empty())
    })
    .await;
    let r = a.cleanup_expired().await;
    corrupt("a sweep that met a planted id", &r);
    assert!(heard.lock().unwrap().iter().any(|(id, _)| id == "q"));
    assert_eq!(
        a.cleanup_expired().await.unwrap(),
        0,
        "the next sweep is clean"
    );
    // One that has not expired: listing names it as corrupt, the store's
    // other operations work.
    raw(
        port,
        &[b"ZADD", b"snakepit:idx", b"99999999999999", b"\xff"],
    )
    .await;
    corrupt("list_sessions", &a.list_sessions().await);
    a.ensure_session("fine").await.unwrap();
    a.stats().await.unwrap();
}

/// docs/sessions.md ("Errors"): `Corrupt` for stored data the store did not
/// write. Each of the store's keys planted with the wrong type (a string
/// where a hash or a sorted set is expected) makes the operations that use
/// it fail with `Corrupt` naming the key, writing nothing: once the key is
/// removed, every expiry that passed meanwhile is still reported and
/// counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_planted_with_the_wrong_type_are_corrupt_and_lose_no_expiry() {
    let redis = Redis::start().await;
    let port = redis.port;
    let a = store(&redis.url(), Duration::from_secs(2), NEVER).await;
    let heard = common::record_ends(&*a);
    fill(&a, "s").await;
    let mut expected = 0;
    for key in [
        "snakepit:rep",
        "snakepit:stats",
        "snakepit:idx",
        "snakepit:g",
        "snakepit:s:s",
    ] {
        a.create_session("x1", Some(Duration::from_millis(100)))
            .await
            .unwrap();
        a.create_session("x2", Some(Duration::from_millis(100)))
            .await
            .unwrap();
        until(15, "they expire", || async {
            !a.session_exists("x2").await.unwrap()
        })
        .await;
        expected += 2;
        cli(port, &["RENAME", key, "saved"]).await;
        cli(port, &["SET", key, "planted"]).await;
        let uses: &[&str] = match key {
            "snakepit:rep" => &["cleanup_expired", "ensure_session:x1", "delete_session:x2"],
            "snakepit:stats" => &["cleanup_expired", "ensure_session:x1", "stats"],
            "snakepit:idx" => &[
                "cleanup_expired",
                "ensure_session:x1",
                "list_sessions",
                "stats",
            ],
            "snakepit:g" => &["store_global_program", "get_global_program", "stats"],
            _ => &[
                "get_session",
                "get",
                "set",
                "update_session",
                "store_program",
                "delete",
            ],
        };
        for u in uses {
            let (op, id) = u.split_once(':').unwrap_or((u, "s"));
            let r = run(&a, op, id).await;
            match &r {
                // The global programs' plain commands get the server's
                // words, which do not name the key.
                Err(Error::Corrupt(m)) => assert!(
                    key == "snakepit:g" || m.contains(key),
                    "{key}: `{op}`: the error names the key: {m}"
                ),
                other => panic!("{key} planted: `{op}`: expected Corrupt, got {other:?}"),
            }
        }
        cli(port, &["DEL", key]).await;
        cli(port, &["RENAME", "saved", key]).await;
        until(15, "every expiry is reported", || async {
            a.cleanup_expired().await.is_ok() && heard.lock().unwrap().len() >= expected
        })
        .await;
        let mut told: Vec<String> = heard
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        told.sort();
        told.dedup();
        assert_eq!(told, ["x1", "x2"], "{key}");
        assert_eq!(heard.lock().unwrap().len(), expected, "{key}: each once");
        assert_eq!(
            a.stats().await.unwrap().sessions_expired,
            expected as u64,
            "{key}"
        );
        for id in ["x1", "x2"] {
            a.delete_session(id).await.unwrap();
        }
        heard
            .lock()
            .unwrap()
            .retain(|(_, why)| *why == EndReason::Expired);
    }
}

/// docs/sessions.md ("Errors"): `Corrupt` for stored data the store did not
/// write. A counter of `stats` planted as text (`reports`, `expired`) makes
/// the operations that count an expiry fail with `Corrupt` naming it,
/// before they write: once it is removed, every expiry that passed
/// meanwhile is reported once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_planted_as_text_is_corrupt_and_loses_no_expiry() {
    let redis = Redis::start().await;
    let port = redis.port;
    let a = store(&redis.url(), Duration::from_secs(2), NEVER).await;
    let heard = common::record_ends(&*a);
    let mut expected = 0;
    for field in ["reports", "expired"] {
        for id in ["c1", "c2"] {
            a.create_session(id, Some(Duration::from_millis(100)))
                .await
                .unwrap();
        }
        until(15, "they expire", || async {
            !a.session_exists("c2").await.unwrap()
        })
        .await;
        expected += 2;
        cli(port, &["HSET", "snakepit:stats", field, "planted"]).await;
        for (op, id) in [
            ("ensure_session", "c1"),
            ("delete_session", "c2"),
            ("cleanup_expired", ""),
        ] {
            let r = run(&a, op, id).await;
            assert!(
                matches!(&r, Err(Error::Corrupt(m)) if m.contains(field)),
                "`{field}` planted: `{op}`: {r:?}"
            );
        }
        cli(port, &["HDEL", "snakepit:stats", field]).await;
        until(15, "every expiry is reported", || async {
            a.cleanup_expired().await.is_ok() && heard.lock().unwrap().len() >= expected
        })
        .await;
        let mut told: Vec<String> = heard
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _)| id.clone())
            .collect();
        told.sort();
        assert_eq!(told.len(), expected, "`{field}`: each once: {told:?}");
    }
}

/// docs/sessions.md (the sweep): "`cleanup_expired()` returns how many
/// expiries it reported". A sweep reports in batches of 1,000; here the
/// server pauses writes while the first batch is being told (the listener
/// does it), and the store's connection is killed while the next batch
/// waits in the server, so the cleanup is repeated on a fresh connection. The count it returns must
/// be every expiry its listeners were told during the call, the first
/// batch's included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleanup_repeated_between_batches_counts_every_expiry_it_told() {
    const N: usize = 1500;
    let redis = Redis::start().await;
    let port = redis.port;
    let a = store(&redis.url(), Duration::from_secs(20), NEVER).await;
    for i in 0..N {
        a.create_session(&format!("b{i:04}"), Some(Duration::from_millis(100)))
            .await
            .unwrap();
    }
    until(15, "they expire", || async {
        matches!(a.list_sessions().await, Ok(l) if l.is_empty())
    })
    .await;
    let told: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = told.clone();
    a.on_session_end(Arc::new(move |id, _| {
        let mut told = sink.lock().unwrap();
        if told.is_empty() {
            // The next batch waits in the server; then its connection is
            // killed.
            pause_then_kill_the_waiting_client(port);
        }
        told.push(id.to_owned());
    }));
    let swept = a.cleanup_expired().await;
    let told = told.lock().unwrap().clone();
    let distinct: BTreeSet<&String> = told.iter().collect();
    assert_eq!(distinct.len(), N, "every expiry told once in this call");
    assert!(
        matches!(swept, Ok(n) if n == told.len()),
        "the count of a repeated cleanup: {swept:?}, told {}",
        told.len()
    );
}

/// Pauses the server's writes, then kills the client whose command waits
/// in the pause and ends the pause, from a thread of its own (so that it
/// can be started from inside a store's callback).
fn pause_then_kill_the_waiting_client(port: u16) {
    redis_cli(port, &["CLIENT", "PAUSE", "20000", "WRITE"]);
    std::thread::spawn(move || {
        for _ in 0..3000 {
            let list = redis_cli(port, &["CLIENT", "LIST"]);
            let waiting = list.lines().find_map(|l| {
                let blocked = l.split(' ').any(|f| f == "flags=b");
                blocked.then(|| l.strip_prefix("id=")?.split(' ').next())?
            });
            if let Some(id) = waiting {
                redis_cli(port, &["CLIENT", "KILL", "ID", id]);
                redis_cli(port, &["CLIENT", "UNPAUSE"]);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}

/// docs/sessions.md ("When Redis goes away"): "`create_session`, and an
/// `update_session` whose write was sent, are not repeated (a repeat could
/// ... apply the change twice): they fail once with `Error::Backend` ...,
/// and the next operation succeeds." The update's function pauses the
/// server's writes, so that its write waits in the server, where its
/// connection is killed: the update fails with `Backend`, its function ran
/// once, the session is unchanged, and the next update succeeds. Over
/// RESP3 and RESP2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_whose_write_was_killed_is_not_repeated() {
    let redis = Redis::start().await;
    let port = redis.port;
    for url in [redis.url(), format!("{}?protocol=resp2", redis.url())] {
        let a = store(&url, Duration::from_secs(10), NEVER).await;
        fill(&a, "s").await;
        a.update_session("s", |_| {}).await.unwrap(); // its scripts loaded
        let mut runs = 0;
        let r = a
            .update_session("s", |s| {
                runs += 1;
                if runs == 1 {
                    pause_then_kill_the_waiting_client(port);
                }
                s.metadata.insert("u".into(), json!(runs));
            })
            .await;
        assert!(
            matches!(&r, Err(Error::Backend(m)) if m.contains("update_session")),
            "{url}: an update whose write was killed: {r:?}"
        );
        assert_eq!(runs, 1, "{url}: not repeated");
        let s = a.get_session("s").await.unwrap();
        assert!(!s.metadata.contains_key("u"), "{url}: {s:?}");
        a.update_session("s", |s| {
            s.metadata.insert("u".into(), json!(0));
        })
        .await
        .unwrap();
        a.delete_session("s").await.unwrap();
    }
}
