//! `NatsKvStore`: sessions in a NATS JetStream key-value bucket, shared by
//! every host of a cluster, so a cluster needs only NATS.
//!
//! One key per session (`s.<hex id>`) holding the session as JSON; every
//! change is a compare-and-swap on the key's revision, retried on conflict.
//! Expiry is the session's own `last_accessed_ms + ttl_ms`: a session past
//! it reads as gone at once, and the sweep (or `cleanup_expired`) removes it
//! with a revision-checked delete, so one host reports each expiry once.
//!
//! A session is one NATS message: its data, programs and metadata together
//! must fit the server's `max_payload` (1 MiB unless the server sets
//! another). A bucket that disappears (deleted, or NATS back without its
//! JetStream storage) is created again by the next operation that finds
//! it gone.
//!
//! A global program is one key (`g.<hex id>`) holding its JSON; stored
//! with a [`global_program_ttl`](NatsKvStoreBuilder::global_program_ttl),
//! its message carries when it expires in a header
//! (`Snakepit-Expires-Ms`, Unix milliseconds by the storing host's clock). One
//! without the header (as every one stored before there was a TTL) never
//! expires.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::kv::{Operation, Store, UpdateErrorKind};
use async_nats::jetstream::ErrorCode;
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use snakepit_session::{
    check_ttl, conflict_backoff, EndListener, EndListenerWhile, EndReason, Error, Listeners,
    Result, Session, SessionStore, StoreStats,
};

const ATTEMPTS: u32 = 200;

/// Sessions in a NATS JetStream key-value bucket (see the module docs).
#[derive(Clone)]
pub struct NatsKvStore {
    inner: Arc<KvInner>,
}

impl std::fmt::Debug for NatsKvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsKvStore").finish_non_exhaustive()
    }
}

struct KvInner {
    /// The bucket; replaced when it had to be created again.
    kv: Mutex<Arc<Store>>,
    js: async_nats::jetstream::Context,
    config: async_nats::jetstream::kv::Config,
    default_ttl: Duration,
    /// Every operation's bound.
    timeout: Duration,
    created: AtomicU64,
    deleted: AtomicU64,
    expired: AtomicU64,
    programs_deleted: AtomicU64,
    programs_expired: AtomicU64,
    /// How long a global program stored through this handle lives.
    global_program_ttl: Option<Duration>,
    listeners: Listeners,
    sweep: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for KvInner {
    fn drop(&mut self) {
        if let Some(t) = self.sweep.lock().unwrap().take() {
            t.abort();
        }
    }
}

/// Builds a [`NatsKvStore`].
#[derive(Debug)]
pub struct NatsKvStoreBuilder {
    nats: async_nats::Client,
    bucket: String,
    default_ttl: Duration,
    sweep_interval: Duration,
    /// `None` unless set: a bucket that exists is then taken as it is.
    replicas: Option<usize>,
    timeout: Duration,
    global_program_ttl: Option<Duration>,
}

impl NatsKvStoreBuilder {
    /// The bucket (default `snakepit_sessions`); two buckets are two
    /// namespaces on one NATS.
    pub fn bucket(mut self, name: impl Into<String>) -> Self {
        self.bucket = name.into();
        self
    }

    /// The TTL of sessions created without one (default one hour).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// How often expired sessions are removed and reported (default 60 s).
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.sweep_interval = every;
        self
    }

