//! Round 4 of the outside review: promises of docs/telemetry.md and the
//! crate's rustdoc that no earlier test showed, tried with hostile values
//! through the public API only.
//!
//! `init` installs process-wide state, so each test runs its body in a
//! process of its own (`common::in_own_process`). The receivers are the
//! plain loopback ones of `common` (`Receiver`), whose threads end with
//! the test's process.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{in_own_process, Receiver};
use opentelemetry::trace::TraceContextExt;
use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::Pool;
use snakepit_telemetry::{Error, Guard, Protocol, Telemetry};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

// ------------------------------------------------------------- helpers

/// A span named `name`, ended at once.
fn span(name: &'static str) {
    drop(tracing::info_span!("round4", otel.name = name).entered());
}

/// One more on a counter, so that a metrics export has something to say.
fn count_one() {
    opentelemetry::global::meter("round4")
        .u64_counter("round4.count")
        .build()
        .add(1, &[]);
}

/// Telemetry over HTTP to `base`, no stderr lines.
fn http_to(base: &str) -> Telemetry {
    Telemetry::new()
        .endpoint(base)
        .protocol(Protocol::HttpProtobuf)
        .stderr_logs(None)
}

/// The header lines of `head` named `name` (any case), as `value`s.
fn header_values(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .filter_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
        .collect()
}

/// Whether `text` holds only printable ASCII (what an HTTP header or a
/// W3C trace context field may carry on to another hop).
fn printable(text: &str) -> bool {
    text.bytes().all(|b| (b' '..=b'~').contains(&b))
}

// ------------------------------------------------- credentials in errors

/// The password of [`a_password_with_unescaped_delimiters_never_shows`].
const SECRET: &str = "s3cretTOKEN";

/// telemetry.md (Environment, `OTEL_EXPORTER_OTLP_ENDPOINT`):
/// "Credentials in its userinfo ... and every message, warning and error
/// shows the endpoint as `http://***@h:4318`". API tokens are often
/// base64, whose `/` and `+` a user pastes into the URL unescaped; a `/`,
/// `?` or `#` in the password then ends the authority early, and the URL
/// is malformed. Whatever the settings' `Debug`, the error `init` returns,
/// a flush's error and the log lines (at `TRACE`) say, the password is
/// not in it.
#[test]
fn a_password_with_unescaped_delimiters_never_shows() {
    const NAME: &str = "a_password_with_unescaped_delimiters_never_shows";
    if std::env::var_os(common::CHILD).is_none() {
        let stderr = in_own_process(NAME, &[("RUST_LOG", "trace")]).unwrap();
        assert!(!stderr.contains(SECRET), "{stderr}");
        return;
    }
    let up = Receiver::ok();
    let host = format!("127.0.0.1:{}", up.port);
    let mut shown = Vec::new();
    let mut installed = None;
    for scheme in ["https", "http"] {
        for userinfo in [
            format!("api:ab/{SECRET}"),
            format!("api:ab?{SECRET}"),
            format!("api:ab#{SECRET}"),
            format!("api:{SECRET}/x"),
            format!("api:1/{SECRET}"),
        ] {
            let endpoint = format!("{scheme}://{userinfo}@{host}");
            let settings = http_to(&endpoint)
                .service_name("round4")
                .short_lived(true)
                .stderr_level(tracing::Level::TRACE);
            shown.push(format!("{settings:?}"));
            if installed.is_some() {
                continue; // a second guard cannot be installed
            }
            match settings.init() {
                Err(e) => shown.push(format!("{e} / {e:?}")),
                Ok(guard) => installed = Some(guard),
            }
        }
    }
    if let Some(guard) = installed {
        span("malformed.password");
        count_one();
        shown.push(format!("flush: {:?}", guard.flush()));
        shown.push(format!("shutdown: {:?}", guard.shutdown()));
    }
    let _ = writeln!(std::io::stderr(), "{shown:#?}");
    for message in &shown {
        assert!(!message.contains(SECRET), "{message}");
    }
}

// --------------------------------------------------- OTEL_SERVICE_NAME

/// The test binary's name, as `init` reads the executable's name.
fn exe_stem() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap()
}

/// The service name the worker of an instrumented one-worker pool is
/// given (`common::SERVICE_WORKER` reports its `OTEL_SERVICE_NAME`).
fn worker_service_name() -> String {
    let dir = common::temp_dir("round4-service");
    let script = dir.join("service.py");
    std::fs::write(&script, common::SERVICE_WORKER).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let name = rt.block_on(async {
        let pool = snakepit_telemetry::instrument(Pool::builder(Bridge::python(&script)).size(1))
            .start()
            .await
            .unwrap();
        let name = pool.execute("service", json!({})).await.unwrap();
        pool.shutdown().await.unwrap();
        name
    });
    let _ = std::fs::remove_dir_all(&dir);
    name.as_str().unwrap_or_default().to_owned()
}

