//! Extreme values in every public setting of snakepit-cluster
//! (`ClientConfig`, `ServeOptions`, `Client::status`'s window), against a
//! real nats-server and pools of real Python workers served from this
//! process: 0, 1 and the largest value of each type. What must hold: a
//! typed error or the documented meaning, and then a cluster that serves:
//! never a panic (in the caller or in a task of the client or the host), a
//! hang, or a deadline that overflowed.
//!
//! Shown elsewhere and not repeated: a zero heartbeat (api_promises.rs),
//! `queue_timeout` and a call timeout of `Duration::MAX` (promises.rs), a
//! host timeout of an hour (api_promises.rs), `max_sessions` 2
//! (redteam_cluster_doc.rs), `max_queue_size` 2 (outside_cluster.rs).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use snakepit_cluster::{Client, ClientConfig, Node, ServeOptions};
use snakepit_core::{CallOptions, Error, Pool};

use snakepit_tests::count_panics;

/// The tests of this file one at a time, so that the panics one counts
/// are its own.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Fails the test if `f` has not finished within `secs` seconds.
async fn within<T>(secs: u64, what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {secs} s (a hang)"))
}

/// Waits up to `secs` for `client` to hear of a host; false if it never does.
async fn hears_a_host(client: &Client, secs: u64) -> bool {
    let until = Instant::now() + Duration::from_secs(secs);
    while client.hosts().is_empty() {
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// What each test of this file runs in: its turn ([`SERIAL`]), the count
/// of panics when it began, a nats-server and a connection to it.
struct Rig {
    _serial: tokio::sync::MutexGuard<'static, ()>,
    panics: Arc<AtomicUsize>,
    before: usize,
    nats: NatsServer,
    conn: async_nats::Client,
}

impl Rig {
    /// Waits for this file's turn, notes the panics so far, and starts a
    /// nats-server and a connection to it.
    async fn start() -> Rig {
        let serial = SERIAL.lock().await;
        let panics = count_panics();
        let before = panics.load(Ordering::SeqCst);
        let nats = NatsServer::start().await;
        let conn = nats.connect().await;
        Rig {
            _serial: serial,
            panics,
            before,
            nats,
            conn,
        }
    }

    /// [`Rig::start`] with a host of `workers` test workers serving
    /// with `options`.
    async fn serving(workers: usize, options: ServeOptions) -> (Rig, Host) {
        let rig = Rig::start().await;
        let host = rig.host(workers, options).await;
        (rig, host)
    }

    /// The end of a test: `host` shut down, and no panic.
    async fn finish(self, host: Host) {
        host.shutdown().await;
        self.no_panic("a panic");
    }

    /// Fails the test with `what` if anything panicked since [`Rig::start`]
    /// (the test, or a task of a client or a host).
    fn no_panic(&self, what: &str) {
        assert_eq!(self.panics.load(Ordering::SeqCst), self.before, "{what}");
    }

    /// A host of `workers` test workers serving the cluster `test` with
    /// `options`.
    async fn host(&self, workers: usize, options: ServeOptions) -> Host {
        let pool = pool(workers).await;
        let node = snakepit_cluster::serve_with(&self.conn, "test", pool.clone(), options.clone())
            .await
            .unwrap_or_else(|e| panic!("serve_with {options:?}: {e}"));
        Host { pool, node }
    }

    /// Fails the test unless `client` hears of a host within 10 s, with
    /// no panic meanwhile (`what` names the case).
    async fn hears_a_host(&self, client: &Client, what: &str) {
        let heard = hears_a_host(client, 10).await;
        self.no_panic(&format!("{what}: a task panicked"));
        assert!(heard, "{what}: the host was never heard of");
    }

    /// A client with `config` that has heard of a host.
    async fn client(&self, config: ClientConfig, what: &str) -> Client {
        let client = client(&self.nats, config).await;
        self.hears_a_host(&client, what).await;
        client
    }
}

/// A host's pool and node.
struct Host {
    pool: Pool,
    node: Node,
}

impl Host {
    /// `Node::shutdown` within 20 s, then the pool's.
    async fn shutdown(self) {
        within(20, "node shutdown", self.node.shutdown())
            .await
            .unwrap();
        self.pool.shutdown().await.unwrap();
    }
}

/// The default client settings but for the host and queue timeouts.
fn timeouts(host_timeout: Duration, queue_timeout: Duration) -> ClientConfig {
    let mut config = ClientConfig::default();
    config.host_timeout = host_timeout;
    config.queue_timeout = queue_timeout;
    config
}

/// `n` echo calls one after another, each answered within 20 s with its
/// own `i`.
async fn echoes(client: &Client, n: usize, what: &str) {
    for i in 0..n {
        let r = within(20, what, client.execute("echo", json!({"i": i})))
            .await
            .unwrap_or_else(|e| panic!("{what}, call {i}: {e:?}"));
        assert_eq!(r["echoed"]["i"], i);
    }
}

/// The calls `call(i)` for `i` in `0..n` (command, arguments, options)
/// sent at once, each from a task of its own: their results, in order,
/// each within 30 s.
async fn at_once(
    client: &Client,
    n: usize,
    call: impl Fn(usize) -> (&'static str, Value, CallOptions),
) -> Vec<Value> {
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let (client, (command, args, options)) = (client.clone(), call(i));
            tokio::spawn(async move { client.execute_with(command, args, options).await })
        })
        .collect();
    let mut results = Vec::new();
    for c in calls {
        results.push(within(30, "calls", c).await.unwrap().unwrap());
    }
    results
}

/// crates/cluster/src/host.rs:43-46: `ServeOptions::calls_per_worker` is
/// "Calls the host runs at once per ready worker; 0 (the default): what
/// each worker declared in its hello". `usize::MAX` (a usual "no limit")
/// with a pool of two workers: the host's capacity (workers times calls
/// per worker) must not overflow: `Serving::measure` saturates it. The
/// host is heard of, serves four calls in turn, and no task panics (the
/// rig counts panics; before the fix the product was taken unchecked and a
/// debug build panicked with "attempt to multiply with overflow").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_per_worker_at_usize_max_does_not_overflow_the_capacity() {
    let what = "calls_per_worker usize::MAX";
    let (rig, host) = Rig::serving(2, ServeOptions::new().calls_per_worker(usize::MAX)).await;
    let client = rig.client(ClientConfig::default(), what).await;
    echoes(&client, 4, what).await;
    rig.finish(host).await;
}

