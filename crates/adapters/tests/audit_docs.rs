//! Audit of docs/preload.md, "The template protocol (for bridge authors)",
//! against a real pool and a template that misreports its workers' pids.

use std::path::PathBuf;
use std::time::Duration;

use snakepit_adapters::Bridge;
use snakepit_core::Pool;
use snakepit_tests::{alive, eventually, python};

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("snakepit-audit-{name}-{}", std::process::id()))
}

/// Starts a one-worker preloaded pool on the lying template; the start must
/// fail. Returns its error's text and the pids the template really forked.
async fn lying_start(lie: &str) -> (String, Vec<u32>) {
    // tests/workers/lying_template.py: a template that forks real workers
    // but reports LYING_PID (JSON, or `self`) as each one's pid.
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/workers/lying_template.py");
    let log = scratch(&format!("lying-{lie}.log"));
    let _ = std::fs::remove_file(&log);
    let bridge = Bridge::python(&script)
        .interpreter(python())
        .env("LYING_PID", lie)
        .env("LYING_LOG", &log)
        .preload();
    let started = tokio::time::timeout(
        Duration::from_secs(60),
        Pool::builder(bridge)
            .size(1)
            .configure(|c| {
                c.startup_timeout = Duration::from_secs(20);
                c.health_check_interval = Duration::ZERO;
            })
            .start(),
    )
    .await
    .unwrap_or_else(|_| panic!("lie {lie}: the start neither failed nor succeeded in 60 s"));
    let err = match started {
        Ok(pool) => {
            let pids = pool.worker_pids();
            pool.shutdown().await.unwrap();
            panic!("lie {lie}: a lying template's pool started, workers {pids:?}");
        }
        Err(e) => format!("{e:#}"),
    };
    let forked: Vec<u32> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let _ = std::fs::remove_file(&log);
    (err, forked)
}

/// docs/preload.md:200-204: "any other pid (another process, 0, 1, the
/// template's own) fails the fork, naming the pid, and the process the
/// template did fork dies with the pool". 0 and a bystander are shown by
/// preload_exits.rs; here 1 and the template's own pid. (PID 1 is never
/// signalled: if it were, the test process's container would notice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_reporting_pid_1_or_its_own_pid_fails_the_fork_naming_it() {
    for lie in ["1", "self"] {
        let (err, forked) = lying_start(lie).await;
        let named = if lie == "self" {
            // The template's pid is not known here; the message names one.
            err.contains("reported pid ") && err.contains("which is not a process it forked")
        } else {
            err.contains("reported pid 1, which is not a process it forked")
        };
        assert!(named, "lie {lie}: {err}");
        assert!(
            !forked.is_empty(),
            "lie {lie}: the template forked a worker"
        );
        assert!(
            eventually(15, || forked.iter().all(|&p| !alive(p))).await,
            "lie {lie}: the real workers {forked:?} outlived the pool"
        );
    }
}

/// The same sentence for a pid that is not a pid at all (negative, beyond
/// 32 bits, a string): the pool drops the `forked` message and the fork
/// fails only after its 10 s timeout, as "did not fork", without naming
/// what the template reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_reporting_a_pid_that_is_no_pid_fails_the_fork_naming_it() {
    for lie in ["-1", "4294967297", "\"12\""] {
        let (err, forked) = lying_start(lie).await;
        assert!(err.contains("reported pid"), "lie {lie}: {err}");
        assert!(
            eventually(15, || forked.iter().all(|&p| !alive(p))).await,
            "lie {lie}: the real workers {forked:?} outlived the pool"
        );
    }
}
