//! Cluster streams and cancels across brief disconnects and partitions,
//! tested from outside against a real nats-server (127.0.0.1) and real
//! Python workers. A small TCP proxy (as in `outside_partition.rs`) sits
//! between ONE party (a host, or the client) and the server; it forwards,
//! black-holes (connections stay open, no byte flows either way; what was
//! sent flows once it forwards again) or cuts (closes every connection and
//! refuses new ones until it forwards again: what was in flight is lost).
//! A cut followed by forwarding within about 100 ms is a connection reset
//! that async-nats repairs at once.
//!
//! Promises checked (docs/cluster.md unless said otherwise; line numbers as
//! of this writing):
//!
//! - :132-141 (Cancellation): "dropping the caller's future (or the
//!   `ClusterStream`) sends a cancel message to the host, which drops the
//!   call in its pool; the pool cancels it in the worker ... So does a call
//!   that ended without its host's outcome (its deadline, or the host-lost
//!   error when the host fell silent or the client's connection dropped)
//!   ... The cancel goes out once the client's connection is back, and
//!   reaches the host if its own connection outlived the cut".
//!   crates/cluster/src/client.rs (`Client::execute_stream`): "Dropping
//!   the stream cancels the call."
//! - :142-151 (Streams): "flow-controlled end to end: the host sends at
//!   most 256 chunks ahead of the caller's reader, and the client grants 64
//!   more each time its reader has taken 64 ... A reader that stops holds
//!   up its stream's worker on the host ... no chunk is dropped on the way
//!   ... The call's deadline still holds while the host waits."
//! - :283 (Failures): "the client's connection drops and is back at once
//!   (a reset ...) | the calls in flight fail with the host-lost error at
//!   the client's next check ..., however quick the reconnect: what the
//!   hosts sent them in between is lost".
//! - :286 (Failures): "NATS is back | calls work again as soon as the
//!   client's connection is back: `async-nats` reconnects clients and
//!   hosts and restores their subscriptions, nothing is restarted".
//! - :288: "No call is sent twice".
//! - :295-297: `Error::HostLost`: "the host stopped sending heartbeats, or
//!   the connection broke, while the call ran".
//! - :127-131 (Deadlines): "Without a `CallOptions::timeout` the host's
//!   pool applies its own default ... and the client waits for as long as
//!   the host lives".
//!
//! The docs have no row for a HOST whose connection drops and is back at
//! once (shorter than the clients' host timeout): the stream tests below
//! hold such a host to the stream promises above (every chunk, in order,
//! or a failure; never a stall while the host and the worker live).
//!
//! The hosts here are served from this process (their pools' figures are
//! read directly) and beat every 100 ms; the proxied connections reconnect
//! every 50 ms (`ConnectOptions::reconnect_delay_callback`, which the
//! Failures table names for that).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use common::files::{count_logged, logged, no_responders, temp, Removed};
use common::proxy::{connect_quick, Link, Proxy};
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use snakepit_cluster::{is_host_lost, Client, ClientConfig, ClusterStream, Node, ServeOptions};
use snakepit_core::{CallOptions, Error, Pool, StreamItem};
use tokio::task::JoinHandle;

/// The hosts' heartbeat interval.
const HEARTBEAT: Duration = Duration::from_millis(100);

/// Turns a hang into a failure (never a measure of speed). Below the
/// pools' default deadline (30 s), so that a stream stalled until that
/// deadline counts as hung.
const GUARD: Duration = Duration::from_secs(15);

/// The start of the names of this file's temporary files.
const TEMP_PREFIX: &str = "outside-stream-partition";

/// How long a host may take to drop a call whose cancel reached it (a
/// SIGINT to the worker, at most the pools' 300 ms grace period, a
/// reconnect of 50 ms): generous, and far below the calls' natural end.
const CANCELLED_WITHIN: u64 = 8;

/// The worker the hosts serve (`tests/workers/stream_partition_worker.py`).
fn worker_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/stream_partition_worker.py")
}

// ---------------------------------------------------------------- helpers

/// A pool of `workers` workers of `stream_partition_worker.py` served from this process as host `id` on
/// `conn`, beating every [`HEARTBEAT`], without prefetch (each call goes to
/// a free worker).
async fn serve_host(conn: &async_nats::Client, id: &str, workers: usize) -> (Pool, Node) {
    let pool = pool_of(ScriptWorker(worker_script()), workers).await;
    let options = ServeOptions::new()
        .host_id(id)
        .heartbeat(HEARTBEAT)
        .prefetch_per_worker(0);
    let node = snakepit_cluster::serve_with(conn, "test", pool.clone(), options)
        .await
        .unwrap();
    (pool, node)
}

