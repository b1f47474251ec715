//! Cancellation landing at awkward moments, with real pools and the
//! bundled bridges' one-call-at-a-time workers (Python with plain
//! functions, Ruby), which the pool cancels with SIGINT (a `cancel` frame
//! just before it, as they declare `pipeline`).
//!
//! The worker scripts (tests/workers/outside_signal_races.{py,rb}) note
//! every final reply the bridge writes in a file of their own
//! (`<tmp>/snakepit-osr-replies-<pid>.log`, "<id> ok" or "<id> <error
//! type>"), so that a test sees what the worker answered to a call whose
//! caller had already given up; their handlers note what they did in a
//! file the test names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{CallOptions, Error, HostCall, Pool, PoolBuilder, StreamItem, WireCodec};
use snakepit_tests::eventually;

#[allow(dead_code)] // this file does not use every shared helper
mod common;
use common::worker as script;

#[derive(Clone, Copy, Debug)]
enum Lang {
    Python,
    Ruby,
}

fn bridge(lang: Lang, codec: WireCodec) -> Bridge {
    match lang {
        Lang::Python => Bridge::python(script("outside_signal_races.py")).codec(codec),
        Lang::Ruby => Bridge::ruby(script("outside_signal_races.rb")).codec(codec),
    }
}

const BOTH: [(Lang, WireCodec); 4] = [
    (Lang::Python, WireCodec::Json),
    (Lang::Python, WireCodec::MsgPack),
    (Lang::Ruby, WireCodec::Json),
    (Lang::Ruby, WireCodec::MsgPack),
];

/// A `#[tokio::test]` for Python and one for Ruby (each with its own
/// docs), each running `$body` for its language.
macro_rules! python_and_ruby {
    ($body:ident; $(#[$p:meta])* $python:ident; $(#[$r:meta])* $ruby:ident;) => {
        $(#[$p])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $python() {
            $body(Lang::Python).await;
        }

        $(#[$r])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $ruby() {
            $body(Lang::Ruby).await;
        }
    };
}

/// A fresh file for a handler's notes.
fn note_file(tag: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "snakepit-osr-{tag}-{}-{:?}.log",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn replies_file(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("snakepit-osr-replies-{pid}.log"))
}

/// The final replies worker `pid` wrote, in order: (request id, "ok" or
/// the error type).
fn replies(pid: u32) -> Vec<(u64, String)> {
    lines(&replies_file(pid))
        .into_iter()
        .map(|l| {
            let (id, what) = l.split_once(' ').expect("<id> <what>");
            (id.parse().unwrap(), what.to_owned())
        })
        .collect()
}

fn forget_replies(pids: &[u32]) {
    for pid in pids {
        let _ = std::fs::remove_file(replies_file(*pid));
    }
}

/// Shuts `pool` down and removes the reply files of `pids` and the note
/// files `notes`.
async fn finish(pool: Pool, pids: &[u32], notes: &[&Path]) {
    pool.shutdown().await.unwrap();
    forget_replies(pids);
    for note in notes {
        let _ = std::fs::remove_file(note);
    }
}

/// Whether `line` shows up in the note file `log` within 10 s.
async fn noted(log: &Path, line: &str) -> bool {
    eventually(10, || lines(log).iter().any(|l| l == line)).await
}

/// `name` with `args`, given up after `timeout`.
async fn call(
    pool: &Pool,
    name: &str,
    args: Value,
    timeout: Duration,
) -> snakepit_core::Result<Value> {
    pool.execute_with(name, args, CallOptions::new().timeout(timeout))
        .await
}

/// `name` with `args`, given up after `timeout`: the caller hears
/// `CallTimeout`.
async fn given_up(pool: &Pool, name: &str, args: Value, timeout: Duration, what: &str) {
    let r = call(pool, name, args, timeout).await;
    assert!(is_call_timeout(&r), "{what}: {r:?}");
}

/// Checks the final replies worker `pid` wrote from request `before` to
/// request `after`: `ok` to both of those, and `between` (in order) to the
/// requests in between.
async fn assert_replies(pid: u32, before: u64, between: &[&str], after: u64, what: &str) {
    let mut want = vec![(before, "ok".to_owned())];
    want.extend(
        between
            .iter()
            .enumerate()
            .map(|(n, w)| (before + 1 + n as u64, (*w).to_owned())),
    );
    want.push((after, "ok".to_owned()));
    let seen = replies_through(pid, before, after).await;
    assert_eq!(seen, want, "{what}: the replies the worker wrote");
}

/// The final replies worker `pid` wrote from request `from` on, once the
/// one to request `to` is noted (a reply is noted after it is out, so the
/// pool may have it first).
async fn replies_through(pid: u32, from: u64, to: u64) -> Vec<(u64, String)> {
    eventually(10, || replies(pid).iter().any(|(id, _)| *id == to)).await;
    replies(pid)
        .into_iter()
        .filter(|(id, _)| *id >= from)
        .collect()
}

/// The request id `echo` ran under, and the worker that ran it.
async fn echo(pool: &Pool, token: &str) -> (u64, u32) {
    let r = call(
        pool,
        "echo",
        json!({"token": token}),
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("echo {token}: {e}"));
    assert_eq!(r["token"], token, "{r}");
    (r["id"].as_u64().unwrap(), r["pid"].as_u64().unwrap() as u32)
}

fn is_call_timeout<T: std::fmt::Debug>(r: &snakepit_core::Result<T>) -> bool {
    matches!(r, Err(Error::CallTimeout { .. }))
}

fn one_worker(lang: Lang, codec: WireCodec, grace: Duration) -> PoolBuilder {
    Pool::builder(bridge(lang, codec)).size(1).configure(|c| {
        c.shutdown_grace_period = grace;
        c.restart_backoff = Duration::from_millis(20);
    })
}

/// The pool `builder` makes, started, its (first) worker, and a fresh note
/// file for `tag`.
async fn start(builder: PoolBuilder, tag: &str) -> (Pool, u32, PathBuf) {
    let pool = builder.start().await.unwrap();
    let pid = pool.worker_pids()[0];
    (pool, pid, note_file(tag))
}

/// docs/bridges.md, "Concurrency and cancellation": "In every case the
/// reply is a failed reply of type `Cancelled`. The Node bridge sends it
/// at once and drops whatever the handler returns later; the others send
/// it when the handler stops." (and, for Python, "only the pool's SIGINT
/// makes it `Cancelled`"). A handler that catches the cancellation
/// (`KeyboardInterrupt`, `SnakepitBridge::Cancelled`) and returns a value
/// normally still gets exactly one reply, `Cancelled`; the worker is not
/// replaced, and the next call gets its own reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_swallows_its_cancellation_still_answers_cancelled_once() {
    for (lang, codec) in BOTH {
        let what = format!("{lang:?}/{codec}");
        let (pool, pid, log) =
            start(one_worker(lang, codec, Duration::from_secs(10)), "swallow").await;
        let (before, _) = echo(&pool, "before").await;
        given_up(
            &pool,
            "swallow",
            json!({"ms": 30_000, "log": log}),
            Duration::from_millis(700),
            &what,
        )
        .await;
        assert!(
            eventually(10, || lines(&log).last().map(String::as_str)
                == Some("returned"))
            .await,
            "{what}: the handler never caught its cancellation: {:?}",
            lines(&log)
        );
        let (after, by) = echo(&pool, "after").await;
        assert_eq!(by, pid, "{what}: the worker was replaced");
        assert_eq!(lines(&log), ["start", "caught", "returned"], "{what}");
        assert_eq!(after, before + 2, "{what}: request ids are consecutive");
        assert_replies(pid, before, &["Cancelled"], after, &what).await;
        let s = pool.stats();
        assert_eq!(
            (s.requests, s.completed, s.errors, s.call_timeouts),
            (3, 2, 1, 1),
            "{what}: {s:?}"
        );
        assert_eq!((s.crashes, s.restarts), (0, 0), "{what}: {s:?}");
        finish(pool, &[pid], &[&log]).await;
    }
}

