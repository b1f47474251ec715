//! An outside audit of docs/cluster.md (and the cluster parts of
//! ARCHITECTURE.md) against the cluster crate: the promises no other test
//! of this crate showed, or showed only weakly, each checked against a real
//! nats-server (127.0.0.1, a port of its own, stopped with the test) and
//! hosts serving pools of real Python, Node.js and Ruby workers.
//!
//! Routing (the host with the most room when no host has an idle worker;
//! first in, first out), the queue (one place per waiting call; waiting
//! calls when NATS goes down), deadlines (the time left after the queue is
//! what the host gets), heartbeats (room again at once after a decline),
//! leaving hosts (declines while their calls run), a worker's own
//! concurrency as the host's capacity, each client's own session records,
//! the host table's forgetting, subjects under the cluster's name, reply
//! subjects no client can have, cancels that overtake their call, a
//! caller's next call on a full host, remote tracebacks, and the KV
//! store's sweep when one delete is refused.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use snakepit_cluster::{is_host_lost, is_unavailable, ClientConfig, NatsKvStore, ServeOptions};
use snakepit_core::{Adapter, Affinity, CallOptions, Error, Launch, Pool, WireCodec};
use snakepit_session::{EndReason, SessionStore};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The core tests' worker run with `--async`: an asyncio worker that says
/// in its hello it runs 4 calls at once (`asleep` awaits `ms`).
struct AsyncTestWorker;

impl Adapter for AsyncTestWorker {
    fn launch(&self) -> Launch {
        let python = std::env::var("SNAKEPIT_PYTHON").unwrap_or_else(|_| "python3".into());
        Launch::new(python)
            .arg(root().join("crates/core/tests/workers/test_worker.py"))
            .arg("--async")
            .env("PYTHONPATH", root().join("bridges/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
    }
    fn codec(&self) -> WireCodec {
        WireCodec::Json
    }
}

/// Serves `pool` to the cluster `test` on a connection of its own.
async fn serve(nats: &NatsServer, pool: &Pool, options: ServeOptions) -> snakepit_cluster::Node {
    snakepit_cluster::serve_with(&nats.connect().await, "test", pool.clone(), options)
        .await
        .unwrap()
}

/// A raw call (as a client sends one alone) to host `id`, answered on a
/// reply subject of the raw connection's own: the first message back.
async fn raw_call(raw: &async_nats::Client, id: &str, call: Value) -> Value {
    let m = tokio::time::timeout(
        Duration::from_secs(20),
        raw.request(
            format!("snakepit.test.host.{id}.call"),
            call.to_string().into(),
        ),
    )
    .await
    .expect("the host answers")
    .expect("a reply");
    serde_json::from_slice(&m.payload).unwrap()
}

/// The heartbeats `sub` receives until none comes for `quiet`.
async fn beats(sub: &mut async_nats::Subscriber, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(quiet, sub.next()).await {
        out.push(serde_json::from_slice(&m.payload).unwrap());
    }
    out
}

/// docs/cluster.md:117-120, Deadlines: "the client sends what is left of
/// the `CallOptions::timeout` (counted from submission, queue wait
/// included), and the host's pool enforces it as its own
/// (`Error::CallTimeout`)".
///
/// A host of one worker and no prefetch runs a call of 3 s; a call of 3 s
/// with a timeout of 4 s waits about 3 s in the client's queue, then goes
/// to the host with about 1 s left. The host's pool must end it there
/// (its `call_timeouts` counts it), and the caller hears `CallTimeout`
/// with its own 4 s. Had the host been given the whole 4 s, the call
/// would have succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_reaches_its_host_with_what_is_left_of_its_deadline_after_the_queue() {
    let nats = NatsServer::start().await;
    let pool = pool(1).await;
    let node = serve(
        &nats,
        &pool,
        ServeOptions::new().host_id("a").prefetch_per_worker(0),
    )
    .await;
    let mut config = ClientConfig::default();
    config.queue_timeout = Duration::from_secs(30);
    let client = client(&nats, config).await;
    wait_hosts(&client, 1).await;
    let fill = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("sleep", json!({"ms": 3000})).await })
    };
    eventually(30, "the host's one worker runs the first call", || async {
        pool.stats().busy == 1
    })
    .await;
    let timeout = Duration::from_secs(4);
    let e = client
        .execute_with(
            "sleep",
            json!({"ms": 3000, "token": "late"}),
            CallOptions::new().timeout(timeout),
        )
        .await
        .expect_err("the host was given what was left of 4 s, less than the call's 3 s");
    match &e {
        Error::CallTimeout {
            command,
            timeout: t,
        } => assert_eq!((command.as_str(), *t), ("sleep", timeout), "{e:?}"),
        other => panic!("expected Error::CallTimeout, got {other:?}"),
    }
    fill.await.unwrap().unwrap();
    assert_eq!(
        pool.stats().requests,
        2,
        "the call left the queue and reached the host"
    );
    eventually(10, "the host's pool timed the call out itself", || async {
        pool.stats().call_timeouts == 1
    })
    .await;
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// docs/cluster.md:80-84 and 105-106, Routing: "a host with an idle worker
/// first, otherwise the host with the most room"; "Clients use the
/// prefetch only when no host has an idle worker".
///
/// Host `a` (one worker, a prefetch of 3: room for 4) and host `b` (one
/// worker, a prefetch of 1: room for 2). Two long calls take both workers
/// (one each: an idle worker first). Then no host has an idle worker, and
/// the next two calls must both go to `a`, which has room for 3 more
/// against `b`'s 1, and wait there in its pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_idle_worker_anywhere_calls_go_to_the_host_with_the_most_room() {
    let nats = NatsServer::start().await;
    let (pa, pb) = (pool(1).await, pool(1).await);
    let na = serve(
        &nats,
        &pa,
        ServeOptions::new().host_id("a").prefetch_per_worker(3),
    )
    .await;
    let nb = serve(
        &nats,
        &pb,
        ServeOptions::new().host_id("b").prefetch_per_worker(1),
    )
    .await;
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 2).await;
    let caps: Vec<(String, usize, usize)> = client
        .hosts()
        .into_iter()
        .map(|h| (h.id, h.capacity, h.free))
        .collect();
    assert_eq!(
        caps,
        [("a".to_owned(), 4, 4), ("b".to_owned(), 2, 2)],
        "1 worker + its prefetch, all free"
    );
    let sent = || pa.stats().requests + pb.stats().requests;
    let mut calls = Vec::new();
    for k in 1..=4u64 {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            client
                .execute_with(
                    "sleep",
                    json!({"ms": 30_000}),
                    CallOptions::new().timeout(Duration::from_secs(60)),
                )
                .await
        }));
        eventually(30, "the call reaches a host", || async { sent() == k }).await;
        if k == 2 {
            eventually(30, "the first two calls run on a worker each", || async {
                (pa.stats().busy, pb.stats().busy) == (1, 1)
            })
            .await;
        }
    }
    assert_eq!(
        (pa.stats().requests, pb.stats().requests),
        (3, 1),
        "the third and fourth calls went to the host with the most room"
    );
    for c in calls {
        c.abort();
    }
    drop(na);
    drop(nb);
    pa.shutdown().await.unwrap();
    pb.shutdown().await.unwrap();
}

