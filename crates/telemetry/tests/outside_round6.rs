//! Round 6 of the outside review of `snakepit-telemetry`, through the
//! public API only: what the earlier files leave untried.
//!
//! - `OTEL_BSP_MAX_QUEUE_SIZE=0`: a queue that can hold no span would drop
//!   every span; like the other zeros of the crate's variables (the
//!   batching delay, the export timeout, the metrics' interval) it means
//!   the default;
//! - the per-signal endpoint variables are held to the same rules as the
//!   base one: `https://` is `Error::TlsUnsupported` at `init`, another
//!   scheme `Error::Exporter`;
//! - the settings' `Debug` form never shows the endpoint's credentials;
//! - a traces-only receiver (metrics answered 405, as Arize Phoenix does)
//!   that is down when the program starts and comes up later: the outage is
//!   told by the flush during it, then spans arrive, metrics stop without an
//!   error, and the shutdown is `Ok`.
//!
//! `init` installs process-wide state and the variables are the process's,
//! so each test that calls it runs its body in a process of its own (with
//! `common::CHILD` set). Every receiver binds 127.0.0.1 and ends with the
//! test's process.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use common::{in_own_process, Receiver, CHILD};
use snakepit_telemetry::{Error, Protocol, Telemetry};

/// One span named `name`, ended at once.
fn span(name: &'static str) {
    drop(tracing::info_span!("round6", otel.name = name).entered());
}

/// One more on a counter, so that a metrics export has something to say.
fn count_one() {
    opentelemetry::global::meter("round6")
        .u64_counter("round6.count")
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

/// telemetry.md (Environment): `OTEL_BSP_MAX_QUEUE_SIZE` sets the span
/// batching's queue, 2048 by default; for the batching delay, the export
/// timeout and the metrics' interval a 0 "means the default". A queue of
/// size 0 can hold no span: the SDK's queue is then a rendezvous channel
/// that every span is dropped at. Taken as the default, the span is
/// delivered and the flush is `Ok`.
#[test]
fn a_zero_span_queue_size_means_the_default_not_every_span_dropped() {
    const NAME: &str = "a_zero_span_queue_size_means_the_default_not_every_span_dropped";
    if in_own_process(NAME, &[("OTEL_BSP_MAX_QUEUE_SIZE", "0")]).is_some() {
        return;
    }
    let up = Receiver::ok();
    let guard = http_to(&up.base()).metrics(false).init().unwrap();
    for _ in 0..3 {
        span("round6.zero.queue");
    }
    assert_eq!(guard.flush(), Ok(()), "{:?}", up.paths());
    assert!(
        up.got("/v1/traces", "round6.zero.queue"),
        "no span arrived: {:?}",
        up.paths()
    );
    assert_eq!(guard.shutdown(), Ok(()));
}

/// telemetry.md (Environment): "an `https://` endpoint is
/// `Error::TlsUnsupported` at `init` ..., one of any other scheme ...
/// `Error::Exporter` at `init`". The per-signal variables
/// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `..._METRICS_ENDPOINT`, "a full
/// URL for one signal") are endpoints too: each is refused the same way,
/// whichever signal names it, and the base endpoint beside it does not
/// hide it. A plain `http://` per-signal endpoint then installs.
#[test]
fn per_signal_endpoints_of_another_scheme_are_refused_at_init() {
    const NAME: &str = "per_signal_endpoints_of_another_scheme_are_refused_at_init";
    if std::env::var_os(CHILD).is_none() {
        in_own_process(NAME, &[]).unwrap();
        return;
    }
    let quiet = || {
        Telemetry::new()
            .stderr_logs(None)
            .protocol(Protocol::HttpProtobuf)
    };
    let up = Receiver::ok();
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", up.base());

    std::env::set_var(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "HTTPS://u:r6secret@127.0.0.1:1/v1/traces",
    );
    match quiet().init() {
        Err(Error::TlsUnsupported(shown)) => {
            assert!(!shown.contains("r6secret"), "{shown}");
        }
        other => panic!("traces over https: {:?}", other.map(|_| ())),
    }
    std::env::remove_var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");

    for scheme in ["https", "grpc", "unix"] {
        std::env::set_var(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            format!("{scheme}://127.0.0.1:1/v1/metrics"),
        );
        let got = quiet().init();
        let ok = match (scheme, &got) {
            ("https", Err(Error::TlsUnsupported(_))) => true,
            (_, Err(Error::Exporter(m))) => m.contains(&format!("{scheme}://")),
            _ => false,
        };
        assert!(ok, "metrics over {scheme}: {:?}", got.map(|_| ()));
    }

    // The same variables with plain http install, and the signals go
    // where each says.
    std::env::set_var(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        format!("{}/r6/traces", up.base()),
    );
    std::env::set_var(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        format!("{}/r6/metrics", up.base()),
    );
    let guard = quiet().init().unwrap();
    span("round6.per.signal");
    count_one();
    assert_eq!(guard.flush(), Ok(()));
    assert!(
        up.got("/r6/traces", "round6.per.signal"),
        "{:?}",
        up.paths()
    );
    assert!(up.got("/r6/metrics", "round6.count"), "{:?}", up.paths());
    assert_eq!(guard.shutdown(), Ok(()));
}

/// telemetry.md: "every message, warning and error shows the endpoint as
/// `http://***@h:4318`". The settings' `Debug` form is a message a program
/// logs as it is (`{:?}` of its configuration): it hides the credentials
/// too, wherever they are in the endpoint.
#[test]
fn the_settings_debug_form_never_shows_the_endpoints_credentials() {
    for endpoint in [
        "http://user:r6pw@collector:4318",
        "http://r6pw@collector:4318/otlp",
        "http://u:r6pw/cut@collector:4318",
    ] {
        let shown = format!("{:?}", Telemetry::new().endpoint(endpoint));
        assert!(!shown.contains("r6pw"), "{shown}");
        assert!(shown.contains("***@"), "{shown}");
        assert!(shown.contains("collector:4318"), "{shown}");
    }
}

/// What the traces-only receiver below has been sent: each request's path
/// and body.
type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A traces-only OTLP/HTTP receiver on `port` of 127.0.0.1: 200 to
/// `/v1/traces`, 405 to anything else (as Arize Phoenix answers metrics).
/// The listener thread ends with the test's process.
fn traces_only_on(port: u16) -> Seen {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("the port is free again");
    let seen: Seen = Arc::default();
    let sink = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let sink = sink.clone();
            std::thread::spawn(move || answer_traces_only(conn, &sink));
        }
    });
    seen
}