/// docs/bridges.md: the pool "answers the caller (`Error::CallTimeout`),
/// sends `cancel` or SIGINT, and waits for the worker's reply for up to
/// `PoolConfig::shutdown_grace_period` ... If no reply comes, the worker is
/// killed and replaced." A handler that catches its cancellation and goes
/// on for longer than the grace period: its caller hears `CallTimeout`
/// (not a crash), the worker is killed before the handler returns (it
/// never writes a reply), one replacement serves the call that came
/// meanwhile, and the counters say one timeout, one restart, no crash.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_outlives_the_grace_period_costs_its_worker_and_nothing_else() {
    for (lang, codec) in [
        (Lang::Python, WireCodec::Json),
        (Lang::Ruby, WireCodec::MsgPack),
    ] {
        let what = format!("{lang:?}/{codec}");
        let (pool, pid, log) = start(
            one_worker(lang, codec, Duration::from_millis(800)),
            "stubborn",
        )
        .await;
        let (before, _) = echo(&pool, "before").await;
        given_up(
            &pool,
            "swallow",
            json!({"ms": 30_000, "after_ms": 20_000, "log": log}),
            Duration::from_millis(500),
            &what,
        )
        .await;
        // A call that comes while the worker is in its grace period waits
        // (nothing takes the given-up call's place) and is served by the
        // replacement.
        let (_, by) = echo(&pool, "after").await;
        assert_ne!(by, pid, "{what}");
        assert!(!snakepit_tests::alive(pid), "{what}: the old worker lives");
        assert_eq!(lines(&log), ["start", "caught"], "{what}");
        let seen = replies_through(pid, before, before).await;
        assert_eq!(seen, vec![(before, "ok".to_owned())], "{what}");
        let s = pool.stats();
        assert_eq!(
            (s.requests, s.completed, s.errors, s.call_timeouts),
            (3, 2, 1, 1),
            "{what}: {s:?}"
        );
        assert_eq!((s.crashes, s.restarts), (0, 1), "{what}: {s:?}");
        finish(pool, &[pid, by], &[&log]).await;
    }
}

/// The stream's items until it ends: its chunks' `i`, then how it ended
/// (`Ok(result)` for a final result, `Err(e)` for an error item).
async fn drain(
    stream: &mut snakepit_core::CallStream,
    pad: usize,
    what: &str,
) -> (Vec<u64>, std::result::Result<Value, Error>) {
    let mut seen = Vec::new();
    let end = loop {
        match stream.next().await {
            Some(Ok(StreamItem::Chunk(c))) => {
                assert_eq!(
                    c["pad"].as_str().map(str::len),
                    Some(pad),
                    "{what}: a chunk came whole"
                );
                seen.push(c["i"].as_u64().unwrap());
            }
            Some(Ok(StreamItem::Done(v))) => break Ok(v),
            Some(Err(e)) => break Err(e),
            Some(Ok(other)) => panic!("{what}: an unknown item {other:?}"),
            None => panic!("{what}: the stream ended without an outcome"),
        }
    };
    assert!(
        stream.next().await.is_none(),
        "{what}: something followed the stream's outcome"
    );
    (seen, end)
}

