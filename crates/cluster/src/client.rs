//! The caller's side: the pool's call surface over every host of a cluster.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::{HeaderMap, StatusCode, Subject};
use bytes::Bytes;
use futures_core::Stream;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use snakepit_core::{Affinity, CallOptions, Error, StreamItem};
use tokio::sync::{mpsc, oneshot, watch};

use crate::outbox::{self, Connects, Outbox, Resend};
use crate::wire::{self, CallMsg, Heartbeat, Reply, Subjects, WireError};
use crate::{host_lost, unavailable};

/// A host's message as the client reads it: results and chunks kept as
/// their JSON text, decoded once into what the caller asked for.
type Incoming = Reply<Box<RawValue>>;

/// What reaches a call's route: a host's message, or word that it reached
/// no host or could not be sent.
enum Arrival {
    Reply(Bytes),
    /// NATS found no subscriber for the call's subject.
    NoResponders,
    /// The NATS client refused the message; the call was not sent.
    Unsent(String),
}

/// Where a call's messages go, and the batch it was sent in (0: alone, or
/// not yet sent).
struct Route {
    tx: mpsc::Sender<Arrival>,
    batch: u64,
    /// Set when a message found the call's channel full: the host sent
    /// more than the protocol lets it (its stream window, one
    /// acknowledgement, one outcome), and the call fails rather than this
    /// process's memory growing with it.
    overrun: Arc<AtomicBool>,
}

/// Messages a one-shot call's host may send: an acknowledgement and the
/// outcome (or a decline), with room to spare.
const CALL_MESSAGES: usize = 8;

/// How long a client waits before it asks a host again about a call whose
/// first reply it may have lost, when nobody answered on the host's
/// subject (the host's own connection is being made again).
const ASK_AGAIN: Duration = Duration::from_millis(50);

impl Route {
    fn deliver(&self, arrival: Arrival) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(arrival) {
            self.overrun.store(true, Ordering::Relaxed);
        }
    }
}

/// A call waiting in the client's outbox for its host.
struct Outgoing {
    id: u64,
    subject: Subject,
    reply: String,
    headers: Option<HeaderMap>,
    payload: Bytes,
}

/// A result or chunk, into what the caller asked for (a result that does
/// not fit is the caller's `Error::Codec`, as with a local pool).
fn decode<R: DeserializeOwned>(v: &RawValue) -> Result<R, Error> {
    serde_json::from_str(v.get()).map_err(|e| {
        Error::Codec(snakepit_protocol::Error::InvalidPayload {
            codec: "json",
            detail: e.to_string(),
        })
    })
}

/// How a [`Client`] queues and routes calls; the names and defaults are the
/// pool's ([`snakepit_core::PoolConfig`]), and they mean the same across the
/// cluster.
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// How long a call may wait for a host with free capacity
    /// ([`Error::QueueTimeout`] after it).
    pub queue_timeout: Duration,
    /// Calls of this client waiting for free capacity at most; more fail at
    /// once with [`Error::PoolSaturated`].
    pub max_queue_size: usize,
    /// A host unheard of for this long (heartbeats, or the acknowledgement
    /// of a call just sent) is lost: its calls fail with the host-lost error
    /// ([`is_host_lost`](crate::is_host_lost)). Zero is `Error::Config` at
    /// [`Client::connect_with`]: every host would be lost at once.
    pub host_timeout: Duration,
    /// Sessions whose last host this client remembers (affinity); beyond
    /// it the record used least recently is forgotten, one for each new
    /// session (its next call goes anywhere).
    pub max_sessions: usize,
    /// Supplies the W3C `traceparent` sent with a call that has none in its
    /// [`CallOptions`] (for example `snakepit_telemetry::traceparent`).
    pub trace_context: Option<TraceContext>,
}

/// Produces the W3C `traceparent` of the caller's current trace context.
pub type TraceContext = Arc<dyn Fn() -> Option<String> + Send + Sync>;

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("queue_timeout", &self.queue_timeout)
            .field("max_queue_size", &self.max_queue_size)
            .field("host_timeout", &self.host_timeout)
            .field("max_sessions", &self.max_sessions)
            .field("trace_context", &self.trace_context.is_some())
            .finish()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            queue_timeout: Duration::from_secs(5),
            max_queue_size: 1000,
            host_timeout: Duration::from_millis(1500),
            max_sessions: 100_000,
            trace_context: None,
        }
    }
}

/// A host as its heartbeats describe it ([`Client::hosts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostInfo {
    /// The host's id.
    pub id: String,
    /// The host's process id.
    pub pid: u32,
    /// Calls it accepts at once: ready workers times calls per worker, plus
    /// `prefetch_per_worker` per worker (calls queued in its pool, taken so
    /// that no worker waits for its next call to cross the network).
    pub capacity: usize,
    /// Of those, free at its last heartbeat.
    pub free: usize,
}

struct HostEntry {
    info: HostInfo,
    last_seen: Instant,
    /// Unheard of for `host_timeout`: its calls in flight fail.
    lost: watch::Sender<bool>,
    /// Counts the times its heartbeats showed its connection to NATS made
    /// again ([`Heartbeat::conn`] grew within its current run): its calls
    /// in flight then, whose messages NATS may have dropped, fail.
    remade: watch::Sender<u64>,
    /// It said goodbye (a graceful shutdown: it finishes what it runs and
    /// keeps announcing itself until then), or it takes no calls (NATS
    /// found no subscriber): no call goes to it, and its calls in flight
    /// wait for their outcome, or for it to be lost.
    leaving: bool,
    /// Calls of this client on the host's current run (reserved, sent or
    /// running).
    mine: usize,
    /// Calls of this client still on runs of the id before the current one
    /// (leaving, or lost): they do not take the current run's room.
    mine_before: usize,
    /// Counts the runs that have been the id's current one: a
    /// [`Reservation`] made under another run is one of `mine_before`.
    run: u64,
    /// Calls of other clients on it, at its last heartbeat.
    others: usize,
    /// Of its capacity, the calls its workers run at once (the rest waits
    /// in its pool); as its capacity when the host does not say.
    running: usize,
    /// It declined a call since its last heartbeat.
    full: bool,
    /// The sequence number of its last heartbeat (of its current instance:
    /// each run of a host counts from 1 again).
    seq: u64,
    /// The instance its last heartbeat came from.
    instance: Option<String>,
    /// No worker of it can start: the error its pool gives calls at once
    /// (from its last heartbeat).
    broken: Option<WireError>,
    /// The subject its calls go to (built once, not per call).
    call: Subject,
    /// Its instances heard of (a host restarted under the same id, or two
    /// hosts given one id), each as its own heartbeats show it. One that
    /// falls silent while the id lives on, without its last goodbye, died
    /// with the calls it ran.
    instances: HashMap<String, Run>,
}

/// One run of a host id (one `serve`), as its heartbeats show it.
#[derive(Clone, Copy, Debug)]
struct Run {
    /// When it last spoke.
    seen: Instant,
    /// It said goodbye: it finishes what it runs, then leaves.
    bye: bool,
    /// Its goodbye was its last heartbeat: nothing of it runs any more.
    last: bool,
    /// Its connections to NATS, at its last heartbeat.
    conn: u64,
}

impl HostEntry {
    fn new(subjects: &Subjects, id: &str, pid: u32) -> Self {
        HostEntry {
            call: Subject::from(subjects.host_call(id)),
            info: HostInfo {
                id: id.to_owned(),
                pid,
                capacity: 0,
                free: 0,
            },
            last_seen: Instant::now(),
            lost: watch::channel(false).0,
            remade: watch::channel(0).0,
            leaving: false,
            mine: 0,
            mine_before: 0,
            run: 0,
            others: 0,
            running: 0,
            full: false,
            seq: 0,
            instance: None,
            instances: HashMap::new(),
            broken: None,
        }
    }

    /// It takes no call: lost, or leaving.
    fn gone(&self) -> bool {
        self.leaving || *self.lost.borrow()
    }

    /// Free capacity as this client sees it.
    fn room(&self) -> usize {
        if self.full {
            return 0;
        }
        self.info.capacity.saturating_sub(self.others + self.mine)
    }

    /// Workers free to start a call now, as this client sees it: a host
    /// with an idle worker is preferred to one whose free capacity is
    /// prefetch (a call queued behind another).
    fn idle(&self) -> usize {
        if self.full {
            return 0;
        }
        let running = match self.running {
            0 => self.info.capacity,
            n => n.min(self.info.capacity),
        };
        running.saturating_sub(self.others + self.mine)
    }

    fn reserve(&mut self, inner: &Arc<Inner>) -> Reservation {
        self.mine += 1;
        Reservation {
            inner: inner.clone(),
            host: self.info.id.clone(),
            pid: self.info.pid,
            call: self.call.clone(),
            run: self.run,
        }
    }
}

/// A unit of a host's capacity this client counts as taken, until the
/// call ends; its release lets the next queued call go.
struct Reservation {
    inner: Arc<Inner>,
    host: String,
    pid: u32,
    /// The host's call subject.
    call: Subject,
    /// The id's run it was made under ([`HostEntry::run`]).
    run: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(h) = self.inner.hosts.lock().unwrap().get_mut(&self.host) {
            if h.run == self.run {
                h.mine = h.mine.saturating_sub(1);
            } else {
                h.mine_before = h.mine_before.saturating_sub(1);
            }
            self.inner.room_epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.inner.wake(1);
    }
}

