//! Round 5 of outside review of snakepit-adapters: the bundled bridges'
//! cache written by several hosts at once, by a host that crashed or ran
//! out of room, interpreters that are wrappers or too old, a Node.js
//! script that Node runs as an ES module by its syntax, the generic
//! workers preloaded, what `Language::inspect` reports, and odd script
//! arguments.
//!
//! Tests that change this process's environment or limits run in a
//! process of their own.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use snakepit_adapters::{Bridge, GenericPython, Language};
use snakepit_core::{Adapter, Error, Pool};

/// A generous bound for anything that must not hang.
const HANG: Duration = Duration::from_secs(180);

/// A fresh folder for one test's files, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "snakepit-round5-adapters-{name}-{}",
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

/// Set in a test's own process; its value is the role it plays there.
const CHILD: &str = "SNAKEPIT_ROUND5_ADAPTERS_CHILD";

/// Test `name` run again in a process of its own with `env` set; not
/// waited for.
fn spawn_own_process(name: &str, role: &str, env: &[(&str, &Path)]) -> std::process::Child {
    spawn_own_process_without(name, role, env, &[])
}

/// As [`spawn_own_process`], with the variables `unset` removed.
fn spawn_own_process_without(
    name: &str,
    role: &str,
    env: &[(&str, &Path)],
    unset: &[&str],
) -> std::process::Child {
    let mut cmd = snakepit_tests::this_test(name);
    cmd.arg("--include-ignored").env(CHILD, role);
    for k in unset {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the test binary runs")
}

/// Waits for a process started by [`spawn_own_process`]; its output, after
/// checking that the test passed there.
fn passed(child: std::process::Child, what: &str) -> String {
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let text = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{what} failed in its own process:\n{text}"
    );
    text
}

/// Runs test `name` in a process of its own with `env`, and checks it
/// passed there.
fn in_own_process(name: &str, role: &str, env: &[(&str, &Path)]) -> String {
    passed(spawn_own_process(name, role, env), name)
}

/// This process's role, when it is a test's own process.
fn role() -> Option<String> {
    std::env::var(CHILD).ok()
}

/// Starts a pool of one worker of `adapter`, with roomy timeouts for a
/// loaded machine; bounded so that a hang fails the test.
async fn start(adapter: impl Adapter) -> Result<Pool, Error> {
    let builder = Pool::builder(adapter).size(1).configure(|c| {
        c.worker_init_timeout = Duration::from_secs(60);
        c.startup_timeout = Duration::from_secs(90);
    });
    tokio::time::timeout(HANG, builder.start())
        .await
        .expect("start() hung")
}

/// The start error, which must be `StartFailed`; its full text.
async fn start_error(adapter: impl Adapter) -> String {
    match start(adapter).await {
        Ok(pool) => {
            let _ = pool.shutdown().await;
            panic!("the pool started")
        }
        Err(e @ Error::StartFailed(_)) => e.to_string(),
        Err(e) => panic!("not StartFailed: {e:?}"),
    }
}

