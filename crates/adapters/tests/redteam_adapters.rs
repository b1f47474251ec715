//! Red-team tests of snakepit-adapters: what users and hostile
//! environments do to `Bridge` and the generic workers (odd paths, broken
//! interpreters, overriding variables, odd locales, preload edge cases).
//! Each must end in a typed `Error::StartFailed` that names the cause, or
//! in the documented behaviour; never a panic or a hang.
//!
//! Tests that change this process's environment or directory run in a
//! process of their own.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use snakepit_adapters::{Bridge, Language};
use snakepit_core::{Adapter, Error, Pool};

/// A generous bound for anything that must not hang.
const HANG: Duration = Duration::from_secs(120);

/// A fresh folder for one test's files, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "snakepit-redteam-adapters-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Dir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn file(&self, name: impl AsRef<Path>, text: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("dir");
        }
        std::fs::write(&path, text).expect("write file");
        path
    }

    fn exe(&self, name: &str, text: &str) -> PathBuf {
        let path = self.file(name, text);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const CHILD: &str = "SNAKEPIT_REDTEAM_ADAPTERS_CHILD";
const BASE: &str = "SNAKEPIT_REDTEAM_ADAPTERS_BASE";

/// The scratch folder of a test that runs in its own process: the
/// parent's, handed down in the environment (the child's pid differs).
fn own_base(name: &str) -> PathBuf {
    std::env::var_os(BASE).map_or_else(
        || std::env::temp_dir().join(format!("snakepit-redteam-{name}-{}", std::process::id())),
        PathBuf::from,
    )
}

/// Runs test `name` again in a process of its own, with `env` set and
/// `unset` removed; whether this call is that process (then the caller
/// runs the body).
fn in_own_process(name: &str, env: &[(&str, &OsString)], unset: &[&str]) -> bool {
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let mut cmd = snakepit_tests::this_test(name);
    cmd.arg("--include-ignored").env(CHILD, "1");
    cmd.env(BASE, own_base(name));
    for k in unset {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name} failed in its own process:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "{name} did not run in its own process: {stdout}"
    );
    false
}

/// Starts a pool of one worker of `adapter`, with roomy timeouts for a
/// loaded machine; bounded so that a hang fails the test.
async fn start(adapter: impl Adapter) -> Result<Pool, Error> {
    start_with(adapter, Duration::from_secs(60)).await
}

async fn start_with(adapter: impl Adapter, init: Duration) -> Result<Pool, Error> {
    let builder = Pool::builder(adapter).size(1).configure(|c| {
        c.worker_init_timeout = init;
        c.startup_timeout = init + Duration::from_secs(30);
    });
    tokio::time::timeout(HANG, builder.start())
        .await
        .expect("start() hung")
}

/// The start error, which must be `StartFailed`; its full text.
async fn start_error(adapter: impl Adapter) -> String {
    start_error_with(adapter, Duration::from_secs(60)).await
}

async fn start_error_with(adapter: impl Adapter, init: Duration) -> String {
    match start_with(adapter, init).await {
        Ok(pool) => {
            let _ = pool.shutdown().await;
            panic!("the pool started")
        }
        Err(e @ Error::StartFailed(_)) => e.to_string(),
        Err(e) => panic!("not StartFailed: {e:?}"),
    }
}

/// Starts `adapter`, calls `hi`, shuts down; the reply.
async fn hi(adapter: impl Adapter, what: &str) -> Value {
    let pool = start(adapter)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let r = pool
        .execute("hi", json!({"s": "héllo ☃ 😀"}))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    pool.shutdown().await.unwrap();
    r
}

