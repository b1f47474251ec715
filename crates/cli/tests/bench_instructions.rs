//! `snakepit bench --instructions`: the host's instructions per call, raw
//! loop and pool, counted by valgrind's callgrind (`cargo xtask setup`
//! installs valgrind).

mod common;

use common::{snakepit, snakepit_in, Dir};

/// A short bench with `--instructions` and these extra flags.
fn counted(extra: &[&str]) -> common::Run {
    let mut args = vec![
        "bench",
        "--workers",
        "1",
        "--requests",
        "100",
        "--concurrency",
        "4",
        "--init-ms",
        "50",
        "--instructions",
    ];
    args.extend_from_slice(extra);
    let r = snakepit(&args);
    assert_eq!(r.code, 0, "{r:?}");
    r
}

#[test]
fn instructions_per_call_are_counted_for_the_raw_loop_and_the_pool_and_follow_the_work() {
    let ping = counted(&["--json"]).json();
    let i = &ping["instructions_per_call"];
    let (raw, pool) = (i["raw"].as_u64(), i["pool"].as_u64());
    assert!(raw.is_some_and(|n| n > 1_000), "{i}");
    assert!(pool.is_some_and(|n| n > 1_000), "{i}");
    let ratio = pool.unwrap() as f64 / raw.unwrap() as f64;
    assert!(
        (i["pool_over_raw"].as_f64().unwrap() - ratio).abs() < 0.01,
        "{i}"
    );
    // 8 x max(callers, workers) calls, then five times as many.
    assert_eq!(i["calls"], serde_json::json!([32, 160]), "{i}");
    assert!(
        i["counted_by"].as_str().unwrap().contains("callgrind"),
        "{i}"
    );

    // The count is the host's work per call: 8 KiB sent and echoed back is
    // encoded and decoded by the host, at least an instruction per byte
    // each way more than a ping. The table shows the same row.
    let echo = counted(&[
        "--command",
        "echo",
        "--payload",
        "8192",
        "--pipeline-depth",
        "4",
    ]);
    let label = "host instructions per call, pipeline depth 4 (callgrind)";
    let row = echo
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no row {label}: {echo:?}"));
    let figures: Vec<u64> = row
        .split_whitespace()
        .filter_map(|f| f.replace(',', "").parse().ok())
        .collect();
    let [raw_echo, pool_echo] = figures[..] else {
        panic!("two counts in {row:?}")
    };
    for (part, small, big) in [("raw", raw, raw_echo), ("pool", pool, pool_echo)] {
        let small = small.unwrap();
        assert!(big > small + 2 * 8_192, "{part}: ping {small}, echo {big}");
    }
}

#[test]
fn without_valgrind_it_fails_before_measuring_and_says_how_to_install_it() {
    let dir = Dir::new("no-valgrind");
    #[allow(clippy::disallowed_methods)] // asks Python where it is
    let python = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .expect("python3 runs");
    // A PATH with nothing on it: no valgrind; Python by its full path.
    let empty = dir.0.join("bin");
    std::fs::create_dir_all(&empty).expect("dir");
    let r = snakepit_in(
        &dir.0,
        &["bench", "--requests", "400", "--instructions"],
        &[
            ("PATH", empty.to_str().expect("utf-8")),
            ("SNAKEPIT_PYTHON", &python),
        ],
        "",
    );
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("valgrind is not installed"), "{r:?}");
    assert!(r.stderr.contains("apt-get install valgrind"), "{r:?}");
    assert!(r.stdout.is_empty(), "nothing measured: {r:?}");
}

#[test]
fn instructions_are_not_counted_unless_asked_and_not_with_nats() {
    let r = snakepit(&[
        "bench",
        "--requests",
        "400",
        "--concurrency",
        "8",
        "--init-ms",
        "50",
        "--pipeline-depth",
        "0",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(r.json()["instructions_per_call"].is_null(), "{r:?}");
    let r = snakepit(&["bench", "--instructions", "--nats", "nats://127.0.0.1:1"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("--instructions"), "{r:?}");
}
