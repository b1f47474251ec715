//! The host under resource exhaustion, tested from outside: a host process
//! out of file descriptors (its `RLIMIT_NOFILE` reached) when a pool starts
//! or when a worker must be replaced, and workers that flood the host.
//!
//! The descriptor scenarios change a process-wide limit, so each runs in a
//! process of its own: this test binary run again (`exhaustion_child`, with
//! `OUTSIDE_EXHAUSTION_MODE` naming the scenario), which makes its own
//! assertions, exits non-zero if one fails, and writes a JSON report that
//! the test reads to check, from outside, that nothing was left behind.
//!
//! Descriptors are exhausted deterministically: the soft `RLIMIT_NOFILE` is
//! lowered to `L` and every descriptor below `L` is taken (`/dev/null`), so
//! every `open`, `pipe` or `pidfd_open` fails with `EMFILE` until the
//! limit is raised or a filler closed. Descriptors the pool opened above
//! `L` beforehand keep working, and one closed above `L` does not help.

mod common;

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{alive, builder, eventually, kill_9, pid_list, temp_dir, TestWorker};
use serde_json::{json, Value};
use snakepit_core::events::EventKind;
use snakepit_core::{Adapter, Error, Launch, Pool, PoolBuilder};

const MODE: &str = "OUTSIDE_EXHAUSTION_MODE";
const REPORT: &str = "OUTSIDE_EXHAUSTION_REPORT";
const TAG: &str = "OUTSIDE_EXHAUSTION_TAG";

// ---------------------------------------------------------------------
// Descriptors of this process.
// ---------------------------------------------------------------------

/// The soft and hard limits of `resource` for this process.
#[allow(unsafe_code)]
fn limit(resource: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    assert_eq!(unsafe { libc::getrlimit(resource, &mut r) }, 0);
    (r.rlim_cur, r.rlim_max)
}

/// Sets the limits of `resource` for this process.
#[allow(unsafe_code)]
fn set_limit(resource: libc::__rlimit_resource_t, soft: u64, hard: u64) {
    let r = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct it is given.
    assert_eq!(unsafe { libc::setrlimit(resource, &r) }, 0);
}

/// The soft and hard `RLIMIT_NOFILE` of this process.
fn nofile() -> (u64, u64) {
    limit(libc::RLIMIT_NOFILE)
}

/// Sets the soft `RLIMIT_NOFILE` (the hard one is kept).
fn set_soft_nofile(soft: u64) {
    let (_, hard) = nofile();
    set_limit(libc::RLIMIT_NOFILE, soft, hard);
}

/// The descriptors this process has open (not counting the one used to
/// list them).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count() - 1
}

/// This process's resident memory, in KiB.
fn rss_kib() -> u64 {
    common::host_rss_kib()
}

/// Every descriptor below `limit` taken (the soft limit lowered to it):
/// the fillers, to be dropped (or some of them) to give descriptors back.
fn take_every_descriptor_below(limit: u64) -> Vec<File> {
    set_soft_nofile(limit);
    let mut held = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                break;
            }
        }
    }
    assert!(
        File::open("/dev/null").is_err(),
        "no descriptor is left below the limit"
    );
    held
}

/// The live processes whose environment carries `TAG=tag` (a pool's
/// workers, given it with `worker_env`), wherever they were reparented.
fn tagged(tag: &str) -> Vec<u32> {
    let needle = format!("{TAG}={tag}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()))
                && alive(pid)
        })
        .collect()
}

/// Threads of this process whose name starts with `prefix` (names are cut
/// at 15 bytes).
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

/// Live children of this process.
fn children() -> Vec<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat[stat.rfind(')').unwrap_or(0)..].split(' ').nth(2) == Some(me.as_str())
            }) && alive(pid)
        })
        .collect()
}

/// A variable of process `pid`'s environment.
fn env_of(pid: u32, key: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{key}=");
    env.split(|&b| b == 0).find_map(|kv| {
        kv.strip_prefix(prefix.as_bytes())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

/// Field 22 of `/proc/<pid>/stat`: the start time, in clock ticks.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split(' ').nth(19).unwrap().parse().unwrap()
}

/// SIGKILL to `pid` by a system call: starting `kill` needs descriptors,
/// which the scenarios do not have.
#[allow(unsafe_code)]
fn sigkill(pid: u32) {
    // SAFETY: kill(2) with a pid and a signal number touches no memory.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
}

/// The events a scenario looks at, as the pool's listener saw them.
#[derive(Default)]
struct Seen {
    ready: Vec<u32>,
    start_failed: Vec<(usize, String)>,
    breaker_opened: Vec<usize>,
    breaker_closed: Vec<usize>,
}

fn listen(seen: &Arc<Mutex<Seen>>) -> impl Fn(&snakepit_core::events::Event<'_>) + Send + Sync {
    let seen = seen.clone();
    move |e| {
        let mut s = seen.lock().unwrap();
        match &e.kind {
            EventKind::WorkerReady { pid, .. } => s.ready.push(*pid),
            EventKind::WorkerStartFailed { worker, cause } => {
                s.start_failed.push((*worker, (*cause).to_owned()))
            }
            EventKind::BreakerOpened { worker, .. } => s.breaker_opened.push(*worker),
            EventKind::BreakerClosed { worker } => s.breaker_closed.push(*worker),
            _ => {}
        }
    }
}

fn says_too_many_open_files(cause: &str) -> bool {
    cause.contains("Too many open files") || cause.contains("os error 24")
}

/// Within seconds, no worker tagged `tag` lives (`when`: after what).
async fn no_worker_left(tag: &str, when: &str) {
    assert!(
        eventually(10, || tagged(tag).is_empty()).await,
        "workers left {when}: {:?}",
        tagged(tag)
    );
}

/// Within seconds, this process has no more descriptors open than
/// `before` (`when`: after what).
async fn no_descriptor_left(before: usize, when: &str) {
    assert!(
        eventually(10, || open_fds() <= before).await,
        "descriptors left {when}: {} before, {} after",
        before,
        open_fds()
    );
}

/// The names of the files in `dir`.
fn file_names(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.file_name().to_str()?.to_owned()))
        .collect()
}

