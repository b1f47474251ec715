//! Tests of the client side of snakepit-cluster (crates/cluster/src/
//! client.rs, wire.rs, outbox.rs): what a call without a deadline hears
//! when the host's own deadline ends it, calls waiting for room when the
//! connection is drained, the queue's memory while calls wait, a host
//! restarted under its id that declines calls, a call that fits
//! `max_payload` only without its trace header, and a `Strict` session call
//! at the head of the queue. Each runs against a real nats-server
//! (127.0.0.1, a port of its own, stopped by the test) and pools of real
//! Python workers served from this process.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_cluster::{Client, ClientConfig, ServeOptions};
use snakepit_core::{Affinity, CallOptions, Error, Pool};

fn test_worker() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../core/tests/workers/test_worker.py")
}

/// cluster.md: "Errors from the host's pool (... timeouts ...) reach the
/// caller as the same variant with the same fields"; core's
/// `Error::CallTimeout::timeout`: "The deadline it had, counted from
/// submission"; cluster.md: "Without a `CallOptions::timeout` the host's
/// pool applies its own default (a call it ends reports
/// `Error::CallTimeout` with that default's duration)".
///
/// The host's pool (adapter `command_timeout` 400 ms) ends a call sent
/// without a timeout. The test checks that the cluster caller hears
/// `CallTimeout { timeout: 400ms }`, as a local caller of the same pool
/// does. This once reported `timeout: 0ns`, a deadline the call never had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_default_deadline_reaches_the_caller_with_its_duration() {
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let adapter = Bridge::python(test_worker()).command_timeout(Duration::from_millis(400));
    let pool = pool_of(adapter, 1).await;
    // What the same pool says to a local caller.
    let local = pool
        .execute("sleep", json!({"ms": 5_000}))
        .await
        .unwrap_err();
    let Error::CallTimeout {
        timeout: local_timeout,
        ..
    } = local
    else {
        panic!("the pool's own default deadline: {local:?}");
    };
    assert_eq!(local_timeout, Duration::from_millis(400));
    let node = snakepit_cluster::serve(&conn, "test", pool.clone())
        .await
        .unwrap();
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    let e = tokio::time::timeout(
        Duration::from_secs(30),
        client.execute("sleep", json!({"ms": 5_000})),
    )
    .await
    .expect("the host's default deadline ends the call")
    .unwrap_err();
    let shown = e.to_string();
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
    match e {
        Error::CallTimeout { command, timeout } => {
            assert_eq!(command, "sleep");
            assert_eq!(
                timeout, local_timeout,
                "the cluster caller hears the deadline the call had ({shown})"
            );
        }
        other => panic!("expected Error::CallTimeout, got {other:?}"),
    }
}

/// One host `h` of one worker, no prefetch (capacity 1), and a client of
/// its own connection with a queue timeout of 20 s that has heard of it.
async fn one_full_host(
    nats: &NatsServer,
) -> (Pool, snakepit_cluster::Node, async_nats::Client, Client) {
    let host_conn = nats.connect().await;
    let pool = pool_of(TestWorker, 1).await;
    let node = snakepit_cluster::serve_with(
        &host_conn,
        "test",
        pool.clone(),
        ServeOptions::new().host_id("h").prefetch_per_worker(0),
    )
    .await
    .unwrap();
    let mut config = ClientConfig::default();
    config.queue_timeout = Duration::from_secs(20);
    let conn = nats.connect().await;
    let client = Client::connect_with(&conn, "test", config).await.unwrap();
    wait_hosts(&client, 1).await;
    (pool, node, conn, client)
}

/// lib.rs: "A connection drained (`async_nats::Client::drain`) or closed
/// for good fails the client's calls in flight at once, and every later
/// call"; cluster.md, failures: "as when it is down, for good: calls in
/// flight fail with the host-lost error at once, and every later call with
/// the unavailable error"; `Error::Unavailable`: "the call was not sent
/// (`e.never_ran()` is true)".
///
/// A call waits in the client's queue (the host's one worker runs a call
/// of 30 s) when the client's connection is drained. The test checks that
/// the call in flight fails with the host-lost error, and the queued call,
/// which never reached the host, with the unavailable error and
/// `never_ran()` true. This once told the queued call as host-lost ("it may
/// or may not have run"), so a caller that retries what never ran would
/// not have retried it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_woken_from_the_queue_after_a_drain_is_unavailable_not_host_lost() {
    let nats = NatsServer::start().await;
    let (pool, node, conn, client) = one_full_host(&nats).await;
    let running = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("sleep", json!({"ms": 30_000})).await })
    };
    eventually(30, "the host's worker is busy", || async {
        pool.stats().busy == 1
    })
    .await;
    let queued = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("echo", json!({"n": 1})).await })
    };
    // The second call waits in the client's queue (the host has no room).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!queued.is_finished(), "the second call waits for room");
    conn.drain().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("the call in flight ends with the drain")
        .unwrap()
        .unwrap_err();
    assert!(snakepit_cluster::is_host_lost(&first), "{first:?}");
    let waited = tokio::time::timeout(Duration::from_secs(60), queued)
        .await
        .expect("the queued call ends")
        .unwrap();
    // The host never received the queued call: only the sleep ran there.
    let served = pool.stats();
    drop(node);
    pool.shutdown().await.unwrap();
    let e = waited.unwrap_err();
    assert!(
        snakepit_cluster::is_unavailable(&e) && e.never_ran(),
        "the queued call was never sent, so it is unavailable; got {e:?} (host's pool: {served:?})"
    );
}

