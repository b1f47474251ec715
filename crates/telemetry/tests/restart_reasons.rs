//! telemetry.md, "Metrics": `snakepit.worker.restarts` counts restarts
//! "with the reason the previous worker went: `exited`, `health_check`,
//! `start_failed`; `recycled_<why>` on `WorkerRecycled`", and
//! `snakepit.worker.health_check.failures`, `snakepit.breaker.opened` and
//! `snakepit.sweep.killed` count their events. Each is brought about for
//! real (workers recycled after their calls, by age, idleness and
//! memory, one frozen with SIGSTOP, one
//! that stops starting, leftovers of a SIGKILLed host) in pools of real
//! Python workers, and read back from a real OTLP receiver (Rotel). (The
//! `exited` reason has its own test, worker_restarts.rs.)

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{kill, restart_worker, temp_dir};
use serde_json::json;
use snakepit_adapters::Bridge;
use snakepit_core::events::EventKind;
use snakepit_core::{Pool, PoolBuilder};
use snakepit_tests::until;

/// A flag set by the pool's first event of a kind.
fn flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

/// One data point of a metric as Rotel printed it: its attributes and value.
type Point = (HashMap<String, String>, String);

/// The data points of the last export of metric `name`.
fn points(out: &str, name: &str) -> Vec<Point> {
    let Some(start) = out.rfind(&format!("Name: {name}\n")) else {
        return Vec::new();
    };
    let rest = &out[start..];
    let end = ["Metric #", "ResourceMetrics #", "ScopeMetrics #"]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .unwrap_or(rest.len());
    rest[..end]
        .split("NumberDataPoints #")
        .skip(1)
        .map(|point| {
            let mut attrs = HashMap::new();
            let mut value = String::new();
            for line in point.lines() {
                let line = line.trim();
                if let Some(kv) = line.strip_prefix("-> ") {
                    if let Some((k, v)) = kv.split_once(": ") {
                        let v = v
                            .strip_prefix("Str(")
                            .and_then(|v| v.strip_suffix(')'))
                            .unwrap_or(v);
                        attrs.insert(k.to_owned(), v.to_owned());
                    }
                } else if let Some(v) = line.strip_prefix("Value: ") {
                    value = v.to_owned();
                }
            }
            (attrs, value)
        })
        .collect()
}

/// The value of `name`'s point with these attributes, if it was exported.
fn value(out: &str, name: &str, attrs: &[(&str, &str)]) -> Option<u64> {
    points(out, name)
        .into_iter()
        .find(|(a, _)| {
            attrs
                .iter()
                .all(|(k, v)| a.get(*k).map(String::as_str) == Some(*v))
        })
        .and_then(|(_, v)| v.parse().ok())
}

/// Not a test of its own: the host of the sweep case, killed with SIGKILL
/// by the test. Run again with `SNAKEPIT_RESTART_REASONS_HOST` naming a
/// state directory, it starts a pool there whose worker leaves a child in a
/// session of its own, writes that child's pid, and waits to be killed.
#[test]
fn host_process() {
    let Ok(state_dir) = std::env::var("SNAKEPIT_RESTART_REASONS_HOST") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let pool = Pool::builder(Bridge::python(restart_worker()))
            .size(1)
            .name("swept")
            .configure(|c| c.state_dir = Some(PathBuf::from(&state_dir)))
            .start()
            .await
            .unwrap();
        let r = pool.execute("spawn_escaped", json!({})).await.unwrap();
        let out = Path::new(&state_dir).with_extension("pid");
        let pids = format!("{} {}", r["child_pid"], pool.worker_pids()[0]);
        std::fs::write(out.with_extension("tmp"), pids).unwrap();
        std::fs::rename(out.with_extension("tmp"), &out).unwrap();
        std::future::pending::<()>().await;
    });
}

/// Kills the escaped child if the test ends before the sweep did.
struct Leftover(u32);

impl Drop for Leftover {
    fn drop(&mut self) {
        if snakepit_tests::alive(self.0) {
            kill("KILL", self.0);
        }
    }
}

