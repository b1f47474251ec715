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
