//! Promises of docs/cluster.md and the crate's docs, each shown against a
//! real nats-server and worker hosts that are processes of their own (with
//! real Python workers): NATS's `max_payload` both ways, session affinity
//! when the session's host is full, the configuration defaults, the trace
//! context a client supplies, and what a caller sees when its host stops
//! answering or is killed.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use snakepit_cluster::{is_host_lost, Client, ClientConfig, ServeOptions};
use snakepit_core::{Affinity, CallOptions, Error, PoolConfig, StreamItem};

/// Not a test of its own: the body of the host processes.
#[test]
fn host_process() {
    host_main();
}

/// Not a test of its own: the body of hosts whose workers can return
/// results far bigger than their arguments (`big`).
#[test]
fn big_host_process() {
    host_main_with(ScriptWorker(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/big_worker.py"),
    ));
}

async fn client_with(nats: &NatsServer, config: ClientConfig) -> Client {
    Client::connect_with(&nats.connect().await, "test", config)
        .await
        .unwrap()
}

/// Calls `host` has served, from the service API.
async fn served_by(client: &Client, host: &str) -> u64 {
    for s in client.status(Duration::from_millis(300)).await.unwrap() {
        if s["host"] == host {
            return s["served"].as_u64().unwrap();
        }
    }
    panic!("host {host} does not answer the status request");
}

fn marker(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "snakepit-promises-{}-{name}-{}",
        std::process::id(),
        free_port()
    ))
}

async fn started(marker: &std::path::Path) {
    eventually(30, "the call started in its worker", || async {
        marker.exists()
    })
    .await;
}

/// A session of `client` whose last host is `host` (sessions are tried
/// until one lands there).
async fn session_on(client: &Client, host: &HostProcess, prefix: &str) -> String {
    for tries in 1..200 {
        let id = format!("{prefix}{tries}");
        let r = client
            .execute_in_session(&id, "pid", json!({}))
            .await
            .unwrap();
        if host.workers.contains(&(r["pid"].as_u64().unwrap() as u32)) {
            return id;
        }
    }
    panic!("no session call reached host {}", host.id);
}

/// Starts `sleep` for `ms` in `session` held on its host by strict
/// affinity, and waits until it runs in the worker.
async fn hold(
    client: &Client,
    session: &str,
    ms: u64,
) -> tokio::task::JoinHandle<Result<Value, Error>> {
    let m = marker("hold");
    let task = {
        let client = client.clone();
        let options = CallOptions::new()
            .session(session)
            .affinity(Affinity::Strict);
        let args = json!({"ms": ms, "marker": m});
        tokio::spawn(async move { client.execute_with("sleep", args, options).await })
    };
    started(&m).await;
    let _ = std::fs::remove_file(&m);
    task
}

const SMALL_PAYLOAD: &str = "max_payload: 65536\n";

/// A reply bigger than the NATS server's `max_payload` cannot be carried:
/// the caller gets `Error::Codec` saying so, and `never_ran()` is false
/// (the call ran; only its result is lost). The host serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_over_max_payload_is_a_codec_error_of_a_call_that_ran() {
    let nats = NatsServer::start_with_config(SMALL_PAYLOAD).await;
    let _host = HostProcess::start("big_host_process", &nats.url, "big", 1).await;
    let client = client_with(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    // Under the limit: carried.
    let r = client
        .execute("big", json!({"bytes": 30_000}))
        .await
        .unwrap();
    assert_eq!(r["data"].as_str().unwrap().len(), 30_000);
    let e = match client.execute("big", json!({"bytes": 100_000})).await {
        Ok(v) => panic!("a reply of {} bytes was carried", v.to_string().len()),
        Err(e) => e,
    };
    assert!(matches!(e, Error::Codec(_)), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("exceeds") && text.contains("max_payload of 65536"),
        "{text}"
    );
    assert!(!e.never_ran(), "the call ran: {e:?}");
    assert_eq!(served_by(&client, "big").await, 2, "both calls ran");
    let r = client.execute("big", json!({"bytes": 10})).await.unwrap();
    assert_eq!(r["data"], "xxxxxxxxxx");
}

