//! Round 7 of outside review of `snakepit-cluster`, against a real
//! nats-server (127.0.0.1, stopped with the test) and real Python workers
//! (`crates/cluster/tests/workers/round7_worker.py`,
//! `crates/core/tests/workers/test_worker.py`).
//!
//! - An error reply over the server's `max_payload` (a long exception
//!   message and traceback, a crash's long stderr tail) became a codec
//!   error saying only that the call ran: the host now trims the error's
//!   texts to fit, and the caller gets its own kind and fields (fixed in
//!   `host.rs`, `wire.rs`).
//! - `NatsKvStore`: a session planted (by something else) with a value
//!   nested deeper than `MAX_VALUE_DEPTH`, which serde_json still reads,
//!   read back fine and then made every write fail with the caller's
//!   `Invalid`; and stored data that does not parse was never swept, its
//!   expiry or not. Both are now `Corrupt`, as in the Redis store, and a
//!   corrupt session whose expiry can be read is swept when it passes
//!   (fixed in `kv.rs`). `delete_global_program` was the trait's default
//!   (`Unsupported`); it now removes the program for every host.
//! - Two hosts started under one id share its calls, each run once, and
//!   calls longer than `host_timeout` on either end with their results; a
//!   dropped call is cancelled on the one that runs it, and a stream's
//!   credit reaches it.
//! - A fresh host (no calls timed yet) takes the most prefetch: a burst of
//!   long calls queues in its pool, under the pool's own `queue_timeout`
//!   (now said in docs/cluster.md).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{json, Value};
use snakepit_cluster::{ClientConfig, NatsKvStore, Node, ServeOptions};
use snakepit_core::{Error, ExitReason, Pool};
use snakepit_session::{EndReason, SessionStore};

/// Turns a hang into a failure (never a measure of speed).
const GUARD: Duration = Duration::from_secs(60);

async fn guarded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {GUARD:?}"))
}

/// What marks a text the host cut to fit `max_payload`.
const TRIMMED: &str = "[trimmed to fit the NATS server's max_payload]";

fn round7_worker() -> ScriptWorker {
    ScriptWorker(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/round7_worker.py"),
    )
}

/// Serves `pool` on `conn` as host `id` of the cluster `test`.
async fn serve(conn: &async_nats::Client, id: &str, pool: &Pool) -> Node {
    let options = ServeOptions::new()
        .host_id(id)
        .heartbeat(Duration::from_millis(100));
    snakepit_cluster::serve_with(conn, "test", pool.clone(), options)
        .await
        .unwrap()
}

async fn stop(node: Node, pool: Pool) {
    guarded("the node's shutdown", node.shutdown())
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), pool.shutdown()).await;
}

// ---------------------------------------------------------------------
// 1a. Error replies over max_payload
// ---------------------------------------------------------------------

/// A handler raises an exception whose message (and so its traceback) is
/// 200 KB, on a server whose `max_payload` is 64 KiB: the caller gets
/// `Error::Remote` with the exception's type, the start of its message
/// and the end of its traceback, marked as trimmed; not a codec error.
/// The call ran (`never_ran()` false), and the host serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_over_max_payload_reaches_the_caller_as_itself_trimmed() {
    let nats = NatsServer::start_with_config("max_payload: 65536\n").await;
    let conn = nats.connect().await;
    assert_eq!(conn.max_payload(), 65536);
    let pool = pool_of(round7_worker(), 1).await;
    let node = serve(&conn, "a", &pool).await;
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;

    let e = guarded(
        "a call that raises",
        client.execute("raise_big", json!({"bytes": 200_000})),
    )
    .await
    .unwrap_err();
    let Error::Remote { command, error } = &e else {
        panic!("an exception over max_payload reached the caller as {e:?}");
    };
    assert_eq!(command, "raise_big");
    assert_eq!(error.kind.as_deref(), Some("ValueError"), "{error:?}");
    assert!(
        error.message.starts_with("round7-start"),
        "{}",
        error.message
    );
    assert!(error.message.contains(TRIMMED), "marked as trimmed");
    assert!(error.message.len() < 65536, "{}", error.message.len());
    if let Some(tb) = &error.traceback {
        assert!(tb.len() < 65536, "{}", tb.len());
        assert!(
            tb.contains("round7-end"),
            "the end of the traceback is kept"
        );
    }
    assert!(!e.never_ran(), "it ran: {e:?}");

    // A small exception is untouched, and the host serves on.
    let e = client
        .execute("raise_big", json!({"bytes": 10}))
        .await
        .unwrap_err();
    let error = e.remote().expect("a remote error");
    assert!(!error.message.contains(TRIMMED), "{}", error.message);
    assert!(error.message.ends_with("round7-end"), "{}", error.message);
    let r = client.execute("echo", json!({"x": 1})).await.unwrap();
    assert_eq!(r["args"]["x"], 1);
    stop(node, pool).await;
}

