//! The exporters, watched: a failed export is reported once (with the
//! receiver's address and the cause) and counted, and a receiver that does
//! not take metrics at all turns metrics off instead of failing every
//! export and the final flush. The span processor is counted too, so that
//! spans dropped at a full queue, which never reach the exporter, are told
//! as well.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;

/// What happened to one signal's exports: shared by its exporter and the
/// guard, which tells at shutdown what was dropped.
#[derive(Debug)]
pub(crate) struct ExportState {
    /// `traces` or `metrics`.
    signal: &'static str,
    /// Where the exports go, as the user would recognise it.
    url: String,
    /// How long one export may take.
    timeout: Duration,
    /// The variable that sets it, named where it ran out.
    timeout_var: &'static str,
    warned: AtomicBool,
    refused: AtomicBool,
    /// Spans (traces) or metric exports (metrics) that never arrived, since
    /// the guard last said so.
    dropped: AtomicU64,
    /// Why, since the guard last said so.
    cause: Mutex<Option<String>>,
    /// Spans ended, as the span processor was given them.
    ended: AtomicU64,
    /// Spans whose export has ended, delivered or not.
    handed: AtomicU64,
    /// Spans dropped at the full queue that the guard has told already.
    queue_told: AtomicU64,
    /// The export under way, if any, and whether the exporter was shut
    /// down; `settled` is told of each change.
    busy: Mutex<Busy>,
    settled: Condvar,
    /// What the HTTP client last found wrong with the network, which the
    /// exporter's message (`network error`) leaves out.
    transport: Mutex<Option<String>>,
}

/// The exports under way, as [`ExportState::begin_export`] and
/// [`ExportState::end_export`] tell them.
#[derive(Debug, Default)]
struct Busy {
    exports: u32,
    /// When the export under way must end, retries included.
    deadline: Option<Instant>,
    /// The exporter has been shut down (after its last export).
    closed: bool,
}

impl ExportState {
    /// `url` is shown with any userinfo (credentials) hidden.
    pub(crate) fn new(
        signal: &'static str,
        url: &str,
        (timeout, timeout_var): (Duration, &'static str),
    ) -> Arc<Self> {
        Arc::new(ExportState {
            signal,
            url: redacted(url),
            timeout,
            timeout_var,
            warned: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            cause: Mutex::new(None),
            ended: AtomicU64::new(0),
            handed: AtomicU64::new(0),
            queue_told: AtomicU64::new(0),
            busy: Mutex::new(Busy::default()),
            settled: Condvar::new(),
            transport: Mutex::new(None),
        })
    }

    /// An export begins: it must end within the timeout.
    fn begin_export(&self) {
        if let Ok(mut t) = self.transport.lock() {
            *t = None;
        }
        if let Ok(mut busy) = self.busy.lock() {
            busy.exports += 1;
            busy.deadline = Instant::now().checked_add(self.timeout);
        }
    }

    /// The export has ended, and what it lost is counted.
    fn end_export(&self) {
        if let Ok(mut busy) = self.busy.lock() {
            busy.exports = busy.exports.saturating_sub(1);
            if busy.exports == 0 {
                busy.deadline = None;
            }
        }
        self.settled.notify_all();
    }

    /// The exporter was shut down: its last export has ended.
    fn close(&self) {
        if let Ok(mut busy) = self.busy.lock() {
            busy.closed = true;
        }
        self.settled.notify_all();
    }

    /// When the export under way must end (`None`: none is under way, or
    /// its timeout is beyond what a clock can say).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.busy.lock().ok().and_then(|b| b.deadline)
    }

