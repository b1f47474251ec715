//! Red-team tests of docs/preload.md against real preloaded Python pools,
//! as a user who wants every worker to share one loaded model: memory
//! measured from /proc, a template's failure and traceback, orphans after
//! a dropped pool and after the host's SIGKILL once its template died,
//! stdout at import, env/argv/cwd and run id of forked workers, sessions,
//! memory recycling, and a template that cannot be restarted.
//!
//! The worker is `workers/redteam_preload_worker.py`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use snakepit_adapters::Bridge;
use snakepit_core::{CallOptions, Error, Pool, WireCodec};
use snakepit_tests::{alive, eventually, python, Events};

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/redteam_preload_worker.py")
}

fn bridge() -> Bridge {
    Bridge::python(script()).interpreter(python()).preload()
}

/// A fresh path in the temporary directory, named for the test.
fn temp(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "snakepit-redteam-preload-{name}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    path
}

fn loads(marker: &PathBuf) -> Vec<u32> {
    std::fs::read_to_string(marker)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

fn num(v: &Value, key: &str) -> u32 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}")) as u32
}

fn kill_9(pid: u32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a process this test started; no memory involved.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// A field of `/proc/<pid>/smaps_rollup`, in KiB.
fn rollup_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_else(|e| panic!("smaps_rollup of {pid}: {e}"));
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no {field} in smaps_rollup of {pid}:\n{text}"))
}

/// Unique set size: the pages only this process has.
fn uss_kib(pid: u32) -> u64 {
    rollup_kib(pid, "Private_Clean") + rollup_kib(pid, "Private_Dirty")
}

/// `/proc/<pid>/environ` as pairs.
fn environ(pid: u32) -> Vec<(String, String)> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// "every worker is then a `fork` of the template ..., sharing the loaded
/// memory copy-on-write", and "Python's garbage collector would touch every
/// object the template allocated ...; the Python bridge calls `gc.freeze()`
/// before forking": a template holding 96 MiB of weights and 300,000
/// Python objects; three workers each read every byte of the weights and
/// run full collections; measured from /proc, each worker's own pages (USS)
/// stay a small fraction of the model while its resident set holds it all,
/// and the pool's proportional sets (PSS) sum to far less than three
/// copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forked_workers_share_the_loaded_model_as_proc_measures_it() {
    model_shared_by_forks(bridge()).await;
}

/// Three forked workers of `bridge` (its script holding a 96 MiB model and
/// 300,000 objects) each read the whole model twice and collect; /proc then
/// shows the model shared, as the two tests that call it say.
async fn model_shared_by_forks(bridge: Bridge) {
    let pool = Pool::builder(bridge.env("RT_MODEL_MB", "96").env("RT_OBJECTS", "300000"))
        .size(3)
        .configure(|c| {
            c.health_check_interval = Duration::ZERO;
            c.worker_init_timeout = Duration::from_secs(60);
            // Six calls over three workers: the second round of each
            // worker waits for its first (a full read and GC of the model,
            // seconds on a loaded machine).
            c.queue_timeout = Duration::from_secs(120);
        })
        .start()
        .await
        .unwrap();
    let template = pool.template_pid().unwrap();
    // Twice round every worker: reading and collecting again changes
    // nothing more.
    for _ in 0..2 {
        let calls: Vec<_> = (0..6)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.execute("touch", json!({})).await })
            })
            .collect();
        for call in calls {
            let v = call.await.unwrap().unwrap();
            assert_eq!(v["objects"], json!(300_000));
        }
    }
    // Each worker served at least one `touch` (six calls over three
    // single-slot workers), so each has read the model.
    for w in pool.workers() {
        assert!(w.served >= 1, "worker {} served no touch", w.pid);
    }
    let model_kib: u64 = 96 * 1024;
    let template_rss = rollup_kib(template, "Rss");
    assert!(
        template_rss > model_kib,
        "the template holds the model: {template_rss} KiB"
    );
    let mut pss_sum = rollup_kib(template, "Pss");
    let mut report = format!("template {template}: rss {template_rss} KiB\n");
    for pid in pool.worker_pids() {
        let (rss, pss, uss) = (rollup_kib(pid, "Rss"), rollup_kib(pid, "Pss"), uss_kib(pid));
        report += &format!("worker {pid}: rss {rss} pss {pss} uss {uss} KiB\n");
        assert!(
            rss > model_kib,
            "the worker reads the shared model: {report}"
        );
        pss_sum += pss;
    }
    for pid in pool.worker_pids() {
        assert!(
            uss_kib(pid) < model_kib / 4,
            "a forked worker's own pages are a fraction of the model: {report}"
        );
    }
    // Four processes; unshared they would be four copies.
    assert!(
        pss_sum < template_rss * 2,
        "PSS summed over the template and its workers is under two copies: {pss_sum} KiB\n{report}"
    );
    pool.shutdown().await.unwrap();
}

