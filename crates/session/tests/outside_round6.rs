//! Round 6 of the outside review of `snakepit-session`: what
//! docs/sessions.md promises of the Redis store that no earlier test
//! reached.
//!
//! - "stores whose prefixes differ ... see none of each other's sessions":
//!   nor each other's session ends (expiries and deletions reach the
//!   listeners, and so the pools, of their own tenant only).
//! - "Percent-encode characters of the password that mean something in a
//!   URL": every such character, not only `:` and `@`.
//! - Stored data the store cannot have written is `Corrupt`, naming the
//!   session, not the caller's `Invalid`: a value nested deeper than
//!   `MAX_VALUE_DEPTH` put in a session's hash by something else (fixed
//!   here).
//! - "a server at its `maxmemory` refuses what would grow it ... while the
//!   sessions it has are read, renewed and deleted as before": reads and
//!   renewals were refused too (fixed here).
//! - `execute_program_command`: "every call gets `session_id` in its
//!   arguments", for arguments that are no map too.
//! - With `redis-tls`: "Certificates are checked: there is no insecure
//!   mode": a URL asking for one (`#insecure`, which the redis crate
//!   knows) is refused, and a certificate for another host is too.
#![cfg(feature = "redis")]

mod common;
mod redis_server;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis_server::{redis_cli, Redis};
use serde_json::{json, Value};
use snakepit_session::{EndReason, Error, RedisStore, SessionStore, MAX_VALUE_DEPTH};
use snakepit_tests::until;

type Ends = Arc<Mutex<Vec<(String, EndReason)>>>;

fn ends_of(ends: &Ends) -> Vec<(String, EndReason)> {
    let mut v = ends.lock().unwrap().clone();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Two tenants of one server, each with its own listener and a quick
/// sweep, using the same session ids: each hears of its own sessions'
/// ends, once, and never of the other's; its counts are its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_hear_only_their_own_session_ends() {
    let redis = Redis::start().await;
    let tenant = |p: &'static str| {
        RedisStore::builder(redis.url())
            .prefix(p)
            .sweep_interval(Duration::from_millis(50))
            .timeout(Duration::from_secs(10))
            .connect()
    };
    let (a, b) = (
        tenant("tenant_a:").await.unwrap(),
        tenant("tenant_b:").await.unwrap(),
    );
    let (heard_a, heard_b) = (common::record_ends(&a), common::record_ends(&b));

    // The same ids in both: `short` expires in `a` only, `gone` is deleted
    // in `b` only.
    a.create_session("short", Some(Duration::from_millis(200)))
        .await
        .unwrap();
    b.create_session("short", Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    a.ensure_session("gone").await.unwrap();
    b.ensure_session("gone").await.unwrap();
    assert!(b.delete_session("gone").await.unwrap());

    until(
        30,
        "a's sweep reports the expiry of its `short`",
        || async {
            ends_of(&heard_a)
                .iter()
                .any(|e| *e == ("short".to_string(), EndReason::Expired))
        },
    )
    .await;
    // Several more sweeps of both hosts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ends_of(&heard_a),
        vec![("short".to_string(), EndReason::Expired)],
        "a hears its own expiry once, and not b's deletion"
    );
    assert_eq!(
        ends_of(&heard_b),
        vec![("gone".to_string(), EndReason::Deleted)],
        "b hears its own deletion, and not a's expiry"
    );
    assert!(
        b.session_exists("short").await.unwrap(),
        "b's `short` lives on"
    );
    assert!(
        a.session_exists("gone").await.unwrap(),
        "a's `gone` lives on"
    );
    let (sa, sb) = (a.stats().await.unwrap(), b.stats().await.unwrap());
    assert_eq!(
        (sa.sessions_expired, sa.sessions_deleted, sa.active_sessions),
        (1, 0, 1),
        "{sa:?}"
    );
    assert_eq!(
        (sb.sessions_expired, sb.sessions_deleted, sb.active_sessions),
        (0, 1, 1),
        "{sb:?}"
    );
    // A cleanup of either reports nothing of the other's.
    assert_eq!(b.cleanup_expired().await.unwrap(), 0);
    assert_eq!(ends_of(&heard_b).len(), 1);
}

