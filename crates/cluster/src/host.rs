//! A worker host: serves one pool's calls to a cluster.
//!
//! Hosts take work only when they can start it. Each host announces its
//! capacity and free capacity (heartbeats, and at once when it has room
//! again after being full); clients send a call to a host that has room as
//! they count it, and queue it while none has. A call that reaches a host
//! with no free capacity (another client was faster) is declined, never
//! run, and the client sends it elsewhere. A call's outcome tells the client
//! which host ran it; one that runs for longer is acknowledged (after
//! 50 ms), so the client knows which host runs it and can tell, from that
//! host's heartbeats, when the host is gone.
//!
//! Calls arrive alone or several in one message (a client sends together
//! the calls that were ready together); replies to one client that are
//! ready together go in one message too ([`crate::outbox`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Message, Subject, Subscriber};
use bytes::Bytes;
use futures_util::stream::StreamExt;
use futures_util::FutureExt;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use snakepit_core::{CallOptions, Error, Pool, StreamItem, WireCodec};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::AbortHandle;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::outbox::{self, Connects, Outbox, Resend};
use crate::wire::{self, CallMsg, Heartbeat, Reply, Subjects, WireError};

/// How a host serves its pool.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServeOptions {
    /// This host's id in the cluster (subject token: `A-Z a-z 0-9 - _`);
    /// a random one when `None`.
    pub host_id: Option<String>,
    /// Calls the host runs at once per ready worker; 0 (the default): what
    /// each worker declared in its hello (`Stats::capacity`: one for the
    /// Python bridge's synchronous worker, more for asynchronous ones).
    pub calls_per_worker: usize,
    /// The most calls the host accepts per ready worker beyond those it
    /// runs, queued in its pool (like a message broker's prefetch): they
    /// hide the round trip to the client between one call and the next, so
    /// workers do not idle while the next call is on the wire, and let the
    /// messages of many calls share a write. A call that waits on a host
    /// costs less than one that waits in a client's queue (the host's pool
    /// writes it to its worker ahead, and workers read several calls per
    /// wake-up).
    ///
    /// The prefetch adapts to the calls, unlike a broker's: the host takes
    /// enough to cover [`PREFETCH_WINDOW`] (4 ms) of its workers' recent
    /// calls, at least one and at most this many (32 by default): about
    /// 32 for calls of a few dozen microseconds, 4 for 1 ms calls, 1 for
    /// calls of 4 ms or more, so that a long call waits on a host behind at
    /// most one other per worker while another host may free up. Until a call
    /// has been timed (and for workers that run several calls at once,
    /// which are not timed) the host takes this many. Clients send a call
    /// to a host with an idle worker first and to prefetch only when no
    /// host has one, so prefetch does not skew the routing by capacity. 0
    /// makes the host take a call only when a worker is free.
    pub prefetch_per_worker: usize,
    /// How often the host announces itself and its free capacity. Clients
    /// count a host as lost after a few missed heartbeats
    /// ([`ClientConfig::host_timeout`](crate::ClientConfig::host_timeout)).
    pub heartbeat: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            host_id: None,
            calls_per_worker: 0,
            prefetch_per_worker: 32,
            heartbeat: Duration::from_millis(250),
        }
    }
}

impl ServeOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the host id.
    pub fn host_id(mut self, id: impl Into<String>) -> Self {
        self.host_id = Some(id.into());
        self
    }

    /// Sets the calls run at once per worker (0: what each worker declared).
    pub fn calls_per_worker(mut self, n: usize) -> Self {
        self.calls_per_worker = n;
        self
    }

    /// Sets the most calls accepted per worker beyond those it runs.
    pub fn prefetch_per_worker(mut self, n: usize) -> Self {
        self.prefetch_per_worker = n;
        self
    }

    /// Sets the heartbeat interval; zero is refused by [`serve_with`]
    /// (`Error::Config`).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }
}

