//! Round 5 of outside review of `snakepit-cluster`: a demanding user and an
//! attacker with access to the NATS server, against a real nats-server
//! (127.0.0.1) and real Python workers (`crates/core/tests/workers/
//! test_worker.py`).
//!
//! Promises checked (docs/cluster.md):
//!
//! - Discovery and status: `Client::status` asks the hosts that answer the
//!   service PING. Anyone who may publish on the client's inbox can answer
//!   that PING, as often as it likes, naming any host: each named host is
//!   asked once, at most `MAX_HOSTS` names the client has not heard
//!   heartbeats from, and the hosts it hears from are still reported. The
//!   host's answers to the service API's PING, INFO and STATS are the
//!   micro protocol's documents (as async-nats's types read them).
//! - Cancellation: "So does a call that ended without its host's outcome
//!   (... the host-lost error when the host fell silent ...), so that a host
//!   that was only cut off does not keep a worker busy with a call nobody
//!   waits for." Here the host falls silent because its process is stopped
//!   (SIGSTOP), then resumes (SIGCONT).
//! - Saturation: "A cluster with no host at all is a cluster with no room:
//!   calls wait": a call made before any host exists runs on the first host
//!   that joins within its queue timeout.
//! - Failures: a host SIGKILLed with a stream in flight ends that stream
//!   with the host-lost error after the chunks that came, never with a
//!   result, and the call is not run again elsewhere. A session whose host
//!   is SIGKILLed goes to another host in every affinity mode, with its
//!   data (NATS KV). A host shut down while NATS is gone returns.
//! - Security: "a caller cannot have a host write where the caller may
//!   not, with the host's permissions", under the documented permissions:
//!   through the status endpoint and through the service API's PING, INFO
//!   and STATS in each of their forms (both fixed), and with the store on
//!   a NATS user of its own.
//! - Sizes: at the `max_payload` boundary a call the client sends is
//!   carried and one byte more is `Error::Validation`; a stream's chunk
//!   over it ends the stream with `Error::Codec`.
//! - Deadlines and cancellation in the host's pool queue (the prefetch):
//!   the deadline holds there, and a dropped call never starts.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use snakepit_cluster::{is_host_lost, Client, ClientConfig, Node, ServeOptions, MAX_HOSTS};
use snakepit_core::{CallOptions, Pool, StreamItem};

/// Turns a hang into a failure (never a measure of speed).
const GUARD: Duration = Duration::from_secs(60);

async fn guarded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {GUARD:?}"))
}

/// Not a test of its own: the body of the host processes.
#[test]
fn round5_host_process() {
    host_main();
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a host process this test started and has not reaped.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Serves a pool of `workers` test workers on `conn` as host `id`.
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
    drop(node);
    let _ = tokio::time::timeout(Duration::from_secs(10), pool.shutdown()).await;
}

fn config(host_timeout: Duration, queue_timeout: Duration) -> ClientConfig {
    let mut c = ClientConfig::default();
    c.host_timeout = host_timeout;
    c.queue_timeout = queue_timeout;
    c
}

/// A forger answers every status PING with `MAX_HOSTS + 500` answers, each
/// naming a host no one runs, plus 500 answers naming one of them again,
/// while one real host serves. `status` must ask each named host at most
/// once, ask at most `MAX_HOSTS` hosts the client has never heard from,
/// and still report the real host, which it hears heartbeats from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forged_ping_answers_is_bounded_and_hides_no_real_host() {
    let nats = NatsServer::start().await;
    let host_conn = nats.connect().await;
    let (pool, node) = serve_host(&host_conn, "real", 1).await;
    let client = Client::connect_with(
        &nats.connect().await,
        "test",
        config(Duration::from_secs(5), Duration::from_secs(20)),
    )
    .await
    .unwrap();
    wait_hosts(&client, 1).await;

    let forger = nats.connect().await;
    let mut subs = subscribed(
        &forger,
        &["$SRV.PING.snakepit-test", "snakepit.test.host.*.status"],
    )
    .await;
    let mut asked = subs.pop().unwrap();
    let mut pings = subs.pop().unwrap();
    let forged = MAX_HOSTS + 500;
    let answering = {
        let forger = forger.clone();
        tokio::spawn(async move {
            while let Some(ping) = pings.next().await {
                let Some(to) = ping.reply else { continue };
                for i in 0..forged + 500 {
                    let name = format!("forged-{}", i % forged);
                    let answer = json!({"name": "snakepit-test", "id": format!("x{i}"),
                                        "version": "1.0.0",
                                        "metadata": {"host": name, "cluster": "test"}});
                    forger
                        .publish(to.clone(), answer.to_string().into())
                        .await
                        .unwrap();
                }
                forger.flush().await.unwrap();
            }
        })
    };
    let status = guarded("status", client.status(Duration::from_secs(5))).await;
    let status = status.unwrap();
    answering.abort();
    // The requests `status` made, by subject: the forger's subscription
    // heard every one (the real host's too), and all were sent before
    // `status` returned.
    let mut by_subject: HashMap<String, usize> = HashMap::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(3), asked.next()).await {
        *by_subject.entry(m.subject.to_string()).or_default() += 1;
    }

    let hosts: Vec<&str> = status.iter().filter_map(|s| s["host"].as_str()).collect();
    assert!(
        hosts.contains(&"real"),
        "the real host is reported: {hosts:?}"
    );
    assert_eq!(
        by_subject.get("snakepit.test.host.real.status"),
        Some(&1),
        "the real host is asked once"
    );
    let strangers = by_subject
        .iter()
        .filter(|(s, _)| s.starts_with("snakepit.test.host.forged-"))
        .count();
    assert!(
        by_subject.values().all(|n| *n == 1),
        "each named host is asked once"
    );
    assert!(
        strangers <= MAX_HOSTS,
        "status asked {strangers} hosts it never heard from (at most {MAX_HOSTS})"
    );
    assert!(
        strangers > 0,
        "the forged answers reached the client (the test tests something)"
    );
    stop(node, pool).await;
}

