//! More promises of docs/cluster.md, shown from outside against a real
//! nats-server (127.0.0.1, JetStream on, a port of its own, stopped by each
//! test) and real Python workers (`tests/workers/outside_more_worker.py`):
//!
//! - a start failure of the host's workers (with its stderr tail) reaches a
//!   cluster caller as the same `Error::StartFailed` a caller of the host's
//!   pool gets, both for a call the host took before its workers broke and
//!   for a call made after (cluster.md:285-289);
//! - the host's adapter hooks (validation, unsupported commands, refused
//!   results, reshaped arguments and results) act on cluster calls as on
//!   the pool's, and a typed `call` skips them on both (cluster.md:31-35,
//!   285-289);
//! - a call without a timeout waits for as long as its host lives, many
//!   host timeouts long, and fails with the host-lost error when the host
//!   is killed (cluster.md:127-131, 120-123);
//! - a session whose stored data does not parse is left out of listings,
//!   stats and the sweep "with a warning in the log" (cluster.md:242-246).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use snakepit_cluster::{is_host_lost, Client, ClientConfig, NatsKvStore, ServeOptions};
use snakepit_core::{Adapter, CallOptions, Error, Launch, Pool, StartError, WireCodec};
use snakepit_session::SessionStore;

/// Only turns a hang into a failure of a test.
const GUARD: Duration = Duration::from_secs(30);

fn worker_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/outside_more_worker.py")
}

/// Not a test of its own: the body of the host processes of this file
/// (`HostProcess::start("outside_more_host_process", ...)`).
#[test]
fn outside_more_host_process() {
    host_main_with(ScriptWorker(worker_script()));
}

/// A fresh path in the temporary directory (nothing there yet).
fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "snakepit-outside-more-{}-{name}-{}",
        std::process::id(),
        free_port()
    ))
}

/// `fut`, failing the test if it takes longer than [`GUARD`].
async fn guarded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not end within {GUARD:?}"))
}

// ------------------------------------------------------ start failures

/// A host (`broken`, served from this process) whose one worker broke
/// while it ran a call: every later start of the worker fails (it says why
/// on stderr and exits 7), and the pool's breaker stays open for a minute.
struct BrokenHost {
    _nats: NatsServer,
    pool: Pool,
    node: snakepit_cluster::Node,
    client: Client,
    /// What the call the host had taken, waiting in its pool while the
    /// worker broke, ended with.
    taken: Error,
    _files: [TempFile; 2],
}

/// Removes its file on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts the host, breaks its worker and returns once the call it had
/// taken (an `echo` waiting in its pool behind the breaking call) ended.
async fn broken_host(queue_timeout: Duration) -> BrokenHost {
    let nats = NatsServer::start().await;
    let marker = TempFile(temp_path("broken"));
    let gate = TempFile(temp_path("gate"));
    let pool = Pool::builder(ScriptWorker(worker_script()))
        .worker_env("OUTSIDE_BROKEN", &marker.0)
        .size(1)
        .name("outside-more-broken")
        .configure(|c| {
            c.sweep_on_start = false;
            c.shutdown_grace_period = Duration::from_millis(300);
            // Nothing written ahead: the second call waits in the pool's
            // queue, not in the pipe of the worker that breaks.
            c.pipeline_depth = 0;
            // One failed start opens the breaker, for longer than the test.
            c.breaker_threshold = 1;
            c.breaker_cooldown = Duration::from_secs(120);
            c.restart_backoff = Duration::from_millis(10);
        })
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    let node = snakepit_cluster::serve_with(
        &nats.connect().await,
        "test",
        pool.clone(),
        ServeOptions::new().host_id("broken"),
    )
    .await
    .unwrap();
    let mut config = ClientConfig::default();
    config.queue_timeout = queue_timeout;
    let client = client(&nats, config).await;
    wait_hosts(&client, 1).await;
    let holding = {
        let client = client.clone();
        let args = json!({"gate": gate.0, "marker": marker.0});
        tokio::spawn(async move { client.execute("hold", args).await })
    };
    eventually(30, "the host's worker runs the breaking call", || async {
        pool.stats().busy == 1
    })
    .await;
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("echo", json!({"token": 1})).await })
    };
    eventually(30, "the second call waits in the host's pool", || async {
        pool.stats().queued == 1
    })
    .await;
    // The worker must have lived over a second, so that its end is a
    // crash and the failure that opens the breaker is its replacement's
    // start (an earlier end counts as a failed start itself).
    let lived = started.elapsed();
    if lived < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(1500) - lived).await;
    }
    std::fs::write(&gate.0, "go").unwrap();
    let crashed = guarded("the breaking call", holding).await.unwrap();
    assert!(
        matches!(crashed, Err(Error::WorkerCrashed(_))),
        "the call its worker died in: {crashed:?}"
    );
    let taken = guarded("the call waiting in the host's pool", waiting)
        .await
        .unwrap()
        .expect_err("no worker can start to run it");
    BrokenHost {
        _nats: nats,
        pool,
        node,
        client,
        taken,
        _files: [marker, gate],
    }
}

