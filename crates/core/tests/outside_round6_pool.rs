//! Round 6 of an outside review of the pool's call path and supervision:
//! promises of the rustdoc of `Pool`, `PoolBuilder`, `SessionEnds`,
//! `Adapter` and `Stats`, and of docs/reliability.md, that no earlier test
//! showed, each against real worker processes.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_core::Stream;
use serde_json::json;
use snakepit_core::{Adapter, CallOptions, Error, Launch, SessionEnds, SessionHook, WireCodec};

/// A session store that accepts every session and keeps the handles it is
/// given to report sessions that ended.
#[derive(Clone, Default)]
struct KeepEnds(Arc<Mutex<Vec<SessionEnds>>>);

impl SessionHook for KeepEnds {
    fn touch(&self, _: &str) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        Box::pin(async { Ok(()) })
    }

    fn attached(&self, ends: SessionEnds) {
        self.0.lock().unwrap().push(ends);
    }
}

impl KeepEnds {
    fn handle(&self) -> SessionEnds {
        self.0.lock().unwrap()[0].clone()
    }
}

/// `SessionEnds::end`: "`false` once the pool is gone". A store keeps its
/// listener of a pool while `end` answers `true` (`snakepit_session`
/// drops it at the first `false`), so a pool that has ended must answer
/// `false` even while something of it is still held: after `shutdown()`
/// with its handles still alive, and after its last handle is dropped
/// while one of its streams is still held by the caller. Before round 6
/// both answered `true` for as long as the handle or the stream lived: a
/// store that outlives many pools kept a listener of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_ends_answers_false_once_the_pool_has_ended_whatever_is_still_held() {
    // Shut down, its handle kept.
    let store = KeepEnds::default();
    let pool = builder(TestWorker::new())
        .size(1)
        .session_hook(store.clone())
        .start()
        .await
        .unwrap();
    let ends = store.handle();
    pool.execute_in_session("s", "echo", json!({}))
        .await
        .unwrap();
    assert!(ends.end("s"), "a live pool forgets the session");
    pool.shutdown().await.unwrap();
    assert!(!ends.end("s"), "end() is false once the pool is shut down");

    // The last handle dropped, a stream of it still held.
    let store = KeepEnds::default();
    let pool = builder(TestWorker::new())
        .size(1)
        .session_hook(store.clone())
        .start()
        .await
        .unwrap();
    let ends = store.handle();
    let stream = pool
        .execute_stream("stream", json!({"n": 1}), CallOptions::new())
        .await
        .unwrap();
    assert!(ends.end("s"));
    drop(pool);
    assert!(
        !ends.end("s"),
        "end() is false once the last handle is gone, a stream of the pool still held"
    );
    drop(stream);
}

