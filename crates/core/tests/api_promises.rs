//! The promises of snakepit-core's API docs (rustdoc) that no other test
//! shows, each against real worker processes (`workers/api_worker.py`, on
//! the Python bridge).

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use snakepit_core::{
    Adapter, CallOptions, CallStream, Error, ExitReason, Launch, Pool, PoolConfig, StreamItem,
    WireCodec,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `workers/api_worker.py`, with what each test needs of an adapter.
#[derive(Default)]
struct Api {
    env: Vec<(&'static str, &'static str)>,
    codec: Option<WireCodec>,
    command_timeout: Option<Duration>,
    supported: Option<Vec<String>>,
    reject_results: bool,
}

impl Adapter for Api {
    fn launch(&self) -> Launch {
        let mut l = Launch::new(python())
            .arg(root().join("crates/core/tests/workers/api_worker.py"))
            .env("PYTHONPATH", root().join("bridges/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1");
        for (k, v) in &self.env {
            l = l.env(k, v);
        }
        l
    }
    fn codec(&self) -> WireCodec {
        self.codec.unwrap_or_default()
    }
    fn command_timeout(&self, command: &str) -> Duration {
        match self.command_timeout {
            Some(t) if command == "hold" => t,
            _ => Duration::from_secs(30),
        }
    }
    fn supported_commands(&self) -> Option<Vec<String>> {
        self.supported.clone()
    }
    fn process_response(&self, _: &str, result: Value) -> Result<Value, String> {
        if self.reject_results && result["echoed"]["reject"] == true {
            Err("the result has no `answer`".into())
        } else {
            Ok(result)
        }
    }
}

/// A `hold` call's files: `started` is written when it runs, creating
/// `release` ends it.
struct Hold {
    dir: PathBuf,
}

impl Hold {
    fn new(tag: &str) -> Self {
        Hold { dir: temp_dir(tag) }
    }
    fn args(&self, token: &str) -> Value {
        json!({
            "started": self.dir.join(format!("started-{token}")),
            "release": self.dir.join("release"),
            "token": token,
        })
    }
    /// Waits until the call `token` runs; its worker's pid.
    async fn started(&self, token: &str) -> u32 {
        let path = self.dir.join(format!("started-{token}"));
        assert!(
            eventually(20, || read_pid(&path).is_some()).await,
            "call {token} never started"
        );
        read_pid(&path).unwrap()
    }
    fn release(&self) {
        std::fs::write(self.dir.join("release"), b"go").unwrap();
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("release"), b"go");
    }
}

async fn next(stream: &mut CallStream) -> Option<snakepit_core::Result<StreamItem>> {
    use futures_core::Stream;
    std::future::poll_fn(|cx| std::pin::Pin::new(&mut *stream).poll_next(cx)).await
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

async fn start(adapter: Api, size: usize) -> Pool {
    builder(adapter).size(size).start().await.unwrap()
}

/// `PoolBuilder::worker_env`: "Sets an environment variable in every
/// worker, unless the adapter's own launch sets it (the adapter wins)."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_env_reaches_every_worker_unless_the_adapters_launch_sets_it() {
    let adapter = Api {
        env: vec![("API_BOTH", "from-adapter")],
        ..Api::default()
    };
    let pool = builder(adapter)
        .size(2)
        .worker_env("API_POOL", "from-pool")
        .worker_env("API_BOTH", "from-pool")
        .start()
        .await
        .unwrap();
    let r = pool
        .execute("env", json!({"keys": ["API_POOL", "API_BOTH"]}))
        .await
        .unwrap();
    assert_eq!(r["vars"]["API_POOL"], "from-pool", "{r}");
    assert_eq!(
        r["vars"]["API_BOTH"], "from-adapter",
        "the adapter wins: {r}"
    );
    // Every worker, not only the one that answered.
    for pid in pool.worker_pids() {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        assert!(vars.contains(&&b"API_POOL=from-pool"[..]), "worker {pid}");
        assert!(
            vars.contains(&&b"API_BOTH=from-adapter"[..]),
            "worker {pid}"
        );
    }
    pool.shutdown().await.unwrap();
}

/// `PoolBuilder::name` ("it prefixes worker ids"), `PoolBuilder::codec`
/// ("Overrides the adapter's codec"), `Pool::name`, `Pool::codec`, and
/// `WorkerInfo::id` (`SNAKEPIT_WORKER_ID`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_name_prefixes_worker_ids_and_the_builders_codec_overrides_the_adapters() {
    let adapter = Api {
        codec: Some(WireCodec::Json),
        ..Api::default()
    };
    let pool = builder(adapter)
        .size(2)
        .name("alpha")
        .codec(WireCodec::MsgPack)
        .start()
        .await
        .unwrap();
    assert_eq!(pool.name(), "alpha");
    assert_eq!(pool.codec(), WireCodec::MsgPack);
    let r = pool
        .execute(
            "env",
            json!({"keys": ["SNAKEPIT_CODEC", "SNAKEPIT_WORKER_ID"]}),
        )
        .await
        .unwrap();
    assert_eq!(r["vars"]["SNAKEPIT_CODEC"], "msgpack", "{r}");
    let id = r["worker_id"].as_str().unwrap();
    assert_eq!(r["vars"]["SNAKEPIT_WORKER_ID"], id);
    assert!(id.starts_with("alpha"), "{id}");
    let pid = r["pid"].as_u64().unwrap() as u32;
    let info = pool.workers();
    let me = info.iter().find(|w| w.pid == pid).expect("listed");
    assert_eq!(me.id, id, "WorkerInfo::id is SNAKEPIT_WORKER_ID");
    // protocol.md: `<pool name>_worker_<slot, from 1>_<start of that slot>`.
    let mut ids: Vec<&str> = info.iter().map(|w| w.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["alpha_worker_1_1", "alpha_worker_2_1"], "{info:?}");
    assert_eq!(pool.template_pid(), None, "no template without preload");
    pool.shutdown().await.unwrap();
}

