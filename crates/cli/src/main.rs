//! `snakepit`: the command-line tool of Snakepit for Rust.
//!
//! - `snakepit exec COMMAND [ARGS_JSON]` starts a pool, runs one call, prints
//!   the result as JSON.
//! - `snakepit bench` measures the pool against the raw round trip, in one run.
//! - `snakepit doctor` says which interpreters and bridge packages are there.
//! - `snakepit sweep` kills what pools of crashed runs left behind.
//!
//! See `docs/cli.md` for the exit codes and `snakepit.toml`.

// `println!` and `eprintln!` panic when their stream cannot be written.
#![deny(clippy::print_stdout, clippy::print_stderr)]
// The flags' doc comments are their `--help` text, written for a terminal:
// `[default: ...]` and `<pid>` there are not links or HTML.
#![allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]

/// A line on stdout, flushed: `Err(Failure)` (exit code 6) when it cannot be
/// written, quietly when the reader has gone (`snakepit doctor | head -1`).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::ui::stdout_line(format_args!($($arg)*))
    };
}

mod args;
mod bench;
mod cluster;
mod config;
mod doctor;
mod exec;
mod log;
mod plot;
mod stop;
mod sweep;
mod ui;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::ui::Failure;

const EXAMPLES: &str = "\
Examples:
  snakepit exec ping
  snakepit exec compute '{\"operation\": \"add\", \"a\": 5, \"b\": 3}'
  snakepit exec --adapter node random '{\"type\": \"uniform\", \"min\": 0, \"max\": 100}'
  snakepit exec --script worker.py greet '{\"name\": \"Ada\"}'
  snakepit bench --workers 2 --requests 20000
  snakepit doctor
  snakepit sweep --dry-run
  snakepit completions bash > ~/.local/share/bash-completion/completions/snakepit

Exit codes:
  0 success
  1 the call failed in the worker, or the adapter refused it
  2 usage: a bad flag, bad JSON arguments, a missing script, a bad snakepit.toml
  3 the workers could not start (interpreter missing, import error, slow init)
  4 timeout or overload: the deadline passed, or no worker came free
  5 a worker crashed or broke the protocol
  6 the output could not be written (stdout full or closed)
  130, 143 stopped by Ctrl-C or SIGTERM (exec): the workers were stopped;
           (any command) while exporting its last traces: they were dropped

Settings are read from ./snakepit.toml (or --config FILE, or $SNAKEPIT_CONFIG);
flags override them. See docs/cli.md.";

