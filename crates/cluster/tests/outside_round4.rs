//! Round 4 of outside review of `snakepit-cluster`: a demanding user and
//! an attacker with access to the NATS server, against a real nats-server
//! (127.0.0.1) and real Python workers (`crates/core/tests/workers/
//! test_worker.py`).
//!
//! Promises checked (docs/cluster.md):
//!
//! - Security: "a host answers no reply subject a client cannot have: one
//!   over 512 bytes, with a wildcard, a space or a control character, or a
//!   system subject". A client's reply subjects come from its connection's
//!   inbox prefix (`ConnectOptions::custom_inbox_prefix`, which the same
//!   section tells callers to set): a prefix that gives subjects no host
//!   answers must be refused when the client is made, not turn every call
//!   into a host-lost error that says it "may or may not have run".
//! - Failures, "a host's connection to NATS drops and is back at once":
//!   "Its streams in flight fail with the host-lost error once that
//!   heartbeat says so". One forged heartbeat (anyone who may publish on
//!   the heartbeat subject) must not blind a client to that host's later
//!   reconnects for the rest of the host's run.
//! - Trace context: a hostile `traceparent` (on the call's NATS header, or
//!   in a batch's `headers` pairs) reaches the worker as text; the call is
//!   answered and the host serves on.
//! - Discovery: forged heartbeats (broken, NaN-like, negative, gigantic)
//!   leave the known host's figures and its calls as they were.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::files::no_responders;
use common::proxy::{connect_quick, Link, Proxy};
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use snakepit_cluster::{is_host_lost, Client, ClientConfig, Node, ServeOptions};
use snakepit_core::{CallOptions, Error, Pool, StreamItem};

/// The hosts' heartbeat interval.
const HEARTBEAT: Duration = Duration::from_millis(100);

/// Turns a hang into a failure (never a measure of speed).
const GUARD: Duration = Duration::from_secs(30);

async fn guarded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {GUARD:?}"))
}

/// Serves a pool of `workers` test workers on `conn` as host `id`.
async fn serve_host(conn: &async_nats::Client, id: &str, workers: usize) -> (Pool, Node) {
    let pool = pool(workers).await;
    let options = ServeOptions::new().host_id(id).heartbeat(HEARTBEAT);
    let node = snakepit_cluster::serve_with(conn, "test", pool.clone(), options)
        .await
        .unwrap();
    (pool, node)
}

async fn stop(node: Node, pool: Pool) {
    drop(node);
    let _ = tokio::time::timeout(Duration::from_secs(10), pool.shutdown()).await;
}

fn config(host_timeout: Duration) -> ClientConfig {
    let mut c = ClientConfig::default();
    c.host_timeout = host_timeout;
    c.queue_timeout = Duration::from_secs(20);
    c
}

/// A client of the cluster `test` on `nats`, whose hosts are lost after
/// `host_timeout_s` seconds of silence, once it has heard of one host.
async fn client_of_one(nats: &NatsServer, host_timeout_s: u64) -> Client {
    let client = Client::connect_with(
        &nats.connect().await,
        "test",
        config(Duration::from_secs(host_timeout_s)),
    )
    .await
    .unwrap();
    wait_hosts(&client, 1).await;
    client
}

/// The next heartbeat of `host` on `sub` (the spy's heartbeat
/// subscription) that `pick` takes.
async fn heartbeat_of(
    sub: &mut async_nats::Subscriber,
    host: &str,
    mut pick: impl FnMut(&Value) -> bool,
) -> Value {
    guarded("a heartbeat of the host", async {
        loop {
            let msg = sub.next().await.expect("the heartbeat subscription");
            let Ok(hb) = serde_json::from_slice::<Value>(&msg.payload) else {
                continue;
            };
            if hb["host"] == host && pick(&hb) {
                return hb;
            }
        }
    })
    .await
}

