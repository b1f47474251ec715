//! Sessions in Redis: one hash per session, expiring with the session's TTL;
//! a sorted set of ids by expiry (for listing and for reporting expiries);
//! a sorted set of the expiries being reported, each claimed by one host
//! until its listeners are told (so that a sweep cut off by its timeout
//! leaves them to the next); a hash of global programs; a hash of counters.
//! Every operation is one Lua script, run atomically by the server, with
//! the server's clock (but `session_exists`, one command, and
//! `update_session`, a read and a compare-and-swap).
//!
//! The connection is the `redis` crate's `ConnectionManager`: one
//! multiplexed connection. Once it drops, the next operation opens a fresh
//! one first (each operation that finds the server away makes one attempt,
//! so operations fail fast while it is away and succeed as soon as it is
//! back), rather than use the manager's own reconnection, whose failure it
//! would answer with long after. It speaks RESP3 to servers that have it
//! (Redis 6 and later), so a connection the server closes while idle is
//! known to have dropped before the next operation. An operation written
//! to a connection that turns out dead before the store saw it close (a
//! reset, a broken pipe) runs once more on a fresh one if it is safe to
//! repeat: every operation but `create_session`, and `update_session` once
//! its write was sent ([`bounded!`]). Every operation is
//! bounded by the store's timeout; a timeout also opens a fresh connection
//! in the background, for a connection that hangs without ever dropping.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::session::{check_id, check_ttl, check_value, Session, StoreStats};
use crate::store::{EndListener, EndListenerWhile, EndReason, Listeners, SessionStore};
use crate::sync::{Unpoisoned, UnpoisonedRw};

/// Opens every script: `now()` is the server's clock in milliseconds;
/// `expect(key, kind)` fails the script with a
/// `CORRUPT` error naming `key` if it holds another type than `kind` (a key
/// under the prefix that something else wrote); `expect_counters(key)`
/// does so if a counter of the hash `key` is not a count the store can
/// have written: a whole number from 0, of at most 18 digits (`HINCRBY`
/// would take a negative one, but a negative `reports` would number
/// reports that the sweep cannot tell from foreign ones, and drops
/// untold). Each script checks the keys it uses before its first write:
/// Redis does not undo a script's writes when a later command of it
/// fails, so a wrong value met halfway (an id taken out of the index, its
/// report refused by a `rep` that is not a sorted set or a count that is
/// not a number) would lose an expiry.
const EXPECT: &str = r#"
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function expect(key, kind)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= kind then
    error({err = 'CORRUPT key `' .. key .. '` holds a ' .. t .. ', not a ' .. kind .. ' (written by something else?)'})
  end
end
local function expect_counters(key)
  local names = {'created', 'deleted', 'expired', 'reports', 'incarnations', 'gdeleted', 'gexpired'}
  local values = redis.call('HMGET', key, unpack(names))
  for i = 1, #names do
    local v = values[i]
    if v and (not string.match(v, '^%d+$') or #v > 18) then
      error({err = 'CORRUPT counter `' .. names[i] .. '` of `' .. key .. '` is not an integer from 0 (written by something else?)'})
    end
  end
end
"#;

/// Shared by the scripts of one session: a touch that slides the session's
/// expiry. KEYS[1] is the session's hash, KEYS[2]
/// the expiry index, KEYS[3] the counters, KEYS[4] the expiries to report;
/// ARGV[1] the session id. A TTL field that is not a
/// number fails the script with a `CORRUPT` error before anything is
/// written (the store's errors take it for `Error::Corrupt`).
///
/// The hash expires at the very millisecond its index entry names
/// (`PEXPIREAT`, not a TTL counted from the clock's microseconds). Redis
/// drops a key once its time is past, so an id is live while its score is
/// at least the clock and expired once the score is below it, in the
/// index as in the hash: a session no longer listed is always one the
/// next sweep reports.
const PRELUDE: &str = r#"
expect(KEYS[1], 'hash')
expect(KEYS[2], 'zset')
expect(KEYS[3], 'hash')
expect(KEYS[4], 'zset')
expect_counters(KEYS[3])
local function ttl_of()
  local raw = redis.call('HGET', KEYS[1], 't')
  local ttl = tonumber(raw)
  if not ttl or ttl < 1 or ttl > 9007199254740991 or ttl % 1 ~= 0 then
    error({err = 'CORRUPT session `' .. ARGV[1] .. '`: ttl not a number of milliseconds: ' .. tostring(raw)})
  end
  return ttl
end
-- `PEXPIREAT` first: it cannot grow memory, so a Redis at its `maxmemory`
-- lets it through, and with it the rest of the touch (a field and a
-- score rewritten in place): a full server still reads and renews the
-- sessions it has. A script that writes what may grow memory does that
-- first, before its touch, so that such a server refuses it.
local function touch(n)
  local ttl = ttl_of()
  redis.call('PEXPIREAT', KEYS[1], n + ttl)
  redis.call('HSET', KEYS[1], 'a', n)
  redis.call('ZADD', KEYS[2], n + ttl, ARGV[1])
end
-- The version after a write, from the one before (`v`, a field's value):
-- the count of writes, then the server's clock in microseconds. A server
-- restarted from a snapshot older than its last writes counts from the
-- snapshot's version again, so the count alone could be given twice (an
-- update that read it would then land over a write made since); the clock
-- has moved on.
local function next_version(v)
  local count = tonumber(string.match(v or '', '^%d+')) or 0
  local t = redis.call('TIME')
  return (count + 1) .. '.' .. t[1] .. '.' .. t[2]
end
-- The id is still in the index, its hash gone: it expired and no sweep
-- has reported it yet. It is taken out and counted here, and set aside to
-- be reported by the caller (its entry in the expiries to report, claimed
-- for `lease` ms, which the caller removes once its listeners are told:
-- a sweep reports it if the caller did not), before the id is used again.
-- '' if it had not expired so. The count comes first: a Redis at its
-- `maxmemory` refuses a script's first write only if that write may grow
-- memory (`HINCRBY`, not `ZREM`), and lets the rest of a script that has
-- written through, so a `ZREM` first would let a full server create
-- sessions.
local function expired_unseen(lease)
  if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
    redis.call('HINCRBY', KEYS[3], 'expired', 1)
    redis.call('ZREM', KEYS[2], ARGV[1])
    local m = redis.call('HINCRBY', KEYS[3], 'reports', 1) .. ':' .. ARGV[1]
    redis.call('ZADD', KEYS[4], now() + tonumber(lease), m)
    return m
  end
  return ''
end
local function create(n, ttl)
  -- 'i': this incarnation of the id, never given twice (an update that
  -- read a session deleted and created again since must not land): the
  -- server's clock in microseconds and a counter, since a server that
  -- restarts without persistence starts its counters at 0 again.
  local t = redis.call('TIME')
  local i = t[1] .. '.' .. t[2] .. '.' .. redis.call('HINCRBY', KEYS[3], 'incarnations', 1)
  redis.call('HSET', KEYS[1], 'v', 1, 'i', i, 'c', n, 'a', n, 't', ttl, 'm', '{}')
  redis.call('PEXPIREAT', KEYS[1], n + ttl)
  redis.call('ZADD', KEYS[2], n + ttl, ARGV[1])
  redis.call('HINCRBY', KEYS[3], 'created', 1)
end
"#;

/// ARGV[2] = ttl ms, ARGV[3] = the lease of a report (ms). Returns {the
/// creation time, or -1 if the session exists; the report of an expiry of
/// the id that no sweep had reported, or ''}.
const CREATE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return {-1, ''} end
local e = expired_unseen(ARGV[3])
local n = now()
create(n, tonumber(ARGV[2]))
return {n, e}
"#;

/// ARGV[2] = default ttl ms, ARGV[3] = the lease of a report (ms). Creates
/// or touches: {1 if created, and the unreported expiry as for CREATE}.
const ENSURE: &str = r#"
local n = now()
if redis.call('EXISTS', KEYS[1]) == 1 then touch(n) return {0, ''} end
local e = expired_unseen(ARGV[3])
create(n, tonumber(ARGV[2]))
return {1, e}
"#;

/// Returns the hash's fields and values after a touch, or nothing.
const GET: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
touch(now())
return redis.call('HGETALL', KEYS[1])
"#;

/// ARGV[2] = field. Returns {1, value}, {1} when the field is not set, or 0.
const GET_FIELD: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
touch(now())
local v = redis.call('HGET', KEYS[1], ARGV[2])
if v then return {1, v} end
return {1}
"#;

/// ARGV[2] = field, ARGV[3] = value. Returns 1, or 0 without a session.
/// The value is written before the touch (its TTL checked first), so that
/// a Redis at its `maxmemory` refuses it.
const SET_FIELD: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
ttl_of()
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
touch(now())
redis.call('HSET', KEYS[1], 'v', next_version(redis.call('HGET', KEYS[1], 'v')))
return 1
"#;

/// ARGV[2] = field. Returns 1 or 0 (was it set), or -1 without a session.
const DEL_FIELD: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
touch(now())
local r = redis.call('HDEL', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[1], 'v', next_version(redis.call('HGET', KEYS[1], 'v')))
return r
"#;

/// ARGV[2] = the version read (`<v>:<i>`: the writes and the incarnation),
/// ARGV[3..] = field, value pairs of the new session. Writes it only if
/// nothing changed it, or deleted and created it again, since it was read:
/// 1; 0 on a conflict; -1 without a session. A hash without the version or
/// the creation time that every session has (something else wrote it)
/// fails with `CORRUPT` before anything is written: a failure after the
/// `DEL` would leave the hash without its expiry.
const REPLACE: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local v = redis.call('HGET', KEYS[1], 'v')
local c = redis.call('HGET', KEYS[1], 'c')
if not v or not c then
  local missing = v and 'creation time `c`' or 'version `v`'
  error({err = 'CORRUPT session `' .. ARGV[1] .. '`: no ' .. missing .. ' (written by something else?)'})
end
local inc = redis.call('HGET', KEYS[1], 'i') or ''
if v .. ':' .. inc ~= ARGV[2] then return 0 end
-- The first write one that may grow memory (the version as it is), so
-- that a Redis at its `maxmemory` refuses the update: `DEL` first would
-- let the rest through.
redis.call('HSET', KEYS[1], 'v', v)
redis.call('DEL', KEYS[1])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'v', next_version(v), 'c', c)
if inc ~= '' then redis.call('HSET', KEYS[1], 'i', inc) end
touch(now())
return 1
"#;

