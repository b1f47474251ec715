//! A hostile or broken worker against the pool, and a hostile neighbour
//! against the state directory and the sweep, done for real.
//!
//! Workers: `tests/workers/redteam_hostile_worker.py` (raw JSON frames, no
//! bridge). Promises under test: docs/protocol.md sections 2, 4 and 5,
//! docs/reliability.md ("Crashes stay contained", "Run records and the
//! sweep"), the rustdoc of `Stats` ("every figure consistent with what
//! callers saw") and of `snakepit_core::sweep`.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use snakepit_core::sweep::{sweep, SweepOptions, UnsafeStateDir};
use snakepit_core::{Adapter, CallOptions, CallStream, Error, Launch, Pool, StreamItem};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The hostile worker: `setup` before it serves (`plain`, `hello`,
/// `early_reply`), `who` misbehaves (`all`, or `first`: only the first
/// start of slot 1), `caps` the JSON text of its hello's capabilities.
struct Hostile {
    setup: &'static str,
    who: &'static str,
    caps: String,
}

impl Hostile {
    fn all() -> Self {
        Hostile {
            setup: "plain",
            who: "all",
            caps: String::new(),
        }
    }

    fn hello(caps: &str) -> Self {
        Hostile {
            setup: "hello",
            who: "all",
            caps: caps.to_owned(),
        }
    }
}

impl Adapter for Hostile {
    fn launch(&self) -> Launch {
        let mut l = Launch::new(python())
            .arg(root().join("crates/core/tests/workers/redteam_hostile_worker.py"))
            .arg(self.setup)
            .arg(self.who)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        if !self.caps.is_empty() {
            l = l.arg(&self.caps);
        }
        l
    }
    fn command_timeout(&self, _: &str) -> Duration {
        Duration::from_secs(30)
    }
}

/// Test-friendly timings, no health checks (they would take request ids),
/// and a breaker that never opens and a back-off that stays short (the
/// attacks kill workers within a second of their start on purpose, which
/// counts as a failed start).
fn hostile_pool(adapter: Hostile, size: usize) -> snakepit_core::PoolBuilder {
    builder(adapter).size(size).configure(|c| {
        c.health_check_interval = Duration::ZERO;
        c.breaker_threshold = 1_000_000;
        c.restart_backoff = Duration::from_millis(10);
        c.restart_backoff_max = Duration::from_millis(50);
        c.queue_timeout = Duration::from_secs(60);
    })
}

async fn next(stream: &mut CallStream) -> Option<snakepit_core::Result<StreamItem>> {
    use futures_core::Stream;
    use std::pin::Pin;
    tokio::time::timeout(
        Duration::from_secs(30),
        std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)),
    )
    .await
    .expect("the stream answers within 30 s")
}

/// The pool is back to `n` ready, idle workers, none of them in `gone`.
async fn settled(pool: &Pool, n: usize, gone: &[u32]) -> bool {
    eventually(20, || {
        let s = pool.stats();
        let pids = pool.worker_pids();
        s.workers == n
            && s.available == n
            && s.in_flight == 0
            && pids.len() == n
            && !pids.iter().any(|p| gone.contains(p))
    })
    .await
}

fn token_of(v: &Value) -> &Value {
    &v["token"]
}

// ---------------------------------------------------------------------
// Part 1: frames from a hostile worker
// ---------------------------------------------------------------------

/// Frames that break the protocol in ways the existing suite does not try
/// (a zero length, `success` a string or a number, a float id, an unknown
/// frame type, a reply broken after the bytes the fast path reads, a field
/// given twice where the fast path does not look, a chunk for an id never
/// sent): each is that call's `Error::Protocol` with the documented kind,
/// the worker is replaced, the next call is served, and the counters say
/// exactly that (reliability.md: "A worker that breaks the protocol (a bad
/// frame, ...) is replaced; the call it was serving gets `Error::Protocol`").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_malformed_frame_is_that_calls_protocol_error_and_the_worker_is_replaced() {
    let pool = hostile_pool(Hostile::all(), 1).start().await.unwrap();
    let cases = [
        ("zero_len", "invalid_payload"),
        ("success_str", "wrong_type"),
        ("success_int", "wrong_type"),
        ("id_float", "wrong_type"),
        ("unknown_type", "wrong_type"),
        ("fast_path_garbage", "invalid_payload"),
        ("dup_id_slow", "wrong_type"),
        ("chunk_unknown", "wrong_type"),
    ];
    let mut kinds = Vec::new();
    for (i, (command, _)) in cases.iter().enumerate() {
        let before = pool.worker_pids()[0];
        let err = pool
            .execute(command, json!({"token": i}))
            .await
            .expect_err(command);
        match &err {
            Error::Protocol { source, .. } => kinds.push((*command, source.kind())),
            other => panic!("{command}: expected Error::Protocol, got {other:?}"),
        }
        assert!(!err.is_crash(), "{command}: {err:?}");
        assert!(
            settled(&pool, 1, &[before]).await,
            "{command}: the worker was not replaced: {:?}",
            pool.stats()
        );
        let echo = pool.execute("echo", json!({"token": "after"})).await;
        assert_eq!(
            token_of(&echo.unwrap_or_else(|e| panic!("{command}: {e}"))),
            "after"
        );
    }
    let expected: Vec<_> = cases.iter().map(|&(c, k)| (c, k)).collect();
    assert_eq!(kinds, expected);
    let s = pool.stats();
    let n = cases.len() as u64;
    assert_eq!(
        (s.requests, s.completed, s.errors, s.crashes, s.restarts),
        (2 * n, n, n, 0, n),
        "{s:?}"
    );
    pool.shutdown().await.unwrap();
}

