//! An outside tester's red-team of preloading under faults
//! (docs/preload.md, Python and Ruby templates): a forked replacement whose
//! after-fork hook hangs, exits or raises (at start and later), every worker
//! killed at once (idle and busy: exact counters), the template killed
//! together with every worker, under load, or with a fork pending on it,
//! a stopped template, shutdown while forks are pending or stuck in their
//! hook, the breaker over failing forks, and a helper process the
//! template's script started (shutdown, a killed template, the host's
//! SIGKILL). "Nothing left" is checked by pid and by scanning /proc for
//! every process carrying the test's own `OTF_DIR`.
//!
//! The worker is `workers/outside_template_faults_worker.py` (its Ruby twin
//! is `RUBY_WORKER` below): its after-fork hook records its pid and, once
//! the test writes a mode file, hangs, exits with status 7 or raises.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::events::EventKind;
use snakepit_core::{CallOptions, Pool};
use snakepit_tests::{alive, eventually, python};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workers/outside_template_faults_worker.py")
}

/// A fresh directory for one test's files.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("otf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn kill(pid: u32, sig: i32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a process this test's pool started.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// SIGKILLs every one of `pids`.
fn kill_all(pids: &[u32]) {
    for &p in pids {
        kill(p, libc::SIGKILL);
    }
}

/// Those of `pids` still alive.
fn alive_of(pids: &[u32]) -> Vec<u32> {
    pids.iter().copied().filter(|&p| alive(p)).collect()
}

/// Waits up to 10 s for every one of `pids` to be gone (and, with `d`,
/// every process of the test's `OTF_DIR`), then SIGKILLs the leftovers so
/// a failure leaks nothing. Returns whether all were gone, and the leftovers.
async fn reap(pids: &[u32], d: Option<&Path>) -> (bool, Vec<u32>) {
    let gone = eventually(10, || {
        pids.iter().all(|&p| !alive(p)) && d.is_none_or(|d| procs_of(d).is_empty())
    })
    .await;
    let mut left = alive_of(pids);
    left.extend(d.map(procs_of).unwrap_or_default());
    kill_all(&left);
    (gone, left)
}

/// Waits up to `secs` for the pool to have `size` workers, none of them in
/// `ended`.
async fn refilled(pool: &Pool, size: usize, ended: &[u32], secs: u64) -> bool {
    eventually(secs, || {
        let p = pool.worker_pids();
        p.len() == size && p.iter().all(|x| !ended.contains(x))
    })
    .await
}

/// The [`snakepit_core::StartError`] inside `err`, which must be `StartFailed`.
fn start_failed(err: &snakepit_core::Error) -> &snakepit_core::StartError {
    let snakepit_core::Error::StartFailed(start) = err else {
        panic!("expected StartFailed, got {err:?}");
    };
    start
}

/// Every live process whose environment has `OTF_DIR=d`: the template, its
/// forks and whatever they started, whoever their parent now is.
fn procs_of(d: &Path) -> Vec<u32> {
    let needle = format!("OTF_DIR={}", d.display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|v| v == needle.as_bytes()) && alive(pid) {
            found.push(pid);
        }
    }
    found
}

