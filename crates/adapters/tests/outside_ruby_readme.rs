//! The promises of bridges/ruby/README.md (and the Ruby parts of
//! docs/bridges.md) that no other test shows, checked from outside: through
//! real pools of `snakepit-adapters`/`snakepit-core` running real Ruby
//! workers, and, for what concerns the worker alone, by running the worker
//! script directly with `ruby` and speaking JSON frames to it.
//!
//! The workers: `tests/workers/outside_ruby_readme.rb` is the README's
//! first example, verbatim (a test checks it still is);
//! `outside_ruby_readme_extras.rb` holds handlers for the other promises;
//! `outside_ruby_readme_after_fork.rb` the README's `after_fork` example.

#[allow(dead_code)] // this file uses only some of the shared helpers
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::readme::{
    call, call_with, start, stream_of, the_same_worker, try_start, with_session_store, HANG,
};
use common::worker;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{
    CallOptions, Error, ExitReason, HostCall, Launch, Pool, PoolBuilder, RawProcess, RemoteError,
    StreamItem, WireCodec,
};
use snakepit_tests::{eventually, workspace_root, Events};

const CODECS: [WireCodec; 2] = [WireCodec::Json, WireCodec::MsgPack];

/// Whether `ruby` can be run; says so when it cannot (the test then passes
/// as skipped, as the other Ruby tests of this crate do).
fn have_ruby() -> bool {
    #[allow(clippy::disallowed_methods)] // a probe of the interpreter, not a worker
    let found = Command::new(ruby())
        .arg("-e")
        .arg("exit 0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("skipped: ruby is not installed");
    }
    found
}

fn ruby() -> String {
    std::env::var("SNAKEPIT_RUBY").unwrap_or_else(|_| "ruby".to_owned())
}

fn readme() -> String {
    std::fs::read_to_string(workspace_root().join("bridges/ruby/README.md")).unwrap()
}

fn bridge_lib() -> PathBuf {
    workspace_root().join("bridges/ruby/lib")
}

fn example() -> Bridge {
    Bridge::ruby(worker("outside_ruby_readme.rb"))
}

fn extras() -> Bridge {
    Bridge::ruby(worker("outside_ruby_readme_extras.rb"))
}

/// A pool of one worker of the extras script under `codec`.
fn one_extras(codec: WireCodec) -> PoolBuilder {
    Pool::builder(extras().codec(codec)).size(1)
}

/// `command` with `options`, their timeout replaced by 30 s.
async fn call_in(
    pool: &Pool,
    command: &str,
    args: Value,
    options: CallOptions,
) -> Result<Value, Error> {
    call_with(
        pool,
        command,
        args,
        options.timeout(Duration::from_secs(30)),
    )
    .await
}

// ---------------------------------------------------------------------------
// A worker run directly with `ruby`, outside any pool (JSON frames).

struct Direct {
    process: RawProcess,
    stdin: Option<std::fs::File>,
    frames: mpsc::Receiver<Vec<u8>>,
    stderr: mpsc::Receiver<String>,
    /// Every stderr line seen so far.
    seen: Vec<String>,
}

