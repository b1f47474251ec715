//! What the tool prints for people: notes, errors with hints, colours only
//! on a terminal (and never with `NO_COLOR`).

use std::io::IsTerminal;

use snakepit_core::Error;

/// Exit codes, documented in `--help` and docs/cli.md.
pub(crate) mod code {
    /// The call failed in the worker, the adapter refused it, or another failure.
    pub(crate) const FAILED: u8 = 1;
    /// Bad flags, bad JSON arguments, a missing script, a bad settings file.
    pub(crate) const USAGE: u8 = 2;
    /// The workers could not start.
    pub(crate) const START: u8 = 3;
    /// A timeout or overload.
    pub(crate) const TIMEOUT: u8 = 4;
    /// A worker crashed or broke the protocol.
    pub(crate) const CRASH: u8 = 5;
}

/// A failure of the tool: what to say, what to suggest, how to exit.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
    /// More lines: a traceback, a stderr tail.
    pub(crate) detail: Option<String>,
    pub(crate) hint: Option<String>,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Failure::new(code::USAGE, message)
    }

    pub(crate) fn general(message: impl Into<String>) -> Self {
        Failure::new(code::FAILED, message)
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub(crate) fn detail(mut self, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        if !detail.trim().is_empty() {
            self.detail = Some(detail);
        }
        self
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        match &e {
            Error::Remote { command, error } => {
                let hint = match error.kind.as_deref() {
                    Some("UnknownCommand") => format!(
                        "the worker has no command `{command}`; the generic workers know ping, echo, compute and info (and random in Node.js)"
                    ),
                    _ => "the worker's handler raised this; fix the arguments or the handler".into(),
                };
                let message = match &error.kind {
                    Some(kind) => format!("`{command}` failed in the worker: {kind}: {}", error.message),
                    None => format!("`{command}` failed in the worker: {}", error.message),
                };
                Failure::new(code::FAILED, message)
                    .detail(error.traceback.clone().unwrap_or_default())
                    .hint(hint)
            }
            Error::Validation { .. } | Error::UnsupportedCommand(_) => {
                Failure::new(code::FAILED, e.to_string()).hint("the call never reached a worker; fix the command or its arguments")
            }
            Error::Cancelled | Error::Codec(_) => Failure::new(code::FAILED, e.to_string()),
            Error::CallTimeout { .. } => Failure::new(code::TIMEOUT, e.to_string())
                .hint("raise --timeout (milliseconds), or make the handler faster"),
            Error::QueueTimeout(_) | Error::PoolSaturated { .. } | Error::WorkerBusy { .. } => {
                Failure::new(code::TIMEOUT, e.to_string()).hint("raise --pool-size, or queue_timeout_ms / max_queue_size in snakepit.toml")
            }
            Error::WorkerCrashed(crash) => Failure::new(
                code::CRASH,
                format!("worker {} (pid {}) died during the call: {}", crash.worker_id, crash.pid, crash.exit),
            )
            .detail(crash.stderr_tail.clone())
            .hint("the worker's stderr ends as shown; run with -v to see all of it"),
            Error::Protocol { .. } => Failure::new(code::CRASH, e.to_string())
                .hint("something wrote to the worker's stdout; write logs to stderr, or use a bundled bridge"),
            Error::StartFailed(start) => {
                let hint = start_hint(&start.cause, &start.stderr_tail);
                Failure::new(code::START, format!("the workers could not start: {}", start.cause))
                    .detail(start.stderr_tail.clone())
                    .hint(hint)
            }
            Error::Config(m) => Failure::usage(format!("invalid pool settings: {m}")),
            _ => Failure::general(e.to_string()),
        }
    }
}

/// What to do about a start-up failure, guessed from its cause and stderr.
fn start_hint(cause: &str, stderr: &str) -> String {
    if stderr.contains("No module named 'msgpack'")
        || stderr.contains("@msgpack/msgpack")
        || stderr.contains("msgpack (LoadError)")
        || stderr.contains("cannot load such file -- msgpack")
    {
        return "MessagePack needs its package: pip install msgpack, npm install @msgpack/msgpack, or gem install msgpack (`snakepit doctor` checks them)".into();
    }
    if cause.contains("not found") {
        return "install the interpreter, or point SNAKEPIT_PYTHON / SNAKEPIT_NODE / SNAKEPIT_RUBY at it (`snakepit doctor` shows what is there)".into();
    }
    if cause.contains("timeout") || cause.contains("within") {
        return "the worker's init is slow: raise worker_init_timeout_ms and startup_timeout_ms in snakepit.toml".into();
    }
    "the worker's stderr above says why; run the script by hand to see it fail".into()
}

/// Where notes and errors go, and how.
#[derive(Debug, Clone)]
pub(crate) struct Output {
    pub(crate) verbose: u8,
    pub(crate) quiet: bool,
    pub(crate) color_stderr: bool,
    pub(crate) color_stdout: bool,
    pub(crate) stdout_is_terminal: bool,
    pub(crate) stderr_is_terminal: bool,
}

impl Output {
    pub(crate) fn new(verbose: u8, quiet: bool) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let stdout_is_terminal = std::io::stdout().is_terminal();
        let stderr_is_terminal = std::io::stderr().is_terminal();
        Output {
            verbose,
            quiet,
            color_stderr: stderr_is_terminal && !no_color,
            color_stdout: stdout_is_terminal && !no_color,
            stdout_is_terminal,
            stderr_is_terminal,
        }
    }

    /// Paints `text` when `on`.
    pub(crate) fn paint(on: bool, style: &str, text: &str) -> String {
        if on {
            format!("\x1b[{style}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }

    /// A note on stderr, unless quiet.
    pub(crate) fn note(&self, text: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", Output::paint(self.color_stderr, "2", text.as_ref()));
        }
    }

    /// A note on stderr shown only with -v.
    pub(crate) fn verbose(&self, text: impl AsRef<str>) {
        if self.verbose > 0 {
            self.note(text);
        }
    }

    pub(crate) fn failure(&self, f: &Failure) {
        let c = self.color_stderr;
        eprintln!("{} {}", Output::paint(c, "1;31", "error:"), f.message);
        if let Some(detail) = &f.detail {
            for line in detail.trim_end().lines() {
                eprintln!("  {}", Output::paint(c, "2", line));
            }
        }
        if let Some(hint) = &f.hint {
            eprintln!("{} {hint}", Output::paint(c, "1;33", "hint:"));
        }
    }
}
