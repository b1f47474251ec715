//! docs/cluster.md, how a call travels and failures: "A call that reaches a
//! host that filled up meanwhile (another client was faster) is declined,
//! never run, and sent elsewhere"; "a host is full ... before a call
//! reaches it: nothing: the call never ran there and goes to another
//! host"; "No call is sent twice". ARCHITECTURE.md says the same.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use snakepit_cluster::Client;

/// A worker whose one command appends its token and pid to a log file, one
/// line per run (an `O_APPEND` write of a short line is never interleaved),
/// then sleeps `ms`.
const ONCE_WORKER: &str = r#"
import os
import time
import snakepit_bridge

worker = snakepit_bridge.Worker()


@worker.command("once")
def once(args, ctx):
    with open(args["log"], "a") as f:
        f.write("%s %d\n" % (args["token"], os.getpid()))
    time.sleep(args.get("ms", 0) / 1000.0)
    return {"token": args["token"], "pid": os.getpid()}


worker.run()
"#;

/// Not a test of its own: the body of the host processes, serving
/// `ONCE_WORKER`.
#[test]
fn once_host_process() {
    if std::env::var("SNAKEPIT_CLUSTER_HOST").is_err() {
        return;
    }
    let script = std::env::temp_dir().join(format!(
        "snakepit-cluster-once-worker-{}.py",
        std::process::id()
    ));
    std::fs::write(&script, ONCE_WORKER).unwrap();
    host_main_with(ScriptWorker(script));
}

/// Two clients, each unaware of the other's calls (each counts the hosts'
/// room from their announcements minus its own calls), fire 6 calls each
/// at once at a host of one worker and no prefetch ("small": room for 1)
/// and a host of two ("big": room for 2): each sends as many as it thinks
/// there is room for, so the hosts get more calls than they hold and
/// decline some. Rounds go on until small has declined a call. Every call
/// succeeds and ran exactly once (the worker logs each run); the hosts
/// served as many calls as were made; each declined call has one outcome
/// on its reply subject. (Where a declined call runs is the routing's
/// choice: with both hosts full it goes to the first with room again,
/// often the host that declined it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_host_declines_calls_and_each_runs_once() {
    let nats = NatsServer::start().await;
    let small =
        HostProcess::start_with_prefetch("once_host_process", &nats.url, "small", 1, 0).await;
    let big = HostProcess::start_with_prefetch("once_host_process", &nats.url, "big", 2, 0).await;
    // A spy on every reply to a client: `{"declined": {"host": ..}}`,
    // `{"ok": {"v": ..}}`, ...
    let spy = nats.connect().await;
    let mut replies = subscribed(&spy, &["_INBOX.>"]).await.pop().unwrap();
    // Two clients on connections of their own.
    let a = Client::connect(&nats.connect().await, "test")
        .await
        .unwrap();
    let b = Client::connect(&nats.connect().await, "test")
        .await
        .unwrap();
    let log = std::env::temp_dir().join(format!(
        "snakepit-cluster-once-{}-{}.log",
        std::process::id(),
        free_port()
    ));
    let _ = std::fs::remove_file(&log);

    let mut tokens = Vec::new();
    // Declined reply subjects, and by which host.
    let mut declined: Vec<(String, String)> = Vec::new();
    // The `ok` outcomes seen on each reply subject.
    let mut oks: HashMap<String, Vec<Value>> = HashMap::new();
    // Calls declined by small that then ran on big.
    let mut elsewhere = 0;
    let mut rounds = 0;
    while !declined.iter().any(|(_, h)| h == &small.id) && rounds < 20 {
        rounds += 1;
        // Both clients see both hosts idle, with their full room.
        for c in [&a, &b] {
            eventually(30, "the client sees both hosts idle", || async {
                let hosts = c.hosts();
                hosts.len() == 2 && hosts.iter().all(|h| h.free == h.capacity)
            })
            .await;
        }
        let hosts = a.hosts();
        let room = |id: &str| hosts.iter().find(|h| h.id == id).unwrap().capacity;
        assert_eq!(room(&small.id), 1, "{hosts:?}");
        assert_eq!(room(&big.id), 2, "{hosts:?}");
        let mut tasks = Vec::new();
        for (c, client) in [&a, &b].into_iter().enumerate() {
            for i in 0..6 {
                let token = format!("r{rounds}-c{c}-{i}");
                tokens.push(token.clone());
                let client = client.clone();
                let args = json!({"log": log, "token": token, "ms": 100});
                tasks.push(tokio::spawn(async move {
                    (token, client.execute("once", args).await)
                }));
            }
        }
        for t in tasks {
            let (token, r) = t.await.unwrap();
            let r = r.unwrap_or_else(|e| panic!("call {token} failed: {e:?}"));
            assert_eq!(r["token"], token.as_str(), "{r}");
        }
        let mut round_declined = Vec::new();
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(300), replies.next()).await
        {
            let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else {
                continue;
            };
            let subject = m.subject.to_string();
            if let Some(d) = v.get("declined") {
                round_declined.push((subject, d["host"].as_str().unwrap_or("").to_owned()));
            } else if let Some(ok) = v.get("ok") {
                oks.entry(subject).or_default().push(ok["v"].clone());
            }
        }
        for (subject, host) in &round_declined {
            let ran_on = oks.get(subject).and_then(|o| o.first()?["pid"].as_u64());
            if host == &small.id && ran_on.is_some_and(|p| big.workers.contains(&(p as u32))) {
                elsewhere += 1;
            }
        }
        declined.extend(round_declined);
    }
    assert!(
        declined.iter().any(|(_, h)| h == &small.id),
        "the small host never declined a call in {rounds} rounds; declines: {declined:?}"
    );

    // Each call ran exactly once.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut runs: HashMap<&str, Vec<u32>> = HashMap::new();
    for line in text.lines() {
        let (token, pid) = line.split_once(' ').unwrap();
        runs.entry(token).or_default().push(pid.parse().unwrap());
    }
    for token in &tokens {
        let pids = runs.get(token.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        assert_eq!(
            pids.len(),
            1,
            "call {token} ran {} times: {pids:?}",
            pids.len()
        );
    }
    assert_eq!(runs.len(), tokens.len(), "no run of an unknown call");
    let served = served(&a).await;
    assert_eq!(
        served.values().sum::<u64>(),
        tokens.len() as u64,
        "the hosts served each call once: {served:?}"
    );

    // Each declined call has one outcome on its reply subject, from its one
    // run.
    for (subject, _) in &declined {
        let Some(outcomes) = oks.get(subject) else {
            continue; // the spy missed it; the checks above cover the call
        };
        assert_eq!(outcomes.len(), 1, "one outcome for {subject}: {outcomes:?}");
        let token = outcomes[0]["token"].as_str().unwrap();
        let pid = outcomes[0]["pid"].as_u64().unwrap() as u32;
        assert_eq!(runs[token], vec![pid], "{token}");
    }
    eprintln!(
        "{rounds} rounds, {} calls, {} declined ({} of them by the small host), {elsewhere} declined by small then ran on big; served {served:?}",
        tokens.len(),
        declined.len(),
        declined.iter().filter(|(_, h)| h == &small.id).count()
    );
    let _ = std::fs::remove_file(&log);
}

