//! The promises of snakepit-adapters' API docs (rustdoc) that no other test
//! shows, against real worker processes where a process is involved: the
//! defaults of every adapter (codec, deadlines, commands), `Custom`'s hooks,
//! an empty `supported_commands`, the module path of Node.js and Ruby
//! bridges, `Bridge::with_init_delay` and `with_init` in each language,
//! `Language::real_interpreter` and `inspect` with a missing interpreter,
//! and the start errors for a missing Node.js or Ruby interpreter or
//! script.
//!
//! Tests that change this process's environment run in a process of their
//! own (this test binary, started again for that one test), so they hold
//! under any test runner.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use snakepit_adapters::{Bridge, Custom, GenericJavaScript, GenericPython, GenericRuby, Language};
use snakepit_core::{Adapter, Error, Pool, WireCodec};
use snakepit_tests::python;

/// A fresh folder for one test's files, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "snakepit-adapters-api-promises-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Dir(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("dir");
        }
        std::fs::write(&path, text).expect("write file");
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const CHILD: &str = "SNAKEPIT_ADAPTERS_API_PROMISES_CHILD";

/// Runs test `name` again in a process of its own, with `env` set and
/// `unset` removed there; whether this call is that process (then the
/// caller runs the body).
fn in_own_process(name: &str, env: &[(&str, &str)], unset: &[&str]) -> bool {
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let mut cmd = snakepit_tests::this_test(name);
    cmd.env(CHILD, "1");
    for k in unset {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the test binary runs");
    assert!(
        out.status.success(),
        "{name} failed in its own process:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{name} did not run in its own process: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    false
}

/// Starts a pool of one worker of `adapter`.
fn pool_of(adapter: impl Adapter) -> impl std::future::Future<Output = Result<Pool, Error>> {
    Pool::builder(adapter).size(1).start()
}

// ---------------------------------------------------------------------
// Defaults and builders
// ---------------------------------------------------------------------

/// The generic workers are "(JSON codec)"; `codec`: "Picks the wire codec
/// (default JSON)"; `Bridge::command_timeout`: "The deadline of calls that
/// do not set their own (default 30 s)"; `Custom::default_timeout`: "The
/// deadline of every other command (default 30 s)"; `timeout_for`: "The
/// deadline of `command` when a call does not set its own", whichever
/// order the two are set in, and "set twice for one command, the last one
/// counts"; `supported_commands`: none set lets every
/// command through.
#[test]
fn every_adapter_defaults_to_json_30_s_and_every_command() {
    fn defaults(name: &str, a: &dyn Adapter) {
        assert_eq!(a.codec(), WireCodec::Json, "{name}");
        assert_eq!(
            a.command_timeout("anything"),
            Duration::from_secs(30),
            "{name}"
        );
        assert_eq!(a.supported_commands(), None, "{name}");
    }
    defaults("GenericPython", &GenericPython);
    defaults("GenericJavaScript", &GenericJavaScript);
    defaults("GenericRuby", &GenericRuby);
    for lang in Language::ALL {
        defaults(lang.name(), &Bridge::generic(lang));
    }
    defaults("Bridge::python", &Bridge::python("w.py"));
    defaults("Bridge::python_module", &Bridge::python_module("pkg.w"));
    defaults("Bridge::node", &Bridge::node("w.js"));
    defaults("Bridge::ruby", &Bridge::ruby("w.rb"));
    defaults("Custom", &Custom::new("prog"));

    let minute = Duration::from_secs(60);
    let five = Duration::from_secs(5);
    let bridges = [
        Bridge::python("w.py")
            .codec(WireCodec::MsgPack)
            .timeout_for("slow", minute)
            .command_timeout(five),
        Bridge::python("w.py")
            .codec(WireCodec::MsgPack)
            .command_timeout(five)
            .timeout_for("slow", minute),
    ];
    for b in &bridges {
        let b: &dyn Adapter = b;
        assert_eq!(b.codec(), WireCodec::MsgPack);
        assert_eq!(b.command_timeout("slow"), minute);
        assert_eq!(b.command_timeout("other"), five);
    }
    let customs = [
        Custom::new("prog")
            .codec(WireCodec::MsgPack)
            .timeout_for("slow", minute)
            .default_timeout(five),
        Custom::new("prog")
            .codec(WireCodec::MsgPack)
            .default_timeout(five)
            .timeout_for("slow", minute),
    ];
    for c in &customs {
        let c: &dyn Adapter = c;
        assert_eq!(c.codec(), WireCodec::MsgPack);
        assert_eq!(c.command_timeout("slow"), minute);
        assert_eq!(c.command_timeout("other"), five);
    }
    // Set twice for one command, the last one counts.
    let twice = Bridge::python("w.py")
        .timeout_for("slow", five)
        .timeout_for("slow", minute);
    assert_eq!(Adapter::command_timeout(&twice, "slow"), minute);
    let twice = Custom::new("prog")
        .timeout_for("slow", minute)
        .timeout_for("slow", five);
    assert_eq!(Adapter::command_timeout(&twice, "slow"), five);
    let only = Custom::new("prog").supported_commands(["a", "b"]);
    assert_eq!(
        Adapter::supported_commands(&only),
        Some(vec!["a".to_string(), "b".to_string()])
    );
}

/// The generic workers "(JSON codec)", started for real: the pool speaks
/// JSON with each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generic_workers_pools_speak_json() {
    for (name, pool) in [
        ("python", pool_of(GenericPython).await),
        ("node", pool_of(GenericJavaScript).await),
        ("ruby", pool_of(GenericRuby).await),
    ] {
        let pool = pool.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(pool.codec(), WireCodec::Json, "{name}");
        let r = pool.execute("ping", json!({})).await.unwrap();
        assert_eq!(r["status"], "ok", "{name}: {r}");
        pool.shutdown().await.unwrap();
    }
}

/// A worker without the bridge (JSON, no hello): answers every call with
/// its command, its arguments and how many calls it has served.
const RAW_WORKER: &str = r#"
import json, struct, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
served = 0
while True:
    head = inp.read(4)
    if len(head) < 4:
        break
    req = json.loads(inp.read(struct.unpack(">I", head)[0]))
    served += 1
    result = {"status": "ok", "command": req["command"], "args": req.get("args"), "served": served}
    data = json.dumps({"id": req["id"], "success": True, "result": result}).encode()
    out.write(struct.pack(">I", len(data)) + data)
    out.flush()
"#;

/// `Custom::validate`: "Checks each call before it is queued" (a refusal
/// is `Error::Validation`, the call never ran); `prepare_args`: "Reshapes
/// each call's arguments" (the worker sees the reshaped ones);
/// `process_response`: "Reshapes each successful result" (an `Err` is
/// `Error::ResultRefused`, of a call that ran). A real worker counts what
/// reached it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customs_hooks_check_reshape_and_refuse_around_a_real_worker() {
    let dir = Dir::new("custom-hooks");
    let script = dir.file("raw.py", RAW_WORKER);
    let adapter = Custom::new(python())
        .arg(&script)
        .validate(|command, args| match command {
            "process_data" if args.get("data").is_none() => {
                Err("Missing required field: data".into())
            }
            _ => Ok(()),
        })
        .prepare_args(|command, mut args| {
            args["prepared_for"] = json!(command);
            args
        })
        .process_response(|command, mut result| {
            if command == "refused" {
                return Err("no good".into());
            }
            result["processed"] = json!(true);
            Ok(result)
        });
    let pool = pool_of(adapter).await.unwrap();

    // What reached the worker so far (the pool's own calls included).
    let served = |r: &serde_json::Value| r["served"].as_u64().expect("served");
    let before = served(&pool.execute("count", json!({})).await.unwrap());

    let err = pool.execute("process_data", json!({})).await.unwrap_err();
    match &err {
        Error::Validation { command, message } => {
            assert_eq!(command, "process_data");
            assert_eq!(message, "Missing required field: data");
        }
        other => panic!("expected Validation, got {other:?}"),
    }
    assert!(err.never_ran(), "{err}");

    let r = pool
        .execute("process_data", json!({"data": [1, 2]}))
        .await
        .unwrap();
    assert_eq!(
        served(&r),
        before + 1,
        "the refused call never reached it: {r}"
    );
    assert_eq!(
        r["args"],
        json!({"data": [1, 2], "prepared_for": "process_data"}),
        "the worker saw the prepared arguments: {r}"
    );
    assert_eq!(
        r["processed"], true,
        "the caller got the processed result: {r}"
    );

    let err = pool.execute("refused", json!({})).await.unwrap_err();
    match &err {
        Error::ResultRefused { command, message } => {
            assert_eq!(command, "refused");
            assert_eq!(message, "no good");
        }
        other => panic!("expected ResultRefused, got {other:?}"),
    }
    assert!(!err.never_ran(), "{err}");
    let r = pool.execute("again", json!({})).await.unwrap();
    assert_eq!(served(&r), before + 3, "the refused result's call ran: {r}");
    pool.shutdown().await.unwrap();
}