/// A worker that writes 40 lines of about 1,900 bytes to stderr and dies
/// in the middle of its call: its crash error (exit status and stderr
/// tail, about 80 KB, twice over with its message) does not fit a 64 KiB
/// `max_payload`. The caller still gets `Error::WorkerCrashed` with the
/// exit code and the end of the tail, marked as trimmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_whose_stderr_tail_is_over_max_payload_reaches_the_caller_as_the_crash() {
    let nats = NatsServer::start_with_config("max_payload: 65536\n").await;
    let conn = nats.connect().await;
    let pool = pool_of(round7_worker(), 1).await;
    let node = serve(&conn, "a", &pool).await;
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;

    let e = guarded(
        "a call that crashes",
        client.execute("crash_loud", json!({})),
    )
    .await
    .unwrap_err();
    let Error::WorkerCrashed(crash) = &e else {
        panic!("a crash with a long stderr tail reached the caller as {e:?}");
    };
    assert_eq!(crash.exit, ExitReason::Code(3), "{crash:?}");
    assert!(crash.pid > 0, "{crash:?}");
    let tail = &crash.stderr_tail;
    assert!(tail.len() < 65536, "{}", tail.len());
    assert!(
        tail.contains("round7 line"),
        "the tail is carried: {}",
        &tail[..tail.len().min(300)]
    );
    assert!(
        tail.contains(TRIMMED),
        "the tail says it was trimmed: {}",
        &tail[..tail.len().min(300)]
    );
    assert!(!e.never_ran());

    // The pool replaces the worker; the host serves on.
    eventually(60, "a call runs again", || async {
        client.execute("echo", json!({})).await.is_ok()
    })
    .await;
    stop(node, pool).await;
}

