//! `RawProcess`: a worker process outside a pool, with every protection of
//! one, tested against real processes.

use snakepit_core::{Launch, RawProcess, WireCodec};
use snakepit_tests::{alive, eventually};
use tokio::io::{AsyncBufReadExt, BufReader};

/// A process that starts a child of its own and reports what it was given.
fn reporter() -> Launch {
    Launch::new("sh").arg("-c").arg(
        "sleep 300 & echo \"$! $SNAKEPIT_RUN_ID $SNAKEPIT_CODEC $SNAKEPIT_PROTOCOL $SNAKEPIT_WORKER_ID\"; wait",
    )
}

async fn first_line(p: &mut RawProcess) -> Vec<String> {
    let mut out = BufReader::new(p.take_stdout().expect("stdout is piped"));
    let mut line = String::new();
    out.read_line(&mut line).await.expect("a line");
    line.split_whitespace().map(str::to_owned).collect()
}

#[tokio::test]
async fn a_raw_process_has_a_run_id_and_its_whole_group_dies_when_it_is_dropped() {
    let mut p = RawProcess::spawn(reporter(), WireCodec::MsgPack)
        .await
        .expect("sh starts");
    let seen = first_line(&mut p).await;
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(p.run_id().len(), 32);
    assert_eq!(seen[1], p.run_id());
    assert_eq!(&seen[2..], ["msgpack", "1", "raw"]);
    let (pid, child) = (p.pid(), seen[0].parse::<u32>().expect("a pid"));
    assert!(alive(pid) && alive(child));

    drop(p);
    let gone = eventually(10, || !alive(pid) && !alive(child)).await;
    if alive(child) {
        #[allow(clippy::disallowed_methods)] // cleaning up after a failed test
        let _ = std::process::Command::new("kill")
            .args(["-9", &child.to_string()])
            .status();
    }
    assert!(gone, "the process and its child die with the RawProcess");
}

#[tokio::test]
async fn kill_reaps_the_process_and_its_children() {
    let launch = reporter().env("SNAKEPIT_WORKER_ID", "mine");
    let mut p = RawProcess::spawn(launch, WireCodec::Json)
        .await
        .expect("sh starts");
    let seen = first_line(&mut p).await;
    assert_eq!(
        &seen[2..],
        ["json", "1", "mine"],
        "the launch's worker id wins"
    );
    let child = seen[0].parse::<u32>().expect("a pid");
    let status = p.kill().await.expect("reaped");
    assert!(!status.success());
    assert_eq!(p.try_wait().expect("try_wait"), Some(status));
    assert!(
        eventually(10, || !alive(child)).await,
        "the child died with its group"
    );
}

#[tokio::test]
async fn a_missing_program_is_not_found() {
    let e = RawProcess::spawn(Launch::new("/no/such/program"), WireCodec::Json)
        .await
        .expect_err("nothing to run");
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
}
