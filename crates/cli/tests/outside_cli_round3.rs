//! A third outside review of the `snakepit` command against docs/cli.md and
//! docs/reliability.md, as a demanding user and as an attacker: what the
//! earlier files (cli.rs, outside_cli*.rs, promises*.rs, doc_promises.rs,
//! stop_signals.rs, review_cli.rs, redteam_readme.rs) do not try.
//!
//! - a worker's child that left its process group (`setsid`), for `exec`
//!   ended normally or by a stop signal, and for the processes of `bench`'s
//!   raw loop;
//! - two stop signals in a row while `exec` starts its workers;
//! - `doctor` given an interpreter (`SNAKEPIT_PYTHON`) that is there but
//!   does not run, or that floods its output;
//! - a `--script` that is a named pipe, a worker that prints on its stdout
//!   before its handshake, a `--plot` that is a named pipe, a settings file
//!   of 64 MiB.
//!
//! Every process a test starts is stopped by the test; every wait is a
//! generous guard against a hang, never a measurement.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{command, records, Dir, Run};
use serde_json::Value;

// ------------------------------------------------------------------ helpers

/// Runs `cmd` to its end; kills it and fails past `limit` (a guard against
/// a hang, not a measurement).
fn finish(mut cmd: Command, limit: Duration) -> (ExitStatus, Run) {
    let mut child = cmd.spawn().expect("snakepit runs");
    let until = Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            let out = child.wait_with_output().expect("snakepit ends");
            panic!("still running after {limit:?}: {:?}", Run::from(out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("snakepit ends");
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
    // SAFETY: kill(2) with a pid this test started or read from a file its
    // own worker wrote; no memory is involved.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// A private state directory (mode 0700) under `dir`.
fn state_dir(dir: &Dir) -> PathBuf {
    let state = dir.0.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    state
}

/// The processes named in `file`, one "<label> <pid>" a line.
fn escapes(file: &Path) -> Vec<(String, u32)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (label, pid) = l.split_once(' ')?;
            Some((label.to_owned(), pid.trim().parse().ok()?))
        })
        .collect()
}

/// Waits up to 10 s for `pids` to be gone, then SIGKILLs what is left (so
/// that a failed test leaves nothing) and returns it.
fn still_alive_after_10_s(pids: &[u32]) -> Vec<u32> {
    wait_until(Duration::from_secs(10), || {
        pids.iter().all(|&p| !snakepit_tests::alive(p))
    });
    let left: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|&p| snakepit_tests::alive(p))
        .collect();
    for &p in &left {
        signal(p, libc::SIGKILL);
    }
    left
}

/// A worker whose `escape` starts `sleep 300` in a session of its own
/// (`setsid`, out of its worker's process group), writes "<worker pid>
/// <child pid>" to `marker` and holds the call `hold` seconds.
const ESCAPING_WORKER: &str = r#"
import os, subprocess, time
import snakepit_bridge

worker = snakepit_bridge.Worker()