/// The `StartError` of `e`, or a panic naming `what`.
fn start_error<'a>(e: &'a Error, what: &str) -> &'a StartError {
    match e {
        Error::StartFailed(s) => s,
        other => panic!("{what}: expected Error::StartFailed, got {other:?}"),
    }
}

/// Asserts that the two errors are the same `StartFailed`, field by field.
#[track_caller]
fn same_start_failure(local: &Error, remote: &Error) {
    let (l, r) = (
        start_error(local, "the pool's caller"),
        start_error(remote, "the cluster's caller"),
    );
    assert_eq!(l.worker_id, r.worker_id, "worker_id");
    assert_eq!(l.cause, r.cause, "cause");
    assert_eq!(l.stderr_tail, r.stderr_tail, "stderr_tail");
    assert_eq!(local.kind(), remote.kind());
    assert_eq!(local.never_ran(), remote.never_ran(), "never_ran");
    assert_eq!(local.to_string(), remote.to_string());
}

/// docs/cluster.md:285-289, Failures: "Errors from the host's pool (...
/// start failures with their stderr tail, ...) reach the caller as the same
/// variant with the same fields."
///
/// The host's one worker dies in a call while a second call (an `echo`)
/// waits in the host's pool; every new start of the worker fails, saying
/// why on stderr, and the breaker opens. The waiting call's caller, across
/// the cluster, must get `Error::StartFailed` with the worker id, cause and
/// stderr tail that a caller of the host's pool gets, the worker's own
/// words in the tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_failure_on_the_host_reaches_the_caller_with_its_stderr_tail() {
    let host = broken_host(Duration::from_secs(20)).await;
    let local = guarded(
        "a call of the host's pool",
        host.pool.execute("echo", json!({})),
    )
    .await
    .expect_err("the host's pool has no worker");
    same_start_failure(&local, &host.taken);
    let s = start_error(&host.taken, "the cluster's caller");
    assert!(
        s.stderr_tail.contains("cannot load the model"),
        "the worker's stderr: {s:?}"
    );
    assert!(!s.worker_id.is_empty() && !s.cause.is_empty(), "{s:?}");
    host.node.shutdown().await.unwrap();
    host.pool.shutdown().await.unwrap();
}