/// A host process stopped (SIGSTOP) while its only worker runs a long
/// call: the call fails with the host-lost error. Once the process goes
/// on (SIGCONT), the cancel the client sent for that call reaches it and
/// the worker stops, so the next call runs there long before the first
/// call would have ended (two minutes), and the host serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_lost_to_a_stopped_host_is_cancelled_there_once_it_goes_on() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start("round5_host_process", &nats.url, "sleepy", 1).await;
    let client = Client::connect_with(
        &nats.connect().await,
        "test",
        config(Duration::from_millis(1500), Duration::from_secs(90)),
    )
    .await
    .unwrap();
    wait_hosts(&client, 1).await;

    let long = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .execute_with(
                    "sleep",
                    json!({"ms": 120_000, "token": "long"}),
                    CallOptions::new().timeout(Duration::from_secs(120)),
                )
                .await
        })
    };
    eventually(30, "the long call runs on the host", || async {
        let status = client.status(Duration::from_millis(500)).await.unwrap();
        status.first().is_some_and(|s| s["busy"] == 1)
    })
    .await;
    signal(host.pid, libc::SIGSTOP);
    let lost = guarded("the long call", long).await.unwrap().unwrap_err();
    assert!(is_host_lost(&lost), "{lost:?}");
    signal(host.pid, libc::SIGCONT);

    // The first call's deadline is two minutes away: the host's pool lets
    // it go long before only if the cancel reached it. Its status says so
    // (`busy` and `in_flight` back to 0).
    let t0 = Instant::now();
    eventually(50, "the resumed host lets the lost call go", || async {
        let status = client.status(Duration::from_millis(500)).await.unwrap();
        let Some(s) = status.first() else {
            return false;
        };
        eprintln!("after {:?}: {s}", t0.elapsed());
        s["busy"] == 0 && s["in_flight"] == 0
    })
    .await;
    let next = guarded(
        "the next call",
        client.execute("sleep", json!({"ms": 0, "token": "next"})),
    )
    .await
    .expect("the resumed host serves on");
    assert_eq!(next["token"], "next");
    assert_eq!(client.hosts().len(), 1, "{:?}", client.hosts());
    drop(host);
}

/// A call made while the cluster has no host waits in the client's queue
/// and runs on the first host that joins before its queue timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_made_before_any_host_runs_on_the_first_that_joins() {
    let nats = NatsServer::start().await;
    let client = Client::connect_with(
        &nats.connect().await,
        "test",
        config(Duration::from_secs(5), Duration::from_secs(60)),
    )
    .await
    .unwrap();
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("echo", json!({"x": "early"})).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the call waits for a host");
    let host_conn = nats.connect().await;
    let (pool, node) = serve_host(&host_conn, "late", 1).await;
    let r = guarded("the waiting call", waiting).await.unwrap().unwrap();
    assert_eq!(r["echoed"]["x"], "early");
    assert_eq!(
        node_served(&client, "late").await,
        Some(1),
        "the late host ran the call once"
    );
    stop(node, pool).await;
}

/// Calls `host` served, from its status.
async fn node_served(client: &Client, host: &str) -> Option<u64> {
    let status = client.status(Duration::from_secs(2)).await.unwrap();
    status
        .iter()
        .find(|s| s["host"] == host)
        .and_then(|s| s["served"].as_u64())
}