/// A reply that names a field twice is a bad frame whichever way it is
/// routed: decode_inbound calls `{"id":2,"id":999,...}` `wrong_type`
/// ("a map without duplicate fields") and the pool replaces the worker.
/// Given in the order the reader's fast path takes (`{"id":N,"success":..`
/// first), with `result` or `success` repeated, the same fault is a
/// protocol error too (it used to be only the call's `Error::Codec`, and
/// the worker stayed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_given_twice_is_a_protocol_error_whichever_way_the_reply_is_routed() {
    let pool = hostile_pool(Hostile::all(), 1).start().await.unwrap();
    for command in ["dup_id_slow", "dup_result", "dup_success"] {
        let before = pool.worker_pids()[0];
        let err = pool.execute(command, json!({})).await.expect_err(command);
        assert!(
            matches!(&err, Error::Protocol { .. }),
            "{command}: expected Error::Protocol, got {err:?}"
        );
        assert!(
            settled(&pool, 1, &[before]).await,
            "{command}: the worker that sent it was kept"
        );
    }
    pool.shutdown().await.unwrap();
    // The same in MessagePack.
    let pool = msgpack_pool().start().await.unwrap();
    let before = pool.worker_pids()[0];
    let err = pool.execute("dup_result", json!({})).await.unwrap_err();
    assert!(
        matches!(&err, Error::Protocol { .. }),
        "msgpack dup_result: expected Error::Protocol, got {err:?}"
    );
    assert!(settled(&pool, 1, &[before]).await, "msgpack: kept");
    pool.shutdown().await.unwrap();
}

/// A failed reply whose `error` is neither a string nor a map (protocol.md
/// section 5: "`error` | string or map | when not `success`") is a frame
/// with a field of the wrong type: a protocol error, as `success: "yes"` is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_field_of_the_wrong_type_is_a_protocol_error() {
    let pool = hostile_pool(Hostile::all(), 1).start().await.unwrap();
    let before = pool.worker_pids()[0];
    let err = pool.execute("error_int", json!({})).await.unwrap_err();
    assert!(matches!(&err, Error::Protocol { .. }), "json: {err:?}");
    assert!(settled(&pool, 1, &[before]).await, "json: kept");
    pool.shutdown().await.unwrap();
    let pool = msgpack_pool().start().await.unwrap();
    let before = pool.worker_pids()[0];
    let err = pool.execute("error_int", json!({})).await.unwrap_err();
    assert!(matches!(&err, Error::Protocol { .. }), "msgpack: {err:?}");
    assert!(settled(&pool, 1, &[before]).await, "msgpack: kept");
    pool.shutdown().await.unwrap();
}