/// A client of `test` on `conn` counting a host lost after `host_timeout`.
async fn client_on(conn: &async_nats::Client, host_timeout: Duration) -> Client {
    let mut c = ClientConfig::default();
    c.host_timeout = host_timeout;
    c.queue_timeout = Duration::from_secs(20);
    Client::connect_with(conn, "test", c).await.unwrap()
}

/// Stops serving at once (calls in flight are dropped) and the pool.
async fn stop(node: Node, pool: Pool) {
    drop(node);
    let _ = tokio::time::timeout(Duration::from_secs(10), pool.shutdown()).await;
}

async fn guarded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {GUARD:?}"))
}

/// Waits until someone is subscribed to `subject` again (a request there
/// is not answered "no responders"). Used on a host's cancel subject: the
/// host ignores an empty cancel.
async fn responders(raw: &async_nats::Client, subject: &str) {
    let until = Instant::now() + GUARD;
    loop {
        let ask = raw.request(subject.to_owned(), "".into());
        match tokio::time::timeout(Duration::from_millis(100), ask).await {
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
            _ => return,
        }
        assert!(
            Instant::now() < until,
            "nobody subscribed to {subject} again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a reader got from a stream: the chunk numbers in the order read,
/// and how the stream ended (`None`: it ended without an outcome).
#[derive(Debug)]
struct Read {
    chunks: Vec<u64>,
    end: Option<Result<Value, Error>>,
}

/// Reads `s` to its end, counting the chunks taken in `taken`.
async fn read_stream(mut s: ClusterStream, taken: Arc<AtomicUsize>) -> Read {
    let mut chunks = Vec::new();
    while let Some(item) = s.next().await {
        match item {
            Ok(StreamItem::Chunk(v)) => {
                chunks.push(v["i"].as_u64().expect("a numbered chunk"));
                taken.fetch_add(1, Ordering::Relaxed);
            }
            Ok(StreamItem::Done(v)) => {
                return Read {
                    chunks,
                    end: Some(Ok(v)),
                }
            }
            Ok(other) => panic!("an item a stream does not send: {other:?}"),
            Err(e) => {
                return Read {
                    chunks,
                    end: Some(Err(e)),
                }
            }
        }
    }
    Read { chunks, end: None }
}

/// "no chunk is dropped on the way": the reader got 0, 1, 2, ... with no
/// gap, no repeat and no reordering.
fn assert_contiguous(chunks: &[u64], from: u64, what: &str) {
    if let Some(k) = chunks
        .iter()
        .zip(from..)
        .position(|(got, want)| *got != want)
    {
        panic!(
            "{what}: the reader was handed chunk {} where chunk {} was due \
             ({} chunks read; around it: {:?})",
            chunks[k],
            from + k as u64,
            chunks.len(),
            &chunks[k.saturating_sub(3)..(k + 3).min(chunks.len())]
        );
    }
}

/// `e` is `Error::HostLost` naming `host` (the call may have run).
fn assert_host_lost(e: &Error, host: &str, what: &str) {
    match e {
        Error::HostLost { host: h, .. } => assert_eq!(h, host, "{what}: {e}"),
        other => panic!("{what}: want the host-lost error of host {host}, got {other:?}"),
    }
    assert!(is_host_lost(e), "{what}: {e:?}");
    assert!(!e.never_ran(), "{what}: it may have run: {e:?}");
}

/// Counts the chunk messages NATS delivers to any client inbox (a chunk is
/// `{"chunk":{"v":...}}`, alone or in a batch of replies).
async fn chunk_spy(nats: &NatsServer) -> (Arc<AtomicUsize>, JoinHandle<()>, async_nats::Client) {
    let raw = nats.connect().await;
    let mut sub = subscribed(&raw, &["_INBOX.>"]).await.pop().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    let task = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let n = m
                .payload
                .windows(b"\"chunk\"".len())
                .filter(|w| *w == b"\"chunk\"")
                .count();
            count.fetch_add(n, Ordering::Relaxed);
        }
    });
    (seen, task, raw)
}

