//! docs/telemetry.md, promises an outside tester found without a test, each
//! shown against real worker processes (Python and Ruby bridges) and a real
//! OTLP receiver (Rotel) or the plain one of `common/http.rs`:
//!
//! - "Cost": narrowing the trace filter (`Telemetry::traces`) to your own
//!   targets "removes the pool's spans altogether; the metrics stay exact";
//! - "The trace of a call": the request frame carries the span's trace
//!   context "(unless the call's `CallOptions::traceparent` names a
//!   traceparent already)", and carries what the configured propagator
//!   (`OTEL_PROPAGATORS`) writes;
//! - the bridges: a Ruby handler has `ctx.traceparent`, `ctx.tracestate`
//!   (and `ctx.baggage`) of the call, as the Python and Node.js ones do.
//!
//! `init` installs process-wide state and reads the environment, so each
//! test runs in a process of its own (this test binary, started again for
//! that one test).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Receiver, Rotel};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::KeyValue;
use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::events::EventKind;
use snakepit_core::{CallOptions, Pool, PoolBuilder};
use snakepit_telemetry::Telemetry;
use tracing::{Instrument, Level};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::Targets;

/// The trace the callers below continue, and their remote parent's span.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const REMOTE_PARENT: &str = "00f067aa0ba902b7";

/// [`common::in_own_process`], with `--include-ignored`, so that a test
/// marked as showing a defect runs in its process when asked for
/// (`cargo test -- --ignored`).
fn own_process(name: &str, env: &[(&str, &str)]) -> Option<String> {
    if std::env::var_os(common::CHILD).is_some() {
        return None;
    }
    let mut cmd = snakepit_tests::this_test(name);
    cmd.arg("--include-ignored").env(common::CHILD, "1");
    for var in common::OTEL_VARS {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{name} failed in its own process:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("1 passed"), "{name} did not run: {stdout}");
    Some(stderr)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `tests/workers/outside_telemetry_context.py`: reports the trace context
/// of its request, and the trace, parent and sampling flag of the span the
/// bridge opened for it (an SDK tracer provider without exporter).
fn python_worker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workers/outside_telemetry_context.py")
}

/// `tests/workers/outside_telemetry_context.rb`: reports `ctx.traceparent`,
/// `ctx.tracestate`, `ctx.baggage` and the README's carrier.
fn ruby_worker() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workers/outside_telemetry_context.rb")
}

/// Whether `ruby` can be run; the Ruby test is skipped, saying so, when not.
fn have_ruby() -> bool {
    #[allow(clippy::disallowed_methods)] // asks ruby its version; not a worker
    let ran = std::process::Command::new("ruby")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    ran.is_ok_and(|s| s.success())
}

/// A one-worker pool of [`python_worker`], to be instrumented.
fn one_python_worker() -> PoolBuilder {
    Pool::builder(Bridge::python(python_worker())).size(1)
}

/// `builder` instrumented (`snakepit_telemetry::instrument`), started.
async fn instrumented(builder: PoolBuilder) -> Pool {
    snakepit_telemetry::instrument(builder)
        .start()
        .await
        .unwrap()
}

/// Telemetry that exports spans to `endpoint`, without metrics or logs on
/// stderr.
fn spans_to(endpoint: String) -> Telemetry {
    Telemetry::new()
        .endpoint(endpoint)
        .metrics(false)
        .stderr_logs(None)
}

/// What the handler got of a `context` call made inside `span`.
async fn context_within(pool: &Pool, span: tracing::Span) -> Value {
    pool.execute("context", json!({}))
        .instrument(span)
        .await
        .unwrap()
}

/// What the Python handler got of a `context` call made inside
/// [`caller_of_a_remote_trace`]`(caller)`, through an instrumented pool
/// whose spans go to a plain receiver (the propagators those of this
/// process's environment).
fn context_of_a_remote_callers_call(caller: &'static str) -> Value {
    let receiver = Receiver::ok();
    let guard = spans_to(receiver.base()).init().unwrap();
    let r = runtime().block_on(async {
        let pool = instrumented(one_python_worker()).await;
        let r = context_within(&pool, caller_of_a_remote_trace(caller)).await;
        pool.shutdown().await.unwrap();
        r
    });
    guard.shutdown().unwrap();
    r
}

