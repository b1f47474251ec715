//! Promises of docs/cli.md and docs/cluster.md about `snakepit serve` and
//! `snakepit exec --cluster`, against a real nats-server, `snakepit serve`
//! processes and their Python workers: Ctrl-C leaves as SIGTERM does,
//! `--prefetch 0` makes capacity equal to the workers, a call through the
//! cluster exits with the codes of a local `exec`, and `NATS_URL` stands in
//! for `--nats`.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;

use common::*;

const WORKER: &str = r#"
import os, sys, time
import snakepit_bridge

worker = snakepit_bridge.Worker()

@worker.command("echo")
def echo(args, ctx):
    return {"echoed": args, "pid": os.getpid()}

@worker.command("fail")
def fail(args, ctx):
    raise ValueError("bad value from the worker")

@worker.command("nap")
def nap(args, ctx):
    time.sleep(args.get("ms", 0) / 1000.0)
    return {"slept": True}

@worker.command("die")
def die(args, ctx):
    sys.stderr.write("dying on purpose\n")
    sys.stderr.flush()
    os._exit(3)

worker.run()
"#;

/// `snakepit serve` on Ctrl-C (SIGINT) leaves the cluster as on SIGTERM: it
/// finishes the call in flight for its caller, then exits 0.
#[test]
fn serve_leaves_on_ctrl_c_with_exit_0_finishing_its_call() {
    let nats = snakepit_tests::NatsServer::start();
    let dir = Dir::new("serve-int");
    let script = dir.file("worker.py", WORKER);
    let mut host = Serve::start(
        &[
            "--nats",
            &nats.url,
            "--cluster",
            "inttest",
            "--pool-size",
            "1",
            "--host-id",
            "h1",
            "--script",
            &script,
        ],
        &[],
    );
    let url = nats.url.clone();
    let call = std::thread::spawn(move || {
        snakepit(&[
            "exec",
            "--nats",
            &url,
            "--cluster",
            "inttest",
            "nap",
            r#"{"ms": 1500}"#,
        ])
    });
    // SIGINT once the call runs on the host (its status says so).
    let status_args = [
        "cluster",
        "status",
        "--nats",
        &nats.url,
        "--cluster",
        "inttest",
        "--json",
    ];
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = snakepit(&status_args);
        if s.code == 0 && s.json()[0]["busy"].as_u64() == Some(1) {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "the call never ran: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    host.signal(libc::SIGINT);
    let (status, stderr) = host.wait();
    assert_eq!(status.code(), Some(0), "{status:?}: {stderr}");
    assert!(stderr.contains("leaving the cluster"), "{stderr}");
    let call = call.join().unwrap();
    assert_eq!(call.code, 0, "the call in flight finished: {call:?}");
    assert_eq!(call.json()["slept"], true, "{call:?}");
}

/// docs/cli.md, exit codes: "`exec` stopped by Ctrl-C (130) or SIGTERM
/// (143)"; through a cluster, the call is cancelled on its host. An `exec
/// --cluster` of a 20 s call, stopped once the call runs: it exits 130 or
/// 143 saying so, and the host's one worker is free again long before the
/// call would have ended (the host heard the cancel). (Before, the tool died
/// by the signal's default action and the call ran on.)
#[test]
fn exec_through_the_cluster_stopped_cancels_its_call_on_the_host() {
    let nats = snakepit_tests::NatsServer::start();
    let dir = Dir::new("cluster-exec-stop");
    let script = dir.file("worker.py", WORKER);
    let _host = Serve::start(
        &[
            "--nats",
            &nats.url,
            "--cluster",
            "stoptest",
            "--pool-size",
            "1",
            "--script",
            &script,
        ],
        &[],
    );
    let busy = || {
        let s = snakepit(&[
            "cluster",
            "status",
            "--nats",
            &nats.url,
            "--cluster",
            "stoptest",
            "--json",
        ]);
        (s.code == 0)
            .then(|| s.json()[0]["busy"].as_u64())
            .flatten()
    };
    let wait_busy = |want: u64, secs: u64, what: &str| {
        let until = std::time::Instant::now() + Duration::from_secs(secs);
        while busy() != Some(want) {
            assert!(std::time::Instant::now() < until, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for (sig, code, name) in [
        (libc::SIGINT, 130, "Ctrl-C"),
        (libc::SIGTERM, 143, "SIGTERM"),
    ] {
        wait_busy(0, 30, "the host's worker is free");
        #[allow(clippy::disallowed_methods)] // the tool itself, not a worker
        let child = Command::new(BIN)
            .args(["exec", "--nats", &nats.url, "--cluster", "stoptest"])
            .args(["nap", r#"{"ms": 20000}"#])
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_busy(1, 30, "the call never ran on the host");
        // SAFETY: kill(2) on the child this test started and has not reaped.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(child.id() as libc::pid_t, sig);
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait_with_output()));
        let out = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("exec ends once stopped")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "stopped by {name}: the call was cancelled on its host"
            )),
            "{name}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{name}: {out:?}");
        wait_busy(0, 10, "the call ran on after its exec was stopped");
    }
}

/// `snakepit serve --prefetch 0`: the host takes a call only when a worker
/// is free, so the capacity it announces is its workers; by default the
/// prefetch adds calls per worker beyond those it runs.
#[test]
fn serve_prefetch_0_announces_a_capacity_of_its_workers() {
    let nats = snakepit_tests::NatsServer::start();
    let base = [
        "--nats",
        &nats.url,
        "--cluster",
        "pftest",
        "--pool-size",
        "2",
    ];
    let _strict = Serve::start(
        &[&base[..], &["--host-id", "p0", "--prefetch", "0"]].concat(),
        &[],
    );
    let _default = Serve::start(&[&base[..], &["--host-id", "pd"]].concat(), &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let hosts = rt.block_on(async {
        let nc = async_nats::connect(&nats.url).await.unwrap();
        let client = snakepit_cluster::Client::connect(&nc, "pftest")
            .await
            .unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while client.hosts().len() < 2 {
            assert!(std::time::Instant::now() < until, "{:?}", client.hosts());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        client.hosts()
    });
    let capacity = |id: &str| hosts.iter().find(|h| h.id == id).unwrap().capacity;
    assert_eq!(capacity("p0"), 2, "{hosts:?}");
    assert!(capacity("pd") > 2, "{hosts:?}");
    // `cluster status` lists both with their workers.
    let status = status_json(&nats.url, "pftest");
    assert_eq!(status.code, 0, "{status:?}");
    let listed = status.json();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    for h in listed.as_array().unwrap() {
        assert_eq!(h["workers"], 2, "{h}");
    }
}

/// `exec --cluster` exits with the codes of a local `exec` (docs/cli.md,
/// "Exit codes"): a handler's error is 1 with its traceback, a call past
/// `--timeout` is 4, a worker that dies during the call is 5. `NATS_URL`
/// stands in for `--nats`, for `serve`, `exec` and `cluster status`, and
/// `--nats` wins over it.
#[test]
fn exec_through_the_cluster_exits_as_a_local_exec() {
    let nats = snakepit_tests::NatsServer::start();
    let dir = Dir::new("cluster-exec");
    let script = dir.file("worker.py", WORKER);
    let env = [("NATS_URL", nats.url.as_str())];
    let _host = Serve::start(
        &[
            "--cluster",
            "codes",
            "--pool-size",
            "2",
            "--script",
            &script,
        ],
        &env,
    );
    let cases: [(&[&str], i32, &[&str]); 4] = [
        (&["echo", r#"{"x": 1}"#], 0, &[]),
        (
            &["fail", "{}"],
            1,
            &["bad value from the worker", "Traceback", "ValueError"],
        ),
        (
            &["--timeout", "100", "nap", r#"{"ms": 3000}"#],
            4,
            &["timed out"],
        ),
        (&["die", "{}"], 5, &["dying on purpose"]),
    ];
    for (args, code, says) in cases {
        let local = dir.run(&[&["exec", "--script", &script][..], args].concat());
        let remote = snakepit_in(
            &dir.0,
            &[&["exec", "--cluster", "codes"][..], args].concat(),
            &env,
            "",
        );
        assert_eq!(local.code, code, "local {args:?}: {local:?}");
        assert_eq!(remote.code, code, "cluster {args:?}: {remote:?}");
        for text in says {
            assert!(local.stderr.contains(text), "local {args:?}: {local:?}");
            assert!(remote.stderr.contains(text), "cluster {args:?}: {remote:?}");
        }
        if code == 0 {
            assert_eq!(local.json()["echoed"], remote.json()["echoed"]);
        }
    }
    // `cluster status` reads NATS_URL too; `--nats` wins over it.
    let status = snakepit_in(
        &dir.0,
        &["cluster", "status", "--cluster", "codes", "--json"],
        &env,
        "",
    );
    assert_eq!(status.code, 0, "{status:?}");
    assert_eq!(status.json().as_array().unwrap().len(), 1, "{status:?}");
    // `--wait-ms` is how long it waits; a cluster nobody serves is an
    // empty list, not an error.
    let empty = [
        "cluster",
        "status",
        "--cluster",
        "nobody",
        "--wait-ms",
        "50",
    ];
    let status = snakepit_in(&dir.0, &empty, &env, "");
    assert_eq!(status.code, 0, "{status:?}");
    assert!(status.stdout.is_empty(), "{status:?}");
    assert!(
        status
            .stderr
            .contains("no host of cluster `nobody` answered within 50 ms"),
        "{status:?}"
    );
    let status = snakepit_in(&dir.0, &[&empty[..], &["--json"]].concat(), &env, "");
    assert_eq!(status.code, 0, "{status:?}");
    assert_eq!(status.json(), serde_json::json!([]), "{status:?}");
    let nowhere = format!("nats://127.0.0.1:{}", snakepit_tests::free_port());
    let run = snakepit_in(
        &dir.0,
        &[
            "exec",
            "--nats",
            &nats.url,
            "--cluster",
            "codes",
            "echo",
            "{}",
        ],
        &[("NATS_URL", &nowhere)],
        "",
    );
    assert_eq!(run.code, 0, "{run:?}");
    let run = snakepit_in(
        &dir.0,
        &["exec", "--cluster", "codes", "echo", "{}"],
        &[("NATS_URL", &nowhere)],
        "",
    );
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("cannot reach NATS at {nowhere}")),
        "{run:?}"
    );
}

/// docs/cli.md's exit codes: "4: timeout or overload (CallTimeout,
/// QueueTimeout, PoolSaturated, WorkerBusy)". Through a cluster with no
/// host, a call waits for one up to the queue timeout (cluster.md), then
/// `exec` exits 4, its hint about the cluster's hosts, not a pool size.
#[test]
fn exec_through_a_cluster_without_hosts_exits_4_after_the_queue_timeout() {
    let nats = snakepit_tests::NatsServer::start();
    let run = snakepit(&["exec", "--nats", &nats.url, "--cluster", "nobody", "ping"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("queue timeout"), "{run:?}");
    assert!(
        run.stderr
            .contains("hint: no host of cluster `nobody` had room: start one (snakepit serve --cluster nobody)"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("--pool-size"), "{run:?}");
}

/// docs/cli.md: "`--nats`, or `NATS_URL`, default `nats://127.0.0.1:4222`":
/// with neither, the cluster commands go to that address (here nothing
/// answers there, and the error names it).
#[test]
fn without_nats_or_nats_url_the_cluster_commands_use_the_local_default() {
    if std::net::TcpStream::connect("127.0.0.1:4222").is_ok() {
        // Something serves the default port on this machine: the error
        // this test looks for cannot happen here.
        eprintln!("127.0.0.1:4222 is taken on this machine; skipped");
        return;
    }
    for args in [
        &["cluster", "status", "--cluster", "ml"][..],
        &["exec", "--cluster", "ml", "ping"][..],
    ] {
        #[allow(clippy::disallowed_methods)] // the binary under test, not a worker
        let out = Command::new(BIN)
            .args(args)
            .env_remove("NATS_URL")
            .env_remove("SNAKEPIT_CONFIG")
            .output()
            .expect("the snakepit binary runs");
        let run = Run::from(out);
        assert_eq!(run.code, 1, "{args:?}: {run:?}");
        assert!(
            run.stderr.contains("nats://127.0.0.1:4222"),
            "{args:?}: {run:?}"
        );
    }
}

/// Whether `where`'s answer came from a worker forked from the process
/// that ran the script's module-level code.
fn forked_from_template(r: &Run) -> bool {
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    v["pid"] != v["loaded_in"] && v["ppid"] == v["loaded_in"]
}

/// docs/cli.md: "`exec`, `bench` and `serve` read `./snakepit.toml`", and
/// `--preload`: "`serve` and `bench` take it too". A host started in a
/// directory with a settings file runs the file's script, preloaded, with
/// the file's pool size (without one, twice the cores); `--preload` does the
/// same from the command line;
/// a Node.js host cannot preload (a usage error, exit 2).
#[test]
fn serve_reads_the_settings_file_and_takes_preload() {
    let nats = snakepit_tests::NatsServer::start();
    let dir = Dir::new("serve-settings");
    let script = dir.file("worker.py", PRELOAD_PY);
    dir.file(
        "snakepit.toml",
        "script = \"worker.py\"\npreload = true\n\n[pool]\npool_size = 3\n",
    );
    let url = nats.url.clone();
    let serve_in = |dir: &std::path::Path, cluster: &str, more: &[&str]| {
        let args: Vec<&str> = ["--nats", url.as_str(), "--cluster", cluster]
            .into_iter()
            .chain(more.iter().copied())
            .collect();
        Serve::start_in(dir, &args, &[])
    };
    let exec = |cluster: &str| {
        snakepit(&[
            "exec",
            "--nats",
            &nats.url,
            "--cluster",
            cluster,
            "where",
            "{}",
        ])
    };
    let _from_file = serve_in(&dir.0, "settings", &[]);
    let status = status_json(&nats.url, "settings");
    assert_eq!(status.code, 0, "{status:?}");
    assert_eq!(status.json()[0]["workers"], 3, "{status:?}");
    assert!(forked_from_template(&exec("settings")));

    let elsewhere = std::env::temp_dir();
    let one = ["--script", script.as_str(), "--pool-size", "1"];
    let _from_flag = serve_in(&elsewhere, "flag", &[&one[..], &["--preload"]].concat());
    assert!(forked_from_template(&exec("flag")));
    let _plain = serve_in(&elsewhere, "plain", &one);
    assert!(!forked_from_template(&exec("plain")));
    // Without `--pool-size` or a file's: twice the cores.
    let _cores = serve_in(&elsewhere, "cores", &["--script", script.as_str()]);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let status = status_json(&nats.url, "cores");
    assert_eq!(status.json()[0]["workers"], 2 * cores, "{status:?}");

    let node = snakepit(&[
        "serve",
        "--nats",
        &nats.url,
        "--cluster",
        "node",
        "--preload",
        "--adapter",
        "node",
    ]);
    assert_eq!(node.code, 2, "{node:?}");
    assert!(node.stderr.contains("cannot fork"), "{node:?}");
}

/// `snakepit cluster status --nats URL --cluster CLUSTER --json`.
fn status_json(url: &str, cluster: &str) -> Run {
    snakepit(&[
        "cluster",
        "status",
        "--nats",
        url,
        "--cluster",
        cluster,
        "--json",
    ])
}

/// docs/cli.md: NATS unreachable is exit 1 with a hint, never a crash. A
/// server that requires TLS (here one that only says so in its INFO line)
/// made every NATS command panic: no TLS backend was built in.
#[test]
fn a_nats_server_that_requires_tls_is_an_error_not_a_crash() {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.write_all(
                b"INFO {\"server_id\":\"x\",\"version\":\"2.10.0\",\"proto\":1,\"max_payload\":1048576,\"tls_required\":true}\r\n",
            );
            // Whatever the client sends (a TLS hello) goes unanswered.
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let url = format!("nats://127.0.0.1:{port}");
    for args in [
        &["exec", "--nats", url.as_str(), "--cluster", "ml", "ping"][..],
        &[
            "cluster",
            "status",
            "--nats",
            url.as_str(),
            "--cluster",
            "ml",
        ],
    ] {
        let r = snakepit(args);
        assert_eq!(r.code, 1, "{args:?}: {r:?}");
        assert!(!r.stderr.contains("panicked"), "{args:?}: {r:?}");
        assert!(r.stderr.contains("cannot reach NATS"), "{args:?}: {r:?}");
    }
}

/// `--nats`: "The NATS server(s), comma-separated" (docs/cluster.md's
/// example passes two). async-nats reads one string as one URL: a list
/// was always refused as an invalid port.
#[test]
fn a_comma_separated_list_of_nats_servers_is_accepted() {
    let nats = snakepit_tests::NatsServer::start();
    let list = format!("{}, {}", nats.url, nats.url);
    let r = snakepit(&["cluster", "status", "--nats", &list, "--cluster", "ml"]);
    assert_eq!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("no host of cluster `ml` answered"),
        "{r:?}"
    );
}

/// docs/cli.md: `--timeout MS` "sets its deadline (default: the adapter's,
/// 30 s)", through a cluster too. Without the flag no deadline went with
/// the call, and a host that answers heartbeats but never the call held
/// the command forever. The call now carries the 30 s (as what is left of
/// it), and the command ends at its deadline.
#[test]
fn exec_through_a_cluster_sends_the_default_deadline() {
    let nats = snakepit_tests::NatsServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (seen_tx, seen_rx) = mpsc::channel();
    let url = nats.url.clone();
    rt.spawn(async move {
        use futures_util::StreamExt;
        let raw = async_nats::connect(&url).await.unwrap();
        let mut calls = raw.subscribe("snakepit.mute.host.*.call").await.unwrap();
        raw.flush().await.unwrap();
        let beats = raw.clone();
        tokio::spawn(async move {
            for seq in 1u64.. {
                let hb = serde_json::json!({"seq": seq, "host": "mute", "pid": 1,
                                            "capacity": 4, "running": 4, "free": 4});
                let _ = beats
                    .publish("snakepit.mute.hb", hb.to_string().into())
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        // Acknowledged, never answered.
        while let Some(m) = calls.next().await {
            let call: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            let _ = seen_tx.send(call["timeout_ms"].as_u64());
            let to = m.reply.clone().unwrap();
            let ack = serde_json::json!({"ack": {"host": "mute", "pid": 1}});
            raw.publish(to, ack.to_string().into()).await.unwrap();
        }
    });
    #[allow(clippy::disallowed_methods)] // the tool itself, not a worker
    let mut child = Command::new(BIN)
        .args(["exec", "--nats", &nats.url, "--cluster", "mute", "ping"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sent = seen_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the call reached the host");
    let _ = child.kill();
    let _ = child.wait();
    let ms = sent.expect("the call carries a deadline");
    assert!((25_000..=30_000).contains(&ms), "{ms} ms");
}

/// docs/cli.md: on SIGTERM `serve` "takes no new call, lets the running
/// ones finish, shuts the pool down and exits 0", NATS or not: with the
/// server gone it waited for its return (27 s here, forever if it never
/// came back) and ignored further signals. It leaves within its bounded
/// goodbye now; and a second signal stops it at once.
#[test]
fn serve_leaves_on_sigterm_while_nats_is_down() {
    for second_signal in [false, true] {
        let mut nats = snakepit_tests::NatsServer::start();
        let mut serve = Serve::start(
            &["--nats", &nats.url, "--cluster", "gone", "--pool-size", "1"],
            &[],
        );
        nats.kill();
        std::thread::sleep(Duration::from_millis(300));
        serve.signal(libc::SIGTERM);
        if second_signal {
            std::thread::sleep(Duration::from_millis(100));
            serve.signal(libc::SIGINT);
        }
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let ended = serve.wait();
            let _ = tx.send(());
            ended
        });
        // A hang check, not a timing: the goodbye waits 2 s at most.
        if rx.recv_timeout(Duration::from_secs(30)).is_err() {
            panic!("serve did not leave with NATS down (second signal: {second_signal})");
        }
        let (status, stderr) = waiter.join().unwrap();
        match second_signal {
            false => assert_eq!(status.code(), Some(0), "{stderr}"),
            true => assert!(
                status.code() == Some(0) || stderr.contains("stopped at once"),
                "{status:?}: {stderr}"
            ),
        }
    }
}
