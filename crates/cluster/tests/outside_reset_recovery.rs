//! Connection resets and what is sent again after them, tested from
//! outside against a real nats-server (127.0.0.1) and real Python workers.
//! A TCP proxy (`common/proxy.rs`) sits between a party (a host or a
//! client) and the server: it mutes the host (what it sends waits in the
//! path) or deafens the client (what it is sent waits), then cuts the
//! connection (what waited is lost), which async-nats makes again.
//!
//! docs/cluster.md (Failures), on a host's connection that drops and is
//! back at once: "the host sends again, after its next heartbeat, the
//! outcomes and declines it had sent over the connection before (the last
//! 4,096, at most 16 MiB): a call whose outcome NATS lost gets it then,
//! and a client takes each outcome once"; on a client's: "the calls in
//! flight fail with the host-lost error"; and a host that lives is
//! expected to keep telling its clients so with its heartbeats.
//!
//! Before the fixes: an outcome sent again after a host reset was no
//! longer kept, so a second reset lost it for good (its caller, without a
//! deadline, waited as long as the host lived); a stranger's flood of
//! questions on a host's cancel subject starved its heartbeats and
//! acknowledgements (calls failed with "host a stopped answering" or "did
//! not acknowledge"); and a client that reset with its host still away
//! got "no responders" to its question and failed a declined call with
//! the host-lost error at once; and an outcome that left the host's
//! resend bound before a reset was never reported lost (its caller, with
//! no deadline, waited as long as the host lived). A client now asks a
//! host that made its connection again what became of each call it ran
//! (`?where <reply subject>`): running, kept (sent again), or gone.

mod common;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::connection::State;
use common::files::{count_logged, no_responders, temp, Removed};
use common::proxy::{connect_quick, Link, Proxy};
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use snakepit_cluster::{Client, ClientConfig, Node, ServeOptions};
use snakepit_core::{CallOptions, Error, Pool, StreamItem};

/// The hosts' heartbeat interval.
const HEARTBEAT: Duration = Duration::from_millis(100);

/// Turns a hang into a failure (never a measure of speed).
const GUARD: Duration = Duration::from_secs(20);

/// The start of the names of this file's temporary files.
const TEMP_PREFIX: &str = "reset-recovery";

/// The worker with `run` (writes `marker`, sleeps `ms`, logs) and
/// `stream` (`n` chunks).
fn partition_worker() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/stream_partition_worker.py")
}

/// The worker with `big` (a result of `bytes` characters) and `sleep`.
fn big_worker() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/big_worker.py")
}

/// Serves `pool` as host `id` on `conn`, beating every [`HEARTBEAT`].
async fn serve(conn: &async_nats::Client, id: &str, pool: &Pool, prefetch: usize) -> Node {
    serve_beating(conn, id, pool, prefetch, HEARTBEAT).await
}

/// As [`serve`], beating every `every`.
async fn serve_beating(
    conn: &async_nats::Client,
    id: &str,
    pool: &Pool,
    prefetch: usize,
    every: Duration,
) -> Node {
    let options = ServeOptions::new()
        .host_id(id)
        .heartbeat(every)
        .prefetch_per_worker(prefetch);
    snakepit_cluster::serve_with(conn, "test", pool.clone(), options)
        .await
        .unwrap()
}

/// A client of `test` on `conn` with the host timeout `host_timeout`.
async fn client_on(conn: &async_nats::Client, host_timeout: Duration) -> Client {
    let mut config = ClientConfig::default();
    config.host_timeout = host_timeout;
    config.queue_timeout = Duration::from_secs(20);
    Client::connect_with(conn, "test", config).await.unwrap()
}