/// docs/cluster.md:83-84, Routing: "while no host has room the call waits
/// in the client's queue, first in first out".
///
/// A host of one worker and no prefetch runs a call of 1 s; eight calls
/// are made one after another while it runs (a quarter of a second apart,
/// so each is in the queue before the next is made). The worker numbers
/// the `echo` calls it serves (`served`): they must run in the order they
/// were made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_for_room_run_first_in_first_out() {
    let nats = NatsServer::start().await;
    let pool = pool(1).await;
    let node = serve(
        &nats,
        &pool,
        ServeOptions::new().host_id("a").prefetch_per_worker(0),
    )
    .await;
    let mut config = ClientConfig::default();
    config.queue_timeout = Duration::from_secs(60);
    let client = client(&nats, config).await;
    wait_hosts(&client, 1).await;
    let fill = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("sleep", json!({"ms": 1000})).await })
    };
    eventually(30, "the host's one worker is busy", || async {
        pool.stats().busy == 1
    })
    .await;
    let mut waiting = Vec::new();
    for k in 0..8u64 {
        let client = client.clone();
        waiting.push(tokio::spawn(async move {
            client.execute("echo", json!({"k": k})).await
        }));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    fill.await.unwrap().unwrap();
    let mut order = Vec::new();
    for (k, call) in waiting.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("the call ends")
            .unwrap()
            .unwrap();
        assert_eq!(r["echoed"]["k"], k, "{r}");
        order.push(r["served"].as_u64().unwrap());
    }
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(
        order, sorted,
        "the worker's count of each call, in the order they were made"
    );
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// docs/cluster.md:110-114, Saturation: "`ClientConfig::max_queue_size`
/// calls of a client may wait for room (more fail at once with
/// `Error::PoolSaturated`) ... A waiting call keeps one place in the queue
/// however long it waits."
///
/// No host; `max_queue_size` 2; a host timeout of 60 ms, so that a waiting
/// call looks again every 10 ms. One call waits 2 s (about 200 looks);
/// then a second call must still find a place (it waits), and only a
/// third is refused with `PoolSaturated { queued: 2 }`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_call_keeps_one_place_in_the_queue_however_long_it_waits() {
    let nats = NatsServer::start().await;
    let mut config = ClientConfig::default();
    config.host_timeout = Duration::from_millis(60);
    config.queue_timeout = Duration::from_secs(60);
    config.max_queue_size = 2;
    let client = client(&nats, config).await;
    let first = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("echo", json!({"n": 1})).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!first.is_finished(), "the first call waits for a host");
    let second = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("echo", json!({"n": 2})).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "the second call has a place in the queue: {:?}",
        if second.is_finished() {
            Some(second.await.unwrap())
        } else {
            None
        }
    );
    let e = client.execute("echo", json!({"n": 3})).await.unwrap_err();
    assert!(matches!(e, Error::PoolSaturated { queued: 2 }), "{e:?}");
    first.abort();
    second.abort();
}

