//! `PoolConfig`: every setting of a pool, with its default, readable from
//! any serde format.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use snakepit_protocol::DEFAULT_MAX_FRAME_SIZE;

/// A pool's settings. Every field has a default (the original Snakepit's,
/// where it had one), and the struct reads from any serde format, durations
/// in milliseconds, so a service can keep it in its own configuration:
///
/// ```
/// let config: snakepit_core::PoolConfig =
///     serde_json::from_str(r#"{"pool_size": 4, "queue_timeout_ms": 250}"#).unwrap();
/// assert_eq!(config.pool_size, 4);
/// assert_eq!(config.max_queue_size, 1000);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Number of worker processes, 1 to [`MAX_POOL_SIZE`]. Default: twice
    /// the number of cores.
    pub pool_size: usize,
    /// How long `start()` may take for every worker to be ready.
    #[serde(rename = "startup_timeout_ms", with = "millis")]
    pub startup_timeout: Duration,
    /// How long a call may wait in the queue for a free worker. A call
    /// written ahead to a busy worker (`pipeline_depth`) has left the queue:
    /// it waits for the calls before it on that worker, which were short
    /// until then.
    #[serde(rename = "queue_timeout_ms", with = "millis")]
    pub queue_timeout: Duration,
    /// Calls that may wait at once; one more is rejected with `PoolSaturated`.
    pub max_queue_size: usize,
    /// How long a worker may take to answer its init handshake.
    #[serde(rename = "worker_init_timeout_ms", with = "millis")]
    pub worker_init_timeout: Duration,
    /// How often idle workers are pinged; zero turns health checks off.
    #[serde(rename = "health_check_interval_ms", with = "millis")]
    pub health_check_interval: Duration,
    /// How long a health ping may take before the worker is replaced; at
    /// least 1 ms while health checks are on. A worker replaced for its
    /// health check within a second of starting counts as a failed start.
    #[serde(rename = "health_check_timeout_ms", with = "millis")]
    pub health_check_timeout: Duration,
    /// How long shutdown waits for in-flight calls and for workers to exit
    /// before signalling them; also how long a timed-out call's worker has to
    /// deliver the late reply before it is replaced.
    #[serde(rename = "shutdown_grace_period_ms", with = "millis")]
    pub shutdown_grace_period: Duration,
    /// Pause between attempts to confirm a worker's process group is gone.
    #[serde(rename = "cleanup_retry_interval_ms", with = "millis")]
    pub cleanup_retry_interval: Duration,
    /// Attempts to confirm a worker's process group is gone before giving
    /// up, after SIGTERM and again after SIGKILL. After SIGTERM there is
    /// always at least one (0 counts as 1 there), so a worker always gets
    /// `cleanup_retry_interval` to act on SIGTERM before SIGKILL.
    pub cleanup_max_retries: u32,
    /// The largest frame accepted from a worker, in bytes, and the largest
    /// request frame sent to one. The bundled bridges' hello frames take a
    /// few hundred bytes: a limit below that fails every start.
    pub max_frame_size: usize,
    /// Upper bound on the calls one worker runs at once, whatever it declares.
    pub max_concurrency_per_worker: u32,
    /// Calls written ahead to a worker that runs one call at a time, at
    /// most, so it goes from one reply straight to the next request instead
    /// of idling until the host sends it (0: off). Only for workers whose
    /// hello declares `pipeline` (they drop a cancelled call they have not
    /// started). How many are written ahead follows the worker's recent
    /// calls: as many as it runs in `pipeline_max_call` (at least 1, at most
    /// this), so a call written ahead waits about `pipeline_max_call` at
    /// most; none once its calls take longer than that, so long calls never
    /// wait behind each other. Busy workers take calls written ahead in
    /// turn. What it costs: a call that turns out long, on a worker whose
    /// calls were short, holds the calls written ahead behind it. Set 1 to
    /// bound that to one. The default, 16: with 4, two Python workers
    /// answering pings from 64 callers served a fifth fewer calls (72,000
    /// to 80,000 calls/s against 80,000 to 105,000, alternated); beyond 16,
    /// no clear gain.
    pub pipeline_depth: u32,
    /// The run time that calls written ahead to a worker may cover (see
    /// `pipeline_depth`): a worker's recent calls (a moving average of how
    /// long it took to answer each) must be shorter than this for any call
    /// to be written ahead to it.
    #[serde(rename = "pipeline_max_call_us", with = "micros")]
    pub pipeline_max_call: Duration,
    /// Lines of each worker's stderr kept for error reports (0: none).
    pub stderr_tail_lines: usize,
    /// Session affinity records kept at most; beyond this, new sessions are
    /// served without affinity until old ones expire.
    pub max_sessions: usize,
    /// An affinity record unused for this long is dropped.
    #[serde(rename = "session_ttl_ms", with = "millis")]
    pub session_ttl: Duration,
    /// First delay before restarting a slot whose worker failed to start or
    /// died within a second of starting; doubles with each such failure in
    /// a row, with jitter. A worker that lived longer is replaced at once.
    #[serde(rename = "restart_backoff_ms", with = "millis")]
    pub restart_backoff: Duration,
    /// The longest delay between restarts (jitter included).
    #[serde(rename = "restart_backoff_max_ms", with = "millis")]
    pub restart_backoff_max: Duration,
    /// Start failures in a row after which a slot's breaker opens: callers
    /// then fail fast with the start-up error when no worker is left.
    pub breaker_threshold: u32,
    /// How long an open breaker waits before trying again.
    #[serde(rename = "breaker_cooldown_ms", with = "millis")]
    pub breaker_cooldown: Duration,
    /// Replace a worker after it has answered about this many calls (each
    /// worker's limit is drawn within 10% of it, so they do not all go at
    /// once); zero: never.
    pub recycle_after_calls: u64,
    /// Replace a worker whose resident memory is above this many MiB
    /// (checked between calls); zero: never.
    pub recycle_above_rss_mb: u64,
    /// Replace a worker this long after it started; zero: never.
    #[serde(rename = "worker_ttl_ms", with = "millis")]
    pub worker_ttl: Duration,
    /// Replace a worker that has had no call for this long (the pool's own
    /// health checks are not calls); zero: never.
    #[serde(rename = "worker_idle_timeout_ms", with = "millis")]
    pub worker_idle_timeout: Duration,
    /// Kill the leftovers of this pool name's crashed runs when the pool
    /// starts (see [`sweep`](crate::sweep)).
    pub sweep_on_start: bool,
    /// Where run records are kept; the per-user default when `None`
    /// ([`default_state_dir`](crate::sweep::default_state_dir)). An empty
    /// path is `Error::Config`.
    pub state_dir: Option<std::path::PathBuf>,
}