/// telemetry.md (Environment): `OTEL_SERVICE_NAME` gives `service.name`,
/// "the executable's name" by default; and `Telemetry::endpoint` says "An
/// empty (or blank) one is no endpoint, as an empty variable is", as every
/// other variable the crate reads is taken. A blank `OTEL_SERVICE_NAME`
/// (as a shell script's `OTEL_SERVICE_NAME="$NAME"` with `NAME` a space
/// gives) names no service: the spans arrive under the executable's name,
/// not under a name of spaces, and the workers' name is that one with
/// `-worker` after it.
#[test]
fn a_blank_otel_service_name_is_no_name() {
    const NAME: &str = "a_blank_otel_service_name_is_no_name";
    if in_own_process(NAME, &[("OTEL_SERVICE_NAME", "   ")]).is_some() {
        return;
    }
    let up = Receiver::ok();
    let guard = http_to(&up.base()).metrics(false).init().unwrap();
    span("blank.service.name");
    guard.flush().unwrap();
    let requests = up.requests("/v1/traces");
    assert!(!requests.is_empty(), "no export arrived");
    let exe = exe_stem();
    assert!(
        up.got("/v1/traces", &exe),
        "service.name is not the executable's name {exe}: {:?}",
        String::from_utf8_lossy(&requests[0].body)
    );
    assert!(!up.got("/v1/traces", "   "), "a service name of spaces");
    assert_eq!(worker_service_name(), format!("{exe}-worker"));
    guard.shutdown().unwrap();
}

/// The rustdoc of `instrument`: the workers report as "the host's name and
/// `-worker`", and telemetry.md: `init` is told the name by
/// `.service_name()`. A program whose first `init` failed (an `https://`
/// endpoint: `Error::TlsUnsupported`, nothing installed) and that then
/// installs with another name gets its workers named after the name it
/// installed with, not after the attempt that failed.
#[test]
fn a_failed_init_leaves_no_service_name_behind() {
    const NAME: &str = "a_failed_init_leaves_no_service_name_behind";
    if in_own_process(NAME, &[]).is_some() {
        return;
    }
    let failed = http_to("https://127.0.0.1:4318")
        .service_name("the-failed-attempt")
        .init();
    assert!(
        matches!(failed, Err(Error::TlsUnsupported(_))),
        "{failed:?}"
    );
    let up = Receiver::ok();
    let guard = http_to(&up.base())
        .service_name("the-installed-one")
        .metrics(false)
        .init()
        .unwrap();
    span("after.a.failed.init");
    guard.flush().unwrap();
    assert!(up.got("/v1/traces", "the-installed-one"));
    assert_eq!(worker_service_name(), "the-installed-one-worker");
    guard.shutdown().unwrap();
}

/// The rustdoc of `Guard::flush` ("Exports what is buffered now, without
/// stopping"), on a guard shared between threads (it is `Sync`): four
/// threads that each end spans and flush, at once and over and over,
/// against a receiver that takes everything, get `Ok` from every flush
/// (no span is told as dropped that was delivered), and every span
/// arrives.
#[test]
fn flushes_from_many_threads_at_once_are_all_ok() {
    const NAME: &str = "flushes_from_many_threads_at_once_are_all_ok";
    if in_own_process(NAME, &[]).is_some() {
        return;
    }
    let up = Receiver::ok();
    let guard = http_to(&up.base()).init().unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let guard = &guard;
            s.spawn(move || {
                for i in 0..25 {
                    let _span = tracing::info_span!("concurrent", t, i).entered();
                    drop(_span);
                    count_one();
                    assert_eq!(guard.flush(), Ok(()), "thread {t}, flush {i}");
                }
            });
        }
    });
    guard.shutdown().unwrap();
    let spans: usize = up
        .requests("/v1/traces")
        .iter()
        .map(|r| {
            r.body
                .windows(b"concurrent".len())
                .filter(|w| w == b"concurrent")
                .count()
        })
        .sum();
    assert_eq!(spans, 100, "spans delivered");
}

// --------------------------------------------- OTEL_EXPORTER_OTLP_HEADERS