/// docs/cluster.md:285-289, as above, for a call made once the host's
/// workers cannot start: a caller of the host's pool then gets
/// `Error::StartFailed` at once (core `Error::never_ran`: "no worker able
/// to start with every breaker open"), with the worker's stderr tail.
/// The cluster's caller gets the same variant with the same fields
/// (cluster.md: "When every host there is says none of its workers can
/// start ..."), well before its queue timeout of 3 s. (The host announces
/// no room then; before its heartbeats said why, the call waited and ended
/// with `Error::QueueTimeout`, the worker's stderr tail lost.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_made_after_the_hosts_workers_broke_gets_their_start_failure() {
    let host = broken_host(Duration::from_secs(3)).await;
    let local = guarded(
        "a call of the host's pool",
        host.pool.execute("echo", json!({})),
    )
    .await
    .expect_err("the host's pool has no worker");
    let remote = guarded(
        "a cluster call",
        host.client.execute("echo", json!({"token": 2})),
    )
    .await
    .expect_err("no worker can start to run it");
    host.node.shutdown().await.unwrap();
    host.pool.shutdown().await.unwrap();
    same_start_failure(&local, &remote);
}

/// docs/cluster.md: "When every host there is says none of its workers
/// can start, a call fails at once with that `Error::StartFailed`"; while
/// another host can run it, it goes there. The broken host of the test
/// above, and a healthy host beside it: every call succeeds, on the
/// healthy one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_host_beside_a_healthy_one_fails_no_call() {
    let host = broken_host(Duration::from_secs(3)).await;
    let healthy = pool(1).await;
    let node = snakepit_cluster::serve_with(
        &host._nats.connect().await,
        "test",
        healthy.clone(),
        ServeOptions::new().host_id("healthy"),
    )
    .await
    .unwrap();
    wait_hosts(&host.client, 2).await;
    for i in 0..10 {
        let r = guarded("a call", host.client.execute("echo", json!({"i": i})))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "call {i} with a healthy host there: {e:?} {:?}",
                    host.client.hosts()
                )
            });
        assert_eq!(r["echoed"]["i"], i, "{r}");
    }
    assert_eq!(healthy.stats().completed, 10, "all ran on the healthy host");
    node.shutdown().await.unwrap();
    healthy.shutdown().await.unwrap();
    host.node.shutdown().await.unwrap();
    host.pool.shutdown().await.unwrap();
}

