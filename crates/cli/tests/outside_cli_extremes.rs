//! Extreme values in every setting of the `snakepit` command a user can
//! give: its numeric flags, its `snakepit.toml` keys, the `SNAKEPIT_*`,
//! `OTEL_*` and `NATS_URL` variables it reads, and arguments that are not
//! UTF-8. docs/cli.md, exit codes: 2 is "usage: a bad flag, ... a bad
//! `snakepit.toml`"; "Output that cannot be written is never ignored and
//! never a crash". What must hold: a usage error (exit 2, `error: ...`
//! naming the setting) or the documented meaning, never a panic (exit 101,
//! "panicked") or a hang.
//!
//! Shown elsewhere and not repeated: `--pool-size` 0, 10,001 and 2^64 - 1,
//! `bench --workers` 2^62 and -1, `--concurrency` 100,001, `--requests`
//! 100,000,001 and below 4 x callers, `--rounds 0`, `--sessions 0`,
//! `--host-threads 0`, `--init-ms` 2^64 - 1, `--timeout 0`
//! (redteam_readme.rs, cli.rs, doc_promises.rs).

mod common;

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Runs `snakepit ARGS` in `dir` with `env`, killing it after `secs`
/// seconds (then the run counts as a hang: exit code -9).
#[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
fn run_os(dir: &Path, args: &[OsString], env: &[(&str, OsString)], secs: u64) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("SNAKEPIT_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("NATS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the snakepit binary runs");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let until = Instant::now() + Duration::from_secs(secs);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            break -9;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code,
        stdout: String::from_utf8_lossy(&o.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&e.join().unwrap()).into_owned(),
    }
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// A byte string that is not UTF-8 (0xff never is).
fn not_utf8(prefix: &str, suffix: &str) -> OsString {
    let mut v = prefix.as_bytes().to_vec();
    v.push(0xff);
    v.extend_from_slice(suffix.as_bytes());
    OsString::from_vec(v)
}

/// `dir/NAME`, then a byte that is not UTF-8, then `suffix`.
fn path_not_utf8(dir: &Dir, name: &str, suffix: &str) -> OsString {
    not_utf8(&dir.0.join(name).to_string_lossy(), suffix)
}

