//! A plain OTLP/HTTP receiver on a free loopback port, for tests that must
//! see each request as it came (its head, path and body) or choose the
//! answer: Rotel does not show heads, nor answer 404 or nothing at all.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// How the receiver answers a request for a path.
#[derive(Clone, Copy)]
pub(crate) enum Answer {
    /// An empty reply with this HTTP status.
    Status(u16),
    /// No reply at all: the connection is held open.
    Silent,
}

/// One request as the receiver read it.
#[derive(Clone, Debug)]
pub(crate) struct Request {
    /// The request line and headers, `\r\n`-separated.
    pub(crate) head: String,
    pub(crate) path: String,
    pub(crate) body: Vec<u8>,
}

/// Each request is kept before it is answered, so once an export returned,
/// its request is here.
pub(crate) struct Receiver {
    pub(crate) port: u16,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Receiver {
    pub(crate) fn start(answer: fn(&str) -> Answer) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let sink = sink.clone();
                std::thread::spawn(move || serve(conn, &sink, answer));
            }
        });
        Receiver { port, seen }
    }

    /// Answers 200 to everything.
    pub(crate) fn ok() -> Receiver {
        Receiver::start(|_| Answer::Status(200))
    }

    pub(crate) fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every request so far, in order.
    pub(crate) fn all(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }

    pub(crate) fn requests(&self, path: &str) -> Vec<Request> {
        self.all().into_iter().filter(|r| r.path == path).collect()
    }

    pub(crate) fn paths(&self) -> Vec<String> {
        self.all().into_iter().map(|r| r.path).collect()
    }

    /// Whether a request to `path` carried `text` (a span name, an
    /// attribute's value: protobuf keeps strings as they are).
    pub(crate) fn got(&self, path: &str, text: &str) -> bool {
        self.requests(path)
            .iter()
            .any(|r| r.body.windows(text.len()).any(|w| w == text.as_bytes()))
    }
}

/// Reads each request on `conn`, keeps it, and answers it as `answer` says.
fn serve(conn: TcpStream, seen: &Mutex<Vec<Request>>, answer: fn(&str) -> Answer) {
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
        let reply = answer(&path);
        seen.lock().unwrap().push(Request { head, path, body });
        match reply {
            Answer::Status(code) => {
                let reply = format!(
                    "HTTP/1.1 {code} X\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
                );
                if reader.get_mut().write_all(reply.as_bytes()).is_err() {
                    return;
                }
            }
            Answer::Silent => {
                // Held until the client gives up and closes it.
                let _ = reader.read(&mut [0; 1]);
                return;
            }
        }
    }
}
