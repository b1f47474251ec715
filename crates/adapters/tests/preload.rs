//! Preloaded workers (docs/preload.md), Python and Ruby: the script loads
//! once in a template, each worker is a fork of it with its own pipes and
//! process group; crashes are replaced by a fork; a dead template is
//! replaced on the next start while workers keep serving; a host killed
//! with SIGKILL leaves nothing alive.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use snakepit_adapters::{Bridge, Language};
use snakepit_core::{CallOptions, Error, ExitReason, Pool, WireCodec};
use snakepit_tests::{alive, eventually, python};

fn script(lang: Language) -> PathBuf {
    let name = match lang {
        Language::Ruby => "preload_worker.rb",
        _ => "preload_worker.py",
    };
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workers")
        .join(name)
}

/// A file for the template's module-level code to append its pid to.
fn marker(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("snakepit-preload-{name}-{}", std::process::id()));
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

fn bridge(lang: Language, marker: &PathBuf) -> Bridge {
    let bridge = match lang {
        Language::Ruby => Bridge::ruby(script(lang)),
        _ => Bridge::python(script(lang)).interpreter(python()),
    };
    bridge.env("PRELOAD_MARKER", marker).preload()
}

fn kill_9(pid: u32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a process this test started; no memory involved.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

fn num(v: &Value, key: &str) -> u32 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}")) as u32
}

/// Asks every worker of `pool` who it is: one slow call per worker at
/// once, so that each lands on a different one.
async fn every_worker(pool: &Pool) -> Vec<Value> {
    let n = pool.worker_pids().len();
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.execute("sleep", json!({"ms": 300})).await })
        })
        .collect();
    let mut seen: Vec<Value> = Vec::new();
    for call in calls {
        seen.push(call.await.unwrap().unwrap());
    }
    let mut pids: Vec<u32> = seen.iter().map(|w| num(w, "pid")).collect();
    pids.dedup();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), n, "every worker answered: {seen:?}");
    seen
}

