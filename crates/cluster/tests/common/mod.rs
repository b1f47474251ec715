//! A real nats-server for the tests, and worker hosts run as processes of
//! their own (this test binary, run again as a host).
#![allow(dead_code, unreachable_pub)]

pub mod files;
pub mod proxy;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use snakepit_core::{Adapter, Launch, WireCodec};

/// Waits for `cond` (checked every 20 ms), failing after `secs`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(Instant::now() < until, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[allow(unused_imports)] // each test binary uses part of it
pub use snakepit_tests::{free_port, nats_server_bin};

/// [`snakepit_tests::NatsServer`] with the async calls the cluster tests
/// make: start, restart, connect.
pub struct NatsServer(snakepit_tests::NatsServer);

impl std::ops::Deref for NatsServer {
    type Target = snakepit_tests::NatsServer;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for NatsServer {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        NatsServer(snakepit_tests::NatsServer::start())
    }

    /// As [`NatsServer::start`], the server also reading `config` (the text
    /// of a nats-server configuration file, e.g. `max_payload: 65536`).
    pub async fn start_with_config(config: &str) -> NatsServer {
        NatsServer(snakepit_tests::NatsServer::start_with_config(config))
    }

    /// Starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.0.restart();
    }

    pub async fn connect(&self) -> async_nats::Client {
        async_nats::connect(&self.url).await.unwrap()
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The core tests' bridge-based worker (`echo`, `sleep`, `pid`, `context`,
/// `stream`, `remember`/`recall` through the session store).
pub struct TestWorker;

impl Adapter for TestWorker {
    fn launch(&self) -> Launch {
        let python = std::env::var("SNAKEPIT_PYTHON").unwrap_or_else(|_| "python3".into());
        Launch::new(python)
            .arg(root().join("crates/core/tests/workers/test_worker.py"))
            .env("PYTHONPATH", root().join("bridges/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
    }
    fn codec(&self) -> WireCodec {
        WireCodec::Json
    }
}

/// A worker host running as a process of its own; SIGKILLed on drop.
pub struct HostProcess {
    child: Child,
    pub id: String,
    pub pid: u32,
    pub workers: Vec<u32>,
}

impl HostProcess {
    /// Runs `test_name` of this binary as the host `id` with `workers`
    /// workers, and waits until it serves.
    pub async fn start(test_name: &str, url: &str, id: &str, workers: usize) -> HostProcess {
        HostProcess::spawn(test_name, url, id, workers, None).await
    }

    /// As [`HostProcess::start`], the host serving with
    /// `ServeOptions::prefetch_per_worker(prefetch)` (0: it takes a call
    /// only when a worker is free).
    pub async fn start_with_prefetch(
        test_name: &str,
        url: &str,
        id: &str,
        workers: usize,
        prefetch: usize,
    ) -> HostProcess {
        HostProcess::spawn(test_name, url, id, workers, Some(prefetch)).await
    }

    async fn spawn(
        test_name: &str,
        url: &str,
        id: &str,
        workers: usize,
        prefetch: Option<usize>,
    ) -> HostProcess {
        let ready = std::env::temp_dir().join(format!(
            "snakepit-cluster-{}-{id}-{}.ready",
            std::process::id(),
            free_port()
        ));
        let mut command = snakepit_tests::this_test(test_name);
        command
            .env("SNAKEPIT_CLUSTER_HOST", id)
            .env("SNAKEPIT_CLUSTER_NATS", url)
            .env("SNAKEPIT_CLUSTER_WORKERS", workers.to_string())
            .env("SNAKEPIT_CLUSTER_READY", &ready)
            .stdout(Stdio::null());
        if let Some(p) = prefetch {
            command.env("SNAKEPIT_CLUSTER_PREFETCH", p.to_string());
        }
        let child = command.spawn().unwrap();
        let mut host = HostProcess {
            child,
            id: id.to_owned(),
            pid: 0,
            workers: vec![],
        };
        eventually(60, "the host serves", || async { ready.exists() }).await;
        let text = std::fs::read_to_string(&ready).unwrap();
        let _ = std::fs::remove_file(&ready);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        host.pid = host.child.id();
        host.workers = v["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap() as u32)
            .collect();
        host
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM: a graceful shutdown.
    pub fn terminate(&self) {
        // SAFETY: kill(2) on the child this test started and has not reaped.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
    }

    /// Waits for the process to end, up to `secs`; its exit status.
    pub async fn ended(&mut self, secs: u64) -> std::process::ExitStatus {
        let until = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < until,
                "host {} did not end in {secs} s",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        self.kill();
        // A host killed outright leaves its run record (and, if it was
        // killed before its workers noticed, its workers): sweep them, as a
        // restarted service would, so that test runs leave nothing behind.
        let _ = snakepit_core::sweep::sweep(
            &snakepit_core::sweep::SweepOptions::new()
                .instance(format!("cluster-test-{}", self.id)),
        );
    }
}

/// The body of a host process: when `SNAKEPIT_CLUSTER_HOST` is set, serves
/// a pool of test workers (sessions in the NATS KV store) until killed, or
/// until SIGTERM, which shuts it down gracefully (`Node::shutdown`, then the
/// pool) and ends it with status 0. `SNAKEPIT_CLUSTER_PREFETCH`, when set,
/// is its `ServeOptions::prefetch_per_worker`.
pub fn host_main() {
    host_main_with(TestWorker);
}

/// A worker script run with the Python bridge on its path.
pub struct ScriptWorker(pub PathBuf);

impl Adapter for ScriptWorker {
    fn launch(&self) -> Launch {
        let python = std::env::var("SNAKEPIT_PYTHON").unwrap_or_else(|_| "python3".into());
        Launch::new(python)
            .arg(&self.0)
            .env("PYTHONPATH", root().join("bridges/python"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
    }
    fn codec(&self) -> WireCodec {
        WireCodec::Json
    }
}

/// [`host_main`] with the workers of `adapter`.
pub fn host_main_with<A: Adapter + 'static>(adapter: A) {
    let Ok(id) = std::env::var("SNAKEPIT_CLUSTER_HOST") else {
        return;
    };
    let url = std::env::var("SNAKEPIT_CLUSTER_NATS").unwrap();
    let workers: usize = std::env::var("SNAKEPIT_CLUSTER_WORKERS")
        .unwrap()
        .parse()
        .unwrap();
    let ready = PathBuf::from(std::env::var("SNAKEPIT_CLUSTER_READY").unwrap());
    let prefetch: Option<usize> = std::env::var("SNAKEPIT_CLUSTER_PREFETCH")
        .ok()
        .map(|p| p.parse().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let nats = async_nats::connect(&url).await.unwrap();
        let store = std::sync::Arc::new(
            snakepit_cluster::NatsKvStore::builder(&nats)
                .connect()
                .await
                .unwrap(),
        );
        let pool = snakepit_session::attach(snakepit_core::Pool::builder(adapter), store)
            .size(workers)
            .name(format!("cluster-test-{id}"))
            .configure(|c| {
                c.shutdown_grace_period = Duration::from_millis(300);
                c.sweep_on_start = false;
            })
            .start()
            .await
            .unwrap();
        let mut options = snakepit_cluster::ServeOptions::new().host_id(&id);
        if let Some(p) = prefetch {
            options = options.prefetch_per_worker(p);
        }
        let node = snakepit_cluster::serve_with(&nats, "test", pool.clone(), options)
            .await
            .unwrap();
        let line = serde_json::json!({"workers": pool.worker_pids()});
        std::fs::write(ready.with_extension("tmp"), line.to_string()).unwrap();
        std::fs::rename(ready.with_extension("tmp"), &ready).unwrap();
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        term.recv().await;
        node.shutdown().await.unwrap();
        pool.shutdown().await.unwrap();
    });
}

/// Subscribes `nats` to each of `subjects` and returns once the server has
/// the subscriptions: it takes a connection's commands in order, so a
/// message published after them that comes back proves them in place. (A
/// flush only empties the socket's buffer; under load a message published
/// on another connection could otherwise pass before them.)
pub async fn subscribed(
    nats: &async_nats::Client,
    subjects: &[&str],
) -> Vec<async_nats::Subscriber> {
    use futures_util::StreamExt;
    let mut subs = Vec::new();
    for s in subjects {
        subs.push(nats.subscribe(s.to_string()).await.unwrap());
    }
    let marker = format!("spy.ready.{}", free_port());
    let mut ready = nats.subscribe(marker.clone()).await.unwrap();
    nats.publish(marker, "".into()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), ready.next())
        .await
        .expect("the subscriptions are in place");
    subs
}

/// Heartbeats of a fake host `host` on the `test` cluster (capacity 4, all
/// free), every 100 ms until the task is aborted: a host made of raw NATS
/// that a test answers calls for itself.
pub fn fake_heartbeats(raw: &async_nats::Client, host: &str) -> tokio::task::JoinHandle<()> {
    let (raw, host) = (raw.clone(), host.to_owned());
    tokio::spawn(async move {
        for seq in 1.. {
            let hb = serde_json::json!({"seq": seq, "host": host, "pid": 1, "capacity": 4,
                                        "running": 4, "free": 4});
            raw.publish("snakepit.test.hb", hb.to_string().into())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// One HTTP GET to the server's monitoring port: the JSON body.
pub async fn monitor(port: u16, path: &str) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// Messages received on `sub` until none comes for `quiet`.
pub async fn count(sub: &mut async_nats::Subscriber, quiet: Duration) -> usize {
    let mut n = 0;
    use futures_util::StreamExt;
    while let Ok(Some(_)) = tokio::time::timeout(quiet, sub.next()).await {
        n += 1;
    }
    n
}

/// Calls served by each host (by id), from the NATS service API.
pub async fn served(client: &snakepit_cluster::Client) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    for s in client.status(Duration::from_millis(300)).await.unwrap() {
        out.insert(
            s["host"].as_str().unwrap().to_owned(),
            s["served"].as_u64().unwrap(),
        );
    }
    out
}

/// Waits until `client` has heard from `n` hosts.
pub async fn wait_hosts(client: &snakepit_cluster::Client, n: usize) {
    let until = Instant::now() + Duration::from_secs(30);
    while client.hosts().len() != n {
        assert!(
            Instant::now() < until,
            "never happened: every host is heard from (want {n}, hear {:?})",
            client.hosts()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `pid` a test worker put in its reply.
pub fn pid_of(r: &serde_json::Value) -> u32 {
    r["pid"].as_u64().expect("a pid in the reply") as u32
}

/// A pool of `size` test workers, quick to shut down.
pub async fn pool(size: usize) -> snakepit_core::Pool {
    pool_of(TestWorker, size).await
}

/// A pool of `size` workers of `adapter`, quick to shut down.
pub async fn pool_of<A: Adapter>(adapter: A, size: usize) -> snakepit_core::Pool {
    snakepit_core::Pool::builder(adapter)
        .size(size)
        .configure(|c| {
            c.sweep_on_start = false;
            c.shutdown_grace_period = Duration::from_millis(300);
        })
        .start()
        .await
        .unwrap()
}

/// A client of the cluster `test` on `nats`.
pub async fn client(
    nats: &NatsServer,
    config: snakepit_cluster::ClientConfig,
) -> snakepit_cluster::Client {
    snakepit_cluster::Client::connect_with(&nats.connect().await, "test", config)
        .await
        .unwrap()
}

/// A `NatsKvStore` on a connection of its own to `nats`, whose sweep does
/// not run during a test.
pub async fn kv_store(nats: &NatsServer) -> snakepit_cluster::NatsKvStore {
    snakepit_cluster::NatsKvStore::builder(&nats.connect().await)
        .sweep_interval(Duration::from_secs(3600))
        .connect()
        .await
        .unwrap()
}

/// The key `NatsKvStore` keeps session `id` at (kv.rs: `s.<hex id>`).
pub fn session_key(id: &str) -> String {
    let mut s = "s.".to_string();
    for b in id.bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}
