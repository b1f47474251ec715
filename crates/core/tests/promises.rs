//! What docs/protocol.md and the README promise about the pool's side of the
//! wire and its configuration, each checked against a real worker process
//! (`workers/promises_worker.py`, written without the bridge, which records
//! every frame it receives exactly as it came).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{alive, builder, eventually, python, temp_dir, Raw};
use serde_json::{json, Value};
use snakepit_core::{Adapter, CallOptions, Error, Launch, PoolConfig, WireCodec};

/// The recording worker: frames received go to `log`, one payload a line.
struct Recorder {
    log: PathBuf,
    hello: &'static str,
    codec: WireCodec,
}

impl Recorder {
    fn new(tag: &str, hello: &'static str) -> Recorder {
        Recorder {
            log: temp_dir(tag).join("frames.log"),
            hello,
            codec: WireCodec::Json,
        }
    }

    /// The frames received so far, parsed, with their raw text.
    fn frames(&self) -> Vec<(String, Value)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                (
                    l.to_owned(),
                    serde_json::from_str(l).expect("a JSON payload"),
                )
            })
            .collect()
    }

    /// The environment each worker process reported, with its `pid`.
    fn envs(&self) -> Vec<Value> {
        std::fs::read_to_string(self.log.with_extension("log.env"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// A clone for the adapter (the test keeps this one to read the log).
    fn adapter(&self) -> Recorder {
        Recorder {
            log: self.log.clone(),
            hello: self.hello,
            codec: self.codec,
        }
    }
}

impl Adapter for Recorder {
    fn launch(&self) -> Launch {
        Launch::new(python())
            .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/promises_worker.py"))
            .arg(&self.log)
            .arg(self.hello)
    }
    fn codec(&self) -> WireCodec {
        self.codec
    }
}

fn requests(frames: &[(String, Value)], command: &str) -> Vec<(String, Value)> {
    frames
        .iter()
        .filter(|(_, v)| v["command"] == command)
        .cloned()
        .collect()
}

/// The one worker of `pool`, `before`, is gone and another serves.
async fn replaced(pool: &snakepit_core::Pool, before: u32) {
    assert!(
        eventually(10, || !alive(before)).await,
        "the worker is gone"
    );
    assert!(
        eventually(10, || pool
            .worker_pids()
            .first()
            .is_some_and(|p| *p != before))
        .await,
        "a replacement serves"
    );
}

/// `2026-11-27T12:24:04.051023Z`: date, `T`, time with optional fraction, `Z`.
fn is_iso_8601_utc(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && s.ends_with('Z')
        && (b.len() == 20 || (b[19] == b'.' && digits(20..b.len() - 1)))
}

/// protocol.md section 1: `SNAKEPIT_PROTOCOL`, `SNAKEPIT_CODEC`,
/// `SNAKEPIT_WORKER_ID` (one per worker), `SNAKEPIT_RUN_ID` (one per run)
/// `SNAKEPIT_HOST` (the host process: `pid:start time:PID namespace
/// device:inode`) and `SNAKEPIT_MAX_FRAME_SIZE` (the pool's
/// `max_frame_size`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_gets_the_protocol_codec_worker_id_run_id_host_and_frame_limit_variables() {
    let me = std::process::id();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Field 22 (start time), counted after the command's closing parenthesis.
    let start: u64 = stat[stat.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let ns = {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata("/proc/self/ns/pid").unwrap();
        (m.dev(), m.ino())
    };
    let host = format!("{me}:{start}:{}:{}", ns.0, ns.1);
    let rec = Recorder::new("env", "none");
    let pool = builder(rec.adapter())
        .size(2)
        .configure(|c| c.max_frame_size = 123_456)
        .start()
        .await
        .unwrap();
    let envs = rec.envs();
    let workers = pool.workers();
    assert_eq!(workers.len(), 2);
    assert_ne!(workers[0].id, workers[1].id, "each worker has its own id");
    for info in &workers {
        let env = envs
            .iter()
            .find(|e| e["pid"] == info.pid)
            .unwrap_or_else(|| panic!("worker {} wrote no environment: {envs:?}", info.pid));
        assert_eq!(env["SNAKEPIT_PROTOCOL"], "1", "{env}");
        assert_eq!(env["SNAKEPIT_CODEC"], "json", "{env}");
        assert_eq!(env["SNAKEPIT_WORKER_ID"], info.id.as_str(), "{env}");
        assert_eq!(env["SNAKEPIT_RUN_ID"], pool.run_id(), "{env}");
        assert_eq!(env["SNAKEPIT_HOST"], host.as_str(), "{env}");
        assert_eq!(env["SNAKEPIT_MAX_FRAME_SIZE"], "123456", "{env}");
    }
    pool.shutdown().await.unwrap();

    // With MessagePack the variable says so (the recorder, JSON only, then
    // exits at once, as protocol.md asks of a worker that cannot follow).
    let mut rec = Recorder::new("env_msgpack", "none");
    rec.codec = WireCodec::MsgPack;
    let err = builder(rec.adapter())
        .size(1)
        .configure(|c| {
            c.startup_timeout = Duration::from_secs(5);
            c.breaker_threshold = 1;
        })
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::StartFailed(_)), "{err}");
    assert!(
        err.to_string().contains("speaks JSON only"),
        "the worker's stderr: {err}"
    );
    let envs = rec.envs();
    assert!(!envs.is_empty());
    assert!(
        envs.iter().all(|e| e["SNAKEPIT_CODEC"] == "msgpack"),
        "{envs:?}"
    );
}