/// A host SIGKILLed while its stream is in flight (the reader stopped
/// reading, so the host holds its window): the reader gets chunks in
/// order, then the host-lost error, never the stream's result; the other
/// host never runs the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_host_is_killed_ends_in_host_lost_after_its_chunks_and_never_runs_again() {
    let nats = NatsServer::start().await;
    let mut doomed = HostProcess::start("round5_host_process", &nats.url, "doomed", 1).await;
    let client = Client::connect_with(
        &nats.connect().await,
        "test",
        config(Duration::from_millis(1500), Duration::from_secs(20)),
    )
    .await
    .unwrap();
    wait_hosts(&client, 1).await;
    let mut stream = client
        .execute_stream("stream", json!({"n": 100_000}), CallOptions::new())
        .await
        .unwrap();
    for want in 0..10 {
        match guarded("a chunk", stream.next()).await {
            Some(Ok(StreamItem::Chunk(c))) => assert_eq!(c["i"], want),
            other => panic!("chunk {want}: {other:?}"),
        }
    }
    // A second host, up before the kill: the stream must not move there.
    let other = HostProcess::start("round5_host_process", &nats.url, "other", 1).await;
    wait_hosts(&client, 2).await;
    doomed.kill();

    let mut next = 10u64;
    let end = guarded("the stream's end", async {
        loop {
            match stream.next().await {
                Some(Ok(StreamItem::Chunk(c))) => {
                    assert_eq!(c["i"], next, "chunks in order, none missing");
                    next += 1;
                }
                other => return other,
            }
        }
    })
    .await;
    eprintln!("{next} chunks, then {end:?}");
    match end {
        Some(Err(e)) => assert!(is_host_lost(&e), "{e:?}"),
        other => panic!("the stream of a killed host ended with {other:?}"),
    }
    assert!(
        next < 100_000,
        "the reader cannot have every chunk of a host killed mid-stream"
    );
    assert!(guarded("the end after the error", stream.next())
        .await
        .is_none());
    let served: Value = json!(node_served(&client, "other").await);
    assert_eq!(served, json!(0), "the other host never ran the stream");
    drop(other);
}

/// Not a test of its own: the body of hosts whose workers stream chunks
/// far bigger than their arguments (`tests/workers/round5_worker.py`).
#[test]
fn round5_big_stream_host_process() {
    host_main_with(ScriptWorker(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/round5_worker.py"),
    ));
}

