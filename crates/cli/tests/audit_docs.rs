//! Audit of the promises of docs/cli.md, docs/cluster.md and
//! docs/telemetry.md that no other test shows, checked against the real
//! thing: the `snakepit` binary, its Python workers, a real nats-server and
//! a real OTLP receiver (Rotel), all bound to 127.0.0.1.

#[path = "../../telemetry/tests/common/rotel.rs"]
mod rotel;

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A worker that tells what its process sees.
const WORKER: &str = r#"
import os, sys, time
import snakepit_bridge

worker = snakepit_bridge.Worker()

@worker.command("env")
def env(args, ctx):
    return {
        "service": os.environ.get("OTEL_SERVICE_NAME"),
        "traceparent": getattr(ctx, "traceparent", None),
        "pid": os.getpid(),
    }

@worker.command("nap")
def nap(args, ctx):
    if args.get("pidfile"):
        with open(args["pidfile"], "w") as f:
            f.write(str(os.getpid()))
    time.sleep(args.get("ms", 0) / 1000.0)
    return {"slept": True, "pid": os.getpid()}

@worker.command("fail")
def fail(args, ctx):
    raise ValueError("bad value from the worker")

worker.run()
"#;

/// Runs `snakepit ARGS` with `env` (OTEL_* removed first unless given).
#[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
fn run_env(args: &[&str], env: &[(&str, &str)]) -> (Run, Duration) {
    let started = Instant::now();
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(std::env::temp_dir())
        .env_remove("SNAKEPIT_CONFIG")
        .env_remove("NATS_URL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the snakepit binary runs");
    (Run::from(out), started.elapsed())
}

fn trace_id_of(traceparent: &str) -> String {
    traceparent.split('-').nth(1).unwrap_or_default().to_owned()
}

fn parent_of(traceparent: &str) -> String {
    traceparent.split('-').nth(2).unwrap_or_default().to_owned()
}

// ---------------------------------------------------------------- telemetry

/// cli.md "Traces": with `OTEL_EXPORTER_OTLP_ENDPOINT` "every command exports
/// its traces and metrics there ... `snakepit exec` makes a `snakepit exec`
/// span whose child is the pool's `snakepit.call`, and the call's trace
/// context goes on to the worker". telemetry.md: `snakepit.call` is a CLIENT
/// span with `snakepit.pool`, `snakepit.command`, `snakepit.session`,
/// `snakepit.worker` (int), `process.pid` (int), `snakepit.queue_wait_us`
/// (int), `snakepit.outcome` = `ok`; the workers get the host's service name
/// with `-worker` after it; `snakepit.worker.start` with its "worker ready"
/// event; metrics `snakepit.call.duration`, `snakepit.call.queue_wait`,
/// `snakepit.worker.init.duration`.
#[test]
fn exec_exports_the_documented_call_span_attributes_context_and_metrics() {
    let receiver = rotel::Rotel::start().unwrap();
    let dir = Dir::new("audit-otel");
    let script = dir.file("worker.py", WORKER);
    let base = receiver.http_base();
    let (r, _) = run_env(
        &["exec", "--script", &script, "--session", "s-audit", "env"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str()),
            ("OTEL_SERVICE_NAME", "audit-cli"),
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let reply = r.json();
    assert_eq!(
        reply["service"], "audit-cli-worker",
        "the worker's service is the host's with -worker: {r:?}"
    );
    let traceparent = reply["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the worker got no traceparent: {r:?}"))
        .to_owned();
    let trace = trace_id_of(&traceparent);
    let (spans, arrived) = receiver.wait_for(Duration::from_secs(20), |spans, out| {
        spans
            .iter()
            .any(|s| s.name == "snakepit.call" && s.trace_id == trace)
            && spans.iter().any(|s| s.name == "snakepit exec")
            && spans.iter().any(|s| s.name == "snakepit.worker.start")
            && out.contains("snakepit.call.duration")
    });
    let out = receiver.output();
    assert!(arrived, "{spans:#?}\n{out}");
    let call = spans
        .iter()
        .find(|s| s.name == "snakepit.call" && s.trace_id == trace)
        .unwrap();
    let exec = spans
        .iter()
        .find(|s| s.name == "snakepit exec" && s.trace_id == trace)
        .unwrap_or_else(|| panic!("the exec span is in the worker's trace: {spans:#?}"));
    assert_eq!(call.parent_id, exec.id, "{spans:#?}");
    assert_eq!(
        parent_of(&traceparent),
        call.id,
        "the worker's context is the call's"
    );
    assert_eq!(call.kind, "SPAN_KIND_CLIENT", "{call:?}");
    assert_eq!(call.service, "audit-cli", "{call:?}");
    let attr = |k: &str| call.attributes.get(k).cloned().unwrap_or_default();
    let ty = |k: &str| call.attribute_types.get(k).cloned().unwrap_or_default();
    assert_eq!(attr("snakepit.command"), "env", "{call:?}");
    assert_eq!(attr("snakepit.session"), "s-audit", "{call:?}");
    assert_eq!(attr("snakepit.outcome"), "ok", "{call:?}");
    assert!(!attr("snakepit.pool").is_empty(), "{call:?}");
    assert_eq!(ty("snakepit.pool"), "Str", "{call:?}");
    for k in ["snakepit.worker", "process.pid", "snakepit.queue_wait_us"] {
        assert_eq!(ty(k), "Int", "{k} is an int: {call:?}");
    }
    assert_eq!(attr("process.pid"), reply["pid"].to_string(), "{call:?}");
    assert!(!call.attributes.contains_key("error.type"), "{call:?}");
    let start = spans
        .iter()
        .find(|s| s.name == "snakepit.worker.start")
        .unwrap();
    assert_eq!(
        start.attributes.get("process.pid").map(String::as_str),
        Some(reply["pid"].to_string().as_str()),
        "{start:?}"
    );
    assert!(out.contains("worker ready"), "{out}");
    for metric in [
        "snakepit.call.duration",
        "snakepit.call.queue_wait",
        "snakepit.worker.init.duration",
    ] {
        assert!(out.contains(metric), "{metric} arrived:\n{out}");
    }
}

