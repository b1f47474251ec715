//! Round 7 of outside review of snakepit-adapters: Node.js scripts that
//! Node runs as ES modules for their top-level `await`, the private
//! directories the bridges go to when the cache directory is unsafe, paths
//! that a URL would misread, and an empty module name.
//!
//! Tests that need a first use of the cache, or an environment of their
//! own, run in a process of their own.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::json;
use snakepit_adapters::{GenericPython, Language};
use snakepit_core::{Adapter, Pool};

/// A fresh folder for one test's files, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "snakepit-round7-adapters-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Dir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts a pool of one worker of `adapter`, with generous start-up
/// deadlines for a loaded machine.
async fn start<A: snakepit_core::Adapter + 'static>(
    adapter: A,
) -> Result<Pool, snakepit_core::Error> {
    let builder = Pool::builder(adapter).size(1).configure(|c| {
        c.worker_init_timeout = Duration::from_secs(60);
        c.startup_timeout = Duration::from_secs(90);
    });
    tokio::time::timeout(Duration::from_secs(180), builder.start())
        .await
        .expect("start() hung")
}

/// The major and minor version of the `node` on PATH.
#[allow(clippy::disallowed_methods)] // a probe of node, not a worker
fn node_version() -> (u32, u32) {
    let out = std::process::Command::new("node")
        .arg("--version")
        .output()
        .expect("node runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.trim().trim_start_matches('v').split('.');
    let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (next(), next())
}

/// Whether this Node.js runs a `.js` file of no declared type that is
/// written as an ES module as one (20.19 and later in 20, 22.7 and later).
fn detects_modules() -> bool {
    let (major, minor) = node_version();
    (major == 20 && minor >= 19) || (major == 22 && minor >= 7) || major >= 23
}

/// A worker with no `import` or `export` statement that Node.js 20.19,
/// 22.7 and later still run as an ES module: it awaits at its top level
/// (here, the dynamic import of the bridge, the way a module without
/// `import` statements gets it).
const AWAITING_WORKER: &str = "\
// A worker that loads the bridge with a top-level await.
const { Worker } = await import('snakepit-bridge');
const commands = {
  kind: async () => ({ require: typeof require, awaited: await Promise.resolve(1) }),
};
new Worker({ commands }).run();
";

/// A CommonJS worker that awaits only inside functions (an async arrow
/// without braces at the top level, an async function, a method): Node
/// runs it as CommonJS, and so must the pool, or its `require` is gone.
const COMMONJS_WORKER: &str = "\
const { Worker } = require('snakepit-bridge');
const later = async () => await Promise.resolve(1);
async function twice(x) { return 2 * (await x); }
const s = `await ${'not'} code`; // await in a comment
const o = { async m() { await later(); } };
new Worker({ commands: { kind: async () => ({ require: typeof require, awaited: await twice(later()) }) } }).run();
";

/// docs/bridges.md: a Node.js ES module "runs through a small launcher
/// that lets its `import ... from 'snakepit-bridge'` find the bridge".
/// Node.js 20.19, 22.7 and later run a `.js` file whose package declares
/// no type as an ES module not only for its `import` and `export`
/// statements but also for an `await` at its top level; the adapter
/// looked for the statements only, ran such a worker without the
/// launcher, and its start failed with "Cannot find package
/// 'snakepit-bridge'". A CommonJS worker that awaits only inside its
/// functions still runs as CommonJS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_js_worker_that_awaits_at_its_top_level_runs_as_the_es_module_node_makes_it() {
    let dir = Dir::new("top-level-await");
    let untyped = dir.path().join("untyped");
    std::fs::create_dir_all(&untyped).unwrap();
    std::fs::write(untyped.join("package.json"), "{\"name\": \"app\"}\n").unwrap();
    std::fs::write(untyped.join("worker.js"), AWAITING_WORKER).unwrap();
    let loose = dir.path().join("loose.js");
    std::fs::write(&loose, AWAITING_WORKER).unwrap();
    let commonjs = dir.path().join("commonjs.js");
    std::fs::write(&commonjs, COMMONJS_WORKER).unwrap();
    let mut cases = vec![(commonjs, "function")];
    if detects_modules() {
        cases.push((untyped.join("worker.js"), "undefined"));
        cases.push((loose, "undefined"));
    }
    for (script, require) in cases {
        let pool = start(snakepit_adapters::Bridge::node(&script))
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        let r = pool.execute("kind", json!({})).await.expect("kind");
        assert_eq!(r["require"], require, "{}: {r}", script.display());
        assert!(r["awaited"].as_u64().is_some(), "{r}");
        pool.shutdown().await.unwrap();
    }
}