/// A stream's chunk bigger than the server's `max_payload` cannot be
/// carried, as a reply that big cannot: the reader gets the chunks before
/// it, in order, then `Error::Codec` naming the limit, a call that ran;
/// never a hang, a hole passed over, or the stream's result. The host
/// serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_chunk_over_max_payload_ends_the_stream_with_a_codec_error() {
    let nats = NatsServer::start_with_config("max_payload: 65536\n").await;
    let _host = HostProcess::start("round5_big_stream_host_process", &nats.url, "big", 1).await;
    let client = Client::connect_with(
        &nats.connect().await,
        "test",
        config(Duration::from_millis(1500), Duration::from_secs(20)),
    )
    .await
    .unwrap();
    wait_hosts(&client, 1).await;
    let mut stream = client
        .execute_stream(
            "bigstream",
            json!({"n": 10, "big_at": 5, "bytes": 100_000}),
            CallOptions::new().timeout(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let mut chunks = 0u64;
    let end = guarded("the stream's end", async {
        loop {
            match stream.next().await {
                Some(Ok(StreamItem::Chunk(c))) => {
                    assert_eq!(c["i"], chunks, "chunks in order, none missing");
                    chunks += 1;
                }
                other => return other,
            }
        }
    })
    .await;
    eprintln!("{chunks} chunks, then {end:?}");
    assert_eq!(chunks, 5, "every chunk before the big one");
    match end {
        Some(Err(e @ snakepit_core::Error::Codec(_))) => {
            let text = e.to_string();
            assert!(text.contains("max_payload of 65536"), "{text}");
            assert!(!e.never_ran(), "the call ran: {e:?}");
        }
        other => panic!("a stream with a chunk over max_payload ended with {other:?}"),
    }
    // The same stream with chunks that fit runs to its end.
    let mut stream = client
        .execute_stream(
            "bigstream",
            json!({"n": 10, "big_at": 5, "bytes": 30_000}),
            CallOptions::new().timeout(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let mut items = Vec::new();
    guarded("the second stream", async {
        while let Some(item) = stream.next().await {
            items.push(item.unwrap());
        }
    })
    .await;
    assert_eq!(items.len(), 11, "ten chunks and the result");
    assert!(matches!(items.last(), Some(StreamItem::Done(v)) if v["done"] == 10));
}

/// A host that left gracefully and is started again under its id, after
/// its last goodbye, takes calls again: its goodbyes do not mark the id
/// as leaving for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_left_gracefully_and_came_back_under_its_id_takes_calls_again() {
    let nats = NatsServer::start().await;
    let client = Client::connect_with(
        &nats.connect().await,
        "test",
        config(Duration::from_millis(1500), Duration::from_secs(30)),
    )
    .await
    .unwrap();
    let conn = nats.connect().await;
    let (pool, node) = serve_host(&conn, "phoenix", 1).await;
    wait_hosts(&client, 1).await;
    let first = client.execute("echo", json!({"run": 1})).await.unwrap();
    guarded("the graceful shutdown", node.shutdown())
        .await
        .unwrap();
    guarded("the pool's shutdown", pool.shutdown())
        .await
        .unwrap();
    // The client stops counting on the host once it said goodbye; a call
    // made now waits in the client's queue for a host.
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("echo", json!({"run": 2})).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!waiting.is_finished(), "the call waits for a host");

    let conn = nats.connect().await;
    let (pool, node) = serve_host(&conn, "phoenix", 1).await;
    let second = guarded("the call made while no host served", waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second["echoed"]["run"], 2);
    assert_ne!(first["pid"], second["pid"], "the new run's worker ran it");
    let third = guarded(
        "a call to the new run",
        client.execute("echo", json!({"run": 3})),
    )
    .await
    .unwrap();
    assert_eq!(third["echoed"]["run"], 3);
    stop(node, pool).await;
}

/// A call that reaches its host while the host's only worker is busy waits
/// in the host's pool (the prefetch). Its deadline holds there: it fails
/// with `Error::CallTimeout` carrying the caller's timeout, while the long
/// call still runs, not with the pool's queue timeout nor after the long
/// call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_deadline_holds_while_it_waits_in_its_hosts_pool() {
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let (pool, node) = serve_host(&conn, "one", 1).await;
    let client = Client::connect_with(
        &nats.connect().await,
        "test",
        config(Duration::from_secs(5), Duration::from_secs(30)),
    )
    .await
    .unwrap();
    wait_hosts(&client, 1).await;
    let long = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .execute_with(
                    "sleep",
                    json!({"ms": 20_000, "token": "long"}),
                    CallOptions::new().timeout(Duration::from_secs(60)),
                )
                .await
        })
    };
    eventually(30, "the long call runs", || async {
        pool.stats().busy == 1
    })
    .await;
    let timeout = Duration::from_millis(1500);
    let e = guarded(
        "the short call",
        client.execute_with(
            "sleep",
            json!({"ms": 0, "token": "short"}),
            CallOptions::new().timeout(timeout),
        ),
    )
    .await
    .unwrap_err();
    eprintln!("short call: {e:?}; host pool: {:?}", pool.stats());
    match &e {
        snakepit_core::Error::CallTimeout { timeout: t, .. } => assert_eq!(*t, timeout),
        other => panic!("want CallTimeout, got {other:?}"),
    }
    assert!(!long.is_finished(), "the long call still runs");
    assert_eq!(
        pool.stats().requests,
        2,
        "the short call reached the host's pool"
    );
    long.abort();
    stop(node, pool).await;
}

/// A session's host is SIGKILLed. "When the host is gone, the session's
/// next call goes to another host", in every affinity mode, made at once
/// after the kill (before the client can have found the host lost): a
/// `Strict` call does not wait out its queue timeout, a `FailFast` call
/// does not fail with `WorkerBusy`. The session's data, kept in the NATS
/// KV store, outlives its host: the other host reads what was written
/// through the dead one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_host_killed_sends_its_next_calls_to_another_host_with_its_data() {
    let nats = NatsServer::start().await;
    let mut a = HostProcess::start("round5_host_process", &nats.url, "a", 1).await;
    let b = HostProcess::start("round5_host_process", &nats.url, "b", 1).await;
    let client = Client::connect_with(
        &nats.connect().await,
        "test",
        config(Duration::from_millis(1500), Duration::from_secs(40)),
    )
    .await
    .unwrap();
    wait_hosts(&client, 2).await;
    // Find a session that lives on `a` (the first call of a session goes to
    // whichever host has room).
    let mut session = None;
    for i in 0..50 {
        let id = format!("s-{i}");
        let r = client
            .execute_in_session(&id, "remember", json!({"key": "k", "value": i}))
            .await
            .unwrap();
        assert_eq!(r, json!(i));
        let r = client
            .execute_in_session(&id, "recall", json!({"key": "k"}))
            .await
            .unwrap();
        if a.workers.contains(&pid_of(&r)) {
            session = Some((id, i));
            break;
        }
    }
    let (session, value) = session.expect("a session served by host a");
    a.kill();
    for affinity in [
        snakepit_core::Affinity::Strict,
        snakepit_core::Affinity::FailFast,
        snakepit_core::Affinity::Prefer,
    ] {
        let options = CallOptions::new()
            .session(&session)
            .affinity(affinity)
            .timeout(Duration::from_secs(30));
        let r = guarded(
            "a session call after its host was killed",
            client.execute_with("recall", json!({"key": "k"}), options),
        )
        .await
        .unwrap_or_else(|e| panic!("{affinity:?}: {e:?}"));
        assert!(
            b.workers.contains(&pid_of(&r)),
            "{affinity:?} ran on b: {r}"
        );
        assert_eq!(r["value"], value, "{affinity:?}: the session's data");
    }
    drop(b);
}

