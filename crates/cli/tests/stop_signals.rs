//! docs/cli.md, exit codes: "130, 143: `exec` stopped by Ctrl-C (130) or
//! SIGTERM (143) ...: its workers are stopped and its run record removed."
//! A stop that comes while the pool still starts its worker (a model that
//! loads slowly) ends the tool that way too, not by the signal's default
//! action (which would leave the run record for a later sweep).

mod common;

use common::{stop_while_starting, Dir, SLOW_START_PY};

fn exec_stopped_by(signal: i32, code: i32) {
    let dir = Dir::new(&format!("stop-exec-{signal}"));
    let script = dir.file("stop_slow_start.py", SLOW_START_PY);
    let stopped = stop_while_starting(
        &dir,
        &["exec", "--script", &script, "--pool-size", "1", "ping"],
        &script,
        signal,
    );
    assert_eq!(
        stopped.status.code(),
        Some(code),
        "{:?}\n{}",
        stopped.status,
        stopped.stderr
    );
    assert!(
        stopped.stderr.contains("the workers were stopped"),
        "{}",
        stopped.stderr
    );
    assert!(
        stopped.workers.is_empty(),
        "workers left: {:?}",
        stopped.workers
    );
    assert!(
        stopped.records.is_empty(),
        "run records left: {:?}",
        stopped.records
    );
}

#[test]
fn sigterm_while_exec_starts_its_worker_is_exit_143_and_leaves_nothing() {
    exec_stopped_by(libc::SIGTERM, 143);
}

#[test]
fn ctrl_c_while_exec_starts_its_worker_is_exit_130_and_leaves_nothing() {
    exec_stopped_by(libc::SIGINT, 130);
}

/// docs/cli.md, exit codes: "`bench` ends at once by the signal's default
/// action, as its baseline runs on plain threads; its workers die with it,
/// and the sweep removes its run record." A SIGTERM while the bench's pool
/// starts its worker ends the tool by that signal; the worker is gone
/// within 10 s; the run record it left is removed by `snakepit sweep`.
#[test]
fn sigterm_ends_bench_by_the_signal_and_the_sweep_takes_its_record() {
    use std::os::unix::process::ExitStatusExt;
    let dir = Dir::new("stop-bench");
    // Slow to start in the pool only: the baseline's workers (`raw`) serve.
    let script = dir.file(
        "stop_bench_slow_start.py",
        &SLOW_START_PY.replace(
            "time.sleep(30)",
            "import os\nif os.environ.get('SNAKEPIT_WORKER_ID') != 'raw':\n    time.sleep(30)",
        ),
    );
    let stopped = stop_while_starting(
        &dir,
        &[
            "bench",
            "--script",
            &script,
            "--workers",
            "1",
            "--requests",
            "256",
        ],
        &script,
        libc::SIGTERM,
    );
    assert_eq!(
        stopped.status.signal(),
        Some(libc::SIGTERM),
        "{:?}\n{}",
        stopped.status,
        stopped.stderr
    );
    assert!(
        stopped.workers.is_empty(),
        "workers left: {:?}",
        stopped.workers
    );
    assert_eq!(stopped.records.len(), 1, "{:?}", stopped.records);
    let state = dir.0.join("state");
    let swept = common::snakepit(&["sweep", "--state-dir", &state.display().to_string()]);
    assert_eq!(swept.code, 0, "{}", swept.stderr);
    assert!(
        common::records(&state).is_empty(),
        "the sweep left {:?}",
        common::records(&state)
    );
}
