//! A worker's children that left its process group, in a preloaded pool:
//! which go when their worker ends (`sweep::kill_escaped`, from
//! `Shared::gone`), and which only at the pool's end.

mod common;

use std::time::Duration;

use common::{builder, eventually, inline_launch, Lang};
use serde_json::{json, Value};
use snakepit_core::{Adapter, Launch, Pool};

/// An inline Python script on the bridge, preloaded.
struct Preloaded(&'static str);

impl Adapter for Preloaded {
    fn launch(&self) -> Launch {
        inline_launch(Lang::Python, self.0).preloaded()
    }
}

/// `fork_escape`: a child forked without exec (as a daemonizing library
/// does) that leaves the group (`setsid`) before the reply; `popen_escape`:
/// a child started by `subprocess` in a session of its own. Both name the worker's pid.
const SCRIPT: &str = r#"
import os, subprocess, time, snakepit_bridge
w = snakepit_bridge.Worker()

@w.command("fork_escape")
def fork_escape(args, ctx):
    r, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            fd = os.open(os.devnull, os.O_RDWR)
            for i in (0, 1, 2):
                os.dup2(fd, i)
            os.setsid()
            os.write(wr, b"x")
            os.close(wr)
            time.sleep(300)
        finally:
            os._exit(0)
    # Reply only once the child has left the group, so a worker killed
    # right after cannot take the child with its group.
    os.close(wr)
    os.read(r, 1)
    os.close(r)
    return {"child": pid, "worker": os.getpid()}

@w.command("popen_escape")
def popen_escape(args, ctx):
    c = subprocess.Popen(["sleep", "300"], start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    return {"child": c.pid, "worker": os.getpid()}

w.run()
"#;

/// A pool of one worker of [`SCRIPT`], forked from its template.
async fn one_preloaded_worker() -> Pool {
    builder(Preloaded(SCRIPT))
        .configure(|c| c.startup_timeout = Duration::from_secs(60))
        .size(1)
        .start()
        .await
        .unwrap()
}

fn pid(v: &Value, k: &str) -> u32 {
    v[k].as_u64().unwrap() as u32
}

fn worker_id_in_environ(pid: u32) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"SNAKEPIT_WORKER_ID=".as_slice()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Control: in a preloaded pool, a `subprocess` child that called `setsid`
/// dies with its worker (its exec'd environment carries the worker's id),
/// and the template is spared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preloaded_popen_child_dies_with_its_worker_and_template_survives() {
    let pool = one_preloaded_worker().await;
    let template = pool.template_pid().expect("preloaded");
    let v = pool.execute("popen_escape", json!({})).await.unwrap();
    let (child, worker) = (pid(&v, "child"), pid(&v, "worker"));
    common::kill_9(worker);
    let gone = eventually(10, || !common::alive(child)).await;
    let template_alive = common::alive(template);
    common::kill_9(child);
    pool.shutdown().await.unwrap();
    assert!(
        gone,
        "the popen'd escaped child outlived its preloaded worker"
    );
    assert!(template_alive, "the template was killed with a worker");
}

/// docs/reliability.md, the run id layer: "in a preloaded pool, a child
/// a worker forks without exec shows the template's environment in `/proc`
/// (the worker's id is set after the fork), so it goes at the pool's end".
/// A forked worker's child that forks without exec and calls `setsid` (as
/// a daemonizing library does) carries the template's worker id; it is
/// still alive after its worker was killed and the pool has served a call
/// on the replacement; it is dead after `shutdown()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preloaded_workers_child_forked_without_exec_dies_at_the_pools_end() {
    let pool = one_preloaded_worker().await;
    let v = pool.execute("fork_escape", json!({})).await.unwrap();
    let (child, worker) = (pid(&v, "child"), pid(&v, "worker"));
    let seen = worker_id_in_environ(child);
    assert!(
        seen.as_deref().is_some_and(|id| id.ends_with("_template")),
        "the template's id in /proc: {seen:?}"
    );
    common::kill_9(worker);
    let v = pool.execute("popen_escape", json!({})).await.unwrap();
    assert_ne!(pid(&v, "worker"), worker, "the replacement served");
    assert!(common::alive(child), "gone before the pool's end");
    pool.shutdown().await.unwrap();
    assert!(
        eventually(10, || !common::alive(child)).await,
        "the escaped child {child} outlived the pool"
    );
}
