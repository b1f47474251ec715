//! The promises of snakepit-telemetry's API docs (rustdoc) that no other
//! test shows: the errors of `init` (a second subscriber, a malformed
//! endpoint, a transport left out of the build), which setting wins over
//! which variable, what the guard exports when dropped or flushed, the
//! default span filter and service name, a receiver that refuses metrics
//! with 404, the short-lived mode's single try and 1 s cap, the propagator
//! `none`, the stderr filter, and an observation that does not keep its
//! pool alive.
//!
//! `init` installs process-wide state and reads the environment, so each
//! test that calls it runs in a process of its own (this test binary,
//! started again for that one test, with its variables set there). The
//! receiver is a plain OTLP/HTTP listener in that process that keeps every
//! request (its path, head and protobuf body, where span names and
//! resource attributes are plain UTF-8) and answers as the test says.

mod common;

use std::path::{Path, PathBuf};

use common::{Answer, Receiver};
use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::Pool;
use snakepit_telemetry::{Error, Protocol, Telemetry};
use tracing::Level;
use tracing_subscriber::filter::Targets;

/// Settings that export to `receiver` and print nothing on stderr.
fn to(receiver: &Receiver) -> Telemetry {
    Telemetry::new().endpoint(receiver.base()).stderr_logs(None)
}

/// One metric point on the global meter provider, for an export to carry.
fn count_one() {
    opentelemetry::global::meter("api-promises")
        .u64_counter("api.promises.count")
        .build()
        .add(1, &[]);
}

/// `Error::SubscriberInstalled`: "Another global `tracing` subscriber is
/// already installed". A program that calls `init` twice gets it the
/// second time (the first guard goes on exporting), and so does one that
/// installed a subscriber of its own first.
#[test]
fn a_second_init_is_subscriber_installed() {
    if common::in_own_process("a_second_init_is_subscriber_installed", &[]).is_some() {
        return;
    }
    let receiver = Receiver::ok();
    let guard = to(&receiver).metrics(false).init().expect("the first init");
    match to(&receiver).metrics(false).init() {
        Err(Error::SubscriberInstalled) => {}
        Err(other) => panic!("expected SubscriberInstalled, got {other}"),
        Ok(_) => panic!("expected SubscriberInstalled, got a second guard"),
    }
    drop(tracing::info_span!("after.the.second.init").entered());
    guard.shutdown().expect("the first guard still exports");
    assert!(receiver.got("/v1/traces", "after.the.second.init"));
}

/// The same error when the program's own subscriber came first.
#[test]
fn init_after_the_programs_own_subscriber_is_subscriber_installed() {
    if common::in_own_process(
        "init_after_the_programs_own_subscriber_is_subscriber_installed",
        &[],
    )
    .is_some()
    {
        return;
    }
    tracing::subscriber::set_global_default(tracing_subscriber::registry()).unwrap();
    let receiver = Receiver::ok();
    match to(&receiver).init() {
        Err(Error::SubscriberInstalled) => {}
        Err(other) => panic!("expected SubscriberInstalled, got {other}"),
        Ok(_) => panic!("expected SubscriberInstalled, got a guard"),
    }
}

/// `Error::Exporter`: "The exporter could not be built (a malformed
/// endpoint, say)". An endpoint that is no URL is that error at `init`,
/// not a panic and not a guard exporting nowhere.
#[test]
fn a_malformed_endpoint_is_an_exporter_error() {
    if common::in_own_process("a_malformed_endpoint_is_an_exporter_error", &[]).is_some() {
        return;
    }
    for endpoint in ["http://bad host:4318", "http://[::1:4318"] {
        match Telemetry::new().endpoint(endpoint).stderr_logs(None).init() {
            Err(Error::Exporter(_)) => {}
            Err(other) => panic!("{endpoint}: expected Error::Exporter, got {other}"),
            Ok(_) => panic!("{endpoint}: expected Error::Exporter, got a guard"),
        }
    }
}

