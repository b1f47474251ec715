//! OTLP export under the faults an operator hits, shown from outside:
//! a receiver that takes the connection and never answers while the
//! export timeout is above the SDK's own fixed waits, one that answers
//! slowly with a retryable status, many spans held by a silent receiver
//! at the end of a short-lived program, an IPv6 literal endpoint, and
//! `OTEL_*` variables at odd values.
//!
//! `init` installs process-wide state, so each test runs its body in a
//! process of its own (`common::in_own_process`). The receivers are tiny
//! std `TcpListener`s on the loopback written here (or `common::Receiver`),
//! whose threads end with the test's process.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{in_own_process, Answer, Receiver};
use snakepit_telemetry::{Error, Guard, Protocol, Telemetry};

// ------------------------------------------------------------- helpers

/// A span named `name`, ended at once.
fn span(name: &'static str) {
    drop(tracing::info_span!("faults", otel.name = name).entered());
}

/// One more on a counter, so that a metrics export has something to say.
fn count_one() {
    opentelemetry::global::meter("export-faults")
        .u64_counter("export.faults.count")
        .build()
        .add(1, &[]);
}

/// The `Error::Flush` message of `result`, or a panic saying what came.
fn flush_error(result: Result<(), Error>, when: &str, took: Duration) -> String {
    match result {
        Err(Error::Flush(msg)) => msg,
        other => panic!("{when} (after {took:?}): expected Error::Flush, got {other:?}"),
    }
}

/// Runs `f` and says how long it took.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let started = Instant::now();
    let out = f();
    (out, started.elapsed())
}

/// Telemetry over HTTP to `base`, no stderr lines.
fn http_to(base: &str) -> Telemetry {
    Telemetry::new()
        .service_name("export-faults")
        .endpoint(base)
        .protocol(Protocol::HttpProtobuf)
        .stderr_logs(None)
}

/// Telemetry of spans only over HTTP to `base`, installed.
fn spans_to(base: &str) -> Guard {
    http_to(base).metrics(false).init().unwrap()
}

/// Telemetry of spans only over HTTP to `base`, for a short-lived
/// program, installed.
fn short_lived_spans_to(base: &str) -> Guard {
    http_to(base)
        .metrics(false)
        .short_lived(true)
        .init()
        .unwrap()
}

/// Shuts `guard` down: the `Error::Flush` message and how long it took.
fn shutdown_error(guard: Guard, when: &str) -> (String, Duration) {
    let (shut, took) = timed(|| guard.shutdown());
    (flush_error(shut, when, took), took)
}

/// What a flush or shutdown says of one span `base` did not take.
fn span_dropped(base: &str) -> String {
    format!("traces: dropped 1 span that {base}/v1/traces could not take")
}

/// What a flush or shutdown says of one span `base` did not take because
/// it could not be reached.
fn network_error(base: &str) -> String {
    format!("{}: HTTP export failed: network error", span_dropped(base))
}

/// What a flush or shutdown says of one metrics export `base` did not take.
fn metrics_dropped(base: &str) -> String {
    format!("metrics: dropped 1 metrics export that {base}/v1/metrics could not take")
}

/// The most a short-lived end may take: the promised 1.5 s, with slack.
const SHORT_LIVED_END: Duration = Duration::from_millis(3500);

/// A listener on a free loopback port, and its base URL.
fn listening() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = base_of(&listener);
    (listener, base)
}

/// The base URL of `listener`.
fn base_of(listener: &TcpListener) -> String {
    format!("http://{}", listener.local_addr().unwrap())
}

/// Hands each connection `listener` accepts to `handle` on a thread of its
/// own; the threads live as long as the process.
fn serve_each(
    listener: TcpListener,
    handle: impl Fn(BufReader<TcpStream>) + Clone + Send + 'static,
) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let handle = handle.clone();
            std::thread::spawn(move || handle(BufReader::new(conn)));
        }
    });
}

/// Reads the next request on `reader`: its head (request line and
/// headers) and body; `None` once the connection is closed or broken.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>)> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some((head, body))
}

/// A receiver on `listener` that answers 200 to every request, handing
/// each one's head and body to `keep` first.
fn answer_ok_keeping(
    listener: TcpListener,
    keep: impl Fn(String, Vec<u8>) + Clone + Send + 'static,
) {
    serve_each(listener, move |mut reader| {
        while let Some((head, body)) = read_request(&mut reader) {
            keep(head, body);
            let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
            if reader.get_mut().write_all(ok).is_err() {
                return;
            }
        }
    });
}

