//! Promises of docs/cluster.md ("Command line") and docs/cli.md (`snakepit
//! serve`) about the worker flags `serve` takes, shown from outside: real
//! nats-servers (127.0.0.1, a port of their own, stopped by each test),
//! `snakepit serve` processes and their Python workers, calls made with
//! `snakepit exec --cluster` and looked at with `snakepit cluster status`.
//!
//! - `--codec` (and `codec` in `./snakepit.toml`, the flag winning) is the
//!   codec the host's workers are started with: they find it in
//!   `SNAKEPIT_CODEC` and speak it;
//! - `--pipeline-depth` (and `pipeline_depth` under `[pool]`, the flag
//!   winning) decides whether a call that reaches a host whose one worker
//!   is busy is written ahead to that worker (in flight) or waits in the
//!   host's pool (queued), as `cluster status` shows.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;

use common::*;

/// `codec` tells what the worker was told; `hold` waits for its `gate`
/// file (at most a minute); `echo` answers at once. (Not `ping`: that is
/// the bridge's health check.)
const WORKER: &str = r#"
import os, time
import snakepit_bridge

worker = snakepit_bridge.Worker()

@worker.command("codec")
def codec(args, ctx):
    return {"codec": os.environ.get("SNAKEPIT_CODEC"), "pid": os.getpid()}

@worker.command("echo")
def echo(args, ctx):
    return {"echoed": args, "pid": os.getpid()}

@worker.command("hold")
def hold(args, ctx):
    until = time.time() + 60
    while not os.path.exists(args["gate"]) and time.time() < until:
        time.sleep(0.01)
    return {"held": True}

worker.run()
"#;