/// The documented permissions (docs/cluster.md, "Security"), for host `a`
/// and a caller, on the cluster `test`.
const DOCUMENTED_PERMISSIONS: &str = r#"
authorization {
  users = [
    {user: host, password: hostpw, permissions: {
      publish: ["snakepit.test.hb", "_INBOX.>", "$JS.API.>", "$KV.snakepit_sessions.>"],
      subscribe: ["snakepit.test.host.a.>", "$SRV.>", "_INBOX.>"]}}
    {user: caller, password: callerpw, permissions: {
      publish: ["snakepit.test.host.*.call", "snakepit.test.host.*.cancel",
                "snakepit.test.host.*.status", "$SRV.PING.snakepit-test"],
      subscribe: ["_INBOX.caller.>", "snakepit.test.hb"]}}
  ]
}
"#;

/// Under the documented permissions, a caller asks host `a` for something
/// the caller may ask (`subject`), with a NATS reply subject naming a
/// session's key in the sessions bucket, which only hosts may write.
/// Whatever the host answers must not land there: "a caller cannot have a
/// host write where the caller may not, with the host's permissions".
async fn a_caller_aims_a_hosts_answer_at_a_session(subject: &str) {
    a_caller_aims_a_hosts_answer_at_a_session_under(DOCUMENTED_PERMISSIONS, "host", subject).await;
}

/// As [`a_caller_aims_a_hosts_answer_at_a_session`], under the
/// authorization block `config`, the host's store connecting as the user
/// `store_user` (password `<user>pw`).
async fn a_caller_aims_a_hosts_answer_at_a_session_under(
    config: &str,
    store_user: &str,
    subject: &str,
) {
    use snakepit_session::SessionStore;
    let nats = NatsServer::start_with_config(config).await;
    let host_conn =
        async_nats::ConnectOptions::with_user_and_password("host".into(), "hostpw".into())
            .connect(&nats.url)
            .await
            .unwrap();
    let store_conn = async_nats::ConnectOptions::with_user_and_password(
        store_user.into(),
        format!("{store_user}pw"),
    )
    .connect(&nats.url)
    .await
    .unwrap();
    let store = snakepit_cluster::NatsKvStore::builder(&store_conn)
        .sweep_interval(Duration::from_secs(3600))
        .connect()
        .await
        .unwrap();
    store.create_session("victim", None).await.unwrap();
    let pool = pool(1).await;
    let node = snakepit_cluster::serve_with(
        &host_conn,
        "test",
        pool.clone(),
        ServeOptions::new().host_id("a"),
    )
    .await
    .unwrap();
    let caller =
        async_nats::ConnectOptions::with_user_and_password("caller".into(), "callerpw".into())
            .custom_inbox_prefix("_INBOX.caller")
            .connect(&nats.url)
            .await
            .unwrap();
    // A subject naming the service instance (`$SRV.<VERB>.<name>.<id>`):
    // the host's instance id, from its PING answer to the caller.
    let subject = match subject.contains("<id>") {
        false => subject.to_owned(),
        true => {
            let pong = guarded(
                "the host's PING answer",
                caller.request("$SRV.PING.snakepit-test", "".into()),
            )
            .await
            .unwrap();
            let pong: Value = serde_json::from_slice(&pong.payload).unwrap();
            let id = pong["id"].as_str().expect("an instance id").to_owned();
            subject.replace("<id>", &id)
        }
    };
    let subject = subject.as_str();
    // The key kv.rs keeps session `victim` at.
    let hex: String = "victim".bytes().map(|b| format!("{b:02x}")).collect();
    let key = format!("$KV.snakepit_sessions.s.{hex}");
    caller
        .publish_with_reply(subject.to_owned(), key.clone(), "".into())
        .await
        .unwrap();
    caller.flush().await.unwrap();
    // A marker through the same path, answered to the caller itself: once
    // it is back, the host has handled the request before it.
    let mut answers = caller.subscribe("_INBOX.caller.marker").await.unwrap();
    caller
        .publish_with_reply(subject.to_owned(), "_INBOX.caller.marker", "".into())
        .await
        .unwrap();
    guarded("the host's answer to the caller", answers.next()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = store.get_session("victim").await;
    eprintln!("the session after an answer aimed at {key} through {subject}: {after:?}");
    // The host serves on, to a client of the caller's connection.
    let client = Client::connect(&caller, "test").await.unwrap();
    wait_hosts(&client, 1).await;
    let r = guarded("a call", client.execute("echo", json!({"x": 1}))).await;
    assert_eq!(r.unwrap()["echoed"]["x"], 1);
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
    assert!(
        after.is_ok(),
        "the host wrote its answer into the session through {subject}: {after:?}"
    );
}

/// Through the host's status endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cannot_aim_the_hosts_status_answer_at_a_session() {
    a_caller_aims_a_hosts_answer_at_a_session("snakepit.test.host.a.status").await;
}