/// protocol.md sections 4 and 6: the init ping, then requests written as
/// `id`, `command`, `args`, `timestamp` (UTC ISO-8601), then the optional
/// fields that are set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_written_id_command_args_timestamp_after_an_init_ping_with_the_worker_id() {
    let rec = Recorder::new("frames", "none");
    let pool = builder(rec.adapter()).size(1).start().await.unwrap();
    let worker_id = pool.workers()[0].id.clone();

    let frames = rec.frames();
    let (first_raw, first) = &frames[0];
    assert_eq!(
        first["command"], "ping",
        "the first frame is the init ping: {first_raw}"
    );
    assert_eq!(
        first["args"],
        json!({"initialization": true, "worker_id": worker_id}),
        "{first_raw}"
    );

    pool.execute("echo_me", json!({"b": 1, "a": 2}))
        .await
        .unwrap_err();
    pool.execute_with(
        "with_options",
        json!({}),
        CallOptions::new()
            .session("s-1")
            .timeout(Duration::from_secs(7)),
    )
    .await
    .unwrap_err();

    let frames = rec.frames();
    let (raw, v) = &requests(&frames, "echo_me")[0];
    assert!(raw.starts_with(r#"{"id":"#), "`id` comes first: {raw}");
    let order: Vec<usize> = ["\"id\"", "\"command\"", "\"args\"", "\"timestamp\""]
        .iter()
        .map(|k| raw.find(k).unwrap_or_else(|| panic!("{k} missing: {raw}")))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "key order: {raw}");
    assert!(v["id"].as_u64().is_some_and(|id| id > 0), "{raw}");
    assert_eq!(v["args"], json!({"b": 1, "a": 2}));
    assert!(v.get("type").is_none() || v["type"] == "request", "{raw}");
    let ts = v["timestamp"].as_str().unwrap();
    assert!(is_iso_8601_utc(ts), "timestamp {ts:?} is UTC ISO-8601");
    // (`timeout_ms` is always set: every call has a deadline.)
    for optional in ["session_id", "stream", "traceparent"] {
        assert!(
            v.get(optional).is_none(),
            "{optional} unset is left out: {raw}"
        );
    }

    let (raw, v) = &requests(&frames, "with_options")[0];
    assert_eq!(v["session_id"], "s-1", "{raw}");
    let left = v["timeout_ms"].as_u64().expect("timeout_ms is an integer");
    assert!(left > 0 && left <= 7000, "milliseconds left: {raw}");
    assert!(
        raw.find("\"timestamp\"").unwrap() < raw.find("\"session_id\"").unwrap(),
        "optional fields come after the timestamp: {raw}"
    );
    // Unique ids.
    let ids: std::collections::HashSet<u64> = frames
        .iter()
        .filter_map(|(_, v)| v["id"].as_u64())
        .collect();
    assert_eq!(ids.len(), frames.len(), "each request has its own id");
    pool.shutdown().await.unwrap();
}

