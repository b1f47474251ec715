//! What docs/bridges.md ("Running workers from Rust") and the crate's docs
//! promise of the adapters, each against real worker processes: how a
//! worker is started (interpreter, command line, working directory, module
//! path, environment), which calls reach it, and its deadline.
//!
//! Tests that change this process's environment run in a process of their
//! own (this test binary, started again for that one test), so they hold
//! under any test runner.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use snakepit_adapters::{Bridge, Custom, GenericJavaScript, GenericPython, GenericRuby, Language};
use snakepit_core::{Error, Pool};
use snakepit_tests::python;

/// A Python worker on the bundled bridge that reports how it was started.
const REPORTING_WORKER: &str = r#"
import os, sys
import snakepit_bridge

worker = snakepit_bridge.Worker()
served = 0

@worker.command("report")
def report(args, ctx):
    global served
    served += 1
    with open("/proc/self/cmdline", "rb") as f:
        argv = [a.decode() for a in f.read().split(b"\0") if a]
    return {
        "argv": argv,
        "executable": sys.executable,
        "cwd": os.getcwd(),
        "pythonpath": os.environ.get("PYTHONPATH"),
        "bridge_file": snakepit_bridge.__file__,
        "timeout_ms": ctx.timeout_ms,
        "served": served,
    }

worker.run()
"#;

/// A worker without the bridge (JSON, no hello) that reports its command
/// line and environment.
const RAW_WORKER: &str = r#"
import json, os, struct, sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
while True:
    head = inp.read(4)
    if len(head) < 4:
        break
    req = json.loads(inp.read(struct.unpack(">I", head)[0]))
    with open("/proc/self/cmdline", "rb") as f:
        argv = [a.decode() for a in f.read().split(b"\0") if a]
    result = {"status": "ok", "argv": argv, "env": dict(os.environ)}
    data = json.dumps({"id": req["id"], "success": True, "result": result}).encode()
    out.write(struct.pack(">I", len(data)) + data)
    out.flush()
"#;

/// A fresh folder for one test's files, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "snakepit-adapters-promises-{name}-{}",
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

const CHILD: &str = "SNAKEPIT_ADAPTERS_PROMISES_CHILD";