/// Pools of Python, Node.js and Ruby workers, from the command line.
#[derive(Debug, Parser)]
#[command(name = "snakepit", version, after_help = EXAMPLES)]
struct Cli {
    /// More output on stderr: -v for worker output and pool events, -vv for debugging.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only the result and errors: no progress, no notes.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// The settings file [default: $SNAKEPIT_CONFIG when set and not empty,
    /// else ./snakepit.toml when it exists].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// `--config`, else `$SNAKEPIT_CONFIG` unless it is empty (a variable
    /// set to nothing is no file).
    fn config_file(&self) -> Option<PathBuf> {
        self.config.clone().or_else(|| {
            std::env::var_os("SNAKEPIT_CONFIG")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a pool, run one call, print its result as JSON on stdout.
    #[command(after_help = exec::EXAMPLES)]
    Exec(exec::ExecArgs),
    /// Measure the pool against the raw round trip, in one run.
    #[command(after_help = bench::EXAMPLES)]
    Bench(bench::BenchArgs),
    /// Check the interpreters and bridge packages, and say what to install.
    #[command(after_help = doctor::EXAMPLES)]
    Doctor(DoctorArgs),
    /// Kill what pools of crashed runs left behind (only their processes).
    #[command(after_help = sweep::EXAMPLES)]
    Sweep(sweep::SweepArgs),
    /// Print the shell completion script for snakepit on stdout.
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions(CompletionsArgs),
    /// See the hosts of a cluster of pools over NATS (snakepit-cluster).
    #[command(after_help = cluster::EXAMPLES)]
    Cluster(cluster::ClusterArgs),
    /// Serve a pool of workers on this machine to a cluster over NATS.
    #[command(after_help = cluster::SERVE_EXAMPLES)]
    Serve(cluster::ServeArgs),
}

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  snakepit completions bash > ~/.local/share/bash-completion/completions/snakepit
  snakepit completions zsh > ~/.zfunc/_snakepit    # with fpath+=(~/.zfunc) before compinit
  snakepit completions fish > ~/.config/fish/completions/snakepit.fish
  snakepit completions powershell >> $PROFILE

Open a new shell (or source the file) for the completions to take effect.";

#[derive(Debug, Args)]
struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
struct DoctorArgs {
    /// One JSON object on stdout instead of the report.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_exit(&e),
    };
    let out = ui::Output::new(cli.verbose, cli.quiet);
    // With OTEL_EXPORTER_OTLP_ENDPOINT set, traces and metrics go there (and
    // log lines at WARN, or as RUST_LOG says, or only errors with -q, to
    // stderr); otherwise the plain line printer that -v/-q control. A
    // receiver that is down costs one quick try at exit, not retries.
    let mut telemetry = snakepit_telemetry::Telemetry::new().short_lived(true);
    if cli.quiet {
        telemetry = telemetry.stderr_level(tracing::Level::ERROR);
    }
    let telemetry = match telemetry.init_if_configured() {
        Ok(guard) => guard,
        Err(e) => {
            log::install(cli.verbose, cli.quiet, out.color_stderr);
            out.note(format!("warning: telemetry is off: {e}"));
            None
        }
    };
    if telemetry.is_some() {
        TELEMETRY.store(true, std::sync::atomic::Ordering::Relaxed);
    } else {
        log::install(cli.verbose, cli.quiet, out.color_stderr);
    }
    let outcome = run(cli, &out);
    // Exports what is still buffered before the process ends.
    let stopped = telemetry.and_then(final_export);
    let code = match outcome {
        Ok(code) => code,
        Err(failure) => {
            out.failure(&failure);
            ExitCode::from(failure.code)
        }
    };
    match stopped {
        Some(stop) => {
            let failure = stop.failure("what was still to export was dropped");
            out.failure(&failure);
            ExitCode::from(failure.code)
        }
        None => code,
    }
}

/// Drops the telemetry guard, which exports what is still buffered (up to
/// 1.5 s against a receiver that never answers), unless Ctrl-C or SIGTERM
/// comes first: then the export is left behind and the stop returned. The
/// stop handlers a command installed stay installed after it (a signal's
/// default action is never given back), so without this a Ctrl-C here
/// would be swallowed.
fn final_export(guard: snakepit_telemetry::Guard) -> Option<stop::Stop> {
    let Ok(rt) = runtime() else {
        drop(guard);
        return None;
    };
    let stopped = rt.block_on(async move {
        let mut signals = stop::StopSignals::new();
        let export = tokio::task::spawn_blocking(move || drop(guard));
        signals.race(export).await.err()
    });
    // Without waiting for an export a stop left behind.
    rt.shutdown_background();
    stopped
}

/// Prints what clap has to say (help and version on stdout, usage errors on
/// stderr) and the exit code for it; help that cannot be written is an
/// output failure, as any other stdout.
fn clap_exit(e: &clap::Error) -> ExitCode {
    use std::io::Write as _;
    let printed = e.print().and_then(|()| {
        if e.use_stderr() {
            Ok(())
        } else {
            std::io::stdout().flush()
        }
    });
    match printed {
        Err(io) if !e.use_stderr() => {
            let failure = Failure::stdout(io);
            ui::Output::new(0, false).failure(&failure);
            ExitCode::from(failure.code)
        }
        // A usage error that cannot be shown still exits as one.
        _ => ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(ui::code::USAGE)),
    }
}

/// Whether traces are exported (`OTEL_EXPORTER_OTLP_ENDPOINT` was set).
pub(crate) static TELEMETRY: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// A pool builder with tracing and metrics wired in when traces are exported.
pub(crate) fn traced(builder: snakepit_core::PoolBuilder) -> snakepit_core::PoolBuilder {
    if TELEMETRY.load(std::sync::atomic::Ordering::Relaxed) {
        snakepit_telemetry::instrument(builder)
    } else {
        builder
    }
}

fn run(cli: Cli, out: &ui::Output) -> Result<ExitCode, Failure> {
    let config_file = cli.config_file();
    match cli.command {
        Command::Doctor(args) => Ok(doctor::run(args.json, out)),
        Command::Sweep(args) => {
            // The settings file's `state_dir`, unless the flag gives one.
            let configured = match args.state_dir {
                Some(_) => None,
                None => config::load_state_dir(config_file.as_deref(), out)?,
            };
            sweep::run(args, configured, out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions(args) => {
            completions(args.shell)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster(args) => {
            runtime()?.block_on(cluster::run(args, out))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => {
            let file = config::load(config_file.as_deref(), out)?;
            runtime()?.block_on(cluster::serve(args, file, out))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Exec(args) => {
            let file = config::load(config_file.as_deref(), out)?;
            runtime()?.block_on(exec::run(args, file, out))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            let file = config::load(config_file.as_deref(), out)?;
            runtime()?.block_on(bench::run(args, file, out))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes the completion script for `shell` to stdout (built in memory
/// first: clap_complete panics on a write error, the tool must not).
fn completions(shell: clap_complete::Shell) -> Result<(), Failure> {
    use std::io::Write as _;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "snakepit", &mut script);
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&script)
        .and_then(|()| stdout.flush())
        .map_err(Failure::stdout)
}

/// The host side runs on one thread: a CLI call needs no more, and the
/// benchmark measures the pool as a service on a small machine would run it.
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::general(format!("cannot start the Tokio runtime: {e}")))
}
