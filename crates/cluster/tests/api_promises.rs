//! The promises of snakepit-cluster's API docs (rustdoc) that no other
//! test shows, each against a real nats-server (with JetStream) and pools
//! of real Python workers served from this process: the names a cluster
//! and a host may have, a node's id, `calls_per_worker`, the order of
//! `Client::hosts`, what `Node::shutdown` and dropping a node do, a typed
//! call whose arguments cannot be encoded, the pool's errors across the
//! wire, the client's subscriptions ending with its last clone, and the
//! KV session store's defaults, id bound and once-only expiry reports.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use snakepit_cluster::{Client, ClientConfig, NatsKvStore, ServeOptions};
use snakepit_core::{CallOptions, Error, Pool};
use snakepit_session::{EndReason, SessionStore};

fn config_error<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) -> String {
    match r {
        Err(Error::Config(m)) => m,
        other => panic!("{what}: expected Error::Config, got {other:?}"),
    }
}

/// One host serving a pool of one worker to the cluster `test`, and a
/// client with `config` that has heard of it.
struct OneHost {
    nats: NatsServer,
    pool: Pool,
    node: snakepit_cluster::Node,
    client: Client,
}

async fn one_host(config: ClientConfig) -> OneHost {
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let pool = pool(1).await;
    let node = snakepit_cluster::serve(&conn, "test", pool.clone())
        .await
        .unwrap();
    let client = client(&nats, config).await;
    wait_hosts(&client, 1).await;
    OneHost {
        nats,
        pool,
        node,
        client,
    }
}

/// A cluster's name and a host's id are subject tokens: "1 to 64 of A-Z
/// a-z 0-9 - _" (`ServeOptions::host_id`: "subject token"). Each other name
/// is `Error::Config` from `Client::connect` and from `serve`, before
/// anything is subscribed; a name of 64 is fine, one of 65 is not.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_are_not_subject_tokens_are_config_errors() {
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let pool = pool(1).await;
    let longest = "c".repeat(64);
    let too_long = "c".repeat(65);
    for bad in ["", "a.b", "a b", "a*", ">", "ü", too_long.as_str()] {
        let m = config_error(Client::connect(&conn, bad).await, bad);
        assert!(m.contains("cluster name"), "{m}");
        let m = config_error(snakepit_cluster::serve(&conn, bad, pool.clone()).await, bad);
        assert!(m.contains("cluster name"), "{m}");
        if !bad.is_empty() {
            let options = ServeOptions::new().host_id(bad);
            let r = snakepit_cluster::serve_with(&conn, "test", pool.clone(), options).await;
            let m = config_error(r, bad);
            assert!(m.contains("host id"), "{m}");
        }
    }
    let options = ServeOptions::new().host_id(&longest);
    let node = snakepit_cluster::serve_with(&conn, &longest, pool.clone(), options)
        .await
        .unwrap();
    let client = Client::connect(&conn, &longest).await.unwrap();
    wait_hosts(&client, 1).await;
    assert_eq!(client.hosts()[0].id, longest);
    client.execute("echo", json!({"n": 1})).await.unwrap();
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// `ServeOptions::host_id`: "a random one when `None`"; `Node::id`: "This
/// host's id in the cluster". Two nodes without an id get two ids, each
/// a subject token, and each is the id the clients hear of; a given id is
/// the node's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_host_id_gets_a_random_one_that_the_clients_hear_of() {
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let pool = pool(1).await;
    let one = snakepit_cluster::serve(&conn, "test", pool.clone())
        .await
        .unwrap();
    let two = snakepit_cluster::serve(&conn, "test", pool.clone())
        .await
        .unwrap();
    let named = snakepit_cluster::serve_with(
        &conn,
        "test",
        pool.clone(),
        ServeOptions::new().host_id("given-id"),
    )
    .await
    .unwrap();
    assert_eq!(named.id(), "given-id");
    assert_ne!(one.id(), two.id());
    for id in [one.id(), two.id()] {
        assert!(
            !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "{id}"
        );
    }
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 3).await;
    let mut ids: Vec<String> = client.hosts().into_iter().map(|h| h.id).collect();
    ids.sort();
    let mut expected = vec![one.id().to_owned(), two.id().to_owned(), "given-id".into()];
    expected.sort();
    assert_eq!(ids, expected);
    for node in [one, two, named] {
        node.shutdown().await.unwrap();
    }
    pool.shutdown().await.unwrap();
}

