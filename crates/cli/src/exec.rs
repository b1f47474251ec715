//! `snakepit exec`: start a pool, run one call, print the result.

use std::io::Read;
use std::time::Duration;
use tracing::Instrument;

use clap::Args;
use serde_json::Value;
use snakepit_core::{CallOptions, Pool};

use crate::args::WorkerArgs;
use crate::config::FileConfig;
use crate::ui::{Failure, Output};
use crate::workers::Worker;

pub(crate) const EXAMPLES: &str = "\
Examples:
  snakepit exec ping
  snakepit exec echo '{\"message\": \"hello\"}'
  snakepit exec compute '{\"operation\": \"multiply\", \"a\": 10, \"b\": 5}'
  snakepit exec --adapter ruby --codec msgpack info
  snakepit exec --script worker.py --session user_123 greet '{\"name\": \"Ada\"}'
  echo '{\"a\": 1}' | snakepit exec --script worker.js add -

The result goes to stdout as JSON (indented on a terminal); notes and errors go to stderr.";

#[derive(Debug, Args)]
pub(crate) struct ExecArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    /// Worker processes to start [default: 1, or pool.pool_size in snakepit.toml].
    #[arg(long, value_name = "N")]
    pool_size: Option<usize>,
    /// Calls written ahead to a worker that runs one at a time; 0: off
    /// [default: 16, or pool.pipeline_depth in snakepit.toml].
    #[arg(long, value_name = "N")]
    pipeline_depth: Option<u32>,
    /// Run the call in this session (affinity to the worker that served it last).
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    /// The call's deadline in milliseconds [default: 30000, or timeout_ms in snakepit.toml].
    #[arg(long, value_name = "MS")]
    timeout: Option<u64>,
    /// Send the call to this cluster of hosts (`snakepit serve`) over NATS
    /// instead of starting a pool here (the hosts choose the workers: the
    /// worker and pool flags are refused with it).
    #[arg(
        long,
        value_name = "NAME",
        conflicts_with_all = ["adapter", "script", "codec", "preload", "pool_size", "pipeline_depth"]
    )]
    cluster: Option<String>,
    /// The NATS server(s) of `--cluster`.
    #[command(flatten)]
    nats: crate::cluster::NatsArgs,
    /// The command to run in the worker.
    command: String,
    /// The arguments: a JSON object, or - to read it from stdin [default: {}].
    #[arg(value_name = "ARGS_JSON")]
    args: Option<String>,
}

/// Parses the call's arguments: a JSON object.
pub(crate) fn parse_args(text: &str) -> Result<Value, Failure> {
    // Nothing at all (an empty argument, an empty stdin): the shell took
    // no quotes, so the hint about quoting would mislead.
    if text.trim().is_empty() {
        return Err(
            Failure::usage("ARGS_JSON is empty: it must be a JSON object").hint(
                "give an object, for example '{\"a\": 5}', or leave ARGS_JSON out to send {}",
            ),
        );
    }
    let value: Value = serde_json::from_str(text).map_err(|e| {
        let failure = Failure::usage(format!("ARGS_JSON is not valid JSON: {e}"));
        // No quote left at all: most likely the shell took them (not so
        // for a nesting too deep to read).
        if text.contains('"') || e.to_string().starts_with("recursion limit") {
            failure
        } else {
            failure.hint("quote the object for the shell: '{\"a\": 5, \"b\": 3}'")
        }
    })?;
    let kind = match &value {
        Value::Object(_) => return Ok(value),
        Value::Array(_) => "an array",
        Value::String(_) => "a string",
        Value::Number(_) => "a number",
        Value::Bool(_) => "a boolean",
        Value::Null => "null",
    };
    // The value itself only when short: it may be megabytes read from stdin.
    let shown = value.to_string();
    let shown = if shown.len() <= 60 {
        format!(" ({shown})")
    } else {
        String::new()
    };
    Err(Failure::usage(format!(
        "ARGS_JSON must be a JSON object, not {kind}{shown}"
    ))
    .hint("wrap the value in an object: '{\"value\": ...}'"))
}