fn answer_traces_only(conn: TcpStream, seen: &Mutex<Vec<(String, Vec<u8>)>>) {
    let mut reader = BufReader::new(conn);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
        let len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = if path == "/v1/traces" {
            "200 OK"
        } else {
            "405 Method Not Allowed"
        };
        seen.lock().unwrap().push((path, body));
        let reply = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
        if reader.get_mut().write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// telemetry.md: a receiver that does not take metrics (HTTP 405: Arize
/// Phoenix) "is not an error: a warning says so once and metrics stop";
/// a failed export is warned of "once per signal and outage", and the
/// flush says what was dropped. Here the receiver is down when the program
/// starts: the flush during the outage is `Error::Flush` naming the spans;
/// once the receiver is up, the next spans arrive, its 405 to metrics
/// turns them off with no error, and the shutdown is `Ok`.
#[test]
fn a_traces_only_receiver_down_at_start_then_up_ends_ok() {
    const NAME: &str = "a_traces_only_receiver_down_at_start_then_up_ends_ok";
    if std::env::var_os(CHILD).is_none() {
        in_own_process(NAME, &[]).unwrap();
        return;
    }
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // Nothing listens on `port` now.
    let guard = http_to(&format!("http://127.0.0.1:{port}"))
        .short_lived(true)
        .init()
        .unwrap();
    span("round6.during.outage");
    count_one();
    match guard.flush() {
        Err(Error::Flush(m)) => assert!(m.contains("traces: dropped 1 span"), "{m}"),
        other => panic!("a flush during the outage: {other:?}"),
    }

    let seen = traces_only_on(port);
    span("round6.after.outage");
    count_one();
    assert_eq!(guard.flush(), Ok(()), "the receiver is up");
    let got = |text: &str, path: &str| {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(p, body)| p == path && String::from_utf8_lossy(body).contains(text))
    };
    assert!(got("round6.after.outage", "/v1/traces"));
    assert!(
        got("round6.count", "/v1/metrics"),
        "the metrics were tried once"
    );
    // Metrics are off now: more of them neither reach the receiver nor
    // fail the end.
    let metrics_tries = || {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == "/v1/metrics")
            .count()
    };
    let tried = metrics_tries();
    count_one();
    span("round6.last");
    assert_eq!(guard.shutdown(), Ok(()));
    assert!(got("round6.last", "/v1/traces"));
    assert_eq!(metrics_tries(), tried, "metrics stopped after the 405");
}