/// `ServeOptions::calls_per_worker`: "Calls the host runs at once per
/// ready worker"; `HostInfo::capacity`: "ready workers times calls per
/// worker, plus `prefetch_per_worker` per worker"; `HostInfo::pid`: "The
/// host's process id". Two workers, 3 calls each, no prefetch: 6, all
/// free, from this process; `Client::hosts` is "sorted by id".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_per_worker_sets_the_capacity_and_hosts_are_sorted_by_id() {
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let pool = pool(2).await;
    let mut nodes = Vec::new();
    for id in ["c", "a", "b"] {
        let options = ServeOptions::new()
            .host_id(id)
            .calls_per_worker(3)
            .prefetch_per_worker(0);
        nodes.push(
            snakepit_cluster::serve_with(&conn, "test", pool.clone(), options)
                .await
                .unwrap(),
        );
    }
    let client = client(&nats, ClientConfig::default()).await;
    wait_hosts(&client, 3).await;
    let hosts = client.hosts();
    let ids: Vec<&str> = hosts.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    for h in &hosts {
        assert_eq!((h.capacity, h.free), (6, 6), "{h:?}");
        assert_eq!(h.pid, std::process::id(), "{h:?}");
    }
    for node in nodes {
        node.shutdown().await.unwrap();
    }
    pool.shutdown().await.unwrap();
}

/// `Node::shutdown`: "Stops taking calls, lets the calls in flight finish,
/// and tells the clients this host is gone. The pool itself keeps
/// running." After it, the client lists no host and its call waits for
/// one until its queue timeout (it never ran), while the pool still
/// answers calls made to it directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shut_down_leaves_its_pool_running_and_takes_no_call() {
    let mut config = ClientConfig::default();
    config.queue_timeout = Duration::from_millis(300);
    let OneHost {
        nats: _nats,
        pool,
        node,
        client,
    } = one_host(config).await;
    client.execute("echo", json!({})).await.unwrap();
    node.shutdown().await.unwrap();
    eventually(30, "the client hears the host is gone", || async {
        client.hosts().is_empty()
    })
    .await;
    let e = client.execute("echo", json!({})).await.unwrap_err();
    assert!(matches!(e, Error::QueueTimeout(_)), "{e:?}");
    assert!(e.never_ran());
    let r = pool
        .execute("echo", json!({"still": "here"}))
        .await
        .unwrap();
    assert_eq!(r["echoed"]["still"], "here", "{r}");
    pool.shutdown().await.unwrap();
}

/// `Node`: "Dropping it stops serving at once (calls in flight are
/// cancelled)". A call that would sleep for a minute is cancelled in the
/// host's pool when the node is dropped, and its caller, whose host went
/// silent, gets the host-lost error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_node_cancels_its_calls_in_flight() {
    let OneHost {
        nats: _nats,
        pool,
        node,
        client,
    } = one_host(ClientConfig::default()).await;
    let marker = std::env::temp_dir().join(format!(
        "snakepit-cluster-api-{}-{}",
        std::process::id(),
        free_port()
    ));
    let call = {
        let client = client.clone();
        let args = json!({"ms": 60_000, "marker": marker});
        tokio::spawn(async move { client.execute("sleep", args).await })
    };
    eventually(30, "the call runs in the worker", || async {
        marker.exists()
    })
    .await;
    let _ = std::fs::remove_file(&marker);
    assert_eq!(pool.stats().cancelled, 0);
    drop(node);
    eventually(30, "the host's pool cancels the call", || async {
        pool.stats().cancelled == 1
    })
    .await;
    let e = call.await.unwrap().unwrap_err();
    assert!(snakepit_cluster::is_host_lost(&e), "{e:?}");
    pool.shutdown().await.unwrap();
}