impl Direct {
    /// `ruby [ -I bridges/ruby/lib ] SCRIPT --mode pool-worker`, started as
    /// a pool starts its workers (`RawProcess`: own process group, killed
    /// with the test), JSON codec. `RawProcess` sets `SNAKEPIT_CODEC` and
    /// `SNAKEPIT_WORKER_ID`: `env -u` takes out those that `env` does not
    /// name (and `RUBYLIB`, `RUBYOPT`), so that the worker sees only what
    /// the test gives it. `SNAKEPIT_CODEC` given in `env` wins.
    async fn spawn(script: &Path, with_lib: bool, env: &[(&str, &str)]) -> Direct {
        let given = |k: &str| env.iter().any(|(name, _)| *name == k);
        let mut launch = Launch::new("env");
        for var in ["SNAKEPIT_CODEC", "SNAKEPIT_WORKER_ID", "RUBYLIB", "RUBYOPT"] {
            if !given(var) {
                launch = launch.arg("-u").arg(var);
            }
        }
        for (k, v) in env {
            launch = launch.arg(format!("{k}={v}"));
        }
        launch = launch.arg(ruby());
        if with_lib {
            launch = launch.arg(format!("-I{}", bridge_lib().display()));
        }
        launch = launch.arg(script).arg("--mode").arg("pool-worker");
        let mut process = RawProcess::spawn(launch, WireCodec::Json)
            .await
            .expect("spawn ruby");
        let owned = |fd: std::io::Result<std::os::fd::OwnedFd>| std::fs::File::from(fd.unwrap());
        let mut out = owned(process.take_stdout().unwrap().into_owned_fd());
        let (ftx, frames) = mpsc::channel();
        std::thread::spawn(move || loop {
            let mut head = [0u8; 4];
            if out.read_exact(&mut head).is_err() {
                return;
            }
            let mut payload = vec![0u8; u32::from_be_bytes(head) as usize];
            if out.read_exact(&mut payload).is_err() || ftx.send(payload).is_err() {
                return;
            }
        });
        let err = owned(process.take_stderr().unwrap().into_owned_fd());
        let (etx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { return };
                if etx.send(line).is_err() {
                    return;
                }
            }
        });
        Direct {
            stdin: Some(owned(process.take_stdin().unwrap().into_owned_fd())),
            process,
            frames,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Sends `signal` (a `kill` name: TERM, INT) to the worker.
    fn signal(&self, signal: &str) {
        #[allow(clippy::disallowed_methods)] // `kill`, not a worker
        let killed = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.process.pid().to_string())
            .status()
            .unwrap();
        assert!(killed.success());
    }

    fn frame(&mut self) -> Vec<u8> {
        self.frames.recv_timeout(HANG).unwrap_or_else(|_| {
            self.drain_stderr();
            panic!("no frame from the worker; stderr: {:?}", self.seen)
        })
    }

    fn json(&mut self) -> Value {
        let payload = self.frame();
        serde_json::from_slice(&payload)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&payload)))
    }

    fn send(&mut self, message: &Value) {
        let payload = serde_json::to_vec(message).unwrap();
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(&frame).unwrap();
        stdin.flush().unwrap();
    }

    /// Sends request `id` and returns its response (chunks before it are
    /// returned too, in order).
    fn request(&mut self, id: u64, command: &str, args: Value) -> (Vec<Value>, Value) {
        self.send(&json!({"id": id, "command": command, "args": args}));
        let mut chunks = Vec::new();
        loop {
            let m = self.json();
            if m["type"] == "chunk" {
                chunks.push(m);
            } else {
                assert_eq!(m["id"], id, "{m}");
                return (chunks, m);
            }
        }
    }

    fn result(&mut self, id: u64, command: &str, args: Value) -> Value {
        let (_, reply) = self.request(id, command, args);
        assert_eq!(reply["success"], true, "{command}: {reply}");
        reply["result"].clone()
    }

    fn drain_stderr(&mut self) {
        while let Ok(line) = self.stderr.try_recv() {
            self.seen.push(line);
        }
    }

    /// Waits (up to the hang bound) for a stderr line containing `needle`.
    fn stderr_has(&mut self, needle: &str) -> bool {
        if self.seen.iter().any(|l| l.contains(needle)) {
            return true;
        }
        let end = Instant::now() + HANG;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Closes stdin and checks that the worker then exits with code 0.
    fn exits_0_at_eof(&mut self) {
        self.close_stdin();
        assert_eq!(self.wait().code(), Some(0));
    }

    fn wait(&mut self) -> ExitStatus {
        self.wait_up_to(HANG).expect("the worker did not exit")
    }

    fn wait_up_to(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.process.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn temp_path(tag: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "snakepit-orr-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

// ---------------------------------------------------------------------------
// The README's example, as written

/// bridges/ruby/README.md, "Writing a worker": the example script. The
/// worker `outside_ruby_readme.rb` must stay the README's first `ruby`
/// block verbatim, so that the tests below run the code the README shows.
#[test]
fn the_example_worker_is_the_readmes_first_ruby_block_verbatim() {
    let text = readme();
    let start = text.find("```ruby\n").expect("a ruby block") + "```ruby\n".len();
    let len = text[start..].find("```").unwrap();
    let block = &text[start..start + len];
    let script = std::fs::read_to_string(worker("outside_ruby_readme.rb")).unwrap();
    assert_eq!(script, block, "the README's example changed: copy it again");

    // The after_fork example (the README's third `ruby` block) is in
    // outside_ruby_readme_after_fork.rb as written.
    let blocks: Vec<&str> = text
        .split("```ruby\n")
        .skip(1)
        .map(|b| &b[..b.find("```").unwrap()])
        .collect();
    let hooks = blocks
        .iter()
        .find(|b| b.contains("worker.after_fork"))
        .expect("the after_fork example");
    let script = std::fs::read_to_string(worker("outside_ruby_readme_after_fork.rb")).unwrap();
    assert!(
        script.contains(hooks),
        "the README's after_fork example changed: copy it again"
    );
}

/// bridges/ruby/README.md, "Writing a worker": `greet` (the handler's
/// logger "logs go to stderr", a Hash result with `Time#iso8601`),
/// "Partial results go out as chunk frames before the final reply"
/// (`count_to`), "State kept by the pool for the caller's session, through
/// host calls" (`remember`), "An exception becomes a failed reply: {type:
/// "ArgumentError", message: "n must be positive", traceback: "..."}"
/// (`check`), "Any object answering #call works too; one taking a single
/// parameter gets just the args" (`shout`, a `Method`), and "`ping` is
/// built in". All through a real pool, in both codecs, and preloaded too
/// ("The script does not change", README, Preloading).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_serves_what_it_promises_in_both_codecs_preloaded_or_not() {
    if !have_ruby() {
        return;
    }
    let events = Events::global();
    for codec in CODECS {
        for preload in [false, true] {
            let what = format!("{codec} preload={preload}");
            let bridge = if preload {
                example().codec(codec).preload()
            } else {
                example().codec(codec)
            };
            let pool = start(with_session_store(Pool::builder(bridge).size(1))).await;
            let pid = pool.worker_pids()[0];

            let r = call(&pool, "greet", json!({"name": "Ada"})).await.unwrap();
            assert_eq!(r["greeting"], "Hello, Ada!", "{what}: {r}");
            let at = r["at"].as_str().unwrap_or_default();
            assert!(
                at.len() == 20 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
                "{what}: `at` is not Time#iso8601 in UTC: {r}"
            );
            let r = call(&pool, "greet", json!({})).await.unwrap();
            assert_eq!(r["greeting"], "Hello, world!", "{what}: {r}");
            assert!(
                eventually(20, || events
                    .lines("snakepit::worker", pid)
                    .iter()
                    .any(|l| l.contains("greeting Ada")))
                .await,
                "{what}: ctx.logger's line never reached the pool's log"
            );

            let mut stream = pool
                .execute_stream("count_to", json!({"n": 5}), CallOptions::new())
                .await
                .unwrap();
            let mut items = Vec::new();
            while let Some(item) = tokio::time::timeout(HANG, stream.next()).await.unwrap() {
                items.push(item.unwrap());
            }
            let want: Vec<StreamItem> = (1..=5)
                .map(|i| StreamItem::Chunk(json!({ "i": i })))
                .chain([StreamItem::Done(json!("done"))])
                .collect();
            assert_eq!(items, want, "{what}");
            assert_eq!(
                call(&pool, "count_to", json!({"n": 3})).await.unwrap(),
                "done",
                "{what}"
            );

            let in_session = |s: &str| CallOptions::new().session(s);
            let r = call_in(&pool, "remember", json!({"value": 1}), in_session("a"))
                .await
                .unwrap();
            assert_eq!(r, json!({"previous": null}), "{what}");
            let r = call_in(&pool, "remember", json!({"value": 2}), in_session("a"))
                .await
                .unwrap();
            assert_eq!(r, json!({"previous": 1}), "{what}");
            let r = call_in(&pool, "remember", json!({"value": 9}), in_session("b"))
                .await
                .unwrap();
            assert_eq!(r, json!({"previous": null}), "{what}: sessions are apart");

            let err = call(&pool, "check", json!({"n": 0})).await.unwrap_err();
            let remote = err
                .remote()
                .unwrap_or_else(|| panic!("{what}: {err:?}"))
                .clone();
            assert_eq!(remote.kind.as_deref(), Some("ArgumentError"), "{what}");
            assert_eq!(remote.message, "n must be positive", "{what}");
            assert!(
                remote
                    .traceback
                    .as_deref()
                    .is_some_and(|t| t.contains("outside_ruby_readme.rb")),
                "{what}: the traceback names the script: {remote:?}"
            );
            assert_eq!(
                call(&pool, "check", json!({"n": 2})).await.unwrap(),
                true,
                "{what}"
            );
            assert_eq!(
                call(&pool, "shout", json!({"text": "hi"})).await.unwrap(),
                "HI",
                "{what}"
            );
            let r = call(&pool, "ping", json!({})).await.unwrap();
            assert_eq!(r["status"], "ok", "{what}: {r}");
            assert_eq!(pool.worker_pids(), vec![pid], "{what}: replaced");
            pool.shutdown().await.unwrap();
        }
    }
}

/// docs/bridges.md, Calls: "A stream never loses a chunk silently. It
/// keeps up to 256 chunks its reader has not taken yet; when the worker
/// sends more: a worker that runs one call at a time (Python and Ruby by
/// default) is made to wait ... Nothing else runs on that worker
/// meanwhile, ... the pool's other workers serve the other calls." The
/// README example's `count_to` with 2,000 chunks, its reader stalled after
/// the first: another call is served by the other worker meanwhile, and
/// then every chunk arrives, in order, before the final result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_reader_of_a_ruby_stream_loses_no_chunk_and_holds_up_only_its_worker() {
    if !have_ruby() {
        return;
    }
    let pool = start(Pool::builder(example()).size(2)).await;
    let n = 2000;
    let mut stream = pool
        .execute_stream(
            "count_to",
            json!({ "n": n }),
            CallOptions::new().timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    let first = tokio::time::timeout(HANG, stream.next()).await.unwrap();
    assert_eq!(
        first.map(Result::unwrap),
        Some(StreamItem::Chunk(json!({"i": 1})))
    );
    // Stalled: the worker fills the stream's buffer and its pipe, then waits.
    let r = call(&pool, "shout", json!({"text": "beside"}))
        .await
        .unwrap();
    assert_eq!(r, "BESIDE", "the other worker serves meanwhile");
    let mut i = 1;
    let mut done = None;
    while let Some(item) = tokio::time::timeout(HANG, stream.next()).await.unwrap() {
        assert!(done.is_none(), "something after the final result");
        match item.unwrap() {
            StreamItem::Chunk(c) => {
                i += 1;
                assert_eq!(c, json!({ "i": i }), "chunks in order, none lost");
            }
            StreamItem::Done(v) => done = Some(v),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(i, n, "chunks received");
    assert_eq!(done, Some(json!("done")));
    pool.shutdown().await.unwrap();
}

/// bridges/ruby/README.md: "Outside a pool, run it with `ruby -I
/// path/to/bridges/ruby/lib my_worker.rb`"; "the codec comes from
/// SNAKEPIT_CODEC" ... "else JSON"; "Its `hello` frame announces
/// `sigint: true`, `cancel: false`, `streaming: true`, `host_calls: true`,
/// `pipeline: true`" and "`max_concurrency: 1`"; "worker.run # serves
/// until the pool closes stdin, then returns"; "the end of stdin stops the
/// worker with exit status 0". The README's example, started by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_example_runs_by_hand_with_ruby_dash_i() {
    if !have_ruby() {
        return;
    }
    let mut w = Direct::spawn(&worker("outside_ruby_readme.rb"), true, &[]).await;
    let hello = w.json();
    assert_eq!(hello["type"], "hello", "{hello}");
    assert_eq!(
        hello["capabilities"],
        json!({"max_concurrency": 1, "sigint": true, "cancel": false, "streaming": true,
               "host_calls": true, "pipeline": true}),
        "{hello}"
    );
    let r = w.result(1, "greet", json!({"name": "Bob"}));
    assert_eq!(r["greeting"], "Hello, Bob!", "{r}");
    w.send(&json!({"id": 2, "command": "count_to", "args": {"n": 2}, "stream": true}));
    let frames: Vec<Value> = (0..3).map(|_| w.json()).collect();
    assert_eq!(frames[0]["type"], "chunk", "{frames:?}");
    assert_eq!(frames[0]["data"], json!({"i": 1}), "{frames:?}");
    assert_eq!(frames[1]["data"], json!({"i": 2}), "{frames:?}");
    assert_eq!(frames[2]["result"], "done", "{frames:?}");
    assert!(w.stderr_has("greeting Bob"), "logger: {:?}", w.seen);
    w.close_stdin();
    let status = w.wait();
    assert_eq!(status.code(), Some(0), "{status:?}: {:?}", w.seen);
}

/// bridges/ruby/README.md: "The bundled generic worker, `generic_worker.rb`,
/// serves `ping`, `echo`, `compute` (`add`, `subtract`, `multiply`,
/// `divide`, `power`, `sqrt`; errors are failed replies of type
/// `ArgumentError`) and `info`: `ruby generic_worker.rb --mode
/// pool-worker`" (run from the checkout as shown: no `-I`, no `RUBYLIB`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generic_worker_runs_as_shown_from_a_plain_checkout() {
    if !have_ruby() {
        return;
    }
    let script = workspace_root().join("bridges/ruby/generic_worker.rb");
    let mut w = Direct::spawn(&script, false, &[]).await;
    assert_eq!(w.json()["type"], "hello");
    let mut id = 0;
    let mut next = || {
        id += 1;
        id
    };
    for (op, a, b, want) in [
        ("add", 2, 3, json!(5)),
        ("subtract", 2, 3, json!(-1)),
        ("multiply", 2, 3, json!(6)),
        ("power", 2, 3, json!(8)),
    ] {
        let r = w.result(next(), "compute", json!({"operation": op, "a": a, "b": b}));
        assert_eq!(r["result"], want, "{op}: {r}");
    }
    let r = w.result(
        next(),
        "compute",
        json!({"operation": "divide", "a": 1, "b": 4}),
    );
    assert_eq!(r["result"].as_f64(), Some(0.25), "{r}");
    let r = w.result(next(), "compute", json!({"operation": "sqrt", "a": 9}));
    assert_eq!(r["result"].as_f64(), Some(3.0), "{r}");
    for args in [
        json!({"operation": "divide", "a": 1, "b": 0}),
        json!({"operation": "sqrt", "a": -1}),
        json!({"operation": "modulo", "a": 1, "b": 2}),
        json!({"operation": "add", "a": "1", "b": 2}),
    ] {
        let (_, reply) = w.request(next(), "compute", args.clone());
        assert_eq!(reply["success"], false, "{args}: {reply}");
        assert_eq!(reply["error"]["type"], "ArgumentError", "{args}: {reply}");
    }
    let r = w.result(next(), "echo", json!({"x": [1, "two"]}));
    assert_eq!(r["echoed"], json!({"x": [1, "two"]}), "{r}");
    let i = next();
    assert!(w.result(i, "info", json!({})).is_object());
    assert_eq!(w.result(next(), "ping", json!({}))["status"], "ok");
    w.exits_0_at_eof();
}

// ---------------------------------------------------------------------------
// Handlers

/// bridges/ruby/README.md, "Writing a worker": "Any object answering
/// #call works too; one taking a single parameter gets just the args."
/// docs/bridges.md, Ruby: "`worker.command(name, callable)` with any object
/// answering `#call`". An object of a class of the user's whose `call`
/// takes one parameter, one whose `call` takes two, and a one-parameter
/// lambda.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_object_answering_call_with_one_parameter_gets_just_the_args() {
    if !have_ruby() {
        return;
    }
    let pool = start(Pool::builder(extras()).size(1)).await;
    assert_eq!(
        call(&pool, "lambda_one", json!({"text": "abc"}))
            .await
            .unwrap(),
        "cba"
    );
    let r = call(&pool, "object_two", json!({"text": "abc"}))
        .await
        .unwrap();
    assert_eq!(r, json!({"text": "abc", "command": "object_two"}));
    match call(&pool, "object_one", json!({"text": "abc"})).await {
        Ok(r) => assert_eq!(r, "ABC"),
        Err(e) => panic!("an object whose call(args) takes one parameter: {e}"),
    }
    pool.shutdown().await.unwrap();
}

/// bridges/ruby/README.md: "`ping` is built in (the pool's init and health
/// checks use it); register your own `ping` to replace it." docs/bridges.md:
/// "a worker that cannot answer it with `{"status": "ok", ...}` never gets
/// calls ... registering your own `ping` replaces it." A worker's own ping
/// answers the pool's `ping` calls; one that answers a status other than
/// "ok" fails `start()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_of_ones_own_replaces_the_built_in_one() {
    if !have_ruby() {
        return;
    }
    let pool = start(Pool::builder(extras().env("ORR_OWN_PING", "ok")).size(1)).await;
    let r = call(&pool, "ping", json!({"x": 1})).await.unwrap();
    assert_eq!(r["mine"], true, "{r}");
    assert_eq!(r["args"], json!({"x": 1}), "{r}");
    pool.shutdown().await.unwrap();

    let bad = Pool::builder(extras().env("ORR_OWN_PING", "bad"))
        .size(1)
        .configure(|c| c.worker_init_timeout = Duration::from_secs(20));
    match try_start(bad).await {
        Err(Error::StartFailed(_)) => {}
        Ok(pool) => {
            let r = call(&pool, "pid", json!({})).await;
            pool.shutdown().await.unwrap();
            panic!("a worker whose ping says status \"broken\" got calls: {r:?}");
        }
        Err(e) => panic!("{e:?}"),
    }
}

