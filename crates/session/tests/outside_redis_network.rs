//! The Redis session store behind a misbehaving network, tested from
//! outside: a TCP proxy of this file's own stands between the store and a
//! real `redis-server`, and goes silent (a dead network path: connections
//! stay open, nothing passes either way), loses only the replies, resets
//! connections, refuses new ones, or lets new connections through while the
//! existing ones stay dead.
//!
//! docs/sessions.md, "When Redis goes away" (lines 196-225):
//!
//! - "Redis restarted, or the connection dropped: operations fail with
//!   `Error::Backend`, whose text names the operation and the cause ...
//!   Each operation that finds the connection down makes one attempt to
//!   reconnect, so operations fail fast while Redis is down and succeed
//!   again as soon as it is back";
//! - "Redis paused, overloaded or unreachable (no answer at all): every
//!   operation, reconnecting included, gives up after the store's timeout
//!   ... with `Error::Timeout` naming the operation and the timeout ... A
//!   timeout also opens a fresh connection in the background (one at a
//!   time), so a connection that hangs without ever dropping (a server gone
//!   silent behind a dead network path) is replaced as soon as a new one can
//!   be made, instead of after the many minutes TCP takes to give up.
//!   Connecting (`connect()`) is bounded by the same timeout.";
//! - "A write that timed out or whose connection dropped may or may not
//!   have been applied; it is not retried for you. Through the pool such a
//!   failure is `snakepit_core::Error::Session` and the call never ran."
//!
//! and the crate docs of `RedisStore` (crates/session/src/redis_store.rs:
//! 6-11, 232-238): "Every operation is bounded by the store's timeout; a
//! timeout also opens a fresh connection in the background, for a
//! connection that hangs without ever dropping"; "succeed again as soon as
//! it is back, without a new store".
#![cfg(feature = "redis")]

mod common;
mod redis_server;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis_server::{redis_cli, Redis};
use serde_json::{json, Value};
use snakepit_core::CallOptions;
use snakepit_session::{EndReason, Error, RedisStore, SessionStore};
use snakepit_tests::until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The store's timeout: short, so that the tests are quick.
const TIMEOUT: Duration = Duration::from_millis(400);

/// "Gives up after the store's timeout", generously: an operation that
/// takes longer than this did not give up after the timeout.
const BOUND: Duration = Duration::from_millis(2000);

/// Only turns a hang into a failure of the test.
const GUARD: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------

/// What the network between the store and Redis does now. Connections are
/// numbered in the order the proxy accepted them.
#[derive(Clone, Copy, Debug, Default)]
struct NetPath {
    /// Nothing passes on any connection, new ones included (they are
    /// accepted, and then nothing passes). What is sent meanwhile is held,
    /// and passed on once this is cleared: a path that comes back.
    silent: bool,
    /// Connections numbered below this pass nothing, ever again, and are
    /// never closed by the proxy: their path died without a FIN or an RST.
    dead_below: u64,
    /// Connections numbered below this are reset (RST to both ends).
    reset_below: u64,
    /// Connections numbered below this were forgotten by the far end (a
    /// restarted server host, a NAT that dropped its state): nothing of
    /// Redis's end reaches the store, not even its closing, and the next
    /// bytes the store sends are answered with an RST.
    forgotten_below: u64,
    /// The port is closed: connecting is refused.
    refuse: bool,
    /// Requests pass, replies are held (on every connection): each
    /// operation reaches Redis and its answer is lost on the way back.
    deaf: bool,
}

impl NetPath {
    fn passes(&self, n: u64) -> bool {
        !self.silent && n >= self.dead_below
    }
    fn resets(&self, n: u64) -> bool {
        n < self.reset_below
    }
    fn forgot(&self, n: u64) -> bool {
        n < self.forgotten_below
    }
}

/// How a connection through the proxy ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// The store closed its end (or it failed).
    Client,
    /// Redis closed its end.
    Server,
    /// The proxy reset it.
    Reset,
    /// The proxy stopped.
    Proxy,
}

