//! What the tool prints for people: notes, errors with hints, colours only
//! on a terminal (and never with `NO_COLOR`).
//!
//! Nothing here panics on a write error (as `println!` and `eprintln!` do):
//! stdout that cannot be written is a failure with its own exit code
//! ([`stdout_line`]); stderr that cannot be written is ignored, since there
//! is nowhere left to say so, and the exit code still tells what happened.

use std::io::{IsTerminal, Write as _};

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
    /// The output could not be written: stdout full, failing, or closed.
    pub(crate) const OUTPUT: u8 = 6;
}

/// The styles the tool paints with (on a terminal only, see [`Output::paint`]).
pub(crate) mod style {
    use anstyle::{AnsiColor, Style};

    /// Headings.
    pub(crate) const BOLD: Style = Style::new().bold();
    /// Notes, log lines, a failure's detail.
    pub(crate) const DIM: Style = Style::new().dimmed();
    /// `error:`.
    pub(crate) const ERROR: Style = AnsiColor::Red.on_default().bold();
    /// `hint:`.
    pub(crate) const HINT: Style = AnsiColor::Yellow.on_default().bold();
    /// Something that is there and works.
    pub(crate) const GOOD: Style = AnsiColor::Green.on_default();
    /// Something missing.
    pub(crate) const BAD: Style = AnsiColor::Yellow.on_default();
}

/// Writes one line to stdout and flushes it; a failure (exit code 6) when it
/// cannot be written. Use it through `outln!`.
pub(crate) fn stdout_line(line: std::fmt::Arguments<'_>) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_fmt(line)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush())
        .map_err(Failure::stdout)
}

/// Writes one line to stderr, or nothing if stderr cannot be written.
pub(crate) fn stderr_line(line: std::fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr
        .write_fmt(line)
        .and_then(|()| stderr.write_all(b"\n"));
}

/// A failure of the tool: what to say, what to suggest, how to exit.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
    /// More lines: a traceback, a stderr tail.
    pub(crate) detail: Option<String>,
    pub(crate) hint: Option<String>,
    /// Exit with the code but say nothing: stdout was closed by its reader
    /// (`| head`), who has all it wanted.
    pub(crate) silent: bool,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            detail: None,
            hint: None,
            silent: false,
        }
    }

    /// Stdout could not be written. A closed pipe (EPIPE, the reader has
    /// gone) ends the tool quietly; anything else is said on stderr.
    pub(crate) fn stdout(e: std::io::Error) -> Self {
        let mut f = Failure::new(code::OUTPUT, format!("cannot write to stdout: {e}"));
        f.silent = e.kind() == std::io::ErrorKind::BrokenPipe;
        f
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

/// The most characters of a command's name an error shows; a longer name
/// is cut, and its length in bytes said once.
const COMMAND_SHOWN: usize = 60;

/// `text` as one line of a message: control characters (a line break
/// would split the `error:` line, an escape sequence would paint the
/// terminal) and the characters that reorder text on a terminal written as
/// escapes (`\n`, `\u{1b}`); everything else as it is.
pub(crate) fn one_line(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        push_escaped(&mut shown, c);
    }
    shown
}

/// `text` for a terminal: as [`one_line`], but its line breaks and tabs
/// kept (a message of several lines, a traceback).
pub(crate) fn terminal_safe(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => shown.push(c),
            c => push_escaped(&mut shown, c),
        }
    }
    shown
}

/// A path as one line of a message ([`one_line`]).
pub(crate) fn shown_path(path: &std::path::Path) -> String {
    one_line(&path.display().to_string())
}

fn push_escaped(shown: &mut String, c: char) {
    match c {
        '\n' => shown.push_str("\\n"),
        '\r' => shown.push_str("\\r"),
        '\t' => shown.push_str("\\t"),
        c if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') => {
            shown.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
        c => shown.push(c),
    }
}