/// Starts `adapter`, runs `command` with `args`, shuts down; the reply.
async fn call(adapter: impl Adapter, command: &str, args: Value) -> Value {
    let pool = start(adapter).await.unwrap_or_else(|e| panic!("{e}"));
    let r = pool
        .execute(command, args)
        .await
        .unwrap_or_else(|e| panic!("{command}: {e}"));
    pool.shutdown().await.unwrap();
    r
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The `bridges-<hash>` trees and anything else under a cache directory.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

// ---------------------------------------------------------------------
// The bridges' cache, written by several hosts at once
// ---------------------------------------------------------------------

/// In its own process: waits for the file `SNAKEPIT_ROUND5_GO`, then
/// starts a Python pool on the bundled generic worker and pings it.
fn a_host_waiting_for_the_go() {
    let go = PathBuf::from(std::env::var_os("SNAKEPIT_ROUND5_GO").expect("go file"));
    runtime().block_on(async {
        assert!(
            snakepit_tests::eventually(120, || go.exists()).await,
            "no go within 120 s"
        );
        let r = call(GenericPython, "ping", json!({})).await;
        assert_eq!(r["status"], "ok", "{r}");
    });
}

/// docs/bridges.md: the bridges are "written once to a cache directory";
/// ARCHITECTURE.md: each write goes "to a directory of that write's own,
/// renamed into place". Six host processes making their first use of one
/// new cache at the same moment all start a worker, and what is left is
/// one tree and nothing half-written beside it.
#[test]
fn hosts_writing_a_new_cache_at_once_all_start_their_workers() {
    const NAME: &str = "hosts_writing_a_new_cache_at_once_all_start_their_workers";
    if role().is_some() {
        a_host_waiting_for_the_go();
        return;
    }
    let dir = Dir::new("race-new");
    for round in 0..3 {
        let cache = dir.path().join(format!("cache-{round}"));
        let go = dir.path().join(format!("go-{round}"));
        let hosts: Vec<_> = (0..6)
            .map(|_| {
                spawn_own_process(
                    NAME,
                    "host",
                    &[("SNAKEPIT_BRIDGE_DIR", &cache), ("SNAKEPIT_ROUND5_GO", &go)],
                )
            })
            .collect();
        std::fs::write(&go, "").unwrap();
        for (n, host) in hosts.into_iter().enumerate() {
            passed(host, &format!("round {round}, host {n}"));
        }
        let left = entries(&cache);
        assert_eq!(left.len(), 1, "round {round}: {left:?}");
        assert!(left[0].starts_with("bridges-"), "{left:?}");
    }
}

/// As above, but the cache holds a tree of this version that was changed
/// since it was written (as by a user's edit): every host sees the change,
/// and each replaces the tree or finds it replaced; all of them start.
#[test]
fn hosts_replacing_a_changed_tree_at_once_all_start_their_workers() {
    const NAME: &str = "hosts_replacing_a_changed_tree_at_once_all_start_their_workers";
    match role().as_deref() {
        Some("write") => {
            Adapter::check(&GenericPython).expect("the tree is written");
            return;
        }
        Some(_) => {
            a_host_waiting_for_the_go();
            return;
        }
        None => {}
    }
    let dir = Dir::new("race-changed");
    let cache = dir.path().join("cache");
    in_own_process(NAME, "write", &[("SNAKEPIT_BRIDGE_DIR", &cache)]);
    let tree = cache.join(&entries(&cache)[0]);
    let version = tree.join("python/snakepit_bridge/_version.py");
    let original = std::fs::read(&version).unwrap();
    for round in 0..8 {
        // Changed, as a user's edit would change it.
        let mut changed = original.clone();
        changed.extend_from_slice(b"\nraise SystemExit('a changed tree ran')\n");
        std::fs::write(&version, &changed).unwrap();
        let go = dir.path().join(format!("go-{round}"));
        let hosts: Vec<_> = (0..6)
            .map(|_| {
                spawn_own_process(
                    NAME,
                    "host",
                    &[("SNAKEPIT_BRIDGE_DIR", &cache), ("SNAKEPIT_ROUND5_GO", &go)],
                )
            })
            .collect();
        std::fs::write(&go, "").unwrap();
        let mut failed = Vec::new();
        for (n, host) in hosts.into_iter().enumerate() {
            let out = host.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !(out.status.success() && stdout.contains("1 passed")) {
                failed.push(format!(
                    "host {n}:\n{stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        assert!(
            failed.is_empty(),
            "round {round}:\n{}",
            failed.join("\n---\n")
        );
        assert_eq!(std::fs::read(&version).unwrap(), original, "round {round}");
        let left = entries(&cache);
        assert_eq!(left.len(), 1, "round {round}: {left:?}");
    }
}

/// A host that died while writing the tree leaves it without its
/// `.complete` mark, with a file cut short, and its own write directory
/// beside it: the next host writes the tree again and starts, running
/// neither that tree nor an older version's beside it.
#[test]
fn a_tree_a_crashed_host_left_half_written_is_written_again() {
    const NAME: &str = "a_tree_a_crashed_host_left_half_written_is_written_again";
    match role().as_deref() {
        Some("write") => {
            Adapter::check(&GenericPython).expect("the tree is written");
            return;
        }
        Some(_) => {
            runtime().block_on(async {
                for adapter in [
                    Bridge::generic(Language::Python),
                    Bridge::generic(Language::Ruby),
                ] {
                    let r = call(adapter, "ping", json!({})).await;
                    assert_eq!(r["status"], "ok", "{r}");
                }
            });
            return;
        }
        None => {}
    }
    let dir = Dir::new("half-written");
    let cache = dir.path().join("cache");
    in_own_process(NAME, "write", &[("SNAKEPIT_BRIDGE_DIR", &cache)]);
    let name = entries(&cache).remove(0);
    let tree = cache.join(&name);
    let worker_rb = tree.join("ruby/lib/snakepit_bridge/worker.rb");
    let whole = std::fs::read(&worker_rb).unwrap();
    std::fs::remove_file(tree.join(".complete")).unwrap();
    std::fs::write(&worker_rb, &whole[..whole.len() / 2]).unwrap();
    let leftover = cache.join(format!("{name}.tmp999999-0"));
    std::fs::create_dir_all(leftover.join("python")).unwrap();
    std::fs::write(leftover.join("python/generic_worker.py"), "import sys\n").unwrap();
    // And the tree of another version of the bridge, which is not run
    // (each version has a directory of its own) nor removed.
    let older = cache.join("bridges-0000000000000000");
    let older_worker = older.join("python/generic_worker.py");
    std::fs::create_dir_all(older_worker.parent().unwrap()).unwrap();
    std::fs::write(&older_worker, "raise SystemExit('an older tree ran')\n").unwrap();
    in_own_process(NAME, "host", &[("SNAKEPIT_BRIDGE_DIR", &cache)]);
    assert!(tree.join(".complete").exists());
    assert_eq!(std::fs::read(&worker_rb).unwrap(), whole);
    assert!(older_worker.exists());
}

/// docs/bridges.md: "When they cannot be written ... `start()` fails with
/// `Error::StartFailed` naming the directory (`Adapter::check`), before
/// any worker is spawned." A disk that fills up in the middle of the
/// write (here: a file size limit, which fails a write as a full disk
/// does) is such a case; nothing half-written is left in the cache, and a
/// host with room afterwards writes the tree and starts.
#[test]
fn a_disk_full_in_the_middle_of_the_write_is_a_start_error_and_leaves_nothing() {
    const NAME: &str = "a_disk_full_in_the_middle_of_the_write_is_a_start_error_and_leaves_nothing";
    if role().is_some() {
        let cache = PathBuf::from(std::env::var_os("SNAKEPIT_BRIDGE_DIR").unwrap());
        // SAFETY: plain libc calls on this process's own signal and limit.
        #[allow(unsafe_code)]
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let mut limit: libc::rlimit = std::mem::zeroed();
            assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit), 0);
            let hard = limit.rlim_max;
            limit.rlim_cur = 4096;
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
            runtime().block_on(async {
                for language in [Language::Python, Language::Node, Language::Ruby] {
                    let err = start_error(Bridge::generic(language)).await;
                    assert!(err.contains(&cache.display().to_string()), "{err}");
                    let left: Vec<String> = entries(&cache);
                    assert!(left.is_empty(), "left in the cache: {left:?}");
                }
            });
            limit.rlim_cur = hard;
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
        }
        runtime().block_on(async {
            let r = call(GenericPython, "ping", json!({})).await;
            assert_eq!(r["status"], "ok", "{r}");
        });
        return;
    }
    let dir = Dir::new("disk-full");
    let cache = dir.path().join("cache");
    in_own_process(NAME, "host", &[("SNAKEPIT_BRIDGE_DIR", &cache)]);
    assert_eq!(entries(&cache).len(), 1, "{:?}", entries(&cache));
}

// ---------------------------------------------------------------------
// Interpreters
// ---------------------------------------------------------------------

/// A wrapper that prints a line to stdout before it runs the interpreter
/// (a virtualenv activation that says so, say) puts bytes before the
/// handshake on the pipe the pool reads frames from: the start fails with
/// `StartFailed`, at once, with the message README.md's Troubleshooting
/// names, and never waits for the line's first bytes' worth of frame. The same wrapper printing to stderr instead starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrapper_that_prints_to_stdout_fails_the_start_and_one_using_stderr_serves() {
    let dir = Dir::new("chatty-wrapper");
    let python = snakepit_tests::python();
    let chatty = dir.exe(
        "chatty-python",
        &format!("#!/bin/sh\necho 'activating the virtualenv'\nexec '{python}' \"$@\"\n"),
    );
    let err = start_error(Bridge::generic(Language::Python).interpreter(&chatty)).await;
    // README.md, Troubleshooting: "`Protocol ... frame of N bytes exceeds
    // the maximum`: ... something wrote to the worker's stdout, whose text
    // was read as a length (an N in the hundreds of millions or more)".
    let n: u64 = u64::from(u32::from_be_bytes(*b"acti"));
    assert!(
        err.contains(&format!("frame of {n} bytes exceeds the maximum")),
        "{err}"
    );
    let quiet = dir.exe(
        "quiet-python",
        &format!("#!/bin/sh\necho 'activating the virtualenv' >&2\nexec '{python}' \"$@\"\n"),
    );
    let r = call(
        Bridge::generic(Language::Python).interpreter(&quiet),
        "echo",
        json!({"x": 1}),
    )
    .await;
    assert_eq!(r["echoed"]["x"], 1, "{r}");
}

