//! Races in the cluster's client and host (crates/cluster/src/client.rs,
//! host.rs, outbox.rs), tested from outside against a real nats-server on
//! 127.0.0.1 and real Python workers
//! (`tests/workers/outside_client_races_worker.py`, which logs what it ran
//! to a file: `<token> start|end|interrupted <pid>`).
//!
//! Invariants held against every test: every call gets exactly one
//! outcome, within its deadline plus the documented slack; a call the docs
//! say never ran did not run; no reply reaches the wrong caller; a stream
//! delivers every chunk in order or fails with the documented error; and
//! nothing is left running at the end (the cancels reach the hosts).
//!
//! Hosts are served from this process (their pools' figures are read
//! directly); a small TCP proxy (`common/proxy.rs`) sits between a host
//! and the server where a test needs that host's path cut on its own.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use common::files::{count_logged, logged, temp, Removed};
use common::proxy::{connect_quick, Link, Proxy};
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use snakepit_cluster::{is_host_lost, Client, ClientConfig, ClusterStream, Node, ServeOptions};
use snakepit_core::{CallOptions, Error, Pool, StreamItem};

/// The hosts' heartbeat interval.
const HEARTBEAT: Duration = Duration::from_millis(100);

/// Turns a hang into a failure (never a measure of speed).
const GUARD: Duration = Duration::from_secs(20);

/// The start of the names of this file's temporary files.
const TEMP_PREFIX: &str = "outside-client-races";

fn worker_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/outside_client_races_worker.py")
}

/// A pool of `workers` workers of the test's script, served from this
/// process as host `id` on `conn`, beating every [`HEARTBEAT`], with
/// `prefetch` per worker.
async fn serve_host(
    conn: &async_nats::Client,
    id: &str,
    workers: usize,
    prefetch: usize,
) -> (Pool, Node) {
    let pool = pool_of(ScriptWorker(worker_script()), workers).await;
    let options = ServeOptions::new()
        .host_id(id)
        .heartbeat(HEARTBEAT)
        .prefetch_per_worker(prefetch);
    let node = snakepit_cluster::serve_with(conn, "test", pool.clone(), options)
        .await
        .unwrap();
    (pool, node)
}

async fn client_on(conn: &async_nats::Client, host_timeout: Duration) -> Client {
    let mut c = ClientConfig::default();
    c.host_timeout = host_timeout;
    c.queue_timeout = Duration::from_secs(20);
    Client::connect_with(conn, "test", c).await.unwrap()
}

/// Stops serving at once and shuts the pool down.
async fn stop(node: Node, pool: Pool) {
    drop(node);
    let _ = tokio::time::timeout(Duration::from_secs(10), pool.shutdown()).await;
}

async fn guarded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {GUARD:?}"))
}

/// An empty log file for the worker, removed on drop (the worker writes
/// only to a log that exists, so a worker stopped after its test ended
/// leaves none behind).
fn log_file(name: &str) -> Removed {
    let path = temp(TEMP_PREFIX, name);
    std::fs::write(&path, "").unwrap();
    Removed(path)
}