/// protocol.md section 6, step 4: an idle worker gets `ping` with
/// `{"health_check": true}` at the interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_workers_get_a_ping_with_health_check_true() {
    let rec = Recorder::new("health", "none");
    let pool = builder(rec.adapter())
        .size(1)
        .configure(|c| c.health_check_interval = Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    assert!(
        eventually(10, || {
            requests(&rec.frames(), "ping")
                .iter()
                .any(|(_, v)| v["args"] == json!({"health_check": true}))
        })
        .await,
        "no health-check ping: {:?}",
        rec.frames()
    );
    pool.shutdown().await.unwrap();
}

/// protocol.md section 5: "the pool decodes a missing `result` as `null`".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_reply_without_result_is_null() {
    let rec = Recorder::new("noresult", "none");
    let pool = builder(rec.adapter()).size(1).start().await.unwrap();
    assert_eq!(
        pool.execute("no_result", json!({})).await.unwrap(),
        Value::Null
    );
    pool.shutdown().await.unwrap();
}

/// protocol.md section 5: a worker that sends no hello gets one call at a
/// time, nothing written ahead to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_hello_is_sent_one_call_at_a_time() {
    let rec = Recorder::new("onecall", "none");
    let pool = builder(rec.adapter()).size(1).start().await.unwrap();
    assert_eq!(pool.stats().capacity, 1);
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute("overlap", json!({"watch_ms": 300})).await })
        })
        .collect();
    for call in calls {
        let r = call.await.unwrap().unwrap();
        assert_eq!(
            r["overlap"], false,
            "a request was written while another ran"
        );
    }
    pool.shutdown().await.unwrap();
}

/// protocol.md section 4: "The pool itself takes any failed reply with `id`
/// 0 as a sign that the two sides are out of step and replaces the worker."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reply_with_id_0_gets_the_worker_replaced() {
    let rec = Recorder::new("zero", "none");
    let pool = builder(rec.adapter()).size(1).start().await.unwrap();
    let before = pool.worker_pids()[0];
    let err = pool
        .execute("zero_id_failure", json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Protocol { .. } | Error::WorkerCrashed(_)),
        "the call fails with the worker: {err}"
    );
    replaced(&pool, before).await;
    pool.execute("no_result", json!({})).await.unwrap();
    pool.shutdown().await.unwrap();
}

/// protocol.md section 5: "A chunk sent after the request's final
/// `response` is a protocol violation, for which the pool replaces the
/// worker."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_after_the_final_response_gets_the_worker_replaced() {
    let rec = Recorder::new("latechunk", "streaming");
    let pool = builder(rec.adapter()).size(1).start().await.unwrap();
    let before = pool.worker_pids()[0];
    assert_eq!(pool.execute("late_chunk", json!({})).await.unwrap(), "done");
    replaced(&pool, before).await;
    pool.shutdown().await.unwrap();
}