/// A stream of three chunks on `pool` gets exactly its own chunks and
/// result.
async fn next_stream_gets_its_own(pool: &Pool, what: &str) {
    let mut next = pool
        .execute_stream(
            "chunks",
            json!({"n": 3, "pad": 1, "token": "next"}),
            CallOptions::new().timeout(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    let (seen, end) = drain(&mut next, 1, what).await;
    assert_eq!(seen, [0, 1, 2], "{what}: the next stream's chunks");
    assert_eq!(end.unwrap(), json!({"sent": 3, "token": "next"}), "{what}");
}

/// docs/bridges.md: Python plain functions: "`KeyboardInterrupt`, raised
/// wherever it is"; Ruby: "`SnakepitBridge::Cancelled`, raised wherever it
/// is"; "In every case the reply is a failed reply of type `Cancelled`";
/// docs/reliability.md (row 16): "at its deadline a stream frees its
/// worker, read or not". A deadline that passes while the handler sends
/// chunks of 16 KiB as fast as it can (read as they come, or not read at
/// all until well after the deadline): the caller sees whole chunks in
/// order from the first, then one outcome, `CallTimeout`, and nothing
/// after it; the handler is stopped (its `finally` runs, it never reaches
/// its end), the worker answers `Cancelled` once, is not replaced, and the
/// next stream gets exactly its own chunks and result.
async fn stream_cut_by_its_deadline(lang: Lang) {
    const PAD: usize = 16 << 10;
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        for read in [true, false] {
            let what = format!("{lang:?}/{codec}/read={read}");
            let (pool, pid, log) =
                start(one_worker(lang, codec, Duration::from_secs(5)), "chunks").await;
            let (before, _) = echo(&pool, "before").await;
            let mut stream = pool
                .execute_stream(
                    "chunks",
                    json!({"n": 1_000_000, "pad": PAD, "log": log}),
                    CallOptions::new().timeout(Duration::from_millis(800)),
                )
                .await
                .unwrap();
            if !read {
                tokio::time::sleep(Duration::from_millis(2000)).await;
            }
            let (seen, end) = drain(&mut stream, PAD, &what).await;
            drop(stream);
            assert!(
                matches!(end, Err(Error::CallTimeout { .. })),
                "{what}: {end:?}"
            );
            // Read as they come, some chunks precede the deadline; read
            // late, the stream may give none (it ends at its deadline).
            assert!(
                !read || !seen.is_empty(),
                "{what}: no chunk before the deadline"
            );
            assert!(
                seen.iter().enumerate().all(|(n, i)| *i == n as u64),
                "{what}: chunks out of order or missing"
            );
            assert!(
                noted(&log, "finally").await,
                "{what}: the handler was not stopped: {:?}",
                lines(&log)
            );
            next_stream_gets_its_own(&pool, &what).await;
            let (after, by) = echo(&pool, "after").await;
            assert_eq!(by, pid, "{what}: the worker was replaced");
            assert_eq!(
                lines(&log),
                ["finally"],
                "{what}: the handler ran to its end"
            );
            assert_replies(pid, before, &["Cancelled", "ok"], after, &what).await;
            let s = pool.stats();
            assert_eq!(
                (
                    s.requests,
                    s.completed,
                    s.call_timeouts,
                    s.crashes,
                    s.restarts
                ),
                (4, 3, 1, 0, 0),
                "{what}: {s:?}"
            );
            finish(pool, &[pid], &[&log]).await;
        }
    }
}

python_and_ruby! {
    stream_cut_by_its_deadline;
    python_a_deadline_while_chunks_are_sent_ends_the_stream_once_and_the_worker_serves_on;
    ruby_a_deadline_while_chunks_are_sent_ends_the_stream_once_and_the_worker_serves_on;
}

/// A pool with the host function `slow`: answers `tag` after `ms`.
fn with_slow_host(builder: PoolBuilder) -> PoolBuilder {
    builder.host_function("slow", |call: HostCall| async move {
        let ms = call.args["ms"].as_u64().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(call.args["tag"].clone())
    })
}

/// docs/bridges.md, the table of "Concurrency and cancellation": Python
/// plain functions see "`KeyboardInterrupt`, raised wherever it is (also
/// in `time.sleep` or a host call)"; Ruby "(and a `cancel` frame that
/// arrives during a host call)". A deadline that passes while the handler
/// waits for a host function: the handler stops there (the host call
/// never returns into it), the worker answers `Cancelled` once and stays,
/// and the host's answer, which comes after, is not taken for the next
/// call's host call, which gets its own.
/// (Node and Ruby in JSON are in redteam_bridges.rs; this is the Python
/// sync loop, both codecs, and Ruby in MessagePack.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_during_a_host_call_stops_the_handler_and_the_late_answer_goes_nowhere() {
    for (lang, codec) in [
        (Lang::Python, WireCodec::Json),
        (Lang::Python, WireCodec::MsgPack),
        (Lang::Ruby, WireCodec::MsgPack),
    ] {
        let what = format!("{lang:?}/{codec}");
        let (pool, pid, log) = start(
            with_slow_host(one_worker(lang, codec, Duration::from_secs(5))),
            "host",
        )
        .await;
        let (before, _) = echo(&pool, "before").await;
        given_up(
            &pool,
            "host",
            json!({"function": "slow", "with": {"ms": 1500, "tag": "stale"}, "log": log}),
            Duration::from_millis(400),
            &what,
        )
        .await;
        let stopped = replies_through(pid, before, before + 1).await;
        assert_eq!(
            stopped.last(),
            Some(&(before + 1, "Cancelled".to_owned())),
            "{what}: the handler was not stopped"
        );
        // Its `finally` ran, unless the SIGINT that follows the `cancel`
        // frame cut it short (see
        // *_a_handler_cancelled_in_a_host_call_gets_to_finish_its_clean_up).
        let notes = lines(&log);
        assert!(
            notes == ["asking", "finally"] || notes == ["asking"],
            "{what}: {notes:?}"
        );
        // Asked while the stale answer is still to come (at about 1.5 s).
        let fresh = note_file("host-fresh");
        let r = call(
            &pool,
            "host",
            json!({"function": "slow", "with": {"ms": 2500, "tag": "fresh"}, "log": fresh}),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(r, json!({"value": "fresh", "pid": pid}), "{what}");
        assert_eq!(
            lines(&fresh),
            ["asking", "answered fresh", "finally"],
            "{what}"
        );
        let (after, by) = echo(&pool, "after").await;
        assert_eq!(by, pid, "{what}");
        assert_replies(pid, before, &["Cancelled", "ok"], after, &what).await;
        let s = pool.stats();
        assert_eq!(
            (
                s.requests,
                s.completed,
                s.call_timeouts,
                s.crashes,
                s.restarts
            ),
            (4, 3, 1, 0, 0),
            "{what}: {s:?}"
        );
        finish(pool, &[pid], &[&log, &fresh]).await;
    }
}

/// docs/bridges.md, "Concurrency and cancellation": "In every case the
/// reply is a failed reply of type `Cancelled`" ... "SIGINT that arrives
/// between calls is ignored"; docs/reliability.md, "Pipelined dispatch":
/// "a call that answers just as it times out is not followed by a next
/// call before the signal, so the signal lands between calls (which the
/// bridges ignore)". Calls whose result is 8 MiB, given up at deadlines
/// from 1 to 61 ms, so that the cancellation lands before, during and
/// after the reply is written: every call gets at most one reply from the
/// worker, the next call (an echo) always its own, and the worker is
/// never replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_while_a_large_reply_is_written_gives_one_reply_and_the_next_call_its_own() {
    for (lang, codec) in [
        (Lang::Python, WireCodec::MsgPack),
        (Lang::Ruby, WireCodec::Json),
    ] {
        let what = format!("{lang:?}/{codec}");
        let pool = one_worker(lang, codec, Duration::from_secs(10))
            .configure(|c| c.pipeline_depth = 0)
            .start()
            .await
            .unwrap();
        let pid = pool.worker_pids()[0];
        let (first, _) = echo(&pool, "first").await;
        let mut echoes = vec![first];
        let mut timeouts = 0;
        for ms in (1..=61).step_by(4) {
            let token = format!("big-{ms}");
            let r = call(
                &pool,
                "big",
                json!({"token": token, "size": 8 << 20}),
                Duration::from_millis(ms),
            )
            .await;
            match r {
                Ok(v) => assert_eq!(v["token"], token.as_str(), "{what}"),
                Err(Error::CallTimeout { .. }) => timeouts += 1,
                Err(e) => panic!("{what}: {ms} ms: {e}"),
            }
            let (id, by) = echo(&pool, &format!("after-{ms}")).await;
            assert_eq!(by, pid, "{what}: replaced after a deadline of {ms} ms");
            echoes.push(id);
        }
        assert!(timeouts > 0, "{what}: no call was given up");
        let last = *echoes.last().unwrap();
        let seen = replies_through(pid, first, last).await;
        let mut ids: Vec<u64> = seen.iter().map(|(id, _)| *id).collect();
        ids.dedup();
        assert_eq!(
            ids.len(),
            seen.len(),
            "{what}: two replies to one call: {seen:?}"
        );
        for (id, outcome) in &seen {
            if echoes.contains(id) {
                assert_eq!(outcome, "ok", "{what}: echo {id}");
            } else {
                assert!(
                    outcome == "ok" || outcome == "Cancelled",
                    "{what}: {id} {outcome}"
                );
            }
        }
        let s = pool.stats();
        assert_eq!((s.crashes, s.restarts), (0, 0), "{what}: {s:?}");
        assert!(
            eventually(10, || pool.stats().in_flight == 0).await,
            "{what}: a late reply never came: {:?}",
            pool.stats()
        );
        let s = pool.stats();
        assert_eq!(s.requests, s.completed + s.errors, "{what}: {s:?}");
        assert_eq!(s.call_timeouts, timeouts, "{what}: {s:?}");
        finish(pool, &[pid], &[]).await;
    }
}