/// Through the NATS service API's PING, which the documented permissions
/// let a caller send. Answered by the host only to a reply subject a
/// client can have (before the fix, async-nats answered PING, INFO and
/// STATS itself, to any reply subject: the session then read as
/// `Corrupt`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cannot_aim_the_hosts_ping_answer_at_a_session() {
    a_caller_aims_a_hosts_answer_at_a_session("$SRV.PING.snakepit-test").await;
}

/// Through each of the service API's verbs the host answers (PING, INFO,
/// STATS), in each of its three forms (`$SRV.<VERB>`,
/// `$SRV.<VERB>.<name>`, `$SRV.<VERB>.<name>.<id>`), for a caller whose
/// permissions let it send all of them: none of the answers lands in the
/// session, and each is still given to the caller's own inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_service_api_request_can_aim_the_hosts_answer_at_a_session() {
    let wider = DOCUMENTED_PERMISSIONS.replace(r#""$SRV.PING.snakepit-test"],"#, r#""$SRV.>"],"#);
    assert_ne!(
        wider, DOCUMENTED_PERMISSIONS,
        "the caller may send every verb"
    );
    for verb in ["PING", "INFO", "STATS"] {
        for form in [
            format!("$SRV.{verb}"),
            format!("$SRV.{verb}.snakepit-test"),
            format!("$SRV.{verb}.snakepit-test.<id>"),
        ] {
            a_caller_aims_a_hosts_answer_at_a_session_under(&wider, "host", &form).await;
        }
    }
}

/// The store on a connection of its own, under a user that alone may
/// write the bucket, and the serving user without `$JS.API.>` and
/// `$KV...` (docs/cluster.md, "Security": a further safeguard): a PING
/// aimed at a session gets no answer from the host, and the serving user
/// could not have written there anyway; the session stays readable, and
/// the host still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_on_a_user_of_its_own_a_ping_answer_cannot_reach_a_session() {
    const SPLIT: &str = r#"
authorization {
  users = [
    {user: host, password: hostpw, permissions: {
      publish: ["snakepit.test.hb", "_INBOX.>"],
      subscribe: ["snakepit.test.host.a.>", "$SRV.>", "_INBOX.>"]}}
    {user: store, password: storepw, permissions: {
      publish: ["$JS.API.>", "$KV.snakepit_sessions.>"],
      subscribe: ["_INBOX.>"]}}
    {user: caller, password: callerpw, permissions: {
      publish: ["snakepit.test.host.*.call", "snakepit.test.host.*.cancel",
                "snakepit.test.host.*.status", "$SRV.PING.snakepit-test"],
      subscribe: ["_INBOX.caller.>", "snakepit.test.hb"]}}
  ]
}
"#;
    a_caller_aims_a_hosts_answer_at_a_session_under(SPLIT, "store", "$SRV.PING.snakepit-test")
        .await;
}

/// "A call whose JSON and headers together exceed the server's
/// `max_payload` fails with `Error::Validation` before it is sent": at the
/// boundary, with and without a long trace header, the largest call the
/// client sends is carried and runs (never refused by the server as
/// too big, which would fail it otherwise), and one byte more is
/// `Error::Validation`, never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_at_the_max_payload_boundary_run_and_one_byte_more_is_refused() {
    let nats = NatsServer::start_with_config("max_payload: 65536\n").await;
    let conn = nats.connect().await;
    let (pool, node) = serve_host(&conn, "edge", 1).await;
    let client = Client::connect_with(
        &nats.connect().await,
        "test",
        config(Duration::from_secs(5), Duration::from_secs(20)),
    )
    .await
    .unwrap();
    wait_hosts(&client, 1).await;
    let long_trace = format!("00-{}-{}-01", "a".repeat(32), "b".repeat(1500));
    for trace in [None, Some(long_trace)] {
        let call = |n: usize| {
            let mut options = CallOptions::new().timeout(Duration::from_secs(20));
            if let Some(t) = &trace {
                options = options.traceparent(t.clone());
            }
            // `sleep` ignores `pad`: its result stays small.
            client.execute_with("sleep", json!({"ms": 0, "pad": "p".repeat(n)}), options)
        };
        // Sent at `lo`, refused at `hi`.
        let (mut lo, mut hi) = (0usize, 70_000usize);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            match guarded("a call near max_payload", call(mid)).await {
                Ok(r) => {
                    assert_eq!(r["token"], Value::Null);
                    lo = mid;
                }
                Err(e @ snakepit_core::Error::Validation { .. }) => {
                    assert!(e.never_ran(), "{e:?}");
                    assert!(e.to_string().contains("max_payload of 65536"), "{e}");
                    hi = mid;
                }
                Err(e) => panic!("a call with {mid} bytes of padding failed with {e:?}"),
            }
        }
        eprintln!(
            "trace {}: {lo} bytes of padding sent, {hi} refused",
            trace.is_some()
        );
        assert!(lo > 60_000, "calls far below max_payload are sent ({lo})");
        // The boundary itself, once more: the largest runs, one more is refused.
        assert!(guarded("the largest call", call(lo)).await.is_ok());
        let e = guarded("one byte more", call(hi)).await.unwrap_err();
        assert!(
            matches!(e, snakepit_core::Error::Validation { .. }),
            "{e:?}"
        );
    }
    let requests = pool.stats().requests;
    eprintln!("the host's pool ran {requests} calls");
    stop(node, pool).await;
}