/// Waits until the host's pool runs nothing.
async fn host_runs_nothing(pool: &Pool, secs: u64, what: &str) {
    let until = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = pool.stats();
        if s.in_flight == 0 && s.busy == 0 {
            return;
        }
        assert!(
            Instant::now() < until,
            "{what}: the host still runs {} call(s) ({} busy worker(s)) {secs} s later",
            s.in_flight,
            s.busy
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A pool of `workers` served as host `a` on `host_conn` (no prefetch),
/// and a client on `client_conn` (its host timeout `host_timeout`) that
/// has heard of it.
async fn host_and_client(
    host_conn: &async_nats::Client,
    workers: usize,
    client_conn: &async_nats::Client,
    host_timeout: Duration,
) -> (Pool, Node, Client) {
    let (pool, node) = serve_host(host_conn, "a", workers, 0).await;
    let client = client_on(client_conn, host_timeout).await;
    wait_hosts(&client, 1).await;
    (pool, node, client)
}

/// [`host_and_client`], each on a connection of its own to `nats`.
async fn host_and_client_of(
    nats: &NatsServer,
    workers: usize,
    host_timeout: Duration,
) -> (Pool, Node, Client) {
    host_and_client(
        &nats.connect().await,
        workers,
        &nats.connect().await,
        host_timeout,
    )
    .await
}

/// A new run of host `a` (one worker) on a connection of its own to
/// `nats`, once `client` hears its free worker.
async fn new_run_heard(nats: &NatsServer, client: &Client) -> (Pool, Node) {
    let (pool, node) = serve_host(&nats.connect().await, "a", 1, 0).await;
    eventually(20, "the client hears the new run's free worker", || async {
        client.hosts().iter().any(|h| h.id == "a" && h.free == 1)
    })
    .await;
    (pool, node)
}

/// A `run` call of `ms` ms on `client`, logged as `token` in `log` (and
/// writing `marker` once it runs, if given), on a task.
fn spawn_run(
    client: &Client,
    token: &str,
    ms: u64,
    log: &Path,
    marker: Option<&Path>,
    options: CallOptions,
) -> tokio::task::JoinHandle<Result<Value, Error>> {
    let client = client.clone();
    let mut args = json!({"ms": ms, "token": token, "log": log});
    if let Some(marker) = marker {
        args["marker"] = json!(marker);
    }
    tokio::spawn(async move { client.execute_with("run", args, options).await })
}

/// [`spawn_run`] writing `marker`, once it runs (`what`).
async fn spawn_running(
    client: &Client,
    token: &str,
    ms: u64,
    log: &Path,
    marker: &Path,
    options: CallOptions,
    what: &str,
) -> tokio::task::JoinHandle<Result<Value, Error>> {
    let call = spawn_run(client, token, ms, log, Some(marker), options);
    eventually(20, what, || async move { marker.exists() }).await;
    call
}

/// Reads `s` on (each item within [`GUARD`], `what`), pushing its chunks'
/// `i` onto `chunks`, up to its first item that is not a chunk (`None`:
/// the stream ended without one).
async fn read_on(
    s: &mut ClusterStream,
    chunks: &mut Vec<u64>,
    what: &str,
) -> Option<Result<StreamItem, Error>> {
    loop {
        match guarded(what, s.next()).await {
            Some(Ok(StreamItem::Chunk(v))) => chunks.push(v["i"].as_u64().unwrap()),
            other => return other,
        }
    }
}

/// The chunks a reader was handed are 0, 1, 2, ...: no hole, no repeat.
fn assert_in_order(chunks: &[u64]) {
    assert!(
        chunks.iter().copied().eq(0..chunks.len() as u64),
        "the reader was handed a stream with a hole or a repeat: {chunks:?}"
    );
}

// ------------------------------------------------------------------ tests

/// A stream whose deadline passes while its host waits for credit for the
/// stream's LAST chunk (its reader has stopped, a full window of 256
/// chunks ahead), the worker having finished meanwhile.
///
/// docs/cluster.md:143-155 (Streams): "the host sends at most 256 chunks
/// ahead of the caller's reader ... no chunk is dropped on the way: each
/// is numbered, and a stream whose chunks came with a hole ... fails with
/// `Error::HostLost` at the hole instead of handing the reader what
/// follows it ... The call's deadline still holds while the host waits."
/// crates/core/src/pool/stream.rs (`Pool::execute_stream`): "No chunk is
/// lost ... once it [the deadline] has passed, the next item is
/// [`Error::CallTimeout`]".
///
/// So the reader, once it reads on, gets either all 257 chunks and the
/// result, or the chunks sent and then `Error::CallTimeout`; never the
/// final result (`{"n": 257}`) after only 256 chunks.
///
/// What happened before the fix (host.rs, `stream_call`): the credit wait times out at
/// the deadline and the host `continue`s, dropping the chunk it held
/// without numbering it; the pool's stream, its chunks all taken and its
/// reply in, yields `Done` (no deadline check on that branch of
/// `CallStream::poll_next`), and the host sends `ok` with `n: 256`, which
/// matches the 256 chunks the client counted: the reader is handed a
/// successful stream with its last chunk silently missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_deadline_passing_while_its_host_holds_the_last_chunk_never_ends_in_success_without_it(
) {
    let nats = NatsServer::start().await;
    let (pool, node, client) = host_and_client_of(&nats, 1, Duration::from_millis(1500)).await;
    let log = log_file("last-chunk.log");
    let n = 257u64;
    let mut s = client
        .execute_stream(
            "stream",
            json!({"n": n, "token": "s", "log": log.0}),
            CallOptions::new().timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    // The worker writes all of it at once; the host sends 256 and waits
    // for credit for the last; the reader takes nothing until after the
    // deadline (2 s), well before the client's own bound (2 + 1.5 s).
    eventually(20, "the worker finished its stream", || async {
        count_logged(&log.0, "s", "end") == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let mut chunks = Vec::new();
    let end = read_on(&mut s, &mut chunks, "the stream's next item")
        .await
        .unwrap_or_else(|| {
            panic!(
                "the stream ended without an outcome after {} chunks",
                chunks.len()
            )
        });
    assert_in_order(&chunks);
    match end {
        Ok(StreamItem::Done(v)) => assert_eq!(
            chunks.len() as u64,
            n,
            "the stream ended in success ({v}) with {} of its {n} chunks: \
             chunk(s) {:?} silently missing",
            chunks.len(),
            (chunks.len() as u64..n).collect::<Vec<_>>()
        ),
        Err(Error::CallTimeout { .. }) => {}
        other => panic!("after {} chunks: {other:?}", chunks.len()),
    }
    host_runs_nothing(&pool, 10, "after the stream").await;
    stop(node, pool).await;
}

/// The NATS server is restarted while a call runs on a host whose own path
/// to it stays cut until after the client is back (async-nats reconnects
/// each connection on its own; whichever comes first is chance, the proxy
/// only fixes the order).
///
/// docs/cluster.md:132-142 (Cancellation): "So does a call that ended
/// without its host's outcome (... the host-lost error when the host fell
/// silent or the client's connection dropped), so that a host that was
/// only cut off does not keep a worker busy with a call nobody waits for.
/// The cancel goes out once the client's connection is back; a host whose
/// own connection was closed and made again meanwhile lost what NATS had
/// for it, so the client sends it the cancels it kept for it (the last
/// 4,096 of all) again once that host's heartbeat says it reconnected."
///
/// The call fails with `HostLost` while NATS is down (its cancel is kept
/// under the client's first connection); the client reconnects, and its
/// monitor sends the cancel again (to nobody: the host is still away);
/// then the host reconnects and says so in its heartbeat: the client must
/// send it the cancel again, and the worker be interrupted.
///
/// What happened before the fix: `Inner::resend_cancels` (the client's reconnect) took
/// the kept cancels OUT of the ring (`Resend::before` pops them), so
/// `resend_cancels_to` (the host's reconnect) finds nothing: the call runs
/// on the host to its natural end for nobody, holding its worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_kept_across_a_nats_restart_reaches_a_host_that_reconnects_after_the_client() {
    cancel_reaches_a_host_back_from_a_cut(Meanwhile::NatsRestart).await;
}

/// The control of the test above, the same but for the NATS restart: the
/// host's path is cut while its call runs, the call fails with `HostLost`
/// once the host has been silent for the client's host timeout (its
/// cancel goes to nobody), and the host's path comes back: the cancel the
/// client kept reaches it and the worker is interrupted (docs/cluster.md
/// :132-142, quoted above). It passes: the mechanism works as long as the
/// client's own connection did not reset in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_while_its_host_was_cut_off_reaches_it_once_it_is_back() {
    cancel_reaches_a_host_back_from_a_cut(Meanwhile::Nothing).await;
}

/// The same defect without a NATS restart: the CLIENT's connection alone
/// is reset (its path cut and forwarded again 50 ms later) while the host
/// is away, after the call failed with `HostLost` (the host silent for the
/// host timeout). docs/cluster.md:301 (Failures): "The cancels the client
/// sent over the connection before are sent again once it is back", and
/// :139-142 (quoted above): again once the host's heartbeat says it
/// reconnected. The client's reset spends them; the host never hears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_kept_across_a_client_reset_reaches_a_host_that_was_away_meanwhile() {
    cancel_reaches_a_host_back_from_a_cut(Meanwhile::ClientReset).await;
}

/// What happens while the host is cut off, after its call failed.
#[derive(Clone, Copy, PartialEq)]
enum Meanwhile {
    Nothing,
    /// The server is killed before the call fails, started again after.
    NatsRestart,
    /// The client's own connection is reset after the call failed.
    ClientReset,
}

async fn cancel_reaches_a_host_back_from_a_cut(meanwhile: Meanwhile) {
    let mut nats = NatsServer::start().await;
    let host_path = Proxy::start(nats.port).await;
    let host_conn = connect_quick(&host_path.url).await;
    let client_path = Proxy::start(nats.port).await;
    let client_conn = connect_quick(&client_path.url).await;
    let (pool, node, client) =
        host_and_client(&host_conn, 1, &client_conn, Duration::from_secs(1)).await;
    let log = log_file("cut-cancel.log");
    let marker = Removed(temp(TEMP_PREFIX, "cut-cancel.marker"));
    let call = spawn_running(
        &client,
        "c",
        20_000,
        &log.0,
        &marker.0,
        CallOptions::new().timeout(Duration::from_secs(30)),
        "the call runs on the host",
    )
    .await;

    host_path.set(Link::Cut);
    if meanwhile == Meanwhile::NatsRestart {
        nats.kill();
    }
    let failed = guarded("the call once its host is away", call)
        .await
        .unwrap();
    match &failed {
        Err(e) => assert!(is_host_lost(e) && !e.never_ran(), "{e:?}"),
        Ok(v) => panic!("the call succeeded with its host away: {v}"),
    }
    match meanwhile {
        Meanwhile::NatsRestart => nats.restart().await,
        Meanwhile::ClientReset => {
            client_path.set(Link::Cut);
            tokio::time::sleep(Duration::from_millis(50)).await;
            client_path.set(Link::Forward);
        }
        Meanwhile::Nothing => {}
    }
    let connects = || {
        client_conn
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let want = if meanwhile == Meanwhile::Nothing {
        1
    } else {
        2
    };
    eventually(20, "the client's connection is up (again)", || async {
        client_conn.connection_state() == State::Connected && connects() >= want
    })
    .await;
    // Several of the client's checks (a sixth of its 1 s host timeout).
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        count_logged(&log.0, "c", "interrupted"),
        0,
        "{:?}",
        logged(&log.0)
    );

    host_path.set(Link::Forward);
    eventually(20, "the host's connection is back", || async {
        host_conn.connection_state() == State::Connected
    })
    .await;
    let until = Instant::now() + Duration::from_secs(6);
    while count_logged(&log.0, "c", "interrupted") == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        count_logged(&log.0, "c", "interrupted"),
        1,
        "the cancel never reached the host after it reconnected (6 s): the call runs on \
         for nobody ({:?}, host in flight {})",
        logged(&log.0),
        pool.stats().in_flight
    );
    assert_eq!(count_logged(&log.0, "c", "end"), 0);
    host_runs_nothing(&pool, 10, "after the cancel").await;
    stop(node, pool).await;
}

