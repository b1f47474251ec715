//! Cancel-safety of the public pool API under storms, tested from outside
//! against real Python workers (`tests/workers/outside_cancel_storm_worker.py`,
//! which appends `<token> <pid>` to the file `STORM_LOG` names as each
//! handler starts: what that file holds is what ran).
//!
//! Call, typed-call, session-call and stream futures are dropped at random
//! await points (`tokio::time::timeout` with tiny random durations,
//! `select!` against a random sleep, `JoinHandle::abort` of the caller's
//! task, deadlines), on a current-thread and on a multi-thread runtime, with
//! pipelining on and off, with workers SIGKILLed in some tests. After
//! quiescence each test checks exact invariants: nothing in flight or queued,
//! every unit of capacity free again (a burst of `capacity` calls that can
//! only all end if they all run at once), the documented counters adding up,
//! no caller ever given another call's result, calls given up before they
//! started never run, and no process of the run left after the end.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use snakepit_core::{
    Adapter, Affinity, CallOptions, CallStream, Error, Launch, Pool, PoolBuilder, StreamItem,
};

/// The storm worker, logging what it runs to `log`.
struct Storm {
    log: PathBuf,
    async_mode: bool,
}

impl Adapter for Storm {
    fn launch(&self) -> Launch {
        let mut l = Launch::new(python())
            .arg(root().join("crates/core/tests/workers/outside_cancel_storm_worker.py"))
            .env("PYTHONPATH", root().join("bridges/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("STORM_LOG", &self.log);
        if self.async_mode {
            l = l.arg("--async");
        }
        l
    }
}

/// A pool builder of storm workers, and the log of what they ran.
fn storm(tag: &str, async_mode: bool) -> (PoolBuilder, RunLog) {
    let log = temp_dir(tag).join("ran.log");
    let builder = builder(Storm {
        log: log.clone(),
        async_mode,
    })
    .configure(|c| {
        // What "short" means for pipelining is not under test: calls of a
        // few ms count as short even on a loaded machine.
        c.pipeline_max_call = Duration::from_millis(50);
        c.queue_timeout = Duration::from_secs(30);
        // Workers killed by a test come back, however soon after their
        // start: no breaker opens.
        c.breaker_threshold = 1000;
    });
    (builder, RunLog(log))
}

/// What the workers ran: token -> the pids that started it.
struct RunLog(PathBuf);

impl RunLog {
    fn runs(&self) -> HashMap<String, Vec<u32>> {
        let mut runs: HashMap<String, Vec<u32>> = HashMap::new();
        let text = std::fs::read_to_string(&self.0).unwrap_or_default();
        for line in text.lines() {
            let (token, pid) = line.split_once(' ').expect("`token pid` lines");
            runs.entry(token.to_owned())
                .or_default()
                .push(pid.parse().unwrap());
        }
        runs
    }

    fn ran(&self, token: &str) -> usize {
        self.runs().get(token).map_or(0, Vec::len)
    }
}

/// A file whose existence lets every gated handler go on.
struct Gate(PathBuf);

impl Gate {
    fn new() -> Self {
        Gate(temp_dir("gate").join("open"))
    }
    fn path(&self) -> String {
        self.0.display().to_string()
    }
    fn open(&self) {
        std::fs::write(&self.0, "open").unwrap();
    }
}

/// Small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

async fn next(stream: &mut CallStream) -> Option<snakepit_core::Result<StreamItem>> {
    std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut *stream), cx))
        .await
}

fn long() -> CallOptions {
    CallOptions::new().timeout(Duration::from_secs(60))
}

/// Quiescence: nothing in flight or queued, every ready worker available,
/// `size` workers ready, and `requests = completed + errors + cancelled`.
async fn settled(pool: &Pool, size: usize) -> bool {
    eventually(60, || {
        let s = pool.stats();
        s.in_flight == 0
            && s.queued == 0
            && s.busy == 0
            && s.workers == size
            && s.available == size
            && s.requests == s.completed + s.errors + s.cancelled
    })
    .await
}

/// Every unit of capacity is free: a burst of `capacity` calls, each of
/// which waits (up to 20 s) until all of them have started, all report the
/// meeting. One unit leaked (a call given up that still holds it) leaves
/// one call of the burst waiting behind the others: it never meets them.
async fn every_unit_is_free(pool: &Pool, tag: &str) {
    let s = pool.stats();
    let n = s.capacity;
    assert!(n > 0, "{s:?}");
    let dir = temp_dir(&format!("barrier-{tag}"));
    let calls: Vec<_> = (0..n)
        .map(|k| {
            let pool = pool.clone();
            let dir = dir.display().to_string();
            let token = format!("barrier-{tag}-{k}");
            tokio::spawn(async move {
                pool.execute_with(
                    "barrier",
                    json!({"dir": dir, "n": n, "token": token}),
                    long(),
                )
                .await
            })
        })
        .collect();
    for (k, c) in calls.into_iter().enumerate() {
        let r = c.await.unwrap().unwrap();
        assert_eq!(
            r["met"],
            json!(true),
            "{tag}: call {k} of a burst of {n} (the capacity) did not run with the others: {r} {:?}",
            pool.stats()
        );
    }
}

/// `shutdown()` ends within seconds and leaves no process of the run.
async fn shut_down_leaving_nothing(pool: Pool) {
    let run_id = pool.run_id().to_owned();
    let pids = pool.worker_pids();
    assert!(
        !processes_of_run(&run_id).is_empty(),
        "the run's workers are found"
    );
    tokio::time::timeout(Duration::from_secs(30), pool.shutdown())
        .await
        .expect("shutdown ends")
        .unwrap();
    nothing_of_the_run_left(pids, &run_id).await;
}

/// Within seconds, none of `pids` lives, and no process of run `run_id`.
async fn nothing_of_the_run_left(pids: Vec<u32>, run_id: &str) {
    for pid in pids {
        assert!(
            eventually(10, || !alive(pid)).await,
            "worker {pid} outlived its pool"
        );
    }
    assert!(
        eventually(10, || processes_of_run(run_id).is_empty()).await,
        "processes of the run left: {:?}",
        processes_of_run(run_id)
    );
}