/// crates/cluster/src/host.rs:47-67: `ServeOptions::prefetch_per_worker`
/// is "The most calls the host accepts per ready worker beyond those it
/// runs ... at least one and at most this many"; `calls_per_worker` 1 is
/// the smallest explicit value. `prefetch_per_worker(usize::MAX)` with two
/// workers: the capacity saturates rather than wraps, the host is heard of
/// with a huge but sane capacity, concurrent calls all succeed, and the
/// node shuts down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_per_worker_at_usize_max_serves() {
    let options = ServeOptions::new()
        .calls_per_worker(1)
        .prefetch_per_worker(usize::MAX);
    let (rig, host) = Rig::serving(2, options).await;
    let client = rig
        .client(ClientConfig::default(), "prefetch_per_worker usize::MAX")
        .await;
    let capacity = client.hosts()[0].capacity;
    assert!(
        capacity >= 2,
        "capacity wrapped to something small: {capacity}"
    );
    let results = at_once(&client, 12, |i| {
        ("sleep", json!({"ms": 50, "token": i}), CallOptions::new())
    })
    .await;
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["token"], i);
    }
    rig.finish(host).await;
}

/// crates/cluster/src/host.rs:68-71: `ServeOptions::heartbeat` is "How
/// often the host announces itself and its free capacity. Clients count a
/// host as lost after a few missed heartbeats
/// (`ClientConfig::host_timeout`)"; host.rs:109-110: only zero is refused.
/// The extremes a user may pass: `Duration::MAX` (with a client whose host
/// timeout is `Duration::MAX` too, so silence never loses the host, and
/// that listens before the host starts: a client that connects later hears
/// of a host whose heartbeats are a hundred years apart only when its
/// capacity changes) and one nanosecond. The host is heard of (its first
/// heartbeat is at once),
/// serves calls, and `Node::shutdown` ends within seconds; nothing panics
/// on a timer that overflowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_of_duration_max_and_one_nanosecond() {
    let rig = Rig::start().await;
    for (what, every) in [
        ("heartbeat Duration::MAX", Duration::MAX),
        ("heartbeat 1 ns", Duration::from_nanos(1)),
    ] {
        // The client first: with a heartbeat of `Duration::MAX`, the host's
        // first heartbeat (at once) is the only one a client may hear.
        let queue_timeout = ClientConfig::default().queue_timeout;
        let client = client(&rig.nats, timeouts(Duration::MAX, queue_timeout)).await;
        let host = rig.host(1, ServeOptions::new().heartbeat(every)).await;
        rig.hears_a_host(&client, what).await;
        echoes(&client, 3, what).await;
        host.shutdown().await;
    }
    rig.no_panic("a panic");
}

