//! The suite every store must pass, and a real Redis server for the Redis
//! store's run of it.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use snakepit_session::{EndReason, Error, SessionStore};
use snakepit_tests::until;

/// The ids (and reasons) a store reported ended.
pub fn record_ends<S: SessionStore>(store: &S) -> Arc<Mutex<Vec<(String, EndReason)>>> {
    let ends = Arc::new(Mutex::new(Vec::new()));
    let sink = ends.clone();
    store.on_session_end(Arc::new(move |id, why| {
        sink.lock().unwrap().push((id.to_owned(), why));
    }));
    ends
}

pub async fn lifecycle<S: SessionStore>(store: &S) {
    let s = store
        .create_session("session_123", Some(Duration::from_secs(7200)))
        .await
        .unwrap();
    assert_eq!((s.id.as_str(), s.ttl_ms), ("session_123", 7_200_000));
    assert!(matches!(
        store.create_session("session_123", None).await,
        Err(Error::AlreadyExists(_))
    ));
    assert!(store.session_exists("session_123").await.unwrap());
    assert!(!store.session_exists("nobody").await.unwrap());
    let got = store.get_session("session_123").await.unwrap();
    assert_eq!(got.created_at_ms, s.created_at_ms);
    assert!(got.last_accessed_ms >= s.created_at_ms);

    let updated = store
        .update_session("session_123", |s| {
            s.metadata.insert("last_activity".into(), json!("now"));
            s.id = "renamed".into(); // ignored: a session keeps its id
        })
        .await
        .unwrap();
    assert_eq!(updated.id, "session_123");
    assert_eq!(
        store.get_session("session_123").await.unwrap().metadata["last_activity"],
        "now"
    );

    assert_eq!(store.get("session_123", "k").await.unwrap(), None);
    store
        .set("session_123", "k", json!({"a": [1, 2]}))
        .await
        .unwrap();
    assert_eq!(
        store.get("session_123", "k").await.unwrap(),
        Some(json!({"a": [1, 2]}))
    );
    assert!(store.delete("session_123", "k").await.unwrap());
    assert!(!store.delete("session_123", "k").await.unwrap());

    let mut ids = store.list_sessions().await.unwrap();
    store.ensure_session("other").await.unwrap();
    ids.push("other".into());
    let mut listed = store.list_sessions().await.unwrap();
    listed.sort();
    ids.sort();
    assert_eq!(listed, ids);

    let ends = record_ends(store);
    assert!(store.delete_session("session_123").await.unwrap());
    assert!(!store.delete_session("session_123").await.unwrap());
    assert_eq!(
        *ends.lock().unwrap(),
        vec![("session_123".to_string(), EndReason::Deleted)]
    );
    assert!(store
        .get_session("session_123")
        .await
        .unwrap_err()
        .is_gone());
    assert!(store
        .set("session_123", "k", json!(1))
        .await
        .unwrap_err()
        .is_gone());
    assert!(store.get("session_123", "k").await.unwrap_err().is_gone());
}