@worker.command("escape")
def escape(args):
    child = subprocess.Popen(["sleep", "300"], start_new_session=True,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    with open(args["marker"] + ".tmp", "w") as f:
        f.write("%d %d" % (os.getpid(), child.pid))
    os.rename(args["marker"] + ".tmp", args["marker"])
    time.sleep(args.get("hold", 0))
    return {"child": child.pid}

worker.run()
"#;

// ------------------------------------------------------------ exec, orphans

/// docs/reliability.md, "No orphan, on any path": at the pool's end
/// (`shutdown()`, or the last handle dropped) the pool kills "every process
/// of the run that is not its own child", such as "a worker's child that
/// called `setsid`"; docs/cli.md: `exec` stopped by Ctrl-C (130) or SIGTERM
/// (143): "its workers are stopped and its run record removed". The
/// existing tests stop `exec` with a worker's child inside its process
/// group. Here the child left the group, which neither the group kill nor
/// the parent-death signal reaches; `exec` ends on its own (exit 0, the
/// result printed), by SIGTERM (143) and by Ctrl-C (130). Each time the
/// worker and its escaped child are gone and no run record is left, so no
/// orphan exists that a later sweep could not even find.
#[test]
fn exec_ended_or_stopped_leaves_no_child_that_left_its_workers_group() {
    for (stop, code, name) in [
        (None, 0, "a normal end"),
        (Some(libc::SIGTERM), 143, "SIGTERM"),
        (Some(libc::SIGINT), 130, "Ctrl-C"),
    ] {
        let dir = Dir::new("r3-exec-escape");
        let state = state_dir(&dir);
        let script = dir.file("escaping.py", ESCAPING_WORKER);
        let marker = dir.0.join("pids");
        // Held long enough for the signal to come during the call.
        let hold = if stop.is_some() { 300 } else { 0 };
        let args = serde_json::json!({"marker": marker, "hold": hold}).to_string();
        let state_s = state.display().to_string();
        let mut cmd = command(
            &dir.0,
            &["exec", "--script", &script, "escape", &args],
            &[("SNAKEPIT_STATE_DIR", state_s.as_str())],
        );
        let mut child = cmd.spawn().expect("snakepit runs");
        let ran = wait_until(Duration::from_secs(60), || {
            marker.exists() || child.try_wait().ok().flatten().is_some()
        });
        if let Some(sig) = stop {
            signal(child.id(), sig);
        }
        let until = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill();
        }
        let r = Run::from(child.wait_with_output().expect("snakepit ends"));
        let pids: Vec<u32> = std::fs::read_to_string(&marker)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        let left = still_alive_after_10_s(&pids);
        assert!(ran && pids.len() == 2, "{name}: the call ran: {r:?}");
        assert_eq!(r.code, code, "{name}: {r:?}");
        if stop.is_none() {
            assert_eq!(r.json()["child"], pids[1], "{name}: {r:?}");
        } else {
            assert!(r.stdout.is_empty(), "{name}: {r:?}");
            assert!(r.stderr.contains("stopped by"), "{name}: {r:?}");
        }
        assert!(
            left.is_empty(),
            "{name}: left running (worker, escaped child): {left:?} of {pids:?}"
        );
        assert_eq!(records(&state), Vec::<String>::new(), "{name}: run record");
    }
}

// ---------------------------------------------------------- bench, orphans

/// A bridge worker whose module-level code starts `sleep 300` in a session
/// of its own and writes "<SNAKEPIT_WORKER_ID> <child pid>" to the file
/// `LOG`; `ping` answers as the bridge's own does.
const ESCAPING_AT_START: &str = r#"
import os, subprocess
child = subprocess.Popen(["sleep", "300"], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
with open(LOG, "a") as f:
    f.write("%s %d\n" % (os.environ.get("SNAKEPIT_WORKER_ID", "?"), child.pid))
import snakepit_bridge
worker = snakepit_bridge.Worker()

@worker.command("ping")
def ping(args):
    return {"status": "ok"}

worker.run()
"#;

/// docs/cli.md, `bench`, raw loop: "It bypasses the pool's queue, not its
/// process safety: each worker is a `snakepit_core::RawProcess`, started
/// through the pool's own spawn path (...), so a bench that is killed
/// leaves no worker, nor a worker's child, behind". A worker whose start
/// puts a child in a session of its own (a daemonising library): the
/// pool's workers' children are killed at each pool's end, as
/// docs/reliability.md says. The raw loop's are not, even when the bench
/// ends normally with exit 0; and the raw loop writes no run record
/// (`RawProcess`: "no run record"), so `snakepit sweep` cannot find them
/// either: they run until something else kills them.
#[test]
fn a_bench_leaves_no_child_of_its_raw_loop_workers_behind() {
    let dir = Dir::new("r3-bench-escape");
    let state = state_dir(&dir);
    let log = dir.0.join("escapes.log");
    let script = dir.file(
        "escaping_at_start.py",
        &ESCAPING_AT_START.replace("LOG", &format!("{:?}", log.display().to_string())),
    );
    let state_s = state.display().to_string();
    let cmd = command(
        &dir.0,
        &[
            "bench",
            "--script",
            &script,
            "--command",
            "ping",
            "--workers",
            "1",
            "--requests",
            "64",
            "--concurrency",
            "2",
            "--init-ms",
            "10",
            "--json",
        ],
        &[("SNAKEPIT_STATE_DIR", state_s.as_str())],
    );
    let (_, r) = finish(cmd, Duration::from_secs(300));
    let started = escapes(&log);
    let (raw, pooled): (Vec<_>, Vec<_>) = started.iter().partition(|(id, _)| id.starts_with("raw"));
    let raw: Vec<u32> = raw.iter().map(|(_, p)| *p).collect();
    let pooled: Vec<u32> = pooled.iter().map(|(_, p)| *p).collect();
    let swept = common::snakepit(&["sweep", "--state-dir", &state_s]);
    let raw_left = still_alive_after_10_s(&raw);
    let pooled_left = still_alive_after_10_s(&pooled);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        !raw.is_empty() && !pooled.is_empty(),
        "both the raw loop's and the pools' workers started children: {started:?}"
    );
    assert!(
        pooled_left.is_empty(),
        "the pools' leftovers: {pooled_left:?}"
    );
    assert_eq!(swept.code, 0, "{swept:?}");
    assert!(
        raw_left.is_empty(),
        "children of the raw loop's workers outlived the bench and its sweep: {raw_left:?} (sweep: {})",
        swept.stdout
    );
}

