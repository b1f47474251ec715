//! What docs/cli.md and the README's command-line section promise that
//! `cli.rs` does not already show, each against the real binary and real
//! workers.

use std::os::unix::fs::PermissionsExt;
mod common;

use common::*;

/// A Python worker that notes each process that imports it in `starts.log`
/// (beside the script), and can die mid-call.
const COUNTING_WORKER: &str = r#"
import os, sys
import snakepit_bridge

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "starts.log"), "a") as f:
    f.write("%d\n" % os.getpid())

worker = snakepit_bridge.Worker()

@worker.command("die")
def die(args):
    sys.stderr.write("dying on purpose\n")
    sys.stderr.flush()
    os._exit(7)

@worker.command("lang")
def lang(args):
    return {"lang": "python", "args": args}

worker.run()
"#;

/// cli.md: "`--pool-size` defaults to 1: one call needs one worker."
#[test]
fn exec_starts_one_worker_unless_pool_size_says_otherwise() {
    let dir = Dir::new("poolsize");
    let script = dir.file("worker.py", COUNTING_WORKER);
    let starts = dir.0.join("starts.log");
    let r = dir.run(&["exec", "--script", &script, "lang"]);
    assert_eq!(r.code, 0, "{r:?}");
    let n = std::fs::read_to_string(&starts).unwrap().lines().count();
    assert_eq!(n, 1, "one worker by default");
    std::fs::remove_file(&starts).unwrap();
    let r = dir.run(&["exec", "--pool-size", "3", "--script", &script, "lang"]);
    assert_eq!(r.code, 0, "{r:?}");
    let n = std::fs::read_to_string(&starts).unwrap().lines().count();
    assert_eq!(n, 3, "--pool-size 3 starts three");
}