impl Default for PoolConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        PoolConfig {
            pool_size: cores * 2,
            startup_timeout: Duration::from_secs(10),
            queue_timeout: Duration::from_secs(5),
            max_queue_size: 1000,
            worker_init_timeout: Duration::from_secs(20),
            health_check_interval: Duration::from_secs(30),
            health_check_timeout: Duration::from_secs(5),
            shutdown_grace_period: Duration::from_secs(2),
            cleanup_retry_interval: Duration::from_millis(100),
            cleanup_max_retries: 10,
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_concurrency_per_worker: 64,
            pipeline_depth: 16,
            pipeline_max_call: Duration::from_millis(1),
            stderr_tail_lines: 40,
            max_sessions: 100_000,
            session_ttl: Duration::from_secs(3600),
            restart_backoff: Duration::from_millis(50),
            restart_backoff_max: Duration::from_secs(5),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(10),
            recycle_after_calls: 0,
            recycle_above_rss_mb: 0,
            worker_ttl: Duration::ZERO,
            worker_idle_timeout: Duration::ZERO,
            sweep_on_start: true,
            state_dir: None,
        }
    }
}

/// The most worker processes one pool starts: more than a machine runs
/// (a larger `pool_size` is refused with [`Error::Config`](crate::Error::Config),
/// rather than tried).
pub const MAX_POOL_SIZE: usize = 10_000;

impl PoolConfig {
    /// Whether any recycling rule is on.
    pub(crate) fn recycles(&self) -> bool {
        self.recycle_after_calls > 0
            || self.recycle_above_rss_mb > 0
            || !self.worker_ttl.is_zero()
            || !self.worker_idle_timeout.is_zero()
    }

    /// Checks the settings as [`PoolBuilder::start`](crate::PoolBuilder::start)
    /// does first: `Err(Error::Config)` naming the first setting no pool
    /// may have (a pool size of 0, a zero timeout, a frame limit under 64
    /// bytes, ...). For a program that reads settings from a file and
    /// wants to report a mistake before it does anything else.
    ///
    /// ```
    /// let mut config = snakepit_core::PoolConfig::default();
    /// assert!(config.validate().is_ok());
    /// config.breaker_threshold = 0;
    /// assert!(matches!(config.validate(), Err(snakepit_core::Error::Config(_))));
    /// ```
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: &str| Err(crate::Error::Config(m.to_owned()));
        if self.pool_size == 0 || self.pool_size > MAX_POOL_SIZE {
            return bad(&format!("pool_size must be between 1 and {MAX_POOL_SIZE}"));
        }
        if self.max_concurrency_per_worker == 0 {
            return bad("max_concurrency_per_worker must be at least 1");
        }
        if self.worker_init_timeout.is_zero() || self.startup_timeout.is_zero() {
            return bad("worker_init_timeout and startup_timeout must be above zero");
        }
        if !self.health_check_interval.is_zero()
            && self.health_check_timeout < Duration::from_millis(1)
        {
            // Every ping would be late: every idle worker replaced at each check.
            return bad("health_check_timeout must be at least 1 ms while health checks are on (health_check_interval above zero)");
        }
        if self.max_frame_size < 64 || self.max_frame_size > u32::MAX as usize {
            return bad("max_frame_size must be between 64 bytes and 4 GiB");
        }
        if self.breaker_threshold == 0 {
            return bad("breaker_threshold must be at least 1");
        }
        if self
            .state_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return bad("state_dir must not be empty (leave it unset for the default)");
        }
        Ok(())
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        // Longer than u64::MAX ms ("forever"): written as the longest.
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

mod micros {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_micros)
    }
}