/// bridges/ruby/README.md, The context: "`ctx.worker_id` | this worker's id
/// in the pool (`SNAKEPIT_WORKER_ID`, else the init ping's), or `nil`".
/// Run by hand: the variable wins over the init ping's `worker_id`; without
/// it (or with it empty) the init ping's is used; a ping that is not the
/// init ping does not set it; with neither it is `nil`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctx_worker_id_is_snakepit_worker_id_else_the_init_pings_else_nil() {
    if !have_ruby() {
        return;
    }
    let script = worker("outside_ruby_readme_extras.rb");
    let init = json!({"initialization": true, "worker_id": "from-ping"});
    for (env, pings, want) in [
        (
            vec![("SNAKEPIT_WORKER_ID", "from-env")],
            vec![init.clone()],
            json!("from-env"),
        ),
        (vec![], vec![init.clone()], json!("from-ping")),
        (
            vec![("SNAKEPIT_WORKER_ID", "")],
            vec![init.clone()],
            json!("from-ping"),
        ),
        (
            vec![],
            vec![json!({"health_check": true, "worker_id": "not-init"})],
            Value::Null,
        ),
        (vec![], vec![], Value::Null),
    ] {
        let mut w = Direct::spawn(&script, true, &env).await;
        assert_eq!(w.json()["type"], "hello");
        let mut id = 0;
        for ping in &pings {
            id += 1;
            assert_eq!(w.result(id, "ping", ping.clone())["status"], "ok");
        }
        let r = w.result(id + 1, "worker_id", json!({}));
        assert_eq!(r["worker_id"], want, "env {env:?}, pings {pings:?}");
    }
}

// ---------------------------------------------------------------------------
// Codecs

/// bridges/ruby/README.md, Codecs: "JSON uses the standard library. Hashes
/// go out compact with their keys in insertion order; symbol keys become
/// strings." The raw payload of a reply, as the worker wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_replies_are_compact_with_keys_in_insertion_order() {
    if !have_ruby() {
        return;
    }
    let mut w = Direct::spawn(&worker("outside_ruby_readme_extras.rb"), true, &[]).await;
    w.frame(); // hello
    w.send(&json!({"id": 1, "command": "ordered", "args": {}}));
    let payload = String::from_utf8(w.frame()).unwrap();
    assert!(
        payload.contains(r#""result":{"b":1,"a":2,"c":3,"nested":{"z":1,"y":2}}"#),
        "{payload}"
    );
    assert!(
        !payload.contains(' ') && !payload.contains('\n'),
        "not compact: {payload}"
    );
}