/// protocol.md section 5: "Calling a function that does not exist gets a
/// failed `host_reply` with type `UnknownFunction`."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_host_function_gets_a_failed_host_reply_of_type_unknown_function() {
    let rec = Recorder::new("host", "host_calls");
    let pool = builder(rec.adapter())
        .size(1)
        .host_function("known", |_| async { Ok(json!(1)) })
        .start()
        .await
        .unwrap();
    let reply = pool
        .execute("host", json!({"function": "no.such.function"}))
        .await
        .unwrap();
    assert_eq!(reply["type"], "host_reply", "{reply}");
    assert_eq!(reply["id"], 1, "{reply}");
    assert_eq!(reply["success"], false, "{reply}");
    assert_eq!(reply["error"]["type"], "UnknownFunction", "{reply}");
    let reply = pool
        .execute("host", json!({"function": "known"}))
        .await
        .unwrap();
    assert_eq!(reply["success"], true, "{reply}");
    assert_eq!(reply["result"], 1, "{reply}");
    pool.shutdown().await.unwrap();
}

/// protocol.md section 6, step 2: a worker whose init reply is not
/// `status: "ok"` never gets calls: the start fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_fails_its_init_ping_never_gets_calls() {
    struct NotOk(PathBuf);
    impl Adapter for NotOk {
        fn launch(&self) -> Launch {
            Launch::new(python()).arg("-c").arg(
                "import struct,sys,json\n\
                 h=sys.stdin.buffer.read(4); n=struct.unpack('>I',h)[0]; r=json.loads(sys.stdin.buffer.read(n))\n\
                 open(sys.argv[1],'a').write(r['command']+'\\n')\n\
                 d=json.dumps({'id':r['id'],'success':True,'result':{'status':'loading'}}).encode()\n\
                 sys.stdout.buffer.write(struct.pack('>I',len(d))+d); sys.stdout.buffer.flush()\n\
                 while True:\n\
                 \x20h=sys.stdin.buffer.read(4)\n\
                 \x20if len(h)<4: break\n\
                 \x20n=struct.unpack('>I',h)[0]; r=json.loads(sys.stdin.buffer.read(n)); open(sys.argv[1],'a').write(r['command']+'\\n')\n",
            ).arg(&self.0)
        }
    }
    let log = temp_dir("notok").join("commands.log");
    let err = builder(NotOk(log.clone()))
        .size(1)
        .configure(|c| {
            c.startup_timeout = Duration::from_secs(3);
            c.breaker_threshold = 1;
        })
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::StartFailed(_)), "{err}");
    let seen = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        seen.lines().all(|c| c == "ping"),
        "only pings reached the worker: {seen:?}"
    );
}

/// README, Configuration: every default in the table.
#[test]
fn pool_config_defaults_are_the_documented_ones() {
    let c = PoolConfig::default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(c.pool_size, cores * 2);
    assert_eq!(c.startup_timeout, Duration::from_millis(10_000));
    assert_eq!(c.queue_timeout, Duration::from_millis(5_000));
    assert_eq!(c.max_queue_size, 1000);
    assert_eq!(c.worker_init_timeout, Duration::from_millis(20_000));
    assert_eq!(c.health_check_interval, Duration::from_millis(30_000));
    assert_eq!(c.health_check_timeout, Duration::from_millis(5_000));
    assert_eq!(c.shutdown_grace_period, Duration::from_millis(2_000));
    assert_eq!(c.cleanup_retry_interval, Duration::from_millis(100));
    assert_eq!(c.cleanup_max_retries, 10);
    assert_eq!(c.max_frame_size, 64 << 20);
    assert_eq!(c.pipeline_depth, 16);
    assert_eq!(c.pipeline_max_call, Duration::from_micros(1000));
    assert_eq!(c.restart_backoff, Duration::from_millis(50));
    assert_eq!(c.restart_backoff_max, Duration::from_millis(5_000));
    assert_eq!(c.breaker_threshold, 5);
    assert_eq!(c.breaker_cooldown, Duration::from_millis(10_000));
    assert_eq!(c.max_sessions, 100_000);
    assert_eq!(c.session_ttl, Duration::from_millis(3_600_000));
    assert_eq!(c.recycle_after_calls, 0);
    assert_eq!(c.recycle_above_rss_mb, 0);
    assert_eq!(c.worker_ttl, Duration::ZERO);
    assert_eq!(c.worker_idle_timeout, Duration::ZERO);
    assert!(c.sweep_on_start);
    assert_eq!(c.state_dir, None);
    // docs/bridges.md: 40 stderr lines kept, at most 64 calls per worker.
    assert_eq!(c.stderr_tail_lines, 40);
    assert_eq!(c.max_concurrency_per_worker, 64);
}