/// Publishes `forged` on the heartbeat subject from `raw`, then a heartbeat
/// of a marker host (no room, so no call goes there) from the same
/// connection, and waits until `client` hears of the marker: NATS keeps one
/// publisher's order, so the client has taken `forged` by then.
async fn publish_heard(raw: &async_nats::Client, client: &Client, forged: &[u8], marker: &str) {
    raw.publish("snakepit.test.hb", forged.to_vec().into())
        .await
        .unwrap();
    let hb = json!({"seq": 1, "host": marker, "pid": 1, "capacity": 0, "running": 0, "free": 0});
    raw.publish("snakepit.test.hb", hb.to_string().into())
        .await
        .unwrap();
    raw.flush().await.unwrap();
    eventually(30, "the client hears the marker heartbeat", || async {
        client.hosts().iter().any(|h| h.id == marker)
    })
    .await;
}

/// Waits for three heartbeats of `host` published after this call, on a
/// subscription of its own (one made before could hand over heartbeats it
/// buffered earlier): a client that took a forged heartbeat before this
/// call has had the host's own since, give or take the server's fan-out.
async fn after_forged(raw: &async_nats::Client, host: &str) {
    let mut fresh = subscribed(raw, &["snakepit.test.hb"]).await.pop().unwrap();
    for _ in 0..3 {
        heartbeat_of(&mut fresh, host, |_| true).await;
    }
}

/// A connection's inbox prefix gives the client's reply subjects
/// (`<prefix>.<nuid>.<call>`). One that gives subjects no host answers
/// (a wildcard, a `$` system subject, over 512 bytes, a space) would have
/// every call ignored by every host and failed one host timeout later as
/// "may or may not have run", though none ever ran. The client refuses
/// such a connection with `Error::Config` when it is made; a usual custom
/// prefix (as the docs' permissions example sets) serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inbox_prefix_no_host_answers_is_refused_when_the_client_is_made() {
    let nats = NatsServer::start().await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 1).await;

    let long = format!("_INBOX.{}", "i".repeat(480));
    for prefix in [
        "_INBOX.*",
        "_INBOX.*.x",
        "$MY.inbox",
        long.as_str(),
        "in box",
    ] {
        let conn = async_nats::ConnectOptions::new()
            .custom_inbox_prefix(prefix)
            .connect(&nats.url)
            .await
            .unwrap();
        let made = Client::connect_with(&conn, "test", config(Duration::from_secs(2))).await;
        let short = &prefix[..prefix.len().min(20)];
        match made {
            Err(Error::Config(m)) => assert!(m.contains("inbox"), "prefix {short}: {m}"),
            Err(e) => panic!("prefix {short}: want a config error, got {e:?}"),
            Ok(client) => {
                // Show what the caller gets instead.
                wait_hosts(&client, 1).await;
                let opts = CallOptions::new().timeout(Duration::from_secs(5));
                let r = guarded("a call", client.execute_with("echo", json!({}), opts)).await;
                panic!("prefix {short}: the client was made, and a call gave {r:?}");
            }
        }
    }

    let conn = async_nats::ConnectOptions::new()
        .custom_inbox_prefix("_INBOX.caller")
        .connect(&nats.url)
        .await
        .unwrap();
    let client = Client::connect_with(&conn, "test", config(Duration::from_secs(2)))
        .await
        .unwrap();
    wait_hosts(&client, 1).await;
    let r = guarded("a call", client.execute("echo", json!({"x": 1}))).await;
    assert_eq!(r.unwrap()["echoed"]["x"], 1);
    stop(node, pool).await;
}

