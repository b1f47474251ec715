//! Tests of the adapters: the bundled bridges' cache directory
//! (`embedded.rs`) as docs/bridges.md and ARCHITECTURE.md describe it, the
//! Node.js ES module launcher's detection, `Language::inspect`, and the
//! oldest Python the docs name.
//!
//! Each test that needs a process of its own (the bridges' directory is
//! decided once per process) runs itself again as a child of the test
//! binary, with the variable that `CHILD` names set.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};

use serde_json::json;
use snakepit_adapters::{Bridge, GenericPython, Language};
use snakepit_core::{Adapter, Pool};

const CHILD: &str = "REVIEW_ADAPTERS_CHILD";

/// Runs test `name` again in a process of its own with `env`; whether it
/// passed there, and its output.
fn run_child(name: &str, env: &[(&str, &Path)]) -> (bool, String) {
    let mut cmd = snakepit_tests::this_test(name);
    cmd.env(CHILD, "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    (out.status.success() && stdout.contains("1 passed"), text)
}

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "snakepit-review-adapters-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `bridges-<hash>` tree under `cache`.
fn tree(cache: &Path) -> PathBuf {
    std::fs::read_dir(cache)
        .expect("the cache directory")
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name().is_some_and(|n| {
                let n = n.to_string_lossy();
                n.starts_with("bridges-") && !n.contains(".tmp")
            })
        })
        .expect("the bridges were written")
}

/// lib.rs: the bridge files are "written once to a cache directory, so
/// they work from any project"; docs/bridges.md: "When they cannot be
/// written ... `start()` fails with `Error::StartFailed`"; ARCHITECTURE.md:
/// the process "writes a changed tree again (one thread at a time, to a
/// directory of that write's own, renamed into place)". Several pools of
/// one process may start at once on a new cache (a service starting its
/// Python and Ruby pools together, say). Here eight threads of one process
/// make the first use of a new, writable cache at once, in ten processes;
/// every first use must succeed. This once failed now and then with
/// "cannot write the bundled bridges".
#[test]
fn concurrent_first_uses_in_one_process_all_find_the_bridges() {
    const NAME: &str = "concurrent_first_uses_in_one_process_all_find_the_bridges";
    if std::env::var_os(CHILD).is_some() {
        const THREADS: usize = 8;
        let barrier = Arc::new(Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    Adapter::check(&GenericPython)
                })
            })
            .collect();
        let results: Vec<Result<(), String>> =
            threads.into_iter().map(|t| t.join().unwrap()).collect();
        let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(failed.is_empty(), "first uses failed: {failed:?}");
        return;
    }
    let dir = Dir::new("concurrent");
    let mut failures = Vec::new();
    for round in 0..10 {
        let cache = dir.0.join(format!("cache-{round}"));
        let (ok, out) = run_child(NAME, &[("SNAKEPIT_BRIDGE_DIR", &cache)]);
        if !ok {
            failures.push(out);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 10 processes had a failed first use:\n{}",
        failures.len(),
        failures.join("\n----\n")
    );
}

/// docs/bridges.md: "Each process checks the files against the ones it
/// embeds before its first worker starts, and writes a tree that was
/// changed since again (a file added to it counts as a change, but for
/// Python's `__pycache__`)"; ARCHITECTURE.md: "Invariant: a worker runs the
/// bridge this build embeds." The tree is on every worker's module path, in
/// front of the language's own library, so a file planted there (a
/// `sitecustomize.py`, a `json.py`, a `json.rb` in `ruby/lib`) would run in
/// every worker. The test plants `python/sitecustomize.py` in a tree an
/// earlier process wrote, and checks that the next process's worker does
/// not run it. This once ran the planted file.
#[test]
fn a_file_added_to_the_bridge_tree_does_not_run_in_workers() {
    const NAME: &str = "a_file_added_to_the_bridge_tree_does_not_run_in_workers";
    if std::env::var_os(CHILD).is_some() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let pool = Pool::builder(GenericPython).size(1).start().await.unwrap();
            let r = pool.execute("ping", json!({})).await.unwrap();
            assert_eq!(r["status"], "ok", "{r}");
            pool.shutdown().await.unwrap();
        });
        return;
    }
    let dir = Dir::new("planted");
    let cache = dir.0.join("cache");
    let mark = dir.0.join("planted-code-ran");
    let env = [("SNAKEPIT_BRIDGE_DIR", cache.as_path())];
    let (ok, out) = run_child(NAME, &env);
    assert!(ok, "the first run writes the tree and serves:\n{out}");
    let tree = tree(&cache);
    std::fs::write(
        tree.join("python/sitecustomize.py"),
        format!("open({:?}, 'a').write('ran\\n')\n", mark.to_str().unwrap()),
    )
    .unwrap();
    let (ok, out) = run_child(NAME, &env);
    assert!(ok, "the second run serves:\n{out}");
    assert!(
        !mark.exists(),
        "the planted python/sitecustomize.py ran in a worker ({}), the tree was taken for intact",
        std::fs::read_to_string(&mark).unwrap_or_default().trim()
    );
}