/// Waits up to [`CANCELLED_WITHIN`] s for `pool` to run nothing.
async fn host_drops_everything(pool: &Pool, what: &str) {
    let until = Instant::now() + Duration::from_secs(CANCELLED_WITHIN);
    loop {
        let s = pool.stats();
        if s.in_flight == 0 && s.busy == 0 {
            return;
        }
        assert!(
            Instant::now() < until,
            "{what}: the host still runs {} call(s) ({} busy worker(s)) \
             {CANCELLED_WITHIN} s later: no cancel reached it, its worker is held \
             until the call's natural end or the pool's default deadline",
            s.in_flight,
            s.busy
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------- tests

/// The CLIENT's connection is reset (cut, forwarded again 50 ms later)
/// while a stream without a deadline is read as fast as it comes; four
/// attempts, each with a stream of its own (whether chunks sent after the
/// reconnect reach the reader before the client's next check depends on
/// where the reset falls between two checks).
///
/// docs/cluster.md:283 (Failures): "the client's connection drops and is
/// back at once (a reset ...) | the calls in flight fail with the
/// host-lost error at the client's next check ..., however quick the
/// reconnect: what the hosts sent them in between is lost"; :147 (Streams)
/// "no chunk is dropped on the way"; :288 "No call is sent twice".
///
/// Each stream ends, within the guard, with `HostLost` naming the host (the
/// connection broke); before that the reader got chunk 0, 1, 2, ... with no
/// gap: the chunks the server dropped while the client was away are not
/// papered over by the ones the host sent after it was back. Each stream
/// ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_mid_stream_fails_it_with_host_lost_and_hands_the_reader_no_gap() {
    let nats = NatsServer::start().await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 1).await;
    let proxy = Proxy::start(nats.port).await;
    let conn = connect_quick(&proxy.url).await;
    let client = client_on(&conn, Duration::from_secs(1)).await;
    wait_hosts(&client, 1).await;
    let log = Removed(temp(TEMP_PREFIX, "client-reset.log"));
    let n = 5000;
    for attempt in 0..4 {
        let token = format!("s{attempt}");
        let s = client
            .execute_stream(
                "stream",
                json!({"n": n, "pace_ms": 1, "token": token, "log": log.0}),
                CallOptions::new(),
            )
            .await
            .unwrap();
        let taken = Arc::new(AtomicUsize::new(0));
        let reader = tokio::spawn(read_stream(s, taken.clone()));
        eventually(30, "the reader took 100 chunks", || async {
            taken.load(Ordering::Relaxed) >= 100
        })
        .await;

        proxy.set(Link::Cut);
        tokio::time::sleep(Duration::from_millis(50)).await;
        proxy.set(Link::Forward);
        let read = guarded("the stream across the client's reset", reader)
            .await
            .unwrap();
        eprintln!(
            "attempt {attempt}: {} chunks read, then {:?}",
            read.chunks.len(),
            read.end
                .as_ref()
                .map(|r| r.as_ref().map_err(|e| e.to_string()))
        );
        assert_contiguous(
            &read.chunks,
            0,
            &format!("attempt {attempt}: a stream across the client's reset"),
        );
        match &read.end {
            Some(Err(e)) => {
                assert_host_lost(e, "a", "a stream in flight on a client reset");
                assert!(
                    e.to_string().contains("connection"),
                    "the connection broke, not the host: {e}"
                );
            }
            other => panic!(
                "attempt {attempt}: a stream in flight when the client's connection reset \
                 ended with {other:?} after {} of {n} chunks; want the host-lost error",
                read.chunks.len()
            ),
        }
        eventually(30, "the client's connection is back", || async {
            conn.connection_state() == State::Connected
        })
        .await;
        // The failed stream was cancelled on the host: its worker is free
        // for the next attempt.
        host_drops_everything(&pool, "a stream that failed with HostLost").await;
        assert_eq!(
            count_logged(&log.0, &token, "start"),
            1,
            "{:?}",
            logged(&log.0)
        );
    }
    stop(node, pool).await;
}

/// The CLIENT's connection is reset while a stream (its reader reading) and
/// a one-shot call run on the host; both fail with `HostLost`, as
/// documented, and their caller lets go of them (the stream is dropped,
/// the call's future is done).
///
/// docs/cluster.md:132-141 (Cancellation): "dropping the caller's future
/// (or the `ClusterStream`) sends a cancel message to the host, which
/// drops the call in its pool ... So does a call that ended without its
/// host's outcome (... the host-lost error when ... the client's
/// connection dropped) ... The cancel goes out once the client's
/// connection is back, and reaches the host if its own connection outlived
/// the cut"; client.rs (`execute_stream`): "Dropping the stream cancels
/// the call".
///
/// Within a few seconds the host runs nothing: neither the stream (60 s of
/// chunks; once its window is used up it would wait for credit until the
/// pool's 30 s default deadline) nor the 60 s call is left holding a
/// worker, and neither ran to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_lost_to_a_client_reset_are_cancelled_on_the_host_once_their_caller_lets_go() {
    let nats = NatsServer::start().await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 2).await;
    let proxy = Proxy::start(nats.port).await;
    let conn = connect_quick(&proxy.url).await;
    let client = client_on(&conn, Duration::from_secs(1)).await;
    wait_hosts(&client, 1).await;
    let log = Removed(temp(TEMP_PREFIX, "lost-cancel.log"));
    let marker = Removed(temp(TEMP_PREFIX, "lost-cancel-marker"));
    let call = {
        let (client, args) = (
            client.clone(),
            json!({"token": "call", "log": log.0, "marker": marker.0, "ms": 60_000}),
        );
        tokio::spawn(async move { client.execute("run", args).await })
    };
    eventually(30, "the call started in its worker", || async {
        marker.0.exists()
    })
    .await;
    let s = client
        .execute_stream(
            "stream",
            json!({"n": 60_000, "pace_ms": 1, "token": "stream", "log": log.0}),
            CallOptions::new(),
        )
        .await
        .unwrap();
    let taken = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn(read_stream(s, taken.clone()));
    eventually(30, "the reader took 100 chunks", || async {
        taken.load(Ordering::Relaxed) >= 100
    })
    .await;
    // Past the 50 ms acknowledgement: the call waits for its outcome.
    tokio::time::sleep(Duration::from_millis(100)).await;

    proxy.set(Link::Cut);
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.set(Link::Forward);
    let read = guarded("the stream", reader).await.unwrap();
    match &read.end {
        Some(Err(e)) => assert_host_lost(e, "a", "the stream"),
        other => panic!("the stream: want the host-lost error, got {other:?}"),
    }
    let e = guarded("the call", call)
        .await
        .unwrap()
        .expect_err("its outcome is 60 s away");
    assert_host_lost(&e, "a", "the call");
    // Both are let go of (the stream was dropped as its reader ended).
    drop(read);
    eventually(30, "the client's connection is back", || async {
        conn.connection_state() == State::Connected
    })
    .await;
    host_drops_everything(
        &pool,
        "a stream and a call that failed with HostLost on a client reset, then dropped",
    )
    .await;
    for token in ["call", "stream"] {
        assert_eq!(
            count_logged(&log.0, token, "end"),
            0,
            "{token} ran to its end: {:?}",
            logged(&log.0)
        );
    }
    stop(node, pool).await;
}