/// A one-worker pool whose calls count as short (they write ahead), warmed
/// up with echoes.
async fn pipelined(lang: Lang, codec: WireCodec, grace: Duration) -> Pool {
    let pool = one_worker(lang, codec, grace)
        .configure(|c| c.pipeline_max_call = Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    for n in 0..20 {
        echo(&pool, &format!("warm-{n}")).await;
    }
    pool
}

fn in_flight(pool: &Pool) -> usize {
    pool.workers().first().map_or(0, |w| w.in_flight)
}

fn spawn_sleep(
    pool: &Pool,
    token: &str,
    ms: u64,
    log: &Path,
    timeout: Duration,
) -> tokio::task::JoinHandle<snakepit_core::Result<Value>> {
    let pool = pool.clone();
    let args = json!({"token": token, "ms": ms, "log": log});
    tokio::spawn(async move {
        pool.execute_with("sleep", args, CallOptions::new().timeout(timeout))
            .await
    })
}

/// docs/reliability.md, "Pipelined dispatch": "a call that times out with
/// another written ahead behind it gets no SIGINT (it runs to its end; the
/// call behind gets its own reply)", and "a worker that dies with calls
/// written ahead: ... those behind it never ran and go to another worker,
/// counted once"; docs/bridges.md: "If no reply comes, the worker is
/// killed and replaced." A running call given up, longer than the grace
/// period, with a call written ahead behind it that nobody gave up: the
/// running one never reaches its end (its worker is killed), the one
/// behind is not cancelled: it runs exactly once, on the replacement, and
/// its caller gets its own result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_behind_a_stuck_one_that_was_given_up_runs_once_on_the_replacement() {
    for (lang, codec) in [
        (Lang::Python, WireCodec::Json),
        (Lang::Ruby, WireCodec::MsgPack),
    ] {
        let what = format!("{lang:?}/{codec}");
        let pool = pipelined(lang, codec, Duration::from_millis(800)).await;
        let pid = pool.worker_pids()[0];
        let log = note_file("behind-stuck");
        let a = spawn_sleep(&pool, "A", 20_000, &log, Duration::from_millis(1500));
        assert!(noted(&log, "start A").await, "{what}: A never started");
        let b = spawn_sleep(&pool, "B", 0, &log, Duration::from_secs(30));
        assert!(
            eventually(10, || in_flight(&pool) == 2).await,
            "{what}: B was not written ahead: {:?}",
            pool.workers()
        );
        let ra = a.await.unwrap();
        assert!(is_call_timeout(&ra), "{what}: A: {ra:?}");
        let rb = b
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{what}: B: {e}"));
        assert_eq!(rb["token"], "B", "{what}");
        assert_ne!(
            rb["pid"].as_u64().unwrap() as u32,
            pid,
            "{what}: B ran behind A"
        );
        assert_eq!(lines(&log), ["start A", "start B", "end B"], "{what}");
        let s = pool.stats();
        assert_eq!(
            (s.requests, s.completed, s.errors, s.call_timeouts),
            (22, 21, 1, 1),
            "{what}: {s:?}"
        );
        assert_eq!((s.crashes, s.restarts), (0, 1), "{what}: {s:?}");
        let new = rb["pid"].as_u64().unwrap() as u32;
        finish(pool, &[pid, new], &[&log]).await;
    }
}