    /// What the HTTP client found wrong with the network, for the cause of
    /// the export's failure.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn transport_failed(&self, cause: String) {
        if let Ok(mut t) = self.transport.lock() {
            *t = Some(cause);
        }
    }

    /// Waits, until `until` at most (`None`: for as long as it takes),
    /// for the exporter to have been shut down: `false` if it was not by
    /// then.
    pub(crate) fn wait_closed(&self, until: Option<Instant>) -> bool {
        self.wait_for(until, |busy, _| busy.closed)
    }

    /// Waits, until `until` at most, for no export to be under way and the
    /// `ended` spans to have gone through an export (never true for
    /// metrics, whose `ended` is `None`: then only for no export to be
    /// under way): `false` if that was not so by then.
    pub(crate) fn wait_settled(&self, until: Option<Instant>, ended: Option<u64>) -> bool {
        self.wait_for(until, |busy, state| {
            busy.exports == 0
                && ended.is_none_or(|ended| state.handed.load(Ordering::SeqCst) >= ended)
        })
    }

    fn wait_for(&self, until: Option<Instant>, done: impl Fn(&Busy, &Self) -> bool) -> bool {
        let Ok(mut busy) = self.busy.lock() else {
            return false;
        };
        loop {
            if done(&busy, self) {
                return true;
            }
            let wait = match until {
                None => Duration::from_secs(3600),
                Some(until) => match until.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return false,
                },
            };
            busy = match self.settled.wait_timeout(busy, wait) {
                Ok((busy, _)) => busy,
                Err(_) => return false,
            };
        }
    }

    /// How many spans have ended so far.
    pub(crate) fn ended(&self) -> u64 {
        self.ended.load(Ordering::SeqCst)
    }

    /// How long one export may take.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// What was lost since the last call, for the guard's report: `None`
    /// when nothing was. `ended` is [`ended`](Self::ended) read before the
    /// flush, once the flush has settled what happened to those spans (it
    /// did not time out), or at a shutdown; the spans among them that
    /// never reached the exporter were dropped. Spans ended during the
    /// flush may have been exported by it, so this never counts too many.
    ///
    /// `settled`: the flush or shutdown ended in time, so those spans were
    /// dropped at the full queue. When a shutdown did not, they were still
    /// queued, or in an export, when it stopped waiting.
    pub(crate) fn take_dropped(&self, ended: Option<u64>, settled: bool) -> Option<String> {
        let failed = self.dropped.swap(0, Ordering::SeqCst);
        let cause = self
            .cause
            .lock()
            .map(|mut c| c.take().unwrap_or_default())
            .unwrap_or_default();
        let at_queue = ended.map_or(0, |ended| {
            let lost = ended.saturating_sub(self.handed.load(Ordering::SeqCst));
            lost.saturating_sub(self.queue_told.fetch_max(lost, Ordering::SeqCst))
        });
        let (signal, url) = (self.signal, &self.url);
        let queue = if settled {
            format!("at the full span queue ({QUEUE_HINT})")
        } else {
            "not yet sent when the wait for the export ended".to_owned()
        };
        match (failed, at_queue) {
            (0, 0) => None,
            (n, 0) => Some(format!(
                "{signal}: dropped {} that {url} could not take: {cause}",
                self.count(n)
            )),
            (0, q) => Some(format!(
                "{signal}: dropped {} {queue} before they could go to {url}",
                self.count(q)
            )),
            (n, q) => Some(format!(
                "{signal}: dropped {} for {url}: {n} that it could not take ({cause}) and {q} {queue}",
                self.count(n + q)
            )),
        }
    }

    /// `n` spans or metrics exports, in words.
    fn count(&self, n: u64) -> String {
        match (self.signal, n) {
            ("traces", 1) => "1 span".to_owned(),
            ("traces", n) => format!("{n} spans"),
            (_, 1) => "1 metrics export".to_owned(),
            (_, n) => format!("{n} metrics exports"),
        }
    }

    /// `traces` or `metrics`.
    pub(crate) fn signal(&self) -> &'static str {
        self.signal
    }

    /// Whether the receiver said it does not take this signal at all.
    pub(crate) fn refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    /// An export that failed after `took`, losing `lost` spans (or one
    /// metrics export).
    fn failed(&self, lost: u64, error: &OTelSdkError, took: Duration) {
        // The first failure since the guard last reported gives the cause.
        let first = self.cause.lock().map(|c| c.is_none()).unwrap_or(false);
        let warn = !self.warned.swap(true, Ordering::Relaxed);
        if first || warn {
            let cause = self.cause_of(error, took);
            if warn {
                tracing::warn!(
                    target: "snakepit_telemetry",
                    "cannot export {} to {}: {cause} (reported once until an export succeeds again; what fails to export is dropped)",
                    self.signal,
                    self.url,
                );
            }
            if let Ok(mut c) = self.cause.lock() {
                c.get_or_insert(cause);
            }
        }
        self.dropped.fetch_add(lost, Ordering::SeqCst);
    }

    /// An export that succeeded: after failures that were warned of, the
    /// log says exports work again, and the next failure (another outage)
    /// is warned of again. What was dropped meanwhile is still counted for
    /// the next flush.
    fn succeeded(&self) {
        if self.warned.swap(false, Ordering::Relaxed) {
            tracing::info!(
                target: "snakepit_telemetry",
                "exporting {} to {} again (what failed before was dropped; the next flush or shutdown says how much)",
                self.signal,
                self.url,
            );
        }
    }

    /// The exporter's message, and for a network error (which the HTTP
    /// exporter reports without its cause) what connecting says, or, when
    /// the receiver takes connections and the export lasted its whole
    /// timeout, that no answer came in time.
    fn cause_of(&self, error: &OTelSdkError, took: Duration) -> String {
        let message = sdk_message(error);
        let transport = self.transport.lock().ok().and_then(|mut t| t.take());
        if let (true, Some(cause)) = (message.contains("network error"), transport) {
            return format!("{message}: {cause}");
        }
        if message.contains("network error") {
            // An export that took its whole timeout had no answer: no probe
            // of the address then (up to 500 ms more), which would record
            // the failure after a shutdown waiting for it had given up.
            if took >= self.timeout {
                return self.no_answer(&message);
            }
            if let Some(e) = connect_error(&self.url) {
                return format!("{message}: {e}");
            }
        } else if took >= self.timeout && grpc_timed_out(&message) {
            return self.no_answer(&message);
        }
        message
    }

    /// `message`, saying that the export lasted its whole timeout.
    fn no_answer(&self, message: &str) -> String {
        format!("{message}: {}", self.no_answer_in_time())
    }

    /// What a warning says of an export that got no answer in time: the
    /// time limit and the variable that sets it.
    pub(crate) fn no_answer_in_time(&self) -> String {
        format!(
            "no answer within the export timeout ({:?}, {})",
            self.timeout, self.timeout_var
        )
    }

    fn refuse(&self, error: &OTelSdkError) {
        if self.refused.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::warn!(
            target: "snakepit_telemetry",
            "{} does not take {} ({}): {} export is off from now on",
            self.url,
            self.signal,
            sdk_message(error),
            self.signal,
        );
    }
}

