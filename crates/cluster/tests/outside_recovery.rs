//! Recovery after a NATS outage, tested as a user meets it: with no retry
//! loop. NATS is killed (SIGKILL) under running hosts (`serve`, sessions in
//! a `NatsKvStore` attached to each host's pool, real Python workers) and a
//! client, each on a NATS connection of its own; calls made while it is
//! down fail; it is started again on the same port (its JetStream store
//! kept, unless a test says otherwise); once it answers a new connection,
//! plus a settle of 1 s, the very FIRST operation must succeed, as
//! docs/cluster.md promises:
//!
//! - docs/cluster.md:267 (Failures): "NATS is back | calls work again:
//!   `async-nats` reconnects clients and hosts and restores their
//!   subscriptions; nothing is restarted"
//! - docs/cluster.md:265: "the NATS connection is down | new calls, and
//!   calls waiting in the client's queue, fail at once with the unavailable
//!   error (never sent)"
//! - docs/cluster.md:252-255: "A bucket that disappears (deleted, or NATS
//!   back without its JetStream storage) is created again, empty, by the
//!   next operation that finds it gone; its sessions are lost with it, and
//!   calls in them start new ones."
//! - docs/cluster.md:179-181 (Sessions across hosts): "A session's calls go
//!   to the host that served it last (and there, through the pool's own
//!   affinity, to the same worker) while that host has room."
//! - crates/cluster/src/lib.rs:48-50: "while the NATS connection is down
//!   calls fail at once ([`is_unavailable`]) and work again when it is
//!   back."
//!
//! The existing recovery tests (`cluster.rs` `nats_killed_and_restarted`,
//! `redteam_kv.rs`) retry until something works, so they cannot see a
//! first operation that fails.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use common::*;
use serde_json::{json, Value};
use snakepit_cluster::{is_unavailable, Client, ClientConfig, NatsKvStore, Node, ServeOptions};
use snakepit_core::{Error, Pool};
use snakepit_session::SessionStore;

/// The settle after NATS answers again.
const SETTLE: Duration = Duration::from_secs(1);

/// A bound on any one operation of a test (a hang check, not a timing).
const BOUND: Duration = Duration::from_secs(10);

/// How the test's NATS connections reconnect.
#[derive(Clone, Copy, PartialEq)]
enum Reconnect {
    /// async-nats's default: a delay of 2^n ms before attempt n, at most 4 s.
    Default,
    /// 100 ms between attempts (`ConnectOptions::reconnect_delay_callback`).
    Quick,
}

/// A NATS connection as a user makes one; `events` hears its events.
async fn connect(
    url: &str,
    reconnect: Reconnect,
    events: Option<tokio::sync::mpsc::UnboundedSender<async_nats::Event>>,
) -> async_nats::Client {
    let mut options = async_nats::ConnectOptions::new();
    if reconnect == Reconnect::Quick {
        options = options.reconnect_delay_callback(|_| Duration::from_millis(100));
    }
    if let Some(tx) = events {
        options = options.event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e);
            }
        });
    }
    options.connect(url).await.unwrap()
}

/// The NATS server: the tests' common one (restarted with its store), or
/// one whose JetStream store a test can throw away.
enum Server {
    Common(NatsServer),
    Own(OwnServer),
}

/// A nats-server with JetStream whose store dir this test file manages.
struct OwnServer {
    child: Option<std::process::Child>,
    dir: std::path::PathBuf,
    port: u16,
}