/// A small deterministic generator (the tests' choices are the same on
/// every run).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// What one call of a churn test ended with (`None`: its caller dropped
/// it).
type Ended = (String, Duration, Duration, Option<Result<Value, Error>>);

/// Three clients (two on one NATS connection, one on its own) send 30
/// calls each to a host of two workers (prefetch 1), all at once: calls
/// of 0 to 60 ms with deadlines of 50 ms to 1.05 s, so that most wait in
/// the clients' queues and many deadlines pass in the queue, as the call
/// is picked, or as it is sent in a batch; a quarter of them are dropped
/// by their callers after 0 to 30 ms (in the queue, in the outbox, on the
/// wire, running).
///
/// docs/cluster.md:117-123 (Deadlines): "the client sends what is left of
/// the `CallOptions::timeout` (counted from submission, queue wait
/// included), and the host's pool enforces it as its own
/// (`Error::CallTimeout`) ... A host that still sends heartbeats but never
/// sends a call's outcome has the call fail with `Error::CallTimeout` one
/// host timeout after the deadline"; :307 "No call is sent twice";
/// :398-400 (Security): "give each caller user its own, so that no caller
/// reads another's results or learns its inbox (and so could not aim a
/// call's reply at another caller's waiting call)" (each `Client` takes
/// an inbox of its own, even on a shared connection).
///
/// Each call that was not dropped ends once: with its own token (never
/// another caller's), or `Error::CallTimeout` carrying its own timeout,
/// within its deadline plus the host timeout (plus 3 s for a loaded
/// machine); none ran twice, each that succeeded ran once to its end, and
/// the host runs nothing afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_of_three_clients_under_churn_each_end_once_with_their_own_outcome() {
    let nats = NatsServer::start().await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 2, 1).await;
    let host_timeout = Duration::from_millis(1500);
    let shared = nats.connect().await;
    let clients = vec![
        client_on(&shared, host_timeout).await,
        client_on(&shared, host_timeout).await,
        client_on(&nats.connect().await, host_timeout).await,
    ];
    for c in &clients {
        wait_hosts(c, 1).await;
    }
    let log = log_file("churn.log");
    let mut rng = Lcg(41);
    let mut tasks = Vec::new();
    for (k, c) in clients.iter().enumerate() {
        for i in 0..30 {
            let token = format!("c{k}-{i}");
            let ms = rng.below(60);
            let timeout = Duration::from_millis(50 + rng.below(1000));
            let drop_after = (rng.below(4) == 0).then(|| Duration::from_millis(rng.below(30)));
            let (c, log) = (c.clone(), log.0.clone());
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let call = c.execute_with(
                    "run",
                    json!({"ms": ms, "token": token, "log": log}),
                    CallOptions::new().timeout(timeout),
                );
                let r = match drop_after {
                    Some(d) => tokio::time::timeout(d, call).await.ok(),
                    None => Some(call.await),
                };
                (token, timeout, started.elapsed(), r)
            }));
        }
    }
    let mut ended: Vec<Ended> = Vec::new();
    for t in tasks {
        ended.push(guarded("a churn call", t).await.unwrap());
    }
    let slack = host_timeout + Duration::from_secs(3);
    let (mut ok, mut timed_out) = (0, 0);
    for (token, timeout, took, r) in &ended {
        let Some(r) = r else { continue };
        assert!(
            *took <= *timeout + slack,
            "{token}: ended {took:?} after submission, deadline {timeout:?}: {r:?}"
        );
        match r {
            Ok(v) => {
                assert_eq!(v["token"], json!(token), "{token} got another call's reply");
                ok += 1;
            }
            Err(Error::CallTimeout { timeout: t, .. }) => {
                assert_eq!(t, timeout, "{token}: the caller's own timeout");
                timed_out += 1;
            }
            Err(e) => panic!("{token}: {e:?}"),
        }
    }
    eprintln!("{ok} ok, {timed_out} timed out, of {}", ended.len());
    host_runs_nothing(&pool, 10, "after the churn").await;
    for (token, _, _, r) in &ended {
        let starts = count_logged(&log.0, token, "start");
        assert!(starts <= 1, "{token} ran {starts} times");
        if let Some(Ok(_)) = r {
            assert_eq!(
                (starts, count_logged(&log.0, token, "end")),
                (1, 1),
                "{token}"
            );
        }
    }
    stop(node, pool).await;
}