/// A private (0700) directory `dir/NAME\xff`: a state directory whose
/// name is not UTF-8.
fn private_dir_not_utf8(dir: &Dir, name: &str) -> OsString {
    use std::os::unix::fs::PermissionsExt;
    let path = path_not_utf8(dir, name, "");
    std::fs::create_dir(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
    path
}

/// An address where nothing listens: `SCHEME://127.0.0.1:PORT`.
fn nobody_at(scheme: &str) -> String {
    format!("{scheme}://127.0.0.1:{}", snakepit_tests::free_port())
}

/// `snakepit exec echo '{"x": 1}'`.
fn echo() -> Vec<OsString> {
    os(&["exec", "echo", r#"{"x": 1}"#])
}

#[track_caller]
fn no_panic(r: &Run, what: &str) {
    assert_ne!(r.code, 101, "{what}: a panic: {r:?}");
    assert!(!r.stderr.contains("panicked"), "{what}: a panic: {r:?}");
    assert_ne!(r.code, -9, "{what}: a hang: {r:?}");
}

#[track_caller]
fn usage_error(r: &Run, what: &str, names: &str) {
    usage_error_naming_any(r, what, &[names]);
}

/// The call ran and printed its result, `{"echoed": {"x": X}}` (exit 0).
#[track_caller]
fn echoed(r: &Run, what: &str, x: i64) {
    no_panic(r, what);
    assert_eq!(r.code, 0, "{what}: {r:?}");
    assert_eq!(r.json()["echoed"]["x"], x, "{what}: {r:?}");
}

/// Runs `exec echo` in `dir` with its traces sent to `endpoint` (where
/// nothing listens) and `env` besides: the call must run and print its
/// result.
#[track_caller]
fn echo_despite_otel(dir: &Dir, endpoint: &str, env: &[(&str, &str)]) {
    let mut all = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", OsString::from(endpoint))];
    all.extend(env.iter().map(|(k, v)| (*k, OsString::from(v))));
    let r = run_os(&dir.0, &echo(), &all, 60);
    let what: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    echoed(&r, &what.join(" "), 1);
}

/// A usage error whose message has one of `names`.
#[track_caller]
fn usage_error_naming_any(r: &Run, what: &str, names: &[&str]) {
    no_panic(r, what);
    assert_eq!(r.code, 2, "{what}: {r:?}");
    assert!(r.stderr.starts_with("error: "), "{what}: {r:?}");
    assert!(
        names.iter().any(|n| r.stderr.contains(n)),
        "{what}: should name one of {names:?}: {r:?}"
    );
    assert!(r.stdout.is_empty(), "{what}: {r:?}");
}

/// docs/cli.md, exit codes: 2 is "usage: a bad flag". Every numeric flag
/// of `exec`, `bench`, `serve` and `cluster status` given what its type
/// cannot hold (negative, fractional, `1e400`, 2^64 and beyond, empty) or
/// below the least the tool takes (`--requests 0`, `--concurrency 0`): a
/// usage error naming the flag, before any worker or NATS server is
/// reached. (`serve`: cli.md, "Usage errors first: they are exit 2 whether
/// NATS is up or not" (crates/cli/src/cluster.rs).)
#[test]
fn numeric_flags_past_their_type_are_usage_errors_naming_the_flag() {
    let dir = Dir::new("extremes-flags");
    let nowhere = nobody_at("nats");
    let bad = [
        "-1",
        "1.5",
        "1e400",
        "",
        "18446744073709551616",
        "99999999999999999999",
    ];
    // The words before a flag, and those after its value.
    let exec: &[&str] = &["exec"];
    let ping: &[&str] = &["ping"];
    let bench: &[&str] = &["bench"];
    let none: &[&str] = &[];
    let serve: &[&str] = &["serve", "--cluster", "x", "--nats", &nowhere];
    let status: &[&str] = &["cluster", "status", "--cluster", "x", "--nats", &nowhere];
    let mut flags = ["--timeout", "--pool-size", "--pipeline-depth"]
        .map(|flag| (exec, flag, ping))
        .to_vec();
    flags.extend(
        [
            "--workers",
            "--requests",
            "--concurrency",
            "--payload",
            "--sessions",
            "--rounds",
            "--init-ms",
            "--host-threads",
        ]
        .map(|flag| (bench, flag, none)),
    );
    flags.extend([(serve, "--prefetch", none), (status, "--wait-ms", none)]);
    let mut cases = Vec::new();
    for b in bad {
        for &(before, flag, after) in &flags {
            cases.push((before, flag, b, after));
        }
    }
    // Values past the most, or under the least, that each flag takes.
    cases.extend([
        (exec, "--pipeline-depth", "4294967296", ping),
        (bench, "--host-threads", "65536", none),
        (bench, "--requests", "0", none),
        (bench, "--concurrency", "0", none),
        (serve, "--pool-size", "0", none),
        (serve, "--pool-size", "99999999999", none),
    ]);
    for (before, flag, value, after) in cases {
        let args = [before, &[flag, value], after].concat();
        let r = run_os(&dir.0, &os(&args), &[], 30);
        // A negative number is taken by the parser for a flag of its own
        // ("unexpected argument '-1' found"): a usage error that names the
        // value rather than the flag.
        usage_error_naming_any(&r, &format!("{args:?}"), &[flag, "'-1'"]);
    }
}

/// docs/cli.md, bench: "`--payload BYTES` adds a `"data": "xxx..."` field
/// of that size to every request's arguments" and "`--sessions N` spreads
/// the pool's calls over N sessions"; exit codes: 2 is "usage: a bad
/// flag"; the payload is "at most 1 GiB" and the sessions "at most
/// `--requests`". The largest values the parser takes (`usize::MAX`,
/// 2^64 - 1) are no payload or session count the bench can build: each is a
/// usage error naming the flag (exit 2, before anything is measured), as
/// `--init-ms` past its bound is (redteam_readme.rs), not a panic. (Before
/// the fix, the bench built the payload and the session names first and
/// panicked with "capacity overflow", exit 101: hence the check for a
/// panic with each flag.)
#[test]
fn bench_payload_and_sessions_of_usize_max_are_usage_errors() {
    let dir = Dir::new("extremes-bench-max");
    for flag in ["--payload", "--sessions"] {
        let args = [
            "bench",
            "--requests",
            "256",
            "--concurrency",
            "4",
            "--init-ms",
            "10",
            flag,
            "18446744073709551615",
            "--json",
        ];
        let r = run_os(&dir.0, &os(&args), &[], 120);
        usage_error(&r, flag, flag);
    }
}

/// docs/cli.md, bench, step 5: with `--preload`, "N workers whose script
/// fills `--init-mb` MiB (default 200; the flag without preloading, or
/// above the machine's memory, is a usage error)"; exit codes: 2 is
/// "usage: a bad flag". `--init-mb 18446744073709551615` is no amount any
/// worker can fill (2^64 - 1 MiB overflows even the byte count). As
/// `--init-ms` past its bound is refused before anything is measured
/// (redteam_readme.rs), and as an unwritable `--plot` must not lose the
/// run's figures (redteam_readme.rs), the test asks, without a panic, for
/// either a usage error naming `--init-mb` up front, or the report of the
/// other measurements still printed. (Before the fix, every other
/// measurement ran, then the preload workers failed, exit 3 with nothing
/// on stdout: the figures were lost.)
#[test]
fn bench_init_mb_beyond_any_machine_is_refused_up_front() {
    let dir = Dir::new("extremes-init-mb");
    let args = [
        &["bench", "--preload", "--init-mb", "18446744073709551615"][..],
        &SHORT_BENCH_JSON,
    ]
    .concat();
    let r = run_os(&dir.0, &os(&args), &[], 180);
    no_panic(&r, "--init-mb");
    refused_up_front_or_reported(&r, "--init-mb");
}

/// The largest values the `exec` flags take are accepted with their
/// documented meaning: `--timeout MS` "sets its deadline" (2^64 - 1 ms is
/// in practice none: pool/options.rs, "A timeout longer than a hundred
/// years ... is a hundred years"), `--pipeline-depth N` "sets the pool's
/// `pipeline_depth`" (u32::MAX is at most that many written ahead). The
/// call runs and prints its result (exit 0). `--timeout 1` is a deadline
/// of a millisecond: the call succeeds or ends in a timeout (exit 4),
/// never a crash.
#[test]
fn exec_takes_the_largest_timeout_and_depth() {
    let dir = Dir::new("extremes-exec-max");
    let r = run_os(
        &dir.0,
        &os(&[
            "exec",
            "--timeout",
            "18446744073709551615",
            "--pipeline-depth",
            "4294967295",
            "echo",
            r#"{"x": 1}"#,
        ]),
        &[],
        60,
    );
    echoed(&r, "largest", 1);
    let r = run_os(&dir.0, &os(&["exec", "--timeout", "1", "ping"]), &[], 60);
    no_panic(&r, "--timeout 1");
    assert!(r.code == 0 || r.code == 4, "--timeout 1: {r:?}");
}

/// docs/cli.md, `snakepit.toml`: `timeout_ms` is "each call's deadline
/// (exec)", `[pool]` is "any field of snakepit_core::PoolConfig"; exit
/// codes: 2 is "a bad `snakepit.toml`"; "An unknown key is an error that
/// names it". The extremes a TOML file can hold (its integers stop at
/// 2^63 - 1): every duration and count at that maximum, `u32` fields at
/// u32::MAX, and one-millisecond intervals and lifetimes, are accepted
/// and the call runs (exit 0). What the fields cannot hold (negative,
/// fractional, 1e400, past 2^63 - 1 or past u32, a string) and what
/// `PoolConfig::validate` refuses (a frame limit past 4 GiB or under 64
/// bytes, a zero startup timeout, a breaker threshold of 0) are usage
/// errors, exit 2, whose message names the key.
#[test]
fn settings_file_values_at_and_past_their_limits() {
    let dir = Dir::new("extremes-toml");
    let max = i64::MAX;
    let accepted = [
        format!(
            "timeout_ms = {max}\n[pool]\nstartup_timeout_ms = {max}\nqueue_timeout_ms = {max}\n\
             worker_init_timeout_ms = {max}\nhealth_check_interval_ms = {max}\n\
             health_check_timeout_ms = {max}\nshutdown_grace_period_ms = {max}\n\
             session_ttl_ms = {max}\nbreaker_cooldown_ms = {max}\nworker_ttl_ms = {max}\n\
             worker_idle_timeout_ms = {max}\npipeline_max_call_us = {max}\n\
             max_queue_size = {max}\nstderr_tail_lines = {max}\nmax_sessions = {max}\n\
             recycle_after_calls = {max}\nrecycle_above_rss_mb = {max}\n\
             cleanup_max_retries = 4294967295\nbreaker_threshold = 4294967295\n\
             max_concurrency_per_worker = 4294967295\npipeline_depth = 4294967295\n\
             max_frame_size = 4294967295\n"
        ),
        "timeout_ms = 1\n[pool]\nhealth_check_interval_ms = 1\nworker_ttl_ms = 1\n\
         worker_idle_timeout_ms = 1\nsession_ttl_ms = 0\nqueue_timeout_ms = 0\n\
         shutdown_grace_period_ms = 0\npipeline_max_call_us = 0\nrestart_backoff_ms = 0\n\
         restart_backoff_max_ms = 0\ncleanup_max_retries = 0\nstderr_tail_lines = 0\n"
            .to_owned(),
    ];
    for (i, text) in accepted.iter().enumerate() {
        dir.file("snakepit.toml", text);
        let r = run_os(&dir.0, &echo(), &[], 60);
        if i == 1 {
            // A deadline of one millisecond: a result or a timeout.
            no_panic(&r, text);
            assert!(r.code == 0 || r.code == 4, "{text}: {r:?}");
            continue;
        }
        echoed(&r, text, 1);
    }
    let mut refused: Vec<(String, &str)> = Vec::new();
    for bad in [
        "-1",
        "1.5",
        "1e400",
        "inf",
        "nan",
        "18446744073709551616",
        "\"\"",
        "\"5\"",
    ] {
        refused.push((format!("timeout_ms = {bad}\n"), "timeout_ms"));
        for key in [
            "queue_timeout_ms",
            "pool_size",
            "max_frame_size",
            "pipeline_depth",
        ] {
            refused.push((format!("[pool]\n{key} = {bad}\n"), key));
        }
    }
    for (text, key) in [
        ("[pool]\npipeline_depth = 4294967296\n", "pipeline_depth"),
        (
            "[pool]\nbreaker_threshold = 4294967296\n",
            "breaker_threshold",
        ),
        ("[pool]\nmax_frame_size = 4294967296\n", "max_frame_size"),
        ("[pool]\nmax_frame_size = 0\n", "max_frame_size"),
        ("[pool]\nstartup_timeout_ms = 0\n", "startup_timeout"),
        ("[pool]\nbreaker_threshold = 0\n", "breaker_threshold"),
        (
            "[pool]\nmax_concurrency_per_worker = 0\n",
            "max_concurrency_per_worker",
        ),
    ] {
        refused.push((text.to_owned(), key));
    }
    for (text, key) in &refused {
        dir.file("snakepit.toml", text);
        let r = run_os(&dir.0, &os(&["exec", "ping"]), &[], 60);
        usage_error(&r, text, key);
    }
}

/// The variables the command documents, set to what no one means: not
/// UTF-8, empty, or out of range. docs/cli.md: `SNAKEPIT_CONFIG` names the
/// settings file ("set to nothing, it counts as unset"; one that "names no
/// regular file ... is a usage error that says which"); `SNAKEPIT_PYTHON`
/// is the interpreter (one that cannot run: exit 3, "interpreter
/// missing"); `SNAKEPIT_STATE_DIR` is where run records live; OTEL
/// variables: a bad setting is the environment's mistake, "the call runs
/// (exit 0, its result)" (outside_cli.rs quotes docs/telemetry.md);
/// `NATS_URL` "when not empty" names the server, so one that is not UTF-8
/// is a usage error naming it (before, the default server was used
/// instead, and a NATS listening there would have been taken for it).
/// None of them panics or hangs the command.
#[test]
fn documented_variables_not_utf8_empty_or_out_of_range() {
    let dir = Dir::new("extremes-env");
    let echo = echo();
    // SNAKEPIT_CONFIG.
    let missing = path_not_utf8(&dir, "cfg-", ".toml");
    let r = run_os(&dir.0, &echo, &[("SNAKEPIT_CONFIG", missing)], 30);
    usage_error(&r, "SNAKEPIT_CONFIG not UTF-8", "cfg-");
    let r = run_os(&dir.0, &echo, &[("SNAKEPIT_CONFIG", "".into())], 60);
    echoed(&r, "SNAKEPIT_CONFIG empty", 1);
    // SNAKEPIT_PYTHON: no such interpreter.
    let python = not_utf8("/no/such/python", "3");
    let r = run_os(&dir.0, &echo, &[("SNAKEPIT_PYTHON", python)], 60);
    no_panic(&r, "SNAKEPIT_PYTHON not UTF-8");
    assert_eq!(r.code, 3, "{r:?}");
    // SNAKEPIT_STATE_DIR whose name is not UTF-8: the call runs, its record
    // goes there, and the sweep reads it back.
    let state = private_dir_not_utf8(&dir, "state-");
    let r = run_os(&dir.0, &echo, &[("SNAKEPIT_STATE_DIR", state.clone())], 60);
    echoed(&r, "SNAKEPIT_STATE_DIR not UTF-8", 1);
    let r = run_os(
        &dir.0,
        &os(&["sweep", "--dry-run"]),
        &[("SNAKEPIT_STATE_DIR", state.clone())],
        30,
    );
    no_panic(&r, "sweep, SNAKEPIT_STATE_DIR not UTF-8");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains("state-"),
        "the sweep names the directory: {r:?}"
    );
    // OTEL.
    for (what, env) in [
        (
            "endpoint not UTF-8",
            vec![(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                not_utf8("http://127.0.0.1:4318/", ""),
            )],
        ),
        (
            "endpoint port 99999",
            vec![(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://127.0.0.1:99999".into(),
            )],
        ),
        (
            "endpoint of 100,000 characters",
            vec![(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:1/{}", "x".repeat(100_000)).into(),
            )],
        ),
        (
            "service name not UTF-8",
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", nobody_at("http").into()),
                ("OTEL_SERVICE_NAME", not_utf8("svc", "")),
            ],
        ),
        (
            "protocol not UTF-8",
            vec![
                ("OTEL_EXPORTER_OTLP_ENDPOINT", nobody_at("http").into()),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", not_utf8("grpc", "")),
            ],
        ),
    ] {
        let r = run_os(&dir.0, &echo, &env, 60);
        echoed(&r, what, 1);
    }
    // NATS_URL.
    let status = os(&["cluster", "status", "--cluster", "x", "--wait-ms", "100"]);
    let r = run_os(
        &dir.0,
        &status,
        &[("NATS_URL", not_utf8("nats://127.0.0.1:1", ""))],
        30,
    );
    usage_error(&r, "NATS_URL not UTF-8", "NATS_URL");
}

/// docs/cli.md, sweep: "`--json` prints
/// `snakepit_core::sweep::SweepReport` as JSON", from the per-user
/// directory `$SNAKEPIT_STATE_DIR` (or `--state-dir DIR`); exit 1 is for a
/// directory that is not private, named in the message. A private
/// directory whose name is not UTF-8 (a legal Unix path, in which `exec`
/// keeps its run records and a plain `sweep` reads them) is swept like any
/// other: `SweepReport` writes its paths lossily (U+FFFD for the bytes that
/// are not UTF-8), so `sweep --dry-run --json`, with the directory given
/// by `SNAKEPIT_STATE_DIR` or by `--state-dir`, exits 0 and prints the
/// report as JSON. (Before the fix, serde refused the path: exit 1, "cannot
/// print the report", nothing on stdout.)
#[test]
fn sweep_json_reports_a_state_dir_whose_name_is_not_utf8() {
    let dir = Dir::new("extremes-sweep-json");
    let state = private_dir_not_utf8(&dir, "state-");
    for (args, env) in [
        (
            os(&["sweep", "--dry-run", "--json"]),
            vec![("SNAKEPIT_STATE_DIR", state.clone())],
        ),
        (
            vec![
                "sweep".into(),
                "--dry-run".into(),
                "--json".into(),
                "--state-dir".into(),
                state.clone(),
            ],
            vec![],
        ),
    ] {
        let r = run_os(&dir.0, &args, &env, 30);
        no_panic(&r, "sweep --json");
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        serde_json::from_str::<Value>(r.stdout.trim())
            .unwrap_or_else(|e| panic!("sweep --json printed no JSON ({e}): {r:?}"));
    }
}

/// Arguments that are not UTF-8 where a user can pass them: a COMMAND, a
/// session id, `ARGS_JSON`, a `--script` path, a `--config` path, a
/// `--state-dir`. docs/cli.md: 2 is "usage: a bad flag, `ARGS_JSON` that
/// is not a JSON object, a missing script"; a `--config` that "names no
/// regular file" is "a usage error that says which". Each is refused with
/// exit 2 (or, for a path that is merely a name, taken as that path), never
/// a panic. A `sweep --state-dir` whose name is not UTF-8 and that does not
/// exist is such a path: `snakepit_core::sweep::sweep` says "A directory
/// that does not exist has nothing to sweep", and `SweepReport` writes its
/// paths lossily, so `sweep --dry-run --json` exits 0 and prints an empty
/// report naming that directory (U+FFFD for the byte that is not UTF-8).
#[test]
fn arguments_that_are_not_utf8() {
    let dir = Dir::new("extremes-argv");
    let bad = not_utf8("x", "y");
    let cases: Vec<(Vec<OsString>, &str)> = vec![
        (vec!["exec".into(), bad.clone()], "COMMAND"),
        (
            vec![
                "exec".into(),
                "--session".into(),
                bad.clone(),
                "ping".into(),
            ],
            "--session",
        ),
        (
            vec!["exec".into(), "echo".into(), not_utf8("{\"x\": \"", "\"}")],
            "ARGS_JSON",
        ),
        (
            vec![
                "exec".into(),
                "--script".into(),
                path_not_utf8(&dir, "w", ".py"),
                "ping".into(),
            ],
            "w",
        ),
        (
            vec![
                "--config".into(),
                path_not_utf8(&dir, "c", ".toml"),
                "exec".into(),
                "ping".into(),
            ],
            "c",
        ),
        (
            vec![
                "exec".into(),
                "--cluster".into(),
                bad.clone(),
                "--nats".into(),
                "nats://127.0.0.1:1".into(),
                "ping".into(),
            ],
            "--cluster",
        ),
    ];
    for (args, names) in &cases {
        let r = run_os(&dir.0, args, &[], 60);
        // The parser refuses a text argument that is not UTF-8 without
        // saying which ("invalid UTF-8 was detected in one or more
        // arguments"); a path is taken as given and named when missing.
        usage_error_naming_any(&r, &format!("{args:?}"), &[names, "invalid UTF-8"]);
    }
    let state = path_not_utf8(&dir, "sweep-", "");
    let r = run_os(
        &dir.0,
        &[
            OsStr::new("sweep").into(),
            "--dry-run".into(),
            "--json".into(),
            "--state-dir".into(),
            state.clone(),
        ],
        &[],
        30,
    );
    no_panic(&r, "sweep --state-dir not UTF-8");
    assert_eq!(r.code, 0, "{r:?}");
    let report = r.json();
    assert_eq!(
        report["state_dir"],
        std::path::Path::new(&state).to_string_lossy().as_ref(),
        "{r:?}"
    );
    assert_eq!(
        (&report["active_runs"], &report["stale_runs"]),
        (&Value::from(0), &Value::Array(vec![])),
        "nothing to sweep: {r:?}"
    );
}

/// `snakepit COMMAND --cluster ext --nats NATS REST...` in `dir`, killed
/// after `secs` seconds.
fn on_cluster_ext(dir: &Dir, command: &[&str], nats: &str, rest: &[&str], secs: u64) -> Run {
    let args = [command, &["--cluster", "ext", "--nats", nats], rest].concat();
    run_os(&dir.0, &os(&args), &[], secs)
}

/// docs/cli.md, serve: "`--prefetch N` is the most calls the host accepts
/// per worker beyond those it runs"; `--pipeline-depth` as `exec`'s;
/// `cluster status` "lists the hosts that answer within `--wait-ms`".
/// `serve --prefetch 2^64 - 1 --pipeline-depth 2^32 - 1` serves (a call
/// through `exec --cluster` answers, exit 0, with `--timeout` 2^64 - 1 as
/// well, and with `--timeout 1` answers or times out, exit 4) and stops on SIGTERM with
/// exit 0; `cluster status --wait-ms 0` ends at once (exit 0, JSON); and
/// `--wait-ms 2^64 - 1` against a NATS server that is not there is "NATS
/// unreachable ... exit code 1", not an overflowed deadline or a hang.
#[test]
fn serve_and_status_at_their_largest_and_smallest() {
    let nats = snakepit_tests::NatsServer::start();
    let dir = Dir::new("extremes-serve");
    let mut serve = Serve::start_in(
        &dir.0,
        &[
            "--nats",
            &nats.url,
            "--cluster",
            "ext",
            "--pool-size",
            "1",
            "--prefetch",
            "18446744073709551615",
            "--pipeline-depth",
            "4294967295",
        ],
        &[],
    );
    let r = on_cluster_ext(&dir, &["exec"], &nats.url, &["echo", r#"{"x": 7}"#], 60);
    echoed(&r, "exec --cluster", 7);
    // The call's deadline at its largest and smallest, through the cluster.
    for (t, codes) in [("18446744073709551615", &[0][..]), ("1", &[0, 4][..])] {
        let rest = ["--timeout", t, "echo", "{}"];
        let r = on_cluster_ext(&dir, &["exec"], &nats.url, &rest, 60);
        no_panic(&r, &format!("exec --cluster --timeout {t}"));
        assert!(codes.contains(&r.code), "--timeout {t}: {r:?}");
    }
    let status = ["cluster", "status"];
    let rest = ["--wait-ms", "0", "--json"];
    let r = on_cluster_ext(&dir, &status, &nats.url, &rest, 30);
    no_panic(&r, "status --wait-ms 0");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.json().is_array(), "{r:?}");
    serve.signal(libc::SIGTERM);
    let ended = serve.wait_for(Duration::from_secs(30));
    assert_eq!(ended.and_then(|s| s.code()), Some(0), "serve on SIGTERM");
    let (_, stderr) = serve.wait();
    assert!(!stderr.contains("panicked"), "{stderr}");
    let nowhere = nobody_at("nats");
    let rest = ["--wait-ms", "18446744073709551615"];
    let r = on_cluster_ext(&dir, &status, &nowhere, &rest, 60);
    no_panic(&r, "status --wait-ms max, no NATS");
    assert_eq!(r.code, 1, "{r:?}");
}

/// The OpenTelemetry variables docs/telemetry.md:140-156 lists, which
/// every `snakepit` command reads when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
/// (docs/cli.md, traces), at their extremes: 0 and 2^64 - 1 for
/// `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_METRIC_EXPORT_INTERVAL` ("0 means the
/// default"), `OTEL_EXPORTER_OTLP_TIMEOUT` and
/// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, a negative interval, a sampler ratio of
/// `nan` or `1e400`, `OTEL_BSP_MAX_QUEUE_SIZE=0`. Telemetry is the
/// environment's concern, not the call's: the call runs and prints its
/// result (exit 0), the receiver being unreachable costing only warnings,
/// and nothing panics or hangs.
#[test]
fn otel_variables_at_their_extremes_leave_the_call_running() {
    let dir = Dir::new("extremes-otel");
    let endpoint = nobody_at("http");
    for (k, v) in [
        ("OTEL_BSP_SCHEDULE_DELAY", "0"),
        ("OTEL_BSP_SCHEDULE_DELAY", "18446744073709551615"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "18446744073709551615"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "-1"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "18446744073709551615"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "18446744073709551615"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
        ("OTEL_TRACES_SAMPLER_ARG", "nan"),
        ("OTEL_TRACES_SAMPLER_ARG", "1e400"),
        ("OTEL_TRACES_SAMPLER_ARG", "-1"),
    ] {
        echo_despite_otel(
            &dir,
            &endpoint,
            &[("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), (k, v)],
        );
    }
}

/// docs/telemetry.md:150: `OTEL_BSP_MAX_QUEUE_SIZE` is "span batching",
/// default 2048; a bad OTEL setting is the environment's mistake: "the
/// call runs (exit 0, its result), one warning names the setting"
/// (outside_cli.rs, quoting docs/telemetry.md). A queue of 2^64 - 1 or
/// 2^62 spans (no machine holds it) must not stop `snakepit exec`:
/// docs/telemetry.md says "the queue is allocated whole, so a size above
/// 65,536 is taken as 65,536". With each value the call runs and prints
/// its result (exit 0), nothing panics or hangs. (Before the fix, the
/// SDK's `BatchSpanProcessor` allocated the queue asked for up front and
/// the command panicked, exit 101, "capacity overflow", before the call.)
#[test]
fn an_impossible_span_queue_size_does_not_stop_the_call() {
    let dir = Dir::new("extremes-otel-queue");
    let endpoint = nobody_at("http");
    for v in ["18446744073709551615", "4611686018427387904"] {
        echo_despite_otel(&dir, &endpoint, &[("OTEL_BSP_MAX_QUEUE_SIZE", v)]);
    }
}

/// docs/cli.md, doctor: "For Python, Node.js and Ruby: the interpreter the
/// adapters would run (the `SNAKEPIT_*` variable, the virtualenv, or
/// `PATH`) ... `--json` prints the same as one object. It exits 0 when at
/// least one language's worker answered"; exit codes: "Output that cannot
/// be written is never ignored and never a crash". `SNAKEPIT_PYTHON` naming
/// a working interpreter through a directory whose name is not UTF-8 (a
/// legal path, with which `exec` runs and plain `doctor` reports "ok"):
/// `doctor --json` prints one JSON object and exits 0, as plain `doctor`
/// does (the path is written lossily). (Before the fix, serde refused the
/// path and `doctor --json` panicked, exit 101: hence the plain `doctor`
/// run first, which shows the interpreter itself is fine.)
#[test]
fn doctor_json_with_an_interpreter_path_that_is_not_utf8() {
    let dir = Dir::new("extremes-doctor");
    let bin = dir.0.join(not_utf8("py", ""));
    std::fs::create_dir(&bin).unwrap();
    let python = std::env::var_os("SNAKEPIT_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/python3".into());
    let python = std::fs::canonicalize(&python).unwrap_or(python);
    std::os::unix::fs::symlink(&python, bin.join("python3")).unwrap();
    let env = [("SNAKEPIT_PYTHON", bin.join("python3").into_os_string())];
    let plain = run_os(&dir.0, &os(&["doctor"]), &env, 120);
    no_panic(&plain, "doctor");
    assert_eq!(plain.code, 0, "the interpreter works: {plain:?}");
    let r = run_os(&dir.0, &os(&["doctor", "--json"]), &env, 120);
    no_panic(&r, "doctor --json");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.json().is_object(), "{r:?}");
}

/// docs/cluster.md:739-740: "An unreachable NATS is exit code 1 with a
/// hint; a bad cluster name is exit code 2", and cluster.md: names are "at
/// most 64 bytes" of `A-Z a-z 0-9 - _`; crates/cli/src/cluster.rs says of
/// `serve`, "Usage errors first: they are exit 2 whether NATS is up or
/// not". The extreme names, empty and 65 bytes (and a dotted one), with
/// NATS down: the name is wrong whatever the network does, so `exec
/// --cluster`, `cluster status` and `serve` each end in exit 2 naming the
/// cluster name, not in exit 1 with the hint to start nats-server (which
/// the user would follow, only to be told next that the name is bad).
/// audit_docs.rs shows exit 2 with NATS up; here each of the three
/// commands with each name is asked for exit 2 naming the cluster name.
#[test]
fn bad_cluster_names_are_usage_errors_even_with_nats_down() {
    let dir = Dir::new("extremes-cluster-name");
    let nowhere = nobody_at("nats");
    let long = "c".repeat(65);
    for name in ["", long.as_str(), "a.b"] {
        for args in [
            vec!["exec", "--cluster", name, "--nats", &nowhere, "ping"],
            vec!["cluster", "status", "--cluster", name, "--nats", &nowhere],
            vec![
                "serve",
                "--cluster",
                name,
                "--nats",
                &nowhere,
                "--pool-size",
                "1",
            ],
        ] {
            let r = run_os(&dir.0, &os(&args), &[], 60);
            usage_error(&r, &format!("{args:?}"), "cluster name");
        }
    }
}
