//! `snakepit bench --preload`: what preloading changes (docs/preload.md),
//! measured in the same run against workers started one process each:
//! start-up of workers whose load takes `--init-ms`, the time a replacement
//! takes after a worker is killed, and the memory of workers that hold
//! `--init-mb` MiB they only read (proportional set size, from
//! `/proc/PID/smaps_rollup`).

use std::time::{Duration, Instant};

use serde::Serialize;
use snakepit_adapters::Bridge;
use snakepit_core::events::EventKind;
use snakepit_core::{Pool, PoolConfig};

use super::Bench;
use crate::ui::Failure;

/// Preloaded against not, same workers, same run.
#[derive(Debug, Serialize)]
pub(crate) struct Preload {
    pub(crate) workers: usize,
    pub(crate) init_ms: u64,
    /// Every worker its own process: time until all are ready.
    pub(crate) started_ms: f64,
    /// Forked from a template.
    pub(crate) preloaded_ms: f64,
    /// A worker killed with SIGKILL until its replacement is ready.
    pub(crate) replacement_ms: f64,
    pub(crate) preloaded_replacement_ms: f64,
    /// The data each worker's script holds.
    pub(crate) hold_mb: u64,
    /// Proportional set size of the workers, summed, in MiB.
    pub(crate) pss_mb: Option<f64>,
    pub(crate) preloaded_pss_mb: Option<f64>,
    /// `preloaded_pss_mb` over one worker's without preloading.
    pub(crate) preloaded_over_one: Option<f64>,
}

impl Bench {
    /// Each measurement once without preloading and once with it.
    pub(super) async fn preload(&self) -> Result<Preload, Failure> {
        let (workers, init_ms, hold_mb) =
            (self.workers, self.a.init_ms, self.a.init_mb.unwrap_or(200));
        let bar = self.progress.phase(
            format!("preload, {workers} x {init_ms} ms init, {hold_mb} MiB each"),
            4,
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        let slow =
            Bridge::with_init_delay(self.worker.lang.language(), Duration::from_millis(init_ms))
                .map_err(|e| Failure::general(format!("cannot write the start-up worker: {e}")))?
                .interpreter(&self.interpreter)
                .codec(self.worker.codec);
        let mut config = self.config(workers, self.pool.pipeline_depth);
        let enough = Duration::from_millis(init_ms.saturating_mul(2).saturating_add(10_000));
        config.worker_init_timeout = config.worker_init_timeout.max(enough);
        config.startup_timeout = config.startup_timeout.max(enough);
        // Nothing else replaces or checks workers while this measures.
        config.health_check_interval = Duration::ZERO;
        let (started_ms, replacement_ms) = start_and_replace(slow.clone(), config.clone()).await?;
        bar.inc(1);
        let (preloaded_ms, preloaded_replacement_ms) =
            start_and_replace(slow.preload(), config.clone()).await?;
        bar.inc(1);
        let held = Bridge::with_init(self.worker.lang.language(), Duration::ZERO, hold_mb)
            .map_err(|e| Failure::general(format!("cannot write the memory worker: {e}")))?
            .interpreter(&self.interpreter)
            .codec(self.worker.codec);
        let pss_mb = memory(held.clone(), config.clone()).await?;
        bar.inc(1);
        let preloaded_pss_mb = memory(held.preload(), config).await?;
        bar.finish_and_clear();
        let one = pss_mb.map(|sum| sum / workers as f64);
        Ok(Preload {
            workers,
            init_ms,
            started_ms: round(started_ms),
            preloaded_ms: round(preloaded_ms),
            replacement_ms: round(replacement_ms),
            preloaded_replacement_ms: round(preloaded_replacement_ms),
            hold_mb,
            pss_mb: pss_mb.map(round),
            preloaded_pss_mb: preloaded_pss_mb.map(round),
            preloaded_over_one: match (preloaded_pss_mb, one) {
                (Some(p), Some(o)) if o > 0.0 => Some((p / o * 100.0).round() / 100.0),
                _ => None,
            },
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Starts a pool (ms until every worker is ready), kills one worker once it
/// has lived a second and returns the ms until its replacement is ready too.
async fn start_and_replace(bridge: Bridge, config: PoolConfig) -> Result<(f64, f64), Failure> {
    let (tx, mut ready) = tokio::sync::mpsc::unbounded_channel();
    let t = Instant::now();
    let pool = crate::traced(Pool::builder(bridge).config(config))
        .on_event(move |e| {
            if let EventKind::WorkerReady { .. } = e.kind {
                let _ = tx.send(Instant::now());
            }
        })
        .start()
        .await?;
    let started_ms = t.elapsed().as_secs_f64() * 1e3;
    // A worker that dies within its first second counts as a failed start
    // and is replaced after a back-off; this measures a worker that served.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    while ready.try_recv().is_ok() {}
    let victim = pool.worker_pids().first().copied().unwrap_or(0);
    let pid = rustix::process::Pid::from_raw(victim as i32)
        .ok_or_else(|| Failure::general("the pool reported no worker to replace"))?;
    let killed = Instant::now();
    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    let replaced = tokio::time::timeout(Duration::from_secs(60), ready.recv()).await;
    pool.shutdown().await?;
    match replaced {
        Ok(Some(at)) => Ok((started_ms, (at - killed).as_secs_f64() * 1e3)),
        _ => Err(Failure::general(
            "no replacement was ready within 60 s of killing a worker",
        )),
    }
}

/// Starts a pool and sums its workers' proportional set size, in MiB.
async fn memory(bridge: Bridge, config: PoolConfig) -> Result<Option<f64>, Failure> {
    let pool = crate::traced(Pool::builder(bridge).config(config))
        .start()
        .await?;
    // What the workers hold is in place once they are ready.
    let bytes: Option<u64> = pool.workers().iter().map(|w| w.pss_bytes).sum();
    pool.shutdown().await?;
    Ok(bytes.map(|b| b as f64 / (1024.0 * 1024.0)))
}
