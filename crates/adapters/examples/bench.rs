//! The end-to-end benchmark of `docs/PERFORMANCE.md`: the pool against the
//! raw round trip (one plain loop per worker process, same bridge, same
//! handler, same codec, one request in flight per worker), in one run.
//!
//! `cargo xtask bench [--workers N] [--requests N] [--concurrency N]
//!  [--codec json|msgpack] [--command ping] [--init-ms MS] [--json]`

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use serde_json::{json, Value};
use snakepit_adapters::{Bridge, Language};
use snakepit_core::{Adapter, Launch, Pool, WireCodec};
use snakepit_protocol::{decode_inbound, encode_frame, Request};

struct Args {
    workers: usize,
    requests: usize,
    concurrency: usize,
    codec: WireCodec,
    command: String,
    init_ms: u64,
    json: bool,
}

fn parse() -> Result<Args> {
    let mut a = Args {
        workers: 2,
        requests: 20_000,
        concurrency: 64,
        codec: WireCodec::Json,
        command: "ping".into(),
        init_ms: 1000,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--workers" => a.workers = val()?.parse()?,
            "--requests" => a.requests = val()?.parse()?,
            "--concurrency" => a.concurrency = val()?.parse()?,
            "--codec" => a.codec = val()?.parse()?,
            "--command" => a.command = val()?,
            "--init-ms" => a.init_ms = val()?.parse()?,
            "--json" => a.json = true,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

/// The interpreter's real binary: a version-manager shim costs ~100 ms a start.
#[allow(clippy::disallowed_methods)] // probing the interpreter, not a worker
fn real_python() -> String {
    if let Ok(p) = std::env::var("SNAKEPIT_PYTHON") {
        return p;
    }
    std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "python3".into())
}

#[derive(Default, Clone, Copy)]
struct Figures {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
}

fn figures(mut lat: Vec<Duration>, elapsed: Duration) -> Figures {
    lat.sort_unstable();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Figures {
        rps: lat.len() as f64 / elapsed.as_secs_f64(),
        p50_us: q(0.50),
        p99_us: q(0.99),
        p999_us: q(0.999),
    }
}

fn fig_json(f: Figures) -> Value {
    json!({"rps": f.rps.round(), "p50_us": (f.p50_us * 10.0).round() / 10.0, "p99_us": (f.p99_us * 10.0).round() / 10.0, "p999_us": (f.p999_us * 10.0).round() / 10.0})
}

/// One worker process driven directly: write a frame, read the reply.
struct RawWorker {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::process::ChildStdout,
}

impl RawWorker {
    #[allow(clippy::disallowed_methods)] // the baseline deliberately bypasses the pool
    fn start(launch: &Launch, codec: WireCodec) -> Result<RawWorker> {
        let mut cmd = std::process::Command::new(&launch.program);
        cmd.args(&launch.args)
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .env("SNAKEPIT_CODEC", snakepit_protocol::Codec::name(&codec));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut w = RawWorker {
            child,
            stdin,
            stdout,
        };
        w.call(
            codec,
            1,
            "ping",
            &json!({"initialization": true, "worker_id": "raw"}),
        )?;
        Ok(w)
    }

    fn call(&mut self, codec: WireCodec, id: u64, command: &str, args: &Value) -> Result<()> {
        let mut buf = BytesMut::with_capacity(256);
        encode_frame(
            &codec,
            &Request::new(id, command, args),
            usize::MAX,
            &mut buf,
        )?;
        self.stdin.write_all(&buf)?;
        loop {
            let mut head = [0u8; 4];
            self.stdout.read_exact(&mut head)?;
            let mut payload = vec![0u8; u32::from_be_bytes(head) as usize];
            self.stdout.read_exact(&mut payload)?;
            // The hello frame comes before the first reply.
            if let snakepit_protocol::Inbound::Response { .. } = decode_inbound(&codec, &payload)? {
                return Ok(());
            }
        }
    }
}

impl Drop for RawWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn raw(launch: &Launch, a: &Args, workers: usize, requests: usize) -> Result<Figures> {
    let args = json!({});
    let mut raws: Vec<RawWorker> = (0..workers)
        .map(|_| RawWorker::start(launch, a.codec))
        .collect::<Result<_>>()?;
    for w in &mut raws {
        for i in 0..200 {
            w.call(a.codec, 10 + i, &a.command, &args)?; // warm-up
        }
    }
    let per = requests / workers;
    let start = Instant::now();
    let lat: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = raws
            .iter_mut()
            .map(|w| {
                let (codec, command, args) = (a.codec, a.command.as_str(), &args);
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(per);
                    for i in 0..per {
                        let t = Instant::now();
                        w.call(codec, 1000 + i as u64, command, args)
                            .expect("raw call");
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("raw thread"))
            .collect()
    });
    Ok(figures(lat, start.elapsed()))
}

async fn pool_run(pool: &Pool, a: &Args, concurrency: usize, requests: usize) -> Result<Figures> {
    for _ in 0..200 {
        pool.execute(&a.command, json!({})).await?;
    }
    let per = requests / concurrency;
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let pool = pool.clone();
            let command = a.command.clone();
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per);
                for _ in 0..per {
                    let t = Instant::now();
                    pool.execute(&command, json!({})).await?;
                    lat.push(t.elapsed());
                }
                Ok::<_, snakepit_core::Error>(lat)
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(requests);
    for t in tasks {
        lat.extend(t.await??);
    }
    Ok(figures(lat, start.elapsed()))
}