// ----------------------------------------------------------- exec, signals

/// docs/cli.md, exit codes: "130, 143 | `exec` stopped by Ctrl-C (130) or
/// SIGTERM (143) ...: its workers are stopped and its run record removed".
/// stop_signals.rs sends one signal while the worker starts. An impatient
/// user presses Ctrl-C twice, or a service manager follows its SIGTERM with
/// a second one: a second signal right after the first, and again 5 ms
/// later, while two workers start (slowly, as a model loads). The tool ends
/// once, with the code of the signal and the message that names it, never
/// panics, and leaves no worker and no run record.
#[test]
fn two_stop_signals_while_exec_starts_end_it_once_with_the_signals_code() {
    // SIGTERM and SIGINT pending together have no order the tool could
    // see (the kernel itself delivers the lower number, SIGINT, first):
    // either code may come then, with the message that goes with it.
    let either: &[(i32, &str)] = &[(143, "SIGTERM"), (130, "Ctrl-C")];
    for (first, second, expected) in [
        (libc::SIGINT, libc::SIGINT, &[(130, "Ctrl-C")][..]),
        (libc::SIGTERM, libc::SIGTERM, &[(143, "SIGTERM")][..]),
        (libc::SIGTERM, libc::SIGINT, either),
    ] {
        let name = expected[0].1;
        let dir = Dir::new("r3-two-signals");
        let state = state_dir(&dir);
        let script = dir.file("r3_slow_start.py", common::SLOW_START_PY);
        let state_s = state.display().to_string();
        let mut cmd = command(
            &dir.0,
            &["exec", "--script", &script, "--pool-size", "2", "ping"],
            &[("SNAKEPIT_STATE_DIR", state_s.as_str())],
        );
        cmd.stdout(Stdio::null());
        let mut child = cmd.spawn().expect("snakepit runs");
        // The tool's own command line names the script too.
        let tool = child.id();
        let starting = wait_until(Duration::from_secs(60), || {
            let workers = common::processes_running(&script);
            (!records(&state).is_empty() && workers.iter().filter(|&&p| p != tool).count() >= 2)
                || child.try_wait().ok().flatten().is_some()
        });
        // The second signal at once, while the first is handled, and again
        // a moment later, while the tool tears its pool down (the child is
        // not reaped before the test waits: its pid stays its own).
        signal(child.id(), first);
        signal(child.id(), second);
        std::thread::sleep(Duration::from_millis(5));
        signal(child.id(), second);
        let ended = wait_until(Duration::from_secs(60), || {
            child.try_wait().ok().flatten().is_some()
        });
        if !ended {
            let _ = child.kill();
        }
        let out = child.wait_with_output().expect("snakepit ends");
        let status = out.status;
        let r = Run::from(out);
        let workers = common::processes_running(&script);
        let left = still_alive_after_10_s(&workers);
        assert!(starting, "{name}: the workers began to start: {r:?}");
        assert!(ended, "{name}: ended within 60 s of the signals: {r:?}");
        assert!(
            expected
                .iter()
                .any(|&(code, says)| status.code() == Some(code)
                    && r.stderr.contains(&format!("stopped by {says}"))),
            "{name}: {status:?} {r:?}"
        );
        assert!(
            !r.stderr.contains("panicked") && !r.stderr.contains("RUST_BACKTRACE"),
            "{name}: {r:?}"
        );
        assert!(left.is_empty(), "{name}: workers left: {left:?}");
        assert_eq!(records(&state), Vec::<String>::new(), "{name}: run record");
    }
}