/// telemetry.md (Environment): `OTEL_EXPORTER_OTLP_HEADERS` is
/// "`key=value,...` sent with every export (API keys)". Whoever sets the
/// variable does not get to frame the request: headers named `Host`,
/// `Content-Length`, `Transfer-Encoding` or `Connection` do not replace or
/// double the client's own (a second `Content-Length: 0` would have the
/// receiver read the body as the next request), a value whose percent
/// escapes decode to CR LF or that holds a raw line break adds no header
/// line, a bad percent escape is sent as written, and the export is
/// delivered, its body whole.
#[test]
fn hostile_otlp_headers_cannot_frame_the_request() {
    const NAME: &str = "hostile_otlp_headers_cannot_frame_the_request";
    let headers = "content-length=0,host=evil.example,transfer-encoding=chunked,\
                   connection=keep-alive,x-inject=a%0d%0aX-Evil: 1,\
                   x-raw=a\r\nX-Evil-Raw: 1,x-bad=%zz,x-ok=fine,bad key=v";
    if in_own_process(NAME, &[("OTEL_EXPORTER_OTLP_HEADERS", headers)]).is_some() {
        return;
    }
    let up = Receiver::ok();
    let guard = http_to(&up.base()).short_lived(true).init().unwrap();
    span("hostile.headers");
    count_one();
    assert_eq!(guard.flush(), Ok(()));
    for path in ["/v1/traces", "/v1/metrics"] {
        let requests = up.requests(path);
        assert_eq!(requests.len(), 1, "{path}: {:?}", up.paths());
        let request = &requests[0];
        let head = &request.head;
        assert_eq!(
            header_values(head, "content-length"),
            [request.body.len().to_string()],
            "{head}"
        );
        assert!(!request.body.is_empty(), "{path}: an empty body");
        assert_eq!(
            header_values(head, "host"),
            [format!("127.0.0.1:{}", up.port)],
            "{head}"
        );
        assert!(
            header_values(head, "transfer-encoding").is_empty(),
            "{head}"
        );
        assert_eq!(header_values(head, "connection"), ["close"], "{head}");
        assert!(!head.to_ascii_lowercase().contains("x-evil"), "{head}");
        assert_eq!(header_values(head, "x-bad"), ["%zz"], "{head}");
        assert_eq!(header_values(head, "x-ok"), ["fine"], "{head}");
    }
    assert_eq!(up.all().len(), 2, "{:?}", up.paths());
    guard.shutdown().unwrap();
}

/// telemetry.md (Environment): `OTEL_EXPORTER_OTLP_HEADERS` is sent with
/// every export, and credentials in the endpoint's userinfo "are sent as
/// HTTP basic authentication". When both give an `Authorization` (a
/// bearer token in the variable, a user and password in the endpoint),
/// each request carries one `Authorization` header, the one the variable
/// names, never two (which a receiver may read either way, or refuse).
#[test]
fn an_authorization_header_and_userinfo_send_one_authorization() {
    const NAME: &str = "an_authorization_header_and_userinfo_send_one_authorization";
    if in_own_process(
        NAME,
        &[("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer%20tok-1")],
    )
    .is_some()
    {
        return;
    }
    let up = Receiver::ok();
    let base = up.base().replacen("http://", "http://user:pw@", 1);
    let guard = http_to(&base).short_lived(true).init().unwrap();
    span("one.authorization");
    count_one();
    assert_eq!(guard.flush(), Ok(()));
    for path in ["/v1/traces", "/v1/metrics"] {
        let requests = up.requests(path);
        assert!(!requests.is_empty(), "{path}: {:?}", up.paths());
        for request in requests {
            assert_eq!(
                header_values(&request.head, "authorization"),
                ["Bearer tok-1"],
                "{}",
                request.head
            );
        }
    }
    guard.shutdown().unwrap();
}

// ----------------------------------------------- other variables, hostile

/// telemetry.md (Environment): the resource, sampling, batching and
/// metrics variables are "read by the OpenTelemetry SDK and exporter".
/// Values no one should write there (resource attributes with empty keys,
/// bad escapes and escaped line breaks, an unknown sampler, a ratio that
/// is no number, a batch size of 0, negative and non-numeric times) are
/// not a panic nor an `init` error: spans and metrics are delivered, the
/// well-formed resource attribute among the bad ones arrives, and the
/// shutdown is `Ok`.
#[test]
fn hostile_sdk_variables_neither_panic_nor_stop_the_export() {
    const NAME: &str = "hostile_sdk_variables_neither_panic_nor_stop_the_export";
    if in_own_process(
        NAME,
        &[
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "=,,novalue,=x,k=%ZZ,k2=a%0Ab,k3=%,deployment.environment=round4-env",
            ),
            ("OTEL_TRACES_SAMPLER", "not_a_sampler"),
            ("OTEL_TRACES_SAMPLER_ARG", "many"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "-1"),
            ("OTEL_BSP_SCHEDULE_DELAY", "-1"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "-1"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "-5"),
            ("OTEL_METRIC_EXPORT_TIMEOUT", "soon"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
        ],
    )
    .is_some()
    {
        return;
    }
    let up = Receiver::ok();
    let guard = http_to(&up.base()).init().unwrap();
    span("hostile.sdk.variables");
    count_one();
    assert_eq!(guard.flush(), Ok(()));
    assert!(
        up.got("/v1/traces", "hostile.sdk.variables"),
        "{:?}",
        up.paths()
    );
    assert!(up.got("/v1/traces", "round4-env"), "the resource attribute");
    assert!(up.got("/v1/metrics", "round4.count"), "{:?}", up.paths());
    assert_eq!(guard.shutdown(), Ok(()));
}