/// Calls dropped by their callers at every moment of their send: after 0
/// to 7.7 ms, in rounds of two on a host of two workers without prefetch
/// (so each call is taken at once): in the client's outbox (a drop after
/// 0 ms: the call was queued to go, not yet sent), on the wire, on the
/// host before its acknowledgement, running. Each call would sleep 5 s.
///
/// docs/cluster.md:132-135 (Cancellation): "dropping the caller's future
/// ... sends a cancel message to the host, which drops the call in its
/// pool; the pool cancels it in the worker (`cancel` frame or SIGINT) as
/// for a local call"; client.rs (`Pending`): "if the call was sent and
/// the caller left before the host answered, tells the host to cancel
/// it". A cancel may overtake its call on the way (outside_cluster.rs
/// tests that the host then never runs it).
///
/// Within a few seconds of each round the host runs nothing, and no call
/// ran to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_dropped_at_every_moment_of_their_send_are_never_left_running() {
    let nats = NatsServer::start().await;
    let (pool, node, client) = host_and_client_of(&nats, 2, Duration::from_millis(1500)).await;
    let log = log_file("dropped.log");
    for round in 0..12u64 {
        let after = Duration::from_micros(round * 700);
        let calls: Vec<_> = (0..2)
            .map(|j| {
                let (client, log) = (client.clone(), log.0.clone());
                tokio::spawn(async move {
                    let call = client.execute_with(
                        "run",
                        json!({"ms": 5000, "token": format!("r{round}-{j}"), "log": log}),
                        CallOptions::new().timeout(Duration::from_secs(30)),
                    );
                    tokio::time::timeout(after, call).await.ok()
                })
            })
            .collect();
        for c in calls {
            let r = guarded("a dropped call", c).await.unwrap();
            assert!(
                r.is_none(),
                "round {round}: a 5 s call ended in {after:?}: {r:?}"
            );
        }
        host_runs_nothing(
            &pool,
            8,
            &format!("round {round} (dropped after {after:?})"),
        )
        .await;
    }
    let lines = logged(&log.0);
    assert!(
        lines.iter().all(|(_, what)| what != "end"),
        "a dropped call ran to its end: {lines:?}"
    );
    for round in 0..12 {
        for j in 0..2 {
            let token = format!("r{round}-{j}");
            assert!(
                count_logged(&log.0, &token, "start") <= 1,
                "{token}: {lines:?}"
            );
        }
    }
    stop(node, pool).await;
}