/// lib.rs: the bridge files are "written once to a cache directory, so
/// they work from any project"; docs/bridges.md: "before each later worker
/// start it checks that the tree is still there, and writes it again if it
/// went"; ARCHITECTURE.md: "the pool calls `Adapter::check` before every
/// later start too, which writes the tree again if it went." The test
/// removes the tree while a pool of one worker runs (as a `$TMPDIR` cleaner
/// or `rm -rf ~/.cache` would), kills the worker, and checks that a
/// replacement worker serves within 30 s. This once made every replacement
/// fail with "can't open file" for the life of the pool.
#[test]
fn a_worker_replaced_after_the_bridge_tree_was_removed_starts() {
    const NAME: &str = "a_worker_replaced_after_the_bridge_tree_was_removed_starts";
    if std::env::var_os(CHILD).is_some() {
        let cache = PathBuf::from(std::env::var_os("SNAKEPIT_BRIDGE_DIR").unwrap());
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let pool = Pool::builder(GenericPython).size(1).start().await.unwrap();
            pool.execute("ping", json!({})).await.unwrap();
            let first = pool.worker_pids()[0];
            std::fs::remove_dir_all(tree(&cache)).unwrap();
            kill_9(first);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            let mut last = None;
            while std::time::Instant::now() < deadline {
                let call = pool.execute("ping", json!({}));
                match tokio::time::timeout(std::time::Duration::from_secs(10), call).await {
                    Ok(Ok(_)) if !pool.worker_pids().contains(&first) => {
                        pool.shutdown().await.unwrap();
                        return;
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => last = Some(e.to_string()),
                    Err(_) => last = Some("no answer within 10 s".into()),
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            panic!("no replacement worker served within 30 s; last error: {last:?}");
        });
        return;
    }
    let dir = Dir::new("removed");
    let cache = dir.0.join("cache");
    let (ok, out) = run_child(NAME, &[("SNAKEPIT_BRIDGE_DIR", &cache)]);
    assert!(ok, "{out}");
}

fn kill_9(pid: u32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a process this test started; no memory involved.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// language.rs: `Language::Python` is "Python 3.8+". The oldest Python the
/// docs name runs the bundled bridge: the generic worker, and a script of
/// one's own with an asyncio handler, started directly and preloaded. Skips
/// (passes) where no Python 3.8 is installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_python_bridge_serves_on_python_3_8() {
    let Some(py38) = [
        "/root/.pyenv/versions/3.8.18/bin/python3",
        "/usr/bin/python3.8",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists()) else {
        eprintln!("no Python 3.8 here: skipped");
        return;
    };
    let dir = Dir::new("py38");
    let script = dir.0.join("worker.py");
    std::fs::write(
        &script,
        "import asyncio, sys\n\
         from snakepit_bridge import Worker\n\
         worker = Worker()\n\
         @worker.command('version')\n\
         async def version(args, ctx):\n\
         \x20   await asyncio.sleep(0.01)\n\
         \x20   return {'version': list(sys.version_info[:2])}\n\
         worker.run()\n",
    )
    .unwrap();
    let generic = Bridge::generic(Language::Python).interpreter(&py38);
    let pool = Pool::builder(generic).size(1).start().await.unwrap();
    let r = pool
        .execute("compute", json!({"operation": "add", "a": 2, "b": 3}))
        .await
        .unwrap();
    assert_eq!(r["result"], 5, "{r}");
    pool.shutdown().await.unwrap();
    for preload in [false, true] {
        let mut bridge = Bridge::python(&script).interpreter(&py38);
        if preload {
            bridge = bridge.preload();
        }
        let pool = Pool::builder(bridge)
            .size(2)
            .start()
            .await
            .unwrap_or_else(|e| panic!("preload {preload}: {e}"));
        let r = pool.execute("version", json!({})).await.unwrap();
        assert_eq!(r["version"], json!([3, 8]), "preload {preload}: {r}");
        pool.shutdown().await.unwrap();
    }
}

/// docs/bridges.md: "A Node.js ES module (`.mjs`, or `.js` in a package
/// whose nearest `package.json` says `"type": "module"`) runs through a
/// small launcher that lets its `import ... from 'snakepit-bridge'` find
/// the bridge." Node decides a main script's module type from its real
/// path (it resolves symlinks of the main script), so a `worker.js` of an
/// ES module package is an ES module to Node even when it is linked from a
/// directory with no `package.json`. The test runs such a link and checks
/// that the worker starts and its `import` of the bridge works. This once
/// ran the linked script without the launcher, and its `import` failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_es_module_worker_imports_the_bridge() {
    let dir = Dir::new("esm-link");
    let package = dir.0.join("pkg");
    let elsewhere = dir.0.join("app");
    std::fs::create_dir_all(&package).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(package.join("package.json"), r#"{"type": "module"}"#).unwrap();
    std::fs::write(
        package.join("worker.js"),
        "import { Worker } from 'snakepit-bridge';\n\
         new Worker({ commands: { hi() { return { esm: typeof require === 'undefined' }; } } }).run();\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(package.join("worker.js"), elsewhere.join("worker.js")).unwrap();
    let pool = Pool::builder(Bridge::node(elsewhere.join("worker.js")))
        .size(1)
        .start()
        .await
        .unwrap_or_else(|e| panic!("the linked ES module worker did not start: {e}"));
    let r = pool.execute("hi", json!({})).await.unwrap();
    assert_eq!(r["esm"], true, "{r}");
    pool.shutdown().await.unwrap();
}

/// `Language::inspect` (inspect.rs): "Runs the interpreter a few times to
/// see what is there. Never fails: what could not be found is `None`, and
/// so is what a run that did not end within 10 s would have said (that run
/// is killed)." docs/cli.md: `snakepit doctor` reports, for each language,
/// "the interpreter the adapters would run ..., its version". The test sets
/// `SNAKEPIT_NODE` to a stub that never ends (as a wrapper waiting on a
/// lock, or a broken shim, might) and checks that `inspect` returns within
/// 30 s with no version. This once hung forever, and `snakepit doctor`
/// with it.
#[test]
fn inspect_of_an_interpreter_that_hangs_returns() {
    const NAME: &str = "inspect_of_an_interpreter_that_hangs_returns";
    if std::env::var_os(CHILD).is_some() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(Language::Node.inspect());
        });
        let found = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("inspect returned within 30 s");
        assert!(found.version.is_none(), "{found:?}");
        return;
    }
    let dir = Dir::new("hanging");
    let stub = dir.0.join("node");
    // Waits as long as the process that ran it lives: nothing outlives the
    // test.
    std::fs::write(
        &stub,
        "#!/bin/sh\nwhile kill -0 $PPID 2>/dev/null; do sleep 1; done\n",
    )
    .unwrap();
    std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (ok, out) = run_child(NAME, &[("SNAKEPIT_NODE", &stub)]);
    assert!(ok, "{out}");
}