/// The same, with both given up in quick succession: the one written
/// ahead first (a `cancel` frame: docs/bridges.md, "A call whose deadline
/// passes while it still waits there gets a `cancel` frame ... the worker
/// answers it `Cancelled` ... without running it"), then the running call,
/// which then has nothing behind it that a signal could reach and gets its
/// SIGINT (docs/reliability.md: "signalled as soon as the last of those is
/// given up"). Neither runs to its end, the one given up while waiting
/// never starts, and the worker is kept and serves the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_calls_given_up_in_quick_succession_neither_runs_to_its_end_anywhere() {
    for (lang, codec) in [
        (Lang::Python, WireCodec::MsgPack),
        (Lang::Ruby, WireCodec::Json),
    ] {
        let what = format!("{lang:?}/{codec}");
        let pool = pipelined(lang, codec, Duration::from_millis(800)).await;
        let pid = pool.worker_pids()[0];
        let log = note_file("two-given-up");
        let a = spawn_sleep(&pool, "A", 20_000, &log, Duration::from_millis(1500));
        assert!(noted(&log, "start A").await, "{what}: A never started");
        let b = spawn_sleep(&pool, "B", 20_000, &log, Duration::from_millis(1000));
        assert!(
            eventually(10, || in_flight(&pool) == 2).await,
            "{what}: B was not written ahead: {:?}",
            pool.workers()
        );
        let (ra, rb) = (a.await.unwrap(), b.await.unwrap());
        assert!(is_call_timeout(&ra), "{what}: A: {ra:?}");
        assert!(is_call_timeout(&rb), "{what}: B: {rb:?}");
        let (_, by) = echo(&pool, "after").await;
        assert_eq!(by, pid, "{what}: the worker was kept");
        // Long enough for B to have started, had it been run.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(lines(&log), ["start A"], "{what}");
        let s = pool.stats();
        assert_eq!(
            (s.requests, s.completed, s.errors, s.call_timeouts),
            (23, 21, 2, 2),
            "{what}: {s:?}"
        );
        assert_eq!((s.crashes, s.restarts), (0, 0), "{what}: {s:?}");
        finish(pool, &[pid], &[&log]).await;
    }
}

/// docs/bridges.md, "Concurrency and cancellation": Ruby: "`Cancelled` is
/// an `Interrupt` ... clean up in `ensure`"; the pool cancels a Ruby or
/// Python worker with SIGINT, "preceded by" the call's `cancel` frame
/// (docs/protocol.md, `pipeline`), and a Ruby handler also sees "a `cancel`
/// frame that arrives during a host call". One cancellation, two ways of
/// hearing it: a handler given up while it waits for a host function is
/// cancelled once, and its clean-up (`ensure` / `finally`, 200 ms of it)
/// is not cut short by the second; the worker answers `Cancelled` once
/// per call and stays.
async fn clean_up_after_a_host_call_is_not_cut_short(lang: Lang) {
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let what = format!("{lang:?}/{codec}");
        let (pool, pid, log) = start(
            with_slow_host(one_worker(lang, codec, Duration::from_secs(5))),
            "cleanup",
        )
        .await;
        let (before, _) = echo(&pool, "before").await;
        const ROUNDS: usize = 10;
        for round in 0..ROUNDS {
            given_up(
                &pool,
                "host_cleanup",
                json!({"with": {"ms": 5000, "tag": round}, "cleanup_ms": 200, "log": log}),
                Duration::from_millis(300),
                &what,
            )
            .await;
            // The next call waits for the worker to be free again.
            echo(&pool, &format!("after-{round}")).await;
        }
        let (last, by) = echo(&pool, "last").await;
        assert_eq!(by, pid, "{what}: the worker was replaced");
        assert_eq!(
            lines(&log),
            vec!["cleaned"; ROUNDS],
            "{what}: a clean-up was cut short (or a host call answered)"
        );
        let seen = replies_through(pid, before, last).await;
        let cancelled = seen.iter().filter(|(_, w)| w == "Cancelled").count();
        assert_eq!(cancelled, ROUNDS, "{what}: {seen:?}");
        assert_eq!(seen.len(), 2 * ROUNDS + 2, "{what}: {seen:?}");
        finish(pool, &[pid], &[&log]).await;
    }
}

python_and_ruby! {
    clean_up_after_a_host_call_is_not_cut_short;
    /// The Python bridge's sync loop reads the `cancel` frame in `call_host`
    /// and raises `Cancelled` there; the SIGINT that follows finds the call
    /// cancelled and is ignored. (Before the fix, it raised
    /// `KeyboardInterrupt` in the handler's `finally`.)
    python_a_handler_cancelled_in_a_host_call_gets_to_finish_its_clean_up;
    /// The Ruby bridge reads the `cancel` frame in `call_host` and raises
    /// `Cancelled` there; the SIGINT that follows runs the INT trap while the
    /// handler is still unwinding, and finds the call cancelled. (Before the
    /// fix, it raised a second `Cancelled` inside the handler's `ensure`.)
    ruby_a_handler_cancelled_in_a_host_call_gets_to_finish_its_clean_up;
}

