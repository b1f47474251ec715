//! Round 5 of the outside review: what the earlier files leave untried,
//! through the public API only.
//!
//! - variables the crate reads whose value is not UTF-8 (a shell script
//!   that wrote Latin-1, a byte cut off): refused with the documented error
//!   of a value nobody could mean, never taken as unset;
//! - an endpoint whose scheme is neither `http` nor `https` (`grpc://`,
//!   `unix://`, `ftp://`): refused at `init`, not accepted and then failing
//!   every export; `HTTP://` in capitals is plain HTTP all the same.
//!
//! `init` installs process-wide state and the variables are the
//! process's, so each test runs its body in a process of its own (with
//! `common::CHILD` set); the receivers are the loopback ones of `common`.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use common::{in_own_process, Receiver, CHILD, OTEL_VARS};
use snakepit_telemetry::{Error, Protocol, Telemetry};

/// A value that is not UTF-8: `a`, the byte 0xFF, `b`.
fn not_utf8() -> &'static OsStr {
    OsStr::from_bytes(b"a\xffb")
}

/// The password that must never show in a message.
const SECRET: &str = "r5SecretPw";

/// Sets `var` to `value` for this process. Each test's body runs alone in
/// its own process (see the module's docs), so no other thread reads the
/// environment meanwhile.
fn set(var: &str, value: impl AsRef<OsStr>) {
    std::env::set_var(var, value);
}

fn unset_all() {
    for var in OTEL_VARS {
        std::env::remove_var(var);
    }
}

/// telemetry.md (Environment): `OTEL_EXPORTER_OTLP_PROTOCOL` "`http/protobuf`
/// or `grpc`; anything else is `Error::UnknownProtocol`";
/// `OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER`: "`otlp` or `none`...;
/// anything else is `Error::Unsupported`"; `OTEL_PROPAGATORS` likewise; and
/// `init_from_env` / `init_if_configured` install "`None` unless
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set". A value that is not UTF-8 is
/// "anything else", and an endpoint variable that is set but not UTF-8 is
/// set: each is refused with its error, where the variables used to be read
/// as unset (the default protocol, both signals exported, and telemetry
/// silently off for the endpoint).
#[test]
fn values_that_are_not_utf8_are_refused_not_taken_as_unset() {
    const NAME: &str = "values_that_are_not_utf8_are_refused_not_taken_as_unset";
    if std::env::var_os(CHILD).is_none() {
        in_own_process(NAME, &[]).unwrap();
        return;
    }
    let up = Receiver::ok();
    let quiet = || Telemetry::new().stderr_logs(None).short_lived(true);

    unset_all();
    set("OTEL_EXPORTER_OTLP_PROTOCOL", not_utf8());
    assert!(
        matches!(Protocol::from_env(), Err(Error::UnknownProtocol(_))),
        "{:?}",
        Protocol::from_env()
    );
    set("OTEL_EXPORTER_OTLP_ENDPOINT", up.base());
    match quiet().init_if_configured() {
        Err(Error::UnknownProtocol(shown)) => assert!(shown.contains('\u{fffd}'), "{shown}"),
        other => panic!(
            "a protocol that is not UTF-8: {:?}",
            other.map(|g| g.is_some())
        ),
    }

    for var in [
        "OTEL_TRACES_EXPORTER",
        "OTEL_METRICS_EXPORTER",
        "OTEL_PROPAGATORS",
    ] {
        unset_all();
        set("OTEL_EXPORTER_OTLP_ENDPOINT", up.base());
        set(var, not_utf8());
        match quiet().init_if_configured() {
            Err(Error::Unsupported { var: named, .. }) => assert_eq!(named, var),
            other => panic!("{var} not UTF-8: {:?}", other.map(|g| g.is_some())),
        }
    }

    for var in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ] {
        unset_all();
        // The credentials of an endpoint that is not UTF-8 stay hidden too.
        let mut endpoint = format!("http://user:{SECRET}@127.0.0.1:{}", up.port).into_bytes();
        endpoint.push(0xff);
        set(var, OsStr::from_bytes(&endpoint));
        match quiet().init_if_configured() {
            Err(e @ Error::Exporter(_)) => {
                assert!(!format!("{e} {e:?}").contains(SECRET), "{e}")
            }
            other => panic!("{var} not UTF-8: {:?}", other.map(|g| g.is_some())),
        }
    }
    assert!(
        up.all().is_empty(),
        "nothing was exported: {:?}",
        up.paths()
    );
}

/// telemetry.md (Environment, `OTEL_EXPORTER_OTLP_ENDPOINT`): "Plain
/// `http://` only"; `Error::Exporter` is "the exporter could not be built
/// (a malformed endpoint, say)", and "every message, warning and error
/// shows the endpoint as `http://***@h:4318`". An endpoint of another
/// scheme, given in code or in the variable, is refused at `init` with
/// `Error::Exporter`, naming the scheme and not the password; it used to
/// be taken, and then every export failed with "only plain http:// is
/// supported". The scheme's case does not matter: `HTTP://` delivers.
#[test]
fn an_endpoint_of_another_scheme_is_refused_at_init() {
    const NAME: &str = "an_endpoint_of_another_scheme_is_refused_at_init";
    if std::env::var_os(CHILD).is_none() {
        in_own_process(NAME, &[]).unwrap();
        return;
    }
    let up = Receiver::ok();
    let host = format!("127.0.0.1:{}", up.port);
    for scheme in ["grpc", "unix", "ftp", "otlp+http", "h2c"] {
        let endpoint = format!("{scheme}://user:{SECRET}@{host}");
        let in_code = Telemetry::new()
            .endpoint(&endpoint)
            .protocol(Protocol::HttpProtobuf)
            .stderr_logs(None)
            .init();
        unset_all();
        set("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
        let from_env = Telemetry::new().stderr_logs(None).init_if_configured();
        unset_all();
        for (how, outcome) in [
            ("in code", in_code),
            (
                "from the environment",
                from_env.map(|g| g.expect("installs")),
            ),
        ] {
            match outcome {
                Err(Error::Exporter(m)) => {
                    assert!(m.contains(&format!("{scheme}://")), "{how}: {m}");
                    assert!(m.contains("http://"), "{how}: says what it must be: {m}");
                    assert!(!m.contains(SECRET), "{how}: {m}");
                }
                Err(other) => panic!("{scheme} {how}: {other:?}"),
                Ok(_) => panic!("{scheme}:// {how} was taken"),
            }
        }
    }
    assert!(up.all().is_empty(), "{:?}", up.paths());

    let guard = Telemetry::new()
        .endpoint(format!("HTTP://{host}"))
        .protocol(Protocol::HttpProtobuf)
        .stderr_logs(None)
        .metrics(false)
        .init()
        .expect("HTTP:// is http://");
    drop(tracing::info_span!("round5", otel.name = "round5.capital.scheme").entered());
    assert_eq!(guard.flush(), Ok(()));
    assert!(
        up.got("/v1/traces", "round5.capital.scheme"),
        "{:?}",
        up.paths()
    );
    assert_eq!(guard.shutdown(), Ok(()));
}