/// What a scripted receiver does with the `n`th request (from 0).
#[derive(Clone, Copy)]
enum Step {
    /// Wait this long, then answer with this status (no `Retry-After`).
    After(Duration, u16),
    /// Hold the connection and never answer.
    Hold,
    /// A 200 promising a megabyte of body, sent a byte every 200 ms.
    Trickle,
}

/// A receiver on `listener` that answers the `n`th request as `script(n)`
/// says, counting the requests; its threads live as long as the process.
fn scripted(listener: TcpListener, script: fn(usize) -> Step) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    serve_each(listener, move |reader| answer_each(reader, &seen, script));
    count
}

/// Reads each request on `reader` and answers as `script` says.
fn answer_each(mut reader: BufReader<TcpStream>, seen: &AtomicUsize, script: fn(usize) -> Step) {
    while read_request(&mut reader).is_some() {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        match script(n) {
            Step::After(wait, status) => {
                std::thread::sleep(wait);
                let reply =
                    format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n").into_bytes();
                if reader.get_mut().write_all(&reply).is_err() {
                    return;
                }
            }
            Step::Hold => {
                // Held until the client gives up and closes it.
                let _ = reader.read(&mut [0; 1]);
                return;
            }
            Step::Trickle => {
                let conn = reader.get_mut();
                let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n";
                if conn.write_all(head).is_err() {
                    return;
                }
                // Until the client gives up and closes the connection.
                while conn.write_all(b"x").is_ok() {
                    std::thread::sleep(Duration::from_millis(200));
                }
                return;
            }
        }
    }
}

// ------------------------------------------- waits longer than the SDK's

/// An export timeout above the 5 s the SDK waits on its own for a metrics
/// shutdown and for a span flush, in ms.
const LONG_TIMEOUT_MS: &str = "6000";

/// telemetry.md: "what could not be delivered is dropped, and
/// `Guard::flush` and `Guard::shutdown` return `Error::Flush` saying how
/// many spans (or metrics exports) were dropped since the last flush,
/// where to, and why. ... `Guard::shutdown` waits half as long again as the
/// longest export (15 s with the default 10 s), so that it hears what the
/// export dropped"; the cause of a receiver that takes the connection but
/// does not answer is "no answer within the export timeout (10s,
/// OTEL_EXPORTER_OTLP_TIMEOUT)".
///
/// Metrics only (`OTEL_TRACES_EXPORTER=none`), a program that is not
/// short-lived, `OTEL_EXPORTER_OTLP_TIMEOUT=6000` (any timeout above 5 s,
/// the default 10 s among them), a receiver that never answers: the
/// shutdown must say that the metrics export was dropped, where to, and
/// why. (review_telemetry.rs shows it for spans, with metrics off.)
#[test]
fn a_shutdown_hears_what_a_silent_receiver_dropped_of_the_metrics() {
    const NAME: &str = "a_shutdown_hears_what_a_silent_receiver_dropped_of_the_metrics";
    if in_own_process(
        NAME,
        &[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", LONG_TIMEOUT_MS),
            ("OTEL_TRACES_EXPORTER", "none"),
        ],
    )
    .is_some()
    {
        return;
    }
    let silent = Receiver::start(|_| Answer::Silent);
    let base = silent.base();
    let guard = http_to(&base).init().unwrap();
    count_one();
    let (msg, took) = shutdown_error(guard, "the shutdown");
    assert!(
        msg.contains(&metrics_dropped(&base)),
        "after {took:?}: {msg}"
    );
    assert!(
        msg.contains("no answer within the export timeout (6s, OTEL_EXPORTER_OTLP_TIMEOUT)"),
        "after {took:?}: {msg}"
    );
}