/// A worker forges a reply for an id it was never given: the id of the call
/// the pool sent next, to the other worker. The forger's own call fails
/// with `Error::Protocol` and the forger is replaced; the other call gets
/// its own reply, never the forged one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_forged_for_another_workers_call_fails_only_the_forger() {
    let pool = hostile_pool(Hostile::all(), 2).start().await.unwrap();
    let forger = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute("reply_next_id", json!({"wait_ms": 700, "token": "A"}))
                .await
        })
    };
    assert!(
        eventually(10, || pool.stats().in_flight == 1).await,
        "the forger's call is out"
    );
    let victim = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.execute("sleep", json!({"ms": 2000, "token": "B"}))
                .await
        })
    };
    let err = forger.await.unwrap().unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Protocol {
                source: snakepit_protocol::Error::UnknownId { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let b = victim
        .await
        .unwrap()
        .expect("the other worker's call succeeds");
    assert_eq!(b["token"], "B", "the victim got the forged reply: {b}");
    assert!(settled(&pool, 2, &[]).await);
    let s = pool.stats();
    assert_eq!(
        (s.requests, s.completed, s.errors, s.crashes, s.restarts),
        (2, 1, 1, 0, 1),
        "{s:?}"
    );
    pool.shutdown().await.unwrap();
}

/// A worker answers its call, then answers it again (or writes stray bytes
/// to stdout after its reply), and reads nothing more for a while: the
/// first reply is the caller's, the worker is replaced, and the calls
/// queued behind it (written to a worker that never read them) go to its
/// replacement. No call fails; the counters say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_reply_or_stdout_after_the_reply_loses_no_call() {
    for command in ["reply_twice", "stdout_after"] {
        let pool = hostile_pool(Hostile::all(), 1).start().await.unwrap();
        let first = pool.worker_pids()[0];
        let attack = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.execute(
                    command,
                    json!({"token": "first", "wait_ms": 300, "after_ms": 3000}),
                )
                .await
            })
        };
        assert!(eventually(10, || pool.stats().in_flight == 1).await);
        let queued: Vec<_> = (0..5)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.execute("echo", json!({"token": i})).await })
            })
            .collect();
        let r = attack.await.unwrap();
        assert_eq!(
            token_of(&r.unwrap_or_else(|e| panic!("{command}: {e:?}"))),
            "first"
        );
        for (i, q) in queued.into_iter().enumerate() {
            let r = q.await.unwrap();
            assert_eq!(
                token_of(&r.unwrap_or_else(|e| panic!("{command}: queued call {i}: {e:?}"))),
                &json!(i)
            );
        }
        assert!(
            settled(&pool, 1, &[first]).await,
            "{command}: the worker was not replaced"
        );
        let s = pool.stats();
        assert_eq!(
            (s.requests, s.completed, s.errors, s.crashes, s.restarts),
            (6, 6, 0, 0, 1),
            "{command}: {s:?}"
        );
        pool.shutdown().await.unwrap();
    }
}

/// A worker's reply is routed by its first bytes (`{"id":N,"success":true,`)
/// and broken after them. reliability.md: the reply's "caller finds the
/// rest broken as it decodes it ... A call given to that worker in between
/// ... if the worker never read it, it goes to another worker; if it did,
/// it fails with `WorkerCrashed` (with `Error::Protocol` when the reader
/// found the break)". Ten rounds, one queued call each: each queued call
/// gets its own result or one of those two errors, and the counters agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_handed_to_a_worker_whose_reply_is_broken_ends_only_as_reliability_md_says() {
    let pool = hostile_pool(Hostile::all(), 1).start().await.unwrap();
    let mut ended = 0;
    for round in 0..10 {
        let attack = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.execute("fast_path_garbage", json!({"wait_ms": 200}))
                    .await
            })
        };
        assert!(eventually(10, || pool.stats().in_flight == 1).await);
        let queued = {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.execute("sleep", json!({"ms": 500, "token": round}))
                    .await
            })
        };
        let err = attack.await.unwrap().unwrap_err();
        assert!(matches!(err, Error::Protocol { .. }), "{err:?}");
        // Its own result, or one of the two documented ends; never another
        // call's reply, never a hang.
        match queued.await.unwrap() {
            Ok(v) => assert_eq!(v["token"], round),
            Err(Error::WorkerCrashed(_) | Error::Protocol { .. }) => ended += 1,
            Err(e) => panic!("round {round}: {e:?}"),
        }
        assert!(settled(&pool, 1, &[]).await);
    }
    let s = pool.stats();
    assert_eq!(s.errors, 10 + ended, "{s:?}");
    assert_eq!(s.completed, 10 - ended, "{s:?}");
    pool.shutdown().await.unwrap();
}

/// A call times out; within the grace period its worker sends the late
/// reply, broken. reliability.md: "A worker that breaks the protocol (a bad
/// frame, stray bytes on stdout, a reply nobody asked for) is replaced".
/// Broken where the reader looks (`dup_id_slow`: a field given twice, read
/// by the full decoder) it is; broken past the first bytes the reader's
/// fast path routes by (`fast_path_garbage`), it is too: the reader checks
/// a reply whose caller is gone (before, nobody decoded it and the worker
/// served on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_late_reply_to_a_timed_out_call_gets_the_worker_replaced() {
    let pool = hostile_pool(Hostile::all(), 1)
        .configure(|c| c.shutdown_grace_period = Duration::from_secs(3))
        .start()
        .await
        .unwrap();
    for command in ["dup_id_slow", "fast_path_garbage"] {
        let before = pool.worker_pids()[0];
        let r = pool
            .execute_with(
                command,
                json!({"wait_ms": 600}),
                CallOptions::new().timeout(Duration::from_millis(200)),
            )
            .await;
        assert!(
            matches!(r, Err(Error::CallTimeout { .. })),
            "{command}: {r:?}"
        );
        // The late reply comes at 600 ms, well within the grace period.
        assert!(
            eventually(10, || !pool.worker_pids().contains(&before)).await,
            "{command}: the worker that sent a broken frame still serves"
        );
        assert!(settled(&pool, 1, &[before]).await);
    }
    pool.shutdown().await.unwrap();
}