/// `Pool::workers`/`WorkerInfo`: one ready worker per slot ("0-based"),
/// its pid (`worker_pids`), its capacity ("what it declared, within the
/// pool's bound"); `Stats::capacity` is their sum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_lists_each_slot_once_with_its_pid_and_capacity() {
    let pool = builder(Api::default())
        .size(3)
        .configure(|c| c.max_concurrency_per_worker = 1)
        .start()
        .await
        .unwrap();
    let info = pool.workers();
    let slots: BTreeSet<usize> = info.iter().map(|w| w.slot).collect();
    assert_eq!(slots, BTreeSet::from([0, 1, 2]), "{info:?}");
    let pids: BTreeSet<u32> = info.iter().map(|w| w.pid).collect();
    assert_eq!(pids, pool.worker_pids().into_iter().collect());
    assert_eq!(pids.len(), 3);
    for w in &info {
        assert_eq!(w.capacity, 1, "{w:?}");
        assert_eq!(w.in_flight, 0, "{w:?}");
    }
    let s = pool.stats();
    assert_eq!((s.workers, s.capacity, s.available, s.busy), (3, 3, 3, 0));
    pool.shutdown().await.unwrap();
}

/// `WorkerInfo::served`: "Calls it has answered". The pool's own init
/// ping (and health pings) are not calls of anybody's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_info_served_counts_the_calls_each_worker_answered() {
    let pool = start(Api::default(), 3).await;
    let mut served_by: HashMap<u32, u64> = HashMap::new();
    for _ in 0..7 {
        let r = pool.execute("echo", json!({})).await.unwrap();
        *served_by
            .entry(r["pid"].as_u64().unwrap() as u32)
            .or_default() += 1;
    }
    let info = pool.workers();
    for w in &info {
        let calls = served_by.get(&w.pid).copied().unwrap_or(0);
        assert_eq!(w.served, calls, "{w:?}");
    }
    assert_eq!(info.iter().map(|w| w.served).sum::<u64>(), 7, "{info:?}");
    pool.shutdown().await.unwrap();
}

/// `Stats::busy`, `available`, `in_flight` and `WorkerInfo::in_flight`
/// while a call runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_call_shows_as_busy_and_in_flight_on_its_worker() {
    let pool = start(Api::default(), 2).await;
    let hold = Hold::new("busy");
    let held = {
        let pool = pool.clone();
        let args = hold.args("a");
        tokio::spawn(async move { pool.execute("hold", args).await })
    };
    let pid = hold.started("a").await;
    let s = pool.stats();
    assert_eq!(
        (s.workers, s.busy, s.available, s.in_flight, s.queued),
        (2, 1, 1, 1, 0),
        "{s:?}"
    );
    for w in pool.workers() {
        assert_eq!(w.in_flight, usize::from(w.pid == pid), "{w:?}");
    }
    hold.release();
    assert_eq!(held.await.unwrap().unwrap()["pid"], pid);
    let s = pool.stats();
    assert_eq!((s.busy, s.available, s.in_flight), (0, 2, 0), "{s:?}");
    pool.shutdown().await.unwrap();
}

/// `Error::ShutDown`: "The pool is shutting down or was shut down", and
/// `never_ran` says so, for every way of calling; a second `shutdown` is
/// harmless and the pool lists no worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_of_calling_a_shut_down_pool_fails_with_shut_down_that_never_ran() {
    let pool = start(Api::default(), 1).await;
    pool.execute("echo", json!({})).await.unwrap();
    pool.shutdown().await.unwrap();
    pool.shutdown().await.expect("shutting down twice is fine");
    let errors = vec![
        pool.execute("echo", json!({})).await.unwrap_err(),
        pool.execute_in_session("s", "echo", json!({}))
            .await
            .unwrap_err(),
        pool.execute_with(
            "echo",
            json!({}),
            CallOptions::new().timeout(Duration::from_secs(1)),
        )
        .await
        .unwrap_err(),
        pool.call::<_, Value>("echo", &json!({}), CallOptions::new())
            .await
            .unwrap_err(),
        match pool
            .execute_stream("stream", json!({"n": 2}), CallOptions::new())
            .await
        {
            Err(e) => e,
            Ok(mut s) => match next(&mut s).await {
                Some(Err(e)) => e,
                other => panic!("a stream on a shut-down pool yielded {other:?}"),
            },
        },
    ];
    for e in &errors {
        assert!(matches!(e, Error::ShutDown), "{e}");
        assert_eq!(e.kind(), "shut_down");
        assert!(e.never_ran() && !e.is_crash() && !e.is_timeout(), "{e}");
    }
    assert!(pool.worker_pids().is_empty());
    assert!(pool.workers().is_empty());
    assert_eq!(pool.stats().workers, 0);
}