/// `supported_commands`: "Lets only these commands through to the
/// workers": an empty list lets none through (each call is
/// `UnsupportedCommand` and never runs), and the pool still starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_supported_commands_lets_no_command_through() {
    let dir = Dir::new("supported-empty");
    let script = dir.file("raw.py", RAW_WORKER);
    let none: [&str; 0] = [];
    let pool = pool_of(Custom::new(python()).arg(&script).supported_commands(none))
        .await
        .unwrap();
    for command in ["ping", "anything"] {
        let err = pool.execute(command, json!({})).await.unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedCommand(ref c) if c == command),
            "{command}: {err}"
        );
        assert!(err.never_ran(), "{err}");
    }
    pool.shutdown().await.unwrap();

    let pool = pool_of(Bridge::generic(Language::Python).supported_commands(Vec::<String>::new()))
        .await
        .unwrap();
    let err = pool.execute("ping", json!({})).await.unwrap_err();
    assert!(matches!(err, Error::UnsupportedCommand(_)), "{err}");
    pool.shutdown().await.unwrap();
}

/// lib.rs: the generic workers answer "the generic commands (`ping`,
/// `echo`, `compute`, `info`, and in Node `random`)": Node's `random`
/// draws in the range asked for; Python's and Ruby's workers do not know
/// it (`UnknownCommand`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_is_a_generic_command_in_node_only() {
    let pool = pool_of(GenericJavaScript).await.unwrap();
    for _ in 0..5 {
        let r = pool
            .execute("random", json!({"type": "integer", "min": 3, "max": 5}))
            .await
            .unwrap();
        let v = r["value"].as_i64().expect("an integer");
        assert!((3..=5).contains(&v), "{r}");
    }
    pool.shutdown().await.unwrap();
    for (name, pool) in [
        ("python", pool_of(GenericPython).await),
        ("ruby", pool_of(GenericRuby).await),
    ] {
        let pool = pool.unwrap();
        let err = pool
            .execute("random", json!({"type": "integer", "min": 3, "max": 5}))
            .await
            .unwrap_err();
        assert_eq!(
            err.remote().and_then(|r| r.kind.as_deref()),
            Some("UnknownCommand"),
            "{name}: {err}"
        );
        pool.shutdown().await.unwrap();
    }
}