impl OwnServer {
    fn start() -> OwnServer {
        let dir = std::env::temp_dir().join(format!(
            "snakepit-outside-recovery-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = OwnServer {
            child: None,
            dir,
            port: 0,
        };
        s.up(None);
        s
    }

    fn up(&mut self, port: Option<u16>) {
        #[allow(clippy::disallowed_methods)] // a test server, not a worker
        let mut command = std::process::Command::new(nats_server_bin());
        command.arg("-js").arg("-sd").arg(self.dir.join("store"));
        let (child, port) = snakepit_tests::spawn_nats_server(command, port, &self.dir);
        self.child = Some(child);
        self.port = port;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Server {
    fn port(&self) -> u16 {
        match self {
            Server::Common(s) => s.port,
            Server::Own(s) => s.port,
        }
    }

    fn kill(&mut self) {
        match self {
            Server::Common(s) => s.kill(),
            Server::Own(s) => s.kill(),
        }
    }

    /// Started again on its port; with its JetStream store, or without.
    async fn back(&mut self, store_kept: bool) {
        match self {
            Server::Common(s) => {
                assert!(store_kept, "the common server keeps its store");
                s.restart().await;
            }
            Server::Own(s) => {
                if !store_kept {
                    std::fs::remove_dir_all(s.dir.join("store")).unwrap();
                }
                let port = s.port;
                s.up(Some(port));
            }
        }
    }
}

/// A worker host of the cluster `test`: one real Python worker, its
/// sessions in the NATS KV bucket, on a NATS connection of its own.
struct Host {
    conn: async_nats::Client,
    store: Arc<NatsKvStore>,
    pool: Pool,
    node: Option<Node>,
}

async fn host(url: &str, id: &str, reconnect: Reconnect) -> Host {
    let conn = connect(url, reconnect, None).await;
    let store = Arc::new(
        NatsKvStore::builder(&conn)
            .sweep_interval(Duration::from_secs(3600))
            .connect()
            .await
            .unwrap(),
    );
    let pool = snakepit_session::attach(Pool::builder(TestWorker), store.clone())
        .size(1)
        .name(format!("outside-recovery-{id}"))
        .configure(|c| {
            c.sweep_on_start = false;
            c.shutdown_grace_period = Duration::from_millis(300);
        })
        .start()
        .await
        .unwrap();
    let node =
        snakepit_cluster::serve_with(&conn, "test", pool.clone(), ServeOptions::new().host_id(id))
            .await
            .unwrap();
    Host {
        conn,
        store,
        pool,
        node: Some(node),
    }
}

struct Cluster {
    server: Server,
    hosts: Vec<Host>,
    client_conn: async_nats::Client,
    client: Client,
}

async fn cluster(server: Server, ids: &[&str], reconnect: Reconnect) -> Cluster {
    cluster_with_events(server, ids, reconnect, None).await
}

async fn cluster_with_events(
    server: Server,
    ids: &[&str],
    reconnect: Reconnect,
    events: Option<tokio::sync::mpsc::UnboundedSender<async_nats::Event>>,
) -> Cluster {
    let url = format!("nats://127.0.0.1:{}", server.port());
    let mut hosts = Vec::new();
    for id in ids {
        hosts.push(host(&url, id, reconnect).await);
    }
    let client_conn = connect(&url, reconnect, events).await;
    // Calls that wait for room wait long: a call that fails "at once"
    // while NATS is down is then told apart from one that timed out.
    let mut config = ClientConfig::default();
    config.queue_timeout = Duration::from_secs(30);
    let client = Client::connect_with(&client_conn, "test", config)
        .await
        .unwrap();
    wait_hosts(&client, ids.len()).await;
    Cluster {
        server,
        hosts,
        client_conn,
        client,
    }
}

impl Cluster {
    /// Waits until the client's connection is back (as async-nats reports
    /// it): up to its reconnect delay after NATS answers.
    async fn client_back(&self) {
        let conn = self.client_conn.clone();
        eventually(15, "the client's connection is back", || {
            let conn = conn.clone();
            async move { conn.connection_state() == State::Connected }
        })
        .await;
    }

    async fn stop(mut self) {
        for h in &mut self.hosts {
            drop(h.node.take());
            h.pool.shutdown().await.unwrap();
        }
    }

    /// The states of the connections, for failure messages.
    fn states(&self) -> String {
        let hosts: Vec<State> = self
            .hosts
            .iter()
            .map(|h| h.conn.connection_state())
            .collect();
        format!(
            "client connection {:?}, host connections {hosts:?}",
            self.client_conn.connection_state()
        )
    }

    /// NATS killed (SIGKILL); once every connection sees it gone, a call
    /// and a session call fail at once with the unavailable error, never
    /// sent (docs/cluster.md:265), and the first host's store tries an
    /// operation; after `down`, NATS is started again on
    /// its port (with its store if `store_kept`). Returns once the server
    /// answers a new connection, plus [`SETTLE`].
    async fn outage(&mut self, down: Duration, store_kept: bool) {
        self.server.kill();
        let mut conns = vec![self.client_conn.clone()];
        conns.extend(self.hosts.iter().map(|h| h.conn.clone()));
        eventually(15, "every connection sees NATS gone", || {
            let conns = conns.clone();
            async move {
                conns
                    .iter()
                    .all(|c| c.connection_state() != State::Connected)
            }
        })
        .await;
        let started = Instant::now();
        for r in [
            bounded(
                "a call while NATS is down",
                self.client.execute("echo", json!({})),
            )
            .await,
            bounded(
                "a session call while NATS is down",
                self.client
                    .execute_in_session("s", "recall", json!({"key": "k"})),
            )
            .await,
        ] {
            let e = r.expect_err("a call while NATS is down fails");
            assert!(is_unavailable(&e) && e.never_ran(), "{e:?}");
        }
        // The first host's store tries an operation too: it cannot end
        // well now, and is given up after 300 ms, as a caller with a
        // deadline would.
        let store = self.hosts[0].store.clone();
        let _ = tokio::time::timeout(Duration::from_millis(300), store.get("s", "k")).await;
        if let Some(rest) = down.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
        self.server.back(store_kept).await;
        answers(self.server.port()).await;
        tokio::time::sleep(SETTLE).await;
    }
}

/// `f`, failing the test if it does not end within [`BOUND`].
async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {BOUND:?}"))
}

/// Waits until the server at `port` answers a new connection (its `INFO`
/// line): NATS is back.
async fn answers(port: u16) {
    use tokio::io::AsyncReadExt;
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let info = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()?;
            let mut buf = [0u8; 5];
            tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf))
                .await
                .ok()?
                .ok()?;
            (&buf == b"INFO ").then_some(())
        }
        .await;
        if info.is_some() {
            return;
        }
        assert!(Instant::now() < until, "NATS never answered again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Session `s` remembers `k = "kept"` on a host's worker; that worker's
/// pid.
async fn remember(c: &Cluster) -> u32 {
    let r = c
        .client
        .execute_in_session("s", "remember", json!({"key": "k", "value": "kept"}))
        .await
        .unwrap();
    assert_eq!(r, json!("kept"));
    let r = c
        .client
        .execute_in_session("s", "recall", json!({"key": "k"}))
        .await
        .unwrap();
    assert_eq!(r["value"], "kept", "{r}");
    pid_of(&r)
}

/// The first call after the outage: it must succeed.
async fn first_call(c: &Cluster, down: Duration) {
    let r: Result<Value, Error> =
        bounded("the first call", c.client.execute("echo", json!({"n": 1}))).await;
    match r {
        Ok(r) => assert_eq!(r["echoed"], json!({"n": 1}), "{r}"),
        Err(e) => panic!(
            "the first call after NATS was back (down {down:?}, then it answered, \
             then {SETTLE:?}) failed: {e:?}; {}",
            c.states()
        ),
    }
}

/// The first call, in session `s`, after the outage: it must succeed, on
/// the worker that served the session before, with its data.
async fn first_session_call(c: &Cluster, down: Duration, worker: u32) {
    let r = bounded(
        "the first session call",
        c.client
            .execute_in_session("s", "recall", json!({"key": "k"})),
    )
    .await;
    match r {
        Ok(r) => {
            assert_eq!(r["value"], "kept", "the session's data is kept: {r}");
            assert_eq!(
                pid_of(&r),
                worker,
                "the session's call went to the worker (and host) that served it last: {r}"
            );
        }
        Err(e) => panic!(
            "the first session call after NATS was back (down {down:?}, then it answered, \
             then {SETTLE:?}) failed: {e:?}; {}",
            c.states()
        ),
    }
}

/// The host's store's first operation after the outage: it must succeed,
/// the session's data kept.
async fn first_store_operation(c: &Cluster, down: Duration) {
    let store = &c.hosts[0].store;
    let r = bounded("the store's first operation", store.get("s", "k")).await;
    match r {
        Ok(v) => assert_eq!(v, Some(json!("kept"))),
        Err(e) => panic!(
            "the store's first operation after NATS was back (down {down:?}) failed: {e:?}; {}",
            c.states()
        ),
    }
    store.set("s", "k2", json!(2)).await.unwrap();
}

/// NATS started again as soon as every connection saw it gone (and the
/// calls made meanwhile failed). The connections' next reconnect attempt
/// then comes at most about half a second after NATS answers (async-nats
/// tries again after 2^n ms), within the settle; a restart that itself
/// took over a second would land these tests in the long outage's defect
/// (a 500 ms outage did once, in a run of all tests at once).
const SHORT: Duration = Duration::ZERO;
/// Longer than async-nats's reconnect delay grows to (4 s).
const LONG: Duration = Duration::from_secs(5);

/// docs/cluster.md:267: "NATS is back | calls work again". NATS started
/// again at once: the client's first call after it answers is a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_after_a_short_outage_succeeds() {
    let nats = Server::Common(NatsServer::start().await);
    let mut c = cluster(nats, &["a"], Reconnect::Default).await;
    c.client.execute("echo", json!({})).await.unwrap();
    c.outage(SHORT, true).await;
    first_call(&c, SHORT).await;
    c.stop().await;
}

