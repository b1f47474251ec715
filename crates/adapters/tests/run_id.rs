//! The run id of a pool of bundled workers is in their environment only:
//! `ps` shows every user the command lines of every process, so the id is
//! not put there (issue 12, item 5).

use snakepit_adapters::{Bridge, Language};
use snakepit_core::{Adapter, Pool};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_id_is_not_on_a_bundled_workers_command_line() {
    let adapter = Bridge::generic(Language::Python);
    let launch = adapter.launch();
    assert!(!launch.run_id_arg, "{launch:?}");
    let pool = Pool::builder(adapter).size(1).start().await.unwrap();
    let pid = pool.worker_pids()[0];
    let id = pool.run_id().to_owned();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(!cmdline.contains(&id), "{cmdline}");
    assert!(!cmdline.contains("--snakepit-run-id"), "{cmdline}");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let needle = format!("SNAKEPIT_RUN_ID={id}");
    assert!(environ.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()));
    pool.shutdown().await.unwrap();
}
