//! Red-team tests of the cluster's wire (docs/cluster.md, "Subjects"): a
//! hostile or broken peer on the same NATS server. On one side a hostile
//! client (a raw NATS publisher) against a real host serving a pool of
//! Python workers: malformed calls, garbage batches, thousands of calls in
//! one batch, reply subjects the host cannot or should not publish to,
//! credits and cancels for calls that do not exist, status probes. On the
//! other a hostile host (a fake one on raw NATS that sends heartbeats and
//! answers calls) against a real `Client`: replies out of protocol, batched
//! replies with garbage, replies forged for calls not yet made, heartbeats
//! announcing endless room. Each runs against a real nats-server
//! (127.0.0.1, a port of its own, stopped by the test). (A caller that
//! reads other callers' inboxes could aim a call's reply at another's
//! waiting call: the documented permissions give each caller an inbox of
//! its own, and `auth.rs` shows a caller refused `_INBOX.>`.)

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use snakepit_cluster::{Client, ClientConfig, ServeOptions};
use snakepit_core::{CallOptions, Error, StreamItem};

/// Not a test of its own: the body of the host processes.
#[test]
fn host_process() {
    host_main();
}

const CALL: &str = "snakepit.test.host.a.call";
const CANCEL: &str = "snakepit.test.host.a.cancel";

/// A host `a` of the cluster `test` on its own connection, serving a pool
/// of one test worker.
async fn host_a(nats: &NatsServer) -> (snakepit_core::Pool, snakepit_cluster::Node) {
    host_a_on(&nats.connect().await).await
}

async fn host_a_on(conn: &async_nats::Client) -> (snakepit_core::Pool, snakepit_cluster::Node) {
    let pool = pool(1).await;
    let node =
        snakepit_cluster::serve_with(conn, "test", pool.clone(), ServeOptions::new().host_id("a"))
            .await
            .unwrap();
    (pool, node)
}

/// A host message's kind: its one key (`ok`, `err`, `ack`, `chunk`,
/// `declined`).
fn kind(v: &Value) -> String {
    v.as_object()
        .and_then(|o| o.keys().next().cloned())
        .unwrap_or_default()
}

/// The replies a NATS message carries: one, or several in a batch of
/// replies (`<client>.m`: `[["<call>", <reply>], ...]`), each with its
/// call token.
fn unpack(m: &async_nats::Message) -> Vec<(String, Value)> {
    let token = m.subject.rsplit('.').next().unwrap_or("").to_owned();
    let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
    if token == "m" {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|pair| (pair[0].as_str().unwrap_or("").to_owned(), pair[1].clone()))
            .collect()
    } else {
        vec![(token, v)]
    }
}

static NEXT: AtomicU64 = AtomicU64::new(1);

/// Sends `payload` to `subject` with a reply subject of its own
/// (`evil.ask<n>.1`) and returns what comes back there, up to an outcome
/// (`ok`, `err` or `declined`) or 10 s of nothing.
async fn ask(raw: &async_nats::Client, subject: &str, payload: Vec<u8>) -> (String, Vec<Value>) {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let prefix = format!("evil.ask{n}");
    let reply = format!("{prefix}.1");
    let mut sub = raw.subscribe(format!("{prefix}.>")).await.unwrap();
    raw.publish_with_reply(subject.to_owned(), reply.clone(), payload.into())
        .await
        .unwrap();
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while let Ok(Some(m)) = tokio::time::timeout_at(until.into(), sub.next()).await {
        for (_, v) in unpack(&m) {
            let k = kind(&v);
            got.push(v);
            if matches!(k.as_str(), "ok" | "err" | "declined") {
                return (reply, got);
            }
        }
    }
    (reply, got)
}

/// `n` echo calls through a legitimate client, each answered with its own
/// arguments.
async fn legit_calls_work(client: &Client, n: u64) {
    for i in 0..n {
        let r = tokio::time::timeout(
            Duration::from_secs(30),
            client.execute_with(
                "echo",
                json!({"i": i}),
                CallOptions::new().timeout(Duration::from_secs(10)),
            ),
        )
        .await
        .expect("a legitimate call ends")
        .unwrap_or_else(|e| panic!("legitimate call {i}: {e:?}"));
        assert_eq!(r["echoed"]["i"], i, "{r}");
    }
}

// ---------------------------------------------------------------------------
// A hostile client against a real host.
// ---------------------------------------------------------------------------