/// `CallOptions::timeout`: "the adapter's `command_timeout` when `None`";
/// `Error::CallTimeout`'s `timeout` is "The deadline it had"; a call
/// timeout `is_timeout`, ran (not `never_ran`), and is counted in
/// `Stats::call_timeouts` and `errors`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_a_timeout_has_the_adapters_command_timeout() {
    let adapter = Api {
        command_timeout: Some(Duration::from_millis(400)),
        ..Api::default()
    };
    let pool = start(adapter, 1).await;
    let hold = Hold::new("adapter-timeout");
    let err = pool.execute("hold", hold.args("a")).await.unwrap_err();
    match &err {
        Error::CallTimeout { command, timeout } => {
            assert_eq!(command, "hold");
            assert_eq!(*timeout, Duration::from_millis(400), "the adapter's");
        }
        other => panic!("not a call timeout: {other}"),
    }
    assert_eq!(err.kind(), "call_timeout");
    assert!(
        err.is_timeout() && !err.never_ran() && !err.is_crash(),
        "{err}"
    );
    // An explicit timeout wins over the adapter's.
    let err = pool
        .execute_with(
            "hold",
            hold.args("b"),
            CallOptions::new().timeout(Duration::from_millis(250)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::CallTimeout { timeout, .. } if timeout == Duration::from_millis(250)),
        "{err}"
    );
    let s = pool.stats();
    assert_eq!(
        (s.requests, s.call_timeouts, s.errors, s.completed),
        (2, 2, 2, 0),
        "{s:?}"
    );
    hold.release();
    pool.shutdown().await.unwrap();
}

/// `Error::QueueTimeout(d)`: `d` is the configured queue timeout; it is a
/// timeout that never ran; `Stats::queue_timeouts` and `errors` count it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_timeout_carries_the_configured_timeout_and_never_ran() {
    let pool = builder(Api::default())
        .size(1)
        .configure(|c| {
            c.queue_timeout = Duration::from_millis(200);
            c.pipeline_depth = 0;
        })
        .start()
        .await
        .unwrap();
    let hold = Hold::new("queue");
    let held = {
        let pool = pool.clone();
        let args = hold.args("a");
        tokio::spawn(async move { pool.execute("hold", args).await })
    };
    hold.started("a").await;
    let err = pool.execute("echo", json!({})).await.unwrap_err();
    assert!(
        matches!(err, Error::QueueTimeout(d) if d == Duration::from_millis(200)),
        "{err}"
    );
    assert_eq!(err.kind(), "queue_timeout");
    assert!(err.is_timeout() && err.never_ran() && !err.is_crash());
    hold.release();
    held.await.unwrap().unwrap();
    // It never ran: the worker's first echo is the next one.
    assert_eq!(pool.execute("echo", json!({})).await.unwrap()["served"], 1);
    let s = pool.stats();
    assert_eq!(
        (
            s.requests,
            s.completed,
            s.errors,
            s.queue_timeouts,
            s.call_timeouts
        ),
        (3, 2, 1, 1, 0),
        "{s:?}"
    );
    pool.shutdown().await.unwrap();
}

/// `Error::WorkerCrashed`: `is_crash`, `kind` "worker_crashed", it ran;
/// its `Crash` names the worker's pid and id and how it ended
/// (`ExitReason::Signal`); `Stats::crashes`, `errors` and `restarts`
/// count it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_call_is_a_crash_naming_its_pid_and_signal() {
    let pool = start(Api::default(), 1).await;
    let hold = Hold::new("crash");
    let held = {
        let pool = pool.clone();
        let args = hold.args("a");
        tokio::spawn(async move { pool.execute("hold", args).await })
    };
    let pid = hold.started("a").await;
    let id = pool.workers()[0].id.clone();
    kill_9(pid);
    let err = held.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), "worker_crashed");
    assert!(
        err.is_crash() && !err.never_ran() && !err.is_timeout(),
        "{err}"
    );
    match &err {
        Error::WorkerCrashed(crash) => {
            assert_eq!(crash.pid, pid);
            assert_eq!(crash.worker_id, id);
            assert_eq!(crash.exit, ExitReason::Signal(libc::SIGKILL));
        }
        other => panic!("{other}"),
    }
    assert!(eventually(20, || pool.stats().workers == 1).await);
    let s = pool.stats();
    assert_eq!((s.crashes, s.errors, s.restarts), (1, 1, 1), "{s:?}");
    assert_ne!(pool.worker_pids(), vec![pid]);
    pool.shutdown().await.unwrap();
}

/// `Error::UnsupportedCommand` and `Error::Codec` for arguments that cannot
/// be encoded: "it never ran" (`never_ran`), and no worker saw it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_refused_before_sending_never_ran_and_no_worker_saw_them() {
    let adapter = Api {
        supported: Some(vec!["echo".into()]),
        ..Api::default()
    };
    let pool = start(adapter, 1).await;
    let err = pool.execute("hold", json!({})).await.unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedCommand(c) if c == "hold"),
        "{err}"
    );
    assert_eq!(err.kind(), "unsupported_command");
    assert!(err.never_ran());
    // JSON maps need string keys: these arguments cannot be encoded.
    let unencodable: HashMap<(u8, u8), u8> = HashMap::from([((1, 2), 3)]);
    let err = pool
        .call::<_, Value>("echo", &unencodable, CallOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Codec(snakepit_protocol::Error::Encode { .. })),
        "{err}"
    );
    assert_eq!(err.kind(), "codec");
    assert!(err.never_ran(), "{err}");
    // The worker's first echo is this one: neither call reached it.
    assert_eq!(pool.execute("echo", json!({})).await.unwrap()["served"], 1);
    let s = pool.stats();
    assert_eq!((s.requests, s.errors, s.completed), (3, 2, 1), "{s:?}");
    pool.shutdown().await.unwrap();
}

