//! Round 5 of outside review of snakepit-adapters: the bundled bridges'
//! cache does not grow with every upgrade. A host removes the trees of
//! other versions that no host marked for a week and the leftovers of
//! crashed writes older than a day, and nothing else.
//!
//! Each host runs in a process of its own, so that it makes its first use
//! of the cache named by `SNAKEPIT_BRIDGE_DIR`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::json;
use snakepit_adapters::GenericPython;
use snakepit_core::{Adapter, Pool};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// A fresh folder for one test's files, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "snakepit-round5-cache-{name}-{}",
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

/// Set in a test's own process; its value is the role it plays there.
const CHILD: &str = "SNAKEPIT_ROUND5_CACHE_CHILD";

fn role() -> Option<String> {
    std::env::var(CHILD).ok()
}

/// Test `name` run again in a process of its own with `env`; not waited for.
fn spawn_own_process(name: &str, role: &str, env: &[(&str, &Path)]) -> std::process::Child {
    let mut cmd = snakepit_tests::this_test(name);
    cmd.arg("--include-ignored").env(CHILD, role);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the test binary runs")
}

/// Waits for a process of [`spawn_own_process`] and checks its test passed.
fn passed(child: std::process::Child, what: &str) {
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{what} failed in its own process:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn in_own_process(name: &str, role: &str, env: &[(&str, &Path)]) {
    passed(spawn_own_process(name, role, env), name);
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

/// How long ago `path` (not followed) was modified.
fn modified_ago(path: &Path) -> Duration {
    let t = std::fs::symlink_metadata(path).unwrap().modified().unwrap();
    SystemTime::now().duration_since(t).unwrap_or_default()
}

/// A tree as another version of the bridges would have written it, with
/// its `.complete` mark (when `complete`), everything `old` ago.
fn other_version(cache: &Path, name: &str, complete: bool, old: Duration) -> PathBuf {
    let tree = cache.join(name);
    let worker = tree.join("python/generic_worker.py");
    std::fs::create_dir_all(worker.parent().unwrap()).unwrap();
    std::fs::write(&worker, "raise SystemExit('another version ran')\n").unwrap();
    if complete {
        std::fs::write(tree.join(".complete"), "").unwrap();
        age(&tree.join(".complete"), old);
    }
    age(&tree.join("python"), old);
    age(&tree, old);
    tree
}

/// This version's tree in `cache`, written by a host of its own process.
fn own_tree(cache: &Path) -> PathBuf {
    let trees: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join(".complete").exists() && p.join("python/snakepit_bridge").is_dir())
        .collect();
    assert_eq!(trees.len(), 1, "{trees:?}");
    trees.into_iter().next().unwrap()
}

/// A tree of another version whose mark no host touched for eight days is
/// removed, one used an hour ago or six days ago is kept, and one cut short
/// (no mark) is judged by its own time; this version's workers start.
#[test]
fn trees_of_other_versions_unused_for_a_week_are_removed_and_used_ones_kept() {
    const NAME: &str = "trees_of_other_versions_unused_for_a_week_are_removed_and_used_ones_kept";
    if role().is_some() {
        a_host();
        return;
    }
    let dir = Dir::new("unused-trees");
    let cache = dir.0.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let unused = other_version(&cache, "bridges-0000000000000001", true, 8 * DAY);
    let hour = other_version(&cache, "bridges-0000000000000002", true, DAY / 24);
    let six_days = other_version(&cache, "bridges-0000000000000003", true, 6 * DAY);
    let cut_short = other_version(&cache, "bridges-0000000000000004", false, 8 * DAY);
    // An old tree whose mark a host of its version set recently.
    let marked = other_version(&cache, "bridges-0000000000000005", true, 8 * DAY);
    age(&marked.join(".complete"), Duration::from_secs(60));
    in_own_process(NAME, "host", &[("SNAKEPIT_BRIDGE_DIR", &cache)]);
    assert!(!unused.exists(), "an unused tree was kept");
    assert!(
        !cut_short.exists(),
        "an unused tree without a mark was kept"
    );
    assert!(hour.join("python/generic_worker.py").exists());
    assert!(six_days.join("python/generic_worker.py").exists());
    assert!(marked.join("python/generic_worker.py").exists());
    own_tree(&cache);
    let mut left: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left.len(), 4, "nothing set aside is left: {left:?}");
}

