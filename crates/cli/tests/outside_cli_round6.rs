//! A sixth outside review of the `snakepit` command against docs/cli.md:
//! what the earlier files (cli.rs, outside_cli*.rs, promises*.rs,
//! doc_promises.rs, docs_audit.rs, audit_docs.rs, redteam_readme.rs,
//! review_cli.rs, stop_signals.rs, telemetry*.rs) leave untried.
//!
//! - a `state_dir` in `snakepit.toml` that no path can be (a NUL written
//!   `"\u0000"` in TOML): a usage error for every command that reads the
//!   file, `sweep` included, not a pool run without its run record;
//! - `bench --rounds` of an even number: the median ratio is one round's,
//!   and the figures beside it are that round's, as the `--json` table
//!   says (`pool_over_raw` is `pool.rps / raw.rps`);
//! - the first command of docs/cli.md on a machine that has never run
//!   the tool: nothing in the home directory, the temporary directory or
//!   the working directory, and no `SNAKEPIT_*` variable.
//!
//! Every process a test starts is stopped by the test; every wait is a
//! generous guard against a hang, never a measurement.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{command, Dir, Run};

/// Runs `cmd` to its end, reading its output meanwhile; kills it and fails
/// past `limit` (a guard against a hang, not a measurement).
fn finish(cmd: Command, limit: Duration) -> Run {
    let mut cmd = cmd;
    let child = cmd.spawn().expect("snakepit runs");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let out = child.wait_with_output().expect("snakepit ends");
        let _ = tx.send(());
        out
    });
    if rx.recv_timeout(limit).is_err() {
        // SAFETY: kill(2) with a pid this test started; no memory is involved.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
        let out = reader.join().expect("the reader thread");
        panic!("still running after {limit:?}: {:?}", Run::from(out));
    }
    Run::from(reader.join().expect("the reader thread"))
}

/// `snakepit ARGS` in `dir`, to its end (at most three minutes).
fn run_in(dir: &Dir, args: &[&str]) -> Run {
    finish(command(&dir.0, args, &[]), Duration::from_secs(180))
}

/// docs/cli.md (`snakepit.toml`): "An unknown key is an error that names
/// it, and so is an empty `state_dir`"; `sweep` reads `state_dir` alone,
/// and "a `state_dir` that is not a path, is a usage error". A `state_dir`
/// holding a NUL character names no directory either: `exec` used to run
/// its pool without a run record (a warning at `-v` only, exit 0), and
/// `sweep` failed with exit code 1. Each command that reads the file now
/// refuses it with exit code 2, naming `state_dir`; `sweep --state-dir`
/// does not read the file's, and runs.
#[test]
fn a_state_dir_holding_a_nul_is_a_usage_error_for_every_command() {
    let dir = Dir::new("r6-nul-state-dir");
    dir.file("snakepit.toml", "[pool]\nstate_dir = \"runs\\u0000x\"\n");
    for args in [
        &["exec", "ping"][..],
        &["bench", "--requests", "256", "--concurrency", "8"][..],
        &["serve", "--cluster", "r6", "--nats", "nats://127.0.0.1:1"][..],
        &["sweep", "--dry-run"][..],
    ] {
        let r = run_in(&dir, args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
        let first = r.stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: ") && first.contains("state_dir"),
            "{args:?}: {r:?}"
        );
        assert!(!r.stderr.contains('\0'), "{args:?}: a raw NUL on stderr");
    }
    let elsewhere = Dir::new("r6-nul-state-dir-flag");
    let flag = elsewhere.0.display().to_string();
    let r = run_in(&dir, &["sweep", "--dry-run", "--state-dir", &flag]);
    assert_eq!(r.code, 0, "{r:?}");
}