/// Whether a gRPC export's error is its deadline passing: tonic's
/// `Timeout expired` (as `Cancelled`), or `DeadlineExceeded`. (The HTTP
/// exporter says only `network error`.)
fn grpc_timed_out(message: &str) -> bool {
    message.contains("Timeout expired") || message.contains("DeadlineExceeded")
}

fn sdk_message(error: &OTelSdkError) -> String {
    match error {
        OTelSdkError::InternalFailure(m) => m.clone(),
        other => other.to_string(),
    }
}

/// Whether an export error says that the receiver does not serve the
/// signal at all: HTTP 404 or 405, gRPC `Unimplemented`.
pub(crate) fn is_refusal(error: &OTelSdkError) -> bool {
    let OTelSdkError::InternalFailure(m) = error else {
        return false;
    };
    m.ends_with("status code: 404")
        || m.ends_with("status code: 405")
        || m.contains("gRPC code: Unimplemented")
}

/// Connects once to `url`'s host and port, for the error the OS gives.
fn connect_error(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let default_port = if url.starts_with("https") { 443 } else { 80 };
    let addr = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    let addrs = match addr.to_socket_addrs() {
        Ok(a) => a,
        Err(e) => return Some(format!("cannot resolve {addr}: {e}")),
    };
    let mut last = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, Duration::from_millis(500)) {
            Ok(_) => return None,
            Err(e) => last = Some(e.to_string()),
        }
    }
    last
}

/// An exporter that reports its failures to `state`: as a span exporter,
/// each failure; as a metric exporter, also a refusal, after which it stops
/// for good (the receiver does not take metrics).
#[derive(Debug)]
pub(crate) struct Watched<E> {
    pub(crate) inner: E,
    pub(crate) state: Arc<ExportState>,
}

