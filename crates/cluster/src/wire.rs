//! What hosts and clients say to each other over NATS: subjects, the call
//! and reply messages (JSON), and `snakepit_core::Error` carried across.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use snakepit_core::{Affinity, Crash, Error, ExitReason, RemoteError, StartError};

/// The header that carries the W3C trace context.
pub(crate) const TRACEPARENT: &str = "traceparent";

/// The subjects of one cluster, all under `snakepit.<cluster>.`.
#[derive(Debug, Clone)]
pub(crate) struct Subjects {
    prefix: String,
}

impl Subjects {
    pub(crate) fn new(cluster: &str) -> Result<Self, Error> {
        check_name("cluster name", cluster)?;
        Ok(Subjects {
            prefix: format!("snakepit.{cluster}"),
        })
    }

    /// Calls for one host.
    pub(crate) fn host_call(&self, host: &str) -> String {
        format!("{}.host.{host}.call", self.prefix)
    }

    /// Cancellations of one host's calls (the call's reply subject), and
    /// credits for its streams ([`credit`]).
    pub(crate) fn host_cancel(&self, host: &str) -> String {
        format!("{}.host.{host}.cancel", self.prefix)
    }

    /// A host's status endpoint (NATS service API).
    pub(crate) fn host_status(&self, host: &str) -> String {
        format!("{}.host.{host}.status", self.prefix)
    }

    /// Heartbeats and capacity announcements of every host.
    pub(crate) fn heartbeat(&self) -> String {
        format!("{}.hb", self.prefix)
    }
}

/// Cluster and host names become NATS subject tokens and service names.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "{what} `{name}` must be 1 to 64 of A-Z a-z 0-9 - _"
        )))
    }
}

/// The longest reply subject a host answers (a client's is its inbox and
/// a call number: some 40 bytes, more with a custom inbox prefix).
pub(crate) const MAX_REPLY_SUBJECT: usize = 512;

/// Whether a host answers to `subject`, a call's reply subject (or the
/// subject a cancel names): at most [`MAX_REPLY_SUBJECT`] bytes of tokens
/// without spaces, control characters or wildcards, and not a system
/// subject (`$JS...`, `$KV...`, `$SYS...`): a call cannot make a host
/// write where its caller may not, with the host's own permissions, nor
/// cost it its connection with a subject the server refuses.
pub(crate) fn answerable(subject: &str) -> bool {
    !subject.is_empty()
        && subject.len() <= MAX_REPLY_SUBJECT
        && !subject.starts_with('$')
        && subject
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">")
        && subject.bytes().all(|b| b > b' ' && b != 0x7f)
}

/// One call, as a client sends it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CallMsg {
    pub(crate) command: String,
    pub(crate) args: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) session: Option<String>,
    #[serde(default, skip_serializing_if = "is_prefer")]
    pub(crate) affinity: WireAffinity,
    /// What is left of the caller's deadline when the call is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) timeout_ms: Option<u64>,
    /// `call` (typed, no adapter hooks) rather than `execute_with`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) typed: bool,
    /// `execute_stream`: chunks are sent as they come.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) stream: bool,
    /// With `stream`: the chunks the host may send before the client has
    /// granted more ([`credit`]). Absent: no limit (a client that grants
    /// none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) window: Option<u32>,
    /// Where the call's replies go: in a [`batch`] of calls, whose NATS
    /// message has one reply subject for all; a call sent alone has it
    /// there too, and the message's own reply subject wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reply: Option<String>,
    /// In a batch: the call's NATS headers (trace context), as name and
    /// value pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) headers: Option<Vec<(String, String)>>,
}

/// The last subject token of a message that carries several replies to
/// one client: `[["<call token>", <reply>], ...]` ([`replies`]).
pub(crate) const REPLIES: &str = "m";

/// The reply subject of a batch of calls (`<client inbox>.b<n>`): NATS
/// answers there when no host subscribes, and the client then knows every
/// call of the batch reached nobody.
pub(crate) fn batch_reply(inbox: &str, n: u64) -> String {
    format!("{inbox}.b{n}")
}

