//! An outside audit of docs/cli.md, docs/telemetry.md and README.md: the
//! promises of the `snakepit` command that the other test files show not
//! at all or only weakly, each checked against the real binary, real
//! workers and, where the promise is about traces, a real OTLP receiver
//! (Rotel, with and without its metrics receiver, and Arize Phoenix, the
//! traces-only receiver of docs/telemetry.md) or a plain loopback socket
//! that is dead or silent. Everything binds 127.0.0.1 and is stopped.
//!
//! Rotel (`pip install rotel`) and Phoenix (`cargo xtask setup` puts it in
//! `~/.cache/snakepit/phoenix-venv`) are found as the telemetry crate's
//! tests find them; a test that needs one that is absent says so and
//! passes without checking anything.

#[path = "../../telemetry/tests/common/phoenix.rs"]
mod phoenix;
#[path = "../../telemetry/tests/common/rotel.rs"]
mod rotel;

mod common;

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{command, records, Dir, Run};
use serde_json::Value;

// ------------------------------------------------------------------ helpers

/// Runs `cmd` to its end, killing it (and failing) past `limit`: a guard
/// against a hang, not a measurement.
fn finish(mut cmd: Command, limit: Duration) -> Run {
    let mut child = cmd.spawn().expect("the snakepit binary runs");
    let drain = |s: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut s) = s {
                let mut raw = Vec::new();
                let _ = s.read_to_end(&mut raw);
                text = String::from_utf8_lossy(&raw).into_owned();
            }
            text
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let until = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "snakepit did not end within {limit:?}:\n{}\n{}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// `snakepit ARGS` in the temporary directory with `env`, at most 60 s.
fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    finish(
        command(&std::env::temp_dir(), args, env),
        Duration::from_secs(60),
    )
}

/// `snakepit ARGS` in `dir` with `env`, at most 60 s.
fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    finish(command(dir, args, env), Duration::from_secs(60))
}

/// Polls `cond` every 20 ms for at most `limit`; whether it held.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

/// Sends `signal` to process `pid` (a child this test started).
fn kill(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a process this test started and has not reaped.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// A loopback port where nothing listens (bound, then released).
fn closed_port() -> u16 {
    snakepit_tests::free_port()
}

/// The smallest bench that measures everything once.
const SMALL_BENCH: &[&str] = &[
    "bench",
    "--workers",
    "1",
    "--requests",
    "20",
    "--concurrency",
    "1",
    "--init-ms",
    "1",
];

/// The `rotel-agent` binary, found as the telemetry crate's tests find it
/// (`SNAKEPIT_ROTEL`, else inside the `rotel` Python package), or `None`.
fn rotel_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SNAKEPIT_ROTEL") {
        return Some(p.into());
    }
    #[allow(clippy::disallowed_methods)] // asks Python where a package is; not a worker
    let out = Command::new(snakepit_tests::python())
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .ok()?;
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    (out.status.success() && path.is_file()).then_some(path)
}

/// A Rotel collector on free loopback ports, printing what it receives;
/// with `metrics` false its OTLP metrics receiver is off, so that it takes
/// traces only (HTTP 404 for `/v1/metrics`, gRPC `Unimplemented`), as
/// Jaeger does. Killed on drop.
struct Receiver {
    child: Child,
    dir: Dir,
    http_port: u16,
    grpc_port: u16,
}

impl Receiver {
    /// Starts one, or `None` (said on stderr) when Rotel is not installed.
    fn start(metrics: bool) -> Option<Receiver> {
        let Some(bin) = rotel_binary() else {
            eprintln!(
                "SKIPPED: Rotel is not installed (`pip install rotel`, or `cargo xtask setup`)"
            );
            return None;
        };
        let dir = Dir::new("outside-rotel");
        let (grpc_port, http_port) = (snakepit_tests::free_port(), snakepit_tests::free_port());
        #[allow(clippy::disallowed_methods)] // the receiver, not a worker
        let mut cmd = Command::new(bin);
        cmd.args(["start", "--exporter", "blackhole"])
            .args(["--debug-log", "traces", "--debug-log", "metrics"])
            .args(["--debug-log-verbosity", "detailed"])
            .arg("--otlp-grpc-endpoint")
            .arg(format!("127.0.0.1:{grpc_port}"))
            .arg("--otlp-http-endpoint")
            .arg(format!("127.0.0.1:{http_port}"))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.0.join("out")).unwrap())
            .stderr(std::fs::File::create(dir.0.join("err")).unwrap());
        if !metrics {
            cmd.env("ROTEL_OTLP_RECEIVER_METRICS_DISABLED", "true");
        }
        let child = cmd.spawn().expect("rotel starts");
        let mut receiver = Receiver {
            child,
            dir,
            http_port,
            grpc_port,
        };
        for port in [grpc_port, http_port] {
            let up = wait_until(Duration::from_secs(20), || {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            if !up || receiver.child.try_wait().ok().flatten().is_some() {
                panic!(
                    "rotel never listened on {port}: {}",
                    std::fs::read_to_string(receiver.dir.0.join("err")).unwrap_or_default()
                );
            }
        }
        Some(receiver)
    }

    fn http_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    fn grpc_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// What Rotel printed so far.
    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("out")).unwrap_or_default()
    }

    /// Waits up to `limit` for `done` to hold for the spans received.
    fn wait_for(
        &self,
        limit: Duration,
        done: impl Fn(&[rotel::SpanRecord]) -> bool,
    ) -> (Vec<rotel::SpanRecord>, bool) {
        let mut spans = Vec::new();
        let held = wait_until(limit, || {
            spans = rotel::parse_spans(&self.output());
            done(&spans)
        });
        (spans, held)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `snakepit exec` span and its `snakepit.call` of service `service`.
fn exec_and_call<'a>(
    spans: &'a [rotel::SpanRecord],
    service: &str,
) -> Option<(&'a rotel::SpanRecord, &'a rotel::SpanRecord)> {
    let exec = spans
        .iter()
        .find(|s| s.service == service && s.name == "snakepit exec")?;
    let call = spans
        .iter()
        .find(|s| s.service == service && s.name == "snakepit.call")?;
    Some((exec, call))
}

// ------------------------------------------------- traces-only receivers

