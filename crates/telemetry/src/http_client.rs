//! The OTLP/HTTP exporter's client: plain HTTP/1.1 over a std
//! `TcpStream`, one request per connection, with the whole export
//! (resolving, connecting, writing the request, reading the whole answer,
//! and the exporter's retries) held to one deadline. A general-purpose
//! client bounds each read of the answer instead, so that a receiver
//! trickling its answer could hold an export, and the flush or shutdown
//! waiting for it, without end.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response, ResponseBodyTooLarge};

use crate::watch::ExportState;

/// The most of an answer kept, as the exporter's own clients allow.
const MAX_BODY: usize = 4 * 1024 * 1024;
/// The most of an answer's head read before giving up on it.
const MAX_HEAD: usize = 64 * 1024;

/// Sends each export within the deadline its [`ExportState`] gives (set
/// when the export began), else within `timeout` from the request.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) timeout: Duration,
    pub(crate) state: Arc<ExportState>,
    /// `user:password` for Basic auth when the request's URL carries none:
    /// the exporter is given its URL without them ([`take_userinfo`]), as
    /// it may write that URL into its own log lines.
    pub(crate) credentials: Option<Vec<u8>>,
    /// The userinfo's parts, as written and percent-decoded: blanked out
    /// of a failed answer's body, which the exporter logs (a receiver
    /// refusing credentials may quote them).
    pub(crate) secrets: Vec<Vec<u8>>,
}

/// The credentials of an endpoint's userinfo (see [`Client`]).
#[derive(Default)]
pub(crate) struct Userinfo {
    pub(crate) credentials: Option<Vec<u8>>,
    pub(crate) secrets: Vec<Vec<u8>>,
}

/// `url` without its userinfo, and the credentials that userinfo holds
/// (percent-decoded, as [`Client`] sends them).
pub(crate) fn take_userinfo(url: &str) -> (String, Userinfo) {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return (url.to_owned(), Userinfo::default());
    };
    let bare = match scheme {
        Some(scheme) => format!("{scheme}://{host}{tail}"),
        None => format!("{host}{tail}"),
    };
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    for part in userinfo.splitn(2, ':') {
        for form in [part.as_bytes().to_vec(), percent_decode(part.as_bytes())] {
            if !form.is_empty() && !secrets.contains(&form) {
                secrets.push(form);
            }
        }
    }
    let credentials = credentials_of(userinfo);
    // As the Authorization header carries them, which a receiver may quote.
    if let Some(basic) = credentials.as_deref().map(base64) {
        secrets.push(basic.into_bytes());
    }
    // The longest first, so that a part inside another is not left half.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    (
        bare,
        Userinfo {
            credentials,
            secrets,
        },
    )
}

/// `body` with every occurrence of each of `secrets` written as `***`.
fn blank_out(body: Bytes, secrets: &[Vec<u8>]) -> Bytes {
    let mut body = body.to_vec();
    for secret in secrets {
        let mut at = 0;
        while let Some(found) = body[at..]
            .windows(secret.len())
            .position(|w| w == secret.as_slice())
        {
            let start = at + found;
            body.splice(start..start + secret.len(), b"***".iter().copied());
            at = start + 3;
        }
    }
    Bytes::from(body)
}

/// RFC 7617: the credentials are `user-id ":" password`; a user name
/// alone (an API key, say) goes with an empty password, and an empty
/// userinfo holds none.
fn credentials_of(userinfo: &str) -> Option<Vec<u8>> {
    if userinfo.is_empty() {
        return None;
    }
    let mut decoded = percent_decode(userinfo.as_bytes());
    if !userinfo.contains(':') {
        decoded.push(b':');
    }
    Some(decoded)
}

impl HttpClient for Client {
    // `HttpClient` is an `async_trait`; this is the signature it expands
    // to. The work is blocking, on the exporter's own thread, as the
    // blocking client it replaces did.
    fn send_bytes<'life0, 'async_trait>(
        &'life0 self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            let deadline = self
                .state
                .deadline()
                .or_else(|| Instant::now().checked_add(self.timeout));
            let answer = send(&request, deadline, self.credentials.as_deref());
            let answer = answer.map(|response| {
                if response.status().is_success() {
                    return response;
                }
                let secrets = self.secrets_of(&request);
                response.map(|body| blank_out(body, &secrets))
            });
            answer.map_err(|failure| {
                let boxed: HttpError = match failure {
                    Failure::TooLarge => Box::new(ResponseBodyTooLarge::new()),
                    other => {
                        self.state.transport_failed(other.cause(&self.state));
                        Box::new(other)
                    }
                };
                boxed
            })
        })
    }
}