/// The NATS server is restarted under two clients (each on its own
/// connection): a stream being read, a one-shot call running, and a call
/// waiting in the client's queue for the host's two busy workers.
///
/// docs/cluster.md:300 (Failures): "the NATS connection is down | new
/// calls, and calls waiting in the client's queue, fail at once with the
/// unavailable error (never sent); calls in flight fail with the host-lost
/// error (they may or may not have run)"; :301 (a reset quicker than a
/// check fails the calls in flight too); :305 "NATS is back | calls work
/// again as soon as the client's connection is back ... a host whose
/// connection comes back later gets its calls once it is (they wait in
/// the client's queue meanwhile)"; :143-155 (Streams): every chunk in
/// order, or `Error::HostLost` at a hole.
///
/// Each call ends once: the stream with its chunks in order then
/// `HostLost` (or all of them and its result); the running call with
/// `HostLost`; the waiting one unavailable and never run (its token never
/// logged), or, when the server was back before the client looked,
/// sent and run once with its own reply. Then each client's next call
/// succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_under_two_clients_ends_each_call_once_as_documented() {
    let mut nats = NatsServer::start().await;
    let (pool, node) = serve_host(&connect_quick(&nats.url).await, "a", 2, 0).await;
    let c1_conn = connect_quick(&nats.url).await;
    let c2_conn = connect_quick(&nats.url).await;
    let c1 = client_on(&c1_conn, Duration::from_secs(1)).await;
    let c2 = client_on(&c2_conn, Duration::from_secs(1)).await;
    wait_hosts(&c1, 1).await;
    wait_hosts(&c2, 1).await;
    let log = log_file("restart.log");
    let marker = Removed(temp(TEMP_PREFIX, "restart.marker"));
    let n = 4000u64;
    let mut s = c1
        .execute_stream(
            "stream",
            json!({"n": n, "pace_ms": 1, "token": "s", "log": log.0}),
            CallOptions::new().timeout(Duration::from_secs(8)),
        )
        .await
        .unwrap();
    let (reader_tx, mut reader_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let reader = tokio::spawn(async move {
        let mut chunks = Vec::new();
        let end = loop {
            match s.next().await {
                Some(Ok(StreamItem::Chunk(v))) => {
                    let i = v["i"].as_u64().unwrap();
                    chunks.push(i);
                    let _ = reader_tx.send(i);
                }
                Some(other) => break Some(other),
                None => break None,
            }
        };
        (chunks, end)
    });
    let running = spawn_running(
        &c2,
        "r",
        3000,
        &log.0,
        &marker.0,
        CallOptions::new().timeout(Duration::from_secs(8)),
        "the call runs",
    )
    .await;
    for _ in 0..50 {
        guarded("a chunk", reader_rx.recv()).await;
    }
    let waiting = spawn_run(
        &c2,
        "w",
        10,
        &log.0,
        None,
        CallOptions::new().timeout(Duration::from_secs(15)),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;

    nats.restart().await;

    let (chunks, end) = guarded("the stream across the restart", reader)
        .await
        .unwrap();
    assert_in_order(&chunks);
    match &end {
        Some(Ok(StreamItem::Done(_))) => assert_eq!(chunks.len() as u64, n),
        Some(Err(e)) => assert!(is_host_lost(e), "the stream: {e:?}"),
        other => panic!(
            "the stream ended with {other:?} after {} chunks",
            chunks.len()
        ),
    }
    match guarded("the running call", running).await.unwrap() {
        Err(e) => assert!(
            is_host_lost(&e) && !e.never_ran(),
            "the running call: {e:?}"
        ),
        Ok(v) => panic!("the running call succeeded across the restart: {v}"),
    }
    match guarded("the waiting call", waiting).await.unwrap() {
        Err(e) => {
            assert!(
                snakepit_cluster::is_unavailable(&e) && e.never_ran(),
                "the waiting call: {e:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(
                count_logged(&log.0, "w", "start"),
                0,
                "a call that failed 'never sent' ran: {:?}",
                logged(&log.0)
            );
        }
        Ok(v) => {
            assert_eq!(v["token"], json!("w"));
            assert_eq!(count_logged(&log.0, "w", "start"), 1);
        }
    }
    assert!(count_logged(&log.0, "r", "start") <= 1);
    for (c, name) in [(&c1, "c1"), (&c2, "c2")] {
        let v = guarded(
            "a call once NATS is back",
            c.execute_with(
                "run",
                json!({"ms": 1, "token": name, "log": log.0}),
                CallOptions::new().timeout(Duration::from_secs(15)),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}'s call once NATS is back: {e:?}"));
        assert_eq!(v["token"], json!(name));
    }
    host_runs_nothing(&pool, 12, "after the restart").await;
    stop(node, pool).await;
}

/// Host `a` falls silent without a goodbye while it runs a stream and a
/// `Strict` session call (its `Node` is dropped: it stops serving at once,
/// as a crash would look to the clients), and is started again at once
/// under the same id (a new pool, a new connection), before the client's
/// host timeout.
///
/// docs/cluster.md:296 (Failures): "a host is killed (or cut off) while
/// running calls | those calls fail with the host-lost error one
/// `host_timeout` ... after the host last spoke ...; the same if it is
/// started again under its id before that (each run of a host names
/// itself in its heartbeats ... one that falls silent without a goodbye
/// is lost with its calls, even while its id lives on"; Sessions across
/// hosts: "A session's calls go to the host that served it last ... When
/// the host is gone, the session's next call goes to another host";
/// Streams: every chunk in order or `Error::HostLost`.
///
/// The stream ends with its chunks in order then `HostLost`, the call with
/// `HostLost`, each within the host timeout plus the client's check plus
/// 3 s of the old run's last word (never left waiting for its default
/// deadline); the session's next `Strict` call runs on the new run; and
/// the new run is left running nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_restarted_under_its_id_fails_the_old_runs_calls_and_serves_their_session() {
    let nats = NatsServer::start().await;
    let host_timeout = Duration::from_secs(1);
    let (pool1, node1, client) = host_and_client_of(&nats, 2, host_timeout).await;
    let log = log_file("same-id.log");
    let marker = Removed(temp(TEMP_PREFIX, "same-id.marker"));
    let strict = |token: &str, ms: u64| {
        let (client, log, marker) = (client.clone(), log.0.clone(), marker.0.clone());
        let args = json!({"ms": ms, "token": token, "log": log, "marker": marker});
        async move {
            client
                .execute_with(
                    "run",
                    args,
                    CallOptions::new()
                        .session("pinned")
                        .affinity(snakepit_core::Affinity::Strict)
                        .timeout(Duration::from_secs(30)),
                )
                .await
        }
    };
    let first = guarded("the session's first call", strict("first", 1))
        .await
        .unwrap();
    assert!(pool1.worker_pids().contains(&pid_of(&first)));
    let _ = std::fs::remove_file(&marker.0);

    let call = tokio::spawn(strict("long", 20_000));
    eventually(20, "the session's call runs", || async {
        marker.0.exists()
    })
    .await;

    let mut s = client
        .execute_stream(
            "stream",
            json!({"n": 100_000, "pace_ms": 1, "token": "s", "log": log.0}),
            CallOptions::new(),
        )
        .await
        .unwrap();
    let mut chunks = Vec::new();
    while chunks.len() < 50 {
        match guarded("a chunk", s.next()).await {
            Some(Ok(StreamItem::Chunk(v))) => chunks.push(v["i"].as_u64().unwrap()),
            other => panic!("before the restart: {other:?}"),
        }
    }
    // The new run's pool and connection are ready before the old run goes.
    let pool2 = pool_of(ScriptWorker(worker_script()), 2).await;
    let conn2 = nats.connect().await;
    drop(node1);
    let silent_since = Instant::now();
    let options = ServeOptions::new()
        .host_id("a")
        .heartbeat(HEARTBEAT)
        .prefetch_per_worker(0);
    let node2 = snakepit_cluster::serve_with(&conn2, "test", pool2.clone(), options)
        .await
        .unwrap();
    let bound = host_timeout + Duration::from_millis(250) + Duration::from_secs(3);

    let end = read_on(&mut s, &mut chunks, "the old run's stream").await;
    let stream_took = silent_since.elapsed();
    assert_in_order(&chunks);
    match &end {
        Some(Err(e)) => assert!(is_host_lost(e), "the stream: {e:?}"),
        other => panic!("the old run's stream ended with {other:?}"),
    }
    assert!(
        stream_took <= bound,
        "the stream failed {stream_took:?} after"
    );
    match guarded("the old run's call", call).await.unwrap() {
        Err(e) => assert!(is_host_lost(&e) && !e.never_ran(), "the call: {e:?}"),
        Ok(v) => panic!("a call of a run that fell silent succeeded: {v}"),
    }
    let call_took = silent_since.elapsed();
    assert!(call_took <= bound, "the call failed {call_took:?} after");

    let next = guarded("the session's next call", strict("next", 1))
        .await
        .unwrap_or_else(|e| panic!("the session's next Strict call: {e:?}"));
    assert_eq!(next["token"], json!("next"));
    assert!(
        pool2.worker_pids().contains(&pid_of(&next)),
        "it ran on the new run of `a`"
    );
    assert_eq!(count_logged(&log.0, "next", "start"), 1);
    host_runs_nothing(&pool2, 10, "the new run").await;
    let _ = tokio::time::timeout(Duration::from_secs(10), pool1.shutdown()).await;
    stop(node2, pool2).await;
}

/// Waits until `conn` is connected and has made `n` connections.
async fn connected_times(conn: &async_nats::Client, n: u64) {
    eventually(20, "the connection is made again", || async {
        conn.connection_state() == State::Connected
            && conn
                .statistics()
                .connects
                .load(std::sync::atomic::Ordering::Relaxed)
                >= n
    })
    .await;
}

/// A host restarted under its id the graceful way, the new run started
/// while the old one still finishes a call (it says goodbye every
/// heartbeat meanwhile, docs/cluster.md:52-58): the old run's connection
/// had been reset twice before (its heartbeats say `conn` 3), the new
/// run's is fresh (`conn` 1). A call runs on the new run; the new run's
/// path is cut, the caller drops the call (its cancel reaches nobody of
/// the new run), and the path comes back (`conn` 2).
///
/// docs/cluster.md:302 (Failures): "a host's connection to NATS drops and
/// is back at once (a reset) | ... The cancels the client sent it
/// meanwhile are sent again once that heartbeat says so, and the host
/// stops those calls"; :139-142 (Cancellation) likewise.
///
/// What happened before the fix (client.rs, `watch_hosts`): a heartbeat of another run of
/// the id sets the entry's `conn` to that run's count (`!same_run` ⇒
/// `entry.conn = hb.conn`), and the old run's goodbyes keep coming; the
/// new run's `conn` 2 is then not above the entry's 3, so its reconnect is
/// never seen: no cancel is sent again (and its streams would not fail
/// either), and the call runs on for nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_runs_reconnect_is_seen_while_an_old_run_of_its_id_says_goodbye() {
    new_run_reconnects_while_the_old_says_goodbye(2).await;
}