/// Start failure: "a clear typed error with the script's traceback". The
/// template raises in a function of the script while loading: the pool's
/// start fails with `StartFailed`, whose cause names the template, and
/// whose stderr tail is Python's traceback (the script's file, the
/// function, the exception type and message).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_raises_while_loading_is_start_failed_with_the_traceback() {
    let err = template_failing_to_load(
        bridge,
        "fail-at-start",
        &[
            "Traceback (most recent call last)",
            "redteam_preload_worker.py",
            "in load_weights",
            "FileNotFoundError: redteam weights unreadable",
        ],
    )
    .await;
    assert!(
        err.to_string().contains("redteam weights unreadable"),
        "{err}"
    );
}

/// A pool of `bridge` whose template raises while loading (`RT_FAIL_IF`
/// names a file that exists): its start is `StartFailed`, whose cause names
/// the template and whose stderr tail holds each of `needles`.
async fn template_failing_to_load(bridge: fn() -> Bridge, tag: &str, needles: &[&str]) -> Error {
    let fail = temp(tag);
    std::fs::write(&fail, "").unwrap();
    let err = Pool::builder(bridge().env("RT_FAIL_IF", &fail))
        .size(2)
        .configure(|c| c.worker_init_timeout = Duration::from_secs(30))
        .start()
        .await
        .unwrap_err();
    let _ = std::fs::remove_file(&fail);
    let Error::StartFailed(start) = &err else {
        panic!("expected StartFailed, got {err:?}");
    };
    assert!(start.cause.contains("template"), "{err:?}");
    for needle in needles {
        assert!(
            start.stderr_tail.contains(needle),
            "the stderr tail has {needle:?}: {}",
            start.stderr_tail
        );
    }
    err
}