const PY: &str = "import sys, snakepit_bridge\nw = snakepit_bridge.Worker()\n@w.command('hi')\ndef hi(args):\n    print('log é ☃')\n    return {'s': args['s'], 'argv': sys.argv[1:]}\nw.run()\n";
const JS: &str = "const { Worker } = require('snakepit-bridge');\nnew Worker({ commands: { hi: (args) => { console.log('log é ☃'); return { s: args.s, argv: process.argv.slice(2) }; } } }).run();\n";
const MJS: &str = "import { Worker } from 'snakepit-bridge';\nnew Worker({ commands: { hi: (args) => { console.log('log é ☃'); return { s: args.s, argv: process.argv.slice(2) }; } } }).run();\n";
const RB: &str = "require 'snakepit_bridge'\nw = SnakepitBridge::Worker.new\nw.command('hi') { |args, _ctx| puts 'log é ☃'; { 's' => args['s'], 'argv' => ARGV } }\nw.run\n";

/// A worker's file name, its source, and the bridge that runs it.
type Source = (&'static str, &'static str, fn(PathBuf) -> Bridge);

fn sources() -> [Source; 4] {
    [
        ("w.py", PY, |p| Bridge::python(p)),
        ("w.js", JS, |p| Bridge::node(p)),
        ("w.mjs", MJS, |p| Bridge::node(p)),
        ("w.rb", RB, |p| Bridge::ruby(p)),
    ]
}

// ---------------------------------------------------------------------
// Script paths
// ---------------------------------------------------------------------

/// Spaces, quotes, `$`, `#`, `%`, `?` and a newline in the directory of
/// the script: the path is an argument, never shell text or a URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_paths_with_spaces_quotes_and_newlines_run_in_every_language() {
    let dir = Dir::new("odd-paths");
    let odd = dir.path().join("a b'c\"d $HOME #x %20 ?q\nend");
    for (name, text, make) in sources() {
        let script = dir.file(odd.join(name), text);
        let r = hi(make(script).arg("x y").arg("--z"), name).await;
        assert_eq!(r["s"], "héllo ☃ 😀", "{name}");
        assert_eq!(
            r["argv"],
            json!(["--mode", "pool-worker", "x y", "--z"]),
            "{name}"
        );
    }
}

/// A script path that is not UTF-8: Python and Ruby take it as bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_utf8_script_path_runs_in_python_and_ruby() {
    let dir = Dir::new("non-utf8");
    let sub = dir
        .path()
        .join(OsString::from_vec(b"caf\xe9-\xff".to_vec()));
    for (name, text, make) in [sources()[0], sources()[3]] {
        let script = dir.file(sub.join(name), text);
        let r = hi(make(script), name).await;
        assert_eq!(r["s"], "héllo ☃ 😀", "{name}");
    }
}

/// Node decodes its argv as UTF-8: a non-UTF-8 script path may not run,
/// but then it is a start error, never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_utf8_node_script_path_runs_or_is_a_start_error() {
    let dir = Dir::new("non-utf8-node");
    let sub = dir.path().join(OsString::from_vec(b"n\xff".to_vec()));
    for (name, text, make) in [sources()[1], sources()[2]] {
        let script = dir.file(sub.join(name), text);
        match start(make(script)).await {
            Ok(pool) => pool.shutdown().await.unwrap(),
            Err(e) => assert!(matches!(e, Error::StartFailed(_)), "{name}: {e:?}"),
        }
    }
}

/// A script path that is a directory (with nothing runnable in it), or a
/// dangling symlink: a start error that names the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_is_a_directory_or_a_dangling_symlink_is_a_start_error_naming_it() {
    let dir = Dir::new("dir-script");
    let as_dir = dir.path().join("worker_dir");
    std::fs::create_dir_all(&as_dir).unwrap();
    let dangling = dir.path().join("dangling.x");
    std::os::unix::fs::symlink(dir.path().join("gone"), &dangling).unwrap();
    for script in [&as_dir, &dangling] {
        for (lang, bridge) in [
            ("python", Bridge::python(script)),
            ("node", Bridge::node(script)),
            ("ruby", Bridge::ruby(script)),
        ] {
            let err = start_error(bridge).await;
            let named = script.file_name().unwrap().to_str().unwrap();
            assert!(err.contains(named), "{lang} {script:?}: {err}");
        }
    }
}