/// A TCP proxy on 127.0.0.1 to a Redis server, switched by [`NetPath`].
/// Dropping it closes everything it holds.
struct Proxy {
    port: u16,
    path: watch::Sender<NetPath>,
    /// Connections accepted so far.
    accepted: Arc<AtomicU64>,
    /// Bytes from the store that the proxy holds and has not passed on.
    held: Arc<AtomicU64>,
    /// The connections that ended, and how.
    ended: Arc<Mutex<HashMap<u64, End>>>,
    /// The port takes connections.
    listening: Arc<AtomicBool>,
    server: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (path, rx) = watch::channel(NetPath::default());
        let accepted = Arc::new(AtomicU64::new(0));
        let held = Arc::new(AtomicU64::new(0));
        let ended = Arc::new(Mutex::new(HashMap::new()));
        let listening = Arc::new(AtomicBool::new(true));
        let server = tokio::spawn(serve(
            listener,
            port,
            upstream,
            rx,
            Shared {
                accepted: accepted.clone(),
                held: held.clone(),
                ended: ended.clone(),
                listening: listening.clone(),
            },
        ));
        Proxy {
            port,
            path,
            accepted,
            held,
            ended,
            listening,
            server,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    fn ended(&self, n: u64) -> Option<End> {
        self.ended.lock().unwrap().get(&n).copied()
    }

    /// Nothing passes any more, on any connection, new ones included.
    fn silence(&self) {
        self.path.send_modify(|p| p.silent = true);
    }

    /// Bytes pass again, both ways (but not on the dead connections).
    /// Takes effect at once: each relay looks before it passes anything on.
    fn heal(&self) {
        self.path.send_modify(|p| {
            p.silent = false;
            p.deaf = false;
        });
    }

    /// Requests still pass, replies are held.
    fn deafen(&self) {
        self.path.send_modify(|p| p.deaf = true);
    }

    /// The connections made so far pass nothing, for good, and stay open;
    /// new ones get through. Returns how many there were.
    fn kill_existing(&self) -> u64 {
        let n = self.accepted();
        self.path.send_modify(|p| p.dead_below = n);
        n
    }

    /// The connections made so far are forgotten ([`NetPath`]): the store
    /// does not see them close, and its next write on each is reset.
    fn forget_existing(&self) {
        let n = self.accepted();
        self.path.send_modify(|p| p.forgotten_below = n);
    }

    /// Connecting is refused (or taken again), from when this returns.
    async fn refuse(&self, refuse: bool) {
        self.path.send_modify(|p| p.refuse = refuse);
        until(5, "the proxy's port is closed or open as asked", || async {
            self.listening.load(Ordering::SeqCst) != refuse
        })
        .await;
    }

    /// Resets every connection made so far, and waits until each is gone.
    async fn reset_existing(&self) -> u64 {
        let n = self.accepted();
        self.path.send_modify(|p| p.reset_below = n);
        until(5, "the proxy has reset every connection", || async {
            let ended = self.ended.lock().unwrap();
            (0..n).all(|i| ended.contains_key(&i))
        })
        .await;
        n
    }

    /// Waits until the proxy holds some bytes from the store: a request
    /// sent into the silence.
    async fn until_holding(&self) {
        until(5, "a request reached the silent path", || async {
            self.held.load(Ordering::SeqCst) > 0
        })
        .await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.server.abort();
        // The relays end when `path` (the sender) is dropped.
    }
}

/// What the proxy's tasks share.
#[derive(Clone)]
struct Shared {
    accepted: Arc<AtomicU64>,
    held: Arc<AtomicU64>,
    ended: Arc<Mutex<HashMap<u64, End>>>,
    listening: Arc<AtomicBool>,
}

async fn accept(listener: Option<&TcpListener>) -> std::io::Result<TcpStream> {
    match listener {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// Takes connections on `port` (closing the port while refusing, opening
/// it again after) and relays each to `upstream`.
async fn serve(
    listener: TcpListener,
    port: u16,
    upstream: u16,
    mut path: watch::Receiver<NetPath>,
    shared: Shared,
) {
    let mut listener = Some(listener);
    loop {
        let refuse = path.borrow_and_update().refuse;
        if refuse {
            listener = None;
        } else if listener.is_none() {
            let mut again = None;
            for _ in 0..100 {
                match TcpListener::bind(("127.0.0.1", port)).await {
                    Ok(l) => {
                        again = Some(l);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            listener = Some(again.expect("the proxy's port is free again"));
        }
        shared.listening.store(listener.is_some(), Ordering::SeqCst);
        tokio::select! {
            conn = accept(listener.as_ref()) => {
                if let Ok(client) = conn {
                    let n = shared.accepted.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(relay(n, client, upstream, path.clone(), shared.clone()));
                }
            }
            changed = path.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Relays connection `n` between the store and Redis, as [`NetPath`] says.
/// Bytes from the store are always read (so that its closing is seen) but
/// held while the path does not pass; Redis is not read from meanwhile.
async fn relay(
    n: u64,
    mut client: TcpStream,
    upstream: u16,
    mut path: watch::Receiver<NetPath>,
    shared: Shared,
) {
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        shared.ended.lock().unwrap().insert(n, End::Server);
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let (mut a, mut b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let end = loop {
        let now = *path.borrow_and_update();
        if now.resets(n) {
            break End::Reset;
        }
        let passes = now.passes(n) && !now.forgot(n);
        if passes {
            if !up.is_empty() {
                shared.held.fetch_sub(up.len() as u64, Ordering::SeqCst);
                if server.write_all(&up).await.is_err() {
                    break End::Server;
                }
                up.clear();
            }
            if !down.is_empty() && !now.deaf {
                if client.write_all(&down).await.is_err() {
                    break End::Client;
                }
                down.clear();
            }
        }
        tokio::select! {
            r = client.read(&mut a) => match r {
                Ok(0) | Err(_) => break End::Client,
                Ok(_) if path.borrow().forgot(n) => break End::Reset,
                Ok(k) => {
                    shared.held.fetch_add(k as u64, Ordering::SeqCst);
                    up.extend_from_slice(&a[..k]);
                }
            },
            r = server.read(&mut b), if passes => match r {
                // Forgotten while this read was pending (Redis killed just
                // after `forget_existing`, before this task saw the
                // change): its closing is hidden from the store too.
                Ok(0) | Err(_) if path.borrow().forgot(n) => {}
                Ok(0) | Err(_) => break End::Server,
                Ok(k) => down.extend_from_slice(&b[..k]),
            },
            changed = path.changed() => {
                if changed.is_err() {
                    break End::Proxy;
                }
            }
        }
    };
    shared.held.fetch_sub(up.len() as u64, Ordering::SeqCst);
    if end == End::Reset {
        // SO_LINGER 0: closing sends an RST. Zero never blocks the thread.
        #[allow(deprecated)]
        let _ = (
            client.set_linger(Some(Duration::ZERO)),
            server.set_linger(Some(Duration::ZERO)),
        );
    }
    drop((client, server));
    shared.ended.lock().unwrap().insert(n, end);
}

// ---------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------

/// A store through `url` with the short timeout; no background sweep
/// unless a test asks for one.
async fn store_at(url: String) -> RedisStore {
    RedisStore::builder(url)
        .timeout(TIMEOUT)
        .sweep_interval(Duration::from_secs(3600))
        .connect()
        .await
        .unwrap()
}

/// A Redis server, the proxy in front of it, a store through the proxy.
async fn setup() -> (Redis, Proxy, RedisStore) {
    let redis = Redis::start().await;
    let proxy = Proxy::start(redis.port).await;
    let store = store_at(proxy.url()).await;
    (redis, proxy, store)
}

/// The result of `fut` and how long it took; a hang fails the test.
async fn timed<T>(what: &str, fut: impl Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let r = tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: still running after {GUARD:?}"));
    (r, start.elapsed())
}

/// Runs the store operation `op` on session `id` (a few other names for
/// the writes), its result reduced to success or the error.
async fn run(store: &RedisStore, op: &'static str, id: &str) -> Result<(), Error> {
    match op {
        "get" => store.get(id, "a").await.map(drop),
        "set" => store.set(id, "w", json!("written")).await,
        "delete" => store.delete(id, "w").await.map(drop),
        "ensure_session" => store.ensure_session(id).await,
        "create_session" => store
            .create_session(&format!("{id}-new"), None)
            .await
            .map(drop),
        "get_session" => store.get_session(id).await.map(drop),
        "update_session" => store
            .update_session(id, |s| {
                s.metadata.insert("m".into(), json!(1));
            })
            .await
            .map(drop),
        "delete_session" => store.delete_session(&format!("{id}-gone")).await.map(drop),
        "session_exists" => store.session_exists(id).await.map(drop),
        "list_sessions" => store.list_sessions().await.map(drop),
        "stats" => store.stats().await.map(drop),
        "store_program" => store.store_program(id, "p", json!({"v": 1})).await,
        "get_program" => store.get_program(id, "p").await.map(drop),
        "store_global_program" => store.store_global_program("gp", json!({"v": 1})).await,
        "get_global_program" => store.get_global_program("gp").await.map(drop),
        "cleanup_expired" => store.cleanup_expired().await.map(drop),
        other => unreachable!("no operation {other}"),
    }
}

/// Every operation of the store, by the name its errors give.
const ALL_OPS: [&str; 16] = [
    "get",
    "set",
    "delete",
    "ensure_session",
    "create_session",
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
];

/// `Error::Timeout` naming `op` and the store's timeout.
fn is_timeout(err: &Error, op: &str) -> bool {
    matches!(err, Error::Timeout { operation, after } if *operation == op && *after == TIMEOUT)
}

/// `Error::Backend` whose text names `op` and gives a cause after it.
fn is_backend(err: &Error, op: &str) -> bool {
    match err {
        Error::Backend(m) => m
            .split(&format!("redis `{op}`: "))
            .nth(1)
            .is_some_and(|cause| !cause.is_empty()),
        _ => false,
    }
}

/// A session with data, a program and a global program.
async fn fill(store: &RedisStore, id: &str) {
    store.ensure_session(id).await.unwrap();
    store.set(id, "a", json!("kept")).await.unwrap();
    store.store_program(id, "p", json!({"v": 1})).await.unwrap();
    store
        .store_global_program("gp", json!({"v": 1}))
        .await
        .unwrap();
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "snakepit-outside-redis-network-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Arguments of `wait_then_get` that let the handler go on at once and
/// leave `marker` behind if it ran.
fn runs_at_once(marker: &FsPath) -> Value {
    json!({"key": "a", "started": marker, "go": marker})
}

// ---------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------

/// sessions.md:217-221: "A timeout also opens a fresh connection in the
/// background (one at a time), so a connection that hangs without ever
/// dropping (a server gone silent behind a dead network path) is replaced
/// as soon as a new one can be made". The store's only connection dies
/// without a FIN or an RST while new connections get through; three tasks
/// keep using the store (no pause, no new store, nothing done by the test).
/// Each failure is `Timeout` naming its operation and the store's timeout,
/// within about that timeout; and, since a new connection can be made at
/// once, each task fails at most 3 times before it succeeds: the operation
/// that found the connection silent, one already started on it before its
/// replacement was in place, and one spare for a loaded machine. After
/// that every operation succeeds, the data intact, and the proxy saw the
/// new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gone_silent_is_replaced_while_new_ones_get_through() {
    let (_redis, proxy, store) = setup().await;
    for t in 0..3 {
        fill(&store, &format!("s{t}")).await;
    }
    let dead = proxy.kill_existing();
    assert!(dead >= 1);

    let mut tasks = Vec::new();
    for t in 0..3 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("s{t}");
            let ops = ["get", "set", "ensure_session", "get_session"];
            let mut failures = Vec::new();
            let mut successes = 0;
            let mut i = t;
            while successes < 6 && failures.len() <= 3 {
                let op = ops[i % ops.len()];
                i += 1;
                let (r, took) = timed(op, run(&store, op, &id)).await;
                match r {
                    Ok(()) => successes += 1,
                    Err(e) => {
                        assert!(
                            successes == 0,
                            "task {t}: {op} failed after a success: {e:?}"
                        );
                        failures.push((op, e, took));
                    }
                }
            }
            (failures, successes)
        }));
    }
    for (t, task) in tasks.into_iter().enumerate() {
        let (failures, successes) = task.await.unwrap();
        for (op, e, took) in &failures {
            assert!(is_timeout(e, op), "task {t}: {op}: {e:?}");
            assert!(*took <= BOUND, "task {t}: {op} took {took:?}");
        }
        assert!(
            failures.len() <= 3 && successes == 6,
            "task {t}: the silent connection was not replaced after 3 timeouts: \
             {failures:?}"
        );
    }
    assert!(proxy.accepted() > dead, "a new connection was made");
    // Replaced, not kept: the store lets the dead connection go (the proxy
    // never closes it; only the store can).
    until(5, "the store closed the dead connection", || async {
        (0..dead).all(|n| proxy.ended(n) == Some(End::Client))
    })
    .await;
    for t in 0..3 {
        let id = format!("s{t}");
        assert_eq!(store.get(&id, "a").await.unwrap(), Some(json!("kept")));
        assert_eq!(store.get(&id, "w").await.unwrap(), Some(json!("written")));
        assert_eq!(store.get_program(&id, "p").await.unwrap(), json!({"v": 1}));
    }
}

/// sessions.md:218-221, the exact case: "a connection that hangs without
/// ever dropping ... is replaced as soon as a new one can be made". The
/// path dies three times in a row; the first time, new connections are
/// swallowed too for a while (every background replacement hangs and
/// fails), and only then get through while the old connection stays dead.
/// Each time, once a new connection can be made, the same store fails at
/// most 3 more operations (each a `Timeout` naming it) and then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_dies_again_and_again_is_replaced_each_time() {
    let (_redis, proxy, store) = setup().await;
    fill(&store, "s").await;
    for round in 0..3 {
        let dead = proxy.kill_existing();
        if round == 0 {
            proxy.silence();
            for op in ["get", "set", "get"] {
                let (r, took) = timed(op, run(&store, op, "s")).await;
                let e = r.expect_err(op);
                assert!(is_timeout(&e, op), "{op}: {e:?}");
                assert!(took <= BOUND, "{op} took {took:?}");
            }
            proxy.heal();
        }
        let mut failures = Vec::new();
        loop {
            let (r, took) = timed("get", store.get("s", "a")).await;
            match r {
                Ok(v) => {
                    assert_eq!(v, Some(json!("kept")), "round {round}");
                    break;
                }
                Err(e) => {
                    assert!(is_timeout(&e, "get"), "round {round}: {e:?}");
                    assert!(took <= BOUND, "round {round}: get took {took:?}");
                    failures.push(e);
                    assert!(
                        failures.len() <= 3,
                        "round {round}: new connections get through, the store still \
                         fails: {failures:?}"
                    );
                }
            }
        }
        assert!(proxy.accepted() > dead, "round {round}: a new connection");
    }
}

/// sessions.md:217-218: "A timeout also opens a fresh connection in the
/// background (one at a time)". With nothing getting through, three waves
/// of 20 operations at once all time out (60 timeouts); the store opens
/// at most about one connection per wave (each attempt hangs for the
/// timeout), not one per timeout: the proxy sees at most 6 new
/// connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_open_one_fresh_connection_at_a_time() {
    let (_redis, proxy, store) = setup().await;
    fill(&store, "s").await;
    let before = proxy.accepted();
    proxy.silence();
    for wave in 0..3 {
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                timed("get", store.get("s", "a")).await
            }));
        }
        for task in tasks {
            let (r, took) = task.await.unwrap();
            let e = r.expect_err("nothing gets through");
            assert!(is_timeout(&e, "get"), "wave {wave}: {e:?}");
            assert!(took <= BOUND, "wave {wave}: get took {took:?}");
        }
    }
    // Let the last attempt show up at the proxy, if one was started.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let opened = proxy.accepted() - before;
    assert!(
        opened <= 6,
        "60 timeouts opened {opened} connections: not one at a time"
    );
    proxy.heal();
    until(5, "the store works again", || async {
        store.get("s", "a").await.is_ok()
    })
    .await;
}