/// A caller's span that continues a remote, sampled trace ([`TRACE`]) whose
/// trace state is `vendor=x`, with baggage `tenant=acme`.
fn caller_of_a_remote_trace(name: &'static str) -> tracing::Span {
    let remote = SpanContext::new(
        TraceId::from_hex(TRACE).unwrap(),
        SpanId::from_hex(REMOTE_PARENT).unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::from_key_value([("vendor", "x")]).unwrap(),
    );
    let span = tracing::info_span!("caller", otel.name = name);
    span.set_parent(
        opentelemetry::Context::new()
            .with_remote_span_context(remote)
            .with_baggage([KeyValue::new("tenant", "acme")]),
    )
    .unwrap();
    span
}

/// The trace and span ids of a `tracing` span, in hex.
fn ids(span: &tracing::Span) -> (String, String) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    (
        format!("{:032x}", sc.trace_id()),
        format!("{:016x}", sc.span_id()),
    )
}

/// The parts of a W3C `traceparent`: trace id, parent id, flags.
fn parts(tp: &Value) -> (String, String, String) {
    let tp = tp
        .as_str()
        .unwrap_or_else(|| panic!("no traceparent: {tp}"));
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "not a traceparent: {tp}");
    assert_eq!(p[0], "00", "{tp}");
    (p[1].to_owned(), p[2].to_owned(), p[3].to_owned())
}

/// One histogram data point as Rotel printed it.
#[derive(Debug, Default, Clone)]
struct HistogramPoint {
    attrs: HashMap<String, String>,
    count: u64,
    sum: f64,
}

/// The data points of the last export of histogram `name` in Rotel's
/// detailed debug log (the temporality is cumulative: the last export holds
/// every call).
fn histogram(out: &str, name: &str) -> Vec<HistogramPoint> {
    let Some(start) = out.rfind(&format!("Name: {name}\n")) else {
        return Vec::new();
    };
    let rest = &out[start..];
    let end = [
        "Metric #",
        "ResourceMetrics #",
        "ScopeMetrics #",
        "ResourceSpans #",
        "ScopeSpans #",
        "Span #",
    ]
    .iter()
    .filter_map(|m| rest.find(m))
    .min()
    .unwrap_or(rest.len());
    rest[..end]
        .split("HistogramDataPoints #")
        .skip(1)
        .map(|block| {
            let mut point = HistogramPoint::default();
            for line in block.lines() {
                let line = line.trim();
                if let Some(kv) = line.strip_prefix("-> ") {
                    if let Some((k, v)) = kv.split_once(": ") {
                        let v = v
                            .strip_prefix("Str(")
                            .and_then(|v| v.strip_suffix(')'))
                            .unwrap_or(v);
                        point.attrs.insert(k.to_owned(), v.to_owned());
                    }
                } else if let Some(v) = line.strip_prefix("Count: ") {
                    point.count = v.trim().parse().unwrap_or(u64::MAX);
                } else if let Some(v) = line.strip_prefix("Sum: ") {
                    point.sum = v.trim().parse().unwrap_or(f64::NAN);
                }
            }
            point
        })
        .collect()
}

/// The point of histogram `name` whose attributes are exactly `attrs`.
fn point(out: &str, name: &str, attrs: &[(&str, &str)]) -> Option<HistogramPoint> {
    histogram(out, name).into_iter().find(|p| {
        p.attrs.len() == attrs.len()
            && attrs
                .iter()
                .all(|(k, v)| p.attrs.get(*k).map(String::as_str) == Some(*v))
    })
}

/// Whether two sums of seconds are the same but for rounding.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 + 1e-9 * b.abs()
}