struct Inner {
    nats: async_nats::Client,
    cluster: String,
    subjects: Subjects,
    config: ClientConfig,
    inbox: String,
    next_id: AtomicU64,
    next_batch: AtomicU64,
    turn: AtomicU64,
    calls: Mutex<HashMap<u64, Route>>,
    outbox: Arc<Outbox<Outgoing>>,
    hosts: Mutex<HashMap<String, HostEntry>>,
    sessions: Mutex<SessionHosts>,
    waiters: Mutex<VecDeque<Waiter>>,
    /// Counts the times room came free (a release, a heartbeat with room):
    /// a waiting call that could not use the room there was is passed over
    /// until it changes.
    room_epoch: AtomicU64,
    /// Calls woken for room that have not looked for it yet.
    woken: AtomicUsize,
    queued: AtomicUsize,
    connected: watch::Sender<Link>,
    /// The connection was drained or closed for good (the client's reply
    /// subscription ended): no call can be sent or answered any more.
    closed: AtomicBool,
    /// The client's connection count ([`Link::epoch`]).
    connects: Connects,
    /// The last cancels sent: a cancel written into a connection that then
    /// drops (its path silent first) is lost with it, so the cancels of a
    /// connection before the current one are sent again.
    cancels: Mutex<Resend>,
    /// The host table was found full once (warned of once).
    hosts_full_warned: AtomicBool,
    /// Its background tasks, set once it exists (they reach it through a
    /// `Weak`, which does not upgrade while it is being built).
    tasks: OnceLock<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self.tasks.get().into_iter().flatten() {
            t.abort();
        }
    }
}

/// Session → the host that served it last, at most `cap` of them: a new
/// session beyond it takes the place of the one used least recently.
#[derive(Default)]
struct SessionHosts {
    /// Session → (host, the tick it was last set at).
    map: HashMap<String, (String, u64)>,
    /// Tick → session, oldest first.
    by_age: BTreeMap<u64, String>,
    tick: u64,
}

impl SessionHosts {
    fn get(&self, session: &str) -> Option<String> {
        self.map.get(session).map(|(h, _)| h.clone())
    }

    fn set(&mut self, session: &str, host: &str, cap: usize) {
        self.tick += 1;
        if let Some((_, at)) = self.map.get(session) {
            self.by_age.remove(at);
        } else if self.map.len() >= cap.max(1) {
            if let Some((_, oldest)) = self.by_age.pop_first() {
                self.map.remove(&oldest);
            }
        }
        self.map
            .insert(session.to_owned(), (host.to_owned(), self.tick));
        self.by_age.insert(self.tick, session.to_owned());
    }

    fn forget(&mut self, session: &str, host: &str) {
        if self.map.get(session).is_some_and(|(h, _)| h == host) {
            if let Some((_, at)) = self.map.remove(session) {
                self.by_age.remove(&at);
            }
        }
    }
}