fn hook_pids(d: &Path) -> Vec<u32> {
    std::fs::read_to_string(d.join("hooks"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// A preloaded pool of `size` over the fault worker writing into `d`, and
/// the causes of its failed worker starts.
async fn pool(d: &Path, size: usize) -> (Pool, Arc<Mutex<Vec<String>>>) {
    pool_with(d, size, false).await
}

/// A fresh [`dir`] named `name` and a [`pool`] of `size` writing into it.
async fn fresh(name: &str, size: usize) -> (PathBuf, Pool, Arc<Mutex<Vec<String>>>) {
    let d = dir(name);
    let (pool, failures) = pool(&d, size).await;
    (d, pool, failures)
}

/// [`pool`], and with `spawn` the script's module-level code starts a
/// helper child (`OTF_SPAWN`).
async fn pool_with(d: &Path, size: usize, spawn: bool) -> (Pool, Arc<Mutex<Vec<String>>>) {
    let bridge = py_bridge(d)
        .env("OTF_SPAWN", if spawn { "1" } else { "" })
        .preload();
    pool_of(bridge, size).await
}

/// The fault worker (Python, not yet preloaded) writing into `d`.
fn py_bridge(d: &Path) -> Bridge {
    Bridge::python(script())
        .interpreter(python())
        .env("OTF_DIR", d.to_str().unwrap())
}

/// The Ruby twin of `workers/outside_template_faults_worker.py`, written
/// into the test's directory.
const RUBY_WORKER: &str = r#"
require "snakepit_bridge"
DIR = ENV.fetch("OTF_DIR")
if ENV["OTF_SPAWN"] == "1"
  helper = Process.spawn("sleep", "300")
  File.open(File.join(DIR, "spawned"), "a") { |f| f.puts(helper) }
end
worker = SnakepitBridge::Worker.new
worker.after_fork do
  File.open(File.join(DIR, "hooks"), "a") { |f| f.puts(Process.pid) }
  mode = File.exist?(File.join(DIR, "mode")) ? File.read(File.join(DIR, "mode")).strip : ""
  sleep 1 while mode == "hang"
  exit!(7) if mode == "exit"
  raise "otf hook refuses" if mode == "raise"
end
worker.command("whoami") { |_args, _ctx| { "pid" => Process.pid, "ppid" => Process.ppid } }
worker.run
"#;

/// A preloaded Ruby pool of `size` over [`RUBY_WORKER`] writing into `d`.
async fn ruby_pool(d: &Path, size: usize, spawn: bool) -> (Pool, Arc<Mutex<Vec<String>>>) {
    let bridge = rb_bridge(d)
        .env("OTF_SPAWN", if spawn { "1" } else { "" })
        .preload();
    pool_of(bridge, size).await
}

/// [`RUBY_WORKER`], written into `d`, writing into `d` (not yet preloaded).
fn rb_bridge(d: &Path) -> Bridge {
    let path = d.join("worker.rb");
    std::fs::write(&path, RUBY_WORKER).unwrap();
    Bridge::ruby(path).env("OTF_DIR", d.to_str().unwrap())
}

async fn pool_of(bridge: Bridge, size: usize) -> (Pool, Arc<Mutex<Vec<String>>>) {
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = failures.clone();
    let pool = Pool::builder(bridge)
        .size(size)
        .on_event(move |e| {
            if let EventKind::WorkerStartFailed { cause, .. } = &e.kind {
                seen.lock().unwrap().push((*cause).to_owned());
            }
        })
        .configure(|c| {
            c.health_check_interval = Duration::ZERO;
            c.worker_init_timeout = Duration::from_secs(3);
        })
        .start()
        .await
        .unwrap();
    (pool, failures)
}

async fn whoami(pool: &Pool) -> Value {
    try_whoami(pool).await.unwrap()
}

async fn try_whoami(pool: &Pool) -> snakepit_core::Result<Value> {
    pool.execute_with(
        "whoami",
        json!({}),
        CallOptions::new().timeout(Duration::from_secs(20)),
    )
    .await
}

/// Sets the hook's `mode` in `d`, then SIGKILLs the pool's first worker.
/// Returns the pool's workers before, the killed one first.
/// The pool has noticed the end of its worker `pid`: a call made now is
/// not routed to it (it would fail with `WorkerCrashed`).
async fn noticed_dead(pool: &Pool, pid: u32) {
    let noticed = eventually(30, || !pool.worker_pids().contains(&pid)).await;
    assert!(noticed, "the pool still lists its killed worker {pid}");
}

async fn kill_first_in_mode(d: &Path, pool: &Pool, mode: &str) -> Vec<u32> {
    std::fs::write(d.join("mode"), mode).unwrap();
    let pids = pool.worker_pids();
    kill(pids[0], libc::SIGKILL);
    noticed_dead(pool, pids[0]).await;
    pids
}

/// Stops (SIGSTOP) the pool's template, then SIGKILLs its first worker, so
/// that a fork is pending on a template that does not answer. Returns the
/// template and the workers before, the killed one first.
async fn stop_template_kill_first(pool: &Pool) -> (u32, Vec<u32>) {
    let template = pool.template_pid().unwrap();
    let pids = pool.worker_pids();
    kill(template, libc::SIGSTOP);
    kill(pids[0], libc::SIGKILL);
    noticed_dead(pool, pids[0]).await;
    (template, pids)
}

fn num(v: &Value, k: &str) -> u32 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}")) as u32
}

/// Shuts `pool` down and asserts that none of `pids` (nor the template)
/// is alive afterwards; kills leftovers so a failure leaks nothing.
async fn shutdown_leaves_nothing(d: &Path, pool: Pool, mut pids: Vec<u32>) {
    pids.extend(pool.template_pid());
    pids.extend(pool.worker_pids());
    shutdown_reaps(
        pool,
        &pids,
        Some(d),
        "shutdown returned",
        "alive after shutdown",
    )
    .await;
}

/// Shuts `pool` down (within 30 s, else `late`) and asserts that none of
/// `pids` (and, with `d`, no process of the test's `OTF_DIR`) is alive
/// afterwards (else `what` and the leftovers); kills leftovers.
async fn shutdown_reaps(pool: Pool, pids: &[u32], d: Option<&Path>, late: &str, what: &str) {
    let shut = tokio::time::timeout(Duration::from_secs(30), pool.shutdown()).await;
    let (gone, left) = reap(pids, d).await;
    assert!(shut.is_ok(), "{late}");
    assert!(gone, "{what}: {left:?}");
}

/// preload.md: "What must happen in each worker process goes in an
/// after-fork hook, which runs in every worker before it serves its first
/// call" and "The template's load counts against `worker_init_timeout`";
/// preload.md: "If the template dies, running workers keep serving".
/// A replacement forked while the hook hangs (a database that does not
/// answer) never says hello: the start fails (a `WorkerStartFailed` event
/// naming the cause) within the start-up bound, the hung fork is killed
/// while the pool runs (not kept alive until shutdown), the survivor keeps
/// serving, and once the hook works again the slot is refilled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_whose_hook_hangs_is_killed_and_reported() {
    let (d, pool, failures) = fresh("hang", 2).await;
    replacement_whose_hook_hangs_is_killed_and_reported(&d, pool, failures).await;
}

