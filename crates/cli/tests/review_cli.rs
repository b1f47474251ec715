//! Review of the `snakepit` command against docs/cli.md: what `serve` does
//! with a stop signal that comes while its pool is still starting.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Dir, BIN};

/// A worker whose start takes 30 s (a model that loads slowly).
const SLOW_START_PY: &str = r#"
import time
import snakepit_bridge
time.sleep(30)
worker = snakepit_bridge.Worker()

@worker.command("ping")
def ping(args):
    return {"ok": True}

worker.run()
"#;

/// The run records in `dir` (`*.run`).
fn records(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".run"))
                .collect()
        })
        .unwrap_or_default()
}

/// The pids of processes whose command line names `needle`.
fn processes_running(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) {
                found.push(pid);
            }
        }
    }
    found
}

/// docs/cli.md: "`serve` starts a pool on this machine and serves it to
/// the cluster `NAME` ... until Ctrl-C or SIGTERM: then it takes no new
/// call, lets the running ones finish, shuts the pool down and exits 0".
/// A service manager's SIGTERM can come while the workers still start (a
/// model loading): `serve` listens for it only once the pool is up, so the
/// signal's default action kills it (exit by signal), its pool is never
/// shut down and its run record stays behind in the state directory for a
/// later sweep, as a crashed run's would.
#[test]
fn sigterm_while_serve_starts_its_workers_leaves_cleanly() {
    let nats = snakepit_tests::NatsServer::start();
    let dir = Dir::new("review-serve-sigterm");
    let script = dir.file("review_slow_start.py", SLOW_START_PY);
    let state = dir.0.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    #[allow(clippy::disallowed_methods)] // runs the tool under test
    let mut serve = Command::new(BIN)
        .current_dir(&dir.0)
        .args([
            "serve",
            "--nats",
            &nats.url,
            "--cluster",
            "reviewslow",
            "--script",
            &script,
            "--pool-size",
            "1",
        ])
        .env_remove("SNAKEPIT_CONFIG")
        .env_remove("NATS_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("SNAKEPIT_STATE_DIR", &state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("snakepit serve runs");
    // The pool is starting: its run record is written and its worker runs
    // the slow module code.
    let until = Instant::now() + Duration::from_secs(30);
    while records(&state).is_empty() || processes_running(&script).is_empty() {
        assert!(Instant::now() < until, "the pool never began to start");
        assert!(serve.try_wait().unwrap().is_none(), "serve ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on the child this test started and has not reaped.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(serve.id() as libc::pid_t, libc::SIGTERM);
    }
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            let _ = serve.kill();
            let _ = serve.wait();
            panic!("serve did not end within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut s) = serve.stderr.take() {
        use std::io::Read as _;
        let _ = s.read_to_string(&mut stderr);
    }
    // The worker is gone either way (the pool's watchdog kills it).
    let until = Instant::now() + Duration::from_secs(10);
    while !processes_running(&script).is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = records(&state);
    assert!(
        processes_running(&script).is_empty(),
        "a worker was left running"
    );
    assert_eq!(
        status.code(),
        Some(0),
        "serve should leave as on any SIGTERM: {status:?}\n{stderr}"
    );
    assert!(
        left.is_empty(),
        "its run record should be removed by the pool's shutdown: {left:?}"
    );
}

/// A worker whose `records` lists the run records in `args["dir"]`.
const RECORDS_PY: &str = r#"
import os
import snakepit_bridge
worker = snakepit_bridge.Worker()

@worker.command("records")
def records(args):
    d = args["dir"]
    return sorted(n for n in os.listdir(d) if n.endswith(".run")) if os.path.isdir(d) else []

worker.run()
"#;

/// docs/cli.md, `snakepit.toml`: `state_dir` under `[pool]` is where the
/// pools "keep their run records (snakepit sweep)", "default: see
/// `snakepit sweep`", where "a variable set to nothing counts as unset".
/// `state_dir = ""` in the file is accepted without a word (exit 0), yet
/// the pool then writes no run record anywhere (with `-v`: "cannot write
/// the run record; a crashed run's leftovers will not be swept"), so a
/// crash of this run could never be swept. Either the key is refused as a
/// bad `snakepit.toml` (exit 2), or nothing counts as unset and the record
/// goes to the default directory (here `$SNAKEPIT_STATE_DIR`).
#[test]
fn an_empty_state_dir_in_the_file_is_refused_or_means_the_default() {
    let dir = Dir::new("review-empty-state-dir");
    dir.file("records.py", RECORDS_PY);
    dir.file(
        "snakepit.toml",
        "script = \"records.py\"\n[pool]\nstate_dir = \"\"\n",
    );
    let state = dir.0.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let args = serde_json::json!({ "dir": state.display().to_string() }).to_string();
    let run = common::snakepit_in(
        &dir.0,
        &["-v", "exec", "records", &args],
        &[("SNAKEPIT_STATE_DIR", &state.display().to_string())],
        "",
    );
    if run.code == 2 {
        assert!(run.stderr.contains("state_dir"), "names the key: {run:?}");
        return;
    }
    assert_eq!(run.code, 0, "{run:?}");
    let listed = run.json();
    assert!(
        listed.as_array().is_some_and(|a| !a.is_empty()),
        "the running pool's record is in the default directory: {run:?}"
    );
}

/// The control of `sigterm_while_serve_starts_its_workers_leaves_cleanly`:
/// once `serve` says it serves, SIGTERM makes it leave with exit 0, and its
/// pool's shutdown removes the run record (docs/cli.md: a run record is
/// "removed by a clean shutdown").
#[test]
fn sigterm_once_serve_serves_exits_0_and_removes_its_run_record() {
    let nats = snakepit_tests::NatsServer::start();
    let dir = Dir::new("review-serve-sigterm-served");
    let state = dir.0.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let state_var = state.display().to_string();
    let mut serve = common::Serve::start(
        &[
            "--nats",
            &nats.url,
            "--cluster",
            "reviewserved",
            "--pool-size",
            "1",
        ],
        &[("SNAKEPIT_STATE_DIR", &state_var)],
    );
    assert_eq!(records(&state).len(), 1, "the serving pool's record");
    serve.signal(libc::SIGTERM);
    let (status, stderr) = serve.wait();
    assert_eq!(status.code(), Some(0), "{status:?}\n{stderr}");
    assert!(records(&state).is_empty(), "{:?}", records(&state));
}