/// An adapter whose hook `which` panics; the others are a working Python
/// worker's.
struct PanicsIn(&'static str);

impl Adapter for PanicsIn {
    fn launch(&self) -> Launch {
        if self.0 == "launch" {
            panic!("launch panicked on purpose");
        }
        TestWorker::new().launch()
    }
    fn codec(&self) -> WireCodec {
        if self.0 == "codec" {
            panic!("codec panicked on purpose");
        }
        WireCodec::Json
    }
    fn supported_commands(&self) -> Option<Vec<String>> {
        if self.0 == "supported_commands" {
            panic!("supported_commands panicked on purpose");
        }
        None
    }
}

/// A session hook whose `attached` panics.
struct AttachedPanics;

impl SessionHook for AttachedPanics {
    fn touch(&self, _: &str) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> {
        Box::pin(async { Ok(()) })
    }

    fn attached(&self, _: SessionEnds) {
        panic!("attached panicked on purpose");
    }
}

/// docs/reliability.md: "the application's code that runs on the
/// caller's task cannot take the caller down", and `PoolBuilder::start`
/// returns "with the first start-up error". The adapter's hooks that
/// `start()` calls once (`launch`, `codec`, `supported_commands`) and a
/// session hook's `attached` are the application's code on the caller's
/// task too: one that panics fails the start with `Error::StartFailed`
/// naming the hook and the panic, and leaves no worker behind, rather than
/// unwind through the caller's task (before round 6, each of them did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_hooks_that_panic_at_start_fail_the_start_with_a_typed_error() {
    for hook in ["launch", "codec", "supported_commands"] {
        let started = tokio::spawn(builder(PanicsIn(hook)).size(1).start()).await;
        let result = started.unwrap_or_else(|_| panic!("start() panicked when {hook} did"));
        match result {
            Err(Error::StartFailed(e)) => {
                assert!(
                    e.cause.contains(hook) && e.cause.contains("panicked on purpose"),
                    "{hook}: {}",
                    e.cause
                );
            }
            other => panic!("{hook}: expected StartFailed, got {other:?}"),
        }
    }
    // The workers' start is under way when `attached` runs: none of them
    // outlives the failed start.
    let mark = format!("ROUND6_ATTACHED={}", std::process::id());
    let started = tokio::spawn(
        builder(TestWorker::new())
            .size(2)
            .worker_env("ROUND6_ATTACHED", std::process::id().to_string())
            .session_hook(AttachedPanics)
            .start(),
    )
    .await;
    let result = started.unwrap_or_else(|_| panic!("start() panicked when attached did"));
    match result {
        Err(Error::StartFailed(e)) => assert!(
            e.cause.contains("attached") && e.cause.contains("panicked on purpose"),
            "{}",
            e.cause
        ),
        other => panic!("attached: expected StartFailed, got {other:?}"),
    }
    assert!(
        eventually(30, || processes_with_env(&mark).is_empty()).await,
        "no worker of the failed start is left: {:?}",
        processes_with_env(&mark)
    );
}

/// Processes whose environment holds `needle` (`KEY=value`), this test
/// process aside.
fn processes_with_env(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
        })
        .filter(|&pid| alive(pid))
        .collect()
}

/// What `CallEnded` said of one call: its outcome, slot and pid.
type Ended = (String, &'static str, Option<usize>, Option<u32>);

/// `EventKind::CallEnded::worker`: "The slot of the worker that ran it
/// (0-based), if it reached one." A call written ahead to a worker that
/// died before reading it never reached it (docs/reliability.md: it
/// "provably never reached its worker" and goes to another one); when no
/// other worker comes within the queue timeout it ends with
/// `QueueTimeout`, a call that never ran, and its event must name no
/// worker. Before round 6 it named the dead worker's slot and pid, as if
/// the call had run there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_never_reached_the_dead_worker_it_was_written_to_names_no_worker() {
    never_reached(false).await;
}

/// The same for a stream written ahead (a stream goes to another worker
/// too when its frame was never read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_reached_the_dead_worker_it_was_written_to_names_no_worker() {
    never_reached(true).await;
}

