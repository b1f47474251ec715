//! `RedisStore` against a real `redis-server` that dies, comes back and is
//! paused: the store reconnects by itself, fails clearly while the server is
//! away, and never hangs on a server that does not answer.
#![cfg(feature = "redis")]

mod common;
mod redis_server;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis_server::Redis;
use serde_json::json;
use snakepit_session::{Error, RedisStore, RedisStoreBuilder, SessionStore};
use snakepit_tests::until;

/// The store under test: a short operation timeout, so that a paused
/// server is noticed quickly.
fn store(url: &str, timeout: Duration) -> RedisStoreBuilder {
    RedisStore::builder(url).timeout(timeout)
}

/// A failure the caller can understand: a backend error that names the
/// operation.
fn is_clear(err: &Error, op: &str) -> bool {
    match err {
        Error::Backend(msg) => msg.contains(&format!("`{op}`")),
        Error::Timeout { operation, .. } => *operation == op,
        _ => false,
    }
}

/// A timeout error: names the operation and the timeout.
fn is_timeout(err: &Error, op: &str, after: Duration) -> bool {
    matches!(err, Error::Timeout { operation, after: a } if *operation == op && *a == after)
}

#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: AtomicUsize,
    /// Errors that are not a clear backend error naming their operation.
    unclear: Mutex<Vec<String>>,
}

impl Tally {
    fn record<T>(&self, op: &str, r: Result<T, Error>) {
        match r {
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            // The restarted server has no persistence: it comes back empty,
            // and a `set` between a failed `ensure_session` and the next
            // one finds no session.
            Err(e) if e.is_gone() => {}
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                if !is_clear(&e, op) {
                    self.unclear.lock().unwrap().push(format!("{op}: {e:?}"));
                }
            }
        }
    }
}

/// redis-server is killed (SIGKILL) and started again on the same port while
/// four tasks keep using the store: while it is down every operation fails
/// with an error naming the operation; once it is back, every task's
/// operations succeed again without a new store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_under_load_fails_clearly_then_recovers() {
    let mut redis = Redis::start().await;
    let store = store(&redis.url(), Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let tallies: Vec<Arc<Tally>> = (0..4).map(|_| Arc::default()).collect();
    let mut tasks = Vec::new();
    for (t, tally) in tallies.iter().enumerate() {
        let (store, tally, stop) = (store.clone(), tally.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let id = format!("load_{t}");
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tally.record("ensure_session", store.ensure_session(&id).await);
                tally.record("set", store.set(&id, "n", json!(i)).await);
                tally.record("get", store.get(&id, "n").await);
                i += 1;
                // Pacing, so that failing fast does not spin the machine.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    let ok = |t: &Tally| t.ok.load(Ordering::Relaxed);
    let failed = |t: &Tally| t.failed.load(Ordering::Relaxed);
    until(15, "every task's operations succeed", || async {
        tallies.iter().all(|t| ok(t) > 10)
    })
    .await;

    redis.kill();
    let failed_before: Vec<usize> = tallies.iter().map(|t| failed(t)).collect();
    until(
        15,
        "every task's operations fail while Redis is down",
        || async {
            tallies
                .iter()
                .zip(&failed_before)
                .all(|(t, &before)| failed(t) >= before + 20)
        },
    )
    .await;
    let err = store.ensure_session("probe").await.unwrap_err();
    assert!(is_clear(&err, "ensure_session"), "{err:?}");
    let err = store.get_session("probe").await.unwrap_err();
    assert!(is_clear(&err, "get_session"), "{err:?}");

    redis.run().await;
    let ok_at_return: Vec<usize> = tallies.iter().map(|t| ok(t)).collect();
    until(15, "a new call succeeds once Redis is back", || async {
        store.ensure_session("probe").await.is_ok()
    })
    .await;
    until(15, "every task's operations succeed again", || async {
        tallies
            .iter()
            .zip(&ok_at_return)
            .all(|(t, &before)| ok(t) >= before + 10)
    })
    .await;
    // Scripts are loaded again into the new server: every kind works.
    store.set("probe", "k", json!(1)).await.unwrap();
    assert_eq!(store.get("probe", "k").await.unwrap(), Some(json!(1)));
    store
        .update_session("probe", |s| {
            s.metadata.insert("m".into(), json!(2));
        })
        .await
        .unwrap();
    assert!(store
        .list_sessions()
        .await
        .unwrap()
        .contains(&"probe".into()));

    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.expect("no load task panicked");
    }
    for t in &tallies {
        let unclear = t.unclear.lock().unwrap();
        assert!(unclear.is_empty(), "unclear errors: {unclear:?}");
    }
}

/// redis-server is paused (SIGSTOP): store calls end with a timeout error
/// naming the operation and the timeout instead of hanging; once it is
/// resumed (SIGCONT) the same store works again, its data intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_server_times_out_then_recovers() {
    let redis = Redis::start().await;
    let timeout = Duration::from_millis(300);
    let store = store(&redis.url(), timeout).connect().await.unwrap();
    store.ensure_session("s").await.unwrap();
    store.set("s", "k", json!("kept")).await.unwrap();

    redis.signal("STOP");
    // The outer limit only turns a hang into a failure of this test.
    let guard = Duration::from_secs(30);
    let r = tokio::time::timeout(guard, store.get("s", "k")).await;
    let err = r.expect("a call to a paused server returns").unwrap_err();
    assert!(is_timeout(&err, "get", timeout), "{err:?}");
    let (a, b, c) = tokio::time::timeout(guard, async {
        tokio::join!(
            store.ensure_session("s"),
            store.update_session("s", |_| {}),
            store.stats(),
        )
    })
    .await
    .expect("calls to a paused server return");
    assert!(is_timeout(&a.unwrap_err(), "ensure_session", timeout));
    assert!(is_timeout(&b.unwrap_err(), "update_session", timeout));
    assert!(is_timeout(&c.unwrap_err(), "stats", timeout));

    redis.signal("CONT");
    until(15, "the store works again after SIGCONT", || async {
        matches!(store.get("s", "k").await, Ok(Some(v)) if v == json!("kept"))
    })
    .await;
}

/// Connecting to a paused server ends with a timeout error, not a hang.
#[tokio::test]
async fn connect_to_paused_server_times_out() {
    let redis = Redis::start().await;
    redis.signal("STOP");
    let timeout = Duration::from_millis(300);
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        store(&redis.url(), timeout).connect(),
    )
    .await
    .expect("connecting to a paused server returns");
    let err = r.unwrap_err();
    assert!(is_timeout(&err, "connect", timeout), "{err:?}");
    redis.signal("CONT");
    store(&redis.url(), timeout).connect().await.unwrap();
}