/// Calls to a cluster's hosts, with the pool's methods and error type: code
/// written against [`snakepit_core::Pool`]'s `execute`, `execute_in_session`,
/// `execute_with`, `call` and `execute_stream` works against a `Client`.
///
/// Cheap to clone; the background tasks stop when the last clone is dropped.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use serde_json::json;
/// let nats = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let cluster = snakepit_cluster::Client::connect(&nats, "ml").await?;
/// let r = cluster.execute("compute", json!({"operation": "add", "a": 5, "b": 3})).await?;
/// let r = cluster.execute_in_session("user_123", "predict", json!({"x": 1})).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("cluster", &self.inner.cluster)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the cluster `cluster` on the NATS connection `nats`, with
    /// the default [`ClientConfig`].
    ///
    /// `Error::Config` when the connection's inbox prefix
    /// (`ConnectOptions::custom_inbox_prefix`) gives reply subjects no host
    /// answers (over 512 bytes with the call's token, a wildcard, a space
    /// or control character, a `$` system subject): every call would be
    /// ignored by every host.
    pub async fn connect(nats: &async_nats::Client, cluster: &str) -> Result<Client, Error> {
        Self::connect_with(nats, cluster, ClientConfig::default()).await
    }

    /// [`connect`](Self::connect) with a configuration.
    pub async fn connect_with(
        nats: &async_nats::Client,
        cluster: &str,
        config: ClientConfig,
    ) -> Result<Client, Error> {
        let subjects = Subjects::new(cluster)?;
        if config.host_timeout.is_zero() {
            return Err(Error::Config(
                "host_timeout must be above zero: every host would be lost at once".into(),
            ));
        }
        let inbox = nats.new_inbox();
        // The longest reply subjects this client makes (`<inbox>.<call>`,
        // `<inbox>.b<batch>`): a host ignores a call whose reply subject it
        // does not answer, and the call would fail as if its host had died.
        if !wire::answerable(&format!("{inbox}.b{}", u64::MAX)) {
            let shown: String = inbox.chars().take(80).collect();
            return Err(Error::Config(format!(
                "the NATS connection's inbox prefix gives reply subjects no host answers \
                 (over {} bytes, a wildcard, a space or control character, or a `$` system \
                 subject): inbox `{shown}`",
                wire::MAX_REPLY_SUBJECT
            )));
        }
        let replies = nats
            .subscribe(format!("{inbox}.*"))
            .await
            .map_err(|e| unavailable(cluster, format!("cannot subscribe: {e}")))?;
        let beats = nats
            .subscribe(subjects.heartbeat())
            .await
            .map_err(|e| unavailable(cluster, format!("cannot subscribe: {e}")))?;
        let connects = Connects::of(nats);
        let connected = Link {
            up: nats.connection_state() == State::Connected,
            epoch: connects.now(),
        };
        let tick = check_every(config.host_timeout);
        let outbox = Arc::new(Outbox::default());
        let inner = Arc::new(Inner {
            nats: nats.clone(),
            cluster: cluster.to_owned(),
            subjects,
            config,
            inbox,
            next_id: AtomicU64::new(1),
            next_batch: AtomicU64::new(1),
            outbox: outbox.clone(),
            turn: AtomicU64::new(0),
            calls: Mutex::new(HashMap::new()),
            hosts: Mutex::new(HashMap::new()),
            sessions: Mutex::new(SessionHosts::default()),
            waiters: Mutex::new(VecDeque::new()),
            room_epoch: AtomicU64::new(0),
            woken: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            connected: watch::channel(connected).0,
            closed: AtomicBool::new(false),
            connects,
            cancels: Mutex::default(),
            hosts_full_warned: AtomicBool::new(false),
            tasks: OnceLock::new(),
        });
        // The tasks hold the client weakly and end when they cannot reach
        // it: spawned only now that it exists. (Spawned while it was being
        // built, a task that woke first, at a heartbeat or the monitor's
        // first tick, found no client and ended for good: the client never
        // heard of a host, or never found one lost.)
        let weak = Arc::downgrade(&inner);
        let tasks = vec![
            tokio::spawn(send_calls(weak.clone(), outbox)).abort_handle(),
            tokio::spawn(route_replies(weak.clone(), replies)).abort_handle(),
            tokio::spawn(watch_hosts(weak.clone(), beats)).abort_handle(),
            tokio::spawn(monitor(weak, tick)).abort_handle(),
        ];
        let _ = inner.tasks.set(tasks);
        Ok(Client { inner })
    }

    /// Runs `command` with `args` on a host with free capacity.
    pub async fn execute(&self, command: &str, args: Value) -> Result<Value, Error> {
        self.execute_with(command, args, CallOptions::default())
            .await
    }

    /// Runs `command` in a session: on the host that served the session
    /// last when it has room, otherwise on another.
    pub async fn execute_in_session(
        &self,
        session_id: &str,
        command: &str,
        args: Value,
    ) -> Result<Value, Error> {
        self.execute_with(command, args, CallOptions::default().session(session_id))
            .await
    }

    /// Runs `command` with options: deadline, session, affinity, trace
    /// context. The deadline counts from now and covers the wait for a host.
    pub async fn execute_with(
        &self,
        command: &str,
        args: Value,
        options: CallOptions,
    ) -> Result<Value, Error> {
        let mut flight = self.start(command, args, &options, false, false).await?;
        decode(&flight.result().await?)
    }

    /// Runs `command` with typed arguments and result (as
    /// [`snakepit_core::Pool::call`]: the adapter's hooks are not applied).
    pub async fn call<A, R>(
        &self,
        command: &str,
        args: &A,
        options: CallOptions,
    ) -> Result<R, Error>
    where
        A: Serialize + ?Sized,
        R: DeserializeOwned,
    {
        let args = serde_json::to_value(args).map_err(|e| Error::Validation {
            command: command.to_owned(),
            message: format!("cannot encode the arguments: {e}"),
        })?;
        let mut flight = self.start(command, args, &options, true, false).await?;
        decode(&flight.result().await?)
    }

    /// Runs `command` and streams the chunks the worker sends before its
    /// final reply. Dropping the stream cancels the call. The host sends at
    /// most 256 chunks ahead of this stream's reader, so a reader that stops
    /// holds up the worker, not this process's memory.
    pub async fn execute_stream(
        &self,
        command: &str,
        args: Value,
        options: CallOptions,
    ) -> Result<ClusterStream, Error> {
        let flight = self.start(command, args, &options, false, true).await?;
        let items = futures_util::stream::unfold(Some(flight), |flight| async move {
            let mut flight = flight?;
            match flight.next().await {
                Ok(Reply::Chunk { v, .. }) => {
                    Some((decode(&v).map(StreamItem::Chunk), Some(flight)))
                }
                Ok(Reply::Ok { v, .. }) => Some((decode(&v).map(StreamItem::Done), None)),
                Ok(_) => None,
                Err(e) => Some((Err(e), None)),
            }
        });
        Ok(ClusterStream {
            items: Box::pin(items),
        })
    }

    /// The hosts this client hears from and may send calls to, with their
    /// capacity at their last heartbeat, sorted by id. A host found lost,
    /// or saying goodbye (shutting down, while its calls end), is left out.
    pub fn hosts(&self) -> Vec<HostInfo> {
        let hosts = self.inner.hosts.lock().unwrap();
        let mut v: Vec<HostInfo> = hosts
            .values()
            .filter(|h| !h.gone())
            .map(|h| h.info.clone())
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Every host's status, from the NATS service API: the hosts answer
    /// `$SRV.PING` for the service `snakepit-<cluster>` within `window`,
    /// then all are asked for their pool's figures at once, answering
    /// within `window` again: at most twice `window` in all, however many
    /// hosts answer.
    ///
    /// Each host named in the PING answers is asked once, however many
    /// answers name it. Of the names this client has not heard heartbeats
    /// from, at most [`MAX_HOSTS`] are asked (the first to answer; a
    /// warning in the log says when more were named), so a forged flood of
    /// PING answers cannot make one call of `status` send an unbounded
    /// number of requests; a host this client hears from is asked whenever
    /// it answers the PING.
    pub async fn status(&self, window: Duration) -> Result<Vec<Value>, Error> {
        let nats = &self.inner.nats;
        let cluster = &self.inner.cluster;
        let inbox = nats.new_inbox();
        let mut sub = nats
            .subscribe(inbox.clone())
            .await
            .map_err(|e| unavailable(cluster, e.to_string()))?;
        nats.publish_with_reply(format!("$SRV.PING.snakepit-{cluster}"), inbox, Bytes::new())
            .await
            .map_err(|e| unavailable(cluster, e.to_string()))?;
        // Anyone who may publish to this inbox can answer the PING, once or
        // many times, naming any host: each distinct name is kept once, and
        // of names this client has not heard heartbeats from at most
        // `MAX_HOSTS`, so a forged flood of answers neither grows this set
        // past that nor crowds out the hosts the client hears from.
        let mut hosts = std::collections::BTreeSet::new();
        let mut strangers = 0usize;
        let mut warned = false;
        let until = later(Instant::now(), window).into();
        while let Ok(Some(msg)) = tokio::time::timeout_at(until, sub.next()).await {
            let Ok(ping) = serde_json::from_slice::<Value>(&msg.payload) else {
                continue;
            };
            let Some(host) = ping["metadata"]["host"].as_str() else {
                continue;
            };
            // A name no host may have is no subject to ask.
            if wire::check_name("host id", host).is_err() || hosts.contains(host) {
                continue;
            }
            let heard = self.inner.hosts.lock().unwrap().contains_key(host);
            if !heard {
                if strangers >= MAX_HOSTS {
                    if !warned {
                        warned = true;
                        tracing::warn!(
                            cluster = %cluster,
                            "status: PING answers name more than {MAX_HOSTS} hosts this client has not heard from; the rest are not asked"
                        );
                    }
                    continue;
                }
                strangers += 1;
            }
            hosts.insert(host.to_owned());
        }
        let until = later(Instant::now(), window).into();
        let asks = hosts.iter().map(|host| {
            let subject = self.inner.subjects.host_status(host);
            async move {
                match tokio::time::timeout_at(until, nats.request(subject, Bytes::new())).await {
                    Ok(Ok(msg)) => serde_json::from_slice::<Value>(&msg.payload).ok(),
                    _ => None,
                }
            }
        });
        Ok(futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect())
    }

    /// The trace context the call carries: its options' `traceparent`, else
    /// the configured [`ClientConfig::trace_context`], else (with the
    /// `opentelemetry` feature) the context of the caller's current span.
    ///
    /// A trace context with a line break, which no NATS header can carry,
    /// is `Error::Validation` (the call is not sent): async-nats would
    /// panic on it, and the text often comes from a request the caller
    /// does not control.
    fn trace_headers(
        &self,
        command: &str,
        options: &CallOptions,
    ) -> Result<Option<HeaderMap>, Error> {
        let given = options
            .traceparent
            .clone()
            .or_else(|| self.inner.config.trace_context.as_ref().and_then(|f| f()));
        match given {
            Some(t) => {
                let value = t.parse::<async_nats::HeaderValue>().map_err(|_| {
                    Error::Validation {
                        command: command.to_owned(),
                        message: "the traceparent has a line break, which a NATS header cannot carry; the call was not sent".into(),
                    }
                })?;
                let mut h = HeaderMap::new();
                h.insert(wire::TRACEPARENT, value);
                Ok(Some(h))
            }
            #[cfg(feature = "opentelemetry")]
            None => Ok(crate::otel::current_headers()),
            #[cfg(not(feature = "opentelemetry"))]
            None => Ok(None),
        }
    }

    /// Sends the call to a host with free capacity (the session's host
    /// first), waiting in this client's queue while none has; a host that
    /// declines (it filled up meanwhile) or has gone is replaced by another.
    async fn start(
        &self,
        command: &str,
        args: Value,
        options: &CallOptions,
        typed: bool,
        stream: bool,
    ) -> Result<Flight, Error> {
        let inner = &self.inner;
        let submitted = Instant::now();
        let deadline = options.timeout.map(|t| later(submitted, t));
        let queue_deadline = later(submitted, inner.config.queue_timeout);
        let session = options.session_id.as_deref();
        let mut target = session.and_then(|s| inner.sessions.lock().unwrap().get(s));
        let headers = self.trace_headers(command, options)?;
        let mut msg = CallMsg {
            command: command.to_owned(),
            args,
            session: options.session_id.clone(),
            affinity: options.affinity.into(),
            timeout_ms: None,
            typed,
            stream,
            window: stream.then_some(wire::STREAM_WINDOW),
            reply: None,
            headers: None,
        };
        // Until a reservation of this call came to nothing (a decline, a
        // host gone): then it keeps its place at the front of the queue.
        let mut fresh = true;
        loop {
            inner.check_connection()?;
            // The wait for room ends at the call's deadline too, whichever
            // comes first: a deadline counts the queue wait.
            let wait_until = deadline.map_or(queue_deadline, |d| d.min(queue_deadline));
            let slot = match self
                .pick(&mut target, options.affinity, session, wait_until, fresh)
                .await
            {
                Err(Error::QueueTimeout(_)) if deadline.is_some_and(|d| d < queue_deadline) => {
                    return Err(Error::CallTimeout {
                        command: command.to_owned(),
                        timeout: options.timeout.unwrap_or_default(),
                    })
                }
                r => r?,
            };
            // The wait for room may have outlived the connection: the call
            // is not sent then (dropping `slot` passes its unit on).
            inner.check_connection()?;
            // Calls in flight fail when the connection goes, or comes back
            // as another: what was published to the client meanwhile is
            // lost.
            let epoch = inner.connects.now();
            let remade = inner.host_remade(&slot.host);
            let remade_at = *remade.borrow();
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Error::CallTimeout {
                        command: command.to_owned(),
                        timeout: options.timeout.unwrap_or_default(),
                    });
                }
                msg.timeout_ms = Some(left.as_millis().max(1) as u64);
            }
            let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
            let reply = format!("{}.{id}", inner.inbox);
            msg.reply = Some(reply.clone());
            let payload = Bytes::from(serde_json::to_vec(&msg).map_err(|e| Error::Validation {
                command: command.to_owned(),
                message: format!("cannot encode the call: {e}"),
            })?);
            // NATS counts the headers (the trace context) in the size.
            let max = inner.nats.max_payload();
            let size = payload.len() + headers.as_ref().map_or(0, wire::headers_len);
            if size > max {
                return Err(Error::Validation {
                    command: command.to_owned(),
                    message: format!(
                        "the call of {size} bytes exceeds the NATS server's max_payload of {max} bytes"
                    ),
                });
            }
            // Bounded by what the protocol lets the host send: a stream's
            // window of chunks ahead of its reader, plus the rest.
            let room = CALL_MESSAGES
                + if stream {
                    wire::STREAM_WINDOW as usize
                } else {
                    0
                };
            let (tx, mut rx) = mpsc::channel(room);
            let overrun = Arc::new(AtomicBool::new(false));
            inner.calls.lock().unwrap().insert(
                id,
                Route {
                    tx,
                    batch: 0,
                    overrun: overrun.clone(),
                },
            );
            let mut pending = Pending {
                inner: inner.clone(),
                id,
                host: slot.host.clone(),
                reply: reply.clone(),
                sent: false,
            };
            inner.outbox.push(Outgoing {
                id,
                subject: slot.call.clone(),
                reply: reply.clone(),
                headers: headers.clone(),
                payload,
            });
            pending.sent = true;
            // The host's first message, as long as the connection holds: a
            // lost connection fails the call at once, not a host timeout
            // later.
            let mut connected = inner.connected.subscribe();
            let first = tokio::select! {
                first = first_reply(&mut rx, inner.config.host_timeout) => Some(first),
                _ = connected.wait_for(|l| l.lost_since(epoch)) => None,
            };
            let first = match first {
                Some(first) => first,
                // The host's first reply may have been a decline that NATS
                // dropped with the connection: a call it declined never
                // ran, and goes on as any declined call.
                None => match inner.declined_meanwhile(&slot.host, &reply, &mut rx).await {
                    Some(declined) => Ok(Some(Arrival::Reply(declined))),
                    None => return Err(host_lost(
                        &slot.host,
                        slot.pid,
                        "the NATS connection was lost before the host acknowledged the call; it may or may not have run".into(),
                    )),
                },
            };
            let first = match first {
                Ok(Some(Arrival::NoResponders)) => {
                    // The host is gone (its subscription with it): the call
                    // reached nobody.
                    pending.sent = false;
                    inner.host_gone(&slot.host);
                    fresh = false;
                    continue;
                }
                Ok(Some(Arrival::Unsent(e))) => {
                    pending.sent = false;
                    return Err(unavailable(
                        &inner.cluster,
                        format!("cannot send the call: {e}"),
                    ));
                }
                Ok(Some(Arrival::Reply(m))) => match serde_json::from_slice::<Incoming>(&m) {
                    Ok(Reply::Declined { seq, .. }) => {
                        pending.sent = false;
                        inner.host_full(&slot.host, seq);
                        if target.as_deref() == Some(slot.host.as_str()) {
                            match options.affinity {
                                Affinity::FailFast => {
                                    return Err(Error::WorkerBusy {
                                        session_id: session.unwrap_or_default().to_owned(),
                                        worker_id: format!("host:{}", slot.host),
                                    })
                                }
                                Affinity::Strict => {}
                                _ => target = None,
                            }
                        }
                        fresh = false;
                        continue;
                    }
                    Ok(r) => r,
                    Err(_) => return Err(out_of_protocol(&slot.host, 0)),
                },
                Ok(None) => return Err(unavailable(&inner.cluster, "client closed".into())),
                Err(_) => {
                    return Err(host_lost(
                        &slot.host,
                        0,
                        format!(
                            "host {} did not acknowledge the call within {:?}; it may have died with it",
                            slot.host, inner.config.host_timeout
                        ),
                    ))
                }
            };
            if let Some(s) = session {
                inner
                    .sessions
                    .lock()
                    .unwrap()
                    .set(s, &slot.host, inner.config.max_sessions);
            }
            let lost = inner.host_lost_flag(&slot.host);
            pending.id = 0;
            return Ok(Flight {
                inner: inner.clone(),
                id,
                rx,
                overrun,
                first: Some(first),
                pid: slot.pid,
                host: slot.host.clone(),
                _slot: slot,
                reply,
                lost,
                connected,
                epoch,
                remade,
                remade_at,
                stream,
                chunks: 0,
                deadline: deadline.map(|d| later(d, inner.config.host_timeout)),
                command: command.to_owned(),
                timeout: options.timeout,
                session: options.session_id.clone(),
                finished: false,
                answered: false,
                taken: 0,
            });
        }
    }

    /// Reserves a unit of a host's free capacity, as this client sees it:
    /// the session's host when it has room (or, strict, by waiting for it),
    /// otherwise the host with the most room; waits in this client's FIFO
    /// (queue timeout, queue size) while no host has any.
    ///
    /// A call new to the client (`fresh`) goes behind the calls that wait
    /// (no overtaking); one that waited and found no room when woken, or
    /// whose reservation came to nothing (its host declined it or was
    /// gone), goes back to the front: it had its turn already. A call that
    /// was not woken keeps its place (one place in the queue for each
    /// waiting call, however often it looks).
    async fn pick(
        &self,
        target: &mut Option<String>,
        affinity: Affinity,
        session: Option<&str>,
        until: Instant,
        mut fresh: bool,
    ) -> Result<Reservation, Error> {
        let inner = &self.inner;
        // Its place in the queue, until it is woken.
        let mut waiting: Option<Waiting<'_>> = None;
        // Woken for room: it looks now, and is no longer counted as woken.
        let mut was_woken = false;
        loop {
            let room_left = {
                let mut hosts = inner.hosts.lock().unwrap();
                if std::mem::take(&mut was_woken) {
                    inner.woken.fetch_sub(1, Ordering::AcqRel);
                }
                if fresh && inner.queued.load(Ordering::Acquire) > 0 {
                    waiting = Some(inner.enqueue(true, None));
                    total_room(&hosts)
                } else {
                    if let Some(t) = target.as_deref() {
                        match hosts.get_mut(t).filter(|h| !h.gone()) {
                            Some(h) if h.room() > 0 => {
                                let r = h.reserve(inner);
                                return Ok(self.pass_on(&hosts, fresh, r));
                            }
                            Some(_) if affinity == Affinity::FailFast => {
                                return Err(Error::WorkerBusy {
                                    session_id: session.unwrap_or_default().to_owned(),
                                    worker_id: format!("host:{t}"),
                                })
                            }
                            Some(_) if affinity == Affinity::Strict => {}
                            _ => *target = None,
                        }
                    }
                    let mut declined = None;
                    if target.is_none() {
                        // Idle workers first, then the most room.
                        let key = |h: &HostEntry| (h.idle(), h.room());
                        let most = hosts
                            .values()
                            .filter(|h| !h.gone())
                            .map(key)
                            .max()
                            .unwrap_or((0, 0));
                        if most.1 > 0 {
                            // Hosts with equal room take turns.
                            let turn = inner.turn.fetch_add(1, Ordering::Relaxed);
                            let mut best: Vec<&mut HostEntry> = hosts
                                .values_mut()
                                .filter(|h| !h.gone() && key(h) == most)
                                .collect();
                            let n = best.len();
                            let r = best[(turn % n as u64) as usize].reserve(inner);
                            return Ok(self.pass_on(&hosts, fresh, r));
                        }
                        // Every host there is says none of its workers can
                        // start: the call fails at once, as a pool's would.
                        if let Some(e) = all_broken(&hosts) {
                            return Err(e);
                        }
                    } else {
                        // Strict, its host full, while other hosts have
                        // room: the calls behind it are woken for that room,
                        // and it is passed over until room comes free again.
                        let room = total_room(&hosts);
                        if room > 0 {
                            declined = Some(inner.room_epoch.load(Ordering::Acquire));
                            inner.wake_for(room);
                        }
                    }
                    // Queued while the hosts' lock is held: a release or an
                    // announcement of room (both update the hosts under this
                    // lock, then wake) cannot slip between the look and the wait.
                    if waiting.is_none() {
                        waiting = Some(inner.enqueue(fresh, declined));
                    }
                    0
                }
            };
            // There is room, but calls wait ahead of this one: the first
            // of them takes it (unless woken for it already).
            if room_left > 0 {
                inner.wake_for(room_left);
            }
            was_woken = self.wait_room(&mut waiting, until, fresh).await?;
            fresh = false;
        }
    }

    /// A call that waited took its unit: if room is left, the next
    /// waiting call is woken for it (calls that have not waited queue
    /// behind those that do, so the turn must be passed on).
    fn pass_on(
        &self,
        hosts: &HashMap<String, HostEntry>,
        fresh: bool,
        r: Reservation,
    ) -> Reservation {
        if !fresh {
            self.inner.wake_for(total_room(hosts));
        }
        r
    }

    /// Waits (in this client's FIFO, at the place `waiting`) until a host
    /// has room again: true when woken for it (`waiting` is then taken),
    /// false when it should look again unwoken. A call new to the queue
    /// (`fresh`) is refused when `max_queue_size` calls wait already; one
    /// that waited and looks again keeps its place. The wait ends with the
    /// unavailable error when the connection goes down or is closed.
    async fn wait_room(
        &self,
        waiting: &mut Option<Waiting<'_>>,
        until: Instant,
        fresh: bool,
    ) -> Result<bool, Error> {
        let inner = &self.inner;
        let queued = inner.queued.fetch_add(1, Ordering::AcqRel);
        let _left = Queued(&inner.queued);
        if fresh && queued >= inner.config.max_queue_size {
            return Err(Error::PoolSaturated { queued });
        }
        if Instant::now() >= until {
            return Err(Error::QueueTimeout(inner.config.queue_timeout));
        }
        let Some(w) = waiting.as_mut() else {
            return Ok(false);
        };
        // The poll bounds the wait when room appears unannounced (a host
        // heard of for the first time, a reservation of another task
        // returned without a wake-up reaching this one).
        let poll = check_every(inner.config.host_timeout);
        // One timer: the poll, or the queue deadline when it comes first.
        let wake_at = until.min(later(Instant::now(), poll));
        let mut connected = inner.connected.subscribe();
        tokio::select! {
            r = &mut w.rx => {
                *waiting = None;
                Ok(r.is_ok())
            }
            _ = connected.wait_for(|l| !l.up) => Err(inner.check_connection().err().unwrap_or_else(|| {
                unavailable(
                    &inner.cluster,
                    "the NATS connection is down; calls resume when it reconnects".into(),
                )
            })),
            _ = tokio::time::sleep_until(wake_at.into()) => match Instant::now() >= until {
                true => Err(Error::QueueTimeout(inner.config.queue_timeout)),
                false => Ok(false),
            },
        }
    }
}