/// telemetry.md: "`Guard::flush` and `Guard::shutdown` return
/// `Error::Flush` saying how many spans (or metrics exports) were dropped
/// since the last flush, where to, and why", the cause of a silent
/// receiver being "no answer within the export timeout (10s,
/// OTEL_EXPORTER_OTLP_TIMEOUT)".
///
/// Spans only, a program that is not short-lived,
/// `OTEL_EXPORTER_OTLP_TIMEOUT=6000`, a receiver that never answers: the
/// flush must say the span was dropped, where to, and why. (The guard is
/// then forgotten: the process ends without waiting for a shutdown.)
#[test]
fn a_flush_says_what_a_silent_receiver_dropped_with_a_long_export_timeout() {
    const NAME: &str = "a_flush_says_what_a_silent_receiver_dropped_with_a_long_export_timeout";
    if in_own_process(NAME, &[("OTEL_EXPORTER_OTLP_TIMEOUT", LONG_TIMEOUT_MS)]).is_some() {
        return;
    }
    let silent = Receiver::start(|_| Answer::Silent);
    let base = silent.base();
    let guard = spans_to(&base);
    span("flush.never.answered");
    let (flushed, took) = timed(|| guard.flush());
    std::mem::forget(guard);
    let msg = flush_error(flushed, "the flush", took);
    assert!(msg.contains(&span_dropped(&base)), "after {took:?}: {msg}");
    assert!(
        msg.contains("no answer within the export timeout"),
        "after {took:?}: {msg}"
    );
}

/// telemetry.md: `OTEL_EXPORTER_OTLP_TIMEOUT` is "milliseconds per
/// export", and "`Guard::shutdown` waits half as long again as the longest
/// export ..., so that it hears what the export dropped", its error
/// "saying how many spans ... were dropped ..., where to, and why".
///
/// A receiver that answers slowly: the first trace export gets a 503 after
/// 600 ms (retryable, no `Retry-After`), the retry is held unanswered.
/// With the variable at 1000 ms in a program that is not short-lived, the
/// retry must share the export's 1000 ms (it was once given a whole
/// timeout of its own, and the export outlasted the 1.5 s the shutdown
/// waits), and the shutdown must say the span was dropped.
#[test]
fn a_slow_retryable_answer_cannot_hide_the_dropped_span_from_the_shutdown() {
    const NAME: &str = "a_slow_retryable_answer_cannot_hide_the_dropped_span_from_the_shutdown";
    if in_own_process(NAME, &[("OTEL_EXPORTER_OTLP_TIMEOUT", "1000")]).is_some() {
        return;
    }
    let (listener, base) = listening();
    let tries = scripted(listener, |n| match n {
        0 => Step::After(Duration::from_millis(600), 503),
        _ => Step::Hold,
    });
    let guard = spans_to(&base);
    span("slow.then.silent");
    let (msg, took) = shutdown_error(guard, "the shutdown");
    let tries = tries.load(Ordering::SeqCst);
    assert!(
        msg.contains(&span_dropped(&base)),
        "after {took:?} and {tries} tries: {msg}"
    );
}

/// A receiver whose host drops new connections (as a firewall that drops
/// packets does): a listener that never accepts, its queue of pending
/// connections (128, as std asks) filled by this process, so that a
/// further connect hangs. The listener and the held connections are
/// returned to be kept alive.
fn blackholed() -> (TcpListener, Vec<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    while let Ok(conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
        held.push(conn);
        assert!(held.len() < 10_000, "the queue never filled");
    }
    (listener, held)
}

/// telemetry.md: "`Guard::shutdown` waits half as long again as the
/// longest export ..., so that it hears what the export dropped", its
/// error "saying how many spans ... were dropped ..., where to, and why";
/// `OTEL_EXPORTER_OTLP_TIMEOUT` is "milliseconds per export".
///
/// A receiver behind a firewall that drops the packets (the connect
/// hangs), the variable at 300 ms, spans only: the export gives up after
/// 300 ms, and the shutdown, which waits 450 ms, must say the span was
/// dropped, where to and why.
#[test]
fn a_shutdown_hears_what_a_blackholed_receiver_dropped() {
    const NAME: &str = "a_shutdown_hears_what_a_blackholed_receiver_dropped";
    if in_own_process(NAME, &[("OTEL_EXPORTER_OTLP_TIMEOUT", "300")]).is_some() {
        return;
    }
    let (listener, _held) = blackholed();
    let base = base_of(&listener);
    let guard = spans_to(&base);
    span("into.the.void");
    let (msg, took) = shutdown_error(guard, "the shutdown");
    assert!(msg.contains(&network_error(&base)), "after {took:?}: {msg}");
}