/// The control of the test above: the same with an old run whose
/// connection was never reset (its `conn` 1, below the new run's 2 after
/// its reset): the cancel reaches the new run once it is back. It passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_runs_reconnect_is_seen_while_an_old_run_that_never_reconnected_says_goodbye() {
    new_run_reconnects_while_the_old_says_goodbye(0).await;
}

/// [`a_new_runs_reconnect_is_seen_while_an_old_run_of_its_id_says_goodbye`]
/// with the old run's connection reset `old_resets` times first.
async fn new_run_reconnects_while_the_old_says_goodbye(old_resets: u64) {
    let nats = NatsServer::start().await;
    let old_path = Proxy::start(nats.port).await;
    let old_conn = connect_quick(&old_path.url).await;
    let (old_pool, old_node, client) = host_and_client(
        &old_conn,
        1,
        &connect_quick(&nats.url).await,
        Duration::from_secs(1),
    )
    .await;
    for n in 2..2 + old_resets {
        old_path.set(Link::Cut);
        tokio::time::sleep(Duration::from_millis(50)).await;
        old_path.set(Link::Forward);
        connected_times(&old_conn, n).await;
    }
    let log = log_file("rolling.log");
    let old_marker = Removed(temp(TEMP_PREFIX, "rolling-old.marker"));
    let new_marker = Removed(temp(TEMP_PREFIX, "rolling-new.marker"));
    // The old run's call is another client's: this client counts its own
    // calls on an id against the capacity its last heartbeat announced,
    // and would hold its next call while one runs on the old run.
    let other = client_on(&nats.connect().await, Duration::from_secs(1)).await;
    wait_hosts(&other, 1).await;
    let options = || CallOptions::new().timeout(Duration::from_secs(30));
    let old_call = spawn_running(
        &other,
        "old",
        15_000,
        &log.0,
        &old_marker.0,
        options(),
        "the old run's call runs",
    )
    .await;
    // The old run leaves gracefully: goodbyes every heartbeat until its
    // call ends.
    let leaving = tokio::spawn(old_node.shutdown());
    let new_path = Proxy::start(nats.port).await;
    let new_conn = connect_quick(&new_path.url).await;
    let (new_pool, new_node) = serve_host(&new_conn, "a", 1, 0).await;
    let new_call = spawn_running(
        &client,
        "new",
        20_000,
        &log.0,
        &new_marker.0,
        options(),
        "the new run's call runs",
    )
    .await;
    assert_eq!(
        new_pool.stats().in_flight,
        1,
        "the call runs on the new run"
    );

    new_path.set(Link::Cut);
    tokio::time::sleep(Duration::from_millis(300)).await;
    new_call.abort();
    let _ = new_call.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    new_path.set(Link::Forward);
    connected_times(&new_conn, 2).await;
    let until = Instant::now() + Duration::from_secs(5);
    while count_logged(&log.0, "new", "interrupted") == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let interrupted = count_logged(&log.0, "new", "interrupted");
    let old_still_leaving = !leaving.is_finished();
    old_call.abort();
    leaving.abort();
    let _ = tokio::time::timeout(Duration::from_secs(10), old_pool.shutdown()).await;
    assert!(old_still_leaving, "the old run was still saying goodbye");
    assert_eq!(
        interrupted,
        1,
        "the cancel of the call dropped while the new run was cut off never reached it \
         after it reconnected (5 s): {:?}",
        logged(&log.0)
    );
    host_runs_nothing(&new_pool, 10, "the new run").await;
    stop(new_node, new_pool).await;
}

