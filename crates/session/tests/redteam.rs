//! Attacks on snakepit-session's stores, as a user or a hostile neighbour
//! would make them: the defects they found (each test says what it was)
//! and promised behaviour no other test showed. The Redis tests start their own `redis-server` (or a fake one) on a free
//! 127.0.0.1 port and stop it.
#![cfg(feature = "redis")]

mod common;
mod redis_server;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use common::record_ends;
use redis_server::Redis;
use serde_json::{json, Value};
use snakepit_session::{EndReason, Error, MemoryStore, RedisStore, SessionStore};
use snakepit_tests::until;

/// Only turns a hang into a failure of a test.
const GUARD: Duration = Duration::from_secs(60);

/// A Redis store whose sweep does not run during a test, with a timeout
/// generous enough for a loaded machine.
async fn redis_store(url: String) -> RedisStore {
    RedisStore::builder(url)
        .sweep_interval(Duration::from_secs(3600))
        .timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap()
}

/// A memory store whose sweep does not run during a test.
fn unswept_memory_store() -> MemoryStore {
    MemoryStore::builder()
        .sweep_interval(Duration::from_secs(3600))
        .build()
}

/// Sends one command (binary arguments) on a plain connection and returns
/// the first line of the answer.
fn raw_command(port: u16, parts: &[&[u8]]) -> String {
    let conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut conn = BufReader::new(conn);
    let mut req = format!("*{}\r\n", parts.len()).into_bytes();
    for p in parts {
        req.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
        req.extend_from_slice(p);
        req.extend_from_slice(b"\r\n");
    }
    conn.get_mut().write_all(&req).unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).unwrap();
    line
}

// ---------------------------------------------------------------------
// Defects found, and fixed
// ---------------------------------------------------------------------

/// store.rs:55: `update_session` "Applies `f` to the session atomically:
/// no other write to the session lands between the read `f` sees and the
/// write of its result"; sessions.md:141: "per-key writes bump the
/// version, so an update never erases a concurrent `set`".
///
/// The version restarts at 1 when a session is created again, so the
/// compare-and-swap could not tell a new session from the one it read
/// (ABA). While an update is between its read and its write, another host
/// deletes the session, creates it again (what the pool's
/// `ensure_session` does after a delete or an expiry) and sets `b`: the
/// versions matched again, and the update wrote the deleted session's data
/// (`a`) over the new session, erasing the concurrent `set` of `b`. Each
/// creation now has an incarnation of its own, which the swap compares too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_an_update_never_lands_on_a_session_deleted_and_created_again() {
    let redis = Redis::start().await;
    let store = redis_store(redis.url()).await;
    store.create_session("s", None).await.unwrap();
    store.set("s", "a", json!("old")).await.unwrap(); // version 2
    let url = redis.url();
    let mut first = true;
    let got = store
        .update_session("s", |s| {
            s.metadata.insert("touched".into(), json!(true));
            if std::mem::take(&mut first) {
                // Another host, between this update's read and its write.
                let url = url.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        let other = redis_store(url).await;
                        assert!(other.delete_session("s").await.unwrap());
                        other.ensure_session("s").await.unwrap(); // version 1
                        other.set("s", "b", json!("new")).await.unwrap(); // version 2
                    });
                })
                .join()
                .unwrap();
            }
        })
        .await;
    let s = store.get_session("s").await.unwrap();
    assert_eq!(
        s.data.get("b"),
        Some(&json!("new")),
        "the concurrent set was erased; update answered {got:?}; now {s:?}"
    );
    assert!(
        !s.data.contains_key("a"),
        "the deleted session's data is back: {s:?}"
    );
}

/// A JSON value nested `depth` arrays deep.
fn nested(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = Value::Array(vec![v]);
    }
    v
}

