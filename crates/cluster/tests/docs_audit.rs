//! Promises of `docs/cluster.md` that no other test showed, each checked
//! with a real nats-server, a real host (`serve_with`) over a pool of real
//! Python workers, and a spy connection reading the messages on the bus.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use snakepit_cluster::{ClientConfig, ServeOptions};
use snakepit_core::{CallOptions, StreamItem};

/// Messages as a spy saw them: subject and payload.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Every message published on `subject` (a wildcard) from the time of
/// [`Spy::on`]: its subject and payload.
struct Spy {
    seen: Seen,
    task: tokio::task::JoinHandle<()>,
}

impl Spy {
    async fn on(nats: &NatsServer, subject: &str) -> Spy {
        let conn = nats.connect().await;
        let mut sub = conn.subscribe(subject.to_owned()).await.unwrap();
        conn.flush().await.unwrap();
        let seen: Seen = Arc::new(Mutex::new(Vec::new()));
        let into = seen.clone();
        let task = tokio::spawn(async move {
            let _conn = conn;
            while let Some(m) = sub.next().await {
                into.lock()
                    .unwrap()
                    .push((m.subject.to_string(), m.payload.to_vec()));
            }
        });
        Spy { seen, task }
    }

    fn all(&self) -> Vec<(String, Vec<u8>)> {
        self.seen.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

impl Drop for Spy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The kinds of the replies a host sent to clients' inboxes (`ack`,
/// `chunk`, `ok`, `err`, `declined`), one per reply, whether the reply went
/// alone or in a message of several (`[["<call>", <reply>], ...]`).
fn reply_kinds(messages: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut kinds = Vec::new();
    let mut push = |reply: &Value| {
        if let Some(obj) = reply.as_object() {
            kinds.extend(obj.keys().cloned());
        }
    };
    for (_, payload) in messages {
        let Ok(v) = serde_json::from_slice::<Value>(payload) else {
            continue;
        };
        match &v {
            Value::Array(items) => {
                for item in items {
                    if let Some(reply) = item.get(1) {
                        push(reply);
                    }
                }
            }
            other => push(other),
        }
    }
    kinds
}

fn count(kinds: &[String], kind: &str) -> usize {
    kinds.iter().filter(|k| *k == kind).count()
}

/// A host `a` of one test worker serving the cluster `test`, and a client.
async fn one_host(nats: &NatsServer) -> (snakepit_cluster::Node, snakepit_cluster::Client) {
    let node = snakepit_cluster::serve_with(
        &nats.connect().await,
        "test",
        pool(1).await,
        ServeOptions::new().host_id("a"),
    )
    .await
    .unwrap();
    let client = client(nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    (node, client)
}

/// docs/cluster.md, "How a call travels", Streams: "the host sends at most
/// 256 chunks ahead of the caller's reader, and the client grants 64 more
/// each time its reader has taken 64 (a `+64 <reply subject>` message on
/// the host's cancel subject)". A stream of 1,000 chunks whose reader takes
/// nothing yet: the spy on the clients' inboxes counts the chunks the host
/// sent (at most 256), and the spy on `snakepit.test.host.a.cancel` sees no
/// grant; after the reader took 63 still none; after the 64th exactly one,
/// `+64 <the call's reply subject>`, and the host then sends more, at most
/// 64 more. Read to the end, every chunk and the result arrive, and every
/// grant says `+64`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_runs_256_chunks_ahead_and_the_client_grants_64_at_a_time() {
    let nats = NatsServer::start().await;
    let (node, client) = one_host(&nats).await;
    let inbox = Spy::on(&nats, "_INBOX.>").await;
    let cancel = Spy::on(&nats, "snakepit.test.host.a.cancel").await;
    let n = 1000;
    let mut s = client
        .execute_stream("stream", json!({"n": n}), CallOptions::new())
        .await
        .unwrap();
    let chunks_sent = || count(&reply_kinds(&inbox.all()), "chunk");
    // Let the host send what it may, until it stops.
    let mut last = usize::MAX;
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = chunks_sent();
        if now == last && now > 0 {
            break;
        }
        assert!(Instant::now() < until, "the host never stopped: {now}");
        last = now;
    }
    let ahead = chunks_sent();
    assert!(
        (1..=256).contains(&ahead),
        "the host sent {ahead} chunks ahead of a reader that took none"
    );
    assert!(cancel.all().is_empty(), "{:?}", cancel.all());
    let mut taken = 0;
    while taken < 63 {
        match s.next().await.unwrap().unwrap() {
            StreamItem::Chunk(v) => {
                assert_eq!(v, json!({"i": taken}));
                taken += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        cancel.all().is_empty(),
        "a grant before 64 chunks were taken: {:?}",
        cancel.all()
    );
    match s.next().await.unwrap().unwrap() {
        StreamItem::Chunk(v) => assert_eq!(v, json!({"i": 63})),
        other => panic!("{other:?}"),
    }
    taken += 1;
    eventually(5, "a grant after the 64th chunk", || async {
        !cancel.all().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let grants: Vec<String> = cancel
        .all()
        .iter()
        .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert_eq!(grants.len(), 1, "{grants:?}");
    let reply = grants[0]
        .strip_prefix("+64 ")
        .unwrap_or_else(|| panic!("not `+64 <reply subject>`: {:?}", grants[0]));
    assert!(reply.starts_with("_INBOX."), "{reply}");
    let after = chunks_sent();
    assert!(
        after > ahead && after <= ahead + 64,
        "{after} chunks sent after one grant of 64 (first {ahead})"
    );
    let mut done = None;
    while let Some(item) = s.next().await {
        match item.unwrap() {
            StreamItem::Chunk(v) => {
                assert_eq!(v, json!({"i": taken}));
                taken += 1;
            }
            StreamItem::Done(v) => done = Some(v),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((taken, done), (n, Some(json!({"done": n}))));
    for (_, p) in cancel.all() {
        let p = String::from_utf8_lossy(&p).into_owned();
        assert!(p.starts_with("+64 "), "{p}");
    }
    drop(s);
    node.shutdown().await.unwrap();
}

/// docs/cluster.md, "How a call travels", Acknowledgement: "a call that
/// takes longer than 50 ms is acknowledged by its host; a shorter one's
/// result is its acknowledgement". The spy on the clients' inboxes reads
/// what the host sends: three calls of a millisecond get their `ok` and no
/// `ack`; a call of 600 ms gets one `ack`, then its `ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_calls_longer_than_50_ms_are_acknowledged() {
    let nats = NatsServer::start().await;
    let (node, client) = one_host(&nats).await;
    client.execute("echo", json!({})).await.unwrap();
    let inbox = Spy::on(&nats, "_INBOX.>").await;
    for _ in 0..3 {
        client.execute("sleep", json!({"ms": 1})).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let kinds = reply_kinds(&inbox.all());
    assert_eq!(count(&kinds, "ok"), 3, "{kinds:?}");
    assert_eq!(
        count(&kinds, "ack"),
        0,
        "short calls acknowledged: {kinds:?}"
    );
    inbox.clear();
    client.execute("sleep", json!({"ms": 600})).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let kinds = reply_kinds(&inbox.all());
    assert_eq!(kinds, ["ack", "ok"], "a 600 ms call");
    node.shutdown().await.unwrap();
}

/// docs/cluster.md: "Each host announces its capacity, how much of it its
/// workers run at once, and its free capacity every 250 ms"; the Subjects
/// table: `snakepit.<c>.hb`, "heartbeat: host, pid, capacity, how much of
/// it workers run at once, free, leaving"; Deployment: `node.shutdown()`
/// "finishes the calls it runs, however long they take, while it goes on
/// saying goodbye every heartbeat". The spy on `snakepit.test.hb` counts
/// the host's heartbeats over 2 s (8 expected; a fault of a different
/// period would be far outside 4 to 16) and checks their fields; then,
/// while a 2.5 s call runs, the node shuts down: the heartbeats go on, each
/// saying it is leaving (at least 4 over the remaining 2 s), and the call
/// ends with its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_every_250_ms_and_goodbyes_every_heartbeat_while_leaving() {
    let nats = NatsServer::start().await;
    let hb = Spy::on(&nats, "snakepit.test.hb").await;
    let (node, client) = one_host(&nats).await;
    let beats = |hb: &Spy| -> Vec<Value> {
        hb.all()
            .iter()
            .filter_map(|(_, p)| serde_json::from_slice::<Value>(p).ok())
            .filter(|v| v["host"] == "a")
            .collect()
    };
    hb.clear();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let two_seconds = beats(&hb);
    assert!(
        (4..=16).contains(&two_seconds.len()),
        "{} heartbeats in 2 s: {two_seconds:?}",
        two_seconds.len()
    );
    for b in &two_seconds {
        assert_eq!(b["pid"], std::process::id(), "{b}");
        for field in ["capacity", "running", "free"] {
            assert!(b[field].is_u64(), "no `{field}`: {b}");
        }
        assert_eq!(b["running"], 1, "one worker running one call: {b}");
        assert!(b["capacity"].as_u64() >= Some(2), "worker + prefetch: {b}");
        assert_ne!(b["bye"], true, "{b}");
    }
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("sleep", json!({"ms": 2500})).await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    hb.clear();
    let leaving = tokio::spawn(node.shutdown());
    let r = call.await.unwrap().unwrap();
    let byes = beats(&hb).into_iter().filter(|b| b["bye"] == true).count();
    assert!(
        byes >= 4,
        "{byes} goodbyes while its call ran: {:?}",
        beats(&hb)
    );
    assert!(r["pid"].is_u64(), "{r}");
    leaving.await.unwrap().unwrap();
}

/// docs/cluster.md, "How a call travels", Trace context: "the
/// `traceparent` of `CallOptions` ... goes in the `traceparent` NATS
/// header"; Cancellation: "dropping the caller's future ... sends a cancel
/// message to the host"; the Subjects table: `snakepit.<c>.host.<id>.cancel`
/// "cancel the call with this reply subject". A spy on the host's subjects
/// reads the wire: a lone call made with a `traceparent` arrives on
/// `snakepit.test.host.a.call` with that value in its `traceparent` header
/// and the call's reply subject; a long call whose future is dropped is
/// followed by one message on `snakepit.test.host.a.cancel` whose payload
/// is that call's reply subject, and the host's worker is free again soon
/// after (the next call runs long before the dropped one would have ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wire_carries_the_traceparent_header_and_the_cancelled_reply_subject() {
    let nats = NatsServer::start().await;
    let (node, client) = one_host(&nats).await;
    let calls = nats.connect().await;
    let mut call_sub = calls.subscribe("snakepit.test.host.a.call").await.unwrap();
    calls.flush().await.unwrap();
    let cancel = Spy::on(&nats, "snakepit.test.host.a.cancel").await;
    let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let r = client
        .execute_with("context", json!({}), CallOptions::new().traceparent(tp))
        .await
        .unwrap();
    assert_eq!(r["traceparent"], tp, "{r}");
    let m = tokio::time::timeout(Duration::from_secs(5), call_sub.next())
        .await
        .expect("the call on the host's subject")
        .unwrap();
    let header = m
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .map(|v| v.as_str().to_owned());
    assert_eq!(header.as_deref(), Some(tp), "{m:?}");
    let call: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(
        call["command"], "context",
        "a lone call, not a batch: {call}"
    );
    let long = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("sleep", json!({"ms": 20_000})).await })
    };
    let m = tokio::time::timeout(Duration::from_secs(5), call_sub.next())
        .await
        .expect("the long call on the host's subject")
        .unwrap();
    let reply = m
        .reply
        .clone()
        .expect("a call has a reply subject")
        .to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    long.abort();
    let _ = long.await;
    eventually(5, "a cancel message", || async { !cancel.all().is_empty() }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancels: Vec<String> = cancel
        .all()
        .iter()
        .map(|(_, p)| String::from_utf8_lossy(p).into_owned())
        .collect();
    assert_eq!(
        cancels,
        [reply],
        "the cancel names the call's reply subject"
    );
    let started = Instant::now();
    client
        .execute_with(
            "echo",
            json!({}),
            CallOptions::new().timeout(Duration::from_secs(15)),
        )
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the dropped call still held the worker"
    );
    node.shutdown().await.unwrap();
}
