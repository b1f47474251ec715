//! Promises of docs/sessions.md that no other test shows:
//!
//! - "A TTL longer than `MAX_TTL` ... or shorter than 1 ms ..., given ...
//!   as the store's `default_ttl`, is `Invalid` in every store": for
//!   `MemoryStore` (whose builder cannot fail), every session that would
//!   take that default is refused with `Invalid`, and a session call through
//!   a pool fails with `snakepit_core::Error::Session` and never runs;
//! - Redis: "A timeout also opens a fresh connection in the background
//!   (one at a time), so a connection that hangs without ever dropping (a
//!   server gone silent behind a dead network path) is replaced as soon as
//!   a new one can be made": through a TCP relay that stops passing the
//!   store's first connection on without closing it;
//! - Redis: "Each operation that finds the connection down makes one attempt
//!   to reconnect, so operations fail fast while Redis is down": with a
//!   store timeout of a minute, operations on a stopped server are
//!   `Backend` errors naming the operation and the cause, not timeouts;
//! - "`Debug` of a store shows its prefix, TTL and timeout only".

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::Pool;
use snakepit_session::{attach, Error, MemoryStore, SessionStore, MAX_TTL};

fn worker() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/session_worker.py")
}

/// A `MemoryStore` whose `default_ttl` is 0, 999 us or `MAX_TTL` + 1 ms:
/// `create_session(id, None)` and `ensure_session` are `Invalid` (`ttl`)
/// and leave no session; a session given its own TTL is fine; a store whose
/// default is `MAX_TTL` itself takes sessions.
#[tokio::test]
async fn a_memory_default_ttl_no_session_may_have_is_invalid_for_each_session_taking_it() {
    for ttl in [
        Duration::ZERO,
        Duration::from_micros(999),
        MAX_TTL + Duration::from_millis(1),
    ] {
        let store = MemoryStore::builder().default_ttl(ttl).build();
        for got in [
            store.create_session("a", None).await.map(drop),
            store.ensure_session("b").await.map(drop),
        ] {
            assert!(
                matches!(got, Err(Error::Invalid { what: "ttl", .. })),
                "{ttl:?}: {got:?}"
            );
        }
        assert!(store.list_sessions().await.unwrap().is_empty(), "{ttl:?}");
        store
            .create_session("own", Some(Duration::from_secs(60)))
            .await
            .unwrap();
    }
    let store = MemoryStore::builder().default_ttl(MAX_TTL).build();
    store.ensure_session("s").await.unwrap();
    assert_eq!(store.get_session("s").await.unwrap().ttl(), MAX_TTL);
}

/// The same store behind a pool: a session call fails with
/// `snakepit_core::Error::Session` (the store's `Invalid` in its text) and
/// never runs; no session is left in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_call_on_a_store_with_an_invalid_default_ttl_never_runs() {
    let store = Arc::new(MemoryStore::builder().default_ttl(Duration::ZERO).build());
    let pool = attach(Pool::builder(Bridge::python(worker())), store.clone())
        .size(1)
        .start()
        .await
        .unwrap();
    let err = pool
        .execute_in_session("user_1", "remember", json!({"key": "k", "value": 1}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, snakepit_core::Error::Session { .. }) && err.never_ran(),
        "{err:?}"
    );
    assert!(err.to_string().contains("ttl"), "{err}");
    assert_eq!(pool.stats().completed, 0, "{err:?}");
    assert!(!store.session_exists("user_1").await.unwrap());
    pool.shutdown().await.unwrap();
}

#[cfg(feature = "redis")]
mod redis {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;
    use snakepit_session::{Error, RedisStore, SessionStore};

    use super::common::RedisServer;

    /// A TCP relay to Redis. Each connection gets a number in the order it
    /// was accepted; [`Relay::freeze`] makes every connection made so far
    /// stop passing bytes on, in both directions, while it stays open (a
    /// dead network path: no FIN, no RST). Later connections work.
    struct Relay {
        port: u16,
        accepted: Arc<AtomicUsize>,
        frozen_below: Arc<AtomicUsize>,
        stop: Arc<AtomicBool>,
    }