/// sessions.md:130: the Redis store has "The same behaviour" as the memory
/// store; sessions.md:97: `Corrupt` is for "stored data that does not
/// parse". The Redis store reads its JSON back with serde_json, which reads
/// 127 levels: a value nested 200 deep was accepted and then could never be
/// read again, nor its whole session (`Corrupt` for good). Both stores now
/// refuse a value deeper than `MAX_VALUE_DEPTH` with `Invalid`, however it
/// comes (`set`, programs, `update_session`), store nothing, and take one
/// 127 deep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_nested_deeper_than_the_stores_read_is_refused_by_both() {
    use snakepit_session::{Error, MAX_VALUE_DEPTH};
    let redis = Redis::start().await;
    let redis_store = redis_store(redis.url()).await;
    let memory = unswept_memory_store();
    let deep = nested(200);
    let deepest = nested(MAX_VALUE_DEPTH);
    async fn check<S: SessionStore>(store: &S, deep: &Value, deepest: &Value) {
        store.ensure_session("s").await.unwrap();
        let refused = |r: Result<(), Error>| matches!(r, Err(Error::Invalid { .. }));
        assert!(refused(store.set("s", "deep", deep.clone()).await));
        assert!(refused(store.store_program("s", "p", deep.clone()).await));
        assert!(refused(store.store_global_program("g", deep.clone()).await));
        let d = deep.clone();
        assert!(refused(
            store
                .update_session("s", move |s| {
                    s.data.insert("deep".into(), d.clone());
                })
                .await
                .map(drop)
        ));
        // Nothing was stored, and the session reads whole.
        assert_eq!(store.get("s", "deep").await.unwrap(), None);
        assert!(store.get_session("s").await.unwrap().data.is_empty());
        // The deepest allowed comes back.
        store.set("s", "deepest", deepest.clone()).await.unwrap();
        assert_eq!(
            store.get("s", "deepest").await.unwrap().as_ref(),
            Some(deepest)
        );
        store
            .store_global_program("g", deepest.clone())
            .await
            .unwrap();
        assert_eq!(&store.get_global_program("g").await.unwrap(), deepest);
        assert!(store.update_session("s", |_| {}).await.is_ok());
    }
    check(&memory, &deep, &deepest).await;
    check(&redis_store, &deep, &deepest).await;
}

/// store.rs:111: listeners are called "whenever this store removes a
/// session (expiry or deletion)"; session.rs:72: `sessions_expired`
/// counts "Sessions that expired and were removed"; sessions.md:144:
/// "each host's sweep finds expired ids in `idx`, removes them and tells
/// its listeners"; sessions.md:231: an expired session's affinity is
/// "dropped when the store reports it".
///
/// Three sessions expire (nothing swept yet); then one is created again
/// (`create_session`), one touched by `ensure_session` (the pool's next
/// call) and one deleted. Both stores report and count all three expiries
/// (the Redis store overwrote or removed the ids' entries in `idx` and
/// never reported any of them: a pool kept the old affinity for a session
/// whose data was gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiries_of_sessions_recreated_or_deleted_before_the_sweep_are_reported() {
    let redis = Redis::start().await;
    let store = redis_store(redis.url()).await;
    let memory = unswept_memory_store();
    let (ends_redis, ends_memory) = (record_ends(&store), record_ends(&memory));
    let ids = ["recreated", "ensured", "deleted"];
    for id in ids {
        let brief = Some(Duration::from_millis(100));
        store.create_session(id, brief).await.unwrap();
        memory.create_session(id, brief).await.unwrap();
    }
    until(15, "the sessions expire", || async {
        let mut alive = false;
        for id in ids {
            alive |= store.session_exists(id).await.unwrap();
            alive |= memory.session_exists(id).await.unwrap();
        }
        !alive
    })
    .await;
    // Well past the expiry in `idx` too.
    tokio::time::sleep(Duration::from_millis(200)).await;
    store.create_session("recreated", None).await.unwrap();
    memory.create_session("recreated", None).await.unwrap();
    store.ensure_session("ensured").await.unwrap();
    memory.ensure_session("ensured").await.unwrap();
    assert!(!store.delete_session("deleted").await.unwrap());
    assert!(!memory.delete_session("deleted").await.unwrap());
    store.cleanup_expired().await.unwrap();
    memory.cleanup_expired().await.unwrap();

    let expected: Vec<(String, EndReason)> = ids
        .iter()
        .map(|id| (id.to_string(), EndReason::Expired))
        .collect();
    assert_eq!(*ends_memory.lock().unwrap(), expected, "memory store");
    assert_eq!(memory.stats().await.unwrap().sessions_expired, 3);
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (ends_redis.lock().unwrap().clone(), stats.sessions_expired),
        (expected, 3),
        "redis store: {stats:?}"
    );
}