/// Attack: single call messages that are not calls (not JSON, empty,
/// invalid UTF-8, fields of the wrong type, missing fields, a negative or
/// non-integer `timeout_ms`, an unknown affinity, junk the size of the
/// server's `max_payload`), and well-formed ones with absurd values
/// (`timeout_ms` u64::MAX or 0, `window` u32::MAX, unknown fields), and one
/// with no reply subject at all.
///
/// Expected: each malformed call is answered with `Error::Validation`
/// ("not a snakepit cluster call", host.rs `take_one`), each well-formed one
/// is run (or ended by its own deadline), and the host goes on serving a
/// legitimate client's calls correctly: docs/cluster.md "Errors from the
/// host's pool (... validation ...) reach the caller as the same variant".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_calls_get_a_validation_error_and_the_host_serves_on() {
    let nats = NatsServer::start().await;
    let (pool, node) = host_a(&nats).await;
    let raw = nats.connect().await;
    let max = raw.max_payload();
    let mut at_max = b"{\"command\":\"".to_vec();
    at_max.resize(max - 64, b'x');
    let refused: Vec<(&str, Vec<u8>)> = vec![
        ("not JSON", b"not json at all".to_vec()),
        ("empty", Vec::new()),
        (
            "invalid UTF-8",
            b"{\"command\":\"\xff\xfe\",\"args\":{}}".to_vec(),
        ),
        ("command a number", br#"{"command":5,"args":{}}"#.to_vec()),
        ("no command", br#"{"args":{}}"#.to_vec()),
        ("no args", br#"{"command":"echo"}"#.to_vec()),
        (
            "negative timeout",
            br#"{"command":"echo","args":{},"timeout_ms":-1}"#.to_vec(),
        ),
        (
            "timeout past u64",
            br#"{"command":"echo","args":{},"timeout_ms":1e30}"#.to_vec(),
        ),
        (
            "timeout a string",
            br#"{"command":"echo","args":{},"timeout_ms":"soon"}"#.to_vec(),
        ),
        (
            "unknown affinity",
            br#"{"command":"echo","args":{},"affinity":"sideways"}"#.to_vec(),
        ),
        (
            "session a number",
            br#"{"command":"echo","args":{},"session":12}"#.to_vec(),
        ),
        (
            "negative window",
            br#"{"command":"stream","args":{},"stream":true,"window":-5}"#.to_vec(),
        ),
        ("junk the size of max_payload", at_max),
    ];
    for (what, payload) in refused {
        let (_, got) = ask(&raw, CALL, payload).await;
        let last = got
            .last()
            .unwrap_or_else(|| panic!("{what}: no answer from the host"));
        assert_eq!(kind(last), "err", "{what}: {got:?}");
        assert_eq!(last["err"]["e"]["kind"], "validation", "{what}: {last}");
    }

    // Well-formed, absurd values: run.
    let absurd = json!({"command": "echo", "args": {"n": 1}, "timeout_ms": u64::MAX});
    let (_, got) = ask(&raw, CALL, absurd.to_string().into_bytes()).await;
    let last = got.last().expect("an answer");
    assert_eq!(last["ok"]["v"]["echoed"]["n"], 1, "{got:?}");
    let unknown = json!({"command": "echo", "args": {"n": 2}, "colour": [1, 2], "typed": false});
    let (_, got) = ask(&raw, CALL, unknown.to_string().into_bytes()).await;
    assert_eq!(got.last().unwrap()["ok"]["v"]["echoed"]["n"], 2, "{got:?}");
    let zero = json!({"command": "echo", "args": {}, "timeout_ms": 0});
    let (_, got) = ask(&raw, CALL, zero.to_string().into_bytes()).await;
    let last = got.last().expect("an answer");
    assert!(
        kind(last) == "ok" || last["err"]["e"]["kind"] == "call_timeout",
        "{got:?}"
    );
    let window = json!({"command": "stream", "args": {"n": 5}, "stream": true,
                        "window": u32::MAX});
    let (_, got) = ask(&raw, CALL, window.to_string().into_bytes()).await;
    let chunks: Vec<&Value> = got.iter().filter(|v| kind(v) == "chunk").collect();
    assert_eq!(chunks.len(), 5, "{got:?}");
    assert_eq!(got.last().unwrap()["ok"]["v"]["done"], 5, "{got:?}");
    // No reply subject: nobody to answer.
    raw.publish(
        CALL,
        json!({"command": "echo", "args": {}}).to_string().into(),
    )
    .await
    .unwrap();
    raw.flush().await.unwrap();

    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    legit_calls_work(&client, 20).await;
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// Attack: batches of calls (a JSON array, host.rs `take`) that are
/// garbage (`[1,"x",null]`, 100,000 nested `[`, items without a command,
/// an empty array), items whose reply subject is empty or holds spaces or
/// CR LF (subjects nobody can publish to), one call repeated three times in
/// a batch under one reply subject, and a batch of 5,000 calls.
///
/// Expected: the host survives; the repeated call is answered once
/// (docs/cluster.md: "A host ignores a call that comes to it again with the
/// same reply subject"); each of the 5,000 calls gets exactly one outcome,
/// run (its own result) or declined (never ran), at most the host's
/// capacity of them run at once (1 worker + a prefetch of at most 32:
/// docs/cluster.md "A call that reaches a host that filled up meanwhile ...
/// is declined, never run"); and a legitimate client's calls go on working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_batches_and_a_batch_of_thousands_of_calls_leave_the_host_serving() {
    let nats = NatsServer::start().await;
    let (pool, node) = host_a(&nats).await;
    let raw = nats.connect().await;
    let mut many = raw.subscribe("evil.many.>").await.unwrap();
    let mut dup = raw.subscribe("evil.dup.>").await.unwrap();
    let junk: Vec<Vec<u8>> = vec![
        b"[1,\"x\",null]".to_vec(),
        "[".repeat(100_000).into_bytes(),
        b"[{\"reply\":\"evil.junk.1\"}]".to_vec(),
        b"[]".to_vec(),
        b"[".to_vec(),
        json!([
            {"command": "echo", "args": {}, "reply": ""},
            {"command": "echo", "args": {}, "reply": "a b"},
            {"command": "echo", "args": {}, "reply": "x\r\nPUB evil.junk.2 1\r\nz"},
            {"command": "echo", "args": {}, "reply": "evil.junk.>"},
        ])
        .to_string()
        .into_bytes(),
    ];
    for j in junk {
        raw.publish_with_reply(CALL, "evil.junk.b1", j.into())
            .await
            .unwrap();
    }
    let same = json!({"command": "sleep", "args": {"ms": 200}, "reply": "evil.dup.1"});
    raw.publish_with_reply(
        CALL,
        "evil.dup.b1",
        json!([same, same, same]).to_string().into(),
    )
    .await
    .unwrap();

    const N: usize = 5_000;
    // The first call holds the one worker for 3 s (under the pool's queue
    // timeout of 5 s), so the calls taken behind it wait in the pool and
    // none ends while the host goes through the batch: what ran is what
    // the host took at once. (A host frees a call's unit as the call ends,
    // so with quick calls more than its capacity may run in all.)
    let calls: Vec<Value> = (0..N)
        .map(|i| match i {
            0 => json!({"command": "sleep", "args": {"ms": 3000}, "reply": "evil.many.0"}),
            _ => json!({"command": "echo", "args": {"i": i}, "reply": format!("evil.many.{i}")}),
        })
        .collect();
    raw.publish_with_reply(
        CALL,
        "evil.many.b1",
        serde_json::to_vec(&calls).unwrap().into(),
    )
    .await
    .unwrap();
    raw.flush().await.unwrap();
    let mut outcome: HashMap<String, String> = HashMap::new();
    // Whether a decline came after the first call's outcome: the host was
    // still going through the batch when the worker came free (a loaded
    // machine), and calls it took from then on ran after the others.
    let (mut first_done, mut declined_after) = (false, false);
    let until = Instant::now() + Duration::from_secs(30);
    while outcome.len() < N {
        let Ok(Some(m)) = tokio::time::timeout_at(until.into(), many.next()).await else {
            panic!("only {} of {N} calls were answered", outcome.len());
        };
        for (token, v) in unpack(&m) {
            let k = kind(&v);
            if k == "ack" {
                continue;
            }
            if k == "ok" && token != "0" {
                assert_eq!(v["ok"]["v"]["echoed"]["i"].to_string(), token, "{v}");
            }
            assert!(
                k == "ok" || k == "declined",
                "call {token} of the batch: {v}"
            );
            first_done |= token == "0";
            declined_after |= first_done && k == "declined";
            let before = outcome.insert(token.clone(), k);
            assert!(before.is_none(), "call {token} has two outcomes");
        }
    }
    let ran = outcome.values().filter(|k| *k == "ok").count();
    eprintln!("a batch of {N} calls: {ran} ran, {} declined", N - ran);
    assert!(ran >= 1, "none of {N} ran");
    if declined_after {
        eprintln!(
            "the worker came free before the host had gone through the batch: \
             the bound on calls run at once does not apply to this run"
        );
    } else {
        // 33: one worker and a prefetch of 32; one more for the unit the
        // repeated call above frees when it ends (200 ms), which may come
        // while the host goes through this batch.
        assert!(ran <= 34, "{ran} of {N} ran at once on a 1-worker host");
    }

    let mut dups = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), dup.next()).await {
        dups.extend(unpack(&m).into_iter().map(|(_, v)| kind(&v)));
    }
    dups.retain(|k| k != "ack");
    assert_eq!(dups, vec!["ok".to_owned()], "a call repeated in a batch");

    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    legit_calls_work(&client, 20).await;
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// Attack: a batch of calls carries each call's reply subject inside its
/// JSON, so it may be far longer than any NATS control line (the server's
/// `max_control_line`, 4,096 bytes by default); the attacker sends one call
/// whose reply subject is 5,000 bytes, a few times, while a legitimate
/// client's call runs.
///
/// Expected: the host's NATS connection is never closed by the server
/// (nats-server closes a connection that sends a control line past its
/// limit, which would drop the host's subscriptions and every outcome
/// on its way for every client: docs/cluster.md "No call is sent twice",
/// "a graceful ... fails no call"), and the legitimate call ends with its
/// result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_subject_longer_than_a_control_line_does_not_cost_the_host_its_connection() {
    let http = free_port();
    let nats = NatsServer::start_with_config(&format!("http_port: {http}\n")).await;
    let conn = async_nats::ConnectOptions::new()
        .name("victim-host")
        .connect(&nats.url)
        .await
        .unwrap();
    let (pool, node) = host_a_on(&conn).await;
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    let legit = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .execute_with(
                    "sleep",
                    json!({"ms": 1_500, "token": "legit"}),
                    CallOptions::new().timeout(Duration::from_secs(10)),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let raw = nats.connect().await;
    let long = format!("evil.{}.1", "x".repeat(5_000));
    let batch = json!([{"command": "echo", "args": {}, "reply": long}]);
    for _ in 0..3 {
        raw.publish_with_reply(CALL, "evil.long.b1", batch.to_string().into())
            .await
            .unwrap();
        raw.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = tokio::time::timeout(Duration::from_secs(30), legit)
        .await
        .expect("the legitimate call ends")
        .unwrap();
    let closed = monitor(http, "/connz?state=closed").await;
    let reasons: Vec<Value> = closed["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"] == "victim-host")
        .map(|c| c["reason"].clone())
        .collect();
    eprintln!("legit call: {r:?}; the host's closed connections: {reasons:?}");
    assert!(
        reasons.is_empty(),
        "the server closed the host's connection: {reasons:?}"
    );
    assert_eq!(r.expect("the legitimate call's result")["token"], "legit");
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// Attack: 20,000 messages on the host's cancel subject: credits
/// (`+<n> <reply>`) for calls that never existed and for a call that
/// finished, credits of u32::MAX and past it, negative, empty and cut-off
/// credits, cancels for unknown reply subjects, bytes that are not UTF-8;
/// then endless credits (`+4294967295`, 200 times) for the attacker's own
/// stream of window 1.
///
/// Expected: none of it panics or stops the host; the attacker's own
/// stream runs to its end; a legitimate client's stream of 600 chunks
/// (past the 256-chunk window, so its own credits must still count)
/// arrives whole and in order, and its one-shot calls work
/// (docs/cluster.md "Streams": "no chunk is dropped on the way").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_and_cancels_for_calls_that_do_not_exist_are_harmless() {
    let nats = NatsServer::start().await;
    let (pool, node) = host_a(&nats).await;
    let raw = nats.connect().await;
    let (finished, got) = ask(
        &raw,
        CALL,
        json!({"command": "echo", "args": {}})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(kind(got.last().unwrap()), "ok");
    for i in 0..20_000u32 {
        let text = match i % 8 {
            0 => format!("+256 evil.unknown.{i}"),
            1 => format!("+4294967295 {finished}"),
            2 => "+99999999999 evil.x".to_owned(),
            3 => "+-5 evil.y".to_owned(),
            4 => "+".to_owned(),
            5 => String::new(),
            6 => format!("evil.unknown.{i}"),
            _ => "+1 ".to_owned(),
        };
        raw.publish(CANCEL, text.into()).await.unwrap();
    }
    raw.publish(CANCEL, vec![0xff, 0xfe, 0x00].into())
        .await
        .unwrap();
    raw.flush().await.unwrap();

    // The attacker's own stream, window 1, and endless credits for it.
    let mut own = raw.subscribe("evil.own.>").await.unwrap();
    let stream = json!({"command": "stream", "args": {"n": 1_000}, "stream": true, "window": 1});
    raw.publish_with_reply(CALL, "evil.own.1", stream.to_string().into())
        .await
        .unwrap();
    for _ in 0..200 {
        raw.publish(CANCEL, "+4294967295 evil.own.1".into())
            .await
            .unwrap();
    }
    raw.flush().await.unwrap();
    let (mut chunks, mut done) = (0, Value::Null);
    while done.is_null() {
        let m = tokio::time::timeout(Duration::from_secs(20), own.next())
            .await
            .expect("the attacker's stream goes on")
            .unwrap();
        for (_, v) in unpack(&m) {
            match kind(&v).as_str() {
                "chunk" => chunks += 1,
                "ok" => done = v["ok"]["v"].clone(),
                "ack" => {}
                other => panic!("{other}: {v}"),
            }
        }
    }
    assert_eq!((chunks, done["done"].clone()), (1_000, json!(1_000)));

    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    let mut s = client
        .execute_stream(
            "stream",
            json!({"n": 600}),
            CallOptions::new().timeout(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let mut seen = 0u64;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), s.next())
            .await
            .expect("the legitimate stream goes on")
        {
            Some(Ok(StreamItem::Chunk(c))) => {
                assert_eq!(c["i"], seen, "chunk {seen}: {c}");
                seen += 1;
            }
            Some(Ok(StreamItem::Done(d))) => {
                assert_eq!(d["done"], 600);
                break;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("the legitimate stream failed after {seen} chunks: {e:?}"),
            None => panic!("the legitimate stream ended without its result"),
        }
    }
    assert_eq!(seen, 600);
    legit_calls_work(&client, 10).await;
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// The resident memory of process `pid`, in bytes.
fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Messages in each flood of [`a_flood_of_cancels_for_unknown_calls_does_not_grow_the_host`].
/// 500 (once 1,000): a host that kept every cancel, as host.rs once did,
/// holds at least 500 x 256 KiB = 125 MiB for them, about twice the 64 MiB
/// the test allows, so the defect still fails it; half the bytes through NATS
/// and the host halve the test's time.
const FLOOD: usize = 500;

/// Sends [`FLOOD`] messages of 256 KiB to the host's cancel subject, each
/// `<prefix><n>.` padded with `x`, paced so that the host keeps up.
async fn flood_cancels(raw: &async_nats::Client, prefix: &str) {
    for i in 0..FLOOD {
        let mut text = format!("{prefix}{i}.");
        text.extend(std::iter::repeat_n('x', (256 << 10) - text.len()));
        raw.publish(CANCEL, text.into()).await.unwrap();
        if i % 20 == 19 {
            raw.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    raw.flush().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
}

/// Attack: a flood of cancels for reply subjects no call has ([`FLOOD`]
/// of them, 256 KiB each: a cancel is a bare reply subject in the payload,
/// which may be as long as `max_payload`), against a host in a process of
/// its own.
///
/// Expected: the host keeps no more for them than for the same traffic as
/// credits for unknown calls (which it parses and drops): its resident
/// memory grows by less than 64 MiB over that baseline. (The host keeps a
/// cancel that may have overtaken its call, host.rs `cancel`, up to 10,000
/// of them whatever their size, and forever: 10,000 cancels of 1 MiB would
/// hold 10 GB.) It still serves a legitimate client's calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_cancels_for_unknown_calls_does_not_grow_the_host() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start("host_process", &nats.url, "a", 1).await;
    let raw = nats.connect().await;
    // Baseline: the same traffic, as credits the host parses and drops.
    flood_cancels(&raw, "+1 evil.credit.").await;
    let before = rss_of(host.pid);
    flood_cancels(&raw, "evil.cancel.").await;
    let after = rss_of(host.pid);
    let grown = after.saturating_sub(before);
    eprintln!(
        "host RSS after {FLOOD} credits of 256 KiB: {} MiB; after {FLOOD} cancels as well: {} MiB",
        before >> 20,
        after >> 20
    );
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    legit_calls_work(&client, 5).await;
    assert!(
        grown < 64 << 20,
        "{FLOOD} cancels for unknown calls grew the host by {} MiB",
        grown >> 20
    );
}

/// Attack: probes of the status endpoint and the NATS service API
/// (`snakepit.test.host.a.status`, `$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`
/// for the cluster's service) with empty, garbage, JSON and 100 KB
/// payloads, then 2,000 status requests at once.
///
/// Expected: every probe is answered with JSON (the status with this
/// host's id), the host survives, `Client::status` still lists it
/// (docs/cluster.md "Discovery and status") and its calls work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_probes_are_answered_and_leave_the_host_serving() {
    let nats = NatsServer::start().await;
    let (pool, node) = host_a(&nats).await;
    let raw = nats.connect().await;
    let payloads: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"garbage \xff".to_vec(),
        br#"{"host":"b","window":-1}"#.to_vec(),
        vec![b'z'; 100_000],
    ];
    let subjects = [
        "snakepit.test.host.a.status",
        "$SRV.PING",
        "$SRV.PING.snakepit-test",
        "$SRV.INFO.snakepit-test",
        "$SRV.STATS.snakepit-test",
    ];
    for p in &payloads {
        for s in subjects {
            let r = tokio::time::timeout(Duration::from_secs(10), raw.request(s, p.clone().into()))
                .await
                .unwrap_or_else(|_| panic!("{s} unanswered"))
                .unwrap_or_else(|e| panic!("{s}: {e}"));
            let v: Value = serde_json::from_slice(&r.payload)
                .unwrap_or_else(|e| panic!("{s} answered with no JSON: {e}"));
            if s.ends_with(".status") {
                assert_eq!(v["host"], "a", "{v}");
            }
        }
    }
    let mut sink = raw.subscribe("evil.status.>").await.unwrap();
    for i in 0..2_000 {
        raw.publish_with_reply(subjects[0], format!("evil.status.{i}"), "junk".into())
            .await
            .unwrap();
    }
    raw.flush().await.unwrap();
    let mut answered = 0;
    while answered < 2_000 {
        match tokio::time::timeout(Duration::from_secs(10), sink.next()).await {
            Ok(Some(_)) => answered += 1,
            _ => break,
        }
    }
    assert_eq!(answered, 2_000, "status requests answered");
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    let status = client.status(Duration::from_millis(500)).await.unwrap();
    assert_eq!(status.len(), 1, "{status:?}");
    legit_calls_work(&client, 5).await;
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// Attack: under the documented permissions (docs/cluster.md "Security",
/// the host may publish to `_INBOX.>`, `$JS.API.>` and
/// `$KV.snakepit_sessions.>`; a caller only to the call, cancel and status
/// subjects), a caller sends the host a junk call whose NATS reply subject
/// is a session's key in the sessions bucket. The caller itself is refused
/// when it publishes there.
///
/// Expected: docs/cluster.md "Security" restricts "a caller to calling";
/// what the caller may not publish itself it cannot have the host publish
/// for it: the session stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cannot_write_the_session_bucket_through_the_hosts_reply() {
    use snakepit_session::SessionStore;
    let config = r#"
authorization {
  users = [
    {user: host, password: hostpw, permissions: {
      publish: ["snakepit.test.hb", "_INBOX.>", "$JS.API.>", "$KV.snakepit_sessions.>"],
      subscribe: ["snakepit.test.host.a.>", "$SRV.>", "_INBOX.>"]}}
    {user: caller, password: callerpw, permissions: {
      publish: ["snakepit.test.host.*.call", "snakepit.test.host.*.cancel",
                "snakepit.test.host.*.status", "$SRV.PING.snakepit-test"],
      subscribe: ["_INBOX.>", "snakepit.test.hb"]}}
  ]
}
"#;
    let nats = NatsServer::start_with_config(config).await;
    let host_conn =
        async_nats::ConnectOptions::with_user_and_password("host".into(), "hostpw".into())
            .connect(&nats.url)
            .await
            .unwrap();
    let store = snakepit_cluster::NatsKvStore::builder(&host_conn)
        .sweep_interval(Duration::from_secs(3600))
        .connect()
        .await
        .unwrap();
    store.create_session("victim", None).await.unwrap();
    let (pool, node) = host_a_on(&host_conn).await;
    let caller =
        async_nats::ConnectOptions::with_user_and_password("caller".into(), "callerpw".into())
            .connect(&nats.url)
            .await
            .unwrap();
    // kv.rs keeps session `id` at `s.<hex of id>`.
    let hex: String = "victim".bytes().map(|b| format!("{b:02x}")).collect();
    let key = format!("$KV.snakepit_sessions.s.{hex}");
    // Itself: refused by the server.
    let _ = caller.publish(key.clone(), "junk".into()).await;
    let _ = caller.flush().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    store
        .get_session("victim")
        .await
        .expect("the caller's own write is refused");
    // Through the host: a junk call whose reply subject is the key.
    caller
        .publish_with_reply(CALL, key.clone(), "junk".into())
        .await
        .unwrap();
    caller.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = store.get_session("victim").await;
    eprintln!("the session after a call replied to {key}: {after:?}");
    assert!(after.is_ok(), "{after:?}");
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// A hostile host against a real client.
// ---------------------------------------------------------------------------

/// A fake host `bad` on raw NATS: heartbeats every 100 ms (capacity 4, all
/// free), and each call answered as its `mode` argument says, with its
/// `token` argument as the honest result.
async fn fake_host(nats: &NatsServer) -> Vec<tokio::task::JoinHandle<()>> {
    let raw = nats.connect().await;
    let mut calls = raw.subscribe("snakepit.test.host.bad.call").await.unwrap();
    raw.flush().await.unwrap();
    let beats = {
        let raw = raw.clone();
        tokio::spawn(async move {
            for seq in 1.. {
                let hb = json!({"seq": seq, "host": "bad", "pid": 1, "capacity": 4,
                                "running": 4, "free": 4});
                let _ = raw.publish("snakepit.test.hb", hb.to_string().into()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let answers = tokio::spawn(async move {
        while let Some(m) = calls.next().await {
            let v: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
            let list = match v {
                Value::Array(a) => a,
                one => vec![one],
            };
            for call in list {
                let raw = raw.clone();
                tokio::spawn(async move { answer(&raw, call).await });
            }
        }
    });
    vec![beats, answers]
}

async fn answer(raw: &async_nats::Client, call: Value) {
    let reply = call["reply"].as_str().unwrap_or_default().to_owned();
    let (inbox, id) = reply.rsplit_once('.').unwrap();
    let id: u64 = id.parse().unwrap();
    let token = call["args"]["token"].clone();
    let ok = json!({"ok": {"v": {"token": token}}}).to_string();
    let forged = json!({"ok": {"v": {"token": "forged"}}});
    let send = |to: String, body: String| async move {
        let _ = raw.publish(to, body.into()).await;
    };
    let batched = format!("{inbox}.m");
    let ack = json!({"ack": {"host": "bad", "pid": 1}}).to_string();
    match call["args"]["mode"].as_str().unwrap_or("") {
        "not_json" => send(reply, "}{ not json".into()).await,
        "ok_without_v" => send(reply, r#"{"ok":5}"#.into()).await,
        "unknown_variant" => send(reply, r#"{"hello":{}}"#.into()).await,
        "ack_then_garbage" => {
            send(reply.clone(), ack).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            send(reply, "\u{0}garbage".into()).await;
        }
        "ack_then_declined" => {
            send(reply.clone(), ack).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            send(reply, r#"{"declined":{"host":"bad","seq":1}}"#.into()).await;
        }
        "unknown_error_kind" => {
            send(
                reply,
                r#"{"err":{"e":{"kind":"zzz","message":"boom"}}}"#.into(),
            )
            .await
        }
        "absurd_timeout" => {
            let e = json!({"err": {"e": {"kind": "call_timeout", "message": "t", "ms": u64::MAX}}});
            send(reply, e.to_string()).await
        }
        "ok_then_more" => {
            send(reply.clone(), ok).await;
            for extra in [
                forged.to_string(),
                r#"{"chunk":{"v":1}}"#.to_owned(),
                r#"{"err":{"e":{"kind":"remote","message":"late"}}}"#.to_owned(),
                ack,
                "junk".to_owned(),
            ] {
                send(reply.clone(), extra).await;
            }
        }
        "forge_future" => {
            // Outcomes for this client's next calls, before they are made.
            for k in 1..=50 {
                send(format!("{inbox}.{}", id + k), forged.to_string()).await;
            }
            let pairs: Vec<Value> = (51..=100)
                .map(|k| json!([(id + k).to_string(), forged]))
                .collect();
            send(batched, Value::Array(pairs).to_string()).await;
            send(reply, ok).await;
        }
        "batched_garbage" => {
            for junk in [
                "not json".to_owned(),
                r#"[["x",1]]"#.to_owned(),
                format!(r#"[["{id}"]]"#),
                json!([["99999999999999999999999", forged]]).to_string(),
                json!([[id + 1000, forged]]).to_string(),
                r#"{"ok":{"v":1}}"#.to_owned(),
                "[".repeat(10_000),
            ] {
                send(batched.clone(), junk).await;
            }
            // The honest outcome, batched.
            let pairs = json!([[id.to_string(), {"ok": {"v": {"token": token}}}]]);
            send(batched, pairs.to_string()).await;
        }
        "batched_junk_for_me" => send(batched, format!(r#"[["{id}",5]]"#)).await,
        "silent" => {}
        _ => send(reply, ok).await,
    }
}

/// Attack: a host that heartbeats like a healthy one answers calls out of
/// protocol: replies that are not JSON, an `ok` without its value, an
/// unknown reply, garbage or a decline after its acknowledgement, an error
/// of an unknown kind, a `call_timeout` error of u64::MAX ms, an outcome
/// followed by more messages (another outcome, a chunk, an error, an ack,
/// junk), outcomes forged for this client's next 100 calls (alone and in
/// a batch of replies) before they are made, batches of replies with
/// garbage, unknown or unparsable tokens, a batch whose item for the call
/// is not a reply, and silence.
///
/// Expected: every call ends within its deadline (3 s) plus the host
/// timeout (1 s) and some slack (a hang is 10 s); out-of-protocol answers
/// are `Error::HostLost` (docs/cluster.md: a host that sends more than
/// the protocol lets it ... fails the call with `Error::HostLost`), an
/// unknown error kind is `Error::Remote` of type `ClusterError` (wire.rs
/// `into_error`), a host's call timeout carries the caller's own timeout,
/// silence is `Error::HostLost`; each honest answer reaches its own call,
/// and no call receives a forged outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_answering_out_of_protocol_fails_its_calls_with_typed_errors() {
    let nats = NatsServer::start().await;
    let tasks = fake_host(&nats).await;
    let mut config = ClientConfig::default();
    config.host_timeout = Duration::from_secs(1);
    let client = client(&nats, config).await;
    wait_hosts(&client, 1).await;
    let mut token = 0u64;
    let mut call = |mode: &'static str| {
        token += 1;
        let client = client.clone();
        let t = token;
        async move {
            let r = tokio::time::timeout(
                Duration::from_secs(10),
                client.execute_with(
                    "any",
                    json!({"mode": mode, "token": t}),
                    CallOptions::new().timeout(Duration::from_secs(3)),
                ),
            )
            .await
            .unwrap_or_else(|_| panic!("{mode}: the call hangs"));
            eprintln!("{mode}: {r:?}");
            (t, r)
        }
    };
    let lost = |mode: &str, r: &Result<Value, Error>| {
        assert!(
            matches!(r, Err(Error::HostLost { host, .. }) if host == "bad"),
            "{mode}: {r:?}"
        );
    };
    for mode in [
        "not_json",
        "ok_without_v",
        "unknown_variant",
        "ack_then_garbage",
        "ack_then_declined",
        "batched_junk_for_me",
        "silent",
    ] {
        let (_, r) = call(mode).await;
        lost(mode, &r);
    }
    let (_, r) = call("unknown_error_kind").await;
    assert!(
        matches!(&r, Err(Error::Remote { error, .. }) if error.kind.as_deref() == Some("ClusterError")),
        "{r:?}"
    );
    let (_, r) = call("absurd_timeout").await;
    assert!(
        matches!(&r, Err(Error::CallTimeout { timeout, .. }) if *timeout == Duration::from_secs(3)),
        "{r:?}"
    );
    for mode in ["ok_then_more", "forge_future", "batched_garbage"] {
        let (t, r) = call(mode).await;
        assert_eq!(r.unwrap()["token"], t, "{mode}");
        // The calls after it get their own outcomes, not what was forged.
        for _ in 0..5 {
            let (t, r) = call("honest").await;
            assert_eq!(r.unwrap()["token"], t, "after {mode}");
        }
    }
    for t in tasks {
        t.abort();
    }
}

/// Attack: three fake hosts announce room near `usize::MAX` (capacity,
/// running and free: `x1` u64::MAX, `x2` and `x3` 2^63 + 1, legal values
/// of a heartbeat's fields); `x1`, which has the most, declines the call it
/// gets (as a host that filled up meanwhile does), the other two answer
/// honestly.
///
/// Expected: the declined call goes to `x2` or `x3` and ends with its
/// result (docs/cluster.md: a declined call "is declined, never run, and
/// routed again"), with no panic and no hang. The client runs on a
/// runtime of its own in a thread of its own, so that a hang fails this
/// test rather than stalling it.
#[test]
fn heartbeats_announcing_endless_room_do_not_break_the_client() {
    let nats = snakepit_tests::NatsServer::start();
    let url = nats.url.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let r = rt.block_on(async move {
            let raw = async_nats::connect(&url).await.unwrap();
            let mut calls = raw.subscribe("snakepit.test.host.*.call").await.unwrap();
            raw.flush().await.unwrap();
            let answers = {
                let raw = raw.clone();
                tokio::spawn(async move {
                    while let Some(m) = calls.next().await {
                        let v: Value = serde_json::from_slice(&m.payload).unwrap();
                        let list = match v {
                            Value::Array(a) => a,
                            one => vec![one],
                        };
                        for call in list {
                            let to = call["reply"].as_str().unwrap().to_owned();
                            let answer = match m.subject.as_str() {
                                "snakepit.test.host.x1.call" => {
                                    json!({"declined": {"host": "x1", "seq": 1}})
                                }
                                _ => json!({"ok": {"v": call["args"]}}),
                            };
                            let _ = raw.publish(to, answer.to_string().into()).await;
                        }
                    }
                })
            };
            let conn = async_nats::connect(&url).await.unwrap();
            // The fake hosts beat once: they must not be lost (after the
            // default 1.5 s) before a loaded machine has made the call.
            let mut config = ClientConfig::default();
            config.host_timeout = Duration::from_secs(60);
            let client = Client::connect_with(&conn, "test", config).await.unwrap();
            let half = (1u64 << 63) + 1;
            // Sent again until the client has all three: a heartbeat that
            // reaches the server before the client's subscription does is
            // lost. Then no more, so that `x1`, once it has declined, stays
            // full as far as the client knows.
            while client.hosts().len() < 3 {
                for (h, room) in [("x1", u64::MAX), ("x2", half), ("x3", half)] {
                    let hb = json!({"seq": 1, "host": h, "pid": 0, "capacity": room,
                                    "running": room, "free": room});
                    raw.publish("snakepit.test.hb", hb.to_string().into())
                        .await
                        .unwrap();
                }
                raw.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let call = {
                let client = client.clone();
                tokio::spawn(async move {
                    client
                        .execute_with(
                            "echo",
                            json!({"token": 7}),
                            CallOptions::new().timeout(Duration::from_secs(10)),
                        )
                        .await
                })
            };
            let r = match call.await {
                Ok(r) => format!("{r:?}"),
                Err(e) => format!("the caller's task failed: {e}"),
            };
            answers.abort();
            r
        });
        let _ = tx.send(r);
    });
    let r = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the client's runtime hangs (no outcome in 20 s)");
    eprintln!("the declined call: {r}");
    assert!(
        r.starts_with("Ok(") && r.contains("\"token\": Number(7)"),
        "{r}"
    );
    drop(nats);
}

/// Attack: heartbeats with absurd or ill-typed fields under a host id
/// (`odd`): negative numbers, strings, nulls, numbers past u64, missing
/// fields (ignored, they are no heartbeats), then a well-typed one with
/// pid 0, seq u64::MAX and free (9) > capacity (2).
///
/// Expected: the ill-typed ones do not make `odd` a host; the well-typed
/// one does, with its capacity of 2; eight calls made at once to it all
/// end with their own results (no panic, no call lost to the odd figures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_with_ill_typed_or_absurd_fields_are_ignored_or_harmless() {
    let nats = NatsServer::start().await;
    let raw = nats.connect().await;
    let client = client(&nats, ClientConfig::default()).await;
    for bad in [
        r#"{"seq":1,"host":"odd","pid":-1,"capacity":4,"free":4}"#,
        r#"{"seq":1,"host":"odd","pid":1,"capacity":-4,"free":4}"#,
        r#"{"seq":-1,"host":"odd","pid":1,"capacity":4,"free":4}"#,
        r#"{"seq":1,"host":"odd","pid":"1","capacity":"4","free":"4"}"#,
        r#"{"seq":1,"host":"odd","pid":1,"capacity":null,"free":4}"#,
        r#"{"seq":1,"host":"odd","pid":1,"capacity":1e400,"free":4}"#,
        r#"{"seq":1,"host":"odd","pid":1,"capacity":99999999999999999999999,"free":4}"#,
        r#"{"seq":1,"host":7,"pid":1,"capacity":4,"free":4}"#,
        r#"{"host":"odd","pid":1}"#,
        r#"{"seq":1,"host":"odd","pid":1,"capacity":4,"free":4,"bye":"yes"}"#,
        "not json",
        "",
    ] {
        raw.publish("snakepit.test.hb", bad.into()).await.unwrap();
    }
    raw.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(client.hosts().is_empty(), "{:?}", client.hosts());

    let mut calls = raw.subscribe("snakepit.test.host.odd.call").await.unwrap();
    raw.flush().await.unwrap();
    let answers = {
        let raw = raw.clone();
        tokio::spawn(async move {
            while let Some(m) = calls.next().await {
                let v: Value = serde_json::from_slice(&m.payload).unwrap();
                let list = match v {
                    Value::Array(a) => a,
                    one => vec![one],
                };
                for call in list {
                    let to = call["reply"].as_str().unwrap().to_owned();
                    let ok = json!({"ok": {"v": call["args"]}});
                    let _ = raw.publish(to, ok.to_string().into()).await;
                }
            }
        })
    };
    let beats = {
        let raw = raw.clone();
        tokio::spawn(async move {
            loop {
                let hb = json!({"seq": u64::MAX, "host": "odd", "pid": 0, "capacity": 2,
                                "running": 2, "free": 9});
                let _ = raw.publish("snakepit.test.hb", hb.to_string().into()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    wait_hosts(&client, 1).await;
    let hosts = client.hosts();
    assert_eq!(
        (hosts[0].id.as_str(), hosts[0].capacity),
        ("odd", 2),
        "{hosts:?}"
    );
    let all: Vec<_> = (0..8)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .execute_with(
                        "echo",
                        json!({"i": i}),
                        CallOptions::new().timeout(Duration::from_secs(5)),
                    )
                    .await
            })
        })
        .collect();
    for (i, c) in all.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(20), c)
            .await
            .expect("the call ends")
            .expect("the caller's task does not panic")
            .unwrap();
        assert_eq!(r["i"], i, "{r}");
    }
    beats.abort();
    answers.abort();
}

/// Attack: one forged heartbeat under a real host's id (`h`, one worker,
/// no prefetch) with `seq` u64::MAX and no instance (a well-typed, absurd
/// sequence number: any publisher on the heartbeat subject, e.g. another
/// host under the documented permissions), after which the real host's
/// own heartbeats go on as usual. Then two clients race for the host's
/// one unit, three times.
///
/// Expected: the client whose call is declined waits for the host's word
/// that it has room (docs/cluster.md: a declined call is "routed again ...
/// the same host once it has room again"; `host_full`: "no more to it until
/// it says it has room"), so the race takes a handful of messages to the
/// host's call subject (at most 20, as in review_client.rs
/// `a_declined_call_waits_for_room_rather_than_coming_back_at_once`), not a
/// storm of declined calls sent again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_heartbeat_sequence_number_does_not_make_declines_ignored() {
    let nats = NatsServer::start().await;
    let pool = pool(1).await;
    let node = snakepit_cluster::serve_with(
        &nats.connect().await,
        "test",
        pool.clone(),
        ServeOptions::new().host_id("h").prefetch_per_worker(0),
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
    let raw = nats.connect().await;
    let hb = json!({"seq": u64::MAX, "host": "h", "pid": 1, "capacity": 1, "running": 1,
                    "free": 1});
    raw.publish("snakepit.test.hb", hb.to_string().into())
        .await
        .unwrap();
    raw.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
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
    eprintln!("messages to the host's call subject per race: {sent:?}");
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
    assert!(
        sent.iter().all(|n| (2..=20).contains(n)),
        "two calls took {sent:?} messages to the host's call subject"
    );
}
