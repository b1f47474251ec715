//! Round 7 of the outside review of `snakepit-telemetry`, through the
//! public API only: the per-signal variables of the OpenTelemetry
//! specification (`OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL`, `_ENDPOINT`,
//! `_HEADERS`, `_TIMEOUT`), each of which wins over the general one for its
//! signal only.
//!
//! - `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL` is honoured: metrics over gRPC
//!   to a real receiver (Rotel) while traces go over HTTP, and the other
//!   way round with `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`;
//! - a metrics protocol nobody could mean is `Error::UnknownProtocol`;
//! - a protocol given in code is both signals', whatever the variables say;
//! - `OTEL_EXPORTER_OTLP_METRICS_HEADERS` goes with the metrics only, the
//!   general headers with the traces;
//! - `OTEL_EXPORTER_OTLP_METRICS_TIMEOUT` is the metrics' time limit.
//!
//! `init` installs process-wide state and the variables are the process's,
//! so each test runs its body in a process of its own (with `common::CHILD`
//! set). Every receiver binds 127.0.0.1 and ends with the test's process.

mod common;

use common::{in_own_process, Answer, Receiver, CHILD};
use snakepit_telemetry::{Error, Protocol, Telemetry};

/// One span named `name`, ended at once.
fn span(name: &'static str) {
    drop(tracing::info_span!("round7", otel.name = name).entered());
}

/// One more on a counter named `name`, so that a metrics export has
/// something to say.
fn count_one(name: &'static str) {
    opentelemetry::global::meter("round7")
        .u64_counter(name)
        .build()
        .add(1, &[]);
}

/// Whether the value of header `name` (any case) in `head` is `value`.
fn has_header(head: &str, name: &str, value: &str) -> bool {
    head.lines().any(|l| {
        l.split_once(':')
            .is_some_and(|(k, v)| k.trim().eq_ignore_ascii_case(name) && v.trim() == value)
    })
}

/// A test body run in a process of its own with `env`, which a child reads
/// back through `ROUND7_*` variables set by the parent.
fn parent(name: &str, env: &[(&str, &str)]) -> bool {
    if std::env::var_os(CHILD).is_some() {
        return false;
    }
    in_own_process(name, env);
    true
}

/// telemetry.md (Environment): `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL` is the
/// metrics' transport, over `OTEL_EXPORTER_OTLP_PROTOCOL`. Traces go over
/// HTTP to a plain receiver, metrics over gRPC to Rotel's gRPC port (where
/// an HTTP export could only fail); the flush is `Ok` and each signal is
/// where it was sent.
#[cfg(feature = "grpc")]
#[test]
fn metrics_follow_their_own_protocol_variable() {
    const NAME: &str = "metrics_follow_their_own_protocol_variable";
    if std::env::var_os(CHILD).is_none() {
        let rotel = common::Rotel::start().unwrap();
        let traces = Receiver::ok();
        in_own_process(
            NAME,
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    &format!("{}/v1/traces", traces.base()),
                ),
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &rotel.grpc_base()),
            ],
        );
        assert!(
            traces.got("/v1/traces", "round7.http.span"),
            "the span did not come over HTTP: {:?}",
            traces.paths()
        );
        let (_, arrived) = rotel.wait_for(std::time::Duration::from_secs(20), |_, out| {
            out.contains("round7.grpc.count")
        });
        assert!(
            arrived,
            "the metrics did not come over gRPC:\n{}",
            rotel.output()
        );
        return;
    }
    let guard = Telemetry::new().stderr_logs(None).init().unwrap();
    span("round7.http.span");
    count_one("round7.grpc.count");
    assert_eq!(guard.flush(), Ok(()));
    guard.shutdown().unwrap();
}