/// The heartbeat's word that a host's workers cannot start is taken only
/// as what it says: a start failure. A host made of raw NATS announces no
/// room and, as why, an error of another kind (`call_timeout`): a call
/// waits and ends with its queue timeout, never with that error. The same
/// host announcing a `start_failed` error: the call fails at once with
/// `StartFailed`, its fields as sent, and `never_ran()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_can_only_announce_a_start_failure() {
    let nats = NatsServer::start().await;
    let raw = nats.connect().await;
    let mut config = ClientConfig::default();
    config.queue_timeout = Duration::from_millis(800);
    let client = client(&nats, config).await;
    for (broken, start_failure) in [
        (
            json!({"kind": "call_timeout", "message": "forged", "ms": 1}),
            false,
        ),
        (
            json!({"kind": "start_failed", "message": "cannot start",
                   "worker_id": "w_1_1", "detail": "exit 7", "tail": "no model"}),
            true,
        ),
    ] {
        let beats = {
            let raw = raw.clone();
            tokio::spawn(async move {
                for seq in 1.. {
                    let hb = json!({"seq": seq, "host": "ghost", "pid": 1, "capacity": 0,
                                    "running": 0, "free": 0, "broken": broken});
                    raw.publish("snakepit.test.hb", hb.to_string().into())
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        wait_hosts(&client, 1).await;
        let e = guarded("a call", client.execute("echo", json!({})))
            .await
            .expect_err("no host can run it");
        beats.abort();
        if start_failure {
            match &e {
                Error::StartFailed(s) => {
                    assert_eq!(
                        (
                            s.worker_id.as_str(),
                            s.cause.as_str(),
                            s.stderr_tail.as_str()
                        ),
                        ("w_1_1", "exit 7", "no model"),
                        "{e:?}"
                    );
                    assert!(e.never_ran(), "{e:?}");
                }
                _ => panic!("announced a start failure: {e:?}"),
            }
        } else {
            assert!(matches!(e, Error::QueueTimeout(_)), "{e:?}");
        }
    }
}

// ------------------------------------------------------- adapter hooks

/// The worker of this file with every adapter hook in use: `nap` longer
/// than 10 s is refused, only `echo`, `nap` and `hold` are taken, an `echo`
/// gets `"prepared": true` in its arguments, and its result is wrapped
/// in `{"processed": ...}` (or refused when its token is `"refuse"`).
struct Hooked;

impl Adapter for Hooked {
    fn launch(&self) -> Launch {
        ScriptWorker(worker_script()).launch()
    }
    fn codec(&self) -> WireCodec {
        WireCodec::Json
    }
    fn supported_commands(&self) -> Option<Vec<String>> {
        Some(vec!["echo".into(), "nap".into(), "hold".into()])
    }
    fn validate_command(&self, command: &str, args: &Value) -> Result<(), String> {
        match args["ms"].as_u64() {
            Some(ms) if command == "nap" && ms > 10_000 => {
                Err(format!("naps of more than 10 s are not allowed: {ms} ms"))
            }
            _ => Ok(()),
        }
    }
    fn prepare_args(&self, command: &str, mut args: Value) -> Value {
        if command == "echo" {
            args["prepared"] = json!(true);
        }
        args
    }
    fn process_response(&self, command: &str, result: Value) -> Result<Value, String> {
        match command {
            "echo" if result["token"] == "refuse" => {
                Err(format!("token `refuse` refused from pid {}", result["pid"]))
            }
            "echo" => Ok(json!({"processed": result})),
            _ => Ok(result),
        }
    }
}

/// docs/cluster.md:285-289: "Errors from the host's pool (..., validation,
/// ...) reach the caller as the same variant with the same fields"; and
/// :31-35: `Client` has "`call::<A, R>` (typed, no adapter hooks, as in the
/// pool) ... with the same names, arguments and `snakepit_core::Error` as
/// `snakepit_core::Pool`: code written against one works against the
/// other".
///
/// A host whose adapter uses every hook, one worker. Each call is made to
/// the host's pool and through the cluster: a refused `nap`
/// (`Validation`), an unknown command (`UnsupportedCommand`), a result the
/// adapter refuses (`ResultRefused`, a call that ran) must be the same
/// variant with the same fields and `never_ran`; an `echo` through
/// `execute` must come back reshaped by the host's hooks exactly as from
/// the pool; a typed `call` must come back untouched by them on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hosts_adapter_hooks_act_on_cluster_calls_as_on_the_pools() {
    let nats = NatsServer::start().await;
    let pool = pool_of(Hooked, 1).await;
    let node = snakepit_cluster::serve_with(
        &nats.connect().await,
        "test",
        pool.clone(),
        ServeOptions::new().host_id("hooked"),
    )
    .await
    .unwrap();
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    let failing = [
        ("nap", json!({"ms": 20_000})),
        ("no_such_command", json!({})),
        ("echo", json!({"token": "refuse"})),
    ];
    for (command, args) in failing {
        let local = guarded("a call of the pool", pool.execute(command, args.clone()))
            .await
            .expect_err("the adapter refuses it");
        let remote = guarded("a cluster call", client.execute(command, args))
            .await
            .expect_err("the host's adapter refuses it");
        assert_eq!(
            local.kind(),
            remote.kind(),
            "{command}: {local:?} vs {remote:?}"
        );
        assert_eq!(local.never_ran(), remote.never_ran(), "{command}");
        match (&local, &remote) {
            (
                Error::Validation {
                    command: a,
                    message: x,
                },
                Error::Validation {
                    command: b,
                    message: y,
                },
            )
            | (
                Error::ResultRefused {
                    command: a,
                    message: x,
                },
                Error::ResultRefused {
                    command: b,
                    message: y,
                },
            ) => assert_eq!((a, x), (b, y)),
            (Error::UnsupportedCommand(a), Error::UnsupportedCommand(b)) => assert_eq!(a, b),
            _ => panic!("{command}: unexpected {local:?} / {remote:?}"),
        }
    }
    let local = pool.execute("echo", json!({"token": 7})).await.unwrap();
    let remote = client.execute("echo", json!({"token": 7})).await.unwrap();
    assert_eq!(local, remote, "reshaped by the host's hooks alike");
    assert_eq!(remote["processed"]["prepared"], true, "{remote}");
    assert_eq!(remote["processed"]["token"], 7, "{remote}");
    let args = json!({"token": 8});
    let local: Value = pool.call("echo", &args, CallOptions::new()).await.unwrap();
    let remote: Value = client
        .call("echo", &args, CallOptions::new())
        .await
        .unwrap();
    assert_eq!(local, remote, "a typed call alike on both");
    assert!(remote.get("processed").is_none(), "no hooks: {remote}");
    assert!(remote["prepared"].is_null(), "no hooks: {remote}");
    assert_eq!(remote["token"], 8, "{remote}");
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

// ---------------------------------------------- calls without a timeout

/// docs/cluster.md:127-131, Deadlines: "Without a `CallOptions::timeout`
/// the host's pool applies its own default ... and the client waits for
/// as long as the host lives: give calls a timeout to bound them against
/// such a host"; :120-123: "A host that cannot answer at all (killed,
/// stopped, cut off) stops its heartbeats too: its calls fail with the
/// host-lost error one host timeout after it last spoke, deadline or not".
///
/// A host process of one worker; a client with a host timeout of 1 s. A
/// call of 4 s without a timeout (four host timeouts, past the 50 ms
/// acknowledgement, with nothing but heartbeats from the host meanwhile)
/// must succeed. Then a call of 25 s without a timeout runs for over two
/// host timeouts when the host is SIGKILLed: it must fail with
/// `Error::HostLost` naming the host (a call that may have run), long
/// before its 25 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_a_timeout_lasts_as_long_as_its_host_lives() {
    let nats = NatsServer::start().await;
    let mut host = HostProcess::start("outside_more_host_process", &nats.url, "lives", 1).await;
    let mut config = ClientConfig::default();
    config.host_timeout = Duration::from_secs(1);
    let client = client(&nats, config).await;
    wait_hosts(&client, 1).await;
    let r = guarded("a 4 s call", client.execute("nap", json!({"ms": 4_000})))
        .await
        .expect("a call longer than the host timeout, its host alive");
    assert_eq!(r["slept_ms"], 4_000, "{r}");
    assert!(host.workers.contains(&(r["pid"].as_u64().unwrap() as u32)));

    let long = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("nap", json!({"ms": 25_000})).await })
    };
    eventually(30, "the host's worker runs the long call", || async {
        client
            .status(Duration::from_millis(300))
            .await
            .is_ok_and(|s| s.first().is_some_and(|h| h["busy"] == 1))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !long.is_finished(),
        "the call still runs while its host lives"
    );
    host.kill();
    let e = tokio::time::timeout(Duration::from_secs(15), long)
        .await
        .expect("the call ends once its host is lost, not after its 25 s")
        .unwrap()
        .expect_err("its host was killed");
    assert!(is_host_lost(&e), "{e:?}");
    match &e {
        Error::HostLost { host, message } => {
            assert_eq!(host, "lives", "{e}");
            assert!(!message.is_empty(), "{e}");
        }
        other => panic!("expected Error::HostLost, got {other:?}"),
    }
    assert!(!e.never_ran(), "it may have run: {e:?}");
}