// ------------------------------------------------------------------ doctor

/// `snakepit doctor --json` with `SNAKEPIT_PYTHON=program`: its report.
fn doctor_with_python(dir: &Dir, program: &Path) -> (ExitStatus, Run) {
    let program = program.display().to_string();
    let cmd = command(
        &dir.0,
        &["doctor", "--json"],
        &[("SNAKEPIT_PYTHON", program.as_str())],
    );
    finish(cmd, Duration::from_secs(300))
}

fn python_entry(r: &Run) -> Value {
    r.json()["interpreters"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["language"] == "python").cloned())
        .unwrap_or_else(|| panic!("no python entry: {r:?}"))
}

/// docs/cli.md, `doctor`: for each language, "the interpreter the adapters
/// would run (the `SNAKEPIT_*` variable, ...), its version, whether the
/// bundled generic worker really starts". `SNAKEPIT_PYTHON` names a file
/// that is there but cannot run (no execute permission, as after a copy
/// that lost its mode): the report must not call it "not found", which
/// sends the user to install an interpreter that is there; it says the
/// file is there and did not run, in `--json` and in the text report.
#[test]
fn doctor_does_not_call_an_interpreter_that_is_there_but_does_not_run_not_found() {
    let dir = Dir::new("r3-doctor-noexec");
    let program = dir.0.join("python3");
    std::fs::write(&program, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_, r) = doctor_with_python(&dir, &program);
    let python = python_entry(&r);
    let error = python["error"].as_str().unwrap_or_default().to_owned();
    assert!(python["version"].is_null(), "{r:?}");
    assert!(python["ping_ms"].is_null(), "{r:?}");
    assert!(
        error.contains(&program.display().to_string()),
        "the error names the file: {error}"
    );
    assert!(!error.contains("not found"), "the file is there: {error}");
    assert!(error.contains("is there"), "{error}");

    let program_s = program.display().to_string();
    let cmd = command(
        &dir.0,
        &["doctor"],
        &[("SNAKEPIT_PYTHON", program_s.as_str())],
    );
    let (_, text) = finish(cmd, Duration::from_secs(300));
    let line = text
        .stdout
        .lines()
        .find(|l| l.contains(" python ") && l.contains(&program_s))
        .unwrap_or_else(|| panic!("no line for python: {text:?}"))
        .to_owned();
    assert!(!line.contains("not found"), "{line}");
    assert!(line.contains("failed"), "{line}");
}

/// docs/cli.md, `doctor`: it reports "its version" for each interpreter,
/// and ARCHITECTURE.md: "Every failure is an exit code from `ui::code`
/// with a message, never a panic". An interpreter (`SNAKEPIT_PYTHON`, a
/// wrapper gone wrong) that answers `--version` with an endless stream
/// (`yes`) must cost the doctor a bounded amount of memory: the first line
/// is all it uses. It read the whole stream for as long as it waited for
/// the program (10 s), several GiB on an idle machine, so that a machine
/// with less memory killed it or it aborted; it now keeps 64 KiB of each
/// output and drops the rest as it comes. The bound asserted is 512 MiB of
/// peak resident memory over the doctor and everything it waited for (the
/// Node.js and Ruby workers it pings need a few tens of MiB).
#[test]
fn doctor_stays_small_when_an_interpreter_floods_its_version_output() {
    let dir = Dir::new("r3-doctor-flood");
    let program = dir.0.join("python3");
    std::fs::write(&program, "#!/bin/sh\nexec yes\n").unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (status, r) = doctor_with_python(&dir, &program);
    // SAFETY: getrusage(2) fills the struct it is given; zeroed is a valid
    // `rusage`.
    #[allow(unsafe_code)]
    let peak_kib = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage.ru_maxrss
    };
    assert!(
        status.code().is_some(),
        "ended by a signal, not an exit code: {status:?} {r:?}"
    );
    let python = python_entry(&r);
    assert!(python["ping_ms"].is_null(), "{r:?}");
    assert!(
        peak_kib < 512 * 1024,
        "peak resident memory {} MiB reading a flooding --version",
        peak_kib / 1024
    );
}

