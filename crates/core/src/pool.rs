//! The pool: who gets which worker, when, and what happens when one dies.
//!
//! This file holds the handles users hold (`Pool`, `WeakPool`,
//! `PoolBuilder`); each concern behind them has its own file under
//! `pool/`: `options` (what a call carries), `call` (submit, round trip,
//! decode, exactly-once accounting), `stream`, `lease` (taking and
//! returning capacity), `slots` (the slot table and queues as plain data),
//! `shared` (what every task shares), `stats`, `supervise` (start,
//! backoff, breaker, recycling, health).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use snakepit_protocol::{RemoteError, WireCodec};
use tokio::sync::{oneshot, watch};

use crate::adapter::Adapter;
use crate::error::{Error, Result, StartError};
use crate::events::{Event, EventKind, Listener};
use crate::session_hook::{SessionEnds, SessionHook};
use crate::spawn::Spawner;
use crate::PoolConfig;

mod call;
mod lease;
mod options;
mod shared;
mod slots;
mod stats;
mod stream;
mod supervise;

pub use options::{Affinity, CallOptions, HostCall, HostFunction, TraceContext, TraceHeaders};
pub(crate) use shared::Shared;
pub use stats::{Stats, WorkerInfo};
pub use stream::{CallStream, StreamItem};

use slots::State;
use stats::Counters;
use supervise::{maintain, supervise};

/// Configures and starts a [`Pool`].
pub struct PoolBuilder {
    adapter: Box<dyn Adapter>,
    config: PoolConfig,
    codec: Option<WireCodec>,
    name: String,
    host_functions: HashMap<String, HostFunction>,
    /// The first name given to `host_function` twice, refused at `start`.
    host_function_twice: Option<String>,
    listeners: Vec<Listener>,
    trace_context: Option<TraceContext>,
    session_hook: Option<Arc<dyn SessionHook>>,
    worker_env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
}

/// The longest pool name, in bytes: its run record's temporary file name
/// (the name, the host's pid, the run id and a random part) must fit the
/// 255 bytes a file name may have.
const MAX_NAME_LEN: usize = 128;

impl PoolBuilder {
    /// Sets an environment variable in every worker, unless the adapter's
    /// own launch sets it (the adapter wins). Libraries use it for defaults,
    /// such as `snakepit-telemetry` giving workers their own
    /// `OTEL_SERVICE_NAME`.
    pub fn worker_env(
        mut self,
        key: impl Into<std::ffi::OsString>,
        value: impl Into<std::ffi::OsString>,
    ) -> Self {
        self.worker_env.push((key.into(), value.into()));
        self
    }

    /// Sets the number of workers.
    pub fn size(mut self, n: usize) -> Self {
        self.config.pool_size = n;
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: PoolConfig) -> Self {
        self.config = config;
        self
    }

    /// Changes the configuration in place.
    pub fn configure(mut self, f: impl FnOnce(&mut PoolConfig)) -> Self {
        f(&mut self.config);
        self
    }

    /// Overrides the adapter's codec.
    pub fn codec(mut self, codec: WireCodec) -> Self {
        self.codec = Some(codec);
        self
    }