// ---------------------------------------------------------------------
// 1b. NatsKvStore: sessions planted too deep
// ---------------------------------------------------------------------

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A value nested `n` levels of arrays deep, as JSON text.
fn nested(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

/// Puts at session `id`'s key a session as this store writes it, but
/// whose data holds a value `depth` levels deep, living `ttl_ms` from now.
async fn plant_deep(nats: &NatsServer, id: &str, depth: usize, ttl_ms: u64) {
    plant(
        nats,
        id,
        &format!(r#"{{"deep":{}}}"#, nested(depth)),
        ttl_ms,
    )
    .await;
}

/// Puts at session `id`'s key a session whose data is the JSON `data`,
/// living `ttl_ms` from now.
async fn plant(nats: &NatsServer, id: &str, data: &str, ttl_ms: u64) {
    let now = now_ms();
    let text = format!(
        r#"{{"id":"{id}","created_at_ms":{now},"last_accessed_ms":{now},"ttl_ms":{ttl_ms},"data":{data},"programs":{{}},"metadata":{{}}}}"#,
    );
    async_nats::jetstream::new(nats.connect().await)
        .get_key_value("snakepit_sessions")
        .await
        .unwrap()
        .put(session_key(id), text.into())
        .await
        .unwrap();
}

/// docs/sessions.md: every store refuses a value nested deeper than
/// `MAX_VALUE_DEPTH` (125), or a data key that is empty or over 512
/// bytes; the Redis store reads a session planted with one as `Corrupt`,
/// and Redis still expires it. Sessions planted in the bucket with a
/// value 126 to 128 and 300 levels deep (which serde_json does not read
/// as part of a session), with an empty data key and with one of 513
/// bytes (which it reads; a write then failed with `Invalid`, as if the
/// caller had put it there) are `Corrupt` to reads and writes alike, are
/// left out of `list_sessions`, and once their TTL passes are gone: the
/// sweep removes them and reports their expiries (it never did: they
/// stayed for good), and their ids can be used again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_planted_too_deep_is_corrupt_and_still_swept() {
    use snakepit_session::Error as SErr;
    let nats = NatsServer::start().await;
    let store = kv_store(&nats).await;
    let ended = Arc::new(Mutex::new(Vec::<(String, EndReason)>::new()));
    let seen = ended.clone();
    store.on_session_end(Arc::new(move |id: &str, why| {
        seen.lock().unwrap().push((id.to_owned(), why));
    }));
    store.ensure_session("fine").await.unwrap();
    let depths = ["empty-key", "long-key", "126", "127", "128", "300"];
    for d in depths {
        let id = format!("deep-{d}");
        match d {
            "empty-key" => plant(&nats, &id, r#"{"": 1}"#, 3_000).await,
            "long-key" => {
                let data = format!(r#"{{"{}": 1}}"#, "k".repeat(513));
                plant(&nats, &id, &data, 3_000).await
            }
            _ => plant_deep(&nats, &id, d.parse().unwrap(), 3_000).await,
        }
    }
    for d in depths {
        let id = format!("deep-{d}");
        let got = store.get_session(&id).await;
        assert!(matches!(got, Err(SErr::Corrupt(_))), "{d}: {got:?}");
        let set = store.set(&id, "k", json!(1)).await;
        assert!(matches!(set, Err(SErr::Corrupt(_))), "{d}: {set:?}");
        let updated = store.update_session(&id, |_| {}).await;
        assert!(matches!(updated, Err(SErr::Corrupt(_))), "{d}: {updated:?}");
        let created = store.create_session(&id, None).await;
        assert!(matches!(created, Err(SErr::Corrupt(_))), "{d}: {created:?}");
    }
    assert_eq!(store.list_sessions().await.unwrap(), vec!["fine"]);
    assert_eq!(
        store.cleanup_expired().await.unwrap(),
        0,
        "none expired yet"
    );

    // Past their TTL: gone, and swept, each reported once.
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    for d in depths {
        let got = store.get_session(&format!("deep-{d}")).await;
        assert!(
            got.as_ref().is_err_and(|e| e.is_gone()),
            "{d} past its TTL: {got:?}"
        );
    }
    assert_eq!(
        guarded("the sweep", store.cleanup_expired()).await.unwrap(),
        depths.len()
    );
    let mut reported = ended.lock().unwrap().clone();
    reported.sort_by(|a, b| a.0.cmp(&b.0));
    let want: Vec<(String, EndReason)> = depths
        .iter()
        .map(|d| (format!("deep-{d}"), EndReason::Expired))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    assert_eq!(reported, want);
    let kv = async_nats::jetstream::new(nats.connect().await)
        .get_key_value("snakepit_sessions")
        .await
        .unwrap();
    for d in depths {
        let id = format!("deep-{d}");
        assert_eq!(kv.get(session_key(&id)).await.unwrap(), None, "{id}");
        store.create_session(&id, None).await.unwrap();
        store.set(&id, "k", json!(1)).await.unwrap();
    }
    assert_eq!(store.cleanup_expired().await.unwrap(), 0);
}

/// The background sweep of another store handle (no call made) removes
/// an expired session planted too deep, and a created one that expires
/// with it, and reports both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_sweep_removes_a_planted_too_deep_session() {
    let nats = NatsServer::start().await;
    let sweeper = NatsKvStore::builder(&nats.connect().await)
        .sweep_interval(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    let ended = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = ended.clone();
    sweeper.on_session_end(Arc::new(move |id: &str, why| {
        if why == EndReason::Expired {
            seen.lock().unwrap().push(id.to_owned());
        }
    }));
    plant_deep(&nats, "deep", 127, 500).await;
    sweeper
        .create_session("plain", Some(Duration::from_millis(500)))
        .await
        .unwrap();
    eventually(30, "both expiries are reported", || async {
        ended.lock().unwrap().len() >= 2
    })
    .await;
    let mut got = ended.lock().unwrap().clone();
    got.sort();
    assert_eq!(got, vec!["deep", "plain"]);
}

/// A global program planted too deep is `Corrupt`, as in the Redis store
/// (docs/sessions.md: "a global program that deep is `Corrupt` too"),
/// not handed back as if the store had written it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_program_planted_too_deep_is_corrupt() {
    let nats = NatsServer::start().await;
    let store = kv_store(&nats).await;
    let kv = async_nats::jetstream::new(nats.connect().await)
        .get_key_value("snakepit_sessions")
        .await
        .unwrap();
    kv.put("g.70", nested(126).into()).await.unwrap(); // program id "p"
    let got = store.get_global_program("p").await;
    assert!(
        matches!(got, Err(snakepit_session::Error::Corrupt(_))),
        "{got:?}"
    );
    // One the store may write still comes back.
    let ok: Value = serde_json::from_str(&nested(125)).unwrap();
    store.store_global_program("q", ok.clone()).await.unwrap();
    assert_eq!(store.get_global_program("q").await.unwrap(), ok);
}

// ---------------------------------------------------------------------
// 2. Hostile review: two hosts under one id
// ---------------------------------------------------------------------

/// A pool of one test worker whose calls may wait in its queue for a
/// minute: the client sees the two hosts under one id as one host, so
/// calls may queue on one of them behind each other (its prefetch) while
/// the other is idle.
async fn patient_pool() -> Pool {
    Pool::builder(TestWorker)
        .size(1)
        .configure(|c| {
            c.sweep_on_start = false;
            c.shutdown_grace_period = Duration::from_millis(300);
            c.queue_timeout = Duration::from_secs(60);
        })
        .start()
        .await
        .unwrap()
}

/// Calls completed by the pools together.
fn completed(pools: &[&Pool]) -> u64 {
    pools.iter().map(|p| p.stats().completed).sum()
}

/// docs/cluster.md, Deployment: "two hosts started with one id by mistake
/// share its calls (a call goes to one of them, never to both), and
/// clients see them as one host whose room jumps between the two
/// announcements". Each heartbeat of the two names a run of its own, as a
/// restart of the host would: calls that run longer than `host_timeout`
/// on either must still end with their results (neither run falls
/// silent), every call runs exactly once, and both hosts serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_under_one_id_share_its_calls_each_runs_once_and_none_is_lost() {
    let nats = NatsServer::start().await;
    let (c1, c2) = (nats.connect().await, nats.connect().await);
    let (p1, p2) = (patient_pool().await, patient_pool().await);
    let n1 = serve(&c1, "dup", &p1).await;
    let n2 = serve(&c2, "dup", &p2).await;
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;

    // Longer than the default host timeout (1.5 s), on both hosts at once.
    let long = (0..4).map(|i| {
        let client = client.clone();
        async move {
            let opts = snakepit_core::CallOptions::new().timeout(Duration::from_secs(50));
            let r = client
                .execute_with("sleep", json!({"ms": 2_000, "token": i}), opts)
                .await;
            (i, r)
        }
    });
    let done = guarded("the long calls", futures_util::future::join_all(long)).await;
    for (i, r) in done {
        let r = r.unwrap_or_else(|e| panic!("long call {i} on a shared id: {e:?}"));
        assert_eq!(r["token"], i);
    }

    // One at a time, each its own message: NATS gives each to one of
    // the two (a queue group), both in 40.
    let mut pids = std::collections::HashSet::new();
    for i in 0..40 {
        let r = guarded("a short call", client.execute("echo", json!({"token": i})))
            .await
            .unwrap_or_else(|e| panic!("call {i} on a shared id: {e:?}"));
        assert_eq!(r["echoed"]["token"], i);
        pids.insert(pid_of(&r));
    }
    eventually(30, "the pools count 44 calls", || async {
        completed(&[&p1, &p2]) >= 44
    })
    .await;
    // Nothing more runs: no call went to both.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(completed(&[&p1, &p2]), 44, "a call ran twice");
    assert!(
        p1.stats().completed > 0 && p2.stats().completed > 0,
        "both hosts served: {} and {}",
        p1.stats().completed,
        p2.stats().completed
    );
    assert_eq!(pids.len(), 2, "both workers served: {pids:?}");
    stop(n1, p1).await;
    stop(n2, p2).await;
}

/// A call dropped by its caller on an id two hosts share is cancelled on
/// the host that runs it (the cancel reaches both; the other has no such
/// call), and both workers are free again; a stream on the shared id
/// delivers every chunk, with its credit reaching the host that runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_an_id_two_hosts_share_a_dropped_call_is_cancelled_and_a_stream_delivers_all() {
    use futures_util::StreamExt;
    let nats = NatsServer::start().await;
    let (c1, c2) = (nats.connect().await, nats.connect().await);
    let (p1, p2) = (pool(1).await, pool(1).await);
    let n1 = serve(&c1, "dup", &p1).await;
    let n2 = serve(&c2, "dup", &p2).await;
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;

    let call = client.execute("sleep", json!({"ms": 60_000}));
    let dropped = tokio::time::timeout(Duration::from_secs(3), call).await;
    assert!(dropped.is_err(), "the call was still running: {dropped:?}");
    eventually(30, "the dropped call is cancelled on its host", || async {
        p1.stats().cancelled + p2.stats().cancelled == 1
            && p1.stats().busy == 0
            && p2.stats().busy == 0
    })
    .await;

    // 1,000 chunks: several windows of credit, which go to both hosts.
    let mut stream = client
        .execute_stream(
            "stream",
            json!({"n": 1000}),
            snakepit_core::CallOptions::new(),
        )
        .await
        .unwrap();
    let mut chunks = 0;
    let mut done = None;
    while let Some(item) = guarded("the stream", stream.next()).await {
        match item.unwrap() {
            snakepit_core::StreamItem::Chunk(v) => {
                assert_eq!(v["i"], chunks);
                chunks += 1;
            }
            snakepit_core::StreamItem::Done(v) => done = Some(v),
            _ => {}
        }
    }
    assert_eq!(chunks, 1000);
    assert_eq!(done.unwrap()["done"], 1000);
    stop(n1, p1).await;
    stop(n2, p2).await;
}