/// A worker that declared `pipeline` breaks the protocol while calls are
/// written ahead behind the one it runs: the call it was serving gets
/// `Error::Protocol`. Each call behind it that the worker had not read
/// goes to the replacement, where it gets its own reply; one it had read
/// may have run once the broken frame was out (reliability.md), so it
/// fails with `Error::Protocol` and is never sent again. No call is
/// counted twice, and none is answered by the offender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_written_ahead_of_a_protocol_violation_run_once_or_fail() {
    let pool = hostile_pool(Hostile::hello(r#"{"pipeline":true}"#), 1)
        // Calls of a busy machine count as short: calls are written ahead.
        .configure(|c| c.pipeline_max_call = Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    // Short calls, so that the pool writes calls ahead.
    for i in 0..40 {
        pool.execute("echo", json!({"token": i})).await.unwrap();
    }
    let first = pool.worker_pids()[0];
    let attack = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.execute("zero_len", json!({"wait_ms": 800})).await })
    };
    assert!(eventually(10, || pool.stats().in_flight == 1).await);
    let behind: Vec<_> = (0..8)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute("echo", json!({"token": i})).await })
        })
        .collect();
    let ahead = eventually(5, || {
        pool.workers().first().is_some_and(|w| w.in_flight > 1)
    })
    .await;
    assert!(ahead, "no call was written ahead: {:?}", pool.workers());
    let err = attack.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err:?}");
    let mut failed = 0;
    for (i, b) in behind.into_iter().enumerate() {
        match b.await.unwrap() {
            Ok(v) => {
                assert_eq!(v["token"], i);
                assert_ne!(v["pid"], first, "call {i} was answered by the offender");
            }
            Err(e @ Error::Protocol { .. }) => {
                assert!(!e.never_ran(), "call {i} written ahead: {e:?}");
                failed += 1;
            }
            Err(e) => panic!("call {i} written ahead: {e:?}"),
        }
    }
    // With every call behind it failed, none waited for the replacement.
    assert!(eventually(10, || pool.stats().restarts == 1).await);
    let s = pool.stats();
    assert_eq!(
        (s.requests, s.completed, s.errors, s.crashes, s.restarts),
        (49, 48 - failed, 1 + failed, 0, 1),
        "{s:?}"
    );
    pool.shutdown().await.unwrap();
}

/// A reply written one byte at a time, 20 ms apart (about 1.5 s for the
/// frame), arrives whole, from the same worker, which stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_dripped_a_byte_at_a_time_arrives_whole() {
    let pool = hostile_pool(Hostile::all(), 1).start().await.unwrap();
    let pid = pool.worker_pids()[0];
    let r = pool
        .execute("drip", json!({"token": "slow", "delay_ms": 20}))
        .await
        .unwrap();
    assert_eq!(r["token"], "slow");
    assert_eq!(r["pid"], pid);
    assert_eq!(pool.worker_pids(), vec![pid]);
    assert_eq!(pool.stats().restarts, 0);
    pool.shutdown().await.unwrap();
}

/// A worker that drips its reply slower than the deadline (100 ms a byte),
/// or stops in the middle of a frame header: the caller gets
/// `CallTimeout` at its deadline, the worker (no cancel, no sigint) is
/// replaced after the grace period, the other worker serves meanwhile, and
/// the counters are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_slower_than_the_deadline_is_a_timeout_and_the_worker_is_replaced() {
    let pool = hostile_pool(Hostile::all(), 2).start().await.unwrap();
    let mut calls = 0u64;
    for command in ["drip", "half_header"] {
        let before = pool.stats().restarts;
        let r = pool
            .execute_with(
                command,
                json!({"delay_ms": 100}),
                CallOptions::new().timeout(Duration::from_millis(800)),
            )
            .await;
        calls += 1;
        assert!(
            matches!(r, Err(Error::CallTimeout { .. })),
            "{command}: {r:?}"
        );
        // The other worker serves while the slow one is waited for.
        for i in 0..3 {
            let r = pool.execute("echo", json!({"token": i})).await.unwrap();
            assert_eq!(r["token"], i);
            calls += 1;
        }
        assert!(
            eventually(20, || pool.stats().restarts == before + 1).await,
            "{command}: replaced after the grace period"
        );
        assert!(settled(&pool, 2, &[]).await);
    }
    let s = pool.stats();
    assert_eq!(
        (
            s.requests,
            s.completed,
            s.errors,
            s.call_timeouts,
            s.crashes,
            s.restarts
        ),
        (calls, calls - 2, 2, 2, 0, 2),
        "{s:?}"
    );
    pool.shutdown().await.unwrap();
}

