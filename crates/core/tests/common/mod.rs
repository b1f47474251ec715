//! Adapters that run the test workers in `tests/workers/`.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::path::PathBuf;
use std::time::Duration;

use snakepit_core::{Adapter, Launch, Pool, PoolBuilder, WireCodec};

pub use snakepit_tests::{alive, eventually, python};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The languages of the bundled bridges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    Python,
    Node,
    Ruby,
}

/// `script`, given inline (`-c` / `-e`), run by `lang`'s interpreter with
/// its bridge on the path; a Node.js script finds the bridge at
/// `process.env.SNAKEPIT_NODE_BRIDGE`.
pub fn inline_launch(lang: Lang, script: &str) -> Launch {
    match lang {
        Lang::Python => Launch::new(python())
            .arg("-c")
            .arg(script)
            .env("PYTHONPATH", root().join("bridges/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        Lang::Node => Launch::new("node")
            .arg("-e")
            .arg(script)
            .env(
                "SNAKEPIT_NODE_BRIDGE",
                root().join("bridges/node/lib/index.js"),
            )
            .env("NODE_PATH", root().join("bridges/node/node_modules")),
        Lang::Ruby => Launch::new("ruby")
            .arg("-e")
            .arg(script)
            .env("RUBYLIB", root().join("bridges/ruby/lib")),
    }
}

/// The bridge-based test worker.
pub struct TestWorker {
    pub codec: WireCodec,
    pub extra_args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl TestWorker {
    pub fn new() -> Self {
        TestWorker {
            codec: WireCodec::Json,
            extra_args: vec![],
            env: vec![],
        }
    }
}

impl Adapter for TestWorker {
    fn launch(&self) -> Launch {
        let mut l = Launch::new(python())
            .arg(root().join("crates/core/tests/workers/test_worker.py"))
            .env("PYTHONPATH", root().join("bridges/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1");
        for a in &self.extra_args {
            l = l.arg(a);
        }
        for (k, v) in &self.env {
            l = l.env(k, v);
        }
        l
    }
    fn codec(&self) -> WireCodec {
        self.codec
    }
}

/// The raw original-protocol worker in a given misbehaviour mode.
pub struct Raw(pub &'static str);

impl Adapter for Raw {
    fn launch(&self) -> Launch {
        Launch::new(python())
            .arg(root().join("crates/core/tests/workers/raw_worker.py"))
            .arg(self.0)
    }
    fn command_timeout(&self, _: &str) -> Duration {
        Duration::from_secs(10)
    }
}

/// A builder with test-friendly timings.
pub fn builder(adapter: impl Adapter) -> PoolBuilder {
    Pool::builder(adapter).configure(|c| {
        c.shutdown_grace_period = Duration::from_millis(500);
        c.worker_init_timeout = Duration::from_secs(10);
        c.restart_backoff = Duration::from_millis(20);
    })
}

/// Kills a process from outside, as an operator or the OOM killer would.
#[allow(clippy::disallowed_methods)] // `kill`, not a worker
pub fn kill_9(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}

/// The directories [`temp_dir`] made, removed when the test process exits.
static MADE: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

extern "C" fn remove_temp_dirs() {
    let made = std::mem::take(&mut *MADE.lock().unwrap_or_else(|e| e.into_inner()));
    for dir in made {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A directory of its own under the system's temporary directory, removed
/// with its contents when the test process exits (`atexit`: a test that
/// passes or fails leaves nothing in `/tmp`; one killed by a signal does).
#[allow(unsafe_code)]
pub fn temp_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    let dir = std::env::temp_dir().join(format!(
        "snakepit-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    REGISTERED.call_once(|| {
        // SAFETY: registers a plain function with no arguments to run at exit.
        unsafe { libc::atexit(remove_temp_dirs) };
    });
    MADE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir.clone());
    dir
}

/// This process's resident memory, in KiB.
pub fn host_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// After a call that timed out on it, worker `pid` answers the next call,
/// with that call's own token (not a late reply of the one before).
pub async fn the_same_worker_answers_next(pool: &Pool, pid: u32) {
    let r = pool
        .execute("sleep", serde_json::json!({"ms": 0, "token": "next"}))
        .await
        .unwrap();
    assert_eq!(r["token"], "next");
    assert_eq!(r["pid"].as_u64().unwrap() as u32, pid);
}

/// A bridge-based worker script of `tests/workers/` other than the test
/// worker (e.g. `signal_worker.py`).
pub struct BridgeScript(pub &'static str);

impl Adapter for BridgeScript {
    fn launch(&self) -> Launch {
        Launch::new(python())
            .arg(root().join("crates/core/tests/workers").join(self.0))
            .env("PYTHONPATH", root().join("bridges/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
    }
}

/// The pids listed under `key` in a host process's JSON report.
pub fn pid_list(report: &serde_json::Value, key: &str) -> Vec<u32> {
    report[key]
        .as_array()
        .unwrap_or_else(|| panic!("no `{key}` in {report}"))
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect()
}

/// Runs this test binary's `host_process` test as a host of its own
/// (`SNAKEPIT_TEST_HOST` = `mode`, its pool's state in `state_dir`) and
/// waits for the JSON report of pids it writes once its workers run.
/// Returns the host, still running, and its report.
pub fn host_with_report(
    mode: &str,
    state_dir: &std::path::Path,
) -> (std::process::Child, serde_json::Value) {
    let out = state_dir.with_extension("pids");
    let mut host = snakepit_tests::this_test("host_process")
        .env("SNAKEPIT_TEST_HOST", mode)
        .env("SNAKEPIT_TEST_STATE_DIR", state_dir)
        .env("SNAKEPIT_TEST_PIDS", &out)
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while !out.exists() && std::time::Instant::now() < until && host.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let text = std::fs::read_to_string(&out).expect("the host wrote its pids");
    let _ = std::fs::remove_file(&out);
    (host, serde_json::from_str(&text).unwrap())
}

/// The host side of [`host_with_report`]: when this test binary runs as a
/// test host (`SNAKEPIT_TEST_HOST` set), runs `start(mode, state_dir)` on
/// a runtime of two threads, writes the report it returns where
/// [`host_with_report`] waits for it, and waits to be killed, holding the
/// pool it returned. Otherwise returns at once.
pub fn run_as_host<F, Fut>(start: F)
where
    F: FnOnce(String, std::path::PathBuf) -> Fut,
    Fut: std::future::Future<Output = (serde_json::Value, snakepit_core::Pool)>,
{
    let Ok(mode) = std::env::var("SNAKEPIT_TEST_HOST") else {
        return;
    };
    let state_dir = std::env::var("SNAKEPIT_TEST_STATE_DIR").unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (report, _pool) = start(mode, state_dir.into()).await;
        let out = std::path::PathBuf::from(std::env::var("SNAKEPIT_TEST_PIDS").unwrap());
        std::fs::write(out.with_extension("tmp"), report.to_string()).unwrap();
        std::fs::rename(out.with_extension("tmp"), &out).unwrap();
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
}

/// A run id of this test process alone: `tag` (16 hex digits) then this
/// process's pid. Tests that plant leftovers under a run id must not
/// share it with a test running beside them, nor with their own earlier
/// try (a retried test would find the first try's leftover).
pub fn a_run_id(tag: &str) -> String {
    assert_eq!(tag.len(), 16, "a run id tag is 16 hex digits");
    format!("{tag}{:016x}", std::process::id())
}

/// A pid that was just used by a process that is gone now.
#[allow(clippy::disallowed_methods)] // a short-lived bystander, not a worker
pub fn a_dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// A process carrying `run_id` in its environment, in a session of its own,
/// whose parent has exited: what an escaped child of a crashed run looks
/// like.
#[allow(clippy::disallowed_methods)] // a stand-in leftover, not a worker
pub fn a_leftover(run_id: &str) -> u32 {
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            "setsid sleep 300 </dev/null >/dev/null 2>&1 & echo $!",
        ])
        .env("SNAKEPIT_RUN_ID", run_id)
        .output()
        .unwrap();
    let pid: u32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(alive(pid));
    pid
}

/// `(dev, ino)` of this process's PID namespace, as a run record states it.
pub fn our_pid_namespace() -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata("/proc/self/ns/pid").unwrap();
    (m.dev(), m.ino())
}

pub fn our_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .to_owned()
}

/// A record of a run whose host is `host_pid` (dead), written by hand,
/// with the PID namespace and boot id lines only when `here` is given.
pub fn forged_record(run_id: &str, host_pid: u32, here: Option<((u64, u64), &str)>) -> String {
    let mut text = format!("snakepit-run 1\ninstance forged\nrun_id {run_id}\nhost {host_pid} 1\n");
    if let Some(((dev, ino), boot)) = here {
        text.push_str(&format!("pidns {dev} {ino}\nboot {boot}\n"));
    }
    text
}

/// A `sleep` call of `ms` with a deadline of `timeout`, spawned, once the
/// worker has begun it (its marker file exists: it reached the worker and
/// runs there).
pub async fn a_running_sleep(
    pool: &Pool,
    ms: u64,
    timeout: Duration,
) -> tokio::task::JoinHandle<snakepit_core::Result<serde_json::Value>> {
    let marker = temp_dir("started").join("marker");
    let call = {
        let pool = pool.clone();
        let marker = marker.display().to_string();
        tokio::spawn(async move {
            pool.execute_with(
                "sleep",
                serde_json::json!({"ms": ms, "marker": marker}),
                snakepit_core::CallOptions::new().timeout(timeout),
            )
            .await
        })
    };
    assert!(eventually(20, || marker.exists()).await, "the call started");
    call
}

/// The live (not zombie) processes other than this one whose environment
/// carries `SNAKEPIT_RUN_ID=run_id`: every worker of that run, ready or
/// still starting, and whatever they started.
pub fn processes_of_run(run_id: &str) -> Vec<u32> {
    let needle = format!("SNAKEPIT_RUN_ID={run_id}");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
        })
        .filter(|&pid| alive(pid))
        .collect()
}

/// A multi-thread runtime of `threads` worker threads, time and I/O on.
pub fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}

/// A current-thread runtime, time and I/O on.
pub fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A pool of `size` test workers, started, that has served one call.
pub async fn serving_pool(size: usize) -> Pool {
    let pool = builder(TestWorker::new()).size(size).start().await.unwrap();
    pool.execute("echo", serde_json::json!({})).await.unwrap();
    pool
}

/// Blocks this thread until `cond` holds, for `secs` at most; whether it
/// holds (for plain threads, where [`eventually`] cannot wait).
pub fn wait_blocking(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while !cond() && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}

/// A process in a PID namespace of its own (`unshare --pid`, in a user
/// namespace too where this user may not make one alone): the process to
/// kill (and wait for) when done, and that namespace as a run record
/// states it. A record naming it comes from a namespace that is alive.
#[allow(clippy::disallowed_methods)] // a bystander in another namespace, not a worker
pub fn another_pid_namespace() -> (std::process::Child, (u64, u64)) {
    use std::os::unix::fs::MetadataExt;
    let tries: [&[&str]; 2] = [
        &["--pid", "--fork", "--kill-child", "sleep", "300"],
        &[
            "--user",
            "--map-root-user",
            "--pid",
            "--fork",
            "--kill-child",
            "sleep",
            "300",
        ],
    ];
    for args in tries {
        let mut unshare = std::process::Command::new("unshare")
            .args(args)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let outer = unshare.id();
        let inner = wait_blocking(10, || {
            unshare.try_wait().unwrap().is_some() || children_of(outer).next().is_some()
        });
        if let (true, Some(sleep)) = (inner, children_of(outer).next()) {
            if let Ok(m) = std::fs::metadata(format!("/proc/{sleep}/ns/pid")) {
                if (m.dev(), m.ino()) != our_pid_namespace() {
                    return (unshare, (m.dev(), m.ino()));
                }
            }
        }
        let _ = unshare.kill();
        let _ = unshare.wait();
    }
    panic!("cannot start a process in a PID namespace of its own (unshare --pid)");
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(move |&p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                s.rfind(')')
                    .and_then(|i| s[i + 2..].split(' ').nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
}