/// telemetry.md (Environment): `OTEL_TRACES_EXPORTER` and
/// `OTEL_METRICS_EXPORTER` are "`otlp` or `none` (that signal is not
/// exported); anything else is `Error::Unsupported`", `OTEL_PROPAGATORS`
/// lists `tracecontext`, `baggage`, `none` (default both), and a blank
/// variable is no variable. A list of nothing but commas and spaces names
/// neither `none` nor anything else: it is taken as unset (both signals
/// exported, W3C trace context written) or refused with
/// `Error::Unsupported`, never as a silent `none`.
#[test]
fn lists_of_nothing_but_commas_are_not_none() {
    const NAME: &str = "lists_of_nothing_but_commas_are_not_none";
    if in_own_process(
        NAME,
        &[
            ("OTEL_TRACES_EXPORTER", " , "),
            ("OTEL_METRICS_EXPORTER", ","),
            ("OTEL_PROPAGATORS", ",,"),
        ],
    )
    .is_some()
    {
        return;
    }
    let up = Receiver::ok();
    let guard = match http_to(&up.base()).init() {
        Ok(guard) => guard,
        Err(Error::Unsupported { .. }) => return,
        Err(other) => panic!("expected a guard or Error::Unsupported, got {other}"),
    };
    let headers = {
        let _span = tracing::info_span!("commas").entered();
        snakepit_telemetry::trace_headers()
    };
    assert!(headers.is_some(), "no trace context written");
    count_one();
    assert_eq!(guard.flush(), Ok(()));
    assert!(up.got("/v1/traces", "commas"), "{:?}", up.paths());
    assert!(up.got("/v1/metrics", "round4.count"), "{:?}", up.paths());
    guard.shutdown().unwrap();
}

/// telemetry.md (Environment): `OTEL_EXPORTER_OTLP_PROTOCOL` is
/// "`http/protobuf` or `grpc`; anything else is `Error::UnknownProtocol`",
/// and a blank variable is no variable. A protocol variable of spaces is
/// unset (HTTP, the default, delivers); one in capitals, with a line
/// break, or `http/json` (a real OTLP protocol this crate does not have)
/// is `Error::UnknownProtocol` naming it, from `init` and from
/// `init_from_env`, not a panic nor a guard.
#[test]
fn protocol_variables_blank_or_unknown() {
    const NAME: &str = "protocol_variables_blank_or_unknown";
    if std::env::var_os(common::CHILD).is_none() {
        for value in [
            "GRPC",
            "http/protobuf\nx",
            "http/json",
            "grpc, http/protobuf",
        ] {
            for var in [
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            ] {
                in_own_process(NAME, &[(var, value), ("ROUND4_UNKNOWN", value)]);
            }
        }
        in_own_process(NAME, &[("OTEL_EXPORTER_OTLP_PROTOCOL", " \t ")]);
        return;
    }
    let up = Receiver::ok();
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", up.base());
    if let Ok(value) = std::env::var("ROUND4_UNKNOWN") {
        let want = || Some(Error::UnknownProtocol(value.trim().to_owned()));
        assert_eq!(Telemetry::new().init().err(), want());
        assert_eq!(snakepit_telemetry::init_from_env().err(), want());
        return;
    }
    let guard = Telemetry::new()
        .metrics(false)
        .stderr_logs(None)
        .init()
        .unwrap();
    span("blank.protocol");
    assert_eq!(guard.flush(), Ok(()));
    assert!(up.got("/v1/traces", "blank.protocol"), "{:?}", up.paths());
    guard.shutdown().unwrap();
}