/// A hello declaring `max_concurrency` 0 is one call at a time (the
/// capacity is at least 1, and calls are served); one declaring
/// `u32::MAX` is held to `max_concurrency_per_worker`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_max_concurrency_in_a_hello_is_held_within_bounds() {
    for (caps, capacity) in [
        (r#"{"max_concurrency":0}"#, 1),
        (r#"{"max_concurrency":4294967295}"#, 64),
    ] {
        let pool = hostile_pool(Hostile::hello(caps), 1).start().await.unwrap();
        let s = pool.stats();
        assert_eq!(s.capacity, capacity, "{caps}: {s:?}");
        assert_eq!(pool.workers()[0].capacity as usize, capacity, "{caps}");
        let calls: Vec<_> = (0..4)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.execute("echo", json!({"token": i})).await })
            })
            .collect();
        for (i, c) in calls.into_iter().enumerate() {
            assert_eq!(c.await.unwrap().unwrap()["token"], i, "{caps}");
        }
        pool.shutdown().await.unwrap();
    }
}

/// A hello whose capabilities do not fit (a `max_concurrency` of 2^64, or
/// negative, or a string, or capabilities that are not a map): the worker
/// cannot start, and `start()` says why (a protocol error) with a typed
/// `StartFailed` instead of hanging or panicking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_with_capabilities_that_do_not_fit_fails_the_start_clearly() {
    for caps in [
        r#"{"max_concurrency":18446744073709551616}"#,
        r#"{"max_concurrency":-1}"#,
        r#"{"max_concurrency":"many"}"#,
        r#"[1,2,3]"#,
    ] {
        let started = tokio::time::timeout(
            Duration::from_secs(60),
            builder(Hostile::hello(caps))
                .size(1)
                .configure(|c| c.startup_timeout = Duration::from_secs(20))
                .start(),
        )
        .await
        .expect("start() returns");
        let err = match started {
            Ok(pool) => {
                pool.shutdown().await.unwrap();
                panic!("{caps}: a worker with this hello started");
            }
            Err(e) => e,
        };
        let Error::StartFailed(e) = &err else {
            panic!("{caps}: {err:?}")
        };
        assert!(
            e.cause.contains("broke the protocol"),
            "{caps}: the cause does not say what was wrong: {err}"
        );
    }
}

/// A reply sent before any request (a worker that answers id 424242 at
/// once): the worker is out of step, so it never becomes ready, and
/// `start()` fails with a typed error naming the protocol problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_before_any_request_fails_the_start_clearly() {
    let adapter = Hostile {
        setup: "early_reply",
        who: "all",
        caps: String::new(),
    };
    let err = tokio::time::timeout(
        Duration::from_secs(60),
        builder(adapter)
            .size(1)
            .configure(|c| c.startup_timeout = Duration::from_secs(20))
            .start(),
    )
    .await
    .expect("start() returns");
    let err = match err {
        Ok(pool) => {
            pool.shutdown().await.unwrap();
            panic!("a worker that replied to nothing started");
        }
        Err(e) => e,
    };
    let Error::StartFailed(e) = &err else {
        panic!("{err:?}")
    };
    assert!(e.cause.contains("424242"), "{err}");
}

/// protocol.md: the hello is "sent once, as the very first frame". A hello
/// sent later, declaring host calls, grants nothing: the host call that
/// follows is refused as from a worker that did not declare them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_hello_grants_no_host_calls() {
    let pool = hostile_pool(Hostile::all(), 1).start().await.unwrap();
    let before = pool.worker_pids()[0];
    let err = pool
        .execute("late_hello_host_call", json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Protocol { .. }) && err.to_string().contains("host_calls"),
        "{err:?}"
    );
    assert!(settled(&pool, 1, &[before]).await);
    assert_eq!(
        pool.stats().capacity,
        1,
        "the late hello's concurrency was not taken"
    );
    pool.shutdown().await.unwrap();
}