/// `Client::call`: typed arguments "from any `Serialize`"; arguments that
/// cannot be encoded as JSON (a map whose keys are not strings) are
/// `Error::Validation` saying so, a call that never ran and that no host
/// was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_call_whose_arguments_cannot_be_encoded_is_never_sent() {
    let OneHost {
        nats: _nats,
        pool,
        node,
        client,
    } = one_host(ClientConfig::default()).await;
    let args: HashMap<(u8, u8), u8> = HashMap::from([((1, 2), 3)]);
    let r: Result<Value, Error> = client.call("echo", &args, CallOptions::new()).await;
    match r {
        Err(e @ Error::Validation { .. }) => {
            assert!(e.never_ran());
            assert!(e.to_string().contains("cannot encode the arguments"), "{e}");
        }
        other => panic!("expected Error::Validation, got {other:?}"),
    }
    assert_eq!(pool.stats().requests, 0, "no call reached the host's pool");
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// The crate's docs: a `Client` has the pool's methods "and its error
/// type, `snakepit_core::Error`": a failing handler, an unknown command
/// and a call timeout are the same variants through the cluster as from
/// the pool itself, with the same `never_ran`, command and remote type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pools_errors_are_the_clients_errors() {
    let OneHost {
        nats: _nats,
        pool,
        node,
        client,
    } = one_host(ClientConfig::default()).await;
    let timeout = CallOptions::new().timeout(Duration::from_millis(200));
    let calls = [
        ("fail", json!({}), CallOptions::new()),
        ("no_such_command", json!({}), CallOptions::new()),
        ("sleep", json!({"ms": 3000}), timeout),
    ];
    for (command, args, options) in calls {
        let local = pool
            .execute_with(command, args.clone(), options.clone())
            .await
            .unwrap_err();
        let remote = client
            .execute_with(command, args, options)
            .await
            .unwrap_err();
        assert_eq!(
            std::mem::discriminant(&local),
            std::mem::discriminant(&remote),
            "{command}: {local:?} vs {remote:?}"
        );
        assert_eq!(local.never_ran(), remote.never_ran(), "{command}");
        match (&local, &remote) {
            (
                Error::Remote {
                    command: a,
                    error: x,
                },
                Error::Remote {
                    command: b,
                    error: y,
                },
            ) => {
                assert_eq!(a, b);
                assert_eq!(
                    (&x.kind, &x.message),
                    (&y.kind, &y.message),
                    "{x:?} vs {y:?}"
                );
            }
            (Error::CallTimeout { command: a, .. }, Error::CallTimeout { command: b, .. }) => {
                assert_eq!(a, b)
            }
            _ => {}
        }
    }
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// `Error::CallTimeout::timeout`: "The deadline it had, counted from
/// submission". A cluster call given 200 ms that times out on its host
/// says 200 ms, as the pool says, although the host reports the time that
/// was left when the call was sent (199 ms here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_call_timeout_carries_the_callers_timeout() {
    let OneHost {
        nats: _nats,
        pool,
        node,
        client,
    } = one_host(ClientConfig::default()).await;
    let options = CallOptions::new().timeout(Duration::from_millis(200));
    let e = client
        .execute_with("sleep", json!({"ms": 3000}), options)
        .await
        .unwrap_err();
    match e {
        Error::CallTimeout { command, timeout } => {
            assert_eq!(
                (command.as_str(), timeout),
                ("sleep", Duration::from_millis(200))
            )
        }
        other => panic!("expected Error::CallTimeout, got {other:?}"),
    }
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// `ServeOptions::heartbeat`: "How often the host announces itself". No
/// input through the public API may panic: a heartbeat of zero is either
/// refused by `serve_with` as `Error::Config` or served (as often as the
/// host can). Before the fix the host's serving task panicked
/// (`tokio::time::interval` with a zero period) after `serve_with` returned
/// `Ok`, and the host was never heard of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_heartbeat_is_refused_or_served_never_a_panic() {
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let pool = pool(1).await;
    let options = ServeOptions::new().heartbeat(Duration::ZERO);
    match snakepit_cluster::serve_with(&conn, "test", pool.clone(), options).await {
        Err(Error::Config(_)) => {}
        Err(other) => panic!("expected Error::Config or a host, got {other:?}"),
        Ok(node) => {
            let client = client(&nats, ClientConfig::default()).await;
            wait_hosts(&client, 1).await;
            client.execute("echo", json!({})).await.unwrap();
            node.shutdown().await.unwrap();
        }
    }
    pool.shutdown().await.unwrap();
}

