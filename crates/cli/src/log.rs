//! A small `tracing` subscriber that writes the pool's events to stderr:
//! `-v` shows worker output and pool events, `-vv` debugging detail.
//! (The project keeps `tracing-subscriber` to its telemetry crate; a line
//! printer is all a command-line call needs.)

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

struct StderrLines {
    max: Level,
    color: bool,
    next_span: AtomicU64,
}

/// Installs the printer for this verbosity; quiet or default print errors only.
pub(crate) fn install(verbose: u8, quiet: bool, color: bool) {
    let max = match (quiet, verbose) {
        (true, _) | (false, 0) => Level::ERROR,
        (false, 1) => Level::INFO,
        (false, 2) => Level::DEBUG,
        _ => Level::TRACE,
    };
    let _ = tracing::subscriber::set_global_default(StderrLines {
        max,
        color,
        next_span: AtomicU64::new(1),
    });
}

#[derive(Default)]
struct Line {
    message: String,
    worker: String,
    fields: String,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "worker" => self.worker.push_str(value),
            name => {
                let _ = write!(self.fields, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "worker" => {
                let _ = write!(self.worker, "{value:?}");
            }
            name => {
                let _ = write!(self.fields, " {name}={value:?}");
            }
        }
    }
}

impl Subscriber for StderrLines {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed))
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = Line::default();
        event.record(&mut line);
        let meta = event.metadata();
        let text = if meta.target() == "snakepit::worker" {
            // A line the worker wrote to its stderr.
            format!("[{}] {}", line.worker, line.message)
        } else {
            let level = match *meta.level() {
                Level::ERROR => "error",
                Level::WARN => "warn",
                Level::INFO => "info",
                Level::DEBUG => "debug",
                Level::TRACE => "trace",
            };
            let worker = if line.worker.is_empty() {
                String::new()
            } else {
                format!(" worker={}", line.worker)
            };
            format!("{level}: {}{worker}{}", line.message, line.fields)
        };
        // Never `eprintln!`: it panics when stderr cannot be written.
        if self.color {
            crate::ui::stderr_line(format_args!("\x1b[2m{text}\x1b[0m"));
        } else {
            crate::ui::stderr_line(format_args!("{text}"));
        }
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