    impl Relay {
        fn start(upstream: u16) -> Relay {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let accepted = Arc::new(AtomicUsize::new(0));
            let frozen_below = Arc::new(AtomicUsize::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let (a, f, s) = (accepted.clone(), frozen_below.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if s.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(down) = conn else { return };
                    let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        continue;
                    };
                    let n = a.fetch_add(1, Ordering::SeqCst);
                    for (from, to) in [
                        (down.try_clone().unwrap(), up.try_clone().unwrap()),
                        (up, down),
                    ] {
                        let (f, s) = (f.clone(), s.clone());
                        std::thread::spawn(move || pass(n, from, to, &f, &s));
                    }
                }
            });
            Relay {
                port,
                accepted,
                frozen_below,
                stop,
            }
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/", self.port)
        }

        fn freeze(&self) -> usize {
            let n = self.accepted.load(Ordering::SeqCst);
            self.frozen_below.store(n, Ordering::SeqCst);
            n
        }
    }

    impl Drop for Relay {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(("127.0.0.1", self.port));
        }
    }

    /// Copies `from` to `to` until either ends; a frozen connection keeps
    /// what it read and holds both sockets open until the relay stops.
    fn pass(
        n: usize,
        mut from: TcpStream,
        mut to: TcpStream,
        frozen: &AtomicUsize,
        stop: &AtomicBool,
    ) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let got = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(got) => got,
            };
            if n < frozen.load(Ordering::SeqCst) {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                break;
            }
            if to.write_all(&buf[..got]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    }

    /// A store with a one-minute timeout whose server has stopped: each
    /// operation fails with `Error::Backend` naming it and its cause (a
    /// refused connection once it tried to reconnect), not with `Timeout`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn operations_on_a_stopped_server_fail_with_backend_errors_not_timeouts() {
        let redis = RedisServer::start().await;
        let store = RedisStore::builder(&redis.url)
            .timeout(Duration::from_secs(60))
            .connect()
            .await
            .unwrap();
        store.ensure_session("s").await.unwrap();
        drop(redis);
        // The first finds the connection broken; the next ones try once to
        // reconnect, and are refused.
        let mut causes = Vec::new();
        for (op, got) in [
            ("get", store.get("s", "k").await.map(drop)),
            ("set", store.set("s", "k", json!(1)).await.map(drop)),
            ("ensure_session", store.ensure_session("s").await.map(drop)),
        ] {
            match got {
                Err(Error::Backend(m)) => {
                    let cause = m.split(&format!("`{op}`: ")).nth(1);
                    assert!(cause.is_some_and(|c| !c.is_empty()), "{op}: {m}");
                    causes.push(m);
                }
                other => panic!("{op}: expected Error::Backend, got {other:?}"),
            }
        }
        assert!(causes[2].to_lowercase().contains("refused"), "{causes:?}");
    }

    /// `Debug` of a store and of its builder shows the prefix, the default
    /// TTL and the timeout.
    #[tokio::test]
    async fn debug_shows_the_prefix_the_ttl_and_the_timeout() {
        let redis = RedisServer::start().await;
        let builder = RedisStore::builder(&redis.url)
            .prefix("tenant_q:")
            .default_ttl(Duration::from_secs(90))
            .timeout(Duration::from_millis(750));
        let before = format!("{builder:?}");
        let store = builder.connect().await.unwrap();
        for text in [before, format!("{store:?}")] {
            for shown in ["tenant_q:", "90s", "750ms"] {
                assert!(text.contains(shown), "{shown} in {text}");
            }
        }
    }

    /// The store's only connection goes silent without dropping: the next
    /// operation fails with `Timeout` naming it, and, with nothing
    /// restarted, the same store soon works again through a new connection
    /// (its data intact) while the silent one is still open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_that_hangs_without_dropping_is_replaced_after_a_timeout() {
        let redis = RedisServer::start().await;
        let port: u16 = redis
            .url
            .trim_end_matches('/')
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let relay = Relay::start(port);
        let store = RedisStore::builder(relay.url())
            .timeout(Duration::from_millis(500))
            .connect()
            .await
            .unwrap();
        store.ensure_session("s").await.unwrap();
        store.set("s", "k", json!("kept")).await.unwrap();
        let silent = relay.freeze();
        assert!(silent >= 1);
        let err = store.get("s", "k").await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Timeout {
                    operation: "get",
                    ..
                }
            ),
            "{err:?}"
        );
        let mut recovered = false;
        for _ in 0..40 {
            if let Ok(v) = store.get("s", "k").await {
                assert_eq!(v, Some(json!("kept")));
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            recovered,
            "the store never left its silent connection for a new one"
        );
        assert!(
            relay.accepted.load(Ordering::SeqCst) > silent,
            "a new connection was made"
        );
    }
}