/// crates/cluster/src/client.rs:96-99: `ClientConfig::host_timeout` is "A
/// host unheard of for this long (heartbeats, or the acknowledgement of a
/// call just sent) is lost". At `Duration::MAX` no host is lost to
/// silence, calls are served, and a host that leaves with `Node::shutdown`
/// (which "tells the clients this host is gone", host.rs:132-133) leaves
/// a call nothing to wait for but the queue timeout: `QueueTimeout` after
/// it, not a hang of a hundred years.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_timeout_of_duration_max_serves_and_a_departed_host_ends_in_queue_timeout() {
    let (rig, host) = Rig::serving(1, ServeOptions::new()).await;
    let config = timeouts(Duration::MAX, Duration::from_secs(2));
    let forever = rig.client(config, "host_timeout Duration::MAX").await;
    echoes(&forever, 1, "call").await;

    within(20, "node shutdown", host.node.shutdown())
        .await
        .unwrap();
    let t0 = Instant::now();
    let e = within(15, "no host left", forever.execute("echo", json!({})))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::QueueTimeout(_)) || snakepit_cluster::is_host_lost(&e),
        "{e:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(12));
    host.pool.shutdown().await.unwrap();
    rig.no_panic("a panic");
}

/// crates/cluster/src/client.rs:90-103: `queue_timeout` "How long a call
/// may wait for a host with free capacity (`QueueTimeout` after it)",
/// `max_queue_size` "Calls of this client waiting for free capacity at
/// most; more fail at once with `PoolSaturated`", `max_sessions`
/// "Sessions whose last host this client remembers (affinity); beyond it
/// the record used least recently is forgotten". At 0: a call that finds a
/// free host never waits, so it is served; one that would wait fails at
/// once (`PoolSaturated` for a queue of 0, `QueueTimeout` for a zero queue
/// timeout); session calls are served without affinity. At `usize::MAX`:
/// nothing is allocated up front, calls and sessions are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_queue_and_session_bounds_at_zero_and_the_largest() {
    // One call at a time, none taken ahead: a second call must wait.
    let options = ServeOptions::new()
        .calls_per_worker(1)
        .prefetch_per_worker(0);
    let (rig, host) = Rig::serving(1, options).await;
    type Change = fn(&mut ClientConfig);
    let zeros: [(&str, Change); 3] = [
        ("max_queue_size 0", |c| c.max_queue_size = 0),
        ("queue_timeout 0", |c| c.queue_timeout = Duration::ZERO),
        ("max_sessions 0", |c| c.max_sessions = 0),
    ];
    for (what, change) in zeros {
        let mut config = ClientConfig::default();
        change(&mut config);
        let client = rig.client(config, what).await;
        let r = within(
            20,
            what,
            client.execute_in_session("s", "echo", json!({"n": 1})),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: a call to a free host: {e}"));
        assert_eq!(r["echoed"]["n"], 1);
        if what == "max_sessions 0" {
            continue;
        }
        let busy = {
            let client = client.clone();
            tokio::spawn(async move { client.execute("sleep", json!({"ms": 1500})).await })
        };
        let until = Instant::now() + Duration::from_secs(10);
        while client.hosts().first().is_none_or(|h| h.free > 0) {
            assert!(Instant::now() < until, "{what}: the host never became busy");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t0 = Instant::now();
        let e = within(10, what, client.execute("echo", json!({})))
            .await
            .unwrap_err();
        match what {
            "max_queue_size 0" => {
                assert!(matches!(e, Error::PoolSaturated { .. }), "{what}: {e:?}")
            }
            _ => assert!(matches!(e, Error::QueueTimeout(_)), "{what}: {e:?}"),
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "{what}: it waited");
        within(20, what, busy).await.unwrap().unwrap();
    }
    let mut config = ClientConfig::default();
    config.max_queue_size = usize::MAX;
    config.max_sessions = usize::MAX;
    let client = rig.client(config, "usize::MAX").await;
    let results = at_once(&client, 8, |i| {
        let session = CallOptions::new().session(format!("s{i}"));
        ("echo", json!({"i": i}), session)
    })
    .await;
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["echoed"]["i"], i);
    }
    rig.finish(host).await;
}