/// telemetry.md (Environment): `OTEL_EXPORTER_OTLP_ENDPOINT` is "the
/// receiver's base URL", and a blank one is no endpoint (the rustdoc of
/// `Telemetry::endpoint`); every other variable the crate reads is taken
/// with the spaces around it left out (`OTEL_EXPORTER_OTLP_PROTOCOL="
/// grpc "` is gRPC). An endpoint with spaces or a line break around it (a
/// value pasted from a file) either reaches the receiver or is refused at
/// `init` with `Error::Exporter`; it is never a guard exporting nowhere.
#[test]
fn an_endpoint_with_spaces_around_it_is_the_endpoint_or_refused() {
    const NAME: &str = "an_endpoint_with_spaces_around_it_is_the_endpoint_or_refused";
    if std::env::var_os(common::CHILD).is_none() {
        for (around, var) in [
            (" {} ", "OTEL_EXPORTER_OTLP_ENDPOINT"),
            ("{}\n", "OTEL_EXPORTER_OTLP_ENDPOINT"),
            ("\t{}", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        ] {
            in_own_process(NAME, &[("ROUND4_AROUND", around), ("ROUND4_VAR", var)]);
        }
        return;
    }
    let up = Receiver::ok();
    let around = std::env::var("ROUND4_AROUND").unwrap();
    let var = std::env::var("ROUND4_VAR").unwrap();
    std::env::set_var(&var, around.replace("{}", &up.base()));
    let guard = match snakepit_telemetry::init_from_env() {
        Ok(Some(guard)) => guard,
        Ok(None) => panic!("{var}={around:?}: nothing installed"),
        Err(Error::Exporter(m)) => {
            let _ = writeln!(std::io::stderr(), "refused: {m}");
            return;
        }
        Err(other) => panic!("{var}={around:?}: {other}"),
    };
    span("spaced.endpoint");
    let flushed = guard.flush();
    assert!(
        up.got("/v1/traces", "spaced.endpoint"),
        "{var}={around:?}: a guard that exports nowhere: {flushed:?}"
    );
    assert_eq!(flushed, Ok(()));
    drop(guard);
}

/// `Error::Exporter`: "The exporter could not be built (a malformed
/// endpoint, say)"; telemetry.md: the endpoint is "the receiver's base
/// URL". An endpoint whose port is not a port (a typo such as `43l8`, or
/// 99999) or that has no scheme can reach no receiver: `init` refuses it
/// with `Error::Exporter` naming it, rather than exporting somewhere else
/// (port 80) or nowhere. The control, the same receiver's well-formed
/// address, delivers.
#[test]
fn an_endpoint_with_a_bad_port_or_no_scheme_is_refused_at_init() {
    const NAME: &str = "an_endpoint_with_a_bad_port_or_no_scheme_is_refused_at_init";
    if in_own_process(NAME, &[]).is_some() {
        return;
    }
    let up = Receiver::ok();
    for bad in [
        "http://127.0.0.1:43l8".to_owned(),
        "http://127.0.0.1:99999".to_owned(),
        format!("http://127.0.0.1:{}x", up.port),
        format!("127.0.0.1:{}", up.port),
    ] {
        match http_to(&bad).init() {
            Err(Error::Exporter(m)) => assert!(m.contains(&bad), "{bad}: {m}"),
            Err(other) => panic!("{bad}: expected Error::Exporter, got {other}"),
            Ok(_) => panic!("{bad}: expected Error::Exporter, got a guard"),
        }
    }
    let guard = http_to(&format!("http://127.0.0.1:{}/", up.port))
        .init()
        .unwrap();
    span("well.formed");
    assert_eq!(guard.flush(), Ok(()));
    assert!(up.got("/v1/traces", "well.formed"));
    guard.shutdown().unwrap();
}

// ------------------------------------------------------- the guard's life

/// What a program that moves its guard, or ends it from a task, needs:
/// `Guard` can go to another thread, and `Error` is a `std` error that
/// travels across threads (`Box<dyn Error + Send + Sync>`, `anyhow`).
#[test]
fn guard_and_error_can_cross_threads() {
    fn sendable<T: Send + 'static>() {}
    fn shared<T: Sync>() {}
    fn std_error<T: std::error::Error + Send + Sync + 'static>() {}
    sendable::<Guard>();
    shared::<Guard>();
    std_error::<Error>();
    let boxed: Box<dyn std::error::Error + Send + Sync> =
        Box::new(Error::UnknownProtocol("x".into()));
    assert!(boxed.to_string().contains("`x`"), "{boxed}");
}

/// The rustdoc of `Guard`: "dropping it (or `Guard::shutdown`) exports
/// what is still buffered". A guard made inside a Tokio runtime that has
/// since ended, then dropped on another thread, and a guard flushed and
/// dropped from inside a task of a running runtime (the end of an
/// `async fn main`), still deliver what was buffered, without a panic.
#[test]
fn a_guard_outliving_its_runtime_or_dropped_in_a_task_delivers() {
    const NAME: &str = "a_guard_outliving_its_runtime_or_dropped_in_a_task_delivers";
    if std::env::var_os(common::CHILD).is_none() {
        for how in ["ended", "task"] {
            in_own_process(NAME, &[("ROUND4_HOW", how)]);
        }
        return;
    }
    let up = Receiver::ok();
    let how = std::env::var("ROUND4_HOW").unwrap();
    if how == "ended" {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let guard = rt.block_on(async { http_to(&up.base()).init().unwrap() });
        rt.block_on(async { span("made.in.an.ended.runtime") });
        drop(rt);
        std::thread::spawn(move || drop(guard)).join().unwrap();
        assert!(up.got("/v1/traces", "made.in.an.ended.runtime"));
    } else {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let base = up.base();
        rt.block_on(async move {
            tokio::spawn(async move {
                let guard = http_to(&base).init().unwrap();
                span("dropped.in.a.task");
                count_one();
                guard.flush().unwrap();
                span("dropped.in.a.task.after.flush");
                drop(guard);
            })
            .await
            .unwrap();
        });
        assert!(up.got("/v1/traces", "dropped.in.a.task"));
        assert!(up.got("/v1/traces", "dropped.in.a.task.after.flush"));
        assert!(up.got("/v1/metrics", "round4.count"));
    }
}

// ------------------------------------- hostile trace context from outside

/// `tests/workers/outside_telemetry_context.py`: reports the trace context
/// of its request and the span the bridge opened for it.
fn context_worker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workers/outside_telemetry_context.py")
}