/// A host restarted under its id the graceful way: the old run finishes a
/// call of this client (saying goodbye every heartbeat), the new run is up
/// and idle, and this client makes its next call.
///
/// docs/cluster.md:79-81 (Routing by free capacity): "A client sends a
/// call only to a host that has room as it counts it (the host's last
/// announcement, minus the calls this client has sent there since)";
/// :88-89 "a busy host takes no call that an idle one could run now";
/// :52-58: the leaving run "tells the clients it is leaving (they send it
/// nothing more), finishes the calls it runs".
///
/// The new run announces one free worker and this client has sent it
/// nothing since, so the call should run there now. What happened before the fix
/// (client.rs, `watch_hosts`/`HostEntry::room`): the client counts every
/// call it has on the id (`mine`, the old run's call included) against
/// the new run's announcement (`others = (capacity - free) - mine`,
/// saturating, then `room = capacity - others - mine` = 0): the call waits
/// in the client's queue until the old run's call ends (here past its 6 s
/// deadline: `CallTimeout`), while the new run idles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_run_of_a_host_id_takes_calls_while_the_old_run_finishes_this_clients_call() {
    let nats = NatsServer::start().await;
    let (old_pool, old_node, client) = host_and_client_of(&nats, 1, Duration::from_secs(1)).await;
    let log = log_file("restart-room.log");
    let marker = Removed(temp(TEMP_PREFIX, "restart-room.marker"));
    let old_call = spawn_running(
        &client,
        "old",
        15_000,
        &log.0,
        &marker.0,
        CallOptions::new().timeout(Duration::from_secs(30)),
        "the old run's call runs",
    )
    .await;
    let leaving = tokio::spawn(old_node.shutdown());
    let (new_pool, new_node) = new_run_heard(&nats, &client).await;
    let next = client
        .execute_with(
            "run",
            json!({"ms": 1, "token": "next", "log": log.0}),
            CallOptions::new().timeout(Duration::from_secs(6)),
        )
        .await;
    let old_still_running = !old_call.is_finished();
    old_call.abort();
    leaving.abort();
    let _ = tokio::time::timeout(Duration::from_secs(10), old_pool.shutdown()).await;
    assert!(old_still_running, "the old run's call was still running");
    let v = next.unwrap_or_else(|e| {
        panic!(
            "the next call, with the new run idle: {e:?} (log: {:?})",
            logged(&log.0)
        )
    });
    assert_eq!(v["token"], json!("next"));
    assert!(new_pool.worker_pids().contains(&pid_of(&v)));
    stop(new_node, new_pool).await;
}