/// docs/cluster.md, Capacity: until its workers have timed calls, a host
/// takes the most prefetch, so a burst of long calls to a fresh host
/// queues there, in its pool, under the pool's own `queue_timeout`: with
/// a one-worker host whose pool waits at most 1 s, three calls of 1.5 s
/// sent at once (each with a 30 s deadline) all go to the host, one runs,
/// and the two queued behind it fail there with `QueueTimeout(1 s)`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_host_takes_a_burst_of_long_calls_into_its_pools_queue() {
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let pool = Pool::builder(TestWorker)
        .size(1)
        .configure(|c| {
            c.sweep_on_start = false;
            c.shutdown_grace_period = Duration::from_millis(300);
            c.queue_timeout = Duration::from_secs(1);
        })
        .start()
        .await
        .unwrap();
    let node = serve(&conn, "a", &pool).await;
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    assert_eq!(
        client.hosts()[0].capacity,
        33,
        "1 worker + the most prefetch"
    );

    let calls = (0..3).map(|i| {
        let client = client.clone();
        async move {
            let opts = snakepit_core::CallOptions::new().timeout(Duration::from_secs(30));
            client
                .execute_with("sleep", json!({"ms": 1_500, "token": i}), opts)
                .await
        }
    });
    let outcomes = guarded("the calls", futures_util::future::join_all(calls)).await;
    let ok = outcomes.iter().filter(|r| r.is_ok()).count();
    let queue_timeouts = outcomes
        .iter()
        .filter(|r| matches!(r, Err(Error::QueueTimeout(d)) if *d == Duration::from_secs(1)))
        .count();
    assert_eq!((ok, queue_timeouts), (1, 2), "{outcomes:?}");
    assert_eq!(
        pool.stats().queue_timeouts,
        2,
        "they timed out in the host's pool"
    );
    stop(node, pool).await;
}