/// Starts `snakepit serve` in `dir` for each of `hosts` (cluster name,
/// extra flags) at once, each with one worker, and returns them once all
/// serve.
fn serve_all(url: &str, hosts: &[(&Path, &str, &[&str])]) -> Vec<Serve> {
    std::thread::scope(|s| {
        let started: Vec<_> = hosts
            .iter()
            .map(|(dir, cluster, extra)| {
                s.spawn(move || {
                    let mut args = vec!["--nats", url, "--cluster", cluster, "--host-id", cluster];
                    args.extend_from_slice(extra);
                    Serve::start_in(dir, &args, &[])
                })
            })
            .collect();
        started.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// `snakepit exec --cluster CLUSTER COMMAND ARGS`.
fn exec(url: &str, cluster: &str, command: &str, args: &str) -> Run {
    snakepit(&["exec", "--nats", url, "--cluster", cluster, command, args])
}

/// The one host of `cluster`, from `snakepit cluster status --json`.
fn status(url: &str, cluster: &str) -> Value {
    let r = snakepit(&[
        "cluster",
        "status",
        "--nats",
        url,
        "--cluster",
        cluster,
        "--json",
    ]);
    assert_eq!(r.code, 0, "{r:?}");
    let hosts = r.json();
    assert_eq!(hosts.as_array().map(Vec::len), Some(1), "{r:?}");
    hosts[0].clone()
}

/// docs/cluster.md:673-675: "`snakepit serve` starts a pool (the same
/// worker flags as `exec`: `--script`, `--adapter`, `--codec`, ... and
/// `snakepit.toml`)"; docs/cli.md, `serve`: "`serve` reads
/// `./snakepit.toml` as `exec` does (the worker, the codec, ...)" and
/// takes "the worker flags of `exec`"; for `exec`, a flag "wins over" the
/// file.
///
/// Four hosts of one worker, each serving a cluster of its own: without
/// `--codec` and without a file (JSON, the default), with `--codec
/// msgpack`, in a directory whose `snakepit.toml` says `codec =
/// "msgpack"` (and names the script), and there with `--codec json`. A
/// call through each cluster must succeed and say the codec the worker
/// was started with.
#[test]
fn serve_codec_flag_and_file_reach_the_workers() {
    let nats = snakepit_tests::NatsServer::start();
    let plain = Dir::new("outside-serve-codec");
    let script = plain.file("worker.py", WORKER);
    let with_file = Dir::new("outside-serve-codec-file");
    with_file.file("worker.py", WORKER);
    with_file.file(
        "snakepit.toml",
        "script = \"worker.py\"\ncodec = \"msgpack\"\n\n[pool]\npool_size = 1\n",
    );
    let by_flag = ["--script", script.as_str(), "--pool-size", "1"];
    let msgpack_flag = [&by_flag[..], &["--codec", "msgpack"]].concat();
    let hosts: [(&Path, &str, &[&str], &str); 4] = [
        (&plain.0, "codec-default", &by_flag, "json"),
        (&plain.0, "codec-flag", &msgpack_flag, "msgpack"),
        (&with_file.0, "codec-file", &[], "msgpack"),
        (
            &with_file.0,
            "codec-flag-over-file",
            &["--codec", "json"],
            "json",
        ),
    ];
    let spec: Vec<_> = hosts.iter().map(|(d, c, a, _)| (*d, *c, *a)).collect();
    let _serving = serve_all(&nats.url, &spec);
    for (_, cluster, _, want) in hosts {
        let r = exec(&nats.url, cluster, "codec", "{}");
        assert_eq!(r.code, 0, "{cluster}: {r:?}");
        assert_eq!(r.json()["codec"], want, "{cluster}: {r:?}");
        let r = exec(&nats.url, cluster, "echo", r#"{"n": [1, "two", null]}"#);
        assert_eq!(r.code, 0, "{cluster}: {r:?}");
        assert_eq!(
            r.json()["echoed"],
            serde_json::json!({"n": [1, "two", null]}),
            "{cluster}: {r:?}"
        );
    }
}

/// What a host of one worker does with a call that comes while its worker
/// runs another: `(in_flight, queued)` of its pool, from `cluster status`,
/// once the second call has reached it.
fn second_call_on_a_busy_worker(url: &str, cluster: &str, gate: &Path) -> (u64, u64) {
    // Calls that ended: the worker's recent calls are known to be short.
    for _ in 0..3 {
        let r = exec(url, cluster, "echo", "{}");
        assert_eq!(r.code, 0, "{cluster}: {r:?}");
    }
    let hold_args = serde_json::json!({ "gate": gate }).to_string();
    let (url2, cluster2) = (url.to_owned(), cluster.to_owned());
    let holding = std::thread::spawn(move || exec(&url2, &cluster2, "hold", &hold_args));
    let until = Instant::now() + Duration::from_secs(30);
    while status(url, cluster)["busy"] != 1 {
        assert!(Instant::now() < until, "{cluster}: the hold never ran");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (url2, cluster2) = (url.to_owned(), cluster.to_owned());
    let second = std::thread::spawn(move || exec(&url2, &cluster2, "echo", r#"{"second": 1}"#));
    let until = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let h = status(url, cluster);
        let (in_flight, queued) = (
            h["in_flight"].as_u64().unwrap(),
            h["queued"].as_u64().unwrap(),
        );
        if in_flight + queued >= 2 {
            break (in_flight, queued);
        }
        assert!(
            Instant::now() < until,
            "{cluster}: the second call never reached the host: {h}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    std::fs::write(gate, "go").unwrap();
    let held = holding.join().unwrap();
    assert_eq!(held.code, 0, "{cluster}: {held:?}");
    let second = second.join().unwrap();
    assert_eq!(second.code, 0, "{cluster}: {second:?}");
    assert_eq!(
        second.json()["echoed"]["second"],
        1,
        "{cluster}: {second:?}"
    );
    seen
}

/// docs/cluster.md:673-675: `snakepit serve` starts a pool with "the same
/// worker flags as `exec`: ..., `--pipeline-depth`, and `snakepit.toml`";
/// docs/cli.md, `serve`: "`--pipeline-depth` [defaults] to
/// `pipeline_depth` there, else 16"; `--pipeline-depth N` "sets the pool's
/// `pipeline_depth` (calls written ahead to a worker that runs one call at
/// a time; 0 turns it off), as `pipeline_depth` under `[pool]` in
/// `snakepit.toml` does".
///
/// Four hosts of one worker, each its own cluster, all with
/// `pipeline_max_call_us = 1000000` under `[pool]` (so the workers' short
/// calls count as short however loaded the machine). With its worker held
/// by one call, a host is sent one more: with pipelining on, the pool
/// writes it ahead to the worker (2 calls in flight, none queued); off, it
/// waits in the pool's queue (1 in flight, 1 queued). On by default
/// (16) and with `--pipeline-depth 1` over a file's `pipeline_depth = 0`;
/// off with `--pipeline-depth 0` and with the file's 0.
#[test]
fn serve_pipeline_depth_decides_whether_calls_are_written_ahead() {
    let nats = snakepit_tests::NatsServer::start();
    let fast = Dir::new("outside-serve-pipeline");
    fast.file("worker.py", WORKER);
    fast.file(
        "snakepit.toml",
        "script = \"worker.py\"\n\n[pool]\npool_size = 1\npipeline_max_call_us = 1000000\n",
    );
    let off = Dir::new("outside-serve-pipeline-off");
    off.file("worker.py", WORKER);
    off.file(
        "snakepit.toml",
        "script = \"worker.py\"\n\n[pool]\npool_size = 1\npipeline_depth = 0\npipeline_max_call_us = 1000000\n",
    );
    let hosts: [(&Path, &str, &[&str], bool); 4] = [
        (&fast.0, "depth-default", &[], true),
        (&fast.0, "depth-flag-0", &["--pipeline-depth", "0"], false),
        (&off.0, "depth-file-0", &[], false),
        (
            &off.0,
            "depth-flag-1-over-file",
            &["--pipeline-depth", "1"],
            true,
        ),
    ];
    let spec: Vec<_> = hosts.iter().map(|(d, c, a, _)| (*d, *c, *a)).collect();
    let _serving = serve_all(&nats.url, &spec);
    let seen: Vec<(u64, u64)> = std::thread::scope(|s| {
        let runs: Vec<_> = hosts
            .iter()
            .map(|(_, cluster, _, _)| {
                let gate = fast.0.join(format!("{cluster}.gate"));
                let url = nats.url.as_str();
                s.spawn(move || second_call_on_a_busy_worker(url, cluster, &gate))
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for ((_, cluster, _, pipelined), seen) in hosts.iter().zip(seen) {
        let want = if *pipelined { (2, 0) } else { (1, 1) };
        assert_eq!(
            seen, want,
            "{cluster}: (in flight, queued) with its worker busy; pipelining on: {pipelined}"
        );
    }
}
