//! telemetry.md, "Events": what an `on_event` listener sees, against real
//! Python workers.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use snakepit_core::events::EventKind;

/// One event as the listener kept it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Ready { worker: usize, pid: u32 },
    StartFailed { worker: usize, cause: String },
    Exited { worker: usize, pid: u32 },
    Restarting { worker: usize, attempt: u32 },
    Other,
}

/// telemetry.md, Events: `WorkerStartFailed` carries `worker` and `cause`;
/// `WorkerRestarting` carries `worker`, `attempt` and `delay`, `attempt`
/// being the consecutive failed starts (events.rs). A worker killed while
/// its script refuses to start (it exits with status 3 before its
/// handshake): each failed start is a `WorkerStartFailed` for its slot
/// whose cause says how the process ended, followed by a
/// `WorkerRestarting` whose `attempt` is one more than the one before;
/// once the script starts again, a worker is ready in that slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failed_start_is_reported_with_its_cause_then_restarted_with_a_growing_attempt() {
    let refuse = temp_dir("start-failed").join("refuse");
    let mut adapter = TestWorker::new();
    adapter
        .env
        .push(("TEST_FAIL_IF_EXISTS".into(), refuse.display().to_string()));
    let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let sink = log.clone();
    let pool = builder(adapter)
        .size(1)
        .configure(|c| {
            c.breaker_threshold = 1000;
            c.restart_backoff = Duration::from_millis(10);
            c.restart_backoff_max = Duration::from_millis(50);
        })
        .on_event(move |e| {
            let seen = match &e.kind {
                EventKind::WorkerReady { worker, pid, .. } => Seen::Ready {
                    worker: *worker,
                    pid: *pid,
                },
                EventKind::WorkerStartFailed { worker, cause } => Seen::StartFailed {
                    worker: *worker,
                    cause: (*cause).to_owned(),
                },
                EventKind::WorkerExited { worker, pid, .. } => Seen::Exited {
                    worker: *worker,
                    pid: *pid,
                },
                EventKind::WorkerRestarting {
                    worker, attempt, ..
                } => Seen::Restarting {
                    worker: *worker,
                    attempt: *attempt,
                },
                _ => Seen::Other,
            };
            sink.lock().unwrap().push(seen);
        })
        .start()
        .await
        .unwrap();
    let seen = || log.lock().unwrap().clone();
    let first = pool.worker_pids()[0];
    assert!(
        !seen().iter().any(|s| matches!(s, Seen::StartFailed { .. })),
        "{:?}",
        seen()
    );
    // From now on the script refuses to start.
    std::fs::write(&refuse, "").unwrap();
    kill_9(first);
    assert!(
        eventually(30, || seen()
            .iter()
            .filter(|s| matches!(s, Seen::StartFailed { .. }))
            .count()
            >= 3)
        .await,
        "{:?}",
        seen()
    );
    std::fs::remove_file(&refuse).unwrap();
    assert!(
        eventually(30, || pool
            .worker_pids()
            .first()
            .is_some_and(|&p| p != first))
        .await,
        "{:?}",
        seen()
    );
    let now = pool.worker_pids()[0];
    let log = seen();

    // From the kill on: the worker's exit and restart, then failed starts,
    // each followed by its restart, then the new worker.
    let from = log
        .iter()
        .position(|s| {
            *s == Seen::Exited {
                worker: 0,
                pid: first,
            }
        })
        .unwrap_or_else(|| panic!("no exit of {first}: {log:?}"));
    let Seen::Restarting { worker: 0, attempt } = log[from + 1] else {
        panic!("no restart right after the exit: {log:?}")
    };
    let mut last = attempt;
    let mut rest = &log[from + 2..];
    let mut failed = 0;
    while let [Seen::StartFailed { worker, cause }, next, tail @ ..] = rest {
        assert_eq!(*worker, 0, "{log:?}");
        assert!(
            cause.contains("exit status 3"),
            "the cause says how the worker ended: {cause:?}"
        );
        let Seen::Restarting { worker: 0, attempt } = *next else {
            panic!("no restart right after a failed start: {log:?}")
        };
        assert_eq!(attempt, last + 1, "{log:?}");
        last = attempt;
        failed += 1;
        rest = tail;
    }
    assert!(failed >= 3, "{log:?}");
    assert_eq!(
        rest.first(),
        Some(&Seen::Ready {
            worker: 0,
            pid: now
        }),
        "{log:?}"
    );
    pool.shutdown().await.unwrap();
}