/// A tree of another version whose mark is old, but which a live process
/// names on its module path (a worker of a host that has started no worker
/// for a week, and may import more of the bridge), is kept; once that
/// process has ended, the next host removes it.
#[test]
fn an_old_tree_a_running_worker_names_on_its_module_path_is_kept_until_it_ends() {
    const NAME: &str =
        "an_old_tree_a_running_worker_names_on_its_module_path_is_kept_until_it_ends";
    if role().is_some() {
        a_host();
        return;
    }
    let dir = Dir::new("tree-in-use");
    let cache = dir.0.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let tree = other_version(&cache, "bridges-0000000000000006", true, 8 * DAY);
    // A stand-in for that version's worker: its module path names the tree.
    #[allow(clippy::disallowed_methods)] // a stand-in killed below, not a worker
    let mut worker = std::process::Command::new("sleep")
        .arg("600")
        .env("PYTHONPATH", tree.join("python"))
        .spawn()
        .expect("sleep runs");
    in_own_process(NAME, "host", &[("SNAKEPIT_BRIDGE_DIR", &cache)]);
    let kept = tree.join("python/generic_worker.py").exists();
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(kept, "a tree a running worker uses was removed");
    in_own_process(NAME, "host", &[("SNAKEPIT_BRIDGE_DIR", &cache)]);
    assert!(!tree.exists(), "the tree was kept after its worker ended");
}

/// A write's directory (`.tmp<pid>-<n>`) or a tree set aside
/// (`.old<pid>-<n>`) older than a day is removed, whatever its process
/// id; one of a minute ago (a write that may still be going on) is kept.
#[test]
fn leftovers_of_crashed_writes_older_than_a_day_are_removed_and_fresh_ones_kept() {
    const NAME: &str =
        "leftovers_of_crashed_writes_older_than_a_day_are_removed_and_fresh_ones_kept";
    if role().is_some() {
        a_host();
        return;
    }
    let dir = Dir::new("leftovers");
    let cache = dir.0.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let leftover = |name: &str, old: Duration| {
        let path = cache.join(name);
        std::fs::create_dir_all(path.join("python")).unwrap();
        std::fs::write(path.join("python/generic_worker.py"), "import sys\n").unwrap();
        age(&path.join("python"), old);
        age(&path, old);
        path
    };
    // Process id 1 is alive in every container: a crashed write's
    // directory is judged by its age, not by its pid.
    let old_tmp = leftover("bridges-00000000000000aa.tmp1-0", 2 * DAY);
    let old_old = leftover("bridges-00000000000000aa.old999999-3", 2 * DAY);
    let fresh_tmp = leftover(
        "bridges-00000000000000aa.tmp999999-0",
        Duration::from_secs(60),
    );
    let hours_tmp = leftover("bridges-00000000000000bb.tmp999999-1", DAY / 2);
    in_own_process(NAME, "host", &[("SNAKEPIT_BRIDGE_DIR", &cache)]);
    assert!(!old_tmp.exists());
    assert!(!old_old.exists());
    assert!(fresh_tmp.join("python/generic_worker.py").exists());
    assert!(hours_tmp.join("python/generic_worker.py").exists());
    own_tree(&cache);
}

