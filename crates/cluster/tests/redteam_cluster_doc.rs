//! Red-team tests of docs/cluster.md read as a user: sessions whose host
//! left (`Strict` and `FailFast` affinity), the host pool's own default
//! deadline when a call has none, a host leaving gracefully in the middle
//! of a stream, and what a cluster with no host answers to each kind of
//! call and to `status`. Each runs against a real nats-server on a free
//! loopback port and pools of real Python workers served from this process.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_cluster::{Client, ClientConfig, ServeOptions};
use snakepit_core::{Affinity, CallOptions, Error, Pool, StreamItem};

fn test_worker() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../core/tests/workers/test_worker.py")
}

/// A pool of `size` test workers, quick to shut down.
async fn pool(size: usize) -> Pool {
    pool_of(TestWorker, size).await
}

async fn pool_of<A: snakepit_core::Adapter + 'static>(adapter: A, size: usize) -> Pool {
    Pool::builder(adapter)
        .size(size)
        .configure(|c| {
            c.sweep_on_start = false;
            c.shutdown_grace_period = Duration::from_millis(300);
        })
        .start()
        .await
        .unwrap()
}

/// Two hosts `a` and `b` of one worker each, served from this process.
struct TwoHosts {
    nats: NatsServer,
    pools: [Pool; 2],
    nodes: [Option<snakepit_cluster::Node>; 2],
    client: Client,
}

async fn two_hosts(config: ClientConfig) -> TwoHosts {
    two_hosts_with(config, None).await
}

/// As [`two_hosts`], each host serving with `prefetch_per_worker(prefetch)`.
async fn two_hosts_with(config: ClientConfig, prefetch: Option<usize>) -> TwoHosts {
    let nats = NatsServer::start().await;
    let mut pools = Vec::new();
    let mut nodes = Vec::new();
    for id in ["a", "b"] {
        let conn = nats.connect().await;
        let pool = pool(1).await;
        let mut options = ServeOptions::new().host_id(id);
        if let Some(n) = prefetch {
            options = options.prefetch_per_worker(n);
        }
        let node = snakepit_cluster::serve_with(&conn, "test", pool.clone(), options)
            .await
            .unwrap();
        pools.push(pool);
        nodes.push(Some(node));
    }
    let client = client(&nats, config).await;
    wait_hosts(&client, 2).await;
    TwoHosts {
        nats,
        pools: [pools[0].clone(), pools[1].clone()],
        nodes: [nodes[0].take(), nodes[1].take()],
        client,
    }
}

impl TwoHosts {
    /// Which host (0 or 1) the worker `pid` belongs to.
    fn host_of(&self, pid: u32) -> usize {
        self.pools
            .iter()
            .position(|p| p.worker_pids().contains(&pid))
            .unwrap_or_else(|| panic!("pid {pid} belongs to no host"))
    }

    async fn stop(mut self) {
        for node in self.nodes.iter_mut().filter_map(Option::take) {
            let _ = node.shutdown().await;
        }
        for pool in &self.pools {
            let _ = pool.shutdown().await;
        }
        drop(self.nats);
    }
}

/// "When the host is gone, the session's next call goes to another host",
/// for every affinity mode. The session's host shuts down gracefully
/// (`Node::shutdown`: clients "send it nothing more"); once the client no
/// longer lists it, a `Strict` call and a `FailFast` call of that session
/// each run on the other host, neither waiting for the gone host nor
/// failing with `WorkerBusy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_host_left_goes_to_another_host_in_every_affinity_mode() {
    let mut config = ClientConfig::default();
    config.queue_timeout = Duration::from_secs(3);
    let mut t = two_hosts(config).await;
    let r = t
        .client
        .execute_in_session("s-left", "pid", json!({}))
        .await
        .unwrap();
    let first = t.host_of(pid_of(&r));
    let other = 1 - first;
    t.nodes[first].take().unwrap().shutdown().await.unwrap();
    let gone = ["a", "b"][first];
    eventually(
        30,
        "the client stops listing the host that left",
        || async { t.client.hosts().iter().all(|h| h.id != gone) },
    )
    .await;
    for affinity in [Affinity::Strict, Affinity::FailFast, Affinity::Prefer] {
        let options = CallOptions::new()
            .session("s-left")
            .affinity(affinity)
            .timeout(Duration::from_secs(20));
        let r = t
            .client
            .execute_with("pid", json!({}), options)
            .await
            .unwrap_or_else(|e| panic!("{affinity:?}: {e:?}"));
        assert_eq!(t.host_of(pid_of(&r)), other, "{affinity:?}: {r}");
    }
    t.stop().await;
}

