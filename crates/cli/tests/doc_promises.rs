//! What README.md and docs/cli.md promise of the `snakepit` command that the
//! other test files do not show: the README's quick-start workers as
//! printed, the generic workers' commands, an error's lines, usage errors,
//! `snakepit.toml` and its precedence against flags and the environment, the
//! interpreter `doctor`, `exec` and `bench` pick, and script languages. Each
//! runs the real binary against real workers.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

/// A Python worker that notes each process that imports it in `starts.log`
/// beside the script.
const COUNTING_WORKER: &str = r#"
import os
import snakepit_bridge

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "starts.log"), "a") as f:
    f.write("%d\n" % os.getpid())

worker = snakepit_bridge.Worker()

@worker.command("where")
def where(args):
    return {"script": os.path.abspath(__file__)}

worker.run()
"#;

/// Runs `snakepit ARGS` in `dir` with `set` added to and `remove` taken out
/// of the environment (beside what `snakepit_in` always takes out).
#[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
fn run_env(dir: &Path, args: &[&str], set: &[(&str, &str)], remove: &[&str]) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("SNAKEPIT_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null());
    for k in remove {
        cmd.env_remove(k);
    }
    for (k, v) in set {
        cmd.env(k, v);
    }
    Run::from(cmd.output().expect("the snakepit binary runs"))
}

/// The lines of `starts.log` in `dir`, then removes it.
fn starts(dir: &Dir) -> usize {
    let path = dir.0.join("starts.log");
    let n = std::fs::read_to_string(&path)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    let _ = std::fs::remove_file(&path);
    n
}

