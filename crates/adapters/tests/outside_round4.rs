//! Round 4 of the outside review of `snakepit-adapters`, through the public
//! API only, against what docs/bridges.md, docs/preload.md and the crate's
//! rustdoc promise: the bridge cache directory under hostile or careless
//! variables (relative, empty) and planted by another user; scripts that
//! are FIFOs or devices; interpreters that cannot be executed; a preload
//! template whose script forks itself; and `SNAKEPIT_PRELOAD` left in the
//! host's environment.
//!
//! Tests that set this process's environment (the bridge directory is
//! chosen once per process) run in a process of their own: this test
//! binary, started again for that one test.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use snakepit_adapters::{Bridge, GenericPython, Language};
use snakepit_core::{Adapter, Error, Pool};
use snakepit_tests::{alive, eventually, python};

/// A fresh directory for one test's files, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir =
            std::env::temp_dir().join(format!("snakepit-outside-r4-{name}-{}", std::process::id()));
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

const CHILD: &str = "SNAKEPIT_OUTSIDE_R4_CHILD";

/// Runs test `name` again in a process of its own, in directory `cwd`,
/// with `env` set and `unset` removed there; whether this call is that
/// process (then the caller runs the body).
fn in_own_process(name: &str, env: &[(&str, &str)], unset: &[&str], cwd: &Path) -> bool {
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let mut cmd = snakepit_tests::this_test(name);
    cmd.env(CHILD, "1").current_dir(cwd);
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

fn worker(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workers")
        .join(name)
}

/// The interpreter the tests run for `lang`.
fn interpreter(lang: Language) -> PathBuf {
    match lang {
        Language::Python => PathBuf::from(python()),
        Language::Node => PathBuf::from("node"),
        _ => PathBuf::from("ruby"),
    }
}

/// Starts a pool of one worker with room for a loaded machine; `start()`
/// itself is bounded so that none hangs the test.
async fn try_start(adapter: impl Adapter, size: usize) -> Result<Pool, Error> {
    let builder = Pool::builder(adapter).size(size).configure(|c| {
        c.worker_init_timeout = Duration::from_secs(30);
        c.startup_timeout = Duration::from_secs(60);
        c.health_check_interval = Duration::ZERO;
    });
    tokio::time::timeout(Duration::from_secs(150), builder.start())
        .await
        .expect("start() hung")
}

async fn call(pool: &Pool, command: &str) -> Result<Value, Error> {
    tokio::time::timeout(Duration::from_secs(60), pool.execute(command, json!({})))
        .await
        .expect("a call hung")
}

async fn shut_down(pool: Pool) {
    tokio::time::timeout(Duration::from_secs(60), pool.shutdown())
        .await
        .expect("shutdown hung")
        .expect("shutdown");
}

/// The `where` worker (`workers/outside_round4_where.py`) started in
/// `cwd`: where it imported the bridge from.
async fn bridge_file_seen_from(cwd: &Path) -> PathBuf {
    let pool = try_start(
        Bridge::python(worker("outside_round4_where.py"))
            .interpreter(python())
            .cwd(cwd),
        1,
    )
    .await
    .unwrap_or_else(|e| panic!("start in {}: {e}", cwd.display()));
    let r = call(&pool, "where").await.expect("where");
    assert_eq!(r["cwd"], json!(cwd.to_str().unwrap()), "{r}");
    shut_down(pool).await;
    PathBuf::from(r["bridge"].as_str().expect("bridge"))
}

/// Every generic worker, started in `cwd`, answers `ping`.
async fn generic_workers_serve_in(cwd: &Path) {
    for lang in Language::ALL {
        let pool = try_start(
            Bridge::generic(lang)
                .interpreter(interpreter(lang))
                .cwd(cwd),
            1,
        )
        .await
        .unwrap_or_else(|e| panic!("{lang:?} in {}: {e}", cwd.display()));
        call(&pool, "ping")
            .await
            .unwrap_or_else(|e| panic!("{lang:?}: {e}"));
        shut_down(pool).await;
    }
}

/// `SNAKEPIT_BRIDGE_DIR=rel-bridges`, relative, is taken from the host's
/// directory, as a relative interpreter path is: workers started in
/// another directory (`.cwd`) still find the bundled bridge, in every
/// language (a relative module path would be read from the worker's
/// directory, where there is no bridge).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_snakepit_bridge_dir_is_taken_from_the_hosts_directory() {
    let dir = Dir::new("rel-bridge-dir");
    if !in_own_process(
        "a_relative_snakepit_bridge_dir_is_taken_from_the_hosts_directory",
        &[("SNAKEPIT_BRIDGE_DIR", "rel-bridges")],
        &[],
        dir.path(),
    ) {
        return;
    }
    let host = std::env::current_dir().unwrap();
    let elsewhere = Dir::new("rel-bridge-elsewhere");
    let bridge = bridge_file_seen_from(elsewhere.path()).await;
    assert!(
        bridge.starts_with(host.join("rel-bridges")),
        "the bridge came from {}, not from {}/rel-bridges",
        bridge.display(),
        host.display()
    );
    generic_workers_serve_in(elsewhere.path()).await;
}