/// `Error::FeatureMissing`: "The protocol asked for was left out of this
/// build" (gRPC is the `grpc` feature, off by default), whether asked for
/// in code or by `OTEL_EXPORTER_OTLP_PROTOCOL`.
#[cfg(not(feature = "grpc"))]
#[test]
fn grpc_without_its_feature_is_feature_missing() {
    if common::in_own_process("grpc_without_its_feature_is_feature_missing", &[]).is_some() {
        return;
    }
    let missing = || Error::FeatureMissing {
        protocol: "gRPC",
        feature: "grpc",
    };
    let r = Telemetry::new()
        .endpoint("http://127.0.0.1:4317")
        .protocol(Protocol::Grpc)
        .stderr_logs(None)
        .init();
    assert_eq!(r.err(), Some(missing()), "asked for in code");
    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
    let r = Telemetry::new()
        .endpoint("http://127.0.0.1:4317")
        .stderr_logs(None)
        .init();
    assert_eq!(r.err(), Some(missing()), "asked for by the environment");
}

/// `Error::TlsUnsupported`: an `https://` endpoint, which this crate
/// cannot reach (no TLS stack is built in), is refused at `init` with an
/// error that says so, whichever transport and however it is given; it
/// once went on to fail every export with "network error".
#[test]
fn an_https_endpoint_is_refused_at_init_saying_why() {
    if common::in_own_process("an_https_endpoint_is_refused_at_init_saying_why", &[]).is_some() {
        return;
    }
    let r = Telemetry::new()
        .endpoint("https://collector.example:4318")
        .stderr_logs(None)
        .init();
    match r {
        Err(e @ Error::TlsUnsupported(_)) => {
            assert!(
                e.to_string()
                    .contains("https://collector.example:4318/v1/traces"),
                "{e}"
            );
            assert!(e.to_string().contains("plain http"), "{e}");
        }
        Err(e) => panic!("expected TlsUnsupported, got {e}"),
        Ok(_) => panic!("expected TlsUnsupported, got a guard"),
    }
    std::env::set_var(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "HTTPS://collector.example/v1/traces",
    );
    assert!(
        matches!(
            Telemetry::new().stderr_logs(None).init(),
            Err(Error::TlsUnsupported(_))
        ),
        "from the environment, any case"
    );
}

/// `Protocol::from_env`: "`OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, then
/// `OTEL_EXPORTER_OTLP_PROTOCOL`, or `None` when neither is set"; a value
/// it does not know is `Error::UnknownProtocol`.
#[test]
fn the_traces_protocol_variable_wins_and_none_is_set_by_default() {
    if common::in_own_process(
        "the_traces_protocol_variable_wins_and_none_is_set_by_default",
        &[],
    )
    .is_some()
    {
        return;
    }
    assert_eq!(Protocol::from_env(), Ok(None));
    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
    assert_eq!(Protocol::from_env(), Ok(Some(Protocol::Grpc)));
    std::env::set_var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf");
    assert_eq!(Protocol::from_env(), Ok(Some(Protocol::HttpProtobuf)));
    std::env::set_var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json");
    assert_eq!(
        Protocol::from_env(),
        Err(Error::UnknownProtocol("http/json".into()))
    );
}

/// `init_from_env`: installs "only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and `OTEL_SDK_DISABLED` is
/// not `true`". The traces-only variable alone installs, and the spans go
/// to the URL it names (used as it is, no `/v1/traces` added); with
/// `OTEL_SDK_DISABLED=true` nothing is installed though it is set. With no
/// endpoint for metrics, "only traces are exported": no metrics go to the
/// default localhost receiver.
#[test]
fn init_from_env_installs_for_a_traces_only_endpoint_unless_the_sdk_is_disabled() {
    if common::in_own_process(
        "init_from_env_installs_for_a_traces_only_endpoint_unless_the_sdk_is_disabled",
        &[],
    )
    .is_some()
    {
        return;
    }
    let receiver = Receiver::ok();
    let url = format!("{}/custom/traces", receiver.base());
    std::env::set_var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &url);
    std::env::set_var("OTEL_SDK_DISABLED", "true");
    assert!(snakepit_telemetry::init_from_env().unwrap().is_none());
    assert!(Telemetry::new()
        .stderr_logs(None)
        .init_if_configured()
        .unwrap()
        .is_none());
    std::env::remove_var("OTEL_SDK_DISABLED");
    let guard = Telemetry::new()
        .stderr_logs(None)
        .init_if_configured()
        .unwrap()
        .expect("the traces endpoint alone installs");
    assert_eq!(
        format!("{guard:?}"),
        "Guard { traces: true, metrics: false }",
        "traces only"
    );
    drop(tracing::info_span!("to.the.traces.endpoint").entered());
    guard.shutdown().unwrap();
    assert!(
        receiver.got("/custom/traces", "to.the.traces.endpoint"),
        "{:?}",
        receiver.all()
    );
}

