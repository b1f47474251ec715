//! An outside tester's audit of docs/preload.md: the promises no other test
//! of the workspace shows, through real preloaded pools.
//!
//! Most of them are the pool's side of "The template protocol (for bridge
//! authors)", which the bridges' own suites cannot see (they play the pool
//! themselves). `workers/outside_preload_worker.py` is, when started as a
//! template with `OUTSIDE_RAW` set, a template written by hand from the
//! page that records what the pool sends it (see the script's docstring);
//! otherwise it is an ordinary worker of the bundled bridge.
//!
//! - "Start": the template's stdin is a `SOCK_SEQPACKET` Unix socket, its
//!   command line and environment are the worker's plus
//!   `SNAKEPIT_PRELOAD=1`, it has the parent-death signal, and its stdout
//!   and stderr both go to the pool's log of the template;
//! - "Pool to template": each fork request is one JSON object of at most
//!   64 KiB, `{"op": "fork", "id": I, "env": {...}}` with an integer id,
//!   string values (`SNAKEPIT_WORKER_ID` among them) and exactly three
//!   descriptors, the worker's stdin (a pipe's read end), stdout and stderr
//!   (write ends) in that order, and "no two workers ever share a pipe";
//! - `fork_failed`: the template's reason reaches the caller;
//! - "A template that does not fork a worker within 10 s (stopped, or
//!   blocked in its script) is killed, and the next start begins a new
//!   one": a template that reads fork requests and never answers;
//! - "The pid in `forked` must be the template's own child (or one already
//!   reaped)": a child the template reaped before reporting it is taken;
//! - "The pool also watches each worker through a pidfd, so it learns of an
//!   exit even when the template is gone (the status is then unknown)";
//! - "Each forked worker is a full worker of the pool, the same as one
//!   started with `exec`": the bridge's environment byte for byte, and as
//!   large as a directly started worker takes it.

mod common;

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{CallOptions, Error, ExitReason, Pool, PoolBuilder};
use snakepit_tests::{alive, eventually, python, Events};

/// Only turns a hang into a failure of a test.
const GUARD: Duration = Duration::from_secs(60);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/outside_preload_worker.py")
}

/// A fresh file in the temporary directory, named for the test.
fn temp(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "snakepit-outside-preload-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

/// The bridge of the worker script (not preloaded).
fn bridge() -> Bridge {
    Bridge::python(script()).interpreter(python())
}

/// A preloaded bridge whose template is the hand-written one, answering
/// fork requests as `mode` says and writing what it got to `log`.
fn raw(mode: &str, log: &Path) -> Bridge {
    bridge()
        .env("OUTSIDE_RAW", mode)
        .env("OUTSIDE_LOG", log)
        .preload()
}

/// The hand-written template's notes, one JSON object each.
fn notes(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn of_kind(notes: &[Value], kind: &str) -> Vec<Value> {
    notes
        .iter()
        .filter(|n| n["kind"] == kind)
        .cloned()
        .collect()
}

fn num(v: &Value, key: &str) -> u32 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}")) as u32
}

fn kill_9(pid: u32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a process this test's pool started; no memory involved.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// A pool of `size` workers of `bridge`, with health checks off.
fn unchecked(bridge: Bridge, size: usize) -> PoolBuilder {
    Pool::builder(bridge)
        .size(size)
        .configure(|c| c.health_check_interval = Duration::ZERO)
}

/// A one-worker pool of `bridge`, started as it is configured by default.
async fn one_worker(bridge: Bridge) -> Pool {
    Pool::builder(bridge).size(1).start().await.unwrap()
}

/// What the worker that serves `whoami` says of itself.
async fn whoami(pool: &Pool) -> Value {
    pool.execute("whoami", json!({})).await.unwrap()
}

/// The same, with a deadline of 30 s (the call may wait for a worker's
/// replacement).
async fn whoami_within_30_s(pool: &Pool) -> Value {
    pool.execute_with(
        "whoami",
        json!({}),
        CallOptions::new().timeout(Duration::from_secs(30)),
    )
    .await
    .unwrap()
}

/// A one-worker pool of `bridge` whose start must fail: its start error.
async fn failed_start(bridge: Bridge) -> snakepit_core::StartError {
    let started = tokio::time::timeout(GUARD, unchecked(bridge, 1).start())
        .await
        .expect("the start returns");
    match started {
        Err(Error::StartFailed(e)) => *e,
        Err(other) => panic!("expected StartFailed, got {other:?}"),
        Ok(pool) => {
            pool.shutdown().await.unwrap();
            panic!("the pool started")
        }
    }
}

/// The value of `name` in `/proc/<pid>/environ`, as bytes.
fn environ_value(pid: u32, name: &str) -> Option<Vec<u8>> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let prefix = format!("{name}=");
    environ
        .split(|&b| b == 0)
        .find(|entry| entry.starts_with(prefix.as_bytes()))
        .map(|entry| entry[prefix.len()..].to_vec())
}

