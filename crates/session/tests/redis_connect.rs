//! How `RedisStore` connects: a password in the URL, a key prefix per
//! tenant, TLS (`rediss://`, feature `redis-tls`).
#![cfg(feature = "redis")]

mod common;
mod redis_server;

use redis_server::Redis;
use serde_json::json;
use snakepit_session::{Error, RedisStore, SessionStore};

fn names(err: &Error, op: &str) -> bool {
    matches!(err, Error::Backend(msg) if msg.contains(&format!("`{op}`")))
}

/// `redis://:password@host/` authenticates (characters that mean something
/// in a URL percent-encoded); a wrong password fails at `connect`, without
/// the password in the error; no password fails on first use.
#[tokio::test]
async fn password_in_url() {
    let redis = Redis::start_with(&["--requirepass", "s3cr:t@pw"], false).await;
    let url = format!("redis://:s3cr%3At%40pw@127.0.0.1:{}/", redis.port);
    // Neither the builder nor the store shows the URL (nor its password).
    let builder = RedisStore::builder(&url);
    assert!(!format!("{builder:?}").contains("s3cr"), "{builder:?}");
    let store = builder.connect().await.unwrap();
    assert!(!format!("{store:?}").contains("s3cr"), "{store:?}");
    common::lifecycle(&store).await;

    let wrong = format!("redis://:hunter2@127.0.0.1:{}/", redis.port);
    let err = RedisStore::connect(wrong).await.unwrap_err();
    assert!(names(&err, "connect"), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");

    match RedisStore::connect(redis.url()).await {
        Err(err) => assert!(names(&err, "connect"), "{err:?}"),
        Ok(anonymous) => {
            let err = anonymous.ensure_session("x").await.unwrap_err();
            assert!(names(&err, "ensure_session"), "{err:?}");
        }
    }
}

/// Stores with different prefixes on one server are separate tenants:
/// sessions, data, global programs and statistics.
#[tokio::test]
async fn prefix_per_tenant() {
    let redis = Redis::start().await;
    let tenant = |p: &str| RedisStore::builder(redis.url()).prefix(p).connect();
    let (a, b) = (
        tenant("tenant_a:").await.unwrap(),
        tenant("tenant_b:").await.unwrap(),
    );
    a.ensure_session("u1").await.unwrap();
    a.set("u1", "k", json!("a's")).await.unwrap();
    a.store_global_program("p", json!("a's")).await.unwrap();

    assert!(!b.session_exists("u1").await.unwrap());
    assert!(b.list_sessions().await.unwrap().is_empty());
    assert_eq!(b.stats().await.unwrap().sessions_created, 0);
    assert_eq!(b.stats().await.unwrap().global_programs, 0);
    assert!(matches!(
        b.get_global_program("p").await,
        Err(Error::ProgramNotFound { .. })
    ));
    b.ensure_session("u1").await.unwrap();
    assert_eq!(b.get("u1", "k").await.unwrap(), None);
    assert!(a.delete_session("u1").await.unwrap());
    assert!(b.session_exists("u1").await.unwrap());
    assert_eq!(a.stats().await.unwrap().active_sessions, 0);
    assert_eq!(b.stats().await.unwrap().active_sessions, 1);
}

/// Without the `redis-tls` feature a `rediss://` URL is refused with an
/// error that says which feature it needs.
#[cfg(not(feature = "redis-tls"))]
#[tokio::test]
async fn rediss_needs_the_tls_feature() {
    let err = RedisStore::connect("rediss://127.0.0.1:1/")
        .await
        .unwrap_err();
    assert!(names(&err, "connect"), "{err:?}");
    assert!(err.to_string().contains("redis-tls"), "{err}");
}

/// `rediss://` against a TLS-only `redis-server` with a certificate from a
/// private CA: refused while the CA is not trusted, then (with
/// `SSL_CERT_FILE` naming the CA) the whole store suite's lifecycle works,
/// password included.
#[cfg(feature = "redis-tls")]
#[tokio::test]
async fn tls_with_a_private_ca() {
    let certs = Certs::make();
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
            "--requirepass",
            "pw",
        ],
        true,
    )
    .await;
    let url = format!("rediss://:pw@127.0.0.1:{}/", redis.port);
    // The system's roots do not include the test CA.
    std::env::set_var("SSL_CERT_FILE", "/dev/null");
    let err = RedisStore::connect(&url).await.unwrap_err();
    assert!(names(&err, "connect"), "{err:?}");

    std::env::set_var("SSL_CERT_FILE", path("ca.pem"));
    // Neither the builder nor the store shows the URL (nor its password).
    let builder = RedisStore::builder(&url);
    assert!(!format!("{builder:?}").contains("s3cr"), "{builder:?}");
    let store = builder.connect().await.unwrap();
    assert!(!format!("{store:?}").contains("s3cr"), "{store:?}");
    common::lifecycle(&store).await;
    // The same port does not speak plain text.
    let plain = format!("redis://:pw@127.0.0.1:{}/", redis.port);
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        RedisStore::builder(plain)
            .timeout(std::time::Duration::from_millis(500))
            .connect(),
    )
    .await
    .expect("a plain connection to a TLS port returns");
    assert!(r.is_err());
}

/// A CA and a server certificate for 127.0.0.1, made with `openssl`, in a
/// temporary directory removed on drop.
#[cfg(feature = "redis-tls")]
struct Certs(std::path::PathBuf);

#[cfg(feature = "redis-tls")]
impl Certs {
    fn make() -> Certs {
        let dir = std::env::temp_dir().join(format!("snakepit-redis-tls-{}", std::process::id()));
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
            "/CN=snakepit test CA",
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

#[cfg(feature = "redis-tls")]
impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