/// An executable shell script at `path` that notes its run in `log` (when
/// given) and then runs `program` with its arguments.
fn wrapper(path: &Path, program: &str, log: Option<&Path>) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let note = log.map_or(String::new(), |l| {
        format!("echo \"$$\" >> '{}'\n", l.display())
    });
    std::fs::write(path, format!("#!/bin/sh\n{note}exec '{program}' \"$@\"\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The code block of README.md in `lang` that contains `marker`.
fn readme_block(lang: &str, marker: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md");
    let fence = format!("```{lang}\n");
    readme
        .split(fence.as_str())
        .skip(1)
        .filter_map(|rest| rest.split_once("\n```").map(|(block, _)| block))
        .find(|block| block.contains(marker))
        .unwrap_or_else(|| panic!("README.md has no {lang} block with {marker}"))
        .to_owned()
        + "\n"
}

/// README, quick start: the Python, Node.js and Ruby `greet` workers as
/// printed there, run with `snakepit exec --script FILE greet '{"name":
/// "Ada"}'` (the README's own command line), answer the greeting, "world"
/// without a name; Python's `print` "goes to stderr, never into the
/// protocol stream" (nor into the result on stdout).
#[test]
fn the_readmes_quick_start_workers_run_as_printed() {
    let dir = Dir::new("readme-workers");
    let scripts = [
        dir.file(
            "greet.py",
            &readme_block("python", "snakepit_bridge.Worker()"),
        ),
        dir.file("greet.js", &readme_block("js", "// greet.js")),
        dir.file("greet.rb", &readme_block("ruby", "# greet.rb")),
    ];
    for script in &scripts {
        let r = dir.run(&["exec", "--script", script, "greet", r#"{"name": "Ada"}"#]);
        assert_eq!(r.code, 0, "{script}: {r:?}");
        assert_eq!(
            r.stdout, "{\"greeting\":\"Hello, Ada!\"}\n",
            "{script}: {r:?}"
        );
        let r = dir.run(&["exec", "--script", script, "greet"]);
        assert_eq!(r.code, 0, "{script}: {r:?}");
        assert_eq!(r.json(), json!({"greeting": "Hello, world!"}), "{script}");
    }
    let r = dir.run(&["-v", "exec", "--script", &scripts[0], "greet"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .contains("this goes to stderr, never into the protocol stream"),
        "the print reaches stderr: {r:?}"
    );
    assert!(!r.stdout.contains("this goes"), "{r:?}");
}

/// cli.md, `exec`: the generic workers run "`compute` (`add`, `subtract`,
/// `multiply`, `divide`; Node.js and Ruby add `power` and `sqrt`)"; Python
/// refuses the last two as a handler's error (exit 1).
#[test]
fn the_generic_workers_compute_what_cli_md_lists() {
    let dir = Dir::new("compute");
    let ops = [
        (json!({"operation": "add", "a": 5, "b": 3}), 8.0),
        (json!({"operation": "subtract", "a": 5, "b": 3}), 2.0),
        (json!({"operation": "multiply", "a": 5, "b": 3}), 15.0),
        (json!({"operation": "divide", "a": 6, "b": 3}), 2.0),
        (json!({"operation": "power", "a": 2, "b": 10}), 1024.0),
        (json!({"operation": "sqrt", "a": 16}), 4.0),
    ];
    for adapter in ["python", "node", "ruby"] {
        for (i, (args, expected)) in ops.iter().enumerate() {
            let r = dir.run(&["exec", "--adapter", adapter, "compute", &args.to_string()]);
            if adapter == "python" && i >= 4 {
                assert_eq!(r.code, 1, "{adapter} {args}: {r:?}");
                assert!(r.stderr.contains("Unsupported operation"), "{r:?}");
                continue;
            }
            assert_eq!(r.code, 0, "{adapter} {args}: {r:?}");
            assert_eq!(
                r.json()["result"].as_f64(),
                Some(*expected),
                "{adapter} {args}: {r:?}"
            );
        }
    }
}

/// README and cli.md: `snakepit exec --adapter node random '{"type":
/// "uniform", "min": 0, "max": 100}'` answers a uniform value in that range
/// with the parameters it was given.
#[test]
fn node_random_uniform_answers_a_value_in_its_range() {
    let dir = Dir::new("random");
    for (min, max) in [(0, 100), (40, 41)] {
        let args = json!({"type": "uniform", "min": min, "max": max});
        let r = dir.run(&["exec", "--adapter", "node", "random", &args.to_string()]);
        assert_eq!(r.code, 0, "{r:?}");
        let v = r.json();
        assert_eq!(v["status"], "ok", "{v}");
        assert_eq!(v["type"], "uniform", "{v}");
        assert_eq!(v["parameters"], args, "{v}");
        let value = v["value"].as_f64().expect("a number");
        assert!(
            (min as f64..=max as f64).contains(&value),
            "{value} out of [{min}, {max}]"
        );
    }
}

/// cli.md, `exec`'s example and "Exit codes": a handler's error is exit 1,
/// nothing on stdout, and on stderr `error: `compute` failed in the worker:
/// ValueError: Division by zero`, then the traceback indented, then the
/// hint line, in that order.
#[test]
fn a_handlers_error_prints_the_error_its_traceback_and_the_hint_in_order() {
    let dir = Dir::new("remote-error");
    let r = dir.run(&[
        "exec",
        "compute",
        r#"{"operation": "divide", "a": 1, "b": 0}"#,
    ]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some("error: `compute` failed in the worker: ValueError: Division by zero"),
        "{r:?}"
    );
    assert_eq!(
        lines.last().copied(),
        Some("hint: the worker's handler raised this; fix the arguments or the handler"),
        "{r:?}"
    );
    assert_eq!(
        lines.get(1).map(|l| l.trim_start()),
        Some("Traceback (most recent call last):"),
        "{r:?}"
    );
    assert!(
        lines[1..lines.len() - 1]
            .iter()
            .all(|l| l.starts_with("  ")),
        "the traceback is indented: {r:?}"
    );
}

/// cli.md, exit codes: 2 for "usage: a bad flag, `ARGS_JSON` that is not a
/// JSON object"; the same for an unknown command, a missing COMMAND, and
/// bad JSON on stdin (`-`). Nothing runs, nothing goes to stdout.
#[test]
fn bad_flags_unknown_subcommands_and_a_missing_command_are_usage_errors() {
    let dir = Dir::new("usage");
    for args in [
        &["exec", "--no-such-flag", "ping"][..],
        &["frobnicate"],
        &["exec"],
        &["exec", "--pool-size", "many", "ping"],
        &["exec", "--codec"],
        &["bench", "--workers", "-1"],
        &["sweep", "--no-such-flag"],
        &["doctor", "--no-such-flag"],
    ] {
        let r = dir.run(args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(r.stdout.is_empty(), "{args:?}: {r:?}");
        assert!(r.stderr.starts_with("error: "), "{args:?}: {r:?}");
    }
    let r = snakepit_in(&dir.0, &["exec", "echo", "-"], &[], "{not json");
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("ARGS_JSON"), "{r:?}");
}

/// cli.md, `snakepit.toml`: `[pool]` holds the pool's fields, and
/// "`--pool-size` (exec) ... override[s] `pool.pool_size`": the file's
/// `pool_size = 2` starts two workers for one `exec`, the flag one.
#[test]
fn exec_takes_the_files_pool_size_and_the_flag_overrides_it() {
    let dir = Dir::new("toml-pool-size");
    dir.file("worker.py", COUNTING_WORKER);
    dir.file(
        "snakepit.toml",
        "script = \"worker.py\"\n\n[pool]\npool_size = 2\n",
    );
    let r = dir.run(&["exec", "where"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(starts(&dir), 2, "the file's pool_size: {r:?}");
    let r = dir.run(&["exec", "--pool-size", "1", "where"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(starts(&dir), 1, "the flag wins: {r:?}");
}

/// cli.md: "`--pipeline-depth` (both) overrides `pool.pipeline_depth`", and
/// for `exec` "`-v` shows it".
#[test]
fn exec_takes_the_files_pipeline_depth_and_the_flag_overrides_it() {
    let dir = Dir::new("toml-depth");
    dir.file("snakepit.toml", "[pool]\npipeline_depth = 5\n");
    let starting = |r: &Run| {
        r.stderr
            .lines()
            .find(|l| l.starts_with("starting "))
            .unwrap_or_else(|| panic!("no `starting` line: {r:?}"))
            .to_owned()
    };
    let r = dir.run(&["-v", "exec", "ping"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(starting(&r).contains("pipeline depth 5"), "{r:?}");
    let r = dir.run(&["-v", "exec", "--pipeline-depth", "0", "ping"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(starting(&r).contains("pipeline depth 0"), "{r:?}");
}

/// cli.md, `snakepit.toml`: `codec = "msgpack"` sets the codec and the
/// `--codec` flag overrides it. The Ruby generic worker reports the codec it
/// really speaks in `info`.
#[test]
fn the_files_codec_applies_and_the_codec_flag_overrides_it() {
    let dir = Dir::new("toml-codec");
    dir.file("snakepit.toml", "adapter = \"ruby\"\ncodec = \"msgpack\"\n");
    let r = dir.run(&["exec", "info"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["system_info"]["codec"], "msgpack", "{r:?}");
    let r = dir.run(&["exec", "--codec", "json", "info"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["system_info"]["codec"], "json", "{r:?}");
    // A flag naming the worker replaces the file's adapter and script, not
    // its codec: the flag's Ruby worker still speaks the file's MessagePack.
    let r = dir.run(&["exec", "--adapter", "ruby", "info"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["system_info"]["codec"], "msgpack", "{r:?}");
}

/// cli.md, global flags: "`-v`: on stderr, what the command starts ... and
/// the settings file it read"; without `-v` no such note.
#[test]
fn verbose_names_the_settings_file_it_read() {
    let dir = Dir::new("toml-verbose");
    dir.file("snakepit.toml", "[pool]\nqueue_timeout_ms = 250\n");
    let r = dir.run(&["-v", "exec", "ping"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .lines()
            .any(|l| l.contains("settings") && l.contains("snakepit.toml")),
        "{r:?}"
    );
    let other = dir.file("other.toml", "codec = \"json\"\n");
    let r = dir.run(&["-v", "--config", &other, "exec", "ping"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr
            .lines()
            .any(|l| l.contains("settings") && l.contains("other.toml")),
        "{r:?}"
    );
    let r = dir.run(&["exec", "ping"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(!r.stderr.contains("snakepit.toml"), "{r:?}");
}

/// cli.md, `snakepit.toml`: `script = "workers/model.py"` is "relative to
/// this file", not to the directory the command runs in.
#[test]
fn a_files_script_is_relative_to_the_file_not_the_working_directory() {
    let project = Dir::new("toml-relative");
    std::fs::create_dir_all(project.0.join("workers")).unwrap();
    project.file("workers/model.py", COUNTING_WORKER);
    let config = project.file("snakepit.toml", "script = \"workers/model.py\"\n");
    let elsewhere = Dir::new("toml-relative-cwd");
    let r = elsewhere.run(&["--config", &config, "exec", "where"]);
    assert_eq!(r.code, 0, "{r:?}");
    let expected = std::fs::canonicalize(project.0.join("workers/model.py")).unwrap();
    assert_eq!(r.json()["script"], expected.display().to_string(), "{r:?}");
}

/// cli.md: settings come from `./snakepit.toml`, "or the file named by
/// `--config FILE` or `SNAKEPIT_CONFIG`": a named file is read instead of
/// the local one, and the flag names it over the variable.
#[test]
fn config_flag_wins_over_snakepit_config_which_wins_over_the_local_file() {
    let dir = Dir::new("toml-precedence");
    dir.file("snakepit.toml", "adapter = \"ruby\"\n");
    let from_env = dir.file("env.toml", "adapter = \"node\"\n");
    let from_flag = dir.file("flag.toml", "adapter = \"python\"\n");
    let lang = |r: &Run| {
        assert_eq!(r.code, 0, "{r:?}");
        let v = r.json();
        ["ruby_version", "node_version", "python_version"]
            .into_iter()
            .find(|k| v[k].is_string())
            .unwrap_or_else(|| panic!("which language? {v}"))
    };
    assert_eq!(lang(&dir.run(&["exec", "ping"])), "ruby_version");
    let env = [("SNAKEPIT_CONFIG", from_env.as_str())];
    assert_eq!(
        lang(&snakepit_in(&dir.0, &["exec", "ping"], &env, "")),
        "node_version"
    );
    assert_eq!(
        lang(&snakepit_in(
            &dir.0,
            &["--config", &from_flag, "exec", "ping"],
            &env,
            ""
        )),
        "python_version"
    );
}

/// cli.md, exit codes: 2 for "a bad `snakepit.toml`": a value of the wrong
/// type, in the top level or under `[pool]`, is a usage error that names
/// the file, and nothing starts.
#[test]
fn a_settings_file_with_a_value_of_the_wrong_type_is_a_usage_error() {
    let dir = Dir::new("toml-types");
    for (text, says) in [
        ("[pool]\npool_size = \"four\"\n", "four"),
        ("timeout_ms = -5\n", "timeout_ms"),
        ("preload = \"yes\"\n", "preload"),
        ("codec = 7\n", "codec"),
    ] {
        dir.file("snakepit.toml", text);
        let r = dir.run(&["exec", "ping"]);
        assert_eq!(r.code, 2, "{text}: {r:?}");
        assert!(r.stdout.is_empty(), "{text}: {r:?}");
        assert!(
            r.stderr.contains("snakepit.toml") && r.stderr.contains(says),
            "{text}: {r:?}"
        );
    }
}

/// cli.md: `--preload` "With Node.js ... is a usage error (exit code 2)";
/// "`preload = true` in `snakepit.toml` does the same"; "`serve` and
/// `bench` take it too".
#[test]
fn preloading_node_is_a_usage_error_from_the_file_and_in_bench() {
    let dir = Dir::new("preload-node");
    dir.file("snakepit.toml", "adapter = \"node\"\npreload = true\n");
    let r = dir.run(&["exec", "ping"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("cannot fork"), "{r:?}");
    let other = Dir::new("preload-node-bench");
    let r = other.run(&[
        "bench",
        "--preload",
        "--adapter",
        "node",
        "--workers",
        "1",
        "--concurrency",
        "1",
        "--requests",
        "100",
    ]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("cannot fork"), "{r:?}");
    assert!(r.stdout.is_empty(), "nothing measured: {r:?}");
}

/// cli.md, `exec`: a script's "language comes from `--adapter` or else from
/// the extension": with `--adapter` a script without a known extension runs.
#[test]
fn the_adapter_flag_names_the_language_of_a_script_without_an_extension() {
    let dir = Dir::new("no-extension");
    let script = dir.file("model_worker", COUNTING_WORKER);
    let r = dir.run(&["exec", "--script", &script, "where"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--adapter"), "{r:?}");
    let r = dir.run(&["exec", "--adapter", "python", "--script", &script, "where"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(starts(&dir), 1, "{r:?}");
}

/// cli.md, `exec`: `.mjs` is a Node.js script's extension. An ES module
/// reaches the bridge through `createRequire`.
#[test]
fn an_mjs_script_runs_on_node() {
    let dir = Dir::new("mjs");
    let script = dir.file(
        "greet.mjs",
        "import { createRequire } from 'node:module';\n\
         const require = createRequire(import.meta.url);\n\
         const { Worker } = require('snakepit-bridge');\n\
         new Worker({ commands: { greet(args) { return { greeting: `Hello, ${args.name}!`, node: process.version }; } } }).run();\n",
    );
    let r = dir.run(&["exec", "--script", &script, "greet", r#"{"name": "Ada"}"#]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["greeting"], "Hello, Ada!", "{r:?}");
    assert!(r.json()["node"].is_string(), "{r:?}");
}

/// cli.md, `exec`: `.mjs` is a Node.js script's extension, so an ES module
/// worker with the ES module import of the bridge (`import { Worker } from
/// 'snakepit-bridge'`) should run as the `require` form does in a `.js`.
#[test]
fn an_mjs_script_can_import_the_bridge() {
    let dir = Dir::new("mjs-import");
    let script = dir.file(
        "greet.mjs",
        "import { Worker } from 'snakepit-bridge';\n\
         new Worker({ commands: { greet(args) { return { greeting: `Hello, ${args.name}!` }; } } }).run();\n",
    );
    let r = dir.run(&["exec", "--script", &script, "greet", r#"{"name": "Ada"}"#]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["greeting"], "Hello, Ada!", "{r:?}");
}

/// The interpreter behind `python`: `snakepit_tests::python()`, as the
/// binary itself reports it.
#[allow(clippy::disallowed_methods)] // asks the interpreter where it lives
fn real_python() -> String {
    let out = Command::new(snakepit_tests::python())
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// cli.md, `doctor`: it "notes a Python that is a version-manager shim";
/// README, troubleshooting: set `SNAKEPIT_PYTHON` to the real binary. And
/// `bench`: "Python runs through its real binary (`sys.executable`), not a
/// version-manager shim, ... unless `SNAKEPIT_PYTHON` ... says otherwise".
#[test]
fn doctor_notes_a_shim_and_bench_runs_the_real_binary_behind_it() {
    let dir = Dir::new("shim");
    let real = real_python();
    let shim = dir.0.join(".pyenv/shims/python3");
    wrapper(&shim, &real, None);
    let path = format!(
        "{}:{}",
        shim.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let unset = ["SNAKEPIT_PYTHON", "VIRTUAL_ENV"];
    let r = run_env(&dir.0, &["doctor", "--json"], &[("PATH", &path)], &unset);
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    let python = &v["interpreters"][0];
    assert_eq!(python["language"], "python", "{v}");
    assert_eq!(python["path"], shim.display().to_string(), "{v}");
    let note = python["note"]
        .as_str()
        .unwrap_or_else(|| panic!("no note: {v}"));
    assert!(
        note.contains("shim") && note.contains(&format!("SNAKEPIT_PYTHON={real}")),
        "{note}"
    );
    let r = run_env(&dir.0, &["doctor"], &[("PATH", &path)], &unset);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.stdout.contains("version-manager shim"), "{r:?}");

    let bench = [
        "bench",
        "--workers",
        "1",
        "--concurrency",
        "2",
        "--requests",
        "100",
        "--init-ms",
        "1",
        "--json",
    ];
    let r = run_env(&dir.0, &bench, &[("PATH", &path)], &unset);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["interpreter"], real, "the real binary: {r:?}");
    let shim_str = shim.display().to_string();
    let r = run_env(
        &dir.0,
        &bench,
        &[("PATH", &path), ("SNAKEPIT_PYTHON", &shim_str)],
        &["VIRTUAL_ENV"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.json()["interpreter"],
        shim_str,
        "as SNAKEPIT_PYTHON says: {r:?}"
    );
}

/// cli.md, `doctor`: "the interpreter the adapters would run (the
/// `SNAKEPIT_*` variable, the virtualenv, or `PATH`)": with `VIRTUAL_ENV`
/// set, doctor reports and `exec` runs the virtualenv's `bin/python`, and
/// `SNAKEPIT_PYTHON` wins over it.
#[test]
fn doctor_and_exec_take_the_virtualenvs_python_unless_snakepit_python_is_set() {
    let dir = Dir::new("venv");
    let real = real_python();
    let venv = dir.0.join("venv");
    let venv_python = venv.join("bin/python");
    let venv_log = dir.0.join("venv.log");
    wrapper(&venv_python, &real, Some(&venv_log));
    let chosen = dir.0.join("chosen/python3");
    let chosen_log = dir.0.join("chosen.log");
    wrapper(&chosen, &real, Some(&chosen_log));
    let venv_str = venv.display().to_string();

    let r = run_env(
        &dir.0,
        &["doctor", "--json"],
        &[("VIRTUAL_ENV", &venv_str)],
        &["SNAKEPIT_PYTHON"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(
        v["interpreters"][0]["program"],
        venv_python.display().to_string(),
        "{v}"
    );
    assert!(v["interpreters"][0]["ping_ms"].is_u64(), "{v}");

    let _ = std::fs::remove_file(&venv_log);
    let r = run_env(
        &dir.0,
        &["exec", "ping"],
        &[("VIRTUAL_ENV", &venv_str)],
        &["SNAKEPIT_PYTHON"],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(venv_log.exists(), "the virtualenv's python ran the worker");

    let _ = std::fs::remove_file(&venv_log);
    let chosen_str = chosen.display().to_string();
    let r = run_env(
        &dir.0,
        &["exec", "ping"],
        &[("VIRTUAL_ENV", &venv_str), ("SNAKEPIT_PYTHON", &chosen_str)],
        &[],
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        chosen_log.exists(),
        "SNAKEPIT_PYTHON's python ran the worker"
    );
    assert!(!venv_log.exists(), "not the virtualenv's");
}

/// A Python worker whose `big` answers `n` bytes of data and notes each
/// call it runs in `calls.log` beside the script.
const BIG_WORKER: &str = r#"
import os
import snakepit_bridge

worker = snakepit_bridge.Worker()

@worker.command("big")
def big(args):
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "calls.log"), "a") as f:
        f.write("big\n")
    return {"data": "x" * args["n"]}

worker.run()
"#;

/// README, configuration: `max_frame_size` (read from `[pool]` of
/// `snakepit.toml`): "a larger request is refused with `Codec` and never
/// sent" (exit 1, "another failure"); "a bundled bridge answers a larger
/// result with a `Remote` error of type `ResultTooLarge` and stays" (exit
/// 1, with a hint that names the setting: the handler raised nothing);
/// "a larger frame from a worker is a protocol error" (exit 5), shown
/// with a worker that tells its bridge a larger limit than the pool's;
/// troubleshooting: the message says "frame of N bytes exceeds the
/// maximum". The hint names the setting, not stray output.
#[test]
fn the_files_max_frame_size_refuses_a_larger_request_unsent_and_a_larger_reply_is_exit_5() {
    let dir = Dir::new("frame-size");
    let script = dir.file("big.py", BIG_WORKER);
    dir.file("snakepit.toml", "[pool]\nmax_frame_size = 2000\n");
    let calls = dir.0.join("calls.log");
    let args = json!({"n": 10, "pad": "y".repeat(3000)}).to_string();
    let r = dir.run(&["exec", "--script", &script, "big", &args]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(
        r.stderr.starts_with("error: ") && r.stderr.contains("exceeds the maximum of 2000"),
        "{r:?}"
    );
    assert!(!calls.exists(), "the request was never sent");

    let r = dir.run(&["exec", "--script", &script, "big", r#"{"n": 10}"#]);
    assert_eq!(r.code, 0, "a small call goes through: {r:?}");
    let r = dir.run(&["exec", "--script", &script, "big", r#"{"n": 5000}"#]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("ResultTooLarge"), "{r:?}");
    let hint = r.stderr.lines().last().unwrap_or_default();
    assert!(
        hint.starts_with("hint: ") && hint.contains("max_frame_size"),
        "the hint names the setting: {r:?}"
    );
    // A worker whose bridge is told a larger limit writes the frame anyway.
    let unruly = dir.file(
        "unruly.py",
        &BIG_WORKER.replace(
            "import snakepit_bridge\n",
            "os.environ[\"SNAKEPIT_MAX_FRAME_SIZE\"] = str(1 << 30)\nimport snakepit_bridge\n",
        ),
    );
    let r = dir.run(&["exec", "--script", &unruly, "big", r#"{"n": 5000}"#]);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(
        r.stderr.contains("broke the protocol") && r.stderr.contains("exceeds the maximum"),
        "{r:?}"
    );
    let hint = r.stderr.lines().last().unwrap_or_default();
    assert!(
        hint.starts_with("hint: ") && hint.contains("max_frame_size") && !hint.contains("stdout"),
        "an oversized reply is not blamed on stray output: {r:?}"
    );
}

/// cli.md, exit codes: "Errors go to stderr as `error: ...`, then the
/// worker's traceback or stderr tail when there is one, then a `hint:`
/// line." A request refused for its size (`Codec`) says what to do too.
#[test]
fn a_request_refused_for_its_size_ends_with_a_hint() {
    let dir = Dir::new("frame-size-hint");
    dir.file("snakepit.toml", "[pool]\nmax_frame_size = 2000\n");
    let args = json!({"pad": "y".repeat(3000)}).to_string();
    let r = dir.run(&["exec", "echo", &args]);
    assert_eq!(r.code, 1, "{r:?}");
    let last = r.stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("hint: "), "{r:?}");
}

/// cli.md, `snakepit.toml`: `bench` reads the file's worker, codec and
/// `[pool]`, and "`--workers` (bench) override[s] `pool.pool_size`"; `--json`
/// gives them as `adapter`, `codec`, `workers`, with `concurrency` 64 by
/// default and `sessions` null without `--sessions`.
#[test]
fn bench_takes_the_worker_and_pool_size_from_the_file_and_workers_overrides_it() {
    let dir = Dir::new("bench-toml");
    dir.file(
        "snakepit.toml",
        "adapter = \"ruby\"\ncodec = \"msgpack\"\n\n[pool]\npool_size = 3\n",
    );
    let bench = ["bench", "--requests", "256", "--init-ms", "1", "--json"];
    let r = dir.run(&bench);
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["adapter"], "ruby", "{v}");
    assert_eq!(v["codec"], "msgpack", "{v}");
    assert_eq!(v["workers"], 3, "{v}");
    assert_eq!(v["concurrency"], 64, "{v}");
    assert!(v["sessions"].is_null(), "{v}");
    let r = dir.run(&[&bench[..], &["--workers", "1", "--concurrency", "2"]].concat());
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["workers"], 1, "{r:?}");
}

/// A Python interpreter without its site-packages (`-S`), where `msgpack`
/// and the OpenTelemetry API are not found.
fn python_without_packages(dir: &Dir) -> String {
    let python = dir.0.join("python-without-packages");
    std::fs::write(
        &python,
        format!("#!/bin/sh\nexec '{}' -S \"$@\"\n", real_python()),
    )
    .unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    python.display().to_string()
}

/// cli.md, `doctor`: it checks "the MessagePack package (needed for
/// `--codec msgpack`)" and "ends with the commands that install what is
/// missing".
#[test]
fn doctor_ends_with_the_command_that_installs_a_missing_package() {
    let dir = Dir::new("doctor-missing");
    let python = python_without_packages(&dir);
    let r = snakepit_in(&dir.0, &["doctor"], &[("SNAKEPIT_PYTHON", &python)], "");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .lines()
            .any(|l| l.contains("missing") && l.contains("python") && l.contains("msgpack")),
        "{r:?}"
    );
    let (_, todo) = r
        .stdout
        .split_once("To install what is missing:")
        .unwrap_or_else(|| panic!("no install section: {r:?}"));
    assert!(
        todo.lines().any(|l| l.contains("pip install msgpack")),
        "{r:?}"
    );
    let r = snakepit_in(
        &dir.0,
        &["doctor", "--json"],
        &[("SNAKEPIT_PYTHON", &python)],
        "",
    );
    let v = r.json();
    let msgpack = v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["language"] == "python" && p["package"] == "msgpack")
        .cloned()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(msgpack["present"], false, "{v}");
}

/// cli.md, `doctor`: the commands at the end install what is missing for
/// the interpreter the adapters would run: with `SNAKEPIT_PYTHON` naming
/// one, its own `-m pip`, not whatever `python3` is on `PATH`.
#[test]
fn doctors_install_command_names_the_interpreter_that_lacks_the_package() {
    let dir = Dir::new("doctor-missing-which");
    let python = python_without_packages(&dir);
    let r = snakepit_in(&dir.0, &["doctor"], &[("SNAKEPIT_PYTHON", &python)], "");
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout
            .lines()
            .any(|l| l.trim() == format!("{python} -m pip install msgpack")),
        "{r:?}"
    );
}

/// cli.md, `exec`: "The result is indented on a terminal and on one line
/// otherwise". util-linux `script` gives the command a terminal of its own.
#[test]
#[allow(clippy::disallowed_methods)] // `script` runs the tool under test
fn exec_indents_the_result_on_a_terminal() {
    let line = format!("'{BIN}' exec echo '{{\"a\": 1}}'");
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .current_dir(std::env::temp_dir())
        .env_remove("SNAKEPIT_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .output()
        .expect("util-linux `script` runs");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let value: serde_json::Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"));
    assert_eq!(value["echoed"], json!({"a": 1}), "{text:?}");
    assert!(
        text.lines().count() > 3 && text.lines().any(|l| l.starts_with("  \"echoed\": {")),
        "indented: {text:?}"
    );
}

/// cli.md, traces: "While traces are exported, log lines go to stderr at
/// `WARN` (or as `RUST_LOG` says) instead of through `-v`/`-q`": with the
/// OTLP endpoint set (here where nothing listens), `-v` prints no `info:`
/// event, and `RUST_LOG=info` brings the pool's info lines back.
#[test]
#[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
fn while_traces_are_exported_logs_follow_rust_log_not_verbose() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let exec = |rust_log: Option<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["-v", "exec", "ping"])
            .current_dir(std::env::temp_dir())
            .env_remove("SNAKEPIT_CONFIG")
            .env_remove("OTEL_EXPORTER_OTLP_PROTOCOL")
            .env_remove("RUST_LOG")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .stdin(Stdio::null());
        if let Some(level) = rust_log {
            cmd.env("RUST_LOG", level);
        }
        Run::from(cmd.output().expect("snakepit runs"))
    };
    let plain = snakepit(&["-v", "exec", "ping"]);
    assert!(
        plain.stderr.lines().any(|l| l.starts_with("info: ")),
        "without an endpoint -v shows the events: {plain:?}"
    );
    let r = exec(None);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        !r.stderr
            .lines()
            .any(|l| l.starts_with("info: ") || l.contains(" INFO ")),
        "-v does not bring info lines: {r:?}"
    );
    assert!(r.stderr.contains(" WARN "), "warnings still show: {r:?}");
    let r = exec(Some("info"));
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.lines().any(|l| l.contains(" INFO ")),
        "RUST_LOG=info shows them: {r:?}"
    );
}

/// cli.md, `serve` and `exec --cluster`: "NATS unreachable is exit code 1
/// with a hint": `serve` too, not only the calls, naming the address and
/// ending with the `hint:` line.
#[test]
fn an_unreachable_nats_is_exit_1_with_a_hint_for_serve_and_exec() {
    let url = format!("nats://127.0.0.1:{}", snakepit_tests::free_port());
    let dir = Dir::new("nats-down");
    for args in [
        &[
            "serve",
            "--nats",
            &url,
            "--cluster",
            "nowhere",
            "--pool-size",
            "1",
        ][..],
        &["exec", "--nats", &url, "--cluster", "nowhere", "ping"],
    ] {
        let r = dir.run(args);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(
            r.stderr.starts_with("error: ") && r.stderr.contains(&url),
            "{args:?}: {r:?}"
        );
        let last = r.stderr.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("hint: ") && last.contains("NATS"),
            "{args:?}: {r:?}"
        );
    }
}

/// Whether `line` of a command's help is the line that lists option
/// `flag` (`      --flag <N>`, `  -v, --verbose...`), not an example.
fn option_line_of(line: &str, flag: &str) -> bool {
    let line = line.trim_start();
    let line = match line.split_once(", ") {
        Some((short, rest)) if short.len() == 2 && short.starts_with('-') => rest,
        _ => line,
    };
    line.strip_prefix(flag)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(' ') || rest.starts_with("..."))
}

/// cli.md: "`snakepit --help` and `snakepit help COMMAND` list every flag":
/// each flag of each command's synopsis in docs/cli.md (the blocks that
/// start with `snakepit COMMAND`) is in `snakepit help COMMAND`.
#[test]
fn every_flag_of_cli_mds_synopses_is_in_the_commands_help() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/cli.md"))
        .expect("docs/cli.md");
    // The fenced blocks without a language: the synopses.
    let mut blocks: Vec<String> = Vec::new();
    let mut open: Option<(bool, String)> = None;
    for line in doc.lines() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => open = Some((info.is_empty(), String::new())),
            (Some(_), Some(_)) => {
                if let Some((true, text)) = open.take() {
                    blocks.push(text);
                }
            }
            (Some((_, text)), None) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, None) => {}
        }
    }
    let mut checked = Vec::new();
    for block in &blocks {
        // Each statement of a synopsis starts with `snakepit COMMAND`.
        let mut statements: Vec<String> = Vec::new();
        for line in block.lines() {
            if line.starts_with("snakepit ") {
                statements.push(line.to_owned());
            } else if let Some(last) = statements.last_mut() {
                last.push(' ');
                last.push_str(line);
            }
        }
        for statement in statements {
            // `snakepit COMMAND` or `snakepit COMMAND SUBCOMMAND` (a word
            // that is not a flag nor an upper-case placeholder).
            let words: Vec<&str> = statement
                .split_whitespace()
                .skip(1)
                .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase()))
                .take(2)
                .collect();
            let command = words.join(" ");
            let mut args = vec!["help"];
            args.extend(&words);
            let help = snakepit(&args);
            assert_eq!(help.code, 0, "{command}: {help:?}");
            let flags = statement
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .filter(|w| w.starts_with("--") && w.len() > 2);
            for flag in flags {
                assert!(
                    help.stdout.lines().any(|l| option_line_of(l, flag)),
                    "`snakepit help {command}` lists no option {flag}: {help:?}"
                );
                checked.push(format!("{command} {flag}"));
            }
        }
    }
    for expected in [
        "exec --preload",
        "bench --rounds",
        "serve --prefetch",
        "sweep --state-dir",
    ] {
        assert!(
            checked.iter().any(|c| c == expected),
            "the synopses were read: {checked:?}"
        );
    }
}

/// What `snakepit ARGS` writes to a terminal of its own (util-linux
/// `script`), its stdout sent to /dev/null: what it wrote to stderr.
#[allow(clippy::disallowed_methods)] // `script` runs the tool under test
fn stderr_on_a_terminal(args: &str) -> String {
    let out = Command::new("script")
        .args(["-qec", &format!("'{BIN}' {args} > /dev/null"), "/dev/null"])
        .current_dir(std::env::temp_dir())
        .env_remove("SNAKEPIT_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .output()
        .expect("util-linux `script` runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// cli.md, `bench`: "A progress bar runs on stderr when it is a terminal:
/// it counts each call as it completes"; global flags: "`-q`: ... no
/// progress bar"; into a pipe there is none either.
#[test]
fn bench_shows_a_progress_bar_on_a_terminal_only_and_not_with_q() {
    let bench = "bench --workers 1 --concurrency 2 --requests 100 --init-ms 1";
    let shown = stderr_on_a_terminal(bench);
    assert!(
        shown.contains("raw loop") && shown.contains("/s") && shown.contains("eta"),
        "a bar counting the calls: {shown:?}"
    );
    let quiet = stderr_on_a_terminal(&format!("-q {bench}"));
    assert_eq!(quiet, "", "-q: no progress bar");
    let args: Vec<&str> = bench.split(' ').collect();
    let piped = snakepit(&args);
    assert_eq!(piped.code, 0, "{piped:?}");
    assert!(
        !piped.stderr.contains("eta") && !piped.stderr.contains('\r'),
        "no bar into a pipe: {piped:?}"
    );
}

/// cli.md, exit codes: 2 for a bad flag or a bad `snakepit.toml`, never a
/// crash. A pool of more than `MAX_POOL_SIZE` (10,000) workers is refused by
/// each way of asking for one (a huge one panicked allocating the slot
/// table, and `bench --workers 2^62` wrapped its own check of `--requests`).
#[test]
fn a_pool_size_past_the_limit_is_a_usage_error_however_it_is_asked_for() {
    let dir = Dir::new("huge-pool");
    let huge = "9223372036854775807";
    for args in [
        &["exec", "--pool-size", huge, "ping"][..],
        &["exec", "--pool-size", "10001", "ping"],
        &[
            "bench",
            "--workers",
            "4611686018427387904",
            "--requests",
            "300",
        ],
        &["bench", "--concurrency", "100001"],
        &["bench", "--requests", "100000001"],
    ] {
        let r = dir.run(args);
        assert_eq!(r.code, 2, "{args:?}: {r:?}");
        assert!(!r.stderr.contains("panicked"), "{args:?}: {r:?}");
        assert!(r.stderr.starts_with("error: "), "{args:?}: {r:?}");
    }
    let r = dir.run(&["exec", "--pool-size", huge, "ping"]);
    assert!(r.stderr.contains("between 1 and 10000"), "{r:?}");
    dir.file("snakepit.toml", &format!("[pool]\npool_size = {huge}\n"));
    let r = dir.run(&["exec", "ping"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr
            .contains("pool_size under [pool] must be between 1 and 10000"),
        "{r:?}"
    );
}

/// README: "a larger request is refused with `Codec` and never sent"
/// (`max_frame_size`). `exec COMMAND -` reads no more of stdin than a
/// request could carry: it read all of it, and /dev/zero until memory ran
/// out. Arguments over the limit are a usage error, exit 2.
#[test]
fn exec_reads_no_more_arguments_from_stdin_than_a_request_carries() {
    let dir = Dir::new("stdin-limit");
    dir.file("snakepit.toml", "[pool]\nmax_frame_size = 4096\n");
    let big = format!("{{\"text\": \"{}\"}}", "x".repeat(5000));
    let r = snakepit_in(&dir.0, &["exec", "echo", "-"], &[], &big);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("larger than max_frame_size (4096 bytes)"),
        "{r:?}"
    );
    let zero = std::fs::File::open("/dev/zero").expect("/dev/zero");
    #[allow(clippy::disallowed_methods)] // the tool itself, not a worker
    let out = Command::new(BIN)
        .current_dir(&dir.0)
        .args(["exec", "echo", "-"])
        .stdin(zero)
        .output()
        .expect("run snakepit");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let small = format!("{{\"text\": \"{}\"}}", "x".repeat(100));
    let r = snakepit_in(&dir.0, &["exec", "echo", "-"], &[], &small);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["echoed"]["text"].as_str().map(str::len), Some(100));
}