/// `codec`: "MessagePack needs the worker's package: `msgpack` on PyPI,
/// `@msgpack/msgpack` on npm". A Python interpreter that cannot see its
/// site-packages (`-S`, behind a shim) fails the start with an error that
/// names the package and how to install it; so does Node.js without the
/// package on its module path (when the machine has none globally).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messagepack_without_the_workers_package_is_a_start_error_naming_it() {
    let dir = Dir::new("no-msgpack");
    let real = std::fs::canonicalize(python()).expect("the real interpreter");
    let shim = dir.file(
        "python-without-site",
        &format!("#!/bin/sh\nexec '{}' -S \"$@\"\n", real.display()),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = pool_of(
        Bridge::generic(Language::Python)
            .interpreter(&shim)
            .codec(WireCodec::MsgPack),
    )
    .await
    .unwrap_err();
    let Error::StartFailed(e) = &err else {
        panic!("{err:?}")
    };
    assert!(
        e.stderr_tail.contains("pip install msgpack"),
        "python: {err}"
    );

    let empty = dir.0.join("empty_node_path");
    std::fs::create_dir_all(&empty).unwrap();
    #[allow(clippy::disallowed_methods)] // a probe of node, not a worker
    let global = std::process::Command::new("node")
        .args(["-e", "require.resolve('@msgpack/msgpack')"])
        .current_dir(&dir.0)
        .env("NODE_PATH", &empty)
        .output()
        .is_ok_and(|o| o.status.success());
    if global {
        eprintln!("node: @msgpack/msgpack is installed globally here; its half is not shown");
        return;
    }
    let err = pool_of(
        Bridge::generic(Language::Node)
            .env("NODE_PATH", &empty)
            .codec(WireCodec::MsgPack),
    )
    .await
    .unwrap_err();
    let Error::StartFailed(e) = &err else {
        panic!("{err:?}")
    };
    assert!(
        e.stderr_tail.contains("npm install @msgpack/msgpack"),
        "node: {err}"
    );
}

