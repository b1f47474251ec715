//! docs/bridges.md, "Standard output belongs to the protocol", Python:
//! "Output *before* `run()`, for instance from a module that prints when
//! imported, still goes to the pool ...: call
//! `snakepit_bridge.protect_stdout()` first in such scripts."
//!
//! `workers/protect_stdout.py` calls it, then prints, writes to
//! `sys.stdout` and writes to descriptor 1 at import, then serves. Run in a
//! real pool, with and without preloading, in both codecs: every call
//! succeeds, no worker breaks the protocol (none exits, none fails to
//! start), and the text is logged: a worker's under target
//! `snakepit::worker` ("the pool forwards line by line to `tracing` (target
//! `snakepit::worker`, level info)"), a template's under
//! `snakepit::template` (docs/preload.md: "The template's own output is
//! logged under the `snakepit::template` target"). The same script without
//! the call cannot start: the output before `run()` does go to the pool.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use common::on_every_worker;
use snakepit_adapters::Bridge;
use snakepit_core::{events::EventKind, Error, Pool, WireCodec};
use snakepit_tests::{eventually, python, Events};

/// The lines the script writes to stdout at import.
const IMPORT_LINES: [&str; 3] = [
    "import-time print",
    "import-time sys.stdout.write",
    "import-time write to descriptor 1",
];

/// The lines its command writes to stdout during a call.
const CALL_LINES: [&str; 2] = ["call-time print", "call-time write to descriptor 1"];

fn bridge(codec: WireCodec) -> Bridge {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/protect_stdout.py");
    Bridge::python(script).interpreter(python()).codec(codec)
}

/// Waits until `target`'s lines of process `pid` in `events` include every
/// one of `expected`; panics naming what is missing if they never do.
async fn expect_lines(events: &Events, target: &str, pid: u32, expected: &[&str], what: &str) {
    let has_all = || {
        let lines = events.lines(target, pid);
        expected.iter().all(|e| lines.iter().any(|l| l == e))
    };
    assert!(
        eventually(10, has_all).await,
        "{what}: {target} of pid {pid} lacks some of {expected:?}; it logged {:?}",
        events.lines(target, pid)
    );
}

/// What would show a worker breaking the protocol: a call that did not end
/// `ok`, a worker that exited or could not start, a restart.
fn trouble_listener() -> (
    Arc<Mutex<Vec<String>>>,
    impl Fn(&snakepit_core::events::Event<'_>) + Send + Sync + 'static,
) {
    let trouble = Arc::new(Mutex::new(Vec::new()));
    let seen = trouble.clone();
    let listener = move |event: &snakepit_core::events::Event<'_>| {
        let bad = match &event.kind {
            EventKind::CallEnded { outcome, .. } => *outcome != "ok",
            EventKind::WorkerExited { .. }
            | EventKind::WorkerStartFailed { .. }
            | EventKind::WorkerRestarting { .. } => true,
            _ => false,
        };
        if bad {
            seen.lock().unwrap().push(format!("{:?}", event.kind));
        }
    };
    (trouble, listener)
}

/// Two workers of the script (forked from one template if `preload`),
/// two rounds of calls on every worker, then the checks: the same workers
/// served them all, nothing went wrong, and the import-time and call-time
/// lines were logged where the docs say. Returns nothing; panics on a miss.
async fn serve_and_check(preload: bool, codec: WireCodec) {
    let what = format!("preload {preload}, {codec:?}");
    let events = Events::global();
    let bridge = if preload {
        bridge(codec).preload()
    } else {
        bridge(codec)
    };
    let (trouble, listener) = trouble_listener();
    let pool = Pool::builder(bridge)
        .size(2)
        .on_event(listener)
        .start()
        .await
        .unwrap_or_else(|e| panic!("{what}: the pool did not start: {e:?}"));
    let mut pids = pool.worker_pids();
    pids.sort();
    for _ in 0..2 {
        // Each call returns Ok (no `Error::Protocol`) or this panics.
        for reply in on_every_worker(&pool, "nap").await {
            assert!(
                pids.contains(&(reply["pid"].as_u64().unwrap() as u32)),
                "{what}: {reply}"
            );
        }
    }
    let mut after = pool.worker_pids();
    after.sort();
    assert_eq!(after, pids, "{what}: no worker was replaced");
    assert_eq!(
        *trouble.lock().unwrap(),
        Vec::<String>::new(),
        "{what}: nothing went wrong"
    );

    if preload {
        // The module ran once, in the template.
        let template = pool
            .template_pid()
            .expect("a preloaded pool has a template");
        expect_lines(events, "snakepit::template", template, &IMPORT_LINES, &what).await;
    }
    for &pid in &pids {
        if !preload {
            expect_lines(events, "snakepit::worker", pid, &IMPORT_LINES, &what).await;
        }
        // run() (in a fork of a template that protected stdout, too) keeps
        // what handlers write to stdout in the log.
        expect_lines(events, "snakepit::worker", pid, &CALL_LINES, &what).await;
    }
    pool.shutdown().await.unwrap();
}

/// bridges.md: "call `snakepit_bridge.protect_stdout()` first in such
/// scripts": a worker started directly keeps what it writes at import out
/// of the frame stream and in its log (`snakepit::worker`), in JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_time_output_after_protect_stdout_goes_to_the_workers_log_in_json() {
    serve_and_check(false, WireCodec::Json).await;
}

/// The same, in MessagePack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_time_output_after_protect_stdout_goes_to_the_workers_log_in_msgpack() {
    serve_and_check(false, WireCodec::MsgPack).await;
}

/// With `.preload()` the script, and so `protect_stdout()`, runs in the
/// template: its import-time output is the template's log
/// (`snakepit::template`), and each forked worker serves on its own
/// stdout, not the descriptor the template kept; in JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_preload_protect_stdout_in_the_template_leaves_forked_workers_serving_in_json() {
    serve_and_check(true, WireCodec::Json).await;
}

/// The same, in MessagePack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_preload_protect_stdout_in_the_template_leaves_forked_workers_serving_in_msgpack() {
    serve_and_check(true, WireCodec::MsgPack).await;
}

/// bridges.md: "Output *before* `run()` ... still goes to the pool": the
/// same script without `protect_stdout()` writes its import-time text into
/// the frame stream, and its worker cannot start: the pool takes the text
/// for a frame and finds the protocol broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_protect_stdout_import_time_output_breaks_the_start() {
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let err = Pool::builder(bridge(codec).env("PROTECT_STDOUT", "0"))
            .size(1)
            .start()
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, Error::StartFailed(_)), "{codec:?}: {err:?}");
        // The pool read the start of "import-time print" as a frame's
        // length.
        let length = u32::from_be_bytes(*b"impo");
        let text = err.to_string();
        assert!(
            text.contains("broke the protocol")
                && text.contains(&format!("frame of {length} bytes")),
            "{codec:?}: {text}"
        );
    }
}