/// sessions.md:214-218: with nothing getting through at all, "every
/// operation, reconnecting included, gives up after the store's timeout
/// ... with `Error::Timeout` naming the operation and the timeout". Each
/// of the store's 16 operations, at once, and then three in a row (each
/// one's background reconnection also swallowed): a timeout naming it
/// within about the timeout; nothing hangs. Once the path comes back, the
/// first operation succeeds and reads return their own values (the late
/// replies to the timed-out operations are not handed to later ones).
/// sessions.md:223-224 "A write that timed out ... may or may not have been
/// applied; it is not retried for you": a `set` that timed out has bumped
/// its session's version once or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_times_out_naming_itself_while_nothing_gets_through() {
    let (redis, proxy, store) = setup().await;
    fill(&store, "s").await;
    store.set("s", "b", json!("b")).await.unwrap();
    store.ensure_session("w").await.unwrap();
    // The count of writes that begins the version (`<count>.<clock>`).
    let version = || -> u64 {
        let v = redis_cli(redis.port, &["HGET", "snakepit:s:w", "v"]);
        v.split('.').next().unwrap().parse().unwrap()
    };
    let before = version();

    proxy.silence();
    let mut tasks = Vec::new();
    for op in ALL_OPS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            (op, timed(op, run(&store, op, "s")).await)
        }));
    }
    for task in tasks {
        let (op, (r, took)) = task.await.unwrap();
        let e = r.expect_err(op);
        assert!(is_timeout(&e, op), "{op}: {e:?}");
        assert!(took <= BOUND, "{op} took {took:?}");
    }
    for op in ["get", "set", "stats"] {
        let id = if op == "set" { "w" } else { "s" };
        let (r, took) = timed(op, run(&store, op, id)).await;
        let e = r.expect_err(op);
        assert!(is_timeout(&e, op), "{op}: {e:?}");
        assert!(took <= BOUND, "{op} took {took:?}");
    }

    proxy.heal();
    // Room for a background reconnection tried during the silence to end.
    tokio::time::sleep(TIMEOUT * 2).await;
    let (first, _) = timed("get", store.get("s", "a")).await;
    assert_eq!(
        first.map_err(|e| e.to_string()),
        Ok(Some(json!("kept"))),
        "the first operation once the path is back"
    );
    assert_eq!(store.get("s", "b").await.unwrap(), Some(json!("b")));
    assert_eq!(store.get("s", "a").await.unwrap(), Some(json!("kept")));
    // A late `set` of "w" may still be on its way through the old
    // connection: give it time, then count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = version();
    assert!(
        after == before || after == before + 1,
        "the timed-out write landed at most once: version {before} -> {after}"
    );
}