/// Checks that the point of histogram `name` whose attributes are exactly
/// `attrs` counts `count` values whose sum is `sum`.
fn assert_point(out: &str, name: &str, attrs: &[(&str, &str)], count: u64, sum: f64) {
    let p = point(out, name, attrs).unwrap_or_else(|| panic!("no {name} of {attrs:?}:\n{out}"));
    assert_eq!(p.count, count, "{name}: {p:?}");
    assert!(close(p.sum, sum), "{name}: {p:?}, events say {sum}");
}

/// What each call's `CallEnded` said: command, outcome, duration and queue
/// wait in seconds.
type Ended = Arc<Mutex<Vec<(String, &'static str, f64, f64)>>>;

/// Sum of the durations (`wait = false`) or queue waits of the calls of
/// `command` (and `outcome`, when given) the listener saw.
fn seen_sum(ended: &Ended, command: &str, outcome: Option<&str>, wait: bool) -> (u64, f64) {
    let ended = ended.lock().unwrap();
    let mine: Vec<_> = ended
        .iter()
        .filter(|(c, o, _, _)| c == command && outcome.is_none_or(|x| x == *o))
        .collect();
    let sum = mine
        .iter()
        .map(|(_, _, d, w)| if wait { *w } else { *d })
        .sum();
    (mine.len() as u64, sum)
}

/// docs/telemetry.md:324-329, "Cost": "To lower the cost in a busy service:
/// [...] narrow the trace filter (`Telemetry::traces`) to your own targets,
/// which removes the pool's spans altogether; the metrics stay exact either
/// way."
///
/// With `.traces(Targets::new().with_target("outside_app", Level::INFO))`,
/// calls made inside a span of target `outside_app` through an
/// instrumented pool: the caller's span reaches Rotel, no `snakepit.call`
/// nor `snakepit.worker.start` does; and `snakepit.call.duration`,
/// `snakepit.call.queue_wait` and `snakepit.worker.init.duration` count
/// every call (three that succeed, two that fail, and one outside any
/// span) and worker start, their sums those of the pool's own `CallEnded`
/// and `WorkerReady` events, seen by a listener of ours beside
/// `instrument`'s. (What the worker is told of the trace then is
/// [`with_the_pools_spans_filtered_out_the_worker_still_joins_the_callers_trace`].)
#[test]
fn a_trace_filter_narrowed_to_your_targets_drops_the_pools_spans_and_keeps_the_metrics_exact() {
    const NAME: &str =
        "a_trace_filter_narrowed_to_your_targets_drops_the_pools_spans_and_keeps_the_metrics_exact";
    if own_process(NAME, &[]).is_some() {
        return;
    }
    let rotel = Rotel::start().unwrap();
    let guard = Telemetry::new()
        .service_name("narrowed")
        .endpoint(rotel.http_base())
        .stderr_logs(None)
        .traces(Targets::new().with_target("outside_app", Level::INFO))
        .init()
        .unwrap();
    let ended: Ended = Arc::default();
    let inits: Arc<Mutex<Vec<f64>>> = Arc::default();
    let (root_trace, root_id) = runtime().block_on(async {
        let (log, init_log) = (ended.clone(), inits.clone());
        let pool = snakepit_telemetry::instrument(one_python_worker().name("narrowed"))
            .on_event(move |event| match &event.kind {
                EventKind::CallEnded {
                    command,
                    duration,
                    queue_wait,
                    outcome,
                    ..
                } => log.lock().unwrap().push((
                    command.to_string(),
                    *outcome,
                    duration.as_secs_f64(),
                    queue_wait.as_secs_f64(),
                )),
                EventKind::WorkerReady { init, .. } => {
                    init_log.lock().unwrap().push(init.as_secs_f64())
                }
                _ => {}
            })
            .start()
            .await
            .unwrap();

        let root = tracing::info_span!(target: "outside_app", "outside.request");
        let (root_trace, root_id) = ids(&root);
        assert_ne!(
            root_trace,
            format!("{:032x}", TraceId::INVALID),
            "the caller's own span is exported: it has a trace"
        );
        for _ in 0..3 {
            pool.execute("context", json!({}))
                .instrument(root.clone())
                .await
                .unwrap();
        }
        for _ in 0..2 {
            pool.execute("fail", json!({}))
                .instrument(root.clone())
                .await
                .unwrap_err();
        }
        drop(root);
        // And one outside any span of ours.
        pool.execute("context", json!({})).await.unwrap();
        guard.flush().unwrap();
        pool.shutdown().await.unwrap();
        (root_trace, root_id)
    });
    guard.shutdown().unwrap();

    let (spans, arrived) = rotel.wait_for(Duration::from_secs(20), |spans, out| {
        spans.iter().any(|s| s.name == "outside.request")
            && point(
                out,
                "snakepit.call.duration",
                &[
                    ("pool", "narrowed"),
                    ("command", "fail"),
                    ("outcome", "remote"),
                ],
            )
            .is_some_and(|p| p.count == 2)
    });
    let out = rotel.output();
    assert!(
        arrived,
        "the caller's span or the metrics did not arrive: {spans:#?}\n{out}"
    );
    let host: Vec<&str> = spans
        .iter()
        .filter(|s| s.service == "narrowed")
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        host,
        ["outside.request"],
        "only the caller's span leaves the host: {spans:#?}"
    );
    let root = spans.iter().find(|s| s.name == "outside.request").unwrap();
    assert_eq!(
        (root.trace_id.as_str(), root.id.as_str()),
        (root_trace.as_str(), root_id.as_str())
    );

    // Exact: every call counted, under its outcome, with the durations the
    // pool measured.
    for (command, outcome, calls) in [("context", "ok", 4), ("fail", "remote", 2)] {
        let (n, sum) = seen_sum(&ended, command, Some(outcome), false);
        assert_eq!(n, calls, "the listener saw each {command} call");
        let attrs = [
            ("pool", "narrowed"),
            ("command", command),
            ("outcome", outcome),
        ];
        assert_point(&out, "snakepit.call.duration", &attrs, calls, sum);

        let (n, sum) = seen_sum(&ended, command, None, true);
        let attrs = [("pool", "narrowed"), ("command", command)];
        assert_point(&out, "snakepit.call.queue_wait", &attrs, n, sum);
    }
    let durations = histogram(&out, "snakepit.call.duration");
    assert_eq!(
        durations.iter().map(|p| p.count).sum::<u64>(),
        6,
        "no other call is counted: {durations:?}"
    );
    let inits = inits.lock().unwrap().clone();
    assert_point(
        &out,
        "snakepit.worker.init.duration",
        &[("pool", "narrowed")],
        inits.len() as u64,
        inits.iter().sum(),
    );
}