    /// Replicas of the bucket in a clustered NATS (default 1; 0 is taken
    /// as 1). A bucket is created with them; when the bucket exists
    /// already, [`connect`](Self::connect) fails if it has another number
    /// of replicas than the one set here, rather than run with fewer copies
    /// than asked for (or more). Left unset, an existing bucket is used as
    /// it is.
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = Some(n.max(1));
        self
    }

    /// How long a global program stored through this store lives after it
    /// was stored (the original's `global_program_ttl`; reads do not
    /// extend it, storing it again does, with the TTL of the handle that
    /// stores it: a handle without one stores it for good). By default
    /// global programs never expire. Its end is kept with the program, so
    /// every host sees it, by its own clock. A TTL no session may have (see
    /// [`check_ttl`]) makes [`connect`](Self::connect) fail with
    /// `Error::Invalid`.
    pub fn global_program_ttl(mut self, ttl: Duration) -> Self {
        self.global_program_ttl = Some(ttl);
        self
    }

    /// How long an operation on one session (or one global program) may
    /// take, retries on conflict included (default 10 s, above the 5 s
    /// JetStream waits for a write's acknowledgement, so that a refused
    /// write is still `Error::Backend`; at least 1 ms). One that gets no
    /// answer within it (NATS down or paused, or its JetStream electing a
    /// leader, which takes seconds) fails with [`Error::Timeout`] naming
    /// the operation and this timeout; a write that timed out may or may
    /// not have been applied. [`connect`](Self::connect) is bounded by it
    /// too. `list_sessions`, `stats` and `cleanup_expired`, which read
    /// every key, are not bounded as a whole: each request in them is, by
    /// JetStream's own 5 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Creates the bucket if it does not exist, and starts the sweep.
    /// Fails with `Error::Invalid` first if the default TTL (or the
    /// [`global_program_ttl`](Self::global_program_ttl)) is one no session
    /// may have (see [`check_ttl`]), and with `Error::Backend` if
    /// the bucket exists with another number of replicas than
    /// [`replicas`](Self::replicas) set, and with `Error::Timeout` when
    /// NATS does not answer within the [timeout](Self::timeout).
    pub async fn connect(self) -> Result<NatsKvStore> {
        check_ttl(self.default_ttl)?;
        if let Some(ttl) = self.global_program_ttl {
            check_ttl(ttl)?;
        }
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.open())
            .await
            .unwrap_or(Err(Error::Timeout {
                operation: "connect",
                after: timeout,
            }))
    }

    async fn open(self) -> Result<NatsKvStore> {
        let js = async_nats::jetstream::new(self.nats);
        let config = async_nats::jetstream::kv::Config {
            bucket: self.bucket.clone(),
            description: "snakepit sessions".into(),
            history: 1,
            num_replicas: self.replicas.unwrap_or(1),
            ..Default::default()
        };
        let kv = match js.get_key_value(&self.bucket).await {
            Ok(kv) => kv,
            Err(_) => js.create_key_value(config.clone()).await.map_err(backend)?,
        };
        let has = kv.stream.cached_info().config.num_replicas.max(1);
        if let Some(want) = self.replicas.filter(|want| *want != has) {
            return Err(Error::Backend(format!(
                "the sessions' bucket `{bucket}` has {has} replica(s), and `replicas({want})` \
                 asks for {want}: change the bucket's stream (`nats stream edit KV_{bucket} \
                 --replicas {want}`) or ask for {has}",
                bucket = self.bucket
            )));
        }
        let inner = Arc::new(KvInner {
            kv: Mutex::new(Arc::new(kv)),
            js,
            config,
            default_ttl: self.default_ttl,
            timeout: self.timeout,
            created: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            programs_deleted: AtomicU64::new(0),
            programs_expired: AtomicU64::new(0),
            global_program_ttl: self.global_program_ttl,
            listeners: Listeners::default(),
            sweep: Mutex::new(None),
        });
        let weak: Weak<KvInner> = Arc::downgrade(&inner);
        let every = self.sweep_interval.max(Duration::from_millis(10));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = (NatsKvStore { inner }).cleanup_expired().await {
                    tracing::debug!(target: "snakepit::session", "sweep failed: {e}");
                }
            }
        });
        *inner.sweep.lock().unwrap() = Some(task.abort_handle());
        Ok(NatsKvStore { inner })
    }
}

fn backend(e: impl std::fmt::Display) -> Error {
    Error::Backend(e.to_string())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn check(what: &'static str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::Invalid {
            what,
            reason: "empty",
        });
    }
    if id.len() > snakepit_session::MAX_ID_LEN {
        return Err(Error::Invalid {
            what,
            reason: "longer than 512 bytes",
        });
    }
    Ok(())
}

fn hex(prefix: &str, id: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 2 * id.len());
    s.push_str(prefix);
    for b in id.bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The session id of a session key; `None` for a key that is not one this
/// store writes (upper-case hex, say: `hex` would not give it back).
fn unhex(key: &str) -> Option<String> {
    unhex_under("s.", key)
}