/// docs/bridges.md: the Python bridge needs Python 3.8+, and `start()`
/// fails "with `Error::StartFailed`, whose message carries the failing
/// worker's last stderr lines". An interpreter too old for the bridge
/// (Python 2.7, 3.6, 3.7) is such a failure, and the message says what is
/// needed and what was found, rather than a syntax error in one of the
/// bridge's modules. Skipped where no such interpreter is installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_too_old_for_the_bridge_is_a_start_error_naming_the_version_needed() {
    let mut tried = 0;
    for (old, version) in [
        ("/root/.pyenv/versions/2.7.18/bin/python", "2.7.18"),
        ("/root/.pyenv/versions/3.6.15/bin/python", "3.6.15"),
        ("/root/.pyenv/versions/3.7.16/bin/python", "3.7.16"),
    ] {
        if !Path::new(old).exists() {
            eprintln!("{old} is not installed here: not tried");
            continue;
        }
        tried += 1;
        let err = start_error(Bridge::generic(Language::Python).interpreter(old)).await;
        assert!(
            err.contains(&format!(
                "snakepit_bridge needs Python 3.8 or later; {old} is Python {version}"
            )),
            "{old}: {err}"
        );
    }
    eprintln!("{tried} old interpreters tried");
}

/// Each generic bridge run by another language's interpreter (a
/// `SNAKEPIT_RUBY` naming Node.js, say): `StartFailed` with that
/// interpreter's own complaint in it, never a hang.
#[test]
fn an_interpreter_of_another_language_is_a_start_error() {
    const NAME: &str = "an_interpreter_of_another_language_is_a_start_error";
    if role().is_some() {
        runtime().block_on(async {
            for language in Language::ALL {
                let err = start_error(Bridge::generic(language)).await;
                assert!(err.contains("stderr ends with"), "{language:?}: {err}");
            }
        });
        return;
    }
    let python = PathBuf::from(snakepit_tests::python());
    in_own_process(
        NAME,
        "host",
        &[
            ("SNAKEPIT_PYTHON", Path::new("ruby")),
            ("SNAKEPIT_NODE", &python),
            ("SNAKEPIT_RUBY", Path::new("node")),
        ],
    );
}