/// The start failure of the hosts that take calls, when there is at least
/// one and each of them says none of its workers can start (the error of
/// the first by id, so that it does not change from call to call).
fn all_broken(hosts: &HashMap<String, HostEntry>) -> Option<Error> {
    let mut live = hosts.iter().filter(|(_, h)| !h.gone()).peekable();
    live.peek()?;
    let mut first: Option<(&String, &WireError)> = None;
    for (id, h) in live {
        let e = h.broken.as_ref()?;
        if first.is_none_or(|(f, _)| id < f) {
            first = Some((id, e));
        }
    }
    // A start failure names no command.
    first.map(|(_, e)| e.clone().into_error(""))
}

/// The room of the hosts that take calls, as this client sees it.
fn total_room(hosts: &HashMap<String, HostEntry>) -> usize {
    hosts
        .values()
        .filter(|h| !h.gone())
        .map(HostEntry::room)
        .fold(0, usize::saturating_add)
}

/// A waiting call's place in the client's queue.
struct Waiter {
    tx: oneshot::Sender<()>,
    /// The room epoch at which it found room it could not use (a `Strict`
    /// call whose host is full): no wake-up goes to it until the epoch moves.
    declined: Option<u64>,
}

/// A waiting call's wake-up. Woken but leaving without looking (its timer
/// came at the same time, its caller went): no longer counted as woken.
struct Waiting<'a> {
    rx: oneshot::Receiver<()>,
    woken: &'a AtomicUsize,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.rx.try_recv().is_ok() {
            self.woken.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Removes a call's reply route unless it was handed to a [`Flight`]; if