/// cli.md: "`ARGS_JSON` is a JSON object (default `{}`)".
#[test]
fn exec_without_arguments_sends_an_empty_object() {
    let dir = Dir::new("noargs");
    let r = dir.run(&["exec", "echo"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["echoed"], serde_json::json!({}), "{r:?}");
}

/// cli.md: "The result is indented on a terminal and on one line
/// otherwise, so `snakepit exec ping | jq .pid` works."
#[test]
fn exec_prints_the_result_on_one_line_into_a_pipe() {
    let dir = Dir::new("oneline");
    let r = dir.run(&["exec", "ping"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stdout.lines().count(), 1, "{r:?}");
    assert!(r.stdout.ends_with('\n'), "{r:?}");
    assert!(r.json()["pid"].is_u64(), "{r:?}");
}

/// cli.md, exit codes: 5 "a worker died during the call (`WorkerCrashed`)";
/// errors go to stderr as `error: ...`, then the stderr tail, then `hint:`.
#[test]
fn a_worker_that_dies_during_the_call_exits_5_with_its_stderr_tail_and_a_hint() {
    let dir = Dir::new("crash");
    let script = dir.file("worker.py", COUNTING_WORKER);
    let r = dir.run(&["exec", "--script", &script, "die"]);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(r.stderr.starts_with("error: "), "{r:?}");
    assert!(
        r.stderr.contains("dying on purpose"),
        "the stderr tail: {r:?}"
    );
    let error_at = r.stderr.find("error: ").unwrap();
    let tail_at = r.stderr.find("dying on purpose").unwrap();
    let hint_at = r
        .stderr
        .lines()
        .position(|l| l.starts_with("hint:"))
        .map(|i| r.stderr.lines().take(i).map(|l| l.len() + 1).sum::<usize>())
        .unwrap_or_else(|| panic!("no `hint:` line: {r:?}"));
    assert!(error_at < tail_at && tail_at < hint_at, "order: {r:?}");
}

/// cli.md, exit codes: 2 for "an unknown adapter or codec".
#[test]
fn an_unknown_codec_is_a_usage_error() {
    let dir = Dir::new("codec");
    let r = dir.run(&["exec", "--codec", "bson", "ping"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("bson"), "{r:?}");
    dir.file("snakepit.toml", "codec = \"bson\"\n");
    let r = dir.run(&["exec", "ping"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("bson"), "{r:?}");
}

/// cli.md: "its language comes from `--adapter` or else from the extension
/// (`.py`, `.js`/`.cjs`/`.mjs`, `.rb`)".
#[test]
fn a_scripts_language_comes_from_its_extension() {
    let dir = Dir::new("ext");
    let js = "const { Worker } = require('snakepit-bridge');\n\
              new Worker({ commands: { lang() { return { lang: 'node' }; } } }).run();\n";
    let cjs = dir.file("worker.cjs", js);
    let r = dir.run(&["exec", "--script", &cjs, "lang"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["lang"], "node");
    let rb = dir.file(
        "worker.rb",
        "require 'snakepit_bridge'\nw = SnakepitBridge::Worker.new\n\
         w.command('lang') { |_a, _c| { 'lang' => 'ruby' } }\nw.run\n",
    );
    let r = dir.run(&["exec", "--script", &rb, "lang"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["lang"], "ruby");
}

/// cli.md, `snakepit.toml`: "`--adapter` or `--script` on the command line
/// replaces both of the file's `adapter` and `script`"; `SNAKEPIT_CONFIG`
/// names the file.
#[test]
fn a_script_flag_replaces_the_files_adapter_and_snakepit_config_names_the_file() {
    let dir = Dir::new("replace");
    let script = dir.file("worker.py", COUNTING_WORKER);
    dir.file("snakepit.toml", "adapter = \"ruby\"\n");
    let r = dir.run(&["exec", "ping"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.json()["ruby_version"].is_string(),
        "the file's adapter: {r:?}"
    );
    // The file says Ruby; the script flag alone runs the script in Python.
    let r = dir.run(&["exec", "--script", &script, "lang"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["lang"], "python", "{r:?}");

    let elsewhere = Dir::new("replace-config");
    let config = elsewhere.file("settings.toml", "adapter = \"node\"\n");
    let r = snakepit_in(
        &std::env::temp_dir(),
        &["exec", "ping"],
        &[("SNAKEPIT_CONFIG", &config)],
        "",
    );
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.json()["node_version"].is_string(), "{r:?}");
}

/// cli.md, `snakepit sweep`: a state directory writable by others "is
/// refused with exit code 1 and a message naming it and what is wrong".
#[test]
fn sweep_refuses_a_state_directory_others_can_write_with_exit_1() {
    let dir = Dir::new("sweep-open");
    let state = dir.0.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let state = state.to_str().unwrap();
    let r = snakepit_in(&dir.0, &["sweep"], &[("SNAKEPIT_STATE_DIR", state)], "");
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains(state), "names the directory: {r:?}");
    assert!(
        r.stderr.contains("writable by other users"),
        "says why: {r:?}"
    );
    let r = dir.run(&["sweep", "--state-dir", state]);
    assert_eq!(r.code, 1, "--state-dir is checked the same way: {r:?}");
}

/// cli.md, `snakepit sweep`: `--state-dir`, `--instance`, `--json` (a
/// `SweepReport`), and nothing to do prints a report all the same.
#[test]
fn sweep_takes_a_state_dir_an_instance_and_prints_json() {
    let dir = Dir::new("sweep-json");
    let state = dir.0.join("state");
    let state = state.to_str().unwrap();
    let r = dir.run(&[
        "sweep",
        "--dry-run",
        "--instance",
        "my_pool",
        "--state-dir",
        state,
        "--json",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert!(v["stale_runs"].is_array(), "{r:?}");
    assert_eq!(v["stale_runs"].as_array().unwrap().len(), 0, "{r:?}");
}

/// cli.md, `snakepit doctor`: "It exits 0 when at least one language's
/// worker answered, 1 otherwise."
#[test]
fn doctor_exits_0_when_one_language_answers() {
    let r = snakepit_in(
        &std::env::temp_dir(),
        &["doctor", "--json"],
        &[
            ("SNAKEPIT_NODE", "/no/such/node"),
            ("SNAKEPIT_RUBY", "/no/such/ruby"),
        ],
        "",
    );
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["ok"], true, "{v}");
    let node = v["interpreters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["language"] == "node")
        .expect("node is listed");
    assert!(node["ping_ms"].is_null(), "node did not answer: {v}");
}

/// cli.md: "`snakepit --help` and `snakepit help COMMAND` list every flag
/// with examples."
#[test]
fn help_for_a_command_lists_its_flags() {
    let dir = Dir::new("help");
    let r = dir.run(&["help", "exec"]);
    assert_eq!(r.code, 0, "{r:?}");
    for flag in [
        "--adapter",
        "--script",
        "--pool-size",
        "--codec",
        "--session",
        "--timeout",
        "--pipeline-depth",
        "--preload",
    ] {
        assert!(r.stdout.contains(flag), "missing {flag}: {r:?}");
    }
    assert!(r.stdout.contains("snakepit exec "), "an example: {r:?}");
    let r = dir.run(&["help", "sweep"]);
    assert_eq!(r.code, 0, "{r:?}");
    for flag in ["--dry-run", "--instance", "--state-dir", "--json"] {
        assert!(r.stdout.contains(flag), "missing {flag}: {r:?}");
    }
}

/// cli.md, global flags: "`-q`: nothing on stderr but errors".
#[test]
fn quiet_leaves_only_errors_on_stderr() {
    let dir = Dir::new("quiet");
    let script = dir.file(
        "worker.py",
        "import snakepit_bridge\nw = snakepit_bridge.Worker()\n\
         @w.command('talk')\ndef talk(args):\n    print('chatter')\n    return 1\nw.run()\n",
    );
    let r = dir.run(&["-q", "exec", "--script", &script, "talk"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.stderr, "", "{r:?}");
    let r = dir.run(&["-q", "exec", "no_such_command"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("error: "), "errors still show: {r:?}");
}

/// cluster.md, command line: `snakepit cluster status` "lists each host
/// that answers the service PING: its id, pid, pool, workers, free and busy
/// workers, queued calls and calls served"; "a bad cluster name is exit
/// code 2".
#[test]
fn cluster_status_lists_each_host_under_its_header_and_refuses_a_bad_name() {
    use std::process::{Command, Stdio};
    let nats = snakepit_tests::NatsServer::start();
    #[allow(clippy::disallowed_methods)] // the tool under test, not a worker
    let host = Command::new(BIN)
        .args(["serve", "--nats", &nats.url, "--cluster", "promises"])
        .args(["--pool-size", "1", "--host-id", "status-host"])
        .env_remove("SNAKEPIT_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("snakepit serve runs");
    /// SIGKILLs the host at the end, whatever happened.
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let host = Kill(host);
    let status = [
        "cluster",
        "status",
        "--nats",
        &nats.url,
        "--cluster",
        "promises",
    ];
    // The host answers once its worker has started: ask until it does.
    let mut run = snakepit(&status);
    for _ in 0..300 {
        if run.code == 0 && run.stdout.contains("status-host") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        run = snakepit(&status);
    }
    assert_eq!(run.code, 0, "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "a header and one host: {run:?}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["HOST", "PID", "POOL", "WORKERS", "FREE", "BUSY", "QUEUED", "SERVED"],
        "{run:?}"
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row.len(), header.len(), "a value per column: {run:?}");
    assert_eq!(row[0], "status-host", "{run:?}");
    assert_eq!(row[1], host.0.id().to_string(), "the host's pid: {run:?}");
    assert_eq!(
        row[2], "promises",
        "a host's pool is named after its cluster: {run:?}"
    );
    assert_eq!(row[3], "1", "one worker: {run:?}");
    assert_eq!(
        &row[4..],
        ["1", "0", "0", "0"],
        "idle, nothing served: {run:?}"
    );

    let bad = snakepit(&["cluster", "status", "--nats", &nats.url, "--cluster", "a.b"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.starts_with("error: "), "{bad:?}");
    assert!(bad.stderr.contains("a.b"), "names the bad name: {bad:?}");
}

/// A worker that tells on stderr it is loading, then takes far longer to
/// import than its init timeout allows.
const SLOW_INIT_WORKER: &str = r#"
import sys, time
sys.stderr.write("loading the model\n")
sys.stderr.flush()
time.sleep(120)
import snakepit_bridge
worker = snakepit_bridge.Worker()
worker.run()
"#;

/// cli.md, exit codes: 3 when "the workers could not start (`StartFailed`):
/// ... init slower than its timeout", "the worker's stderr is printed", and
/// errors end with a `hint:` line.
#[test]
fn an_init_slower_than_its_timeout_exits_3_with_the_stderr_and_a_hint() {
    let dir = Dir::new("slow-init");
    let script = dir.file("worker.py", SLOW_INIT_WORKER);
    // Long enough for the interpreter to start and write its line on a
    // loaded machine (300 ms was not, once), far shorter than the import.
    dir.file("snakepit.toml", "[pool]\nworker_init_timeout_ms = 3000\n");
    let r = dir.run(&["exec", "--script", &script, "ping"]);
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(r.stderr.starts_with("error: "), "{r:?}");
    assert!(
        r.stderr.contains("loading the model"),
        "the worker's stderr is printed: {r:?}"
    );
    let hint = r
        .stderr
        .lines()
        .find(|l| l.starts_with("hint:"))
        .unwrap_or_else(|| panic!("no `hint:` line: {r:?}"));
    assert!(
        hint.contains("worker_init_timeout_ms"),
        "the hint names the setting to raise: {r:?}"
    );
}

/// A worker whose `garbage` handler writes stray bytes to its frame stream
/// (the descriptor the bridge keeps for frames) and then does not answer.
const GARBAGE_WORKER: &str = r#"
import os, time
import snakepit_bridge
from snakepit_bridge import _server

worker = snakepit_bridge.Worker()

@worker.command("garbage")
def garbage(args):
    fd = _server._frame_fd if _server._frame_fd is not None else 1
    os.write(fd, b"this is not a frame, just stray bytes\n")
    time.sleep(120)
    return 1

worker.run()
"#;

/// cli.md, exit codes: 5 when a worker "broke the protocol (`Protocol`)";
/// reliability.md: stray bytes on stdout are a broken protocol and the call
/// it was serving gets `Error::Protocol`.
#[test]
fn a_worker_that_breaks_the_protocol_exits_5_with_a_hint() {
    let dir = Dir::new("protocol");
    let script = dir.file("worker.py", GARBAGE_WORKER);
    let r = dir.run(&["exec", "--script", &script, "garbage"]);
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
    assert!(
        r.stderr.contains("broke the protocol"),
        "a protocol error, not a crash: {r:?}"
    );
    assert!(r.stderr.starts_with("error: "), "{r:?}");
    assert!(
        r.stderr
            .lines()
            .any(|l| l.starts_with("hint:") && l.contains("stdout")),
        "no `hint:` line naming stray output: {r:?}"
    );
}

/// cli.md, `snakepit sweep`: the temporary file of a record that a crashed
/// host never renamed is removed with a line saying so (`--dry-run` says
/// it would be, and keeps it), and is listed under `removed_temporary` in
/// `--json`.
#[test]
fn sweep_removes_a_crashed_runs_unfinished_record_and_says_so() {
    let dir = Dir::new("sweep-tmp");
    let state = dir.0.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let dead = {
        // A pid no process has: past the kernel's maximum.
        let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        max + 1
    };
    let run = "f".repeat(32);
    let tmp = state.join(format!(".gone.{dead}.{run}.run.0123456789abcdef.tmp"));
    let ns = std::fs::metadata("/proc/self/ns/pid").unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let record = format!(
        "snakepit-run 1\ninstance gone\nrun_id {run}\nhost {dead} 1\npidns {} {}\nboot {}\n",
        std::os::unix::fs::MetadataExt::dev(&ns),
        std::os::unix::fs::MetadataExt::ino(&ns),
        boot.trim()
    );
    std::fs::write(&tmp, record).unwrap();
    let state = state.to_str().unwrap();
    let r = dir.run(&["sweep", "--dry-run", "--state-dir", state]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stdout.contains(&format!(
            "would remove a crashed run's unfinished record: {}",
            tmp.display()
        )),
        "{r:?}"
    );
    assert!(tmp.exists(), "a dry run removed it");
    let r = dir.run(&["sweep", "--state-dir", state, "--json"]);
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(
        v["removed_temporary"],
        serde_json::json!([tmp.display().to_string()]),
        "{v}"
    );
    assert!(!tmp.exists(), "it was kept");
}