/// protocol.md section 2: "a deeper reply, chunk or host-call argument
/// fails only its own call". A stream whose worker sends a chunk nested too
/// deep, then more chunks and a successful final reply: the caller hears
/// `Error::Codec` for the chunk; the call has failed, so nothing follows
/// that error, and `stats()` counts one error, not a completed call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_too_deep_chunk_ends_its_stream_as_a_failed_call() {
    let pool = hostile_pool(Hostile::hello(r#"{"streaming":true}"#), 1)
        .start()
        .await
        .unwrap();
    let mut stream = pool
        .execute_stream(
            "deep_chunk_then_more",
            json!({"token": "t"}),
            CallOptions::new(),
        )
        .await
        .unwrap();
    let mut items = Vec::new();
    while let Some(item) = next(&mut stream).await {
        items.push(item);
    }
    let shape: Vec<String> = items
        .iter()
        .map(|i| match i {
            Ok(StreamItem::Chunk(v)) => format!("chunk {v}"),
            Ok(StreamItem::Done(v)) => format!("done {v}"),
            Ok(other) => format!("{other:?}"),
            Err(e) => format!("err {}", e.kind()),
        })
        .collect();
    let err_at = items
        .iter()
        .position(|i| {
            matches!(
                i,
                Err(Error::Codec(snakepit_protocol::Error::TooDeep { .. }))
            )
        })
        .unwrap_or_else(|| panic!("no TooDeep error: {shape:?}"));
    let s = pool.stats();
    assert_eq!(
        err_at + 1,
        items.len(),
        "items after the error: {shape:?}; completed {}, errors {}",
        s.completed,
        s.errors
    );
    assert_eq!((s.completed, s.errors), (0, 1), "{shape:?} {s:?}");
    pool.shutdown().await.unwrap();
}

/// Every attack at once, on three workers, beside well-behaved calls: each
/// attacking call gets a typed error of its own (or, for the attacks that
/// answer first, its result), every well-behaved call gets its own reply,
/// nothing panics, and the counters match what the callers saw exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_attacks_loses_no_well_behaved_call_and_keeps_exact_counts() {
    let pool = hostile_pool(Hostile::all(), 3).start().await.unwrap();
    let attacks = [
        "zero_len",
        "success_str",
        "id_float",
        "unknown_type",
        "dup_id_slow",
        "chunk_unknown",
        "reply_next_id",
    ];
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let n = 240;
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let pool = pool.clone();
            let attack = rand() % 4 == 0;
            let command = if attack {
                attacks[(rand() % attacks.len() as u64) as usize]
            } else {
                "sleep"
            };
            let ms = rand() % 5;
            tokio::spawn(async move {
                (
                    i,
                    attack,
                    pool.execute(command, json!({"token": i, "ms": ms})).await,
                )
            })
        })
        .collect();
    let (mut ok, mut failed, mut attacked) = (0u64, 0u64, 0u64);
    for c in calls {
        let (i, attack, r) = c.await.unwrap();
        attacked += u64::from(attack);
        match r {
            Ok(v) => {
                assert_eq!(v["token"], i, "a caller got another call's reply");
                ok += 1;
            }
            Err(Error::Protocol { .. }) if attack => failed += 1,
            Err(e) => panic!(
                "call {i} (attack: {attack}): {e:?}\n{:?}\n{:?}",
                pool.stats(),
                pool.workers()
            ),
        }
    }
    assert_eq!(failed, attacked, "every attacking call fails, no other");
    assert!(settled(&pool, 3, &[]).await, "{:?}", pool.stats());
    let s = pool.stats();
    assert_eq!(
        (s.requests, s.completed, s.errors, s.crashes, s.restarts),
        (n, ok, failed, 0, attacked),
        "{s:?}"
    );
    let echo = pool.execute("echo", json!({"token": "end"})).await.unwrap();
    assert_eq!(echo["token"], "end");
    pool.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------
// Part 2: the state directory and the sweep
// ---------------------------------------------------------------------

const NOBODY: u32 = 65534;

/// The start time (`/proc/<pid>/stat` field 22) of `pid`.
fn start_of(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(19).unwrap().parse().unwrap()
}

fn parent_pid() -> u32 {
    std::os::unix::process::parent_id()
}