pub async fn bad_input<S: SessionStore>(store: &S) {
    let long = "x".repeat(513);
    for r in [
        store.ensure_session("").await,
        store.ensure_session(&long).await,
        store.set("s", "", json!(1)).await,
        store.store_global_program("", json!(1)).await,
    ] {
        assert!(matches!(r, Err(Error::Invalid { .. })), "{r:?}");
    }
    // A TTL beyond `MAX_TTL` or under 1 ms is refused, whether given at
    // creation or set by an update, and the update changes nothing.
    let too_long = snakepit_session::MAX_TTL + Duration::from_millis(1);
    for ttl in [too_long, Duration::ZERO, Duration::from_micros(999)] {
        let r = store.create_session("t", Some(ttl)).await;
        assert!(
            matches!(r, Err(Error::Invalid { what: "ttl", .. })),
            "{ttl:?}: {r:?}"
        );
    }
    store
        .create_session("t", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    for ttl_ms in [
        u64::MAX,
        snakepit_session::MAX_TTL.as_millis() as u64 + 1,
        0,
    ] {
        let r = store
            .update_session("t", |s| {
                s.ttl_ms = ttl_ms;
                s.metadata.insert("changed".into(), json!(true));
            })
            .await;
        assert!(
            matches!(r, Err(Error::Invalid { what: "ttl", .. })),
            "{r:?}"
        );
    }
    // A data key or program id no other operation takes (empty, or over
    // 512 bytes) is refused from an update too, and the update changes
    // nothing.
    for (key, program) in [
        ("", false),
        (long.as_str(), false),
        ("", true),
        (long.as_str(), true),
    ] {
        let r = store
            .update_session("t", |s| {
                s.metadata.insert("changed".into(), json!(true));
                match program {
                    true => s.programs.insert(key.to_owned(), json!(1)),
                    false => s.data.insert(key.to_owned(), json!(1)),
                };
            })
            .await;
        assert!(matches!(r, Err(Error::Invalid { .. })), "{key:.8}: {r:?}");
    }
    let t = store.get_session("t").await.unwrap();
    assert_eq!((t.ttl_ms, t.metadata.len()), (60_000, 0), "{t:?}");
    let longest = store
        .update_session("t", |s| {
            s.ttl_ms = snakepit_session::MAX_TTL.as_millis() as u64
        })
        .await
        .unwrap();
    assert_eq!(longest.ttl(), snakepit_session::MAX_TTL);
    assert_eq!(store.get("t", "nothing").await.unwrap(), None, "still live");
    store.ensure_session("s").await.unwrap();
    // Any text is a fine id or key, separators and unicode included.
    store.set("s", "d:p:ü {}", json!("v")).await.unwrap();
    assert_eq!(store.get("s", "d:p:ü {}").await.unwrap(), Some(json!("v")));
    assert_eq!(store.get_session("s").await.unwrap().data.len(), 1);
}

pub async fn programs<S: SessionStore>(store: &S) {
    store.create_session("s1", None).await.unwrap();
    let program = json!({"model": "gpt-4", "temperature": 0.8});
    store
        .store_program("s1", "prog_1", program.clone())
        .await
        .unwrap();
    assert_eq!(store.get_program("s1", "prog_1").await.unwrap(), program);
    assert!(matches!(
        store.get_program("s1", "prog_2").await,
        Err(Error::ProgramNotFound {
            session_id: Some(_),
            ..
        })
    ));
    assert!(store
        .get_program("s2", "prog_1")
        .await
        .unwrap_err()
        .is_gone());
    assert!(store
        .store_program("s2", "prog_1", json!(1))
        .await
        .unwrap_err()
        .is_gone());
    assert_eq!(
        store.get_session("s1").await.unwrap().programs["prog_1"],
        program
    );
    // Programs survive updates of other parts of the session.
    store
        .update_session("s1", |s| {
            s.data.insert("x".into(), json!(1));
        })
        .await
        .unwrap();
    assert_eq!(store.get_program("s1", "prog_1").await.unwrap(), program);
}

pub async fn global_programs<S: SessionStore>(store: &S) {
    let template =
        json!({"type": "qa_template", "prompt": "Answer the following question: {question}"});
    store
        .store_global_program("template_1", template.clone())
        .await
        .unwrap();
    assert_eq!(
        store.get_global_program("template_1").await.unwrap(),
        template
    );
    assert!(matches!(
        store.get_global_program("template_2").await,
        Err(Error::ProgramNotFound {
            session_id: None,
            ..
        })
    ));
    assert_eq!(store.stats().await.unwrap().global_programs, 1);
}

pub async fn stats<S: SessionStore>(store: &S) {
    let before = store.stats().await.unwrap();
    for i in 0..5 {
        store.create_session(&format!("st{i}"), None).await.unwrap();
    }
    store.ensure_session("st0").await.unwrap(); // exists: not created again
    store.ensure_session("st5").await.unwrap(); // created
    store.delete_session("st1").await.unwrap();
    let after = store.stats().await.unwrap();
    assert_eq!(after.sessions_created - before.sessions_created, 6);
    assert_eq!(after.sessions_deleted - before.sessions_deleted, 1);
    assert_eq!(after.active_sessions - before.active_sessions, 5);
}

/// TTL expiry with a short TTL; `cleanup_expired` frees and reports it.
pub async fn ttl_expiry<S: SessionStore>(store: &S) {
    let ends = record_ends(store);
    store
        .create_session("short", Some(Duration::from_millis(150)))
        .await
        .unwrap();
    store
        .create_session("long", Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    until(15, "the short session expires", || async {
        !store.session_exists("short").await.unwrap()
    })
    .await;
    assert!(store.session_exists("long").await.unwrap());
    assert_eq!(
        store.list_sessions().await.unwrap(),
        vec!["long".to_string()]
    );
    assert_eq!(store.stats().await.unwrap().active_sessions, 1);
    assert_eq!(store.cleanup_expired().await.unwrap(), 1);
    assert_eq!(store.cleanup_expired().await.unwrap(), 0);
    assert_eq!(
        *ends.lock().unwrap(),
        vec![("short".to_string(), EndReason::Expired)]
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.sessions_expired, 1);
    assert!(store.get_session("short").await.unwrap_err().is_gone());
    // Gone means gone: the id can start a new session.
    store.create_session("short", None).await.unwrap();
}

/// Each use extends the TTL: a session used every 300 ms outlives its
/// 1.5 s TTL several times over, then expires once left alone.
pub async fn sliding_ttl<S: SessionStore>(store: &S) {
    store
        .create_session("slide", Some(Duration::from_millis(1500)))
        .await
        .unwrap();
    let start = Instant::now();
    let mut uses = 0;
    while start.elapsed() < Duration::from_millis(4000) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        match uses % 3 {
            0 => store.set("slide", "n", json!(uses)).await.unwrap(),
            1 => drop(store.get("slide", "n").await.unwrap()),
            _ => store.ensure_session("slide").await.unwrap(),
        }
        uses += 1;
    }
    assert!(store.session_exists("slide").await.unwrap());
    until(15, "the idle session expires", || async {
        !store.session_exists("slide").await.unwrap()
    })
    .await;
}

/// Many writers at once: no update is lost, and updates do not erase data
/// set concurrently by key.
pub async fn concurrent_updates<S: SessionStore>(store: Arc<S>) {
    store.create_session("busy", None).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                store
                    .update_session("busy", |s| {
                        let n = s.metadata.get("n").and_then(|v| v.as_u64()).unwrap_or(0);
                        s.metadata.insert("n".into(), json!(n + 1));
                    })
                    .await
                    .unwrap();
                store
                    .set("busy", &format!("t{t}_{i}"), json!(i))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let s = store.get_session("busy").await.unwrap();
    assert_eq!(s.metadata["n"], 160);
    assert_eq!(s.data.len(), 160);
}

/// The background sweep frees expired sessions and reports them.
pub async fn background_sweep<S: SessionStore>(store: &S) {
    let ends = record_ends(store);
    store
        .create_session("swept", Some(Duration::from_millis(100)))
        .await
        .unwrap();
    until(15, "the sweep reports the expired session", || async {
        !ends.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        *ends.lock().unwrap(),
        vec![("swept".to_string(), EndReason::Expired)]
    );
    assert_eq!(store.stats().await.unwrap().sessions_expired, 1);
}

/// Generates one test per suite function for a store made by `$make`,
/// an async fn of (default TTL, sweep interval) returning (store, guard).
#[macro_export]
macro_rules! store_suite {
    ($make:path) => {
        async fn quiet() -> (
            std::sync::Arc<impl snakepit_session::SessionStore>,
            impl Sized,
        ) {
            let (s, g) = $make(
                std::time::Duration::from_secs(3600),
                std::time::Duration::from_secs(3600),
            )
            .await;
            (std::sync::Arc::new(s), g)
        }
        #[tokio::test]
        async fn lifecycle() {
            let (s, _g) = quiet().await;
            common::lifecycle(&*s).await;
        }
        #[tokio::test]
        async fn bad_input() {
            let (s, _g) = quiet().await;
            common::bad_input(&*s).await;
        }
        #[tokio::test]
        async fn programs() {
            let (s, _g) = quiet().await;
            common::programs(&*s).await;
        }
        #[tokio::test]
        async fn global_programs() {
            let (s, _g) = quiet().await;
            common::global_programs(&*s).await;
        }
        #[tokio::test]
        async fn stats() {
            let (s, _g) = quiet().await;
            common::stats(&*s).await;
        }
        #[tokio::test]
        async fn ttl_expiry() {
            let (s, _g) = quiet().await;
            common::ttl_expiry(&*s).await;
        }
        #[tokio::test]
        async fn sliding_ttl() {
            let (s, _g) = quiet().await;
            common::sliding_ttl(&*s).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_updates() {
            let (s, _g) = quiet().await;
            common::concurrent_updates(s).await;
        }
        #[tokio::test]
        async fn background_sweep() {
            let (s, _g) = $make(
                std::time::Duration::from_secs(3600),
                std::time::Duration::from_millis(50),
            )
            .await;
            common::background_sweep(&s).await;
        }
    };
}

/// A real `redis-server` on 127.0.0.1, on a free port, with no persistence,
/// in a temporary directory; stopped and removed on drop.
pub struct RedisServer {
    child: std::process::Child,
    dir: std::path::PathBuf,
    pub url: String,
}

impl RedisServer {
    /// Starts a server of this test's own. The port is free when it is
    /// picked, but a test running beside this one may take it before the
    /// server binds it (this server then exits, and the other test's
    /// answers): the server that answers is asked for its process id, and
    /// another port is tried until it is this one's.
    pub async fn start() -> RedisServer {
        for _ in 0..10 {
            let server = Self::start_on_a_free_port().await;
            if server.pid_answering().await == Some(server.child.id()) {
                return server;
            }
        }
        panic!("no redis-server of this test's own answered in 10 tries");
    }

    /// The `process_id` of the server answering on this one's port.
    async fn pid_answering(&self) -> Option<u32> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self
            .url
            .trim_start_matches("redis://")
            .trim_end_matches('/');
        let ask = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
            stream
                .write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
                .await
                .ok()?;
            let mut text = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = stream.read(&mut buf).await.ok()?;
                if n == 0 {
                    return None;
                }
                text.extend_from_slice(&buf[..n]);
                let info = String::from_utf8_lossy(&text);
                if let Some(rest) = info.split("process_id:").nth(1) {
                    if let Some((pid, _)) = rest.split_once("\r\n") {
                        return pid.trim().parse().ok();
                    }
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), ask)
            .await
            .ok()
            .flatten()
    }

    async fn start_on_a_free_port() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir =
            std::env::temp_dir().join(format!("snakepit-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        #[allow(clippy::disallowed_methods)] // a test server, not a worker
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed (cargo xtask setup installs it)");
        let server = RedisServer {
            child,
            dir,
            url: format!("redis://127.0.0.1:{port}/"),
        };
        let addr = format!("127.0.0.1:{port}");
        until(15, "redis-server accepts connections", || async {
            tokio::net::TcpStream::connect(&addr).await.is_ok()
        })
        .await;
        server
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A pool of one `session_wait_worker.py` (crates/core/tests/workers) over
/// `store`: `wait_then_get` creates the file `started`, waits for the file
/// `go`, then calls `ctx.session.get(key)` and answers the value, or the
/// type and message of the host-call error it caught.
pub async fn waiting_pool<S: SessionStore + 'static>(store: Arc<S>) -> snakepit_core::Pool {
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../core/tests/workers/session_wait_worker.py");
    snakepit_session::attach(
        snakepit_core::Pool::builder(snakepit_adapters::Bridge::python(script)),
        store,
    )
    .size(1)
    .configure(|c| c.sweep_on_start = false)
    .start()
    .await
    .unwrap()
}