/// `Error::Codec`: "the reply could not be decoded into the type asked
/// for": the call ran, so it is not `never_ran`, and the worker stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_result_that_does_not_decode_is_a_codec_error_of_a_call_that_ran() {
    let pool = start(Api::default(), 1).await;
    let pid = pool.worker_pids()[0];
    let err = pool
        .call::<_, u64>("echo", &json!({"x": 1}), CallOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Codec(_)), "{err}");
    assert_eq!(err.kind(), "codec");
    assert!(!err.never_ran(), "the worker ran it: {err}");
    let r = pool.execute("echo", json!({})).await.unwrap();
    assert_eq!(r["served"], 2, "the first call ran");
    assert_eq!(r["pid"], pid, "the worker is kept");
    pool.shutdown().await.unwrap();
}

/// `Adapter::process_response`: "an `Err` message fails the call with
/// `Error::ResultRefused` (the call ran)", so `never_ran` must not say it
/// did not (a caller would run it twice on retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_refused_by_process_response_is_result_refused_of_a_call_that_ran() {
    let adapter = Api {
        reject_results: true,
        ..Api::default()
    };
    let pool = start(adapter, 1).await;
    let err = pool
        .execute("echo", json!({"reject": true}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no `answer`"), "{err}");
    assert!(
        matches!(&err, Error::ResultRefused { command, .. } if command == "echo"),
        "{err:?}"
    );
    assert_eq!(err.kind(), "result_refused");
    assert!(!err.never_ran(), "the worker ran it: {err}");
    // It did run: the worker's next echo is its second.
    assert_eq!(pool.execute("echo", json!({})).await.unwrap()["served"], 2);
    pool.shutdown().await.unwrap();
}

/// `Stats::cancelled`: "Calls whose future was dropped before they ended";
/// such a call is not an error, and its worker is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_call_is_counted_cancelled_and_not_as_an_error() {
    let pool = start(Api::default(), 1).await;
    let hold = Hold::new("drop");
    let call = {
        let pool = pool.clone();
        let args = hold.args("a");
        tokio::spawn(async move { pool.execute("hold", args).await })
    };
    hold.started("a").await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    // The bridge drops the cancelled call; the worker answers the next one.
    hold.release();
    assert_eq!(pool.execute("echo", json!({})).await.unwrap()["served"], 1);
    let s = pool.stats();
    assert_eq!(
        (s.requests, s.cancelled, s.errors, s.completed),
        (2, 1, 0, 1),
        "{s:?}"
    );
    pool.shutdown().await.unwrap();
}

/// `CallStream::deadline`: the call's deadline, "counted from submission";
/// `StreamItem::Final`: "nothing follows it".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_deadline_counts_from_submission_and_nothing_follows_its_final_result() {
    let pool = start(Api::default(), 1).await;
    let timeout = Duration::from_secs(7);
    let before = Instant::now();
    let mut stream = pool
        .execute_stream(
            "stream",
            json!({"n": 3}),
            CallOptions::new().timeout(timeout),
        )
        .await
        .unwrap();
    let after = Instant::now();
    let deadline = stream.deadline();
    assert!(
        deadline >= before + timeout && deadline <= after + timeout,
        "deadline {deadline:?} not within submission + {timeout:?}"
    );
    let mut items = Vec::new();
    while let Some(item) = next(&mut stream).await {
        items.push(item.unwrap());
    }
    assert_eq!(items.len(), 4, "{items:?}");
    assert!(
        matches!(&items[3], StreamItem::Done(v) if v["done"] == 3),
        "{items:?}"
    );
    assert!(items[..3].iter().all(|i| matches!(i, StreamItem::Chunk(_))));
    assert!(next(&mut stream).await.is_none(), "nothing after the end");
    // Without a timeout of its own, the adapter's command_timeout (30 s).
    let before = Instant::now();
    let stream = pool
        .execute_stream("stream", json!({"n": 1}), CallOptions::new())
        .await
        .unwrap();
    assert!(stream.deadline() >= before + Duration::from_secs(30));
    drop(stream);
    pool.shutdown().await.unwrap();
}