/// `n` short calls (`warm-<i>`), each its own result; with `in_sessions`,
/// in sessions `s0` and `s1` by turns.
async fn warm_up(pool: &Pool, n: usize, in_sessions: bool) {
    for i in 0..n {
        let options = if in_sessions {
            long().session(format!("s{}", i % 2))
        } else {
            long()
        };
        let token = format!("warm-{i}");
        let v = pool
            .execute_with("run", json!({"token": token}), options)
            .await
            .unwrap();
        assert_eq!(v["token"], json!(token));
    }
}

/// A `run` call with `args`, spawned.
fn spawn_run(pool: &Pool, args: Value) -> tokio::task::JoinHandle<snakepit_core::Result<Value>> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.execute_with("run", args, long()).await })
}

/// A `run` call of `token` behind `gate`, spawned, once its handler has
/// started.
async fn running_behind(
    pool: &Pool,
    log: &RunLog,
    gate: &Gate,
    token: &str,
) -> tokio::task::JoinHandle<snakepit_core::Result<Value>> {
    let call = spawn_run(pool, json!({"token": token, "gate": gate.path()}));
    assert!(eventually(20, || log.ran(token) == 1).await);
    call
}

/// `r` is the result of the call of `token` (`what` names that call).
fn assert_own_result(r: &snakepit_core::Result<Value>, token: &str, what: &str) {
    assert_eq!(
        r.as_ref().map(|v| v["token"].clone()).ok(),
        Some(json!(token)),
        "{what}: {r:?}"
    );
}

/// The pool of one worker settles with the call given up counted once as
/// cancelled, no crash, its worker `pid` kept; it then shuts down leaving
/// nothing.
async fn one_cancel_and_the_same_worker(pool: Pool, pid: u32) {
    assert!(settled(&pool, 1).await, "{:?}", pool.stats());
    let s = pool.stats();
    assert_eq!((s.crashes, s.restarts, s.cancelled), (0, 0, 1), "{s:?}");
    assert_eq!(pool.worker_pids(), vec![pid], "the worker was replaced");
    shut_down_leaving_nothing(pool).await;
}

/// One warmed-up worker (pipelining follows its short calls) holding the
/// call `front` behind a closed gate.
struct Held {
    pool: Pool,
    log: RunLog,
    pid: u32,
    gate: Gate,
    front: tokio::task::JoinHandle<snakepit_core::Result<Value>>,
}

async fn held_at_the_gate(tag: &str) -> Held {
    let (builder, log) = storm(tag, false);
    let pool = builder.size(1).start().await.unwrap();
    warm_up(&pool, 20, false).await;
    let pid = pool.worker_pids()[0];
    let gate = Gate::new();
    let front = running_behind(&pool, &log, &gate, "front").await;
    Held {
        pool,
        log,
        pid,
        gate,
        front,
    }
}

/// A storm's caller, spawned with the flag it sets as it begins to call;
/// with `abort_after`, its task is aborted from outside that long after.
fn spawn_caller<T, F>(
    caller: impl FnOnce(Arc<AtomicBool>) -> F,
    abort_after: Option<Duration>,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<T>)
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let began = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(caller(began.clone()));
    if let Some(after) = abort_after {
        let abort = task.abort_handle();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            abort.abort();
        });
    }
    (began, task)
}

/// A pool of two pipelining workers.
async fn pipelined_pair(builder: PoolBuilder) -> Pool {
    builder
        .size(2)
        .configure(|c| c.pipeline_depth = 16)
        .start()
        .await
        .unwrap()
}

/// `call`, dropped by a timeout of `tiny` before it could end (behind the
/// gate).
async fn dropped_behind_the_gate<T>(
    tiny: Duration,
    call: impl std::future::Future<Output = T>,
    token: &str,
) -> Seen {
    assert!(
        tokio::time::timeout(tiny, call).await.is_err(),
        "{token} ended behind the gate"
    );
    Seen::Dropped
}

/// How a caller of the gated storm gives up, or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    /// Waits for its result.
    Survives,
    /// A stream read to its end.
    StreamSurvives,
    /// `tokio::time::timeout` with a random tiny duration drops it.
    Timeout,
    /// `select!` against a random sleep drops it.
    Select,
    /// Its task is aborted after a random delay.
    Abort,
    /// A typed `Pool::call` dropped by a timeout.
    Typed,
    /// A session call with strict affinity, dropped by a timeout.
    StrictSession,
    /// `execute_stream` (or its first item) dropped by a timeout.
    StreamDropped,
    /// Its own deadline (`CallOptions::timeout`) passes: `CallTimeout`.
    Deadline,
}

const WAYS: [Way; 9] = [
    Way::Survives,
    Way::StreamSurvives,
    Way::Timeout,
    Way::Select,
    Way::Abort,
    Way::Typed,
    Way::StrictSession,
    Way::StreamDropped,
    Way::Deadline,
];

/// What a caller of the gated storm saw.
#[derive(Debug)]
enum Seen {
    /// Its own result (checked against its token).
    Ok,
    /// Its future was dropped before the end.
    Dropped,
    /// Its deadline passed.
    TimedOut,
}