/// `Node::shutdown` while the NATS server is gone, with a call in flight:
/// it waits for the call (which still ends in the host's pool) and
/// returns, never hanging on the server (each step that waits on the
/// server waits `LEAVE_WAIT`, 2 s, at most). The pool keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_shut_down_while_nats_is_gone_finishes_its_call_and_returns() {
    let mut nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let (pool, node) = serve_host(&conn, "alone", 1).await;
    let client = Client::connect_with(
        &nats.connect().await,
        "test",
        config(Duration::from_secs(5), Duration::from_secs(20)),
    )
    .await
    .unwrap();
    wait_hosts(&client, 1).await;
    let call = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .execute_with(
                    "sleep",
                    json!({"ms": 1500, "token": "t"}),
                    CallOptions::new().timeout(Duration::from_secs(30)),
                )
                .await
        })
    };
    eventually(30, "the call runs", || async { pool.stats().busy == 1 }).await;
    nats.kill();
    let t0 = Instant::now();
    guarded("the shutdown without NATS", node.shutdown())
        .await
        .expect("the shutdown ends");
    eprintln!("shutdown without NATS took {:?}", t0.elapsed());
    // The call ran to its end in the pool (its outcome could not be sent).
    assert_eq!(pool.stats().busy, 0);
    assert!(pool.stats().completed >= 1, "{:?}", pool.stats());
    let outcome = guarded("the caller's outcome", call).await.unwrap();
    eprintln!("the caller got {outcome:?}");
    assert!(outcome.is_err(), "{outcome:?}");
    let _ = tokio::time::timeout(Duration::from_secs(10), pool.shutdown()).await;
}

/// A call waiting in its host's pool (the prefetch: the only worker runs
/// another call) whose caller drops it: the cancel reaches the host, which
/// drops the call from its pool, so it never starts, even once the worker
/// is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_dropped_while_it_waits_in_its_hosts_pool_never_starts() {
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let (pool, node) = serve_host(&conn, "queue", 1).await;
    let client = Client::connect_with(
        &nats.connect().await,
        "test",
        config(Duration::from_secs(5), Duration::from_secs(20)),
    )
    .await
    .unwrap();
    wait_hosts(&client, 1).await;
    let long = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .execute_with(
                    "sleep",
                    json!({"ms": 2000, "token": "long"}),
                    CallOptions::new().timeout(Duration::from_secs(60)),
                )
                .await
        })
    };
    eventually(30, "the long call runs", || async {
        pool.stats().busy == 1
    })
    .await;
    let marker = std::env::temp_dir().join(format!(
        "snakepit-round5-{}-{}.started",
        std::process::id(),
        free_port()
    ));
    let waiting = {
        let client = client.clone();
        let marker = marker.to_string_lossy().into_owned();
        tokio::spawn(async move {
            client
                .execute_with(
                    "sleep",
                    json!({"ms": 0, "marker": marker}),
                    CallOptions::new().timeout(Duration::from_secs(60)),
                )
                .await
        })
    };
    eventually(30, "the second call reaches the host's pool", || async {
        pool.stats().requests == 2
    })
    .await;
    eprintln!("host pool with two calls: {:?}", pool.stats());
    waiting.abort();
    let _ = waiting.await;
    let done = guarded("the long call", long).await.unwrap().unwrap();
    assert_eq!(done["token"], "long");
    // The worker is free now; a call after it runs, so the dropped one,
    // had it stayed queued ahead, would have run before.
    let after = guarded(
        "a call after",
        client.execute("sleep", json!({"ms": 0, "token": "after"})),
    )
    .await
    .unwrap();
    assert_eq!(after["token"], "after");
    let started = marker.exists();
    let _ = std::fs::remove_file(&marker);
    eprintln!("host pool: {:?}", pool.stats());
    assert!(!started, "the dropped call started on the host");
    stop(node, pool).await;
}