/// A call bigger than `max_payload` fails with `Error::Validation` before
/// it is sent (`never_ran()`; the host served nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_max_payload_fails_validation_and_is_never_sent() {
    let nats = NatsServer::start_with_config(SMALL_PAYLOAD).await;
    let _host = HostProcess::start("big_host_process", &nats.url, "big", 1).await;
    let client = client_with(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    let e = match client
        .execute("echo", json!({"s": "y".repeat(100_000)}))
        .await
    {
        Ok(v) => panic!("a call of {} bytes was carried", v.to_string().len()),
        Err(e) => e,
    };
    assert!(matches!(e, Error::Validation { .. }), "{e:?}");
    assert!(e.never_ran(), "{e:?}");
    assert!(e.to_string().contains("max_payload of 65536"), "{e}");
    assert_eq!(
        served_by(&client, "big").await,
        0,
        "nothing reached the host"
    );
}

/// Fifty calls of 10 KiB each made at once (one task on a current-thread
/// runtime, so the client batches them) all succeed under a 64 KiB
/// `max_payload`: batches of calls, and of replies, are split to fit. A
/// listener on the host's call subject sees the calls go in fewer than 50
/// messages, several of them batches.
#[test]
fn fifty_10_kib_calls_made_at_once_fit_a_64_kib_max_payload() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let nats = NatsServer::start_with_config(SMALL_PAYLOAD).await;
        let _host = HostProcess::start("big_host_process", &nats.url, "big", 2).await;
        let client = client_with(&nats, ClientConfig::default()).await;
        wait_hosts(&client, 1).await;
        // (calls in the message, whether it was a batch) for each message.
        let seen = Arc::new(std::sync::Mutex::new(Vec::<(usize, bool)>::new()));
        let listener = nats.connect().await;
        let mut sub = subscribed(&listener, &["snakepit.test.host.big.call"])
            .await
            .remove(0);
        let listening = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    let v: Value = serde_json::from_slice(&m.payload).unwrap();
                    let n = v.as_array().map_or(1, Vec::len);
                    seen.lock().unwrap().push((n, v.is_array()));
                }
            })
        };
        let calls = (0..50).map(|i| {
            let client = client.clone();
            async move {
                let text = format!("{i:04}").repeat(2560);
                let r = client.execute("echo", json!({"s": text})).await;
                (text, r)
            }
        });
        let outcomes = futures_util::future::join_all(calls).await;
        for (text, r) in outcomes {
            let r = r.unwrap_or_else(|e| panic!("a 10 KiB call failed: {e:?}"));
            assert_eq!(r["echoed"]["s"], text);
        }
        assert_eq!(served_by(&client, "big").await, 50);
        eventually(30, "the listener saw every call", || async {
            seen.lock().unwrap().iter().map(|(n, _)| n).sum::<usize>() == 50
        })
        .await;
        listening.abort();
        let seen = seen.lock().unwrap().clone();
        let batches = seen.iter().filter(|(_, batch)| *batch).count();
        eprintln!(
            "50 calls in {} messages, {batches} of them batches",
            seen.len()
        );
        assert!(seen.len() < 50 && batches >= 2, "{seen:?}");
    });
}

/// `Affinity::Prefer` (the default): when the session's host is full, the
/// call goes to another host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_goes_to_another_host_when_the_sessions_host_is_full() {
    let nats = NatsServer::start().await;
    let a = HostProcess::start_with_prefetch("host_process", &nats.url, "a", 1, 0).await;
    let b = HostProcess::start_with_prefetch("host_process", &nats.url, "b", 1, 0).await;
    let client = client_with(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 2).await;
    let s = session_on(&client, &a, "p").await;
    let long = hold(&client, &s, 30_000).await;
    let r = client
        .execute_in_session(&s, "pid", json!({}))
        .await
        .unwrap();
    assert!(b.workers.contains(&pid_of(&r)), "{r} (a: {:?})", a.workers);
    long.abort();
}