/// The id in a key under `prefix` (`s.` or `g.`), as [`unhex`].
fn unhex_under(prefix: &str, key: &str) -> Option<String> {
    let h = key.strip_prefix(prefix)?;
    let bytes: Option<Vec<u8>> = (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect();
    let id = String::from_utf8(bytes?).ok()?;
    (!id.is_empty() && hex(prefix, &id) == key).then_some(id)
}

/// The header of a global program's message that says when it expires,
/// in Unix milliseconds. A value that does not parse (written by
/// something else) says nothing: the program does not expire, as a
/// corrupt session whose expiry cannot be read.
const EXPIRES: &str = "Snakepit-Expires-Ms";

/// A key's last message: its value, revision and operation, and the
/// expiry it carries ([`EXPIRES`]), if any.
struct Last {
    value: Bytes,
    revision: u64,
    operation: Operation,
    expires_ms: Option<u64>,
}

impl Last {
    /// Whether this is a global program, live at `now`.
    fn live(&self, now: u64) -> bool {
        self.operation == Operation::Put && self.expires_ms.is_none_or(|at| now < at)
    }

    /// Whether this is a global program whose time has passed at `now`
    /// (gone, if not removed yet).
    fn expired(&self, now: u64) -> bool {
        self.operation == Operation::Put && !self.live(now)
    }
}

/// The last message at `key`, `None` if there is none, read from the
/// bucket's stream leader (`STREAM.MSG.GET`). `Store::entry` asks for a
/// direct get, which any replica of a replicated bucket may answer, one
/// that has not applied the last acknowledged write among them: a session
/// just created on one host would read as absent on another, and a
/// deleted one as present. The leader has every acknowledged write.
async fn last(kv: &Store, key: &str) -> Result<Option<Last>> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let subject = format!("{}{key}", kv.prefix);
    let m = match kv.stream.get_last_raw_message_by_subject(&subject).await {
        Ok(m) => m,
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(e) => return Err(backend(format!("reading `{key}`: {e}"))),
    };
    // As `Store::entry` reads it: the operation's header, else the
    // server's marker of why the message went, else a put.
    let operation = match m.headers.get("KV-Operation") {
        Some(op) => op.as_str().parse().unwrap_or(Operation::Put),
        None => match m.headers.get("Nats-Marker-Reason").map(|r| r.as_str()) {
            Some("MaxAge" | "Purge") => Operation::Purge,
            Some("Remove") => Operation::Delete,
            _ => Operation::Put,
        },
    };
    let expires_ms = m.headers.get(EXPIRES).and_then(|v| v.as_str().parse().ok());
    Ok(Some(Last {
        value: m.payload,
        revision: m.sequence,
        operation,
        expires_ms,
    }))
}

/// Whether a write that expected a revision failed because another write
/// to the key came first: a lost compare-and-swap, to be retried. A
/// replicated stream's leader refuses an expected-revision publish while
/// another one to the same key is being replicated with its own code
/// (10164), which async-nats reports as an unnamed error, not as
/// `WrongLastRevision` (10071).
fn lost_race(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(j) = c.downcast_ref::<async_nats::jetstream::Error>() {
            return matches!(
                j.error_code(),
                ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                    | ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
            );
        }
        cause = c.source();
    }
    false
}

/// Whether an operation on the bucket, failed with `e`, may have failed
/// because the bucket is gone (rather than refused, or timed out).
fn maybe_gone(e: &Error) -> bool {
    matches!(e, Error::Backend(_))
}

fn expired(s: &Session, now: u64) -> bool {
    now >= s.last_accessed_ms.saturating_add(s.ttl_ms)
}

/// Runs `$body` (an expression, awaited in it) with `$kv` the bucket; when
/// it fails as it would on a bucket that is gone and the bucket is gone,
/// creates the bucket again and runs `$body` once more.
macro_rules! on_bucket {
    ($store:expr, |$kv:ident| $body:expr) => {{
        let bucket = $store.kv();
        let r = {
            let $kv: &Store = &bucket;
            $body
        };
        match r {
            Err(e) if maybe_gone(&e) && $store.recreate_if_gone(&bucket).await => {
                let bucket = $store.kv();
                let $kv: &Store = &bucket;
                $body
            }
            r => r,
        }
    }};
}

/// A key's state: absent (with the revision of its tombstone, 0 if none),
/// a session with its revision, or data this store did not write
/// ([`decode`]) with its revision and, when it could be read, its expiry.
enum Slot {
    Absent(u64),
    Present(Box<Session>, u64),
    Corrupt(Error, Option<u64>, u64),
}

/// Whether a corrupt session's expiry, when it says one, is past.
fn past(at: Option<u64>, now: u64) -> bool {
    at.is_some_and(|at| now >= at)
}

/// The session stored at `key`, as this store writes it: stored data that
/// does not parse, or holds what no operation can have written (a value
/// nested deeper than `MAX_VALUE_DEPTH`, which serde_json still reads up to
/// 127 levels; an empty key), is `Corrupt` naming the session, as in the
/// Redis store, rather than read and then refused as the caller's
/// `Invalid` by every write.
fn decode(key: &str, value: &[u8]) -> Result<Session> {
    let named = |e: &dyn std::fmt::Display| {
        let id = unhex(key).unwrap_or_else(|| key.to_owned());
        Error::Corrupt(format!("session `{id}`: {e}"))
    };
    let mut s: Session = serde_json::from_slice(value).map_err(|e| named(&e))?;
    s.check_values().map_err(|e| {
        named(&format!(
            "the stored data does not parse as a session this store writes ({e}; \
             written by something else?)"
        ))
    })?;
    // The key names the session, as in the other stores: a value planted
    // under one id that names another is read, and written back, as the
    // session of its key.
    if let Some(id) = unhex(key) {
        s.id = id;
    }
    Ok(s)
}