/// Old entries that are not the cache's own are left alone: names of
/// other patterns, files, a symbolic link to an old tree (and the tree it
/// points to), and (when this test runs as root) another user's tree.
#[test]
fn old_things_that_are_not_the_caches_own_are_never_removed() {
    const NAME: &str = "old_things_that_are_not_the_caches_own_are_never_removed";
    if role().is_some() {
        a_host();
        return;
    }
    let dir = Dir::new("not-ours");
    let cache = dir.0.join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let old = 30 * DAY;
    let mut kept = vec![
        other_version(&cache, "bridges-00000000000000zz", true, old),
        other_version(&cache, "bridges-00000000000000000", true, old),
        other_version(&cache, "bridges-00000000000000AB", true, old),
        other_version(&cache, "bridges-0000000000000001.bak1-0", true, old),
        other_version(&cache, "my-notes", true, old),
    ];
    // An old tree elsewhere, reached through a link with a tree's name.
    let elsewhere = other_version(&dir.0, "bridges-0000000000000002", true, old);
    let link = cache.join("bridges-0000000000000003");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let link_tmp = cache.join("bridges-0000000000000003.tmp1-0");
    std::os::unix::fs::symlink(&elsewhere, &link_tmp).unwrap();
    // A file with a tree's name.
    let file = cache.join("bridges-0000000000000004");
    std::fs::write(&file, "").unwrap();
    age(&file, old);
    // Another user's tree and leftover (only root can make them here).
    let theirs = other_version(&cache, "bridges-0000000000000005", true, old);
    let theirs_tmp = other_version(&cache, "bridges-0000000000000005.tmp1-0", false, old);
    let as_root = std::os::unix::fs::lchown(&theirs, Some(65534), None).is_ok()
        && std::os::unix::fs::lchown(&theirs_tmp, Some(65534), None).is_ok();
    in_own_process(NAME, "host", &[("SNAKEPIT_BRIDGE_DIR", &cache)]);
    if as_root {
        kept.push(theirs.clone());
        kept.push(theirs_tmp.clone());
    } else {
        eprintln!("not root: another user's tree is not tested");
    }
    for path in &kept {
        assert!(
            path.join("python/generic_worker.py").exists(),
            "{} was removed",
            path.display()
        );
    }
    assert!(std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()));
    assert!(std::fs::symlink_metadata(&link_tmp).is_ok_and(|m| m.file_type().is_symlink()));
    assert!(elsewhere.join("python/generic_worker.py").exists());
    assert!(file.is_file());
    own_tree(&cache);
}

/// A host marks its tree when it first checks it and again before each
/// worker it starts, so that a host of a newer version never takes the
/// tree for unused while this one may still start workers from it: a
/// long-running host whose tree's mark is made eight days old starts
/// another worker, and the mark is new again.
#[test]
fn a_running_host_marks_its_tree_on_each_worker_start() {
    const NAME: &str = "a_running_host_marks_its_tree_on_each_worker_start";
    if role().is_some() {
        let aged = PathBuf::from(std::env::var_os("SNAKEPIT_ROUND5_AGED").unwrap());
        let started = PathBuf::from(std::env::var_os("SNAKEPIT_ROUND5_STARTED").unwrap());
        runtime().block_on(async {
            ping_a_worker().await;
            std::fs::write(&started, "").unwrap();
            assert!(
                snakepit_tests::eventually(120, || aged.exists()).await,
                "the mark was not aged within 120 s"
            );
            ping_a_worker().await;
        });
        return;
    }
    let dir = Dir::new("marks");
    let cache = dir.0.join("cache");
    let aged = dir.0.join("aged");
    let started = dir.0.join("started");
    // A first host finds its tree's mark eight days old and renews it.
    in_own_process(
        NAME,
        "first",
        &[
            ("SNAKEPIT_BRIDGE_DIR", &cache),
            ("SNAKEPIT_ROUND5_AGED", &dir.0),
            ("SNAKEPIT_ROUND5_STARTED", &dir.0.join("first-started")),
        ],
    );
    let mark = own_tree(&cache).join(".complete");
    age(&mark, 8 * DAY);
    assert!(modified_ago(&mark) > 7 * DAY);
    let host = spawn_own_process(
        NAME,
        "host",
        &[
            ("SNAKEPIT_BRIDGE_DIR", &cache),
            ("SNAKEPIT_ROUND5_AGED", &aged),
            ("SNAKEPIT_ROUND5_STARTED", &started),
        ],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    while !started.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the host did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        modified_ago(&mark) < DAY,
        "the first check did not mark the tree"
    );
    // The host now runs; its tree looks unused until it starts a worker.
    age(&mark, 8 * DAY);
    std::fs::write(&aged, "").unwrap();
    passed(host, "the running host");
    assert!(
        modified_ago(&mark) < DAY,
        "a worker start did not mark the tree"
    );
    let _ = Adapter::check(&GenericPython);
}
