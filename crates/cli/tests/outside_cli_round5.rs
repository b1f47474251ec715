//! A fifth outside review of the `snakepit` command against docs/cli.md:
//! what the earlier files (cli.rs, outside_cli*.rs, promises*.rs,
//! doc_promises.rs, docs_audit.rs, audit_docs.rs, redteam_readme.rs,
//! review_cli.rs, stop_signals.rs, telemetry*.rs) leave untried.
//!
//! - "Errors go to stderr as `error: ...`, then ... a `hint:` line": a
//!   command's name or a path with a line break, an escape sequence or a
//!   right-to-left override stays on the one `error:` line, escaped; a
//!   100 KB command name is shown cut, once, with its length;
//! - arguments nested deeper than the wire carries get a hint that would
//!   help (the nesting), not one to raise `max_frame_size`;
//! - `snakepit.toml` with an empty `script`; the largest timeouts;
//! - an `OTEL_EXPORTER_OTLP_ENDPOINT` the tool cannot use (another scheme,
//!   not UTF-8): one warning, and the call runs;
//! - `snakepit doctor` stopped by a signal while it probes an interpreter.
//!
//! Every process a test starts is stopped by the test; every wait is a
//! generous guard against a hang, never a measurement.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use common::{command, Dir, Run};

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

/// `snakepit ARGS` in `dir`, to its end (at most two minutes).
fn run_in(dir: &Dir, args: &[&str]) -> Run {
    finish(command(&dir.0, args, &[]), Duration::from_secs(120)).1
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
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next()),
            Some("Z") | Some("X")
        ),
        Err(_) => false,
    }
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