/// Runs test `name` again in a process of its own, with `env` set there;
/// whether this call is that process (then the caller runs the body).
fn in_own_process(name: &str, env: &[(&str, &str)]) -> bool {
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let mut cmd = snakepit_tests::this_test(name);
    cmd.env(CHILD, "1");
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

async fn report(bridge: Bridge) -> Value {
    let pool = Pool::builder(bridge).size(1).start().await.unwrap();
    let r = pool.execute("report", json!({})).await.unwrap();
    pool.shutdown().await.unwrap();
    r
}

fn symlink_to_python(at: &Path) -> PathBuf {
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    let real = std::fs::canonicalize(python()).expect("the real interpreter");
    std::os::unix::fs::symlink(real, at).unwrap();
    at.to_owned()
}

/// lib.rs and bridges.md: "the path given to `Bridge::interpreter`; the
/// variable `SNAKEPIT_PYTHON` ...; for Python, the active virtualenv
/// (`VIRTUAL_ENV`); then `python3` ... on `PATH`".
#[test]
fn the_interpreter_is_the_explicit_one_then_snakepit_python_then_the_virtualenv() {
    if !in_own_process(
        "the_interpreter_is_the_explicit_one_then_snakepit_python_then_the_virtualenv",
        &[],
    ) {
        return;
    }
    let dir = Dir::new("interpreter");
    let script = dir.file("worker.py", REPORTING_WORKER);
    let venv = dir.0.join("venv");
    let venv_python = symlink_to_python(&venv.join("bin/python"));
    let env_python = symlink_to_python(&dir.0.join("env/python"));
    let explicit = symlink_to_python(&dir.0.join("explicit/python"));
    let rt = tokio::runtime::Runtime::new().unwrap();

    std::env::remove_var("SNAKEPIT_PYTHON");
    std::env::set_var("VIRTUAL_ENV", &venv);
    let r = rt.block_on(report(Bridge::python(&script)));
    assert_eq!(
        r["argv"][0],
        venv_python.to_str().unwrap(),
        "the virtualenv's: {r}"
    );

    std::env::set_var("SNAKEPIT_PYTHON", &env_python);
    let r = rt.block_on(report(Bridge::python(&script)));
    assert_eq!(
        r["argv"][0],
        env_python.to_str().unwrap(),
        "the variable's: {r}"
    );

    let r = rt.block_on(report(Bridge::python(&script).interpreter(&explicit)));
    assert_eq!(
        r["argv"][0],
        explicit.to_str().unwrap(),
        "the explicit one: {r}"
    );

    std::env::remove_var("SNAKEPIT_PYTHON");
    std::env::remove_var("VIRTUAL_ENV");
    assert_eq!(
        Language::Python.find_interpreter(None),
        PathBuf::from("python3"),
        "else python3, looked up on PATH"
    );
}

/// bridges.md: the bridge libraries are written to `$SNAKEPIT_BRIDGE_DIR`,
/// "which is put in front of `PYTHONPATH` ... (a value you set with `.env`
/// is kept after it)".
#[test]
fn the_bridge_is_written_to_snakepit_bridge_dir_in_front_of_the_users_pythonpath() {
    let dir = Dir::new("bridgedir");
    let cache = dir.0.join("cache");
    if !in_own_process(
        "the_bridge_is_written_to_snakepit_bridge_dir_in_front_of_the_users_pythonpath",
        &[("SNAKEPIT_BRIDGE_DIR", cache.to_str().unwrap())],
    ) {
        return;
    }
    let cache = PathBuf::from(std::env::var_os("SNAKEPIT_BRIDGE_DIR").unwrap());
    let script = dir.file("worker.py", REPORTING_WORKER);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(report(Bridge::python(&script).env("PYTHONPATH", "/mine")));
    let bridge_file = r["bridge_file"].as_str().unwrap();
    assert!(
        Path::new(bridge_file).starts_with(&cache),
        "the bridge comes from SNAKEPIT_BRIDGE_DIR: {r}"
    );
    let path: Vec<&str> = r["pythonpath"].as_str().unwrap().split(':').collect();
    assert_eq!(path.len(), 2, "{r}");
    assert!(
        Path::new(path[0]).starts_with(&cache),
        "the bridge first: {r}"
    );
    assert_eq!(path[1], "/mine", "the user's value after it: {r}");
}

/// Runs test `name` again in a process of its own with `TMPDIR` at `tmp`,
/// `extra` set, and neither `HOME`, `XDG_CACHE_HOME` nor
/// `SNAKEPIT_BRIDGE_DIR`; it must pass.
fn in_own_process_without_home(name: &str, tmp: &Path, extra: &[(&str, &str)]) {
    let mut cmd = snakepit_tests::this_test(name);
    cmd.env(CHILD, "1")
        .env("TMPDIR", tmp)
        .env_remove("HOME")
        .env_remove("XDG_CACHE_HOME")
        .env_remove("SNAKEPIT_BRIDGE_DIR");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} failed in its own process:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// This user's uid: the owner of a file it creates in `dir`.
fn own_uid(dir: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    let probe = dir.join(format!("uid-probe-{}", std::process::id()));
    std::fs::write(&probe, "").expect("the probe file");
    let uid = std::fs::metadata(&probe).expect("the probe file").uid();
    let _ = std::fs::remove_file(&probe);
    uid
}

/// `text` written to `dir/name` (a directory the test does not remove).
fn script_in(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("the script");
    path
}

/// docs/bridges.md: with neither `XDG_CACHE_HOME` nor `HOME` (a service,
/// say), the bridges are written to `$TMPDIR/snakepit-<uid>`, made private
/// (0700) to this user. One that other users can write (planted, it could
/// hold their code for every worker to import) is not used: the bridges go
/// to a new private directory of the process's own, and the planted one
/// gets nothing.
#[test]
fn without_home_the_bridges_go_to_a_private_directory_never_one_others_can_write() {
    const NAME: &str =
        "without_home_the_bridges_go_to_a_private_directory_never_one_others_can_write";
    if std::env::var_os(CHILD).is_none() {
        for planted in [false, true] {
            let dir = Dir::new(if planted { "planted" } else { "nohome" });
            let uid = own_uid(&dir.0);
            let tmp = dir.0.join("tmp");
            let user_dir = tmp.join(format!("snakepit-{uid}"));
            std::fs::create_dir_all(&tmp).expect("tmp");
            if planted {
                use std::os::unix::fs::PermissionsExt;
                std::fs::create_dir(&user_dir).expect("the planted directory");
                std::fs::set_permissions(&user_dir, std::fs::Permissions::from_mode(0o777))
                    .expect("mode 0777");
            }
            let expect = if planted { "planted" } else { "private" };
            in_own_process_without_home(NAME, &tmp, &[("EXPECT", expect)]);
            if planted {
                let entries: Vec<_> = std::fs::read_dir(&user_dir)
                    .expect("the planted directory")
                    .collect();
                assert!(
                    entries.is_empty(),
                    "nothing written to the planted directory"
                );
            }
        }
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let tmp = std::env::temp_dir();
    let uid = own_uid(&tmp);
    let user_dir = tmp.join(format!("snakepit-{uid}"));
    let script = script_in(&tmp, "worker.py", REPORTING_WORKER);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let events = snakepit_tests::Events::global();
    let r = rt.block_on(report(Bridge::python(&script)));
    let bridge_file = Path::new(r["bridge_file"].as_str().unwrap());
    match std::env::var("EXPECT").as_deref() {
        Ok("private") => {
            assert!(bridge_file.starts_with(&user_dir), "{r}");
            let mode = std::fs::metadata(&user_dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        }
        _ => {
            assert!(!bridge_file.starts_with(&user_dir), "{r}");
            let own = bridge_file
                .strip_prefix(&tmp)
                .ok()
                .and_then(|rest| rest.iter().next())
                .map(|first| first.to_string_lossy().into_owned())
                .unwrap_or_default();
            assert!(own.starts_with("snakepit-bridges-"), "{r}");
            let mode = std::fs::metadata(tmp.join(&own))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{mode:o}");
            // The warning says which directory was unsafe, why, and what
            // chooses where the bridges go.
            let warned = events.all().into_iter().any(|(_, level, fields)| {
                level == tracing::Level::WARN
                    && fields.iter().any(|(name, text)| {
                        name == "message"
                            && text.contains(&format!("{} is unsafe", user_dir.display()))
                            && text.contains("writable by other users")
                            && text.contains("SNAKEPIT_BRIDGE_DIR")
                    })
            });
            assert!(warned, "{:?}", events.all());
        }
    }
}

/// docs/bridges.md: the bridges are written to "`$XDG_CACHE_HOME/snakepit`
/// or `~/.cache/snakepit`" when `SNAKEPIT_BRIDGE_DIR` is not set.
#[test]
fn the_bridges_go_to_xdg_cache_home_else_home_dot_cache() {
    const NAME: &str = "the_bridges_go_to_xdg_cache_home_else_home_dot_cache";
    if std::env::var_os(CHILD).is_none() {
        let dir = Dir::new("cachehome");
        let tmp = dir.0.join("tmp");
        std::fs::create_dir_all(&tmp).expect("tmp");
        let xdg = dir.0.join("xdg");
        let home = dir.0.join("home");
        for (env, expect) in [
            (
                [
                    ("XDG_CACHE_HOME", xdg.to_str().unwrap()),
                    ("HOME", home.to_str().unwrap()),
                ],
                xdg.join("snakepit"),
            ),
            (
                [
                    ("HOME", home.to_str().unwrap()),
                    ("HOME", home.to_str().unwrap()),
                ],
                home.join(".cache/snakepit"),
            ),
        ] {
            let expect = expect.to_str().unwrap().to_owned();
            in_own_process_without_home(NAME, &tmp, &[env[0], env[1], ("EXPECT", expect.as_str())]);
        }
        return;
    }
    let tmp = std::env::temp_dir();
    let script = script_in(&tmp, "worker.py", REPORTING_WORKER);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(report(Bridge::python(&script)));
    let expect = PathBuf::from(std::env::var_os("EXPECT").unwrap());
    let bridge_file = Path::new(r["bridge_file"].as_str().unwrap());
    assert!(bridge_file.starts_with(&expect), "{expect:?}: {r}");
}

/// A bridge tree changed since it was written (here a bundled file edited
/// to fail on import) is written again before a worker runs it: what runs
/// is the bridge this build embeds.
#[test]
fn a_changed_bridge_file_is_written_again_before_a_worker_runs_it() {
    const NAME: &str = "a_changed_bridge_file_is_written_again_before_a_worker_runs_it";
    if std::env::var_os(CHILD).is_some() {
        let work = PathBuf::from(std::env::var_os("WORK").unwrap());
        let script = script_in(&work, "worker.py", REPORTING_WORKER);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let r = rt.block_on(report(Bridge::python(&script)));
        assert!(r["bridge_file"].is_string(), "{r}");
        return;
    }
    let dir = Dir::new("changed");
    let cache = dir.0.join("cache");
    let env = [
        ("SNAKEPIT_BRIDGE_DIR", cache.to_str().unwrap()),
        ("WORK", dir.0.to_str().unwrap()),
    ];
    assert!(!in_own_process(NAME, &env));
    let tree = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("bridges-"))
        })
        .expect("the bridges were written");
    let wire = tree.join("python/snakepit_bridge/_wire.py");
    let original = std::fs::read(&wire).unwrap();
    std::fs::write(&wire, "raise SystemExit('planted')\n").unwrap();
    assert!(!in_own_process(NAME, &env));
    assert!(std::fs::read(&wire).unwrap() == original, "written again");
}