/// bridges/ruby/README.md, Codecs: "The codec is the `codec:` argument of
/// `Worker.new` (`"json"` or `"msgpack"`), else the `SNAKEPIT_CODEC`
/// environment variable the pool sets, else JSON." The first byte of the
/// hello frame says which: `{` for JSON, a MessagePack map (0x80..=0x8f)
/// otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_codec_argument_wins_over_snakepit_codec_which_wins_over_json() {
    if !have_ruby() {
        return;
    }
    let script = worker("outside_ruby_readme_extras.rb");
    let msgpack_map = |b: u8| (0x80..=0x8f).contains(&b) || b == 0xde || b == 0xdf;
    for (env, json_hello) in [
        (vec![], true),
        (vec![("SNAKEPIT_CODEC", "msgpack")], false),
        (vec![("SNAKEPIT_CODEC", "json")], true),
        (
            vec![("SNAKEPIT_CODEC", "msgpack"), ("ORR_CODEC_ARG", "json")],
            true,
        ),
        (
            vec![("SNAKEPIT_CODEC", "json"), ("ORR_CODEC_ARG", "msgpack")],
            false,
        ),
        (vec![("ORR_CODEC_ARG", "msgpack")], false),
    ] {
        let mut w = Direct::spawn(&script, true, &env).await;
        let first = w.frame()[0];
        if json_hello {
            assert_eq!(first, b'{', "{env:?}: a JSON hello");
        } else {
            assert!(
                msgpack_map(first),
                "{env:?}: a MessagePack hello, got {first:#x}"
            );
        }
    }
}

/// bridges/ruby/README.md, Codecs, MessagePack: "Ruby strings in UTF-8 (or
/// US-ASCII) are sent as `str`" (a `bin` would fail `execute`, which has no
/// binary type), "**MessagePack** uses the `msgpack` gem, loaded only when
/// this codec is chosen", and "Keys the pool sends arrive as they are (an Integer
/// key stays an Integer)" (under JSON they are strings: JSON has no other
/// key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgpack_sends_us_ascii_as_str_and_integer_keys_from_the_pool_stay_integers() {
    if !have_ruby() {
        return;
    }
    #[derive(Serialize)]
    struct Args {
        map: HashMap<u32, String>,
    }
    let args = Args {
        map: HashMap::from([(7, "seven".to_owned())]),
    };
    for codec in CODECS {
        let pool = start(one_extras(codec)).await;
        let r = call(&pool, "msgpack_loaded", json!({})).await.unwrap();
        assert_eq!(
            r["loaded"],
            codec == WireCodec::MsgPack,
            "{codec}: the msgpack gem is \"loaded only when this codec is chosen\""
        );
        let r = call(&pool, "ascii", json!({}))
            .await
            .unwrap_or_else(|e| panic!("{codec}: {e:?}"));
        assert_eq!(r, json!({"v": "plain", "u": "caf\u{e9}"}), "{codec}");
        let r: Value = pool
            .call("key_classes", &args, CallOptions::new())
            .await
            .unwrap_or_else(|e| panic!("{codec}: {e:?}"));
        let class = if codec == WireCodec::MsgPack {
            "Integer"
        } else {
            "String"
        };
        assert_eq!(
            r,
            json!({"classes": [class], "keys": ["7"]}),
            "{codec}: the key's class in the handler"
        );
        pool.shutdown().await.unwrap();
    }
}

/// bridges/ruby/README.md, Codecs: "A chunk or `call_host` arguments the
/// codec cannot represent raise that error in the handler, and nothing is
/// sent", where "that error" is "the error the codec raised (for such a
/// string `JSON::GeneratorError` under JSON, `SnakepitBridge::EncodeError`
/// under MessagePack)". `ctx.call_host("count", {"v" => bad})` with a NaN
/// or a `"caf\xff"` tagged UTF-8 under JSON, that string or an arbitrary
/// object under MessagePack: the handler sees the codec's error, the host
/// function is not called, and the same handler's next host call works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_host_arguments_the_codec_cannot_represent_raise_and_nothing_is_sent() {
    if !have_ruby() {
        return;
    }
    for (codec, cases) in [
        (
            WireCodec::Json,
            [
                ("nan", Some("JSON::GeneratorError")),
                ("bad_string", Some("JSON::GeneratorError")),
            ],
        ),
        (
            WireCodec::MsgPack,
            [
                ("bad_string", Some("SnakepitBridge::EncodeError")),
                // Whatever the msgpack gem raises for it.
                ("object", None),
            ],
        ),
    ] {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let builder = one_extras(codec).host_function("count", move |call: HostCall| {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok::<_, RemoteError>(json!({"n": n, "v": call.args["v"]})) }
        });
        let pool = start(builder).await;
        for (i, (what, error)) in cases.into_iter().enumerate() {
            let r = call(&pool, "bad_host_args", json!({ "what": what }))
                .await
                .unwrap_or_else(|e| panic!("{codec} {what}: {e:?}"));
            match error {
                Some(error) => assert_eq!(r["raised"], error, "{codec} {what}: {r}"),
                None => assert!(r["raised"].is_string(), "{codec} {what}: {r}"),
            }
            assert_eq!(
                r["then"],
                json!({"n": i + 1, "v": 1}),
                "{codec} {what}: {r}"
            );
            assert_eq!(
                calls.load(Ordering::SeqCst),
                i + 1,
                "{codec} {what}: host calls made"
            );
        }
        pool.shutdown().await.unwrap();
    }
}

/// bridges/ruby/README.md, Codecs: "An error's message and traceback
/// always go out as valid UTF-8: invalid bytes become U+FFFD." Through a
/// pool, in both codecs: a message `"caf\xff"` tagged UTF-8, a binary
/// message, a backtrace naming a file whose name holds `\xff`, each a
/// failed reply of its class (not a broken frame, not an encode error);
/// and a message valid in ISO-8859-1 arrives as its text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_messages_and_tracebacks_with_invalid_bytes_arrive_as_valid_utf8() {
    if !have_ruby() {
        return;
    }
    for codec in CODECS {
        let pool = start(one_extras(codec)).await;
        let pid = pool.worker_pids()[0];
        for (mode, message, in_traceback) in [
            ("utf8", "caf\u{fffd}", None),
            ("binary", "bin\u{fffd}\u{fffd}", None),
            ("latin1", "caf\u{e9}", None),
            (
                "backtrace",
                "from a bad file name",
                Some("file\u{fffd}.rb:1"),
            ),
        ] {
            let err = call(&pool, "bad_error", json!({ "mode": mode }))
                .await
                .unwrap_err();
            let remote = err
                .remote()
                .unwrap_or_else(|| panic!("{codec} {mode}: {err:?}"))
                .clone();
            assert_eq!(
                remote.kind.as_deref(),
                Some("RuntimeError"),
                "{codec} {mode}: {remote:?}"
            );
            assert_eq!(remote.message, message, "{codec} {mode}");
            if let Some(line) = in_traceback {
                assert!(
                    remote
                        .traceback
                        .as_deref()
                        .is_some_and(|t| t.contains(line)),
                    "{codec} {mode}: {remote:?}"
                );
            }
        }
        assert_eq!(pool.worker_pids(), vec![pid], "{codec}");
        pool.shutdown().await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// Context: session aliases, chunks from threads

/// docs/bridges.md, "The context, side by side", Ruby: "`ctx.session.get(k)`,
/// `.set(k, v)`, `.delete(k)` (also `[]`, `[]=`)"; bridges/ruby/README.md:
/// "`delete` returns whether the key existed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_brackets_read_and_write_the_pools_store() {
    if !have_ruby() {
        return;
    }
    let pool = start(with_session_store(Pool::builder(extras()).size(1))).await;
    let options = CallOptions::new().session("s-1");
    let r = call_in(
        &pool,
        "session_alias",
        json!({"key": "k", "value": [1, {"a": "b"}]}),
        options,
    )
    .await
    .unwrap();
    assert_eq!(
        r,
        json!({"before": null, "after": [1, {"a": "b"}], "existed": true, "again": false})
    );
    pool.shutdown().await.unwrap();
}

