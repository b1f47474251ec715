//! Session stores across Tokio runtimes: built on one runtime, used from
//! another and from plain threads, and after the runtime they were built in
//! is gone.

mod common;

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use serde_json::json;
use snakepit_session::{EndReason, MemoryStore, SessionStore};

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}

/// Polls `f` once, outside any runtime, with a waker that does nothing.
fn poll_once<F: std::future::Future>(f: F) -> Poll<F::Output> {
    let mut f = std::pin::pin!(f);
    f.as_mut().poll(&mut Context::from_waker(Waker::noop()))
}

fn ends_of(store: &MemoryStore) -> Arc<Mutex<Vec<(String, EndReason)>>> {
    let ends = Arc::new(Mutex::new(Vec::new()));
    let seen = ends.clone();
    store.on_session_end(Arc::new(move |id: &str, why| {
        seen.lock().unwrap().push((id.to_owned(), why));
    }));
    ends
}

/// docs/sessions.md, `MemoryStore`: "each operation hashes the id once and
/// holds one shard's lock for O(1) work (no lock is held across an
/// `.await`; the futures never wait)", and "a background task (every 30 s,
/// `sweep_interval`) removes the rest, tells the listeners ... The sweep
/// runs on the Tokio runtime the store was built in (a store built outside
/// a runtime has none: call `cleanup_expired` yourself)".
///
/// A store built on runtime A is used from runtime B: A's sweep ends a
/// session that B created and never touched again. Then A is dropped: the
/// store keeps working from B and from a plain thread with no runtime (each
/// future ready at its first poll), an expired session is removed on touch
/// and by `cleanup_expired`, each end reported once.
#[test]
fn a_memory_store_serves_other_runtimes_and_plain_threads_before_and_after_its_own_dies() {
    let rt_a = runtime(1);
    let store = rt_a.block_on(async {
        MemoryStore::builder()
            .sweep_interval(Duration::from_millis(50))
            .build()
    });
    let ends = ends_of(&store);
    let rt_b = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // From B, while A lives: A's sweep ends B's session.
    rt_b.block_on(async {
        store
            .create_session("from-b", Some(Duration::from_millis(100)))
            .await
            .unwrap();
        store.set("from-b", "k", json!(1)).await.unwrap();
    });
    let until = Instant::now() + Duration::from_secs(10);
    while ends.lock().unwrap().is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        *ends.lock().unwrap(),
        vec![("from-b".to_owned(), EndReason::Expired)],
        "A's sweep ended the session B made"
    );

    drop(rt_a);

    // From B, after A died.
    rt_b.block_on(async {
        store
            .create_session("after", Some(Duration::from_secs(3600)))
            .await
            .unwrap();
        store.set("after", "k", json!("v")).await.unwrap();
        assert_eq!(store.get("after", "k").await.unwrap(), Some(json!("v")));
        store
            .create_session("short", Some(Duration::from_millis(50)))
            .await
            .unwrap();
        store
            .create_session("short2", Some(Duration::from_millis(50)))
            .await
            .unwrap();
    });
    std::thread::sleep(Duration::from_millis(200));

    // From a plain thread, no runtime: every future is ready at once.
    let s = store.clone();
    std::thread::spawn(move || {
        let Poll::Ready(v) = poll_once(s.get("after", "k")) else {
            panic!("get waited outside a runtime");
        };
        assert_eq!(v.unwrap(), Some(json!("v")));
        let Poll::Ready(r) = poll_once(s.set("after", "k2", json!(2))) else {
            panic!("set waited outside a runtime");
        };
        r.unwrap();
        // Found expired on touch: removed on the spot.
        let Poll::Ready(e) = poll_once(s.get_session("short")) else {
            panic!("get_session waited outside a runtime");
        };
        assert!(e.unwrap_err().is_gone());
        // The rest, by hand: no sweep runs any more.
        let Poll::Ready(n) = poll_once(s.cleanup_expired()) else {
            panic!("cleanup_expired waited outside a runtime");
        };
        assert_eq!(n.unwrap(), 1, "short2 was left for cleanup_expired");
    })
    .join()
    .expect("the plain thread");

    let mut got = ends.lock().unwrap().clone();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("from-b".to_owned(), EndReason::Expired),
            ("short".to_owned(), EndReason::Expired),
            ("short2".to_owned(), EndReason::Expired),
        ],
        "each end reported once"
    );
    rt_b.block_on(async {
        assert_eq!(store.get("after", "k2").await.unwrap(), Some(json!(2)));
    });
}