/// docs/telemetry.md:10-13 (OpenTelemetry: "the trace context handed to
/// the workers so that spans made inside Python, Node.js or Ruby handlers
/// join the same trace"), 160 ("Calls made inside a span of yours become
/// its children") and 324-329: narrowing the trace filter "removes the
/// pool's spans altogether" as a way "to lower the cost", as sampling is,
/// of which the page says "the worker's spans follow the sampling flag";
/// and "When a trace filter leaves the pool's spans out ..., the context
/// is that of the nearest span the filter keeps, the caller's". With the
/// pool's spans filtered out, a call made inside a span of yours hands the
/// worker that span's context (its spans then children of yours). The
/// control: the same span's own `traceparent`, read in the caller, is
/// valid. (Before `trace_headers` looked past the pool's unrecorded span,
/// the worker got no context at all.)
#[test]
fn with_the_pools_spans_filtered_out_the_worker_still_joins_the_callers_trace() {
    const NAME: &str = "with_the_pools_spans_filtered_out_the_worker_still_joins_the_callers_trace";
    if own_process(NAME, &[]).is_some() {
        return;
    }
    let receiver = Receiver::ok();
    let guard = spans_to(receiver.base())
        .traces(Targets::new().with_target("outside_app", Level::INFO))
        .init()
        .unwrap();
    runtime().block_on(async {
        let pool = instrumented(one_python_worker()).await;
        let root = tracing::info_span!(target: "outside_app", "outside.request");
        let (root_trace, root_id) = ids(&root);
        let own = root.in_scope(snakepit_telemetry::traceparent);
        assert_eq!(
            own,
            Some(format!("00-{root_trace}-{root_id}-01")),
            "the control: the caller's span has a context to hand on"
        );
        let r = context_within(&pool, root).await;
        pool.shutdown().await.unwrap();
        assert_eq!(
            r["traceparent"],
            format!("00-{root_trace}-{root_id}-01"),
            "the worker was not handed the caller's trace: {r}"
        );
        assert_eq!(r["trace_id"], root_trace.as_str(), "{r}");
        assert_eq!(r["parent_id"], root_id.as_str(), "{r}");
    });
    guard.shutdown().unwrap();
}

