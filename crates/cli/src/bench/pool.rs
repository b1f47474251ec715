//! The bench's pool phases: the same calls as the raw loop, from many
//! concurrent callers on the one-thread runtime, in sessions when asked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use serde_json::Value;
use snakepit_core::{CallOptions, Error, Pool};

use super::measure::{Meter, Run};
use super::progress::Counter;
use super::Load;

/// Calls before each measurement, not counted.
pub(super) const WARM_UP: usize = 200;

/// Something the bench calls: a local pool, or a cluster client (`--nats`).
pub(super) trait Target: Clone + Send + Sync + 'static {
    /// One call of the load: caller `caller`'s `n`th.
    fn call(
        &self,
        load: &Load,
        caller: usize,
        n: usize,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send;

    /// The pids of the worker processes on this machine that serve it.
    fn pids(&self) -> Vec<u32>;
}

/// Session calls go through `execute_in_session` (as a service's would),
/// spread over the sessions so that callers at the same moment are in
/// different sessions; the others through the typed `call`. A pool and a
/// cluster client offer the same methods.
macro_rules! call {
    () => {
        async fn call(&self, load: &Load, caller: usize, n: usize) -> Result<(), Error> {
            match load.sessions.len() {
                0 => self
                    .call::<_, Value>(&load.command, &load.args, CallOptions::new())
                    .await
                    .map(drop),
                sessions => {
                    let session = &load.sessions[(caller + n) % sessions];
                    self.execute_in_session(session, &load.command, load.args.clone())
                        .await
                        .map(drop)
                }
            }
        }
    };
}

impl Target for Pool {
    call!();

    fn pids(&self) -> Vec<u32> {
        self.workers().iter().map(|w| w.pid).collect()
    }
}

impl Target for snakepit_cluster::Client {
    call!();

    /// The hosts' workers are other processes' children.
    fn pids(&self) -> Vec<u32> {
        Vec::new()
    }
}

/// Warms `target` up, then runs `requests` calls from `callers` concurrent
/// callers, each adding to the progress counter as its calls complete.
pub(crate) async fn run<T: Target>(
    target: &T,
    load: &Arc<Load>,
    callers: usize,
    requests: usize,
    bar: &ProgressBar,
) -> Result<Run, Error> {
    for n in 0..WARM_UP {
        target.call(load, 0, n).await?;
    }
    let per = (requests / callers).max(1);
    let counter = Counter::start(bar);
    let meter = Meter::start(&target.pids());
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let (target, load) = (target.clone(), load.clone());
            let done: Arc<AtomicU64> = counter.handle();
            tokio::spawn(async move {
                let mut lat: Vec<Duration> = Vec::with_capacity(per);
                for n in 0..per {
                    let t = Instant::now();
                    target.call(&load, caller, n).await?;
                    lat.push(t.elapsed());
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, Error>(lat)
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(requests);
    for t in tasks {
        lat.extend(t.await.map_err(|_| Error::Cancelled)??);
    }
    let spent = meter.stop();
    counter.finish();
    Ok(Run::new(lat, spent))
}