/// store.rs:111-112: listeners are called "after the removal, outside any
/// lock". They were called under the listeners' own `RwLock` (read), so a
/// listener that registers a listener (`on_session_end` takes that lock to
/// write) deadlocked the thread that deleted the session. (The Redis store
/// shares the code: `store::Listeners`.)
#[test]
fn memory_a_listener_that_registers_a_listener_does_not_deadlock() {
    let (done, finished) = mpsc::channel();
    // On a thread of its own: a deadlock leaves it behind, not the test.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = unswept_memory_store();
            let again = store.clone();
            store.on_session_end(Arc::new(move |_, _| {
                again.on_session_end(Arc::new(|_, _| {}));
            }));
            store.create_session("s", None).await.unwrap();
            assert!(store.delete_session("s").await.unwrap());
        });
        done.send(()).unwrap();
    });
    finished
        .recv_timeout(Duration::from_secs(20))
        .expect("delete_session returned (the listener did not deadlock)");
}

/// A TCP relay to Redis that, when told, puts a few bytes that are not
/// RESP in front of the next reply on every connection, once.
struct GarblingRelay {
    port: u16,
    garble: Arc<AtomicBool>,
    /// Bytes the clients sent, in all.
    sent: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl GarblingRelay {
    fn start(upstream: u16) -> GarblingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let garble = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, n, s) = (garble.clone(), sent.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(down) = conn else { return };
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (d2, u2, n) = (
                    down.try_clone().unwrap(),
                    up.try_clone().unwrap(),
                    n.clone(),
                );
                std::thread::spawn(move || {
                    copy(d2, u2, |_, got| {
                        n.fetch_add(got, Ordering::SeqCst);
                    })
                });
                let g = g.clone();
                std::thread::spawn(move || {
                    copy(up, down, |to, _| {
                        if g.swap(false, Ordering::SeqCst) {
                            let _ = to.write_all(b"%%%garbage\r\n");
                        }
                    })
                });
            }
        });
        GarblingRelay {
            port,
            garble,
            sent,
            stop,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for GarblingRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to`, calling `before` ahead of each chunk.
fn copy(mut from: TcpStream, mut to: TcpStream, before: impl Fn(&mut TcpStream, usize)) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let got = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(got) => got,
        };
        before(&mut to, got);
        if to.write_all(&buf[..got]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

/// sessions.md:174-176: the store "opens [its connection] again by
/// itself; nothing needs to be rebuilt or restarted", and operations
/// "succeed again as soon as it is back". One reply that is not RESP (a
/// flaky proxy in front of a healthy Redis) fails its operation with
/// `Backend`; the same store then works again, its data intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_garbled_reply_is_a_backend_error_then_the_store_recovers() {
    let redis = Redis::start().await;
    let relay = GarblingRelay::start(redis.port);
    let store = RedisStore::builder(relay.url())
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    store.ensure_session("s").await.unwrap();
    store.set("s", "k", json!("kept")).await.unwrap();

    relay.garble.store(true, Ordering::SeqCst);
    let err = store.get("s", "k").await.unwrap_err();
    assert!(matches!(err, Error::Backend(_)), "{err:?}");
    assert!(!relay.garble.load(Ordering::SeqCst), "the garbage was sent");

    let before = relay.sent.load(Ordering::SeqCst);
    let mut last = None;
    let recovered = tokio::time::timeout(GUARD, async {
        for _ in 0..100 {
            match store.get("s", "k").await {
                Ok(v) => return Some(v),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    })
    .await
    .expect("the operations return");
    let reached = relay.sent.load(Ordering::SeqCst) - before;
    // A new store on the same relay and server works at once.
    let fresh = redis_store(relay.url()).await;
    assert_eq!(fresh.get("s", "k").await.unwrap(), Some(json!("kept")));
    assert_eq!(
        recovered,
        Some(Some(json!("kept"))),
        "10 s of retries never recovered ({reached} bytes reached the server); \
         last error: {last:?}"
    );
}

/// sessions.md:97: "`Corrupt` (stored data that does not parse), `Backend`
/// (Redis unreachable or refusing...)". A session value that is not UTF-8
/// (written by something else) is `Corrupt` from every read, global
/// programs too (it was `Backend`, "Incompatible type", from `get_session`
/// and `update_session`: the error said the server failed when the data
/// did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stored_bytes_that_are_not_utf8_are_corrupt() {
    let redis = Redis::start().await;
    let store = redis_store(redis.url()).await;
    store.ensure_session("s").await.unwrap();
    store.set("s", "k", json!(1)).await.unwrap();
    raw_command(redis.port, &[b"HSET", b"snakepit:s:s", b"d:k", b"\xff\xfe"]);
    raw_command(redis.port, &[b"HSET", b"snakepit:g", b"p", b"\xff"]);
    let got = [
        ("get", store.get("s", "k").await.map(drop)),
        ("get_session", store.get_session("s").await.map(drop)),
        (
            "update_session",
            store.update_session("s", |_| {}).await.map(drop),
        ),
        (
            "get_global_program",
            store.get_global_program("p").await.map(drop),
        ),
    ];
    for (op, r) in &got {
        assert!(matches!(r, Err(Error::Corrupt(_))), "{op}: {got:?}");
    }
}

// ---------------------------------------------------------------------
// Promised behaviour, not shown elsewhere
// ---------------------------------------------------------------------

/// sessions.md:93: "`Invalid` (an empty id or key, or one over 512
/// bytes)": every other text is a valid id, key or program id, in both
/// stores. Ids and names made of Redis glob characters, spaces, control
/// characters, NUL, hash tags, the store's own field and key names, and
/// 512 bytes of two-byte characters: each session keeps its own data and
/// programs, nothing is mixed, every id is listed exactly, each global
/// program is its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_ids_keys_and_program_ids_are_kept_apart_in_both_stores() {
    let redis = Redis::start().await;
    let store = redis_store(redis.url()).await;
    let memory = unswept_memory_store();
    let long = "ü".repeat(256);
    let ids = [
        "*",
        "?",
        "[",
        "[a-z]",
        " ",
        "a b",
        "\n",
        "\r\n",
        "\0",
        "\u{7f}\u{1b}[31m",
        "{tag}",
        "{}",
        "s:x",
        "idx",
        "../g",
        "d:k",
        "p:p",
        "v",
        "t",
        long.as_str(),
    ];
    async fn fill<S: SessionStore>(store: &S, ids: &[&str]) {
        for id in ids {
            store.ensure_session(id).await.unwrap();
            store.set(id, id, json!(id)).await.unwrap();
            store.store_program(id, id, json!({"p": id})).await.unwrap();
            store.store_global_program(id, json!(id)).await.unwrap();
        }
        for id in ids {
            let s = store.get_session(id).await.unwrap();
            assert_eq!(s.id, *id);
            assert_eq!(s.data.len(), 1, "{id:?}: {s:?}");
            assert_eq!(s.data[*id], json!(id));
            assert_eq!(s.programs.len(), 1, "{id:?}: {s:?}");
            assert_eq!(s.programs[*id], json!({"p": id}));
            assert_eq!(store.get_global_program(id).await.unwrap(), json!(id));
        }
        let mut listed = store.list_sessions().await.unwrap();
        listed.sort();
        let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(listed, want);
        assert_eq!(
            store.stats().await.unwrap().global_programs,
            ids.len() as u64
        );
        for id in ids {
            assert!(store.delete_session(id).await.unwrap());
        }
        assert!(store.list_sessions().await.unwrap().is_empty());
    }
    fill(&store, &ids).await;
    fill(&memory, &ids).await;
}

/// sessions.md:130: the Redis store has "The same behaviour" as the memory
/// store, whose values are any JSON: a 30 MB value is kept whole, by `get`
/// and by `get_session`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_30_mb_value_comes_back_whole() {
    let redis = Redis::start().await;
    let store = redis_store(redis.url()).await;
    store.ensure_session("s").await.unwrap();
    let big = json!("x".repeat(30 << 20));
    store.set("s", "big", big.clone()).await.unwrap();
    assert_eq!(store.get("s", "big").await.unwrap(), Some(big.clone()));
    assert_eq!(store.get_session("s").await.unwrap().data["big"], big);
}