/// ARGV[2] = the lease of a report (ms). Returns {1, ''} if the session
/// was there, {2, its report} if it had expired unreported (now counted),
/// {0, ''} otherwise.
const DELETE: &str = r#"
if redis.call('DEL', KEYS[1]) == 0 then
  local e = expired_unseen(ARGV[2])
  if e == '' then return {0, ''} end
  return {2, e}
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'deleted', 1)
return {1, ''}
"#;

/// KEYS[1] = index, KEYS[2] = counters, KEYS[3] = the expiries to report;
/// ARGV[1] = the key prefix, ARGV[2] = how many at most, ARGV[3] = the
/// lease (ms). Returns reports (`<n>:<id>`) for the caller to tell its
/// listeners of and then remove from KEYS[3], each claimed by it for the
/// lease: first those whose claim by an earlier sweep ran out unremoved
/// (that sweep timed out, or its host went away), then expired ids taken
/// out of the index, each counted once. A report is another host's only
/// once the lease of its claim has passed. An expired id whose hash lives
/// on (something else changed the hash's expiry) gets the hash's expiry
/// in the index (`+inf` for none), so that such ids, however many, never
/// fill the sweep's batches and keep it from the expiries after them.
const CLEANUP: &str = r#"
expect(KEYS[1], 'zset')
expect(KEYS[2], 'hash')
expect(KEYS[3], 'zset')
expect_counters(KEYS[2])
local n = now()
local max = tonumber(ARGV[2])
local claimed_until = n + tonumber(ARGV[3])
local out = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. n, 'LIMIT', 0, max)
for _, m in ipairs(out) do redis.call('ZADD', KEYS[3], claimed_until, m) end
if #out < max then
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. n, 'LIMIT', 0, max - #out)
  local found = 0
  for _, id in ipairs(ids) do
    local left = redis.call('PTTL', ARGV[1] .. 's:' .. id)
    if left == -2 then
      redis.call('ZREM', KEYS[1], id)
      local m = redis.call('HINCRBY', KEYS[2], 'reports', 1) .. ':' .. id
      redis.call('ZADD', KEYS[3], claimed_until, m)
      out[#out + 1] = m
      found = found + 1
    elseif left == -1 then
      -- The hash outlived its entry: something else changed its expiry
      -- (`PERSIST`, `PEXPIRE`). The entry follows the hash, so that the
      -- sweep goes past it to the expiries after it.
      redis.call('ZADD', KEYS[1], '+inf', id)
    else
      redis.call('ZADD', KEYS[1], n + left, id)
    end
  end
  if found > 0 then redis.call('HINCRBY', KEYS[2], 'expired', found) end
end
return out
"#;

/// KEYS[1] = index, KEYS[2] = stats, KEYS[3] = globals, KEYS[4] = the
/// globals' expiries. Returns {active, created, deleted, expired, globals,
/// globals deleted, globals expired}; the global programs whose time has
/// passed but that no sweep removed yet are not counted.
const STATS: &str = r#"
expect(KEYS[1], 'zset')
expect(KEYS[2], 'hash')
expect(KEYS[3], 'hash')
expect(KEYS[4], 'zset')
expect_counters(KEYS[2])
local n = now()
local function c(f) return tonumber(redis.call('HGET', KEYS[2], f) or '0') end
local globals = redis.call('HLEN', KEYS[3])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', n)) do
  globals = globals - redis.call('HEXISTS', KEYS[3], id)
end
return {redis.call('ZCOUNT', KEYS[1], n, '+inf'), c('created'), c('deleted'), c('expired'), globals, c('gdeleted'), c('gexpired')}
"#;

/// Global programs: KEYS[1] = the programs (a hash), KEYS[2] = their
/// expiry times (a sorted set, only of those stored with a TTL), KEYS[3] =
/// stats; ARGV[1] = the program id. Opens each of the scripts below: `n`
/// is the server's clock in milliseconds, `expired` whether the program's
/// time has passed (it is gone, if not removed yet).
const GLOBAL: &str = r#"
expect(KEYS[1], 'hash')
expect(KEYS[2], 'zset')
expect(KEYS[3], 'hash')
expect_counters(KEYS[3])
local n = now()
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
local expired = false
if score then
  local at = tonumber(score)
  expired = at ~= nil and at <= n
end
"#;

/// ARGV[2] = the program's JSON, ARGV[3] = its TTL in milliseconds (0:
/// none). The `HSET` is the first write, so that a full server refuses
/// the script before it writes anything.
const GLOBAL_STORE: &str = r#"
local stale = expired and redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if stale then redis.call('HINCRBY', KEYS[3], 'gexpired', 1) end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('ZADD', KEYS[2], n + ttl, ARGV[1])
else
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
"#;

/// The program's JSON, or nil if it has none or it expired. Writes nothing.
const GLOBAL_GET: &str = r#"
if expired then return false end
return redis.call('HGET', KEYS[1], ARGV[1])
"#;

/// 1 if a live program was removed, else 0 (an expired one is removed and
/// counted as expired).
const GLOBAL_DELETE: &str = r#"
local had = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if had == 0 then return 0 end
if expired then
  redis.call('HINCRBY', KEYS[3], 'gexpired', 1)
  return 0
end
redis.call('HINCRBY', KEYS[3], 'gdeleted', 1)
return 1
"#;

/// KEYS as [`GLOBAL`]; ARGV[1] = the most to remove. Removes the global
/// programs whose time has passed and returns how many expiry times it
/// took.
const GLOBAL_SWEEP: &str = r#"
expect(KEYS[1], 'hash')
expect(KEYS[2], 'zset')
expect(KEYS[3], 'hash')
expect_counters(KEYS[3])
local n = now()
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', n, 'LIMIT', 0, tonumber(ARGV[1]))
local gone = 0
for _, id in ipairs(ids) do
  gone = gone + redis.call('HDEL', KEYS[1], id)
end
if #ids > 0 then redis.call('ZREM', KEYS[2], unpack(ids)) end
if gone > 0 then redis.call('HINCRBY', KEYS[3], 'gexpired', gone) end
return #ids
"#;

/// KEYS[1] = index. The ids that have not expired.
const LIST: &str = r#"
expect(KEYS[1], 'zset')
local n = now()
return redis.call('ZRANGEBYSCORE', KEYS[1], n, '+inf')
"#;

/// How often `update_session` retries when other writers keep changing the
/// session, before it gives up with `Conflict`.
const MAX_ATTEMPTS: u32 = 1000;

struct Scripts {
    create: Script,
    ensure: Script,
    get: Script,
    get_field: Script,
    set_field: Script,
    del_field: Script,
    replace: Script,
    delete: Script,
    cleanup: Script,
    stats: Script,
    list: Script,
    global_store: Script,
    global_get: Script,
    global_delete: Script,
    global_sweep: Script,
}

impl Scripts {
    fn new() -> Self {
        let with = |body: &str| Script::new(&format!("{EXPECT}\n{PRELUDE}\n{body}"));
        let checked = |body: &str| Script::new(&format!("{EXPECT}\n{body}"));
        Scripts {
            create: with(CREATE),
            ensure: with(ENSURE),
            get: with(GET),
            get_field: with(GET_FIELD),
            set_field: with(SET_FIELD),
            del_field: with(DEL_FIELD),
            replace: with(REPLACE),
            delete: with(DELETE),
            cleanup: checked(CLEANUP),
            stats: checked(STATS),
            list: checked(LIST),
            global_store: Script::new(&format!("{EXPECT}\n{GLOBAL}\n{GLOBAL_STORE}")),
            global_get: Script::new(&format!("{EXPECT}\n{GLOBAL}\n{GLOBAL_GET}")),
            global_delete: Script::new(&format!("{EXPECT}\n{GLOBAL}\n{GLOBAL_DELETE}")),
            global_sweep: checked(GLOBAL_SWEEP),
        }
    }
}

/// Sessions in a Redis server, shared by every host that connects to it:
/// a session created on one host is served on another. Expiry is Redis's
/// own (`PEXPIRE`, slid on each use); every write is one Lua script or one
/// command, so writes are atomic, and [`update_session`](SessionStore::update_session)
/// is a compare-and-swap on the session's version, retried on conflict.
///
/// Keys, under the prefix (`snakepit:` by default): `s:<id>` (a hash per
/// session), `idx` (ids by expiry time), `rep` (expiries being reported),
/// `g` (global programs), `gx` (their expiry times, with a
/// [`global_program_ttl`](RedisStoreBuilder::global_program_ttl)), `stats`.
/// A single Redis server (or a primary with replicas); not Redis Cluster.
///
/// The store reconnects by itself: when the server goes away, operations
/// fail with [`Error::Backend`] naming the operation, and succeed again as
/// soon as it is back, without a new store. Each operation gives up after
/// the [timeout](RedisStoreBuilder::timeout) (2 s by default) with an error
/// naming the operation and the timeout, so a paused or unreachable server
/// never hangs a caller. A write that timed out may or may not have been
/// applied.
///
/// Listeners ([`on_session_end`](SessionStore::on_session_end)) hear of
/// deletions made through this handle and of expiries found by this
/// handle's sweep. Each expiry is reported by one host, at least once:
/// one that a sweep took but did not report (it timed out, or its host
/// went away) is reported by a later sweep of any host, once that sweep's
/// claim (twice the store's timeout) has passed; one whose report was
/// told but not acknowledged (Redis paused or gone at that moment) may be
/// reported again. [`cleanup_expired`](SessionStore::cleanup_expired)
/// returns how many expiries it reported, those taken over included. A
/// `delete_session` that failed is not reported, even if Redis applied it
/// before its answer was lost.
///
/// ```no_run
/// # async fn demo() -> Result<(), snakepit_session::Error> {
/// use std::time::Duration;
/// use snakepit_session::{RedisStore, SessionStore};
///
/// let store = RedisStore::builder("redis://:secret@127.0.0.1:6379/")
///     .prefix("tenant_a:")
///     .timeout(Duration::from_secs(1))
///     .connect()
///     .await?;
/// store.ensure_session("user_1").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    link: Link,
    scripts: Scripts,
    prefix: String,
    default_ttl: Duration,
    global_program_ttl: Option<Duration>,
    listeners: Listeners,
    /// The sweep's task, and how often it runs. The task lives on the
    /// runtime that started it; when that runtime ends, the next operation
    /// starts the sweep again on its own.
    sweep: Mutex<Option<tokio::task::JoinHandle<()>>>,
    sweep_interval: Duration,
}

