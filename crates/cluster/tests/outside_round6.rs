//! Round 6 of outside review of `snakepit-cluster`: a demanding user and an
//! attacker with access to the NATS server, against a real nats-server
//! (127.0.0.1, stopped with the test) and real Python workers
//! (`crates/core/tests/workers/test_worker.py`).
//!
//! Promises checked (docs/cluster.md):
//!
//! - Deployment: "A host ignores a call that comes to it again with the
//!   same reply subject (replayed on the bus) while it runs or after it
//!   ended, however long after". A call whose cancel overtook it ended
//!   there without running; a copy of it that comes later must not run
//!   either (it did: fixed in `host.rs`).
//! - Discovery and status: the host answers the service API's `PING`,
//!   `INFO` and `STATS` in each of their forms and its `status` endpoint,
//!   one answer per request, for a burst of requests sent at once, while
//!   it serves calls; a request with a body as large as the server lets
//!   through is answered like an empty one; a request for another service
//!   or another instance gets no answer from it.
//! - Security: a request whose reply subject is one of the cluster's own
//!   subjects (a host's call or cancel subject, the heartbeat subject),
//!   which a host may write, changes nothing: no call is cancelled, no
//!   host is taken for another, the host serves on.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use snakepit_cluster::{Client, ClientConfig, Node, ServeOptions};
use snakepit_core::{CallOptions, Pool};

/// Turns a hang into a failure (never a measure of speed).
const GUARD: Duration = Duration::from_secs(60);

async fn guarded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {GUARD:?}"))
}

/// Serves a pool of `workers` test workers on `conn` as host `id` of the
/// cluster `test`.
async fn serve_host(conn: &async_nats::Client, id: &str, workers: usize) -> (Pool, Node) {
    let pool = pool(workers).await;
    let options = ServeOptions::new()
        .host_id(id)
        .heartbeat(Duration::from_millis(100));
    let node = snakepit_cluster::serve_with(conn, "test", pool.clone(), options)
        .await
        .unwrap();
    (pool, node)
}

async fn stop(node: Node, pool: Pool) {
    guarded("the node's shutdown", node.shutdown())
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), pool.shutdown()).await;
}

fn echo(token: &str) -> String {
    json!({"command": "echo", "args": {"token": token}}).to_string()
}

/// Returns once host `a` has taken every cancel `raw` sent it before: it
/// takes the messages on its cancel subject in order, and answers a
/// question whether it declined a call (`?<reply subject>`) at once. (An
/// answer it had no room to send is asked for again.)
async fn cancels_taken(raw: &async_nats::Client) {
    for _ in 0..10 {
        let asked = raw.request("snakepit.test.host.a.cancel", "?r6.none.1".into());
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), asked).await {
            assert_eq!(&m.payload[..], br#"{"not_declined":{}}"#);
            return;
        }
    }
    panic!("host a never answered whether it declined a call");
}

/// Returns once host `a` has taken every call `raw` sent it before: it
/// takes the messages on its call subject in order, and answers one that
/// is not a call with a validation error at once.
async fn calls_taken(raw: &async_nats::Client) {
    let m = guarded(
        "the answer to a message that is not a call",
        raw.request("snakepit.test.host.a.call", "{}".into()),
    )
    .await
    .unwrap();
    let r: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(r["err"]["e"]["kind"], "validation", "{r}");
}

/// A cancel reaches the host before its call (the caller dropped the call
/// while its message was on its way), so the call is not run. The same
/// call message then comes again (replayed on the bus, or a duplicate):
/// it must not run then either, as no call runs twice and no dropped call
/// runs at all. A call on another reply subject, sent after both, runs:
/// the host serves on, and the replay was not merely slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_call_whose_cancel_overtook_it_never_runs() {
    let nats = NatsServer::start().await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 1).await;
    let raw = nats.connect().await;
    let mut spy = subscribed(&raw, &["r6.>"]).await.remove(0);
    raw.publish("snakepit.test.host.a.cancel", "r6.c.1".into())
        .await
        .unwrap();
    cancels_taken(&raw).await;
    for _ in 0..2 {
        raw.publish_with_reply(
            "snakepit.test.host.a.call",
            "r6.c.1",
            echo("cancelled").into(),
        )
        .await
        .unwrap();
    }
    raw.publish_with_reply("snakepit.test.host.a.call", "r6.c.2", echo("kept").into())
        .await
        .unwrap();
    raw.flush().await.unwrap();
    // Every message back, until the call without a cancel is answered and
    // a second has passed without another.
    let mut back = Vec::new();
    while !back.iter().any(|(s, _): &(String, Value)| s == "r6.c.2") {
        let m = guarded("the call without a cancel", spy.next())
            .await
            .unwrap();
        back.push((
            m.subject.to_string(),
            serde_json::from_slice(&m.payload).unwrap(),
        ));
    }
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), spy.next()).await {
        back.push((
            m.subject.to_string(),
            serde_json::from_slice(&m.payload).unwrap(),
        ));
    }
    assert_eq!(
        back.len(),
        1,
        "only the call without a cancel is answered: {back:?}"
    );
    assert_eq!(back[0].1["ok"]["v"]["echoed"]["token"], "kept", "{back:?}");
    assert_eq!(
        pool.stats().requests,
        1,
        "neither the cancelled call nor its copy ran"
    );
    stop(node, pool).await;
}