/// lib.rs: "then `python3`, `node` or `ruby` on `PATH`. A missing
/// interpreter ... fails the pool's start with an error naming it";
/// `Language::inspect` "never fails". With none of them on `PATH` and no
/// variable naming one, each start names its program and inspection finds
/// nothing.
#[test]
fn without_the_interpreter_on_path_the_start_error_names_it() {
    const NAME: &str = "without_the_interpreter_on_path_the_start_error_names_it";
    if role().is_some() {
        runtime().block_on(async {
            for (language, program) in [
                (Language::Python, "python3"),
                (Language::Node, "node"),
                (Language::Ruby, "ruby"),
            ] {
                let err = start_error(Bridge::generic(language)).await;
                // README.md, Troubleshooting, word for word.
                let readme =
                    format!("cannot run `{program}`: not found (is it installed and on PATH?)");
                assert!(err.contains(&readme), "{language:?}: {err}");
                let found = language.inspect();
                assert_eq!(found.program, PathBuf::from(program));
                assert_eq!(found.path, None, "{found:?}");
                assert_eq!(found.version, None, "{found:?}");
                assert!(found.packages.iter().all(|(_, v)| v.is_none()));
            }
        });
        return;
    }
    let dir = Dir::new("no-interpreters");
    let empty = dir.path().join("empty-bin");
    std::fs::create_dir_all(&empty).unwrap();
    let child = spawn_own_process_without(
        NAME,
        "host",
        &[("PATH", &empty)],
        &[
            "SNAKEPIT_PYTHON",
            "SNAKEPIT_NODE",
            "SNAKEPIT_RUBY",
            "VIRTUAL_ENV",
        ],
    );
    passed(child, NAME);
}