/// The body of [`a_replacement_whose_hook_hangs_is_killed_and_reported`]
/// and its Ruby twin, over a pool of 2 writing into `d`.
async fn replacement_whose_hook_hangs_is_killed_and_reported(
    d: &Path,
    pool: Pool,
    failures: Arc<Mutex<Vec<String>>>,
) {
    let first = hook_pids(d);
    assert_eq!(first.len(), 2, "{first:?}");
    let pids = kill_first_in_mode(d, &pool, "hang").await;
    let (killed, survivor) = (pids[0], pids[1]);
    assert_eq!(num(&whoami(&pool).await, "pid"), survivor);
    let failed = eventually(30, || !failures.lock().unwrap().is_empty()).await;
    assert!(failed, "a start failure is reported");
    let hung: Vec<u32> = hook_pids(d)
        .into_iter()
        .filter(|p| !first.contains(p))
        .collect();
    assert!(
        !hung.is_empty(),
        "a replacement was forked and ran the hook"
    );
    let reaped = eventually(15, || hung.iter().all(|&p| !alive(p))).await;
    let left = alive_of(&hung);
    let cause = failures.lock().unwrap()[0].clone();
    eprintln!("hang causes: {:?}", failures.lock().unwrap());
    assert!(!cause.trim().is_empty(), "the failure names its cause");
    std::fs::remove_file(d.join("mode")).unwrap();
    assert_eq!(num(&whoami(&pool).await, "pid"), survivor);
    let refilled = refilled(&pool, 2, &[killed], 60).await;
    let mut all = first.clone();
    all.extend(hook_pids(d));
    shutdown_leaves_nothing(d, pool, all).await;
    assert!(
        reaped,
        "a fork whose hook hangs past worker_init_timeout is killed: {left:?} alive; cause {cause}"
    );
    assert!(refilled, "the slot is refilled once the hook works");
}

/// preload.md (template protocol): "run the after-fork hooks in
/// registration order (a hook that raises is logged to stderr and the
/// child exits with status 1)". A hook that ends the process itself
/// (`os._exit(7)`) fails the replacement's start with a cause naming the
/// exit status 7, the survivor keeps serving, and the slot is refilled once
/// the hook works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_whose_hook_exits_is_a_start_failure_naming_the_status() {
    let (d, pool, failures) = fresh("exit", 2).await;
    let pids = kill_first_in_mode(&d, &pool, "exit").await;
    let (killed, survivor) = (pids[0], pids[1]);
    let failed = eventually(30, || !failures.lock().unwrap().is_empty()).await;
    assert_eq!(num(&whoami(&pool).await, "pid"), survivor);
    let causes = failures.lock().unwrap().clone();
    eprintln!("exit causes: {causes:?}");
    std::fs::remove_file(d.join("mode")).unwrap();
    let refilled = refilled(&pool, 2, &[killed], 60).await;
    let all = hook_pids(&d);
    shutdown_leaves_nothing(&d, pool, all).await;
    assert!(failed, "a start failure is reported");
    assert!(
        causes[0].contains('7'),
        "the cause names the exit status 7: {causes:?}"
    );
    assert!(refilled, "the slot is refilled once the hook works");
}