/// The service instance id host `a` answers the PING with.
async fn instance_of(raw: &async_nats::Client) -> String {
    let m = guarded(
        "the PING",
        raw.request("$SRV.PING.snakepit-test", "".into()),
    )
    .await
    .unwrap();
    let ping: Value = serde_json::from_slice(&m.payload).unwrap();
    ping["id"].as_str().unwrap().to_owned()
}

/// Every answer on `sub` until none has come for `quiet`, by subject.
async fn tally(
    sub: &mut async_nats::Subscriber,
    quiet: Duration,
) -> std::collections::BTreeMap<String, Vec<Value>> {
    let mut out = std::collections::BTreeMap::<String, Vec<Value>>::new();
    while let Ok(Some(m)) = tokio::time::timeout(quiet, sub.next()).await {
        // The server's own "no responders" notice (status 503, no body)
        // to a request nobody subscribes to: not an answer.
        if m.status.is_some() && m.payload.is_empty() {
            continue;
        }
        let v = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
        out.entry(m.subject.to_string()).or_default().push(v);
    }
    out
}

/// docs/cluster.md, "Discovery and status": the host answers `PING`,
/// `INFO` and `STATS` in each of their three forms, and its `status`
/// endpoint. Thirty requests of each of the ten subjects, sent at once
/// (300 in all), while 20 calls run: each request gets exactly one answer,
/// the one its subject asks for; requests for another service, another
/// instance of this one, or another host's status get none from it; every
/// call succeeds; and `STATS` then counts exactly the 30 status requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_service_api_requests_in_every_form_is_answered_once_each_while_calls_run() {
    let nats = NatsServer::start().await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 2).await;
    let raw = nats.connect().await;
    let id = instance_of(&raw).await;
    let client = Client::connect(&nats.connect().await, "test")
        .await
        .unwrap();
    wait_hosts(&client, 1).await;
    let mut answers = subscribed(&raw, &["r6.burst.>"]).await.remove(0);
    let mut subjects = Vec::new();
    for verb in ["PING", "INFO", "STATS"] {
        for subject in [
            format!("$SRV.{verb}"),
            format!("$SRV.{verb}.snakepit-test"),
            format!("$SRV.{verb}.snakepit-test.{id}"),
        ] {
            subjects.push((subject, Some(verb)));
        }
        for stranger in [
            format!("$SRV.{verb}.snakepit-other"),
            format!("$SRV.{verb}.snakepit-test.{id}x"),
            format!("$SRV.{verb}.snakepit-tes"),
        ] {
            subjects.push((stranger, None));
        }
    }
    subjects.push(("snakepit.test.host.a.status".to_owned(), Some("status")));
    subjects.push(("snakepit.test.host.b.status".to_owned(), None));
    let calls = futures_util::future::join_all((0..20).map(|i| {
        let client = client.clone();
        async move {
            client
                .execute_with(
                    "echo",
                    json!({"i": i}),
                    CallOptions::new().timeout(Duration::from_secs(60)),
                )
                .await
        }
    }));
    let burst = async {
        for round in 0..30 {
            for (n, (subject, _)) in subjects.iter().enumerate() {
                raw.publish_with_reply(subject.clone(), format!("r6.burst.{n}.{round}"), "".into())
                    .await
                    .unwrap();
            }
        }
        raw.flush().await.unwrap();
    };
    let (results, ()) = guarded("the calls and the burst", async {
        tokio::join!(calls, burst)
    })
    .await;
    for r in results {
        let r = r.expect("every call succeeds during the burst");
        assert!(r["echoed"]["i"].is_number(), "{r}");
    }
    let got = tally(&mut answers, Duration::from_secs(3)).await;
    for (n, (subject, asked)) in subjects.iter().enumerate() {
        for round in 0..30 {
            let reply = format!("r6.burst.{n}.{round}");
            let these = got.get(&reply).map_or(&[][..], Vec::as_slice);
            match asked {
                None => assert!(these.is_empty(), "{subject} is not the host's: {these:?}"),
                Some(verb) => {
                    assert_eq!(these.len(), 1, "{subject}: one answer each, got {these:?}");
                    let a = &these[0];
                    match *verb {
                        "status" => assert_eq!(a["host"], "a", "{subject}: {a}"),
                        v => {
                            let kind = format!("io.nats.micro.v1.{}_response", v.to_lowercase());
                            assert_eq!(a["type"], kind.as_str(), "{subject}: {a}");
                            assert_eq!(a["id"], id.as_str(), "{subject}: {a}");
                        }
                    }
                }
            }
        }
    }
    let m = guarded("STATS", raw.request("$SRV.STATS.snakepit-test", "".into()))
        .await
        .unwrap();
    let stats: async_nats::service::Stats = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(
        stats.endpoints[0].requests, 30,
        "STATS counts the status endpoint's requests, and only those"
    );
    stop(node, pool).await;
}