/// docs/cluster.md:267 and :179-181: after a short outage, a session's
/// first call goes to the host and worker that served it last (two hosts:
/// the other one has room too), and its data (in the hosts' NATS KV
/// bucket) is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_session_call_after_a_short_outage_keeps_its_host_and_data() {
    let nats = Server::Common(NatsServer::start().await);
    let mut c = cluster(nats, &["a", "b"], Reconnect::Default).await;
    let worker = remember(&c).await;
    c.outage(SHORT, true).await;
    first_session_call(&c, SHORT, worker).await;
    c.stop().await;
}

/// docs/cluster.md:267 ("async-nats reconnects clients and hosts"): the
/// host's `NatsKvStore`'s first operation after a short outage, one of
/// its operations having been tried (and given up) while NATS was down,
/// succeeds with the data written before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_first_operation_after_a_short_outage_succeeds() {
    let nats = Server::Common(NatsServer::start().await);
    let mut c = cluster(nats, &["a"], Reconnect::Default).await;
    remember(&c).await;
    c.outage(SHORT, true).await;
    first_store_operation(&c, SHORT).await;
    c.stop().await;
}

/// docs/cluster.md:267: "NATS is back | calls work again" once the
/// client's connection is back ("async-nats tries again after a delay that
/// doubles up to 4 s: calls work again up to about 4 s after NATS is"),
/// with NATS down for 5 s (longer than that delay grows). Before the
/// connection is back a call fails at once, never sent (row 265); the first
/// one after it, whatever the hosts' own connections are doing meanwhile,
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_once_the_client_is_back_after_a_long_outage_succeeds() {
    let nats = Server::Common(NatsServer::start().await);
    let mut c = cluster(nats, &["a"], Reconnect::Default).await;
    c.client.execute("echo", json!({})).await.unwrap();
    c.outage(LONG, true).await;
    c.client_back().await;
    first_call(&c, LONG).await;
    c.stop().await;
}