/// When stored data that is no session this store writes expires, if it
/// says: the `last_accessed_ms` and `ttl_ms` of a JSON object, read past
/// whatever else it holds (serde_json skips what it ignores at any depth).
fn expiry_of(value: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Expiry {
        last_accessed_ms: u64,
        ttl_ms: u64,
    }
    // Only from a JSON object, as a session is: serde would read a
    // struct from an array too (`[1, 2]`).
    if value.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let e: Expiry = serde_json::from_slice(value).ok()?;
    Some(e.last_accessed_ms.saturating_add(e.ttl_ms))
}

impl NatsKvStore {
    /// A builder for a store on the connection `nats`.
    pub fn builder(nats: &async_nats::Client) -> NatsKvStoreBuilder {
        NatsKvStoreBuilder {
            nats: nats.clone(),
            bucket: "snakepit_sessions".into(),
            default_ttl: Duration::from_secs(3600),
            sweep_interval: Duration::from_secs(60),
            replicas: None,
            timeout: Duration::from_secs(10),
            global_program_ttl: None,
        }
    }

    /// A store with the default bucket and settings.
    pub async fn connect(nats: &async_nats::Client) -> Result<NatsKvStore> {
        Self::builder(nats).connect().await
    }

    /// Runs the operation `fut` within the store's timeout.
    async fn bounded<T>(
        &self,
        operation: &'static str,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let after = self.inner.timeout;
        tokio::time::timeout(after, fut)
            .await
            .unwrap_or(Err(Error::Timeout { operation, after }))
    }

    /// The bucket as it is now.
    fn kv(&self) -> Arc<Store> {
        self.inner.kv.lock().unwrap().clone()
    }

    /// Creates the bucket again if its stream is gone; true if it did (or
    /// another operation did meanwhile).
    async fn recreate_if_gone(&self, failed_on: &Arc<Store>) -> bool {
        let inner = &self.inner;
        if !Arc::ptr_eq(failed_on, &self.kv()) {
            return true; // created again since this operation began
        }
        match inner.js.get_stream(&failed_on.stream_name).await {
            Err(e)
                if matches!(e.kind(), GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND) => {}
            _ => return false,
        }
        match inner.js.create_key_value(inner.config.clone()).await {
            Ok(kv) => {
                tracing::warn!(target: "snakepit::session", bucket = %inner.config.bucket,
                    "the sessions' bucket was gone (its sessions with it); created again");
                *inner.kv.lock().unwrap() = Arc::new(kv);
                true
            }
            Err(e) => {
                tracing::debug!(target: "snakepit::session", "cannot create the bucket again: {e}");
                false
            }
        }
    }

    async fn load(&self, key: &str) -> Result<Slot> {
        let entry = on_bucket!(self, |kv| last(kv, key).await)?;
        match entry {
            None => Ok(Slot::Absent(0)),
            Some(e) if e.operation != Operation::Put => Ok(Slot::Absent(e.revision)),
            Some(e) => Ok(match decode(key, &e.value) {
                Ok(s) => Slot::Present(Box::new(s), e.revision),
                Err(bad) => Slot::Corrupt(bad, expiry_of(&e.value), e.revision),
            }),
        }
    }

    /// Writes `value` at `key` if its revision is still `rev` (0: absent);
    /// `Ok(false)` on a conflict.
    async fn swap(&self, key: &str, value: &Session, rev: u64) -> Result<bool> {
        value.check_values()?;
        let bytes = Bytes::from(serde_json::to_vec(value)?);
        self.fits(&format!("session `{}`", value.id), bytes.len() + key.len())?;
        on_bucket!(self, |kv| {
            // Revision 0 expects no message at all at `key`: a key with a
            // removal's marker was loaded as absent at the marker's
            // revision, which is expected instead.
            let r = kv
                .update(key, bytes.clone(), rev)
                .await
                .map(|_| ())
                .map_err(|e| match e.kind() {
                    UpdateErrorKind::WrongLastRevision => None,
                    _ if lost_race(&e) => None,
                    _ => Some(write_failed(&value.id, e)),
                });
            match r {
                Ok(()) => Ok(true),
                Err(None) => Ok(false),
                Err(Some(e)) => Err(e),
            }
        })
    }

    /// An error unless a message of `len` bytes fits the server's
    /// `max_payload`: a session (or a global program) is one message.
    fn fits(&self, what: &str, len: usize) -> Result<()> {
        let max = self.inner.js.client().max_payload();
        if len <= max {
            return Ok(());
        }
        Err(Error::Backend(format!(
            "{what} is {len} bytes as JSON, over the NATS server's max_payload of {max} \
             (NatsKvStore keeps each in one message)"
        )))
    }