/// "If the template dies, running workers keep serving; the next worker the
/// pool needs starts a new template first, with the usual start-up backoff
/// and breaker": the template is killed and the script now fails to load.
/// The surviving worker keeps serving every call; the slot of a killed
/// worker cannot start (reported as a worker start failure naming the
/// template); with no worker left a call is `StartFailed` carrying the new
/// template's traceback; once the load works again,
/// `retry_starts` brings the pool back to full size with workers forked
/// from a second template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_cannot_be_restarted_leaves_the_survivors_serving() {
    let fail = temp("fail-after");
    let marker = temp("fail-after-marker");
    let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = failures.clone();
    let pool = Pool::builder(bridge().env("RT_FAIL_IF", &fail).env("RT_MARKER", &marker))
        .size(2)
        .on_event(move |e| {
            if let snakepit_core::events::EventKind::WorkerStartFailed { .. } = &e.kind {
                seen.lock().unwrap().push(format!("{:?}", e.kind));
            }
        })
        .configure(|c| c.health_check_interval = Duration::ZERO)
        .start()
        .await
        .unwrap();
    let first = loads(&marker);
    assert_eq!(first.len(), 1);
    let template = first[0];
    kill_9(template);
    assert!(eventually(5, || !alive(template)).await);
    std::fs::write(&fail, "").unwrap();
    let pids = pool.worker_pids();
    let (killed, survivor) = (pids[0], pids[1]);
    kill_9(killed);
    assert!(
        eventually(30, || !failures.lock().unwrap().is_empty()).await,
        "the new template's failure is reported"
    );
    let reported = failures.lock().unwrap().join("\n");
    assert!(
        reported.contains("template"),
        "the failure names the template: {reported}"
    );
    for _ in 0..10 {
        let who = pool
            .execute_with(
                "whoami",
                json!({}),
                CallOptions::new().timeout(Duration::from_secs(20)),
            )
            .await
            .unwrap();
        assert_eq!(num(&who, "pid"), survivor, "the survivor serves");
    }
    // With no worker left, a call gets the typed start failure, carrying
    // the new template's traceback.
    kill_9(survivor);
    assert!(eventually(10, || !pool.worker_pids().contains(&survivor)).await);
    let err = pool
        .execute_with(
            "whoami",
            json!({}),
            CallOptions::new().timeout(Duration::from_secs(20)),
        )
        .await
        .unwrap_err();
    match &err {
        Error::StartFailed(start) => assert!(
            start.stderr_tail.contains("in load_weights")
                && start.stderr_tail.contains("redteam weights unreadable"),
            "the new template's traceback: {err:?}"
        ),
        other => panic!("expected StartFailed, got {other:?}"),
    }
    std::fs::remove_file(&fail).unwrap();
    pool.retry_starts();
    assert!(
        eventually(60, || pool.worker_pids().len() == 2).await,
        "back to two workers once the load works: {:?}",
        pool.worker_pids()
    );
    let second = pool.template_pid().unwrap();
    assert_ne!(second, template);
    let fresh = pool.worker_pids()[0];
    let stat = std::fs::read_to_string(format!("/proc/{fresh}/stat")).unwrap();
    let ppid: u32 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ppid, second, "the new worker is a fork of the new template");
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_file(marker);
}

/// The pool's own `Drop` (the last handle gone without `shutdown()`):
/// "killing every worker's process group" and the template. Every process
/// of a preloaded pool, the workers' children included, is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_preloaded_pool_leaves_no_template_worker_or_child() {
    let pool = Pool::builder(bridge())
        .size(2)
        .configure(|c| c.health_check_interval = Duration::ZERO)
        .start()
        .await
        .unwrap();
    let template = pool.template_pid().unwrap();
    let mut all = vec![template];
    all.extend(pool.worker_pids());
    for _ in 0..4 {
        let r = pool.execute("spawn_child", json!({})).await.unwrap();
        all.push(num(&r, "child_pid"));
    }
    assert!(all.iter().all(|&p| alive(p)), "{all:?}");
    drop(pool);
    let gone = eventually(10, || all.iter().all(|&p| !alive(p))).await;
    let left: Vec<u32> = all.iter().copied().filter(|&p| alive(p)).collect();
    assert!(
        gone,
        "alive after the pool was dropped: {left:?} of {all:?}"
    );
}

/// Runs as the host of
/// [`a_host_killed_after_its_template_died_leaves_no_worker_or_child`]
/// (only when that test starts it): a preloaded pool, children in its
/// workers, its template killed; then the pids to a file and a wait to be
/// killed.
#[test]
fn orphan_host_process() {
    let Ok(out) = std::env::var("SNAKEPIT_REDTEAM_PIDS") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let pool = Pool::builder(bridge())
            .size(2)
            .configure(|c| c.health_check_interval = Duration::ZERO)
            .start()
            .await
            .unwrap();
        let template = pool.template_pid().unwrap();
        let workers = pool.worker_pids();
        let mut children = Vec::new();
        for _ in 0..4 {
            let r = pool.execute("spawn_child", json!({})).await.unwrap();
            children.push(num(&r, "child_pid"));
        }
        kill_9(template);
        assert!(eventually(5, || !alive(template)).await);
        // Still serving without its template.
        for _ in 0..4 {
            pool.execute("whoami", json!({})).await.unwrap();
        }
        let line = json!({"template": template, "workers": workers, "children": children});
        let out = PathBuf::from(out);
        std::fs::write(out.with_extension("tmp"), line.to_string()).unwrap();
        std::fs::rename(out.with_extension("tmp"), &out).unwrap();
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
}