/// preload.md, "The template protocol", Start and Pool to template, and
/// "What a forked worker is": "The pool starts the template with the
/// worker's command line and environment plus `SNAKEPIT_PRELOAD=1`. Its
/// stdin (descriptor 0) is one end of a `SOCK_SEQPACKET` Unix socket pair
/// (each message is one datagram, one JSON object in UTF-8, at most 64
/// KiB); its stdout and stderr both go to the pool's log of the template";
/// "`{"op": "fork", "id": I, "env": {"NAME": "value", ...}}` with exactly
/// three descriptors attached: the worker's stdin (a pipe's read end),
/// stdout and stderr (write ends), in that order. `I` is an integer; `env`
/// values are strings"; "(it carries `SNAKEPIT_WORKER_ID` among others)";
/// "no two workers ever share a pipe"; "The pool starts the template with
/// the parent-death signal, like every worker it starts directly".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_starts_the_template_and_asks_for_forks_as_the_protocol_says() {
    let events = Events::global();
    let log = temp("protocol");
    let pool = unchecked(raw("serve", &log).env("OUTSIDE_MARK", "mark ü"), 2)
        .start()
        .await
        .unwrap();
    let workers = common::on_every_worker(&pool, "sleep").await;
    let all = notes(&log);
    let starts = of_kind(&all, "start");
    assert_eq!(starts.len(), 1, "one template: {all:?}");
    let start = &starts[0];
    let template = num(start, "pid");
    assert_eq!(pool.template_pid(), Some(template));
    assert_eq!(start["family"], libc::AF_UNIX, "{start}");
    assert_eq!(start["type"], libc::SOCK_SEQPACKET, "{start}");
    assert_eq!(start["preload"], "1", "{start}");
    assert_eq!(start["mark"], "mark ü", "the bridge's environment: {start}");
    assert!(start["run_id"].is_string(), "the run id: {start}");
    assert_eq!(
        start["pdeathsig"],
        libc::SIGKILL,
        "the parent-death signal: {start}"
    );

    let requests = of_kind(&all, "request");
    assert_eq!(requests.len(), 2, "one request per worker: {all:?}");
    let mut ids = HashSet::new();
    let mut worker_ids = HashSet::new();
    let mut pipes = HashSet::new();
    for r in &requests {
        let len = r["len"].as_u64().unwrap();
        assert!(
            len > 0 && len <= 64 * 1024 && r["truncated"] == false,
            "{r}"
        );
        let message: Value = serde_json::from_str(r["text"].as_str().unwrap()).unwrap();
        let keys: HashSet<&str> = message
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, HashSet::from(["op", "id", "env"]), "{message}");
        assert_eq!(message["op"], "fork", "{message}");
        assert!(message["id"].is_u64(), "an integer id: {message}");
        assert!(ids.insert(message["id"].as_u64().unwrap()), "{message}");
        let env = message["env"].as_object().expect("env is a map");
        assert!(env.values().all(Value::is_string), "{message}");
        let worker_id = env["SNAKEPIT_WORKER_ID"].as_str().unwrap().to_owned();
        assert!(worker_ids.insert(worker_id), "{message}");
        let fds = r["fds"].as_array().unwrap();
        let modes: Vec<&str> = fds.iter().map(|f| f["mode"].as_str().unwrap()).collect();
        assert_eq!(modes, ["r", "w", "w"], "stdin, stdout, stderr: {r}");
        for f in fds {
            assert_eq!(f["fifo"], true, "a pipe: {r}");
            assert!(pipes.insert(f["ino"].as_u64().unwrap()), "shared pipe: {r}");
        }
    }

    // The workers are the ones asked for, serving on those pipes.
    let served: HashSet<String> = workers
        .iter()
        .map(|w| w["worker_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(served, worker_ids);
    for w in &workers {
        assert_eq!(num(w, "ppid"), template, "a fork of the template: {w}");
        assert_eq!(w["preload"], Value::Null, "{w}");
        assert_eq!(w["mark"], "mark ü", "{w}");
    }

    // The same bridge started directly: the same command line.
    let direct = one_worker(bridge().env("OUTSIDE_MARK", "mark ü")).await;
    let d = whoami(&direct).await;
    assert_eq!(start["argv"], d["argv"], "the worker's command line");
    direct.shutdown().await.unwrap();

    let lines = events.lines("snakepit::template", template);
    for needle in ["hello on stdout", "hello on stderr"] {
        assert!(
            lines.iter().any(|l| l.contains(needle)),
            "{needle} in the template's log: {lines:?}"
        );
    }
    pool.shutdown().await.unwrap();
    assert!(eventually(10, || !alive(template)).await);
    let _ = std::fs::remove_file(log);
}

/// preload.md, Template to pool: "`{"op": "fork_failed", "id": I, "error":
/// "..."}`: a fork request could not be served". The template's reason is
/// what the caller is told; the template does not outlive the failed
/// start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_the_template_refuses_fails_the_start_with_its_reason() {
    let log = temp("fail");
    let err = failed_start(raw("fail", &log)).await;
    assert!(
        err.cause
            .contains("OUTSIDE-REFUSED: no room for another worker"),
        "the template's reason: {err:?}"
    );
    let template = num(&of_kind(&notes(&log), "start")[0], "pid");
    assert!(
        eventually(10, || !alive(template)).await,
        "the template is gone"
    );
    let _ = std::fs::remove_file(log);
}