/// `Telemetry::new`: "spans at `INFO` and above exported". A `DEBUG` span
/// is not; an `INFO` and a `WARN` span are.
#[test]
fn spans_below_info_are_not_exported_by_default() {
    if common::in_own_process("spans_below_info_are_not_exported_by_default", &[]).is_some() {
        return;
    }
    let receiver = Receiver::ok();
    let guard = to(&receiver).metrics(false).init().unwrap();
    drop(tracing::debug_span!("span.at.debug").entered());
    drop(tracing::info_span!("span.at.info").entered());
    drop(tracing::warn_span!("span.at.warn").entered());
    guard.shutdown().unwrap();
    assert!(receiver.got("/v1/traces", "span.at.info"));
    assert!(receiver.got("/v1/traces", "span.at.warn"));
    assert!(!receiver.got("/v1/traces", "span.at.debug"));
}

/// `Telemetry::traces`: "Which spans and events are exported". With a
/// `DEBUG` filter the debug span goes too, a `TRACE` one still not.
#[test]
fn the_traces_filter_decides_which_spans_are_exported() {
    if common::in_own_process("the_traces_filter_decides_which_spans_are_exported", &[]).is_some() {
        return;
    }
    let receiver = Receiver::ok();
    let guard = to(&receiver)
        .metrics(false)
        .traces(Targets::new().with_default(Level::DEBUG))
        .init()
        .unwrap();
    drop(tracing::trace_span!("span.at.trace").entered());
    drop(tracing::debug_span!("span.at.debug").entered());
    guard.shutdown().unwrap();
    assert!(receiver.got("/v1/traces", "span.at.debug"));
    assert!(!receiver.got("/v1/traces", "span.at.trace"));
}

