//! `snakepit bench --nats`: a cluster (hosts started as `snakepit serve`
//! processes) against the local pool in one run, over a real nats-server.

use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_snakepit");

#[allow(clippy::disallowed_methods)] // runs the tool under test, not a worker
fn snakepit(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("SNAKEPIT_CONFIG")
        .env_remove("NATS_URL")
        .output()
        .expect("snakepit runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The report has both figures of the issue (added p50 latency of a
/// cluster call, cluster/local throughput), from hosts that split the
/// workers; the table says the same. Three rounds unless `--rounds` says.
#[test]
fn bench_nats_reports_added_latency_and_the_throughput_ratio() {
    let nats = snakepit_tests::NatsServer::start();
    // 40 requests (once 400; at least 4 x the 4 callers): the test reads
    // the report's shape, not its figures, and each of the four
    // measurements (three rounds, then the table's one) repeats them.
    let small = [
        "bench",
        "--nats",
        &nats.url,
        "--workers",
        "2",
        "--requests",
        "40",
        "--concurrency",
        "4",
        "--rounds",
        "1",
    ];
    // Without `--rounds`: three rounds with `--nats` (docs/cli.md).
    let mut json_run = small[..small.len() - 2].to_vec();
    json_run.push("--json");
    let (code, stdout, stderr) = snakepit(&json_run);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let r: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(r["hosts"], serde_json::json!([1, 1]), "{r}");
    assert_eq!(r["workers"], 2);
    assert_eq!(r["rounds"], 3);
    assert!(r["added_p50_us"]["median"].is_number(), "{r}");
    for key in [
        "local_p50_us",
        "cluster_p50_us",
        "local_rps",
        "cluster_rps",
        "nats_round_trip_p50_us",
    ] {
        assert!(r[key]["median"].as_f64().unwrap() > 0.0, "{key}: {r}");
    }
    let ratio = r["throughput_ratio"]["median"].as_f64().unwrap();
    assert!(ratio > 0.0, "{r}");
    assert!(r["cluster"].as_str().unwrap().starts_with("bench-"), "{r}");
    for key in ["local_cpu_us_per_call", "cluster_cpu_us_per_call"] {
        assert!(r[key]["median"].is_number(), "{key}: {r}");
    }

    let (code, stdout, stderr) = snakepit(&small);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("added p50 latency"), "{stdout}");
    assert!(stdout.contains("cluster/local throughput"), "{stdout}");
}

/// `--nats` where no server listens fails as the other NATS commands do
/// (exit 1, naming the address); `--cluster` needs `--nats`.
#[test]
fn bench_nats_without_a_server_is_exit_1_naming_the_address() {
    let url = format!("nats://127.0.0.1:{}", snakepit_tests::free_port());
    let (code, stdout, stderr) = snakepit(&["bench", "--nats", &url, "--requests", "400"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach NATS at {url}")),
        "{stderr}"
    );
    let (code, _, stderr) = snakepit(&["bench", "--cluster", "x"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--nats"), "{stderr}");
}