/// `Affinity::Strict` waits for the session's host while it is full (the
/// other host is free), and fails with `Error::QueueTimeout` when it stays
/// full past `queue_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_waits_for_the_sessions_host_then_times_out_in_the_queue() {
    let nats = NatsServer::start().await;
    let a = HostProcess::start_with_prefetch("host_process", &nats.url, "a", 1, 0).await;
    let b = HostProcess::start_with_prefetch("host_process", &nats.url, "b", 1, 0).await;
    let strict = |s: &str| CallOptions::new().session(s).affinity(Affinity::Strict);

    // Waits: the session's host is busy for a second, then serves it.
    let client = client_with(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 2).await;
    let s = session_on(&client, &a, "w").await;
    let busy = hold(&client, &s, 1_000).await;
    let r = client
        .execute_with("pid", json!({}), strict(&s))
        .await
        .unwrap();
    assert!(a.workers.contains(&pid_of(&r)), "{r} (b: {:?})", b.workers);
    busy.await.unwrap().unwrap();

    // Times out: the session's host stays busy past the queue timeout.
    let mut config = ClientConfig::default();
    config.queue_timeout = Duration::from_millis(500);
    let client = client_with(&nats, config).await;
    wait_hosts(&client, 2).await;
    let s = session_on(&client, &a, "t").await;
    let long = hold(&client, &s, 30_000).await;
    let e = client
        .execute_with("pid", json!({}), strict(&s))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::QueueTimeout(_)), "{e:?}");
    assert!(e.never_ran());
    long.abort();
}

/// The number `docs/<file>` gives right after `before` (e.g. the `8` of
/// "`prefetch_per_worker` (8)"), as a float.
fn documented(file: &str, before: &str) -> f64 {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let at = text
        .find(before)
        .unwrap_or_else(|| panic!("docs/{file} no longer says `{before}` followed by the default"));
    let number: String = text[at + before.len()..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number
        .parse()
        .unwrap_or_else(|_| panic!("docs/{file}: no number after `{before}`"))
}

/// The defaults the docs give are the code's: `ClientConfig`'s are the
/// pool's (`PoolConfig`) where the names are shared (the crate's docs), and
/// docs/cluster.md's host timeout of 1.5 s, heartbeat every 250 ms and
/// prefetch per worker, and docs/cli.md's `--prefetch` default.
#[test]
fn the_documented_defaults() {
    let c = ClientConfig::default();
    let pool = PoolConfig::default();
    assert_eq!(c.queue_timeout, pool.queue_timeout);
    assert_eq!(c.max_queue_size, pool.max_queue_size);
    assert_eq!(c.max_sessions, pool.max_sessions);
    assert_eq!(c.queue_timeout, Duration::from_secs(5));
    assert_eq!(c.max_queue_size, 1000);
    assert_eq!(c.max_sessions, 100_000);
    assert!(c.trace_context.is_none());
    assert_eq!(
        c.host_timeout.as_secs_f64(),
        documented("cluster.md", "one `host_timeout` (")
    );
    let s = ServeOptions::new();
    assert_eq!(
        s.heartbeat.as_millis() as f64,
        documented("cluster.md", "and its free capacity every ")
    );
    assert_eq!(
        s.prefetch_per_worker as f64,
        documented("cluster.md", "`prefetch_per_worker` (")
    );
    assert_eq!(
        s.prefetch_per_worker as f64,
        documented("cli.md", "beyond those it runs (default ")
    );
    assert_eq!(s.calls_per_worker, 0, "each worker's own concurrency");
    assert_eq!(s.host_id, None);
}

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const OTHER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// `ClientConfig::trace_context` supplies the `traceparent` the worker
/// receives, for a call alone and for calls batched together; a call's
/// own `CallOptions::traceparent` wins over it.
#[test]
fn the_configured_trace_context_reaches_the_worker() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let nats = NatsServer::start().await;
        let _host = HostProcess::start("host_process", &nats.url, "a", 2).await;
        let mut config = ClientConfig::default();
        config.trace_context = Some(Arc::new(|| Some(TRACEPARENT.to_owned())));
        let client = client_with(&nats, config).await;
        wait_hosts(&client, 1).await;
        let r = client.execute("context", json!({})).await.unwrap();
        assert_eq!(r["traceparent"], TRACEPARENT, "{r}");
        let together = (0..10).map(|_| client.execute("context", json!({})));
        for r in futures_util::future::join_all(together).await {
            assert_eq!(r.unwrap()["traceparent"], TRACEPARENT);
        }
        let r = client
            .execute_with("context", json!({}), CallOptions::new().traceparent(OTHER))
            .await
            .unwrap();
        assert_eq!(r["traceparent"], OTHER, "{r}");
        // Without it, the worker sees none (the opentelemetry feature's
        // current span is not sampled here): the closure is what set it.
        let plain = client_with(&nats, ClientConfig::default()).await;
        wait_hosts(&plain, 1).await;
        let r = plain.execute("context", json!({})).await.unwrap();
        assert_ne!(r["traceparent"], TRACEPARENT, "{r}");
    });
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a host process this test started and has not reaped.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Two calls on one host, as the host stops answering: one the host has
/// answered already (it streamed a chunk: the client follows the host's
/// heartbeats), and one that has just started in its worker (likely not
/// yet acknowledged: the client waits `host_timeout` for a first word).
struct TwoCalls {
    answered: tokio::task::JoinHandle<Result<(), Error>>,
    just_started: tokio::task::JoinHandle<Result<Value, Error>>,
}