/// `status` reports a host that answers the PING even when this client has
/// not heard a heartbeat of it (a client made just now; the host beats
/// once an hour): the bound on hosts it has not heard from leaves room for
/// real ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_a_host_the_client_has_not_heard_from_yet() {
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let pool = pool(1).await;
    let options = ServeOptions::new()
        .host_id("quiet")
        .heartbeat(Duration::from_secs(3600));
    let node = snakepit_cluster::serve_with(&conn, "test", pool.clone(), options)
        .await
        .unwrap();
    // Past the host's first heartbeat, if it sends one as it starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = Client::connect(&nats.connect().await, "test")
        .await
        .unwrap();
    let status = guarded("status", client.status(Duration::from_secs(2)))
        .await
        .unwrap();
    let heard: Vec<String> = client.hosts().into_iter().map(|h| h.id).collect();
    eprintln!("heard {heard:?}; status {status:?}");
    assert!(heard.is_empty(), "the client heard no heartbeat: {heard:?}");
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(status[0]["host"], "quiet");
    stop(node, pool).await;
}

/// The host answers the NATS service API itself now; its answers must
/// still be the micro protocol's documents, which `nats micro` and
/// async-nats's own types read: a PING, INFO and STATS answer each parse
/// as async-nats's `PingResponse`, `Info` and `Stats`, with the service's
/// name, version, metadata, one instance id throughout, the `status`
/// endpoint, and its requests counted. Once the host has left, no PING is
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_api_answers_are_the_micro_protocols_documents() {
    use async_nats::service::{Info, PingResponse, Stats};
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let (pool, node) = serve_host(&conn, "a", 1).await;
    let raw = nats.connect().await;
    let ask = |subject: String| {
        let raw = raw.clone();
        async move {
            let msg = guarded(&subject, raw.request(subject.clone(), "".into()))
                .await
                .unwrap_or_else(|e| panic!("{subject}: {e}"));
            msg.payload
        }
    };
    let ping: PingResponse = serde_json::from_slice(&ask("$SRV.PING".into()).await).unwrap();
    assert_eq!(ping.kind, "io.nats.micro.v1.ping_response");
    assert_eq!(ping.name, "snakepit-test");
    assert_eq!(ping.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(ping.metadata["host"], "a");
    assert_eq!(ping.metadata["cluster"], "test");
    assert_eq!(ping.metadata["pool"], pool.name());
    let id = ping.id;
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()),
        "an instance id that is a subject token: {id:?}"
    );
    for _ in 0..3 {
        let status: Value =
            serde_json::from_slice(&ask("snakepit.test.host.a.status".into()).await).unwrap();
        assert_eq!(status["host"], "a", "{status}");
    }
    let info: Info =
        serde_json::from_slice(&ask(format!("$SRV.INFO.snakepit-test.{id}")).await).unwrap();
    assert_eq!(info.kind, "io.nats.micro.v1.info_response");
    assert_eq!(
        (info.name.as_str(), info.id.as_str()),
        ("snakepit-test", id.as_str())
    );
    assert_eq!(info.description, "snakepit host a of cluster test");
    assert_eq!(info.metadata["host"], "a");
    assert_eq!(info.endpoints.len(), 1, "{:?}", info.endpoints);
    assert_eq!(info.endpoints[0].name, "status");
    assert_eq!(info.endpoints[0].subject, "snakepit.test.host.a.status");
    assert_eq!(info.endpoints[0].queue_group, "q");
    let stats: Stats =
        serde_json::from_slice(&ask("$SRV.STATS.snakepit-test".into()).await).unwrap();
    assert_eq!(stats.kind, "io.nats.micro.v1.stats_response");
    assert_eq!(
        (stats.name.as_str(), stats.id.as_str()),
        ("snakepit-test", id.as_str())
    );
    assert_eq!(stats.endpoints.len(), 1);
    let endpoint = &stats.endpoints[0];
    assert_eq!(endpoint.name, "status");
    assert_eq!(endpoint.subject, "snakepit.test.host.a.status");
    assert_eq!(endpoint.requests, 3, "the status requests answered");
    assert_eq!(endpoint.errors, 0);
    assert!(endpoint.average_processing_time <= endpoint.processing_time);
    // `Client::status` finds the host through the PING.
    let client = Client::connect(&raw, "test").await.unwrap();
    let found = client.status(Duration::from_secs(2)).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["host"], "a");
    node.shutdown().await.unwrap();
    eventually(30, "no PING is answered once the host has left", || async {
        let asked = raw.request("$SRV.PING.snakepit-test", "".into());
        matches!(
            tokio::time::timeout(Duration::from_secs(5), asked).await,
            Ok(Err(_))
        )
    })
    .await;
    pool.shutdown().await.unwrap();
}