/// A host leaving gracefully (saying goodbye every heartbeat while it
/// finishes a call without a deadline) is cut off from NATS for good, as a
/// kill would look to the clients, while a new run of its id is up.
///
/// docs/cluster.md:52-56: the leaving host "finishes the calls it runs
/// ... while it goes on saying goodbye every heartbeat (so their callers
/// wait for their outcomes, not for a lost host)"; :296 (Failures): "a
/// host is killed (or cut off) while running calls | those calls fail
/// with the host-lost error one `host_timeout` ... after the host last
/// spoke ...; the same if it is started again under its id before that".
///
/// The call must fail with `HostLost` soon after the goodbyes stop (here
/// within 1 s + a check + 4 s). What happened before the fix (client.rs, `monitor`): a run
/// that fell silent after a goodbye is taken for one that finished (`died
/// |= silent && !bye`), and the id's `last_seen` is kept fresh by the new
/// run: nothing ever fails the call, which waits for ever (it has no
/// deadline). Without a new run (the control below) it fails as
/// documented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_run_cut_off_mid_call_fails_its_call_even_with_a_new_run_of_its_id_up() {
    leaving_run_cut_off(true).await;
}

/// The control of the test above, without a new run: the leaving host's
/// call fails with `HostLost` once its goodbyes stop. It passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_host_cut_off_mid_call_fails_its_call_with_host_lost() {
    leaving_run_cut_off(false).await;
}

async fn leaving_run_cut_off(new_run: bool) {
    let nats = NatsServer::start().await;
    let old_path = Proxy::start(nats.port).await;
    let host_timeout = Duration::from_secs(1);
    let (old_pool, old_node, client) = host_and_client(
        &connect_quick(&old_path.url).await,
        1,
        &nats.connect().await,
        host_timeout,
    )
    .await;
    let log = log_file("leaving-cut.log");
    let marker = Removed(temp(TEMP_PREFIX, "leaving-cut.marker"));
    let call = spawn_running(
        &client,
        "old",
        20_000,
        &log.0,
        &marker.0,
        CallOptions::new(),
        "the call runs",
    )
    .await;
    let leaving = tokio::spawn(old_node.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let new = match new_run {
        true => Some(new_run_heard(&nats, &client).await),
        false => None,
    };
    assert!(
        !call.is_finished(),
        "the call still runs on the leaving run"
    );

    old_path.set(Link::Cut);
    let bound = host_timeout + Duration::from_millis(250) + Duration::from_secs(4);
    let ended = tokio::time::timeout(bound, call).await;
    leaving.abort();
    let _ = tokio::time::timeout(Duration::from_secs(10), old_pool.shutdown()).await;
    if let Some((pool, node)) = new {
        stop(node, pool).await;
    }
    match ended {
        Ok(Ok(Err(e))) => assert!(is_host_lost(&e) && !e.never_ran(), "{e:?}"),
        Ok(other) => panic!("the call of a host cut off: {other:?}"),
        Err(_) => panic!(
            "the call of a leaving run cut off from NATS was still waiting {bound:?} later \
             (no deadline: it would wait for ever)"
        ),
    }
}