/// `PoolConfig` validation: each setting the pool cannot work with is
/// refused at `start()` with `Error::Config` (kind "config"), before any
/// worker starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unusable_setting_is_a_config_error_at_start() {
    type Change = fn(&mut PoolConfig);
    let cases: Vec<(&str, Change)> = vec![
        ("pool_size 0", |c| c.pool_size = 0),
        // Past the limit; usize::MAX panicked allocating the slot table.
        ("pool_size 10,001", |c| {
            c.pool_size = snakepit_core::MAX_POOL_SIZE + 1
        }),
        ("pool_size usize::MAX", |c| c.pool_size = usize::MAX),
        ("max_concurrency_per_worker 0", |c| {
            c.max_concurrency_per_worker = 0
        }),
        ("worker_init_timeout 0", |c| {
            c.worker_init_timeout = Duration::ZERO
        }),
        ("startup_timeout 0", |c| c.startup_timeout = Duration::ZERO),
        // Every ping would be late, every idle worker replaced at each check.
        ("health_check_timeout 0 with health checks on", |c| {
            c.health_check_timeout = Duration::ZERO
        }),
        ("max_frame_size 63", |c| c.max_frame_size = 63),
        ("breaker_threshold 0", |c| c.breaker_threshold = 0),
    ];
    for (what, change) in cases {
        let mut config = PoolConfig::default();
        config.pool_size = 1;
        change(&mut config);
        let err = Pool::builder(Api::default())
            .config(config)
            .start()
            .await
            .err()
            .unwrap_or_else(|| panic!("{what} was accepted"));
        assert!(matches!(err, Error::Config(_)), "{what}: {err}");
        assert_eq!(err.kind(), "config", "{what}");
    }
    // `PoolBuilder::name`: an empty name, or one with a control character
    // (which no run record could carry whole), is refused too.
    for name in ["", "a\nb", "a\rb", "nul\0", "tab\t"] {
        let err = Pool::builder(Api::default())
            .size(1)
            .name(name)
            .start()
            .await
            .err()
            .unwrap_or_else(|| panic!("name {name:?} was accepted"));
        assert!(matches!(err, Error::Config(_)), "{name:?}: {err}");
    }
    // With health checks off, their timeout is not used: 0 is fine.
    let mut config = PoolConfig::default();
    config.pool_size = 1;
    config.health_check_interval = Duration::ZERO;
    config.health_check_timeout = Duration::ZERO;
    let pool = Pool::builder(Api::default())
        .config(config)
        .start()
        .await
        .unwrap();
    pool.shutdown().await.unwrap();
}

/// `PoolConfig` reads "from any serde format": a field it does not know is
/// an error, not silently ignored (a misspelt setting would be lost), and
/// `pipeline_max_call` is in microseconds (`pipeline_max_call_us`).
#[test]
fn pool_config_refuses_unknown_fields_and_reads_pipeline_max_call_in_microseconds() {
    let err = serde_json::from_str::<PoolConfig>(r#"{"pool_sise": 4}"#).unwrap_err();
    assert!(err.to_string().contains("pool_sise"), "{err}");
    let c: PoolConfig = serde_json::from_str(r#"{"pipeline_max_call_us": 250}"#).unwrap();
    assert_eq!(c.pipeline_max_call, Duration::from_micros(250));
    let v = serde_json::to_value(PoolConfig::default()).unwrap();
    assert_eq!(v["pipeline_max_call_us"], 1000);
    assert_eq!(v["queue_timeout_ms"], 5000);
    let back: PoolConfig = serde_json::from_value(v).unwrap();
    assert_eq!(back, PoolConfig::default());
}

/// One line per event, for comparing what listeners saw.
fn event_line(event: &snakepit_core::events::Event<'_>) -> String {
    use snakepit_core::events::EventKind;
    match &event.kind {
        EventKind::CallEnded {
            command,
            worker,
            pid,
            outcome,
            queue_wait,
            duration,
            ..
        } => {
            assert!(queue_wait <= duration, "{event:?}");
            format!("call {command} {worker:?} {} {outcome}", pid.is_some())
        }
        EventKind::WorkerReady { worker, .. } => format!("ready {worker}"),
        EventKind::WorkerExited {
            worker,
            pid,
            reason,
        } => format!("exited {worker} {pid} {reason}"),
        EventKind::WorkerRestarting { worker, .. } => format!("restart {worker}"),
        other => format!("{other:?}"),
    }
}

type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// `EventKind::CallEnded`: "A call ended, whatever the outcome (also a
/// call that never ran)": its `outcome` is `"ok"`, `"cancelled"` (the
/// caller dropped the call) or the error's `kind`, and `worker`/`pid` are
/// set only if it reached one. `PoolBuilder::on_event`: "Any number may be
/// registered": each sees every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_sees_every_call_end_including_those_that_never_ran() {
    let (first, second): (Log, Log) = Default::default();
    let (a, b) = (first.clone(), second.clone());
    let adapter = Api {
        supported: Some(vec!["echo".into(), "hold".into()]),
        ..Api::default()
    };
    let pool = builder(adapter)
        .size(1)
        // Nothing written ahead to the busy worker: the echo waits in the
        // pool's queue (see the report: a call written ahead behind a long
        // one waits for it, past the queue timeout).
        .configure(|c| {
            c.queue_timeout = Duration::from_millis(200);
            c.pipeline_depth = 0;
        })
        .on_event(move |e| a.lock().unwrap().push(event_line(e)))
        .on_event(move |e| b.lock().unwrap().push(event_line(e)))
        .start()
        .await
        .unwrap();
    pool.execute("echo", json!({})).await.unwrap();
    pool.execute("nope", json!({})).await.unwrap_err();
    let hold = Hold::new("events");
    let held = {
        let pool = pool.clone();
        let args = hold.args("a");
        tokio::spawn(async move { pool.execute("hold", args).await })
    };
    hold.started("a").await;
    let err = pool.execute("echo", json!({})).await.unwrap_err();
    assert!(matches!(err, Error::QueueTimeout(_)), "{err}");
    held.abort();
    assert!(held.await.unwrap_err().is_cancelled());
    hold.release();
    pool.execute("echo", json!({})).await.unwrap();
    pool.shutdown().await.unwrap();
    pool.execute("echo", json!({})).await.unwrap_err();
    let seen = first.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            "ready 0",
            "call echo Some(0) true ok",
            "call nope None false unsupported_command",
            "call echo None false queue_timeout",
            "call hold Some(0) true cancelled",
            "call echo Some(0) true ok",
            "call echo None false shut_down",
        ]
    );
    assert_eq!(*second.lock().unwrap(), seen, "both listeners see the same");
}