/// docs/cluster.md:267 and :179-181, with NATS down for 5 s: a session's
/// first call once the client and both hosts are heard from again goes to
/// the worker that served the session last, its data kept. (Until its host
/// is heard from again, the host is gone for the client, whose connection
/// may be back first: "When the host is gone, the session's next call goes
/// to another host".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_session_call_once_its_host_is_back_after_a_long_outage_keeps_its_host_and_data()
{
    let nats = Server::Common(NatsServer::start().await);
    let mut c = cluster(nats, &["a", "b"], Reconnect::Default).await;
    let worker = remember(&c).await;
    c.outage(LONG, true).await;
    c.client_back().await;
    wait_hosts(&c.client, 2).await;
    first_session_call(&c, LONG, worker).await;
    c.stop().await;
}

/// docs/cluster.md:267, with NATS down for 5 s: the host's store's first
/// operation after NATS is back succeeds (a JetStream request waits for
/// the reconnection, up to its 5 s timeout, where a client call fails at
/// once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_first_operation_after_a_long_outage_succeeds() {
    let nats = Server::Common(NatsServer::start().await);
    let mut c = cluster(nats, &["a"], Reconnect::Default).await;
    remember(&c).await;
    c.outage(LONG, true).await;
    first_store_operation(&c, LONG).await;
    c.stop().await;
}