/// docs/sessions.md, `RedisStore`, "When Redis goes away": "The store keeps
/// one multiplexed connection ... and opens it again by itself; nothing
/// needs to be rebuilt or restarted", "Each operation that finds the
/// connection down makes one attempt to reconnect", and every operation is
/// bounded by the store's timeout.
///
/// A store connected on runtime A (its connection's tasks live there), A
/// dropped, the store used from runtime B while Redis is up all along:
/// every operation ends within its timeout (no hang), the store serves
/// again by itself (at most the first operation fails, with an error
/// naming it), and the data written before is there.
#[cfg(feature = "redis")]
#[test]
fn a_redis_store_outlives_the_runtime_it_connected_on() {
    use snakepit_session::{Error, RedisStore};
    if which("redis-server").is_none() {
        eprintln!("skipped: redis-server is not installed");
        return;
    }
    let rt_b = runtime(1);
    let server = rt_b.block_on(common::RedisServer::start());
    let timeout = Duration::from_secs(2);
    let rt_a = runtime(1);
    let store = rt_a.block_on(async {
        let store = RedisStore::builder(&server.url)
            .prefix("rt:")
            .timeout(timeout)
            .connect()
            .await
            .unwrap();
        store.create_session("a", None).await.unwrap();
        store.set("a", "k", json!("before")).await.unwrap();
        store
    });
    drop(rt_a);
    rt_b.block_on(async {
        let mut outcomes = vec![];
        for i in 0..4 {
            let t0 = Instant::now();
            let out = tokio::time::timeout(timeout * 3, store.get("a", "k"))
                .await
                .unwrap_or_else(|_| panic!("get #{i} hung with its connection's runtime gone"));
            outcomes.push((t0.elapsed(), out));
        }
        for (_, out) in &outcomes {
            if let Err(e) = out {
                assert!(
                    matches!(e, Error::Backend(m) if m.contains("`get`"))
                        || matches!(e, Error::Timeout { operation, .. } if *operation == "get"),
                    "an error that does not name the operation: {e:?}"
                );
            }
        }
        let failed = outcomes.iter().filter(|(_, o)| o.is_err()).count();
        assert!(
            failed <= 1 && outcomes[1..].iter().all(|(_, o)| o.is_ok()),
            "the store did not serve again by itself once its runtime was gone: {outcomes:?}"
        );
        assert_eq!(
            outcomes.last().unwrap().1.as_ref().unwrap(),
            &Some(json!("before"))
        );
        store.set("a", "k", json!("after")).await.unwrap();
        assert_eq!(store.get("a", "k").await.unwrap(), Some(json!("after")));
    });
    drop(store);
    drop(server);
}

#[cfg(feature = "redis")]
fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|f| f.is_file())
    })
}

/// `RedisStore`'s docs: "Listeners ... hear of ... expiries found by this
/// handle's sweep"; docs/sessions.md: "each host's sweep finds expired ids
/// in `idx`, removes them and tells its listeners". Unlike `MemoryStore`'s
/// docs ("The sweep runs on the Tokio runtime the store was built in"),
/// nothing says the sweep is tied to the runtime `connect` ran on. A store
/// connected on runtime A, used from runtime B: while A lives its sweep
/// reports an expiry (the control); once A is gone, an expiry of a session
/// B made must still be reported.
#[cfg(feature = "redis")]
#[test]
fn a_redis_stores_sweep_reports_expiries_after_the_runtime_it_connected_on_ended() {
    use snakepit_session::RedisStore;
    if which("redis-server").is_none() {
        eprintln!("skipped: redis-server is not installed");
        return;
    }
    let rt_b = runtime(1);
    let server = rt_b.block_on(common::RedisServer::start());
    let rt_a = runtime(1);
    let store = rt_a.block_on(async {
        RedisStore::builder(&server.url)
            .prefix("rt-sweep:")
            .sweep_interval(Duration::from_millis(50))
            .connect()
            .await
            .unwrap()
    });
    let ends = Arc::new(Mutex::new(Vec::<(String, EndReason)>::new()));
    {
        let seen = ends.clone();
        store.on_session_end(Arc::new(move |id: &str, why| {
            seen.lock().unwrap().push((id.to_owned(), why));
        }));
    }
    let reported = |id: &str| {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if ends.lock().unwrap().iter().any(|(i, _)| i == id) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    };
    rt_b.block_on(async {
        store
            .create_session("while-a-lives", Some(Duration::from_millis(200)))
            .await
            .unwrap();
    });
    assert!(
        reported("while-a-lives"),
        "the control: A's sweep reports it"
    );
    drop(rt_a);
    rt_b.block_on(async {
        // The first operation may reconnect (its connection's task was A's).
        for _ in 0..2 {
            if store
                .create_session("after-a", Some(Duration::from_millis(200)))
                .await
                .is_ok()
            {
                break;
            }
        }
        assert!(store.session_exists("after-a").await.unwrap());
    });
    assert!(
        reported("after-a"),
        "no sweep reported the expiry once the runtime `connect` ran on was gone: {:?}",
        ends.lock().unwrap()
    );
    drop(store);
    drop(server);
}
