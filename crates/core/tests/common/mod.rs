//! Adapters that run the test workers in `tests/workers/`.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::time::Duration;

use snakepit_core::{Adapter, Launch, Pool, PoolBuilder, WireCodec};

/// The Python interpreter itself (`SNAKEPIT_PYTHON`, else the binary behind
/// `python3`): a version manager's shim would be the worker's process
/// instead, with the interpreter as its child.
pub fn python() -> String {
    static REAL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    REAL.get_or_init(|| {
        if let Ok(p) = std::env::var("SNAKEPIT_PYTHON") {
            return p;
        }
        #[allow(clippy::disallowed_methods)] // asks python3 where it lives
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output();
        out.ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "python3".into())
    })
    .clone()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
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

pub fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.contains(") Z "))
}

/// Waits up to `secs` for `f` to hold.
pub async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

/// Kills a process from outside, as an operator or the OOM killer would.
#[allow(clippy::disallowed_methods)] // `kill`, not a worker
pub fn kill_9(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status();
}

/// A directory of its own under the system's temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "snakepit-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
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