/// Room for 24 descriptors: every one below 256 taken but 24 (the
/// fillers, to drop with the soft limit raised again).
fn room_for_24_descriptors() -> Vec<File> {
    let mut fillers = take_every_descriptor_below(256);
    fillers.truncate(fillers.len() - 24);
    fillers
}

/// A pool of 16 workers tagged `tag`, more than 24 descriptors hold.
fn sixteen_workers(tag: &str, state: &std::path::Path) -> PoolBuilder {
    builder(TestWorker::new())
        .size(16)
        .name("exh-too-big")
        .worker_env(TAG, tag)
        .configure(|c| {
            c.state_dir = Some(state.to_owned());
            c.startup_timeout = Duration::from_secs(60);
        })
}

/// Where a scenario of worker replacement starts: every descriptor below
/// 256 taken first (`fillers`), so that the pool's own (opened with the
/// soft limit raised again to `soft`) are all above it: once the limit is
/// back at 256, a worker's pipes closed at its death give nothing back to
/// its replacement.
struct Exhaustible {
    soft: u64,
    state: std::path::PathBuf,
    tag: String,
    before: usize,
    fillers: Vec<File>,
    seen: Arc<Mutex<Seen>>,
}

impl Exhaustible {
    fn new(tag: &str) -> Self {
        let (soft, _) = nofile();
        let state = temp_dir("exh-state");
        let tag = format!("{tag}-{}", std::process::id());
        let before = open_fds();
        let fillers = take_every_descriptor_below(256);
        set_soft_nofile(soft);
        Exhaustible {
            soft,
            state,
            tag,
            before,
            fillers,
            seen: Arc::new(Mutex::new(Seen::default())),
        }
    }

    /// A pool of `size` workers tagged and listened to, its breakers
    /// cooling down for 10 minutes, no health checks.
    fn builder(&self, adapter: impl Adapter, size: usize, name: &str) -> PoolBuilder {
        let state = self.state.clone();
        builder(adapter)
            .size(size)
            .name(name)
            .worker_env(TAG, &self.tag)
            .on_event(listen(&self.seen))
            .configure(|c| {
                c.state_dir = Some(state);
                c.breaker_cooldown = Duration::from_secs(600);
                c.restart_backoff = Duration::from_millis(20);
                c.health_check_interval = Duration::ZERO;
            })
    }

    /// Slot 0's worker killed with no descriptor left: its breaker opens.
    /// Returns the killed worker's pid.
    async fn kill_slot_0_until_its_breaker_opens(&self, pool: &Pool) -> u32 {
        let victim = pool.workers().into_iter().find(|w| w.slot == 0).unwrap();
        sigkill(victim.pid);
        assert!(
            eventually(20, || self.seen.lock().unwrap().breaker_opened.contains(&0)).await,
            "slot 0's breaker never opened; start failures: {:?}",
            self.seen.lock().unwrap().start_failed
        );
        victim.pid
    }

    /// Descriptors come back: `retry_starts` refills every slot of `pool`
    /// (`size` workers) at once.
    async fn descriptors_back_and_slots_refilled(&mut self, pool: &Pool, size: usize) {
        set_soft_nofile(self.soft);
        drop(std::mem::take(&mut self.fillers));
        pool.retry_starts();
        assert!(
            eventually(30, || pool.stats().workers == size).await,
            "slots not refilled once descriptors came back: {:?}",
            pool.stats()
        );
    }
}

// ---------------------------------------------------------------------
// Running a scenario in a process of its own.
// ---------------------------------------------------------------------