/// "Without a `CallOptions::timeout` the host's pool applies its own
/// default": a host whose adapter's `command_timeout` is 400 ms fails a
/// call of 20 s sent without a timeout with `Error::CallTimeout`, long
/// before the call would end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_call_timeout_the_hosts_own_default_deadline_applies() {
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let adapter = Bridge::python(test_worker()).command_timeout(Duration::from_millis(400));
    let pool = pool_of(adapter, 1).await;
    let node = snakepit_cluster::serve(&conn, "test", pool.clone())
        .await
        .unwrap();
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    let started = Instant::now();
    let e = tokio::time::timeout(
        Duration::from_secs(15),
        client.execute("sleep", json!({"ms": 20_000})),
    )
    .await
    .expect("the host's default deadline ends the call")
    .unwrap_err();
    assert!(matches!(e, Error::CallTimeout { .. }), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(15));
    // The host's worker is usable again afterwards.
    eventually(30, "the host serves again", || async {
        client.execute("echo", json!({})).await.is_ok()
    })
    .await;
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// A host that shuts down gracefully "finishes the calls it runs, however
/// long they take": a stream running on it when `Node::shutdown` is called
/// delivers every chunk and its final result, and `shutdown` returns after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_leaving_mid_stream_delivers_every_chunk_and_the_result() {
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let pool = pool(1).await;
    let node = snakepit_cluster::serve(&conn, "test", pool.clone())
        .await
        .unwrap();
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    let n = 2_000u64;
    let mut stream = client
        .execute_stream(
            "stream",
            json!({"n": n}),
            CallOptions::new().timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    // The first chunk has arrived: the call runs on the host.
    let first = stream.next().await.expect("a first item").unwrap();
    assert!(matches!(first, StreamItem::Chunk(_)), "{first:?}");
    // The reader pauses so that the host must wait on it while it leaves.
    let leaving = tokio::spawn(node.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut chunks = 1u64;
    let mut done = None;
    while let Some(item) = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("the stream goes on")
    {
        match item.unwrap_or_else(|e| panic!("after {chunks} chunks: {e:?}")) {
            StreamItem::Chunk(v) => {
                assert_eq!(v["i"], chunks, "chunks in order, none lost");
                chunks += 1;
            }
            StreamItem::Done(v) => done = Some(v),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(chunks, n);
    assert_eq!(done, Some(json!({"done": n})));
    tokio::time::timeout(Duration::from_secs(30), leaving)
        .await
        .expect("shutdown returns once its calls ended")
        .unwrap()
        .unwrap();
    pool.shutdown().await.unwrap();
}

/// "A cluster with no host at all is a cluster with no room: calls wait,
/// then time out" (`Error::QueueTimeout`, never ran), whatever the kind
/// of call: a session call, a typed call and a stream as well as a plain
/// one; a deadline shorter than the queue timeout ends the wait first
/// (`Error::CallTimeout`, which `never_ran` never claims). `status` answers an empty list, not an
/// error, within its window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_host_every_kind_of_call_waits_then_times_out_and_status_is_empty() {
    let nats = NatsServer::start().await;
    let mut config = ClientConfig::default();
    config.queue_timeout = Duration::from_millis(400);
    let client = client(&nats, config).await;
    let queue_timeout = |e: &Error, what: &str| {
        assert!(matches!(e, Error::QueueTimeout(_)), "{what}: {e:?}");
        assert!(e.never_ran(), "{what}: {e:?}");
    };
    let e = client
        .execute_in_session("nobody", "echo", json!({}))
        .await
        .unwrap_err();
    queue_timeout(&e, "session call");
    let e = client
        .call::<Value, Value>("echo", &json!({}), CallOptions::new())
        .await
        .unwrap_err();
    queue_timeout(&e, "typed call");
    match client
        .execute_stream("stream", json!({"n": 3}), CallOptions::new())
        .await
    {
        Err(e) => queue_timeout(&e, "stream"),
        Ok(mut s) => {
            let e = s.next().await.expect("an item").unwrap_err();
            queue_timeout(&e, "stream");
        }
    }
    let e = client
        .execute_with(
            "echo",
            json!({}),
            CallOptions::new().timeout(Duration::from_millis(150)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::CallTimeout { .. } | Error::QueueTimeout(_)),
        "{e:?}"
    );
    let started = Instant::now();
    let status = client.status(Duration::from_millis(300)).await.unwrap();
    assert!(status.is_empty(), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(client.hosts().is_empty());
}

/// One host of one worker served from this process, its client, and the
/// host's in-flight count as its status says.
async fn in_flight(client: &Client) -> u64 {
    client.status(Duration::from_millis(300)).await.unwrap()[0]["in_flight"]
        .as_u64()
        .unwrap()
}

/// "Cancellation: dropping the caller's future ... sends a cancel message
/// to the host, which drops the call in its pool", also when the host is
/// leaving (`Node::shutdown`, after which clients "send it nothing
/// more"): the leaving host waits for "the calls it runs, however long
/// they take", so a cancel that did not reach it would hold its shutdown
/// for the whole call (60 s here). The caller drops its call once the
/// client no longer lists the host: the call leaves the host's pool and
/// `shutdown` returns long before the call would have ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_call_on_a_leaving_host_cancels_it_there_and_lets_it_leave() {
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let pool = pool(1).await;
    let node = snakepit_cluster::serve(&conn, "test", pool.clone())
        .await
        .unwrap();
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("sleep", json!({"ms": 60_000})).await })
    };
    eventually(30, "the call runs on the host", || async {
        in_flight(&client).await == 1
    })
    .await;
    let leaving = tokio::spawn(node.shutdown());
    eventually(30, "the client stops listing the leaving host", || async {
        client.hosts().is_empty()
    })
    .await;
    call.abort();
    let _ = call.await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), leaving)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the host still runs the dropped call after {:?} (pool in flight: {})",
                started.elapsed(),
                pool.stats().in_flight
            )
        })
        .unwrap()
        .unwrap();
    // The pool cancels it in the worker: gone long before its 60 s.
    eventually(20, "the pool no longer runs the dropped call", || async {
        pool.stats().in_flight == 0
    })
    .await;
    pool.shutdown().await.unwrap();
}