/// docs/sessions.md, "Connecting": a password holding every character
/// that means something in a URL (`/`, `?`, `#`, `%`, `&`, `+`, a space)
/// and non-ASCII text, percent-encoded, signs in; the same password left
/// unencoded where it cannot be read is refused, without showing it.
#[tokio::test]
async fn a_password_with_every_url_character_percent_encoded_signs_in() {
    let password = "p/a:s@s#w?o%r d&é+=;";
    let redis = Redis::start_with(&["--requirepass", password], false).await;
    let encoded: String = password
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let url = format!("redis://:{encoded}@127.0.0.1:{}/", redis.port);
    let store = RedisStore::builder(&url)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    store.ensure_session("s").await.unwrap();
    store.set("s", "k", json!("v")).await.unwrap();
    assert_eq!(store.get("s", "k").await.unwrap(), Some(json!("v")));

    // Unencoded, the `#` starts a fragment and the `/` a path: refused.
    let raw = format!("redis://:{password}@127.0.0.1:{}/", redis.port);
    match RedisStore::builder(&raw)
        .timeout(Duration::from_secs(10))
        .connect()
        .await
    {
        Err(err) => {
            let text = format!("{err} {err:?}");
            assert!(text.contains("connect"), "{text}");
            assert!(!text.contains("w?o%r"), "the password is not shown: {text}");
        }
        Ok(store) => {
            // It may parse as another password (or none): it must not
            // get in.
            let err = store.ensure_session("x").await.unwrap_err();
            assert!(!format!("{err:?}").contains("w?o%r"), "{err:?}");
        }
    }
}

/// A JSON array nested `depth` levels.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// docs/sessions.md: a value nested deeper than `MAX_VALUE_DEPTH` is
/// `Invalid` when a caller gives it; a session whose hash "holds one no
/// session may have" is `Corrupt`, naming the session, "written by
/// something else". Such a value put there with `redis-cli` (one serde_json
/// still reads, 126 levels) made every `update_session` of the session
/// fail with `Invalid`, whatever the update changed, blaming the caller
/// for data it never gave. Each operation that reads it now says
/// `Corrupt`, naming the session, and writes nothing.
#[tokio::test]
async fn a_value_deeper_than_the_limit_written_by_something_else_is_corrupt() {
    let redis = Redis::start().await;
    let store = RedisStore::builder(redis.url())
        .prefix("p:")
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let deep = nested(MAX_VALUE_DEPTH + 1);
    assert!(
        serde_json::from_str::<Value>(&deep).is_ok(),
        "serde_json reads it"
    );
    let fine = nested(MAX_VALUE_DEPTH);

    for (field, what) in [("d:k", "data"), ("p:prog", "program")] {
        let id = format!("planted_{what}");
        store.ensure_session(&id).await.unwrap();
        store.set(&id, "other", json!(1)).await.unwrap();
        let key = format!("p:s:{id}");
        redis_cli(redis.port, &["HSET", &key, field, &deep]);

        let corrupt = |r: Result<Value, Error>, op: &str| match r {
            Err(Error::Corrupt(m)) => assert!(m.contains(&id), "{op}: names the session: {m}"),
            other => panic!("{op} of a session holding a planted {what}: {other:?}"),
        };
        corrupt(
            store.get_session(&id).await.map(|_| Value::Null),
            "get_session",
        );
        corrupt(
            store
                .update_session(&id, |s| {
                    s.metadata.insert("touched".into(), json!(true));
                })
                .await
                .map(|_| Value::Null),
            "update_session",
        );
        if what == "data" {
            corrupt(
                store.get(&id, "k").await.map(|v| v.unwrap_or(Value::Null)),
                "get",
            );
        } else {
            corrupt(store.get_program(&id, "prog").await, "get_program");
        }
        // Nothing was written: the planted value is still there, and the
        // session's other data is as it was.
        assert_eq!(redis_cli(redis.port, &["HGET", &key, field]), deep);
        assert_eq!(redis_cli(redis.port, &["HGET", &key, "d:other"]), "1");
        assert_eq!(redis_cli(redis.port, &["HGET", &key, "m"]), "{}");
        // A value at the limit, written the same way, is read as any.
        redis_cli(redis.port, &["HSET", &key, field, &fine]);
        store
            .update_session(&id, |s| {
                s.metadata.insert("touched".into(), json!(true));
            })
            .await
            .unwrap();
    }

    // Metadata and global programs alike.
    store.ensure_session("planted_meta").await.unwrap();
    let meta = format!("{{\"m\":{}}}", nested(MAX_VALUE_DEPTH + 1));
    redis_cli(redis.port, &["HSET", "p:s:planted_meta", "m", &meta]);
    match store.get_session("planted_meta").await {
        Err(Error::Corrupt(m)) => assert!(m.contains("planted_meta"), "{m}"),
        other => panic!("a planted metadata value: {other:?}"),
    }
    redis_cli(redis.port, &["HSET", "p:g", "global", &deep]);
    match store.get_global_program("global").await {
        Err(Error::Corrupt(m)) => assert!(m.contains("global"), "{m}"),
        other => panic!("a planted global program: {other:?}"),
    }

    // What a caller gives that deep is still its own fault.
    let deep_value: Value = serde_json::from_str(&deep).unwrap();
    store.ensure_session("caller").await.unwrap();
    assert!(matches!(
        store.set("caller", "k", deep_value).await,
        Err(Error::Invalid { .. })
    ));
}