/// Cuts `conn`'s path through `proxy`, waits until async-nats has seen
/// the drop, and lets it connect again; returns once it has (its connect
/// count past what it was).
async fn reset(proxy: &Proxy, conn: &async_nats::Client) {
    let before = conn.statistics().connects.load(Ordering::Relaxed);
    proxy.set(Link::Cut);
    eventually(30, "the connection drops", || async {
        conn.connection_state() != State::Connected
    })
    .await;
    proxy.set(Link::Forward);
    // Polled often: the tests below act between the reconnect and the
    // host's next heartbeat.
    let until = Instant::now() + Duration::from_secs(30);
    while conn.statistics().connects.load(Ordering::Relaxed) <= before
        || conn.connection_state() != State::Connected
    {
        assert!(Instant::now() < until, "never connected again");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn stop(nodes: Vec<Node>, pools: Vec<Pool>) {
    drop(nodes);
    for pool in pools {
        let _ = tokio::time::timeout(Duration::from_secs(10), pool.shutdown()).await;
    }
}

/// A call's outcome is lost in a host reset; the host sends it again
/// after its next heartbeat, and that copy is lost in a second reset
/// right after it (the copy waited in the muted path). The host must send
/// it again after the second reset too: the call's caller (no deadline)
/// gets its outcome, instead of waiting as long as the host lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_whose_resent_copy_is_lost_in_a_second_host_reset_is_sent_again() {
    let nats = NatsServer::start().await;
    let proxy = Proxy::start(nats.port).await;
    let conn_a = connect_quick(&proxy.url).await;
    let pool_a = pool_of(ScriptWorker(partition_worker()), 1).await;
    // A slow heartbeat: the test mutes the host between its reconnect
    // and its next heartbeat, which sends the outcome again.
    let beat = Duration::from_secs(1);
    let node_a = serve_beating(&conn_a, "a", &pool_a, 0, beat).await;
    // Far above the time the host is silent here: the client keeps
    // waiting for the outcome, never gives the host up.
    let client = client_on(&nats.connect().await, Duration::from_secs(15)).await;
    wait_hosts(&client, 1).await;
    let log = Removed(temp(TEMP_PREFIX, "twice.log"));
    let marker = Removed(temp(TEMP_PREFIX, "twice.marker"));

    let call = {
        let client = client.clone();
        let args = json!({"token": "twice", "log": log.0, "marker": marker.0, "ms": 600});
        tokio::spawn(async move { client.execute_with("run", args, CallOptions::new()).await })
    };
    eventually(30, "the call runs on a", || async { marker.0.exists() }).await;
    // Its acknowledgement (after 50 ms) reaches the client; then the path
    // goes silent.
    tokio::time::sleep(Duration::from_millis(250)).await;
    proxy.set(Link::Muted);
    eventually(30, "the call ends on a", || async {
        pool_a.stats().completed >= 1 && pool_a.stats().in_flight == 0
    })
    .await;
    // Its outcome goes into the muted path, and is lost with it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    reset(&proxy, &conn_a).await;
    // Back, and muted again before its next heartbeat: the copy it sends
    // after that heartbeat waits in the path...
    proxy.set(Link::Muted);
    tokio::time::sleep(beat * 3).await;
    // ... and is lost with it.
    reset(&proxy, &conn_a).await;

    let r = tokio::time::timeout(GUARD, call)
        .await
        .expect("the call's outcome, sent again after the second reset, never came")
        .unwrap();
    assert_eq!(r.unwrap(), json!({"token": "twice"}));
    assert_eq!(count_logged(&log.0, "twice", "start"), 1, "it ran once");
    stop(vec![node_a], vec![pool_a]).await;
}

/// The host's outcome of call `A` is lost in its reset, and its copy was
/// dropped from what the host keeps to send again (17 outcomes of about
/// 1 MB were sent after it: more than 16 MiB). Nothing brings the outcome
/// back; but the caller (no deadline) must not wait as long as the host
/// lives: it fails with a typed error within its host timeout of the
/// host's reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_outcome_fell_out_of_the_hosts_resend_bound_fails_instead_of_hanging() {
    // In about one run in four, call A's outcome is not lost: it reaches
    // its client while the host's path is muted, or right after the
    // reset, before the host sends anything again (the host cannot send A
    // again: it no longer holds it). It never left the host's NATS client,
    // whose buffer outlived the connection, it seems; the cause is not
    // proven. The scenario then tests nothing, and runs again, up to four
    // times.
    for attempt in 1..=4 {
        if outcome_pushed_out_of_the_resend_bound().await {
            return;
        }
        eprintln!("attempt {attempt}: call A's outcome was not lost in the reset; again");
    }
    panic!("in four attempts, call A's outcome was never lost in the reset");
}