/// bridges/ruby/README.md, The context: "`ctx.call_host(function, args =
/// {})` | call a function the host registered and wait for its answer; a
/// failure raises `SnakepitBridge::HostCallError` (`#error_type`,
/// `#message`)"; docs/bridges.md, "Host functions and the session store":
/// the `lookup` example, `ctx.call_host("lookup", {"id": 7})` returns
/// `{"id": 7, "name": "Ada"}`, and "an `Err` raises `HostCallError` ...
/// carrying the error's type". The type and the message of the host's
/// `RemoteError` both reach the handler, in both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_functions_result_and_its_error_type_and_message_reach_the_handler() {
    if !have_ruby() {
        return;
    }
    for codec in CODECS {
        let builder = one_extras(codec).host_function("lookup", |call: HostCall| async move {
            match call.args["id"].as_i64() {
                Some(id) => Ok(json!({"id": id, "name": "Ada"})),
                None => Err(RemoteError::new("ValueError", "lookup needs an integer id")),
            }
        });
        let pool = start(builder).await;
        let r = call(&pool, "lookup", json!({"id": 7})).await.unwrap();
        assert_eq!(r, json!({"ok": {"id": 7, "name": "Ada"}}), "{codec}");
        let r = call(&pool, "lookup", json!({"id": "seven"})).await.unwrap();
        assert_eq!(
            r,
            json!({"error_type": "ValueError", "message": "lookup needs an integer id",
                   "class": "SnakepitBridge::HostCallError"}),
            "{codec}"
        );
        pool.shutdown().await.unwrap();
    }
}

/// docs/bridges.md, Codecs: "Bytes a handler passes to the host (in a host
/// call's arguments, such as `ctx.session.set(key, b"...")`) fail that
/// host call with `InvalidArgument`, and the worker serves on." A Ruby
/// binary String (`"\x00\xff".b`, `bin` under MessagePack) given to
/// `ctx.session.set`: `HostCallError` of type `InvalidArgument`, nothing
/// stored, and the same handler's next host call works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_strings_passed_to_the_host_under_msgpack_fail_that_host_call_only() {
    if !have_ruby() {
        return;
    }
    let builder = Pool::builder(extras().codec(WireCodec::MsgPack)).size(1);
    let pool = start(with_session_store(builder)).await;
    let pid = pool.worker_pids()[0];
    let r = call_in(
        &pool,
        "binary_to_host",
        json!({}),
        CallOptions::new().session("s"),
    )
    .await
    .unwrap();
    assert_eq!(r, json!({"set": "InvalidArgument", "get": null}));
    assert_eq!(pool.worker_pids(), vec![pid]);
    pool.shutdown().await.unwrap();
}

/// bridges/ruby/README.md, The context: "Call the context's methods from
/// the handler's thread; `chunk` alone is also safe from other threads",
/// and "`ctx.chunk(data)` ... returns false, sending nothing, once the call
/// is answered (from a thread the handler left running)". Three threads
/// and the handler chunk at once: every chunk arrives whole, each thread's
/// in its order, all before the reply. A thread that chunks after its
/// handler returned gets `false`, and the worker serves on.
/// (docs/bridges.md's table says Ruby's `ctx.chunk(data)` "always sends",
/// which this late case contradicts: the README is right.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_from_other_threads_arrive_whole_and_a_late_one_returns_false() {
    if !have_ruby() {
        return;
    }
    for codec in CODECS {
        let pool = start(one_extras(codec)).await;
        let pid = pool.worker_pids()[0];
        let (n, threads) = (40, 3);
        let mut stream = stream_of(
            &pool,
            "threaded_chunks",
            json!({"n": n, "threads": threads}),
        )
        .await;
        let mut next_i: HashMap<String, u64> = HashMap::new();
        let mut done = None;
        while let Some(item) = tokio::time::timeout(HANG, stream.next()).await.unwrap() {
            assert!(done.is_none(), "{codec}: something after the reply");
            match item.unwrap_or_else(|e| panic!("{codec}: {e:?}")) {
                StreamItem::Chunk(c) => {
                    let who = c["t"].to_string();
                    let want = next_i.entry(who.clone()).or_default();
                    assert_eq!(c["i"], *want, "{codec}: {who}'s chunks in order");
                    *want += 1;
                }
                StreamItem::Done(v) => done = Some(v),
                other => panic!("{codec}: {other:?}"),
            }
        }
        assert_eq!(done, Some(json!("joined")), "{codec}");
        assert_eq!(next_i.len(), threads + 1, "{codec}: {next_i:?}");
        assert!(next_i.values().all(|&i| i == n), "{codec}: {next_i:?}");

        assert_eq!(
            call(&pool, "leave_thread", json!({})).await.unwrap(),
            "answered"
        );
        let r = call(&pool, "late_result", json!({})).await.unwrap();
        assert_eq!(r["chunk_returned"], false, "{codec}: {r}");
        the_same_worker(&pool, pid, &codec.to_string());
        pool.shutdown().await.unwrap();
    }
}

/// bridges/ruby/README.md, The context: "`chunk` alone is also safe from
/// other threads", with "`ctx.call_host` ... wait for its answer": a
/// progress thread chunks while the handler waits in host calls (the
/// handler reads its `host_reply` frames while the thread writes chunk
/// frames). Every chunk arrives in order before the reply, and every host
/// call gets its own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_chunking_while_the_handler_waits_in_host_calls() {
    if !have_ruby() {
        return;
    }
    for codec in CODECS {
        let builder = one_extras(codec).host_function("echo", |call: HostCall| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, RemoteError>(call.args)
        });
        let pool = start(builder).await;
        let (n, calls) = (150, 8);
        let mut stream = stream_of(
            &pool,
            "chunks_during_host_calls",
            json!({"n": n, "calls": calls}),
        )
        .await;
        let (mut i, mut done) = (0, None);
        while let Some(item) = tokio::time::timeout(HANG, stream.next()).await.unwrap() {
            assert!(done.is_none(), "{codec}: something after the reply");
            match item.unwrap_or_else(|e| panic!("{codec}: {e:?}")) {
                StreamItem::Chunk(c) => {
                    assert_eq!(c, json!({ "i": i }), "{codec}");
                    i += 1;
                }
                StreamItem::Done(v) => done = Some(v),
                other => panic!("{codec}: {other:?}"),
            }
        }
        assert_eq!(i, n, "{codec}: chunks");
        let want: Vec<Value> = (0..calls).map(|k| json!({ "k": k })).collect();
        assert_eq!(done, Some(Value::Array(want)), "{codec}");
        pool.shutdown().await.unwrap();
    }
}

// ---------------------------------------------------------------------------
// Cancellation

async fn cancel_pool() -> Pool {
    start(
        Pool::builder(extras())
            .size(1)
            // The worker must have all the time it needs to answer.
            .configure(|c| {
                c.shutdown_grace_period = Duration::from_secs(40);
                // The next call waits behind the cancelled one however long
                // it takes on a loaded machine.
                c.queue_timeout = Duration::from_secs(50);
            }),
    )
    .await
}

/// Runs `command` with a deadline of 1 s and expects `CallTimeout`, then
/// waits for the same worker to serve the next call (which queues behind
/// the cancelled one until it answered).
async fn given_up(pool: &Pool, command: &str, args: Value) {
    let pid = pool.worker_pids()[0];
    // Long enough for the handler to be well under way when it passes.
    let options = CallOptions::new().timeout(Duration::from_secs(1));
    let r = tokio::time::timeout(HANG, pool.execute_with(command, args, options))
        .await
        .expect("hung");
    assert!(
        matches!(r, Err(Error::CallTimeout { .. })),
        "{command}: {r:?}"
    );
    let r = call(pool, "pid", json!({})).await.unwrap();
    assert_eq!(r["pid"], pid, "{command}: the worker was replaced");
    let s = pool.stats();
    assert_eq!((s.crashes, s.restarts), (0, 0), "{command}: {s:?}");
}

