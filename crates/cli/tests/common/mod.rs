//! What the command-line tests share: running the binary, its outcome,
//! and a folder for a test's files.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_snakepit");

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Asserts that stdout has each of `texts`.
    #[track_caller]
    pub fn stdout_has(&self, texts: &[&str]) {
        for text in texts {
            assert!(self.stdout.contains(text), "missing {text}: {self:?}");
        }
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `snakepit ARGS` in `dir`, with `env` on top of an environment without
/// `SNAKEPIT_CONFIG`, `NATS_URL`, `RUST_LOG` nor any `OTEL_*` variable,
/// not yet started (stdin empty, stdout and stderr piped).
#[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
pub fn command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("SNAKEPIT_CONFIG")
        .env_remove("NATS_URL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs `snakepit ARGS` in `dir` with extra environment variables and stdin.
#[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
pub fn snakepit_in(dir: &Path, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Run {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_remove("SNAKEPIT_CONFIG")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("the snakepit binary runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    Run::from(child.wait_with_output().expect("snakepit ends"))
}

pub fn snakepit(args: &[&str]) -> Run {
    snakepit_in(&std::env::temp_dir(), args, &[], "")
}

/// A fresh folder for one test's files, removed at the end.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!(
            "snakepit-cli-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Dir(dir)
    }

    pub fn file(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write file");
        path.display().to_string()
    }

    /// Runs `snakepit ARGS` in this folder.
    pub fn run(&self, args: &[&str]) -> Run {
        snakepit_in(&self.0, args, &[], "")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A worker whose `where` tells the process that ran its module-level code
/// (with preloading, the template it was forked from).
pub const PRELOAD_PY: &str = r#"
import os
import snakepit_bridge

LOADED_IN = os.getpid()
worker = snakepit_bridge.Worker()

@worker.command("where")
def where(args):
    return {"pid": os.getpid(), "ppid": os.getppid(), "loaded_in": LOADED_IN}

worker.run()
"#;

/// A `snakepit serve` process; SIGKILLed on drop unless it ended.
pub struct Serve {
    pub child: Child,
    /// Its stderr, whole, once it has ended.
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Serve {
    /// Starts `snakepit serve ARGS` with `env` and waits until it says it
    /// serves.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Serve {
        Serve::start_in(&std::env::temp_dir(), args, env)
    }

    /// As [`Serve::start`], in the directory `dir` (its `snakepit.toml`).
    #[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
    pub fn start_in(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Serve {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(dir)
            .arg("serve")
            .args(args)
            .env_remove("SNAKEPIT_CONFIG")
            .env_remove("NATS_URL")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("snakepit serve runs");
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("serves cluster") {
                    let _ = ready_tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let mut serve = Serve {
            child,
            stderr: Some(reader),
        };
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = serve.child.kill();
            let (status, stderr) = serve.wait();
            panic!("snakepit serve never served ({status:?}): {stderr}");
        }
        serve
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the child this test started and has not reaped.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    /// Waits at most `limit` for it to end.
    pub fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let until = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for it to end: its exit status and its whole stderr.
    pub fn wait(&mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().expect("snakepit serve ends");
        let stderr = self.stderr.take().map(|r| r.join().unwrap());
        (status, stderr.unwrap_or_default())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The run records in `dir` (`*.run`).
pub fn records(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".run"))
                .collect()
        })
        .unwrap_or_default()
}

/// The pids of processes whose command line names `needle`.
pub fn processes_running(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) {
                found.push(pid);
            }
        }
    }
    found
}

/// A worker whose start takes 30 s (a model that loads slowly).
pub const SLOW_START_PY: &str = r#"
import time
import snakepit_bridge
time.sleep(30)
worker = snakepit_bridge.Worker()

@worker.command("ping")
def ping(args):
    return {"ok": True}

worker.run()
"#;

/// What a stop signal sent while the pool of `snakepit ARGS` starts its
/// worker (`script`, which must start slowly) leaves behind.
pub struct Stopped {
    pub status: std::process::ExitStatus,
    pub stderr: String,
    /// Run records left in the state directory.
    pub records: Vec<String>,
    /// Processes still running `script`.
    pub workers: Vec<u32>,
}

/// Runs `snakepit ARGS` in `dir` with its state directory in `dir/state`,
/// waits until its pool has written its run record and its worker runs
/// `script`, sends `signal`, and waits (up to 30 s) for the tool to end and
/// (up to 10 s) for the worker to go.
#[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
pub fn stop_while_starting(dir: &Dir, args: &[&str], script: &str, signal: i32) -> Stopped {
    use std::os::unix::fs::PermissionsExt;
    use std::time::Instant;
    let state = dir.0.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let mut child = Command::new(BIN)
        .current_dir(&dir.0)
        .args(args)
        .env_remove("SNAKEPIT_CONFIG")
        .env_remove("NATS_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("SNAKEPIT_STATE_DIR", &state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("snakepit runs");
    let until = Instant::now() + Duration::from_secs(30);
    while records(&state).is_empty() || processes_running(script).is_empty() {
        assert!(Instant::now() < until, "the pool never began to start");
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            if let Some(mut s) = child.stderr.take() {
                use std::io::Read as _;
                let _ = s.read_to_string(&mut stderr);
            }
            panic!("snakepit ended early ({status}): {stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on the child this test started and has not reaped.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
    let until = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("snakepit did not end within 30 s of signal {signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut s) = child.stderr.take() {
        use std::io::Read as _;
        let _ = s.read_to_string(&mut stderr);
    }
    let until = Instant::now() + Duration::from_secs(10);
    while !processes_running(script).is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    Stopped {
        status,
        stderr,
        records: records(&state),
        workers: processes_running(script),
    }
}

/// The `bench` flags of a short run printing JSON: 64 requests from 4
/// callers to workers that start in 10 ms.
pub const SHORT_BENCH_JSON: [&str; 7] = [
    "--requests",
    "64",
    "--concurrency",
    "4",
    "--init-ms",
    "10",
    "--json",
];

/// A `bench` run given a setting it cannot carry out: either it was
/// refused before anything was measured (exit 2, the message naming
/// `name`), or the report of its 2 workers printed all the same.
#[track_caller]
pub fn refused_up_front_or_reported(r: &Run, name: &str) {
    let refused_up_front = r.code == 2 && r.stderr.contains(name);
    let reported_anyway = !r.stdout.trim().is_empty() && r.json()["workers"] == 2;
    assert!(refused_up_front || reported_anyway, "{r:?}");
}