// ------------------------------------------------------------ usage errors

/// docs/cli.md, exit codes: 2 for "a missing script"; `snakepit.toml`:
/// a settings path that "names no regular file (a missing path, a
/// directory, `/dev/null`) is a usage error that says which". A
/// `--script` that is a named pipe (a FIFO nobody writes) is refused with
/// exit 2 and a message that says what it is, for `exec`, `bench` and
/// `serve` (before it reaches NATS), without opening it (which would block until a writer came).
#[test]
fn a_script_that_is_a_named_pipe_is_a_usage_error_that_says_so() {
    let dir = Dir::new("r3-fifo-script");
    let fifo = dir.0.join("worker.py");
    #[allow(clippy::disallowed_methods)] // mkfifo, not a worker
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let fifo_s = fifo.display().to_string();
    for args in [
        vec!["exec", "--script", fifo_s.as_str(), "ping"],
        vec!["bench", "--script", fifo_s.as_str()],
        vec!["serve", "--cluster", "r3", "--script", fifo_s.as_str()],
    ] {
        let (_, r) = finish(command(&dir.0, &args, &[]), Duration::from_secs(120));
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains(&fifo_s) && r.stderr.contains("named pipe"),
            "{args:?}: {r:?}"
        );
        assert!(!r.stderr.contains("not found"), "{args:?}: {r:?}");
    }
}

// -------------------------------------------------------- start-up output

/// docs/cli.md, exit codes: 3 when "the workers could not start", and
/// "Errors go to stderr as `error: ...`, then the worker's traceback or
/// stderr tail when there is one, then a `hint:` line"; docs/bridges.md,
/// "Standard output belongs to the protocol": output before the bridge
/// takes stdout over ("a module that prints when imported") still goes to
/// the pool. The commonest slip of a new worker, a `print` at the top of
/// the script, in each language: exit 3, and a hint that says what
/// happened (something wrote to the worker's stdout) instead of pointing at
/// a stderr that is empty; and for a handshake larger than a small
/// `max_frame_size`, the setting to raise.
#[test]
fn a_worker_that_prints_before_its_handshake_exits_3_with_a_hint_that_says_so() {
    let dir = Dir::new("r3-stray-stdout");
    let scripts = [
        dir.file(
            "early_print.py",
            "print(\"loading the model\")\nimport snakepit_bridge\nworker = snakepit_bridge.Worker()\n\n@worker.command(\"hi\")\ndef hi(args):\n    return {\"ok\": True}\n\nworker.run()\n",
        ),
        dir.file(
            "early_print.js",
            "console.log('loading the model');\nconst { Worker } = require('snakepit-bridge');\nconst worker = new Worker();\nworker.command('hi', () => ({ ok: true }));\nworker.run();\n",
        ),
        dir.file(
            "early_print.rb",
            "puts \"loading the model\"\nrequire \"snakepit_bridge\"\nworker = SnakepitBridge::Worker.new\nworker.command(\"hi\") { |_args| { ok: true } }\nworker.run\n",
        ),
    ];
    for script in &scripts {
        let (_, r) = finish(
            command(&dir.0, &["exec", "--script", script, "hi"], &[]),
            Duration::from_secs(120),
        );
        assert_eq!(r.code, 3, "{script}: {r:?}");
        let hint = r
            .stderr
            .lines()
            .find(|l| l.starts_with("hint:"))
            .unwrap_or_else(|| panic!("{script}: no hint: {r:?}"));
        assert!(
            hint.contains("wrote to the worker's stdout"),
            "{script}: {hint}"
        );
        assert!(!hint.contains("stderr above"), "{script}: {hint}");
    }
    // The control: a real handshake over a `max_frame_size` set below it
    // is not stray output, and the hint says which setting to raise.
    dir.file("snakepit.toml", "[pool]\nmax_frame_size = 64\n");
    let (_, r) = finish(
        command(&dir.0, &["exec", "ping"], &[]),
        Duration::from_secs(120),
    );
    assert_eq!(r.code, 3, "{r:?}");
    let hint = r
        .stderr
        .lines()
        .find(|l| l.starts_with("hint:"))
        .unwrap_or_default();
    assert!(hint.contains("raise max_frame_size"), "{r:?}");
}