/// `Inspection::path` is "where `program` is on `PATH`": where the OS
/// finds it, which skips a file of that name that cannot be executed. A
/// `python3` without its execute bit early on `PATH` is not reported as
/// the interpreter; the one that runs is.
#[test]
fn inspect_reports_the_interpreter_that_runs_not_a_file_that_cannot() {
    const NAME: &str = "inspect_reports_the_interpreter_that_runs_not_a_file_that_cannot";
    let dir_name = std::env::var_os("SNAKEPIT_ROUND5_DIR");
    if role().is_some() {
        let dir = PathBuf::from(dir_name.expect("dir"));
        let found = Language::Python.inspect();
        assert_eq!(found.path, Some(dir.join("real/python3")), "{found:?}");
        assert!(
            found
                .version
                .as_deref()
                .is_some_and(|v| v.starts_with("Python 3")),
            "{found:?}"
        );
        return;
    }
    let dir = Dir::new("inspect-non-exec");
    dir.file("first/python3", "#!/bin/sh\necho 'Python 0.0.0'\n");
    std::fs::create_dir_all(dir.path().join("real")).unwrap();
    std::os::unix::fs::symlink(snakepit_tests::python(), dir.path().join("real/python3")).unwrap();
    let path = std::env::join_paths([dir.path().join("first"), dir.path().join("real")]).unwrap();
    let child = spawn_own_process_without(
        NAME,
        "host",
        &[
            ("PATH", Path::new(&path)),
            ("SNAKEPIT_ROUND5_DIR", dir.path()),
        ],
        &["SNAKEPIT_PYTHON", "VIRTUAL_ENV"],
    );
    passed(child, NAME);
}

// ---------------------------------------------------------------------
// Node.js: ES modules and CommonJS
// ---------------------------------------------------------------------

const ESM: &str = "import { Worker } from 'snakepit-bridge';\nexport const kind = 'esm';\nnew Worker({ commands: { kind: () => ({ kind, main: import.meta.url }) } }).run();\n";

/// A CommonJS worker that only serves when it is the main module, with
/// comments and a dynamic `import(...)` that look like ES module syntax.
const CJS_GUARDED: &str = "// import { Worker } from 'snakepit-bridge';\n/*\nimport x from 'y';\nexport default x;\n*/\nconst { Worker } = require('snakepit-bridge');\nexports.kind = 'cjs';\nconst later = () => import('node:os');\nif (require.main === module) {\n  new Worker({ commands: { kind: async () => ({ kind: exports.kind, os: typeof (await later()).platform }) } }).run();\n}\n";

/// Node.js (20.19, 22.7 and later) runs a `.js` file written as an ES
/// module as one when its package declares no type, or when it is in no
/// package; such a worker's `import ... from 'snakepit-bridge'` finds the
/// bridge as a `.mjs` one does; so does a script without an extension,
/// which Node.js reads as it reads a `.js`. (They once failed the start
/// with "Cannot find package 'snakepit-bridge'": only `.mjs`, and `.js` in
/// a `"type": "module"` package, went through the launcher.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_file_node_runs_as_an_es_module_by_its_syntax_imports_the_bridge() {
    let dir = Dir::new("esm-by-syntax");
    let bare = dir.file("no-package/worker.js", ESM);
    dir.file(
        "untyped/package.json",
        "{\"name\": \"w\", \"version\": \"1.0.0\"}\n",
    );
    let untyped = dir.file("untyped/lib/worker.js", ESM);
    let no_extension = dir.file("no-package/worker", ESM);
    dir.file("typed/package.json", "{\"type\": \"module\"}\n");
    let typed_no_extension = dir.file("typed/bin/worker", ESM);
    for (script, cwd) in [
        (bare, None),
        (untyped, Some(dir.path().join("untyped"))),
        (no_extension, None),
        (typed_no_extension, None),
    ] {
        let mut bridge = Bridge::node(&script);
        if let Some(cwd) = cwd {
            bridge = bridge.cwd(cwd);
        }
        let r = call(bridge, "kind", json!({})).await;
        assert_eq!(r["kind"], "esm", "{}: {r}", script.display());
    }
}

/// The other side of the test above: a CommonJS `.js` (with comments and
/// a dynamic `import()` that look like ES module syntax, and a
/// `require.main === module` guard) still runs as the main module, and a
/// `.cjs` worker in a `"type": "module"` package requires the bridge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commonjs_workers_stay_commonjs_whatever_their_comments_or_package_say() {
    let dir = Dir::new("cjs-stays");
    let guarded = dir.file("plain/worker.js", CJS_GUARDED);
    dir.file("typed/package.json", "{\"type\": \"module\"}\n");
    let cjs = dir.file("typed/worker.cjs", CJS_GUARDED);
    dir.file("commonjs/package.json", "{\"type\": \"commonjs\"}\n");
    let declared = dir.file("commonjs/worker.js", CJS_GUARDED);
    for script in [guarded, cjs, declared] {
        let r = call(Bridge::node(&script), "kind", json!({})).await;
        assert_eq!(r["kind"], "cjs", "{}: {r}", script.display());
        assert_eq!(r["os"], "function", "{}: {r}", script.display());
    }
}