/// An empty `SNAKEPIT_BRIDGE_DIR` or `XDG_CACHE_HOME` names no directory
/// (as an empty `VIRTUAL_ENV` names none): the bridges go to
/// `~/.cache/snakepit`, and nothing is written to the host's directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_bridge_dir_variables_name_no_directory() {
    let dir = Dir::new("empty-bridge-vars");
    let home = dir.path().join("home");
    let cwd = dir.path().join("cwd");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&cwd).unwrap();
    if !in_own_process(
        "empty_bridge_dir_variables_name_no_directory",
        &[
            ("SNAKEPIT_BRIDGE_DIR", ""),
            ("XDG_CACHE_HOME", ""),
            ("HOME", home.to_str().unwrap()),
        ],
        &[],
        &cwd,
    ) {
        let left: Vec<_> = std::fs::read_dir(&cwd).unwrap().flatten().collect();
        assert!(left.is_empty(), "written to the host's directory: {left:?}");
        return;
    }
    let home = PathBuf::from(std::env::var_os("HOME").unwrap());
    let bridge = bridge_file_seen_from(&std::env::current_dir().unwrap()).await;
    assert!(
        bridge.starts_with(home.join(".cache/snakepit")),
        "the bridge came from {}",
        bridge.display()
    );
}

/// A relative `XDG_CACHE_HOME` is ignored, as the XDG base directory
/// specification asks: the bridges go to `~/.cache/snakepit`, and a
/// worker in another directory finds them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_xdg_cache_home_is_ignored() {
    let dir = Dir::new("rel-xdg");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    if !in_own_process(
        "a_relative_xdg_cache_home_is_ignored",
        &[
            ("XDG_CACHE_HOME", "rel-cache"),
            ("HOME", home.to_str().unwrap()),
        ],
        &["SNAKEPIT_BRIDGE_DIR"],
        dir.path(),
    ) {
        return;
    }
    let home = PathBuf::from(std::env::var_os("HOME").unwrap());
    let elsewhere = Dir::new("rel-xdg-elsewhere");
    let bridge = bridge_file_seen_from(elsewhere.path()).await;
    assert!(
        bridge.starts_with(home.join(".cache/snakepit")),
        "the bridge came from {}",
        bridge.display()
    );
    generic_workers_serve_in(elsewhere.path()).await;
}

fn euid() -> u32 {
    #[allow(unsafe_code)]
    // SAFETY: geteuid(2) has no preconditions and touches no memory.
    unsafe {
        libc::geteuid()
    }
}

/// Every entry under `root` (itself included), not following links.
fn tree(root: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap().flatten() {
                todo.push(entry.path());
            }
        }
        out.push((path, meta));
    }
    out
}

/// The bridge directory of a process whose `SNAKEPIT_BRIDGE_DIR` is
/// `base`: the one `bridges-*` directory in it.
fn bridges_in(base: &Path) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(base)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("bridges-") && !name.contains(".tmp")
        })
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