impl<E: SpanExporter> SpanExporter for Watched<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let start = Instant::now();
        self.state.begin_export();
        let result = self.inner.export(batch).await;
        // Counted once the export has ended: a shutdown that stops waiting
        // during one counts its spans among those never sent.
        self.state.handed.fetch_add(n, Ordering::SeqCst);
        match &result {
            Err(e) => self.state.failed(n, e, start.elapsed()),
            Ok(()) => self.state.succeeded(),
        }
        self.state.end_export();
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.inner.shutdown_with_timeout(timeout);
        self.state.close();
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

impl<E: PushMetricExporter> PushMetricExporter for Watched<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        if self.state.refused() {
            return Ok(());
        }
        let start = Instant::now();
        self.state.begin_export();
        let result = match self.inner.export(metrics).await {
            Err(e) if is_refusal(&e) => {
                self.state.refuse(&e);
                Ok(())
            }
            Err(e) => {
                self.state.failed(1, &e, start.elapsed());
                Err(e)
            }
            Ok(()) => {
                self.state.succeeded();
                Ok(())
            }
        };
        self.state.end_export();
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.inner.shutdown_with_timeout(timeout);
        self.state.close();
        result
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// `url` with the userinfo of its authority (`user:password@`), which
/// may hold credentials, shown as `***@`: the form every message of this
/// crate gives an endpoint in. A userinfo holding an unescaped `/`, `?`
/// or `#` (a base64 token's `/`, say) ends the authority early, leaving
/// the rest of it and its `@` in the path: that is hidden too (see
/// [`userinfo_at`]). Control characters (a line break in the fragment,
/// which the request drops) are escaped, so that a log line stays one
/// line.
pub(crate) fn redacted(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let shown = match (userinfo_at(rest), scheme) {
        (None, _) => url.to_owned(),
        (Some((at, _)), Some(scheme)) => format!("{scheme}://***@{}", &rest[at + 1..]),
        (Some((at, _)), None) => format!("***@{}", &rest[at + 1..]),
    };
    if !shown.contains(char::is_control) {
        return shown;
    }
    shown
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// What keeps `url` from naming its receiver, if anything: a user name
/// or password with an unescaped `/`, `?` or `#`, which ends the
/// authority early (see [`userinfo_at`]) and would send the request
/// elsewhere, the rest of the secret in its path; or a port that is not
/// one (`h:43l8`, `h:99999`), which the request would leave for port 80.
pub(crate) fn endpoint_problem(url: &str) -> Option<&'static str> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    if userinfo_at(rest).is_some_and(|(_, past)| past) {
        return Some(
            "its user name or password is cut short by an unescaped `/`, `?` or `#` \
             (percent-encode them: %2F, %3F, %23)",
        );
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    (!well_formed(host)).then_some("it is not a host with, if any, a port from 0 to 65535")
}

/// Where the userinfo of `rest` (a URL after its `scheme://`) ends: the
/// index of its last `@`, and whether that `@` is past the authority. An
/// `@` counts in the authority; past it, in the path when the authority
/// looks whole (`host` or `host:port`: `http://to/ken@h` is the user name
/// `to/ken`), and anywhere when it is malformed (`http://u:pa?ss@h`,
/// whose port would be `pa`). An `@` in the query of a whole authority
/// (`?mail=a@b`) is no userinfo.
fn userinfo_at(rest: &str) -> Option<(usize, bool)> {
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if let Some(at) = authority.rfind('@') {
        return Some((at, false));
    }
    let reach = if well_formed(authority) {
        rest.find(['?', '#']).unwrap_or(rest.len())
    } else {
        rest.len()
    };
    rest[..reach].rfind('@').map(|at| (at, true))
}

/// Whether `authority` (without userinfo) is a host with, if any, a port
/// of digits that fits in 16 bits: `h`, `h:4318`, `[::1]`, `[::1]:4317`.
fn well_formed(authority: &str) -> bool {
    let port = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((_, "")) => return true,
            Some((_, after)) => match after.strip_prefix(':') {
                Some(port) => port,
                None => return false,
            },
            None => return false,
        },
        None => match authority.split_once(':') {
            Some((_, port)) => port,
            None => return true,
        },
    };
    port.bytes().all(|b| b.is_ascii_digit()) && (port.is_empty() || port.parse::<u16>().is_ok())
}