/// The connection, and what it takes to open another.
struct Link {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// Bounds each operation, and each attempt to connect.
    timeout: Duration,
    current: RwLock<ConnectionManager>,
    /// A fresh connection is being opened after a timeout.
    replacing: AtomicBool,
    /// Whether the connection in use dropped ([`Inner::ready`]).
    health: Arc<Health>,
    /// An operation is opening a fresh connection for a dropped one; the
    /// others wait for it ([`Inner::ready`]).
    reopening: AtomicBool,
    reopened: tokio::sync::Notify,
}

/// What the connection's disconnect notices (RESP3) and the operations'
/// errors tell of the connection in use.
#[derive(Default)]
struct Health {
    /// The number of the connection in use: a notice from one replaced
    /// since is ignored.
    generation: AtomicU64,
    /// The last number given to a connection.
    issued: AtomicU64,
    /// The connection in use dropped. The `ConnectionManager` reconnects
    /// by itself, but keeps the error of a reconnection that failed (Redis
    /// full, a reset by a server going down) and answers the next command
    /// with it, however much later: the next operation opens a fresh
    /// connection instead.
    dropped: AtomicBool,
}

impl Link {
    /// The settings of connection number `generation`: over RESP3, its
    /// disconnect notice marks it dropped while it is the one in use.
    fn config_for(&self, generation: u64) -> ConnectionManagerConfig {
        noticing(&self.client, self.config.clone(), &self.health, generation)
    }

    /// Uses `conn`, connection number `generation`, from now on.
    fn install(&self, conn: ConnectionManager, generation: u64) {
        self.health.generation.store(generation, Ordering::Release);
        self.health.dropped.store(false, Ordering::Release);
        *self.current.write_locked() = conn;
    }

    /// A number for the next connection.
    fn next_generation(&self) -> u64 {
        self.health.issued.fetch_add(1, Ordering::AcqRel) + 1
    }
}

/// `config`, with a disconnect notice that marks connection `generation`
/// dropped in `health` while it is the one in use (RESP3 only: over RESP2
/// the operations' errors tell, [`note_error`]).
fn noticing(
    client: &redis::Client,
    config: ConnectionManagerConfig,
    health: &Arc<Health>,
    generation: u64,
) -> ConnectionManagerConfig {
    let resp3 = client
        .get_connection_info()
        .redis_settings()
        .protocol()
        .supports_resp3();
    if !resp3 {
        return config;
    }
    let health = Arc::downgrade(health);
    config.set_push_sender(move |info: redis::PushInfo| {
        if info.kind == redis::PushKind::Disconnection {
            if let Some(h) = health.upgrade() {
                if h.generation.load(Ordering::Acquire) == generation {
                    h.dropped.store(true, Ordering::Release);
                }
            }
        }
        Ok::<(), std::convert::Infallible>(())
    })
}