/// telemetry.md: "`OTEL_SERVICE_NAME` | `service.name` | the executable's
/// name", and a pool wired with `instrument` gives its workers "the host's
/// name with `-worker` after it": `snakepit` and `snakepit-worker` for the
/// command.
#[test]
fn without_a_service_name_exec_and_its_workers_are_named_after_the_executable() {
    let receiver = rotel::Rotel::start().unwrap();
    let dir = Dir::new("audit-otel-name");
    let script = dir.file("worker.py", WORKER);
    let base = receiver.http_base();
    let (r, _) = run_env(
        &["exec", "--script", &script, "env"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str())],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["service"], "snakepit-worker", "{r:?}");
    let (spans, arrived) = receiver.wait_for(Duration::from_secs(20), |spans, _| {
        spans.iter().any(|s| s.name == "snakepit exec")
    });
    assert!(arrived, "{spans:#?}");
    let exec = spans.iter().find(|s| s.name == "snakepit exec").unwrap();
    assert_eq!(exec.service, "snakepit", "{exec:?}");
}

/// telemetry.md: on failure `snakepit.call` has status ERROR,
/// `snakepit.outcome` and `error.type` the error's kind (`remote`,
/// `call_timeout`, ...); cli.md: the exit codes stay those of the failure
/// (1 and 4) while traces are exported.
#[test]
fn failed_exec_calls_are_error_spans_with_their_kind() {
    let receiver = rotel::Rotel::start().unwrap();
    let dir = Dir::new("audit-otel-fail");
    let script = dir.file("worker.py", WORKER);
    let base = receiver.http_base();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str())];
    let (failed, _) = run_env(&["exec", "--script", &script, "fail"], &env);
    assert_eq!(failed.code, 1, "{failed:?}");
    let (late, _) = run_env(
        &[
            "exec",
            "--script",
            &script,
            "--timeout",
            "300",
            "nap",
            r#"{"ms": 3000}"#,
        ],
        &env,
    );
    assert_eq!(late.code, 4, "{late:?}");
    let (spans, arrived) = receiver.wait_for(Duration::from_secs(20), |spans, _| {
        ["fail", "nap"].iter().all(|c| {
            spans.iter().any(|s| {
                s.name == "snakepit.call"
                    && s.attributes.get("snakepit.command").map(String::as_str) == Some(c)
            })
        })
    });
    assert!(arrived, "{spans:#?}");
    for (command, kind) in [("fail", "remote"), ("nap", "call_timeout")] {
        let call = spans
            .iter()
            .find(|s| {
                s.name == "snakepit.call"
                    && s.attributes.get("snakepit.command").map(String::as_str) == Some(command)
            })
            .unwrap();
        assert_eq!(call.status, "STATUS_CODE_ERROR", "{call:?}");
        assert_eq!(
            call.attributes.get("error.type").map(String::as_str),
            Some(kind),
            "{call:?}"
        );
        assert_eq!(
            call.attributes.get("snakepit.outcome").map(String::as_str),
            Some(kind),
            "{call:?}"
        );
    }
}

/// telemetry.md: "`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` alone installs too,
/// and then only traces are exported"; the command installs through
/// `init_if_configured`, so its traces go there.
#[test]
fn exec_with_only_a_traces_endpoint_exports_traces_and_no_metrics() {
    let receiver = rotel::Rotel::start().unwrap();
    let traces = format!("{}/v1/traces", receiver.http_base());
    let (r, _) = run_env(
        &["exec", "echo", r#"{"x": 1}"#],
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", traces.as_str())],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let (spans, arrived) = receiver.wait_for(Duration::from_secs(20), |spans, _| {
        spans.iter().any(|s| s.name == "snakepit exec")
            && spans.iter().any(|s| s.name == "snakepit.call")
    });
    assert!(arrived, "{spans:#?}\n{r:?}");
    std::thread::sleep(Duration::from_secs(1));
    let out = receiver.output();
    assert!(
        !out.contains("snakepit.call.duration"),
        "no metrics with a traces endpoint alone:\n{out}"
    );
    assert!(
        !r.stderr.contains("cannot export metrics"),
        "metrics were not even tried: {r:?}"
    );
}