/// sessions.md:202-207: "the connection dropped: operations fail with
/// `Error::Backend`, whose text names the operation and the cause ... Each
/// operation that finds the connection down makes one attempt to
/// reconnect, so operations fail fast ... and succeed again as soon as it
/// is back." Redis never went away: the proxy resets the store's
/// connection (RST) six times, before a different operation each time. The
/// operation that finds it dropped succeeds or fails with `Backend` naming
/// it (never a `Timeout`: nothing was silent), and the next one succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_connection_fails_one_operation_at_most() {
    let (_redis, proxy, store) = setup().await;
    fill(&store, "s").await;
    for op in [
        "get",
        "set",
        "ensure_session",
        "get_session",
        "update_session",
        "stats",
    ] {
        proxy.reset_existing().await;
        let (r, took) = timed(op, run(&store, op, "s")).await;
        if let Err(e) = &r {
            assert!(is_backend(e, op), "{op}, first after the reset: {e:?}");
        }
        assert!(took <= BOUND, "{op} took {took:?}");
        let (again, _) = timed(op, run(&store, op, "s")).await;
        assert!(
            again.is_ok(),
            "{op}, second after the reset ({r:?} first): {again:?}"
        );
    }
    assert_eq!(store.get("s", "a").await.unwrap(), Some(json!("kept")));
}