/// `exec --cluster`'s deadline without `--timeout` or `timeout_ms`: the
/// adapters' default, which a local `exec` gets from its pool.
const DEFAULT_CLUSTER_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) async fn run(a: ExecArgs, file: FileConfig, out: &Output) -> Result<(), Failure> {
    let args = match a.args.as_deref() {
        None => Value::Object(Default::default()),
        Some("-") => {
            // No more than a request frame may carry: the rest is not read
            // (stdin may never end: /dev/zero).
            let limit = file.pool.max_frame_size;
            let mut text = String::new();
            std::io::stdin()
                .take(limit as u64 + 1)
                .read_to_string(&mut text)
                .map_err(|e| Failure::usage(format!("cannot read ARGS_JSON from stdin: {e}")))?;
            if text.len() > limit {
                return Err(Failure::usage(format!(
                    "ARGS_JSON on stdin is larger than max_frame_size ({limit} bytes): no request may carry it"
                ))
                .hint("raise max_frame_size under [pool] in snakepit.toml, or send less"));
            }
            parse_args(&text)?
        }
        Some(text) => parse_args(text)?,
    };
    if a.timeout == Some(0) {
        return Err(Failure::usage("--timeout must be above 0 milliseconds")
            .hint("give the call's deadline in milliseconds: --timeout 30000"));
    }
    let mut options = CallOptions::new();
    if let Some(ms) = a.timeout.or(file.timeout_ms) {
        options = options.timeout(Duration::from_millis(ms));
    }
    if let Some(session) = &a.session {
        options = options.session(session.clone());
    }
    if let Some(cluster) = &a.cluster {
        // A usage error whether NATS is up or not.
        snakepit_cluster::check_cluster_name(cluster)?;
        // The documented default deadline, sent with the call: without one
        // the client would wait for as long as the host lives, and a host
        // that never answers would hold this command forever.
        if a.timeout.or(file.timeout_ms).is_none() {
            options = options.timeout(DEFAULT_CLUSTER_TIMEOUT);
        }
        // A stop while NATS is reached or the call runs: the call is
        // dropped, which cancels it on its host, and the cancel leaves
        // before the tool does (exit 130 or 143, as a local exec).
        let mut stop = crate::stop::StopSignals::new();
        let nats_url = a.nats.url()?;
        let connected = stop.race(async {
            let nats = crate::cluster::connect(&nats_url).await?;
            let client = snakepit_cluster::Client::connect(&nats, cluster).await?;
            Ok::<_, Failure>((nats, client))
        });
        let (nats, client) = match connected.await {
            Ok(c) => c?,
            Err(s) => return Err(s.failure("nothing was sent")),
        };
        let span = tracing::info_span!("snakepit exec", command = %a.command);
        let call = client
            .execute_with(&a.command, args, options)
            .instrument(span);
        let outcome = match stop.race(call).await {
            Ok(outcome) => outcome,
            Err(s) => {
                // The dropped call's cancel is published by a task of the
                // client's: let it run, then wait for the server to have it.
                tokio::task::yield_now().await;
                let _ = tokio::time::timeout(Duration::from_secs(2), nats.flush()).await;
                return Err(s.failure("the call was cancelled on its host"));
            }
        };
        return match outcome {
            Ok(v) => print_result(v, out),
            // No host took the call in time: a matter of hosts, not of
            // this command's pool size.
            Err(
                e @ (snakepit_core::Error::QueueTimeout(_)
                | snakepit_core::Error::PoolSaturated { .. }
                | snakepit_core::Error::WorkerBusy { .. }),
            ) => Err(Failure::from(e).hint(format!(
                "no host of cluster `{cluster}` had room: start one (snakepit serve --cluster {cluster}), or more, or check `snakepit cluster status --cluster {cluster}`"
            ))),
            Err(e) => Err(e.into()),
        };
    }
    let worker = Worker::choose(&a.worker, &file)?;
    let mut config = file.pool.clone();
    config.pool_size = match a.pool_size {
        Some(n) => n,
        None if file.pool_size_set => config.pool_size,
        None => 1,
    };
    crate::config::check_pool_size_flag(config.pool_size, "--pool-size")?;
    if let Some(depth) = a.pipeline_depth {
        config.pipeline_depth = depth;
    }
    out.verbose(format!(
        "starting {} x {} ({}, pipeline depth {})",
        config.pool_size,
        worker.describe(),
        worker.codec,
        config.pipeline_depth
    ));
    let call = async {
        let pool = crate::traced(Pool::builder(worker.bridge(None)).config(config))
            .start()
            .await?;
        let span = tracing::info_span!("snakepit exec", command = %a.command);
        let outcome = pool
            .execute_with(&a.command, args, options)
            .instrument(span)
            .await;
        // The call's outcome matters more than a slow shutdown.
        let _ = pool.shutdown().await;
        Ok::<_, Failure>(outcome?)
    };
    // After stdin is read: a stop while it is read ends the tool at once.
    print_result(crate::stop::or_stopped(call).await?, out)
}

/// Prints a call's result on stdout: JSON, indented on a terminal.
fn print_result(result: Value, out: &Output) -> Result<(), Failure> {
    let text = if out.stdout_is_terminal {
        serde_json::to_string_pretty(&result)
    } else {
        serde_json::to_string(&result)
    }
    .map_err(|e| Failure::general(format!("cannot print the result: {e}")))?;
    outln!("{text}").map_err(|f| {
        if f.silent {
            return f;
        }
        let message = format!("the call succeeded, but its result was lost: {}", f.message);
        Failure { message, ..f }.hint("the command ran: mind running it again if it has effects")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_must_be_a_json_object() {
        assert_eq!(parse_args(r#"{"a": 1}"#).unwrap()["a"], 1);
        assert_eq!(parse_args("{a: 1}").unwrap_err().code, 2);
        assert_eq!(parse_args("[1, 2]").unwrap_err().code, 2);
        assert_eq!(parse_args("").unwrap_err().code, 2);
        let empty = parse_args(" \n").unwrap_err();
        assert_eq!(empty.code, 2);
        assert!(empty.message.contains("empty"), "{}", empty.message);
    }
}