/// Settings of a [`RedisStore`]. Its `Debug` leaves the URL out (it may
/// hold a password), as the store's does.
#[derive(Clone)]
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    default_ttl: Duration,
    sweep_interval: Duration,
    timeout: Duration,
    global_program_ttl: Option<Duration>,
}

impl RedisStoreBuilder {
    /// Keys start with this (`snakepit:` by default). Stores whose prefixes
    /// differ, none being the start of another, do not see each other's
    /// sessions, programs or statistics on one server: give each tenant or
    /// application its own, ended by a separator (`tenant_a:`,
    /// `tenant_b:`). Not `t` and `ts:`: the session `idx` of the first would
    /// be the key `ts:idx`, the second's index.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The TTL of sessions created without one (1 hour by default).
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// How long a global program stored through this handle lives after it
    /// was stored, by the server's clock (the original's
    /// `global_program_ttl`; reads do not extend it, storing it again
    /// does, with the TTL of the handle that stores it). By default global
    /// programs never expire. `connect` fails with `Error::Invalid` for a
    /// TTL no session may have (see [`check_ttl`](crate::check_ttl)).
    pub fn global_program_ttl(mut self, ttl: Duration) -> Self {
        self.global_program_ttl = Some(ttl);
        self
    }

    /// How often this handle looks for expired sessions to report (30 s by
    /// default). Redis frees them itself; the sweep only tells listeners.
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.sweep_interval = every.max(Duration::from_millis(1));
        self
    }

    /// How long one store operation may take, reconnecting included, before
    /// it fails with an error naming the operation and this timeout (2 s by
    /// default). Connecting is bounded by it too.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Connects and starts the sweep. Fails if the server cannot be reached
    /// (or does not answer within the timeout), or the URL is not valid;
    /// and, before trying, with `Error::Invalid` if the default TTL is one
    /// no session may have (see [`check_ttl`](crate::check_ttl)).
    pub async fn connect(self) -> Result<RedisStore> {
        check_ttl(self.default_ttl)?;
        if let Some(ttl) = self.global_program_ttl {
            check_ttl(ttl)?;
        }
        let client = client(&self.url)?;
        // One attempt per reconnection: an operation that finds the server
        // away fails at once, and the next one tries again. (The crate's
        // retries would wait at least a second between attempts.)
        // No response timeout of the crate's (500 ms by default): the
        // store's own timeout bounds every operation, and replaces a
        // connection that hangs.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(None);
        let health = Arc::new(Health::default());
        let first = noticing(&client, config.clone(), &health, 0);
        let (client, conn) = match try_open(&client, first, self.timeout).await {
            // A server older than Redis 6 has no RESP3 (`client` asks for
            // it unless the URL chose): RESP2 then.
            Err(Some(e)) if no_resp3(&e) => {
                let client = speaking(
                    client.get_connection_info().clone(),
                    redis::ProtocolVersion::RESP2,
                )?;
                let conn = open(&client, config.clone(), self.timeout).await?;
                (client, conn)
            }
            r => (client, opened(r, self.timeout)?),
        };
        let inner = Arc::new(Inner {
            link: Link {
                client,
                config,
                timeout: self.timeout,
                current: RwLock::new(conn),
                replacing: AtomicBool::new(false),
                health,
                reopening: AtomicBool::new(false),
                reopened: tokio::sync::Notify::new(),
            },
            scripts: Scripts::new(),
            prefix: self.prefix,
            default_ttl: self.default_ttl,
            global_program_ttl: self.global_program_ttl,
            listeners: Listeners::default(),
            sweep: Mutex::new(None),
            sweep_interval: self.sweep_interval,
        });
        inner.keep_sweeping();
        Ok(RedisStore { inner })
    }
}

/// The client for `url`; `rediss://` needs the `redis-tls` feature.
fn client(url: &str) -> Result<redis::Client> {
    let tls = url.starts_with("rediss://");
    if tls && !cfg!(feature = "redis-tls") {
        return Err(Error::Backend(
            "redis `connect`: a `rediss://` URL needs the `redis-tls` feature of snakepit-session"
                .into(),
        ));
    }
    #[cfg(feature = "redis-tls")]
    if tls && rustls::crypto::CryptoProvider::get_default().is_none() {
        // Only if the application has not chosen one: installing fails
        // harmlessly if another thread installed one meanwhile.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    // Requests are small and answered at once: no Nagle delay.
    let info = redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|e| backend("connect", e.into()))?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let info = as_named_user(info);
    // RESP3, unless the URL says which (`?protocol=resp2`): over RESP3 the
    // server's closing of a connection reaches the `ConnectionManager` at
    // once, which opens another before the next operation. Over RESP2 the
    // next operation learns of it only by being written to the closed
    // connection: it is repeated on a fresh one if it is safe to repeat
    // ([`bounded!`]), but a `create_session` made first after every idle
    // period that outlived the connection (the server's `timeout`, a NAT
    // or load balancer dropping idle connections, a restart while nothing
    // happened) fails.
    if url_sets_protocol(url) {
        return redis::Client::open(info).map_err(|e| backend("connect", e.into()));
    }
    speaking(info, redis::ProtocolVersion::RESP3)
}

/// `info`, made to authenticate as the user its URL names even when the
/// URL gives no password (`redis://app@host/`). The redis crate sends no
/// `AUTH` without a password, so such a connection would run as `default`,
/// with that user's rights instead of the ones the operator gave `app`. An
/// empty password signs in a `nopass` user and is refused for a user that
/// has a password, which is the answer such a URL deserves.
fn as_named_user(info: redis::ConnectionInfo) -> redis::ConnectionInfo {
    let settings = info.redis_settings();
    if settings.username().is_none() || settings.password().is_some() {
        return info;
    }
    let settings = settings.clone().set_password("");
    info.set_redis_settings(settings)
}

/// A client of `info` speaking `protocol`.
fn speaking(
    info: redis::ConnectionInfo,
    protocol: redis::ProtocolVersion,
) -> Result<redis::Client> {
    let settings = info.redis_settings().clone().set_protocol(protocol);
    redis::Client::open(info.set_redis_settings(settings)).map_err(|e| backend("connect", e.into()))
}

/// Whether `url` has a `protocol` in its query.
fn url_sets_protocol(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query
            .split('&')
            .any(|pair| pair.split('=').next() == Some("protocol"))
    })
}

/// Whether connecting failed because the server has no RESP3: no `HELLO`
/// (Redis 5; the crate knows its words, but not those of later servers
/// where `HELLO` was renamed away), or no version 3 of it (`NOPROTO`).
fn no_resp3(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::RESP3NotSupported
        || e.code() == Some("NOPROTO")
        || e.detail().is_some_and(|d| {
            d.starts_with("unknown command") && d.to_ascii_uppercase().contains("HELLO")
        })
}

/// A new connection, within `timeout`.
async fn open(
    client: &redis::Client,
    config: ConnectionManagerConfig,
    timeout: Duration,
) -> Result<ConnectionManager> {
    opened(try_open(client, config, timeout).await, timeout)
}

/// A new connection, or the error that stopped it (`None`: `timeout`
/// passed).
async fn try_open(
    client: &redis::Client,
    config: ConnectionManagerConfig,
    timeout: Duration,
) -> std::result::Result<ConnectionManager, Option<redis::RedisError>> {
    match tokio::time::timeout(
        timeout,
        ConnectionManager::new_with_config(client.clone(), config),
    )
    .await
    {
        Ok(r) => r.map_err(Some),
        Err(_) => Err(None),
    }
}