/// A service API request or status request whose body is as large as the
/// server lets through (its `max_payload`, 64 KiB here) is answered as an
/// empty one is: the body is not the request's business, and a large one
/// neither costs the host its connection nor stops it answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_api_requests_with_bodies_at_max_payload_are_answered() {
    let nats = NatsServer::start_with_config("max_payload: 65536\n").await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 1).await;
    let raw = nats.connect().await;
    assert_eq!(raw.max_payload(), 65536);
    // The request's subject and reply count too; leave room for them.
    let body = bytes::Bytes::from(vec![b'x'; 65536 - 256]);
    for subject in [
        "$SRV.PING.snakepit-test",
        "$SRV.INFO.snakepit-test",
        "$SRV.STATS.snakepit-test",
        "snakepit.test.host.a.status",
    ] {
        let m = guarded(subject, raw.request(subject, body.clone()))
            .await
            .unwrap_or_else(|e| panic!("{subject}: {e}"));
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        assert!(
            v["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("io.nats.micro.v1."))
                || v["host"] == "a",
            "{subject}: {v}"
        );
    }
    let client = Client::connect(&nats.connect().await, "test")
        .await
        .unwrap();
    let found = client.status(Duration::from_secs(2)).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let r = client
        .execute_with(
            "echo",
            json!({"after": "big requests"}),
            CallOptions::new().timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(r["echoed"]["after"], "big requests");
    stop(node, pool).await;
}

/// docs/cluster.md, "Security": a host answers any reply subject a client
/// can have, and the cluster's own subjects are such subjects: a caller
/// may aim the host's service API and status answers at the host's call
/// and cancel subjects, another host's call subject and the heartbeat
/// subject, which the host itself may write. None of that may change
/// anything: a call running on the host is not cancelled and ends with its
/// result, the client hears of no other host and keeps hearing this one,
/// and the host serves the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_answers_aimed_at_the_clusters_own_subjects_change_nothing() {
    let nats = NatsServer::start().await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 1).await;
    let raw = nats.connect().await;
    let id = instance_of(&raw).await;
    let mut c = ClientConfig::default();
    c.host_timeout = Duration::from_secs(5);
    let client = Client::connect_with(&nats.connect().await, "test", c)
        .await
        .unwrap();
    wait_hosts(&client, 1).await;
    let running = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .execute_with(
                    "sleep",
                    json!({"ms": 1500, "token": "long"}),
                    CallOptions::new().timeout(Duration::from_secs(60)),
                )
                .await
        })
    };
    eventually(30, "the long call runs", || async {
        pool.stats().busy == 1
    })
    .await;
    let mut asked = Vec::new();
    for verb in ["PING", "INFO", "STATS"] {
        asked.push(format!("$SRV.{verb}"));
        asked.push(format!("$SRV.{verb}.snakepit-test"));
        asked.push(format!("$SRV.{verb}.snakepit-test.{id}"));
    }
    asked.push("snakepit.test.host.a.status".to_owned());
    for subject in &asked {
        for reply in [
            "snakepit.test.hb",
            "snakepit.test.host.a.cancel",
            "snakepit.test.host.a.call",
            "snakepit.test.host.b.call",
        ] {
            raw.publish_with_reply(subject.clone(), reply, "".into())
                .await
                .unwrap();
        }
    }
    raw.flush().await.unwrap();
    let r = guarded("the long call", running)
        .await
        .unwrap()
        .expect("the running call is not cancelled by answers on the cancel subject");
    assert_eq!(r["token"], "long");
    let hosts: Vec<String> = client.hosts().into_iter().map(|h| h.id).collect();
    assert_eq!(
        hosts,
        ["a"],
        "no answer on the heartbeat subject is taken for a host"
    );
    let r = client
        .execute_with(
            "echo",
            json!({"next": 1}),
            CallOptions::new().timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(r["echoed"]["next"], 1);
    assert_eq!(pool.stats().requests, 2, "only the two calls ran");
    stop(node, pool).await;
}

/// Ends each of `replies` on host `a` without running it: its cancel
/// first, then its call, which the cancel overtook.
async fn end_early(raw: &async_nats::Client, replies: &[String]) {
    for chunk in replies.chunks(1000) {
        for reply in chunk {
            raw.publish("snakepit.test.host.a.cancel", reply.clone().into())
                .await
                .unwrap();
        }
        cancels_taken(raw).await;
        for reply in chunk {
            raw.publish_with_reply(
                "snakepit.test.host.a.call",
                reply.clone(),
                echo("early").into(),
            )
            .await
            .unwrap();
        }
        calls_taken(raw).await;
    }
}

/// docs/cluster.md, Deployment: a host ignores a call that comes again
/// "however long after: it keeps the last 4,096 reply subjects, and for
/// older calls, per client, the highest call number it has forgotten",
/// for the 4,096 clients whose calls it forgot last.
///
/// Eight clients (`r6.v0` ... `r6.v7`) each have a call forgotten, then
/// 4,088 other clients, then each its second call (so they are the
/// clients whose calls were forgotten last), then 4,000 more new clients,
/// each of which takes the place of another in the host's record. The
/// calls end on the host without running (each cancel overtakes its
/// call), so no worker is needed for the 12,000. Replays of the eight
/// clients' first calls must all still be ignored: the clients that make
/// room are those forgotten longest ago, not ones whose calls still come
/// (the host used to drop whichever its hash map listed first, which
/// reached one of the eight in nearly every run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_ignored_for_the_clients_forgotten_last_however_many_came_since() {
    let nats = NatsServer::start().await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 1).await;
    let raw = nats.connect().await;
    let mut spy = subscribed(&raw, &["r6.>"]).await.remove(0);
    let clients = |name: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("r6.{name}{i}.1")).collect()
    };
    let victims =
        |call: u32| -> Vec<String> { (0..8).map(|j| format!("r6.v{j}.{call}")).collect() };
    end_early(&raw, &victims(1)).await;
    end_early(&raw, &clients("s", 4088)).await;
    // Forgets the victims' first calls (4,096 calls ended after them).
    end_early(&raw, &victims(2)).await;
    // Forgets the 4,088 others: the record is full.
    end_early(&raw, &clients("t", 4088)).await;
    // Forgets the victims' second calls, then 4,000 new clients, each
    // taking a place.
    end_early(&raw, &clients("u", 4008)).await;
    for reply in victims(1).into_iter().chain(victims(2)) {
        raw.publish_with_reply("snakepit.test.host.a.call", reply, echo("replayed").into())
            .await
            .unwrap();
    }
    raw.publish_with_reply("snakepit.test.host.a.call", "r6.w.1", echo("fresh").into())
        .await
        .unwrap();
    let mut back = Vec::new();
    while !back.iter().any(|(s, _): &(String, Value)| s == "r6.w.1") {
        let m = guarded("the fresh call", spy.next()).await.unwrap();
        back.push((
            m.subject.to_string(),
            serde_json::from_slice(&m.payload).unwrap(),
        ));
    }
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(1), spy.next()).await {
        back.push((
            m.subject.to_string(),
            serde_json::from_slice(&m.payload).unwrap(),
        ));
    }
    assert_eq!(
        back.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>(),
        ["r6.w.1"],
        "only the fresh call runs, no replay: {back:?}"
    );
    assert_eq!(pool.stats().requests, 1);
    stop(node, pool).await;
}