/// docs/sessions.md: `delete_global_program` removes a global program,
/// `false` if there was none; the bundled stores implement it. The NATS
/// KV store had only the trait's default (`Error::Unsupported`). Deleted
/// through one store handle, the program is gone for another; deleting it
/// again is `false`; storing it again brings it back; the deleting
/// handle counts it in `stats`, and the bucket keeps no marker of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_program_deleted_through_one_handle_is_gone_for_every_host() {
    let nats = NatsServer::start().await;
    let (a, b) = (kv_store(&nats).await, kv_store(&nats).await);
    a.store_global_program("p", json!({"code": 1}))
        .await
        .unwrap();
    assert_eq!(b.get_global_program("p").await.unwrap()["code"], 1);
    assert!(b.delete_global_program("p").await.unwrap());
    let gone = a.get_global_program("p").await;
    assert!(
        matches!(gone, Err(snakepit_session::Error::ProgramNotFound { .. })),
        "{gone:?}"
    );
    assert!(!a.delete_global_program("p").await.unwrap());
    assert!(!a.delete_global_program("never").await.unwrap());
    let bad = a.delete_global_program("").await;
    assert!(
        matches!(bad, Err(snakepit_session::Error::Invalid { .. })),
        "{bad:?}"
    );
    let stats = b.stats().await.unwrap();
    assert_eq!(
        (stats.global_programs, stats.global_programs_deleted),
        (0, 1)
    );
    let kv = async_nats::jetstream::new(nats.connect().await)
        .get_key_value("snakepit_sessions")
        .await
        .unwrap();
    let mut keys = kv.keys().await.unwrap();
    use futures_util::StreamExt;
    let mut left = Vec::new();
    while let Some(k) = keys.next().await {
        left.push(k.unwrap());
    }
    assert!(left.is_empty(), "markers left: {left:?}");
    a.store_global_program("p", json!({"code": 2}))
        .await
        .unwrap();
    assert_eq!(b.get_global_program("p").await.unwrap()["code"], 2);
}