/// crates/cluster/src/client.rs:545-548: `Client::status(window)` asks
/// the hosts "within `window` ... at most twice `window` in all". A zero
/// window returns at once (whatever it heard, no panic); a window of
/// `Duration::MAX` is a deadline a hundred years away, not an overflow
/// panic: it is still waiting after a second (and is then dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_windows_of_zero_and_duration_max() {
    let (rig, host) = Rig::serving(1, ServeOptions::new()).await;
    let client = rig.client(ClientConfig::default(), "status").await;
    let status = within(5, "status 0", client.status(Duration::ZERO))
        .await
        .unwrap();
    assert!(status.len() <= 1, "{status:?}");
    let long = {
        let client = client.clone();
        tokio::spawn(async move { client.status(Duration::MAX).await })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!long.is_finished(), "status(Duration::MAX) ended: {long:?}");
    long.abort();
    // Still a working client afterwards.
    client.execute("echo", json!({})).await.unwrap();
    rig.finish(host).await;
}

/// crates/core/src/pool/options.rs:88-89 and :105-107, which the cluster's
/// calls take (`Client::execute_with`, `execute_stream`): `timeout` is "The
/// deadline, counted from submission", and one "longer than a hundred
/// years ... is a hundred years". Through the cluster, a deadline of zero
/// or one nanosecond has passed by the time the call could be sent: the
/// call and the stream end in `CallTimeout` (is_timeout) within seconds,
/// and the client serves on; a stream with `Duration::MAX` runs to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_calls_with_zero_tiny_and_longest_timeouts() {
    use futures_util::StreamExt;
    let (rig, host) = Rig::serving(1, ServeOptions::new()).await;
    let client = rig.client(ClientConfig::default(), "timeouts").await;
    for (what, t) in [
        ("timeout 0", Duration::ZERO),
        ("timeout 1 ns", Duration::from_nanos(1)),
    ] {
        let options = CallOptions::new().timeout(t);
        let e = within(
            10,
            what,
            client.execute_with("sleep", json!({"ms": 300}), options.clone()),
        )
        .await
        .unwrap_err();
        assert!(e.is_timeout(), "{what}: {e:?}");
        match within(
            10,
            what,
            client.execute_stream("stream", json!({"n": 3}), options),
        )
        .await
        {
            Err(e) => assert!(e.is_timeout(), "{what}, stream: {e:?}"),
            Ok(mut s) => {
                let first = within(10, what, s.next()).await;
                assert!(
                    matches!(&first, Some(Err(e)) if e.is_timeout()),
                    "{what}, stream: {first:?}"
                );
            }
        }
    }
    let mut s = within(
        10,
        "stream, Duration::MAX",
        client.execute_stream(
            "stream",
            json!({"n": 3}),
            CallOptions::new().timeout(Duration::MAX),
        ),
    )
    .await
    .unwrap();
    let mut items = 0;
    while let Some(item) = within(20, "stream item", s.next()).await {
        item.unwrap();
        items += 1;
    }
    assert_eq!(items, 4, "three chunks and the end");
    echoes(&client, 1, "after").await;
    rig.finish(host).await;
}

/// crates/cluster/src/client.rs:96-99: `host_timeout` is how long a host
/// may stay unheard of, "(heartbeats, or the acknowledgement of a call
/// just sent)", before its calls fail with the host-lost error. The API
/// refuses the zero settings that make a cluster useless
/// (`ServeOptions::heartbeat`: "zero is refused by `serve_with`
/// (`Error::Config`)"; the pool's `validate` refuses a zero health check
/// timeout, "Every ping would be late"). A zero host timeout is the same:
/// `ClientConfig::host_timeout` says "Zero is `Error::Config` at
/// `Client::connect_with`: every host would be lost at once", and the
/// test asks for exactly that, with a live, idle host to call. (Before the
/// fix it was accepted, and every call failed with `HostLost` from a
/// healthy host that may well have run it; the test's name keeps its first
/// form, which would also have taken a client whose calls were served.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_host_timeout_is_refused_or_served() {
    let (rig, host) = Rig::serving(1, ServeOptions::new()).await;
    let config = timeouts(Duration::ZERO, Duration::from_secs(5));
    match Client::connect_with(&rig.conn, "test", config).await {
        Err(Error::Config(why)) => assert!(why.contains("host_timeout"), "{why}"),
        Err(e) => panic!("expected Error::Config, got {e:?}"),
        Ok(_) => panic!("a zero host_timeout was taken"),
    }
    rig.finish(host).await;
}