/// docs/cluster.md:114-116, Saturation: "Calls that wait when the
/// connection goes down ... fail at once with the unavailable error (never
/// sent)"; :265, Failures: "the NATS connection is down | new calls, and
/// calls waiting in the client's queue, fail at once with the unavailable
/// error (never sent); calls in flight fail with the host-lost error";
/// :276-278: `Error::HostLost`: "the connection broke, while the call ran;
/// the message says how".
///
/// A host of one worker and no prefetch runs a call of 30 s; a second call
/// waits in the client's queue (queue timeout 60 s). The NATS server is
/// killed: the call in flight fails with the host-lost error saying the
/// connection was lost, and the waiting one with the unavailable error,
/// `never_ran()`, long before its queue timeout; the host received only
/// the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_when_nats_goes_down_fail_at_once_never_sent() {
    let mut nats = NatsServer::start().await;
    let pool = pool(1).await;
    let node = serve(
        &nats,
        &pool,
        ServeOptions::new().host_id("a").prefetch_per_worker(0),
    )
    .await;
    let mut config = ClientConfig::default();
    config.queue_timeout = Duration::from_secs(60);
    let client = client(&nats, config).await;
    wait_hosts(&client, 1).await;
    let running = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("sleep", json!({"ms": 30_000})).await })
    };
    eventually(30, "the host's one worker runs the call", || async {
        pool.stats().busy == 1
    })
    .await;
    let queued = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("echo", json!({"queued": true})).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!queued.is_finished(), "the second call waits for room");
    nats.kill();
    let down = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the call in flight ends with the connection")
        .unwrap()
        .unwrap_err();
    assert!(is_host_lost(&e), "{e:?}");
    assert!(
        e.to_string().contains("connection"),
        "the message says the connection broke: {e}"
    );
    let e = tokio::time::timeout(Duration::from_secs(20), queued)
        .await
        .expect("the waiting call ends long before its queue timeout")
        .unwrap()
        .unwrap_err();
    let took = down.elapsed();
    assert!(is_unavailable(&e) && e.never_ran(), "{e:?} after {took:?}");
    assert_eq!(pool.stats().requests, 1, "the waiting call was never sent");
    drop(node);
    pool.shutdown().await.unwrap();
}

/// docs/cluster.md:77-79: "Each host announces ... its free capacity every
/// 250 ms, and at once when it has room again after it declined a call";
/// :633-634: "one more after it declined a call" (and, "Earlier changes":
/// "only after it declined a call").
///
/// A host of one worker and no prefetch, heartbeating once a minute (the
/// client waits for a silent host for ten). A call ends on the full host
/// with no call declined: no heartbeat follows. Then, while a second call
/// fills it, a raw caller's call is declined: when the second call ends,
/// the host announces its room at once (long before its next tick).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_announces_room_at_once_after_it_declined_a_call_and_only_then() {
    let nats = NatsServer::start().await;
    let spy = nats.connect().await;
    let mut hb = subscribed(&spy, &["snakepit.test.hb"]).await.remove(0);
    // The client first: it must hear the host's first heartbeat.
    let mut config = ClientConfig::default();
    config.host_timeout = Duration::from_secs(600);
    let client = client(&nats, config).await;
    let pool = pool(1).await;
    let node = serve(
        &nats,
        &pool,
        ServeOptions::new()
            .host_id("a")
            .prefetch_per_worker(0)
            .heartbeat(Duration::from_secs(60)),
    )
    .await;
    wait_hosts(&client, 1).await;
    let first = beats(&mut hb, Duration::from_millis(300)).await;
    assert_eq!(first.len(), 1, "the first heartbeat: {first:?}");

    client.execute("sleep", json!({"ms": 300})).await.unwrap();
    let after = beats(&mut hb, Duration::from_secs(1)).await;
    assert!(
        after.is_empty(),
        "a call ended on a full host that declined nothing: {after:?}"
    );

    let fill = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("sleep", json!({"ms": 1500})).await })
    };
    eventually(30, "the host's one worker runs the call", || async {
        pool.stats().busy == 1
    })
    .await;
    let raw = nats.connect().await;
    let reply = raw_call(&raw, "a", json!({"command": "echo", "args": {}})).await;
    assert_eq!(reply["declined"]["host"], "a", "a full host: {reply}");
    assert!(
        beats(&mut hb, Duration::from_millis(200)).await.is_empty(),
        "no heartbeat while it is full"
    );
    fill.await.unwrap().unwrap();
    let m = tokio::time::timeout(Duration::from_secs(20), hb.next())
        .await
        .expect("a heartbeat as soon as the host has room again, not a minute later")
        .unwrap();
    let beat: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(beat["host"], "a", "{beat}");
    assert_eq!(beat["free"], 1, "room again: {beat}");
    assert_eq!(pool.stats().requests, 2, "the declined call never ran");
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// docs/cluster.md:52-59, Deployment: `node.shutdown()` "tells the clients
/// it is leaving (they send it nothing more), finishes the calls it runs
/// ... For 100 ms after its first goodbye, and while its calls run, it
/// declines any call a client sent before hearing it"; :263, Failures: "a
/// host is ... closing, or gone before a call reaches it | nothing: the
/// call never ran there and is routed again".
///
/// A host runs a call of 2.5 s when it is told to leave. Once its goodbye
/// is on the bus and well past the 100 ms, while the call still runs, a
/// raw caller that never heard the goodbye sends it a call: it must be
/// declined (never run), not taken and not left unanswered. The running
/// call ends with its result; once `shutdown` has returned, NATS reports
/// that nobody takes the host's calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_host_declines_calls_while_its_calls_run_then_nobody_takes_them() {
    let nats = NatsServer::start().await;
    let spy = nats.connect().await;
    let mut hb = subscribed(&spy, &["snakepit.test.hb"]).await.remove(0);
    let pool = pool(1).await;
    let node = serve(&nats, &pool, ServeOptions::new().host_id("a")).await;
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    let long = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .execute("sleep", json!({"ms": 2500, "token": "long"}))
                .await
        })
    };
    eventually(30, "the host's worker runs the long call", || async {
        pool.stats().busy == 1
    })
    .await;
    let leaving = tokio::spawn(node.shutdown());
    let bye = async {
        while let Some(m) = hb.next().await {
            let b: Value = serde_json::from_slice(&m.payload).unwrap();
            if b["bye"] == true {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), bye)
        .await
        .expect("the host says goodbye");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!long.is_finished(), "the long call still runs");
    let raw = nats.connect().await;
    let reply = raw_call(&raw, "a", json!({"command": "echo", "args": {}})).await;
    assert_eq!(reply["declined"]["host"], "a", "a leaving host: {reply}");
    assert_eq!(pool.stats().requests, 1, "the declined call never ran");
    let r = tokio::time::timeout(Duration::from_secs(30), long)
        .await
        .expect("the long call ends")
        .unwrap()
        .unwrap();
    assert_eq!(r["token"], "long", "{r}");
    tokio::time::timeout(Duration::from_secs(30), leaving)
        .await
        .expect("shutdown returns once its calls ended")
        .unwrap()
        .unwrap();
    let call = json!({"command": "echo", "args": {}}).to_string();
    eventually(20, "NATS says nobody takes the host's calls", || async {
        let r = tokio::time::timeout(
            Duration::from_secs(3),
            raw.request("snakepit.test.host.a.call", call.clone().into()),
        )
        .await;
        matches!(&r, Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders)
    })
    .await;
    assert_eq!(pool.stats().requests, 1);
    pool.shutdown().await.unwrap();
}

