//! docs/cluster.md, "Security": the `authorization` block it shows, taken
//! from the markdown itself, is the configuration of a real nats-server. A
//! host serves and a caller calls under those users; what the block forbids
//! (taking another host's calls, announcing a caller as a host, reaching
//! another cluster) the server refuses with a permissions violation.

mod common;

use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::{ConnectOptions, Event, ServerError};
use common::{eventually, nats_server_bin, TestWorker};
use serde_json::json;
use snakepit_cluster::{Client, ServeOptions};
use snakepit_core::Pool;

const HOST_PASSWORD: &str = "host-secret";
const CALLER_PASSWORD: &str = "caller-secret";

/// The configuration block under "Restrict a host to its own subjects" in
/// docs/cluster.md (its indentation removed).
fn documented_block() -> String {
    let doc = snakepit_tests::workspace_root().join("docs/cluster.md");
    let text = std::fs::read_to_string(&doc).expect("docs/cluster.md");
    let at = text
        .find("Restrict a host to its own subjects")
        .expect("docs/cluster.md says how to restrict a host");
    let rest = &text[at..];
    let start = rest.find("```text\n").expect("a code block follows") + 8;
    let end = rest[start..].find("```").expect("a closed code block") + start;
    let block: Vec<&str> = rest[start..end]
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect();
    let block = block.join("\n");
    assert!(block.starts_with("authorization {"), "{block}");
    block
}