/// A pool serving a cluster; see [`serve`]. Dropping it stops serving at
/// once (calls in flight are cancelled); [`Node::shutdown`] lets them finish.
#[derive(Debug)]
pub struct Node {
    id: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// This host's id in the cluster.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Stops taking calls, lets the calls in flight finish, and tells the
    /// clients this host is gone. The pool itself keeps running.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The longest a leaving host waits on the NATS server for each of its last
/// steps (its unsubscription, its last outcomes and goodbye).
const LEAVE_WAIT: Duration = Duration::from_secs(2);

/// How long a leaving host keeps its subscription after its goodbye, so
/// that what the clients sent before they heard it is declined, not lost:
/// many times the time a message takes from one client to the server and
/// on, which is under a millisecond on one network.
const LINGER: Duration = Duration::from_millis(100);

/// Serves `pool` to the cluster `cluster` on the NATS connection `nats`,
/// with default [`ServeOptions`], until [`Node::shutdown`].
///
/// ```no_run
/// # async fn demo(pool: snakepit_core::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let node = snakepit_cluster::serve(&nats, "ml", pool).await?;
/// // ... until the host should leave the cluster:
/// node.shutdown().await?;
/// # Ok(()) }
/// ```
pub async fn serve(nats: &async_nats::Client, cluster: &str, pool: Pool) -> Result<Node, Error> {
    serve_with(nats, cluster, pool, ServeOptions::default()).await
}

/// [`serve`] with options.
pub async fn serve_with(
    nats: &async_nats::Client,
    cluster: &str,
    pool: Pool,
    options: ServeOptions,
) -> Result<Node, Error> {
    let subjects = Subjects::new(cluster)?;
    let id = match &options.host_id {
        Some(id) => id.clone(),
        None => random_id(),
    };
    wire::check_name("host id", &id)?;
    if options.heartbeat.is_zero() {
        return Err(Error::Config(
            "the heartbeat interval must be longer than zero".into(),
        ));
    }
    let unavailable = |what: &str, e: &dyn std::fmt::Display| {
        crate::unavailable(cluster, format!("cannot {what}: {e}"))
    };
    // A queue group: two hosts started with one id by mistake share its
    // calls; neither runs a call the other runs too.
    let direct = nats
        .queue_subscribe(subjects.host_call(&id), subjects.host_call(&id))
        .await
        .map_err(|e| unavailable("subscribe", &e))?;
    let cancels = nats
        .subscribe(subjects.host_cancel(&id))
        .await
        .map_err(|e| unavailable("subscribe", &e))?;
    let service = crate::service::Service::start(
        nats,
        crate::service::Registration {
            name: format!("snakepit-{cluster}"),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            description: format!("snakepit host {id} of cluster {cluster}"),
            metadata: HashMap::from([
                ("host".to_owned(), id.clone()),
                ("cluster".to_owned(), cluster.to_owned()),
                ("pool".to_owned(), pool.name().to_owned()),
            ]),
            status_subject: subjects.host_status(&id),
        },
    )
    .await
    .map_err(|e| unavailable("register the service", &e))?;
    let host = Arc::new(HostCtx {
        nats: nats.clone(),
        id: id.clone(),
        pid: std::process::id(),
        pool,
        served: Default::default(),
        capacity: Default::default(),
        taken: Default::default(),
        replies: Outbox::default(),
        connects: Connects::of(nats),
        sent: Default::default(),
    });
    let (stop_tx, stop_rx) = oneshot::channel();
    let mut state = Serving {
        host: host.clone(),
        subjects,
        options,
        full: false,
        declined: false,
        workers_run: 0,
        beats: 0,
        conn: 0,
        finished: false,
        direct,
        cancels,
        running: HashMap::new(),
        ack_due: None,
        cancelled: EarlyCancels::default(),
        ended: Recent::default(),
        declines: Declines::default(),
        instance: random_id(),
        leaving: false,
    };
    state.measure();
    let task = tokio::spawn(async move {
        // Aborted when this task ends or is aborted (a `Node` dropped).
        // The service API is answered, and its subscriptions kept, until
        // the serving loop ends.
        let _service = AbortOnDropHandle::new(tokio::spawn(answer_service(host.clone(), service)));
        let _replies = AbortOnDropHandle::new(tokio::spawn(send_replies(host)));
        state.run(stop_rx).await;
    });
    Ok(Node {
        id,
        stop: Some(stop_tx),
        task: Some(task),
    })
}

fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("h{:012x}", h.finish() & 0xffff_ffff_ffff)
}

struct HostCtx {
    nats: async_nats::Client,
    id: String,
    pid: u32,
    pool: Pool,
    served: std::sync::atomic::AtomicU64,
    /// The calls it takes at once, as of its last heartbeat (the serving
    /// loop's and the status endpoint's one figure).
    capacity: std::sync::atomic::AtomicUsize,
    /// The calls taken whose units are not yet free: one less as a call's
    /// outcome is queued (before its caller can hear it), or as a call
    /// ends otherwise. What the serving loop counts room by.
    taken: std::sync::atomic::AtomicUsize,
    /// Chunks and outcomes on their way to the clients.
    replies: Outbox<Queued>,
    /// The host's connection count.
    connects: Connects,
    /// The last outcomes and declines sent, to send again once the
    /// connection is made again ([`HostCtx::resend`]).
    sent: std::sync::Mutex<Resend>,
}

/// A reply waiting to go out: its subject and its JSON.
type Queued = (Subject, Bytes);

impl HostCtx {
    /// Sends a message to a call's reply subject now.
    async fn send(&self, to: &Subject, reply: &impl serde::Serialize) {
        let payload = self.encode(reply);
        if let Err(e) = self.nats.publish(to.clone(), payload).await {
            tracing::debug!(target: "snakepit::cluster", "reply to {to} lost: {e}");
        }
    }

    /// Sends a message to a call's reply subject now, and keeps it to
    /// send again after a reconnect ([`HostCtx::resend`]).
    async fn send_kept(&self, to: &Subject, reply: &impl serde::Serialize) {
        let payload = self.kept(to, reply);
        if let Err(e) = self.nats.publish(to.clone(), payload).await {
            tracing::debug!(target: "snakepit::cluster", "reply to {to} lost: {e}");
        }
    }

    /// Queues a call's outcome for its client, after what was queued
    /// before it, and keeps it to send again after a reconnect
    /// ([`HostCtx::resend`]). Kept from now, before its call is known to
    /// have ended: a client that asks what became of the call
    /// ([`wire::ask_where`]) finds it running or finds its outcome. (One
    /// queued before a reconnect and sent after it goes twice; a client
    /// takes one.)
    fn queue(&self, to: &Subject, reply: &impl serde::Serialize) {
        let payload = self.kept(to, reply);
        self.replies.push((to.clone(), payload));
    }

    /// A reply's JSON, kept under the connection count of now to send
    /// again after a reconnect.
    fn kept(&self, to: &Subject, reply: &impl serde::Serialize) -> Bytes {
        let payload = self.encode(reply);
        let conn = self.connects.now();
        self.sent
            .lock()
            .unwrap()
            .keep(conn, to.clone(), payload.clone());
        payload
    }

    /// Queues a stream's chunk for its client, after what was queued
    /// before it. (Chunks are not sent again after a reconnect: the
    /// client fails a stream whose host reconnected.)
    fn queue_chunk(&self, to: &Subject, reply: &impl serde::Serialize) {
        self.replies.push((to.clone(), self.encode(reply)));
    }