/// The crate's docs: "while the NATS connection is down calls fail at
/// once (`is_unavailable`)", and a call in flight when the connection
/// breaks fails with the host-lost error ("the connection broke while the
/// call ran"); `ClientConfig::host_timeout` is only how long a silent
/// host is waited for. With a host timeout of an hour, NATS killed: the
/// call in flight and the next calls still fail at once. Before the fix
/// the client followed the connection's state only every sixth of the host
/// timeout, here every ten minutes, and a call waiting for its host's
/// acknowledgement watched only the host timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_long_host_timeout_a_lost_connection_still_fails_calls_at_once() {
    let mut config = ClientConfig::default();
    config.host_timeout = Duration::from_secs(3600);
    let OneHost {
        mut nats,
        pool,
        node,
        client,
    } = one_host(config).await;
    client.execute("echo", json!({})).await.unwrap();
    let marker = std::env::temp_dir().join(format!(
        "snakepit-cluster-api-{}-{}",
        std::process::id(),
        free_port()
    ));
    let running = {
        let client = client.clone();
        let args = json!({"ms": 30_000, "marker": marker});
        tokio::spawn(async move { client.execute("sleep", args).await })
    };
    eventually(30, "the call runs in the worker", || async {
        marker.exists()
    })
    .await;
    let _ = std::fs::remove_file(&marker);
    nats.kill();
    let e = tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("the call in flight ends with the connection")
        .unwrap()
        .unwrap_err();
    assert!(snakepit_cluster::is_host_lost(&e), "{e:?}");
    let e = tokio::time::timeout(Duration::from_secs(15), client.execute("echo", json!({})))
        .await
        .expect("a call made while NATS is down fails")
        .unwrap_err();
    assert!(
        snakepit_cluster::is_unavailable(&e) && e.never_ran(),
        "{e:?}"
    );
    drop(node);
    pool.shutdown().await.unwrap();
}

/// The crate's docs: "A connection drained or closed for good fails the
/// client's calls in flight at once, and every later call." async-nats
/// still reports `Connected` after a drain; before the fix a call in flight
/// waited out its host timeout (here an hour) and a later one was sent to
/// a connection that no longer delivered anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_connection_fails_the_clients_calls_at_once() {
    let OneHost {
        nats, pool, node, ..
    } = one_host(ClientConfig::default()).await;
    let mut config = ClientConfig::default();
    config.host_timeout = Duration::from_secs(3600);
    let conn = nats.connect().await;
    let client = Client::connect_with(&conn, "test", config).await.unwrap();
    wait_hosts(&client, 1).await;
    client.execute("echo", json!({})).await.unwrap();
    let running = {
        let client = client.clone();
        tokio::spawn(async move { client.execute("sleep", json!({"ms": 30_000})).await })
    };
    eventually(30, "the call runs on the host", || async {
        pool.stats().busy == 1
    })
    .await;
    conn.drain().await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(15), running)
        .await
        .expect("the call in flight ends with the drain")
        .unwrap()
        .unwrap_err();
    assert!(snakepit_cluster::is_host_lost(&e), "{e:?}");
    let e = tokio::time::timeout(Duration::from_secs(15), client.execute("echo", json!({})))
        .await
        .expect("a call after the drain fails")
        .unwrap_err();
    assert!(
        snakepit_cluster::is_unavailable(&e) && e.never_ran() && e.to_string().contains("drained"),
        "{e:?}"
    );
    drop(node);
    pool.shutdown().await.unwrap();
}