/// A nats-server on a free port of 127.0.0.1 whose configuration is the
/// documented block, with the users' passwords in its environment; killed
/// and its directory removed on drop.
struct AuthServer {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl AuthServer {
    async fn start() -> AuthServer {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("snakepit-nats-auth-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("nats.conf");
        std::fs::write(&conf, format!("{}\n", documented_block())).unwrap();
        #[allow(clippy::disallowed_methods)] // a test server, not a worker
        let mut command = std::process::Command::new(nats_server_bin());
        command
            .arg("-c")
            .arg(&conf)
            .env("HOST_A_PASSWORD", HOST_PASSWORD)
            .env("CALLER_PASSWORD", CALLER_PASSWORD);
        let (child, port) = snakepit_tests::spawn_nats_server(command, None, &dir);
        AuthServer {
            child,
            dir,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }

    /// A connection as `user`, and the errors the server sent it.
    async fn connect(&self, user: &str, password: &str) -> (async_nats::Client, Errors) {
        let errors = Errors::default();
        let log = errors.clone();
        let mut options = ConnectOptions::with_user_and_password(user.into(), password.into());
        if user == "caller" {
            // As docs/cluster.md says: the inbox prefix its block lets it read.
            options = options.custom_inbox_prefix("_INBOX.caller");
        }
        let nats = options
            .event_callback(move |event| {
                let log = log.clone();
                async move {
                    if let Event::ServerError(e) = event {
                        log.0.lock().unwrap().push(e);
                    }
                }
            })
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("{user} connects: {e}"));
        (nats, errors)
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The errors the server sent one connection, in order.
#[derive(Clone, Default)]
struct Errors(Arc<Mutex<Vec<ServerError>>>);

impl Errors {
    fn all(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    /// Waits until the server has refused `what` on `subject`
    /// (`Publish` or `Subscription`); every error so far.
    async fn refused(&self, what: &str, subject: &str) -> Vec<String> {
        let wanted = format!("permissions violation for {what} to \"{subject}\"");
        eventually(15, &wanted, || async {
            self.all()
                .iter()
                .any(|e| e.to_lowercase().contains(&wanted.to_lowercase()))
        })
        .await;
        self.all()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_permissions_let_a_host_serve_and_a_caller_call_and_nothing_more() {
    let server = AuthServer::start().await;

    // Wrong passwords are refused: the users are the documented ones.
    assert!(
        ConnectOptions::with_user_and_password("host-a".into(), "wrong".into())
            .connect(&server.url)
            .await
            .is_err(),
        "a wrong password is refused"
    );

    let (host_nats, host_errors) = server.connect("host-a", HOST_PASSWORD).await;
    let (caller_nats, caller_errors) = server.connect("caller", CALLER_PASSWORD).await;
    let pool = Pool::builder(TestWorker)
        .size(1)
        .name("auth")
        .start()
        .await
        .unwrap();
    let node = snakepit_cluster::serve_with(
        &host_nats,
        "ml",
        pool,
        ServeOptions::new().host_id("host-a"),
    )
    .await
    .unwrap();

    // What a cluster does, under these permissions: calls, sessions, status.
    // (Generous waits: the subject here is what the permissions allow, and
    // a loaded machine may take seconds to bring the host's heartbeat.)
    let mut config = snakepit_cluster::ClientConfig::default();
    config.queue_timeout = Duration::from_secs(30);
    let client = Client::connect_with(&caller_nats, "ml", config)
        .await
        .unwrap();
    eventually(30, "the caller hears of the host", || async {
        client.hosts().len() == 1
    })
    .await;
    let r = client
        .execute("echo", json!({"hello": "auth"}))
        .await
        .unwrap();
    assert_eq!(r["echoed"], json!({"hello": "auth"}), "{r}");
    let r = client
        .execute_in_session("s1", "echo", json!({"n": 1}))
        .await
        .unwrap();
    assert_eq!(r["echoed"], json!({"n": 1}), "{r}");
    let status = client.status(Duration::from_secs(2)).await.unwrap();
    assert_eq!(status.len(), 1, "{status:?}");
    assert_eq!(status[0]["host"], "host-a", "{status:?}");
    assert_eq!(client.hosts().len(), 1, "the caller hears the heartbeat");

    // A host cannot take calls meant for another host. The refusals below
    // are the first errors either connection got: everything above was
    // allowed.
    let _stolen = host_nats
        .subscribe("snakepit.ml.host.host-b.call")
        .await
        .unwrap();
    let errors = host_errors
        .refused("subscription", "snakepit.ml.host.host-b.call")
        .await;
    assert_eq!(errors.len(), 1, "only the refusal: {errors:?}");
    // ... or impersonate a caller, or reach another cluster.
    host_nats
        .publish("snakepit.ml.host.host-b.call", "{}".into())
        .await
        .unwrap();
    host_errors
        .refused("publish", "snakepit.ml.host.host-b.call")
        .await;
    host_nats
        .publish("snakepit.other.hb", "{}".into())
        .await
        .unwrap();
    host_errors.refused("publish", "snakepit.other.hb").await;

    // A caller cannot announce itself as a host, or take a host's calls, or
    // call another cluster.
    caller_nats
        .publish("snakepit.ml.hb", "{}".into())
        .await
        .unwrap();
    let errors = caller_errors.refused("publish", "snakepit.ml.hb").await;
    assert_eq!(errors.len(), 1, "only the refusal: {errors:?}");
    let _stolen = caller_nats
        .subscribe("snakepit.ml.host.host-a.call")
        .await
        .unwrap();
    caller_errors
        .refused("subscription", "snakepit.ml.host.host-a.call")
        .await;
    caller_nats
        .publish("snakepit.other.host.host-a.call", "{}".into())
        .await
        .unwrap();
    caller_errors
        .refused("publish", "snakepit.other.host.host-a.call")
        .await;
    // Nor read the replies meant for other callers (their inboxes).
    let _others = caller_nats.subscribe("_INBOX.>").await.unwrap();
    caller_errors.refused("subscription", "_INBOX.>").await;

    // The cluster still works after the refusals.
    let r = client
        .execute("echo", json!({"again": true}))
        .await
        .unwrap();
    assert_eq!(r["echoed"], json!({"again": true}), "{r}");
    node.shutdown().await.unwrap();
}