async fn two_calls(client: &Client, options: CallOptions) -> TwoCalls {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let answered = {
        let client = client.clone();
        let options = options.clone();
        tokio::spawn(async move {
            let args = json!({"ms": 60_000, "beat": true});
            let mut stream = client.execute_stream("sleep", args, options).await?;
            match stream.next().await {
                Some(Ok(StreamItem::Chunk(_))) => {}
                other => panic!("the first chunk: {other:?}"),
            }
            let _ = tx.send(());
            match stream.next().await {
                Some(Err(e)) => Err(e),
                other => panic!("the stream's end: {other:?}"),
            }
        })
    };
    rx.await.expect("the first chunk arrives");
    let m = marker("started");
    let just_started = {
        let client = client.clone();
        let args = json!({"ms": 60_000, "marker": m});
        tokio::spawn(async move { client.execute_with("sleep", args, options).await })
    };
    started(&m).await;
    let _ = std::fs::remove_file(&m);
    TwoCalls {
        answered,
        just_started,
    }
}

/// The outcomes of both calls, each with the time from `since`.
async fn outcomes(calls: TwoCalls, since: Instant) -> [(Error, Duration); 2] {
    let a = tokio::time::timeout(Duration::from_secs(30), calls.answered)
        .await
        .expect("the answered call ends long before its 60 s")
        .unwrap()
        .unwrap_err();
    let a_took = since.elapsed();
    let b = tokio::time::timeout(Duration::from_secs(30), calls.just_started)
        .await
        .expect("the just-started call ends long before its 60 s")
        .unwrap()
        .unwrap_err();
    let b_took = since.elapsed();
    [(a, a_took), (b, b_took)]
}