/// The HOST's connection is reset (cut, forwarded again as soon as the
/// server has dropped its subscriptions) while the stream's reader takes
/// the 256 chunks the host had sent ahead: the reader's grants (`+64`)
/// are published while the host is away, and the server, which has no
/// subscription of the host then, drops them.
///
/// docs/cluster.md:142 (Streams): "flow-controlled end to end: the host
/// sends at most 256 chunks ahead of the caller's reader, and the client
/// grants 64 more each time its reader has taken 64"; :286 (Failures):
/// "NATS is back | ... `async-nats` reconnects clients and hosts and
/// restores their subscriptions, nothing is restarted". The docs have no
/// row for a host's brief reset; the host stays heard from (its heartbeats
/// resume well within the 2 s host timeout), so the client has no reason to
/// fail the call: it must go on.
///
/// Within the guard the stream ends: every chunk in order and the final
/// result, or a failure; it must not stall (no deadline: it would wait for
/// credit until the pool's 30 s default, the worker held all along).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_host_briefly_reconnects_while_its_reader_drains_the_window_goes_on() {
    let nats = NatsServer::start().await;
    let raw = nats.connect().await;
    let proxy = Proxy::start(nats.port).await;
    let conn_a = connect_quick(&proxy.url).await;
    let (pool, node) = serve_host(&conn_a, "a", 1).await;
    let client = client_on(&nats.connect().await, Duration::from_secs(2)).await;
    wait_hosts(&client, 1).await;
    let (chunks_sent, spy_task, _spy) = chunk_spy(&nats).await;
    let n = 1000u64;
    let mut s = client
        .execute_stream("stream", json!({"n": n}), CallOptions::new())
        .await
        .unwrap();
    let mut read = Vec::new();
    let first = guarded("the first chunk", s.next()).await.unwrap().unwrap();
    read.push(first);
    // The host sends its window, then waits for the reader's grant.
    eventually(30, "the host sent its window of 256 chunks", || async {
        chunks_sent.load(Ordering::Relaxed) >= 256
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        chunks_sent.load(Ordering::Relaxed),
        256,
        "at most 256 chunks ahead of a reader that took one"
    );

    let cut = Instant::now();
    proxy.set(Link::Cut);
    no_responders(&raw, "snakepit.test.host.a.cancel", GUARD).await;
    // The reader takes what came (grants at 64, 128, 192 and 256 taken).
    for _ in 1..256 {
        let item = guarded("a chunk the host had sent", s.next())
            .await
            .unwrap()
            .unwrap();
        read.push(item);
    }
    proxy.set(Link::Forward);
    eprintln!("host away for {:?}", cut.elapsed());
    let rest = guarded(
        "the rest of a stream whose host briefly reconnected (stalled: no credit)",
        async {
            let mut rest = Vec::new();
            while let Some(item) = s.next().await {
                rest.push(item);
            }
            rest
        },
    )
    .await;
    let mut chunks = Vec::new();
    let mut end = None;
    for item in read.into_iter().map(Ok).chain(rest) {
        match item {
            Ok(StreamItem::Chunk(v)) => chunks.push(v["i"].as_u64().unwrap()),
            Ok(StreamItem::Done(v)) => end = Some(Ok(v)),
            Ok(other) => panic!("{other:?}"),
            Err(e) => end = Some(Err(e)),
        }
    }
    assert_contiguous(&chunks, 0, "a stream whose host briefly reconnected");
    match end {
        Some(Ok(v)) => {
            assert_eq!(v, json!({"n": n}));
            assert_eq!(chunks.len() as u64, n, "every chunk before the result");
        }
        Some(Err(e)) => eprintln!("the stream failed: {e}"),
        None => panic!("the stream ended without an outcome"),
    }
    spy_task.abort();
    stop(node, pool).await;
}