/// One call (`stream`: a stream) written ahead behind a long call, its
/// worker SIGKILLed, and no replacement within the queue timeout.
async fn never_reached(stream: bool) {
    let ended: Arc<Mutex<Vec<Ended>>> = Arc::default();
    let log = ended.clone();
    let pool = builder(TestWorker::new())
        .size(1)
        .configure(|c| {
            c.pipeline_max_call = Duration::from_millis(50);
            // The replacement (a Python start) never comes this fast: the
            // call sent again times out in the queue.
            c.queue_timeout = Duration::from_millis(1);
        })
        .on_event(move |e| {
            if let snakepit_core::events::EventKind::CallEnded {
                command,
                outcome,
                worker,
                pid,
                ..
            } = e.kind
            {
                log.lock()
                    .unwrap()
                    .push((command.to_owned(), outcome, worker, pid));
            }
        })
        .start()
        .await
        .unwrap();
    // Short calls, so that the worker's recent calls allow writing ahead
    // (a call that found the worker between two calls may time out in the
    // queue of 1 ms; it does not matter).
    let mut short = 0;
    while short < 20 {
        if pool.execute("echo", json!({})).await.is_ok() {
            short += 1;
        }
    }
    let victim = pool.worker_pids()[0];
    let marker = temp_dir("round6-never-reached").join("marker");
    let running = {
        let pool = pool.clone();
        let marker = marker.display().to_string();
        tokio::spawn(async move {
            pool.execute("sleep", json!({"ms": 60_000, "marker": marker}))
                .await
        })
    };
    assert!(eventually(30, || marker.exists()).await, "the call started");
    let waiting = {
        let pool = pool.clone();
        tokio::spawn(async move {
            if !stream {
                return pool.execute("pid", json!({})).await;
            }
            let mut s = pool
                .execute_stream("pid", json!({}), CallOptions::new())
                .await?;
            let item = std::future::poll_fn(|cx| Pin::new(&mut s).poll_next(cx)).await;
            match item {
                Some(Err(e)) => Err(e),
                other => panic!("expected the stream to fail, got {other:?}"),
            }
        })
    };
    assert!(
        eventually(30, || pool.workers().first().map_or(0, |w| w.in_flight)
            == 2)
        .await,
        "the second call was written ahead behind the first"
    );
    kill_9(victim);
    assert!(running.await.unwrap().unwrap_err().is_crash());
    let e = waiting.await.unwrap().unwrap_err();
    assert!(
        matches!(e, Error::QueueTimeout(_)) && e.never_ran(),
        "sent again, it found no worker within the queue timeout: {e:?}"
    );
    let events = ended.lock().unwrap().clone();
    let pid_call: Vec<_> = events.iter().filter(|e| e.0 == "pid").collect();
    assert_eq!(pid_call.len(), 1, "{events:?}");
    assert_eq!(
        (pid_call[0].1, pid_call[0].2, pid_call[0].3),
        ("queue_timeout", None, None),
        "the call that never reached a worker names none"
    );
    let sleep_call: Vec<_> = events.iter().filter(|e| e.0 == "sleep").collect();
    assert_eq!(
        (sleep_call[0].1, sleep_call[0].3),
        ("worker_crashed", Some(victim)),
        "the call that ran names its worker"
    );
    pool.shutdown().await.unwrap();
}