/// A bridge tree planted where this process keeps its bridges
/// (`SNAKEPIT_BRIDGE_DIR` in a directory others may write, such as
/// `/tmp`), holding exactly the embedded files but writable by everyone
/// and with a module that is a symbolic link to a copy elsewhere: the
/// planter could change any of it after the check, and every later worker
/// would import the change. It is not run: the workers import a tree of
/// this user's that nobody else may enter and that holds no link. Planted
/// by another user (when this test runs as root), the tree is left as it
/// is and the bridges are written elsewhere; planted as this user's, it
/// is written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_tree_planted_open_to_others_is_not_used() {
    const PHASE: &str = "SNAKEPIT_OUTSIDE_R4_PHASE";
    let name = "a_bridge_tree_planted_open_to_others_is_not_used";
    if std::env::var_os(CHILD).is_some() {
        if std::env::var_os(PHASE).is_some_and(|p| p == "write") {
            // Writes the genuine tree, to be copied.
            let _ = GenericPython.launch();
            return;
        }
        let base = PathBuf::from(std::env::var_os("SNAKEPIT_BRIDGE_DIR").unwrap());
        let planted = bridges_in(&base);
        let cwd = std::env::current_dir().unwrap();
        let bridge = bridge_file_seen_from(&cwd).await;
        // <root>/python/snakepit_bridge/__init__.py
        let used = bridge.ancestors().nth(3).unwrap().to_path_buf();
        let me = euid();
        let root_meta = std::fs::symlink_metadata(&used).unwrap();
        assert!(root_meta.is_dir(), "the tree is a directory, not a link");
        assert_eq!(root_meta.uid(), me, "{} is this user's", used.display());
        assert_eq!(
            root_meta.permissions().mode() & 0o077,
            0,
            "nobody else may enter {}",
            used.display()
        );
        for (path, meta) in tree(&used) {
            assert!(!meta.is_symlink(), "a link in the tree: {}", path.display());
            assert_eq!(meta.uid(), me, "{} is another user's", path.display());
        }
        if std::env::var_os(PHASE).is_some_and(|p| p == "another") {
            assert_ne!(used, planted, "another user's tree was used");
            let module = planted.join("python/snakepit_bridge/_version.py");
            assert!(
                std::fs::symlink_metadata(module).unwrap().is_symlink(),
                "another user's tree was changed"
            );
            // The private directory of this process, left behind otherwise.
            let private = used.parent().unwrap();
            let name = private.file_name().unwrap().to_string_lossy();
            if name.starts_with("snakepit-bridges-") {
                let _ = std::fs::remove_dir_all(private);
            }
        }
        return;
    }
    let dir = Dir::new("planted");
    let genuine = dir.path().join("genuine");
    std::fs::create_dir_all(&genuine).unwrap();
    let run = |base: &Path, phase: &str| {
        let out = snakepit_tests::this_test(name)
            .env(CHILD, "1")
            .env(PHASE, phase)
            .env("SNAKEPIT_BRIDGE_DIR", base)
            .current_dir(dir.path())
            .output()
            .expect("the test binary runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "phase {phase}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&genuine, "write");
    let source = bridges_in(&genuine);
    let another = euid() == 0;
    for (shared, chown) in [("shared-own", false), ("shared-another", another)] {
        let shared = dir.path().join(shared);
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let planted = shared.join(source.file_name().unwrap());
        #[allow(clippy::disallowed_methods)] // cp, not a worker
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(&source)
            .arg(&planted)
            .status()
            .unwrap();
        assert!(copied.success());
        // One module becomes a link to an identical copy the planter keeps.
        let module = planted.join("python/snakepit_bridge/_version.py");
        let kept = shared.join("planters_version.py");
        std::fs::copy(&module, &kept).unwrap();
        std::fs::remove_file(&module).unwrap();
        std::os::unix::fs::symlink(&kept, &module).unwrap();
        for (path, meta) in tree(&planted) {
            if !meta.is_symlink() {
                let mode = if meta.is_dir() { 0o777 } else { 0o666 };
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            }
        }
        if chown {
            // Another user's (nobody's), as it would be when planted by one.
            #[allow(clippy::disallowed_methods)] // chown, not a worker
            let chowned = std::process::Command::new("chown")
                .args(["-R", "-h", "65534:65534"])
                .arg(&planted)
                .status()
                .unwrap();
            assert!(chowned.success());
        }
        run(&shared, if chown { "another" } else { "own" });
    }
}