// ---------------------------------------------------------------------
// Module paths of the Node.js and Ruby bridges
// ---------------------------------------------------------------------

/// `env`: "For a `Bridge`, setting the language's module path
/// (`PYTHONPATH`, `NODE_PATH`, `RUBYLIB`) adds to it, after the bridge's
/// own directory": a Node.js and a Ruby worker load both the bundled
/// bridge and a module of the user's from the directory given with
/// `.env`, and see the bridge's directory first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_path_and_rubylib_given_with_env_come_after_the_bridges_directory() {
    let dir = Dir::new("module-paths");
    let node_lib = dir.0.join("node_lib");
    dir.file(
        "node_lib/mine_mod/index.js",
        "module.exports = { name: 'mine' };\n",
    );
    let js = dir.file(
        "w.js",
        "const { Worker } = require('snakepit-bridge');\nconst mine = require('mine_mod');\n\
         new Worker({ commands: { async paths() { return { path: process.env.NODE_PATH, mine: mine.name }; } } }).run();\n",
    );
    let ruby_lib = dir.0.join("ruby_lib");
    dir.file(
        "ruby_lib/mine_lib.rb",
        "module MineLib\n  NAME = 'mine'\nend\n",
    );
    let rb = dir.file(
        "w.rb",
        "require 'snakepit_bridge'\nrequire 'mine_lib'\nw = SnakepitBridge::Worker.new\n\
         w.command('paths') { |_args, _ctx| { 'path' => ENV['RUBYLIB'], 'mine' => MineLib::NAME } }\nw.run\n",
    );
    for (lang, adapter, mine) in [
        (
            "node",
            Bridge::node(&js).env("NODE_PATH", &node_lib),
            &node_lib,
        ),
        (
            "ruby",
            Bridge::ruby(&rb).env("RUBYLIB", &ruby_lib),
            &ruby_lib,
        ),
    ] {
        let pool = pool_of(adapter)
            .await
            .unwrap_or_else(|e| panic!("{lang}: {e}"));
        let r = pool.execute("paths", json!({})).await.unwrap();
        pool.shutdown().await.unwrap();
        assert_eq!(r["mine"], "mine", "{lang}: {r}");
        let path: Vec<PathBuf> = std::env::split_paths(r["path"].as_str().unwrap()).collect();
        assert_eq!(path.len(), 2, "{lang}: {r}");
        assert_eq!(&path[1], mine, "{lang}: the user's directory second: {r}");
        assert_ne!(&path[0], mine, "{lang}: the bridge's directory first: {r}");
    }
}