/// [`try_open`]'s outcome as the store's.
fn opened(
    r: std::result::Result<ConnectionManager, Option<redis::RedisError>>,
    timeout: Duration,
) -> Result<ConnectionManager> {
    match r {
        Ok(conn) => Ok(conn),
        // The crate's own connection timeout (the same) may come first.
        Err(Some(e)) if e.is_timeout() => Err(timed_out("connect", timeout)),
        Err(Some(e)) => Err(backend("connect", e.into())),
        Err(None) => Err(timed_out("connect", timeout)),
    }
}

/// Runs an operation's body with [`Inner::bounded`] (within the store's
/// timeout, named `$op` in its errors), after a fresh connection if the one
/// in use dropped ([`Inner::ready`]), and once more, on a fresh connection,
/// if one of its commands (or that connecting):
/// - was refused a connection: a refused command was never sent, so this
///   repeats no write;
/// - was written to a connection that turned out dead (reset, broken pipe,
///   closed before its answer: a restart while the store was idle, before
///   it saw the connection close), unless the body had sent a command
///   whose repeat would differ ([`unrepeatable`]). Every other command is
///   safe to repeat: reads, writes of given values, create-if-absent,
///   deletions, the sweep's claims (at least once already).
///
/// A body of several commands runs again from its start; each such body is
/// safe to repeat once its commands that were sent have had their answers
/// (reads, compare-and-swap, cleanup).
///
/// A server that answers `LOADING` (restarted, still reading its data from
/// disk) ran none of the command it refused, so the body runs again, after
/// a pause that grows from 10 ms to 200 ms, for as long as the server loads
/// and the store's timeout leaves time; then the last refusal is the
/// answer.
macro_rules! bounded {
    ($inner:expr, $op:literal, $body:block) => {
        $inner.bounded($op, async {
            // `None`: a timeout beyond what an `Instant` holds.
            let until = tokio::time::Instant::now().checked_add($inner.link.timeout);
            let mut pause = Duration::from_millis(10);
            // Whether the body ran again after a refused or dead
            // connection: once at most, but a repeat that meets a server
            // still loading waits for it as a first run does.
            let mut repeated = false;
            loop {
                let (r, met) = attempt!($inner, $body).await;
                break match r {
                    Err(_)
                        if met.loading
                            && until.is_none_or(|u| tokio::time::Instant::now() + pause < u) =>
                    {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(200));
                        continue;
                    }
                    Err(_) if !repeated && (met.refused || (met.dead && !met.unrepeatable)) => {
                        repeated = true;
                        continue;
                    }
                    r => r,
                };
            }
        })
    };
}

/// One run of an operation's body ([`bounded!`]), after a fresh connection
/// if the one in use dropped; its outcome and what its commands met. A
/// connection that failed is marked dropped, for the next run to replace.
macro_rules! attempt {
    ($inner:expr, $body:block) => {
        SEEN.scope(Seen::default(), async {
            let r: Result<_> = async {
                $inner.ready().await?;
                $body
            }
            .await;
            let met = SEEN.with(Seen::met);
            if met.dropped {
                $inner.link.health.dropped.store(true, Ordering::Release);
            }
            (r, met)
        })
    };
}

/// What an operation's commands met ([`bounded!`]).
#[derive(Default)]
struct Seen {
    /// A command (or the connecting) was refused a connection.
    refused: Cell<bool>,
    /// The connection failed (dropped, reset, refused).
    dropped: Cell<bool>,
    /// A command was written to a connection that turned out dead: reset,
    /// broken pipe, closed before the answer.
    dead: Cell<bool>,
    /// A command whose repeat would differ was sent ([`unrepeatable`]).
    unrepeatable: Cell<bool>,
    /// A command was refused, unrun, by a server loading its data.
    loading: Cell<bool>,
}

/// [`Seen`], read once a run ended.
#[derive(Clone, Copy)]
struct Met {
    refused: bool,
    dropped: bool,
    dead: bool,
    unrepeatable: bool,
    loading: bool,
}

impl Seen {
    fn met(&self) -> Met {
        Met {
            refused: self.refused.get(),
            dropped: self.dropped.get(),
            dead: self.dead.get(),
            unrepeatable: self.unrepeatable.get(),
            loading: self.loading.get(),
        }
    }
}

tokio::task_local! {
    /// What the running operation's commands met ([`bounded!`]).
    static SEEN: Seen;
}

/// Notes, before it is sent, that the running operation sends a command
/// whose repeat would differ from it (`create_session`'s create: a repeat
/// would find the session it made; `update_session`'s replace: a repeat
/// would apply the change twice). A dead connection then fails the
/// operation instead of repeating it ([`bounded!`]).
fn unrepeatable() {
    let _ = SEEN.try_with(|s| s.unrepeatable.set(true));
}

/// Notes, for the operation that got it, that `e` is a failed connection
/// (the next operation opens a fresh one), and whether it was refused (the
/// command was never sent), or that the server refused the command, unrun,
/// while loading its data (`LOADING`).
pub(crate) fn note_error(e: &redis::RedisError) {
    if e.code() == Some("LOADING") {
        let _ = SEEN.try_with(|s| s.loading.set(true));
    }
    if e.is_io_error() {
        let _ = SEEN.try_with(|s| {
            s.dropped.set(true);
            s.refused.set(s.refused.get() || e.is_connection_refusal());
            s.dead.set(
                s.dead.get()
                    || (e.is_connection_dropped() && !e.is_connection_refusal() && !e.is_timeout()),
            );
        });
    }
}

/// A backend failure of `op`, named.
fn backend(op: &'static str, e: Error) -> Error {
    match e {
        Error::Backend(msg) => Error::Backend(format!("redis `{op}`: {msg}")),
        other => other,
    }
}

/// `op` got no answer within `after`.
fn timed_out(op: &'static str, after: Duration) -> Error {
    Error::Timeout {
        operation: op,
        after,
    }
}

/// An operation's connecting for a dropped connection ([`Inner::ready`]):
/// ended, also when the operation is dropped, it lets the waiting ones
/// look again.
struct Reopening<'a>(&'a Link);

impl Drop for Reopening<'_> {
    fn drop(&mut self) {
        self.0.reopening.store(false, Ordering::Release);
        self.0.reopened.notify_waiters();
    }
}

async fn sweep(store: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = store.upgrade() else {
            return;
        };
        let told = AtomicUsize::new(0);
        if let Err(e) = bounded!(inner, "sweep", { inner.cleanup(&told).await }).await {
            tracing::warn!(error = %e, "redis session sweep failed");
        }
    }
}

impl std::fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("prefix", &self.prefix)
            .field("default_ttl", &self.default_ttl)
            .field("sweep_interval", &self.sweep_interval)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("default_ttl", &self.inner.default_ttl)
            .field("timeout", &self.inner.link.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A builder for a store on the server at `url`: `redis://host:port/db`,
    /// `redis://:password@host/` or `redis://user:password@host/` (ACL),
    /// `rediss://...` for TLS (feature `redis-tls`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: "snakepit:".into(),
            default_ttl: Duration::from_secs(3600),
            sweep_interval: Duration::from_secs(30),
            timeout: Duration::from_secs(2),
            global_program_ttl: None,
        }
    }

    /// Connects to `url` with the default settings.
    pub async fn connect(url: impl Into<String>) -> Result<Self> {
        Self::builder(url).connect().await
    }
}

/// A TTL in the milliseconds the scripts take; `check_ttl` has made it at
/// least 1 and at most 2^53 - 1.
fn ttl_ms(ttl: Duration) -> u64 {
    ttl.as_millis() as u64
}

impl Inner {
    /// The connection to use now (a cheap handle).
    fn conn(&self) -> ConnectionManager {
        self.link.current.read_locked().clone()
    }

    /// Starts the sweep on the current runtime unless it runs: at
    /// `connect`, and again after the runtime it ran on has ended (a
    /// store shared between runtimes outlives the one it connected on).
    fn keep_sweeping(self: &Arc<Self>) {
        let mut sweep = self.sweep.locked();
        if sweep
            .as_ref()
            .is_none_or(tokio::task::JoinHandle::is_finished)
        {
            *sweep = Some(tokio::spawn(self::sweep(
                Arc::downgrade(self),
                self.sweep_interval,
            )));
        }
    }