/// docs/cli.md (`snakepit bench`): with `--rounds N`, "each ratio is then
/// the median of the rounds' ratios ... and the other figures are those of
/// the round whose pipelined ratio is the median"; `--json`: `raw` is "of
/// the round whose pipelined ratio is the median" and `pool_over_raw` is
/// "`pool.rps / raw.rps`: `median` over the rounds". Of two rounds, the
/// median used to be the mean of both ratios, which is no round's: then
/// `pool.rps / raw.rps` (the lower round's) disagreed with it. Now the
/// median of an even number is the lower middle ratio, one round's, and
/// the figures are that round's.
#[test]
fn bench_over_an_even_number_of_rounds_reports_one_rounds_ratio_and_figures() {
    let dir = Dir::new("r6-bench-even-rounds");
    let r = run_in(
        &dir,
        &[
            "bench",
            "--workers",
            "2",
            "--requests",
            "400",
            "--concurrency",
            "8",
            "--init-ms",
            "0",
            "--rounds",
            "2",
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["rounds"], 2, "{v}");
    for ratio in [
        "pool_over_raw",
        "pool_no_pipeline_over_raw",
        "no_pipeline_over_raw_one_thread",
    ] {
        let rounds: Vec<f64> = v[ratio]["rounds"]
            .as_array()
            .unwrap_or_else(|| panic!("{ratio}.rounds: {v}"))
            .iter()
            .filter_map(|x| x.as_f64())
            .collect();
        assert_eq!(rounds.len(), 2, "{ratio}: {v}");
        let median = v[ratio]["median"].as_f64().expect("a median");
        let lower = rounds.iter().copied().fold(f64::MAX, f64::min);
        assert_eq!(median, lower, "{ratio}: the lower middle round's: {v}");
    }
    let median = v["pool_over_raw"]["median"].as_f64().unwrap_or(0.0);
    let (pool, raw) = (
        v["pool"]["rps"].as_f64().unwrap_or(0.0),
        v["raw"]["rps"].as_f64().unwrap_or(f64::MAX),
    );
    assert!(
        (pool / raw - median).abs() <= 0.005,
        "pool.rps / raw.rps = {} against the median {median}: {v}",
        pool / raw
    );
}

/// docs/cli.md's first example command after installing, on a machine
/// that has never run the tool (README: "needs Rust and `python3`, nothing
/// else"): a fresh home directory, a fresh `TMPDIR`, an empty working
/// directory, and no variable but `PATH`, `HOME` and `TMPDIR`. The bundled
/// worker comes out of the binary itself (into the home directory's
/// cache), the call's result is printed, and the clean shutdown leaves no
/// run record behind.
#[test]
fn the_first_exec_runs_on_a_machine_that_never_ran_the_tool() {
    let home = Dir::new("r6-fresh-home");
    let tmp = Dir::new("r6-fresh-tmp");
    let cwd = Dir::new("r6-fresh-cwd");
    let mut cmd = command(
        &cwd.0,
        &["exec", "compute", r#"{"operation": "add", "a": 5, "b": 3}"#],
        &[],
    );
    // The interpreter the other tests use, found through PATH only.
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(dir) = std::env::var_os("SNAKEPIT_PYTHON")
        .map(std::path::PathBuf::from)
        .and_then(|p| p.parent().map(|d| d.to_path_buf()))
    {
        let mut first = dir.into_os_string();
        first.push(":");
        first.push(&path);
        path = first;
    }
    cmd.env_clear()
        .env("PATH", path)
        .env("HOME", &home.0)
        .env("TMPDIR", &tmp.0);
    let r = finish(cmd, Duration::from_secs(120));
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["result"], 8, "{r:?}");
    assert!(
        home.0.join(".cache/snakepit").is_dir(),
        "the bundled bridges were not written under the home directory"
    );
    let records: Vec<_> = walk(&tmp.0)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "run"))
        .collect();
    assert!(records.is_empty(), "run records left: {records:?}");
    assert!(
        std::fs::read_dir(&cwd.0).map_or(0, |d| d.count()) == 0,
        "the working directory was written to"
    );
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// A worker script under `crates/cli/tests/workers`.
fn worker_script(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workers")
        .join(name)
        .display()
        .to_string()
}

