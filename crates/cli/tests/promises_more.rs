//! More of what docs/cli.md and docs/reliability.md promise of the command,
//! each against the real binary and real workers: `sweep --instance` on real
//! crashed runs, the run records' directory when neither
//! `SNAKEPIT_STATE_DIR` nor `XDG_RUNTIME_DIR` is set, the `-v` / `-vv` line
//! formats without colour into a pipe, and the MessagePack codec on an
//! interpreter without its package.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use snakepit_core::{Adapter, Launch, Pool};

/// The bridge worker of these tests (`escape`, `wait_for`, `talk`).
const WORKER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/workers/leftover_worker.py"
);

/// Polls `ready` every 10 ms for at most `secs` seconds (a guard against
/// hanging the suite, not a measurement).
fn wait_until(secs: u64, mut ready: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    ready()
}

#[allow(clippy::disallowed_methods)] // `kill`, not a worker
fn kill_9(pid: u32) {
    let _ = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// This process's effective uid (`Uid:` of /proc/self/status: real,
/// effective, ...).
fn uid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

/// `leftover_worker.py` on the bundled Python bridge, for a pool started by
/// the test itself.
struct Leftover;

impl Adapter for Leftover {
    fn launch(&self) -> Launch {
        Launch::new(snakepit_tests::python())
            .arg(WORKER)
            .env(
                "PYTHONPATH",
                snakepit_tests::workspace_root().join("bridges/python"),
            )
            .env("PYTHONDONTWRITEBYTECODE", "1")
    }
}

/// Not a test of its own: a host that crashes. The test runs this binary
/// again with `SNAKEPIT_TEST_CRASH_HOST` set to a pool name: it starts that
/// pool (records in `SNAKEPIT_TEST_STATE_DIR`), has its worker start a child
/// that leaves its process group, writes the run id and the child's pid to
/// `SNAKEPIT_TEST_OUT`, and waits to be killed.
#[test]
fn crashing_host_process() {
    let Ok(name) = std::env::var("SNAKEPIT_TEST_CRASH_HOST") else {
        return;
    };
    let state_dir = PathBuf::from(std::env::var("SNAKEPIT_TEST_STATE_DIR").unwrap());
    let out = PathBuf::from(std::env::var("SNAKEPIT_TEST_OUT").unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let pool = Pool::builder(Leftover)
            .size(1)
            .name(name)
            .configure(|c| c.state_dir = Some(state_dir))
            .start()
            .await
            .unwrap();
        let child = pool.execute("escape", json!({})).await.unwrap();
        let line = json!({"run_id": pool.run_id(), "child": child["child_pid"]});
        std::fs::write(out.with_extension("tmp"), line.to_string()).unwrap();
        std::fs::rename(out.with_extension("tmp"), &out).unwrap();
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
}

/// A crashed run: its id and the child it left alive.
struct Crashed {
    run_id: String,
    child: u32,
}

/// Runs [`crashing_host_process`] for a pool named `name`, then kills it
/// with SIGKILL once its worker's child has escaped.
fn crash_a_host(name: &str, state_dir: &Path, out: &Path) -> Crashed {
    let mut host = snakepit_tests::this_test("crashing_host_process")
        .env("SNAKEPIT_TEST_CRASH_HOST", name)
        .env("SNAKEPIT_TEST_STATE_DIR", state_dir)
        .env("SNAKEPIT_TEST_OUT", out)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(60, || out.exists() || host.try_wait().unwrap().is_some()),
        "the host {name} started"
    );
    let text = std::fs::read_to_string(out).expect("the host wrote its pids");
    let v: Value = serde_json::from_str(&text).unwrap();
    kill_9(host.id());
    host.wait().unwrap();
    Crashed {
        run_id: v["run_id"].as_str().unwrap().to_owned(),
        child: v["child"].as_u64().unwrap() as u32,
    }
}

fn records(state_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(state_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// cli.md, `snakepit sweep`: "`--instance` limits it to pools of that
/// name". Two hosts of pools `alpha` and `beta` crash (SIGKILL), each
/// leaving a worker's child that left its process group; beside them runs a
/// decoy with the same command line and no run id. `sweep --instance alpha`
/// kills alpha's leftover and removes alpha's record, and only those.
#[test]
fn sweep_of_one_instance_removes_that_runs_leftovers_and_only_those() {
    let dir = Dir::new("sweep-instance");
    let state = dir.0.join("state");
    let alpha = crash_a_host("alpha", &state, &dir.0.join("alpha.json"));
    let beta = crash_a_host("beta", &state, &dir.0.join("beta.json"));
    #[allow(clippy::disallowed_methods)] // a bystander, not a worker
    let mut decoy = Command::new("setsid")
        .args(["sleep", "300"])
        .env_remove("SNAKEPIT_RUN_ID")
        .spawn()
        .unwrap();
    let decoy_pid = decoy.id();
    assert!(
        snakepit_tests::alive(alpha.child) && snakepit_tests::alive(beta.child),
        "a child that left its process group outlives its host"
    );
    let before = records(&state);
    assert_eq!(before.len(), 2, "{before:?}");

    let state_s = state.to_str().unwrap();
    let r = dir.run(&["sweep", "--instance", "alpha", "--state-dir", state_s]);
    let alpha_gone = wait_until(10, || !snakepit_tests::alive(alpha.child));
    let beta_lives = snakepit_tests::alive(beta.child);
    let decoy_lives = snakepit_tests::alive(decoy_pid);
    let after = records(&state);
    let r2 = dir.run(&[
        "sweep",
        "--instance",
        "beta",
        "--state-dir",
        state_s,
        "--json",
    ]);
    let beta_gone = wait_until(10, || !snakepit_tests::alive(beta.child));
    for pid in [alpha.child, beta.child, decoy_pid] {
        kill_9(pid);
    }
    let _ = decoy.wait();

    assert_eq!(r.code, 0, "{r:?}");
    r.stdout_has(&[
        &format!("run {} of pool alpha", alpha.run_id),
        &format!("pid {}", alpha.child),
        "killed 1 process(es)",
    ]);
    assert!(!r.stdout.contains(&beta.run_id), "{r:?}");
    assert!(alpha_gone, "alpha's leftover was killed: {r:?}");
    assert!(beta_lives, "beta's leftover is another instance's: {r:?}");
    assert!(decoy_lives, "the decoy carries no run id: {r:?}");
    assert_eq!(
        after.len(),
        1,
        "alpha's record went, beta's stays: {after:?}"
    );
    assert!(
        after[0].starts_with("beta.") && after[0].contains(&beta.run_id),
        "{after:?}"
    );
    assert_eq!(r2.code, 0, "{r2:?}");
    let runs = r2.json()["stale_runs"].clone();
    assert_eq!(runs.as_array().map(Vec::len), Some(1), "{r2:?}");
    assert_eq!(runs[0]["instance"], "beta", "{r2:?}");
    assert_eq!(runs[0]["killed"][0]["pid"], beta.child, "{r2:?}");
    assert!(beta_gone, "{r2:?}");
    assert!(records(&state).is_empty(), "{:?}", records(&state));
}

/// Runs `snakepit ARGS` with neither `SNAKEPIT_STATE_DIR` nor
/// `XDG_RUNTIME_DIR`, `TMPDIR` as given (unset for `None`).
#[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
fn snakepit_with_tmpdir(tmpdir: Option<&Path>, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(std::env::temp_dir())
        .env_remove("SNAKEPIT_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("SNAKEPIT_STATE_DIR")
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match tmpdir {
        Some(t) => cmd.env("TMPDIR", t),
        None => cmd.env_remove("TMPDIR"),
    };
    cmd
}

fn output(mut cmd: Command) -> Run {
    Run::from(cmd.output().expect("snakepit runs"))
}

/// docs/reliability.md, "Run records and the sweep": with neither
/// `SNAKEPIT_STATE_DIR` nor `XDG_RUNTIME_DIR`, the records go to
/// `$TMPDIR/snakepit-<uid>` (`/tmp` for an unset `TMPDIR`), which the pool
/// creates with mode 0700; a clean shutdown removes its record.
#[test]
fn without_xdg_runtime_dir_records_go_to_a_private_dir_in_tmpdir() {
    let dir = Dir::new("tmpdir-state");
    let tmp = dir.0.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let state = tmp.join(format!("snakepit-{}", uid()));
    let go = dir.0.join("go");
    let args = json!({"path": go}).to_string();
    let exec = snakepit_with_tmpdir(Some(&tmp), &["exec", "--script", WORKER, "wait_for", &args])
        .spawn()
        .unwrap();
    // While the call waits, the run's record is there.
    let written = wait_until(60, || {
        std::fs::read_dir(&state).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".run"))
        })
    });
    std::fs::write(&go, "").unwrap();
    let r = Run::from(exec.wait_with_output().unwrap());
    assert!(written, "a run record in {}: {r:?}", state.display());
    assert_eq!(r.code, 0, "{r:?}");
    let meta = std::fs::symlink_metadata(&state).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o700, "{}", state.display());
    assert_eq!(meta.uid(), uid());
    assert_eq!(
        std::fs::read_dir(&state).unwrap().count(),
        0,
        "the clean shutdown removed its record"
    );

    // `snakepit sweep` looks in the same place.
    let r = output(snakepit_with_tmpdir(
        Some(&tmp),
        &["sweep", "--dry-run", "--json"],
    ));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["state_dir"], state.to_str().unwrap(), "{r:?}");
    // With no TMPDIR, under /tmp.
    let r = output(snakepit_with_tmpdir(
        None,
        &["sweep", "--dry-run", "--json"],
    ));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.json()["state_dir"],
        format!("/tmp/snakepit-{}", uid()),
        "{r:?}"
    );
    // XDG_RUNTIME_DIR comes first.
    let xdg = dir.0.join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    let mut cmd = snakepit_with_tmpdir(Some(&tmp), &["sweep", "--dry-run", "--json"]);
    cmd.env("XDG_RUNTIME_DIR", &xdg);
    let r = output(cmd);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.json()["state_dir"],
        xdg.join("snakepit").to_str().unwrap(),
        "{r:?}"
    );
}