/// The NATS message of several calls to one host: a JSON array of the
/// calls as each was encoded alone (with its `reply`), each with its
/// headers spliced in. Every call must be a JSON object.
pub(crate) fn batch<'a>(
    calls: impl Iterator<Item = (&'a [u8], Option<&'a async_nats::HeaderMap>)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    out.push(b'[');
    for (i, (call, headers)) in calls.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match headers {
            Some(h) if call.len() > 2 => {
                out.extend_from_slice(b"{\"headers\":");
                // Strings only: cannot fail.
                let _ = serde_json::to_writer(&mut out, &header_pairs(h));
                out.push(b',');
                out.extend_from_slice(&call[1..]);
            }
            _ => out.extend_from_slice(call),
        }
    }
    out.push(b']');
    out
}

/// A call's headers as the name and value pairs a batch carries.
fn header_pairs(h: &async_nats::HeaderMap) -> Vec<(&str, &str)> {
    h.iter()
        .flat_map(|(k, vs)| vs.iter().map(move |v| (k.as_ref(), v.as_str())))
        .collect()
}

/// The bytes NATS counts for a message's headers: `NATS/1.0\r\n`, each
/// `key: value\r\n`, and a blank line. None when the map is empty (NATS
/// sends no headers then).
pub(crate) fn headers_len(h: &async_nats::HeaderMap) -> usize {
    let pairs = header_pairs(h);
    if pairs.is_empty() {
        return 0;
    }
    let lines: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 4).sum();
    b"NATS/1.0\r\n".len() + lines + 2
}

/// At most how many bytes a call takes in a [`batch`]: its JSON, its
/// headers as JSON pairs (each character escaped at worst), a separator.
pub(crate) fn batched_len(call: &[u8], headers: Option<&async_nats::HeaderMap>) -> usize {
    let headers = headers.map_or(0, |h| {
        let pairs = header_pairs(h);
        pairs
            .iter()
            .map(|(k, v)| 2 * (k.len() + v.len()) + 8)
            .sum::<usize>()
            + 16
    });
    call.len() + headers + 1
}

/// The NATS message of several replies to one client: each reply's call
/// token (the last token of its reply subject) and its JSON.
pub(crate) fn replies<'a>(items: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    out.push(b'[');
    for (i, (token, reply)) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        // A string: cannot fail (and escapes what a subject token may hold).
        let _ = serde_json::to_writer(&mut out, token);
        out.push(b',');
        out.extend_from_slice(reply);
        out.push(b']');
    }
    out.push(b']');
    out
}

/// Reads a message of [`replies`]: each call token and its reply's JSON.
pub(crate) fn parse_replies(
    payload: &[u8],
) -> Result<Vec<(&str, &serde_json::value::RawValue)>, serde_json::Error> {
    serde_json::from_slice(payload)
}

/// Chunks a client lets a host send ahead of its reader.
pub(crate) const STREAM_WINDOW: u32 = 256;

/// A client grants more chunks after its reader has taken this many.
pub(crate) const STREAM_GRANT: u32 = 64;

/// The message that grants a stream `n` more chunks, sent to the host's
/// cancel subject: `+<n> <reply subject>` (a reply subject, which a cancel
/// carries alone, never starts with `+`).
pub(crate) fn credit(n: u32, reply: &str) -> String {
    format!("+{n} {reply}")
}

/// Reads a [`credit`] message: the chunks granted and the call's reply
/// subject.
pub(crate) fn parse_credit(payload: &str) -> Option<(u32, &str)> {
    let (n, reply) = payload.strip_prefix('+')?.split_once(' ')?;
    Some((n.parse().ok()?, reply))
}

/// The question a client sends, with a NATS reply subject, to a host's
/// cancel subject about a call whose first reply it may have lost (its
/// connection was made again before one came): `?<reply subject>`. The
/// host answers with the call's decline when it declined it, and with
/// [`NOT_DECLINED`] otherwise. (A reply subject, which a cancel carries
/// alone, never starts with `?`; and a cancel has no reply subject.)
pub(crate) fn ask(reply: &str) -> String {
    format!("?{reply}")
}

