//! The pool's events on stderr, through `tracing-subscriber`'s fmt layer:
//! `-v` shows worker output and pool events, `-vv` debugging detail; the
//! default and `-q` only errors.
//!
//! One line per event: a line a worker wrote to its stderr reads `[worker
//! id] line`, dimmed on a terminal; any other event `level: message
//! field=value ...`, its fields as the fmt layer writes them. Control
//! characters and the characters that reorder text are written escaped
//! (`\u{1b}`, `\n`), as in error messages. A line that
//! cannot be written is dropped: the fmt layer is told not to report it
//! with `eprintln!`, which would panic.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::ui::{one_line, style};

/// The target of core's events for the lines a worker writes to its stderr.
const WORKER_TARGET: &str = "snakepit::worker";

/// Installs the printer for this verbosity; quiet or default print errors only.
pub(crate) fn install(verbose: u8, quiet: bool, color: bool) {
    let max = match (quiet, verbose) {
        (true, _) | (false, 0) => Level::ERROR,
        (false, 1) => Level::INFO,
        (false, 2) => Level::DEBUG,
        _ => Level::TRACE,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(max)
        .with_ansi(color)
        .log_internal_errors(false)
        .with_writer(std::io::stderr)
        .event_format(Lines)
        .try_init();
}

/// The line format (see the module doc).
struct Lines;

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let dim = if writer.has_ansi_escapes() {
            style::DIM
        } else {
            anstyle::Style::new()
        };
        let meta = event.metadata();
        // A worker writes what it likes, and an event's fields may quote it
        // (a start failure's stderr): what would drive the terminal is
        // written escaped, each event on one line.
        if meta.target() == WORKER_TARGET {
            let mut line = WorkerLine::default();
            event.record(&mut line);
            writeln!(
                writer,
                "{dim}[{}] {}{dim:#}",
                one_line(&line.worker),
                one_line(&line.text)
            )
        } else {
            let level = match *meta.level() {
                Level::ERROR => "error",
                Level::WARN => "warn",
                Level::INFO => "info",
                Level::DEBUG => "debug",
                Level::TRACE => "trace",
            };
            write!(writer, "{dim}{level}:{dim:#} ")?;
            // Formatted apart, without colour, so that the escaping
            // cannot cut an escape sequence of the field names' style.
            let mut fields = String::new();
            ctx.format_fields(Writer::new(&mut fields), event)?;
            writeln!(writer, "{}", one_line(&fields))
        }
    }
}

/// The two fields of a worker's stderr line that are shown.
#[derive(Default)]
struct WorkerLine {
    worker: String,
    text: String,
}

impl WorkerLine {
    fn field(&mut self, field: &Field) -> Option<&mut String> {
        match field.name() {
            "worker" => Some(&mut self.worker),
            "message" => Some(&mut self.text),
            _ => None,
        }
    }
}

impl Visit for WorkerLine {
    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(to) = self.field(field) {
            to.push_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        use fmt::Write as _;
        if let Some(to) = self.field(field) {
            let _ = write!(to, "{value:?}");
        }
    }
}