/// docs/cluster.md:90-93, Capacity: "the host's ready workers times
/// `ServeOptions::calls_per_worker` (by default what each worker says it
/// runs at once: 1 for the Python and Ruby bridges' plain handlers, more
/// for Node.js and asyncio workers)".
///
/// One asyncio worker that says it runs 4 calls at once, no prefetch: the
/// host announces a capacity of 4, runs 4 calls at once on that one
/// worker, and a fifth waits in the client until one of them ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asyncio_worker_gives_its_host_the_calls_it_says_it_runs_at_once() {
    let nats = NatsServer::start().await;
    let pool = pool_of(AsyncTestWorker, 1).await;
    let node = serve(
        &nats,
        &pool,
        ServeOptions::new().host_id("aio").prefetch_per_worker(0),
    )
    .await;
    let mut config = ClientConfig::default();
    config.queue_timeout = Duration::from_secs(30);
    let client = client(&nats, config).await;
    wait_hosts(&client, 1).await;
    let hosts = client.hosts();
    assert_eq!((hosts[0].capacity, hosts[0].free), (4, 4), "{hosts:?}");
    let calls: Vec<_> = (0..5)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .execute("asleep", json!({"ms": 2000, "token": i}))
                    .await
            })
        })
        .collect();
    eventually(20, "four calls reach the host", || async {
        pool.stats().requests == 4
    })
    .await;
    eventually(20, "the one worker runs the four at once", || async {
        pool.stats().in_flight == 4
    })
    .await;
    assert_eq!(pool.stats().requests, 4, "the fifth waits in the client");
    for (i, call) in calls.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(30), call)
            .await
            .expect("every call ends")
            .unwrap()
            .unwrap();
        assert_eq!(r["token"], i, "{r}");
    }
    assert_eq!(pool.stats().requests, 5);
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// docs/cluster.md:186-190, Sessions across hosts: "The client remembers
/// the last host of up to `ClientConfig::max_sessions` sessions ...; each
/// client keeps its own record."
///
/// Two hosts of one worker each, no prefetch. Client `A` runs session
/// `s1` on host `x`, which then runs a long call of `s1`. Client `B` has
/// never run `s1`: its `FailFast` call of `s1` goes to the other host (no
/// record, no affinity), while `A`'s `FailFast` call of `s1` fails with
/// `WorkerBusy` naming `host:x`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_keeps_its_own_record_of_a_sessions_host() {
    let nats = NatsServer::start().await;
    let pools = [pool(1).await, pool(1).await];
    let mut nodes = Vec::new();
    for (pool, id) in pools.iter().zip(["a", "b"]) {
        nodes.push(
            serve(
                &nats,
                pool,
                ServeOptions::new().host_id(id).prefetch_per_worker(0),
            )
            .await,
        );
    }
    let a = client(&nats, ClientConfig::default()).await;
    let b = client(&nats, ClientConfig::default()).await;
    wait_hosts(&a, 2).await;
    wait_hosts(&b, 2).await;
    let host_of = |r: &Value| {
        let pid = pid_of(r);
        pools
            .iter()
            .position(|p| p.worker_pids().contains(&pid))
            .expect("a worker of one of the hosts")
    };
    let r = a.execute_in_session("s1", "pid", json!({})).await.unwrap();
    let x = host_of(&r);
    let x_id = ["a", "b"][x];
    let long = {
        let a = a.clone();
        let options = CallOptions::new()
            .session("s1")
            .affinity(Affinity::Strict)
            .timeout(Duration::from_secs(60));
        tokio::spawn(async move {
            a.execute_with("sleep", json!({"ms": 30_000}), options)
                .await
        })
    };
    eventually(30, "s1's host runs the long call", || async {
        pools[x].stats().busy == 1
    })
    .await;
    eventually(30, "client B hears that s1's host is full", || async {
        b.hosts().iter().any(|h| h.id == x_id && h.free == 0)
    })
    .await;
    let fail_fast = || {
        CallOptions::new()
            .session("s1")
            .affinity(Affinity::FailFast)
            .timeout(Duration::from_secs(20))
    };
    let r = b
        .execute_with("pid", json!({}), fail_fast())
        .await
        .unwrap_or_else(|e| panic!("client B has no record of s1: {e:?}"));
    assert_eq!(host_of(&r), 1 - x, "B's call went to the host with room");
    match a.execute_with("pid", json!({}), fail_fast()).await {
        Err(Error::WorkerBusy {
            session_id,
            worker_id,
        }) => assert_eq!(
            (session_id.as_str(), worker_id),
            ("s1", format!("host:{x_id}"))
        ),
        other => panic!("client A keeps s1 on host {x_id}: {other:?}"),
    }
    long.abort();
    drop(nodes);
    for p in &pools {
        p.shutdown().await.unwrap();
    }
}