/// A heartbeat forged under a live host's id and run, with a connection
/// count far ahead of the host's (here `u64::MAX`), must not blind the
/// client to the host's later reconnects: after it, the host's connection
/// is reset, and a stream held by its reader across that reset still
/// fails with the host-lost error that says so, as the docs promise (the
/// credit it granted meanwhile may be lost). A client that took the forged
/// count as the run's own would wait for a count the host never reaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_connection_count_does_not_blind_the_client_to_its_hosts_later_reconnects() {
    let nats = NatsServer::start().await;
    let raw = nats.connect().await;
    let mut beats = subscribed(&raw, &["snakepit.test.hb"]).await.pop().unwrap();
    let proxy = Proxy::start(nats.port).await;
    let conn_a = connect_quick(&proxy.url).await;
    let (pool, node) = serve_host(&conn_a, "a", 1).await;
    let client = client_of_one(&nats, 3).await;

    // The attacker copies the host's heartbeat and raises its count.
    let mut forged = heartbeat_of(&mut beats, "a", |_| true).await;
    let real_conn = forged["conn"].as_u64().unwrap_or(0);
    assert!(
        real_conn >= 1,
        "the host says its connection count: {forged}"
    );
    forged["conn"] = json!(u64::MAX);
    forged["seq"] = json!(forged["seq"].as_u64().unwrap() + 1);
    publish_heard(&raw, &client, forged.to_string().as_bytes(), "marker").await;
    after_forged(&raw, "a").await;

    // A stream whose reader holds it after its first chunk, once NATS has
    // had the whole window from the host (so that none is lost in the
    // reset below, and only the host's word can end the stream).
    let chunks_seen = Arc::new(AtomicUsize::new(0));
    let spy = {
        let mut sub = subscribed(&raw, &["_INBOX.>"]).await.pop().unwrap();
        let seen = chunks_seen.clone();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let chunk = b"\"chunk\"";
                let n = m
                    .payload
                    .windows(chunk.len())
                    .filter(|w| w == chunk)
                    .count();
                seen.fetch_add(n, Ordering::Relaxed);
            }
        })
    };
    let mut s = client
        .execute_stream("stream", json!({"n": 2000}), CallOptions::new())
        .await
        .unwrap();
    let first = guarded("a first chunk", s.next()).await.unwrap().unwrap();
    assert_eq!(first, StreamItem::Chunk(json!({"i": 0})));
    eventually(30, "the host sent the stream's window", || async {
        chunks_seen.load(Ordering::Relaxed) >= 256
    })
    .await;
    spy.abort();

    // The host's connection is reset, and it says so in its heartbeats.
    proxy.set(Link::Cut);
    no_responders(&raw, "snakepit.test.host.a.cancel", GUARD).await;
    proxy.set(Link::Forward);
    heartbeat_of(&mut beats, "a", |hb| hb["conn"].as_u64() > Some(real_conn)).await;
    heartbeat_of(&mut beats, "a", |hb| hb["conn"].as_u64() > Some(real_conn)).await;

    let mut chunks = 1u64;
    let end = guarded("the stream after its host's reset", async {
        loop {
            match s.next().await {
                Some(Ok(StreamItem::Chunk(_))) => chunks += 1,
                Some(Ok(other)) => return Ok(other),
                Some(Err(e)) => return Err(e),
                None => panic!("the stream ended without an outcome"),
            }
        }
    })
    .await;
    match end {
        Err(e) => {
            assert!(is_host_lost(&e), "{e:?}");
            assert!(
                e.to_string().contains("made its connection to NATS again"),
                "{e}"
            );
        }
        Ok(other) => panic!(
            "after a forged heartbeat the client missed the host's reset: \
             the stream went on to {other:?} after {chunks} chunks"
        ),
    }
    drop(s);
    stop(node, pool).await;
}

