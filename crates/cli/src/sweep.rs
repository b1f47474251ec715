//! `snakepit sweep`: finds the run records of pools whose host died and
//! kills what those runs left alive, and only that (see
//! `snakepit_core::sweep` for how a process is recognised as ours).

use std::path::PathBuf;

use clap::Args;
use snakepit_core::sweep::{sweep, SweepOptions, SweepReport};

use crate::ui::{style, Failure, Output};

pub(crate) const EXAMPLES: &str = "\
Examples:
  snakepit sweep
  snakepit sweep --dry-run
  snakepit sweep --instance my_pool --json

Only processes that carry a dead run's SNAKEPIT_RUN_ID and are that run's
recorded workers or started after it are killed; anything else is left alone.";

#[derive(Debug, Args)]
pub(crate) struct SweepArgs {
    /// Say what would be killed; kill nothing, keep the records.
    #[arg(long)]
    dry_run: bool,
    /// Only the runs of pools with this name.
    #[arg(long, value_name = "NAME")]
    instance: Option<String>,
    /// The run records' directory [default: state_dir under [pool] in snakepit.toml, else $SNAKEPIT_STATE_DIR, else $XDG_RUNTIME_DIR/snakepit, else $TMPDIR (or /tmp)/snakepit-UID].
    #[arg(long, value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// One JSON object on stdout instead of the report.
    #[arg(long)]
    json: bool,
}

/// Sweeps `--state-dir`, else `configured` (the settings file's), else the
/// default directory.
pub(crate) fn run(a: SweepArgs, configured: Option<PathBuf>, out: &Output) -> Result<(), Failure> {
    let mut options = SweepOptions::new().dry_run(a.dry_run);
    if let Some(name) = a.instance {
        options = options.instance(name);
    }
    if let Some(dir) = a.state_dir.or(configured) {
        options = options.state_dir(dir);
    }
    let report = sweep(&options).map_err(|e| Failure::general(format!("cannot sweep: {e}")))?;
    if a.json {
        let text = serde_json::to_string(&report)
            .map_err(|e| Failure::general(format!("cannot print the report: {e}")))?;
        outln!("{text}")
    } else {
        print_report(&report, a.dry_run, out)
    }
}

/// The report as text. What it quotes comes from files and processes that
/// anyone running as this user may have named (a record's pool name, a
/// file planted in the directory, a worker's child's command line): each
/// is written as one line, what would drive the terminal escaped.
fn print_report(report: &SweepReport, dry_run: bool, out: &Output) -> Result<(), Failure> {
    use crate::ui::{one_line, shown_path};
    let kill = if dry_run { "would kill" } else { "killed" };
    outln!(
        "run records in {}: {} of running pools (left alone), {} from another PID namespace (left alone), {} of crashed runs",
        shown_path(&report.state_dir),
        report.active_runs,
        report.foreign_runs,
        report.stale_runs.len()
    )?;
    if let Some(note) = &report.note {
        outln!("note: {}", one_line(note))?;
    }
    for run in &report.stale_runs {
        outln!(
            "run {} of pool {} (host pid {} is gone): {kill} {} process(es)",
            one_line(&run.run_id),
            one_line(&run.instance),
            run.host_pid,
            run.killed.len()
        )?;
        for p in &run.killed {
            let what = if p.worker {
                "worker"
            } else {
                "a worker's child"
            };
            outln!(
                "  {} pid {:<7} {}",
                what,
                p.pid,
                Output::paint(out.color_stdout, style::DIM, &one_line(&p.command))
            )?;
        }
    }
    for path in &report.unreadable {
        outln!("left alone, not a run record: {}", shown_path(path))?;
    }
    let removed = if dry_run { "would remove" } else { "removed" };
    for path in &report.removed_temporary {
        outln!(
            "{removed} a crashed run's unfinished record: {}",
            shown_path(path)
        )?;
    }
    if report.killed() == 0 {
        outln!("nothing left behind to kill.")?;
    } else if dry_run {
        outln!("dry run: nothing was killed; run `snakepit sweep` to kill them.")?;
    }
    Ok(())
}