/// docs/telemetry.md: "A receiver that does not take metrics at all (HTTP
/// 404 or 405, gRPC `Unimplemented`: Jaeger, Arize Phoenix) is not an
/// error: a warning says so once and metrics stop"; "Jaeger takes traces
/// only. ... the first metrics export Jaeger refuses prints one warning and
/// turns metrics off, and the program ends normally"; "The `snakepit`
/// command does so" (short-lived); "with `-q`, only errors reach stderr".
/// docs/cli.md, Traces: both transports, `http/protobuf` and `grpc`.
///
/// Rotel with its metrics receiver off stands for Jaeger: `snakepit exec`
/// over each transport exits 0 with its result, says once that the
/// receiver does not take metrics, reports no failed export and nothing
/// dropped, and its trace (`snakepit exec` over `snakepit.call`) arrives.
/// With `-q` not even the warning is printed.
#[test]
fn exec_against_a_receiver_without_metrics_warns_once_and_ends_normally() {
    let Some(receiver) = Receiver::start(false) else {
        return;
    };
    let (http, grpc) = (receiver.http_base(), receiver.grpc_base());
    for (protocol, endpoint, service) in [
        ("http/protobuf", http.as_str(), "outside-tonly-http"),
        ("grpc", grpc.as_str(), "outside-tonly-grpc"),
    ] {
        let r = run(
            &["exec", "echo", r#"{"x": 1}"#],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                ("OTEL_SERVICE_NAME", service),
            ],
        );
        assert_eq!(r.code, 0, "{protocol}: {r:?}");
        assert_eq!(r.json()["echoed"]["x"], 1, "{protocol}: {r:?}");
        assert_eq!(
            r.stderr.matches("does not take metrics").count(),
            1,
            "{protocol}: one warning: {r:?}"
        );
        for not in [
            "cannot export",
            "flushing telemetry failed",
            "dropped",
            "error",
        ] {
            assert!(!r.stderr.contains(not), "{protocol}: {not}: {r:?}");
        }
        let (spans, arrived) = receiver.wait_for(Duration::from_secs(20), |spans| {
            exec_and_call(spans, service).is_some()
        });
        assert!(arrived, "{protocol}: the trace arrives: {spans:#?}");
        let (exec, call) = exec_and_call(&spans, service).unwrap();
        assert_eq!(call.trace_id, exec.trace_id, "{protocol}: {spans:#?}");
        assert_eq!(call.parent_id, exec.id, "{protocol}: {spans:#?}");
    }
    let quiet = run(
        &["-q", "exec", "echo", r#"{"x": 2}"#],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", http.as_str())],
    );
    assert_eq!(quiet.code, 0, "{quiet:?}");
    assert_eq!(quiet.json()["echoed"]["x"], 2, "{quiet:?}");
    assert!(quiet.stderr.trim().is_empty(), "-q: {quiet:?}");
}

const PHOENIX_TEST: &str = "exec_against_arize_phoenix_ends_normally_and_its_spans_make_one_trace";

/// docs/telemetry.md: "A receiver that does not take metrics at all (HTTP
/// 404 or 405 ...: Jaeger, Arize Phoenix) is not an error: a warning says
/// so once and metrics stop", "the program ends normally"; "How it is
/// tested" names Phoenix as the receiver that "answers 405 to metrics as
/// Jaeger does". docs/cli.md: "`snakepit exec` makes a `snakepit exec` span
/// whose child is the pool's `snakepit.call`"; the exit codes stay the
/// call's. telemetry.md: a failed call's `snakepit.call` has status ERROR
/// and `error.type` `remote`.
///
/// Phoenix binds every interface, so the test runs itself again in a
/// network namespace of its own (as `traces_only.rs` does). There, a
/// `snakepit exec` that succeeds and one whose handler raises are sent to
/// Phoenix over HTTP: exit codes 0 and 1, each with one warning about
/// metrics and no failed export; read back from Phoenix's API, each
/// command's `snakepit.call` is the child of its `snakepit exec` in one
/// trace, and the failed one is flagged.
#[test]
fn exec_against_arize_phoenix_ends_normally_and_its_spans_make_one_trace() {
    if !phoenix::in_netns() {
        if let Err(e) = phoenix::phoenix_binary() {
            eprintln!("SKIPPED: {e}");
            return;
        }
        phoenix::rerun_in_netns(PHOENIX_TEST).unwrap_or_else(|e| panic!("{e:#}"));
        return;
    }
    phoenix::loopback_up().unwrap();
    let phoenix = phoenix::Phoenix::start().unwrap_or_else(|e| panic!("{e:#}"));
    let base = phoenix.http_base();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str()),
        ("OTEL_SERVICE_NAME", "outside-phoenix"),
    ];
    let ok = run(&["exec", "echo", r#"{"x": 1}"#], &env);
    assert_eq!(ok.code, 0, "{ok:?}");
    assert_eq!(ok.json()["echoed"]["x"], 1, "{ok:?}");
    let failed = run(
        &[
            "exec",
            "compute",
            r#"{"operation": "divide", "a": 1, "b": 0}"#,
        ],
        &env,
    );
    assert_eq!(failed.code, 1, "the call's exit code: {failed:?}");
    assert!(failed.stderr.contains("Division by zero"), "{failed:?}");
    for r in [&ok, &failed] {
        assert_eq!(
            r.stderr.matches("does not take metrics").count(),
            1,
            "{r:?}"
        );
        assert!(r.stderr.contains("405"), "{r:?}");
        for not in ["cannot export", "flushing telemetry failed", "dropped"] {
            assert!(!r.stderr.contains(not), "{not}: {r:?}");
        }
    }

    let name = |s: &Value| s["name"].as_str().unwrap_or_default().to_owned();
    let (spans, arrived) = phoenix
        .wait_for(Duration::from_secs(30), |spans| {
            ["snakepit exec", "snakepit.call"]
                .iter()
                .all(|n| spans.iter().filter(|s| name(s) == *n).count() == 2)
        })
        .unwrap();
    assert!(arrived, "{spans:#?}\n{}", phoenix.log());
    let id = |s: &Value| {
        s["context"]["span_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let trace = |s: &Value| {
        s["context"]["trace_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    for (command, status) in [("echo", None), ("compute", Some("ERROR"))] {
        let exec = spans
            .iter()
            .find(|s| name(s) == "snakepit exec" && s["attributes"]["command"] == command)
            .unwrap_or_else(|| panic!("{command}: {spans:#?}"));
        let call = spans
            .iter()
            .find(|s| name(s) == "snakepit.call" && s["attributes"]["snakepit.command"] == command)
            .unwrap_or_else(|| panic!("{command}: {spans:#?}"));
        assert_eq!(trace(call), trace(exec), "{command}: {spans:#?}");
        assert_eq!(
            call["parent_id"],
            id(exec).as_str(),
            "{command}: {spans:#?}"
        );
        match status {
            Some(status) => {
                assert_eq!(call["status_code"], status, "{call:#}");
                assert_eq!(call["attributes"]["error.type"], "remote", "{call:#}");
            }
            None => assert_ne!(call["status_code"], "ERROR", "{call:#}"),
        }
    }
}

// ---------------------------------------------- dead and silent receivers

/// docs/telemetry.md: "The second line is how the `snakepit` command-line
/// tool exports its traces whenever `OTEL_EXPORTER_OTLP_ENDPOINT` is set
/// (with `-q`, only errors reach stderr)"; docs/cli.md, global flags: "`-q`:
/// nothing on stderr but errors".
///
/// With the endpoint on a closed port, `-q exec` of a call that succeeds
/// prints nothing at all on stderr (the run without `-q` warns, so the
/// receiver is really down), and `-q exec` of a call that fails prints its
/// error and hint, nothing about the exports.
#[test]
fn quiet_while_traces_are_exported_leaves_only_the_calls_error_on_stderr() {
    let endpoint = format!("http://127.0.0.1:{}", closed_port());
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let loud = run(&["exec", "echo", r#"{"x": 1}"#], &env);
    assert_eq!(loud.code, 0, "{loud:?}");
    assert!(loud.stderr.contains("cannot export traces"), "{loud:?}");

    let quiet = run(&["-q", "exec", "echo", r#"{"x": 1}"#], &env);
    assert_eq!(quiet.code, 0, "{quiet:?}");
    assert_eq!(quiet.json()["echoed"]["x"], 1, "{quiet:?}");
    assert_eq!(quiet.stderr, "", "-q: nothing but errors: {quiet:?}");

    let failed = run(
        &[
            "-q",
            "exec",
            "compute",
            r#"{"operation": "divide", "a": 1, "b": 0}"#,
        ],
        &env,
    );
    assert_eq!(failed.code, 1, "{failed:?}");
    assert!(failed.stdout.is_empty(), "{failed:?}");
    assert!(
        failed
            .stderr
            .starts_with("error: `compute` failed in the worker: ValueError: Division by zero"),
        "the error comes first: {failed:?}"
    );
    assert!(failed.stderr.contains("\nhint: "), "{failed:?}");
    for not in [
        "WARN",
        "cannot export",
        "flushing telemetry failed",
        "dropped",
    ] {
        assert!(!failed.stderr.contains(not), "{not}: {failed:?}");
    }
}

/// docs/telemetry.md, the environment table: an `https://` endpoint "is
/// `Error::TlsUnsupported` at `init` (send to a collector nearby that
/// forwards over TLS)"; `OTEL_EXPORTER_OTLP_PROTOCOL` (`..._TRACES_PROTOCOL`)
/// "anything else is `Error::UnknownProtocol`"; `OTEL_TRACES_EXPORTER`,
/// `OTEL_METRICS_EXPORTER` and `OTEL_PROPAGATORS`: "anything else is
/// `Error::Unsupported`". For the command such a setting is the
/// environment's mistake, not the call's: the call runs (exit 0, its
/// result), one warning names the setting, `-q` keeps it off stderr, and
/// nothing reaches the receiver. (audit_docs.rs shows
/// `OTEL_EXPORTER_OTLP_PROTOCOL`; these are the others.) The control, a
/// good setting to the same Rotel, does arrive.
#[test]
fn a_bad_otel_setting_turns_telemetry_off_with_a_warning_and_the_call_runs() {
    let Some(receiver) = Receiver::start(true) else {
        return;
    };
    let base = receiver.http_base();
    let https = format!("https://127.0.0.1:{}", receiver.http_port);
    let cases: [(&str, &str, &[&str]); 5] = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &https,
            &["https://127.0.0.1", "plain http"],
        ),
        ("OTEL_TRACES_EXPORTER", "zipkin", &["zipkin"]),
        ("OTEL_METRICS_EXPORTER", "prometheus", &["prometheus"]),
        ("OTEL_PROPAGATORS", "b3", &["b3"]),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift", &["thrift"]),
    ];
    for (i, (var, value, says)) in cases.iter().enumerate() {
        let service = format!("outside-bad-{i}");
        let mut env = vec![("OTEL_SERVICE_NAME", service.as_str())];
        if *var != "OTEL_EXPORTER_OTLP_ENDPOINT" {
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str()));
        }
        env.push((var, value));
        let r = run(&["exec", "echo", r#"{"x": 1}"#], &env);
        assert_eq!(r.code, 0, "{var}={value}: {r:?}");
        assert_eq!(r.json()["echoed"]["x"], 1, "{var}={value}: {r:?}");
        assert_eq!(
            r.stderr.lines().count(),
            1,
            "one warning: {var}={value}: {r:?}"
        );
        assert!(r.stderr.starts_with("warning: "), "{var}={value}: {r:?}");
        for text in *says {
            assert!(r.stderr.contains(text), "{var}={value}: {text}: {r:?}");
        }
        let quiet = run(&["-q", "exec", "echo", r#"{"x": 1}"#], &env);
        assert_eq!(quiet.code, 0, "-q {var}={value}: {quiet:?}");
        assert_eq!(quiet.stderr, "", "-q {var}={value}: {quiet:?}");
    }
    let good = run(
        &["exec", "echo", r#"{"x": 1}"#],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str()),
            ("OTEL_SERVICE_NAME", "outside-good"),
        ],
    );
    assert_eq!(good.code, 0, "{good:?}");
    let (spans, arrived) = receiver.wait_for(Duration::from_secs(20), |spans| {
        exec_and_call(spans, "outside-good").is_some()
    });
    assert!(arrived, "the control arrives: {spans:#?}");
    // Everything the bad runs might have sent was sent before the control.
    let out = receiver.output();
    assert!(
        !out.contains("outside-bad-"),
        "exported with a bad setting:\n{out}"
    );
}

/// Accepts connections on `listener` until `stop`, counting them.
fn count_connections(listener: TcpListener, stop: Arc<AtomicBool>) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok(_) => {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    count
}

/// docs/telemetry.md: "For a command-line tool that should export only
/// when asked: ... `init_from_env()` ... None unless
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set", "The second line is how the
/// `snakepit` command-line tool exports its traces whenever
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set"; docs/cli.md: "Set the standard
/// `OTEL_EXPORTER_OTLP_ENDPOINT` ... and every command exports".
///
/// Without an endpoint, though the other `OTEL_*` variables ask for OTLP
/// (exporters, protocol, service name), `exec` opens no connection to the
/// default receiver ports 4318 and 4317 on this machine and says nothing
/// about telemetry; the control, with the endpoint set to that default,
/// does connect. (Skipped when something else holds those ports.)
#[test]
fn without_an_endpoint_the_command_connects_to_no_receiver() {
    let (Ok(http), Ok(grpc)) = (
        TcpListener::bind("127.0.0.1:4318"),
        TcpListener::bind("127.0.0.1:4317"),
    ) else {
        eprintln!("SKIPPED: 127.0.0.1:4318 or :4317 is in use on this machine");
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let mut counts = vec![
        count_connections(http, stop.clone()),
        count_connections(grpc, stop.clone()),
    ];
    // `localhost` may be ::1 first: listen there too where there is one.
    for port in [4318, 4317] {
        if let Ok(l) = TcpListener::bind(("::1", port)) {
            counts.push(count_connections(l, stop.clone()));
        }
    }
    let total = |counts: &[Arc<AtomicUsize>]| -> usize {
        counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    };
    let asked = [
        ("OTEL_TRACES_EXPORTER", "otlp"),
        ("OTEL_METRICS_EXPORTER", "otlp"),
        ("OTEL_SERVICE_NAME", "outside-unasked"),
    ];
    let mut outcome = Vec::new();
    for protocol in ["http/protobuf", "grpc"] {
        let mut env = asked.to_vec();
        env.push(("OTEL_EXPORTER_OTLP_PROTOCOL", protocol));
        let r = run(&["exec", "echo", r#"{"x": 1}"#], &env);
        outcome.push((protocol, r));
    }
    std::thread::sleep(Duration::from_millis(300));
    let unasked = total(&counts);
    let control = run(
        &["exec", "echo", r#"{"x": 1}"#],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")],
    );
    let connected = wait_until(Duration::from_secs(5), || total(&counts) > unasked);
    stop.store(true, Ordering::Relaxed);
    for (protocol, r) in &outcome {
        assert_eq!(r.code, 0, "{protocol}: {r:?}");
        assert_eq!(r.stderr, "", "{protocol}: {r:?}");
    }
    assert_eq!(unasked, 0, "connections without an endpoint: {outcome:?}");
    assert_eq!(control.code, 0, "{control:?}");
    assert!(connected, "the control connects: {control:?}");
}

/// docs/cli.md, Traces: "every command exports its traces and metrics
/// there"; docs/telemetry.md: "A receiver that takes the connection and
/// never answers costs the end at most 1.5 s ... The `snakepit` command
/// does so"; docs/cli.md, `serve`: on SIGTERM it "shuts the pool down and
/// exits 0".
///
/// `snakepit serve` exporting to a receiver that accepts connections and
/// never answers serves a call, then on SIGTERM leaves with exit 0 within
/// a bound far below the 10 s default export timeout (15 s shutdown) it
/// would take without the short-lived mode, saying that no answer came
/// within the export timeout.
#[test]
fn serve_with_a_silent_receiver_serves_and_leaves_promptly() {
    let nats = snakepit_tests::NatsServer::start();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming() {
            match conn {
                Ok(c) => held.push(c),
                Err(_) => return,
            }
        }
    });
    let mut host = common::Serve::start(
        &[
            "--nats",
            &nats.url,
            "--cluster",
            "outside-silent",
            "--pool-size",
            "1",
        ],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
    );
    let call = run(
        &[
            "exec",
            "--nats",
            &nats.url,
            "--cluster",
            "outside-silent",
            "echo",
            r#"{"x": 1}"#,
        ],
        &[],
    );
    assert_eq!(call.code, 0, "{call:?}");
    assert_eq!(call.json()["echoed"]["x"], 1, "{call:?}");
    host.signal(libc::SIGTERM);
    let left = host.wait_for(Duration::from_secs(8));
    let (status, stderr) = host.wait();
    assert!(
        left.is_some(),
        "serve still running 8 s after SIGTERM: {stderr}"
    );
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(
        stderr.contains("no answer within the export timeout"),
        "{stderr}"
    );
    for signal in ["traces", "metrics"] {
        assert_eq!(
            stderr
                .matches(&format!("cannot export {signal} to "))
                .count(),
            1,
            "once per signal: {stderr}"
        );
    }
}

// ------------------------------------------------------------- stopping

/// A worker whose `hold` starts a child in its own process group, writes
/// "<worker pid> <child pid>" to `args["marker"]`, and never answers.
const HOLDING_WORKER: &str = r#"
import os, subprocess, time
import snakepit_bridge

worker = snakepit_bridge.Worker()

@worker.command("hold")
def hold(args):
    child = subprocess.Popen(["sleep", "300"])
    with open(args["marker"] + ".tmp", "w") as f:
        f.write("%d %d" % (os.getpid(), child.pid))
    os.rename(args["marker"] + ".tmp", args["marker"])
    time.sleep(300)

worker.run()
"#;

/// docs/cli.md, exit codes: "130, 143 | `exec` stopped by Ctrl-C (130) or
/// SIGTERM (143), 128 and the signal's number as a shell gives them: its
/// workers are stopped and its run record removed". stop_signals.rs shows a
/// stop while the worker starts; this one comes while the call runs (the
/// usual Ctrl-C on a call that takes too long), with the worker's own child
/// in its process group: the tool exits 130 or 143, says so, prints no
/// result, and the worker, its child and the run record are gone.
#[test]
fn exec_stopped_during_its_call_stops_its_workers_and_removes_its_run_record() {
    use std::os::unix::fs::PermissionsExt;
    for (signal, code, name) in [
        (libc::SIGTERM, 143, "SIGTERM"),
        (libc::SIGINT, 130, "Ctrl-C"),
    ] {
        let dir = Dir::new("outside-stop");
        let state = dir.0.join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        let script = dir.file("worker.py", HOLDING_WORKER);
        let marker = dir.0.join("pids");
        let args = serde_json::json!({ "marker": marker }).to_string();
        let state_env = state.display().to_string();
        let mut cmd = command(
            &dir.0,
            &["exec", "--script", &script, "hold", &args],
            &[("SNAKEPIT_STATE_DIR", state_env.as_str())],
        );
        let child = cmd.spawn().expect("snakepit runs");
        let pid = child.id();
        let ran = wait_until(Duration::from_secs(30), || marker.exists());
        let had_record = !records(&state).is_empty();
        kill(pid, signal);
        let out = child.wait_with_output().expect("snakepit ends");
        let r = Run::from(out);
        let pids: Vec<u32> = std::fs::read_to_string(&marker)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        let gone = wait_until(Duration::from_secs(10), || {
            pids.iter().all(|&p| !snakepit_tests::alive(p))
        });
        let left: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|&p| snakepit_tests::alive(p))
            .collect();
        for &p in &left {
            kill(p, libc::SIGKILL);
        }
        assert!(ran && pids.len() == 2, "{name}: the call ran: {r:?}");
        assert!(
            had_record,
            "{name}: the pool kept a run record while it ran"
        );
        assert_eq!(r.code, code, "{name}: {r:?}");
        assert!(r.stdout.is_empty(), "{name}: {r:?}");
        assert!(
            r.stderr.contains(&format!("stopped by {name}")),
            "{name}: {r:?}"
        );
        assert!(gone, "{name}: left running: {left:?}");
        assert_eq!(records(&state), Vec::<String>::new(), "{name}: run record");
    }
}

/// docs/cli.md, `serve`: "a stop that comes while NATS is reached or the
/// workers still start stops them and exits 0 as well"; "NATS unreachable
/// is exit code 1 with a hint". review_cli.rs shows a stop while the
/// workers start; this one comes while NATS is being reached: a server
/// that takes the connection and never speaks. SIGTERM, and Ctrl-C, then
/// end `serve` with exit 0 and a note, before the connection gives up; the
/// control, with no signal, gives up with exit 1 and a hint.
#[test]
fn serve_stopped_while_it_reaches_a_silent_nats_server_exits_0() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", listener.local_addr().unwrap());
    let (accepted_tx, accepted) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            match conn {
                Ok(c) => {
                    held.push(c);
                    let _ = accepted_tx.send(());
                }
                Err(_) => return,
            }
        }
    });
    let args = [
        "serve",
        "--nats",
        url.as_str(),
        "--cluster",
        "outside-silent-nats",
        "--pool-size",
        "1",
    ];
    for (signal, name) in [(libc::SIGTERM, "SIGTERM"), (libc::SIGINT, "Ctrl-C")] {
        let child = command(&std::env::temp_dir(), &args, &[])
            .spawn()
            .expect("snakepit runs");
        accepted
            .recv_timeout(Duration::from_secs(30))
            .expect("serve connects to the server");
        std::thread::sleep(Duration::from_millis(200));
        kill(child.id(), signal);
        let r = Run::from(child.wait_with_output().expect("serve ends"));
        assert_eq!(r.code, 0, "{name}: {r:?}");
        assert!(
            r.stderr
                .contains(&format!("stopped by {name} before serving the cluster")),
            "{name}: {r:?}"
        );
        assert!(!r.stderr.contains("error:"), "{name}: {r:?}");
    }
    let r = finish(
        command(&std::env::temp_dir(), &args, &[]),
        Duration::from_secs(60),
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!("cannot reach NATS at {url}")),
        "{r:?}"
    );
    assert!(r.stderr.contains("\nhint: "), "{r:?}");
}

// ---------------------------------------------------------------- output

/// Where a run's stdout goes, for the output-failure tests.
#[derive(Clone, Copy, Debug)]
enum Sink {
    /// `/dev/full`: every write fails with ENOSPC.
    Full,
    /// A pipe whose reader is gone: EPIPE, as behind `| true`.
    Closed,
}

/// `snakepit ARGS` with stdout sent to `sink`.
#[allow(clippy::disallowed_methods)] // `true` only holds the pipe's read end
fn run_into(args: &[&str], sink: Sink) -> Run {
    let stdout: Stdio = match sink {
        Sink::Full => std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full")
            .into(),
        Sink::Closed => {
            let mut reader = Command::new("true")
                .stdin(Stdio::piped())
                .spawn()
                .expect("true runs");
            let write_end = reader.stdin.take().expect("a pipe");
            reader.wait().expect("true ends");
            write_end.into()
        }
    };
    let mut cmd = command(&std::env::temp_dir(), args, &[]);
    cmd.stdout(stdout);
    finish(cmd, Duration::from_secs(120))
}

/// docs/cli.md, exit codes: "6 | the output could not be written: stdout is
/// full (`> /dev/full`, a full disk), failing, or closed by its reader";
/// "A result, report, table or `--help` that cannot be written to stdout
/// ends the command with code 6 and says why on stderr; when stdout is a
/// pipe whose reader has gone (`snakepit doctor | true`), it ends with code
/// 6 and says nothing". The other files show `exec`, `--help`, `sweep`,
/// `completions` and `cluster status`; this is `doctor` (the doc's own
/// example) and `bench`, as text and as `--json`.
#[test]
fn doctor_and_bench_output_that_cannot_be_written_is_exit_6() {
    let bench_json = [SMALL_BENCH, &["--json"]].concat();
    let cases: [(&[&str], Sink); 6] = [
        (&["doctor"], Sink::Full),
        (&["doctor", "--json"], Sink::Full),
        (&["doctor"], Sink::Closed),
        (&["doctor", "--json"], Sink::Closed),
        (&bench_json[..], Sink::Full),
        (SMALL_BENCH, Sink::Closed),
    ];
    for (args, sink) in cases {
        let r = run_into(args, sink);
        assert_eq!(r.code, 6, "{args:?} into {sink:?}: {r:?}");
        assert!(!r.stderr.contains("panicked"), "{args:?}: {r:?}");
        match sink {
            Sink::Full => assert!(
                r.stderr.contains("stdout") && r.stderr.contains("No space left"),
                "{args:?} says why: {r:?}"
            ),
            Sink::Closed => assert!(
                !r.stderr.contains("error"),
                "{args:?} into a closed pipe says nothing: {r:?}"
            ),
        }
    }
}

// -------------------------------------------------------------- settings

/// docs/cli.md, `snakepit.toml`: "A `--config` or `SNAKEPIT_CONFIG` that
/// names no regular file (a missing path, a directory, `/dev/null`) is a
/// usage error that says which." Each of `exec`, `bench`, `serve` and
/// `sweep` (which reads its `state_dir` from the file), named by the flag
/// and by the variable: a directory, `/dev/null`, a symbolic link to it,
/// and a named pipe (which would block a reader forever) are exit 2 at
/// once, naming the path and what it is; nothing starts.
#[test]
fn a_config_that_names_no_regular_file_is_a_usage_error_for_every_command() {
    let dir = Dir::new("outside-config");
    let fifo = dir.0.join("fifo.toml");
    #[allow(clippy::disallowed_methods)] // makes a named pipe, not a worker
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let link = dir.0.join("link.toml");
    std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    let state = dir.0.join("state");
    std::fs::create_dir(&state).unwrap();
    let dir_path = dir.0.display().to_string();
    let (fifo, link) = (fifo.display().to_string(), link.display().to_string());
    let state = state.display().to_string();
    let nowhere = format!("nats://127.0.0.1:{}", closed_port());
    let commands: [Vec<&str>; 4] = [
        vec!["exec", "ping"],
        SMALL_BENCH.to_vec(),
        vec!["serve", "--nats", &nowhere, "--cluster", "outside-config"],
        vec!["sweep", "--dry-run"],
    ];
    let paths = [
        (dir_path.as_str(), "directory"),
        ("/dev/null", "device"),
        (link.as_str(), "device"),
        (fifo.as_str(), "named pipe"),
    ];
    for (path, what) in paths {
        for args in &commands {
            let by_flag = [&["--config", path][..], &args[..]].concat();
            for (how, args, env) in [
                ("--config", by_flag, vec![]),
                (
                    "SNAKEPIT_CONFIG",
                    args.clone(),
                    vec![("SNAKEPIT_CONFIG", path)],
                ),
            ] {
                let mut env = env;
                env.push(("SNAKEPIT_STATE_DIR", state.as_str()));
                let r = finish(command(&dir.0, &args, &env), Duration::from_secs(20));
                assert_eq!(r.code, 2, "{how} {path} {args:?}: {r:?}");
                assert!(
                    r.stderr.contains(path) && r.stderr.contains(what),
                    "{how} {path} {args:?} says which: {r:?}"
                );
                assert!(r.stdout.is_empty(), "{how} {path} {args:?}: {r:?}");
            }
        }
    }
}

/// docs/cli.md, `snakepit.toml`: "... and so is a `./snakepit.toml` that is
/// there but is no regular file (a directory, a named pipe): it is not
/// skipped." A directory of that name in the working directory is exit 2
/// naming it for `exec` and `sweep`; once it is gone, the same `exec` runs
/// with the defaults.
#[test]
fn a_snakepit_toml_in_the_working_directory_that_is_no_file_is_a_usage_error() {
    let dir = Dir::new("outside-implicit-config");
    let named = dir.0.join("snakepit.toml");
    std::fs::create_dir(&named).unwrap();
    let state = dir.0.join("state");
    std::fs::create_dir(&state).unwrap();
    let state = state.display().to_string();
    let env = [("SNAKEPIT_STATE_DIR", state.as_str())];
    for args in [&["exec", "ping"][..], &["sweep", "--dry-run"][..]] {
        let r = run_in(&dir.0, args, &env);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains("./snakepit.toml is a directory"),
            "{args:?} says which: {r:?}"
        );
        assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
    }
    std::fs::remove_dir(&named).unwrap();
    let r = run_in(&dir.0, &["exec", "ping"], &env);
    assert_eq!(r.code, 0, "the control, without it: {r:?}");
}

/// Every field of README.md's `PoolConfig` table, each at its documented
/// default, as a `[pool]` table (`pipeline_depth` and `pool_size` changed,
/// so that `-v` shows that the file was read).
const EVERY_POOL_FIELD: &str = "[pool]
pool_size = 2
startup_timeout_ms = 10000
queue_timeout_ms = 5000
max_queue_size = 1000
worker_init_timeout_ms = 20000
health_check_interval_ms = 30000
health_check_timeout_ms = 5000
shutdown_grace_period_ms = 2000
cleanup_retry_interval_ms = 100
cleanup_max_retries = 10
max_frame_size = 67108864
pipeline_depth = 5
pipeline_max_call_us = 1000
restart_backoff_ms = 50
restart_backoff_max_ms = 5000
breaker_threshold = 5
breaker_cooldown_ms = 10000
max_sessions = 100000
session_ttl_ms = 3600000
recycle_after_calls = 0
recycle_above_rss_mb = 0
worker_ttl_ms = 0
worker_idle_timeout_ms = 0
sweep_on_start = true
";

/// README.md, Configuration: "`PoolConfig` has every setting ... The
/// `snakepit` command reads the same fields from the `[pool]` table of
/// `snakepit.toml`"; `health_check_timeout_ms`: "above 0 while health
/// checks are on"; `max_frame_size`, `breaker_threshold`. docs/cli.md, exit
/// codes: 2 for "a bad `snakepit.toml`".
///
/// A file with every field of the README's table is read (`-v` shows its
/// pool size and pipeline depth) and the call runs; a value the pool
/// refuses (a health-check timeout of 0 with health checks on, a frame
/// limit below its minimum, a breaker that never closes) is exit 2 naming
/// the setting, for `exec` and `bench`, and for `serve` with NATS up; with
/// health checks off, a timeout of 0 is fine.
#[test]
fn every_pool_field_of_the_readme_is_read_and_a_refused_value_is_a_usage_error() {
    let dir = Dir::new("outside-fields");
    dir.file("snakepit.toml", EVERY_POOL_FIELD);
    let r = run_in(&dir.0, &["-v", "exec", "ping"], &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["status"], "ok", "{r:?}");
    assert!(
        r.stderr.contains("starting 2 x ") && r.stderr.contains("pipeline depth 5"),
        "the file's pool: {r:?}"
    );

    let nats = snakepit_tests::NatsServer::start();
    let refused = [
        ("health_check_timeout_ms = 0", "health_check_timeout"),
        ("max_frame_size = 10", "max_frame_size"),
        ("breaker_threshold = 0", "breaker_threshold"),
    ];
    for (line, names) in refused {
        dir.file("snakepit.toml", &format!("[pool]\n{line}\n"));
        let serve = [
            "serve",
            "--nats",
            nats.url.as_str(),
            "--cluster",
            "outside-fields",
            "--pool-size",
            "1",
        ];
        for args in [&["exec", "ping"][..], SMALL_BENCH, &serve[..]] {
            let r = run_in(&dir.0, args, &[]);
            assert_eq!(r.code, 2, "{line}: {args:?}: {r:?}");
            assert!(r.stderr.contains(names), "{line}: {args:?}: {r:?}");
            assert!(r.stdout.is_empty(), "{line}: {args:?}: {r:?}");
        }
    }
    dir.file(
        "snakepit.toml",
        "[pool]\nhealth_check_interval_ms = 0\nhealth_check_timeout_ms = 0\n",
    );
    let r = run_in(&dir.0, &["exec", "ping"], &[]);
    assert_eq!(r.code, 0, "health checks off: {r:?}");
}

/// docs/cli.md, exit codes: 2 for "a bad `snakepit.toml`"; audit_docs.rs:
/// "A usage error is a usage error whether or not NATS is up" (a missing
/// script, `--preload` with Node.js and `--pool-size 0` are exit 2 for
/// `serve` with NATS unreachable). A `[pool]` value the pool refuses is a
/// usage error for `serve` with NATS up (the test above), and with NATS
/// unreachable too, for `serve` and for `bench --nats`: the settings are
/// checked before NATS is reached (they were once checked only when the
/// pool started, after it, and this was exit 1 naming NATS).
#[test]
fn serve_with_a_refused_pool_value_is_a_usage_error_even_with_nats_unreachable() {
    let dir = Dir::new("outside-fields-nonats");
    dir.file("snakepit.toml", "[pool]\nhealth_check_timeout_ms = 0\n");
    let nowhere = format!("nats://127.0.0.1:{}", closed_port());
    for args in [
        &["serve", "--nats", &nowhere, "--cluster", "outside-fields"][..],
        &["bench", "--nats", &nowhere, "--requests", "256"][..],
    ] {
        let r = run_in(&dir.0, args, &[]);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stderr.contains("health_check_timeout"), "{args:?}: {r:?}");
    }
}

/// A worker that answers `big` with 100,000 bytes in the bench's raw loop
/// (`SNAKEPIT_WORKER_ID` `raw_...`) and with a few bytes in a pool.
const RAW_BIG_WORKER: &str = r#"
import os
import snakepit_bridge

RAW = os.environ.get("SNAKEPIT_WORKER_ID", "").startswith("raw_")
worker = snakepit_bridge.Worker()

@worker.command("big")
def big(args):
    return {"data": "x" * (100000 if RAW else 10)}

worker.run()
"#;

/// docs/cli.md, bench, raw loop: "a reply longer than the pool's
/// `max_frame_size` (64 MiB unless `snakepit.toml` says otherwise) fails
/// the bench with exit code 5 from its length prefix alone". cli.rs shows
/// the 64 MiB default against a 4 GiB prefix; this is the file's setting.
/// A raw-loop reply of 100,000 bytes against `max_frame_size = 4096` in the
/// file is exit 5 naming both sizes; the same bench without the setting
/// passes.
#[test]
fn the_bench_raw_loop_takes_max_frame_size_from_snakepit_toml() {
    let dir = Dir::new("outside-raw-frame");
    dir.file("worker.py", RAW_BIG_WORKER);
    let args = [SMALL_BENCH, &["--command", "big", "--json"]].concat();
    dir.file(
        "snakepit.toml",
        "script = \"worker.py\"\n[pool]\nmax_frame_size = 4096\n",
    );
    let r = run_in(&dir.0, &args, &[]);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stderr.contains("raw loop"), "{r:?}");
    assert!(
        r.stderr.contains("exceeds the maximum of 4096 bytes"),
        "{r:?}"
    );
    dir.file("snakepit.toml", "script = \"worker.py\"\n");
    let r = run_in(&dir.0, &args, &[]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["command"], "big", "{r:?}");
}