/// `EventKind::WorkerExited`: a ready worker that "was killed" is reported
/// with its slot, pid and how it ended ("killed by signal 9 (SIGKILL)");
/// "A worker the pool retires (recycling, shutdown) is not reported here".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_reported_exited_and_a_shut_down_one_is_not() {
    let log: Log = Default::default();
    let l = log.clone();
    let pool = builder(Api::default())
        .size(1)
        .on_event(move |e| {
            if !matches!(e.kind, snakepit_core::events::EventKind::CallEnded { .. }) {
                l.lock().unwrap().push(event_line(e));
            }
        })
        .start()
        .await
        .unwrap();
    let pid = pool.worker_pids()[0];
    kill_9(pid);
    assert!(
        eventually(20, || log.lock().unwrap().len() >= 4).await,
        "{:?}",
        log.lock().unwrap()
    );
    let replacement = pool.worker_pids()[0];
    pool.shutdown().await.unwrap();
    let seen = log.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![
            "ready 0".to_string(),
            format!("exited 0 {pid} killed by signal 9 (SIGKILL)"),
            "restart 0".to_string(),
            "ready 0".to_string(),
        ],
        "nothing for {replacement}, stopped by shutdown"
    );
}

/// `PoolConfig::max_sessions`: "beyond this, new sessions are served
/// without affinity until old ones expire" (docs/cluster.md: a pool keeps
/// its old records). With room for one record: new sessions run but get
/// none, and the first session still has its worker after them (FailFast
/// finds it busy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_affinity_table_keeps_its_records_and_serves_new_sessions_without() {
    use snakepit_core::Affinity;
    let pool = builder(Api::default())
        .size(2)
        .configure(|c| {
            c.max_sessions = 1;
            c.pipeline_depth = 0;
        })
        .start()
        .await
        .unwrap();
    pool.execute_in_session("old", "echo", json!({}))
        .await
        .unwrap();
    for i in 0..5 {
        pool.execute_in_session(&format!("new{i}"), "echo", json!({}))
            .await
            .unwrap();
    }
    assert_eq!(pool.stats().sessions, 1, "only the first session's record");

    let hold = Hold::new("full_table");
    let held = {
        let pool = pool.clone();
        let args = hold.args("a");
        tokio::spawn(async move {
            pool.execute_with("hold", args, CallOptions::new().session("old"))
                .await
        })
    };
    let pid = hold.started("a").await;
    let busy = pool
        .execute_with(
            "echo",
            json!({}),
            CallOptions::new()
                .session("old")
                .affinity(Affinity::FailFast),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&busy, Error::WorkerBusy { session_id, .. } if session_id == "old"),
        "the old record is kept: {busy}"
    );
    // A session without a record is never busy: it runs on the free worker.
    for i in 0..5 {
        pool.execute_with(
            "echo",
            json!({}),
            CallOptions::new()
                .session(format!("new{i}"))
                .affinity(Affinity::FailFast),
        )
        .await
        .unwrap();
    }
    assert!(pool.worker_pids().contains(&pid));
    hold.release();
    held.await.unwrap().unwrap();
    assert_eq!(pool.stats().sessions, 1);
    pool.shutdown().await.unwrap();
}

/// `Affinity::FailFast`: "fail at once with `WorkerBusy`", naming the
/// session and its worker, a call that never ran; `Affinity::Strict`:
/// "Wait for it (in the queue, subject to the queue timeout)", even while
/// another worker is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_fast_names_the_busy_worker_and_strict_waits_only_the_queue_timeout() {
    use snakepit_core::Affinity;
    let pool = builder(Api::default())
        .size(2)
        .configure(|c| {
            c.queue_timeout = Duration::from_millis(300);
            c.pipeline_depth = 0;
        })
        .start()
        .await
        .unwrap();
    let hold = Hold::new("affinity");
    let held = {
        let pool = pool.clone();
        let args = hold.args("a");
        tokio::spawn(async move {
            pool.execute_with("hold", args, CallOptions::new().session("s"))
                .await
        })
    };
    let pid = hold.started("a").await;
    let id = pool
        .workers()
        .into_iter()
        .find(|w| w.pid == pid)
        .unwrap()
        .id;
    let err = pool
        .execute_with(
            "echo",
            json!({}),
            CallOptions::new().session("s").affinity(Affinity::FailFast),
        )
        .await
        .unwrap_err();
    match &err {
        Error::WorkerBusy {
            session_id,
            worker_id,
        } => assert_eq!(
            (session_id.as_str(), worker_id.as_str()),
            ("s", id.as_str())
        ),
        other => panic!("not WorkerBusy: {other}"),
    }
    assert_eq!(err.kind(), "worker_busy");
    assert!(err.never_ran() && !err.is_timeout());
    let err = pool
        .execute_with(
            "echo",
            json!({}),
            CallOptions::new().session("s").affinity(Affinity::Strict),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::QueueTimeout(d) if d == Duration::from_millis(300)),
        "{err}"
    );
    // Neither ran anywhere: the free worker has served no echo.
    let r = pool.execute("echo", json!({})).await.unwrap();
    assert_ne!(r["pid"], pid);
    assert_eq!(r["served"], 1);
    hold.release();
    held.await.unwrap().unwrap();
    pool.shutdown().await.unwrap();
}