/// A caller's span whose parent is what the global propagator (installed
/// by `init`) extracts from `headers`, as a server continuing its
/// client's trace does.
fn continuing(headers: &[(&str, String)]) -> tracing::Span {
    let carrier: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    let span = tracing::info_span!("round4.server");
    let _ = span.set_parent(cx);
    span
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A case of [`hostile_incoming_trace_context_reaches_the_worker_sanitised`]:
/// its name, the headers the server got, and whether they carry a trace
/// to continue.
type Case = (&'static str, Vec<(&'static str, String)>, bool);

/// telemetry.md (The trace of a call): the request frame carries "the
/// trace context of that span as OpenTelemetry's global propagator writes
/// it: `traceparent` and, when the context has them, `tracestate` and
/// `baggage`". A server that continues whatever its client sent hands on
/// hostile values: a trace state with malformed members, baggage with
/// escaped line breaks and NULs, bad escapes, or 20 KB of values, traceparents with
/// a line break, an all-zero trace id or an unknown version. Each call
/// still succeeds; the handler gets a traceparent of the caller's trace
/// when the incoming one was valid and of a fresh trace when it was not,
/// and every field it gets is printable ASCII, the baggage within the
/// W3C's 8192 bytes, so that the worker can pass them on as headers.
#[test]
fn hostile_incoming_trace_context_reaches_the_worker_sanitised() {
    const NAME: &str = "hostile_incoming_trace_context_reaches_the_worker_sanitised";
    if in_own_process(NAME, &[]).is_some() {
        return;
    }
    let up = Receiver::ok();
    let guard = http_to(&up.base()).metrics(false).init().unwrap();
    let valid = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let big = "v".repeat(5000);
    let huge = format!("b1={big},b2={big},b3={big},b4={big}");
    let baggage = "tenant=acme,evil=a%0D%0AX-Injected:%201,bad=%ZZ,=nokey,novalue,nul=%00";
    let cases: Vec<Case> = vec![
        (
            "valid traceparent, hostile state and baggage",
            vec![
                ("traceparent", valid.clone()),
                ("tracestate", "a=1,,=x,BAD KEY=1,b=\u{7f},c=ok".into()),
                ("baggage", baggage.into()),
            ],
            true,
        ),
        (
            "valid traceparent, 20 KB of baggage",
            vec![
                ("traceparent", valid.clone()),
                ("baggage", format!("tenant=acme,{huge}")),
            ],
            true,
        ),
        (
            "a line break after a valid traceparent",
            vec![
                ("traceparent", format!("{valid}\r\nX-Evil: 1")),
                ("baggage", baggage.into()),
            ],
            false,
        ),
        (
            "an all-zero trace id",
            vec![(
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01".into(),
            )],
            false,
        ),
        (
            "version ff",
            vec![("traceparent", format!("ff-{TRACE}-00f067aa0ba902b7-01"))],
            false,
        ),
    ];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool =
            snakepit_telemetry::instrument(Pool::builder(Bridge::python(context_worker())).size(1))
                .start()
                .await
                .unwrap();
        for (case, headers, continued) in cases {
            let caller = continuing(&headers);
            let caller_trace =
                format!("{:032x}", caller.context().span().span_context().trace_id());
            let r: Value = tokio::time::timeout(
                Duration::from_secs(60),
                pool.execute("context", json!({})).instrument(caller),
            )
            .await
            .unwrap_or_else(|_| panic!("{case}: no answer in 60 s"))
            .unwrap_or_else(|e| panic!("{case}: {e}"));
            let tp = r["traceparent"].as_str().unwrap_or_default();
            let p: Vec<&str> = tp.split('-').collect();
            assert!(
                p.len() == 4 && p[0] == "00" && p[1].len() == 32 && p[1] != "0".repeat(32),
                "{case}: {r}"
            );
            assert_eq!(p[1], caller_trace, "{case}: {r}");
            assert_eq!(p[1] == TRACE, continued, "{case}: {r}");
            assert_eq!(r["trace_id"], p[1], "{case}: the bridge's span: {r}");
            for field in ["traceparent", "tracestate", "baggage"] {
                if let Some(text) = r[field].as_str() {
                    assert!(printable(text), "{case}: {field}: {text:?}");
                }
            }
            if let Some(b) = r["baggage"].as_str() {
                assert!(b.len() <= 8192, "{case}: {} bytes of baggage", b.len());
            }
            // The W3C allows dropping baggage over its limits, whole.
            if continued && !case.contains("20 KB") {
                assert_eq!(r["tenant"], "acme", "{case}: {r}");
            }
        }
        pool.shutdown().await.unwrap();
    });
    guard.shutdown().unwrap();
}

