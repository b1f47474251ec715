//! `NatsKvStore`: sessions in a NATS JetStream key-value bucket, shared by
//! every host of a cluster, so a cluster needs only NATS.
//!
//! One key per session (`s.<hex id>`) holding the session as JSON; every
//! change is a compare-and-swap on the key's revision, retried on conflict.
//! Expiry is the session's own `last_accessed_ms + ttl_ms`: a session past
//! it reads as gone at once, and the sweep (or `cleanup_expired`) removes it
//! with a revision-checked delete, so one host reports each expiry once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv::{Operation, Store, UpdateErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use snakepit_session::{
    check_ttl, EndListener, EndReason, Error, Result, Session, SessionStore, StoreStats,
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
    kv: Store,
    default_ttl: Duration,
    created: AtomicU64,
    deleted: AtomicU64,
    expired: AtomicU64,
    listeners: Mutex<Vec<EndListener>>,
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
    replicas: usize,
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

    /// Replicas of the bucket in a clustered NATS (default 1).
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n.max(1);
        self
    }

    /// Creates the bucket if it does not exist, and starts the sweep.
    /// Fails with `Error::Invalid` first if the default TTL is one no
    /// session may have (see [`check_ttl`]).
    pub async fn connect(self) -> Result<NatsKvStore> {
        check_ttl(self.default_ttl)?;
        let js = async_nats::jetstream::new(self.nats);
        let kv = match js.get_key_value(&self.bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(async_nats::jetstream::kv::Config {
                    bucket: self.bucket.clone(),
                    description: "snakepit sessions".into(),
                    history: 1,
                    num_replicas: self.replicas,
                    ..Default::default()
                })
                .await
                .map_err(backend)?,
        };
        let inner = Arc::new(KvInner {
            kv,
            default_ttl: self.default_ttl,
            created: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
            expired: AtomicU64::new(0),
            listeners: Mutex::new(Vec::new()),
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

fn unhex(key: &str) -> Option<String> {
    let h = key.strip_prefix("s.")?;
    let bytes: Option<Vec<u8>> = (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

fn expired(s: &Session, now: u64) -> bool {
    now >= s.last_accessed_ms.saturating_add(s.ttl_ms)
}

/// A key's state: absent (with the revision of its tombstone, 0 if none),
/// or a session with its revision.
enum Slot {
    Absent(u64),
    Present(Box<Session>, u64),
}

impl NatsKvStore {
    /// A builder for a store on the connection `nats`.
    pub fn builder(nats: &async_nats::Client) -> NatsKvStoreBuilder {
        NatsKvStoreBuilder {
            nats: nats.clone(),
            bucket: "snakepit_sessions".into(),
            default_ttl: Duration::from_secs(3600),
            sweep_interval: Duration::from_secs(60),
            replicas: 1,
        }
    }

    /// A store with the default bucket and settings.
    pub async fn connect(nats: &async_nats::Client) -> Result<NatsKvStore> {
        Self::builder(nats).connect().await
    }

    async fn load(&self, key: &str) -> Result<Slot> {
        match self.inner.kv.entry(key).await.map_err(backend)? {
            None => Ok(Slot::Absent(0)),
            Some(e) if e.operation != Operation::Put => Ok(Slot::Absent(e.revision)),
            Some(e) => {
                let s: Session = serde_json::from_slice(&e.value)?;
                Ok(Slot::Present(Box::new(s), e.revision))
            }
        }
    }

    /// Writes `value` at `key` if its revision is still `rev` (0: absent);
    /// `Ok(false)` on a conflict.
    async fn swap(&self, key: &str, value: &Session, rev: u64) -> Result<bool> {
        value.check_values()?;
        let bytes = Bytes::from(serde_json::to_vec(value)?);
        let r = if rev == 0 {
            self.inner
                .kv
                .create(key, bytes)
                .await
                .map(|_| ())
                .map_err(|e| match e.kind() {
                    async_nats::jetstream::kv::CreateErrorKind::AlreadyExists => None,
                    _ => Some(backend(e)),
                })
        } else {
            self.inner
                .kv
                .update(key, bytes, rev)
                .await
                .map(|_| ())
                .map_err(|e| match e.kind() {
                    UpdateErrorKind::WrongLastRevision => None,
                    _ => Some(backend(e)),
                })
        };
        match r {
            Ok(()) => Ok(true),
            Err(None) => Ok(false),
            Err(Some(e)) => Err(e),
        }
    }

    /// Removes an expired session found at `rev`; reports it if this call
    /// removed it.
    async fn reap(&self, id: &str, key: &str, rev: u64) -> Result<bool> {
        if self
            .inner
            .kv
            .delete_expect_revision(key, Some(rev))
            .await
            .is_err()
        {
            return Ok(false);
        }
        self.inner.expired.fetch_add(1, Ordering::Relaxed);
        self.ended(id, EndReason::Expired);
        Ok(true)
    }

    fn ended(&self, id: &str, why: EndReason) {
        let listeners = self.inner.listeners.lock().unwrap().clone();
        for l in listeners {
            l(id, why);
        }
    }

    /// Applies `f` to the live session `id` (its TTL restarted), atomically.
    async fn modify<T>(
        &self,
        id: &str,
        mut f: impl FnMut(&mut Session) -> Result<T> + Send,
    ) -> Result<(Session, T)> {
        check("session id", id)?;
        let key = hex("s.", id);
        for _ in 0..ATTEMPTS {
            let (mut s, rev) = match self.load(&key).await? {
                Slot::Absent(_) => return Err(Error::NotFound(id.to_owned())),
                Slot::Present(s, rev) => (*s, rev),
            };
            let now = now_ms();
            if expired(&s, now) {
                return Err(Error::Expired(id.to_owned()));
            }
            let (sid, created) = (s.id.clone(), s.created_at_ms);
            let out = f(&mut s)?;
            s.id = sid;
            s.created_at_ms = created;
            s.last_accessed_ms = now;
            if self.swap(&key, &s, rev).await? {
                return Ok((s, out));
            }
            tokio::task::yield_now().await;
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
        for _ in 0..ATTEMPTS {
            let rev = match self.load(&key).await? {
                Slot::Absent(rev) => rev,
                Slot::Present(s, rev) => {
                    if !expired(&s, now_ms()) {
                        return Ok(None);
                    }
                    self.reap(id, &key, rev).await?;
                    continue;
                }
            };
            let s = Session::new(id, ttl, now_ms());
            if self.swap(&key, &s, rev).await? {
                self.inner.created.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(s));
            }
        }
        Err(Error::Conflict {
            session_id: id.to_owned(),
            attempts: ATTEMPTS,
        })
    }

    /// The live sessions' ids (and keys with revisions of expired ones).
    async fn scan(&self) -> Result<(Vec<String>, Vec<(String, String, u64)>)> {
        let mut keys = match self.inner.kv.keys().await {
            Ok(k) => k,
            Err(e) => return Err(backend(e)),
        };
        let mut names = Vec::new();
        while let Some(k) = keys.next().await {
            names.push(k.map_err(backend)?);
        }
        let (mut live, mut dead) = (Vec::new(), Vec::new());
        let now = now_ms();
        for key in names {
            let Some(id) = unhex(&key) else { continue };
            if let Slot::Present(s, rev) = self.load(&key).await? {
                if expired(&s, now) {
                    dead.push((id, key, rev));
                } else {
                    live.push(id);
                }
            }
        }
        Ok((live, dead))
    }
}

impl SessionStore for NatsKvStore {
    async fn create_session(&self, id: &str, ttl: Option<Duration>) -> Result<Session> {
        self.create(id, ttl.unwrap_or(self.inner.default_ttl))
            .await?
            .ok_or_else(|| Error::AlreadyExists(id.to_owned()))
    }

    async fn ensure_session(&self, id: &str) -> Result<()> {
        loop {
            match self.modify(id, |_| Ok(())).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_gone() => {
                    if self.create(id, self.inner.default_ttl).await?.is_some() {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn get_session(&self, id: &str) -> Result<Session> {
        Ok(self.modify(id, |_| Ok(())).await?.0)
    }

    async fn update_session<F>(&self, id: &str, mut f: F) -> Result<Session>
    where
        F: FnMut(&mut Session) + Send,
    {
        Ok(self
            .modify(id, |s| {
                f(s);
                // Before anything is written.
                check_ttl(s.ttl())
            })
            .await?
            .0)
    }

    async fn delete_session(&self, id: &str) -> Result<bool> {
        check("session id", id)?;
        let key = hex("s.", id);
        for _ in 0..ATTEMPTS {
            let rev = match self.load(&key).await? {
                Slot::Present(s, rev) if !expired(&s, now_ms()) => rev,
                _ => return Ok(false),
            };
            if self
                .inner
                .kv
                .delete_expect_revision(&key, Some(rev))
                .await
                .is_ok()
            {
                self.inner.deleted.fetch_add(1, Ordering::Relaxed);
                self.ended(id, EndReason::Deleted);
                return Ok(true);
            }
        }
        Err(Error::Conflict {
            session_id: id.to_owned(),
            attempts: ATTEMPTS,
        })
    }

    async fn session_exists(&self, id: &str) -> Result<bool> {
        check("session id", id)?;
        Ok(match self.load(&hex("s.", id)).await? {
            Slot::Present(s, _) => !expired(&s, now_ms()),
            Slot::Absent(_) => false,
        })
    }

    async fn list_sessions(&self) -> Result<Vec<String>> {
        Ok(self.scan().await?.0)
    }

    async fn stats(&self) -> Result<StoreStats> {
        let (live, _) = self.scan().await?;
        let mut keys = self.inner.kv.keys().await.map_err(backend)?;
        let mut globals = 0;
        while let Some(k) = keys.next().await {
            if k.map_err(backend)?.starts_with("g.") {
                globals += 1;
            }
        }
        let mut stats = StoreStats::default();
        stats.active_sessions = live.len() as u64;
        stats.sessions_created = self.inner.created.load(Ordering::Relaxed);
        stats.sessions_deleted = self.inner.deleted.load(Ordering::Relaxed);
        stats.sessions_expired = self.inner.expired.load(Ordering::Relaxed);
        stats.global_programs = globals;
        Ok(stats)
    }

    async fn store_program(&self, id: &str, program_id: &str, program: Value) -> Result<()> {
        check("program id", program_id)?;
        self.modify(id, |s| {
            s.programs.insert(program_id.to_owned(), program.clone());
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn get_program(&self, id: &str, program_id: &str) -> Result<Value> {
        let (s, ()) = self.modify(id, |_| Ok(())).await?;
        s.programs
            .get(program_id)
            .cloned()
            .ok_or_else(|| Error::ProgramNotFound {
                session_id: Some(id.to_owned()),
                program_id: program_id.to_owned(),
            })
    }

    async fn store_global_program(&self, program_id: &str, program: Value) -> Result<()> {
        check("program id", program_id)?;
        snakepit_session::check_value("program", &program)?;
        let bytes = Bytes::from(serde_json::to_vec(&program)?);
        self.inner
            .kv
            .put(hex("g.", program_id), bytes)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn get_global_program(&self, program_id: &str) -> Result<Value> {
        check("program id", program_id)?;
        match self
            .inner
            .kv
            .get(hex("g.", program_id))
            .await
            .map_err(backend)?
        {
            Some(b) => Ok(serde_json::from_slice(&b)?),
            None => Err(Error::ProgramNotFound {
                session_id: None,
                program_id: program_id.to_owned(),
            }),
        }
    }

    async fn cleanup_expired(&self) -> Result<usize> {
        let (_, dead) = self.scan().await?;
        let mut n = 0;
        for (id, key, rev) in dead {
            if self.reap(&id, &key, rev).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn get(&self, id: &str, key: &str) -> Result<Option<Value>> {
        check("key", key)?;
        Ok(self.modify(id, |s| Ok(s.data.get(key).cloned())).await?.1)
    }

    async fn set(&self, id: &str, key: &str, value: Value) -> Result<()> {
        check("key", key)?;
        self.modify(id, |s| {
            s.data.insert(key.to_owned(), value.clone());
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn delete(&self, id: &str, key: &str) -> Result<bool> {
        check("key", key)?;
        Ok(self
            .modify(id, |s| Ok(s.data.remove(key).is_some()))
            .await?
            .1)
    }

    fn on_session_end(&self, listener: EndListener) {
        self.inner.listeners.lock().unwrap().push(listener);
    }
}
