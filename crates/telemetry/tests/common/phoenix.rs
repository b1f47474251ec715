//! A real traces-only OTLP receiver for the end-to-end tests: Arize Phoenix
//! (`pip install arize-phoenix`; `cargo xtask setup` puts it in its own
//! virtualenv), which answers 405 to metrics as Jaeger does, and whose REST
//! API gives the spans back.
//!
//! Phoenix's gRPC server binds every interface, so the test runs it, and
//! itself as the client, inside a network namespace of its own
//! ([`rerun_in_netns`]).

#![allow(dead_code)] // each test binary uses part of it

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Set in the environment of the test binary run inside the namespace.
pub(crate) const IN_NETNS: &str = "SNAKEPIT_TEST_IN_NETNS";

/// Whether this process is the one inside the network namespace.
pub(crate) fn in_netns() -> bool {
    std::env::var_os(IN_NETNS).is_some()
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
        || ["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .any(|dir| Path::new(dir).join(tool).is_file())
}

/// Runs test `name` of this test binary again, alone, inside a new network
/// namespace (`unshare --net`, or with `--map-root-user` where creating one
/// needs it), and fails with its output unless it passed there.
#[allow(clippy::disallowed_methods)] // the test binary itself, not a worker
pub(crate) fn rerun_in_netns(name: &str) -> Result<()> {
    for tool in ["unshare", "ip"] {
        if !on_path(tool) {
            bail!("`{tool}` is missing: this test needs util-linux's unshare and iproute2's ip");
        }
    }
    let exe = std::env::current_exe()?;
    let run = |extra: &[&str]| -> Result<std::process::Output> {
        Command::new("unshare")
            .arg("--net")
            .args(extra)
            .arg("--")
            .arg(&exe)
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env(IN_NETNS, "1")
            .stdin(Stdio::null())
            .output()
            .context("cannot run unshare")
    };
    let mut out = run(&[])?;
    let refused = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stderr).contains("unshare failed")
            && !String::from_utf8_lossy(&o.stdout).contains("running 1 test")
    };
    if !out.status.success() && refused(&out) {
        out = run(&["--map-root-user"])?;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || !stdout.contains("1 passed") {
        bail!(
            "inside its network namespace, the test failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
    }
    Ok(())
}

/// Brings the namespace's loopback interface up.
#[allow(clippy::disallowed_methods)] // a system tool, not a worker
pub(crate) fn loopback_up() -> Result<()> {
    let status = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .context("cannot run ip")?;
    if !status.success() {
        bail!("`ip link set lo up` failed ({status})");
    }
    Ok(())
}

/// The `phoenix` command: `SNAKEPIT_PHOENIX`, else the virtualenv that
/// `cargo xtask setup` makes under the per-user cache directory.
pub(crate) fn phoenix_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SNAKEPIT_PHOENIX") {
        return Ok(p.into());
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    let bin = cache.join("snakepit/phoenix-venv/bin/phoenix");
    if !bin.is_file() {
        bail!(
            "the traces-only receiver is missing ({}): `cargo xtask setup` installs Arize Phoenix there",
            bin.display()
        );
    }
    Ok(bin)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running Phoenix; dropping it stops it and removes its data.
pub(crate) struct Phoenix {
    child: Child,
    dir: PathBuf,
    pub(crate) http_port: u16,
}

impl Phoenix {
    /// Starts Phoenix on free loopback ports with a fresh working
    /// directory, and waits until it answers its health check.
    pub(crate) fn start() -> Result<Phoenix> {
        let bin = phoenix_binary()?;
        let dir = std::env::temp_dir().join(format!(
            "snakepit-phoenix-{}-{}",
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(&dir)?;
        let (http_port, grpc_port) = (free_port()?, free_port()?);
        #[allow(clippy::disallowed_methods)] // the receiver under test, not a worker
        let child = Command::new(&bin)
            .arg("serve")
            .env("PHOENIX_WORKING_DIR", &dir)
            .env("PHOENIX_HOST", "127.0.0.1")
            .env("PHOENIX_PORT", http_port.to_string())
            .env("PHOENIX_GRPC_PORT", grpc_port.to_string())
            .env("PHOENIX_TELEMETRY_ENABLED", "false")
            // Phoenix 20 connects to its docs server on the internet as it
            // starts; in the test's network namespace that fails, and now
            // and then the failure ends Phoenix (exit 3) instead of being
            // logged. It is not needed here.
            .env("PHOENIX_ALLOW_EXTERNAL_RESOURCES", "false")
            .env("PHOENIX_DISABLE_AGENT_ASSISTANT", "true")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("phoenix.out"))?)
            .stderr(File::create(dir.join("phoenix.err"))?)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut phoenix = Phoenix {
            child,
            dir,
            http_port,
        };
        // Phoenix migrates its database and loads its app first: seconds.
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok((200, _)) = phoenix.get("/healthz") {
                return Ok(phoenix);
            }
            if let Some(status) = phoenix.child.try_wait()? {
                bail!("phoenix exited ({status}): {}", phoenix.log());
            }
            if Instant::now() > deadline {
                bail!("phoenix never became healthy: {}", phoenix.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn http_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// What Phoenix printed.
    pub(crate) fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!("{}{}", read("phoenix.out"), read("phoenix.err"))
    }

    /// A GET on the loopback port: status and body (HTTP/1.0, so the body
    /// ends with the connection).
    pub(crate) fn get(&self, path: &str) -> Result<(u16, String)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.http_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no HTTP status")?;
        Ok((status, body.to_owned()))
    }

    /// Every span of the default project, as Phoenix's REST API gives them.
    pub(crate) fn spans(&self) -> Result<Vec<Value>> {
        let (status, body) = self.get("/v1/projects/default/spans?limit=1000")?;
        if status != 200 {
            bail!("phoenix answered {status}: {body}");
        }
        let v: Value = serde_json::from_str(&body)?;
        Ok(v["data"].as_array().cloned().unwrap_or_default())
    }

    /// Waits until `done` holds for the spans received, for at most
    /// `limit`; returns them either way, and whether it held.
    pub(crate) fn wait_for(
        &self,
        limit: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Result<(Vec<Value>, bool)> {
        let deadline = Instant::now() + limit;
        loop {
            let spans = self.spans()?;
            if done(&spans) {
                return Ok((spans, true));
            }
            if Instant::now() > deadline {
                return Ok((spans, false));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Phoenix {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