/// A preloaded script at a relative path, run in another `.cwd`, with
/// arguments: every forked worker sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preloaded_relative_script_runs_in_its_cwd_with_its_arguments() {
    let dir = Dir::new("preload-relative");
    for (name, text, make) in [sources()[0], sources()[3]] {
        dir.file(Path::new("sub").join(name), text);
        let bridge = make(Path::new("sub").join(name))
            .cwd(dir.path())
            .args(["a b", "--c"])
            .preload();
        let r = hi(bridge, name).await;
        assert_eq!(
            r["argv"],
            json!(["--mode", "pool-worker", "a b", "--c"]),
            "{name}"
        );
    }
}

/// Strict interpreter settings a user's environment may carry (Python's
/// warnings as errors and dev mode, Node's thrown deprecations, Ruby's
/// frozen string literals) do not break the bridges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_interpreter_settings_do_not_break_the_bridges() {
    let dir = Dir::new("strict");
    for (name, text, make, vars) in [
        (
            "w.py",
            PY,
            sources()[0].2,
            &[("PYTHONWARNINGS", "error"), ("PYTHONDEVMODE", "1")][..],
        ),
        (
            "w.js",
            JS,
            sources()[1].2,
            &[("NODE_OPTIONS", "--throw-deprecation --pending-deprecation")][..],
        ),
        (
            "w.mjs",
            MJS,
            sources()[2].2,
            &[("NODE_OPTIONS", "--throw-deprecation --pending-deprecation")][..],
        ),
        (
            "w.rb",
            RB,
            sources()[3].2,
            &[("RUBYOPT", "--enable-frozen-string-literal -W:deprecated")][..],
        ),
    ] {
        let script = dir.file(name, text);
        let bridge = vars.iter().fold(make(script), |b, (k, v)| b.env(k, v));
        let r = hi(bridge, name).await;
        assert_eq!(r["s"], "héllo ☃ 😀", "{name}");
        let generic = vars
            .iter()
            .fold(Bridge::generic(lang_of(name)), |b, (k, v)| b.env(k, v));
        let pool = start(generic)
            .await
            .unwrap_or_else(|e| panic!("generic {name}: {e}"));
        let r = pool.execute("echo", json!({"s": "é"})).await.unwrap();
        assert_eq!(r["echoed"]["s"], "é", "{name}");
        pool.shutdown().await.unwrap();
    }
}

fn lang_of(name: &str) -> Language {
    match name.rsplit('.').next() {
        Some("py") => Language::Python,
        Some("rb") => Language::Ruby,
        _ => Language::Node,
    }
}

/// docs/bridges.md: "A relative script path is resolved in the worker's
/// working directory: the host's, unless `.cwd(dir)`", for every kind of
/// script, an ES module too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_script_path_is_resolved_in_the_workers_cwd() {
    let dir = Dir::new("relative");
    for (name, text, make) in sources() {
        dir.file(Path::new("sub").join(name), text);
        let r = hi(make(Path::new("sub").join(name)).cwd(dir.path()), name).await;
        assert_eq!(r["s"], "héllo ☃ 😀", "{name}");
    }
}

/// "The worker runs as `INTERPRETER SCRIPT --mode pool-worker`": a script
/// whose name starts with `-` is still the script, not an interpreter
/// option.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_whose_name_starts_with_a_dash_is_still_the_script() {
    let dir = Dir::new("dash");
    for (name, text, make) in [
        ("-w.py", PY, sources()[0].2),
        ("-w.js", JS, sources()[1].2),
        ("-w.rb", RB, sources()[3].2),
    ] {
        dir.file(name, text);
        let r = hi(make(PathBuf::from(name)).cwd(dir.path()), name).await;
        assert_eq!(r["s"], "héllo ☃ 😀", "{name}");
    }
}