/// docs/cluster.md, Security: "a host answers no reply subject a client
/// cannot have: one over 512 bytes, with a wildcard, a space or a control
/// character, or a system subject ... The same holds for the NATS service
/// API's PING, INFO and STATS, in each of their forms". Round 5 showed it
/// for a session's key; here each of the other kinds NATS can carry as a
/// request's reply subject, for the nine service API subjects and the
/// status endpoint: none is answered, while the same request with a
/// 512-byte reply subject is, and the host serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_api_requests_with_reply_subjects_no_client_can_have_get_no_answer() {
    let nats = NatsServer::start().await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 1).await;
    let raw = nats.connect().await;
    let id = instance_of(&raw).await;
    let mut spy = subscribed(&raw, &["r6.>", "$SYS.r6.>", "$JS.API.r6.>"])
        .await
        .into_iter();
    let mut spy = futures_util::stream::select_all([
        spy.next().unwrap(),
        spy.next().unwrap(),
        spy.next().unwrap(),
    ]);
    let mut asked = vec!["snakepit.test.host.a.status".to_owned()];
    for verb in ["PING", "INFO", "STATS"] {
        asked.push(format!("$SRV.{verb}"));
        asked.push(format!("$SRV.{verb}.snakepit-test"));
        asked.push(format!("$SRV.{verb}.snakepit-test.{id}"));
    }
    for (n, subject) in asked.iter().enumerate() {
        let prefix = format!("r6.{n}.");
        let too_long = format!("{prefix}{}", "x".repeat(513 - prefix.len()));
        let longest = format!("{prefix}{}", "y".repeat(512 - prefix.len()));
        assert_eq!((too_long.len(), longest.len()), (513, 512));
        let refused = [
            too_long,
            format!("r6.{n}.a\u{7f}b"),
            format!("$SYS.r6.{n}"),
            format!("$JS.API.r6.{n}"),
        ];
        for reply in refused.iter().chain([&longest]) {
            raw.publish_with_reply(subject.clone(), reply.clone(), "".into())
                .await
                .unwrap();
        }
        raw.flush().await.unwrap();
        let m = guarded(subject, spy.next()).await.unwrap();
        assert_eq!(
            m.subject.as_str(),
            longest,
            "{subject}: only the 512-byte reply subject is answered"
        );
    }
    let more = count_any(&mut spy, Duration::from_secs(1)).await;
    assert_eq!(more, 0, "no other answer");
    let client = Client::connect(&nats.connect().await, "test")
        .await
        .unwrap();
    let r = client
        .execute_with(
            "echo",
            json!({"after": "hostile replies"}),
            CallOptions::new().timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert_eq!(r["echoed"]["after"], "hostile replies");
    stop(node, pool).await;
}

/// Messages on `s` until none comes for `quiet`.
async fn count_any(
    s: &mut (impl futures_util::Stream<Item = async_nats::Message> + Unpin),
    quiet: Duration,
) -> usize {
    let mut n = 0;
    while let Ok(Some(m)) = tokio::time::timeout(quiet, s.next()).await {
        eprintln!("unexpected: {} {:?}", m.subject, m.payload);
        n += 1;
    }
    n
}

/// A connection to a NATS server that is not there yet, as a host or a
/// caller started before NATS makes it (`retry_on_initial_connect`).
async fn connect_later(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .reconnect_delay_callback(|n| Duration::from_millis(50 * (n as u64).min(10)))
        .connect(url)
        .await
        .unwrap()
}

