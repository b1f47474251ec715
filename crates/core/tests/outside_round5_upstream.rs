//! "A bridge written for the original must work with ours"
//! (docs/protocol.md: "a worker written for that project works unchanged").
//!
//! `workers/round5_upstream_worker.py` is written only from the original
//! Elixir Snakepit's protocol as /work/shared/reference describes it: no
//! hello, replies in the original Python bridge's own form (`json.dumps`
//! with its spaces and `\u` escapes, a `timestamp` string, plain-string
//! errors), started as `python3 SCRIPT --mode pool-worker`. These tests
//! drive it through the public API only.

mod common;

use std::time::Duration;

use common::{alive, eventually, python, root};
use serde_json::{json, Value};
use snakepit_core::{
    Adapter, CallOptions, Error, ExitReason, Launch, Pool, PoolBuilder, StreamItem,
};

/// The original adapter's launch: executable, script, `--mode pool-worker`;
/// with the worker's answer to the init ping set by `ROUND5_INIT`.
struct Original(&'static str);

impl Adapter for Original {
    fn launch(&self) -> Launch {
        Launch::new(python())
            .arg(root().join("crates/core/tests/workers/round5_upstream_worker.py"))
            .arg("--mode")
            .arg("pool-worker")
            .env("ROUND5_INIT", self.0)
    }
}

fn builder() -> PoolBuilder {
    builder_of(Original("ok"))
}

fn builder_of(adapter: Original) -> PoolBuilder {
    Pool::builder(adapter).configure(|c| {
        c.worker_init_timeout = Duration::from_secs(20);
        c.shutdown_grace_period = Duration::from_millis(500);
        c.restart_backoff = Duration::from_millis(20);
    })
}

async fn pid_of(pool: &Pool, options: CallOptions) -> u32 {
    let r = pool.execute_with("pid", json!({}), options).await.unwrap();
    r["pid"].as_u64().expect("a pid") as u32
}

fn remote(err: &Error) -> (Option<&str>, &str) {
    let r = err
        .remote()
        .unwrap_or_else(|| panic!("not a remote error: {err}"));
    (r.kind.as_deref(), r.message.as_str())
}

/// `2026-11-27T12:24:04.051023Z`: UTC, six digits of fraction, `Z`.
fn is_original_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    b.len() == 27
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
        && b[19] == b'.'
        && digits(20..26)
        && b[26] == b'Z'
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_original_worker_answers_execute_with_results_and_string_errors() {
    let pool = builder()
        .size(2)
        .start()
        .await
        .expect("the original worker passes the handshake");
    let pids = pool.worker_pids();
    assert_eq!(pids.len(), 2);

    let r = pool.execute("ping", json!({})).await.unwrap();
    assert_eq!(
        (r["status"].as_str(), r["bridge_type"].as_str()),
        (Some("ok"), Some("generic")),
        "{r}"
    );

    // Text the original's `json.dumps` escapes (`\u00e9`, a surrogate pair
    // for the emoji), numbers of both kinds, nesting: back as sent.
    let args = json!({"message": "héllo 😀 \"q\" \\ \n", "n": -7, "x": 0.5, "l": [1, {"k": null}]});
    let r = pool.execute("echo", args.clone()).await.unwrap();
    assert_eq!(r["echoed"], args, "{r}");
    let r = pool.execute("compact_ok", args.clone()).await.unwrap();
    assert_eq!(r, args, "a reply with raw UTF-8 and no spaces");

    let r = pool
        .execute("compute", json!({"operation": "multiply", "a": 10, "b": 5}))
        .await
        .unwrap();
    assert_eq!(r["result"], 50, "{r}");

    // Failures are the original's plain strings: a remote error without a type.
    let err = pool
        .execute("compute", json!({"operation": "divide", "a": 1, "b": 0}))
        .await
        .unwrap_err();
    assert_eq!(remote(&err), (None, "Division by zero"), "{err}");
    let err = pool.execute("frobnicate", json!({})).await.unwrap_err();
    assert_eq!(remote(&err), (None, "Unknown command: frobnicate"), "{err}");
    assert!(!err.never_ran(), "the worker ran it and said no");

    // Keys in any order (sorted, as `sort_keys=True` or an Elixir encoder
    // writes them) are the same reply.
    let r = pool.execute("sorted_ok", json!({})).await.unwrap();
    assert_eq!(r, json!({"a": 1, "b": 2}));
    let err = pool.execute("sorted_error", json!({})).await.unwrap_err();
    assert_eq!(remote(&err), (None, "sorted failure"), "{err}");

    let mut now = pool.worker_pids();
    now.sort_unstable();
    let mut before = pids.clone();
    before.sort_unstable();
    assert_eq!(now, before, "failed commands replace no worker");
    assert_eq!(pool.stats().crashes, 0);
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_original_worker_sees_only_the_fields_it_knows_how_to_read() {
    let pool = builder()
        .size(1)
        .configure(|c| {
            c.health_check_interval = Duration::from_millis(200);
            c.health_check_timeout = Duration::from_secs(10);
        })
        .start()
        .await
        .unwrap();
    let pid = pool.worker_pids()[0];
    pool.execute("echo", json!({"a": 1})).await.unwrap();
    pool.execute("echo", json!({})).await.unwrap();
    // Idle long enough for health checks, then ask what it read.
    let mut seen = Vec::new();
    let found = {
        let mut ok = false;
        for _ in 0..120 {
            let r = pool.execute("seen", json!({})).await.unwrap();
            seen = r["requests"].as_array().unwrap().clone();
            if seen
                .iter()
                .any(|q| q["args"] == json!({"health_check": true}))
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        ok
    };
    assert!(found, "no health-check ping among {seen:?}");

    // The first frame is the init ping, with the original's arguments.
    let first = &seen[0];
    assert_eq!(first["command"], "ping", "{first}");
    assert_eq!(first["args"]["initialization"], true, "{first}");
    assert!(
        first["args"]["worker_id"]
            .as_str()
            .is_some_and(|w| !w.is_empty()),
        "{first}"
    );
    // Every request has the original's four fields, of the original's types.
    let mut ids = Vec::new();
    for q in &seen {
        let id = q["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("id not a positive integer: {q}"));
        assert!(id > 0, "{q}");
        ids.push(id);
        assert!(q["command"].is_string(), "{q}");
        assert!(q["args"].is_object(), "{q}");
        let ts = q["timestamp"]
            .as_str()
            .unwrap_or_else(|| panic!("no timestamp: {q}"));
        assert!(
            is_original_timestamp(ts),
            "timestamp {ts:?} is not UTC ISO-8601 with microseconds"
        );
        assert!(
            q.get("type").is_none(),
            "an original worker gets only requests: {q}"
        );
    }
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "ids unique: {ids:?}");
    assert_eq!(
        pool.worker_pids(),
        vec![pid],
        "health checks answered, worker kept"
    );
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_keep_their_worker_with_original_workers() {
    let pool = builder().size(3).start().await.unwrap();
    let session = |s: &str| CallOptions::new().session(s);
    let first = pid_of(&pool, session("user_123")).await;
    for _ in 0..6 {
        assert_eq!(
            pid_of(&pool, session("user_123")).await,
            first,
            "affinity to one worker"
        );
    }
    let r = pool
        .execute_in_session("user_123", "echo", json!({"message": "hello"}))
        .await
        .unwrap();
    assert_eq!(
        r["echoed"],
        json!({"message": "hello"}),
        "the arguments are the caller's only"
    );

    // The session's worker dies: the next call of the session runs on another.
    let _ = pool
        .execute_with("crash", json!({"code": 3}), session("user_123"))
        .await
        .unwrap_err();
    assert!(eventually(20, || !alive(first)).await);
    let next = pid_of(&pool, session("user_123")).await;
    assert_ne!(next, first);
    assert_eq!(
        pid_of(&pool, session("user_123")).await,
        next,
        "affinity to its new worker"
    );
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_never_gives_its_late_reply_to_the_next_caller() {
    // The original's defect: after a timeout the busy worker went back to
    // the idle set, and the next caller got a stale reply.
    let pool = builder().size(1).start().await.unwrap();
    let old = pool.worker_pids()[0];
    let err = pool
        .execute_with(
            "sleep",
            json!({"seconds": 3}),
            CallOptions::new().timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CallTimeout { .. }), "{err}");
    let r = pool.execute("echo", json!({"mine": true})).await.unwrap();
    assert_eq!(
        r["echoed"],
        json!({"mine": true}),
        "the next caller gets its own reply: {r}"
    );
    // Without a hello the worker cannot be told to cancel: it is replaced.
    assert!(
        eventually(30, || !alive(old)).await,
        "the worker still busy is stopped"
    );
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_original_worker_crashing_is_reported_and_replaced() {
    let pool = builder().size(1).start().await.unwrap();
    let old = pool.worker_pids()[0];
    let err = pool.execute("crash", json!({"code": 3})).await.unwrap_err();
    let Error::WorkerCrashed(crash) = &err else {
        panic!("{err}")
    };
    assert_eq!((crash.pid, crash.exit.clone()), (old, ExitReason::Code(3)));
    assert!(
        crash.stderr_tail.contains(&format!(
            "original-protocol worker started (pid {old}): ['--mode', 'pool-worker']"
        )),
        "{}",
        crash.stderr_tail
    );
    assert_eq!(
        pool.execute("ping", json!({})).await.unwrap()["status"],
        "ok"
    );
    assert_ne!(pool.worker_pids(), vec![old]);
    // Shutdown closes stdin; the original loop ends on EOF and exits.
    let pid = pool.worker_pids()[0];
    pool.shutdown().await.unwrap();
    assert!(eventually(10, || !alive(pid)).await);
}

/// What the original's `json.dumps` writes for values JSON cannot hold:
/// `NaN`, and a lone surrogate escape (`"\udcff"`, a file name read with
/// `surrogateescape`). docs/protocol.md, section 3: the pool refuses such
/// a frame as invalid JSON and replaces the worker; the call fails with
/// `Error::Protocol`, and the pool serves the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_json_cannot_hold_are_protocol_errors_and_the_worker_is_replaced() {
    let pool = builder().size(1).start().await.unwrap();
    for command in ["nan", "lone_surrogate"] {
        let old = pool.worker_pids()[0];
        let err = pool.execute(command, json!({})).await.unwrap_err();
        let Error::Protocol { source, .. } = &err else {
            panic!("{command}: {err:?}")
        };
        assert_eq!(source.kind(), "invalid_payload", "{command}: {err}");
        let r: Value = pool
            .execute("echo", json!({"after": command}))
            .await
            .unwrap();
        assert_eq!(r["echoed"]["after"], command);
        assert!(
            eventually(20, || !alive(old)).await,
            "{command}: the worker is replaced"
        );
    }
    pool.shutdown().await.unwrap();
}

/// docs/protocol.md, section 6: "The worker is ready when the reply has
/// `success: true` and `result.status == \"ok\"` ... Until then it gets no
/// calls." An original worker that answers its init ping with another
/// status, or with a failure (a plain string), is not started: `start`
/// fails with the reason and the worker's stderr, and its process is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_ping_answered_without_status_ok_starts_no_worker() {
    for (mode, says) in [
        ("not_ready", "model not loaded"),
        ("fails", "cannot initialise: model not loaded"),
    ] {
        let err = builder_of(Original(mode))
            .size(1)
            .configure(|c| c.breaker_threshold = 1)
            .start()
            .await
            .err()
            .unwrap_or_else(|| panic!("{mode}: a pool started"));
        let Error::StartFailed(start) = &err else {
            panic!("{mode}: {err:?}")
        };
        assert!(start.cause.contains(says), "{mode}: {}", start.cause);
        let pid: u32 = start
            .stderr_tail
            .split_once("original-protocol worker started (pid ")
            .and_then(|(_, rest)| rest.split_once(')'))
            .and_then(|(pid, _)| pid.parse().ok())
            .unwrap_or_else(|| panic!("{mode}: its stderr: {}", start.stderr_tail));
        assert!(
            eventually(10, || !alive(pid)).await,
            "{mode}: the worker that did not start is stopped"
        );
    }
}

/// docs/protocol.md, section 5: "A worker that sends no hello is treated as
/// an original-protocol worker: one call at a time, ... nothing written
/// ahead to it", and `PoolConfig::max_concurrency_per_worker` is an "upper
/// bound ... whatever it declares", not a grant. With both limits raised
/// and many short calls at once (what makes the pool write ahead to a
/// worker that declared `pipeline`), the worker never finds the next
/// request waiting in its stdin before it has replied to the one it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_written_ahead_to_an_original_worker_whatever_the_limits() {
    let pool = builder()
        .size(2)
        .configure(|c| {
            c.max_concurrency_per_worker = 8;
            c.pipeline_depth = 16;
            c.health_check_interval = Duration::from_millis(50);
        })
        .start()
        .await
        .unwrap();
    let calls = (0..200).map(|i| {
        let pool = pool.clone();
        tokio::spawn(async move {
            let args = json!({"operation": "add", "a": i, "b": 1});
            let r = pool.execute("compute", args).await.unwrap();
            assert_eq!(r["result"], i + 1, "{r}");
        })
    });
    for call in calls.collect::<Vec<_>>() {
        call.await.unwrap();
    }
    for _ in 0..2 {
        // Each worker once at least: ask until both have answered.
        let mut asked = std::collections::BTreeMap::new();
        for _ in 0..50 {
            let r = pool.execute("written_ahead", json!({})).await.unwrap();
            asked.insert(r["pid"].as_u64().unwrap(), r["ids"].clone());
            if asked.len() == 2 {
                break;
            }
        }
        for (pid, ids) in &asked {
            assert_eq!(ids, &json!([]), "requests written ahead to {pid}");
        }
    }
    pool.shutdown().await.unwrap();
}

/// `execute_stream` against an original worker (docs/protocol.md, section
/// 5: without a hello, "no streaming"): the stream holds no chunk, just the
/// worker's result, and a failure is the stream's one error item; the
/// worker serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_from_an_original_worker_is_its_result_alone() {
    use futures_core::Stream;
    async fn items(pool: &Pool, command: &str, args: Value) -> Vec<Result<StreamItem, Error>> {
        let mut stream = pool
            .execute_stream(command, args, CallOptions::new())
            .await
            .unwrap();
        let mut out = Vec::new();
        while let Some(item) =
            std::future::poll_fn(|cx| std::pin::Pin::new(&mut stream).poll_next(cx)).await
        {
            out.push(item);
        }
        out
    }
    let pool = builder().size(1).start().await.unwrap();
    let pid = pool.worker_pids()[0];
    let got = items(&pool, "echo", json!({"n": 1})).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let Ok(StreamItem::Done(r)) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(r["echoed"], json!({"n": 1}));
    let got = items(&pool, "nope", json!({})).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let Err(err) = &got[0] else { panic!("{got:?}") };
    assert_eq!(remote(err), (None, "Unknown command: nope"));
    assert_eq!(pool.worker_pids(), vec![pid]);
    pool.shutdown().await.unwrap();
}
