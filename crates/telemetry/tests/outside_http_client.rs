//! The OTLP/HTTP exporter's own HTTP/1.1 client against a hostile
//! receiver, shown from outside: answers that are malformed, endless,
//! dripping, oversized, redirecting or throttling, and endpoints whose
//! userinfo is percent-encoded or odd. In each case the export neither
//! panics, nor outlasts its deadline (`OTEL_EXPORTER_OTLP_TIMEOUT`, the
//! whole export with its retries), nor reads an answer into memory without
//! bound, nor shows or misplaces the credentials, and what `Guard::flush`
//! says is what docs/telemetry.md promises.
//!
//! `init` installs process-wide state, so each test runs its body in a
//! process of its own (`common::in_own_process`). The receivers are std
//! `TcpListener`s on 127.0.0.1 written here; each is stopped (its threads
//! joined) when the test drops it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::in_own_process;
use snakepit_telemetry::{Error, Guard, Protocol, Telemetry};

// ------------------------------------------------------------- settings

/// The export timeout every test's process is given, in milliseconds
/// (`OTEL_EXPORTER_OTLP_TIMEOUT`): long enough for a loopback answer on a
/// loaded machine, short enough that a test waiting it out stays quick.
const TIMEOUT_MS: &str = "1500";

/// How soon a client held to the export timeout has let go of a receiver
/// that would hold it without end. Generous: the export timeout is 1.5 s,
/// and a client that ignores it is held for as long as the test lasts.
const LIVENESS: Duration = Duration::from_secs(20);

/// More than any answer the client keeps (4 MiB) plus what the loopback's
/// socket buffers take in: a client that keeps reading a flood without
/// bound reads far more than this within its export timeout.
const FLOOD_BOUND: u64 = 64 * 1024 * 1024;

/// Runs the test named `$name` again in a process of its own with the
/// export timeout set; in the parent, returns.
macro_rules! own_process {
    ($name:literal) => {
        if in_own_process($name, &[("OTEL_EXPORTER_OTLP_TIMEOUT", TIMEOUT_MS)]).is_some() {
            return;
        }
    };
}

// ------------------------------------------------------------- exporting

/// Telemetry of spans only over HTTP to `endpoint`, no stderr lines,
/// installed.
fn spans_to(endpoint: &str) -> Guard {
    Telemetry::new()
        .service_name("outside-http-client")
        .endpoint(endpoint)
        .protocol(Protocol::HttpProtobuf)
        .metrics(false)
        .stderr_logs(None)
        .init()
        .unwrap()
}

/// A span named `name`, ended at once.
fn span(name: &'static str) {
    drop(tracing::info_span!("outside", otel.name = name).entered());
}

/// Ends one span and flushes: the flush's outcome and how long it took.
fn export_one(guard: &Guard, name: &'static str) -> (Result<(), Error>, Duration) {
    span(name);
    let started = Instant::now();
    let result = guard.flush();
    (result, started.elapsed())
}

/// Exports one span that `base` takes: the flush is `Ok`.
fn delivered(guard: &Guard, base: &str, case: &str) {
    let (result, took) = export_one(guard, "delivered");
    assert!(
        result.is_ok(),
        "{case}: the receiver at {base} answered 200, yet after {took:?}: {result:?}"
    );
}

/// Exports one span that `base` does not take: the flush's `Error::Flush`
/// message, which says the span was dropped (so the export ended, with
/// its retries, before the flush stopped waiting), and its cause, which
/// must contain `cause`.
fn dropped(guard: &Guard, base: &str, case: &str, cause: &str) -> String {
    let (result, took) = export_one(guard, "dropped");
    let msg = match result {
        Err(Error::Flush(msg)) => msg,
        other => panic!("{case} (after {took:?}): expected Error::Flush, got {other:?}"),
    };
    let said = format!("traces: dropped 1 span that {base}/v1/traces could not take: ");
    assert!(msg.starts_with(&said), "{case}: {msg}");
    assert!(msg.contains(cause), "{case}: expected {cause:?} in: {msg}");
    msg
}

/// The cause of an export whose answer the client could not read.
fn bad_answer(what: &str) -> String {
    format!("HTTP export failed: network error: the receiver's answer {what}")
}

/// The cause of an export that outlasted its timeout.
const NO_ANSWER: &str = "network error: no answer within the export timeout";

// ------------------------------------------------------------- the receiver

/// What a receiver saw of one connection.
#[derive(Debug, Clone, Default)]
struct Seen {
    /// The head (request line and headers) of its request, if one came.
    head: String,
    /// Bytes of answer written to it.
    written: u64,
    /// How long after it was accepted the client was seen to let go of
    /// it (a write failed, or a read found it closed).
    let_go: Option<Duration>,
}

/// One connection, as a receiver's script handles it.
struct Exchange {
    reader: BufReader<TcpStream>,
    stop: Arc<AtomicBool>,
    accepted: Instant,
    seen: Seen,
}