/// docs/cluster.md: "No call is sent twice". A call that comes to its host
/// again (replayed on the bus by another connection, with the caller's own
/// reply subject), while it runs and after it ended, runs once, and its
/// caller gets its result: the host declined the copy that came while the
/// call ran, which told the caller it never ran, and the caller sent it
/// again and again (12 to 20 runs, then `QueueTimeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_comes_again_on_the_bus_runs_once() {
    let nats = NatsServer::start().await;
    let _host =
        HostProcess::start_with_prefetch("once_host_process", &nats.url, "solo", 2, 0).await;
    let bus = nats.connect().await;
    let mut calls = subscribed(&bus, &["snakepit.test.host.*.call"])
        .await
        .pop()
        .unwrap();
    let (client, log) = client_and_log(&nats, "replay").await;
    // Each call is published once more as it comes (a copy is seen too,
    // and not copied again).
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<async_nats::Message>::new()));
    let replayer = {
        let (bus, seen) = (bus.clone(), seen.clone());
        tokio::spawn(async move {
            while let Some(m) = calls.next().await {
                if seen.lock().unwrap().iter().any(|s| s.reply == m.reply) {
                    continue;
                }
                replay(&bus, &m).await;
                seen.lock().unwrap().push(m);
            }
        })
    };
    let r = client
        .execute("once", json!({"log": log, "token": "t1", "ms": 500}))
        .await
        .unwrap();
    assert_eq!(r["token"], "t1");
    replayer.abort();
    // The same call again, after it ended.
    let first = seen
        .lock()
        .unwrap()
        .first()
        .cloned()
        .expect("the call was seen");
    replay(&bus, &first).await;
    bus.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let runs = std::fs::read_to_string(&log).unwrap();
    assert_eq!(runs.lines().count(), 1, "{runs}");
    let _ = std::fs::remove_file(&log);
}