/// preload.md: "Restarts and recycling fork again from the template": every
/// worker killed at once (an OOM killer sweep) is replaced, each replacement
/// a child of the same template, and the counters are exact: 4 restarts,
/// no start failure, no crashed call (none was in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_killed_at_once_is_refilled_from_the_template_with_exact_counters() {
    let (d, pool, failures) = fresh("all", 4).await;
    let template = pool.template_pid().unwrap();
    let old = pool.worker_pids();
    assert_eq!(old.len(), 4);
    let mut family = procs_of(&d);
    family.sort();
    let mut expected = old.clone();
    expected.push(template);
    expected.sort();
    assert_eq!(family, expected, "the processes of the pool, found by env");
    kill_all(&old);
    let refilled = refilled(&pool, 4, &old, 30).await;
    assert!(refilled, "refilled: {:?}", pool.worker_pids());
    for _ in 0..8 {
        let v = whoami(&pool).await;
        assert_eq!(num(&v, "ppid"), template, "a fork of the template: {v}");
    }
    let stats = pool.stats();
    assert_eq!(stats.restarts, 4, "{stats:?}");
    assert_eq!(
        stats.start_failures,
        0,
        "{stats:?} {:?}",
        failures.lock().unwrap()
    );
    assert_eq!(stats.crashes, 0, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert_eq!(pool.template_pid(), Some(template));
    shutdown_leaves_nothing(&d, pool, old).await;
}

/// preload.md: "If the template dies, running workers keep serving; the
/// next worker the pool needs starts a new template first". The template
/// and every worker killed at the same moment: the four replacements all
/// come from ONE new template (not one template per replacement, not the
/// dead one), the restarts are counted exactly, and shutdown leaves no
/// process, old or new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_template_and_every_worker_killed_at_once_are_replaced_by_one_new_template() {
    let (d, pool, failures) = fresh("tmpl-all", 4).await;
    template_and_every_worker_killed_at_once(&d, pool, failures).await;
}

/// The body of
/// [`the_template_and_every_worker_killed_at_once_are_replaced_by_one_new_template`]
/// and its Ruby twin, over a pool of 4 writing into `d`.
async fn template_and_every_worker_killed_at_once(
    d: &Path,
    pool: Pool,
    failures: Arc<Mutex<Vec<String>>>,
) {
    let template = pool.template_pid().unwrap();
    let old = pool.worker_pids();
    kill(template, libc::SIGKILL);
    kill_all(&old);
    let refilled = refilled(&pool, 4, &old, 40).await;
    assert!(
        refilled,
        "refilled: {:?}; failures {:?}",
        pool.worker_pids(),
        failures.lock().unwrap()
    );
    let second = pool.template_pid().unwrap();
    assert_ne!(second, template);
    assert!(!alive(template));
    let mut parents = std::collections::HashSet::new();
    for _ in 0..8 {
        parents.insert(num(&whoami(&pool).await, "ppid"));
    }
    assert_eq!(
        parents.into_iter().collect::<Vec<_>>(),
        vec![second],
        "every replacement is a fork of the one new template"
    );
    let stats = pool.stats();
    assert_eq!(stats.restarts, 4, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
    let mut all = old.clone();
    all.push(template);
    shutdown_leaves_nothing(d, pool, all).await;
}

/// preload.md: "A template that does not fork a worker within 10 s
/// (stopped, or blocked in its script) is killed" and "A template still
/// loading when the pool shuts down is killed with the rest". The template
/// stopped (SIGSTOP) and every worker killed, so that four forks are
/// pending on a template that will not answer, then `shutdown()` at once:
/// it returns, and no process is left, the stopped template included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_forks_are_pending_on_a_stopped_template_leaves_nothing() {
    let (d, pool, _failures) = fresh("pending", 4).await;
    let template = pool.template_pid().unwrap();
    let old = pool.worker_pids();
    kill(template, libc::SIGSTOP);
    kill_all(&old);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut all = old.clone();
    all.push(template);
    shutdown_leaves_nothing(&d, pool, all).await;
    let forked: Vec<u32> = hook_pids(&d);
    assert!(forked.iter().all(|&p| !alive(p)), "{forked:?}");
}

