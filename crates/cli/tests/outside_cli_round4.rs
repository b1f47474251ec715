//! A fourth outside review of the `snakepit` command against docs/cli.md,
//! as a demanding user and as an attacker: what the earlier files
//! (cli.rs, outside_cli*.rs, promises*.rs, doc_promises.rs, docs_audit.rs,
//! audit_docs.rs, redteam_readme.rs, review_cli.rs, stop_signals.rs) do not
//! try.
//!
//! - `snakepit sweep` against a planted state directory: records that name
//!   processes which are not the run's (no run id, another run's id, started
//!   before the run), init, records that are symbolic links, named pipes,
//!   directories or another user's files;
//! - `state_dir` in the settings file beside `SNAKEPIT_STATE_DIR`, and a
//!   relative one with `exec` and `sweep` in different directories;
//! - a `./snakepit.toml` that is a symbolic link to nothing, or a loop of
//!   them; paths with spaces and line breaks;
//! - stdout discipline: `exec` and `bench --json` stay valid JSON however
//!   much the workers print, on stdout or stderr, with `-v`;
//! - signals: SIGHUP to `exec` and `serve`, Ctrl-C and SIGHUP to `bench`,
//!   Ctrl-C to `serve` while its workers start, a stop while `exec` waits
//!   for its arguments on stdin;
//! - `ARGS_JSON` empty or nested deeper than the wire allows, given as an
//!   argument and on stdin; a result number past a double.
//!
//! Every process a test starts is stopped by the test; every wait is a
//! generous guard against a hang, never a measurement.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{command, records, Dir, Run};
use serde_json::Value;

// ------------------------------------------------------------------ helpers

/// Runs `cmd` to its end, reading its output meanwhile; kills it and fails
/// past `limit` (a guard against a hang, not a measurement).
fn finish(mut cmd: Command, limit: Duration) -> (ExitStatus, Run) {
    let child = cmd.spawn().expect("snakepit runs");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let out = child.wait_with_output().expect("snakepit ends");
        let _ = tx.send(());
        out
    });
    if rx.recv_timeout(limit).is_err() {
        signal(pid, libc::SIGKILL);
        let out = reader.join().expect("the reader thread");
        panic!("still running after {limit:?}: {:?}", Run::from(out));
    }
    let out = reader.join().expect("the reader thread");
    (out.status, Run::from(out))
}

/// Polls `ready` every 20 ms for at most `limit`.
fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    ready()
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) with a pid this test started; no memory is involved.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Whether `pid` runs (a zombie does not count).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(after_comm(&stat).first(), Some(&"Z") | Some(&"X")),
        Err(_) => false,
    }
}

/// The fields of a `/proc/PID/stat` line after the command's name.
fn after_comm(stat: &str) -> Vec<&str> {
    stat.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// The start time of `pid` in clock ticks since boot (field 22 of stat).
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    after_comm(&stat)[19].parse().expect("start time")
}

/// A private state directory (mode 0700) under `dir`.
fn state_dir(dir: &Dir) -> PathBuf {
    let state = dir.0.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    state
}

/// Processes of `sleep 600` this test started in sessions of their own,
/// orphaned (their parent shell has ended); each is SIGKILLed on drop.
#[derive(Default)]
struct Orphans(Vec<u32>);

impl Orphans {
    /// Starts one, with `SNAKEPIT_RUN_ID` set to `run_id` when given; its pid.
    #[allow(clippy::disallowed_methods)] // a stand-in for somebody's process, not a worker
    fn start(&mut self, run_id: Option<&str>) -> u32 {
        let mut sh = Command::new("sh");
        sh.args([
            "-c",
            "setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!",
        ])
        .env_remove("SNAKEPIT_RUN_ID")
        .env_remove("SNAKEPIT_HOST")
        .stdin(Stdio::null())
        .stderr(Stdio::null());
        if let Some(id) = run_id {
            sh.env("SNAKEPIT_RUN_ID", id);
        }
        let out = sh.output().expect("sh runs");
        let pid: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the pid of the orphan");
        self.0.push(pid);
        assert!(
            wait_until(Duration::from_secs(10), || std::fs::read(format!(
                "/proc/{pid}/cmdline"
            ))
            .is_ok_and(|c| c.starts_with(b"sleep"))),
            "the orphan never ran sleep"
        );
        pid
    }
}

