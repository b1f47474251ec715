//! Promises of docs/preload.md that no other test shows, through real
//! preloaded pools (templates and forked workers):
//!
//! - "set every variable of `env` ..., then remove `SNAKEPIT_PRELOAD`
//!   (last, so that no `env` can make a worker a template)": a bridge whose
//!   own environment names `SNAKEPIT_PRELOAD=1` still gets serving workers;
//! - "run the after-fork hooks in registration order", and "an after-fork
//!   hook, which runs in every worker before it serves its first call (in a
//!   pool without preloading too)": Python and Ruby;
//! - "Each forked worker is a full worker of the pool ...: its own stderr
//!   stream and stderr tail in crash reports", with the exit status the
//!   template reported;
//! - "Random generators are copied ... Ruby's `Random` [is] reseeded by the
//!   bridges after the fork".
//!
//! The workers are small scripts written by each test to a directory of its
//! own.

mod common;

use std::path::PathBuf;

use common::on_every_worker;
use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{Error, ExitReason, Pool};
use snakepit_tests::python;

const PYTHON_WORKER: &str = r#"
import os
import random
import sys
import time

from snakepit_bridge import Worker

LOADED_IN = os.getpid()
worker = Worker()
order = []


@worker.after_fork
def first():
    order.append("first")


@worker.after_fork
def second():
    order.append("second")


@worker.command
def whoami(args):
    time.sleep(args.get("ms", 0) / 1000)
    return {
        "pid": os.getpid(),
        "loaded_in": LOADED_IN,
        "order": order,
        "preload": os.environ.get("SNAKEPIT_PRELOAD"),
        "random": random.random(),
    }


@worker.command
def die(args):
    sys.stderr.write("the last words of worker %d\n" % os.getpid())
    sys.stderr.flush()
    os._exit(7)


worker.run()
"#;

const RUBY_WORKER: &str = r#"
require "snakepit_bridge"

LOADED_IN = Process.pid
worker = SnakepitBridge::Worker.new
order = []
worker.after_fork { order << "first" }
worker.after_fork { order << "second" }

worker.command("whoami") do |args, _ctx|
  sleep((args["ms"] || 0) / 1000.0)
  {
    "pid" => Process.pid,
    "loaded_in" => LOADED_IN,
    "order" => order,
    "preload" => ENV["SNAKEPIT_PRELOAD"],
    "random" => rand,
    "random_class" => Random.rand,
  }
end

worker.run
"#;

/// Writes `text` as `name` in a directory of this test's own.
fn script(test: &str, name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "snakepit-preload-doc-{test}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn python_bridge(test: &str) -> Bridge {
    Bridge::python(script(test, "worker.py", PYTHON_WORKER)).interpreter(python())
}

fn ruby_bridge(test: &str) -> Bridge {
    Bridge::ruby(script(test, "worker.rb", RUBY_WORKER))
}

fn pid(v: &Value) -> u64 {
    v["pid"].as_u64().unwrap()
}

async fn env_cannot_make_a_template(bridge: Bridge) {
    let bridge = bridge.env("SNAKEPIT_PRELOAD", "1").preload();
    let pool = Pool::builder(bridge).size(2).start().await.unwrap();
    for w in on_every_worker(&pool, "whoami").await {
        assert_eq!(w["preload"], Value::Null, "{w}");
        assert_ne!(w["loaded_in"], w["pid"], "a fork of the template: {w}");
    }
    pool.shutdown().await.unwrap();
}

/// A Python bridge given `SNAKEPIT_PRELOAD=1` in its own environment: the
/// pool starts, every worker is a fork of the template (the module ran in
/// another process) that serves, and none has the variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_env_naming_snakepit_preload_does_not_make_a_python_worker_a_template() {
    env_cannot_make_a_template(python_bridge("py-env")).await;
}

/// The same for Ruby. (The order inside the template, `SNAKEPIT_PRELOAD`
/// removed after the fork request's `env` is set, is shown by driving the
/// templates directly: `outside_template_protocol.rs`; the pool itself
/// sends only the variables it adds per worker.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_env_naming_snakepit_preload_does_not_make_a_ruby_worker_a_template() {
    env_cannot_make_a_template(ruby_bridge("rb-env")).await;
}

async fn hooks_in_order(bridge: Bridge, preloaded: bool) {
    let bridge = if preloaded { bridge.preload() } else { bridge };
    let pool = Pool::builder(bridge).size(2).start().await.unwrap();
    for w in on_every_worker(&pool, "whoami").await {
        assert_eq!(w["order"], json!(["first", "second"]), "{w}");
        assert_eq!(
            w["loaded_in"] != w["pid"],
            preloaded,
            "preloaded {preloaded}: {w}"
        );
    }
    pool.shutdown().await.unwrap();
}

/// The after-fork hooks run once each, in registration order, before the
/// first call: in forked Python workers and in directly started ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_after_fork_hooks_run_in_registration_order_preloaded_or_not() {
    hooks_in_order(python_bridge("py-hooks"), true).await;
    hooks_in_order(python_bridge("py-hooks"), false).await;
}

/// The same for Ruby workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_after_fork_hooks_run_in_registration_order_preloaded_or_not() {
    hooks_in_order(ruby_bridge("rb-hooks"), true).await;
    hooks_in_order(ruby_bridge("rb-hooks"), false).await;
}

/// A forked Python worker that writes to its stderr and exits with status
/// 7 in a call: the call fails with `WorkerCrashed` naming that worker,
/// its exit code and the line it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_workers_crash_report_has_its_exit_code_and_stderr_tail() {
    let pool = Pool::builder(python_bridge("crash").preload())
        .size(1)
        .start()
        .await
        .unwrap();
    let before = pool.execute("whoami", json!({})).await.unwrap();
    assert_ne!(before["loaded_in"], before["pid"], "forked: {before}");
    match pool.execute("die", json!({})).await {
        Err(Error::WorkerCrashed(crash)) => {
            assert_eq!(u64::from(crash.pid), pid(&before), "{crash:?}");
            assert_eq!(crash.exit, ExitReason::Code(7), "{crash:?}");
            assert!(
                crash
                    .stderr_tail
                    .contains(&format!("the last words of worker {}", pid(&before))),
                "{crash:?}"
            );
        }
        other => panic!("expected a crash, got {other:?}"),
    }
    pool.shutdown().await.unwrap();
}

/// Ruby's `rand` and `Random.rand` are reseeded after the fork: three
/// forks of one template draw three different numbers from each. (Ruby's
/// own `fork` reseeds its default generator too, so this shows the
/// promise, not the bridge's `srand` alone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forked_ruby_workers_draw_different_random_numbers() {
    let pool = Pool::builder(ruby_bridge("rb-random").preload())
        .size(3)
        .start()
        .await
        .unwrap();
    let draws = on_every_worker(&pool, "whoami").await;
    for key in ["random", "random_class"] {
        let mut numbers: Vec<String> = draws.iter().map(|v| v[key].to_string()).collect();
        numbers.sort();
        numbers.dedup();
        assert_eq!(numbers.len(), 3, "{key}: {draws:?}");
    }
    for w in &draws {
        assert_ne!(w["loaded_in"], w["pid"], "forked: {w}");
    }
    pool.shutdown().await.unwrap();
}