/// Asserts that stderr is exactly an `error:` line and a `hint:` line,
/// and nothing on stdout: what cli.md says a failure prints.
#[track_caller]
fn error_then_hint(r: &Run) {
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{r:?}");
    assert!(lines[0].starts_with("error: "), "{r:?}");
    assert!(lines[1].starts_with("hint: "), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
}

// -------------------------------------------------- one error, one line

/// cli.md: "Errors go to stderr as `error: ...`, then the worker's
/// traceback or stderr tail when there is one, then a `hint:` line."
/// A command whose name holds a line break, a carriage return, a terminal
/// escape sequence or a right-to-left override (the worker's "unknown
/// command" message repeats it) fails with exit code 1 and the two lines
/// only: the name is written escaped (`pi\nng`), and none of those
/// characters reaches the terminal raw, where it would split the error
/// line, paint it or reorder it.
#[test]
fn a_command_name_with_line_breaks_or_escapes_stays_on_the_error_line() {
    let dir = Dir::new("round5-odd-name");
    for (name, shown) in [
        ("pi\nng", "pi\\nng"),
        ("a\rb", "a\\rb"),
        ("x\u{1b}[31my", "x\\u{1b}[31my"),
        ("\u{202e}gnip", "\\u{202e}gnip"),
    ] {
        let r = run_in(&dir, &["exec", name]);
        assert_eq!(r.code, 1, "{name:?}: {r:?}");
        error_then_hint(&r);
        assert!(
            r.stderr.lines().next().unwrap().contains(shown),
            "{name:?}: {r:?}"
        );
        assert!(
            !r.stderr.contains(['\r', '\u{1b}', '\u{202e}']),
            "{name:?}: {r:?}"
        );
    }
}

/// The round-4 leftover: a 100 KB command name was printed in full, in the
/// error line and again in the worker's message and in the hint. It is
/// shown cut, its length said once ("(100000 bytes in all)"), and the
/// whole of stderr stays short.
#[test]
fn a_100_kb_command_name_is_shown_cut_once_with_its_length() {
    let dir = Dir::new("round5-long-name");
    let name = "a".repeat(100_000);
    let r = run_in(&dir, &["exec", &name]);
    assert_eq!(r.code, 1, "{}", &r.stderr[..r.stderr.len().min(500)]);
    assert!(r.stderr.len() < 2_000, "{} bytes", r.stderr.len());
    error_then_hint(&r);
    assert_eq!(
        r.stderr.matches("(100000 bytes in all)").count(),
        1,
        "{r:?}"
    );
}

/// A path given by `--script` or `--config` with a line break in it is
/// named escaped on the one `error:` line too (exit code 2, usage).
#[test]
fn script_and_settings_paths_with_line_breaks_stay_on_the_error_line() {
    let dir = Dir::new("round5-odd-paths");
    let no_language = dir.file("worker\nscript.txt", "print(1)\n");
    for (args, shown) in [
        (
            vec!["exec", "--script", "gone\nworker.py", "ping"],
            "gone\\nworker.py",
        ),
        (
            vec!["--config", "gone\nsettings.toml", "exec", "ping"],
            "gone\\nsettings.toml",
        ),
        (
            vec!["exec", "--script", no_language.as_str(), "ping"],
            "worker\\nscript.txt",
        ),
    ] {
        let r = run_in(&dir, &args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        error_then_hint(&r);
        assert!(r.stderr.lines().next().unwrap().contains(shown), "{r:?}");
    }
}

/// cli.md (`exec --cluster`): a cluster's name is checked before NATS is
/// reached, a usage error (exit code 2) "whether NATS is up or not". A
/// name with a line break is quoted escaped on the one `error:` line.
#[test]
fn a_cluster_name_with_a_line_break_stays_on_the_error_line() {
    let dir = Dir::new("round5-cluster-name");
    let r = run_in(
        &dir,
        &[
            "exec",
            "--cluster",
            "a\nb",
            "--nats",
            "nats://127.0.0.1:1",
            "ping",
        ],
    );
    assert_eq!(r.code, 2, "{r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert!(lines[0].starts_with("error: "), "{r:?}");
    assert!(lines[0].contains("a\\nb"), "{r:?}");
    assert!(
        lines.iter().skip(1).all(|l| l.starts_with("hint: ")),
        "{r:?}"
    );
    assert!(r.stdout.is_empty(), "{r:?}");
}

/// The round-4 leftover: arguments nested deeper than the wire carries
/// (127 levels, the request's own object among them) are refused before
/// sending, exit code 1, and the hint used to say to raise
/// `max_frame_size`, which changes nothing about nesting. It now says what
/// does: the limit in levels, and to nest less (or send a string).
#[test]
fn arguments_nested_too_deep_to_send_get_a_hint_about_the_nesting() {
    let dir = Dir::new("round5-deep");
    let depth = 127;
    let nested = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    let r = run_in(&dir, &["exec", "echo", &nested]);
    assert_eq!(r.code, 1, "{r:?}");
    error_then_hint(&r);
    let hint = r.stderr.lines().nth(1).unwrap();
    assert!(hint.contains("127 levels"), "{hint}");
    assert!(hint.contains("nest"), "{hint}");
    assert!(!hint.contains("raise max_frame_size"), "{hint}");
}

// -------------------------------------------------------- snakepit.toml

/// cli.md (`snakepit.toml`): `script` is "relative to this file; leave out
/// for the generic worker". An empty one named the file's own directory
/// and failed as "script  not found"; it is a usage error (exit code 2)
/// that says the setting is empty.
#[test]
fn an_empty_script_in_the_settings_file_is_a_usage_error_that_says_so() {
    let dir = Dir::new("round5-empty-script");
    dir.file("snakepit.toml", "script = \"\"\n");
    let r = run_in(&dir, &["exec", "ping"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.starts_with("error: "), "{r:?}");
    assert!(r.stderr.contains("script is empty"), "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
}

/// cli.md: `--timeout MS` "sets its deadline" and `timeout_ms` in the file
/// too; the largest number either takes (2^64 - 1 ms) is a deadline that
/// never comes, not an overflow: the call runs and exits 0.
#[test]
fn the_largest_timeouts_are_taken_not_an_overflow() {
    let dir = Dir::new("round5-max-timeout");
    let r = run_in(&dir, &["exec", "--timeout", "18446744073709551615", "ping"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["status"], "ok", "{r:?}");
    dir.file("snakepit.toml", "timeout_ms = 18446744073709551615\n");
    let r = run_in(&dir, &["exec", "ping"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["status"], "ok", "{r:?}");
}

// ------------------------------------------------------------ telemetry

/// cli.md (Traces): "the endpoint is plain `http://`"; telemetry.md: a
/// malformed endpoint is refused at `init`. An endpoint of another scheme
/// (`ftp://`, with a password in it, over either transport) or one that
/// is not UTF-8 turns telemetry off with one `warning: telemetry is off`
/// line naming why, never the password, and the call runs and exits 0 as
/// without it. (The first used to be taken, with a failed export warned of
/// at the end; the second was taken as unset, without a word.)
#[test]
fn an_endpoint_the_tool_cannot_use_is_one_warning_and_the_call_runs() {
    let dir = Dir::new("round5-bad-endpoint");
    let secret = "r5cliSecret";
    let ftp = format!("ftp://user:{secret}@127.0.0.1:9");
    let mut not_utf8 = b"http://127.0.0.1:9".to_vec();
    not_utf8.push(0xff);
    for (endpoint, protocol) in [
        (OsStr::new(&ftp), "http/protobuf"),
        (OsStr::new(&ftp), "grpc"),
        (OsStr::from_bytes(&not_utf8), "http/protobuf"),
    ] {
        let mut cmd = command(
            &dir.0,
            &["exec", "ping"],
            &[("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)],
        );
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
        let (_, r) = finish(cmd, Duration::from_secs(120));
        assert_eq!(r.code, 0, "{endpoint:?}: {r:?}");
        assert_eq!(r.json()["status"], "ok", "{r:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{endpoint:?}: {r:?}");
        assert!(
            r.stderr.starts_with("warning: telemetry is off: "),
            "{endpoint:?}: {r:?}"
        );
        assert!(!r.stderr.contains(secret), "{r:?}");
    }
}

// --------------------------------------------------------------- doctor

/// cli.md, exit codes: a stopped command's "workers die with them". `snakepit
/// doctor` runs each interpreter (`--version`, then a probe of its
/// packages) before it starts a worker; an interpreter that hangs (a broken
/// shim) is killed after its probe's time limit. Stopped by Ctrl-C,
/// SIGTERM or a hang-up while it waits for that probe, `doctor` ends, and
/// the probe must end with it.
#[test]
fn doctor_stopped_while_it_probes_an_interpreter_leaves_no_probe_behind() {
    use std::os::unix::fs::PermissionsExt;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let dir = Dir::new("round5-doctor-stop");
        let pids = dir.0.join("pids");
        let fake = dir.file(
            "hanging-interpreter",
            &format!(
                "#!/bin/sh\necho $$ >> '{}'\nexec sleep 600\n",
                pids.display()
            ),
        );
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let env = [
            ("SNAKEPIT_PYTHON", fake.as_str()),
            ("SNAKEPIT_NODE", fake.as_str()),
            ("SNAKEPIT_RUBY", fake.as_str()),
        ];
        let mut child = command(&dir.0, &["doctor"], &env)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("snakepit doctor runs");
        let probe = || {
            std::fs::read_to_string(&pids)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<u32>().ok()))
        };
        let started = wait_until(Duration::from_secs(60), || probe().is_some());
        signal(child.id(), sig);
        let ended = wait_until(Duration::from_secs(60), || {
            matches!(child.try_wait(), Ok(Some(_)))
        });
        if !ended {
            let _ = child.kill();
        }
        let _ = child.wait();
        let left = probe().filter(|&pid| {
            // The probe has up to its own time limit to go; it must not
            // outlive that.
            !wait_until(Duration::from_secs(15), || !alive(pid))
        });
        // Whatever the outcome, nothing of this test stays behind.
        for line in std::fs::read_to_string(&pids).unwrap_or_default().lines() {
            if let Ok(pid) = line.trim().parse::<u32>() {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if cmdline.starts_with(b"sleep\x00600") {
                    signal(pid, libc::SIGKILL);
                }
            }
        }
        assert!(started, "doctor never ran the interpreter");
        assert!(ended, "doctor did not end on signal {sig}");
        assert_eq!(left, None, "signal {sig}: the probe outlived doctor");
    }
}

// ------------------------------------------------ a loopback OTLP receiver

/// How [`Receiver`] answers.
#[derive(Clone, Copy)]
enum Answers {
    /// 200 to `/v1/traces`, 404 to anything else: a traces-only receiver
    /// (Jaeger, Arize Phoenix).
    TracesOnly,
    /// Reads each request and never answers, holding the connection.
    Never,
}

/// The requests a [`Receiver`] read: each one's path and body.
type Seen = std::sync::Mutex<Vec<(String, Vec<u8>)>>;

/// An HTTP receiver on 127.0.0.1 that keeps each request's path and body;
/// stopped on drop.
struct Receiver {
    port: u16,
    seen: std::sync::Arc<Seen>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    fn start(answers: Answers) -> Receiver {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (sink, stopped) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { return };
                let (sink, stopped) = (sink.clone(), stopped.clone());
                std::thread::spawn(move || serve(conn, &sink, &stopped, answers));
            }
        });
        Receiver { port, seen, stop }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Whether a request to `path` carried `text` in its body (a span's
    /// name is there as it is, in the protobuf).
    fn got(&self, path: &str, text: &str) -> bool {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .any(|(p, body)| p == path && body.windows(text.len()).any(|w| w == text.as_bytes()))
    }

    fn paths(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accepting thread, which then sees the flag.
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Reads one request (head, then a body of its Content-Length), keeps it,
/// and answers as `answers` says.
fn serve(
    mut conn: std::net::TcpStream,
    seen: &Seen,
    stop: &std::sync::atomic::AtomicBool,
    answers: Answers,
) {
    use std::io::{Read as _, Write as _};
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let path = head
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while bytes.len() < head_end + length {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    }
    seen.lock()
        .unwrap()
        .push((path.clone(), bytes[head_end..].to_vec()));
    match answers {
        Answers::TracesOnly => {
            let status = if path == "/v1/traces" {
                "200 OK"
            } else {
                "404 Not Found"
            };
            let _ = conn.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
        Answers::Never => {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// `snakepit ARGS` with `OTEL_EXPORTER_OTLP_ENDPOINT` at `receiver` and
/// more variables, to its end (a generous guard against a hang).
fn exported(dir: &Dir, receiver: &Receiver, args: &[&str], env: &[(&str, &str)]) -> Run {
    let base = receiver.base();
    let mut all = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str())];
    all.extend_from_slice(env);
    finish(command(&dir.0, args, &all), Duration::from_secs(120)).1
}

/// telemetry.md: "A receiver that does not take metrics at all (HTTP 404
/// ...: Jaeger, Arize Phoenix) is not an error: a warning says so once and
/// metrics stop"; cli.md: every command exports "with no flag", and "with
/// `-q`, only errors reach stderr". Against a traces-only receiver
/// `snakepit exec` exits 0 with its result, its `snakepit exec` span
/// arrives, stderr has at most that one warning (none with `-q`) and no
/// error.
#[test]
fn exec_against_a_traces_only_receiver_exits_0_with_its_trace_delivered() {
    let dir = Dir::new("round5-traces-only");
    let receiver = Receiver::start(Answers::TracesOnly);
    for quiet in [false, true] {
        let args: &[&str] = if quiet {
            &["-q", "exec", "ping"]
        } else {
            &["exec", "ping"]
        };
        let r = exported(&dir, &receiver, args, &[]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(r.json()["status"], "ok", "{r:?}");
        assert!(
            receiver.got("/v1/traces", "snakepit exec"),
            "{:?}",
            receiver.paths()
        );
        let lines: Vec<&str> = r.stderr.lines().collect();
        if quiet {
            assert!(lines.is_empty(), "-q: {r:?}");
        } else {
            assert!(lines.len() <= 1, "{r:?}");
            assert!(lines.iter().all(|l| l.contains("metrics")), "{r:?}");
        }
        assert!(!r.stderr.to_lowercase().contains("error"), "{r:?}");
    }
}

/// telemetry.md: "A receiver that takes the connection and never answers
/// costs the end at most 1.5 s ... The `snakepit` command does so".
/// `snakepit exec` against one ends (a two-minute guard, not a measure of
/// speed) with exit code 0 and its result on stdout: a receiver cannot
/// hold the command or change its outcome, and the warning names the cause
/// documented for it.
#[test]
fn exec_against_a_receiver_that_never_answers_ends_with_its_result() {
    let dir = Dir::new("round5-silent");
    let receiver = Receiver::start(Answers::Never);
    let r = exported(&dir, &receiver, &["exec", "echo", r#"{"n": 1}"#], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["echoed"]["n"], 1, "{r:?}");
    assert!(r.stderr.contains("no answer within"), "{r:?}");
    assert!(!receiver.paths().is_empty(), "the receiver was tried");
}

/// telemetry.md (Environment): `OTEL_SDK_DISABLED` "`true`: ...
/// `init_from_env` nothing"; cli.md: only "while traces are exported" do
/// log lines bypass `-v`. With the variable set beside an endpoint,
/// `snakepit -v exec` sends nothing to the receiver, and `-v` shows the
/// pool's events (`info: worker ready ...`) as without telemetry.
#[test]
fn otel_sdk_disabled_beside_an_endpoint_exports_nothing_and_v_still_works() {
    let dir = Dir::new("round5-sdk-disabled");
    let receiver = Receiver::start(Answers::TracesOnly);
    let r = exported(
        &dir,
        &receiver,
        &["-v", "exec", "ping"],
        &[("OTEL_SDK_DISABLED", "true")],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("info: worker ready"), "{r:?}");
    // An export, had there been one, ended before the command did.
    assert!(receiver.paths().is_empty(), "{:?}", receiver.paths());
}

/// cli.md: "Errors go to stderr as `error: ...`, then the worker's
/// traceback ...". A worker's error message quotes what it likes, its
/// caller's input among it: an escape sequence (`ESC[2J` clears the
/// screen), a carriage return (which would overwrite the `error:` line
/// with text of the worker's choosing) or a right-to-left override reach
/// stderr escaped, in the error line and in the traceback below it, and
/// the call fails as documented (exit code 1).
#[test]
fn a_workers_error_message_cannot_drive_the_terminal() {
    let dir = Dir::new("round5-hostile-error");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workers/round5_hostile_error.py");
    let r = run_in(
        &dir,
        &["exec", "--script", script.to_str().unwrap(), "fail"],
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr
            .starts_with("error: `fail` failed in the worker: ValueError"),
        "{r:?}"
    );
    assert!(r.stderr.contains("\\u{1b}[2J"), "{r:?}");
    assert!(r.stderr.contains("\\rOVERWRITTEN"), "{r:?}");
    assert!(!r.stderr.contains(['\u{1b}', '\r', '\u{202e}']), "{r:?}");
    assert!(
        r.stderr.contains("Traceback"),
        "the traceback is shown: {r:?}"
    );
    assert!(r.stdout.is_empty(), "{r:?}");
}

/// cli.md, exit codes: `exec` "stopped by Ctrl-C (130) or SIGTERM (143)
/// ...: its workers are stopped"; telemetry.md: a receiver that never
/// answers "costs the end at most 1.5 s". Both at once: `exec` exporting to
/// a silent receiver, stopped by each signal during its call, still exits
/// with the signal's code (the export's failure does not replace it), its
/// worker is gone, and it ends (a two-minute guard, not a measure).
#[test]
fn exec_stopped_mid_call_while_exporting_to_a_silent_receiver_exits_by_the_signal() {
    let receiver = Receiver::start(Answers::Never);
    let nap = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workers/round4_nap.py");
    for (sig, code) in [(libc::SIGINT, 130), (libc::SIGTERM, 143)] {
        let dir = Dir::new("round5-stop-exporting");
        let pids = dir.0.join("pids");
        let args = serde_json::json!({"pids": pids.to_str().unwrap(), "s": 600}).to_string();
        let base = receiver.base();
        let child = command(
            &dir.0,
            &["exec", "--script", nap.to_str().unwrap(), "nap", &args],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str())],
        )
        .spawn()
        .expect("snakepit runs");
        let pid = child.id();
        let worker = || {
            std::fs::read_to_string(&pids)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok())
        };
        let napping = wait_until(Duration::from_secs(60), || worker().is_some());
        signal(pid, sig);
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let out = child.wait_with_output().expect("snakepit ends");
            let _ = tx.send(());
            out
        });
        let ended = rx.recv_timeout(Duration::from_secs(120)).is_ok();
        if !ended {
            signal(pid, libc::SIGKILL);
        }
        let r = Run::from(reader.join().expect("the reader thread"));
        let gone = worker().is_some_and(|w| wait_until(Duration::from_secs(30), || !alive(w)));
        if let Some(w) = worker().filter(|&w| alive(w)) {
            signal(w, libc::SIGKILL);
        }
        assert!(napping, "the call never started: {r:?}");
        assert!(ended, "signal {sig}: still running: {r:?}");
        assert_eq!(r.code, code, "signal {sig}: {r:?}");
        assert!(r.stderr.contains("error: stopped by"), "{r:?}");
        assert!(gone, "signal {sig}: the worker outlived exec: {r:?}");
    }
}