/// A host "finishes the calls it runs" when it leaves, and these include
/// the calls it accepted beyond its workers (the prefetch, "calls a host
/// accepts beyond those running, queued in its pool"): one worker, three
/// calls of 1 s sent at once, the host told to leave while it runs one
/// and holds another. Every call the host took ends with its result; a call it had
/// not taken, with no other host to go to, waits and ends with
/// `QueueTimeout` (never ran). None fails with `HostLost` or a shutdown
/// error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_host_finishes_the_calls_it_prefetched() {
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let pool = pool(1).await;
    let node = snakepit_cluster::serve(&conn, "test", pool.clone())
        .await
        .unwrap();
    let mut config = ClientConfig::default();
    config.queue_timeout = Duration::from_secs(2);
    let client = client(&nats, config).await;
    wait_hosts(&client, 1).await;
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .execute("sleep", json!({"ms": 1000, "token": i}))
                    .await
            })
        })
        .collect();
    eventually(30, "the host runs one call and holds another", || async {
        let stats = pool.stats();
        stats.in_flight + stats.queued >= 2
    })
    .await;
    let taken = pool.stats().in_flight + pool.stats().queued;
    node.shutdown().await.unwrap();
    let mut ok = 0;
    for call in calls {
        match tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("every call ends")
            .unwrap()
        {
            Ok(_) => ok += 1,
            Err(e) => assert!(
                matches!(e, Error::QueueTimeout(_)) && e.never_ran(),
                "a call the leaving host took or declined: {e:?}"
            ),
        }
    }
    assert!(
        ok >= taken,
        "{ok} of 3 ended ok, the host had taken {taken}"
    );
    pool.shutdown().await.unwrap();
}

/// Streams: "A reader that stops holds up its stream's worker on the host
/// ... The call's deadline still holds while the host waits." A stream of
/// 100,000 chunks with a 1 s deadline whose reader takes one chunk and
/// then stops for 3 s: the host ends the call at its deadline (its pool
/// no longer runs it), and the reader, once it reads on, gets the chunks
/// already sent then `Error::CallTimeout`, not the final result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_deadline_holds_while_its_reader_has_stopped() {
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let pool = pool(1).await;
    let node = snakepit_cluster::serve(&conn, "test", pool.clone())
        .await
        .unwrap();
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    let mut stream = client
        .execute_stream(
            "stream",
            json!({"n": 100_000}),
            CallOptions::new().timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap();
    let first = stream.next().await.expect("a first item").unwrap();
    assert!(matches!(first, StreamItem::Chunk(_)), "{first:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        pool.stats().in_flight,
        0,
        "the host's pool ended the call at its deadline"
    );
    let mut chunks = 1u64;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the stream ends")
        {
            Some(Ok(StreamItem::Chunk(_))) => chunks += 1,
            Some(other) => break other,
            None => panic!("the stream ended without an error after {chunks} chunks"),
        }
    };
    assert!(
        matches!(end, Err(Error::CallTimeout { .. })),
        "after {chunks} chunks: {end:?}"
    );
    assert!(chunks < 100_000);
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