/// Reads an [`ask`]: the call's reply subject.
pub(crate) fn parse_ask(payload: &str) -> Option<&str> {
    payload.strip_prefix('?')
}

/// A host's answer to an [`ask`] about a call it did not decline (it took
/// it, or never had it, or forgot it): the call may have run.
pub(crate) const NOT_DECLINED: &[u8] = b"{\"not_declined\":{}}";

/// The question a client sends, with a NATS reply subject, to a host's
/// cancel subject about a call the host acknowledged and whose outcome
/// has not come, once the host's connection was made again (NATS drops
/// what it had for the old one): `?where <reply subject>`. The host
/// answers [`RUNNING`], [`KEPT`] (the outcome is among those it sends
/// again after each reconnect, so it is on its way), or [`GONE`]: the call
/// ended and its outcome is no longer kept. A host that never had the call
/// does not answer (another run of its id may have it). (A subject has
/// no space, so a host that does not know this question reads it as an
/// [`ask`] about no call of its, and answers [`NOT_DECLINED`]: the client
/// then goes on waiting. The answer never carries the outcome: only the
/// caller's reply subject does, which NATS permissions may keep others
/// from reading.)
pub(crate) fn ask_where(reply: &str) -> String {
    format!("?where {reply}")
}

/// Reads an [`ask_where`]: the call's reply subject.
pub(crate) fn parse_where(payload: &str) -> Option<&str> {
    payload.strip_prefix("?where ")
}

/// A host's answer to an [`ask_where`] about a call it runs.
pub(crate) const RUNNING: &[u8] = b"{\"running\":{}}";

/// A host's answer to an [`ask_where`] about a call whose outcome it
/// holds to send again after each reconnect.
pub(crate) const KEPT: &[u8] = b"{\"kept\":{}}";

/// A host's answer to an [`ask_where`] about a call that ended there and
/// whose outcome went out of what it keeps to send again.
pub(crate) const GONE: &[u8] = b"{\"gone\":{}}";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WireAffinity {
    #[default]
    Prefer,
    Strict,
    FailFast,
}

fn is_prefer(a: &WireAffinity) -> bool {
    *a == WireAffinity::Prefer
}

impl From<Affinity> for WireAffinity {
    fn from(a: Affinity) -> Self {
        match a {
            Affinity::Strict => WireAffinity::Strict,
            Affinity::FailFast => WireAffinity::FailFast,
            _ => WireAffinity::Prefer,
        }
    }
}

impl From<WireAffinity> for Affinity {
    fn from(a: WireAffinity) -> Self {
        match a {
            WireAffinity::Prefer => Affinity::Prefer,
            WireAffinity::Strict => Affinity::Strict,
            WireAffinity::FailFast => Affinity::FailFast,
        }
    }
}

/// What a host sends to a call's reply subject: `Ack` (taken, running),
/// then chunks, then one `Ok` or `Err`; or only `Declined` (not taken, never
/// ran: the host is full or closing). Externally tagged (`{"ok": {"v":
/// ...}}`): decoded in one pass, without buffering the value first.
///
/// `V`, the result and chunks: a `Value`; or the JSON text as it is
/// (`&RawValue` as a host passes a typed result through, `Box<RawValue>` as
/// a client reads it, to decode once into what its caller asked for).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Reply<V = Value> {
    Ack {
        host: String,
        pid: u32,
    },
    /// `seq`: the host's heartbeats sent so far (a later one supersedes).
    Declined {
        host: String,
        seq: u64,
    },
    /// `n`: the chunk's place in its stream, from 1, so that a client can
    /// tell when chunks were lost on the way (a connection reset drops
    /// what NATS had for it); absent from hosts that do not say.
    Chunk {
        v: V,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        n: Option<u64>,
    },
    /// `n`: for a stream, the chunks sent before it.
    Ok {
        v: V,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        n: Option<u64>,
    },
    Err {
        e: Box<WireError>,
    },
}