/// Not a test of its own: the process a descriptor scenario runs in. The
/// tests run this binary again with `OUTSIDE_EXHAUSTION_MODE` set; it runs
/// that scenario on a runtime of two threads (its assertions fail this
/// process) and writes the scenario's report where `OUTSIDE_EXHAUSTION_REPORT`
/// says. Without the variable it does nothing.
#[test]
fn exhaustion_child() {
    let Ok(mode) = std::env::var(MODE) else {
        return;
    };
    let report_path = std::path::PathBuf::from(std::env::var(REPORT).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let path = report_path.clone();
    let report = rt.block_on(async move {
        match mode.as_str() {
            "too_big" => scenario_too_big().await,
            "replace" => scenario_replace().await,
            "host_token" => scenario_host_token().await,
            "watchdog" => scenario_watchdog(&path).await,
            "record" => scenario_record().await,
            "replace_preloaded" => scenario_replace_preloaded().await,
            "no_thread" => scenario_no_thread().await,
            "escaped_at_end" => scenario_escaped(true).await,
            "escaped_at_crash" => scenario_escaped(false).await,
            other => panic!("no scenario {other}"),
        }
    });
    std::fs::write(&report_path, report.to_string()).unwrap();
}

/// Runs scenario `mode` in a process of its own, to its end; its report.
fn run_scenario(mode: &str) -> Value {
    let report = temp_dir("exhaustion").join("report.json");
    let out = snakepit_tests::this_test("exhaustion_child")
        .env(MODE, mode)
        .env(REPORT, &report)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        out.status.success(),
        "scenario {mode} failed in its process ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    eprintln!("{}", text(&out.stdout));
    serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap()
}

/// Runs scenario `mode` as [`run_scenario`] does; then, from outside, none
/// of the pids its report lists under `keys` lives. Its report.
fn run_scenario_leaving_none_of(mode: &str, keys: &[&str]) -> Value {
    let report = run_scenario(mode);
    for key in keys {
        for pid in pid_list(&report, key) {
            assert!(
                !alive(pid),
                "{key} {pid} of scenario {mode} outlived its pool"
            );
        }
    }
    report
}

// ---------------------------------------------------------------------
// A pool bigger than the descriptors allow.
// ---------------------------------------------------------------------

/// The scenario of
/// [`a_pool_bigger_than_the_descriptors_allow_fails_to_start_naming_the_cause`].
async fn scenario_too_big() -> Value {
    let (soft, _) = nofile();
    let state = temp_dir("exh-state");
    let before = open_fds();
    let rss_before = rss_kib();
    let tag = format!("too-big-{}", std::process::id());

    // Room for 24 descriptors: a worker holds 3 pipes and a pidfd,
    // and its start needs a few more for a moment.
    let fillers = room_for_24_descriptors();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let started = sixteen_workers(&tag, &state)
        .on_event(listen(&seen))
        .start()
        .await;
    drop(fillers);
    set_soft_nofile(soft);

    let err = match started {
        Ok(_) => panic!("16 workers started with room for 24 descriptors"),
        Err(e) => e,
    };
    let Error::StartFailed(start) = &err else {
        panic!("not a start failure: {err:?}");
    };
    assert!(
        says_too_many_open_files(&start.cause),
        "the cause does not name the descriptor limit: {err}"
    );
    let ready = seen.lock().unwrap().ready.clone();
    println!(
        "start of 16 workers with room for 24 descriptors: {} ready, then: {err}",
        ready.len()
    );
    no_worker_left(
        &tag,
        &format!("after the failed start (ready ones: {ready:?})"),
    )
    .await;
    no_descriptor_left(before, "after the failed start").await;

    // Four more starts like it: each fails the same way, and none leaves
    // a thread, a process or a descriptor behind.
    let fillers = room_for_24_descriptors();
    for round in 0..4 {
        let again = sixteen_workers(&tag, &state).start().await;
        match again {
            Err(Error::StartFailed(e)) if says_too_many_open_files(&e.cause) => {}
            Err(e) => panic!("round {round}: {e:?}"),
            Ok(_) => panic!("round {round}: 16 workers started with room for 24 descriptors"),
        }
    }
    drop(fillers);
    set_soft_nofile(soft);
    assert!(
        eventually(10, || {
            tagged(&tag).is_empty()
                && children().is_empty()
                && threads_named("snakepit-") == 0
                && open_fds() <= before
        })
        .await,
        "after 5 failed starts: workers {:?}, children {:?}, {} snakepit threads, {} descriptors \
         ({before} before)",
        tagged(&tag),
        children(),
        threads_named("snakepit-"),
        open_fds()
    );

    // A pool that fits the same room starts and serves.
    let fillers = room_for_24_descriptors();
    let fits = builder(TestWorker::new())
        .size(2)
        .name("exh-fits")
        .worker_env(TAG, &tag)
        .configure(|c| c.state_dir = Some(state.clone()))
        .start()
        .await
        .expect("2 workers fit in 24 descriptors");
    for i in 0..20 {
        let r = fits.execute("echo", json!({"i": i})).await.unwrap();
        assert_eq!(r["echoed"]["i"], i);
    }
    let fitting_workers = fits.worker_pids();
    fits.shutdown().await.unwrap();
    drop(fits);
    drop(fillers);
    set_soft_nofile(soft);
    no_worker_left(&tag, "after shutdown").await;
    no_descriptor_left(before, "after shutdown").await;
    json!({
        "ready": ready,
        "fitting": fitting_workers,
        "fds": [before, open_fds()],
        "rss_kib": [rss_before, rss_kib()],
        "tag": tag,
    })
}

/// `PoolBuilder::start` (crates/core/src/pool.rs): "Starts every worker
/// concurrently and returns once all of them have passed their init
/// handshake, or with the first start-up error"; `StartError::cause`
/// (crates/core/src/error.rs): "The cause, in words"; lib.rs: a pool
/// "never leaves an orphan process".
///
/// A host with room for 24 more descriptors asked for 16 workers: `start()`
/// fails with `Error::StartFailed` whose cause names the descriptor limit
/// (not a panic, not a hang, not a start-up timeout), no worker of that
/// start is left running, the host's descriptors are back where they were.
/// Four more such starts fail the same way and leave no worker, no child
/// (the orphan watchdog's `sh`), no `snakepit-*` thread and no descriptor
/// behind. A pool of 2 under the same room starts and serves.
#[test]
fn a_pool_bigger_than_the_descriptors_allow_fails_to_start_naming_the_cause() {
    // From outside too, once the host is gone: none of its workers lives.
    run_scenario_leaving_none_of("too_big", &["ready", "fitting"]);
}

// ---------------------------------------------------------------------
// Descriptors run out while a crashed worker is replaced.
// ---------------------------------------------------------------------

/// The scenario of
/// [`descriptors_exhausted_while_replacing_crashed_workers_follow_the_breakers_rules`].
async fn scenario_replace() -> Value {
    let mut exh = Exhaustible::new("replace");
    let seen = exh.seen.clone();
    let pool = exh
        .builder(TestWorker::new(), 3, "exh-replace")
        .configure(|c| {
            c.breaker_threshold = 3;
            c.restart_backoff_max = Duration::from_millis(200);
            c.queue_timeout = Duration::from_secs(60);
        })
        .start()
        .await
        .unwrap();
    let first: Vec<u32> = pool.worker_pids();
    assert_eq!(first.len(), 3);
    set_soft_nofile(256);

    // Each worker lives over a second, so that its death is not itself a
    // failed start (reliability.md: "A worker that dies within a second of
    // its handshake ... counts as a failed start").
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // One worker dies: its replacement cannot start, the two others serve.
    let victim = exh.kill_slot_0_until_its_breaker_opens(&pool).await;
    for (slot, cause) in &seen.lock().unwrap().start_failed {
        assert_eq!(*slot, 0, "only slot 0 had to start a worker: {cause}");
        assert!(
            says_too_many_open_files(cause),
            "the start failure does not name the descriptor limit: {cause}"
        );
    }
    let calls: Vec<_> = (0..60)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute("echo", json!({"i": i})).await })
        })
        .collect();
    for (i, c) in calls.into_iter().enumerate() {
        let r = c
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("call {i} failed while two workers were up: {e:?}"));
        assert_ne!(r["pid"].as_u64().unwrap() as u32, victim);
    }
    let s = pool.stats();
    assert_eq!(s.workers, 2, "{s:?}");
    assert_eq!(
        s.start_failures, 3,
        "breaker_threshold failed starts, then none: {s:?}"
    );
    assert!(pool.start_failure().is_none(), "two workers are up");

    // The other two die too: with every breaker open and no worker left,
    // a call fails at once with the start-up error (not at the queue
    // timeout of 60 s).
    let others: Vec<u32> = pool.worker_pids();
    for &pid in &others {
        sigkill(pid);
    }
    assert!(
        eventually(30, || {
            let s = seen.lock().unwrap();
            s.breaker_opened.contains(&1) && s.breaker_opened.contains(&2)
        })
        .await,
        "not every breaker opened: {:?}",
        seen.lock().unwrap().breaker_opened
    );
    let call = tokio::time::timeout(
        Duration::from_secs(30),
        pool.execute("echo", json!({"i": "none left"})),
    )
    .await
    .expect("a call with every breaker open and no worker waited");
    match call {
        Err(Error::StartFailed(e)) => assert!(
            says_too_many_open_files(&e.cause),
            "the call's start-up error does not name the cause: {e}"
        ),
        other => panic!("with every breaker open and no worker: {other:?}"),
    }
    assert!(matches!(pool.start_failure(), Some(Error::StartFailed(_))));

    exh.descriptors_back_and_slots_refilled(&pool, 3).await;
    let closed = seen.lock().unwrap().breaker_closed.clone();
    for slot in 0..3 {
        assert!(
            closed.contains(&slot),
            "no BreakerClosed for {slot}: {closed:?}"
        );
    }
    for i in 0..20 {
        pool.execute("echo", json!({"i": i})).await.unwrap();
    }
    let last = pool.worker_pids();
    pool.shutdown().await.unwrap();
    drop(pool);
    no_worker_left(&exh.tag, "after shutdown").await;
    no_descriptor_left(exh.before, "after shutdown").await;
    json!({"workers": first.iter().chain(&last).collect::<Vec<_>>()})
}