/// The HOST's path goes silent for 150 ms (what the host writes waits in
/// the path), then the connection resets (what waited is lost) and is back
/// at once, while a stream without a deadline is read as fast as it comes:
/// the chunks the host wrote meanwhile, and the reader's grants, are lost.
///
/// docs/cluster.md:147 (Streams): "no chunk is dropped on the way";
/// :295 (`Error::HostLost`): "the host stopped sending heartbeats, or the
/// connection broke, while the call ran"; :286: "NATS is back | ... nothing
/// is restarted". The host is silent for far less than the 2 s host
/// timeout, so the client keeps it.
///
/// Within the guard the stream ends, and the reader never gets a chunk
/// after a missing one: either every chunk and the result, or chunks 0..k
/// and a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_hosts_path_stalls_then_resets_hands_the_reader_no_gap_and_ends() {
    let nats = NatsServer::start().await;
    let raw = nats.connect().await;
    let proxy = Proxy::start(nats.port).await;
    let conn_a = connect_quick(&proxy.url).await;
    let (pool, node) = serve_host(&conn_a, "a", 1).await;
    let client = client_on(&nats.connect().await, Duration::from_secs(2)).await;
    wait_hosts(&client, 1).await;
    let n = 3000;
    let s = client
        .execute_stream("stream", json!({"n": n, "pace_ms": 1}), CallOptions::new())
        .await
        .unwrap();
    let taken = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn(read_stream(s, taken.clone()));
    eventually(30, "the reader took 300 chunks", || async {
        taken.load(Ordering::Relaxed) >= 300
    })
    .await;

    proxy.set(Link::BlackHole);
    tokio::time::sleep(Duration::from_millis(150)).await;
    proxy.set(Link::Cut);
    no_responders(&raw, "snakepit.test.host.a.cancel", GUARD).await;
    proxy.set(Link::Forward);
    let read = guarded(
        "a stream whose host's path stalled then reset (stalled: no credit, or its outcome lost)",
        reader,
    )
    .await
    .unwrap();
    eprintln!(
        "host reset: {} chunks read, then {:?}",
        read.chunks.len(),
        read.end
            .as_ref()
            .map(|r| r.as_ref().map_err(|e| e.to_string()))
    );
    assert_contiguous(&read.chunks, 0, "a stream whose host's path reset");
    match &read.end {
        Some(Ok(v)) => {
            assert_eq!(v, &json!({"n": n}));
            assert_eq!(read.chunks.len(), n, "every chunk before the result");
        }
        Some(Err(e)) => eprintln!("the stream failed: {e}"),
        None => panic!("the stream ended without an outcome"),
    }
    stop(node, pool).await;
}

