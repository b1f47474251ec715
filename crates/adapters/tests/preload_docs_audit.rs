//! Promise audit of docs/preload.md: what the page promises that no other
//! test shows, through real preloaded pools (templates and forked workers):
//!
//! - "The Python and Ruby bridges count the process's threads as the kernel
//!   does (`/proc/self/task`), so the thread pools native libraries start
//!   count too": a Ruby template with a thread Ruby does not know of (made
//!   with `pthread_create` through Fiddle, as native code makes them) warns
//!   in each worker's log (the Python case is shown by
//!   bridges/python/tests/test_audit_docs.py);
//! - serving a fork request: "refresh what the worker object read at
//!   construction (worker id, pid, start time)": a forked worker's `ping`
//!   gives its own pid and an uptime counted from the fork, not from the
//!   template's construction of the worker object.
//!
//! The workers are small scripts written by each test to a directory of its
//! own.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{Error, Pool};
use snakepit_tests::python;

/// A Ruby script whose module-level code starts a native thread (libc's
/// `sleep(1000)` run by `pthread_create`) that Ruby's `Thread.list` does
/// not show, and writes what Ruby and the kernel count to `COUNT_FILE`.
const RUBY_NATIVE_THREAD: &str = r##"
require "fiddle"
require "snakepit_bridge"

libc = Fiddle.dlopen(nil)
create = Fiddle::Function.new(libc["pthread_create"], [Fiddle::TYPE_VOIDP] * 4, Fiddle::TYPE_INT)
tid = Fiddle::Pointer.malloc(8)
rc = create.call(tid, nil, libc["sleep"], 1000)
raise "pthread_create failed: #{rc}" unless rc.zero?
File.write(ENV.fetch("COUNT_FILE"),
           "#{Process.pid} #{Thread.list.size} #{Dir.children('/proc/self/task').size}\n")

worker = SnakepitBridge::Worker.new
worker.command("whoami") { |_args, _ctx| { "pid" => Process.pid } }
worker.command("crash") do |_args, _ctx|
  $stderr.flush
  exit!(3)
end
worker.run
"##;

/// Python: the worker object is made, then the load takes `LOAD_SECONDS`;
/// `ages` answers the process's pid and parent and the time since the
/// object was made.
const PYTHON_AGES: &str = r##"
import os
import time

import snakepit_bridge

worker = snakepit_bridge.Worker()
CONSTRUCTED = time.monotonic()
time.sleep(float(os.environ["LOAD_SECONDS"]))


@worker.command("ages")
def ages(args, ctx):
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "since_constructed": time.monotonic() - CONSTRUCTED,
    }


worker.run()
"##;

/// The same in Ruby.
const RUBY_AGES: &str = r##"
require "snakepit_bridge"

worker = SnakepitBridge::Worker.new
CONSTRUCTED = Process.clock_gettime(Process::CLOCK_MONOTONIC)
sleep(Float(ENV.fetch("LOAD_SECONDS")))

worker.command("ages") do |_args, _ctx|
  {
    "pid" => Process.pid,
    "ppid" => Process.ppid,
    "since_constructed" => Process.clock_gettime(Process::CLOCK_MONOTONIC) - CONSTRUCTED
  }
end
worker.run
"##;

/// How long the templates of [`PYTHON_AGES`] and [`RUBY_AGES`] load after
/// making their worker object.
const LOAD_SECONDS: f64 = 3.0;