impl Exchange {
    /// Reads one request (head and body): its head, or `None` when the
    /// client closed first.
    fn request(&mut self) -> Option<String> {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return None,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => head.push_str(&line),
            }
        }
        let len = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body).ok()?;
        if self.seen.head.is_empty() {
            self.seen.head = head.clone();
        }
        Some(head)
    }

    /// Writes `bytes`: `false` once the client has let go.
    fn send(&mut self, bytes: &[u8]) -> bool {
        if self.seen.let_go.is_some() {
            return false;
        }
        match self.reader.get_mut().write_all(bytes) {
            Ok(()) => {
                self.seen.written += bytes.len() as u64;
                true
            }
            Err(_) => {
                self.seen.let_go = Some(self.accepted.elapsed());
                false
            }
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Writes `bytes` one byte every 100 ms, then `tail` again and again
    /// the same way, until the client lets go or the receiver stops.
    fn drip(&mut self, bytes: &[u8], tail: &[u8]) {
        for &b in bytes.iter().chain(tail.iter().cycle()) {
            if self.stopped() || !self.send(&[b]) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Writes `head`, then `pattern` again and again as fast as the client
    /// takes it, until it lets go, the receiver stops, or far more than
    /// [`FLOOD_BOUND`] went.
    fn flood(&mut self, head: &[u8], pattern: &[u8]) {
        let block = pattern.repeat((64 * 1024 / pattern.len()).max(1));
        if !self.send(head) {
            return;
        }
        while !self.stopped() && self.seen.written < 4 * FLOOD_BOUND {
            if !self.send(&block) {
                return;
            }
        }
    }

    /// Keeps the connection open, answering nothing more, until the client
    /// closes it or the receiver stops.
    fn hold(&mut self) {
        let _ = self
            .reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(100)));
        let mut sink = [0; 4096];
        while !self.stopped() {
            match self.reader.read(&mut sink) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break,
            }
        }
        if !self.stopped() && self.seen.let_go.is_none() {
            self.seen.let_go = Some(self.accepted.elapsed());
        }
    }
}

type Script = dyn Fn(&mut Exchange) + Send + Sync + 'static;

/// A receiver on 127.0.0.1 that runs its current script (set by
/// [`Hostile::play`]) on each connection, on a thread of its own, and
/// keeps what it saw. Dropping it stops it: the scripts see
/// [`Exchange::stopped`], and every thread is joined.
struct Hostile {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    script: Arc<Mutex<Arc<Script>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accepting: Option<JoinHandle<()>>,
}