/// "a host that dies, even by `SIGKILL`, leaves nothing alive (... the
/// workers and their children are killed by the watchdog, and a worker
/// whose stdin closes exits)": also once the template that forked the
/// workers is gone (they are then nobody's children but init's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_after_its_template_died_leaves_no_worker_or_child() {
    let out = temp("orphan-host-pids");
    let mut host = snakepit_tests::this_test("orphan_host_process")
        .env("SNAKEPIT_REDTEAM_PIDS", &out)
        .spawn()
        .unwrap();
    assert!(
        eventually(60, || out.exists() || host.try_wait().unwrap().is_some()).await,
        "the host wrote its pids"
    );
    let pids: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let _ = std::fs::remove_file(&out);
    let mut all: Vec<u32> = Vec::new();
    for key in ["workers", "children"] {
        all.extend(
            pids[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_u64().unwrap() as u32),
        );
    }
    assert!(all.iter().all(|&p| alive(p)), "{all:?}");
    kill_9(host.id());
    host.wait().unwrap();
    let gone = eventually(10, || all.iter().all(|&p| !alive(p))).await;
    let left: Vec<u32> = all.iter().copied().filter(|&p| alive(p)).collect();
    for &p in &left {
        kill_9(p);
    }
    assert!(gone, "alive after the host's SIGKILL: {left:?}");
}

/// "its stdout and stderr both go to the pool's log of the template": a
/// script that prints at import without `protect_stdout()` and without
/// flushing (text still in Python's buffer when the template forks) serves
/// in both codecs when preloaded; the line is logged once, under
/// `snakepit::template`, and never reaches a worker's frame stream or log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unflushed_print_at_import_is_the_templates_log_once_and_never_a_workers() {
    print_at_import_is_the_templates_log_once(bridge, "redteam unflushed import line").await;
}

/// A pool of `bridge` whose preloaded script prints a line at import
/// (`RT_PRINT`, no flush), in both codecs: the workers are the template's
/// forks and serve; the line is the template's log, once, and never a
/// worker's, not even from a worker that ends and flushes what it holds.
async fn print_at_import_is_the_templates_log_once(bridge: fn() -> Bridge, prefix: &str) {
    let events = Events::global();
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let line = format!("{prefix} {codec:?}");
        let pool = Pool::builder(bridge().env("RT_PRINT", &line).codec(codec))
            .size(2)
            .configure(|c| c.health_check_interval = Duration::ZERO)
            .start()
            .await
            .unwrap_or_else(|e| panic!("{codec:?}: {e:?}"));
        let template = pool.template_pid().unwrap();
        let workers = pool.worker_pids();
        for _ in 0..6 {
            let v = pool.execute("whoami", json!({})).await.unwrap();
            assert_eq!(num(&v, "ppid"), template, "{codec:?}: a fork serves");
        }
        let stats = pool.stats();
        assert_eq!(
            (stats.crashes, stats.restarts),
            (0, 0),
            "{codec:?}: no worker broke: {stats:?}"
        );
        assert!(
            eventually(10, || events
                .lines("snakepit::template", template)
                .iter()
                .any(|l| l == &line))
            .await,
            "{codec:?}: the template logged its line: {:?}",
            events.lines("snakepit::template", template)
        );
        pool.shutdown().await.unwrap();
        let in_template = events
            .lines("snakepit::template", template)
            .iter()
            .filter(|l| **l == line)
            .count();
        assert_eq!(in_template, 1, "{codec:?}: logged once");
        for pid in workers {
            assert!(
                !events.lines("snakepit::worker", pid).contains(&line),
                "{codec:?}: worker {pid} repeated the template's buffered output"
            );
        }
    }
}