/// Set in a test's own process; its value is the role it plays there.
const CHILD: &str = "SNAKEPIT_ROUND7_ADAPTERS_CHILD";

/// Test `name` run again in a process of its own with `env`; waited for,
/// and checked to have passed.
fn in_own_process(name: &str, env: &[(&str, &Path)]) {
    let mut cmd = snakepit_tests::this_test(name);
    cmd.env(CHILD, "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} failed in its own process:\n{stdout}\n{stderr}"
    );
}

/// The module path's first entry in the launch of `adapter`, up to the
/// entry of `temp` it lies in: the private directory the bridges went to.
fn private_dir_of(adapter: &impl Adapter, temp: &Path) -> PathBuf {
    let launch = adapter.launch();
    let (_, paths) = launch
        .env
        .iter()
        .find(|(k, _)| k == "PYTHONPATH")
        .expect("a module path");
    let first = std::env::split_paths(paths).next().expect("an entry");
    let inside = first
        .strip_prefix(temp)
        .unwrap_or_else(|_| panic!("{} is not in {}", first.display(), temp.display()));
    temp.join(inside.iter().next().unwrap())
}

/// The inode number of this process's pid namespace.
fn pid_namespace() -> u64 {
    let link = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let link = link.to_str().unwrap();
    link.trim_start_matches("pid:[")
        .trim_end_matches(']')
        .parse()
        .unwrap()
}

/// Sets the modification time of `path` (a file or a directory) to `age` ago.
fn age(path: &Path, age: Duration) {
    std::fs::File::open(path)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Helper processes, killed and reaped when dropped.
struct Helpers(Vec<std::process::Child>);

impl Drop for Helpers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A process that runs until killed, with `env`.
#[allow(clippy::disallowed_methods)] // a stand-in process, not a worker
fn sleeper(env: &[(&str, &Path)]) -> std::process::Child {
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("600");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("sleep runs")
}

/// The id of a process that has ended.
#[allow(clippy::disallowed_methods)] // a stand-in process, not a worker
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    child.id()
}