/// preload.md: "If the template dies, running workers keep serving". The
/// template killed while 16 calls run on 2 workers: every call succeeds and
/// the counters are exact (16 requests, 16 completed, no error, no crash,
/// no restart: no worker ended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_template_killed_under_load_costs_no_call() {
    let (d, pool, _failures) = fresh("load", 2).await;
    let template = pool.template_pid().unwrap();
    let workers = pool.worker_pids();
    let calls: Vec<_> = (0..16)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { whoami(&pool).await })
        })
        .collect();
    kill(template, libc::SIGKILL);
    for c in calls {
        let v = c.await.unwrap();
        assert!(workers.contains(&num(&v, "pid")), "{v}");
    }
    assert!(eventually(5, || !alive(template)).await);
    let stats = pool.stats();
    assert_eq!((stats.requests, stats.completed), (16, 16), "{stats:?}");
    assert_eq!(
        (stats.errors, stats.crashes, stats.restarts),
        (0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(pool.worker_pids().len(), 2);
    shutdown_leaves_nothing(&d, pool, workers).await;
}

/// preload.md: "If the template dies, running workers keep serving; the
/// next worker the pool needs starts a new template first". A template
/// killed while a fork request is pending on it (stopped first, so the
/// request waits, then SIGKILL): the pending start fails with a cause that
/// names the template, the survivor keeps serving, and the slot is refilled
/// from a new template whose fork the replacement is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_killed_with_a_fork_pending_is_replaced_and_the_slot_refilled() {
    let (d, pool, failures) = fresh("midfork", 2).await;
    let (template, pids) = stop_template_kill_first(&pool).await;
    let (killed, survivor) = (pids[0], pids[1]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    kill(template, libc::SIGKILL);
    assert_eq!(num(&whoami(&pool).await, "pid"), survivor);
    let refilled = refilled(&pool, 2, &[killed], 40).await;
    let causes = failures.lock().unwrap().clone();
    eprintln!("causes: {causes:?}");
    assert!(refilled, "refilled: {:?}; {causes:?}", pool.worker_pids());
    let second = pool.template_pid().unwrap();
    assert_ne!(second, template);
    let fresh = *pool.worker_pids().iter().find(|&&p| p != survivor).unwrap();
    let ppid = std::fs::read_to_string(format!("/proc/{fresh}/stat"))
        .unwrap()
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u32>()
        .unwrap();
    assert_eq!(
        ppid, second,
        "the replacement is a fork of the new template"
    );
    assert!(
        causes.iter().all(|c| c.contains("template")),
        "a failed start names the template: {causes:?}"
    );
    let mut all = pids.clone();
    all.push(template);
    shutdown_leaves_nothing(&d, pool, all).await;
}

fn spawned(d: &Path) -> Vec<u32> {
    std::fs::read_to_string(d.join("spawned"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// docs/preload.md: "a host that dies, even by `SIGKILL`, leaves nothing
/// alive (... the workers and their children are killed by the watchdog
/// ...)", "A template still loading when the pool shuts down is killed with
/// the rest", and, for the template, "When its socket reaches end of file
/// ... the template exits with status 0 without signalling its children".
/// A script whose module-level code starts a helper process (in the
/// template, when preloaded): after `shutdown()` the helper is not alive.
/// Preloading must not leave behind what the same script started directly
/// does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helper_the_templates_script_started_does_not_outlive_shutdown() {
    let d = dir("helper");
    let (pool, _failures) = pool_with(&d, 2, true).await;
    let helpers = spawned(&d);
    assert_eq!(helpers.len(), 1, "module-level code ran once: {helpers:?}");
    assert!(alive(helpers[0]));
    shutdown_reaps(
        pool,
        &helpers,
        None,
        "shutdown returned",
        "the template's helper outlived shutdown",
    )
    .await;
}

/// The same script started directly (no preload) for comparison: each
/// worker's helper dies with it at shutdown (its process group is killed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_preload_a_workers_helper_does_not_outlive_shutdown() {
    let d = dir("helper-direct");
    let pool = Pool::builder(py_bridge(&d).env("OTF_SPAWN", "1"))
        .size(2)
        .start()
        .await
        .unwrap();
    let helpers = spawned(&d);
    assert_eq!(helpers.len(), 2, "{helpers:?}");
    shutdown_reaps(
        pool,
        &helpers,
        None,
        "shutdown returned",
        &format!("a worker's helper outlived shutdown: {helpers:?}; alive"),
    )
    .await;
}

/// As [`a_helper_the_templates_script_started_does_not_outlive_shutdown`],
/// but the template was killed (SIGKILL) first, so its helper is an orphan
/// when the pool shuts down: docs/preload.md, "If the template dies, running
/// workers keep serving" and the invariant that no process the pool's
/// script started is left after `shutdown()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helper_of_a_killed_template_does_not_outlive_shutdown() {
    let d = dir("helper-killed");
    let (pool, _failures) = pool_with(&d, 2, true).await;
    let helpers = spawned(&d);
    let template = pool.template_pid().unwrap();
    kill(template, libc::SIGKILL);
    assert!(eventually(5, || !alive(template)).await);
    whoami(&pool).await;
    shutdown_reaps(
        pool,
        &helpers,
        None,
        "shutdown returned",
        &format!("the dead template's helper outlived shutdown: {helpers:?}; alive"),
    )
    .await;
}

/// Runs as the host of
/// [`a_host_killed_leaves_no_helper_of_the_template`] (only when that test
/// starts it): a preloaded pool whose template's script started a helper;
/// then a wait to be killed.
#[test]
fn template_helper_host_process() {
    let Ok(d) = std::env::var("OTF_HOST_DIR") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let d = PathBuf::from(d);
        let (pool, _failures) = pool_with(&d, 2, true).await;
        whoami(&pool).await;
        let line = json!({"template": pool.template_pid(), "workers": pool.worker_pids()});
        std::fs::write(d.join("host.tmp"), line.to_string()).unwrap();
        std::fs::rename(d.join("host.tmp"), d.join("host.json")).unwrap();
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
}

/// docs/preload.md: "a host that dies, even by `SIGKILL`, leaves nothing
/// alive (the template has the parent-death signal like every directly
/// started worker, the workers and their children are killed by the
/// watchdog ...)". The host of a preloaded pool whose template's script
/// started a helper process is killed: the template, the workers and the
/// helper are all gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_leaves_no_helper_of_the_template() {
    let d = dir("host");
    let mut host = snakepit_tests::this_test("template_helper_host_process")
        .env("OTF_HOST_DIR", &d)
        .spawn()
        .unwrap();
    let out = d.join("host.json");
    assert!(
        eventually(60, || out.exists() || host.try_wait().unwrap().is_some()).await,
        "the host wrote its pids"
    );
    let pids: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let mut all: Vec<u32> = pids["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect();
    all.push(num(&pids, "template"));
    let helpers = spawned(&d);
    assert_eq!(helpers.len(), 1, "{helpers:?}");
    all.extend(&helpers);
    assert!(all.iter().all(|&p| alive(p)), "{all:?}");
    kill(host.id(), libc::SIGKILL);
    host.wait().unwrap();
    let (gone, left) = reap(&all, None).await;
    assert!(
        gone,
        "alive after the host's SIGKILL: {left:?} (helpers {helpers:?})"
    );
}

/// docs/preload.md: the after-fork hook "runs in every worker before it
/// serves its first call", and "A template still loading when the pool
/// shuts down is killed with the rest"; errors are typed. A hook that hangs
/// in every fork at the pool's start: `start()` fails with `StartFailed`
/// (the handshake's timeout as cause), and neither the template nor any of
/// the hung forks is left alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_hangs_at_start_is_start_failed_and_leaves_no_fork() {
    let d = dir("hang-start");
    hook_that_hangs_at_start(&d, py_bridge(&d)).await;
}