/// docs/reliability.md, "Crashes stay contained": "The replacement starts at
/// once ... after `breaker_threshold` failures in a row the slot's breaker
/// opens: no start for `breaker_cooldown`, and when no worker is left,
/// callers fail fast with `Error::StartFailed` ... `Pool::retry_starts()`
/// tries that start at once, in every slot waiting out a back-off or a
/// cool-down, for when the cause is fixed"; "Listeners see `BreakerOpened`
/// and `BreakerClosed`".
///
/// A pool of 3 whose host has no descriptor left: a killed worker's
/// replacement fails to start with a cause naming the limit, the slot's
/// breaker opens, and the two others serve every call meanwhile. Once all
/// three are dead, a call fails with that `StartFailed` instead of waiting
/// the 60 s queue timeout. When descriptors are back, `retry_starts()`
/// refills every slot, each breaker closes, calls are served; after
/// shutdown no worker and no descriptor is left.
#[test]
fn descriptors_exhausted_while_replacing_crashed_workers_follow_the_breakers_rules() {
    run_scenario_leaving_none_of("replace", &["workers"]);
}

/// The test worker, preloaded: one template, every worker forked from it.
struct PreloadedTestWorker;

impl Adapter for PreloadedTestWorker {
    fn launch(&self) -> Launch {
        TestWorker::new().launch().preloaded()
    }
}

/// The scenario of
/// [`a_preloaded_pool_out_of_descriptors_keeps_its_template_and_forks_again_once_they_are_back`].
async fn scenario_replace_preloaded() -> Value {
    let mut exh = Exhaustible::new("preloaded");
    let seen = exh.seen.clone();
    let pool = exh
        .builder(PreloadedTestWorker, 2, "exh-preloaded")
        .configure(|c| {
            c.startup_timeout = Duration::from_secs(60);
            c.breaker_threshold = 2;
        })
        .start()
        .await
        .unwrap();
    let template = pool
        .template_pid()
        .expect("a preloaded pool has a template");
    let first = pool.worker_pids();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    set_soft_nofile(256);

    let victim = exh.kill_slot_0_until_its_breaker_opens(&pool).await;
    let failed = seen.lock().unwrap().start_failed.clone();
    assert_eq!(
        failed.len(),
        2,
        "breaker_threshold failed forks: {failed:?}"
    );
    println!("a fork without descriptors: {}", failed[0].1);
    for (_, cause) in &failed {
        assert!(
            says_too_many_open_files(cause),
            "the failed fork does not name the descriptor limit: {cause}"
        );
    }
    for i in 0..20 {
        let r = pool.execute("echo", json!({"i": i})).await.unwrap();
        assert_ne!(r["pid"].as_u64().unwrap() as u32, victim);
    }
    assert_eq!(
        pool.template_pid(),
        Some(template),
        "the template survived the failed forks"
    );

    exh.descriptors_back_and_slots_refilled(&pool, 2).await;
    let new = pool
        .workers()
        .into_iter()
        .find(|w| w.slot == 0)
        .unwrap()
        .pid;
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{new}/stat"))
            .map(|st| st[st.rfind(')').unwrap() + 2..]
                .split(' ')
                .nth(1)
                .map(str::to_owned))
            .unwrap(),
        Some(template.to_string()),
        "the replacement is a fork of the same template"
    );
    pool.execute("echo", json!({})).await.unwrap();
    let last = pool.worker_pids();
    pool.shutdown().await.unwrap();
    drop(pool);
    assert!(
        eventually(10, || tagged(&exh.tag).is_empty() && !alive(template)).await,
        "left after shutdown: workers {:?}, template alive: {}",
        tagged(&exh.tag),
        alive(template)
    );
    no_descriptor_left(exh.before, "after shutdown").await;
    json!({"workers": first.iter().chain(&last).chain([&template]).collect::<Vec<_>>()})
}