/// A `sleep` child of this process (same session), with `env` added.
#[allow(clippy::disallowed_methods)] // a bystander, not a worker
fn bystander(env: &[(&str, &str)]) -> std::process::Child {
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("300");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// A record of a dead host in this PID namespace and boot naming, as its
/// workers, processes that are not the run's, each with its true start
/// time: this test process, its parent, pid 1 and an unrelated child, none
/// carrying the run's id. The sweep judges the run crashed and kills none
/// of them (reliability.md: "So a reused pid, somebody else's process with
/// the same command line ... is never touched").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_naming_unrelated_processes_as_workers_kills_none_of_them() {
    let dir = temp_dir("rt-unrelated");
    let run_id = &a_run_id("1111222233334444");
    let mut child = bystander(&[]);
    let me = std::process::id();
    let pids = [me, parent_pid(), 1, child.id()];
    let mut text = forged_record(
        run_id,
        a_dead_pid(),
        Some((our_pid_namespace(), &our_boot_id())),
    );
    for p in pids {
        text.push_str(&format!("worker {p} {}\n", start_of(p)));
    }
    // A worker line with a pid that cannot exist, and pid 0.
    text.push_str("worker 4294967295 1\nworker 0 0\n");
    let record = dir.join(format!("forged.1.{run_id}.run"));
    std::fs::write(&record, text).unwrap();
    for dry_run in [true, false] {
        let report = sweep(&SweepOptions::new().state_dir(&dir).dry_run(dry_run)).unwrap();
        assert_eq!(report.killed(), 0, "dry run {dry_run}: {report:?}");
        assert_eq!(report.stale_runs.len(), 1, "{report:?}");
        assert!(report.unreadable.is_empty(), "{report:?}");
    }
    assert!(!record.exists(), "the crashed run's record is removed");
    for p in pids {
        assert!(alive(p), "pid {p} was killed");
    }
    assert!(child.try_wait().unwrap().is_none(), "the bystander lives");
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// A process that carries a crashed run's id but hangs below a live
/// process in the same session (a child of this test, which is alive) is
/// not a leftover: the sweep spares it and keeps the record, even when the
/// record names it as a worker with its true start time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_with_the_runs_id_below_a_live_host_is_spared() {
    let dir = temp_dir("rt-hosted");
    let run_id = &a_run_id("9999888877776666");
    let mut child = bystander(&[("SNAKEPIT_RUN_ID", run_id)]);
    let mut text = forged_record(
        run_id,
        a_dead_pid(),
        Some((our_pid_namespace(), &our_boot_id())),
    );
    text.push_str(&format!("worker {} {}\n", child.id(), start_of(child.id())));
    let record = dir.join(format!("forged.1.{run_id}.run"));
    std::fs::write(&record, text).unwrap();
    let report = sweep(&SweepOptions::new().state_dir(&dir)).unwrap();
    assert_eq!(report.killed(), 0, "{report:?}");
    assert_eq!(report.active_runs, 1, "{report:?}");
    assert!(record.exists());
    assert!(
        child.try_wait().unwrap().is_none(),
        "the hosted process was killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// Files named like records that are not records of ours: random bytes,
/// invalid UTF-8, a directory, and a well-formed record owned by another
/// user that names a live leftover of its run. Each is reported unreadable
/// and left where it is; the leftover lives (another user's record is never
/// acted on). A well-formed record of ours with 50,000 worker lines (under
/// `RECORD_MAX_BYTES`) is read, judged, and removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_foreign_and_large_records_are_handled_without_harm() {
    let dir = temp_dir("rt-garbage");
    let run_id = &a_run_id("abababababababab");
    let leftover = a_leftover(run_id);
    let here = Some((our_pid_namespace(), our_boot_id()));
    let here = here.as_ref().map(|(ns, b)| (*ns, b.as_str()));
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("random.run"), &bytes).unwrap();
    std::fs::write(
        dir.join("utf8.run"),
        b"snakepit-run 1\ninstance \xff\xfe\nrun_id x\nhost 5 5\n",
    )
    .unwrap();
    std::fs::create_dir(dir.join("dir.run")).unwrap();
    let foreign = dir.join("foreign.1.x.run");
    std::fs::write(&foreign, forged_record(run_id, a_dead_pid(), here)).unwrap();
    std::os::unix::fs::chown(&foreign, Some(NOBODY), Some(NOBODY)).unwrap();
    let mut big = forged_record("cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd", a_dead_pid(), here);
    for i in 0..50_000u32 {
        big.push_str(&format!("worker {} 1\n", 4_000_000 + i));
    }
    assert!(big.len() < (1 << 20));
    let big_path = dir.join("big.1.y.run");
    std::fs::write(&big_path, big).unwrap();

    let report = sweep(&SweepOptions::new().state_dir(&dir)).unwrap();
    let mut unreadable: Vec<String> = report
        .unreadable
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    unreadable.sort();
    assert_eq!(
        unreadable,
        ["dir.run", "foreign.1.x.run", "random.run", "utf8.run"],
        "{report:?}"
    );
    assert_eq!(report.killed(), 0, "{report:?}");
    assert!(alive(leftover), "another user's record was acted on");
    assert!(foreign.exists() && dir.join("random.run").exists());
    assert_eq!(report.stale_runs.len(), 1, "{report:?}");
    assert!(
        !big_path.exists(),
        "the large record of a dead run is removed"
    );
    kill_9(leftover);
    let _ = std::fs::remove_dir_all(dir);
}

/// A state directory that is a regular file: the sweep refuses it with an
/// `UnsafeStateDir` ("it is not a directory"), and a pool still starts and
/// serves, leaving the file as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_dir_that_is_a_file_is_refused_and_left_intact() {
    let base = temp_dir("rt-file");
    let file = base.join("state");
    std::fs::write(&file, "not a directory\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = sweep(&SweepOptions::new().state_dir(&file)).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    let typed = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<UnsafeStateDir>())
        .unwrap_or_else(|| panic!("not an UnsafeStateDir: {err:?}"));
    assert_eq!(typed.dir, file);
    assert!(err.to_string().contains("not a directory"), "{err}");

    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| c.state_dir = Some(file.clone()))
        .start()
        .await
        .expect("a pool starts without its record");
    assert!(pool.execute("echo", json!({})).await.is_ok());
    pool.shutdown().await.unwrap();
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a directory\n");
    assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
    let _ = std::fs::remove_dir_all(base);
}

/// Not a test of its own: run by the test below in an environment of its
/// own, it starts a pool with the default state directory and prints that
/// directory and how many records of its run are in it while the pool runs.
#[test]
fn default_dir_probe() {
    if std::env::var("SNAKEPIT_RT_PROBE").is_err() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool = builder(TestWorker::new())
            .size(1)
            .name("rtprobe")
            .configure(|c| c.sweep_on_start = false)
            .start()
            .await
            .unwrap();
        let dir = snakepit_core::sweep::default_state_dir();
        let records = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.file_name().to_string_lossy().contains(pool.run_id()))
                })
                .count()
            })
            .unwrap_or(0);
        println!("PROBE {}", json!({"dir": dir, "records": records}));
        pool.shutdown().await.unwrap();
    });
}