/// docs/telemetry.md:191-194: "The request frame sent to the worker
/// carries the trace context of that span as OpenTelemetry's global
/// propagator writes it: `traceparent` and, when the context has them,
/// `tracestate` and `baggage` (unless the call's `CallOptions::traceparent`
/// names a traceparent already)."
///
/// Through an instrumented pool, inside a caller's span whose trace has a
/// trace state and baggage: the control call hands the Python handler that
/// span's trace, trace state and baggage; a call whose options name a
/// traceparent hands it exactly that one, and nothing of the span's (its
/// trace state and baggage belong to another trace), and the bridge's span
/// is the child of the named parent, sampled or not as its flags say. The
/// same in a session, and for a call outside any span.
#[test]
fn a_calls_own_traceparent_is_sent_instead_of_the_current_spans_context() {
    const NAME: &str = "a_calls_own_traceparent_is_sent_instead_of_the_current_spans_context";
    if own_process(NAME, &[]).is_some() {
        return;
    }
    const MINE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const MINE_UNSAMPLED: &str = "00-11111111111111111111111111111111-2222222222222222-00";
    let receiver = Receiver::ok();
    let guard = spans_to(receiver.base())
        .service_name("explicit")
        .init()
        .unwrap();
    runtime().block_on(async {
        let pool = instrumented(one_python_worker().name("explicit")).await;
        let caller = caller_of_a_remote_trace("explicit.caller");
        let (_, caller_id) = ids(&caller);

        // The control: the span's context, all of it.
        let r = context_within(&pool, caller.clone()).await;
        let (trace, parent, flags) = parts(&r["traceparent"]);
        assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"), "{r}");
        assert_ne!(parent, caller_id, "the parent is snakepit.call: {r}");
        assert_eq!(r["tracestate"], "vendor=x", "{r}");
        assert_eq!(r["baggage"], "tenant=acme", "{r}");
        assert_eq!(r["tenant"], "acme", "{r}");
        assert_eq!(r["trace_id"], TRACE, "{r}");
        assert_eq!(r["parent_id"], parent.as_str(), "{r}");

        // The call's own traceparent, sent as it is, alone.
        let own = |tp: &str| CallOptions::new().traceparent(tp);
        let explicit = [
            (own(MINE), MINE, true),
            (own(MINE_UNSAMPLED), MINE_UNSAMPLED, false),
            (own(MINE).session("s-1"), MINE, true),
        ];
        for (options, tp, sampled) in explicit {
            let r = pool
                .execute_with("context", json!({}), options)
                .instrument(caller.clone())
                .await
                .unwrap();
            assert_eq!(r["traceparent"], tp, "{r}");
            assert_eq!(r["tracestate"], Value::Null, "the span's trace state: {r}");
            assert_eq!(r["baggage"], Value::Null, "the span's baggage: {r}");
            assert_eq!(r["tenant"], Value::Null, "{r}");
            assert_eq!(r["sampled"], sampled, "the worker follows {tp}: {r}");
            if sampled {
                let (trace, parent, _) = parts(&r["traceparent"]);
                assert_eq!(r["trace_id"], trace.as_str(), "{r}");
                assert_eq!(r["parent_id"], parent.as_str(), "{r}");
            }
        }
        // Outside any span of the caller's: the same.
        let r = pool
            .execute_with("context", json!({}), own(MINE))
            .await
            .unwrap();
        assert_eq!(r["traceparent"], MINE, "{r}");
        assert_eq!(r["parent_id"], "b7ad6b7169203331", "{r}");
        pool.shutdown().await.unwrap();
    });
    guard.shutdown().unwrap();
}