/// An ES module worker that is a `.js` file in a `"type": "module"`
/// package imports the bridge as a `.mjs` one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_es_module_in_a_type_module_package_imports_the_bridge() {
    let dir = Dir::new("esm-js");
    dir.file("package.json", "{\"type\": \"module\"}\n");
    let script = dir.file("w.js", MJS);
    let r = hi(Bridge::node(script), "esm .js").await;
    assert_eq!(r["s"], "héllo ☃ 😀");
}

/// A CommonJS worker named `.cjs` inside a `"type": "module"` package
/// still `require`s the bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cjs_worker_in_a_type_module_package_requires_the_bridge() {
    let dir = Dir::new("cjs-in-esm");
    dir.file("package.json", "{\"type\": \"module\"}\n");
    let script = dir.file("w.cjs", JS);
    let r = hi(Bridge::node(script), "cjs").await;
    assert_eq!(r["s"], "héllo ☃ 😀");
}

/// An ES module worker that throws on import: a start error carrying the
/// module's own message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_es_module_that_throws_on_import_is_a_start_error_with_its_message() {
    let dir = Dir::new("esm-throws");
    let script = dir.file("w.mjs", "throw new Error('boom-esm-7731');\n");
    let err = start_error(Bridge::node(script)).await;
    assert!(err.contains("boom-esm-7731"), "{err}");
}

// ---------------------------------------------------------------------
// Modules
// ---------------------------------------------------------------------

/// `python_module` of a module that does not exist: a start error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_module_that_does_not_exist_is_a_start_error_naming_it() {
    let err = start_error(Bridge::python_module("no_such_module_4417.worker")).await;
    assert!(err.contains("no_such_module_4417"), "{err}");
}

// ---------------------------------------------------------------------
// Interpreters
// ---------------------------------------------------------------------

/// Broken interpreters: one that exits at once, one that prints garbage on
/// stdout, one that is not executable, one that is a directory. Each is a
/// start error, the ones that cannot run naming the program.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_interpreters_are_start_errors() {
    let dir = Dir::new("broken-interp");
    let exits = dir.exe(
        "exits",
        "#!/bin/sh\necho 'exiting-at-once-991' >&2\nexit 3\n",
    );
    let garbage = dir.exe(
        "garbage",
        "#!/bin/sh\nprintf 'GARBAGE GARBAGE GARBAGE\\n\\377\\376'\nexec sleep 30\n",
    );
    let plain = dir.file("not_executable", "#!/bin/sh\nexit 0\n");
    let as_dir = dir.path().join("a_dir");
    std::fs::create_dir_all(&as_dir).unwrap();
    for lang in Language::ALL {
        let err = start_error(Bridge::generic(lang).interpreter(&exits)).await;
        assert!(err.contains("exiting-at-once-991"), "{lang:?}: {err}");
        let _ = start_error(Bridge::generic(lang).interpreter(&garbage)).await;
        for program in [&plain, &as_dir] {
            let err = start_error(Bridge::generic(lang).interpreter(program)).await;
            assert!(
                err.contains(&program.display().to_string()),
                "{lang:?}: {err}"
            );
        }
    }
}

/// An interpreter that never answers (ignores stdin): the start fails at
/// the init timeout, with `StartFailed`, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interpreter_that_ignores_stdin_fails_the_start_at_the_init_timeout() {
    let dir = Dir::new("silent-interp");
    let silent = dir.exe("silent", "#!/bin/sh\nexec sleep 300 </dev/null\n");
    let err = start_error_with(
        Bridge::generic(Language::Python).interpreter(&silent),
        Duration::from_secs(3),
    )
    .await;
    assert!(!err.is_empty());
}

/// `.interpreter("python3")`, a bare name, is looked up on `PATH`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interpreter_given_by_bare_name_is_found_on_path() {
    for (lang, name) in [
        (Language::Python, "python3"),
        (Language::Node, "node"),
        (Language::Ruby, "ruby"),
    ] {
        let pool = start(Bridge::generic(lang).interpreter(name))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        pool.execute("ping", json!({})).await.unwrap();
        pool.shutdown().await.unwrap();
    }
}

