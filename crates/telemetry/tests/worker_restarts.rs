//! telemetry.md, metrics: `snakepit.worker.restarts` counts restarts "with
//! the reason the previous worker went". A real Python worker SIGKILLed is
//! replaced, and the counter reaches a real OTLP receiver (Rotel) under
//! `reason` = `exited`.

mod common;

use std::time::{Duration, Instant};

use snakepit_adapters::Bridge;
use snakepit_core::Pool;

/// The block Rotel printed for the metric `name`: from its `Name:` line to
/// the next metric's.
fn metric_block<'a>(out: &'a str, name: &str) -> Option<&'a str> {
    let start = out.find(&format!("Name: {name}\n"))?;
    let rest = &out[start + 1..];
    let end = rest
        .find("Name: ")
        .map(|i| i + start + 1)
        .unwrap_or(out.len());
    Some(&out[start..end])
}

/// One worker of an instrumented pool SIGKILLed: once it is replaced, the
/// receiver gets `snakepit.worker.restarts` = 1 for the pool, `reason` =
/// `exited`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_counted_as_a_restart_with_reason_exited() -> anyhow::Result<()> {
    let rotel = common::Rotel::start()?;
    let telemetry = snakepit_telemetry::Telemetry::new()
        .service_name("snakepit-restarts")
        .endpoint(rotel.http_base())
        .protocol(snakepit_telemetry::Protocol::HttpProtobuf)
        .stderr_logs(None)
        .init()?;
    let adapter = Bridge::python(common::worker_script());
    let pool = snakepit_telemetry::instrument(Pool::builder(adapter).size(1).name("restarts"))
        .start()
        .await?;
    let before = pool.worker_pids();
    assert_eq!(before.len(), 1, "{before:?}");
    #[allow(clippy::disallowed_methods)] // kill(1), not a worker
    let status = std::process::Command::new("kill")
        .args(["-KILL", &before[0].to_string()])
        .status()?;
    assert!(status.success());
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let now = pool.worker_pids();
        if now.len() == 1 && now != before {
            break;
        }
        assert!(
            Instant::now() < until,
            "the killed worker was never replaced"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    telemetry.flush()?;
    pool.shutdown().await?;
    telemetry.shutdown()?;
    let (_, arrived) = rotel.wait_for(Duration::from_secs(20), |_, out| {
        metric_block(out, "snakepit.worker.restarts").is_some()
    });
    let out = rotel.output();
    if let Ok(path) = std::env::var("SNAKEPIT_E2E_DUMP") {
        std::fs::write(path, &out)?;
    }
    assert!(arrived, "snakepit.worker.restarts never arrived:\n{out}");
    let block = metric_block(&out, "snakepit.worker.restarts").unwrap_or_default();
    assert!(block.contains("reason: Str(exited)"), "{block}");
    assert!(block.contains("pool: Str(restarts)"), "{block}");
    // One worker went, once: the `exited` point's value is 1.
    let exited = &block[block.find("reason: Str(exited)").unwrap_or_default()..];
    let value = exited
        .lines()
        .find_map(|l| l.strip_prefix("Value: "))
        .unwrap_or_default();
    assert_eq!(value, "1", "{block}");
    Ok(())
}