/// bridges/ruby/README.md, "Concurrency and cancellation": "If a handler
/// is running, `SnakepitBridge::Cancelled` is raised in it (wherever it is:
/// `sleep`, IO, Ruby code, ...)" and "`Cancelled` is an `Interrupt`, not a
/// `StandardError`, so a plain `rescue => e` does not swallow it; use
/// `ensure` for clean-up." A handler blocked in `sleep`, in a read of a
/// pipe, and in a busy Ruby loop, each inside `begin ... rescue => e`: the
/// rescue never runs, the `ensure` sees `Cancelled`, and the worker stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_lands_in_sleep_io_and_ruby_code_and_a_plain_rescue_does_not_catch_it() {
    if !have_ruby() {
        return;
    }
    let pool = cancel_pool().await;
    for mode in ["sleep", "io", "ruby"] {
        let note = temp_path(&format!("rescue-{mode}"));
        given_up(&pool, "plain_rescue", json!({"note": note, "mode": mode})).await;
        let lines = std::fs::read_to_string(&note).unwrap_or_default();
        assert_eq!(
            lines, "ensure SnakepitBridge::Cancelled\n",
            "{mode}: what the handler did"
        );
        let _ = std::fs::remove_file(note);
    }
    pool.shutdown().await.unwrap();
}

/// bridges/ruby/README.md, "Concurrency and cancellation": "Code that
/// SIGINT cannot interrupt (a long call inside a C extension) is
/// interrupted when it returns to Ruby". A handler in OpenSSL's PBKDF2 (a
/// C call of about two seconds) when its deadline passes: the C call ends,
/// and the Ruby loop after it (seconds long) is cut short; the worker
/// serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_c_call_is_interrupted_when_it_returns_to_ruby() {
    if !have_ruby() {
        return;
    }
    let note = temp_path("c-call");
    let pool = cancel_pool().await;
    given_up(
        &pool,
        "c_call",
        json!({"note": note, "iterations": 4_000_000}),
    )
    .await;
    let lines = std::fs::read_to_string(&note).unwrap_or_default();
    assert!(lines.starts_with("start\n"), "{lines:?}");
    assert!(
        !lines.contains("end"),
        "the Ruby code after the C call ran to its end: {lines:?}"
    );
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_file(note);
}

/// bridges/ruby/README.md, The context: "`ctx.cancelled?` | whether the
/// request was cancelled", "`ctx.check_cancelled!` | raise
/// `SnakepitBridge::Cancelled` if it was"; Concurrency and cancellation:
/// "loops can also poll `ctx.cancelled?`" and "`Cancelled` is an
/// `Interrupt`". A loop that holds the exception back
/// (`Thread.handle_interrupt`) and polls sees the pool's cancellation, and
/// `check_cancelled!` then raises it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_polling_cancelled_sees_the_cancellation_and_check_raises_it() {
    if !have_ruby() {
        return;
    }
    let note = temp_path("poll");
    let pool = cancel_pool().await;
    given_up(&pool, "poll", json!({"note": note})).await;
    let lines = std::fs::read_to_string(&note).unwrap_or_default();
    assert_eq!(
        lines, "polled true\nraised SnakepitBridge::Cancelled is_interrupt=true\n",
        "what the handler saw"
    );
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_file(note);
}

/// bridges/ruby/README.md, "Concurrency and cancellation": "A `cancel`
/// frame that arrives while the handler waits in `call_host` cancels it the
/// same way" (as SIGINT: "the reply is a failed reply of type
/// `Cancelled`"). Run by hand, without any SIGINT: the README example's
/// `remember` waits in `ctx.session.get`; a `cancel` for another id changes
/// nothing, one for its own id answers it `Cancelled`; the late
/// `host_reply` is ignored and the worker serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_frame_during_call_host_cancels_the_handler_without_sigint() {
    if !have_ruby() {
        return;
    }
    let mut w = Direct::spawn(&worker("outside_ruby_readme.rb"), true, &[]).await;
    w.json(); // hello
    w.send(&json!({"id": 4, "command": "remember", "args": {"value": 1}, "session_id": "s"}));
    let host_call = w.json();
    assert_eq!(host_call["type"], "host_call", "{host_call}");
    assert_eq!(host_call["function"], "session.get", "{host_call}");
    w.send(&json!({"type": "cancel", "id": 99}));
    w.send(&json!({"type": "cancel", "id": 4}));
    let reply = w.json();
    assert_eq!(reply["id"], 4, "{reply}");
    assert_eq!(reply["success"], false, "{reply}");
    assert_eq!(reply["error"]["type"], "Cancelled", "{reply}");
    w.send(&json!({"type": "host_reply", "id": host_call["id"], "success": true, "result": 7}));
    let r = w.result(5, "shout", json!({"text": "next"}));
    assert_eq!(r, "NEXT");
    w.exits_0_at_eof();
}

// ---------------------------------------------------------------------------
// Errors and leaving the process

/// bridges/ruby/README.md, Errors: "Every exception a handler raises is a
/// failed reply of its class, and the worker serves on"; "Only leaving the
/// process ends the worker". Exceptions whose own methods fail when the
/// bridge reads them: a `message` built from a record that is `nil` (it
/// raises `NoMethodError`), and a `backtrace` overridden to return a
/// String. Each must be a failed reply (of its class, or at worst of the
/// error reading it raised), and the worker must serve the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_whose_message_raises_is_still_a_failed_reply_and_the_worker_serves_on() {
    if !have_ruby() {
        return;
    }
    let pool = start(Pool::builder(extras()).size(1)).await;
    let mut broken = Vec::new();
    for command in ["record_error", "odd_backtrace"] {
        let before = call(&pool, "pid", json!({})).await.unwrap()["pid"].clone();
        match call(&pool, command, json!({})).await {
            Err(Error::Remote { .. }) => {}
            other => broken.push(format!("{command}: {other:?}")),
        }
        // Served by the same worker, or (if it died) by its replacement.
        let after = call(&pool, "pid", json!({})).await;
        match after {
            Ok(r) if r["pid"] == before => {}
            other => broken.push(format!("{command}: the worker did not serve on: {other:?}")),
        }
    }
    pool.shutdown().await.unwrap();
    assert!(broken.is_empty(), "{broken:#?}");
}

/// bridges/ruby/README.md, Errors: "a `SignalException` that is not an
/// `Interrupt` (`raise SignalException, "TERM"`) ends it as its signal
/// would. The pool then fails the calls in flight on it with
/// `Error::WorkerCrashed` and starts a replacement." docs/bridges.md, Ruby,
/// the same. (A worker that merely exited 0 on its SIGTERM trap would not
/// end "as its signal would".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_exception_that_is_not_an_interrupt_ends_the_worker_as_its_signal_would() {
    if !have_ruby() {
        return;
    }
    let pool = start(Pool::builder(extras()).size(1)).await;
    for (sig, number) in [("TERM", libc::SIGTERM), ("HUP", libc::SIGHUP)] {
        let before = call(&pool, "pid", json!({})).await.unwrap()["pid"]
            .as_u64()
            .unwrap();
        let err = call(&pool, "signal_exception", json!({ "sig": sig }))
            .await
            .unwrap_err();
        let Error::WorkerCrashed(crash) = &err else {
            panic!("{sig}: {err:?}")
        };
        assert_eq!(u64::from(crash.pid), before, "{sig}");
        assert_eq!(crash.exit, ExitReason::Signal(number), "{sig}: {crash}");
        assert!(
            eventually(30, || pool
                .worker_pids()
                .first()
                .is_some_and(|p| u64::from(*p) != before))
            .await,
            "{sig}: not replaced"
        );
        let after = call(&pool, "pid", json!({})).await.unwrap()["pid"]
            .as_u64()
            .unwrap();
        assert_ne!(after, before, "{sig}");
    }
    pool.shutdown().await.unwrap();
}