/// "TLS ... Certificates are checked: there is no insecure mode." The
/// redis crate turns certificate checks off for a URL ending in
/// `#insecure` when its `tls-rustls-insecure` feature is on: this crate
/// does not turn it on, so such a URL is refused even where the server's
/// certificate would not be trusted anyway. A certificate that does not
/// name the host connected to is refused too, though its CA is trusted.
#[cfg(feature = "redis-tls")]
#[tokio::test]
async fn tls_has_no_insecure_mode_and_checks_the_host_name() {
    let certs = tls::Certs::make();
    let path = |f: &str| certs.0.join(f).to_str().unwrap().to_owned();
    let redis = Redis::start_with(
        &[
            "--tls-cert-file",
            &path("server.pem"),
            "--tls-key-file",
            &path("server.key"),
            "--tls-ca-cert-file",
            &path("ca.pem"),
            "--tls-auth-clients",
            "no",
        ],
        true,
    )
    .await;
    let connect = |url: String| async move {
        RedisStore::builder(url)
            .timeout(Duration::from_secs(10))
            .connect()
            .await
    };
    // An untrusted CA, with and without asking for no checks.
    std::env::set_var("SSL_CERT_FILE", "/dev/null");
    for url in [
        format!("rediss://127.0.0.1:{}/", redis.port),
        format!("rediss://127.0.0.1:{}/#insecure", redis.port),
    ] {
        match connect(url.clone()).await {
            Err(Error::Backend(m)) => assert!(m.contains("connect"), "{url}: {m}"),
            other => panic!("{url}: an untrusted certificate must be refused: {other:?}"),
        }
    }
    // The CA trusted: the certificate names 127.0.0.1, not `localhost`.
    std::env::set_var("SSL_CERT_FILE", path("ca.pem"));
    let store = connect(format!("rediss://127.0.0.1:{}/", redis.port))
        .await
        .expect("the certificate is trusted for 127.0.0.1");
    store.ensure_session("s").await.unwrap();
    match connect(format!("rediss://localhost:{}/", redis.port)).await {
        Err(Error::Backend(m)) => assert!(m.contains("connect"), "{m}"),
        other => panic!("a certificate for another host must be refused: {other:?}"),
    }
}

#[cfg(feature = "redis-tls")]
mod tls {
    /// A CA and a certificate for the IP address 127.0.0.1 only, made with
    /// `openssl`, in a temporary directory removed on drop.
    pub(crate) struct Certs(pub(crate) std::path::PathBuf);