/// docs/bridges.md, the table of what a handler does in each bridge:
/// Python `ctx.emit(data)` "returns `False` and sends nothing without a
/// stream or once the call was answered or cancelled" (the same in
/// bridges/python/README.md). A Python handler whose stream was given up
/// (SIGINT) and that catches the `KeyboardInterrupt` and tries to send
/// one more chunk: `ctx.cancelled` is true, and `emit` says `False`; the
/// caller's stream ended with its one chunk and `CallTimeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_emit_after_the_cancellation_sends_nothing() {
    let (pool, pid, log) = start(
        one_worker(Lang::Python, WireCodec::Json, Duration::from_secs(5)),
        "emit",
    )
    .await;
    let mut stream = pool
        .execute_stream(
            "swallow_emit",
            json!({"ms": 30_000, "log": log}),
            CallOptions::new().timeout(Duration::from_millis(600)),
        )
        .await
        .unwrap();
    match stream.next().await {
        Some(Ok(StreamItem::Chunk(c))) => assert_eq!(c, "first"),
        other => panic!("{other:?}"),
    }
    let end = stream.next().await;
    assert!(
        matches!(end, Some(Err(Error::CallTimeout { .. }))),
        "{end:?}"
    );
    assert!(stream.next().await.is_none());
    assert!(
        eventually(10, || lines(&log).len() == 2).await,
        "{:?}",
        lines(&log)
    );
    let (_, by) = echo(&pool, "after").await;
    assert_eq!(by, pid);
    assert_eq!(lines(&log), ["cancelled True", "emit False"]);
    finish(pool, &[pid], &[&log]).await;
}

/// Calls of 20 ms (`sleep`, noting in `log`) on worker `pid` of `pool`,
/// given up at deadlines from 10 to 40 ms, each followed by an echo:
/// every call gets exactly one reply from the worker; one that says `ok`
/// ran to its end; the echo always gets its own; the worker is never
/// replaced.
async fn deadlines_racing_the_handlers_end(pool: &Pool, pid: u32, log: &Path, what: &str) {
    let (first, _) = echo(pool, "first").await;
    let mut sleeps = Vec::new();
    let mut last = first;
    for ms in 10..=40u64 {
        let token = format!("s{ms}");
        let r = call(
            pool,
            "sleep",
            json!({"token": token, "ms": 20, "log": log}),
            Duration::from_millis(ms),
        )
        .await;
        match &r {
            Ok(v) => assert_eq!(v["token"], token.as_str(), "{what}"),
            Err(Error::CallTimeout { .. }) => {}
            Err(e) => panic!("{what}: {ms} ms: {e}"),
        }
        let (id, by) = echo(pool, &format!("after-{ms}")).await;
        assert_eq!(by, pid, "{what}: replaced after a deadline of {ms} ms");
        assert_eq!(id, last + 2, "{what}: request ids");
        sleeps.push((last + 1, token));
        last = id;
    }
    let seen = replies_through(pid, first, last).await;
    let notes = lines(log);
    for (id, token) in &sleeps {
        let outcomes: Vec<&str> = seen
            .iter()
            .filter(|(i, _)| i == id)
            .map(|(_, w)| w.as_str())
            .collect();
        assert!(
            outcomes == ["ok"] || outcomes == ["Cancelled"],
            "{what}: call {token} (id {id}) got {outcomes:?}"
        );
        if outcomes == ["ok"] {
            assert!(
                notes.contains(&format!("end {token}")),
                "{what}: {token} answered ok without running to its end"
            );
        }
    }
    assert_eq!(seen.len(), 2 * sleeps.len() + 1, "{what}: {seen:?}");
    let s = pool.stats();
    assert_eq!((s.crashes, s.restarts), (0, 0), "{what}: {s:?}");
}

/// docs/bridges.md: "In every case the reply is a failed reply of type
/// `Cancelled`" and "SIGINT that arrives between calls is ignored"; the
/// Python bridge's sync loop and the Ruby one promise that a SIGINT
/// landing just as the handler returns still gives exactly one reply.
/// Calls of 20 ms given up at deadlines from 10 to 40 ms, each followed
/// by an echo: every call gets exactly one reply from the worker; one
/// that says `ok` ran to its end; the echo always gets its own; the
/// worker is never replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_as_the_handler_returns_gives_exactly_one_reply() {
    for (lang, codec) in [
        (Lang::Python, WireCodec::Json),
        (Lang::Ruby, WireCodec::MsgPack),
    ] {
        let what = format!("{lang:?}/{codec}");
        let (pool, pid, log) = start(
            one_worker(lang, codec, Duration::from_secs(10)).configure(|c| c.pipeline_depth = 0),
            "as-it-returns",
        )
        .await;
        deadlines_racing_the_handlers_end(&pool, pid, &log, &what).await;
        finish(pool, &[pid], &[&log]).await;
    }
}

fn node(signals: &Path) -> Bridge {
    Bridge::node(script("outside_signal_races.js"))
        .env("NODE_PATH", common::node_modules())
        .env("OSR_SIGNALS", signals)
}

/// docs/bridges.md, "Concurrency and cancellation", the Node.js row: the
/// pool cancels with "a `cancel` frame, never SIGINT (the bridge declares
/// `cancel`; with `sigint: true` a SIGINT sent by anyone else cancels the
/// calls running)". A Node worker created with
/// `new Worker({ sigint: true, maxConcurrency: 1 })` whose call is given up
/// gets the `cancel` frame (its reply is `Cancelled`) and no SIGINT. (The
/// table said "SIGINT too with `sigint: true`", which the pool never did.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_sigint_true_is_cancelled_with_a_cancel_frame_never_sigint() {
    let signals = note_file("node-signals");
    let pool = Pool::builder(node(&signals)).size(1).start().await.unwrap();
    let pid = pool.worker_pids()[0];
    let log = note_file("node-sleep");
    let (before, _) = echo(&pool, "before").await;
    given_up(
        &pool,
        "sleep",
        json!({"token": "A", "ms": 3000, "log": log}),
        Duration::from_millis(400),
        "",
    )
    .await;
    let (after, by) = echo(&pool, "after").await;
    assert_eq!(by, pid);
    assert_replies(pid, before, &["Cancelled"], after, "").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = lines(&signals);
    finish(pool, &[pid], &[&log, &signals]).await;
    assert!(got.is_empty(), "SIGINTs the worker got: {got:?}");
}