/// bridges.md: "The worker runs as `INTERPRETER SCRIPT --mode pool-worker
/// [ARGS...]` (Python gets `-u` before the script). A relative script path
/// is resolved in the worker's working directory: the host's, unless
/// `.cwd(dir)`."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_worker_runs_as_interpreter_u_script_mode_pool_worker_args_in_its_cwd() {
    let dir = Dir::new("argv");
    dir.file("workers/worker.py", REPORTING_WORKER);
    let r = report(
        Bridge::python("workers/worker.py")
            .cwd(&dir.0)
            .arg("--extra")
            .arg("1"),
    )
    .await;
    let argv: Vec<&str> = r["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        argv[1..],
        [
            "-u",
            "workers/worker.py",
            "--mode",
            "pool-worker",
            "--extra",
            "1"
        ],
        "{r}"
    );
    assert_eq!(
        Path::new(r["cwd"].as_str().unwrap()),
        std::fs::canonicalize(&dir.0).unwrap(),
        "{r}"
    );
}

/// bridges.md: `Bridge::python_module("pkg.worker")` runs as `python -m`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_module_runs_with_dash_m() {
    let dir = Dir::new("module");
    dir.file("pkg/__init__.py", "");
    dir.file("pkg/worker.py", REPORTING_WORKER);
    let r = report(Bridge::python_module("pkg.worker").cwd(&dir.0)).await;
    let argv = r["argv"].as_array().unwrap();
    let m = argv.iter().position(|a| a == "-m").expect("-m");
    assert_eq!(argv[m + 1], "pkg.worker", "{r}");
    assert!(argv.iter().any(|a| a == "pool-worker"), "{r}");
}