/// docs/telemetry.md:191-193 and the environment table ("`OTEL_PROPAGATORS`
/// | `tracecontext`, `baggage`, `none`, comma-separated"): the frame carries
/// the trace context "as OpenTelemetry's global propagator writes it".
/// With `OTEL_PROPAGATORS=tracecontext`, a caller whose context has
/// baggage sends the handler its `traceparent` and `tracestate` and no
/// `baggage` (the control, with the default propagators, is in
/// [`a_calls_own_traceparent_is_sent_instead_of_the_current_spans_context`]).
#[test]
fn with_otel_propagators_tracecontext_no_baggage_reaches_the_worker() {
    const NAME: &str = "with_otel_propagators_tracecontext_no_baggage_reaches_the_worker";
    if own_process(NAME, &[("OTEL_PROPAGATORS", "tracecontext")]).is_some() {
        return;
    }
    let r = context_of_a_remote_callers_call("tracecontext.caller");
    let (trace, _, _) = parts(&r["traceparent"]);
    assert_eq!(trace, TRACE, "{r}");
    assert_eq!(r["tracestate"], "vendor=x", "{r}");
    assert_eq!(r["baggage"], Value::Null, "{r}");
    assert_eq!(r["tenant"], Value::Null, "{r}");
}

/// docs/telemetry.md: "The context travels with a traceparent only: with
/// `OTEL_PROPAGATORS=baggage` alone the propagator writes none, and the
/// frame carries no trace context at all (put `tracecontext` in the list
/// to have the baggage sent)." With `OTEL_PROPAGATORS=baggage` the handler
/// gets neither a traceparent nor the baggage; with
/// `OTEL_PROPAGATORS=tracecontext,baggage` (the control), both.
#[test]
fn with_otel_propagators_baggage_alone_no_context_reaches_the_worker() {
    const NAME: &str = "with_otel_propagators_baggage_alone_no_context_reaches_the_worker";
    if std::env::var_os(common::CHILD).is_none() {
        for (propagators, sent) in [("baggage", "0"), ("tracecontext,baggage", "1")] {
            own_process(
                NAME,
                &[("OTEL_PROPAGATORS", propagators), ("OUTSIDE_SENT", sent)],
            );
        }
        return;
    }
    let sent = std::env::var("OUTSIDE_SENT").as_deref() == Ok("1");
    let r = context_of_a_remote_callers_call("baggage.caller");
    if sent {
        assert_eq!(parts(&r["traceparent"]).0, TRACE, "{r}");
        assert_eq!(r["baggage"], "tenant=acme", "{r}");
    } else {
        assert_eq!(r["traceparent"], Value::Null, "{r}");
        assert_eq!(r["baggage"], Value::Null, "{r}");
    }
}