/// docs/cluster.md, Failures: "the NATS connection is down: new calls ...
/// fail at once with the unavailable error (never sent)" and "NATS is
/// back: calls work again as soon as the client's connection is back ...
/// nothing is restarted". Here NATS is down from the start: a host serves
/// and a client connects on connections still being made (a host or a
/// caller that starts before NATS, with async-nats's
/// `retry_on_initial_connect`). A call made then fails with the
/// unavailable error, never sent; once NATS is up, the client hears the
/// host, a call runs there, `status` finds it, and no call ran twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_and_a_client_made_before_nats_is_up_work_once_it_is() {
    let mut nats = NatsServer::start().await;
    nats.kill();
    let pool = pool(1).await;
    let host_conn = connect_later(&nats.url).await;
    let node = guarded(
        "serve on a connection not made yet",
        snakepit_cluster::serve_with(
            &host_conn,
            "test",
            pool.clone(),
            ServeOptions::new()
                .host_id("early")
                .heartbeat(Duration::from_millis(100)),
        ),
    )
    .await
    .expect("serve does not need NATS to be up");
    let client = guarded(
        "a client on a connection not made yet",
        Client::connect(&connect_later(&nats.url).await, "test"),
    )
    .await
    .expect("Client::connect does not need NATS to be up");
    let e = guarded(
        "a call while NATS is down",
        client.execute_with(
            "echo",
            json!({"n": 0}),
            CallOptions::new().timeout(Duration::from_secs(30)),
        ),
    )
    .await
    .unwrap_err();
    assert!(snakepit_cluster::is_unavailable(&e), "{e:?}");
    assert!(e.never_ran(), "{e:?}");
    nats.restart().await;
    eventually(60, "the client hears the host once NATS is up", || async {
        client.hosts().iter().any(|h| h.id == "early")
    })
    .await;
    let r = guarded(
        "a call once NATS is up",
        client.execute_with(
            "echo",
            json!({"n": 1}),
            CallOptions::new().timeout(Duration::from_secs(30)),
        ),
    )
    .await
    .unwrap();
    assert_eq!(r["echoed"]["n"], 1);
    let found = client.status(Duration::from_secs(2)).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["host"], "early");
    assert_eq!(
        pool.stats().requests,
        1,
        "the call made while NATS was down never ran"
    );
    stop(node, pool).await;
}