// ---------------------------------------------------------------------
// Preload through the adapters, script arguments
// ---------------------------------------------------------------------

/// `Bridge::preload` on the bundled generic workers of Python and Ruby:
/// the generic commands are served by forked workers (whose pid is not
/// the template's, and differs from worker to worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generic_python_and_ruby_workers_serve_preloaded() {
    for language in [Language::Python, Language::Ruby] {
        let pool = Pool::builder(Bridge::generic(language).preload())
            .size(2)
            .configure(|c| {
                c.worker_init_timeout = Duration::from_secs(60);
                c.startup_timeout = Duration::from_secs(90);
            })
            .start()
            .await
            .unwrap_or_else(|e| panic!("{language:?}: {e}"));
        let r = pool
            .execute("compute", json!({"operation": "add", "a": 2, "b": 3}))
            .await
            .unwrap_or_else(|e| panic!("{language:?}: {e}"));
        assert_eq!(r["result"], 5, "{language:?}: {r}");
        let pids = pool.worker_pids();
        assert_eq!(pids.len(), 2, "{language:?}");
        assert_ne!(pids[0], pids[1], "{language:?}");
        pool.shutdown().await.unwrap();
    }
}

/// Script arguments reach the worker exactly, after `--mode pool-worker`:
/// an empty one, one that repeats `--mode`, a lone `-`, `--`, non-ASCII
/// text and a line break; none changes how the bridge runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_script_arguments_reach_every_language_as_given() {
    let dir = Dir::new("odd-args");
    let args = ["", "--mode", "template", "-", "--", "é ☃", "a\nb"];
    let py = dir.file(
        "w.py",
        "import sys, snakepit_bridge\nw = snakepit_bridge.Worker()\nw.command('argv')(lambda args: sys.argv[1:])\nw.run()\n",
    );
    let js = dir.file(
        "w.js",
        "const { Worker } = require('snakepit-bridge');\nnew Worker({ commands: { argv: () => process.argv.slice(2) } }).run();\n",
    );
    let rb = dir.file(
        "w.rb",
        "require 'snakepit_bridge'\nw = SnakepitBridge::Worker.new\nw.command('argv') { |_a, _c| ARGV }\nw.run\n",
    );
    let mut want = vec!["--mode", "pool-worker"];
    want.extend(args);
    for bridge in [Bridge::python(py), Bridge::node(js), Bridge::ruby(rb)] {
        let r = call(bridge.args(args), "argv", json!({})).await;
        assert_eq!(r, json!(want));
    }
}

/// `Inspection::install_command` is a command to run (`snakepit doctor`
/// prints it to be pasted into a shell): for a `SNAKEPIT_PYTHON` whose
/// path holds a space, a quote and a `$`, the command still names that
/// interpreter when a shell reads it. (It once printed the path bare.)
#[test]
#[allow(clippy::disallowed_methods)] // `sh` reads the command, as a user's shell would
fn the_install_command_names_an_interpreter_at_an_odd_path_to_a_shell() {
    const NAME: &str = "the_install_command_names_an_interpreter_at_an_odd_path_to_a_shell";
    if role().is_some() {
        let found = Language::Python.inspect();
        assert!(found.version.is_some(), "{found:?}");
        let (msgpack, _) = found.packages[0];
        let command = found.install_command(&msgpack);
        let tail = " -m pip install msgpack";
        assert!(command.ends_with(tail), "{command}");
        // The same words with `--version` for pip's: the shell must run
        // the interpreter at the odd path.
        let line = format!("{} --version", &command[..command.len() - tail.len()]);
        let out = std::process::Command::new("sh")
            .args(["-c", &line])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.starts_with("Python 3"),
            "{line}: {out:?}"
        );
        return;
    }
    let dir = Dir::new("install-command");
    let odd = dir.path().join("my py's $HOME");
    std::fs::create_dir_all(&odd).unwrap();
    let python = odd.join("python3");
    std::os::unix::fs::symlink(snakepit_tests::python(), &python).unwrap();
    in_own_process(NAME, "host", &[("SNAKEPIT_PYTHON", &python)]);
}

// ---------------------------------------------------------------------
// Deadlines and hooks at their edges
// ---------------------------------------------------------------------

/// The longest deadline there is, `Duration::MAX`, given as the default or
/// as one command's: calls run and answer (a deadline that far is no
/// deadline; it must not overflow the clock it is added to).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_of_duration_max_is_no_deadline() {
    let r = call(
        Bridge::generic(Language::Python).command_timeout(Duration::MAX),
        "ping",
        json!({}),
    )
    .await;
    assert_eq!(r["status"], "ok", "{r}");
    let r = call(
        Bridge::generic(Language::Ruby).timeout_for("echo", Duration::MAX),
        "echo",
        json!({"x": 1}),
    )
    .await;
    assert_eq!(r["echoed"]["x"], 1, "{r}");
}

