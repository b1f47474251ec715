//! Against a receiver that takes traces only, as Jaeger is (Arize Phoenix,
//! which answers 405 to metrics): a program written as docs/telemetry.md
//! shows, metrics on by default, ends without error; the failed call is
//! flagged on the host's span; host and worker spans make one trace; the
//! numbers arrive as numbers. Spans are read back through Phoenix's API.
//!
//! Phoenix and this test, its client, run in a network namespace of their
//! own: the test binary runs itself again under `unshare --net`.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::Pool;
use tracing::Instrument;

const TEST: &str = "a_traces_only_receiver_gets_one_trace_with_the_failed_call_flagged";

#[test]
fn a_traces_only_receiver_gets_one_trace_with_the_failed_call_flagged() -> Result<()> {
    if !common::in_netns() {
        return common::rerun_in_netns(TEST);
    }
    common::loopback_up()?;
    let phoenix = common::Phoenix::start()?;

    // As docs/telemetry.md shows it, metrics left on.
    let telemetry = snakepit_telemetry::Telemetry::new()
        .service_name("snakepit-e2e")
        .endpoint(phoenix.http_base())
        .stderr_logs(None)
        .init()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (root_trace, failed) = rt.block_on(async {
        let adapter = Bridge::python(common::worker_script())
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", phoenix.http_base())
            .env("OTEL_SERVICE_NAME", "snakepit-e2e-worker");
        let pool = snakepit_telemetry::instrument(Pool::builder(adapter).size(1).name("e2e"))
            .start()
            .await?;
        let gauges = snakepit_telemetry::observe(&pool);
        let root = tracing::info_span!("e2e.request");
        let reply = pool
            .execute("traced", json!({"token": "tok-1"}))
            .instrument(root.clone())
            .await?;
        let failed = pool.execute("fail", json!({})).instrument(root).await;
        drop(gauges);
        pool.shutdown().await?;
        anyhow::Ok((
            reply["trace_id"].as_str().unwrap_or_default().to_owned(),
            failed,
        ))
    })?;
    assert!(failed.is_err(), "the handler raised: {failed:?}");
    // The receiver refuses metrics (405): that is not the program's error.
    telemetry.flush().context("flush")?;
    telemetry
        .shutdown()
        .context("a program ending with `telemetry.shutdown()?` would exit 1")?;

    let name = |s: &Value| s["name"].as_str().unwrap_or_default().to_owned();
    let (spans, arrived) = phoenix.wait_for(Duration::from_secs(30), |spans| {
        let names: Vec<String> = spans.iter().map(name).collect();
        [
            "e2e.request",
            "snakepit.worker traced",
            "handler.work",
            "snakepit.worker fail",
        ]
        .iter()
        .all(|w| names.iter().any(|n| n == w))
            && names.iter().filter(|n| *n == "snakepit.call").count() == 2
    })?;
    assert!(
        arrived,
        "not every span arrived: {spans:#?}\n{}",
        phoenix.log()
    );

    let id = |s: &Value| {
        s["context"]["span_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let trace = |s: &Value| {
        s["context"]["trace_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let parent = |s: &Value| s["parent_id"].as_str().unwrap_or_default().to_owned();
    let find = |n: &str| {
        spans
            .iter()
            .find(|s| name(s) == n)
            .cloned()
            .unwrap_or_default()
    };
    let call = |command: &str| {
        spans
            .iter()
            .find(|s| name(s) == "snakepit.call" && s["attributes"]["snakepit.command"] == command)
            .cloned()
            .unwrap_or_default()
    };
    let (root, ok_call, failed_call) = (find("e2e.request"), call("traced"), call("fail"));
    let (worker_ok, worker_failed) = (find("snakepit.worker traced"), find("snakepit.worker fail"));
    let handler = find("handler.work");

    // One trace across host and worker.
    for s in [&ok_call, &failed_call, &worker_ok, &worker_failed, &handler] {
        assert_eq!(trace(s), trace(&root), "{s:#}\namong {spans:#?}");
    }
    assert_eq!(trace(&root), root_trace);
    assert_eq!(parent(&ok_call), id(&root));
    assert_eq!(
        parent(&worker_ok),
        id(&ok_call),
        "the worker's span under snakepit.call"
    );
    assert_eq!(parent(&handler), id(&worker_ok));
    assert_eq!(parent(&worker_failed), id(&failed_call));

    // The failed call is flagged on the host's span too.
    assert_eq!(failed_call["status_code"], "ERROR", "{failed_call:#}");
    assert_eq!(failed_call["attributes"]["error.type"], "remote");
    assert_eq!(worker_failed["status_code"], "ERROR", "{worker_failed:#}");
    assert_ne!(ok_call["status_code"], "ERROR", "{ok_call:#}");

    // Numbers as numbers, under namespaced names.
    let a = &ok_call["attributes"];
    assert_eq!(a["snakepit.pool"], "e2e");
    assert!(a["process.pid"].is_i64(), "{a:#}");
    assert!(a["snakepit.worker"].is_i64(), "{a:#}");
    assert!(a["snakepit.queue_wait_us"].is_i64(), "{a:#}");
    Ok(())
}