/// `.interpreter(path)` at a path with spaces, quotes and non-ASCII
/// characters (a symlink to the real interpreter) runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interpreter_at_an_odd_path_runs() {
    let dir = Dir::new("odd-interp");
    let odd = dir.path().join("my ïnterp's \"bin\"");
    std::fs::create_dir_all(&odd).unwrap();
    for (lang, name) in [
        (Language::Python, "python3"),
        (Language::Node, "node"),
        (Language::Ruby, "ruby"),
    ] {
        let real = if lang == Language::Python {
            PathBuf::from(snakepit_tests::python())
        } else {
            lang.real_interpreter()
        };
        let link = odd.join(format!("{name} x"));
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let pool = start(Bridge::generic(lang).interpreter(&link))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        pool.execute("ping", json!({})).await.unwrap();
        pool.shutdown().await.unwrap();
    }
}

/// A relative `VIRTUAL_ENV` is checked in the host's directory: the
/// worker, run in another `.cwd`, must run that same interpreter.
#[test]
fn a_relative_virtual_env_is_the_hosts_even_with_another_cwd() {
    let base = own_base("a_relative_virtual_env_is_the_hosts_even_with_another_cwd");
    let venv_bin = base.join("venv/bin");
    let elsewhere = base.join("elsewhere");
    if !in_own_process(
        "a_relative_virtual_env_is_the_hosts_even_with_another_cwd",
        &[("VIRTUAL_ENV", &OsString::from("venv"))],
        &["SNAKEPIT_PYTHON"],
    ) {
        let _ = std::fs::remove_dir_all(&base);
        return;
    }
    std::fs::create_dir_all(&venv_bin).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(snakepit_tests::python(), venv_bin.join("python")).unwrap();
    std::env::set_current_dir(&base).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pool = start(Bridge::generic(Language::Python).cwd(&elsewhere))
            .await
            .expect("the virtualenv's python runs");
        pool.shutdown().await.unwrap();
    });
}

/// An empty `VIRTUAL_ENV` names no virtualenv, as an empty
/// `SNAKEPIT_PYTHON` names no interpreter: never `./bin/python`.
#[test]
fn an_empty_virtual_env_is_ignored() {
    let base = own_base("an_empty_virtual_env_is_ignored");
    if !in_own_process(
        "an_empty_virtual_env_is_ignored",
        &[("VIRTUAL_ENV", &OsString::new())],
        &["SNAKEPIT_PYTHON"],
    ) {
        let _ = std::fs::remove_dir_all(&base);
        return;
    }
    std::fs::create_dir_all(base.join("bin")).unwrap();
    std::fs::write(base.join("bin/python"), "#!/bin/sh\nexit 1\n").unwrap();
    std::env::set_current_dir(&base).unwrap();
    let program = Language::Python.find_interpreter(None);
    assert_eq!(program, PathBuf::from("python3"));
}

/// `SNAKEPIT_PYTHON` set to a program that does not exist: the start error
/// names it.
#[test]
fn a_missing_snakepit_python_is_a_start_error_naming_it() {
    if !in_own_process(
        "a_missing_snakepit_python_is_a_start_error_naming_it",
        &[("SNAKEPIT_PYTHON", &OsString::from("/no/such/py-6610"))],
        &[],
    ) {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let err = start_error(Bridge::generic(Language::Python)).await;
        assert!(err.contains("/no/such/py-6610"), "{err}");
    });
}

// ---------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------