/// A script path that names a FIFO or a device (`/dev/null`; `/dev/zero`
/// would be read without end) is no script: the start fails at once with
/// `StartFailed` naming it, in every language, rather than the worker
/// blocking on the FIFO until the init timeout or running an empty file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_that_is_a_fifo_or_a_device_is_a_start_error_naming_it() {
    let dir = Dir::new("fifo-script");
    let fifo = dir.path().join("worker.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    #[allow(unsafe_code)]
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    let made = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(made, 0, "mkfifo");
    for lang in Language::ALL {
        let scripts: [(Bridge, String); 3] = [
            (
                script_of(lang, &fifo).cwd(dir.path()),
                fifo.display().to_string(),
            ),
            (
                script_of(lang, Path::new("worker.fifo")).cwd(dir.path()),
                "worker.fifo".into(),
            ),
            (script_of(lang, Path::new("/dev/null")), "/dev/null".into()),
        ];
        for (bridge, shown) in scripts {
            let err = match try_start(bridge.interpreter(interpreter(lang)), 1).await {
                Ok(pool) => {
                    shut_down(pool).await;
                    panic!("{lang:?}: a pool started on {shown}");
                }
                Err(e) => e,
            };
            assert!(matches!(err, Error::StartFailed(_)), "{lang:?}: {err:?}");
            let text = err.to_string();
            assert!(text.contains(&shown), "{lang:?}: {text}");
        }
    }
}

fn script_of(lang: Language, script: &Path) -> Bridge {
    match lang {
        Language::Python => Bridge::python(script),
        Language::Node => Bridge::node(script),
        _ => Bridge::ruby(script),
    }
}

/// Interpreters that cannot be executed (a symbolic link to nothing, a
/// script whose `#!` line names a missing program) fail the start with
/// `StartFailed` naming the path given, in every language; one reached
/// through a link whose name holds spaces, a newline and non-ASCII
/// characters runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interpreters_that_cannot_be_executed_are_start_errors_naming_them() {
    let dir = Dir::new("bad-interp");
    let dangling = dir.path().join("dangling-python");
    std::os::unix::fs::symlink(dir.path().join("nothing-here"), &dangling).unwrap();
    let shebang = dir.path().join("bad-shebang");
    std::fs::write(&shebang, "#!/nonexistent/r4/interp\n").unwrap();
    std::fs::set_permissions(&shebang, std::fs::Permissions::from_mode(0o755)).unwrap();
    for lang in Language::ALL {
        for program in [&dangling, &shebang] {
            let err = match try_start(Bridge::generic(lang).interpreter(program), 1).await {
                Ok(pool) => {
                    shut_down(pool).await;
                    panic!("{lang:?}: a pool started on {}", program.display());
                }
                Err(e) => e,
            };
            assert!(matches!(err, Error::StartFailed(_)), "{lang:?}: {err:?}");
            let text = err.to_string();
            assert!(
                text.contains(&program.display().to_string()),
                "{lang:?}: {text}"
            );
        }
    }
    let odd = dir.path().join("an odd\nname é");
    std::os::unix::fs::symlink(
        which(&interpreter(Language::Python)).expect("python on PATH"),
        &odd,
    )
    .unwrap();
    let pool = try_start(Bridge::generic(Language::Python).interpreter(&odd), 1)
        .await
        .expect("an interpreter at an odd path");
    call(&pool, "ping").await.unwrap();
    shut_down(pool).await;
}