    impl Certs {
        pub(crate) fn make() -> Certs {
            let dir =
                std::env::temp_dir().join(format!("snakepit-round6-tls-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let certs = Certs(dir);
            std::fs::write(certs.0.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
            let openssl = |args: &[&str]| {
                #[allow(clippy::disallowed_methods)] // openssl(1), not a worker
                let out = std::process::Command::new("openssl")
                    .args(args)
                    .current_dir(&certs.0)
                    .output()
                    .expect("openssl is installed");
                assert!(
                    out.status.success(),
                    "openssl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=round6 test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ]);
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "ext.cnf",
                "-out",
                "server.pem",
            ]);
            certs
        }
    }

    impl Drop for Certs {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// docs/sessions.md, "Memory and permissions on the Redis side": a server
/// at its `maxmemory` (under `noeviction`) "refuses what would grow it ...
/// while the sessions it has are read, renewed and deleted as before". A
/// touch wrote a field first, which Redis refuses at `maxmemory` as the
/// first write of a script, so every read of a session (`get_session`,
/// `get`, `get_program`) and every renewal (`ensure_session` of a live
/// id, that is every session call through a pool) failed with OOM. They
/// are served now, and renew the session; what grows memory is still
/// refused and writes nothing.
#[tokio::test]
async fn a_full_redis_still_reads_and_renews_the_sessions_it_has() {
    let redis = Redis::start_with(&["--maxmemory-policy", "noeviction"], false).await;
    let store = RedisStore::builder(redis.url())
        .prefix("full:")
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    store
        .create_session("old", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    store.set("old", "k", json!({"kept": true})).await.unwrap();
    store.set("old", "gone", json!(1)).await.unwrap();
    store
        .store_program("old", "prog", json!({"model": "m"}))
        .await
        .unwrap();
    store.store_global_program("g", json!("t")).await.unwrap();
    let used: u64 = redis_cli(redis.port, &["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    redis_cli(
        redis.port,
        &["CONFIG", "SET", "maxmemory", &(used / 2).to_string()],
    );
    let pttl = || -> i64 {
        redis_cli(redis.port, &["PTTL", "full:s:old"])
            .parse()
            .unwrap()
    };
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let before = pttl();
    assert!(before <= 57_000, "{before}");

    // Read and renewed.
    store.ensure_session("old").await.unwrap();
    assert!(pttl() > before + 1000, "ensure_session renewed it");
    let s = store.get_session("old").await.unwrap();
    assert_eq!(s.data.get("k"), Some(&json!({"kept": true})));
    assert_eq!(
        store.get("old", "k").await.unwrap(),
        Some(json!({"kept": true}))
    );
    assert_eq!(
        store.get_program("old", "prog").await.unwrap(),
        json!({"model": "m"})
    );
    assert_eq!(store.get_global_program("g").await.unwrap(), json!("t"));
    // Deleted: a data key, frees memory.
    assert!(store.delete("old", "gone").await.unwrap());

    // Refused, naming the operation and Redis's OOM answer.
    let big = json!("x".repeat(100_000));
    let oom = |op: &str, r: Result<(), Error>| match r {
        Err(Error::Backend(m)) => {
            assert!(
                m.contains(&format!("`{op}`")) && m.contains("OOM"),
                "{op}: {m}"
            )
        }
        other => panic!("{op} at maxmemory: {other:?}"),
    };
    oom("set", store.set("old", "big", big.clone()).await);
    oom(
        "update_session",
        store
            .update_session("old", |s| {
                s.data.insert("big".into(), big.clone());
            })
            .await
            .map(drop),
    );
    oom(
        "store_program",
        store.store_program("old", "big", big.clone()).await,
    );
    oom(
        "create_session",
        store.create_session("new", None).await.map(drop),
    );
    oom("ensure_session", store.ensure_session("new2").await);
    assert!(!store.session_exists("new").await.unwrap());
    assert!(!store.session_exists("new2").await.unwrap());

    redis_cli(redis.port, &["CONFIG", "SET", "maxmemory", "0"]);
    let s = store.get_session("old").await.unwrap();
    assert_eq!(
        s.data.keys().cloned().collect::<Vec<_>>(),
        vec!["k".to_string()],
        "the refused writes left nothing, the deletion was done"
    );
    assert_eq!(s.programs.len(), 1);
    assert!(s.metadata.is_empty());
}

/// docs/sessions.md, "Program helpers": "every call gets `session_id` in
/// its arguments", whatever the caller gave: arguments that are no map go
/// under `input`, `null` is an empty map, and a `session_id` of the
/// caller's is the session's. Through the generic Python worker's `echo`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn program_commands_carry_the_session_id_whatever_the_arguments() {
    use snakepit_adapters::{Bridge, Language};
    let store = Arc::new(snakepit_session::MemoryStore::new());
    let pool = snakepit_session::attach(
        snakepit_core::Pool::builder(Bridge::generic(Language::Python)),
        store.clone(),
    )
    .size(1)
    .configure(|c| c.sweep_on_start = false)
    .start()
    .await
    .unwrap();
    for (args, sent) in [
        (json!("text"), json!({"input": "text", "session_id": "s1"})),
        (json!([1, 2]), json!({"input": [1, 2], "session_id": "s1"})),
        (json!(7.5), json!({"input": 7.5, "session_id": "s1"})),
        (Value::Null, json!({"session_id": "s1"})),
        (
            json!({"a": 1, "session_id": "someone_else"}),
            json!({"a": 1, "session_id": "s1"}),
        ),
    ] {
        let r =
            snakepit_session::execute_program_command(&pool, &*store, "s1", "echo", args.clone())
                .await
                .unwrap();
        assert_eq!(r["echoed"], sent, "{args}");
    }
    assert!(store.session_exists("s1").await.unwrap());
    assert!(!store.session_exists("someone_else").await.unwrap());
    pool.shutdown().await.unwrap();
}