impl Hostile {
    /// A receiver that reads each request and answers nothing, until its
    /// first [`play`](Hostile::play).
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let silent: Arc<Script> = Arc::new(|ex: &mut Exchange| {
            ex.request();
            ex.hold();
        });
        let script = Arc::new(Mutex::new(silent));
        let accepting = {
            let (stop, seen, threads, script) =
                (stop.clone(), seen.clone(), threads.clone(), script.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                    let (stop, seen) = (stop.clone(), seen.clone());
                    let script = script.lock().unwrap().clone();
                    let handle = std::thread::spawn(move || {
                        let mut exchange = Exchange {
                            reader: BufReader::new(conn),
                            stop,
                            accepted: Instant::now(),
                            seen: Seen::default(),
                        };
                        script(&mut exchange);
                        seen.lock().unwrap().push(exchange.seen);
                    });
                    threads.lock().unwrap().push(handle);
                }
            })
        };
        Hostile {
            addr,
            stop,
            script,
            seen,
            threads,
            accepting: Some(accepting),
        }
    }

    /// Runs `script` on the connections accepted from now on.
    fn play(&self, script: impl Fn(&mut Exchange) + Send + Sync + 'static) {
        *self.script.lock().unwrap() = Arc::new(script);
    }

    /// Reads each request and answers it with `answer`, then holds the
    /// connection open until the client closes it (so that only the
    /// answer's own framing can end it).
    fn answer(&self, answer: &[u8]) {
        let answer = answer.to_vec();
        self.play(move |ex| {
            if ex.request().is_some() {
                ex.send(&answer);
                ex.hold();
            }
        });
    }

    /// Its base URL, `http://127.0.0.1:<port>`.
    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its base URL with `userinfo@` before the host.
    fn base_with(&self, userinfo: &str) -> String {
        format!("http://{userinfo}@{}", self.addr)
    }

    /// What it saw of the connections since the last call, once their
    /// scripts have ended, waiting for them [`LIVENESS`] at most: a
    /// connection still held then is told as one the client never let go
    /// of.
    fn drain(&self) -> Vec<Seen> {
        let until = Instant::now() + LIVENESS;
        loop {
            let busy = self
                .threads
                .lock()
                .unwrap()
                .iter()
                .any(|t| !t.is_finished());
            if !busy || Instant::now() >= until {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut threads = self.threads.lock().unwrap();
        let (done, held): (Vec<_>, Vec<_>) = std::mem::take(&mut *threads)
            .into_iter()
            .partition(|t| t.is_finished());
        for t in done {
            let _ = t.join();
        }
        let mut seen = std::mem::take(&mut *self.seen.lock().unwrap());
        seen.extend(held.iter().map(|_| Seen::default()));
        *threads = held;
        seen
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(accepting) = self.accepting.take() {
            // Wakes the accepting thread, which then sees the flag.
            let _ = TcpStream::connect(self.addr);
            let _ = accepting.join();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap());
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Asserts that some connection came, and that the client let go of each
/// one within [`LIVENESS`] of its accept, having been sent less than
/// [`FLOOD_BOUND`].
fn let_go_of_all(seen: &[Seen], case: &str) {
    assert!(!seen.is_empty(), "{case}: no connection came");
    for s in seen {
        assert!(
            s.let_go.is_some_and(|t| t < LIVENESS),
            "{case}: the client held a connection past {LIVENESS:?}: {s:?}"
        );
        assert!(
            s.written < FLOOD_BOUND,
            "{case}: the client read without bound: {s:?}"
        );
    }
}

// ------------------------------------------------------------- status lines and headers

/// Each of `cases` (name, answer) answered by `receiver` and exported
/// through `guard`: delivered, and every connection let go of.
fn all_delivered(receiver: &Hostile, guard: &Guard, cases: &[(&str, &[u8])]) {
    for (name, answer) in cases {
        receiver.answer(answer);
        delivered(guard, &receiver.base(), name);
        let_go_of_all(&receiver.drain(), name);
    }
}

/// Each of `cases` (name, answer, cause) answered by `receiver` and
/// exported through `guard`: dropped with `cause`, and every connection
/// let go of.
fn all_dropped(receiver: &Hostile, guard: &Guard, cases: &[(&str, &[u8], &str)]) {
    for (name, answer, cause) in cases {
        receiver.answer(answer);
        dropped(guard, &receiver.base(), name, cause);
        let_go_of_all(&receiver.drain(), name);
    }
}

/// A status line without a reason phrase (`HTTP/1.1 200`, allowed by
/// RFC 9112), headers without a colon or with an empty name, and header
/// bytes that are not UTF-8 or are control characters are an answer all
/// the same: the export is delivered.
#[test]
fn odd_but_readable_heads_are_answers() {
    own_process!("odd_but_readable_heads_are_answers");
    let receiver = Hostile::start();
    let guard = spans_to(&receiver.base());
    all_delivered(
        &receiver,
        &guard,
        &[
            ("no reason", b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"),
            (
                "an empty reason",
                b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n",
            ),
            (
                "a header without a colon",
                b"HTTP/1.1 200 OK\r\nNo colon here\r\nContent-Length: 0\r\n\r\n",
            ),
            (
                "bytes that are not UTF-8",
                b"HTTP/1.1 200 \xff\xfe\r\nX-Bin\xc3: \xff\x00\x80\r\nContent-Length: 2\r\n\r\n\xff\xff",
            ),
            (
                "an empty header name and control characters",
                b"HTTP/1.1 200 OK\r\n: empty\r\nX-Ctl: \x01\x1b[31m\r\nContent-Length: 0\r\n\r\n",
            ),
        ],
    );
    guard.shutdown().unwrap();
}

/// An answer whose status line is not HTTP's is no answer: the export is
/// not counted as delivered, and nothing panics. (`SPAM 200 OK` and
/// `HTTP/2 200` were taken as a 200, and the span counted as delivered,
/// before the client checked the protocol's name.)
#[test]
fn a_status_line_that_is_not_http_is_no_answer() {
    own_process!("a_status_line_that_is_not_http_is_no_answer");
    let receiver = Hostile::start();
    let guard = spans_to(&receiver.base());
    let not_http = bad_answer("is not HTTP");
    all_dropped(
        &receiver,
        &guard,
        &[
            (
                "another protocol",
                b"SPAM 200 OK\r\nContent-Length: 0\r\n\r\n",
                &not_http,
            ),
            (
                "HTTP/2 in text",
                b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n",
                &not_http,
            ),
            ("a status of letters", b"HTTP/1.1 2OO OK\r\n\r\n", &not_http),
            (
                "a status of four digits",
                b"HTTP/1.1 2000 OK\r\n\r\n",
                &not_http,
            ),
            (
                "an empty status line",
                b"\r\nContent-Length: 0\r\n\r\n",
                &not_http,
            ),
            ("binary", b"\x00\x01\x02\xff\r\n\r\n", &not_http),
        ],
    );
    drop(guard);
}

/// Thousands of headers that fit in the head's limit (64 KiB) are read;
/// more than that, one header line without end, or interim answers
/// without end, sent as fast as the client reads, fail the export as too
/// long a head, once the client has read little more than the limit.
#[test]
fn heads_too_long_fail_the_export_without_being_read_whole() {
    own_process!("heads_too_long_fail_the_export_without_being_read_whole");
    let many = |n: usize| {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..n {
            head.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        head
    };
    let receiver = Hostile::start();
    let guard = spans_to(&receiver.base());
    let too_long = bad_answer("has a head that is too long");
    all_delivered(&receiver, &guard, &[("4000 headers", &many(4000))]);
    all_dropped(
        &receiver,
        &guard,
        &[("40000 headers", &many(40_000), &too_long)],
    );
    receiver.play(|ex| {
        if ex.request().is_some() {
            ex.flood(b"HTTP/1.1 200 OK\r\nX-Long: ", b"a");
        }
    });
    dropped(
        &guard,
        &receiver.base(),
        "an endless header line",
        &too_long,
    );
    let_go_of_all(&receiver.drain(), "an endless header line");
    // Interim answers without end, as fast as the client takes them, count
    // against the same limit: the client does not read them until the
    // deadline. (It did, all of them.)
    receiver.play(|ex| {
        if ex.request().is_some() {
            ex.flood(b"", b"HTTP/1.1 100 Continue\r\n\r\n");
        }
    });
    dropped(
        &guard,
        &receiver.base(),
        "endless interim answers",
        &too_long,
    );
    let_go_of_all(&receiver.drain(), "endless interim answers");
    drop(guard);
}

// ------------------------------------------------------------- lengths and chunks

/// A Content-Length that is negative, signed, beyond any integer, a list
/// or hexadecimal fails the export as a bad length (`+2` was read as 2); one beyond the answer
/// limit fails it as too large at once, without waiting for a body that
/// never comes.
#[test]
fn content_lengths_out_of_range_fail_the_export() {
    own_process!("content_lengths_out_of_range_fail_the_export");
    let receiver = Hostile::start();
    let guard = spans_to(&receiver.base());
    let bad = bad_answer("has a bad Content-Length");
    all_dropped(
        &receiver,
        &guard,
        &[
            (
                "negative",
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                &bad,
            ),
            (
                "beyond u64",
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999999\r\n\r\n",
                &bad,
            ),
            (
                "a list",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\nx",
                &bad,
            ),
            (
                "hexadecimal",
                b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
                &bad,
            ),
            (
                "signed",
                b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
                &bad,
            ),
            (
                "a terabyte",
                b"HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n",
                "exceeded maximum allowed 4 MiB limit",
            ),
        ],
    );
    drop(guard);
}

/// RFC 9112 (6.3): when an answer has both `Transfer-Encoding: chunked`
/// and a Content-Length, the chunked encoding decides where the body
/// ends, whichever header comes first. The receiver here keeps the
/// connection open, so a client that trusted the length would wait out
/// its timeout for bytes that never come (with the length first, it
/// did). Duplicated lengths that agree are read.
#[test]
fn chunked_encoding_beats_a_content_length_in_either_order() {
    own_process!("chunked_encoding_beats_a_content_length_in_either_order");
    let receiver = Hostile::start();
    let guard = spans_to(&receiver.base());
    all_delivered(
        &receiver,
        &guard,
        &[
            (
                "chunked, then a length",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 100\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            ),
            (
                "a length, then chunked",
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            ),
            (
                "the same length twice",
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
            ),
        ],
    );
    guard.shutdown().unwrap();
}

/// Chunk sizes that overflow, are not hexadecimal, are negative or empty
/// fail the export as a bad chunk, and so does a chunk-size line without
/// end; chunks without end fail it as too large. Sent as fast as the
/// client reads, each is given up once the client has read little more
/// than the answer limit, well within the export timeout. (The client
/// searched its whole buffer again after each read, so that an endless
/// chunk-size line kept it busy until the timeout.)
#[test]
fn malformed_or_endless_chunks_fail_the_export() {
    own_process!("malformed_or_endless_chunks_fail_the_export");
    let receiver = Hostile::start();
    let guard = spans_to(&receiver.base());
    let bad = bad_answer("has a bad chunk");
    all_dropped(
        &receiver,
        &guard,
        &[
            (
                "a size beyond u64",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\nx\r\n0\r\n\r\n",
                &bad,
            ),
            (
                "a size that is not hexadecimal",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                &bad,
            ),
            (
                "a negative size",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
                &bad,
            ),
            (
                "an empty size",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
                &bad,
            ),
            (
                "a chunk of a terabyte",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffff\r\n",
                "exceeded maximum allowed 4 MiB limit",
            ),
        ],
    );
    let too_large = "exceeded maximum allowed 4 MiB limit";
    for (name, pattern, cause) in [
        ("an endless chunk-size line", &b"0"[..], bad.as_str()),
        (
            "endless chunks",
            &b"10\r\n0123456789abcdef\r\n"[..],
            too_large,
        ),
    ] {
        receiver.play(move |ex| {
            if ex.request().is_some() {
                ex.flood(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                    pattern,
                );
            }
        });
        dropped(&guard, &receiver.base(), name, cause);
        let_go_of_all(&receiver.drain(), name);
    }
    // Four million chunks of one byte each (24 MiB on the wire): given up
    // as too large, or at the export timeout where decoding them takes
    // longer (an unoptimised build); either way within the deadline and
    // without reading them all.
    receiver.play(|ex| {
        if ex.request().is_some() {
            ex.flood(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"1\r\nx\r\n",
            );
        }
    });
    let msg = dropped(&guard, &receiver.base(), "endless one-byte chunks", "");
    assert!(
        msg.contains(too_large) || msg.contains(NO_ANSWER),
        "endless one-byte chunks: {msg}"
    );
    let_go_of_all(&receiver.drain(), "endless one-byte chunks");
    drop(guard);
}

/// An answer bigger than the limit (4 MiB), with its length or until the
/// connection closes, fails the export as too large once the client has
/// read little more than the limit, however fast it comes.
#[test]
fn answers_over_the_size_limit_are_not_read_into_memory() {
    own_process!("answers_over_the_size_limit_are_not_read_into_memory");
    let receiver = Hostile::start();
    let guard = spans_to(&receiver.base());
    for (name, head) in [
        (
            "5 MiB with its length",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5242880\r\n\r\n"[..],
        ),
        ("a body until the close", &b"HTTP/1.1 200 OK\r\n\r\n"[..]),
        ("HTTP/1.0 until the close", &b"HTTP/1.0 200 OK\r\n\r\n"[..]),
    ] {
        receiver.play(move |ex| {
            if ex.request().is_some() {
                ex.flood(head, b"0123456789abcdef");
            }
        });
        dropped(
            &guard,
            &receiver.base(),
            name,
            "exceeded maximum allowed 4 MiB limit",
        );
        let_go_of_all(&receiver.drain(), name);
    }
    drop(guard);
}

// ------------------------------------------------------------- time

/// Answers that drip one byte every 100 ms and would never end (the
/// status line, a header, a chunked body, a body until the close, and an
/// endless run of `100 Continue` interim answers) are given up at the
/// export timeout: the flush says the span was dropped for want of an
/// answer in time, and the client let go of every connection.
#[test]
fn answers_dripping_a_byte_every_100_ms_are_given_up_at_the_deadline() {
    own_process!("answers_dripping_a_byte_every_100_ms_are_given_up_at_the_deadline");
    let receiver = Hostile::start();
    let guard = spans_to(&receiver.base());
    let cases: [(&str, &'static [u8], &'static [u8]); 5] = [
        ("the status line", b"HTTP/1.1 200 OK", b" "),
        ("a header", b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a"),
        (
            "a chunked body",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"1\r\na\r\n",
        ),
        ("a body until the close", b"HTTP/1.0 200 OK\r\n\r\n", b"a"),
        (
            "100 Continue without end",
            b"",
            b"HTTP/1.1 100 Continue\r\n\r\n",
        ),
    ];
    for (name, head, tail) in cases {
        receiver.play(move |ex| {
            if ex.request().is_some() {
                ex.drip(head, tail);
            }
        });
        dropped(&guard, &receiver.base(), name, NO_ANSWER);
        let_go_of_all(&receiver.drain(), name);
    }
    // The shutdown itself, with a span to export to a receiver dripping
    // interim answers: it ends, and says the span was dropped for want of
    // an answer in time.
    receiver.play(|ex| {
        if ex.request().is_some() {
            ex.drip(b"", b"HTTP/1.1 100 Continue\r\n\r\n");
        }
    });
    span("at.shutdown");
    let msg = match guard.shutdown() {
        Err(Error::Flush(msg)) => msg,
        other => panic!("the shutdown: expected Error::Flush, got {other:?}"),
    };
    assert!(msg.contains(NO_ANSWER), "{msg}");
    let_go_of_all(&receiver.drain(), "at the shutdown");
}

/// A receiver that takes the connection but never reads the request: a
/// request bigger than the socket buffers (200 spans of 100 KB) cannot be
/// written whole, and the write is given up at the export timeout (the
/// flush says the spans were dropped for want of an answer in time). The
/// client has closed the connection by the time the receiver reads it.
#[test]
fn a_receiver_that_never_reads_the_request_cannot_hold_the_write() {
    own_process!("a_receiver_that_never_reads_the_request_cannot_hold_the_write");
    let receiver = Hostile::start();
    let release = Arc::new(AtomicBool::new(false));
    let released = release.clone();
    receiver.play(move |ex| {
        while !released.load(Ordering::SeqCst) && !ex.stopped() {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Only now is the request read: to its end, which the client's
        // close makes.
        ex.hold();
    });
    let guard = spans_to(&receiver.base());
    let big = "x".repeat(100 * 1024);
    for _ in 0..200 {
        drop(tracing::info_span!("outside", otel.name = "big", big = %big).entered());
    }
    let started = Instant::now();
    let result = guard.flush();
    let took = started.elapsed();
    release.store(true, Ordering::SeqCst);
    let msg = match result {
        Err(Error::Flush(msg)) => msg,
        other => panic!("after {took:?}: expected Error::Flush, got {other:?}"),
    };
    assert!(
        msg.starts_with(&format!(
            "traces: dropped 200 spans that {}/v1/traces could not take: ",
            receiver.base()
        )),
        "{msg}"
    );
    assert!(msg.contains(NO_ANSWER), "{msg}");
    let_go_of_all(&receiver.drain(), "a request never read");
    drop(guard);
}

/// Interim answers (`100 Continue`, and a `102` with headers) before the
/// real answer are skipped, and the real answer counts.
#[test]
fn interim_answers_before_the_real_one_are_skipped() {
    own_process!("interim_answers_before_the_real_one_are_skipped");
    let receiver = Hostile::start();
    let guard = spans_to(&receiver.base());
    all_delivered(
        &receiver,
        &guard,
        &[(
            "interim answers first",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\nX-A: b\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        )],
    );
    guard.shutdown().unwrap();
}

/// `429` and `503` asking to retry after an absurd delay (in seconds, or
/// as an HTTP date far ahead) cannot hold an export past its deadline:
/// the flush says the span was dropped with the status. A date long past
/// lets the exporter retry at once, within the same deadline.
#[test]
fn retry_after_cannot_hold_an_export_past_its_deadline() {
    own_process!("retry_after_cannot_hold_an_export_past_its_deadline");
    let receiver = Hostile::start();
    let guard = spans_to(&receiver.base());
    all_dropped(
        &receiver,
        &guard,
        &[
            (
                "429 after 10^20 s",
                b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 100000000000000000000\r\nContent-Length: 0\r\n\r\n",
                "status code: 429",
            ),
            (
                "503 after a day",
                b"HTTP/1.1 503 Unavailable\r\nRetry-After: 86400\r\nContent-Length: 0\r\n\r\n",
                "status code: 503",
            ),
            (
                "503 until the year 9999",
                b"HTTP/1.1 503 Unavailable\r\nRetry-After: Fri, 31 Dec 9999 23:59:59 GMT\r\nContent-Length: 0\r\n\r\n",
                "status code: 503",
            ),
            (
                "429 after a date long past",
                b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\nContent-Length: 0\r\n\r\n",
                "status code: 429",
            ),
        ],
    );
    drop(guard);
}

// ------------------------------------------------------------- connections

/// A connection closed in the middle of the head, or of a body with a
/// length, fails the export and says where the answer ended; an HTTP/1.0
/// answer without a length ends at the close, and is delivered.
#[test]
fn answers_cut_short_fail_and_answers_ended_by_the_close_count() {
    own_process!("answers_cut_short_fail_and_answers_ended_by_the_close_count");
    let receiver = Hostile::start();
    let guard = spans_to(&receiver.base());
    let closing = |answer: &'static [u8]| {
        move |ex: &mut Exchange| {
            if ex.request().is_some() {
                ex.send(answer);
                // Closed here: the client then sees the end.
                ex.seen.let_go = Some(ex.accepted.elapsed());
            }
        }
    };
    for (name, answer, cause) in [
        (
            "mid-head",
            &b"HTTP/1.1 200 OK\r\nContent-Le"[..],
            bad_answer("ended before its head did"),
        ),
        (
            "mid-body",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"[..],
            bad_answer("ended before its body did"),
        ),
        (
            "mid-chunk",
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"[..],
            bad_answer("ended before its body did"),
        ),
    ] {
        receiver.play(closing(answer));
        dropped(&guard, &receiver.base(), name, &cause);
        let_go_of_all(&receiver.drain(), name);
    }
    receiver.play(closing(b"HTTP/1.0 200 OK\r\n\r\nthe whole body"));
    delivered(&guard, &receiver.base(), "HTTP/1.0 without a length");
    let_go_of_all(&receiver.drain(), "HTTP/1.0 without a length");
    guard.shutdown().unwrap();
}

/// A receiver that says `Connection: keep-alive` and closes the connection
/// a moment after each answer: each export connects anew and is
/// delivered.
#[test]
fn a_receiver_closing_kept_alive_connections_gets_a_new_one_each_export() {
    own_process!("a_receiver_closing_kept_alive_connections_gets_a_new_one_each_export");
    let receiver = Hostile::start();
    receiver.play(|ex| {
        if ex.request().is_some() {
            ex.send(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=60\r\nContent-Length: 0\r\n\r\n");
            std::thread::sleep(Duration::from_millis(50));
            ex.seen.let_go = Some(ex.accepted.elapsed());
        }
    });
    let guard = spans_to(&receiver.base());
    let mut requests = 0;
    for round in 0..3 {
        delivered(&guard, &receiver.base(), &format!("export {round}"));
        let seen = receiver.drain();
        requests += seen.iter().filter(|s| !s.head.is_empty()).count();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(requests, 3, "one connection, and request, per export");
    guard.shutdown().unwrap();
}

// ------------------------------------------------------------- redirects and credentials

/// A redirect is not followed: the export fails with the status, and the
/// host it points to is never contacted, so the credentials never reach
/// it; neither the error nor any line on stderr shows them.
#[test]
fn a_redirect_is_not_followed_and_the_credentials_stay_home() {
    const NAME: &str = "a_redirect_is_not_followed_and_the_credentials_stay_home";
    if let Some(stderr) = in_own_process(NAME, &[("OTEL_EXPORTER_OTLP_TIMEOUT", TIMEOUT_MS)]) {
        assert!(!stderr.contains("hunter2"), "{stderr}");
        assert!(
            stderr.contains("cannot export traces to http://***@127.0.0.1:"),
            "{stderr}"
        );
        return;
    }
    let elsewhere = Hostile::start();
    elsewhere.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let receiver = Hostile::start();
    let guard = Telemetry::new()
        .service_name("outside-http-client")
        .endpoint(receiver.base_with("redirected:hunter2-secret"))
        .protocol(Protocol::HttpProtobuf)
        .metrics(false)
        .stderr_level(tracing::Level::TRACE)
        .init()
        .unwrap();
    let redacted = format!("http://***@{}", receiver.addr);
    for status in [301, 302, 307, 308] {
        let answer = format!(
            "HTTP/1.1 {status} Moved\r\nLocation: {}/v1/traces\r\nContent-Length: 0\r\n\r\n",
            elsewhere.base_with("redirected:hunter2-secret")
        );
        receiver.answer(answer.as_bytes());
        let msg = dropped(
            &guard,
            &redacted,
            &format!("{status}"),
            &format!("status code: {status}"),
        );
        assert!(!msg.contains("hunter2"), "{msg}");
        let seen = receiver.drain();
        let_go_of_all(&seen, "redirect");
        assert!(
            seen.iter()
                .all(|s| s.head.contains("Authorization: Basic ")),
            "{seen:?}"
        );
    }
    drop(guard);
    assert_eq!(elsewhere.drain().len(), 0, "the redirect was followed");
}

/// The `Authorization: Basic` header the receiver gets for `userinfo`,
/// with the request line and `Host` header it came with.
fn basic_auth_for(userinfo: &str) -> (Option<String>, String) {
    let receiver = Hostile::start();
    receiver.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let endpoint = format!("{}/base?k=v", receiver.base_with(userinfo));
    let guard = spans_to(&endpoint);
    delivered(&guard, &endpoint, userinfo);
    guard.shutdown().unwrap();
    let seen = receiver.drain();
    let head = seen.first().map(|s| s.head.clone()).unwrap_or_default();
    let auth = head
        .lines()
        .find_map(|l| l.strip_prefix("Authorization: Basic "))
        .map(|v| v.trim().to_owned());
    (auth, head)
}

/// RFC 7617 / RFC 3986: the userinfo is percent-decoded, and its user and
/// password (which may itself hold `:`) go base64-encoded as
/// `user:password`. The request still goes to the endpoint's path and
/// query, with the host and port as `Host`.
#[test]
fn percent_encoded_userinfo_is_decoded_into_basic_auth() {
    own_process!("percent_encoded_userinfo_is_decoded_into_basic_auth");
    // user "us er", password "p@ss:w/rd%" .
    let (auth, head) = basic_auth_for("us%20er:p%40ss:w%2Frd%25");
    // base64("us er:p@ss:w/rd%")
    assert_eq!(auth.as_deref(), Some("dXMgZXI6cEBzczp3L3JkJQ=="), "{head}");
    assert!(
        head.starts_with("POST /base/v1/traces?k=v HTTP/1.1\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nHost: 127.0.0.1:"), "{head}");
    assert!(!head.contains('@'), "{head}");
}

/// RFC 7617: a Basic credential is `user-id ":" password`; a userinfo
/// of a user name alone (`http://token@host`, an API key) is sent with an
/// empty password, `token:`, as curl and reqwest send it. (It went as
/// `token`, without the colon, which a receiver cannot decode.)
#[test]
fn a_user_name_alone_is_sent_with_an_empty_password() {
    own_process!("a_user_name_alone_is_sent_with_an_empty_password");
    let (auth, head) = basic_auth_for("api-token");
    // base64("api-token:")
    assert_eq!(auth.as_deref(), Some("YXBpLXRva2VuOg=="), "{head}");
}

/// A password with an `@` that is not percent-encoded
/// (`http://user:p@ss@host`): the userinfo runs to the last `@`, as the
/// endpoint's redaction takes it, so the whole password is sent and the
/// request goes to the host after it.
#[test]
fn a_password_with_a_bare_at_sign_is_sent_whole() {
    own_process!("a_password_with_a_bare_at_sign_is_sent_whole");
    let (auth, head) = basic_auth_for("user:p@ss");
    // base64("user:p@ss")
    assert_eq!(auth.as_deref(), Some("dXNlcjpwQHNz"), "{head}");
    assert!(head.contains("\r\nHost: 127.0.0.1:"), "{head}");
}

/// An empty userinfo (`http://@host`) holds no credentials: no
/// `Authorization` header goes.
#[test]
fn an_empty_userinfo_sends_no_credentials() {
    own_process!("an_empty_userinfo_sends_no_credentials");
    let (auth, head) = basic_auth_for("");
    assert_eq!(auth, None, "{head}");
    assert!(!head.contains("Authorization"), "{head}");
}

/// Parts of the userinfo [`credentials_run`] gives its endpoint.
const SECRETS: [&str; 3] = ["hunter2", "s%65cret", "secret-user"];

/// In the parent, runs test `name` again in a process of its own with
/// every log line on stderr (`RUST_LOG=trace`) and gives its stderr; in
/// that process, exports to an endpoint with credentials while the
/// receiver answers a 200, a 500 that echoes the credentials back in its
/// body, an answer that is not HTTP, and none in time, and gives `None`.
fn credentials_run(name: &str) -> Option<String> {
    let env = [
        ("OTEL_EXPORTER_OTLP_TIMEOUT", TIMEOUT_MS),
        ("RUST_LOG", "trace"),
    ];
    if let Some(stderr) = in_own_process(name, &env) {
        assert!(
            stderr.contains("cannot export traces to http://***@127.0.0.1:"),
            "{stderr}"
        );
        return Some(stderr);
    }
    let receiver = Hostile::start();
    let guard = Telemetry::new()
        .service_name("outside-http-client")
        .endpoint(receiver.base_with("secret-user:hunter2-s%65cret"))
        .protocol(Protocol::HttpProtobuf)
        .metrics(false)
        .stderr_level(tracing::Level::TRACE)
        .init()
        .unwrap();
    let redacted = format!("http://***@{}", receiver.addr);
    receiver.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    delivered(&guard, &redacted, "200");
    receiver.answer(
        b"HTTP/1.1 500 Oops\r\nContent-Length: 35\r\n\r\nsecret-user:hunter2-s%65cret echoed",
    );
    dropped(&guard, &redacted, "500", "status code: 500");
    receiver.answer(b"SPAM secret-user:hunter2\r\n\r\n");
    dropped(&guard, &redacted, "not HTTP", "is not HTTP");
    receiver.play(|ex| {
        ex.request();
        ex.hold();
    });
    dropped(&guard, &redacted, "silent", NO_ANSWER);
    guard.shutdown().unwrap();
    let_go_of_all(&receiver.drain(), "credentials");
    None
}

/// telemetry.md (Environment): every message shows an endpoint with
/// credentials as `http://***@host`. The userinfo never shows on stderr,
/// at any level, whatever the receiver answers (as this crate is built
/// here, without the exporter's own debug lines: see the next test).
#[test]
fn credentials_never_show_on_stderr_at_any_level() {
    if let Some(stderr) = credentials_run("credentials_never_show_on_stderr_at_any_level") {
        for secret in SECRETS {
            assert!(!stderr.contains(secret), "{secret} shown:\n{stderr}");
        }
    }
}

/// The same with the exporter's own debug lines compiled in, as they are
/// in an application that depends on `opentelemetry-otlp` with its
/// default features (its `internal-logs`). Run it with
/// `cargo test -p snakepit-telemetry --features internal-logs --test
/// outside_http_client exporters_own_debug_lines`. The exporter
/// logs each request's URL at DEBUG (`HttpClient.NetworkError`,
/// `HttpClient.StatusError`) and a failed answer's body: it printed the
/// password when exporters.rs handed it the endpoint with its userinfo,
/// and when a receiver quoted the credentials in a refusal. It is given
/// the URL without them now (the client adds them to each request), and
/// a failed answer's body with them blanked out. Built only with the
/// crate's `internal-logs` feature, since without it the exporter's debug
/// lines are not compiled in (the unit tests of `take_userinfo` and
/// `blank_out` run in every build); CI runs it in a build with that
/// feature (`cargo xtask ci`).
#[test]
#[cfg(feature = "internal-logs")]
fn credentials_never_show_in_the_exporters_own_debug_lines() {
    if let Some(stderr) = credentials_run("credentials_never_show_in_the_exporters_own_debug_lines")
    {
        assert!(
            stderr.contains("opentelemetry-otlp: name=\"HttpClient."),
            "the exporter's debug lines are not compiled in: run with \
             --features internal-logs\n{stderr}"
        );
        for secret in SECRETS {
            assert!(!stderr.contains(secret), "{secret} shown:\n{stderr}");
        }
    }
}

/// An endpoint given by host name (`localhost`) is resolved, connected to
/// (on whichever of its addresses the receiver listens), and named as it
/// was given in the `Host` header.
#[test]
fn a_host_name_endpoint_is_resolved_and_named_in_the_host_header() {
    own_process!("a_host_name_endpoint_is_resolved_and_named_in_the_host_header");
    let receiver = Hostile::start();
    receiver.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    let endpoint = format!("http://localhost:{}", receiver.addr.port());
    let guard = spans_to(&endpoint);
    delivered(&guard, &endpoint, "localhost");
    guard.shutdown().unwrap();
    let seen = receiver.drain();
    let_go_of_all(&seen, "localhost");
    let host = format!("\r\nHost: localhost:{}\r\n", receiver.addr.port());
    assert!(seen.iter().any(|s| s.head.contains(&host)), "{seen:?}");
}

/// telemetry.md: a short-lived program's end costs at most half as long
/// again as its 1 s export. Traces and metrics both go to a receiver that
/// drips interim answers without end: the shutdown says both were
/// dropped for want of an answer in time, so both exports had ended by
/// the time it stopped waiting, and the client let go of every
/// connection.
#[test]
fn a_short_lived_end_outlasts_no_dripping_receiver() {
    const NAME: &str = "a_short_lived_end_outlasts_no_dripping_receiver";
    if in_own_process(NAME, &[]).is_some() {
        return;
    }
    let receiver = Hostile::start();
    receiver.play(|ex| {
        if ex.request().is_some() {
            ex.drip(b"", b"HTTP/1.1 100 Continue\r\n\r\n");
        }
    });
    let guard = Telemetry::new()
        .service_name("outside-http-client")
        .endpoint(receiver.base())
        .protocol(Protocol::HttpProtobuf)
        .short_lived(true)
        .stderr_logs(None)
        .init()
        .unwrap();
    span("short.lived");
    opentelemetry::global::meter("outside-http-client")
        .u64_counter("outside.count")
        .build()
        .add(1, &[]);
    let msg = match guard.shutdown() {
        Err(Error::Flush(msg)) => msg,
        other => panic!("expected Error::Flush, got {other:?}"),
    };
    let base = receiver.base();
    for signal in [
        format!("traces: dropped 1 span that {base}/v1/traces could not take: "),
        format!("metrics: dropped 1 metrics export that {base}/v1/metrics could not take: "),
    ] {
        assert!(msg.contains(&signal), "{signal} missing: {msg}");
    }
    assert_eq!(msg.matches(NO_ANSWER).count(), 2, "{msg}");
    let_go_of_all(&receiver.drain(), "short-lived");
}