/// the call was sent and the caller left before the host answered, tells
/// the host to cancel it.
struct Pending {
    inner: Arc<Inner>,
    id: u64,
    host: String,
    reply: String,
    sent: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.id == 0 {
            return;
        }
        self.inner.calls.lock().unwrap().remove(&self.id);
        if self.sent {
            self.inner
                .send_cancel(&self.host, std::mem::take(&mut self.reply));
        }
    }
}

impl Inner {
    /// The unavailable error when no call can be sent: the connection is
    /// down, or was drained or closed for good.
    fn check_connection(&self) -> Result<(), Error> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(self.closed_error());
        }
        if self.nats.connection_state() != State::Connected {
            return Err(unavailable(
                &self.cluster,
                "the NATS connection is down; calls resume when it reconnects".into(),
            ));
        }
        // The connection is what counts: the `connected` flag, which wakes
        // the calls in flight when the connection goes, follows it only
        // once a monitor tick; a call made as the connection comes back
        // sets it now rather than fail for up to a tick.
        let now = Link {
            up: true,
            epoch: self.connects.now(),
        };
        if *self.connected.borrow() != now {
            self.connected
                .send_if_modified(|c| std::mem::replace(c, now) != now);
        }
        Ok(())
    }

    fn closed_error(&self) -> Error {
        unavailable(
            &self.cluster,
            "the NATS connection was drained or closed; connect a new client".into(),
        )
    }

    /// Sends calls to one host: alone as they were encoded, or several in
    /// one message ([`wire::batch`]) whose reply subject stands for all of
    /// them. A call that cannot be sent hears so from its route.
    async fn send_run(&self, subject: Subject, run: Vec<Outgoing>) {
        let sent = if let [one] = run.as_slice() {
            let (reply, payload) = (one.reply.clone(), one.payload.clone());
            match &one.headers {
                Some(h) => {
                    self.nats
                        .publish_with_reply_and_headers(subject, reply, h.clone(), payload)
                        .await
                }
                None => self.nats.publish_with_reply(subject, reply, payload).await,
            }
        } else {
            let batch = self.next_batch.fetch_add(1, Ordering::Relaxed);
            {
                let mut calls = self.calls.lock().unwrap();
                for o in &run {
                    if let Some(route) = calls.get_mut(&o.id) {
                        route.batch = batch;
                    }
                }
            }
            let payload = wire::batch(run.iter().map(|o| (&o.payload[..], o.headers.as_ref())));
            let reply = wire::batch_reply(&self.inbox, batch);
            self.nats
                .publish_with_reply(subject, reply, payload.into())
                .await
        };
        if let Err(e) = sent {
            let calls = self.calls.lock().unwrap();
            for o in &run {
                if let Some(route) = calls.get(&o.id) {
                    route.deliver(Arrival::Unsent(e.to_string()));
                }
            }
        }
    }

    /// What tells when `host` made its connection to NATS again
    /// (`HostEntry::remade`), as it is now.
    fn host_remade(&self, host: &str) -> watch::Receiver<u64> {
        let hosts = self.hosts.lock().unwrap();
        match hosts.get(host) {
            Some(entry) => entry.remade.subscribe(),
            None => watch::channel(0).1,
        }
    }

    /// The flag that turns true when `host` is lost.
    fn host_lost_flag(&self, host: &str) -> watch::Receiver<bool> {
        let mut hosts = self.hosts.lock().unwrap();
        let entry = match hosts.get_mut(host) {
            Some(entry) => entry,
            None => hosts
                .entry(host.to_owned())
                .or_insert_with(|| HostEntry::new(&self.subjects, host, 0)),
        };
        entry.last_seen = Instant::now();
        entry.lost.subscribe()
    }

    /// The host has no subscription for calls any more (NATS said no
    /// responders): it is leaving, or dead. No call goes to it; its calls
    /// in flight end with their outcome if it is leaving, or fail once it
    /// has been unheard of for `host_timeout` if it is dead.
    fn host_gone(&self, host: &str) {
        if let Some(h) = self.hosts.lock().unwrap().get_mut(host) {
            h.leaving = true;
        }
    }

    /// After the client's connection was lost before `host`'s first reply
    /// to the call with reply subject `reply`: that reply's JSON if it was
    /// a decline. One that came is taken; otherwise the host is asked
    /// ([`wire::ask`]) once the connection is back, and its answer awaited,
    /// within `host_timeout`. A host whose own connection is being made
    /// again (nobody answers on its subject yet) is asked again until
    /// then, and a decline it sends again meanwhile is taken too. `None`:
    /// the call may have run (the host took it, or never had it, or does
    /// not answer in time).
    async fn declined_meanwhile(
        &self,
        host: &str,
        reply: &str,
        rx: &mut mpsc::Receiver<Arrival>,
    ) -> Option<Bytes> {
        let is_decline = |m: &[u8]| {
            matches!(
                serde_json::from_slice::<Incoming>(m),
                Ok(Reply::Declined { .. })
            )
        };
        while let Ok(arrival) = rx.try_recv() {
            if let Arrival::Reply(m) = arrival {
                if is_decline(&m) {
                    return Some(m);
                }
            }
        }
        let until = tokio::time::Instant::now() + self.config.host_timeout;
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return None;
            }
            let ask = self.nats.request(
                self.subjects.host_cancel(host),
                Bytes::from(wire::ask(reply)),
            );
            let answer = tokio::select! {
                answer = tokio::time::timeout_at(until, ask) => answer,
                arrival = rx.recv() => return match arrival {
                    Some(Arrival::Reply(m)) if is_decline(&m) => Some(m),
                    // The host's acknowledgement or outcome: it took the call.
                    _ => None,
                },
            };
            match answer {
                Ok(Ok(m)) => return is_decline(&m.payload).then_some(m.payload),
                // No responders: NATS is there, the host is away, making
                // its connection again. Asked again shortly.
                Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    let again = tokio::time::Instant::now() + ASK_AGAIN;
                    tokio::time::sleep_until(again.min(until)).await;
                }
                // Any other failure (this client's connection is down
                // again, say) ends the call at once, as a lost connection
                // does; so does no answer in time.
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// The host declined a call: no more to it until it says it has room
    /// (unless it already has, in a heartbeat sent after the decline).
    fn host_full(&self, host: &str, seq: u64) {
        if let Some(h) = self.hosts.lock().unwrap().get_mut(host) {
            if h.seq <= seq {
                h.full = true;
            }
        }
    }

    fn send_cancel(&self, host: &str, reply: String) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let subject = Subject::from(self.subjects.host_cancel(host));
        let reply = Bytes::from(reply);
        self.cancels
            .lock()
            .unwrap()
            .keep(self.connects.now(), subject.clone(), reply.clone());
        let nats = self.nats.clone();
        rt.spawn(async move {
            let _ = nats.publish(subject, reply).await;
        });
    }

    /// Sends again the cancels sent over connections before `epoch` (the
    /// client's connection was made again: they may have gone down with
    /// the one they were written into). A host ignores a cancel for a call
    /// it no longer runs. They stay kept: a host away now gets them again
    /// when it is back ([`resend_cancels_to`](Self::resend_cancels_to)).
    fn resend_cancels(&self, epoch: u64) {
        let again = self.cancels.lock().unwrap().renew(epoch);
        self.publish_again(again);
    }

    /// Sends again the cancels kept that went to `host`, whose connection
    /// was made again: those it was sent while it was away are lost (NATS
    /// keeps nothing for a subscriber that is gone). Cancels of calls it no
    /// longer runs are ignored there.
    fn resend_cancels_to(&self, host: &str) {
        let again = self
            .cancels
            .lock()
            .unwrap()
            .to(&self.subjects.host_cancel(host));
        self.publish_again(again);
    }

    /// Publishes `again`, kept messages sent once already, in order.
    fn publish_again(&self, again: Vec<(Subject, Bytes)>) {
        if again.is_empty() {
            return;
        }
        let nats = self.nats.clone();
        tokio::spawn(async move {
            for (subject, reply) in again {
                let _ = nats.publish(subject, reply).await;
            }
        });
    }

    /// A place at the back of the queue (a call new to it), or at the
    /// front (one that had its turn).
    fn enqueue(&self, back: bool, declined: Option<u64>) -> Waiting<'_> {
        let (tx, rx) = oneshot::channel();
        let mut waiters = self.waiters.lock().unwrap();
        let w = Waiter { tx, declined };
        match back {
            true => waiters.push_back(w),
            false => waiters.push_front(w),
        }
        Waiting {
            rx,
            woken: &self.woken,
        }
    }

    /// Wakes the first `n` waiting calls, for `n` units of room that
    /// came free, passing over those that could not use the room as it is.
    fn wake(&self, mut n: usize) {
        let epoch = self.room_epoch.load(Ordering::Acquire);
        let mut waiters = self.waiters.lock().unwrap();
        let mut i = 0;
        while n > 0 && i < waiters.len() {
            if waiters[i].declined == Some(epoch) {
                if waiters[i].tx.is_closed() {
                    waiters.remove(i);
                } else {
                    i += 1;
                }
                continue;
            }
            let Some(w) = waiters.remove(i) else { break };
            // Counted before the send: the call may look at once.
            self.woken.fetch_add(1, Ordering::AcqRel);
            if w.tx.send(()).is_ok() {
                n -= 1;
            } else {
                self.woken.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Wakes waiting calls for `room` units of room, less the calls woken
    /// already that have not looked yet. Waking one more than there is
    /// room for would let it overtake the one woken first: the call woken
    /// last often runs first (a runtime runs the task it just woke next),
    /// and the first, finding no room, would wait again.
    fn wake_for(&self, room: usize) {
        let n = room.saturating_sub(self.woken.load(Ordering::Acquire));
        if n > 0 {
            self.wake(n);
        }
    }
}

/// Sends the calls in the outbox: those to one host together, in one
/// message when there are several.
async fn send_calls(inner: Weak<Inner>, outbox: Arc<Outbox<Outgoing>>) {
    loop {
        outbox.ready().await;
        let Some(inner) = inner.upgrade() else { return };
        let max = inner.nats.max_payload().saturating_sub(64).max(1);
        for mine in outbox::groups(outbox.take(), |a, b| a.subject == b.subject) {
            let subject = mine[0].subject.clone();
            let size = |o: &Outgoing| wire::batched_len(&o.payload, o.headers.as_ref());
            for run in outbox::runs(mine, max, size, 0) {
                inner.send_run(subject.clone(), run).await;
            }
        }
    }
}

/// Hands each host's message to the calls it is for.
async fn route_replies(inner: Weak<Inner>, mut replies: async_nats::Subscriber) {
    while let Some(msg) = replies.next().await {
        let Some(inner) = inner.upgrade() else { return };
        let Some(token) = msg.subject.rsplit('.').next() else {
            continue;
        };
        let no_responders = msg.status == Some(StatusCode::NO_RESPONDERS);
        if let Ok(id) = token.parse::<u64>() {
            let arrival = match no_responders {
                true => Arrival::NoResponders,
                false => Arrival::Reply(msg.payload),
            };
            if let Some(route) = inner.calls.lock().unwrap().get(&id) {
                route.deliver(arrival);
            }
        } else if token == wire::REPLIES {
            let Ok(replies) = wire::parse_replies(&msg.payload) else {
                continue;
            };
            let calls = inner.calls.lock().unwrap();
            for (token, reply) in replies {
                let route = token.parse::<u64>().ok().and_then(|id| calls.get(&id));
                if let Some(route) = route {
                    let bytes = msg.payload.slice_ref(reply.get().as_bytes());
                    route.deliver(Arrival::Reply(bytes));
                }
            }
        } else if let Some(batch) = token.strip_prefix('b') {
            // A batch of calls reached no host: each of its calls hears so.
            let batch = batch.parse::<u64>().unwrap_or(0);
            if no_responders && batch > 0 {
                for route in inner.calls.lock().unwrap().values() {
                    if route.batch == batch {
                        route.deliver(Arrival::NoResponders);
                    }
                }
            }
        }
    }
    // The subscription ends only when the connection was drained or closed
    // for good (it outlives reconnects). async-nats still reports the state
    // `Connected` then, so the client says it itself: calls in flight fail
    // now, not a host timeout later, and new calls fail at once.
    if let Some(inner) = inner.upgrade() {
        inner.closed.store(true, Ordering::Relaxed);
        inner.connected.send_modify(|l| l.up = false);
    }
}

async fn watch_hosts(inner: Weak<Inner>, mut beats: async_nats::Subscriber) {
    while let Some(msg) = beats.next().await {
        let Some(inner) = inner.upgrade() else { return };
        let Ok(mut hb) = serde_json::from_slice::<Heartbeat>(&msg.payload) else {
            continue;
        };
        // A start failure is a few lines of text: one in a heartbeat over
        // 64 KiB (a hostile publisher) is not kept for every host id; and
        // it is a start failure, never another error that calls would get.
        if msg.payload.len() > 64 << 10 || hb.broken.as_ref().is_some_and(|e| !e.is_start_failure())
        {
            hb.broken = None;
        }
        // A host id no host may have (hosts check theirs) names no subject
        // a call can go to: not a host, whoever sent it.
        if wire::check_name("host id", &hb.host).is_err() {
            continue;
        }
        {
            let mut hosts = inner.hosts.lock().unwrap();
            // Heartbeats under endless new ids (a hostile or broken
            // publisher) must not grow the table without bound: an id not
            // yet known waits until some entry has been forgotten.
            if hosts.len() >= MAX_HOSTS && !hosts.contains_key(&hb.host) {
                if !inner.hosts_full_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        cluster = %inner.cluster,
                        "heartbeats from more than {MAX_HOSTS} host ids: new ids are ignored until known ones fall silent"
                    );
                }
                continue;
            }
            let known = hosts.contains_key(&hb.host);
            let entry = hosts
                .entry(hb.host.clone())
                .or_insert_with(|| HostEntry::new(&inner.subjects, &hb.host, hb.pid));
            entry.last_seen = Instant::now();
            // Whether the heartbeat speaks for the id: from its current run
            // (or from a host that does not name its runs), not from an
            // earlier run still saying goodbye while a new one serves.
            let current = !known
                || entry.instance.is_none()
                || hb.instance.is_none()
                || entry.instance == hb.instance
                || !hb.bye;
            if let Some(instance) = &hb.instance {
                if entry.instances.len() < MAX_INSTANCES || entry.instances.contains_key(instance) {
                    let seen = entry.last_seen;
                    let run = entry.instances.entry(instance.clone()).or_insert(Run {
                        seen,
                        bye: false,
                        last: false,
                        conn: hb.conn,
                    });
                    // The run's connection made again: what NATS had for
                    // the host and from it meanwhile may be lost, with the
                    // calls then in flight there (the current run's: an
                    // earlier run's calls get their cancels again).
                    if run.conn != 0 && hb.conn > run.conn {
                        if known && entry.instance == hb.instance {
                            entry.remade.send_modify(|n| *n += 1);
                        }
                        inner.resend_cancels_to(&hb.host);
                    }
                    // The count as the run says it now, not the highest
                    // ever heard: one forged heartbeat far ahead would
                    // otherwise hide every later reconnect of the run. (A
                    // forged count costs the run's streams once, as any
                    // forged heartbeat could; the run's next heartbeat sets
                    // it right.)
                    *run = Run {
                        seen,
                        bye: hb.bye,
                        last: hb.last,
                        conn: if hb.conn == 0 { run.conn } else { hb.conn },
                    };
                }
            }
            if hb.bye {
                // Leaving, not lost: the calls it runs still end with their
                // outcome, and it goes on saying goodbye until they have.
                // An earlier run's goodbye leaves the current run serving.
                if current {
                    entry.leaving = true;
                }
                continue;
            }
            entry.leaving = false;
            if *entry.lost.borrow() {
                entry.lost = watch::channel(false).0;
            }
            entry.info.pid = hb.pid;
            entry.broken = hb.broken.take();
            // No host has more room than this: a heartbeat claiming more
            // (broken or hostile) cannot make the sums overflow.
            entry.info.capacity = hb.capacity.min(MAX_CAPACITY);
            entry.running = hb.running.min(MAX_CAPACITY);
            entry.info.free = hb.free.min(MAX_CAPACITY);
            // A new run: this client's calls so far are on the runs before.
            if known && hb.instance.is_some() && entry.instance != hb.instance {
                entry.run += 1;
                entry.mine_before += std::mem::take(&mut entry.mine);
            }
            // What runs there beyond this client's calls is other clients'.
            entry.others =
                (entry.info.capacity.saturating_sub(entry.info.free)).saturating_sub(entry.mine);
            entry.full = false;
            if hb.free > 0 {
                inner.room_epoch.fetch_add(1, Ordering::AcqRel);
            }
            // A new run of the host counts its heartbeats (and the
            // sequence numbers of its declines) from 1 again.
            // Within a run, the count moves forward one heartbeat at a time:
            // a jump past MAX_SEQ_STEP either way is no heartbeat of that
            // run (a forged one far ahead would make every later decline
            // look stale), and is not taken. A smaller step is taken either
            // way, so the run's own next heartbeat sets right a forged
            // count within the step (kept as the highest, it would hold for
            // that many heartbeats). A count kept too low only makes
            // declines count.
            if !known || (hb.instance.is_some() && entry.instance != hb.instance) {
                entry.instance = hb.instance.clone();
                entry.seq = hb.seq;
            } else if hb.seq.abs_diff(entry.seq) <= MAX_SEQ_STEP {
                entry.seq = hb.seq;
            }
        }
        if hb.free > 0 {
            inner.wake_for(hb.free.min(MAX_CAPACITY));
        }
    }
}