/// Hostile trace headers, on a call's NATS header and in a batch's
/// `headers` pairs: `traceparent` values that are not W3C ones (control
/// characters, non-ASCII, 32 KiB), beside pairs no NATS header can be (a
/// name with a colon and a line break, a value with a line break, an empty
/// name). The `traceparent` reaches the worker as the text it was, the
/// impossible pairs are left out, every call is answered, and the host
/// serves ordinary calls after them. (async-nats panics when a header is
/// built from such a pair: the host's serving loop died of one batch.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_trace_headers_reach_the_worker_as_text_and_the_host_serves_on() {
    let nats = NatsServer::start().await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 2).await;
    let client = client_of_one(&nats, 3).await;
    let raw = nats.connect().await;
    let inbox = raw.new_inbox();
    let mut replies = subscribed(&raw, &[&format!("{inbox}.*")])
        .await
        .pop()
        .unwrap();

    let big = "t".repeat(32 << 10);
    let values = [
        "not-a-traceparent",
        "00-zz-yy-01",
        "a\u{7f}b\u{1}c",
        "é✓\u{fffd}",
        big.as_str(),
    ];
    // Batches: a JSON array of calls, each with its reply and headers.
    let mut batch = Vec::new();
    for (i, v) in values.iter().enumerate() {
        batch.push(
            json!({"command": "context", "args": {}, "reply": format!("{inbox}.{i}"),
                          "headers": [["traceparent", v], ["bad name: x\r\n", "\r\nv"], ["", ""]]}),
        );
    }
    raw.publish_with_reply(
        "snakepit.test.host.a.call",
        format!("{inbox}.b1"),
        serde_json::to_vec(&batch).unwrap().into(),
    )
    .await
    .unwrap();
    // One call alone with the header on its NATS message.
    let mut h = async_nats::HeaderMap::new();
    h.insert("traceparent", big.as_str());
    raw.publish_with_reply_and_headers(
        "snakepit.test.host.a.call",
        format!("{inbox}.99"),
        h,
        serde_json::to_vec(&json!({"command": "context", "args": {}}))
            .unwrap()
            .into(),
    )
    .await
    .unwrap();

    let mut answered = std::collections::HashMap::new();
    guarded("every hostile call answered", async {
        while answered.len() < values.len() + 1 {
            let msg = replies.next().await.unwrap();
            let token = msg.subject.rsplit('.').next().unwrap().to_owned();
            let items: Vec<(String, Value)> = if token == "m" {
                serde_json::from_slice(&msg.payload).unwrap()
            } else {
                vec![(token, serde_json::from_slice(&msg.payload).unwrap())]
            };
            for (t, reply) in items {
                if reply.get("ack").is_some() {
                    continue;
                }
                answered.insert(t, reply);
            }
        }
    })
    .await;
    for (i, v) in values.iter().enumerate() {
        let reply = &answered[&i.to_string()];
        let tp = &reply["ok"]["v"]["traceparent"];
        // Either the worker saw the text as sent, or the pool refused it
        // with a typed error; never a silent change.
        if reply.get("ok").is_some() {
            assert_eq!(tp, *v, "call {i}: {reply}");
        } else {
            assert!(reply["err"]["e"]["kind"].is_string(), "call {i}: {reply}");
        }
    }
    assert!(
        answered["99"].get("ok").is_some() || answered["99"].get("err").is_some(),
        "{}",
        answered["99"]
    );
    let r = guarded("an ordinary call", client.execute("echo", json!({"x": 2}))).await;
    assert_eq!(r.unwrap()["echoed"]["x"], 2);
    stop(node, pool).await;
}