/// docs/reliability.md, "The directory is private": a `snakepit-<uid>` in
/// `$TMPDIR` planted by another user (a symbolic link to a directory that
/// would pass) is refused by `sweep` with exit code 1 naming it, and a pool
/// still starts, says so at `-v`, and writes nothing through it. (The tests
/// run as root; "another user" is uid 65534.)
#[test]
fn a_planted_state_dir_in_tmpdir_is_refused_and_not_written_through() {
    let dir = Dir::new("tmpdir-planted");
    let tmp = dir.0.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let target = dir.0.join("target");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
    let planted = tmp.join(format!("snakepit-{}", uid()));
    std::os::unix::fs::symlink(&target, &planted).unwrap();
    std::os::unix::fs::lchown(&planted, Some(65534), Some(65534)).unwrap();

    let r = output(snakepit_with_tmpdir(Some(&tmp), &["sweep"]));
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains(planted.to_str().unwrap()), "{r:?}");
    assert!(
        r.stderr.contains("symbolic link owned by uid 65534"),
        "{r:?}"
    );

    let r = output(snakepit_with_tmpdir(Some(&tmp), &["-v", "exec", "ping"]));
    assert_eq!(r.code, 0, "the pool starts all the same: {r:?}");
    assert!(
        r.stderr.contains("cannot write the run record")
            && r.stderr.contains(planted.to_str().unwrap()),
        "{r:?}"
    );
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
}