/// One caller of the gated storm; `began` is set just before its call is
/// first polled (an aborted task that never got that far never called).
async fn gated_caller(
    pool: Pool,
    way: Way,
    token: String,
    wait_us: u64,
    began: Arc<AtomicBool>,
) -> Seen {
    let args = json!({"token": token});
    let tiny = Duration::from_micros(wait_us);
    began.store(true, Ordering::SeqCst);
    match way {
        Way::Survives | Way::Abort => {
            let v = pool.execute_with("run", args, long()).await.unwrap();
            assert_eq!(
                v["token"],
                json!(token),
                "a caller got another call's result"
            );
            Seen::Ok
        }
        Way::StreamSurvives => {
            let mut s = pool
                .execute_stream("chunks", json!({"token": token, "n": 3}), long())
                .await
                .unwrap();
            let mut chunks = 0;
            loop {
                match next(&mut s).await.expect("a stream ends with Done") {
                    Ok(StreamItem::Chunk(c)) => {
                        assert_eq!(c["token"], json!(token), "another call's chunk");
                        chunks += 1;
                    }
                    Ok(StreamItem::Done(v)) => {
                        assert_eq!(v["token"], json!(token), "another call's result");
                        break;
                    }
                    Ok(other) => panic!("{other:?}"),
                    Err(e) => panic!("stream {token}: {e:?}"),
                }
            }
            assert_eq!(chunks, 3);
            Seen::Ok
        }
        Way::Timeout => {
            dropped_behind_the_gate(tiny, pool.execute_with("run", args, long()), &token).await
        }
        Way::Select => {
            tokio::select! {
                biased;
                r = pool.execute_with("run", args, long()) => panic!("{token} ended behind the gate: {r:?}"),
                () = tokio::time::sleep(tiny) => Seen::Dropped,
            }
        }
        Way::Typed => {
            dropped_behind_the_gate(tiny, pool.call::<_, Value>("run", &args, long()), &token).await
        }
        Way::StrictSession => {
            let options = long()
                .session(format!("s{}", wait_us % 2))
                .affinity(Affinity::Strict);
            dropped_behind_the_gate(tiny, pool.execute_with("run", args, options), &token).await
        }
        Way::StreamDropped => {
            let call = async {
                let mut s = pool
                    .execute_stream("chunks", json!({"token": token, "n": 3}), long())
                    .await?;
                next(&mut s).await.expect("an item")
            };
            let r = tokio::time::timeout(tiny, call).await;
            assert!(r.is_err(), "{token} ended behind the gate: {r:?}");
            Seen::Dropped
        }
        Way::Deadline => {
            let options = CallOptions::new().timeout(tiny.max(Duration::from_millis(1)));
            let e = pool.execute_with("run", args, options).await.unwrap_err();
            assert!(matches!(e, Error::CallTimeout { .. }), "{token}: {e:?}");
            Seen::TimedOut
        }
    }
}