    /// A reply's JSON. An error over the server's `max_payload` (a long
    /// stderr tail, traceback or message) goes with its texts trimmed to
    /// fit, so the caller still gets its kind and fields; any other reply
    /// over it becomes the error saying so: a codec error of the outcome
    /// (the call ran; only its result cannot be carried), never one that
    /// says it never ran.
    fn encode(&self, reply: &impl serde::Serialize) -> Bytes {
        let mut payload = serde_json::to_vec(reply).unwrap_or_default();
        let max = self.nats.max_payload();
        if payload.len() > max {
            if let Some(fits) = trimmed_error(&payload, max) {
                return fits.into();
            }
            let err = Error::Codec(snakepit_protocol::Error::InvalidPayload {
                codec: "json",
                detail: format!(
                    "the reply of {} bytes exceeds the NATS server's max_payload of {max} bytes; the call ran",
                    payload.len()
                ),
            });
            let e = Box::new(WireError::from_error(&err));
            payload = serde_json::to_vec(&Reply::<Value>::Err { e }).unwrap_or_default();
        }
        payload.into()
    }

    /// Sends the queued replies: each alone, or those to one client (one
    /// reply subject prefix) that are ready together in one message.
    async fn send_queued(&self) {
        let max = self.nats.max_payload().saturating_sub(1024).max(1);
        let same_client = |a: &Queued, b: &Queued| client_of(&a.0) == client_of(&b.0);
        for mine in outbox::groups(self.replies.take(), same_client) {
            let prefix = client_of(&mine[0].0).to_owned();
            for run in outbox::runs(mine, max, |(to, p)| to.len() + p.len(), 8) {
                let (to, payload) = match run.as_slice() {
                    [(to, payload)] => (to.clone(), payload.clone()),
                    _ => {
                        let tokens = run.iter().map(|(to, p)| (call_of(to), &p[..]));
                        let payload = wire::replies(tokens);
                        (
                            Subject::from(format!("{prefix}.{}", wire::REPLIES)),
                            payload.into(),
                        )
                    }
                };
                let sent = self.nats.publish(to, payload).await;
                if let Err(e) = sent {
                    tracing::debug!(target: "snakepit::cluster", "replies to {prefix} lost: {e}");
                }
            }
        }
    }

    /// Sends again the outcomes and declines sent over connections before
    /// `epoch`: the host's connection was made again, and what NATS had
    /// not delivered of them went with the old one (an outcome lost so
    /// would leave its caller waiting as long as the host lives; a decline,
    /// failing a call that never ran with the host-lost error). A client
    /// takes a call's outcome once, and a decline only while it waits for
    /// the call's first reply; what it has had already is dropped.
    ///
    /// They stay kept, as sent under `epoch`: a copy lost in a further
    /// reset (before NATS delivered it) is sent once more after that one.
    async fn resend(&self, epoch: u64) {
        let again = {
            let mut sent = self.sent.lock().unwrap();
            let again = sent.before(epoch);
            for (to, payload) in &again {
                sent.keep(epoch, to.clone(), payload.clone());
            }
            again
        };
        if again.is_empty() {
            return;
        }
        tracing::debug!(target: "snakepit::cluster", host = %self.id,
            "connection to NATS made again: sending {} replies again", again.len());
        for (to, payload) in again {
            let _ = self.nats.publish(to, payload).await;
        }
    }

    /// Pool figures for `snakepit cluster status`.
    fn status(&self) -> Value {
        let capacity = self.capacity.load(std::sync::atomic::Ordering::Relaxed);
        let stats = self.pool.stats();
        json!({
            "host": self.id,
            "pid": self.pid,
            "pool": self.pool.name(),
            "capacity": capacity,
            "workers": stats.workers,
            "available": stats.available,
            "busy": stats.busy,
            "in_flight": stats.in_flight,
            "queued": stats.queued,
            "served": self.served.load(std::sync::atomic::Ordering::Relaxed),
            "stats": stats,
        })
    }
}

/// The error reply `payload` with its texts trimmed until it fits in
/// `max` bytes; `None` if it is no error reply, or does not fit even so.
fn trimmed_error(payload: &[u8], max: usize) -> Option<Vec<u8>> {
    let Ok(Reply::Err { e }) = serde_json::from_slice::<Reply<serde::de::IgnoredAny>>(payload)
    else {
        return None;
    };
    let mut each = max / 8;
    while each >= 64 {
        let e = Box::new(e.trimmed(each));
        let out = serde_json::to_vec(&Reply::<Value>::Err { e }).ok()?;
        if out.len() <= max {
            return Some(out);
        }
        each /= 2;
    }
    None
}

/// The client a reply subject belongs to: all but its last token.
fn client_of(reply: &str) -> &str {
    reply.rsplit_once('.').map_or(reply, |(c, _)| c)
}

/// The call a reply subject stands for within its client: its last token.
fn call_of(reply: &str) -> &str {
    reply.rsplit_once('.').map_or(reply, |(_, t)| t)
}

/// Sends the host's queued replies as they come.
async fn send_replies(host: Arc<HostCtx>) {
    loop {
        host.replies.ready().await;
        let _sending = host.replies.sending().await;
        host.send_queued().await;
    }
}

/// Answers the NATS service API's requests and the status endpoint's
/// ([`crate::service`]), the latter with the pool's figures. A request
/// whose reply subject no client can have (a system subject such as a
/// session's key in the KV bucket, a wildcard, ...) gets no answer: anyone
/// who may ask could otherwise have the host write there, with the host's
/// permissions.
async fn answer_service(host: Arc<HostCtx>, service: crate::service::Service) {
    service
        .serve(|| Bytes::from(serde_json::to_vec(&host.status()).unwrap_or_default()))
        .await;
}

/// The recent calls' run time a host's prefetch covers, per worker
/// ([`ServeOptions::prefetch_per_worker`]): longer than the round trip from
/// a worker's reply to the next call reaching the host, which
/// `snakepit bench --nats` gives here, with everything on one machine, as
/// about 1.5 ms with 32 callers and 2.3 ms with 64 (callers over calls per
/// second).
pub const PREFETCH_WINDOW: Duration = Duration::from_millis(4);

/// The prefetch per worker for calls that recently ran `call_time` each:
/// enough to cover [`PREFETCH_WINDOW`], at least one, at most `max`.
fn prefetch(max: usize, call_time: Option<Duration>) -> usize {
    match call_time {
        _ if max == 0 => 0,
        None => max,
        Some(t) => {
            let t = t.as_micros().max(1);
            let n = PREFETCH_WINDOW.as_micros().div_ceil(t);
            (n.min(max as u128) as usize).max(1)
        }
    }
}