/// The body of [`a_hook_that_hangs_at_start_is_start_failed_and_leaves_no_fork`]
/// and its Ruby twin: `bridge` (writing into `d`) preloaded for a pool of 3
/// whose every fork's hook hangs.
async fn hook_that_hangs_at_start(d: &Path, bridge: Bridge) {
    std::fs::write(d.join("mode"), "hang").unwrap();
    let started = Pool::builder(bridge.preload())
        .size(3)
        .configure(|c| c.worker_init_timeout = Duration::from_secs(2))
        .start();
    let err = tokio::time::timeout(Duration::from_secs(60), started)
        .await
        .expect("start() returned")
        .unwrap_err();
    let forks = hook_pids(d);
    let (gone, left) = reap(&forks, None).await;
    let start = start_failed(&err);
    let (none, stray) = reap(&[], Some(d)).await;
    assert!(!forks.is_empty(), "a fork ran the hook");
    assert!(
        start.cause.contains("2s"),
        "the cause names the bound: {err:?}"
    );
    assert!(none, "left after start() failed (template?): {stray:?}");
    assert!(gone, "hung forks alive after start() failed: {left:?}");
}

/// The same with a hook that raises in every fork at start:
/// "a hook that raises is logged to stderr and the child exits with status
/// 1" — `start()` is `StartFailed` naming exit status 1 and carrying the
/// hook's exception in its stderr tail, and no fork is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_that_raises_at_start_is_start_failed_with_status_1_and_the_exception() {
    let d = dir("raise-start");
    std::fs::write(d.join("mode"), "raise").unwrap();
    let err = Pool::builder(py_bridge(&d).preload())
        .size(3)
        .start()
        .await
        .unwrap_err();
    let forks = hook_pids(&d);
    let (gone, _) = reap(&forks, None).await;
    let start = start_failed(&err);
    assert!(start.cause.contains("status 1"), "{err:?}");
    assert!(
        start.stderr_tail.contains("otf hook refuses"),
        "{}",
        start.stderr_tail
    );
    let (none, stray) = reap(&[], Some(&d)).await;
    assert!(gone, "{forks:?}");
    assert!(none, "left after start() failed (template?): {stray:?}");
}

