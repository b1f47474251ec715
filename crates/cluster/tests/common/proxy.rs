//! A TCP proxy on 127.0.0.1 between one party (a host or a client) and a
//! nats-server, for tests of partitions and connection resets: it
//! forwards, black-holes (connections stay open, nothing flows; what was
//! sent flows once it forwards again), mutes or deafens (the same, one
//! way: what the party sends waits, or what the server sends it) or cuts
//! (closes every connection, and refuses new ones until it forwards again:
//! what was in flight is lost).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with the bytes of its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Forward,
    /// Connections stay open; nothing is read or written until it forwards
    /// again (what was sent waits in the sockets' buffers meanwhile).
    BlackHole,
    /// As `BlackHole` for the party's bytes to the server only: the
    /// server's bytes to the party flow (the party hears, and what it says
    /// waits).
    Muted,
    /// As `BlackHole` for the server's bytes to the party only: the
    /// party's bytes to the server flow (what it says is heard, and what
    /// it is told waits).
    Deaf,
    /// Every connection is closed; new ones are accepted and closed at once.
    Cut,
}

/// A TCP proxy on 127.0.0.1 in front of the nats-server at `upstream`;
/// stops with its connections when dropped.
pub struct Proxy {
    pub url: String,
    link: watch::Sender<Link>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (link, rx) = watch::channel(Link::Forward);
        let accept = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                if *rx.borrow() == Link::Cut {
                    continue; // dropped: closed at once
                }
                let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let (down_r, down_w) = down.into_split();
                let (up_r, up_w) = up.into_split();
                tokio::spawn(pump(down_r, up_w, rx.clone(), Way::Out));
                tokio::spawn(pump(up_r, down_w, rx.clone(), Way::In));
            }
        });
        Proxy {
            url: format!("nats://127.0.0.1:{port}"),
            link,
            accept,
        }
    }

    pub fn set(&self, link: Link) {
        self.link.send_replace(link);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The pumps end as the link's sender goes.
        self.accept.abort();
    }
}

/// Which way a pump copies: from the party to the server, or back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Way {
    Out,
    In,
}

/// Copies `from` to `to` while the link forwards (its way); holds still
/// while it is black-holed (or muted or deaf, for the way it stops); ends
/// (closing its halves) when it is cut.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut link: watch::Receiver<Link>,
    way: Way,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !open(&mut link, way).await {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => n,
            },
            changed = link.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        // Bytes read as the link went dark wait for it, as a network's do.
        if !open(&mut link, way).await {
            return;
        }
        tokio::select! {
            r = to.write_all(&buf[..n]) => if r.is_err() { return },
            _ = link.wait_for(|l| *l == Link::Cut) => return,
        }
    }
}

/// Waits while the link is black-holed (or muted or deaf, for the way it
/// stops): true once it forwards, false once it is cut (or the proxy is
/// gone).
async fn open(link: &mut watch::Receiver<Link>, way: Way) -> bool {
    loop {
        match *link.borrow_and_update() {
            Link::Forward => return true,
            Link::Muted if way == Way::In => return true,
            Link::Deaf if way == Way::Out => return true,
            Link::Cut => return false,
            Link::BlackHole | Link::Muted | Link::Deaf => {}
        }
        if link.changed().await.is_err() {
            return false;
        }
    }
}

/// A NATS connection that tries to reconnect every 50 ms.
pub async fn connect_quick(url: &str) -> async_nats::Client {
    async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(50))
        .connect(url)
        .await
        .unwrap()
}