/// The same promise with no host at all: a call waiting for one (queue
/// timeout 20 s) when the connection is drained can never be sent.
/// cluster.md, failures: while the connection is down, "calls waiting in
/// the client's queue, fail at once with the unavailable error (never
/// sent)". The test checks that the call ends as unavailable within 10 s
/// of the drain. This once waited out its whole queue timeout and failed
/// with `Error::QueueTimeout`, as if the cluster were merely busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waiting_for_a_host_ends_at_once_when_the_connection_is_drained() {
    let nats = NatsServer::start().await;
    let mut config = ClientConfig::default();
    config.queue_timeout = Duration::from_secs(20);
    let conn = nats.connect().await;
    let client = Client::connect_with(&conn, "test", config).await.unwrap();
    let queued = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("echo", json!({"n": 1})).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!queued.is_finished(), "the call waits for a host");
    conn.drain().await.unwrap();
    let drained = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(60), queued)
        .await
        .expect("the queued call ends")
        .unwrap()
        .unwrap_err();
    let took = drained.elapsed();
    assert!(
        snakepit_cluster::is_unavailable(&e) && took < Duration::from_secs(10),
        "the waiting call ends as unavailable soon after the drain; got {e:?} after {took:?}"
    );
}

/// The resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// `ClientConfig::max_queue_size` (client.rs): "Calls of this client
/// waiting for free capacity at most; more fail at once with
/// [`Error::PoolSaturated`]": the queue is bounded by the number of waiting
/// calls, so its memory follows that number, not how long the calls wait.
///
/// While no host has room, each waiting call looks again every sixth of
/// the host timeout. Here 500 calls wait 20 s with a host timeout of 60 ms
/// (a look every 10 ms), and the test checks that the process grows by
/// less than 16 MiB meanwhile. This once grew with every look: at the
/// defaults, 1,000 calls waiting an hour would have held about 1.4 GB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_for_room_do_not_grow_the_clients_memory() {
    let nats = NatsServer::start().await;
    let mut config = ClientConfig::default();
    config.host_timeout = Duration::from_millis(60);
    config.queue_timeout = Duration::from_secs(60);
    config.max_queue_size = 10_000;
    let client = client(&nats, config).await;
    let calls: Vec<_> = (0..500)
        .map(|n| {
            let client = client.clone();
            tokio::spawn(async move { client.execute("echo", json!({"n": n})).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = rss();
    for c in &calls {
        assert!(!c.is_finished(), "the calls still wait for a host");
        c.abort();
    }
    drop(client);
    let grown = after.saturating_sub(before);
    assert!(
        grown < 16 << 20,
        "500 calls waiting 20 s grew the process by {} MiB ({} -> {} MiB)",
        grown >> 20,
        before >> 20,
        after >> 20
    );
}

/// cluster.md, routing: "A call that reaches a host that filled up
/// meanwhile (another client was faster) is declined, never run, and
/// routed again"; `host_full`: "The host declined a call: no more to it
/// until it says it has room"; failures: a host "started again under its
/// id": "each run of a host names itself in its heartbeats, and clients
/// count a new run's heartbeats and declines afresh".
///
/// Here the first run of host `h` (one worker, no prefetch) heartbeats
/// every 2 ms for 2 s, then shuts down gracefully (a rolling restart); the
/// second run heartbeats at the default 250 ms. Two clients each send a
/// call of 1.5 s at once: one is declined and must wait for room, so the
/// test checks that `h`'s call subject carries a few messages (at most
/// 20), not hundreds. This once ignored the new run's declines until it
/// had sent as many heartbeats as the old run, and sent a declined call
/// straight back to the full host, over and over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_restarted_under_its_id_is_not_flooded_with_declined_calls() {
    let nats = NatsServer::start().await;
    let host_conn = nats.connect().await;
    let pool = pool_of(TestWorker, 1).await;
    let options = || ServeOptions::new().host_id("h").prefetch_per_worker(0);
    let a = client(&nats, ClientConfig::default()).await;
    let b = client(&nats, ClientConfig::default()).await;
    let first = snakepit_cluster::serve_with(
        &host_conn,
        "test",
        pool.clone(),
        options().heartbeat(Duration::from_millis(2)),
    )
    .await
    .unwrap();
    wait_hosts(&a, 1).await;
    wait_hosts(&b, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.shutdown().await.unwrap();
    let second = snakepit_cluster::serve_with(&host_conn, "test", pool.clone(), options())
        .await
        .unwrap();
    for c in [&a, &b] {
        eventually(
            30,
            "the clients hear the host's second run with room",
            || async { c.hosts().iter().any(|h| h.id == "h" && h.free == 1) },
        )
        .await;
    }
    let sent = race_two_calls(&nats, &a, &b).await;
    second.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
    assert!(
        sent <= 20,
        "two calls took {sent} messages to the host's call subject (each decline ignored, the call sent again at once)"
    );
}

/// Two clients `a` and `b` each send a call of 1.5 s to host `h` at once;
/// the messages that reach `h`'s call subject meanwhile.
async fn race_two_calls(nats: &NatsServer, a: &Client, b: &Client) -> usize {
    let spy = nats.connect().await;
    let mut calls = subscribed(&spy, &["snakepit.test.host.h.call"])
        .await
        .remove(0);
    let opts = || CallOptions::new().timeout(Duration::from_secs(30));
    let (ra, rb) = tokio::join!(
        a.execute_with("sleep", json!({"ms": 1500}), opts()),
        b.execute_with("sleep", json!({"ms": 1500}), opts()),
    );
    ra.unwrap();
    rb.unwrap();
    count(&mut calls, Duration::from_millis(500)).await
}

/// The control of the test above, without the restart: two clients race
/// for a host's one unit; the declined call waits for the host's word that
/// it has room ("no more to it until it says it has room"), so the host's
/// call subject carries the two calls and a resend or two, several times
/// in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_call_waits_for_room_rather_than_coming_back_at_once() {
    let nats = NatsServer::start().await;
    let host_conn = nats.connect().await;
    let pool = pool_of(TestWorker, 1).await;
    let node = snakepit_cluster::serve_with(
        &host_conn,
        "test",
        pool.clone(),
        ServeOptions::new().host_id("h").prefetch_per_worker(0),
    )
    .await
    .unwrap();
    let a = client(&nats, ClientConfig::default()).await;
    let b = client(&nats, ClientConfig::default()).await;
    for round in 0..3 {
        for c in [&a, &b] {
            eventually(30, "the clients hear the host with room", || async {
                c.hosts().iter().any(|h| h.id == "h" && h.free == 1)
            })
            .await;
        }
        let sent = race_two_calls(&nats, &a, &b).await;
        eprintln!("round {round}: {sent} messages");
        assert!(
            (2..=20).contains(&sent),
            "round {round}: two calls took {sent} messages to the host's call subject"
        );
    }
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// `promises.rs: a_call_over_max_payload_fails_validation_and_is_never_sent`
/// ("A call bigger than `max_payload` fails with `Error::Validation` before
/// it is sent"); cluster.md, trace context: "NATS counts the header in the
/// message's size, so a call whose JSON and headers together exceed the
/// server's `max_payload` fails with `Error::Validation` before it is
/// sent"; `Error::Unavailable`: "the NATS connection is down (or the client
/// was closed)".
///
/// The server's `max_payload` is 64 KiB. Calls whose JSON falls 10 to 80
/// bytes short of it run without a header; the test sends each again with
/// a `traceparent` header and checks that it runs or fails with
/// `Error::Validation`. This once reached the caller as
/// `Error::Unavailable` ("max payload size exceeded"): a connection
/// problem, to be retried when NATS is back, for a call that can never be
/// sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_too_big_with_its_trace_header_is_a_validation_error() {
    let nats = NatsServer::start_with_config("max_payload: 65536\n").await;
    let host_conn = nats.connect().await;
    let pool = pool_of(TestWorker, 1).await;
    let node = snakepit_cluster::serve(&host_conn, "test", pool.clone())
        .await
        .unwrap();
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    // `{"command":"sleep","args":{"ms":0,"pad":"<pad>"},"reply":"_INBOX.<22>.<n>"}`
    let overhead = r#"{"command":"sleep","args":{"ms":0,"pad":""},"reply":""}"#.len() + 32;
    let mut kinds = Vec::new();
    for short in (10..=80).step_by(10) {
        let pad = "y".repeat(65536 - overhead - short);
        let args = json!({"ms": 0, "pad": pad});
        // Without the header the call fits and runs.
        client.execute("sleep", args.clone()).await.unwrap();
        let with_trace = CallOptions::new().traceparent(traceparent);
        match client.execute_with("sleep", args, with_trace).await {
            Ok(_) => kinds.push((short, "ran".to_owned())),
            Err(e) => kinds.push((short, format!("{e:?}"))),
        }
    }
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
    for (short, kind) in &kinds {
        assert!(
            kind == "ran" || kind.starts_with("Validation"),
            "a call {short} bytes short of max_payload, with a traceparent: {kind}"
        );
    }
}

/// cluster.md, sessions: "`Strict` waits for it (queue timeout)", and "A
/// `Strict` call waiting for its host does not hold up the calls behind it
/// that another host can run now"; routing: "a host with an idle worker
/// first ... while no host has room the call waits in the client's queue",
/// "a busy host takes no call that an idle one could run now".
///
/// A `Strict` call of session `s1` waits for its host `x` (busy with a
/// call of 60 s), at the front of the client's queue. The other host is
/// idle. The test checks that 40 quick calls in a row take under 5 s while
/// the `Strict` call waits, and that the `Strict` call then succeeds. This
/// once took over 10 s: each later call waited a full poll interval (a
/// sixth of the host timeout, 250 ms by default) for the idle host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_call_waiting_for_its_host_does_not_hold_up_calls_an_idle_host_can_run() {
    let nats = NatsServer::start().await;
    let mut pools = Vec::new();
    let mut nodes = Vec::new();
    for id in ["a", "b"] {
        let conn = nats.connect().await;
        let pool = pool_of(TestWorker, 1).await;
        let node = snakepit_cluster::serve_with(
            &conn,
            "test",
            pool.clone(),
            ServeOptions::new().host_id(id).prefetch_per_worker(0),
        )
        .await
        .unwrap();
        pools.push(pool);
        nodes.push(node);
    }
    let mut config = ClientConfig::default();
    config.queue_timeout = Duration::from_secs(120);
    let client = client(&nats, config).await;
    wait_hosts(&client, 2).await;
    let in_s1 = |affinity| {
        CallOptions::new()
            .session("s1")
            .affinity(affinity)
            .timeout(Duration::from_secs(120))
    };
    let r = client
        .execute_with("pid", json!({}), in_s1(Affinity::Prefer))
        .await
        .unwrap();
    let x = pools
        .iter()
        .position(|p| p.worker_pids().contains(&pid_of(&r)))
        .expect("s1 ran on one of the hosts");
    let filling = {
        let client = client.clone();
        let options = in_s1(Affinity::Prefer);
        tokio::spawn(async move {
            client
                .execute_with("sleep", json!({"ms": 60_000}), options)
                .await
        })
    };
    eventually(30, "the session's host is busy", || async {
        pools[x].stats().in_flight == 1
    })
    .await;
    let strict = {
        let client = client.clone();
        let options = in_s1(Affinity::Strict);
        tokio::spawn(async move { client.execute_with("pid", json!({}), options).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!strict.is_finished(), "the Strict call waits for its host");
    let started = Instant::now();
    for n in 0..40 {
        let r = client.execute("echo", json!({"n": n})).await.unwrap();
        assert_eq!(r["echoed"]["n"], n);
    }
    let took = started.elapsed();
    filling.abort();
    let strict = strict.await.unwrap();
    for node in nodes {
        node.shutdown().await.unwrap();
    }
    for pool in pools {
        pool.shutdown().await.unwrap();
    }
    assert!(strict.is_ok(), "{strict:?}");
    assert!(
        took < Duration::from_secs(5),
        "40 quick calls, with an idle host, took {took:?} while a Strict call waited"
    );
}

/// docs/cluster.md: "A client keeps track of at most
/// `snakepit_cluster::MAX_HOSTS` (4,096) host ids". Heartbeats under 5,000
/// new ids on the cluster's heartbeat subject (a broken or hostile
/// publisher) leave the client's table at that many, and a known id's next
/// heartbeat still counts. (Each new id took a new entry, kept for 20 host
/// timeouts, however many came.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_under_endless_new_ids_stop_at_the_host_table_cap() {
    let nats = NatsServer::start().await;
    let mut config = ClientConfig::default();
    config.host_timeout = Duration::from_secs(60);
    let client = client(&nats, config).await;
    let publisher = nats.connect().await;
    let beat = |host: &str, capacity: usize| {
        json!({"seq": 1, "host": host, "pid": 1, "capacity": capacity, "free": 0})
            .to_string()
            .into_bytes()
    };
    for n in 0..5_000 {
        publisher
            .publish("snakepit.test.hb", beat(&format!("h{n}"), 1).into())
            .await
            .unwrap();
    }
    publisher.flush().await.unwrap();
    let cap = snakepit_cluster::MAX_HOSTS;
    eventually(30, "the table is full", || {
        let n = client.hosts().len();
        async move { n == cap }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.hosts().len(), cap, "past the cap");
    // A known id: its next heartbeat counts.
    let known = client.hosts()[0].id.clone();
    publisher
        .publish("snakepit.test.hb", beat(&known, 7).into())
        .await
        .unwrap();
    publisher.flush().await.unwrap();
    eventually(10, "a known host's heartbeat counts", || {
        let seen = client
            .hosts()
            .iter()
            .any(|h| h.id == known && h.capacity == 7);
        async move { seen }
    })
    .await;
}

/// A fake host on raw NATS that answers each call with `flood` chunks at
/// once, ignoring the stream window, and never an outcome; it reports the
/// cancels it is sent. Returns the cancels seen and the task to abort.
async fn flooding_host(
    nats: &NatsServer,
    flood: usize,
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let raw = nats.connect().await;
    let mut calls = raw
        .subscribe("snakepit.test.host.flood.call")
        .await
        .unwrap();
    let mut cancels = raw
        .subscribe("snakepit.test.host.flood.cancel")
        .await
        .unwrap();
    raw.flush().await.unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let beats = fake_heartbeats(&raw, "flood");
    let answers = {
        let raw = raw.clone();
        tokio::spawn(async move {
            while let Some(m) = calls.next().await {
                let call: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
                let to = call["reply"].as_str().unwrap().to_owned();
                for n in 0..flood {
                    let chunk = json!({"chunk": {"v": n}});
                    raw.publish(to.clone(), chunk.to_string().into())
                        .await
                        .unwrap();
                }
                raw.flush().await.unwrap();
            }
        })
    };
    let listen = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(m) = cancels.next().await {
                let text = String::from_utf8_lossy(&m.payload).into_owned();
                // Credits start with `+`; a cancel is the reply subject.
                if !text.starts_with('+') {
                    seen.lock().unwrap().push(text);
                }
            }
        })
    };
    (seen, vec![beats, answers, listen])
}