// ------------------------------------------------- corrupt KV sessions

/// The key `NatsKvStore` keeps session `id` at (kv.rs: `s.<hex id>`).
fn session_key(id: &str) -> String {
    let mut s = "s.".to_string();
    for b in id.bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The warnings logged so far about session `id`: their messages.
fn warnings_about(events: &snakepit_tests::Events, id: &str) -> Vec<String> {
    events
        .all()
        .into_iter()
        .filter(|(_, level, fields)| {
            *level == tracing::Level::WARN && fields.iter().any(|(n, v)| n == "session" && v == id)
        })
        .map(|(target, _, fields)| {
            let message = fields
                .iter()
                .find(|(n, _)| n == "message")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            format!("{target}: {message}")
        })
        .collect()
}

/// docs/cluster.md:242-246, `NatsKvStore`: "A session whose stored data
/// does not parse (written by something else) is `Corrupt` to every read
/// and write, is left out of `list_sessions`, `stats` and the sweep (with a
/// warning in the log) rather than stopping them".
///
/// Garbage is put at the key of a session whose id has a space, a quote
/// and non-ASCII letters, next to a good session. Each of `list_sessions`,
/// `stats` and `cleanup_expired` must leave it out and log one warning
/// naming that session (decoded, as the user knows it); a second store
/// handle's background sweep must log it too, with no call made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_session_is_left_out_with_a_warning_in_the_log() {
    let events = snakepit_tests::Events::global();
    let server = NatsServer::start().await;
    let id = "user 42 \"é\" ünï";
    let store = NatsKvStore::builder(&server.connect().await)
        .sweep_interval(Duration::from_secs(3600))
        .connect()
        .await
        .unwrap();
    store.ensure_session("fine").await.unwrap();
    async_nats::jetstream::new(server.connect().await)
        .get_key_value("snakepit_sessions")
        .await
        .unwrap()
        .put(session_key(id), "{\"id\": \"half a sess".into())
        .await
        .unwrap();
    assert!(matches!(
        store.get_session(id).await,
        Err(snakepit_session::Error::Corrupt(_))
    ));
    assert_eq!(warnings_about(events, id), Vec::<String>::new());

    let listed = guarded("list_sessions", store.list_sessions()).await;
    assert_eq!(listed.unwrap(), vec!["fine".to_string()]);
    let logged = warnings_about(events, id);
    assert_eq!(logged.len(), 1, "one warning for the listing: {logged:?}");
    assert!(
        logged[0].starts_with("snakepit::session: ") && logged[0].contains("does not parse"),
        "{logged:?}"
    );

    let stats = guarded("stats", store.stats()).await.unwrap();
    assert_eq!(stats.active_sessions, 1, "{stats:?}");
    assert_eq!(warnings_about(events, id).len(), 2, "one more for stats");

    let swept = guarded("cleanup_expired", store.cleanup_expired()).await;
    assert_eq!(swept.unwrap(), 0);
    assert_eq!(
        warnings_about(events, id).len(),
        3,
        "one more for the sweep"
    );

    // The background sweep of another handle, no call made.
    let sweeper = NatsKvStore::builder(&server.connect().await)
        .sweep_interval(Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    eventually(
        30,
        "the background sweep logs the corrupt session",
        || async { warnings_about(events, id).len() > 3 },
    )
    .await;
    drop(sweeper);
    assert_eq!(
        store.list_sessions().await.unwrap(),
        vec!["fine".to_string()]
    );
}

/// docs/cluster.md:172-175, Acknowledgement: "a call that takes longer
/// than 50 ms is acknowledged by its host; a shorter one's result is its
/// acknowledgement. A call neither acknowledged nor answered within
/// `host_timeout` fails with the host-lost error."
///
/// A fake host on raw NATS that heartbeats every 100 ms (so it is alive
/// throughout) takes the call off the bus and never says a word about it.
/// The call, made without a timeout (nothing else would end it), must
/// fail with `Error::HostLost` naming that host, one that may have run,
/// although the host's heartbeats never stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_its_live_host_never_acknowledges_fails_with_host_lost() {
    use futures_util::StreamExt;
    let nats = NatsServer::start().await;
    let raw = nats.connect().await;
    let mut calls = subscribed(&raw, &["snakepit.test.host.mute.call"])
        .await
        .pop()
        .unwrap();
    let beats = fake_heartbeats(&raw, "mute");
    let mut config = ClientConfig::default();
    config.host_timeout = Duration::from_millis(800);
    let client = client(&nats, config).await;
    wait_hosts(&client, 1).await;
    let call = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("echo", json!({"token": 5})).await })
    };
    let taken = guarded("the call reaches the fake host", calls.next())
        .await
        .expect("a call");
    let sent: Value = serde_json::from_slice(&taken.payload).unwrap();
    assert_eq!(sent["command"], "echo", "{sent}");
    let e = guarded("the unacknowledged call", call)
        .await
        .unwrap()
        .expect_err("nobody answered it");
    beats.abort();
    match &e {
        Error::HostLost { host, message } => {
            assert_eq!(host, "mute", "{e}");
            assert!(message.contains("acknowledge"), "the message says how: {e}");
        }
        other => panic!("expected Error::HostLost, got {other:?}"),
    }
    assert!(!e.never_ran(), "{e:?}");
    assert_eq!(client.hosts().len(), 1, "the host itself still beats");
}