/// A host that cannot answer at all (SIGSTOPped while it runs calls with a
/// 1 s deadline): its heartbeats stop, and its calls fail with the
/// host-lost error one host timeout after it last spoke (a heartbeat, or
/// the call's acknowledgement), which comes before the deadline plus one
/// host timeout, the bound for a host that still sends heartbeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_host_fails_its_calls_with_host_lost() {
    let nats = NatsServer::start().await;
    let host = HostProcess::start("big_host_process", &nats.url, "a", 2).await;
    let client = client_with(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    let calls = two_calls(&client, CallOptions::new().timeout(Duration::from_secs(1))).await;
    signal(host.pid, libc::SIGSTOP);
    let [(answered, a_took), (just_started, b_took)] = outcomes(calls, Instant::now()).await;
    signal(host.pid, libc::SIGCONT);
    eprintln!("stopped host, answered call: {answered} after {a_took:?}");
    eprintln!("stopped host, just-started call: {just_started} after {b_took:?}");
    assert!(is_host_lost(&answered), "{answered:?}");
    assert!(
        answered
            .to_string()
            .contains("stopped answering (no heartbeat"),
        "{answered}"
    );
    assert!(is_host_lost(&just_started), "{just_started:?}");
    assert!(!answered.never_ran() && !just_started.never_ran());
}

/// A host that keeps sending heartbeats and acknowledges a call but never
/// answers it (a fake host on raw NATS): the client gives up one host
/// timeout after the call's deadline, with `Error::CallTimeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_host_that_never_answers_times_out_one_host_timeout_after_the_deadline() {
    let nats = NatsServer::start().await;
    let raw = nats.connect().await;
    let mut calls = raw.subscribe("snakepit.test.host.mute.call").await.unwrap();
    let beats = fake_heartbeats(&raw, "mute");
    let acks = {
        let raw = raw.clone();
        tokio::spawn(async move {
            while let Some(m) = calls.next().await {
                let call: Value = serde_json::from_slice(&m.payload).unwrap();
                let to = call["reply"].as_str().unwrap().to_owned();
                let ack = json!({"ack": {"host": "mute", "pid": 1}});
                raw.publish(to, ack.to_string().into()).await.unwrap();
            }
        })
    };
    let mut config = ClientConfig::default();
    config.host_timeout = Duration::from_millis(800);
    let client = client_with(&nats, config).await;
    wait_hosts(&client, 1).await;
    let t0 = Instant::now();
    let e = tokio::time::timeout(
        Duration::from_secs(30),
        client.execute_with(
            "sleep",
            json!({}),
            CallOptions::new().timeout(Duration::from_millis(500)),
        ),
    )
    .await
    .expect("the call ends")
    .unwrap_err();
    let took = t0.elapsed();
    eprintln!("mute host: {e} after {took:?}");
    assert!(matches!(e, Error::CallTimeout { .. }), "{e:?}");
    // Not at the deadline itself: the host is given one host timeout to
    // report the timeout (this only orders the two bounds).
    assert!(took >= Duration::from_millis(1_300), "{took:?}");
    beats.abort();
    acks.abort();
}

/// With the default `ClientConfig`, a host SIGKILLed while it runs long
/// calls fails them with the host-lost error within `host_timeout` (1.5 s)
/// of the last word it sent; asserted here within a generous bound of the
/// kill (the figures are printed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hosts_calls_fail_with_host_lost_soon_after() {
    let nats = NatsServer::start().await;
    let mut host = HostProcess::start("big_host_process", &nats.url, "a", 2).await;
    let config = ClientConfig::default();
    let host_timeout = config.host_timeout;
    let bound = host_timeout + Duration::from_secs(3);
    let client = client_with(&nats, config).await;
    wait_hosts(&client, 1).await;
    let calls = two_calls(&client, CallOptions::new()).await;
    host.kill();
    let [(answered, a_took), (just_started, b_took)] = outcomes(calls, Instant::now()).await;
    eprintln!("killed host, answered call: {answered} after {a_took:?}");
    eprintln!("killed host, just-started call: {just_started} after {b_took:?}");
    assert!(is_host_lost(&answered), "{answered:?}");
    assert!(is_host_lost(&just_started), "{just_started:?}");
    assert!(a_took < bound && b_took < bound, "{a_took:?}, {b_took:?}");
    // README: "about 1.5 s after it last spoke", not sooner: the host spoke
    // at most a heartbeat (250 ms) before it was killed.
    let least = host_timeout - Duration::from_millis(250);
    assert!(a_took >= least && b_took >= least, "{a_took:?}, {b_took:?}");
}