/// Megabytes printed to stdout at import by a preloaded script do not
/// block the template's start: the pool drains the template's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabytes_printed_to_stdout_at_import_do_not_block_a_template() {
    let pool = Pool::builder(bridge().env("RT_PRINT_MB", "4"))
        .size(2)
        .configure(|c| c.worker_init_timeout = Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let v = pool.execute("whoami", json!({})).await.unwrap();
    assert_eq!(num(&v, "ppid"), pool.template_pid().unwrap());
    pool.shutdown().await.unwrap();
}

/// "Each forked worker is a full worker of the pool, the same as one
/// started with `exec`": the bridge's environment, arguments and working
/// directory; "the run id of its pool in its environment, so `snakepit
/// sweep` finds it": `SNAKEPIT_RUN_ID` in `/proc/<pid>/environ` (where
/// sweep reads it) of the template and of every worker; its own worker id
/// (also as `ctx.worker_id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forked_workers_have_the_bridges_env_args_cwd_and_the_run_id_sweep_reads() {
    let dir = std::env::temp_dir().join(format!(
        "snakepit-redteam-preload-cwd-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.canonicalize().unwrap();
    let pool = Pool::builder(
        bridge()
            .env("RT_ENV", "value with spaces = and ü")
            .args(["--flag", "two words"])
            .cwd(&dir),
    )
    .size(2)
    .configure(|c| c.health_check_interval = Duration::ZERO)
    .start()
    .await
    .unwrap();
    let template = pool.template_pid().unwrap();
    let replies = common::on_every_worker(&pool, "sleep").await;
    assert_eq!(replies.len(), 2);
    let mut ids = Vec::new();
    for _ in 0..4 {
        let v = pool.execute("whoami", json!({})).await.unwrap();
        assert_eq!(v["rt_env"], json!("value with spaces = and ü"), "{v}");
        assert_eq!(v["cwd"], json!(dir.display().to_string()), "{v}");
        let argv = v["argv"].as_array().unwrap();
        assert_eq!(
            &argv[argv.len() - 2..],
            &[json!("--flag"), json!("two words")],
            "{v}"
        );
        assert_eq!(v["run_id"], json!(pool.run_id()), "{v}");
        assert_eq!(v["worker_id"], v["ctx_worker_id"], "{v}");
        assert_eq!(num(&v, "ppid"), template);
        ids.push((num(&v, "pid"), v["worker_id"].clone()));
    }
    let infos = pool.workers();
    for (pid, id) in &ids {
        let info = infos.iter().find(|w| w.pid == *pid).unwrap();
        assert_eq!(id, &json!(info.id), "the worker id is the pool's");
    }
    for pid in std::iter::once(template).chain(pool.worker_pids()) {
        let env = environ(pid);
        assert!(
            env.iter()
                .any(|(k, v)| k == "SNAKEPIT_RUN_ID" && v == pool.run_id()),
            "/proc/{pid}/environ carries the run id"
        );
    }
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sessions with preloaded workers: a session's calls stay on one forked
/// worker (in MessagePack); when it is killed, the session's next call is
/// served by a replacement forked from the same template, and sticks to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_calls_stick_to_one_forked_worker_and_move_to_its_fork_replacement() {
    let marker = temp("session-marker");
    let pool = Pool::builder(bridge().env("RT_MARKER", &marker).codec(WireCodec::MsgPack))
        .size(3)
        .configure(|c| c.health_check_interval = Duration::ZERO)
        .start()
        .await
        .unwrap();
    let template = pool.template_pid().unwrap();
    let session_pid = |pool: Pool| async move {
        let mut pids = Vec::new();
        for _ in 0..10 {
            let v = pool
                .execute_in_session("user-7", "whoami", json!({}))
                .await
                .unwrap();
            assert_eq!(v["session"], json!("user-7"));
            assert_eq!(num(&v, "ppid"), pool.template_pid().unwrap());
            pids.push(num(&v, "pid"));
        }
        pids.dedup();
        assert_eq!(pids.len(), 1, "the session stays on one worker: {pids:?}");
        pids[0]
    };
    let first = session_pid(pool.clone()).await;
    kill_9(first);
    assert!(
        eventually(10, || {
            let p = pool.worker_pids();
            p.len() == 3 && !p.contains(&first)
        })
        .await
    );
    let second = session_pid(pool.clone()).await;
    assert_ne!(second, first);
    assert_eq!(pool.template_pid(), Some(template));
    assert_eq!(loads(&marker), vec![template], "loaded once");
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_file(marker);
}

/// `recycle_above_rss_mb` with preloading: a worker sharing a 64 MiB model
/// stays under a 48 MiB limit, but one that grows 64 MiB of its own is over
/// it and is recycled, its replacement forked from the same template
/// (no second load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_worker_that_grows_its_own_memory_is_recycled_into_a_fork() {
    let marker = temp("grow-marker");
    let pool = Pool::builder(bridge().env("RT_MODEL_MB", "64").env("RT_MARKER", &marker))
        .size(2)
        .configure(|c| {
            c.recycle_above_rss_mb = 48;
            c.health_check_interval = Duration::ZERO;
        })
        .start()
        .await
        .unwrap();
    let template = pool.template_pid().unwrap();
    // Touching the model does not make a worker's share big.
    for _ in 0..4 {
        pool.execute("touch", json!({})).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(pool.stats().recycled, 0, "sharing is not owning");
    let grown = num(
        &pool.execute("grow", json!({"mb": 64})).await.unwrap(),
        "pid",
    );
    assert!(
        eventually(20, || pool.stats().recycled >= 1
            && !pool.worker_pids().contains(&grown))
        .await,
        "the grown worker was recycled: {:?}",
        pool.stats()
    );
    assert!(eventually(20, || pool.worker_pids().len() == 2).await);
    for _ in 0..6 {
        let v = pool.execute("sleep", json!({})).await.unwrap();
        assert_eq!(num(&v, "ppid"), template, "a fork of the same template");
        assert_ne!(num(&v, "pid"), grown);
    }
    assert_eq!(loads(&marker), vec![template], "loaded once");
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_file(marker);
}

/// Cancellation in forked workers (bridges/python/README.md, Cancellation):
/// a sync worker gets SIGINT at the call's deadline, an asyncio one a
/// cancel frame; either way the call is a `CallTimeout`, and the same
/// forked worker (not a replacement) serves the next call. The asyncio
/// worker declares its 8 slots through the fork.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forked_sync_and_asyncio_workers_are_cancelled_at_the_deadline_and_serve_on() {
    for asyncio in [false, true] {
        let mut b = bridge();
        if asyncio {
            b = b.env("RT_ASYNC", "1");
        }
        let pool = Pool::builder(b)
            .size(1)
            .configure(|c| c.health_check_interval = Duration::ZERO)
            .start()
            .await
            .unwrap();
        let pid = pool.worker_pids()[0];
        assert_eq!(
            pool.workers()[0].capacity,
            if asyncio { 8 } else { 1 },
            "asyncio {asyncio}"
        );
        for command in ["nap", "anap"].iter().take(if asyncio { 2 } else { 1 }) {
            let err = pool
                .execute_with(
                    command,
                    json!({"ms": 60_000}),
                    CallOptions::new().timeout(Duration::from_millis(1500)),
                )
                .await
                .unwrap_err();
            assert!(
                matches!(err, Error::CallTimeout { .. }),
                "asyncio {asyncio}, {command}: {err:?}"
            );
            if *command == "nap" && asyncio {
                // A plain function on a thread cannot be interrupted: its
                // slot is busy until it returns. The pool goes on.
                continue;
            }
            let v = pool.execute("whoami", json!({})).await.unwrap();
            assert_eq!(
                num(&v, "pid"),
                pid,
                "asyncio {asyncio}, {command}: the same worker"
            );
        }
        assert_eq!(
            pool.worker_pids(),
            vec![pid],
            "asyncio {asyncio}: not replaced"
        );
        assert_eq!(pool.stats().crashes, 0);
        pool.shutdown().await.unwrap();
    }
}