impl Drop for Orphans {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if alive(pid) {
                signal(pid, libc::SIGKILL);
            }
        }
    }
}

/// A pid that no process has now: that of a process that has ended.
#[allow(clippy::disallowed_methods)] // a short-lived stand-in, not a worker
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().expect("true runs");
    let pid = child.id();
    child.wait().expect("true ends");
    pid
}

/// A run record in the format `snakepit_core::sweep` writes, for a run in
/// this PID namespace and boot.
fn record(run_id: &str, host_pid: u32, host_start: u64, workers: &[(u32, u64)]) -> String {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata("/proc/self/ns/pid").expect("pid namespace");
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
    let mut text = format!(
        "snakepit-run 1\ninstance round4\nrun_id {run_id}\nhost {host_pid} {host_start}\npidns {} {}\nboot {}\n",
        ns.dev(),
        ns.ino(),
        boot.trim()
    );
    for (pid, start) in workers {
        text.push_str(&format!("worker {pid} {start}\n"));
    }
    text
}

/// The pids `sweep --json` reports as killed (or that it would kill).
fn killed_pids(report: &Value) -> BTreeSet<u64> {
    report["stale_runs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|run| run["killed"].as_array().into_iter().flatten())
        .filter_map(|p| p["pid"].as_u64())
        .collect()
}

/// The arguments of `round4_nap.py`'s `nap`: ten minutes' sleep, its pid
/// written to `pids` first.
fn nap_args(pids: &Path) -> String {
    format!(r#"{{"s": 600, "pids": {:?}}}"#, pids.to_str().unwrap())
}

/// The pid written to `path`, once it is there whole.
fn pid_in(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
}

/// A Python worker script of this file's, by name.
fn worker(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workers")
        .join(name)
        .display()
        .to_string()
}

// -------------------------------------------------------------------- sweep

/// cli.md, `snakepit sweep`: it kills "only processes that carry the dead
/// run's `SNAKEPIT_RUN_ID` and are either its recorded workers (same start
/// time) or started after it ... Anything else, a reused pid or another
/// program with the same command line, is left alone". A planted record of
/// a crashed run names processes that are not the run's: one without the
/// run id (with its true start time), one with the run id that started
/// before the run (recorded with another start time), init, and one with
/// another run's id started after it. Beside it: records that are a
/// symbolic link (to `/dev/zero`, and to a real record elsewhere), a named
/// pipe, a directory and, as root, a real record owned by another user.
/// The sweep ends, kills the run's two processes and nothing else.
#[test]
fn sweep_kills_only_the_processes_of_a_planted_record_that_carry_its_run() {
    let dir = Dir::new("round4-sweep-planted");
    let state = state_dir(&dir);
    let run = "4a1f0000000000000000000000000001";
    let other_run = "4a1f0000000000000000000000000002";
    let linked_run = "4a1f0000000000000000000000000003";
    let foreign_run = "4a1f0000000000000000000000000004";
    let mut orphans = Orphans::default();
    let unrelated = orphans.start(None);
    let early = orphans.start(Some(run));
    // Clock ticks are 10 ms: the run starts strictly after `early` and
    // strictly before the processes that follow.
    std::thread::sleep(Duration::from_millis(300));
    let host_start = start_time(early) + 5;
    std::thread::sleep(Duration::from_millis(300));
    let recorded = orphans.start(Some(run));
    let late = orphans.start(Some(run));
    let another = orphans.start(Some(other_run));
    let behind_link = orphans.start(Some(linked_run));
    let behind_owner = orphans.start(Some(foreign_run));
    assert!(start_time(recorded) > host_start, "the clock did not move");
    let host = dead_pid();
    std::fs::write(
        state.join(format!("round4.{host}.{run}.run")),
        record(
            run,
            host,
            host_start,
            &[
                (unrelated, start_time(unrelated)),
                (early, start_time(early) + 1),
                (1, start_time(1)),
                (another, start_time(another)),
                (recorded, start_time(recorded)),
            ],
        ),
    )
    .unwrap();
    // A real record outside the directory, reached only through a link.
    let elsewhere = dir.0.join("elsewhere.run");
    std::fs::write(
        &elsewhere,
        record(
            linked_run,
            host,
            host_start,
            &[(behind_link, start_time(behind_link))],
        ),
    )
    .unwrap();
    std::os::unix::fs::symlink(&elsewhere, state.join(format!("round4.{host}.link.run"))).unwrap();
    std::os::unix::fs::symlink("/dev/zero", state.join("zero.run")).unwrap();
    std::fs::create_dir(state.join("directory.run")).unwrap();
    let fifo = state.join("fifo.run");
    #[allow(clippy::disallowed_methods)] // mkfifo(1), not a worker
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    // SAFETY: geteuid(2) reads the caller's credentials.
    #[allow(unsafe_code)]
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        let path = state.join(format!("round4.{host}.{foreign_run}.run"));
        std::fs::write(
            &path,
            record(
                foreign_run,
                host,
                host_start,
                &[(behind_owner, start_time(behind_owner))],
            ),
        )
        .unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    }
    let state_arg = state.to_str().unwrap();
    let sweep = |dry: bool| {
        let mut args = vec!["sweep", "--json", "--state-dir", state_arg];
        if dry {
            args.push("--dry-run");
        }
        let (_, r) = finish(command(&dir.0, &args, &[]), Duration::from_secs(120));
        assert_eq!(r.code, 0, "{r:?}");
        r.json()
    };
    let the_run: BTreeSet<u64> = [u64::from(recorded), u64::from(late)].into();
    let dry = sweep(true);
    assert_eq!(killed_pids(&dry), the_run, "{dry:#}");
    for &pid in &orphans.0 {
        assert!(alive(pid), "a dry run killed {pid}: {dry:#}");
    }
    let report = sweep(false);
    assert_eq!(killed_pids(&report), the_run, "{report:#}");
    assert!(
        wait_until(Duration::from_secs(10), || !alive(recorded) && !alive(late)),
        "the run's processes live on: {report:#}"
    );
    for pid in [unrelated, early, another, behind_link, behind_owner, 1] {
        assert!(alive(pid), "{pid} was killed: {report:#}");
    }
    let unreadable = report["unreadable"].to_string();
    for name in ["zero.run", "fifo.run", "link.run"] {
        assert!(unreadable.contains(name), "{name}: {report:#}");
    }
    // Neither the link nor what it names was touched.
    assert!(std::fs::symlink_metadata(state.join(format!("round4.{host}.link.run"))).is_ok());
    assert!(elsewhere.exists(), "{report:#}");
}

// ------------------------------------------------------------ snakepit.toml

/// cli.md, `snakepit.toml`: "a `./snakepit.toml` that is there but is no
/// regular file ... is a usage error ... it is not skipped". A symbolic
/// link to a file that is missing is there (`ls` shows it) and names
/// settings the user meant: running with none would be wrong. A loop of
/// links is refused as well. Either way no worker starts.
#[test]
fn a_snakepit_toml_that_links_to_nothing_or_loops_is_a_usage_error() {
    let dir = Dir::new("round4-toml-links");
    let local = dir.0.join("snakepit.toml");
    // A link to a name nothing has, and a link to itself.
    for (what, target) in [("dangling", "moved-away.toml"), ("loop", "snakepit.toml")] {
        std::os::unix::fs::symlink(target, &local).unwrap();
        for args in [
            &["exec", "ping"][..],
            &["bench", "--requests", "64", "--concurrency", "4", "--json"],
            &["sweep", "--dry-run", "--json"],
        ] {
            let (_, r) = finish(command(&dir.0, args, &[]), Duration::from_secs(120));
            assert_eq!(r.code, 2, "{what} {args:?}: {r:?}");
            assert!(r.stderr.starts_with("error: "), "{what} {args:?}: {r:?}");
            assert!(r.stderr.contains("snakepit.toml"), "{what} {args:?}: {r:?}");
            assert!(r.stdout.is_empty(), "{what} {args:?}: {r:?}");
        }
        std::fs::remove_file(&local).unwrap();
    }
}

// ------------------------------------------------------- stdout discipline

/// cli.md: "`-v` shows what the workers write to stderr (a bridge sends
/// `print` / `console.log` / `puts` there)", the result is JSON on stdout,
/// `bench --json` "prints one object". A worker that prints lines that
/// look like JSON, on its stdout and its stderr, on every call, leaves
/// stdout exactly the result (exec) and one JSON object (bench), with or
/// without `-v`; with `-v` its lines are on stderr.
#[test]
fn exec_and_bench_json_stay_valid_json_whatever_the_workers_print() {
    let dir = Dir::new("round4-chatty");
    let script = worker("round4_chatty.py");
    for v in [&[][..], &["-v"][..]] {
        let mut args = v.to_vec();
        args.extend(["exec", "--script", &script, "chatter", r#"{"n": 3}"#]);
        let (_, r) = finish(command(&dir.0, &args, &[]), Duration::from_secs(120));
        assert_eq!(r.code, 0, "{r:?}");
        let lines: Vec<&str> = r.stdout.lines().collect();
        assert_eq!(lines.len(), 1, "{r:?}");
        assert_eq!(r.json(), serde_json::json!({"n": 3, "said": 6}), "{r:?}");
        if !v.is_empty() {
            assert!(r.stderr.contains("round4 chatter on stdout"), "{r:?}");
            assert!(r.stderr.contains("round4 chatter on stderr"), "{r:?}");
        }
    }
    for v in [&[][..], &["-v"][..]] {
        let mut args = v.to_vec();
        args.extend([
            "bench",
            "--script",
            &script,
            "--command",
            "chatter",
            "--args",
            r#"{"n": 1}"#,
            "--workers",
            "2",
        ]);
        args.extend(common::SHORT_BENCH_JSON);
        let (_, r) = finish(command(&dir.0, &args, &[]), Duration::from_secs(300));
        assert_eq!(r.code, 0, "{r:?}");
        let report = r.json();
        assert_eq!(report["command"], "chatter", "{r:?}");
        assert_eq!(report["workers"], 2, "{r:?}");
        assert!(!r.stdout.contains("round4 chatter"), "{r:?}");
    }
}

// ------------------------------------------------------------------ signals

/// A terminal that closes sends SIGHUP, which docs/cli.md does not list
/// among the stops `exec` handles: the command ends by it, but what it
/// started must not outlive it (the workers have the parent-death signal),
/// and its run record is then a crashed run's, which `snakepit sweep`
/// removes, as cli.md says of a `bench` ended by a signal.
#[test]
fn exec_hung_up_during_its_call_leaves_no_worker_and_the_sweep_takes_its_record() {
    let dir = Dir::new("round4-sighup");
    let state = state_dir(&dir);
    let pids = dir.0.join("pids");
    let script = worker("round4_nap.py");
    let args_json = nap_args(&pids);
    let state_env = [("SNAKEPIT_STATE_DIR", state.to_str().unwrap())];
    let mut child = command(
        &dir.0,
        &["exec", "--script", &script, "nap", &args_json],
        &state_env,
    )
    .spawn()
    .expect("snakepit runs");
    let worker_pid = || pid_in(&pids);
    let started = wait_until(Duration::from_secs(60), || {
        worker_pid().is_some() && !records(&state).is_empty()
    });
    if !started {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!("the call never started: {:?}", Run::from(out));
    }
    let nap = worker_pid().unwrap();
    signal(child.id(), libc::SIGHUP);
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            signal(nap, libc::SIGKILL);
            panic!("exec did not end within 30 s of SIGHUP");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let gone = wait_until(Duration::from_secs(10), || !alive(nap));
    if !gone {
        signal(nap, libc::SIGKILL);
    }
    assert!(gone, "the worker {nap} outlived exec ({status:?})");
    assert!(
        status.signal() == Some(libc::SIGHUP) || status.code() == Some(129),
        "{status:?}"
    );
    let (_, r) = finish(
        command(&dir.0, &["sweep", "--json"], &state_env),
        Duration::from_secs(60),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.json()["stale_runs"].as_array().map(Vec::len),
        Some(1),
        "{r:?}"
    );
    assert!(records(&state).is_empty(), "{r:?}");
}

// ---------------------------------------------------------------- ARGS_JSON

/// cli.md: "`ARGS_JSON` is a JSON object (default `{}`); `-` reads it from
/// stdin". The same text gives the same outcome either way: an object
/// nested deeper than the tool reads is a usage error (exit 2), one within
/// that but deeper than the wire carries is refused unsent (exit 1, saying
/// so), one a little shallower is echoed back whole, and text that is not
/// UTF-8 on stdin is a usage error. Never a panic, never output on stdout
/// for a failure.
#[test]
fn deeply_nested_arguments_fail_alike_from_the_command_line_and_stdin() {
    let dir = Dir::new("round4-deep-args");
    let nested = |depth: usize| format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    for (depth, code, says) in [
        (100, 0, ""),
        (127, 1, "not sent"),
        (400, 2, "ARGS_JSON is not valid JSON"),
    ] {
        let text = nested(depth);
        let from_arg = finish(
            command(&dir.0, &["exec", "echo", &text], &[]),
            Duration::from_secs(120),
        )
        .1;
        let from_stdin = common::snakepit_in(&dir.0, &["exec", "echo", "-"], &[], &text);
        for (how, r) in [("argument", &from_arg), ("stdin", &from_stdin)] {
            assert_eq!(r.code, code, "{depth} by {how}: {r:?}");
            assert!(!r.stderr.contains("panicked"), "{depth} by {how}: {r:?}");
            if code == 0 {
                let echoed = serde_json::from_str::<Value>(&text).unwrap();
                assert_eq!(r.json()["echoed"], echoed, "{depth} by {how}");
            } else {
                assert!(r.stdout.is_empty(), "{depth} by {how}: {r:?}");
                assert!(r.stderr.starts_with("error: "), "{depth} by {how}: {r:?}");
                assert!(r.stderr.contains(says), "{depth} by {how}: {r:?}");
            }
        }
    }
    #[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
    let mut child = Command::new(common::BIN)
        .args(["exec", "echo", "-"])
        .current_dir(&dir.0)
        .env_remove("SNAKEPIT_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(b"{\"a\": \"\xff\xfe\"}");
    }
    let r = Run::from(child.wait_with_output().unwrap());
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.starts_with("error: ") && r.stdout.is_empty(),
        "{r:?}"
    );
}

/// cli.md, exit codes: "`bench` ends at once by the signal's default
/// action, as its baseline runs on plain threads; its workers die with
/// it" (stop_signals.rs tries SIGTERM). Ctrl-C and a hang-up, sent once
/// its workers run, end it the same way, and no process of its worker
/// script outlives it.
#[test]
fn bench_ctrl_c_or_hang_up_ends_it_by_the_signal_and_leaves_no_worker() {
    for sig in [libc::SIGINT, libc::SIGHUP] {
        let dir = Dir::new("round4-bench-signal");
        let state = state_dir(&dir);
        // A copy of its own, so that only this run's processes name it.
        let script = dir.0.join(format!("round4_bench_{sig}.py"));
        std::fs::copy(worker("round4_chatty.py"), &script).unwrap();
        let script = script.to_str().unwrap().to_owned();
        let mut child = command(
            &dir.0,
            &[
                "bench",
                "--script",
                &script,
                "--command",
                "chatter",
                "--args",
                r#"{"n": 0}"#,
                "--workers",
                "2",
                "--requests",
                "100000000",
                "--json",
            ],
            &[("SNAKEPIT_STATE_DIR", state.to_str().unwrap())],
        )
        .spawn()
        .expect("snakepit runs");
        let running = wait_until(Duration::from_secs(60), || {
            !common::processes_running(&script).is_empty()
        });
        if !running {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("the bench never started a worker: {:?}", Run::from(out));
        }
        // Well into its run: past the check, in a measurement.
        std::thread::sleep(Duration::from_secs(3));
        signal(child.id(), sig);
        let (status, r) = {
            let until = Instant::now() + Duration::from_secs(30);
            loop {
                if child.try_wait().unwrap().is_some() {
                    let out = child.wait_with_output().unwrap();
                    break (out.status, Run::from(out));
                }
                if Instant::now() > until {
                    let _ = child.kill();
                    let out = child.wait_with_output().unwrap();
                    panic!("bench lived 30 s past signal {sig}: {:?}", Run::from(out));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        let gone = wait_until(Duration::from_secs(10), || {
            common::processes_running(&script).is_empty()
        });
        let left = common::processes_running(&script);
        for &pid in &left {
            signal(pid, libc::SIGKILL);
        }
        assert!(gone, "signal {sig}: workers {left:?} outlived the bench");
        assert_eq!(status.signal(), Some(sig), "{r:?}");
        assert!(r.stdout.is_empty(), "signal {sig}: {r:?}");
    }
}

/// Paths with spaces and line breaks: a `--config` file in such a folder,
/// whose `script` is relative to it and has a space in its name, and a
/// state directory (`SNAKEPIT_STATE_DIR`) whose name has a line break. The
/// call runs, `-v` names the settings file, and `sweep --json` reports the
/// state directory by its exact name.
#[test]
fn settings_scripts_and_state_dirs_whose_paths_have_spaces_and_line_breaks() {
    let dir = Dir::new("round4-odd-paths");
    let odd = dir.0.join("a folder\nwith a break");
    std::fs::create_dir(&odd).unwrap();
    std::fs::copy(worker("round4_chatty.py"), odd.join("chatty worker.py")).unwrap();
    let config = odd.join("my settings.toml");
    std::fs::write(
        &config,
        "script = \"chatty worker.py\"\n[pool]\npool_size = 1\n",
    )
    .unwrap();
    let state = dir.0.join("state\nhere");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let env = [("SNAKEPIT_STATE_DIR", state.to_str().unwrap())];
    let (_, r) = finish(
        command(
            &dir.0,
            &[
                "-v",
                "--config",
                config.to_str().unwrap(),
                "exec",
                "chatter",
                r#"{"n": 1}"#,
            ],
            &env,
        ),
        Duration::from_secs(120),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["said"], 2, "{r:?}");
    assert!(r.stderr.contains("my settings.toml"), "{r:?}");
    assert!(records(&state).is_empty(), "{r:?}");
    let (_, r) = finish(
        command(&dir.0, &["sweep", "--json", "--dry-run"], &env),
        Duration::from_secs(60),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["state_dir"], state.to_str().unwrap(), "{r:?}");
}

/// cli.md: "`ARGS_JSON` is a JSON object ...; `-` reads it from stdin";
/// one that is not is a usage error (exit 2). Empty arguments, given as an
/// empty argument or as an empty stdin, say that they are empty, and the
/// hint does not blame the shell's quoting (no quote was there to take).
#[test]
fn empty_arguments_are_a_usage_error_that_says_they_are_empty() {
    let dir = Dir::new("round4-empty-args");
    let by_arg = finish(
        command(&dir.0, &["exec", "echo", ""], &[]),
        Duration::from_secs(60),
    )
    .1;
    let by_stdin = common::snakepit_in(&dir.0, &["exec", "echo", "-"], &[], "\n");
    for (how, r) in [("argument", by_arg), ("stdin", by_stdin)] {
        assert_eq!(r.code, 2, "{how}: {r:?}");
        assert!(r.stdout.is_empty(), "{how}: {r:?}");
        assert!(
            r.stderr.starts_with("error: ARGS_JSON is empty"),
            "{how}: {r:?}"
        );
        assert!(!r.stderr.contains("quote the object"), "{how}: {r:?}");
    }
}

/// cli.md: `exec -` reads its arguments from stdin, and a stop "while it
/// is read ends the tool at once" (exec.rs): before any worker starts.
/// Ctrl-C and SIGTERM while stdin stays open and empty end it promptly, as
/// a shell reports the signal (130 or 143), with nothing on stdout, no
/// worker started and no run record.
#[test]
fn a_stop_while_exec_waits_for_its_arguments_on_stdin_ends_it_with_nothing_started() {
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let dir = Dir::new("round4-stdin-stop");
        let state = state_dir(&dir);
        // A copy of its own, so that only this run's worker would name it.
        let script = dir.0.join("round4_stdin_nap.py");
        std::fs::copy(worker("round4_nap.py"), &script).unwrap();
        let script = script.to_str().unwrap().to_owned();
        let mut cmd = command(
            &dir.0,
            &["exec", "--script", &script, "nap", "-"],
            &[("SNAKEPIT_STATE_DIR", state.to_str().unwrap())],
        );
        cmd.stdin(Stdio::piped());
        let mut child = cmd.spawn().expect("snakepit runs");
        // Held open, never written: the tool waits on it.
        let stdin = child.stdin.take();
        std::thread::sleep(Duration::from_secs(1));
        assert!(child.try_wait().unwrap().is_none(), "exec did not wait");
        signal(child.id(), sig);
        let until = Instant::now() + Duration::from_secs(30);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                panic!("exec lived 30 s past signal {sig}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        let status = out.status;
        assert!(
            status.signal() == Some(sig) || status.code() == Some(code),
            "{status:?}"
        );
        assert!(out.stdout.is_empty(), "{status:?}");
        assert!(records(&state).is_empty(), "{:?}", records(&state));
        assert!(
            common::processes_running(&script).is_empty(),
            "a worker was started: {:?}",
            common::processes_running(&script)
        );
    }
}

/// cli.md, `serve`: "until Ctrl-C or SIGTERM ... (a stop that comes while
/// NATS is reached or the workers still start stops them and exits 0 as
/// well ...)". review_cli.rs sends SIGTERM; Ctrl-C while a worker still
/// starts (a model loading) leaves as cleanly: exit 0, no worker left
/// running, no run record.
#[test]
fn serve_ctrl_c_while_its_workers_start_exits_0_and_leaves_nothing() {
    let nats = snakepit_tests::NatsServer::start();
    let dir = Dir::new("round4-serve-int-start");
    let script = dir.file("round4_slow_start.py", common::SLOW_START_PY);
    let stopped = common::stop_while_starting(
        &dir,
        &[
            "serve",
            "--nats",
            &nats.url,
            "--cluster",
            "round4slow",
            "--script",
            &script,
            "--pool-size",
            "1",
        ],
        &script,
        libc::SIGINT,
    );
    assert!(stopped.workers.is_empty(), "{:?}", stopped.workers);
    assert_eq!(
        stopped.status.code(),
        Some(0),
        "{:?}\n{}",
        stopped.status,
        stopped.stderr
    );
    assert!(stopped.records.is_empty(), "{:?}", stopped.records);
}

/// A hang-up (SIGHUP: the terminal `serve` was started from closes) is
/// not among the stops cli.md lists, so it ends `serve` by the signal; the
/// workers it serves must not outlive it, and the run record it leaves is
/// a crashed run's, which `snakepit sweep` then removes.
#[test]
fn serve_hung_up_while_serving_leaves_no_worker_and_the_sweep_takes_its_record() {
    let nats = snakepit_tests::NatsServer::start();
    let dir = Dir::new("round4-serve-hup");
    let state = state_dir(&dir);
    let script = dir.0.join("round4_serve_hup.py");
    std::fs::copy(worker("round4_nap.py"), &script).unwrap();
    let script = script.to_str().unwrap().to_owned();
    let state_env = [("SNAKEPIT_STATE_DIR", state.to_str().unwrap())];
    let mut host = common::Serve::start_in(
        &dir.0,
        &[
            "--nats",
            &nats.url,
            "--cluster",
            "round4hup",
            "--script",
            &script,
            "--pool-size",
            "2",
        ],
        &state_env,
    );
    let workers = common::processes_running(&script);
    assert!(!workers.is_empty(), "serve serves without a worker");
    host.signal(libc::SIGHUP);
    let Some(status) = host.wait_for(Duration::from_secs(30)) else {
        panic!("serve lived 30 s past SIGHUP");
    };
    let gone = wait_until(Duration::from_secs(10), || {
        common::processes_running(&script).is_empty()
    });
    let left = common::processes_running(&script);
    for &pid in &left {
        signal(pid, libc::SIGKILL);
    }
    assert!(gone, "workers {left:?} outlived serve ({status:?})");
    assert_eq!(status.signal(), Some(libc::SIGHUP), "{status:?}");
    let (_, r) = finish(
        command(&dir.0, &["sweep", "--json"], &state_env),
        Duration::from_secs(60),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(records(&state).is_empty(), "{r:?}");
}

/// cli.md, `snakepit.toml`: "`sweep` reads only `state_dir` under `[pool]`
/// from it, where the pools it sweeps keep their run records, unless
/// `--state-dir` is given", and `SNAKEPIT_STATE_DIR` names the default
/// directory. With both the file's `state_dir` and the variable set, an
/// `exec` killed with SIGKILL (no clean shutdown) leaves its record where
/// a `snakepit sweep` run with the same file and variable looks: the sweep
/// finds that crashed run and removes its record.
#[test]
fn the_sweep_finds_a_killed_execs_record_under_the_files_state_dir_and_the_variable() {
    let dir = Dir::new("round4-state-dir-precedence");
    let from_file = dir.0.join("from-file");
    let from_var = dir.0.join("from-var");
    for d in [&from_file, &from_var] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    dir.file(
        "snakepit.toml",
        &format!("[pool]\nstate_dir = {:?}\n", from_file.to_str().unwrap()),
    );
    let pids = dir.0.join("pids");
    let script = worker("round4_nap.py");
    let args_json = nap_args(&pids);
    let env = [("SNAKEPIT_STATE_DIR", from_var.to_str().unwrap())];
    let mut child = command(
        &dir.0,
        &["exec", "--script", &script, "nap", &args_json],
        &env,
    )
    .spawn()
    .expect("snakepit runs");
    let worker_pid = || pid_in(&pids);
    let started = wait_until(Duration::from_secs(60), || {
        worker_pid().is_some() && !(records(&from_file).is_empty() && records(&from_var).is_empty())
    });
    let _ = child.kill();
    let _ = child.wait();
    let nap = worker_pid();
    assert!(started, "the call never started");
    let nap = nap.unwrap();
    let gone = wait_until(Duration::from_secs(10), || !alive(nap));
    if !gone {
        signal(nap, libc::SIGKILL);
    }
    assert!(gone, "the worker {nap} outlived its killed host");
    let left = (records(&from_file), records(&from_var));
    let (_, r) = finish(
        command(&dir.0, &["sweep", "--json"], &env),
        Duration::from_secs(60),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.json()["stale_runs"].as_array().map(Vec::len),
        Some(1),
        "records left {left:?}: {r:?}"
    );
    assert!(
        records(&from_file).is_empty() && records(&from_var).is_empty(),
        "{r:?}"
    );
}

/// cli.md, exit codes: 5 is "a worker ... broke the protocol
/// (`Protocol`)", with a hint. A Python result holding an integer past
/// what a double holds (10^400) is valid JSON the host cannot read as a
/// number: exit 5, and the hint names the number, not stray output on the
/// worker's stdout (nothing wrote there). 10^30 comes back as a float.
#[test]
fn a_result_number_past_a_double_is_exit_5_with_a_hint_that_names_it() {
    let dir = Dir::new("round4-numbers");
    let script = worker("round4_numbers.py");
    let (_, r) = finish(
        command(
            &dir.0,
            &["exec", "--script", &script, "number", r#"{"exp": 30}"#],
            &[],
        ),
        Duration::from_secs(120),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["n"].as_f64(), Some(1e30), "{r:?}");
    let (_, r) = finish(
        command(
            &dir.0,
            &["exec", "--script", &script, "number", r#"{"exp": 400}"#],
            &[],
        ),
        Duration::from_secs(120),
    );
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    let hint = r.stderr.lines().last().unwrap_or_default();
    assert!(hint.starts_with("hint: "), "{r:?}");
    assert!(hint.contains("number"), "{r:?}");
    assert!(!hint.contains("wrote to the worker's stdout"), "{r:?}");
}

/// cli.md, `snakepit.toml`: `script` is "relative to this file", and
/// "`sweep` reads only `state_dir` under `[pool]` from it, where the pools
/// it sweeps keep their run records". With a relative `state_dir` in a
/// file given by `--config`, an `exec` killed with SIGKILL in one working
/// directory leaves its record where a `snakepit sweep --config` of the
/// same file run from another directory looks: the sweep finds the crashed
/// run and removes its record.
#[test]
fn a_relative_state_dir_is_the_files_wherever_exec_and_sweep_run() {
    let dir = Dir::new("round4-relative-state-dir");
    let conf = dir.0.join("conf");
    let (here, there) = (dir.0.join("here"), dir.0.join("there"));
    for d in [&conf, &here, &there] {
        std::fs::create_dir(d).unwrap();
    }
    let config = conf.join("settings.toml");
    std::fs::write(&config, "[pool]\nstate_dir = \"records\"\n").unwrap();
    let config = config.to_str().unwrap().to_owned();
    let pids = dir.0.join("pids");
    let args_json = nap_args(&pids);
    let script = worker("round4_nap.py");
    let mut child = command(
        &here,
        &[
            "--config", &config, "exec", "--script", &script, "nap", &args_json,
        ],
        &[],
    )
    .spawn()
    .expect("snakepit runs");
    let worker_pid = || pid_in(&pids);
    let started = wait_until(Duration::from_secs(60), || worker_pid().is_some());
    let _ = child.kill();
    let _ = child.wait();
    assert!(started, "the call never started");
    let nap = worker_pid().unwrap();
    let gone = wait_until(Duration::from_secs(10), || !alive(nap));
    if !gone {
        signal(nap, libc::SIGKILL);
    }
    assert!(gone, "the worker {nap} outlived its killed host");
    let written = [conf.join("records"), here.join("records")].map(|d| records(&d));
    let (_, r) = finish(
        command(&there, &["--config", &config, "sweep", "--json"], &[]),
        Duration::from_secs(60),
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.json()["stale_runs"].as_array().map(Vec::len),
        Some(1),
        "records written (conf/records, here/records): {written:?}: {r:?}"
    );
    assert!(!there.join("records").exists(), "{r:?}");
}