/// Three streams without prefetch on a host of three workers; each reader
/// takes one chunk and stops (its host sends its window of 256, then waits
/// with the worker held); then the HOST's connection is reset (cut, back
/// as soon as the server has dropped its subscriptions). After the host is
/// back: reader `a` reads on, stream `b` is dropped, and stream `c`
/// (deadline 3 s) is read on too.
///
/// docs/cluster.md (Failures): "a host's connection to NATS drops and is
/// back at once ... | its streams in flight fail with the host-lost error
/// once its next heartbeat says so (credit the client sent meanwhile may be
/// lost, and the stream would wait for it for ever), after the chunks that
/// came in order"; (Cancellation): "So does a call that ended without its
/// host's outcome ...": dropping a failed stream cancels it on the host.
///
/// `a` and `c` get the chunks the host had sent, in order, then the
/// host-lost error naming the reconnect; `b` is dropped; afterwards the
/// host runs nothing, and `b`'s worker did not write its stream to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_held_by_their_readers_across_a_host_reset_fail_with_host_lost_and_are_cancelled() {
    let nats = NatsServer::start().await;
    let raw = nats.connect().await;
    let proxy = Proxy::start(nats.port).await;
    let conn_a = connect_quick(&proxy.url).await;
    let (pool, node) = serve_host(&conn_a, "a", 3).await;
    let client = client_on(&nats.connect().await, Duration::from_secs(2)).await;
    wait_hosts(&client, 1).await;
    let (chunks_sent, spy_task, _spy) = chunk_spy(&nats).await;
    let log = Removed(temp(TEMP_PREFIX, "held.log"));
    // More than the host and its pool hold (256 sent ahead, 256 in the
    // pool's channel): each worker is still busy when the reader stops.
    let n = 2000u64;
    let deadline = Duration::from_secs(3);
    let mut streams = Vec::new();
    // b writes far more than the host holds (its worker then waits on its
    // pipe, as the docs say); a and c fit.
    for (token, len, options) in [
        ("a", n, CallOptions::new()),
        ("b", 1_000_000, CallOptions::new()),
        ("c", n, CallOptions::new().timeout(deadline)),
    ] {
        let mut s = client
            .execute_stream(
                "stream",
                json!({"n": len, "token": token, "log": log.0}),
                options,
            )
            .await
            .unwrap();
        let first = guarded("a first chunk", s.next()).await.unwrap().unwrap();
        assert_eq!(first, StreamItem::Chunk(json!({"i": 0})), "{token}");
        streams.push(s);
    }
    let submitted = Instant::now();
    eventually(30, "the host sent each stream's window", || async {
        chunks_sent.load(Ordering::Relaxed) >= 3 * 256
    })
    .await;
    assert_eq!(pool.stats().busy, 3, "the three streams hold their workers");

    proxy.set(Link::Cut);
    no_responders(&raw, "snakepit.test.host.a.cancel", GUARD).await;
    proxy.set(Link::Forward);
    responders(&raw, "snakepit.test.host.a.cancel").await;
    assert!(
        client.hosts().iter().any(|h| h.id == "a"),
        "the host is still counted"
    );
    let mut c = streams.pop().unwrap();
    let b = streams.pop().unwrap();
    let mut a = streams.pop().unwrap();

    drop(b);
    for (name, s) in [("a", &mut a), ("c", &mut c)] {
        let mut chunks = Vec::new();
        let e = guarded("a stream after its host's reset", async {
            loop {
                match s.next().await {
                    Some(Ok(StreamItem::Chunk(v))) => chunks.push(v["i"].as_u64().unwrap()),
                    Some(Ok(other)) => panic!("stream {name} after its host's reset: {other:?}"),
                    Some(Err(e)) => return e,
                    None => panic!("stream {name} ended without an outcome"),
                }
            }
        })
        .await;
        assert_host_lost(&e, "a", name);
        assert!(
            e.to_string().contains("made its connection to NATS again"),
            "stream {name}: {e}"
        );
        // However many came before the host's next heartbeat said it had
        // reconnected (grants that reached it let it send more), each in
        // its place.
        assert_contiguous(&chunks, 1, name);
    }
    let _ = submitted;
    drop(a);
    drop(c);

    host_drops_everything(&pool, "the three streams failed or dropped").await;
    // a and c fit in what the host and its pool hold (their workers wrote
    // every chunk); b's worker was still writing.
    assert_eq!(
        count_logged(&log.0, "b", "end"),
        0,
        "stream b ran to its end: {:?}",
        logged(&log.0)
    );
    assert!(pool.stats().cancelled >= 1, "{:?}", pool.stats());
    spy_task.abort();
    stop(node, pool).await;
}