/// Ruby: docs/preload.md, "If the template dies, running workers keep
/// serving; the next worker the pool needs starts a new template first".
/// The template and every worker of a Ruby pool killed at once: the slots
/// are refilled from one new template, exactly 4 restarts are counted, and
/// shutdown leaves no process (the Ruby bridge's template side).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_the_template_and_every_worker_killed_at_once_are_replaced_by_one_new_template() {
    let d = dir("rb-tmpl-all");
    let (pool, failures) = ruby_pool(&d, 4, false).await;
    template_and_every_worker_killed_at_once(&d, pool, failures).await;
}

/// Ruby: a replacement whose after-fork hook hangs is reported as a failed
/// start and killed while the pool runs; the survivor serves; the slot is
/// refilled once the hook works (as the Python test above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_a_replacement_whose_hook_hangs_is_killed_and_reported() {
    let d = dir("rb-hang");
    let (pool, failures) = ruby_pool(&d, 2, false).await;
    replacement_whose_hook_hangs_is_killed_and_reported(&d, pool, failures).await;
}

/// Ruby: a helper process the template's script started, with the template
/// then killed, does not outlive `shutdown()`; nor does it with the
/// template alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_a_helper_the_templates_script_started_does_not_outlive_shutdown() {
    for kill_template in [false, true] {
        let d = dir(&format!("rb-helper-{kill_template}"));
        let (pool, _failures) = ruby_pool(&d, 2, true).await;
        let helpers = spawned(&d);
        assert_eq!(helpers.len(), 1, "{helpers:?}");
        if kill_template {
            kill(pool.template_pid().unwrap(), libc::SIGKILL);
            whoami(&pool).await;
        }
        shutdown_leaves_nothing(&d, pool, helpers).await;
    }
}

/// docs/preload.md: "A template that does not fork a worker within 10 s
/// (stopped, or blocked in its script) is killed, and the next start begins
/// a new one." The template stopped (SIGSTOP) and a worker killed: while
/// the pool runs (before any shutdown), the stopped template is killed, the
/// failed start names the template, and the slot is refilled from a new
/// template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_template_is_killed_while_the_pool_runs_and_the_failure_names_it() {
    let (d, pool, failures) = fresh("stopped", 2).await;
    let (template, pids) = stop_template_kill_first(&pool).await;
    let killed = eventually(40, || !alive(template)).await;
    let refilled = refilled(&pool, 2, &pids[..1], 40).await;
    let causes = failures.lock().unwrap().clone();
    let second = pool.template_pid();
    let mut all = pids.clone();
    all.push(template);
    shutdown_leaves_nothing(&d, pool, all).await;
    assert!(killed, "the stopped template was killed while the pool ran");
    assert!(refilled, "{causes:?}");
    assert_ne!(second, Some(template));
    assert!(
        !causes.is_empty() && causes.iter().all(|c| c.contains("template")),
        "the failed start names the template: {causes:?}"
    );
}

/// docs/preload.md: "A template still loading when the pool shuts down is
/// killed with the rest", and for a fork: the pool "may signal the group as
/// soon as it knows the pid". A replacement fork stuck in its after-fork
/// hook (worker_init_timeout 120 s, far away) when `shutdown()` is called:
/// shutdown does not wait for the handshake's timeout (it returns well
/// within 30 s) and the stuck fork is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_fork_stuck_in_its_hook_kills_it_without_waiting_for_the_timeout() {
    let d = dir("stuck-shutdown");
    let pool = Pool::builder(py_bridge(&d).preload())
        .size(2)
        .configure(|c| {
            c.health_check_interval = Duration::ZERO;
            c.worker_init_timeout = Duration::from_secs(120);
        })
        .start()
        .await
        .unwrap();
    let first = hook_pids(&d);
    let pids = kill_first_in_mode(&d, &pool, "hang").await;
    assert!(
        eventually(20, || hook_pids(&d).len() > first.len()).await,
        "a replacement was forked into the hook"
    );
    let mut all = pids.clone();
    all.extend(hook_pids(&d));
    all.extend(pool.template_pid());
    shutdown_reaps(
        pool,
        &all,
        Some(&d),
        "shutdown returned before the 120 s handshake timeout",
        "alive after shutdown",
    )
    .await;
}