/// A host of cluster `cluster` (id `x`) whose pool keeps its sessions in
/// the NATS KV bucket `bucket`.
async fn kv_host(nats: &NatsServer, cluster: &str, bucket: &str) -> (Pool, Node) {
    let conn = nats.connect().await;
    let store = std::sync::Arc::new(
        snakepit_cluster::NatsKvStore::builder(&conn)
            .bucket(bucket)
            .sweep_interval(Duration::from_secs(3600))
            .connect()
            .await
            .unwrap(),
    );
    let pool = snakepit_session::attach(Pool::builder(TestWorker), store)
        .size(1)
        .configure(|c| {
            c.sweep_on_start = false;
            c.shutdown_grace_period = Duration::from_millis(300);
        })
        .start()
        .await
        .unwrap();
    let node = snakepit_cluster::serve_with(
        &conn,
        cluster,
        pool.clone(),
        ServeOptions::new()
            .host_id("x")
            .heartbeat(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    (pool, node)
}

/// docs/cluster.md, Deployment: "Two clusters on one NATS do not see each
/// other: every subject is under `snakepit.<cluster>.`". The sessions
/// bucket is not under it: `NatsKvStore`'s bucket is the store's own
/// setting (`snakepit_sessions` by default), so two clusters whose stores
/// use the default share their sessions, and a session id used in both
/// is one session (docs now say so). With a bucket of its own per cluster
/// they are apart: a value a session keeps in one cluster is not in the
/// session of the same id in the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_on_one_nats_keep_sessions_apart_only_in_buckets_of_their_own() {
    let nats = NatsServer::start().await;
    for (one_bucket, two_bucket, shared) in [
        ("snakepit_sessions", "snakepit_sessions", true),
        ("sessions_one", "sessions_two", false),
    ] {
        let (pool_one, node_one) = kv_host(&nats, "one", one_bucket).await;
        let (pool_two, node_two) = kv_host(&nats, "two", two_bucket).await;
        let conn = nats.connect().await;
        let one = Client::connect(&conn, "one").await.unwrap();
        let two = Client::connect(&conn, "two").await.unwrap();
        wait_hosts(&one, 1).await;
        wait_hosts(&two, 1).await;
        let session = format!("user-{shared}");
        let opts = || {
            CallOptions::new()
                .session(session.clone())
                .timeout(Duration::from_secs(60))
        };
        one.execute_with("remember", json!({"key": "k", "value": "one's"}), opts())
            .await
            .unwrap();
        let r = two
            .execute_with("recall", json!({"key": "k"}), opts())
            .await
            .unwrap();
        if shared {
            assert_eq!(r["value"], "one's", "the default bucket is shared: {r}");
        } else {
            assert_eq!(r["value"], Value::Null, "buckets of their own: {r}");
        }
        stop(node_one, pool_one).await;
        stop(node_two, pool_two).await;
    }
}

/// The documented permissions (docs/cluster.md, "Security") for host `a`
/// of the cluster `test`, with a caller that may not send the service
/// PING: its `publish` lacks `$SRV.PING.snakepit-test`.
const CALLER_WITHOUT_PING: &str = r#"
authorization {
  users = [
    {user: host, password: hostpw, permissions: {
      publish: ["snakepit.test.hb", "_INBOX.>", "$JS.API.>", "$KV.snakepit_sessions.>"],
      subscribe: ["snakepit.test.host.a.>", "$SRV.>", "_INBOX.>"]}}
    {user: caller, password: callerpw, permissions: {
      publish: ["snakepit.test.host.*.call", "snakepit.test.host.*.cancel",
                "snakepit.test.host.*.status"],
      subscribe: ["_INBOX.caller.>", "snakepit.test.hb"]}}
  ]
}
"#;

/// docs/cluster.md, Security: "A caller without `$SRV.PING...` in its
/// `publish` finds no host with `Client::status`, and can still call."
/// Its `status` returns an empty list (the server refuses the PING; no
/// error, no hang), and its calls, before and after, run; the refusal does
/// not cost it its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_may_not_ping_finds_no_host_with_status_and_still_calls() {
    let nats = NatsServer::start_with_config(CALLER_WITHOUT_PING).await;
    let host_conn =
        async_nats::ConnectOptions::with_user_and_password("host".into(), "hostpw".into())
            .connect(&nats.url)
            .await
            .unwrap();
    let (pool, node) = serve_host(&host_conn, "a", 1).await;
    let caller =
        async_nats::ConnectOptions::with_user_and_password("caller".into(), "callerpw".into())
            .custom_inbox_prefix("_INBOX.caller")
            .connect(&nats.url)
            .await
            .unwrap();
    let client = Client::connect(&caller, "test").await.unwrap();
    wait_hosts(&client, 1).await;
    let call = |n: u32| {
        let client = client.clone();
        async move {
            guarded(
                "a call",
                client.execute_with(
                    "echo",
                    json!({"n": n}),
                    CallOptions::new().timeout(Duration::from_secs(60)),
                ),
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(call(1).await["echoed"]["n"], 1);
    let found = guarded("status", client.status(Duration::from_millis(500)))
        .await
        .expect("status is not an error for a caller that may not PING");
    assert!(found.is_empty(), "{found:?}");
    // The host itself answers its status endpoint to this caller, which
    // may ask it: only the PING is refused.
    let asked = guarded(
        "the status endpoint",
        caller.request("snakepit.test.host.a.status", "".into()),
    )
    .await
    .unwrap();
    let status: Value = serde_json::from_slice(&asked.payload).unwrap();
    assert_eq!(status["host"], "a", "{status}");
    assert_eq!(call(2).await["echoed"]["n"], 2);
    assert_eq!(
        caller.connection_state(),
        async_nats::connection::State::Connected
    );
    stop(node, pool).await;
}

/// Sends `ops` (raw NATS protocol) to the server on a connection of its
/// own, as a peer that may publish anything would; returns once the server
/// has taken them (its answer to a `PING` after them).
async fn raw_protocol(port: u16, ops: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let _info = s.read(&mut buf).await.unwrap();
    s.write_all(
        b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"protocol\":1}\r\n",
    )
    .await
    .unwrap();
    s.write_all(ops).await.unwrap();
    s.write_all(b"PING\r\n").await.unwrap();
    let mut seen = Vec::new();
    guarded("the server's PONG", async {
        while !seen.windows(4).any(|w| w == b"PONG") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "the server closed: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
}

/// docs/cluster.md, Security, its one stated exception: any peer that may
/// publish on a host's call or cancel subject, or on `$SRV.PING`, can give
/// its message a reply subject, or a header, that is not UTF-8 (NATS
/// carries bytes). async-nats, which the host reads its connection with,
/// takes such a message as a broken connection and makes it again: a
/// reset of the host, as in "Failures". What the docs promise of a reset
/// holds: the call in flight ends (with its result, or the host-lost
/// error), never hangs, never runs twice; the host serves the next call.
/// If async-nats stops dropping the connection, the count of connections
/// made shows it, and the docs' exception can go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_is_not_utf8_on_a_hosts_subjects_is_a_reset_it_recovers_from() {
    let nats = NatsServer::start().await;
    let host_conn = nats.connect().await;
    let (pool, node) = serve_host(&host_conn, "a", 1).await;
    let connects = || {
        host_conn
            .statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(connects(), 1);
    let mut c = ClientConfig::default();
    c.host_timeout = Duration::from_secs(5);
    let client = Client::connect_with(&nats.connect().await, "test", c)
        .await
        .unwrap();
    wait_hosts(&client, 1).await;
    let running = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .execute_with(
                    "sleep",
                    json!({"ms": 4000, "token": "long"}),
                    CallOptions::new().timeout(Duration::from_secs(60)),
                )
                .await
        })
    };
    eventually(30, "the long call runs", || async {
        pool.stats().busy == 1
    })
    .await;
    let header = b"NATS/1.0\r\nx: \xff\r\n\r\n";
    let mut with_header = format!(
        "HPUB snakepit.test.host.a.call r6.h {} {}\r\n",
        header.len(),
        header.len() + 2
    )
    .into_bytes();
    with_header.extend_from_slice(header);
    with_header.extend_from_slice(b"{}\r\n");
    let hostile: [(&str, Vec<u8>); 4] = [
        (
            "a call with a reply subject that is not UTF-8",
            b"PUB snakepit.test.host.a.call r6.\xff\xfe 2\r\n{}\r\n".to_vec(),
        ),
        (
            "a cancel with a reply subject that is not UTF-8",
            b"PUB snakepit.test.host.a.cancel r6.\xff 1\r\nx\r\n".to_vec(),
        ),
        (
            "a service PING with a reply subject that is not UTF-8",
            b"PUB $SRV.PING r6.\xff 0\r\n\r\n".to_vec(),
        ),
        ("a call with a header that is not UTF-8", with_header),
    ];
    let mut remade = Vec::new();
    for (what, ops) in &hostile {
        let before = connects();
        raw_protocol(nats.port, ops).await;
        // What the host's connection read meanwhile, it has read by the
        // time its own round trip to the server is back.
        let _ = tokio::time::timeout(Duration::from_secs(5), host_conn.flush()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if connects() != before {
            remade.push(*what);
        }
        eventually(30, "the host's connection is up", || async {
            host_conn.connection_state() == async_nats::connection::State::Connected
        })
        .await;
    }
    let r = guarded("the long call", running).await.unwrap();
    match &r {
        Ok(v) => assert_eq!(v["token"], "long"),
        Err(e) => assert!(
            snakepit_cluster::is_host_lost(e),
            "the call in flight across resets ({remade:?}): {e:?}"
        ),
    }
    assert_eq!(
        pool.stats().completed,
        1,
        "the long call ran once (resets after: {remade:?})"
    );
    eventually(30, "the host is back", || async {
        client.hosts().len() == 1
    })
    .await;
    let next = guarded(
        "a call after the resets",
        client.execute_with(
            "sleep",
            json!({"ms": 1, "token": "next"}),
            CallOptions::new().timeout(Duration::from_secs(60)),
        ),
    )
    .await;
    assert_eq!(next.unwrap()["token"], "next", "resets after: {remade:?}");
    stop(node, pool).await;
}

/// `Client::hosts` (docs/cluster.md, "Discovery and status"): the hosts
/// this client may send calls to. A host shutting down gracefully still
/// sends heartbeats (its goodbyes) while its call runs, yet takes no call:
/// it is left out as soon as the client hears its goodbye, and its call
/// still ends with its result. Another host stays listed throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_leaves_out_a_host_saying_goodbye_while_its_call_runs() {
    let nats = NatsServer::start().await;
    let (pool_a, node_a) = serve_host(&nats.connect().await, "a", 1).await;
    let (pool_b, node_b) = serve_host(&nats.connect().await, "b", 1).await;
    let client = Client::connect(&nats.connect().await, "test")
        .await
        .unwrap();
    wait_hosts(&client, 2).await;
    let running = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .execute_with(
                    "sleep",
                    json!({"ms": 3000, "token": "long"}),
                    CallOptions::new().timeout(Duration::from_secs(60)),
                )
                .await
        })
    };
    // The host the call runs on leaves; the other stays.
    let ((busy_pool, busy), (other_pool, other)) = loop {
        if pool_a.stats().busy == 1 {
            break ((pool_a, node_a), (pool_b, node_b));
        }
        if pool_b.stats().busy == 1 {
            break ((pool_b, node_b), (pool_a, node_a));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let leaving = busy.id().to_owned();
    let staying = other.id().to_owned();
    let shutdown = tokio::spawn(busy.shutdown());
    eventually(30, "the leaving host is left out", || async {
        let ids: Vec<String> = client.hosts().into_iter().map(|h| h.id).collect();
        !ids.contains(&leaving)
    })
    .await;
    let ids: Vec<String> = client.hosts().into_iter().map(|h| h.id).collect();
    assert_eq!(ids, [staying], "the other host stays listed");
    assert!(
        !running.is_finished(),
        "left out while its call still runs (a 3 s call)"
    );
    let r = guarded("the leaving host's call", running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r["token"], "long");
    guarded("the shutdown", shutdown).await.unwrap().unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), busy_pool.shutdown()).await;
    stop(other, other_pool).await;
}