    /// Runs `op` within the timeout; names it in its backend errors. The
    /// operations call it through [`bounded!`], which adds the retry of a
    /// refused command.
    async fn bounded<T>(
        self: &Arc<Self>,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.keep_sweeping();
        match tokio::time::timeout(self.link.timeout, fut).await {
            Ok(r) => r.map_err(|e| match e {
                // A reconnection the operation waited for timed out: the
                // crate's connection timeout is the store's own.
                Error::Timeout { .. } => timed_out(op, self.link.timeout),
                e => backend(op, e),
            }),
            Err(_) => {
                self.replace_connection();
                Err(timed_out(op, self.link.timeout))
            }
        }
    }

    /// Before an operation's commands: if the connection in use dropped,
    /// a fresh one, so that the `ConnectionManager`'s own reconnection,
    /// which may have failed long before (Redis full, a reset by a server
    /// going down), does not fail this operation with its old error. One
    /// operation connects at a time; the others wait for it, and make an
    /// attempt of their own if it failed.
    async fn ready(&self) -> Result<()> {
        loop {
            if !self.link.health.dropped.load(Ordering::Acquire) {
                return Ok(());
            }
            let done = self.link.reopened.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.link.reopening.swap(true, Ordering::AcqRel) {
                done.await;
                continue;
            }
            let _gate = Reopening(&self.link);
            if !self.link.health.dropped.load(Ordering::Acquire) {
                return Ok(()); // reopened since it looked
            }
            let generation = self.link.next_generation();
            let config = self.link.config_for(generation);
            return match try_open(&self.link.client, config, self.link.timeout).await {
                Ok(conn) => {
                    self.link.install(conn, generation);
                    tracing::debug!("redis session store: new connection after a drop");
                    Ok(())
                }
                // Named by the operation ([`Inner::bounded`]).
                Err(Some(e)) => Err(e.into()),
                Err(None) => Err(timed_out("redis", self.link.timeout)),
            };
        }
    }

    /// After a timeout: opens a fresh connection in the background and
    /// uses it from then on. A connection that drops is reopened by the
    /// `ConnectionManager` itself; this is for one that hangs (a server
    /// gone silent, a network that drops packets), which TCP would take
    /// many minutes to give up on. One attempt at a time.
    fn replace_connection(self: &Arc<Self>) {
        if self.link.replacing.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = Arc::downgrade(self);
        let client = self.link.client.clone();
        let generation = self.link.next_generation();
        let (config, timeout) = (self.link.config_for(generation), self.link.timeout);
        tokio::spawn(async move {
            let fresh = open(&client, config, timeout).await;
            let Some(inner) = store.upgrade() else {
                return;
            };
            match fresh {
                Ok(conn) => {
                    inner.link.install(conn, generation);
                    tracing::info!("redis session store: new connection after a timeout");
                }
                Err(e) => tracing::debug!(error = %e, "redis session store: reconnect failed"),
            }
            inner.link.replacing.store(false, Ordering::Release);
        });
    }

    fn key(&self, id: &str) -> String {
        format!("{}s:{id}", self.prefix)
    }
    fn index(&self) -> String {
        format!("{}idx", self.prefix)
    }
    fn stats_key(&self) -> String {
        format!("{}stats", self.prefix)
    }
    fn globals(&self) -> String {
        format!("{}g", self.prefix)
    }
    fn global_expiries(&self) -> String {
        format!("{}gx", self.prefix)
    }

    /// A global program script's invocation: KEYS = programs, their
    /// expiries, stats; ARGV[1] = the program id.
    fn invoke_global<'a>(
        &self,
        script: &'a Script,
        program_id: &str,
    ) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(self.globals())
            .key(self.global_expiries())
            .key(self.stats_key())
            .arg(program_id);
        inv
    }

    fn reports(&self) -> String {
        format!("{}rep", self.prefix)
    }

    /// A session script's invocation: KEYS = hash, index, stats, reports;
    /// ARGV[1] = id.
    fn invoke<'a>(&self, script: &'a Script, id: &str) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(self.key(id))
            .key(self.index())
            .key(self.stats_key())
            .key(self.reports())
            .arg(id);
        inv
    }

    /// How long a host's claim on the expiries it is to report lasts, in
    /// milliseconds: the operation that claimed them ends within the
    /// timeout, and its removal of their reports (sent before it ends) is
    /// answered within another. Only then may another sweep report them.
    fn lease_ms(&self) -> u64 {
        // At most what a script's number holds exactly.
        u64::try_from(2 * self.link.timeout.as_millis())
            .unwrap_or(u64::MAX)
            .clamp(1, crate::MAX_TTL.as_millis() as u64)
    }

    fn notify(&self, id: &str, reason: EndReason) {
        self.listeners.notify(id, reason);
    }

    /// Tells the listeners of the expiries `reports` (`<n>:<id>`, from the
    /// scripts) and removes their reports: another sweep would report them
    /// again once this host's claim has passed. At once, without an
    /// `.await` in between, so that an operation cut off by its timeout
    /// (which can end it only at an `.await`) has either not received them
    /// (the next sweep reports them) or told its listeners and sent the
    /// removal, on a task of its own that the timeout does not end.
    ///
    /// A report the store cannot have written (something else put it in
    /// `rep`, or an id that is no session's in `idx`: bytes that are not
    /// UTF-8, no `<n>:`, an id no session may have) is removed untold, so
    /// that it cannot stop the reports swept with it, in this sweep or any
    /// later one; the caller names it in a `Corrupt` error.
    fn report_expired(&self, reports: Vec<Vec<u8>>) -> Reported {
        let mut reported = Reported::default();
        if reports.is_empty() {
            return reported;
        }
        for report in &reports {
            match report_id(report) {
                Some(id) => {
                    self.notify(id, EndReason::Expired);
                    reported.told += 1;
                }
                None => {
                    reported.foreign += 1;
                    if reported.first_foreign.is_none() {
                        reported.first_foreign = Some(shown(report));
                    }
                }
            }
        }
        let mut conn = self.conn();
        let (key, timeout) = (self.reports(), self.link.timeout);
        tokio::spawn(async move {
            let mut removal = redis::cmd("ZREM");
            removal.arg(key).arg(reports);
            match tokio::time::timeout(timeout, removal.query_async::<i64>(&mut conn)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "redis session store: expiries reported, their removal failed")
                }
                Err(_) => tracing::debug!(
                    "redis session store: expiries reported, their removal timed out"
                ),
            }
        });
        reported
    }

    /// One sweep: reports expiries in batches of up to 1,000 until none is
    /// left; returns how many it reported. `told` counts them, and is the
    /// caller's, so that a sweep repeated on a fresh connection
    /// ([`bounded!`]) after it told some batches counts those too. Reports
    /// it removed untold ([`Inner::report_expired`]) fail it with
    /// `Corrupt` once the rest are told.
    async fn cleanup(&self, told: &AtomicUsize) -> Result<usize> {
        const BATCH: usize = 1000;
        let mut foreign = 0;
        let mut first_foreign = None;
        let mut conn = self.conn();
        loop {
            let reports: Vec<Vec<u8>> = self
                .scripts
                .cleanup
                .key(self.index())
                .key(self.stats_key())
                .key(self.reports())
                .arg(&self.prefix)
                .arg(BATCH)
                .arg(self.lease_ms())
                .invoke_async(&mut conn)
                .await?;
            let taken = reports.len();
            let batch = self.report_expired(reports);
            told.fetch_add(batch.told, Ordering::AcqRel);
            foreign += batch.foreign;
            first_foreign = first_foreign.or(batch.first_foreign);
            if taken < BATCH {
                break;
            }
        }
        loop {
            let taken: usize = self
                .scripts
                .global_sweep
                .key(self.globals())
                .key(self.global_expiries())
                .key(self.stats_key())
                .arg(BATCH)
                .invoke_async(&mut conn)
                .await?;
            if taken < BATCH {
                break;
            }
        }
        let total = told.load(Ordering::Acquire);
        match first_foreign {
            None => Ok(total),
            Some(first) => Err(Error::Corrupt(format!(
                "{foreign} expiries to report (in `{}`, or taken from `{}`) were not \
                 written by the store (the first: {first}); dropped unreported, \
                 after the {total} others were reported",
                self.reports(),
                self.index()
            ))),
        }
    }

    async fn read(&self, id: &str) -> Result<(Session, String)> {
        check_id("session id", id)?;
        let fields: Vec<String> = self
            .invoke(&self.scripts.get, id)
            .invoke_async(&mut self.conn())
            .await?;
        if fields.is_empty() {
            return Err(Error::NotFound(id.to_owned()));
        }
        parse(id, fields)
    }

    async fn set_field(
        &self,
        id: &str,
        field: String,
        what: &'static str,
        value: &Value,
    ) -> Result<()> {
        check_id("session id", id)?;
        let found: i64 = self
            .invoke(&self.scripts.set_field, id)
            .arg(field)
            .arg(stored_json(what, value)?)
            .invoke_async(&mut self.conn())
            .await?;
        if found == 0 {
            return Err(Error::NotFound(id.to_owned()));
        }
        Ok(())
    }

    async fn get_field(&self, id: &str, field: String) -> Result<Option<Value>> {
        check_id("session id", id)?;
        let r: redis::Value = self
            .invoke(&self.scripts.get_field, id)
            .arg(field)
            .invoke_async(&mut self.conn())
            .await?;
        match r {
            redis::Value::Array(items) => match items.get(1) {
                Some(v) => {
                    let s: String = redis::from_redis_value_ref(v)
                        .map_err(|e| Error::Corrupt(format!("session `{id}`: {e}")))?;
                    Ok(Some(read_json(&|| format!("session `{id}`"), &s)?))
                }
                None => Ok(None),
            },
            _ => Err(Error::NotFound(id.to_owned())),
        }
    }
}