/// telemetry.md (Environment): `OTEL_BSP_SCHEDULE_DELAY` and
/// `OTEL_METRIC_EXPORT_INTERVAL` are milliseconds (5000 and 60000 by
/// default), and the crate reads its other numbers with spaces around
/// them left out (`OTEL_EXPORTER_OTLP_TIMEOUT`, the zeros of these two).
/// A value written ` 200 ` (a shell script that quoted a padded number) is
/// 200 ms as well, not the default: spans made one every 100 ms go out in
/// five span exports or more, and metrics in three exports or more, before
/// any flush, well within 20 s; with the defaults it would take 25 s and
/// three minutes.
#[test]
fn batching_delay_and_metrics_interval_with_spaces_around_are_their_number() {
    const NAME: &str = "batching_delay_and_metrics_interval_with_spaces_around_are_their_number";
    if in_own_process(
        NAME,
        &[
            ("OTEL_BSP_SCHEDULE_DELAY", " 200 "),
            ("OTEL_METRIC_EXPORT_INTERVAL", " 200\t"),
        ],
    )
    .is_some()
    {
        return;
    }
    let up = Receiver::ok();
    let guard = http_to(&up.base()).init().unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while up.requests("/v1/traces").len() < 5 || up.requests("/v1/metrics").len() < 3 {
        assert!(
            std::time::Instant::now() < until,
            "{} span exports, {} metrics exports",
            up.requests("/v1/traces").len(),
            up.requests("/v1/metrics").len(),
        );
        span("round6.padded");
        count_one();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(guard.shutdown(), Ok(()));
}

/// telemetry.md (Environment): `OTEL_TRACES_SAMPLER`,
/// `OTEL_TRACES_SAMPLER_ARG` set the sampling (`parentbased_traceidratio`
/// and `0.1`, say; always on by default), and a value nobody could mean
/// is refused or taken as unset, never obeyed as something else. A ratio
/// of `NaN` is no ratio: the SDK read it as one and then sampled nothing,
/// silently, while an argument that is not a number at all (`many`) falls
/// back to sampling everything. `NaN`, in any case, now falls back the
/// same way: the span is exported.
#[test]
fn a_sampling_ratio_that_is_not_a_number_samples_as_if_unset() {
    const NAME: &str = "a_sampling_ratio_that_is_not_a_number_samples_as_if_unset";
    if std::env::var_os(CHILD).is_none() {
        for sampler in ["traceidratio", "parentbased_traceidratio"] {
            for arg in ["NaN", "nan", "-nan"] {
                in_own_process(
                    NAME,
                    &[
                        ("OTEL_TRACES_SAMPLER", sampler),
                        ("OTEL_TRACES_SAMPLER_ARG", arg),
                    ],
                )
                .unwrap();
            }
        }
        return;
    }
    let up = Receiver::ok();
    let guard = http_to(&up.base()).metrics(false).init().unwrap();
    span("round6.nan.ratio");
    assert_eq!(guard.flush(), Ok(()));
    assert!(
        up.got("/v1/traces", "round6.nan.ratio"),
        "no span arrived: {:?}",
        up.paths()
    );
    assert_eq!(guard.shutdown(), Ok(()));
}

/// telemetry.md (Environment): with `OTEL_TRACES_SAMPLER=traceidratio`, a
/// ratio below 0 samples nothing and one above 1 everything. Ten root
/// spans are made: with `-1` none is exported (and the flush is `Ok`:
/// nothing was dropped), with `2` all ten are.
#[test]
fn sampling_ratios_out_of_range_sample_nothing_or_everything() {
    const NAME: &str = "sampling_ratios_out_of_range_sample_nothing_or_everything";
    if std::env::var_os(CHILD).is_none() {
        for arg in ["-1", "2"] {
            in_own_process(
                NAME,
                &[
                    ("OTEL_TRACES_SAMPLER", "traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", arg),
                ],
            )
            .unwrap();
        }
        return;
    }
    let everything = std::env::var("OTEL_TRACES_SAMPLER_ARG").as_deref() == Ok("2");
    let up = Receiver::ok();
    let guard = http_to(&up.base()).metrics(false).init().unwrap();
    for _ in 0..10 {
        span("round6.ratio.range");
    }
    assert_eq!(guard.flush(), Ok(()));
    let exported: usize = up
        .requests("/v1/traces")
        .iter()
        .map(|r| {
            r.body
                .windows(b"round6.ratio.range".len())
                .filter(|w| *w == b"round6.ratio.range")
                .count()
        })
        .sum();
    assert_eq!(exported, if everything { 10 } else { 0 });
    assert_eq!(guard.shutdown(), Ok(()));
}

/// `Telemetry::metrics_interval` and `OTEL_BSP_SCHEDULE_DELAY` at the
/// largest values their types hold (a program that means "only when
/// flushed"): `init` neither panics nor refuses, a flush still exports
/// the span and the metrics at once, and the shutdown is `Ok`.
#[test]
fn the_largest_intervals_leave_the_flush_and_shutdown_alone() {
    const NAME: &str = "the_largest_intervals_leave_the_flush_and_shutdown_alone";
    let max = u64::MAX.to_string();
    if in_own_process(NAME, &[("OTEL_BSP_SCHEDULE_DELAY", max.as_str())]).is_some() {
        return;
    }
    let up = Receiver::ok();
    let guard = http_to(&up.base())
        .metrics_interval(std::time::Duration::MAX)
        .init()
        .unwrap();
    span("round6.largest");
    count_one();
    assert_eq!(guard.flush(), Ok(()));
    assert!(up.got("/v1/traces", "round6.largest"), "{:?}", up.paths());
    assert!(up.got("/v1/metrics", "round6.count"), "{:?}", up.paths());
    assert_eq!(guard.shutdown(), Ok(()));
}