/// docs/cli.md: `-v` shows "each line a worker writes to its stderr (as
/// `[worker id] line`)", and "What would drive the terminal (control
/// characters such as an escape sequence or a carriage return, and the
/// characters that reorder text) is written escaped (`\u{1b}`, `\r`),
/// whoever wrote it". A worker's stderr lines used to reach the terminal
/// as they were under `-v` (a screen clear, a window title, a bell, a
/// right-to-left override), while the same text in an error's stderr tail
/// was escaped. Each line now reads `[worker id] ` and the text escaped,
/// one line per line the worker wrote.
#[test]
fn verbose_worker_lines_cannot_drive_the_terminal() {
    let dir = Dir::new("r6-terminal");
    let script = worker_script("round6_terminal.py");
    let r = run_in(&dir, &["-v", "exec", "--script", &script, "paint"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["painted"], true, "{r:?}");
    for raw in ['\u{1b}', '\u{7}', '\u{202e}', '\r'] {
        assert!(
            !r.stderr.contains(raw),
            "{:?} reached stderr as it is: {r:?}",
            raw
        );
    }
    let line = |text: &str| {
        r.stderr
            .lines()
            .find(|l| l.contains(text))
            .unwrap_or_else(|| panic!("no line with {text}: {r:?}"))
            .to_owned()
    };
    let stderr_line = line("r6 stderr");
    assert!(stderr_line.starts_with('['), "{stderr_line}");
    assert!(
        stderr_line.contains(r"\u{1b}[2J\u{1b}[31mred\u{7} \u{202e}esrever"),
        "{stderr_line}"
    );
    let printed = line("r6 print");
    assert!(printed.contains(r"\u{1b}]0;title\u{7}"), "{printed}");
}

/// docs/cli.md (`snakepit sweep`): "It prints each crashed run and each
/// process it killed", and what it leaves alone; and "What would drive
/// the terminal ... is written escaped (`\u{1b}`, `\r`), whoever wrote
/// it". A file in the state directory may be named by any program running
/// as this user (a worker among them): its name used to reach the report
/// as it was, an escape sequence painting the terminal and a line break
/// starting a line of the file's choosing. Each name is now one line,
/// escaped; `--json` keeps the name exact.
#[test]
fn the_sweep_report_shows_planted_names_on_their_line_escaped() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Dir::new("r6-sweep-names");
    let state = dir.0.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let planted =
        "bad\u{1b}[2J\nrun forged of pool x (host pid 1 is gone): killed 9 process(es).run";
    std::fs::write(state.join(planted), "not a record").unwrap();
    let state_dir = state.display().to_string();
    let r = run_in(&dir, &["sweep", "--dry-run", "--state-dir", &state_dir]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stdout.contains('\u{1b}'), "{r:?}");
    assert!(
        !r.stdout.lines().any(|l| l.starts_with("run forged")),
        "a line of the file's choosing: {r:?}"
    );
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("bad"))
        .unwrap_or_else(|| panic!("the planted file is not listed: {r:?}"));
    assert!(
        line.starts_with("left alone, not a run record: ")
            && line.ends_with(
                r"bad\u{1b}[2J\nrun forged of pool x (host pid 1 is gone): killed 9 process(es).run"
            ),
        "{line}"
    );
    let r = run_in(
        &dir,
        &["sweep", "--dry-run", "--json", "--state-dir", &state_dir],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let listed = r.json()["unreadable"][0]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(listed.ends_with(planted), "{listed:?}");
}

/// docs/cli.md (`snakepit doctor`): for each language "the interpreter
/// the adapters would run ..., its version, whether the bundled generic
/// worker really starts"; and "What would drive the terminal ... is
/// written escaped ..., whoever wrote it". The version is what the
/// interpreter printed: one that prints a screen clear, a window title
/// and a bell (a wrapper script, a broken build) used to reach the report
/// as it was. Each is now written escaped, on the interpreter's line.
#[test]
fn doctor_writes_what_an_interpreter_printed_escaped() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Dir::new("r6-doctor-version");
    let fake = dir.file(
        "python-r6",
        "#!/bin/sh\nprintf 'Python 3.11\\033[2J\\033]0;r6\\007\\n'\n",
    );
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let gone = dir.0.join("no-such-interpreter").display().to_string();
    let cmd = command(
        &dir.0,
        &["doctor"],
        &[
            ("SNAKEPIT_PYTHON", fake.as_str()),
            ("SNAKEPIT_NODE", gone.as_str()),
            ("SNAKEPIT_RUBY", gone.as_str()),
        ],
    );
    let r = finish(cmd, Duration::from_secs(120));
    assert_eq!(r.code, 1, "no worker can answer: {r:?}");
    for raw in ['\u{1b}', '\u{7}'] {
        assert!(!r.stdout.contains(raw), "{raw:?} as it is: {r:?}");
    }
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("python") && l.contains("Python 3.11"))
        .unwrap_or_else(|| panic!("no python line: {r:?}"));
    assert!(
        line.contains(r"Python 3.11\u{1b}[2J\u{1b}]0;r6\u{7}"),
        "{line}"
    );
}