/// A session from its hash's fields and values; also its version
/// (`<v>:<i>`, as the replace script compares it).
fn parse(id: &str, fields: Vec<String>) -> Result<(Session, String)> {
    let mut s = Session::new(id, Duration::ZERO, 0);
    let mut version = String::new();
    let mut incarnation = String::new();
    let num = |v: &str| {
        v.parse::<u64>()
            .map_err(|_| Error::Corrupt(format!("session `{id}`: not a number: {v}")))
    };
    let mut it = fields.into_iter();
    while let (Some(f), Some(v)) = (it.next(), it.next()) {
        match f.as_str() {
            "v" => version = v,
            "i" => incarnation = v,
            "c" => s.created_at_ms = num(&v)?,
            "a" => s.last_accessed_ms = num(&v)?,
            "t" => s.ttl_ms = num(&v)?,
            "m" => {
                s.metadata = serde_json::from_str(&v)?;
                for value in s.metadata.values() {
                    if check_value("metadata", value).is_err() {
                        return Err(Error::Corrupt(format!(
                            "session `{id}`: a stored metadata value nests deeper than \
                             MAX_VALUE_DEPTH ({} levels), which the store never writes \
                             (written by something else?)",
                            crate::MAX_VALUE_DEPTH
                        )));
                    }
                }
            }
            _ => {
                // A data key or program id no operation can have written
                // (empty, over `MAX_ID_LEN`) is stored data the store did
                // not write, not the caller's: an update would otherwise
                // fail with `Invalid` for it.
                let named = |k: &str| match check_id("key", k) {
                    Ok(()) => Ok(k.to_owned()),
                    Err(_) => Err(Error::Corrupt(format!(
                        "session `{id}`: a data key or program id of {} bytes, \
                         which no session may have (written by something else?)",
                        k.len()
                    ))),
                };
                let whose = || format!("session `{id}`");
                if let Some(k) = f.strip_prefix("d:") {
                    s.data.insert(named(k)?, read_json(&whose, &v)?);
                } else if let Some(k) = f.strip_prefix("p:") {
                    s.programs.insert(named(k)?, read_json(&whose, &v)?);
                }
            }
        }
    }
    Ok((s, format!("{version}:{incarnation}")))
}

/// The hash's fields and values of a session (without `v` and `c`, which
/// the replace script keeps).
fn fields(s: &Session) -> Result<Vec<String>> {
    s.check_values()?;
    let mut out = Vec::with_capacity(6 + 2 * (s.data.len() + s.programs.len()));
    out.extend(["a".into(), s.last_accessed_ms.to_string()]);
    out.extend(["t".into(), s.ttl_ms.max(1).to_string()]);
    out.extend(["m".into(), serde_json::to_string(&s.metadata)?]);
    for (k, v) in &s.data {
        out.push(format!("d:{k}"));
        out.push(serde_json::to_string(v)?);
    }
    for (k, v) in &s.programs {
        out.push(format!("p:{k}"));
        out.push(serde_json::to_string(v)?);
    }
    Ok(out)
}

impl SessionStore for RedisStore {
    async fn create_session(&self, id: &str, ttl: Option<Duration>) -> Result<Session> {
        let inner = &self.inner;
        bounded!(inner, "create_session", {
            check_id("session id", id)?;
            let ttl = ttl.unwrap_or(inner.default_ttl);
            check_ttl(ttl)?;
            unrepeatable();
            let (created, expired): (i64, String) = inner
                .invoke(&inner.scripts.create, id)
                .arg(ttl_ms(ttl))
                .arg(inner.lease_ms())
                .invoke_async(&mut inner.conn())
                .await?;
            inner.report_expired(unseen(expired));
            if created < 0 {
                return Err(Error::AlreadyExists(id.to_owned()));
            }
            Ok(Session::new(id, ttl, created as u64))
        })
        .await
    }

    async fn ensure_session(&self, id: &str) -> Result<()> {
        let inner = &self.inner;
        bounded!(inner, "ensure_session", {
            check_id("session id", id)?;
            // The default TTL was checked by `connect`.
            let (_, expired): (i64, String) = inner
                .invoke(&inner.scripts.ensure, id)
                .arg(ttl_ms(inner.default_ttl))
                .arg(inner.lease_ms())
                .invoke_async(&mut inner.conn())
                .await?;
            inner.report_expired(unseen(expired));
            Ok(())
        })
        .await
    }

    async fn get_session(&self, id: &str) -> Result<Session> {
        let inner = &self.inner;
        bounded!(inner, "get_session", { Ok(inner.read(id).await?.0) }).await
    }

    async fn update_session<F>(&self, id: &str, mut f: F) -> Result<Session>
    where
        F: FnMut(&mut Session) + Send,
    {
        let inner = &self.inner;
        bounded!(inner, "update_session", {
            for attempt in 0..MAX_ATTEMPTS {
                let (mut s, version) = inner.read(id).await?;
                let created = s.created_at_ms;
                f(&mut s);
                s.id = id.to_owned();
                s.created_at_ms = created;
                // Before anything is written.
                check_ttl(s.ttl())?;
                unrepeatable();
                let written: i64 = inner
                    .invoke(&inner.scripts.replace, id)
                    .arg(&version)
                    .arg(fields(&s)?)
                    .invoke_async(&mut inner.conn())
                    .await?;
                match written {
                    1 => return Ok(s),
                    -1 => return Err(Error::NotFound(id.to_owned())),
                    _ => crate::conflict_backoff(attempt).await,
                }
            }
            Err(Error::Conflict {
                session_id: id.to_owned(),
                attempts: MAX_ATTEMPTS,
            })
        })
        .await
    }