/// bridges/ruby/README.md, "Concurrency and cancellation": "SIGTERM or the
/// end of stdin stops the worker with exit status 0", also while a handler
/// runs; "worker.run # serves until the pool closes stdin, then returns"
/// (docs/bridges.md: "`worker.run` returns at EOF"): the script goes on
/// after `run` and ends with its own status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_handler_exits_0_and_run_returns_at_eof() {
    if !have_ruby() {
        return;
    }
    let script = worker("outside_ruby_readme_extras.rb");
    let mut w = Direct::spawn(&script, true, &[("ORR_EXIT_AFTER_RUN", "5")]).await;
    w.frame();
    w.close_stdin();
    let status = w.wait();
    assert!(w.stderr_has("orr: worker.run returned"), "{:?}", w.seen);
    assert_eq!(status.code(), Some(5), "the script's own exit after run");

    let mut w = Direct::spawn(&script, true, &[("ORR_EXIT_AFTER_RUN", "5")]).await;
    w.frame();
    w.send(&json!({"id": 1, "command": "print_then_sleep",
                   "args": {"text": "in-handler-8812", "ms": 60_000}}));
    assert!(w.stderr_has("in-handler-8812"), "{:?}", w.seen);
    w.signal("TERM");
    let status = w.wait();
    assert_eq!(status.code(), Some(0), "{status:?}: {:?}", w.seen);
}

/// bridges/ruby/README.md, "Concurrency and cancellation": "SIGTERM or the
/// end of stdin stops the worker with exit status 0." A handler written
/// with `rescue Exception` around its work (common in Ruby code that
/// retries) swallows the `SystemExit` the bridge's TERM trap raises in it:
/// the worker finishes the call and serves on, and only the pool's SIGKILL
/// after its grace period ends it. (The bridge guards SIGINT against the
/// same swallowing: a cancelled handler's reply is `Cancelled` whatever it
/// did; SIGTERM has no such guard.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_worker_even_when_the_handler_rescues_exception() {
    if !have_ruby() {
        return;
    }
    let script = worker("outside_ruby_readme_extras.rb");
    let mut w = Direct::spawn(&script, true, &[]).await;
    w.frame();
    w.send(&json!({"id": 1, "command": "rescue_everything",
                   "args": {"text": "rescuing-3391", "ms": 3000}}));
    assert!(w.stderr_has("rescuing-3391"), "{:?}", w.seen);
    w.signal("TERM");
    // The handler runs 3 s; the worker must be gone after it at the latest,
    // and must not have answered the call as if nothing happened.
    let status = w.wait_up_to(Duration::from_secs(10));
    let reply = w.frames.try_recv().ok();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{status:?}; what the worker sent meanwhile: {:?}",
        reply
            .as_ref()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    );
    assert!(
        reply.is_none(),
        "the call was answered after SIGTERM: {:?}",
        reply.map(|p| String::from_utf8_lossy(&p).into_owned())
    );
}

// ---------------------------------------------------------------------------
// Standard output

/// bridges/ruby/README.md, Standard output: "`$stdout` writes to stderr
/// through a descriptor of its own (unbuffered, so each line reaches the
/// log as it is printed). A handler that closes it ... closes only that
/// descriptor, never stderr or the log: printing fails with `IOError` for
/// the rest of that handler, as after any close, and the next request
/// finds a new `$stdout`. A `$stdout` you assign yourself is left as it
/// is." Run by hand, reading the worker's stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_is_unbuffered_closable_per_request_and_a_users_own_is_left_alone() {
    if !have_ruby() {
        return;
    }
    let mut w = Direct::spawn(&worker("outside_ruby_readme_extras.rb"), true, &[]).await;
    w.frame();
    // The line is in the log while the handler still runs (it sleeps a
    // minute: a buffered line would wait for it).
    w.send(&json!({"id": 1, "command": "print_then_sleep",
                   "args": {"text": "unbuffered-5521", "ms": 60_000}}));
    assert!(w.stderr_has("unbuffered-5521"), "{:?}", w.seen);
    drop(w);

    let mut w = Direct::spawn(&worker("outside_ruby_readme_extras.rb"), true, &[]).await;
    w.frame();
    let r = w.result(1, "close_then_print", json!({"text": "lost"}));
    assert_eq!(r["after_close"], "IOError", "{r}");
    assert!(w.stderr_has("stderr-after-close-4417"), "{:?}", w.seen);
    assert!(w.stderr_has("logger-after-close-4418"), "{:?}", w.seen);
    let r = w.result(2, "print", json!({"text": "after-close-7730"}));
    assert_eq!(r["stdout_class"], "IO", "{r}");
    assert!(w.stderr_has("after-close-7730"), "{:?}", w.seen);
    assert_ne!(r["fd"], 2, "$stdout has a descriptor of its own: {r}");

    let r = w.result(3, "assign_stdout", json!({}));
    assert_eq!(r["stdout_class"], "StringIO");
    let r = w.result(4, "stdout_state", json!({}));
    assert_eq!(r, json!({"stdout_class": "StringIO", "closed": false}));
    let r = w.result(5, "assign_stdout", json!({"closed": true}));
    assert_eq!(r["stdout_class"], "File");
    let r = w.result(6, "stdout_state", json!({}));
    assert_eq!(
        r,
        json!({"stdout_class": "File", "closed": true}),
        "a closed $stdout of the user's own is left as it is"
    );
    w.exits_0_at_eof();
}

// ---------------------------------------------------------------------------
// Preloading: after_fork

/// bridges/ruby/README.md, Preloading: the example `worker.after_fork {
/// DB.connect; Thread.new { report_metrics } }` and `worker.after_fork {
/// |w| w.logger.info("worker #{w.worker_id} is up") }`; "Hooks run in
/// registration order, once in each worker process, before it sends its
/// `hello`: in every forked worker, and in a worker started directly (no
/// preloading) too"; "A hook gets the worker if it takes an argument";
/// "Threads ... do not survive a fork: start them in a hook". Two workers,
/// preloaded and not: each connected its own DB, runs its own metrics
/// thread, logged its line, and ran a lambda taking nothing and a Method
/// taking the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_after_fork_example_runs_in_every_worker_preloaded_or_not() {
    if !have_ruby() {
        return;
    }
    let events = Events::global();
    for preload in [false, true] {
        let bridge = Bridge::ruby(worker("outside_ruby_readme_after_fork.rb"));
        let bridge = if preload { bridge.preload() } else { bridge };
        let pool = start(Pool::builder(bridge).size(2)).await;
        let workers: Vec<(u32, String)> = pool
            .workers()
            .iter()
            .map(|w| (w.pid, w.id.clone()))
            .collect();
        for _ in 0..4 {
            let r = call(&pool, "state", json!({})).await.unwrap();
            assert_eq!(r["db_pid"], r["pid"], "preload={preload}: {r}");
            assert_eq!(
                r["threads"],
                json!([true]),
                "preload={preload}: one metrics thread: {r}"
            );
            assert_eq!(
                r["hooks"],
                json!(["lambda0", "method1:SnakepitBridge::Worker"]),
                "preload={preload}: {r}"
            );
        }
        for (pid, id) in &workers {
            let line = format!("worker {id} is up");
            assert!(
                eventually(20, || events
                    .lines("snakepit::worker", *pid)
                    .iter()
                    .any(|l| l.contains(&line)))
                .await,
                "preload={preload}: {line:?} not in the log of {pid}"
            );
        }
        pool.shutdown().await.unwrap();
    }
}