/// A worker whose init takes `ms`, standing in for loading a model.
fn slow_init_adapter(python: &str, dir: &std::path::Path, ms: u64) -> Result<Bridge> {
    let script = dir.join("slow_init.py");
    std::fs::write(
        &script,
        format!(
            "import time\ntime.sleep({})\nimport snakepit_bridge\nsnakepit_bridge.Worker().run()\n",
            ms as f64 / 1000.0
        ),
    )?;
    Ok(Bridge::python(script).interpreter(python))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let a = parse()?;
    let python = real_python();
    let adapter = Bridge::generic(Language::Python)
        .interpreter(&python)
        .codec(a.codec);
    let launch = adapter.launch();
    let say = |s: String| {
        if !a.json {
            eprintln!("{s}");
        }
    };

    say(format!(
        "raw loop: 1 worker, {} requests...",
        a.requests / 2
    ));
    let raw1 = raw(&launch, &a, 1, a.requests / 2)?;
    say(format!(
        "raw loop: {} workers, {} requests...",
        a.workers, a.requests
    ));
    let raw_n = raw(&launch, &a, a.workers, a.requests)?;

    let pool = Pool::builder(adapter.clone())
        .size(a.workers)
        .start()
        .await?;
    say(format!(
        "pool: {} workers, {} callers, {} requests...",
        a.workers, a.concurrency, a.requests
    ));
    let pooled = pool_run(&pool, &a, a.concurrency, a.requests).await?;
    pool.shutdown().await?;

    let seq_pool = Pool::builder(adapter.clone()).size(1).start().await?;
    say("sequential: one caller, one worker...".into());
    let seq = pool_run(&seq_pool, &a, 1, a.requests / 4).await?;
    seq_pool.shutdown().await?;

    let dir = std::env::temp_dir().join(format!("snakepit-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let slow = slow_init_adapter(&python, &dir, a.init_ms)?;
    say(format!(
        "start-up: {} workers with a {} ms init, together then one by one...",
        a.workers, a.init_ms
    ));
    let t = Instant::now();
    let p = Pool::builder(slow.clone()).size(a.workers).start().await?;
    let concurrent_ms = t.elapsed().as_secs_f64() * 1e3;
    p.shutdown().await?;
    let t = Instant::now();
    for _ in 0..a.workers {
        let p = Pool::builder(slow.clone()).size(1).start().await?;
        p.shutdown().await?;
    }
    let sequential_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let p = Pool::builder(Bridge::generic(Language::Python).interpreter(&python))
        .size(a.workers)
        .start()
        .await?;
    let ready_ms = t.elapsed().as_secs_f64() * 1e3;
    p.shutdown().await?;
    let _ = std::fs::remove_dir_all(&dir);

    let report = json!({
        "workers": a.workers,
        "host_runtime": "tokio current_thread",
        "codec": snakepit_protocol::Codec::name(&a.codec),
        "command": a.command,
        "requests": a.requests,
        "concurrency": a.concurrency,
        "raw_1": fig_json(raw1),
        "raw": fig_json(raw_n),
        "pool": fig_json(pooled),
        "pool_over_raw": (pooled.rps / raw_n.rps * 1000.0).round() / 1000.0,
        "sequential": {
            "raw_1": fig_json(raw1),
            "pool_1": fig_json(seq),
            "added_p50_us": ((seq.p50_us - raw1.p50_us) * 10.0).round() / 10.0,
            "added_p99_us": ((seq.p99_us - raw1.p99_us) * 10.0).round() / 10.0,
        },
        "startup": {
            "workers": a.workers,
            "init_ms": a.init_ms,
            "concurrent_ms": concurrent_ms.round(),
            "sequential_ms": sequential_ms.round(),
            "ratio": (sequential_ms / concurrent_ms * 100.0).round() / 100.0,
            "generic_ready_ms": ready_ms.round(),
        },
    });
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