// ---------------------------------------------------------------------
// Stand-in workers
// ---------------------------------------------------------------------

/// `Bridge::with_init_delay`: "A worker of `language` that sleeps `delay`
/// before its handshake, then serves the bridge's built-in `ping`", in
/// each language: the pool's start takes at least the delay, and `ping`
/// answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_init_delay_sleeps_before_its_handshake_then_serves_ping_in_each_language() {
    let delay = Duration::from_millis(700);
    for lang in Language::ALL {
        let adapter = Bridge::with_init_delay(lang, delay).unwrap();
        let started = Instant::now();
        let pool = pool_of(adapter)
            .await
            .unwrap_or_else(|e| panic!("{lang:?}: {e}"));
        let took = started.elapsed();
        assert!(took >= delay, "{lang:?}: started in {took:?}");
        let r = pool.execute("ping", json!({})).await.unwrap();
        assert_eq!(r["status"], "ok", "{lang:?}: {r}");
        pool.shutdown().await.unwrap();
    }
}

/// The resident memory of process `pid`, in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// `Bridge::with_init`: "the worker's module-level code also fills
/// `hold_mb` MiB of memory it keeps", in each language: a worker holding
/// 96 MiB is resident for at least that, where one holding none is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_init_holds_the_memory_asked_for_in_each_language() {
    const HOLD_MB: u64 = 96;
    for lang in Language::ALL {
        let mut resident = Vec::new();
        for hold in [0, HOLD_MB] {
            let adapter = Bridge::with_init(lang, Duration::ZERO, hold).unwrap();
            let pool = pool_of(adapter)
                .await
                .unwrap_or_else(|e| panic!("{lang:?} {hold}: {e}"));
            let r = pool.execute("ping", json!({})).await.unwrap();
            assert_eq!(r["status"], "ok", "{lang:?}: {r}");
            let pid = pool.worker_pids()[0];
            resident.push(rss_kib(pid));
            pool.shutdown().await.unwrap();
        }
        assert!(
            resident[1] >= HOLD_MB * 1024,
            "{lang:?}: {} KiB resident holding {HOLD_MB} MiB",
            resident[1]
        );
        assert!(
            resident[0] < HOLD_MB * 1024,
            "{lang:?}: {} KiB resident holding nothing",
            resident[0]
        );
    }
}

// ---------------------------------------------------------------------
// Interpreters
// ---------------------------------------------------------------------