    /// Names the pool (it prefixes worker ids, labels telemetry, and is the
    /// instance its run records carry). An empty name, one over 128 bytes
    /// (its run record's file name must fit the file system's 255), or one
    /// with a control character (a newline, a NUL), is `Error::Config` at
    /// [`start`](Self::start).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Offers a function to the workers, which call it with a `host_call`
    /// frame (`ctx.call_host(name, args)` in the bundled bridges). Each
    /// name may be given once: a second function under a name already
    /// taken is a mistake, and [`start`](Self::start) refuses it with
    /// `Error::Config` naming the function (neither of the two is kept in
    /// silence).
    pub fn host_function<F, Fut>(mut self, name: impl Into<String>, f: F) -> Self
    where
        F: Fn(HostCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<Value, RemoteError>> + Send + 'static,
    {
        let name = name.into();
        if self.host_functions.contains_key(&name) {
            self.host_function_twice.get_or_insert_with(|| name.clone());
        }
        self.host_functions
            .insert(name, Arc::new(move |call| Box::pin(f(call))));
        self
    }

    /// Calls `listener` with every [`Event`](crate::events::Event) of the
    /// pool, synchronously: keep it quick. Any number may be registered.
    pub fn on_event(mut self, listener: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Self {
        self.listeners.push(Arc::new(listener));
        self
    }

    /// Sets where a call's W3C `traceparent` and `tracestate` come from
    /// when its [`CallOptions`] carry no `traceparent`: `f` runs inside the
    /// call's `snakepit.call` span, so a tracing-to-OpenTelemetry bridge
    /// (`snakepit-telemetry`) can hand the worker that span's context.
    /// Tracing is best effort: `None`, or a hook that panics (a warning is
    /// logged), sends the call without trace headers, and the call runs as
    /// usual.
    pub fn trace_context(
        mut self,
        f: impl Fn() -> Option<TraceHeaders> + Send + Sync + 'static,
    ) -> Self {
        self.trace_context = Some(Arc::new(f));
        self
    }

    /// Has `hook` create or touch each session before its calls are routed,
    /// and drop a session's affinity when the hook reports it ended
    /// (`snakepit_session::attach` sets one up for a session store).
    pub fn session_hook(mut self, hook: impl SessionHook) -> Self {
        self.session_hook = Some(Arc::new(hook));
        self
    }

    /// Starts every worker concurrently and returns once all of them have
    /// passed their init handshake, or with the first start-up error.
    ///
    /// Must be called within a Tokio runtime.
    pub async fn start(self) -> Result<Pool> {
        self.config.validate()?;
        if let Some(name) = &self.host_function_twice {
            return Err(Error::Config(format!(
                "the host function {name:?} was registered twice; give each function its own name"
            )));
        }
        if self.name.is_empty()
            || self.name.len() > MAX_NAME_LEN
            || self.name.chars().any(char::is_control)
        {
            return Err(Error::Config(format!(
                "the pool's name must be 1 to {MAX_NAME_LEN} bytes, without control characters: {:?}",
                self.name
            )));
        }
        let failed = |cause: String| {
            Error::StartFailed(Box::new(StartError {
                worker_id: format!("{}_worker_1_1", self.name),
                cause,
                stderr_tail: String::new(),
            }))
        };
        // The adapter's hooks that `start` calls once run on the caller's
        // task: one that panics fails the start, naming the hook, rather
        // than unwind through the caller.
        let hook =
            |name: &str, panic: String| failed(format!("the adapter's {name} panicked: {panic}"));
        let checked = crate::sync::catch(|| self.adapter.check())
            .unwrap_or_else(|panic| Err(format!("the adapter's check panicked: {panic}")));
        if let Err(cause) = checked {
            return Err(failed(cause));
        }
        let adapter_launch =
            crate::sync::catch(|| self.adapter.launch()).map_err(|p| hook("launch", p))?;
        // The adapter's codec is asked only when the builder sets none.
        let codec = match self.codec {
            Some(codec) => codec,
            None => crate::sync::catch(|| self.adapter.codec()).map_err(|p| hook("codec", p))?,
        };
        let supported = crate::sync::catch(|| self.adapter.supported_commands())
            .map_err(|p| hook("supported_commands", p))?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("Pool::start needs a Tokio runtime".into()))?;
        // The host out of threads or memory: a start failure, not a
        // configuration error.
        let spawner = Spawner::new(runtime).map_err(|e| {
            Error::StartFailed(Box::new(StartError {
                worker_id: format!("{}_worker_1_1", self.name),
                cause: format!("cannot start the thread that starts the workers: {e}"),
                stderr_tail: String::new(),
            }))
        })?;
        let size = self.config.pool_size;
        let run_id = crate::sweep::new_run_id();
        let state_dir = self
            .config
            .state_dir
            .clone()
            .unwrap_or_else(crate::sweep::default_state_dir);
        let mut swept = 0;
        if self.config.sweep_on_start {
            let options = crate::sweep::SweepOptions::new()
                .instance(&self.name)
                .state_dir(&state_dir);
            match crate::sweep::sweep(&options) {
                Ok(report) => swept = report.killed(),
                Err(e) => {
                    tracing::warn!(error = %e, dir = %state_dir.display(), "cannot sweep leftovers of earlier runs")
                }
            }
        }
        let shared = Arc::new(Shared {
            record: Mutex::new(None),
            state_dir,
            record_warned: std::sync::atomic::AtomicBool::new(false),
            launch: {
                let mut launch = adapter_launch;
                // Applied first, so the adapter's own settings win.
                let mut env = self.worker_env;
                env.append(&mut launch.env);
                launch.env = env;
                launch
            },
            supported: supported.map(|v| v.into_iter().collect()),
            adapter: self.adapter,
            codec,
            state: Mutex::new(State::new(size)),
            next_id: AtomicU64::new(1),
            large_request: AtomicUsize::new(0),
            counters: Counters::default(),
            host_functions: self.host_functions,
            session_hook: self.session_hook,
            spawner,
            run_id,
            name: self.name,
            shutdown: watch::channel(false).0,
            retry: watch::channel(0).0,
            listeners: self.listeners,
            trace_context: self.trace_context,
            config: self.config,
            template: Mutex::new(None),
            template_start: tokio::sync::Mutex::new(()),
        });
        // Written here, or at a worker's start if it cannot be now.
        shared.run_record();
        let pool = Pool {
            inner: Arc::new(PoolInner {
                shared: shared.clone(),
            }),
        };
        if swept > 0 {
            shared.emit(EventKind::Swept { killed: swept });
        }
        let mut firsts = Vec::with_capacity(size);
        for i in 0..size {
            let (tx, rx) = oneshot::channel();
            firsts.push(rx);
            tokio::spawn(supervise(shared.clone(), i, Some(tx)));
        }
        tokio::spawn(maintain(shared.clone()));
        if let Some(hook) = &shared.session_hook {
            let weak: std::sync::Weak<Shared> = Arc::downgrade(&shared);
            // The application's code on the caller's task, as the
            // adapter's hooks above: a panic fails the start.
            if let Err(panic) = crate::sync::catch(|| hook.attached(SessionEnds::new(weak))) {
                let _ = pool.shutdown().await;
                return Err(Error::StartFailed(Box::new(StartError {
                    worker_id: format!("{}_worker_1_1", shared.name),
                    cause: format!("the session hook's attached panicked: {panic}"),
                    stderr_tail: String::new(),
                })));
            }
        }
        let all = async {
            for rx in firsts {
                match rx.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(Error::StartFailed(Box::new(e))),
                    Err(_) => return Err(Error::ShutDown),
                }
            }
            Ok(())
        };
        let outcome = match tokio::time::timeout(shared.config.startup_timeout, all).await {
            Ok(r) => r,
            Err(_) => Err(Error::StartFailed(Box::new(StartError {
                worker_id: format!("{}_worker_*", shared.name),
                cause: format!(
                    "not every worker was ready within the startup timeout of {:?}",
                    shared.config.startup_timeout
                ),
                stderr_tail: String::new(),
            }))),
        };
        if let Err(e) = outcome {
            let _ = pool.shutdown().await;
            return Err(e);
        }
        Ok(pool)
    }
}