/// docs/reliability.md, pipelined dispatch (the promises table): "a call
/// written ahead whose caller gives up (deadline, dropped future) before it
/// starts never runs: ... the worker answers it `Cancelled` without running
/// it; the call in front is not disturbed", and "no caller ever receives
/// another call's reply"; ARCHITECTURE.md, core invariants: "A queued call
/// that times out or is dropped never runs", "Every call, streaming or not,
/// is counted once in `stats()`: `requests` = `completed` + `errors` +
/// `cancelled`", and "A capacity unit is taken by `acquire` ... and
/// returned exactly once"; `Stats::cancelled` (pool/stats.rs): "Calls whose
/// future was dropped before they ended".
///
/// Every unit of two workers holds a call behind a closed gate (one-at-a-
/// time workers with pipelining on or off, or workers that run four calls
/// at once); 48 callers come behind them, queued or written ahead, and most
/// give up, each its own way (see `Way`), at a random moment. Nothing given up ever runs, every
/// survivor gets its own result once the gate opens, the counters are
/// exact, every unit comes back, no worker is replaced.
async fn gated_storm(async_mode: bool, pipelined: bool, seed: u64) {
    let tag = format!("gated-{async_mode}-{pipelined}-{seed}");
    let (builder, log) = storm(&tag, async_mode);
    let pool = builder
        .size(2)
        .configure(|c| {
            c.pipeline_depth = if pipelined { 16 } else { 0 };
            // A cancelled call written ahead has its grace period after its
            // turn comes; keep this test away from that window (see
            // `a_cancelled_call_written_ahead_gets_the_grace_period_once_its_turn_comes`).
            c.shutdown_grace_period = Duration::from_secs(3);
        })
        .start()
        .await
        .unwrap();
    // Short calls (pipelining follows them), and a session on each worker
    // for the strict session callers.
    warm_up(&pool, 20, true).await;
    let gate = Gate::new();
    let capacity = pool.stats().capacity;
    let fronts: Vec<_> = (0..capacity)
        .map(|k| {
            spawn_run(
                &pool,
                json!({"token": format!("front-{k}"), "gate": gate.path()}),
            )
        })
        .collect();
    assert!(
        eventually(20, || (0..capacity)
            .all(|k| log.ran(&format!("front-{k}")) == 1))
        .await,
        "every unit of both workers holds a call behind the gate"
    );
    let mut rng = Rng(seed);
    let mut callers = Vec::new();
    for i in 0..48u64 {
        let way = WAYS[rng.below(WAYS.len() as u64) as usize];
        let wait_us = rng.below(40_000);
        let token = format!("c{i}");
        let (began, task) = spawn_caller(
            |began| gated_caller(pool.clone(), way, token.clone(), wait_us, began),
            (way == Way::Abort).then(|| Duration::from_micros(wait_us)),
        );
        callers.push((token, way, began, task));
        if rng.below(4) == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Everyone who gives up has given up (the gate is still closed).
    let mut survivors = Vec::new();
    let (mut dropped, mut timed_out, mut began_n) = (Vec::new(), Vec::new(), 0u64);
    for (token, way, began, task) in callers {
        if matches!(way, Way::Survives | Way::StreamSurvives) {
            survivors.push((token, task));
            began_n += 1;
            continue;
        }
        let r = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("a caller that gives up ends");
        if began.load(Ordering::SeqCst) {
            began_n += 1;
        }
        match r {
            Ok(Seen::Dropped) => dropped.push(token),
            Ok(Seen::TimedOut) => timed_out.push(token),
            Ok(Seen::Ok) => panic!("{token} ({way:?}) ended behind the gate"),
            // Aborted (before it called, if `began` is unset: then there
            // is nothing to count, and nothing may run either).
            Err(e) if e.is_cancelled() => {
                assert_eq!(way, Way::Abort);
                dropped.push(token);
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    let s = pool.stats();
    let requests_so_far = 20 + capacity as u64 + began_n;
    assert_eq!(s.requests, requests_so_far, "{s:?}");
    assert_eq!(s.errors, timed_out.len() as u64, "{s:?}");
    assert_eq!(s.call_timeouts, timed_out.len() as u64, "{s:?}");
    assert_eq!(
        s.cancelled,
        began_n - survivors.len() as u64 - timed_out.len() as u64,
        "every dropped call counts once as cancelled, at once: {s:?}"
    );
    if pipelined && !async_mode {
        // Calls written ahead (survivors, and the given-up ones whose
        // `Cancelled` reply waits behind the gate) hold units beyond the
        // two running calls.
        assert!(s.in_flight > 2, "calls were written ahead: {s:?}");
    } else {
        assert_eq!(
            (s.in_flight, s.queued),
            (capacity, survivors.len()),
            "only the survivors wait in the queue: {s:?}"
        );
    }
    gate.open();
    for (k, f) in fronts.into_iter().enumerate() {
        let v = f.await.unwrap().unwrap();
        assert_eq!(v["token"], json!(format!("front-{k}")));
    }
    for (token, task) in &mut survivors {
        let seen = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("a survivor ends")
            .unwrap();
        assert!(matches!(seen, Seen::Ok), "{token}: {seen:?}");
    }
    assert!(settled(&pool, 2).await, "{:?}", pool.stats());
    let runs = log.runs();
    for token in dropped.iter().chain(&timed_out) {
        assert_eq!(
            runs.get(token),
            None,
            "{token} was given up behind the gate, before it could start, and ran"
        );
    }
    for (token, _) in &survivors {
        assert_eq!(runs.get(token).map(Vec::len), Some(1), "{token} runs once");
    }
    let s = pool.stats();
    assert_eq!(
        s.completed,
        20 + (capacity + survivors.len()) as u64,
        "{s:?}"
    );
    assert_eq!(s.errors, timed_out.len() as u64, "{s:?}");
    assert_eq!(
        (s.crashes, s.restarts),
        (0, 0),
        "no worker was replaced: {s:?}"
    );
    every_unit_is_free(&pool, &tag).await;
    shut_down_leaving_nothing(pool).await;
}

#[tokio::test(flavor = "current_thread")]
async fn gated_storm_current_thread_runtime() {
    for (pipelined, seed) in [(true, 0x51), (false, 0x52)] {
        gated_storm(false, pipelined, seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gated_storm_multi_thread_runtime() {
    for (pipelined, seed) in [(true, 0x61), (false, 0x62)] {
        gated_storm(false, pipelined, seed).await;
    }
    // Workers that run four calls at once (cancel frames, no pipelining).
    gated_storm(true, true, 0x63).await;
}

/// `CallStream` (pool/stream.rs): "Dropping it cancels the call.";
/// docs/bridges.md, "Concurrency and cancellation": "What the pool does
/// when a call's deadline passes (or its future is dropped): it ... sends
/// `cancel` or SIGINT, and waits for the worker's reply for up to
/// `PoolConfig::shutdown_grace_period` ... If no reply comes, the worker is
/// killed and replaced."
///
/// A stream read from on the runtime and dropped on a thread of the user's
/// own (outside any runtime: a struct holding it dropped in synchronous
/// code): an async worker answers the cancel frame at once, so it must stay,
/// and the call running beside the stream on it must get its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_outside_the_runtime_does_not_kill_its_worker() {
    let (builder, log) = storm("outside-rt-stream", true);
    let pool = builder.size(1).start().await.unwrap();
    let pid = pool.worker_pids()[0];
    let bystander = spawn_run(&pool, json!({"token": "bystander", "ms": 1500}));
    assert!(eventually(20, || log.ran("bystander") == 1).await);
    let mut stream = pool
        .execute_stream("chunks", json!({"token": "s", "n": 100, "ms": 20}), long())
        .await
        .unwrap();
    assert!(matches!(
        next(&mut stream).await,
        Some(Ok(StreamItem::Chunk(_)))
    ));
    std::thread::spawn(move || drop(stream)).join().unwrap();
    let r = bystander.await.unwrap();
    assert_own_result(&r, "bystander", "the call beside the dropped stream");
    one_cancel_and_the_same_worker(pool, pid).await;
}

/// docs/reliability.md, pipelined dispatch (the promises table): "a call
/// written ahead whose caller gives up (deadline, dropped future) before it
/// starts never runs: the pool sends a `cancel` frame, never SIGINT, and the
/// worker answers it `Cancelled` without running it; the call in front is
/// not disturbed".
///
/// The future of a call written ahead, polled on the runtime, then dropped
/// on a thread outside any runtime: the call in front must finish, and its
/// worker stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_written_ahead_dropped_outside_the_runtime_leaves_the_call_in_front_alone() {
    let Held {
        pool,
        log,
        pid,
        gate,
        front,
    } = held_at_the_gate("outside-rt-ahead").await;
    let mut behind = Box::pin(pool.execute_with("run", json!({"token": "behind"}), long()));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut behind)
            .await
            .is_err()
    );
    assert_eq!(
        pool.workers()[0].in_flight,
        2,
        "the second call was written ahead: {:?}",
        pool.stats()
    );
    std::thread::scope(|scope| scope.spawn(move || drop(behind)).join().unwrap());
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.open();
    let r = front.await.unwrap();
    assert_own_result(&r, "front", "the call in front of the dropped one");
    one_cancel_and_the_same_worker(pool, pid).await;
    assert_eq!(log.ran("behind"), 0, "the dropped call ran");
}

/// README/`PoolConfig::max_queue_size` and `Error::PoolSaturated` ("the
/// queue was full"), `Stats::queued` ("Calls waiting in the queue"),
/// `Stats::pool_saturated` ("Calls rejected because the queue was full");
/// ARCHITECTURE.md, core invariants: "A queued call that times out or is
/// dropped never runs: its waiter is skipped at hand-off".
///
/// One busy worker and a queue of four, filled by two plain calls and two
/// strict-affinity session calls (which wait in their worker's own queue):
/// a fifth is refused. The four are then dropped, each its own way (task
/// aborted, `select!`, a stream's `execute_stream` future, a typed call):
/// the queue is empty at once, four new calls get in (not refused), a fifth
/// is refused again (`pool_saturated` is exactly 2), none of the dropped
/// calls ever runs, the four new ones each get their own result, and no
/// `queue_timeouts` are counted.
/// A call of `token` is refused at once: the queue of four is full.
async fn refused_by_a_full_queue(pool: &Pool, token: &str) {
    let e = pool
        .execute_with("run", json!({"token": token}), long())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::PoolSaturated { queued: 4 }), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_waiters_free_their_queue_slots_and_saturation_counts_right() {
    let (builder, log) = storm("queue-slots", false);
    let pool = builder
        .size(1)
        .configure(|c| {
            c.pipeline_depth = 0;
            c.max_queue_size = 4;
        })
        .start()
        .await
        .unwrap();
    let pid = pool.worker_pids()[0];
    let strict = || long().session("s").affinity(Affinity::Strict);
    pool.execute_with("run", json!({"token": "warm"}), strict())
        .await
        .unwrap();
    let gate = Gate::new();
    let front = running_behind(&pool, &log, &gate, "front").await;

    // Four waiters, each dropped its own way when `go` fires (or aborted).
    let (go, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut waiters = Vec::new();
    for k in 0..4 {
        let pool = pool.clone();
        let mut go_rx = go.subscribe();
        let token = format!("dropped-{k}");
        waiters.push(tokio::spawn(async move {
            let args = json!({"token": token});
            match k {
                // Aborted from outside.
                0 => {
                    let r = pool.execute_with("run", args, long()).await;
                    panic!("ended in the queue: {r:?}");
                }
                // A plain call, `select!`ed away.
                1 => tokio::select! {
                    r = pool.execute_with("run", args, long()) => panic!("ended in the queue: {r:?}"),
                    _ = go_rx.recv() => {}
                },
                // A strict session stream, its `execute_stream` dropped.
                2 => tokio::select! {
                    r = pool.execute_stream("chunks", args, long().session("s").affinity(Affinity::Strict)) => {
                        panic!("ended in the queue: {:?}", r.map(|_| ()))
                    }
                    _ = go_rx.recv() => {}
                },
                // A strict session typed call, `select!`ed away.
                _ => tokio::select! {
                    r = pool.call::<_, Value>("run", &args, long().session("s").affinity(Affinity::Strict)) => {
                        panic!("ended in the queue: {r:?}")
                    }
                    _ = go_rx.recv() => {}
                },
            }
        }));
    }
    assert!(
        eventually(20, || pool.stats().queued == 4).await,
        "{:?}",
        pool.stats()
    );
    refused_by_a_full_queue(&pool, "refused-1").await;
    waiters[0].abort();
    go.send(()).unwrap();
    for (k, w) in waiters.into_iter().enumerate() {
        match w.await {
            Ok(()) => assert_ne!(k, 0),
            Err(e) => assert!(k == 0 && e.is_cancelled(), "{e:?}"),
        }
    }
    let s = pool.stats();
    assert_eq!((s.queued, s.in_flight, s.cancelled), (0, 1, 4), "{s:?}");

    // Four new calls take the four slots.
    let mut new = Vec::new();
    for k in 0..4 {
        let pool = pool.clone();
        let token = format!("new-{k}");
        let options = if k % 2 == 0 { long() } else { strict() };
        new.push(tokio::spawn(async move {
            let v = pool
                .execute_with("run", json!({"token": token}), options)
                .await;
            (token, v)
        }));
    }
    assert!(
        eventually(20, || pool.stats().queued == 4).await,
        "the four new calls wait in the queue, none refused: {:?}",
        pool.stats()
    );
    refused_by_a_full_queue(&pool, "refused-2").await;
    gate.open();
    assert_eq!(front.await.unwrap().unwrap()["token"], "front");
    for n in new {
        let (token, r) = n.await.unwrap();
        let v = r.unwrap_or_else(|e| panic!("{token}: {e:?}"));
        assert_eq!(v["token"], json!(token));
        assert_eq!(v["pid"].as_u64().unwrap() as u32, pid);
    }
    assert!(settled(&pool, 1).await, "{:?}", pool.stats());
    let runs = log.runs();
    for k in 0..4 {
        assert_eq!(runs.get(&format!("dropped-{k}")), None, "dropped-{k} ran");
        assert_eq!(runs.get(&format!("new-{k}")).map(Vec::len), Some(1));
    }
    assert_eq!(runs.get("refused-1"), None);
    assert_eq!(runs.get("refused-2"), None);
    let s = pool.stats();
    assert_eq!(
        (s.requests, s.completed, s.errors, s.cancelled),
        (1 + 1 + 4 + 1 + 4 + 1, 1 + 1 + 4, 2, 4),
        "{s:?}"
    );
    assert_eq!(
        (s.pool_saturated, s.queue_timeouts, s.call_timeouts),
        (2, 0, 0),
        "{s:?}"
    );
    every_unit_is_free(&pool, "queue-slots").await;
    shut_down_leaving_nothing(pool).await;
}

/// What a caller of the kill storm saw.
#[derive(Debug)]
enum Ended {
    /// Its own result, from this pid.
    Ok(u32),
    Err(Error),
    Dropped,
}

/// One caller of the kill storm: `way` picks how it calls and whether it
/// gives up; `began` is set just before its call is first polled.
async fn storm_caller(
    pool: Pool,
    way: u64,
    token: String,
    r: u64,
    began: Arc<AtomicBool>,
) -> Ended {
    let ms = r % 20;
    let tiny = Duration::from_micros(r % 15_000);
    let args = json!({"token": token, "ms": ms});
    let own = |v: Value| {
        assert_eq!(
            v["token"],
            json!(token),
            "a caller got another call's result"
        );
        Ended::Ok(v["pid"].as_u64().unwrap() as u32)
    };
    began.store(true, Ordering::SeqCst);
    match way {
        // Waits for its result (aborted from outside for way 3).
        0 | 3 => pool
            .execute_with("run", args, long())
            .await
            .map_or_else(Ended::Err, own),
        1 => match tokio::time::timeout(tiny, pool.execute_with("run", args, long())).await {
            Ok(r) => r.map_or_else(Ended::Err, own),
            Err(_) => Ended::Dropped,
        },
        2 => tokio::select! {
            biased;
            r = pool.execute_with("run", args, long()) => r.map_or_else(Ended::Err, own),
            () = tokio::time::sleep(tiny) => Ended::Dropped,
        },
        // A stream, dropped after `r % 6` items (read to its end if it
        // ends before).
        4 => {
            let args = json!({"token": token, "n": 4, "ms": ms / 4});
            let mut s = match pool.execute_stream("chunks", args, long()).await {
                Ok(s) => s,
                Err(e) => return Ended::Err(e),
            };
            for _ in 0..(r % 6) {
                match next(&mut s).await.expect("a stream ends with an item") {
                    Ok(StreamItem::Chunk(c)) => {
                        assert_eq!(c["token"], json!(token), "another call's chunk")
                    }
                    Ok(StreamItem::Done(v)) => return own(v),
                    Ok(other) => panic!("{other:?}"),
                    Err(e) => return Ended::Err(e),
                }
            }
            Ended::Dropped
        }
        5 => {
            let options = CallOptions::new().timeout(tiny.max(Duration::from_millis(1)));
            pool.execute_with("run", args, options)
                .await
                .map_or_else(Ended::Err, own)
        }
        6 => pool
            .call::<_, Value>("run", &args, long())
            .await
            .map_or_else(Ended::Err, own),
        _ => {
            let options = long().session(format!("s{}", r % 3));
            pool.execute_with("run", args, options)
                .await
                .map_or_else(Ended::Err, own)
        }
    }
}

/// docs/reliability.md: "A call that provably never reached its worker goes
/// to another one and counts once ... A call that may have reached the
/// worker is never sent again: it fails with `WorkerCrashed`", pipelined
/// dispatch: "no caller ever receives another call's reply";
/// `Error::never_ran` (error.rs): "The pool turned the call away without
/// running it"; ARCHITECTURE.md, core invariants: "Every call, streaming or
/// not, is counted once in `stats()`", "A capacity unit is taken ... and
/// returned exactly once"; `Stats::crashes`: "Calls failed because their
/// worker died"; `Stats::cancelled`: "Calls whose future was dropped before
/// they ended"; reliability.md's table: "kill and reap ... always".
///
/// 160 callers over about a second (plain, typed, session, streams,
/// deadlines) of which about half give up at random moments, while a
/// worker is SIGKILLed every 100 ms or so (six times): each result is the caller's own, from the worker
/// that ran it; no call ever runs twice; an error that says the call never
/// ran is true; the counters match what the callers saw exactly; then every
/// unit is free, the killed workers are gone and the shutdown leaves
/// nothing.
async fn kill_storm(async_mode: bool, seed: u64) {
    let tag = format!("kill-{async_mode}-{seed}");
    let (builder, log) = storm(&tag, async_mode);
    let pool = pipelined_pair(builder).await;
    warm_up(&pool, 10, false).await;
    let killer = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut killed = Vec::new();
            for k in 0..6 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                // A ready worker (both may be starting again).
                let mut pids = pool.worker_pids();
                while pids.is_empty() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    pids = pool.worker_pids();
                }
                let pid = pids[k % pids.len()];
                kill_9(pid);
                killed.push(pid);
            }
            killed
        })
    };
    let mut rng = Rng(seed);
    let mut callers = Vec::new();
    for i in 0..160u64 {
        let way = rng.below(8);
        let r = rng.below(1 << 30);
        let token = format!("k{i}");
        let (began, task) = spawn_caller(
            |began| storm_caller(pool.clone(), way, token.clone(), r, began),
            (way == 3).then(|| Duration::from_micros(r % 20_000)),
        );
        callers.push((token, began, task));
        // Spread over about a second: the kills land in the storm.
        if i % 4 == 3 {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    let (mut ok, mut errs, mut dropped, mut began_n) = (0u64, 0u64, 0u64, 0u64);
    let (mut crashes, mut timeouts) = (0u64, 0u64);
    let mut outcomes = Vec::new();
    for (token, began, task) in callers {
        let r = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .unwrap_or_else(|_| panic!("caller {token} hangs"));
        let began = began.load(Ordering::SeqCst);
        began_n += u64::from(began);
        let ended = match r {
            Ok(e) => e,
            Err(e) if e.is_cancelled() => Ended::Dropped,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        match &ended {
            Ended::Ok(_) => ok += 1,
            Ended::Dropped if began => dropped += 1,
            Ended::Dropped => {}
            Ended::Err(e) => {
                errs += 1;
                match e {
                    Error::WorkerCrashed(_) => crashes += 1,
                    Error::CallTimeout { .. } => timeouts += 1,
                    other => {
                        panic!("{token}: an error no caller of this storm should see: {other:?}")
                    }
                }
            }
        }
        outcomes.push((token, ended));
    }
    let killed = killer.await.unwrap();
    assert!(settled(&pool, 2).await, "{:?}", pool.stats());
    let runs = log.runs();
    for (token, pids) in &runs {
        assert_eq!(pids.len(), 1, "{token} ran more than once: {pids:?}");
    }
    for (token, ended) in &outcomes {
        match ended {
            Ended::Ok(pid) => assert_eq!(
                runs.get(token),
                Some(&vec![*pid]),
                "{token} succeeded: it ran once, on the worker that answered"
            ),
            Ended::Err(e) if e.never_ran() => {
                assert_eq!(runs.get(token), None, "{token}: {e:?} says it never ran")
            }
            _ => {}
        }
    }
    let s = pool.stats();
    eprintln!("{tag}: {ok} ok, {errs} errors ({crashes} crashes, {timeouts} timeouts), {dropped} dropped; {s:?}");
    assert_eq!(s.requests, 10 + began_n, "{s:?}");
    assert_eq!(
        (s.completed, s.errors, s.cancelled),
        (10 + ok, errs, dropped),
        "the counters are what the callers saw: {s:?}"
    );
    assert_eq!((s.crashes, s.call_timeouts), (crashes, timeouts), "{s:?}");
    assert!(ok > 0 && dropped > 0, "{s:?}");
    assert!(killed.len() >= 3, "{killed:?}");
    for pid in killed {
        assert!(
            eventually(10, || !alive(pid)).await,
            "killed worker {pid} lives"
        );
    }
    every_unit_is_free(&pool, &tag).await;
    let v = pool
        .execute_with("run", json!({"token": "after"}), long())
        .await
        .unwrap();
    assert_eq!(v["token"], "after");
    shut_down_leaving_nothing(pool).await;
}

#[tokio::test(flavor = "current_thread")]
async fn kill_storm_current_thread_runtime() {
    kill_storm(false, 0x71).await;
    kill_storm(true, 0x72).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_storm_multi_thread_runtime() {
    kill_storm(false, 0x81).await;
    kill_storm(true, 0x82).await;
}

/// `PoolInner::drop` (pool.rs): "The last handle is gone without
/// `shutdown()`: stop at once, killing every worker's process group";
/// `Pool::downgrade`: "when the last `Pool` handle goes, the pool ends (its
/// workers are killed) whatever `WeakPool`s remain"; docs/reliability.md's
/// table: "kill and reap: shutdown, replacement and dropping the last `Pool`
/// handle kill the whole group and reap it"; the run id row: at its end
/// (the last handle dropped) "every process of the run".
///
/// Thirty callers loop over calls that they give up at random; the test
/// holds a stream mid-way and drops its own handle; then every caller's
/// task is aborted at once, so that the last handle goes in the drop of a
/// cancelled call's task. The pool ends: no process of the run is left,
/// the `WeakPool` upgrades no more, and the held stream ends soon, stopped
/// by the pool (not a crash).
async fn the_last_handle_dropped_in_a_cancel_storm(async_mode: bool) {
    let tag = format!("last-handle-{async_mode}");
    let (builder, _log) = storm(&tag, async_mode);
    let pool = pipelined_pair(builder).await;
    let run_id = pool.run_id().to_owned();
    let pids = pool.worker_pids();
    let weak = pool.downgrade();
    let mut stream = pool
        .execute_stream(
            "chunks",
            json!({"token": "held", "n": 1000, "ms": 20}),
            long(),
        )
        .await
        .unwrap();
    assert!(matches!(
        next(&mut stream).await,
        Some(Ok(StreamItem::Chunk(_)))
    ));
    let callers: Vec<_> = (0..30u64)
        .map(|c| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut rng = Rng(c * 7919 + 13);
                for i in 0.. {
                    let token = format!("l{c}-{i}");
                    let args = json!({"token": token, "ms": rng.below(10)});
                    let tiny = Duration::from_micros(rng.below(20_000));
                    let call = pool.execute_with("run", args, long());
                    if let Ok(Ok(v)) = tokio::time::timeout(tiny, call).await {
                        assert_eq!(v["token"], json!(token));
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(pool);
    assert!(weak.upgrade().is_some(), "the callers still hold the pool");
    for c in &callers {
        c.abort();
    }
    for c in callers {
        let e = c.await.unwrap_err();
        assert!(e.is_cancelled(), "{e:?}");
    }
    assert!(weak.upgrade().is_none(), "the last handle is gone");
    nothing_of_the_run_left(pids, &run_id).await;
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match next(&mut stream).await {
                Some(Ok(StreamItem::Chunk(c))) => assert_eq!(c["token"], "held"),
                other => return other,
            }
        }
    })
    .await
    .expect("the held stream ends soon after its pool");
    match end {
        Some(Err(e)) => assert!(
            !e.is_crash() && matches!(e, Error::StoppedByShutdown { .. }),
            "stopped by the pool, not a crash: {e:?}"
        ),
        other => panic!("the stream of a pool that ended: {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_last_handle_dropped_in_a_cancel_storm_current_thread_runtime() {
    the_last_handle_dropped_in_a_cancel_storm(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_handle_dropped_in_a_cancel_storm_multi_thread_runtime() {
    the_last_handle_dropped_in_a_cancel_storm(true).await;
}

/// The front call's gate opens this long before the pool's second look at
/// the cancelled call behind it; the worker then answers nothing for a
/// while (well within the grace period).
const BEFORE_CHECK: Duration = Duration::from_millis(250);

/// One worker holds a gated call; a call written ahead behind it is
/// dropped at `t0`; the gate opens just before `t0 + 2 * grace`. Returns
/// the pool's stats once settled, whether the worker is the same, and
/// whether the dropped call ran.
async fn cancel_behind_then_slow_turn(pause: Duration) -> (snakepit_core::Stats, bool, usize) {
    let grace = Duration::from_millis(1000);
    let (builder, log) = storm(&format!("turn-{}", pause.as_millis()), false);
    let pool = builder
        .size(1)
        .configure(|c| c.shutdown_grace_period = grace)
        .start()
        .await
        .unwrap();
    warm_up(&pool, 20, false).await;
    let pid = pool.worker_pids()[0];
    let gate = Gate::new();
    let front = {
        let pool = pool.clone();
        let args =
            json!({"token": "front", "gate": gate.path(), "pause_ms": pause.as_millis() as u64});
        tokio::spawn(async move { pool.execute_with("run_then_pause", args, long()).await })
    };
    assert!(eventually(20, || log.ran("front") == 1).await);
    let behind = spawn_run(&pool, json!({"token": "behind"}));
    assert!(
        eventually(20, || pool.workers()[0].in_flight == 2).await,
        "the second call was written ahead: {:?}",
        pool.stats()
    );
    let t0 = tokio::time::Instant::now();
    behind.abort();
    assert!(behind.await.unwrap_err().is_cancelled());
    tokio::time::sleep_until(t0 + 2 * grace - BEFORE_CHECK).await;
    gate.open();
    assert_eq!(front.await.unwrap().unwrap()["token"], "front");
    assert!(settled(&pool, 1).await, "{:?}", pool.stats());
    let same = pool.worker_pids() == vec![pid];
    let s = pool.stats();
    let ran = log.ran("behind");
    pool.shutdown().await.unwrap();
    (s, same, ran)
}

/// docs/bridges.md, "Concurrency and cancellation": "A call whose deadline
/// passes while it still waits there [written ahead] gets a `cancel` frame
/// ... the worker answers it `Cancelled` ... without running it", and
/// "What the pool does when a call's deadline passes (or its future is
/// dropped): it ... sends `cancel` ... and waits for the worker's reply for
/// up to `PoolConfig::shutdown_grace_period` ... If no reply comes, the
/// worker is killed and replaced"; `PoolConfig::shutdown_grace_period`:
/// "how long a timed-out call's worker has to deliver the late reply before
/// it is replaced". The pool does not hold the time a call waits behind the
/// running one against it (`Worker::abandon`: "Still waiting behind a
/// running call: its turn has not come; the worker is not stuck on it").
///
/// The call's turn comes 250 ms before the pool looks again (it looks every
/// grace period, counted from the drop); the worker answers its cancel
/// 600 ms after its turn came (it pauses that long after the reply in
/// front, as in a long garbage collection), well within the grace period
/// of 1 s. It must not be killed. (With no pause,
/// the same sequence keeps the worker: see the first half.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_written_ahead_gets_the_grace_period_once_its_turn_comes() {
    let (s, same, ran) = cancel_behind_then_slow_turn(Duration::ZERO).await;
    assert!(same && s.restarts == 0 && ran == 0, "no pause: {s:?}");
    let (s, same, ran) = cancel_behind_then_slow_turn(Duration::from_millis(600)).await;
    assert_eq!(ran, 0, "the dropped call ran");
    assert!(
        same && s.restarts == 0,
        "a worker that answered the cancel 600 ms after the call's turn came, \
         within the grace period of 1 s, was replaced: {s:?}"
    );
}

/// Sends `signal` to `pid` (SIGSTOP/SIGCONT: a worker hung, then not).
#[allow(clippy::disallowed_methods)] // `kill`, not a worker
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// ARCHITECTURE.md, core invariants: "A capacity unit is taken by `acquire`
/// ... and returned exactly once: ... or wholesale when the worker ends. A
/// timed-out or dropped call keeps its unit until its late reply arrives or
/// the worker is killed"; docs/reliability.md: "A call that provably never
/// reached its worker goes to another one and counts once", and its
/// pipelined-dispatch table: "a worker that dies with calls written ahead:
/// ... those behind it never ran and go to another worker, counted once";
/// `Stats::crashes`: "Calls failed because their worker died".
///
/// A worker hangs (SIGSTOP) with a running call and two written ahead
/// behind it; the running call and the second one written ahead are
/// dropped by their callers (so the worker never answers either cancel),
/// then the worker is SIGKILLed. The call that kept its caller never
/// reached the dead worker: it runs once, on the replacement; the dropped
/// ones count as cancelled, not as crashes; the one written ahead never
/// runs; nothing is left in flight and the new worker's unit is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_given_up_on_a_hung_worker_that_is_then_killed_leave_nothing_behind() {
    let Held {
        pool,
        log,
        pid: old,
        gate,
        front,
    } = held_at_the_gate("hung-then-killed").await;
    let kept = spawn_run(&pool, json!({"token": "kept"}));
    assert!(eventually(20, || pool.workers()[0].in_flight == 2).await);
    let given_up = spawn_run(&pool, json!({"token": "given-up"}));
    assert!(
        eventually(20, || pool.workers()[0].in_flight == 3).await,
        "two calls written ahead: {:?}",
        pool.stats()
    );
    signal(old, "-STOP");
    front.abort();
    given_up.abort();
    assert!(front.await.unwrap_err().is_cancelled());
    assert!(given_up.await.unwrap_err().is_cancelled());
    assert_eq!(pool.stats().cancelled, 2);
    kill_9(old);
    let v = tokio::time::timeout(Duration::from_secs(30), kept)
        .await
        .expect("the kept call ends")
        .unwrap()
        .unwrap();
    assert_eq!(v["token"], "kept");
    let new = v["pid"].as_u64().unwrap() as u32;
    assert_ne!(new, old, "it ran on the replacement");
    assert!(settled(&pool, 1).await, "{:?}", pool.stats());
    let runs = log.runs();
    assert_eq!(runs.get("kept"), Some(&vec![new]), "it ran once");
    assert_eq!(
        runs.get("given-up"),
        None,
        "the dropped call written ahead ran"
    );
    let s = pool.stats();
    assert_eq!(
        (s.requests, s.completed, s.errors, s.cancelled, s.crashes),
        (23, 21, 0, 2, 0),
        "{s:?}"
    );
    assert_eq!(s.restarts, 1, "{s:?}");
    gate.open();
    every_unit_is_free(&pool, "hung-then-killed").await;
    shut_down_leaving_nothing(pool).await;
}

/// `Pool::shutdown` (pool.rs): "Stops admitting calls, lets calls in flight
/// finish within the grace period, closes the workers' stdin, then signals
/// their process groups (SIGTERM, then SIGKILL) and reaps them. A call
/// still running when the grace period ends fails with
/// [`Error::StoppedByShutdown`] then". A `shutdown()` future is itself
/// dropped half-way (a caller's own timeout around it, during the grace
/// period): the pool admits nothing from then on (`ShutDown`, which never
/// ran), and a second `shutdown()` still stops the running call with
/// `StoppedByShutdown` and leaves no process of the run.
#[tokio::test(flavor = "current_thread")]
async fn a_shutdown_dropped_half_way_can_be_done_again() {
    let (builder, log) = storm("shutdown-dropped", false);
    let pool = builder
        .size(2)
        .configure(|c| c.shutdown_grace_period = Duration::from_millis(800))
        .start()
        .await
        .unwrap();
    let gate = Gate::new();
    let running = running_behind(&pool, &log, &gate, "running").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(100), pool.shutdown())
            .await
            .is_err(),
        "the first shutdown waits for the running call"
    );
    let e = pool
        .execute_with("run", json!({"token": "late"}), long())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ShutDown) && e.never_ran(), "{e:?}");
    let run_id = pool.run_id().to_owned();
    let pids = pool.worker_pids();
    tokio::time::timeout(Duration::from_secs(30), pool.shutdown())
        .await
        .expect("the second shutdown ends")
        .unwrap();
    let r = running.await.unwrap();
    assert!(matches!(r, Err(Error::StoppedByShutdown { .. })), "{r:?}");
    nothing_of_the_run_left(pids, &run_id).await;
    assert_eq!(log.ran("late"), 0);
    let s = pool.stats();
    assert_eq!(s.requests, s.completed + s.errors + s.cancelled, "{s:?}");
    assert_eq!((s.crashes, s.in_flight, s.queued), (0, 0, 0), "{s:?}");
}
