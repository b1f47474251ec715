//! What the command-line tests share: running the binary, its outcome,
//! and a folder for a test's files.
#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

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