/// A stand-in for a version manager's shim: a shell script that runs the
/// real interpreter (which then reports itself, not the script, as
/// `sys.executable`).
fn shim_to_python(at: &Path) -> PathBuf {
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    let real = std::fs::canonicalize(python()).expect("the real interpreter");
    std::fs::write(at, format!("#!/bin/sh\nexec '{}' \"$@\"\n", real.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(at, std::fs::Permissions::from_mode(0o755)).unwrap();
    at.to_owned()
}

/// `Language::real_interpreter`: "the `SNAKEPIT_*` variable when set,
/// otherwise the real binary behind the discovered program (a pyenv shim
/// costs about 100 ms a start), otherwise the program". With
/// `SNAKEPIT_PYTHON` naming a shim, the shim itself; without it, the
/// discovered program being a virtualenv's shim, the real binary behind
/// it.
#[test]
fn real_interpreter_is_the_variable_when_set_else_the_real_binary() {
    let dir = Dir::new("real-interpreter");
    let shim = dir.0.join("env/python-shim");
    let venv = dir.0.join("venv");
    if std::env::var_os(CHILD).is_none() {
        // Made here: in the test's own process `python()` is the shim.
        shim_to_python(&shim);
        shim_to_python(&venv.join("bin/python"));
    }
    if !in_own_process(
        "real_interpreter_is_the_variable_when_set_else_the_real_binary",
        &[
            ("SNAKEPIT_PYTHON", shim.to_str().unwrap()),
            ("VIRTUAL_ENV", venv.to_str().unwrap()),
        ],
        &[],
    ) {
        return;
    }
    let shim = PathBuf::from(std::env::var_os("SNAKEPIT_PYTHON").unwrap());
    assert_eq!(Language::Python.real_interpreter(), shim);

    std::env::remove_var("SNAKEPIT_PYTHON");
    let venv_python = PathBuf::from(std::env::var_os("VIRTUAL_ENV").unwrap()).join("bin/python");
    assert_eq!(Language::Python.find_interpreter(None), venv_python);
    let real = Language::Python.real_interpreter();
    assert_ne!(real, venv_python, "not the shim");
    assert!(real.is_absolute() && real.is_file(), "{real:?}");
    #[allow(clippy::disallowed_methods)] // probing the interpreter, not a worker
    let out = std::process::Command::new(&real)
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{real:?} runs: {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        real.to_str().unwrap(),
        "the binary the interpreter reports as itself"
    );
}

/// A shim for `program` (found on `PATH`) that notes each start in
/// `marker`, then runs it.
fn marking_shim(at: &Path, program: &str, marker: &Path) -> PathBuf {
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::fs::write(
        at,
        format!(
            "#!/bin/sh\necho started >> '{}'\nexec {program} \"$@\"\n",
            marker.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(at, std::fs::Permissions::from_mode(0o755)).unwrap();
    at.to_owned()
}

/// lib.rs: "Interpreters are found in this order: the path given to
/// `Bridge::interpreter`; the variable `SNAKEPIT_PYTHON`, `SNAKEPIT_NODE`
/// or `SNAKEPIT_RUBY` ...; then `python3`, `node` or `ruby` on `PATH`"
/// (promises.rs shows Python's). Node.js and Ruby workers, generic and
/// the user's own, run through the interpreter their variable names
/// (a shim that notes each start); without the variable, `node` and
/// `ruby` are looked up on `PATH`.
#[test]
fn snakepit_node_and_snakepit_ruby_name_the_interpreters() {
    let dir = Dir::new("node-ruby-variables");
    let node = dir.0.join("node-shim");
    let ruby = dir.0.join("ruby-shim");
    if !in_own_process(
        "snakepit_node_and_snakepit_ruby_name_the_interpreters",
        &[
            ("SNAKEPIT_NODE", node.to_str().unwrap()),
            ("SNAKEPIT_RUBY", ruby.to_str().unwrap()),
        ],
        &[],
    ) {
        return;
    }
    let dir = Dir::new("node-ruby-variables-child");
    let node_marker = dir.0.join("node-started");
    let ruby_marker = dir.0.join("ruby-started");
    let node = PathBuf::from(std::env::var_os("SNAKEPIT_NODE").unwrap());
    let ruby = PathBuf::from(std::env::var_os("SNAKEPIT_RUBY").unwrap());
    marking_shim(&node, "node", &node_marker);
    marking_shim(&ruby, "ruby", &ruby_marker);
    assert_eq!(Language::Node.find_interpreter(None), node);
    assert_eq!(Language::Ruby.find_interpreter(None), ruby);
    let js = dir.file(
        "w.js",
        "const { Worker } = require('snakepit-bridge');\n\
         new Worker({ commands: { async hi() { return { lang: 'node' }; } } }).run();\n",
    );
    let rb = dir.file(
        "w.rb",
        "require 'snakepit_bridge'\nw = SnakepitBridge::Worker.new\n\
         w.command('hi') { |_args, _ctx| { 'lang' => 'ruby' } }\nw.run\n",
    );
    let starts = |marker: &Path| {
        std::fs::read_to_string(marker)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    async fn serve_once(name: &str, adapter: impl Adapter, command: &str) {
        let pool = pool_of(adapter)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        pool.execute(command, json!({})).await.unwrap();
        pool.shutdown().await.unwrap();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        serve_once("GenericJavaScript", GenericJavaScript, "ping").await;
        assert_eq!(starts(&node_marker), 1, "GenericJavaScript");
        serve_once("GenericRuby", GenericRuby, "ping").await;
        assert_eq!(starts(&ruby_marker), 1, "GenericRuby");
        serve_once("Bridge::node", Bridge::node(&js), "hi").await;
        assert_eq!(starts(&node_marker), 2, "Bridge::node");
        serve_once("Bridge::ruby", Bridge::ruby(&rb), "hi").await;
        assert_eq!(starts(&ruby_marker), 2, "Bridge::ruby");
    });

    std::env::remove_var("SNAKEPIT_NODE");
    std::env::remove_var("SNAKEPIT_RUBY");
    assert_eq!(Language::Node.find_interpreter(None), PathBuf::from("node"));
    assert_eq!(Language::Ruby.find_interpreter(None), PathBuf::from("ruby"));
}

/// `Language::inspect`: "Never fails: what could not be found is `None`";
/// `Inspection::program`: "The interpreter the adapters would run";
/// `path`: "Where `program` is on `PATH`, when it was a bare name found
/// there". `SNAKEPIT_RUBY` naming no file: the program is that path, and
/// its path, version, real binary and every package are `None`. Python,
/// found as `python3` on `PATH`: its path is that file.
#[test]
fn inspect_of_a_missing_interpreter_is_all_none_and_never_fails() {
    if !in_own_process(
        "inspect_of_a_missing_interpreter_is_all_none_and_never_fails",
        &[("SNAKEPIT_RUBY", "/no/such/ruby")],
        &["SNAKEPIT_PYTHON", "VIRTUAL_ENV"],
    ) {
        return;
    }
    let ruby = Language::Ruby.inspect();
    assert_eq!(ruby.language, Language::Ruby);
    assert_eq!(ruby.program, PathBuf::from("/no/such/ruby"), "{ruby:?}");
    assert_eq!(ruby.path, None, "{ruby:?}");
    assert_eq!(ruby.version, None, "{ruby:?}");
    assert_eq!(ruby.real_binary, None, "{ruby:?}");
    assert!(!ruby.shim, "{ruby:?}");
    assert_eq!(ruby.packages.len(), Language::Ruby.bridge_packages().len());
    assert!(ruby.packages.iter().all(|(_, v)| v.is_none()), "{ruby:?}");
    assert_eq!(
        Language::Ruby.real_interpreter(),
        PathBuf::from("/no/such/ruby")
    );

    let py = Language::Python.inspect();
    assert_eq!(py.program, PathBuf::from("python3"), "{py:?}");
    let on_path = py.path.clone().expect("python3 is on PATH");
    assert!(
        on_path.is_absolute() && on_path.ends_with("python3") && on_path.is_file(),
        "{py:?}"
    );
}

/// lib.rs: "A missing interpreter or script fails the pool's start with
/// an error naming it and carrying the worker's stderr", for Node.js and
/// Ruby (languages.rs shows Python).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_node_or_ruby_interpreter_or_script_is_a_clear_start_error() {
    for (lang, bridge) in [
        ("node", Bridge::generic(Language::Node)),
        ("ruby", Bridge::generic(Language::Ruby)),
    ] {
        let missing = format!("/no/such/{lang}");
        let err = pool_of(bridge.interpreter(&missing)).await.unwrap_err();
        assert!(matches!(err, Error::StartFailed(_)), "{lang}: {err:?}");
        assert!(err.to_string().contains(&missing), "{lang}: {err}");
    }
    for (lang, bridge, script) in [
        (
            "node",
            Bridge::node("/no/such/worker.js"),
            "/no/such/worker.js",
        ),
        (
            "ruby",
            Bridge::ruby("/no/such/worker.rb"),
            "/no/such/worker.rb",
        ),
    ] {
        let err = pool_of(bridge).await.unwrap_err();
        let Error::StartFailed(e) = &err else {
            panic!("{lang}: {err:?}")
        };
        assert!(e.stderr_tail.contains(script), "{lang}: {err}");
        assert!(err.to_string().contains(script), "{lang}: {err}");
    }
}

/// `cwd`: "Runs the workers in this directory". A directory that does
/// not exist fails the start with an error that names it; the
/// interpreter, which is there, is not blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_working_directory_is_a_start_error_naming_it() {
    let missing = "/no/such/working/dir";
    let err = pool_of(Bridge::generic(Language::Python).cwd(missing))
        .await
        .unwrap_err();
    let Error::StartFailed(e) = &err else {
        panic!("{err:?}")
    };
    assert!(e.cause.contains(missing), "the directory is named: {err}");
    assert!(!e.cause.contains("not found (is it installed"), "{err}");
}

/// `Language::ALL`: "Every language with a bundled bridge"; `name`:
/// "`python`, `node` or `ruby`"; `install_hint`: how to install it "or
/// point the adapters at one" (its `SNAKEPIT_*` variable);
/// `bridge_packages`: "MessagePack (needed for that codec) and the
/// OpenTelemetry API (optional)", each with the command that installs it.
#[test]
fn languages_name_their_bridge_packages_and_how_to_install_them() {
    assert_eq!(
        Language::ALL,
        [Language::Python, Language::Node, Language::Ruby]
    );
    let names: Vec<&str> = Language::ALL.iter().map(|l| l.name()).collect();
    assert_eq!(names, ["python", "node", "ruby"]);
    for (lang, var, msgpack) in [
        (Language::Python, "SNAKEPIT_PYTHON", "msgpack"),
        (Language::Node, "SNAKEPIT_NODE", "@msgpack/msgpack"),
        (Language::Ruby, "SNAKEPIT_RUBY", "msgpack"),
    ] {
        assert!(lang.install_hint().contains(var), "{lang:?}");
        let packages = lang.bridge_packages();
        assert_eq!(packages.len(), 2, "{lang:?}: {packages:?}");
        assert_eq!(packages[0].name, msgpack, "{lang:?}");
        assert!(packages[0].needed_for.contains("msgpack"), "{lang:?}");
        assert!(packages[0].install.contains(msgpack), "{lang:?}");
        assert!(packages[1].name.contains("opentelemetry"), "{lang:?}");
        assert!(packages[1].needed_for.contains("optional"), "{lang:?}");
        assert!(packages[1].install.contains(packages[1].name), "{lang:?}");
    }
}

/// `Bridge::env`: a path variable given empty (`PYTHONPATH=""`, and the
/// like for Node and Ruby) adds no empty entry after the bridge's
/// directory: an empty entry would put the current directory on the
/// interpreter's import path.
#[test]
fn an_empty_path_variable_adds_no_empty_entry() {
    for (lang, var) in [
        (Language::Python, "PYTHONPATH"),
        (Language::Node, "NODE_PATH"),
        (Language::Ruby, "RUBYLIB"),
    ] {
        let launch = Bridge::generic(lang).env(var, "").launch();
        let value = launch
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.to_string_lossy().into_owned())
            .unwrap_or_else(|| panic!("{var} is set"));
        assert!(!value.is_empty(), "{var}");
        assert!(value.split(':').all(|p| !p.is_empty()), "{var}={value:?}");
    }
}