/// sessions.md:202-203: "the connection dropped: operations fail with
/// `Error::Backend`". An operation that is not repeated (`create_session`)
/// waiting on a dead connection (a store timeout of 8 s) whose connection
/// is then reset fails with `Backend` naming it, not with a `Timeout` at
/// the end of its 8 s; the next one succeeds over a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_waiting_on_a_connection_that_is_reset_fails_with_backend() {
    let redis = Redis::start().await;
    let proxy = Proxy::start(redis.port).await;
    let store = RedisStore::builder(proxy.url())
        .timeout(Duration::from_secs(8))
        .sweep_interval(Duration::from_secs(3600))
        .connect()
        .await
        .unwrap();
    fill(&store, "s").await;
    proxy.kill_existing();
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move { store.create_session("new", None).await })
    };
    proxy.until_holding().await;
    proxy.reset_existing().await;
    let (r, took) = timed("create_session", waiting).await;
    let e = r.unwrap().expect_err("the connection was reset");
    assert!(is_backend(&e, "create_session"), "{e:?} after {took:?}");
    assert_eq!(store.get("s", "a").await.unwrap(), Some(json!("kept")));
}

/// sessions.md:214-216: "every operation, reconnecting included, gives up
/// after the store's timeout". The connection is reset and every new one
/// is accepted but swallowed (the reconnection the dropped connection
/// calls for hangs): each operation fails within about the timeout,
/// naming itself (`Backend` for the dropped connection, `Timeout` with the
/// store's timeout for the hanging reconnection); the last ones are
/// timeouts. Once new connections get through, the same store succeeds
/// again after at most 3 more failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_through_a_path_that_swallows_new_connections_is_bounded() {
    let (_redis, proxy, store) = setup().await;
    fill(&store, "s").await;
    proxy.silence();
    proxy.reset_existing().await;
    let mut seen = Vec::new();
    for op in ["get", "set", "ensure_session", "get", "stats"] {
        let (r, took) = timed(op, run(&store, op, "s")).await;
        let e = r.expect_err(op);
        assert!(
            is_timeout(&e, op) || is_backend(&e, op),
            "{op}: {e:?} ({seen:?})"
        );
        assert!(took <= BOUND, "{op} took {took:?}");
        seen.push((op, e));
    }
    assert!(
        seen[2..].iter().all(|(op, e)| is_timeout(e, op)),
        "a hanging reconnection is a timeout: {seen:?}"
    );

    proxy.heal();
    let mut failures = Vec::new();
    loop {
        let (r, took) = timed("get", store.get("s", "a")).await;
        match r {
            Ok(v) => {
                assert_eq!(v, Some(json!("kept")));
                break;
            }
            Err(e) => {
                assert!(is_timeout(&e, "get") || is_backend(&e, "get"), "{e:?}");
                assert!(took <= BOUND, "get took {took:?}");
                failures.push(e);
                assert!(
                    failures.len() <= 3,
                    "the path is back, the store still fails: {failures:?}"
                );
            }
        }
    }
}

/// sessions.md:221-222: "Connecting (`connect()`) is bounded by the same
/// timeout." Through a path that takes the connection and then passes
/// nothing, `connect()` fails with `Timeout` naming `connect` and the
/// timeout, within about it; with the port refusing, it fails fast with a
/// `Backend` error naming `connect`; once the path is back a new store
/// connects and reads what was there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_through_a_silent_path_times_out() {
    let redis = Redis::start().await;
    let proxy = Proxy::start(redis.port).await;
    fill(&store_at(proxy.url()).await, "s").await;

    proxy.silence();
    let (r, took) = timed(
        "connect",
        RedisStore::builder(proxy.url()).timeout(TIMEOUT).connect(),
    )
    .await;
    let e = r.expect_err("connect through a silent path");
    assert!(is_timeout(&e, "connect"), "{e:?}");
    assert!(took <= BOUND, "connect took {took:?}");

    proxy.heal();
    proxy.refuse(true).await;
    let (r, took) = timed(
        "connect",
        RedisStore::builder(proxy.url())
            .timeout(Duration::from_secs(8))
            .connect(),
    )
    .await;
    let e = r.expect_err("connect to a refusing port");
    assert!(is_backend(&e, "connect"), "{e:?}");
    assert!(took <= BOUND, "connect took {took:?}");

    proxy.refuse(false).await;
    let store = store_at(proxy.url()).await;
    assert_eq!(store.get("s", "a").await.unwrap(), Some(json!("kept")));
}