/// How long a call runs before the host acknowledges it on its own.
const ACK_AFTER: Duration = Duration::from_millis(50);

/// A call the host runs.
struct Running {
    task: AbortHandle,
    /// A stream's chunks it may still send; the client grants more as its
    /// reader takes them.
    credit: Option<Arc<Semaphore>>,
    /// Where its replies go.
    reply: Subject,
    /// When the serving loop acknowledges it if it is still running (the
    /// loop's one timer covers every call: no timer per call, which would
    /// also wake the runtime's driver once per idle period); `None` once
    /// acknowledged.
    ack_at: Option<Instant>,
}

/// Tells the serving loop a call ended, however it ended (an aborted task
/// drops its guard too).
/// A taken call's place: its unit of room (`HostCtx::taken`) and its entry
/// in the serving loop's `running`. The unit is freed by
/// [`free_unit`](Done::free_unit) or on drop; the entry is dropped on drop.
struct Done {
    reply: String,
    tx: mpsc::UnboundedSender<String>,
    host: Arc<HostCtx>,
    unit: bool,
}

impl Done {
    fn free_unit(&mut self) {
        if std::mem::replace(&mut self.unit, false) {
            self.host
                .taken
                .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        self.free_unit();
        let _ = self.tx.send(std::mem::take(&mut self.reply));
    }
}

struct Serving {
    host: Arc<HostCtx>,
    /// This run's token in its heartbeats.
    instance: String,
    /// It is shutting down: it declines every call that still comes.
    leaving: bool,
    subjects: Subjects,
    options: ServeOptions,
    /// The host had no free capacity at the last check.
    full: bool,
    /// It declined a call since its last heartbeat: a client counts it as
    /// full until it hears otherwise.
    declined: bool,
    /// Of those, the calls its workers run at once (the rest is prefetch).
    workers_run: usize,
    /// Heartbeats sent.
    beats: u64,
    /// The connections to NATS made, at the last heartbeat.
    conn: u64,
    /// Every call has ended and the host leaves: its next heartbeat is its
    /// last ([`Heartbeat::last`]).
    finished: bool,
    direct: Subscriber,
    cancels: Subscriber,
    running: HashMap<String, Running>,
    /// When the next call is due for its acknowledgement, if any is.
    ack_due: Option<Instant>,
    /// Cancels that arrived before their call (another path, same host):
    /// the last [`EARLY_CANCELS`] of them.
    cancelled: EarlyCancels,
    /// The reply subjects of the calls that ended last: a call that comes
    /// again (a replay on the bus) is not run twice.
    ended: Recent,
    /// The calls it declined last, to tell a client that asks
    /// ([`wire::ask`]).
    declines: Declines,
}

/// How many cancels that came before their call a host keeps.
const EARLY_CANCELS: usize = 10_000;

/// Cancels that came before their call, the oldest forgotten first: a
/// flood of cancels for calls that never come costs a bounded set, and a
/// real one that overtook its call (by milliseconds) is among the last.
#[derive(Default)]
struct EarlyCancels {
    order: std::collections::VecDeque<String>,
    set: HashSet<String>,
}

impl EarlyCancels {
    fn insert(&mut self, reply: String) {
        if self.set.insert(reply.clone()) {
            self.order.push_back(reply);
            if self.order.len() > EARLY_CANCELS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    /// Whether `reply` was cancelled early; it is forgotten then, place
    /// and all (a hit is rare: most calls were never cancelled).
    fn remove(&mut self, reply: &str) -> bool {
        let hit = self.set.remove(reply);
        if hit {
            self.order.retain(|r| r != reply);
        }
        hit
    }
}

/// The reply subjects of the calls a host declined last, each with the
/// sequence number its decline carried: the last [`Declines::KEPT`] (a
/// client asks within its host timeout of the decline). Exact: a call not
/// kept here is not said to be declined.
#[derive(Default)]
struct Declines {
    order: std::collections::VecDeque<String>,
    seqs: HashMap<String, u64>,
}

impl Declines {
    const KEPT: usize = 4096;

    fn insert(&mut self, reply: &str, seq: u64) {
        if self.seqs.insert(reply.to_owned(), seq).is_none() {
            self.order.push_back(reply.to_owned());
            if self.order.len() > Self::KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.seqs.remove(&old);
                }
            }
        }
    }

    /// The call came again and was taken (a replay): it is no longer one
    /// that never ran. (Its place in `order` goes when its turn comes.)
    fn remove(&mut self, reply: &str) {
        self.seqs.remove(reply);
    }

    fn get(&self, reply: &str) -> Option<u64> {
        self.seqs.get(reply).copied()
    }
}

/// The reply subjects of the calls that ended, to tell a call that comes
/// again: the last [`Recent::KEPT`] of them, and for older ones, per
/// client, the highest call number forgotten, for the [`Recent::KEPT`]
/// clients whose calls were forgotten last. A client numbers its calls in
/// the order it makes them and sends them to a host in that order, so a
/// call of a client at or below that number is one that came before.
#[derive(Default)]
struct Recent {
    order: std::collections::VecDeque<String>,
    set: HashSet<String>,
    /// Per client (its reply subjects' prefix), the highest call number
    /// among its forgotten calls, and when one of its calls was last
    /// forgotten (a count); at most [`Recent::KEPT`] clients.
    forgotten: HashMap<String, (u64, u64)>,
    /// The clients of `forgotten` by when one of their calls was last
    /// forgotten: the client whose calls were forgotten longest ago makes
    /// room for a new one, never a client whose calls are still coming.
    by_age: std::collections::BTreeMap<u64, String>,
    /// Counts the calls forgotten.
    forgets: u64,
}

impl Recent {
    const KEPT: usize = 4096;