async fn serves_in_both_codecs(lang: Language) {
    for codec in [WireCodec::Json, WireCodec::MsgPack] {
        let marker = marker(&format!("codecs-{lang:?}-{codec:?}"));
        let pool = Pool::builder(bridge(lang, &marker).codec(codec))
            .size(2)
            .start()
            .await
            .unwrap();
        let workers = every_worker(&pool).await;
        let template = num(&workers[0], "loaded_in");
        assert_eq!(pool.template_pid(), Some(template));
        assert_eq!(
            loads(&marker),
            vec![template],
            "module-level code ran once, in the template"
        );
        let mut pids: Vec<u32> = pool.worker_pids();
        pids.sort();
        let mut answered: Vec<u32> = workers.iter().map(|w| num(w, "pid")).collect();
        answered.sort();
        assert_eq!(pids, answered);
        for w in &workers {
            let pid = num(w, "pid");
            assert_ne!(pid, template, "{codec:?}: a worker is not the template");
            assert_eq!(
                num(w, "ppid"),
                template,
                "{codec:?}: forked by the template"
            );
            assert_eq!(num(w, "pgid"), pid, "{codec:?}: a process group of its own");
            assert_eq!(
                num(w, "hook_pid"),
                pid,
                "{codec:?}: the after-fork hook ran in it"
            );
            assert_eq!(
                w["preload"],
                Value::Null,
                "{codec:?}: SNAKEPIT_PRELOAD is not inherited"
            );
            assert_eq!(w["run_id"], json!(pool.run_id()));
        }
        assert_ne!(workers[0]["worker_id"], workers[1]["worker_id"]);
        let args =
            json!({"nested": {"list": [1, 2.5, "three", null, true]}, "text": "héllo", "ms": 0});
        let echoed = pool.execute("whoami", args.clone()).await.unwrap();
        assert_eq!(echoed["echo"], args, "{codec:?}");
        pool.shutdown().await.unwrap();
        assert!(
            eventually(5, || !alive(template)).await,
            "shutdown stops the template"
        );
        assert_eq!(pool.template_pid(), None);
        let _ = std::fs::remove_file(marker);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_preloaded_workers_serve_in_both_codecs() {
    serves_in_both_codecs(Language::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_preloaded_workers_serve_in_both_codecs() {
    serves_in_both_codecs(Language::Ruby).await;
}

async fn crash_is_replaced_by_a_fork(lang: Language) {
    let marker = marker(&format!("crash-{lang:?}"));
    let pool = Pool::builder(bridge(lang, &marker))
        .size(1)
        .configure(|c| c.health_check_interval = Duration::ZERO)
        .start()
        .await
        .unwrap();
    let first = pool.execute("whoami", json!({})).await.unwrap();
    let (worker, template) = (num(&first, "pid"), num(&first, "loaded_in"));
    let started = self::marker(&format!("crash-started-{lang:?}"));
    let call = {
        let pool = pool.clone();
        let started = started.display().to_string();
        tokio::spawn(async move {
            pool.execute_with(
                "sleep",
                json!({"ms": 60_000, "marker": started}),
                CallOptions::new().timeout(Duration::from_secs(30)),
            )
            .await
        })
    };
    // Killed once the call runs in it (before, it would rightly go to the
    // replacement).
    assert!(
        eventually(10, || started.exists()).await,
        "the call started"
    );
    let _ = std::fs::remove_file(&started);
    kill_9(worker);
    match call.await.unwrap() {
        Err(Error::WorkerCrashed(crash)) => {
            assert_eq!(crash.pid, worker);
            assert_eq!(
                crash.exit,
                ExitReason::Signal(libc::SIGKILL),
                "the template reported how its fork died"
            );
        }
        other => panic!("expected a crash, got {other:?}"),
    }
    let again = pool.execute("whoami", json!({})).await.unwrap();
    assert_ne!(num(&again, "pid"), worker, "a replacement serves");
    assert_eq!(
        num(&again, "ppid"),
        template,
        "forked from the same template"
    );
    assert_eq!(num(&again, "hook_pid"), num(&again, "pid"));
    assert_eq!(loads(&marker), vec![template], "no second load");
    // A worker that exits by itself is replaced the same way.
    let _ = pool.execute("crash", json!({})).await;
    let third = pool.execute("whoami", json!({})).await.unwrap();
    assert_eq!(num(&third, "ppid"), template);
    pool.shutdown().await.unwrap();
    let _ = std::fs::remove_file(marker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_crash_is_replaced_by_a_fork() {
    crash_is_replaced_by_a_fork(Language::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_crash_is_replaced_by_a_fork() {
    crash_is_replaced_by_a_fork(Language::Ruby).await;
}

async fn template_killed_while_workers_serve(lang: Language) {
    let marker = marker(&format!("template-{lang:?}"));
    let pool = Pool::builder(bridge(lang, &marker))
        .size(2)
        .configure(|c| c.health_check_interval = Duration::ZERO)
        .start()
        .await
        .unwrap();
    let workers = every_worker(&pool).await;
    let template = num(&workers[0], "loaded_in");
    kill_9(template);
    assert!(eventually(5, || !alive(template)).await);
    for _ in 0..20 {
        let who = pool.execute("whoami", json!({})).await.unwrap();
        assert!(
            workers.iter().any(|w| w["pid"] == who["pid"]),
            "the same workers keep serving"
        );
    }
    // The next worker the pool needs starts a new template first.
    let killed = num(&workers[0], "pid");
    kill_9(killed);
    let replaced = eventually(30, || {
        let pids = pool.worker_pids();
        pids.len() == 2 && !pids.contains(&killed)
    })
    .await;
    assert!(replaced, "a replacement within 30 s");
    let now = every_worker(&pool).await;
    let replacement = now
        .iter()
        .find(|w| !workers.iter().any(|old| old["pid"] == w["pid"]))
        .expect("the replacement answered");
    let second = num(replacement, "loaded_in");
    assert_ne!(second, template, "a new template");
    assert_eq!(num(replacement, "ppid"), second);
    assert_eq!(loads(&marker), vec![template, second]);
    pool.shutdown().await.unwrap();
    assert!(eventually(5, || !alive(second)).await);
    let _ = std::fs::remove_file(marker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_template_killed_while_workers_serve() {
    template_killed_while_workers_serve(Language::Python).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_template_killed_while_workers_serve() {
    template_killed_while_workers_serve(Language::Ruby).await;
}

/// Recycling forks the replacement from the same template: no second load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recycled_workers_are_forked_from_the_same_template() {
    for lang in [Language::Python, Language::Ruby] {
        let marker = marker(&format!("recycle-{lang:?}"));
        let pool = Pool::builder(bridge(lang, &marker))
            .size(1)
            .configure(|c| {
                c.recycle_after_calls = 5;
                c.health_check_interval = Duration::ZERO;
            })
            .start()
            .await
            .unwrap();
        let mut seen: Vec<Value> = Vec::new();
        for _ in 0..40 {
            let who = pool.execute("whoami", json!({})).await.unwrap();
            if !seen.iter().any(|s| s["pid"] == who["pid"]) {
                seen.push(who);
            }
        }
        assert!(
            seen.len() >= 3,
            "{lang:?}: recycled at least twice: {seen:?}"
        );
        let template = num(&seen[0], "loaded_in");
        for w in &seen {
            assert_eq!(
                num(w, "ppid"),
                template,
                "{lang:?}: forked from the template"
            );
            assert_eq!(num(w, "hook_pid"), num(w, "pid"), "{lang:?}");
        }
        assert_eq!(loads(&marker), vec![template], "{lang:?}: loaded once");
        assert!(pool.stats().recycled >= 2, "{lang:?}");
        pool.shutdown().await.unwrap();
        let _ = std::fs::remove_file(marker);
    }
}

/// `recycle_above_rss_mb` weighs a preloaded worker by its share of the
/// pages it shares with the template (PSS), not by every shared page (RSS):
/// workers sharing 120 MiB stay under an 80 MiB limit that recycles workers
/// holding their own copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_limit_weighs_what_a_preloaded_worker_shares_by_its_share() {
    let held = |preload: bool| {
        let bridge = Bridge::with_init(Language::Python, Duration::ZERO, 120)
            .unwrap()
            .interpreter(python());
        if preload {
            bridge.preload()
        } else {
            bridge
        }
    };
    let config = |c: &mut snakepit_core::PoolConfig| {
        c.recycle_above_rss_mb = 80;
        c.health_check_interval = Duration::ZERO;
    };
    // The limit is checked every 100 ms: a worker with its own copy goes.
    let own = Pool::builder(held(false))
        .size(2)
        .configure(config)
        .start()
        .await
        .unwrap();
    assert!(
        eventually(20, || own.stats().recycled >= 1).await,
        "a worker holding 120 MiB of its own is over 80 MiB"
    );
    own.shutdown().await.unwrap();
    let shared = Pool::builder(held(true))
        .size(2)
        .configure(config)
        .start()
        .await
        .unwrap();
    let pss: Vec<u64> = shared
        .workers()
        .iter()
        .filter_map(|w| w.pss_bytes)
        .collect();
    let rss: Vec<u64> = shared
        .workers()
        .iter()
        .filter_map(|w| w.rss_bytes)
        .collect();
    assert_eq!(pss.len(), 2);
    assert!(pss.iter().all(|&b| b < 80 << 20), "PSS {pss:?}");
    assert!(rss.iter().all(|&b| b > 80 << 20), "RSS {rss:?}");
    // Ten checks of the limit later, nothing was recycled.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(shared.stats().recycled, 0);
    shared.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_that_fails_to_load_names_the_error() {
    for lang in [Language::Python, Language::Ruby] {
        let marker = marker(&format!("fail-{lang:?}"));
        let err = Pool::builder(bridge(lang, &marker).env("PRELOAD_FAIL", "1"))
            .size(2)
            .configure(|c| c.worker_init_timeout = Duration::from_secs(20))
            .start()
            .await
            .unwrap_err();
        let text = format!("{err}");
        let detail = format!("{err:?}");
        assert!(
            text.contains("template") && detail.contains("model file missing"),
            "{lang:?}: {text} / {detail}"
        );
        let _ = std::fs::remove_file(marker);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preloading_a_node_worker_is_a_clear_error() {
    let err = Pool::builder(Bridge::generic(Language::Node).preload())
        .size(1)
        .start()
        .await
        .unwrap_err();
    let detail = format!("{err:?}");
    assert!(detail.contains("cannot fork"), "{detail}");
}

/// A thread the template started does not exist in the workers: each says
/// so in its own log, which a crash report carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_with_threads_warns_in_each_workers_log() {
    for lang in [Language::Python, Language::Ruby] {
        let marker = marker(&format!("threads-{lang:?}"));
        let pool = Pool::builder(bridge(lang, &marker).env("PRELOAD_THREAD", "1"))
            .size(1)
            .configure(|c| c.health_check_interval = Duration::ZERO)
            .start()
            .await
            .unwrap();
        match pool.execute("crash", json!({})).await {
            Err(Error::WorkerCrashed(crash)) => assert!(
                crash.stderr_tail.contains("thread"),
                "{lang:?}: {}",
                crash.stderr_tail
            ),
            other => panic!("{lang:?}: expected a crash, got {other:?}"),
        }
        pool.shutdown().await.unwrap();
        let _ = std::fs::remove_file(marker);
    }
}

/// Runs as the host of [`a_host_killed_with_sigkill_leaves_no_preloaded_process`]
/// (only when that test starts it): a preloaded pool whose workers each
/// start a child, then its pids to a file, then it waits to be killed.
#[test]
fn host_process() {
    let Ok(out) = std::env::var("SNAKEPIT_TEST_PIDS") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let marker = marker("host");
        let pool = Pool::builder(bridge(Language::Python, &marker))
            .size(2)
            .start()
            .await
            .unwrap();
        let workers = every_worker(&pool).await;
        let mut children = Vec::new();
        for _ in 0..10 {
            let r = pool.execute("spawn_child", json!({})).await.unwrap();
            children.push(num(&r, "child_pid"));
        }
        let line = json!({
            "template": num(&workers[0], "loaded_in"),
            "workers": workers.iter().map(|w| num(w, "pid")).collect::<Vec<_>>(),
            "children": children,
        });
        let out = PathBuf::from(out);
        std::fs::write(out.with_extension("tmp"), line.to_string()).unwrap();
        std::fs::rename(out.with_extension("tmp"), &out).unwrap();
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_killed_with_sigkill_leaves_no_preloaded_process() {
    let out =
        std::env::temp_dir().join(format!("snakepit-preload-host-{}.pids", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let mut host = snakepit_tests::this_test("host_process")
        .env("SNAKEPIT_TEST_PIDS", &out)
        .spawn()
        .unwrap();
    assert!(
        eventually(60, || out.exists() || host.try_wait().unwrap().is_some()).await,
        "the host wrote its pids"
    );
    let pids: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let _ = std::fs::remove_file(&out);
    let mut all = vec![num(&pids, "template")];
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
    let gone = eventually(5, || all.iter().all(|&p| !alive(p))).await;
    let left: Vec<u32> = all.iter().copied().filter(|&p| alive(p)).collect();
    assert!(gone, "alive after the host's SIGKILL: {left:?}");
}