// ------------------------------------------------- two hosts, one id

/// docs/cluster.md:66-69, Deployment: "Give each host an id of its own:
/// two hosts started with one id by mistake share its calls (a call goes to
/// one of them, never to both), and clients see them as one host whose
/// room jumps between the two announcements."
///
/// Two hosts of one worker each, both `twin`, on connections of their
/// own. The client must list one host. Of 20 calls made one after another
/// and 20 made at once, each must be answered once and run once in all
/// (the two pools' requests add up to 40), and both hosts must have run
/// some (each lone call goes to either: all 20 to one would be a chance
/// of one in half a million).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_with_one_id_share_its_calls_and_never_both_run_one() {
    let nats = NatsServer::start().await;
    let pools = [
        pool_of(ScriptWorker(worker_script()), 1).await,
        pool_of(ScriptWorker(worker_script()), 1).await,
    ];
    let mut nodes = Vec::new();
    for pool in &pools {
        nodes.push(
            snakepit_cluster::serve_with(
                &nats.connect().await,
                "test",
                pool.clone(),
                ServeOptions::new().host_id("twin"),
            )
            .await
            .unwrap(),
        );
    }
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 1).await;
    assert_eq!(client.hosts()[0].id, "twin");
    let mut by_pid = std::collections::HashMap::<u64, usize>::new();
    // One after another: each call is a message of its own, which the
    // server gives to either host.
    for i in 0..20 {
        let r = guarded(
            "a call of twin",
            client.execute("echo", json!({"token": i})),
        )
        .await
        .unwrap();
        assert_eq!(r["token"], i, "{r}");
        *by_pid.entry(r["pid"].as_u64().unwrap()).or_default() += 1;
    }
    // At once: calls made together may share a message.
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.execute("nap", json!({"ms": 20, "i": i})).await })
        })
        .collect();
    for call in calls {
        let r = guarded("a call of twin", call).await.unwrap().unwrap();
        *by_pid.entry(r["pid"].as_u64().unwrap()).or_default() += 1;
    }
    let requests: Vec<u64> = pools.iter().map(|p| p.stats().requests).collect();
    for node in nodes {
        node.shutdown().await.unwrap();
    }
    for pool in &pools {
        pool.shutdown().await.unwrap();
    }
    assert_eq!(
        requests.iter().sum::<u64>(),
        40,
        "each call run once: {requests:?}"
    );
    assert!(
        requests.iter().all(|&n| n > 0),
        "both ran some: {requests:?}"
    );
    assert_eq!(by_pid.len(), 2, "answered by both workers: {by_pid:?}");
    assert_eq!(by_pid.values().sum::<usize>(), 40);
}