/// telemetry.md (Environment): `OTEL_EXPORTER_OTLP_TIMEOUT` is
/// "milliseconds per export"; a receiver "that takes the connection but
/// does not answer in time" is given up after it; `Guard::flush` returns,
/// saying what was dropped.
///
/// A receiver that answers slowly, a byte at a time: a 200 promising a
/// megabyte of body, one byte every 200 ms. Metrics only
/// (`OTEL_TRACES_EXPORTER=none`), the variable at 1000 ms, a program that
/// is not short-lived: `Guard::flush` must return (within 8 s, far beyond
/// the one export it makes) and say the metrics export was dropped.
#[test]
fn a_receiver_trickling_its_answer_cannot_hold_a_flush() {
    const NAME: &str = "a_receiver_trickling_its_answer_cannot_hold_a_flush";
    if in_own_process(
        NAME,
        &[
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ],
    )
    .is_some()
    {
        return;
    }
    let (listener, base) = listening();
    scripted(listener, |_| Step::Trickle);
    let guard = http_to(&base).init().unwrap();
    count_one();
    let (done, flushed) = std::sync::mpsc::channel();
    let started = Instant::now();
    std::thread::spawn(move || {
        let _ = done.send(guard.flush());
        std::mem::forget(guard);
    });
    let flushed = flushed.recv_timeout(Duration::from_secs(8));
    let took = started.elapsed();
    let flushed = flushed.unwrap_or_else(|_| {
        panic!("Guard::flush had not returned after {took:?} (one export of 1 s)")
    });
    let msg = flush_error(flushed, "the flush", took);
    assert!(
        msg.contains(&metrics_dropped(&base)),
        "after {took:?}: {msg}"
    );
}

// ------------------------------------------ a receiver restarted mid-export

/// A receiver on `port` that reads the first request, then goes away
/// (connection and listener closed) and comes back on the same port
/// 50 ms later, answering 200 from then on; the bodies it took.
fn restarting(listener: TcpListener) -> Arc<Mutex<Vec<Vec<u8>>>> {
    let addr = listener.local_addr().unwrap();
    let taken = Arc::new(Mutex::new(Vec::new()));
    let sink = taken.clone();
    std::thread::spawn(move || {
        if let Ok((conn, _)) = listener.accept() {
            let _ = read_request(&mut BufReader::new(conn));
        }
        // The receiver dies with the export in hand, and restarts.
        drop(listener);
        std::thread::sleep(Duration::from_millis(50));
        let Ok(again) = TcpListener::bind(addr) else {
            return;
        };
        answer_ok_keeping(again, move |_, body| sink.lock().unwrap().push(body));
    });
    taken
}

/// telemetry.md: `.short_lived(true)` means "each export is then tried
/// once, without retries and their backoff" (so a program that is not
/// short-lived retries), and "When an export fails, a warning says so
/// ... what could not be delivered is dropped, and `Guard::flush` ...
/// return[s] `Error::Flush`" (so what is delivered is no error).
///
/// A receiver that dies with the trace export in hand (after reading it,
/// before answering) and is back on the same port 50 ms later: a program
/// that is not short-lived retries and delivers the span there, the flush
/// is `Ok`, and nothing is warned of.
#[test]
fn a_receiver_restarted_during_an_export_gets_it_on_the_retry() {
    const NAME: &str = "a_receiver_restarted_during_an_export_gets_it_on_the_retry";
    if let Some(stderr) = in_own_process(NAME, &[]) {
        assert!(!stderr.contains("cannot export"), "{stderr}");
        return;
    }
    let (listener, base) = listening();
    let taken = restarting(listener);
    let guard = Telemetry::new()
        .service_name("export-faults")
        .endpoint(&base)
        .metrics(false)
        .stderr_level(tracing::Level::WARN)
        .init()
        .unwrap();
    span("across.a.restart");
    let (flushed, took) = timed(|| guard.flush());
    let taken = taken.lock().unwrap().clone();
    assert_eq!(flushed, Ok(()), "after {took:?}");
    assert!(
        taken
            .iter()
            .any(|b| b.windows(16).any(|w| w == b"across.a.restart")),
        "the restarted receiver took the span"
    );
    assert_eq!(guard.shutdown(), Ok(()));
}

/// The same receiver and a short-lived program: "each export is then tried
/// once", so the span is dropped, and the end says so, where to and why
/// (the restarted receiver got nothing).
#[test]
fn a_short_lived_export_cut_by_a_restart_is_dropped_and_told() {
    const NAME: &str = "a_short_lived_export_cut_by_a_restart_is_dropped_and_told";
    if in_own_process(NAME, &[]).is_some() {
        return;
    }
    let (listener, base) = listening();
    let taken = restarting(listener);
    let guard = short_lived_spans_to(&base);
    span("cut.by.a.restart");
    let (msg, _) = shutdown_error(guard, "the short-lived end");
    assert!(msg.contains(&network_error(&base)), "{msg}");
    assert!(taken.lock().unwrap().is_empty(), "tried once only");
}