/// The CLIENT's path is black-holed (its connection counts as up); its
/// caller drops a running one-shot call and a stream being read; 300 ms
/// later the path forwards again.
///
/// docs/cluster.md:132 (Cancellation): "dropping the caller's future (or
/// the `ClusterStream`) sends a cancel message to the host, which drops
/// the call in its pool; the pool cancels it in the worker".
///
/// While the path is silent the host still runs both (the cancels wait in
/// the path); once it flows, the host drops both within a few seconds,
/// and neither ran to its end (60 s of work each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_sent_while_the_clients_path_is_black_holed_reach_the_host_once_it_flows() {
    let nats = NatsServer::start().await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 2).await;
    let proxy = Proxy::start(nats.port).await;
    let conn = connect_quick(&proxy.url).await;
    let client = client_on(&conn, Duration::from_secs(1)).await;
    wait_hosts(&client, 1).await;
    let (call, reader, log, _marker) = call_and_stream(&client, "client-black-hole").await;

    proxy.set(Link::BlackHole);
    call.abort();
    reader.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        pool.stats().in_flight,
        2,
        "the cancels wait in the silent path"
    );
    proxy.set(Link::Forward);
    host_drops_everything(
        &pool,
        "a call and a stream dropped while the client's path was black-holed",
    )
    .await;
    assert_ran_not_to_their_end(&pool, &log.0);
    stop(node, pool).await;
}

/// The HOST's path is black-holed for 400 ms (well within the client's
/// 2 s host timeout); meanwhile the caller drops a running one-shot call
/// and a stream being read.
///
/// docs/cluster.md:132 (Cancellation): "dropping the caller's future (or
/// the `ClusterStream`) sends a cancel message to the host, which drops
/// the call in its pool".
///
/// While the path is silent the host still runs both; once it flows, the
/// host drops both within a few seconds, and neither ran to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_sent_while_the_hosts_path_is_black_holed_reach_the_host_once_it_flows() {
    let nats = NatsServer::start().await;
    let proxy = Proxy::start(nats.port).await;
    let conn_a = connect_quick(&proxy.url).await;
    let (pool, node) = serve_host(&conn_a, "a", 2).await;
    let client = client_on(&nats.connect().await, Duration::from_secs(2)).await;
    wait_hosts(&client, 1).await;
    let (call, reader, log, _marker) = call_and_stream(&client, "host-black-hole").await;

    proxy.set(Link::BlackHole);
    call.abort();
    reader.abort();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        pool.stats().in_flight,
        2,
        "the cancels wait in the silent path"
    );
    proxy.set(Link::Forward);
    host_drops_everything(
        &pool,
        "a call and a stream dropped while the host's path was black-holed",
    )
    .await;
    assert_ran_not_to_their_end(&pool, &log.0);
    stop(node, pool).await;
}

/// The CLIENT's path goes silent, its caller drops a running call and a
/// stream being read (the cancels are written into the silent path), and
/// 100 ms later the connection resets and is back at once (what waited in
/// the path is lost). The host's own connection is untouched.
///
/// docs/cluster.md (Cancellation): "dropping the caller's future (or the
/// `ClusterStream`) sends a cancel message to the host, which drops the
/// call in its pool ... The cancel goes out once the client's connection
/// is back"; (Failures): the client's connection "drops and is back at
/// once".
///
/// The host drops both within a few seconds once the client is back (they
/// would otherwise run their 60 s, workers held for a caller long gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_as_the_clients_connection_resets_still_reaches_the_host() {
    cancels_across_a_reset_of(Side::Client).await;
}

/// The HOST's path goes silent, the caller drops a running call and a
/// stream being read (the cancels reach NATS, but the host's subscription
/// sits behind the silent path), and 100 ms later the host's connection
/// resets and is back at once: what waited in its path is lost, the
/// cancels with it. The client's connection is untouched.
///
/// docs/cluster.md (Failures, a host's connection drops and is back at
/// once): "The cancels the client sent it meanwhile are sent again once
/// that heartbeat says so, and the host stops those calls".
///
/// The host drops both within a few seconds once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_as_the_hosts_connection_resets_reaches_it_once_it_is_back() {
    cancels_across_a_reset_of(Side::Host).await;
}

/// Whose connection goes through the proxy.
#[derive(Clone, Copy, Debug)]
enum Side {
    Client,
    Host,
}

/// A call and a stream dropped while `side`'s path is silent, just before
/// its connection resets: the host stops both once the connection is back.
async fn cancels_across_a_reset_of(side: Side) {
    let nats = NatsServer::start().await;
    let proxy = Proxy::start(nats.port).await;
    let through = connect_quick(&proxy.url).await;
    let direct = nats.connect().await;
    let (host_conn, client_conn, host_timeout) = match side {
        Side::Client => (&direct, &through, Duration::from_secs(1)),
        Side::Host => (&through, &direct, Duration::from_secs(2)),
    };
    let (pool, node) = serve_host(host_conn, "a", 2).await;
    let client = client_on(client_conn, host_timeout).await;
    wait_hosts(&client, 1).await;
    let (call, reader, log, _marker) = call_and_stream(&client, &format!("{side:?}-reset")).await;

    proxy.set(Link::BlackHole);
    call.abort();
    reader.abort();
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.set(Link::Cut);
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.set(Link::Forward);
    eventually(30, "the connection is back", || async {
        through.connection_state() == State::Connected
    })
    .await;
    host_drops_everything(
        &pool,
        &format!("a call and a stream dropped just before the {side:?}'s connection reset"),
    )
    .await;
    assert_ran_not_to_their_end(&pool, &log.0);
    stop(node, pool).await;
}