/// docs/preload.md: "Restarts and recycling fork again from the template",
/// with the pool's counters exact (crates/core/src/pool/stats.rs: `crashes`
/// "Calls failed because their worker died", `restarts` "Workers started
/// to replace one that ended"). Every forked worker killed at once while
/// each runs a call: every call ends as `WorkerCrashed`, and the stats say
/// exactly 4 requests, 0 completed, 4 errors, 4 crashes, 4 restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_busy_worker_killed_at_once_gives_exact_crash_and_restart_counts() {
    let (d, pool, _failures) = fresh("busy", 4).await;
    let old = pool.worker_pids();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                pool.execute_with(
                    "nap",
                    json!({"s": 30}),
                    CallOptions::new().timeout(Duration::from_secs(60)),
                )
                .await
            })
        })
        .collect();
    let napping = |d: &Path| {
        std::fs::read_to_string(d.join("napping"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert!(eventually(20, || napping(&d) == 4).await, "four naps");
    kill_all(&old);
    for c in calls {
        let r = c.await.unwrap();
        assert!(
            matches!(r, Err(snakepit_core::Error::WorkerCrashed(_))),
            "{r:?}"
        );
    }
    let refilled = refilled(&pool, 4, &old, 30).await;
    assert!(refilled);
    let s = pool.stats();
    assert_eq!(
        (s.requests, s.completed, s.errors, s.crashes, s.restarts),
        (4, 0, 4, 4, 4),
        "{s:?}"
    );
    shutdown_leaves_nothing(&d, pool, old).await;
}

/// docs/preload.md: a replacement "starts a new template first, with the
/// usual start-up backoff and breaker"; docs/reliability.md: "after
/// `breaker_threshold` failures in a row the slot's breaker opens ... when
/// no worker is left, callers fail fast with `Error::StartFailed` and the
/// worker's stderr", and "`Pool::retry_starts()` tries that start at once".
/// Every fork's hook exits with status 7 after every worker was killed:
/// the breakers open (no fork storm), a call is `StartFailed` naming status
/// 7, and once the hook works `retry_starts()` refills both slots from the
/// template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_that_keep_failing_open_the_breaker_and_retry_starts_refills_from_the_template() {
    let d = dir("breaker");
    let opened = Arc::new(Mutex::new(0u32));
    let seen = opened.clone();
    let pool = Pool::builder(py_bridge(&d).preload())
        .size(2)
        .on_event(move |e| {
            if let EventKind::BreakerOpened { .. } = &e.kind {
                *seen.lock().unwrap() += 1;
            }
        })
        .configure(|c| {
            c.health_check_interval = Duration::ZERO;
            c.breaker_threshold = 2;
            c.breaker_cooldown = Duration::from_secs(600);
        })
        .start()
        .await
        .unwrap();
    let template = pool.template_pid().unwrap();
    let old = pool.worker_pids();
    std::fs::write(d.join("mode"), "exit").unwrap();
    kill_all(&old);
    assert!(
        eventually(30, || *opened.lock().unwrap() == 2).await,
        "both breakers opened: {}",
        opened.lock().unwrap()
    );
    let forks = hook_pids(&d).len();
    let err = try_whoami(&pool).await.unwrap_err();
    let start = start_failed(&err);
    assert!(start.cause.contains('7'), "{err:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        hook_pids(&d).len(),
        forks,
        "no fork while the breakers are open"
    );
    std::fs::remove_file(d.join("mode")).unwrap();
    pool.retry_starts();
    let refilled = eventually(30, || pool.worker_pids().len() == 2).await;
    assert!(refilled, "{:?}", pool.worker_pids());
    for _ in 0..4 {
        assert_eq!(num(&whoami(&pool).await, "ppid"), template);
    }
    shutdown_leaves_nothing(&d, pool, old).await;
}

/// Ruby: a hook that hangs in every fork at the pool's start (the mode set
/// before start): `start()` is `StartFailed` naming the handshake's bound,
/// and nothing of the pool (template, forks) is left alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_a_hook_that_hangs_at_start_is_start_failed_and_leaves_nothing() {
    let d = dir("rb-hang-start");
    hook_that_hangs_at_start(&d, rb_bridge(&d)).await;
}