    fn insert(&mut self, key: String) {
        if self.set.insert(key.clone()) {
            self.order.push_back(key);
            if self.order.len() > Self::KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                    self.forget(&old);
                }
            }
        }
    }

    fn forget(&mut self, key: &str) {
        let Ok(n) = call_of(key).parse::<u64>() else {
            return;
        };
        let client = client_of(key);
        self.forgets += 1;
        let now = self.forgets;
        if let Some((high, at)) = self.forgotten.get_mut(client) {
            *high = (*high).max(n);
            self.by_age.remove(at);
            *at = now;
            self.by_age.insert(now, client.to_owned());
            return;
        }
        if self.forgotten.len() >= Self::KEPT {
            // The client whose calls were forgotten longest ago (most
            // likely gone) makes room.
            if let Some((_, oldest)) = self.by_age.pop_first() {
                self.forgotten.remove(&oldest);
            }
        }
        self.forgotten.insert(client.to_owned(), (n, now));
        self.by_age.insert(now, client.to_owned());
    }

    fn contains(&self, key: &str) -> bool {
        self.set.contains(key)
            || call_of(key).parse::<u64>().is_ok_and(|n| {
                self.forgotten
                    .get(client_of(key))
                    .is_some_and(|&(high, _)| n <= high)
            })
    }
}

impl Drop for Serving {
    /// The calls still running when serving stops without a shutdown (a
    /// `Node` dropped) are cancelled: each is a task of its own, which an
    /// abort of the serving task would not reach. A shutdown has let them
    /// finish by then.
    fn drop(&mut self) {
        for call in self.running.values() {
            call.task.abort();
        }
    }
}

impl Serving {
    /// Reads the pool's ready workers (at each heartbeat: workers come and
    /// go with restarts, and the call path need not take the pool's lock).
    fn measure(&mut self) -> usize {
        let stats = self.host.pool.stats();
        let running = match self.options.calls_per_worker {
            0 => stats.capacity,
            n => stats.workers.saturating_mul(n),
        };
        self.workers_run = running;
        let per_worker = prefetch(self.options.prefetch_per_worker, stats.call_time);
        let capacity = running.saturating_add(stats.workers.saturating_mul(per_worker));
        self.host
            .capacity
            .store(capacity, std::sync::atomic::Ordering::Relaxed);
        capacity
    }

    fn free(&self) -> usize {
        let capacity = self
            .host
            .capacity
            .load(std::sync::atomic::Ordering::Relaxed);
        // The units of the calls that run: those of `running`, but a call
        // frees its unit as it queues its outcome, before its caller hears
        // it and before the serving loop hears that it ended.
        let taken = self.host.taken.load(std::sync::atomic::Ordering::Acquire);
        capacity.saturating_sub(taken)
    }

    async fn heartbeat(&mut self, bye: bool) {
        let conn = self.host.connects.now();
        if conn > self.conn {
            if self.conn != 0 {
                self.host.resend(conn).await;
            }
            self.conn = conn;
        }
        let capacity = self.measure();
        self.beats += 1;
        self.declined = false;
        let hb = Heartbeat {
            seq: self.beats,
            host: self.host.id.clone(),
            pid: self.host.pid,
            capacity,
            running: self.workers_run,
            // `measure` has just stored `capacity`.
            free: if bye { 0 } else { self.free() },
            bye,
            instance: Some(self.instance.clone()),
            conn,
            last: bye && self.finished,
            broken: self
                .host
                .pool
                .start_failure()
                .map(|e| WireError::from_error(&e).for_heartbeat()),
        };
        let payload = serde_json::to_vec(&hb).unwrap_or_default();
        let _ = self
            .host
            .nats
            .publish(self.subjects.heartbeat(), payload.into())
            .await;
    }

    /// Tells the clients at once when the host has room again after it
    /// declined a call (the client it declined counts it as full until
    /// then), so their queued calls come without waiting for the next
    /// heartbeat. Without a decline the clients count their own calls
    /// ending; a heartbeat for each call that ends on a busy host would
    /// double the messages per call.
    async fn adjust(&mut self) {
        let free = self.free();
        if free > 0 && self.full && self.declined {
            self.heartbeat(false).await;
        }
        self.full = free == 0;
    }

    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
        let mut beat = tokio::time::interval(self.options.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ack = tokio::time::sleep_until(far());
        tokio::pin!(ack);
        let mut armed: Option<Instant> = None;
        loop {
            self.adjust().await;
            rearm(&mut armed, self.ack_due, ack.as_mut());
            tokio::select! {
                biased;
                // Timers first: a flood on the call or cancel subject
                // (which any NATS peer can send) keeps those branches
                // ready, and must not starve the heartbeats and
                // acknowledgements that tell the clients the host lives.
                _ = beat.tick() => self.heartbeat(false).await,
                _ = &mut ack, if armed.is_some() => self.acknowledge().await,
                Some(reply) = done_rx.recv() => {
                    self.running.remove(&reply);
                    self.cancelled.remove(&reply);
                    self.ended.insert(reply);
                }
                Some(msg) = self.direct.next() => self.take(msg, &done_tx).await,
                Some(msg) = self.cancels.next() => self.cancel(msg).await,
                _ = &mut stop => break,
            }
        }
        // Graceful: take nothing more, let what runs finish, say goodbye.
        // The goodbye goes first, and the subscription stays while the
        // clients hear it: a call sent before a client heard it is
        // declined (its client routes it again), never lost. (A call that
        // reaches the server once it has the unsubscription finds nobody,
        // which its client hears too; but one the server delivered just
        // before is dropped by async-nats, which forgets the subscription
        // without waiting for the server's word that it is gone.)
        self.heartbeat(true).await;
        let lingered = tokio::time::sleep(LINGER);
        tokio::pin!(lingered);
        self.leaving = true;
        let mut lingering = true;
        let mut subscribed = true;
        while lingering || !self.running.is_empty() {
            rearm(&mut armed, self.ack_due, ack.as_mut());
            tokio::select! {
                biased;
                // Still alive: clients wait for these calls' outcomes as
                // long as the goodbyes keep coming (first, as above).
                _ = beat.tick() => self.heartbeat(true).await,
                _ = &mut ack, if armed.is_some() => self.acknowledge().await,
                done = done_rx.recv() => match done {
                    Some(reply) => {
                        // Remembered as in the loop above: the same call
                        // coming again is ignored, not declined (which
                        // would tell its caller that it never ran).
                        self.running.remove(&reply);
                        self.cancelled.remove(&reply);
                        self.ended.insert(reply);
                    }
                    None => break,
                },
                msg = self.direct.next(), if subscribed => match msg {
                    Some(msg) => self.take(msg, &done_tx).await,
                    None => subscribed = false,
                },
                _ = &mut lingered, if lingering => lingering = false,
                // Cancels and stream credits still reach the calls that run.
                Some(msg) = self.cancels.next() => self.cancel(msg).await,
            }
        }
        // What waits on the server is bounded: with NATS gone it would wait
        // for its return (and hold the host's exit with it).
        let _ = tokio::time::timeout(LEAVE_WAIT, self.direct.unsubscribe()).await;
        self.finished = true;
        self.heartbeat(true).await;
        // Every call has queued its outcome: send what is left.
        let last = async {
            let _sending = self.host.replies.sending().await;
            self.host.send_queued().await;
            let _ = self.host.nats.flush().await;
        };
        let _ = tokio::time::timeout(LEAVE_WAIT, last).await;
    }