/// A one-shot call of 60 s (`call`, started in its worker) and a stream of
/// 60 s of chunks (`stream`, its reader reading: 100 chunks taken), each in
/// a task of its own; the log they write, and the call's marker.
async fn call_and_stream(
    client: &Client,
    name: &str,
) -> (
    JoinHandle<Result<Value, Error>>,
    JoinHandle<Read>,
    Removed,
    Removed,
) {
    let log = Removed(temp(TEMP_PREFIX, &format!("{name}.log")));
    let marker = Removed(temp(TEMP_PREFIX, &format!("{name}-marker")));
    let call = {
        let (client, args) = (
            client.clone(),
            json!({"token": "call", "log": log.0, "marker": marker.0, "ms": 60_000}),
        );
        tokio::spawn(async move { client.execute("run", args).await })
    };
    eventually(30, "the call started in its worker", || async {
        marker.0.exists()
    })
    .await;
    let s = client
        .execute_stream(
            "stream",
            json!({"n": 60_000, "pace_ms": 1, "token": "stream", "log": log.0}),
            CallOptions::new(),
        )
        .await
        .unwrap();
    let taken = Arc::new(AtomicUsize::new(0));
    let reader = tokio::spawn(read_stream(s, taken.clone()));
    eventually(30, "the reader took 100 chunks", || async {
        taken.load(Ordering::Relaxed) >= 100
    })
    .await;
    // Past the 50 ms acknowledgement: both run, acknowledged.
    tokio::time::sleep(Duration::from_millis(100)).await;
    (call, reader, log, marker)
}

/// Neither `call` nor `stream` ran to its end, and the pool counts their
/// cancels.
fn assert_ran_not_to_their_end(pool: &Pool, log: &Path) {
    for token in ["call", "stream"] {
        assert_eq!(count_logged(log, token, "start"), 1, "{:?}", logged(log));
        assert_eq!(
            count_logged(log, token, "end"),
            0,
            "{token} ran to its end: {:?}",
            logged(log)
        );
    }
    assert!(pool.stats().cancelled >= 2, "{:?}", pool.stats());
}

/// A one-shot call without a deadline runs on host `a`; the HOST's path
/// goes silent while the call ends (its outcome is written into the silent
/// path), then the connection resets (what waited in the path is lost) and
/// is back at once.
///
/// docs/cluster.md (Failures): "a host's connection to NATS drops and is
/// back at once ... | it sends again, after its next heartbeat, the replies
/// it had sent over the connection before: a call whose outcome NATS lost
/// gets it then"; "No call is sent twice".
///
/// The call ends with its result (it would otherwise wait as long as the
/// host lives), and ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_outcome_lost_in_its_hosts_reset_is_sent_again() {
    let nats = NatsServer::start().await;
    let raw = nats.connect().await;
    let proxy = Proxy::start(nats.port).await;
    let conn_a = connect_quick(&proxy.url).await;
    let (pool, node) = serve_host(&conn_a, "a", 1).await;
    let client = client_on(&nats.connect().await, Duration::from_secs(5)).await;
    wait_hosts(&client, 1).await;
    let log = Removed(temp(TEMP_PREFIX, "resent.log"));
    let marker = Removed(temp(TEMP_PREFIX, "resent.marker"));
    let call = {
        let client = client.clone();
        let args = json!({"ms": 300, "token": "r", "log": log.0, "marker": marker.0});
        tokio::spawn(async move { client.execute_with("run", args, CallOptions::new()).await })
    };
    eventually(30, "the call started", || async { marker.0.exists() }).await;
    proxy.set(Link::BlackHole);
    eventually(30, "the worker ended the call", || async {
        count_logged(&log.0, "r", "end") == 1
    })
    .await;
    // The host has queued and written its outcome into the silent path.
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.set(Link::Cut);
    no_responders(&raw, "snakepit.test.host.a.cancel", GUARD).await;
    proxy.set(Link::Forward);
    responders(&raw, "snakepit.test.host.a.cancel").await;
    let r = guarded("the call whose outcome was lost", call)
        .await
        .unwrap();
    assert_eq!(r.unwrap(), json!({"token": "r"}));
    assert_eq!(
        count_logged(&log.0, "r", "start"),
        1,
        "{:?}",
        logged(&log.0)
    );
    stop(node, pool).await;
}
