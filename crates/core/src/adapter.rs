//! What a pool starts and how it talks to it: `Launch` (program, arguments,
//! environment) and the `Adapter` trait (codec, timeouts, validation).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use snakepit_protocol::WireCodec;

/// How to start a worker process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The program: an interpreter (`python3`) or any executable.
    pub program: PathBuf,
    /// Its arguments: the script, then the script's own arguments.
    pub args: Vec<OsString>,
    /// Extra environment variables (added to the pool's own environment).
    pub env: Vec<(OsString, OsString)>,
    /// The working directory; `None` keeps the host's.
    pub cwd: Option<PathBuf>,
    /// Append `--snakepit-run-id <id>` to the arguments. Off by default,
    /// and the bundled workers do not use it: command lines are readable by
    /// every user of the machine (`ps`), while the run id the sweep checks
    /// is in the worker's environment (`SNAKEPIT_RUN_ID`), which only its
    /// own user and root can read. Turn it on only where seeing the run in
    /// `ps` is worth showing the id to everybody, and for a script that
    /// accepts the extra arguments.
    pub run_id_arg: bool,
    /// Start one template process that runs the script's module-level code
    /// once, and fork every worker from it (docs/preload.md). Only for
    /// bridges that implement the template protocol (Python and Ruby).
    pub preload: bool,
}

impl Launch {
    /// What a pool gives every worker it starts, in one place: the protocol
    /// version, the codec, the worker's id, the run id and its host in its
    /// environment (`SNAKEPIT_PROTOCOL`, `SNAKEPIT_CODEC`,
    /// `SNAKEPIT_WORKER_ID`, `SNAKEPIT_RUN_ID`, `SNAKEPIT_HOST`: the host
    /// process, for the sweep to tell whether it lives), and the run id on
    /// its command line too when [`Launch::with_run_id_arg`] asked for it.
    /// `RawProcess` starts its process the same way.
    pub fn for_worker(self, codec: crate::WireCodec, worker_id: &str, run_id: &str) -> Self {
        use snakepit_protocol::Codec;
        let launch = self
            .env("SNAKEPIT_PROTOCOL", "1")
            .env("SNAKEPIT_CODEC", codec.name())
            .env("SNAKEPIT_WORKER_ID", worker_id)
            .env("SNAKEPIT_RUN_ID", run_id)
            .env("SNAKEPIT_HOST", crate::sweep::host_token());
        if launch.run_id_arg {
            launch.arg("--snakepit-run-id").arg(run_id)
        } else {
            launch
        }
    }

    /// Runs `program` with no arguments.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Launch {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
            run_id_arg: false,
            preload: false,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the working directory.
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Loads the script once in a template process and forks every worker
    /// from it (see [`preload`](Launch::preload)).
    pub fn preloaded(mut self) -> Self {
        self.preload = true;
        self
    }

    /// Appends `--snakepit-run-id <id>` to the arguments, where every user
    /// can see it (see [`run_id_arg`](Launch::run_id_arg)).
    pub fn with_run_id_arg(mut self) -> Self {
        self.run_id_arg = true;
        self
    }
}