/// docs/reliability.md, "Preloaded workers": "each fork is a full worker
/// of the pool, and every promise above holds for it" (among them the
/// breaker's, and `retry_starts`); docs/preload.md / reliability.md: a
/// crashed worker's "replacement is a fork of the same template; no second
/// load".
///
/// A preloaded pool of 2 whose host has no descriptor left: a killed
/// worker's replacement cannot be forked (the host cannot make its pipes),
/// each failure names the limit, the slot's breaker opens, the other
/// worker serves, and the template is left alone. Once descriptors are
/// back, `retry_starts()` refills the slot with a fork of the same
/// template; after shutdown no worker, no template and no descriptor is
/// left.
#[test]
fn a_preloaded_pool_out_of_descriptors_keeps_its_template_and_forks_again_once_they_are_back() {
    run_scenario_leaving_none_of("replace_preloaded", &["workers"]);
}

// ---------------------------------------------------------------------
// What a start under exhaustion leaves for later pools of the process.
// ---------------------------------------------------------------------

/// The scenario of
/// [`workers_name_their_hosts_start_time_after_a_start_without_descriptors`].
async fn scenario_host_token() -> Value {
    let (soft, _) = nofile();
    let state = temp_dir("exh-state");
    // The first pool of this process starts while no descriptor is free.
    let fillers = take_every_descriptor_below(256);
    let failed = builder(TestWorker::new())
        .size(1)
        .name("exh-token-first")
        .configure(|c| c.state_dir = Some(state.clone()))
        .start()
        .await;
    drop(fillers);
    set_soft_nofile(soft);
    match failed {
        Err(Error::StartFailed(e)) => assert!(says_too_many_open_files(&e.cause), "{e}"),
        other => panic!("a start without descriptors: {:?}", other.map(|_| ())),
    }

    // Descriptors are back: the next pool's worker names its host.
    let pool = builder(TestWorker::new())
        .size(1)
        .name("exh-token-next")
        .configure(|c| c.state_dir = Some(state.clone()))
        .start()
        .await
        .unwrap();
    let worker = pool.worker_pids()[0];
    let host = env_of(worker, "SNAKEPIT_HOST").expect("SNAKEPIT_HOST in the worker's environment");
    pool.shutdown().await.unwrap();
    let me = std::process::id();
    let expected_start = start_time(me);
    let parts: Vec<&str> = host.split(':').collect();
    assert_eq!(parts.len(), 4, "SNAKEPIT_HOST={host}");
    assert_eq!(parts[0], me.to_string(), "SNAKEPIT_HOST={host}");
    assert_eq!(
        parts[1],
        expected_start.to_string(),
        "SNAKEPIT_HOST={host}: its start time is not the host's ({expected_start}); \
         the sweep cannot judge this host by it"
    );
    json!({"host": host, "workers": [worker]})
}

/// docs/reliability.md, "When a run counts as dead": "Each worker's
/// environment names its host (`SNAKEPIT_HOST`: pid, start time and PID
/// namespace) ... the host is alive if a process with that pid and start
/// time runs"; `Launch::for_worker` (crates/core/src/adapter.rs): workers
/// get "their host in its environment (`SNAKEPIT_HOST`: the host process,
/// for the sweep to tell whether it lives)".
///
/// The first pool of a host process is started while no descriptor is
/// free (it fails, naming the limit); descriptors come back and the next
/// pool starts. Its worker's `SNAKEPIT_HOST` must carry the host's real
/// start time, as every later worker's must.
#[test]
fn workers_name_their_hosts_start_time_after_a_start_without_descriptors() {
    run_scenario_leaving_none_of("host_token", &["workers"]);
}

// ---------------------------------------------------------------------
// The watchdog of a pool started while descriptors were short.
// ---------------------------------------------------------------------

/// The descriptors the watchdog scenario holds until the pool asks its
/// adapter for the launch (after the pool's own set-up, before its first
/// worker): they come back at that moment, as they would if another part
/// of the host closed connections just then.
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// Every descriptor below 256 taken, unless `OUTSIDE_EXHAUSTION_CONTROL`
/// is set (to check by hand that a scenario passes without exhaustion).
fn exhausted_unless_control() -> Vec<File> {
    if std::env::var_os("OUTSIDE_EXHAUSTION_CONTROL").is_some() {
        return Vec::new();
    }
    take_every_descriptor_below(256)
}

/// The test worker, whose `launch()` gives the held descriptors back.
struct GivesBack(TestWorker, u64);

impl Adapter for GivesBack {
    fn launch(&self) -> Launch {
        HELD.lock().unwrap().clear();
        set_soft_nofile(self.1);
        self.0.launch()
    }
}

/// A pool of one worker named `name`, its state in `state`, started while
/// no descriptor is free ([`HELD`]); they come back as it asks for its
/// worker's launch.
async fn started_while_short(name: &str, state: &std::path::Path) -> Pool {
    let (soft, _) = nofile();
    *HELD.lock().unwrap() = exhausted_unless_control();
    builder(GivesBack(TestWorker::new(), soft))
        .size(1)
        .name(name)
        .configure(|c| c.state_dir = Some(state.to_owned()))
        .start()
        .await
        .expect("the pool starts once descriptors are back")
}