    /// Deletes `key` if its revision is still `rev`; `Ok(false)` when it is
    /// not (another host changed or removed it), an error when the delete
    /// failed otherwise (refused, timed out).
    async fn delete_at(&self, id: &str, key: &str, rev: u64) -> Result<bool> {
        let deleted = on_bucket!(self, |kv| {
            match kv.delete_expect_revision(key, Some(rev)).await {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision || lost_race(&e) => {
                    Ok(false)
                }
                Err(e) => Err(write_failed(id, e)),
            }
        })?;
        if deleted {
            self.purge_tombstone(key).await;
        }
        Ok(deleted)
    }

    /// Removes the delete marker a removal left at `key` (the bucket keeps
    /// one message per key, the last: without this, one per session ever
    /// ended, which every listing and sweep would read). Only the marker
    /// and what came before it go: a session created at `key` since stays.
    /// Best effort: a marker left behind costs a little room, nothing else.
    async fn purge_tombstone(&self, key: &str) {
        let kv = self.kv();
        let Ok(Some(entry)) = last(&kv, key).await else {
            return;
        };
        if entry.operation == Operation::Put {
            return;
        }
        let subject = format!("{}{key}", kv.prefix);
        if let Err(e) = kv
            .stream
            .purge()
            .filter(subject)
            .sequence(entry.revision + 1)
            .await
        {
            tracing::debug!(target: "snakepit::session", key, "cannot purge a removed session's marker: {e}");
        }
    }

    /// Deletes the global program at `key` if its revision is still `rev`;
    /// `Ok(false)` when it is not. Revision-checked: of two hosts deleting
    /// (or sweeping) it at once, one removes it (and counts it); a program
    /// stored again meanwhile is not removed.
    async fn delete_global_at(&self, program_id: &str, key: &str, rev: u64) -> Result<bool> {
        let deleted = on_bucket!(self, |kv| {
            match kv.delete_expect_revision(key, Some(rev)).await {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision || lost_race(&e) => {
                    Ok(false)
                }
                Err(e) => Err(Error::Backend(format!(
                    "deleting global program `{program_id}`: {e}"
                ))),
            }
        })?;
        if deleted {
            self.purge_tombstone(key).await;
        }
        Ok(deleted)
    }