/// One attempt of the test above: false when its premise failed (call A's
/// outcome was not lost).
async fn outcome_pushed_out_of_the_resend_bound() -> bool {
    let nats = NatsServer::start().await;
    let raw = nats.connect().await;
    let proxy = Proxy::start(nats.port).await;
    let conn_a = connect_quick(&proxy.url).await;
    let pool_a = pool_of(ScriptWorker(big_worker()), 2).await;
    let node_a = serve(&conn_a, "a", &pool_a, 32).await;
    // Far above the time the host is muted here (the call, then 17 big
    // calls, under load): the call must fail for its lost outcome, not for
    // heartbeats missed meanwhile.
    let host_timeout = Duration::from_secs(40);
    let client = client_on(&nats.connect().await, host_timeout).await;
    wait_hosts(&client, 1).await;
    let marker = Removed(temp(TEMP_PREFIX, "dropped.marker"));

    // Long enough that the path is muted before it ends, however late a
    // loaded machine runs this test after the call has started.
    let call = {
        let client = client.clone();
        let args = json!({"marker": marker.0, "ms": 4000});
        tokio::spawn(async move { client.execute_with("sleep", args, CallOptions::new()).await })
    };
    eventually(30, "call A runs on a", || async { marker.0.exists() }).await;
    // Its acknowledgement (after 50 ms) reaches the client; then the path
    // goes silent.
    tokio::time::sleep(Duration::from_millis(250)).await;
    proxy.set(Link::Muted);
    eventually(30, "call A ends on a", || async {
        pool_a.stats().completed >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Another caller's 17 big calls, straight to the host: their outcomes
    // are kept after A's, pushing it out.
    // One at a time, so that the host has room for each.
    for i in 0..17u64 {
        let big = json!({"command": "big", "args": {"bytes": 1_000_000}});
        raw.publish_with_reply(
            "snakepit.test.host.a.call",
            raw.new_inbox(),
            big.to_string().into(),
        )
        .await
        .unwrap();
        eventually(30, "a big call ends on a", || async {
            pool_a.stats().completed >= 2 + i && pool_a.stats().in_flight == 0
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    if call.is_finished() {
        stop(vec![node_a], vec![pool_a]).await;
        return false;
    }
    reset(&proxy, &conn_a).await;
    let back = Instant::now();

    let r = tokio::time::timeout(GUARD, call)
        .await
        .expect("call A hangs: its outcome was neither sent again nor reported lost")
        .unwrap();
    if r.is_ok() {
        stop(vec![node_a], vec![pool_a]).await;
        return false;
    }
    match r {
        Err(Error::HostLost { host, message }) => {
            assert_eq!(host, "a");
            assert!(message.contains("no longer holds its outcome"), "{message}");
        }
        other => panic!("want the host-lost error of host a, got {other:?}"),
    }
    assert!(
        back.elapsed() < host_timeout,
        "it failed {:?} after the host was back",
        back.elapsed()
    );
    stop(vec![node_a], vec![pool_a]).await;
    true
}

/// A call that runs through two resets of its host's connection (each
/// making the client ask the host what became of it) is still running
/// when asked: its caller (no deadline) waits on and gets its result, and
/// it ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_running_through_host_resets_is_waited_for_and_runs_once() {
    let nats = NatsServer::start().await;
    let proxy = Proxy::start(nats.port).await;
    let conn_a = connect_quick(&proxy.url).await;
    let pool_a = pool_of(ScriptWorker(partition_worker()), 1).await;
    let node_a = serve(&conn_a, "a", &pool_a, 0).await;
    let client = client_on(&nats.connect().await, Duration::from_secs(5)).await;
    wait_hosts(&client, 1).await;
    let log = Removed(temp(TEMP_PREFIX, "through.log"));
    let marker = Removed(temp(TEMP_PREFIX, "through.marker"));

    let call = {
        let client = client.clone();
        let args = json!({"token": "through", "log": log.0, "marker": marker.0, "ms": 4000});
        tokio::spawn(async move { client.execute_with("run", args, CallOptions::new()).await })
    };
    eventually(30, "the call runs on a", || async { marker.0.exists() }).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    for _ in 0..2 {
        reset(&proxy, &conn_a).await;
        // The client hears the host's new connection at its next
        // heartbeat, and asks then.
        tokio::time::sleep(HEARTBEAT * 4).await;
    }
    let r = tokio::time::timeout(GUARD, call)
        .await
        .expect("the call's outcome never came")
        .unwrap();
    assert_eq!(r.unwrap(), json!({"token": "through"}));
    assert_eq!(count_logged(&log.0, "through", "start"), 1, "it ran once");
    stop(vec![node_a], vec![pool_a]).await;
}

/// What a host answers to `?where <reply subject>` on its cancel subject:
/// `running` for a call it runs, `kept` for one whose outcome it holds
/// to send again, nothing for one it never had (another run of its id may
/// have it: a rolling restart); never the outcome itself (which goes only
/// to the call's reply subject, which NATS permissions may keep others
/// from reading). (`gone` is shown by the test above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_tells_whoever_asks_where_a_call_is_but_never_its_outcome() {
    let nats = NatsServer::start().await;
    let raw = nats.connect().await;
    let pool_a = pool_of(ScriptWorker(big_worker()), 1).await;
    let node_a = serve(&nats.connect().await, "a", &pool_a, 0).await;
    // Heard from once it beats, so subscribed to its subjects: a call
    // published before the server has the host's subscription is lost.
    let client = client_on(&nats.connect().await, Duration::from_secs(5)).await;
    wait_hosts(&client, 1).await;
    let marker = Removed(temp(TEMP_PREFIX, "where.marker"));
    let reply = raw.new_inbox();
    let mut replies = raw.subscribe(reply.clone()).await.unwrap();
    let ask = |about: String| {
        let raw = raw.clone();
        async move {
            let m = raw
                .request(
                    "snakepit.test.host.a.cancel",
                    format!("?where {about}").into(),
                )
                .await
                .expect("the host answers");
            String::from_utf8(m.payload.to_vec()).unwrap()
        }
    };

    let call = json!({"command": "sleep", "args": {"marker": marker.0, "ms": 3000}});
    raw.publish_with_reply(
        "snakepit.test.host.a.call",
        reply.clone(),
        call.to_string().into(),
    )
    .await
    .unwrap();
    eventually(30, "the call runs on a", || async { marker.0.exists() }).await;
    assert_eq!(ask(reply.clone()).await, r#"{"running":{}}"#);
    // Its acknowledgement, then its outcome.
    let outcome = tokio::time::timeout(GUARD, async {
        loop {
            let m = replies.next().await.unwrap();
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            if v.get("ok").is_some() {
                break v;
            }
        }
    })
    .await
    .expect("the call's outcome never came");
    assert!(outcome["ok"]["v"]["pid"].is_u64(), "{outcome}");
    assert_eq!(ask(reply.clone()).await, r#"{"kept":{}}"#);
    let never = raw.request(
        "snakepit.test.host.a.cancel",
        format!("?where {}.7", raw.new_inbox()).into(),
    );
    // No answer is async-nats's own request timeout, or ours.
    if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), never).await {
        panic!("answered about a call it never had: {:?}", m.payload);
    }
    stop(vec![node_a], vec![pool_a]).await;
}

/// A stranger on the same NATS floods a host's cancel subject with
/// questions (`?<reply subject>`, with a reply subject of its own) about
/// calls it does not own. The host answers none of them with an outcome,
/// and goes on beating: a client's call that runs meanwhile (longer than
/// the host timeout) ends with its result, not with the host-lost error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_questions_from_a_stranger_does_not_silence_the_host() {
    let nats = NatsServer::start().await;
    let stranger = nats.connect().await;
    let pool_a = pool_of(ScriptWorker(partition_worker()), 1).await;
    let node_a = serve(&nats.connect().await, "a", &pool_a, 0).await;
    let client = client_on(&nats.connect().await, Duration::from_millis(1500)).await;
    wait_hosts(&client, 1).await;
    let log = Removed(temp(TEMP_PREFIX, "flood.log"));
    let marker = Removed(temp(TEMP_PREFIX, "flood.marker"));

    // A call of the client's, whose reply subject the stranger learns
    // (here: it subscribes to everything) and asks about.
    let spy_conn = nats.connect().await;
    let mut spy = spy_conn
        .subscribe("snakepit.test.host.a.call")
        .await
        .unwrap();
    // The server has the subscription before the call goes out.
    spy_conn.flush().await.unwrap();
    let call = {
        let client = client.clone();
        let args = json!({"token": "mine", "log": log.0, "marker": marker.0, "ms": 3500});
        tokio::spawn(async move { client.execute_with("run", args, CallOptions::new()).await })
    };
    eventually(30, "the call runs on a", || async { marker.0.exists() }).await;
    let seen = tokio::time::timeout(GUARD, spy.next())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the spy never saw the call that runs on a; hosts {:?}",
                client.hosts()
            )
        })
        .unwrap();
    let victim = seen.reply.expect("a call has a reply subject").to_string();

    let inbox = stranger.new_inbox();
    let mut answers = stranger.subscribe(format!("{inbox}.>")).await.unwrap();
    // The stranger floods from a thread and runtime of its own, as a peer
    // in another process would: the host and the client keep this
    // runtime's threads.
    let flood = {
        let url = nats.url.clone();
        let victim = victim.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let stranger = async_nats::connect(&url).await.unwrap();
                // Twice the client's host timeout: long enough to silence a
                // host that answers every question first, short enough not
                // to load the machine for long.
                let until = Instant::now() + Duration::from_secs(3);
                let mut n = 0u64;
                while Instant::now() < until {
                    let ask = if n % 2 == 0 {
                        format!("?{victim}")
                    } else {
                        format!("?_INBOX.nobody.{n}")
                    };
                    let _ = stranger
                        .publish_with_reply(
                            "snakepit.test.host.a.cancel",
                            format!("{inbox}.{}", n % 4),
                            ask.into(),
                        )
                        .await;
                    n += 1;
                    if n % 256 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                let _ = stranger.flush().await;
                n
            })
        })
    };
    let asked = tokio::task::spawn_blocking(move || flood.join().unwrap())
        .await
        .unwrap();
    let r = tokio::time::timeout(GUARD, call)
        .await
        .expect("the call ended")
        .unwrap();
    assert_eq!(
        r.unwrap_or_else(|e| panic!("after {asked} questions from a stranger: {e:?}")),
        json!({"token": "mine"})
    );
    // What the stranger heard: never a call's outcome.
    let mut heard = 0;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), answers.next()).await {
        let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
        assert!(
            v.get("not_declined").is_some(),
            "a stranger was told more than that a call was not declined: {v}"
        );
        heard += 1;
    }
    eprintln!("{asked} questions sent, {heard} answers heard");
    assert_eq!(count_logged(&log.0, "mine", "start"), 1, "it ran once");
    stop(vec![node_a], vec![pool_a]).await;
}

