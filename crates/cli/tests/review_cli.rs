//! The `snakepit` command against docs/cli.md: `serve` and a stop signal
//! that comes while its pool starts or once it serves, and an empty
//! `state_dir` in `snakepit.toml`.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{records, stop_while_starting, Dir, SLOW_START_PY};

/// docs/cli.md: "`serve` starts a pool on this machine and serves it to
/// the cluster `NAME` ... until Ctrl-C or SIGTERM: then it takes no new
/// call, lets the running ones finish, shuts the pool down and exits 0 (a
/// stop that comes while NATS is reached or the workers still start stops
/// them and exits 0 as well ...)". A service manager's SIGTERM can come
/// while a worker still starts (a model loading). The test sends SIGTERM
/// then and checks that `serve` exits 0, no worker is left running and its
/// run record is gone. `serve` once listened for the signal only once the
/// pool was up, so the signal killed it and left its run record behind.
#[test]
fn sigterm_while_serve_starts_its_workers_leaves_cleanly() {
    let nats = snakepit_tests::NatsServer::start();
    let dir = Dir::new("review-serve-sigterm");
    let script = dir.file("review_slow_start.py", SLOW_START_PY);
    let stopped = stop_while_starting(
        &dir,
        &[
            "serve",
            "--nats",
            &nats.url,
            "--cluster",
            "reviewslow",
            "--script",
            &script,
            "--pool-size",
            "1",
        ],
        &script,
        libc::SIGTERM,
    );
    assert!(stopped.workers.is_empty(), "a worker was left running");
    assert_eq!(
        stopped.status.code(),
        Some(0),
        "serve leaves as on any SIGTERM: {:?}\n{}",
        stopped.status,
        stopped.stderr
    );
    assert!(
        stopped.records.is_empty(),
        "its run record is removed by the pool's shutdown: {:?}",
        stopped.records
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

/// docs/cli.md, `snakepit.toml`: "An unknown key is an error that names
/// it, and so is an empty `state_dir` (leave it out for the default
/// directory)". With `state_dir = ""` in the file, the test takes either
/// answer that keeps a crash of the run sweepable: exit 2 naming the key
/// (what `snakepit` does), or a run record in the default directory (here
/// `$SNAKEPIT_STATE_DIR`). The empty value was once accepted, and the pool
/// then wrote no run record anywhere.
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