/// `Telemetry::service_name`: "default: `OTEL_SERVICE_NAME`, else the
/// executable's name". Without either, the spans come with this test
/// binary's name as `service.name`.
#[test]
fn without_a_service_name_the_executables_name_is_used() {
    if common::in_own_process("without_a_service_name_the_executables_name_is_used", &[]).is_some()
    {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let name = exe.file_stem().unwrap().to_string_lossy().into_owned();
    let receiver = Receiver::ok();
    let guard = to(&receiver).metrics(false).init().unwrap();
    drop(tracing::info_span!("named.after.the.exe").entered());
    guard.shutdown().unwrap();
    assert!(receiver.got("/v1/traces", "named.after.the.exe"));
    assert!(receiver.got("/v1/traces", &name), "service.name {name}");
    assert!(!receiver.got("/v1/traces", "unknown_service"));
}

/// The same with `OTEL_SERVICE_NAME` set: it is the name.
#[test]
fn otel_service_name_names_the_service() {
    if common::in_own_process(
        "otel_service_name_names_the_service",
        &[("OTEL_SERVICE_NAME", "svc-from-the-env")],
    )
    .is_some()
    {
        return;
    }
    let receiver = Receiver::ok();
    let guard = to(&receiver).metrics(false).init().unwrap();
    drop(tracing::info_span!("named.by.the.env").entered());
    guard.shutdown().unwrap();
    assert!(receiver.got("/v1/traces", "svc-from-the-env"));
}

/// `Telemetry::metrics` and the struct's docs ("anything left unset comes
/// from the standard `OTEL_*` variables"): `metrics(true)` exports metrics
/// though `OTEL_METRICS_EXPORTER=none`.
#[test]
fn metrics_true_wins_over_otel_metrics_exporter_none() {
    if common::in_own_process(
        "metrics_true_wins_over_otel_metrics_exporter_none",
        &[("OTEL_METRICS_EXPORTER", "none")],
    )
    .is_some()
    {
        return;
    }
    let receiver = Receiver::ok();
    let guard = to(&receiver).metrics(true).init().unwrap();
    count_one();
    guard.shutdown().unwrap();
    assert!(receiver.got("/v1/metrics", "api.promises.count"));
}

/// And `metrics(false)` exports none though the variable says `otlp`;
/// the spans still go.
#[test]
fn metrics_false_exports_no_metrics() {
    if common::in_own_process(
        "metrics_false_exports_no_metrics",
        &[("OTEL_METRICS_EXPORTER", "otlp")],
    )
    .is_some()
    {
        return;
    }
    let receiver = Receiver::ok();
    let guard = to(&receiver).metrics(false).init().unwrap();
    count_one();
    drop(tracing::info_span!("spans.still.go").entered());
    guard.shutdown().unwrap();
    assert!(receiver.got("/v1/traces", "spans.still.go"));
    assert!(receiver.requests("/v1/metrics").is_empty());
}

/// `Telemetry::metrics`: "A receiver that does not take metrics (HTTP 404
/// or 405 ...) is reported once as a warning and metrics stop; that is
/// never an error." Against a receiver that answers 404 to metrics and
/// takes traces: three flushes and the shutdown are `Ok`, one metrics
/// export was tried and no other, one warning says so, and the spans
/// arrive.
#[test]
fn a_receiver_that_answers_404_to_metrics_is_warned_of_once_and_no_error() {
    if let Some(stderr) = common::in_own_process(
        "a_receiver_that_answers_404_to_metrics_is_warned_of_once_and_no_error",
        &[],
    ) {
        let warnings = stderr.matches("does not take metrics").count();
        assert_eq!(warnings, 1, "one warning: {stderr}");
        return;
    }
    let receiver = Receiver::start(|path| match path {
        "/v1/metrics" => Answer::Status(404),
        _ => Answer::Status(200),
    });
    let guard = Telemetry::new()
        .endpoint(receiver.base())
        .stderr_level(Level::WARN)
        .init()
        .unwrap();
    for i in 0..3 {
        count_one();
        drop(tracing::info_span!("with.metrics.refused", i).entered());
        guard.flush().expect("a refusal of metrics is not an error");
    }
    count_one();
    guard.shutdown().expect("nor at shutdown");
    assert_eq!(receiver.requests("/v1/metrics").len(), 1, "metrics stop");
    assert!(receiver.got("/v1/traces", "with.metrics.refused"));
}

/// `Telemetry::metrics_interval`: "How often metrics are exported
/// (default: `OTEL_METRIC_EXPORT_INTERVAL` in milliseconds, else 60 s)".
/// Set to 100 ms in code, metrics reach the receiver while the program
/// runs, with no flush, long before the 60 s default would.
#[test]
fn metrics_interval_exports_metrics_while_the_program_runs() {
    if common::in_own_process(
        "metrics_interval_exports_metrics_while_the_program_runs",
        &[],
    )
    .is_some()
    {
        return;
    }
    let receiver = Receiver::ok();
    let guard = to(&receiver)
        .metrics_interval(std::time::Duration::from_millis(100))
        .init()
        .unwrap();
    count_one();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !receiver.got("/v1/metrics", "api.promises.count") {
        assert!(
            std::time::Instant::now() < deadline,
            "no metrics export came before the flush"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    guard.shutdown().unwrap();
}

/// `Telemetry::metrics_interval`: "zero, here or there, means 60 s". A zero
/// interval once exported in a tight loop (about 200 exports in 1.5 s);
/// with zero in code or in `OTEL_METRIC_EXPORT_INTERVAL`, a second of
/// running brings no export at all before the shutdown's one.
#[test]
fn a_zero_metrics_interval_means_the_default_not_a_tight_loop() {
    for (name, env) in [
        ("in code", &[][..]),
        (
            "in the environment",
            &[("OTEL_METRIC_EXPORT_INTERVAL", "0")][..],
        ),
    ] {
        if common::in_own_process(
            "a_zero_metrics_interval_means_the_default_not_a_tight_loop",
            &[("ZERO_INTERVAL", name)]
                .iter()
                .chain(env)
                .copied()
                .collect::<Vec<_>>(),
        )
        .is_some()
        {
            continue;
        }
        // The child, run once per case: ZERO_INTERVAL names it.
        let receiver = Receiver::ok();
        let mut telemetry = to(&receiver);
        if std::env::var("ZERO_INTERVAL").as_deref() == Ok("in code") {
            telemetry = telemetry.metrics_interval(std::time::Duration::ZERO);
        }
        let guard = telemetry.init().unwrap();
        count_one();
        std::thread::sleep(std::time::Duration::from_secs(1));
        let before = receiver.requests("/v1/metrics").len();
        guard.shutdown().unwrap();
        assert_eq!(before, 0, "exports in the first second");
        assert_eq!(receiver.requests("/v1/metrics").len(), 1, "the shutdown's");
        return;
    }
}

/// `Telemetry::init`: "`OTEL_SDK_DISABLED=true` installs the stderr logs
/// only": the warning logged reaches stderr, and the receiver named by
/// the endpoint hears nothing, of spans or metrics.
#[test]
fn with_the_sdk_disabled_init_installs_the_stderr_logs_only() {
    if let Some(stderr) = common::in_own_process(
        "with_the_sdk_disabled_init_installs_the_stderr_logs_only",
        &[("OTEL_SDK_DISABLED", "true")],
    ) {
        assert!(stderr.contains("probe-warn-line"), "{stderr}");
        return;
    }
    let receiver = Receiver::ok();
    let guard = Telemetry::new()
        .endpoint(receiver.base())
        .stderr_level(Level::WARN)
        .init()
        .unwrap();
    drop(tracing::info_span!("not.exported").entered());
    count_one();
    log_probe_lines();
    guard.shutdown().unwrap();
    assert!(receiver.all().is_empty());
}

/// `Telemetry::short_lived`: "each export is tried once, without the
/// retries". A receiver answering 503 (which the exporter retries
/// otherwise) gets one request for the one span, and `shutdown` says the
/// span was dropped.
#[test]
fn a_short_lived_program_tries_each_export_once() {
    if common::in_own_process("a_short_lived_program_tries_each_export_once", &[]).is_some() {
        return;
    }
    let receiver = Receiver::start(|_| Answer::Status(503));
    let guard = to(&receiver)
        .metrics(false)
        .short_lived(true)
        .init()
        .unwrap();
    drop(tracing::info_span!("tried.once").entered());
    match guard.shutdown() {
        Err(Error::Flush(msg)) => assert!(msg.contains("dropped 1 span"), "{msg}"),
        other => panic!("expected Error::Flush, got {other:?}"),
    }
    assert_eq!(receiver.requests("/v1/traces").len(), 1, "no retry");
}

/// `Telemetry::short_lived`: each export "given at most 1 s (less if
/// `OTEL_EXPORTER_OTLP_TIMEOUT` says so)": with the variable at 5000 ms, a
/// receiver that never answers is given up at 1 s, and `flush` says what
/// was dropped, where to and why (`Guard::flush`).
#[test]
fn a_short_lived_export_is_given_at_most_1_s() {
    if common::in_own_process(
        "a_short_lived_export_is_given_at_most_1_s",
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "5000")],
    )
    .is_some()
    {
        return;
    }
    let receiver = Receiver::start(|_| Answer::Silent);
    let guard = to(&receiver)
        .metrics(false)
        .short_lived(true)
        .init()
        .unwrap();
    drop(tracing::info_span!("never.answered").entered());
    match guard.flush() {
        Err(Error::Flush(msg)) => {
            let what = format!("dropped 1 span that {}/v1/traces", receiver.base());
            assert!(msg.contains(&what), "{msg}");
            assert!(msg.contains("export timeout (1s"), "{msg}");
        }
        other => panic!("expected Error::Flush, got {other:?}"),
    }
    let _ = guard.shutdown();
}

/// The same through `Guard::shutdown` alone, which a short-lived program
/// calls at its end: it "exports what is buffered" with "errors as for
/// `flush`" (how many were dropped, where to, and why). It waits half as
/// long again as the export's 1 s; when it waited the same 1 s it gave up
/// first and said only
/// `traces: Operation failed: Shutdown errors: [Timeout(1s)]`.
#[test]
fn a_short_lived_shutdown_says_what_a_silent_receiver_dropped() {
    if common::in_own_process(
        "a_short_lived_shutdown_says_what_a_silent_receiver_dropped",
        &[],
    )
    .is_some()
    {
        return;
    }
    let receiver = Receiver::start(|_| Answer::Silent);
    let guard = to(&receiver)
        .metrics(false)
        .short_lived(true)
        .init()
        .unwrap();
    drop(tracing::info_span!("never.answered").entered());
    match guard.shutdown() {
        Err(Error::Flush(msg)) => {
            let what = format!("dropped 1 span that {}/v1/traces", receiver.base());
            assert!(msg.contains(&what), "{msg}");
        }
        other => panic!("expected Error::Flush, got {other:?}"),
    }
}

/// `Guard`: "dropping it (or `Guard::shutdown`) exports what is still
/// buffered". A span ended just before the guard is dropped (not shut
/// down) has reached the receiver when the drop returns.
#[test]
fn dropping_the_guard_exports_what_is_buffered() {
    if common::in_own_process("dropping_the_guard_exports_what_is_buffered", &[]).is_some() {
        return;
    }
    let receiver = Receiver::ok();
    let guard = to(&receiver).init().unwrap();
    drop(tracing::info_span!("buffered.at.drop").entered());
    count_one();
    drop(guard);
    assert!(receiver.got("/v1/traces", "buffered.at.drop"));
    assert!(receiver.got("/v1/metrics", "api.promises.count"));
}

/// `Guard::flush`: "Exports what is buffered now, without stopping": the
/// span ended before the flush has arrived when it returns, and a span
/// ended after it is exported at shutdown.
#[test]
fn flush_exports_now_and_the_exporters_go_on() {
    if common::in_own_process("flush_exports_now_and_the_exporters_go_on", &[]).is_some() {
        return;
    }
    let receiver = Receiver::ok();
    let guard = to(&receiver).init().unwrap();
    drop(tracing::info_span!("before.the.flush").entered());
    count_one();
    guard.flush().unwrap();
    assert!(receiver.got("/v1/traces", "before.the.flush"));
    assert!(receiver.got("/v1/metrics", "api.promises.count"));
    assert!(!receiver.got("/v1/traces", "after.the.flush"));
    drop(tracing::info_span!("after.the.flush").entered());
    guard.shutdown().unwrap();
    assert!(receiver.got("/v1/traces", "after.the.flush"));
}

/// `trace_headers`: `None` when "the propagator wrote no `traceparent`":
/// with `OTEL_PROPAGATORS=none`, inside an exported span, there is no
/// trace context to send; with W3C trace context set as the propagator
/// (the default's), the same span gives its `traceparent`.
#[test]
fn with_the_propagator_none_no_trace_context_is_sent() {
    if common::in_own_process(
        "with_the_propagator_none_no_trace_context_is_sent",
        &[("OTEL_PROPAGATORS", "none")],
    )
    .is_some()
    {
        return;
    }
    let receiver = Receiver::ok();
    let guard = to(&receiver).metrics(false).init().unwrap();
    let span = tracing::info_span!("with.no.propagator");
    let entered = span.enter();
    assert_eq!(snakepit_telemetry::trace_headers(), None);
    assert_eq!(snakepit_telemetry::traceparent(), None);
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let tp = snakepit_telemetry::traceparent().expect("the control writes one");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("00", 32, 16));
    drop(entered);
    drop(span);
    guard.shutdown().unwrap();
}