/// `Adapter`: "Typed calls (`Pool::call`) are validated too": a call
/// `validate_command` refuses fails with `Error::Validation` and never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_calls_are_validated_too() {
    struct NoEcho;
    impl Adapter for NoEcho {
        fn launch(&self) -> Launch {
            Api::default().launch()
        }
        fn validate_command(&self, command: &str, _: &Value) -> Result<(), String> {
            if command == "echo" {
                Err("echo is switched off".into())
            } else {
                Ok(())
            }
        }
    }
    let pool = builder(NoEcho).size(1).start().await.unwrap();
    let err = pool
        .call::<_, Value>("echo", &json!({"x": 1}), CallOptions::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Validation { command, message } if command == "echo" && message == "echo is switched off"),
        "{err}"
    );
    assert_eq!(err.kind(), "validation");
    assert!(err.never_ran());
    let r: Value = pool
        .call("env", &json!({"keys": []}), CallOptions::new())
        .await
        .unwrap();
    assert_eq!(r["pid"], pool.worker_pids()[0]);
    pool.shutdown().await.unwrap();
}

/// `Pool::shutdown`: "Stops admitting calls, lets calls in flight finish
/// within the grace period", then the workers go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_admits_no_new_call_and_lets_the_running_one_finish() {
    let pool = builder(Api::default())
        .size(1)
        .configure(|c| {
            c.shutdown_grace_period = Duration::from_secs(30);
            c.pipeline_depth = 0;
        })
        .start()
        .await
        .unwrap();
    let pid = pool.worker_pids()[0];
    let hold = Hold::new("shutdown");
    let held = {
        let pool = pool.clone();
        let args = hold.args("a");
        tokio::spawn(async move { pool.execute("hold", args).await })
    };
    hold.started("a").await;
    let stopping = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.shutdown().await })
    };
    // Once shutdown has begun, a new call is turned away (until then it
    // would queue behind the running call: give each try a short while).
    let mut refused = None;
    for _ in 0..400 {
        let attempt = pool.execute("echo", json!({}));
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(50), attempt).await {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("a call was admitted during shutdown");
    assert!(matches!(refused, Err(Error::ShutDown)), "{refused:?}");
    assert!(alive(pid), "the worker stays while its call runs");
    assert!(
        !stopping.is_finished(),
        "shutdown waits for the running call"
    );
    hold.release();
    let r = held.await.unwrap().expect("the running call finished");
    assert_eq!(r["token"], "a");
    stopping.await.unwrap().unwrap();
    assert!(eventually(10, || !alive(pid)).await, "the worker is gone");
}

/// `Affinity::Strict`: "Wait for it: in the queue, subject to the queue
/// timeout, or, while its recent calls are short, written ahead to it,
/// where the call waits for the calls before it (with no queue timeout)".
/// With the default pipelining, a strict call behind a call that turns out
/// long is written ahead and waits for it past the queue timeout, then runs
/// on its session's worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_call_written_ahead_waits_for_the_call_before_it_past_the_queue_timeout() {
    use snakepit_core::Affinity;
    let pool = builder(Api::default())
        .size(2)
        .configure(|c| {
            c.queue_timeout = Duration::from_millis(300);
            // "Short" with room to spare: on a loaded machine a debug
            // build's echo can take over the default 1 ms.
            c.pipeline_max_call = Duration::from_millis(200);
        })
        .start()
        .await
        .unwrap();
    assert!(pool.stats().workers == 2 && PoolConfig::default().pipeline_depth > 0);
    // Short calls first, so the session's worker counts as quick.
    let mut home = Value::Null;
    for _ in 0..10 {
        home = pool
            .execute_in_session("s", "echo", json!({}))
            .await
            .unwrap()["pid"]
            .clone();
    }
    let hold = Hold::new("strict");
    let mut args = hold.args("a");
    args["max_s"] = json!(30);
    let held = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute_with("hold", args, CallOptions::new().session("s"))
                .await
        })
    };
    assert_eq!(hold.started("a").await, home.as_u64().unwrap() as u32);
    let strict = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute_with(
                "echo",
                json!({}),
                CallOptions::new().session("s").affinity(Affinity::Strict),
            )
            .await
        })
    };
    // Written ahead, not queued: two calls in flight on the session's worker.
    let on_home = || {
        pool.workers()
            .iter()
            .any(|w| u64::from(w.pid) == home.as_u64().unwrap() && w.in_flight == 2)
    };
    assert!(eventually(10, on_home).await);
    assert_eq!(pool.stats().queued, 0);
    // Three queue timeouts later it still waits for the held call.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!strict.is_finished(), "it has left the queue");
    hold.release();
    held.await.unwrap().unwrap();
    let r = strict.await.unwrap().expect("it ran after the held call");
    assert_eq!(r["pid"], home, "on its session's worker");
    pool.shutdown().await.unwrap();
}

/// `PoolConfig::stderr_tail_lines`: "Lines of each worker's stderr kept
/// for error reports": a crash's `stderr_tail` is the last that many
/// lines; `ExitReason::Code` is the worker's exit status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_reports_the_last_stderr_tail_lines_and_the_exit_code() {
    let pool = builder(Api::default())
        .size(1)
        .configure(|c| c.stderr_tail_lines = 5)
        .start()
        .await
        .unwrap();
    let err = pool
        .execute("die_noisily", json!({"lines": 100, "code": 7}))
        .await
        .unwrap_err();
    let Error::WorkerCrashed(crash) = &err else {
        panic!("not a crash: {err}");
    };
    assert_eq!(crash.exit, ExitReason::Code(7));
    let lines: Vec<&str> = crash.stderr_tail.lines().collect();
    assert_eq!(
        lines,
        [95, 96, 97, 98, 99].map(|i| format!("noise line {i}")),
        "{crash:?}"
    );
    pool.shutdown().await.unwrap();
}