/// The most room a client believes one host has (calls it runs at once
/// plus prefetch): more than any real host, and small enough that the sums
/// over thousands of hosts cannot overflow.
const MAX_CAPACITY: usize = 1 << 20;

/// The most a host's heartbeat count may move forward at once (a host
/// silent for longer is forgotten, and starts again from its next one).
const MAX_SEQ_STEP: u64 = 10_000;

/// The most instances of one host id a client keeps track of.
const MAX_INSTANCES: usize = 16;

/// The most host ids a client keeps track of (a host it has not heard of
/// for 20 host timeouts is forgotten); also the most hosts it has not
/// heard from that one [`Client::status`] asks.
pub const MAX_HOSTS: usize = 4096;

/// How late a timer of the client may fire before the client counts the
/// time as time it did not run (its runtime blocked by a caller's code,
/// its process stopped, its machine starved): no message was read then,
/// so a host's silence over that time says nothing of the host.
fn stalled_after(host_timeout: Duration) -> Duration {
    check_every(host_timeout)
}

/// How many times a wait that ended late goes on ([`first_reply`],
/// [`sleep_while_running`]): once is enough to read what came while the
/// client did not run; a few more cover stalls in a row, and bound the
/// wait on a client so starved that its every timer is late.
const STALL_EXTENSIONS: usize = 3;