/// `NatsKvStoreBuilder::connect`: "Creates the bucket if it does not
/// exist". On a NATS server without JetStream there is no bucket to make:
/// `Error::Backend` saying so, not a panic or a wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kv_store_on_a_nats_without_jetstream_is_a_backend_error() {
    let dir = std::env::temp_dir().join(format!("snakepit-nats-nojs-{}", std::process::id()));
    #[allow(clippy::disallowed_methods)] // a test server, not a worker
    let command = std::process::Command::new(nats_server_bin());
    let (mut server, port) = snakepit_tests::spawn_nats_server(command, None, &dir);
    let addr = format!("127.0.0.1:{port}");
    let conn = async_nats::connect(format!("nats://{addr}")).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), NatsKvStore::connect(&conn))
        .await
        .expect("connect answers");
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
    match r {
        Err(snakepit_session::Error::Backend(_)) => {}
        other => panic!("expected Error::Backend, got {other:?}"),
    }
}

/// The subscriptions of the connection named `name`, as the server has
/// them.
async fn subscriptions_of(port: u16, name: &str) -> usize {
    let connz = monitor(port, "/connz?subs=1").await;
    connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"] == name)
        .map(|c| c["subscriptions_list"].as_array().map_or(0, Vec::len))
        .sum()
}

/// `Client`: "Cheap to clone; the background tasks stop when the last
/// clone is dropped." Its subscriptions stay while a clone is kept (which
/// still calls), and the server has none of them once the last is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_subscriptions_end_with_its_last_clone() {
    let http = free_port();
    let nats = NatsServer::start_with_config(&format!("http_port: {http}\n")).await;
    let conn = nats.connect().await;
    let pool = pool(1).await;
    let node = snakepit_cluster::serve(&conn, "test", pool.clone())
        .await
        .unwrap();
    let name = "api-promises-client";
    let own = async_nats::ConnectOptions::new()
        .name(name)
        .connect(&nats.url)
        .await
        .unwrap();
    let client = Client::connect(&own, "test").await.unwrap();
    wait_hosts(&client, 1).await;
    eventually(30, "the client's subscriptions are in place", || async {
        subscriptions_of(http, name).await >= 2
    })
    .await;
    let kept = subscriptions_of(http, name).await;
    let clone = client.clone();
    drop(client);
    clone.execute("echo", json!({})).await.unwrap();
    assert_eq!(subscriptions_of(http, name).await, kept, "a clone is kept");
    drop(clone);
    eventually(30, "the last clone's subscriptions are gone", || async {
        subscriptions_of(http, name).await == 0
    })
    .await;
    node.shutdown().await.unwrap();
    pool.shutdown().await.unwrap();
}

/// `NatsKvStore::builder`: "The bucket (default `snakepit_sessions`)",
/// "The TTL of sessions created without one (default one hour)";
/// `default_ttl` sets it; one replica and a sweep every 60 s by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kv_stores_default_bucket_and_ttl() {
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let store = NatsKvStore::connect(&conn).await.unwrap();
    store.ensure_session("u1").await.unwrap();
    let s = store.create_session("u2", None).await.unwrap();
    assert_eq!(s.ttl_ms, 3_600_000);
    assert_eq!(store.get_session("u1").await.unwrap().ttl_ms, 3_600_000);
    let js = async_nats::jetstream::new(conn.clone());
    let bucket = js.get_key_value("snakepit_sessions").await.unwrap();
    let keys = {
        use futures_util::StreamExt;
        let mut keys: Vec<String> = bucket
            .keys()
            .await
            .unwrap()
            .map(|k| k.unwrap())
            .collect()
            .await;
        keys.sort();
        keys
    };
    assert_eq!(keys.len(), 2, "the two sessions: {keys:?}");
    // `replicas`: "Replicas of the bucket in a clustered NATS (default 1)".
    let status = bucket.status().await.unwrap();
    assert_eq!(status.info.config.num_replicas, 1);
    // "How often expired sessions are removed and reported (default 60 s)",
    // as the builder's `Debug` shows it (it has no getters).
    let builder = format!("{:?}", NatsKvStore::builder(&conn));
    assert!(builder.contains("sweep_interval: 60s"), "{builder}");
    let short = NatsKvStore::builder(&conn)
        .bucket("short_ttl")
        .default_ttl(Duration::from_secs(90))
        .connect()
        .await
        .unwrap();
    assert_eq!(
        short.create_session("u3", None).await.unwrap().ttl_ms,
        90_000
    );
}