fn which(program: &Path) -> Option<PathBuf> {
    if program.is_absolute() {
        return Some(program.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Every live process whose environment holds `R4_MARK=<mark>`.
fn marked(mark: &str) -> Vec<u32> {
    let needle = format!("R4_MARK={mark}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|v| v == needle.as_bytes()) && alive(pid) {
            found.push(pid);
        }
    }
    found
}

fn kill_9(pid: u32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a process of this test's pool; no memory involved.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// A preload template whose script forks before `worker.run()`: both
/// processes going on into `run()` (two templates on one socket), or the
/// started process ending and its child going on (a daemonizing library).
/// The pool either serves or fails typed, nothing hangs, and after its
/// shutdown no process of the pool is left.
async fn self_forking_template(mode: &str) {
    let mark = format!("{mode}-{}", std::process::id());
    let bridge = Bridge::python(worker("outside_round4_forks_itself.py"))
        .interpreter(python())
        .env("R4_FORK", mode)
        .env("R4_MARK", &mark)
        .preload();
    let started = try_start(bridge, 2).await;
    match started {
        Ok(pool) => {
            for _ in 0..6 {
                match call(&pool, "whoami").await {
                    Ok(v) => assert!(v["pid"].as_u64().is_some(), "{v}"),
                    Err(e) => eprintln!("{mode}: a call failed: {e}"),
                }
            }
            shut_down(pool).await;
        }
        Err(e) => eprintln!("{mode}: the start failed: {e}"),
    }
    let gone = eventually(20, || marked(&mark).is_empty()).await;
    let left = marked(&mark);
    left.iter().copied().for_each(kill_9);
    assert!(gone, "{mode}: left after shutdown: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_forks_into_two_templates_leaves_nothing_after_shutdown() {
    self_forking_template("both").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_daemonizes_leaves_nothing_after_shutdown() {
    self_forking_template("daemon").await;
}

/// `SNAKEPIT_PRELOAD=1` in the host's own environment (set by hand, or
/// inherited) does not make the workers of a pool that does not preload
/// into templates: they serve, in Python and Ruby. (The pool passes the
/// host's environment on, but only a template gets the variable.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snakepit_preload_in_the_hosts_environment_leaves_direct_workers_serving() {
    let dir = Dir::new("host-preload-var");
    if !in_own_process(
        "snakepit_preload_in_the_hosts_environment_leaves_direct_workers_serving",
        &[("SNAKEPIT_PRELOAD", "1")],
        &[],
        dir.path(),
    ) {
        return;
    }
    for lang in [Language::Python, Language::Ruby] {
        let pool = try_start(Bridge::generic(lang).interpreter(interpreter(lang)), 1)
            .await
            .unwrap_or_else(|e| panic!("{lang:?}: {e}"));
        call(&pool, "ping").await.unwrap();
        shut_down(pool).await;
    }
}

/// Runs as the host of the tests below (only when one of them starts it):
/// a preloaded pool of `workers/outside_round4_slow_start.py` whose start
/// never ends; the host is killed meanwhile.
#[test]
fn slow_start_host() {
    let (Some(pids), Some(hang)) = (std::env::var_os("R4_PIDS"), std::env::var_os("R4_HANG"))
    else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let bridge = Bridge::python(worker("outside_round4_slow_start.py"))
            .interpreter(python())
            .env("R4_PIDS", pids)
            .env("R4_HANG", hang)
            .preload();
        let started = Pool::builder(bridge)
            .size(1)
            .configure(|c| {
                c.worker_init_timeout = Duration::from_secs(600);
                c.startup_timeout = Duration::from_secs(600);
            })
            .start()
            .await;
        // Not reached: the start outlasts the host.
        drop(started);
    });
}

/// Kills the host of [`slow_start_host`] (with `R4_HANG=hang`) once its
/// template or forked worker has written its pids, then checks that every
/// process it named dies: whether a parent-death signal or the pool's
/// watchdog does it, a host killed with `SIGKILL` during a start leaves
/// nothing alive.
async fn host_killed_during_start(hang: &str) {
    let dir = Dir::new(&format!("host-killed-{hang}"));
    let pids_file = dir.path().join("pids");
    let mut host = snakepit_tests::this_test("slow_start_host")
        .env("R4_PIDS", &pids_file)
        .env("R4_HANG", hang)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let written = eventually(90, || pids_file.exists()).await;
    let _ = host.kill();
    let _ = host.wait();
    assert!(written, "{hang}: no pids were written");
    let pids: Vec<u32> = std::fs::read_to_string(&pids_file)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let gone = eventually(30, || pids.iter().all(|&p| !alive(p))).await;
    let left: Vec<u32> = pids.iter().copied().filter(|&p| alive(p)).collect();
    left.iter().copied().for_each(kill_9);
    assert!(
        gone,
        "{hang}: alive 30 s after the host's SIGKILL: {left:?} of {pids:?}"
    );
}

/// The host killed while the template loads: the template (parent-death
/// signal) and the helper process its script started both die.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_while_the_template_loads_leaves_no_template_or_helper() {
    host_killed_during_start("load").await;
}

/// The host killed while a forked worker's after-fork hook runs: the
/// worker, the helper its hook started and the template all die.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_during_an_after_fork_hook_leaves_no_process() {
    host_killed_during_start("hook").await;
}