/// A `Custom` hook is the user's code: one that panics fails the call it
/// ran for with a typed error (`ResultRefused` for `process_response`,
/// the call having run; `Validation` for `validate`, the call never sent),
/// naming the panic, and costs no other call, nor the worker, which
/// serves the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_hook_that_panics_costs_only_its_own_call() {
    let bridges = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bridges/python");
    let custom = snakepit_adapters::Custom::new(snakepit_tests::python())
        .arg(bridges.join("generic_worker.py"))
        .env("PYTHONPATH", &bridges)
        .process_response(|command, r| {
            assert_ne!(command, "echo", "the hook panics");
            Ok(r)
        })
        .validate(|command, _| {
            assert_ne!(command, "compute", "the hook panics");
            Ok(())
        });
    let pool = start(custom).await.unwrap_or_else(|e| panic!("{e}"));
    let first = pool.worker_pids();
    for (command, never_ran) in [("echo", false), ("compute", true)] {
        let err = tokio::time::timeout(HANG, pool.execute(command, json!({})))
            .await
            .expect("the call hung")
            .expect_err("a call whose hook panicked succeeded");
        match (&err, never_ran) {
            (snakepit_core::Error::ResultRefused { .. }, false)
            | (snakepit_core::Error::Validation { .. }, true) => {}
            _ => panic!("{command}: {err:?}"),
        }
        assert_eq!(err.never_ran(), never_ran, "{command}: {err}");
        assert!(
            err.to_string().contains("the hook panics"),
            "{command}: {err}"
        );
        let r = tokio::time::timeout(HANG, pool.execute("ping", json!({})))
            .await
            .expect("the next call hung")
            .unwrap_or_else(|e| panic!("after {command}: {e}"));
        assert_eq!(r["status"], "ok", "{r}");
    }
    assert_eq!(pool.worker_pids(), first, "the worker was replaced");
    pool.shutdown().await.unwrap();
}

/// Deciding whether a Node.js script is an ES module reads it; a `.js`
/// that is a FIFO is not opened (that would block until a writer came),
/// even by a launch asked for without `Adapter::check`, which refuses it.
#[test]
#[allow(clippy::disallowed_methods)] // `mkfifo` makes the FIFO
fn the_launch_of_a_js_fifo_returns_and_its_start_is_refused() {
    let dir = Dir::new("js-fifo");
    let fifo = dir.path().join("worker.js");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let (tx, rx) = std::sync::mpsc::channel();
    let bridge = Bridge::node(&fifo);
    std::thread::spawn(move || {
        let launch = Adapter::launch(&bridge);
        let _ = tx.send(launch.args);
    });
    let args = rx.recv_timeout(HANG).expect("the launch blocked");
    assert!(args.iter().any(|a| Path::new(a) == fifo), "{args:?}");
    let err = runtime().block_on(start_error(Bridge::node(&fifo)));
    assert!(err.contains("FIFO"), "{err}");
}

// ---------------------------------------------------------------------
// Discovery and adapters of one's own
// ---------------------------------------------------------------------

/// docs/bridges.md: "For anything else, implement
/// `snakepit_core::Adapter`: only `launch()` is required". An adapter of
/// one's own with nothing but `launch()` starts the bundled Python worker
/// (by its path, with the bridge on `PYTHONPATH`), speaks JSON, lets
/// every command through and gives calls the 30 s default deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_of_ones_own_needs_only_launch() {
    struct Mine;
    impl Adapter for Mine {
        fn launch(&self) -> snakepit_core::Launch {
            let bridges = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bridges/python");
            snakepit_core::Launch::new(snakepit_tests::python())
                .arg(bridges.join("generic_worker.py"))
                .env("PYTHONPATH", bridges)
        }
    }
    assert_eq!(Mine.codec(), snakepit_core::WireCodec::Json);
    assert_eq!(Mine.supported_commands(), None);
    assert_eq!(Mine.command_timeout("anything"), Duration::from_secs(30));
    let r = call(
        Mine,
        "compute",
        json!({"operation": "multiply", "a": 6, "b": 7}),
    )
    .await;
    assert_eq!(r["result"], 42, "{r}");
}