/// "If the template dies ... the next worker the pool needs starts a new
/// template first", and the pool's end ("at its end (`shutdown()`, or the
/// last handle dropped) the pool kills every process of the run",
/// docs/reliability.md): ended while that second template is still
/// loading, the pool leaves nothing: not the loading template, not the
/// surviving worker of the first, not a child of a worker that left its
/// process group.
async fn ended_while_a_second_template_loads(by_drop: bool) {
    {
        let marker = temp(&format!("reload-marker-{by_drop}"));
        let pool = Pool::builder(
            bridge()
                .env("RT_MARKER", &marker)
                .env("RT_SLOW_RELOAD_MS", "30000"),
        )
        .size(2)
        .configure(|c| {
            c.health_check_interval = Duration::ZERO;
            c.worker_init_timeout = Duration::from_secs(60);
        })
        .start()
        .await
        .unwrap();
        let template = pool.template_pid().unwrap();
        let mut all = vec![template];
        all.extend(pool.worker_pids());
        for _ in 0..2 {
            let r = pool.execute("spawn_escaped", json!({})).await.unwrap();
            all.push(num(&r, "child_pid"));
        }
        kill_9(template);
        assert!(eventually(5, || !alive(template)).await);
        kill_9(pool.worker_pids()[0]);
        assert!(
            eventually(30, || loads(&marker).len() == 2).await,
            "by_drop {by_drop}: a second template started loading"
        );
        let second = loads(&marker)[1];
        assert!(alive(second));
        all.push(second);
        if by_drop {
            drop(pool);
        } else {
            tokio::time::timeout(Duration::from_secs(30), pool.shutdown())
                .await
                .expect("shutdown returns while a template loads")
                .unwrap();
        }
        let gone = eventually(10, || all.iter().all(|&p| !alive(p))).await;
        let left: Vec<u32> = all.iter().copied().filter(|&p| alive(p)).collect();
        for &p in &left {
            kill_9(p);
        }
        assert!(
            gone,
            "by_drop {by_drop}: alive after the pool ended: {left:?} of {all:?}"
        );
        let _ = std::fs::remove_file(marker);
    }
}

