//! The `snakepit` binary as a new user would try it: each command against
//! real workers, and wrong input (clear error, non-zero exit).

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

mod common;

use common::*;

const PY_WORKER: &str = r#"
import os, time
import snakepit_bridge

worker = snakepit_bridge.Worker()

@worker.command("greet")
def greet(args, ctx):
    print("greeting", args.get("name"))
    return {"greeting": "Hello, %s!" % args.get("name", "world"), "session": ctx.session_id}

@worker.command("nap")
def nap(args):
    time.sleep(args.get("seconds", 5))
    return {"slept": True}

worker.run()
"#;

#[test]
fn help_shows_the_commands_examples_and_exit_codes() {
    let r = snakepit(&["--help"]);
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout_has(&[
        "exec",
        "bench",
        "doctor",
        "Examples:",
        "Exit codes:",
        "snakepit.toml",
    ]);
    let r = snakepit(&["exec", "--help"]);
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout_has(&[
        "--adapter",
        "--script",
        "--pool-size",
        "--codec",
        "--session",
        "--timeout",
        "ARGS_JSON",
    ]);
    let r = snakepit(&["--version"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.starts_with("snakepit "), "{r:?}");
}

#[test]
fn completions_prints_a_script_for_bash_that_bash_accepts() {
    let r = snakepit(&["completions", "bash"]);
    assert_eq!(r.code, 0, "{r:?}");
    // The completion function, registered for the command, offering every
    // subcommand and their flags.
    r.stdout_has(&[
        "_snakepit()",
        "complete -F _snakepit",
        "exec",
        "bench",
        "doctor",
        "sweep",
        "completions",
        "--requests",
        "--adapter",
    ]);
    assert!(r.stderr.is_empty(), "{r:?}");
    // Bash parses it, and after sourcing it `snakepit` completes.
    #[allow(clippy::disallowed_methods)] // runs bash on the script, not a worker
    let check = Command::new("bash")
        .args(["-c", "source /dev/stdin && complete -p snakepit"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut bash| {
            bash.stdin
                .take()
                .expect("stdin")
                .write_all(r.stdout.as_bytes())?;
            bash.wait_with_output()
        })
        .expect("bash runs");
    assert!(
        check.status.success() && String::from_utf8_lossy(&check.stdout).contains("_snakepit"),
        "bash did not take the script: {check:?}"
    );
}

#[test]
fn completions_for_other_shells_and_an_unknown_shell_is_a_usage_error() {
    for (shell, text) in [
        ("zsh", "#compdef snakepit"),
        ("fish", "complete -c snakepit"),
        ("elvish", "snakepit"),
        ("powershell", "snakepit"),
    ] {
        let r = snakepit(&["completions", shell]);
        assert_eq!(r.code, 0, "{shell}: {r:?}");
        assert!(r.stdout.contains(text), "{shell}: missing {text}: {r:?}");
    }
    let r = snakepit(&["completions", "tcsh"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("bash"),
        "the error lists the shells: {r:?}"
    );
    assert!(r.stdout.is_empty(), "{r:?}");
}

#[test]
fn exec_prints_the_result_as_json() {
    let r = snakepit(&["exec", "ping"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["status"], "ok");
    let r = snakepit(&["exec", "compute", r#"{"operation": "add", "a": 5, "b": 3}"#]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["result"], 8);
}

#[test]
fn exec_reads_the_arguments_from_stdin() {
    let r = snakepit_in(
        &std::env::temp_dir(),
        &["exec", "echo", "-"],
        &[],
        r#"{"message": "from stdin"}"#,
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["echoed"]["message"], "from stdin");
}

#[test]
fn exec_runs_each_bundled_language_in_both_codecs() {
    for adapter in ["python", "node", "ruby"] {
        let r = snakepit(&[
            "exec",
            "--adapter",
            adapter,
            "compute",
            r#"{"operation": "multiply", "a": 10, "b": 5}"#,
        ]);
        assert_eq!(r.code, 0, "{adapter}: {r:?}");
        assert_eq!(r.json()["result"], 50, "{adapter}");
    }
    // CI installs the Python and Ruby msgpack packages (`cargo xtask setup`).
    for adapter in ["python", "ruby"] {
        let r = snakepit(&[
            "exec",
            "--adapter",
            adapter,
            "--codec",
            "msgpack",
            "echo",
            r#"{"n": 1}"#,
        ]);
        assert_eq!(r.code, 0, "{adapter}: {r:?}");
        assert_eq!(r.json()["echoed"]["n"], 1, "{adapter}");
    }
}

#[test]
fn bad_json_arguments_are_a_usage_error() {
    for bad in ["{bad", "[1, 2]", "42", ""] {
        let r = snakepit(&["exec", "compute", bad]);
        assert_eq!(r.code, 2, "{bad}: {r:?}");
        assert!(r.stderr.contains("ARGS_JSON"), "{bad}: {r:?}");
        assert!(r.stdout.is_empty(), "{r:?}");
    }
    // Quotes the shell took: the hint says to quote the object.
    let r = snakepit(&["exec", "compute", "{a: 5}"]);
    assert!(r.stderr.contains("quote the object for the shell"), "{r:?}");
    // Quotes were there: the error is elsewhere, and no such hint.
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    for bad in [r#"{"a": 5,}"#, deep.as_str()] {
        let r = snakepit(&["exec", "compute", bad]);
        assert_eq!(r.code, 2, "{r:?}");
        assert!(!r.stderr.contains("quote the object"), "{r:?}");
    }
    // Not an object: its kind is named, and a large value is not printed.
    let r = snakepit(&["exec", "compute", "[1, 2]"]);
    assert!(
        r.stderr
            .contains("must be a JSON object, not an array ([1,2])"),
        "{r:?}"
    );
    let big = format!("[{}1]", "1,".repeat(30_000));
    let r = snakepit(&["exec", "compute", &big]);
    assert!(r.stderr.contains("not an array"), "{r:?}");
    assert!(r.stderr.len() < 1_000, "{} bytes of stderr", r.stderr.len());
}

#[test]
fn a_missing_script_is_a_usage_error() {
    let r = snakepit(&["exec", "--script", "no/such/worker.py", "ping"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("no/such/worker.py") && r.stderr.contains("not found"),
        "{r:?}"
    );
}

#[test]
fn an_unknown_adapter_is_a_usage_error() {
    let r = snakepit(&["exec", "--adapter", "perl", "ping"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("perl") && r.stderr.contains("python"),
        "{r:?}"
    );
    let dir = Dir::new("ext");
    let script = dir.file("worker.pl", "print 1;\n");
    let r = snakepit(&["exec", "--script", &script, "ping"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--adapter"), "{r:?}");
}

#[test]
fn a_failing_command_exits_1_with_the_workers_error() {
    let r = snakepit(&[
        "exec",
        "compute",
        r#"{"operation": "divide", "a": 1, "b": 0}"#,
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("Division by zero"), "{r:?}");
    assert!(r.stderr.contains("Traceback"), "{r:?}");
    let r = snakepit(&["exec", "no_such_command"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no_such_command"), "{r:?}");
}

#[test]
fn a_users_script_runs_in_each_language_with_a_session() {
    let dir = Dir::new("scripts");
    let py = dir.file("worker.py", PY_WORKER);
    let js = dir.file(
        "worker.js",
        "const { Worker } = require('snakepit-bridge');\nnew Worker({ commands: { greet(args, ctx) { return { greeting: `Hello, ${args.name}!`, session: ctx.sessionId }; } } }).run();\n",
    );
    let rb = dir.file(
        "worker.rb",
        "require \"snakepit_bridge\"\nw = SnakepitBridge::Worker.new\nw.command(\"greet\") { |args, ctx| { \"greeting\" => \"Hello, #{args['name']}!\", \"session\" => ctx.session_id } }\nw.run\n",
    );
    for script in [&py, &js, &rb] {
        let r = snakepit(&[
            "exec",
            "--script",
            script,
            "--session",
            "user_123",
            "greet",
            r#"{"name": "Ada"}"#,
        ]);
        assert_eq!(r.code, 0, "{script}: {r:?}");
        let v = r.json();
        assert_eq!(v["greeting"], "Hello, Ada!", "{script}");
        assert_eq!(v["session"], "user_123", "{script}");
    }
}

#[test]
fn verbose_shows_the_workers_output_and_quiet_shows_nothing() {
    let dir = Dir::new("verbose");
    let py = dir.file("worker.py", PY_WORKER);
    let r = snakepit(&["-v", "exec", "--script", &py, "greet", r#"{"name": "Ada"}"#]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("greeting Ada"), "{r:?}");
    let r = snakepit(&["-q", "exec", "--script", &py, "greet", r#"{"name": "Ada"}"#]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.is_empty(), "{r:?}");
}

#[test]
fn a_call_past_its_deadline_exits_4() {
    let dir = Dir::new("timeout");
    let py = dir.file("worker.py", PY_WORKER);
    let r = snakepit(&[
        "exec",
        "--script",
        &py,
        "--timeout",
        "300",
        "nap",
        r#"{"seconds": 30}"#,
    ]);
    assert_eq!(r.code, 4, "{r:?}");
    assert!(
        r.stderr.contains("timed out") && r.stderr.contains("--timeout"),
        "{r:?}"
    );
}

#[test]
fn a_script_that_fails_on_import_exits_3_with_its_stderr() {
    let dir = Dir::new("import");
    let py = dir.file("worker.py", "import no_such_module_here\n");
    let r = snakepit(&["exec", "--script", &py, "ping"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("no_such_module_here"), "{r:?}");
}

#[test]
fn a_missing_interpreter_exits_3_and_says_what_to_set() {
    let r = snakepit_in(
        &std::env::temp_dir(),
        &["exec", "ping"],
        &[("SNAKEPIT_PYTHON", "/no/such/python3")],
        "",
    );
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr.contains("/no/such/python3") && r.stderr.contains("SNAKEPIT_PYTHON"),
        "{r:?}"
    );
}

#[test]
fn snakepit_toml_sets_the_worker_and_flags_override_it() {
    let dir = Dir::new("toml");
    dir.file("worker.py", PY_WORKER);
    dir.file(
        "snakepit.toml",
        "script = \"worker.py\"\ntimeout_ms = 300\n\n[pool]\npool_size = 2\nqueue_timeout_ms = 1000\n",
    );
    // The script comes from the file, relative to it.
    let r = snakepit_in(&dir.0, &["exec", "greet", r#"{"name": "Ada"}"#], &[], "");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["greeting"], "Hello, Ada!");
    // The file's deadline applies, and the flag overrides it.
    let nap = r#"{"seconds": 0.6}"#;
    let r = snakepit_in(&dir.0, &["exec", "nap", nap], &[], "");
    assert_eq!(r.code, 4, "{r:?}");
    let r = snakepit_in(&dir.0, &["exec", "--timeout", "20000", "nap", nap], &[], "");
    assert_eq!(r.code, 0, "{r:?}");
    // --adapter on the command line replaces the file's script.
    let r = snakepit_in(
        &dir.0,
        &["exec", "--adapter", "node", "random", "{}"],
        &[],
        "",
    );
    assert_eq!(r.code, 0, "{r:?}");
    // --config names another file.
    let other = dir.file("other.toml", "adapter = \"ruby\"\n");
    let r = snakepit(&["--config", &other, "exec", "ping"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.json()["ruby_version"].is_string(), "{r:?}");
}

#[test]
fn a_bad_settings_file_is_a_usage_error_naming_the_key() {
    let dir = Dir::new("badtoml");
    dir.file("snakepit.toml", "[pool]\npool_sise = 2\n");
    let r = snakepit_in(&dir.0, &["exec", "ping"], &[], "");
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("pool_sise") && r.stderr.contains("snakepit.toml"),
        "{r:?}"
    );
    let r = snakepit(&["--config", "/no/such/snakepit.toml", "exec", "ping"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("/no/such/snakepit.toml"), "{r:?}");
}

#[test]
fn bench_json_has_the_documented_fields() {
    let dir = Dir::new("bench");
    let plot = dir.0.join("latency.svg");
    let r = snakepit(&[
        "bench",
        "--workers",
        "2",
        "--requests",
        "400",
        "--concurrency",
        "8",
        "--init-ms",
        "100",
        "--payload",
        "64",
        "--command",
        "echo",
        "--json",
        "--plot",
        plot.to_str().expect("utf-8 path"),
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["workers"], 2);
    assert_eq!(v["codec"], "json");
    assert_eq!(v["payload_bytes"], 64);
    for part in ["raw", "pool"] {
        for field in ["rps", "p50_us", "p99_us", "mb_s"] {
            assert!(
                v[part][field].as_f64().is_some_and(|x| x > 0.0),
                "{part}.{field}: {v}"
            );
        }
    }
    // One round unless asked: its ratio is the median.
    assert_eq!(v["rounds"], 1, "{v}");
    let ratio = v["pool_over_raw"]["median"].as_f64();
    assert!(ratio.is_some_and(|x| x > 0.0), "{v}");
    assert_eq!(
        v["pool_over_raw"]["rounds"],
        serde_json::json!([ratio]),
        "{v}"
    );
    // Pipelining as set (the default), and the same pool with it off.
    assert_eq!(v["pipeline_depth"], 16, "{v}");
    assert_eq!(v["pipeline_max_call_us"], 1000, "{v}");
    for field in ["rps", "p50_us", "p99_us", "mb_s", "cpu_us_per_call"] {
        assert!(
            v["pool_no_pipeline"][field]
                .as_f64()
                .is_some_and(|x| x > 0.0),
            "pool_no_pipeline.{field}: {v}"
        );
    }
    assert!(
        v["pool_no_pipeline_over_raw"]["median"]
            .as_f64()
            .is_some_and(|x| x > 0.0),
        "{v}"
    );
    // The raw loop from one thread, and the pool without pipelining over it.
    let one = v["raw_one_thread"]["rps"].as_f64().unwrap_or(0.0);
    assert!(one > 0.0, "{v}");
    assert!(v["raw_one_thread"]["mb_s"].as_f64().is_some(), "{v}");
    let off = v["pool_no_pipeline"]["rps"].as_f64().unwrap_or(0.0);
    let ratio = v["no_pipeline_over_raw_one_thread"]["median"].as_f64();
    assert!(ratio.is_some_and(|r| (r - off / one).abs() < 0.01), "{v}");
    // The host's and the workers' CPU per call in every measurement.
    for part in ["raw_1", "raw", "pool", "raw_one_thread"] {
        for field in ["cpu_us_per_call", "workers_cpu_us_per_call"] {
            assert!(
                v[part][field].as_f64().is_some_and(|x| x > 0.0),
                "{part}.{field}: {v}"
            );
        }
    }
    assert!(v["memory"]["host_kib_per_idle_worker"].is_f64(), "{v}");
    assert!(v["memory"]["host_rss_growth_kib"].is_i64(), "{v}");
    assert_eq!(v["args"], serde_json::json!({}), "{v}");
    assert!(v["sessions"].is_null(), "{v}");
    assert_eq!(v["startup"]["workers"], 2);
    assert_eq!(v["startup"]["init_ms"], 100);
    for field in ["concurrent_ms", "sequential_ms"] {
        // Every start waits at least the init delay.
        assert!(
            v["startup"][field].as_f64().is_some_and(|x| x >= 100.0),
            "{field}: {v}"
        );
    }
    for field in ["ratio", "ready_ms"] {
        assert!(
            v["startup"][field].as_f64().is_some_and(|x| x > 0.0),
            "{field}: {v}"
        );
    }
    // What ran, and under which load, as the docs list them.
    assert_eq!(v["adapter"], "python", "{v}");
    assert!(v["script"].is_null(), "{v}");
    assert!(
        v["interpreter"].as_str().is_some_and(|i| !i.is_empty()),
        "{v}"
    );
    assert_eq!(v["host_runtime"], "tokio current_thread", "{v}");
    assert_eq!(v["command"], "echo", "{v}");
    assert_eq!(v["requests"], 400, "{v}");
    assert_eq!(v["concurrency"], 8, "{v}");
    for part in ["raw", "pool"] {
        let (p50, p999) = (v[part]["p50_us"].as_f64(), v[part]["p999_us"].as_f64());
        assert!(p50.zip(p999).is_some_and(|(a, b)| b >= a), "{part}: {v}");
    }
    // One caller, one worker: both sides and what the pool adds.
    for part in ["raw_1", "pool_1"] {
        assert!(
            v["sequential"][part]["p50_us"]
                .as_f64()
                .is_some_and(|x| x > 0.0),
            "sequential.{part}: {v}"
        );
    }
    let added = v["sequential"]["added_p50_us"]
        .as_f64()
        .expect("added_p50_us");
    let (raw_1, pool_1) = (
        v["sequential"]["raw_1"]["p50_us"].as_f64().unwrap_or(0.0),
        v["sequential"]["pool_1"]["p50_us"].as_f64().unwrap_or(0.0),
    );
    assert!((added - (pool_1 - raw_1)).abs() < 0.11, "{v}");
    assert!(v["sequential"]["added_p99_us"].is_f64(), "{v}");
    let svg = std::fs::read_to_string(&plot).expect("the plot is written");
    assert!(
        svg.starts_with("<svg")
            && svg.contains("raw loop, 2 workers")
            && svg.contains("pool, 2 workers, 8 callers, pipeline depth 16")
            && svg.contains("pool, 2 workers, 8 callers, no pipelining")
    );
}

/// A worker that appends each `record` call's session and arguments to
/// $SNAKEPIT_TEST_LOG, one JSON line per call.
const RECORDING_WORKER: &str = r#"
import json, os
import snakepit_bridge

worker = snakepit_bridge.Worker()
log = open(os.environ["SNAKEPIT_TEST_LOG"], "a")

@worker.command("record")
def record(args, ctx):
    log.write(json.dumps({"session": ctx.session_id, "args": args}) + "\n")
    log.flush()
    return {"ok": True}

worker.run()
"#;

#[test]
fn bench_sends_the_given_arguments_and_spreads_the_calls_over_the_sessions() {
    let dir = Dir::new("bench-sessions");
    let script = dir.file("recording.py", RECORDING_WORKER);
    let log = dir.0.join("calls.log");
    let args = r#"{"operation": "add", "a": 5, "b": 3}"#;
    let r = snakepit_in(
        &dir.0,
        &[
            "bench",
            "--script",
            &script,
            "--command",
            "record",
            "--args",
            args,
            "--sessions",
            "3",
            "--workers",
            "2",
            "--requests",
            "200",
            "--concurrency",
            "4",
            "--init-ms",
            "1",
            "--json",
        ],
        &[("SNAKEPIT_TEST_LOG", log.to_str().expect("utf-8 path"))],
        "",
    );
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["sessions"], 3, "{v}");
    assert_eq!(v["args"]["operation"], "add", "{v}");
    let text = std::fs::read_to_string(&log).expect("the worker wrote its log");
    let calls: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let expected: Value = serde_json::from_str(args).expect("JSON");
    assert!(
        calls.iter().all(|c| c["args"] == expected),
        "a call with other arguments: {text}"
    );
    // The raw loop has no sessions; the pool's session calls (both pool
    // measurements and the sequential one, 200 + 200 + 50 at least) are
    // spread over exactly the three sessions.
    let mut sessions: Vec<&str> = calls.iter().filter_map(|c| c["session"].as_str()).collect();
    assert!(sessions.len() >= 450, "{} session calls", sessions.len());
    sessions.sort_unstable();
    sessions.dedup();
    assert_eq!(sessions.len(), 3, "{sessions:?}");
    assert!(calls.iter().any(|c| c["session"].is_null()), "no raw call");
}

#[test]
fn bench_pipelining_comes_from_the_flag_or_the_settings_file() {
    let dir = Dir::new("bench-pipeline");
    dir.file(
        "snakepit.toml",
        "[pool]\npipeline_depth = 3\npipeline_max_call_us = 250\n",
    );
    let small = [
        "bench",
        "--workers",
        "1",
        "--requests",
        "16",
        "--concurrency",
        "2",
        "--init-ms",
        "1",
        "--json",
    ];
    let r = snakepit_in(&dir.0, &small, &[], "");
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["pipeline_depth"], 3, "{v}");
    assert_eq!(v["pipeline_max_call_us"], 250, "{v}");
    assert!(v["pool_no_pipeline"]["rps"].as_f64().is_some(), "{v}");
    // Off: the pool is measured once, without pipelining.
    let off = [&small[..], &["--pipeline-depth", "0"]].concat();
    let r = snakepit_in(&dir.0, &off, &[], "");
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["pipeline_depth"], 0, "{v}");
    assert!(v["pool"]["rps"].as_f64().is_some(), "{v}");
    assert!(v["pool_no_pipeline"].is_null(), "{v}");
    assert!(v["pool_no_pipeline_over_raw"].is_null(), "{v}");
    // The one-thread loop is compared with `pool`, which has it off.
    let (one, pool) = (&v["raw_one_thread"]["rps"], &v["pool"]["rps"]);
    let ratio = v["no_pipeline_over_raw_one_thread"]["median"].as_f64();
    assert!(
        ratio.is_some_and(|r| {
            let want = pool.as_f64().unwrap_or(0.0) / one.as_f64().unwrap_or(1.0);
            (r - want).abs() < 0.01
        }),
        "{v}"
    );
    // Rounds: each has its ratios, the median lies between them.
    let three = [&small[..], &["--rounds", "3"]].concat();
    let r = snakepit_in(&dir.0, &three, &[], "");
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["rounds"], 3, "{v}");
    for ratio in [
        "pool_over_raw",
        "pool_no_pipeline_over_raw",
        "no_pipeline_over_raw_one_thread",
    ] {
        let each: Vec<f64> = v[ratio]["rounds"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        assert_eq!(each.len(), 3, "{ratio}: {v}");
        let mut sorted = each.clone();
        sorted.sort_by(f64::total_cmp);
        assert_eq!(v[ratio]["median"].as_f64(), Some(sorted[1]), "{ratio}: {v}");
    }
    let zero = [&small[..], &["--rounds", "0"]].concat();
    let r = snakepit_in(&dir.0, &zero, &[], "");
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--rounds must be at least 1"), "{r:?}");
    // The table names each measurement's pipelining.
    let r = snakepit_in(&dir.0, &small[..small.len() - 1], &[], "");
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout_has(&[
        "throughput, 1 worker, pipeline depth 3",
        "throughput, 1 worker, no pipelining",
        "throughput, 1 worker, one thread, no pipelining",
        "host CPU per call, pipeline depth 3",
        "host memory per idle worker",
    ]);
}

#[test]
fn bench_refuses_bad_arguments_sessions_and_a_payload_over_data() {
    for (flags, says) in [
        (&["--args", "[1]"][..], "--args"),
        (&["--args", "{"][..], "--args"),
        (&["--sessions", "0"][..], "--sessions"),
        (&["--args", r#"{"data": 1}"#, "--payload", "8"][..], "data"),
        (&["--pipeline-depth", "x"][..], "--pipeline-depth"),
    ] {
        let r = snakepit(&[&["bench"][..], flags].concat());
        assert_eq!(r.code, 2, "{flags:?}: {r:?}");
        assert!(r.stderr.contains(says), "{flags:?}: {r:?}");
    }
}

/// `--host-threads N`: the pool's measurements on a `multi_thread` runtime
/// of N threads, said in the report and the table's title; 0 threads, or
/// with `--nats`, is a usage error.
#[test]
fn bench_runs_the_pool_on_the_host_threads_asked_for() {
    let load = [
        "bench",
        "--requests",
        "400",
        "--concurrency",
        "8",
        "--init-ms",
        "10",
        "--host-threads",
        "2",
    ];
    let r = snakepit(&[&load[..], &["--json"]].concat());
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["host_runtime"], "tokio multi_thread, 2 threads", "{v}");
    for part in ["pool", "pool_no_pipeline"] {
        assert!(v[part]["rps"].as_f64().is_some_and(|x| x > 0.0), "{v}");
    }
    let r = snakepit(&load);
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout_has(&["host on tokio multi_thread, 2 threads"]);
    for flags in [
        &["--host-threads", "0"][..],
        &["--host-threads", "2", "--nats", "nats://127.0.0.1:1"][..],
    ] {
        let r = snakepit(&[&["bench"][..], flags].concat());
        assert_eq!(r.code, 2, "{flags:?}: {r:?}");
        assert!(r.stderr.contains("--host-threads"), "{flags:?}: {r:?}");
    }
}

#[test]
fn exec_takes_the_pipeline_depth() {
    let r = snakepit(&["-v", "exec", "--pipeline-depth", "2", "ping"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("pipeline depth 2"), "{r:?}");
    let r = snakepit(&["-v", "exec", "ping"]);
    assert!(r.stderr.contains("pipeline depth 16"), "{r:?}");
}

#[test]
fn bench_prints_a_table_and_refuses_bad_flags() {
    let r = snakepit(&[
        "bench",
        "--adapter",
        "ruby",
        "--requests",
        "200",
        "--concurrency",
        "4",
        "--init-ms",
        "50",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout_has(&[
        "raw loop",
        "pool",
        "throughput, 2 workers",
        "host CPU per call",
        "host memory per idle worker",
        "start-up, 2 x 50 ms init",
    ]);
    let r = snakepit(&["bench", "--plot", "chart.png"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains(".svg"), "{r:?}");
    let r = snakepit(&["bench", "--requests", "10"]);
    assert_eq!(r.code, 2, "{r:?}");
    let r = snakepit(&[
        "bench",
        "--requests",
        "400",
        "--command",
        "no_such_command",
        "--init-ms",
        "10",
    ]);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(r.stderr.contains("no_such_command"), "{r:?}");
}

#[test]
fn doctor_reports_interpreters_and_packages() {
    let r = snakepit(&["doctor", "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["ok"], true);
    let langs: Vec<&str> = v["interpreters"]
        .as_array()
        .expect("interpreters")
        .iter()
        .filter_map(|i| i["language"].as_str())
        .collect();
    assert_eq!(langs, ["python", "node", "ruby"]);
    let python = &v["interpreters"][0];
    assert!(
        python["version"]
            .as_str()
            .is_some_and(|s| s.contains("Python 3")),
        "{v}"
    );
    assert!(python["ping_ms"].is_u64(), "{v}");
    // CI installs Python's msgpack (`cargo xtask setup`).
    let msgpack = v["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .find(|p| p["language"] == "python" && p["package"] == "msgpack")
        .expect("python msgpack is checked");
    assert_eq!(msgpack["present"], true, "{v}");

    let r = snakepit(&["doctor"]);
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout_has(&[
        "Interpreters",
        "Bridge packages",
        "python",
        "msgpack",
        "opentelemetry",
    ]);
}

#[test]
fn doctor_says_what_to_install_when_nothing_is_there() {
    let r = snakepit_in(
        &std::env::temp_dir(),
        &["doctor"],
        &[
            ("SNAKEPIT_PYTHON", "/no/such/python3"),
            ("SNAKEPIT_NODE", "/no/such/node"),
            ("SNAKEPIT_RUBY", "/no/such/ruby"),
        ],
        "",
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("apt-get install python3"), "{r:?}");
    assert!(r.stdout.contains("SNAKEPIT_PYTHON"), "{r:?}");
}

const ESCAPING_WORKER: &str = r#"
import os, subprocess, time
import snakepit_bridge

worker = snakepit_bridge.Worker()

@worker.command("escape")
def escape(args):
    # A child in a session of its own: out of reach of the worker's process
    # group, so only the sweep can find it once the host is gone.
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    with open(args["marker"] + ".tmp", "w") as f:
        f.write(str(child.pid))
    os.rename(args["marker"] + ".tmp", args["marker"])
    time.sleep(300)

worker.run()
"#;

fn alive(pid: u32) -> bool {
    // A zombie has ended; only its parent's wait is missing.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[test]
fn sweep_kills_what_a_crashed_run_left_and_says_so() {
    let dir = Dir::new("sweep");
    let state = dir.0.join("state");
    let state = state.to_str().expect("utf-8 path");
    let env = [("SNAKEPIT_STATE_DIR", state)];
    let script = dir.file("worker.py", ESCAPING_WORKER);
    let marker = dir.0.join("child.pid");
    let args = format!(r#"{{"marker": "{}"}}"#, marker.display());

    let r = snakepit_in(&dir.0, &["sweep"], &env, "");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("nothing left behind"), "{r:?}");

    // A host that dies without shutting its pool down.
    #[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
    let mut host = Command::new(BIN)
        .args(["exec", "--script", &script, "escape", &args])
        .env("SNAKEPIT_STATE_DIR", state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("snakepit runs");
    let mut child_pid = None;
    for _ in 0..1500 {
        if let Ok(text) = std::fs::read_to_string(&marker) {
            child_pid = text.trim().parse::<u32>().ok();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    host.kill().expect("SIGKILL the host");
    host.wait().expect("reap the host");
    let pid = child_pid.expect("the worker started its escaping child");
    assert!(alive(pid), "the escaped child outlives its host");

    let r = snakepit_in(&dir.0, &["sweep", "--dry-run", "--json"], &env, "");
    assert_eq!(r.code, 0, "{r:?}");
    let listed = |v: &Value| {
        v["stale_runs"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|run| run["killed"].as_array().into_iter().flatten())
            .any(|p| p["pid"] == pid)
    };
    assert!(listed(&r.json()), "{r:?}");
    assert!(alive(pid), "a dry run kills nothing");

    let r = snakepit_in(&dir.0, &["sweep"], &env, "");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!("pid {pid}")) && r.stdout.contains("killed"),
        "{r:?}"
    );
    let mut gone = false;
    for _ in 0..500 {
        gone = !alive(pid);
        if gone {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    if !gone {
        #[allow(clippy::disallowed_methods)] // cleaning up after a failed test
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    assert!(gone, "the sweep killed pid {pid}");

    // The record is gone: a second sweep finds nothing.
    let r = snakepit_in(&dir.0, &["sweep"], &env, "");
    assert!(r.stdout.contains("nothing left behind"), "{r:?}");
}

/// Where a run's stdout or stderr goes.
#[derive(Clone, Copy)]
enum Sink {
    /// A pipe the test reads.
    Piped,
    /// `/dev/full`: every write fails with ENOSPC.
    Full,
    /// A pipe whose read end is closed before the tool starts: EPIPE, as
    /// behind `| head -c1` once `head` has exited.
    Closed,
}

impl Sink {
    #[allow(clippy::disallowed_methods)] // `true` only holds the pipe's read end
    fn stdio(self) -> Stdio {
        match self {
            Sink::Piped => Stdio::piped(),
            Sink::Closed => {
                let mut reader = Command::new("true")
                    .stdin(Stdio::piped())
                    .spawn()
                    .expect("true runs");
                let write_end = reader.stdin.take().expect("a pipe");
                reader.wait().expect("true ends");
                write_end.into()
            }
            Sink::Full => std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .expect("/dev/full opens")
                .into(),
        }
    }
}

/// Runs `snakepit ARGS` with its stdout and stderr sent where told.
#[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
fn snakepit_to(args: &[&str], stdout: Sink, stderr: Sink) -> Run {
    let child = Command::new(BIN)
        .args(args)
        .current_dir(std::env::temp_dir())
        .env_remove("SNAKEPIT_CONFIG")
        .stdin(Stdio::null())
        .stdout(stdout.stdio())
        .stderr(stderr.stdio())
        .spawn()
        .expect("the snakepit binary runs");
    Run::from(child.wait_with_output().expect("snakepit ends"))
}

/// The exit code documented for output that could not be written.
const OUTPUT_FAILED: i32 = 6;

#[test]
fn a_result_that_cannot_be_written_is_a_failure_with_a_message() {
    let r = snakepit_to(&["exec", "ping"], Sink::Full, Sink::Piped);
    assert_eq!(r.code, OUTPUT_FAILED, "{r:?}");
    assert!(
        r.stderr.contains("stdout") && r.stderr.contains("No space left"),
        "{r:?}"
    );
    // Help and version are output too.
    for args in [&["--help"][..], &["--version"], &["exec", "--help"]] {
        let r = snakepit_to(args, Sink::Full, Sink::Piped);
        assert_eq!(r.code, OUTPUT_FAILED, "{args:?}: {r:?}");
        assert!(r.stderr.contains("stdout"), "{args:?}: {r:?}");
    }
}

#[test]
fn an_unwritable_stderr_never_panics_and_keeps_the_exit_code() {
    // Log lines (-v), a failure's message, and a usage error, all to /dev/full.
    let r = snakepit_to(&["-v", "exec", "ping"], Sink::Piped, Sink::Full);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["status"], "ok", "{r:?}");
    let r = snakepit_to(&["exec", "no_such_command"], Sink::Piped, Sink::Full);
    assert_eq!(r.code, 1, "{r:?}");
    let r = snakepit_to(&["exec", "compute", "{bad"], Sink::Piped, Sink::Full);
    assert_eq!(r.code, 2, "{r:?}");
    let r = snakepit_to(&["exec", "--no-such-flag"], Sink::Piped, Sink::Full);
    assert_eq!(r.code, 2, "{r:?}");
    // Nothing can be written at all: still a code, not a panic (101).
    let r = snakepit_to(&["-v", "exec", "ping"], Sink::Full, Sink::Full);
    assert_eq!(r.code, OUTPUT_FAILED, "{r:?}");
}

#[test]
fn a_closed_stdout_ends_quietly_with_a_code() {
    for args in [&["exec", "ping"][..], &["sweep", "--dry-run"], &["--help"]] {
        let r = snakepit_to(args, Sink::Closed, Sink::Piped);
        assert_eq!(r.code, OUTPUT_FAILED, "{args:?}: {r:?}");
        assert!(
            !r.stderr.contains("panicked") && !r.stderr.contains("error"),
            "{args:?}: {r:?}"
        );
    }
}

/// A worker that answers a pool and misbehaves in the bench's raw loop as
/// `SNAKEPIT_TEST_RAW` says.
const BENCH_RAW_WORKER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/workers/bench_raw_worker.py"
);

/// The smallest bench that reaches the raw loop.
const SMALL_BENCH: &[&str] = &[
    "bench",
    "--script",
    BENCH_RAW_WORKER,
    "--workers",
    "1",
    "--requests",
    "8",
    "--concurrency",
    "1",
    "--init-ms",
    "1",
];

/// Waits for `ready` to hold, polling, for at most `limit` (a guard against
/// hanging the suite, not a measurement).
fn wait_until(limit: std::time::Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if ready() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    ready()
}

#[test]
fn a_bench_killed_during_its_raw_loop_leaves_no_worker_behind() {
    let dir = Dir::new("bench-kill");
    let pids = dir.0.join("raw.pids");
    #[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
    let mut bench = Command::new(BIN)
        .args(SMALL_BENCH)
        .current_dir(&dir.0)
        .env_remove("SNAKEPIT_CONFIG")
        .env("SNAKEPIT_TEST_RAW", "hang")
        .env("SNAKEPIT_TEST_PIDS", &pids)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("snakepit runs");
    let mut learned = None;
    let started = wait_until(std::time::Duration::from_secs(60), || {
        learned = std::fs::read_to_string(&pids).ok();
        learned.is_some() || bench.try_wait().ok().flatten().is_some()
    });
    let learned = learned.unwrap_or_default();
    let raw: Vec<u32> = learned
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    // What the raw worker was started with, read while it runs.
    let environ = raw
        .first()
        .and_then(|pid| std::fs::read(format!("/proc/{pid}/environ")).ok())
        .unwrap_or_default();
    bench.kill().expect("SIGKILL the bench");
    bench.wait().expect("reap the bench");
    assert!(
        started && raw.len() == 2,
        "the raw worker and its child started: {learned:?}"
    );

    let gone = wait_until(std::time::Duration::from_secs(10), || {
        raw.iter().all(|&pid| !alive(pid))
    });
    let left: Vec<u32> = raw.iter().copied().filter(|&pid| alive(pid)).collect();
    for pid in &left {
        #[allow(clippy::disallowed_methods)] // cleaning up after a failed test
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    assert!(gone, "left running after the bench died: {left:?}");
    let has = |var: &str| {
        environ
            .split(|&b| b == 0)
            .any(|entry| entry.starts_with(var.as_bytes()) && entry.len() > var.len())
    };
    assert!(has("SNAKEPIT_RUN_ID="), "the raw worker carries a run id");
}

#[test]
fn a_raw_worker_announcing_a_4_gib_frame_fails_the_bench_without_allocating_it() {
    // With the address space capped below 4 GiB, allocating the announced
    // frame would abort the process instead of failing it with a message.
    #[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
    let mut bench = Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 3145728 && exec \"$0\" \"$@\"")
        .arg(BIN)
        .args(SMALL_BENCH)
        .current_dir(std::env::temp_dir())
        .env_remove("SNAKEPIT_CONFIG")
        .env("SNAKEPIT_TEST_RAW", "huge_frame")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("snakepit runs");
    let stderr = bench.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut { stderr }, &mut text);
        text
    });
    let ended = wait_until(std::time::Duration::from_secs(120), || {
        bench.try_wait().ok().flatten().is_some()
    });
    if !ended {
        let _ = bench.kill();
    }
    let status = bench.wait().expect("reap the bench");
    let stderr = reader.join().expect("stderr read");
    assert!(ended, "the bench hung: {stderr}");
    assert_eq!(status.code(), Some(5), "{status:?}: {stderr}");
    assert!(
        stderr.contains("raw loop") && stderr.contains("4294967295 bytes exceeds the maximum"),
        "{stderr}"
    );
}

/// `snakepit serve` makes this machine a host of a cluster over a real
/// nats-server; `snakepit exec --cluster` reaches its workers from another
/// process; `cluster status` lists it; SIGTERM makes it leave and exit 0.
#[test]
fn serve_and_exec_through_a_cluster() {
    let nats = snakepit_tests::NatsServer::start();
    #[allow(clippy::disallowed_methods)] // the tool under test, not a worker
    let host = Command::new(BIN)
        .args(["serve", "--nats", &nats.url, "--cluster", "clitest"])
        .args(["--pool-size", "1", "--host-id", "h1"])
        .env_remove("SNAKEPIT_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("snakepit serve runs");
    let call = [
        "exec",
        "--nats",
        &nats.url,
        "--cluster",
        "clitest",
        "echo",
        r#"{"message": "over nats"}"#,
    ];
    // The host needs a worker start-up before it serves: try until it does.
    let mut run = snakepit(&call);
    for _ in 0..150 {
        if run.code == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        run = snakepit(&call);
    }
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["echoed"]["message"], "over nats", "{run:?}");
    let status = snakepit(&[
        "cluster",
        "status",
        "--nats",
        &nats.url,
        "--cluster",
        "clitest",
        "--json",
    ]);
    assert_eq!(status.code, 0, "{status:?}");
    assert_eq!(status.json()[0]["host"], "h1", "{status:?}");
    // SAFETY: kill(2) on the child this test started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(host.id() as libc::pid_t, libc::SIGTERM);
    }
    let out = host.wait_with_output().expect("snakepit serve ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(stderr.contains("leaving the cluster"), "{stderr}");
}

/// With no NATS where `--nats` points, `exec --cluster` and `cluster status`
/// fail with exit code 1 and say where they looked, as docs/cli.md says.
#[test]
fn an_unreachable_nats_is_exit_1_naming_the_address() {
    let url = format!("nats://127.0.0.1:{}", snakepit_tests::free_port());
    for args in [
        vec!["exec", "--nats", &url, "--cluster", "nowhere", "ping"],
        vec!["cluster", "status", "--nats", &url, "--cluster", "nowhere"],
    ] {
        let run = snakepit(&args);
        assert_eq!(run.code, 1, "{run:?}");
        assert!(
            run.stderr.contains(&format!("cannot reach NATS at {url}")),
            "{run:?}"
        );
    }
}

/// Asserts that `where` ran in a worker forked from the process that ran
/// the script's module-level code, or in that very process.
#[track_caller]
fn forked(r: &Run, expected: bool) {
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    let forked = v["pid"] != v["loaded_in"] && v["ppid"] == v["loaded_in"];
    assert_eq!(forked, expected, "{v}");
}

#[test]
fn preload_comes_from_the_flag_or_the_settings_file() {
    let dir = Dir::new("preload");
    let py = dir.file("worker.py", PRELOAD_PY);
    forked(&snakepit(&["exec", "--script", &py, "where", "{}"]), false);
    forked(
        &snakepit(&["exec", "--preload", "--script", &py, "where", "{}"]),
        true,
    );
    dir.file("snakepit.toml", "script = \"worker.py\"\npreload = true\n");
    forked(
        &snakepit_in(&dir.0, &["exec", "where", "{}"], &[], ""),
        true,
    );
    // Node.js cannot fork: a usage error before anything starts.
    let r = snakepit(&["exec", "--preload", "--adapter", "node", "ping"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("cannot fork"), "{r:?}");
}

#[test]
fn bench_preload_reports_start_up_replacement_and_memory_both_ways() {
    let args = [
        "bench",
        "--preload",
        "--workers",
        "2",
        "--requests",
        "400",
        "--concurrency",
        "8",
        "--init-ms",
        "100",
        "--init-mb",
        "20",
    ];
    let r = snakepit(&[&args[..], &["--json"]].concat());
    assert_eq!(r.code, 0, "{r:?}");
    let p = &r.json()["preload"];
    for key in [
        "started_ms",
        "preloaded_ms",
        "replacement_ms",
        "preloaded_replacement_ms",
        "pss_mb",
        "preloaded_pss_mb",
        "preloaded_over_one",
    ] {
        assert!(p[key].as_f64().is_some_and(|v| v > 0.0), "{key}: {p}");
    }
    assert_eq!(p["workers"], 2);
    assert_eq!(p["hold_mb"], 20);
    // Without preloading each worker holds its own 20 MiB.
    assert!(p["pss_mb"].as_f64().unwrap() > 2.0 * 20.0, "{p}");
    // What the README's table shows, measured in this one run: a fork
    // replaces a worker without its 100 ms init, and the workers share
    // the template's pages (a ratio of one run, not a timing).
    let f = |key: &str| p[key].as_f64().unwrap();
    assert!(f("preloaded_replacement_ms") < f("replacement_ms"), "{p}");
    assert!(f("preloaded_pss_mb") < f("pss_mb"), "{p}");
    // The human table names the rows.
    let r = snakepit(&args);
    assert_eq!(r.code, 0, "{r:?}");
    r.stdout_has(&[
        "preload, 2 x 100 ms init",
        "replacement after SIGKILL",
        "PSS of 2 workers",
    ]);
}

/// A payload the codec cannot carry says whether the call ran: arguments
/// over `max_frame_size` were never sent (docs/cli.md's hint says so), while
/// a result the host cannot decode (bytes, with MessagePack) came from a
/// call that ran, and the hint must not say otherwise.
#[test]
fn a_codec_error_says_whether_the_call_ran() {
    let dir = Dir::new("codec-hint");
    dir.file(
        "worker.py",
        "import snakepit_bridge\nworker = snakepit_bridge.Worker()\n\n@worker.command\ndef raw(args):\n    return b\"\\x00\\x01\"\n\n@worker.command\ndef echo(args):\n    return args\n\nworker.run()\n",
    );
    let ran = snakepit_in(
        &dir.0,
        &["exec", "--codec", "msgpack", "--script", "worker.py", "raw"],
        &[],
        "",
    );
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("hint: the call ran"), "{ran:?}");
    assert!(!ran.stderr.contains("not sent"), "{ran:?}");
    dir.file("snakepit.toml", "[pool]\nmax_frame_size = 1024\n");
    let big = format!(r#"{{"data": "{}"}}"#, "x".repeat(4096));
    let unsent = snakepit_in(
        &dir.0,
        &["exec", "--script", "worker.py", "echo", &big],
        &[],
        "",
    );
    assert_eq!(unsent.code, 1, "{unsent:?}");
    assert!(
        unsent.stderr.contains("hint: the arguments were not sent"),
        "{unsent:?}"
    );
}

/// ARCHITECTURE.md: the binary keeps the worker's key order in the results
/// it prints (serde_json's `preserve_order`), in both codecs; and docs/cli.md:
/// `exec --timeout` defaults to the adapter's 30 s, which the worker sees as
/// the call's time left.
#[test]
fn exec_keeps_the_workers_key_order_and_gives_the_call_30_seconds() {
    let dir = Dir::new("order");
    let py = dir.file(
        "worker.py",
        r#"
import snakepit_bridge

worker = snakepit_bridge.Worker()

@worker.command("ordered")
def ordered(args, ctx):
    return {"zebra": 1, "apple": {"z": 2, "a": 3}, "mango": [3, 1], "deadline": ctx.timeout_ms}

worker.run()
"#,
    );
    for codec in ["json", "msgpack"] {
        let r = snakepit(&["exec", "--script", &py, "--codec", codec, "ordered"]);
        assert_eq!(r.code, 0, "{codec}: {r:?}");
        let out = r.stdout.trim();
        let (head, tail) = out
            .split_once(r#","deadline":"#)
            .unwrap_or_else(|| panic!("{codec}: {out}"));
        assert_eq!(
            head, r#"{"zebra":1,"apple":{"z":2,"a":3},"mango":[3,1]"#,
            "{codec}: the worker's key order"
        );
        let deadline: u64 = tail.trim_end_matches('}').parse().expect("timeout_ms");
        assert!(
            (25_000..=30_000).contains(&deadline),
            "{codec}: a 30 s deadline by default, {deadline} ms left"
        );
    }
}