/// `VIRTUAL_ENV` names the interpreter only when `bin/python` is there:
/// a virtualenv removed since it was activated (the variable left in the
/// shell) falls through to `python3` on `PATH`, and `inspect` reports the
/// same choice, as docs/bridges.md says.
#[test]
fn a_virtual_env_without_its_python_falls_through_to_path() {
    const NAME: &str = "a_virtual_env_without_its_python_falls_through_to_path";
    if role().is_some() {
        assert_eq!(
            Language::Python.find_interpreter(None),
            PathBuf::from("python3")
        );
        assert_eq!(Language::Python.inspect().program, PathBuf::from("python3"));
        runtime().block_on(async {
            let r = call(GenericPython, "ping", json!({})).await;
            assert_eq!(r["status"], "ok", "{r}");
        });
        return;
    }
    let dir = Dir::new("gone-venv");
    let venv = dir.path().join("venv");
    std::fs::create_dir_all(venv.join("bin")).unwrap();
    // A dangling link, as a removed base interpreter leaves one.
    std::os::unix::fs::symlink(dir.path().join("gone/python3"), venv.join("bin/python")).unwrap();
    let child = spawn_own_process_without(
        NAME,
        "host",
        &[("VIRTUAL_ENV", &venv)],
        &["SNAKEPIT_PYTHON"],
    );
    passed(child, NAME);
}

// ---------------------------------------------------------------------
// MessagePack without the worker's package, in scripts of one's own
// ---------------------------------------------------------------------

/// docs/bridges.md, Codecs: without the MessagePack package "Python: the
/// worker stops at start-up with an error naming `pip install msgpack`;
/// Node.js: the worker exits with a message naming the package; Ruby: the
/// worker stops at start-up with a message saying so", and `Pool::start`
/// fails with the worker's message. Shown here for scripts of one's own
/// (the generic workers have their tests), a Node.js ES module among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_of_ones_own_without_the_msgpack_package_fail_the_start_naming_it() {
    let dir = Dir::new("own-no-msgpack");
    let real = std::fs::canonicalize(snakepit_tests::python()).unwrap();
    // No site-packages: no msgpack.
    let bare_python = dir.exe(
        "python-without-site",
        &format!("#!/bin/sh\nexec '{}' -S \"$@\"\n", real.display()),
    );
    let py = dir.file(
        "w.py",
        "import snakepit_bridge\nw = snakepit_bridge.Worker()\nw.command('hi')(lambda args: 'hi')\nw.run()\n",
    );
    let fake_gems = dir.file(
        "fake-gems/msgpack.rb",
        "raise LoadError, 'cannot load such file -- msgpack'\n",
    );
    let rb = dir.file(
        "w.rb",
        "require 'snakepit_bridge'\nw = SnakepitBridge::Worker.new\nw.command('hi') { |_a, _c| 'hi' }\nw.run\n",
    );
    let empty = dir.path().join("empty-node-path");
    std::fs::create_dir_all(&empty).unwrap();
    let js = dir.file(
        "js/w.js",
        "const { Worker } = require('snakepit-bridge');\nnew Worker({ commands: { hi: () => 'hi' } }).run();\n",
    );
    let mjs = dir.file(
        "js/w.mjs",
        "import { Worker } from 'snakepit-bridge';\nnew Worker({ commands: { hi: () => 'hi' } }).run();\n",
    );
    let msgpack = snakepit_core::WireCodec::MsgPack;
    let mut cases = vec![
        (
            "python",
            Bridge::python(&py).interpreter(&bare_python).codec(msgpack),
            "pip install msgpack",
        ),
        (
            "ruby",
            Bridge::ruby(&rb)
                .env("RUBYLIB", fake_gems.parent().unwrap())
                .codec(msgpack),
            "msgpack",
        ),
    ];
    #[allow(clippy::disallowed_methods)] // a probe of node, not a worker
    let global = std::process::Command::new("node")
        .args(["-e", "require.resolve('@msgpack/msgpack')"])
        .current_dir(dir.path().join("js"))
        .env("NODE_PATH", &empty)
        .output()
        .is_ok_and(|o| o.status.success());
    if global {
        eprintln!("@msgpack/msgpack is installed where every script finds it: Node.js not tried");
    } else {
        for script in [js, mjs] {
            cases.push((
                "node",
                Bridge::node(script)
                    .cwd(dir.path().join("js"))
                    .env("NODE_PATH", &empty)
                    .codec(msgpack),
                "@msgpack/msgpack",
            ));
        }
    }
    for (what, bridge, names) in cases {
        let err = start_error(bridge).await;
        assert!(err.contains(names), "{what}: {err}");
    }
}