/// docs/bridges.md: when the cache directory is unsafe, "the bridges go to
/// a new private directory of the process instead
/// (`$TMPDIR/snakepit-bridges-*`, one per process)". Each host that found
/// it so left its directory behind, and a service restarted often filled
/// `$TMPDIR` with them. A host that makes one now removes those of hosts
/// that are gone: this user's, named so, whose process (in this pid
/// namespace) no longer runs, or, of another namespace (another container
/// sharing `$TMPDIR`) or named as earlier versions did (without the
/// namespace), unused for a day; never one whose tree a live
/// process names (a worker that outlived its host), one of a live
/// process, another user's, nor a symbolic link.
#[test]
fn private_bridge_directories_of_hosts_that_are_gone_are_removed() {
    const NAME: &str = "private_bridge_directories_of_hosts_that_are_gone_are_removed";
    if std::env::var_os(CHILD).is_some() {
        let temp = PathBuf::from(std::env::var_os("TMPDIR").unwrap());
        let report = PathBuf::from(std::env::var_os("SNAKEPIT_ROUND7_REPORT").unwrap());
        Adapter::check(&GenericPython).expect("the bridges are written");
        let used = private_dir_of(&GenericPython, &temp);
        std::fs::write(&report, used.as_os_str().as_encoded_bytes()).unwrap();
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = Dir::new("private-dirs");
    let temp = dir.path().join("tmp");
    std::fs::create_dir_all(&temp).unwrap();
    std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o700)).unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let base = open.join("cache");
    let ns = pid_namespace();
    let dead = dead_pid();
    let mut helpers = Helpers(Vec::new());
    // A private directory as a host of pid `pid` in namespace `ns` left it.
    let planted = |ns: u64, pid: u32, n: u32| {
        let private = temp.join(format!("snakepit-bridges-{ns}-{pid}-{n:08x}"));
        let tree = private.join("bridges-0123456789abcdef");
        std::fs::create_dir_all(tree.join("node")).unwrap();
        std::fs::write(tree.join(".complete"), "").unwrap();
        (private, tree)
    };
    let (gone, _) = planted(ns, dead, 1);
    helpers.0.push(sleeper(&[]));
    let (live, _) = planted(ns, helpers.0[0].id(), 2);
    let (outlived, tree) = planted(ns, dead, 3);
    helpers
        .0
        .push(sleeper(&[("NODE_PATH", &tree.join("node"))]));
    let (elsewhere_fresh, _) = planted(ns + 1, dead, 4);
    let (elsewhere_old, tree) = planted(ns + 1, dead, 5);
    for path in [tree.join(".complete"), tree.clone(), elsewhere_old.clone()] {
        age(&path, Duration::from_secs(2 * 24 * 60 * 60));
    }
    // As earlier versions named them, which do not say the namespace:
    // judged by age as another namespace's are.
    let earlier = |n: u32, old: bool| {
        let private = temp.join(format!("snakepit-bridges-{dead}-{n:08x}"));
        let tree = private.join("bridges-0123456789abcdef");
        std::fs::create_dir_all(&tree).unwrap();
        std::fs::write(tree.join(".complete"), "").unwrap();
        if old {
            for path in [tree.join(".complete"), tree, private.clone()] {
                age(&path, Duration::from_secs(2 * 24 * 60 * 60));
            }
        }
        private
    };
    let earlier_fresh = earlier(8, false);
    let earlier_old = earlier(9, true);
    // A link to a directory outside `$TMPDIR`: removing through it would
    // remove that directory's files.
    let target = dir.path().join("target");
    std::fs::create_dir_all(target.join("bridges-0123456789abcdef")).unwrap();
    let link = temp.join(format!("snakepit-bridges-{ns}-{dead}-00000007"));
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let report = dir.path().join("report");
    let host = |temp: &Path| {
        in_own_process(
            NAME,
            &[
                ("SNAKEPIT_BRIDGE_DIR", &base),
                ("TMPDIR", temp),
                ("SNAKEPIT_ROUND7_REPORT", &report),
            ],
        );
        PathBuf::from(std::fs::read_to_string(&report).unwrap())
    };
    let first = host(&temp);
    assert!(first.is_dir(), "{}", first.display());
    for removed in [&gone, &elsewhere_old, &earlier_old] {
        assert!(!removed.exists(), "{} is left", removed.display());
    }
    for kept in [&live, &outlived, &elsewhere_fresh, &earlier_fresh, &target] {
        assert!(kept.is_dir(), "{} was removed", kept.display());
    }
    assert!(link.is_symlink(), "the link was removed");
    let second = host(&temp);
    assert_ne!(first, second);
    assert!(!first.exists(), "{} is left", first.display());
    assert!(second.is_dir(), "{}", second.display());
    drop(helpers);
}

/// A name with what a path may hold and a URL may not as it is: a space,
/// letters outside ASCII, `#` (a URL's fragment), `%` followed by hex
/// digits (an escape in a URL) and `?` (a URL's query).
const ODD: &str = "odd dir é日本#%41?x";