/// Both sides reset at once while a call's outcome is on its way: the
/// host's copy waits in its muted path, the client is deaf. The caller
/// gets one answer (the host-lost error: the client's connection reset),
/// and the outcome the host sends again afterwards is nobody's: the next
/// calls on the same client get their own results, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_on_both_sides_at_once_gives_each_caller_one_answer_its_own() {
    let nats = NatsServer::start().await;
    let host_proxy = Proxy::start(nats.port).await;
    let client_proxy = Proxy::start(nats.port).await;
    let conn_a = connect_quick(&host_proxy.url).await;
    let conn_c = connect_quick(&client_proxy.url).await;
    let pool_a = pool_of(ScriptWorker(partition_worker()), 1).await;
    let node_a = serve(&conn_a, "a", &pool_a, 0).await;
    let client = client_on(&conn_c, Duration::from_secs(5)).await;
    wait_hosts(&client, 1).await;
    let log = Removed(temp(TEMP_PREFIX, "both.log"));
    let marker = Removed(temp(TEMP_PREFIX, "both.marker"));

    let call = {
        let client = client.clone();
        let args = json!({"token": "first", "log": log.0, "marker": marker.0, "ms": 400});
        tokio::spawn(async move { client.execute_with("run", args, CallOptions::new()).await })
    };
    eventually(30, "the call runs on a", || async { marker.0.exists() }).await;
    // Acknowledged (it runs past 50 ms) before the paths go silent.
    tokio::time::sleep(Duration::from_millis(150)).await;
    host_proxy.set(Link::Muted);
    client_proxy.set(Link::Deaf);
    eventually(30, "the call ends on a", || async {
        pool_a.stats().completed >= 1 && pool_a.stats().in_flight == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    host_proxy.set(Link::Cut);
    client_proxy.set(Link::Cut);
    tokio::join!(reset(&host_proxy, &conn_a), reset(&client_proxy, &conn_c));

    let r = tokio::time::timeout(GUARD, call)
        .await
        .expect("the first call ended")
        .unwrap();
    match &r {
        Err(Error::HostLost { host, .. }) => assert_eq!(host, "a"),
        // The host's copy sent again may have come first: also one answer.
        Ok(v) => assert_eq!(v, &json!({"token": "first"})),
        Err(other) => panic!("want the host-lost error of host a or the result, got {other:?}"),
    }
    // The host's copies of the first outcome go out after its next
    // heartbeat; the next calls are made meanwhile and after.
    for i in 0..6 {
        let token = format!("next-{i}");
        let args = json!({"token": token, "log": log.0, "ms": 0});
        let r = tokio::time::timeout(GUARD, client.execute_with("run", args, CallOptions::new()))
            .await
            .expect("a later call ended");
        assert_eq!(
            r.unwrap_or_else(|e| panic!("{token}: {e:?}")),
            json!({"token": token}),
            "a later call got its own result"
        );
        tokio::time::sleep(HEARTBEAT).await;
    }
    assert_eq!(count_logged(&log.0, "first", "start"), 1, "it ran once");
    stop(vec![node_a], vec![pool_a]).await;
}

/// The client's connection resets while a stream is in flight and its
/// host waits for credit (its reader took nothing past the first chunk).
/// The stream ends with the host-lost error, and the host stops the call
/// (the client's cancel goes out once it is back): the worker is free
/// again for the next call, which runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_under_a_stalled_stream_fails_it_and_frees_its_worker() {
    let nats = NatsServer::start().await;
    let proxy = Proxy::start(nats.port).await;
    let conn_c = connect_quick(&proxy.url).await;
    let pool_a = pool_of(ScriptWorker(partition_worker()), 1).await;
    let node_a = serve(&nats.connect().await, "a", &pool_a, 0).await;
    let client = client_on(&conn_c, Duration::from_secs(3)).await;
    wait_hosts(&client, 1).await;
    let log = Removed(temp(TEMP_PREFIX, "stream.log"));

    let mut s = client
        .execute_stream(
            "stream",
            json!({"n": 5000, "token": "s", "log": log.0}),
            CallOptions::new(),
        )
        .await
        .unwrap();
    let first = tokio::time::timeout(GUARD, s.next())
        .await
        .expect("a first chunk")
        .unwrap()
        .unwrap();
    assert!(matches!(first, StreamItem::Chunk(_)), "{first:?}");
    // The host sends its window and waits for credit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.set(Link::Deaf);
    tokio::time::sleep(Duration::from_millis(100)).await;
    reset(&proxy, &conn_c).await;

    let end = tokio::time::timeout(GUARD, async {
        while let Some(item) = s.next().await {
            if let Err(e) = item {
                return Some(e);
            }
        }
        None
    })
    .await
    .expect("the stream ended");
    match end {
        Some(Error::HostLost { host, .. }) => assert_eq!(host, "a"),
        other => panic!("want the host-lost error of host a, got {other:?}"),
    }
    drop(s);
    eventually(30, "the host stops the stream's call", || async {
        pool_a.stats().in_flight == 0
    })
    .await;
    assert_eq!(
        count_logged(&log.0, "s", "end"),
        0,
        "it did not run to its end"
    );
    let r = tokio::time::timeout(
        GUARD,
        client.execute_with("run", json!({"token": "after"}), CallOptions::new()),
    )
    .await
    .expect("the next call ended");
    assert_eq!(r.unwrap(), json!({"token": "after"}));
    stop(vec![node_a], vec![pool_a]).await;
}