/// cluster.md, "Streams": a host sends at most 256 chunks ahead of the
/// reader. A host that ignores that window (broken or hostile) does not
/// grow the client's memory with its flood: the chunks within the window
/// (all of them, however slow the reader) reach the reader, then the
/// stream fails with `Error::HostLost` naming the overrun, and the call is
/// cancelled on the host. A one-shot call to
/// such a host fails the same way instead of queueing every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_floods_past_the_stream_window_fails_the_call_instead_of_growing_memory() {
    let nats = NatsServer::start().await;
    let (cancels, tasks) = flooding_host(&nats, 20_000).await;
    let mut config = ClientConfig::default();
    config.host_timeout = Duration::from_secs(30);
    let client = client(&nats, config).await;
    wait_hosts(&client, 1).await;
    let mut stream = client
        .execute_stream("numbers", json!({}), CallOptions::new())
        .await
        .unwrap();
    // The reader is slow: the whole flood has been sent before it reads.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut chunks = 0;
    let error = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("the stream goes on or ends")
        {
            Some(Ok(_)) => chunks += 1,
            Some(Err(e)) => break e,
            None => panic!("the stream ended without an error after {chunks} chunks"),
        }
    };
    eprintln!("flooded stream: {chunks} chunks, then {error}");
    assert!(
        matches!(&error, Error::HostLost { host, message } if host == "flood" && message.contains("more than the protocol lets it")),
        "{error:?}"
    );
    // What came within the window (and the few messages the protocol
    // allows beside it), and no more.
    assert!(
        (256..=265).contains(&chunks),
        "{chunks} chunks reached the reader"
    );
    drop(stream);
    eventually(10, "the call is cancelled on the host", || {
        let n = cancels.lock().unwrap().len();
        async move { n == 1 }
    })
    .await;

    let e = client
        .execute_with(
            "ping",
            json!({}),
            CallOptions::new().timeout(Duration::from_secs(20)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::HostLost { message, .. } if message.contains("more than the protocol lets it")),
        "{e:?}"
    );
    for t in tasks {
        t.abort();
    }
}