/// `Stats::start_failures` and `Stats::restarts`, with README's
/// `breaker_threshold`: "a worker that dies within a second of starting
/// counts as [a failed start]". It counts so for the back-off and the
/// breaker (the breaker opens, and callers fail fast with `StartFailed`),
/// but its start succeeded: it is in `restarts` (the starts that replaced
/// it), and `start_failures` counts only starts that failed (a process
/// that could not be spawned or did not pass its handshake), as the doc of
/// each field now says. Once the cause is gone, `retry_starts` closes the
/// breaker and calls run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_dying_right_after_starting_open_the_breaker_as_restarts_not_start_failures() {
    let flag = temp_dir("round6-die-soon").join("die");
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = opened.clone();
    let mut worker = TestWorker::new();
    worker
        .env
        .push(("TEST_DIE_SOON_IF_EXISTS".into(), flag.display().to_string()));
    let pool = builder(worker)
        .size(1)
        .configure(|c| {
            c.breaker_threshold = 2;
            c.restart_backoff = Duration::from_millis(10);
            c.restart_backoff_max = Duration::from_millis(20);
            c.breaker_cooldown = Duration::from_secs(600);
        })
        .on_event(move |e| {
            if let snakepit_core::events::EventKind::BreakerOpened { .. } = e.kind {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .start()
        .await
        .unwrap();
    std::fs::write(&flag, b"").unwrap();
    // The next worker starts, then dies 200 ms later: kill the one that
    // started before the flag.
    kill_9(pool.worker_pids()[0]);
    assert!(
        eventually(60, || opened.load(std::sync::atomic::Ordering::SeqCst) >= 1).await,
        "the breaker opened"
    );
    assert!(
        eventually(30, || pool.stats().workers == 0).await,
        "no worker is left"
    );
    match pool.execute("echo", json!({})).await {
        Err(Error::StartFailed(e)) => {
            assert!(e.cause.contains("ms after it started serving"), "{e}")
        }
        other => panic!("expected StartFailed at once, got {other:?}"),
    }
    let s = pool.stats();
    assert_eq!(s.start_failures, 0, "every start succeeded: {s:?}");
    // The first worker, killed within its first second, counts as one
    // early death; its replacement, which died on its own, as the second.
    assert!(
        s.restarts >= 1,
        "the replacement that died early was a restart: {s:?}"
    );
    std::fs::remove_file(&flag).unwrap();
    pool.retry_starts();
    assert!(
        eventually(60, || pool.stats().workers == 1).await,
        "the breaker closed"
    );
    pool.execute("echo", json!({})).await.unwrap();
    pool.shutdown().await.unwrap();
}

/// `Pool::downgrade`: "when the last `Pool` handle goes, the pool ends
/// (its workers are killed) whatever `WeakPool`s remain". A stream written
/// ahead to a worker that died before reading it is sent again
/// (docs/reliability.md); while it waits for a worker, the stream must not
/// hold the pool alive in its caller's place. Here no worker can start, so
/// the stream's second send waits in the queue; the caller then drops its
/// last handle, keeping the stream. Before round 6 the stream held a
/// handle of its own for as long as it waited: the pool did not end, and
/// a stream never polled again kept it for ever. Now the pool ends at
/// once, and the stream ends with `ShutDown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_sent_again_does_not_keep_its_pool_alive() {
    let refuse = temp_dir("round6-resend").join("refuse");
    let mut worker = TestWorker::new();
    worker
        .env
        .push(("TEST_FAIL_IF_EXISTS".into(), refuse.display().to_string()));
    let pool = builder(worker)
        .size(1)
        .configure(|c| {
            c.pipeline_max_call = Duration::from_millis(50);
            c.queue_timeout = Duration::from_secs(120);
            c.breaker_threshold = 1_000;
            c.restart_backoff = Duration::from_millis(50);
            c.restart_backoff_max = Duration::from_millis(200);
        })
        .start()
        .await
        .unwrap();
    for _ in 0..20 {
        pool.execute("echo", json!({})).await.unwrap();
    }
    let victim = pool.worker_pids()[0];
    let marker = temp_dir("round6-resend-running").join("marker");
    let running = {
        let pool = pool.clone();
        let marker = marker.display().to_string();
        tokio::spawn(async move {
            pool.execute("sleep", json!({"ms": 60_000, "marker": marker}))
                .await
        })
    };
    assert!(eventually(30, || marker.exists()).await, "the call started");
    let mut stream = pool
        .execute_stream(
            "stream",
            json!({"n": 1}),
            CallOptions::new().timeout(Duration::from_secs(120)),
        )
        .await
        .unwrap();
    assert_eq!(
        pool.workers().first().map_or(0, |w| w.in_flight),
        2,
        "the stream was written ahead behind the running call"
    );
    std::fs::write(&refuse, b"").unwrap();
    kill_9(victim);
    assert!(running.await.unwrap().unwrap_err().is_crash());
    // The stream learns that its frame was never read, and is sent again:
    // it waits in the queue, as no worker can start.
    let first = tokio::time::timeout(
        Duration::from_millis(500),
        std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)),
    )
    .await;
    assert!(first.is_err(), "the stream waits for a worker: {first:?}");
    assert!(
        eventually(30, || pool.stats().queued == 1).await,
        "the stream's second send waits in the queue"
    );
    let weak = pool.downgrade();
    drop(pool);
    assert!(
        eventually(30, || weak.upgrade().is_none()).await,
        "the pool ended with its last handle, the stream kept"
    );
    let item = tokio::time::timeout(
        Duration::from_secs(30),
        std::future::poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)),
    )
    .await
    .expect("the stream ends with its pool");
    assert!(
        matches!(item, Some(Err(Error::ShutDown))),
        "the stream's call never ran: {item:?}"
    );
}