/// Heartbeats forged under a live host's id that are not heartbeats in
/// any usable sense (negative, fractional or overflowing numbers, a
/// gigantic payload, a `broken` error of another kind, a wrong-typed
/// instance) are ignored or harmless: the host keeps its figures as it
/// announces them, and its calls run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_heartbeats_with_impossible_numbers_under_a_live_id_change_nothing() {
    let nats = NatsServer::start().await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 1).await;
    let client = client_of_one(&nats, 3).await;
    let raw = nats.connect().await;
    let pad = "p".repeat(900 << 10);
    let forged = [
        json!({"host": "a", "pid": 1, "capacity": -1, "free": -1}),
        json!({"host": "a", "pid": 1, "capacity": 1.5, "free": 0.5}),
        json!({"host": "a", "pid": 1, "capacity": 1e300, "free": 1e300}),
        json!({"host": "a", "pid": -7, "capacity": 4, "free": 4, "seq": -1}),
        json!({"host": "a", "pid": 1, "capacity": 4, "free": 4, "instance": 5}),
        json!({"host": "a", "pid": 1, "capacity": 4, "free": 4, "conn": "x"}),
        json!({"host": "a", "pid": 1, "capacity": 4, "free": 4, "pad": pad,
               "instance": "forged-big", "bye": true, "last": true}),
    ];
    let mut bodies: Vec<Vec<u8>> = forged.iter().map(|f| f.to_string().into_bytes()).collect();
    // Overflowing integers and NaN spelled out: not JSON numbers a host sends.
    bodies.push(br#"{"host":"a","pid":1,"capacity":184467440737095516160,"free":1}"#.to_vec());
    bodies.push(br#"{"host":"a","pid":1,"capacity":NaN,"free":NaN}"#.to_vec());
    bodies.push(br#"{"host":"a","pid":1,"capacity":4,"free":4,"seq":1e400}"#.to_vec());
    for b in &bodies {
        raw.publish("snakepit.test.hb", b.clone().into())
            .await
            .unwrap();
    }
    let marker = json!({"host": "marker", "pid": 1, "capacity": 0, "free": 0});
    publish_heard(&raw, &client, marker.to_string().as_bytes(), "marker").await;
    // The host's own heartbeats go on; its figures are its own again
    // within a few of them, and it serves.
    eventually(30, "the host's own figures", || async {
        client
            .hosts()
            .iter()
            .any(|h| h.id == "a" && h.capacity >= 1 && h.capacity < 1000)
    })
    .await;
    for i in 0..5 {
        let opts = CallOptions::new().timeout(Duration::from_secs(20));
        let r = guarded("a call", client.execute_with("echo", json!({"i": i}), opts)).await;
        assert_eq!(r.unwrap()["echoed"]["i"], i);
    }
    // The forged run said its last goodbye and falls silent: not a death
    // that fails the real run's calls. A call that spans its silence ends
    // with its outcome.
    let opts = CallOptions::new().timeout(Duration::from_secs(20));
    let started = Instant::now();
    let r = guarded(
        "a call across the forged run's silence",
        client.execute_with("sleep", json!({"ms": 4000}), opts),
    )
    .await;
    assert!(r.is_ok(), "{r:?} after {:?}", started.elapsed());
    stop(node, pool).await;
}

/// A caller's trace context with a line break (often text from a request
/// the caller does not control), in `CallOptions::traceparent` or from
/// `ClientConfig::trace_context`, is a validation error of a call never
/// sent, not a panic in the caller's task; other calls go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_context_with_a_line_break_is_a_validation_error_never_a_panic() {
    let nats = NatsServer::start().await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 1).await;
    let client = client_of_one(&nats, 3).await;
    for bad in ["00-a-b-01\r\nX-Injected: 1", "\n", "a\rb"] {
        let opts = CallOptions::new().traceparent(bad);
        let caller = client.clone();
        let r = tokio::spawn(async move { caller.execute_with("echo", json!({}), opts).await })
            .await
            .expect("the caller's task does not panic");
        match r {
            Err(e @ Error::Validation { .. }) => assert!(e.never_ran(), "{e:?}"),
            other => panic!("traceparent {bad:?}: {other:?}"),
        }
    }
    let mut c = config(Duration::from_secs(3));
    c.trace_context = Some(std::sync::Arc::new(|| Some("x\r\ny".to_owned())));
    let configured = Client::connect_with(&nats.connect().await, "test", c)
        .await
        .unwrap();
    wait_hosts(&configured, 1).await;
    let r = tokio::spawn(async move { configured.execute("echo", json!({})).await })
        .await
        .expect("the caller's task does not panic");
    assert!(matches!(r, Err(Error::Validation { .. })), "{r:?}");
    let r = guarded("an ordinary call", client.execute("echo", json!({"x": 3}))).await;
    assert_eq!(r.unwrap()["echoed"]["x"], 3);
    stop(node, pool).await;
}