// ------------------------------------------------------------- bench plot

/// docs/cli.md, `bench`: "The table goes to stdout; `--json` prints one
/// object instead; `--plot FILE.svg` draws the latency distributions", and
/// the bench's own rule that a plot never costs the report (redteam_readme.rs:
/// `an_unwritable_plot_is_refused_up_front_or_the_report_still_prints`).
/// `--plot` names a named pipe (`mkfifo latency.svg`, for a viewer that
/// reads it): the bench used to open it before printing anything and wait
/// there for a reader, so a run whose reader never came printed nothing at
/// all. The report must come out first; a reader that comes afterwards gets
/// the whole SVG document, and the bench then ends with exit 0.
#[test]
fn bench_prints_its_report_before_it_writes_a_plot_to_a_named_pipe() {
    use std::io::{BufRead, BufReader, Read};
    let dir = Dir::new("r3-plot-fifo");
    let fifo = dir.0.join("latency.svg");
    #[allow(clippy::disallowed_methods)] // mkfifo, not a worker
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let fifo_s = fifo.display().to_string();
    let args = [
        &["bench"][..],
        &common::SHORT_BENCH_JSON,
        &["--workers", "1", "--plot", fifo_s.as_str()],
    ]
    .concat();
    let mut bench = command(&dir.0, &args, &[]).spawn().expect("snakepit runs");
    let stdout = bench.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Generous: the whole bench runs before the report.
    let report = rx.recv_timeout(Duration::from_secs(240));
    // Whatever happened, a reader comes now, so that the bench can end.
    let svg = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::fs::File::open(&fifo).and_then(|mut f| f.read_to_string(&mut text));
        text
    });
    let ended = wait_until(Duration::from_secs(120), || {
        bench.try_wait().ok().flatten().is_some()
    });
    if !ended {
        let _ = bench.kill();
    }
    let out = bench.wait_with_output().expect("snakepit ends");
    let svg = svg.join().unwrap_or_default();
    let _ = reader.join();
    let r = Run::from(out);
    let report = report
        .unwrap_or_else(|_| panic!("no report before a reader opened the plot's pipe: {r:?}"));
    let report: Value = serde_json::from_str(&report).expect("the report is JSON");
    assert_eq!(report["workers"], 1, "{report}");
    assert!(ended, "the bench ended once its plot was read: {r:?}");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        svg.contains("<svg") && svg.trim_end().ends_with("</svg>"),
        "the whole SVG document went through the pipe: {} bytes",
        svg.len()
    );
}

// ---------------------------------------------------------- settings file

/// docs/cli.md, `snakepit.toml`: `exec`, `bench` and `serve` read
/// `./snakepit.toml` when it exists, or `--config FILE`; "a file that is
/// not TOML" is a usage error, for `sweep` too. A settings file of 64 MiB
/// (a sparse file of zeros, as a disk error or a stray `truncate` leaves
/// one, or one planted in a shared working directory) is read whole by
/// every command and its parse error quotes the whole line: 64 MiB of
/// stderr, and a 3 GiB file took a debug build more than 12 GiB of memory
/// and more than 12 minutes without an answer. A settings file is a few
/// lines: one over 1 MiB is refused as a usage error (exit 2) that says
/// so, in a short message, for `exec` with `./snakepit.toml`, and for
/// `sweep` and `bench` with `--config`.
#[test]
fn a_settings_file_of_64_mib_is_a_short_usage_error() {
    let dir = Dir::new("r3-huge-config");
    for name in ["snakepit.toml", "huge.toml"] {
        let file = std::fs::File::create(dir.0.join(name)).unwrap();
        file.set_len(64 << 20).unwrap();
    }
    for args in [
        &["exec", "ping"][..],
        &["sweep", "--config", "huge.toml"][..],
        &["bench", "--config", "huge.toml"][..],
    ] {
        let (_, r) = finish(command(&dir.0, args, &[]), Duration::from_secs(120));
        assert_eq!(r.code, 2, "{args:?}: exit {}", r.code);
        assert!(
            r.stderr.len() < 64 << 10,
            "{args:?}: {} bytes on stderr",
            r.stderr.len()
        );
        assert!(
            r.stderr.contains(".toml") && r.stderr.contains("larger than"),
            "{args:?}: {r:?}"
        );
    }
}