/// The pool's own `SNAKEPIT_*` variables win over ones the user sets with
/// `.env`: a JSON pool keeps working when the user names another codec,
/// protocol or worker id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_snakepit_variables_do_not_override_the_pools_own() {
    for lang in Language::ALL {
        let bridge = Bridge::generic(lang)
            .env("SNAKEPIT_CODEC", "msgpack")
            .env("SNAKEPIT_PROTOCOL", "99")
            .env("SNAKEPIT_WORKER_ID", "evil")
            .env("SNAKEPIT_RUN_ID", "evil");
        let pool = start(bridge)
            .await
            .unwrap_or_else(|e| panic!("{lang:?}: {e}"));
        let r = pool.execute("echo", json!({"x": "é"})).await.unwrap();
        assert_eq!(r["echoed"]["x"], "é", "{lang:?}: {r}");
        pool.shutdown().await.unwrap();
    }
}

/// A module path set with `.env` that holds a fake bridge does not shadow
/// the bundled one (the bridge's directory comes first), in every language.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_bridge_on_the_users_module_path_does_not_shadow_the_bundled_one() {
    let dir = Dir::new("fake-bridge");
    dir.file(
        "py/snakepit_bridge/__init__.py",
        "raise SystemExit('FAKE BRIDGE')\n",
    );
    dir.file(
        "node/snakepit-bridge/index.js",
        "throw new Error('FAKE BRIDGE');\n",
    );
    dir.file(
        "node/snakepit-bridge/package.json",
        "{\"main\": \"index.js\"}\n",
    );
    dir.file("rb/snakepit_bridge.rb", "abort 'FAKE BRIDGE'\n");
    let scripts = Dir::new("fake-bridge-scripts");
    for (name, text, make, var, sub) in [
        ("w.py", PY, sources()[0].2, "PYTHONPATH", "py"),
        ("w.js", JS, sources()[1].2, "NODE_PATH", "node"),
        ("w.mjs", MJS, sources()[2].2, "NODE_PATH", "node"),
        ("w.rb", RB, sources()[3].2, "RUBYLIB", "rb"),
    ] {
        let script = scripts.file(name, text);
        let r = hi(make(script).env(var, dir.path().join(sub)), name).await;
        assert_eq!(r["s"], "héllo ☃ 😀", "{name}");
    }
}

/// Under `LC_ALL=C`, non-ASCII script paths, arguments, results and log
/// output pass through every bridge intact; and the generic `echo` too
/// with Python's locale coercion and UTF-8 mode off as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_ascii_passes_every_bridge_under_the_c_locale() {
    let dir = Dir::new("c-locale");
    let c = |b: Bridge| b.env("LC_ALL", "C").env("LANG", "C");
    // Python's C-locale rescue turned off too: argv would then be
    // surrogate-escaped ASCII (Python's own choice), so only payloads.
    let strict = |b: Bridge| {
        c(b).env("PYTHONCOERCECLOCALE", "0")
            .env("PYTHONUTF8", "0")
            .env("PYTHONIOENCODING", "")
    };
    for (name, text, make) in sources() {
        let script = dir.file(format!("é-{name}"), text);
        let r = hi(c(make(script)).arg("ärg ☃"), name).await;
        assert_eq!(r["s"], "héllo ☃ 😀", "{name}");
        assert_eq!(r["argv"][2], "ärg ☃", "{name}");
    }
    for lang in Language::ALL {
        let pool = start(strict(Bridge::generic(lang))).await.unwrap();
        let r = pool
            .execute("echo", json!({"s": "ünï ☃ 😀"}))
            .await
            .unwrap_or_else(|e| panic!("{lang:?}: {e}"));
        assert_eq!(r["echoed"]["s"], "ünï ☃ 😀", "{lang:?}: {r}");
        pool.shutdown().await.unwrap();
    }
}

/// A NUL byte in an argument, a variable or the script path cannot reach
/// a process: a start error, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_byte_in_an_argument_variable_or_path_is_a_start_error() {
    for bridge in [
        Bridge::generic(Language::Python).arg("a\0b"),
        Bridge::generic(Language::Python).env("A", "x\0y"),
        Bridge::generic(Language::Python).env("A\0B", "x"),
        Bridge::python("w\0.py"),
        Bridge::generic(Language::Python).interpreter("python\x003"),
    ] {
        let err = start_error(bridge).await;
        assert!(err.to_lowercase().contains("nul"), "{err}");
    }
}