/// The pool dropped (no `shutdown()`) while its second template loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_dropped_while_its_second_template_loads_leaves_no_process() {
    ended_while_a_second_template_loads(true).await;
}

/// `shutdown()` while the second template loads, the `Pool` handle kept
/// (as an application keeps its state): the loading template is killed
/// (it used to load on and wait forever on a socket the pool never closed;
/// 40 s after shutdown returned it still ran).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_shut_down_while_its_second_template_loads_leaves_no_process() {
    ended_while_a_second_template_loads(false).await;
}

/// A template that stops answering (SIGSTOP: a debugger, a stuck native
/// call in a thread holding the GIL) while workers serve: the survivor
/// keeps serving, the killed worker's slot is refilled within a generous
/// bound (a fork the template does not answer fails after 10 s; the next
/// start must not ask the same stuck template again), and
/// `shutdown()` returns and leaves no process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_template_does_not_hang_the_pool_or_its_shutdown() {
    let failures = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = failures.clone();
    let pool = Pool::builder(bridge())
        .size(2)
        .on_event(move |e| {
            if let snakepit_core::events::EventKind::WorkerStartFailed { cause, .. } = &e.kind {
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
    let template = pool.template_pid().unwrap();
    let mut all = vec![template];
    all.extend(pool.worker_pids());
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a process this test's pool started.
    unsafe {
        libc::kill(template as libc::pid_t, libc::SIGSTOP);
    }
    let pids = pool.worker_pids();
    let (killed, survivor) = (pids[0], pids[1]);
    kill_9(killed);
    for _ in 0..5 {
        let v = pool
            .execute_with(
                "whoami",
                json!({}),
                CallOptions::new().timeout(Duration::from_secs(20)),
            )
            .await
            .unwrap();
        assert_eq!(num(&v, "pid"), survivor);
    }
    let refilled = eventually(60, || {
        let p = pool.worker_pids();
        p.len() == 2 && !p.contains(&killed)
    })
    .await;
    let now = pool.worker_pids();
    all.extend(now.iter().copied());
    let shut = tokio::time::timeout(Duration::from_secs(30), pool.shutdown()).await;
    let gone = eventually(10, || all.iter().all(|&p| !alive(p))).await;
    let left: Vec<u32> = all.iter().copied().filter(|&p| alive(p)).collect();
    for &p in &left {
        kill_9(p);
    }
    assert!(shut.is_ok(), "shutdown returned");
    assert!(gone, "alive after shutdown: {left:?}");
    assert!(
        refilled,
        "the slot was refilled from a new template: {now:?}; start failures: {:?}",
        failures.lock().unwrap()
    );
}

fn ruby_bridge() -> Bridge {
    Bridge::ruby(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/redteam_preload_worker.rb"),
    )
    .preload()
}

/// Ruby: a template that raises while loading is `StartFailed` with Ruby's
/// backtrace (the script's file, the method, the exception class and
/// message) in its stderr tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ruby_template_that_raises_while_loading_is_start_failed_with_the_backtrace() {
    template_failing_to_load(
        ruby_bridge,
        "ruby-fail-at-start",
        &[
            "redteam_preload_worker.rb",
            "load_weights",
            "IOError",
            "redteam weights unreadable",
        ],
    )
    .await;
}

/// Ruby: forked workers share the template's model as /proc measures it,
/// after reading all of it and full GCs: each worker's own pages stay a
/// fraction of the 96 MiB model, which each worker's resident set holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forked_ruby_workers_share_the_loaded_model_as_proc_measures_it() {
    model_shared_by_forks(ruby_bridge()).await;
}