/// A host's heartbeat: who it is and how much it can take now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    /// Counts the host's heartbeats.
    #[serde(default)]
    pub(crate) seq: u64,
    pub(crate) host: String,
    pub(crate) pid: u32,
    pub(crate) capacity: usize,
    /// Of the capacity, the calls its workers run at once (the rest is
    /// prefetch, queued in its pool); 0 from a host that does not say.
    #[serde(default)]
    pub(crate) running: usize,
    pub(crate) free: usize,
    /// The host is shutting down: take nothing more to it.
    #[serde(default)]
    pub(crate) bye: bool,
    /// This run of the host (one per `serve`): a host restarted under the
    /// same id is another instance, and the calls the one before ran are
    /// lost when it falls silent. Absent from hosts that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) instance: Option<String>,
    /// No worker of the host can start (none ready, every breaker open):
    /// the error its pool gives a call at once. Absent otherwise, and from
    /// hosts that do not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) broken: Option<WireError>,
    /// The connections this run of the host has made to NATS (async-nats's
    /// count): when it grows, the connection was made again, and what NATS
    /// had for the host meanwhile (calls, cancels, stream credit) and what
    /// it had sent (outcomes, chunks) may be lost. 0 from hosts that do
    /// not say.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) conn: u64,
    /// With `bye`: the run's last heartbeat, sent once every call it ran
    /// has ended. A run that said goodbye and falls silent without it died
    /// with calls still running. Absent from hosts that do not say.
    #[serde(default, skip_serializing_if = "is_false")]
    pub(crate) last: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `snakepit_core::Error` on the wire: its kind, its text, and the fields
/// needed to rebuild the same variant on the client.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct WireError {
    kind: String,
    message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    worker_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    remote: Option<RemoteError>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exit: Option<(String, i32)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    /// A start failure's stderr tail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tail: Option<String>,
    /// A codec error that stopped the call before it was sent (so it never
    /// ran), rather than one decoding its outcome.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    unsent: bool,
}

fn ms(d: Duration) -> Option<u64> {
    Some(d.as_millis().min(u64::MAX as u128) as u64)
}

/// The most bytes of a start failure's stderr tail a heartbeat carries
/// (its end); its other texts keep at most [`MAX_BROKEN_TEXT`] bytes each.
/// A client takes no start failure from a heartbeat over 64 KiB, and the
/// server takes none over its `max_payload`: a worker that logs long
/// lines before it fails must not cost its host the start failure its
/// callers are to get, nor its heartbeats.
pub(crate) const MAX_BROKEN_TAIL: usize = 8 << 10;

/// See [`MAX_BROKEN_TAIL`].
pub(crate) const MAX_BROKEN_TEXT: usize = 2 << 10;

/// Marks a text of an error cut so that its reply fits the server's
/// `max_payload` ([`WireError::trimmed`]).
pub(crate) const TRIMMED: &str = "[trimmed to fit the NATS server's max_payload]";