/// README, Configuration: the table's field names, durations in
/// milliseconds (`pipeline_max_call_us` in microseconds), from any serde
/// format; the rest keep their defaults.
#[test]
fn pool_config_reads_the_documented_field_names_with_durations_in_milliseconds() {
    let c: PoolConfig = serde_json::from_str(
        r#"{"pool_size": 8, "queue_timeout_ms": 250, "startup_timeout_ms": 1, "worker_init_timeout_ms": 2,
            "health_check_interval_ms": 3, "health_check_timeout_ms": 4, "shutdown_grace_period_ms": 5,
            "cleanup_retry_interval_ms": 6, "cleanup_max_retries": 7, "max_frame_size": 8, "max_queue_size": 9,
            "pipeline_depth": 0, "pipeline_max_call_us": 11, "restart_backoff_ms": 12,
            "restart_backoff_max_ms": 13, "breaker_threshold": 14, "breaker_cooldown_ms": 15,
            "max_sessions": 16, "session_ttl_ms": 17, "recycle_after_calls": 18, "recycle_above_rss_mb": 19,
            "worker_ttl_ms": 20, "worker_idle_timeout_ms": 21, "sweep_on_start": false, "state_dir": "/x"}"#,
    )
    .unwrap();
    assert_eq!(c.pool_size, 8);
    assert_eq!(c.queue_timeout, Duration::from_millis(250));
    assert_eq!(c.startup_timeout, Duration::from_millis(1));
    assert_eq!(c.worker_init_timeout, Duration::from_millis(2));
    assert_eq!(c.health_check_interval, Duration::from_millis(3));
    assert_eq!(c.health_check_timeout, Duration::from_millis(4));
    assert_eq!(c.shutdown_grace_period, Duration::from_millis(5));
    assert_eq!(c.cleanup_retry_interval, Duration::from_millis(6));
    assert_eq!(c.cleanup_max_retries, 7);
    assert_eq!(c.max_frame_size, 8);
    assert_eq!(c.max_queue_size, 9);
    assert_eq!(c.pipeline_depth, 0);
    assert_eq!(c.pipeline_max_call, Duration::from_micros(11));
    assert_eq!(c.restart_backoff, Duration::from_millis(12));
    assert_eq!(c.restart_backoff_max, Duration::from_millis(13));
    assert_eq!(c.breaker_threshold, 14);
    assert_eq!(c.breaker_cooldown, Duration::from_millis(15));
    assert_eq!(c.max_sessions, 16);
    assert_eq!(c.session_ttl, Duration::from_millis(17));
    assert_eq!(c.recycle_after_calls, 18);
    assert_eq!(c.recycle_above_rss_mb, 19);
    assert_eq!(c.worker_ttl, Duration::from_millis(20));
    assert_eq!(c.worker_idle_timeout, Duration::from_millis(21));
    assert!(!c.sweep_on_start);
    assert_eq!(c.state_dir.as_deref(), Some(Path::new("/x")));

    let c: PoolConfig = serde_json::from_str(r#"{"pool_size": 8}"#).unwrap();
    assert_eq!(c.queue_timeout, PoolConfig::default().queue_timeout);
}