    async fn cancel(&mut self, msg: Message) {
        let Ok(reply) = std::str::from_utf8(&msg.payload) else {
            return;
        };
        if let (Some(asked), Some(to)) = (wire::parse_where(reply), msg.reply.as_ref()) {
            return self.answer_where(asked, to);
        }
        if let (Some(asked), Some(to)) = (wire::parse_ask(reply), msg.reply.as_ref()) {
            return self.answer(asked, to);
        }
        if let Some((n, reply)) = wire::parse_credit(reply) {
            if let Some(credit) = self.running.get(reply).and_then(|c| c.credit.as_ref()) {
                // A client never grants more than its window at a time.
                credit.add_permits(n.min(wire::STREAM_WINDOW) as usize);
            }
            return;
        }
        // No call of ours has such a reply subject.
        if !wire::answerable(reply) {
            return;
        }
        let reply = reply.to_owned();
        match self.running.get(&reply) {
            Some(call) => call.task.abort(),
            // It ended before its cancel came: nothing to remember.
            None if self.ended.contains(&reply) => {}
            // Its call has not come yet (the cancel overtook it).
            None => self.cancelled.insert(reply),
        }
    }

    /// Answers a client that asks ([`wire::ask`]) whether this host
    /// declined the call with reply subject `asked`: the decline again, or
    /// that it did not (it took the call, never had it, or forgot it).
    fn answer(&self, asked: &str, to: &Subject) {
        if !wire::answerable(to.as_str()) {
            return;
        }
        let payload = match self.declines.get(asked) {
            Some(seq) => self.host.encode(&Reply::<Value>::Declined {
                host: self.host.id.clone(),
                seq,
            }),
            None => Bytes::from_static(wire::NOT_DECLINED),
        };
        self.publish_answer(to, payload);
    }

    /// Answers a client that asks ([`wire::ask_where`]) what became of
    /// the call with reply subject `asked`: it runs, its outcome is kept
    /// (so sent again after each reconnect), or it ended and its outcome
    /// is no longer kept. An outcome is kept from when it is queued, before
    /// the serving loop hears that its call ended: no call is between the
    /// two. A call this run never had gets no answer: another run of the
    /// same host id (a rolling restart) may be running it, and answers.
    fn answer_where(&self, asked: &str, to: &Subject) {
        if !wire::answerable(to.as_str()) {
            return;
        }
        let answer = if self.running.contains_key(asked) {
            wire::RUNNING
        } else if self.host.sent.lock().unwrap().holds(asked) {
            wire::KEPT
        } else if self.ended.contains(asked) {
            wire::GONE
        } else {
            return;
        };
        self.publish_answer(to, Bytes::from_static(answer));
    }