/// A Ruby worker whose `where` tells the process that ran its top-level
/// code (with preloading, the template it was forked from).
const PRELOAD_RB: &str = r#"
require "snakepit_bridge"
LOADED_IN = Process.pid
w = SnakepitBridge::Worker.new
w.command("where") { |_args, _ctx| { "pid" => Process.pid, "ppid" => Process.ppid, "loaded_in" => LOADED_IN } }
w.run
"#;

/// docs/cli.md, exec: "`--preload` (Python and Ruby) runs the script's
/// module-level code once in a template process and forks the workers from
/// it; `preload = true` in `snakepit.toml` does the same." cli.rs shows
/// Python; this is Ruby, by the flag and by the file, against the control
/// without either.
#[test]
fn ruby_workers_preload_from_the_flag_and_from_the_file() {
    let dir = Dir::new("outside-ruby-preload");
    let script = dir.file("worker.rb", PRELOAD_RB);
    let forked = |r: &Run| {
        assert_eq!(r.code, 0, "{r:?}");
        let v = r.json();
        v["pid"] != v["loaded_in"] && v["ppid"] == v["loaded_in"]
    };
    assert!(!forked(&run(&["exec", "--script", &script, "where"], &[])));
    assert!(forked(&run(
        &["exec", "--preload", "--script", &script, "where"],
        &[]
    )));
    dir.file("snakepit.toml", "script = \"worker.rb\"\npreload = true\n");
    assert!(forked(&run_in(&dir.0, &["exec", "where"], &[])));
}