/// The other way round: `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` with
/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf` sends the traces over
/// HTTP and the metrics, which have no variable of their own here, over
/// gRPC as the general variable says.
#[cfg(feature = "grpc")]
#[test]
fn traces_protocol_variable_is_the_traces_only() {
    const NAME: &str = "traces_protocol_variable_is_the_traces_only";
    if std::env::var_os(CHILD).is_none() {
        let rotel = common::Rotel::start().unwrap();
        let traces = Receiver::ok();
        in_own_process(
            NAME,
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    &format!("{}/t", traces.base()),
                ),
                ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", &rotel.grpc_base()),
            ],
        );
        assert!(
            traces.got("/t", "round7.traces.http"),
            "the span did not come over HTTP: {:?}",
            traces.paths()
        );
        let (_, arrived) = rotel.wait_for(std::time::Duration::from_secs(20), |_, out| {
            out.contains("round7.metrics.grpc")
        });
        assert!(
            arrived,
            "the metrics did not come over gRPC:\n{}",
            rotel.output()
        );
        return;
    }
    let guard = Telemetry::new().stderr_logs(None).init().unwrap();
    span("round7.traces.http");
    count_one("round7.metrics.grpc");
    assert_eq!(guard.flush(), Ok(()));
    guard.shutdown().unwrap();
}

/// As `OTEL_EXPORTER_OTLP_PROTOCOL` and its traces form: a metrics
/// protocol that is neither `grpc` nor `http/protobuf` is
/// `Error::UnknownProtocol` naming it, not ignored.
#[test]
fn an_unknown_metrics_protocol_is_an_unknown_protocol_error() {
    const NAME: &str = "an_unknown_metrics_protocol_is_an_unknown_protocol_error";
    let up = Receiver::ok();
    if parent(
        NAME,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &up.base()),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", " http/json "),
        ],
    ) {
        return;
    }
    assert_eq!(
        Telemetry::new().stderr_logs(None).init().err(),
        Some(Error::UnknownProtocol("http/json".into()))
    );
    assert_eq!(
        snakepit_telemetry::init_from_env().err(),
        Some(Error::UnknownProtocol("http/json".into()))
    );
}

/// `Telemetry::protocol` is "the transport of both signals": given in
/// code, it wins over `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL` as over the
/// other variables. Both signals reach the one HTTP receiver.
#[test]
fn a_protocol_given_in_code_is_both_signals() {
    const NAME: &str = "a_protocol_given_in_code_is_both_signals";
    if std::env::var_os(CHILD).is_none() {
        let up = Receiver::ok();
        in_own_process(
            NAME,
            &[
                ("ROUND7_BASE", &up.base()),
                ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ],
        );
        assert!(up.got("/v1/traces", "round7.code.span"), "{:?}", up.paths());
        assert!(
            up.got("/v1/metrics", "round7.code.count"),
            "{:?}",
            up.paths()
        );
        return;
    }
    let guard = Telemetry::new()
        .endpoint(std::env::var("ROUND7_BASE").unwrap())
        .protocol(Protocol::HttpProtobuf)
        .stderr_logs(None)
        .init()
        .unwrap();
    span("round7.code.span");
    count_one("round7.code.count");
    assert_eq!(guard.flush(), Ok(()));
    guard.shutdown().unwrap();
}

/// `OTEL_EXPORTER_OTLP_METRICS_HEADERS` (and its traces form) are sent
/// with that signal's exports in place of `OTEL_EXPORTER_OTLP_HEADERS`; the
/// other signal keeps the general ones.
#[test]
fn per_signal_headers_go_with_their_signal_only() {
    const NAME: &str = "per_signal_headers_go_with_their_signal_only";
    if std::env::var_os(CHILD).is_none() {
        let up = Receiver::ok();
        in_own_process(
            NAME,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &up.base()),
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-round7=general"),
                ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-round7=metrics"),
            ],
        );
        let traces = up.requests("/v1/traces");
        let metrics = up.requests("/v1/metrics");
        assert!(
            !traces.is_empty() && !metrics.is_empty(),
            "{:?}",
            up.paths()
        );
        for r in &traces {
            assert!(has_header(&r.head, "x-round7", "general"), "{}", r.head);
        }
        for r in &metrics {
            assert!(has_header(&r.head, "x-round7", "metrics"), "{}", r.head);
        }
        return;
    }
    let guard = Telemetry::new().stderr_logs(None).init().unwrap();
    span("round7.headers.span");
    count_one("round7.headers.count");
    assert_eq!(guard.flush(), Ok(()));
    guard.shutdown().unwrap();
}

/// `OTEL_EXPORTER_OTLP_METRICS_TIMEOUT` is the metrics' time limit, over
/// `OTEL_EXPORTER_OTLP_TIMEOUT`: against a receiver that takes the
/// metrics' connection and never answers, the flush's error gives the
/// metrics' own 300 ms, while the traces, answered, are delivered.
#[test]
fn the_metrics_timeout_variable_is_the_metrics_time_limit() {
    const NAME: &str = "the_metrics_timeout_variable_is_the_metrics_time_limit";
    if std::env::var_os(CHILD).is_none() {
        let up = Receiver::start(|path| {
            if path == "/v1/metrics" {
                Answer::Silent
            } else {
                Answer::Status(200)
            }
        });
        in_own_process(
            NAME,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &up.base()),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "60000"),
                ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "300"),
            ],
        );
        assert!(
            up.got("/v1/traces", "round7.timeout.span"),
            "{:?}",
            up.paths()
        );
        return;
    }
    let guard = Telemetry::new().stderr_logs(None).init().unwrap();
    span("round7.timeout.span");
    count_one("round7.timeout.count");
    let err = guard.flush().expect_err("the metrics export had no answer");
    let text = err.to_string();
    assert!(text.contains("metrics"), "{text}");
    assert!(
        text.contains("300ms, OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"),
        "the metrics' own limit, named: {text}"
    );
    assert!(!text.contains("60s"), "{text}");
    let _ = guard.shutdown();
}

/// `Telemetry::short_lived`: each export is "given at most 1 s (less if
/// `OTEL_EXPORTER_OTLP_TIMEOUT` says so)". The metrics' own variable says
/// so for the metrics as well: 300 ms there, against a receiver that
/// never answers the metrics, is the limit the flush's error gives.
#[test]
fn a_short_lived_program_takes_the_metrics_timeout_variable_too() {
    const NAME: &str = "a_short_lived_program_takes_the_metrics_timeout_variable_too";
    if std::env::var_os(CHILD).is_none() {
        let up = Receiver::start(|path| {
            if path == "/v1/metrics" {
                Answer::Silent
            } else {
                Answer::Status(200)
            }
        });
        in_own_process(
            NAME,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &up.base()),
                ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "300"),
            ],
        );
        assert!(
            up.got("/v1/traces", "round7.short.span"),
            "{:?}",
            up.paths()
        );
        return;
    }
    let guard = Telemetry::new()
        .short_lived(true)
        .stderr_logs(None)
        .init()
        .unwrap();
    span("round7.short.span");
    count_one("round7.short.count");
    let err = guard.flush().expect_err("the metrics export had no answer");
    let text = err.to_string();
    assert!(text.contains("metrics"), "{text}");
    assert!(
        text.contains("300ms, OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"),
        "the metrics' own limit, named: {text}"
    );
    let _ = guard.shutdown();
}

/// docs/telemetry.md (Environment): `OTEL_EXPORTER_OTLP_HEADERS` is
/// "`key=value,...` sent with every export". An entry the exporter cannot
/// send (no `=`, no value, a line break once `%0A` is decoded) was left out
/// without a word, and the receiver's 401 was the first sign; `init` now
/// warns once, naming the entries (never their values), and the good ones
/// still go.
#[test]
fn headers_that_cannot_be_sent_are_warned_about_by_name_only() {
    const NAME: &str = "headers_that_cannot_be_sent_are_warned_about_by_name_only";
    if std::env::var_os(CHILD).is_none() {
        let up = Receiver::ok();
        let stderr = in_own_process(
            NAME,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &up.base()),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "x-good=kept,x-key=sec%0Aret,Bearer-token-only,x-empty=",
                ),
                ("RUST_LOG", "warn"),
            ],
        )
        .unwrap();
        let traces = up.requests("/v1/traces");
        assert!(!traces.is_empty(), "{:?}", up.paths());
        assert!(
            has_header(&traces[0].head, "x-good", "kept"),
            "{}",
            traces[0].head
        );
        let warning: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("left out of every export"))
            .collect();
        assert_eq!(warning.len(), 1, "one warning for both signals:\n{stderr}");
        let w = warning[0];
        assert!(w.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{w}");
        assert!(
            w.contains("`x-key` (a control character in its value)"),
            "{w}"
        );
        assert!(w.contains("an entry with no `=`"), "{w}");
        assert!(w.contains("`x-empty` (no value)"), "{w}");
        for secret in ["sec", "Bearer-token-only", "x-good"] {
            assert!(!w.contains(secret), "{secret} shown: {w}");
        }
        return;
    }
    let guard = Telemetry::new().init().unwrap();
    span("round7.header.warning");
    assert_eq!(guard.flush(), Ok(()));
    guard.shutdown().unwrap();
}