/// bridges/ruby/README.md, Preloading: "In a forked worker, `worker.run`
/// never returns: the worker exits ... with `exit!`, so neither the rest of
/// the script nor any `at_exit` handler or finalizer runs in it" (the
/// `at_exit` part is shown by preload_exits.rs). The extras script writes
/// a line to stderr after `worker.run`: a worker started directly writes
/// it when the pool closes its stdin; a forked one never does. (Each also
/// shows that a handler's `puts` reaches that worker's own log.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_of_the_script_after_run_runs_only_in_a_worker_started_directly() {
    if !have_ruby() {
        return;
    }
    let events = Events::global();
    for preload in [false, true] {
        let bridge = if preload {
            extras().preload()
        } else {
            extras()
        };
        let pool = start(Pool::builder(bridge).size(1)).await;
        let pid = pool.workers()[0].pid;
        // README, Standard output: `puts` in a handler goes to the log; in a
        // forked worker, that worker's log ("only the forked workers speak
        // frames", the template's log is its own).
        let line = format!("printed-by-{pid}");
        let r = call(&pool, "print", json!({ "text": line })).await.unwrap();
        assert_eq!(r["stdout_class"], "IO", "preload={preload}: {r}");
        assert!(
            eventually(20, || events.lines("snakepit::worker", pid).contains(&line)).await,
            "preload={preload}: the printed line is not in the worker's log"
        );
        pool.shutdown().await.unwrap();
        assert!(
            eventually(20, || !snakepit_tests::alive(pid)).await,
            "preload={preload}: {pid} still runs"
        );
        let after_run = || {
            events
                .lines("snakepit::worker", pid)
                .iter()
                .any(|l| l.contains("orr: worker.run returned"))
        };
        if preload {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(
                !after_run(),
                "a forked worker ran the code after worker.run"
            );
        } else {
            assert!(
                eventually(20, after_run).await,
                "the worker started directly never returned from worker.run: {:?}",
                events.lines("snakepit::worker", pid)
            );
        }
    }
}

/// bridges/ruby/README.md, Preloading: "A hook that raises is written to
/// stderr with its backtrace and the worker exits with status 1", and the
/// hooks run "before it sends its `hello`". Run by hand: no frame at all,
/// status 1, the message and a backtrace line naming the script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raising_after_fork_hook_exits_1_with_its_backtrace_before_any_hello() {
    if !have_ruby() {
        return;
    }
    let script = worker("outside_ruby_readme_after_fork.rb");
    let mut w = Direct::spawn(&script, true, &[("ORR_FAILING_HOOK", "1")]).await;
    let status = w.wait();
    assert_eq!(status.code(), Some(1), "{status:?}: {:?}", w.seen);
    assert!(
        w.frames.recv_timeout(Duration::from_secs(5)).is_err(),
        "a frame was sent"
    );
    assert!(w.stderr_has("hook failed on purpose"), "{:?}", w.seen);
    assert!(
        w.stderr_has("outside_ruby_readme_after_fork.rb:"),
        "no backtrace: {:?}",
        w.seen
    );
}

/// bridges/ruby/README.md, Preloading: "A hook gets the worker if it takes
/// an argument." `Worker#after_fork` takes "a block, or any object
/// answering #call" (its doc comment): an object whose `call` takes no
/// argument is given the worker all the same, raises `ArgumentError`, and
/// the worker exits with status 1 before its hello. Run by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_after_fork_hook_object_taking_no_argument_is_not_given_the_worker() {
    if !have_ruby() {
        return;
    }
    let script = worker("outside_ruby_readme_after_fork.rb");
    let mut w = Direct::spawn(&script, true, &[("ORR_OBJECT_HOOK", "1")]).await;
    let hello = w.frames.recv_timeout(HANG).ok();
    w.drain_stderr();
    assert!(hello.is_some(), "no hello; stderr: {:?}", w.seen);
    let r = w.result(1, "state", json!({}));
    assert_eq!(
        r["hooks"],
        json!(["lambda0", "method1:SnakepitBridge::Worker", "object0"]),
        "{r}"
    );
}

/// bridges/ruby/README.md, Preloading: "A hook that raises is written to
/// stderr with its backtrace and the worker exits with status 1", in a
/// forked worker and in one started directly; docs/bridges.md: "`start()`
/// returns ... with `Error::StartFailed`, whose message carries the
/// failing worker's last stderr lines". Through a pool, preloaded or not,
/// the start fails and says what the hook raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raising_after_fork_hook_fails_the_pools_start_with_its_message() {
    if !have_ruby() {
        return;
    }
    for preload in [false, true] {
        let bridge =
            Bridge::ruby(worker("outside_ruby_readme_after_fork.rb")).env("ORR_FAILING_HOOK", "1");
        let bridge = if preload { bridge.preload() } else { bridge };
        let builder = Pool::builder(bridge)
            .size(1)
            .configure(|c| c.startup_timeout = Duration::from_secs(20));
        match try_start(builder).await {
            Err(e @ Error::StartFailed(_)) => {
                let detail = format!("{e} {e:?}");
                assert!(
                    detail.contains("hook failed on purpose"),
                    "preload={preload}: {detail}"
                );
            }
            Err(e) => panic!("preload={preload}: {e:?}"),
            Ok(pool) => {
                pool.shutdown().await.unwrap();
                panic!("preload={preload}: started");
            }
        }
    }
}

/// bridges/ruby/README.md, Preloading: "Threads, sockets and connections
/// do not survive a fork: start them in a hook. A forked worker writes a
/// warning to its stderr when the template had more than one thread, or
/// sockets open, when it forked." (The thread case is shown by
/// preload_docs_audit.rs.) A template that opened a socket pair while
/// loading: each forked worker's log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_worker_warns_about_sockets_the_template_had_open() {
    if !have_ruby() {
        return;
    }
    let events = Events::global();
    let bridge = Bridge::ruby(worker("outside_ruby_readme_after_fork.rb"))
        .env("ORR_TEMPLATE_SOCKET", "1")
        .preload();
    let pool = start(Pool::builder(bridge).size(1)).await;
    let pid = pool.workers()[0].pid;
    call(&pool, "state", json!({})).await.unwrap();
    assert!(
        eventually(20, || events
            .lines("snakepit::worker", pid)
            .iter()
            .any(|l| l.contains("socket") && l.contains("open when it forked")))
        .await,
        "no warning in the log of {pid}: {:?}",
        events.lines("snakepit::worker", pid)
    );
    pool.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------
// The gem

/// bridges/ruby/README.md: "or build and install the gem (`gem build
/// snakepit_bridge.gemspec`)". The gem is built from a copy of the bridge
/// directory, has no dependencies ("No runtime dependencies"), installs
/// into a directory of its own, and the README's example runs on it with
/// neither `-I` nor `RUBYLIB`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gem_builds_installs_and_serves_the_readme_example() {
    if !have_ruby() {
        return;
    }
    #[allow(clippy::disallowed_methods)] // gem and cp: tools, not workers
    let run = |program: &str| Command::new(program);
    let gem = if run("gem").arg("--version").output().is_ok() {
        "gem"
    } else {
        eprintln!("skipped: no gem command");
        return;
    };
    let dir = temp_path("gem");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("src");
    let copied = run("cp")
        .arg("-r")
        .arg(workspace_root().join("bridges/ruby"))
        .arg(&src)
        .status()
        .unwrap();
    assert!(copied.success());
    let built = run(gem)
        .args(["build", "snakepit_bridge.gemspec"])
        .current_dir(&src)
        .output()
        .unwrap();
    assert!(built.status.success(), "gem build: {built:?}");
    let file = std::fs::read_dir(&src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "gem"))
        .expect("a .gem file");
    // README: "No runtime dependencies".
    let deps = run(gem)
        .args(["specification"])
        .arg(&file)
        .arg("dependencies")
        .output()
        .unwrap();
    let deps = String::from_utf8_lossy(&deps.stdout);
    assert_eq!(deps.trim(), "--- []", "the gem's dependencies");
    let home = dir.join("gems");
    let installed = run(gem)
        .args(["install", "--local", "--no-document", "--install-dir"])
        .arg(&home)
        .arg(&file)
        .output()
        .unwrap();
    assert!(installed.status.success(), "gem install: {installed:?}");
    let home = home.to_str().unwrap();
    let mut w = Direct::spawn(
        &worker("outside_ruby_readme.rb"),
        false,
        &[("GEM_HOME", home), ("GEM_PATH", home)],
    )
    .await;
    assert_eq!(w.json()["type"], "hello", "{:?}", w.seen);
    let r = w.result(1, "shout", json!({"text": "gem"}));
    assert_eq!(r, "GEM");
    w.exits_0_at_eof();
    drop(w);
    let _ = std::fs::remove_dir_all(&dir);
}