/// bridges/node/README.md: on `cancel` the bridge "replies `Cancelled` **at
/// once** ... whatever the handler returns later is dropped"; a cancel for
/// a call that has ended finds nothing ("already finished: its reply is on
/// its way"). Calls of 20 ms on a Node worker running one call at a time
/// (`sigint: true`), given up at deadlines from 10 to 40 ms so that the
/// `cancel` frame races with the handler's end: each gets exactly one reply
/// (`ok` only if its handler ran to its end), the next call its own, and
/// the worker stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_a_cancel_racing_with_the_handlers_end_gives_exactly_one_reply() {
    let signals = note_file("node-race-signals");
    let pool = Pool::builder(node(&signals)).size(1).start().await.unwrap();
    let pid = pool.worker_pids()[0];
    let log = note_file("node-race");
    deadlines_racing_the_handlers_end(&pool, pid, &log, "Node").await;
    finish(pool, &[pid], &[&log, &signals]).await;
}

/// docs/bridges.md, "Concurrency and cancellation": "In every case the
/// reply is a failed reply of type `Cancelled`", the Python README: "Do
/// not swallow `KeyboardInterrupt` in handlers; if you do, `ctx.cancelled`
/// is still set and the reply still says `Cancelled`". A handler that
/// turns its cancellation into another error (`except KeyboardInterrupt:
/// raise RuntimeError`, `rescue Cancelled; raise "aborted"`): the worker's
/// reply to the given-up call is still `Cancelled`.
async fn a_cancellation_turned_into_another_error_is_still_answered_cancelled(lang: Lang) {
    let (pool, pid, log) = start(
        one_worker(lang, WireCodec::Json, Duration::from_secs(5)),
        "convert",
    )
    .await;
    let (before, _) = echo(&pool, "before").await;
    given_up(
        &pool,
        "convert",
        json!({"ms": 30_000, "log": log}),
        Duration::from_millis(500),
        &format!("{lang:?}"),
    )
    .await;
    let (after, by) = echo(&pool, "after").await;
    assert_eq!(by, pid);
    assert_eq!(lines(&log), ["caught"], "{lang:?}");
    assert_replies(pid, before, &["Cancelled"], after, &format!("{lang:?}")).await;
    finish(pool, &[pid], &[&log]).await;
}

python_and_ruby! {
    a_cancellation_turned_into_another_error_is_still_answered_cancelled;
    python_a_cancellation_turned_into_another_error_is_still_answered_cancelled;
    ruby_a_cancellation_turned_into_another_error_is_still_answered_cancelled;
}

/// docs/reliability.md, "Pipelined dispatch": "SIGINT ... is sent only when
/// it can reach nothing but the call it is meant for ... and nothing is
/// written ahead to it until that call's reply"; docs/bridges.md: during
/// the grace period "the worker gets no new call in that call's place". A
/// worker whose calls count as short (calls are written ahead to it) is
/// signalled for a call that then takes 600 ms to stop (it catches the
/// cancellation and cleans up): a call submitted meanwhile is not written
/// to it (it waits in the pool's queue), starts only after the reply, is
/// not cancelled, and gets its own result from the same worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_written_ahead_to_a_worker_until_its_signalled_call_answers() {
    for (lang, codec) in [
        (Lang::Python, WireCodec::MsgPack),
        (Lang::Ruby, WireCodec::Json),
    ] {
        let what = format!("{lang:?}/{codec}");
        let pool = pipelined(lang, codec, Duration::from_secs(10)).await;
        let pid = pool.worker_pids()[0];
        let log = note_file("signalled-then-slow");
        given_up(
            &pool,
            "swallow",
            json!({"ms": 30_000, "after_ms": 600, "log": log}),
            Duration::from_millis(400),
            &what,
        )
        .await;
        assert!(noted(&log, "caught").await, "{what}: {:?}", lines(&log));
        let b = spawn_sleep(&pool, "B", 0, &log, Duration::from_secs(30));
        assert!(
            eventually(10, || pool.stats().queued == 1).await,
            "{what}: B was not queued: {:?}",
            pool.stats()
        );
        let mut most = 0;
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while !lines(&log).contains(&"returned".to_owned()) {
            assert!(std::time::Instant::now() < until, "{what}: never returned");
            most = most.max(in_flight(&pool));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            most, 1,
            "{what}: a call was written behind the signalled one"
        );
        let rb = b
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{what}: B: {e}"));
        assert_eq!(rb, json!({"token": "B", "pid": pid}), "{what}");
        assert_eq!(
            lines(&log),
            ["start", "caught", "returned", "start B", "end B"],
            "{what}"
        );
        let s = pool.stats();
        assert_eq!((s.crashes, s.restarts), (0, 0), "{what}: {s:?}");
        finish(pool, &[pid], &[&log]).await;
    }
}

/// A stream given up at its deadline (the caller reads `CallTimeout`) and
/// then dropped: one cancellation, so the worker is signalled once. A
/// handler that catches it and cleans up for 500 ms is not interrupted a
/// second time (Ruby: "clean up in `ensure`"; the Python bridge: one
/// SIGINT "raises at most once"), and its reply is `Cancelled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_timed_out_then_dropped_is_signalled_once() {
    for (lang, codec) in [
        (Lang::Python, WireCodec::Json),
        (Lang::Ruby, WireCodec::Json),
    ] {
        let what = format!("{lang:?}/{codec}");
        let (pool, pid, log) = start(
            one_worker(lang, codec, Duration::from_secs(10)),
            "stream-dropped",
        )
        .await;
        let (before, _) = echo(&pool, "before").await;
        let mut stream = pool
            .execute_stream(
                "swallow",
                json!({"ms": 30_000, "after_ms": 500, "log": log}),
                CallOptions::new().timeout(Duration::from_millis(500)),
            )
            .await
            .unwrap();
        let end = stream.next().await;
        assert!(
            matches!(end, Some(Err(Error::CallTimeout { .. }))),
            "{what}: {end:?}"
        );
        assert!(noted(&log, "caught").await, "{what}: {:?}", lines(&log));
        drop(stream);
        let (after, by) = echo(&pool, "after").await;
        assert_eq!(by, pid, "{what}");
        assert_eq!(lines(&log), ["start", "caught", "returned"], "{what}");
        assert_replies(pid, before, &["Cancelled"], after, &what).await;
        finish(pool, &[pid], &[&log]).await;
    }
}