impl TwoHosts {
    /// Fills host `i` (one worker, no prefetch) with a call of 60 s,
    /// without a session (none of the client's records is touched): the
    /// call is cancelled when the handle is aborted.
    async fn fill(&self, i: usize) -> tokio::task::JoinHandle<Result<Value, Error>> {
        let spawn = || {
            let client = self.client.clone();
            tokio::spawn(async move { client.execute("sleep", json!({"ms": 60_000})).await })
        };
        let busy = |j: usize| self.pools[j].stats().in_flight == 1;
        let first = spawn();
        eventually(30, "the first filling call runs", || async {
            busy(0) || busy(1)
        })
        .await;
        if busy(i) {
            return first;
        }
        // It went to the other host: the next can only go to host i.
        let second = spawn();
        eventually(30, "the second filling call runs", || async { busy(i) }).await;
        self.free(1 - i, first).await;
        second
    }

    async fn free(&self, i: usize, call: tokio::task::JoinHandle<Result<Value, Error>>) {
        call.abort();
        let _ = call.await;
        let (pool, client) = (self.pools[i].clone(), self.client.clone());
        let id = ["a", "b"][i];
        eventually(30, "the host is free again", || async {
            pool.stats().in_flight == 0 && client.hosts().iter().any(|h| h.id == id && h.free > 0)
        })
        .await;
    }

    /// Runs `pid` in `session` with `affinity`: the host it ran on, or the
    /// error.
    async fn on(&self, session: &str, affinity: Affinity) -> Result<usize, Error> {
        let options = CallOptions::new()
            .session(session)
            .affinity(affinity)
            .timeout(Duration::from_secs(20));
        let r = self.client.execute_with("pid", json!({}), options).await?;
        Ok(self.host_of(pid_of(&r)))
    }
}

/// docs/cluster.md: "The client remembers the last host of up to
/// `ClientConfig::max_sessions` sessions ...; a new session beyond it
/// takes the place of the one used least recently". With room for two
/// records: `s1` on one host and `s2` on the other, `s1` used again, then
/// a new `s3`: `s2`'s record is the one dropped (a `FailFast` call of `s2`
/// while its old host is full runs on the other host instead of failing
/// with `WorkerBusy`), and `s1` keeps its host (`FailFast` while that host
/// is full is `WorkerBusy` naming it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_session_beyond_max_sessions_takes_the_place_of_the_least_recently_used() {
    let mut config = ClientConfig::default();
    config.max_sessions = 2;
    config.queue_timeout = Duration::from_secs(5);
    let t = two_hosts_with(config, Some(0)).await;
    let x = t.on("s1", Affinity::Prefer).await.unwrap();
    let y = 1 - x;
    let filling = t.fill(x).await;
    assert_eq!(t.on("s2", Affinity::Prefer).await.unwrap(), y);
    t.free(x, filling).await;
    assert_eq!(t.on("s1", Affinity::Strict).await.unwrap(), x, "s1 kept");
    assert_eq!(t.on("s2", Affinity::Strict).await.unwrap(), y, "s2 kept");
    assert_eq!(
        t.on("s1", Affinity::Strict).await.unwrap(),
        x,
        "s1 used last"
    );
    t.on("s3", Affinity::Prefer).await.unwrap();

    // s1 kept its record (checked first: a call that runs records its
    // session as the most recent, and would push s1 out).
    let filling = t.fill(x).await;
    let r = t.on("s1", Affinity::FailFast).await;
    match &r {
        Err(Error::WorkerBusy { .. }) => {
            assert!(format!("{r:?}").contains(["host:a", "host:b"][x]), "{r:?}")
        }
        other => panic!("s1 keeps its host: {other:?}"),
    }
    t.free(x, filling).await;
    // s2, the least recently used, lost its record.
    let filling = t.fill(y).await;
    let r = t.on("s2", Affinity::FailFast).await;
    assert_eq!(r.as_ref().ok(), Some(&x), "s2 has no host any more: {r:?}");
    t.free(y, filling).await;
    t.stop().await;
}