    /// Removes the global programs whose time has passed, counting each
    /// this call removed. A failure is returned after the others were
    /// tried.
    async fn sweep_globals(&self) -> Result<()> {
        let mut failed = None;
        for key in self.keys_under("g.").await? {
            let id = unhex_under("g.", &key).unwrap_or_else(|| key.clone());
            let r = match on_bucket!(self, |kv| last(kv, &key).await) {
                Ok(Some(e)) if e.expired(now_ms()) => {
                    self.delete_global_at(&id, &key, e.revision).await
                }
                Ok(_) => Ok(false),
                Err(e) => Err(e),
            };
            match r {
                Ok(true) => {
                    self.inner.programs_expired.fetch_add(1, Ordering::Relaxed);
                }
                Ok(false) => {}
                Err(e) => failed = Some(e),
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Removes an expired session found at `rev`; reports it if this call
    /// removed it.
    async fn reap(&self, id: &str, key: &str, rev: u64) -> Result<bool> {
        if !self.delete_at(id, key, rev).await? {
            return Ok(false);
        }
        self.inner.expired.fetch_add(1, Ordering::Relaxed);
        self.ended(id, EndReason::Expired);
        Ok(true)
    }

    fn ended(&self, id: &str, why: EndReason) {
        self.inner.listeners.notify(id, why);
    }

    /// Applies `f` to the live session `id` (its TTL restarted), atomically.
    async fn modify<T>(
        &self,
        id: &str,
        f: impl FnMut(&mut Session) -> Result<T> + Send,
    ) -> Result<(Session, T)> {
        self.change(id, false, f).await
    }

    /// Reads the live session `id` and restarts its TTL; `f` only reads.
    /// A read that loses its compare-and-swap to another writer is done:
    /// that writer restarted the TTL too, so the session it wrote is
    /// returned as it is (reads of one session by many callers at once
    /// never fail with `Conflict`).
    async fn read<T>(
        &self,
        id: &str,
        f: impl FnMut(&mut Session) -> Result<T> + Send,
    ) -> Result<(Session, T)> {
        self.change(id, true, f).await
    }

    async fn change<T>(
        &self,
        id: &str,
        read_only: bool,
        mut f: impl FnMut(&mut Session) -> Result<T> + Send,
    ) -> Result<(Session, T)> {
        check("session id", id)?;
        let key = hex("s.", id);
        let mut lost = false;
        for attempt in 0..ATTEMPTS {
            let now = now_ms();
            let (mut s, rev) = match self.load(&key).await? {
                Slot::Absent(_) => return Err(Error::NotFound(id.to_owned())),
                Slot::Present(s, rev) => (*s, rev),
                // Past its expiry it is gone, as any session, and swept.
                Slot::Corrupt(_, at, _) if past(at, now) => {
                    return Err(Error::Expired(id.to_owned()))
                }
                Slot::Corrupt(e, ..) => return Err(e),
            };
            if expired(&s, now) {
                return Err(Error::Expired(id.to_owned()));
            }
            if lost {
                // A read's swap was lost: this is the winner's session.
                let out = f(&mut s)?;
                return Ok((s, out));
            }
            let (sid, created) = (s.id.clone(), s.created_at_ms);
            let out = f(&mut s)?;
            s.id = sid;
            s.created_at_ms = created;
            s.last_accessed_ms = now;
            if self.swap(&key, &s, rev).await? {
                return Ok((s, out));
            }
            lost = read_only;
            conflict_backoff(attempt).await;
        }
        Err(Error::Conflict {
            session_id: id.to_owned(),
            attempts: ATTEMPTS,
        })
    }

    /// Creates the session; `Ok(None)` if a live one exists.
    async fn create(&self, id: &str, ttl: Duration) -> Result<Option<Session>> {
        check("session id", id)?;
        check_ttl(ttl)?;
        let key = hex("s.", id);
        for attempt in 0..ATTEMPTS {
            let rev = match self.load(&key).await? {
                Slot::Absent(rev) => rev,
                Slot::Present(s, rev) => {
                    if !expired(&s, now_ms()) {
                        return Ok(None);
                    }
                    self.reap(id, &key, rev).await?;
                    continue;
                }
                Slot::Corrupt(_, at, rev) if past(at, now_ms()) => {
                    self.reap(id, &key, rev).await?;
                    continue;
                }
                Slot::Corrupt(e, ..) => return Err(e),
            };
            let s = Session::new(id, ttl, now_ms());
            if self.swap(&key, &s, rev).await? {
                self.inner.created.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(s));
            }
            conflict_backoff(attempt).await;
        }
        Err(Error::Conflict {
            session_id: id.to_owned(),
            attempts: ATTEMPTS,
        })
    }

    /// The keys under `prefix` (`s.` or `g.`) that hold a value or held
    /// one, each once, as the server had them at one moment: the stream's
    /// subjects, not a consumer over its messages, which misses or repeats
    /// the keys written while it reads.
    async fn keys_under(&self, prefix: &str) -> Result<BTreeSet<String>> {
        on_bucket!(self, |kv| {
            let mut subjects = kv
                .stream
                .info_with_subjects(format!("{}{prefix}>", kv.prefix))
                .await
                .map_err(backend)?;
            let mut keys = BTreeSet::new();
            while let Some(subject) = subjects.next().await {
                let (subject, _) = subject.map_err(backend)?;
                if let Some(key) = subject.strip_prefix(kv.prefix.as_str()) {
                    keys.insert(key.to_owned());
                }
            }
            Ok(keys)
        })
    }

    /// The live sessions' ids (and keys with revisions of expired ones). A
    /// session whose stored data does not parse is left out (and logged):
    /// one bad key must not stop listings and the sweep for every other.
    async fn scan(&self) -> Result<(Vec<String>, Vec<(String, String, u64)>)> {
        let (mut live, mut dead) = (Vec::new(), Vec::new());
        let now = now_ms();
        for key in self.keys_under("s.").await? {
            let Some(id) = unhex(&key) else { continue };
            match self.load(&key).await {
                Ok(Slot::Present(s, rev)) => {
                    if expired(&s, now) {
                        dead.push((id, key, rev));
                    } else {
                        live.push(id);
                    }
                }
                Ok(Slot::Absent(_)) => {}
                // Its expiry still holds: the sweep removes it then.
                Ok(Slot::Corrupt(_, at, rev)) if past(at, now) => dead.push((id, key, rev)),
                Ok(Slot::Corrupt(e, ..)) => {
                    tracing::warn!(target: "snakepit::session", session = %id,
                        "a session's stored data does not parse; left out: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        Ok((live, dead))
    }
}

/// A failed write of session `id`, as an error that says so.
fn write_failed(id: &str, e: impl std::fmt::Display) -> Error {
    Error::Backend(format!("writing session `{id}`: {e}"))
}

impl SessionStore for NatsKvStore {
    async fn create_session(&self, id: &str, ttl: Option<Duration>) -> Result<Session> {
        self.bounded("create_session", async {
            self.create(id, ttl.unwrap_or(self.inner.default_ttl))
                .await?
                .ok_or_else(|| Error::AlreadyExists(id.to_owned()))
        })
        .await
    }

    async fn ensure_session(&self, id: &str) -> Result<()> {
        self.bounded("ensure_session", async {
            loop {
                match self.read(id, |_| Ok(())).await {
                    Ok(_) => return Ok(()),
                    Err(e) if e.is_gone() => {
                        if self.create(id, self.inner.default_ttl).await?.is_some() {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        })
        .await
    }

    async fn get_session(&self, id: &str) -> Result<Session> {
        self.bounded("get_session", async {
            Ok(self.read(id, |_| Ok(())).await?.0)
        })
        .await
    }

    async fn update_session<F>(&self, id: &str, mut f: F) -> Result<Session>
    where
        F: FnMut(&mut Session) + Send,
    {
        self.bounded("update_session", async {
            Ok(self
                .modify(id, |s| {
                    f(s);
                    // Before anything is written.
                    check_ttl(s.ttl())
                })
                .await?
                .0)
        })
        .await
    }

    async fn delete_session(&self, id: &str) -> Result<bool> {
        self.bounded("delete_session", async {
            check("session id", id)?;
            let key = hex("s.", id);
            for attempt in 0..ATTEMPTS {
                let now = now_ms();
                let rev = match self.load(&key).await? {
                    Slot::Present(s, rev) if !expired(&s, now) => rev,
                    // Data that does not parse is still removed: otherwise
                    // its id could never be used again.
                    Slot::Corrupt(_, at, rev) if !past(at, now) => rev,
                    _ => return Ok(false),
                };
                if self.delete_at(id, &key, rev).await? {
                    self.inner.deleted.fetch_add(1, Ordering::Relaxed);
                    self.ended(id, EndReason::Deleted);
                    return Ok(true);
                }
                conflict_backoff(attempt).await;
            }
            Err(Error::Conflict {
                session_id: id.to_owned(),
                attempts: ATTEMPTS,
            })
        })
        .await
    }

    async fn session_exists(&self, id: &str) -> Result<bool> {
        self.bounded("session_exists", async {
            check("session id", id)?;
            let now = now_ms();
            Ok(match self.load(&hex("s.", id)).await? {
                Slot::Present(s, _) => !expired(&s, now),
                Slot::Absent(_) => false,
                Slot::Corrupt(_, at, _) if past(at, now) => false,
                Slot::Corrupt(e, ..) => return Err(e),
            })
        })
        .await
    }

    async fn list_sessions(&self) -> Result<Vec<String>> {
        Ok(self.scan().await?.0)
    }

    async fn stats(&self) -> Result<StoreStats> {
        let (live, _) = self.scan().await?;
        let mut globals = 0;
        for key in self.keys_under("g.").await? {
            let entry = on_bucket!(self, |kv| last(kv, &key).await)?;
            if entry.is_some_and(|e| e.live(now_ms())) {
                globals += 1;
            }
        }
        let mut stats = StoreStats::default();
        stats.active_sessions = live.len() as u64;
        stats.sessions_created = self.inner.created.load(Ordering::Relaxed);
        stats.sessions_deleted = self.inner.deleted.load(Ordering::Relaxed);
        stats.sessions_expired = self.inner.expired.load(Ordering::Relaxed);
        stats.global_programs = globals;
        stats.global_programs_deleted = self.inner.programs_deleted.load(Ordering::Relaxed);
        stats.global_programs_expired = self.inner.programs_expired.load(Ordering::Relaxed);
        Ok(stats)
    }

    async fn store_program(&self, id: &str, program_id: &str, program: Value) -> Result<()> {
        self.bounded("store_program", async {
            check("program id", program_id)?;
            self.modify(id, |s| {
                s.programs.insert(program_id.to_owned(), program.clone());
                Ok(())
            })
            .await?;
            Ok(())
        })
        .await
    }

    async fn get_program(&self, id: &str, program_id: &str) -> Result<Value> {
        self.bounded("get_program", async {
            check("program id", program_id)?;
            let (s, ()) = self.read(id, |_| Ok(())).await?;
            s.programs
                .get(program_id)
                .cloned()
                .ok_or_else(|| Error::ProgramNotFound {
                    session_id: Some(id.to_owned()),
                    program_id: program_id.to_owned(),
                })
        })
        .await
    }

    async fn store_global_program(&self, program_id: &str, program: Value) -> Result<()> {
        self.bounded("store_global_program", async {
            check("program id", program_id)?;
            snakepit_session::check_value("program", &program)?;
            let bytes = Bytes::from(serde_json::to_vec(&program)?);
            let key = hex("g.", program_id);
            self.fits(
                &format!("global program `{program_id}`"),
                bytes.len() + key.len(),
            )?;
            let ttl = self.inner.global_program_ttl;
            for attempt in 0..ATTEMPTS {
                // Revision-checked, so that a program expired but not yet
                // removed that this write replaces is counted once, by the
                // host whose write replaced it.
                let (rev, stale) = match on_bucket!(self, |kv| last(kv, &key).await)? {
                    Some(e) => (e.revision, e.expired(now_ms())),
                    None => (0, false),
                };
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(
                    async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                    async_nats::HeaderValue::from(rev),
                );
                if let Some(ttl) = ttl {
                    let at = now_ms().saturating_add(ttl.as_millis() as u64);
                    headers.insert(EXPIRES, async_nats::HeaderValue::from(at));
                }
                let written = on_bucket!(self, |kv| {
                    // As `Store::put` names it (the bucket is opened on
                    // `js`, whose API prefix is the default one).
                    let prefix = kv.put_prefix.as_ref().unwrap_or(&kv.prefix);
                    let subject = format!("{prefix}{key}");
                    let r = match self
                        .inner
                        .js
                        .publish_with_headers(subject, headers.clone(), bytes.clone())
                        .await
                    {
                        Ok(ack) => ack.await.map(|_| ()),
                        Err(e) => Err(e),
                    };
                    match r.map_err(async_nats::jetstream::kv::UpdateError::from) {
                        Ok(()) => Ok(true),
                        Err(e)
                            if e.kind() == UpdateErrorKind::WrongLastRevision || lost_race(&e) =>
                        {
                            Ok(false)
                        }
                        Err(e) => Err(Error::Backend(format!(
                            "writing global program `{program_id}`: {e}"
                        ))),
                    }
                })?;
                if written {
                    if stale {
                        self.inner.programs_expired.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(());
                }
                conflict_backoff(attempt).await;
            }
            Err(Error::Conflict {
                session_id: format!("global program `{program_id}`"),
                attempts: ATTEMPTS,
            })
        })
        .await
    }

    async fn get_global_program(&self, program_id: &str) -> Result<Value> {
        self.bounded("get_global_program", async {
            check("program id", program_id)?;
            let key = hex("g.", program_id);
            match on_bucket!(self, |kv| last(kv, &key).await)? {
                Some(e) if e.live(now_ms()) => {
                    let program: Value = serde_json::from_slice(&e.value)?;
                    // Deeper than any program this store writes, as in
                    // the Redis store.
                    snakepit_session::check_value("program", &program).map_err(|e| {
                        Error::Corrupt(format!(
                            "global program `{program_id}`: {e}, which this store never \
                             writes (written by something else?)"
                        ))
                    })?;
                    Ok(program)
                }
                _ => Err(Error::ProgramNotFound {
                    session_id: None,
                    program_id: program_id.to_owned(),
                }),
            }
        })
        .await
    }

    async fn delete_global_program(&self, program_id: &str) -> Result<bool> {
        self.bounded("delete_global_program", async {
            check("program id", program_id)?;
            let key = hex("g.", program_id);
            for attempt in 0..ATTEMPTS {
                let (rev, live) = match on_bucket!(self, |kv| last(kv, &key).await)? {
                    Some(e) if e.operation == Operation::Put => (e.revision, e.live(now_ms())),
                    _ => return Ok(false),
                };
                // Of two hosts deleting it at once, one removes it (and
                // says so); a program stored again meanwhile is deleted as
                // it is now. An expired one is removed and counted as
                // expired, and was not there to delete.
                if self.delete_global_at(program_id, &key, rev).await? {
                    let counter = if live {
                        &self.inner.programs_deleted
                    } else {
                        &self.inner.programs_expired
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    return Ok(live);
                }
                conflict_backoff(attempt).await;
            }
            Err(Error::Conflict {
                session_id: format!("global program `{program_id}`"),
                attempts: ATTEMPTS,
            })
        })
        .await
    }

    async fn cleanup_expired(&self) -> Result<usize> {
        let (_, dead) = self.scan().await?;
        let (mut n, mut failed) = (0, self.sweep_globals().await.err());
        for (id, key, rev) in dead {
            match self.reap(&id, &key, rev).await {
                Ok(true) => n += 1,
                Ok(false) => {}
                Err(e) => failed = Some(e),
            }
        }
        // The others were tried first; the failure is not hidden.
        failed.map_or(Ok(n), Err)
    }

    async fn get(&self, id: &str, key: &str) -> Result<Option<Value>> {
        self.bounded("get", async {
            check("key", key)?;
            Ok(self.read(id, |s| Ok(s.data.get(key).cloned())).await?.1)
        })
        .await
    }

    async fn set(&self, id: &str, key: &str, value: Value) -> Result<()> {
        self.bounded("set", async {
            check("key", key)?;
            self.modify(id, |s| {
                s.data.insert(key.to_owned(), value.clone());
                Ok(())
            })
            .await?;
            Ok(())
        })
        .await
    }

    async fn delete(&self, id: &str, key: &str) -> Result<bool> {
        self.bounded("delete", async {
            check("key", key)?;
            Ok(self
                .modify(id, |s| Ok(s.data.remove(key).is_some()))
                .await?
                .1)
        })
        .await
    }

    fn on_session_end(&self, listener: EndListener) {
        self.inner.listeners.add(listener);
    }

    fn on_session_end_while(&self, listener: EndListenerWhile) {
        self.inner.listeners.add_while(listener);
    }
}