/// bridges.md: "`.supported_commands([...])` (calls to other commands fail
/// in the pool with `Error::UnsupportedCommand` without reaching a worker)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supported_commands_refuse_the_others_without_reaching_a_worker() {
    let dir = Dir::new("supported");
    let script = dir.file("worker.py", REPORTING_WORKER);
    let pool = Pool::builder(Bridge::python(&script).supported_commands(["report"]))
        .size(1)
        .start()
        .await
        .unwrap();
    let err = pool.execute("other", json!({})).await.unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedCommand(ref c) if c == "other"),
        "{err}"
    );
    assert!(err.never_ran(), "{err}");
    let r = pool.execute("report", json!({})).await.unwrap();
    assert_eq!(r["served"], 1, "the refused call never reached the worker");
    pool.shutdown().await.unwrap();
}

/// bridges.md: "`.command_timeout(Duration)` (default 30 s)"; "A call
/// that is not given a timeout gets the adapter's `command_timeout`".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_without_a_timeout_gets_the_command_timeout_30_s_by_default() {
    let dir = Dir::new("timeout");
    let script = dir.file("worker.py", REPORTING_WORKER);
    let r = report(Bridge::python(&script)).await;
    let left = r["timeout_ms"].as_u64().expect("timeout_ms");
    assert!(left > 20_000 && left <= 30_000, "30 s by default: {r}");
    let r = report(Bridge::python(&script).command_timeout(Duration::from_secs(5))).await;
    let left = r["timeout_ms"].as_u64().expect("timeout_ms");
    assert!(left > 1_000 && left <= 5_000, "as set: {r}");
}