/// docs/cluster.md:302-306, Discovery: "A client keeps track of at most
/// `snakepit_cluster::MAX_HOSTS` (4,096) host ids: heartbeats under more
/// new ids ... are ignored ... until known ids fall silent and are
/// forgotten (after 20 host timeouts)".
///
/// With a host timeout of 400 ms (forgotten after 8 s), 4,096 ids beat
/// until the client lists them all; then a new id, `late`, beats every
/// 100 ms while the others fall silent. Two seconds later (5 host
/// timeouts: silent, not yet forgotten) `late` is still ignored; once the
/// silent ids are forgotten, it is a host like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_table_takes_new_ids_again_once_silent_ones_are_forgotten() {
    let nats = NatsServer::start().await;
    let mut config = ClientConfig::default();
    config.host_timeout = Duration::from_millis(400);
    let client = client(&nats, config).await;
    let publisher = nats.connect().await;
    let beat = |host: &str| {
        json!({"seq": 1, "host": host, "pid": 1, "capacity": 1, "running": 1, "free": 1})
            .to_string()
            .into_bytes()
    };
    let cap = snakepit_cluster::MAX_HOSTS;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let many = {
        let (publisher, stop) = (publisher.clone(), stop.clone());
        let beats: Vec<Vec<u8>> = (0..cap).map(|n| beat(&format!("h{n}"))).collect();
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for b in &beats {
                    publisher
                        .publish("snakepit.test.hb", b.clone().into())
                        .await
                        .unwrap();
                }
                publisher.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    eventually(30, "the client lists every one of the ids", || {
        let n = client.hosts().len();
        async move { n == cap }
    })
    .await;
    let late = {
        let publisher = publisher.clone();
        let b = beat("late");
        tokio::spawn(async move {
            loop {
                publisher
                    .publish("snakepit.test.hb", b.clone().into())
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    many.await.unwrap();
    let silent = Instant::now();
    let listed = |id: &str| client.hosts().iter().any(|h| h.id == id);
    tokio::time::sleep(Duration::from_secs(2)).await;
    if silent.elapsed() < Duration::from_secs(6) {
        assert!(
            !listed("late"),
            "a new id taken while the table still holds {cap} ids silent for {:?}",
            silent.elapsed()
        );
    }
    eventually(
        40,
        "the new id is taken once the silent ids are forgotten",
        || {
            let yes = listed("late");
            async move { yes }
        },
    )
    .await;
    eprintln!(
        "`late` listed {:?} after the others fell silent",
        silent.elapsed()
    );
    assert!(
        silent.elapsed() >= Duration::from_secs(6),
        "forgotten after {:?}, before 20 host timeouts (8 s)",
        silent.elapsed()
    );
    late.abort();
}

/// docs/cluster.md:358-361, Security: "a host answers no reply subject a
/// client cannot have: one over 512 bytes, with a wildcard, a space or a
/// control character, or a system subject (`$JS...`, `$KV...`,
/// `$SYS...`); such a call is not run".
///
/// One batch of calls (the form whose reply subjects travel in the JSON)
/// with a reply subject of 513 bytes, ones with `*`, `>`, an empty token,
/// a tab, a DEL, and `$SYS`/`$JS`/`$KV` subjects, and one of exactly 512
/// bytes. Only the last runs (the host's pool gets one call) and is
/// answered, on its own subject; a spy on `evil.>` sees nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_with_reply_subjects_no_client_can_have_are_not_run() {
    let nats = NatsServer::start().await;
    let pool = pool(1).await;
    let node = serve(&nats, &pool, ServeOptions::new().host_id("a")).await;
    let raw = nats.connect().await;
    let mut spy = subscribed(&raw, &["evil.>"]).await.remove(0);
    let longest = format!("evil.{}", "x".repeat(507));
    assert_eq!(longest.len(), 512);
    let too_long = format!("evil.{}", "x".repeat(508));
    let refused = [
        too_long.as_str(),
        "evil.*.x",
        "evil.>",
        "evil..x",
        "evil.a\tb",
        "evil.a\u{7f}b",
        "$SYS.evil.x",
        "$JS.API.evil",
        "$KV.snakepit_sessions.evil",
    ];
    let mut batch: Vec<Value> = refused
        .iter()
        .enumerate()
        .map(|(i, r)| json!({"command": "echo", "args": {"i": i}, "reply": r}))
        .collect();
    batch.push(json!({"command": "echo", "args": {"i": "longest"}, "reply": longest}));
    raw.publish_with_reply(
        "snakepit.test.host.a.call",
        "evil.batch.b1",
        serde_json::to_vec(&batch).unwrap().into(),
    )
    .await
    .unwrap();
    raw.flush().await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(20), spy.next())
        .await
        .expect("the call with a 512-byte reply subject is answered")
        .unwrap();
    assert_eq!(m.subject.as_str(), longest, "answered on its own subject");
    let reply: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(reply["ok"]["v"]["echoed"]["i"], "longest", "{reply}");
    let more = count(&mut spy, Duration::from_secs(1)).await;
    assert_eq!(more, 0, "no other call was answered");
    assert_eq!(pool.stats().requests, 1, "only one call ran");
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// docs/cluster.md:285-289, Failures: "Errors from the host's pool (remote
/// errors with their traceback, ...) reach the caller as the same variant
/// with the same fields."
///
/// A handler that raises `ValueError`: the caller of the cluster gets the
/// same `Error::Remote` as the caller of the host's pool, traceback
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_errors_reach_the_caller_with_their_traceback() {
    let nats = NatsServer::start().await;
    let pool = pool(1).await;
    let node = serve(&nats, &pool, ServeOptions::new().host_id("a")).await;
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    let args = json!({"message": "no such value: é \"quoted\""});
    let local = pool.execute("fail", args.clone()).await.unwrap_err();
    let remote = client.execute("fail", args).await.unwrap_err();
    let (Some(l), Some(r)) = (local.remote(), remote.remote()) else {
        panic!("expected Error::Remote both ways: {local:?} / {remote:?}");
    };
    let traceback = l
        .traceback
        .as_deref()
        .expect("the pool's error has a traceback");
    assert!(traceback.contains("ValueError"), "{traceback}");
    assert_eq!(r.kind, l.kind, "{remote:?}");
    assert_eq!(r.message, l.message, "{remote:?}");
    assert_eq!(r.traceback, l.traceback, "{remote:?}");
    assert_eq!(remote.never_ran(), local.never_ran());
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// docs/cluster.md:247-251, `NatsKvStore`: "A refused write (the user may
/// not publish to the bucket ...) fails its operation with
/// `Error::Backend` ...; it is never taken for a conflict and retried.
/// `cleanup_expired` reports such a failure after trying the other expired
/// sessions."
///
/// Two expired sessions, `a` and `b`; the cleaning host's user may publish
/// to the bucket except to `a`'s key (the first the sweep comes to). Its
/// `cleanup_expired` fails with `Error::Backend`, having gone on to remove
/// `b` and report its expiry; `a` is left for a host that may remove it,
/// and a live session is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_expired_reports_a_refused_delete_after_removing_the_other_expired_sessions() {
    let nats = NatsServer::start_with_config(
        r#"
accounts {
  APP {
    jetstream: enabled
    users = [
      {user: admin, password: admin}
      {user: cleaner, password: cleaner, permissions: {
        publish: {allow: [">"], deny: ["$KV.snakepit_sessions.s.61"]}
        subscribe: {allow: [">"]}
      }}
    ]
  }
}
"#,
    )
    .await;
    let store = |user: &'static str| {
        let url = nats.url.clone();
        async move {
            let conn = async_nats::ConnectOptions::with_user_and_password(user.into(), user.into())
                .connect(url)
                .await
                .unwrap();
            NatsKvStore::builder(&conn)
                .sweep_interval(Duration::from_secs(3600))
                .connect()
                .await
                .unwrap()
        }
    };
    let admin = store("admin").await;
    let cleaner = store("cleaner").await;
    // `a` (0x61) is the session whose key the cleaner may not write; made
    // first, and first by its key, it is the first the sweep comes to.
    for id in ["a", "b"] {
        admin
            .create_session(id, Some(Duration::from_millis(50)))
            .await
            .unwrap();
    }
    admin.ensure_session("live").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ends = Arc::new(Mutex::new(Vec::new()));
    let sink = ends.clone();
    cleaner.on_session_end(Arc::new(move |id, why| {
        sink.lock().unwrap().push((id.to_owned(), why));
    }));
    let r = tokio::time::timeout(Duration::from_secs(60), cleaner.cleanup_expired())
        .await
        .expect("cleanup_expired ends");
    assert!(
        matches!(r, Err(snakepit_session::Error::Backend(_))),
        "the refused delete is reported: {r:?}"
    );
    assert_eq!(
        *ends.lock().unwrap(),
        vec![("b".to_owned(), EndReason::Expired)],
        "the other expired session was removed and reported"
    );
    assert_eq!(admin.cleanup_expired().await.unwrap(), 1, "only a was left");
    assert_eq!(
        admin.list_sessions().await.unwrap(),
        vec!["live".to_owned()]
    );
}

/// The replies a spy saw on clients' inboxes, one per reply, whether it
/// went alone or in a message of several (`[["<call>", <reply>], ...]`).
fn replies(messages: &[async_nats::Message]) -> Vec<Value> {
    let mut out = Vec::new();
    for m in messages {
        match serde_json::from_slice::<Value>(&m.payload) {
            Ok(Value::Array(items)) => {
                out.extend(items.into_iter().filter_map(|i| i.get(1).cloned()))
            }
            Ok(v) => out.push(v),
            Err(_) => {}
        }
    }
    out
}

/// ARCHITECTURE.md:379-380, Invariants: "the unit of a finished call is
/// free on the host before its caller hears (a caller's next call is never
/// declined for it)".
///
/// One client makes 1,000 quick calls one after another on a host of one
/// worker and no prefetch (room for exactly one call): each call is sent
/// as soon as the last one's result arrives. A spy on the clients' inboxes
/// must see 1,000 results and not one `declined`.
///
/// It sees some in about two runs of three (1 to 9 declines of 1,000
/// calls, most among the first ones, with the host in this process or in
/// one of its own): the host's call task queues the outcome
/// for the sender task (host.rs `run_call`, `host.queue`) before it tells
/// the serving loop the unit is free (`drop(done)`); on a multi-thread
/// runtime the sender can publish the outcome, and the caller's next call
/// reach the serving loop, in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_next_call_is_never_declined_for_the_unit_of_its_last() {
    let nats = NatsServer::start().await;
    let pool = pool(1).await;
    let node = serve(
        &nats,
        &pool,
        ServeOptions::new().host_id("a").prefetch_per_worker(0),
    )
    .await;
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    let spy = nats.connect().await;
    let mut inbox = subscribed(&spy, &["_INBOX.>"]).await.remove(0);
    let n = 1000;
    for i in 0..n {
        let r = client.execute("echo", json!({"i": i})).await.unwrap();
        assert_eq!(r["echoed"]["i"], i, "{r}");
    }
    // Read once the calls are made (the subscription holds up to 65,536
    // messages): a reader running meanwhile changes the timing it shows.
    let mut seen = Vec::new();
    while seen
        .iter()
        .filter(|r: &&Value| r.get("ok").is_some())
        .count()
        < n
    {
        let m = tokio::time::timeout(Duration::from_secs(10), inbox.next())
            .await
            .expect("the spy sees every result")
            .unwrap();
        seen.extend(replies(&[m]));
    }
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), inbox.next()).await {
        seen.extend(replies(&[m]));
    }
    let kinds = |kind: &str| seen.iter().filter(|r| r.get(kind).is_some()).count();
    assert_eq!(
        (kinds("ok"), kinds("declined")),
        (n, 0),
        "results and declines the host sent"
    );
    assert_eq!(pool.stats().requests, n as u64);
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// ARCHITECTURE.md:321-322, the host: "cancels that overtake their call
/// are kept, the last 10,000"; docs/cluster.md:132-135, Cancellation: a
/// dropped call's cancel makes the host drop the call.
///
/// A cancel for the reply subject `evil.c.1` reaches the host before the
/// call with that reply subject (as when a caller drops a call whose
/// message is still on its way): the call must not run. A call on another
/// reply subject, sent the same way, runs and is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_cancel_overtook_it_is_not_run() {
    let nats = NatsServer::start().await;
    let pool = pool(1).await;
    let node = serve(&nats, &pool, ServeOptions::new().host_id("a")).await;
    let raw = nats.connect().await;
    let mut spy = subscribed(&raw, &["evil.>"]).await.remove(0);
    raw.publish("snakepit.test.host.a.cancel", "evil.c.1".into())
        .await
        .unwrap();
    raw.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let call = |token: &str| json!({"command": "echo", "args": {"token": token}}).to_string();
    raw.publish_with_reply(
        "snakepit.test.host.a.call",
        "evil.c.1",
        call("cancelled").into(),
    )
    .await
    .unwrap();
    raw.publish_with_reply("snakepit.test.host.a.call", "evil.c.2", call("kept").into())
        .await
        .unwrap();
    raw.flush().await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(20), spy.next())
        .await
        .expect("the call without a cancel is answered")
        .unwrap();
    assert_eq!(m.subject.as_str(), "evil.c.2");
    let r: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(r["ok"]["v"]["echoed"]["token"], "kept", "{r}");
    assert_eq!(count(&mut spy, Duration::from_secs(1)).await, 0);
    assert_eq!(pool.stats().requests, 1, "the cancelled call never ran");
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// docs/cluster.md:90-93, Capacity: "by default what each worker says it
/// runs at once: 1 for the Python and Ruby bridges' plain handlers, more
/// for Node.js and asyncio workers".
///
/// A host of one generic Node.js worker and a host of one generic Ruby
/// worker, no prefetch: the clients hear a capacity of 16 (the Node.js
/// bridge's default concurrency) and of 1; each host serves a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_ruby_workers_give_their_hosts_what_they_say_they_run_at_once() {
    let nats = NatsServer::start().await;
    let node_pool = pool_of(snakepit_adapters::GenericJavaScript, 1).await;
    let ruby_pool = pool_of(snakepit_adapters::GenericRuby, 1).await;
    let nodes = [
        serve(
            &nats,
            &node_pool,
            ServeOptions::new().host_id("js").prefetch_per_worker(0),
        )
        .await,
        serve(
            &nats,
            &ruby_pool,
            ServeOptions::new().host_id("rb").prefetch_per_worker(0),
        )
        .await,
    ];
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 2).await;
    let caps: Vec<(String, usize)> = client
        .hosts()
        .into_iter()
        .map(|h| (h.id, h.capacity))
        .collect();
    assert_eq!(caps, [("js".to_owned(), 16), ("rb".to_owned(), 1)]);
    for _ in 0..4 {
        let r = client.execute("echo", json!({"x": 1})).await.unwrap();
        assert_eq!(r["echoed"]["x"], 1, "{r}");
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
    node_pool.shutdown().await.unwrap();
    ruby_pool.shutdown().await.unwrap();
}