// ------------------------------------------------ a short-lived program

/// telemetry.md: "A receiver that takes the connection and never answers
/// costs the end at most 1.5 s: the shutdown waits half as long again as
/// the export, so that its error can say what was dropped", and
/// `Guard::shutdown` returns "`Error::Flush` saying how many spans ...
/// were dropped".
///
/// A short-lived program that ended 1,500 spans (three export batches,
/// all within the default queue of 2,048) against a receiver that never
/// answers: the end stays within its bound (asserted with slack), and its
/// error must say that all 1,500 spans were dropped, without blaming a
/// full span queue (it never was: "said apart" means said rightly).
#[test]
fn a_short_lived_end_says_how_many_spans_a_silent_receiver_held() {
    const NAME: &str = "a_short_lived_end_says_how_many_spans_a_silent_receiver_held";
    const SPANS: usize = 1500;
    if in_own_process(NAME, &[]).is_some() {
        return;
    }
    let silent = Receiver::start(|_| Answer::Silent);
    let base = silent.base();
    let guard = short_lived_spans_to(&base);
    for _ in 0..SPANS {
        span("held.by.silence");
    }
    let (msg, took) = shutdown_error(guard, "the short-lived end");
    assert!(
        took < SHORT_LIVED_END,
        "the end is promised at most 1.5 s: took {took:?}: {msg}"
    );
    assert!(
        msg.contains(&format!("dropped {SPANS} spans")),
        "all {SPANS} spans were lost; after {took:?}: {msg}"
    );
    assert!(
        !msg.contains("full span queue"),
        "the queue (2,048) never was full: {msg}"
    );
}

// ----------------------------------------------------- endpoint shapes

/// The requests a receiver took: each one's path and body.
type Taken = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An OTLP/HTTP receiver on `[::1]` that answers 200 and keeps each
/// request's path and body; `None` when this machine has no IPv6 loopback.
fn ipv6_receiver() -> Option<(u16, Taken)> {
    let listener = TcpListener::bind("[::1]:0").ok()?;
    let port = listener.local_addr().ok()?.port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    answer_ok_keeping(listener, move |head, body| {
        let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
        sink.lock().unwrap().push((path, body));
    });
    Some((port, seen))
}

/// telemetry.md (Environment): `OTEL_EXPORTER_OTLP_ENDPOINT` is "the
/// receiver's base URL; for HTTP, `/v1/traces` and `/v1/metrics` are
/// appended". A base URL with an IPv6 literal and a trailing slash
/// (`http://[::1]:PORT/`) is a URL like any other: a short-lived program
/// delivers its span and its metrics there, to the two paths, and ends
/// `Ok`.
#[test]
fn an_ipv6_literal_endpoint_with_a_trailing_slash_gets_both_signals() {
    const NAME: &str = "an_ipv6_literal_endpoint_with_a_trailing_slash_gets_both_signals";
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: no IPv6 loopback on this machine");
        return;
    }
    if in_own_process(NAME, &[]).is_some() {
        return;
    }
    let (port, seen) = ipv6_receiver().expect("an IPv6 loopback");
    let guard = http_to(&format!("http://[::1]:{port}/"))
        .short_lived(true)
        .init()
        .unwrap();
    span("over.ipv6");
    count_one();
    let (shut, took) = timed(|| guard.shutdown());
    let seen = seen.lock().unwrap().clone();
    let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(shut, Ok(()), "after {took:?}, paths {paths:?}");
    assert!(
        seen.iter()
            .any(|(p, b)| p == "/v1/traces" && b.windows(9).any(|w| w == b"over.ipv6")),
        "the span at /v1/traces: {paths:?}"
    );
    assert!(paths.contains(&"/v1/metrics"), "{paths:?}");
}

