//! Audit of README.md and docs/cli.md: promises no other test showed,
//! checked by running the `snakepit` binary with real workers.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// Runs `snakepit ARGS` in `dir` with `set` added to and `remove` taken
/// from its environment.
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

/// What `program` prints for `args` (its own idea of its real binary).
#[allow(clippy::disallowed_methods)] // asks an interpreter where it lives
fn ask(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A shell script at `path` that runs `program` with its arguments, as a
/// version manager's shim does.
fn shim(path: &Path, program: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, format!("#!/bin/sh\nexec '{program}' \"$@\"\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// docs/cli.md, `snakepit bench`: "Python runs through its real binary
/// (`sys.executable`), not a version-manager shim, and so do Node.js
/// (`process.execPath`) and Ruby (`RbConfig.ruby`), unless
/// `SNAKEPIT_PYTHON`/`_NODE`/`_RUBY` says otherwise." (doc_promises.rs
/// shows Python; this is the Node.js and Ruby half.)
///
/// The test puts a shim named `node` and one named `ruby` first on `PATH`,
/// each a shell script that runs the real interpreter. A small bench of
/// each language, with `SNAKEPIT_NODE`/`SNAKEPIT_RUBY` unset, must report
/// as its `interpreter` what the interpreter itself says is its binary
/// (`process.execPath`, `RbConfig.ruby`), not the shim; with the variable
/// set to the shim, the shim.
#[test]
fn bench_runs_node_and_ruby_through_their_real_binary_unless_the_variable_says() {
    let dir = Dir::new("real-binary");
    let shims = dir.0.join(".versions/shims");
    let path = format!(
        "{}:{}",
        shims.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (adapter, program, var, ask_args) in [
        (
            "node",
            "node",
            "SNAKEPIT_NODE",
            &["-p", "process.execPath"][..],
        ),
        (
            "ruby",
            "ruby",
            "SNAKEPIT_RUBY",
            &["-rrbconfig", "-e", "print RbConfig.ruby"][..],
        ),
    ] {
        let real = ask(program, ask_args);
        let shim_path = shims.join(program);
        shim(&shim_path, &real);
        let bench = [
            "bench",
            "--adapter",
            adapter,
            "--workers",
            "1",
            "--concurrency",
            "2",
            "--requests",
            "100",
            "--init-ms",
            "1",
            "--pipeline-depth",
            "0",
            "--json",
        ];
        let r = run_env(&dir.0, &bench, &[("PATH", &path)], &[var]);
        assert_eq!(r.code, 0, "{adapter}: {r:?}");
        assert_eq!(
            r.json()["interpreter"],
            real.as_str(),
            "{adapter}: the real binary, not the shim on PATH: {r:?}"
        );
        let shim_str = shim_path.display().to_string();
        let r = run_env(&dir.0, &bench, &[("PATH", &path), (var, &shim_str)], &[]);
        assert_eq!(r.code, 0, "{adapter}: {r:?}");
        assert_eq!(
            r.json()["interpreter"],
            shim_str.as_str(),
            "{adapter}: as {var} says: {r:?}"
        );
    }
}

/// docs/cli.md, `snakepit bench`, item 5: "N workers whose script fills
/// `--init-mb` MiB (default 200) that they only read, their proportional
/// set size (`Pss` of `/proc/PID/smaps_rollup`) summed". (cli.rs shows
/// `--init-mb 20`; this is the default.)
///
/// The test runs `bench --preload --json` with one worker and no
/// `--init-mb`, and checks that the report's `preload.hold_mb` is 200 and
/// that the worker without preloading was measured holding at least that
/// much (`pss_mb` of 200 or more: its own copy of 200 MiB).
#[test]
fn bench_preload_fills_200_mib_per_worker_unless_init_mb_says_otherwise() {
    let dir = Dir::new("init-mb-default");
    let r = dir.run(&[
        "bench",
        "--preload",
        "--workers",
        "1",
        "--concurrency",
        "2",
        "--requests",
        "100",
        "--init-ms",
        "1",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let p = &r.json()["preload"];
    assert_eq!(p["hold_mb"], 200, "{p}");
    let pss = p["pss_mb"]
        .as_f64()
        .unwrap_or_else(|| panic!("pss_mb: {p}"));
    assert!(pss >= 200.0, "one worker's own 200 MiB: {p}");
}

/// docs/cli.md, `snakepit doctor`: it reports "the interpreter the
/// adapters would run ..., its version, whether the bundled generic worker
/// really starts and answers a ping", and "It exits 0 when at least one
/// language's worker answered, 1 otherwise." (promises.rs and cli.rs show
/// a missing interpreter; here every interpreter is there and answers for
/// its version, but no worker answers.)
///
/// The test points `SNAKEPIT_PYTHON`, `SNAKEPIT_NODE` and `SNAKEPIT_RUBY`
/// at a script that prints a version line and exits 0 whatever it is
/// asked. It checks that `doctor --json` reports each language's version
/// and no ping, `ok` false, and that both `doctor --json` and `doctor`
/// exit 1: an interpreter found is not a worker that answered.
#[test]
fn doctor_exits_1_when_interpreters_are_found_but_no_worker_answers() {
    let dir = Dir::new("doctor-no-worker");
    let fake = dir.0.join("fake-interpreter");
    std::fs::write(&fake, "#!/bin/sh\necho \"v3.11.7\"\nexit 0\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let fake = fake.display().to_string();
    let env = [
        ("SNAKEPIT_PYTHON", fake.as_str()),
        ("SNAKEPIT_NODE", fake.as_str()),
        ("SNAKEPIT_RUBY", fake.as_str()),
    ];
    let r = run_env(&dir.0, &["doctor", "--json"], &env, &["VIRTUAL_ENV"]);
    assert_eq!(r.code, 1, "{r:?}");
    let v = r.json();
    assert_eq!(v["ok"], false, "{v}");
    let interpreters = v["interpreters"].as_array().expect("interpreters");
    assert_eq!(interpreters.len(), 3, "{v}");
    for i in interpreters {
        assert!(
            i["version"].as_str().is_some_and(|s| s.contains("3.11.7")),
            "the interpreter was found: {i}"
        );
        assert!(i["ping_ms"].is_null(), "no worker answered: {i}");
    }
    let r = run_env(&dir.0, &["doctor"], &env, &["VIRTUAL_ENV"]);
    assert_eq!(r.code, 1, "{r:?}");
}

/// docs/cli.md, `snakepit sweep`: it "reads only `state_dir` under
/// `[pool]`" from snakepit.toml. A settings file that other commands refuse
/// (an unknown adapter, a misspelt key) does not stop a sweep: it sweeps
/// the file's `state_dir` and exits 0. A file that is not TOML at all, or
/// whose `state_dir` is not a path, is still a usage error (exit 2). (A
/// broken file made every sweep exit 2.)
#[test]
fn sweep_reads_only_state_dir_from_a_settings_file_others_refuse() {
    let dir = Dir::new("sweep-broken-file");
    let state = dir.0.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir.file(
        "snakepit.toml",
        &format!(
            "adapter = \"cobol\"\nmisspelt = 1\n[pool]\npool_sise = 3\nstate_dir = \"{}\"\n",
            state.display()
        ),
    );
    let exec = dir.run(&["exec", "ping"]);
    assert_eq!(exec.code, 2, "exec reads the whole file: {}", exec.stderr);
    let swept = dir.run(&["sweep", "--json"]);
    assert_eq!(swept.code, 0, "{}", swept.stderr);
    assert_eq!(
        swept.json()["state_dir"],
        state.display().to_string(),
        "{}",
        swept.stdout
    );
    for (text, says) in [
        ("[pool\n", "snakepit.toml"),
        ("[pool]\nstate_dir = 3\n", "must be a path"),
    ] {
        dir.file("snakepit.toml", text);
        let swept = dir.run(&["sweep"]);
        assert_eq!(swept.code, 2, "{text}: {}", swept.stderr);
        assert!(swept.stderr.contains(says), "{text}: {}", swept.stderr);
    }
}

/// docs/cli.md, the synopsis: `[--preload [--init-mb MIB]]`. `--init-mb`
/// without preloading (no `--preload`, no `preload = true` in the file) is
/// a usage error that names the flag, not a flag silently ignored.
#[test]
fn init_mb_without_preload_is_a_usage_error() {
    let dir = Dir::new("init-mb-alone");
    let run = dir.run(&["bench", "--init-mb", "20"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("--init-mb") && run.stderr.contains("--preload"),
        "{}",
        run.stderr
    );
}