/// A client on a runtime of its own thread, whose only thread stops
/// running anything for twice the host timeout (1 s) `wait_ms` after a
/// call of `call_ms` was made on host `a`: no message is read and no timer
/// fires meanwhile, as when a caller's code blocks the runtime, the
/// process is stopped (SIGSTOP) or the machine is starved. The call's
/// outcome, and the hosts the client lists afterwards.
async fn stalled_client(
    url: String,
    call_ms: u64,
    wait_ms: u64,
) -> (Result<Value, snakepit_core::Error>, Vec<String>) {
    let outcome = tokio::task::spawn_blocking(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let conn = async_nats::connect(&url).await.unwrap();
            let mut c = ClientConfig::default();
            c.host_timeout = Duration::from_secs(1);
            let client = Client::connect_with(&conn, "test", c).await.unwrap();
            wait_hosts(&client, 1).await;
            let call = {
                let client = client.clone();
                tokio::spawn(async move {
                    client
                        .execute_with(
                            "sleep",
                            json!({"ms": call_ms, "token": "ran"}),
                            CallOptions::new().timeout(Duration::from_secs(60)),
                        )
                        .await
                })
            };
            tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            std::thread::sleep(Duration::from_secs(2));
            let r = tokio::time::timeout(GUARD, call).await.unwrap().unwrap();
            let hosts: Vec<String> = client.hosts().into_iter().map(|h| h.id).collect();
            (r, hosts)
        })
    });
    guarded("the stalled client", outcome).await.unwrap()
}

/// docs/cluster.md, "How a call travels": a call fails with the host-lost
/// error when its host is "neither acknowledged nor answered within
/// `host_timeout`", or "one host timeout after it last spoke". Here the
/// host never stops speaking: the client does not listen for a while (see
/// [`stalled_client`]). Its 1 s call, sent just before the stall, runs and
/// ends on the live host while the client stalls; once the client runs
/// again, the host's acknowledgement, heartbeats and outcome are there to
/// read: the call must end with its result, not with the host-lost error
/// (a call that ran, reported as one that may not have, invites its
/// caller to run it twice), and the host is not taken for lost. (The
/// client failed the call with "did not acknowledge the call within 1s";
/// fixed in `client.rs`: time the client did not run is not counted as
/// the host's silence.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_runtime_stalled_takes_the_outcome_its_live_host_sent_meanwhile() {
    let nats = NatsServer::start().await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 1).await;
    let (r, hosts) = stalled_client(nats.url.clone(), 1000, 5).await;
    assert_eq!(
        r.expect("the outcome the live host sent while the client stalled")["token"],
        "ran"
    );
    assert_eq!(hosts, ["a"], "the live host is not lost");
    assert_eq!(pool.stats().requests, 1);
    stop(node, pool).await;
}