/// The same with connections that try
/// to reconnect every 100 ms (`ConnectOptions::reconnect_delay_callback`),
/// a 5 s outage leaves nothing stale in the client, the hosts or their
/// store: the first call, the first session call (its host, worker and
/// data) and the store's first operation all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_quick_reconnects_the_first_calls_after_a_long_outage_succeed() {
    let nats = Server::Common(NatsServer::start().await);
    let mut c = cluster(nats, &["a", "b"], Reconnect::Quick).await;
    let worker = remember(&c).await;
    c.outage(LONG, true).await;
    first_session_call(&c, LONG, worker).await;
    first_call(&c, LONG).await;
    first_store_operation(&c, LONG).await;
    c.stop().await;
}

/// crates/cluster/src/lib.rs:48-50: calls "work again when it is back",
/// the connection being back as async-nats reports it: the client's own
/// connection says `Event::Connected` (an application resuming its work
/// on that event, as async-nats's docs suggest), and the first call made
/// then must not fail with "the NATS connection is down".
///
/// It did, once: `Inner::check_connection` (client.rs) required the
/// client's `connected` flag as well as `connection_state()`, and only the
/// `monitor` task set that flag back, once a tick (every sixth of the host
/// timeout, at most 250 ms): until then every call failed with
/// `Unavailable` although the connection was up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_once_the_connection_reports_connected_succeeds() {
    let nats = Server::Common(NatsServer::start().await);
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let mut c = cluster_with_events(nats, &["a"], Reconnect::Quick, Some(tx)).await;
    c.client.execute("echo", json!({})).await.unwrap();
    c.server.kill();
    let conn = c.client_conn.clone();
    eventually(15, "the client's connection sees NATS gone", || {
        let conn = conn.clone();
        async move { conn.connection_state() != State::Connected }
    })
    .await;
    let e = bounded(
        "a call while NATS is down",
        c.client.execute("echo", json!({})),
    )
    .await
    .unwrap_err();
    assert!(is_unavailable(&e) && e.never_ran(), "{e:?}");
    // Long enough for the client's own check (every quarter second at
    // most) to see the connection down.
    tokio::time::sleep(Duration::from_millis(600)).await;
    while events.try_recv().is_ok() {}
    c.server.back(true).await;
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let e = tokio::time::timeout_at(until.into(), events.recv())
            .await
            .expect("the client's connection says Connected again")
            .unwrap();
        if matches!(e, async_nats::Event::Connected) {
            break;
        }
    }
    while c.client_conn.connection_state() != State::Connected {
        tokio::task::yield_now().await;
    }
    let r = bounded("the first call", c.client.execute("echo", json!({"n": 1}))).await;
    match r {
        Ok(r) => assert_eq!(r["echoed"], json!({"n": 1}), "{r}"),
        Err(e) => panic!(
            "the first call once the client's connection said Connected failed: {e:?}; {}",
            c.states()
        ),
    }
    c.stop().await;
}

/// docs/cluster.md:252-255: NATS back WITHOUT its JetStream storage: the
/// bucket "is created again, empty, by the next operation that finds it
/// gone; its sessions are lost with it, and calls in them start new ones".
/// The first session call after NATS is back succeeds, in a new session
/// (its data gone), and the session works from then on; so does the
/// store's own first operation on another host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_session_call_after_nats_lost_its_storage_starts_a_new_session() {
    let nats = Server::Own(OwnServer::start());
    let mut c = cluster(nats, &["a", "b"], Reconnect::Default).await;
    remember(&c).await;
    c.outage(SHORT, false).await;
    let r = bounded(
        "the first session call",
        c.client
            .execute_in_session("s", "recall", json!({"key": "k"})),
    )
    .await;
    match r {
        Ok(r) => assert_eq!(r["value"], Value::Null, "the session is new: {r}"),
        Err(e) => panic!(
            "the first session call after NATS came back without its storage failed: {e:?}; {}",
            c.states()
        ),
    }
    // Host b's store: its first operation finds the (new) bucket.
    let b = &c.hosts[1].store;
    let r = bounded("host b's store's first operation", b.session_exists("s")).await;
    assert!(
        matches!(r, Ok(true)),
        "host b's store after NATS lost its storage: {r:?}"
    );
    let r = c
        .client
        .execute_in_session("s", "remember", json!({"key": "k", "value": "again"}))
        .await
        .unwrap();
    assert_eq!(r, json!("again"));
    assert_eq!(b.get("s", "k").await.unwrap(), Some(json!("again")));
    c.stop().await;
}