/// Probe lines at each level, for the stderr filter.
fn log_probe_lines() {
    tracing::debug!("probe-debug-line");
    tracing::warn!("probe-warn-line");
    tracing::error!("probe-error-line");
}

/// `Telemetry::stderr_level`: "Log lines at `level` and above to stderr,
/// whatever `RUST_LOG` says". With `RUST_LOG=debug` and `Level::ERROR`,
/// only the error line is printed.
#[test]
fn stderr_level_wins_over_rust_log() {
    if let Some(stderr) =
        common::in_own_process("stderr_level_wins_over_rust_log", &[("RUST_LOG", "debug")])
    {
        assert!(stderr.contains("probe-error-line"), "{stderr}");
        assert!(!stderr.contains("probe-warn-line"), "{stderr}");
        assert!(!stderr.contains("probe-debug-line"), "{stderr}");
        return;
    }
    let receiver = Receiver::ok();
    let guard = Telemetry::new()
        .endpoint(receiver.base())
        .metrics(false)
        .stderr_level(Level::ERROR)
        .init()
        .unwrap();
    log_probe_lines();
    guard.shutdown().unwrap();
}

/// `Telemetry::stderr_logs`: "`None` for none": not even an error line.
#[test]
fn stderr_logs_none_prints_no_line() {
    if let Some(stderr) =
        common::in_own_process("stderr_logs_none_prints_no_line", &[("RUST_LOG", "debug")])
    {
        assert!(!stderr.contains("probe-"), "{stderr}");
        return;
    }
    let receiver = Receiver::ok();
    let guard = to(&receiver).metrics(false).init().unwrap();
    log_probe_lines();
    guard.shutdown().unwrap();
}