pub(crate) struct PoolInner {
    pub(crate) shared: Arc<Shared>,
}

impl Drop for PoolInner {
    /// The last handle is gone without `shutdown()`: stop at once, killing
    /// every worker's process group.
    fn drop(&mut self) {
        self.shared.close();
        let workers = self.shared.every_worker();
        for w in &workers {
            // Its calls (a stream outliving the last handle) are stopped by
            // the pool, not by a crash of their worker.
            w.cut_off();
            w.kill();
        }
        let mut own: Vec<u32> = workers.iter().map(|w| w.pid).collect();
        own.extend(self.shared.stop_template());
        self.shared.finish_run(&own);
        self.shared.spawner.close_watchdog();
    }
}

/// A handle that does not keep its pool alive ([`Pool::downgrade`]): for
/// observers (metrics, dashboards) that must not delay the pool's end.
#[derive(Clone, Debug)]
pub struct WeakPool {
    inner: std::sync::Weak<PoolInner>,
}

impl WeakPool {
    /// The pool, while some [`Pool`] handle still keeps it.
    pub fn upgrade(&self) -> Option<Pool> {
        self.inner.upgrade().map(|inner| Pool { inner })
    }
}

/// A pool of worker processes: a cheap, cloneable handle.
///
/// ```no_run
/// # async fn demo(adapter: impl snakepit_core::Adapter) -> Result<(), snakepit_core::Error> {
/// use serde_json::json;
/// use snakepit_core::Pool;
///
/// let pool = Pool::builder(adapter).size(4).start().await?;
/// let r = pool.execute("compute", json!({"operation": "add", "a": 5, "b": 3})).await?;
/// assert_eq!(r["result"], 8);
/// let r = pool.execute_in_session("user_123", "echo", json!({"message": "hello"})).await?;
/// println!("{r} {:?}", pool.stats());
/// pool.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.inner.shared.name)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Pool {
    /// A builder for a pool of workers that `adapter` describes.
    pub fn builder(adapter: impl Adapter) -> PoolBuilder {
        PoolBuilder {
            adapter: Box::new(adapter),
            config: PoolConfig::default(),
            codec: None,
            name: "snakepit".into(),
            host_functions: HashMap::new(),
            host_function_twice: None,
            listeners: Vec::new(),
            trace_context: None,
            session_hook: None,
            worker_env: Vec::new(),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// A snapshot of the pool's workers, queue and counters.
    pub fn stats(&self) -> Stats {
        self.shared().stats()
    }

    /// The error a call gets at once because no worker can start: when no
    /// worker is ready and every slot's circuit breaker is open,
    /// `Some(Error::StartFailed)` with the last start's cause and stderr
    /// tail (the same a call would get); `None` otherwise, also while
    /// workers are still starting (a start tried after the cool-down, or
    /// asked with [`retry_starts`](Pool::retry_starts), included: calls
    /// wait for it, and fail with its error if it fails). A cluster host announces it, so that
    /// callers fail the same way when every host is in that state.
    pub fn start_failure(&self) -> Option<Error> {
        let st = self.shared().state();
        st.broken().map(|e| Error::StartFailed(Box::new(e.clone())))
    }

    /// The process ids of the ready workers.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.shared().workers().iter().map(|w| w.pid).collect()
    }

    /// A handle that does not keep the pool alive: when the last `Pool`
    /// handle goes, the pool ends (its workers are killed) whatever
    /// `WeakPool`s remain.
    pub fn downgrade(&self) -> WeakPool {
        WeakPool {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// The ready workers: ids, pids, load, calls served, age and memory.
    pub fn workers(&self) -> Vec<WorkerInfo> {
        let mut infos: Vec<WorkerInfo> = {
            let st = self.shared().state();
            st.slots
                .iter()
                .filter_map(|s| Some((s, s.worker.as_ref()?)))
                .map(|(s, w)| WorkerInfo {
                    id: w.id.clone(),
                    slot: w.slot,
                    pid: w.pid,
                    in_flight: s.calls() as usize,
                    health_check: s.checking,
                    capacity: s.capacity,
                    served: w.served.load(Ordering::Relaxed),
                    age: w.started.elapsed(),
                    rss_bytes: None,
                    pss_bytes: None,
                })
                .collect()
        };
        for info in &mut infos {
            info.rss_bytes = crate::os::rss_bytes(info.pid);
            info.pss_bytes = crate::os::pss_bytes(info.pid);
        }
        infos
    }

    /// The process id of the preload template, while one runs (a pool
    /// whose adapter preloads, docs/preload.md).
    pub fn template_pid(&self) -> Option<u32> {
        use crate::sync::Unpoisoned as _;
        let template = self.shared().template.locked();
        template.as_ref().filter(|t| t.is_alive()).map(|t| t.pid)
    }

    /// Starts a worker at once in every slot that is waiting to restart
    /// one: in its back-off after failed starts, or with its breaker open
    /// (the breaker is then half-open: one more failed start opens it
    /// again). For when the cause of the failures is gone (a module
    /// installed, a model file restored) and the cool-down should not be
    /// waited out. Slots with a worker are left alone, but for one whose
    /// recycling is held up by a replacement that failed to start: that
    /// replacement is tried again at once too. A call made once
    /// this returns waits for those starts (within the queue timeout)
    /// rather than fail at once with the last start error.
    pub fn retry_starts(&self) {
        {
            let mut st = self.shared().state();
            // Asked now, under way soon: no call fails fast meanwhile.
            for slot in st.slots.iter_mut() {
                if slot.worker.is_none() && slot.breaker_open {
                    slot.attempting = true;
                }
            }
        }
        self.shared().retry.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Forgets a session's worker affinity.
    pub fn end_session(&self, session_id: &str) {
        self.shared().forget_session(session_id);
    }

    /// The wire codec its workers speak ([`PoolBuilder::codec`], or the
    /// adapter's).
    pub fn codec(&self) -> WireCodec {
        self.shared().codec
    }

    /// The pool's name ([`PoolBuilder::name`]), as its spans and events carry it.
    pub fn name(&self) -> &str {
        &self.shared().name
    }

    /// The id that marks this run's workers (`SNAKEPIT_RUN_ID`).
    pub fn run_id(&self) -> &str {
        &self.shared().run_id
    }

    /// Stops admitting calls, lets calls in flight finish within the grace
    /// period, closes the workers' stdin, then signals their process groups
    /// (SIGTERM, then SIGKILL) and reaps them. A call still running when the
    /// grace period ends fails with [`Error::StoppedByShutdown`] then, and
    /// its worker gets SIGTERM at once. A call not yet written (queued, or
    /// waiting on its session store) fails at once with
    /// [`Error::ShutDown`]: it never ran. The pool's watchdog process ends
    /// with it, whatever handles are still held.
    pub async fn shutdown(&self) -> Result<()> {
        let shared = self.shared();
        shared.close();
        let grace = shared.config.shutdown_grace_period;
        let until = crate::clock::later(Instant::now(), grace);
        while shared.every_worker().iter().any(|w| w.in_flight() > 0) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let workers = shared.every_worker();
        for w in &workers {
            // What is still running now is cut off by the shutdown: its
            // caller hears it at once, and its worker gets no more time to
            // finish it (a bridge finishes its running call at end of input).
            if w.cut_off() {
                w.close_stdin();
                w.signal(libc::SIGTERM);
            }
        }
        supervise::stop(&shared.config, &workers).await;
        for w in &workers {
            shared.worker_gone(w);
        }
        let mut own: Vec<u32> = workers.iter().map(|w| w.pid).collect();
        own.extend(shared.stop_template());
        shared.finish_run(&own);
        shared.spawner.close_watchdog();
        Ok(())
    }
}
