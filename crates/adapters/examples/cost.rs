//! The host's cost of one call, for `cargo xtask cost`: a pool of real
//! Python workers answers `ping` calls, each as a typed `call` or as an
//! `execute` with a `Value` result. Run under valgrind's callgrind twice with
//! different call counts, the difference in instructions divided by the
//! difference in calls is what one call costs the host, start-up excluded.
//!
//! ```sh
//! cargo run --release -p snakepit-adapters --example cost -- --calls 1000 --mode typed --workers 2 --callers 8
//! ```

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
}

fn args() -> Result<Args> {
    let mut a = Args {
        calls: 1000,
        workers: 2,
        callers: 8,
        typed: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--calls" => a.calls = value.parse()?,
            "--workers" => a.workers = value.parse()?,
            "--callers" => a.callers = value.parse()?,
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
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let pool = Pool::builder(GenericPython).size(a.workers).start().await?;
        let started = Instant::now();
        let per_caller = a.calls / a.callers.max(1);
        let tasks: Vec<_> = (0..a.callers.max(1))
            .map(|_| {
                let pool = pool.clone();
                let typed = a.typed;
                tokio::spawn(async move {
                    for _ in 0..per_caller {
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
        eprintln!(
            "{} calls ({} mode) in {took:?}",
            per_caller * a.callers.max(1),
            if a.typed { "typed" } else { "value" }
        );
        pool.shutdown().await?;
        Ok(())
    })
}