/// preload.md, Reaping: "The pid in `forked` must be the template's own
/// child (or one already reaped)". A template that reaps its child (which
/// exited at once with status 3) before it reports the fork: the pid is
/// taken, not refused as "not a process it forked", and the worker's
/// failure is its exit with the status the template reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_the_template_reaped_before_reporting_it_is_taken() {
    let log = temp("reaped");
    let err = failed_start(raw("reaped", &log)).await;
    assert!(
        !err.cause.contains("not a process it forked"),
        "an already reaped child is the template's: {err:?}"
    );
    assert!(
        err.cause.contains("exit status 3") || err.cause.contains("status 3"),
        "the worker's exit, as the template reported it: {err:?}"
    );
    let _ = std::fs::remove_file(log);
}

/// preload.md: "A template that does not fork a worker within 10 s
/// (stopped, or blocked in its script) is killed, and the next start
/// begins a new one." (The stopped case is redteam_preload.rs's.) A
/// template that goes on reading fork requests after its first two but
/// never answers one: the replacement of a killed worker is forked by a
/// second template, the first having been killed; the other worker serves
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_blocked_in_its_script_is_killed_and_the_next_start_begins_a_new_one() {
    let log = temp("blocked");
    let pool = unchecked(raw("serve", &log).env("OUTSIDE_MUTE_AFTER", "2"), 2)
        .start()
        .await
        .unwrap();
    let first = pool.template_pid().unwrap();
    let pids = pool.worker_pids();
    let (killed, survivor) = (pids[0], pids[1]);
    kill_9(killed);
    for _ in 0..3 {
        let v = whoami_within_30_s(&pool).await;
        assert_eq!(num(&v, "pid"), survivor);
    }
    let refilled = eventually(60, || {
        let p = pool.worker_pids();
        p.len() == 2 && !p.contains(&killed)
    })
    .await;
    let all = notes(&log);
    let starts = of_kind(&all, "start");
    let first_gone = !alive(first);
    let shut = tokio::time::timeout(GUARD, pool.shutdown()).await;
    assert!(refilled, "the slot was refilled: {all:?}");
    assert!(first_gone, "the blocked template was killed");
    assert_eq!(starts.len(), 2, "a second template: {all:?}");
    assert_eq!(num(&starts[0], "pid"), first);
    assert!(shut.is_ok(), "shutdown returned");
    let _ = std::fs::remove_file(log);
}

