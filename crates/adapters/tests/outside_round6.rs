//! Round 6 of outside review of snakepit-adapters: the crate as it would
//! be published, the cleanup of the bundled bridges' cache when the tree
//! in use is reached by another path, and the interpreters and scripts a
//! user may get wrong.
//!
//! Tests that need a first use of the cache, or an environment of their
//! own, run in a process of their own.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::json;
use snakepit_adapters::{GenericPython, Language};
use snakepit_core::{Adapter, Pool};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// A fresh folder for one test's files, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "snakepit-round6-adapters-{name}-{}",
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

/// Set in a test's own process; its value is the role it plays there.
const CHILD: &str = "SNAKEPIT_ROUND6_ADAPTERS_CHILD";

fn role() -> Option<String> {
    std::env::var(CHILD).ok()
}

/// Test `name` run again in a process of its own with `env`; waited for,
/// and checked to have passed.
fn in_own_process(name: &str, role: &str, env: &[(&str, &Path)]) -> String {
    let mut cmd = snakepit_tests::this_test(name);
    cmd.arg("--include-ignored").env(CHILD, role);
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
    format!("{stdout}\n{stderr}")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts a pool of one bundled Python worker, pings it, shuts it down.
async fn ping_a_worker() {
    let builder = Pool::builder(GenericPython).size(1).configure(|c| {
        c.worker_init_timeout = Duration::from_secs(60);
        c.startup_timeout = Duration::from_secs(90);
    });
    let pool = tokio::time::timeout(Duration::from_secs(180), builder.start())
        .await
        .expect("start() hung")
        .unwrap_or_else(|e| panic!("{e}"));
    let r = pool.execute("ping", json!({})).await.expect("ping");
    assert_eq!(r["status"], "ok", "{r}");
    pool.shutdown().await.unwrap();
}

/// In its own process: starts a worker from the cache and pings it.
fn a_host() {
    runtime().block_on(ping_a_worker());
}

/// Sets the modification time of `path` (a file or a directory) to `age` ago.
fn age(path: &Path, age: Duration) {
    std::fs::File::open(path)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// A tree as another version of the bridges would have written it, its
/// `.complete` mark and itself `old` ago.
fn other_version(cache: &Path, name: &str, old: Duration) -> PathBuf {
    let tree = cache.join(name);
    let worker = tree.join("python/generic_worker.py");
    std::fs::create_dir_all(worker.parent().unwrap()).unwrap();
    std::fs::write(&worker, "raise SystemExit('another version ran')\n").unwrap();
    std::fs::write(tree.join(".complete"), "").unwrap();
    age(&tree.join(".complete"), old);
    age(&tree.join("python"), old);
    age(&tree, old);
    tree
}

/// Stand-in processes, killed and reaped when ended or dropped (a failed
/// assertion leaves none behind).
struct StandIns(Vec<std::process::Child>);

impl StandIns {
    fn end(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.0.clear();
    }
}

impl Drop for StandIns {
    fn drop(&mut self) {
        self.end();
    }
}

/// The paths of the files `bridge_files!` embeds, read from the source.
fn embedded_paths() -> Vec<String> {
    let source =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/embedded.rs"))
            .unwrap();
    let start = source.find("bridge_files![").expect("the list of files");
    let list = &source[start..start + source[start..].find("];").unwrap()];
    let paths: Vec<String> = list
        .split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    assert!(paths.len() > 10, "{paths:?}");
    paths
}

/// The crate is published with every file it embeds: `include_str!` of a
/// file the package leaves out fails the build of every project that
/// depends on the published crate. (The Node.js ES module launcher,
/// `esm_main.mjs` and `esm_hooks.mjs`, was embedded but not in the
/// package's `include` list.)
#[test]
fn the_published_crate_holds_every_file_it_embeds() {
    #[allow(clippy::disallowed_methods)] // cargo itself, not a worker
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "package",
            "--list",
            "--allow-dirty",
            "--offline",
            "-p",
            "snakepit-adapters",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo runs");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo package --list failed:\n{listed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: std::collections::HashSet<&str> = listed.lines().map(str::trim).collect();
    let missing: Vec<String> = embedded_paths()
        .into_iter()
        .map(|p| format!("bridges/{p}"))
        .filter(|p| !listed.contains(p.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "embedded but not in the package: {missing:?}"
    );
}

/// A tree of another version whose mark is old but that a live worker
/// names on its module path by another path (through a symbolic link to
/// the cache, or with `..` in it: a `HOME` or `SNAKEPIT_BRIDGE_DIR` spelt
/// differently by the two hosts) is in use, and kept; once no worker names
/// it, the next host removes it.
#[test]
fn an_old_tree_a_worker_names_by_another_path_is_kept_while_it_runs() {
    const NAME: &str = "an_old_tree_a_worker_names_by_another_path_is_kept_while_it_runs";
    if role().is_some() {
        a_host();
        return;
    }
    let dir = Dir::new("tree-by-another-path");
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&cache, &link).unwrap();
    let by_link = other_version(&cache, "bridges-0000000000000011", 8 * DAY);
    let by_dots = other_version(&cache, "bridges-0000000000000012", 8 * DAY);
    let by_relative = other_version(&cache, "bridges-0000000000000013", 8 * DAY);
    let unused = other_version(&cache, "bridges-0000000000000014", 8 * DAY);
    // Stand-ins for that version's workers, each naming its tree another way.
    let dots = cache.join("../cache/bridges-0000000000000012/python");
    #[allow(clippy::disallowed_methods)] // stand-ins killed below, not workers
    let mut workers = StandIns(vec![
        std::process::Command::new("sleep")
            .arg("600")
            .env("PYTHONPATH", link.join("bridges-0000000000000011/python"))
            .spawn()
            .expect("sleep runs"),
        std::process::Command::new("sleep")
            .arg("600")
            .env("RUBYLIB", format!("/nowhere:{}", dots.display()))
            .spawn()
            .expect("sleep runs"),
        // A relative module path is read from that process's directory.
        std::process::Command::new("sleep")
            .arg("600")
            .current_dir(&link)
            .env("NODE_PATH", "bridges-0000000000000013/node")
            .spawn()
            .expect("sleep runs"),
    ]);
    in_own_process(NAME, "host", &[("SNAKEPIT_BRIDGE_DIR", &cache)]);
    let kept =
        [&by_link, &by_dots, &by_relative].map(|t| t.join("python/generic_worker.py").exists());
    workers.end();
    assert!(!unused.exists(), "a tree no process names was kept");
    assert_eq!(
        kept, [true; 3],
        "trees in use by way of a link, `..`, a relative path"
    );
    in_own_process(NAME, "host", &[("SNAKEPIT_BRIDGE_DIR", &cache)]);
    for tree in [by_link, by_dots, by_relative] {
        assert!(
            !tree.exists(),
            "{} was kept after its worker ended",
            tree.display()
        );
    }
}

/// Writes an executable shell script at `path`.
fn script(path: &Path, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_path_buf()
}

/// `Inspection::version`: the first line of `--version`, of stderr when
/// stdout has none, and `None` when the run fails. A pyenv shim whose
/// version is not installed prints why on stderr and exits 127; that
/// message was reported as the interpreter's version (and `snakepit
/// doctor` printed it in the version column). An interpreter that prints
/// its version on stderr and succeeds (as Python 2 did) has that version;
/// one that cannot run at all (a directory) has none and no path.
#[test]
fn inspect_gives_no_version_for_an_interpreter_that_fails_its_version_run() {
    const NAME: &str = "inspect_gives_no_version_for_an_interpreter_that_fails_its_version_run";
    if role().is_some() {
        let var = |name: &str| PathBuf::from(std::env::var_os(name).unwrap());
        let failing = Language::Python.inspect();
        assert_eq!(failing.program, var("SNAKEPIT_PYTHON"));
        assert_eq!(failing.path, Some(var("SNAKEPIT_PYTHON")), "{failing:?}");
        assert_eq!(failing.version, None, "{failing:?}");
        assert_eq!(failing.real_binary, None, "{failing:?}");
        assert!(
            failing.packages.iter().all(|(_, v)| v.is_none()),
            "{failing:?}"
        );
        let on_stderr = Language::Ruby.inspect();
        assert_eq!(
            on_stderr.version.as_deref(),
            Some("ruby 9.9.9 (from stderr)"),
            "{on_stderr:?}"
        );
        let directory = Language::Node.inspect();
        assert_eq!(directory.path, None, "{directory:?}");
        assert_eq!(directory.version, None, "{directory:?}");
        return;
    }
    let dir = Dir::new("inspect-failing");
    let shim = script(
        &dir.path().join("shims/python3"),
        "#!/bin/sh\necho \"pyenv: python3: command not found\" >&2\nexit 127\n",
    );
    let ruby = script(
        &dir.path().join("bin/ruby"),
        "#!/bin/sh\necho 'ruby 9.9.9 (from stderr)' >&2\nexit 0\n",
    );
    let node = dir.path().join("node-dir");
    std::fs::create_dir_all(&node).unwrap();
    in_own_process(
        NAME,
        "host",
        &[
            ("SNAKEPIT_PYTHON", &shim),
            ("SNAKEPIT_RUBY", &ruby),
            ("SNAKEPIT_NODE", &node),
        ],
    );
}

/// The module path's first entry in the launch of `adapter`: the bundled
/// bridge's directory its workers import from.
fn bridge_dir_of(adapter: &impl Adapter) -> PathBuf {
    let launch = adapter.launch();
    let (_, paths) = launch
        .env
        .iter()
        .find(|(k, _)| k == "PYTHONPATH")
        .expect("a module path");
    std::env::split_paths(paths).next().expect("an entry")
}

/// A cache directory that other users may change (it, or a directory
/// above it, writable by others without the sticky bit) is not used: such
/// a user could rename the tree a host checked and put their own in its
/// place, for every later worker to import (a running host checks only
/// that the tree is still there). The bridges go to a new private
/// directory instead, with a warning naming the unsafe directory; nothing
/// is written to it. A sticky directory open to all (as `/tmp`) is used.
/// (The tree was written to, and run from, the open directory.)
#[test]
fn a_cache_directory_others_may_change_is_not_used() {
    const NAME: &str = "a_cache_directory_others_may_change_is_not_used";
    if let Some(role) = role() {
        let base = PathBuf::from(std::env::var_os("SNAKEPIT_BRIDGE_DIR").unwrap());
        let report = PathBuf::from(std::env::var_os("SNAKEPIT_ROUND6_REPORT").unwrap());
        let events = snakepit_tests::Events::global();
        snakepit_core::Adapter::check(&GenericPython).expect("the bridges are written");
        let used = bridge_dir_of(&GenericPython);
        std::fs::write(&report, used.as_os_str().as_encoded_bytes()).unwrap();
        a_host();
        let warned = events.all().into_iter().any(|(_, level, fields)| {
            level == tracing::Level::WARN
                && fields.iter().any(|(name, text)| {
                    name == "message"
                        && text.contains(&base.display().to_string())
                        && text.contains("other users")
                })
        });
        if role == "unsafe" {
            assert!(!used.starts_with(&base), "{} is used", used.display());
            assert!(warned, "no warning names {}", base.display());
        } else {
            assert!(used.starts_with(&base), "{} is not used", base.display());
            assert!(!warned, "a warning about a safe directory");
        }
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = Dir::new("open-cache");
    let mode = |path: &Path, mode: u32| {
        std::fs::create_dir_all(path).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let open = dir.path().join("open");
    mode(&open, 0o777);
    let open_itself = dir.path().join("open-itself");
    mode(&open_itself, 0o757);
    let sticky = dir.path().join("sticky");
    mode(&sticky, 0o1777);
    for (base, role) in [
        (open.join("cache"), "unsafe"),
        (open_itself.clone(), "unsafe"),
        (sticky.join("cache"), "safe"),
    ] {
        let report = dir.path().join("report");
        in_own_process(
            NAME,
            role,
            &[
                ("SNAKEPIT_BRIDGE_DIR", &base),
                ("SNAKEPIT_ROUND6_REPORT", &report),
            ],
        );
        let used = PathBuf::from(std::fs::read_to_string(&report).unwrap());
        if role == "unsafe" {
            let written: Vec<_> = std::fs::read_dir(&base)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(
                written.is_empty(),
                "written to {}: {written:?}",
                base.display()
            );
            // The private directory of that host, left behind: removed here.
            let own = used
                .ancestors()
                .find(|a| {
                    a.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("snakepit-bridges-"))
                })
                .expect("a private directory");
            let _ = std::fs::remove_dir_all(own);
        }
    }
}

/// A running host whose tree went (a cleaner of old files removed the
/// whole cache directory) writes it again before its next worker start,
/// but not into a directory that someone made again meanwhile open to
/// other users (the cleaner's leftover name in `/tmp`, taken by another
/// user): that start fails, naming the directory and why, rather than
/// run a tree that others could swap for their own. (The tree was
/// written there again, and run.)
#[test]
fn a_tree_that_went_is_not_written_again_into_a_directory_made_open() {
    const NAME: &str = "a_tree_that_went_is_not_written_again_into_a_directory_made_open";
    if role().is_some() {
        let base = PathBuf::from(std::env::var_os("SNAKEPIT_BRIDGE_DIR").unwrap());
        let started = PathBuf::from(std::env::var_os("SNAKEPIT_ROUND6_STARTED").unwrap());
        let swapped = PathBuf::from(std::env::var_os("SNAKEPIT_ROUND6_SWAPPED").unwrap());
        runtime().block_on(async {
            ping_a_worker().await;
            std::fs::write(&started, "").unwrap();
            assert!(
                snakepit_tests::eventually(120, || swapped.exists()).await,
                "the directory was not made again within 120 s"
            );
            let builder = Pool::builder(GenericPython).size(1).configure(|c| {
                c.worker_init_timeout = Duration::from_secs(60);
                c.startup_timeout = Duration::from_secs(90);
            });
            let started = tokio::time::timeout(Duration::from_secs(180), builder.start())
                .await
                .expect("start() hung");
            let err = match started {
                Ok(pool) => {
                    let _ = pool.shutdown().await;
                    panic!("a worker started from {}", base.display());
                }
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains(&base.display().to_string()) && err.contains("other users"),
                "{err}"
            );
        });
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = Dir::new("made-open");
    let base = dir.path().join("cache");
    let started = dir.path().join("started");
    let swapped = dir.path().join("swapped");
    let mut cmd = snakepit_tests::this_test(NAME);
    cmd.arg("--include-ignored")
        .env(CHILD, "host")
        .env("SNAKEPIT_BRIDGE_DIR", &base)
        .env("SNAKEPIT_ROUND6_STARTED", &started)
        .env("SNAKEPIT_ROUND6_SWAPPED", &swapped)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let host = cmd.spawn().expect("the test binary runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the host did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::remove_dir_all(&base).unwrap();
    std::fs::create_dir(&base).unwrap();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(&swapped, "").unwrap();
    let out = host.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the host failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written: Vec<_> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(written.is_empty(), "written again: {written:?}");
}

/// `Inspection::packages`: each bridge package with its version, `None`
/// when missing. A package that fails as it loads counts as missing, and
/// takes nothing else with it: an `opentelemetry` that raises an error
/// (Ruby) or exits (Python) as it is loaded left the probe without output,
/// and the installed `msgpack` was reported missing too.
#[test]
fn a_package_that_fails_as_it_loads_does_not_hide_the_others() {
    const NAME: &str = "a_package_that_fails_as_it_loads_does_not_hide_the_others";
    if role().is_some() {
        for language in [Language::Python, Language::Ruby] {
            let found = language.inspect();
            let version = |name: &str| {
                found
                    .packages
                    .iter()
                    .find(|(p, _)| p.name == name)
                    .unwrap_or_else(|| panic!("{name} is inspected"))
                    .1
                    .clone()
            };
            assert!(version("msgpack").is_some(), "{found:?}");
            assert_eq!(version("opentelemetry-api"), None, "{found:?}");
        }
        return;
    }
    let dir = Dir::new("failing-package");
    let python = dir.path().join("python/opentelemetry");
    std::fs::create_dir_all(&python).unwrap();
    std::fs::write(python.join("__init__.py"), "raise SystemExit(3)\n").unwrap();
    let ruby = dir.path().join("ruby");
    std::fs::create_dir_all(&ruby).unwrap();
    std::fs::write(
        ruby.join("opentelemetry.rb"),
        "raise 'this opentelemetry is broken'\n",
    )
    .unwrap();
    in_own_process(
        NAME,
        "host",
        &[
            ("PYTHONPATH", &dir.path().join("python")),
            ("RUBYLIB", &ruby),
        ],
    );
}

/// An ES module worker that imports the bridge and says it is one.
const ESM_WORKER: &str = "import { Worker } from 'snakepit-bridge';\nnew Worker({ commands: { kind: () => ({ require: typeof require }) } }).run();\n";

/// docs/bridges.md: a `.js` "in a package whose nearest `package.json`
/// says `"type": "module"`; or one with `import` or `export` statements
/// whose package declares no type" runs through the launcher that lets
/// its `import ... from 'snakepit-bridge'` find the bridge. Node.js reads
/// a `package.json`, and a script, that starts with a byte order mark (as
/// some editors save them) as it reads one without; the adapter took such
/// a `package.json` for unreadable, and missed an `import` on such a
/// script's first line, ran the worker without the launcher, and the
/// start failed with "Cannot find package 'snakepit-bridge'".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_workers_saved_with_a_byte_order_mark_import_the_bridge() {
    let dir = Dir::new("bom");
    let typed = dir.path().join("typed");
    std::fs::create_dir_all(&typed).unwrap();
    std::fs::write(
        typed.join("package.json"),
        "\u{feff}{\"name\": \"app\", \"type\": \"module\"}\n",
    )
    .unwrap();
    std::fs::write(typed.join("worker.js"), ESM_WORKER).unwrap();
    let untyped = dir.path().join("untyped");
    std::fs::create_dir_all(&untyped).unwrap();
    std::fs::write(untyped.join("package.json"), "{\"name\": \"app\"}\n").unwrap();
    std::fs::write(untyped.join("worker.js"), format!("\u{feff}{ESM_WORKER}")).unwrap();
    for script in [typed.join("worker.js"), untyped.join("worker.js")] {
        let builder = Pool::builder(snakepit_adapters::Bridge::node(&script))
            .size(1)
            .configure(|c| {
                c.worker_init_timeout = Duration::from_secs(60);
                c.startup_timeout = Duration::from_secs(90);
            });
        let pool = tokio::time::timeout(Duration::from_secs(180), builder.start())
            .await
            .expect("start() hung")
            .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
        let r = pool.execute("kind", json!({})).await.expect("kind");
        assert_eq!(r["require"], "undefined", "an ES module: {r}");
        pool.shutdown().await.unwrap();
    }
}