/// docs/telemetry.md:194-196 ("The bridges hand them to the handler as
/// `ctx.traceparent`, `ctx.tracestate` and `ctx.baggage`") and 219-221
/// ("**Ruby**: `ctx.traceparent` and `ctx.tracestate` are there;
/// `bridges/ruby/README.md` shows the few lines that continue the trace").
///
/// A Ruby worker in an instrumented pool whose spans go to Rotel: inside a
/// caller's span continuing a remote trace with a trace state and baggage,
/// the handler gets a `traceparent` whose parent is that call's exported
/// `snakepit.call` span (CLIENT, child of the caller's span), the trace
/// state and the baggage; inside a span with neither, they are `nil` (so
/// the README's `.compact` carrier holds the traceparent alone); outside
/// any span, the root `snakepit.call`'s context; and with
/// `CallOptions::traceparent`, that one exactly.
#[test]
fn a_ruby_handler_gets_the_calls_trace_context() {
    const NAME: &str = "a_ruby_handler_gets_the_calls_trace_context";
    if std::env::var_os(common::CHILD).is_none() && !have_ruby() {
        eprintln!("skipped: `ruby` is not installed");
        return;
    }
    if own_process(NAME, &[]).is_some() {
        return;
    }
    const MINE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let rotel = Rotel::start().unwrap();
    let guard = spans_to(rotel.http_base())
        .service_name("ruby-host")
        .init()
        .unwrap();
    let (remote, plain, plain_ids, bare, explicit, caller_id) = runtime().block_on(async {
        let pool = instrumented(
            Pool::builder(Bridge::ruby(ruby_worker()))
                .size(1)
                .name("ruby"),
        )
        .await;
        let caller = caller_of_a_remote_trace("ruby.caller");
        let (_, caller_id) = ids(&caller);
        let remote = context_within(&pool, caller).await;
        let own = tracing::info_span!("ruby.plain.caller");
        let plain_ids = ids(&own);
        let plain = context_within(&pool, own).await;
        let bare = pool.execute("context", json!({})).await.unwrap();
        let explicit = pool
            .execute_with("context", json!({}), CallOptions::new().traceparent(MINE))
            .await
            .unwrap();
        pool.shutdown().await.unwrap();
        (remote, plain, plain_ids, bare, explicit, caller_id)
    });
    guard.shutdown().unwrap();

    // What the handler got, and the carrier the README builds from it.
    let (trace, call_id, flags) = parts(&remote["traceparent"]);
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"), "{remote}");
    assert_eq!(remote["tracestate"], "vendor=x", "{remote}");
    assert_eq!(remote["baggage"], "tenant=acme", "{remote}");
    assert_eq!(
        remote["carrier"],
        json!({"traceparent": remote["traceparent"], "tracestate": "vendor=x", "baggage": "tenant=acme"})
    );
    let (plain_trace, plain_call, _) = parts(&plain["traceparent"]);
    assert_eq!(plain_trace, plain_ids.0, "{plain}");
    assert_eq!(plain["tracestate"], Value::Null, "{plain}");
    assert_eq!(plain["baggage"], Value::Null, "{plain}");
    assert_eq!(
        plain["carrier"],
        json!({"traceparent": plain["traceparent"]})
    );
    let (bare_trace, bare_call, _) = parts(&bare["traceparent"]);
    assert_eq!(bare["carrier"], json!({"traceparent": bare["traceparent"]}));
    assert_eq!(explicit["traceparent"], MINE, "{explicit}");
    assert_eq!(explicit["carrier"], json!({"traceparent": MINE}));

    // Each traceparent names the call's own snakepit.call span.
    let call_of = |trace: &str, id: &str| {
        let (trace, id) = (trace.to_owned(), id.to_owned());
        move |s: &common::SpanRecord| s.name == "snakepit.call" && s.trace_id == trace && s.id == id
    };
    let (remote_call, plain_c, bare_c) = (
        call_of(TRACE, &call_id),
        call_of(&plain_trace, &plain_call),
        call_of(&bare_trace, &bare_call),
    );
    let (spans, arrived) = rotel.wait_for(Duration::from_secs(20), |spans, _| {
        spans.iter().any(&remote_call) && spans.iter().any(&plain_c) && spans.iter().any(&bare_c)
    });
    assert!(
        arrived,
        "no snakepit.call span named by the traceparents the handler got ({call_id}, {plain_call}, {bare_call}): {spans:#?}"
    );
    let call = spans.iter().find(|s| remote_call(s)).unwrap();
    assert_eq!(call.parent_id, caller_id, "{call:?}");
    assert_eq!(call.kind, "SPAN_KIND_CLIENT", "{call:?}");
    assert_eq!(
        call.attributes.get("snakepit.pool").map(String::as_str),
        Some("ruby")
    );
    let plain_span = spans.iter().find(|s| plain_c(s)).unwrap();
    assert_eq!(plain_span.parent_id, plain_ids.1, "{plain_span:?}");
    let bare_span = spans.iter().find(|s| bare_c(s)).unwrap();
    assert_eq!(bare_span.parent_id, "", "a root of its own: {bare_span:?}");
}