/// preload.md, Reaping: "The pool also watches each worker through a pidfd,
/// so it learns of an exit even when the template is gone (the status is
/// then unknown)." The bundled bridge's template is killed, then its
/// worker dies in a call: the call fails at once as a crash of that worker
/// whose exit is `Unknown` (not at the call's two-minute deadline), and the
/// next call is served by a fork of a new template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_template_is_gone_is_seen_to_die_with_its_status_unknown() {
    let pool = unchecked(bridge().preload(), 1).start().await.unwrap();
    let template = pool.template_pid().unwrap();
    let worker = pool.worker_pids()[0];
    kill_9(template);
    assert!(eventually(10, || !alive(template)).await);
    let started = temp("orphan-started");
    let call = {
        let pool = pool.clone();
        let started = started.display().to_string();
        tokio::spawn(async move {
            pool.execute_with(
                "sleep",
                json!({"ms": 100_000, "marker": started}),
                CallOptions::new().timeout(Duration::from_secs(120)),
            )
            .await
        })
    };
    assert!(
        eventually(10, || started.exists()).await,
        "the call started"
    );
    kill_9(worker);
    let got = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the pool learns of the death without its template")
        .unwrap();
    match got {
        Err(Error::WorkerCrashed(crash)) => {
            assert_eq!(crash.pid, worker);
            assert_eq!(crash.exit, ExitReason::Unknown, "{crash:?}");
        }
        other => panic!("expected a crash, got {other:?}"),
    }
    let again = whoami_within_30_s(&pool).await;
    assert_ne!(num(&again, "pid"), worker);
    assert_ne!(num(&again, "loaded_in"), template, "a new template");
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_file(started);
}

/// `OUTSIDE_BYTES` as the pool's only worker sees it (its own
/// `os.environb`: `/proc/<pid>/environ` shows a forked process the
/// environment its template was started with, not its own).
async fn worker_bytes(pool: &Pool) -> Option<Vec<u8>> {
    let who = whoami(pool).await;
    who["bytes"].as_str().map(unhex)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// preload.md: "Each forked worker is a full worker of the pool, the same
/// as one started with `exec`" (and "The script does not change"). A
/// variable of the bridge's environment whose value is not UTF-8 (a
/// Latin-1 path, say): a directly started worker has its bytes; a forked
/// one must have the same bytes, not a lossy copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_worker_has_a_non_utf8_variable_of_the_bridge_byte_for_byte() {
    let bytes = b"caf\xe9 \xff/d\xfcr".to_vec();
    let with = |b: Bridge| b.env("OUTSIDE_BYTES", OsString::from_vec(bytes.clone()));
    let direct = one_worker(with(bridge())).await;
    let got_direct = worker_bytes(&direct).await;
    direct.shutdown().await.unwrap();
    assert_eq!(got_direct.as_deref(), Some(&bytes[..]), "the control");
    let forked = one_worker(with(bridge()).preload()).await;
    let template = forked.template_pid().unwrap();
    let in_template = environ_value(template, "OUTSIDE_BYTES");
    let got_forked = worker_bytes(&forked).await;
    forked.shutdown().await.unwrap();
    assert_eq!(
        in_template.as_deref(),
        Some(&bytes[..]),
        "the template has them"
    );
    assert_eq!(
        got_forked.as_deref(),
        Some(&bytes[..]),
        "the forked worker's value: {:?}",
        got_forked.as_deref().map(String::from_utf8_lossy)
    );
}

/// preload.md: "Each forked worker is a full worker of the pool, the same
/// as one started with `exec`". A bridge variable of 70,000 bytes (a
/// configuration passed whole, say) is taken by a directly started worker;
/// a preloaded pool of the same bridge must start, its worker seeing it
/// too. (A fork request is at most 64 KiB, and the pool sends the bridge's
/// whole environment in each one, though the template already has it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preloaded_pool_takes_a_bridge_environment_a_direct_one_takes() {
    let big = "x".repeat(70_000);
    let direct = one_worker(bridge().env("OUTSIDE_BIG", &big)).await;
    let d = whoami(&direct).await;
    direct.shutdown().await.unwrap();
    assert_eq!(d["big"], 70_000, "the control: {d}");
    let started = tokio::time::timeout(
        GUARD,
        Pool::builder(bridge().env("OUTSIDE_BIG", &big).preload())
            .size(1)
            .start(),
    )
    .await
    .expect("the start returns");
    let pool = started.unwrap_or_else(|e| panic!("the preloaded pool did not start: {e:?}"));
    let f = whoami(&pool).await;
    pool.shutdown().await.unwrap();
    assert_eq!(f["big"], 70_000, "{f}");
}