// ------------------------------------------------------------------ sweep

/// docs/cli.md, sweep: "The directory itself must be private: one owned by
/// another user, writable by others, or under a directory others can
/// change is refused with exit code 1 and a message naming it and what is
/// wrong." The other files show the first two through the command; this
/// is the third: a private state directory inside a directory of mode 0777
/// is refused (exit 1, naming that directory), and the same inside a
/// directory of mode 0755 is swept (exit 0).
#[test]
fn sweep_refuses_a_state_dir_under_a_directory_others_can_change() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Dir::new("outside-open-parent");
    let parent = dir.0.join("open");
    let state = parent.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o777)).unwrap();
    let state_arg = state.display().to_string();
    let r = run(&["sweep", "--state-dir", &state_arg], &[]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains(&format!(
            "{} can be changed by other users",
            parent.display()
        )),
        "names the directory and what is wrong: {r:?}"
    );
    let r = run(&["sweep", "--json", "--state-dir", &state_arg], &[]);
    assert_eq!(r.code, 1, "--json: {r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = run(&["sweep", "--state-dir", &state_arg], &[]);
    assert_eq!(r.code, 0, "the control: {r:?}");
}

// ----------------------------------------------------------------- errors

/// README.md, Troubleshooting: "``StartFailed``: ``worker <id> failed to
/// start: cannot run `python3`: not found (is it installed and on
/// PATH?)``: install the interpreter or point `SNAKEPIT_PYTHON` /
/// `SNAKEPIT_NODE` / `SNAKEPIT_RUBY` at it"; docs/cli.md, exit code 3 for
/// "interpreter missing". The other files name a missing interpreter
/// through `SNAKEPIT_PYTHON`; this is the README's case, no variable and no
/// `python3` on `PATH`: exit 3 with that cause and the hint naming the
/// variables; the same for Node.js.
#[test]
fn exec_without_the_interpreter_on_path_exits_3_as_the_readme_says() {
    let empty = Dir::new("outside-no-path");
    let path = empty.0.display().to_string();
    for (adapter, program, var) in [
        ("python", "python3", "SNAKEPIT_PYTHON"),
        ("node", "node", "SNAKEPIT_NODE"),
    ] {
        let mut cmd = command(
            &std::env::temp_dir(),
            &["exec", "--adapter", adapter, "ping"],
            &[("PATH", path.as_str())],
        );
        cmd.env_remove(var).env_remove("VIRTUAL_ENV");
        let r = finish(cmd, Duration::from_secs(60));
        assert_eq!(r.code, 3, "{adapter}: {r:?}");
        assert!(
            r.stderr.contains(&format!(
                "cannot run `{program}`: not found (is it installed and on PATH?)"
            )),
            "{adapter}: {r:?}"
        );
        assert!(
            r.stderr.contains("hint: ") && r.stderr.contains(var),
            "{adapter}: {r:?}"
        );
    }
}

