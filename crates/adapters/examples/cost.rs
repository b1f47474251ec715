//! The host's cost of one call, for `cargo xtask cost`: a pool of real
//! Python workers answers `ping` calls, each as a typed `call` or as an
//! `execute` with a `Value` result. Run under valgrind's callgrind twice with
//! different call counts, the difference in instructions divided by the
//! difference in calls is what one call costs the host, start-up excluded.
//!
//! ```sh
//! cargo run --release -p snakepit-adapters --example cost -- --calls 1000 --mode typed --workers 2 --callers 8
//! ```
//!
//! `--decode-only` counts the part of a call that is not the pool's: it
//! makes one real `ping` call, then decodes that reply's result `--calls`
//! times (as `Pong`, or as a `Value` with `--mode value`) and drops it, as
//! the pool and its caller do for each call, without a pool.
//!
//! Outside callgrind it also prints the calls per second: `--runtime current`
//! runs the host on one thread as `snakepit bench` does, `--pipeline-depth N`
//! sets `PoolConfig::pipeline_depth` and `--pipeline-max-call-us N`
//! `PoolConfig::pipeline_max_call`.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::json;
use snakepit_adapters::GenericPython;
use snakepit_core::{CallOptions, Pool};

#[derive(Deserialize)]
#[allow(dead_code)] // decoded, not read: the decode is part of the cost
struct Pong {
    status: String,
}

struct Args {
    calls: usize,
    workers: usize,
    callers: usize,
    typed: bool,
    /// Calls written ahead to each worker (`PoolConfig::pipeline_depth`).
    depth: Option<u32>,
    /// `PoolConfig::pipeline_max_call`, in microseconds.
    max_call_us: Option<u64>,
    /// The host on one thread (`current_thread`), as the bench runs it.
    one_thread: bool,
    /// Only decode one real reply, `calls` times.
    decode_only: bool,
}

fn args() -> Result<Args> {
    let mut a = Args {
        calls: 1000,
        workers: 2,
        callers: 8,
        typed: true,
        depth: None,
        max_call_us: None,
        one_thread: false,
        decode_only: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--decode-only" {
            a.decode_only = true;
            continue;
        }
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--calls" => a.calls = value.parse()?,
            "--workers" => a.workers = value.parse()?,
            "--callers" => a.callers = value.parse()?,
            "--pipeline-depth" => a.depth = Some(value.parse()?),
            "--pipeline-max-call-us" => a.max_call_us = Some(value.parse()?),
            "--runtime" => {
                a.one_thread = match value.as_str() {
                    "current" => true,
                    "multi" => false,
                    other => bail!("--runtime is current or multi, not {other}"),
                }
            }
            "--mode" => {
                a.typed = match value.as_str() {
                    "typed" => true,
                    "value" => false,
                    other => bail!("--mode is typed or value, not {other}"),
                }
            }
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let a = args()?;
    let rt = if a.one_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
    };
    rt.block_on(async {
        let pool = Pool::builder(GenericPython)
            .size(a.workers)
            .configure(|c| {
                if let Some(depth) = a.depth {
                    c.pipeline_depth = depth;
                }
                if let Some(us) = a.max_call_us {
                    c.pipeline_max_call = std::time::Duration::from_micros(us);
                }
            })
            .start()
            .await?;
        if a.decode_only {
            let reply = serde_json::to_string(&pool.execute("ping", json!({})).await?)?;
            pool.shutdown().await?;
            decode(&a, reply.as_bytes())?;
            return Ok(());
        }
        let started = Instant::now();
        // Exactly `--calls` calls: the first `calls % callers` callers make
        // one more than the others (with fewer calls than callers, some
        // make none).
        let callers = a.callers.max(1);
        let tasks: Vec<_> = (0..callers)
            .map(|i| {
                let pool = pool.clone();
                let typed = a.typed;
                let mine = a.calls / callers + usize::from(i < a.calls % callers);
                tokio::spawn(async move {
                    for _ in 0..mine {
                        if typed {
                            let _: Pong = pool.call("ping", &(), CallOptions::new()).await?;
                        } else {
                            pool.execute("ping", json!({})).await?;
                        }
                    }
                    Ok::<_, snakepit_core::Error>(())
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
        let took = started.elapsed();
        let calls = a.calls;
        eprintln!(
            "{calls} calls ({} mode) in {took:?}: {:.0} calls/s",
            if a.typed { "typed" } else { "value" },
            calls as f64 / took.as_secs_f64()
        );
        pool.shutdown().await?;
        Ok(())
    })
}

/// Decodes the result `reply` `a.calls` times as the pool does (its bytes
/// checked as UTF-8 once, then parsed as a `str`), and drops it.
fn decode(a: &Args, reply: &[u8]) -> Result<()> {
    let started = Instant::now();
    for _ in 0..a.calls {
        let text = std::str::from_utf8(std::hint::black_box(reply))?;
        if a.typed {
            let pong: Pong = serde_json::from_str(text)?;
            drop(std::hint::black_box(pong));
        } else {
            let value: serde_json::Value = serde_json::from_str(text)?;
            drop(std::hint::black_box(value));
        }
    }
    eprintln!(
        "{} decodes ({} mode) in {:?}",
        a.calls,
        if a.typed { "typed" } else { "value" },
        started.elapsed()
    );
    Ok(())
}