/// As `redteam_wire.rs`'s `a_forged_heartbeat_sequence_number_does_not_
/// make_declines_ignored`, with a forged count a little ahead of the
/// host's (5,000 heartbeats, within the step a client takes), under the
/// host's own id and run: the host's next heartbeats set it right, so two
/// clients racing for its one unit afterwards take a handful of messages
/// to its call subject (at most 20 each race), not a storm of declined
/// calls sent again at once for the next 5,000 heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_heartbeat_count_within_the_step_does_not_make_declines_ignored() {
    let nats = NatsServer::start().await;
    let raw = nats.connect().await;
    let mut beats = subscribed(&raw, &["snakepit.test.hb"]).await.pop().unwrap();
    let pool = pool(1).await;
    let node = snakepit_cluster::serve_with(
        &nats.connect().await,
        "test",
        pool.clone(),
        ServeOptions::new()
            .host_id("h")
            .prefetch_per_worker(0)
            .heartbeat(HEARTBEAT),
    )
    .await
    .unwrap();
    let a = client(&nats, ClientConfig::default()).await;
    let b = client(&nats, ClientConfig::default()).await;
    for c in [&a, &b] {
        eventually(30, "the clients hear the host with room", || async {
            c.hosts().iter().any(|h| h.id == "h" && h.free == 1)
        })
        .await;
    }
    let mut forged = heartbeat_of(&mut beats, "h", |_| true).await;
    forged["seq"] = json!(forged["seq"].as_u64().unwrap() + 5_000);
    for c in [&a, &b] {
        publish_heard(&raw, c, forged.to_string().as_bytes(), "marker").await;
    }
    drop(beats);
    after_forged(&raw, "h").await;
    let spy = nats.connect().await;
    let mut calls = subscribed(&spy, &["snakepit.test.host.h.call"])
        .await
        .remove(0);
    let mut sent = Vec::new();
    for _ in 0..3 {
        for c in [&a, &b] {
            eventually(30, "the clients hear the host with room", || async {
                c.hosts().iter().any(|h| h.id == "h" && h.free == 1)
            })
            .await;
        }
        let opts = || CallOptions::new().timeout(Duration::from_secs(30));
        let (ra, rb) = tokio::join!(
            a.execute_with("sleep", json!({"ms": 1_000}), opts()),
            b.execute_with("sleep", json!({"ms": 1_000}), opts()),
        );
        ra.unwrap();
        rb.unwrap();
        sent.push(count(&mut calls, Duration::from_millis(500)).await);
    }
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
    assert!(
        sent.iter().all(|n| (2..=20).contains(n)),
        "two calls took {sent:?} messages to the host's call subject"
    );
}