/// docs/cli.md, bench: "Before measuring, one call through a pool of the N
/// workers checks that the worker starts and the command succeeds, so a
/// mistake is reported as the pool's error." A script that fails on import
/// is the pool's `StartFailed` (exit 3, its traceback), and an unknown
/// command the worker's error (exit 1), as `exec` reports them, not a
/// failure of the raw loop, and nothing is measured (no report on stdout).
#[test]
fn the_bench_reports_a_mistake_as_the_pools_error_before_measuring() {
    let dir = Dir::new("outside-bench-mistake");
    let script = dir.file("worker.py", "import no_such_module_outside\n");
    let r = run(
        &[SMALL_BENCH, &["--json", "--script", &script]].concat(),
        &[],
    );
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("no_such_module_outside"), "{r:?}");
    let r2 = run(
        &[SMALL_BENCH, &["--json", "--command", "no_such_outside"]].concat(),
        &[],
    );
    assert_eq!(r2.code, 1, "{r2:?}");
    assert!(
        r2.stderr
            .contains("error: `no_such_outside` failed in the worker"),
        "{r2:?}"
    );
    for r in [&r, &r2] {
        assert!(!r.stderr.contains("raw loop"), "{r:?}");
        assert!(r.stdout.is_empty(), "{r:?}");
    }
}