/// sessions.md:202-210: with the connection dropped and new connections
/// refused, operations "fail fast" with `Backend` naming the operation
/// (a store timeout of 8 s: not timeouts); "an operation whose command was
/// refused a connection ... runs once more within its timeout, so the first
/// one after Redis returns does not fail with the refusal of a reconnection
/// tried while it was down": the first operation once the port takes
/// connections again succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reconnections_fail_fast_and_the_first_operation_after_succeeds() {
    let redis = Redis::start().await;
    let proxy = Proxy::start(redis.port).await;
    let store = RedisStore::builder(proxy.url())
        .timeout(Duration::from_secs(8))
        .sweep_interval(Duration::from_secs(3600))
        .connect()
        .await
        .unwrap();
    fill(&store, "s").await;
    proxy.refuse(true).await;
    proxy.reset_existing().await;
    let mut causes = Vec::new();
    for op in ["get", "set", "ensure_session", "stats"] {
        let (r, took) = timed(op, run(&store, op, "s")).await;
        let e = r.expect_err(op);
        assert!(is_backend(&e, op), "{op}: {e:?}");
        assert!(took <= BOUND, "{op} took {took:?}: not fast");
        causes.push(e.to_string());
    }
    assert!(
        causes[1..]
            .iter()
            .all(|c| c.to_lowercase().contains("refused")),
        "{causes:?}"
    );
    proxy.refuse(false).await;
    let (first, _) = timed("get", store.get("s", "a")).await;
    assert_eq!(
        first.map_err(|e| e.to_string()),
        Ok(Some(json!("kept"))),
        "the first operation once connections are taken again"
    );
}

/// The store's sweep heals it too: sessions.md:217-218 ("A timeout also
/// opens a fresh connection in the background") and 166-168 ("each host's
/// sweep finds expired ids in `idx`, removes them and tells its
/// listeners"). With the store's connection dead (new ones get through)
/// and no operation made by anyone, the sweep's own timeout replaces the
/// connection, and the expiry of a session whose TTL ran out meanwhile is
/// reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_replaces_a_dead_connection_and_reports_expiries() {
    let redis = Redis::start().await;
    let proxy = Proxy::start(redis.port).await;
    let store = RedisStore::builder(proxy.url())
        .timeout(TIMEOUT)
        .sweep_interval(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let ends = common::record_ends(&store);
    store
        .create_session("short", Some(Duration::from_millis(800)))
        .await
        .unwrap();
    let dead = proxy.kill_existing();
    until(8, "the sweep reported the expiry", || async {
        ends.lock()
            .unwrap()
            .contains(&("short".to_string(), EndReason::Expired))
    })
    .await;
    assert!(proxy.accepted() > dead, "a new connection was made");
}