/// telemetry.md: "`OTEL_SDK_DISABLED` | `true`: ... `init_from_env`
/// nothing": the command exports nothing even with an endpoint set, and
/// the call works.
#[test]
fn exec_with_the_sdk_disabled_exports_nothing() {
    let receiver = rotel::Rotel::start().unwrap();
    let base = receiver.http_base();
    let (r, _) = run_env(
        &["exec", "echo", r#"{"x": 1}"#],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str()),
            ("OTEL_SDK_DISABLED", "true"),
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    std::thread::sleep(Duration::from_secs(2));
    let out = receiver.output();
    assert!(
        !out.contains("snakepit"),
        "nothing exported with OTEL_SDK_DISABLED=true:\n{out}"
    );
}

/// telemetry.md: "anything else is `Error::UnknownProtocol`" for
/// `OTEL_EXPORTER_OTLP_PROTOCOL`; for the command a bad setting of the
/// environment must not break the call (exit 0, the result), and it says
/// why nothing is exported.
#[test]
fn exec_with_an_unknown_otlp_protocol_still_runs_and_says_so() {
    let (r, _) = run_env(
        &["exec", "echo", r#"{"x": 1}"#],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "carrier-pigeon"),
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["echoed"]["x"], 1, "{r:?}");
    assert!(r.stderr.contains("carrier-pigeon"), "{r:?}");
}

/// telemetry.md: with `.short_lived(true)` (which the command says) "A
/// receiver that takes the connection and never answers costs the end at
/// most 1.5 s". Checked with a generous bound against the same command
/// without the variable: the 10 s default export timeout, or retries, would
/// blow it.
#[test]
fn a_receiver_that_never_answers_costs_exec_little_and_is_reported() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    // Accepts every connection, reads what comes, never answers.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    let (plain, plain_took) = run_env(&["exec", "echo", r#"{"x": 1}"#], &[]);
    assert_eq!(plain.code, 0, "{plain:?}");
    let (r, took) = run_env(
        &["exec", "echo", r#"{"x": 1}"#],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        took < plain_took + Duration::from_secs(6),
        "a silent receiver held the command {took:?} (without it: {plain_took:?}): {r:?}"
    );
    assert!(r.stderr.contains("dropped"), "{r:?}");
}

// ------------------------------------------------------------------ cluster

/// `snakepit serve ARGS`, once it says it serves.
fn serve(args: &[&str]) -> Serve {
    Serve::start(args, &[])
}

fn status_json(url: &str, cluster: &str) -> Value {
    let r = snakepit(&[
        "cluster",
        "status",
        "--nats",
        url,
        "--cluster",
        cluster,
        "--json",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    r.json()
}

/// Polls the cluster's status until `done` holds for its first host.
fn wait_status(url: &str, cluster: &str, done: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status_json(url, cluster);
        if s.get(0).is_some_and(&done) {
            return s;
        }
        assert!(Instant::now() < until, "never so: {s:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn alive(pid: i32) -> bool {
    // A zombie counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// cli.md: "`--prefetch N` is the most calls the host accepts per worker
/// beyond those it runs (default 32) ... the host takes fewer for longer
/// calls (enough for 4 ms of its workers' recent calls, at least 1)";
/// cluster.md: capacity is "the host's ready workers times
/// `calls_per_worker` ... plus a prefetch per worker", 1 per worker for the
/// Python bridge's plain handlers.
#[test]
fn serve_prefetch_defaults_to_32_per_worker_and_falls_to_1_for_long_calls() {
    let nats = snakepit_tests::NatsServer::start();
    let dir = Dir::new("audit-prefetch");
    let script = dir.file("worker.py", WORKER);
    let _host = serve(&[
        "--nats",
        &nats.url,
        "--cluster",
        "pf32",
        "--pool-size",
        "1",
        "--host-id",
        "h1",
        "--script",
        &script,
    ]);
    let s = wait_status(&nats.url, "pf32", |h| h["capacity"].as_u64().is_some());
    assert_eq!(s[0]["capacity"], 33, "1 worker + 32 prefetch: {s:#}");
    for _ in 0..3 {
        let r = snakepit(&[
            "exec",
            "--nats",
            &nats.url,
            "--cluster",
            "pf32",
            "nap",
            r#"{"ms": 60}"#,
        ]);
        assert_eq!(r.code, 0, "{r:?}");
    }
    let s = wait_status(&nats.url, "pf32", |h| h["capacity"].as_u64() == Some(2));
    assert_eq!(s[0]["capacity"], 2, "after 60 ms calls, a prefetch of 1");
}

/// cli.md: "A second Ctrl-C or SIGTERM stops it at once: calls still
/// running are cut off, and it exits 1" (with NATS up and a call running);
/// the worker running it does not outlive the host, and the caller learns
/// of it (it does not wait out its 30 s deadline).
#[test]
fn a_second_sigterm_cuts_off_the_running_call_and_exits_1() {
    let nats = snakepit_tests::NatsServer::start();
    let dir = Dir::new("audit-second");
    let script = dir.file("worker.py", WORKER);
    let pidfile = dir.0.join("pid");
    let mut host = serve(&[
        "--nats",
        &nats.url,
        "--cluster",
        "second",
        "--pool-size",
        "1",
        "--script",
        &script,
    ]);
    let url = nats.url.clone();
    let args = serde_json::json!({"ms": 60000, "pidfile": pidfile}).to_string();
    let call = std::thread::spawn(move || {
        let started = Instant::now();
        let r = snakepit(&["exec", "--nats", &url, "--cluster", "second", "nap", &args]);
        (r, started.elapsed())
    });
    let until = Instant::now() + Duration::from_secs(30);
    let pid: i32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < until, "the call never ran");
        std::thread::sleep(Duration::from_millis(20));
    };
    host.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        host.wait_for(Duration::ZERO).is_none(),
        "the first signal waits"
    );
    host.signal(libc::SIGTERM);
    let status = host.wait_for(Duration::from_secs(10));
    let (_, stderr) = host.wait();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "a second signal: exit 1 at once: {stderr}"
    );
    let until = Instant::now() + Duration::from_secs(10);
    while alive(pid) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(pid), "the cut-off call's worker {pid} is gone");
    let (r, took) = call.join().unwrap();
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        took < Duration::from_secs(25),
        "the caller learnt of it before its deadline: {took:?} {r:?}"
    );
}

/// cluster.md: "Cluster names and host ids are `A-Z a-z 0-9 - _`, at most
/// 64 bytes (`Error::Config` otherwise)"; cli.md: a bad flag is a usage
/// error (exit 2), "a bad cluster name is exit code 2". Each command,
/// hostile names included; a 64-byte name is fine.
#[test]
fn bad_cluster_names_and_host_ids_are_usage_errors_for_every_command() {
    let nats = snakepit_tests::NatsServer::start();
    let long = "a".repeat(65);
    let bad = ["a.b", "ml>", "*", "", "with space", long.as_str(), "é"];
    for name in bad {
        let status = snakepit(&["cluster", "status", "--nats", &nats.url, "--cluster", name]);
        assert_eq!(status.code, 2, "status {name:?}: {status:?}");
        let exec = snakepit(&["exec", "--nats", &nats.url, "--cluster", name, "ping"]);
        assert_eq!(exec.code, 2, "exec {name:?}: {exec:?}");
        let serve = snakepit(&[
            "serve",
            "--nats",
            &nats.url,
            "--cluster",
            name,
            "--pool-size",
            "1",
        ]);
        assert_eq!(serve.code, 2, "serve {name:?}: {serve:?}");
        let host = snakepit(&[
            "serve",
            "--nats",
            &nats.url,
            "--cluster",
            "ok",
            "--host-id",
            name,
            "--pool-size",
            "1",
        ]);
        assert_eq!(host.code, 2, "serve --host-id {name:?}: {host:?}");
    }
    let longest = "b".repeat(64);
    let r = snakepit(&[
        "cluster",
        "status",
        "--nats",
        &nats.url,
        "--cluster",
        &longest,
        "--json",
        "--wait-ms",
        "50",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json(), serde_json::json!([]));
}

/// cli.md: "`exec --cluster` sends its call to that cluster ... the result
/// and the exit codes are those of a local `exec`", cluster.md
/// "(`--session`, `--timeout` as usual)": a session's calls go to the host
/// that served it last and there to the same worker; `-` reads ARGS_JSON
/// from stdin.
#[test]
fn exec_through_a_cluster_keeps_a_session_on_its_worker_and_reads_stdin() {
    let nats = snakepit_tests::NatsServer::start();
    let dir = Dir::new("audit-session");
    let script = dir.file("worker.py", WORKER);
    let _host = serve(&[
        "--nats",
        &nats.url,
        "--cluster",
        "sess",
        "--pool-size",
        "3",
        "--host-id",
        "h1",
        "--script",
        &script,
    ]);
    wait_status(&nats.url, "sess", |h| h["available"].as_u64() == Some(3));
    let mut pids = Vec::new();
    for _ in 0..4 {
        let r = snakepit_in(
            &std::env::temp_dir(),
            &[
                "exec",
                "--nats",
                &nats.url,
                "--cluster",
                "sess",
                "--session",
                "user_7",
                "nap",
                "-",
            ],
            &[],
            r#"{"ms": 1}"#,
        );
        assert_eq!(r.code, 0, "{r:?}");
        pids.push(r.json()["pid"].as_u64().unwrap());
    }
    assert!(
        pids.windows(2).all(|w| w[0] == w[1]),
        "one worker: {pids:?}"
    );
}

/// cluster.md, command line: "`snakepit serve` ... host gpu-a serves
/// cluster `ml` with 8 x python model_worker.py at nats://...; Ctrl-C or
/// SIGTERM to leave".
#[test]
fn serve_announces_what_it_serves_as_documented() {
    let nats = snakepit_tests::NatsServer::start();
    let dir = Dir::new("audit-banner");
    let script = dir.file("model_worker.py", WORKER);
    let mut host = serve(&[
        "--nats",
        &nats.url,
        "--cluster",
        "ml",
        "--pool-size",
        "2",
        "--host-id",
        "gpu-a",
        "--script",
        &script,
    ]);
    host.signal(libc::SIGTERM);
    let (status, stderr) = host.wait();
    assert!(status.success(), "{status:?}: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.contains("serves cluster"))
        .unwrap();
    assert!(
        line.starts_with("host gpu-a serves cluster `ml` with 2 x python "),
        "{line}"
    );
    assert!(line.contains("model_worker.py"), "{line}");
    assert!(
        line.ends_with(&format!(" at {}; Ctrl-C or SIGTERM to leave", nats.url)),
        "{line}"
    );
}

/// cli.md exit codes: 2 for "a missing script" and `--preload` with
/// Node.js; `serve` takes the worker flags of `exec`. A usage error is a
/// usage error whether or not NATS is up.
#[test]
fn serve_usage_errors_are_exit_2_even_with_nats_unreachable() {
    let nowhere = format!("nats://127.0.0.1:{}", snakepit_tests::free_port());
    let missing = snakepit(&[
        "serve",
        "--nats",
        &nowhere,
        "--cluster",
        "ml",
        "--script",
        "/no/such/worker.py",
    ]);
    assert_eq!(missing.code, 2, "{missing:?}");
    let node = snakepit(&[
        "serve",
        "--nats",
        &nowhere,
        "--cluster",
        "ml",
        "--adapter",
        "node",
        "--preload",
    ]);
    assert_eq!(node.code, 2, "{node:?}");
    let zero = snakepit(&[
        "serve",
        "--nats",
        &nowhere,
        "--cluster",
        "ml",
        "--pool-size",
        "0",
    ]);
    assert_eq!(zero.code, 2, "{zero:?}");
}

// --------------------------------------------------------------- output

#[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
fn to_dev_full(args: &[&str]) -> Run {
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(BIN)
        .args(args)
        .current_dir(std::env::temp_dir())
        .env_remove("SNAKEPIT_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    Run::from(out)
}

/// cli.md: "Output that cannot be written is never ignored and never a
/// crash. A result, report, table or `--help` that cannot be written to
/// stdout ends the command with code 6 and says why on stderr": for the
/// completion script, `help COMMAND`, the cluster's status and the sweep's
/// JSON report too.
#[test]
fn every_kind_of_output_into_a_full_disk_is_exit_6() {
    let nats = snakepit_tests::NatsServer::start();
    let state = Dir::new("audit-full-state");
    // SAFETY-free: a private directory for the sweep.
    std::fs::set_permissions(
        &state.0,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let state_dir = state.0.display().to_string();
    let cases: Vec<Vec<&str>> = vec![
        vec!["completions", "bash"],
        vec!["completions", "zsh"],
        vec!["help", "exec"],
        vec![
            "cluster",
            "status",
            "--nats",
            &nats.url,
            "--cluster",
            "x",
            "--json",
            "--wait-ms",
            "50",
        ],
        vec!["sweep", "--json", "--state-dir", &state_dir],
        vec![
            "exec",
            "--cluster",
            "x",
            "--nats",
            "nats://127.0.0.1:1",
            "--help",
        ],
    ];
    for args in cases {
        let r = to_dev_full(&args);
        assert_eq!(r.code, 6, "{args:?}: {r:?}");
        assert!(r.stderr.contains("stdout"), "{args:?}: {r:?}");
        assert!(!r.stderr.contains("panicked"), "{args:?}: {r:?}");
    }
}

/// cli.md "Traces": "Set the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (and,
/// as you like, `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_SERVICE_NAME`) and every
/// command exports its traces and metrics there"; telemetry.md lists `grpc`
/// as a value of `OTEL_EXPORTER_OTLP_PROTOCOL` (port 4317).
#[test]
fn exec_exports_over_grpc_when_the_protocol_says_so() {
    let receiver = rotel::Rotel::start().unwrap();
    let base = receiver.grpc_base();
    let (r, _) = run_env(
        &["exec", "echo", r#"{"x": 1}"#],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stderr.contains("telemetry is off"), "{r:?}");
    let (spans, arrived) = receiver.wait_for(Duration::from_secs(20), |spans, _| {
        spans.iter().any(|s| s.name == "snakepit exec")
            && spans.iter().any(|s| s.name == "snakepit.call")
    });
    assert!(arrived, "{spans:#?}\n{r:?}");
}

/// cluster.md, trace context: "the host runs each call in a
/// `snakepit.cluster.serve` span (kind server; `snakepit.host`,
/// `snakepit.command`)" and "an instrumented pool ... continues from it":
/// `snakepit serve` with an endpoint, called by a caller that exports
/// nothing.
#[test]
#[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
fn serve_traces_each_call_in_a_server_span_naming_host_and_command() {
    let receiver = rotel::Rotel::start().unwrap();
    let nats = snakepit_tests::NatsServer::start();
    let dir = Dir::new("audit-serve-trace");
    let script = dir.file("worker.py", WORKER);
    let mut child = Command::new(BIN)
        .args(["serve", "--nats", &nats.url, "--cluster", "servetrace"])
        .args(["--pool-size", "1", "--host-id", "th1", "--script", &script])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_base())
        .env("OTEL_SERVICE_NAME", "audit-host")
        .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
        .env_remove("SNAKEPIT_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("serves cluster") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("never served: {}", reader.join().unwrap());
    }
    let r = snakepit(&[
        "exec",
        "--nats",
        &nats.url,
        "--cluster",
        "servetrace",
        "nap",
        r#"{"ms": 1}"#,
    ]);
    // SAFETY: kill(2) on the child this test started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    let host_stderr = reader.join().unwrap();
    assert_eq!(r.code, 0, "{r:?}");
    assert!(status.success(), "{status:?}: {host_stderr}");
    let (spans, arrived) = receiver.wait_for(Duration::from_secs(20), |spans, _| {
        spans.iter().any(|s| s.name == "snakepit.cluster.serve")
            && spans.iter().any(|s| s.name == "snakepit.call")
    });
    assert!(arrived, "{spans:#?}\n{host_stderr}");
    let serve = spans
        .iter()
        .find(|s| s.name == "snakepit.cluster.serve")
        .unwrap();
    let call = spans.iter().find(|s| s.name == "snakepit.call").unwrap();
    assert_eq!(serve.kind, "SPAN_KIND_SERVER", "{serve:?}");
    assert_eq!(serve.service, "audit-host", "{serve:?}");
    assert_eq!(
        serve.attributes.get("snakepit.host").map(String::as_str),
        Some("th1"),
        "{serve:?}"
    );
    assert_eq!(
        serve.attributes.get("snakepit.command").map(String::as_str),
        Some("nap"),
        "{serve:?}"
    );
    assert_eq!(call.trace_id, serve.trace_id, "{spans:#?}");
    assert_eq!(call.parent_id, serve.id, "{spans:#?}");
}

/// cluster.md: "Each host announces its capacity, how much of it its
/// workers run at once, and its free capacity every 250 ms" on
/// `snakepit.<c>.hb` ("host, pid, capacity, how much of it workers run at
/// once, free, leaving"; "Each host also sends 4 heartbeats a second"), and
/// on leaving "goes on saying goodbye every heartbeat".
#[test]
fn serve_heartbeats_four_times_a_second_and_says_goodbye_when_it_leaves() {
    let nats = snakepit_tests::NatsServer::start();
    let mut host = serve(&[
        "--nats",
        &nats.url,
        "--cluster",
        "beat",
        "--pool-size",
        "2",
        "--host-id",
        "hb1",
    ]);
    let pid = host.child.id();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (beats, goodbyes) = rt.block_on(async {
        use futures_util::StreamExt as _;
        let nc = async_nats::connect(&nats.url).await.unwrap();
        let mut sub = nc.subscribe("snakepit.beat.hb").await.unwrap();
        nc.flush().await.unwrap();
        // Let the first one through, then count for two seconds.
        let first = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("a heartbeat within 10 s")
            .unwrap();
        let first: Value = serde_json::from_slice(&first.payload).unwrap();
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut beats = vec![first];
        while let Ok(Some(m)) = tokio::time::timeout_at(until, sub.next()).await {
            beats.push(serde_json::from_slice::<Value>(&m.payload).unwrap());
        }
        host.signal(libc::SIGTERM);
        let mut goodbyes = Vec::new();
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(3), sub.next()).await {
            goodbyes.push(serde_json::from_slice::<Value>(&m.payload).unwrap());
        }
        (beats, goodbyes)
    });
    let (status, stderr) = host.wait();
    assert!(status.success(), "{status:?}: {stderr}");
    // 2 s at 4 a second is 8 after the first; a loaded machine may delay a
    // few, a timer gone wrong gives 1 or 20.
    assert!(
        (6..=13).contains(&beats.len()),
        "{} heartbeats in about 2 s: {beats:#?}",
        beats.len()
    );
    let b = &beats[0];
    assert_eq!(b["host"], "hb1", "{b}");
    assert_eq!(b["pid"], pid, "{b}");
    assert_eq!(b["running"], 2, "two one-at-a-time workers: {b}");
    assert!(b["capacity"].as_u64().unwrap() > 2, "{b}");
    assert!(b["free"].as_u64().is_some(), "{b}");
    assert!(
        goodbyes
            .iter()
            .any(|g| g["bye"] == true || g["leaving"] == true),
        "a goodbye after SIGTERM: {goodbyes:#?}"
    );
}

/// cli.md: `cluster status` waits `--wait-ms` "(default 500 ...)"; cluster.md:
/// "when none answers, it says so on stderr and exits 0".
#[test]
fn cluster_status_waits_500_ms_by_default_and_says_nobody_answered() {
    let nats = snakepit_tests::NatsServer::start();
    let r = snakepit(&[
        "cluster",
        "status",
        "--nats",
        &nats.url,
        "--cluster",
        "empty",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(
        r.stderr
            .contains("no host of cluster `empty` answered within 500 ms"),
        "{r:?}"
    );
}

/// Every process below `pid` (children through every thread), recursively.
fn descendants(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for c in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                if !all.contains(&c) {
                    all.push(c);
                    todo.push(c);
                }
            }
        }
    }
    all
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// cli.md, bench 6: the hosts of `bench --nats` are "child processes of the
/// bench, started through the pool's spawn path"; cluster.md: "each through
/// the same spawn path as workers, so none outlives the bench". A bench
/// SIGKILLed while it measures the cluster leaves no host, nor a host's
/// worker, nor a local worker behind.
#[test]
#[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
fn a_bench_nats_killed_mid_run_leaves_no_host_nor_worker_behind() {
    let nats = snakepit_tests::NatsServer::start();
    let mut bench = Command::new(BIN)
        .args(["bench", "--nats", &nats.url, "--workers", "2"])
        .args([
            "--requests",
            "2000000",
            "--concurrency",
            "4",
            "--rounds",
            "1",
        ])
        .current_dir(std::env::temp_dir())
        .env_remove("SNAKEPIT_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = bench.id();
    let mut seen: Vec<u32> = Vec::new();
    let until = Instant::now() + Duration::from_secs(90);
    // Until both hosts run with a worker each.
    loop {
        for p in descendants(pid) {
            if !seen.contains(&p) {
                seen.push(p);
            }
        }
        let hosts: Vec<u32> = seen
            .iter()
            .copied()
            .filter(|p| cmdline(*p).contains(" serve "))
            .collect();
        if hosts.len() >= 2 && hosts.iter().all(|h| !descendants(*h).is_empty()) {
            for h in hosts {
                for p in descendants(h) {
                    if !seen.contains(&p) {
                        seen.push(p);
                    }
                }
            }
            break;
        }
        if Instant::now() > until || bench.try_wait().unwrap().is_some() {
            let _ = bench.kill();
            let _ = bench.wait();
            panic!("never saw both hosts with their workers: {seen:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Into the measurements, collecting what runs meanwhile.
    let measuring = Instant::now() + Duration::from_secs(4);
    while Instant::now() < measuring {
        for p in descendants(pid) {
            if !seen.contains(&p) {
                seen.push(p);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(bench.try_wait().unwrap().is_none(), "the bench still runs");
    bench.kill().unwrap();
    bench.wait().unwrap();
    let until = Instant::now() + Duration::from_secs(15);
    let left = loop {
        let left: Vec<(u32, String)> = seen
            .iter()
            .filter(|p| alive(**p as i32))
            .map(|p| (*p, cmdline(*p)))
            .collect();
        if left.is_empty() || Instant::now() > until {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for (p, _) in &left {
        // SAFETY: kill(2) on a leftover of this test's own bench.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(*p as libc::pid_t, libc::SIGKILL);
        }
    }
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// cluster.md, failures: "NATS is back | calls work again: `async-nats`
/// reconnects clients and hosts and restores their subscriptions; nothing
/// is restarted": a `snakepit serve` process outlives a NATS restart and
/// serves again, the same process, and `cluster status` lists it.
#[test]
fn serve_serves_again_once_nats_is_back() {
    let mut nats = snakepit_tests::NatsServer::start();
    let dir = Dir::new("audit-nats-back");
    let script = dir.file("worker.py", WORKER);
    let mut host = serve(&[
        "--nats",
        &nats.url,
        "--cluster",
        "back",
        "--pool-size",
        "1",
        "--host-id",
        "hb",
        "--script",
        &script,
    ]);
    let before = snakepit(&["exec", "--nats", &nats.url, "--cluster", "back", "env"]);
    assert_eq!(before.code, 0, "{before:?}");
    nats.kill();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        host.wait_for(Duration::ZERO).is_none(),
        "serve outlives NATS going away"
    );
    nats.restart();
    let until = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let r = snakepit(&[
            "exec",
            "--nats",
            &nats.url,
            "--cluster",
            "back",
            "--timeout",
            "5000",
            "env",
        ]);
        if r.code == 0 || Instant::now() > until {
            break r;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(after.code, 0, "served again: {after:?}");
    assert_eq!(
        after.json()["pid"],
        before.json()["pid"],
        "the same worker: nothing restarted"
    );
    let status = status_json(&nats.url, "back");
    assert_eq!(status[0]["host"], "hb", "{status:#}");
    host.signal(libc::SIGTERM);
    let (status, stderr) = host.wait();
    assert!(status.success(), "{status:?}: {stderr}");
}

/// cli.md exit codes: 3 when "the workers could not start ... import
/// error ...; the worker's stderr is printed"; `serve` starts a pool as
/// `exec` does.
#[test]
fn serve_with_a_script_that_fails_on_import_exits_3_with_its_stderr() {
    let nats = snakepit_tests::NatsServer::start();
    let dir = Dir::new("audit-serve-import");
    let script = dir.file("broken.py", "import no_such_module_for_audit\n");
    let r = snakepit(&[
        "serve",
        "--nats",
        &nats.url,
        "--cluster",
        "broken",
        "--pool-size",
        "1",
        "--script",
        &script,
    ]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("no_such_module_for_audit"), "{r:?}");
    assert!(r.stderr.contains("hint:"), "{r:?}");
}

/// cli.md: "`snakepit --help` and `snakepit help COMMAND` list every flag
/// with examples": every command, `cluster status` included (whose flags
/// `help cluster` does not list).
#[test]
fn help_for_every_command_has_examples() {
    for args in [
        &["help", "exec"][..],
        &["help", "bench"],
        &["help", "doctor"],
        &["help", "sweep"],
        &["help", "completions"],
        &["help", "serve"],
        &["help", "cluster", "status"],
        &["cluster", "status", "--help"],
    ] {
        let r = snakepit(args);
        assert_eq!(r.code, 0, "{args:?}: {r:?}");
        assert!(r.stdout.contains("Examples:"), "{args:?}: {r:?}");
    }
}

/// cli.md: on SIGTERM `serve` "takes no new call, lets the running ones
/// finish"; cluster.md: `node.shutdown()` "tells the clients it is leaving
/// (they send it nothing more) ... while it goes on saying goodbye every
/// heartbeat". A caller that starts while the only host is leaving gets no
/// room (exit 4), and the leaving host never runs its call.
#[test]
fn a_leaving_host_takes_no_call_from_a_caller_that_starts_meanwhile() {
    let nats = snakepit_tests::NatsServer::start();
    let dir = Dir::new("audit-leaving");
    let script = dir.file("worker.py", WORKER);
    let first = dir.0.join("first");
    let second = dir.0.join("second");
    let mut host = serve(&[
        "--nats",
        &nats.url,
        "--cluster",
        "leaving",
        "--pool-size",
        "2",
        "--script",
        &script,
    ]);
    let url = nats.url.clone();
    let args = serde_json::json!({"ms": 4000, "pidfile": first}).to_string();
    let long = std::thread::spawn(move || {
        snakepit(&["exec", "--nats", &url, "--cluster", "leaving", "nap", &args])
    });
    let until = Instant::now() + Duration::from_secs(30);
    while !first.exists() {
        assert!(Instant::now() < until, "the first call never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    host.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(600));
    let args = serde_json::json!({"ms": 1, "pidfile": second}).to_string();
    let late = snakepit(&[
        "exec",
        "--nats",
        &nats.url,
        "--cluster",
        "leaving",
        "--timeout",
        "1500",
        "nap",
        &args,
    ]);
    let (status, stderr) = host.wait();
    let long = long.join().unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    assert_eq!(long.code, 0, "the running call finished: {long:?}");
    assert_eq!(late.code, 4, "no host had room: {late:?}");
    assert!(!second.exists(), "the leaving host ran a new call");
}

/// cluster.md: capacity is "the host's ready workers times
/// `ServeOptions::calls_per_worker` (by default what each worker says it
/// runs at once: 1 for the Python and Ruby bridges' plain handlers, more
/// for Node.js and asyncio workers)"; `snakepit serve --prefetch 0` leaves
/// the prefetch out, so the announced capacity is exactly that.
#[test]
fn serve_announces_each_bridges_own_concurrency_as_its_capacity() {
    let nats = snakepit_tests::NatsServer::start();
    let dir = Dir::new("audit-concurrency");
    let asyncio = dir.file(
        "aio.py",
        "import asyncio, snakepit_bridge\n\
         worker = snakepit_bridge.Worker()\n\
         @worker.command(\"nap\")\n\
         async def nap(args):\n    await asyncio.sleep(0)\n    return {}\n\
         worker.run()\n",
    );
    let plain = dir.file("plain.py", WORKER);
    let cases: [(&str, &[&str], bool); 4] = [
        ("cpython", &["--script", &plain], false),
        ("cruby", &["--adapter", "ruby"], false),
        ("cnode", &["--adapter", "node"], true),
        ("casync", &["--script", &asyncio], true),
    ];
    for (cluster, worker, many) in cases {
        let args = [
            &["--nats", nats.url.as_str(), "--cluster", cluster][..],
            &["--pool-size", "2", "--prefetch", "0"],
            worker,
        ]
        .concat();
        let mut host = serve(&args);
        let s = wait_status(&nats.url, cluster, |h| h["capacity"].as_u64().is_some());
        let capacity = s[0]["capacity"].as_u64().unwrap();
        if many {
            assert!(capacity > 2, "{cluster}: more than 1 per worker: {s:#}");
        } else {
            assert_eq!(capacity, 2, "{cluster}: 1 per worker: {s:#}");
        }
        host.signal(libc::SIGTERM);
        let (status, stderr) = host.wait();
        assert!(status.success(), "{cluster}: {status:?}: {stderr}");
    }
}

/// Runs `snakepit ARGS` on a terminal (util-linux `script`), with `env`;
/// what the terminal showed, stdout and stderr together.
#[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
fn on_a_terminal(args: &[&str], env: &[(&str, &str)]) -> String {
    let line = std::iter::once(BIN)
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .current_dir(std::env::temp_dir())
        .env_remove("SNAKEPIT_CONFIG")
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, _) in std::env::vars() {
        if k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("util-linux `script` runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// cli.md, global flags: "Colours only when the stream is a terminal and
/// `NO_COLOR` is not set"; cli.md, traces: while traces are exported, log
/// lines go to stderr at `WARN`. Those lines, on a terminal with
/// `NO_COLOR`, are not coloured either.
#[test]
fn no_color_holds_for_the_log_lines_while_traces_are_exported() {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    let coloured = on_a_terminal(&["exec", "ping"], &env);
    assert!(
        coloured.contains("cannot export traces"),
        "a warning: {coloured:?}"
    );
    let plain = on_a_terminal(&["exec", "ping"], &[env[0], ("NO_COLOR", "1")]);
    assert!(plain.contains("cannot export traces"), "{plain:?}");
    assert!(!plain.contains('\x1b'), "NO_COLOR: {plain:?}");
}

/// cli.md, bench synopsis: `[--nats URL [--cluster NAME] [--hosts N]
/// [--prefetch N]]`: the cluster flags go with `--nats` (`--cluster` without
/// it is a usage error); `--hosts` or `--prefetch` without it is a usage
/// error too (exit 2), not a local bench that silently ignores them.
#[test]
fn bench_cluster_flags_without_nats_are_usage_errors() {
    let bench = [
        "bench",
        "--workers",
        "1",
        "--requests",
        "20",
        "--concurrency",
        "1",
        "--init-ms",
        "1",
        "--json",
    ];
    for extra in [
        &["--cluster", "x"][..],
        &["--hosts", "3"],
        &["--prefetch", "4"],
    ] {
        let r = snakepit(&[&bench[..], extra].concat());
        assert_eq!(r.code, 2, "{extra:?}: {r:?}");
        assert!(r.stderr.contains("--nats"), "{extra:?}: {r:?}");
    }
}

/// cli.md, traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set "every command
/// exports its traces and metrics there, with no flag". `bench` exports
/// its pools' spans; its pools' metrics (`snakepit.call.duration`) should
/// arrive as `exec`'s do.
#[test]
fn bench_exports_traces_and_metrics_when_the_endpoint_is_set() {
    let receiver = rotel::Rotel::start().unwrap();
    let base = receiver.http_base();
    let (r, _) = run_env(
        &[
            "bench",
            "--workers",
            "1",
            "--requests",
            "20",
            "--concurrency",
            "1",
            "--init-ms",
            "1",
            "--json",
        ],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", base.as_str())],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let (spans, arrived) = receiver.wait_for(Duration::from_secs(20), |spans, out| {
        spans.iter().any(|s| s.name == "snakepit.call") && out.contains("snakepit.call.duration")
    });
    assert!(
        spans.iter().any(|s| s.name == "snakepit.call"),
        "spans arrive: {r:?}"
    );
    assert!(arrived, "metrics arrive too:\n{}", receiver.output());
}