// ---------------------------------------------------------------- licence

/// README.md, Licence: "Dual-licensed under the MIT licence (LICENSE-MIT)
/// or the Apache License, Version 2.0 (LICENSE-APACHE) ... (SPDX: `MIT OR
/// Apache-2.0`); the crates and the Python, Node.js and Ruby bridge
/// packages alike, each carrying both texts." Every crate's package (as
/// `cargo package --list` makes it) holds both files, the same texts as the
/// repository's, under `MIT OR Apache-2.0`; the npm package (`npm pack
/// --dry-run`) and the gem (its gemspec's files) hold both; the Python
/// package names both as its `license-files`.
#[test]
fn every_crate_and_bridge_package_carries_both_licence_texts() {
    let root = snakepit_tests::workspace_root();
    let text = |path: &Path| {
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let (mit, apache) = (
        text(&root.join("LICENSE-MIT")),
        text(&root.join("LICENSE-APACHE")),
    );
    let same_texts = |dir: &Path| {
        assert_eq!(text(&dir.join("LICENSE-MIT")), mit, "{}", dir.display());
        assert_eq!(
            text(&dir.join("LICENSE-APACHE")),
            apache,
            "{}",
            dir.display()
        );
    };
    let workspace = text(&root.join("Cargo.toml"));
    assert!(
        workspace.contains("license = \"MIT OR Apache-2.0\""),
        "the workspace's licence"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut crates: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    crates.sort();
    assert!(crates.len() >= 7, "{crates:?}");
    for dir in &crates {
        same_texts(dir);
        let manifest = text(&dir.join("Cargo.toml"));
        assert!(
            manifest.contains("license.workspace = true"),
            "{}",
            dir.display()
        );
        #[allow(clippy::disallowed_methods)] // cargo itself, not a worker
        let mut cmd = Command::new(&cargo);
        cmd.args([
            "package",
            "--list",
            "--allow-dirty",
            "--offline",
            "--manifest-path",
        ])
        .arg(dir.join("Cargo.toml"))
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let listed = finish(cmd, Duration::from_secs(120));
        assert_eq!(listed.code, 0, "{}: {listed:?}", dir.display());
        for file in ["LICENSE-MIT", "LICENSE-APACHE"] {
            assert!(
                listed.stdout.lines().any(|l| l == file),
                "{} packages {file}: {listed:?}",
                dir.display()
            );
        }
    }

    let bridges = root.join("bridges");
    for lang in ["python", "node", "ruby"] {
        same_texts(&bridges.join(lang));
    }
    let pyproject = text(&bridges.join("python/pyproject.toml"));
    assert!(
        pyproject.contains("license = \"MIT OR Apache-2.0\"")
            && pyproject.contains("license-files = [\"LICENSE-MIT\", \"LICENSE-APACHE\"]"),
        "{pyproject}"
    );
    #[allow(clippy::disallowed_methods)] // npm itself, not a worker
    let mut npm = Command::new("npm");
    npm.args(["pack", "--dry-run", "--json", "--ignore-scripts"])
        .current_dir(bridges.join("node"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let packed = finish(npm, Duration::from_secs(120));
    assert_eq!(packed.code, 0, "{packed:?}");
    let packed: Value = serde_json::from_str(&packed.stdout).expect("npm's JSON");
    let files: Vec<&str> = packed[0]["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["path"].as_str())
        .collect();
    for file in ["LICENSE-MIT", "LICENSE-APACHE"] {
        assert!(
            files.contains(&file),
            "the npm package holds {file}: {files:?}"
        );
    }
    #[allow(clippy::disallowed_methods)] // ruby itself, not a worker
    let mut gem = Command::new("ruby");
    gem.args([
        "-e",
        "s = Gem::Specification.load('snakepit_bridge.gemspec'); puts s.files; puts s.licenses.join(' OR ')",
    ])
    .current_dir(bridges.join("ruby"))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let gem = finish(gem, Duration::from_secs(60));
    assert_eq!(gem.code, 0, "{gem:?}");
    for line in ["LICENSE-MIT", "LICENSE-APACHE", "MIT OR Apache-2.0"] {
        assert!(
            gem.stdout.lines().any(|l| l == line),
            "the gem: {line}: {gem:?}"
        );
    }
}

// ----------------------------------------------------------- dependencies

/// docs/telemetry.md: "Of the libraries, only `snakepit-telemetry` depends
/// on OpenTelemetry and `tracing-subscriber`; `snakepit-cluster` uses
/// OpenTelemetry only behind its `opentelemetry` feature (off by default)
/// ... The `snakepit` command uses `tracing-subscriber` for its own lines."
/// Read from `cargo metadata`: no library crate of the workspace but
/// `snakepit-telemetry` has OpenTelemetry or `tracing-subscriber` among its
/// dependencies, except as optional ones behind a feature named
/// `opentelemetry` that is not a default feature.
#[test]
fn no_library_but_snakepit_telemetry_pulls_in_opentelemetry_unasked() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    #[allow(clippy::disallowed_methods)] // cargo itself, not a worker
    let mut cmd = Command::new(cargo);
    cmd.args([
        "metadata",
        "--format-version",
        "1",
        "--offline",
        "--no-deps",
    ])
    .current_dir(snakepit_tests::workspace_root())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let r = finish(cmd, Duration::from_secs(120));
    assert_eq!(r.code, 0, "{r:?}");
    let meta: Value = serde_json::from_str(&r.stdout).expect("cargo's JSON");
    let telemetry_like = |name: &str| {
        name.starts_with("opentelemetry")
            || name.contains("tracing-subscriber")
            || name == "tracing-opentelemetry"
    };
    let mut seen = 0;
    for package in meta["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap_or_default();
        if !name.starts_with("snakepit") || name == "snakepit-tests" {
            continue;
        }
        seen += 1;
        for dep in package["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap_or_default();
            if !telemetry_like(dep_name) || dep["kind"] == "dev" {
                continue;
            }
            match name {
                "snakepit-telemetry" => {}
                "snakepit" => assert_eq!(dep_name, "tracing-subscriber", "the binary"),
                _ => {
                    assert_eq!(dep["optional"], true, "{name} depends on {dep_name}");
                    let features = &package["features"];
                    let gate = features["opentelemetry"].as_array().unwrap_or_else(|| {
                        panic!("{name}: {dep_name} behind no `opentelemetry` feature")
                    });
                    assert!(
                        gate.iter().any(|f| f == &format!("dep:{dep_name}")),
                        "{name}: {dep_name} behind `opentelemetry`: {features}"
                    );
                    let defaults = features["default"].as_array().cloned().unwrap_or_default();
                    assert!(
                        !defaults.iter().any(|f| f == "opentelemetry"),
                        "{name}: `opentelemetry` is a default feature: {features}"
                    );
                }
            }
        }
    }
    assert!(seen >= 7, "the workspace's crates: {seen}");
}
