//! Review of the adapters: the bundled bridges' cache directory
//! (`embedded.rs`) as docs/bridges.md and ARCHITECTURE.md describe it, the
//! Node.js ES module launcher's detection, `Language::inspect`, and the
//! oldest Python the docs name.
//!
//! Each test that needs a process of its own (the bridges' directory is
//! decided once per process) runs itself again as a child of the test
//! binary, with `REVIEW_ADAPTERS_CHILD` set.

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

/// lib.rs: the bridges "work from any project", written once to a cache
/// directory; docs/bridges.md: "When they cannot be written ... `start()`
/// fails with `Error::StartFailed`". Several pools of one process starting
/// at once on a new cache (a service starting its Python and Ruby pools
/// together, say) each make the first use of the cache. They all use one
/// private directory name (`bridges-<hash>.tmp<pid>`), and one thread's
/// `remove_dir_all` of it pulls the tree from under another's writes or
/// rename: that start fails with "cannot write the bundled bridges"
/// although the directory is writable.
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
/// changed since again"; ARCHITECTURE.md: "Invariant: a worker runs the
/// bridge this build embeds." A file added to the tree is a change too, and
/// the tree is on every worker's module path, in front of the language's
/// own library: a `sitecustomize.py` (or a `json.py`, a `json.rb` in
/// `ruby/lib`) planted there runs in every worker, while the check, which
/// only compares the embedded files, finds the tree intact.
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

/// lib.rs: the bridges are "written once to a cache directory, so they
/// work from any project"; ARCHITECTURE.md: "Invariant: a worker runs the
/// bridge this build embeds." The process decides on its first use that the
/// tree is there (`embedded::root`'s `OnceLock`) and never looks again: a
/// tree removed while the pool runs (a `$TMPDIR` cleaner on the
/// `$TMPDIR/snakepit-<uid>` fallback, `rm -rf ~/.cache`) makes every
/// replacement worker fail with "can't open file", for the life of the
/// pool, although the host could write the tree again as it does at start.
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
/// path (it resolves symlinks of the main script): a `worker.js` linked
/// from another directory into an ES module package is an ES module to
/// Node, but `Bridge::is_es_module` looks for `package.json` above the
/// link, finds none saying `module`, and runs the script without the
/// launcher: its `import` of the bridge fails.
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

/// `Language::inspect`: "Runs the interpreter a few times to see what is
/// there. Never fails: what could not be found is `None`"; docs/cli.md:
/// `snakepit doctor` reports, for each language, the interpreter and
/// whether the generic worker starts (that start has its timeouts). The
/// probes (`inspect.rs`: `run`) wait for the interpreter without any
/// deadline: an interpreter that hangs (a wrapper waiting on a lock, a
/// broken shim) hangs `inspect`, and `snakepit doctor` with it, forever,
/// instead of reporting it as not answering.
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