    /// Sends an answer to a question only while the connection's queue
    /// has room: a flood of questions (any NATS peer can send them) must
    /// not hold up the serving loop, its heartbeats and its calls. A
    /// question left unanswered so is one the client's host timeout
    /// bounds.
    fn publish_answer(&self, to: &Subject, payload: Bytes) {
        match self.host.nats.publish(to.clone(), payload).now_or_never() {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                tracing::debug!(target: "snakepit::cluster", "answer to {to} lost: {e}")
            }
            None => tracing::debug!(target: "snakepit::cluster", "answer to {to} dropped: busy"),
        }
    }

    /// Tells the call's client that this host never ran it. The decline
    /// is kept, as an outcome is, to send again once the connection has
    /// been made again: one NATS lost with the old connection would leave
    /// the client unable to tell the call from one that may have run.
    async fn decline(&mut self, reply: &Subject) {
        self.declined = true;
        self.declines.insert(reply.as_str(), self.beats);
        let declined = Reply::<Value>::Declined {
            host: self.host.id.clone(),
            seq: self.beats,
        };
        self.host.send_kept(reply, &declined).await;
    }

    /// Acknowledges the calls that have run for [`ACK_AFTER`] (a quick
    /// call's outcome is its own acknowledgement; a longer one is
    /// acknowledged well within the client's host timeout), and sets when
    /// the next is due.
    async fn acknowledge(&mut self) {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        for call in self.running.values_mut() {
            match call.ack_at {
                Some(at) if at <= now => {
                    call.ack_at = None;
                    due.push(call.reply.clone());
                }
                Some(at) => next = Some(next.map_or(at, |n| n.min(at))),
                None => {}
            }
        }
        self.ack_due = next;
        let host = &self.host;
        for reply in due {
            host.send(
                &reply,
                &Reply::<Value>::Ack {
                    host: host.id.clone(),
                    pid: host.pid,
                },
            )
            .await;
        }
    }

    /// Takes the calls of a message: one, or a batch ([`wire::batch`]).
    async fn take(&mut self, msg: Message, done: &mpsc::UnboundedSender<String>) {
        if msg.payload.first() != Some(&b'[') {
            let Some(reply) = msg.reply else {
                return;
            };
            let call = serde_json::from_slice::<CallMsg>(&msg.payload);
            return self.take_one(reply, call, msg.headers.as_ref(), done).await;
        }
        let calls = match serde_json::from_slice::<Vec<CallMsg>>(&msg.payload) {
            Ok(calls) => calls,
            Err(e) => {
                // No call's reply subject is known: the clients' calls end
                // with the host timeout.
                tracing::debug!(target: "snakepit::cluster", "not a batch of calls: {e}");
                return;
            }
        };
        for mut call in calls {
            let Some(reply) = call.reply.take() else {
                continue;
            };
            let headers = call.headers.take().map(|pairs| header_map(&pairs));
            self.take_one(Subject::from(reply), Ok(call), headers.as_ref(), done)
                .await;
        }
    }

    /// Takes a call if there is room, or declines it.
    async fn take_one(
        &mut self,
        reply: Subject,
        call: Result<CallMsg, serde_json::Error>,
        headers: Option<&HeaderMap>,
        done: &mpsc::UnboundedSender<String>,
    ) {
        // A reply subject no client has: answering there could write where
        // the caller may not (a system subject, with this host's
        // permissions), or cost the host its connection. Not run, and not
        // answered.
        if !wire::answerable(reply.as_str()) {
            tracing::debug!(target: "snakepit::cluster", host = %self.host.id, "a call with a reply subject no client has; ignored");
            return;
        }
        let key = reply.as_str().to_owned();
        // The same call again (its reply subject is the call's own): a
        // replay on the bus, or a duplicate. It is not run twice, and not
        // declined either, which would tell its caller that it never ran.
        if self.running.contains_key(&key) || self.ended.contains(&key) {
            tracing::warn!(target: "snakepit::cluster", host = %self.host.id, reply = %key, "a call came again; ignored");
            return;
        }
        // Leaving, it takes nothing more: its client routes the call again.
        // So does a host none of whose workers can start (its heartbeats
        // say so; its room may not be announced as gone yet): another host
        // may run the call, and when none can, the client fails it with
        // the start failure.
        if self.leaving || self.free() == 0 || self.host.pool.start_failure().is_some() {
            return self.decline(&reply).await;
        }
        if self.cancelled.remove(&key) {
            // Ended here without running: a copy that comes later (a
            // replay) is ignored like that of any call that ended, rather
            // than run with nothing left to cancel it.
            self.ended.insert(key);
            return;
        }
        // Taken now, whatever came of a copy before (a replay).
        self.declines.remove(&key);
        let call: CallMsg = match call {
            Ok(c) => c,
            Err(e) => {
                let err = Error::Validation {
                    command: String::new(),
                    message: format!("not a snakepit cluster call: {e}"),
                };
                let e = Box::new(WireError::from_error(&err));
                return self.host.send(&reply, &Reply::<Value>::Err { e }).await;
            }
        };
        let span = tracing::info_span!(
            target: "snakepit::cluster",
            "snakepit.cluster.serve",
            otel.kind = "server",
            snakepit.host = %self.host.id,
            snakepit.command = %call.command,
        );
        // With the caller's context as the span's parent, the pool's calls
        // continue the trace from this span; otherwise the caller's
        // traceparent goes to the worker as it came.
        #[cfg(feature = "opentelemetry")]
        let continued = crate::otel::continue_trace(&span, headers);
        #[cfg(not(feature = "opentelemetry"))]
        let continued = false;
        let traceparent = match continued {
            true => None,
            false => traceparent(headers),
        };
        self.host
            .taken
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let guard = Done {
            reply: key.clone(),
            tx: done.clone(),
            host: self.host.clone(),
            unit: true,
        };
        let host = self.host.clone();
        let ack_at = Instant::now() + ACK_AFTER;
        if self.ack_due.is_none() {
            self.ack_due = Some(ack_at);
        }
        let to = reply.clone();
        let credit = match (call.stream, call.window) {
            (true, Some(n)) => Some(Arc::new(Semaphore::new(n as usize))),
            _ => None,
        };
        let granted = credit.clone();
        let task = tokio::spawn(
            async move {
                run_call(&host, &to, call, traceparent, granted, guard).await;
            }
            .instrument(span),
        );
        self.running.insert(
            key,
            Running {
                task: task.abort_handle(),
                credit,
                reply,
                ack_at: Some(ack_at),
            },
        );
    }
}

/// Sets the serving loop's acknowledgement timer for `due`. It moves only
/// when the earliest acknowledgement due changes: about once per
/// [`ACK_AFTER`] under load, not per call.
fn rearm(
    armed: &mut Option<Instant>,
    due: Option<Instant>,
    ack: std::pin::Pin<&mut tokio::time::Sleep>,
) {
    if *armed != due {
        *armed = due;
        ack.reset(due.map_or_else(far, tokio::time::Instant::from_std));
    }
}

/// When an unset timer fires: not before something sets it.
fn far() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(3600)
}