/// bridges.md: "`Custom::new(program)`: any executable that speaks the
/// protocol. Nothing is added to its command line, and nothing to its
/// environment but the pool's `SNAKEPIT_*` variables".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_adds_nothing_but_the_snakepit_variables() {
    let dir = Dir::new("custom");
    let script = dir.file("raw.py", RAW_WORKER);
    let pool = Pool::builder(Custom::new(python()).arg(&script).env("MINE", "1"))
        .size(1)
        .start()
        .await
        .unwrap();
    let r = pool.execute("anything", json!({})).await.unwrap();
    pool.shutdown().await.unwrap();
    let argv = r["argv"].as_array().unwrap();
    assert_eq!(argv.len(), 2, "{r}");
    assert_eq!(argv[1], script.to_str().unwrap(), "{r}");
    let env = r["env"].as_object().unwrap();
    assert_eq!(env["MINE"], "1");
    for key in env.keys() {
        if std::env::var_os(key).is_none() && key != "MINE" {
            assert!(key.starts_with("SNAKEPIT_"), "{key} was added: {r}");
        }
    }
    assert_eq!(
        env.get("PYTHONPATH").and_then(Value::as_str),
        std::env::var("PYTHONPATH").ok().as_deref(),
        "no module path added: {r}"
    );
}

/// lib.rs: "`GenericPython`, `GenericJavaScript`, `GenericRuby`: the
/// bundled bridges with the generic commands"; `Bridge::generic` is the
/// same; protocol.md section 7 names each one's `bridge_type`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generic_workers_of_each_language_answer_the_generic_commands() {
    async fn check(pool: Pool, bridge_type: &str) {
        let r = pool.execute("ping", json!({"x": 1})).await.unwrap();
        assert_eq!(r["status"], "ok");
        assert_eq!(r["bridge_type"], bridge_type, "{r}");
        assert_eq!(r["echo"]["x"], 1, "{r}");
        assert!(r["pid"].is_u64(), "{r}");
        let r = pool
            .execute("compute", json!({"operation": "subtract", "a": 5, "b": 3}))
            .await
            .unwrap();
        assert_eq!(r["result"], 2, "{r}");
        let r = pool.execute("echo", json!({"m": "hi"})).await.unwrap();
        assert_eq!(r["echoed"]["m"], "hi", "{r}");
        let r = pool.execute("info", json!({})).await.unwrap();
        assert!(r["bridge_info"]["supported_commands"].is_array(), "{r}");
        pool.shutdown().await.unwrap();
    }
    check(
        Pool::builder(GenericPython).size(1).start().await.unwrap(),
        "generic",
    )
    .await;
    check(
        Pool::builder(GenericJavaScript)
            .size(1)
            .start()
            .await
            .unwrap(),
        "generic_javascript",
    )
    .await;
    check(
        Pool::builder(GenericRuby).size(1).start().await.unwrap(),
        "generic_ruby",
    )
    .await;
    check(
        Pool::builder(Bridge::generic(Language::Ruby))
            .size(1)
            .start()
            .await
            .unwrap(),
        "generic_ruby",
    )
    .await;
}

/// lib.rs: "[`Language::inspect`] reports what a machine has: the
/// interpreter, its version and real binary, and the bridge packages."
#[test]
fn inspect_reports_the_interpreter_its_version_real_binary_and_packages() {
    let i = Language::Python.inspect();
    assert!(
        i.version
            .as_deref()
            .is_some_and(|v| v.starts_with("Python 3")),
        "{i:?}"
    );
    let real = i.real_binary.clone().expect("the real binary");
    assert!(real.is_absolute() && real.exists(), "{i:?}");
    let names: Vec<&str> = i.packages.iter().map(|(p, _)| p.name).collect();
    assert!(names.contains(&"msgpack"), "{i:?}");
}