/// The session id bound (`snakepit_session::MAX_ID_LEN`, 512 bytes): an
/// id of 512 bytes (256 two-byte characters) is a session like any other
/// in the KV store; one of 513 is `Error::Invalid`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv_session_id_of_512_bytes_is_taken_and_513_is_refused() {
    let nats = NatsServer::start().await;
    let store = NatsKvStore::connect(&nats.connect().await).await.unwrap();
    let longest = "é".repeat(256);
    assert_eq!(longest.len(), snakepit_session::MAX_ID_LEN);
    store.ensure_session(&longest).await.unwrap();
    store.set(&longest, "k", json!("v")).await.unwrap();
    assert_eq!(store.get(&longest, "k").await.unwrap(), Some(json!("v")));
    assert_eq!(store.list_sessions().await.unwrap(), vec![longest.clone()]);
    assert!(store.delete_session(&longest).await.unwrap());
    let too_long = format!("{longest}x");
    let r = store.ensure_session(&too_long).await;
    assert!(
        matches!(r, Err(snakepit_session::Error::Invalid { .. })),
        "{r:?}"
    );
}

/// The KV store's docs: the sweep (or `cleanup_expired`) removes an
/// expired session "with a revision-checked delete, so one host reports
/// each expiry once". Two hosts' stores on one bucket clean up at the same
/// time: five expired sessions are removed five times in all, and each is
/// reported once, as expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_cleaning_up_at_once_report_each_expiry_once() {
    let nats = NatsServer::start().await;
    let a = NatsKvStore::connect(&nats.connect().await).await.unwrap();
    let b = NatsKvStore::connect(&nats.connect().await).await.unwrap();
    let ends = Arc::new(Mutex::new(Vec::new()));
    for store in [&a, &b] {
        let sink = ends.clone();
        store.on_session_end(Arc::new(move |id, why| {
            sink.lock().unwrap().push((id.to_owned(), why));
        }));
    }
    let ids: Vec<String> = (0..5).map(|i| format!("short-{i}")).collect();
    for id in &ids {
        a.create_session(id, Some(Duration::from_millis(50)))
            .await
            .unwrap();
    }
    a.ensure_session("long").await.unwrap();
    for id in &ids {
        eventually(30, "the session reads as gone", || async {
            !b.session_exists(id).await.unwrap()
        })
        .await;
    }
    let (ra, rb) = tokio::join!(a.cleanup_expired(), b.cleanup_expired());
    assert_eq!(ra.unwrap() + rb.unwrap(), 5);
    let mut reported = ends.lock().unwrap().clone();
    reported.sort_by(|x, y| x.0.cmp(&y.0));
    let expected: Vec<(String, EndReason)> = ids
        .iter()
        .map(|id| (id.clone(), EndReason::Expired))
        .collect();
    assert_eq!(reported, expected);
    assert_eq!(a.list_sessions().await.unwrap(), vec!["long".to_string()]);
}

/// `NatsKvStoreBuilder::connect`: "Fails with `Error::Invalid` first if
/// the default TTL is one no session may have": zero, or beyond `MAX_TTL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv_default_ttl_no_session_may_have_fails_connect() {
    let nats = NatsServer::start().await;
    let conn = nats.connect().await;
    let too_long = snakepit_session::MAX_TTL + Duration::from_millis(1);
    for ttl in [Duration::ZERO, too_long] {
        let got = NatsKvStore::builder(&conn).default_ttl(ttl).connect().await;
        assert!(
            matches!(
                got,
                Err(snakepit_session::Error::Invalid { what: "ttl", .. })
            ),
            "{ttl:?}: {:?}",
            got.err().map(|e| e.to_string())
        );
    }
}