/// cli.md, global flags: "`-v`, `-vv`: workers' stderr (as `[worker id]
/// line`) and the pool's events (as `level: message field=value ...`) on
/// stderr, then detail"; "Colours only when the stream is a terminal": into
/// a pipe, no escape sequence at any verbosity, nor in an error.
#[test]
fn verbose_lines_have_the_documented_shapes_and_no_colour_into_a_pipe() {
    let dir = Dir::new("verbose-shapes");
    let quiet = dir.run(&["exec", "--script", WORKER, "talk"]);
    let v = dir.run(&["-v", "exec", "--script", WORKER, "talk"]);
    let vv = dir.run(&["-vv", "exec", "--script", WORKER, "talk"]);
    let failed = dir.run(&["-vv", "exec", "no_such_command"]);
    for r in [&quiet, &v, &vv] {
        assert_eq!(r.code, 0, "{r:?}");
    }
    assert_eq!(failed.code, 1, "{failed:?}");

    // A worker's line: `[worker id] line`, the id its pool gave it.
    let worker_line = |r: &Run| {
        r.stderr.lines().any(|l| {
            l.strip_prefix('[')
                .and_then(|l| l.split_once("] "))
                .is_some_and(|(id, text)| !id.is_empty() && !id.contains(' ') && text == "chatter")
        })
    };
    // An event: `level: message field=value ...`.
    let event_line = |r: &Run, level: &str| {
        r.stderr.lines().any(|l| {
            l.strip_prefix(level)
                .and_then(|l| l.strip_prefix(": "))
                .is_some_and(|rest| {
                    let mut words = rest.split(' ');
                    words
                        .next()
                        .is_some_and(|w| !w.is_empty() && !w.contains('='))
                        && rest.split(' ').any(|w| {
                            w.split_once('=')
                                .is_some_and(|(k, v)| !k.is_empty() && !v.is_empty())
                        })
                })
        })
    };
    assert!(
        !worker_line(&quiet) && !event_line(&quiet, "info"),
        "{quiet:?}"
    );
    assert!(worker_line(&v), "{v:?}");
    assert!(event_line(&v, "info"), "{v:?}");
    assert!(!event_line(&v, "debug"), "-v stops at info: {v:?}");
    assert!(worker_line(&vv), "{vv:?}");
    assert!(event_line(&vv, "debug"), "-vv adds detail: {vv:?}");
    for r in [&quiet, &v, &vv, &failed] {
        assert!(
            !r.stderr.contains('\x1b') && !r.stdout.contains('\x1b'),
            "an escape sequence into a pipe: {r:?}"
        );
    }
    assert!(
        failed.stderr.contains("error: ") && failed.stderr.contains("hint: "),
        "{failed:?}"
    );
    // And the note of what it starts (`--pipeline-depth`: "`-v` shows it").
    assert!(
        v.stderr
            .lines()
            .any(|l| l.starts_with("starting 1 x python") && l.contains("pipeline depth 16")),
        "{v:?}"
    );
}