/// docs/cli.md (`snakepit serve`): "`cluster status` lists the hosts that
/// answer within `--wait-ms` ...: their pool, workers, free and busy
/// workers, queued calls and calls served"; and "What would drive the
/// terminal ... is written escaped ..., whoever wrote it". Any client of
/// the NATS server can answer the status PING and then the status request
/// for the host it named: the host and pool names of its answer used to
/// reach the table as they were (a screen clear, a window title, a line
/// of its own). They are now written escaped on the host's line; `--json`
/// gives the answer as it came.
#[test]
fn cluster_status_writes_a_forged_hosts_names_escaped() {
    use futures_util::StreamExt;
    let nats = snakepit_tests::NatsServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let url = nats.url.clone();
    // A fake host: answers the PING naming a valid host id, then that
    // host's status with hostile names.
    let ready = rt.block_on(async move {
        let nc = async_nats::connect(&url).await.unwrap();
        let mut ping = nc.subscribe("$SRV.PING.snakepit-r6c").await.unwrap();
        let mut status = nc
            .subscribe("snakepit.r6c.host.r6evil.status")
            .await
            .unwrap();
        let answer = nc.clone();
        tokio::spawn(async move {
            while let Some(m) = ping.next().await {
                if let Some(reply) = m.reply {
                    let body = r#"{"metadata":{"host":"r6evil"}}"#;
                    let _ = answer.publish(reply, body.into()).await;
                }
            }
        });
        let answer = nc.clone();
        tokio::spawn(async move {
            while let Some(m) = status.next().await {
                if let Some(reply) = m.reply {
                    let body = serde_json::json!({
                        "host": "r6\u{1b}[2J\nforged line",
                        "pid": 1,
                        "pool": "p\u{1b}]0;r6\u{7}\u{202e}x",
                        "workers": 1,
                        "available": 1,
                        "busy": 0,
                        "queued": 0,
                        "served": 0,
                    });
                    let _ = answer.publish(reply, body.to_string().into()).await;
                }
            }
        });
        nc.flush().await.unwrap();
        nc
    });
    let dir = Dir::new("r6-status");
    let r = run_in(
        &dir,
        &[
            "cluster",
            "status",
            "--cluster",
            "r6c",
            "--nats",
            &nats.url,
            "--wait-ms",
            "3000",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    for raw in ['\u{1b}', '\u{7}', '\u{202e}'] {
        assert!(!r.stdout.contains(raw), "{raw:?} as it is: {r:?}");
    }
    assert!(
        !r.stdout.lines().any(|l| l.starts_with("forged line")),
        "a line of the answer's choosing: {r:?}"
    );
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("r6"))
        .unwrap_or_else(|| panic!("the host is not listed: {r:?}"));
    assert!(line.contains(r"r6\u{1b}[2J\nforged line"), "{line}");
    assert!(line.contains(r"p\u{1b}]0;r6\u{7}\u{202e}x"), "{line}");
    let r = run_in(
        &dir,
        &[
            "cluster",
            "status",
            "--cluster",
            "r6c",
            "--nats",
            &nats.url,
            "--wait-ms",
            "3000",
            "--json",
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()[0]["host"], "r6\u{1b}[2J\nforged line", "{r:?}");
    drop(ready);
    rt.shutdown_background();
}

/// docs/cli.md (Global flags): `-v` shows "what the command starts
/// (`starting 1 x python ...`) and the settings file it read"; and what
/// would drive the terminal is written escaped, whoever wrote it. A
/// settings file and a script in a directory whose name holds an escape
/// sequence and a line break used to be named as they were in those two
/// notes; each note is now one line, escaped.
#[test]
fn verbose_notes_name_paths_on_their_line_escaped() {
    let dir = Dir::new("r6-verbose-paths");
    let odd = dir.0.join("cfg\u{1b}[31m\nstarting forged");
    std::fs::create_dir(&odd).unwrap();
    std::fs::write(
        odd.join("w.py"),
        "import snakepit_bridge\nw = snakepit_bridge.Worker()\n\n\n@w.command(\"hi\")\ndef hi(args):\n    return {\"hi\": 1}\n\n\nw.run()\n",
    )
    .unwrap();
    std::fs::write(odd.join("snakepit.toml"), "script = \"w.py\"\n").unwrap();
    let config = odd.join("snakepit.toml").display().to_string();
    let r = run_in(&dir, &["-v", "--config", &config, "exec", "hi"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["hi"], 1, "{r:?}");
    assert!(!r.stderr.contains('\u{1b}'), "{r:?}");
    assert!(
        !r.stderr.lines().any(|l| l.starts_with("starting forged")),
        "a line of the path's choosing: {r:?}"
    );
    let settings = r
        .stderr
        .lines()
        .find(|l| l.starts_with("settings from "))
        .unwrap_or_else(|| panic!("no settings note: {r:?}"));
    assert!(
        settings.ends_with(r"cfg\u{1b}[31m\nstarting forged/snakepit.toml"),
        "{settings}"
    );
    let starting = r
        .stderr
        .lines()
        .find(|l| l.starts_with("starting 1 x python "))
        .unwrap_or_else(|| panic!("no starting note: {r:?}"));
    assert!(
        starting.contains(r"cfg\u{1b}[31m\nstarting forged/w.py"),
        "{starting}"
    );
}