/// The first message of a call's host, waited for `host_timeout` of the
/// client's own running time: a wait that ends late (the client did not
/// run for a while) goes on for as long as it was late, at most
/// `host_timeout` more, so that what the host sent meanwhile, read once the
/// client runs again, is taken rather than the call failing for a silence
/// nobody listened to. `Err` when nothing came.
async fn first_reply(
    rx: &mut mpsc::Receiver<Arrival>,
    host_timeout: Duration,
) -> Result<Option<Arrival>, ()> {
    let mut wait = host_timeout;
    for _ in 0..=STALL_EXTENSIONS {
        let until = later(Instant::now(), wait);
        if let Ok(got) = tokio::time::timeout_at(until.into(), rx.recv()).await {
            return Ok(got);
        }
        let late = until.elapsed();
        if late <= stalled_after(host_timeout) {
            break;
        }
        wait = late.min(host_timeout);
    }
    Err(())
}

/// Sleeps until `until`, and then, if the client did not run for a while
/// before it woke (it woke late), for as long as it was late (at most
/// `host_timeout`), so that what came meanwhile is read first.
async fn sleep_while_running(until: Instant, host_timeout: Duration) {
    let mut until = until;
    for _ in 0..=STALL_EXTENSIONS {
        tokio::time::sleep_until(until.into()).await;
        let late = until.elapsed();
        if late <= stalled_after(host_timeout) {
            return;
        }
        until = later(Instant::now(), late.min(host_timeout));
    }
}

/// Marks hosts unheard of for `host_timeout` as lost, and follows the NATS
/// connection's state. Time the client did not run (a tick that comes
/// late: its runtime was blocked, its process stopped) does not count as
/// a host's silence: the heartbeats sent meanwhile wait to be read.
async fn monitor(inner: Weak<Inner>, tick: Duration) {
    let mut every = tokio::time::interval(tick);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let due = every.tick().await;
        let late = due.elapsed();
        let Some(inner) = inner.upgrade() else { return };
        let link = Link {
            up: !inner.closed.load(Ordering::Relaxed)
                && inner.nats.connection_state() == State::Connected,
            epoch: inner.connects.now(),
        };
        inner
            .connected
            .send_if_modified(|c| std::mem::replace(c, link) != link);
        if link.up {
            inner.resend_cancels(link.epoch);
        }
        let now = Instant::now();
        let stalled = match late > stalled_after(inner.config.host_timeout) {
            true => late,
            false => Duration::ZERO,
        };
        let mut hosts = inner.hosts.lock().unwrap();
        for h in hosts.values_mut() {
            if !stalled.is_zero() {
                h.last_seen = later(h.last_seen, stalled).min(now);
                for run in h.instances.values_mut() {
                    run.seen = later(run.seen, stalled).min(now);
                }
            }
            if now.duration_since(h.last_seen) > inner.config.host_timeout {
                h.lost.send_if_modified(|l| !std::mem::replace(l, true));
            }
            // An instance silent for the host timeout while its id lives on
            // (restarted after a crash): the calls it ran are lost. The
            // client cannot tell which instance runs a call, so every call
            // in flight on the id hears so; the next ones go to the living.
            let timeout = inner.config.host_timeout;
            let mut died = false;
            h.instances.retain(|_, run| {
                let silent = now.duration_since(run.seen) > timeout;
                // Silent after its goodbye, but before its last one: calls
                // of it were still running.
                died |= silent && !(run.bye && run.last);
                !silent
            });
            if died && !*h.lost.borrow() {
                h.lost.send_replace(true);
                h.lost = watch::channel(false).0;
            }
        }
        hosts.retain(|_, h| {
            now.duration_since(h.last_seen) < inner.config.host_timeout.saturating_mul(20)
        });
    }
}

/// A call's failure when its host sent what the protocol does not have it
/// send.
fn out_of_protocol(host: &str, pid: u32) -> Error {
    host_lost(
        host,
        pid,
        "the host answered out of protocol; the call may or may not have run".into(),
    )
}

/// A call's failure when the client's connection to NATS went, or was
/// made again, while the call ran.
fn connection_lost(host: &str, pid: u32) -> Error {
    host_lost(
        host,
        pid,
        "the NATS connection was lost while the call ran; it may or may not have run".into(),
    )
}

/// The client's NATS connection as the calls in flight watch it: up or
/// not, and how many times it has connected, so that a reconnect quicker
/// than the monitor's check (async-nats tries the first one at once) still
/// fails the calls whose replies it may have lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Link {
    up: bool,
    /// The connections made ([`Connects`]).
    epoch: u64,
}

impl Link {
    /// Whether a call sent over connection `epoch` may have lost what was
    /// sent to it: the connection is down, or another one has been made.
    fn lost_since(&self, epoch: u64) -> bool {
        !self.up || self.epoch > epoch
    }
}

/// How often the client checks what it is not told of (its connection's
/// state, the hosts' heartbeats, room for a queued call): a sixth of the
/// host timeout, and at least every quarter second, so that a lost
/// connection fails calls at once however long the host timeout.
fn check_every(host_timeout: Duration) -> Duration {
    (host_timeout / 6).clamp(Duration::from_millis(10), Duration::from_millis(250))
}

/// A host's error as the caller's: a call timeout carries the caller's own
/// `timeout`, counted from submission, not the time left when the call was
/// sent, which is the one the host was given. A call sent without one keeps
/// the host's: the default deadline of its pool.
fn host_error(e: Box<WireError>, command: &str, timeout: Option<Duration>) -> Error {
    match (e.into_error(command), timeout) {
        (Error::CallTimeout { command, .. }, Some(timeout)) => {
            Error::CallTimeout { command, timeout }
        }
        (other, _) => other,
    }
}

/// What a [`Flight`] waited for brought.
enum Got {
    /// Its end: the outcome, or why none will come.
    Done(Result<Incoming, Error>),
    /// A message from its host.
    Reply(Bytes),
    /// Its host made its connection to NATS again.
    Remade,
}

/// A call a host acknowledged: its replies, the host's liveness, the
/// connection's state and the deadline.
struct Flight {
    inner: Arc<Inner>,
    id: u64,
    rx: mpsc::Receiver<Arrival>,
    /// The host sent more than the protocol lets it ([`Route::overrun`]).
    overrun: Arc<AtomicBool>,
    /// The host's first message (an ack, a chunk or the outcome).
    first: Option<Incoming>,
    _slot: Reservation,
    host: String,
    pid: u32,
    reply: String,
    lost: watch::Receiver<bool>,
    /// The host's [`HostEntry::remade`], and its count when the call was
    /// sent.
    remade: watch::Receiver<u64>,
    remade_at: u64,
    /// A stream (`execute_stream`), which the host sends chunks of against
    /// the client's credit.
    stream: bool,
    /// The stream's chunks handed to the reader.
    chunks: u64,
    connected: watch::Receiver<Link>,
    /// The connection's [`Link::epoch`] when the call was sent.
    epoch: u64,
    /// The caller's deadline plus the host timeout: the host reports the
    /// timeout itself; this only bounds a host that cannot.
    deadline: Option<Instant>,
    command: String,
    /// The caller's deadline, if it gave one.
    timeout: Option<Duration>,
    session: Option<String>,
    /// The call has no more to give its caller.
    finished: bool,
    /// The host sent the call's outcome: nothing is left to cancel there.
    answered: bool,
    /// Chunks the reader took since the host was last granted more.
    taken: u32,
}

impl Flight {
    async fn result(&mut self) -> Result<Box<RawValue>, Error> {
        loop {
            match self.next().await? {
                Reply::Ok { v, .. } => return Ok(v),
                Reply::Chunk { .. } => continue,
                _ => {
                    return Err(host_lost(
                        &self.host,
                        self.pid,
                        "the host answered out of protocol".into(),
                    ))
                }
            }
        }
    }

    /// The reader took a chunk: every `STREAM_GRANT` of them, the host may
    /// send as many more (it sends at most `STREAM_WINDOW` ahead of the
    /// reader, so a slow reader holds up its worker, not this process's
    /// memory).
    async fn took_chunk(&mut self) {
        self.taken += 1;
        if self.taken < wire::STREAM_GRANT {
            return;
        }
        self.taken = 0;
        let subject = self.inner.subjects.host_cancel(&self.host);
        let grant = wire::credit(wire::STREAM_GRANT, &self.reply);
        let _ = self.inner.nats.publish(subject, Bytes::from(grant)).await;
    }

    /// `r`, a chunk or a stream's result, if it comes in its place: each
    /// chunk numbered one past the last, the result after as many as the
    /// host sent. Otherwise chunks were lost on the way (NATS drops what it
    /// has for a connection that is made again), and the call fails rather
    /// than hand its reader a stream with a hole in it. (A host that does
    /// not number its chunks is taken at its word.)
    fn in_order(&mut self, r: Incoming) -> Result<Incoming, Error> {
        let (n, want) = match &r {
            Reply::Chunk { n, .. } => {
                self.chunks += 1;
                (*n, self.chunks)
            }
            Reply::Ok { n, .. } => (*n, self.chunks),
            _ => (None, 0),
        };
        match n {
            Some(n) if n != want => Err(host_lost(
                &self.host,
                self.pid,
                format!(
                    "chunks of the stream were lost on the way (chunk {n} came where {want} was due; a connection to NATS made again drops what NATS had for it); the call may or may not have run"
                ),
            )),
            _ => Ok(r),
        }
    }

    /// The next chunk or the final result.
    async fn next(&mut self) -> Result<Incoming, Error> {
        if self.finished {
            return Err(Error::Cancelled);
        }
        let outcome = match self.first.take() {
            Some(Reply::Err { e }) => {
                self.answered = true;
                Err(host_error(e, &self.command, self.timeout))
            }
            Some(r @ Reply::Ok { .. }) => {
                self.answered = true;
                Ok(r)
            }
            Some(r @ Reply::Chunk { .. }) => Ok(r),
            // An acknowledgement (or nothing): what comes next.
            _ => self.arrival().await,
        };
        let outcome = outcome.and_then(|r| self.in_order(r));
        if let Ok(Reply::Chunk { .. }) = outcome {
            self.took_chunk().await;
            return outcome;
        }
        // Timed out here, the host may still answer; otherwise the call
        // has no more to give.
        self.finished = self.answered || !matches!(outcome, Err(Error::CallTimeout { .. }));
        outcome
    }