/// Ruby: a line printed to stdout at import (no flush) by a preloaded
/// script is the template's log, once, and never a worker's; the workers
/// serve in both codecs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ruby_print_at_import_is_the_templates_log_once_and_never_a_workers() {
    print_at_import_is_the_templates_log_once(ruby_bridge, "redteam ruby import line").await;
}

/// A `start()` abandoned while the template loads (the caller's own
/// timeout dropped it) leaves no template behind, whether or not the
/// caller's runtime goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_abandoned_while_the_template_loads_leaves_no_template() {
    let marker = temp("abandoned-start-marker");
    let start = Pool::builder(
        bridge()
            .env("RT_MARKER", &marker)
            .env("RT_LOAD_MS", "30000"),
    )
    .size(2)
    .configure(|c| c.worker_init_timeout = Duration::from_secs(60))
    .start();
    let abandoned = tokio::time::timeout(Duration::from_secs(3), start).await;
    assert!(abandoned.is_err(), "the start was still loading");
    let loaded = loads(&marker);
    assert_eq!(loaded.len(), 1, "one template was loading");
    let template = loaded[0];
    let gone = eventually(10, || !alive(template)).await;
    if !gone {
        kill_9(template);
    }
    assert!(gone, "the abandoned start's template {template} is gone");
    let _ = std::fs::remove_file(marker);
}