/// The first `max` bytes of `s` (cut at a character boundary), marked `…`
/// when cut.
fn head(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The last `max` bytes of `s` (cut at a character boundary), marked `…`
/// when cut.
fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

impl WireError {
    /// The error as a heartbeat carries it: its stderr tail cut to its
    /// last [`MAX_BROKEN_TAIL`] bytes, and its message (which repeats the
    /// tail) and cause to their first [`MAX_BROKEN_TEXT`].
    pub(crate) fn for_heartbeat(mut self) -> Self {
        self.message = head(
            self.message.lines().next().unwrap_or_default(),
            MAX_BROKEN_TEXT,
        );
        self.detail = self.detail.map(|d| head(&d, MAX_BROKEN_TEXT));
        self.tail = self.tail.map(|t| tail(&t, MAX_BROKEN_TAIL));
        self
    }

    /// The error with each of its texts cut to at most `max` bytes (the
    /// start of a message, the end of a stderr tail or traceback), each
    /// cut one marked [`TRIMMED`]: the same kind and fields, in fewer
    /// bytes, for a reply that would not fit the server's `max_payload`.
    pub(crate) fn trimmed(&self, max: usize) -> Self {
        let first = |s: &str| match s.len() <= max {
            true => s.to_owned(),
            false => format!("{} {TRIMMED}", head(s, max)),
        };
        let last = |s: &str| match s.len() <= max {
            true => s.to_owned(),
            false => format!("{TRIMMED} {}", tail(s, max)),
        };
        let crashed = self.kind == "worker_crashed";
        let mut w = self.clone();
        w.message = first(&w.message);
        w.command = w.command.as_deref().map(first);
        w.session_id = w.session_id.as_deref().map(first);
        w.worker_id = w.worker_id.as_deref().map(first);
        // A crash's detail is its stderr tail, whose end says most.
        w.detail = w
            .detail
            .as_deref()
            .map(|d| if crashed { last(d) } else { first(d) });
        w.tail = w.tail.as_deref().map(last);
        w.exit = w.exit.map(|(how, n)| (first(&how), n));
        if let Some(r) = &mut w.remote {
            r.kind = r.kind.as_deref().map(first);
            r.message = first(&r.message);
            r.traceback = r.traceback.as_deref().map(last);
        }
        w
    }

    /// Whether it is `Error::StartFailed` on the wire.
    pub(crate) fn is_start_failure(&self) -> bool {
        self.kind == "start_failed"
    }

    pub(crate) fn from_error(e: &Error) -> Self {
        let mut w = WireError {
            kind: e.kind().to_owned(),
            message: e.to_string(),
            ..WireError::default()
        };
        match e {
            Error::PoolSaturated { queued } => w.n = Some(*queued),
            Error::QueueTimeout(d) => w.ms = ms(*d),
            Error::CallTimeout { command, timeout } => {
                w.command = Some(command.clone());
                w.ms = ms(*timeout);
            }
            Error::WorkerBusy {
                session_id,
                worker_id,
            } => {
                w.session_id = Some(session_id.clone());
                w.worker_id = Some(worker_id.clone());
            }
            Error::WorkerCrashed(c) => {
                w.worker_id = Some(c.worker_id.clone());
                w.pid = Some(c.pid);
                w.detail = Some(c.stderr_tail.clone());
                w.exit = Some(match c.exit {
                    ExitReason::Code(n) => ("code".into(), n),
                    ExitReason::Signal(n) => ("signal".into(), n),
                    ExitReason::ClosedStdout => ("closed_stdout".into(), 0),
                    _ => ("unknown".into(), 0),
                });
            }
            Error::Remote { command, error } => {
                w.command = Some(command.clone());
                w.remote = Some(error.clone());
            }
            Error::Validation { command, message } | Error::ResultRefused { command, message } => {
                w.command = Some(command.clone());
                w.detail = Some(message.clone());
            }
            Error::UnsupportedCommand(c) => w.command = Some(c.clone()),
            Error::Protocol { worker_id, .. } => w.worker_id = Some(worker_id.clone()),
            Error::StreamBehind { worker_id, kept } => {
                w.worker_id = Some(worker_id.clone());
                w.n = Some(*kept);
            }
            Error::StartFailed(s) => {
                w.worker_id = Some(s.worker_id.clone());
                w.detail = Some(s.cause.clone());
                w.tail = Some(s.stderr_tail.clone());
            }
            Error::StoppedByShutdown { worker_id, pid } => {
                w.worker_id = Some(worker_id.clone());
                w.pid = Some(*pid);
            }
            Error::Codec(c) => {
                w.detail = Some(c.to_string());
                w.unsent = e.never_ran();
            }
            Error::Session {
                session_id,
                message,
            } => {
                w.session_id = Some(session_id.clone());
                w.detail = Some(message.clone());
            }
            Error::Config(m) => w.detail = Some(m.clone()),
            Error::HostLost { host, message } => {
                w.worker_id = Some(host.clone());
                w.detail = Some(message.clone());
            }
            Error::Unavailable { target, message } => {
                w.worker_id = Some(target.clone());
                w.detail = Some(message.clone());
            }
            _ => {}
        }
        w
    }

    /// The same variant again; a kind this client does not know becomes a
    /// `Remote` error of type `ClusterError` with the host's text.
    pub(crate) fn into_error(self, command: &str) -> Error {
        let command_of = |c: Option<String>| c.unwrap_or_else(|| command.to_owned());
        let d = |ms: Option<u64>| Duration::from_millis(ms.unwrap_or(0));
        match self.kind.as_str() {
            "pool_saturated" => Error::PoolSaturated {
                queued: self.n.unwrap_or(0),
            },
            "queue_timeout" => Error::QueueTimeout(d(self.ms)),
            "call_timeout" => Error::CallTimeout {
                command: command_of(self.command),
                timeout: d(self.ms),
            },
            "cancelled" => Error::Cancelled,
            "worker_busy" => Error::WorkerBusy {
                session_id: self.session_id.unwrap_or_default(),
                worker_id: self.worker_id.unwrap_or_default(),
            },
            "worker_crashed" => {
                let (how, n) = self.exit.unwrap_or_else(|| ("unknown".into(), 0));
                let exit = match how.as_str() {
                    "code" => ExitReason::Code(n),
                    "signal" => ExitReason::Signal(n),
                    "closed_stdout" => ExitReason::ClosedStdout,
                    _ => ExitReason::Unknown,
                };
                Error::WorkerCrashed(Box::new(Crash {
                    worker_id: self.worker_id.unwrap_or_default(),
                    pid: self.pid.unwrap_or(0),
                    exit,
                    stderr_tail: self.detail.unwrap_or_default(),
                }))
            }
            "remote" => Error::Remote {
                command: command_of(self.command),
                error: self
                    .remote
                    .unwrap_or_else(|| RemoteError::new("ClusterError", self.message)),
            },
            "validation" => Error::Validation {
                command: command_of(self.command),
                message: self.detail.unwrap_or(self.message),
            },
            "result_refused" => Error::ResultRefused {
                command: command_of(self.command),
                message: self.detail.unwrap_or(self.message),
            },
            "unsupported_command" => Error::UnsupportedCommand(command_of(self.command)),
            "codec" => {
                let detail = self.detail.unwrap_or(self.message);
                Error::Codec(match self.unsent {
                    true => snakepit_protocol::Error::Encode {
                        codec: "json",
                        detail,
                    },
                    false => snakepit_core_protocol_error(detail),
                })
            }
            "stopped_by_shutdown" => Error::StoppedByShutdown {
                worker_id: self.worker_id.unwrap_or_default(),
                pid: self.pid.unwrap_or(0),
            },
            "protocol" => Error::Protocol {
                worker_id: self.worker_id.unwrap_or_default(),
                source: snakepit_core_protocol_error(self.message),
            },
            "stream_behind" => Error::StreamBehind {
                worker_id: self.worker_id.unwrap_or_default(),
                kept: self.n.unwrap_or(0),
            },
            "start_failed" => Error::StartFailed(Box::new(StartError {
                worker_id: self.worker_id.unwrap_or_default(),
                cause: self.detail.unwrap_or(self.message),
                stderr_tail: self.tail.unwrap_or_default(),
            })),
            "shut_down" => Error::ShutDown,
            "session" => Error::Session {
                session_id: self.session_id.unwrap_or_default(),
                message: self.detail.unwrap_or(self.message),
            },
            "config" => Error::Config(self.detail.unwrap_or(self.message)),
            "host_lost" => Error::HostLost {
                host: self.worker_id.unwrap_or_default(),
                message: self.detail.unwrap_or(self.message),
            },
            "unavailable" => Error::Unavailable {
                target: self.worker_id.unwrap_or_default(),
                message: self.detail.unwrap_or(self.message),
            },
            _ => Error::Remote {
                command: command.to_owned(),
                error: RemoteError::new("ClusterError", self.message),
            },
        }
    }
}

/// A payload problem reported by the host, as the protocol error type the
/// core error carries.
fn snakepit_core_protocol_error(detail: String) -> snakepit_protocol::Error {
    snakepit_protocol::Error::InvalidPayload {
        codec: "json",
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(e: Error) -> Error {
        let w = WireError::from_error(&e);
        let text = serde_json::to_string(&w).unwrap();
        serde_json::from_str::<WireError>(&text)
            .unwrap()
            .into_error("cmd")
    }

    #[test]
    fn a_trimmed_error_keeps_its_variant_and_fields_and_the_ends_that_say_most() {
        let crash = Error::WorkerCrashed(Box::new(Crash {
            worker_id: "w1".into(),
            pid: 42,
            exit: ExitReason::Code(3),
            stderr_tail: format!("first {} last", "é".repeat(50_000)),
        }));
        let w = WireError::from_error(&crash).trimmed(1_000);
        let text = serde_json::to_string(&w).unwrap();
        assert!(text.len() < 4_000, "{}", text.len());
        let back = serde_json::from_str::<WireError>(&text)
            .unwrap()
            .into_error("cmd");
        let Error::WorkerCrashed(c) = back else {
            panic!("{back:?}")
        };
        assert_eq!(
            (c.worker_id.as_str(), c.pid, c.exit),
            ("w1", 42, ExitReason::Code(3))
        );
        assert!(c.stderr_tail.starts_with(TRIMMED), "{}", c.stderr_tail);
        assert!(c.stderr_tail.ends_with(" last"), "the end is kept");

        let mut remote = RemoteError::new("ValueError", format!("start {}", "x".repeat(9_000)));
        remote.traceback = Some(format!("{} line 9", "t".repeat(9_000)));
        let e = Error::Remote {
            command: "c".into(),
            error: remote,
        };
        let back = round_trimmed(&e, 500);
        let r = back.remote().unwrap();
        assert_eq!(r.kind.as_deref(), Some("ValueError"));
        assert!(r.message.starts_with("start x") && r.message.ends_with(TRIMMED));
        assert!(r.traceback.as_deref().unwrap().ends_with(" line 9"));

        // Nothing to cut: the same error.
        let small = Error::PoolSaturated { queued: 7 };
        assert!(matches!(
            round_trimmed(&small, 100),
            Error::PoolSaturated { queued: 7 }
        ));
    }

    fn round_trimmed(e: &Error, max: usize) -> Error {
        let w = WireError::from_error(e).trimmed(max);
        serde_json::from_str::<WireError>(&serde_json::to_string(&w).unwrap())
            .unwrap()
            .into_error("cmd")
    }

    #[test]
    fn errors_keep_their_variant_across_the_wire() {
        let cases = [
            Error::PoolSaturated { queued: 7 },
            Error::QueueTimeout(Duration::from_millis(250)),
            Error::CallTimeout {
                command: "sleep".into(),
                timeout: Duration::from_secs(1),
            },
            Error::Cancelled,
            Error::Remote {
                command: "fail".into(),
                error: RemoteError::new("ValueError", "bad"),
            },
            Error::UnsupportedCommand("nope".into()),
            Error::ShutDown,
        ];
        for e in cases {
            let back = round(e);
            assert_ne!(back.kind(), "");
            let again = round(back);
            assert_eq!(
                WireError::from_error(&again).message,
                WireError::from_error(&round(again)).message
            );
        }
        let back = round(Error::CallTimeout {
            command: "sleep".into(),
            timeout: Duration::from_secs(1),
        });
        assert!(
            matches!(&back, Error::CallTimeout { command, timeout } if command == "sleep" && *timeout == Duration::from_secs(1))
        );
        let back = round(Error::Remote {
            command: "fail".into(),
            error: RemoteError::new("ValueError", "bad"),
        });
        assert_eq!(back.remote().unwrap().kind.as_deref(), Some("ValueError"));
        let back = round(Error::ResultRefused {
            command: "echo".into(),
            message: "no answer".into(),
        });
        assert!(
            matches!(&back, Error::ResultRefused { command, message } if command == "echo" && message == "no answer")
                && !back.never_ran(),
            "{back:?}"
        );
        let back = round(Error::StoppedByShutdown {
            worker_id: "w1".into(),
            pid: 42,
        });
        assert!(
            matches!(&back, Error::StoppedByShutdown { worker_id, pid } if worker_id == "w1" && *pid == 42),
            "{back:?}"
        );
        let back = round(Error::StartFailed(Box::new(StartError {
            worker_id: "w2".into(),
            cause: "no such file".into(),
            stderr_tail: "Traceback ...".into(),
        })));
        assert!(
            matches!(&back, Error::StartFailed(s) if s.worker_id == "w2" && s.cause == "no such file" && s.stderr_tail == "Traceback ..."),
            "{back:?}"
        );
        let back = round(Error::WorkerCrashed(Box::new(Crash {
            worker_id: "w3".into(),
            pid: 7,
            exit: ExitReason::Signal(11),
            stderr_tail: "segfault".into(),
        })));
        assert!(
            matches!(&back, Error::WorkerCrashed(c) if c.worker_id == "w3" && c.pid == 7 && c.exit == ExitReason::Signal(11) && c.stderr_tail == "segfault"),
            "{back:?}"
        );
        // A codec error keeps its variant, and whether the call never ran.
        let unsent = Error::Codec(snakepit_protocol::Error::Encode {
            codec: "json",
            detail: "key must be a string".into(),
        });
        assert!(unsent.never_ran());
        let back = round(unsent);
        assert!(
            matches!(back, Error::Codec(_)) && back.never_ran(),
            "{back:?}"
        );
        let back = round(Error::Codec(snakepit_protocol::Error::InvalidPayload {
            codec: "json",
            detail: "expected a map".into(),
        }));
        assert!(
            matches!(back, Error::Codec(_)) && !back.never_ran(),
            "{back:?}"
        );
    }

    #[test]
    fn a_result_passed_through_is_the_same_reply_on_the_wire() {
        let text = r#"{"n":[1,2.5,null,"é"],"status":"ok"}"#;
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str(text).unwrap();
        let passed = serde_json::to_vec(&Reply::Ok { v: &*raw, n: None }).unwrap();
        let value: Value = serde_json::from_str(text).unwrap();
        let parsed = serde_json::to_vec(&Reply::Ok {
            v: value.clone(),
            n: None,
        })
        .unwrap();
        assert_eq!(passed, parsed);
        match serde_json::from_slice::<Reply>(&passed).unwrap() {
            Reply::Ok { v, .. } => assert_eq!(v, value),
            other => panic!("{other:?}"),
        }
        // As a client reads it: the text, decoded once into what is asked.
        match serde_json::from_slice::<Reply<Box<serde_json::value::RawValue>>>(&passed).unwrap() {
            Reply::Ok { v, .. } => assert_eq!(v.get(), text),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_batch_is_no_longer_than_its_calls_counted_alone() {
        let mut h = async_nats::HeaderMap::new();
        h.insert(
            TRACEPARENT,
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        h.insert("baggage", "user=\"é\\x\"");
        let calls: [(&[u8], Option<&async_nats::HeaderMap>); 3] = [
            (br#"{"command":"a","args":{}}"#, Some(&h)),
            (br#"{"command":"b","args":{"x":1}}"#, None),
            (br#"{"command":"c","args":{}}"#, Some(&h)),
        ];
        let counted: usize = calls.iter().map(|(c, h)| batched_len(c, *h)).sum();
        let sent = batch(calls.into_iter());
        assert!(sent.len() <= counted + 2, "{} > {counted} + 2", sent.len());
        let parsed: Vec<CallMsg> = serde_json::from_slice(&sent).unwrap();
        assert_eq!(parsed[0].headers.as_ref().unwrap().len(), 2);
        assert!(parsed[1].headers.is_none());
    }

    #[test]
    fn credits_are_told_from_cancels() {
        let reply = "_INBOX.abc.7";
        assert_eq!(parse_credit(&credit(64, reply)), Some((64, reply)));
        assert_eq!(parse_credit(reply), None, "a cancel is not a credit");
        assert_eq!(parse_credit("+x _INBOX.a"), None);
        assert_eq!(parse_credit("+64"), None);
    }

    #[test]
    fn names_are_subject_tokens() {
        assert!(Subjects::new("ml").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", &"x".repeat(65)] {
            assert!(matches!(Subjects::new(bad), Err(Error::Config(_))), "{bad}");
        }
    }
}