// ------------------------------- API keys in the exporter's own debug lines

/// The API key of [`api_keys_never_show_in_the_exporters_own_debug_lines`].
#[cfg(feature = "internal-logs")]
const API_KEY: &str = "HDRsecret123";
/// Its endpoint's password, and the Basic credentials it gives, base64.
#[cfg(feature = "internal-logs")]
const PASSWORD: &str = "PWsecret456";
#[cfg(feature = "internal-logs")]
const BASIC: &str = "dXNlcjpQV3NlY3JldDQ1Ng==";

/// A receiver that refuses every export with 401, quoting back the whole
/// head of the request (its `Authorization` and API key headers too), as
/// a receiver telling what it refused may.
#[cfg(feature = "internal-logs")]
fn quoting_refuser() -> u16 {
    use std::io::{BufRead, BufReader, Read};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => head.push_str(&line),
                    }
                }
                let len = header_values(&head, "content-length")
                    .first()
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                let answer = format!(
                    "HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
                    head.len()
                );
                let _ = reader.get_mut().write_all(answer.as_bytes());
            });
        }
    });
    port
}

/// telemetry.md (Environment): `OTEL_EXPORTER_OTLP_HEADERS` carries API
/// keys, and with the exporter's own debug lines on (`internal-logs`,
/// which `opentelemetry-otlp`'s default features turn on in an
/// application that depends on it) "a refusal's body" is logged "with the
/// credentials' parts written `***`". A receiver that refuses with 401
/// and quotes the request's head back has neither the API key, nor the
/// password, nor the Basic credentials made of them (base64) reach
/// stderr at `TRACE`. Run with `cargo nextest run -p snakepit-telemetry
/// --features internal-logs --test outside_round4`.
#[test]
#[cfg(feature = "internal-logs")]
fn api_keys_never_show_in_the_exporters_own_debug_lines() {
    const NAME: &str = "api_keys_never_show_in_the_exporters_own_debug_lines";
    let headers = format!("x-api-key={API_KEY}");
    if let Some(stderr) = in_own_process(
        NAME,
        &[
            ("OTEL_EXPORTER_OTLP_HEADERS", &headers),
            ("RUST_LOG", "trace"),
        ],
    ) {
        assert!(
            stderr.contains("HttpClient.StatusError"),
            "the exporter's debug lines are not compiled in:\n{stderr}"
        );
        assert!(stderr.contains("x-api-key: ***"), "{stderr}");
        for secret in [API_KEY, PASSWORD, BASIC] {
            assert!(!stderr.contains(secret), "{secret} shown:\n{stderr}");
        }
        return;
    }
    let port = quoting_refuser();
    let guard = http_to(&format!("http://user:{PASSWORD}@127.0.0.1:{port}"))
        .short_lived(true)
        .stderr_level(tracing::Level::TRACE)
        .init()
        .unwrap();
    span("refused.with.a.quote");
    count_one();
    let flushed = guard.flush();
    assert!(matches!(flushed, Err(Error::Flush(_))), "{flushed:?}");
    let _ = writeln!(std::io::stderr(), "flush: {flushed:?}");
    drop(guard);
}