/// telemetry.md: "When an export fails, a warning says so ... with the URL
/// and the cause (`cannot export traces to
/// http://localhost:4318/v1/traces: HTTP export failed: network error:
/// Connection refused`)", and `Guard::shutdown`'s `Error::Flush` says
/// "where to, and why". With an IPv6 literal endpoint where nothing
/// listens, the error names the URL as given and the OS's cause.
#[test]
fn an_ipv6_literal_endpoint_that_is_down_is_told_with_its_cause() {
    const NAME: &str = "an_ipv6_literal_endpoint_that_is_down_is_told_with_its_cause";
    let Ok(probe) = TcpListener::bind("[::1]:0") else {
        eprintln!("SKIPPED: no IPv6 loopback on this machine");
        return;
    };
    let port = probe.local_addr().unwrap().port().to_string();
    drop(probe);
    if in_own_process(NAME, &[("DEAD_V6_PORT", &port)]).is_some() {
        return;
    }
    let port = std::env::var("DEAD_V6_PORT").unwrap();
    let base = format!("http://[::1]:{port}");
    let guard = short_lived_spans_to(&base);
    span("over.ipv6.down");
    let (msg, _) = shutdown_error(guard, "the shutdown");
    assert!(msg.contains(&span_dropped(&base)), "{msg}");
    assert!(msg.contains("Connection refused"), "the cause: {msg}");
}

/// telemetry.md (Environment): `OTEL_EXPORTER_OTLP_ENDPOINT` is "the
/// receiver's base URL; for HTTP, `/v1/traces` and `/v1/metrics` are
/// appended" to its path, before its query. A base URL with a query
/// (`http://127.0.0.1:PORT/?x=1`, as a receiver that takes a key there
/// wants) gets `/v1/traces?x=1` and `/v1/metrics?x=1`, not `/?x=1/v1/traces`.
#[test]
fn an_endpoint_with_a_query_gets_the_signal_paths_before_it() {
    const NAME: &str = "an_endpoint_with_a_query_gets_the_signal_paths_before_it";
    if in_own_process(NAME, &[]).is_some() {
        return;
    }
    let up = Receiver::ok();
    let guard = http_to(&format!("{}/?x=1", up.base()))
        .short_lived(true)
        .init()
        .unwrap();
    span("with.a.query");
    count_one();
    let (shut, took) = timed(|| guard.shutdown());
    let paths = up.paths();
    assert_eq!(shut, Ok(()), "after {took:?}, paths {paths:?}");
    assert!(up.got("/v1/traces?x=1", "with.a.query"), "{paths:?}");
    assert!(paths.iter().any(|p| p == "/v1/metrics?x=1"), "{paths:?}");
}

/// A password nobody may read in a message.
const SECRET: &str = "s3cret-pw";

/// telemetry.md (Environment): credentials in the endpoint's userinfo
/// (`http://user:password@host:4318`) are sent as HTTP basic
/// authentication, and every message shows such an endpoint as
/// `http://***@host:4318`.
///
/// A program exporting to a receiver that answers: the receiver gets the
/// credentials (`Authorization: Basic`), and the request line carries no
/// userinfo.
#[test]
fn credentials_in_the_endpoint_reach_the_receiver_as_basic_auth() {
    const NAME: &str = "credentials_in_the_endpoint_reach_the_receiver_as_basic_auth";
    if in_own_process(NAME, &[]).is_some() {
        return;
    }
    let up = Receiver::ok();
    let base = format!("http://user:{SECRET}@127.0.0.1:{}", up.port);
    let guard = http_to(&base).short_lived(true).init().unwrap();
    span("with.credentials");
    count_one();
    assert_eq!(guard.shutdown(), Ok(()));
    let traces = up.requests("/v1/traces");
    assert!(!traces.is_empty(), "{:?}", up.paths());
    for request in up.all() {
        // base64("user:s3cret-pw")
        assert!(
            request
                .head
                .contains("Authorization: Basic dXNlcjpzM2NyZXQtcHc="),
            "{}",
            request.head
        );
    }
}