/// README: "The adapters put the bundled bridge on each language's module
/// path, so nothing needs installing"; docs/bridges.md: an ES module
/// worker runs through a launcher that registers a resolve hook beside the
/// bridge (the two find each other, and the worker, by `file:` URL). With
/// the cache directory (`SNAKEPIT_BRIDGE_DIR`) and the worker's own
/// directory at paths holding a space, non-ASCII letters, `#`, `%41` and
/// `?`, which a URL built by joining text would read as a fragment, an
/// escape and a query, every bundled worker and ES module and CommonJS
/// workers of one's own start and serve.
#[test]
fn workers_serve_with_the_bridges_and_scripts_at_paths_a_url_would_misread() {
    const NAME: &str = "workers_serve_with_the_bridges_and_scripts_at_paths_a_url_would_misread";
    if std::env::var_os(CHILD).is_some() {
        let scripts = PathBuf::from(std::env::var_os("SNAKEPIT_ROUND7_SCRIPTS").unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for lang in [Language::Python, Language::Node, Language::Ruby] {
                let pool = start(snakepit_adapters::Bridge::generic(lang))
                    .await
                    .unwrap_or_else(|e| panic!("{lang:?}: {e}"));
                let r = pool.execute("ping", json!({})).await.expect("ping");
                assert_eq!(r["status"], "ok", "{lang:?}: {r}");
                pool.shutdown().await.unwrap();
            }
            for (script, require) in [
                ("worker.mjs", "undefined"),
                ("awaiting.js", "undefined"),
                ("commonjs.js", "function"),
            ] {
                let script = scripts.join(script);
                let pool = start(snakepit_adapters::Bridge::node(&script))
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
                let r = pool.execute("kind", json!({})).await.expect("kind");
                assert_eq!(r["require"], require, "{}: {r}", script.display());
                pool.shutdown().await.unwrap();
            }
        });
        return;
    }
    let dir = Dir::new("odd-paths");
    let cache = dir.path().join(ODD).join("cache");
    let scripts = dir.path().join(ODD).join("scripts");
    std::fs::create_dir_all(&scripts).unwrap();
    std::fs::write(
        scripts.join("worker.mjs"),
        "import { Worker } from 'snakepit-bridge';\n\
         new Worker({ commands: { kind: () => ({ require: typeof require }) } }).run();\n",
    )
    .unwrap();
    let awaiting = if detects_modules() {
        AWAITING_WORKER
    } else {
        // Node.js before 20.19 runs it as CommonJS, and fails on its await.
        "import { Worker } from 'snakepit-bridge';\n\
         new Worker({ commands: { kind: () => ({ require: typeof require }) } }).run();\n"
    };
    std::fs::write(scripts.join("awaiting.js"), awaiting).unwrap();
    std::fs::write(scripts.join("commonjs.js"), COMMONJS_WORKER).unwrap();
    in_own_process(
        NAME,
        &[
            ("SNAKEPIT_BRIDGE_DIR", &cache),
            ("SNAKEPIT_ROUND7_SCRIPTS", &scripts),
        ],
    );
    let trees: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        trees
            .iter()
            .any(|t| t.to_string_lossy().starts_with("bridges-")),
        "no tree in {}: {trees:?}",
        cache.display()
    );
}

/// An empty module name is no module: `Bridge::python_module("")` fails
/// its start with `StartFailed` saying so, as an empty script path does,
/// rather than with Python's "No module named " that names none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_module_name_is_a_start_error_saying_so() {
    let err = match start(snakepit_adapters::Bridge::python_module("")).await {
        Ok(pool) => {
            pool.shutdown().await.unwrap();
            panic!("a pool started on an empty module name");
        }
        Err(e) => e,
    };
    assert!(
        matches!(err, snakepit_core::Error::StartFailed(_)),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("module name is empty"), "{text}");
}
