//! What breaks other pools (docs: FAILURES.md), done for real: bad input from
//! misbehaving workers, crashes mid-call, start-up failures, the timeout race.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use snakepit_core::{CallOptions, Error, ExitReason};

/// Each bad input is a typed protocol error; only that worker is replaced,
/// and the pool serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_from_a_worker_is_a_typed_protocol_error() {
    for (mode, kind) in [
        ("garbage", "invalid_payload"),
        ("stray_stdout", "too_large"),
        ("oversize", "too_large"),
        ("unknown_id", "wrong_type"),
        ("missing_success", "missing_field"),
    ] {
        let pool = builder(Raw(mode)).size(1).start().await.unwrap();
        let before = pool.worker_pids()[0];
        let err = pool.execute("anything", json!({})).await.unwrap_err();
        match &err {
            Error::Protocol { source, .. } => assert_eq!(source.kind(), kind, "{mode}: {err}"),
            other => panic!("{mode}: expected a protocol error, got {other}"),
        }
        // A line printed to stdout is read as a length: the error quotes
        // it ("hell"), so the cause shows; a real length does not read as
        // text.
        assert_eq!(
            err.to_string()
                .contains("its length prefix reads as the text \"hell\""),
            mode == "stray_stdout",
            "{mode}: {err}"
        );
        assert!(
            eventually(5, || !alive(before)).await,
            "{mode}: the offending worker is gone"
        );
        assert!(
            eventually(10, || pool.stats().workers == 1).await,
            "{mode}: replaced"
        );
        assert_ne!(pool.worker_pids()[0], before);
        pool.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_result_is_a_protocol_error_for_that_call() {
    let pool = builder(Raw("bad_utf8")).size(1).start().await.unwrap();
    let err = pool.execute("anything", json!({})).await.unwrap_err();
    assert!(
        matches!(&err, Error::Protocol { source, .. } if source.kind() == "invalid_utf8"),
        "{err}"
    );
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_frame_or_closed_stdout_is_a_crash_with_the_exit() {
    let pool = builder(Raw("truncated")).size(1).start().await.unwrap();
    let err = pool.execute("x", json!({})).await.unwrap_err();
    assert!(
        matches!(&err, Error::WorkerCrashed(_) | Error::Protocol { .. }),
        "{err}"
    );
    pool.shutdown().await.unwrap();

    let pool = builder(Raw("close_stdout")).size(1).start().await.unwrap();
    let pid = pool.worker_pids()[0];
    let err = pool.execute("x", json!({})).await.unwrap_err();
    let Error::WorkerCrashed(crash) = &err else {
        panic!("{err}")
    };
    assert_eq!(crash.pid, pid);
    assert!(
        eventually(5, || !alive(pid)).await,
        "a worker that closed stdout is killed"
    );
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_string_errors_are_remote_errors() {
    let pool = builder(Raw("string_error")).size(1).start().await.unwrap();
    let err = pool.execute("frobnicate", json!({})).await.unwrap_err();
    let remote = err.remote().unwrap();
    assert_eq!(
        (remote.kind.as_deref(), remote.message.as_str()),
        (None, "Unknown command: frobnicate")
    );
    pool.shutdown().await.unwrap();
}

/// os._exit(3) and a segfault in a handler: only that call fails, with the
/// exit status or signal and the stderr tail; capacity comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dying_mid_call_fails_only_its_call() {
    let pool = builder(TestWorker::new()).size(2).start().await.unwrap();
    let err = pool.execute("exit", json!({"code": 3})).await.unwrap_err();
    let Error::WorkerCrashed(crash) = &err else {
        panic!("{err}")
    };
    assert_eq!(crash.exit, ExitReason::Code(3));
    assert!(
        crash.stderr_tail.contains("exiting with 3 on purpose"),
        "{}",
        crash.stderr_tail
    );
    let err = pool.execute("segfault", json!({})).await.unwrap_err();
    let Error::WorkerCrashed(crash) = &err else {
        panic!("{err}")
    };
    assert_eq!(crash.exit, ExitReason::Signal(libc_sigsegv()));
    assert!(
        eventually(10, || pool.stats().workers == 2).await,
        "capacity returns"
    );
    let s = pool.stats();
    assert_eq!((s.crashes, s.restarts), (2, 2));
    assert!(pool.execute("echo", json!({})).await.is_ok());
    pool.shutdown().await.unwrap();
}

fn libc_sigsegv() -> i32 {
    11
}

/// kill -9 a worker while calls run on both: the killed worker's call fails
/// with the crash error, queued calls go to the other worker, none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_fails_only_the_calls_on_that_worker() {
    let pool = builder(TestWorker::new()).size(2).start().await.unwrap();
    let victim = pool.worker_pids()[0];
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute("sleep", json!({"ms": 20, "token": i})).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    kill_9(victim);
    let mut crashed = 0;
    for (i, c) in calls.into_iter().enumerate() {
        match c.await.unwrap() {
            Ok(r) => assert_eq!(r["token"], i, "each caller gets its own reply"),
            Err(Error::WorkerCrashed(crash)) => {
                assert_eq!(crash.pid, victim);
                assert_eq!(crash.exit, ExitReason::Signal(9));
                crashed += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(
        crashed <= 1,
        "only the call in flight on the killed worker fails ({crashed})"
    );
    assert!(
        eventually(10, || pool.stats().workers == 2
            && !pool.worker_pids().contains(&victim))
        .await
    );
    pool.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_failures_name_their_cause() {
    let err = builder(Raw("bad_import"))
        .size(1)
        .start()
        .await
        .unwrap_err();
    let Error::StartFailed(e) = &err else {
        panic!("{err}")
    };
    assert!(e.stderr_tail.contains("ModuleNotFoundError"), "{err}");

    let err = builder(Raw("exit_at_once"))
        .size(1)
        .start()
        .await
        .unwrap_err();
    let Error::StartFailed(e) = &err else {
        panic!("{err}")
    };
    assert!(e.cause.contains("exit status 2"), "{err}");
    assert!(e.stderr_tail.contains("missing model file"), "{err}");

    let err = builder(Raw("slow_init"))
        .size(1)
        .configure(|c| c.worker_init_timeout = Duration::from_millis(300))
        .start()
        .await
        .unwrap_err();
    let Error::StartFailed(e) = &err else {
        panic!("{err}")
    };
    assert!(e.cause.contains("no answer to the init handshake"), "{err}");

    struct Missing;
    impl snakepit_core::Adapter for Missing {
        fn launch(&self) -> snakepit_core::Launch {
            snakepit_core::Launch::new("/nonexistent/python9")
        }
    }
    let err = builder(Missing).size(1).start().await.unwrap_err();
    // The README's troubleshooting entry quotes this text.
    assert!(
        err.to_string().contains(
            "failed to start: cannot run `/nonexistent/python9`: not found (is it installed and on PATH?)"
        ),
        "{err}"
    );

    let err = builder(Missing).size(0).start().await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

/// Thousands of calls with random short deadlines against handlers that
/// sleep random times: every reply carries its own caller's token, no
/// capacity leaks, every counter matches what callers saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_race_never_crosses_replies() {
    let n: usize = std::env::var("SNAKEPIT_RACE_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    let pool = builder(TestWorker::new())
        .size(3)
        .configure(|c| {
            c.queue_timeout = Duration::from_secs(30);
            c.shutdown_grace_period = Duration::from_millis(300);
        })
        .start()
        .await
        .unwrap();
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let pool = pool.clone();
            let sleep_ms = next() % 12;
            let timeout_ms = 2 + next() % 40;
            tokio::spawn(async move {
                let r = pool
                    .execute_with(
                        "sleep",
                        json!({"ms": sleep_ms, "token": i}),
                        CallOptions::new().timeout(Duration::from_millis(timeout_ms)),
                    )
                    .await;
                (i, r)
            })
        })
        .collect();
    let (mut ok, mut timeouts, mut other) = (0u64, 0u64, 0u64);
    for c in calls {
        let (i, r) = c.await.unwrap();
        match r {
            Ok(v) => {
                assert_eq!(v["token"], i, "a caller got another call's reply");
                ok += 1;
            }
            Err(Error::CallTimeout { .. }) => timeouts += 1,
            Err(Error::Cancelled) | Err(Error::WorkerCrashed(_)) => other += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(
        ok > 0 && timeouts > 0,
        "the mix exercised both paths ({ok} ok, {timeouts} timeouts)"
    );
    assert!(
        eventually(10, || {
            let s = pool.stats();
            s.in_flight == 0 && s.workers == 3 && s.available == 3
        })
        .await,
        "{:?}",
        pool.stats()
    );
    let s = pool.stats();
    assert_eq!(s.requests, n as u64);
    assert_eq!(s.completed, ok);
    assert_eq!(s.errors, timeouts + other);
    assert_eq!(s.call_timeouts, timeouts);
    pool.shutdown().await.unwrap();
}

/// Workers that keep sending bad frames (broken JSON, replies to nobody, a
/// 2 GiB length) are replaced again and again; the host's memory does not
/// grow with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_does_not_grow_host_memory() {
    let mut before = 0;
    for round in 0..3 {
        for mode in ["garbage", "unknown_id", "oversize"] {
            let pool = builder(Raw(mode)).size(1).start().await.unwrap();
            for _ in 0..2 {
                let err = pool.execute("anything", json!({})).await.unwrap_err();
                assert!(matches!(err, Error::Protocol { .. }), "{mode}: {err}");
                assert!(eventually(10, || pool.stats().workers == 1).await);
            }
            pool.shutdown().await.unwrap();
        }
        if round == 0 {
            before = host_rss_kib(); // after the first round's allocations settle
        }
    }
    let after = host_rss_kib();
    assert!(
        after < before + 8 * 1024,
        "host RSS grew from {before} to {after} KiB"
    );
}