/// docs/cluster.md: "No call is sent twice", while its host leaves too. A
/// call that ended while its host was shutting down gracefully, coming
/// again on the bus, is ignored, not declined: a decline tells its caller
/// that it never ran. Calls that ended during a shutdown were not
/// remembered, and such a copy was declined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_ended_while_its_host_leaves_is_not_declined_when_it_comes_again() {
    let nats = NatsServer::start().await;
    let host_conn = nats.connect().await;
    let pool = pool_of(TestWorker, 2).await;
    let node = snakepit_cluster::serve_with(
        &host_conn,
        "test",
        pool.clone(),
        snakepit_cluster::ServeOptions::new()
            .host_id("h")
            .prefetch_per_worker(0),
    )
    .await
    .unwrap();
    let bus = nats.connect().await;
    let mut calls = subscribed(&bus, &["snakepit.test.host.*.call"])
        .await
        .pop()
        .unwrap();
    let client = client(&nats, snakepit_cluster::ClientConfig::default()).await;
    eventually(30, "the client sees the host with room for two", || async {
        client.hosts().iter().any(|h| h.free == 2)
    })
    .await;
    let (short, long) = (client.clone(), client.clone());
    let short = tokio::spawn(async move { short.execute("sleep", json!({"ms": 600})).await });
    // The short call's message, as the host got it: alone (the long call
    // goes once it is on its way, not in one batch with it).
    let first = tokio::time::timeout(Duration::from_secs(30), calls.next())
        .await
        .expect("the short call reaches the host")
        .unwrap();
    assert!(String::from_utf8_lossy(&first.payload).contains("600"));
    let long = tokio::spawn(async move { long.execute("sleep", json!({"ms": 3000})).await });
    // Seen on the bus is not yet taken: a call the host had not read when
    // it began to leave would be declined, and wait for another host.
    eventually(30, "the host took both calls", || async {
        pool.stats().requests == 2
    })
    .await;
    let leaving = tokio::spawn(async move { node.shutdown().await });
    short
        .await
        .unwrap()
        .expect("the short call ends with its result");
    // Anything more on its reply subject (a decline) would be wrong.
    let mut replies = bus
        .subscribe(first.reply.clone().unwrap().to_string())
        .await
        .unwrap();
    bus.flush().await.unwrap();
    replay(&bus, &first).await;
    bus.flush().await.unwrap();
    let more = tokio::time::timeout(Duration::from_millis(800), replies.next()).await;
    assert!(more.is_err(), "the host answered the copy: {more:?}");
    assert!(!leaving.is_finished(), "the host was still leaving");
    long.await
        .unwrap()
        .expect("the long call ends with its result");
    leaving.await.unwrap().unwrap();
    pool.shutdown().await.unwrap();
}

/// A client that sees the one host (by id) of cluster `test`, and a fresh
/// path for `ONCE_WORKER`'s log.
async fn client_and_log(nats: &NatsServer, tag: &str) -> (Client, std::path::PathBuf) {
    let client = Client::connect(&nats.connect().await, "test")
        .await
        .unwrap();
    eventually(30, "the client sees the host", || async {
        client.hosts().len() == 1
    })
    .await;
    let log = std::env::temp_dir().join(format!(
        "snakepit-cluster-{tag}-{}-{}.log",
        std::process::id(),
        free_port()
    ));
    let _ = std::fs::remove_file(&log);
    (client, log)
}

async fn replay(bus: &async_nats::Client, m: &async_nats::Message) {
    bus.publish_with_reply_and_headers(
        m.subject.clone(),
        m.reply.clone().unwrap(),
        m.headers.clone().unwrap_or_default(),
        m.payload.clone(),
    )
    .await
    .unwrap();
}

/// "No call is sent twice", even to two hosts started with one host id by
/// mistake: both took every call sent to that id, and each ran twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_with_one_id_never_both_run_a_call() {
    let nats = NatsServer::start().await;
    let _a = HostProcess::start_with_prefetch("once_host_process", &nats.url, "twin", 1, 0).await;
    let _b = HostProcess::start_with_prefetch("once_host_process", &nats.url, "twin", 1, 0).await;
    let (client, log) = client_and_log(&nats, "twin").await;
    for i in 0..6 {
        let token = format!("t{i}");
        let r = client
            .execute("once", json!({"log": log, "token": token}))
            .await
            .unwrap();
        assert_eq!(r["token"], token.as_str());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let runs = std::fs::read_to_string(&log).unwrap();
    assert_eq!(runs.lines().count(), 6, "{runs}");
    let _ = std::fs::remove_file(&log);
}