/// Another client of the same NATS plants sessions in the bucket: one
/// stored under `alice`'s key whose JSON names `mallory`, one whose clock
/// and TTL are `u64::MAX`, one with a TTL of 0. The store answers for the
/// key it was asked about, as the Redis and memory stores do (a session
/// read as `alice` is `alice`, and an update of it writes `alice` and
/// nothing of `mallory`); the extreme numbers give a session or a typed
/// error, never a panic; the listings and the sweep go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_planted_with_another_id_or_extreme_numbers_are_read_as_their_key() {
    use snakepit_session::SessionStore;
    let nats = NatsServer::start().await;
    let store = kv_store(&nats).await;
    let raw = async_nats::jetstream::new(nats.connect().await)
        .get_key_value("snakepit_sessions")
        .await
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let planted = |id: &str, last: u64, ttl: u64| {
        json!({"id": id, "created_at_ms": last, "last_accessed_ms": last, "ttl_ms": ttl,
               "data": {"who": id}, "programs": {}, "metadata": {}})
        .to_string()
    };
    for (key, json) in [
        ("alice", planted("mallory", now, 3_600_000)),
        ("forever", planted("forever", u64::MAX, u64::MAX)),
        ("zero", planted("zero", now, 0)),
    ] {
        raw.put(session_key(key), json.into()).await.unwrap();
    }

    let alice = guarded("get alice", store.get_session("alice"))
        .await
        .unwrap();
    assert_eq!(alice.id, "alice", "{alice:?}");
    let updated = guarded(
        "update alice",
        store.update_session("alice", |s| {
            s.data.insert("k".into(), json!(1));
        }),
    )
    .await
    .unwrap();
    assert_eq!(updated.id, "alice");
    assert!(matches!(
        guarded("get mallory", store.get_session("mallory")).await,
        Err(snakepit_session::Error::NotFound(_))
    ));
    let stored: Value =
        serde_json::from_slice(&raw.get(session_key("alice")).await.unwrap().unwrap()).unwrap();
    assert_eq!(stored["id"], "alice", "the update wrote {stored}");

    // Extreme numbers: whatever each gives, it gives it without a panic.
    let forever = guarded("get forever", store.get_session("forever")).await;
    eprintln!("forever: {forever:?}");
    let touched = guarded(
        "update forever",
        store.update_session("forever", |s| {
            s.data.insert("k".into(), json!(2));
        }),
    )
    .await;
    eprintln!("forever, updated: {touched:?}");
    assert!(matches!(
        guarded("get zero", store.get_session("zero")).await,
        Err(snakepit_session::Error::Expired(_) | snakepit_session::Error::NotFound(_))
    ));
    let listed = guarded("list", store.list_sessions()).await.unwrap();
    assert!(listed.contains(&"alice".to_owned()), "{listed:?}");
    assert!(!listed.contains(&"mallory".to_owned()), "{listed:?}");
    assert!(!listed.contains(&"zero".to_owned()), "{listed:?}");
    guarded("stats", store.stats()).await.unwrap();
    let removed = guarded("cleanup", store.cleanup_expired()).await.unwrap();
    assert!(removed >= 1, "the zero-TTL session is removed");
    guarded("delete forever", store.delete_session("forever"))
        .await
        .unwrap();
}

/// A call and a stream outlive the `Client` they were made with (their
/// futures hold what they need) and end with their outcomes; a call whose
/// future is dropped after its client was dropped is still cancelled on
/// the host, which frees its worker long before the call's natural end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_outlive_their_dropped_client_and_are_still_cancelled_when_dropped() {
    let nats = NatsServer::start().await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 2).await;
    let client = client_of_one(&nats, 3).await;
    let c = client.clone();
    let call = tokio::spawn(async move { c.execute("sleep", json!({"ms": 1_500})).await });
    let mut stream = client
        .execute_stream("stream", json!({"n": 300}), CallOptions::new())
        .await
        .unwrap();
    drop(client);
    let mut chunks = 0;
    let end = guarded("the stream of a dropped client", async {
        loop {
            match stream.next().await {
                Some(Ok(StreamItem::Chunk(_))) => chunks += 1,
                Some(Ok(other)) => return Ok(other),
                Some(Err(e)) => return Err(e),
                None => panic!("the stream ended without an outcome"),
            }
        }
    })
    .await;
    assert_eq!(chunks, 300);
    assert_eq!(end.unwrap(), StreamItem::Done(json!({"done": 300})));
    let r = guarded("the call of a dropped client", call).await.unwrap();
    assert!(r.is_ok(), "{r:?}");

    let client = client_of_one(&nats, 3).await;
    let c = client.clone();
    let long = tokio::spawn(async move { c.execute("sleep", json!({"ms": 60_000})).await });
    eventually(30, "the long call runs on the host", || async {
        pool.stats().busy == 1
    })
    .await;
    drop(client);
    long.abort();
    let _ = long.await;
    eventually(30, "the host frees the cancelled call's worker", || async {
        pool.stats().busy == 0
    })
    .await;
    stop(node, pool).await;
}