/// The scenario of
/// [`a_pool_started_while_descriptors_were_short_still_has_its_watchdog`]:
/// starts the pool, has its worker start a child, reports the pids and
/// waits to be killed.
async fn scenario_watchdog(report_path: &std::path::Path) -> Value {
    let pool = started_while_short("exh-watchdog", &temp_dir("exh-state")).await;
    let child = pool.execute("spawn_child", json!({})).await.unwrap();
    let report = json!({
        "workers": pool.worker_pids(),
        "children": [child["child_pid"]],
    });
    std::fs::write(report_path, report.to_string()).unwrap();
    tokio::time::sleep(Duration::from_secs(120)).await;
    drop(pool);
    report
}

/// docs/reliability.md, "No orphan, on any path": the watchdog, "a small
/// `sh` process holding a pipe from the host and the list of live worker
/// groups", acts when "the host dies: the pipe closes and the watchdog
/// kills every group, including the workers' children"; spawn.rs: "When
/// the host dies, however it dies, the pipe closes and the watchdog kills
/// every group, so the workers' own children die too."
///
/// A pool started while the host had no descriptor free, which came back
/// a moment later (before its first worker started): it starts and serves.
/// Its host is then killed with SIGKILL while a worker's child (`sleep`,
/// in the worker's group, without a parent-death signal of its own) runs.
/// That child must be gone within 5 s, as it is for any other pool
/// (`reliability.rs`, `a_host_killed_with_sigkill_leaves_no_descendant`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_started_while_descriptors_were_short_still_has_its_watchdog() {
    let report_path = temp_dir("exh-watchdog").join("report.json");
    #[allow(clippy::disallowed_methods)] // this test binary, as a host
    let mut host = snakepit_tests::this_test("exhaustion_child")
        .env(MODE, "watchdog")
        .env(REPORT, &report_path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let written = eventually(60, || report_path.exists()).await;
    if !written {
        kill_9(host.id());
        let _ = host.wait();
        panic!("the host never reported its workers");
    }
    let report: Value = loop {
        // Written whole before it is read (a short file, one write).
        if let Ok(v) = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()) {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let workers = pid_list(&report, "workers");
    let children = pid_list(&report, "children");
    assert!(workers.iter().chain(&children).all(|&p| alive(p)));
    kill_9(host.id());
    host.wait().unwrap();
    let all: Vec<u32> = workers.iter().chain(&children).copied().collect();
    let gone = eventually(5, || all.iter().all(|&p| !alive(p))).await;
    let left: Vec<u32> = all.iter().copied().filter(|&p| alive(p)).collect();
    for &p in &left {
        kill_9(p); // not left behind by this test
    }
    assert!(gone, "alive 5 s after the host died by SIGKILL: {left:?} (workers {workers:?}, children {children:?})");
}

/// The scenario of
/// [`a_pool_started_while_descriptors_were_short_still_keeps_a_run_record`].
async fn scenario_record() -> Value {
    let state = temp_dir("exh-state");
    let pool = started_while_short("exh-record", &state).await;
    pool.execute("pid", json!({})).await.unwrap();
    let run_id = pool.run_id().to_owned();
    let records = file_names(&state);
    let workers = pool.worker_pids();
    pool.shutdown().await.unwrap();
    assert!(
        records
            .iter()
            .any(|r| r.ends_with(&format!(".{run_id}.run"))),
        "no run record of run {run_id} while its pool runs: {records:?} in {}",
        state.display()
    );
    json!({"workers": workers})
}

/// docs/reliability.md, "No orphan, on any path": "run record + sweep: a
/// record of each run under a per-user runtime directory; the next start
/// of the same pool name kills what a crashed run left"; "Each pool writes
/// `<instance>.<host pid>.<run id>.run`". (Only an unsafe state directory
/// is documented to leave a pool without a record.)
///
/// A pool started while the host had no descriptor free, which came back
/// a moment later (before its first worker started): while it runs and
/// serves, its run record must be in its state directory, or a crash of
/// this run leaves what escaped for ever.
#[test]
fn a_pool_started_while_descriptors_were_short_still_keeps_a_run_record() {
    run_scenario_leaving_none_of("record", &["workers"]);
}

// ---------------------------------------------------------------------
// Escaped children of a run whose end, or whose worker's death, comes
// while no descriptor is free.
// ---------------------------------------------------------------------

/// The scenario of
/// [`a_pool_shut_down_without_descriptors_still_kills_its_workers_escaped_children`]
/// (`at_end`) and of
/// [`a_worker_that_dies_while_descriptors_are_exhausted_leaves_no_escaped_child_once_they_are_back`].
async fn scenario_escaped(at_end: bool) -> Value {
    let (soft, _) = nofile();
    let state = temp_dir("exh-state");
    let fillers = take_every_descriptor_below(256);
    set_soft_nofile(soft);
    let pool = builder(TestWorker::new())
        .size(1)
        .name("exh-escaped")
        .configure(|c| {
            c.state_dir = Some(state.clone());
            c.breaker_cooldown = Duration::from_secs(600);
        })
        .start()
        .await
        .unwrap();
    let r = pool.execute("spawn_escaped", json!({})).await.unwrap();
    let escaped = r["child_pid"].as_u64().unwrap() as u32;
    let worker = r["pid"].as_u64().unwrap() as u32;
    assert!(alive(escaped));
    let run_id = pool.run_id().to_owned();
    assert!(
        eventually(5, || env_of(escaped, "SNAKEPIT_RUN_ID").as_deref()
            == Some(run_id.as_str()))
        .await,
        "the escaped child carries the run id"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;

    // `OUTSIDE_EXHAUSTION_CONTROL` set: the same steps with descriptors to
    // spare (to check by hand that the scenario passes without exhaustion).
    let exhausted = std::env::var_os("OUTSIDE_EXHAUSTION_CONTROL").is_none();
    if exhausted {
        set_soft_nofile(256);
    }
    if at_end {
        pool.shutdown().await.unwrap();
        drop(pool);
        drop(fillers);
        set_soft_nofile(soft);
        let gone = eventually(5, || !alive(escaped)).await;
        let records = file_names(&state);
        if !gone {
            sigkill(escaped);
        }
        assert!(!alive(worker), "the worker {worker} outlived the shutdown");
        assert!(
            gone,
            "the worker's escaped child {escaped} (SNAKEPIT_RUN_ID={run_id}) outlived the \
             pool's shutdown, and the run's record is gone (state dir: {records:?}): \
             no later sweep can find it"
        );
    } else {
        sigkill(worker);
        // Its death is seen, its replacement fails to start.
        assert!(
            eventually(10, || !pool.worker_pids().contains(&worker)
                && (!exhausted || pool.stats().start_failures >= 1))
            .await,
            "{:?}",
            pool.stats()
        );
        drop(fillers);
        set_soft_nofile(soft);
        pool.retry_starts();
        assert!(eventually(20, || pool.stats().workers == 1).await);
        let gone = eventually(5, || !alive(escaped)).await;
        pool.shutdown().await.unwrap();
        if !gone {
            sigkill(escaped);
        }
        assert!(
            gone,
            "worker {worker} died while descriptors were exhausted; 5 s after they came \
             back (its slot refilled, the pool running) its escaped child {escaped} \
             still runs"
        );
    }
    json!({"workers": [worker], "children": [escaped]})
}

/// docs/reliability.md, "No orphan, on any path", run id layer: "at its
/// own end (`shutdown()`, or the last handle dropped) every process of the
/// run that is not its own child, each found through `/proc`" is killed;
/// crates/core/src/sweep.rs (`kill_leftovers`): "A clean end leaves no run
/// record for a later sweep, so this is the last chance."
///
/// A worker starts a child in a session of its own (out of its process
/// group); the host runs out of descriptors; the pool is shut down. The
/// escaped child must be gone: no later sweep can find it, since the clean
/// end removed the run's record.
#[test]
fn a_pool_shut_down_without_descriptors_still_kills_its_workers_escaped_children() {
    run_scenario_leaving_none_of("escaped_at_end", &["workers", "children"]);
}

/// docs/reliability.md, "No orphan, on any path", run id layer: "when a
/// worker ends (a crash, a kill, recycling, a retirement) the pool kills
/// the processes that carry its worker id".
///
/// A worker with an escaped child (its own session) is killed while the
/// host has no descriptor free; its replacement fails to start. Once
/// descriptors are back (the slot is refilled by `retry_starts`), the
/// ended worker's escaped child must be gone while the pool runs, not
/// only at the pool's end.
#[test]
fn a_worker_that_dies_while_descriptors_are_exhausted_leaves_no_escaped_child_once_they_are_back() {
    run_scenario_leaving_none_of("escaped_at_crash", &["workers", "children"]);
}

// ---------------------------------------------------------------------
// Workers that flood the host.
// ---------------------------------------------------------------------

/// The worker script of these tests, `OUTSIDE_FLOOD=1` making it flood
/// stderr.
fn script() -> common::BridgeScript {
    common::BridgeScript("outside_exhaustion_worker.py")
}

/// `PoolConfig::stderr_tail_lines` (crates/core/src/config.rs): "Lines of
/// each worker's stderr kept for error reports"; docs/reliability.md:
/// "What a worker writes to stderr is forwarded line by line ... so host
/// memory stays flat whatever the worker writes."
///
/// Two workers write numbered stderr lines as fast as their pipes take
/// them, from before their handshake on, from a thread of their own: they
/// start, 16 callers get 400 calls served by both, host memory grows by
/// less than 64 MiB over millions of lines, and when one of them stops its
/// flood, writes ten last lines and exits, its crash carries exactly its
/// last 7 lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_flooding_stderr_with_lines_are_served_and_keep_the_tail_exact() {
    let pool = builder(script())
        .size(2)
        .worker_env("OUTSIDE_FLOOD", "1")
        .configure(|c| c.stderr_tail_lines = 7)
        .start()
        .await
        .expect("flooding workers pass their handshake");
    let rss_before = rss_kib();
    let callers: Vec<_> = (0..16)
        .map(|c| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut pids = Vec::new();
                for i in 0..25 {
                    let r = pool
                        .execute_with(
                            "echo",
                            json!({"c": c, "i": i}),
                            snakepit_core::CallOptions::new().timeout(Duration::from_secs(30)),
                        )
                        .await
                        .unwrap_or_else(|e| panic!("caller {c}, call {i}: {e:?}"));
                    assert_eq!(r["echoed"], json!({"c": c, "i": i}));
                    pids.push(r["pid"].as_u64().unwrap());
                }
                pids
            })
        })
        .collect();
    let mut served_by = std::collections::BTreeSet::new();
    for c in callers {
        served_by.extend(c.await.unwrap());
    }
    assert_eq!(served_by.len(), 2, "both flooding workers served calls");
    // The floods go on until each worker has written a million lines.
    let mut lines = std::collections::BTreeMap::new();
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while lines.len() < 2 || lines.values().any(|&n: &u64| n < 1_000_000) {
        assert!(
            std::time::Instant::now() < until,
            "the floods stalled: {lines:?}"
        );
        // Two at once: one on each worker.
        let (a, b) = tokio::join!(
            pool.execute("flooded", json!({})),
            pool.execute("flooded", json!({}))
        );
        for r in [a.unwrap(), b.unwrap()] {
            lines.insert(r["pid"].as_u64().unwrap(), r["lines"].as_u64().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 64 * 1024,
        "the host grew by {grown} KiB over {lines:?} stderr lines"
    );
    let err = pool
        .execute("finish", json!({"n": 10, "code": 5}))
        .await
        .unwrap_err();
    let Error::WorkerCrashed(crash) = &err else {
        panic!("not a crash: {err:?}");
    };
    assert_eq!(crash.exit, snakepit_core::ExitReason::Code(5));
    let tail: Vec<&str> = crash.stderr_tail.lines().collect();
    let expected: Vec<String> = (3..10).map(|i| format!("last line {i}")).collect();
    assert_eq!(tail, expected, "the crash's stderr tail");
    pool.shutdown().await.unwrap();
}

/// `PoolConfig::max_queue_size` (crates/core/src/config.rs): "Calls that
/// may wait at once; one more is rejected with `PoolSaturated`";
/// `Error::PoolSaturated` (crates/core/src/error.rs): "The queue was full:
/// the call was rejected at once and never ran", `queued`: "How many calls
/// were waiting"; `Stats::pool_saturated`.
///
/// One worker, busy; a queue of 100; 5,000 callers at once. Exactly 100
/// wait, the 4,900 others are rejected with `PoolSaturated { queued: 100 }`
/// while the worker is still busy (never ran), the counters say the same;
/// once the worker is free the 100 are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_callers_at_a_full_queue_are_rejected_exactly_beyond_it() {
    let pool = builder(script())
        .size(1)
        .configure(|c| {
            c.max_queue_size = 100;
            c.queue_timeout = Duration::from_secs(60);
            c.pipeline_depth = 0;
        })
        .start()
        .await
        .unwrap();
    let gate = temp_dir("exh-gate").join("open");
    let blocker = {
        let pool = pool.clone();
        let path = gate.display().to_string();
        tokio::spawn(async move { pool.execute("wait_for", json!({"path": path})).await })
    };
    assert!(eventually(10, || pool.stats().busy == 1).await);
    let callers: Vec<_> = (0..5000)
        .map(|i| {
            let pool = pool.clone();
            tokio::spawn(async move { (i, pool.execute("echo", json!({"i": i})).await) })
        })
        .collect();
    assert!(
        eventually(30, || {
            let s = pool.stats();
            s.queued == 100 && s.pool_saturated == 4900
        })
        .await,
        "{:?}",
        pool.stats()
    );
    assert_eq!(pool.stats().completed, 0, "the worker is still busy");
    std::fs::write(&gate, b"open").unwrap();
    blocker.await.unwrap().unwrap();
    let (mut ok, mut saturated) = (0, 0);
    for c in callers {
        match c.await.unwrap() {
            (i, Ok(r)) => {
                assert_eq!(r["echoed"]["i"], i);
                ok += 1;
            }
            (_, Err(e @ Error::PoolSaturated { queued: 100 })) => {
                assert!(e.never_ran());
                saturated += 1;
            }
            (i, Err(e)) => panic!("caller {i}: {e:?}"),
        }
    }
    assert_eq!((ok, saturated), (100, 4900));
    let s = pool.stats();
    assert_eq!(
        (
            s.requests,
            s.completed,
            s.errors,
            s.pool_saturated,
            s.queued
        ),
        (5001, 101, 4900, 4900, 0),
        "{s:?}"
    );
    pool.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------
// No room for another thread.
// ---------------------------------------------------------------------

/// This process's address space, in bytes (`VmSize`).
fn vm_size() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// The scenario of
/// [`a_start_without_room_for_its_threads_is_a_start_failure_not_a_configuration_error`].
async fn scenario_no_thread() -> Value {
    let state = temp_dir("exh-state");
    let config = {
        let mut c = snakepit_core::PoolConfig::default();
        c.pool_size = 1;
        c.state_dir = Some(state.clone());
        c
    };
    assert!(
        config.validate().is_ok(),
        "the configuration itself is valid"
    );
    let adapter = TestWorker::new();
    // A thread's stack (2 MiB) no longer fits: the address space may
    // grow by 512 KiB at most (small allocations still fit in what the
    // allocator has mapped already).
    let (soft, hard) = limit(libc::RLIMIT_AS);
    let room = vm_size() + 512 * 1024;
    set_limit(libc::RLIMIT_AS, room, hard);
    let refused = std::thread::Builder::new().spawn(|| ()).is_err();
    let started = builder(adapter).config(config).start().await;
    set_limit(libc::RLIMIT_AS, soft, hard);
    assert!(
        refused,
        "a thread could still be started: the scenario proves nothing"
    );
    let err = match started {
        Ok(pool) => {
            pool.shutdown().await.unwrap();
            return json!({"started": true});
        }
        Err(e) => e,
    };
    println!("a start without room for a thread: {err} ({})", err.kind());
    assert!(
        !matches!(err, Error::Config(_)),
        "a valid configuration reported as invalid: {err:?}"
    );
    json!({"error": err.to_string(), "kind": err.kind()})
}

/// `Error::Config` (crates/core/src/error.rs): "The configuration is
/// invalid"; `PoolConfig::validate` (config.rs): "Checks the settings as
/// `PoolBuilder::start` does first: `Err(Error::Config)` naming the first
/// setting no pool may have"; `Error::StartFailed`: "A worker could not be
/// started"; error.rs: "Each variant is something a caller can act on".
///
/// A host that has no room for another thread (its address space limit
/// reached) starts a pool whose configuration `validate()` accepts: the
/// start may fail, but not with `Error::Config`, which tells the caller to
/// fix settings that are fine (and that retrying cannot help).
#[test]
fn a_start_without_room_for_its_threads_is_a_start_failure_not_a_configuration_error() {
    let report = run_scenario("no_thread");
    assert!(report.get("kind").is_some() || report["started"] == true);
}