/// Runs [`host_process`], waits for its escaped child, SIGKILLs it: what
/// it leaves behind in `state_dir` is for the next pool named `swept`.
async fn crashed_host(state_dir: &Path) -> Leftover {
    let out = state_dir.with_extension("pid");
    let _ = std::fs::remove_file(&out);
    let mut host = snakepit_tests::this_test("host_process")
        .env("SNAKEPIT_RESTART_REASONS_HOST", state_dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    until(60, "the host wrote its child's pid", || async {
        out.exists()
    })
    .await;
    let pids: Vec<u32> = std::fs::read_to_string(&out)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let (pid, worker) = (pids[0], pids[1]);
    let leftover = Leftover(pid);
    kill("KILL", host.id());
    host.wait().unwrap();
    // The worker dies of its parent's death; on a loaded machine it can
    // still be dying when the next pool sweeps, and would be counted.
    until(30, "the crashed host's worker is gone", || async {
        !snakepit_tests::alive(worker)
    })
    .await;
    assert!(
        snakepit_tests::alive(pid),
        "the escaped child outlives the host"
    );
    leftover
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_restart_reason_and_the_breaker_and_sweep_counters_are_exported() -> anyhow::Result<()>
{
    let rotel = common::Rotel::start()?;
    let telemetry = snakepit_telemetry::Telemetry::new()
        .service_name("snakepit-reasons")
        .endpoint(rotel.http_base())
        .protocol(snakepit_telemetry::Protocol::HttpProtobuf)
        .stderr_logs(None)
        .init()?;
    let builder = |name: &str| -> PoolBuilder {
        snakepit_telemetry::instrument(
            Pool::builder(Bridge::python(restart_worker()))
                .size(1)
                .name(name),
        )
    };

    // Recycled after two calls: `recycled_calls`.
    let recycled = flag();
    let seen = recycled.clone();
    let pool = builder("recycled")
        .configure(|c| c.recycle_after_calls = 2)
        .on_event(move |e| {
            if matches!(
                e.kind,
                EventKind::WorkerRecycled {
                    reason: "calls",
                    ..
                }
            ) {
                seen.store(true, Ordering::SeqCst);
            }
        })
        .start()
        .await?;
    for _ in 0..2 {
        pool.execute("ping", json!({})).await?;
    }
    until(30, "the worker is recycled after its calls", || async {
        recycled.load(Ordering::SeqCst)
    })
    .await;
    pool.shutdown().await?;

    // The other reasons a worker is recycled: its age, its idleness, its
    // memory (any Python worker is above 1 MiB): `recycled_<why>`.
    type Setting = fn(&mut snakepit_core::PoolConfig);
    let others: [(&str, Setting); 3] = [
        ("ttl", |c| c.worker_ttl = Duration::from_millis(300)),
        ("idle", |c| {
            c.worker_idle_timeout = Duration::from_millis(300)
        }),
        ("memory", |c| c.recycle_above_rss_mb = 1),
    ];
    for (why, setting) in others {
        let recycled = flag();
        let seen = recycled.clone();
        let pool = builder(&format!("recycled-{why}"))
            .configure(setting)
            .on_event(move |e| {
                if matches!(e.kind, EventKind::WorkerRecycled { reason, .. } if reason == why) {
                    seen.store(true, Ordering::SeqCst);
                }
            })
            .start()
            .await?;
        pool.execute("ping", json!({})).await?;
        until(30, &format!("the worker is recycled for {why}"), || async {
            recycled.load(Ordering::SeqCst)
        })
        .await;
        pool.shutdown().await?;
    }

    // Frozen (SIGSTOP): health checks fail, it is replaced: `health_check`.
    let restarted = flag();
    let seen = restarted.clone();
    let pool = builder("health")
        .configure(|c| {
            c.health_check_interval = Duration::from_millis(100);
            c.health_check_timeout = Duration::from_millis(200);
        })
        .on_event(move |e| {
            if matches!(e.kind, EventKind::WorkerRestarting { .. }) {
                seen.store(true, Ordering::SeqCst);
            }
        })
        .start()
        .await?;
    let frozen = pool.worker_pids()[0];
    kill("STOP", frozen);
    until(30, "the frozen worker is replaced", || async {
        restarted.load(Ordering::SeqCst) && pool.worker_pids().first().is_some_and(|&p| p != frozen)
    })
    .await;
    pool.shutdown().await?;

    // Killed, then failing to start: `exited` once, then `start_failed`
    // until the breaker opens.
    let dir = temp_dir("breaker");
    let marker = dir.join("fail");
    let opened = flag();
    let seen = opened.clone();
    let pool = snakepit_telemetry::instrument(
        Pool::builder(Bridge::python(restart_worker()).env("FAIL_START_IF_EXISTS", &marker))
            .size(1)
            .name("breaker"),
    )
    .configure(|c| {
        c.breaker_threshold = 2;
        c.breaker_cooldown = Duration::from_secs(3600);
        c.restart_backoff = Duration::from_millis(10);
        c.restart_backoff_max = Duration::from_millis(20);
    })
    .on_event(move |e| {
        if matches!(e.kind, EventKind::BreakerOpened { .. }) {
            seen.store(true, Ordering::SeqCst);
        }
    })
    .start()
    .await?;
    std::fs::write(&marker, b"")?;
    kill("KILL", pool.worker_pids()[0]);
    until(30, "the breaker opens", || async {
        opened.load(Ordering::SeqCst)
    })
    .await;
    pool.shutdown().await?;

    // Leftovers of a crashed run, swept by the next pool of that name.
    let state = temp_dir("state");
    let leftover = crashed_host(&state).await;
    let pool = builder("swept")
        .configure(|c| c.state_dir = Some(state.clone()))
        .start()
        .await?;
    until(10, "the sweep killed the leftover", || async {
        !snakepit_tests::alive(leftover.0)
    })
    .await;

    telemetry.flush()?;
    pool.shutdown().await?;
    telemetry.shutdown()?;

    let wanted: &[(&str, &[(&str, &str)])] = &[
        (
            "snakepit.worker.restarts",
            &[("pool", "recycled-ttl"), ("reason", "recycled_ttl")],
        ),
        (
            "snakepit.worker.restarts",
            &[("pool", "recycled-idle"), ("reason", "recycled_idle")],
        ),
        (
            "snakepit.worker.restarts",
            &[("pool", "recycled-memory"), ("reason", "recycled_memory")],
        ),
        (
            "snakepit.worker.restarts",
            &[("pool", "recycled"), ("reason", "recycled_calls")],
        ),
        (
            "snakepit.worker.restarts",
            &[("pool", "health"), ("reason", "health_check")],
        ),
        (
            "snakepit.worker.health_check.failures",
            &[("pool", "health")],
        ),
        (
            "snakepit.worker.restarts",
            &[("pool", "breaker"), ("reason", "exited")],
        ),
        (
            "snakepit.worker.restarts",
            &[("pool", "breaker"), ("reason", "start_failed")],
        ),
        ("snakepit.breaker.opened", &[("pool", "breaker")]),
        ("snakepit.sweep.killed", &[("pool", "swept")]),
    ];
    let (_, arrived) = rotel.wait_for(Duration::from_secs(20), |_, out| {
        wanted
            .iter()
            .all(|(name, attrs)| value(out, name, attrs).is_some())
    });
    let out = rotel.output();
    if let Ok(path) = std::env::var("SNAKEPIT_E2E_DUMP") {
        std::fs::write(path, &out)?;
    }
    let got: Vec<String> = wanted
        .iter()
        .map(|(name, attrs)| format!("{name} {attrs:?} = {:?}", value(&out, name, attrs)))
        .collect();
    assert!(arrived, "not every point arrived:\n{}", got.join("\n"));

    let v = |name: &str, attrs: &[(&str, &str)]| value(&out, name, attrs).unwrap_or_default();
    // One recycling, one health failure and its restart, one worker that
    // exited, one breaker opening, one process swept.
    assert_eq!(
        v(
            "snakepit.worker.restarts",
            &[("pool", "recycled"), ("reason", "recycled_calls")]
        ),
        1,
        "{got:#?}"
    );
    assert_eq!(
        v(
            "snakepit.worker.restarts",
            &[("pool", "health"), ("reason", "health_check")]
        ),
        1,
        "{got:#?}"
    );
    assert!(
        v(
            "snakepit.worker.health_check.failures",
            &[("pool", "health")]
        ) >= 1,
        "{got:#?}"
    );
    assert_eq!(
        v(
            "snakepit.worker.restarts",
            &[("pool", "breaker"), ("reason", "exited")]
        ),
        1,
        "{got:#?}"
    );
    assert!(
        v(
            "snakepit.worker.restarts",
            &[("pool", "breaker"), ("reason", "start_failed")]
        ) >= 1,
        "{got:#?}"
    );
    assert_eq!(
        v("snakepit.breaker.opened", &[("pool", "breaker")]),
        1,
        "{got:#?}"
    );
    assert_eq!(
        v("snakepit.sweep.killed", &[("pool", "swept")]),
        1,
        "{got:#?}"
    );
    // Nothing counted under a reason it did not have.
    for (pool, only) in [("recycled", "recycled_calls"), ("health", "health_check")] {
        let reasons: Vec<String> = points(&out, "snakepit.worker.restarts")
            .into_iter()
            .filter(|(a, _)| a.get("pool").map(String::as_str) == Some(pool))
            .filter_map(|(a, _)| a.get("reason").cloned())
            .collect();
        assert_eq!(reasons, vec![only.to_owned()], "{pool}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}