fn traced_worker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workers/traced_worker.py")
}

/// Whether process `pid` still exists (a zombie does not count).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or_default().trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

/// `Observation`: "It does not keep the pool alive: when your last `Pool`
/// handle goes, the pool ends and its gauges stop." With the observation
/// of an instrumented pool kept, dropping the pool's last handle ends its
/// worker process.
#[test]
fn an_observation_does_not_keep_its_pool_alive() {
    if common::in_own_process("an_observation_does_not_keep_its_pool_alive", &[]).is_some() {
        return;
    }
    let receiver = Receiver::ok();
    let guard = to(&receiver).init().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool = snakepit_telemetry::instrument(
            Pool::builder(
                Bridge::python(traced_worker()).env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.base()),
            )
            .size(1)
            .name("observed"),
        )
        .start()
        .await
        .unwrap();
        let observation = snakepit_telemetry::observe(&pool);
        pool.execute("traced", json!({"token": "t"})).await.unwrap();
        let pid = pool.worker_pids()[0];
        assert!(alive(pid));
        drop(pool);
        let gone = snakepit_tests::eventually(30, || !alive(pid)).await;
        assert!(gone, "worker {pid} outlived its pool's last handle");
        drop(observation);
    });
    guard.shutdown().unwrap();
}

/// `Telemetry::endpoint`: "An empty (or blank) one is no endpoint, as an
/// empty variable is": the exports go to `OTEL_EXPORTER_OTLP_ENDPOINT`,
/// not to an address made of nothing.
#[test]
fn an_empty_endpoint_is_no_endpoint() {
    let receiver_base = std::env::var("SNAKEPIT_TEST_RECEIVER").ok();
    if receiver_base.is_none() {
        let receiver = Receiver::ok();
        let stderr = common::in_own_process(
            "an_empty_endpoint_is_no_endpoint",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.base()),
                ("OTEL_METRICS_EXPORTER", "none"),
                ("SNAKEPIT_TEST_RECEIVER", &receiver.base()),
            ],
        );
        if stderr.is_some() {
            assert!(
                receiver.got("/v1/traces", "to.the.variables.endpoint"),
                "{:?}",
                receiver.all()
            );
            return;
        }
    }
    let guard = Telemetry::new()
        .endpoint(" ")
        .stderr_logs(None)
        .init()
        .unwrap();
    drop(tracing::info_span!("to.the.variables.endpoint").entered());
    guard.shutdown().unwrap();
}