/// reliability.md: "The directory is always absolute: a variable set to
/// nothing counts as unset, a relative `XDG_RUNTIME_DIR` or `TMPDIR` is
/// ignored (as the XDG specification asks), and a relative
/// `SNAKEPIT_STATE_DIR` is taken from the working directory." Each case
/// runs a host of its own in a scratch working directory; the pool's record
/// is where `default_state_dir()` says, and nothing lands below the working
/// directory unless `SNAKEPIT_STATE_DIR` asked for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_state_dir_is_absolute_whatever_the_variables_say() {
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    let private_tmp = PathBuf::from(format!("/tmp/snakepit-{uid}"));
    // (SNAKEPIT_STATE_DIR, XDG_RUNTIME_DIR, TMPDIR); None: unset.
    let cases: [(Option<&str>, Option<&str>, Option<&str>); 5] = [
        (None, Some(""), None),
        (None, Some("relative-runtime"), None),
        (Some(""), None, None),
        (None, None, Some("relative-tmp")),
        (Some("relative-state"), Some("/nonexistent-xdg"), None),
    ];
    for (state, xdg, tmp) in cases {
        let cwd = temp_dir("rt-xdg");
        let mut cmd = snakepit_tests::this_test("default_dir_probe");
        cmd.env("SNAKEPIT_RT_PROBE", "1").current_dir(&cwd);
        for (name, value) in [
            ("SNAKEPIT_STATE_DIR", state),
            ("XDG_RUNTIME_DIR", xdg),
            ("TMPDIR", tmp),
        ] {
            match value {
                Some(v) => cmd.env(name, v),
                None => cmd.env_remove(name),
            };
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let line = text
            .lines()
            .find_map(|l| Some(&l[l.find("PROBE ")? + 6..]))
            .unwrap_or_else(|| panic!("no probe line: {text}"));
        let probe: Value = serde_json::from_str(line).unwrap();
        let dir = PathBuf::from(probe["dir"].as_str().unwrap());
        let case = format!("{state:?} {xdg:?} {tmp:?}");
        let expected = match state {
            Some("relative-state") => cwd.join("relative-state"),
            _ => private_tmp.clone(),
        };
        assert_eq!(dir, expected, "{case}");
        assert_eq!(
            probe["records"], 1,
            "{case}: the pool's record is not there"
        );
        for stray in ["snakepit", "relative-runtime", "relative-tmp"] {
            assert!(
                !cwd.join(stray).exists(),
                "{case}: {stray} was made below the working directory"
            );
        }
        let _ = std::fs::remove_dir_all(&cwd);
    }
}

/// The MessagePack hostile worker.
struct HostileMsgPack;

impl Adapter for HostileMsgPack {
    fn launch(&self) -> Launch {
        Launch::new(python())
            .arg(root().join("crates/core/tests/workers/redteam_hostile_msgpack.py"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
    }
    fn codec(&self) -> snakepit_core::WireCodec {
        snakepit_core::WireCodec::MsgPack
    }
}

fn msgpack_pool() -> snakepit_core::PoolBuilder {
    builder(HostileMsgPack).size(1).configure(|c| {
        c.health_check_interval = Duration::ZERO;
        c.restart_backoff_max = Duration::from_millis(50);
    })
}

/// The same faults in MessagePack, each in the shape the reader routes by
/// its first bytes: a result string or error message that is not UTF-8, a
/// map that says 3 entries and holds 2. Each is that call's
/// `Error::Protocol` of the documented kind (protocol.md section 8), the
/// worker is replaced, the next call is served, the counters are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_msgpack_replies_are_protocol_errors_and_the_worker_is_replaced() {
    let pool = msgpack_pool().start().await.unwrap();
    let cases = [
        ("bad_utf8_result", "invalid_utf8"),
        ("bad_utf8_error", "invalid_utf8"),
        ("truncated_map", "invalid_payload"),
    ];
    for (command, kind) in cases {
        let before = pool.worker_pids()[0];
        let err = pool.execute(command, json!({})).await.unwrap_err();
        assert!(
            matches!(&err, Error::Protocol { source, .. } if source.kind() == kind),
            "{command}: {err:?}"
        );
        assert!(
            settled(&pool, 1, &[before]).await,
            "{command}: not replaced"
        );
        let echo = pool
            .execute("echo", json!({"token": command}))
            .await
            .unwrap();
        assert_eq!(echo["token"], command);
    }
    let s = pool.stats();
    assert_eq!(
        (s.requests, s.completed, s.errors, s.crashes, s.restarts),
        (6, 3, 3, 0, 3),
        "{s:?}"
    );
    pool.shutdown().await.unwrap();
}