/// The same promise where things go wrong: a receiver that is down, one
/// that answers 503, one that never answers, an `https://` endpoint and
/// one that is no URL. Neither the lines on stderr (at every level,
/// `RUST_LOG=trace`), nor the errors, nor the settings' `Debug` ever show
/// the password; they show `***@` where the userinfo was.
#[test]
fn credentials_in_the_endpoint_never_show_in_a_message() {
    const NAME: &str = "credentials_in_the_endpoint_never_show_in_a_message";
    if std::env::var_os(common::CHILD).is_none() {
        let silent = Receiver::start(|_| Answer::Silent);
        let busy = Receiver::start(|_| Answer::Status(503));
        for receiver in [&silent, &busy] {
            let stderr = in_own_process(
                "credentials_in_a_faulty_receivers_endpoint",
                &[
                    ("RUST_LOG", "trace"),
                    ("OTEL_EXPORTER_OTLP_TIMEOUT", "300"),
                    ("FAULTY_BASE", &with_secret(&receiver.base())),
                ],
            )
            .unwrap();
            assert!(!stderr.contains(SECRET), "{stderr}");
            assert!(
                stderr.contains("flush: traces: dropped 1 span that http://***@127.0.0.1:"),
                "{stderr}"
            );
        }
        let stderr = in_own_process(NAME, &[("RUST_LOG", "trace")]).unwrap();
        assert!(!stderr.contains(SECRET), "{stderr}");
        assert!(
            stderr.contains("cannot export traces to http://***@127.0.0.1:"),
            "{stderr}"
        );
        return;
    }
    let mut shown = Vec::new();
    let (listener, down) = listening();
    drop(listener);
    let settings = Telemetry::new()
        .service_name("export-faults")
        .endpoint(with_secret(&down))
        .protocol(Protocol::HttpProtobuf)
        .short_lived(true)
        .stderr_level(tracing::Level::TRACE);
    shown.push(format!("{settings:?}"));
    let guard = settings.init().unwrap();
    span("to.a.closed.port");
    count_one();
    let msg = flush_error(guard.flush(), "the flush", Duration::ZERO);
    assert!(msg.contains("http://***@127.0.0.1:"), "{msg}");
    assert!(msg.contains("Connection refused"), "{msg}");
    shown.push(msg);
    shown.push(format!("{:?}", guard.shutdown()));
    for bad in [
        format!("https://user:{SECRET}@127.0.0.1:4318"),
        format!("http://user:{SECRET}@bad host:4318"),
    ] {
        match http_to(&bad).init() {
            Err(err) => shown.push(format!("{err} / {err:?}")),
            Ok(_) => panic!("{bad}: expected an error at init"),
        }
    }
    for message in &shown {
        assert!(!message.contains(SECRET), "{message}");
    }
    assert!(
        shown
            .iter()
            .any(|m| m.contains("https://***@127.0.0.1:4318")),
        "{shown:?}"
    );
}

/// `base` with `user:` and [`SECRET`] as its userinfo.
fn with_secret(base: &str) -> String {
    base.replacen("http://", &format!("http://user:{SECRET}@"), 1)
}

/// Run by `credentials_in_the_endpoint_never_show_in_a_message` in a
/// process of its own for each faulty receiver (`FAULTY_BASE`): a flush of
/// spans there fails, and its error goes to stderr with the log lines.
#[test]
fn credentials_in_a_faulty_receivers_endpoint() {
    let Ok(base) = std::env::var("FAULTY_BASE") else {
        return; // only as that test's child
    };
    let guard = http_to(&base)
        .metrics(false)
        .stderr_level(tracing::Level::TRACE)
        .init()
        .unwrap();
    span("to.a.faulty.receiver");
    let msg = flush_error(guard.flush(), "the flush", Duration::ZERO);
    // Past the test harness's capture, as the log lines are.
    let _ = writeln!(std::io::stderr(), "flush: {msg}");
    std::mem::forget(guard);
}

// --------------------------------------------------- variables, odd values

/// telemetry.md (Environment): `OTEL_EXPORTER_OTLP_TIMEOUT` is
/// "milliseconds per export", default 10000, and a short-lived program's
/// export is "given at most 1 s", its end costing "at most 1.5 s" against
/// a receiver that never answers. A value that is no number of
/// milliseconds (blank, words, negative, beyond `u64`) is not one: each
/// such program ends within the bound (with slack), and its error gives
/// the 1 s it used and the cause.
#[test]
fn odd_export_timeouts_leave_a_short_lived_end_within_its_bound() {
    const NAME: &str = "odd_export_timeouts_leave_a_short_lived_end_within_its_bound";
    if std::env::var_os(common::CHILD).is_none() {
        for odd in [
            " ",
            "ten seconds",
            "-5",
            "99999999999999999999999",
            "18446744073709551615",
        ] {
            let stderr = in_own_process(NAME, &[("OTEL_EXPORTER_OTLP_TIMEOUT", odd)]);
            assert!(stderr.is_some(), "{odd:?}");
        }
        return;
    }
    let silent = Receiver::start(|_| Answer::Silent);
    let guard = short_lived_spans_to(&silent.base());
    span("odd.timeout");
    let (msg, took) = shutdown_error(guard, "the short-lived end");
    let odd = std::env::var("OTEL_EXPORTER_OTLP_TIMEOUT").unwrap_or_default();
    assert!(
        took < SHORT_LIVED_END,
        "{odd:?}: the end is promised at most 1.5 s: took {took:?}: {msg}"
    );
    assert!(
        msg.contains("no answer within the export timeout (1s, OTEL_EXPORTER_OTLP_TIMEOUT)"),
        "{odd:?}: {msg}"
    );
}