    /// The host's next chunk or outcome, or why none will come.
    async fn arrival(&mut self) -> Result<Incoming, Error> {
        if self.overrun.load(Ordering::Relaxed) && self.rx.is_empty() {
            // Past what its window lets it send: a broken or hostile host.
            // The reader had what came within the window; now the call
            // fails (and is cancelled on the host when dropped).
            return Err(host_lost(
                &self.host,
                self.pid,
                format!(
                    "the host sent more than the protocol lets it (over {} chunks ahead of the reader); the call may or may not have run",
                    wire::STREAM_WINDOW
                ),
            ));
        }
        let until = self.deadline;
        let (epoch, stream) = (self.epoch, self.stream);
        let host_timeout = self.inner.config.host_timeout;
        let deadline = async move {
            match until {
                Some(d) => sleep_while_running(d, host_timeout).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline);
        loop {
            let remade_at = self.remade_at;
            let got = tokio::select! {
            biased;
            m = self.rx.recv() => match m {
                // Come after the client's connection was made again (the
                // monitor may not have said so yet): what NATS had for the
                // call in between is lost, this may follow a gap.
                Some(Arrival::Reply(_)) if self.inner.connects.now() > epoch => Got::Done(Err(connection_lost(&self.host, self.pid))),
                Some(Arrival::Reply(m)) => Got::Reply(m),
                // After the host acknowledged the call: not from NATS.
                Some(Arrival::NoResponders | Arrival::Unsent(_)) => Got::Done(Err(out_of_protocol(&self.host, self.pid))),
                None => Got::Done(Err(unavailable(&self.inner.cluster, "client closed".into()))),
            },
            _ = self.lost.wait_for(|l| *l) => {
                if let Some(s) = &self.session {
                    self.inner.sessions.lock().unwrap().forget(s, &self.host);
                }
                Got::Done(Err(host_lost(&self.host, self.pid, format!(
                    "host {} stopped answering (no heartbeat for {:?}) while it ran the call; it may or may not have run",
                    self.host, self.inner.config.host_timeout
                ))))
            }
            _ = self.connected.wait_for(|l| l.lost_since(epoch)) => Got::Done(Err(connection_lost(&self.host, self.pid))),
            // A host entry forgotten meanwhile says nothing.
            Ok(_) = self.remade.wait_for(|n| *n > remade_at) => Got::Remade,
            _ = &mut deadline => Got::Done(Err(Error::CallTimeout { command: self.command.clone(), timeout: self.timeout.unwrap_or_default() })),
            };
            match got {
                Got::Done(r) => return r,
                Got::Reply(m) => {
                    if let Some(r) = self.reply(&m) {
                        return r;
                    }
                }
                // A stream's credit sent meanwhile may be lost too: it
                // would wait for ever.
                Got::Remade if stream => return Err(host_lost(&self.host, self.pid, format!(
                    "host {} made its connection to NATS again while it ran the call: what NATS had for the call meanwhile may be lost; it may or may not have run",
                    self.host
                ))),
                // A call's outcome lost so is sent again by the host, if
                // it still holds it: asked.
                Got::Remade => {
                    self.remade_at = *self.remade.borrow();
                    if let Some(r) = self.ask_where(&mut deadline).await {
                        return r;
                    }
                }
            }
        }
    }

    /// What a reply from the host means to the caller: `None` for an
    /// acknowledgement (wait on).
    fn reply(&mut self, m: &[u8]) -> Option<Result<Incoming, Error>> {
        match serde_json::from_slice::<Incoming>(m) {
            Ok(r @ Reply::Chunk { .. }) => Some(Ok(r)),
            Ok(r @ Reply::Ok { .. }) => {
                self.answered = true;
                Some(Ok(r))
            }
            Ok(Reply::Err { e }) => {
                self.answered = true;
                Some(Err(host_error(e, &self.command, self.timeout)))
            }
            // The host acknowledges a call that runs for a while whatever
            // it has sent already (chunks, even its outcome): nothing to
            // act on.
            Ok(Reply::Ack { .. }) => None,
            Ok(_) | Err(_) => Some(Err(out_of_protocol(&self.host, self.pid))),
        }
    }

    /// The host made its connection to NATS again while it ran this
    /// (one-shot) call, and what NATS had for the call may be lost with
    /// the old connection. The host sends its last outcomes again, but
    /// keeps only so many ([`crate::outbox::Resend`]'s bounds): it is
    /// asked ([`wire::ask_where`]) what became of the call. `None`: it
    /// runs the call still, or its outcome is on its way again, or it did
    /// not answer in time (it is asked again at its next reconnect; a host
    /// that died is found lost), and the call waits on. A host that
    /// neither runs the call nor holds its outcome has lost the outcome:
    /// the call fails with [`Error::HostLost`] rather than wait as long as
    /// the host lives.
    async fn ask_where(
        &mut self,
        deadline: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> Option<Result<Incoming, Error>> {
        let subject = self.inner.subjects.host_cancel(&self.host);
        let question = Bytes::from(wire::ask_where(&self.reply));
        loop {
            let until = tokio::time::Instant::now() + self.inner.config.host_timeout;
            let ask = self.inner.nats.request(subject.clone(), question.clone());
            let epoch = self.epoch;
            let answer = tokio::select! {
                biased;
                m = self.rx.recv() => Err(m),
                // The host found lost, or this client's connection gone:
                // the caller's loop sees it at once.
                _ = self.lost.wait_for(|l| *l) => return None,
                _ = self.connected.wait_for(|l| l.lost_since(epoch)) => return None,
                _ = deadline.as_mut() => return Some(Err(Error::CallTimeout { command: self.command.clone(), timeout: self.timeout.unwrap_or_default() })),
                answer = tokio::time::timeout_at(until, ask) => Ok(answer),
            };
            let answer = match answer {
                Ok(answer) => answer,
                // The host's reply came first: the question is moot (an
                // acknowledgement: asked again).
                Err(Some(Arrival::Reply(m))) if self.inner.connects.now() <= self.epoch => {
                    match self.reply(&m) {
                        None => continue,
                        r => return r,
                    }
                }
                Err(Some(Arrival::Reply(_))) => {
                    return Some(Err(connection_lost(&self.host, self.pid)))
                }
                Err(Some(_)) => return Some(Err(out_of_protocol(&self.host, self.pid))),
                Err(None) => {
                    return Some(Err(unavailable(
                        &self.inner.cluster,
                        "client closed".into(),
                    )))
                }
            };
            return match answer {
                Ok(Ok(m)) if &m.payload[..] == wire::GONE => Some(Err(host_lost(
                    &self.host,
                    self.pid,
                    format!(
                        "host {} made its connection to NATS again after the call ended, and no longer holds its outcome to send again (it keeps the last {} outcomes, {} MiB at most); the call may or may not have run",
                        self.host,
                        crate::outbox::RESEND_MESSAGES,
                        crate::outbox::RESEND_BYTES >> 20
                    ),
                ))),
                // Running, kept, or a host that does not know the
                // question; no responders (the host is away again: asked
                // again at its next reconnect); no answer in time, or this
                // client's connection is down (the caller finds it so).
                _ => None,
            };
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.inner.calls.lock().unwrap().remove(&self.id);
        if self.answered {
            return;
        }
        // The caller left, timed out, or stopped hearing from the host
        // (lost, or the connection dropped: a host cut off may still run
        // the call, and hears the cancel once its path is back): tell the
        // host to cancel the call.
        self.inner
            .send_cancel(&self.host, std::mem::take(&mut self.reply));
    }
}

/// The chunks of a cluster call, then its final result
/// ([`Client::execute_stream`]). Dropping it cancels the call.
pub struct ClusterStream {
    items: Pin<Box<dyn Stream<Item = Result<StreamItem, Error>> + Send>>,
}

impl std::fmt::Debug for ClusterStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterStream").finish_non_exhaustive()
    }
}

impl Stream for ClusterStream {
    type Item = Result<StreamItem, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.items.as_mut().poll_next(cx)
    }
}

/// `at + d`, or a hundred years after `at` when `d` is longer: a duration of
/// `Duration::MAX` (a usual way to say "no limit") never overflows the
/// clock, which would panic.
fn later(at: Instant, d: Duration) -> Instant {
    at + d.min(Duration::from_secs(100 * 365 * 24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::SessionHosts;

    /// `ClientConfig::max_sessions`: at most that many records; a new
    /// session beyond it forgets the one used least recently, and only it.
    #[test]
    fn session_records_keep_the_cap_forgetting_the_least_recently_used() {
        let mut s = SessionHosts::default();
        for n in 0..10 {
            s.set(&format!("s{n}"), "a", 10);
        }
        s.set("s0", "b", 10); // used again: now the most recent
        s.set("s10", "a", 10);
        assert_eq!(s.map.len(), 10);
        assert_eq!(s.get("s1"), None, "the least recently used is forgotten");
        assert_eq!(s.get("s0").as_deref(), Some("b"));
        for n in 2..=10 {
            assert_eq!(s.get(&format!("s{n}")).as_deref(), Some("a"), "s{n}");
        }
        s.forget("s0", "a"); // another host's record: kept
        assert_eq!(s.get("s0").as_deref(), Some("b"));
        s.forget("s0", "b");
        assert_eq!(s.get("s0"), None);
        assert_eq!((s.map.len(), s.by_age.len()), (9, 9));
        s.set("s11", "a", 10);
        assert_eq!(s.map.len(), 10, "room again after a record was forgotten");
    }
}