/// A command's name as an error line shows it: as one line ([`one_line`]),
/// and a name longer than [`COMMAND_SHOWN`] characters cut, with its
/// length when `with_length`.
pub(crate) fn shown_command(command: &str, with_length: bool) -> String {
    let mut shown = String::new();
    for (i, c) in command.chars().enumerate() {
        if i == COMMAND_SHOWN {
            shown.push_str("...");
            if with_length {
                shown.push_str(&format!(" ({} bytes in all)", command.len()));
            }
            break;
        }
        push_escaped(&mut shown, c);
    }
    shown
}

/// The command an error names in its text, if any.
fn named_command(e: &Error) -> Option<&str> {
    match e {
        Error::Remote { command, .. }
        | Error::Validation { command, .. }
        | Error::ResultRefused { command, .. }
        | Error::CallTimeout { command, .. } => Some(command),
        Error::UnsupportedCommand(command) => Some(command),
        _ => None,
    }
}

impl From<Error> for Failure {
    /// The failure for a pool's error. A command's name that a line break
    /// or its length would make unreadable is shown escaped and cut
    /// ([`shown_command`]) wherever the text names it, the worker's own
    /// message included (an unknown command's message repeats the name),
    /// and its length is said once.
    fn from(e: Error) -> Self {
        let mut failure = Failure::from_error(&e);
        if let Some(command) = named_command(&e).filter(|c| !c.is_empty()) {
            let shown = shown_command(command, false);
            if shown != command {
                // The first mention says how long a cut name is; the others
                // (the worker's message repeating it) only show it cut.
                let first = shown_command(command, true);
                let message = failure.message.replacen(command, &first, 1);
                failure.message = message.replace(command, &shown);
                failure.hint = failure.hint.map(|h| h.replace(command, &shown));
            }
        }
        failure
    }
}