/// docs/preload.md: each worker of a preloaded pool is a fork of a
/// template; docs/bridges.md: Ruby and Python plain functions are
/// cancelled by SIGINT, "the reply is a failed reply of type `Cancelled`".
/// In a preloaded pool the pool's SIGINT reaches the forked worker (not
/// the template), its handler is stopped before its end, the worker
/// answers `Cancelled` once, and the same fork serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_worker_is_cancelled_by_sigint_and_answers_cancelled_once() {
    for (lang, codec) in [
        (Lang::Ruby, WireCodec::Json),
        (Lang::Ruby, WireCodec::MsgPack),
        (Lang::Python, WireCodec::MsgPack),
    ] {
        let what = format!("{lang:?}/{codec}");
        let (pool, pid, log) = start(
            Pool::builder(bridge(lang, codec).preload())
                .size(1)
                .configure(|c| c.shutdown_grace_period = Duration::from_secs(5)),
            "forked",
        )
        .await;
        let (before, by) = echo(&pool, "before").await;
        assert_eq!(by, pid, "{what}");
        given_up(
            &pool,
            "sleep",
            json!({"token": "A", "ms": 30_000, "log": log}),
            Duration::from_millis(600),
            &what,
        )
        .await;
        let (after, by) = echo(&pool, "after").await;
        assert_eq!(by, pid, "{what}: the fork was replaced");
        assert_eq!(lines(&log), ["start A"], "{what}");
        assert_replies(pid, before, &["Cancelled"], after, &what).await;
        let s = pool.stats();
        assert_eq!((s.crashes, s.restarts), (0, 0), "{what}: {s:?}");
        finish(pool, &[pid], &[&log]).await;
    }
}

/// docs/reliability.md (row 16): "a one-at-a-time worker waits for its
/// reader"; `Pool::execute_stream`: "Dropping the stream cancels the
/// call". A stream whose reader took three chunks and then dropped it,
/// while the handler sends 16 KiB chunks as fast as the pipe takes them
/// (so it is usually blocked writing one when the signal comes): the
/// handler is stopped (its `finally` runs, never its end), the worker
/// answers `Cancelled` once, the drop counts as `cancelled`, and the same
/// worker serves the next stream with exactly its own chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_dropped_while_its_worker_waits_on_a_full_pipe_stops_the_handler() {
    const PAD: usize = 16 << 10;
    for (lang, codec) in [
        (Lang::Python, WireCodec::MsgPack),
        (Lang::Ruby, WireCodec::Json),
    ] {
        let what = format!("{lang:?}/{codec}");
        let (pool, pid, log) = start(
            one_worker(lang, codec, Duration::from_secs(5)),
            "dropped-full-pipe",
        )
        .await;
        let (before, _) = echo(&pool, "before").await;
        let mut stream = pool
            .execute_stream(
                "chunks",
                json!({"n": 1_000_000, "pad": PAD, "log": log}),
                CallOptions::new().timeout(Duration::from_secs(30)),
            )
            .await
            .unwrap();
        for i in 0..3 {
            match stream.next().await {
                Some(Ok(StreamItem::Chunk(c))) => assert_eq!(c["i"], i, "{what}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        // Long enough for the 256 chunks the pool holds for a reader, and
        // the pipe, to fill.
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(stream);
        assert!(
            noted(&log, "finally").await,
            "{what}: the handler was not stopped: {:?}",
            lines(&log)
        );
        next_stream_gets_its_own(&pool, &what).await;
        let (after, by) = echo(&pool, "after").await;
        assert_eq!(by, pid, "{what}: the worker was replaced");
        assert_eq!(lines(&log), ["finally"], "{what}");
        assert_replies(pid, before, &["Cancelled", "ok"], after, &what).await;
        let s = pool.stats();
        assert_eq!(
            (s.requests, s.completed, s.cancelled, s.crashes, s.restarts),
            (4, 3, 1, 0, 0),
            "{what}: {s:?}"
        );
        finish(pool, &[pid], &[&log]).await;
    }
}

fn sigint(pid: u32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a worker process this test's pool started.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGINT);
    }
}

/// docs/bridges.md: "SIGINT that arrives between calls is ignored, with
/// one exception" (a call whose `cancel` frame is in stdin);
/// docs/protocol.md, capabilities: "`sigint` ... SIGINT between handlers
/// is ignored"; bridges/node/README.md: with `sigint: true`, "between
/// calls it is ignored". A worker sent SIGINT three times while idle (not
/// by the pool: no `cancel` frame) is not replaced and runs the next call
/// to its end, successfully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_between_calls_is_ignored_and_the_next_call_runs() {
    let signals = note_file("between-signals");
    for (name, adapter) in [
        ("python", bridge(Lang::Python, WireCodec::Json)),
        ("ruby", bridge(Lang::Ruby, WireCodec::MsgPack)),
        ("node", node(&signals)),
    ] {
        let (pool, pid, log) = start(
            Pool::builder(adapter)
                .size(1)
                .configure(|c| c.health_check_interval = Duration::ZERO),
            "between",
        )
        .await;
        echo(&pool, "before").await;
        for _ in 0..3 {
            sigint(pid);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = call(
            &pool,
            "sleep",
            json!({"token": "A", "ms": 300, "log": log}),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r, json!({"token": "A", "pid": pid}), "{name}");
        assert_eq!(lines(&log), ["start A", "end A"], "{name}");
        assert_eq!(pool.worker_pids(), vec![pid], "{name}");
        let s = pool.stats();
        assert_eq!((s.crashes, s.restarts), (0, 0), "{name}: {s:?}");
        finish(pool, &[pid], &[&log]).await;
    }
    // The Node worker's own listener saw them (what
    // node_with_sigint_true_is_cancelled_with_a_cancel_frame_and_sigint
    // relies on).
    assert_eq!(lines(&signals), ["sigint"; 3]);
    let _ = std::fs::remove_file(&signals);
}