/// README, Configuration: `health_check_interval` 0 turns health checks off.
/// The pool's maintenance still runs often (a short session TTL makes it
/// tick every 50 ms); a pool beside it with checks on gets several pings
/// while this one gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_interval_of_0_sends_no_health_check() {
    let off = Recorder::new("health-off", "none");
    let on = Recorder::new("health-on", "none");
    let pool_off = builder(off.adapter())
        .size(1)
        .configure(|c| {
            c.health_check_interval = Duration::ZERO;
            c.session_ttl = Duration::from_millis(100);
        })
        .start()
        .await
        .unwrap();
    let pool_on = builder(on.adapter())
        .size(1)
        .configure(|c| {
            c.health_check_interval = Duration::from_millis(50);
            c.session_ttl = Duration::from_millis(100);
        })
        .start()
        .await
        .unwrap();
    let health_pings = |rec: &Recorder| {
        requests(&rec.frames(), "ping")
            .iter()
            .filter(|(_, v)| v["args"] == json!({"health_check": true}))
            .count()
    };
    assert!(
        eventually(10, || health_pings(&on) >= 5).await,
        "the pool with checks on was pinged: {:?}",
        on.frames()
    );
    assert_eq!(health_pings(&off), 0, "{:?}", off.frames());
    // Its only ping was the init handshake.
    assert_eq!(
        requests(&off.frames(), "ping").len(),
        1,
        "{:?}",
        off.frames()
    );
    pool_on.shutdown().await.unwrap();
    pool_off.shutdown().await.unwrap();
}

/// README, Configuration: `start()` gives up after `startup_timeout` when a
/// worker is not ready by then (its init is slower; the init timeout alone
/// would still wait), with `StartFailed` naming the startup timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_gives_up_after_the_startup_timeout() {
    // The worker sleeps 30 s before it reads its init ping.
    let err = builder(Raw("slow_init"))
        .size(1)
        .configure(|c| {
            c.startup_timeout = Duration::from_secs(1);
            c.worker_init_timeout = Duration::from_secs(120);
        })
        .start()
        .await
        .unwrap_err();
    let Error::StartFailed(e) = &err else {
        panic!("{err:?}")
    };
    assert!(e.cause.contains("startup timeout"), "{err}");
}

/// protocol.md, `chunk`: "the pool delivers them to callers that asked for
/// a stream and drops any others." A worker (`workers/chunks_worker.py`)
/// that sends 1000 chunks (more than the 256 a stream's reader may fall
/// behind) for a plain `execute`: the call gets its result, nothing
/// crashes, the same worker serves on; a streamed call to it gets every
/// chunk (so the chunks of the plain call were sent, and dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_for_a_call_that_asked_for_no_stream_are_dropped() {
    use std::future::poll_fn;
    use std::pin::Pin;

    use futures_core::Stream;
    use snakepit_core::StreamItem;

    let pool = builder(common::BridgeScript("chunks_worker.py"))
        .size(1)
        .configure(|c| c.health_check_interval = Duration::ZERO)
        .start()
        .await
        .unwrap();
    let worker = pool.worker_pids()[0];
    let generous = CallOptions::new().timeout(Duration::from_secs(30));
    let r = pool
        .execute_with("chunks", json!({"n": 1000}), generous.clone())
        .await
        .unwrap();
    assert_eq!(r, json!({"n": 1000, "stream": false, "pid": worker}));
    let r = pool.execute("pid", json!({})).await.unwrap();
    assert_eq!(r["pid"], worker, "the same worker serves on");

    let mut stream = pool
        .execute_stream("chunks", json!({"n": 3}), generous)
        .await
        .unwrap();
    let mut items = Vec::new();
    while let Some(item) = poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
        items.push(item.unwrap());
    }
    let expected: Vec<StreamItem> = (0..3)
        .map(|i| StreamItem::Chunk(json!({"i": i})))
        .chain([StreamItem::Done(
            json!({"n": 3, "stream": true, "pid": worker}),
        )])
        .collect();
    assert_eq!(items, expected);

    let s = pool.stats();
    assert_eq!(s.crashes, 0);
    assert_eq!((s.requests, s.completed, s.errors), (3, 3, 0));
    assert_eq!(pool.worker_pids(), vec![worker]);
    pool.shutdown().await.unwrap();
}