/// Runs `snakepit ARGS` on a terminal of its own (util-linux `script`
/// gives it a pseudo-terminal for stdout and stderr); what it wrote there.
#[allow(clippy::disallowed_methods)] // `script` runs the tool under test
fn on_a_terminal(args: &[&str], no_color: bool) -> String {
    let line = std::iter::once(BIN)
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .current_dir(std::env::temp_dir())
        .env_remove("SNAKEPIT_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    if no_color {
        cmd.env("NO_COLOR", "1");
    }
    let out = cmd.output().expect("util-linux `script` runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// cli.md, global flags: "Colours only when the stream is a terminal and
/// `NO_COLOR` is not set": the same `-vv` run that writes no escape
/// sequence into a pipe colours its lines on a terminal, and not with
/// `NO_COLOR`.
#[test]
fn colours_on_a_terminal_only_without_no_color() {
    let args = ["-vv", "exec", "--script", WORKER, "talk"];
    let coloured = on_a_terminal(&args, false);
    assert!(coloured.contains("chatter"), "{coloured:?}");
    assert!(
        coloured.contains("\x1b[2mdebug:\x1b[0m"),
        "a dimmed level on a terminal: {coloured:?}"
    );
    let plain = on_a_terminal(&args, true);
    assert!(
        plain.contains("chatter") && plain.contains("debug: "),
        "{plain:?}"
    );
    assert!(!plain.contains('\x1b'), "NO_COLOR: {plain:?}");
}

/// cli.md, exit codes: 3 when "the workers could not start (...
/// MessagePack package missing)", "`snakepit doctor`; the worker's stderr is
/// printed"; README, troubleshooting: the MessagePack codec needs `pip
/// install msgpack`. The interpreter here is Python without its
/// site-packages (`-S`), where msgpack is not found; JSON works on it.
#[test]
fn msgpack_on_an_interpreter_without_its_package_exits_3_with_the_hint() {
    let dir = Dir::new("no-msgpack");
    let python = dir.file(
        "python-without-packages",
        &format!("#!/bin/sh\nexec '{}' -S \"$@\"\n", snakepit_tests::python()),
    );
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    let env = [("SNAKEPIT_PYTHON", python.as_str())];

    let r = snakepit_in(&dir.0, &["exec", "ping"], &env, "");
    assert_eq!(r.code, 0, "the interpreter runs the JSON worker: {r:?}");
    let r = snakepit_in(&dir.0, &["exec", "--codec", "msgpack", "ping"], &env, "");
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("error: "), "{r:?}");
    assert!(
        r.stderr.contains("No module named 'msgpack'"),
        "the worker's stderr: {r:?}"
    );
    let hint = r
        .stderr
        .lines()
        .find(|l| l.starts_with("hint: "))
        .unwrap_or_else(|| panic!("no hint: {r:?}"));
    assert!(
        hint.contains("pip install msgpack") && hint.contains("snakepit doctor"),
        "{hint}"
    );
}