/// `PoolConfig::max_concurrency_per_worker`: "Upper bound on the calls one
/// worker runs at once, whatever it declares": a worker that declares 4,
/// under a bound of 2, has capacity 2 and never more than 2 calls in
/// flight; the next call waits in the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_per_worker_bounds_what_a_worker_declares() {
    let mut adapter = TestWorker::new();
    adapter.extra_args.push("--async".into());
    let pool = builder(adapter)
        .size(1)
        .configure(|c| c.max_concurrency_per_worker = 2)
        .start()
        .await
        .unwrap();
    assert_eq!(pool.workers()[0].capacity, 2);
    assert_eq!(pool.stats().capacity, 2);
    let calls: Vec<_> = (0..3)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.execute("asleep", json!({"ms": 1500, "token": i}))
                    .await
            })
        })
        .collect();
    assert!(
        eventually(10, || {
            let s = pool.stats();
            s.in_flight == 2 && s.queued == 1
        })
        .await,
        "{:?}",
        pool.stats()
    );
    assert_eq!(pool.workers()[0].in_flight, 2);
    for c in calls {
        c.await.unwrap().unwrap();
    }
    pool.shutdown().await.unwrap();
}

/// Durations as long as `Duration::MAX` (a common way to say "no limit")
/// are taken as "far in the future", never a panic on the clock's overflow:
/// a call's timeout, and the pool's queue timeout and grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_durations_mean_no_limit_and_never_panic() {
    let pool = builder(Api::default())
        .size(1)
        .configure(|c| {
            // Every duration but the restart back-off and the cleanup
            // retries (a hundred years between attempts).
            c.startup_timeout = Duration::MAX;
            c.queue_timeout = Duration::MAX;
            c.worker_init_timeout = Duration::MAX;
            c.health_check_interval = Duration::MAX;
            c.health_check_timeout = Duration::MAX;
            c.shutdown_grace_period = Duration::MAX;
            c.pipeline_max_call = Duration::MAX;
            c.session_ttl = Duration::MAX;
            c.breaker_cooldown = Duration::MAX;
            c.worker_ttl = Duration::MAX;
            c.worker_idle_timeout = Duration::MAX;
        })
        .start()
        .await
        .unwrap();
    let r = pool
        .execute_with(
            "echo",
            json!({"n": 1}),
            CallOptions::new().timeout(Duration::MAX),
        )
        .await
        .unwrap();
    assert_eq!(r["echoed"]["n"], 1);
    let typed: Value = pool
        .call(
            "echo",
            &json!({"n": 2}),
            CallOptions::new().timeout(Duration::MAX),
        )
        .await
        .unwrap();
    assert_eq!(typed["echoed"]["n"], 2);
    pool.execute_in_session("s", "echo", json!({}))
        .await
        .unwrap();
    // Nothing in flight: the longest grace period ends at once.
    pool.shutdown().await.unwrap();

    // Recycling and restart settings as long too: workers start, serve,
    // and a worker that dies is replaced with its first restart's delay.
    let pool = builder(Api::default())
        .size(1)
        .configure(|c| {
            c.worker_ttl = Duration::MAX;
            c.restart_backoff_max = Duration::MAX;
        })
        .start()
        .await
        .unwrap();
    let first = pool.worker_pids()[0];
    pool.execute("die_noisily", json!({"lines": 1, "code": 3}))
        .await
        .unwrap_err();
    assert!(
        eventually(30, || pool
            .worker_pids()
            .first()
            .is_some_and(|p| *p != first))
        .await,
        "the worker was replaced"
    );
    pool.execute("echo", json!({})).await.unwrap();
    pool.shutdown().await.unwrap();
}

/// docs/protocol.md section 3: MessagePack carries NaN and infinities; "a
/// typed call reads them as `f64`, and `execute`, whose result is a JSON
/// `Value`, gets `null` in their place". With JSON the bundled Python bridge
/// answers such a result with a failed reply, and the worker serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_finite_floats_in_both_codecs() {
    let mut adapter = TestWorker::new();
    adapter.codec = WireCodec::MsgPack;
    let pool = builder(adapter).size(1).start().await.unwrap();
    let nan: f64 = pool
        .call("float", &json!({"text": "nan"}), CallOptions::new())
        .await
        .unwrap();
    assert!(nan.is_nan());
    let inf: f64 = pool
        .call("float", &json!({"text": "inf"}), CallOptions::new())
        .await
        .unwrap();
    assert_eq!(inf, f64::INFINITY);
    let v = pool.execute("float", json!({"text": "nan"})).await.unwrap();
    assert_eq!(v, Value::Null);
    pool.shutdown().await.unwrap();

    let pool = builder(TestWorker::new()).size(1).start().await.unwrap();
    let pid = pool.worker_pids()[0];
    match pool.execute("float", json!({"text": "inf"})).await {
        Err(Error::Remote { error, .. }) => assert_eq!(error.kind.as_deref(), Some("ValueError")),
        other => panic!("expected a failed reply, got {other:?}"),
    }
    assert_eq!(
        pool.execute("float", json!({"text": "1.5"})).await.unwrap(),
        1.5
    );
    assert_eq!(pool.worker_pids(), vec![pid], "the worker served on");
    pool.shutdown().await.unwrap();
}