    async fn delete_session(&self, id: &str) -> Result<bool> {
        let inner = &self.inner;
        bounded!(inner, "delete_session", {
            check_id("session id", id)?;
            let (removed, expired): (i64, String) = inner
                .invoke(&inner.scripts.delete, id)
                .arg(inner.lease_ms())
                .invoke_async(&mut inner.conn())
                .await?;
            if removed == 1 {
                inner.notify(id, EndReason::Deleted);
            }
            inner.report_expired(unseen(expired));
            Ok(removed == 1)
        })
        .await
    }

    async fn session_exists(&self, id: &str) -> Result<bool> {
        let inner = &self.inner;
        bounded!(inner, "session_exists", {
            check_id("session id", id)?;
            let n: i64 = redis::cmd("EXISTS")
                .arg(inner.key(id))
                .query_async(&mut inner.conn())
                .await?;
            Ok(n == 1)
        })
        .await
    }

    async fn list_sessions(&self) -> Result<Vec<String>> {
        let inner = &self.inner;
        bounded!(inner, "list_sessions", {
            Ok(inner
                .scripts
                .list
                .key(inner.index())
                .invoke_async(&mut inner.conn())
                .await?)
        })
        .await
    }

    async fn stats(&self) -> Result<StoreStats> {
        let inner = &self.inner;
        bounded!(inner, "stats", {
            let v: Vec<u64> = inner
                .scripts
                .stats
                .key(inner.index())
                .key(inner.stats_key())
                .key(inner.globals())
                .key(inner.global_expiries())
                .invoke_async(&mut inner.conn())
                .await?;
            let [active, created, deleted, expired, globals, globals_deleted, globals_expired] =
                v[..]
            else {
                return Err(Error::Corrupt(format!("stats script answered {v:?}")));
            };
            Ok(StoreStats {
                active_sessions: active,
                sessions_created: created,
                sessions_deleted: deleted,
                sessions_expired: expired,
                global_programs: globals,
                global_programs_deleted: globals_deleted,
                global_programs_expired: globals_expired,
            })
        })
        .await
    }

    async fn store_program(&self, id: &str, program_id: &str, program: Value) -> Result<()> {
        let inner = &self.inner;
        bounded!(inner, "store_program", {
            check_id("program id", program_id)?;
            inner
                .set_field(id, format!("p:{program_id}"), "program", &program)
                .await
        })
        .await
    }

    async fn get_program(&self, id: &str, program_id: &str) -> Result<Value> {
        let inner = &self.inner;
        bounded!(inner, "get_program", {
            check_id("program id", program_id)?;
            inner
                .get_field(id, format!("p:{program_id}"))
                .await?
                .ok_or_else(|| Error::ProgramNotFound {
                    session_id: Some(id.to_owned()),
                    program_id: program_id.to_owned(),
                })
        })
        .await
    }

    async fn store_global_program(&self, program_id: &str, program: Value) -> Result<()> {
        let inner = &self.inner;
        bounded!(inner, "store_global_program", {
            check_id("program id", program_id)?;
            let _: i64 = inner
                .invoke_global(&inner.scripts.global_store, program_id)
                .arg(stored_json("program", &program)?)
                .arg(inner.global_program_ttl.map_or(0, ttl_ms))
                .invoke_async(&mut inner.conn())
                .await?;
            Ok(())
        })
        .await
    }

    async fn get_global_program(&self, program_id: &str) -> Result<Value> {
        let inner = &self.inner;
        bounded!(inner, "get_global_program", {
            check_id("program id", program_id)?;
            let v: Option<String> = inner
                .invoke_global(&inner.scripts.global_get, program_id)
                .invoke_async(&mut inner.conn())
                .await?;
            match v {
                Some(s) => Ok(read_json(&|| format!("global program `{program_id}`"), &s)?),
                None => Err(Error::ProgramNotFound {
                    session_id: None,
                    program_id: program_id.to_owned(),
                }),
            }
        })
        .await
    }

    async fn delete_global_program(&self, program_id: &str) -> Result<bool> {
        let inner = &self.inner;
        bounded!(inner, "delete_global_program", {
            check_id("program id", program_id)?;
            let removed: i64 = inner
                .invoke_global(&inner.scripts.global_delete, program_id)
                .invoke_async(&mut inner.conn())
                .await?;
            Ok(removed == 1)
        })
        .await
    }

    async fn cleanup_expired(&self) -> Result<usize> {
        let inner = &self.inner;
        let told = AtomicUsize::new(0);
        bounded!(inner, "cleanup_expired", { inner.cleanup(&told).await }).await
    }

    async fn get(&self, id: &str, key: &str) -> Result<Option<Value>> {
        let inner = &self.inner;
        bounded!(inner, "get", {
            check_id("key", key)?;
            inner.get_field(id, format!("d:{key}")).await
        })
        .await
    }

    async fn set(&self, id: &str, key: &str, value: Value) -> Result<()> {
        let inner = &self.inner;
        bounded!(inner, "set", {
            check_id("key", key)?;
            inner
                .set_field(id, format!("d:{key}"), "value", &value)
                .await
        })
        .await
    }

    async fn delete(&self, id: &str, key: &str) -> Result<bool> {
        let inner = &self.inner;
        bounded!(inner, "delete", {
            check_id("key", key)?;
            check_id("session id", id)?;
            let r: i64 = inner
                .invoke(&inner.scripts.del_field, id)
                .arg(format!("d:{key}"))
                .invoke_async(&mut inner.conn())
                .await?;
            match r {
                -1 => Err(Error::NotFound(id.to_owned())),
                r => Ok(r == 1),
            }
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

/// The report a session script returned of an expiry of its id that no
/// sweep had reported (`''`: none).
fn unseen(report: String) -> Vec<Vec<u8>> {
    if report.is_empty() {
        Vec::new()
    } else {
        vec![report.into_bytes()]
    }
}

/// What [`Inner::report_expired`] did with a batch of reports.
#[derive(Default)]
struct Reported {
    /// Reports told to the listeners.
    told: usize,
    /// Reports the store cannot have written, removed untold.
    foreign: usize,
    /// The first of those, as [`shown`].
    first_foreign: Option<String>,
}

/// The session id of a report, `<n>:<id>` as the scripts write it; `None`
/// for anything else (not UTF-8, no count, an id no session may have).
fn report_id(report: &[u8]) -> Option<&str> {
    let report = std::str::from_utf8(report).ok()?;
    let (count, id) = report.split_once(':')?;
    let counted = !count.is_empty() && count.bytes().all(|b| b.is_ascii_digit());
    (counted && check_id("session id", id).is_ok()).then_some(id)
}

/// Bytes the store did not write, for an error message: at most 64 of
/// them, escaped, and the length.
fn shown(bytes: &[u8]) -> String {
    let head: String = bytes[..bytes.len().min(64)]
        .iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect();
    format!("\"{head}\" ({} bytes)", bytes.len())
}

/// A value the store kept, read back from its JSON text. The store writes
/// only values that pass [`check_value`]: one nested deeper (which
/// serde_json still reads, up to 127 levels) was written by something
/// else, and is `Corrupt`, naming `whose` (the session, or the global
/// program), as a key no session may have is, rather than left for an
/// `update_session` to refuse as the caller's `Invalid`.
fn read_json(whose: &dyn Fn() -> String, text: &str) -> Result<Value> {
    let value: Value = serde_json::from_str(text)?;
    if check_value("value", &value).is_err() {
        return Err(Error::Corrupt(format!(
            "{}: a stored value nests deeper than MAX_VALUE_DEPTH ({} levels), \
             which the store never writes (written by something else?)",
            whose(),
            crate::MAX_VALUE_DEPTH
        )));
    }
    Ok(value)
}

/// `value` as the JSON text the store keeps, once [`check_value`] passed.
fn stored_json(what: &'static str, value: &Value) -> Result<String> {
    check_value(what, value)?;
    Ok(serde_json::to_string(value)?)
}
