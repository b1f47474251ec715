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