/// telemetry.md (Environment): `OTEL_EXPORTER_OTLP_TIMEOUT` is
/// "milliseconds per export"; a short-lived export is given "at most 1 s
/// (less if `OTEL_EXPORTER_OTLP_TIMEOUT` says so)". A very large value
/// (`u64::MAX` milliseconds) does not overflow: against a receiver that
/// answers, the span and the metrics are delivered and the end is `Ok`
/// (the bound against a silent receiver is in the test above).
#[test]
fn a_huge_export_timeout_still_delivers() {
    const NAME: &str = "a_huge_export_timeout_still_delivers";
    if in_own_process(
        NAME,
        &[("OTEL_EXPORTER_OTLP_TIMEOUT", "18446744073709551615")],
    )
    .is_some()
    {
        return;
    }
    let up = Receiver::ok();
    let guard = http_to(&up.base()).short_lived(true).init().unwrap();
    end_delivers(guard, &up, "huge.timeout");
    assert!(!up.requests("/v1/metrics").is_empty());
}

/// telemetry.md (Environment): `OTEL_EXPORTER_OTLP_TIMEOUT` is
/// "milliseconds per export", and a short-lived export is given "at most
/// 1 s (less if `OTEL_EXPORTER_OTLP_TIMEOUT` says so)"; the same table
/// says of `OTEL_METRIC_EXPORT_INTERVAL` that "0 means the default". Zero
/// milliseconds per export can deliver nothing: a program exporting to a
/// receiver that answers at once must either take 0 as the default (as
/// the interval does) or refuse it at `init`. It was taken at its word,
/// and every export failed; it now means the default (telemetry.md).
#[test]
fn a_zero_export_timeout_still_delivers_or_is_refused() {
    const NAME: &str = "a_zero_export_timeout_still_delivers_or_is_refused";
    if in_own_process(NAME, &[("OTEL_EXPORTER_OTLP_TIMEOUT", "0")]).is_some() {
        return;
    }
    let up = Receiver::ok();
    let guard = match http_to(&up.base()).short_lived(true).init() {
        Ok(guard) => guard,
        Err(_) => return, // refused at init: fine
    };
    end_delivers(guard, &up, "zero.timeout");
}

/// Ends a short-lived `guard` after a span `name` and a count: the end is
/// `Ok` and the span reached `up`.
fn end_delivers(guard: Guard, up: &Receiver, name: &'static str) {
    span(name);
    count_one();
    let (shut, took) = timed(|| guard.shutdown());
    assert_eq!(shut, Ok(()), "after {took:?}");
    assert!(up.got("/v1/traces", name));
}

/// This process's CPU time (user and system, all threads).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime: fields 14 and 15 of the whole line, in clock ticks
    // (100 a second on Linux).
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// telemetry.md: "Spans are batched and exported on a background thread;
/// a receiver that is down costs the caller nothing more than the
/// batching", and the crate takes care that a zero metrics interval does
/// not "export in a tight loop" ("0 means the default"). The span batching
/// delay, `OTEL_BSP_SCHEDULE_DELAY`, at 0 must not make the exporter's
/// thread spin either: an idle program (nothing to export) must use next
/// to no CPU over two seconds.
#[test]
fn a_zero_span_batching_delay_does_not_spin() {
    const NAME: &str = "a_zero_span_batching_delay_does_not_spin";
    if in_own_process(NAME, &[("OTEL_BSP_SCHEDULE_DELAY", "0")]).is_some() {
        return;
    }
    let up = Receiver::ok();
    let guard = spans_to(&up.base());
    span("zero.delay");
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_time();
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_time() - before;
    let _ = guard.shutdown();
    assert!(
        used < Duration::from_millis(1000),
        "an idle program used {used:?} of CPU in 2 s"
    );
}