/// A directory of this test's own (emptied first).
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "snakepit-preload-docs-audit-{test}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `text` as `name` in `dir`.
fn script(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// preload.md, "What does not survive a fork": "a template with more than
/// one thread at `run()` writes a warning to each worker's log. The Python
/// and Ruby bridges count the process's threads as the kernel does
/// (`/proc/self/task`), so the thread pools native libraries start count
/// too." A Ruby template whose only other thread is a native one (Ruby
/// lists 1 thread, the kernel 2): each of two forked workers, made to
/// crash, has the warning about the template's 2 threads in its crash
/// report's stderr tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_thread_in_a_ruby_template_is_counted_and_warned_about() {
    let dir = temp_dir("ruby-native-thread");
    let count_file = dir.join("count");
    let bridge = Bridge::ruby(script(&dir, "worker.rb", RUBY_NATIVE_THREAD))
        .env("COUNT_FILE", &count_file)
        .preload();
    let pool = Pool::builder(bridge)
        .size(2)
        .configure(|c| c.health_check_interval = Duration::ZERO)
        .start()
        .await
        .unwrap();
    let counted = std::fs::read_to_string(&count_file).unwrap();
    let counted: Vec<u32> = counted
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    let (template, ruby_threads, kernel_threads) = (counted[0], counted[1], counted[2]);
    assert_eq!(
        (ruby_threads, kernel_threads),
        (1, 2),
        "Ruby does not list the native thread; the kernel does"
    );
    for _ in 0..2 {
        let who = pool.execute("whoami", json!({})).await.unwrap();
        assert_ne!(
            who["pid"].as_u64(),
            Some(u64::from(template)),
            "a forked worker serves"
        );
        match pool.execute("crash", json!({})).await {
            Err(Error::WorkerCrashed(crash)) => assert!(
                crash
                    .stderr_tail
                    .contains("the template had 2 threads when it forked"),
                "worker {}: {:?}",
                crash.pid,
                crash.stderr_tail
            ),
            other => panic!("expected a crash, got {other:?}"),
        }
    }
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A one-worker preloaded pool of `bridge` (a script of `PYTHON_AGES` or
/// `RUBY_AGES`): the forked worker's `ping`, then its `ages`.
async fn ping_then_ages(bridge: Bridge) -> (Value, Value) {
    let bridge = bridge
        .env("LOAD_SECONDS", LOAD_SECONDS.to_string())
        .preload();
    let pool = Pool::builder(bridge).size(1).start().await.unwrap();
    let ping = pool.execute("ping", json!({})).await.unwrap();
    let ages = pool.execute("ages", json!({})).await.unwrap();
    pool.shutdown().await.unwrap();
    (ping, ages)
}

/// Checks a forked worker's `ping` against its `ages`, asked after it: the
/// same process, forked (its parent is not this test), whose `ping` pid is
/// its own and whose uptime started at the fork. The template made the
/// worker object `LOAD_SECONDS` before it could fork, so an uptime counted
/// from the object's construction would be at least `since_constructed`
/// (asked later) minus the moment between the two calls; one counted from
/// the fork is at least `LOAD_SECONDS` under it.
fn refreshed_at_the_fork(lang: &str, ping: &Value, ages: &Value) {
    let pid = ages["pid"].as_u64().unwrap();
    assert_ne!(
        ages["ppid"].as_u64(),
        Some(u64::from(std::process::id())),
        "{lang}: a fork of the template, not started by the pool: {ages}"
    );
    assert_eq!(
        ping["pid"].as_u64(),
        Some(pid),
        "{lang}: ping's pid: {ping}"
    );
    let uptime = ping["uptime"].as_f64().expect("ping has an uptime");
    let since_constructed = ages["since_constructed"].as_f64().unwrap();
    assert!(
        uptime + LOAD_SECONDS / 2.0 < since_constructed,
        "{lang}: the uptime ({uptime} s) counts from the template's construction of \
         the worker object ({since_constructed} s ago), not from the fork"
    );
}

/// preload.md, "Serving a fork request": in the child, "refresh what the
/// worker object read at construction (worker id, pid, start time)". A
/// Python template makes its `Worker()` and then loads for 3 s: a forked
/// worker's `ping` answers its own pid (not the template's) and an uptime
/// counted from its fork.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_python_worker_reports_its_own_pid_and_uptime() {
    let dir = temp_dir("python-ages");
    let bridge = Bridge::python(script(&dir, "worker.py", PYTHON_AGES)).interpreter(python());
    let (ping, ages) = ping_then_ages(bridge).await;
    refreshed_at_the_fork("Python", &ping, &ages);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same for Ruby: a forked worker's `ping` uptime counts from its fork.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_ruby_worker_reports_its_own_pid_and_uptime() {
    let dir = temp_dir("ruby-ages");
    let bridge = Bridge::ruby(script(&dir, "worker.rb", RUBY_AGES));
    let (ping, ages) = ping_then_ages(bridge).await;
    refreshed_at_the_fork("Ruby", &ping, &ages);
    let _ = std::fs::remove_dir_all(&dir);
}