/// Many arguments reach the worker in order; an argument list too long
/// for the system is a start error, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_args_list_reaches_the_worker_and_a_too_long_one_is_a_start_error() {
    let dir = Dir::new("args");
    let script = dir.file("w.py", PY);
    let many: Vec<String> = (0..20_000).map(|i| format!("arg-{i}")).collect();
    let r = hi(Bridge::python(&script).args(&many), "many").await;
    let argv = r["argv"].as_array().unwrap();
    assert_eq!(argv.len(), many.len() + 2);
    assert_eq!(argv[2], "arg-0");
    assert_eq!(argv[argv.len() - 1], "arg-19999");
    let err = start_error(Bridge::python(&script).arg("x".repeat(300 * 1024))).await;
    assert!(!err.is_empty());
}

// ---------------------------------------------------------------------
// The bridge directory
// ---------------------------------------------------------------------

/// A `SNAKEPIT_BRIDGE_DIR` that cannot be written (a file in its way): the
/// start error says the bundled bridges could not be written, and where,
/// rather than an interpreter's complaint about its arguments.
#[test]
fn an_unwritable_bridge_dir_is_named_in_the_start_error() {
    let base = own_base("an_unwritable_bridge_dir_is_named_in_the_start_error");
    let blocked = base.join("a_file").join("bridges");
    if !in_own_process(
        "an_unwritable_bridge_dir_is_named_in_the_start_error",
        &[("SNAKEPIT_BRIDGE_DIR", &blocked.clone().into_os_string())],
        &[],
    ) {
        let _ = std::fs::remove_dir_all(&base);
        return;
    }
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(base.join("a_file"), "").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let script = base.join("w.py");
        std::fs::write(&script, PY).unwrap();
        for bridge in [Bridge::generic(Language::Python), Bridge::python(&script)] {
            let err = start_error(bridge).await;
            assert!(err.contains(&blocked.display().to_string()), "{err}");
        }
    });
}

/// A bridge directory whose path holds a `:` cannot go on a module path:
/// the start error says so, rather than dropping the module path (the
/// user's entries too) and failing on a missing module.
#[test]
fn a_bridge_dir_with_a_colon_is_named_in_the_start_error() {
    let base = own_base("a_bridge_dir_with_a_colon_is_named_in_the_start_error");
    let bridges = base.join("a:b");
    // (the user's PYTHONPATH entry, `mine`, is lost along with the bridge's)
    if !in_own_process(
        "a_bridge_dir_with_a_colon_is_named_in_the_start_error",
        &[("SNAKEPIT_BRIDGE_DIR", &bridges.clone().into_os_string())],
        &[],
    ) {
        let _ = std::fs::remove_dir_all(&base);
        return;
    }
    let mine = base.join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("mine_mod_rt.py"), "X = 1\n").unwrap();
    let script = base.join("w.py");
    std::fs::write(&script, format!("import mine_mod_rt\n{PY}")).unwrap();
    let js = base.join("w.js");
    std::fs::write(&js, JS).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for (what, bridge) in [
            ("python", Bridge::python(&script).env("PYTHONPATH", &mine)),
            ("node", Bridge::node(&js)),
        ] {
            match start(bridge).await {
                Ok(pool) => pool.shutdown().await.unwrap(),
                Err(e) => {
                    let err = e.to_string();
                    assert!(err.contains("a:b"), "{what}: the directory is named: {err}");
                }
            }
        }
    });
}

// ---------------------------------------------------------------------
// Preload
// ---------------------------------------------------------------------