impl Client {
    /// What a failed answer's body, which the exporter logs, must not
    /// quote: the userinfo's parts, and the values of the request's
    /// headers (API keys from `OTEL_EXPORTER_OTLP_HEADERS`) but for those
    /// the exporter itself sets; the longest first.
    fn secrets_of(&self, request: &Request<Bytes>) -> Vec<Vec<u8>> {
        let mut secrets = self.secrets.clone();
        for (name, value) in request.headers() {
            let value = value.as_bytes().to_vec();
            let own = ["content-type", "content-encoding", "user-agent"].contains(&name.as_str());
            if !own && !value.is_empty() && !secrets.contains(&value) {
                secrets.push(value);
            }
        }
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets
    }
}

/// Why a request got no whole answer.
#[derive(Debug)]
enum Failure {
    /// The deadline passed first.
    Timeout,
    /// The network said no (refused, reset, unreachable, ...).
    Io(io::Error),
    /// What came back is not an HTTP answer, or not all of it.
    Protocol(&'static str),
    /// The answer's body is over [`MAX_BODY`].
    TooLarge,
    /// The request cannot be sent as asked.
    Request(&'static str),
}

impl Failure {
    /// The cause, in the words a warning gives it.
    fn cause(&self, state: &ExportState) -> String {
        match self {
            Failure::Timeout => state.no_answer_in_time(),
            other => other.to_string(),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => f.write_str("no answer within the export timeout"),
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Protocol(what) => write!(f, "the receiver's answer {what}"),
            Failure::TooLarge => write!(f, "{}", ResponseBodyTooLarge::new()),
            Failure::Request(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for Failure {}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Failure::Timeout,
            _ => Failure::Io(e),
        }
    }
}

/// What is left until `deadline` (`None`: no deadline), or
/// [`Failure::Timeout`] when nothing is.
fn left(deadline: Option<Instant>) -> Result<Option<Duration>, Failure> {
    match deadline {
        None => Ok(None),
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Ok(Some(left)),
            _ => Err(Failure::Timeout),
        },
    }
}

/// Where a request goes, read from its URI.
struct Target {
    /// As the `Host` header gives it.
    host_header: String,
    /// The host to resolve or connect to (an IPv6 literal without brackets).
    host: String,
    port: u16,
    /// The request target: path and query.
    path: String,
    /// `user:password`, percent-decoded, from the URI's userinfo.
    credentials: Option<Vec<u8>>,
}

fn target(request: &Request<Bytes>) -> Result<Target, Failure> {
    let uri = request.uri();
    if uri
        .scheme_str()
        .is_some_and(|s| !s.eq_ignore_ascii_case("http"))
    {
        return Err(Failure::Request("only plain http:// is supported"));
    }
    let authority = uri
        .authority()
        .ok_or(Failure::Request("the URL has no host"))?
        .as_str();
    let (userinfo, host_port) = match authority.rsplit_once('@') {
        Some((userinfo, rest)) => (Some(userinfo), rest),
        None => (None, authority),
    };
    let host = uri.host().ok_or(Failure::Request("the URL has no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let credentials = userinfo.and_then(credentials_of);
    Ok(Target {
        host_header: host_port.to_owned(),
        host,
        port: uri.port_u16().unwrap_or(80),
        path: uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        credentials,
    })
}

/// Sends `request` and reads its whole answer, by `deadline`.
fn send(
    request: &Request<Bytes>,
    deadline: Option<Instant>,
    credentials: Option<&[u8]>,
) -> Result<Response<Bytes>, Failure> {
    let mut target = target(request)?;
    if target.credentials.is_none() {
        target.credentials = credentials.map(<[u8]>::to_vec);
    }
    let addrs = resolve(&target.host, target.port, deadline)?;
    let mut conn = connect(&addrs, deadline)?;
    let _ = conn.set_nodelay(true);
    write_request(&mut conn, request, &target, deadline)?;
    read_response(&mut conn, deadline)
}

/// The addresses of `host`: an IP literal as it is, a name resolved on a
/// thread of its own, so that a resolver that hangs costs no more than
/// the deadline.
fn resolve(host: &str, port: u16, deadline: Option<Instant>) -> Result<Vec<SocketAddr>, Failure> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_owned();
    std::thread::Builder::new()
        .name("snakepit-otlp-resolve".into())
        .spawn(move || {
            let _ = tx.send((name.as_str(), port).to_socket_addrs().map(Vec::from_iter));
        })
        .map_err(Failure::Io)?;
    let resolved = match left(deadline)? {
        Some(left) => rx.recv_timeout(left).map_err(|_| Failure::Timeout)?,
        None => rx.recv().map_err(|_| Failure::Timeout)?,
    };
    let addrs = resolved.map_err(|e| {
        Failure::Io(io::Error::new(
            e.kind(),
            format!("cannot resolve {host}: {e}"),
        ))
    })?;
    if addrs.is_empty() {
        return Err(Failure::Request("the host name resolves to no address"));
    }
    Ok(addrs)
}

/// A connection to the first of `addrs` that takes one.
fn connect(addrs: &[SocketAddr], deadline: Option<Instant>) -> Result<TcpStream, Failure> {
    let mut last = Failure::Timeout;
    for addr in addrs {
        let attempt = match left(deadline)? {
            Some(left) => TcpStream::connect_timeout(addr, left),
            None => TcpStream::connect(addr),
        };
        match attempt {
            Ok(conn) => return Ok(conn),
            Err(e) => last = e.into(),
        }
    }
    Err(last)
}

fn write_request(
    conn: &mut TcpStream,
    request: &Request<Bytes>,
    target: &Target,
    deadline: Option<Instant>,
) -> Result<(), Failure> {
    let body = request.body();
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        request.method(),
        target.path,
        target.host_header,
        body.len()
    )
    .into_bytes();
    let mut authorized = false;
    for (name, value) in request.headers() {
        let name = name.as_str();
        if ["host", "content-length", "connection", "transfer-encoding"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            continue;
        }
        authorized |= name.eq_ignore_ascii_case("authorization");
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if let (Some(credentials), false) = (&target.credentials, authorized) {
        head.extend_from_slice(b"Authorization: Basic ");
        head.extend_from_slice(base64(credentials).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    write_all(conn, &head, deadline)?;
    write_all(conn, body, deadline)
}

/// `write_all`, each write given only what is left of the deadline.
fn write_all(
    conn: &mut TcpStream,
    mut bytes: &[u8],
    deadline: Option<Instant>,
) -> Result<(), Failure> {
    while !bytes.is_empty() {
        conn.set_write_timeout(left(deadline)?)?;
        match conn.write(bytes) {
            Ok(0) => return Err(Failure::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads more of the answer into `buf`, by the deadline: `false` at the
/// end of the connection.
fn read_more(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Option<Instant>,
) -> Result<bool, Failure> {
    let mut chunk = [0; 16 * 1024];
    loop {
        conn.set_read_timeout(left(deadline)?)?;
        match conn.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(true);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// How an answer's body ends.
enum Framing {
    Length(usize),
    Chunked,
    /// At the end of the connection.
    Close,
}

fn read_response(
    conn: &mut TcpStream,
    deadline: Option<Instant>,
) -> Result<Response<Bytes>, Failure> {
    let mut buf = Vec::new();
    // The heads of the interim answers skipped so far: they count against
    // the head's limit, so that a receiver cannot keep the client reading
    // interim answers until the deadline.
    let mut interim = 0;
    loop {
        // The head, skipping any interim (1xx) answers. Each byte is
        // searched once, however the answer is cut into reads.
        let mut searched = 0;
        let end = loop {
            if let Some(at) = find(&buf[searched..], b"\r\n\r\n") {
                break searched + at;
            }
            searched = buf.len().saturating_sub(3);
            if interim + buf.len() > MAX_HEAD {
                return Err(Failure::Protocol("has a head that is too long"));
            }
            if !read_more(conn, &mut buf, deadline)? {
                return Err(Failure::Protocol("ended before its head did"));
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let mut lines = head.split("\r\n");
        let mut status_line = lines.next().unwrap_or_default().split(' ');
        let status = status_line
            .next()
            .filter(|version| version.starts_with("HTTP/1."))
            .and(status_line.next())
            .filter(|s| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|s| (100..=999).contains(s))
            .ok_or(Failure::Protocol("is not HTTP"))?;
        if (100..200).contains(&status) {
            interim += end + 4;
            if interim > MAX_HEAD {
                return Err(Failure::Protocol("has a head that is too long"));
            }
            continue;
        }
        let mut builder = Response::builder().status(status);
        let mut length = None;
        let mut chunked = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("content-length") {
                // Digits only: `parse` would also take a sign.
                let n = Some(value)
                    .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .ok_or(Failure::Protocol("has a bad Content-Length"))?;
                length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().ends_with("chunked")
            {
                chunked = true;
            }
            if is_token(name)
                && value
                    .bytes()
                    .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
            {
                builder = builder.header(name, value);
            }
        }
        // RFC 9112, 6.3: a chunked transfer coding decides where the body
        // ends, whatever Content-Length says, and before or after it.
        let framing = match (chunked, length) {
            (true, _) => Framing::Chunked,
            (false, Some(n)) => Framing::Length(n),
            (false, None) => Framing::Close,
        };
        let body = match (status, framing) {
            (204 | 304, _) => Vec::new(),
            (_, Framing::Length(n)) => {
                if n > MAX_BODY {
                    return Err(Failure::TooLarge);
                }
                while buf.len() < n {
                    if !read_more(conn, &mut buf, deadline)? {
                        return Err(Failure::Protocol("ended before its body did"));
                    }
                }
                buf.truncate(n);
                buf
            }
            (_, Framing::Chunked) => {
                let mut chunks = Dechunker::default();
                loop {
                    if chunks.feed(&mut buf)? {
                        break chunks.body;
                    }
                    if !read_more(conn, &mut buf, deadline)? {
                        return Err(Failure::Protocol("ended before its body did"));
                    }
                }
            }
            (_, Framing::Close) => {
                while read_more(conn, &mut buf, deadline)? {
                    if buf.len() > MAX_BODY {
                        return Err(Failure::TooLarge);
                    }
                }
                buf
            }
        };
        return builder
            .body(Bytes::from(body))
            .map_err(|_| Failure::Protocol("is not HTTP"));
    }
}

/// Where `needle` first is in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A chunked body, decoded as it arrives: what has been decoded is taken
/// out of the buffer, and each byte is searched once, so that an answer
/// cut into many small reads costs no more than one read whole.
#[derive(Default)]
struct Dechunker {
    body: Vec<u8>,
    state: ChunkState,
    /// How far the buffer has been searched for the end of the line (or
    /// of the trailers) being read.
    searched: usize,
}

#[derive(Default)]
enum ChunkState {
    /// A chunk-size line.
    #[default]
    Size,
    /// A chunk of this many bytes, and its CRLF.
    Data(usize),
    /// The trailers, after the last chunk, up to an empty line.
    Trailers,
}

impl Dechunker {
    /// Decodes what `buf` holds, taking it out: `true` once the body has
    /// ended.
    fn feed(&mut self, buf: &mut Vec<u8>) -> Result<bool, Failure> {
        let mut at = 0;
        let done = loop {
            let rest = &buf[at..];
            match self.state {
                ChunkState::Size => {
                    let from = self.searched.saturating_sub(at);
                    let Some(eol) = find(&rest[from..], b"\r\n").map(|i| from + i) else {
                        if rest.len() > MAX_HEAD {
                            return Err(Failure::Protocol("has a bad chunk"));
                        }
                        self.searched = at + rest.len().saturating_sub(1);
                        break false;
                    };
                    let size = std::str::from_utf8(&rest[..eol])
                        .ok()
                        .map(|l| l.split(';').next().unwrap_or_default().trim())
                        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()))
                        .and_then(|s| usize::from_str_radix(s, 16).ok())
                        .ok_or(Failure::Protocol("has a bad chunk"))?;
                    at += eol + 2;
                    self.searched = at;
                    if size == 0 {
                        self.state = ChunkState::Trailers;
                    } else if size > MAX_BODY || self.body.len() + size > MAX_BODY {
                        return Err(Failure::TooLarge);
                    } else {
                        self.state = ChunkState::Data(size);
                    }
                }
                ChunkState::Data(size) => {
                    if rest.len() < size + 2 {
                        break false;
                    }
                    self.body.extend_from_slice(&rest[..size]);
                    at += size + 2;
                    self.searched = at;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    if rest.starts_with(b"\r\n") {
                        break true;
                    }
                    let from = self.searched.saturating_sub(at);
                    if find(&rest[from..], b"\r\n\r\n").is_some() {
                        break true;
                    }
                    if rest.len() > MAX_HEAD {
                        return Err(Failure::Protocol("has trailers that are too long"));
                    }
                    self.searched = at + rest.len().saturating_sub(3);
                    break false;
                }
            }
        };
        buf.drain(..at);
        self.searched = self.searched.saturating_sub(at);
        Ok(done)
    }
}

/// Whether `s` is an HTTP token (a header name).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            s[i],
            s.get(i + 1).copied().and_then(hex),
            s.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_the_standard_alphabet_with_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:p@ss"), "dXNlcjpwQHNz");
    }

    #[test]
    fn the_exporter_gets_the_url_without_its_userinfo() {
        let (bare, info) = take_userinfo("http://us%65r:p%40ss@h:4318/v1/traces?x=a@b");
        assert_eq!(bare, "http://h:4318/v1/traces?x=a@b");
        assert_eq!(info.credentials.as_deref(), Some(&b"user:p@ss"[..]));
        for part in ["us%65r", "user", "p%40ss", "p@ss", "dXNlcjpwQHNz"] {
            assert!(info.secrets.contains(&part.as_bytes().to_vec()), "{part}");
        }
        let (bare, info) = take_userinfo("http://token@h/v1/traces");
        assert_eq!(bare, "http://h/v1/traces");
        assert_eq!(info.credentials.as_deref(), Some(&b"token:"[..]));
        let (bare, info) = take_userinfo("http://h:4318/a@b");
        assert_eq!(bare, "http://h:4318/a@b");
        assert!(info.credentials.is_none() && info.secrets.is_empty());
    }

    #[test]
    fn a_failed_answers_body_quotes_no_credential() {
        let (_, info) = take_userinfo("http://me:s%65cret@h");
        let body = Bytes::from_static(b"bad me:secret and s%65cret, me again");
        assert_eq!(
            &blank_out(body, &info.secrets)[..],
            b"bad ***:*** and ***, *** again"
        );
    }

    #[test]
    fn userinfo_is_percent_decoded() {
        assert_eq!(percent_decode(b"us%65r:p%40ss%"), b"user:p@ss%");
    }

    #[test]
    fn chunked_bodies_are_read_whole_or_not_at_all() {
        let whole = |bytes: &[u8]| {
            let mut chunks = Dechunker::default();
            let mut buf = bytes.to_vec();
            chunks
                .feed(&mut buf)
                .map(|done| done.then_some(chunks.body))
        };
        assert_eq!(
            whole(b"3\r\nabc\r\n0\r\n\r\n").unwrap(),
            Some(b"abc".to_vec())
        );
        assert_eq!(
            whole(b"3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n").unwrap(),
            Some(b"abc".to_vec())
        );
        assert_eq!(whole(b"3\r\nabc\r\n").unwrap(), None);
        assert_eq!(whole(b"3\r\nab").unwrap(), None);
        assert!(whole(b"zz\r\n").is_err());
        assert!(whole(b"+3\r\nabc\r\n").is_err());
    }

    #[test]
    fn chunked_bodies_read_a_byte_at_a_time_are_the_same() {
        let answer = b"3\r\nabc\r\n10;ext\r\n0123456789abcdef\r\n0\r\nT: v\r\n\r\n";
        let mut chunks = Dechunker::default();
        let mut buf = Vec::new();
        let mut done = false;
        for (i, &b) in answer.iter().enumerate() {
            assert!(!done, "ended early, at byte {i}");
            buf.push(b);
            done = chunks.feed(&mut buf).unwrap();
        }
        assert!(done);
        assert_eq!(chunks.body, b"abc0123456789abcdef");
    }
}