/// A batched call's headers as a NATS header map. A pair that no NATS
/// header can be (a name with a space, a control or non-ASCII character or
/// a colon; a value with a line break) came from no client: it is left
/// out. (async-nats's infallible conversions panic on such text, and any
/// peer that may publish calls could send it.)
fn header_map(pairs: &[(String, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        let name = k.parse::<async_nats::HeaderName>();
        let value = v.parse::<async_nats::HeaderValue>();
        if let (Ok(name), Ok(value), false) = (name, value, k.is_empty()) {
            h.append(name, value);
        }
    }
    h
}

fn traceparent(headers: Option<&HeaderMap>) -> Option<String> {
    headers
        .and_then(|h| h.get(wire::TRACEPARENT))
        .map(|v| v.as_str().to_owned())
}

async fn run_call(
    host: &HostCtx,
    reply: &Subject,
    call: CallMsg,
    traceparent: Option<String>,
    credit: Option<Arc<Semaphore>>,
    mut done: Done,
) {
    let mut options = CallOptions::new().affinity(call.affinity.into());
    if let Some(ms) = call.timeout_ms {
        options = options.timeout(Duration::from_millis(ms));
    }
    if let Some(s) = call.session {
        options = options.session(s);
    }
    if let Some(t) = traceparent {
        options = options.traceparent(t);
    }
    let pool = &host.pool;
    let work = async {
        if call.stream {
            stream_call(host, reply, &call.command, call.args, options, credit)
                .await
                .map(|(v, n)| Outcome::Stream(v, n))
        } else if call.typed && passes_json_through(pool.codec()) {
            pool.call::<Value, Box<RawValue>>(&call.command, &call.args, options)
                .await
                .map(Outcome::Raw)
        } else if call.typed {
            pool.call::<Value, Value>(&call.command, &call.args, options)
                .await
                .map(Outcome::Value)
        } else {
            pool.execute_with(&call.command, call.args, options)
                .await
                .map(Outcome::Value)
        }
    };
    // Acknowledged by the serving loop if it runs for ACK_AFTER.
    let result = work.await;
    host.served
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // The unit is free before the outcome is queued, so before the caller
    // can hear it: the serving loop cannot decline the caller's next call
    // for it, whenever it hears that this call ended.
    done.free_unit();
    match result {
        Ok(Outcome::Value(v)) => host.queue(reply, &Reply::Ok { v, n: None }),
        Ok(Outcome::Stream(v, n)) => host.queue(reply, &Reply::Ok { v, n: Some(n) }),
        Ok(Outcome::Raw(v)) => host.queue(reply, &Reply::Ok { v: &*v, n: None }),
        Err(e) => {
            let e = Box::new(WireError::from_error(&e));
            host.queue(reply, &Reply::<Value>::Err { e });
        }
    }
    // After the outcome is queued: once no call runs, every outcome is
    // queued (what the leaving host waits for before its last send).
    drop(done);
}

/// A call's result: a `Value`, a stream's with the chunks sent before it,
/// or a typed call's JSON passed through.
enum Outcome {
    Value(Value),
    Stream(Value, u64),
    Raw(Box<RawValue>),
}

async fn stream_call(
    host: &HostCtx,
    reply: &Subject,
    command: &str,
    args: Value,
    options: CallOptions,
    credit: Option<Arc<Semaphore>>,
) -> Result<(Value, u64), Error> {
    let mut stream = host.pool.execute_stream(command, args, options).await?;
    let mut sent = 0;
    while let Some(item) = stream.next().await {
        match item? {
            StreamItem::Chunk(v) => {
                if let Some(credit) = &credit {
                    // The client's reader is a window behind: wait for it
                    // (the worker waits meanwhile), up to the deadline.
                    let wait = credit.acquire();
                    match tokio::time::timeout_at(stream.deadline().into(), wait).await {
                        Ok(Ok(permit)) => permit.forget(),
                        Ok(Err(_)) => return Err(Error::Cancelled),
                        // The deadline passed: the stream's next item is
                        // its timeout.
                        Err(_) => continue,
                    }
                }
                sent += 1;
                host.queue_chunk(reply, &Reply::Chunk { v, n: Some(sent) })
            }
            StreamItem::Done(v) => return Ok((v, sent)),
            _ => {}
        }
    }
    Err(Error::Cancelled)
}

/// Whether a typed call's result can pass through unparsed: only a JSON
/// worker's result is already the JSON a client reads.
fn passes_json_through(codec: WireCodec) -> bool {
    #[cfg(feature = "json")]
    {
        codec == WireCodec::Json
    }
    #[cfg(not(feature = "json"))]
    {
        let _ = codec;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declines_are_kept_exactly_the_last_ones_first_forgotten_oldest() {
        let mut d = Declines::default();
        d.insert("_INBOX.c.1", 3);
        d.insert("_INBOX.c.1", 4); // a copy declined again: one place
        assert_eq!(d.get("_INBOX.c.1"), Some(4));
        assert_eq!(d.get("_INBOX.c.2"), None, "never declined: not said to be");
        d.remove("_INBOX.c.1");
        assert_eq!(d.get("_INBOX.c.1"), None, "taken since");
        for n in 0..Declines::KEPT + 1 {
            d.insert(&format!("_INBOX.d.{n}"), 1);
        }
        assert_eq!(d.get("_INBOX.d.0"), None, "the oldest forgotten");
        assert_eq!(d.get("_INBOX.d.1"), Some(1));
        assert!(d.seqs.len() <= Declines::KEPT && d.order.len() <= Declines::KEPT + 1);
    }

    #[test]
    fn the_prefetch_covers_the_window_of_recent_calls() {
        let us = Duration::from_micros;
        assert_eq!(prefetch(32, None), 32, "nothing timed yet: the most");
        assert_eq!(prefetch(32, Some(us(20))), 32);
        assert_eq!(prefetch(32, Some(us(1_000))), 4);
        assert_eq!(prefetch(32, Some(us(1_500))), 3);
        assert_eq!(prefetch(32, Some(us(4_000))), 1);
        assert_eq!(
            prefetch(32, Some(Duration::from_secs(10))),
            1,
            "at least one"
        );
        assert_eq!(prefetch(32, Some(Duration::ZERO)), 32);
        assert_eq!(
            prefetch(0, Some(us(20))),
            0,
            "0: only when a worker is free"
        );
        assert_eq!(prefetch(0, None), 0);
        assert_eq!(prefetch(2, Some(us(20))), 2);
    }
}