/// What a pool needs to know about its workers: how to start them, which
/// commands they take, and how to shape calls and replies.
///
/// Only [`launch`](Adapter::launch) is required. The hooks run in the pool,
/// on the caller's task, for every dynamic call
/// ([`Pool::execute`](crate::Pool::execute) and friends):
/// [`supported_commands`](Adapter::supported_commands) and
/// [`validate_command`](Adapter::validate_command) before the call is queued,
/// [`prepare_args`](Adapter::prepare_args) before it is encoded, and
/// [`process_response`](Adapter::process_response) on the result. Typed calls
/// ([`Pool::call`](crate::Pool::call)) are validated too, with `args` =
/// `Value::Null` (their arguments are not a `Value`), and skip the two value
/// hooks. [`launch`](Adapter::launch), [`codec`](Adapter::codec) and
/// `supported_commands` are asked once, by
/// [`PoolBuilder::start`](crate::PoolBuilder::start): one that panics fails
/// the start with [`Error::StartFailed`](crate::Error::StartFailed) naming
/// the hook and the panic.
///
/// ```
/// use snakepit_core::{Adapter, Launch};
///
/// struct Reports;
///
/// impl Adapter for Reports {
///     fn launch(&self) -> Launch {
///         Launch::new("ruby").arg("bridge.rb").arg("--mode").arg("pool-worker")
///     }
///     fn supported_commands(&self) -> Option<Vec<String>> {
///         Some(vec!["ping".into(), "generate_report".into()])
///     }
///     fn command_timeout(&self, command: &str) -> std::time::Duration {
///         let secs = if command == "generate_report" { 120 } else { 30 };
///         std::time::Duration::from_secs(secs)
///     }
/// }
/// ```
pub trait Adapter: Send + Sync + 'static {
    /// The process to start for each worker.
    fn launch(&self) -> Launch;

    /// What must hold before any worker can start (the files a bridge
    /// writes for its interpreter to read, say), checked by
    /// [`PoolBuilder::start`](crate::PoolBuilder::start) before the first
    /// spawn, where an `Err` message fails the start with
    /// [`Error::StartFailed`](crate::Error::StartFailed), whose cause it is;
    /// and again before each later start (a replacement, a recycled
    /// worker's successor), where an `Err` is that start's failure (backed
    /// off, counted by the breaker). A check that panics counts as an `Err`
    /// naming the panic. Keep it cheap: it may put back what went missing
    /// since (the bundled bridges do).
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    /// The wire codec; JSON unless the adapter says otherwise.
    fn codec(&self) -> WireCodec {
        WireCodec::default()
    }

    /// The commands the workers take; `None` (the default) lets every command
    /// through to the worker, which answers `UnknownCommand` itself.
    fn supported_commands(&self) -> Option<Vec<String>> {
        None
    }

    /// Checks a call before it is queued; an `Err` message fails the call with
    /// [`Error::Validation`](crate::Error::Validation). A check that panics
    /// fails the call the same way, with a message naming the panic; the
    /// caller's task and the workers are untouched.
    fn validate_command(&self, command: &str, args: &Value) -> Result<(), String> {
        let _ = (command, args);
        Ok(())
    }

    /// Reshapes a call's arguments before they are sent. One that panics
    /// fails the call with [`Error::Validation`](crate::Error::Validation)
    /// naming the panic; nothing is sent.
    fn prepare_args(&self, command: &str, args: Value) -> Value {
        let _ = command;
        args
    }

    /// Reshapes a successful result before the caller sees it; an `Err`
    /// message fails the call with
    /// [`Error::ResultRefused`](crate::Error::ResultRefused) (the call ran).
    /// One that panics refuses the result the same way, with a message
    /// naming the panic; the worker that ran the call serves on.
    fn process_response(&self, command: &str, result: Value) -> Result<Value, String> {
        let _ = command;
        Ok(result)
    }

    /// The deadline of a call that did not set its own. One that panics
    /// leaves the call without a deadline: it fails with
    /// [`Error::Validation`](crate::Error::Validation) naming the panic,
    /// and is not sent.
    fn command_timeout(&self, command: &str) -> Duration {
        let _ = command;
        Duration::from_secs(30)
    }
}

impl<A: Adapter + ?Sized> Adapter for std::sync::Arc<A> {
    fn launch(&self) -> Launch {
        (**self).launch()
    }
    fn check(&self) -> Result<(), String> {
        (**self).check()
    }
    fn codec(&self) -> WireCodec {
        (**self).codec()
    }
    fn supported_commands(&self) -> Option<Vec<String>> {
        (**self).supported_commands()
    }
    fn validate_command(&self, command: &str, args: &Value) -> Result<(), String> {
        (**self).validate_command(command, args)
    }
    fn prepare_args(&self, command: &str, args: Value) -> Value {
        (**self).prepare_args(command, args)
    }
    fn process_response(&self, command: &str, result: Value) -> Result<Value, String> {
        (**self).process_response(command, result)
    }
    fn command_timeout(&self, command: &str) -> Duration {
        (**self).command_timeout(command)
    }
}