/// `Language::inspect` (what `snakepit doctor` reports) run in a directory
/// holding Python modules named as the ones its probe imports (`json`,
/// `importlib`, `msgpack`): none of them runs, and msgpack is reported as
/// the interpreter has it, not as the directory's stand-in (a worker's
/// script, run by path, does not import from the host's directory either).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_imports_nothing_from_the_working_directory() {
    let dir = Dir::new("inspect-cwd");
    let ran = dir.path().join("ran");
    for module in ["json", "importlib", "msgpack"] {
        std::fs::write(
            dir.path().join(format!("{module}.py")),
            format!(
                "open({:?}, 'a').write('{module}\\n')\n__version__ = '99.r4'\n",
                ran.to_str().unwrap()
            ),
        )
        .unwrap();
    }
    if !in_own_process(
        "inspect_imports_nothing_from_the_working_directory",
        &[],
        &[],
        dir.path(),
    ) {
        let ran = std::fs::read_to_string(&ran).unwrap_or_default();
        assert!(ran.is_empty(), "the working directory's modules ran: {ran}");
        return;
    }
    let found = Language::Python.inspect();
    assert!(found.version.is_some(), "{found:?}");
    for (package, version) in &found.packages {
        assert_ne!(version.as_deref(), Some("99.r4"), "{}", package.name);
    }
}

/// Variables whose names no shell would take (holding `=`, a space, or
/// empty), given with `.env`, fail no start and no call, in a pool that
/// preloads (the template sets them in each forked worker) or not, in
/// Python and Ruby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_variable_names_fail_no_start_preloaded_or_not() {
    for lang in [Language::Python, Language::Ruby] {
        for preload in [false, true] {
            for name in ["A=B", "", "SP ACE"] {
                let mut bridge = Bridge::generic(lang)
                    .interpreter(interpreter(lang))
                    .env(name, "value");
                if preload {
                    bridge = bridge.preload();
                }
                let what = format!("{lang:?}, preload {preload}, {name:?}");
                let pool = try_start(bridge, 1)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                call(&pool, "ping")
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                shut_down(pool).await;
            }
        }
    }
}

/// An empty script path is no script: the start fails at once with
/// `StartFailed` saying so, in every language (Ruby and Node.js given
/// an empty path would otherwise read their program from the pool's
/// pipe, and Python would run a `__main__.py` of the working directory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_script_path_is_a_start_error_saying_so() {
    let dir = Dir::new("empty-script");
    std::fs::write(
        dir.path().join("__main__.py"),
        "raise SystemExit('the __main__.py of the working directory ran')\n",
    )
    .unwrap();
    for lang in Language::ALL {
        let bridge = script_of(lang, Path::new(""))
            .interpreter(interpreter(lang))
            .cwd(dir.path());
        let err = match try_start(bridge, 1).await {
            Ok(pool) => {
                shut_down(pool).await;
                panic!("{lang:?}: a pool started on an empty script path");
            }
            Err(e) => e,
        };
        assert!(matches!(err, Error::StartFailed(_)), "{lang:?}: {err:?}");
        let text = err.to_string();
        assert!(text.contains("empty"), "{lang:?}: {text}");
    }
}