impl Failure {
    fn from_error(e: &Error) -> Self {
        match e {
            Error::Remote { command, error } => {
                let hint = match error.kind.as_deref() {
                    // The error line names the command already.
                    Some("UnknownCommand") => "the worker has no command by that name: check it among the script's commands (the generic workers, without --script, know ping, echo, compute and info, and random in Node.js)".to_owned(),
                    // A bundled bridge's refusal of a result above the
                    // pool's max_frame_size: the handler did not raise it.
                    Some("ResultTooLarge") => "the result is larger than the pool accepts: raise max_frame_size under [pool] in snakepit.toml, or return less (or stream it in chunks)".to_owned(),
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
            // Nested too deep for the wire: no frame size would carry it.
            Error::Codec(snakepit_protocol::Error::TooDeep { max, .. }) if e.never_ran() => {
                Failure::new(code::FAILED, e.to_string()).hint(format!(
                    "the arguments were not sent: the wire carries at most {max} levels of nested arrays and objects, the request's own object among them, whatever max_frame_size is; nest them less deeply, or send the deep part as a JSON string"
                ))
            }
            Error::Codec(_) if e.never_ran() => Failure::new(code::FAILED, e.to_string()).hint(
                "the arguments were not sent: raise max_frame_size under [pool] in snakepit.toml if they are too large, or fix what cannot be encoded",
            ),
            // The reply came back and could not be decoded: the call ran.
            Error::Codec(_) => Failure::new(code::FAILED, e.to_string()).hint(
                "the call ran, but its result could not be decoded (binary data in a JSON result, say): return JSON values, or base64-encode bytes",
            ),
            Error::Cancelled => Failure::new(code::FAILED, e.to_string())
                .hint("the call was cancelled before it finished; run it again"),
            Error::StreamBehind { .. } => Failure::new(code::FAILED, e.to_string())
                .hint("read the stream as fast as the worker writes, or send fewer, larger chunks"),
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
            Error::Protocol { source, .. } => {
                let hint = protocol_hint(source);
                Failure::new(code::CRASH, e.to_string()).hint(hint)
            }
            Error::StartFailed(start) => {
                let hint = start_hint(&start.cause, &start.stderr_tail);
                Failure::new(code::START, format!("the workers could not start: {}", start.cause))
                    .detail(start.stderr_tail.clone())
                    .hint(hint)
            }
            // The message may quote a value as given (a cluster's name).
            Error::Config(m) => Failure::usage(format!("invalid pool settings: {}", one_line(m))),
            _ => Failure::general(e.to_string()),
        }
    }
}

/// What to do about a worker that broke the protocol, by what it broke.
fn protocol_hint(source: &snakepit_protocol::Error) -> &'static str {
    use snakepit_protocol::Error as P;
    match source {
        // Four bytes of text read as a length are at least 0x20202020
        // (four spaces): a "frame" that large is stray output.
        P::FrameTooLarge { len, .. } if *len < 0x2020_2020 => {
            "the worker's reply is larger than the pool accepts: raise max_frame_size under [pool] in snakepit.toml, or return less"
        }
        P::Mismatch { .. } => "the worker's result does not have the shape the caller asked for",
        // Valid JSON from the worker (Python writes any integer), but a
        // number no double holds: no stray output is to blame.
        P::InvalidPayload { detail, .. } if detail.starts_with("number out of range") => {
            "the worker's reply holds a number beyond what a JSON number may be here (about 1.8e308): return it as a string"
        }
        _ => "something wrote to the worker's stdout; write logs to stderr, or use a bundled bridge",
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
    if cause.contains("broke the protocol") {
        return match oversized_frame(cause) {
            // Below four spaces read as a length: a real, large frame.
            Some(len) if len < 0x2020_2020 => {
                "the worker's handshake is larger than the pool accepts: raise max_frame_size under [pool] in snakepit.toml".into()
            }
            _ => "something wrote to the worker's stdout before its handshake (a print at import, a library's banner), and stdout carries the frames: print to stderr, create the bridge's Worker before anything prints, or call snakepit_bridge.protect_stdout() first in Python (docs/bridges.md)".into(),
        };
    }
    if stderr.trim().is_empty() {
        return "the worker wrote nothing to stderr; run the script by hand to see it fail".into();
    }
    "the worker's stderr above says why; run the script by hand to see it fail".into()
}

/// The length of the frame a start-up failure names as too large (`frame
/// of N bytes exceeds ...`), if it names one.
fn oversized_frame(cause: &str) -> Option<u64> {
    let rest = cause.split("frame of ").nth(1)?;
    rest.split(' ').next()?.parse().ok()
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

    /// Paints `text` in `style` when `on`.
    pub(crate) fn paint(on: bool, style: anstyle::Style, text: &str) -> String {
        if on {
            format!("{style}{text}{style:#}")
        } else {
            text.to_owned()
        }
    }

    /// A note on stderr, unless quiet: one line, what would drive the
    /// terminal escaped (a note may name a path or quote an error).
    pub(crate) fn note(&self, text: impl AsRef<str>) {
        if !self.quiet {
            stderr_line(format_args!(
                "{}",
                Output::paint(self.color_stderr, style::DIM, &one_line(text.as_ref()))
            ));
        }
    }

    /// A note on stderr shown only with -v.
    pub(crate) fn verbose(&self, text: impl AsRef<str>) {
        if self.verbose > 0 {
            self.note(text);
        }
    }

    pub(crate) fn failure(&self, f: &Failure) {
        if f.silent {
            return;
        }
        let c = self.color_stderr;
        // A worker's message and traceback may quote anything (its input
        // among them): what would drive the terminal is written escaped.
        stderr_line(format_args!(
            "{} {}",
            Output::paint(c, style::ERROR, "error:"),
            terminal_safe(&f.message)
        ));
        if let Some(detail) = &f.detail {
            for line in detail.trim_end().lines() {
                let line = terminal_safe(line);
                stderr_line(format_args!("  {}", Output::paint(c, style::DIM, &line)));
            }
        }
        if let Some(hint) = &f.hint {
            stderr_line(format_args!(
                "{} {}",
                Output::paint(c, style::HINT, "hint:"),
                terminal_safe(hint)
            ));
        }
    }
}
