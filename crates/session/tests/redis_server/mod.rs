//! A `redis-server` that a test can configure, kill, start again on the same
//! port, pause and resume.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::{Child, Stdio};

/// A `redis-server` on one port of 127.0.0.1, without persistence, in a
/// temporary directory. Whatever happens to the test, the server it started
/// last is killed (SIGKILL ends a stopped process too) and reaped when this
/// is dropped, and its directory removed.
pub struct Redis {
    pub port: u16,
    pub dir: PathBuf,
    /// Arguments after the defaults (`--requirepass`, TLS settings...).
    extra: Vec<String>,
    /// With TLS the plain port is off and this is the TLS port.
    tls: bool,
    child: Option<Child>,
}

impl Redis {
    /// A plain server.
    pub async fn start() -> Redis {
        Self::start_with(&[], false).await
    }

    /// A server with `extra` arguments; `tls` makes the port a TLS port
    /// (the arguments then name the certificate and key).
    pub async fn start_with(extra: &[&str], tls: bool) -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!(
            "snakepit-redis-server-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis {
            port,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls,
            child: None,
        };
        redis.run().await;
        redis
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the server (again) on this port and waits until it accepts
    /// connections.
    pub async fn run(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        let port = self.port.to_string();
        let ports: &[&str] = if self.tls {
            &["--port", "0", "--tls-port", &port]
        } else {
            &["--port", &port]
        };
        #[allow(clippy::disallowed_methods)] // a test server, not a worker
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1"])
            .args(ports)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (cargo xtask setup installs it)");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        snakepit_tests::until(15, "redis-server accepts connections", || async {
            tokio::net::TcpStream::connect(&addr).await.is_ok()
        })
        .await;
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) to the server.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the server is running").id();
        #[allow(clippy::disallowed_methods)] // `kill(1)`, not a worker
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `redis-cli -p <port> args...`: its output, trimmed.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    #[allow(clippy::disallowed_methods)] // the Redis command-line client, not a worker
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli is installed with redis-server");
    assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
