//! reliability.md, "Run ids cannot be guessed and are not on display": the
//! run id is not put on command lines; "`Launch::with_run_id_arg` still
//! adds it for a script that wants it". adapter.rs: it appends
//! `--snakepit-run-id <id>` to the arguments, where every user can see it.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::{json, Value};
use snakepit_core::{Adapter, Launch, Pool};

fn script() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/workers/argv_worker.py")
        .display()
        .to_string()
}

/// `argv_worker.py` with an argument of its own, with or without the run
/// id on its command line, preloaded or not.
struct Argv {
    run_id_arg: bool,
    preload: bool,
}

impl Adapter for Argv {
    fn launch(&self) -> Launch {
        let mut l = Launch::new(python())
            .arg(script())
            .arg("--own-flag")
            .env(
                "PYTHONPATH",
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bridges/python"),
            )
            .env("PYTHONDONTWRITEBYTECODE", "1");
        if self.run_id_arg {
            l = l.with_run_id_arg();
        }
        if self.preload {
            l = l.preloaded();
        }
        l
    }
}

/// The worker's `sys.argv` after the script's path, and its command line
/// as `ps` shows it to every user (`/proc/<pid>/cmdline`). `forked`: the
/// worker is a fork of a template, not a child of this process.
async fn command_line(pool: &Pool, forked: bool) -> (Vec<String>, Vec<String>) {
    let r = pool.execute("argv", json!({})).await.unwrap();
    let ppid = r["ppid"].as_u64().unwrap();
    assert_eq!(ppid != u64::from(std::process::id()), forked, "{r}");
    let argv: Vec<String> = match &r["argv"] {
        Value::Array(a) => a.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
        other => panic!("no argv: {other}"),
    };
    assert_eq!(argv.first(), Some(&script()), "{argv:?}");
    let pid = r["pid"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (argv[1..].to_vec(), cmdline)
}

/// By default the run id is on no worker's command line; with
/// `Launch::with_run_id_arg` the script's last two arguments are
/// `--snakepit-run-id` and the pool's run id, after its own, and `ps`
/// shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_run_id_arg_the_run_id_ends_the_arguments_and_is_absent_by_default() {
    let plain = builder(Argv {
        run_id_arg: false,
        preload: false,
    })
    .size(1)
    .start()
    .await
    .unwrap();
    let (args, cmdline) = command_line(&plain, false).await;
    assert_eq!(args, ["--own-flag"]);
    assert!(
        !cmdline.iter().any(|a| a.contains(plain.run_id())),
        "{cmdline:?}"
    );
    assert!(!cmdline.iter().any(|a| a == "--snakepit-run-id"));
    plain.shutdown().await.unwrap();

    let marked = builder(Argv {
        run_id_arg: true,
        preload: false,
    })
    .size(1)
    .start()
    .await
    .unwrap();
    let run_id = marked.run_id().to_owned();
    let (args, cmdline) = command_line(&marked, false).await;
    assert_eq!(args, ["--own-flag", "--snakepit-run-id", run_id.as_str()]);
    assert_eq!(
        cmdline[cmdline.len() - 2..],
        ["--snakepit-run-id".to_owned(), run_id]
    );
    marked.shutdown().await.unwrap();
}

/// docs/preload.md: a preloaded worker is a fork of the template, so it
/// has the template's command line: with `Launch::with_run_id_arg` that is
/// the run id too, and without it, not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preloaded_worker_has_the_templates_arguments_run_id_or_not() {
    for run_id_arg in [false, true] {
        let pool = builder(Argv {
            run_id_arg,
            preload: true,
        })
        .size(1)
        .start()
        .await
        .unwrap();
        let run_id = pool.run_id().to_owned();
        let (args, cmdline) = command_line(&pool, true).await;
        if run_id_arg {
            assert_eq!(args, ["--own-flag", "--snakepit-run-id", run_id.as_str()]);
            assert_eq!(
                cmdline[cmdline.len() - 2..],
                ["--snakepit-run-id".to_owned(), run_id]
            );
        } else {
            assert_eq!(args, ["--own-flag"]);
            assert!(!cmdline.iter().any(|a| a.contains(&run_id)), "{cmdline:?}");
        }
        pool.shutdown().await.unwrap();
    }
}