// ------------------------------------------------------------------ gRPC

/// A gRPC receiver that takes each connection, does the HTTP/2 handshake
/// (its SETTINGS, and the ack of the client's), and never answers a call.
#[cfg(feature = "grpc")]
fn grpc_silent() -> u16 {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut greeted = false;
                while matches!(conn.read(&mut buf), Ok(n) if n > 0) {
                    if !greeted {
                        greeted = true;
                        // SETTINGS (empty), then SETTINGS with ACK.
                        let frames = [0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0];
                        if conn.write_all(&frames).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    port
}

/// telemetry.md (Environment): `OTEL_EXPORTER_OTLP_TIMEOUT` is
/// "milliseconds per export", and a receiver that takes the connection
/// but does not answer in time is told as `no answer within the export
/// timeout (...)`; the crate reads every variable with the spaces around
/// it left out. Over gRPC, with the variable at ` 300 ` (spaces around
/// it, as an env file may leave), a flush against a receiver that never
/// answers gives that cause with 300 ms for both signals, as it does with
/// `300`: the exporter is held to the timeout the crate reports and waits
/// for, not to its own 10 s default while the guard stops waiting after
/// 450 ms. Run with `cargo nextest run -p snakepit-telemetry --features
/// grpc --test outside_round4`.
#[test]
#[cfg(feature = "grpc")]
fn grpc_a_timeout_with_spaces_around_it_holds_the_exporter_too() {
    const NAME: &str = "grpc_a_timeout_with_spaces_around_it_holds_the_exporter_too";
    const CAUSE: &str = "no answer within the export timeout (300ms, OTEL_EXPORTER_OTLP_TIMEOUT)";
    if std::env::var_os(common::CHILD).is_none() {
        for value in ["300", " 300 "] {
            in_own_process(NAME, &[("OTEL_EXPORTER_OTLP_TIMEOUT", value)]);
        }
        return;
    }
    let port = grpc_silent();
    let guard = Telemetry::new()
        .endpoint(format!("http://127.0.0.1:{port}"))
        .protocol(Protocol::Grpc)
        .stderr_logs(None)
        .init()
        .unwrap();
    span("grpc.spaced.timeout");
    count_one();
    let msg = match guard.flush() {
        Err(Error::Flush(msg)) => msg,
        other => panic!("expected Error::Flush, got {other:?}"),
    };
    assert_eq!(msg.matches(CAUSE).count(), 2, "both signals: {msg}");
    std::mem::forget(guard);
}

/// telemetry.md (Environment): credentials in the endpoint's userinfo are
/// sent as HTTP basic authentication, over HTTP. Over gRPC, tonic would
/// put them in the request's `:authority`, where no receiver takes them
/// as credentials: `init` refuses such an endpoint with `Error::Exporter`,
/// which hides them and says where they go instead; the same endpoint
/// without them starts. Run with `cargo nextest run -p snakepit-telemetry
/// --features grpc --test outside_round4`.
#[test]
#[cfg(feature = "grpc")]
fn grpc_credentials_in_the_endpoint_are_refused_not_misplaced() {
    const NAME: &str = "grpc_credentials_in_the_endpoint_are_refused_not_misplaced";
    if in_own_process(NAME, &[]).is_some() {
        return;
    }
    let port = grpc_silent();
    for userinfo in ["api:s3cr3t-token@", "s3cr3t-token@"] {
        let endpoint = format!("http://{userinfo}127.0.0.1:{port}");
        match Telemetry::new()
            .endpoint(&endpoint)
            .protocol(Protocol::Grpc)
            .stderr_logs(None)
            .init()
        {
            Err(Error::Exporter(m)) => {
                assert!(!m.contains("s3cr3t"), "{endpoint}: {m}");
                assert!(m.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{endpoint}: {m}");
            }
            Err(other) => panic!("{endpoint}: expected Error::Exporter, got {other}"),
            Ok(_) => panic!("{endpoint}: expected Error::Exporter, got a guard"),
        }
    }
    let guard = Telemetry::new()
        .endpoint(format!("http://127.0.0.1:{port}"))
        .protocol(Protocol::Grpc)
        .stderr_logs(None)
        .init()
        .unwrap();
    std::mem::forget(guard);
}