/// As above, with a 3 s call that was acknowledged before the client
/// stalled and still runs when it runs again: the host's heartbeats sent
/// meanwhile say it lives, so the call waits on and ends with its result.
/// (The client failed it with "stopped answering (no heartbeat for 1s)".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_runtime_stalled_waits_on_for_a_call_its_live_host_still_runs() {
    let nats = NatsServer::start().await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 1).await;
    let (r, hosts) = stalled_client(nats.url.clone(), 3000, 300).await;
    assert_eq!(
        r.expect("the call its live host still ran when the client ran again")["token"],
        "ran"
    );
    assert_eq!(hosts, ["a"], "the live host is not lost");
    assert_eq!(pool.stats().requests, 1);
    stop(node, pool).await;
}

/// The other side of the two tests above: time the client did not run is
/// not counted as silence, but a host that really fell silent meanwhile is
/// still found lost once the client runs again. The host stops serving
/// (its node dropped: no heartbeat, no outcome) while the client stalls
/// with a 5 s call on it; the call ends with the host-lost error (never
/// hangs, never succeeds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_fell_silent_while_its_client_stalled_is_still_found_lost() {
    let nats = NatsServer::start().await;
    let (pool, node) = serve_host(&nats.connect().await, "a", 1).await;
    let dropper = {
        let pool = pool.clone();
        tokio::spawn(async move {
            eventually(30, "the call runs", || async { pool.stats().busy == 1 }).await;
            drop(node);
        })
    };
    let (r, hosts) = stalled_client(nats.url.clone(), 5000, 300).await;
    guarded("the node's drop", dropper).await.unwrap();
    let e = r.expect_err("no outcome from a host that fell silent");
    assert!(snakepit_cluster::is_host_lost(&e), "{e:?}");
    assert!(hosts.is_empty(), "{hosts:?}");
    let _ = tokio::time::timeout(Duration::from_secs(10), pool.shutdown()).await;
}

/// docs/cluster.md, Failures: "A host none of whose workers can start ...
/// says why in its heartbeats (`Pool::start_failure`). When every host
/// there is says so, a call fails at once with that `Error::StartFailed`
/// (its cause and stderr tail ...)". The worker here logs long lines (40
/// JSON lines of 1.5 KB, as a worker logging JSON might) before it exits
/// at start: the stderr tail the pool keeps (its last 40 lines) is about
/// 60 KB, and the heartbeat carried it twice (in the error's text and as
/// its tail), past the 64 KiB a client takes a start failure from, so the
/// client dropped it and the call waited out its queue timeout
/// (`Error::QueueTimeout`), the start failure lost. A host now bounds the
/// start failure its heartbeat carries, keeping the end of the stderr
/// tail, where the cause most often is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_failure_with_a_long_stderr_tail_still_reaches_the_caller() {
    let nats = NatsServer::start().await;
    let marker = std::env::temp_dir().join(format!(
        "snakepit-round6-broken-{}-{}",
        std::process::id(),
        free_port()
    ));
    let _ = std::fs::remove_file(&marker);
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workers/round6_noisy_worker.py");
    let pool = Pool::builder(ScriptWorker(script))
        .worker_env("ROUND6_BROKEN", &marker)
        .size(1)
        .configure(|c| {
            c.sweep_on_start = false;
            c.shutdown_grace_period = Duration::from_millis(300);
            c.breaker_threshold = 1;
            c.breaker_cooldown = Duration::from_secs(120);
            c.restart_backoff = Duration::from_millis(10);
        })
        .start()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let node = snakepit_cluster::serve_with(
        &nats.connect().await,
        "test",
        pool.clone(),
        ServeOptions::new()
            .host_id("noisy")
            .heartbeat(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    let mut c = ClientConfig::default();
    c.queue_timeout = Duration::from_secs(8);
    let client = Client::connect_with(&nats.connect().await, "test", c)
        .await
        .unwrap();
    wait_hosts(&client, 1).await;
    // A worker that lived over a second crashes (its replacement's failed
    // start then opens the breaker), rather than failing its own start.
    let lived = started.elapsed();
    if lived < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(1500) - lived).await;
    }
    let crashed = guarded("the crashing call", pool.execute("crash", json!({}))).await;
    assert!(crashed.is_err(), "{crashed:?}");
    eventually(60, "the host's workers cannot start", || async {
        pool.start_failure().is_some()
    })
    .await;
    let local = pool.start_failure().unwrap();
    // The client hears of it with the host's next heartbeats.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let e = guarded(
        "a cluster call",
        client.execute_with(
            "echo",
            json!({}),
            CallOptions::new().timeout(Duration::from_secs(30)),
        ),
    )
    .await
    .expect_err("no worker can start to run it");
    let _ = std::fs::remove_file(&marker);
    stop(node, pool).await;
    let (snakepit_core::Error::StartFailed(remote), snakepit_core::Error::StartFailed(local)) =
        (&e, &local)
    else {
        panic!("the caller gets the start failure, not {e:?}");
    };
    assert_eq!(remote.worker_id, local.worker_id);
    assert_eq!(remote.cause, local.cause);
    assert!(
        remote
            .stderr_tail
            .ends_with("round6_noisy_worker: the last line"),
        "the end of the stderr tail: {:?}",
        &remote.stderr_tail[remote.stderr_tail.len().saturating_sub(200)..]
    );
    assert!(e.never_ran(), "{e:?}");
}