/// A preloaded script that exits at module level before `run()`, or that
/// never calls `run()`: a start error, promptly (not at the startup
/// timeout), never a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preloaded_script_that_exits_or_never_runs_is_a_start_error() {
    let dir = Dir::new("preload-exit");
    for (name, text, make) in [
        ("exit0.py", "import sys\nsys.exit(0)\n", sources()[0].2),
        (
            "exit5.py",
            "import sys\nprint('bye-5521', file=sys.stderr)\nsys.exit(5)\n",
            sources()[0].2,
        ),
        (
            "norun.py",
            "import snakepit_bridge\nw = snakepit_bridge.Worker()\n",
            sources()[0].2,
        ),
        ("exit0.rb", "exit 0\n", sources()[3].2),
        (
            "norun.rb",
            "require 'snakepit_bridge'\nw = SnakepitBridge::Worker.new\n",
            sources()[3].2,
        ),
    ] {
        let script = dir.file(name, text);
        let err = start_error(make(script).preload()).await;
        if name == "exit5.py" {
            assert!(err.contains("bye-5521"), "{name}: {err}");
        }
    }
}

/// A preloaded Python module (`python -m`), run from its package's
/// directory, serves as a preloaded script does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preloaded_python_module_serves() {
    let dir = Dir::new("preload-module");
    dir.file("pkg_rt/__init__.py", "");
    dir.file("pkg_rt/w.py", PY);
    let bridge = Bridge::python_module("pkg_rt.w")
        .cwd(dir.path())
        .env("PYTHONPATH", dir.path())
        .preload();
    let pool = start(bridge).await.unwrap();
    assert!(pool.template_pid().is_some());
    let r = pool.execute("hi", json!({"s": "é"})).await.unwrap();
    assert_eq!(r["s"], "é");
    pool.shutdown().await.unwrap();
}

/// A preloaded script in a directory with spaces, quotes and a newline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preloaded_script_at_an_odd_path_serves() {
    let dir = Dir::new("preload-odd");
    let odd = dir.path().join("p q'r\"s\nt");
    for (name, text, make) in [sources()[0], sources()[3]] {
        let script = dir.file(odd.join(name), text);
        let r = hi(make(script).preload(), name).await;
        assert_eq!(r["s"], "héllo ☃ 😀", "{name}");
    }
}

// ---------------------------------------------------------------------
// Output before the handshake
// ---------------------------------------------------------------------

/// A script that writes megabytes to stderr while it loads still starts:
/// its stderr is drained, never left to fill its pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabytes_of_stderr_while_loading_do_not_block_the_start() {
    let dir = Dir::new("stderr-flood");
    for (name, text, make) in [
        (
            "w.py",
            format!("import sys\nsys.stderr.write('e' * (8 << 20))\n{PY}"),
            sources()[0].2,
        ),
        (
            "w.js",
            format!("process.stderr.write('e'.repeat(8 << 20));\n{JS}"),
            sources()[1].2,
        ),
        (
            "w.rb",
            format!("$stderr.write('e' * (8 << 20))\n{RB}"),
            sources()[3].2,
        ),
    ] {
        let script = dir.file(name, &text);
        let r = hi(make(script), name).await;
        assert_eq!(r["s"], "héllo ☃ 😀", "{name}");
    }
}

/// An interpreter that is a shell script which exits at once but leaves a
/// background child holding its stdout and stderr: the start error says
/// the worker exited, rather than waiting out the init timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interpreter_that_exits_leaving_a_child_on_its_pipes_is_an_exit_error() {
    let dir = Dir::new("exit-leaving-child");
    let leaves = dir.exe(
        "leaves",
        "#!/bin/sh\n(exec sleep 200) &\necho 'left-a-child-3307' >&2\nexit 4\n",
    );
    let err = start_error_with(
        Bridge::generic(Language::Python).interpreter(&leaves),
        Duration::from_secs(60),
    )
    .await;
    assert!(err.contains("exit"), "{err}");
    assert!(err.contains("left-a-child-3307"), "{err}");
}