/// Both sides reset at once with a decline in the host's path: host `a`
/// (one worker, full with another caller's call) declines the client's
/// call into its muted path while the client is deaf; both connections
/// are cut, and the client's comes back first. The client asks `a` about
/// the call while `a` is still away (nobody answers on its subject yet);
/// `a` is back well within the client's host timeout, and says it
/// declined the call (and sends the decline again). The call never ran:
/// it must run once, on `b`, not fail with the host-lost error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decline_lost_in_a_reset_of_both_sides_reroutes_the_call_when_the_host_is_back_second() {
    let nats = NatsServer::start().await;
    let raw = nats.connect().await;
    let host_proxy = Proxy::start(nats.port).await;
    let client_proxy = Proxy::start(nats.port).await;
    let conn_a = connect_quick(&host_proxy.url).await;
    let conn_c = connect_quick(&client_proxy.url).await;
    let pool_a = pool_of(ScriptWorker(partition_worker()), 1).await;
    let pool_b = pool_of(ScriptWorker(partition_worker()), 1).await;
    let node_a = serve(&conn_a, "a", &pool_a, 0).await;
    let host_timeout = Duration::from_secs(5);
    let client = client_on(&conn_c, host_timeout).await;
    eventually(30, "the client sees host a idle", || async {
        client.hosts().iter().any(|h| h.id == "a" && h.free == 1)
    })
    .await;
    let log = Removed(temp(TEMP_PREFIX, "both-declined.log"));
    let marker = Removed(temp(TEMP_PREFIX, "both-declined.marker"));

    host_proxy.set(Link::Muted);
    client_proxy.set(Link::Deaf);
    // Another caller fills a's one worker; the client does not hear it.
    let rival = json!({"command": "run", "args": {"token": "rival", "log": log.0,
                       "marker": marker.0, "ms": 8000}});
    raw.publish_with_reply(
        "snakepit.test.host.a.call",
        raw.new_inbox(),
        rival.to_string().into(),
    )
    .await
    .unwrap();
    eventually(30, "the rival call runs on a", || async {
        marker.0.exists()
    })
    .await;
    let heard = conn_a.statistics().in_messages.load(Ordering::Relaxed);
    let call = {
        let client = client.clone();
        let args = json!({"token": "mine", "log": log.0, "ms": 0});
        tokio::spawn(async move { client.execute_with("run", args, CallOptions::new()).await })
    };
    eventually(30, "the call reaches host a", || async {
        conn_a.statistics().in_messages.load(Ordering::Relaxed) > heard
    })
    .await;
    // a declines it at once, into its muted path.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let node_b = serve(&nats.connect().await, "b", &pool_b, 0).await;

    host_proxy.set(Link::Cut);
    client_proxy.set(Link::Cut);
    no_responders(&raw, "snakepit.test.host.a.cancel", GUARD).await;
    // The client is back first; a stays away a while (well within the
    // client's host timeout).
    reset(&client_proxy, &conn_c).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    host_proxy.set(Link::Forward);

    let r = tokio::time::timeout(GUARD, call)
        .await
        .expect("the call ended")
        .unwrap();
    let r = r.unwrap_or_else(|e| {
        panic!("a call whose decline was lost in a reset of both sides failed though it never ran: {e:?}")
    });
    assert_eq!(r, json!({"token": "mine"}));
    assert_eq!(count_logged(&log.0, "mine", "start"), 1, "it ran once");
    stop(vec![node_a, node_b], vec![pool_a, pool_b]).await;
}