/// Where the span queue's size is set, for messages.
const QUEUE_HINT: &str = "OTEL_BSP_MAX_QUEUE_SIZE";

/// A span processor that counts the spans it is given, for
/// [`ExportState::take_dropped`].
#[derive(Debug)]
pub(crate) struct Counted<P> {
    pub(crate) inner: P,
    pub(crate) state: Arc<ExportState>,
}

impl<P: SpanProcessor> SpanProcessor for Counted<P> {
    fn on_start(&self, span: &mut Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.inner.on_end(span);
        // After the queue has it: a flush that starts after this count
        // finds the span in the queue, unless it was dropped there.
        self.state.ended.fetch_add(1, Ordering::SeqCst);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {

    /// A line break or another control character in an endpoint is
    /// escaped in every message that shows it; credentials stay hidden.
    #[test]
    fn control_characters_in_an_endpoint_are_escaped_where_it_is_shown() {
        assert_eq!(
            redacted("http://u:secret@h:4318/v1#a\nwarning: forged"),
            "http://***@h:4318/v1#a\\nwarning: forged"
        );
        assert_eq!(
            redacted("http://h:4318/\x1b[2J"),
            "http://h:4318/\\u{1b}[2J"
        );
        assert_eq!(
            redacted("http://h:4318/v1/traces"),
            "http://h:4318/v1/traces"
        );
    }
    use super::*;

    #[test]
    fn refusals_are_404_405_and_unimplemented_only() {
        let f = |m: &str| OTelSdkError::InternalFailure(m.into());
        assert!(is_refusal(&f("HTTP export failed with status code: 405")));
        assert!(is_refusal(&f("HTTP export failed with status code: 404")));
        assert!(is_refusal(&f(
            "TonicMetricsClient export failed with gRPC code: Unimplemented"
        )));
        assert!(!is_refusal(&f("HTTP export failed with status code: 503")));
        assert!(!is_refusal(&f("HTTP export failed: network error")));
        assert!(!is_refusal(&OTelSdkError::Timeout(Duration::from_secs(1))));
    }

    #[test]
    fn userinfo_is_hidden_and_nothing_else() {
        assert_eq!(
            redacted("http://user:secret@h:4318/v1/traces?x=1"),
            "http://***@h:4318/v1/traces?x=1"
        );
        assert_eq!(redacted("http://token@[::1]:4317"), "http://***@[::1]:4317");
        assert_eq!(redacted("http://a:b@c@h"), "http://***@h");
        assert_eq!(
            redacted("http://h:4318/v1/traces?u=a@b"),
            "http://h:4318/v1/traces?u=a@b"
        );
    }

    #[test]
    fn a_userinfo_cut_short_by_a_delimiter_is_hidden_whole() {
        assert_eq!(
            redacted("http://u:pa/ss@h:4318/v1/traces"),
            "http://***@h:4318/v1/traces"
        );
        assert_eq!(
            redacted("http://u:pa/v1/traces?ss@h:4318"),
            "http://***@h:4318"
        );
        assert_eq!(redacted("http://to/ken@h:4318"), "http://***@h:4318");
        assert_eq!(redacted("http://[::1]:1/a@h"), "http://***@h");
        assert!(endpoint_problem("http://u:pa#ss@h").is_some());
        assert!(endpoint_problem("http://to/ken@h:4318").is_some());
        assert_eq!(endpoint_problem("http://u:p@h:4318/v1/traces"), None);
        assert_eq!(endpoint_problem("http://h:4318/v1/traces?u=a@b"), None);
        assert_eq!(endpoint_problem("http://[::1]:4317"), None);
        assert_eq!(endpoint_problem("http://h:/v1/traces"), None);
    }

    #[test]
    fn a_port_that_is_not_one_is_a_problem() {
        for bad in [
            "http://h:43l8",
            "http://h:99999/x",
            "http://u:p@h:+80",
            "http://[::1]x",
        ] {
            assert!(endpoint_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn a_closed_port_names_its_cause() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        // The listener is gone: nothing listens there now.
        let e = connect_error(&format!("http://127.0.0.1:{port}/v1/traces"));
        assert!(e.as_deref().is_some_and(|e| e.contains("refused")), "{e:?}");
    }
}