/// Through a pool (sessions.md:33-37, 54-55 and 223-225): "If the store fails
/// (Redis down), the call fails with `snakepit_core::Error::Session` and
/// never runs (`never_ran()` is true)"; "Through the pool such a failure is
/// `snakepit_core::Error::Session` and the call never ran"; and a handler
/// already running gets `SessionStoreError` ("the store failed: Redis down
/// or not answering"). With nothing getting through: a session call fails
/// so, naming `ensure_session`, and its handler never ran (the file it
/// would make is absent; the worker's completed calls unchanged), and so
/// does each other kind of session call (`execute_with`, `call`,
/// `execute_stream`); a call without a session is not held up by the
/// store at all. Once the path is back, session calls run again.
/// Then the existing connections die while new ones get through: session
/// calls fail (`Session`, never ran) at most 3 times, then run, with nothing
/// done to the store or the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_session_calls_never_run_while_the_path_is_dead_then_run_again() {
    let (_redis, proxy, store) = setup().await;
    let store = Arc::new(store);
    let pool = common::waiting_pool(store.clone()).await;
    let dir = temp_dir("pool");
    store.ensure_session("user").await.unwrap();
    store.set("user", "a", json!("kept")).await.unwrap();
    let control = dir.join("control");
    let r = pool
        .execute_in_session("user", "wait_then_get", runs_at_once(&control))
        .await
        .unwrap();
    assert_eq!(r, json!({"value": "kept"}), "the control");
    assert!(control.exists());

    // A handler running when the path goes silent: its `ctx.session.get`
    // fails with the documented type, naming the operation.
    let (started, go) = (dir.join("started"), dir.join("go"));
    let call = {
        let pool = pool.clone();
        let args = json!({"key": "a", "started": started, "go": go});
        tokio::spawn(async move { pool.execute_in_session("user", "wait_then_get", args).await })
    };
    until(10, "the handler started", || async { started.exists() }).await;
    proxy.silence();
    std::fs::write(&go, b"").unwrap();
    let (r, _) = timed("the running call", call).await;
    let r = r.unwrap().unwrap();
    assert_eq!(r["caught"], "SessionStoreError", "{r}");
    assert!(
        r["message"].as_str().unwrap_or_default().contains("`get`"),
        "{r}"
    );

    let completed = pool.stats().completed;
    let marker = dir.join("silent");
    let (r, took) = timed(
        "a session call",
        pool.execute_in_session("user", "wait_then_get", runs_at_once(&marker)),
    )
    .await;
    let err = r.expect_err("a session call while nothing gets through");
    assert!(
        matches!(&err, snakepit_core::Error::Session { session_id, .. } if session_id == "user")
            && err.never_ran(),
        "{err:?}"
    );
    assert!(err.to_string().contains("`ensure_session`"), "{err}");
    assert!(took <= BOUND, "the call took {took:?}");
    assert!(!marker.exists(), "the handler ran");
    assert_eq!(pool.stats().completed, completed, "the worker ran a call");

    // The other kinds of session call (sessions.md:33-34): the same.
    let opts = || CallOptions::new().session("user");
    let with = dir.join("with");
    let (r, _) = timed(
        "execute_with",
        pool.execute_with("wait_then_get", runs_at_once(&with), opts()),
    )
    .await;
    let typed = dir.join("typed");
    let (t, _) = timed(
        "call",
        pool.call::<_, Value>("wait_then_get", &runs_at_once(&typed), opts()),
    )
    .await;
    let streamed = dir.join("streamed");
    let (st, _) = timed(
        "execute_stream",
        pool.execute_stream("wait_then_get", runs_at_once(&streamed), opts()),
    )
    .await;
    for (what, r, marker) in [
        ("execute_with", r.err(), &with),
        ("call", t.err(), &typed),
        ("execute_stream", st.err(), &streamed),
    ] {
        assert!(
            matches!(&r, Some(e @ snakepit_core::Error::Session { .. }) if e.never_ran()),
            "{what}: {r:?}"
        );
        assert!(!marker.exists(), "{what}: the handler ran");
    }
    assert_eq!(pool.stats().completed, completed, "the worker ran a call");

    // A call without a session does not touch the store.
    let plain = dir.join("plain");
    let (r, _) = timed(
        "a call without a session",
        pool.execute("wait_then_get", runs_at_once(&plain)),
    )
    .await;
    assert_eq!(r.unwrap()["caught"], "NoSession");
    assert!(plain.exists());

    proxy.heal();
    let mut failures = 0;
    let back = dir.join("back");
    loop {
        let (r, _) = timed(
            "a session call",
            pool.execute_in_session("user", "wait_then_get", runs_at_once(&back)),
        )
        .await;
        match r {
            Ok(v) => {
                assert_eq!(v, json!({"value": "kept"}));
                break;
            }
            Err(e) => {
                assert!(e.never_ran() && !back.exists(), "{e:?}");
                failures += 1;
                assert!(failures <= 3, "the path is back, calls still fail: {e:?}");
                tokio::time::sleep(TIMEOUT).await;
            }
        }
    }

    proxy.kill_existing();
    let mut failures = Vec::new();
    for i in 0.. {
        let marker = dir.join(format!("dead-{i}"));
        let (r, took) = timed(
            "a session call",
            pool.execute_in_session("user", "wait_then_get", runs_at_once(&marker)),
        )
        .await;
        match r {
            Ok(v) => {
                assert_eq!(v, json!({"value": "kept"}));
                break;
            }
            Err(e) => {
                assert!(
                    matches!(&e, snakepit_core::Error::Session { .. }) && e.never_ran(),
                    "{e:?}"
                );
                assert!(!marker.exists(), "call {i} failed but its handler ran");
                assert!(took <= BOUND, "the call took {took:?}");
                failures.push(e.to_string());
                assert!(
                    failures.len() <= 3,
                    "the dead connection was not replaced: {failures:#?}"
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    pool.shutdown().await.unwrap();
}

/// The ids of the clients `redis-server` has connected now, but for the
/// `redis-cli` that asks.
fn client_ids(port: u16) -> std::collections::BTreeSet<u64> {
    redis_cli(port, &["CLIENT", "LIST"])
        .lines()
        .filter(|l| !l.contains("cmd=client|list"))
        .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
        .collect()
}

/// sessions.md:202-207: "Redis restarted, or the connection dropped: ...
/// Each operation that finds the connection down makes one attempt to
/// reconnect, so operations fail fast while Redis is down and succeed
/// again as soon as it is back"; redis_store.rs:6-9: "opened again after
/// it drops (each operation that finds it down makes one attempt, so
/// operations fail fast while the server is away and succeed as soon as
/// it is back)". Redis drops the store's connection while
/// the store is idle and is reachable all along: (1) its own `timeout`
/// setting closes the idle client (as a NAT or load balancer idle timeout
/// would); (2) it is restarted while the store is idle. In both, the
/// first operation made afterwards finds the connection down, and
/// reconnecting would succeed at once: it must succeed. sessions.md ("When
/// Redis goes away"): one written to the old connection before the store
/// saw it close "is repeated once on a fresh connection, within its
/// timeout, and succeeds, if it is safe to repeat: every operation but
/// `create_session`": after a restart (without persistence, and with
/// AOF) behind a path that keeps the old connection's closing from the
/// store, each such operation is the first after the restart, and
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_operation_after_an_idle_connection_dropped_succeeds() {
    let mut redis = Redis::start_with(&["--timeout", "1"], false).await;
    let store = store_at(redis.url()).await;
    fill(&store, "s").await;
    let port = redis.port;
    let before = tokio::task::spawn_blocking(move || client_ids(port))
        .await
        .unwrap();
    assert!(!before.is_empty(), "the store is connected");
    until(8, "redis-server closed the idle store's connection", || {
        let before = before.clone();
        async move {
            tokio::task::spawn_blocking(move || client_ids(port).is_disjoint(&before))
                .await
                .unwrap()
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (after_idle, _) = timed("get", store.get("s", "a")).await;

    assert!(
        matches!(&after_idle, Ok(Some(v)) if *v == json!("kept")),
        "Redis up all along, the first operation after the drop: {after_idle:?}"
    );

    // sessions.md: after a restart while idle, an operation that is safe to
    // repeat and was written to the old connection before the store saw it
    // close is repeated once on a fresh one: it succeeds. The proxy keeps
    // the old connection's closing from the store, so that each operation
    // below is written to it and reset. Without persistence the session is
    // gone (`NotFound` or `ProgramNotFound` is then the answer); with AOF it is kept.
    let mut aof =
        Redis::start_with(&["--appendonly", "yes", "--appendfsync", "always"], false).await;
    for (server, kept) in [(&mut redis, false), (&mut aof, true)] {
        let proxy = Proxy::start(server.port).await;
        let store = store_at(proxy.url()).await;
        for op in repeated_ops() {
            fill(&store, "s").await;
            proxy.forget_existing();
            server.kill();
            server.run().await;
            let r = run(&store, op, "s").await;
            let ok = match &r {
                Ok(()) => true,
                Err(Error::NotFound(_) | Error::ProgramNotFound { .. }) => !kept,
                Err(_) => false,
            };
            assert!(
                ok,
                "the first `{op}` after a restart while idle (AOF: {kept}): {r:?}"
            );
        }
    }
}

/// sessions.md ("When Redis goes away"): "`create_session` is not
/// repeated: ... it fails once with `Error::Backend`". A create written to a
/// connection that turns out dead fails with the reset (a repeat could
/// answer `AlreadyExists` for the session it made itself); the next
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_written_to_a_dead_connection_is_not_repeated() {
    let mut redis = Redis::start_with(&[], false).await;
    let proxy = Proxy::start(redis.port).await;
    let store = store_at(proxy.url()).await;
    store.ensure_session("s").await.unwrap();
    proxy.forget_existing();
    redis.kill();
    redis.run().await;
    let first = store.create_session("new", None).await;
    assert!(
        matches!(&first, Err(e) if is_backend(e, "create_session")),
        "the create written to the dead connection: {first:?}"
    );
    let again = store.create_session("new", None).await;
    assert!(again.is_ok(), "the next create: {again:?}");
}

/// The operations that are safe to repeat, and repeated once when the
/// connection they were written to turns out to be dead: all but
/// `create_session`.
fn repeated_ops() -> impl Iterator<Item = &'static str> {
    ALL_OPS.into_iter().filter(|op| *op != "create_session")
}

/// sessions.md ("Listeners"): "a `delete_session` that failed (Redis's
/// answer lost to a timeout or a dropped connection) is not reported even
/// if Redis applied it, since the store cannot tell; its caller has the
/// error, and asking again answers `Ok(false)` once the session is gone";
/// and sessions.md's "A write that timed out ... may or may not have been
/// applied; it is not retried for you". A `delete_session` reaches Redis,
/// which deletes the session, and its answer is lost: the call is a
/// `Timeout`; afterwards the session is gone, asking again is `Ok(false)`,
/// and neither the failed call nor the sweeps report it (the store would
/// otherwise have to guess, and a guess that a live session ended would
/// make the pool forget the worker that holds its state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_whose_answer_was_lost_is_told_to_its_caller_only() {
    let redis = Redis::start().await;
    let proxy = Proxy::start(redis.port).await;
    let store = RedisStore::builder(proxy.url())
        .timeout(TIMEOUT)
        .sweep_interval(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let ends = common::record_ends(&store);
    store.ensure_session("d").await.unwrap();
    // Redis has the deletion's script (a first use that is not answered
    // would stop at `NOSCRIPT`).
    store.ensure_session("warm").await.unwrap();
    assert!(store.delete_session("warm").await.unwrap());
    ends.lock().unwrap().clear();

    proxy.deafen();
    let (r, _) = timed("delete_session", store.delete_session("d")).await;
    let e = r.expect_err("the answer was lost");
    assert!(is_timeout(&e, "delete_session"), "{e:?}");
    let port = redis.port;
    until(5, "Redis applied the deletion", || async move {
        tokio::task::spawn_blocking(move || redis_cli(port, &["EXISTS", "snakepit:s:d"]) == "0")
            .await
            .unwrap()
    })
    .await;
    proxy.heal();
    until(5, "the store works again", || async {
        store.session_exists("d").await.is_ok()
    })
    .await;
    assert!(!store.session_exists("d").await.unwrap());
    assert!(!store.delete_session("d").await.unwrap(), "already gone");
    // Several sweeps.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let heard = ends.lock().unwrap().clone();
    assert!(
        heard.iter().all(|(id, _)| id != "d"),
        "a deletion the store did not see done is not reported: {heard:?}"
    );
}

/// sessions.md ("The connection dropped while idle"): "the store speaks
/// RESP3 to Redis 6 and later ... (With Redis 5, or a URL that asks for
/// `?protocol=resp2`, the next operation learns of the drop by failing
/// with `Error::Backend`, and the one after it succeeds.)" A server
/// without `HELLO` (as Redis 5: here the command is renamed away) is
/// spoken to in RESP2 and the whole store works; so does a URL that asks
/// for RESP2; and what each connection speaks is what the doc says
/// (`CLIENT LIST`'s `resp=`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_where_the_server_has_it_and_resp2_where_it_has_not_or_the_url_says() {
    let protocols = |port: u16| {
        redis_cli(port, &["CLIENT", "LIST"])
            .lines()
            .filter(|l| !l.contains("cmd=client|list"))
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("resp=")))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let modern = Redis::start().await;
    let old = Redis::start_with(&["--rename-command", "HELLO", ""], false).await;
    for (url, resp) in [
        (modern.url(), "3"),
        (format!("{}?protocol=resp2", modern.url()), "2"),
        (old.url(), "2"),
    ] {
        let store = store_at(url.clone()).await;
        fill(&store, "s").await;
        assert_eq!(store.get("s", "a").await.unwrap(), Some(json!("kept")));
        assert!(store.delete_session("s").await.unwrap(), "{url}");
        let port: u16 = url
            .trim_start_matches("redis://127.0.0.1:")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let seen = tokio::task::spawn_blocking(move || protocols(port))
            .await
            .unwrap();
        assert!(
            !seen.is_empty() && seen.iter().all(|p| p == resp),
            "{url}: connections speak {seen:?}, expected RESP{resp}"
        );
        drop(store);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
