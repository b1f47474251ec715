//! A real OTLP receiver for the end-to-end tests: Rotel, the collector
//! that `pip install rotel` brings (its wheel carries the binary), run with
//! its debug log, which prints every span and metric it receives.

#![allow(dead_code)] // each test binary uses part of it

use std::collections::HashMap;
use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub(crate) struct Rotel {
    child: Child,
    dir: PathBuf,
    out: PathBuf,
    pub(crate) grpc_port: u16,
    pub(crate) http_port: u16,
}

/// One span as Rotel's detailed debug log shows it.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpanRecord {
    pub(crate) trace_id: String,
    pub(crate) parent_id: String,
    pub(crate) id: String,
    pub(crate) name: String,
    /// `SPAN_KIND_CLIENT` and so on.
    pub(crate) kind: String,
    /// `STATUS_CODE_ERROR` and so on.
    pub(crate) status: String,
    /// The `service.name` of the resource the span came with.
    pub(crate) service: String,
    pub(crate) attributes: HashMap<String, String>,
    /// Each attribute's OTLP type as Rotel names it: `Str`, `Int`, ...
    pub(crate) attribute_types: HashMap<String, String>,
}

/// The `rotel-agent` binary: `SNAKEPIT_ROTEL`, else the one inside the
/// installed `rotel` Python package.
fn rotel_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("SNAKEPIT_ROTEL") {
        return Ok(p.into());
    }
    #[allow(clippy::disallowed_methods)] // asks Python where a package is; not a worker
    let out = std::process::Command::new(snakepit_tests::python())
        .args([
            "-c",
            "import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), 'rotel-agent'))",
        ])
        .output()
        .context("cannot run python3")?;
    if !out.status.success() {
        bail!(
            "the OTLP receiver is missing: `pip install rotel` (or `cargo xtask setup`) installs it\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().into())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Rotel {
    /// Starts Rotel on two free loopback ports, and waits until both accept.
    pub(crate) fn start() -> Result<Rotel> {
        Rotel::start_on(free_port()?, free_port()?)
    }

    /// Starts Rotel on `grpc_port` and `http_port` (ports a test chose, so
    /// that a receiver can come back where the exporter already sends), and
    /// waits until both accept. A start that fails at once (a port not yet
    /// free again after the last receiver there) is tried again, for at
    /// most 20 s in all: that is the test's setup, not what it checks.
    pub(crate) fn start_on(grpc_port: u16, http_port: u16) -> Result<Rotel> {
        let bin = rotel_binary()?;
        let dir = std::env::temp_dir().join(format!(
            "snakepit-rotel-{}-{}",
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(&dir)?;
        let out = dir.join("rotel.out");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            #[allow(clippy::disallowed_methods)] // the receiver under test, not a worker
            let mut child = std::process::Command::new(&bin)
                .args(["start", "--exporter", "blackhole"])
                .args(["--debug-log", "traces", "--debug-log", "metrics"])
                .args(["--debug-log-verbosity", "detailed"])
                .arg("--otlp-grpc-endpoint")
                .arg(format!("127.0.0.1:{grpc_port}"))
                .arg("--otlp-http-endpoint")
                .arg(format!("127.0.0.1:{http_port}"))
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(File::create(&out)?)
                .stderr(File::create(dir.join("rotel.err"))?)
                .spawn()
                .with_context(|| format!("cannot start {}", bin.display()))?;
            let exited = loop {
                let listening = |port| TcpStream::connect(("127.0.0.1", port)).is_ok();
                if listening(grpc_port) && listening(http_port) {
                    return Ok(Rotel {
                        child,
                        dir,
                        out,
                        grpc_port,
                        http_port,
                    });
                }
                if let Some(status) = child.try_wait()? {
                    break status.to_string();
                }
                if Instant::now() > deadline {
                    break "still running".into();
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let _ = child.kill();
            let _ = child.wait();
            if Instant::now() > deadline {
                let err = std::fs::read_to_string(dir.join("rotel.err")).unwrap_or_default();
                let _ = std::fs::remove_dir_all(&dir);
                bail!(
                    "rotel never listened on ports {grpc_port} and {http_port} ({exited}): {err}"
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(crate) fn http_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub(crate) fn grpc_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// What the debug log has printed so far.
    pub(crate) fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Every span received so far.
    pub(crate) fn spans(&self) -> Vec<SpanRecord> {
        parse_spans(&self.output())
    }

    /// Waits until `done` holds for what was received, for at most `limit`;
    /// returns the spans either way, and whether it held.
    pub(crate) fn wait_for(
        &self,
        limit: Duration,
        done: impl Fn(&[SpanRecord], &str) -> bool,
    ) -> (Vec<SpanRecord>, bool) {
        let deadline = Instant::now() + limit;
        loop {
            let out = self.output();
            let spans = parse_spans(&out);
            if done(&spans, &out) {
                return (spans, true);
            }
            if Instant::now() > deadline {
                return (spans, false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Rotel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads the span blocks of Rotel's detailed debug log:
///
/// ```text
/// Span #0
///     Trace ID       : 5b8efff798038103d269b633813fc60c
///     Parent ID      : eee19b7ec3c1b173
///     ID             : eee19b7ec3c1b174
///     Name           : hello
/// Attributes:
///      -> command: Str(echo)
/// ```
pub(crate) fn parse_spans(out: &str) -> Vec<SpanRecord> {
    let mut spans = Vec::new();
    let mut current: Option<SpanRecord> = None;
    let mut service = String::new();
    let mut in_resource = false;
    for line in out.lines() {
        let t = line.trim();
        if t.starts_with("Span #") {
            spans.extend(current.take());
            current = Some(SpanRecord {
                service: service.clone(),
                ..SpanRecord::default()
            });
            continue;
        }
        if t.starts_with("ResourceSpans #") || t.starts_with("ResourceMetrics #") {
            spans.extend(current.take());
            service.clear();
            in_resource = true;
            continue;
        }
        if t.starts_with("ScopeSpans #") || t.starts_with("ScopeMetrics #") {
            spans.extend(current.take());
            in_resource = false;
            continue;
        }
        if in_resource {
            if let Some(v) = t.strip_prefix("-> service.name: ") {
                service = v
                    .strip_prefix("Str(")
                    .and_then(|v| v.strip_suffix(')'))
                    .unwrap_or(v)
                    .to_owned();
            }
            continue;
        }
        let Some(span) = current.as_mut() else {
            continue;
        };
        if let Some(kv) = t.strip_prefix("-> ") {
            if let Some((k, v)) = kv.split_once(": ") {
                let (kind, v) = v
                    .split_once('(')
                    .and_then(|(kind, rest)| Some((kind, rest.strip_suffix(')')?)))
                    .unwrap_or(("", v));
                span.attributes.insert(k.to_owned(), v.to_owned());
                span.attribute_types.insert(k.to_owned(), kind.to_owned());
            }
            continue;
        }
        if let Some((k, v)) = t.split_once(':') {
            let v = v.trim().to_owned();
            match k.trim() {
                "Trace ID" => span.trace_id = v,
                "Parent ID" => span.parent_id = v,
                "ID" => span.id = v,
                "Name" => span.name = v,
                "Kind" => span.kind = v,
                "Status code" => span.status = v,
                _ => {}
            }
        }
    }
    spans.extend(current);
    spans
}

pub(crate) fn worker_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workers/traced_worker.py")
}

#[test]
fn parses_rotel_span_blocks() {
    let out = "ResourceSpans #0\nResource attributes:\n     -> service.name: Str(svc)\nScopeSpans #0\nSpan #0\n    Kind           : SPAN_KIND_CLIENT\n    Trace ID       : aa\n    Parent ID      : \n    ID             : bb\n    Name           : root\nAttributes:\n     -> pool: Str(p1)\nSpan #1\n    Trace ID       : aa\n    Parent ID      : bb\n    ID             : cc\n    Name           : child\n";
    let spans = parse_spans(out);
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].parent_id, "");
    assert_eq!(spans[0].attributes["pool"], "p1");
    assert_eq!(spans[0].kind, "SPAN_KIND_CLIENT");
    assert_eq!(spans[0].service, "svc");
    assert_eq!(spans[1].parent_id, "bb");
    assert_eq!(spans[1].name, "child");
}