/// docs/cluster.md:63-64: "Two clusters on one NATS do not see each other:
/// every subject is under `snakepit.<cluster>.`, and the service name is
/// `snakepit-<cluster>`."
///
/// A spy on every subject while a cluster `one` serves plain calls, a
/// session call, a stream past its window (credits), a dropped call (its
/// cancel) and a status request, while a client of a cluster `two` waits
/// for a host: every message on a `snakepit.` subject is under
/// `snakepit.one.`, those on service subjects name `snakepit-one`, and
/// `two`'s call never reaches `one`'s host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subject_of_a_cluster_is_under_its_name() {
    let nats = NatsServer::start().await;
    let spy = nats.connect().await;
    let mut all = subscribed(&spy, &[">"]).await.remove(0);
    let subjects = Arc::new(Mutex::new(Vec::<String>::new()));
    let reading = {
        let subjects = subjects.clone();
        tokio::spawn(async move {
            while let Some(m) = all.next().await {
                subjects.lock().unwrap().push(m.subject.to_string());
            }
        })
    };
    let conn = nats.connect().await;
    let pool = pool(1).await;
    let node =
        snakepit_cluster::serve_with(&conn, "one", pool.clone(), ServeOptions::new().host_id("h"))
            .await
            .unwrap();
    let one = snakepit_cluster::Client::connect(&conn, "one")
        .await
        .unwrap();
    wait_hosts(&one, 1).await;
    let mut config = ClientConfig::default();
    config.queue_timeout = Duration::from_millis(800);
    let two = snakepit_cluster::Client::connect_with(&nats.connect().await, "two", config)
        .await
        .unwrap();
    let waiting = {
        let two = two.clone();
        tokio::spawn(async move { two.execute("echo", json!({"cluster": "two"})).await })
    };
    one.execute("echo", json!({})).await.unwrap();
    one.execute_in_session("s", "echo", json!({}))
        .await
        .unwrap();
    let mut s = one
        .execute_stream("stream", json!({"n": 300}), CallOptions::new())
        .await
        .unwrap();
    let mut items = 0;
    while let Some(item) = s.next().await {
        item.unwrap();
        items += 1;
    }
    assert_eq!(items, 301, "300 chunks and the result");
    let long = {
        let one = one.clone();
        tokio::spawn(async move { one.execute("sleep", json!({"ms": 30_000})).await })
    };
    eventually(30, "the long call runs", || async {
        pool.stats().busy == 1
    })
    .await;
    long.abort();
    eventually(30, "the dropped call is cancelled on the host", || async {
        pool.stats().busy == 0
    })
    .await;
    assert_eq!(
        one.status(Duration::from_millis(300)).await.unwrap().len(),
        1
    );
    let e = waiting.await.unwrap().unwrap_err();
    assert!(matches!(e, Error::QueueTimeout(_)), "{e:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    reading.abort();
    let seen = subjects.lock().unwrap().clone();
    for kind in ["call", "cancel", "status"] {
        let subject = format!("snakepit.one.host.h.{kind}");
        assert!(seen.contains(&subject), "{subject} in {seen:?}");
    }
    assert!(seen.iter().any(|s| s == "snakepit.one.hb"));
    for s in &seen {
        if s.starts_with("snakepit.") {
            assert!(s.starts_with("snakepit.one."), "{s}");
        }
        if s.starts_with("$SRV.") {
            assert!(s.contains("snakepit-one"), "{s}");
        }
    }
    assert_eq!(pool.stats().requests, 4, "cluster two's call never came");
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}