/// A call's timeout and the client's queue timeout as long as
/// `Duration::MAX` (a usual way to say "no limit") are far deadlines, not a
/// panic on the clock's overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_durations_mean_no_limit_and_never_panic() {
    let nats = NatsServer::start().await;
    let _host = HostProcess::start("big_host_process", &nats.url, "big", 1).await;
    let mut config = ClientConfig::default();
    config.queue_timeout = Duration::MAX;
    let client = client_with(&nats, config).await;
    wait_hosts(&client, 1).await;
    let r = client
        .execute_with(
            "big",
            json!({"bytes": 3}),
            CallOptions::new().timeout(Duration::MAX),
        )
        .await
        .unwrap();
    assert_eq!(r["data"], "xxx");
}

/// docs/cluster.md: host ids are "`A-Z a-z 0-9 - _`, at most 64 bytes".
/// A heartbeat naming a host id no host may have (sent by anyone on the
/// bus) is no host: clients sent calls to it, and every call failed at
/// once ("invalid subject"), or a 5,000-byte id got the client's
/// connection dropped by the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_with_impossible_host_ids_are_not_hosts() {
    let nats = NatsServer::start().await;
    let _host = HostProcess::start("big_host_process", &nats.url, "real", 1).await;
    let raw = nats.connect().await;
    let spoofer = {
        let raw = raw.clone();
        tokio::spawn(async move {
            for seq in 1.. {
                for id in ["a b", "x\r\ny", "dotted.id", "*", &"l".repeat(5000), ""] {
                    let hb = json!({"seq": seq, "host": id, "pid": 1, "capacity": 1000,
                                    "running": 1000, "free": 1000});
                    let _ = raw.publish("snakepit.test.hb", hb.to_string().into()).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let client = client_with(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..10 {
        let r = client.execute("big", json!({"bytes": 3})).await.unwrap();
        assert_eq!(r["data"], "xxx");
    }
    let ids: Vec<String> = client.hosts().into_iter().map(|h| h.id).collect();
    assert_eq!(ids, vec!["real".to_owned()]);
    spoofer.abort();
}

/// docs/cluster.md: `status` waits the window for the PING's answers, then
/// as long again for all statuses at once: hosts that answer the PING but
/// never their status (20 of them here) cost one window, not one each (it
/// took 10 s for 20 with a window of 500 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_asks_every_host_at_once_within_its_window() {
    let nats = NatsServer::start().await;
    let _host = HostProcess::start("big_host_process", &nats.url, "real", 1).await;
    let raw = nats.connect().await;
    let mut subs = subscribed(
        &raw,
        &["$SRV.PING.snakepit-test", "snakepit.test.host.*.status"],
    )
    .await;
    let _silent = subs.pop().unwrap(); // statuses asked of the ghosts: never answered
    let mut pings = subs.pop().unwrap();
    let ghosts = {
        let raw = raw.clone();
        tokio::spawn(async move {
            while let Some(m) = pings.next().await {
                let Some(reply) = m.reply.clone() else {
                    continue;
                };
                for i in 0..20 {
                    let ping = json!({"name": "snakepit-test", "id": format!("g{i}"),
                                      "metadata": {"host": format!("ghost-{i}")}});
                    let _ = raw.publish(reply.clone(), ping.to_string().into()).await;
                }
            }
        })
    };
    let client = client_with(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    let window = Duration::from_millis(500);
    let t0 = Instant::now();
    let hosts = client.status(window).await.unwrap();
    let took = t0.elapsed();
    let ids: Vec<&str> = hosts.iter().filter_map(|h| h["host"].as_str()).collect();
    assert_eq!(ids, vec!["real"], "{hosts:?}");
    // A bound against one window per host (10 s), with room for a slow machine.
    assert!(took < window * 2 + Duration::from_millis(1500), "{took:?}");
    ghosts.abort();
}