/// docs/bridges.md: "A relative interpreter path with a directory in it
/// (`.venv/bin/python`, given either way) is taken from the host's working
/// directory, not the worker's". A pool whose workers run in another
/// directory (`.cwd`) starts with `.interpreter("venv/bin/python")` and
/// with `SNAKEPIT_PYTHON=venv/bin/python`, the venv beside the host only.
/// (Both were looked up from the worker's directory and failed to start.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_interpreter_path_is_taken_from_the_hosts_directory() {
    if std::env::var_os(CHILD).is_none() {
        let dir = Dir::new("relative-interpreter");
        let bin = dir.0.join("host/venv/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(dir.0.join("work")).unwrap();
        std::os::unix::fs::symlink(snakepit_tests::python(), bin.join("python")).unwrap();
        let out = snakepit_tests::this_test(
            "a_relative_interpreter_path_is_taken_from_the_hosts_directory",
        )
        .env(CHILD, "1")
        .env("SNAKEPIT_PYTHON", "venv/bin/python")
        .current_dir(dir.0.join("host"))
        .output()
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let work = std::env::current_dir().unwrap().join("../work");
    let given = Bridge::generic(Language::Python)
        .interpreter("venv/bin/python")
        .cwd(&work);
    let from_env = Bridge::generic(Language::Python).cwd(&work);
    for (how, bridge) in [("interpreter()", given), ("SNAKEPIT_PYTHON", from_env)] {
        let pool = Pool::builder(bridge)
            .size(1)
            .start()
            .await
            .unwrap_or_else(|e| panic!("{how}: the pool did not start: {e}"));
        pool.execute("ping", json!({})).await.unwrap();
        pool.shutdown().await.unwrap();
    }
}