/// `Pool::retry_starts`: "For when the cause of the failures is gone ...
/// and the cool-down should not be waited out"; `Pool::start_failure`:
/// `None` "while workers are still starting". Once the cause is fixed and
/// a retry asked, the breaker is half-open and a worker is starting: a
/// call made right then waits for it (within the queue timeout) and runs,
/// and `start_failure()` is `None`. Before round 6 both still saw the
/// breaker open until the worker was ready: the call failed at once with
/// the old `StartFailed`, although its cause was gone and a worker was on
/// its way. While the cause remains, the retried start fails again and the
/// calls waiting for it fail with `StartFailed` (not a queue timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_made_right_after_retry_starts_waits_for_the_worker_being_started() {
    let refuse = temp_dir("round6-half-open").join("refuse");
    let mut worker = TestWorker::new();
    worker
        .env
        .push(("TEST_FAIL_IF_EXISTS".into(), refuse.display().to_string()));
    let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = opened.clone();
    let counts: Arc<Mutex<Vec<u32>>> = Arc::default();
    let counted = counts.clone();
    let pool = builder(worker)
        .size(1)
        .configure(|c| {
            c.breaker_threshold = 2;
            c.restart_backoff = Duration::from_millis(10);
            c.restart_backoff_max = Duration::from_millis(20);
            c.breaker_cooldown = Duration::from_secs(600);
            c.queue_timeout = Duration::from_secs(120);
        })
        .on_event(move |e| {
            if let snakepit_core::events::EventKind::BreakerOpened { failures, .. } = e.kind {
                counted.lock().unwrap().push(failures);
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .start()
        .await
        .unwrap();
    std::fs::write(&refuse, b"").unwrap();
    kill_9(pool.worker_pids()[0]);
    let opens = |n| {
        let opened = opened.clone();
        move || opened.load(std::sync::atomic::Ordering::SeqCst) >= n
    };
    assert!(eventually(60, opens(1)).await, "the breaker opened");
    assert!(pool.start_failure().is_some());
    assert!(matches!(
        pool.execute("echo", json!({})).await,
        Err(Error::StartFailed(_))
    ));

    // Retried with the cause still there: the call made meanwhile waits
    // for that start, and fails with its error.
    pool.retry_starts();
    let r = pool.execute("echo", json!({})).await;
    assert!(matches!(r, Err(Error::StartFailed(_))), "{r:?}");
    assert!(eventually(60, opens(2)).await, "the breaker opened again");
    // `BreakerOpened::failures`: the threshold, each time it opens.
    assert_eq!(*counts.lock().unwrap(), vec![2, 2]);

    // The cause gone: the call made right after the retry runs.
    std::fs::remove_file(&refuse).unwrap();
    pool.retry_starts();
    assert!(
        pool.start_failure().is_none(),
        "a worker is starting: no start failure to report"
    );
    let r = pool.execute("echo", json!({})).await;
    assert!(
        r.is_ok(),
        "the call waited for the worker being started: {r:?}"
    );
    pool.shutdown().await.unwrap();
}

/// `Pool::retry_starts`: "Slots with a worker are left alone." Asked
/// again and again of a pool whose workers all serve, it starts no
/// worker, stops none, and the workers serve on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_starts_leaves_serving_workers_alone() {
    let ready = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = ready.clone();
    let pool = builder(TestWorker::new())
        .size(2)
        .on_event(move |e| {
            if let snakepit_core::events::EventKind::WorkerReady { .. } = e.kind {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .start()
        .await
        .unwrap();
    let mut pids = pool.worker_pids();
    pids.sort_unstable();
    for _ in 0..20 {
        pool.retry_starts();
        pool.execute("echo", json!({})).await.unwrap();
    }
    // Any start it asked would have begun well within this.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut now = pool.worker_pids();
    now.sort_unstable();
    assert_eq!(now, pids, "the same workers serve");
    assert_eq!(ready.load(std::sync::atomic::Ordering::SeqCst), 2);
    let s = pool.stats();
    assert_eq!(
        (s.restarts, s.recycled, s.start_failures),
        (0, 0, 0),
        "{s:?}"
    );
    pool.shutdown().await.unwrap();
}
